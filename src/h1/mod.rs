//! The HTTP/1.1 fast path: one task per client connection reads each request head
//! itself, runs the same pipeline phases as every request (`proxy::route_request`,
//! then `proxy::admit`), and speaks HTTP/1.1 to the route's upstream over a
//! connection of the route's pool, which it reads and writes from that same task.
//!
//! Why: with hyper's server and client, each request crossed from the client
//! connection's task to the upstream connection's task and back (a channel, two
//! wake-ups, two codecs' worth of bookkeeping); that, not authentication, was most of
//! claimsmith's cost per request (docs/performance.md).
//!
//! It serves only the plainest requests: HTTP/1.1, origin-form target, no body or one
//! `Content-Length` body, to a plain-HTTP upstream. Anything else (a malformed or
//! oversized head, HTTP/1.0, `Transfer-Encoding`, `Expect`, upgrades, the HTTP/2
//! preface, a TLS upstream) is handed to hyper at a request boundary, before a byte of
//! it has been acted on, with the bytes read so far put back in front
//! ([`Rewind`]); hyper then serves the rest of that connection exactly as it would
//! have from the start. So the fast path never has to be lenient: when in doubt, it
//! hands over.

pub mod rewind;

use std::pin::Pin;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::proxy::App;
use crate::proxy::pool::{Failure, UpConn};
use crate::proxy::{self, Conn, Outcome, Route};
use crate::wire::chunked;
use crate::wire::h1 as wire;
pub use rewind::Rewind;

/// What the fast path reads requests from and writes answers to: a client's TCP
/// connection, or the TLS stream on top of one (what a TLS stream holds back is sent
/// by the `flush` after each answer; on TCP that is a no-op).
pub trait Client: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client for S {}
use wire::{Framing, Parsed, RequestHead, ResponseHead};

/// How a connection left the fast path.
pub enum Served<S> {
    /// Closed: by either side, a timeout, an error, or shutdown.
    Done,
    /// For hyper to serve from here on; the client's bytes so far come first.
    HandOver(Rewind<S>),
}

/// Serves `client` until it closes, a timeout or shutdown ends it, or a request
/// needs hyper. Every request uses the state current when it arrives.
pub async fn serve<S: Client>(
    client: S,
    conn: Conn,
    apps: &ArcSwap<App>,
    mut stop: watch::Receiver<bool>,
) -> Served<S> {
    let mut io =
        ClientIo { stream: client, rbuf: BytesMut::with_capacity(8 * 1024), out: Vec::with_capacity(4 * 1024) };
    // One timer per connection, re-armed for each head read and each upstream exchange.
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    // When the last exchange ended (clock reads are kept to two per request).
    let mut now = Instant::now();
    loop {
        // Nothing holds the state while the connection waits: a request gets the state
        // current when its head has arrived (after a reload, the new one).
        let (head_timeout, max_head) = {
            let app = apps.load();
            (app.config.listen.header_read_timeout, app.config.listen.max_header_bytes)
        };
        timer.as_mut().reset(now + head_timeout);
        let head = match read_head(&mut io.stream, &mut io.rbuf, max_head, timer.as_mut(), &mut stop).await {
            Next::Head(head) => head,
            Next::Closed => return Served::Done,
            Next::HandOver => return Served::HandOver(Rewind::new(io.rbuf.freeze(), io.stream)),
            Next::Refuse(method, why) => {
                refuse(&apps.load(), &mut io, &method, why).await;
                return Served::Done;
            }
        };
        let app = apps.load_full();
        let stopping = *stop.borrow();
        let (step, ended) = exchange(&app, &conn, head, &mut io, timer.as_mut(), stopping).await;
        now = ended;
        match step {
            Step::KeepAlive if !stopping => {}
            Step::KeepAlive | Step::Close => return Served::Done,
            Step::HandOver(head) => {
                let mut pre = BytesMut::with_capacity(head.len() + io.rbuf.len());
                pre.extend_from_slice(&head);
                pre.extend_from_slice(&io.rbuf);
                return Served::HandOver(Rewind::new(pre.freeze(), io.stream));
            }
        }
    }
}

/// The client side of a connection: its socket, the bytes read but not yet used,
/// and the buffer answers are written from (both reused from request to request).
struct ClientIo<S> {
    stream: S,
    rbuf: BytesMut,
    out: Vec<u8>,
}

