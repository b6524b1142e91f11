//! The file as serde reads it: every table and key, all optional, unknown keys refused.
//! `validate.rs` turns it into the typed [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

// ---------------------------------------------------------------------------
// Raw mirror of the file.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default, rename = "issuer")]
    pub(super) issuers: Vec<RawIssuer>,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) token: RawToken,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
    pub(super) shared: Option<RawShared>,
    pub(super) forward_auth: Option<RawForwardAuth>,
    pub(super) telemetry: Option<RawTelemetry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) addr: Option<String>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) token_cookie: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) max_header_bytes: Option<i64>,
    pub(super) request_timeout: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) fast_path: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) addr: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) webhook_token_env: Option<String>,
    pub(super) webhook_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) leeway: Option<String>,
    pub(super) hmac_secret_env: Option<String>,
    pub(super) hmac_secret_file: Option<PathBuf>,
    pub(super) metadata: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) kind: Option<String>,
    // auth0 (and okta: domain; keycloak: client_secret_*; both: base_url, client_id)
    pub(super) domain: Option<String>,
    pub(super) base_url: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_secret_file: Option<PathBuf>,
    pub(super) audience: Option<String>,
    // keycloak
    pub(super) realm: Option<String>,
    pub(super) attribute_prefix: Option<String>,
    // okta
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) scopes: Option<Vec<String>>,
    // auth0, keycloak, okta, http
    pub(super) max_requests_per_second: Option<i64>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    // file
    pub(super) path: Option<PathBuf>,
    // http
    pub(super) user_url: Option<String>,
    pub(super) client_url: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl: Option<String>,
    pub(super) max_stale: Option<String>,
    pub(super) negative_ttl: Option<String>,
    pub(super) max_entries: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) issuer: Option<String>,
    pub(super) ttl: Option<String>,
    pub(super) algorithm: Option<String>,
    #[serde(default)]
    pub(super) key_files: Vec<PathBuf>,
    pub(super) header: Option<String>,
    pub(super) copy_claims: Option<Vec<String>>,
    /// `[token.static_claims]`: any TOML value, as JSON in every internal token.
    pub(super) static_claims: Option<BTreeMap<String, toml::Value>>,
    /// `[token.secret_claims]`: `{ env = "NAME" }` or `{ file = "PATH" }` each.
    pub(super) secret_claims: Option<BTreeMap<String, RawSecretClaim>>,
}

/// Where one `[token.secret_claims]` value is read from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretClaim {
    pub(super) env: Option<String>,
    pub(super) file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path_prefix: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) audience: Option<String>,
    pub(super) auth: Option<String>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    pub(super) app_metadata: Option<Vec<String>>,
    pub(super) client_metadata: Option<Vec<String>>,
    pub(super) user_metadata: Option<Vec<String>>,
    pub(super) websocket: Option<bool>,
    pub(super) max_body_bytes: Option<i64>,
    #[serde(default)]
    pub(super) require: Vec<RawRouteRule>,
    #[serde(default)]
    pub(super) deny: Vec<RawRouteRule>,
}

/// `[[route.require]]` / `[[route.deny]]`; `crate::rules::Rule::parse` checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteRule {
    pub(super) name: Option<String>,
    pub(super) source: Option<String>,
    pub(super) pointer: Option<String>,
    pub(super) op: Option<String>,
    pub(super) value: Option<serde_json::Value>,
    pub(super) methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) url_env: Option<String>,
    pub(super) url_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) key_files: Vec<PathBuf>,
    pub(super) prefix: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    pub(super) addr: Option<String>,
    pub(super) headers: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) ca_file: Option<PathBuf>,
}
