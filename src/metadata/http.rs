//! The `http` source (SPEC §6): a generic JSON API for home-grown user stores.
//! `user_url` / `client_url` with `{user_id}` / `{client_id}` filled in, url-encoded.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::ratelimit::{RateLimiter, retry_after};
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
    timeout: Duration,
    client: JsonClient,
    limiter: RateLimiter,
}

impl HttpSource {
    pub fn new(cfg: &HttpSourceConfig, client: JsonClient) -> HttpSource {
        HttpSource {
            user_url: cfg.user_url.clone(),
            client_url: cfg.client_url.clone(),
            token: cfg.token.clone(),
            timeout: cfg.timeout,
            client,
            limiter: RateLimiter::new(cfg.max_requests_per_second),
        }
    }

    async fn get(&self, template: &str, placeholder: &str, id: &str) -> Result<Lookup, SourceError> {
        let url = template.replace(placeholder, &utf8_percent_encode(id, SEGMENT).to_string());
        let mut req = http_client::get_request(&url).map_err(|_| SourceError::new("invalid URL"))?;
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .map_err(|_| SourceError::new("token is not a valid header value"))?;
            v.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        self.limiter.acquire().await;
        let resp = http_client::fetch(&self.client, req, self.timeout, MAX_BODY)
            .await
            .map_err(|e| SourceError::new(e.to_string()))?;
        match resp.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match serde_json::from_slice::<Value>(&resp.body) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                _ => Err(SourceError::new("answer is not a JSON object")),
            },
            s => Err(SourceError { reason: format!("HTTP {}", s.as_u16()), retry_after: retry_after(&resp.headers) }),
        }
    }
}

impl MetadataSource for HttpSource {
    fn kind(&self) -> &'static str {
        "http"
    }
    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.get(&self.user_url, "{user_id}", user_id))
    }
    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(self.get(&self.client_url, "{client_id}", client_id))
    }
}
