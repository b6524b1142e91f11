//! Forward-auth (docs/forward-auth.md) end to end: the checked request named in each
//! ingress's headers, the same verification, metadata and rules as a proxied
//! request, the internal token in the answer, every refusal kind, `no-store` on
//! every answer, and the upstream never contacted. `tests/nginx_auth_request.rs`
//! puts a real nginx in front.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// The default test config, a route only the `pro` plan may call, and the
/// forward-auth listener.
fn template(extra: &str) -> String {
    format!(
        r#"{DEFAULT_TOML}
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
{extra}
"#
    )
}

async fn start(extra: &str) -> Harness {
    Harness::start_with(&template(extra), default_metadata()).await
}

/// A check to the forward-auth listener, with the check's own method and path.
async fn check(h: &Harness, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    let addr = h.proxy.forward_auth_addr.expect("the forward-auth listener is up");
    let r = h.send(method, &format!("http://{addr}{path}"), headers, Bytes::new()).await;
    assert_eq!(r.header("cache-control"), Some("no-store"), "every answer is no-store: {}", r.status);
    assert!(r.header("x-request-id").is_some());
    r
}

/// The headers of one ingress style describing `method` `uri`.
fn described<'a>(style: &str, method: &'a str, uri: &'a str, url: &'a str) -> Vec<(&'static str, &'a str)> {
    match style {
        "nginx" => vec![("x-original-method", method), ("x-original-uri", uri)],
        "ingress-nginx" => vec![("x-original-method", method), ("x-original-url", url)],
        "traefik" => vec![("x-forwarded-method", method), ("x-forwarded-uri", uri)],
        _ => unreachable!(),
    }
}

fn assert_allowed(h: &Harness, r: &Resp, jwks: &Value, sub: &str) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.body.is_empty(), "an allowed check has an empty body");
    assert_eq!(r.header("x-claimsmith-sub"), Some(sub));
    assert_eq!(r.header("x-claimsmith-client"), Some(CLIENT_1));
    let token = r.header("x-internal-token").expect("the internal token is in token.header");
    let claims = verify_internal(token, jwks, INTERNAL_AUD);
    assert_eq!(claims["sub"], sub);
    assert!(h.upstream.saw_nothing(), "a check never reaches the upstream");
    claims
}

#[tokio::test]
async fn each_ingress_style_gets_the_internal_token_for_the_checked_request() {
    let h = start("").await;
    let jwks = h.admin_jwks().await;
    let token = h.issuer.token(USER_1);
    let bearer = format!("Bearer {token}");
    for style in ["nginx", "ingress-nginx", "traefik"] {
        let mut headers = described(style, "POST", "/reports/q3?x=1", "https://shop.test/reports/q3?x=1");
        headers.push(("authorization", &bearer));
        // The check itself is a GET to some path of the ingress's choosing.
        let r = check(&h, Method::GET, "/auth", &headers).await;
        let claims = assert_allowed(&h, &r, &jwks, USER_1);
        assert_eq!(claims["app_metadata"]["plan"], "pro", "{style}");
        assert_eq!(claims["client_metadata"]["region"], "eu");
    }
    // Envoy ext_authz: the check's own method and path are the original request's.
    let r = check(&h, Method::DELETE, "/reports/q3", &[("authorization", &bearer)]).await;
    assert_allowed(&h, &r, &jwks, USER_1);
    // The token may come from the token cookie too.
    let cookie = format!("id_token={token}");
    let r = check(&h, Method::GET, "/api/orders", &[("cookie", &cookie)]).await;
    assert_allowed(&h, &r, &jwks, USER_1);
}

#[tokio::test]
async fn refusals_are_what_a_proxied_request_gets() {
    let h = start("").await;
    let user2 = format!("Bearer {}", h.issuer.token(USER_2));
    let user1 = format!("Bearer {}", h.issuer.token(USER_1));
    let nginx = |uri: &'static str| vec![("x-original-method", "GET"), ("x-original-uri", uri)];

    // No token: 401 with the challenge, as the proxy answers.
    let r = check(&h, Method::GET, "/auth", &nginx("/api/x")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    r.assert_problem(401);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert!(r.header("x-internal-token").is_none() && r.header("x-claimsmith-sub").is_none());
    let proxied = h.get("/api/x", &[]).await;
    assert_eq!((proxied.status, proxied.json()), (r.status, r.json()), "the same refusal as the proxy's");

    // A bad token.
    let mut headers = nginx("/api/x");
    headers.push(("authorization", "Bearer not.a.token"));
    let r = check(&h, Method::GET, "/auth", &headers).await;
    r.assert_invalid_token();

    // A rule: 403, the rule named, no value.
    let mut headers = nginx("/reports/q3");
    headers.push(("authorization", &user2));
    let r = check(&h, Method::GET, "/auth", &headers).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    r.assert_problem(403);
    assert!(r.header("www-authenticate").is_some_and(|v| v.contains("insufficient_scope")));
    assert!(r.text().contains("pro-plan") && !r.text().contains("\"pro\""));
    assert!(r.header("x-internal-token").is_none());

    // No route.
    let mut headers = nginx("/nowhere");
    headers.push(("authorization", &user1));
    let r = check(&h, Method::GET, "/auth", &headers).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.assert_problem(404);

    // A path the proxy refuses is refused alike.
    let mut headers = nginx("/api/%2e%2e/%2e%2e/etc");
    headers.push(("authorization", &user1));
    let r = check(&h, Method::GET, "/auth", &headers).await;
    let proxied = h.get_with_token("/api/%2e%2e/%2e%2e/etc", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, proxied.status);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Descriptions that are incomplete, malformed or contradict each other: 400.
    let bad: &[&[(&str, &str)]] = &[
        &[("x-original-method", "GET")],
        &[("x-original-uri", "/api/x")],
        &[("x-forwarded-method", "GET")],
        &[("x-forwarded-uri", "/api/x")],
        &[("x-original-method", "GET"), ("x-original-uri", "http://other.test/api/x")],
        &[("x-original-method", "GET"), ("x-original-uri", "api/x")],
        &[("x-original-method", "GET"), ("x-original-url", "/api/x")],
        &[("x-original-method", "GET"), ("x-original-uri", "/public/"), ("x-original-url", "https://a.test/api/x")],
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/x"),
        ],
    ];
    for headers in bad {
        let mut headers = headers.to_vec();
        headers.push(("authorization", &user1));
        let r = check(&h, Method::GET, "/auth", &headers).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{headers:?}");
        r.assert_problem(400);
        assert!(r.header("x-internal-token").is_none());
    }
    assert!(h.upstream.saw_nothing(), "no check reaches the upstream");
}