/// The rest of a request body still to come from the client: first what is already
/// in `rbuf`, then from the socket. `left` counts down to 0.
struct ClientBody<'a, S> {
    client: &'a mut S,
    rbuf: &'a mut BytesMut,
    left: &'a mut u64,
}

// As `wire::Parsed`: moved once per request, not worth an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Closed,
    HandOver,
    Refuse(Method, &'static str),
}

/// Reads until `rbuf` starts with a whole request head, within the header read timeout.
/// A connection idle between requests also closes on shutdown.
async fn read_head<S: Client>(
    client: &mut S,
    rbuf: &mut BytesMut,
    max_head: usize,
    mut timer: Pin<&mut Sleep>,
    stop: &mut watch::Receiver<bool>,
) -> Next {
    loop {
        if !rbuf.is_empty() {
            match wire::parse_request(rbuf, max_head) {
                Parsed::Fast(head) => return Next::Head(head),
                Parsed::HandOver => return Next::HandOver,
                Parsed::Refuse { method, why } => return Next::Refuse(method, why),
                Parsed::Partial => {}
            }
        }
        reserve(rbuf);
        let idle = rbuf.is_empty();
        tokio::select! {
            biased;
            r = client.read_buf(rbuf) => match r {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            },
            _ = &mut timer => {
                tracing::debug!("no whole request head within the header read timeout; closing the connection");
                return Next::Closed;
            }
            _ = stopped(stop), if idle => return Next::Closed,
        }
    }
}

/// Answers a head the fast path refuses outright with 400, and closes: where its
/// body ends is in doubt, so nothing after it can be read as a request.
async fn refuse<S: Client>(app: &App, io: &mut ClientIo<S>, method: &Method, why: &'static str) {
    let ClientIo { stream: client, out, .. } = io;
    let start = Instant::now();
    let e = ProxyError::BadRequest(why);
    let status = e.status();
    let mut outcome = Outcome::default();
    outcome.failed(&e);
    let (headers, body) = e.into_parts();
    let request_id = proxy::request_id(&http::HeaderMap::new());
    outcome.request_id = Some(request_id.clone());
    out.clear();
    let ends = wire::Ends { request_id: &request_id, close: true, head_request: *method == Method::HEAD };
    wire::write_own_response(out, status, &headers, &body, ends);
    let _ = send(client, out).await;
    proxy::record(app, method, &outcome, status.as_u16(), start.elapsed());
}

/// Resolves once shutdown has been asked for (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Writes `bytes` to the client and flushes them (a TLS stream may otherwise hold
/// the end of an answer back until the next write).
async fn send(client: &mut impl Client, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8 * 1024);
    }
}

enum Step {
    KeepAlive,
    Close,
    /// The request's route needs hyper; these are its head's bytes.
    HandOver(Bytes),
}

