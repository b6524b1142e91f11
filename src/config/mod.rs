//! TOML configuration (docs/configuration.md), in three parts: this file is the typed
//! model the rest of the crate reads (plain data) and the entry points; `raw.rs` is
//! the file as serde reads it; `validate.rs` turns one into the other.
//!
//! Validation collects *every* problem it finds, each naming the key and why, so that
//! `claimsmith check` can report them all in one run.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use url::Url;

use crate::host::Host;
use crate::keys::SigningKey;

mod raw;
#[cfg(test)]
mod tests;
mod validate;

use raw::RawConfig;
pub use validate::parse_duration;
use validate::*;

/// One problem in a configuration, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `route[0].upstream`.
    pub key: String,
    /// Why it is wrong, in plain words.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A secret read from an environment variable or a file. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value (used by the demo and tests, which make their own secrets).
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }
    /// The secret's value. Callers must never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A 32-byte key of the shared cache (`[shared].key_files`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey(pub(crate) [u8; 32]);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

/// `[shared]`: one Redis (or Valkey) that replicas use as a second-level cache and to
/// coordinate (docs/scaling.md).
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://` or `rediss://` URL, credentials included: a secret.
    pub url: Secret,
    /// The first key names and seals; every key opens (rotation).
    pub keys: Vec<SharedKey>,
    pub key_files: Vec<PathBuf>,
    /// Namespace of every Redis key and channel, so deployments can share one Redis.
    pub prefix: String,
    /// Longest wait for one Redis call; a slower one counts as Redis unavailable.
    pub timeout: Duration,
    /// The roots a `rediss://` server's certificate must chain to (PEM), instead of
    /// the webpki roots: a private CA, as in-cluster Redis usually has.
    pub ca_file: Option<CaFile>,
}

/// Claims claimsmith sets itself (`mint.rs`, and `nbf` / `typ`, which a backend may
/// read as the token's own); `copy_claims`, `[token.static_claims]` and
/// `[token.secret_claims]` may not name them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "sub",
    "client_id",
    "iat",
    "exp",
    "nbf",
    "jti",
    "app_metadata",
    "client_metadata",
    "user_metadata",
    "typ",
];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub issuers: Vec<IssuerConfig>,
    pub sources: BTreeMap<String, SourceConfig>,
    pub cache: CacheConfig,
    pub token: TokenConfig,
    /// Sorted longest `path_prefix` first, so the first match is the longest.
    pub routes: Vec<RouteConfig>,
    /// The cache shared by replicas (docs/scaling.md); `None`: this process alone.
    pub shared: Option<SharedConfig>,
    /// `[forward_auth]`: the listener ingresses ask (docs/forward-auth.md); none
    /// without the table.
    pub forward_auth: Option<ForwardAuthConfig>,
    /// `[telemetry]`: trace context and span export (docs/operations.md, "Tracing");
    /// none without the table.
    pub telemetry: Option<TelemetryConfig>,
    /// Every file the configuration was read from besides the config file itself
    /// (secrets, keys, certificates, CA files, metadata files), as named (a symlink
    /// stays a symlink): `server` watches them with the config file and reloads when
    /// one changes.
    pub files: Vec<PathBuf>,
    /// Where the configuration was read from, for reloads and messages.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub token_cookie: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
    /// How long a client may take to send its request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Serve plain HTTP/1.1 with the hand-written fast path (`h1`); off, hyper
    /// serves every connection. Both run the same pipeline.
    pub fast_path: bool,
}

/// The listener's certificate chain and private key, as read when the configuration
/// was (a reload reads them again: a renewed certificate is picked up).
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate chain (PEM); holds at least one certificate.
    pub cert_pem: Arc<[u8]>,
    /// The private key (PEM); holds a key rustls can read.
    pub key_pem: Secret,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

/// A CA bundle a `ca_file` key names: its path, for messages, and the PEM it held
/// when the configuration was read (at least one certificate).
#[derive(Clone, PartialEq)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CaFile").field(&self.path).finish()
    }
}

