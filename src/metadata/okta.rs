//! The `okta` source (docs/configuration.md, "[metadata.NAME]"): an Okta org's
//! management API, read with a service app's OAuth 2.0 token.
//!
//! - The token by client credentials (RFC 6749 §4.4) from `POST {base}/oauth2/v1/token`,
//!   the app authenticated by a `private_key_jwt` client assertion (RFC 7523 §2.2 and
//!   §3): an RS256 JWT with `iss` = `sub` = client id, `aud` = the token URL, `iat`,
//!   `exp` a few minutes on, and a `jti` never used before (Okta refuses a replayed
//!   one). Held and shared by `mgmt_token.rs` as for `auth0`.
//! - Users: `GET {base}/api/v1/users/{id}`, its `profile` is the app_metadata.
//! - Clients: `GET {base}/api/v1/apps/{client_id}`, its `profile` is the
//!   client_metadata (`{}` when the app has none). An app's `id` is its OAuth client id
//!   unless the app was created with a custom one.
//! - 404 with `errorCode` `E0000007` is "does not exist"; a 404 without it (a wrong
//!   `base_url`) is an error, so it never turns every user into an unknown one.
//! - 429 waits until `X-Rate-Limit-Reset` (Unix seconds; `remote.rs`).
//!
//! Nothing here logs or returns a token, the assertion, the private key or a body.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::StatusCode;
use percent_encoding::utf8_percent_encode;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::SEGMENT;
use super::mgmt_token::{self, Issued, MgmtTokens, TokenRequest};
use super::remote::Remote;
use super::shared::Shared;
use super::{BoxFuture, Lookup, Metadata, MetadataSource, SourceError};
use crate::config::OktaSourceConfig;
use crate::http_client::{Fetched, JsonClient};
use crate::keys::SigningKey;

/// Largest user or app answer read.
const MAX_BODY: usize = 1024 * 1024;
/// How long a client assertion is valid: Okta accepts at most an hour; a few minutes
/// cover clock skew and the request's retries.
const ASSERTION_LIFE: u64 = 300;
/// RFC 7523 §2.2.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Okta's "Not found: Resource not found" error code.
const NOT_FOUND_CODE: &str = "E0000007";

/// An Okta org as a metadata source.
pub(crate) struct OktaSource {
    /// `base_url` (or `https://{domain}`) without its trailing slash.
    base: String,
    /// `{base}/oauth2/v1/token`: where tokens come from, and the assertions' `aud`.
    token_url: String,
    client_id: String,
    key: Arc<SigningKey>,
    /// Space-separated, as the token request sends them.
    scopes: String,
    /// Time for one lookup, token request and retries included.
    timeout: Duration,
    remote: Remote,
    token: MgmtTokens,
    /// `okta BASE`: names this org's entries and budget in `[shared]`.
    scope: Arc<str>,
}

impl OktaSource {
    pub(crate) fn new(cfg: &OktaSourceConfig, client: JsonClient, shared: Option<Arc<Shared>>) -> OktaSource {
        let base = cfg.base_url.as_str().trim_end_matches('/').to_string();
        let scope: Arc<str> = Arc::from(format!("okta {base}"));
        let mut remote = Remote::new(client, cfg.max_requests_per_second, cfg.timeout);
        if let Some(sh) = &shared {
            remote.share(sh.clone(), scope.clone());
        }
        let scopes = cfg.scopes.join(" ");
        // One token per org, app and set of scopes, shared by every replica with `[shared]`.
        let token_scope = format!("{scope} {} {scopes}", cfg.client_id);
        OktaSource {
            token_url: format!("{base}/oauth2/v1/token"),
            base,
            client_id: cfg.client_id.clone(),
            key: cfg.private_key.0.clone(),
            scopes,
            timeout: cfg.timeout,
            remote,
            token: MgmtTokens::new("okta", "Okta API", shared.map(|sh| (sh, token_scope))),
            scope,
        }
    }

    async fn get(&self, what: &'static str, url: &str, deadline: Instant) -> Result<Fetched, SourceError> {
        self.token.authorized_get(&self.remote, what, url, deadline, MAX_BODY, || self.request_token(deadline)).await
    }

    /// `GET {base}{collection}/{id}`: its `profile`, or `None` for Okta's "not found".
    async fn read(&self, what: &'static str, collection: &str, id: &str) -> Result<Lookup, SourceError> {
        let deadline = Instant::now() + self.timeout;
        let url = format!("{}{collection}/{}", self.base, utf8_percent_encode(id, SEGMENT));
        let resp = self.get(what, &url, deadline).await?;
        match resp.status {
            StatusCode::OK => profile(&resp.body).map(Some).ok_or_else(|| unexpected(what)),
            StatusCode::NOT_FOUND if is_not_found(&resp.body) => Ok(None),
            StatusCode::NOT_FOUND => Err(SourceError::new(format!(
                "{what}: HTTP 404 without Okta's not-found error (check base_url / domain)"
            ))),
            s => Err(status_error(what, s)),
        }
    }

