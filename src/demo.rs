//! `claimsmith demo` (README, "Quick start"): the whole loop on loopback with no external service.
//!
//! A development issuer (its own RSA key, discovery and JWKS), a file metadata source
//! with two users and one client whose client_metadata holds a secret, the proxy and
//! admin listeners, and a backend that verifies claimsmith's internal token against
//! the admin JWKS, exactly as a real backend would, then says what it learned, with
//! every client_metadata value masked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;

use crate::http_client;
use crate::keys::SigningKey;

/// The demo's application (client) id.
pub const CLIENT_ID: &str = "demo-spa";
/// The secret held in the demo client's client_metadata; never reaches the browser.
pub const TENANT_KEY: &str = "k-1f9a7c2e5d";
/// The audience of the internal token for the demo backend.
pub const BACKEND_AUDIENCE: &str = "demo-backend";

/// Sample users: (user id, display name, email, app_metadata).
fn users() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "auth0|alice",
            "Alice",
            "alice@example.com",
            json!({"roles": ["admin"], "plan": "enterprise", "legacy_id": 1042}),
        ),
        ("auth0|bob", "Bob", "bob@example.com", json!({"roles": ["viewer"], "plan": "free", "legacy_id": 2077})),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Start(#[from] crate::server::StartError),
    #[error("demo config invalid: {0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("{0}")]
    Other(String),
}

/// What a started demo exposes (for tests and for printing).
pub struct Demo {
    pub running: crate::Running,
    pub issuer_url: String,
    pub backend_addr: SocketAddr,
    /// (user id, ID token) per sample user.
    pub tokens: Vec<(String, String)>,
    dir: PathBuf,
}

