//! Wires one configuration into the shared state every request uses: routes with
//! their upstream clients, the verifier, metadata sources and cache, the minter.
//!
//! It is also where claimsmith meets the machine: [`System`] is the one [`Host`]
//! that reads real files and environment variables, and [`load_config`] /
//! [`parse_config`] hand it to configuration validation (docs/architecture.md,
//! "Layers").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{CaFile, Config, ConfigErrors, SourceConfig};
use crate::host::{FileStamp, Host};
use crate::http_client::{self, Connector, Egress, JsonClient};
use crate::metadata::cache::{Kind, MetadataCache};
use crate::metadata::file::FileSource;
use crate::metadata::http::HttpSource;
use crate::metadata::keycloak::KeycloakSource;
use crate::metadata::okta::OktaSource;
use crate::metadata::shared::{Coherence, Invalidation, Shared};
use crate::metadata::{BoxFuture, Lookup, MetadataSource, NamedSource, SourceError, StoredMetadata, UserLookup};
use crate::metrics::{Metrics, SourceCounters};
use crate::mint::Minter;
use crate::proxy::Route;
use crate::verify::Verifier;
use crate::wire::hygiene;

/// How long a pushed event's id is remembered: Auth0 retries a failed delivery within
/// seconds, and replays are not expected after this.
const SEEN_EVENTS_FOR: Duration = Duration::from_secs(600);
/// Event ids remembered at most (about 100 bytes each).
const SEEN_EVENTS_MAX: u64 = 100_000;

/// The machine claimsmith runs on: its file system and its environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Host for System {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn stat(&self, path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt;
            (Some((m.ctime(), m.ctime_nsec())), Some((m.dev(), m.ino())))
        };
        #[cfg(not(unix))]
        let (changed, inode) = (None, None);
        Ok(FileStamp { modified: m.modified().ok(), changed, len: m.len(), inode })
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Reads and validates the config file at `path` and every file it names, from this
/// machine.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    Config::load(path, &System)
}

/// Validates config text, reading the files it names from this machine; relative
/// paths resolve against the working directory.
pub fn parse_config(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, &System)
}

/// Why the state could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl ToString) -> BuildError {
    BuildError::Invalid { key: key.into(), reason: reason.to_string() }
}

/// The state is defined beside the pipeline that reads it; it is built here.
pub use crate::proxy::App;

impl App {
    /// Builds the state. Reads file sources and CA files; makes no network call.
    pub fn build(config: Config) -> Result<App, BuildError> {
        Self::build_with(config, Arc::default())
    }

    /// Builds the state that replaces `old` on a reload: same metrics registry and
    /// cache counters, new sources and keys. Cached metadata is kept for issuers whose
    /// remote source (auth0, keycloak, okta, http) is configured exactly as before, so a reload does
    /// not send a burst of reads to a rate-limited tenant; entries of file sources,
    /// changed sources and new issuers are dropped (docs/operations.md, "Reload").
    ///
    /// The kept cache is shared with `old`, which goes on serving until the swap
    /// and finishes the requests it started after it: what `old` reads from its
    /// sources meanwhile lands in this cache too. Only the origin of the entries
    /// keeps that apart: a kept source has `old`'s origin, every other one a new one,
    /// so an entry `old` reads from its file is never served by this state, however
    /// late it is stored. Dropping entries here only frees memory.
    pub fn rebuild(config: Config, old: &App) -> Result<App, BuildError> {
        let mut app = Self::build_from(config, old.metrics.clone(), Some(old))?;
        app.cache.stats = old.cache.stats.clone();
        if let (Some(new), Some(old)) = (&app.cache.shared, &old.cache.shared) {
            new.keep_stats(old);
        }
        app.seen_events = old.seen_events.clone();
        if app.config.cache == old.config.cache {
            // The entries are kept; this configuration's second level and scopes
            // come with them.
            let (shared, scopes) = (app.cache.shared.take(), app.cache.scopes.clone());
            let user_metadata = app.cache.user_metadata;
            app.cache = old.cache.clone();
            app.cache.shared = shared;
            app.cache.scopes = scopes;
            // Kept entries read without user_metadata are misses for a state that
            // needs it (they say so themselves), so switching it on needs no purge.
            app.cache.user_metadata = user_metadata;
            for iss in &app.config.issuers {
                if !same_remote_source(&app.config, &old.config, &iss.issuer) {
                    app.cache.forget_issuer(&Arc::from(iss.issuer.as_str()));
                    // Other replicas drop theirs too, through the connection that is
                    // up now (this state's own connects once it is started).
                    if let Some(sh) = old.cache.shared.clone()
                        && let Ok(rt) = tokio::runtime::Handle::try_current()
                    {
                        let inv = Invalidation::Issuer(iss.issuer.clone());
                        rt.spawn(async move { sh.publish(&inv).await });
                    }
                }
            }
        }
        Ok(app)
    }

