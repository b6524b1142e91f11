//! A Keycloak server on loopback, shaped from Keycloak's admin REST API documentation:
//!
//! - `POST /realms/{realm}/protocol/openid-connect/token` (form body, client
//!   credentials with `client_secret_post` or Basic) → `{access_token, expires_in,
//!   refresh_expires_in, token_type, not-before-policy, scope}`; a bad client is 401
//!   `{"error":"unauthorized_client", ...}`, an unknown realm 404
//!   `{"error":"Realm does not exist", ...}`;
//! - `GET /admin/realms/{realm}/users/{id}` → a UserRepresentation (`attributes`: a map
//!   of string lists), 404 `{"error":"User not found"}`;
//! - `GET /admin/realms/{realm}/clients?clientId=X` → a list of ClientRepresentation
//!   (`attributes`: a map of strings), empty when none matches exactly;
//! - the bearer token is checked (401 `{"error":"HTTP 401 Unauthorized"}`); no
//!   rate-limit headers.
//!
//! Tests can make it answer 429, 5xx, slowly, 401 or not at all, for one endpoint's
//! next calls or for every call; it records every call with the time it arrived.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{json_response, serve};

pub const REALM: &str = "acme";
pub const KC_CLIENT_ID: &str = "claimsmith";
pub const KC_CLIENT_SECRET: &str = "kc-secret-value-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    User,
    Clients,
    Other,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub endpoint: Endpoint,
    /// Path and query exactly as received (still percent-encoded).
    pub target: String,
    pub at: Instant,
    /// The status answered (0 when it hung).
    pub status: u16,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 (a proxy in front of Keycloak; Keycloak sends no rate-limit headers).
    TooManyRequests,
    /// This status with a Keycloak error body.
    Status(u16),
    Slow(Duration),
    Hang,
    /// 401 as for an expired token.
    Unauthorized,
}

#[derive(Default)]
pub struct RealmState {
    /// id → UserRepresentation.
    pub users: HashMap<String, Value>,
    /// ClientRepresentations, in creation order.
    pub clients: Vec<Value>,
    pub valid_tokens: HashSet<String>,
    pub token_lifetime: u64,
    pub queued: HashMap<Endpoint, VecDeque<Fault>>,
    pub down: Option<Fault>,
    pub calls: Vec<Call>,
}

pub struct KeycloakMock {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<RealmState>>,
}

impl KeycloakMock {
    pub async fn start() -> KeycloakMock {
        let state = Arc::new(Mutex::new(RealmState { token_lifetime: 300, ..RealmState::default() }));
        let issued = Arc::new(AtomicU64::new(0));
        let addr = serve({
            let state = state.clone();
            move |req: Request<Incoming>| {
                let (state, issued) = (state.clone(), issued.clone());
                async move { handle(state, issued, req).await }
            }
        })
        .await;
        KeycloakMock { addr, state }
    }

