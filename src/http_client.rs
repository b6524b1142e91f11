//! Outbound HTTP: one pooled hyper client per purpose, TLS by rustls (webpki roots,
//! plus the roots of a `ca_file` when given). Redirects are never followed.
//!
//! The clients that reach the identity provider (JWKS, discovery, metadata APIs) go
//! through the outbound proxy of `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` ([`Egress`]);
//! route upstreams never do (docs/operations.md, "Outbound proxy").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

/// The connector used for every outbound connection: TLS over a connection that is
/// direct or, for the identity provider's clients, through the outbound proxy.
pub type Connector = HttpsConnector<EgressConnector>;

/// A client for small JSON documents (JWKS, discovery, metadata APIs). Knows its
/// [`Egress`] so that a request sent to an HTTP proxy in absolute-form carries the
/// proxy's credentials.
#[derive(Clone)]
pub struct JsonClient {
    client: Client<Connector, Full<Bytes>>,
    egress: Egress,
}

impl JsonClient {
    /// A pooled client over `connector`, which must have been built with the same
    /// `egress` ([`connector`]).
    pub fn new(connector: Connector, egress: &Egress) -> JsonClient {
        JsonClient { client: client(connector), egress: egress.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// Validation checks that a CA file holds a PEM certificate; this is one that
    /// rustls could not use.
    #[error("the CA file holds no usable certificate")]
    CaEmpty,
}

/// Builds the TLS-capable connector (ALPN h2 and http/1.1) for the identity
/// provider's clients; `ca_pem` (a `ca_file`'s content) adds trusted roots, `egress`
/// picks the proxy.
pub fn connector(ca_pem: Option<&[u8]>, egress: &Egress) -> Result<Connector, ClientBuildError> {
    build_connector(ca_pem, true, egress.clone())
}

/// [`connector`] offering only http/1.1 in ALPN: route forwarding speaks HTTP/1.1 to
/// upstreams (its pool holds HTTP/1 connections), so a TLS upstream must not pick h2.
/// Always direct: upstreams are in-cluster backends, and the environment's proxy
/// would silently reroute every forwarded request.
pub fn http1_connector(ca_pem: Option<&[u8]>) -> Result<Connector, ClientBuildError> {
    build_connector(ca_pem, false, Egress::none())
}

fn build_connector(ca_pem: Option<&[u8]>, http2: bool, egress: Egress) -> Result<Connector, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let mut added = 0;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(pem).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(ClientBuildError::CaEmpty);
        }
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let inner = EgressConnector { http, egress };
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1();
    Ok(if http2 { builder.enable_http2().wrap_connector(inner) } else { builder.wrap_connector(inner) })
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
    mut req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    if let Some(auth) = client.egress.absolute_form_auth(req.uri()) {
        req.headers_mut().insert(http::header::PROXY_AUTHORIZATION, auth);
    }
    let work = async {
        let resp = client.client.request(req).await.map_err(|e| FetchError::Connect(error_chain(&e)))?;
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

// ---------------------------------------------------------------------------------
// Outbound proxy (docs/operations.md, "Outbound proxy").

/// How long a proxy may take to answer CONNECT, once the TCP connection to it is up:
/// the same bound as a direct connect, so a proxy that accepts and then says nothing
/// fails the connect, not the whole fetch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a proxy's answer to CONNECT may take (status line and headers).
const MAX_CONNECT_ANSWER: usize = 8 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which outbound proxy, if any, each identity-provider destination goes through:
/// read from `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (or their lower-case forms)
/// when the state is built. Cheap to clone.
#[derive(Clone, Default)]
pub struct Egress(Option<Arc<EgressRules>>);

struct EgressRules {
    /// hyper-util's matcher: NO_PROXY as curl and Go read it, credentials parsed out
    /// of the proxy URL into a `Basic` value.
    matcher: Matcher,
    /// The proxies as `host:port`, for logs and errors (never the credentials).
    https: Option<String>,
    http: Option<String>,
    no_proxy: String,
}

/// Why the proxy variables cannot be used. Never holds their value (it may carry a
/// password), only the variable's name.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EgressError {
    #[error("not a proxy URL (expected http://[user:password@]host[:port])")]
    NotAUrl,
    #[error("an https:// proxy (TLS to the proxy itself) is not supported; give the proxy as http://host:port")]
    HttpsProxy,
    #[error("only http:// proxies are supported (not socks or other schemes)")]
    Scheme,
}

/// An [`EgressError`] with the name of the variable that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {error}")]
pub(crate) struct EgressVarError {
    pub(crate) var: &'static str,
    pub(crate) error: EgressError,
}

impl Egress {
    /// Every destination direct.
    pub fn none() -> Egress {
        Egress(None)
    }

