//! Attacks on an authentication proxy below the token layer: request smuggling,
//! malformed framing, slow and idle clients, oversized header sections. Raw TCP
//! throughout, since a conforming client would refuse to send these.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// listen.header_read_timeout = 1s, max_header_bytes = 16 KiB.
fn template() -> String {
    Harness::template_with_listen("header_read_timeout = \"1s\"\nmax_header_bytes = 16384")
}

async fn harness() -> Harness {
    Harness::start_with(&template(), default_metadata()).await
}

/// Sends `req` raw; the answer must be 400 or the connection must close without one.
async fn refused_raw(h: &Harness, req: &str) {
    let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    match raw_read_response(&mut s, &mut buf).await {
        None => {}
        Some(r) => {
            h.audit(&r.to_resp());
            assert_eq!(r.status, 400, "{req:?} was answered {} {:?}", r.status, String::from_utf8_lossy(&r.body));
            // Nothing more: the connection is not reused after a framing error.
            assert!(raw_read_response(&mut s, &mut buf).await.is_none(), "{req:?}: a second answer came");
        }
    }
}

fn host(h: &Harness) -> String {
    h.proxy.proxy_addr.to_string()
}

// ---------------------------------------------------------------------------
// Smuggling

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    // RFC 9112 §6.1: a server MAY reject CL + TE, or process by TE alone and close the
    // connection after responding. hyper (which parses for claimsmith) does the latter
    // and drops Content-Length before claimsmith sees the request, so a 400 is not
    // possible without replacing the HTTP/1 parser. What must hold either way: the
    // request hidden behind the framing disagreement never reaches the upstream, the
    // forwarded body is the TE reading, and the connection is not reused.
    let h = harness().await;
    let host = host(&h);
    let smuggled = format!("GET /api/admin HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let cl_te = format!(
        "POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let te_cl = format!(
        "POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    for (req, te_body) in [(cl_te, String::new()), (te_cl, smuggled.clone())] {
        let before = h.upstream.requests().len();
        let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        if let Some(r) = raw_read_response(&mut s, &mut buf).await {
            h.audit(&r.to_resp());
            assert!(r.status == 400 || r.status == 200, "{}", r.status);
            if r.status == 200 {
                let seen = h.upstream.requests();
                assert_eq!(seen.len(), before + 1);
                let last = seen.last().unwrap();
                assert_eq!(last.uri, "/public/x");
                assert_eq!(last.body, te_body.as_bytes(), "the body was not read by Transfer-Encoding");
            }
            // No second answer: the connection is closed, the leftover bytes unread.
            assert!(raw_read_response(&mut s, &mut buf).await.is_none(), "the connection was reused");
        }
    }
    for s in h.upstream.requests() {
        assert!(!s.uri.starts_with("/api/"), "a smuggled request reached the upstream: {}", s.uri);
    }
    // The strict part of the rule on a route that needs a token: nothing at all.
    let up = Upstream::start().await;
    let h2 = Harness::start_parts(Issuer::start().await, up, &template(), default_metadata()).await;
    let req = format!(
        "POST /api/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let mut s = TcpStream::connect(h2.proxy.proxy_addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = raw_read_response(&mut s, &mut buf).await;
    assert!(r.as_ref().is_none_or(|r| r.status == 400 || r.status == 401), "{r:?}");
    assert!(raw_read_response(&mut s, &mut buf).await.is_none(), "the connection was reused");
    assert!(h2.upstream.saw_nothing());
}

