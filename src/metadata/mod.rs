//! Where app_metadata and client_metadata come from (docs/configuration.md, "[metadata.NAME]"), behind one trait, and
//! the cache in front of them (docs/configuration.md, "[cache]").

pub mod auth0;
pub mod cache;
pub mod file;
pub mod http;
pub(crate) mod keycloak;
mod mgmt_token;
pub(crate) mod okta;
pub mod ratelimit;
pub mod remote;
pub mod shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

/// A boxed future, so sources can sit behind `dyn MetadataSource`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A JSON object of metadata.
pub type Metadata = Map<String, Value>;

/// Metadata as the cache holds it: the object's compact JSON text, written once by
/// serde_json when the source answered. A parsed `Map` costs several hundred bytes
/// per small object (a `Value` per member, each key and string its own allocation);
/// the text costs its length. The minter splices the text into the internal token
/// as it is, and parses it only to keep a route's `app_metadata` / `client_metadata`
/// keys.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredMetadata(Box<str>);

impl StoredMetadata {
    pub fn new(m: Metadata) -> StoredMetadata {
        // A Map of Values always serializes.
        StoredMetadata(Value::Object(m).to_string().into_boxed_str())
    }
    /// `{}`.
    pub fn empty() -> StoredMetadata {
        StoredMetadata("{}".into())
    }
    /// The JSON object text.
    pub fn json(&self) -> &str {
        &self.0
    }
    /// The object with only `keys` (top-level; absent ones skipped), as JSON text.
    pub fn project(&self, keys: &[String]) -> String {
        let Ok(m) = serde_json::from_str::<Metadata>(&self.0) else { return "{}".into() };
        let kept: Metadata = keys.iter().filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone()))).collect();
        Value::Object(kept).to_string()
    }
}

/// What a source answers for one id: the metadata, or `None` when the user or client
/// does not exist.
pub type Lookup = Option<Metadata>;

/// The source could not answer (network, 429, 5xx, timeout). Never holds a body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SourceError {
    pub reason: String,
    /// How long the source asked us to wait, when it said so.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    pub fn new(reason: impl Into<String>) -> Self {
        SourceError { reason: reason.into(), retry_after: None }
    }
}

/// A metadata source. Implementations must be cheap to call concurrently; the cache
/// already makes concurrent misses for one key into one call.
pub trait MetadataSource: Send + Sync {
    /// `auth0`, `keycloak`, `okta`, `file` or `http`, for metrics and logs.
    fn kind(&self) -> &'static str;
    /// The user's app_metadata.
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>>;
    /// The client's client_metadata.
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>>;
    /// The admin API evicted this client: the next read must ask the source for this
    /// one client (sources that bulk-load clients drop it from their bulk copy).
    fn forget_client(&self, _client_id: &str) {}
    /// Work the source runs for as long as it is in use (the `auth0` source bulk-loads
    /// clients at start and every cache `ttl`). `App::spawn_background` spawns it; the
    /// future ends by itself once the source is dropped.
    fn background(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }
    /// The last `x-ratelimit-remaining` the source's API reported, for `/metrics`.
    fn ratelimit_remaining(&self) -> Option<u64> {
        None
    }
    /// What the source reads from (its kind and API address), when its answers may be
    /// shared with other replicas through `[shared]`: a source changed in the
    /// configuration gets a different scope, so nothing it answered before is used.
    /// `None` (a file source, which is local and free to read): never shared.
    fn shared_scope(&self) -> Option<&str> {
        None
    }
    /// Which content the source answers from now. The cache keeps this beside every
    /// entry and serves an entry only while it is still the source's origin, so an
    /// answer read from content since replaced is never served, whenever it was
    /// stored (an in-flight read, a refresh, a request still on the state a reload
    /// replaced). A source whose content changes while it runs (a re-read file)
    /// returns its own version; `0`: the state running it decides
    /// (`app::CountedSource`).
    fn origin(&self) -> u64 {
        0
    }
}

/// A new origin ([`MetadataSource::origin`]), never returned before in this process.
pub(crate) fn new_origin() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A named metadata source and, for file sources, the handle to reload it.
pub struct NamedSource {
    pub name: String,
    pub source: Arc<dyn MetadataSource>,
    pub file: Option<Arc<file::FileSource>>,
}

/// Which of the two caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
