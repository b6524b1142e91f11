//! A strict HTTP/1.1 message parser (RFC 9112), written by hand and independent of
//! httparse (which claimsmith itself parses with), so that the differential tests and
//! the `h1_differential` fuzz target judge claimsmith's wire output with a second,
//! unrelated reading of the protocol.
//!
//! Strict means every leniency a real server might allow is an error here: obs-fold,
//! bare CR, bare LF, whitespace before the colon, control characters (other than HTAB)
//! in field values, field names that are not tokens, leading empty lines, any version
//! but `HTTP/1.1` on requests, a target not in origin-form, a missing or repeated
//! `Host`, `Transfer-Encoding` together with `Content-Length`, several
//! `Content-Length` fields (even equal ones) or a list in one, a `Transfer-Encoding`
//! whose final coding is not `chunked` on a request, and any chunked-framing slip
//! (size, extensions, CRLFs, trailers).
//!
//! Leniencies kept on purpose, as none can change where a message ends: bytes
//! 0x80-0xFF (obs-text) in field values and in the request target.
//!
//! Used from `tests/` (as `support::strict_h1`) and from `fuzz/src/lib.rs` (by path),
//! so it depends on `std` alone.
#![allow(dead_code)]

/// Header fields as received: the name as sent, the value without its surrounding OWS.
pub type Fields = Vec<(String, Vec<u8>)>;

/// How a message's body was delimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: none announced (requests), or none allowed (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closed (responses only).
    Close,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Fields,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: Vec<u8>,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Fields,
}

/// A field's value by name (case-insensitive), the first one.
pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// Every value of a field by name (case-insensitive), in order.
pub fn fields<'a>(fields: &'a Fields, name: &str) -> Vec<&'a [u8]> {
    fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        field(&self.headers, name)
    }
    /// The target's path (before any `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        field(&self.headers, name)
    }
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// How a byte stream ended after the messages that were parsed whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Nothing after the last message.
    Clean,
    /// A message was begun and not finished (more bytes could complete it).
    Incomplete,
    /// The bytes break the grammar at `offset` (from the start of the stream).
    Error { offset: usize, reason: String },
}

/// Every whole message of a stream, and how it ended.
#[derive(Clone, Debug)]
pub struct Stream<T> {
    pub messages: Vec<T>,
    pub end: End,
    /// Bytes taken by the whole messages.
    pub consumed: usize,
}

/// One message parsed off the front of a buffer.
#[derive(Clone, Debug)]
pub enum Step<T> {
    /// The message and how many bytes it took.
    Done(T, usize),
    Incomplete,
    /// `offset` is relative to the start of the buffer given.
    Error {
        offset: usize,
        reason: String,
    },
}

#[derive(Debug)]
enum Stop {
    Incomplete,
    Error(usize, String),
}

type R<T> = Result<T, Stop>;

fn err<T>(at: usize, reason: impl Into<String>) -> R<T> {
    Err(Stop::Error(at, reason.into()))
}

/// RFC 9110 §5.6.2 tchar.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Field-value bytes: VCHAR, obs-text, SP, HTAB.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The next line without its CRLF; a CR not followed by LF, or an LF not after a
    /// CR, is an error.
    fn line(&mut self) -> R<(usize, &'a [u8])> {
        let start = self.pos;
        let mut i = start;
        while i < self.buf.len() {
            match self.buf[i] {
                b'\r' => match self.buf.get(i + 1) {
                    None => return Err(Stop::Incomplete),
                    Some(b'\n') => {
                        self.pos = i + 2;
                        return Ok((start, &self.buf[start..i]));
                    }
                    Some(_) => return err(i, "bare CR"),
                },
                b'\n' => return err(i, "bare LF (line not ended by CRLF)"),
                _ => i += 1,
            }
        }
        Err(Stop::Incomplete)
    }

    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if left < n {
            return Err(Stop::Incomplete);
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn crlf(&mut self, what: &str) -> R<()> {
        let at = self.pos;
        match self.buf.get(at..at + 2) {
            Some(b"\r\n") => {
                self.pos += 2;
                Ok(())
            }
            Some(_) => err(at, format!("{what} not followed by CRLF")),
            None if self.buf[at..].iter().all(|&b| b == b'\r') => Err(Stop::Incomplete),
            None => err(at, format!("{what} not followed by CRLF")),
        }
    }
}

