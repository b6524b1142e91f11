//! The request pipeline (docs/architecture.md), one phase per function, in call order,
//! the same for both transports (the fast path in `h1` and hyper):
//!
//! ```text
//!  route_request ─► admit ────────────────────────────────────────────────────────► forward ─► respond ─► record
//!  head, path,      body limit ─► token ─► verify ─► metadata ─► authorize ─► mint ─► headers
//!  route
//!  431 400 404      413           401      401/503   401/503     403                           502/504
//! ```
//!
//! Any phase may end the request with a [`ProxyError`], which becomes the answer in
//! `error.rs`. Nothing is sent upstream before every check has passed. Forwarding and
//! responding are the transports' own (hyper's client here in [`pipeline`], the fast
//! path's raw connections in `h1`).

pub mod check;
mod forward;
pub mod pool;
mod rules;
mod state;
pub mod upstream;

pub use state::App;

use crate::wire::{hygiene, path};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::config::{AuthMode, RouteConfig};
use crate::error::{Body, ProxyError};
use crate::http_client::Connector;
use crate::metadata::StoredMetadata;
use crate::metadata::cache::{CacheLookup, Kind};
use crate::mint::MintRequest;
use crate::verify::VerifiedIdentity;
use upstream::{PooledBody, Upstream};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A route with everything the hot path needs precomputed.
pub struct Route {
    pub config: RouteConfig,
    pub name: Arc<str>,
    audience: Option<Arc<str>>,
    host_header: HeaderValue,
    /// The upstream URL's path without its trailing slash ("" for the root).
    base_path: String,
    /// hyper's client, for an `https://` upstream.
    upstream: Upstream,
    /// A plain-HTTP upstream's connections, the route's one pool for both transports.
    pub(crate) h1: Option<Arc<pool::Pool>>,
}

impl Route {
    /// `connector` should offer only http/1.1 (`http_client::http1_connector`).
    pub fn new(config: RouteConfig, connector: Connector) -> Result<Route, String> {
        let u = &config.upstream;
        let scheme = if u.scheme() == "https" { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
        let host = u.host_str().ok_or("upstream has no host")?;
        let authority_s = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority: http::uri::Authority = authority_s.parse().map_err(|_| "bad upstream authority")?;
        let host_header = HeaderValue::from_str(&authority_s).map_err(|_| "bad upstream host")?;
        // A plain-HTTP upstream has the route's raw connections, used by both transports;
        // an https:// one is reached through hyper's client (`upstream`).
        let h1 = match (u.scheme(), u.port_or_known_default()) {
            ("http", Some(port)) => Some(Arc::new(pool::Pool::new(host, port))),
            _ => None,
        };
        let upstream = Upstream::new(connector, scheme, authority).map_err(|_| "bad upstream URL")?;
        Ok(Route {
            h1,
            name: config.name.clone(),
            audience: config.audience.as_deref().map(Arc::from),
            host_header,
            base_path: u.path().trim_end_matches('/').to_string(),
            upstream,
            config,
        })
    }
}

/// Facts about the connection a request came in on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as an `X-Forwarded-For` element, formatted once per
    /// connection rather than per request.
    peer_ip: HeaderValue,
}

impl Conn {
    pub fn new(peer: SocketAddr, tls: bool) -> Conn {
        // An IP address is always a valid header value.
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""));
        Conn { peer, tls, peer_ip }
    }
}

/// What the access log and metrics learn about one request.
#[derive(Default)]
pub struct Outcome {
    pub route: Option<Arc<str>>,
    pub upstream_time: Option<Duration>,
    pub error: Option<&'static str>,
    /// Who the error is to be blamed on.
    pub blame: Option<crate::error::Blame>,
    /// Metadata cache: "hit", "stale" or "miss" (a miss if either lookup missed).
    pub cache: Option<&'static str>,
    /// The authorization rule that refused the request (its name, never a value).
    pub rule: Option<Arc<str>>,
    /// The request's `X-Request-Id` ([`request_id`]), so its log line can be found
    /// from what the client, the upstream and the log each saw.
    pub request_id: Option<HeaderValue>,
    /// Proxied, or a forward-auth check.
    pub mode: Mode,
    /// The request's trace, with `[telemetry]` (docs/operations.md, "Tracing").
    pub trace: Option<Box<crate::telemetry::Trace>>,
}