#[tokio::test]
async fn open_routes_answer_200_without_a_token() {
    let h = start("").await;
    let jwks = h.admin_jwks().await;
    let nginx = |uri: &'static str| vec![("x-original-method", "GET"), ("x-original-uri", uri)];
    // auth = "off": allowed, no token, whatever the caller sends.
    let r = check(&h, Method::GET, "/auth", &nginx("/public/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("x-internal-token").is_none() && r.header("x-claimsmith-sub").is_none());
    // auth = "optional" without a token: allowed, no token; with one: the token.
    let r = check(&h, Method::GET, "/auth", &nginx("/optional/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("x-internal-token").is_none());
    let bearer = format!("Bearer {}", h.issuer.token(USER_1));
    let mut headers = nginx("/optional/x");
    headers.push(("authorization", &bearer));
    let r = check(&h, Method::GET, "/auth", &headers).await;
    assert_allowed(&h, &r, &jwks, USER_1);
}

#[tokio::test]
async fn metadata_unavailable_is_503_with_retry_after() {
    init();
    // A source that cannot be reached: the metadata phase fails, as it would when
    // proxying.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let md = closed.local_addr().unwrap();
    drop(closed);
    let toml = HTTP_SOURCE_TOML.replace("{md}", &md.to_string()).replace("{suffix}", "")
        + "\n[forward_auth]\naddr = \"127.0.0.1:0\"\n";
    let h = Harness::start_with(&toml, json!({})).await;
    let bearer = format!("Bearer {}", h.issuer.token(USER_1));
    let headers = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/api/x"), ("authorization", &bearer)];
    let r = check(&h, Method::GET, "/", &headers).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    r.assert_problem(503);
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()));
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn a_pinned_style_refuses_the_others() {
    let h = start("headers = \"envoy\"").await;
    let bearer = format!("Bearer {}", h.issuer.token(USER_1));
    // Behind Envoy nothing sets X-Original-*; a client that adds them is refused.
    let r = check(
        &h,
        Method::GET,
        "/reports/q3",
        &[("x-original-method", "GET"), ("x-original-uri", "/public/"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = check(&h, Method::GET, "/reports/q3", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::OK);

    let h = start("headers = \"traefik\"").await;
    // Traefik sets X-Forwarded-*; X-Original-* a client added is not read.
    let headers = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/q3"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/public/"),
    ];
    let r = check(&h, Method::GET, "/", &headers).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the protected path was checked");
}

#[tokio::test]
async fn the_proxy_listener_never_answers_checks() {
    let h = start("").await;
    // On the proxy listener the headers describe nothing: the request's own path is
    // what is authorized (and proxied).
    let r = h.get("/api/x", &[("x-original-method", "GET"), ("x-original-uri", "/public/")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(h.upstream.saw_nothing());
    // Without [forward_auth] there is no such listener.
    let plain = Harness::start().await;
    assert!(plain.proxy.forward_auth_addr.is_none());
}

#[tokio::test]
async fn checks_are_counted_with_their_mode() {
    let h = start("").await;
    let bearer = format!("Bearer {}", h.issuer.token(USER_1));
    let headers = [("x-original-method", "GET"), ("x-original-uri", "/api/x"), ("authorization", &bearer)];
    for _ in 0..3 {
        assert_eq!(check(&h, Method::GET, "/auth", &headers).await.status, StatusCode::OK);
    }
    let denied = [("x-original-method", "GET"), ("x-original-uri", "/reports/"), ("authorization", "")];
    check(&h, Method::GET, "/auth", &denied).await;
    h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    let proxied = "claimsmith_requests_total{route=\"/api/\",status=\"200\"} 1";
    let m = h.metrics_with(proxied).await;
    assert!(m.contains("claimsmith_requests_total{route=\"/api/\",status=\"200\",mode=\"forward_auth\"} 3"), "{m}");
    assert!(m.contains("claimsmith_requests_total{route=\"/reports/\",status=\"401\",mode=\"forward_auth\"} 1"), "{m}");
    assert!(m.contains(proxied), "{m}");
}