    /// [`Self::build`] with a given metrics registry.
    pub fn build_with(config: Config, metrics: Arc<Metrics>) -> Result<App, BuildError> {
        Self::build_from(config, metrics, None)
    }

    /// [`Self::build_with`], taking over the origin of each remote source `old` runs
    /// with exactly this configuration (see [`Self::rebuild`]).
    fn build_from(config: Config, metrics: Arc<Metrics>, old: Option<&App>) -> Result<App, BuildError> {
        // The outbound proxy for the identity provider's clients, read once per state
        // (at start and on each reload); said once, at start.
        let egress = Egress::from_env(&System).map_err(|e| invalid(e.var, e.error))?;
        if old.is_none()
            && let Some((https, http, no_proxy)) = egress.describe()
        {
            tracing::info!(https_proxy = %https, http_proxy = %http, no_proxy = %no_proxy, "outbound proxy for the identity provider's clients (route upstreams stay direct)");
        }
        // One connector per (CA file, HTTP/1-only); routes get HTTP/1-only ones (see
        // `http_client::http1_connector`), which never use the proxy; the JSON clients
        // may negotiate h2 and go through `egress`.
        let mut connectors: BTreeMap<(Option<PathBuf>, bool), Connector> = BTreeMap::new();
        let mut connector = |ca: &Option<CaFile>, http1_only: bool, key: String| -> Result<Connector, BuildError> {
            let id = (ca.as_ref().map(|c| c.path.clone()), http1_only);
            if let Some(c) = connectors.get(&id) {
                return Ok(c.clone());
            }
            let pem = ca.as_ref().map(|c| &*c.pem);
            let c = if http1_only { http_client::http1_connector(pem) } else { http_client::connector(pem, &egress) }
                .map_err(|e| invalid(key, e))?;
            connectors.insert(id, c.clone());
            Ok(c)
        };
        let shared = match &config.shared {
            Some(sc) => Some(Arc::new(Shared::new(sc).map_err(|e| invalid("shared.url", e))?)),
            None => None,
        };
        let mut named_sources = Vec::new();
        for (name, sc) in &config.sources {
            let key = format!("metadata.{name}");
            let (source, file): (Arc<dyn MetadataSource>, _) = match sc {
                SourceConfig::File(f) => {
                    let fs = Arc::new(
                        FileSource::load(&f.path, Arc::new(System)).map_err(|e| invalid(format!("{key}.path"), e))?,
                    );
                    (fs.clone(), Some(fs))
                }
                SourceConfig::Http(h) => {
                    let c = connector(&h.ca_file, false, format!("{key}.ca_file"))?;
                    (Arc::new(HttpSource::new(h, JsonClient::new(c, &egress), shared.clone())), None)
                }
                SourceConfig::Auth0(a) => {
                    let c = connector(&a.ca_file, false, format!("{key}.ca_file"))?;
                    let source = crate::metadata::auth0::Auth0Source::new(
                        a,
                        JsonClient::new(c, &egress),
                        config.cache.ttl,
                        shared.clone(),
                    );
                    (Arc::new(source), None)
                }
                SourceConfig::Keycloak(kc) => {
                    let c = connector(&kc.ca_file, false, format!("{key}.ca_file"))?;
                    (Arc::new(KeycloakSource::new(kc, JsonClient::new(c, &egress), shared.clone())), None)
                }
                SourceConfig::Okta(o) => {
                    let c = connector(&o.ca_file, false, format!("{key}.ca_file"))?;
                    (Arc::new(OktaSource::new(o, JsonClient::new(c, &egress), shared.clone())), None)
                }
            };
            let origin = old.and_then(|o| o.kept_origin(name, sc)).unwrap_or_else(crate::metadata::new_origin);
            let source: Arc<dyn MetadataSource> =
                Arc::new(CountedSource { inner: source, counters: metrics.source(name), origin });
            named_sources.push(NamedSource { name: name.clone(), source, file });
        }
        let sources: Vec<Option<Arc<dyn MetadataSource>>> = config
            .issuers
            .iter()
            .map(|i| {
                i.metadata.as_ref().and_then(|m| named_sources.iter().find(|s| &s.name == m).map(|s| s.source.clone()))
            })
            .collect();
        // What an eviction deletes from the shared cache: each issuer's entries of a
        // shareable source.
        let scopes: Vec<(Arc<str>, Arc<str>)> = config
            .issuers
            .iter()
            .zip(&sources)
            .filter_map(|(i, s)| Some((Arc::from(i.issuer.as_str()), Arc::from(s.as_ref()?.shared_scope()?))))
            .collect();
        let mut cache = MetadataCache::new(&config.cache);
        cache.user_metadata = config.fetches_user_metadata();
        cache.shared = shared;
        cache.scopes = Arc::new(scopes);
        let mut issuer_clients = Vec::new();
        for (i, iss) in config.issuers.iter().enumerate() {
            let c = connector(&iss.ca_file, false, format!("issuer[{i}].ca_file"))?;
            issuer_clients.push(JsonClient::new(c, &egress));
        }
        let verifier = Verifier::new(&config.issuers, &issuer_clients)
            .keep_only_claims(&config.token.copy_claims)
            .keep_claims_for_rules(config.routes.iter().flat_map(|r| r.rules.all()))
            .token_cache_capacity(config.cache.max_entries);
        let mut routes = Vec::new();
        for r in &config.routes {
            let name = format!("route {}", r.path_prefix);
            let c = connector(&r.ca_file, true, name.clone())?;
            routes.push(Route::new(r.clone(), c).map_err(|e| invalid(name, e))?);
        }
        let minter = Minter::new(&config.token).map_err(|e| invalid("token.key_files", e))?;
        let token_header_canonical = hygiene::canonical(config.token.header.name().as_str()).into_owned();
        let (telemetry, exporter) = match &config.telemetry {
            Some(t) => {
                // Through the outbound proxy like the identity provider's clients
                // (NO_PROXY exempts an in-cluster collector).
                let client = JsonClient::new(connector(&t.ca_file, false, "telemetry.ca_file".to_string())?, &egress);
                let (telemetry, exporter) = crate::telemetry::Telemetry::new(t, client);
                (Some(telemetry), exporter)
            }
            None => (None, None),
        };
        Ok(App {
            telemetry,
            exporter: std::sync::Mutex::new(exporter),
            cache,
            config: Arc::new(config),
            routes,
            verifier,
            sources,
            named_sources,
            minter,
            metrics,
            token_header_canonical,
            empty: Arc::new(StoredMetadata::empty()),
            draining: AtomicBool::new(false),
            seen_events: moka::sync::Cache::builder()
                .max_capacity(SEEN_EVENTS_MAX)
                .time_to_live(SEEN_EVENTS_FOR)
                .build(),
        })
    }