/// Which headers name the request a forward-auth check is about
/// (docs/forward-auth.md, "Which request is checked").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckedHeaders {
    /// Whichever style is present; every description present must agree.
    Auto,
    /// `X-Original-Method` with `X-Original-URI` or `X-Original-URL` (nginx,
    /// ingress-nginx).
    Nginx,
    /// `X-Forwarded-Method` with `X-Forwarded-Uri` (Traefik).
    Traefik,
    /// The check's own method and path (Envoy `ext_authz`); any of the other
    /// headers is refused.
    Envoy,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Where spans are posted (the configured base with `/v1/traces`); `None`: the
    /// trace context is continued and logged, nothing exported.
    pub otlp_endpoint: Option<http::Uri>,
    pub service_name: String,
    /// The share of new traces recorded (a caller's sampled flag is followed).
    pub sample_ratio: f64,
    pub ca_file: Option<CaFile>,
}

#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    pub addr: SocketAddr,
    pub headers: CheckedHeaders,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub public_url: Option<String>,
    pub token: Option<Secret>,
    /// The bearer token of the push-invalidation hooks (docs/operations.md, "Push
    /// invalidation"); unset, the hooks answer 404.
    pub webhook_token: Option<Secret>,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    Uri(Url),
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksLocation,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub hmac_secret: Option<Secret>,
    pub metadata: Option<String>,
    pub ca_file: Option<CaFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Auth0(Auth0SourceConfig),
    Keycloak(KeycloakSourceConfig),
    Okta(OktaSourceConfig),
    File(FileSourceConfig),
    Http(HttpSourceConfig),
}

