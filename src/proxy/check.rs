//! Forward-auth (docs/forward-auth.md): an ingress that will not add a proxy hop
//! (nginx `auth_request`, ingress-nginx `auth-url`, Traefik `forwardAuth`, Envoy
//! `ext_authz` over HTTP) asks claimsmith about each request instead. A check runs
//! the same phases as a proxied request (route, token, verify, metadata, authorize,
//! mint) on the request the ingress describes, and answers instead of forwarding:
//! 200 with the internal token for the ingress to pass on, or the very refusal a
//! proxied request would get.
//!
//! The answer carries an internal token, so this runs only on a listener of its own
//! that the network keeps to the ingress (`server.rs`), never on the proxy listener.
//!
//! Which request is checked comes from headers the ingress sets. A client can add any
//! header it likes, and an ingress forwards the ones it does not set itself, so a
//! client could describe another request than the one it makes (a public path while
//! it calls a protected one). Two guards: the ingress's own headers are the ones read
//! first for each style, and when several descriptions are present they must all
//! agree, else the check is refused (400); `forward_auth.headers` pins one style.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::{App, Arrived, Mode, Outcome, ProxyError, authorize, request_id, route_request};
use crate::config::CheckedHeaders;
use crate::error::{Body, full};

static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_CLAIMSMITH_SUB: HeaderName = HeaderName::from_static("x-claimsmith-sub");
static X_CLAIMSMITH_CLIENT: HeaderName = HeaderName::from_static("x-claimsmith-client");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Answers one forward-auth check; never fails (refusals are answers). The checked
/// method is returned for the access log.
pub async fn check(app: &App, req: Request<Incoming>) -> (Response<Body>, Outcome, Method) {
    let mut outcome = Outcome { mode: Mode::ForwardAuth, ..Outcome::default() };
    let (parts, _body) = req.into_parts();
    let request_id = request_id(&parts.headers);
    outcome.request_id = Some(request_id.clone());
    outcome.trace = app.telemetry.as_ref().map(|t| t.start(&parts.headers));
    let style = app.config.forward_auth.as_ref().map_or(CheckedHeaders::Auto, |f| f.headers);
    let described = checked_request(style, &parts.method, &parts.uri, &parts.headers);
    let method = described.as_ref().map_or_else(|_| parts.method.clone(), |(m, _)| m.clone());
    let result = match described {
        Ok((method, target)) => decide(app, &method, &target, &parts, &mut outcome).await,
        Err(e) => Err(e),
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            outcome.failed(&e);
            e.into_response()
        }
    };
    // An answer about one caller must never be reused for another (RFC 9111 §5.2.2.5).
    resp.headers_mut().insert(header::CACHE_CONTROL, NO_STORE.clone());
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    (resp, outcome, method)
}

/// The phases of a proxied request, up to the internal token, on the checked request.
async fn decide(
    app: &App,
    method: &Method,
    target: &str,
    parts: &http::request::Parts,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let arrived = Arrived {
        method,
        version: parts.version,
        head_len: target.len(),
        path,
        authority: None,
        authorization: None,
        // The check carries no body of the checked request: its size is the
        // ingress's to limit.
        content_length: None,
        may_upgrade: false,
    };
    let (route, _path) = route_request(app, &arrived, &parts.headers)?;
    outcome.route = Some(route.name.clone());
    let values = parts.headers.get_all(header::AUTHORIZATION);
    let admitted =
        authorize(app, route, method, values.iter().map(HeaderValue::as_bytes), &parts.headers, outcome).await?;
    let mut resp = Response::new(full(Bytes::new()));
    if let Some(admitted) = admitted {
        // The subject and client id were verified, but a JWT string may hold
        // characters a header cannot: refuse rather than answer without them.
        let unfit = || ProxyError::BadRequest("the token's subject or client id cannot be carried in a header");
        let sub = HeaderValue::from_bytes(admitted.id.subject().as_bytes()).map_err(|_| unfit())?;
        let client = HeaderValue::from_bytes(admitted.id.client_id().as_bytes()).map_err(|_| unfit())?;
        let h = resp.headers_mut();
        h.insert(app.config.token.header.name(), admitted.token);
        h.insert(X_CLAIMSMITH_SUB.clone(), sub);
        h.insert(X_CLAIMSMITH_CLIENT.clone(), client);
    }
    Ok(resp)
}

/// One request as an ingress describes it: a method and an origin-form target.
type Described<'a> = (Method, Cow<'a, str>);