/// How a request reached the pipeline, for metrics and the access log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the proxy listener: forwarded once admitted.
    #[default]
    Proxy,
    /// On the forward-auth listener: a check, never forwarded (docs/forward-auth.md).
    ForwardAuth,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::ForwardAuth => "forward_auth",
        }
    }
}

impl Outcome {
    /// Notes that the request ended with `e`.
    pub fn failed(&mut self, e: &ProxyError) {
        self.error = Some(e.label());
        self.blame = Some(e.blame());
    }
}

/// Handles one request end to end; never fails (errors become answers).
pub async fn handle(app: &App, req: Request<Incoming>, conn: Conn) -> (Response<Body>, Outcome) {
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let request_id = request_id(req.headers());
    outcome.request_id = Some(request_id.clone());
    outcome.trace = app.telemetry.as_ref().map(|t| t.start(req.headers()));
    let mut resp = match pipeline(app, req, conn, start, &request_id, &mut outcome).await {
        Ok(r) => r,
        Err(e) => {
            outcome.failed(&e);
            e.into_response()
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    (resp, outcome)
}

/// Counts the request in the metrics and writes its access-log line.
pub(crate) fn record(app: &App, method: &http::Method, outcome: &Outcome, status: u16, elapsed: Duration) {
    let none: Arc<str>;
    let route = match &outcome.route {
        Some(r) => r,
        None => {
            none = Arc::from("none");
            &none
        }
    };
    match outcome.mode {
        Mode::Proxy => app.metrics.record(route, status, elapsed),
        Mode::ForwardAuth => app.metrics.record_check(route, status, elapsed),
    }
    if let (Some(trace), Some(telemetry)) = (&outcome.trace, &app.telemetry) {
        let done = crate::telemetry::Finished {
            method: method.as_str(),
            route,
            mode: outcome.mode.as_str(),
            status,
            error: outcome.error,
            elapsed,
        };
        telemetry.finish(trace, done);
    }
    // The access log names the route, never the path's query or any header value
    // but the request id (visible ASCII only, at most 128 bytes: `request_id`).
    if !tracing::enabled!(target: "claimsmith::access", tracing::Level::INFO) {
        return;
    }
    let request_id = outcome.request_id.as_ref().and_then(|v| v.to_str().ok());
    if let Some(mut line) = crate::log_writer::JsonLine::info("request") {
        // The same fields, in the same order, as the event below.
        if let Some(id) = request_id {
            line.str("request_id", id);
        }
        if let Some(t) = &outcome.trace {
            line.str("trace_id", &t.ctx.trace_id_hex());
        }
        line.str("mode", outcome.mode.as_str());
        line.str("method", method.as_str());
        line.str("route", route);
        line.uint("status", u64::from(status));
        line.float("duration_ms", elapsed.as_secs_f64() * 1000.0);
        if let Some(d) = outcome.upstream_time {
            line.float("upstream_ms", d.as_secs_f64() * 1000.0);
        }
        let optional = [
            ("cache", outcome.cache),
            ("error", outcome.error),
            ("blame", outcome.blame.map(crate::error::Blame::as_str)),
            ("rule", outcome.rule.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                line.str(key, v);
            }
        }
        line.finish("claimsmith::access");
        return;
    }
    tracing::info!(
        target: "claimsmith::access",
        request_id,
        trace_id = outcome.trace.as_ref().map(|t| t.ctx.trace_id_hex()),
        mode = outcome.mode.as_str(),
        method = %method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = outcome.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        cache = outcome.cache,
        error = outcome.error,
        blame = outcome.blame.map(crate::error::Blame::as_str),
        rule = outcome.rule.as_deref(),
        "request"
    );
}

async fn pipeline(
    app: &App,
    req: Request<Incoming>,
    conn: Conn,
    start: Instant,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let arrived = Arrived {
        method: &parts.method,
        version: parts.version,
        head_len: parts.uri.path_and_query().map_or(0, |p| p.as_str().len()),
        path: parts.uri.path(),
        authority: parts.uri.authority(),
        authorization: None,
        content_length: declared_length(&parts.headers),
        may_upgrade: true,
    };
    let (route, path) = route_request(app, &arrived, &parts.headers)?;
    let upgrade = admit(app, route, arrived, &mut parts.headers, (&conn, request_id), outcome).await?;
    // Upgrading: the client's side of the connection, once hyper has sent the 101.
    let on_client_upgrade = upgrade.and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let target = upstream_target(route, &path, parts.uri.query())?;
    let max_body = usize::try_from(route.config.max_body_bytes).unwrap_or(usize::MAX);
    let body = http_body_util::Limited::new(body, max_body);
    let sent = Instant::now();
    let remaining = app.config.listen.request_timeout.saturating_sub(start.elapsed());
    let traced = crate::telemetry::clock(&outcome.trace);
    // A plain-HTTP upstream: over the route's own connections, the fast path's pool.
    if let Some(pool) = &route.h1 {
        let req = forward::Outgoing {
            method: &parts.method,
            target: target.as_str(),
            headers: &mut parts.headers,
            body,
            upgrade: on_client_upgrade,
            token_header: &app.token_header_canonical,
        };
        let result = tokio::time::timeout(remaining, forward::forward(pool, req)).await;
        outcome.upstream_time = Some(sent.elapsed());
        crate::telemetry::mark(&mut outcome.trace, "upstream", traced);
        return result.unwrap_or(Err(ProxyError::UpstreamTimeout));
    }
    parts.uri = Uri::from(target);
    parts.version = http::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);
    let result = tokio::time::timeout(remaining, route.upstream.request(upstream_req)).await;
    outcome.upstream_time = Some(sent.elapsed());
    crate::telemetry::mark(&mut outcome.trace, "upstream", traced);
    let mut resp = match result {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) if let Some(err) = client_body_failed(&e) => {
            tracing::info!(route = %route.name, error = %crate::http_client::error_chain(&e), "the client's request body failed while forwarding");
            return Err(err);
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, error = %crate::http_client::error_chain(&e), "upstream request failed");
            return Err(ProxyError::UpstreamUnreachable);
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = on_client_upgrade else {
            // What follows on that connection is not HTTP we asked for: never relay it.
            tracing::warn!(route = %route.name, "the upstream switched protocols unasked");
            return Err(ProxyError::UpstreamUnreachable);
        };
        return splice_upgrade(app, client_upgrade, &mut resp).map(|_| resp.map(boxed));
    }
    respond(app, resp.headers_mut());
    Ok(resp.map(boxed))
}