impl Demo {
    /// Starts every part of the demo; returns once the proxy is ready.
    pub async fn start(addr: SocketAddr, admin_addr: SocketAddr) -> Result<Demo, DemoError> {
        crate::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("claimsmith-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;

        // The development issuer.
        let (issuer_key, issuer_pem) =
            SigningKey::generate(Algorithm::RS256).map_err(|e| DemoError::Other(e.to_string()))?;
        let issuer_listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer_url = format!("http://{}/", issuer_listener.local_addr()?);
        let mut jwk = issuer_key.public_jwk().clone();
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), json!("demo-issuer-key"));
        }
        let discovery = json!({
            "issuer": issuer_url,
            "jwks_uri": format!("{issuer_url}.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let jwks = json!({"keys": [jwk]});
        tokio::spawn(serve(issuer_listener, move |req| {
            let body = match req.uri().path() {
                "/.well-known/openid-configuration" => Some(discovery.to_string()),
                "/.well-known/jwks.json" => Some(jwks.to_string()),
                _ => None,
            };
            async move { json_or_404(body) }
        }));

        // Metadata and the signing key, as files, the way a deployment has them.
        let mut users_doc = serde_json::Map::new();
        for (id, _, _, md) in users() {
            users_doc.insert(id.into(), json!({"app_metadata": md}));
        }
        let metadata = json!({
            "users": users_doc,
            "clients": {CLIENT_ID: {"client_metadata": {"tenant_key": TENANT_KEY, "region": "eu-west-1"}}},
        });
        std::fs::write(
            dir.join("metadata.json"),
            serde_json::to_vec_pretty(&metadata).map_err(|e| DemoError::Other(e.to_string()))?,
        )?;
        let key_path = dir.join("signing-key.pem");
        if !key_path.exists() {
            let (_, pem) = SigningKey::generate(Algorithm::EdDSA).map_err(|e| DemoError::Other(e.to_string()))?;
            std::fs::write(&key_path, pem)?;
        }

        // The backend.
        let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
        let backend_addr = backend_listener.local_addr()?;

        let toml = format!(
            r#"
[listen]
addr = "{addr}"

[admin]
addr = "{admin_addr}"

[[issuer]]
issuer = "{issuer_url}"
audiences = ["{CLIENT_ID}"]
algorithms = ["RS256"]
metadata = "local"

[metadata.local]
kind = "file"
path = "{metadata}"

[token]
issuer = "https://claimsmith.demo/"
ttl = "5m"
algorithm = "EdDSA"
key_files = ["{key}"]
copy_claims = ["email", "name"]

[[route]]
path_prefix = "/api/"
upstream = "http://{backend_addr}"
audience = "{BACKEND_AUDIENCE}"

# Only callers on the enterprise plan may read reports: bob (free) gets 403.
[[route]]
path_prefix = "/reports/"
upstream = "http://{backend_addr}"
audience = "{BACKEND_AUDIENCE}"

[[route.require]]
name = "enterprise plan"
source = "app_metadata"
pointer = "/plan"
op = "eq"
value = "enterprise"

[[route]]
path_prefix = "/public/"
upstream = "http://{backend_addr}"
auth = "off"
"#,
            metadata = toml_path(&dir.join("metadata.json")),
            key = toml_path(&key_path),
        );
        let config = crate::app::parse_config(&toml)?;
        let running = crate::server::start(config).await?;
        let jwks_url = format!("http://{}/.well-known/jwks.json", running.admin_addr);
        tokio::spawn(serve(backend_listener, {
            let backend = Arc::new(Backend { jwks_url, keys: OnceCell::new() });
            move |req| {
                let backend = backend.clone();
                async move { backend.answer(req).await }
            }
        }));
        if !running.wait_ready(Duration::from_secs(10)).await {
            return Err(DemoError::Other("the proxy did not become ready (issuer keys not fetched)".into()));
        }

        let enc = EncodingKey::from_rsa_pem(issuer_pem.as_bytes()).map_err(|e| DemoError::Other(e.to_string()))?;
        let now = crate::clock::unix_now();
        let mut tokens = Vec::new();
        for (id, name, email, _) in users() {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("demo-issuer-key".into());
            let claims = json!({
                "iss": issuer_url, "sub": id, "aud": CLIENT_ID, "iat": now, "exp": now + 24 * 3600,
                "name": name, "email": email, "email_verified": true,
            });
            let t = jsonwebtoken::encode(&h, &claims, &enc).map_err(|e| DemoError::Other(e.to_string()))?;
            tokens.push((id.to_string(), t));
        }
        Ok(Demo { running, issuer_url, backend_addr, tokens, dir })
    }

    /// The text printed for a newcomer.
    pub fn banner(&self) -> String {
        let p = self.running.proxy_addr;
        let a = self.running.admin_addr;
        let mut s = String::new();
        s.push_str("claimsmith demo: everything runs on loopback. Ctrl-C stops it.\n\n");
        s.push_str(&format!(
            "  proxy    http://{p}   /api/ needs a token, /reports/ the enterprise plan, /public/ nothing\n"
        ));
        s.push_str(&format!("  admin    http://{a}   JWKS, discovery, health, metrics\n"));
        s.push_str(&format!("  issuer   {}   a development OpenID issuer with its own key\n", self.issuer_url));
        s.push_str(&format!(
            "  backend  http://{}   verifies claimsmith's token and says what it learned\n",
            self.backend_addr
        ));
        s.push_str(&format!("  metadata {}\n\n", self.dir.join("metadata.json").display()));
        for (id, token) in &self.tokens {
            s.push_str(&format!("ID token of {id}, as the browser holds it:\n  {token}\n"));
            s.push_str("its payload, decoded (no app_metadata, no client secret in it):\n");
            s.push_str(&format!("  {}\n\n", decode_payload(token)));
        }
        s.push_str("Try it:\n");
        for (id, token) in &self.tokens {
            s.push_str(&format!(
                "  # as {id}: the backend sees the user's app_metadata and the client's secret (masked in its reply)\n"
            ));
            s.push_str(&format!("  curl -s http://{p}/api/whoami -H 'Authorization: Bearer {token}'\n"));
        }
        s.push_str("  # /reports/ requires app_metadata.plan = \"enterprise\": one user gets through, the other 403\n");
        for (id, token) in &self.tokens {
            s.push_str(&format!("  # as {id}\n"));
            s.push_str(&format!("  curl -si http://{p}/reports/summary -H 'Authorization: Bearer {token}'\n"));
        }
        s.push_str("  # no token: 401 with a problem+json body\n");
        s.push_str(&format!("  curl -si http://{p}/api/whoami\n"));
        s.push_str("  # a public route: forwarded without any token\n");
        s.push_str(&format!("  curl -s http://{p}/public/hello\n"));
        s.push_str("  # the keys that verify claimsmith's internal tokens\n");
        s.push_str(&format!("  curl -s http://{a}/.well-known/jwks.json\n"));
        s
    }
}

/// Runs the demo until Ctrl-C or SIGTERM (which `docker stop`, `kill` and process
/// supervisors send); either stops it cleanly, exit status 0.
pub async fn run(addr: SocketAddr, admin_addr: SocketAddr) -> Result<(), DemoError> {
    // Caught before anything starts, as `server::run` does: a signal that comes
    // early must stop the demo the same way, not kill it.
    let mut signals = crate::server::Signals::new();
    let demo = Demo::start(addr, admin_addr).await?;
    println!("{}", demo.banner());
    // SIGHUP: the demo's configuration is its own, written at start; nothing to re-read.
    while let crate::server::Signal::Reload = signals.next().await {}
    demo.running.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&demo.dir);
    Ok(())
}

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
}

