//! The metadata cache (SPEC §5): users and clients in separate moka caches keyed by
//! (issuer, id). Fresh for `ttl`; then served stale while one background refresh runs;
//! kept up to `ttl + max_stale` so a failing source does not fail requests; "does not
//! exist" remembered for `negative_ttl`. Concurrent misses for one key make one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::{Metadata, MetadataSource, SourceError};
use crate::config::CacheConfig;

/// (issuer, user or client id).
pub type Key = (Arc<str>, Arc<str>);

#[derive(Clone)]
struct Entry {
    /// `None`: the source said this id does not exist.
    value: Option<Arc<Metadata>>,
    fetched_at: Instant,
    /// Set while a background refresh of this entry runs.
    refreshing: Arc<AtomicBool>,
}

struct Ttl {
    fresh_and_stale: Duration,
    negative: Duration,
}

impl Expiry<Key, Entry> for Ttl {
    fn expire_after_create(&self, _: &Key, v: &Entry, _: Instant) -> Option<Duration> {
        Some(if v.value.is_some() { self.fresh_and_stale } else { self.negative })
    }
    fn expire_after_update(&self, _: &Key, v: &Entry, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(if v.value.is_some() { self.fresh_and_stale } else { self.negative })
    }
}

/// Which of the two caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Client => "client",
        }
    }
}

/// The cache could not produce a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("metadata source unavailable: {0}")]
pub struct Unavailable(pub SourceError);

/// Counters for metrics and tests.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub fetch_ok: AtomicU64,
    pub fetch_not_found: AtomicU64,
    pub fetch_error: AtomicU64,
}

/// Users and clients, each in its own cache.
#[derive(Clone)]
pub struct MetadataCache {
    users: Cache<Key, Entry>,
    clients: Cache<Key, Entry>,
    ttl: Duration,
    pub stats: Arc<CacheStats>,
}

impl MetadataCache {
    pub fn new(cfg: &CacheConfig) -> MetadataCache {
        // max_entries bounds users plus clients; tenants have far fewer clients than
        // users, so clients get a tenth of the budget.
        let clients_cap = (cfg.max_entries / 10).max(1);
        let users_cap = cfg.max_entries - clients_cap;
        let build = |cap: u64| {
            Cache::builder()
                .max_capacity(cap)
                .expire_after(Ttl { fresh_and_stale: cfg.ttl + cfg.max_stale, negative: cfg.negative_ttl })
                .support_invalidation_closures()
                .build()
        };
        MetadataCache {
            users: build(users_cap),
            clients: build(clients_cap),
            ttl: cfg.ttl,
            stats: Arc::new(CacheStats::default()),
        }
    }

    fn cache(&self, kind: Kind) -> &Cache<Key, Entry> {
        match kind {
            Kind::User => &self.users,
            Kind::Client => &self.clients,
        }
    }

    /// The metadata of `id`, `None` when it does not exist, or an error when the source
    /// failed and nothing usable is held.
    pub async fn get(
        &self,
        kind: Kind,
        source: &Arc<dyn MetadataSource>,
        issuer: &Arc<str>,
        id: &str,
    ) -> Result<Option<Arc<Metadata>>, Unavailable> {
        let key: Key = (issuer.clone(), Arc::from(id));
        let cache = self.cache(kind);
        if let Some(e) = cache.get(&key).await {
            if e.value.is_some() && e.fetched_at.elapsed() >= self.ttl {
                self.stats.stale_served.fetch_add(1, Relaxed);
                self.refresh_in_background(kind, source, key, &e);
            } else {
                self.stats.hits.fetch_add(1, Relaxed);
            }
            return Ok(e.value);
        }
        self.stats.misses.fetch_add(1, Relaxed);
        let stats = self.stats.clone();
        let entry = cache
            .try_get_with(key.clone(), async move {
                fetch(kind, source.as_ref(), &key.1, &stats).await.map(|value| Entry {
                    value: value.map(Arc::new),
                    fetched_at: Instant::now(),
                    refreshing: Arc::default(),
                })
            })
            .await
            .map_err(|e| Unavailable((*e).clone()))?;
        Ok(entry.value)
    }

    fn refresh_in_background(&self, kind: Kind, source: &Arc<dyn MetadataSource>, key: Key, e: &Entry) {
        if e.refreshing.swap(true, Relaxed) {
            return;
        }
        let (this, source, flag) = (self.clone(), source.clone(), e.refreshing.clone());
        tokio::spawn(async move {
            match fetch(kind, source.as_ref(), &key.1, &this.stats).await {
                Ok(value) => {
                    let entry =
                        Entry { value: value.map(Arc::new), fetched_at: Instant::now(), refreshing: Arc::default() };
                    this.cache(kind).insert(key, entry).await;
                }
                Err(err) => {
                    // Keep serving the stale value; try again after a pause (or when
                    // the source said to), not on every request.
                    let wait = err.retry_after.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(60));
                    tokio::time::sleep(wait).await;
                    flag.store(false, Relaxed);
                }
            }
        });
    }

    /// Removes one entry (admin API); true when something was held.
    pub async fn evict(&self, kind: Kind, issuer: Option<&Arc<str>>, id: &str) -> bool {
        let cache = self.cache(kind);
        let before = cache.iter().filter(|(k, _)| &*k.1 == id && issuer.is_none_or(|i| *i == k.0)).count();
        let id: Arc<str> = Arc::from(id);
        let issuer = issuer.cloned();
        let _ = cache.invalidate_entries_if(move |k, _| k.1 == id && issuer.as_ref().is_none_or(|i| *i == k.0));
        cache.run_pending_tasks().await;
        before > 0
    }

    /// Drops every entry of an issuer (its file source was reloaded).
    pub async fn evict_issuer(&self, issuer: &Arc<str>) {
        for kind in [Kind::User, Kind::Client] {
            let issuer = issuer.clone();
            let _ = self.cache(kind).invalidate_entries_if(move |k, _| k.0 == issuer);
            self.cache(kind).run_pending_tasks().await;
        }
    }

    /// Entries held (users, clients), after pending maintenance.
    pub async fn sizes(&self) -> (u64, u64) {
        self.users.run_pending_tasks().await;
        self.clients.run_pending_tasks().await;
        (self.users.entry_count(), self.clients.entry_count())
    }
}

async fn fetch(
    kind: Kind,
    source: &dyn MetadataSource,
    id: &str,
    stats: &CacheStats,
) -> Result<Option<Metadata>, SourceError> {
    let r = match kind {
        Kind::User => source.user(id).await,
        Kind::Client => source.client(id).await,
    };
    match &r {
        Ok(Some(_)) => stats.fetch_ok.fetch_add(1, Relaxed),
        Ok(None) => stats.fetch_not_found.fetch_add(1, Relaxed),
        Err(e) => {
            tracing::warn!(source = source.kind(), kind = kind.as_str(), error = %e, "metadata source failed");
            stats.fetch_error.fetch_add(1, Relaxed)
        }
    };
    r
}