/// A request as it arrived, whichever transport read it: what the phases need besides
/// its header fields.
pub(crate) struct Arrived<'a> {
    pub method: &'a http::Method,
    pub version: http::Version,
    /// The request target's length plus the size of any field kept out of the header
    /// map (the fast path's `Authorization` and `Content-Length`), for the head limit.
    pub head_len: usize,
    /// The path as sent (not yet normalised).
    pub path: &'a str,
    /// The target's authority, if it had one (absolute-form).
    pub authority: Option<&'a http::uri::Authority>,
    /// `Authorization` values kept out of the header map (the fast path: they are never
    /// forwarded, so never need to be a validated `HeaderValue`); `None`: in the map.
    pub authorization: Option<&'a crate::wire::h1::Authorization>,
    /// The body's declared length.
    pub content_length: Option<u64>,
    /// Whether the transport can carry a protocol upgrade (hyper can; the fast path
    /// hands an upgrade request to hyper before it gets here).
    pub may_upgrade: bool,
}

/// Phase **route**: the checks that need no token (head size and framing, path
/// normalisation) and the longest matching route. Returns the route and the
/// normalised path.
pub(crate) fn route_request<'a, 'p>(
    app: &'a App,
    req: &Arrived<'p>,
    headers: &HeaderMap,
) -> Result<(&'a Route, std::borrow::Cow<'p, str>), ProxyError> {
    check_head(app, req.version, req.head_len, headers)?;
    let path = path::normalize(req.path)?;
    let route = route(app, &path)?;
    Ok((route, path))
}

