//! Idle keep-alive connections to one route's plain-HTTP upstream, for the fast path,
//! and the rules every idle pool of a route follows (`upstream.rs` holds hyper's).
//!
//! A connection is held by the request that uses it, which reads and writes it from
//! its own task, and comes back here when its response has been read to the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per route, by its pools together; beyond that the oldest
/// are closed.
pub(crate) const MAX_IDLE: usize = 256;
/// An idle connection older than this is not used again (upstreams commonly close
/// idle keep-alive connections after 60 to 120 s).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One route's allowance of idle connections, shared by both of its pools (the fast
/// path's raw connections here, hyper's in `upstream.rs`), so that the route never
/// keeps more than [`MAX_IDLE`] idle connections in all.
#[derive(Clone, Default)]
pub(crate) struct IdleBudget(Arc<AtomicUsize>);

impl IdleBudget {
    /// Takes a slot for a connection about to be kept; `false` when none is left.
    pub(crate) fn take(&self) -> bool {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_IDLE).then_some(n + 1)).is_ok()
    }

    /// Returns the slot of a connection that left the pool (reused or closed).
    pub(crate) fn put_back(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Idle connections held by the route's pools.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}
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
    budget: IdleBudget,
}

impl Pool {
    pub fn new(host: &str, port: u16, budget: IdleBudget) -> Pool {
        // An IPv6 literal keeps its brackets from the URL, as `connect` expects.
        Pool { addr: format!("{host}:{port}"), idle: Mutex::new(Vec::new()), budget }
    }

    /// The most recently used idle connection that is still open (`now` is now).
    pub fn checkout(&self, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { mut conn, since }) = idle.pop() {
            self.budget.put_back();
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
        if idle.first().is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT) {
            idle.remove(0);
            self.budget.put_back();
        }
        if self.budget.take() {
            idle.push(Idle { conn, since: now });
        } else if !idle.is_empty() {
            // The route's budget is spent: this one takes the slot of our oldest.
            idle.remove(0);
            idle.push(Idle { conn, since: now });
        }
        // Else every slot is held by the route's other pool: `conn` is closed.
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

    #[test]
    fn the_budget_is_shared_and_bounded() {
        let a = IdleBudget::default();
        let b = a.clone();
        for i in 0..MAX_IDLE {
            assert!(if i % 2 == 0 { a.take() } else { b.take() }, "slot {i}");
        }
        assert!(!a.take() && !b.take(), "more than MAX_IDLE between the two");
        b.put_back();
        assert!(a.take());
        assert_eq!(b.held(), MAX_IDLE);
    }

    #[tokio::test]
    async fn a_pool_keeps_no_more_than_the_route_budget() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let budget = IdleBudget::default();
        // The other pool of the route holds all but two slots.
        for _ in 0..MAX_IDLE - 2 {
            assert!(budget.take());
        }
        let pool = Pool::new("127.0.0.1", port, budget.clone());
        let now = Instant::now();
        for _ in 0..4 {
            let c = pool.connect().await.unwrap();
            pool.give_back(c, now);
        }
        assert_eq!(budget.held(), MAX_IDLE);
        assert_eq!(pool.idle.lock().unwrap().len(), 2, "kept beyond the route's budget");
        // Taking them out gives their slots back.
        assert!(pool.checkout(now).is_some());
        assert!(pool.checkout(now).is_some());
        assert!(pool.checkout(now).is_none());
        assert_eq!(budget.held(), MAX_IDLE - 2);
        accept.abort();
    }
}
