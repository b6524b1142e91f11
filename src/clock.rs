//! Wall-clock time as the token rules count it (whole seconds since the Unix epoch),
//! and in milliseconds for the metadata cache's "current as of" stamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds since the epoch (0 for a clock set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Now, in milliseconds since the epoch (0 for a clock set before 1970).
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