/// The phases between routing and forwarding, in order, for both transports:
/// **body limit** (413), **token** and **verify** (401/503), **metadata** (401/503),
/// **authorize** (the route's rules, 403), **mint**, then **headers**: `headers` becomes what the upstream gets.
/// Returns the `Upgrade` value when a WebSocket upgrade is to be forwarded.
/// Nothing has been sent upstream when this returns an error.
pub(crate) async fn admit(
    app: &App,
    route: &Route,
    req: Arrived<'_>,
    headers: &mut HeaderMap,
    (conn, request_id): (&Conn, &HeaderValue),
    outcome: &mut Outcome,
) -> Result<Option<HeaderValue>, ProxyError> {
    outcome.route = Some(route.name.clone());
    check_body(route, req.content_length)?;
    let token = match req.authorization {
        Some(values) => authorize(app, route, req.method, values.values(), headers, outcome).await?,
        None => {
            let values = headers.get_all(header::AUTHORIZATION);
            authorize(app, route, req.method, values.iter().map(HeaderValue::as_bytes), headers, outcome).await?
        }
    }
    .map(|admitted| admitted.token);
    let upgrade = match req.may_upgrade && route.config.websocket {
        true => hygiene::websocket_requested(headers),
        false => None,
    };
    let traceparent = outcome.trace.as_ref().map(|t| t.ctx.traceparent());
    let fwd = Forwarding { conn, request_id, authority: req.authority, token, upgrade: upgrade.as_ref(), traceparent };
    prepare_headers(app, route, headers, fwd);
    Ok(upgrade)
}

/// A caller the route let in: who, and the internal token minted for them.
pub(crate) struct Admitted {
    pub id: VerifiedIdentity,
    pub token: HeaderValue,
}

/// Authentication, metadata, the route's rules and the internal token, as the route
/// asks: the caller and their internal token, if the route authenticated one.
pub(crate) async fn authorize<'a>(
    app: &App,
    route: &Route,
    method: &http::Method,
    authorization: impl Iterator<Item = &'a [u8]>,
    headers: &'a HeaderMap,
    outcome: &mut Outcome,
) -> Result<Option<Admitted>, ProxyError> {
    let t = crate::telemetry::clock(&outcome.trace);
    let id = authenticate(app, route, authorization, headers).await;
    crate::telemetry::mark(&mut outcome.trace, "verify", t);
    let id = match id? {
        Some(id) => id,
        // Rules are about a caller: an `optional` route with rules lets no one in
        // anonymously (config refuses rules on an `off` route).
        None if !route.config.rules.is_empty() && route.config.auth != AuthMode::Off => {
            return Err(ProxyError::MissingToken);
        }
        None => return Ok(None),
    };
    let t = crate::telemetry::clock(&outcome.trace);
    let found = metadata(app, &id, &mut outcome.cache).await;
    crate::telemetry::mark(&mut outcome.trace, "metadata", t);
    let (app_md, client_md) = found?;
    let t = crate::telemetry::clock(&outcome.trace);
    let allowed = rules::check_rules(app, route, method, &id, (&app_md, &client_md), &mut outcome.rule);
    crate::telemetry::mark(&mut outcome.trace, "authorize", t);
    allowed?;
    let t = crate::telemetry::clock(&outcome.trace);
    let token = mint(app, route, &id, (&app_md, &client_md));
    crate::telemetry::mark(&mut outcome.trace, "mint", t);
    let token = token?;
    Ok(Some(Admitted { id, token }))
}

