//! An Okta org on loopback, shaped from Okta's API documentation:
//!
//! - `POST /oauth2/v1/token` (the org authorization server), client credentials for a
//!   service app with a `private_key_jwt` client assertion (RFC 7523): the assertion
//!   is verified as Okta does: RS256 signature against the app's registered public
//!   key, `aud` equal to this token URL, `exp` in the future, `iss` = `sub` = the
//!   client id, and a `jti` never seen before (a replay is 401 `invalid_client`). The
//!   requested `scope` must be granted to the app (else 400 `invalid_scope`). Answer:
//!   `{token_type, expires_in, access_token, scope}`.
//! - `GET /api/v1/users/{id}` → a User (`profile`), `GET /api/v1/apps/{id}` → an
//!   Application (`profile` only when set); 404 `E0000007` "Not found: Resource not
//!   found: {id} (User)" / "(AppInstance)".
//! - `X-Rate-Limit-Limit`, `-Remaining`, `-Reset` (Unix seconds) on every API answer;
//!   429 is `E0000047` with `X-Rate-Limit-Remaining: 0` and the reset.
//! - The bearer token is checked (401 `E0000011` "Invalid token provided").
//!
//! Tests can make it answer 429, 5xx, slowly, 401 or not at all; it records every
//! call, and every assertion it saw with why it refused it, if it did.
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
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{json_response, now, serve};
use claimsmith::keys::SigningKey;

pub const OKTA_CLIENT_ID: &str = "0oa9claimsmithsvc697";
pub const GRANTED_SCOPES: &[&str] = &["okta.users.read", "okta.apps.read"];
/// `X-Rate-Limit-Limit` the org announces (per minute, as Okta counts).
pub const RATE_LIMIT: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    User,
    App,
    Other,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub endpoint: Endpoint,
    pub target: String,
    pub at: Instant,
    /// Wall-clock milliseconds when it arrived.
    pub wall_ms: u64,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 `E0000047` with `X-Rate-Limit-Reset` this many seconds from now.
    RateLimited {
        reset_in: u64,
    },
    Status(u16),
    Slow(Duration),
    Hang,
    Unauthorized,
    /// 404 from something that is not Okta (a wrong base_url): no error code.
    PlainNotFound,
    /// Handle the call (a token request's assertion is verified and its `jti` used
    /// up), then answer this status instead, as when Okta fails after the work.
    AfterHandling(u16),
}

/// A client assertion the token endpoint saw, and why it refused it (`None`: accepted).
#[derive(Debug, Clone)]
pub struct SeenAssertion {
    pub raw: String,
    pub claims: Value,
    pub refused: Option<String>,
}

#[derive(Default)]
pub struct OrgState {
    pub users: HashMap<String, Value>,
    pub apps: HashMap<String, Value>,
    pub valid_tokens: HashSet<String>,
    pub token_lifetime: u64,
    pub queued: HashMap<Endpoint, VecDeque<Fault>>,
    pub down: Option<Fault>,
    pub calls: Vec<Call>,
    pub jtis: HashSet<String>,
    pub assertions: Vec<SeenAssertion>,
    /// The last reset the org announced (Unix seconds).
    pub last_reset: u64,
}

pub struct OktaMock {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<OrgState>>,
    /// The service app's key pair: the private key in PEM for claimsmith.
    pub private_pem: String,
}

impl OktaMock {
    pub async fn start() -> OktaMock {
        let (key, pem) = SigningKey::generate(jsonwebtoken::Algorithm::RS256).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let public = Arc::new(jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap());
        let state = Arc::new(Mutex::new(OrgState { token_lifetime: 3600, ..OrgState::default() }));
        let issued = Arc::new(AtomicU64::new(0));
        let addr_cell: Arc<Mutex<String>> = Arc::default();
        let addr = serve({
            let (state, addr_cell) = (state.clone(), addr_cell.clone());
            move |req: Request<Incoming>| {
                let (state, issued, public, addr_cell) =
                    (state.clone(), issued.clone(), public.clone(), addr_cell.clone());
                async move {
                    let token_url = format!("{}/oauth2/v1/token", addr_cell.lock().unwrap());
                    handle(state, issued, &public, &token_url, req).await
                }
            }
        })
        .await;
        *addr_cell.lock().unwrap() = format!("http://{addr}");
        OktaMock { addr, state, private_pem: pem }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth2/v1/token", self.url())
    }