impl SourceConfig {
    /// The `kind` as written in the file, for metrics labels and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Auth0(_) => "auth0",
            SourceConfig::Keycloak(_) => "keycloak",
            SourceConfig::Okta(_) => "okta",
            SourceConfig::File(_) => "file",
            SourceConfig::Http(_) => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth0SourceConfig {
    pub domain: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub audience: String,
    pub max_requests_per_second: u32,
    pub timeout: Duration,
    pub ca_file: Option<CaFile>,
}

/// `kind = "keycloak"`: a realm's admin REST API, read with a confidential client's
/// service account (client credentials).
#[derive(Debug, Clone, PartialEq)]
pub struct KeycloakSourceConfig {
    /// The server, without `/realms`.
    pub base_url: Url,
    pub realm: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Client attributes: only keys with this prefix, the prefix removed.
    pub attribute_prefix: Option<String>,
    pub max_requests_per_second: u32,
    pub timeout: Duration,
    pub ca_file: Option<CaFile>,
}

/// `kind = "okta"`: an Okta org's management API, read with a service app's token
/// obtained with a `private_key_jwt` client assertion (RFC 7523).
#[derive(Debug, Clone, PartialEq)]
pub struct OktaSourceConfig {
    pub domain: String,
    /// `base_url`, else `https://{domain}`.
    pub base_url: Url,
    pub client_id: String,
    /// The RSA key the client assertions are signed with, parsed at load.
    pub private_key: ClientKey,
    pub private_key_file: PathBuf,
    pub scopes: Vec<String>,
    pub max_requests_per_second: u32,
    pub timeout: Duration,
    pub ca_file: Option<CaFile>,
}

/// A private key that authenticates claimsmith to an API (`metadata.NAME.private_key_file`).
/// `Debug` shows only its public `kid`.
#[derive(Debug, Clone)]
pub struct ClientKey(pub Arc<SigningKey>);

impl PartialEq for ClientKey {
    /// The same public key (RFC 7638 thumbprint) is the same key pair: a reload with
    /// the key unchanged keeps the source's cache.
    fn eq(&self, other: &Self) -> bool {
        self.0.kid() == other.0.kid()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSourceConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpSourceConfig {
    pub user_url: String,
    pub client_url: String,
    pub token: Option<Secret>,
    pub ca_file: Option<CaFile>,
    pub max_requests_per_second: u32,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_stale: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

/// Where the internal token goes on the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// Any other header, carrying the bare token.
    Custom(HeaderName),
}

impl TokenHeader {
    pub fn name(&self) -> HeaderName {
        match self {
            TokenHeader::Authorization => http::header::AUTHORIZATION,
            TokenHeader::Custom(h) => h.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub issuer: String,
    pub ttl: Duration,
    pub algorithm: Algorithm,
    /// The first key signs; all are published. Empty: an ephemeral key.
    pub keys: Vec<Arc<SigningKey>>,
    pub key_files: Vec<PathBuf>,
    pub header: TokenHeader,
    pub copy_claims: Vec<String>,
    /// `[token.static_claims]` and `[token.secret_claims]`, rendered at load.
    pub extra_claims: ExtraClaims,
}

/// `[token.static_claims]` and `[token.secret_claims]`, rendered once at load as the
/// JSON object members every internal token carries (`"deployment":"eu-prod",...`):
/// the minter splices the text, so they cost no work per request. The text holds
/// the secret claims' values, so it is a [`Secret`] and `Debug` shows only the names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExtraClaims {
    names: Vec<String>,
    members: Option<Secret>,
}

impl ExtraClaims {
    /// From (name, value) pairs, static then secret; names are already checked to
    /// be distinct and not claimsmith's own.
    pub(crate) fn render(claims: &[(String, serde_json::Value)]) -> ExtraClaims {
        let mut text = String::new();
        for (name, value) in claims {
            if !text.is_empty() {
                text.push(',');
            }
            // A String and a Value always serialize.
            text.push_str(&serde_json::Value::String(name.clone()).to_string());
            text.push(':');
            text.push_str(&value.to_string());
        }
        ExtraClaims {
            names: claims.iter().map(|(n, _)| n.clone()).collect(),
            members: (!text.is_empty()).then(|| Secret::new(text)),
        }
    }
    /// The members' JSON text, `""` when there are none. Holds secret values: never
    /// log it.
    pub(crate) fn members_json(&self) -> &str {
        self.members.as_ref().map_or("", Secret::expose)
    }
    /// The claims' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl fmt::Debug for ExtraClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraClaims").field("names", &self.names).finish_non_exhaustive()
    }
}

/// `route.max_body_bytes` when not set: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Off,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Index in the file, for messages and metrics.
    pub name: Arc<str>,
    pub path_prefix: String,
    pub upstream: Url,
    pub ca_file: Option<CaFile>,
    pub audience: Option<String>,
    pub auth: AuthMode,
    pub strip_prefix: bool,
    pub app_metadata: Option<Vec<String>>,
    pub client_metadata: Option<Vec<String>>,
    /// The user_metadata keys this route's internal token carries (empty: all);
    /// `None`: no `user_metadata` claim.
    pub user_metadata: Option<Vec<String>>,
    /// Whether WebSocket upgrades are forwarded (docs/security.md, "Upgrades").
    pub websocket: bool,
    /// Largest request body forwarded; a larger one is refused with 413.
    pub max_body_bytes: u64,
    /// `[[route.require]]` and `[[route.deny]]`, validated (docs/configuration.md).
    pub rules: crate::rules::Rules,
}

impl Config {
    /// The files a change to which means a reload (docs/operations.md, "Reload"): the
    /// config file and every file it names, but metadata files, which their source
    /// re-reads by itself.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let metadata: Vec<&Path> = self
            .sources
            .values()
            .filter_map(|s| match s {
                SourceConfig::File(f) => Some(f.path.as_path()),
                _ => None,
            })
            .collect();
        let mut out: Vec<PathBuf> = self.path.iter().cloned().collect();
        for f in &self.files {
            if !metadata.contains(&f.as_path()) && !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// Reads and validates the file at `path`, and every file it names, through
    /// `host` (`app::System` reads the machine's). A missing or unreadable file is an
    /// invalid config (docs/operations.md).
    pub fn load(path: &Path, host: &dyn Host) -> Result<Config, ConfigErrors> {
        let text = host.read_text(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                reason: format!("cannot read the config file: {e}"),
            }])
        })?;
        let base = path.parent().map(Path::to_path_buf);
        let mut cfg = Self::parse_with_base(&text, base, host)?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates TOML text, reading the files it names through `host`;
    /// relative paths resolve against the working dir.
    pub fn parse(text: &str, host: &dyn Host) -> Result<Config, ConfigErrors> {
        Self::parse_with_base(text, None, host)
    }

