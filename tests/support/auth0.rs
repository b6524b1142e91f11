//! An Auth0 Management API v2 tenant on loopback, shaped from Auth0's documentation:
//!
//! - `POST /oauth/token` (client credentials, JSON or form body) →
//!   `{access_token, expires_in, scope, token_type}`;
//! - `GET /api/v2/users/{id}` (id url-encoded), `GET /api/v2/clients` (`page` from 0,
//!   `per_page` default 50, max 100), `GET /api/v2/clients/{id}`; `fields` and
//!   `include_fields` honoured;
//! - errors as `{statusCode, error, message, errorCode}` (404 `inexistent_user`);
//! - `x-ratelimit-limit` / `-remaining` / `-reset` on every answer;
//! - the bearer token is checked (401 when unknown or expired; tests can expire it).
//!
//! Like Auth0, it can push its changes: `update_app_metadata`, `delete_user` and
//! `update_client_metadata` change its state as the Management API would and deliver
//! the matching Event Streams event or Log Streams entry (shaped as Auth0 documents
//! them; the builders are below) to claimsmith's hooks with the webhook token.
//!
//! Tests can make it answer 429 (with `Retry-After`), 5xx, slowly, or not at all, for
//! one endpoint's next calls or for every call; it records every call with the time it
//! arrived.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{json_response, serve};

pub const M2M_CLIENT_ID: &str = "m2m-claimsmith";
pub const M2M_CLIENT_SECRET: &str = "m2m-secret-value-0123456789";
pub const DOMAIN: &str = "tenant.test";
/// The audience claimsmith asks for by default (`https://{domain}/api/v2/`).
pub const AUDIENCE: &str = "https://tenant.test/api/v2/";
/// `x-ratelimit-limit` the tenant announces (per second).
pub const RATE_LIMIT: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    User,
    ClientList,
    Client,
    Other,
}

/// One call the tenant received.
#[derive(Debug, Clone)]
pub struct Call {
    pub endpoint: Endpoint,
    pub method: Method,
    /// Path and query exactly as received (still percent-encoded).
    pub target: String,
    pub at: Instant,
    /// The status the tenant answered (0 when it hung).
    pub status: u16,
}

/// A way to fail.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `Retry-After: secs` (when set) and `x-ratelimit-remaining: 0`.
    RateLimited { retry_after: Option<u64> },
    /// This status with an Auth0 error body (500, 502, 503 ...).
    Status(u16),
    /// Answer normally after this delay.
    Slow(Duration),
    /// Never answer.
    Hang,
    /// 401 as for an expired token.
    Unauthorized,
}

#[derive(Default)]
pub struct TenantState {
    /// user_id → the full user profile.
    pub users: HashMap<String, Value>,
    /// Every client, in list order.
    pub clients: Vec<Value>,
    /// Tokens the API accepts.
    pub valid_tokens: HashSet<String>,
    /// `expires_in` of new tokens.
    pub token_lifetime: u64,
    /// Faults for the next calls of an endpoint.
    pub queued: HashMap<Endpoint, VecDeque<Fault>>,
    /// A fault for every call (the tenant is down).
    pub down: Option<Fault>,
    pub calls: Vec<Call>,
    /// Wall-clock ms of the last answer, so a later change's `updated_at` is after it.
    pub last_answer_ms: u64,
    /// Where changes are pushed: (events URL, logs URL, bearer token).
    pub hooks: Option<(String, String, String)>,
    /// Events and log entries made so far (for their ids).
    pub pushed: u64,
}

/// The tenant on loopback.
pub struct Auth0Mock {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<TenantState>>,
    issued: Arc<AtomicU64>,
    /// Delivers pushed changes (keep-alive, as Auth0's senders do).
    sender: Client<HttpConnector, Full<Bytes>>,
}

