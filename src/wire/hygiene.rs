//! Header hygiene on the way to the upstream and back (docs/security.md, "Header
//! hygiene").
//!
//! Names are compared case-insensitively and with `_` equal to `-`: many backends
//! (CGI, nginx with underscores_in_headers, WSGI) merge `X_Internal_Token` into
//! `x-internal-token`, so a client must not be able to smuggle a copy that way.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 and the long-standing hop-by-hop list (canonical names).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn is_hop_by_hop_canonical(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether a header name as received (any case, `_` or `-`) is `canon` (canonical),
/// without allocating: the HTTP/1 fast path checks response headers this way.
pub fn canonical_eq(name: &[u8], canon: &str) -> bool {
    name.len() == canon.len()
        && name.iter().zip(canon.bytes()).all(|(&a, b)| if a == b'_' { b == b'-' } else { a.to_ascii_lowercase() == b })
}

/// [`is_hop_by_hop`] for a name as received.
pub fn is_hop_by_hop_raw(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| canonical_eq(name, h))
}

/// Fields that delimit or route a message. A `Connection` header can never remove
/// them: were `Content-Length` dropped while its body still went out, the upstream
/// would read the body as a request of its own (request smuggling). A request whose
/// `Connection` names one is refused ([`names_framing_field`]); on a response the
/// nomination is ignored. docs/security.md, "Message framing".
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

fn connection_elements<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values.flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

/// Whether `Connection` values name a framing or routing field (any case, `_` or `-`).
pub fn names_framing_field<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    connection_elements(values).any(|t| FRAMING.iter().any(|f| canonical_eq(t, f)))
}

/// The names listed in `Connection` header values, canonical. `keep-alive`, the
/// most common, names a hop-by-hop field that is removed anyway, so it is left out
/// (and the usual keep-alive message costs no allocation here); so are the framing
/// fields, which a `Connection` header cannot remove. Values are read as bytes: a
/// value holding obs-text still names its other fields (a non-ASCII element cannot
/// name a field and is skipped, not the whole value).
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    connection_elements(values)
        .filter(|t| !t.is_empty() && t.is_ascii() && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter(|t| !FRAMING.iter().any(|f| canonical_eq(t, f)))
        .map(|t| t.iter().map(|&b| if b == b'_' { '-' } else { char::from(b.to_ascii_lowercase()) }).collect())
        .collect()
}

/// A header name in canonical form: lower case, `_` as `-`.
pub fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase().replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// [`canonical`] for a parsed `HeaderName`, which is lower case already: only `_`
/// can differ, so the common case is one byte scan and no allocation.
fn canonical_header(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.contains('_') { std::borrow::Cow::Owned(s.replace('_', "-")) } else { std::borrow::Cow::Borrowed(s) }
}

pub fn is_hop_by_hop(name: &str) -> bool {
    is_hop_by_hop_canonical(&canonical(name))
}

/// Names listed in `Connection` headers, canonical.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    connection_tokens(headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
}

/// Whether the request asks for a WebSocket upgrade (RFC 6455 §4.1: `Upgrade:
/// websocket`, `Connection` naming `upgrade`); returns the `Upgrade` value to pass
/// on. Any other protocol (`h2c` above all, which would open an HTTP/2 connection to
/// the upstream that no check of ours sees) is not an upgrade here: `Upgrade` is
/// hop-by-hop, so it is simply not forwarded (RFC 9110 §7.8 lets a server ignore it).
pub fn websocket_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = connection_listed(headers).iter().any(|c| c == "upgrade");
    let mut values = headers.get_all(header::UPGRADE).iter();
    match (wants, values.next(), values.next()) {
        (true, Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket") => Some(v.clone()),
        _ => None,
    }
}

