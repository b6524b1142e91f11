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

/// How long the server asked us to wait: `Retry-After`, else `x-ratelimit-reset`
/// (Unix seconds; Okta's `X-Rate-Limit-Reset` too).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_header(h).or_else(|| ratelimit_reset(h))
}

/// `Retry-After` in either of its forms (RFC 9110 §10.2.3): delay-seconds (what
/// Auth0 sends) or an HTTP-date, the wait until then (none when it has passed).
pub fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// The rate-limit headers by both spellings: Auth0's and GitHub's `x-ratelimit-*`,
/// Okta's `X-Rate-Limit-*` (header names are case-insensitive; `HeaderMap` holds
/// them lower-cased). `name` is the part after the prefix (`reset`, `remaining`).
pub fn ratelimit_header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = h.get(format!("x-ratelimit-{name}")).or_else(|| h.get(format!("x-rate-limit-{name}")))?;
    v.to_str().ok().map(str::trim)
}

/// The time until `x-ratelimit-reset` / `x-rate-limit-reset` (Unix seconds), at
/// least one second.
pub fn ratelimit_reset(h: &HeaderMap) -> Option<Duration> {
    let reset = ratelimit_header(h, "reset")?.parse::<u64>().ok()?;
    let now = crate::clock::unix_now();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after_of(v: &str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_str(v).unwrap());
        retry_after_header(&h)
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after_of("120"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after_of(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after_of("-1"), None);
        assert_eq!(retry_after_of("1.5"), None);
        assert_eq!(retry_after_of("soon"), None);
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        // The preferred form (IMF-fixdate), and the two obsolete ones RFC 9110 says
        // a recipient must accept.
        let fixdate = httpdate::fmt_http_date(in_a_minute);
        let wait = retry_after_of(&fixdate).unwrap();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60), "{fixdate}: {wait:?}");
        assert_eq!(retry_after_of("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "a past date: no wait");
        assert_eq!(retry_after_of("Sunday, 06-Nov-94 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after_of("Sun Nov  6 08:49:37 1994"), Some(Duration::ZERO));
        assert_eq!(retry_after_of("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn okta_spelling_of_the_reset_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "X-Rate-Limit-Reset",
            http::HeaderValue::from_str(&(crate::clock::unix_now() + 30).to_string()).unwrap(),
        );
        h.insert("X-Rate-Limit-Remaining", http::HeaderValue::from_static("0"));
        let w = ratelimit_reset(&h).unwrap();
        assert!(w >= Duration::from_secs(29) && w <= Duration::from_secs(30), "{w:?}");
        assert_eq!(ratelimit_header(&h, "remaining"), Some("0"));
        // A reset already past still waits a second.
        h.insert("x-rate-limit-reset", http::HeaderValue::from_static("1000"));
        assert_eq!(ratelimit_reset(&h), Some(Duration::from_secs(1)));
    }

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