    /// Client credentials with a new client assertion for every try (RFC 7523 §2.2).
    async fn request_token(&self, deadline: Instant) -> Result<Issued, SourceError> {
        let body = || -> Result<Bytes, SourceError> {
            let assertion = self.assertion()?;
            Ok(Bytes::from(
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("scope", &self.scopes)
                    .append_pair("client_assertion_type", ASSERTION_TYPE)
                    .append_pair("client_assertion", &assertion)
                    .finish(),
            ))
        };
        let req = TokenRequest {
            url: &self.token_url,
            content_type: "application/x-www-form-urlencoded",
            body: &body,
            refused_hint: "check client_id, the private key registered with the service app (private_key_jwt, \
                           without DPoP), and the okta.* scopes granted to it",
        };
        mgmt_token::request_token(&self.remote, req, deadline).await
    }

    /// A signed client assertion, new for every try of a token request: its `jti` is
    /// 128 random bits, never used twice. A try Okta answered with a 5xx, or whose
    /// answer was lost, may still have used up its `jti`.
    fn assertion(&self) -> Result<String, SourceError> {
        let now = crate::clock::unix_now();
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFE,
            "jti": format!("{:032x}", rand::random::<u128>()),
        });
        let signing_input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = self
            .key
            .sign(signing_input.as_bytes())
            .map_err(|_| SourceError::new("management token request: signing the client assertion failed"))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig)))
    }
}

impl MetadataSource for OktaSource {
    fn kind(&self) -> &'static str {
        "okta"
    }
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.read("user read", "/api/v1/users", user_id))
    }
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.read("client read", "/api/v1/apps", client_id))
    }
    fn ratelimit_remaining(&self) -> Option<u64> {
        self.remote.ratelimit_remaining()
    }
    fn shared_scope(&self) -> Option<&str> {
        Some(&self.scope)
    }
}

/// `profile` of a user or app: absent or null is `{}`; `None` when the answer is not
/// an object or its profile is not one.
fn profile(body: &[u8]) -> Option<Metadata> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else { return None };
    match o.remove("profile") {
        None | Some(Value::Null) => Some(Metadata::new()),
        Some(Value::Object(m)) => Some(m),
        Some(_) => None,
    }
}

/// Whether a 404's body is Okta's "Not found" error.
fn is_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("errorCode").and_then(Value::as_str) == Some(NOT_FOUND_CODE))
}

fn unexpected(what: &str) -> SourceError {
    SourceError::new(format!("{what}: unexpected answer"))
}

fn status_error(what: &str, s: StatusCode) -> SourceError {
    let hint = if s == StatusCode::FORBIDDEN {
        " (the service app needs the okta.users.read and okta.apps.read scopes)"
    } else {
        ""
    };
    SourceError::new(format!("{what}: HTTP {}{hint}", s.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_strictly() {
        assert_eq!(profile(br#"{"id":"00u1","profile":{"plan":"pro"}}"#).unwrap()["plan"], "pro");
        assert!(profile(br#"{"id":"0oa1","name":"oidc_client"}"#).unwrap().is_empty());
        assert!(profile(br#"{"profile":null}"#).unwrap().is_empty());
        assert!(profile(br#"{"profile":"x"}"#).is_none());
        assert!(profile(b"[]").is_none());
        assert!(is_not_found(br#"{"errorCode":"E0000007","errorSummary":"Not found: Resource not found: x (User)"}"#));
        assert!(!is_not_found(br#"{"errorCode":"E0000022"}"#));
        assert!(!is_not_found(b"<html>Not Found</html>"));
    }

    #[test]
    fn assertions_are_rs256_jwts_with_a_new_jti_each() {
        let (key, _) = SigningKey::generate(jsonwebtoken::Algorithm::RS256).unwrap();
        let cfg = OktaSourceConfig {
            domain: "acme.okta.com".into(),
            base_url: url::Url::parse("https://acme.okta.com/").unwrap(),
            client_id: "0oa-app".into(),
            private_key: crate::config::ClientKey(Arc::new(key)),
            private_key_file: "k.pem".into(),
            scopes: vec!["okta.users.read".into()],
            max_requests_per_second: 5,
            timeout: Duration::from_secs(5),
            ca_file: None,
        };
        crate::install_crypto_provider();
        let egress = crate::http_client::Egress::none();
        let connector = crate::http_client::connector(None, &egress).unwrap();
        let s = OktaSource::new(&cfg, crate::http_client::JsonClient::new(connector, &egress), None);
        let (a, b) = (s.assertion().unwrap(), s.assertion().unwrap());
        let claims = |t: &str| -> Value {
            let part = t.split('.').nth(1).unwrap();
            serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
        };
        let (ca, cb) = (claims(&a), claims(&b));
        assert_eq!(ca["aud"], "https://acme.okta.com/oauth2/v1/token");
        assert_eq!((ca["iss"].as_str(), ca["sub"].as_str()), (Some("0oa-app"), Some("0oa-app")));
        assert_eq!(ca["exp"].as_u64().unwrap() - ca["iat"].as_u64().unwrap(), ASSERTION_LIFE);
        assert_ne!(ca["jti"], cb["jti"]);
        // It verifies with the public key.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(s.key.public_jwk().clone()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://acme.okta.com/oauth2/v1/token"]);
        jsonwebtoken::decode::<Value>(&a, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap();
    }
}