/// Removes every header whose canonical name satisfies `drop`, plus hop-by-hop
/// headers and those named in `Connection`.
pub fn strip(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let listed = if headers.contains_key(header::CONNECTION) { connection_listed(headers) } else { Vec::new() };
    // On the stack for the usual few (this runs twice per request); more spill over.
    let mut doomed: [Option<HeaderName>; 8] = [const { None }; 8];
    let mut more: Vec<HeaderName> = Vec::new();
    let mut n = 0;
    for name in headers.keys() {
        let c = canonical_header(name);
        if is_hop_by_hop_canonical(&c) || listed.iter().any(|l| *l == c) || drop(&c) {
            match doomed.get_mut(n) {
                Some(slot) => *slot = Some(name.clone()),
                None => more.push(name.clone()),
            }
            n += 1;
        }
    }
    for name in doomed.iter().flatten().chain(more.iter()) {
        headers.remove(name);
    }
}

/// Removes the cookie named `name` from every `Cookie` header, keeping the others.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    for v in values {
        let Ok(s) = v.to_str() else {
            // Not text: cannot tell what it holds, so it does not travel on.
            continue;
        };
        let kept: Vec<&str> = s
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty() && c.split('=').next().map(str::trim) != Some(name))
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.append(header::COOKIE, v);
        }
    }
}

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("X_Internal_Token"), "x-internal-token");
        assert_eq!(canonical("x-internal-token"), "x-internal-token");
    }

    #[test]
    fn strips_connection_listed_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("x_internal_token", HeaderValue::from_static("forged"));
        strip(&mut h, |n| n == "x-internal-token");
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn raw_names() {
        assert!(canonical_eq(b"X_Internal_Token", "x-internal-token"));
        assert!(canonical_eq(b"x-internal-token", "x-internal-token"));
        assert!(!canonical_eq(b"x-internal-tokens", "x-internal-token"));
        assert!(!canonical_eq(b"x-internal+token", "x-internal-token"));
        assert!(is_hop_by_hop_raw(b"Transfer-Encoding"));
        assert!(is_hop_by_hop_raw(b"KEEP_ALIVE"));
        assert!(!is_hop_by_hop_raw(b"Content-Length"));
        assert_eq!(
            connection_tokens([&b"close, X_Secret"[..], b"Keep-Alive, upgrade"].into_iter()),
            ["close", "x-secret", "upgrade"]
        );
        // Found by the h1_response fuzz target: obs-text in one element must not hide
        // the others.
        assert_eq!(connection_tokens([&b"X-Secret,caf\xe9, x-other"[..]].into_iter()), ["x-secret", "x-other"]);
        // Framing fields cannot be removed by a Connection nomination.
        assert_eq!(
            connection_tokens([&b"content-length, Content_Length, HOST, x-a, Transfer-Encoding"[..]].into_iter()),
            ["x-a"]
        );
    }

    #[test]
    fn framing_nominations() {
        for v in
            ["content-length", "keep-alive, Content_Length", "close,content-length", "Host", "x, transfer_encoding"]
        {
            assert!(names_framing_field([v.as_bytes()].into_iter()), "{v}");
        }
        for v in ["keep-alive", "close", "upgrade", "x-content-length", "content-lengths", ""] {
            assert!(!names_framing_field([v.as_bytes()].into_iter()), "{v}");
        }
    }

    #[test]
    fn only_websocket_upgrades() {
        let with = |conn: &'static str, ups: &[&'static str]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(conn));
            ups.iter().for_each(|u| {
                h.append(header::UPGRADE, HeaderValue::from_static(u));
            });
            websocket_requested(&h)
        };
        assert_eq!(with("Upgrade", &["websocket"]).unwrap(), "websocket");
        assert_eq!(with("keep-alive, upgrade", &["WebSocket"]).unwrap(), "WebSocket");
        assert!(with("Upgrade, HTTP2-Settings", &["h2c"]).is_none());
        assert!(with("upgrade", &["websocket, h2c"]).is_none());
        assert!(with("upgrade", &["websocket", "h2c"]).is_none());
        assert!(with("keep-alive", &["websocket"]).is_none());
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; id_token=abc; b=2"));
        assert_eq!(cookie(&h, "id_token"), Some("abc"));
        remove_cookie(&mut h, "id_token");
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("id_token=abc"));
        remove_cookie(&mut h, "id_token");
        assert!(h.get(header::COOKIE).is_none());
    }
}
