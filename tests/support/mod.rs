//! Shared harness: real servers on 127.0.0.1, started in-process, one concern a file:
//!
//! - `issuer.rs`: an OpenID issuer serving discovery and a JWKS with an RS256 and an
//!   ES256 key; it signs ID tokens and counts every fetch.
//! - `upstream.rs`: a backend that records every request it receives.
//! - `auth0.rs`: an Auth0-shaped Management API; `keycloak.rs`: a Keycloak realm's
//!   token endpoint and admin REST API; `okta.rs`: an Okta org's token endpoint
//!   (verifying `private_key_jwt` assertions) and users / apps API.
//! - `http_proxy.rs`: a forward proxy (CONNECT tunnels and absolute-form requests)
//!   that records what it saw.
//! - `wire.rs`: a raw HTTP/1.1 client; `strict_h1.rs`: a strict, independent HTTP/1.1
//!   parser for what claimsmith writes; `scripted.rs`: an upstream scripted byte by
//!   byte and a raw client that reads answers with their framing.
//! - `redis.rs`: a real `redis-server` on a free port, with faults (kill, restart,
//!   pause, a changed password) and a small RESP client to read everything it holds.
//! - `nginx.rs`: a real nginx from a config the test writes (forward-auth behind
//!   `auth_request`).
//! - `replicas.rs`: several `claimsmith run` processes sharing one tenant and Redis.
//! - `audit.rs`: the leak audit (no token, secret or metadata value may come back).
//! - here: [`Harness`], issuer + upstream + a metadata file + claimsmith itself, and an
//!   HTTP client whose every response passes the leak audit; the transport a suite
//!   runs on ([`fast_path`]).
#![allow(dead_code)]

mod audit;
pub mod auth0;
pub mod http_proxy;
mod issuer;
pub mod keycloak;
pub mod nginx;
pub mod okta;
pub mod redis;
pub mod replicas;
pub mod scripted;
pub mod strict_h1;
mod upstream;
mod wire;

pub use audit::*;
pub use issuer::*;
pub use upstream::*;
pub use wire::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use claimsmith::keys::SigningKey;

pub const CLIENT_1: &str = "client-1";
pub const CLIENT_2: &str = "client-2";
pub const USER_1: &str = "auth0|u1";
pub const USER_2: &str = "auth0|u2";
/// Secrets held in metadata: the leak audit looks for each of them.
pub const TENANT_KEY: &str = "k-secret-tenant-123";
pub const USER_NOTE: &str = "md-secret-note-u1";
pub const INTERNAL_AUD: &str = "orders-api";
pub const TOKEN_ISSUER: &str = "https://claimsmith.test/";

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Makes sure the crypto provider is installed once per test binary.
pub fn init() {
    claimsmith::install_crypto_provider();
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
}

/// Serves `handler` on 127.0.0.1:0 until the test ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_counting(handler).await.0
}

/// [`serve`], also counting the connections accepted.
pub async fn serve_counting<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, connections)
}

/// Whether this test binary runs its suite over the fast path (the default) or over
/// hyper alone. A suite runs over both by being built twice: `tests/NAME_hyper.rs`
/// holds only `#[path = "NAME.rs"] mod suite;`, and its crate name ends in `_hyper`.
pub fn fast_path() -> bool {
    !env!("CARGO_CRATE_NAME").ends_with("_hyper")
}

/// The proxy's worker threads: two (each with a runtime and a listening socket of its
/// own, `server::start_with`) for a test binary named `*_workers`, else one.
pub fn workers() -> usize {
    if env!("CARGO_CRATE_NAME").ends_with("_workers") { 2 } else { 1 }
}

