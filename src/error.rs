//! One error type for the request path, turned into an HTTP answer in one place:
//! RFC 9457 problem+json bodies, RFC 6750 `WWW-Authenticate` on 401.
//! No answer ever carries a token, a secret or a metadata value: details are fixed strings.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

use crate::verify::VerifyError;
use crate::wire::path::PathError;

/// What a body's failure is, whichever side the body comes from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response claimsmith sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Why a request was not forwarded, or failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadPath(#[from] PathError),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no route matches the path")]
    NoRoute,
    #[error("the request header section is too large")]
    HeaderTooLarge,
    #[error("the request body is larger than this route accepts")]
    PayloadTooLarge,
    #[error("a bearer token is required")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(VerifyError),
    #[error("the user or client does not exist")]
    UnknownSubject,
    /// A route's authorization rule refused the caller; holds the rule's name (or
    /// `require[i]` / `deny[i]`), never a value it looked at.
    #[error("refused by the route's rule `{rule}`")]
    Forbidden { rule: std::sync::Arc<str> },
    #[error("the identity provider's signing keys are not available yet")]
    KeysUnavailable,
    #[error("the metadata source is unavailable")]
    MetadataUnavailable { retry_after_secs: u64 },
    /// Too many tokens not yet in the token cache are waiting for their signature
    /// check on this worker (docs/security.md, "Floods of new tokens").
    #[error("too many new tokens are waiting to be checked")]
    Overloaded,
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal,
}

/// Who a failure is to be blamed on, for logs and alerts (as pingora's
/// `ErrorSource`): a client's bad request is no incident, an upstream's or the
/// identity provider's failure is someone else's, an internal one is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    IdentityProvider,
    Internal,
}

impl Blame {
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::IdentityProvider => "identity_provider",
            Blame::Internal => "internal",
        }
    }
}

