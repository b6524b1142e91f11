//! Shared harness: real servers on 127.0.0.1, started in-process.
//!
//! - [`Issuer`]: an OpenID issuer serving discovery and a JWKS with an RS256 and an
//!   ES256 key; it signs ID tokens and counts every fetch.
//! - [`Upstream`]: a backend that records every request it receives.
//! - [`Harness`]: issuer + upstream + a metadata file + claimsmith itself, and an HTTP
//!   client whose every response passes the leak audit (no token, secret or metadata
//!   value may come back to the client).
#![allow(dead_code)]

pub mod auth0;
pub mod strict_h1;

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
// Issuer

pub struct IssuerKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The PEM of the private key (tests that forge need the public parts too).
    pub pem: String,
}

impl IssuerKey {
    pub fn generate(alg: Algorithm, kid: &str) -> IssuerKey {
        let (key, pem) = SigningKey::generate(alg).unwrap();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            _ => unreachable!(),
        };
        let mut jwk = key.public_jwk().clone();
        jwk["kid"] = json!(kid);
        IssuerKey { kid: kid.to_string(), alg, encoding, jwk, pem }
    }
}

/// An OpenID issuer on loopback.
pub struct Issuer {
    pub addr: SocketAddr,
    pub url: String,
    pub rsa: Arc<IssuerKey>,
    pub ec: Arc<IssuerKey>,
    /// Keys published in the JWKS (tests can add or remove).
    pub published: Arc<Mutex<Vec<Value>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub discovery_fetches: Arc<AtomicUsize>,
    /// Every path requested of the issuer (to prove no jku/x5u fetch reached it).
    pub paths: Arc<Mutex<Vec<String>>>,
    pub down: Arc<AtomicBool>,
}

impl Issuer {
    pub async fn start() -> Issuer {
        let rsa = Arc::new(IssuerKey::generate(Algorithm::RS256, "rsa-1"));
        let ec = Arc::new(IssuerKey::generate(Algorithm::ES256, "ec-1"));
        let published = Arc::new(Mutex::new(vec![rsa.jwk.clone(), ec.jwk.clone()]));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery_fetches = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let url_cell: Arc<Mutex<String>> = Arc::default();
        let addr = serve({
            let (published, jwks_fetches, discovery_fetches, paths, down, url_cell) = (
                published.clone(),
                jwks_fetches.clone(),
                discovery_fetches.clone(),
                paths.clone(),
                down.clone(),
                url_cell.clone(),
            );
            move |req: Request<Incoming>| {
                let path = req.uri().path().to_string();
                paths.lock().unwrap().push(path.clone());
                let resp = if down.load(SeqCst) {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}))
                } else {
                    match path.as_str() {
                        "/.well-known/openid-configuration" => {
                            discovery_fetches.fetch_add(1, SeqCst);
                            let url = url_cell.lock().unwrap().clone();
                            json_response(
                                StatusCode::OK,
                                &json!({"issuer": url, "jwks_uri": format!("{url}.well-known/jwks.json"),
                                        "id_token_signing_alg_values_supported": ["RS256", "ES256"]}),
                            )
                        }
                        "/.well-known/jwks.json" => {
                            jwks_fetches.fetch_add(1, SeqCst);
                            json_response(StatusCode::OK, &json!({"keys": published.lock().unwrap().clone()}))
                        }
                        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
                    }
                };
                async move { resp }
            }
        })
        .await;
        let url = format!("http://{addr}/");
        *url_cell.lock().unwrap() = url.clone();
        Issuer { addr, url, rsa, ec, published, jwks_fetches, discovery_fetches, paths, down }
    }

    /// Standard valid claims for `sub`, audience client-1.
    pub fn claims(&self, sub: &str) -> Value {
        let n = now();
        json!({"iss": self.url, "sub": sub, "aud": CLIENT_1, "iat": n, "exp": n + 600,
               "email": "u1@example.com", "name": "User One"})
    }

    pub fn sign(&self, key: &IssuerKey, claims: &Value) -> String {
        let mut h = Header::new(key.alg);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
    }

    pub fn sign_header(&self, key: &IssuerKey, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &key.encoding).unwrap()
    }

    /// A valid RS256 ID token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.rsa, &self.claims(sub))
    }

    /// A valid ES256 ID token for `sub`.
    pub fn token_es256(&self, sub: &str) -> String {
        self.sign(&self.ec, &self.claims(sub))
    }
}

/// Builds a compact token from raw parts (for malformed and forged tokens).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode(signature))
}