    /// The origin of source `name` here, when a state with `sc` for it answers from
    /// the same data: a remote source configured the same way. Never a file's: the
    /// new state has read the file again.
    fn kept_origin(&self, name: &str, sc: &SourceConfig) -> Option<u64> {
        if matches!(sc, SourceConfig::File(_)) || self.config.sources.get(name) != Some(sc) {
            return None;
        }
        self.named_sources.iter().find(|s| s.name == name).map(|s| s.source.origin())
    }

    /// Whether the proxy can verify tokens: every issuer's JWKS is held.
    pub fn ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::Relaxed) && self.verifier.ready()
    }

    /// Starts the background work: JWKS fetch and refresh, metadata file watching.
    pub fn spawn_background(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for iss in self.verifier.issuers() {
            tasks.push(tokio::spawn(iss.jwks.clone().keep_fresh()));
        }
        // The shared cache's connection and subscription; ends when this state is
        // replaced or dropped.
        if let Some(sh) = &self.cache.shared {
            let sink: Arc<dyn Coherence> = Arc::new(Coherent(Arc::downgrade(self)));
            tasks.push(tokio::spawn(sh.clone().maintain(sink)));
        }
        // Span export; ends when this state (which queues its spans) is dropped.
        if let Some(exporter) = self.exporter.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tasks.push(tokio::spawn(exporter.run()));
        }
        // Sources' own work (the auth0 bulk client load); each ends when its source is dropped.
        tasks.extend(self.named_sources.iter().filter_map(|s| s.source.background()).map(tokio::spawn));
        let files: Vec<_> = self.named_sources.iter().filter(|s| s.file.is_some()).map(|s| s.name.clone()).collect();
        if !files.is_empty() {
            let app = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let Some(app) = app.upgrade() else { return };
                    app.reload_changed_files().await;
                }
            }));
        }
        tasks
    }

    /// Re-reads metadata files that changed (the file watch, every 2 s) and drops the
    /// cached entries that came from them. The new content's origin already keeps
    /// them from being served; dropping them frees the memory.
    pub async fn reload_changed_files(&self) {
        for s in &self.named_sources {
            let Some(f) = &s.file else { continue };
            // Looking (and re-reading a large file) is blocking I/O: never on a thread
            // that serves requests, which on the single-threaded runtime would stall
            // every one of them.
            let file = f.clone();
            let looked = tokio::task::spawn_blocking(move || file.reload_if_changed()).await;
            let Ok(looked) = looked else { continue };
            match looked {
                Ok(true) => {
                    tracing::info!(source = %s.name, "metadata file changed; reloaded");
                    self.evict_source(&s.name).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(source = %s.name, error = %e, "metadata file changed but cannot be used; keeping the old content")
                }
            }
        }
    }

    /// The issuers whose metadata comes from source `name`, as the cache keys them.
    pub fn issuers_of(&self, name: &str) -> Vec<Arc<str>> {
        self.config
            .issuers
            .iter()
            .filter(|i| i.metadata.as_deref() == Some(name))
            .map(|i| Arc::from(i.issuer.as_str()))
            .collect()
    }

    /// Evicts client `id`, first making the sources forget it, so the next lookup reads
    /// that one client (the `auth0` source: `GET /api/v2/clients/{id}`) and not a bulk
    /// copy older than the change (docs/configuration.md, "[cache]"). `source` names one
    /// `[metadata.NAME]`, whose issuers' entries go; `None`: every source and issuer.
    pub async fn evict_client(&self, source: Option<&str>, id: &str) {
        // Forgotten before evicting: a lookup between the two must not refill the
        // entry from the old bulk copy.
        for s in self.named_sources.iter().filter(|s| source.is_none_or(|n| n == s.name)) {
            s.source.forget_client(id);
        }
        match source {
            None => {
                self.cache.evict(Kind::Client, None, id).await;
            }
            Some(name) => {
                for issuer in self.issuers_of(name) {
                    self.cache.evict(Kind::Client, Some(&issuer), id).await;
                }
            }
        }
    }

    /// Drops cached entries of every issuer that uses source `name`.
    pub async fn evict_source(&self, name: &str) {
        for iss in &self.config.issuers {
            if iss.metadata.as_deref() == Some(name) {
                self.cache.forget_issuer(&Arc::from(iss.issuer.as_str()));
            }
        }
    }
}

