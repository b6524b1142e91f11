//! HTTP/1.1 heads on the wire: parsing request and response heads (httparse, the
//! parser hyper uses), deciding which requests the fast path takes, and writing heads.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::wire::hygiene;

/// As many header fields as hyper accepts; more is handed to hyper, which answers 431.
pub const MAX_HEADERS: usize = 100;

/// A request head the fast path serves.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub target: Target,
    /// The header fields but `Authorization` and `Content-Length`, which are kept
    /// apart: the forwarded message's framing is written from what was parsed here,
    /// never copied from the client's fields (docs/security.md, "Message framing").
    pub headers: HeaderMap,
    /// The body's length: `Content-Length`, if the request had one (else no body).
    pub content_length: Option<u64>,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The head's bytes, to give hyper the request as it came.
    pub raw: Bytes,
    pub authorization: Authorization,
}

/// `Authorization` values, kept out of the header map: never forwarded, they need
/// not become (and be validated again as) `HeaderValue`s. At most two are kept: a
/// second one is already an error.
#[derive(Debug, Default)]
pub struct Authorization([Option<Bytes>; 2]);

impl Authorization {
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().flatten().map(|b| &b[..])
    }

    /// What these fields add to the head's size, counted as `proxy::check_head`
    /// counts every field.
    pub fn len_in_head(&self) -> usize {
        self.values().map(|v| "authorization".len() + v.len() + 4).sum()
    }
}

impl RequestHead {
    /// The size of the fields kept out of `headers`, as `proxy::check_head` counts
    /// every field (so the head size limit is the same on both transports).
    pub fn kept_apart_len(&self) -> usize {
        let length = match self.content_length {
            Some(n) => "content-length".len() + 4 + decimal_len(n),
            None => 0,
        };
        self.authorization.len_in_head() + length
    }

    /// The body's length (0 without one).
    pub fn body_len(&self) -> u64 {
        self.content_length.unwrap_or(0)
    }
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The origin-form request target as sent (`/path?query`): visible ASCII only.
#[derive(Debug)]
pub struct Target {
    bytes: Bytes,
    path_end: usize,
}

impl Target {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.path_end]).unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        let q = self.bytes.get(self.path_end + 1..)?;
        std::str::from_utf8(q).ok()
    }
}

/// What the bytes read so far hold.
#[derive(Debug)]
// Built and moved once per request; boxing the head would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A head the fast path serves; its bytes have been taken from the buffer.
    Fast(RequestHead),
    /// Something for hyper: a malformed or oversized head, HTTP/1.0, a body framed
    /// other than by one `Content-Length`, `Expect`, an upgrade (WebSocket, h2c), a
    /// target not in origin-form, CONNECT, or the HTTP/2 preface.
    HandOver,
    /// A whole head whose framing is ambiguous (two `Content-Length` fields, or one
    /// beside `Transfer-Encoding`): 400 and close. hyper would make one reading of
    /// it (equal lengths merged; the length dropped for the chunked body), as the
    /// RFCs allow; the fast path refuses.
    Refuse { method: Method, why: &'static str },
}

