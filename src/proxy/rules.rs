//! Phase **authorize**: the route's `require` and `deny` rules (docs/configuration.md,
//! "Authorization rules") over the verified claims and the caller's metadata, between
//! the metadata and mint phases. The rules themselves, and what makes one hold, are
//! `crate::rules`; this phase gathers the documents they read and turns a refusal
//! into a 403 that names the rule, never a value.

use std::sync::Arc;

use http::Method;
use serde_json::Value;

use super::{App, Route};
use crate::error::ProxyError;
use crate::metadata::StoredMetadata;
use crate::rules::{Facts, Source};
use crate::verify::VerifiedIdentity;

/// The caller's app_metadata (with the user's user_metadata, when read) and
/// client_metadata, as the cache holds them (before the route's projection).
pub(crate) type CallerMetadata<'a> = (&'a Arc<StoredMetadata>, &'a Arc<StoredMetadata>);

/// Refuses the request (403) when the route's rules do. A route without rules costs
/// one branch; a metadata document is parsed only when a rule reads it. `rule` is set
/// to the refusing rule's name, for the access log.
pub(crate) fn check_rules(
    app: &App,
    route: &Route,
    method: &Method,
    id: &VerifiedIdentity,
    (app_md, client_md): CallerMetadata<'_>,
    rule: &mut Option<Arc<str>>,
) -> Result<(), ProxyError> {
    let rules = &route.config.rules;
    if rules.is_empty() {
        return Ok(());
    }
    let parse = |source: Source, json: &str| -> Result<Option<Value>, ProxyError> {
        if !rules.reads(source) {
            return Ok(None);
        }
        // The cache only holds JSON objects it wrote itself; failing to read one back
        // is ours to fix, and must not let a rule pass.
        serde_json::from_str(json).map(Some).map_err(|_| ProxyError::Internal)
    };
    let app_metadata = parse(Source::AppMetadata, app_md.json())?;
    let client_metadata = parse(Source::ClientMetadata, client_md.json())?;
    // Read with the user whenever a rule reads it (`Config::fetches_user_metadata`);
    // `{}` only for an issuer without a metadata source, which has none.
    let user_metadata = parse(Source::UserMetadata, app_md.user_metadata_json().unwrap_or("{}"))?;
    let facts = Facts {
        claims: id.rule_claims(),
        app_metadata: app_metadata.as_ref(),
        client_metadata: client_metadata.as_ref(),
        user_metadata: user_metadata.as_ref(),
    };
    match rules.refusal(method, &facts) {
        None => Ok(()),
        Some(refusing) => {
            app.metrics.denied(&route.name, &refusing.label);
            *rule = Some(refusing.label.clone());
            Err(ProxyError::Forbidden { rule: refusing.label.clone() })
        }
    }
}