impl Auth0Mock {
    pub async fn start() -> Auth0Mock {
        let state = Arc::new(Mutex::new(TenantState { token_lifetime: 86_400, ..TenantState::default() }));
        let issued = Arc::new(AtomicU64::new(0));
        let addr = serve({
            let (state, issued) = (state.clone(), issued.clone());
            move |req: Request<Incoming>| {
                let (state, issued) = (state.clone(), issued.clone());
                async move { handle(state, issued, req).await }
            }
        })
        .await;
        Auth0Mock { addr, state, issued, sender: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// The `base_url` to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, TenantState> {
        self.state.lock().unwrap()
    }

    pub fn add_user(&self, user_id: &str, app_metadata: Value) {
        let profile = json!({
            "user_id": user_id, "email": format!("{}@example.com", user_id.replace('|', ".")),
            "email_verified": true, "name": user_id, "nickname": "nick",
            "identities": [{"connection": "Username-Password-Authentication", "provider": "auth0",
                            "user_id": user_id.split('|').next_back().unwrap_or(user_id), "isSocial": false}],
            "app_metadata": app_metadata, "user_metadata": {"theme": "dark"},
            "created_at": "2024-01-01T00:00:00.000Z", "logins_count": 3,
        });
        self.st().users.insert(user_id.to_string(), profile);
    }

    pub fn set_app_metadata(&self, user_id: &str, app_metadata: Value) {
        self.st().users.get_mut(user_id).expect("no such user")["app_metadata"] = app_metadata;
    }

    pub fn add_client(&self, client_id: &str, client_metadata: Value) {
        let c = json!({
            "client_id": client_id, "tenant": "tenant", "name": format!("App {client_id}"),
            "app_type": "spa", "is_first_party": true, "oidc_conformant": true,
            "callbacks": ["https://app.example.com/callback"], "grant_types": ["authorization_code"],
            "jwt_configuration": {"alg": "RS256", "lifetime_in_seconds": 36000},
            "client_metadata": client_metadata,
            "client_secret": "never-requested-client-secret",
        });
        self.st().clients.push(c);
    }

    pub fn set_client_metadata(&self, client_id: &str, client_metadata: Value) {
        let mut st = self.st();
        let c = st.clients.iter_mut().find(|c| c["client_id"] == client_id).expect("no such client");
        c["client_metadata"] = client_metadata;
    }

    /// Pushes changes to claimsmith's hooks on `admin_url` with `token`.
    pub fn set_hooks(&self, admin_url: &str, token: &str) {
        self.st().hooks = Some((
            format!("{admin_url}/hooks/auth0/events"),
            format!("{admin_url}/hooks/auth0/logs"),
            token.to_string(),
        ));
    }

    /// A new event or log id.
    pub fn next_id(&self, prefix: &str) -> String {
        let mut st = self.st();
        st.pushed += 1;
        format!("{prefix}{:022}", st.pushed)
    }

    /// A new `updated_at`: now, and after every answer given so far (a read that
    /// answered before the change is older than it, to the millisecond).
    fn stamp(st: &mut TenantState) -> u64 {
        let ms = now_ms().max(st.last_answer_ms + 1);
        st.last_answer_ms = ms;
        ms
    }

    /// Changes a user's app_metadata as `PATCH /api/v2/users/{id}` does (`updated_at`
    /// moves) and returns the `user.updated` event Auth0 would emit, undelivered.
    pub fn change_app_metadata(&self, user_id: &str, app_metadata: Value) -> Value {
        let id = self.next_id("evt_");
        let mut st = self.st();
        let at = rfc3339(Self::stamp(&mut st));
        let user = st.users.get_mut(user_id).expect("no such user");
        user["app_metadata"] = app_metadata;
        user["updated_at"] = json!(at);
        user_updated_event(&id, user)
    }

    /// [`Self::change_app_metadata`], then delivers the event: the hook's status.
    pub async fn update_app_metadata(&self, user_id: &str, app_metadata: Value) -> StatusCode {
        let event = self.change_app_metadata(user_id, app_metadata);
        self.deliver_events(&event).await
    }

    /// Deletes a user as `DELETE /api/v2/users/{id}` does and delivers `user.deleted`.
    pub async fn delete_user(&self, user_id: &str) -> StatusCode {
        let id = self.next_id("evt_");
        let event = {
            let mut st = self.st();
            let at = rfc3339(Self::stamp(&mut st));
            let mut user = st.users.remove(user_id).expect("no such user");
            user["deleted_at"] = json!(at);
            user_deleted_event(&id, &user)
        };
        self.deliver_events(&event).await
    }

    /// Changes a client's metadata as `PATCH /api/v2/clients/{id}` does and delivers
    /// the `sapi` log entry (a one-entry JSON array, Log Streams' array format).
    pub async fn update_client_metadata(&self, client_id: &str, client_metadata: Value) -> StatusCode {
        let log_id = self.next_id("900202111040014302991");
        self.set_client_metadata(client_id, client_metadata.clone());
        let entry = client_update_log(&log_id, client_id, &json!({"client_metadata": client_metadata}));
        self.deliver_logs(Bytes::from(json!([entry]).to_string())).await
    }

    /// POSTs `body` (one event or an array) to the events hook.
    pub async fn deliver_events(&self, body: &Value) -> StatusCode {
        let (url, _, token) = self.st().hooks.clone().expect("no hooks set");
        self.post(&url, Some(&token), Bytes::from(body.to_string())).await.0
    }

    /// POSTs `body` as it is to the logs hook.
    pub async fn deliver_logs(&self, body: Bytes) -> StatusCode {
        let (_, url, token) = self.st().hooks.clone().expect("no hooks set");
        self.post(&url, Some(&token), body).await.0
    }

    /// POSTs `body` to a hook (`events` or `logs`) with `Authorization: Bearer token`
    /// when given: the status and the answer's body.
    pub async fn post_to(&self, hook: &str, token: Option<&str>, body: Bytes) -> (StatusCode, String) {
        let (events, logs, _) = self.st().hooks.clone().expect("no hooks set");
        self.post(if hook == "events" { &events } else { &logs }, token, body).await
    }

    async fn post(&self, url: &str, token: Option<&str>, body: Bytes) -> (StatusCode, String) {
        let mut req = Request::post(url).header("content-type", "application/json").header("user-agent", "Auth0");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self.sender.request(req.body(Full::new(body)).unwrap()).await.expect("delivery failed");
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The next `n` calls to `endpoint` fail with `fault`.
    pub fn fail_next(&self, endpoint: Endpoint, n: usize, fault: Fault) {
        let mut st = self.st();
        let q = st.queued.entry(endpoint).or_default();
        q.extend(std::iter::repeat_n(fault, n));
    }

    /// Every call fails with `fault` (`None`: the tenant is back).
    pub fn set_down(&self, fault: Option<Fault>) {
        self.st().down = fault;
    }

    /// Every token issued so far stops being accepted (401 "expired").
    pub fn expire_tokens(&self) {
        self.st().valid_tokens.clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    pub fn count(&self, endpoint: Endpoint) -> usize {
        self.st().calls.iter().filter(|c| c.endpoint == endpoint).count()
    }

    /// Calls to `endpoint` whose target contains `needle`.
    pub fn count_target(&self, endpoint: Endpoint, needle: &str) -> usize {
        self.st().calls.iter().filter(|c| c.endpoint == endpoint && c.target.contains(needle)).count()
    }

    pub fn total(&self) -> usize {
        self.st().calls.len()
    }

    /// Calls per endpoint, for reports.
    pub fn summary(&self) -> String {
        let st = self.st();
        let n = |e: Endpoint| st.calls.iter().filter(|c| c.endpoint == e).count();
        format!(
            "token={} users={} client_list={} client={} other={}",
            n(Endpoint::Token),
            n(Endpoint::User),
            n(Endpoint::ClientList),
            n(Endpoint::Client),
            n(Endpoint::Other)
        )
    }
}

// ---------------------------------------------------------------------------
// What Auth0 pushes, shaped as its documentation shows it

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `ms` as Auth0 writes times: `2025-02-01T12:34:56.789Z`.
pub fn rfc3339(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// The tenant name Auth0 puts in `a0tenant` and `tenant_name`.
pub fn tenant_name() -> &'static str {
    DOMAIN.split('.').next().unwrap()
}

/// A CloudEvents 1.0 event of an Event Stream: `type`, `data.object` (`user`).
pub fn cloud_event(id: &str, kind: &str, time: &str, object: Value) -> Value {
    json!({
        "specversion": "1.0",
        "type": kind,
        "source": format!("urn:auth0:{DOMAIN}"),
        "id": id,
        "time": time,
        "data": {
            "object": object,
            "context": {"client": {"id": "QG4F6eABIgDzPvcKCMKUjo8c9iet2Skc", "name": "dashboard", "metadata": {}},
                        "tenant": {"id": tenant_name()}}
        },
        "a0tenant": tenant_name(),
        "a0stream": "est_vjFVP5pVdfvsfRKatshkVV"
    })
}

/// `user.updated` for `user` (a full profile with `user_id`, `app_metadata`, `updated_at`).
pub fn user_updated_event(id: &str, user: &Value) -> Value {
    let time = user["updated_at"].as_str().map_or_else(|| rfc3339(now_ms()), str::to_string);
    cloud_event(id, "user.updated", &time, user.clone())
}

/// `user.deleted` for `user` (with `deleted_at`).
pub fn user_deleted_event(id: &str, user: &Value) -> Value {
    let time = user["deleted_at"].as_str().map_or_else(|| rfc3339(now_ms()), str::to_string);
    cloud_event(id, "user.deleted", &time, user.clone())
}

/// A Log Streams entry for a Management API call (`sapi`).
pub fn sapi_log(log_id: &str, description: &str, method: &str, path: &str, body: &Value) -> Value {
    json!({
        "log_id": log_id,
        "data": {
            "date": rfc3339(now_ms()),
            "type": "sapi",
            "description": description,
            "client_id": "360yuN1BXP4u3tBChK5VOgekgGJ7CwLL",
            "client_name": "",
            "ip": "203.0.113.7",
            "user_agent": "Chrome 95.0.4638 / Mac OS X 10.15.7",
            "details": {
                "request": {"method": method, "path": path, "query": {}, "body": body,
                            "channel": "https://manage.auth0.com/"},
                "response": {"statusCode": 200, "body": {}}
            },
            "log_id": log_id,
            "tenant_name": tenant_name()
        }
    })
}

/// "Update a client": `patch /api/v2/clients/{id}`.
pub fn client_update_log(log_id: &str, client_id: &str, body: &Value) -> Value {
    let path = format!("/api/v2/clients/{}", utf8_percent_encode(client_id, NON_ALPHANUMERIC));
    sapi_log(log_id, "Update a client", "patch", &path, body)
}

/// "Update a user": `patch /api/v2/users/{id}` (the id percent-encoded).
pub fn user_update_log(log_id: &str, user_id: &str, body: &Value) -> Value {
    let path = format!("/api/v2/users/{}", utf8_percent_encode(user_id, NON_ALPHANUMERIC));
    sapi_log(log_id, "Update a user", "patch", &path, body)
}

fn error_body(status: u16, error: &str, message: &str, code: Option<&str>) -> Response<Full<Bytes>> {
    let mut v = json!({"statusCode": status, "error": error, "message": message});
    if let Some(c) = code {
        v["errorCode"] = json!(c);
    }
    json_response(StatusCode::from_u16(status).unwrap(), &v)
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

/// `fields` / `include_fields` as Auth0 applies them.
fn project(v: &Value, query: &HashMap<String, String>) -> Value {
    let Some(fields) = query.get("fields").filter(|f| !f.is_empty()) else { return v.clone() };
    let fields: HashSet<&str> = fields.split(',').map(str::trim).collect();
    let include = query.get("include_fields").is_none_or(|i| i != "false");
    let Value::Object(m) = v else { return v.clone() };
    let out: Map<String, Value> =
        m.iter().filter(|(k, _)| fields.contains(k.as_str()) == include).map(|(k, v)| (k.clone(), v.clone())).collect();
    Value::Object(out)
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

fn classify(method: &Method, path: &str) -> Endpoint {
    match (method, path) {
        (&Method::POST, "/oauth/token") => Endpoint::Token,
        (&Method::GET, "/api/v2/clients") => Endpoint::ClientList,
        (&Method::GET, p) if p.starts_with("/api/v2/users/") => Endpoint::User,
        (&Method::GET, p) if p.starts_with("/api/v2/clients/") => Endpoint::Client,
        _ => Endpoint::Other,
    }
}

async fn handle(
    state: Arc<Mutex<TenantState>>,
    issued: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let target = parts.uri.path_and_query().map_or(path.clone(), |p| p.as_str().to_string());
    let endpoint = classify(&parts.method, &path);
    let fault = {
        let mut st = state.lock().unwrap();
        let queued = st.queued.get_mut(&endpoint).and_then(VecDeque::pop_front);
        queued.or_else(|| st.down.clone())
    };
    let record = |status: u16| {
        let mut st = state.lock().unwrap();
        st.last_answer_ms = st.last_answer_ms.max(now_ms());
        st.calls.push(Call { endpoint, method: parts.method.clone(), target: target.clone(), at, status });
    };
    let mut resp = match fault {
        Some(Fault::Hang) => {
            record(0);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            answer(&state, &issued, endpoint, &parts, &path, &body)
        }
        Some(Fault::RateLimited { retry_after }) => {
            let mut r =
                error_body(429, "Too Many Requests", "Global limit has been reached", Some("too_many_requests"));
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from_str(&s.to_string()).unwrap());
            }
            r.headers_mut().insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            r
        }
        Some(Fault::Status(s)) => error_body(s, reason(s), "Service temporarily unavailable", None),
        Some(Fault::Unauthorized) => unauthorized("Expired token received for JSON Web Token validation"),
        None => answer(&state, &issued, endpoint, &parts, &path, &body),
    };
    record(resp.status().as_u16());
    rate_headers(&state, &mut resp);
    resp
}

/// `x-ratelimit-*` for a bucket of `RATE_LIMIT` per second (unless a fault set them).
fn rate_headers(state: &Mutex<TenantState>, resp: &mut Response<Full<Bytes>>) {
    let now = Instant::now();
    let recent =
        state.lock().unwrap().calls.iter().filter(|c| now.duration_since(c.at) < Duration::from_secs(1)).count();
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    if !h.contains_key("x-ratelimit-remaining") {
        h.insert("x-ratelimit-remaining", HeaderValue::from(RATE_LIMIT.saturating_sub(recent as u64)));
    }
    h.insert("x-ratelimit-reset", HeaderValue::from(super::now() + 1));
}

fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    let mut r = error_body(401, "Unauthorized", message, None);
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"Auth0\""));
    r
}