#[tokio::test]
async fn differing_content_lengths_are_refused() {
    let h = harness().await;
    let host = host(&h);
    for req in [
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 40\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: +5\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0x5\r\n\r\nhello"),
    ] {
        refused_raw(&h, &req).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn transfer_encoding_other_than_final_chunked_is_refused() {
    let h = harness().await;
    let host = host(&h);
    for te in ["chunked, identity", "identity", "xchunked", "chunked\u{b}", "gzip"] {
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        refused_raw(&h, &req).await;
    }
    // Transfer-Encoding on HTTP/1.0 is not honoured either.
    refused_raw(
        &h,
        &format!(
            "POST /public/x HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    )
    .await;
    // A space before the colon (RFC 9112 §5.1: must be refused).
    refused_raw(
        &h,
        &format!(
            "POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn obs_fold_is_refused() {
    let h = harness().await;
    let host = host(&h);
    for req in [
        format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello"
        ),
        format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\nX-Internal-Token: a\r\n\tforged\r\n\r\n"),
    ] {
        refused_raw(&h, &req).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn malformed_chunked_bodies_are_refused() {
    let h = harness().await;
    let host = host(&h);
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",                   // not hex
        "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", // size overflows
        "-5\r\nhello\r\n0\r\n\r\n",                   // negative
        "5 5\r\nhello\r\n0\r\n\r\n",                  // junk in the size
        "\r\nhello\r\n0\r\n\r\n",                     // no size
    ] {
        let req = format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        refused_raw(&h, &req).await;
    }
    assert!(h.upstream.saw_nothing(), "{:?}", h.upstream.requests().iter().map(|s| &s.uri).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// Slow and idle clients

#[tokio::test]
async fn slow_header_client_is_dropped_after_the_header_read_timeout() {
    let h = harness().await;
    let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    s.write_all(format!("GET /public/x HTTP/1.1\r\nHost: {}\r\n", host(&h)).as_bytes()).await.unwrap();
    // One header byte every 200 ms: never finishes the head within 1 s.
    let mut closed = false;
    for i in 0..50 {
        if s.write_all(if i % 2 == 0 { b"X" } else { b"-" }).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(200)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a client trickling its header section was never dropped");
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_header_read_timeout() {
    let h = harness().await;
    let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(15)).await, "a connection that sends nothing is held forever");
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn partial_h2_preface_client_is_dropped_after_the_header_read_timeout() {
    let h = harness().await;
    let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(15)).await,
        "a half-sent h2 preface holds the connection forever"
    );
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_service() {
    // The default header_read_timeout (10 s), so the idle connections stay open
    // while the normal request is made.
    let h = Harness::start().await;
    let mut idle = Vec::with_capacity(2000);
    for i in 0..2000 {
        match TcpStream::connect(h.proxy.proxy_addr).await {
            Ok(mut s) => {
                // Half send nothing, half a partial request line.
                if i % 2 == 1 {
                    let _ = s.write_all(b"GET /publ").await;
                }
                idle.push(s);
            }
            Err(e) => panic!("connection {i} failed: {e}"),
        }
    }
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = h.get("/public/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.requests().len(), 2);
    drop(idle);
}

// ---------------------------------------------------------------------------
// Oversized header sections

#[tokio::test]
async fn hundred_cookie_headers_are_431() {
    let h = harness().await;
    let mut req = format!("GET /public/x HTTP/1.1\r\nHost: {}\r\n", host(&h));
    for i in 0..100 {
        req.push_str(&format!("Cookie: c{i}={}\r\n", "v".repeat(20)));
    }
    req.push_str("\r\n");
    let r = h.raw(req.as_bytes()).await;
    assert_eq!(r.map(|r| r.status), Some(431));
    // With the hyper client too (it sends them as 100 header lines).
    let values: Vec<String> = (0..100).map(|i| format!("c{i}={}", "v".repeat(20))).collect();
    let hdrs: Vec<(&str, &str)> = values.iter().map(|v| ("cookie", v.as_str())).collect();
    let r = h.get("/public/x", &hdrs).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn twenty_kib_header_value_is_431() {
    let h = harness().await;
    let v = "v".repeat(20 * 1024);
    let r = h.raw(format!("GET /public/x HTTP/1.1\r\nHost: {}\r\nX-Big: {v}\r\n\r\n", host(&h)).as_bytes()).await;
    assert_eq!(r.map(|r| r.status), Some(431));
    let r = h.get("/public/x", &[("x-big", &v)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // In a cookie (where a token would ride) and in Authorization as well.
    let r = h.get("/api/x", &[("cookie", &format!("id_token={v}"))]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let r = h.get("/api/x", &[("authorization", &format!("Bearer {v}"))]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(h.upstream.saw_nothing());
}