// ---------------------------------------------------------------------------
// Upstream

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the upstream answers.
#[derive(Clone, Default)]
pub struct Behavior {
    pub delay: Option<Duration>,
    pub status: Option<StatusCode>,
    pub extra_headers: Vec<(String, String)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behavior: Arc<Mutex<Behavior>>,
    pub count: Arc<AtomicU64>,
    /// TCP connections accepted (to observe connection reuse).
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let behavior: Arc<Mutex<Behavior>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let (addr, connections) = serve_counting({
            let (seen, behavior, count) = (seen.clone(), behavior.clone(), count.clone());
            move |req: Request<Incoming>| {
                let (seen, behavior, count) = (seen.clone(), behavior.clone(), count.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let n = count.fetch_add(1, SeqCst) + 1;
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.clone(),
                        uri: parts.uri.to_string(),
                        headers: parts.headers.clone(),
                        body: body.clone(),
                    });
                    let b = behavior.lock().unwrap().clone();
                    if let Some(d) = b.delay {
                        tokio::time::sleep(d).await;
                    }
                    let mut r = json_response(
                        b.status.unwrap_or(StatusCode::OK),
                        &json!({"upstream": "ok", "n": n, "path": parts.uri.path(), "body_len": body.len()}),
                    );
                    for (k, v) in b.extra_headers {
                        r.headers_mut()
                            .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
                    }
                    r
                }
            }
        })
        .await;
        Upstream { addr, seen, behavior, count, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw no request")
    }

    pub fn saw_nothing(&self) -> bool {
        self.seen.lock().unwrap().is_empty()
    }
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
        let config = claimsmith::Config::parse(&toml).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let proxy = claimsmith::start(config).await.unwrap();
        assert!(proxy.wait_ready(Duration::from_secs(10)).await, "proxy did not become ready");
        let mut secrets = vec![TENANT_KEY.to_string(), USER_NOTE.to_string()];
        collect_strings(&metadata, &mut secrets);
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness { issuer, upstream, proxy, dir, metadata_path, client, secrets: Mutex::new(secrets) }
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

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP, for requests a conforming client would refuse or
// normalise (underscored or odd-cased header names, smuggling, slow clients).

/// One response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    /// Header names as received (lower-cased by hyper on the way out).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// As a [`Resp`], for the leak audit and the problem asserts.
    pub fn to_resp(&self) -> Resp {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                headers.append(k, v);
            }
        }
        Resp { status: StatusCode::from_u16(self.status).unwrap(), headers, body: Bytes::from(self.body.clone()) }
    }
}

const RAW_READ_TIMEOUT: Duration = Duration::from_secs(15);

async fn raw_read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(RAW_READ_TIMEOUT, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => None,
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `stream`; `buf` holds bytes read beyond it (pipelining).
/// `None` when the connection closed (or was reset) before a whole response came.
pub async fn raw_read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawResp> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        raw_read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    buf.drain(..head_end + 4);
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                raw_read_more(stream, buf).await?;
            };
            let size_s = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                raw_read_more(stream, buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break body;
            }
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            raw_read_more(stream, buf).await?;
        }
        buf.drain(..len).collect()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Delimited by the end of the connection.
        while raw_read_more(stream, buf).await.is_some() {}
        std::mem::take(buf)
    };
    Some(RawResp { status, headers, body })
}

/// Connects, writes `request` exactly as given and reads one response.
pub async fn raw_send(addr: SocketAddr, request: &[u8]) -> Option<RawResp> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    raw_read_response(&mut stream, &mut buf).await
}

/// Whether the peer ends the connection (EOF or reset) within `within`; bytes
/// that arrive meanwhile (an error answer) are skipped.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
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

/// The leak audit for any response a test client got: fails when its status line,
/// headers or body contain one of `secrets` (tokens, metadata values, configured
/// secrets). [`Harness`] applies it to every response; tests with their own clients
/// (TLS, h2c, the real binary) call it directly.
pub fn assert_no_leak(status: StatusCode, headers: &HeaderMap, body: &[u8], secrets: &[String]) {
    let mut text = String::from_utf8_lossy(body).into_owned();
    text.push_str(status.as_str());
    for (k, v) in headers {
        text.push_str(k.as_str());
        text.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(
            !text.contains(s.as_str()),
            "LEAK: the response to the client contains a secret value ({} chars)",
            s.len()
        );
    }
}

/// Metadata values of [`default_metadata`] that must never reach a client.
pub fn default_secrets() -> Vec<String> {
    let mut out = vec![TENANT_KEY.to_string(), USER_NOTE.to_string()];
    collect_strings(&default_metadata(), &mut out);
    out
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