fn answer(
    state: &Mutex<TenantState>,
    issued: &AtomicU64,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    path: &str,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if endpoint == Endpoint::Token {
        return token(state, issued, parts, body);
    }
    if endpoint == Endpoint::Other {
        return error_body(404, "Not Found", "Not Found", None);
    }
    // The Management API needs a valid bearer token.
    let presented = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let st = state.lock().unwrap();
    match presented {
        None => return unauthorized("Missing authentication"),
        Some(t) if !st.valid_tokens.contains(&t) => {
            return unauthorized("Expired token received for JSON Web Token validation");
        }
        Some(_) => {}
    }
    let query = parse_query(parts.uri.query());
    match endpoint {
        Endpoint::User => {
            let raw = &path["/api/v2/users/".len()..];
            let id = percent_decode_str(raw).decode_utf8_lossy();
            match st.users.get(id.as_ref()) {
                Some(u) => json_response(StatusCode::OK, &project(u, &query)),
                None => error_body(404, "Not Found", "The user does not exist.", Some("inexistent_user")),
            }
        }
        Endpoint::Client => {
            let raw = &path["/api/v2/clients/".len()..];
            let id = percent_decode_str(raw).decode_utf8_lossy();
            match st.clients.iter().find(|c| c["client_id"] == id.as_ref()) {
                Some(c) => json_response(StatusCode::OK, &project(c, &query)),
                None => error_body(404, "Not Found", "The client does not exist", Some("inexistent_client")),
            }
        }
        Endpoint::ClientList => {
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50);
            if per_page > 100 {
                return error_body(
                    400,
                    "Bad Request",
                    "Query validation error: 'per_page' must be at most 100",
                    Some("invalid_query_string"),
                );
            }
            let items: Vec<Value> =
                st.clients.iter().skip(page * per_page).take(per_page).map(|c| project(c, &query)).collect();
            if query.get("include_totals").is_some_and(|t| t == "true") {
                json_response(
                    StatusCode::OK,
                    &json!({"start": page * per_page, "limit": per_page, "length": items.len(),
                            "total": st.clients.len(), "clients": items}),
                )
            } else {
                json_response(StatusCode::OK, &Value::Array(items))
            }
        }
        _ => error_body(404, "Not Found", "Not Found", None),
    }
}

