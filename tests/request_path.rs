//! The verified request path end to end: a valid ID token
//! reaches the upstream as an internal token that verifies against the admin JWKS.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test]
async fn valid_id_token_is_forwarded_with_an_internal_token() {
    let h = Harness::start().await;
    let id_token = h.issuer.token(USER_1);
    let r = h.get_with_token("/api/orders?x=1", &id_token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["upstream"], "ok");

    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/api/orders?x=1");
    // The client's ID token never reaches the upstream, in any header.
    for (name, v) in &seen.headers {
        assert!(
            !v.as_bytes().windows(id_token.len()).any(|w| w == id_token.as_bytes()),
            "ID token forwarded in {name}"
        );
    }
    assert!(seen.headers.get("authorization").is_none());

    let internal = h.last_internal_token().expect("no internal token");
    let jwks = h.admin_jwks().await;
    let claims = verify_internal(&internal, &jwks, INTERNAL_AUD);
    assert_eq!(claims["iss"], TOKEN_ISSUER);
    assert_eq!(claims["aud"], INTERNAL_AUD);
    assert_eq!(claims["sub"], USER_1);
    assert_eq!(claims["client_id"], CLIENT_1);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert!(iat <= now() + 1 && exp > iat && exp <= iat + 300, "iat {iat} exp {exp}");
    assert_eq!(claims["email"], "u1@example.com");
    assert_eq!(claims["name"], "User One");
    assert_eq!(claims["app_metadata"], json!({"roles": ["admin"], "plan": "pro", "note": USER_NOTE}));
    assert_eq!(claims["client_metadata"], json!({"tenant_key": TENANT_KEY, "region": "eu"}));

    // RFC 9068 header; kid is the RFC 7638 thumbprint of the published key.
    let header = jsonwebtoken::decode_header(&internal).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    assert_eq!(jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap(), header.kid.unwrap());
    assert_eq!(jwks["keys"][0]["use"], "sig");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
}

#[tokio::test]
async fn es256_id_tokens_verify_too() {
    let h = Harness::start().await;
    let r = h.get_with_token("/api/x", &h.issuer.token_es256(USER_2)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(claims["sub"], USER_2);
    assert_eq!(claims["app_metadata"], json!({"roles": ["viewer"]}));
}

#[tokio::test]
async fn internal_token_never_outlives_the_id_token() {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    c["exp"] = json!(now() + 20);
    let r = h.get_with_token("/api/x", &h.issuer.sign(&h.issuer.rsa, &c)).await;
    assert_eq!(r.status, StatusCode::OK);
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    // exp = min(now + ttl, id exp + leeway (30 s)).
    assert!(claims["exp"].as_u64().unwrap() <= now() + 20 + 30);
}

#[tokio::test]
async fn minted_token_is_reused_while_fresh() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    h.get_with_token("/api/a", &t).await;
    let first = h.last_internal_token().unwrap();
    h.get_with_token("/api/b", &t).await;
    assert_eq!(h.last_internal_token().unwrap(), first, "same ID token + route should reuse the minted token");
    let (minted, reused) = h.proxy.app().minter.counts();
    assert_eq!((minted, reused), (1, 1));
    // Another user gets another token.
    h.get_with_token("/api/b", &h.issuer.token(USER_2)).await;
    assert_ne!(h.last_internal_token().unwrap(), first);
}

#[tokio::test]
async fn cookie_token_is_accepted_and_not_forwarded() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let cookie = format!("theme=dark; id_token={t}; lang=en");
    let r = h.get("/api/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = h.upstream.last();
    assert_eq!(seen.headers.get("cookie").unwrap(), "theme=dark; lang=en");
    assert!(seen.headers.get("x-internal-token").is_some());
}

