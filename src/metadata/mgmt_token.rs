//! The access token a remote source reads its API with (the `auth0`, `keycloak` and
//! `okta` sources): obtained by the OAuth 2.0 client credentials grant (RFC 6749
//! §4.4), held until shortly before its `expires_in`, and refreshed by one caller while
//! the others wait for its result. A 401 from the API drops the token it refused (by
//! generation, so a token a concurrent caller already replaced is kept) and the read is
//! retried once with a new one. With `[shared]`, the token is shared with every replica
//! through Redis (sealed, its key hashed; docs/scaling.md).
//!
//! Each source supplies only how to ask for a token ([`MgmtTokens::get`] takes the
//! request as a closure); the caching, serialising and sharing live here once.
//!
//! Nothing here logs or returns a token, a secret or a response body.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::Value;
use tokio::time::Instant;

use super::SourceError;
use super::remote::{Remote, SERVER_WAIT_CAP};
use super::shared::Shared;
use crate::http_client::{self, Fetched};

/// After a failed token request, callers fail fast this long (or as the server said).
const TOKEN_FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// A token is refreshed this long before it expires at most (a tenth of its life when
/// that is shorter).
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Largest token answer read.
const MAX_TOKEN_BODY: usize = 1024 * 1024;
/// The Redis blob tag of a shared token.
const BLOB_TAG: &str = "mgmt-token";

/// A token as a request header, and which one it was (for [`MgmtTokens::refused`]).
#[derive(Clone)]
pub(crate) struct MgmtToken {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct TokenSlot {
    current: Option<MgmtToken>,
    generation: u64,
    /// The last token request failed: until this instant callers fail fast.
    failed: Option<(Instant, SourceError)>,
}

/// What a token request answered: the header to send and the token's lifetime.
pub(crate) type Issued = (HeaderValue, Duration);

/// One source's token: the cached one and the lock that serialises refreshes.
pub(crate) struct MgmtTokens {
    slot: tokio::sync::Mutex<TokenSlot>,
    /// With `[shared]`: Redis, and what the token is for (the API, the application,
    /// what it was asked for), hashed into its key and never written in clear.
    shared: Option<(Arc<Shared>, String)>,
    /// Names the source in logs (`okta`).
    kind: &'static str,
    /// Names the API in errors (`Management API`).
    api: &'static str,
}

impl MgmtTokens {
    pub(crate) fn new(kind: &'static str, api: &'static str, shared: Option<(Arc<Shared>, String)>) -> MgmtTokens {
        MgmtTokens { slot: tokio::sync::Mutex::new(TokenSlot::default()), shared, kind, api }
    }

    /// GET `url` with the token; a 401 drops the token and retries once with a new
    /// one. `request` asks for a new token when one is needed.
    pub(crate) async fn authorized_get<F, Fut>(
        &self,
        remote: &Remote,
        what: &'static str,
        url: &str,
        deadline: Instant,
        max_body: usize,
        request: F,
    ) -> Result<Fetched, SourceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Issued, SourceError>>,
    {
        let mut refreshed = false;
        loop {
            let token = self.get(deadline, &request).await?;
            let build = || {
                let mut req =
                    http_client::get_request(url).map_err(|_| SourceError::new(format!("{what}: invalid URL")))?;
                req.headers_mut().insert(header::AUTHORIZATION, token.header.clone());
                Ok(req)
            };
            let resp = remote.send(what, &build, deadline, max_body).await?;
            if resp.status != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if refreshed {
                return Err(SourceError::new(format!("{what}: the {} refused a new token (HTTP 401)", self.api)));
            }
            tracing::debug!(call = what, source = self.kind, "access token refused; refreshing it once");
            self.refused(token.generation, deadline).await;
            refreshed = true;
        }
    }

