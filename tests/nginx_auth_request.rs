//! A real nginx in front of a test upstream, asking claimsmith's forward-auth
//! listener about every request through `auth_request`, configured by the example
//! in deploy/nginx/auth_request.conf: a valid ID token reaches the upstream as the internal
//! token (and only as it), a missing one gets 401, a rule 403, and a client cannot
//! have another path checked than the one it calls.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::nginx::Nginx;
use support::*;

/// The default test config with the token in `Authorization: Bearer …` (the
/// default `token.header`), a `pro`-only route and the forward-auth listener.
fn template() -> String {
    let base = DEFAULT_TOML.replace("header = \"x-internal-token\"\n", "");
    assert_ne!(base, DEFAULT_TOML, "the test template names its token header");
    format!(
        r#"{base}
[[route]]
path_prefix = "/reports/"
upstream = "{{upstream}}"
audience = "orders-api"
[[route.require]]
name = "pro-plan"
source = "app_metadata"
pointer = "/plan"
op = "eq"
value = "pro"

[forward_auth]
addr = "127.0.0.1:0"
"#
    )
}

/// deploy/nginx/auth_request.conf as shipped, pointed at the test's claimsmith and
/// upstream and listening on the test's port: the test proves the example.
fn server(port: u16, forward_auth: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/auth_request.conf");
    let mut conf = std::fs::read_to_string(path).expect("deploy/nginx/auth_request.conf");
    for (from, to) in [
        ("server claimsmith.internal:8081;", format!("server {forward_auth};")),
        ("server app.internal:8080;", format!("server {upstream};")),
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
    ] {
        assert!(conf.contains(from), "the example no longer has `{from}`");
        conf = conf.replace(from, &to);
    }
    conf
}

async fn setup() -> (Harness, Nginx) {
    let h = Harness::start_with(&template(), default_metadata()).await;
    let fa = h.proxy.forward_auth_addr.expect("forward-auth listener");
    let upstream = h.upstream.addr;
    let nginx = tokio::task::spawn_blocking(move || Nginx::start(|port, _| server(port, fa, upstream))).await.unwrap();
    (h, nginx)
}

async fn via_nginx(h: &Harness, nginx: &Nginx, path: &str, headers: &[(&str, &str)]) -> Resp {
    h.send(Method::GET, &nginx.url(path), headers, Bytes::new()).await
}

#[tokio::test]
async fn nginx_auth_request_puts_claimsmith_in_front_of_the_upstream() {
    let (h, nginx) = setup().await;
    let jwks = h.admin_jwks().await;
    let id_token = h.issuer.token(USER_1);
    let bearer = format!("Bearer {id_token}");

    // A valid token: the upstream gets the internal token, never the ID token.
    let r = via_nginx(&h, &nginx, "/api/orders?page=2", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), nginx.log());
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/api/orders?page=2");
    let auth = seen.headers.get("authorization").expect("the upstream got the internal token").to_str().unwrap();
    let internal = auth.strip_prefix("Bearer ").expect("as a bearer token");
    assert_ne!(internal, id_token);
    let claims = verify_internal(internal, &jwks, INTERNAL_AUD);
    assert_eq!(claims["sub"], USER_1);
    assert_eq!(claims["client_metadata"]["region"], "eu");
    assert_eq!(seen.headers.get("x-claimsmith-sub").map(|v| v.to_str().unwrap()), Some(USER_1));
    assert!(seen.headers.values().all(|v| !v.to_str().unwrap_or_default().contains(&id_token)));

    // The rule's route: user 1 (pro) passes, user 2 gets 403 and nothing reaches the
    // upstream.
    let r = via_nginx(&h, &nginx, "/reports/q3", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let before = h.upstream.requests().len();
    let user2 = format!("Bearer {}", h.issuer.token(USER_2));
    let r = via_nginx(&h, &nginx, "/reports/q3", &[("authorization", &user2)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", nginx.log());
    assert_eq!(h.upstream.requests().len(), before, "a refused request never reaches the upstream");

    // No token: 401, and nginx passes the challenge on.
    let r = via_nginx(&h, &nginx, "/api/orders", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{:?}", r.headers);
    let r = via_nginx(&h, &nginx, "/api/orders", &[("authorization", "Bearer not.a.jwt")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.upstream.requests().len(), before);

    // An open route: the ID token a client sends is not passed on either.
    let r = via_nginx(&h, &nginx, "/public/x", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.upstream.last().headers.get("authorization").is_none());
}

/// What a client behind nginx might try: describe a public path in headers nginx
/// does not set, or hide the protected path behind dot segments.
#[tokio::test]
async fn a_client_behind_nginx_cannot_choose_what_is_checked() {
    let (h, nginx) = setup().await;
    let injected =
        [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x"), ("x-original-url", "http://a/public/")];
    for i in 0..injected.len() {
        let r = via_nginx(&h, &nginx, "/api/orders", &injected[i..=i]).await;
        assert!(!r.status.is_success(), "{:?} let an unauthenticated request through", injected[i]);
    }
    let r = via_nginx(&h, &nginx, "/api/orders", &injected).await;
    assert!(!r.status.is_success());
    let r = via_nginx(&h, &nginx, "/public/../api/orders", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", nginx.log());
    let r = via_nginx(&h, &nginx, "/public/%2e%2e/api/orders", &[]).await;
    assert!(!r.status.is_success(), "{}", r.status);
    assert!(h.upstream.saw_nothing(), "nothing unauthenticated reached the upstream");
}
