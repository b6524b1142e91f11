//! The admin listener (README, "Admin listener"): JWKS, discovery, health, readiness, metrics, the
//! cache API and the push-invalidation hooks (`hooks`). Kept on its own address so it
//! can stay off the public network.

mod hooks;

use std::sync::atomic::Ordering::Relaxed;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::json;

use crate::app::App;
use crate::config::Secret;
use crate::error::{Body, full};
use crate::metadata::cache::Kind;
use crate::metrics::{self, Hook};

/// Answers one admin request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/.well-known/jwks.json") => json_response(StatusCode::OK, &app.minter.jwks()),
        (&Method::GET, "/.well-known/openid-configuration") => json_response(StatusCode::OK, &discovery(app, &req)),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if app.ready() {
                text(StatusCode::OK, "ready\n")
            } else if app.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "waiting for issuer keys\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, render_metrics(app).await);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::DELETE, p) if p.starts_with("/cache/users/") || p.starts_with("/cache/clients/") => {
            cache_delete(app, &req).await
        }
        _ if path.starts_with("/cache/") => text(StatusCode::METHOD_NOT_ALLOWED, "use DELETE\n"),
        (_, "/hooks/auth0/events") => hooks::handle(app, req, Hook::Events).await,
        (_, "/hooks/auth0/logs") => hooks::handle(app, req, Hook::Logs).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn discovery(app: &App, req: &Request<Incoming>) -> serde_json::Value {
    let base = match &app.config.admin.public_url {
        Some(u) => u.clone(),
        None => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| app.config.admin.addr.to_string());
            format!("http://{host}")
        }
    };
    json!({
        "issuer": app.minter.issuer(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": app.minter.algorithms(),
        "token_endpoint_auth_signing_alg_values_supported": app.minter.algorithms(),
    })
}

async fn cache_delete(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if let Some(secret) = &app.config.admin.token
        && !bearer_matches(req.headers(), secret)
    {
        let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"claimsmith-admin\""));
        return r;
    }
    let path = req.uri().path();
    let (kind, raw) = match path.strip_prefix("/cache/users/") {
        Some(id) => (Kind::User, id),
        None => (Kind::Client, path.trim_start_matches("/cache/clients/")),
    };
    let Ok(id) = percent_decode_str(raw).decode_utf8() else {
        return text(StatusCode::BAD_REQUEST, "id is not UTF-8\n");
    };
    if id.is_empty() {
        return text(StatusCode::BAD_REQUEST, "id missing\n");
    }
    match kind {
        Kind::User => {
            app.cache.evict(kind, None, &id).await;
        }
        Kind::Client => app.evict_client(None, &id).await,
    }
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Whether `Authorization: Bearer <token>` carries `secret`, compared in constant time.
fn bearer_matches(headers: &http::HeaderMap, secret: &Secret) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    presented.is_some_and(|t| constant_time_eq(t.as_bytes(), secret.expose().as_bytes()))
}

