//! The `auth0` source (docs/configuration.md, "[metadata.NAME]"): the Auth0 Management API v2.
//!
//! - A management token from `POST {base}/oauth/token` (client credentials), cached
//!   until shortly before its `expires_in`; concurrent callers share one refresh. A
//!   401 from the API drops that token and retries once with a new one (`mgmt_token.rs`,
//!   which the `keycloak` and `okta` sources use too).
//! - Users: `GET /api/v2/users/{url-encoded id}?fields=app_metadata&include_fields=true`
//!   (`fields=app_metadata,user_metadata` when some route or rule reads user_metadata).
//! - Clients: Auth0 allows very few client reads, so every client is loaded in bulk
//!   (`GET /api/v2/clients?...&page=N&per_page=100` until a short page) at start and
//!   every cache `ttl`; `GET /api/v2/clients/{id}` is used only for a client not in
//!   the last bulk load, or one the admin API evicted since.
//! - Every call to the tenant, `/oauth/token` and bulk pages included, goes through one
//!   [`Remote`]: the `max_requests_per_second` token bucket, a timeout, and retries of
//!   429 / 5xx that honour `Retry-After` and `x-ratelimit-reset`.
//!
//! Nothing here logs or returns a token, the client secret or a response body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::StatusCode;
use percent_encoding::utf8_percent_encode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::http::SEGMENT;
use super::mgmt_token::{self, Issued, MgmtTokens, TokenRequest};
use super::remote::{Remote, SERVER_WAIT_CAP};
use super::shared::{Lease, Shared};
use super::{BoxFuture, Lookup, Metadata, MetadataSource, SourceError, UserLookup};
use crate::config::{Auth0SourceConfig, Secret};
use crate::http_client::{Fetched, JsonClient};

/// Largest user or single-client answer read.
const MAX_BODY: usize = 1024 * 1024;
/// Largest page of 100 clients read (client_metadata is at most 10 × 255 characters).
const MAX_PAGE_BODY: usize = 16 * 1024 * 1024;
/// Clients per bulk page: Auth0's maximum.
pub const PER_PAGE: usize = 100;
/// A bulk load stops with an error past this many pages (200,000 clients).
const MAX_PAGES: usize = 2000;
/// A bulk copy older than this many bulk intervals is not used (the per-client read
/// answers instead, and fails visibly when the tenant is down).
const BULK_VALID_INTERVALS: u32 = 2;

/// The Auth0 Management API as a metadata source.
pub struct Auth0Source {
    inner: Arc<Inner>,
}

struct Inner {
    /// `base_url` (or `https://{domain}`) without its trailing slash.
    base: String,
    client_id: String,
    client_secret: Secret,
    audience: String,
    /// Time for one lookup, token refresh and retries included.
    timeout: Duration,
    /// How often clients are bulk-loaded (the cache `ttl`).
    bulk_every: Duration,
    remote: Remote,
    /// The management token (shared with every replica with `[shared]`).
    token: MgmtTokens,
    /// The last successful bulk load.
    clients: ArcSwapOption<ClientList>,
    /// Clients the admin API evicted, and when: read one by one until a bulk load
    /// that started later.
    forgotten: Mutex<HashMap<String, Instant>>,
    bulk: BulkState,
    /// `auth0 BASE`: names this tenant's entries, budget and bulk list in `[shared]`.
    scope: Arc<str>,
    /// With `[shared]`: the bulk client list is shared with every replica
    /// (docs/scaling.md).
    shared: Option<Arc<Shared>>,
}

/// How often a replica looks for the client list another replica is loading, and for
/// how long at most before loading it itself.
const SHARED_LIST_POLL: Duration = Duration::from_millis(200);
const SHARED_LIST_WAIT: Duration = Duration::from_secs(30);

struct ClientList {
    by_id: HashMap<String, Metadata>,
    /// When the load began (entries forgotten before it are covered by it).
    started: Instant,
}

struct BulkState {
    running: AtomicBool,
    /// Bumped after every bulk load attempt.
    done: watch::Sender<u64>,
    failures: AtomicU32,
    /// After a failed load, no load triggered by a lookup before this instant.
    retry_at: Mutex<Option<Instant>>,
}