/// Parses the request head at the start of `buf`. `max_head` is
/// `listen.max_header_bytes`: longer heads go to hyper, which answers 431.
pub fn parse_request(buf: &mut BytesMut, max_head: usize) -> Parsed {
    // Slots httparse fills: left uninitialised, as 100 empty headers would cost a
    // 3 KiB memset per request.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        _ => return Parsed::HandOver,
    };
    if req.version != Some(1) {
        return Parsed::HandOver;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else { return Parsed::HandOver };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOver };
    // A fragment never belongs in a request (hyper's parsing drops it), and the
    // target is written to the upstream as it is, so it must be plain visible ASCII:
    // anything else, hyper decides.
    if method == Method::CONNECT
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
    {
        return Parsed::HandOver;
    }
    let target_at = {
        let start = target.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + target.len()
    };
    let path_end = target.find('?').unwrap_or(target.len());
    // Decide before taking anything off the buffer, so that a hand-over leaves it whole.
    let mut body_len = None;
    let mut close = false;
    let mut hosts = 0;
    let mut coded = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // Bodies framed by Transfer-Encoding, and requests that expect an interim
        // answer or change protocols, are hyper's to serve.
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
        } else if name.eq_ignore_ascii_case(b"expect") || name.eq_ignore_ascii_case(b"upgrade") {
            return Parsed::HandOver;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, content_length(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                (Some(_), _) => return Parsed::Refuse { method, why: "more than one Content-Length header" },
                (None, None) => return Parsed::HandOver,
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Parsed::HandOver;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOver;
                }
            }
        }
    }
    match (coded, body_len) {
        // RFC 9112 §6.3 says such a message "ought to be handled as an error"; hyper
        // would drop the length and forward the chunked body, the fast path refuses.
        (true, Some(_)) => return Parsed::Refuse { method, why: "both Transfer-Encoding and Content-Length" },
        (true, None) => return Parsed::HandOver,
        _ => {}
    }
    // Header values are kept as slices of the head's bytes (no copy), as hyper does:
    // note where each field is, then cut the head off the buffer.
    let spans = spans(buf, req.headers);
    let head = buf.split_to(len).freeze();
    // Room for the fields the pipeline adds (forwarding headers, the token).
    let mut headers = HeaderMap::with_capacity(spans.len() + 8);
    let mut authorization = Authorization::default();
    let mut authorizations = 0;
    for (name, value) in &spans {
        let n = &head[name.clone()];
        if n.eq_ignore_ascii_case(b"authorization") {
            if let Some(slot) = authorization.0.get_mut(authorizations) {
                *slot = Some(head.slice(value.clone()));
            }
            authorizations += 1;
            continue;
        }
        if n.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&head[name.clone()]), HeaderValue::from_maybe_shared(head.slice(value.clone())))
        else {
            // httparse and `http` disagree on a byte (DEL, say): hyper decides.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            return Parsed::HandOver;
        };
        headers.append(name, value);
    }
    let target = Target { bytes: head.slice(target_at), path_end };
    Parsed::Fast(RequestHead { method, target, headers, content_length: body_len, close, raw: head, authorization })
}

/// Where each field's name and value sit in `buf`, which they borrow from.
fn spans(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    fields.iter().map(|h| (at(h.name.as_bytes()), at(h.value))).collect()
}

/// A `Content-Length` value: digits only (no sign, no list), at most 19 of them.
pub fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed upstream response head; header fields are spans of `raw`.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    raw: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
    pub framing: Framing,
    /// A valid `Content-Length` of a bodiless answer (HEAD, 304), passed on as is.
    content_length: Option<u64>,
    /// The upstream will close the connection (or is HTTP/1.0): never pooled.
    pub close: bool,
}

/// Why an upstream response head was refused (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Malformed,
    #[error("response head too large")]
    TooLarge,
    #[error("both Transfer-Encoding and Content-Length")]
    AmbiguousLength,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("unsupported Transfer-Encoding")]
    TransferEncoding,
    #[error("unrequested protocol switch")]
    Switch,
}

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Parses the response head at the start of `buf`. `None`: not complete yet.
/// Interim (1xx) answers are taken off `buf` and skipped, as hyper's client does.
pub fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, BadResponse> {
    parse_response_upgrading(buf, head_request, false)
}

