//! A client-side token bucket for a source's `max_requests_per_second`: rate r and
//! burst r. Callers wait for a token, so no burst of cache misses can exceed it.

use std::time::Duration;

use http::HeaderMap;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        let r = f64::from(per_second.max(1));
        RateLimiter { rate: r, burst: r, state: Mutex::new((r, Instant::now())) }
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        // The lock is held while waiting, so waiters are served in order and the
        // bucket is never overdrawn.
        let mut s = self.state.lock().await;
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
        s.1 = now;
        if s.0 < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - s.0) / self.rate);
            tokio::time::sleep(wait).await;
            let now = Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
            s.1 = now;
        }
        s.0 -= 1.0;
    }
}

/// How long the server asked us to wait: `Retry-After` (seconds), else
/// `x-ratelimit-reset` (Unix seconds).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_header(h).or_else(|| ratelimit_reset(h))
}

/// `Retry-After` in seconds (the form Auth0 sends).
pub fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    let s = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(s))
}

/// The time until `x-ratelimit-reset` (Unix seconds), at least one second.
pub fn ratelimit_reset(h: &HeaderMap) -> Option<Duration> {
    let reset = h.get("x-ratelimit-reset")?.to_str().ok()?.trim().parse::<u64>().ok()?;
    let now = crate::clock::unix_now();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_never_exceeds_rate_plus_burst() {
        let l = std::sync::Arc::new(RateLimiter::new(5));
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(5) {
            l.acquire().await;
            n += 1;
        }
        // 5 burst + 5/s for 5 s.
        assert!(n <= 5 + 5 * 5 + 1, "{n}");
        assert!(n >= 25, "{n}");
    }
}
