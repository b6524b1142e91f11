//! A client-side rate budget for a source's `max_requests_per_second`: rate r and
//! burst r, as a token bucket, kept as the time the next request may go (the generic
//! cell rate algorithm, GCRA). No burst of cache misses can exceed it.
//!
//! Each caller reserves its own send time at once, so one that could not be served
//! before its deadline learns it at once and is refused then, with the time its turn
//! would have come (load shedding): 10,000 misses at 5 a second do not all wait out
//! their timeout and fail in the same moment, seconds later, ahead of every other
//! request on the thread (docs/performance.md, the `burst` set).

use std::sync::Mutex;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

pub struct RateLimiter {
    /// Time between two sends at the rate.
    interval: Duration,
    /// How far ahead of the rate a burst may run: (burst - 1) intervals.
    tolerance: Duration,
    /// The theoretical arrival time: when the next send would be due if everything
    /// reserved so far went at exactly the rate.
    due: Mutex<Instant>,
}

/// No slot before the caller's deadline; its turn would have come in this long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoSlot(pub Duration);

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        let r = per_second.max(1);
        let interval = Duration::from_secs(1) / r;
        RateLimiter { interval, tolerance: interval * (r - 1), due: Mutex::new(Instant::now()) }
    }

    /// Waits for this caller's slot, reserved now; or, when that slot is after
    /// `deadline`, reserves nothing and says at once how long it would have waited.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), NoSlot> {
        let at = {
            let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let next = (*due).max(now);
            let at = next.checked_sub(self.tolerance).map_or(now, |t| t.max(now));
            if at > deadline {
                return Err(NoSlot(at - now));
            }
            *due = next + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
        Ok(())
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
        let far = start + Duration::from_secs(3600);
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(5) {
            l.acquire(far).await.unwrap();
            n += 1;
        }
        // 5 burst + 5/s for 5 s.
        assert!(n <= 5 + 5 * 5 + 1, "{n}");
        assert!(n >= 25, "{n}");
    }

    /// Many callers at once: the burst goes at once, the rest at the rate, each at its
    /// reserved time; those whose turn would come after their deadline are refused
    /// at once, with how long they would have waited, and take no slot from others.
    #[tokio::test(start_paused = true)]
    async fn callers_past_their_deadline_are_refused_at_once() {
        let l = std::sync::Arc::new(RateLimiter::new(5));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(2);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let r = l.acquire(deadline).await;
                (r, start.elapsed())
            }));
        }
        let (mut sent, mut refused) = (Vec::new(), Vec::new());
        for t in tasks {
            match t.await.unwrap() {
                (Ok(()), at) => sent.push(at),
                (Err(NoSlot(wait)), at) => {
                    assert_eq!(at, Duration::ZERO, "a refusal came after waiting");
                    assert!(wait > Duration::from_secs(2), "refused though its turn was in {wait:?}");
                    refused.push(wait);
                }
            }
        }
        // 5 at once, then one each 200 ms up to the deadline: 5 + 10.
        assert_eq!(sent.len(), 15, "{sent:?}");
        assert_eq!(sent.iter().filter(|&&a| a == Duration::ZERO).count(), 5);
        assert!(sent.iter().all(|&a| a <= Duration::from_secs(2)));
        assert_eq!(refused.len(), 85);
        // The refused took nothing: the next caller with time gets the next slot.
        let next = l.acquire(start + Duration::from_secs(60)).await;
        assert_eq!(next, Ok(()));
        assert!(start.elapsed() <= Duration::from_millis(2200), "{:?}", start.elapsed());
    }
}