fn token(
    state: &Mutex<TenantState>,
    issued: &AtomicU64,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let ct = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let form: HashMap<String, String> = if ct.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string()))).collect(),
            _ => return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_request"})),
        }
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    };
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("client_credentials") {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": "unauthorized_client", "error_description": "Grant type not allowed"}),
        );
    }
    if get("client_id") != Some(M2M_CLIENT_ID) || get("client_secret") != Some(M2M_CLIENT_SECRET) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "access_denied", "error_description": "Unauthorized"}),
        );
    }
    if get("audience") != Some(AUDIENCE) {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": "access_denied", "error_description": "Service not found"}),
        );
    }
    let n = issued.fetch_add(1, SeqCst) + 1;
    let tok = format!("mgmt-token-{n}-{:032x}", rand::random::<u128>());
    let mut st = state.lock().unwrap();
    st.valid_tokens.insert(tok.clone());
    json_response(
        StatusCode::OK,
        &json!({"access_token": tok, "expires_in": st.token_lifetime,
                "scope": "read:users read:clients", "token_type": "Bearer"}),
    )
}

// ---------------------------------------------------------------------------
// claimsmith in front of the tenant

/// The admin API's bearer token in these tests (`admin.token_file`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// The hooks' bearer token (`admin.webhook_token_file`) when `TenantOpts::webhooks`.
pub const WEBHOOK_TOKEN: &str = "webhook-token-for-tests-9876543210";

