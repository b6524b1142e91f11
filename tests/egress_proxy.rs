//! The outbound proxy (docs/operations.md, "Outbound proxy") with the real binary:
//! `HTTP_PROXY` carries the JWKS and metadata reads in absolute-form, `HTTPS_PROXY`
//! tunnels them with CONNECT and TLS end to end, `NO_PROXY` bypasses, credentials go
//! as `Proxy-Authorization` and never into the logs, a refusing proxy gives the
//! normal 503, and route upstreams never go through the proxy.
//!
//! The proxy variables are process-wide, so claimsmith runs as a child process with
//! its own environment; this test binary never sets them.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use support::http_proxy::*;
use support::*;
use tokio::net::TcpListener;

/// Generous bound for anything that waits on the process (not a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

const PROXY_VARS: [&str; 8] =
    ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"];

/// `claimsmith run` with its own environment; its JSON log lines are collected.
struct Proc {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proc {
    async fn start(config: &Path, env: &[(&str, &str)]) -> Proc {
        let (child, logs) = spawn(config, env);
        let listening = wait_for(&logs, "claimsmith listening").await;
        let v: Value = serde_json::from_str(&listening).expect("the start line is not JSON");
        let proxy = v["proxy_addr"].as_str().unwrap().parse().unwrap();
        let admin = v["admin_addr"].as_str().unwrap().parse().unwrap();
        Proc { child, logs, proxy, admin, client: Client::builder(TokioExecutor::new()).build_http() }
    }

    fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let req = Request::get(format!("http://{}/readyz", self.admin)).body(Full::new(Bytes::new())).unwrap();
            if self.client.request(req).await.map(|r| r.status()).ok() == Some(StatusCode::OK) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never ready; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path` with `token`; the answer passes the leak audit.
    async fn get(&self, path: &str, token: &str) -> (StatusCode, String) {
        let req = Request::get(format!("http://{}{}", self.proxy, path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut secrets = default_secrets();
        secrets.push(token.to_string());
        secrets.push(PROXY_REFUSAL_BODY.to_string());
        assert_no_leak(parts.status, &parts.headers, &body, &secrets);
        (parts.status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with only the proxy variables of `env` (none inherited).
fn spawn(config: &Path, env: &[(&str, &str)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_claimsmith"));
    cmd.args(["--log-format", "json", "run", "--no-watch", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.env_remove("RUST_LOG").env_remove("CLAIMSMITH_LOG_FORMAT").env_remove("CLAIMSMITH_CONFIG");
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot start claimsmith");
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, logs)
}

/// Waits until a log line contains `needle`; returns the line.
async fn wait_for(logs: &Mutex<Vec<String>>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = logs.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {needle:?}; logs:\n{}",
            logs.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metadata API: every user and client has `{"tier": "gold"}`.
async fn metadata_api() -> SocketAddr {
    serve(|req: Request<Incoming>| {
        let p = req.uri().path().to_string();
        async move {
            if p.starts_with("/users/") || p.starts_with("/clients/") {
                json_response(StatusCode::OK, &json!({"tier": "gold"}))
            } else {
                json_response(StatusCode::NOT_FOUND, &json!({}))
            }
        }
    })
    .await
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 and localhost signed by it.
struct Pki {
    ca: PathBuf,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "claimsmith egress test CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.pem().as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki { ca: ca_path, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)) }
}

/// TLS on loopback in front of the plaintext server at `backend`: the https
/// endpoint claimsmith reaches.
async fn tls_front(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// Where claimsmith reads keys and metadata.
struct Endpoints {
    /// `jwks_uri`; `None`: discovery at the issuer.
    jwks_uri: Option<String>,
    metadata_base: String,
    ca: Option<PathBuf>,
}

fn write_config(dir: &Path, issuer: &Issuer, upstream: &str, ep: &Endpoints) -> PathBuf {
    let ca = ep.ca.as_ref().map(|c| format!("ca_file = \"{}\"\n", c.display())).unwrap_or_default();
    let jwks = ep.jwks_uri.as_ref().map(|u| format!("jwks_uri = \"{u}\"\n")).unwrap_or_default();
    let toml = format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "{issuer}"
{jwks}{ca}audiences = ["client-1"]
algorithms = ["RS256", "ES256"]
metadata = "idp"

[metadata.idp]
kind = "http"
user_url = "{base}/users/{{user_id}}"
client_url = "{base}/clients/{{client_id}}"
{ca}
[token]
issuer = "https://claimsmith.test/"
algorithm = "EdDSA"
header = "x-internal-token"

[[route]]
path_prefix = "/api/"
upstream = "{upstream}"
audience = "orders-api"
"#,
        issuer = issuer.url,
        base = ep.metadata_base,
    );
    let path = dir.join("claimsmith.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Issuer, metadata API and upstream on plain http.
async fn plain_setup(dir: &Path) -> (Issuer, Upstream, SocketAddr, PathBuf) {
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let meta = metadata_api().await;
    let ep = Endpoints { jwks_uri: None, metadata_base: format!("http://{meta}"), ca: None };
    let cfg = write_config(dir, &issuer, &upstream.url(), &ep);
    (issuer, upstream, meta, cfg)
}

/// The JWKS and the metadata API behind TLS with a test CA (`ca_file`); the JWKS
/// on `jwks_host` (`127.0.0.1` or `localhost`).
async fn tls_setup(dir: &Path, jwks_host: &str) -> (Issuer, Upstream, SocketAddr, SocketAddr, PathBuf) {
    let pki = pki(dir);
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let jwks = tls_front(&pki, issuer.addr).await;
    let meta = tls_front(&pki, metadata_api().await).await;
    let ep = Endpoints {
        jwks_uri: Some(format!("https://{jwks_host}:{}/.well-known/jwks.json", jwks.port())),
        metadata_base: format!("https://{meta}"),
        ca: Some(pki.ca.clone()),
    };
    let cfg = write_config(dir, &issuer, &upstream.url(), &ep);
    (issuer, upstream, jwks, meta, cfg)
}

#[tokio::test]
async fn http_proxy_carries_jwks_and_metadata_reads_in_absolute_form() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (issuer, upstream, meta, cfg) = plain_setup(dir.path()).await;
    let proxy = HttpProxy::start(ProxyMode::Open).await;
    let p = Proc::start(&cfg, &[("HTTP_PROXY", &proxy.url(None))]).await;
    p.wait_ready().await;
    let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", p.log_text());
    assert_eq!(upstream.requests().len(), 1);

    let lines = proxy.lines();
    let iss = issuer.addr;
    for want in [
        format!("GET http://{iss}/.well-known/openid-configuration HTTP/1.1"),
        format!("GET http://{iss}/.well-known/jwks.json HTTP/1.1"),
        format!("GET http://{meta}/users/auth0%7Cu1 HTTP/1.1"),
        format!("GET http://{meta}/clients/client-1 HTTP/1.1"),
    ] {
        assert!(lines.contains(&want), "the proxy did not see {want:?}: {lines:#?}");
    }
    assert!(proxy.seen().iter().all(|s| s.proxy_authorization.is_none()));
    // Said once at start: the proxy by host:port.
    let start = wait_for(&p.logs, "outbound proxy").await;
    assert!(start.contains(&format!("\"http_proxy\":\"{}\"", proxy.addr)), "{start}");
    assert!(start.contains("\"https_proxy\":\"none\""), "{start}");
}

#[tokio::test]
async fn https_proxy_tunnels_with_connect_and_tls_end_to_end() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (issuer, upstream, jwks, meta, cfg) = tls_setup(dir.path(), "127.0.0.1").await;
    let proxy = HttpProxy::start(ProxyMode::Open).await;
    let p = Proc::start(&cfg, &[("HTTPS_PROXY", &proxy.url(None))]).await;
    p.wait_ready().await;
    let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", p.log_text());
    assert_eq!(upstream.requests().len(), 1);

    let seen = proxy.seen();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert!(lines.contains(&format!("CONNECT {jwks} HTTP/1.1").as_str()), "{lines:#?}");
    assert!(lines.contains(&format!("CONNECT {meta} HTTP/1.1").as_str()), "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("CONNECT ")), "only tunnels: {lines:#?}");
    for s in &seen {
        let bytes = s.tunneled.lock().unwrap().clone();
        // A TLS handshake record opens the tunnel; no request is readable in it.
        assert_eq!(bytes.first(), Some(&0x16), "{}: the tunnel does not start with TLS", s.line);
        // (Not "HTTP/1.1": the ClientHello offers "http/1.1" in ALPN, in clear by design.)
        for plain in [&b"/.well-known/jwks.json"[..], b"/users/", b"/clients/", b"GET /", b"claimsmith/"] {
            assert!(
                !bytes.windows(plain.len()).any(|w| w == plain),
                "{}: the proxy saw {:?} in clear",
                s.line,
                String::from_utf8_lossy(plain)
            );
        }
    }
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy_for_the_hosts_it_names() {
    init();
    let dir = tempfile::tempdir().unwrap();
    // Keys on `localhost` (named in NO_PROXY), metadata on 127.0.0.1 (not named).
    let (issuer, _upstream, jwks, meta, cfg) = tls_setup(dir.path(), "localhost").await;
    let proxy = HttpProxy::start(ProxyMode::Open).await;
    let url = proxy.url(None);
    let env = [("HTTPS_PROXY", url.as_str()), ("HTTP_PROXY", url.as_str()), ("NO_PROXY", "example.invalid, localhost")];
    let p = Proc::start(&cfg, &env).await;
    p.wait_ready().await;
    let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", p.log_text());
    let lines = proxy.lines();
    assert!(lines.contains(&format!("CONNECT {meta} HTTP/1.1")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(&format!(":{}", jwks.port()))), "NO_PROXY host proxied: {lines:#?}");

    // Every host excluded: the proxy sees nothing at all.
    let dir2 = tempfile::tempdir().unwrap();
    let (issuer, _upstream, _meta, cfg) = plain_setup(dir2.path()).await;
    let quiet = HttpProxy::start(ProxyMode::Open).await;
    let url = quiet.url(None);
    let env = [("HTTP_PROXY", url.as_str()), ("no_proxy", "127.0.0.0/8")];
    let p = Proc::start(&cfg, &env).await;
    p.wait_ready().await;
    let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", p.log_text());
    assert!(quiet.lines().is_empty(), "{:#?}", quiet.lines());
}

#[tokio::test]
async fn proxy_credentials_go_as_proxy_authorization_and_never_into_the_logs() {
    init();
    let dir = tempfile::tempdir().unwrap();
    // JWKS over https (credentials on the CONNECT), metadata over http (credentials
    // on each absolute-form request).
    let pki = pki(dir.path());
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let jwks = tls_front(&pki, issuer.addr).await;
    let meta = metadata_api().await;
    let ep = Endpoints {
        jwks_uri: Some(format!("https://{jwks}/.well-known/jwks.json")),
        metadata_base: format!("http://{meta}"),
        ca: Some(pki.ca.clone()),
    };
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &ep);
    let (user, password) = ("egress-user", "s3cret-proxy-pw");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let proxy = HttpProxy::start(ProxyMode::RequireAuth(basic.clone())).await;
    let url = proxy.url(Some(&format!("{user}:{password}")));
    let p = Proc::start(&cfg, &[("https_proxy", url.as_str()), ("http_proxy", url.as_str())]).await;
    p.wait_ready().await;
    let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", p.log_text());

    let seen = proxy.seen();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert!(lines.contains(&format!("CONNECT {jwks} HTTP/1.1").as_str()), "{lines:#?}");
    assert!(lines.contains(&format!("GET http://{meta}/users/auth0%7Cu1 HTTP/1.1").as_str()), "{lines:#?}");
    for s in &seen {
        assert_eq!(s.proxy_authorization.as_deref(), Some(basic.as_str()), "{}", s.line);
    }
    // The origin never gets the proxy's credentials.
    assert!(upstream.requests().iter().all(|r| !format!("{:?}", r.headers).contains(password)));
    let logs = p.log_text();
    assert!(logs.contains(&proxy.addr.to_string()), "the proxy is named in the start log:\n{logs}");
    for secret in [password, user, basic.trim_start_matches("Basic ")] {
        assert!(!logs.contains(secret), "{secret:?} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn a_proxy_that_refuses_gives_the_normal_503_and_names_its_status() {
    init();
    // 407: credentials missing; the keys cannot be fetched.
    let dir = tempfile::tempdir().unwrap();
    let (issuer, upstream, jwks, _meta, cfg) = tls_setup(dir.path(), "127.0.0.1").await;
    let proxy = HttpProxy::start(ProxyMode::RequireAuth("Basic nope".into())).await;
    let p = Proc::start(&cfg, &[("HTTPS_PROXY", &proxy.url(None))]).await;
    let failed = wait_for(&p.logs, "JWKS fetch failed").await;
    assert!(failed.contains("HTTP 407"), "{failed}");
    assert!(failed.contains(&proxy.addr.to_string()), "{failed}");
    let (status, _) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(proxy.lines().contains(&format!("CONNECT {jwks} HTTP/1.1")));
    assert!(!p.log_text().contains(PROXY_REFUSAL_BODY), "{}", p.log_text());
    assert!(upstream.saw_nothing());

    // 403 to CONNECT: keys direct (NO_PROXY), metadata refused.
    let dir = tempfile::tempdir().unwrap();
    let (issuer, upstream, _jwks, meta, cfg) = tls_setup(dir.path(), "localhost").await;
    let proxy = HttpProxy::start(ProxyMode::RefuseConnect).await;
    let p = Proc::start(&cfg, &[("HTTPS_PROXY", &proxy.url(None)), ("NO_PROXY", "localhost")]).await;
    p.wait_ready().await;
    let (status, _) = p.get("/api/orders", &issuer.token(USER_1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "logs:\n{}", p.log_text());
    assert!(proxy.lines().contains(&format!("CONNECT {meta} HTTP/1.1")), "{:#?}", proxy.lines());
    let logs = p.log_text();
    assert!(logs.contains("HTTP 403"), "the proxy's status is named:\n{logs}");
    assert!(!logs.contains(PROXY_REFUSAL_BODY), "{logs}");
    assert!(upstream.saw_nothing());
}

#[tokio::test]
async fn route_upstreams_never_go_through_the_proxy() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (issuer, upstream, _meta, cfg) = plain_setup(dir.path()).await;
    let proxy = HttpProxy::start(ProxyMode::Open).await;
    let url = proxy.url(None);
    let p = Proc::start(&cfg, &[("HTTP_PROXY", url.as_str()), ("HTTPS_PROXY", url.as_str())]).await;
    p.wait_ready().await;
    for _ in 0..3 {
        let (status, body) = p.get("/api/orders", &issuer.token(USER_1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(upstream.requests().len(), 3);
    let up = upstream.url();
    let up = up.trim_start_matches("http://").trim_end_matches('/');
    let lines = proxy.lines();
    assert!(!lines.is_empty(), "the IdP reads did go through the proxy");
    assert!(!lines.iter().any(|l| l.contains(up)), "an upstream request went through the proxy: {lines:#?}");
}

#[tokio::test]
async fn an_https_proxy_url_is_refused_at_start_without_echoing_it() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (_issuer, _upstream, _meta, cfg) = plain_setup(dir.path()).await;
    let (mut child, logs) = spawn(&cfg, &[("HTTPS_PROXY", "https://who:pw-not-shown@proxy.example:3129")]);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(2));
    // The reader thread may still be draining stderr.
    let text = wait_for(&logs, "HTTPS_PROXY").await;
    assert!(text.contains("https:// proxy"), "{text}");
    let all = logs.lock().unwrap().join("\n");
    assert!(!all.contains("pw-not-shown") && !all.contains("who:"), "{all}");
}
