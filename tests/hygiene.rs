//! docs/security.md, "Hostile client: paths and headers": what the upstream receives, what the client gets back,
//! path normalisation, and the shape of error answers.

mod support;

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use support::*;

/// Header names of `h` in canonical form (lower case, `_` as `-`).
fn canonical_names(h: &HeaderMap) -> Vec<String> {
    h.keys().map(|k| k.as_str().to_ascii_lowercase().replace('_', "-")).collect()
}

fn count_canonical(h: &HeaderMap, name: &str) -> usize {
    canonical_names(h).iter().filter(|n| *n == name).count()
}

fn host(h: &Harness) -> String {
    h.proxy.proxy_addr.to_string()
}

/// A raw GET with extra header lines (each "Name: value").
fn raw_get(h: &Harness, path: &str, lines: &[&str]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", host(h));
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Asserts a problem answer carrying no token and no metadata value.
fn assert_clean_problem(r: &Resp, status: u16, tokens: &[&str]) {
    r.assert_problem(status);
    let all = format!("{}{:?}", r.text(), r.headers);
    for s in [TENANT_KEY, USER_NOTE, "pro", "admin", "eu"].iter().chain(tokens) {
        if s.len() >= 6 {
            assert!(!all.contains(s), "the {status} answer holds a secret value");
        }
    }
    for k in ["app_metadata", "client_metadata", "tenant_key"] {
        assert!(!all.contains(k), "the {status} answer mentions {k}");
    }
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

// ---------------------------------------------------------------------------
// Step 6: the request

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let h = Harness::start().await;
    let req = raw_get(
        &h,
        "/public/x",
        &[
            "Connection: keep-alive, X-Hop-Secret",
            "Keep-Alive: timeout=5, max=100",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==",
            "Proxy-Connection: keep-alive",
            "Proxy-Authenticate: Basic",
            "X-Hop-Secret: do-not-forward",
            "X-Kept: yes",
        ],
    );
    let r = h.raw(&req).await.expect("no answer");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    let names = canonical_names(&seen.headers);
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "proxy-authenticate",
        "x-hop-secret",
        "upgrade",
    ] {
        assert!(!names.iter().any(|n| n == gone), "{gone} reached the upstream: {names:?}");
    }
    assert_eq!(seen.headers.get("x-kept").unwrap(), "yes");
}

#[tokio::test]
async fn transfer_encoding_is_not_passed_through() {
    let h = Harness::start().await;
    let req = format!(
        "POST /public/upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        host(&h)
    );
    let r = h.raw(req.as_bytes()).await.expect("no answer");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.body.as_ref(), b"hello world");
    // Only the framing claimsmith's own client chose may appear.
    let te: Vec<_> = seen.headers.get_all("transfer-encoding").iter().collect();
    assert!(te.len() <= 1 && te.iter().all(|v| *v == "chunked"), "{te:?}");
    assert!(te.is_empty() || !seen.headers.contains_key("content-length"), "both framings upstream");
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_is_removed() {
    let h = Harness::start().await;
    let req = raw_get(&h, "/public/ws", &["Upgrade: websocket", "Sec-WebSocket-Version: 13"]);
    let r = h.raw(&req).await.expect("no answer");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert!(seen.headers.get("upgrade").is_none(), "Upgrade reached the upstream");
    assert!(seen.headers.get("connection").is_none(), "Connection reached the upstream");
}

#[tokio::test]
async fn headers_named_in_connection_are_removed() {
    let h = Harness::start().await;
    let req = raw_get(
        &h,
        "/public/x",
        &[
            "Connection: X-One, x_two",
            "Connection: X-THREE",
            "X-One: 1",
            "X-Two: 2",
            "x_two: 2b",
            "x-three: 3",
            "X-Four: 4",
        ],
    );
    assert_eq!(h.raw(&req).await.expect("no answer").status, 200);
    let seen = h.upstream.last();
    let names = canonical_names(&seen.headers);
    for gone in ["connection", "x-one", "x-two", "x-three"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} reached the upstream: {names:?}");
    }
    assert_eq!(seen.headers.get("x-four").unwrap(), "4");
}

