//! Forwarding a request hyper read over the route's own connections (`pool`), the
//! same connections the fast path uses, so that a route with a plain-HTTP upstream
//! has one pool and one retry rule whichever transport read the request.
//!
//! The request head is written by `wire::h1` (as on the fast path), the body streams
//! from hyper's `Incoming` (by its length, or chunked when it has none), and the
//! answer's body streams back through [`UpstreamBody`], which returns the connection
//! to the pool when the answer has been read exactly to its end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::pool::{Failure, Pool, UpConn};
use super::upstream::RequestBody;
use crate::error::{Body, BoxError, ProxyError};
use crate::wire::chunked::ChunkedDecoder;
use crate::wire::h1::{self as wire, Framing, ResponseHead};

/// What to send: the head's parts (the target already in origin-form, the headers
/// already prepared) and the body.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a mut HeaderMap,
    pub body: RequestBody,
    /// The client's side of a WebSocket upgrade, when one is being forwarded.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// `token.header`, canonical: an upstream's echo of it never reaches the client.
    pub token_header: &'a str,
}

/// Sends the request on a pooled or new connection and returns the answer, whose body
/// streams from that connection. The retry rule is the fast path's (`h1::forward`):
/// a reused connection that fails before the head is written is replaced once; a
/// request that may have reached the upstream is never sent twice.
pub(crate) async fn forward(pool: &Arc<Pool>, req: Outgoing<'_>) -> Result<Response<Body>, ProxyError> {
    let Outgoing { method, target, headers, mut body, upgrade, token_header } = req;
    let head_request = *method == Method::HEAD;
    // The framing is ours: the length hyper checked, or chunked for a body without one.
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| wire::content_length(v.as_bytes()));
    headers.remove(header::CONTENT_LENGTH);
    let chunked = length.is_none() && !body.is_end_stream();
    if chunked {
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    let mut out = Vec::with_capacity(1024);
    wire::write_request_head(&mut out, method, (&[target], None), headers, length);
    // The body's first piece goes out with the head, and is read before anything is
    // sent: a body that is bad from its first byte reaches no upstream at all.
    if !body.is_end_stream()
        && let Some(frame) = body.frame().await
    {
        let frame = frame.map_err(|e| client_body_error(&*e))?;
        if let Ok(data) = frame.into_data() {
            match chunked {
                true => wire::write_chunk(&mut out, &data),
                false => out.extend_from_slice(&data),
            }
        }
    }
    let mut up = match pool.checkout(Instant::now()) {
        Some(up) => up,
        None => Box::pin(pool.connect()).await.map_err(Failure::Connect)?,
    };
    match up.stream.write_all(&out).await {
        Ok(()) => {}
        Err(_) if up.reused => {
            tracing::debug!("pooled upstream connection failed before the request was written; using a new one");
            up = Box::pin(pool.connect()).await.map_err(Failure::Connect)?;
            up.stream.write_all(&out).await.map_err(Failure::Unwritten)?;
        }
        Err(e) => return Err(Failure::Unwritten(e).into()),
    }
    send_body(&mut up, &mut body, chunked, &mut out).await?;
    let resp = read_head(&mut up, head_request, upgrade.is_some()).await?;
    let mut answer = Response::new(crate::error::full(Bytes::new()));
    *answer.status_mut() = resp.status;
    *answer.headers_mut() = resp.client_headers(token_header);
    if resp.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade else { return Err(Failure::from(wire::BadResponse::Switch).into()) };
        splice(client, up);
        return Ok(answer);
    }
    let reusable = !resp.close;
    let state = match resp.framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
        Framing::Close => State::Close,
    };
    let body = UpstreamBody { up: Some(up), state, pool: pool.clone(), reusable };
    if let State::Done = body.state {
        // Nothing to read: the connection goes back now (dropping the body does it).
        drop(body);
        return Ok(answer);
    }
    *answer.body_mut() = BodyExt::boxed(body);
    Ok(answer)
}

