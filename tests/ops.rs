//! Production operations with the real binary: SIGTERM drains, SIGHUP reloads (and
//! keeps the old config when the new one is broken), a ConfigMap-style symlink swap
//! reloads without a signal, and the logs
//! of a full run hold one access line per request and never a token, secret or
//! metadata value.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::*;

/// Generous bound for anything that waits on the process (not a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

/// The claimsmith binary, running with a config in a temp dir.
struct Proc {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proc {
    /// Starts `claimsmith <args>` with `env`, reads its JSON logs, waits for readiness.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_claimsmith"));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env_remove("RUST_LOG").env_remove("CLAIMSMITH_LOG_FORMAT").env_remove("CLAIMSMITH_CONFIG");
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
        let listening = wait_for(&logs, "claimsmith listening").await;
        let v: Value = serde_json::from_str(&listening).expect("the start line is not JSON");
        let proxy = v["proxy_addr"].as_str().unwrap().parse().unwrap();
        let admin = v["admin_addr"].as_str().unwrap().parse().unwrap();
        let p = Proc { child, logs, proxy, admin, client: Client::builder(TokioExecutor::new()).build_http() };
        let deadline = tokio::time::Instant::now() + WAIT;
        while p.get_admin("/readyz").await.0 != StatusCode::OK {
            assert!(tokio::time::Instant::now() < deadline, "never ready; logs:\n{}", p.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success());
    }

    fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(format!("http://{}{}", self.proxy, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.send(req.body(Full::new(Bytes::new())).unwrap()).await
    }

    async fn get_admin(&self, path: &str) -> (StatusCode, String) {
        self.send(Request::get(format!("http://{}{}", self.admin, path)).body(Full::new(Bytes::new())).unwrap()).await
    }

    /// Sends `req`; the answer passes the leak audit (the request's own token, every
    /// metadata value these tests use) before it is returned.
    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let mut secrets = default_secrets();
        secrets.extend(NOTES.lock().unwrap().iter().cloned());
        if let Some(t) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
            secrets.push(t.trim_start_matches("Bearer ").to_string());
        }
        let resp = self.client.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        assert_no_leak(parts.status, &parts.headers, &body, &secrets);
        (parts.status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits for the process to exit and returns its exit code.
    async fn wait_exit(&mut self) -> i32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().expect("killed by a signal");
            }
            assert!(tokio::time::Instant::now() < deadline, "did not exit; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Writes the default config (with `extra` appended to `[admin]`'s neighbours) into `dir`.
fn write_config(
    dir: &Path,
    issuer: &Issuer,
    upstream: &str,
    metadata: &Path,
    tweak: impl Fn(String) -> String,
) -> PathBuf {
    let toml = DEFAULT_TOML
        .replace("{issuer}", &issuer.url)
        .replace("{upstream}", upstream)
        .replace("{metadata}", &metadata.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let path = dir.join("claimsmith.toml");
    std::fs::write(&path, tweak(toml)).unwrap();
    path
}

/// The claims of an internal token (decoded only; verification is tested elsewhere).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Every metadata note written by these tests: secrets for the leak audit.
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn metadata_with_note(note: &str) -> Value {
    NOTES.lock().unwrap().push(note.to_string());
    let mut m = default_metadata();
    m["users"][USER_1]["app_metadata"]["note"] = json!(note);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    sigterm_drains(&[]).await;
}

/// With one worker thread the binary runs tokio's single-threaded scheduler: the same
/// serving, draining and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_on_the_single_threaded_runtime_too() {
    sigterm_drains(&[("TOKIO_WORKER_THREADS", "1")]).await;
}

async fn sigterm_drains(env: &[(&str, &str)]) {
    init();
    let issuer = Issuer::start().await;
    // An upstream that holds every request until the test releases it.
    let release = Arc::new(tokio::sync::Notify::new());
    let released = Arc::new(AtomicBool::new(false));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let upstream = serve({
        let (release, released, arrived) = (release.clone(), released.clone(), arrived.clone());
        move |_req| {
            let (release, released, arrived) = (release.clone(), released.clone(), arrived.clone());
            async move {
                arrived.notify_one();
                let wait = release.notified();
                if !released.load(SeqCst) {
                    wait.await;
                }
                json_response(StatusCode::OK, &json!({"upstream": "slow"}))
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, default_metadata().to_string()).unwrap();
    let cfg = write_config(dir.path(), &issuer, &format!("http://{upstream}"), &md, |t| t);
    let mut p = Proc::start(&["--log-format", "json", "run", "--config", cfg.to_str().unwrap()], env).await;

    let token = issuer.token(USER_1);
    let url = format!("http://{}/api/slow", p.proxy);
    let client = p.client.clone();
    let in_flight = tokio::spawn(async move {
        let req = Request::get(url).header("authorization", format!("Bearer {token}"));
        let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.expect("in-flight request failed");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    tokio::time::timeout(WAIT, arrived.notified()).await.expect("the request never reached the upstream");

    p.signal("TERM");
    // Readiness turns 503 while the request is still held upstream.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = p.get_admin("/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No new connections on the proxy listener.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(p.proxy).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the proxy listener stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.child.try_wait().unwrap().is_none(), "exited before the request finished");

    released.store(true, SeqCst);
    release.notify_waiters();
    let (status, body) = tokio::time::timeout(WAIT, in_flight).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["upstream"], "slow");
    assert_eq!(p.wait_exit().await, 0, "logs:\n{}", p.log_text());
    assert!(p.log_text().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_config_and_file_metadata() {
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md1 = dir.path().join("metadata.json");
    std::fs::write(&md1, metadata_with_note("note-before-reload").to_string()).unwrap();
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &md1, |t| t);
    // The log format from the environment this time.
    let p =
        // Signals only: the file watch would reload on the edits below by itself.
        Proc::start(&["run"], &[("CLAIMSMITH_CONFIG", cfg.to_str().unwrap()), ("CLAIMSMITH_LOG_FORMAT", "json"), ("CLAIMSMITH_NO_WATCH", "true")]).await;

    let token = issuer.token(USER_1);
    let (status, _) = p.get("/api/a", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let internal = upstream.last().headers["x-internal-token"].to_str().unwrap().to_string();
    assert_eq!(claims_of(&internal)["app_metadata"]["note"], "note-before-reload");

    // A new metadata file that only a config reload can find (the file watcher looks
    // at the old path), and a new route.
    let md2 = dir.path().join("metadata-v2.json");
    std::fs::write(&md2, metadata_with_note("note-after-reload").to_string()).unwrap();
    write_config(dir.path(), &issuer, &upstream.url(), &md2, |t| {
        t + &format!("\n[[route]]\npath_prefix = \"/v2/\"\nupstream = \"{}\"\naudience = \"v2-api\"\n", upstream.url())
    });
    assert_eq!(p.get("/v2/x", Some(&token)).await.0, StatusCode::NOT_FOUND);
    p.signal("HUP");
    wait_for(&p.logs, "configuration reloaded").await;

    let (status, body) = p.get("/api/b", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let internal = upstream.last().headers["x-internal-token"].to_str().unwrap().to_string();
    assert_eq!(claims_of(&internal)["app_metadata"]["note"], "note-after-reload");
    let (status, _) = p.get("/v2/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims_of(upstream.last().headers["x-internal-token"].to_str().unwrap())["aud"], "v2-api");

    let (_, metrics) = p.get_admin("/metrics").await;
    assert!(metrics.contains("claimsmith_config_reloads_total{result=\"ok\"} 1"), "{metrics}");
    // Counters survive the reload: both /api/ requests are counted.
    assert!(metrics.contains("claimsmith_requests_total{route=\"/api/\",status=\"200\"} 2"), "{metrics}");
    assert_eq!(p.get_admin("/readyz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_serving_the_old_one() {
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, metadata_with_note("note-kept").to_string()).unwrap();
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &md, |t| t);
    let mut p =
        Proc::start(&["run", "--no-watch", "--config", cfg.to_str().unwrap(), "--log-format", "json"], &[]).await;
    let token = issuer.token(USER_1);
    assert_eq!(p.get("/api/a", Some(&token)).await.0, StatusCode::OK);

    // A typo'd key: the new config is invalid.
    write_config(dir.path(), &issuer, &upstream.url(), &md, |t| t.replace("[token]", "[tokne]"));
    p.signal("HUP");
    let line = wait_for(&p.logs, "reload failed").await;
    assert!(line.contains("invalid configuration"), "{line}");
    assert!(line.contains("tokne"), "the log names the bad key: {line}");

    // Not TOML at all.
    std::fs::write(&cfg, "this is [not toml").unwrap();
    p.signal("HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.logs.lock().unwrap().iter().filter(|l| l.contains("reload failed")).count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "second reload not logged:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(p.child.try_wait().unwrap().is_none(), "the process died");
    let (status, body) = p.get("/api/b", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims_of(upstream.last().headers["x-internal-token"].to_str().unwrap())["app_metadata"]["note"],
        "note-kept"
    );
    assert_eq!(p.get_admin("/readyz").await.0, StatusCode::OK);
    let (_, metrics) = p.get_admin("/metrics").await;
    assert!(metrics.contains("claimsmith_config_reloads_total{result=\"failed\"} 2"), "{metrics}");
    p.signal("TERM");
    assert_eq!(p.wait_exit().await, 0);
}

/// Kubernetes mounts a ConfigMap as `FILE -> ..data/FILE` with `..data` a symlink to a
/// timestamped directory, and updates it by writing a new directory and renaming a
/// new symlink over `..data`. No signal is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_reloads_without_a_signal() {
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, metadata_with_note("note-watch").to_string()).unwrap();
    let mount = dir.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    let version = |n: u32, tweak: &dyn Fn(String) -> String| {
        let v = mount.join(format!("..2026_11_30_{n}"));
        std::fs::create_dir(&v).unwrap();
        write_config(&v, &issuer, &upstream.url(), &md, tweak);
        // The atomic swap: a new symlink renamed over `..data`.
        let tmp = mount.join("..data_tmp");
        std::os::unix::fs::symlink(v.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, mount.join("..data")).unwrap();
    };
    version(1, &|t| t);
    std::os::unix::fs::symlink("..data/claimsmith.toml", mount.join("claimsmith.toml")).unwrap();
    let cfg = mount.join("claimsmith.toml");
    let p = Proc::start(&["run", "--config", cfg.to_str().unwrap(), "--log-format", "json"], &[]).await;
    let token = issuer.token(USER_1);
    assert_eq!(p.get("/v2/x", Some(&token)).await.0, StatusCode::NOT_FOUND);

    let extra_route =
        format!("\n[[route]]\npath_prefix = \"/v2/\"\nupstream = \"{}\"\naudience = \"v2-api\"\n", upstream.url());
    version(2, &|t| t + &extra_route);
    let swapped = tokio::time::Instant::now();
    // Picked up within about a second (two looks 500 ms apart); the bound here is
    // only how long the test waits.
    while p.get("/v2/x", Some(&token)).await.0 != StatusCode::OK {
        assert!(swapped.elapsed() < WAIT, "the swap was never picked up:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("symlink swap picked up after {:?}", swapped.elapsed());
    assert!(p.log_text().contains("a file of the configuration changed"), "{}", p.log_text());
    assert_eq!(claims_of(upstream.last().headers["x-internal-token"].to_str().unwrap())["aud"], "v2-api");

    // A broken version is refused and the running one kept, once (not retried on
    // every look).
    version(3, &|t| t.replace("[token]", "[tokne]"));
    wait_for(&p.logs, "reload failed").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.logs.lock().unwrap().iter().filter(|l| l.contains("reload failed")).count(), 1);
    assert_eq!(p.get("/v2/x", Some(&token)).await.0, StatusCode::OK);
    let (_, metrics) = p.get_admin("/metrics").await;
    assert!(metrics.contains("claimsmith_config_reloads_total{result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("claimsmith_config_reloads_total{result=\"failed\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_one_access_line_per_request_and_no_secret() {
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    let metadata = default_metadata();
    std::fs::write(&md, metadata.to_string()).unwrap();
    let (_, key_pem) = claimsmith::keys::SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
    let key_path = dir.path().join("signing.pem");
    std::fs::write(&key_path, &key_pem).unwrap();
    let admin_secret = "admin-secret-4f1c9a7e2b";
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &md, |t| {
        t.replace("[admin]\naddr = \"127.0.0.1:0\"", "[admin]\naddr = \"127.0.0.1:0\"\ntoken_env = \"OPS_ADMIN_TOKEN\"")
            .replace(
                "algorithm = \"EdDSA\"",
                &format!("algorithm = \"EdDSA\"\nkey_files = [\"{}\"]", key_path.display()),
            )
    });
    // --log-format after the subcommand; debug everywhere.
    let mut p = Proc::start(
        &["run", "--config", cfg.to_str().unwrap(), "--log-format", "json"],
        &[("RUST_LOG", "debug"), ("OPS_ADMIN_TOKEN", admin_secret)],
    )
    .await;

    let valid_1 = issuer.token(USER_1);
    let valid_2 = issuer.token_es256(USER_2);
    let unknown = issuer.token("auth0|nobody");
    let mut forged_claims = issuer.claims(USER_1);
    forged_claims["aud"] = json!("someone-else");
    let wrong_aud = issuer.sign(&issuer.rsa, &forged_claims);
    let tampered = format!("{}x", &valid_1[..valid_1.len() - 1]);
    let requests: Vec<(&str, Option<&str>, StatusCode)> = vec![
        ("/api/one?q=1", Some(&valid_1), StatusCode::OK),
        ("/api/two", Some(&valid_1), StatusCode::OK),
        ("/api/three", Some(&valid_2), StatusCode::OK),
        ("/api/unknown-user", Some(&unknown), StatusCode::UNAUTHORIZED),
        ("/api/wrong-aud", Some(&wrong_aud), StatusCode::UNAUTHORIZED),
        ("/api/tampered", Some(&tampered), StatusCode::UNAUTHORIZED),
        ("/api/none", None, StatusCode::UNAUTHORIZED),
        ("/public/open", None, StatusCode::OK),
        ("/nowhere", Some(&valid_1), StatusCode::NOT_FOUND),
    ];
    for (path, token, want) in &requests {
        let (status, body) = p.get(path, *token).await;
        assert_eq!(status, *want, "{path}: {body}");
    }
    // Admin traffic (not access-logged), with the admin secret.
    let req = Request::delete(format!("http://{}/cache/users/{}", p.admin, USER_1))
        .header("authorization", format!("Bearer {admin_secret}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(p.send(req).await.0, StatusCode::NO_CONTENT);
    let (_, metrics) = p.get_admin("/metrics").await;
    p.signal("TERM");
    assert_eq!(p.wait_exit().await, 0);
    let logs = p.logs.lock().unwrap().clone();

    // One JSON object per line.
    let parsed: Vec<Value> =
        logs.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"))).collect();
    let access: Vec<&Value> = parsed.iter().filter(|v| v["target"] == "claimsmith::access").collect();
    assert_eq!(access.len(), requests.len(), "one access line per request:\n{}", logs.join("\n"));
    for (line, (_, _, want)) in access.iter().zip(&requests) {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["status"], want.as_u16());
        assert!(line["route"].is_string() && line["duration_ms"].is_number(), "{line}");
    }
    assert_eq!(access[0]["route"], "/api/");
    assert_eq!(access[0]["cache"], "miss");
    assert_eq!(access[1]["cache"], "hit");
    assert!(access[0]["upstream_ms"].is_number());
    assert!(access[6]["upstream_ms"].is_null() && access[6]["cache"].is_null());
    assert_eq!(access[8]["route"], "none");

    // Nothing secret in any line: ID tokens (whole and their payload and signature),
    // internal tokens, the admin secret, the signing key, metadata values.
    let mut forbidden: Vec<String> = vec![admin_secret.to_string()];
    for t in [&valid_1, &valid_2, &unknown, &wrong_aud, &tampered] {
        forbidden.push(t.to_string());
        forbidden.extend(t.split('.').skip(1).map(str::to_string));
    }
    for seen in upstream.requests() {
        if let Some(t) = seen.headers.get("x-internal-token") {
            let t = t.to_str().unwrap().to_string();
            forbidden.extend(t.split('.').skip(1).map(str::to_string));
            forbidden.push(t);
        }
    }
    assert!(forbidden.len() > 15);
    forbidden.extend(key_pem.lines().filter(|l| !l.starts_with("-----")).map(str::to_string));
    forbidden.extend([TENANT_KEY.to_string(), USER_NOTE.to_string()]);
    for (_, user) in metadata["users"].as_object().unwrap() {
        collect(&user["app_metadata"], &mut forbidden);
    }
    for (_, client) in metadata["clients"].as_object().unwrap() {
        collect(&client["client_metadata"], &mut forbidden);
    }
    let all = logs.join("\n");
    for f in forbidden.iter().filter(|f| f.len() >= 6) {
        assert!(!all.contains(f.as_str()), "LEAK: the logs contain a secret value ({} chars)", f.len());
    }
    assert!(!metrics.contains(admin_secret) && !metrics.contains(TENANT_KEY));
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// Waits until the file at `path` holds `needle`; returns the whole text.
async fn wait_in_file(path: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {needle:?} in {}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `text` without terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=` in a text log line, or of `name` in a JSON one.
fn log_field(line: &str, name: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return v[name].as_str().map(str::to_string);
    }
    let line = strip_ansi(line);
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    // Strings are written quoted (Debug), addresses as they are (Display).
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"').to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_have_no_colours_and_give_each_request_its_id() {
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, default_metadata().to_string()).unwrap();
    // Tracing on (nothing exported): the access log carries the trace id.
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &md, |t| t + "\n[telemetry]\n");
    let token = issuer.token(USER_1);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    for format in ["text", "json"] {
        let log = dir.path().join(format!("stderr-{format}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_claimsmith"))
            .args(["run", "--config", cfg.to_str().unwrap(), "--log-format", format])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env_remove("RUST_LOG")
            .env_remove("CLAIMSMITH_LOG_FORMAT")
            .env_remove("CLAIMSMITH_CONFIG")
            .spawn()
            .unwrap();
        let text = wait_in_file(&log, "claimsmith listening").await;
        let listening = text.lines().find(|l| l.contains("claimsmith listening")).unwrap();
        let proxy: SocketAddr = log_field(listening, "proxy_addr").expect(listening).parse().unwrap();
        let admin: SocketAddr = log_field(listening, "admin_addr").expect(listening).parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let req = Request::get(format!("http://{admin}/readyz")).body(Full::new(Bytes::new())).unwrap();
            if client.request(req).await.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // One request with the client's own id, one with an id claimsmith makes.
        let given = format!("ops-request-{format}-0042");
        let mut ids = Vec::new();
        for id in [Some(given.as_str()), None] {
            let mut req =
                Request::get(format!("http://{proxy}/api/id")).header("authorization", format!("Bearer {token}"));
            if let Some(id) = id {
                req =
                    req.header("x-request-id", id).header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"));
            }
            let (parts, body) = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap().into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let mut secrets = default_secrets();
            secrets.push(token.clone());
            assert_no_leak(parts.status, &parts.headers, &body, &secrets);
            assert_eq!(parts.status, StatusCode::OK);
            let answered = parts.headers["x-request-id"].to_str().unwrap().to_string();
            if let Some(id) = id {
                assert_eq!(answered, id);
            }
            ids.push(answered);
        }
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = tokio::time::Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let bytes = std::fs::read(&log).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !bytes.windows(2).any(|w| w == b"\x1b["),
            "colour codes in a log written to a file ({format}):\n{text}"
        );
        let access: Vec<&str> = text
            .lines()
            .filter(|l| match format {
                "json" => serde_json::from_str::<Value>(l).is_ok_and(|v| v["target"] == "claimsmith::access"),
                _ => l.contains("claimsmith::access"),
            })
            .collect();
        assert_eq!(access.len(), 2, "{text}");
        for (line, id) in access.iter().zip(&ids) {
            assert_eq!(log_field(line, "request_id").as_deref(), Some(id.as_str()), "{line}");
            let trace_id = log_field(line, "trace_id").unwrap_or_else(|| panic!("no trace id: {line}"));
            assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        }
        // The caller's trace is continued; the other request started its own.
        assert_eq!(log_field(access[0], "trace_id").as_deref(), Some(TRACE_ID));
        assert_ne!(log_field(access[1], "trace_id").as_deref(), Some(TRACE_ID));
    }
}

/// `[token.static_claims]` and `[token.secret_claims]` with the real binary: both reach
/// every internal token; a reload whose secret is missing (file gone, variable
/// renamed) fails and keeps the old config, secret included; the secret values never
/// appear in the logs (debug everywhere), an error message or a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_claims_reach_tokens_survive_a_failed_reload_and_never_the_logs() {
    const ENV_SECRET: &str = "env-secret-claim-5b7d2e91";
    const FILE_SECRET: &str = "file-secret-claim-c04a8f3d";
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, default_metadata().to_string()).unwrap();
    let key_file = dir.path().join("system.key");
    std::fs::write(&key_file, format!("{FILE_SECRET}\n")).unwrap();
    let with_claims = |env_name: &'static str| {
        let key_file = key_file.clone();
        move |t: String| {
            format!(
                "{t}\n[token.static_claims]\ndeployment = \"eu-prod\"\nlimits = {{ rps = 10 }}\n\
                 [token.secret_claims]\nsystem_key = {{ env = \"{env_name}\" }}\nfile_key = {{ file = {:?} }}\n",
                key_file.display().to_string()
            )
        }
    };
    // The tables go after everything else, so `[[route]]` tables stay where they were.
    let cfg = write_config(dir.path(), &issuer, &upstream.url(), &md, with_claims("OPS_SYSTEM_KEY"));
    // Signals only: each reload below is one this test asks for.
    let mut p = Proc::start(
        &["run", "--no-watch", "--config", cfg.to_str().unwrap(), "--log-format", "json"],
        &[("RUST_LOG", "debug"), ("OPS_SYSTEM_KEY", ENV_SECRET)],
    )
    .await;
    let token = issuer.token(USER_1);
    let claims_now = || claims_of(upstream.last().headers["x-internal-token"].to_str().unwrap());
    assert_eq!(p.get("/api/a", Some(&token)).await.0, StatusCode::OK);
    let c = claims_now();
    assert_eq!(c["deployment"], "eu-prod");
    assert_eq!(c["limits"], json!({"rps": 10}));
    assert_eq!(c["system_key"], ENV_SECRET);
    assert_eq!(c["file_key"], FILE_SECRET, "one trailing newline is not part of the value");
    assert_eq!(c["sub"], USER_1);

    // The file is gone: the reload fails, naming the key, and the old config serves.
    std::fs::remove_file(&key_file).unwrap();
    p.signal("HUP");
    let line = wait_for(&p.logs, "reload failed").await;
    assert!(line.contains("token.secret_claims.file_key"), "the log names the key: {line}");
    // A variable that is not set: the same.
    write_config(dir.path(), &issuer, &upstream.url(), &md, with_claims("OPS_UNSET_KEY"));
    std::fs::write(&key_file, format!("{FILE_SECRET}\n")).unwrap();
    p.signal("HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.logs.lock().unwrap().iter().filter(|l| l.contains("reload failed")).count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "second reload not logged:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.log_text().contains("token.secret_claims.system_key"), "{}", p.log_text());
    // A new token (the old one could be reused) still carries the old secrets.
    let fresh = issuer.token(USER_2);
    assert_eq!(p.get("/api/b", Some(&fresh)).await.0, StatusCode::OK);
    let c = claims_now();
    assert_eq!((c["system_key"].as_str(), c["file_key"].as_str()), (Some(ENV_SECRET), Some(FILE_SECRET)));
    let (_, metrics) = p.get_admin("/metrics").await;
    assert!(metrics.contains("claimsmith_config_reloads_total{result=\"failed\"} 2"), "{metrics}");
    p.signal("TERM");
    assert_eq!(p.wait_exit().await, 0);

    let all = p.log_text();
    assert!(all.contains("claimsmith::access"), "the logs were captured:\n{all}");
    for secret in [ENV_SECRET, FILE_SECRET] {
        assert!(!all.contains(secret), "LEAK: the logs contain a secret claim's value");
        assert!(!metrics.contains(secret));
    }
}
