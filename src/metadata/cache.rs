//! The metadata cache (docs/configuration.md, "[cache]"): users and clients in separate stores (`store.rs`) keyed by
//! (issuer, id). Fresh for `ttl`; then served stale while one background refresh runs;
//! kept up to `ttl + max_stale` so a failing source does not fail requests; "does not
//! exist" remembered for `negative_ttl`. Concurrent misses for one key make one call.
//! A key whose source call failed is not asked again before its backoff (1 s doubling
//! to 30 s, or longer when the source said `Retry-After`) has passed: lookups meanwhile
//! serve the stale value, or fail at once with that `Retry-After` when none is held.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::shared::{Invalidation, Lease, Shared, SharedEntry};
use super::{Metadata, MetadataSource, SourceError, StoredMetadata};
use crate::config::CacheConfig;
use crate::store::{Stamp, Store, Timestamped};

/// What names an entry: the issuer (the store's tag for the entry), and [`digest`]
/// of the issuer and the user or client id (the store's key). The id itself is not
/// kept: the cache holds one entry per caller, and the id's own allocation cost more
/// than the entry's metadata (docs/performance.md, memory). Lookups, evictions and
/// the second level all have the id at hand when they need it.
#[derive(Clone, Copy)]
pub struct Key {
    /// The issuer's place in [`Issuers`]: what [`MetadataCache::forget_issuer`]
    /// selects by.
    issuer: u32,
    digest: Digest,
}

/// Every issuer an entry was stored for, each once, in the order first seen, so a
/// key names its issuer by a 4-byte index rather than an `Arc<str>`, and the digest
/// hashes that index rather than the name (one SHA-256 block for an id of up to 51
/// bytes). Only added to: an index names the same issuer for the life of the cache,
/// across reloads. As many as the issuers configured over that life.
#[derive(Default)]
struct Issuers {
    /// Read on every lookup, without a lock.
    all: arc_swap::ArcSwap<Vec<Arc<str>>>,
    /// Held while adding one.
    adding: Mutex<()>,
}

impl Issuers {
    /// The index of `issuer`, added when new.
    fn index(&self, issuer: &Arc<str>) -> u32 {
        let at = |all: &[Arc<str>]| all.iter().position(|i| Arc::ptr_eq(i, issuer) || **i == **issuer);
        let i = match at(&self.all.load()) {
            Some(i) => i,
            None => {
                let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
                let all = self.all.load_full();
                at(&all).unwrap_or_else(|| {
                    let mut more = Vec::clone(&all);
                    more.push(issuer.clone());
                    self.all.store(Arc::new(more));
                    all.len()
                })
            }
        };
        // Past u32::MAX issuers (never), indexes are shared: their ids' digests are
        // then as if of one issuer.
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    fn find(&self, issuer: &str) -> Option<u32> {
        self.all.load().iter().position(|i| &**i == issuer).map(|i| u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The digest of `id` under each issuer (`None` where `only` names another).
    fn digests(&self, only: Option<&str>, id: &str) -> Vec<Option<Digest>> {
        let all = self.all.load();
        (0..all.len())
            .zip(all.iter())
            .map(|(i, name)| {
                only.is_none_or(|o| o == &**name).then(|| digest(u32::try_from(i).unwrap_or(u32::MAX), id))
            })
            .collect()
    }
}

/// SHA-256 of an (issuer, id) pair, its first 128 bits.
type Digest = [u8; 16];

/// Two ids share an entry only if their digests collide: finding an id whose digest
/// is a given user's (to read that user's metadata) is a second preimage of SHA-256
/// cut to 128 bits. The issuer's index has a fixed length, so no (issuer, id) pair
/// writes the same bytes as another.
fn digest(issuer: u32, id: &str) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(issuer.to_le_bytes());
    h.update(id.as_bytes());
    let full = h.finalize();
    let mut d = [0; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// [`digest`] of a client id, remembered per thread for the last few: every request
/// looks up its caller's client, and a deployment has a handful of clients for many
/// users, so this saves one SHA-256 block per request (docs/performance.md). A pure
/// function's memo: right for any cache, whichever issuer order it has.
fn client_digest(issuer: u32, id: &str) -> Digest {
    /// Clients remembered per thread; past that, the oldest is replaced.
    const HELD: usize = 8;
    type Memo = std::cell::RefCell<(Vec<(u32, Box<str>, Digest)>, usize)>;
    thread_local! {
        static MEMO: Memo = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let (held, next) = &mut *memo;
        if let Some((_, _, d)) = held.iter().find(|(i, c, _)| *i == issuer && **c == *id) {
            return *d;
        }
        let d = digest(issuer, id);
        if held.len() < HELD {
            held.push((issuer, id.into(), d));
        } else {
            held[*next] = (issuer, id.into(), d);
            *next = (*next + 1) % HELD;
        }
        d
    })
}

// Equality and hashing are the digest's (which covers the issuer), so a lookup can
// use the digest alone.
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

#[derive(Clone)]
struct Entry {
    /// `None`: the source said this id does not exist.
    value: Option<Arc<StoredMetadata>>,
    fetched_at: Stamp,
    /// Wall-clock ms since the epoch the value is known current as of: when the
    /// source read began, or the `updated_at` of the pushed change that wrote it
    /// (docs/operations.md, "Push invalidation"). A pushed change replaces only a value
    /// older than itself, whatever order changes arrive in.
    as_of_ms: u64,
    /// The source's origin when it was read ([`MetadataSource::origin`]): served
    /// only while the source still answers from that content.
    origin: u64,
}

impl Timestamped for Entry {
    fn created(&self) -> Stamp {
        self.fetched_at
    }
}

pub use super::Kind;

/// How the cache answered one lookup (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// A fresh entry.
    Hit,
    /// A stale entry, served while one refresh runs.
    Stale,
    /// Nothing held: the source was asked.
    Miss,
}

impl CacheLookup {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Stale => "stale",
            CacheLookup::Miss => "miss",
        }
    }
}