/// [`parse_response`] for a request that asked for a protocol switch (`upgrading`):
/// a `101` is then the answer (no body; the connection becomes a tunnel) instead of
/// an error.
pub fn parse_response_upgrading(
    buf: &mut BytesMut,
    head_request: bool,
    upgrading: bool,
) -> Result<Option<ResponseHead>, BadResponse> {
    loop {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
                Ok(httparse::Status::Partial) => return Err(BadResponse::TooLarge),
                Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
                Err(_) => return Err(BadResponse::Malformed),
            };
        let code = resp.code.ok_or(BadResponse::Malformed)?;
        let status = StatusCode::from_u16(code).map_err(|_| BadResponse::Malformed)?;
        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        if switched && !upgrading {
            return Err(BadResponse::Switch);
        }
        if status.is_informational() && !switched {
            let _ = buf.split_to(len);
            continue;
        }
        let fields = spans(buf, resp.headers);
        // Content-Length: the value, and whether any value disagreed or was invalid.
        let (mut length, mut bad_length) = (None::<u64>, false);
        let (mut chunked, mut other_coding, mut close) = (false, false, resp.version != Some(1));
        for h in resp.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"content-length") {
                // A list of equal values is one value (RFC 9110 §8.6).
                for v in h.value.split(|&b| b == b',') {
                    match (content_length(v.trim_ascii()), length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(first)) if n == first => {}
                        _ => bad_length = true,
                    }
                }
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    match coding.eq_ignore_ascii_case(b"chunked") {
                        true if !chunked => chunked = true,
                        _ => other_coding = true,
                    }
                }
            } else if n.eq_ignore_ascii_case(b"connection") {
                close |= h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        if bad_length {
            return Err(BadResponse::ContentLength);
        }
        let bodiless =
            head_request || switched || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            Framing::Empty
        } else if chunked || other_coding {
            if length.is_some() {
                return Err(BadResponse::AmbiguousLength);
            }
            if other_coding {
                return Err(BadResponse::TransferEncoding);
            }
            Framing::Chunked
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        close |= framing == Framing::Close;
        let raw = buf.split_to(len).freeze();
        let content_length = if bodiless && status != StatusCode::NO_CONTENT { length } else { None };
        return Ok(Some(ResponseHead { status, raw, fields, framing, content_length, close }));
    }
}

