//! The `keycloak` metadata source through the real proxy, against a Keycloak realm on
//! loopback (tests/support/keycloak.rs): user attributes (flattened) and client
//! attributes (filtered by `attribute_prefix`) in the internal token, one access token
//! for concurrent callers, 404 / an empty client list as "does not exist", 401 → one
//! token refresh, 429 / 5xx retried, and a stale entry served while the realm is down.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::keycloak::{Endpoint, Fault, KeycloakMock, REALM, RealmOpts, attrs, start_harness};
use support::*;

/// A federated user's id: `f:{provider}:{id}`, with characters that must be encoded.
const FED_USER: &str = "f:ldap-7:ada/lovelace";

fn token_for(h: &Harness, sub: &str, client: &str) -> String {
    let mut c = h.issuer.claims(sub);
    c["aud"] = json!(client);
    h.issuer.sign(&h.issuer.rsa, &c)
}

fn claims_of_last(h: &Harness) -> serde_json::Value {
    use base64::Engine;
    let t = h.last_internal_token().expect("no internal token");
    let payload = t.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A realm with client-1 (Keycloak settings and claimsmith attributes side by side).
async fn realm() -> KeycloakMock {
    let mock = KeycloakMock::start().await;
    mock.add_client(
        CLIENT_1,
        json!({"claimsmith.tenant_key": TENANT_KEY, "claimsmith.region": "eu-west",
               "pkce.code.challenge.method": "S256", "post.logout.redirect.uris": "+",
               "backchannel.logout.session.required": "true"}),
    );
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_reach_the_internal_token_flattened_and_filtered() {
    let mock = realm().await;
    mock.add_user(
        FED_USER,
        Some(attrs(&[("plan", &["plan-secret-pro"]), ("roles", &["reader", "writer"]), ("empty", &[])])),
    );
    for i in 0..20 {
        mock.add_user(&format!("user-{i}"), Some(attrs(&[("n", &[&format!("value-{i:03}")])])));
    }
    let h = Arc::new(
        start_harness(&mock, &RealmOpts { extra: "attribute_prefix = \"claimsmith.\"", ..Default::default() }).await,
    );

    let r = h.get_with_token("/api/x", &token_for(&h, FED_USER, CLIENT_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of_last(&h);
    assert_eq!(c["sub"], FED_USER);
    // One-element lists are their string, longer (and empty) lists stay arrays.
    assert_eq!(c["app_metadata"], json!({"plan": "plan-secret-pro", "roles": ["reader", "writer"], "empty": []}));
    // Only the claimsmith.* attributes, the prefix removed; Keycloak's own settings stay out.
    assert_eq!(c["client_metadata"], json!({"tenant_key": TENANT_KEY, "region": "eu-west"}));
    // The id is one percent-encoded path segment; the client id a query value.
    assert_eq!(
        mock.count_target(Endpoint::User, &format!("/admin/realms/{REALM}/users/f%3Aldap-7%3Aada%2Flovelace")),
        1
    );
    assert_eq!(mock.count_target(Endpoint::Clients, &format!("/admin/realms/{REALM}/clients?clientId=client-1")), 1);

    // Twenty new users at once: one read each, still the one access token.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (h, t) = (h.clone(), h.issuer.token(&format!("user-{i}")));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    eprintln!("21 users, one client: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::User), 21);
    assert_eq!(mock.count(Endpoint::Clients), 1, "client-1 is cached");
    assert_eq!(mock.count(Endpoint::Token), 1, "one access token for every caller");
}

#[tokio::test]
async fn without_a_prefix_every_client_attribute_is_kept_and_no_attributes_is_empty() {
    let mock = realm().await;
    mock.add_user(USER_1, None);
    let h = start_harness(&mock, &RealmOpts::default()).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of_last(&h);
    assert_eq!(c["app_metadata"], json!({}));
    assert_eq!(c["client_metadata"]["claimsmith.tenant_key"], TENANT_KEY);
    assert_eq!(c["client_metadata"]["pkce.code.challenge.method"], "S256");
}

#[tokio::test]
async fn an_unknown_user_or_client_is_401_and_read_once() {
    let mock = realm().await;
    mock.add_user(USER_1, Some(attrs(&[("plan", &["pro-plan"])])));
    let h = start_harness(&mock, &RealmOpts::default()).await;

    // 404 {"error":"User not found"}.
    let ghost = h.issuer.token("0c3f2a8e-ghost");
    for _ in 0..3 {
        h.get_with_token("/api/x", &ghost).await.assert_invalid_token();
    }
    assert_eq!(mock.count_target(Endpoint::User, "0c3f2a8e-ghost"), 1, "{}", mock.summary());

    // An empty list for client-2.
    let t = token_for(&h, USER_1, CLIENT_2);
    for _ in 0..3 {
        h.get_with_token("/api/x", &t).await.assert_invalid_token();
    }
    assert_eq!(mock.count_target(Endpoint::Clients, "clientId=client-2"), 1);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once() {
    let mock = realm().await;
    for i in 0..6 {
        mock.add_user(&format!("user-{i}"), Some(attrs(&[("n", &["x"])])));
    }
    let h = Arc::new(start_harness(&mock, &RealmOpts::default()).await);
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token("user-0")).await.status, StatusCode::OK);
    assert_eq!(mock.count(Endpoint::Token), 1);

    // The token expired in Keycloak: concurrent reads are all refused, one refresh serves them.
    mock.expire_tokens();
    mock.fail_next(Endpoint::User, 5, Fault::Slow(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for i in 1..6 {
        let (h, t) = (h.clone(), h.issuer.token(&format!("user-{i}")));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let refused = mock.calls().iter().filter(|c| c.endpoint == Endpoint::User && c.status == 401).count();
    eprintln!("token expired under 5 concurrent reads: {refused} refused; {}", mock.summary());
    assert!(refused >= 2, "the reads were concurrent");
    assert_eq!(mock.count(Endpoint::Token), 2, "one refresh for every caller");

    // A 401 that persists after the refresh fails closed, after exactly one refresh.
    mock.add_user("user-new", Some(attrs(&[("n", &["x"])])));
    mock.fail_next(Endpoint::User, 2, Fault::Unauthorized);
    h.get_with_token("/api/x", &h.issuer.token("user-new")).await.assert_problem(503);
    assert_eq!(mock.count(Endpoint::Token), 3);
}

#[tokio::test]
async fn too_many_requests_and_server_errors_are_retried() {
    let mock = realm().await;
    mock.add_user(USER_1, Some(attrs(&[("plan", &["pro-plan"])])));
    let h = start_harness(&mock, &RealmOpts::default()).await;
    mock.fail_next(Endpoint::User, 1, Fault::TooManyRequests);
    mock.fail_next(Endpoint::User, 1, Fault::Status(503));
    mock.fail_next(Endpoint::Token, 1, Fault::Status(502));

    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "pro-plan"}));
    let users: Vec<_> = mock.calls().into_iter().filter(|c| c.endpoint == Endpoint::User).collect();
    eprintln!("429 then 503 then 200: {}", mock.summary());
    assert_eq!(users.iter().map(|c| c.status).collect::<Vec<_>>(), [429, 503, 200]);
    // No rate-limit headers from Keycloak: a 429 pauses the realm's calls (1 s), then backoff.
    assert!(users[1].at.duration_since(users[0].at) >= Duration::from_secs(1));
    assert!(users[2].at.duration_since(users[1].at) >= Duration::from_millis(400));
    assert_eq!(mock.count(Endpoint::Token), 2, "the 502 token answer was retried");
}

#[tokio::test]
async fn a_cached_entry_is_served_stale_while_the_realm_is_down() {
    let mock = realm().await;
    mock.add_user(USER_1, Some(attrs(&[("plan", &["plan-before-outage"])])));
    let h = start_harness(&mock, &RealmOpts { ttl: "1s", max_stale: "1h", timeout: "1s", ..Default::default() }).await;
    let t = h.issuer.token(USER_1);
    assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    let before = mock.calls().len();

    mock.set_down(Some(Fault::Status(503)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let r = h.get_with_token("/api/x", &t).await;
        assert_eq!(r.status, StatusCode::OK, "served stale: {}", r.text());
        assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "plan-before-outage"}));
    }
    // Revalidation was tried (and failed) behind the stale answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during: Vec<_> = mock.calls().into_iter().skip(before).collect();
    eprintln!("stale while down: {} calls during the outage", during.len());
    assert!(!during.is_empty() && during.iter().all(|c| c.status == 503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_second_paces_the_realm_without_rate_limit_headers() {
    let mock = realm().await;
    for i in 0..6 {
        mock.add_user(&format!("user-{i}"), Some(attrs(&[("n", &["x"])])));
    }
    let h = Arc::new(start_harness(&mock, &RealmOpts { rps: 2, timeout: "10s", ..Default::default() }).await);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (h, t) = (h.clone(), h.issuer.token(&format!("user-{i}")));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let calls = mock.calls();
    // A token, a client and six users: 8 calls at 2/s with a burst of 2 take at least 3 s.
    assert_eq!(calls.len(), 8, "{}", mock.summary());
    let (first, last) = (calls.iter().map(|c| c.at).min().unwrap(), calls.iter().map(|c| c.at).max().unwrap());
    let span = last.duration_since(first);
    let worst = calls
        .iter()
        .map(|a| calls.iter().filter(|c| c.at >= a.at && c.at.duration_since(a.at) < Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0);
    eprintln!("8 calls at max_requests_per_second = 2: over {span:?}, at most {worst} in any second");
    assert!(span >= Duration::from_millis(2900), "{span:?}");
    assert!(worst <= 4, "{worst} calls within one second");
}