/// What [`MetadataCache::replace`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// The pushed value is held now.
    Replaced,
    /// What was held is at least as new as the pushed value: it was dropped instead,
    /// so the next lookup reads the source.
    Evicted,
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
    /// When the last "metadata source failed" warning was logged (ms since the
    /// epoch), and how many were folded into the next one: an outage under load
    /// must not flood the log with one line per request.
    last_warn_ms: AtomicU64,
    warns_folded: AtomicU64,
}

impl CacheStats {
    /// Whether a failure warning may be logged now (at most one a second); returns
    /// how many failures were folded since the last one.
    fn warn_slot(&self) -> Option<u64> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let last = self.last_warn_ms.load(Relaxed);
        if now.saturating_sub(last) >= 1000 && self.last_warn_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            return Some(self.warns_folded.swap(0, Relaxed));
        }
        self.warns_folded.fetch_add(1, Relaxed);
        None
    }
}

/// First pause after a failed source call for a key; doubled per failure.
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Cap of the doubling (a longer `Retry-After` from the source is honoured).
const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Cap of any pause, `Retry-After` included.
const FAILURE_PAUSE_MAX: Duration = Duration::from_secs(300);

/// The last failed source call for a key.
#[derive(Clone)]
struct Failure {
    /// No source call for this key before this instant.
    until: Instant,
    /// Failures in a row.
    attempts: u32,
    /// The error (shared by every waiter of one single-flight call, so it is
    /// counted once).
    err: Arc<SourceError>,
}

/// Equal metadata values held once. Users of one tenant, plan or role mostly have
/// the same app_metadata, and each value held costs two allocations besides its
/// entry (docs/performance.md, memory); sharing it also means an authorization rule
/// parses it once for all of them. Values are compared by content (the text and
/// where user_metadata begins), so sharing changes nothing a caller can see; the
/// minter's reuse (same `Arc`: metadata unchanged) holds for equal content too.
///
/// Weak references, so holding a value here never keeps it alive: a value no entry
/// and no reused token holds is freed as before, and its slot swept once the map
/// has grown by a quarter since the last sweep.
#[derive(Default)]
struct Interner {
    /// By a keyed hash of the content; a value whose hash is taken by other content
    /// (a 64-bit collision) is simply not shared.
    held: std::collections::HashMap<u64, std::sync::Weak<StoredMetadata>>,
    hasher: std::hash::RandomState,
    /// Sweep once `held` has this many slots.
    sweep_at: usize,
}

impl Interner {
    fn intern(&mut self, v: StoredMetadata) -> Arc<StoredMetadata> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one((&*v.text, v.user_at));
        if let Some(held) = self.held.get(&hash).and_then(std::sync::Weak::upgrade)
            && *held == v
        {
            return held;
        }
        if self.held.len() >= self.sweep_at {
            self.held.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.held.len() + self.held.len() / 4).max(1024);
        }
        let v = Arc::new(v);
        self.held.insert(hash, Arc::downgrade(&v));
        v
    }
}

/// One kind's entries: a failed source call is shared by every waiter as one `Arc`.
/// Keyed by the digest alone; each entry tagged with its issuer's index.
type Entries = Store<Digest, Entry, SourceError>;