/// Resets `running` and wakes the waiters when a load ends, cancelled or not.
struct RunningGuard<'a>(&'a BulkState);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        self.0.done.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth0Source {
    /// `bulk_every` is the cache `ttl`: clients are bulk-loaded at start and that often.
    pub fn new(
        cfg: &Auth0SourceConfig,
        client: JsonClient,
        bulk_every: Duration,
        shared: Option<Arc<Shared>>,
    ) -> Auth0Source {
        let (done, _) = watch::channel(0);
        let base = cfg.base_url.as_str().trim_end_matches('/').to_string();
        let scope: Arc<str> = Arc::from(format!("auth0 {base}"));
        let mut remote = Remote::new(client, cfg.max_requests_per_second, cfg.timeout);
        if let Some(sh) = &shared {
            remote.share(sh.clone(), scope.clone());
        }
        Auth0Source {
            inner: Arc::new(Inner {
                base,
                client_id: cfg.client_id.clone(),
                client_secret: cfg.client_secret.clone(),
                audience: cfg.audience.clone(),
                timeout: cfg.timeout,
                bulk_every: bulk_every.max(Duration::from_secs(1)),
                remote,
                token: MgmtTokens::new(
                    "auth0",
                    "Management API",
                    shared.clone().map(|sh| (sh, token_scope(&scope, &cfg.client_id, &cfg.audience))),
                ),
                clients: ArcSwapOption::empty(),
                forgotten: Mutex::new(HashMap::new()),
                bulk: BulkState {
                    running: AtomicBool::new(false),
                    done,
                    failures: AtomicU32::new(0),
                    retry_at: Mutex::new(None),
                },
                scope,
                shared,
            }),
        }
    }

    /// The last `x-ratelimit-remaining` the tenant sent, if any.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        self.inner.remote.ratelimit_remaining()
    }

    /// Clients held from the last bulk load, if one succeeded.
    pub fn bulk_clients(&self) -> Option<usize> {
        self.inner.clients.load().as_ref().map(|l| l.by_id.len())
    }
}

impl MetadataSource for Auth0Source {
    fn kind(&self) -> &'static str {
        "auth0"
    }

    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.inner.user(user_id))
    }

    fn user_with_user_metadata<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<UserLookup, SourceError>> {
        Box::pin(self.inner.read_user(user_id, true))
    }

    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.inner.client(client_id))
    }

    fn forget_client(&self, client_id: &str) {
        lock(&self.inner.forgotten).insert(client_id.to_string(), Instant::now());
    }

    fn background(&self) -> Option<BoxFuture<'static, ()>> {
        let weak = Arc::downgrade(&self.inner);
        Some(Box::pin(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                inner.bulk_load().await;
                let wait = inner.next_bulk_in();
                drop(inner);
                tokio::time::sleep(wait).await;
            }
        }))
    }

    fn ratelimit_remaining(&self) -> Option<u64> {
        self.inner.remote.ratelimit_remaining()
    }

    fn shared_scope(&self) -> Option<&str> {
        Some(&self.inner.scope)
    }
}

impl Inner {
    async fn user(&self, user_id: &str) -> Result<Lookup, SourceError> {
        Ok(self.read_user(user_id, false).await?.map(|(app, _)| app))
    }