    fn st(&self) -> std::sync::MutexGuard<'_, OrgState> {
        self.state.lock().unwrap()
    }

    pub fn add_user(&self, id: &str, profile: Value) {
        let u = json!({
            "id": id, "status": "ACTIVE", "created": "2024-01-01T00:00:00.000Z", "activated": null,
            "statusChanged": "2024-01-01T00:00:00.000Z", "lastLogin": "2025-01-01T00:00:00.000Z",
            "lastUpdated": "2025-01-01T00:00:00.000Z", "passwordChanged": null,
            "type": {"id": "otyfnjfba4ye7pgjB0g4"}, "profile": profile,
            "credentials": {"provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": {"self": {"href": format!("https://acme.okta.com/api/v1/users/{id}")}}
        });
        self.st().users.insert(id.to_string(), u);
    }

    /// An OIDC app whose `id` is its client id; `profile` only when given.
    pub fn add_app(&self, id: &str, profile: Option<Value>) {
        let mut a = json!({
            "id": id, "name": "oidc_client", "label": format!("App {id}"), "status": "ACTIVE",
            "lastUpdated": "2025-01-01T00:00:00.000Z", "created": "2024-01-01T00:00:00.000Z",
            "signOnMode": "OPENID_CONNECT",
            "credentials": {"oauthClient": {"client_id": id, "autoKeyRotation": true,
                                            "token_endpoint_auth_method": "none"}},
            "settings": {"oauthClient": {"application_type": "browser", "grant_types": ["authorization_code"]}}
        });
        if let Some(p) = profile {
            a["profile"] = p;
        }
        self.st().apps.insert(id.to_string(), a);
    }

    pub fn fail_next(&self, endpoint: Endpoint, n: usize, fault: Fault) {
        self.st().queued.entry(endpoint).or_default().extend(std::iter::repeat_n(fault, n));
    }

    pub fn set_down(&self, fault: Option<Fault>) {
        self.st().down = fault;
    }

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

    pub fn assertions(&self) -> Vec<SeenAssertion> {
        self.st().assertions.clone()
    }

    pub fn summary(&self) -> String {
        let st = self.st();
        let n = |e: Endpoint| st.calls.iter().filter(|c| c.endpoint == e).count();
        let refused = st.assertions.iter().filter(|a| a.refused.is_some()).count();
        format!(
            "token={} (assertions refused: {refused}) users={} apps={} other={}",
            n(Endpoint::Token),
            n(Endpoint::User),
            n(Endpoint::App),
            n(Endpoint::Other)
        )
    }
}

fn okta_error(status: u16, code: &str, summary: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(status).unwrap(),
        &json!({"errorCode": code, "errorSummary": summary, "errorLink": code,
                "errorId": format!("oae{:020x}", rand::random::<u64>()), "errorCauses": []}),
    )
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Full<Bytes>> {
    json_response(StatusCode::from_u16(status).unwrap(), &json!({"error": error, "error_description": description}))
}

fn classify(method: &Method, path: &str) -> Endpoint {
    match (method, path) {
        (&Method::POST, "/oauth2/v1/token") => Endpoint::Token,
        (&Method::GET, p) if p.starts_with("/api/v1/users/") => Endpoint::User,
        (&Method::GET, p) if p.starts_with("/api/v1/apps/") => Endpoint::App,
        _ => Endpoint::Other,
    }
}