/// Users and clients, each in its own cache.
#[derive(Clone)]
pub struct MetadataCache {
    users: Arc<Entries>,
    clients: Arc<Entries>,
    /// Keys whose last source call failed, with their backoff.
    failures: moka::sync::Cache<(Kind, Key), Failure>,
    /// Keys whose background refresh is running (one at a time per key). A set
    /// beside the caches rather than a flag in every entry: few keys are ever in it.
    refreshing: Arc<Mutex<HashSet<(Kind, Key)>>>,
    /// Every value read, by content: equal values share one allocation.
    interned: Arc<Mutex<Interner>>,
    /// The issuers the keys name.
    issuers: Arc<Issuers>,
    ttl: Duration,
    /// How long a value (`ttl + max_stale`) and a "does not exist" answer live.
    lifetimes: (Duration, Duration),
    pub stats: Arc<CacheStats>,
    /// The second level shared by replicas (docs/scaling.md), when configured.
    pub shared: Option<Arc<Shared>>,
    /// Each issuer whose source can be shared, with that source's scope: what an
    /// eviction deletes from the second level.
    pub scopes: Arc<Vec<(Arc<str>, Arc<str>)>>,
    /// Whether users are read with their user_metadata (some route or rule reads
    /// it). Per state, not per entry store: a reload may switch it while the entries
    /// are kept. An entry tells whether it carries user_metadata, so while this is on
    /// a user entry without it is a miss, never "the user has none"; while off, user
    /// entries are stored without it.
    pub(crate) user_metadata: bool,
}

/// How long a lookup waits for another replica's source call before calling the
/// source itself (a lease outlives a dead holder by at most its own life).
const LEASE_WAIT: Duration = Duration::from_secs(6);