/// Field lines up to and including the empty line.
fn field_lines(c: &mut Cursor<'_>) -> R<Fields> {
    let mut out = Vec::new();
    loop {
        let (at, line) = c.line()?;
        if line.is_empty() {
            return Ok(out);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return err(at, "obs-fold (a field line starting with whitespace)");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return err(at, "field line without a colon");
        };
        let name = &line[..colon];
        if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
            return err(at + colon - 1, "whitespace before the colon");
        }
        if let Some(bad) = name.iter().position(|&b| !is_tchar(b)) {
            return err(at + bad, "field name is not a token");
        }
        if name.is_empty() {
            return err(at, "empty field name");
        }
        let value = &line[colon + 1..];
        if let Some(bad) = value.iter().position(|&b| !is_value_byte(b)) {
            return err(at + colon + 1 + bad, format!("control byte {:#04x} in a field value", value[bad]));
        }
        let value = trim_ows(value);
        // The name is all tchar, hence ASCII.
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), empty ones dropped.
pub fn list_elements(values: &[&[u8]]) -> Vec<Vec<u8>> {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// `Content-Length`: exactly one field, all digits, no overflow.
fn content_length(fields: &Fields, at: usize) -> R<Option<u64>> {
    let cl = self::fields(fields, "content-length");
    match cl.as_slice() {
        [] => Ok(None),
        [v] => {
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return err(at, format!("invalid Content-Length {:?}", String::from_utf8_lossy(v)));
            }
            match std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => Ok(Some(n)),
                None => err(at, "Content-Length overflows"),
            }
        }
        more => err(at, format!("{} Content-Length fields", more.len())),
    }
}

/// Transfer-Encoding: `Some(true)` when the final coding is chunked (and chunked
/// appears once), `Some(false)` when present but not chunked last.
fn transfer_encoding(fields: &Fields, at: usize) -> R<Option<bool>> {
    let te = self::fields(fields, "transfer-encoding");
    if te.is_empty() {
        return Ok(None);
    }
    let codings = list_elements(&te);
    if codings.is_empty() {
        return err(at, "empty Transfer-Encoding");
    }
    for c in &codings {
        // A coding is a token, optionally with parameters: only the token is checked.
        let name = c.split(|&b| b == b';').next().map(trim_ows).unwrap_or_default();
        if !is_token(name) {
            return err(at, format!("transfer coding {:?} is not a token", String::from_utf8_lossy(c)));
        }
    }
    let chunked: Vec<bool> = codings.iter().map(|c| c.eq_ignore_ascii_case(b"chunked")).collect();
    let times = chunked.iter().filter(|&&b| b).count();
    let last = *chunked.last().unwrap_or(&false);
    if times > 1 || (times == 1 && !last) {
        return err(at, "chunked applied more than once, or not last");
    }
    Ok(Some(last))
}