async fn handle(
    state: Arc<Mutex<OrgState>>,
    issued: Arc<AtomicU64>,
    public: &jsonwebtoken::DecodingKey,
    token_url: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let wall_ms = super::auth0::now_ms();
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let target = parts.uri.path_and_query().map_or(path.clone(), |p| p.as_str().to_string());
    let endpoint = classify(&parts.method, &path);
    let org = Org { state: &state, issued: &issued, public, token_url };
    let fault = {
        let mut st = state.lock().unwrap();
        let queued = st.queued.get_mut(&endpoint).and_then(VecDeque::pop_front);
        queued.or_else(|| st.down.clone())
    };
    let record = |status: u16| {
        state.lock().unwrap().calls.push(Call { endpoint, target: target.clone(), at, wall_ms, status });
    };
    let mut reset = now() + 60;
    let mut resp = match fault {
        Some(Fault::Hang) => {
            record(0);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            answer(org, endpoint, &parts, &path, &body)
        }
        Some(Fault::RateLimited { reset_in }) => {
            reset = now() + reset_in;
            let mut r = okta_error(429, "E0000047", "API call exceeded rate limit due to too many requests.");
            r.headers_mut().insert("X-Rate-Limit-Remaining", HeaderValue::from_static("0"));
            r
        }
        Some(Fault::Status(s)) => okta_error(s, "E0000009", "Internal Server Error"),
        Some(Fault::Unauthorized) => unauthorized(),
        Some(Fault::AfterHandling(status)) => {
            let _ = answer(org, endpoint, &parts, &path, &body);
            okta_error(status, "E0000009", "Internal Server Error")
        }
        Some(Fault::PlainNotFound) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"<html><body>Not Found</body></html>")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        None => answer(org, endpoint, &parts, &path, &body),
    };
    record(resp.status().as_u16());
    if endpoint != Endpoint::Token {
        let h = resp.headers_mut();
        h.insert("X-Rate-Limit-Limit", HeaderValue::from(RATE_LIMIT));
        if !h.contains_key("x-rate-limit-remaining") {
            h.insert("X-Rate-Limit-Remaining", HeaderValue::from(RATE_LIMIT - 1));
        }
        h.insert("X-Rate-Limit-Reset", HeaderValue::from(reset));
        state.lock().unwrap().last_reset = reset;
    }
    resp
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = okta_error(401, "E0000011", "Invalid token provided");
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static(
            "Bearer authorization_uri=\"http://acme.okta.com/oauth2/v1/authorize\", realm=\"http://acme.okta.com\", \
             scope=\"okta.users.read\", error=\"invalid_token\", error_description=\"The access token is invalid.\", \
             resource=\"/api/v1/users\"",
        ),
    );
    r
}

/// The org's side of one call: its state, the tokens it issued, the app's
/// registered public key and the token URL assertions must name.
#[derive(Clone, Copy)]
struct Org<'a> {
    state: &'a Mutex<OrgState>,
    issued: &'a AtomicU64,
    public: &'a jsonwebtoken::DecodingKey,
    token_url: &'a str,
}

fn answer(
    org: Org<'_>,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    path: &str,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let state = org.state;
    match endpoint {
        Endpoint::Token => return token(org, body),
        Endpoint::Other => {
            return okta_error(404, "E0000022", "The endpoint does not support the provided HTTP method");
        }
        _ => {}
    }
    let presented =
        parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let st = state.lock().unwrap();
    if !presented.is_some_and(|t| st.valid_tokens.contains(t)) {
        return unauthorized();
    }
    let (prefix, collection, kind) = match endpoint {
        Endpoint::User => ("/api/v1/users/", &st.users, "User"),
        _ => ("/api/v1/apps/", &st.apps, "AppInstance"),
    };
    let id = percent_decode_str(&path[prefix.len()..]).decode_utf8_lossy().into_owned();
    match collection.get(&id) {
        Some(v) => json_response(StatusCode::OK, v),
        None => okta_error(404, "E0000007", &format!("Not found: Resource not found: {id} ({kind})")),
    }
}

