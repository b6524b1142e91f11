//! Push invalidation (docs/operations.md, "Push invalidation"): Auth0 Event Streams
//! (`POST /hooks/auth0/events`) and Log Streams (`POST /hooks/auth0/logs`) webhooks
//! drop or replace cached metadata the moment it changes, instead of up to a cache
//! `ttl` later.
//!
//! Off (404) unless `admin.webhook_token_*` is set; the bearer token is compared in
//! constant time, because a forged delivery could replace a user's app_metadata. A
//! delivery is read whole (at most 1 MiB) and parsed (`parse`) before anything is
//! applied; 204 only once applied, so a sender retries what was not. Logged: the
//! event or log id and what was done; never a user id, a token or a metadata value.

mod parse;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use self::parse::{Change, Item, MAX_BODY, Malformed};
use super::{bearer_matches, text};
use crate::app::App;
use crate::config::SourceConfig;
use crate::error::{Body, full};
use crate::metadata::cache::{Kind, Replace};
use crate::metrics::{Hook, Invalidation};

/// How long a delivery's body may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Ids longer than this are logged cut (they come from the sender).
const LOGGED_ID_MAX: usize = 96;

/// Answers `POST /hooks/auth0/events` or `/hooks/auth0/logs`.
pub(crate) async fn handle(app: &App, req: Request<Incoming>, hook: Hook) -> Response<Body> {
    // Off unless configured: the hooks do not exist.
    let Some(secret) = &app.config.admin.webhook_token else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !bearer_matches(req.headers(), secret) {
        let mut r = text(StatusCode::UNAUTHORIZED, "webhook token required\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"claimsmith-hooks\""));
        return r;
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = match hook {
        Hook::Events => parse::events(&body),
        Hook::Logs => parse::logs(&body),
    };
    let items = match parsed {
        Ok(items) => items,
        Err(Malformed(why)) => return text(StatusCode::BAD_REQUEST, format!("malformed delivery: {why}\n")),
    };
    for item in &items {
        let action = apply(app, hook, item).await;
        app.metrics.invalidated(hook, action);
        let id = item.id.as_deref().unwrap_or("-");
        let id = id.char_indices().nth(LOGGED_ID_MAX).map_or(id, |(at, _)| &id[..at]);
        // Debug-formatted: the id is the sender's text, and must not forge log lines.
        tracing::info!(hook = hook.as_str(), id = ?id, action = action.as_str(), "pushed change");
    }
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The body, at most [`MAX_BODY`]: a larger `Content-Length` is refused before a byte
/// is read, and a body without one is counted as it arrives.
async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Response<Body>> {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, "a delivery is at most 1 MiB\n");
    let declared =
        req.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()));
    match declared {
        Some(None) => return Err(text(StatusCode::BAD_REQUEST, "invalid Content-Length\n")),
        Some(Some(n)) if n > MAX_BODY as u64 => return Err(too_large()),
        _ => {}
    }
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(text(StatusCode::BAD_REQUEST, "the body could not be read\n")),
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "the body took too long\n")),
    }
}

/// Applies one event or log entry to every issuer whose source is its tenant.
async fn apply(app: &App, hook: Hook, item: &Item) -> Invalidation {
    let event_id = match (hook, &item.id) {
        (Hook::Events, Some(id)) => Some(id.as_str()),
        _ => None,
    };
    if event_id.is_some_and(|id| app.seen_events.contains_key(id)) {
        return Invalidation::Duplicate;
    }
    let action = apply_change(app, item).await;
    // Recorded once applied: a delivery that failed before this is applied when retried.
    if let Some(id) = event_id {
        app.seen_events.insert(id.into(), ());
    }
    action
}

async fn apply_change(app: &App, item: &Item) -> Invalidation {
    if item.change == Change::Ignored {
        return Invalidation::Ignored;
    }
    let auth0: Vec<(&str, &str)> = app
        .config
        .sources
        .iter()
        .filter_map(|(name, s)| match s {
            SourceConfig::Auth0(a) => Some((name.as_str(), a.domain.as_str())),
            _ => None,
        })
        .collect();
    let sources = parse::sources_of(&item.tenant, &auth0);
    let issuers: Vec<(&str, Arc<str>)> =
        sources.iter().flat_map(|s| app.issuers_of(s).into_iter().map(move |i| (*s, i))).collect();
    if issuers.is_empty() {
        // A tenant no source (or no issuer) has: nothing held can be from it.
        return Invalidation::Ignored;
    }
    match &item.change {
        Change::User { user_id, app_metadata: Some(md), user_metadata, updated_at_ms: Some(at) } => {
            let mut action = Invalidation::Replaced;
            for (source, issuer) in &issuers {
                let origin = origin_of(app, source);
                // The user_metadata goes with the app_metadata when the event carried
                // it (held only while some route or rule reads it); without it, a
                // state that reads it reads the user again rather than take "none".
                let value = (md.clone(), user_metadata.clone());
                if app.cache.replace(Kind::User, (issuer, origin), user_id, value, *at).await == Replace::Evicted {
                    action = Invalidation::Evicted;
                }
            }
            action
        }
        Change::User { user_id, .. } => {
            for (_, issuer) in &issuers {
                app.cache.evict(Kind::User, Some(issuer), user_id).await;
            }
            Invalidation::Evicted
        }
        Change::UserDeleted { user_id } => {
            for (source, issuer) in &issuers {
                app.cache.remember_absent(Kind::User, (issuer, origin_of(app, source)), user_id).await;
            }
            Invalidation::Evicted
        }
        Change::Client { client_id } => {
            for source in &sources {
                app.evict_client(Some(source), client_id).await;
            }
            Invalidation::Evicted
        }
        Change::Ignored => Invalidation::Ignored,
    }
}

/// What source `name` answers from now ([`crate::metadata::MetadataSource::origin`]):
/// a pushed entry is marked with it, so it is served while that source is in use.
fn origin_of(app: &App, name: &str) -> u64 {
    app.named_sources.iter().find(|s| s.name == name).map_or(0, |s| s.source.origin())
}
