//! One remote metadata API (an Auth0 tenant, a home-grown user store) as the sources
//! see it: every call waits for the client-side rate budget, has a timeout, and is
//! retried on 408 / 429 / 5xx / transport errors with backoff that honours
//! `Retry-After` (then `x-ratelimit-reset`), with jitter, a cap, a bounded number of
//! tries, and never past the caller's deadline. A 429 blocks every call to that API
//! until the time it named, so one rate-limited answer does not turn into a burst of
//! retries from other lookups.
//!
//! Errors name the call and the status only: never a URL with an id in it, a token,
//! a secret or a response body.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use super::SourceError;
use super::ratelimit::{RateLimiter, ratelimit_header, ratelimit_reset, retry_after_header};
use super::shared::{Budget, Shared};
use crate::http_client::{self, Fetched, JsonClient};

/// Tries per call (the first one included).
pub const MAX_TRIES: u32 = 3;
/// First computed backoff; doubled per try.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Cap of a computed backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Cap of a wait the server asked for (a larger value is reported, not slept).
pub const SERVER_WAIT_CAP: Duration = Duration::from_secs(300);

/// A remote API with its rate budget and the last rate-limit state it reported.
pub struct Remote {
    client: JsonClient,
    limiter: RateLimiter,
    /// Timeout of one HTTP exchange.
    call_timeout: Duration,
    /// No call before this instant (set by a 429).
    blocked_until: Mutex<Option<Instant>>,
    /// The last `x-ratelimit-remaining` seen; -1 before any.
    remaining: AtomicI64,
    /// `max_requests_per_second`, for the shared budget.
    rate: u32,
    /// With `[shared]`: the budget and 429 pause every replica shares for this API,
    /// and the API's scope naming them. The local `limiter` serves while Redis is
    /// unavailable (docs/scaling.md).
    shared: Option<(Arc<Shared>, Arc<str>)>,
}

impl Remote {
    pub fn new(client: JsonClient, max_requests_per_second: u32, call_timeout: Duration) -> Remote {
        Remote {
            client,
            limiter: RateLimiter::new(max_requests_per_second),
            call_timeout,
            blocked_until: Mutex::new(None),
            remaining: AtomicI64::new(-1),
            rate: max_requests_per_second,
            shared: None,
        }
    }

    /// Shares the rate budget and 429 pauses of the API named `scope` with every
    /// replica using `shared`.
    pub fn share(&mut self, shared: Arc<Shared>, scope: Arc<str>) {
        self.shared = Some((shared, scope));
    }

    /// Waits for a request slot: from the shared budget while Redis answers, else
    /// from this replica's own.
    async fn acquire(&self, what: &'static str, deadline: Instant) -> Result<(), SourceError> {
        let no_slot = || SourceError {
            reason: format!("{what}: no request slot in the rate budget before the timeout"),
            retry_after: Some(Duration::from_secs(1)),
        };
        if let Some((sh, scope)) = &self.shared {
            let mut counted = false;
            loop {
                let wait = match sh.take(scope, self.rate).await {
                    Budget::Granted => return Ok(()),
                    Budget::Unavailable => break,
                    Budget::Paused(d) => {
                        // Another replica was told to wait: so are we.
                        self.block_for(d);
                        return Err(SourceError {
                            reason: format!("{what}: rate limited by the API"),
                            retry_after: Some(d),
                        });
                    }
                    Budget::Wait(d) => d,
                };
                if !counted {
                    sh.stats.budget_waits.fetch_add(1, Relaxed);
                    counted = true;
                }
                if Instant::now() + wait >= deadline {
                    return Err(no_slot());
                }
                tokio::time::sleep(wait).await;
            }
        }
        // Refused at once when its turn would come after the deadline (it would only
        // time out later), with the time until that turn as the client's Retry-After.
        self.limiter.acquire(deadline).await.map_err(|super::ratelimit::NoSlot(wait)| SourceError {
            retry_after: Some(wait.max(Duration::from_secs(1))),
            ..no_slot()
        })
    }

