//! The `okta` metadata source through the real proxy, against an Okta org on loopback
//! (tests/support/okta.rs, which verifies every `private_key_jwt` client assertion):
//! user and app `profile` in the internal token, one access token for concurrent
//! callers, `E0000007` as "does not exist", 401 → one token refresh with a new
//! assertion, 429 waits for `X-Rate-Limit-Reset`, and a stale entry served while the
//! org is down.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::okta::{Endpoint, Fault, OKTA_CLIENT_ID, OktaMock, OrgOpts, start_harness};
use support::*;

const OKTA_USER: &str = "00u1ab2cd3EF4gh5IJ6k";

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

/// An org with client-1 (a profile) and client-2 (none).
async fn org() -> OktaMock {
    let mock = OktaMock::start().await;
    mock.add_app(CLIENT_1, Some(json!({"tenant_key": TENANT_KEY, "tier": "gold-tier"})));
    mock.add_app(CLIENT_2, None);
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_reach_the_internal_token_with_one_verified_token() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"login": "ada@example.com", "plan": "plan-secret-pro", "roles": ["a", "b"]}));
    for i in 0..20 {
        mock.add_user(&format!("00u-user-{i}"), json!({"n": format!("value-{i:03}")}));
    }
    let h = Arc::new(start_harness(&mock, &OrgOpts::default()).await);

    let r = h.get_with_token("/api/x", &token_for(&h, OKTA_USER, CLIENT_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of_last(&h);
    assert_eq!(c["app_metadata"], json!({"login": "ada@example.com", "plan": "plan-secret-pro", "roles": ["a", "b"]}));
    assert_eq!(c["client_metadata"], json!({"tenant_key": TENANT_KEY, "tier": "gold-tier"}));
    assert_eq!(mock.count_target(Endpoint::User, &format!("/api/v1/users/{OKTA_USER}")), 1);
    assert_eq!(mock.count_target(Endpoint::App, "/api/v1/apps/client-1"), 1);

    // An app without a profile is {}.
    let r = h.get_with_token("/api/x", &token_for(&h, OKTA_USER, CLIENT_2)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(claims_of_last(&h)["client_metadata"], json!({}));

    let mut tasks = Vec::new();
    for i in 0..20 {
        let (h, t) = (h.clone(), h.issuer.token(&format!("00u-user-{i}")));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    eprintln!("21 users, two apps: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::User), 21);
    assert_eq!(mock.count(Endpoint::Token), 1, "one access token for every caller");

    // The one assertion was verified and accepted: the claims RFC 7523 §3 asks for.
    let seen = mock.assertions();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].refused.is_none(), "{:?}", seen[0].refused);
    let a = &seen[0].claims;
    assert_eq!((a["iss"].as_str(), a["sub"].as_str()), (Some(OKTA_CLIENT_ID), Some(OKTA_CLIENT_ID)));
    assert_eq!(a["aud"], mock.token_url());
    let (iat, exp) = (a["iat"].as_u64().unwrap(), a["exp"].as_u64().unwrap());
    assert!(exp > now() && exp - iat <= 3600, "iat {iat} exp {exp}");
}

#[tokio::test]
async fn the_org_refuses_a_replayed_assertion_and_claimsmith_never_sends_one() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"plan": "pro-plan"}));
    let h = start_harness(&mock, &OrgOpts::default()).await;
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token(OKTA_USER)).await.status, StatusCode::OK);

    // The test org's check is live: the assertion claimsmith sent, sent again, is refused.
    let first = mock.assertions()[0].raw.clone();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", "okta.users.read")
        .append_pair("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        .append_pair("client_assertion", &first)
        .finish();
    let replay = h
        .send(
            Method::POST,
            &mock.token_url(),
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(form),
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.json()["error"], "invalid_client");

    // Two more token requests from claimsmith (the token expired twice): each with a
    // new jti, so none is refused.
    for n in 0..2 {
        mock.expire_tokens();
        mock.add_user(&format!("00u-later-{n}"), json!({}));
        let r = h.get_with_token("/api/x", &h.issuer.token(&format!("00u-later-{n}"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let seen = mock.assertions();
    eprintln!("assertions: {}", mock.summary());
    // Everything but the test's own replay.
    let ours: Vec<_> = seen.iter().filter(|a| !(a.raw == first && a.refused.is_some())).collect();
    assert_eq!(ours.len(), 3, "three token requests from claimsmith");
    assert!(ours.iter().all(|a| a.refused.is_none()), "{:?}", ours.iter().map(|a| &a.refused).collect::<Vec<_>>());
    let jtis: std::collections::HashSet<_> = ours.iter().map(|a| a.claims["jti"].to_string()).collect();
    assert_eq!(jtis.len(), 3);
}

#[tokio::test]
async fn a_retried_token_request_signs_a_new_assertion() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"plan": "pro-plan"}));
    // Okta verified the first assertion (its jti is used up), then failed with a 503.
    mock.fail_next(Endpoint::Token, 1, Fault::AfterHandling(503));
    let h = start_harness(&mock, &OrgOpts::default()).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(OKTA_USER)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = mock.assertions();
    eprintln!("token request retried after a 503: {}", mock.summary());
    assert_eq!(seen.len(), 2, "{}", mock.summary());
    assert!(seen.iter().all(|a| a.refused.is_none()), "{:?}", seen.iter().map(|a| &a.refused).collect::<Vec<_>>());
    assert_ne!(seen[0].claims["jti"], seen[1].claims["jti"]);
    assert_eq!(mock.count(Endpoint::Token), 2);
}