    /// Reads `HTTPS_PROXY`/`https_proxy`, `HTTP_PROXY`/`http_proxy` and
    /// `NO_PROXY`/`no_proxy` (upper case first, as Go and hyper-util read them; an
    /// empty value counts as unset). `ALL_PROXY` is not read.
    pub(crate) fn from_env(host: &dyn crate::host::Host) -> Result<Egress, EgressVarError> {
        let get = |names: [&'static str; 2]| {
            names.into_iter().find_map(|n| host.env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        let https = get(["HTTPS_PROXY", "https_proxy"]);
        let http = get(["HTTP_PROXY", "http_proxy"]);
        let no = get(["NO_PROXY", "no_proxy"]).map(|(_, v)| v);
        Self::from_values(
            https.as_ref().map(|(n, v)| (*n, v.as_str())),
            http.as_ref().map(|(n, v)| (*n, v.as_str())),
            no.as_deref(),
        )
    }

    /// The rules from explicit values, each proxy as `(variable name, URL)`; the
    /// name only labels errors.
    pub(crate) fn from_values(
        https: Option<(&'static str, &str)>,
        http: Option<(&'static str, &str)>,
        no_proxy: Option<&str>,
    ) -> Result<Egress, EgressVarError> {
        let https_shown =
            https.map(|(var, v)| proxy_host_port(v).map_err(|error| EgressVarError { var, error })).transpose()?;
        let http_shown =
            http.map(|(var, v)| proxy_host_port(v).map_err(|error| EgressVarError { var, error })).transpose()?;
        if https_shown.is_none() && http_shown.is_none() {
            return Ok(Egress(None));
        }
        let mut b = Matcher::builder();
        if let Some((_, v)) = https {
            b = b.https(v);
        }
        if let Some((_, v)) = http {
            b = b.http(v);
        }
        let no_proxy = no_proxy.unwrap_or_default().trim().to_string();
        b = b.no(no_proxy.as_str());
        Ok(Egress(Some(Arc::new(EgressRules { matcher: b.build(), https: https_shown, http: http_shown, no_proxy }))))
    }

    /// What a start-up log says: each proxy's `host:port` and the NO_PROXY list;
    /// `None` when no proxy is set.
    pub(crate) fn describe(&self) -> Option<(String, String, String)> {
        let r = self.0.as_ref()?;
        let shown = |p: &Option<String>| p.clone().unwrap_or_else(|| "none".into());
        Some((shown(&r.https), shown(&r.http), r.no_proxy.clone()))
    }

    /// The proxy `dst` goes through, if any.
    fn intercept(&self, dst: &Uri) -> Option<Intercept> {
        self.0.as_ref()?.matcher.intercept(dst)
    }

    /// The `Proxy-Authorization` value a request to `dst` carries: only an `http://`
    /// destination sent in absolute-form to a proxy with credentials (for `https://`
    /// the credentials go on the CONNECT, never inside the tunnel).
    fn absolute_form_auth(&self, dst: &Uri) -> Option<HeaderValue> {
        if dst.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        self.intercept(dst)?.basic_auth().cloned()
    }
}

/// Checks a proxy URL as hyper-util's matcher will read it and returns its
/// `host:port` (default port 80). A URL the matcher would silently drop is an error
/// here, so a typo does not quietly send traffic direct.
fn proxy_host_port(value: &str) -> Result<String, EgressError> {
    let uri: Uri = value.trim().parse().map_err(|_| EgressError::NotAUrl)?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some("https") => return Err(EgressError::HttpsProxy),
        Some(_) => return Err(EgressError::Scheme),
    }
    let authority = uri.authority().ok_or(EgressError::NotAUrl)?;
    // The credentials, if any, come before the last '@'; they are never shown.
    let host_port = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, hp)| hp);
    let hp: http::uri::Authority = host_port.parse().map_err(|_| EgressError::NotAUrl)?;
    if hp.host().is_empty() {
        return Err(EgressError::NotAUrl);
    }
    Ok(format!("{}:{}", hp.host(), hp.port_u16().unwrap_or(80)))
}

/// The `host:port` of an intercepting proxy, for errors.
fn shown(proxy: &Intercept) -> String {
    let u = proxy.uri();
    format!("{}:{}", u.host().unwrap_or("?"), u.port_u16().unwrap_or(80))
}

/// Why a connection through the proxy failed. Names the proxy by `host:port` and
/// its status code; never carries what else the proxy sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("cannot connect to proxy {proxy}")]
    Connect {
        proxy: String,
        #[source]
        source: BoxError,
    },
    #[error("proxy {proxy} refused CONNECT to {dst}: HTTP {status}{hint}")]
    Refused { proxy: String, dst: String, status: u16, hint: &'static str },
    #[error("proxy {proxy} did not answer CONNECT to {dst} within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { proxy: String, dst: String },
    #[error("proxy {proxy} sent a malformed answer to CONNECT")]
    Malformed { proxy: String },
    #[error("proxy {proxy}: i/o error during CONNECT")]
    Io {
        proxy: String,
        #[source]
        source: std::io::Error,
    },
    #[error("destination has no host")]
    NoHost,
}

/// The inner connector of [`Connector`]: a TCP connection, direct or through the
/// proxy [`Egress`] picks for the destination. TLS (hyper-rustls) wraps it, so an
/// `https://` destination is reached through a CONNECT tunnel with TLS end to end.
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector,
    egress: Egress,
}

impl Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = self.egress.intercept(&dst);
        // `HttpConnector` is always ready, so a clone can be called without polling it.
        let mut http = self.http.clone();
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return Ok(EgressStream { io: http.call(dst).await?, proxied: false });
            };
            let name = shown(&proxy);
            let io = http
                .call(proxy.uri().clone())
                .await
                .map_err(|e| ProxyError::Connect { proxy: name.clone(), source: e.into() })?;
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let io = tunnel(io, &dst, proxy.basic_auth(), &name).await?;
                // Inside the tunnel the destination is spoken to directly (origin-form).
                Ok(EgressStream { io, proxied: false })
            } else {
                // The proxy forwards: hyper writes absolute-form targets on a
                // connection that says it is proxied (RFC 9112 §3.2.2).
                Ok(EgressStream { io, proxied: true })
            }
        })
    }
}