#[tokio::test]
async fn optional_route_goes_on_anonymous_without_a_token() {
    let h = Harness::start().await;
    let r = h.get("/optional/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.upstream.last().headers.get("x-internal-token").is_none());
    // With a token it is enriched.
    let r = h.get_with_token("/optional/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.upstream.last().headers.get("x-internal-token").is_some());
    // A bad token on an optional route is still refused.
    let r = h.get_with_token("/optional/x", "a.b.c").await;
    r.assert_invalid_token();
}

#[tokio::test]
async fn auth_off_route_forwards_without_checking_and_strips_credentials() {
    let h = Harness::start().await;
    let r = h.get("/public/x", &[("authorization", "Bearer whatever-token-value-here")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = h.upstream.last();
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("x-internal-token").is_none());
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let h = Harness::start().await;
    let body = bytes::Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let t = h.issuer.token(USER_1);
    let r = h
        .send(Method::POST, &h.proxy_url("/api/upload"), &[("authorization", &format!("Bearer {t}"))], body.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body_len"], body.len());
    assert_eq!(h.upstream.last().body, body);
}

#[tokio::test]
async fn no_route_is_404_problem() {
    let h = Harness::start().await;
    let r = h.get("/nothing/here", &[]).await;
    r.assert_problem(404);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn missing_token_is_401_without_error_code() {
    let h = Harness::start().await;
    let r = h.get("/api/x", &[]).await;
    r.assert_problem(401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"claimsmith\""));
    // Another auth scheme is no bearer token either.
    let r = h.get("/api/x", &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    r.assert_problem(401);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_with_several_spaces() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let r = h.get("/api/x", &[("authorization", &format!("bEaReR   {t}"))]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn unknown_user_or_client_is_401() {
    let h = Harness::start().await;
    let r = h.get_with_token("/api/x", &h.issuer.token("auth0|nobody")).await;
    r.assert_invalid_token();
    let mut c = h.issuer.claims(USER_1);
    c["aud"] = json!(["client-1", "client-2"]);
    c["azp"] = json!("client-2");
    // client-2 exists with empty metadata: fine.
    let r = h.get_with_token("/api/x", &h.issuer.sign(&h.issuer.rsa, &c)).await;
    assert_eq!(r.status, StatusCode::OK);
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(claims["client_id"], "client-2");
    assert_eq!(claims["client_metadata"], json!({}));
    assert!(h.upstream.requests().len() == 1);
}

#[tokio::test]
async fn admin_endpoints() {
    let h = Harness::start().await;
    let r = h.send(Method::GET, &h.admin_url("/healthz"), &[], Default::default()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.send(Method::GET, &h.admin_url("/readyz"), &[], Default::default()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.send(Method::GET, &h.admin_url("/.well-known/openid-configuration"), &[], Default::default()).await;
    let d = r.json();
    assert_eq!(d["issuer"], TOKEN_ISSUER);
    assert_eq!(d["jwks_uri"], h.admin_url("/.well-known/jwks.json"));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    let m = h.metrics_with("claimsmith_requests_total{route=\"/api/\",status=\"200\"} 1").await;
    for name in [
        "claimsmith_requests_total{route=\"/api/\",status=\"200\"} 1",
        "claimsmith_request_duration_seconds_bucket",
        "claimsmith_metadata_cache_hits_total",
        "claimsmith_metadata_cache_misses_total 2",
        "claimsmith_metadata_fetches_total",
        "claimsmith_jwks_refreshes_total",
        "claimsmith_tokens_minted_total 1",
        "claimsmith_token_cache_entries 1",
        "claimsmith_metadata_cache_entries{kind=\"user\"} 1",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
}

/// Each worker samples its event loop's turn every 25 ms (docs/operations.md,
/// "Metrics"): the histogram fills while the proxy is idle, and an idle loop turns in
/// well under the largest bucket.
#[tokio::test]
async fn the_event_loop_turn_is_sampled() {
    let h = Harness::start().await;
    let count = |m: &str, series: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{m}"));
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
    };
    let mut m = String::new();
    for _ in 0..100 {
        m = h.metrics_with("claimsmith_event_loop_turn_seconds_count").await;
        if count(&m, "claimsmith_event_loop_turn_seconds_count ") >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let samples = count(&m, "claimsmith_event_loop_turn_seconds_count ");
    assert!(samples >= 3, "too few turns sampled:\n{m}");
    assert_eq!(count(&m, "claimsmith_event_loop_turn_seconds_bucket{le=\"+Inf\"} "), samples);
    assert_eq!(
        count(&m, "claimsmith_event_loop_turn_seconds_bucket{le=\"1\"} "),
        samples,
        "an idle loop took a second:\n{m}"
    );
}

#[tokio::test]
async fn readyz_is_503_until_the_jwks_is_held() {
    init();
    let issuer = Issuer::start().await;
    issuer.down.store(true, SeqCst);
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("m.json");
    std::fs::write(&md, default_metadata().to_string()).unwrap();
    let toml = DEFAULT_TOML
        .replace("{issuer}", &issuer.url)
        .replace("{upstream}", &upstream.url())
        .replace("{metadata}", &md.display().to_string());
    let running =
        claimsmith::server::start_with(claimsmith::parse_config(&toml).unwrap(), support::workers()).await.unwrap();
    let client = reqwest_like_get(&format!("http://{}/readyz", running.admin_addr)).await;
    assert_eq!(client, 503);
    // A token cannot be checked yet: 503 with Retry-After, not a false 401.
    let (status, retry) = get_with_auth(&format!("http://{}/api/x", running.proxy_addr), &issuer.token(USER_1)).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    assert!(upstream.saw_nothing());
    issuer.down.store(false, SeqCst);
    assert!(running.wait_ready(std::time::Duration::from_secs(10)).await);
    assert_eq!(reqwest_like_get(&format!("http://{}/readyz", running.admin_addr)).await, 200);
}

async fn reqwest_like_get(url: &str) -> u16 {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    client.get(url.parse().unwrap()).await.unwrap().status().as_u16()
}

async fn get_with_auth(url: &str, token: &str) -> (u16, Option<String>) {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let req = http::Request::get(url).header("authorization", format!("Bearer {token}")).body(Empty::new()).unwrap();
    let r = client.request(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    let mut secrets = default_secrets();
    secrets.push(token.to_string());
    assert_no_leak(parts.status, &parts.headers, &body, &secrets);
    (parts.status.as_u16(), parts.headers.get("retry-after").map(|v| v.to_str().unwrap().to_string()))
}

#[tokio::test]
async fn several_key_files_first_signs_all_are_published() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (current, current_pem) = claimsmith::keys::SigningKey::generate(jsonwebtoken::Algorithm::ES256).unwrap();
    let (previous, previous_pem) = claimsmith::keys::SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
    std::fs::write(dir.path().join("current.pem"), current_pem).unwrap();
    std::fs::write(dir.path().join("previous.pem"), previous_pem).unwrap();
    let keys = format!(
        "algorithm = \"ES256\"\nkey_files = [\"{}\", \"{}\"]\n",
        dir.path().join("current.pem").display(),
        dir.path().join("previous.pem").display()
    );
    let template = DEFAULT_TOML.replace("algorithm = \"EdDSA\"\n", &keys);
    let h = Harness::start_with(&template, default_metadata()).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let jwks = h.admin_jwks().await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec![current.kid(), previous.kid()]);
    let internal = h.last_internal_token().unwrap();
    let header = jsonwebtoken::decode_header(&internal).unwrap();
    assert_eq!(header.kid.as_deref(), Some(current.kid()));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    verify_internal(&internal, &jwks, INTERNAL_AUD);
}

#[tokio::test]
async fn only_copy_claims_are_copied() {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    c["nonce"] = json!("n-0123456789");
    c["org_id"] = json!("org_1");
    let r = h.get_with_token("/api/x", &h.issuer.sign(&h.issuer.rsa, &c)).await;
    assert_eq!(r.status, StatusCode::OK);
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    // The harness copies email and name only.
    assert_eq!(claims["email"], "u1@example.com");
    assert!(claims.get("nonce").is_none() && claims.get("org_id").is_none(), "{claims}");
    // A second request (token-cache hit) copies the same claims.
    h.get_with_token("/api/y", &h.issuer.sign(&h.issuer.rsa, &c)).await;
    let again = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(again["email"], "u1@example.com");
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    for i in 0..10 {
        let r = if i % 3 == 2 {
            // A request body in between leaves the connection reusable too.
            let auth = format!("Bearer {t}");
            h.send(Method::POST, &h.proxy_url("/api/p"), &[("authorization", &auth)], bytes::Bytes::from("x".repeat(i)))
                .await
        } else {
            h.get_with_token(&format!("/api/g{i}"), &t).await
        };
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert_eq!(h.upstream.count.load(SeqCst), 10);
    assert_eq!(h.upstream.connections.load(SeqCst), 1, "one kept-alive connection");
}

/// An upstream that promises keep-alive and answers one request per connection;
/// it hangs up its idle connections when `hang_up` is notified, as one whose idle
/// timeout fires does.
async fn upstream_hanging_up_on_command() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, hang_up) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
    let (accepted, hang_up2) = (connections.clone(), hang_up.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, SeqCst);
            let hang_up = hang_up2.clone();
            tokio::spawn(async move {
                let (mut head, mut chunk) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let hung_up = hang_up.notified();
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                hung_up.await;
            });
        }
    });
    (addr, connections, hang_up)
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    init();
    let (addr, connections, hang_up) = upstream_hanging_up_on_command().await;
    let template =
        format!("{DEFAULT_TOML}\n[[route]]\npath_prefix = \"/flaky/\"\nupstream = \"http://{addr}\"\nauth = \"off\"\n");
    let h = Harness::start_parts(Issuer::start().await, Upstream::start().await, &template, default_metadata()).await;
    for i in 0..20 {
        let r = h.get("/flaky/x", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
        hang_up.notify_waiters();
        // Sent at once, the next request races the hang-up (its request comes back
        // unsent and is retried on a new connection); after a pause, the proxy has
        // seen the close and does not use that connection at all. With worker threads
        // of their own the race is a real one (the request may reach the upstream
        // just as it hangs up, and is then never sent twice): always pause.
        if i % 2 == 1 || workers() > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(connections.load(SeqCst), 20);

    // An upstream that says so (`Connection: close`): no connection is pooled.
    h.upstream.behavior.lock().unwrap().extra_headers.push(("connection".into(), "close".into()));
    for _ in 0..3 {
        assert_eq!(h.get("/public/x", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(h.upstream.connections.load(SeqCst), 3);
}

/// This suite also runs as `request_path_hyper` (hyper serving every connection):
/// each binary really runs on the transport its name says.
#[tokio::test]
async fn the_suite_runs_on_the_transport_its_binary_names() {
    let h = Harness::start().await;
    assert_eq!(h.proxy.app().config.listen.fast_path, fast_path());
    assert_eq!(env!("CARGO_CRATE_NAME").ends_with("_hyper"), !fast_path());
}

/// `[token.static_claims]` and `[token.secret_claims]` (docs/configuration.md,
/// "[token]") are in every internal token, on every route, signed with the rest;
/// the secret never comes back to the client (the harness's leak audit).
#[tokio::test]
async fn static_and_secret_claims_are_in_every_internal_token() {
    const SECRET: &str = "system-key-secret-value-3f9a";
    let toml = DEFAULT_TOML.to_string()
        + r#"
[[route]]
path_prefix = "/billing/"
upstream = "{upstream}"
audience = "billing-api"
app_metadata = ["plan"]

[token.static_claims]
deployment = "eu-prod"
flags = ["a", 1, true]
[token.secret_claims]
system_key = { file = "{dir}/system.key" }
"#;
    let h = Harness::start_parts_with_files(
        Issuer::start().await,
        Upstream::start().await,
        &toml,
        default_metadata(),
        &[("system.key", &format!("{SECRET}\n"))],
    )
    .await;
    h.add_secret(SECRET);
    let jwks = h.admin_jwks().await;
    for (path, aud, token) in
        [("/api/x", INTERNAL_AUD, h.issuer.token(USER_1)), ("/billing/x", "billing-api", h.issuer.token_es256(USER_2))]
    {
        let r = h.get_with_token(path, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let c = verify_internal(&h.last_internal_token().unwrap(), &jwks, aud);
        assert_eq!(c["deployment"], "eu-prod");
        assert_eq!(c["flags"], json!(["a", 1, true]));
        assert_eq!(c["system_key"], SECRET);
        assert!(c["sub"].is_string() && c["app_metadata"].is_object() && c.get("user_metadata").is_none(), "{c}");
    }
}

/// A file source has no user_metadata: a route forwarding it gets `{}`, a rule
/// reading it sees nothing resolve, and routes that do not list it get no claim.
#[tokio::test]
async fn a_file_source_gives_empty_user_metadata() {
    let toml = DEFAULT_TOML.to_string()
        + r#"
[[route]]
path_prefix = "/theme/"
upstream = "{upstream}"
audience = "orders-api"
user_metadata = ["theme"]
[[route.deny]]
source = "user_metadata"
pointer = "/theme"
op = "exists"
"#;
    let h = Harness::start_with(&toml, default_metadata()).await;
    let token = h.issuer.token(USER_1);
    let r = h.get_with_token("/theme/x", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(c["user_metadata"], json!({}));
    assert_eq!(c["app_metadata"]["plan"], "pro");
    let r = h.get_with_token("/api/x", &token).await;
    assert_eq!(r.status, StatusCode::OK);
    let c = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert!(c.get("user_metadata").is_none(), "{c}");
}

/// A crowd of tokens never seen before, genuine and forged together, while a user
/// already cached keeps sending: signature checks take turns on each worker
/// (docs/security.md, "Floods of new tokens"), and every one of them is answered,
/// the forged ones with their 401, so no failure path keeps the turn.
#[tokio::test]
async fn a_crowd_of_new_tokens_is_answered_in_full() {
    let h = Arc::new(Harness::start().await);
    let cached = h.issuer.token(USER_1);
    assert_eq!(h.get_with_token("/api/x", &cached).await.status, StatusCode::OK);
    // Same kid, another key: a signature that fails only when it is checked.
    let forger = IssuerKey::generate(jsonwebtoken::Algorithm::RS256, &h.issuer.rsa.kid);
    let mut crowd = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut claims = h.issuer.claims(if i % 2 == 0 { USER_1 } else { USER_2 });
        claims["jti"] = json!(format!("crowd-{i}"));
        let genuine = i % 4 != 3;
        let token = h.issuer.sign(if genuine { &h.issuer.rsa } else { &forger }, &claims);
        let h = h.clone();
        crowd.spawn(async move { (genuine, h.get_with_token("/api/x", &token).await) });
    }
    for _ in 0..5 {
        assert_eq!(h.get_with_token("/api/x", &cached).await.status, StatusCode::OK);
    }
    let (mut passed, mut refused) = (0, 0);
    // A turn that was never given back would leave the rest waiting for ever.
    let wait = std::time::Duration::from_secs(30);
    while let Some(answer) =
        tokio::time::timeout(wait, crowd.join_next()).await.expect("the crowd was not answered within 30 s")
    {
        match answer.unwrap() {
            (true, r) => {
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                passed += 1;
            }
            (false, r) => {
                r.assert_invalid_token();
                refused += 1;
            }
        }
    }
    assert_eq!((passed, refused), (48, 16));
}