/// A chunked body (RFC 9112 §7.1): sizes, extensions, data CRLFs and trailers, strictly.
fn chunked_body(c: &mut Cursor<'_>) -> R<(Vec<u8>, Fields)> {
    let mut body = Vec::new();
    loop {
        let (at, line) = c.line()?;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return err(at, "chunk size is not hex digits");
        }
        // Leading zeros are allowed; the value must fit in u64.
        let significant = line[..digits].iter().skip_while(|&&b| b == b'0').count();
        if significant > 15 {
            return err(at, "chunk size too large");
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap_or("x"), 16)
            .map_err(|_| Stop::Error(at, "chunk size".into()))?;
        chunk_extensions(&line[digits..], at + digits)?;
        if size == 0 {
            let trailers = field_lines(c)?;
            for (n, _) in &trailers {
                let n = n.to_ascii_lowercase();
                if ["content-length", "transfer-encoding", "host"].contains(&n.as_str()) {
                    return err(c.pos, format!("framing field {n} in the trailers"));
                }
            }
            return Ok((body, trailers));
        }
        body.extend_from_slice(c.take(size)?);
        c.crlf("chunk data")?;
    }
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, ext-val a token or a
/// quoted-string.
fn chunk_extensions(mut s: &[u8], mut at: usize) -> R<()> {
    let skip_bws = |s: &mut &[u8], at: &mut usize| {
        while let Some((&b, rest)) = s.split_first() {
            if b != b' ' && b != b'\t' {
                break;
            }
            *s = rest;
            *at += 1;
        }
    };
    loop {
        if s.is_empty() {
            return Ok(());
        }
        // BWS only ever precedes a `;`: trailing whitespace is not allowed.
        skip_bws(&mut s, &mut at);
        if s.first() != Some(&b';') {
            return err(at, "junk after the chunk size");
        }
        s = &s[1..];
        at += 1;
        skip_bws(&mut s, &mut at);
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        if n == 0 {
            return err(at, "chunk extension without a name");
        }
        s = &s[n..];
        at += n;
        skip_bws(&mut s, &mut at);
        if s.first() == Some(&b'=') {
            s = &s[1..];
            at += 1;
            skip_bws(&mut s, &mut at);
            if s.first() == Some(&b'"') {
                let mut i = 1;
                loop {
                    match s.get(i) {
                        None => return err(at + i, "unterminated quoted chunk extension value"),
                        Some(b'"') => break,
                        Some(b'\\') => match s.get(i + 1) {
                            Some(&b) if is_value_byte(b) => i += 2,
                            _ => return err(at + i, "bad quoted-pair in a chunk extension"),
                        },
                        Some(&b) if is_value_byte(b) => i += 1,
                        Some(_) => return err(at + i, "control byte in a chunk extension"),
                    }
                }
                s = &s[i + 1..];
                at += i + 1;
            } else {
                let v = s.iter().take_while(|&&b| is_tchar(b)).count();
                if v == 0 {
                    return err(at, "chunk extension without a value after =");
                }
                s = &s[v..];
                at += v;
            }
        }
    }
}

/// A body framed as `framing` says, or to the end of the stream (`eof`).
fn body(c: &mut Cursor<'_>, framing: &Framing, eof: bool) -> R<(Vec<u8>, Fields)> {
    match framing {
        Framing::None => Ok((Vec::new(), Vec::new())),
        Framing::Length(n) => Ok((c.take(*n)?.to_vec(), Vec::new())),
        Framing::Chunked => chunked_body(c),
        Framing::Close => {
            if !eof {
                return Err(Stop::Incomplete);
            }
            let rest = c.buf[c.pos..].to_vec();
            c.pos = c.buf.len();
            Ok((rest, Vec::new()))
        }
    }
}

/// origin-form: `/`, then visible ASCII (or obs-text) without `#`.
fn origin_form(t: &[u8]) -> bool {
    t.first() == Some(&b'/') && t.iter().all(|&b| ((0x21..=0x7e).contains(&b) && b != b'#') || b >= 0x80)
}

fn request(c: &mut Cursor<'_>) -> R<Request> {
    let (at, line) = c.line()?;
    if line.is_empty() {
        return err(at, "empty line before the request line");
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return err(at, "request line is not `method SP target SP version`");
    };
    if !is_token(method) {
        return err(at, "method is not a token");
    }
    if !origin_form(target) {
        return err(at + method.len() + 1, "request target is not in origin-form");
    }
    if version != b"HTTP/1.1" {
        return err(at + method.len() + target.len() + 2, "version is not HTTP/1.1");
    }
    let head_at = c.pos;
    let headers = field_lines(c)?;
    let hosts = fields(&headers, "host");
    if hosts.len() != 1 {
        return err(head_at, format!("{} Host fields", hosts.len()));
    }
    let te = transfer_encoding(&headers, head_at)?;
    let cl = content_length(&headers, head_at)?;
    let framing = match (te, cl) {
        (Some(_), Some(_)) => return err(head_at, "both Transfer-Encoding and Content-Length"),
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => return err(head_at, "Transfer-Encoding whose final coding is not chunked"),
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::None,
    };
    let (body, trailers) = body(c, &framing, false)?;
    Ok(Request {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        headers,
        body,
        framing,
        trailers,
    })
}

