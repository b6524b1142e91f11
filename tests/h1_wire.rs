//! HTTP/1.1 at the wire, both sides: a raw client talks to claimsmith, and claimsmith
//! talks to a raw upstream whose every byte the test scripts. Keep-alive, pipelining,
//! the response framings an upstream may use (chunked with extensions and trailers,
//! close-delimited, bodiless statuses, HEAD, 1xx), invalid upstream framing, request
//! bodies, connection close from either side, dead pooled connections.
//!
//! The scripted upstream and the raw client are in `support/scripted.rs`. The
//! "Message framing" section runs over both transports; more of request smuggling,
//! header limits and hop-by-hop hygiene are in `attacks.rs`, `hygiene.rs` and
//! `differential.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::scripted::{Framing, Got, READ_TIMEOUT, RawUpstream, Step, Wire, find, is_chunked, ok, pause_ms, write};
use support::*;

// ---------------------------------------------------------------------------
// Setup

/// The default template plus two routes to `up`: `/off/` (auth off) and `/auth/`
/// (token required, audience orders-api).
fn template(up: &RawUpstream) -> String {
    let base = Harness::template_with_listen("request_timeout = \"5s\"");
    let a = up.addr;
    format!(
        "{base}\n[[route]]\npath_prefix = \"/off/\"\nupstream = \"http://{a}\"\nauth = \"off\"\n\n\
         [[route]]\npath_prefix = \"/auth/\"\nupstream = \"http://{a}\"\naudience = \"orders-api\"\n"
    )
}

async fn proxy_to(up: &RawUpstream) -> Harness {
    Harness::start_with(&template(up), default_metadata()).await
}

fn get(h: &Harness, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", h.proxy.proxy_addr)
}

/// Asserts a 200 with exactly `body`.
fn assert_ok(r: &Got, body: &str) {
    assert_eq!(r.status, 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.text(), body, "{:?}", r.head);
}

// ---------------------------------------------------------------------------
// 1, 2: connection reuse and pipelining