fn decode_payload(token: &str) -> String {
    token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Shows that a value is held without showing it: `"k-1…(12 chars)"`.
pub fn mask(v: &Value) -> Value {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let n = s.chars().count();
    let shown: String = if n > 6 { s.chars().take(3).collect() } else { String::new() };
    Value::String(format!("{shown}…({n} chars)"))
}

struct Backend {
    jwks_url: String,
    keys: OnceCell<HashMap<String, DecodingKey>>,
}

impl Backend {
    async fn keys(&self) -> Result<&HashMap<String, DecodingKey>, String> {
        self.keys
            .get_or_try_init(|| async {
                // The demo's own issuer is on loopback: never through a proxy.
                let direct = http_client::Egress::none();
                let connector = http_client::connector(None, &direct).map_err(|e| e.to_string())?;
                let client = http_client::JsonClient::new(connector, &direct);
                let req = http_client::get_request(&self.jwks_url).map_err(|e| e.to_string())?;
                let r = http_client::fetch(&client, req, Duration::from_secs(5), 1 << 20)
                    .await
                    .map_err(|e| e.to_string())?;
                let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                let mut out = HashMap::new();
                for k in &set.keys {
                    if let (Some(kid), Ok(dk)) = (&k.common.key_id, DecodingKey::from_jwk(k)) {
                        out.insert(kid.clone(), dk);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return json_response(
                StatusCode::OK,
                json!({"backend": "demo", "path": path, "internal_token": null, "note": "public route: no caller identity"}),
            );
        };
        match self.verify(token).await {
            Ok(claims) => {
                let masked: serde_json::Map<String, Value> = claims["client_metadata"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
                    .unwrap_or_default();
                json_response(
                    StatusCode::OK,
                    json!({
                        "backend": "demo",
                        "path": path,
                        "verified_with": self.jwks_url,
                        "user": claims["sub"],
                        "client_id": claims["client_id"],
                        "email": claims["email"],
                        "app_metadata": claims["app_metadata"],
                        "client_metadata": masked,
                        "note": "client_metadata values are masked: the backend holds them, the browser never sees them",
                    }),
                )
            }
            Err(e) => json_response(StatusCode::UNAUTHORIZED, json!({"backend": "demo", "error": e})),
        }
    }

    async fn verify(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "bad token header".to_string())?;
        if header.typ.as_deref() != Some("at+jwt") {
            return Err("not an at+jwt token".into());
        }
        let keys = self.keys().await?;
        let key = header.kid.as_ref().and_then(|k| keys.get(k)).ok_or("unknown kid")?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];
        v.algorithms.retain(|a| *a == header.alg);
        v.set_audience(&[BACKEND_AUDIENCE]);
        v.set_issuer(&["https://claimsmith.demo/"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, key, &v).map_err(|_| "token did not verify".to_string())?;
        Ok(data.claims)
    }
}

fn json_response(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn json_or_404(body: Option<String>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match body {
        Some(b) => json_response(StatusCode::OK, serde_json::from_str(&b).unwrap_or(Value::Null)),
        None => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    })
}

/// A tiny server loop for the demo's issuer and backend.
async fn serve<F, Fut, R>(listener: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
    R: IntoResult + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let f = f.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let f = f.clone();
                async move { f(req).await.into_result() }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Lets handlers return a response or a `Result` of one.
trait IntoResult {
    fn into_result(self) -> Result<Response<Full<Bytes>>, Infallible>;
}
impl IntoResult for Response<Full<Bytes>> {
    fn into_result(self) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(self)
    }
}
impl IntoResult for Result<Response<Full<Bytes>>, Infallible> {
    fn into_result(self) -> Result<Response<Full<Bytes>>, Infallible> {
        self
    }
}