/// Knobs of the claimsmith configuration used against the tenant.
pub struct TenantOpts {
    pub rps: u32,
    pub ttl: &'static str,
    pub max_stale: &'static str,
    pub negative_ttl: &'static str,
    pub timeout: &'static str,
    pub audiences: Vec<String>,
    /// Turn the push hooks on (and point the tenant's pushes at them).
    pub webhooks: bool,
    /// Appended to the `/api/` route (e.g. `user_metadata = []`); more routes may
    /// follow it.
    pub route_extra: &'static str,
}

impl Default for TenantOpts {
    fn default() -> Self {
        TenantOpts {
            rps: 100,
            ttl: "60s",
            max_stale: "1h",
            negative_ttl: "30s",
            timeout: "5s",
            audiences: vec![super::CLIENT_1.to_string(), super::CLIENT_2.to_string()],
            webhooks: false,
            route_extra: "",
        }
    }
}

/// A claimsmith configuration with the tenant as the issuer's `auth0` source.
pub fn template(mock: &Auth0Mock, o: &TenantOpts) -> String {
    let auds = o.audiences.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
token_file = "{{dir}}/admin-token"
{hooks}

[[issuer]]
issuer = "{{issuer}}"
audiences = [{auds}]
algorithms = ["RS256"]
metadata = "tenant"

[metadata.tenant]
kind = "auth0"
domain = "{DOMAIN}"
base_url = "{base}"
client_id = "{M2M_CLIENT_ID}"
client_secret_file = "{{dir}}/auth0-secret"
max_requests_per_second = {rps}
timeout = "{timeout}"

[cache]
ttl = "{ttl}"
max_stale = "{max_stale}"
negative_ttl = "{negative_ttl}"

[token]
issuer = "https://claimsmith.test/"
algorithm = "EdDSA"
header = "x-internal-token"

[[route]]
path_prefix = "/api/"
upstream = "{{upstream}}"
audience = "orders-api"
{route_extra}
"#,
        route_extra = o.route_extra,
        base = mock.url(),
        hooks = if o.webhooks { "webhook_token_file = \"{dir}/webhook-token\"" } else { "" },
        rps = o.rps,
        timeout = o.timeout,
        ttl = o.ttl,
        max_stale = o.max_stale,
        negative_ttl = o.negative_ttl,
    )
}