/// Streams the client's body to the upstream, by its length or chunked.
async fn send_body(up: &mut UpConn, body: &mut RequestBody, chunked: bool, out: &mut Vec<u8>) -> Result<(), Failure> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Client(client_body_error(&*e)))?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.clear();
            wire::write_chunk(out, &data);
            up.stream.write_all(out).await.map_err(Failure::Io)?;
        } else {
            up.stream.write_all(&data).await.map_err(Failure::Io)?;
        }
    }
    if chunked {
        up.stream.write_all(wire::LAST_CHUNK).await.map_err(Failure::Io)?;
    }
    Ok(())
}

/// A body past the route's `max_body_bytes` is a 413; any other failure of the
/// client's body (bad chunked framing, a client gone) a 400.
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
        ProxyError::PayloadTooLarge
    } else {
        ProxyError::BadRequest("the request body is malformed or incomplete")
    }
}

async fn read_head(up: &mut UpConn, head_request: bool, upgrading: bool) -> Result<ResponseHead, Failure> {
    use tokio::io::AsyncReadExt;
    loop {
        if !up.buf.is_empty()
            && let Some(head) = wire::parse_response_upgrading(&mut up.buf, head_request, upgrading)?
        {
            return Ok(head);
        }
        if up.buf.capacity() - up.buf.len() < 2048 {
            up.buf.reserve(8 * 1024);
        }
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) => return Err(Failure::NoAnswer),
            Ok(_) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
}

/// Joins the client's upgraded connection and the upstream connection (WebSocket);
/// bytes the upstream sent after its `101` go to the client first.
fn splice(client: hyper::upgrade::OnUpgrade, mut up: UpConn) {
    tokio::spawn(async move {
        let Ok(client) = client.await else { return };
        let mut client = TokioIo::new(client);
        if !up.buf.is_empty() && client.write_all(&up.buf).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut up.stream).await;
    });
}

enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// An answer's body read from the upstream connection as its framing says; the
/// connection goes back to the pool once the body has been read exactly to its end.
/// Dropped before the end, the connection is closed (unread bytes are still on it).
struct UpstreamBody {
    up: Option<UpConn>,
    state: State,
    pool: Arc<Pool>,
    /// The upstream did not announce it would close the connection.
    reusable: bool,
}

impl UpstreamBody {
    /// Reads more from the upstream into its buffer; `Ok(0)` at its end.
    fn poll_fill(up: &mut UpConn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut chunk = [0u8; 16 * 1024];
        let mut rb = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut up.stream).poll_read(cx, &mut rb))?;
        up.buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(up) = this.up.as_mut() else { return Poll::Ready(None) };
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if up.buf.is_empty() && ready!(Self::poll_fill(up, cx))? == 0 {
                        this.reusable = false;
                        return Poll::Ready(Some(Err("the upstream closed the connection mid-body".into())));
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(up.buf.len());
                    let data = up.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => {
                    let mut data = BytesMut::new();
                    if !up.buf.is_empty() {
                        let used = decoder.feed(&up.buf, |d| data.extend_from_slice(d))?;
                        up.buf.advance(used);
                    }
                    if decoder.is_done() {
                        this.state = State::Done;
                    } else if data.is_empty() && ready!(Self::poll_fill(up, cx))? == 0 {
                        this.reusable = false;
                        return Poll::Ready(Some(Err("the upstream closed the connection mid-body".into())));
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.freeze()))));
                    }
                }
                State::Close => {
                    this.reusable = false;
                    if up.buf.is_empty() && ready!(Self::poll_fill(up, cx))? == 0 {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    let data = up.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Only a connection whose answer ended exactly where its framing said, with
        // nothing after it, is used again.
        if let (Some(up), State::Done, true) = (self.up.take(), &self.state, self.reusable)
            && up.buf.is_empty()
        {
            self.pool.give_back(up, Instant::now());
        }
    }
}
