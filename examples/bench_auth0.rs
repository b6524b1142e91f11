//! The Auth0 tenant of `benches/load.sh`'s burst set: the Management API mock the
//! integration tests run claimsmith against (tests/support/auth0.rs, included as it
//! is: the token endpoint with client credentials, users by id, the client list, the
//! bearer check, Auth0's error bodies and `x-ratelimit-*` headers), with what a real
//! tenant adds in front of every call, applied here in [`serve`]:
//!
//! - **latency**: every call is answered after `--latency-ms` (default 20 ms);
//! - **the rate limit**: at most `auth0::RATE_LIMIT` calls (the limit the mock
//!   announces in `x-ratelimit-limit`) in any second; past it, a 429 as Auth0 sends
//!   it (`x-ratelimit-remaining: 0`, `x-ratelimit-reset`, `Retry-After`).
//!
//! It holds `--users` users (`auth0|bench-000000` ..., the ids of
//! examples/bench_tokens.rs, with the same app_metadata as its metadata.json) and
//! the client `--client`. Every second it writes `--stats-file`: calls answered, 429s
//! sent, and the most calls answered in one second.
//!
//! ```text
//! bench_auth0 --port 18104 --users 31000 [--client bench-client] [--latency-ms 20]
//!     [--stats-file auth0-stats.json]
//! ```
//! It serves until it is killed.

#![allow(dead_code)]

#[path = "../tests/support/auth0.rs"]
mod auth0;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Where [`serve`] listens and how it answers (set once from the command line).
struct Tenant {
    port: u16,
    latency: Duration,
    /// When each call of the last second arrived.
    recent: Mutex<VecDeque<Instant>>,
    answered: AtomicU64,
    limited: AtomicU64,
    /// Calls answered per whole second since start.
    per_second: Mutex<Vec<u64>>,
    started: Instant,
}

static TENANT: OnceLock<Tenant> = OnceLock::new();

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut users, mut client, mut latency_ms, mut stats) =
        (0u16, 1000usize, "bench-client".to_string(), 20u64, None::<String>);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--port" => port = val().parse().unwrap_or_else(|_| usage("--port takes a number")),
            "--users" => users = val().parse().unwrap_or_else(|_| usage("--users takes a number")),
            "--client" => client = val(),
            "--latency-ms" => latency_ms = val().parse().unwrap_or_else(|_| usage("--latency-ms takes a number")),
            "--stats-file" => stats = Some(val()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let tenant = Tenant {
        port,
        latency: Duration::from_millis(latency_ms),
        recent: Mutex::new(VecDeque::new()),
        answered: AtomicU64::new(0),
        limited: AtomicU64::new(0),
        per_second: Mutex::new(Vec::new()),
        started: Instant::now(),
    };
    assert!(TENANT.set(tenant).is_ok(), "set once");
    let mock = auth0::Auth0Mock::start().await;
    for i in 0..users {
        let id = format!("auth0|bench-{i:06}");
        mock.add_user(&id, json!({"roles": ["reader"], "plan": "pro", "org_id": format!("org-{}", i % 97)}));
    }
    mock.add_client(&client, json!({"tenant_key": "k-bench-tenant", "region": "eu"}));
    eprintln!("bench_auth0: {} with {users} users, client {client}, {latency_ms} ms a call", mock.url());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(path) = &stats {
            let t = TENANT.get().expect("set");
            let max = t.per_second.lock().unwrap().iter().copied().max().unwrap_or(0);
            let s = json!({"answered": t.answered.load(Relaxed), "rate_limited": t.limited.load(Relaxed),
                           "max_per_second": max, "limit_per_second": auth0::RATE_LIMIT,
                           "calls": mock.summary()});
            // Whole or not at all: the load script may read it at any moment.
            let tmp = format!("{path}.tmp");
            if std::fs::write(&tmp, s.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "bench_auth0: {msg}\nusage: bench_auth0 --port P --users N [--client ID] [--latency-ms 20] [--stats-file F]"
    );
    std::process::exit(2)
}

/// Serves the mock's `handler` on 127.0.0.1:`--port`, each call delayed and counted
/// against the tenant's rate limit first (tests/support/mod.rs serves it as it is).
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let t = TENANT.get().expect("the tenant is set before the mock starts");
    let listener = TcpListener::bind(("127.0.0.1", t.port)).await.expect("bind the tenant's port");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(call(h, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn call<F, Fut>(handler: F, req: Request<Incoming>) -> Response<Full<Bytes>>
where
    F: Fn(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Response<Full<Bytes>>>,
{
    let t = TENANT.get().expect("set");
    let now = Instant::now();
    let over = {
        let mut recent = t.recent.lock().unwrap();
        while recent.front().is_some_and(|&at| now.duration_since(at) >= Duration::from_secs(1)) {
            recent.pop_front();
        }
        let over = recent.len() as u64 >= auth0::RATE_LIMIT;
        if !over {
            recent.push_back(now);
        }
        over
    };
    tokio::time::sleep(t.latency).await;
    if over {
        t.limited.fetch_add(1, Relaxed);
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"statusCode": 429, "error": "Too Many Requests", "message": "Global limit has been reached",
                    "errorCode": "too_many_requests"}),
        );
        let h = r.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(auth0::RATE_LIMIT));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from(now_secs() + 1));
        h.insert("retry-after", HeaderValue::from_static("1"));
        return r;
    }
    let resp = handler(req).await;
    t.answered.fetch_add(1, Relaxed);
    let second = t.started.elapsed().as_secs() as usize;
    let mut per = t.per_second.lock().unwrap();
    if per.len() <= second {
        per.resize(second + 1, 0);
    }
    per[second] += 1;
    resp
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

// What auth0.rs takes from the tests' harness (tests/support/mod.rs).

pub const CLIENT_1: &str = "client-1";
pub const CLIENT_2: &str = "client-2";

pub fn now() -> u64 {
    now_secs()
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// auth0.rs's `start_harness` starts claimsmith in-process for the tests; this program
// never calls it (load.sh runs the release binary), so the harness types it names are
// stand-ins that only let it compile.

pub struct Harness;
pub struct Issuer;
pub struct Upstream;

impl Harness {
    pub async fn start_parts_with_files(_: Issuer, _: Upstream, _: &str, _: Value, _: &[(&str, &str)]) -> Harness {
        unreachable!("the tests' harness is not part of this program")
    }
    pub fn add_secret(&self, _: &str) {}
    pub fn admin_url(&self, _: &str) -> String {
        unreachable!("the tests' harness is not part of this program")
    }
}

impl Issuer {
    pub async fn start() -> Issuer {
        Issuer
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream
    }
}