impl From<VerifyError> for ProxyError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::KeysUnavailable => ProxyError::KeysUnavailable,
            VerifyError::Overloaded => ProxyError::Overloaded,
            e => ProxyError::InvalidToken(e),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MissingToken | ProxyError::InvalidToken(_) | ProxyError::UnknownSubject => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::KeysUnavailable | ProxyError::MetadataUnavailable { .. } | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Who is to blame: the client (bad request, token, size), the upstream, the
    /// identity provider (keys or metadata unavailable), or claimsmith itself.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadPath(_)
            | ProxyError::BadRequest(_)
            | ProxyError::NoRoute
            | ProxyError::HeaderTooLarge
            | ProxyError::PayloadTooLarge
            | ProxyError::MissingToken
            | ProxyError::InvalidToken(_)
            | ProxyError::UnknownSubject
            | ProxyError::Forbidden { .. } => Blame::Client,
            ProxyError::KeysUnavailable | ProxyError::MetadataUnavailable { .. } => Blame::IdentityProvider,
            ProxyError::UpstreamUnreachable | ProxyError::UpstreamTimeout => Blame::Upstream,
            ProxyError::Overloaded | ProxyError::Internal => Blame::Internal,
        }
    }

    /// A stable label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::HeaderTooLarge => "header_too_large",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::MissingToken => "missing_token",
            ProxyError::InvalidToken(e) => e.label(),
            ProxyError::UnknownSubject => "unknown_subject",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::KeysUnavailable => "keys_unavailable",
            ProxyError::MetadataUnavailable { .. } => "metadata_unavailable",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::Internal => "internal",
        }
    }

    fn problem_type(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) => "urn:claimsmith:problem:bad-request",
            ProxyError::NoRoute => "urn:claimsmith:problem:no-route",
            ProxyError::HeaderTooLarge => "urn:claimsmith:problem:header-too-large",
            ProxyError::PayloadTooLarge => "urn:claimsmith:problem:payload-too-large",
            ProxyError::MissingToken => "urn:claimsmith:problem:missing-token",
            ProxyError::InvalidToken(_) | ProxyError::UnknownSubject => "urn:claimsmith:problem:invalid-token",
            ProxyError::Forbidden { .. } => "urn:claimsmith:problem:forbidden",
            ProxyError::KeysUnavailable => "urn:claimsmith:problem:keys-unavailable",
            ProxyError::MetadataUnavailable { .. } => "urn:claimsmith:problem:metadata-unavailable",
            ProxyError::Overloaded => "urn:claimsmith:problem:overloaded",
            ProxyError::UpstreamUnreachable => "urn:claimsmith:problem:upstream-unreachable",
            ProxyError::UpstreamTimeout => "urn:claimsmith:problem:upstream-timeout",
            ProxyError::Internal => "urn:claimsmith:problem:internal",
        }
    }

    /// The whole HTTP answer.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (headers, body) = self.into_parts();
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// The answer's header fields and problem+json body (its status is [`Self::status`]).
    pub fn into_parts(self) -> (HeaderMap, Bytes) {
        let status = self.status();
        let detail = self.to_string();
        let body = serde_json::json!({
            "type": self.problem_type(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut h = HeaderMap::with_capacity(4);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ProxyError::MissingToken => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"claimsmith\""));
            }
            ProxyError::InvalidToken(_) | ProxyError::UnknownSubject => {
                // error_description is one of our fixed strings, never token content.
                let v = format!("Bearer realm=\"claimsmith\", error=\"invalid_token\", error_description=\"{detail}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ProxyError::Forbidden { .. } => {
                // RFC 6750 §3.1: the token is fine, the caller lacks what the route asks.
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"claimsmith\", error=\"insufficient_scope\""),
                );
            }
            ProxyError::MetadataUnavailable { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ProxyError::KeysUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // The queue drains in about a second at most (verify::turns).
            ProxyError::Overloaded => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        (h, Bytes::from(body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_status_a_problem_body_and_a_blame() {
        let all = [
            ProxyError::BadPath(PathError::EncodedSlash),
            ProxyError::BadRequest("x"),
            ProxyError::NoRoute,
            ProxyError::HeaderTooLarge,
            ProxyError::PayloadTooLarge,
            ProxyError::MissingToken,
            ProxyError::InvalidToken(VerifyError::Malformed),
            ProxyError::UnknownSubject,
            ProxyError::Forbidden { rule: "require[0]".into() },
            ProxyError::KeysUnavailable,
            ProxyError::MetadataUnavailable { retry_after_secs: 7 },
            ProxyError::Overloaded,
            ProxyError::UpstreamUnreachable,
            ProxyError::UpstreamTimeout,
            ProxyError::Internal,
        ];
        for e in all {
            let (status, label, blame) = (e.status(), e.label(), e.blame());
            // Only the client's own mistakes are 4xx; everyone else's are 5xx.
            assert_eq!(status.is_client_error(), blame == Blame::Client, "{label}");
            let unauthorized = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
            let (headers, body) = e.into_parts();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["status"], status.as_u16(), "{label}");
            assert!(v["type"].as_str().unwrap().starts_with("urn:claimsmith:problem:"), "{label}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
            assert_eq!(headers.contains_key(header::WWW_AUTHENTICATE), unauthorized, "{label}");
        }
        let (headers, body) = ProxyError::Forbidden { rule: "paying plan".into() }.into_parts();
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"claimsmith\", error=\"insufficient_scope\"");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:claimsmith:problem:forbidden");
        assert!(v["detail"].as_str().unwrap().contains("paying plan"));
        let (headers, _) = ProxyError::MetadataUnavailable { retry_after_secs: 7 }.into_parts();
        assert_eq!(headers[header::RETRY_AFTER], "7");
        let overloaded = ProxyError::from(VerifyError::Overloaded);
        assert_eq!((overloaded.status(), overloaded.blame()), (StatusCode::SERVICE_UNAVAILABLE, Blame::Internal));
        let (headers, body) = overloaded.into_parts();
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE), "the token is not at fault");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:claimsmith:problem:overloaded");
    }
}