/// One request, from its parsed head to the end of the answer; also returns when it
/// ended.
async fn exchange<S: Client>(
    app: &App,
    conn: &Conn,
    head: RequestHead,
    io: &mut ClientIo<S>,
    timer: Pin<&mut Sleep>,
    stopping: bool,
) -> (Step, Instant) {
    let start = Instant::now();
    let ClientIo { stream: client, rbuf, out } = io;
    let kept_apart = head.kept_apart_len();
    let RequestHead { method, target, mut headers, content_length, close: client_close, raw, authorization } = head;
    let arrived = proxy::Arrived {
        method: &method,
        version: http::Version::HTTP_11,
        head_len: target.len() + kept_apart,
        path: target.path(),
        authority: None,
        authorization: Some(&authorization),
        content_length,
        may_upgrade: false,
    };
    let routed = proxy::route_request(app, &arrived, &headers);
    if let Ok((route, _)) = &routed
        && route.h1.is_none()
    {
        return (Step::HandOver(raw), start);
    }
    // The upstream's own time is for the access log only: no clock reads without it.
    let timed = tracing::enabled!(target: "claimsmith::access", tracing::Level::INFO);
    let mut outcome = Outcome::default();
    let request_id = proxy::request_id(&headers);
    outcome.request_id = Some(request_id.clone());
    outcome.trace = app.telemetry.as_ref().map(|t| t.start(&headers));
    let mut body_left = content_length.unwrap_or(0);
    let mut close = client_close || stopping;
    let forwarded = async {
        let (route, path) = routed?;
        proxy::admit(app, route, arrived, &mut headers, (conn, &request_id), &mut outcome).await?;
        out.clear();
        let target = (&proxy::upstream_path(route, &path)[..], target.query());
        wire::write_request_head(out, &method, target, &headers, content_length);
        let sent = timed.then(Instant::now);
        let traced = crate::telemetry::clock(&outcome.trace);
        let deadline = start + app.config.listen.request_timeout;
        let body = ClientBody { client: &mut *client, rbuf: &mut *rbuf, left: &mut body_left };
        let r = forward(route, &method, out, body, timer, (start, deadline)).await;
        outcome.upstream_time = sent.map(|s| s.elapsed());
        crate::telemetry::mark(&mut outcome.trace, "upstream", traced);
        r.map(|(up, resp)| (route, up, resp))
    }
    .await;
    let status = match forwarded {
        Ok((route, up, resp)) => {
            let status = resp.status;
            out.clear();
            wire::write_response_head(out, &resp, &app.token_header_canonical, &request_id, close);
            match relay(up, &resp, client, out).await {
                Ok(Some(up)) => route.h1.as_ref().map_or((), |pool| pool.give_back(up, start)),
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(route = %route.name, error = %e, "the response could not be passed on whole; closing the connection");
                    outcome.error = Some("response_incomplete");
                    outcome.blame = Some(crate::error::Blame::Upstream);
                    close = true;
                }
            }
            status
        }
        Err(e) => {
            outcome.failed(&e);
            // A body not read to its end would be taken for the next request.
            close |= body_left > 0;
            let status = e.status();
            let (headers, body) = e.into_parts();
            out.clear();
            let ends = wire::Ends { request_id: &request_id, close, head_request: method == Method::HEAD };
            wire::write_own_response(out, status, &headers, &body, ends);
            if send(client, out).await.is_err() {
                close = true;
            }
            status
        }
    };
    let end = Instant::now();
    proxy::record(app, &method, &outcome, status.as_u16(), end - start);
    (if close { Step::Close } else { Step::KeepAlive }, end)
}

/// Sends the request (head in `out`, body from the client) on a pooled or new
/// connection and reads the answer's head, all before `deadline` (`at` is now).
///
/// The retry rule, the same as hyper's transport follows (`proxy::upstream`): a reused
/// connection that fails before the request was written is replaced by a new one,
/// once; a request that may have reached the upstream is never sent twice, whatever
/// its method. (A connection the upstream closed while idle is not reused at all: the
/// pool checks it just before.)
async fn forward(
    route: &Route,
    method: &Method,
    out: &mut Vec<u8>,
    mut body: ClientBody<'_, impl Client>,
    mut timer: Pin<&mut Sleep>,
    (at, deadline): (Instant, Instant),
) -> Result<(UpConn, ResponseHead), ProxyError> {
    let Some(pool) = route.h1.as_ref() else { return Err(ProxyError::Internal) };
    timer.as_mut().reset(deadline);
    // The part of the body already read goes out with the head, in one write.
    let first = usize::try_from(*body.left).unwrap_or(usize::MAX).min(body.rbuf.len());
    out.extend_from_slice(&body.rbuf[..first]);
    body.rbuf.advance(first);
    *body.left -= first as u64;
    let head_request = method == Method::HEAD;
    let work = async {
        let mut up = match pool.checkout(at) {
            Some(up) => up,
            None => Box::pin(pool.connect()).await.map_err(Failure::Connect)?,
        };
        match send_and_receive(&mut up, out, &mut body, head_request).await {
            Ok(resp) => Ok((up, resp)),
            Err(Failure::Unwritten(_)) if up.reused => {
                tracing::debug!("pooled upstream connection failed before the request was written; using a new one");
                let mut up = Box::pin(pool.connect()).await.map_err(Failure::Connect)?;
                let resp = send_and_receive(&mut up, out, &mut body, head_request).await?;
                Ok((up, resp))
            }
            Err(e) => Err(e),
        }
    };
    tokio::select! {
        biased;
        r = work => r.map_err(ProxyError::from),
        _ = timer => Err(ProxyError::UpstreamTimeout),
    }
}