/// Applies other replicas' evictions to this state's cache. Holds the state weakly,
/// so the supervisor ends once the state is replaced by a reload or dropped.
struct Coherent(std::sync::Weak<App>);

impl Coherence for Coherent {
    fn apply(&self, inv: &Invalidation) {
        let Some(app) = self.0.upgrade() else { return };
        match inv {
            Invalidation::Entry { kind, issuer, id } => {
                app.cache.evict_local(*kind, issuer.as_deref(), id);
                if *kind == Kind::Client {
                    // The next read of this client asks the source for it alone,
                    // not the bulk copy that still holds the old value.
                    for s in &app.named_sources {
                        s.source.forget_client(id);
                    }
                }
            }
            Invalidation::Issuer(issuer) => app.cache.forget_issuer(&Arc::from(issuer.as_str())),
        }
    }
    fn forget_all(&self) {
        if let Some(app) = self.0.upgrade() {
            app.cache.forget_all();
        }
    }
    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Counts a source's calls by result for `claimsmith_metadata_fetches_total`.
/// Forwards every `MetadataSource` method: a method added to the trait must be
/// forwarded here too.
struct CountedSource {
    inner: Arc<dyn MetadataSource>,
    counters: Arc<SourceCounters>,
    /// The origin of a source without one of its own (`MetadataSource::origin`).
    origin: u64,
}

impl CountedSource {
    fn count<T>(&self, r: &Result<Option<T>, SourceError>) {
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Ok(Some(_)) => self.counters.ok.fetch_add(1, Relaxed),
            Ok(None) => self.counters.not_found.fetch_add(1, Relaxed),
            Err(_) => self.counters.error.fetch_add(1, Relaxed),
        };
    }
}

