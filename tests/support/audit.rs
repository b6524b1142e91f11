//! The leak audit: no token, secret or metadata value may come back to a client.

use super::*;

/// The leak audit for any response a test client got: fails when its status line,
/// headers or body contain one of `secrets` (tokens, metadata values, configured
/// secrets). [`Harness`] applies it to every response; tests with their own clients
/// (TLS, h2c, the real binary) call it directly.
pub fn assert_no_leak(status: StatusCode, headers: &HeaderMap, body: &[u8], secrets: &[String]) {
    let mut text = String::from_utf8_lossy(body).into_owned();
    text.push_str(status.as_str());
    for (k, v) in headers {
        text.push_str(k.as_str());
        text.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(
            !text.contains(s.as_str()),
            "LEAK: the response to the client contains a secret value ({} chars)",
            s.len()
        );
    }
}

/// Metadata values of [`default_metadata`] that must never reach a client.
pub fn default_secrets() -> Vec<String> {
    let mut out = vec![TENANT_KEY.to_string(), USER_NOTE.to_string()];
    collect_strings(&default_metadata(), &mut out);
    out
}