    /// The cached token, or a new one: callers that find it expired wait on the lock
    /// while the first one fetches, then use its result.
    pub(crate) async fn get<F, Fut>(&self, deadline: Instant, request: F) -> Result<MgmtToken, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, SourceError>>,
    {
        let mut slot = tokio::time::timeout_at(deadline, self.slot.lock()).await.map_err(|_| SourceError {
            reason: "access token: timed out waiting for the token request".into(),
            retry_after: Some(Duration::from_secs(1)),
        })?;
        let now = Instant::now();
        if let Some(t) = &slot.current
            && now < t.refresh_at
        {
            return Ok(t.clone());
        }
        if let Some((until, e)) = &slot.failed
            && now < *until
        {
            if let Some(t) = &slot.current
                && now < t.expires_at
            {
                return Ok(t.clone());
            }
            return Err(SourceError { reason: e.reason.clone(), retry_after: Some(*until - now) });
        }
        if let Some((sh, scope)) = &self.shared
            && let Some((header, life)) = shared_token(sh, scope).await
        {
            slot.generation += 1;
            let t = MgmtToken {
                header,
                refresh_at: now + life.saturating_sub(TOKEN_MARGIN.min(life / 10)),
                expires_at: now + life,
                generation: slot.generation,
            };
            slot.current = Some(t.clone());
            slot.failed = None;
            return Ok(t);
        }
        let sent = Instant::now();
        match request().await {
            Ok((header, life)) => {
                slot.generation += 1;
                let margin = (life / 10).min(TOKEN_MARGIN);
                if let Some((sh, scope)) = &self.shared
                    && let Ok(text) = header.to_str()
                {
                    // Other replicas use it until shortly before it expires.
                    let expires_ms = crate::clock::unix_now_ms().saturating_add(life.as_millis() as u64);
                    let mut plain = expires_ms.to_be_bytes().to_vec();
                    plain.extend_from_slice(text.as_bytes());
                    sh.put_blob(BLOB_TAG, scope, &plain, life.saturating_sub(margin)).await;
                }
                let t = MgmtToken {
                    header,
                    refresh_at: sent + life - margin,
                    expires_at: sent + life,
                    generation: slot.generation,
                };
                slot.current = Some(t.clone());
                slot.failed = None;
                Ok(t)
            }
            Err(e) => {
                let pause = e.retry_after.unwrap_or(TOKEN_FAILURE_PAUSE).min(SERVER_WAIT_CAP);
                slot.failed = Some((Instant::now() + pause, e.clone()));
                if let Some(t) = &slot.current
                    && Instant::now() < t.expires_at
                {
                    return Ok(t.clone());
                }
                Err(e)
            }
        }
    }

    /// The API refused token `generation`: forget it, unless a newer one replaced it.
    pub(crate) async fn refused(&self, generation: u64, deadline: Instant) {
        if let Ok(mut slot) = tokio::time::timeout_at(deadline, self.slot.lock()).await
            && slot.current.as_ref().is_some_and(|t| t.generation == generation)
        {
            slot.current = None;
            slot.failed = None;
            if let Some((sh, scope)) = &self.shared {
                sh.delete_blob(BLOB_TAG, scope).await;
            }
        }
    }
}

/// A token another replica obtained, with the time it has left, unless it is about
/// to expire.
async fn shared_token(sh: &Shared, scope: &str) -> Option<Issued> {
    let plain = sh.get_blob(BLOB_TAG, scope).await?;
    let expires_ms = u64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
    let left = Duration::from_millis(expires_ms.saturating_sub(crate::clock::unix_now_ms()));
    if left <= TOKEN_MARGIN.min(left / 10).max(Duration::from_secs(5)) {
        return None;
    }
    let mut header = HeaderValue::from_bytes(plain.get(8..)?).ok()?;
    header.set_sensitive(true);
    Some((header, left))
}

/// How a token request is sent: its body and content type, and what to tell the
/// operator when the server refuses the credentials.
pub(crate) struct TokenRequest<'a> {
    pub(crate) url: &'a str,
    pub(crate) content_type: &'static str,
    /// Makes the body, once per try: a body with a client assertion gets a new one
    /// (a new `jti`) when a try is retried, since the server may have seen the last.
    pub(crate) body: &'a (dyn Fn() -> Result<Bytes, SourceError> + Send + Sync),
    /// Appended to "refused (HTTP 401)": which settings to check.
    pub(crate) refused_hint: &'static str,
}