/// Wall-clock milliseconds since the UNIX epoch: second-level entries carry their
/// fetch time this way, since `Instant`s do not cross processes.
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl MetadataCache {
    pub fn new(cfg: &CacheConfig) -> MetadataCache {
        // max_entries bounds users plus clients; tenants have far fewer clients than
        // users, so clients get a tenth of the budget.
        let clients_cap = (cfg.max_entries / 10).max(1);
        let users_cap = cfg.max_entries - clients_cap;
        let (fresh_and_stale, negative) = (cfg.ttl + cfg.max_stale, cfg.negative_ttl);
        let build = |cap: u64| {
            let lifetime = move |e: &Entry| if e.value.is_some() { fresh_and_stale } else { negative };
            Arc::new(Entries::new(cap, Box::new(lifetime)))
        };
        MetadataCache {
            users: build(users_cap),
            clients: build(clients_cap),
            failures: moka::sync::Cache::builder()
                .max_capacity((cfg.max_entries / 10).max(1000))
                .time_to_live(FAILURE_PAUSE_MAX * 2)
                .support_invalidation_closures()
                .build(),
            refreshing: Arc::default(),
            interned: Arc::default(),
            issuers: Arc::default(),
            ttl: cfg.ttl,
            lifetimes: (fresh_and_stale, negative),
            stats: Arc::new(CacheStats::default()),
            shared: None,
            scopes: Arc::default(),
            user_metadata: false,
        }
    }

    /// Whether `e` answers a lookup of `kind` here: a user entry read without
    /// user_metadata does not while user_metadata is wanted. A "does not exist"
    /// answer always does.
    fn complete(&self, kind: Kind, e: &Entry) -> bool {
        kind == Kind::Client || !self.user_metadata || e.value.as_ref().is_none_or(|v| v.has_user_metadata())
    }

    /// Whether a source read of `kind` asks for user_metadata.
    fn wants_user_metadata(&self, kind: Kind) -> bool {
        kind == Kind::User && self.user_metadata
    }

    fn cache(&self, kind: Kind) -> &Entries {
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
    ) -> Result<Option<Arc<StoredMetadata>>, Unavailable> {
        self.get_traced(kind, source, issuer, id, &mut CacheLookup::Miss).await
    }

    /// [`Self::get`], also telling (for the access log) whether the cache answered.
    pub async fn get_traced(
        &self,
        kind: Kind,
        source: &Arc<dyn MetadataSource>,
        issuer: &Arc<str>,
        id: &str,
        lookup: &mut CacheLookup,
    ) -> Result<Option<Arc<StoredMetadata>>, Unavailable> {
        let cache = self.cache(kind);
        let issuer_index = self.issuers.index(issuer);
        let digest = match kind {
            Kind::User => digest(issuer_index, id),
            Kind::Client => client_digest(issuer_index, id),
        };
        // An entry read from other content than the source's now (a file re-read, a
        // source a reload replaced) is a miss, however it got here.
        if let Some((e, age)) = cache.get_aged(&digest)
            && e.origin == source.origin()
            && self.complete(kind, &e)
        {
            if e.value.is_some() && age >= self.ttl {
                self.stats.stale_served.fetch_add(1, Relaxed);
                *lookup = CacheLookup::Stale;
                let key = Key { issuer: issuer_index, digest };
                self.refresh_in_background(kind, source, key, (issuer, id));
            } else {
                self.stats.hits.fetch_add(1, Relaxed);
                *lookup = CacheLookup::Hit;
            }
            return Ok(e.value);
        }
        self.stats.misses.fetch_add(1, Relaxed);
        *lookup = CacheLookup::Miss;
        // Boxed: a miss is the rare path, and its state (single-flight, the source
        // call) would otherwise enlarge, and be copied with, every lookup's future.
        let key = Key { issuer: issuer_index, digest };
        Box::pin(self.load(kind, source, key, (issuer, id))).await
    }

    /// A miss: asks the source (one call for concurrent misses of one key), unless
    /// the key's last call failed a moment ago.
    async fn load(
        &self,
        kind: Kind,
        source: &Arc<dyn MetadataSource>,
        key: Key,
        (issuer, id): (&str, &str),
    ) -> Result<Option<Arc<StoredMetadata>>, Unavailable> {
        let cache = self.cache(kind);
        let fkey = (kind, key);
        if let Some(f) = self.failures.get(&fkey)
            && let Some(left) = f.until.checked_duration_since(Instant::now())
        {
            // The source failed for this key a moment ago: do not ask it again yet.
            return Err(Unavailable(SourceError { reason: f.err.reason.clone(), retry_after: Some(round_up(left)) }));
        }
        let origin = source.origin();
        let entry = match cache
            .try_get_with((key.digest, key.issuer), |e| e.origin == origin && self.complete(kind, e), async move {
                self.fetch_through(kind, source.as_ref(), (issuer, id), false).await
            })
            .await
        {
            Ok(entry) => entry,
            Err(e) => {
                let wait = self.note_failure(fkey, e.clone());
                return Err(Unavailable(SourceError { reason: e.reason.clone(), retry_after: Some(round_up(wait)) }));
            }
        };
        if self.failures.contains_key(&fkey) {
            self.failures.invalidate(&fkey);
        }
        Ok(entry.value)
    }

    /// Records a failed source call for `fkey`; returns the pause before the next one.
    fn note_failure(&self, fkey: (Kind, Key), err: Arc<SourceError>) -> Duration {
        let now = Instant::now();
        let prev = self.failures.get(&fkey);
        if let Some(p) = &prev
            && Arc::ptr_eq(&p.err, &err)
        {
            // Another waiter of the same call already counted it.
            return p.until.saturating_duration_since(now);
        }
        let attempts = prev.map_or(0, |p| p.attempts).saturating_add(1);
        let wait = failure_backoff(attempts, err.retry_after);
        self.failures.insert(fkey, Failure { until: now + wait, attempts, err });
        wait
    }

    fn refresh_in_background(
        &self,
        kind: Kind,
        source: &Arc<dyn MetadataSource>,
        key: Key,
        (issuer, id): (&Arc<str>, &str),
    ) {
        let fkey = (kind, key);
        // After a failed refresh, keep serving the stale value until the backoff ends
        // rather than asking the source on every request.
        if self.failures.get(&fkey).is_some_and(|f| f.until > Instant::now())
            || !self.refreshing.lock().unwrap_or_else(|p| p.into_inner()).insert(fkey)
        {
            return;
        }
        let (this, source, issuer, id) = (self.clone(), source.clone(), issuer.clone(), Box::<str>::from(id));
        tokio::spawn(async move {
            match this.fetch_through(kind, source.as_ref(), (&issuer, &id), true).await {
                Ok(entry) => {
                    this.failures.invalidate(&fkey);
                    // A change pushed while this read ran is newer than its answer:
                    // keep the pushed value.
                    this.cache(kind).update((fkey.1.digest, fkey.1.issuer), |held| match held {
                        Some(h) if h.as_of_ms > entry.as_of_ms => Some(h.clone()),
                        _ => Some(entry),
                    });
                }
                Err(err) => {
                    this.note_failure(fkey, Arc::new(err));
                }
            }
            this.refreshing.lock().unwrap_or_else(|p| p.into_inner()).remove(&fkey);
        });
    }

    /// Removes one entry (admin API, hooks) here, from the second level, and from
    /// every other replica's in-process cache; true when this replica held it.
    /// `issuer` `None`: of every issuer.
    pub async fn evict(&self, kind: Kind, issuer: Option<&Arc<str>>, id: &str) -> bool {
        if let Some(sh) = &self.shared {
            // The second level first: a lookup racing this eviction must not find
            // the old value there after missing here.
            let names: Vec<String> = self
                .scopes
                .iter()
                .filter(|(i, _)| issuer.is_none_or(|x| x == i))
                .map(|(i, scope)| sh.entry_name(kind, scope, i, id))
                .collect();
            sh.delete(&names).await;
        }
        let held = self.evict_local(kind, issuer.map(|i| &**i), id);
        if let Some(sh) = &self.shared {
            sh.publish(&Invalidation::Entry { kind, issuer: issuer.map(|i| i.to_string()), id: id.to_string() }).await;
        }
        held
    }

    /// Removes one entry from this replica's in-process cache only.
    pub fn evict_local(&self, kind: Kind, issuer: Option<&str>, id: &str) -> bool {
        // The id's digest under each issuer (only `issuer`'s when given).
        let digests = Arc::new(self.issuers.digests(issuer, id));
        let is_id = |digests: &[Option<Digest>], digest: &Digest, issuer: u32| {
            digests.get(issuer as usize) == Some(&Some(*digest))
        };
        let fdigests = digests.clone();
        let _ =
            self.failures.invalidate_entries_if(move |k, _| k.0 == kind && is_id(&fdigests, &k.1.digest, k.1.issuer));
        self.failures.run_pending_tasks();
        self.cache(kind).remove_if(|digest, issuer| is_id(&digests, digest, issuer)) > 0
    }

    /// Drops every in-process entry (the shared cache came back after an outage, so
    /// evictions may have been missed).
    pub fn forget_all(&self) {
        for kind in [Kind::User, Kind::Client] {
            self.cache(kind).remove_if(|_, _| true);
        }
        self.failures.invalidate_all();
    }

    /// A pushed change (docs/operations.md, "Push invalidation"): holds `value` as
    /// current as of `updated_at_ms` when nothing is held (it saves a read) or what is
    /// held is older; otherwise drops what is held, since the push cannot be ordered
    /// against it, and the next lookup reads the source. Either way the key's failure
    /// backoff ends. With a shared cache the value is written through to it (unless it
    /// holds a newer one) and every other replica drops its copy, so their next
    /// lookup finds the new value there without a source read.
    /// `origin` is the issuer's source's ([`MetadataSource::origin`]): the entry is
    /// served while the source answers from it.
    pub async fn replace(
        &self,
        kind: Kind,
        (issuer, origin): (&Arc<str>, u64),
        id: &str,
        (value, user_metadata): (Metadata, Option<Metadata>),
        updated_at_ms: u64,
    ) -> Replace {
        let shared = self.shared_name(kind, issuer, id);
        if let Some((sh, name)) = &shared
            && sh.get_entry(name).await.is_some_and(|e| e.as_of_ms >= updated_at_ms)
        {
            // Another replica holds a newer value: this push is older than it.
            self.evict(kind, Some(issuer), id).await;
            return Replace::Evicted;
        }
        let key = self.key(issuer, id);
        let mut outcome = Replace::Evicted;
        // user_metadata is held only while wanted; a push without it leaves a user
        // entry that a state wanting it reads again (see `complete`).
        let stored = self.intern(match user_metadata.filter(|_| self.wants_user_metadata(kind)) {
            Some(user) => StoredMetadata::with_user_metadata(value, user),
            None => StoredMetadata::new(value),
        });
        let fresh = Entry { value: Some(stored.clone()), fetched_at: Stamp::now(), as_of_ms: updated_at_ms, origin };
        self.cache(kind).update((key.digest, key.issuer), |held| {
            if held.is_some_and(|h| h.as_of_ms >= updated_at_ms) {
                return None;
            }
            outcome = Replace::Replaced;
            Some(fresh)
        });
        self.failures.invalidate(&(kind, key));
        if let Some((sh, name)) = &shared {
            match outcome {
                Replace::Replaced => {
                    let entry = SharedEntry {
                        fetched_ms: wall_ms(),
                        as_of_ms: updated_at_ms,
                        value: Some(stored.json().to_string()),
                        user_metadata: stored.user_metadata_json().map(str::to_string),
                    };
                    sh.put_entry(name, &entry, self.lifetimes.0).await;
                    sh.publish(&Invalidation::Entry { kind, issuer: Some(issuer.to_string()), id: id.to_string() })
                        .await;
                }
                Replace::Evicted => {
                    self.evict(kind, Some(issuer), id).await;
                }
            }
        }
        outcome
    }

    /// Remembers that `id` does not exist (it was deleted), for `negative_ttl`, as a
    /// not-found answer from the source would be; here, in the shared cache, and (by
    /// dropping their copies) on every other replica.
    pub async fn remember_absent(&self, kind: Kind, (issuer, origin): (&Arc<str>, u64), id: &str) {
        let key = self.key(issuer, id);
        let now_ms = crate::clock::unix_now_ms();
        let entry = Entry { value: None, fetched_at: Stamp::now(), as_of_ms: now_ms, origin };
        if let Some((sh, name)) = self.shared_name(kind, issuer, id) {
            let absent = SharedEntry { fetched_ms: now_ms, as_of_ms: now_ms, value: None, user_metadata: None };
            sh.put_entry(&name, &absent, self.lifetimes.1).await;
            sh.publish(&Invalidation::Entry { kind, issuer: Some(issuer.to_string()), id: id.to_string() }).await;
        }
        self.cache(kind).insert_tagged(key.digest, key.issuer, entry);
        self.failures.invalidate(&(kind, key));
    }

    /// The shared cache and the Redis key of `id`, when there is a shared cache and
    /// the issuer's source is shared.
    fn shared_name(&self, kind: Kind, issuer: &Arc<str>, id: &str) -> Option<(&Arc<Shared>, String)> {
        let sh = self.shared.as_ref()?;
        let (_, scope) = self.scopes.iter().find(|(i, _)| i == issuer)?;
        Some((sh, sh.entry_name(kind, scope, issuer, id)))
    }

    /// Drops every entry of an issuer (its source was re-read or replaced), and the
    /// backoff of its failed calls: the source now asked is not the one that failed.
    /// Frees the memory; that none is served any more is the entries' origin's doing.
    pub fn forget_issuer(&self, issuer: &Arc<str>) {
        // Never stored for: nothing to drop.
        let Some(issuer) = self.issuers.find(issuer) else { return };
        for kind in [Kind::User, Kind::Client] {
            self.cache(kind).remove_if(|_, tag| tag == issuer);
        }
        let _ = self.failures.invalidate_entries_if(move |k, _| k.1.issuer == issuer);
        self.failures.run_pending_tasks();
    }

    // -- the second level -----------------------------------------------------------

    /// One source read for `key`, through the shared second level when there is one:
    /// its entry if it holds a usable one (a fresh one when `want_fresh`), else the
    /// source, called by the one replica holding the key's lease while the others
    /// wait for what it writes. Without a usable second level: the source.
    async fn fetch_through(
        &self,
        kind: Kind,
        source: &dyn MetadataSource,
        (issuer, id): (&str, &str),
        want_fresh: bool,
    ) -> Result<Entry, SourceError> {
        // Taken before the read: content replaced during it leaves the entry marked
        // with the older origin, to be read again, never the reverse.
        let origin = source.origin();
        let (Some(sh), Some(scope)) = (self.shared.as_ref().filter(|s| s.up()), source.shared_scope()) else {
            return self.fetch_entry(kind, source, id, origin).await;
        };
        let name = sh.entry_name(kind, scope, issuer, id);
        let give_up = Instant::now() + LEASE_WAIT;
        let mut waited = false;
        loop {
            if let Some(e) = sh.get_entry(&name).await
                && let Some(entry) = self.adopt_shared(kind, e, want_fresh, origin)
            {
                sh.stats.hits.fetch_add(1, Relaxed);
                return Ok(entry);
            }
            match sh.lease(&name).await {
                Lease::Busy if Instant::now() < give_up => {
                    if !waited {
                        sh.stats.lease_waits.fetch_add(1, Relaxed);
                        waited = true;
                    }
                    tokio::time::sleep(sh.lease_poll()).await;
                }
                lease => {
                    // The holder before us may have written the value and let the
                    // lease go between our look and our lease: look once more.
                    if matches!(lease, Lease::Held { .. })
                        && let Some(e) = sh.get_entry(&name).await
                        && let Some(entry) = self.adopt_shared(kind, e, want_fresh, origin)
                    {
                        sh.release(lease).await;
                        sh.stats.hits.fetch_add(1, Relaxed);
                        return Ok(entry);
                    }
                    let r = self.fetch_entry(kind, source, id, origin).await;
                    if let Ok(e) = &r {
                        let life = if e.value.is_some() { self.lifetimes.0 } else { self.lifetimes.1 };
                        let shared = SharedEntry {
                            fetched_ms: wall_ms().saturating_sub(e.fetched_at.elapsed().as_millis() as u64),
                            as_of_ms: e.as_of_ms,
                            value: e.value.as_ref().map(|v| v.json().to_string()),
                            user_metadata: e.value.as_ref().and_then(|v| v.user_metadata_json()).map(str::to_string),
                        };
                        sh.put_entry(&name, &shared, life).await;
                    }
                    sh.release(lease).await;
                    return r;
                }
            }
        }
    }

    /// A second-level entry as an in-process one, unless it has outlived its
    /// lifetime (or, when `want_fresh`, its `ttl`), or is a user read without the
    /// user_metadata wanted here (another replica's configuration does not read it:
    /// the entries are one namespace, so evictions reach them all).
    fn adopt_shared(&self, kind: Kind, e: SharedEntry, want_fresh: bool, origin: u64) -> Option<Entry> {
        let age = Duration::from_millis(wall_ms().saturating_sub(e.fetched_ms));
        let life = if e.value.is_some() { self.lifetimes.0 } else { self.lifetimes.1 };
        if age >= life || (want_fresh && e.value.is_some() && age >= self.ttl) {
            return None;
        }
        let want_user = self.wants_user_metadata(kind);
        let value = match e.value {
            // Sealed by a replica, so well-formed; parsed anyway, so nothing but a
            // JSON object ever reaches a token.
            Some(text) => {
                let app = serde_json::from_str::<Metadata>(&text).ok()?;
                Some(self.intern(match (want_user, e.user_metadata) {
                    (true, Some(user)) => {
                        StoredMetadata::with_user_metadata(app, serde_json::from_str::<Metadata>(&user).ok()?)
                    }
                    (true, None) => return None,
                    // Not held unless wanted.
                    (false, _) => StoredMetadata::new(app),
                }))
            }
            None => None,
        };
        let now = Instant::now();
        Some(Entry { value, fetched_at: Stamp::at(now.checked_sub(age).unwrap_or(now)), as_of_ms: e.as_of_ms, origin })
    }

    async fn fetch_entry(
        &self,
        kind: Kind,
        source: &dyn MetadataSource,
        id: &str,
        origin: u64,
    ) -> Result<Entry, SourceError> {
        // Current as of when the read was sent: a change pushed after that is newer.
        let as_of_ms = crate::clock::unix_now_ms();
        fetch(kind, source, id, self.wants_user_metadata(kind), &self.stats).await.map(|value| Entry {
            value: value.map(|v| self.intern(v)),
            fetched_at: Stamp::now(),
            as_of_ms,
            origin,
        })
    }

    fn key(&self, issuer: &Arc<str>, id: &str) -> Key {
        let issuer = self.issuers.index(issuer);
        Key { issuer, digest: digest(issuer, id) }
    }

    /// `v`, or the value held already with the same content.
    fn intern(&self, v: StoredMetadata) -> Arc<StoredMetadata> {
        self.interned.lock().unwrap_or_else(|p| p.into_inner()).intern(v)
    }

    /// Entries held (users, clients).
    pub async fn sizes(&self) -> (u64, u64) {
        (self.users.len(), self.clients.len())
    }
}

