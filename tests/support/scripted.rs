//! A scripted HTTP/1.1 upstream and a raw HTTP/1.1 client, for tests at the wire:
//! the upstream reads what claimsmith sends (strictly enough to flag malformed
//! framing) and answers each request with the byte-for-byte steps a test gives it;
//! the client reads answers with their framing. Tests import these by name
//! (`use support::scripted::{...}`), as their names are common.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Harness, RawResp};

/// How long any single read may wait before the test calls it a hang.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Reading HTTP/1.1 messages off a socket (both sides use these)

/// How a message's body was delimited on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304) or no framing header on a request.
    None,
    Length(usize),
    Chunked,
    /// Delimited by the end of the connection (responses only).
    Close,
}

/// One message head: the start line and the header fields as received.
#[derive(Clone, Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; `Err` on EOF, error or [`READ_TIMEOUT`].
pub async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(format!("read error: {e}")),
        Ok(Ok(0)) => Err("connection closed".into()),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// One CRLF-terminated line (without the CRLF).
pub async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<String, String> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        fill(stream, buf).await?;
    }
}

/// A head up to and including the empty line; `Ok(None)` on a clean EOF before any byte.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Head>, String> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if let Err(e) = fill(stream, buf).await {
            return if buf.is_empty() && e == "connection closed" { Ok(None) } else { Err(e) };
        }
    };
    let text = String::from_utf8(buf[..end].to_vec()).map_err(|_| "head is not UTF-8".to_string())?;
    buf.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| format!("bad header line {l:?}"))?;
        if k.is_empty() || k.ends_with(' ') || k.starts_with([' ', '\t']) {
            return Err(format!("bad header name in {l:?}"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Some(Head { start, headers }))
}

pub async fn read_exact_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Result<Vec<u8>, String> {
    while buf.len() < len {
        fill(stream, buf).await.map_err(|e| format!("{e} after {} of {len} body bytes", buf.len()))?;
    }
    Ok(buf.drain(..len).collect())
}

/// A chunked body, strictly: hex sizes, extensions ignored, CRLF after each chunk,
/// trailer fields skipped. Returns the decoded bytes and the trailer lines.
pub async fn read_chunked_body(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_s = line.split(';').next().unwrap_or_default().trim_end_matches([' ', '\t']);
        if size_s.is_empty() || !size_s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad chunk size line {line:?}"));
        }
        let size = usize::from_str_radix(size_s, 16).map_err(|_| format!("chunk size overflows: {line:?}"))?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let t = read_line(stream, buf).await?;
                if t.is_empty() {
                    return Ok((body, trailers));
                }
                trailers.push(t);
            }
        }
        let data = read_exact_body(stream, buf, size + 2).await?;
        if &data[size..] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&data[..size]);
    }
}

pub fn is_chunked(te: &str) -> bool {
    te.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

// ---------------------------------------------------------------------------
// The scripted upstream

/// What the upstream does for one request, in order.
#[derive(Clone, Debug)]
pub enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Closes the connection (no more requests are read from it).
    Close,
}

pub fn write(s: impl AsRef<[u8]>) -> Step {
    Step::Write(s.as_ref().to_vec())
}

pub fn pause_ms(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

/// `200 OK` with a Content-Length body.
pub fn ok(body: &str) -> Vec<Step> {
    vec![write(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len()))]
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Index of the upstream connection it came on (0 for the first accepted).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    pub head: Head,
    pub body: Vec<u8>,
    pub framing: Framing,
}

pub type Responder = Arc<dyn Fn(&Seen) -> Vec<Step> + Send + Sync>;

pub struct RawUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// Framing errors in what claimsmith sent (a test fails when any is recorded).
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    /// Serves on 127.0.0.1:0; each request is answered by `respond`.
    pub async fn start(respond: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let respond: Responder = Arc::new(respond);
        let (s, c, e) = (seen.clone(), connections.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let conn = c.fetch_add(1, SeqCst);
                let (s, e, respond) = (s.clone(), e.clone(), respond.clone());
                tokio::spawn(async move {
                    if let Err(err) = serve_raw(stream, conn, &s, &respond).await {
                        e.lock().unwrap().push(err);
                    }
                });
            }
        });
        RawUpstream { addr, seen, connections, errors }
    }

    /// Answers every request with `200 OK` and the body `echo <target>`.
    pub async fn echo() -> RawUpstream {
        Self::start(|r| ok(&format!("echo {}", r.target))).await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }

    pub fn assert_no_errors(&self) {
        let e = self.errors.lock().unwrap();
        assert!(e.is_empty(), "the upstream got malformed requests: {e:?}");
    }
}