impl MetadataSource for CountedSource {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(async move {
            let r = self.inner.user(user_id).await;
            self.count(&r);
            r
        })
    }
    fn user_with_user_metadata<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<UserLookup, SourceError>> {
        Box::pin(async move {
            let r = self.inner.user_with_user_metadata(user_id).await;
            self.count(&r);
            r
        })
    }
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(async move {
            let r = self.inner.client(client_id).await;
            self.count(&r);
            r
        })
    }
    fn forget_client(&self, client_id: &str) {
        self.inner.forget_client(client_id)
    }
    fn background(&self) -> Option<BoxFuture<'static, ()>> {
        self.inner.background()
    }
    fn ratelimit_remaining(&self) -> Option<u64> {
        self.inner.ratelimit_remaining()
    }
    fn shared_scope(&self) -> Option<&str> {
        self.inner.shared_scope()
    }
    fn origin(&self) -> u64 {
        match self.inner.origin() {
            0 => self.origin,
            own => own,
        }
    }
}

/// Whether `issuer` reads metadata from the same remote source, configured the
/// same way, in both configurations.
fn same_remote_source(new: &Config, old: &Config, issuer: &str) -> bool {
    let source = |c: &Config| {
        c.issuers
            .iter()
            .find(|i| i.issuer == issuer)
            .and_then(|i| i.metadata.as_ref())
            .and_then(|m| c.sources.get(m))
            .cloned()
    };
    match (source(new), source(old)) {
        (Some(a), Some(b)) => a == b && !matches!(a, SourceConfig::File(_)),
        _ => false,
    }
}
