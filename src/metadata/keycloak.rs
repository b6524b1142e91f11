//! The `keycloak` source (docs/configuration.md, "[metadata.NAME]"): a realm's admin
//! REST API, read with a confidential client's service account.
//!
//! - A token by client credentials (RFC 6749 §4.4) from
//!   `POST {base_url}/realms/{realm}/protocol/openid-connect/token`, held and shared by
//!   `mgmt_token.rs` as for `auth0` (one refresh for concurrent callers, a 401 → one
//!   new token).
//! - Users: `GET {base_url}/admin/realms/{realm}/users/{id}`; its `attributes` (a map
//!   of string lists) is the app_metadata, a one-element list given as its string.
//! - Clients: `GET {base_url}/admin/realms/{realm}/clients?clientId={id}`; the first
//!   element's `attributes` (a map of strings) is the client_metadata, only the keys
//!   with `attribute_prefix` (prefix removed) when it is set: Keycloak keeps its own
//!   client settings in the same map.
//! - 404 or an empty list: does not exist. Keycloak sends no rate-limit headers; every
//!   call still goes through one [`Remote`] (`max_requests_per_second`, timeout,
//!   retries of 429 / 5xx with backoff).
//!
//! Nothing here logs or returns a token, the client secret or a response body.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use percent_encoding::utf8_percent_encode;
use serde_json::Value;
use tokio::time::Instant;

use super::http::SEGMENT;
use super::mgmt_token::{self, Issued, MgmtTokens, TokenRequest};
use super::remote::Remote;
use super::shared::Shared;
use super::{BoxFuture, Lookup, Metadata, MetadataSource, SourceError};
use crate::config::{KeycloakSourceConfig, Secret};
use crate::http_client::JsonClient;

/// Largest user or client answer read.
const MAX_BODY: usize = 1024 * 1024;

/// A Keycloak realm as a metadata source.
pub(crate) struct KeycloakSource {
    /// `{base_url}/admin/realms/{realm}`.
    admin: String,
    /// `{base_url}/realms/{realm}/protocol/openid-connect/token`.
    token_url: String,
    client_id: String,
    client_secret: Secret,
    attribute_prefix: Option<String>,
    /// Time for one lookup, token request and retries included.
    timeout: Duration,
    remote: Remote,
    token: MgmtTokens,
    /// `keycloak BASE REALM`: names this realm's entries and budget in `[shared]`.
    scope: Arc<str>,
}

impl KeycloakSource {
    pub(crate) fn new(cfg: &KeycloakSourceConfig, client: JsonClient, shared: Option<Arc<Shared>>) -> KeycloakSource {
        let base = cfg.base_url.as_str().trim_end_matches('/');
        let realm = utf8_percent_encode(&cfg.realm, SEGMENT).to_string();
        let scope: Arc<str> = Arc::from(format!("keycloak {base} {realm}"));
        let mut remote = Remote::new(client, cfg.max_requests_per_second, cfg.timeout);
        if let Some(sh) = &shared {
            remote.share(sh.clone(), scope.clone());
        }
        // One token per realm and client, shared by every replica with `[shared]`.
        let token_scope = format!("{scope} {}", cfg.client_id);
        KeycloakSource {
            admin: format!("{base}/admin/realms/{realm}"),
            token_url: format!("{base}/realms/{realm}/protocol/openid-connect/token"),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            attribute_prefix: cfg.attribute_prefix.clone(),
            timeout: cfg.timeout,
            remote,
            token: MgmtTokens::new("keycloak", "admin API", shared.map(|sh| (sh, token_scope))),
            scope,
        }
    }

    async fn get(
        &self,
        what: &'static str,
        url: &str,
        deadline: Instant,
    ) -> Result<crate::http_client::Fetched, SourceError> {
        self.token.authorized_get(&self.remote, what, url, deadline, MAX_BODY, || self.request_token(deadline)).await
    }

    async fn user(&self, user_id: &str) -> Result<Lookup, SourceError> {
        const WHAT: &str = "user read";
        let deadline = Instant::now() + self.timeout;
        let url = format!("{}/users/{}", self.admin, utf8_percent_encode(user_id, SEGMENT));
        let resp = self.get(WHAT, &url, deadline).await?;
        match resp.status {
            StatusCode::OK => user_attributes(&resp.body).map(Some).ok_or_else(|| unexpected(WHAT)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(status_error(WHAT, s)),
        }
    }

    async fn client(&self, client_id: &str) -> Result<Lookup, SourceError> {
        const WHAT: &str = "client read";
        let deadline = Instant::now() + self.timeout;
        // Every byte but the unreserved ones percent-encoded: no `+`, `&` or `=` of
        // the id can change the query.
        let url = format!("{}/clients?clientId={}", self.admin, utf8_percent_encode(client_id, SEGMENT));
        let resp = self.get(WHAT, &url, deadline).await?;
        match resp.status {
            StatusCode::OK => client_attributes(&resp.body, client_id, self.attribute_prefix.as_deref())
                .ok_or_else(|| unexpected(WHAT)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(status_error(WHAT, s)),
        }
    }

    /// Client credentials with the secret in the form body (`client_secret_post`).
    async fn request_token(&self, deadline: Instant) -> Result<Issued, SourceError> {
        let body = Bytes::from(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &self.client_id)
                .append_pair("client_secret", self.client_secret.expose())
                .finish(),
        );
        let req = TokenRequest {
            url: &self.token_url,
            content_type: "application/x-www-form-urlencoded",
            body: &|| Ok(body.clone()),
            refused_hint: "check base_url, realm, client_id, the client secret, and that the client is confidential \
                           with service accounts enabled",
        };
        mgmt_token::request_token(&self.remote, req, deadline).await
    }
}

impl MetadataSource for KeycloakSource {
    fn kind(&self) -> &'static str {
        "keycloak"
    }
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(KeycloakSource::user(self, user_id))
    }
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(KeycloakSource::client(self, client_id))
    }
    fn ratelimit_remaining(&self) -> Option<u64> {
        self.remote.ratelimit_remaining()
    }
    fn shared_scope(&self) -> Option<&str> {
        Some(&self.scope)
    }
}

