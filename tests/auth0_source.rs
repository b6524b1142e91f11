//! The `auth0` metadata source through the real proxy, against an Auth0
//! Management API tenant on loopback (tests/support/auth0.rs): one management token
//! shared by concurrent callers, one user read per new user, clients in bulk, 404 as
//! "does not exist", 401 → one token refresh, 429 `Retry-After` honoured, and the
//! `max_requests_per_second` budget never exceeded by a burst of misses.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::auth0::{ADMIN_TOKEN, Auth0Mock, Endpoint, Fault, TenantOpts, start_harness};
use support::*;
use tokio::time::Instant;

/// The user metadata the tenant holds for `auth0|user-{i}`.
fn user_md(i: usize) -> serde_json::Value {
    json!({"plan": format!("plan-secret-{i:03}"), "roles": ["reader"]})
}

fn user(i: usize) -> String {
    format!("auth0|user-{i}")
}

/// An ID token for `sub` whose `aud` is `client`.
fn token_for(h: &Harness, sub: &str, client: &str) -> String {
    let mut c = h.issuer.claims(sub);
    c["aud"] = json!(client);
    h.issuer.sign(&h.issuer.rsa, &c)
}

fn claims_of_last(h: &Harness) -> serde_json::Value {
    let t = h.last_internal_token().expect("no internal token");
    // Signature checks are the request-path tests' job; here the payload is what counts.
    let payload = t.split('.').nth(1).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn admin_delete(h: &Harness, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    h.send(Method::DELETE, &h.admin_url(path), &headers, Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_new_users_make_one_read_each_and_share_one_token() {
    let mock = Auth0Mock::start().await;
    for i in 0..50 {
        mock.add_user(&user(i), user_md(i));
    }
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    let h = Arc::new(start_harness(&mock, &TenantOpts { rps: 100, ..TenantOpts::default() }).await);
    let tokens: Arc<Vec<String>> = Arc::new((0..50).map(|i| h.issuer.token(&user(i))).collect());

    // 200 requests at once: four per user, none of them cached yet.
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (h, tokens) = (h.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &tokens[n % 50]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    eprintln!("after 200 concurrent requests from 50 users: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::User), 50, "one read per user: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::Token), 1, "one management token for everyone");
    for i in 0..50 {
        assert_eq!(mock.count_target(Endpoint::User, &format!("/api/v2/users/auth0%7Cuser-{i}?")), 1, "user {i}");
    }
    // The exact request shape of docs/configuration.md, "[metadata.NAME]".
    assert!(
        mock.calls()
            .iter()
            .filter(|c| c.endpoint == Endpoint::User)
            .all(|c| c.target.ends_with("?fields=app_metadata&include_fields=true"))
    );
    assert_eq!(mock.count(Endpoint::Client), 0, "client-1 came from the bulk load");

    // Within ttl: no further reads, whatever the number of requests.
    for n in 0..100 {
        let r = h.get_with_token("/api/y", &tokens[n % 50]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let c = claims_of_last(&h);
    assert_eq!(c["app_metadata"], user_md(99 % 50));
    assert_eq!(c["client_metadata"], json!({"tenant_key": TENANT_KEY}));
    eprintln!("after 100 more requests within ttl: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::User), 50);
    assert_eq!(mock.count(Endpoint::Token), 1);
    assert_eq!(mock.count(Endpoint::ClientList), 1);
}

#[tokio::test]
async fn clients_are_loaded_in_bulk_pages_and_known_clients_are_never_read_singly() {
    let mock = Auth0Mock::start().await;
    let ids: Vec<String> = (0..250).map(|i| format!("app-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        mock.add_client(id, json!({"tenant_key": format!("tk-secret-{i:03}")}));
    }
    mock.add_user(USER_1, json!({"roles": ["admin"]}));
    let h = start_harness(&mock, &TenantOpts { audiences: ids.clone(), ..TenantOpts::default() }).await;

    // Clients on every page, the page edges included.
    for i in [0usize, 1, 98, 99, 100, 101, 150, 199, 200, 201, 248, 249] {
        let r = h.get_with_token("/api/x", &token_for(&h, USER_1, &ids[i])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let c = claims_of_last(&h);
        assert_eq!(c["client_id"], ids[i]);
        assert_eq!(c["client_metadata"], json!({"tenant_key": format!("tk-secret-{i:03}")}));
    }
    eprintln!("250 clients, 12 of them used: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::ClientList), 3, "250 clients are three pages of 100");
    assert_eq!(mock.count(Endpoint::Client), 0, "no per-client read for a client of the bulk load");
    assert_eq!(mock.count(Endpoint::Token), 1);
    for page in 0..3 {
        assert_eq!(
            mock.count_target(
                Endpoint::ClientList,
                &format!(
                    "/api/v2/clients?fields=client_id,client_metadata&include_fields=true&page={page}&per_page=100"
                )
            ),
            1
        );
    }
}

#[tokio::test]
async fn a_client_missing_from_the_bulk_load_is_read_by_id() {
    let mock = Auth0Mock::start().await;
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    mock.add_user(USER_1, json!({"roles": ["admin"]}));
    let h = start_harness(&mock, &TenantOpts::default()).await;
    assert_eq!(h.get_with_token("/api/x", &token_for(&h, USER_1, CLIENT_1)).await.status, StatusCode::OK);
    // client-2 is created after the bulk load: read once by id, then cached.
    mock.add_client(CLIENT_2, json!({"tenant_key": "late-client-secret"}));
    h.add_secret("late-client-secret");
    for _ in 0..3 {
        assert_eq!(h.get_with_token("/api/x", &token_for(&h, USER_1, CLIENT_2)).await.status, StatusCode::OK);
    }
    assert_eq!(claims_of_last(&h)["client_metadata"], json!({"tenant_key": "late-client-secret"}));
    assert_eq!(
        mock.count_target(Endpoint::Client, "/api/v2/clients/client-2?fields=client_metadata&include_fields=true"),
        1
    );
    assert_eq!(mock.count(Endpoint::ClientList), 1);
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let mock = Auth0Mock::start().await;
    mock.add_client(CLIENT_1, json!({}));
    mock.add_user(USER_1, json!({"roles": ["admin"]}));
    let h = start_harness(&mock, &TenantOpts::default()).await;
    mock.fail_next(Endpoint::User, 1, Fault::RateLimited { retry_after: Some(2) });

    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "retried after the 429: {}", r.text());
    let calls = mock.calls();
    let users: Vec<_> = calls.iter().filter(|c| c.endpoint == Endpoint::User).collect();
    assert_eq!(users.len(), 2, "{}", mock.summary());
    assert_eq!(users[0].status, 429);
    assert_eq!(users[1].status, 200);
    let gap = users[1].at.duration_since(users[0].at);
    eprintln!("429 Retry-After: 2 → retried after {gap:?}");
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, sooner than Retry-After");
    // Nothing else reached the tenant inside the window it asked for.
    assert!(
        calls.iter().filter(|c| c.at > users[0].at).all(|c| c.at.duration_since(users[0].at) >= Duration::from_secs(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_misses_never_exceeds_the_rate_budget() {
    const RPS: usize = 5;
    let mock = Auth0Mock::start().await;
    for i in 0..501 {
        mock.add_user(&user(i), user_md(i));
    }
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    let h = Arc::new(start_harness(&mock, &TenantOpts { rps: RPS as u32, ..TenantOpts::default() }).await);
    assert_eq!(h.get_with_token("/api/warm", &h.issuer.token(&user(500))).await.status, StatusCode::OK);
    let tokens: Vec<String> = (0..500).map(|i| h.issuer.token(&user(i))).collect();

    // 500 distinct cache misses spread over 5 s.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, t) in tokens.into_iter().enumerate() {
        tokio::time::sleep_until(t0 + Duration::from_millis(10 * i as u64)).await;
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let r = h.get_with_token("/api/burst", &t).await;
            (r.status, r.header("retry-after").map(str::to_string))
        }));
    }
    let (mut ok, mut unavailable) = (0, 0);
    for t in tasks {
        let (status, retry_after) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert!(retry_after.is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)), "503 without Retry-After");
            }
            s => panic!("unexpected {s}"),
        }
    }
    let calls = mock.calls();
    let window_end = t0 + Duration::from_secs(5);
    let in_burst = calls.iter().filter(|c| c.at >= t0 && c.at <= window_end).count();
    // Every 5 s window of the whole run, not just the burst.
    let worst = calls
        .iter()
        .map(|a| calls.iter().filter(|c| c.at >= a.at && c.at.duration_since(a.at) <= Duration::from_secs(5)).count())
        .max()
        .unwrap_or(0);
    eprintln!(
        "burst of 500 misses in 5 s at {RPS} rps: {in_burst} tenant calls in the burst window, at most {worst} in any \
         5 s window; {ok} answered 200, {unavailable} 503; totals {}",
        mock.summary()
    );
    assert!(in_burst <= RPS * 5 + RPS, "{in_burst} calls in 5 s");
    assert!(worst <= RPS * 5 + RPS, "{worst} calls in a 5 s window");
    assert!(ok >= RPS * 5, "the budget was used: only {ok} answered");
    assert_eq!(ok + unavailable, 500);
    assert!(mock.count(Endpoint::User) > ok, "every 200 is one user read");
}

#[tokio::test]
async fn an_unknown_user_is_401_and_read_once_within_negative_ttl() {
    let mock = Auth0Mock::start().await;
    mock.add_client(CLIENT_1, json!({}));
    let h = Arc::new(start_harness(&mock, &TenantOpts { negative_ttl: "30s", ..TenantOpts::default() }).await);
    let t = h.issuer.token("auth0|ghost");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (h, t) = (h.clone(), t.clone());
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await }));
    }
    for task in tasks {
        task.await.unwrap().assert_invalid_token();
    }
    for _ in 0..20 {
        h.get_with_token("/api/x", &t).await.assert_invalid_token();
    }
    assert!(h.upstream.saw_nothing());
    eprintln!("30 requests for an unknown user: {}", mock.summary());
    assert_eq!(mock.count_target(Endpoint::User, "auth0%7Cghost"), 1);
    let last = mock.calls().into_iter().rfind(|c| c.endpoint == Endpoint::User).unwrap();
    assert_eq!(last.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_management_token_is_refreshed_once() {
    let mock = Auth0Mock::start().await;
    for i in 0..11 {
        mock.add_user(&user(i), user_md(i));
    }
    mock.add_client(CLIENT_1, json!({}));
    let h = Arc::new(start_harness(&mock, &TenantOpts::default()).await);
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token(&user(0))).await.status, StatusCode::OK);
    assert_eq!(mock.count(Endpoint::Token), 1);

    mock.expire_tokens();
    // Slow answers keep the ten reads in flight together, all with the expired token.
    mock.fail_next(Endpoint::User, 10, Fault::Slow(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for i in 1..11 {
        let (h, t) = (h.clone(), h.issuer.token(&user(i)));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let refused = mock.calls().iter().filter(|c| c.endpoint == Endpoint::User && c.status == 401).count();
    eprintln!("management token expired under 10 concurrent reads: {refused} reads refused; {}", mock.summary());
    assert!(refused >= 2, "the reads were concurrent");
    assert_eq!(mock.count(Endpoint::Token), 2, "exactly one refresh for all concurrent callers");

    // A 401 that persists after the refresh fails closed (503), with one refresh only.
    mock.fail_next(Endpoint::User, 2, Fault::Unauthorized);
    let r = h.get_with_token("/api/x", &h.issuer.token("auth0|user-new")).await;
    r.assert_problem(503);
    assert_eq!(mock.count(Endpoint::Token), 3);
}

#[tokio::test]
async fn admin_eviction_reads_that_one_client_and_that_one_user() {
    let mock = Auth0Mock::start().await;
    mock.add_user(USER_1, json!({"plan": "plan-before-evict"}));
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    mock.add_client(CLIENT_2, json!({"tenant_key": "other-client-key"}));
    let h = start_harness(&mock, &TenantOpts::default()).await;
    let t = h.issuer.token(USER_1);
    assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    assert_eq!(mock.count(Endpoint::Client), 0);

    // Behind the admin token.
    assert_eq!(admin_delete(&h, "/cache/clients/client-1", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_delete(&h, "/cache/clients/client-1", Some("wrong-token")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_delete(&h, "/cache/users/auth0%7Cu1", None).await.status, StatusCode::UNAUTHORIZED);

    mock.set_client_metadata(CLIENT_1, json!({"tenant_key": "rotated-tenant-key"}));
    h.add_secret("rotated-tenant-key");
    assert_eq!(admin_delete(&h, "/cache/clients/client-1", Some(ADMIN_TOKEN)).await.status, StatusCode::NO_CONTENT);
    for _ in 0..3 {
        assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    }
    assert_eq!(claims_of_last(&h)["client_metadata"], json!({"tenant_key": "rotated-tenant-key"}));
    eprintln!("after evicting client-1: {}", mock.summary());
    assert_eq!(
        mock.count_target(Endpoint::Client, "/api/v2/clients/client-1?fields=client_metadata&include_fields=true"),
        1
    );
    assert_eq!(mock.count(Endpoint::Client), 1);
    assert_eq!(mock.count(Endpoint::ClientList), 1, "not the whole list");

    mock.set_app_metadata(USER_1, json!({"plan": "plan-after-evict"}));
    h.add_secret("plan-after-evict");
    assert_eq!(admin_delete(&h, "/cache/users/auth0%7Cu1", Some(ADMIN_TOKEN)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "plan-after-evict"}));
    assert_eq!(mock.count_target(Endpoint::User, "auth0%7Cu1"), 2);
}

#[tokio::test]
async fn a_hanging_tenant_times_out_into_503() {
    let mock = Auth0Mock::start().await;
    mock.add_client(CLIENT_1, json!({}));
    mock.add_user(USER_1, json!({}));
    let h = start_harness(&mock, &TenantOpts { timeout: "1s", ..TenantOpts::default() }).await;
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token(USER_1)).await.status, StatusCode::OK);
    mock.set_down(Some(Fault::Hang));
    mock.add_user(USER_2, json!({}));
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_2)).await;
    r.assert_problem(503);
    assert!(r.header("retry-after").is_some());
    assert!(h.upstream.requests().len() == 1, "nothing forwarded without metadata");
    // The one hanging call was the user read; it was abandoned, not retried past the budget.
    assert_eq!(mock.count_target(Endpoint::User, "auth0%7Cu2"), 1);
}