/// The request the check is about (docs/forward-auth.md, "Which request is checked").
fn checked_request<'a>(
    style: CheckedHeaders,
    own_method: &Method,
    own_uri: &'a http::Uri,
    h: &'a HeaderMap,
) -> Result<Described<'a>, ProxyError> {
    let own = || -> Result<Described<'a>, ProxyError> {
        let target = own_uri.path_and_query().map_or("/", |p| p.as_str());
        Ok((own_method.clone(), Cow::Borrowed(origin_form(target)?)))
    };
    match style {
        CheckedHeaders::Nginx => nginx_style(h)?.ok_or(ProxyError::BadRequest(
            "forward-auth expects X-Original-Method and X-Original-URI (or X-Original-URL)",
        )),
        CheckedHeaders::Traefik => traefik_style(h)?
            .ok_or(ProxyError::BadRequest("forward-auth expects X-Forwarded-Method and X-Forwarded-Uri")),
        CheckedHeaders::Envoy => {
            let described =
                [&X_ORIGINAL_METHOD, &X_ORIGINAL_URI, &X_ORIGINAL_URL, &X_FORWARDED_METHOD, &X_FORWARDED_URI];
            if described.into_iter().any(|n| h.contains_key(n)) {
                return Err(ProxyError::BadRequest(
                    "forward-auth checks the request's own method and path; X-Original-* and X-Forwarded-Method/-Uri are refused",
                ));
            }
            own()
        }
        CheckedHeaders::Auto => match (nginx_style(h)?, traefik_style(h)?) {
            (Some(n), Some(t)) if n != t => {
                Err(ProxyError::BadRequest("X-Original-* and X-Forwarded-Method/-Uri describe different requests"))
            }
            (Some(n), _) => Ok(n),
            (None, Some(t)) => Ok(t),
            (None, None) => own(),
        },
    }
}

/// `X-Original-Method` with `X-Original-URI`, else with the path and query of
/// `X-Original-URL` (ingress-nginx sends only the URL unless an auth method is set).
/// When both the URI and the URL are present they must agree.
fn nginx_style(h: &HeaderMap) -> Result<Option<Described<'_>>, ProxyError> {
    let method = single(h, &X_ORIGINAL_METHOD)?;
    let uri = single(h, &X_ORIGINAL_URI)?.map(origin_form).transpose()?;
    let url = single(h, &X_ORIGINAL_URL)?.map(target_of_url).transpose()?;
    let target = match (uri, url) {
        (Some(u), Some(l)) if u != l => {
            return Err(ProxyError::BadRequest("X-Original-URI and X-Original-URL describe different requests"));
        }
        (Some(u), _) => Some(Cow::Borrowed(u)),
        (None, l) => l,
    };
    match (method, target) {
        (None, None) => Ok(None),
        (Some(m), Some(t)) => Ok(Some((method_of(m)?, t))),
        (Some(_), None) => Err(ProxyError::BadRequest("X-Original-Method without X-Original-URI")),
        (None, Some(_)) => Err(ProxyError::BadRequest("X-Original-URI without X-Original-Method")),
    }
}

/// `X-Forwarded-Method` with `X-Forwarded-Uri` (Traefik).
fn traefik_style(h: &HeaderMap) -> Result<Option<Described<'_>>, ProxyError> {
    let method = single(h, &X_FORWARDED_METHOD)?;
    let uri = single(h, &X_FORWARDED_URI)?;
    match (method, uri) {
        (None, None) => Ok(None),
        (Some(m), Some(u)) => Ok(Some((method_of(m)?, Cow::Borrowed(origin_form(u)?)))),
        (Some(_), None) => Err(ProxyError::BadRequest("X-Forwarded-Method without X-Forwarded-Uri")),
        (None, Some(_)) => Err(ProxyError::BadRequest("X-Forwarded-Uri without X-Forwarded-Method")),
    }
}

/// The header's one value as text; two values could describe two requests.
fn single<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ProxyError> {
    let mut values = h.get_all(name).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("a header describing the checked request is repeated"));
    }
    v.to_str().map(Some).map_err(|_| ProxyError::BadRequest("a header describing the checked request is not text"))
}

fn method_of(s: &str) -> Result<Method, ProxyError> {
    Method::from_bytes(s.as_bytes()).map_err(|_| ProxyError::BadRequest("the checked request's method is not a method"))
}

/// An origin-form request target (RFC 9112 §3.2.1): a path starting with `/`, maybe
/// a query, only characters a request line may carry.
fn origin_form(s: &str) -> Result<&str, ProxyError> {
    let bad = ProxyError::BadRequest("the checked request's URI is not an origin-form path");
    if !s.starts_with('/') || s.starts_with("//") || s.contains('#') {
        return Err(bad);
    }
    http::uri::PathAndQuery::try_from(s).map_err(|_| bad)?;
    Ok(s)
}

