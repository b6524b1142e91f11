//! Differential tests of claimsmith's HTTP/1.1 handling, over both transports:
//! `listen.fast_path = true` (the hand-written fast path, which hands unusual requests
//! to hyper) and `fast_path = false` (hyper serves every connection).
//!
//! Well over a thousand client byte sequences (framing variants, `Connection`
//! nominations, Host, line-level corruptions, versions and target forms, `Expect`,
//! upgrades, pipelines hiding a request to /api/) are sent through claimsmith to an
//! upstream that reads what it gets with a strict, independent HTTP/1.1 parser
//! (`support/strict_h1.rs`) and answers in one of several framings. Per case, it
//! proves:
//!
//! - (a) the upstream never receives bytes the strict parser rejects: claimsmith and
//!   its upstream agree on where every request ends (no desync, no smuggling);
//! - (b) every request the upstream sees under /api/ carries the internal token, and
//!   the upstream sees exactly the requests whose answers reach the client, in order
//!   (nothing is forwarded that the client did not send as a request);
//! - (c) every answer the client reads (parsed as strictly) answers its own request,
//!   and there are never more answers than requests;
//! - (d) afterwards a fresh request gets its own answer (no poisoned pooled upstream
//!   connection);
//! - (e) no answer carries the internal token header or a token;
//! - (f) `Upgrade: h2c` never reaches the upstream, nor any `Upgrade` on a route with
//!   `auth = "off"` (whose `websocket` setting defaults to false).
//!
//! Why: an authenticating proxy is only as strong as its agreement with the upstream on
//! message boundaries. A request hidden in another's body reaches a protected route
//! unverified, and a desynchronised pooled connection hands one client's answers to
//! another. Each failing case is reported with its bytes, then the test fails with a
//! count. The three known smuggling payloads also have named regression tests.
//!
//! `DIFFERENTIAL_FILTER=text` runs only the cases whose name contains `text`;
//! `DIFFERENTIAL_SLOTS=n` sets how many claimsmith instances per transport run cases
//! side by side (each runs its cases one after the other).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::strict_h1::{self, End, Step, escape};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// The strict upstream

/// How the upstream frames its answers (chosen per case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `200` with `Content-Length`.
    Length,
    /// `200`, chunked, with a chunk extension and a trailer.
    Chunked,
    /// `200` delimited by closing the connection.
    Close,
    /// `204`.
    NoContent,
    /// `304` with the `Content-Length` a `200` would have had.
    NotModified,
    /// `103 Early Hints`, then a `200` with `Content-Length`.
    Interim,
}

const ANSWERS: [Answer; 6] =
    [Answer::Length, Answer::Chunked, Answer::Close, Answer::NoContent, Answer::NotModified, Answer::Interim];

/// Sequence numbers of upstream answers, unique in this test binary.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// One request as the upstream parsed it, and what it answered.
#[derive(Clone, Debug)]
struct UpRequest {
    seq: u64,
    conn: usize,
    method: String,
    target: String,
    path: String,
    /// The internal token header's value, if sent.
    token: Option<Vec<u8>>,
    body_len: usize,
    /// The status and the body the client should get from this answer.
    status: u16,
    body_sent: Vec<u8>,
    /// Breaches of the upgrade and Connection policy (property f).
    policy: Vec<String>,
}

#[derive(Clone, Debug)]
enum UpEvent {
    Request(UpRequest),
    /// Bytes the strict parser refused (property a); the connection is then closed.
    Violation {
        conn: usize,
        reason: String,
        context: String,
    },
}

#[derive(Default)]
struct UpState {
    events: Mutex<Vec<UpEvent>>,
    answers: Mutex<HashMap<u32, Answer>>,
    last_activity: Mutex<Option<Instant>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    conns: AtomicUsize,
}

impl UpState {
    fn touch(&self) {
        *self.last_activity.lock().unwrap() = Some(Instant::now());
    }

    fn push(&self, e: UpEvent) {
        self.events.lock().unwrap().push(e);
    }

    /// The answer to `req` (bytes, and whether to close after it); records `req`.
    /// `after_close`: the request came after an answer delimited by closing the
    /// connection, so it is recorded (status 0) and never answered.
    fn answer(&self, req: &strict_h1::Request, conn: usize, after_close: bool) -> (Vec<u8>, bool) {
        let seq = SEQ.fetch_add(1, SeqCst);
        let path = req.path().to_string();
        let kind = match case_of(&path) {
            Some((_, true)) | None => Answer::Length,
            Some((id, false)) => self.answers.lock().unwrap().get(&id).copied().unwrap_or(Answer::Length),
        };
        let head_request = req.method == "HEAD";
        let body = format!("seq={seq} path={path}").into_bytes();
        // The markers travel in headers too: HEAD, 204 and 304 answers have no body. The
        // internal token header is echoed (both spellings) for claimsmith to remove.
        let markers = format!(
            "x-upstream-seq: {seq}\r\nx-upstream-path: {p}\r\nX-Internal-Token: upstream-echo-{seq}\r\n\
             X_Internal_Token: upstream-echo-{seq}\r\nContent-Type: text/plain\r\n",
            p = escape(path.as_bytes())
        );
        let mut out = Vec::new();
        let mut close = false;
        let with_body = |out: &mut Vec<u8>| {
            if !head_request {
                out.extend_from_slice(&body);
            }
        };
        let status = match kind {
            Answer::Length | Answer::Interim => {
                if kind == Answer::Interim {
                    out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n");
                }
                out.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\n{markers}Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                with_body(&mut out);
                200
            }
            Answer::Chunked => {
                out.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\n{markers}Transfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n")
                        .as_bytes(),
                );
                if !head_request {
                    let (a, b) = body.split_at(body.len() / 2);
                    out.extend_from_slice(format!("{:x};ext=\"v\"\r\n", a.len()).as_bytes());
                    out.extend_from_slice(a);
                    out.extend_from_slice(format!("\r\n{:X}\r\n", b.len()).as_bytes());
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
                }
                200
            }
            Answer::Close => {
                out.extend_from_slice(format!("HTTP/1.1 200 OK\r\n{markers}Connection: close\r\n\r\n").as_bytes());
                with_body(&mut out);
                close = true;
                200
            }
            Answer::NoContent => {
                out.extend_from_slice(format!("HTTP/1.1 204 No Content\r\n{markers}\r\n").as_bytes());
                204
            }
            Answer::NotModified => {
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 304 Not Modified\r\n{markers}ETag: \"e{seq}\"\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                304
            }
        };
        let (status, body_sent) = match (after_close, head_request || status != 200) {
            (true, _) => (0, Vec::new()),
            (false, true) => (status, Vec::new()),
            (false, false) => (status, body),
        };
        let mut policy = Vec::new();
        let upgrades = req.headers.iter().filter(|(n, _)| canonical(n) == "upgrade");
        for (_, v) in upgrades {
            let v = String::from_utf8_lossy(v).to_ascii_lowercase();
            if v.contains("h2c") {
                policy.push(format!("`Upgrade: {v}` reached the upstream"));
            }
            if path.starts_with("/public/") {
                policy
                    .push(format!("`Upgrade: {v}` reached a route with auth = \"off\" (websocket defaults to false)"));
            }
        }
        let connection: Vec<&[u8]> =
            req.headers.iter().filter(|(n, _)| canonical(n) == "connection").map(|(_, v)| v.as_slice()).collect();
        for e in strict_h1::list_elements(&connection) {
            let c = String::from_utf8_lossy(&e).to_ascii_lowercase().replace('_', "-");
            if ["content-length", "transfer-encoding", "host"].contains(&c.as_str()) {
                policy.push(format!("the upstream's Connection field names {c}"));
            }
        }
        self.push(UpEvent::Request(UpRequest {
            seq,
            conn,
            method: req.method.clone(),
            target: req.target.clone(),
            path,
            token: req.header("x-internal-token").map(<[u8]>::to_vec),
            body_len: req.body.len(),
            status,
            body_sent,
            policy,
        }));
        (out, close)
    }
}

/// The case a path belongs to (`/<route>/c<id>/...`), and whether it is a probe.
fn case_of(path: &str) -> Option<(u32, bool)> {
    let mut seg = path.split('/').skip(2);
    let id = seg.next()?.strip_prefix('c')?.parse().ok()?;
    Some((id, seg.next().is_some_and(|s| s.starts_with("probe"))))
}

/// An upstream on loopback that parses every connection with [`strict_h1`].
struct StrictUpstream {
    addr: SocketAddr,
    st: Arc<UpState>,
}