#[tokio::test]
async fn client_authorization_never_reaches_the_upstream_on_any_route() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let bearer = format!("Bearer {t}");
    for (path, auth) in [
        ("/api/x", bearer.as_str()),
        ("/optional/x", bearer.as_str()),
        ("/optional/x", "Basic dXNlcjpwYXNzd29yZA=="),
        ("/public/x", bearer.as_str()),
        ("/public/x", "Basic dXNlcjpwYXNzd29yZA=="),
        ("/public/x", "Bearer not-even-a-jwt-but-secret"),
    ] {
        let r = h.get(path, &[("authorization", auth), ("x-kept", "1")]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let seen = h.upstream.last();
        assert!(seen.headers.get("authorization").is_none(), "{path}: Authorization forwarded");
        for v in seen.headers.values() {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(!v.contains(&t) && !v.contains("dXNlcjpwYXNzd29yZA"), "{path}: client credential forwarded");
        }
        assert!(seen.headers.contains_key("x-kept"));
    }
    // Case and underscore variants of the name, through a raw client.
    let req = raw_get(&h, "/public/y", &["AUTHORIZATION: Bearer raw-secret-credential", "X-Kept: 1"]);
    assert_eq!(h.raw(&req).await.unwrap().status, 200);
    assert!(h.upstream.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn token_cookie_never_reaches_the_upstream_on_any_route() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    for path in ["/api/x", "/optional/x", "/public/x"] {
        let r = h.get(path, &[("cookie", &format!("a=1; id_token={t}; b=2"))]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(h.upstream.last().headers.get("cookie").unwrap(), "a=1; b=2", "{path}");
        let r = h.get(path, &[("cookie", &format!("id_token={t}"))]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(h.upstream.last().headers.get("cookie").is_none(), "{path}: token cookie forwarded");
    }
    // Several Cookie lines, spaces around the name: still removed.
    let req = raw_get(&h, "/public/z", &["Cookie: a=1", &format!("Cookie: id_token = {t}"), "Cookie: b=2"]);
    h.add_secret(&t);
    assert_eq!(h.raw(&req).await.unwrap().status, 200);
    let seen = h.upstream.last();
    for v in seen.headers.get_all("cookie") {
        assert!(!v.to_str().unwrap().contains(&t), "token cookie forwarded: {v:?}");
    }
}

#[tokio::test]
async fn client_copies_of_the_token_header_are_removed() {
    let h = Harness::start().await;
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.forged";
    let variants = [
        "x-internal-token",
        "X-INTERNAL-TOKEN",
        "X_Internal_Token",
        "x_internal-token",
        "X-Internal_Token",
        "x_internal_token",
    ];
    let lines: Vec<String> = variants.iter().map(|v| format!("{v}: {forged}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    // On an auth = "off" route: none of them may arrive.
    let r = h.raw(&raw_get(&h, "/public/x", &lines)).await.expect("no answer");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(count_canonical(&seen.headers, "x-internal-token"), 0, "{:?}", seen.headers);
    // On an optional route without a token: none either.
    h.raw(&raw_get(&h, "/optional/x", &lines)).await.expect("no answer");
    assert_eq!(count_canonical(&h.upstream.last().headers, "x-internal-token"), 0);
    // With a valid token: exactly one, claimsmith's own.
    let auth = format!("Authorization: Bearer {}", h.issuer.token(USER_1));
    let mut with_auth = lines.clone();
    with_auth.push(&auth);
    let r = h.raw(&raw_get(&h, "/api/x", &with_auth)).await.expect("no answer");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(count_canonical(&seen.headers, "x-internal-token"), 1, "{:?}", seen.headers.keys());
    let internal = seen.headers.get("x-internal-token").unwrap().to_str().unwrap();
    assert_ne!(internal, forged);
    verify_internal(internal, &h.admin_jwks().await, INTERNAL_AUD);
}

#[tokio::test]
async fn x_forwarded_headers_are_set_and_client_values_replaced() {
    let h = Harness::start().await;
    let req = raw_get(
        &h,
        "/public/x",
        &[
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example",
            "X_Forwarded_For: 7.7.7.7",
            "X-Forwarded-Port: 443",
            "Forwarded: for=6.6.6.6;proto=https",
        ],
    );
    assert_eq!(h.raw(&req).await.unwrap().status, 200);
    let seen = h.upstream.last();
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, ["127.0.0.1"], "XFF");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), host(&h).as_str());
    let names = canonical_names(&seen.headers);
    assert_eq!(names.iter().filter(|n| *n == "x-forwarded-for").count(), 1, "{names:?}");
    assert!(!names.iter().any(|n| n == "x-forwarded-port" || n == "forwarded"), "{names:?}");
    // Without any from the client, they are set too.
    let r = h.get("/public/y", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = h.upstream.last();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), host(&h).as_str());
}

#[tokio::test]
async fn x_forwarded_headers_are_appended_for_a_trusted_proxy() {
    let toml = Harness::template_with_listen("trusted_proxies = [\"127.0.0.1/32\"]");
    let h = Harness::start_with(&toml, default_metadata()).await;
    let r = h
        .get(
            "/public/x",
            &[
                ("x-forwarded-for", "6.6.6.6, 10.0.0.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = h.upstream.last();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.0.0.1, 127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), "app.example");
    // Without prior values the trusted peer is simply recorded.
    h.get("/public/y", &[]).await;
    assert_eq!(h.upstream.last().headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    // The client's credentials still never pass, trusted or not.
    h.get("/public/z", &[("authorization", "Bearer trusted-peer-secret-value")]).await;
    assert!(h.upstream.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn x_request_id_is_kept_when_sent() {
    let h = Harness::start().await;
    let r = h.get("/public/x", &[("x-request-id", "req-abc-123")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.last().headers.get("x-request-id").unwrap(), "req-abc-123");
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    // Kept on an authenticated route and on refusals too.
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.get("/api/x", &[("x-request-id", "req-refused-1")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("x-request-id"), Some("req-refused-1"));
}

#[tokio::test]
async fn x_request_id_is_generated_when_missing() {
    let h = Harness::start().await;
    let r1 = h.get("/public/x", &[]).await;
    let id1 = h.upstream.last().headers.get("x-request-id").expect("no request id upstream").clone();
    assert!(!id1.is_empty());
    assert_eq!(r1.header("x-request-id"), Some(id1.to_str().unwrap()));
    h.get("/public/x", &[]).await;
    let id2 = h.upstream.last().headers.get("x-request-id").unwrap().clone();
    assert_ne!(id1, id2, "request ids repeat");
    // A client value that is not a sane id is replaced, not forwarded.
    let long = "x".repeat(300);
    h.get("/public/x", &[("x-request-id", &long)]).await;
    let id3 = h.upstream.last().headers.get("x-request-id").unwrap().clone();
    assert_ne!(id3.to_str().unwrap(), long);
    assert_eq!(h.upstream.last().headers.get_all("x-request-id").iter().count(), 1);
}

// ---------------------------------------------------------------------------
// Step 7: the response

#[tokio::test]
async fn upstream_hop_by_hop_and_echoed_token_headers_are_removed() {
    let h = Harness::start().await;
    h.upstream.behavior.lock().unwrap().extra_headers = vec![
        ("x-internal-token".into(), "echoed-internal-token-value".into()),
        ("X_Internal_Token".into(), "echoed-internal-token-value-2".into()),
        ("x_internal-token".into(), "echoed-internal-token-value-3".into()),
        ("connection".into(), "x-up-hop".into()),
        ("x-up-hop".into(), "hop".into()),
        ("keep-alive".into(), "timeout=5".into()),
        ("proxy-authenticate".into(), "Basic realm=\"up\"".into()),
        ("proxy-connection".into(), "keep-alive".into()),
        ("trailer".into(), "x-checksum".into()),
        ("upgrade".into(), "h2c".into()),
        ("x-custom".into(), "v1".into()),
        ("set-cookie".into(), "s=1; HttpOnly".into()),
        ("cache-control".into(), "private, max-age=5".into()),
    ];
    for r in [h.get_with_token("/api/x", &h.issuer.token(USER_1)).await, h.get("/public/x", &[]).await] {
        assert_eq!(r.status, StatusCode::OK);
        let names = canonical_names(&r.headers);
        for gone in [
            "x-internal-token",
            "x-up-hop",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "trailer",
            "upgrade",
        ] {
            assert!(!names.iter().any(|n| n == gone), "{gone} reached the client: {names:?}");
        }
        assert!(!r.text().is_empty());
        assert!(r.headers.get("connection").is_none_or(|v| v != "x-up-hop"));
        // Everything else unchanged.
        assert_eq!(r.header("x-custom"), Some("v1"));
        assert_eq!(r.header("set-cookie"), Some("s=1; HttpOnly"));
        assert_eq!(r.header("cache-control"), Some("private, max-age=5"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["upstream"], "ok");
    }
}

#[tokio::test]
async fn upstream_status_and_body_pass_back_unchanged() {
    let h = Harness::start().await;
    h.upstream.behavior.lock().unwrap().status = Some(StatusCode::IM_A_TEAPOT);
    let r = h.get("/public/x?q=1", &[]).await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(r.json(), json!({"upstream": "ok", "n": 1, "path": "/public/x", "body_len": 0}));
    assert_eq!(h.upstream.last().uri, "/public/x?q=1");
}

// ---------------------------------------------------------------------------
// Step 1: the path

#[tokio::test]
async fn dot_segments_cannot_bypass_authentication() {
    let h = Harness::start().await;
    for path in [
        "/public/../api/x",
        "/public/./../api/x",
        "/public/%2e%2e/api/x",
        "/public/%2E./api/x",
        "/public/x/../../api/x",
    ] {
        let r = h.get(path, &[]).await;
        r.assert_problem(401);
        // Through a raw client too, in case a client library would resolve it first.
        let r = h.raw(&raw_get(&h, path, &[])).await.expect("no answer");
        assert_eq!(r.status, 401, "{path}");
    }
    assert!(h.upstream.saw_nothing());
    let r = h.get_with_token("/public/../api/x?y=1", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.last().uri, "/api/x?y=1", "forwarded as normalised");
}

async fn assert_bad_path(h: &Harness, path: &str) {
    let r = h.raw(&raw_get(h, path, &[])).await.unwrap_or_else(|| panic!("{path}: no answer"));
    let r = r.to_resp();
    assert_eq!(r.status.as_u16(), 400, "{path}: {}", r.text());
    r.assert_problem(400);
}

#[tokio::test]
async fn encoded_slash_is_400() {
    let h = Harness::start().await;
    for p in ["/public%2F..%2Fapi/x", "/public/..%2Fapi/x", "/public/..%2fapi/x", "/api%2Fx", "/public/a%2Fb"] {
        assert_bad_path(&h, p).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn backslash_encoded_or_literal_is_400() {
    let h = Harness::start().await;
    for p in ["/public/..%5Capi/x", "/public/..%5capi/x", "/public\\..\\api\\x", "/public/a\\b"] {
        assert_bad_path(&h, p).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn nul_is_400() {
    let h = Harness::start().await;
    for p in ["/public/x%00", "/public/%00/../api/x", "/api/x%00.json"] {
        assert_bad_path(&h, p).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn climbing_above_the_root_is_400() {
    let h = Harness::start().await;
    for p in ["/..", "/../public/x", "/public/../../public/x", "/public/%2e%2e/%2e%2e/x", "/./../x"] {
        assert_bad_path(&h, p).await;
    }
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// Error answers

#[tokio::test]
async fn error_401_bodies_are_problems_without_tokens() {
    let h = Harness::start().await;
    let r = h.get("/api/x", &[]).await;
    assert_clean_problem(&r, 401, &[]);
    let mut c = h.issuer.claims(USER_1);
    c["exp"] = json!(now() - 3600);
    let expired = h.issuer.sign(&h.issuer.rsa, &c);
    let r = h.get_with_token("/api/x", &expired).await;
    r.assert_invalid_token();
    assert_clean_problem(&r, 401, &[&expired, expired.split('.').nth(1).unwrap()]);
    // A user the source does not know: the answer names nothing about metadata.
    let t = h.issuer.token("auth0|nobody");
    let r = h.get_with_token("/api/x", &t).await;
    r.assert_invalid_token();
    assert_clean_problem(&r, 401, &[&t, "auth0|nobody"]);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn error_404_body_is_a_problem() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let r = h.get_with_token("/nowhere/x", &t).await;
    assert_clean_problem(&r, 404, &[&t]);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn error_502_when_the_upstream_is_unreachable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = format!(
        "{DEFAULT_TOML}\n[[route]]\npath_prefix = \"/dead/\"\nupstream = \"http://{closed}\"\naudience = \"orders-api\"\n"
    );
    let h = Harness::start_with(&toml, default_metadata()).await;
    let t = h.issuer.token(USER_1);
    // Authenticated and enriched, then the upstream is gone.
    let r = h.get_with_token("/dead/x", &t).await;
    assert_clean_problem(&r, 502, &[&t]);
    assert!(r.header("www-authenticate").is_none());
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn error_504_when_the_upstream_answers_too_late() {
    let toml = Harness::template_with_listen("request_timeout = \"300ms\"");
    let h = Harness::start_with(&toml, default_metadata()).await;
    h.upstream.behavior.lock().unwrap().delay = Some(Duration::from_secs(3));
    let t = h.issuer.token(USER_1);
    let r = h.get_with_token("/api/x", &t).await;
    assert_clean_problem(&r, 504, &[&t]);
    // This rule is about the upstream: it did get the request, with the internal
    // token, and the client still learns nothing of it.
    let internal = h.last_internal_token().expect("the upstream got no internal token");
    assert!(!r.text().contains(&internal));
}

#[tokio::test]
async fn header_section_over_max_header_bytes_is_431() {
    let h = Harness::start().await;
    // Just over the default 32768: claimsmith's own answer.
    let big = "v".repeat(32_800);
    let r = h.get("/public/x", &[("x-big", &big)]).await;
    assert_clean_problem(&r, 431, &[]);
    // Many headers adding up past it.
    let vals: Vec<String> = (0..40).map(|i| format!("{i}{}", "w".repeat(900))).collect();
    let hdrs: Vec<(String, &str)> = vals.iter().enumerate().map(|(i, v)| (format!("x-h{i}"), v.as_str())).collect();
    let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let r = h.get("/public/x", &hdrs).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Far over it: refused before parsing completes.
    let huge = "v".repeat(100_000);
    let r = h.raw(&raw_get(&h, "/public/x", &[&format!("X-Huge: {huge}")])).await;
    if let Some(r) = r {
        assert_eq!(r.status, 431);
    }
    assert!(h.upstream.saw_nothing());
    // Control: below the limit passes.
    let r = h.get("/public/x", &[("x-big", &"v".repeat(30_000))]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn method_and_body_of_refused_requests_never_reach_the_upstream() {
    let h = Harness::start().await;
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let r = h.send(m, &h.proxy_url("/api/x"), &[], bytes::Bytes::from_static(b"{\"a\":1}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert!(h.upstream.saw_nothing());
}