/// One upstream connection: read a request, answer as scripted, repeat.
pub async fn serve_raw(
    mut stream: TcpStream,
    conn: usize,
    seen: &Mutex<Vec<Seen>>,
    respond: &Responder,
) -> Result<(), String> {
    let mut buf = Vec::new();
    loop {
        let head = match read_head(&mut stream, &mut buf).await {
            Ok(Some(h)) => h,
            // claimsmith closed (or idled past the timeout on) a pooled connection.
            Ok(None) => return Ok(()),
            Err(e) if e == "timed out" || e.starts_with("connection closed") || e.starts_with("read error") => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut parts = head.start.splitn(3, ' ');
        let (method, target, version) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        if version != "HTTP/1.1" {
            return Err(format!("request line {:?} is not HTTP/1.1", head.start));
        }
        let te = head.all("transfer-encoding");
        let cl = head.all("content-length");
        if !te.is_empty() && !cl.is_empty() {
            return Err(format!("both Transfer-Encoding and Content-Length sent: {:?}", head.headers));
        }
        if cl.len() > 1 {
            return Err(format!("several Content-Length fields: {cl:?}"));
        }
        if head.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|e| e.to_string())?;
        }
        let (body, framing) = if !te.is_empty() {
            if te.len() > 1 || !is_chunked(te[0]) || te[0].contains(',') {
                return Err(format!("unexpected Transfer-Encoding {te:?}"));
            }
            (read_chunked_body(&mut stream, &mut buf).await?.0, Framing::Chunked)
        } else if let Some(v) = cl.first() {
            let n: usize = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
            (read_exact_body(&mut stream, &mut buf, n).await?, Framing::Length(n))
        } else {
            (Vec::new(), Framing::None)
        };
        let req = Seen { conn, method, target, version, head, body, framing };
        seen.lock().unwrap().push(req.clone());
        for step in respond(&req) {
            match step {
                Step::Write(b) => {
                    // The peer may be gone already (after an invalid answer).
                    if stream.write_all(&b).await.is_err() {
                        return Ok(());
                    }
                    let _ = stream.flush().await;
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Close => return Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The raw client

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct Got {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// As the harness's type, for the leak audit.
    pub fn audit(&self, h: &Harness) {
        let r = RawResp { status: self.status, headers: self.head.headers.clone(), body: self.body.clone() };
        h.audit(&r.to_resp());
    }
}

/// One client connection to the proxy.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Wire {
    pub async fn connect(h: &Harness) -> Wire {
        Wire { stream: TcpStream::connect(h.proxy.proxy_addr).await.unwrap(), buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads one response (a 1xx included). `head_request`: it answers a HEAD, so it
    /// has no body whatever its headers say. Err when the connection closed or
    /// stalled before a whole well-framed response came.
    pub async fn read(&mut self, head_request: bool) -> Result<Got, String> {
        let head = read_head(&mut self.stream, &mut self.buf).await?.ok_or("connection closed")?;
        let mut parts = head.start.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(format!("bad status line {:?}", head.start));
        }
        let status: u16 =
            parts.next().and_then(|s| s.parse().ok()).ok_or(format!("bad status line {:?}", head.start))?;
        let te = head.all("transfer-encoding");
        let cl = head.all("content-length");
        if !te.is_empty() && !cl.is_empty() {
            return Err(format!("response with both Transfer-Encoding and Content-Length: {:?}", head.headers));
        }
        if cl.len() > 1 {
            return Err(format!("response with several Content-Length fields: {cl:?}"));
        }
        let (body, framing) = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), Framing::None)
        } else if !te.is_empty() {
            if te.len() > 1 || !is_chunked(te[0]) {
                return Err(format!("response Transfer-Encoding {te:?}"));
            }
            (read_chunked_body(&mut self.stream, &mut self.buf).await?.0, Framing::Chunked)
        } else if let Some(v) = cl.first() {
            let n: usize = v.parse().map_err(|_| format!("bad response Content-Length {v:?}"))?;
            (read_exact_body(&mut self.stream, &mut self.buf, n).await?, Framing::Length(n))
        } else {
            loop {
                match fill(&mut self.stream, &mut self.buf).await {
                    Ok(()) => {}
                    Err(e) if e == "connection closed" => break,
                    Err(e) => return Err(e),
                }
            }
            (std::mem::take(&mut self.buf), Framing::Close)
        };
        Ok(Got { status, head, body, framing })
    }

    /// The final response: informational ones before it are skipped.
    pub async fn read_final(&mut self, head_request: bool) -> Result<Got, String> {
        loop {
            let r = self.read(head_request).await?;
            if r.status >= 200 {
                return Ok(r);
            }
        }
    }

    /// Sends `req` and returns the final response, which must come.
    pub async fn roundtrip(&mut self, req: impl AsRef<[u8]>) -> Got {
        self.send(req).await;
        self.read_final(false).await.unwrap_or_else(|e| panic!("no response: {e}"))
    }

    /// Bytes that arrive within `within` (none, if all is well), and whether the
    /// connection was closed.
    pub async fn extra(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let mut out = std::mem::take(&mut self.buf);
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return (out, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