/// The token endpoint: verifies the client assertion as Okta does.
fn token(org: Org<'_>, body: &Bytes) -> Response<Full<Bytes>> {
    let Org { state, issued, public, token_url } = org;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type", "The authorization grant type is not supported.");
    }
    if get("client_assertion_type") != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
        return oauth_error(401, "invalid_client", "Client authentication failed.");
    }
    let raw = get("client_assertion").unwrap_or("").to_string();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[token_url]);
    v.set_issuer(&[OKTA_CLIENT_ID]);
    v.sub = Some(OKTA_CLIENT_ID.to_string());
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud", "jti"]);
    let decoded = jsonwebtoken::decode::<Value>(&raw, public, &v);
    let mut st = state.lock().unwrap();
    let (claims, refused) = match decoded {
        Err(e) => (Value::Null, Some(format!("The client_assertion token is invalid: {e}"))),
        Ok(d) => {
            let jti = d.claims["jti"].as_str().unwrap_or("").to_string();
            let refused = if jti.is_empty() {
                Some("The client_assertion token has no jti.".to_string())
            } else if !st.jtis.insert(jti) {
                Some("The client_assertion token has already been used.".to_string())
            } else {
                None
            };
            (d.claims, refused)
        }
    };
    st.assertions.push(SeenAssertion { raw, claims, refused: refused.clone() });
    if let Some(why) = refused {
        return oauth_error(401, "invalid_client", &why);
    }
    let scopes: Vec<&str> = get("scope").unwrap_or("").split(' ').filter(|s| !s.is_empty()).collect();
    if scopes.is_empty() || !scopes.iter().all(|s| GRANTED_SCOPES.contains(s)) {
        return oauth_error(
            400,
            "invalid_scope",
            "The authorization server resource does not have any configured default scopes, 'scope' must be provided.",
        );
    }
    let n = issued.fetch_add(1, SeqCst) + 1;
    let tok = format!("okta-token-{n}-{:032x}", rand::random::<u128>());
    st.valid_tokens.insert(tok.clone());
    json_response(
        StatusCode::OK,
        &json!({"token_type": "Bearer", "expires_in": st.token_lifetime, "access_token": tok,
                "scope": scopes.join(" ")}),
    )
}

// ---------------------------------------------------------------------------
// claimsmith in front of the org

pub struct OrgOpts {
    pub ttl: &'static str,
    pub max_stale: &'static str,
    pub timeout: &'static str,
    pub audiences: Vec<String>,
}

impl Default for OrgOpts {
    fn default() -> Self {
        OrgOpts {
            ttl: "60s",
            max_stale: "1h",
            timeout: "5s",
            audiences: vec![super::CLIENT_1.to_string(), super::CLIENT_2.to_string()],
        }
    }
}

pub fn template(mock: &OktaMock, o: &OrgOpts) -> String {
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
metadata = "okta"

[metadata.okta]
kind = "okta"
domain = "acme.okta.com"
base_url = "{base}"
client_id = "{OKTA_CLIENT_ID}"
private_key_file = "{{dir}}/okta.pem"
max_requests_per_second = 100
timeout = "{timeout}"

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
        timeout = o.timeout,
        ttl = o.ttl,
        max_stale = o.max_stale,
    )
}

/// claimsmith in front of `mock`; the leak audit also looks for any access token, the
/// private key and every profile value the org holds.
pub async fn start_harness(mock: &OktaMock, o: &OrgOpts) -> super::Harness {
    let h = super::Harness::start_parts_with_files(
        super::Issuer::start().await,
        super::Upstream::start().await,
        &template(mock, o),
        json!({}),
        &[("okta.pem", mock.private_pem.as_str())],
    )
    .await;
    h.add_secret("okta-token-");
    // A line of the key's base64, enough to find any part of it.
    if let Some(line) = mock.private_pem.lines().nth(3) {
        h.add_secret(line);
    }
    let st = mock.st();
    let mut leaves = Vec::new();
    for u in st.users.values() {
        leaves_of(&u["profile"], &mut leaves);
    }
    for a in st.apps.values() {
        leaves_of(&a["profile"], &mut leaves);
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