fn response(c: &mut Cursor<'_>, method: &str, eof: bool) -> R<Response> {
    let (at, line) = c.line()?;
    // `HTTP-version SP 3DIGIT SP reason-phrase` (the phrase may be empty, not its SP).
    // HTTP/1.0 is allowed: it is what a server may answer an HTTP/1.0 client with.
    let ok = line.len() >= 13
        && (line.starts_with(b"HTTP/1.1 ") || line.starts_with(b"HTTP/1.0 "))
        && line[9..12].iter().all(u8::is_ascii_digit)
        && line[12] == b' '
        && line[13..].iter().all(|&b| is_value_byte(b));
    if !ok {
        return err(at, format!("bad status line {:?}", String::from_utf8_lossy(line)));
    }
    let status: u16 = std::str::from_utf8(&line[9..12]).unwrap_or("0").parse().unwrap_or(0);
    if status < 100 {
        return err(at + 9, "status code below 100");
    }
    let head_at = c.pos;
    let headers = field_lines(c)?;
    let te = transfer_encoding(&headers, head_at)?;
    let cl = content_length(&headers, head_at)?;
    if te.is_some() && cl.is_some() {
        return err(head_at, "both Transfer-Encoding and Content-Length");
    }
    let bodiless = method.eq_ignore_ascii_case("HEAD") || status < 200 || status == 204 || status == 304;
    if (status < 200 || status == 204) && (te.is_some() || cl.is_some_and(|n| n != 0)) {
        return err(head_at, format!("{status} with framing fields"));
    }
    let framing = match (bodiless, te, cl) {
        (true, _, _) => Framing::None,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::Close,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::Close,
    };
    let (body, trailers) = body(c, &framing, eof)?;
    Ok(Response { status, reason: line[13..].to_vec(), headers, body, framing, trailers })
}

fn step<T>(buf: &[u8], f: impl FnOnce(&mut Cursor<'_>) -> R<T>) -> Step<T> {
    let mut c = Cursor { buf, pos: 0 };
    match f(&mut c) {
        Ok(m) => Step::Done(m, c.pos),
        Err(Stop::Incomplete) => Step::Incomplete,
        Err(Stop::Error(offset, reason)) => Step::Error { offset, reason },
    }
}

/// One request off the front of `buf`.
pub fn parse_request(buf: &[u8]) -> Step<Request> {
    step(buf, request)
}

/// One response off the front of `buf`, answering a request with `method`; `eof`:
/// `buf` ends where the connection ended (a close-delimited body is then complete).
pub fn parse_response(buf: &[u8], method: &str, eof: bool) -> Step<Response> {
    step(buf, |c| response(c, method, eof))
}

/// Every request of a byte stream.
pub fn parse_requests(buf: &[u8]) -> Stream<Request> {
    let mut messages = Vec::new();
    let mut at = 0;
    loop {
        if at == buf.len() {
            return Stream { messages, end: End::Clean, consumed: at };
        }
        match parse_request(&buf[at..]) {
            Step::Done(m, n) => {
                messages.push(m);
                at += n;
            }
            Step::Incomplete => return Stream { messages, end: End::Incomplete, consumed: at },
            Step::Error { offset, reason } => {
                return Stream { messages, end: End::Error { offset: at + offset, reason }, consumed: at };
            }
        }
    }
}

/// Every response of a byte stream, the k-th final one answering `methods[k]` (GET
/// past the end of the list). Interim (1xx) responses are included; a 101 ends the
/// HTTP part of the stream, so parsing stops after it. `eof`: the connection ended
/// where `buf` does.
pub fn parse_responses(buf: &[u8], methods: &[&str], eof: bool) -> Stream<Response> {
    let mut messages: Vec<Response> = Vec::new();
    let mut at = 0;
    let mut finals = 0;
    loop {
        if at == buf.len() || messages.last().is_some_and(|m| m.status == 101) {
            return Stream { messages, end: End::Clean, consumed: at };
        }
        let method = methods.get(finals).copied().unwrap_or("GET");
        match parse_response(&buf[at..], method, eof) {
            Step::Done(m, n) => {
                if m.status >= 200 {
                    finals += 1;
                }
                messages.push(m);
                at += n;
            }
            Step::Incomplete => return Stream { messages, end: End::Incomplete, consumed: at },
            Step::Error { offset, reason } => {
                return Stream { messages, end: End::Error { offset: at + offset, reason }, consumed: at };
            }
        }
    }
}

/// `bytes` printable: `\r`, `\n`, `\t`, `\\` and `\xNN` for the rest of non-visible bytes.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}