impl StrictUpstream {
    async fn start() -> StrictUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = Arc::new(UpState::default());
        let s = st.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let conn = s.conns.fetch_add(1, SeqCst);
                s.touch();
                let task = tokio::spawn(serve_strict(stream, conn, s.clone()));
                let mut tasks = s.tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(task.abort_handle());
            }
        });
        StrictUpstream { addr, st }
    }

    /// Whether the upstream has done nothing (read, answer) for `d`.
    fn quiet_for(&self, d: Duration) -> bool {
        self.st.last_activity.lock().unwrap().is_none_or(|t| t.elapsed() >= d)
    }

    /// Waits until the upstream has been idle for a while (reading, answering).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let last = *self.st.last_activity.lock().unwrap();
            if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(30)) || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn take_events(&self) -> Vec<UpEvent> {
        std::mem::take(&mut *self.st.events.lock().unwrap())
    }

    /// Closes every connection, so that the next case starts on fresh ones, and gives
    /// claimsmith a moment to notice.
    async fn close_all(&self) {
        let tasks = std::mem::take(&mut *self.st.tasks.lock().unwrap());
        if tasks.iter().any(|t| !t.is_finished()) {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One upstream connection: parse, record, answer, until the peer closes or sends
/// something the strict parser refuses.
async fn serve_strict(mut stream: TcpStream, conn: usize, st: Arc<UpState>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut before = 0usize;
    let mut chunk = vec![0u8; 16 * 1024];
    // After a close-delimited answer the upstream writes no more, but still reads what
    // claimsmith sent (until it closes too): claimsmith never sends a second request on
    // such a connection, so whatever comes is a request it should not have forwarded.
    let mut closed = false;
    loop {
        while !buf.is_empty() {
            match strict_h1::parse_request(&buf) {
                Step::Done(req, n) => {
                    buf.drain(..n);
                    before += n;
                    let (bytes, close) = st.answer(&req, conn, closed);
                    st.touch();
                    if closed {
                        continue;
                    }
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    st.touch();
                    if close {
                        let _ = stream.shutdown().await;
                        closed = true;
                    }
                }
                Step::Incomplete => break,
                Step::Error { offset, reason } => {
                    let from = offset.saturating_sub(200);
                    let to = (offset + 80).min(buf.len());
                    let context = format!("{}<<HERE>>{}", escape(&buf[from..offset]), escape(&buf[offset..to]));
                    let reason = format!("{reason} (byte {} of upstream connection {conn})", before + offset);
                    st.push(UpEvent::Violation { conn, reason, context });
                    st.touch();
                    return;
                }
            }
        }
        let read = match closed {
            true => tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await.unwrap_or(Ok(0)),
            false => stream.read(&mut chunk).await,
        };
        match read {
            Ok(0) | Err(_) => {
                st.touch();
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                st.touch();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// claimsmith instances

struct Slot {
    proxy: claimsmith::Running,
    up: StrictUpstream,
}

/// One transport: `slots` claimsmith instances, each with its own strict upstream.
struct Transport {
    fast_path: bool,
    slots: Vec<Arc<Slot>>,
}

async fn slot(issuer: &Issuer, dir: &std::path::Path, fast_path: bool) -> Slot {
    init();
    let up = StrictUpstream::start().await;
    let metadata = dir.join("metadata.json");
    if !metadata.exists() {
        std::fs::write(&metadata, default_metadata().to_string()).unwrap();
    }
    let toml = Harness::template_with_listen(&format!("fast_path = {fast_path}\nrequest_timeout = \"5s\""))
        .replace("{issuer}", &issuer.url)
        .replace("{upstream}", &format!("http://{}", up.addr))
        .replace("{metadata}", &metadata.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let config = claimsmith::parse_config(&toml).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let proxy = claimsmith::start(config).await.unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(10)).await, "proxy did not become ready");
    Slot { proxy, up }
}

async fn transport(issuer: &Issuer, dir: &std::path::Path, fast_path: bool, n: usize) -> Transport {
    let mut slots = Vec::new();
    for _ in 0..n {
        slots.push(Arc::new(slot(issuer, dir, fast_path).await));
    }
    Transport { fast_path, slots }
}

// ---------------------------------------------------------------------------
// Cases

/// A request the client meant to send, as a recipient allowed by RFC 9112 reads the
/// bytes. `path: None`: a request that must never be forwarded (no valid reading of
/// it can be sent on); claimsmith may only answer it itself.
#[derive(Clone, Debug)]
struct Intended {
    method: String,
    path: Option<String>,
}

#[derive(Clone)]
struct Case {
    id: u32,
    family: &'static str,
    name: String,
    bytes: Vec<u8>,
    intended: Vec<Intended>,
    answer: Answer,
    /// The path of the well-formed request sent after the case (property d).
    probe_path: String,
}

/// A request's bytes, built up field by field.
#[derive(Clone)]
struct Msg {
    line: Vec<u8>,
    fields: Vec<Vec<u8>>,
    body: Vec<u8>,
    eol: &'static [u8],
}

impl Msg {
    fn new(method: &str, target: &str) -> Msg {
        Msg {
            line: format!("{method} {target} HTTP/1.1").into_bytes(),
            fields: vec![b"Host: a".to_vec()],
            body: Vec::new(),
            eol: b"\r\n",
        }
    }

    /// Replaces the request line.
    fn line(mut self, l: impl AsRef<[u8]>) -> Msg {
        self.line = l.as_ref().to_vec();
        self
    }

    fn h(mut self, field_line: impl AsRef<[u8]>) -> Msg {
        self.fields.push(field_line.as_ref().to_vec());
        self
    }

    /// The field line first, before Host.
    fn h_first(mut self, field_line: impl AsRef<[u8]>) -> Msg {
        self.fields.insert(0, field_line.as_ref().to_vec());
        self
    }

    fn no_host(mut self) -> Msg {
        self.fields.retain(|f| !f.starts_with(b"Host:"));
        self
    }

    fn body(mut self, b: impl AsRef<[u8]>) -> Msg {
        self.body = b.as_ref().to_vec();
        self
    }

    /// `Content-Length` and the body.
    fn cl_body(self, b: impl AsRef<[u8]>) -> Msg {
        let b = b.as_ref();
        self.h(format!("Content-Length: {}", b.len())).body(b)
    }

    /// `Transfer-Encoding: chunked` and `b` as one chunk.
    fn chunked(self, b: impl AsRef<[u8]>) -> Msg {
        let b = b.as_ref();
        self.h("Transfer-Encoding: chunked").body(chunk(b))
    }

    fn lf(mut self) -> Msg {
        self.eol = b"\n";
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.line.clone();
        out.extend_from_slice(self.eol);
        for f in &self.fields {
            out.extend_from_slice(f);
            out.extend_from_slice(self.eol);
        }
        out.extend_from_slice(self.eol);
        out.extend_from_slice(&self.body);
        out
    }
}

/// `b` as a chunked body of one chunk.
fn chunk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteKind {
    /// `auth` required: the request carries a valid ID token.
    Api,
    /// `auth = "off"`.
    Public,
    /// `auth = "optional"`: a token on even case ids, none on odd ones.
    Optional,
}

const ROUTES: [RouteKind; 3] = [RouteKind::Api, RouteKind::Public, RouteKind::Optional];

/// What a variant is built from.
struct Ctx<'a> {
    id: u32,
    route: RouteKind,
    method: &'static str,
    token: &'a str,
}

impl Ctx<'_> {
    fn prefix(&self) -> &'static str {
        match self.route {
            RouteKind::Api => "/api/",
            RouteKind::Public => "/public/",
            RouteKind::Optional => "/optional/",
        }
    }

    fn path(&self, leaf: &str) -> String {
        format!("{}c{}/{leaf}", self.prefix(), self.id)
    }

    fn sends_token(&self) -> bool {
        match self.route {
            RouteKind::Api => true,
            RouteKind::Public => false,
            RouteKind::Optional => self.id.is_multiple_of(2),
        }
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// A request on the case's route (with the token where the route takes one).
    fn req(&self, method: &str, leaf: &str) -> Msg {
        let m = Msg::new(method, &self.path(leaf));
        if self.sends_token() { m.h(self.auth()) } else { m }
    }

    /// The case's main request: its method, its route, leaf `x`.
    fn main(&self) -> Msg {
        self.req(self.method, "x")
    }

    fn main_intended(&self) -> Intended {
        Intended { method: self.method.to_string(), path: Some(self.path("x")) }
    }

    /// A request to /api/ without a token, as hidden in bodies.
    fn smuggle(&self) -> Vec<u8> {
        format!("GET /api/c{}/smuggled HTTP/1.1\r\nHost: a\r\n\r\n", self.id).into_bytes()
    }

    fn smuggle_intended(&self) -> Intended {
        Intended { method: "GET".into(), path: Some(format!("/api/c{}/smuggled", self.id)) }
    }

    /// A plain request sent after the case's own, on the same connection.
    fn after(&self) -> Msg {
        Msg::new("GET", &format!("/public/c{}/after", self.id))
    }

    fn after_intended(&self) -> Intended {
        Intended { method: "GET".into(), path: Some(format!("/public/c{}/after", self.id)) }
    }
}

/// A case's bytes and the requests they hold.
#[derive(Default)]
struct Built {
    bytes: Vec<u8>,
    intended: Vec<Intended>,
}

impl Built {
    fn of(m: &Msg, i: Intended) -> Built {
        Built::default().then(m, Some(i))
    }

    /// Appends `m`; `i` is what it is meant as (None: not a request of its own).
    fn then(mut self, m: &Msg, i: Option<Intended>) -> Built {
        self.bytes.extend_from_slice(&m.bytes());
        self.intended.extend(i);
        self
    }

    fn raw(mut self, b: impl AsRef<[u8]>, i: Option<Intended>) -> Built {
        self.bytes.extend_from_slice(b.as_ref());
        self.intended.extend(i);
        self
    }
}

type Gen = Box<dyn Fn(&Ctx) -> Built>;

/// A change to a request.
type Edit = fn(Msg) -> Msg;

struct Family {
    name: &'static str,
    methods: &'static [&'static str],
    /// Cases per (variant, route, method), each with the next answer framing.
    per: usize,
    variants: Vec<(String, Gen)>,
}

fn v(name: impl Into<String>, g: impl Fn(&Ctx) -> Built + 'static) -> (String, Gen) {
    (name.into(), Box::new(g))
}

/// The main request with `fields` and `body`, meant as one request.
fn one(c: &Ctx, fields: &[&str], body: &[u8]) -> Built {
    let m = fields.iter().fold(c.main(), |m, f| m.h(f)).body(body);
    Built::of(&m, c.main_intended())
}

/// Body framing: lengths, transfer codings, chunks, trailers. A request whose framing
/// a recipient must refuse is the last one meant; what follows it is a hidden request.
fn body_family() -> Family {
    let mut vs = vec![
        v("cl", |c| one(c, &["Content-Length: 5"], b"hello")),
        v("cl-0", |c| one(c, &["Content-Length: 0"], b"")),
        v("cl-body-holds-a-request", |c| {
            let s = c.smuggle();
            one(c, &[&format!("Content-Length: {}", s.len())], &s)
        }),
        v("cl-twice-equal", |c| one(c, &["Content-Length: 5", "Content-Length: 5"], b"hello")),
        v("cl-twice-differ", |c| {
            let s = c.smuggle();
            one(c, &["Content-Length: 5", &format!("Content-Length: {}", 5 + s.len())], &[b"hello", &s[..]].concat())
        }),
        v("cl-list-equal", |c| one(c, &["Content-Length: 5, 5"], b"hello")),
        v("cl-list-differ", |c| {
            let s = c.smuggle();
            one(c, &[&format!("Content-Length: 5, {}", 5 + s.len())], &[b"hello", &s[..]].concat())
        }),
        v("cl-huge", |c| one(c, &["Content-Length: 1000000000000000000"], b"hello")),
        v("cl-overflow", |c| one(c, &["Content-Length: 99999999999999999999"], b"hello")),
        v("cl-empty", |c| one(c, &["Content-Length:"], b"hello")),
        v("cl-ows", |c| one(c, &["Content-Length: \t5 "], b"hello")),
        v("cl-underscore", |c| {
            // Not Content-Length: no body, so the smuggled bytes are a request of their own.
            let s = c.smuggle();
            let m = c.main().h(format!("Content_Length: {}", s.len()));
            Built::of(&m, c.main_intended()).raw(&s, Some(c.smuggle_intended()))
        }),
        v("te-chunked", |c| one(c, &["Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n")),
        v("te-chunked-holds-a-request", |c| one(c, &["Transfer-Encoding: chunked"], &chunk(&c.smuggle()))),
        v("te-chunked-upper", |c| one(c, &["TRANSFER-ENCODING: CHUNKED"], b"5\r\nhello\r\n0\r\n\r\n")),
        v("te-identity-chunked", |c| one(c, &["Transfer-Encoding: identity, chunked"], b"5\r\nhello\r\n0\r\n\r\n")),
        v("te-gzip-chunked", |c| one(c, &["Transfer-Encoding: gzip, chunked"], b"5\r\nhello\r\n0\r\n\r\n")),
        v("te-chunked-identity", |c| one(c, &["Transfer-Encoding: chunked, identity"], &chunk(&c.smuggle()))),
        v("te-chunked-twice", |c| {
            one(c, &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n")
        }),
        v("te-xchunked", |c| one(c, &["Transfer-Encoding: xchunked"], &chunk(&c.smuggle()))),
        v("te-obs-fold", |c| one(c, &["Transfer-Encoding:", " chunked"], &chunk(&c.smuggle()))),
        v("te-space-before-colon", |c| one(c, &["Transfer-Encoding : chunked"], &chunk(&c.smuggle()))),
        v("te-underscore", |c| {
            // Not Transfer-Encoding: Content-Length frames the body.
            let b = chunk(b"hello");
            one(c, &["Transfer_Encoding: chunked", &format!("Content-Length: {}", b.len())], &b)
        }),
        v("cl-te", |c| {
            let b = [&b"0\r\n\r\n"[..], &c.smuggle()].concat();
            one(c, &[&format!("Content-Length: {}", b.len()), "Transfer-Encoding: chunked"], &b)
        }),
        v("te-cl", |c| one(c, &["Transfer-Encoding: chunked", "Content-Length: 3"], &chunk(&c.smuggle()))),
        v("te-cl-list", |c| one(c, &["Transfer-Encoding: chunked", "Content-Length: 3, 3"], &chunk(&c.smuggle()))),
        v("chunk-ext", |c| one(c, &["Transfer-Encoding: chunked"], b"5;name=value\r\nhello\r\n0\r\n\r\n")),
        v("chunk-ext-quoted", |c| {
            one(c, &["Transfer-Encoding: chunked"], b"5 ; a=\"b c\";d\r\nhello\r\n0;e=f\r\n\r\n")
        }),
        v("chunk-trailer", |c| one(c, &["Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")),
        v("chunked-then-request", |c| {
            let m = c.main().chunked(b"hello");
            Built::of(&m, c.main_intended()).raw(c.smuggle(), Some(c.smuggle_intended()))
        }),
    ];
    // Chunked bodies a recipient must refuse, whose end no reading can put elsewhere:
    // what follows is a request of its own (here, to /api/ without a token).
    for (name, body) in [
        ("chunk-size-trailing-space", &b"5 \r\nhello\r\n0\r\n\r\n"[..]),
        ("chunk-ext-ctl", b"5;\x01\r\nhello\r\n0\r\n\r\n"),
        ("chunk-ext-no-name", b"5;=x\r\nhello\r\n0\r\n\r\n"),
        ("trailer-content-length", b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
        ("trailer-transfer-encoding", b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("trailer-host", b"5\r\nhello\r\n0\r\nHost: evil.example\r\n\r\n"),
        ("trailer-obs-fold", b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"),
        ("trailer-bare-lf", b"5\r\nhello\r\n0\r\nX: a\n\r\n"),
        ("trailer-no-colon", b"5\r\nhello\r\n0\r\nX a\r\n\r\n"),
    ] {
        vs.push(v(name, move |c| {
            let m = c.main().h("Transfer-Encoding: chunked").body(body);
            Built::of(&m, c.main_intended()).raw(c.smuggle(), Some(c.smuggle_intended()))
        }));
    }
    // Chunked bodies a recipient must refuse, whose end depends on the reading: nothing
    // after them is meant (the hidden request must not be answered by anyone).
    for (name, body) in [
        ("chunk-size-not-hex", &b"g\r\nhello\r\n0\r\n\r\n"[..]),
        ("chunk-size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-overflow", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-lf", b"5\nhello\r\n0\r\n\r\n"),
        ("chunk-data-short", b"9\r\nhello\r\n0\r\n\r\n"),
        ("chunk-data-long", b"3\r\nhello\r\n0\r\n\r\n"),
        ("chunk-no-crlf", b"5\r\nhelloXX0\r\n\r\n"),
        ("chunk-ext-lf", b"5;a=b\nhello\r\n0\r\n\r\n"),
        ("chunk-last-missing-crlf", b"5\r\nhello\r\n0\r\n"),
    ] {
        vs.push(v(name, move |c| one(c, &["Transfer-Encoding: chunked"], &[body, &c.smuggle()[..]].concat())));
    }
    for (name, cl) in
        [("cl-plus", "+5"), ("cl-minus", "-5"), ("cl-hex", "0x5"), ("cl-inner-space", "5 5"), ("cl-letters", "five")]
    {
        vs.push(v(name, move |c| one(c, &[&format!("Content-Length: {cl}")], &[b"hello", &c.smuggle()[..]].concat())));
    }
    Family { name: "body", methods: &["POST", "PUT", "GET"], per: 1, variants: vs }
}

/// `Connection` naming fields, with a body that holds a request to /api/ (the shape of
/// the known smuggling payloads), with and without a plain request after it.
fn connection_family() -> Family {
    let mut vs = Vec::new();
    for value in [
        "content-length",
        "Content_Length",
        "CONTENT-LENGTH",
        "keep-alive, Content_Length",
        "close, content-length",
        "content-length, transfer-encoding",
        "transfer-encoding",
        "Transfer_Encoding",
        "host",
        "Host, keep-alive",
        "upgrade",
        "te",
        "trailer",
        "x-foo",
        "keep-alive",
        "close",
        "x-request-id",
        "authorization",
        "proxy-connection",
    ] {
        let closes = value.to_ascii_lowercase().split(',').any(|t| t.trim() == "close");
        for after in [false, true] {
            let chunked = value.to_ascii_lowercase().replace('_', "-").contains("transfer-encoding");
            vs.push(v(format!("connection: {value}{}", if after { " +after" } else { "" }), move |c| {
                let m = c.main().h(format!("Connection: {value}"));
                let m = if chunked { m.chunked(c.smuggle()) } else { m.cl_body(c.smuggle()) };
                let b = Built::of(&m, c.main_intended());
                match after {
                    true => b.then(&c.after(), (!closes).then(|| c.after_intended())),
                    false => b,
                }
            }));
        }
    }
    vs.push(v("connection: two fields, keep-alive then content-length", |c| {
        let m = c.main().h("Connection: keep-alive").h("Connection: content-length").cl_body(c.smuggle());
        Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    vs.push(v("connection: content-length, no body", |c| {
        let m = c.main().h("Connection: content-length");
        Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    Family { name: "connection", methods: &["POST"], per: 2, variants: vs }
}

/// Host missing, repeated, odd; a plain request follows on the same connection.
fn host_family() -> Family {
    let mut vs = Vec::new();
    let cases: [(&str, Edit); 8] = [
        ("host-missing", |m| m.no_host()),
        ("host-twice-equal", |m| m.h("Host: a")),
        ("host-twice-differ", |m| m.h("Host: evil.example")),
        ("host-empty", |m| m.no_host().h("Host:")),
        ("host-empty-and-set", |m| m.h("Host:")),
        ("host-with-space", |m| m.no_host().h("Host: a b")),
        ("host-upper-name", |m| m.no_host().h("HOST: a")),
        ("host-underscore-second", |m| m.h("Ho_st: evil.example")),
    ];
    for (name, f) in cases {
        vs.push(v(name, move |c| {
            let mut m = f(c.main());
            if c.method == "POST" {
                m = m.cl_body("hello");
            }
            Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
        }));
    }
    Family { name: "host", methods: &["GET", "POST"], per: 2, variants: vs }
}

/// Line-level corruptions of the head; a plain request follows.
fn lines_family() -> Family {
    let mut vs = Vec::new();
    let cases: Vec<(&str, Edit)> = vec![
        ("obs-fold", |m: Msg| m.h("X-A: 1").h(" 2")),
        ("obs-fold-tab", |m: Msg| m.h("X-A: 1").h("\t2")),
        ("obs-fold-first-line", |m: Msg| m.h_first(" X-A: 1")),
        ("bare-cr-in-value", |m: Msg| m.h("X-A: 1\r2")),
        ("bare-cr-line-end", |m: Msg| m.h("X-A: 1\rX-B: 2")),
        ("bare-lf-one-line", |m: Msg| m.h("X-A: 1\nX-B: 2")),
        ("nul-in-value", |m: Msg| m.h("X-A: 1\x002")),
        ("soh-in-value", |m: Msg| m.h("X-A: 1\x012")),
        ("del-in-value", |m: Msg| m.h("X-A: 1\x7f2")),
        ("esc-in-value", |m: Msg| m.h("X-A: 1\x1b2")),
        ("nul-in-name", |m: Msg| m.h("X-\x00A: 1")),
        ("soh-in-name", |m: Msg| m.h("X-\x01A: 1")),
        ("del-in-name", |m: Msg| m.h("X-\x7fA: 1")),
        ("space-before-colon", |m: Msg| m.h("X-A : 1")),
        ("tab-before-colon", |m: Msg| m.h("X-A\t: 1")),
        ("non-token-name", |m: Msg| m.h("X(A): 1")),
        ("empty-name", |m: Msg| m.h(": 1")),
        ("no-colon", |m: Msg| m.h("X-A 1")),
        ("htab-in-value", |m: Msg| m.h("X-A: 1\t2")),
        ("obs-text-in-value", |m: Msg| m.h(b"X-A: caf\xe9")),
        ("long-value", |m: Msg| m.h(format!("X-A: {}", "v".repeat(6000)))),
        ("many-fields", |m: Msg| (0..80).fold(m, |m, i| m.h(format!("X-F{i}: {i}")))),
    ];
    for (name, f) in cases {
        vs.push(v(name, move |c| {
            let m = f(c.main());
            Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
        }));
    }
    // Targets no reading can forward.
    for (name, bad) in [
        ("nul-in-target", "\x00"),
        ("soh-in-target", "\x01"),
        ("del-in-target", "\x7f"),
        ("space-in-target", " y"),
        ("tab-in-target", "\ty"),
        ("fragment-in-target", "#frag"),
    ] {
        vs.push(v(name, move |c| {
            let m = c.main().line(format!("{} {}{bad} HTTP/1.1", c.method, c.path("x")));
            let i = Intended { method: c.method.to_string(), path: (bad == "#frag").then(|| c.path("x")) };
            Built::of(&m, i).then(&c.after(), Some(c.after_intended()))
        }));
    }
    vs.push(v("all-bare-lf", |c| {
        Built::of(&c.main().lf(), c.main_intended()).then(&c.after().lf(), Some(c.after_intended()))
    }));
    vs.push(v("bare-lf-head-end", |c| {
        // The head ends in "\r\n\n".
        let mut b = c.main().bytes();
        b.truncate(b.len() - 2);
        b.push(b'\n');
        Built::default().raw(b, Some(c.main_intended())).then(&c.after(), Some(c.after_intended()))
    }));
    vs.push(v("leading-crlf", |c| {
        Built::default()
            .raw("\r\n", None)
            .then(&c.main(), Some(c.main_intended()))
            .then(&c.after(), Some(c.after_intended()))
    }));
    Family { name: "lines", methods: &["GET", "HEAD"], per: 1, variants: vs }
}

/// Versions and target forms.
fn version_family() -> Family {
    let mut vs = Vec::new();
    let body = |c: &Ctx, m: Msg| if c.method == "POST" { m.cl_body("hello") } else { m };
    vs.push(v("http10-no-host", move |c| {
        let m = body(c, c.main().line(format!("{} {} HTTP/1.0", c.method, c.path("x"))).no_host());
        // HTTP/1.0 without keep-alive: the connection ends after the answer.
        Built::of(&m, c.main_intended()).then(&c.after(), None)
    }));
    vs.push(v("http10-keep-alive", move |c| {
        let m = body(c, c.main().line(format!("{} {} HTTP/1.0", c.method, c.path("x"))).h("Connection: keep-alive"));
        let after = c.after().line(format!("GET /public/c{}/after HTTP/1.0", c.id)).h("Connection: keep-alive");
        Built::of(&m, c.main_intended()).then(&after, Some(c.after_intended()))
    }));
    vs.push(v("http10-te-chunked", |c| {
        let m = c.main().line(format!("{} {} HTTP/1.0", c.method, c.path("x"))).h("Connection: keep-alive");
        Built::of(&m.chunked(c.smuggle()), c.main_intended())
    }));
    vs.push(v("http10-connection-content-length", |c| {
        let m = c.main().line(format!("{} {} HTTP/1.0", c.method, c.path("x")));
        Built::of(&m.h("Connection: keep-alive, content-length").cl_body(c.smuggle()), c.main_intended())
    }));
    for (name, authority) in [("absolute-form", "http://a"), ("absolute-form-other-host", "http://evil.example:81")] {
        vs.push(v(name, move |c| {
            let m = body(c, c.main().line(format!("{} {authority}{} HTTP/1.1", c.method, c.path("x"))));
            Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
        }));
    }
    vs.push(v("absolute-form-no-host", move |c| {
        let m = body(c, c.main().line(format!("{} http://a{} HTTP/1.1", c.method, c.path("x"))).no_host());
        Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    vs.push(v("absolute-form-https", move |c| {
        let m = body(c, c.main().line(format!("{} https://a{} HTTP/1.1", c.method, c.path("x"))));
        Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    for (name, line) in [
        ("version-1.2", "{m} {p} HTTP/1.2"),
        ("version-lowercase", "{m} {p} http/1.1"),
        ("version-trailing-space", "{m} {p} HTTP/1.1 "),
        ("double-space", "{m}  {p} HTTP/1.1"),
        ("method-lowercase", "get {p} HTTP/1.1"),
    ] {
        vs.push(v(name, move |c| {
            let l = line.replace("{m}", c.method).replace("{p}", &c.path("x"));
            let method = if name == "method-lowercase" { "get" } else { c.method };
            let m = body(c, c.main().line(l));
            let i = Intended { method: method.into(), path: Some(c.path("x")) };
            Built::of(&m, i).then(&c.after(), Some(c.after_intended()))
        }));
    }
    // The framing of what follows cannot be known: nothing after these is meant.
    for (name, line) in [
        ("version-2.0", "{m} {p} HTTP/2.0"),
        ("http09", "{m} {p}"),
        ("asterisk-form", "OPTIONS * HTTP/1.1"),
        ("authority-form", "CONNECT a:443 HTTP/1.1"),
        ("method-non-token", "G(T {p} HTTP/1.1"),
    ] {
        vs.push(v(name, move |c| {
            let l = line.replace("{m}", c.method).replace("{p}", &c.path("x"));
            let m = c.main().line(l);
            Built::of(&m, Intended { method: c.method.into(), path: None })
        }));
    }
    Family { name: "version", methods: &["GET", "POST"], per: 1, variants: vs }
}

/// `Expect`; the body is sent at once, and a plain request follows.
fn expect_family() -> Family {
    let mut vs = Vec::new();
    for (name, expect, chunked) in [
        ("expect-100-cl", "Expect: 100-continue", false),
        ("expect-100-chunked", "Expect: 100-continue", true),
        ("expect-100-upper", "Expect: 100-Continue", false),
        ("expect-unknown", "Expect: something-else", false),
        ("expect-100-holds-a-request", "Expect: 100-continue", false),
    ] {
        vs.push(v(name, move |c| {
            let b = if name.ends_with("request") { c.smuggle() } else { b"hello".to_vec() };
            let m = c.main().h(expect);
            let m = if chunked { m.chunked(&b) } else { m.cl_body(&b) };
            Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
        }));
    }
    vs.push(v("expect-100-no-body", |c| {
        Built::of(&c.main().h("Expect: 100-continue"), c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    Family { name: "expect", methods: &["POST", "PUT"], per: 2, variants: vs }
}

/// Protocol upgrades; a plain request follows (the upstream never switches).
fn upgrade_family() -> Family {
    let ws = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let h2c = ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"];
    let mut vs = Vec::new();
    let sets: Vec<(&str, Vec<&'static str>)> = vec![
        ("websocket", ws.to_vec()),
        ("websocket-no-connection", ws[1..].to_vec()),
        ("connection-upgrade-only", vec!["Connection: upgrade"]),
        ("h2c", h2c.to_vec()),
        ("h2c-no-connection", vec!["Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]),
        ("h2c-and-websocket", vec!["Connection: Upgrade", "Upgrade: h2c, websocket"]),
        ("tls", vec!["Connection: Upgrade", "Upgrade: TLS/1.2"]),
        ("upgrade-underscore-name", vec!["Connection: Upgrade", "Up_grade: h2c"]),
    ];
    for (name, fields) in sets {
        vs.push(v(name, move |c| {
            let m = fields.iter().fold(c.main(), |m, f| m.h(f));
            let m = if c.method == "POST" { m.cl_body(c.smuggle()) } else { m };
            Built::of(&m, c.main_intended()).then(&c.after(), Some(c.after_intended()))
        }));
    }
    Family { name: "upgrade", methods: &["GET", "POST"], per: 2, variants: vs }
}

/// Two or three requests on one connection.
fn pipeline_family() -> Family {
    let mut vs = Vec::new();
    vs.push(v("pipeline: main, /api/ without token, public", |c| {
        let p2 = format!("/api/c{}/smuggled", c.id);
        let p3 = format!("/public/c{}/b", c.id);
        Built::of(&c.main(), c.main_intended())
            .then(&Msg::new("GET", &p2), Some(Intended { method: "GET".into(), path: Some(p2.clone()) }))
            .then(&Msg::new("GET", &p3), Some(Intended { method: "GET".into(), path: Some(p3.clone()) }))
    }));
    vs.push(v("pipeline: POST with body, main, HEAD", |c| {
        let p1 = format!("/public/c{}/a", c.id);
        let p3 = format!("/public/c{}/b", c.id);
        Built::of(&Msg::new("POST", &p1).cl_body("hello"), Intended { method: "POST".into(), path: Some(p1) })
            .then(&c.main(), Some(c.main_intended()))
            .then(&Msg::new("HEAD", &p3), Some(Intended { method: "HEAD".into(), path: Some(p3) }))
    }));
    vs.push(v("pipeline: main, DELETE optional, OPTIONS public", |c| {
        let p2 = format!("/optional/c{}/d", c.id);
        let p3 = format!("/public/c{}/o", c.id);
        Built::of(&c.main(), c.main_intended())
            .then(&Msg::new("DELETE", &p2), Some(Intended { method: "DELETE".into(), path: Some(p2) }))
            .then(&Msg::new("OPTIONS", &p3), Some(Intended { method: "OPTIONS".into(), path: Some(p3) }))
    }));
    vs.push(v("pipeline: HEAD main, then GET", |c| {
        Built::of(&c.req("HEAD", "x"), Intended { method: "HEAD".into(), path: Some(c.path("x")) })
            .then(&c.req("GET", "y"), Some(Intended { method: "GET".into(), path: Some(c.path("y")) }))
    }));
    vs.push(v("pipeline: main with close, then more", |c| {
        Built::of(&c.main().h("Connection: close"), c.main_intended()).then(&c.after(), None)
    }));
    vs.push(v("pipeline: main, second with close, third", |c| {
        Built::of(&c.main(), c.main_intended())
            .then(
                &c.req("GET", "y").h("Connection: close"),
                Some(Intended { method: "GET".into(), path: Some(c.path("y")) }),
            )
            .then(&c.after(), None)
    }));
    vs.push(v("pipeline: body holds a request, then a request", |c| {
        Built::of(&c.main().cl_body(c.smuggle()), c.main_intended()).then(&c.after(), Some(c.after_intended()))
    }));
    vs.push(v("pipeline: chunked body holds a request, then /api/ without token", |c| {
        Built::of(&c.main().chunked(c.smuggle()), c.main_intended()).raw(c.smuggle(), Some(c.smuggle_intended()))
    }));
    vs.push(v("pipeline: main, then an unfinished head", |c| {
        Built::of(&c.main(), c.main_intended())
            .raw(format!("GET /public/c{}/after HTTP/1.1\r\nHost: a\r\n", c.id), Some(c.after_intended()))
    }));
    vs.push(v("pipeline: OPTIONS, DELETE CL 0, GET", |c| {
        Built::of(&c.req("OPTIONS", "o"), Intended { method: "OPTIONS".into(), path: Some(c.path("o")) })
            .then(
                &c.req("DELETE", "d").h("Content-Length: 0"),
                Some(Intended { method: "DELETE".into(), path: Some(c.path("d")) }),
            )
            .then(&c.req("GET", "g"), Some(Intended { method: "GET".into(), path: Some(c.path("g")) }))
    }));
    Family { name: "pipeline", methods: &["GET", "POST"], per: 3, variants: vs }
}

/// Every case, with ids from 1 and the answer framings taken in turn.
fn all_cases(token: &str, filter: &str) -> Vec<Case> {
    let families = [
        body_family(),
        connection_family(),
        host_family(),
        lines_family(),
        version_family(),
        expect_family(),
        upgrade_family(),
        pipeline_family(),
    ];
    let mut out = Vec::new();
    let mut id = 0u32;
    let mut turn = 0usize;
    for f in &families {
        for (name, generate) in &f.variants {
            for route in ROUTES {
                for &method in f.methods {
                    for _ in 0..f.per {
                        id += 1;
                        let answer = ANSWERS[turn % ANSWERS.len()];
                        // Shift by family so that no variant always meets the same framing.
                        turn += 1 + usize::from(id.is_multiple_of(7));
                        let c = Ctx { id, route, method, token };
                        let built = generate(&c);
                        let name = format!("{name} | {route:?} {method} | answer {answer:?}");
                        if !name.contains(filter) {
                            continue;
                        }
                        out.push(Case {
                            id,
                            family: f.name,
                            name,
                            bytes: built.bytes,
                            intended: built.intended,
                            answer,
                            probe_path: format!("/public/c{id}/probe"),
                        });
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The client

/// How long to wait for more after every meant request has been answered.
const QUIET: Duration = Duration::from_millis(40);
/// How long without a byte before the client ends its side (claimsmith may be
/// waiting for a body that will never come).
const IDLE: Duration = Duration::from_millis(400);
/// How long after that for claimsmith to answer or close.
const HARD: Duration = Duration::from_secs(4);

/// What the client read.
struct Exchange {
    bytes: Vec<u8>,
    /// The connection ended (cleanly or by reset).
    eof: bool,
    reset: bool,
    /// Neither answered nor closed within [`HARD`] after the client ended its side.
    hung: bool,
}

fn finals(bytes: &[u8], methods: &[&str]) -> usize {
    strict_h1::parse_responses(bytes, methods, false).messages.iter().filter(|m| m.status >= 200).count()
}

/// Sends `bytes` and reads until every one of `expected` answers has come and nothing
/// more follows, or the connection ends. When claimsmith goes silent before that (it
/// may be waiting for a body that never comes), the client ends its side, but only
/// once the upstream `up` has been quiet too: hyper drops a request in progress when
/// the client half-closes, and one the upstream has already answered would then look
/// like a request the client never got an answer for.
async fn exchange(addr: SocketAddr, bytes: &[u8], methods: &[&str], expected: usize, up: &StrictUpstream) -> Exchange {
    let mut s = TcpStream::connect(addr).await.expect("connect to claimsmith");
    // claimsmith may close before reading everything; what it answered still counts.
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut half_closed = false;
    let started = Instant::now();
    loop {
        let done = finals(&got, methods) >= expected;
        let wait = if done {
            QUIET
        } else if half_closed {
            HARD
        } else {
            IDLE
        };
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(0)) => return Exchange { bytes: got, eof: true, reset: false, hung: false },
            Ok(Err(_)) => return Exchange { bytes: got, eof: true, reset: true, hung: false },
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) if done => return Exchange { bytes: got, eof: false, reset: false, hung: false },
            Err(_) if !half_closed => {
                if up.quiet_for(IDLE) || started.elapsed() >= HARD {
                    let _ = s.shutdown().await;
                    half_closed = true;
                }
            }
            Err(_) => return Exchange { bytes: got, eof: false, reset: false, hung: true },
        }
    }
}

/// A well-formed GET on a new connection; returns what came back (one answer, or
/// what there was when the connection ended or stalled).
async fn probe(addr: SocketAddr, path: &str, up: &StrictUpstream) -> Exchange {
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe.test\r\n\r\n");
    exchange(addr, req.as_bytes(), &["GET"], 1, up).await
}

// ---------------------------------------------------------------------------
// The oracle

#[derive(Clone, Debug)]
struct Failure {
    property: &'static str,
    what: String,
}

fn fail(out: &mut Vec<Failure>, property: &'static str, what: impl Into<String>) {
    out.push(Failure { property, what: what.into() });
}

struct CaseResult {
    case: Case,
    failures: Vec<Failure>,
    client: Exchange,
    probe: Exchange,
    events: Vec<UpEvent>,
}

fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Every property of one case, from what the client, the probe and the upstream saw.
fn evaluate(case: &Case, client: &Exchange, probe: &Exchange, events: &[UpEvent], secrets: &[String]) -> Vec<Failure> {
    let mut out = Vec::new();
    let methods: Vec<&str> = case.intended.iter().map(|i| i.method.as_str()).collect();
    let seen: Vec<&UpRequest> = events
        .iter()
        .filter_map(|e| match e {
            UpEvent::Request(r) => Some(r),
            UpEvent::Violation { .. } => None,
        })
        .collect();
    let by_seq: HashMap<u64, &UpRequest> = seen.iter().map(|r| (r.seq, *r)).collect();

    // (a) The upstream's strict parser refused nothing.
    for e in events {
        if let UpEvent::Violation { reason, context, .. } = e {
            fail(&mut out, "a", format!("the upstream got bytes a strict parser refuses: {reason}; at: {context}"));
        }
    }

    // (c) The client's answers: well-framed, each naming its own request.
    let stream = strict_h1::parse_responses(&client.bytes, &methods, client.eof);
    match &stream.end {
        End::Clean => {}
        End::Error { offset, reason } => {
            let from = offset.saturating_sub(200);
            fail(
                &mut out,
                "c",
                format!(
                    "the client's byte stream is not well-framed HTTP/1.1 at byte {offset}: {reason}; at: {}<<HERE>>{}",
                    escape(&client.bytes[from..*offset]),
                    escape(&client.bytes[*offset..(*offset + 80).min(client.bytes.len())])
                ),
            );
        }
        End::Incomplete if client.eof && !client.reset => {
            fail(&mut out, "c", "the connection closed in the middle of an answer")
        }
        // Bytes after the last meant answer, still coming: an answer too many.
        End::Incomplete if !client.eof && !client.hung => {
            fail(&mut out, "c", "more bytes came after every meant request was answered")
        }
        End::Incomplete => {}
    }
    if client.hung {
        fail(&mut out, "c", format!("no answer and no close within {HARD:?} after the client ended its side"));
    }
    let mut answered = Vec::new();
    for (k, r) in stream.messages.iter().filter(|m| m.status >= 200).enumerate() {
        if r.status == 101 {
            fail(&mut out, "c", format!("answer #{k} is a 101, yet the upstream never switches protocols"));
        }
        let seq = r.header_str("x-upstream-seq");
        let Some(seq) = seq else {
            if k >= case.intended.len() {
                fail(
                    &mut out,
                    "c",
                    format!(
                        "answer #{k} ({} of claimsmith's own) but the client sent {} requests",
                        r.status,
                        case.intended.len()
                    ),
                );
            }
            continue;
        };
        let path = r.header_str("x-upstream-path").unwrap_or_default();
        let seq: u64 = seq.parse().unwrap_or(0);
        answered.push((seq, path.clone()));
        match case.intended.get(k) {
            None => fail(
                &mut out,
                "c",
                format!(
                    "answer #{k} comes from the upstream (seq={seq} path={path}) but the client sent {} requests",
                    case.intended.len()
                ),
            ),
            Some(Intended { path: None, method }) => fail(
                &mut out,
                "c",
                format!(
                    "request #{k} ({method}) must never be forwarded, yet the upstream answered it (seq={seq} path={path})"
                ),
            ),
            Some(Intended { path: Some(p), .. }) if *p != path => fail(
                &mut out,
                "c",
                format!("answer #{k} is the upstream's answer to {path}, the client's request #{k} is {p}"),
            ),
            Some(_) => {}
        }
        match by_seq.get(&seq) {
            None => fail(&mut out, "c", format!("answer #{k} (seq={seq}) is not one of this case's upstream answers")),
            Some(up) => {
                if up.status != r.status || up.body_sent != r.body {
                    fail(
                        &mut out,
                        "c",
                        format!(
                            "answer #{k} (seq={seq}) is {} {:?}, the upstream sent {} {:?}",
                            r.status,
                            escape(&r.body),
                            up.status,
                            escape(&up.body_sent)
                        ),
                    );
                }
            }
        }
    }

    // (e) No internal token, echoed or otherwise, and no token at all.
    let mut secrets = secrets.to_vec();
    secrets.extend(seen.iter().filter_map(|r| r.token.as_ref()).map(|t| String::from_utf8_lossy(t).into_owned()));
    secrets.push("upstream-echo".into());
    for (what, bytes, stream) in [
        ("the client", &client.bytes, &stream),
        ("the probe", &probe.bytes, &strict_h1::parse_responses(&probe.bytes, &["GET"], probe.eof)),
    ] {
        for m in &stream.messages {
            if let Some((n, _)) = m.headers.iter().find(|(n, _)| canonical(n) == "x-internal-token") {
                fail(&mut out, "e", format!("an answer to {what} carries the internal token header ({n})"));
            }
        }
        let text = String::from_utf8_lossy(bytes);
        for s in secrets.iter().filter(|s| s.len() >= 6) {
            if text.contains(s.as_str()) {
                fail(&mut out, "e", format!("what {what} read contains a token or secret ({} chars)", s.len()));
            }
        }
    }

    // (b) Nothing unverified under /api/; the upstream saw exactly what was answered.
    let (probes, others): (Vec<&UpRequest>, Vec<&UpRequest>) = seen.iter().partition(|r| r.path == case.probe_path);
    for r in &others {
        if r.path.starts_with("/api/") && r.token.as_ref().is_none_or(|t| t.is_empty()) {
            fail(&mut out, "b", format!("the upstream got {} {} without an internal token", r.method, r.target));
        }
        for p in &r.policy {
            fail(&mut out, "f", format!("{p} ({} {})", r.method, r.target));
        }
    }
    let upstream_saw: Vec<(u64, String)> = others.iter().map(|r| (r.seq, r.path.clone())).collect();
    if upstream_saw != answered {
        fail(
            &mut out,
            "b",
            format!("the upstream saw {upstream_saw:?} but the client got the upstream's answers to {answered:?}"),
        );
    }

    // (d) The probe got its own answer, and the upstream saw it once.
    let ps = strict_h1::parse_responses(&probe.bytes, &["GET"], probe.eof);
    let answer = ps.messages.iter().find(|m| m.status >= 200);
    match answer {
        Some(r) if r.status == 200 && r.header_str("x-upstream-path").as_deref() == Some(&case.probe_path) => {}
        Some(r) => fail(
            &mut out,
            "d",
            format!(
                "the probe {} got {} with upstream path {:?}: {}",
                case.probe_path,
                r.status,
                r.header_str("x-upstream-path"),
                escape(&r.body)
            ),
        ),
        None => fail(
            &mut out,
            "d",
            format!(
                "the probe {} got no answer ({:?}, eof={}): {}",
                case.probe_path,
                ps.end,
                probe.eof,
                escape(&probe.bytes)
            ),
        ),
    }
    if probes.len() != 1 {
        fail(&mut out, "d", format!("the upstream saw the probe {} times", probes.len()));
    }
    out
}

/// Runs `case` against the proxy at `addr` in front of `up`.
async fn run_case(addr: SocketAddr, up: &StrictUpstream, case: Case, secrets: &[String]) -> CaseResult {
    if let Some((id, _)) = case_of(&case.probe_path) {
        up.st.answers.lock().unwrap().insert(id, case.answer);
    }
    let methods: Vec<&str> = case.intended.iter().map(|i| i.method.as_str()).collect();
    let client = exchange(addr, &case.bytes, &methods, case.intended.len(), up).await;
    let probe = probe(addr, &case.probe_path, up).await;
    up.settle().await;
    let events = up.take_events();
    let failures = evaluate(&case, &client, &probe, &events, secrets);
    up.close_all().await;
    CaseResult { case, failures, client, probe, events }
}

/// One failing case, every detail, tokens replaced by a placeholder.
fn report(fast_path: bool, r: &CaseResult, token: &str) -> String {
    let clean = |b: &[u8]| match token.len() > 20 {
        true => escape(b).replace(token, "<ID-TOKEN>"),
        false => escape(b),
    };
    let cap = |s: String| if s.len() > 3000 { format!("{}... ({} chars)", &s[..3000], s.len()) } else { s };
    let mut s = format!("FAIL fast_path={fast_path} case #{} [{}] {}\n", r.case.id, r.case.family, r.case.name);
    for f in &r.failures {
        s.push_str(&format!("  ({}) {}\n", f.property, f.what));
    }
    s.push_str(&format!("  client sent ({} bytes): {}\n", r.case.bytes.len(), clean(&r.case.bytes)));
    let meant: Vec<String> = r
        .case
        .intended
        .iter()
        .map(|i| format!("{} {}", i.method, i.path.as_deref().unwrap_or("<must not be forwarded>")))
        .collect();
    s.push_str(&format!("  meant as: {meant:?}\n"));
    s.push_str(&format!(
        "  client got ({} bytes, eof={}, reset={}, hung={}): {}\n",
        r.client.bytes.len(),
        r.client.eof,
        r.client.reset,
        r.client.hung,
        cap(clean(&r.client.bytes))
    ));
    s.push_str(&format!("  probe got (eof={}): {}\n", r.probe.eof, cap(clean(&r.probe.bytes))));
    for e in &r.events {
        match e {
            UpEvent::Request(u) => s.push_str(&format!(
                "  upstream conn {} seq={} {} {} token={} body={} answered {}\n",
                u.conn,
                u.seq,
                u.method,
                u.target,
                if u.token.as_ref().is_some_and(|t| !t.is_empty()) { "yes" } else { "NO" },
                u.body_len,
                u.status
            )),
            UpEvent::Violation { conn, reason, .. } => {
                s.push_str(&format!("  upstream conn {conn} VIOLATION: {reason}\n"))
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------
// The suite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_suite_over_both_transports() {
    init();
    let started = Instant::now();
    let issuer = Issuer::start().await;
    let token = issuer.token(USER_1);
    let dir = tempfile::tempdir().unwrap();
    let slots: usize = std::env::var("DIFFERENTIAL_SLOTS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let cases = all_cases(&token, &std::env::var("DIFFERENTIAL_FILTER").unwrap_or_default());
    assert!(!cases.is_empty(), "no case matches DIFFERENTIAL_FILTER");
    let mut secrets = default_secrets();
    secrets.push(token.clone());
    let secrets = Arc::new(secrets);

    let mut transports = Vec::new();
    for fast_path in [true, false] {
        transports.push(transport(&issuer, dir.path(), fast_path, slots).await);
    }
    let mut handles = Vec::new();
    for t in &transports {
        for (i, slot) in t.slots.iter().enumerate() {
            let mine: Vec<Case> = cases.iter().skip(i).step_by(t.slots.len()).cloned().collect();
            let (slot, secrets, fast_path) = (slot.clone(), secrets.clone(), t.fast_path);
            handles.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for case in mine {
                    results.push(run_case(slot.proxy.proxy_addr, &slot.up, case, &secrets).await);
                }
                (fast_path, results)
            }));
        }
    }
    let mut results: HashMap<bool, Vec<CaseResult>> = HashMap::new();
    for h in handles {
        let (fast_path, r) = h.await.expect("a slot panicked");
        results.entry(fast_path).or_default().extend(r);
    }
    let elapsed = started.elapsed();
    let count = |fp: bool| results.get(&fp).map_or(0, Vec::len);
    println!(
        "differential: {} cases over fast_path=true, {} over fast_path=false ({elapsed:.1?})",
        count(true),
        count(false)
    );

    let mut text = String::new();
    let mut summary = String::new();
    let mut failing = 0;
    for fast_path in [true, false] {
        let mut rs: Vec<&CaseResult> = results.get(&fast_path).map(|v| v.iter().collect()).unwrap_or_default();
        rs.sort_by_key(|r| r.case.id);
        let bad: Vec<&&CaseResult> = rs.iter().filter(|r| !r.failures.is_empty()).collect();
        failing += bad.len();
        let mut by_property: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut by_family: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut by_variant: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &bad {
            text.push_str(&report(fast_path, r, &token));
            let mut props: Vec<&str> = r.failures.iter().map(|f| f.property).collect();
            props.sort();
            props.dedup();
            for p in props {
                *by_property.entry(p).or_default() += 1;
            }
            *by_family.entry(r.case.family).or_default() += 1;
            *by_variant.entry(r.case.name.split(" | ").next().unwrap_or_default()).or_default() += 1;
        }
        summary.push_str(&format!(
            "fast_path={fast_path}: {} of {} cases fail; by property {by_property:?}; by family {by_family:?}\n  \
             by variant {by_variant:?}\n",
            bad.len(),
            rs.len()
        ));
    }
    if failing > 0 {
        println!("{text}");
    }
    println!("{summary}");
    assert_eq!(failing, 0, "{failing} differential cases failed (details above)\n{summary}");
}

// ---------------------------------------------------------------------------
// The known smuggling payloads, by name

/// One claimsmith with a strict upstream, for one payload.
async fn run_payload(fast_path: bool, payload: &[u8]) -> CaseResult {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = slot(&issuer, dir.path(), fast_path).await;
    let case = Case {
        id: 0,
        family: "regression",
        name: escape(payload),
        bytes: payload.to_vec(),
        intended: vec![Intended { method: "POST".into(), path: Some("/public/x".into()) }],
        answer: Answer::Length,
        probe_path: "/public/probe-1".into(),
    };
    let mut secrets = default_secrets();
    secrets.push(issuer.token(USER_1));
    run_case(s.proxy.proxy_addr, &s.up, case, &secrets).await
}

/// The upstream sees no request to /api/admin, and the client gets a 400 (or the
/// connection closes) or the upstream's answer to its POST with the body as sent;
/// every property holds. The payloads announce 40 body bytes and carry the 36 of the
/// hidden request, as reported: a claimsmith that reads the body by its length waits
/// for 4 more, and refuses when the client ends its side.
async fn assert_not_smuggled(fast_path: bool, payload: &[u8]) {
    let r = run_payload(fast_path, payload).await;
    let detail = report(fast_path, &r, "");
    for e in &r.events {
        if let UpEvent::Request(u) = e {
            assert!(!u.path.starts_with("/api/"), "a hidden request reached the upstream:\n{detail}");
        }
    }
    let stream = strict_h1::parse_responses(&r.client.bytes, &["POST"], r.client.eof);
    for m in stream.messages.iter().filter(|m| m.status >= 200) {
        match m.header_str("x-upstream-path") {
            Some(p) => {
                assert_eq!(p, "/public/x", "{detail}");
                let seq: u64 = m.header_str("x-upstream-seq").unwrap_or_default().parse().unwrap_or(0);
                let up = r.events.iter().find_map(|e| match e {
                    UpEvent::Request(u) if u.seq == seq => Some(u),
                    _ => None,
                });
                assert_eq!(up.map(|u| u.body_len), Some(36), "the body was not forwarded as sent:\n{detail}");
            }
            None => assert_eq!(m.status, 400, "{detail}"),
        }
    }
    assert!(r.failures.is_empty(), "{detail}");
}

const HIDDEN: &str = "GET /api/admin HTTP/1.1\r\nHost: a\r\n\r\n";

fn payload(connection: &str) -> Vec<u8> {
    format!("POST /public/x HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nContent-Length: 40\r\n\r\n{HIDDEN}")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_content_length_is_not_smuggled_fast_path() {
    assert_not_smuggled(true, &payload("content-length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_content_length_is_not_smuggled_hyper() {
    assert_not_smuggled(false, &payload("content-length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_keep_alive_content_length_underscore_is_not_smuggled_fast_path() {
    assert_not_smuggled(true, &payload("keep-alive, Content_Length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_keep_alive_content_length_underscore_is_not_smuggled_hyper() {
    assert_not_smuggled(false, &payload("keep-alive, Content_Length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_content_length_is_not_smuggled_fast_path() {
    assert_not_smuggled(true, &payload("close, content-length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_content_length_is_not_smuggled_hyper() {
    assert_not_smuggled(false, &payload("close, content-length")).await;
}

// ---------------------------------------------------------------------------
// The oracle is not vacuous

/// A "proxy" that copies bytes both ways and nothing else: no framing of its own, no
/// authentication, no hygiene. The oracle must fail it.
async fn byte_pipe(to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_fails_a_proxy_that_only_copies_bytes() {
    let up = StrictUpstream::start().await;
    let pipe = byte_pipe(up.addr).await;
    let token = "a-stand-in-for-an-id-token-long-enough-to-be-looked-for".to_string();
    let cases = all_cases(&token, "");
    let secrets = vec![token.clone()];
    for (name, property) in [
        // Both framings: the upstream's strict parser refuses it.
        ("cl-te | Public POST", "a"),
        // A request to /api/ without a token reaches the upstream.
        ("pipeline: main, /api/ without token, public | Public GET", "b"),
        // A body the pipe passes on as two requests when the framing differs.
        ("te-cl | Public POST", "a"),
        // The upstream's echo of the internal token header comes back.
        ("cl | Public POST", "e"),
        // The pipe hands an HTTP/1.0 request on as it is.
        ("http10-no-host | Public GET", "a"),
        // An upgrade reaches a route with auth = "off".
        ("websocket | Public GET", "f"),
    ] {
        let case = cases.iter().find(|c| c.name.starts_with(name)).unwrap_or_else(|| panic!("no case {name}")).clone();
        let r = run_case(pipe, &up, case, &secrets).await;
        assert!(
            r.failures.iter().any(|f| f.property == property),
            "the oracle did not report ({property}) for {name}:\n{}",
            report(true, &r, &token)
        );
    }
}

// ---------------------------------------------------------------------------
// The strict parser itself

mod strict_parser {
    use super::support::strict_h1::*;

    fn error_at(s: Stream<Request>) -> usize {
        match s.end {
            End::Error { offset, .. } => offset,
            e => panic!("expected an error, got {e:?} after {} requests", s.messages.len()),
        }
    }

    #[test]
    fn parses_pipelined_requests_with_each_framing() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A:  v 1 \t\r\n\r\n\
                    POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
                    PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip , chunked\r\n\r\n\
                    3;a=b;c=\"q\\\"x\"\r\nxyz\r\n002\r\n12\r\n0\r\nT: 1\r\n\r\n";
        let s = parse_requests(raw);
        assert_eq!(s.end, End::Clean);
        assert_eq!(s.consumed, raw.len());
        let m = &s.messages;
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].method.as_str(), m[0].target.as_str(), m[0].path()), ("GET", "/a?x=1", "/a"));
        assert_eq!(m[0].header("x-a"), Some(&b"v 1"[..]));
        assert_eq!((m[1].body.as_slice(), &m[1].framing), (&b"abc"[..], &Framing::Length(3)));
        assert_eq!((m[2].body.as_slice(), &m[2].framing), (&b"xyz12"[..], &Framing::Chunked));
        assert_eq!(m[2].trailers, vec![("T".to_string(), b"1".to_vec())]);
    }

    #[test]
    fn incomplete_tails() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n",
        ] {
            let s = parse_requests(raw);
            assert_eq!((s.end, s.messages.len()), (End::Incomplete, 0), "{}", escape(raw));
        }
    }

    #[test]
    fn refuses_every_leniency_at_its_offset() {
        let base = "GET / HTTP/1.1\r\nHost: h\r\n";
        let cases: &[(&str, usize)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 31),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 29),
            ("GET / HTTP/1.1\nHost: h\r\n\r\n", 14),
            ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 20),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 29),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", 29),
            ("GET / HTTP/1.1\r\nHost: h\r\nX(y): 1\r\n\r\n", 26),
            ("GET / HTTP/1.0\r\nHost: h\r\n\r\n", 6),
            ("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 4),
            ("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 4),
            ("GET / HTTP/1.1\r\n\r\n", 16),
            ("GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", 16),
            ("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 0),
            ("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 0),
        ];
        for (raw, at) in cases {
            assert_eq!(error_at(parse_requests(raw.as_bytes())), *at, "{}", escape(raw.as_bytes()));
        }
        // Framing: each is an error at the start of the field section.
        for fields in [
            "Content-Length: 1\r\nContent-Length: 1\r\n",
            "Content-Length: 1, 1\r\n",
            "Content-Length: +1\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked, identity\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let raw = format!("POST / HTTP/1.1\r\n{fields}Host: h\r\n\r\n0\r\n\r\n");
            assert_eq!(error_at(parse_requests(raw.as_bytes())), 17, "{raw:?}");
        }
        for chunks in [
            "g\r\n",
            "5 \r\nhello\r\n0\r\n\r\n",
            "5 x\r\nhello\r\n",
            "5\r\nhelloXX",
            "-5\r\n",
            "1ffffffffffffffff\r\n",
            "5;\r\n",
            "0\r\nX : 1\r\n\r\n",
        ] {
            let raw = format!("{base}Transfer-Encoding: chunked\r\n\r\n{chunks}");
            let s = parse_requests(raw.as_bytes());
            assert!(matches!(s.end, End::Error { .. }), "{raw:?}: {:?}", s.end);
        }
        // The requests before the error are kept.
        let s = parse_requests(format!("{base}\r\n{base}X\r\n\r\n").as_bytes());
        assert_eq!((s.messages.len(), s.consumed), (1, base.len() + 2));
    }

    #[test]
    fn responses_follow_the_request_methods() {
        let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                    HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
                    HTTP/1.1 204 \r\n\r\n\
                    HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n\
                    HTTP/1.1 200 OK\r\n\r\nto the end";
        let s = parse_responses(raw, &["HEAD", "DELETE", "GET", "GET"], true);
        assert_eq!(s.end, End::Clean);
        let got: Vec<(u16, &[u8])> = s.messages.iter().map(|m| (m.status, m.body.as_slice())).collect();
        assert_eq!(got, [(103, &b""[..]), (200, b""), (204, b""), (200, b"ok"), (200, b"to the end")]);
        assert_eq!(s.messages[4].framing, Framing::Close);
        // Without the end of the connection, the close-delimited body is not done.
        assert_eq!(parse_responses(raw, &["HEAD", "DELETE", "GET", "GET"], false).end, End::Incomplete);
        // A GET's answer with a Content-Length body is read as one.
        let s = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", &["GET"], false);
        assert_eq!((s.end, s.messages[0].body.as_slice()), (End::Clean, &b"hello"[..]));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
        ] {
            let s = parse_responses(bad, &["GET"], true);
            assert!(matches!(s.end, End::Error { .. }), "{}: {:?}", escape(bad), s.end);
        }
    }
}