#[tokio::test]
async fn keep_alive_reuses_client_and_upstream_connections_with_a_token() {
    let up = RawUpstream::echo().await;
    let h = proxy_to(&up).await;
    let token = h.issuer.token(USER_1);
    h.add_secret(&token);
    let mut c = Wire::connect(&h).await;
    for i in 0..3 {
        let r = c
            .roundtrip(format!(
                "GET /auth/k{i}?q={i} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
                h.proxy.proxy_addr
            ))
            .await;
        r.audit(&h);
        assert_ok(&r, &format!("echo /auth/k{i}?q={i}"));
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, "GET");
        assert_eq!(s.target, format!("/auth/k{i}?q={i}"));
        assert_eq!(s.conn, 0, "request {i} came on upstream connection {}", s.conn);
        assert_eq!(s.framing, Framing::None, "a bodiless GET was sent with a body framing: {:?}", s.head);
        assert!(s.head.get("authorization").is_none(), "the client's token reached the upstream");
        let internal = s.head.all("x-internal-token");
        assert_eq!(internal.len(), 1, "{:?}", s.head.headers);
        let claims = verify_internal(internal[0], &h.admin_jwks().await, INTERNAL_AUD);
        assert_eq!(claims["sub"], USER_1);
        h.add_secret(internal[0]);
    }
    assert_eq!(up.connections(), 1);
    // The client connection is still open and usable.
    let r = c.roundtrip(get(&h, "/off/after")).await;
    assert_ok(&r, "echo /off/after");
    up.assert_no_errors();
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    // The first answer is slow, so a proxy answering out of order would show it.
    let up = RawUpstream::start(|r| {
        let mut steps = if r.target == "/off/p1" { vec![pause_ms(150)] } else { vec![] };
        steps.extend(ok(&format!("answer to {}", r.target)));
        steps
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    c.send(format!("{}{}", get(&h, "/off/p1"), get(&h, "/off/p2"))).await;
    let r1 = c.read_final(false).await.expect("first answer");
    let r2 = c.read_final(false).await.expect("second answer");
    assert_ok(&r1, "answer to /off/p1");
    assert_ok(&r2, "answer to /off/p2");
    let (extra, _) = c.extra(Duration::from_millis(200)).await;
    assert!(extra.is_empty(), "unexpected bytes after the two answers: {:?}", String::from_utf8_lossy(&extra));
    let targets: Vec<String> = up.requests().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/off/p1", "/off/p2"]);
    // And a third request on the same connection.
    assert_ok(&c.roundtrip(get(&h, "/off/p3")).await, "answer to /off/p3");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 3-6: response framings

#[tokio::test]
async fn chunked_upstream_response_with_extension_and_trailer() {
    let up = RawUpstream::start(|r| match r.target.as_str() {
        "/off/chunked" => vec![
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"),
            write("5;foo=bar\r\nhello\r\n"),
            pause_ms(20),
            write("1\r\n \r\n"),
            pause_ms(20),
            write("a\r\nchunked wo\r\n3\r\nrld\r\n"),
            pause_ms(20),
            write("0\r\n\r\n"),
        ],
        "/off/trailer" => vec![
            write(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
            ),
            write("4;foo=bar;baz=\"q\"\r\nwith\r\n"),
            pause_ms(20),
            write("8\r\n trailer\r\n0\r\nX-Sum: 1234\r\n\r\n"),
        ],
        t => ok(&format!("plain {t}")),
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip(get(&h, "/off/chunked")).await;
    assert_ok(&r, "hello chunked world");
    assert_ne!(r.framing, Framing::Close, "the client connection would have to close: {:?}", r.head);
    let (extra, closed) = c.extra(Duration::from_millis(100)).await;
    assert!(extra.is_empty() && !closed, "{closed} {:?}", String::from_utf8_lossy(&extra));
    // The same client connection goes on; the upstream connection was reused too.
    assert_ok(&c.roundtrip(get(&h, "/off/next")).await, "plain /off/next");
    assert_eq!(up.connections(), 1);

    // With a trailer section (the client did not ask for trailers with `TE: trailers`).
    let r = c.roundtrip(get(&h, "/off/trailer")).await;
    assert_ok(&r, "with trailer");
    assert_ne!(r.framing, Framing::Close, "{:?}", r.head);
    assert!(r.head.get("trailer").is_none(), "hop-by-hop Trailer passed: {:?}", r.head);
    assert!(r.head.get("x-sum").is_none(), "a trailer field became a header: {:?}", r.head);
    let (extra, closed) = c.extra(Duration::from_millis(100)).await;
    assert!(extra.is_empty() && !closed, "{closed} {:?}", String::from_utf8_lossy(&extra));
    assert_ok(&c.roundtrip(get(&h, "/off/next2")).await, "plain /off/next2");
    // Observed with hyper: after a body that ended in trailers the upstream
    // connection is not pooled again (so /off/next2 came on a second connection).
    // Reusing it would be fine too.
    assert!(up.connections() <= 2, "{}", up.connections());
    up.assert_no_errors();
}

#[tokio::test]
async fn close_delimited_upstream_response() {
    let body = "no length, the end of the connection ends me";
    let up = RawUpstream::start(move |r| {
        if r.target == "/off/eof" {
            vec![write(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}")), pause_ms(30), Step::Close]
        } else {
            ok("after")
        }
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip(get(&h, "/off/eof")).await;
    assert_ok(&r, body);
    let mut c = if r.framing == Framing::Close { Wire::connect(&h).await } else { c };
    assert_ok(&c.roundtrip(get(&h, "/off/after")).await, "after");
    // The upstream connection ended with the body, so the second came on a new one.
    assert_eq!(up.connections(), 2);
    up.assert_no_errors();
}

#[tokio::test]
async fn bodiless_responses_do_not_desync_the_connection() {
    let up = RawUpstream::start(|r| match r.target.as_str() {
        "/off/204" => vec![write("HTTP/1.1 204 No Content\r\nX-Kind: nc\r\n\r\n")],
        "/off/304" => vec![write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Kind: nm\r\n\r\n")],
        "/off/head" => vec![write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")],
        t => ok(&format!("after {t}")),
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let host = h.proxy.proxy_addr;

    c.send(get(&h, "/off/204")).await;
    let r = c.read_final(false).await.unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.head.get("x-kind"), Some("nc"));
    assert!(r.head.get("transfer-encoding").is_none(), "{:?}", r.head);
    assert_ok(&c.roundtrip(get(&h, "/off/a")).await, "after /off/a");

    c.send(format!("GET /off/304 HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: \"v1\"\r\n\r\n")).await;
    let r = c.read_final(false).await.unwrap();
    assert_eq!(r.status, 304);
    assert_eq!(r.head.get("etag"), Some("\"v1\""));
    assert!(r.head.get("transfer-encoding").is_none(), "{:?}", r.head);
    assert_ok(&c.roundtrip(get(&h, "/off/b")).await, "after /off/b");

    c.send(format!("HEAD /off/head HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
    let r = c.read_final(true).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.head.get("content-length"), Some("5"), "HEAD answer headers: {:?}", r.head);
    // No body bytes follow the HEAD answer: the next answer starts right after it.
    assert_ok(&c.roundtrip(get(&h, "/off/c")).await, "after /off/c");

    let methods: Vec<String> = up.requests().iter().map(|s| format!("{} {}", s.method, s.target)).collect();
    assert_eq!(methods, ["GET /off/204", "GET /off/a", "GET /off/304", "GET /off/b", "HEAD /off/head", "GET /off/c"]);
    assert_eq!(up.connections(), 1, "bodiless answers should leave the upstream connection reusable");
    up.assert_no_errors();
}

#[tokio::test]
async fn early_hints_then_final_response() {
    let up = RawUpstream::start(|r| {
        if r.target != "/off/hints" {
            return ok("plain");
        }
        vec![
            write("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"),
            pause_ms(30),
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal"),
        ]
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip(get(&h, "/off/hints")).await;
    assert_ok(&r, "final");
    assert_ok(&c.roundtrip(get(&h, "/off/x")).await, "plain");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 7: invalid upstream framing

/// Whether `raw` holds a whole response (a head and the body its framing declares).
fn answer_complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let value = |n: &str| head.split("\r\n").find_map(|l| l.strip_prefix(n).map(|v| v.trim().to_string()));
    if value("transfer-encoding:").is_some_and(|v| is_chunked(&v)) {
        body.ends_with(b"0\r\n\r\n")
    } else {
        value("content-length:").and_then(|v| v.parse::<usize>().ok()) == Some(body.len())
    }
}

/// Reads what comes back for one request: until a whole response has come (and
/// 200 ms more, to catch anything after it) or the connection closes.
async fn collect_answer(c: &mut Wire) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut raw = Vec::new();
    loop {
        let (more, closed) = c.extra(Duration::from_millis(50)).await;
        raw.extend_from_slice(&more);
        if closed {
            return (raw, true);
        }
        if answer_complete(&raw) || tokio::time::Instant::now() >= deadline {
            let (more, closed) = c.extra(Duration::from_millis(200)).await;
            raw.extend_from_slice(&more);
            return (raw, closed);
        }
    }
}

#[tokio::test]
async fn invalid_upstream_framing_never_mixes_responses() {
    const SMUGGLED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";
    let up = RawUpstream::start(|r| match r.target.as_str() {
        // Read by Transfer-Encoding: "first", then a whole second response; read by
        // Content-Length: the chunked framing and part of that second response.
        "/off/cl-te" => vec![write(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n{SMUGGLED}"
        ))],
        "/off/cl-abc" => vec![write(format!("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello{SMUGGLED}"))],
        "/off/cl-two" => {
            vec![write(format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello{SMUGGLED}"))]
        }
        t => ok(&format!("legit {t}")),
    })
    .await;
    let h = proxy_to(&up).await;
    for path in ["/off/cl-te", "/off/cl-abc", "/off/cl-two"] {
        let mut c = Wire::connect(&h).await;
        c.send(get(&h, path)).await;
        // Everything that comes back for this one request.
        let (raw, closed) = collect_answer(&mut c).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(!text.contains("SMUGGLED"), "{path}: smuggled bytes reached the client: {text:?}");
        assert_eq!(text.matches("HTTP/1.").count(), 1, "{path}: not exactly one response: {text:?}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{path}: no whole head: {text:?}"));
        let status: u16 = head[9..12].parse().unwrap();
        let header = |n: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(n).then(|| v.trim().to_string())
            })
        };
        let chunked = header("transfer-encoding").is_some_and(|v| is_chunked(&v));
        assert!(!(chunked && header("content-length").is_some()), "{path}: both framings to the client: {head}");
        if path == "/off/cl-te" {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), or 502.
            assert!(status == 200 || status == 502, "{path}: {text:?}");
            if status == 200 {
                assert!(body.contains("first"), "{path}: {text:?}");
            }
        } else {
            // hyper refuses an unparseable or conflicting Content-Length.
            assert_eq!(status, 502, "{path}: {text:?}");
            assert!(header("content-type").is_some_and(|v| v == "application/problem+json"), "{path}: {head}");
        }
        // A response that did not deliver the length it declared must end with the
        // connection, so the client cannot take later bytes for its rest.
        assert!(answer_complete(&raw) || closed, "{path}: an incomplete response left the connection open: {text:?}");
        // The next requests (on the same connection if still open) get their own
        // answers, never the smuggled one, which may still sit on the upstream connection.
        let mut c = if closed { Wire::connect(&h).await } else { c };
        for i in 0..2 {
            let r = c.roundtrip(get(&h, &format!("/off/next{i}"))).await;
            assert_ok(&r, &format!("legit /off/next{i}"));
        }
    }
    // No upstream connection was used again after an invalid answer.
    let seen = up.requests();
    assert_eq!(seen.len(), 9);
    for w in seen.windows(2) {
        if w[0].target.starts_with("/off/cl-") {
            assert_ne!(w[0].conn, w[1].conn, "{} was followed on the same upstream connection", w[0].target);
        }
    }
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 8: request bodies

#[tokio::test]
async fn content_length_request_body_arrives_intact() {
    let up = RawUpstream::start(|r| ok(&format!("got {}", r.body.len()))).await;
    let h = proxy_to(&up).await;
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut c = Wire::connect(&h).await;
    let mut req = format!(
        "POST /off/upload HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        h.proxy.proxy_addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = c.roundtrip(&req).await;
    assert_ok(&r, "got 102400");
    let s = up.requests().pop().unwrap();
    assert_eq!(s.method, "POST");
    assert!(s.body == body, "the upstream got {} bytes, not the client's", s.body.len());
    assert!(matches!(s.framing, Framing::Length(102400) | Framing::Chunked), "{:?}", s.framing);
    assert_eq!(s.head.get("content-type"), Some("application/octet-stream"));
    // The connection goes on.
    assert_ok(&c.roundtrip(get(&h, "/off/x")).await, "got 0");
    up.assert_no_errors();
}

#[tokio::test]
async fn chunked_request_body_arrives_decoded() {
    let up = RawUpstream::start(|r| ok(&format!("got {}", r.body.len()))).await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    c.send(format!(
        "POST /off/chunks HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
        h.proxy.proxy_addr
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send("1\r\n \r\n").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send("C\r\nchunked body\r\n0\r\n\r\n").await;
    let r = c.read_final(false).await.expect("no answer");
    assert_ok(&r, "got 18");
    let s = up.requests().pop().unwrap();
    assert_eq!(s.body, b"hello chunked body");
    assert!(matches!(s.framing, Framing::Chunked | Framing::Length(18)), "{:?}", s.framing);
    assert!(s.head.get("transfer-encoding").is_none_or(|v| v.eq_ignore_ascii_case("chunked")), "{:?}", s.head);
    // With a trailer section, then another request on the same connection.
    c.send(format!(
        "POST /off/chunks2 HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
        h.proxy.proxy_addr
    ))
    .await;
    assert_ok(&c.read_final(false).await.expect("no answer"), "got 3");
    assert_eq!(up.requests().pop().unwrap().body, b"abc");
    assert_ok(&c.roundtrip(get(&h, "/off/x")).await, "got 0");
    up.assert_no_errors();
}

#[tokio::test]
async fn expect_100_continue_request_completes() {
    let up = RawUpstream::start(|r| ok(&format!("got {}", String::from_utf8_lossy(&r.body)))).await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    c.send(format!(
        "POST /off/expect HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
        h.proxy.proxy_addr
    ))
    .await;
    // The body is sent only after the interim answer, as curl would (after 1 s).
    let interim = c.read(false).await.expect("no 100 Continue before the body");
    assert_eq!(interim.status, 100, "{:?}", interim.head);
    c.send("hello there").await;
    let r = c.read_final(false).await.expect("no final answer");
    assert_ok(&r, "got hello there");
    let s = up.requests().pop().unwrap();
    assert_eq!(s.body, b"hello there");
    // The connection goes on.
    assert_ok(&c.roundtrip(get(&h, "/off/x")).await, "got ");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 9-12: connection endings

#[tokio::test]
async fn client_connection_close_is_honoured() {
    let up = RawUpstream::echo().await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c
        .roundtrip(format!("GET /off/bye HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", h.proxy.proxy_addr))
        .await;
    assert_ok(&r, "echo /off/bye");
    assert!(closed_within(&mut c.stream, Duration::from_secs(2)).await, "the client connection stayed open");
    // The client's Connection is hop-by-hop: the upstream connection stays pooled.
    let s = up.requests().pop().unwrap();
    assert!(s.head.get("connection").is_none_or(|v| !v.to_ascii_lowercase().contains("close")), "{:?}", s.head);
    let mut c = Wire::connect(&h).await;
    assert_ok(&c.roundtrip(get(&h, "/off/again")).await, "echo /off/again");
    assert_eq!(up.connections(), 1);
    up.assert_no_errors();
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_is_not_used() {
    // Answers, then closes the idle connection 50 ms later without a word.
    let up = RawUpstream::start(|r| {
        let mut s = ok(&format!("echo {}", r.target));
        s.extend([pause_ms(50), Step::Close]);
        s
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    assert_ok(&c.roundtrip(get(&h, "/off/one")).await, "echo /off/one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ok(&c.roundtrip(get(&h, "/off/two")).await, "echo /off/two");
    let mut c2 = Wire::connect(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ok(&c2.roundtrip(get(&h, "/off/three")).await, "echo /off/three");
    assert_eq!(up.connections(), 3);
    assert_eq!(up.requests().len(), 3, "a request was sent twice");
    up.assert_no_errors();
}

#[tokio::test]
async fn upstream_connection_close_answer() {
    let up = RawUpstream::start(|r| {
        let body = format!("echo {}", r.target);
        vec![
            write(format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())),
            Step::Close,
        ]
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip(get(&h, "/off/one")).await;
    assert_ok(&r, "echo /off/one");
    // The upstream's Connection is hop-by-hop: the client connection stays open.
    assert!(r.head.get("connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")), "{:?}", r.head);
    let r = c.roundtrip(get(&h, "/off/two")).await;
    assert_ok(&r, "echo /off/two");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].conn, seen[1].conn), (0, 1));
    assert_eq!(up.connections(), 2);
    up.assert_no_errors();
}

#[tokio::test]
async fn upstream_dying_mid_body_closes_the_client_connection() {
    let up = RawUpstream::start(|r| {
        if r.target == "/off/die" {
            vec![
                write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"),
                pause_ms(50),
                Step::Close,
            ]
        } else {
            ok("fine")
        }
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    c.send(get(&h, "/off/die")).await;
    let started = tokio::time::Instant::now();
    match c.read_final(false).await {
        // The head (200, Content-Length 100) may have gone out; the body cannot complete.
        Err(_) => {}
        Ok(r) => panic!("a complete response came from a truncated one: {} {:?} {:?}", r.status, r.head, r.text()),
    }
    assert!(closed_within(&mut c.stream, Duration::from_secs(3)).await, "the client connection hangs");
    assert!(started.elapsed() < Duration::from_secs(4));
    // The proxy is fine afterwards.
    let mut c = Wire::connect(&h).await;
    assert_ok(&c.roundtrip(get(&h, "/off/after")).await, "fine");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 13: large bodies

#[tokio::test]
async fn one_mib_response_body_arrives_intact() {
    let big: Arc<Vec<u8>> = Arc::new((0..1024 * 1024).map(|i| (i * 31 % 253) as u8).collect());
    let body = big.clone();
    let up = RawUpstream::start(move |r| {
        if r.target != "/off/big" {
            return ok("small");
        }
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        head.extend_from_slice(&body[..1000]);
        vec![Step::Write(head), pause_ms(10), Step::Write(body[1000..].to_vec())]
    })
    .await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip(get(&h, "/off/big")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == *big, "the 1 MiB body arrived changed");
    assert_eq!(r.framing, Framing::Length(big.len()), "{:?}", r.head);
    assert_ok(&c.roundtrip(get(&h, "/off/x")).await, "small");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// 14: request-target forms and HTTP/1.0

#[tokio::test]
async fn absolute_form_target_is_routed_by_its_path() {
    let up = RawUpstream::echo().await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    // Observed with hyper: accepted; the target's path routes, and the upstream gets
    // the origin form with the upstream's Host and the client's in X-Forwarded-Host.
    let r = c.roundtrip("GET http://example.test/off/x?y=1 HTTP/1.1\r\nHost: example.test\r\n\r\n").await;
    assert_ok(&r, "echo /off/x?y=1");
    let s = up.requests().pop().unwrap();
    assert_eq!(s.target, "/off/x?y=1");
    assert_eq!(s.head.all("host"), [up.addr.to_string().as_str()]);
    assert_eq!(s.head.get("x-forwarded-host"), Some("example.test"));
    // Dot-segments in an absolute-form target are resolved like in the origin form:
    // they cannot lead to an auth route without a token.
    let r = c.roundtrip("GET http://example.test/off/../auth/x HTTP/1.1\r\nHost: example.test\r\n\r\n").await;
    r.audit(&h);
    assert_eq!(r.status, 401, "{:?} {}", r.head, r.text());
    let r = c.roundtrip("GET http://example.test/auth/x HTTP/1.1\r\nHost: example.test\r\n\r\n").await;
    assert_eq!(r.status, 401);
    // The connection goes on with an origin-form request.
    assert_ok(&c.roundtrip(get(&h, "/off/z")).await, "echo /off/z");
    assert_eq!(up.requests().len(), 2);
    up.assert_no_errors();
}

#[tokio::test]
async fn http_1_0_request_without_host() {
    let up = RawUpstream::start(|r| match r.target.as_str() {
        "/off/eof" => vec![write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"), Step::Close],
        t => ok(&format!("echo {t}")),
    })
    .await;
    let h = proxy_to(&up).await;
    // Observed with hyper: answered 200 (status line HTTP/1.0) with a Content-Length,
    // and no keep-alive: the connection closes after the answer. The upstream gets
    // HTTP/1.1 with its own Host and, with no Host from the client, no X-Forwarded-Host.
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip("GET /off/old HTTP/1.0\r\n\r\n").await;
    assert_ok(&r, "echo /off/old");
    assert_eq!(r.framing, Framing::Length(13));
    assert!(closed_within(&mut c.stream, Duration::from_secs(2)).await, "an HTTP/1.0 connection stayed open");
    let s = up.requests().pop().unwrap();
    assert_eq!(s.version, "HTTP/1.1");
    assert_eq!(s.head.all("host"), [up.addr.to_string().as_str()]);
    assert!(s.head.get("x-forwarded-host").is_none(), "{:?}", s.head);
    // A body of unknown length cannot be sent chunked to an HTTP/1.0 client: it is
    // delimited by closing the connection.
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip("GET /off/eof HTTP/1.0\r\n\r\n").await;
    assert_ok(&r, "until the end");
    assert_eq!(r.framing, Framing::Close, "{:?}", r.head);
    // HTTP/1.0 with keep-alive asked for: the connection is kept.
    let mut c = Wire::connect(&h).await;
    let r = c.roundtrip("GET /off/ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    assert_ok(&r, "echo /off/ka");
    let r = c.roundtrip("GET /off/ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    assert_ok(&r, "echo /off/ka2");
    up.assert_no_errors();
}

// ---------------------------------------------------------------------------
// Hand-over: plain requests are served by claimsmith's own HTTP/1.1 path, anything
// else (here a chunked request body) by hyper, from that request on.

#[tokio::test]
async fn one_connection_serves_plain_then_chunked_then_plain_requests() {
    let up = RawUpstream::start(|r| ok(&format!("{} {} {}", r.method, r.target, r.body.len()))).await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    assert_ok(&c.roundtrip(get(&h, "/off/one")).await, "GET /off/one 0");
    let post = format!(
        "POST /off/two HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        h.proxy.proxy_addr
    );
    assert_ok(&c.roundtrip(post).await, "POST /off/two 4");
    let with_length =
        format!("PUT /off/three HTTP/1.1\r\nHost: {}\r\nContent-Length: 3\r\n\r\nxyz", h.proxy.proxy_addr);
    assert_ok(&c.roundtrip(with_length).await, "PUT /off/three 3");
    assert_ok(&c.roundtrip(get(&h, "/off/four")).await, "GET /off/four 0");
    let seen = up.requests();
    assert_eq!(
        seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        ["/off/one", "/off/two", "/off/three", "/off/four"]
    );
    assert_eq!(seen[1].body, b"abcd");
    assert_eq!(seen[2].body, b"xyz");
    // One pool per route: the request hyper served went over the same upstream
    // connection as the fast path's.
    assert_eq!(seen.iter().map(|s| s.conn).collect::<Vec<_>>(), [0, 0, 0, 0]);
    up.assert_no_errors();
}

#[tokio::test]
async fn refused_head_request_gets_no_body_and_the_connection_stays_in_step() {
    let up = RawUpstream::echo().await;
    let h = proxy_to(&up).await;
    let mut c = Wire::connect(&h).await;
    // No token on an authenticated route: claimsmith's own 401, to a HEAD request.
    c.send(format!("HEAD /auth/x HTTP/1.1\r\nHost: {}\r\n\r\n", h.proxy.proxy_addr)).await;
    let r = c.read_final(true).await.expect("no answer");
    assert_eq!(r.status, 401);
    assert!(r.head.get("content-length").is_some_and(|n| n != "0"), "{:?}", r.head);
    // The problem body's length is announced, but the body itself must not follow.
    let (extra, _) = c.extra(Duration::from_millis(100)).await;
    assert!(extra.is_empty(), "a HEAD answer carried a body: {:?}", String::from_utf8_lossy(&extra));
    assert_ok(&c.roundtrip(get(&h, "/off/next")).await, "echo /off/next");
    assert!(up.requests().iter().all(|s| s.target != "/auth/x"), "the refused request reached the upstream");
}

// ---------------------------------------------------------------------------
// Message framing (docs/security.md, "Message framing"): every test runs over both
// transports, the fast path and hyper (`listen.fast_path = false`).

/// [`proxy_to`] with the fast path on or off, and `route_extra` appended to both of
/// `up`'s routes' tables (e.g. `max_body_bytes = 16`).
async fn proxy_with(up: &RawUpstream, fast_path: bool, route_extra: &str) -> Harness {
    let t = template(up)
        .replacen("[listen]\n", &format!("[listen]\nfast_path = {fast_path}\n"), 1)
        .replace("auth = \"off\"\n", &format!("auth = \"off\"\n{route_extra}\n"))
        .replace("audience = \"orders-api\"\n", &format!("audience = \"orders-api\"\n{route_extra}\n"));
    Harness::start_with(&t, default_metadata()).await
}

const TRANSPORTS: [bool; 2] = [true, false];

/// The three payloads of the `Connection: content-length` smuggling attack: the body
/// is a request for a protected path with no token. Each is refused with 400, the
/// upstream sees nothing at all, and the client gets no second answer.
#[tokio::test]
async fn connection_naming_content_length_cannot_smuggle_a_request() {
    let smuggled = "GET /auth/admin HTTP/1.1\r\nHost: a\r\n\r\n";
    for fast_path in TRANSPORTS {
        let up = RawUpstream::echo().await;
        let h = proxy_with(&up, fast_path, "").await;
        for connection in ["content-length", "keep-alive, Content_Length", "close, content-length"] {
            let mut c = Wire::connect(&h).await;
            c.send(format!(
                "POST /off/x HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ))
            .await;
            let r = c.read_final(false).await.unwrap_or_else(|e| panic!("{connection} (fast_path {fast_path}): {e}"));
            assert_eq!(r.status, 400, "{connection} (fast_path {fast_path}): {}", r.text());
            r.audit(&h);
            let (extra, _) = c.extra(Duration::from_millis(200)).await;
            assert!(extra.is_empty(), "a second answer came: {:?}", String::from_utf8_lossy(&extra));
        }
        assert!(up.requests().is_empty(), "fast_path {fast_path}: the upstream saw {:?}", up.requests());
        // The pooled upstream connections are in step: the next request gets its own answer.
        let mut c = Wire::connect(&h).await;
        assert_ok(&c.roundtrip(get(&h, "/off/after")).await, "echo /off/after");
        assert_eq!(up.requests().len(), 1);
        up.assert_no_errors();
    }
}

/// Fields that frame or route a request must be beyond doubt (RFC 9112 §3.2, §6.3).
#[tokio::test]
async fn ambiguous_framing_and_routing_fields_are_refused() {
    let cases = [
        ("no Host", "GET /off/a HTTP/1.1\r\n\r\n"),
        ("two Hosts", "GET /off/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("a Content-Length list", "POST /off/a HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nab"),
        (
            "a final coding other than chunked",
            "POST /off/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        ),
        ("Content-Length with a sign", "POST /off/a HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab"),
        ("Connection naming Host", "GET /off/a HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n"),
        (
            "Connection naming Transfer-Encoding",
            "POST /off/a HTTP/1.1\r\nHost: a\r\nConnection: Transfer_Encoding\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        ),
    ];
    for fast_path in TRANSPORTS {
        let up = RawUpstream::echo().await;
        let h = proxy_with(&up, fast_path, "").await;
        for (what, raw) in cases {
            let mut c = Wire::connect(&h).await;
            c.send(raw).await;
            let r = c.read_final(false).await.unwrap_or_else(|e| panic!("{what} (fast_path {fast_path}): {e}"));
            assert_eq!(r.status, 400, "{what} (fast_path {fast_path}): {}", r.text());
        }
        assert!(up.requests().is_empty(), "fast_path {fast_path}: the upstream saw {:?}", up.requests());
        // Two equal Content-Length fields: refused where claimsmith parses the head
        // itself; hyper's parser merges equal values into one (as RFC 9110 §8.6
        // allows), and exactly one length goes on with the body it frames.
        let mut c = Wire::connect(&h).await;
        let raw = "POST /off/two HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        let r = c.roundtrip(raw).await;
        match fast_path {
            true => {
                assert_eq!(r.status, 400, "{}", r.text());
                assert!(up.requests().is_empty());
            }
            false => {
                assert_ok(&r, "echo /off/two");
                let s = up.requests().pop().expect("forwarded");
                assert_eq!((s.head.all("content-length"), &s.body[..]), (vec!["2"], &b"ab"[..]));
            }
        }
        // Transfer-Encoding beside Content-Length: the same split. hyper drops the
        // length and forwards the chunked body (RFC 9112 §6.3 lets an intermediary
        // forward it so); the upstream sees one framing, never both.
        let mut c = Wire::connect(&h).await;
        let raw = "POST /off/te HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        let r = c.roundtrip(raw).await;
        match fast_path {
            true => assert_eq!(r.status, 400, "{}", r.text()),
            false => {
                assert_ok(&r, "echo /off/te");
                let s = up.requests().pop().expect("forwarded");
                assert_eq!((s.framing.clone(), &s.body[..]), (Framing::Chunked, &b"ab"[..]));
            }
        }
        up.assert_no_errors();
    }
}

/// The forwarded body's framing is claimsmith's own, from the length it parsed: the
/// client's `Content-Length` is not copied (nor any other framing field).
#[tokio::test]
async fn forwarded_bodies_carry_one_length_of_claimsmiths_own() {
    for fast_path in TRANSPORTS {
        let up = RawUpstream::start(|r| ok(&format!("{} {}", r.target, r.body.len()))).await;
        let h = proxy_with(&up, fast_path, "").await;
        let mut c = Wire::connect(&h).await;
        let r = c.roundtrip("POST /off/b HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\n\r\nhelloGET").await;
        assert_ok(&r, "/off/b 5");
        // "GET" was left after the body: completing it makes the next request.
        let r = c.roundtrip(" /off/c HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_ok(&r, "/off/c 0");
        let r = c.roundtrip("POST /off/empty HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").await;
        assert_ok(&r, "/off/empty 0");
        let seen = up.requests();
        assert_eq!(seen.len(), 3, "fast_path {fast_path}: {seen:?}");
        assert_eq!((seen[0].head.all("content-length"), &seen[0].body[..]), (vec!["5"], &b"hello"[..]));
        assert!(seen[1].head.all("content-length").is_empty() && seen[1].head.all("transfer-encoding").is_empty());
        assert_eq!(seen[2].head.all("content-length"), ["0"]);
        up.assert_no_errors();
    }
}

/// `max_body_bytes`: a declared length past it is refused before the upstream is
/// contacted; a chunked body is counted as it streams.
#[tokio::test]
async fn bodies_past_max_body_bytes_are_refused_with_413() {
    for fast_path in TRANSPORTS {
        let up = RawUpstream::start(|r| ok(&format!("{} {}", r.target, r.body.len()))).await;
        let h = proxy_with(&up, fast_path, "max_body_bytes = 16").await;
        let mut c = Wire::connect(&h).await;
        let r = c
            .roundtrip(format!("POST /off/ok HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n\r\n{}", "x".repeat(16)))
            .await;
        assert_ok(&r, "/off/ok 16");
        // Only the head is sent: the answer must not wait for 17 bytes.
        let mut c = Wire::connect(&h).await;
        c.send("POST /off/big HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n").await;
        let r = c.read_final(false).await.expect("413 before the body");
        assert_eq!(r.status, 413, "fast_path {fast_path}: {}", r.text());
        r.audit(&h);
        let mut c = Wire::connect(&h).await;
        c.send("POST /auth/huge HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000000\r\n\r\n").await;
        assert_eq!(c.read_final(false).await.expect("413").status, 413);
        let mut c = Wire::connect(&h).await;
        let chunked = format!(
            "POST /off/chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n2\r\nzz\r\n0\r\n\r\n",
            "y".repeat(16)
        );
        let r = c.roundtrip(chunked).await;
        assert_eq!(r.status, 413, "fast_path {fast_path}: {}", r.text());
        let seen: Vec<String> = up.requests().iter().map(|s| s.target.clone()).collect();
        assert!(!seen.iter().any(|t| t == "/off/big" || t == "/auth/huge"), "fast_path {fast_path}: {seen:?}");
        assert!(up.requests().iter().all(|s| s.body.len() <= 16));
    }
}

/// `Upgrade: h2c` is never forwarded: the request goes on as a plain HTTP/1.1 request
/// (the `Upgrade` field is hop-by-hop), so no tunnel can open. A WebSocket upgrade on
/// an `auth = "off"` route is not forwarded either unless the route says
/// `websocket = true`.
#[tokio::test]
async fn h2c_and_unauthenticated_websocket_upgrades_are_not_forwarded() {
    let upgrades = [
        "GET /off/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        "GET /auth/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: Bearer {token}\r\n\r\n",
        "GET /off/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ];
    for fast_path in TRANSPORTS {
        // An upstream that would switch to anything it is offered.
        let up = RawUpstream::start(|r| match r.head.get("upgrade") {
            Some(p) => vec![
                write(format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {p}\r\n\r\n")),
                Step::Close,
            ],
            None => ok(&format!("plain {}", r.target)),
        })
        .await;
        let h = proxy_with(&up, fast_path, "").await;
        let token = h.issuer.token(USER_1);
        h.add_secret(&token);
        for raw in upgrades {
            let mut c = Wire::connect(&h).await;
            let r = c.roundtrip(raw.replace("{token}", &token)).await;
            r.audit(&h);
            assert_eq!(r.status, 200, "fast_path {fast_path}: {raw:?}: {}", r.text());
            assert!(r.text().starts_with("plain /"), "{}", r.text());
        }
        for s in up.requests() {
            for f in ["upgrade", "http2-settings", "connection"] {
                assert!(s.head.get(f).is_none(), "fast_path {fast_path}: {f} reached the upstream: {:?}", s.head);
            }
        }
        assert_eq!(up.requests().len(), upgrades.len());
    }
}

/// An upstream that switches protocols for a request that asked for no switch gets
/// a 502: what follows on its connection is not HTTP, and is never relayed.
#[tokio::test]
async fn an_unasked_protocol_switch_is_a_bad_gateway() {
    for fast_path in TRANSPORTS {
        let up = RawUpstream::start(|_| {
            vec![
                write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nRAW BYTES"),
                Step::Close,
            ]
        })
        .await;
        let h = proxy_with(&up, fast_path, "").await;
        let mut c = Wire::connect(&h).await;
        let r = c.roundtrip(get(&h, "/off/x")).await;
        assert_eq!(r.status, 502, "fast_path {fast_path}: {}", r.text());
        assert!(!r.text().contains("RAW BYTES"));
    }
}

/// Response queue poisoning: an upstream that writes an answer nobody asked for on
/// an idle kept-alive connection. The connection is not used again, so the next
/// request (here another client's) gets its own answer.
#[tokio::test]
async fn an_unsolicited_answer_on_an_idle_connection_is_never_delivered() {
    for fast_path in TRANSPORTS {
        let up = RawUpstream::start(|r| {
            let mut s = ok(&format!("echo {}", r.target));
            if r.target == "/off/one" {
                s.extend([pause_ms(50), write("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned")]);
            }
            s
        })
        .await;
        let h = proxy_with(&up, fast_path, "").await;
        let mut c = Wire::connect(&h).await;
        assert_ok(&c.roundtrip(get(&h, "/off/one")).await, "echo /off/one");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut other = Wire::connect(&h).await;
        assert_ok(&other.roundtrip(get(&h, "/off/two")).await, "echo /off/two");
        assert_ok(&c.roundtrip(get(&h, "/off/three")).await, "echo /off/three");
        assert!(up.connections() >= 2, "fast_path {fast_path}: the poisoned connection was reused");
        up.assert_no_errors();
    }
}

/// One retry rule on both transports: a request that reached the upstream is never
/// sent twice, even an idempotent one. Here the upstream reads the second request on a
/// reused connection and hangs up without answering: the client gets a 502, and the
/// upstream saw that request once.
#[tokio::test]
async fn a_request_that_reached_the_upstream_is_never_sent_twice() {
    for fast_path in TRANSPORTS {
        let up = RawUpstream::start(|r| match r.target.as_str() {
            "/off/dropped" => vec![Step::Close],
            t => ok(&format!("echo {t}")),
        })
        .await;
        let h = proxy_with(&up, fast_path, "").await;
        let mut c = Wire::connect(&h).await;
        assert_ok(&c.roundtrip(get(&h, "/off/first")).await, "echo /off/first");
        let r = c.roundtrip(get(&h, "/off/dropped")).await;
        assert_eq!(r.status, 502, "fast_path {fast_path}: {}", r.text());
        let seen: Vec<(usize, String)> = up.requests().iter().map(|s| (s.conn, s.target.clone())).collect();
        assert_eq!(
            seen,
            [(0, "/off/first".to_string()), (0, "/off/dropped".to_string())],
            "fast_path {fast_path}: sent on a reused connection, and only once"
        );
        // The next request goes on a new connection and is answered.
        assert_ok(&c.roundtrip(get(&h, "/off/after")).await, "echo /off/after");
        up.assert_no_errors();
    }
}