/// Opens a CONNECT tunnel to `dst` over `io` (RFC 9110 §9.3.6). hyper-util's own
/// `Tunnel` is not used: it reports every refusal but 407 as "unsuccessful", and
/// an operator needs the proxy's status to tell a policy refusal (403) from a
/// proxy that cannot reach the IdP (502).
async fn tunnel(
    io: TokioIo<TcpStream>,
    dst: &Uri,
    auth: Option<&HeaderValue>,
    proxy: &str,
) -> Result<TokioIo<TcpStream>, ProxyError> {
    let host = dst.host().ok_or(ProxyError::NoHost)?;
    let port = dst.port_u16().unwrap_or(443);
    let target = format!("{host}:{port}");
    let mut stream = io.into_inner();
    let exchange = async {
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = auth {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(auth.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let io_err = |source| ProxyError::Io { proxy: proxy.to_string(), source };
        stream.write_all(&head).await.map_err(io_err)?;
        let mut buf = vec![0u8; MAX_CONNECT_ANSWER];
        let mut len = 0;
        loop {
            let n = stream.read(&mut buf[len..]).await.map_err(io_err)?;
            if n == 0 {
                return Err(ProxyError::Malformed { proxy: proxy.to_string() });
            }
            len += n;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf[..len]) {
                Ok(httparse::Status::Complete(end)) => {
                    let status = resp.code.unwrap_or(0);
                    if !(200..300).contains(&status) {
                        let hint = match status {
                            407 => " (proxy credentials missing or refused)",
                            _ => "",
                        };
                        return Err(ProxyError::Refused {
                            proxy: proxy.to_string(),
                            dst: target.clone(),
                            status,
                            hint,
                        });
                    }
                    // The TLS client speaks first, so nothing may follow the answer;
                    // bytes that do would be lost to the handshake.
                    if end != len {
                        return Err(ProxyError::Malformed { proxy: proxy.to_string() });
                    }
                    return Ok(());
                }
                Ok(httparse::Status::Partial) if len < buf.len() => {}
                _ => return Err(ProxyError::Malformed { proxy: proxy.to_string() }),
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
        Ok(Ok(())) => Ok(TokioIo::new(stream)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyError::Timeout { proxy: proxy.to_string(), dst: target }),
    }
}

/// A connection made by [`EgressConnector`]; says whether hyper must write
/// absolute-form targets on it.
pub struct EgressStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for EgressStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(https: Option<&str>, http: Option<&str>, no: Option<&str>) -> Result<Egress, EgressVarError> {
        Egress::from_values(https.map(|v| ("HTTPS_PROXY", v)), http.map(|v| ("HTTP_PROXY", v)), no)
    }

    #[test]
    fn proxy_urls_are_checked_and_never_echoed() {
        for (value, want) in [
            ("https://u:hunter2@proxy:3129", "https:// proxy"),
            ("socks5://u:hunter2@proxy:1080", "only http://"),
            ("http://u:hunter2@", "not a proxy URL"),
            ("http://u:hunter2@ bad", "not a proxy URL"),
        ] {
            let e = rules(Some(value), None, None).err().unwrap_or_else(|| panic!("{value} accepted"));
            let shown = e.to_string();
            assert!(shown.starts_with("HTTPS_PROXY: ") && shown.contains(want), "{value}: {shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(rules(None, None, Some("*")).is_ok_and(|e| e.describe().is_none()), "NO_PROXY alone: no proxy");
    }

    #[test]
    fn the_start_log_shows_host_and_port_only() {
        let e =
            rules(Some("http://u:hunter2@proxy.corp:3128"), Some("proxy.corp"), Some(" .corp, 10.0.0.0/8 ")).unwrap();
        let (https, http, no) = e.describe().unwrap();
        assert_eq!(
            (https.as_str(), http.as_str(), no.as_str()),
            ("proxy.corp:3128", "proxy.corp:80", ".corp, 10.0.0.0/8")
        );
        let e = rules(None, Some("proxy.corp:3128"), None).unwrap();
        assert_eq!(e.describe().unwrap().1, "proxy.corp:3128", "no scheme: http://");
        assert!(e.intercept(&"http://idp.example/".parse().unwrap()).is_some());
        let e = rules(None, Some("http://[::1]:8080"), None).unwrap();
        assert_eq!(e.describe().unwrap().0, "none");
        assert_eq!(e.describe().unwrap().1, "[::1]:8080");
    }

    #[test]
    fn no_proxy_excludes_suffixes_ips_and_cidrs() {
        let e = rules(
            Some("http://proxy:3128"),
            Some("http://proxy:3128"),
            Some("example.com, 10.0.0.0/8, ::1, .internal"),
        )
        .unwrap();
        let proxied = |u: &str| e.intercept(&u.parse().unwrap()).is_some();
        for direct in [
            "https://example.com/",
            "https://auth.example.com/",
            "http://10.1.2.3:8080/",
            "https://[::1]:443/",
            "https://idp.internal/",
        ] {
            assert!(!proxied(direct), "{direct} proxied");
        }
        for via in ["https://notexample.com/", "http://11.0.0.1/", "https://tenant.auth0.com/"] {
            assert!(proxied(via), "{via} direct");
        }
        let everything = rules(Some("http://proxy:3128"), None, Some("*")).unwrap();
        assert!(everything.intercept(&"https://a.b/".parse().unwrap()).is_none(), "NO_PROXY=* excludes all");
    }

    #[test]
    fn credentials_go_on_absolute_form_requests_only() {
        let e = rules(Some("http://u:p@proxy:3128"), Some("http://u:p@proxy:3128"), Some("direct.example")).unwrap();
        let auth = |u: &str| e.absolute_form_auth(&u.parse().unwrap());
        assert_eq!(auth("http://idp.example/x").as_ref().map(|v| v.as_bytes()), Some(&b"Basic dTpw"[..]));
        assert!(auth("https://idp.example/x").is_none(), "https: the credentials go on the CONNECT");
        assert!(auth("http://direct.example/x").is_none(), "not proxied: no credentials");
        assert!(Egress::none().absolute_form_auth(&"http://idp.example/".parse().unwrap()).is_none());
    }

    /// A proxy that accepts the connection and never answers CONNECT fails the
    /// connect after `CONNECT_TIMEOUT`, naming the proxy.
    #[tokio::test]
    async fn a_silent_proxy_times_out_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let egress = rules(Some(&format!("http://{addr}")), None, None).unwrap();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let mut c = EgressConnector { http, egress };
        let started = tokio::time::Instant::now();
        let err = c.call("https://idp.example:8443/".parse().unwrap()).await.err().unwrap();
        let took = started.elapsed();
        assert!(took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_secs(3), "{took:?}");
        assert_eq!(err.to_string(), format!("proxy {addr} did not answer CONNECT to idp.example:8443 within 5s"));
        hold.abort();
    }
}
