//! The metadata cache (docs/configuration.md, "[cache]") and the `http` source (docs/configuration.md, "[metadata.NAME]") through the real
//! proxy: stale entries keep requests going while the source is down (up to
//! `max_stale`), a cold cache answers 503 with `Retry-After`, a failing key is not
//! asked again before its backoff, and fresh values come back after `ttl` once the
//! source recovers, without a restart.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::auth0::{Auth0Mock, Fault, TenantOpts, start_harness};
use support::*;

fn claims_of_last(h: &Harness) -> Value {
    use base64::Engine;
    let t = h.last_internal_token().expect("no internal token");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn retry_after_secs(r: &Resp) -> u64 {
    r.header("retry-after").and_then(|v| v.parse().ok()).expect("503 without a numeric Retry-After")
}

#[tokio::test]
async fn stale_entries_serve_while_the_source_is_down_and_fresh_values_return_after_ttl() {
    let mock = Auth0Mock::start().await;
    mock.add_user(USER_1, json!({"plan": "plan-version-one"}));
    mock.add_user(USER_2, json!({"plan": "plan-cold-user"}));
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    let opts = TenantOpts { ttl: "1s", max_stale: "60s", timeout: "2s", ..TenantOpts::default() };
    let h = start_harness(&mock, &opts).await;
    let warm = h.issuer.token(USER_1);
    assert_eq!(h.get_with_token("/api/x", &warm).await.status, StatusCode::OK);

    // The tenant goes down; the entries age past ttl.
    mock.set_down(Some(Fault::Status(503)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..4 {
        let r = h.get_with_token("/api/x", &warm).await;
        assert_eq!(r.status, StatusCode::OK, "stale within max_stale: {}", r.text());
        assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "plan-version-one"}));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let failed_refreshes = mock.calls().iter().filter(|c| c.status == 503).count();
    assert!(failed_refreshes >= 1, "the stale entry was refreshed in the background: {}", mock.summary());

    // Nothing held for this user: 503 with Retry-After, nothing forwarded.
    let forwarded = h.upstream.requests().len();
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_2)).await;
    r.assert_problem(503);
    assert!(retry_after_secs(&r) >= 1);
    assert_eq!(h.upstream.requests().len(), forwarded);

    // The tenant is back with new metadata: the next refresh picks it up, no restart.
    mock.set_down(None);
    mock.set_app_metadata(USER_1, json!({"plan": "plan-version-two"}));
    h.add_secret("plan-version-two");
    let mut fresh = false;
    for _ in 0..100 {
        let r = h.get_with_token("/api/x", &warm).await;
        assert_eq!(r.status, StatusCode::OK);
        if claims_of_last(&h)["app_metadata"] == json!({"plan": "plan-version-two"}) {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fresh, "fresh values never came back: {}", mock.summary());
    // And the cold user is served once its backoff has passed.
    let mut served = false;
    for _ in 0..100 {
        if h.get_with_token("/api/x", &h.issuer.token(USER_2)).await.status == StatusCode::OK {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served);
    eprintln!("stale/cold/recovery: {}", mock.summary());
}

#[tokio::test]
async fn nothing_is_served_past_max_stale() {
    let mock = Auth0Mock::start().await;
    mock.add_user(USER_1, json!({"plan": "plan-version-one"}));
    mock.add_client(CLIENT_1, json!({}));
    let opts = TenantOpts { ttl: "1s", max_stale: "1s", timeout: "1s", ..TenantOpts::default() };
    let h = start_harness(&mock, &opts).await;
    let t = h.issuer.token(USER_1);
    assert_eq!(h.get_with_token("/api/x", &t).await.status, StatusCode::OK);
    mock.set_down(Some(Fault::Status(500)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = h.get_with_token("/api/x", &t).await;
    r.assert_problem(503);
    assert!(retry_after_secs(&r) >= 1);
}

// ---------------------------------------------------------------------------
// The http source

/// (raw path, Authorization header) of every call.
type SeenCalls = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A home-grown user store: `/users/{id}/app_metadata`, `/clients/{id}`; records the
/// raw path and the Authorization header of every call.
struct Store {
    addr: SocketAddr,
    seen: SeenCalls,
    users: Arc<Mutex<HashMap<String, Value>>>,
    /// Non-zero: every answer has this status.
    fail: Arc<AtomicU16>,
}

const STORE_TOKEN: &str = "store-bearer-token-0123456789";

impl Store {
    async fn start() -> Store {
        let seen: SeenCalls = Arc::default();
        let users: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let fail = Arc::new(AtomicU16::new(0));
        let addr = serve({
            let (seen, users, fail) = (seen.clone(), users.clone(), fail.clone());
            move |req: Request<Incoming>| {
                let path = req.uri().path().to_string();
                let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                seen.lock().unwrap().push((path.clone(), auth.clone()));
                let f = fail.load(SeqCst);
                let resp = if f != 0 {
                    json_response(StatusCode::from_u16(f).unwrap(), &json!({"error": "down"}))
                } else if auth.as_deref() != Some(&format!("Bearer {STORE_TOKEN}")) {
                    json_response(StatusCode::UNAUTHORIZED, &json!({"error": "token"}))
                } else if let Some(rest) = path.strip_prefix("/users/").and_then(|r| r.strip_suffix("/app_metadata")) {
                    let id = percent_encoding::percent_decode_str(rest).decode_utf8_lossy().into_owned();
                    match users.lock().unwrap().get(&id) {
                        Some(md) => json_response(StatusCode::OK, md),
                        None => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such user"})),
                    }
                } else if path.starts_with("/clients/") {
                    json_response(StatusCode::OK, &json!({"tenant_key": TENANT_KEY}))
                } else {
                    json_response(StatusCode::NOT_FOUND, &json!({}))
                };
                async move { resp }
            }
        })
        .await;
        Store { addr, seen, users, fail }
    }

    fn calls_to(&self, path: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p == path).count()
    }
}

async fn http_harness(store: &Store) -> Harness {
    let template = DEFAULT_TOML
        .replace(
            "[metadata.local]\nkind = \"file\"\npath = \"{metadata}\"",
            &format!(
                "[metadata.local]\nkind = \"http\"\nuser_url = \"http://{a}/users/{{user_id}}/app_metadata\"\n\
                 client_url = \"http://{a}/clients/{{client_id}}\"\ntoken_file = \"{{dir}}/store-token\"\ntimeout = \"2s\"",
                a = store.addr
            ),
        )
        .replace("[token]", "[cache]\nnegative_ttl = \"30s\"\n\n[token]");
    assert!(template.contains("kind = \"http\""));
    let h = Harness::start_parts_with_files(
        Issuer::start().await,
        Upstream::start().await,
        &template,
        json!({}),
        &[("store-token", STORE_TOKEN)],
    )
    .await;
    h.add_secret(STORE_TOKEN);
    h.add_secret(TENANT_KEY);
    h
}

#[tokio::test]
async fn http_source_sends_the_bearer_token_and_url_encodes_ids() {
    let store = Store::start().await;
    let sub = "samlp|conn|u@x.com/../admin";
    store.users.lock().unwrap().insert(sub.to_string(), json!({"roles": ["store-role-secret"]}));
    let h = http_harness(&store).await;
    h.add_secret("store-role-secret");
    let r = h.get_with_token("/api/x", &h.issuer.token(sub)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of_last(&h);
    assert_eq!(c["app_metadata"], json!({"roles": ["store-role-secret"]}));
    assert_eq!(c["client_metadata"], json!({"tenant_key": TENANT_KEY}));
    let seen = store.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(p, _)| p == "/users/samlp%7Cconn%7Cu%40x.com%2F..%2Fadmin/app_metadata"), "{seen:?}");
    assert!(seen.iter().any(|(p, _)| p == "/clients/client-1"));
    assert!(seen.iter().all(|(_, a)| a.as_deref() == Some(&format!("Bearer {STORE_TOKEN}"))));
}

#[tokio::test]
async fn http_source_404_is_401_and_remembered() {
    let store = Store::start().await;
    let h = http_harness(&store).await;
    let t = h.issuer.token("auth0|nobody");
    for _ in 0..5 {
        h.get_with_token("/api/x", &t).await.assert_invalid_token();
    }
    assert!(h.upstream.saw_nothing());
    assert_eq!(store.calls_to("/users/auth0%7Cnobody/app_metadata"), 1);
}

#[tokio::test]
async fn http_source_5xx_on_a_cold_cache_is_503_and_backs_off() {
    let store = Store::start().await;
    store.users.lock().unwrap().insert(USER_1.to_string(), json!({"roles": ["x"]}));
    let h = http_harness(&store).await;
    store.fail.store(502, SeqCst);
    let t = h.issuer.token(USER_1);
    let r = h.get_with_token("/api/x", &t).await;
    r.assert_problem(503);
    let first = retry_after_secs(&r);
    assert!(first >= 1);
    let tries = store.calls_to("/users/auth0%7Cu1/app_metadata");
    assert!((1..=3).contains(&tries), "retried within bounds: {tries}");
    // Within the backoff, further requests fail at once without asking the source.
    for _ in 0..5 {
        let r = h.get_with_token("/api/x", &t).await;
        r.assert_problem(503);
        assert!(retry_after_secs(&r) <= first);
    }
    assert_eq!(store.calls_to("/users/auth0%7Cu1/app_metadata"), tries);
    eprintln!("http source 502 on a cold cache: {tries} tries, Retry-After {first}");
    // The source recovers: served after the backoff.
    store.fail.store(0, SeqCst);
    tokio::time::sleep(Duration::from_secs(first)).await;
    let r = h.get_with_token("/api/x", &t).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
