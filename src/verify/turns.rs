//! Signature checks take turns: one at a time on each worker thread, with a turn of
//! the event loop between two.
//!
//! Why: a token already in the token cache costs a hash and a lookup, one that is not
//! costs a signature check (~20 µs for RS256, ~40 µs for ES256). When a crowd of new
//! users arrives (a deploy, a restart that emptied the token cache, a marketing
//! e-mail), their connections are accepted one per turn of the event loop, but their
//! requests become readable together, and one poll of the event loop hands all of
//! them to the scheduler at once. Their checks then ran back to back, ahead of the
//! requests of users already cached that became readable in the same poll: 300 new
//! users held those up for 15 ms on one worker (docs/performance.md, the `burst`
//! set). Taken in turns, a check waits for everything that is ready before it, and
//! the loop polls for new I/O between two checks, so the cached users' requests keep
//! their place; when nothing else is ready a turn costs microseconds and the checks
//! run as fast as before. This is nginx's `multi_accept off` one step further in:
//! there one accept per turn, here one signature check per turn.
//!
//! The queue is FIFO and per thread (each worker thread runs a single-threaded
//! runtime, so a check always finishes on the thread it queued on). It is bounded: a
//! check that would wait behind [`MAX_WAITING`] others is refused at once (503 with
//! `Retry-After`, docs/security.md), so a flood of tokens that are not cached (bogus
//! or real) cannot make every new user wait for seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Checks that may wait on one worker thread: at ~20-70 µs each (the check and the
/// answer that follows it), about 0.3-1 s of work.
pub(crate) const MAX_WAITING: usize = 16 * 1024;

/// One thread's queue of signature checks.
pub(crate) struct Queue {
    /// One permit: the check that has the turn.
    turn: Arc<Semaphore>,
    /// Checks waiting for the turn (the one holding it not counted).
    waiting: AtomicUsize,
    max_waiting: usize,
}

thread_local! {
    static THIS_THREAD: Arc<Queue> = Queue::new(MAX_WAITING);
}

impl Queue {
    pub(crate) fn new(max_waiting: usize) -> Arc<Queue> {
        Arc::new(Queue { turn: Arc::new(Semaphore::new(1)), waiting: AtomicUsize::new(0), max_waiting })
    }

    /// The calling thread's queue.
    pub(crate) fn this_thread() -> Arc<Queue> {
        THIS_THREAD.with(Arc::clone)
    }

    /// Waits for the turn; `None` at once when [`Queue::max_waiting`] checks are already
    /// waiting.
    pub(crate) async fn take(self: Arc<Self>) -> Option<Turn> {
        // Uncontended: no wait, and nothing counted.
        if let Ok(permit) = self.turn.clone().try_acquire_owned() {
            return Some(Turn { _permit: permit });
        }
        if self.waiting.fetch_add(1, Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        // Counted out however the wait ends, the caller's future dropped included.
        let _waiting = Waiting(&self.waiting);
        // Only `close` makes acquiring fail, and this semaphore is never closed.
        self.turn.clone().acquire_owned().await.ok().map(|p| Turn { _permit: p })
    }

    /// Checks waiting for the turn now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The turn to run one signature check.
#[must_use = "the turn is held until `end` is awaited or it is dropped"]
#[derive(Debug)]
pub(crate) struct Turn {
    _permit: OwnedSemaphorePermit,
}

impl Turn {
    /// Gives the turn up once the event loop has turned: every task that became
    /// ready in the meantime, and whatever the next poll for I/O wakes, goes before
    /// the next check.
    pub(crate) async fn end(self) {
        tokio::task::yield_now().await;
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_request_that_arrives_during_a_check_goes_before_the_next_check() {
        current_thread().block_on(async {
            let order = Arc::new(Mutex::new(Vec::new()));
            let q = Queue::new(MAX_WAITING);
            // A cached user's keep-alive connection, its task waiting to read.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut conn, _) = listener.accept().await.unwrap();
            let cached = tokio::spawn({
                let order = order.clone();
                async move {
                    use tokio::io::AsyncReadExt;
                    let mut b = [0; 1];
                    conn.read_exact(&mut b).await.unwrap();
                    order.lock().unwrap().push("cached request");
                }
            });
            let first = q.clone().take().await.unwrap();
            // A second new user's check queues while the first has the turn.
            let second = tokio::spawn({
                let (q, order) = (q.clone(), order.clone());
                async move {
                    let turn = q.take().await.unwrap();
                    order.lock().unwrap().push("second check");
                    turn.end().await;
                }
            });
            tokio::task::yield_now().await;
            assert_eq!(q.waiting(), 1);
            order.lock().unwrap().push("first check");
            // The cached user's request arrives while the first check runs: only the
            // event loop's next poll for I/O can see it.
            std::io::Write::write_all(&mut client, b"x").unwrap();
            first.end().await;
            second.await.unwrap();
            cached.await.unwrap();
            // Without the turn of the loop in `end`, the second check would run first.
            assert_eq!(*order.lock().unwrap(), ["first check", "cached request", "second check"]);
            assert_eq!(q.waiting(), 0);
        });
    }

    #[test]
    fn past_the_bound_a_check_is_refused_at_once() {
        current_thread().block_on(async {
            let q = Queue::new(2);
            let held = q.clone().take().await.unwrap();
            let waiters: Vec<_> = (0..2).map(|_| tokio::spawn(q.clone().take())).collect();
            tokio::task::yield_now().await;
            assert_eq!(q.waiting(), 2);
            assert!(q.clone().take().await.is_none(), "a third waiter is refused");
            assert_eq!(q.waiting(), 2, "the refused one is not counted");
            drop(held);
            for w in waiters {
                let turn = w.await.unwrap().expect("a waiter within the bound gets its turn");
                turn.end().await;
            }
            assert_eq!(q.waiting(), 0);
            assert!(q.clone().take().await.is_some(), "free again");
        });
    }

    #[test]
    fn a_wait_given_up_is_counted_out() {
        current_thread().block_on(async {
            let q = Queue::new(1);
            let held = q.clone().take().await.unwrap();
            let waiter = tokio::spawn(q.clone().take());
            tokio::task::yield_now().await;
            assert_eq!(q.waiting(), 1);
            // The client went away: its request's future is dropped while it waits.
            waiter.abort();
            assert!(waiter.await.unwrap_err().is_cancelled());
            assert_eq!(q.waiting(), 0);
            let next = tokio::spawn(q.clone().take());
            tokio::task::yield_now().await;
            assert_eq!(q.waiting(), 1, "the place is free for another");
            drop(held);
            assert!(next.await.unwrap().is_some());
        });
    }

    #[test]
    fn each_thread_has_its_own_queue() {
        let here = Queue::this_thread();
        assert!(Arc::ptr_eq(&here, &Queue::this_thread()));
        let there = std::thread::spawn(|| Arc::as_ptr(&Queue::this_thread()) as usize).join().unwrap();
        assert_ne!(Arc::as_ptr(&here) as usize, there);
    }
}
