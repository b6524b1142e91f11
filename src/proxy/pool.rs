//! Idle keep-alive connections to one route's plain-HTTP upstream, for the fast path.
//!
//! A connection is held by the request that uses it, which reads and writes it from
//! its own task, and comes back here when its response has been read to the end.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per route; beyond that the oldest are closed.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is not used again (upstreams commonly close
/// idle keep-alive connections after 60 to 120 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The same connect timeout as every outbound client (`http_client`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Oldest first: checkout takes the most recently used, expiry sweeps the front.
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(host: &str, port: u16) -> Pool {
        // An IPv6 literal keeps its brackets from the URL, as `connect` expects.
        Pool { addr: format!("{host}:{port}"), idle: Mutex::new(Vec::new()) }
    }

    /// The most recently used idle connection that is still open (`now` is now).
    pub fn checkout(&self, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
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
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
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
