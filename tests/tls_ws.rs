//! Transports (docs/operations.md): TLS on the proxy listener (h2 and http/1.1 by ALPN),
//! an https upstream trusted through `route.ca_file`, h2c with prior knowledge on the
//! plain listener, and WebSocket upgrades through the proxy with authentication on.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, as PEM
/// files in `dir`: (ca.pem, server.crt, server.key).
struct TestPki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn pki(dir: &Path) -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "claimsmith test CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    let pki = TestPki { ca: dir.join("ca.pem"), cert: dir.join("server.crt"), key: dir.join("server.key") };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn server_tls(pki: &TestPki, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&pki.cert).unwrap().map(Result::unwrap).collect();
    let key: PrivateKeyDer<'static> = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn client_tls(ca: &Path, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS backend recording the headers of every request; answers with the HTTP
/// version it saw.
async fn tls_upstream(pki: &TestPki) -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let acceptor = server_tls(pki, &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        record.lock().unwrap().push(req.headers().clone());
                        let v = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(json_response(
                            StatusCode::OK,
                            &json!({"tls_upstream": true, "version": v}),
                        ))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, seen)
}

/// One GET over TLS with the given ALPN; returns (negotiated ALPN, status, version).
async fn tls_get(
    addr: SocketAddr,
    ca: &Path,
    alpn: &[u8],
    path: &str,
    token: &str,
) -> (Vec<u8>, StatusCode, http::Version) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client_tls(ca, alpn).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let req = Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if negotiated == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://localhost{path}").parse().unwrap();
        req.headers_mut().remove("host");
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let (status, version) = (resp.status(), resp.version());
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut secrets = default_secrets();
    secrets.push(token.to_string());
    assert_no_leak(parts.status, &parts.headers, &body, &secrets);
    (negotiated, status, version)
}

/// The harness with TLS on the proxy listener, its certificate from a test CA in `dir`.
async fn tls_harness(dir: &Path) -> (Harness, TestPki) {
    init();
    let pki = pki(dir);
    let template = DEFAULT_TOML.replace(
        "token_cookie = \"id_token\"",
        &format!(
            "token_cookie = \"id_token\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            pki.cert.display(),
            pki.key.display()
        ),
    );
    (Harness::start_with(&template, default_metadata()).await, pki)
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1_by_alpn() {
    let certs = tempfile::tempdir().unwrap();
    let (h, pki) = tls_harness(certs.path()).await;
    let token = h.issuer.token(USER_1);
    for (alpn, version) in [(&b"h2"[..], http::Version::HTTP_2), (&b"http/1.1"[..], http::Version::HTTP_11)] {
        let (negotiated, status, v) = tls_get(h.proxy.proxy_addr, &pki.ca, alpn, "/api/tls", &token).await;
        assert_eq!(negotiated, alpn);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v, version);
        let seen = h.upstream.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert!(seen.headers.get("x-internal-token").is_some());
        assert!(seen.headers.get("authorization").is_none());
    }
    // Plain HTTP on the TLS port is not served.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), plain.get(h.proxy_url("/api/x").parse().unwrap()))
        .await;
    assert!(!matches!(r, Ok(Ok(ref resp)) if resp.status() == StatusCode::OK));
}