    fn parse_with_base(text: &str, base: Option<PathBuf>, host: &dyn Host) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![ConfigError { key: toml_error_key(&e), reason: toml_error_reason(&e) }]))?;
        let base = PathBase(base.filter(|b| !b.as_os_str().is_empty()));
        let mut errs = Errors::new(host);
        let listen = validate_listen(raw.listen, &base, &mut errs);
        let admin = validate_admin(raw.admin, &base, &mut errs);
        let sources = validate_sources(raw.metadata, &base, &mut errs);
        let issuers = validate_issuers(raw.issuers, &sources, &base, &mut errs);
        let cache = validate_cache(raw.cache, &mut errs);
        let token = validate_token(raw.token, &base, &mut errs);
        let routes = validate_routes(raw.routes, &issuers, &base, &mut errs);
        let shared = raw.shared.map(|s| validate_shared(s, &base, &mut errs));
        let forward_auth = raw.forward_auth.map(|f| validate_forward_auth(f, &listen, &admin, &mut errs));
        let telemetry = raw.telemetry.map(|t| validate_telemetry(t, &base, &mut errs));
        // RFC 8725 §3.12: our own tokens must never pass as ID tokens.
        if issuers.iter().any(|i| i.issuer == token.issuer) {
            errs.push(
                "token.issuer",
                "must differ from every [[issuer]].issuer, or claimsmith's own tokens would be accepted as ID tokens",
            );
        }
        if !errs.found.is_empty() {
            return Err(ConfigErrors(errs.found));
        }
        let files = errs.files;
        Ok(Config {
            listen,
            admin,
            issuers,
            sources,
            cache,
            token,
            routes,
            shared,
            forward_auth,
            telemetry,
            files,
            path: None,
        })
    }

    /// Whether users are read with their user_metadata: some route forwards it or
    /// some rule reads it. A rule on a route that does not forward it still gets it,
    /// rather than a `{}` that would make a deny rule never hold.
    pub(crate) fn fetches_user_metadata(&self) -> bool {
        self.routes.iter().any(|r| r.user_metadata.is_some() || r.rules.reads(crate::rules::Source::UserMetadata))
    }

    /// One line for `claimsmith check`.
    pub fn summary(&self) -> String {
        let forward_auth = match &self.forward_auth {
            Some(f) => format!(", forward-auth on {}", f.addr),
            None => String::new(),
        };
        format!(
            "config ok: {} route(s), {} issuer(s), {} metadata source(s), {} signing key(s) ({:?}), proxy on {}, admin on {}{forward_auth}",
            self.routes.len(),
            self.issuers.len(),
            self.sources.len(),
            self.token.keys.len().max(1),
            self.token.algorithm,
            self.listen.addr,
            self.admin.addr
        )
    }
}

fn toml_error_key(e: &toml::de::Error) -> String {
    // toml names the unknown or mistyped key in its message; keep it as the key when
    // it can be found, else point at the file position.
    let msg = e.message();
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
        && end > 0
    {
        return rest[..end].to_string();
    }
    match e.span() {
        Some(span) => format!("config (byte {})", span.start),
        None => "config".to_string(),
    }
}

fn toml_error_reason(e: &toml::de::Error) -> String {
    e.to_string().trim().replace('\n', " | ")
}