/// Whether forwarding failed because of the client's own body: malformed chunked
/// framing or a client gone mid-body is a 400, a body past the route's
/// `max_body_bytes` a 413; anything else is the upstream's (502).
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        // hyper reports "error from user's Body stream" with the body's own error
        // (from `Limited`: the limit's, or our `Incoming`'s, a hyper::Error) as the source.
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && h.is_user()
            && let Some(s) = std::error::Error::source(h)
        {
            if s.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Some(ProxyError::PayloadTooLarge);
            }
            if s.downcast_ref::<hyper::Error>().is_some() {
                return Some(ProxyError::BadRequest("the request body is malformed or incomplete"));
            }
        }
        cur = c.source();
    }
    None
}

/// The checks on the request head itself: its size (431 past
/// `listen.max_header_bytes`) and the fields that frame and route it (400), which
/// must be beyond doubt before anything is forwarded (RFC 9112 §3.2 and §6.3;
/// docs/security.md, "Message framing"):
/// - exactly one `Host` on HTTP/1.1 (at most one otherwise: HTTP/2 carries
///   `:authority`, HTTP/1.0 may omit it);
/// - at most one `Content-Length`, of digits only (a repeated or listed one is how
///   two parsers come to disagree on where the body ends; hyper has already merged
///   equal repeated values, and dropped a length beside `Transfer-Encoding`);
/// - no `Connection` naming `Content-Length`, `Transfer-Encoding` or `Host`.
fn check_head(app: &App, version: http::Version, target_len: usize, headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut size = target_len;
    let (mut hosts, mut lengths, mut connection) = (0u32, 0u32, false);
    for (n, v) in headers {
        size += n.as_str().len() + v.len() + 4;
        if *n == header::HOST {
            hosts += 1;
        } else if *n == header::CONTENT_LENGTH {
            lengths += 1;
            if v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit) {
                return Err(ProxyError::BadRequest("the Content-Length header is not a number"));
            }
        } else if *n == header::CONNECTION {
            connection = true;
        }
    }
    if size > app.config.listen.max_header_bytes {
        return Err(ProxyError::HeaderTooLarge);
    }
    if hosts > 1 || (hosts == 0 && version == http::Version::HTTP_11) {
        return Err(ProxyError::BadRequest("an HTTP/1.1 request needs exactly one Host header"));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Length header"));
    }
    if connection && hygiene::names_framing_field(headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
    {
        return Err(ProxyError::BadRequest("the Connection header names a field that frames the message"));
    }
    Ok(())
}

/// The request body's declared length (`Content-Length`), when it has one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| crate::wire::h1::content_length(v.as_bytes()))
}

/// Refuses a body that declares more than the route's `max_body_bytes` (413) before
/// anything is forwarded. A body of unknown length is counted as it streams
/// ([`http_body_util::Limited`] in `pipeline`).
fn check_body(route: &Route, declared: Option<u64>) -> Result<(), ProxyError> {
    match declared {
        Some(n) if n > route.config.max_body_bytes => Err(ProxyError::PayloadTooLarge),
        _ => Ok(()),
    }
}

/// Longest `path_prefix` wins; routes are kept sorted longest first.
fn route<'a>(app: &'a App, path: &str) -> Result<&'a Route, ProxyError> {
    app.routes.iter().find(|r| path.starts_with(r.config.path_prefix.as_str())).ok_or(ProxyError::NoRoute)
}

/// Finds and verifies the token, as the route's `auth` asks.
async fn authenticate<'a>(
    app: &App,
    route: &Route,
    authorization: impl Iterator<Item = &'a [u8]>,
    headers: &'a HeaderMap,
) -> Result<Option<VerifiedIdentity>, ProxyError> {
    if route.config.auth == AuthMode::Off {
        return Ok(None);
    }
    match extract_token(authorization, headers, app.config.listen.token_cookie.as_deref())? {
        Some(token) => Ok(Some(app.verifier.verify(token).await?)),
        None if route.config.auth == AuthMode::Required => Err(ProxyError::MissingToken),
        None => Ok(None),
    }
}