#[tokio::test]
async fn not_found_is_an_unknown_caller_but_a_foreign_404_is_an_error() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"plan": "pro-plan"}));
    let h = start_harness(&mock, &OrgOpts::default()).await;

    let ghost = h.issuer.token("00u-ghost");
    for _ in 0..3 {
        h.get_with_token("/api/x", &ghost).await.assert_invalid_token();
    }
    assert_eq!(mock.count_target(Endpoint::User, "00u-ghost"), 1, "cached as absent: {}", mock.summary());

    // An audience the issuer accepts, but no app of the org.
    mock.state.lock().unwrap().apps.remove(CLIENT_2);
    for _ in 0..2 {
        h.get_with_token("/api/x", &token_for(&h, OKTA_USER, CLIENT_2)).await.assert_invalid_token();
    }
    assert_eq!(mock.count_target(Endpoint::App, "/api/v1/apps/client-2"), 1);

    // A 404 that is not Okta's (a wrong base_url, a proxy) never means "no such user".
    mock.fail_next(Endpoint::User, 1, Fault::PlainNotFound);
    h.get_with_token("/api/x", &h.issuer.token("00u-other")).await.assert_problem(503);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once() {
    let mock = org().await;
    for i in 0..6 {
        mock.add_user(&format!("00u-user-{i}"), json!({"n": i}));
    }
    let h = Arc::new(start_harness(&mock, &OrgOpts::default()).await);
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token("00u-user-0")).await.status, StatusCode::OK);

    mock.expire_tokens();
    mock.fail_next(Endpoint::User, 5, Fault::Slow(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for i in 1..6 {
        let (h, t) = (h.clone(), h.issuer.token(&format!("00u-user-{i}")));
        tasks.push(tokio::spawn(async move { h.get_with_token("/api/x", &t).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let refused = mock.calls().iter().filter(|c| c.endpoint == Endpoint::User && c.status == 401).count();
    eprintln!("token expired under 5 concurrent reads: {refused} refused; {}", mock.summary());
    assert!(refused >= 2, "the reads were concurrent");
    assert_eq!(mock.count(Endpoint::Token), 2, "one refresh for every caller");

    mock.add_user("00u-new", json!({}));
    mock.fail_next(Endpoint::User, 2, Fault::Unauthorized);
    h.get_with_token("/api/x", &h.issuer.token("00u-new")).await.assert_problem(503);
    assert_eq!(mock.count(Endpoint::Token), 3);
}

#[tokio::test]
async fn a_429_waits_for_x_rate_limit_reset() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"plan": "pro-plan"}));
    mock.add_user(USER_2, json!({"plan": "pro-plan"}));
    let h = start_harness(&mock, &OrgOpts::default()).await;
    // client-1 and the access token first, so the user read is the one call in flight.
    assert_eq!(h.get_with_token("/api/x", &h.issuer.token(USER_2)).await.status, StatusCode::OK);
    mock.fail_next(Endpoint::User, 1, Fault::RateLimited { reset_in: 2 });

    let r = h.get_with_token("/api/x", &h.issuer.token(OKTA_USER)).await;
    assert_eq!(r.status, StatusCode::OK, "retried after the reset: {}", r.text());
    let users: Vec<_> =
        mock.calls().into_iter().filter(|c| c.endpoint == Endpoint::User && c.target.contains(OKTA_USER)).collect();
    assert_eq!(users.iter().map(|c| c.status).collect::<Vec<_>>(), [429, 200], "{}", mock.summary());
    // The reset was announced as whole Unix seconds: the retry came at or after it.
    let reset_ms = (users[0].wall_ms / 1000 + 2) * 1000;
    eprintln!("429 with X-Rate-Limit-Reset +2 s: retried {} ms after it", users[1].wall_ms as i64 - reset_ms as i64);
    assert!(users[1].wall_ms >= reset_ms, "retried at {} before the reset {reset_ms}", users[1].wall_ms);
    // Nothing else reached the org before the reset either.
    assert!(mock.calls().iter().filter(|c| c.wall_ms > users[0].wall_ms).all(|c| c.wall_ms >= reset_ms));
}

#[tokio::test]
async fn a_cached_entry_is_served_stale_while_the_org_is_down() {
    let mock = org().await;
    mock.add_user(OKTA_USER, json!({"plan": "plan-before-outage"}));
    let h = start_harness(&mock, &OrgOpts { ttl: "1s", max_stale: "1h", timeout: "1s", ..Default::default() }).await;
    let t = h.issuer.token(OKTA_USER);
    assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    let before = mock.calls().len();

    mock.set_down(Some(Fault::Status(500)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let r = h.get_with_token("/api/x", &t).await;
        assert_eq!(r.status, StatusCode::OK, "served stale: {}", r.text());
        assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "plan-before-outage"}));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during: Vec<_> = mock.calls().into_iter().skip(before).collect();
    assert!(!during.is_empty() && during.iter().all(|c| c.status == 500), "revalidation was tried");
}