/// A user's `attributes` as app_metadata: each list of strings with one element
/// becomes that string, other lists stay arrays; no attributes is `{}`. `None` when
/// the answer is not a user object or an attribute is not a list of strings.
fn user_attributes(body: &[u8]) -> Option<Metadata> {
    let Ok(Value::Object(mut user)) = serde_json::from_slice::<Value>(body) else { return None };
    let attrs = match user.remove("attributes") {
        None | Some(Value::Null) => return Some(Metadata::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return None,
    };
    let mut out = Metadata::new();
    for (k, v) in attrs {
        let Value::Array(mut items) = v else { return None };
        if !items.iter().all(Value::is_string) {
            return None;
        }
        let v = if items.len() == 1 { items.pop()? } else { Value::Array(items) };
        out.insert(k, v);
    }
    Some(out)
}

/// The client list answer of `?clientId=`: the first element's `attributes` (strings),
/// filtered by `prefix` (removed) when set; `Some(None)` for an empty list. Keycloak
/// matches `clientId` exactly, but an element for another client is never used.
fn client_attributes(body: &[u8], client_id: &str, prefix: Option<&str>) -> Option<Lookup> {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else { return None };
    let Some(first) = items.into_iter().next() else { return Some(None) };
    let Value::Object(mut client) = first else { return None };
    if client.get("clientId").and_then(Value::as_str) != Some(client_id) {
        return Some(None);
    }
    let attrs = match client.remove("attributes") {
        None | Some(Value::Null) => return Some(Some(Metadata::new())),
        Some(Value::Object(m)) => m,
        Some(_) => return None,
    };
    let mut out = Metadata::new();
    for (k, v) in attrs {
        if !v.is_string() {
            return None;
        }
        match prefix {
            None => {
                out.insert(k, v);
            }
            Some(p) => {
                if let Some(rest) = k.strip_prefix(p)
                    && !rest.is_empty()
                {
                    out.insert(rest.to_string(), v);
                }
            }
        }
    }
    Some(Some(out))
}

fn unexpected(what: &str) -> SourceError {
    SourceError::new(format!("{what}: unexpected answer"))
}

fn status_error(what: &str, s: StatusCode) -> SourceError {
    let hint = if s == StatusCode::FORBIDDEN {
        " (the service account needs the realm-management roles view-users and view-clients)"
    } else {
        ""
    };
    SourceError::new(format!("{what}: HTTP {}{hint}", s.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_attributes_are_flattened() {
        let md =
            user_attributes(br#"{"id":"u","username":"a","attributes":{"plan":["pro"],"roles":["a","b"],"none":[]}}"#)
                .unwrap();
        assert_eq!(Value::Object(md), json!({"plan": "pro", "roles": ["a", "b"], "none": []}));
        assert!(user_attributes(br#"{"id":"u"}"#).unwrap().is_empty());
        assert!(user_attributes(br#"{"id":"u","attributes":null}"#).unwrap().is_empty());
        assert!(user_attributes(br#"{"attributes":{"x":"y"}}"#).is_none());
        assert!(user_attributes(br#"{"attributes":{"x":[1]}}"#).is_none());
        assert!(user_attributes(br#"[]"#).is_none());
    }

    #[test]
    fn client_attributes_are_filtered_by_prefix() {
        let body = br#"[{"id":"1","clientId":"app","attributes":{"claimsmith.tier":"gold","pkce.code.challenge.method":"S256","claimsmith.":"x"}}]"#;
        let all = client_attributes(body, "app", None).unwrap().unwrap();
        assert_eq!(all.len(), 3);
        let kept = client_attributes(body, "app", Some("claimsmith.")).unwrap().unwrap();
        assert_eq!(Value::Object(kept), json!({"tier": "gold"}));
        assert_eq!(client_attributes(b"[]", "app", None), Some(None));
        assert_eq!(client_attributes(body, "other", None), Some(None));
        assert!(client_attributes(br#"[{"clientId":"app"}]"#, "app", None).unwrap().unwrap().is_empty());
        assert!(client_attributes(br#"[{"clientId":"app","attributes":{"a":["x"]}}]"#, "app", None).is_none());
        assert!(client_attributes(br#"{"error":"x"}"#, "app", None).is_none());
    }

    #[test]
    fn ids_are_one_encoded_segment_or_query_value() {
        assert_eq!(utf8_percent_encode("f:ab/../x?y#", SEGMENT).to_string(), "f%3Aab%2F..%2Fx%3Fy%23");
        assert_eq!(utf8_percent_encode("a&b=c d+", SEGMENT).to_string(), "a%26b%3Dc%20d%2B");
    }
}