/// `toml` with `listen.fast_path = false` when this binary runs over hyper (a template
/// that sets `fast_path` itself is left as it is).
pub fn on_this_transport(toml: &str) -> String {
    if fast_path() || toml.contains("fast_path") {
        return toml.to_string();
    }
    match toml.contains("[listen]\n") {
        true => toml.replacen("[listen]\n", "[listen]\nfast_path = false\n", 1),
        false => format!("[listen]\nfast_path = false\n{toml}"),
    }
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// ---------------------------------------------------------------------------
// The whole setup

/// The default metadata document.
pub fn default_metadata() -> Value {
    json!({
        "users": {
            USER_1: {"app_metadata": {"roles": ["admin"], "plan": "pro", "note": USER_NOTE}},
            USER_2: {"app_metadata": {"roles": ["viewer"]}}
        },
        "clients": {
            CLIENT_1: {"client_metadata": {"tenant_key": TENANT_KEY, "region": "eu"}},
            CLIENT_2: {"client_metadata": {}}
        }
    })
}

/// The default configuration; `{issuer}`, `{upstream}`, `{metadata}`, `{dir}` are filled in.
pub const DEFAULT_TOML: &str = r#"
[listen]
addr = "127.0.0.1:0"
token_cookie = "id_token"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "{issuer}"
audiences = ["client-1", "client-2"]
algorithms = ["RS256", "ES256"]
metadata = "local"

[metadata.local]
kind = "file"
path = "{metadata}"

[token]
issuer = "https://claimsmith.test/"
algorithm = "EdDSA"
header = "x-internal-token"
copy_claims = ["email", "name"]

[[route]]
path_prefix = "/api/"
upstream = "{upstream}"
audience = "orders-api"

[[route]]
path_prefix = "/optional/"
upstream = "{upstream}"
audience = "orders-api"
auth = "optional"

[[route]]
path_prefix = "/public/"
upstream = "{upstream}"
auth = "off"
"#;

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a 401 `invalid_token` problem.
    pub fn assert_invalid_token(&self) {
        assert_eq!(self.status, StatusCode::UNAUTHORIZED, "body: {}", self.text());
        let www = self.header("www-authenticate").expect("401 without WWW-Authenticate");
        assert!(www.starts_with("Bearer realm=\"claimsmith\""), "{www}");
        assert!(www.contains("error=\"invalid_token\""), "{www}");
        self.assert_problem(401);
    }
    /// Asserts an RFC 9457 problem+json body with `status`.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let v = self.json();
        for f in ["type", "title", "status", "detail"] {
            assert!(v.get(f).is_some(), "problem body lacks {f}: {v}");
        }
        assert_eq!(v["status"], status);
    }
}

