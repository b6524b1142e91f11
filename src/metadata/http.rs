//! The `http` source (docs/configuration.md, "[metadata.NAME]"): a generic JSON API for home-grown user stores.
//! `user_url` / `client_url` with `{user_id}` / `{client_id}` filled in, url-encoded.
//! 404 is "does not exist"; 429 / 5xx are retried as for `auth0` (see `remote.rs`),
//! within `max_requests_per_second` and `timeout`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use tokio::time::Instant;

use super::remote::Remote;
use super::shared::Shared;
use super::{BoxFuture, Lookup, MetadataSource, SourceError};
use crate::config::{HttpSourceConfig, Secret};
use crate::http_client::{self, JsonClient};

/// Everything but RFC 3986 unreserved characters is encoded: a whole path segment.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const MAX_BODY: usize = 1024 * 1024;

pub struct HttpSource {
    user_url: String,
    client_url: String,
    token: Option<Secret>,
    /// Time for one lookup, retries included.
    timeout: Duration,
    remote: Remote,
    /// `http USER_URL CLIENT_URL`: names this API's entries and budget in `[shared]`.
    scope: Arc<str>,
}

impl HttpSource {
    pub fn new(cfg: &HttpSourceConfig, client: JsonClient, shared: Option<Arc<Shared>>) -> HttpSource {
        let scope: Arc<str> = Arc::from(format!("http {} {}", cfg.user_url, cfg.client_url));
        let mut remote = Remote::new(client, cfg.max_requests_per_second, cfg.timeout);
        if let Some(sh) = shared {
            remote.share(sh, scope.clone());
        }
        HttpSource {
            user_url: cfg.user_url.clone(),
            client_url: cfg.client_url.clone(),
            token: cfg.token.clone(),
            timeout: cfg.timeout,
            remote,
            scope,
        }
    }

    /// The last `x-ratelimit-remaining` the API sent, if any.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        self.remote.ratelimit_remaining()
    }

    async fn get(
        &self,
        what: &'static str,
        template: &str,
        placeholder: &str,
        id: &str,
    ) -> Result<Lookup, SourceError> {
        let url = template.replace(placeholder, &utf8_percent_encode(id, SEGMENT).to_string());
        let auth = match &self.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| SourceError::new("the source token is not a valid header value"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let build = || {
            let mut req =
                http_client::get_request(&url).map_err(|_| SourceError::new(format!("{what}: invalid URL")))?;
            if let Some(v) = &auth {
                req.headers_mut().insert(header::AUTHORIZATION, v.clone());
            }
            Ok(req)
        };
        let resp = self.remote.send(what, &build, Instant::now() + self.timeout, MAX_BODY).await?;
        match resp.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match serde_json::from_slice::<Value>(&resp.body) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                _ => Err(SourceError::new(format!("{what}: the answer is not a JSON object"))),
            },
            s => Err(SourceError::new(format!("{what}: HTTP {}", s.as_u16()))),
        }
    }
}

impl MetadataSource for HttpSource {
    fn kind(&self) -> &'static str {
        "http"
    }
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.get("user read", &self.user_url, "{user_id}", user_id))
    }
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.get("client read", &self.client_url, "{client_id}", client_id))
    }
    fn ratelimit_remaining(&self) -> Option<u64> {
        self.remote.ratelimit_remaining()
    }
    fn shared_scope(&self) -> Option<&str> {
        Some(&self.scope)
    }
}
