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
///
/// A user's entry may also carry the user's user_metadata (when some route or rule
/// asks for it: [`crate::config::Config::fetches_user_metadata`]): its text follows
/// the app_metadata's in the same allocation, so a user costs one allocation either
/// way and splicing either part is a slice. Whether it was fetched is part of the
/// entry: a cache that needs user_metadata takes an entry without it as a miss,
/// never as "the user has none".
#[derive(Debug)]
pub struct StoredMetadata {
    /// The app_metadata (or client_metadata) object's text, then the user_metadata
    /// object's text when it was fetched.
    text: Box<str>,
    /// Where the user_metadata text begins in `text`; `None`: not fetched. Never 0,
    /// since the first object's text is at least `{}`.
    user_at: Option<std::num::NonZeroUsize>,
    /// Both objects parsed, the first time an authorization rule reads the entry:
    /// a route with rules then reads a cached entry without parsing it again on
    /// every request (one pointer per entry until then, nothing more).
    parsed: std::sync::OnceLock<Box<Parsed>>,
}

/// The entry's objects as values, for the rules; `None`: the text did not parse
/// (never expected: the cache wrote it), which a rule must not take as a pass.
#[derive(Debug)]
pub struct Parsed {
    pub main: Option<Value>,
    pub user: Option<Value>,
}

impl PartialEq for StoredMetadata {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.user_at == other.user_at
    }
}

impl Eq for StoredMetadata {}

impl StoredMetadata {
    pub fn new(m: Metadata) -> StoredMetadata {
        // A Map of Values always serializes.
        StoredMetadata {
            text: Value::Object(m).to_string().into_boxed_str(),
            user_at: None,
            parsed: Default::default(),
        }
    }
    /// A user's app_metadata with the user's user_metadata.
    pub fn with_user_metadata(app: Metadata, user: Metadata) -> StoredMetadata {
        let mut text = Value::Object(app).to_string();
        let user_at = std::num::NonZeroUsize::new(text.len());
        text.push_str(&Value::Object(user).to_string());
        StoredMetadata { text: text.into_boxed_str(), user_at, parsed: Default::default() }
    }
    /// `{}`.
    pub fn empty() -> StoredMetadata {
        StoredMetadata { text: "{}".into(), user_at: None, parsed: Default::default() }
    }
    /// The JSON object text (app_metadata or client_metadata).
    pub fn json(&self) -> &str {
        match self.user_at {
            Some(at) => self.text.get(..at.get()).unwrap_or("{}"),
            None => &self.text,
        }
    }
    /// The user's user_metadata as JSON object text, when it was fetched.
    pub fn user_metadata_json(&self) -> Option<&str> {
        self.user_at.map(|at| self.text.get(at.get()..).unwrap_or("{}"))
    }
    /// The objects parsed, once per entry (see `parsed`).
    pub fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(|| {
            Box::new(Parsed {
                main: serde_json::from_str(self.json()).ok(),
                user: self.user_metadata_json().and_then(|t| serde_json::from_str(t).ok()),
            })
        })
    }
    /// Whether the entry carries the user's user_metadata (see the type's doc).
    pub fn has_user_metadata(&self) -> bool {
        self.user_at.is_some()
    }
    /// The object with only `keys` (top-level; absent ones skipped), as JSON text.
    pub fn project(&self, keys: &[String]) -> String {
        project_text(self.json(), keys)
    }
    /// The user_metadata (`{}` when not fetched) as a route lists it: every key for
    /// an empty list, else only those keys.
    pub fn project_user_metadata(&self, keys: &[String]) -> std::borrow::Cow<'_, str> {
        let text = self.user_metadata_json().unwrap_or("{}");
        match keys.is_empty() {
            true => text.into(),
            false => project_text(text, keys).into(),
        }
    }
}

/// The object `text` with only `keys` (top-level; absent ones skipped), as JSON text.
fn project_text(text: &str, keys: &[String]) -> String {
    let Ok(m) = serde_json::from_str::<Metadata>(text) else { return "{}".into() };
    let kept: Metadata = keys.iter().filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone()))).collect();
    Value::Object(kept).to_string()
}

/// What a source answers for one id: the metadata, or `None` when the user or client
/// does not exist.
pub type Lookup = Option<Metadata>;

/// What a source answers for one user with the user's user_metadata: (app_metadata,
/// user_metadata), or `None` when the user does not exist.
pub type UserLookup = Option<(Metadata, Metadata)>;

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
    /// The user's app_metadata and user_metadata, asked for only when some route or
    /// rule reads user_metadata (docs/configuration.md, "user_metadata"). A source
    /// that has no user_metadata keeps this default: [`Self::user`], with an empty
    /// user_metadata, so a source need implement only `user` and `client`.
    fn user_with_user_metadata<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<UserLookup, SourceError>> {
        Box::pin(async move { Ok(self.user(user_id).await?.map(|app| (app, Metadata::new()))) })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(v: Value) -> Metadata {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_entry_is_parsed_once_for_the_rules() {
        let e = StoredMetadata::with_user_metadata(md(json!({"plan": "pro"})), md(json!({"theme": "dark"})));
        let first: *const Parsed = e.parsed();
        assert_eq!(e.parsed().main, Some(json!({"plan": "pro"})));
        assert_eq!(e.parsed().user, Some(json!({"theme": "dark"})));
        assert!(std::ptr::eq(first, e.parsed()), "the second read reuses the first parse");
        assert_eq!(StoredMetadata::new(md(json!({}))).parsed().user, None);
        // Equality is the content's, parsed or not.
        assert_eq!(e, StoredMetadata::with_user_metadata(md(json!({"plan": "pro"})), md(json!({"theme": "dark"}))));
    }

    #[test]
    fn a_user_entry_holds_user_metadata_after_app_metadata_and_says_whether_it_does() {
        let without = StoredMetadata::new(md(json!({"plan": "pro"})));
        assert_eq!((without.json(), without.user_metadata_json()), (r#"{"plan":"pro"}"#, None));
        assert!(!without.has_user_metadata());
        assert_eq!(without.project_user_metadata(&[]), "{}");

        let with =
            StoredMetadata::with_user_metadata(md(json!({"plan": "pro"})), md(json!({"theme": "dark", "n": [1]})));
        assert!(with.has_user_metadata());
        assert_eq!(with.json(), r#"{"plan":"pro"}"#);
        assert_eq!(with.user_metadata_json(), Some(r#"{"theme":"dark","n":[1]}"#));
        assert_eq!(with.project(&["plan".into()]), r#"{"plan":"pro"}"#);
        assert_eq!(with.project_user_metadata(&[]), r#"{"theme":"dark","n":[1]}"#);
        assert_eq!(with.project_user_metadata(&["theme".into(), "absent".into()]), r#"{"theme":"dark"}"#);

        let none = StoredMetadata::with_user_metadata(Metadata::new(), Metadata::new());
        assert_eq!((none.json(), none.user_metadata_json()), ("{}", Some("{}")));
        assert_eq!(none.project_user_metadata(&["theme".into()]), "{}");
    }
}