async fn send_and_receive(
    up: &mut UpConn,
    out: &[u8],
    body: &mut ClientBody<'_, impl Client>,
    head_request: bool,
) -> Result<ResponseHead, Failure> {
    let ClientBody { client, rbuf, left } = body;
    let body_left: &mut u64 = left;
    up.stream.write_all(out).await.map_err(Failure::Unwritten)?;
    while *body_left > 0 {
        if rbuf.is_empty() {
            reserve(rbuf);
            match client.read_buf(rbuf).await {
                Ok(0) | Err(_) => {
                    return Err(Failure::Client(ProxyError::BadRequest("the request body is malformed or incomplete")));
                }
                Ok(_) => {}
            }
        }
        let n = usize::try_from(*body_left).unwrap_or(usize::MAX).min(rbuf.len());
        up.stream.write_all(&rbuf[..n]).await.map_err(Failure::Io)?;
        rbuf.advance(n);
        *body_left -= n as u64;
    }
    loop {
        if !up.buf.is_empty()
            && let Some(head) = wire::parse_response(&mut up.buf, head_request)?
        {
            return Ok(head);
        }
        reserve(&mut up.buf);
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) => return Err(Failure::NoAnswer),
            Ok(_) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
}

/// Why an answer could not be passed on whole (its head has gone out already, so
/// the client's connection is closed).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the upstream closed the connection mid-body")]
    Truncated,
    #[error("the upstream connection failed: {0}")]
    Upstream(std::io::Error),
    #[error("bad chunked framing from the upstream: {0}")]
    Chunked(#[from] chunked::ChunkError),
    #[error("the client went away")]
    Client,
}

/// Writes the head in `out` and the body to the client. Returns the upstream
/// connection when it can serve another request.
async fn relay(
    mut up: UpConn,
    resp: &ResponseHead,
    client: &mut impl Client,
    out: &mut Vec<u8>,
) -> Result<Option<UpConn>, RelayError> {
    match resp.framing {
        Framing::Empty => send(client, out).await.map_err(|_| RelayError::Client)?,
        Framing::Length(mut left) => {
            // Head and the body bytes already read, in one write.
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(up.buf.len());
            out.extend_from_slice(&up.buf[..n]);
            up.buf.advance(n);
            left -= n as u64;
            send(client, out).await.map_err(|_| RelayError::Client)?;
            while left > 0 {
                read_upstream(&mut up).await?;
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(up.buf.len());
                send(client, &up.buf[..n]).await.map_err(|_| RelayError::Client)?;
                up.buf.advance(n);
                left -= n as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = chunked::ChunkedDecoder::default();
            loop {
                let used = decoder.feed(&up.buf, |data| wire::write_chunk(out, data))?;
                up.buf.advance(used);
                if decoder.is_done() {
                    out.extend_from_slice(wire::LAST_CHUNK);
                }
                if !out.is_empty() {
                    send(client, out).await.map_err(|_| RelayError::Client)?;
                    out.clear();
                }
                if decoder.is_done() {
                    break;
                }
                read_upstream(&mut up).await?;
            }
        }
        Framing::Close => loop {
            wire::write_chunk(out, &up.buf);
            up.buf.clear();
            reserve(&mut up.buf);
            let n = up.stream.read_buf(&mut up.buf).await.map_err(RelayError::Upstream)?;
            if n == 0 {
                out.extend_from_slice(wire::LAST_CHUNK);
            }
            send(client, out).await.map_err(|_| RelayError::Client)?;
            out.clear();
            if n == 0 {
                return Ok(None);
            }
        },
    }
    // Bytes past the end of the answer were never asked for: do not reuse.
    Ok((!resp.close && up.buf.is_empty()).then_some(up))
}

async fn read_upstream(up: &mut UpConn) -> Result<(), RelayError> {
    reserve(&mut up.buf);
    match up.stream.read_buf(&mut up.buf).await {
        Ok(0) => Err(RelayError::Truncated),
        Ok(_) => Ok(()),
        Err(e) => Err(RelayError::Upstream(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_buffer_always_has_room_for_a_read() {
        let mut buf = BytesMut::new();
        reserve(&mut buf);
        assert!(buf.capacity() - buf.len() >= 2048);
        // Filled to within 2 KiB of its end: it grows; with room left it is not touched.
        buf.resize(buf.capacity() - 100, b'x');
        reserve(&mut buf);
        assert!(buf.capacity() - buf.len() >= 2048);
        let capacity = buf.capacity();
        buf.truncate(0);
        reserve(&mut buf);
        assert_eq!(buf.capacity(), capacity);
    }
}