    /// One user read: `fields=app_metadata`, or `fields=app_metadata,user_metadata`
    /// when the user_metadata is wanted (only then: the cache asks for it only when a
    /// route or rule reads it). A user without user_metadata has none in the answer.
    async fn read_user(&self, user_id: &str, with_user_metadata: bool) -> Result<UserLookup, SourceError> {
        const WHAT: &str = "user read";
        let deadline = Instant::now() + self.timeout;
        let fields = if with_user_metadata { "app_metadata,user_metadata" } else { "app_metadata" };
        let path =
            format!("/api/v2/users/{}?fields={fields}&include_fields=true", utf8_percent_encode(user_id, SEGMENT));
        let resp = self.authorized_get(WHAT, &path, deadline, MAX_BODY).await?;
        match resp.status {
            StatusCode::OK => {
                let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(&resp.body) else {
                    return Err(unexpected(WHAT));
                };
                let app = take_object(&mut o, "app_metadata").ok_or_else(|| unexpected(WHAT))?;
                let user = match with_user_metadata {
                    true => take_object(&mut o, "user_metadata").ok_or_else(|| unexpected(WHAT))?,
                    false => Metadata::new(),
                };
                Ok(Some((app, user)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(status_error(WHAT, s)),
        }
    }

    async fn client(self: &Arc<Self>, client_id: &str) -> Result<Lookup, SourceError> {
        let deadline = Instant::now() + self.timeout;
        let forgotten = lock(&self.forgotten).contains_key(client_id);
        if !forgotten
            && let Some(list) = self.client_list(deadline).await
            && let Some(md) = list.by_id.get(client_id)
        {
            return Ok(Some(md.clone()));
        }
        self.read_client(client_id, deadline).await
    }

    /// One client by id: only for a client not in the last bulk load.
    async fn read_client(&self, client_id: &str, deadline: Instant) -> Result<Lookup, SourceError> {
        const WHAT: &str = "client read";
        let path = format!(
            "/api/v2/clients/{}?fields=client_metadata&include_fields=true",
            utf8_percent_encode(client_id, SEGMENT)
        );
        let resp = self.authorized_get(WHAT, &path, deadline, MAX_BODY).await?;
        match resp.status {
            StatusCode::OK => object_field(&resp.body, "client_metadata").map(Some).ok_or_else(|| unexpected(WHAT)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(status_error(WHAT, s)),
        }
    }

    // -- clients in bulk ---------------------------------------------------------

    /// The last bulk copy while it is recent enough.
    fn usable_list(&self) -> Option<Arc<ClientList>> {
        let list = self.clients.load_full()?;
        (list.started.elapsed() < self.bulk_every.saturating_mul(BULK_VALID_INTERVALS)).then_some(list)
    }

    /// The bulk copy; when none is usable, starts a load (in its own task, so a
    /// lookup's deadline does not cut it) and waits up to half the lookup's time.
    async fn client_list(self: &Arc<Self>, deadline: Instant) -> Option<Arc<ClientList>> {
        if let Some(l) = self.usable_list() {
            return Some(l);
        }
        let mut rx = self.bulk.done.subscribe();
        if let Some(l) = self.usable_list() {
            return Some(l);
        }
        let now = Instant::now();
        let in_backoff = lock(&self.bulk.retry_at).is_some_and(|t| t > now);
        if in_backoff && !self.bulk.running.load(Ordering::Acquire) {
            return None;
        }
        if !in_backoff {
            let me = self.clone();
            tokio::spawn(async move { me.bulk_load().await });
        }
        let wait_until = now + deadline.saturating_duration_since(now) / 2;
        let _ = tokio::time::timeout_at(wait_until, rx.changed()).await;
        self.usable_list()
    }

    /// One bulk load, unless one runs already (then waits for it) or the copy held is
    /// younger than the bulk interval.
    async fn bulk_load(&self) {
        let mut rx = self.bulk.done.subscribe();
        if self.bulk.running.swap(true, Ordering::AcqRel) {
            let _ = rx.changed().await;
            return;
        }
        let _guard = RunningGuard(&self.bulk);
        if self.clients.load().as_ref().is_some_and(|l| l.started.elapsed() < self.bulk_every) {
            return;
        }
        let loaded = match &self.shared {
            Some(sh) => self.load_clients_once(sh).await,
            None => self.load_clients().await,
        };
        match loaded {
            Ok(list) => {
                tracing::info!(clients = list.by_id.len(), "auth0: clients loaded");
                let started = list.started;
                self.clients.store(Some(Arc::new(list)));
                lock(&self.forgotten).retain(|_, at| *at >= started);
                self.bulk.failures.store(0, Ordering::Relaxed);
                *lock(&self.bulk.retry_at) = None;
            }
            Err(e) => {
                let n = self.bulk.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                let pause = self.bulk_backoff(n, e.retry_after);
                *lock(&self.bulk.retry_at) = Some(Instant::now() + pause);
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "auth0: loading the clients failed");
            }
        }
    }

    /// The client list, loaded by one replica per interval: a recent list another
    /// replica stored, or this replica loads it under the lease and stores it, or waits
    /// for the replica holding the lease. Without Redis: loads it.
    async fn load_clients_once(&self, sh: &Shared) -> Result<ClientList, SourceError> {
        sh.settled().await;
        if let Some(list) = self.shared_list(sh).await {
            return Ok(list);
        }
        let lease = sh.lease_blob("clients-lease", &self.scope, self.bulk_every.min(Duration::from_secs(60))).await;
        if matches!(lease, Lease::Held { .. })
            && let Some(list) = self.shared_list(sh).await
        {
            // Loaded by the holder before us, between our look and our lease.
            sh.release(lease).await;
            return Ok(list);
        }
        if matches!(lease, Lease::Busy) {
            let give_up = Instant::now() + SHARED_LIST_WAIT;
            while Instant::now() < give_up && sh.up() {
                tokio::time::sleep(SHARED_LIST_POLL).await;
                if let Some(list) = self.shared_list(sh).await {
                    return Ok(list);
                }
            }
        }
        let list = self.load_clients().await;
        if let Ok(l) = &list {
            let started_ms = wall_ms().saturating_sub(l.started.elapsed().as_millis() as u64);
            let body = json!({"t": started_ms, "c": l.by_id}).to_string();
            sh.put_blob("clients", &self.scope, body.as_bytes(), self.bulk_every.saturating_mul(BULK_VALID_INTERVALS))
                .await;
        }
        sh.release(lease).await;
        list
    }

    /// The list another replica loaded less than one interval ago.
    async fn shared_list(&self, sh: &Shared) -> Option<ClientList> {
        #[derive(serde::Deserialize)]
        struct Stored {
            t: u64,
            c: HashMap<String, Metadata>,
        }
        let stored: Stored = serde_json::from_slice(&sh.get_blob("clients", &self.scope).await?).ok()?;
        let age = Duration::from_millis(wall_ms().saturating_sub(stored.t));
        if age >= self.bulk_every {
            return None;
        }
        let now = Instant::now();
        Some(ClientList { by_id: stored.c, started: now.checked_sub(age).unwrap_or(now) })
    }

    /// 1 s × 2^(n-1), at most the bulk interval (and 60 s), at least what the server asked.
    fn bulk_backoff(&self, failures: u32, server: Option<Duration>) -> Duration {
        let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        exp.min(self.bulk_every).min(Duration::from_secs(60)).max(server.unwrap_or_default().min(SERVER_WAIT_CAP))
    }

    /// When the background loop loads next.
    fn next_bulk_in(&self) -> Duration {
        let now = Instant::now();
        let wait = match *lock(&self.bulk.retry_at) {
            Some(t) if t > now => t - now,
            _ => match self.clients.load().as_ref() {
                Some(l) => self.bulk_every.saturating_sub(l.started.elapsed()),
                None => Duration::from_secs(1),
            },
        };
        wait.max(Duration::from_millis(100))
    }

    /// Every client, page by page, until a page holds fewer than `PER_PAGE`.
    async fn load_clients(&self) -> Result<ClientList, SourceError> {
        const WHAT: &str = "client list read";
        let started = Instant::now();
        let mut by_id = HashMap::new();
        for page in 0..MAX_PAGES {
            let path = format!(
                "/api/v2/clients?fields=client_id,client_metadata&include_fields=true&page={page}&per_page={PER_PAGE}"
            );
            let resp = self.authorized_get(WHAT, &path, Instant::now() + self.timeout, MAX_PAGE_BODY).await?;
            if resp.status != StatusCode::OK {
                return Err(status_error(WHAT, resp.status));
            }
            let items = parse_page(&resp.body).ok_or_else(|| unexpected(WHAT))?;
            let n = items.len();
            by_id.extend(items);
            if n < PER_PAGE {
                return Ok(ClientList { by_id, started });
            }
        }
        Err(SourceError::new(format!("{WHAT}: more than {MAX_PAGES} pages")))
    }

    // -- calls with the management token -------------------------------------------

    /// GET `path` with the management token; a 401 drops the token and retries once
    /// with a new one.
    async fn authorized_get(
        &self,
        what: &'static str,
        path: &str,
        deadline: Instant,
        max_body: usize,
    ) -> Result<Fetched, SourceError> {
        let url = format!("{}{}", self.base, path);
        self.token.authorized_get(&self.remote, what, &url, deadline, max_body, || self.request_token(deadline)).await
    }

    /// `POST /oauth/token` with the client credentials; the token as a header value
    /// and its lifetime.
    async fn request_token(&self, deadline: Instant) -> Result<Issued, SourceError> {
        let body = Bytes::from(
            json!({
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret.expose(),
                "audience": self.audience,
            })
            .to_string(),
        );
        let url = format!("{}/oauth/token", self.base);
        let req = TokenRequest {
            url: &url,
            content_type: "application/json",
            body: &|| Ok(body.clone()),
            refused_hint: "check client_id, the client secret, the audience and the application's grant for the \
                           Management API",
        };
        mgmt_token::request_token(&self.remote, req, deadline).await
    }
}

/// What the shared management token is for: one per tenant, application (client id)
/// and audience. Hashed into its Redis key, never written in clear.
fn token_scope(scope: &str, client_id: &str, audience: &str) -> String {
    format!("{scope} {client_id} {audience}")
}

/// `field` of a JSON object answer: absent or null is `{}`; `None` when the answer
/// is not an object or the field is not one.
fn object_field(body: &[u8], field: &str) -> Option<Metadata> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else { return None };
    take_object(&mut o, field)
}

/// Member `field` of an answer: an object, or none (absent or `null`: empty); any
/// other type is not an answer we understand.
fn take_object(o: &mut serde_json::Map<String, Value>, field: &str) -> Option<Metadata> {
    match o.remove(field) {
        None | Some(Value::Null) => Some(Metadata::new()),
        Some(Value::Object(m)) => Some(m),
        Some(_) => None,
    }
}

/// A page of clients: a JSON array (or `{"clients": [...]}` with totals); entries
/// without a `client_id` are skipped.
fn parse_page(body: &[u8]) -> Option<Vec<(String, Metadata)>> {
    let items = match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("clients") {
            Some(Value::Array(a)) => a,
            _ => return None,
        },
        _ => return None,
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(mut o) = item else { return None };
        let Some(Value::String(id)) = o.remove("client_id") else { continue };
        let md = match o.remove("client_metadata") {
            None | Some(Value::Null) => Metadata::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return None,
        };
        out.push((id, md));
    }
    Some(out)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unexpected(what: &str) -> SourceError {
    SourceError::new(format!("{what}: unexpected answer"))
}

fn status_error(what: &str, s: StatusCode) -> SourceError {
    let hint = if s == StatusCode::FORBIDDEN { " (the application needs read:users and read:clients)" } else { "" };
    SourceError::new(format!("{what}: HTTP {}{hint}", s.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(object_field(br#"{"app_metadata":{"a":1}}"#, "app_metadata").unwrap()["a"], 1);
        assert!(object_field(br#"{}"#, "app_metadata").unwrap().is_empty());
        assert!(object_field(br#"{"app_metadata":null}"#, "app_metadata").unwrap().is_empty());
        assert!(object_field(br#"{"app_metadata":"x"}"#, "app_metadata").is_none());
        assert!(object_field(br#"[1]"#, "app_metadata").is_none());
        assert!(object_field(b"not json", "app_metadata").is_none());
        let p =
            parse_page(br#"[{"client_id":"a","client_metadata":{"k":"v"}},{"client_id":"b"},{"name":"x"}]"#).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].1["k"], "v");
        assert!(p[1].1.is_empty());
        assert_eq!(parse_page(br#"{"clients":[{"client_id":"a"}],"total":1}"#).unwrap().len(), 1);
        assert!(parse_page(br#"{"statusCode":500}"#).is_none());
        assert!(parse_page(br#"[{"client_id":"a","client_metadata":[1]}]"#).is_none());
    }

    #[test]
    fn user_ids_are_one_encoded_segment() {
        let e = utf8_percent_encode("samlp|conn|u@x.com/..?#", SEGMENT).to_string();
        assert_eq!(e, "samlp%7Cconn%7Cu%40x.com%2F..%3F%23");
    }
}