/// 1 s × 2^(attempts-1) up to 30 s, or the source's `Retry-After` when longer; at
/// most 5 minutes.
fn failure_backoff(attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = FAILURE_BACKOFF_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(FAILURE_BACKOFF_CAP);
    exp.max(retry_after.unwrap_or_default()).min(FAILURE_PAUSE_MAX)
}

/// Whole seconds, rounded up (for `Retry-After`).
fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// One source read, as the cache stores it; a user with its user_metadata when
/// `with_user_metadata`.
async fn fetch(
    kind: Kind,
    source: &dyn MetadataSource,
    id: &str,
    with_user_metadata: bool,
    stats: &CacheStats,
) -> Result<Option<StoredMetadata>, SourceError> {
    let r = match (kind, with_user_metadata) {
        (Kind::User, true) => source
            .user_with_user_metadata(id)
            .await
            .map(|found| found.map(|(app, user)| StoredMetadata::with_user_metadata(app, user))),
        (Kind::User, false) => source.user(id).await.map(|found| found.map(StoredMetadata::new)),
        (Kind::Client, _) => source.client(id).await.map(|found| found.map(StoredMetadata::new)),
    };
    match &r {
        Ok(Some(_)) => stats.fetch_ok.fetch_add(1, Relaxed),
        Ok(None) => stats.fetch_not_found.fetch_add(1, Relaxed),
        Err(e) => {
            match stats.warn_slot() {
                Some(folded) => tracing::warn!(
                    source = source.kind(),
                    kind = kind.as_str(),
                    error = %e,
                    not_logged_since_last = folded,
                    "metadata source failed"
                ),
                None => {
                    tracing::debug!(source = source.kind(), kind = kind.as_str(), error = %e, "metadata source failed")
                }
            }
            stats.fetch_error.fetch_add(1, Relaxed)
        }
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_by_its_digest() {
        let store: Entries = Store::new(1000, Box::new(|_: &Entry| Duration::from_secs(60)));
        for i in 0..200 {
            let entry = Entry { value: None, fetched_at: Stamp::now(), as_of_ms: 0, origin: 0 };
            store.insert_tagged(digest(0, &format!("user|{i}")), 0, entry);
        }
        for i in 0..200 {
            let id = format!("user|{i}");
            assert!(store.get_aged(&digest(0, &id)).is_some(), "{id} not found by its digest");
        }
        assert!(store.get_aged(&digest(1, "user|1")).is_none(), "another issuer's");
        assert_ne!(digest(0, "user|1"), digest(1, "user|1"));
    }

    #[test]
    fn a_remembered_client_digest_is_the_digest() {
        // More clients than are remembered, in turn and again, under two issuers: the
        // memo answers what the digest would, never another pair's.
        for round in 0..3 {
            for issuer in [0, 1] {
                for i in 0..20 {
                    let id = format!("client-{}", (i * 7 + round) % 20);
                    assert_eq!(client_digest(issuer, &id), digest(issuer, &id), "{issuer} {id}");
                }
            }
        }
        assert_ne!(client_digest(0, "c"), client_digest(1, "c"));
        assert_ne!(client_digest(0, "c"), client_digest(0, "c2"));
    }

    #[test]
    fn an_entry_stays_small() {
        // One per caller, in a table with room for more: docs/performance.md, memory.
        // As the store holds it: the digest, the entry, two 32-bit counters.
        let slot = std::mem::size_of::<(Digest, (Entry, u32, u32))>();
        assert!(slot <= 56, "{slot}");
    }

    #[tokio::test]
    async fn an_eviction_without_issuer_reaches_every_issuer() {
        let c = MetadataCache::new(&CacheConfig {
            ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            max_entries: 1000,
        });
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("https://a/"), Arc::from("https://b/"));
        for (iss, id) in [(&a, "u"), (&b, "u"), (&a, "v"), (&b, "w")] {
            c.remember_absent(Kind::User, (iss, 0), id).await;
        }
        assert!(c.evict_local(Kind::User, None, "u"));
        assert!(held(&c, "https://a/", "u").is_none() && held(&c, "https://b/", "u").is_none());
        assert!(held(&c, "https://a/", "v").is_some() && held(&c, "https://b/", "w").is_some());
        assert!(c.evict_local(Kind::User, Some("https://b/"), "w"));
        assert!(!c.evict_local(Kind::User, Some("https://b/"), "v"), "v is a's, not b's");
        assert!(held(&c, "https://a/", "v").is_some());
        c.forget_issuer(&a);
        assert_eq!(c.users.len(), 0);
    }

    fn held(c: &MetadataCache, issuer: &str, id: &str) -> Option<(Option<String>, u64)> {
        let issuer = c.issuers.find(issuer)?;
        c.users.get_aged(&digest(issuer, id)).map(|(e, _)| (e.value.map(|v| v.json().to_string()), e.as_of_ms))
    }

    #[tokio::test]
    async fn a_pushed_value_replaces_only_an_older_one() {
        let c = MetadataCache::new(&CacheConfig {
            ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            max_entries: 1000,
        });
        let iss: Arc<str> = Arc::from("https://issuer/");
        let md = |v: &str| serde_json::json!({ "plan": v }).as_object().cloned().unwrap_or_default();
        let with_none = |v: &str| (md(v), None);
        // Nothing held: stored, as current as of its updated_at.
        assert_eq!(c.replace(Kind::User, (&iss, 0), "u", with_none("a"), 2000).await, Replace::Replaced);
        assert_eq!(held(&c, "https://issuer/", "u"), Some((Some(r#"{"plan":"a"}"#.into()), 2000)));
        // Newer: replaces.
        assert_eq!(c.replace(Kind::User, (&iss, 0), "u", with_none("b"), 3000).await, Replace::Replaced);
        assert_eq!(held(&c, "https://issuer/", "u"), Some((Some(r#"{"plan":"b"}"#.into()), 3000)));
        // Older or as old: evicts.
        assert_eq!(c.replace(Kind::User, (&iss, 0), "u", with_none("c"), 3000).await, Replace::Evicted);
        assert_eq!(held(&c, "https://issuer/", "u"), None);
        assert_eq!(c.replace(Kind::User, (&iss, 0), "u", with_none("d"), 5000).await, Replace::Replaced);
        assert_eq!(c.replace(Kind::User, (&iss, 0), "u", with_none("e"), 4000).await, Replace::Evicted);
        assert_eq!(held(&c, "https://issuer/", "u"), None);
        // Another issuer's entry is another key.
        assert_eq!(
            c.replace(Kind::User, (&Arc::from("https://other/"), 0), "u", with_none("f"), 1).await,
            Replace::Replaced
        );
        // Absent: a negative entry, as current as of now.
        c.remember_absent(Kind::User, (&iss, 0), "u").await;
        let (value, as_of) = held(&c, "https://issuer/", "u").expect("a negative entry");
        assert!(value.is_none());
        assert!(as_of > 1_600_000_000_000);
    }

    #[test]
    fn equal_values_are_held_once() {
        let md = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let mut i = Interner::default();
        let a = i.intern(StoredMetadata::new(md(serde_json::json!({"plan": "pro"}))));
        let b = i.intern(StoredMetadata::new(md(serde_json::json!({"plan": "pro"}))));
        assert!(Arc::ptr_eq(&a, &b));
        // Other content, or the same app_metadata with user_metadata, is another value.
        let c = i.intern(StoredMetadata::new(md(serde_json::json!({"plan": "free"}))));
        let d = i.intern(StoredMetadata::with_user_metadata(
            md(serde_json::json!({"plan": "pro"})),
            md(serde_json::json!({})),
        ));
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &d));
        assert_eq!(
            (c.json(), d.json(), d.user_metadata_json()),
            (r#"{"plan":"free"}"#, r#"{"plan":"pro"}"#, Some("{}"))
        );
        // A value nobody holds any more is not kept alive, and its slot is swept.
        drop((a, b, c, d));
        for n in 0..3000 {
            drop(i.intern(StoredMetadata::new(md(serde_json::json!({ "n": n })))));
        }
        assert!(i.held.len() <= 1024 + 1024 / 4, "{} slots", i.held.len());
    }

    #[test]
    fn failure_warnings_are_folded_to_one_a_second() {
        let stats = CacheStats::default();
        assert_eq!(stats.warn_slot(), Some(0));
        for _ in 0..450 {
            assert_eq!(stats.warn_slot(), None);
        }
        // As if a second had passed: the next warning reports what was folded.
        stats.last_warn_ms.store(0, Relaxed);
        assert_eq!(stats.warn_slot(), Some(450));
    }
}
