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
    // The cache only holds JSON objects it wrote itself; failing to read one back
    // is ours to fix, and must not let a rule pass. Each entry is parsed once, the
    // first time a rule reads it (`StoredMetadata::parsed`).
    let app_metadata = match rules.reads(Source::AppMetadata) {
        false => None,
        true => Some(app_md.parsed().main.as_ref().ok_or(ProxyError::Internal)?),
    };
    let client_metadata = match rules.reads(Source::ClientMetadata) {
        false => None,
        true => Some(client_md.parsed().main.as_ref().ok_or(ProxyError::Internal)?),
    };
    // Read with the user whenever a rule reads it (`Config::fetches_user_metadata`);
    // `{}` only for an issuer without a metadata source, which has none.
    let empty = Value::Object(Default::default());
    let user_metadata = match rules.reads(Source::UserMetadata) {
        false => None,
        true => match app_md.user_metadata_json() {
            None => Some(&empty),
            Some(_) => Some(app_md.parsed().user.as_ref().ok_or(ProxyError::Internal)?),
        },
    };
    let facts = Facts { claims: id.rule_claims(), app_metadata, client_metadata, user_metadata };
    match rules.refusal(method, &facts) {
        None => Ok(()),
        Some(refusing) => {
            app.metrics.denied(&route.name, &refusing.label);
            *rule = Some(refusing.label.clone());
            Err(ProxyError::Forbidden { rule: refusing.label.clone() })
        }
    }
}