pub struct Harness {
    pub issuer: Issuer,
    pub upstream: Upstream,
    pub proxy: claimsmith::Running,
    pub dir: tempfile::TempDir,
    pub metadata_path: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Values that must never come back to the client.
    secrets: Mutex<Vec<String>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(DEFAULT_TOML, default_metadata()).await
    }

    /// Starts with a config template and a metadata document.
    pub async fn start_with(template: &str, metadata: Value) -> Harness {
        init();
        let issuer = Issuer::start().await;
        let upstream = Upstream::start().await;
        Self::start_parts(issuer, upstream, template, metadata).await
    }

    pub async fn start_parts(issuer: Issuer, upstream: Upstream, template: &str, metadata: Value) -> Harness {
        Self::start_parts_with_files(issuer, upstream, template, metadata, &[]).await
    }

    /// [`Self::start_parts`], first writing `files` (name, content) into the temp dir
    /// (`{dir}` in the template), e.g. secrets for `*_file` keys.
    pub async fn start_parts_with_files(
        issuer: Issuer,
        upstream: Upstream,
        template: &str,
        metadata: Value,
        files: &[(&str, &str)],
    ) -> Harness {
        init();
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let metadata_path = dir.path().join("metadata.json");
        std::fs::write(&metadata_path, metadata.to_string()).unwrap();
        let toml = template
            .replace("{issuer}", &issuer.url)
            .replace("{upstream}", &upstream.url())
            .replace("{metadata}", &metadata_path.display().to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let toml = on_this_transport(&toml);
        let config = claimsmith::parse_config(&toml).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let proxy = claimsmith::server::start_with(config, workers()).await.unwrap();
        assert!(proxy.wait_ready(Duration::from_secs(10)).await, "proxy did not become ready");
        let mut secrets = vec![TENANT_KEY.to_string(), USER_NOTE.to_string()];
        collect_strings(&metadata, &mut secrets);
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness { issuer, upstream, proxy, dir, metadata_path, client, secrets: Mutex::new(secrets) }
    }

    /// The admin listener's `/metrics` once it holds `line` (or after 5 s): a proxied
    /// request is counted once its answer is written, so with worker threads of their
    /// own (`workers`) the client may read the answer a moment before it is counted.
    pub async fn metrics_with(&self, line: &str) -> String {
        let mut m = String::new();
        for _ in 0..250 {
            m = self.send(Method::GET, &self.admin_url("/metrics"), &[], Bytes::new()).await.text();
            if m.contains(line) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.admin_addr, path)
    }

    /// Adds a value the leak audit must look for.
    pub fn add_secret(&self, s: &str) {
        self.secrets.lock().unwrap().push(s.to_string());
    }

    /// GET through the proxy with `Authorization: Bearer token`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, &self.proxy_url(path), &[("authorization", &format!("Bearer {token}"))], Bytes::new())
            .await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, &self.proxy_url(path), headers, Bytes::new()).await
    }

    /// Any request; the response passes the leak audit before it is returned.
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
            // Tokens the client sends must not be echoed back either.
            if (k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("cookie"))
                && let Some((_, t)) = v.split_once(' ').or_else(|| v.split_once('='))
                && t.len() > 20
            {
                self.add_secret(t.trim());
            }
        }
        let resp = self.client.request(req.body(Full::new(body)).unwrap()).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let r = Resp { status: parts.status, headers: parts.headers, body };
        self.audit(&r);
        r
    }

    /// The leak audit: no configured secret, metadata value, ID token or internal
    /// token may appear in what the client gets back.
    pub fn audit(&self, r: &Resp) {
        let mut secrets = self.secrets.lock().unwrap().clone();
        for s in self.upstream.requests() {
            for v in s.headers.values() {
                if let Ok(v) = v.to_str()
                    && v.matches('.').count() == 2
                    && v.len() > 40
                {
                    secrets.push(v.trim_start_matches("Bearer ").to_string());
                }
            }
        }
        assert_no_leak(r.status, &r.headers, &r.body, &secrets);
    }

    /// The internal token the upstream received last.
    pub fn last_internal_token(&self) -> Option<String> {
        self.upstream.last().headers.get("x-internal-token").map(|v| v.to_str().unwrap().to_string())
    }

    /// The admin JWKS.
    pub async fn admin_jwks(&self) -> Value {
        let r = self.send(Method::GET, &self.admin_url("/.well-known/jwks.json"), &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => {
            // Only metadata values are secret; ids and keys are not.
            for (k, x) in m {
                if k == "app_metadata" || k == "client_metadata" {
                    collect_leaves(x, out);
                } else {
                    collect_strings(x, out);
                }
            }
        }
        _ => {}
    }
}

fn collect_leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.len() >= 6 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_leaves(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_leaves(x, out)),
        _ => {}
    }
}

/// Verifies an internal token against a JWKS with jsonwebtoken, as a backend would.
pub fn verify_internal(token: &str, jwks: &Value, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = header.kid.clone().expect("internal token has no kid");
    let jwk = set.find(&kid).expect("kid not in the admin JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[TOKEN_ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).expect("internal token does not verify").claims
}

impl Harness {
    /// A raw request to the proxy; the response (if any) passes the leak audit.
    pub async fn raw(&self, request: &[u8]) -> Option<RawResp> {
        let r = raw_send(self.proxy.proxy_addr, request).await;
        if let Some(r) = &r {
            self.audit(&r.to_resp());
        }
        r
    }

    /// The config template with `line` added to the `[listen]` table.
    pub fn template_with_listen(line: &str) -> String {
        DEFAULT_TOML.replacen("[listen]\n", &format!("[listen]\n{line}\n"), 1)
    }
}

/// A config whose issuer reads metadata from the `http` source at `{md}` (a loopback
/// server of the test); `{suffix}` is appended to the user URL.
pub const HTTP_SOURCE_TOML: &str = r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "{issuer}"
audiences = ["client-1"]
metadata = "users"

[metadata.users]
kind = "http"
user_url = "http://{md}/users/{user_id}{suffix}"
client_url = "http://{md}/clients/{client_id}"
max_requests_per_second = 100

[token]
issuer = "https://claimsmith.test/"
header = "x-internal-token"

[[route]]
path_prefix = "/api/"
upstream = "{upstream}"
audience = "orders-api"
"#;