/// `Authorization: Bearer <jwt>` (scheme case-insensitive, one or more spaces), else
/// the token cookie. Another scheme is no token. `authorization` holds the values of
/// every `Authorization` header, as received (already free of control characters
/// other than tab: both parsers refuse them).
pub fn extract_token<'a>(
    mut authorization: impl Iterator<Item = &'a [u8]>,
    headers: &'a HeaderMap,
    cookie: Option<&str>,
) -> Result<Option<&'a str>, ProxyError> {
    if let Some(v) = authorization.next() {
        if authorization.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Authorization header"));
        }
        // ASCII is what `HeaderValue::to_str` asks for here.
        let not_text = || ProxyError::BadRequest("the Authorization header is not text");
        let v = std::str::from_utf8(v).map_err(|_| not_text())?;
        if let Some((scheme, rest)) = v.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            // "Bearer" and spaces are ASCII; the token is checked in the same pass
            // that looks for a space. No early exit: over a ~1 KB token this loop
            // vectorises, where `contains(' ')` walks memchr's byte-at-a-time path.
            let token = rest.trim_start_matches(' ');
            let (high, space) = token.bytes().fold((0u8, false), |(high, space), b| (high | b, space | (b == b' ')));
            if !high.is_ascii() {
                return Err(not_text());
            }
            if token.is_empty() || space {
                return Err(ProxyError::InvalidToken(crate::verify::VerifyError::Malformed));
            }
            return Ok(Some(token));
        }
        if !v.is_ascii() {
            return Err(not_text());
        }
    }
    Ok(cookie.and_then(|name| hygiene::cookie(headers, name)).filter(|t| !t.is_empty()))
}

/// Phase **metadata**: the caller's app_metadata and client_metadata through the
/// cache, both lookups at once.
async fn metadata(
    app: &App,
    id: &VerifiedIdentity,
    cache_outcome: &mut Option<&'static str>,
) -> Result<(Arc<StoredMetadata>, Arc<StoredMetadata>), ProxyError> {
    Ok(match &app.sources[id.issuer_index()] {
        None => (app.empty.clone(), app.empty.clone()),
        Some(source) => {
            let issuer = id.issuer();
            let (mut user_lookup, mut client_lookup) = (CacheLookup::Miss, CacheLookup::Miss);
            let user = app.cache.get_traced(Kind::User, source, issuer, id.subject(), &mut user_lookup);
            let client = app.cache.get_traced(Kind::Client, source, issuer, id.client_id(), &mut client_lookup);
            let (user, client) = tokio::join!(user, client);
            *cache_outcome = Some(match (user_lookup, client_lookup) {
                (CacheLookup::Miss, _) | (_, CacheLookup::Miss) => "miss",
                (CacheLookup::Stale, _) | (_, CacheLookup::Stale) => "stale",
                _ => "hit",
            });
            let unavailable = |e: crate::metadata::cache::Unavailable| ProxyError::MetadataUnavailable {
                retry_after_secs: e.0.retry_after.map_or(5, |d| d.as_secs().clamp(1, 3600)),
            };
            let user = user.map_err(unavailable)?.ok_or(ProxyError::UnknownSubject)?;
            let client = client.map_err(unavailable)?.ok_or(ProxyError::UnknownSubject)?;
            (user, client)
        }
    })
}

/// Phase **mint**: the internal token, reused while it has more than half its life.
fn mint(
    app: &App,
    route: &Route,
    id: &VerifiedIdentity,
    (app_md, client_md): rules::CallerMetadata<'_>,
) -> Result<HeaderValue, ProxyError> {
    let audience = route.audience.as_deref().ok_or(ProxyError::Internal)?;
    app.minter
        .mint(&MintRequest {
            identity: id,
            audience,
            route: &route.name,
            app_metadata: app_md,
            client_metadata: client_md,
            app_keys: route.config.app_metadata.as_deref(),
            client_keys: route.config.client_metadata.as_deref(),
            user_keys: route.config.user_metadata.as_deref(),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            ProxyError::Internal
        })
}