    /// The `base_url` to configure (without /realms).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, RealmState> {
        self.state.lock().unwrap()
    }

    /// A user whose `attributes` are `attributes` (a map of string lists), or none.
    pub fn add_user(&self, id: &str, attributes: Option<Value>) {
        let mut u = json!({
            "id": id, "username": format!("user-{}", id.len()), "enabled": true, "emailVerified": true,
            "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com",
            "createdTimestamp": 1_700_000_000_000u64, "totp": false, "disableableCredentialTypes": [],
            "requiredActions": [], "notBefore": 0,
            "access": {"manageGroupMembership": true, "view": true, "mapRoles": true, "impersonate": false, "manage": true}
        });
        if let Some(a) = attributes {
            u["attributes"] = a;
        }
        self.st().users.insert(id.to_string(), u);
    }

    /// A client with `attributes` (a map of strings, Keycloak's own settings among them).
    pub fn add_client(&self, client_id: &str, attributes: Value) {
        let n = self.st().clients.len();
        let c = json!({
            "id": format!("6f1c2d3e-0000-4000-8000-{n:012}"), "clientId": client_id, "name": client_id,
            "surrogateAuthRequired": false, "enabled": true, "clientAuthenticatorType": "client-secret",
            "redirectUris": ["https://app.example.com/*"], "webOrigins": [], "bearerOnly": false,
            "consentRequired": false, "standardFlowEnabled": true, "publicClient": true,
            "protocol": "openid-connect", "attributes": attributes, "fullScopeAllowed": true,
            "defaultClientScopes": ["web-origins", "acr", "profile", "roles", "basic", "email"]
        });
        self.st().clients.push(c);
    }

    pub fn fail_next(&self, endpoint: Endpoint, n: usize, fault: Fault) {
        self.st().queued.entry(endpoint).or_default().extend(std::iter::repeat_n(fault, n));
    }

    pub fn set_down(&self, fault: Option<Fault>) {
        self.st().down = fault;
    }

    /// Every token issued so far stops being accepted.
    pub fn expire_tokens(&self) {
        self.st().valid_tokens.clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    pub fn count(&self, endpoint: Endpoint) -> usize {
        self.st().calls.iter().filter(|c| c.endpoint == endpoint).count()
    }

    pub fn count_target(&self, endpoint: Endpoint, needle: &str) -> usize {
        self.st().calls.iter().filter(|c| c.endpoint == endpoint && c.target.contains(needle)).count()
    }

    pub fn summary(&self) -> String {
        let st = self.st();
        let n = |e: Endpoint| st.calls.iter().filter(|c| c.endpoint == e).count();
        format!(
            "token={} users={} clients={} other={}",
            n(Endpoint::Token),
            n(Endpoint::User),
            n(Endpoint::Clients),
            n(Endpoint::Other)
        )
    }
}

fn error(status: u16, v: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::from_u16(status).unwrap(), &v)
}

fn classify(method: &Method, path: &str) -> Endpoint {
    let token = format!("/realms/{REALM}/protocol/openid-connect/token");
    let admin = format!("/admin/realms/{REALM}/");
    match *method {
        Method::POST if path == token => Endpoint::Token,
        Method::GET if path == format!("{admin}clients") => Endpoint::Clients,
        Method::GET if path.strip_prefix(&admin).is_some_and(|r| r.starts_with("users/")) => Endpoint::User,
        _ => Endpoint::Other,
    }
}

async fn handle(
    state: Arc<Mutex<RealmState>>,
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
        state.lock().unwrap().calls.push(Call { endpoint, target: target.clone(), at, status });
    };
    let resp = match fault {
        Some(Fault::Hang) => {
            record(0);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            answer(&state, &issued, endpoint, &parts, &path, &body)
        }
        Some(Fault::TooManyRequests) => error(429, json!({"error": "Too Many Requests"})),
        Some(Fault::Status(s)) => error(s, json!({"error": "unknown_error"})),
        Some(Fault::Unauthorized) => unauthorized(),
        None => answer(&state, &issued, endpoint, &parts, &path, &body),
    };
    record(resp.status().as_u16());
    resp
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = error(401, json!({"error": "HTTP 401 Unauthorized"}));
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"acme\""));
    r
}

fn answer(
    state: &Mutex<RealmState>,
    issued: &AtomicU64,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    path: &str,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    match endpoint {
        Endpoint::Token => return token(state, issued, parts, body),
        Endpoint::Other if path.starts_with("/realms/") || path.starts_with("/admin/realms/") => {
            return error(404, json!({"error": "Realm does not exist", "error_description": "Realm does not exist"}));
        }
        Endpoint::Other => return error(404, json!({"error": "RESTEASY003210: Could not find resource"})),
        _ => {}
    }
    let presented =
        parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let st = state.lock().unwrap();
    if !presented.is_some_and(|t| st.valid_tokens.contains(t)) {
        return unauthorized();
    }
    match endpoint {
        Endpoint::User => {
            let raw = &path[format!("/admin/realms/{REALM}/users/").len()..];
            let id = percent_decode_str(raw).decode_utf8_lossy();
            match st.users.get(id.as_ref()) {
                Some(u) => json_response(StatusCode::OK, u),
                None => error(404, json!({"error": "User not found"})),
            }
        }
        Endpoint::Clients => {
            let query: HashMap<String, String> =
                url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
            let items: Vec<Value> = match query.get("clientId") {
                // `search` is false by default: an exact match.
                Some(id) => st.clients.iter().filter(|c| c["clientId"] == id.as_str()).cloned().collect(),
                None => st.clients.clone(),
            };
            json_response(StatusCode::OK, &Value::Array(items))
        }
        _ => unreachable!(),
    }
}

