//! A reload keeps cached metadata of an unchanged remote source, so SIGHUP does not
//! send a burst of reads to a rate-limited tenant, and drops it when the source
//! changed. An edited metadata file is served from the next request on, whether a
//! reload (SIGHUP) or the file watch picked the edit up (docs/operations.md, "Reload"),
//! even while other requests keep reading the old content around the swap.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test]
async fn reload_keeps_entries_of_an_unchanged_remote_source() {
    init();
    let user_reads = Arc::new(AtomicUsize::new(0));
    let md = serve({
        let u = user_reads.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            let users = req.uri().path().starts_with("/users/");
            if users {
                u.fetch_add(1, SeqCst);
            }
            async move { json_response(StatusCode::OK, &json!({"roles": ["admin"]})) }
        }
    })
    .await;
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claimsmith.toml");
    let write = |suffix: &str| {
        let toml = HTTP_SOURCE_TOML
            .replace("{issuer}", &issuer.url)
            .replace("{upstream}", &upstream.url())
            .replace("{md}", &md.to_string())
            .replace("{suffix}", suffix);
        std::fs::write(&path, toml).unwrap();
    };
    write("");
    let running = claimsmith::start(claimsmith::load_config(&path).unwrap()).await.unwrap();
    assert!(running.wait_ready(std::time::Duration::from_secs(10)).await);
    let token = issuer.token(USER_1);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    // Every answer passes the leak audit: the token it carried never comes back.
    let get = || async {
        let req = http::Request::get(format!("http://{}/api/x", running.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let (parts, body) = client.request(req).await.unwrap().into_parts();
        let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        assert_no_leak(parts.status, &parts.headers, &body, std::slice::from_ref(&token));
        parts.status
    };
    assert_eq!(get().await, StatusCode::OK);
    assert_eq!(user_reads.load(SeqCst), 1);

    // Same source: the cached user survives the reload.
    running.reload().await.unwrap();
    assert_eq!(get().await, StatusCode::OK);
    assert_eq!(user_reads.load(SeqCst), 1, "an unchanged remote source was read again after a reload");

    // Changed source: its entries are dropped and read again.
    write("?v=2");
    running.reload().await.unwrap();
    assert_eq!(get().await, StatusCode::OK);
    assert_eq!(user_reads.load(SeqCst), 2, "a changed source must not serve the old source's entries");
    running.shutdown(std::time::Duration::from_secs(2)).await;
}

/// A running claimsmith on a config file whose issuer reads `metadata.json`, with
/// requests of other callers arriving all the time (the load around a reload).
struct FileSetup {
    issuer: Issuer,
    upstream: Upstream,
    dir: tempfile::TempDir,
    running: claimsmith::Running,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    /// Every note written (metadata values: the leak audit looks for them).
    notes: std::sync::Mutex<Vec<String>>,
    stop_load: Arc<AtomicBool>,
    load: Option<tokio::task::JoinHandle<usize>>,
}

impl FileSetup {
    async fn start() -> FileSetup {
        init();
        let issuer = Issuer::start().await;
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("metadata.json");
        let cfg = dir.path().join("claimsmith.toml");
        let toml = DEFAULT_TOML
            .replace("{issuer}", &issuer.url)
            .replace("{upstream}", &upstream.url())
            .replace("{metadata}", &md.display().to_string());
        std::fs::write(&cfg, toml).unwrap();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut s = FileSetup {
            issuer,
            upstream,
            dir,
            running: {
                std::fs::write(&md, note_doc("note-000")).unwrap();
                let running = claimsmith::start(claimsmith::load_config(&cfg).unwrap()).await.unwrap();
                assert!(running.wait_ready(Duration::from_secs(10)).await);
                running
            },
            client,
            notes: std::sync::Mutex::new(vec!["note-000".into()]),
            stop_load: Arc::default(),
            load: None,
        };
        s.start_load();
        s
    }

    fn metadata_path(&self) -> PathBuf {
        self.dir.path().join("metadata.json")
    }

    /// Other callers: the same user, one request after another until the test ends,
    /// so some lookup always runs on the state a reload is about to replace.
    fn start_load(&mut self) {
        let (client, stop, addr) = (self.client.clone(), self.stop_load.clone(), self.running.proxy_addr);
        let token = self.issuer.token(USER_1);
        self.load = Some(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(SeqCst) {
                let req = http::Request::get(format!("http://{addr}/api/load"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                if let Ok(r) = client.request(req).await {
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        }));
    }

    /// Writes the metadata file with `note` for USER_1.
    fn write_note(&self, note: &str) {
        self.notes.lock().unwrap().push(note.to_string());
        std::fs::write(self.metadata_path(), note_doc(note)).unwrap();
    }

    /// [`Self::write_note`], then sets the modification time back to what it was:
    /// as an edit within the clock tick of the one before looks, or a copy that
    /// keeps times (`cp -p`, `rsync -t`).
    fn write_note_keeping_mtime(&self, note: &str) {
        let path = self.metadata_path();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        self.write_note(note);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(before).unwrap();
    }

    /// One request with a fresh ID token; the note its internal token carried.
    async fn note_of_next_request(&self, tag: &str) -> String {
        let mut claims = self.issuer.claims(USER_1);
        claims["nonce"] = json!(tag);
        let token = self.issuer.sign(&self.issuer.rsa, &claims);
        let path = format!("/api/check-{tag}");
        let req = http::Request::get(format!("http://{}{path}", self.running.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let (parts, body) = self.client.request(req).await.unwrap().into_parts();
        let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        let mut secrets = self.notes.lock().unwrap().clone();
        secrets.push(token);
        assert_no_leak(parts.status, &parts.headers, &body, &secrets);
        assert_eq!(parts.status, StatusCode::OK);
        let seen = self.upstream.requests().into_iter().rev().find(|r| r.uri == path).expect("request not forwarded");
        let internal = seen.headers["x-internal-token"].to_str().unwrap();
        let payload = internal.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
        )
        .unwrap();
        claims["app_metadata"]["note"].as_str().unwrap_or_default().to_string()
    }

    async fn stop(mut self) {
        self.stop_load.store(true, SeqCst);
        if let Some(load) = self.load.take() {
            assert!(load.await.unwrap() > 0, "no load was sent");
        }
        self.running.shutdown(Duration::from_secs(2)).await;
    }
}

/// The metadata document with `note` in USER_1's app_metadata. Notes of one test
/// have the same length, so an edit changes neither the file's size nor, within one
/// clock tick, its modification time.
fn note_doc(note: &str) -> String {
    let mut m = default_metadata();
    m["users"][USER_1]["app_metadata"]["note"] = json!(note);
    m.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reload_serves_the_edited_metadata_file_from_the_next_request() {
    let s = FileSetup::start().await;
    assert_eq!(s.note_of_next_request("first").await, "note-000");
    for i in 1..=20 {
        let note = format!("note-{i:03}");
        s.write_note(&note);
        // What SIGHUP runs.
        s.running.reload().await.unwrap();
        assert_eq!(s.note_of_next_request(&format!("reload-{i}")).await, note, "reload {i} did not take");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edit_found_by_the_file_watch_is_served_from_the_next_request() {
    let s = FileSetup::start().await;
    assert_eq!(s.note_of_next_request("first").await, "note-000");
    for i in 1..=20 {
        let note = format!("note-{i:03}");
        match i % 2 {
            0 => s.write_note(&note),
            _ => s.write_note_keeping_mtime(&note),
        }
        // One round of the watch (it runs every 2 s), without waiting for its timer.
        s.running.app().reload_changed_files().await;
        assert_eq!(s.note_of_next_request(&format!("watch-{i}")).await, note, "edit {i} was not picked up");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_picks_an_edit_up_by_itself() {
    let s = FileSetup::start().await;
    assert_eq!(s.note_of_next_request("first").await, "note-000");
    // Written at once after the read at start: likely within the same clock tick,
    // same size.
    s.write_note("note-001");
    // A generous bound, not a timing assertion: the watch runs every 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        if s.note_of_next_request(&format!("poll-{n}")).await == "note-001" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the file watch never picked the edit up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