/// claimsmith in front of `mock`; the leak audit also looks for the client secret,
/// any management token and every metadata value the tenant holds.
pub async fn start_harness(mock: &Auth0Mock, o: &TenantOpts) -> super::Harness {
    let h = super::Harness::start_parts_with_files(
        super::Issuer::start().await,
        super::Upstream::start().await,
        &template(mock, o),
        json!({}),
        &[("auth0-secret", M2M_CLIENT_SECRET), ("admin-token", ADMIN_TOKEN), ("webhook-token", WEBHOOK_TOKEN)],
    )
    .await;
    h.add_secret(M2M_CLIENT_SECRET);
    h.add_secret("mgmt-token-");
    h.add_secret(ADMIN_TOKEN);
    h.add_secret(WEBHOOK_TOKEN);
    if o.webhooks {
        mock.set_hooks(&h.admin_url(""), WEBHOOK_TOKEN);
    }
    let st = mock.st();
    let mut leaves = Vec::new();
    for u in st.users.values() {
        leaves_of(&u["app_metadata"], &mut leaves);
    }
    for c in &st.clients {
        leaves_of(&c["client_metadata"], &mut leaves);
    }
    drop(st);
    for l in leaves {
        h.add_secret(&l);
    }
    h
}

fn leaves_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.len() >= 6 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| leaves_of(x, out)),
        Value::Object(m) => m.values().for_each(|x| leaves_of(x, out)),
        _ => {}
    }
}