/// POSTs a client credentials request and reads the answer (RFC 6749 §5.1): the
/// bearer token as a header value and its lifetime (`expires_in`, 300 s when absent).
pub(crate) async fn request_token(
    remote: &Remote,
    req: TokenRequest<'_>,
    deadline: Instant,
) -> Result<Issued, SourceError> {
    const WHAT: &str = "management token request";
    let build = || {
        Request::builder()
            .method(Method::POST)
            .uri(req.url)
            .header(header::CONTENT_TYPE, req.content_type)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("claimsmith/", env!("CARGO_PKG_VERSION")))
            .body(Full::new((req.body)()?))
            .map_err(|_| SourceError::new(format!("{WHAT}: invalid URL")))
    };
    let resp = remote.send(WHAT, &build, deadline, MAX_TOKEN_BODY).await?;
    match resp.status {
        StatusCode::OK => {}
        s @ (StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(SourceError::new(format!("{WHAT}: refused (HTTP {}); {}", s.as_u16(), req.refused_hint)));
        }
        s => return Err(SourceError::new(format!("{WHAT}: HTTP {}", s.as_u16()))),
    }
    parse_token_answer(&resp.body).map_err(|reason| SourceError::new(format!("{WHAT}: {reason}")))
}

/// An RFC 6749 §5.1 token answer: `Bearer <access_token>` (sensitive) and its life,
/// 1 s to 30 days. The error never holds the body.
fn parse_token_answer(body: &[u8]) -> Result<Issued, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "unexpected answer")?;
    let token = v.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or("unexpected answer")?;
    if v.get("token_type").and_then(Value::as_str).is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err("the token is not a bearer token");
    }
    let life = Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(300).clamp(1, 30 * 86_400));
    let mut header =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "the token is not a valid header value")?;
    header.set_sensitive(true);
    Ok((header, life))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    fn issued(n: u32) -> Issued {
        (HeaderValue::from_str(&format!("Bearer t{n}")).unwrap(), Duration::from_secs(3600))
    }

    #[test]
    fn token_answers_are_read_strictly() {
        let (h, life) = parse_token_answer(br#"{"access_token":"abc","token_type":"Bearer","expires_in":60}"#).unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(h.is_sensitive());
        assert_eq!(life, Duration::from_secs(60));
        assert_eq!(parse_token_answer(br#"{"access_token":"abc"}"#).unwrap().1, Duration::from_secs(300));
        assert!(parse_token_answer(br#"{"access_token":"abc","token_type":"DPoP"}"#).is_err());
        assert!(parse_token_answer(br#"{"access_token":""}"#).is_err());
        assert!(parse_token_answer(br#"{"access_token":"a\nb"}"#).is_err());
        assert!(parse_token_answer(b"<html>").is_err());
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request_and_a_refusal_drops_only_that_token() {
        let tokens = Arc::new(MgmtTokens::new("test", "API", None));
        let asked = Arc::new(AtomicU32::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (tokens, asked) = (tokens.clone(), asked.clone());
            tasks.push(tokio::spawn(async move {
                tokens
                    .get(deadline, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(issued(asked.fetch_add(1, SeqCst)))
                    })
                    .await
                    .map(|t| t.generation)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        assert_eq!(asked.load(SeqCst), 1);
        // A refusal of an older generation keeps the current token.
        tokens.refused(0, deadline).await;
        let t = tokens.get(deadline, || async { Ok(issued(99)) }).await.unwrap();
        assert_eq!(t.header.to_str().unwrap(), "Bearer t0");
        tokens.refused(t.generation, deadline).await;
        let t = tokens.get(deadline, || async { Ok(issued(7)) }).await.unwrap();
        assert_eq!((t.header.to_str().unwrap(), t.generation), ("Bearer t7", 2));
    }

    #[tokio::test]
    async fn a_failed_request_makes_callers_fail_fast_for_a_while() {
        let tokens = MgmtTokens::new("test", "API", None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = tokens.get(deadline, || async { Err(SourceError::new("down")) }).await.err().unwrap();
        assert_eq!(e.reason, "down");
        let asked = AtomicU32::new(0);
        let e = tokens
            .get(deadline, || async {
                asked.fetch_add(1, SeqCst);
                Ok(issued(1))
            })
            .await
            .err()
            .unwrap();
        assert_eq!(asked.load(SeqCst), 0, "no second request within the pause");
        assert!(e.retry_after.is_some_and(|d| d <= TOKEN_FAILURE_PAUSE));
    }
}