/// What the forwarded request's headers are made from, besides the client's own.
struct Forwarding<'a> {
    pub conn: &'a Conn,
    pub request_id: &'a HeaderValue,
    /// The request target's authority, if it had one (absolute-form), standing in for
    /// a missing `Host` in `X-Forwarded-Host`.
    pub authority: Option<&'a http::uri::Authority>,
    /// The internal token, if the route authenticated a caller.
    pub token: Option<HeaderValue>,
    /// The `Upgrade` value of a WebSocket upgrade being forwarded.
    pub upgrade: Option<&'a HeaderValue>,
    /// With `[telemetry]`: the trace context continued, our span as the parent.
    pub traceparent: Option<HeaderValue>,
}

/// The upstream request's headers (docs/security.md, "Hostile client: paths and
/// headers"): hygiene, forwarding headers, the request id, the internal token.
fn prepare_headers(app: &App, route: &Route, h: &mut HeaderMap, fwd: Forwarding<'_>) {
    let Forwarding { conn, request_id, authority, token: internal_token, upgrade, traceparent } = fwd;
    let original_host =
        h.get(header::HOST).cloned().or_else(|| authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let trusted = app.config.listen.trusted_proxies.iter().any(|n| n.contains(&conn.peer.ip()));
    let prior_xff = if trusted { joined(h, &X_FORWARDED_FOR) } else { None };
    let token_header = app.token_header_canonical.as_str();
    hygiene::strip(h, |name| {
        name == "authorization"
            || name == token_header
            || name == "host"
            || name == "x-request-id"
            // Untrusted peers' forwarding claims are replaced, not believed.
            || (!trusted && (name.starts_with("x-forwarded-") || name == "forwarded"))
            || (trusted && name == "x-forwarded-for")
    });
    if let Some(cookie) = &app.config.listen.token_cookie {
        hygiene::remove_cookie(h, cookie);
    }
    h.insert(header::HOST, route.host_header.clone());
    let xff = match prior_xff {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", conn.peer.ip())).ok(),
        None => Some(conn.peer_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
    }
    if !h.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = original_host
    {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(proto) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    if let Some(value) = internal_token {
        h.insert(app.config.token.header.name(), value);
    }
    if let Some(value) = traceparent {
        // Replaces the caller's: the upstream's parent is claimsmith's span.
        h.insert(crate::telemetry::TRACEPARENT.clone(), value);
    }
}

fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    if v.is_empty() { None } else { Some(v.join(", ")) }
}

/// The upstream request target (origin-form): the route's base path, the normalised
/// path (prefix stripped if asked), the query as sent.
pub(crate) fn upstream_target(
    route: &Route,
    path: &str,
    query: Option<&str>,
) -> Result<http::uri::PathAndQuery, ProxyError> {
    let parts = upstream_path(route, path);
    let mut pq = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + query.map_or(0, |q| q.len() + 1));
    parts.iter().for_each(|p| pq.push_str(p));
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    // Origin-form, as HTTP/1.1 sends it to an origin server: the connection already
    // goes to the route's upstream, and `Host` names it. Parsing checks that the
    // target holds only characters a request line may carry.
    http::uri::PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("the path cannot be forwarded"))
}

/// The upstream path, in pieces to write one after the other: the route's base path,
/// a `/` if stripping the prefix left none, the (rest of the) normalised path.
pub(crate) fn upstream_path<'a>(route: &'a Route, path: &'a str) -> [&'a str; 3] {
    if route.config.strip_prefix {
        let stripped = &path[route.config.path_prefix.len().min(path.len())..];
        [&route.base_path, if stripped.starts_with('/') { "" } else { "/" }, stripped]
    } else {
        [&route.base_path, "", path]
    }
}

/// Response hygiene (docs/security.md, "Compromised or echoing upstream"): hop-by-hop headers and any echoed internal
/// token header go; everything else is passed back unchanged.
fn respond(app: &App, headers: &mut HeaderMap) {
    // RFC 9112 §6.3: a message with both framings was delimited by the transfer
    // coding; its Content-Length must not reach the client (which would trust it).
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let token_header = app.token_header_canonical.as_str();
    hygiene::strip(headers, |name| name == token_header);
}

fn boxed(b: PooledBody) -> Body {
    b.map_err(crate::error::BoxError::from).boxed()
}