/// Writes the status line and the header fields the client gets: the upstream's
/// end-to-end fields (hop-by-hop ones, those `Connection` names, the internal token
/// header, framing and `X-Request-Id` removed), then ours. The head ends with the
/// framing `framing` gets toward the client: chunked for chunked and
/// close-delimited bodies, so the client's connection can stay open.
pub fn write_response_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    token_header: &str,
    request_id: &HeaderValue,
    close: bool,
) {
    let listed = head.connection_listed();
    status_line(out, head.status);
    let mut has_date = false;
    for (n, v) in &head.fields {
        let name = &head.raw[n.clone()];
        if !passes_to_client(name, &listed, token_header) {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        field(out, name, &head.raw[v.clone()]);
    }
    match head.framing {
        Framing::Empty => {
            if let Some(n) = head.content_length {
                length_field(out, n);
            }
        }
        Framing::Length(n) => length_field(out, n),
        Framing::Chunked | Framing::Close => field(out, b"transfer-encoding", b"chunked"),
    }
    end_head(out, request_id, has_date, close);
}

/// Whether an upstream answer's field goes on to the client (docs/security.md,
/// "Compromised or echoing upstream"): not a hop-by-hop field or one its `Connection`
/// names (`listed`), not its framing (claimsmith frames the body itself), not its
/// `X-Request-Id` (ours is set), never an echo of the internal token's header.
fn passes_to_client(name: &[u8], listed: &[String], token_header: &str) -> bool {
    !(hygiene::is_hop_by_hop_raw(name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"x-request-id")
        || hygiene::canonical_eq(name, token_header)
        || listed.iter().any(|l| hygiene::canonical_eq(name, l)))
}

impl ResponseHead {
    /// The names its `Connection` fields list, canonical.
    fn connection_listed(&self) -> Vec<String> {
        let values = self.fields.iter().filter(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(b"connection"));
        hygiene::connection_tokens(values.map(|(_, v)| &self.raw[v.clone()]))
    }

    /// The header fields the client gets, for a transport that frames the body itself
    /// (hyper): the same fields [`write_response_head`] passes on, plus the length of a
    /// bodiless answer (HEAD, 304). A `101`'s `Upgrade` goes on with `Connection:
    /// upgrade`, which the switch needs.
    pub fn client_headers(&self, token_header: &str) -> HeaderMap {
        let listed = self.connection_listed();
        let mut h = HeaderMap::with_capacity(self.fields.len() + 2);
        let switched = self.status == StatusCode::SWITCHING_PROTOCOLS;
        for (n, v) in &self.fields {
            let name = &self.raw[n.clone()];
            let upgrade = switched && name.eq_ignore_ascii_case(b"upgrade");
            if !upgrade && !passes_to_client(name, &listed, token_header) {
                continue;
            }
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_maybe_shared(self.raw.slice(v.clone())))
            {
                h.append(name, value);
            }
        }
        if switched {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if let (Framing::Empty, Some(n)) = (self.framing, self.content_length) {
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        h
    }
}

/// Writes a whole answer of claimsmith's own (an error) with its body; an answer to
/// HEAD gets the body's length but not the body.
pub fn write_own_response(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, body: &[u8], ends: Ends<'_>) {
    status_line(out, status);
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    length_field(out, body.len() as u64);
    end_head(out, ends.request_id, false, ends.close);
    if !ends.head_request {
        out.extend_from_slice(body);
    }
}

/// What every answer's head ends with.
pub struct Ends<'a> {
    pub request_id: &'a HeaderValue,
    /// `Connection: close`: this is the connection's last answer.
    pub close: bool,
    pub head_request: bool,
}

/// Writes the upstream request head: request line (the target given as pieces of
/// its path and the query), `headers` as they are, then the body's length as parsed
/// from the client's head (`headers` holds no framing field of the client's).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    (path, query): (&[&str], Option<&str>),
    headers: &HeaderMap,
    content_length: Option<u64>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    path.iter().for_each(|p| out.extend_from_slice(p.as_bytes()));
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(n) = content_length {
        length_field(out, n);
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn length_field(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without the allocation of `to_string` (this runs per answer).
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn end_head(out: &mut Vec<u8>, request_id: &HeaderValue, has_date: bool, close: bool) {
    field(out, b"x-request-id", request_id.as_bytes());
    if !has_date {
        date::with_now(|d| field(out, b"date", d));
    }
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk of a chunked body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The `Date` header's value (RFC 9110 §5.6.7), formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn with_now(f: impl FnOnce(&[u8])) {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                *c = (secs, format(secs));
            }
            f(&c.1);
        });
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate) for seconds since the epoch.
    pub fn format(secs: u64) -> [u8; 29] {
        // httpdate writes four-digit years only (it panics past 9999): a clock that
        // far off gets the last second it can write.
        const LAST: u64 = 253_402_300_799;
        let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs.min(LAST)));
        // IMF-fixdate is always 29 bytes.
        let mut out = [b' '; 29];
        let n = text.len().min(29);
        out[..n].copy_from_slice(&text.as_bytes()[..n]);
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn formats_imf_fixdate() {
            assert_eq!(&super::format(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
            assert_eq!(&super::format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
            assert_eq!(&super::format(1_709_208_000), b"Thu, 29 Feb 2024 12:00:00 GMT");
            assert_eq!(&super::format(u64::MAX), b"Fri, 31 Dec 9999 23:59:59 GMT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Parsed {
        parse_request(&mut BytesMut::from(raw), 8192)
    }

    #[test]
    fn plain_requests_take_the_fast_path() {
        let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: 1\r\nContent-Length: 3\r\n\r\nabcGET");
        let Parsed::Fast(h) = parse_request(&mut buf, 8192) else { panic!() };
        assert_eq!(
            (&h.method, h.target.path(), h.target.query(), h.content_length, h.close),
            (&Method::GET, "/a", Some("b=1"), Some(3), false)
        );
        assert_eq!(h.headers.get("x-y").unwrap(), "1");
        // The framing is kept apart from the fields, to be written from the parsed value.
        assert!(h.headers.get("content-length").is_none());
        assert_eq!(h.kept_apart_len(), "content-length".len() + 4 + 1);
        assert_eq!(&buf[..], b"abcGET");
        let Parsed::Fast(h) = parse("DELETE / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n") else { panic!() };
        assert!(h.close);
        // Authorization values are kept apart (and counted in the head's size), all of them.
        let raw = "GET / HTTP/1.1\r\nAuthorization: Bearer a.b.c\r\nX: 1\r\nauthorization: Basic x\r\n\r\n";
        let Parsed::Fast(h) = parse(raw) else { panic!() };
        assert_eq!(h.authorization.values().collect::<Vec<_>>(), [&b"Bearer a.b.c"[..], b"Basic x"]);
        assert!(h.headers.get("authorization").is_none());
        assert_eq!(h.authorization.len_in_head(), (13 + 12 + 4) + (13 + 7 + 4));
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        let raws = [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET /a#b HTTP/1.1\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
        ];
        for raw in raws {
            // Handed over with every byte still in the buffer.
            let mut buf = BytesMut::from(format!("{raw}NEXT").as_str());
            assert!(matches!(parse_request(&mut buf, 8192), Parsed::HandOver), "{raw:?}");
            assert_eq!(&buf[..], format!("{raw}NEXT").as_bytes());
        }
        let mut two = BytesMut::from("POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx");
        assert!(matches!(parse_request(&mut two, 8192), Parsed::Refuse { method: Method::POST, .. }));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(matches!(parse(&big), Parsed::HandOver));
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert!(matches!(parse(&endless), Parsed::HandOver));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(matches!(parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Parsed::HandOver));
    }

    fn response(raw: &str, head_request: bool) -> Result<Option<ResponseHead>, BadResponse> {
        parse_response(&mut BytesMut::from(raw), head_request)
    }

    #[test]
    fn response_framing() {
        let framing = |raw: &str| response(raw, false).unwrap().unwrap().framing;
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), Framing::Length(5));
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"), Framing::Length(5));
        assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"), Framing::Chunked);
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"), Framing::Empty);
        assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
        let head = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap().unwrap();
        assert_eq!((head.framing, head.content_length), (Framing::Empty, Some(5)));
        assert!(response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false).unwrap().is_none());
        let mut interim = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(parse_response(&mut interim, false).unwrap().unwrap().status, StatusCode::OK);
        assert!(interim.is_empty());
    }

    #[test]
    fn bad_responses_are_refused() {
        let bad = |raw: &str, e: BadResponse| assert_eq!(response(raw, false).unwrap_err(), e, "{raw:?}");
        bad("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", BadResponse::AmbiguousLength);
        bad("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", BadResponse::ContentLength);
        bad("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", BadResponse::ContentLength);
        bad("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", BadResponse::ContentLength);
        bad("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", BadResponse::TransferEncoding);
        bad("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BadResponse::TransferEncoding);
        bad("HTTP/1.1 101 Switching Protocols\r\n\r\n", BadResponse::Switch);
        bad("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", BadResponse::Malformed);
        bad("HTTP/1.1 2000 OK\r\n\r\n", BadResponse::Malformed);
        bad(&format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD)), BadResponse::TooLarge);
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn own_answers_to_head_have_no_body() {
        let id = HeaderValue::from_static("id");
        let mut out = Vec::new();
        let ends = Ends { request_id: &id, close: false, head_request: true };
        write_own_response(&mut out, StatusCode::NOT_FOUND, &HeaderMap::new(), b"{}", ends);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nx-request-id: id\r\n"), "{text}");
        assert!(text.ends_with("GMT\r\n\r\n"), "the head ends the answer: {text}");
    }

    #[test]
    fn response_heads_are_cleaned() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX_Internal_Token: t\r\n\
             X-Request-Id: theirs\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nDate: D\r\n\r\nok",
        );
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, &head, "x-internal-token", &HeaderValue::from_static("ours"), true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: D\r\ncontent-length: 2\r\nx-request-id: ours\r\nconnection: close\r\n\r\n"
        );
    }
}
