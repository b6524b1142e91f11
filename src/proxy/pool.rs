//! Idle keep-alive connections to one route's plain-HTTP upstream: the route's one
//! pool, whichever transport read the request (the fast path in `h1`, hyper's through
//! `forward.rs`). `upstream.rs` keeps hyper's senders for `https://` upstreams, under
//! the same constants.
//!
//! A connection is held by the request that uses it, which reads and writes it from
//! its own task, and comes back here when its response has been read to the end.
//!
//! With one runtime per core (`server`, docs/performance.md), each worker thread has
//! a shelf of its own: a socket is watched by the reactor of the runtime that opened
//! it, and one used from another thread would be woken through that thread's event
//! loop, a cross-thread hop per read. So, as nginx's `keepalive` is per worker
//! process, [`MAX_IDLE`] holds per worker thread.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per route (and per worker thread); beyond that the oldest
/// are closed.
pub(crate) const MAX_IDLE: usize = 256;

/// Shelves per pool: worker `i` uses shelf `i % SHELVES`.
const SHELVES: usize = 16;

thread_local! {
    /// The worker this thread is (`serve_as_worker`); 0 for every other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `i` of a runtime-per-core server: its requests
/// use their own shelf of every pool.
pub(crate) fn serve_as_worker(i: usize) {
    WORKER.set(i);
}

fn shelf() -> usize {
    WORKER.get() % SHELVES
}
/// An idle connection older than this is not used again (upstreams commonly close
/// idle keep-alive connections after 60 to 120 s).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The same connect timeout as every outbound client (`http_client`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why forwarding over the route's connections failed before an answer's head came
/// back, for both transports (`h1`, `forward.rs`); it becomes the client's answer in
/// one place (`From<Failure> for ProxyError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// Writing the request head failed: nothing of the request reached the upstream,
    /// so a reused connection may be replaced and the request sent again.
    #[error("the request could not be written: {0}")]
    Unwritten(std::io::Error),
    #[error("the upstream connection failed: {0}")]
    Io(std::io::Error),
    #[error("the upstream closed the connection before answering")]
    NoAnswer,
    #[error("{0}")]
    BadResponse(#[from] crate::wire::h1::BadResponse),
    /// The client's body failed, or passed `max_body_bytes`: the client's doing.
    #[error("the client's request body failed")]
    Client(crate::error::ProxyError),
}

impl From<Failure> for crate::error::ProxyError {
    fn from(f: Failure) -> crate::error::ProxyError {
        match f {
            Failure::Client(e) => e,
            f => {
                tracing::warn!(error = %f, "upstream request failed");
                crate::error::ProxyError::UpstreamUnreachable
            }
        }
    }
}

/// A connection to the upstream with its read buffer.
pub struct UpConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// Taken from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

struct Idle {
    conn: UpConn,
    since: Instant,
}

pub struct Pool {
    /// `host:port`, as `TcpStream::connect` resolves it.
    addr: String,
    /// Per worker thread ([`shelf`]); oldest first: checkout takes the most recently
    /// used, expiry sweeps the front.
    idle: [Mutex<Vec<Idle>>; SHELVES],
}

impl Pool {
    pub fn new(host: &str, port: u16) -> Pool {
        // An IPv6 literal keeps its brackets from the URL, as `connect` expects.
        Pool { addr: format!("{host}:{port}"), idle: std::array::from_fn(|_| Mutex::new(Vec::new())) }
    }

    /// The most recently used idle connection that is still open (`now` is now).
    pub fn checkout(&self, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle[shelf()].lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && still_open(&conn.stream) {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    pub async fn connect(&self) -> std::io::Result<UpConn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(UpConn { stream, buf: BytesMut::with_capacity(8 * 1024), reused: false })
    }

    /// Keeps `conn` for the next request. Only a connection whose last response was
    /// read exactly to its end (nothing left over) may come back. `now` may be a little
    /// early (the request's start): a connection then only looks older than it is.
    pub fn give_back(&self, conn: UpConn, now: Instant) {
        debug_assert!(conn.buf.is_empty());
        let mut idle = self.idle[shelf()].lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= MAX_IDLE || idle.first().is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT) {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: now });
    }
}

/// Whether an idle connection is still usable: nothing to read, not closed. An idle
/// connection has nothing to say: bytes waiting on it are an answer nobody asked for
/// (a buggy or hostile upstream), which would otherwise be read as the answer to the
/// next request sent on it, perhaps another client's (response queue poisoning).
///
/// The check asks the kernel (a non-blocking `MSG_PEEK`), not the reactor's cached
/// readiness: bytes that arrived since the reactor last looked count too.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_keeps_at_most_max_idle_and_hands_out_the_newest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let pool = Pool::new("127.0.0.1", port);
        let now = Instant::now();
        for _ in 0..MAX_IDLE + 3 {
            let c = pool.connect().await.unwrap();
            pool.give_back(c, now);
        }
        assert_eq!(pool.idle[0].lock().unwrap().len(), MAX_IDLE);
        let c = pool.checkout(now).expect("an idle connection");
        assert!(c.reused);
        // Expired ones are not handed out.
        assert!(pool.checkout(now + IDLE_TIMEOUT).is_none());
        // Another worker thread has a shelf of its own: it opens its own connections.
        pool.give_back(pool.connect().await.unwrap(), now);
        let other = std::thread::spawn(move || {
            serve_as_worker(1);
            pool.checkout(now).is_none()
        });
        assert!(other.join().unwrap(), "worker 1 took worker 0's connection");
        accept.abort();
    }
}
