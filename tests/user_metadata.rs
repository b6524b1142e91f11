//! The user's user_metadata (docs/configuration.md, "[[route]]" `user_metadata`):
//! read from Auth0 (`fields=app_metadata,user_metadata`) only when some route forwards
//! it or some rule reads it; forwarded as the `user_metadata` claim of the routes that
//! list it (those keys, `[]` all, `{}` when the user has none), never on others; a
//! source without user_metadata (file, http) gives `{}`; a reload that switches it on
//! reads users again rather than forward "none"; a pushed `user.updated` event
//! carries it along. Against an Auth0-shaped tenant on loopback that records every
//! call (tests/support/auth0.rs).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use base64::Engine;
use http::StatusCode;
use serde_json::{Value, json};
use support::auth0::{Auth0Mock, Endpoint, TenantOpts, start_harness};
use support::*;

const USER_3: &str = "auth0|user-3";

/// user_metadata of user 1 (user 2 has none; user 3 blocks itself).
fn theme() -> Value {
    json!({"theme": "dark-secret-theme", "locale": "fr-secret-locale", "nested": {"a": [1, 2]}})
}

/// A tenant with users 1 (user_metadata), 2 (none) and 3 (`blocked: true`).
async fn tenant() -> Auth0Mock {
    let mock = Auth0Mock::start().await;
    mock.add_user(USER_1, json!({"plan": "pro-plan-secret"}));
    mock.add_user(USER_2, json!({"plan": "free-plan-secret"}));
    mock.add_user(USER_3, json!({"plan": "pro-plan-secret"}));
    {
        let mut st = mock.state.lock().unwrap();
        st.users.get_mut(USER_1).unwrap()["user_metadata"] = theme();
        st.users.get_mut(USER_2).unwrap().as_object_mut().unwrap().remove("user_metadata");
        st.users.get_mut(USER_3).unwrap()["user_metadata"] = json!({"blocked": true});
    }
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    mock
}

/// The claims of the internal token the upstream received last.
fn last_claims(h: &Harness) -> Value {
    let t = h.last_internal_token().expect("no internal token");
    verify_payload(&t)
}

fn verify_payload(t: &str) -> Value {
    let payload = t.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The `fields` of every user read, in order.
fn user_fields(mock: &Auth0Mock) -> Vec<String> {
    mock.calls()
        .iter()
        .filter(|c| c.endpoint == Endpoint::User)
        .map(|c| c.target.split_once("?fields=").map_or("", |(_, q)| q).to_string())
        .collect()
}

const APP_ONLY: &str = "app_metadata&include_fields=true";
const WITH_USER: &str = "app_metadata,user_metadata&include_fields=true";

/// Routes besides `/api/`: one forwarding some keys, one forwarding all.
const ROUTES: &str = r#"
[[route]]
path_prefix = "/theme/"
upstream = "{upstream}"
audience = "theme-api"
user_metadata = ["theme", "not-there"]

[[route]]
path_prefix = "/all/"
upstream = "{upstream}"
audience = "all-api"
user_metadata = []
"#;

async fn harness(mock: &Auth0Mock, o: &TenantOpts) -> Harness {
    let h = start_harness(mock, o).await;
    for v in ["dark-secret-theme", "fr-secret-locale"] {
        h.add_secret(v);
    }
    h
}

#[tokio::test]
async fn user_metadata_is_read_only_when_a_route_forwards_it() {
    // No route forwards it: the reads stay exactly as they were.
    let mock = tenant().await;
    let h = harness(&mock, &TenantOpts::default()).await;
    for user in [USER_1, USER_2] {
        let r = h.get_with_token("/api/x", &h.issuer.token(user)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let c = last_claims(&h);
        assert!(c.get("user_metadata").is_none(), "{c}");
    }
    assert_eq!(user_fields(&mock), [APP_ONLY, APP_ONLY]);

    // Two routes forward it: every user read asks for it, once per user.
    let mock = tenant().await;
    let h = harness(&mock, &TenantOpts { route_extra: ROUTES, ..TenantOpts::default() }).await;
    let (t1, t2) = (h.issuer.token(USER_1), h.issuer.token(USER_2));
    let expect: [(&str, &str, Option<Value>, Option<Value>); 3] = [
        ("/theme/x", "theme-api", Some(json!({"theme": "dark-secret-theme"})), Some(json!({}))),
        ("/all/x", "all-api", Some(theme()), Some(json!({}))),
        ("/api/x", "orders-api", None, None),
    ];
    let jwks = h.admin_jwks().await;
    for (path, aud, want_1, want_2) in expect {
        for (token, want) in [(&t1, want_1), (&t2, want_2)] {
            let r = h.get_with_token(path, token).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            let c = verify_internal(&h.last_internal_token().unwrap(), &jwks, aud);
            assert_eq!(c.get("user_metadata").cloned(), want, "{path}: {c}");
            assert!(c["app_metadata"]["plan"].is_string(), "app_metadata is still there: {c}");
        }
    }
    assert_eq!(user_fields(&mock), [WITH_USER, WITH_USER], "{}", mock.summary());
}

/// A rule reading user_metadata on a route that does not forward it: the read asks
/// for it all the same (a deny rule over `{}` would never hold), and the token
/// carries none.
#[tokio::test]
async fn a_rule_reads_user_metadata_on_a_route_that_does_not_forward_it() {
    let mock = tenant().await;
    let rule = r#"
[[route.deny]]
name = "self-blocked"
source = "user_metadata"
pointer = "/blocked"
op = "eq"
value = true
"#;
    let h = harness(&mock, &TenantOpts { route_extra: rule, ..TenantOpts::default() }).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_3)).await;
    r.assert_problem(403);
    assert!(r.text().contains("self-blocked"), "{}", r.text());
    for user in [USER_1, USER_2] {
        let r = h.get_with_token("/api/x", &h.issuer.token(user)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(last_claims(&h).get("user_metadata").is_none());
    }
    assert_eq!(h.upstream.requests().len(), 2, "the refused request never reached the upstream");
    assert_eq!(user_fields(&mock), [WITH_USER, WITH_USER, WITH_USER]);
}

/// An http source has no user_metadata: `{}`, and a rule sees nothing resolve.
#[tokio::test]
async fn an_http_source_gives_empty_user_metadata() {
    init();
    let reads = Arc::new(AtomicUsize::new(0));
    let md = serve({
        let reads = reads.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            if req.uri().path().starts_with("/users/") {
                reads.fetch_add(1, SeqCst);
            }
            async move { json_response(StatusCode::OK, &json!({"roles": ["admin"]})) }
        }
    })
    .await;
    let toml = HTTP_SOURCE_TOML.replace("{md}", &md.to_string()).replace("{suffix}", "")
        + "user_metadata = []\n[[route.require]]\nsource = \"user_metadata\"\npointer = \"/theme\"\nop = \"absent\"\n";
    let h = Harness::start_with(&toml, json!({})).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = last_claims(&h);
    assert_eq!(c["user_metadata"], json!({}));
    assert_eq!(c["app_metadata"], json!({"roles": ["admin"]}));
    assert_eq!(reads.load(SeqCst), 1);
}

