//! Several claimsmith processes (the real binary, `claimsmith run`) in front of one
//! Auth0 tenant on loopback, sharing one Redis: the deployment `[shared]` is for.
//! Each replica has its own listeners, cache and Redis connections; they share the
//! issuer, the upstream, the tenant and Redis, nothing else.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::auth0::{ADMIN_TOKEN, Auth0Mock, M2M_CLIENT_SECRET, TenantOpts, WEBHOOK_TOKEN, template};
use super::{Issuer, Upstream};

/// A 32-byte shared-cache key, base64 (as `claimsmith keygen --shared` writes).
pub const SHARED_KEY: &str = "Y2xhaW1zbWl0aC1zaGFyZWQta2V5LWZvci10ZXN0cyE=";

/// One `claimsmith run` process.
pub struct Replica {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replicas, their tenant and their upstream.
pub struct Fleet {
    pub issuer: Issuer,
    pub upstream: Upstream,
    pub replicas: Vec<Replica>,
    pub dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}

/// An answer: status, body, time taken.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub took: Duration,
}

impl Fleet {
    /// `n` replicas of the auth0 template with `o`, each with `[shared]` pointing at
    /// `redis_url` (none when `None`), `shared_extra` appended to that table.
    pub async fn start(
        mock: &Auth0Mock,
        o: &TenantOpts,
        n: usize,
        redis_url: Option<&str>,
        shared_extra: &str,
    ) -> Fleet {
        super::init();
        let issuer = Issuer::start().await;
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, content: &str| std::fs::write(dir.path().join(name), content).expect("write");
        write("auth0-secret", M2M_CLIENT_SECRET);
        write("admin-token", ADMIN_TOKEN);
        write("webhook-token", WEBHOOK_TOKEN);
        write("shared.key", &format!("{SHARED_KEY}\n"));
        if let Some(u) = redis_url {
            write("redis-url", u);
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut fleet = Fleet { issuer, upstream, replicas: Vec::new(), dir, client };
        for _ in 0..n {
            fleet.add(mock, o, redis_url, shared_extra).await;
        }
        fleet
    }

    /// One more replica, configured with `o` (which may differ from the others':
    /// a fleet in the middle of a configuration change); returns its index.
    pub async fn add(
        &mut self,
        mock: &Auth0Mock,
        o: &TenantOpts,
        redis_url: Option<&str>,
        shared_extra: &str,
    ) -> usize {
        let base = template(mock, o)
            .replace("{issuer}", &self.issuer.url)
            .replace("{upstream}", &self.upstream.url())
            .replace("{dir}", &self.dir.path().display().to_string());
        let i = self.replicas.len();
        // A free port can be taken by another test between our look and the
        // replica's bind: then the replica exits at once, and gets new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let replica = self.spawn(i, &base, redis_url.is_some(), shared_extra);
            self.replicas.push(replica);
            if self.wait_ready(i).await {
                return i;
            }
            let log = self.log(i);
            let lost_port = log.contains("Address already in use");
            self.replicas.pop();
            assert!(lost_port && attempt < 5, "replica {i} not ready:\n{log}");
        }
    }

    fn spawn(&self, i: usize, base: &str, shared: bool, shared_extra: &str) -> Replica {
        let dir = self.dir.path();
        let (proxy, admin) = (free_port(), free_port());
        let mut toml = base.replacen("addr = \"127.0.0.1:0\"", &format!("addr = \"{proxy}\""), 1).replacen(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"{admin}\""),
            1,
        );
        if shared {
            toml.push_str(&format!(
                "\n[shared]\nurl_file = \"{d}/redis-url\"\nkey_files = [\"{d}/shared.key\"]\n{shared_extra}\n",
                d = dir.display()
            ));
        }
        let config = dir.join(format!("replica-{i}.toml"));
        std::fs::write(&config, toml).expect("write config");
        let log = dir.join(format!("replica-{i}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_claimsmith"))
            .args(["--log-format", "text", "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start claimsmith");
        Replica { child, proxy, admin, log }
    }

    /// Whether replica `i` became ready (false: it exited, or 15 s passed).
    async fn wait_ready(&mut self, i: usize) -> bool {
        let give_up = Instant::now() + Duration::from_secs(15);
        loop {
            if self.admin_get(i, "/readyz").await.is_some_and(|a| a.status == StatusCode::OK) {
                return true;
            }
            if Instant::now() >= give_up || self.replicas[i].child.try_wait().ok().flatten().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until replica `i` reports `claimsmith_shared_up` as `up`.
    pub async fn wait_shared(&self, i: usize, up: bool, within: Duration) {
        let give_up = Instant::now() + within;
        loop {
            if self.metric(i, "claimsmith_shared_up").await == Some(f64::from(u8::from(up))) {
                return;
            }
            assert!(Instant::now() < give_up, "replica {i}: claimsmith_shared_up never {up}:\n{}", self.log(i));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Replica `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Option<Answer> {
        let t0 = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await.ok()?.ok()?;
        let status = resp.status();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Answer { status, body, took: t0.elapsed() })
    }

    /// `GET path` on replica `i` with `token` as the bearer token.
    pub async fn get(&self, i: usize, path: &str, token: &str) -> Answer {
        let req = Request::get(format!("http://{}{path}", self.replicas[i].proxy))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await.unwrap_or_else(|| panic!("replica {i} did not answer:\n{}", self.log(i)))
    }

    /// Replica `i`'s admin listener, as `http://ADDR`.
    pub fn admin_url(&self, i: usize) -> String {
        format!("http://{}", self.replicas[i].admin)
    }

    pub async fn admin_get(&self, i: usize, path: &str) -> Option<Answer> {
        let req = Request::get(format!("http://{}{path}", self.replicas[i].admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await
    }

    /// `DELETE path` on replica `i`'s admin listener, with the admin token.
    pub async fn admin_delete(&self, i: usize, path: &str) -> StatusCode {
        let req = Request::builder()
            .method(Method::DELETE)
            .uri(format!("http://{}{path}", self.replicas[i].admin))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await.map_or(StatusCode::BAD_GATEWAY, |a| a.status)
    }

    /// The value of an unlabelled metric on replica `i`.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = String::from_utf8(self.admin_get(i, "/metrics").await?.body.to_vec()).ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The `app_metadata` claim of the internal token of the upstream's last request.
    pub fn last_app_metadata(&self) -> serde_json::Value {
        use base64::Engine;
        let seen = self.upstream.last();
        let token = seen
            .headers
            .get("x-internal-token")
            .and_then(|v| v.to_str().ok())
            .expect("an internal token reached the upstream");
        let payload = token.split('.').nth(1).expect("a JWT");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
        claims["app_metadata"].clone()
    }
}

/// The nearest-rank percentile of `samples` (sorted here).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