/// The origin-form target of an absolute `http(s)://` URL, as sent (not normalised:
/// the path is normalised once, as for any request, when it is routed).
fn target_of_url(s: &str) -> Result<Cow<'_, str>, ProxyError> {
    let bad = || ProxyError::BadRequest("X-Original-URL is not an absolute http(s) URL");
    let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &s[7..]
    } else if lower.starts_with("https://") {
        &s[8..]
    } else {
        return Err(bad());
    };
    let start = rest.find(['/', '?']).unwrap_or(rest.len());
    if start == 0 {
        return Err(bad());
    }
    let target = &rest[start..];
    let target = match target.chars().next() {
        None => Cow::Borrowed("/"),
        Some('?') => Cow::Owned(format!("/{target}")),
        Some(_) => Cow::Borrowed(target),
    };
    origin_form(&target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn described(style: CheckedHeaders, pairs: &[(&str, &str)]) -> Result<(String, String), String> {
        let uri: http::Uri = "/check?x=1".parse().unwrap();
        let h = headers(pairs);
        checked_request(style, &Method::GET, &uri, &h)
            .map(|(m, t)| (m.to_string(), t.into_owned()))
            .map_err(|e| e.to_string())
    }

    fn ok(m: &str, t: &str) -> Result<(String, String), String> {
        Ok((m.to_string(), t.to_string()))
    }

    #[test]
    fn each_style_names_the_checked_request() {
        use CheckedHeaders::Auto;
        let nginx = [("x-original-method", "POST"), ("x-original-uri", "/api/a?b=1")];
        assert_eq!(described(Auto, &nginx), ok("POST", "/api/a?b=1"));
        let ingress_nginx = [("x-original-method", "PUT"), ("x-original-url", "https://shop.test/api/a?b=1")];
        assert_eq!(described(Auto, &ingress_nginx), ok("PUT", "/api/a?b=1"));
        assert_eq!(
            described(Auto, &[("x-original-method", "GET"), ("x-original-url", "http://shop.test")]),
            ok("GET", "/")
        );
        assert_eq!(
            described(Auto, &[("x-original-method", "GET"), ("x-original-url", "HTTP://shop.test?q")]),
            ok("GET", "/?q")
        );
        let traefik = [("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/api/x")];
        assert_eq!(described(Auto, &traefik), ok("DELETE", "/api/x"));
        assert_eq!(described(Auto, &[]), ok("GET", "/check?x=1"));
    }

    #[test]
    fn a_header_without_its_partner_is_refused() {
        for pairs in [
            &[("x-original-method", "GET")][..],
            &[("x-original-uri", "/api/")],
            &[("x-original-url", "https://a.test/api/")],
            &[("x-forwarded-method", "GET")],
            &[("x-forwarded-uri", "/api/")],
        ] {
            assert!(described(CheckedHeaders::Auto, pairs).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn targets_must_be_origin_form() {
        for target in ["api/x", "http://evil.test/api/", "*", "//evil.test/x", "/a#frag", "/a b", ""] {
            let r = described(CheckedHeaders::Auto, &[("x-original-method", "GET"), ("x-original-uri", target)]);
            assert!(r.is_err(), "{target:?} was accepted");
        }
        for url in ["/api/x", "ftp://a.test/x", "https:///x", "https://"] {
            let r = described(CheckedHeaders::Auto, &[("x-original-method", "GET"), ("x-original-url", url)]);
            assert!(r.is_err(), "{url:?} was accepted");
        }
        let r = described(CheckedHeaders::Auto, &[("x-original-method", "G E T"), ("x-original-uri", "/api/")]);
        assert!(r.is_err());
    }

    /// A client behind one ingress adds the other style's headers (or a second
    /// description of its own) to have a public path checked in place of the
    /// protected one it calls.
    #[test]
    fn disagreeing_descriptions_are_refused() {
        use CheckedHeaders::Auto;
        let injected_nginx = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/admin"),
        ];
        assert!(described(Auto, &injected_nginx).is_err());
        let injected_uri =
            [("x-original-method", "GET"), ("x-original-uri", "/public/"), ("x-original-url", "https://a.test/api/")];
        assert!(described(Auto, &injected_uri).is_err());
        let other_method = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/api/"),
        ];
        assert!(described(Auto, &other_method).is_err());
        let repeated = [("x-original-method", "GET"), ("x-original-uri", "/api/"), ("x-original-uri", "/public/")];
        assert!(described(Auto, &repeated).is_err());
        // Agreeing descriptions are one request.
        let agreeing = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/a"),
            ("x-original-url", "https://a.test/api/a"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/a"),
        ];
        assert_eq!(described(Auto, &agreeing), ok("GET", "/api/a"));
    }

    #[test]
    fn a_pinned_style_reads_only_its_headers() {
        let both = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/"),
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/api/"),
        ];
        assert_eq!(described(CheckedHeaders::Nginx, &both), ok("GET", "/public/"));
        assert_eq!(described(CheckedHeaders::Traefik, &both), ok("POST", "/api/"));
        assert!(described(CheckedHeaders::Envoy, &both).is_err());
        assert!(described(CheckedHeaders::Envoy, &[("x-forwarded-uri", "/x")]).is_err());
        assert_eq!(described(CheckedHeaders::Envoy, &[]), ok("GET", "/check?x=1"));
        assert!(described(CheckedHeaders::Nginx, &[]).is_err());
        assert!(described(CheckedHeaders::Traefik, &[("x-original-method", "GET"), ("x-original-uri", "/")]).is_err());
    }
}
