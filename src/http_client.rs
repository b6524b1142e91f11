//! Outbound HTTP: one pooled hyper client per purpose, TLS by rustls (webpki roots,
//! plus the roots of a `ca_file` when given). Redirects are never followed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The connector used for every outbound connection.
pub type Connector = HttpsConnector<HttpConnector>;

/// A client for small JSON documents (JWKS, discovery, metadata APIs).
pub type JsonClient = Client<Connector, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read CA file {0}: {1}")]
    CaRead(String, std::io::Error),
    #[error("CA file {0} holds no usable certificate")]
    CaEmpty(String),
}

/// Builds the TLS-capable connector (ALPN h2 and http/1.1); `ca_file` adds trusted roots.
pub fn connector(ca_file: Option<&Path>) -> Result<Connector, ClientBuildError> {
    build_connector(ca_file, true)
}

/// [`connector`] offering only http/1.1 in ALPN: route forwarding speaks HTTP/1.1 to
/// upstreams (its pool holds HTTP/1 connections), so a TLS upstream must not pick h2.
pub fn http1_connector(ca_file: Option<&Path>) -> Result<Connector, ClientBuildError> {
    build_connector(ca_file, false)
}

fn build_connector(ca_file: Option<&Path>, http2: bool) -> Result<Connector, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ClientBuildError::CaRead(path.display().to_string(), e))?;
        let mut added = 0;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(ClientBuildError::CaEmpty(path.display().to_string()));
        }
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1();
    Ok(if http2 { builder.enable_http2().wrap_connector(http) } else { builder.wrap_connector(http) })
}

/// A pooled keep-alive client for bodies of type `B`.
pub fn client<B>(connector: Connector) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Why a fetch failed. Never carries a response body (it might hold secrets).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL")]
    Url,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("response body too large or unreadable")]
    Body,
}

/// A whole small response.
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `req` and reads at most `max_body` bytes of the answer, all within `timeout`.
pub async fn fetch(
    client: &JsonClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let work = async {
        let resp = client.request(req).await.map_err(|e| FetchError::Connect(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_body).collect().await.map_err(|_| FetchError::Body)?.to_bytes();
        Ok(Fetched { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| FetchError::Timeout)?
}

/// GET `url` with an `Accept: application/json` header.
pub fn get_request(url: &str) -> Result<Request<Full<Bytes>>, FetchError> {
    let uri: http::Uri = url.parse().map_err(|_| FetchError::Url)?;
    Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("claimsmith/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::new()))
        .map_err(|_| FetchError::Url)
}

/// `e` and its sources on one line (no URLs with credentials are ever built).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
