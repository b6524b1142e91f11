//! Forwarding to an `https://` upstream over a small pool of HTTP/1.1 connections
//! driven by hyper's client (TLS by the route's connector). A plain-HTTP upstream is
//! reached over the route's raw connections instead (`pool.rs`, `forward.rs`).
//!
//! Why not hyper-util's legacy `Client`: per request it locks a pool keyed by
//! (scheme, authority), races a checkout future against a connect, and spawns an
//! `on_idle` task after every response to put the connection back. A route has
//! exactly one upstream, so here the pool is a plain LIFO stack behind a short std
//! mutex, and a connection goes back when its response body ends ([`PooledBody`]),
//! with no task per request. Each connection's I/O runs in one task spawned at
//! connect time.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::time::Instant;
use tower_service::Service;

use crate::http_client::Connector;

use super::pool::{IDLE_TIMEOUT, MAX_IDLE};

/// The client's body on its way up, counted against the route's `max_body_bytes`.
pub type RequestBody = http_body_util::Limited<Incoming>;

type Sender = SendRequest<RequestBody>;

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Idle connections, oldest first: checkout takes from the back (the most recently
/// used, so hot connections stay hot), expiry sweeps from the front.
type Pool = Mutex<VecDeque<Idle>>;

/// Why forwarding failed. `source()` leads to the underlying error, so the
/// pipeline can tell the client's own body failing (400) from the upstream (502).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] Box<dyn StdError + Send + Sync>),
    #[error("the upstream exchange failed")]
    Request(#[source] hyper::Error),
}

/// One route's upstream: where it is, how to reach it, its idle connections.
pub struct Upstream {
    connector: Connector,
    /// `scheme://authority/`: what the connector dials (and the TLS server name).
    dst: Uri,
    idle: Arc<Pool>,
}

impl Upstream {
    /// `connector` should offer only http/1.1 in ALPN (`http_client::http1_connector`).
    pub fn new(
        connector: Connector,
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
    ) -> Result<Upstream, http::Error> {
        let dst = Uri::builder().scheme(scheme).authority(authority).path_and_query("/").build()?;
        Ok(Upstream { connector, dst, idle: Arc::default() })
    }

    /// Sends `req` (origin-form URI, `Host` set, HTTP/1.1) and returns the answer.
    /// A reused connection that closed before the request went out is replaced by a
    /// fresh one, once; a request that may have reached the upstream is never re-sent.
    pub async fn request(&self, req: Request<RequestBody>) -> Result<Response<PooledBody>, UpstreamError> {
        let req = match self.checkout() {
            Some(tx) => match self.send(tx, req).await {
                Ok(resp) => return Ok(resp),
                // The upstream closed the idle connection as we picked it (its keep-alive
                // timeout): the request was not written, so it is safe to try again.
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection closed; retrying on a new one");
                        req
                    }
                    None => return Err(UpstreamError::Request(e.into_error())),
                },
            },
            None => req,
        };
        // Boxed: connecting is the rare path, and its state would otherwise enlarge
        // (and be copied with) every request's future.
        Box::pin(self.send_on_new_connection(req)).await
    }

    async fn send_on_new_connection(&self, req: Request<RequestBody>) -> Result<Response<PooledBody>, UpstreamError> {
        let tx = self.connect().await?;
        self.send(tx, req).await.map_err(|e| UpstreamError::Request(e.into_error()))
    }

    /// The most recently used live, ready, idle connection. Closed and expired ones
    /// met on the way are dropped; busy ones (still finishing their last exchange,
    /// e.g. an early answer while the request body is still being sent) stay.
    fn checkout(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.tx.is_closed() || now.duration_since(c.since) >= IDLE_TIMEOUT {
                idle.remove(i);
            } else if c.tx.is_ready() {
                return idle.remove(i).map(|c| c.tx);
            }
        }
        None
    }

    /// A new connection; its I/O is driven by one spawned task until it closes.
    async fn connect(&self) -> Result<Sender, UpstreamError> {
        // The connect timeout is the connector's (`http_client`).
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(UpstreamError::Connect)?;
        let io = connector.call(self.dst.clone()).await.map_err(UpstreamError::Connect)?;
        // Default builder, as the legacy client used (it sets no HTTP/1 option).
        let (tx, conn) = http1::Builder::new().handshake(io).await.map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            // With upgrades, so that a 101 hands the socket to `hyper::upgrade::on`.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    async fn send(
        &self,
        mut tx: Sender,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, hyper::client::conn::TrySendError<Request<RequestBody>>> {
        let tunnel = req.method() == Method::CONNECT;
        let resp = tx.try_send_request(req).await?;
        // After a 101 (or an accepted CONNECT) the connection belongs to the upgrade:
        // it is no longer HTTP and must never go back to the pool.
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS || (tunnel && resp.status().is_success());
        let give_back = (!upgraded).then(|| (tx, self.idle.clone()));
        Ok(resp.map(|inner| PooledBody { inner, give_back, ended: false }))
    }
}

/// An upstream response body that returns its connection to the pool once it has
/// been read to the end. Dropped before the end, the connection is dropped too:
/// unread bytes are still on it, so hyper closes it rather than reuse it.
pub struct PooledBody {
    inner: Incoming,
    give_back: Option<(Sender, Arc<Pool>)>,
    /// Whether `inner` yielded its end (chunked bodies only know it then).
    ended: bool,
}

impl PooledBody {
    fn release(&mut self) {
        let Some((tx, pool)) = self.give_back.take() else { return };
        // The upstream may have answered `Connection: close` or hung up; a connection
        // that is closed by now is not worth a slot.
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
        // The cheap sweep: the oldest sit at the front, so expired ones go from there.
        while idle.front().is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT) || idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { tx, since: now });
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.ended = true,
            // A broken body means a broken connection: never reuse it.
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    // Given back on drop, not on the last frame: hyper's server stops polling a body
    // (and drops it) as soon as `is_end_stream()` holds, e.g. after the last bytes of a
    // Content-Length body or for an empty one, so a `None` frame may never be seen.
    fn drop(&mut self) {
        if self.ended || self.inner.is_end_stream() {
            self.release();
        }
    }
}