/// Joins the client's and the upstream's upgraded connections (WebSocket).
fn splice_upgrade(
    app: &App,
    client: hyper::upgrade::OnUpgrade,
    resp: &mut Response<PooledBody>,
) -> Result<(), ProxyError> {
    let upstream = hyper::upgrade::on(&mut *resp);
    let proto = resp.headers().get(header::UPGRADE).cloned();
    respond(app, resp.headers_mut());
    if let Some(p) = proto {
        resp.headers_mut().insert(header::UPGRADE, p);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    tokio::spawn(async move {
        let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else { return };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
    });
    Ok(())
}

/// Keeps a sane client `X-Request-Id`, else makes one.
pub(crate) fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    // 128 random bits as 32 hex digits, written directly (this runs on every request).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::random();
    let mut hex = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::VerifyError;

    fn token_of(values: &[&[u8]], headers: &HeaderMap, cookie: Option<&str>) -> Result<Option<String>, String> {
        extract_token(values.iter().copied(), headers, cookie).map(|t| t.map(str::to_string)).map_err(|e| match e {
            ProxyError::BadRequest(why) => format!("400: {why}"),
            ProxyError::InvalidToken(VerifyError::Malformed) => "malformed".to_string(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn a_bearer_token_is_found_in_authorization() {
        let none = HeaderMap::new();
        for value in [&b"Bearer a.b.c"[..], b"bearer a.b.c", b"BEARER   a.b.c"] {
            assert_eq!(token_of(&[value], &none, None), Ok(Some("a.b.c".into())), "{value:?}");
        }
        // No Authorization, another scheme, or no scheme at all: no token.
        assert_eq!(token_of(&[], &none, None), Ok(None));
        assert_eq!(token_of(&[b"Basic dXNlcjpwYXNz"], &none, None), Ok(None));
        assert_eq!(token_of(&[b"Bearer"], &none, None), Ok(None));
    }

    #[test]
    fn a_bearer_value_that_cannot_be_a_token_is_refused() {
        let none = HeaderMap::new();
        assert_eq!(
            token_of(&[b"Bearer a.b.c", b"Bearer a.b.c"], &none, None),
            Err("400: more than one Authorization header".into())
        );
        assert_eq!(token_of(&[b"Bearer "], &none, None), Err("malformed".into()));
        assert_eq!(token_of(&[b"Bearer a.b c"], &none, None), Err("malformed".into()));
        let not_text = Err("400: the Authorization header is not text".to_string());
        // Not UTF-8; UTF-8 but not ASCII (in the token, beside a space, in another scheme).
        for value in [
            &b"Bearer a.b.\xe9"[..],
            "Bearer a.b.\u{e9}".as_bytes(),
            "Bearer \u{e9} x".as_bytes(),
            "Basic \u{e9}".as_bytes(),
        ] {
            assert_eq!(token_of(&[value], &none, None), not_text, "{value:?}");
        }
    }

    #[test]
    fn the_token_cookie_is_read_only_without_a_bearer_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; id_token=c.o.k"));
        assert_eq!(token_of(&[], &headers, Some("id_token")), Ok(Some("c.o.k".into())));
        assert_eq!(token_of(&[b"Basic x"], &headers, Some("id_token")), Ok(Some("c.o.k".into())));
        assert_eq!(token_of(&[b"Bearer a.b.c"], &headers, Some("id_token")), Ok(Some("a.b.c".into())));
        // Not configured, or another name: not read.
        assert_eq!(token_of(&[], &headers, None), Ok(None));
        assert_eq!(token_of(&[], &headers, Some("session")), Ok(None));
    }

    #[test]
    fn a_sane_request_id_is_kept_and_any_other_replaced() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with(b"req-42"), "req-42");
        for bad in [&b""[..], &[b'a'; 129], b"two words", b"caf\xe9"] {
            let made = with(bad);
            assert_ne!(made.as_bytes(), bad);
            assert_eq!(made.len(), 32);
            assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit), "{made:?}");
        }
        // 128 random bits each time.
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
