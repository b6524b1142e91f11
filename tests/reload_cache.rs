//! A reload keeps cached metadata of an unchanged remote source, so SIGHUP does not
//! send a burst of reads to a rate-limited tenant, and drops it when the source
//! changed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

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
    let running = claimsmith::start(claimsmith::Config::load(&path).unwrap()).await.unwrap();
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