/// One HTTP/1.1 answer read off `stream`: status and body (`Content-Length` or chunked).
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer: {}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: Option<usize> =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap());
    buf.drain(..end);
    let mut body = Vec::new();
    match length {
        Some(len) => {
            while buf.len() < len {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            body.extend(buf.drain(..len));
        }
        None => loop {
            // Chunked: size line, data, CRLF; a zero size ends it.
            while !buf.windows(2).any(|w| w == b"\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        },
    }
    (status, body)
}

/// HTTP/1.1 over TLS takes the fast path, keep-alive included, and a request only
/// hyper serves (a chunked body) is handed over on the same TLS connection, which
/// hyper then serves to its end.
#[tokio::test]
async fn http1_over_tls_keeps_alive_through_the_fast_path_and_hands_over() {
    use tokio::io::AsyncWriteExt;
    let certs = tempfile::tempdir().unwrap();
    let (h, pki) = tls_harness(certs.path()).await;
    let token = h.issuer.token(USER_1);
    let tcp = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    let mut tls =
        client_tls(&pki.ca, b"http/1.1").connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let mut buf = Vec::new();
    let auth = format!("authorization: Bearer {token}\r\n");
    let requests = [
        format!("GET /api/one HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n"),
        format!("POST /api/two HTTP/1.1\r\nhost: localhost\r\n{auth}content-length: 5\r\n\r\nhello"),
        format!(
            "POST /api/three HTTP/1.1\r\nhost: localhost\r\n{auth}transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        format!("GET /api/four HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n"),
    ];
    for (i, r) in requests.iter().enumerate() {
        tls.write_all(r.as_bytes()).await.unwrap();
        let (status, _) = tokio::time::timeout(std::time::Duration::from_secs(10), read_answer(&mut tls, &mut buf))
            .await
            .unwrap_or_else(|_| panic!("request {i}: no answer"));
        assert_eq!(status, 200, "request {i}");
    }
    let seen = h.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(paths, ["/api/one", "/api/two", "/api/three", "/api/four"]);
    assert_eq!(&seen[1].body[..], b"hello");
    assert_eq!(&seen[2].body[..], b"abc");
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-proto"], "https", "{}", s.uri);
        assert!(s.headers.get("x-internal-token").is_some(), "{}", s.uri);
        assert!(s.headers.get("authorization").is_none(), "{}", s.uri);
    }
    assert!(buf.is_empty(), "bytes after the last answer");
}

#[tokio::test]
async fn https_upstream_is_trusted_through_route_ca_file() {
    init();
    let certs = tempfile::tempdir().unwrap();
    let pki = pki(certs.path());
    let (tls_addr, tls_seen) = tls_upstream(&pki).await;
    let template = format!(
        "{DEFAULT_TOML}\n[[route]]\npath_prefix = \"/secure/\"\nupstream = \"https://127.0.0.1:{port}\"\nca_file = \"{ca}\"\naudience = \"secure-api\"\n\n[[route]]\npath_prefix = \"/secure-by-name/\"\nupstream = \"https://localhost:{port}/base\"\nca_file = \"{ca}\"\naudience = \"secure-api\"\n\n[[route]]\npath_prefix = \"/untrusted/\"\nupstream = \"https://127.0.0.1:{port}\"\naudience = \"secure-api\"\n",
        port = tls_addr.port(),
        ca = pki.ca.display()
    );
    let h = Harness::start_with(&template, default_metadata()).await;
    let token = h.issuer.token(USER_1);

    let r = h.get_with_token("/secure/orders", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["tls_upstream"], true);
    let headers = tls_seen.lock().unwrap().last().cloned().unwrap();
    let internal = headers["x-internal-token"].to_str().unwrap().to_string();
    let claims = verify_internal(&internal, &h.admin_jwks().await, "secure-api");
    assert_eq!(claims["sub"], USER_1);
    assert!(headers.get("authorization").is_none());

    let r = h.get_with_token("/secure-by-name/x", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Without the CA the upstream's certificate is not trusted: 502, nothing sent.
    let before = tls_seen.lock().unwrap().len();
    let r = h.get_with_token("/untrusted/x", &token).await;
    r.assert_problem(502);
    assert_eq!(tls_seen.lock().unwrap().len(), before);
}

#[tokio::test]
async fn plain_listener_speaks_h2c_with_prior_knowledge() {
    let h = Harness::start().await;
    let token = h.issuer.token(USER_1);
    let h2c = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let req = Request::get(h.proxy_url("/api/h2c"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2c.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    h.audit(&Resp { status: parts.status, headers: parts.headers, body: body.clone() });
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["upstream"], "ok");
    let claims = verify_internal(&h.last_internal_token().unwrap(), &h.admin_jwks().await, INTERNAL_AUD);
    assert_eq!(claims["sub"], USER_1);
}

/// A WebSocket echo backend that records the upgrade request's headers.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn ws_echo() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let record = record.clone();
            tokio::spawn(async move {
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    record.lock().unwrap().push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn websocket_upgrade_passes_through_with_the_internal_token() {
    init();
    let (ws_addr, ws_seen) = ws_echo().await;
    let template = format!(
        "{DEFAULT_TOML}\n[[route]]\npath_prefix = \"/ws/\"\nupstream = \"http://{ws_addr}\"\naudience = \"ws-api\"\n"
    );
    let h = Harness::start_with(&template, default_metadata()).await;
    let id_token = h.issuer.token(USER_1);

    let mut req = format!("ws://{}/ws/echo", h.proxy.proxy_addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {id_token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("WebSocket through the proxy failed");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().get("x-internal-token").is_none());
    for text in ["hello", "second message"] {
        ws.send(Message::text(text)).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &[1u8, 2, 3]);
    let _ = ws.close(None).await;

    let headers = ws_seen.lock().unwrap().last().cloned().expect("the backend saw no upgrade");
    let internal = headers["x-internal-token"].to_str().unwrap().to_string();
    let claims = verify_internal(&internal, &h.admin_jwks().await, "ws-api");
    assert_eq!(claims["sub"], USER_1);
    assert!(headers.get("authorization").is_none());
    for (name, v) in &headers {
        assert!(!v.as_bytes().windows(id_token.len()).any(|w| w == id_token.as_bytes()), "ID token in {name}");
    }

    // Without a token the upgrade is refused and the backend sees nothing.
    let before = ws_seen.lock().unwrap().len();
    let req = format!("ws://{}/ws/echo", h.proxy.proxy_addr).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(ws_seen.lock().unwrap().len(), before);
}

/// WebSocket upgrades are forwarded only where the route allows them: by default on
/// routes that authenticate the caller, and on an `auth = "off"` route only with
/// `websocket = true` (docs/security.md, "Upgrades"). Refused, the request goes on as
/// a plain GET without `Upgrade`, which the WebSocket backend does not accept.
#[tokio::test]
async fn websocket_upgrades_only_where_the_route_allows_them() {
    init();
    let (ws_addr, ws_seen) = ws_echo().await;
    let template = format!(
        "{DEFAULT_TOML}\n[[route]]\npath_prefix = \"/open-ws/\"\nupstream = \"http://{ws_addr}\"\nauth = \"off\"\n\n\
         [[route]]\npath_prefix = \"/open-ws-on/\"\nupstream = \"http://{ws_addr}\"\nauth = \"off\"\nwebsocket = true\n\n\
         [[route]]\npath_prefix = \"/ws-off/\"\nupstream = \"http://{ws_addr}\"\naudience = \"ws-api\"\nwebsocket = false\n"
    );
    let h = Harness::start_with(&template, default_metadata()).await;
    let token = h.issuer.token(USER_1);
    for (path, allowed) in [("/open-ws/echo", false), ("/open-ws-on/echo", true), ("/ws-off/echo", false)] {
        let mut req = format!("ws://{}{path}", h.proxy.proxy_addr).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let before = ws_seen.lock().unwrap().len();
        match tokio_tungstenite::connect_async(req).await {
            Ok((mut ws, resp)) => {
                assert!(allowed, "{path}: upgraded");
                assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
                ws.send(Message::text("hi")).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "hi");
                assert_eq!(ws_seen.lock().unwrap().len(), before + 1);
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!allowed, "{path}: refused with {}", resp.status());
                assert_ne!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
                // The backend never saw an upgrade request.
                assert_eq!(ws_seen.lock().unwrap().len(), before, "{path}");
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }
}