/// A reload that makes a route forward user_metadata: users cached without it are
/// read again (never forwarded as "none"); one that stops forwarding it needs no read.
#[tokio::test]
async fn a_reload_that_switches_user_metadata_on_reads_users_again() {
    let mock = tenant().await;
    init();
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("auth0-secret", support::auth0::M2M_CLIENT_SECRET),
        ("admin-token", support::auth0::ADMIN_TOKEN),
        ("webhook-token", support::auth0::WEBHOOK_TOKEN),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("claimsmith.toml");
    let write = |route_extra: &'static str| {
        let toml = support::auth0::template(&mock, &TenantOpts { route_extra, ..TenantOpts::default() })
            .replace("{issuer}", &issuer.url)
            .replace("{upstream}", &upstream.url())
            .replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&path, on_this_transport(&toml)).unwrap();
    };
    write("");
    let running = claimsmith::start(claimsmith::load_config(&path).unwrap()).await.unwrap();
    assert!(running.wait_ready(std::time::Duration::from_secs(10)).await);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let upstream = &upstream;
    let get = |sub: &str| {
        let token = issuer.token(sub);
        let req = http::Request::get(format!("http://{}/api/x", running.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let t = upstream.last().headers["x-internal-token"].to_str().unwrap().to_string();
            verify_payload(&t).get("user_metadata").cloned()
        }
    };
    assert_eq!(get(USER_1).await, None);
    assert_eq!(user_fields(&mock), [APP_ONLY]);

    write("user_metadata = [\"theme\"]");
    running.reload().await.unwrap();
    assert_eq!(get(USER_1).await, Some(json!({"theme": "dark-secret-theme"})));
    assert_eq!(get(USER_1).await, Some(json!({"theme": "dark-secret-theme"})));
    assert_eq!(user_fields(&mock), [APP_ONLY, WITH_USER], "read again once, with user_metadata");

    // Off again: what is held serves (app_metadata is the same), no read.
    write("");
    running.reload().await.unwrap();
    assert_eq!(get(USER_1).await, None);
    assert_eq!(user_fields(&mock), [APP_ONLY, WITH_USER]);
    running.shutdown(std::time::Duration::from_secs(2)).await;
}

/// A pushed `user.updated` event carries the user's user_metadata: held with the
/// app_metadata, so the next request reads nothing. An event without it leaves the
/// user_metadata unknown: the next request reads the user again.
#[tokio::test]
async fn a_pushed_change_carries_user_metadata_along() {
    let mock = tenant().await;
    let o = TenantOpts { webhooks: true, route_extra: "user_metadata = []", ..TenantOpts::default() };
    let h = harness(&mock, &o).await;
    let get = |sub: &'static str| {
        let h = &h;
        async move {
            let r = h.get_with_token("/api/x", &h.issuer.token(sub)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            last_claims(h)
        }
    };
    assert_eq!(get(USER_1).await["user_metadata"], theme());
    assert_eq!(mock.count(Endpoint::User), 1);

    let changed = json!({"theme": "light-secret-theme"});
    h.add_secret("light-secret-theme");
    mock.state.lock().unwrap().users.get_mut(USER_1).unwrap()["user_metadata"] = changed.clone();
    assert_eq!(mock.update_app_metadata(USER_1, json!({"plan": "enterprise-secret"})).await, StatusCode::NO_CONTENT);
    let c = get(USER_1).await;
    assert_eq!((&c["app_metadata"], &c["user_metadata"]), (&json!({"plan": "enterprise-secret"}), &changed));
    assert_eq!(mock.count(Endpoint::User), 1, "the pushed value was used: {}", mock.summary());

    // A profile without user_metadata says nothing about it.
    mock.state.lock().unwrap().users.get_mut(USER_1).unwrap().as_object_mut().unwrap().remove("user_metadata");
    assert_eq!(mock.update_app_metadata(USER_1, json!({"plan": "team-secret"})).await, StatusCode::NO_CONTENT);
    let c = get(USER_1).await;
    assert_eq!((&c["app_metadata"], &c["user_metadata"]), (&json!({"plan": "team-secret"}), &json!({})));
    assert_eq!(user_fields(&mock), [WITH_USER, WITH_USER], "read again: {}", mock.summary());
}