/// Compares SHA-256 digests, so neither the content nor the length of the secret
/// shows in how long a comparison takes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn render_metrics(app: &App) -> String {
    let mut out = String::with_capacity(4096);
    app.metrics.render(&mut out);
    let s = &app.cache.stats;
    metrics::counter(
        &mut out,
        "claimsmith_metadata_cache_hits_total",
        "Metadata cache hits (fresh or stale).",
        &[(String::new(), s.hits.load(Relaxed) + s.stale_served.load(Relaxed))],
    );
    metrics::counter(
        &mut out,
        "claimsmith_metadata_cache_misses_total",
        "Metadata cache misses.",
        &[(String::new(), s.misses.load(Relaxed))],
    );
    metrics::counter(
        &mut out,
        "claimsmith_metadata_stale_served_total",
        "Stale metadata served while refreshing.",
        &[(String::new(), s.stale_served.load(Relaxed))],
    );
    if let Some(sh) = &app.cache.shared {
        let st = &sh.stats;
        metrics::gauge(
            &mut out,
            "claimsmith_shared_up",
            "Whether the shared cache (Redis) is connected: 1, or 0 while this replica uses only its own.",
            &[(String::new(), u8::from(sh.up()))],
        );
        for (name, help, v) in [
            (
                "claimsmith_shared_errors_total",
                "Shared-cache calls and connection attempts that failed or timed out.",
                &st.errors,
            ),
            ("claimsmith_shared_hits_total", "In-process misses answered by the shared cache.", &st.hits),
            (
                "claimsmith_shared_lease_waits_total",
                "Lookups that waited for another replica's read of the same key.",
                &st.lease_waits,
            ),
            (
                "claimsmith_shared_budget_waits_total",
                "Source calls that waited for the shared rate budget.",
                &st.budget_waits,
            ),
        ] {
            metrics::counter(&mut out, name, help, &[(String::new(), v.load(Relaxed))]);
        }
    }
    let names: Vec<&str> = app.named_sources.iter().map(|n| n.name.as_str()).collect();
    app.metrics.render_sources(&mut out, &names);
    app.metrics.render_invalidations(&mut out);
    if let Some(t) = &app.telemetry {
        let dropped = t.dropped.load(Relaxed);
        let help = "Spans dropped because the export queue was full (the OTLP collector is slow or down).";
        metrics::counter(&mut out, "claimsmith_spans_dropped_total", help, &[(String::new(), dropped)]);
    }
    let remaining: Vec<(String, u64)> = app
        .named_sources
        .iter()
        .filter_map(|n| {
            n.source
                .ratelimit_remaining()
                .map(|r| (format!("source=\"{}\",kind=\"{}\"", metrics::escape(&n.name), n.source.kind()), r))
        })
        .collect();
    metrics::gauge(
        &mut out,
        "claimsmith_metadata_ratelimit_remaining",
        "The last x-ratelimit-remaining the metadata source's API reported.",
        &remaining,
    );
    let mut jwks = Vec::new();
    let mut age = Vec::new();
    let mut last = Vec::new();
    for i in app.verifier.issuers() {
        let iss = metrics::escape(&i.issuer);
        jwks.push((format!("issuer=\"{iss}\",result=\"ok\""), i.jwks.fetches_ok.load(Relaxed)));
        jwks.push((format!("issuer=\"{iss}\",result=\"error\""), i.jwks.fetches_failed.load(Relaxed)));
        if let Some(set) = i.jwks.current() {
            age.push((format!("issuer=\"{iss}\""), set.fetched_at.elapsed().as_secs_f64()));
        }
        last.push((format!("issuer=\"{iss}\""), u8::from(i.jwks.last_fetch_ok.load(Relaxed))));
    }
    metrics::gauge(
        &mut out,
        "claimsmith_jwks_age_seconds",
        "Seconds since the key set in use was fetched (absent until the first good fetch).",
        &age,
    );
    metrics::gauge(
        &mut out,
        "claimsmith_jwks_last_fetch_success",
        "1 if the issuer's most recent JWKS fetch succeeded, else 0.",
        &last,
    );
    metrics::counter(&mut out, "claimsmith_jwks_refreshes_total", "JWKS fetches by issuer and result.", &jwks);
    let (minted, reused) = app.minter.counts();
    metrics::counter(&mut out, "claimsmith_tokens_minted_total", "Internal tokens signed.", &[(String::new(), minted)]);
    metrics::counter(
        &mut out,
        "claimsmith_tokens_reused_total",
        "Internal tokens reused instead of signed.",
        &[(String::new(), reused)],
    );
    metrics::counter(
        &mut out,
        "claimsmith_config_reloads_total",
        "SIGHUP reloads by result (failed: the running configuration was kept).",
        &[
            ("result=\"ok\"".to_string(), app.metrics.reloads_ok.load(Relaxed)),
            ("result=\"failed\"".to_string(), app.metrics.reloads_failed.load(Relaxed)),
        ],
    );
    metrics::gauge(
        &mut out,
        "claimsmith_ready",
        "1 while /readyz answers 200.",
        &[(String::new(), u8::from(app.ready()))],
    );
    let (users, clients) = app.cache.sizes().await;
    out.push_str(
        "# HELP claimsmith_metadata_cache_entries Entries held.\n# TYPE claimsmith_metadata_cache_entries gauge\n",
    );
    out.push_str(&format!("claimsmith_metadata_cache_entries{{kind=\"user\"}} {users}\nclaimsmith_metadata_cache_entries{{kind=\"client\"}} {clients}\n"));
    out.push_str(&format!(
        "# HELP claimsmith_token_cache_entries Verified ID tokens held.\n# TYPE claimsmith_token_cache_entries gauge\nclaimsmith_token_cache_entries {}\n",
        app.verifier.cached_tokens()
    ));
    out
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
