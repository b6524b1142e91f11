//! The `auth0` source (SPEC §6). PLACEHOLDER: replaced by the full implementation.

use super::{BoxFuture, Lookup, MetadataSource, SourceError};
use crate::config::Auth0SourceConfig;
use crate::http_client::JsonClient;

pub struct Auth0Source {
    _client: JsonClient,
}

impl Auth0Source {
    pub fn new(_cfg: &Auth0SourceConfig, client: JsonClient) -> Auth0Source {
        Auth0Source { _client: client }
    }
}

impl MetadataSource for Auth0Source {
    fn kind(&self) -> &'static str {
        "auth0"
    }
    fn user<'a>(&'a self, _user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(async { Err(SourceError::new("auth0 source not implemented yet")) })
    }
    fn client<'a>(&'a self, _client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        Box::pin(async { Err(SourceError::new("auth0 source not implemented yet")) })
    }
}