fn token(
    state: &Mutex<RealmState>,
    issued: &AtomicU64,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let ct = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return error(
            400,
            json!({"error": "invalid_request", "error_description": "Missing form parameter: grant_type"}),
        );
    }
    // client_secret_post, or client_secret_basic.
    let basic = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())));
    let (id, secret) = match basic {
        Some(pair) => pair,
        None => {
            (form.get("client_id").cloned().unwrap_or_default(), form.get("client_secret").cloned().unwrap_or_default())
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(400, json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}));
    }
    if id != KC_CLIENT_ID || secret != KC_CLIENT_SECRET {
        return error(
            401,
            json!({"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"}),
        );
    }
    let n = issued.fetch_add(1, SeqCst) + 1;
    let tok = format!("kc-token-{n}-{:032x}", rand::random::<u128>());
    let mut st = state.lock().unwrap();
    st.valid_tokens.insert(tok.clone());
    json_response(
        StatusCode::OK,
        &json!({"access_token": tok, "expires_in": st.token_lifetime, "refresh_expires_in": 0,
                "token_type": "Bearer", "not-before-policy": 0, "scope": "profile email"}),
    )
}

// ---------------------------------------------------------------------------
// claimsmith in front of the realm

pub struct RealmOpts {
    pub ttl: &'static str,
    pub max_stale: &'static str,
    pub timeout: &'static str,
    pub rps: u32,
    /// Extra lines of the source's table (`attribute_prefix = ...`).
    pub extra: &'static str,
    pub audiences: Vec<String>,
}

impl Default for RealmOpts {
    fn default() -> Self {
        RealmOpts {
            ttl: "60s",
            max_stale: "1h",
            timeout: "5s",
            rps: 100,
            extra: "",
            audiences: vec![super::CLIENT_1.to_string(), super::CLIENT_2.to_string()],
        }
    }
}

pub fn template(mock: &KeycloakMock, o: &RealmOpts) -> String {
    let auds = o.audiences.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "{{issuer}}"
audiences = [{auds}]
algorithms = ["RS256"]
metadata = "kc"

[metadata.kc]
kind = "keycloak"
base_url = "{base}"
realm = "{REALM}"
client_id = "{KC_CLIENT_ID}"
client_secret_file = "{{dir}}/kc-secret"
max_requests_per_second = {rps}
timeout = "{timeout}"
{extra}

[cache]
ttl = "{ttl}"
max_stale = "{max_stale}"
negative_ttl = "30s"

[token]
issuer = "https://claimsmith.test/"
algorithm = "EdDSA"
header = "x-internal-token"

[[route]]
path_prefix = "/api/"
upstream = "{{upstream}}"
audience = "orders-api"
"#,
        base = mock.url(),
        rps = o.rps,
        timeout = o.timeout,
        extra = o.extra,
        ttl = o.ttl,
        max_stale = o.max_stale,
    )
}

/// claimsmith in front of `mock`; the leak audit also looks for the client secret,
/// any access token and every attribute value the realm holds.
pub async fn start_harness(mock: &KeycloakMock, o: &RealmOpts) -> super::Harness {
    let h = super::Harness::start_parts_with_files(
        super::Issuer::start().await,
        super::Upstream::start().await,
        &template(mock, o),
        json!({}),
        &[("kc-secret", KC_CLIENT_SECRET)],
    )
    .await;
    h.add_secret(KC_CLIENT_SECRET);
    h.add_secret("kc-token-");
    let st = mock.st();
    let mut leaves = Vec::new();
    for u in st.users.values() {
        leaves_of(&u["attributes"], &mut leaves);
    }
    for c in &st.clients {
        leaves_of(&c["attributes"], &mut leaves);
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

/// `attributes` as Keycloak stores them, from `{"k": ["v", ...]}` pairs.
pub fn attrs(pairs: &[(&str, &[&str])]) -> Value {
    let m: Map<String, Value> = pairs.iter().map(|(k, vs)| (k.to_string(), json!(vs))).collect();
    Value::Object(m)
}
