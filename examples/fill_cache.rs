//! Memory and start-up of the real binary:
//!
//! 1. makes an issuer key and a config whose metadata source holds `--users` users:
//!    `--source http` (default) is a generic JSON source (docs/configuration.md, "[metadata.NAME]") served by this
//!    program, so claimsmith holds a user only once it is cached; `--source file`
//!    is a metadata file, which claimsmith keeps whole in memory besides its cache;
//! 2. serves the issuer JWKS, the http source and a `200 ok` upstream itself;
//! 3. starts `claimsmith run` (the release binary) and times start to ready: from
//!    spawning the process to the first 200 from `/readyz` (polled every 1 ms);
//! 4. sends one request per user, each with its own ID token, through the proxy, so
//!    the token cache, the metadata cache and the minted-token cache all fill by the
//!    real code path; then reads the process's VmRSS from /proc.
//!
//! ```text
//! cargo build --release --bin claimsmith --example fill_cache
//! target/release/examples/fill_cache [--users 100000] [--requests N] [--source http|file]
//!     [--orgs 97] [--bin target/release/claimsmith]
//! ```
//! Each user's app_metadata names one of `--orgs` organisations (user `i` is in org
//! `i % orgs`), so there are that many distinct metadata values; claimsmith holds
//! equal values once, so `--orgs` as large as `--users` shows the case where no two
//! users' metadata are the same.
//! ID tokens are ES256 here only because signing 100,000 RS256 tokens takes minutes;
//! what is cached per user does not depend on the algorithm.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, json};
use tokio::net::TcpListener;

const ISSUER: &str = "https://fill-issuer.test/";
const CLIENT: &str = "fill-client";

struct Killed(Child);
impl Drop for Killed {
    /// SIGTERM (claimsmith drains and exits), then SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field in KiB (0 when absent).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// VmRSS's parts: the heap and stacks (anonymous) and the binary's own pages (file).
fn rss_parts(pid: u32) -> String {
    let mib = |field| status_kib(pid, field) as f64 / 1024.0;
    format!("anonymous {:.1} MiB, file-backed {:.1} MiB", mib("RssAnon:"), mib("RssFile:"))
}

async fn serve_static(body: Arc<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.as_str().to_owned())))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// How many organisations the users are spread over (`--orgs`).
static ORGS: AtomicUsize = AtomicUsize::new(97);

fn app_metadata(i: usize) -> serde_json::Value {
    json!({"roles": ["reader"], "plan": "pro", "org_id": format!("org-{}", i % ORGS.load(Relaxed).max(1))})
}

