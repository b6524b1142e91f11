//! Concurrent first requests for one user make one read from the source (docs/configuration.md, "[cache]"),
//! counted in a real loopback metadata server behind the `http` source.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test]
async fn fifty_concurrent_first_requests_make_one_source_read() {
    init();
    let user_reads = Arc::new(AtomicUsize::new(0));
    let client_reads = Arc::new(AtomicUsize::new(0));
    let md = serve({
        let (u, c) = (user_reads.clone(), client_reads.clone());
        move |req: http::Request<hyper::body::Incoming>| {
            let path = req.uri().path().to_string();
            let (u, c) = (u.clone(), c.clone());
            async move {
                // Slow enough that all 50 requests arrive while the first read is out.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if path.starts_with("/users/") {
                    u.fetch_add(1, SeqCst);
                    json_response(StatusCode::OK, &json!({"roles": ["admin"], "note": USER_NOTE}))
                } else {
                    c.fetch_add(1, SeqCst);
                    json_response(StatusCode::OK, &json!({"tenant_key": TENANT_KEY}))
                }
            }
        }
    })
    .await;
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let h = Arc::new(
        Harness::start_parts(
            issuer,
            upstream,
            &HTTP_SOURCE_TOML.replace("{md}", &md.to_string()).replace("{suffix}", ""),
            json!({}),
        )
        .await,
    );
    let token = h.issuer.token(USER_1);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (h, token) = (h.clone(), token.clone());
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &token).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(user_reads.load(SeqCst), 1, "50 concurrent misses for one user must make one read");
    assert_eq!(client_reads.load(SeqCst), 1);
    assert_eq!(h.upstream.requests().len(), 50);
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(claims["app_metadata"]["note"], USER_NOTE);
    assert_eq!(claims["client_metadata"]["tenant_key"], TENANT_KEY);
}