    /// The last `x-ratelimit-remaining` the API sent, if any.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        u64::try_from(self.remaining.load(Relaxed)).ok()
    }

    /// Sends the request `build` makes (once per try) and returns the first answer
    /// that is not retryable, or an error once the tries or the time until `deadline`
    /// are used up. `what` names the call in errors and logs ("user read").
    pub async fn send(
        &self,
        what: &'static str,
        build: &(dyn Fn() -> Result<Request<Full<Bytes>>, SourceError> + Send + Sync),
        deadline: Instant,
        max_body: usize,
    ) -> Result<Fetched, SourceError> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.wait_unblocked(what, deadline).await?;
            self.acquire(what, deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SourceError::new(format!("{what}: timed out")));
            }
            let req = build()?;
            let (err, wait) = match http_client::fetch(&self.client, req, left.min(self.call_timeout), max_body).await {
                Ok(resp) => {
                    self.note_headers(&resp.headers);
                    let status = resp.status;
                    if !retryable(status) {
                        return Ok(resp);
                    }
                    let server = server_wait(&resp.headers, status);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let pause = server.unwrap_or(Duration::from_secs(1));
                        self.block_for(pause);
                        if let Some((sh, scope)) = &self.shared {
                            sh.pause(scope, pause.min(SERVER_WAIT_CAP)).await;
                        }
                    }
                    let wait = match server {
                        Some(s) => with_jitter_up(s),
                        None => backoff(tries),
                    };
                    (SourceError { reason: format!("{what}: HTTP {}", status.as_u16()), retry_after: server }, wait)
                }
                Err(e) => (SourceError::new(format!("{what}: {e}")), backoff(tries)),
            };
            if tries >= MAX_TRIES || Instant::now() + wait >= deadline {
                return Err(err);
            }
            tracing::debug!(call = what, error = %err, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits out a 429 block, or fails at once when it lasts past `deadline`.
    async fn wait_unblocked(&self, what: &'static str, deadline: Instant) -> Result<(), SourceError> {
        let until = *self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        let Some(until) = until else { return Ok(()) };
        let now = Instant::now();
        if until <= now {
            return Ok(());
        }
        if until >= deadline {
            return Err(SourceError {
                reason: format!("{what}: rate limited by the API"),
                retry_after: Some(until - now),
            });
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    fn block_for(&self, d: Duration) {
        let until = Instant::now() + d.min(SERVER_WAIT_CAP);
        let mut b = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_none_or(|cur| cur < until) {
            *b = Some(until);
        }
    }

    fn note_headers(&self, h: &HeaderMap) {
        if let Some(n) = remaining(h) {
            self.remaining.store(i64::try_from(n).unwrap_or(i64::MAX), Relaxed);
        }
    }
}

fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

/// `x-ratelimit-remaining` (or Okta's `X-Rate-Limit-Remaining`).
fn remaining(h: &HeaderMap) -> Option<u64> {
    ratelimit_header(h, "remaining")?.parse().ok()
}

/// How long the server asked us to wait: `Retry-After`; else, on a 429 or when no
/// request is left in the bucket, until `x-ratelimit-reset` (or `x-rate-limit-reset`).
/// Capped.
pub fn server_wait(h: &HeaderMap, status: StatusCode) -> Option<Duration> {
    let wait = retry_after_header(h).or_else(|| {
        let exhausted = status == StatusCode::TOO_MANY_REQUESTS || remaining(h) == Some(0);
        if exhausted { ratelimit_reset(h) } else { None }
    })?;
    Some(wait.min(SERVER_WAIT_CAP))
}

/// `d` plus 0–20 % (never sooner than the server asked).
fn with_jitter_up(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// 500 ms × 2^(try-1), ±10 %, capped.
pub fn backoff(tries: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << tries.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    exp.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_first_then_reset_only_when_exhausted() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_str(&(crate::clock::unix_now() + 7).to_string()).unwrap());
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        assert_eq!(server_wait(&h, StatusCode::SERVICE_UNAVAILABLE), None);
        let w = server_wait(&h, StatusCode::TOO_MANY_REQUESTS).unwrap();
        assert!(w >= Duration::from_secs(6) && w <= Duration::from_secs(7), "{w:?}");
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert!(server_wait(&h, StatusCode::BAD_GATEWAY).is_some());
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(server_wait(&h, StatusCode::TOO_MANY_REQUESTS), Some(Duration::from_secs(2)));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(server_wait(&h, StatusCode::TOO_MANY_REQUESTS), Some(SERVER_WAIT_CAP));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(550));
        assert!(backoff(2) >= Duration::from_millis(900));
        assert!(backoff(40) <= BACKOFF_CAP.mul_f64(1.1));
        for _ in 0..100 {
            let j = with_jitter_up(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(2) && j <= Duration::from_millis(2400));
        }
    }
}