/// The generic JSON source: `/users/{id}` answers that user's app_metadata, any
/// `/clients/{id}` the client's client_metadata.
async fn serve_metadata() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path();
                    let body = if path.starts_with("/clients/") {
                        json!({"tenant_key": "k-fill", "region": "eu"})
                    } else {
                        let n = path.rsplit('-').next().and_then(|d| d.parse().ok()).unwrap_or(0);
                        app_metadata(n)
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut users, mut requests, mut bin) = (100_000usize, None, PathBuf::from("target/release/claimsmith"));
    let mut source = "http".to_string();
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--users" => users = v.parse().expect("--users takes a number"),
            "--requests" => requests = Some(v.parse::<usize>().expect("--requests takes a number")),
            "--bin" => bin = PathBuf::from(v),
            "--source" if v == "http" || v == "file" => source = v,
            "--orgs" => ORGS.store(v.parse().expect("--orgs takes a number"), Relaxed),
            _ => panic!("unknown argument {a}"),
        }
    }
    let requests = requests.unwrap_or(users).min(users);
    claimsmith::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();

    let (key, pem) = claimsmith::keys::SigningKey::generate(Algorithm::ES256).unwrap();
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let kid = key.kid().to_string();
    let jwks_addr = serve_static(Arc::new(json!({"keys": [key.public_jwk()]}).to_string())).await;
    let upstream = serve_static(Arc::new("ok\n".into())).await;

    let metadata_section = if source == "file" {
        let mut u = Map::new();
        for i in 0..users {
            u.insert(format!("auth0|fill-{i:06}"), json!({"app_metadata": app_metadata(i)}));
        }
        let md =
            json!({"users": u, "clients": {CLIENT: {"client_metadata": {"tenant_key": "k-fill", "region": "eu"}}}});
        let md_path = dir.path().join("metadata.json");
        std::fs::write(&md_path, md.to_string()).unwrap();
        format!("kind = \"file\"\npath = \"{}\"", md_path.display())
    } else {
        let addr = serve_metadata().await;
        format!(
            "kind = \"http\"\nuser_url = \"http://{addr}/users/{{user_id}}\"\n\
             client_url = \"http://{addr}/clients/{{client_id}}\"\nmax_requests_per_second = 10000"
        )
    };
    let (_, signing_pem) = claimsmith::keys::SigningKey::generate(Algorithm::EdDSA).unwrap();
    let signing = dir.path().join("signing.pem");
    std::fs::write(&signing, signing_pem).unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let cfg = dir.path().join("claimsmith.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[listen]
addr = "127.0.0.1:{proxy_port}"
[admin]
addr = "127.0.0.1:{admin_port}"
[[issuer]]
issuer = "{ISSUER}"
audiences = ["{CLIENT}"]
jwks_uri = "http://{jwks_addr}/jwks.json"
algorithms = ["ES256"]
metadata = "local"
[metadata.local]
{metadata_section}
[cache]
max_entries = {cap}
[token]
issuer = "https://claimsmith.fill/"
algorithm = "EdDSA"
key_files = ["{signing}"]
copy_claims = ["email", "email_verified", "name"]
[[route]]
path_prefix = "/api/"
upstream = "http://{upstream}"
audience = "fill-api"
"#,
            signing = signing.display(),
            // Room for every user: users get 90% of max_entries, and the 16 shards of
            // each store fill unevenly, so leave 15% slack.
            cap = (users as u64 * 13 / 10 + 1000).max(100_000),
        ),
    )
    .unwrap();

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let child = Killed(child);
    let pid = child.0.id();
    let ready_url = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready_after = loop {
        let req = Request::get(&ready_url).body(Empty::new()).unwrap();
        if let Ok(r) = client.request(req).await
            && r.status() == 200
        {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "claimsmith not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let rss_ready = rss_kib(pid);
    let parts_ready = rss_parts(pid);
    println!("users in the {source} metadata source: {users} (in {} organisations)", ORGS.load(Relaxed));
    println!("start to ready: {:.1} ms (spawn to first 200 from /readyz)", ready_after.as_secs_f64() * 1e3);
    println!("VmRSS when ready: {:.1} MiB ({parts_ready})", rss_ready as f64 / 1024.0);

    // One request per user, each with its own token, 16 at a time.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let fill_start = Instant::now();
    let mut tasks = Vec::new();
    let encoding = Arc::new(encoding);
    for _ in 0..16 {
        let (next, failed, client, encoding, kid) =
            (next.clone(), failed.clone(), client.clone(), encoding.clone(), kid.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= requests {
                    break;
                }
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(kid.clone());
                let sub = format!("auth0|fill-{i:06}");
                let claims = json!({"iss": ISSUER, "sub": sub, "aud": CLIENT, "iat": now, "exp": now + 3600,
                                    "email": format!("fill-{i:06}@example.com"), "email_verified": true, "name": "Fill User"});
                let token = jsonwebtoken::encode(&h, &claims, &encoding).unwrap();
                let req = Request::get(format!("http://127.0.0.1:{proxy_port}/api/x"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::new())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                    }
                    _ => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.load(Relaxed);
    println!(
        "sent {requests} requests of distinct users in {:.1} s ({failed} failed)",
        fill_start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_full = rss_kib(pid);
    let metrics = {
        let req = Request::get(format!("http://127.0.0.1:{admin_port}/metrics")).body(Empty::new()).unwrap();
        let r = client.request(req).await.unwrap();
        String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
    };
    for l in metrics.lines().filter(|l| {
        l.starts_with("claimsmith_metadata_cache_")
            || l.starts_with("claimsmith_tokens_minted_total")
            || l.starts_with("claimsmith_token_cache_entries")
    }) {
        println!("  {l}");
    }
    println!(
        "VmRSS with {requests} users cached: {:.1} MiB ({:.0} bytes per user above the ready state; {})",
        rss_full as f64 / 1024.0,
        (rss_full.saturating_sub(rss_ready) * 1024) as f64 / requests.max(1) as f64,
        rss_parts(pid)
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
