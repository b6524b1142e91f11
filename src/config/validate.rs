//! Validation: from the raw file to the typed configuration, collecting every problem
//! with the key it is about. Reads the files and environment variables secrets and
//! keys come from.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use url::Url;

use super::raw::*;
use super::*;
use crate::host::Host;
use crate::keys::SigningKey;

/// Collects errors while validating; each names its key. Also notes every file the
/// configuration is read from, so the running process can watch them
/// ([`Config::files`]).
/// What validation collects: the errors found, the files the configuration was read
/// from, and the [`Host`] it reads them through (validation itself never touches the
/// machine: see `crate::host`).
pub(super) struct Errors<'h> {
    pub(super) found: Vec<ConfigError>,
    pub(super) files: Vec<PathBuf>,
    host: &'h dyn Host,
}

impl<'h> Errors<'h> {
    pub(super) fn new(host: &'h dyn Host) -> Self {
        Errors { found: Vec::new(), files: Vec::new(), host }
    }

    pub(super) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.found.push(ConfigError { key: key.into(), reason: reason.into() });
    }

    /// Reads the file at `path`, noting that the configuration depends on it (a change
    /// to it means a reload: docs/operations.md, "Reload").
    pub(super) fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.files.push(path.to_path_buf());
        self.host.read(path)
    }

    /// [`Errors::read`] as UTF-8 text.
    pub(super) fn read_text(&mut self, path: &Path) -> std::io::Result<String> {
        self.files.push(path.to_path_buf());
        self.host.read_text(path)
    }

    /// The environment variable `name`, when set and UTF-8.
    pub(super) fn env(&self, name: &str) -> Option<String> {
        self.host.env(name)
    }
}

/// Resolves relative paths in the config against the config file's directory.
pub(super) struct PathBase(pub(super) Option<PathBuf>);

impl PathBase {
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        match &self.0 {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`.
///
/// ```
/// use std::time::Duration;
/// use claimsmith::config::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(parse_duration("5 minutes").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a duration; write a whole number and a unit, like \"500ms\", \"30s\", \"5m\" or \"1h\"")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!("`{s}` has an unknown unit; use ms, s, m or h (like \"30s\")"));
        }
    };
    Ok(d)
}

pub(super) fn duration(key: &str, v: Option<String>, default: Duration, errs: &mut Errors) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(&s) {
            Ok(d) => d,
            Err(e) => {
                errs.push(key, e);
                default
            }
        },
    }
}

pub(super) fn socket_addr(key: &str, v: Option<String>, default: &str, errs: &mut Errors) -> SocketAddr {
    let s = v.unwrap_or_else(|| default.to_string());
    match s.parse() {
        Ok(a) => a,
        Err(_) => {
            errs.push(key, format!("`{s}` is not an address like \"127.0.0.1:8080\""));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

/// Reads a secret from `*_env` or `*_file`; exactly one may be set.
pub(super) fn secret(
    prefix: &str,
    env: Option<String>,
    file: Option<PathBuf>,
    base: &PathBase,
    errs: &mut Errors,
) -> Option<Secret> {
    match (env, file) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            errs.push(format!("{prefix}_env"), format!("set only one of {prefix}_env and {prefix}_file"));
            None
        }
        (Some(var), None) => match errs.env(&var) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            Some(_) => {
                errs.push(format!("{prefix}_env"), format!("environment variable {var} is empty"));
                None
            }
            None => {
                errs.push(format!("{prefix}_env"), format!("environment variable {var} is not set"));
                None
            }
        },
        (None, Some(path)) => {
            let path = base.resolve(&path);
            match errs.read_text(&path) {
                // Kubernetes Secret mounts and editors add a trailing newline.
                Ok(v) if !v.trim_end_matches(['\r', '\n']).is_empty() => {
                    Some(Secret::new(v.trim_end_matches(['\r', '\n'])))
                }
                Ok(_) => {
                    errs.push(format!("{prefix}_file"), format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    errs.push(format!("{prefix}_file"), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }
    }
}

/// Reads the CA bundle a `ca_file` key names: it must hold at least one PEM
/// certificate, or no TLS connection through it could ever be trusted.
pub(super) fn ca_file(key: &str, p: Option<PathBuf>, base: &PathBase, errs: &mut Errors) -> Option<CaFile> {
    let path = base.resolve(&p?);
    match errs.read(&path) {
        Ok(pem) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            if CertificateDer::pem_slice_iter(&pem).flatten().next().is_none() {
                errs.push(key, format!("{} holds no PEM certificate", path.display()));
            }
            Some(CaFile { path, pem: pem.into() })
        }
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Reads the listener's certificate chain and private key. Messages name the file
/// and what is wrong with it, never the key's content.
fn tls_files(cert_file: PathBuf, key_file: PathBuf, errs: &mut Errors) -> Option<TlsFiles> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read_pem(errs, ("listen.tls_cert_file", &cert_file), "certificate", |pem| {
        CertificateDer::pem_slice_iter(pem).flatten().next().is_some()
    });
    let key_pem = read_pem(errs, ("listen.tls_key_file", &key_file), "private key", |pem| {
        PrivateKeyDer::from_pem_slice(pem).is_ok()
    })
    .map(|pem| Secret::new(String::from_utf8_lossy(&pem)));
    Some(TlsFiles { cert_file, key_file, cert_pem: cert_pem?.into(), key_pem: key_pem? })
}

/// The content of the file `key` names when `holds` finds a PEM `what` in it; else
/// an error naming the file and what is wrong (never the content).
fn read_pem(
    errs: &mut Errors,
    (key, path): (&'static str, &Path),
    what: &str,
    holds: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    match errs.read(path) {
        Ok(pem) if holds(&pem) => Some(pem),
        Ok(_) => {
            errs.push(key, format!("{} holds no PEM {what}", path.display()));
            None
        }
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

pub(super) fn validate_listen(raw: RawListen, base: &PathBase, errs: &mut Errors) -> ListenConfig {
    let addr = socket_addr("listen.addr", raw.addr, "0.0.0.0:8080", errs);
    let tls = match (raw.tls_cert_file, raw.tls_key_file) {
        (None, None) => None,
        // Relative to the config file's folder, as every path in it is.
        (Some(c), Some(k)) => tls_files(base.resolve(&c), base.resolve(&k), errs),
        (Some(_), None) => {
            errs.push("listen.tls_key_file", "tls_cert_file is set, so tls_key_file is required too");
            None
        }
        (None, Some(_)) => {
            errs.push("listen.tls_cert_file", "tls_key_file is set, so tls_cert_file is required too");
            None
        }
    };
    if let Some(c) = &raw.token_cookie
        && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)))
    {
        errs.push("listen.token_cookie", format!("`{c}` is not a valid cookie name"));
    }
    let mut trusted = Vec::new();
    for (i, s) in raw.trusted_proxies.iter().enumerate() {
        let parsed = s.parse::<IpNet>().or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => {
                errs.push(format!("listen.trusted_proxies[{i}]"), format!("`{s}` is not a CIDR like \"10.0.0.0/8\""))
            }
        }
    }
    let max_header_bytes = match raw.max_header_bytes {
        None => 32 * 1024,
        Some(n) if (1024..=1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            errs.push("listen.max_header_bytes", format!("{n} is outside 1024..=1048576"));
            32 * 1024
        }
    };
    let request_timeout = duration("listen.request_timeout", raw.request_timeout, Duration::from_secs(30), errs);
    if request_timeout.is_zero() {
        errs.push("listen.request_timeout", "must be more than zero");
    }
    let header_read_timeout =
        duration("listen.header_read_timeout", raw.header_read_timeout, Duration::from_secs(10), errs);
    if header_read_timeout.is_zero() {
        errs.push("listen.header_read_timeout", "must be more than zero");
    }
    ListenConfig {
        addr,
        tls,
        token_cookie: raw.token_cookie,
        trusted_proxies: trusted,
        max_header_bytes,
        request_timeout,
        header_read_timeout,
        fast_path: raw.fast_path.unwrap_or(true),
    }
}

pub(super) fn validate_admin(raw: RawAdmin, base: &PathBase, errs: &mut Errors) -> AdminConfig {
    let addr = socket_addr("admin.addr", raw.addr, "127.0.0.1:9090", errs);
    if let Some(u) = &raw.public_url {
        match Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => {}
            _ => errs.push("admin.public_url", format!("`{u}` is not an http(s) URL")),
        }
    }
    let token = secret("admin.token", raw.token_env, raw.token_file, base, errs);
    let webhook_token = secret("admin.webhook_token", raw.webhook_token_env, raw.webhook_token_file, base, errs);
    AdminConfig { addr, public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_string()), token, webhook_token }
}

pub(super) fn parse_algorithm(s: &str) -> Option<Algorithm> {
    use std::str::FromStr;
    // `none` is not an Algorithm at all, so it can never be configured.
    Algorithm::from_str(s).ok()
}

pub(super) fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

pub(super) fn validate_issuers(
    raw: Vec<RawIssuer>,
    sources: &BTreeMap<String, SourceConfig>,
    base: &PathBase,
    errs: &mut Errors,
) -> Vec<IssuerConfig> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("issuer[{i}].{f}");
        let issuer = match r.issuer {
            Some(s) => match Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => s,
                _ => {
                    errs.push(k("issuer"), format!("`{s}` is not an http(s) URL"));
                    s
                }
            },
            None => {
                errs.push(k("issuer"), "is required (the exact `iss` of the tokens)");
                String::new()
            }
        };
        if !seen.insert(issuer.clone()) {
            errs.push(k("issuer"), format!("`{issuer}` is configured twice"));
        }
        if r.audiences.is_empty() {
            errs.push(k("audiences"), "needs at least one audience (the application's client id)");
        }
        let jwks = match r.jwks_uri {
            None => JwksLocation::Discovery,
            Some(s) => match Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => JwksLocation::Uri(u),
                _ => {
                    errs.push(k("jwks_uri"), format!("`{s}` is not an http(s) URL"));
                    JwksLocation::Discovery
                }
            },
        };
        let hmac_secret = secret(&k("hmac_secret"), r.hmac_secret_env, r.hmac_secret_file, base, errs);
        let mut algorithms = Vec::new();
        for (j, a) in r.algorithms.unwrap_or_else(|| vec!["RS256".into()]).iter().enumerate() {
            match parse_algorithm(a) {
                Some(alg) if is_hmac(alg) && hmac_secret.is_none() => errs.push(
                    format!("issuer[{i}].algorithms[{j}]"),
                    format!("{a} needs hmac_secret_env or hmac_secret_file on this issuer"),
                ),
                Some(alg) => algorithms.push(alg),
                None => errs.push(
                    format!("issuer[{i}].algorithms[{j}]"),
                    format!("`{a}` is not a supported algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"),
                ),
            }
        }
        if algorithms.is_empty() {
            errs.push(k("algorithms"), "needs at least one algorithm");
        }
        let leeway = duration(&k("leeway"), r.leeway, Duration::from_secs(30), errs);
        if leeway > Duration::from_secs(600) {
            errs.push(k("leeway"), "more than 10 minutes of clock skew is not allowed");
        }
        if let Some(m) = &r.metadata
            && !sources.contains_key(m)
        {
            errs.push(k("metadata"), format!("no [metadata.{m}] source is configured"));
        }
        let ca_file = ca_file(&k("ca_file"), r.ca_file, base, errs);
        out.push(IssuerConfig {
            issuer,
            audiences: r.audiences,
            jwks,
            algorithms,
            leeway,
            hmac_secret,
            metadata: r.metadata,
            ca_file,
        });
    }
    out
}

pub(super) fn validate_sources(
    raw: BTreeMap<String, RawSource>,
    base: &PathBase,
    errs: &mut Errors,
) -> BTreeMap<String, SourceConfig> {
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let k = |f: &str| format!("metadata.{name}.{f}");
        // Keys that belong to another kind are reported rather than silently ignored.
        let set: Vec<(&str, bool)> = vec![
            ("domain", r.domain.is_some()),
            ("base_url", r.base_url.is_some()),
            ("client_id", r.client_id.is_some()),
            ("client_secret_env", r.client_secret_env.is_some()),
            ("client_secret_file", r.client_secret_file.is_some()),
            ("audience", r.audience.is_some()),
            ("realm", r.realm.is_some()),
            ("attribute_prefix", r.attribute_prefix.is_some()),
            ("private_key_file", r.private_key_file.is_some()),
            ("scopes", r.scopes.is_some()),
            ("max_requests_per_second", r.max_requests_per_second.is_some()),
            ("timeout", r.timeout.is_some()),
            ("ca_file", r.ca_file.is_some()),
            ("path", r.path.is_some()),
            ("user_url", r.user_url.is_some()),
            ("client_url", r.client_url.is_some()),
            ("token_env", r.token_env.is_some()),
            ("token_file", r.token_file.is_some()),
        ];
        let allowed: &[&str] = match r.kind.as_deref() {
            Some("auth0") => &[
                "domain",
                "base_url",
                "client_id",
                "client_secret_env",
                "client_secret_file",
                "audience",
                "max_requests_per_second",
                "timeout",
                "ca_file",
            ],
            Some("keycloak") => &[
                "base_url",
                "realm",
                "client_id",
                "client_secret_env",
                "client_secret_file",
                "attribute_prefix",
                "max_requests_per_second",
                "timeout",
                "ca_file",
            ],
            Some("okta") => &[
                "domain",
                "base_url",
                "client_id",
                "private_key_file",
                "scopes",
                "max_requests_per_second",
                "timeout",
                "ca_file",
            ],
            Some("file") => &["path"],
            Some("http") => {
                &["user_url", "client_url", "token_env", "token_file", "ca_file", "max_requests_per_second", "timeout"]
            }
            Some(other) => {
                errs.push(k("kind"), format!("`{other}` is not a source kind (auth0, keycloak, okta, file or http)"));
                continue;
            }
            None => {
                errs.push(k("kind"), "is required (auth0, keycloak, okta, file or http)");
                continue;
            }
        };
        let kind = r.kind.clone().unwrap_or_default();
        for (key, present) in &set {
            if *present && !allowed.contains(key) {
                errs.push(k(key), format!("is not a key of a `{kind}` source"));
            }
        }
        let rps = match r.max_requests_per_second {
            None => 5,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                errs.push(k("max_requests_per_second"), format!("{n} is outside 1..=10000"));
                5
            }
        };
        let timeout = duration(&k("timeout"), r.timeout.clone(), Duration::from_secs(5), errs);
        let ca_file = ca_file(&k("ca_file"), r.ca_file.clone(), base, errs);
        let src = match kind.as_str() {
            "auth0" => {
                let domain = r.domain.clone().unwrap_or_default();
                if domain.is_empty() || domain.contains('/') || domain.contains(':') && r.base_url.is_none() {
                    errs.push(k("domain"), "is required: the tenant's host name, like \"tenant.eu.auth0.com\"");
                }
                let base_url = match &r.base_url {
                    Some(u) => match Url::parse(u) {
                        Ok(p) if matches!(p.scheme(), "http" | "https") => p,
                        _ => {
                            errs.push(k("base_url"), format!("`{u}` is not an http(s) URL"));
                            continue;
                        }
                    },
                    None => match Url::parse(&format!("https://{domain}")) {
                        Ok(u) => u,
                        Err(_) => continue,
                    },
                };
                let client_id = r.client_id.clone().unwrap_or_default();
                if client_id.is_empty() {
                    errs.push(k("client_id"), "is required (the machine-to-machine application's client id)");
                }
                let client_secret =
                    secret(&k("client_secret"), r.client_secret_env.clone(), r.client_secret_file.clone(), base, errs);
                let Some(client_secret) = client_secret else {
                    if r.client_secret_env.is_none() && r.client_secret_file.is_none() {
                        errs.push(k("client_secret_env"), "one of client_secret_env or client_secret_file is required");
                    }
                    continue;
                };
                let audience = r.audience.clone().unwrap_or_else(|| format!("https://{domain}/api/v2/"));
                SourceConfig::Auth0(Auth0SourceConfig {
                    domain,
                    base_url,
                    client_id,
                    client_secret,
                    audience,
                    max_requests_per_second: rps,
                    timeout,
                    ca_file,
                })
            }
            "keycloak" => match keycloak_source(&r, &k, base, rps, timeout, ca_file, errs) {
                Some(c) => SourceConfig::Keycloak(c),
                None => continue,
            },
            "okta" => match okta_source(&r, &k, base, rps, timeout, ca_file, errs) {
                Some(c) => SourceConfig::Okta(c),
                None => continue,
            },
            "file" => match &r.path {
                Some(p) => SourceConfig::File(FileSourceConfig { path: base.resolve(p) }),
                None => {
                    errs.push(k("path"), "is required for a file source");
                    continue;
                }
            },
            _ => {
                let mut url = |key: &str, v: &Option<String>, placeholder: &str| -> String {
                    match v {
                        Some(u) if u.contains(placeholder) => {
                            let probe = u.replace(placeholder, "x");
                            match Url::parse(&probe) {
                                Ok(p) if matches!(p.scheme(), "http" | "https") => {}
                                _ => errs.push(k(key), format!("`{u}` is not an http(s) URL")),
                            }
                            u.clone()
                        }
                        Some(u) => {
                            errs.push(k(key), format!("`{u}` must contain {placeholder}"));
                            String::new()
                        }
                        None => {
                            errs.push(k(key), "is required for an http source");
                            String::new()
                        }
                    }
                };
                let user_url = url("user_url", &r.user_url, "{user_id}");
                let client_url = url("client_url", &r.client_url, "{client_id}");
                let token = secret(&k("token"), r.token_env.clone(), r.token_file.clone(), base, errs);
                SourceConfig::Http(HttpSourceConfig {
                    user_url,
                    client_url,
                    token,
                    ca_file,
                    max_requests_per_second: rps,
                    timeout,
                })
            }
        };
        out.insert(name, src);
    }
    out
}

/// An http(s) URL in `key`, or an error naming it.
fn http_url(key: String, v: &str, errs: &mut Errors) -> Option<Url> {
    match Url::parse(v) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => Some(p),
        _ => {
            errs.push(key, format!("`{v}` is not an http(s) URL"));
            None
        }
    }
}

/// A required, non-empty string key.
fn required(key: String, v: &Option<String>, what: &str, errs: &mut Errors) -> String {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => {
            errs.push(key, format!("is required ({what})"));
            String::new()
        }
    }
}

/// `kind = "keycloak"` (docs/configuration.md, "[metadata.NAME]").
fn keycloak_source(
    r: &RawSource,
    k: &dyn Fn(&str) -> String,
    base: &PathBase,
    max_requests_per_second: u32,
    timeout: Duration,
    ca_file: Option<CaFile>,
    errs: &mut Errors,
) -> Option<KeycloakSourceConfig> {
    let base_url = match &r.base_url {
        Some(u) => http_url(k("base_url"), u, errs),
        None => {
            errs.push(
                k("base_url"),
                "is required: the Keycloak server, without /realms, like \"https://sso.example.com\"",
            );
            None
        }
    };
    if let Some(u) = &base_url
        && u.path().trim_end_matches('/').ends_with("/realms")
    {
        errs.push(k("base_url"), "must not end in /realms: give the server's address, the realm goes in `realm`");
    }
    let realm = required(k("realm"), &r.realm, "the realm the users and clients are in", errs);
    let client_id = required(k("client_id"), &r.client_id, "a confidential client with a service account", errs);
    let client_secret =
        secret(&k("client_secret"), r.client_secret_env.clone(), r.client_secret_file.clone(), base, errs);
    if client_secret.is_none() && r.client_secret_env.is_none() && r.client_secret_file.is_none() {
        errs.push(k("client_secret_env"), "one of client_secret_env or client_secret_file is required");
    }
    let attribute_prefix = match &r.attribute_prefix {
        Some(p) if p.is_empty() => {
            errs.push(k("attribute_prefix"), "must not be empty (leave it out to keep every attribute)");
            None
        }
        p => p.clone(),
    };
    Some(KeycloakSourceConfig {
        base_url: base_url?,
        realm,
        client_id,
        client_secret: client_secret?,
        attribute_prefix,
        max_requests_per_second,
        timeout,
        ca_file,
    })
}

/// The scopes an Okta source asks for when `scopes` is not set.
const OKTA_DEFAULT_SCOPES: &[&str] = &["okta.users.read", "okta.apps.read"];

/// `kind = "okta"` (docs/configuration.md, "[metadata.NAME]"). Reads and parses the
/// private key now, so a missing or broken key stops `claimsmith check` and a reload.
fn okta_source(
    r: &RawSource,
    k: &dyn Fn(&str) -> String,
    base: &PathBase,
    max_requests_per_second: u32,
    timeout: Duration,
    ca_file: Option<CaFile>,
    errs: &mut Errors,
) -> Option<OktaSourceConfig> {
    let domain = r.domain.clone().unwrap_or_default();
    if domain.is_empty() && r.base_url.is_none() {
        errs.push(k("domain"), "is required: the org's host name, like \"acme.okta.com\"");
    } else if domain.contains(['/', ':', ' ']) {
        errs.push(
            k("domain"),
            format!("`{domain}` is not a host name (like \"acme.okta.com\"); use base_url for a URL"),
        );
    }
    let base_url = match &r.base_url {
        Some(u) => http_url(k("base_url"), u, errs),
        None if domain.is_empty() => None,
        None => http_url(k("domain"), &format!("https://{domain}"), errs),
    };
    let client_id = required(k("client_id"), &r.client_id, "the service app's client id", errs);
    let scopes: Vec<String> = match &r.scopes {
        None => OKTA_DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
        Some(v) => {
            if v.is_empty() {
                errs.push(k("scopes"), "needs at least one scope (okta.users.read, okta.apps.read)");
            }
            for (i, sc) in v.iter().enumerate() {
                if sc.is_empty() || !sc.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                    errs.push(format!("{}[{i}]", k("scopes")), format!("`{sc}` is not a scope name"));
                }
            }
            v.clone()
        }
    };
    let private_key = match &r.private_key_file {
        None => {
            errs.push(k("private_key_file"), "is required: the PEM private key registered with the service app");
            None
        }
        Some(p) => {
            let path = base.resolve(p);
            // Errors name the file and why, never its content.
            match errs.read(&path) {
                Err(e) => {
                    errs.push(k("private_key_file"), format!("cannot read {}: {e}", path.display()));
                    None
                }
                Ok(pem) => match SigningKey::from_pem(&pem) {
                    Ok(key) if key.algorithm() == Algorithm::RS256 => Some((ClientKey(Arc::new(key)), path)),
                    Ok(key) => {
                        errs.push(
                            k("private_key_file"),
                            format!(
                                "{} holds a {:?} key; Okta's private_key_jwt needs an RSA key (RS256)",
                                path.display(),
                                key.algorithm()
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        errs.push(k("private_key_file"), format!("{}: {e}", path.display()));
                        None
                    }
                },
            }
        }
    };
    let (private_key, private_key_file) = private_key?;
    Some(OktaSourceConfig {
        domain,
        base_url: base_url?,
        client_id,
        private_key,
        private_key_file,
        scopes,
        max_requests_per_second,
        timeout,
        ca_file,
    })
}

pub(super) fn validate_cache(raw: RawCache, errs: &mut Errors) -> CacheConfig {
    let ttl = duration("cache.ttl", raw.ttl, Duration::from_secs(300), errs);
    if ttl.is_zero() {
        errs.push("cache.ttl", "must be more than zero");
    }
    let max_stale = duration("cache.max_stale", raw.max_stale, Duration::from_secs(3600), errs);
    let negative_ttl = duration("cache.negative_ttl", raw.negative_ttl, Duration::from_secs(30), errs);
    let max_entries = match raw.max_entries {
        None => 100_000,
        Some(n) if n >= 2 => n as u64,
        Some(n) => {
            errs.push("cache.max_entries", format!("{n} is too small; at least 2"));
            100_000
        }
    };
    CacheConfig { ttl, max_stale, negative_ttl, max_entries }
}

pub(super) fn validate_token(raw: RawToken, base: &PathBase, errs: &mut Errors) -> TokenConfig {
    let issuer = raw.issuer.unwrap_or_else(|| "https://claimsmith.internal/".to_string());
    if issuer.is_empty() {
        errs.push("token.issuer", "must not be empty");
    }
    let ttl = duration("token.ttl", raw.ttl, Duration::from_secs(300), errs);
    if ttl < Duration::from_secs(2) {
        errs.push("token.ttl", "must be at least 2s");
    }
    let algorithm = match raw.algorithm.as_deref().unwrap_or("EdDSA") {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        other => {
            errs.push("token.algorithm", format!("`{other}` is not one of EdDSA, ES256, RS256"));
            Algorithm::EdDSA
        }
    };
    let mut keys = Vec::new();
    let mut key_files = Vec::new();
    for (i, p) in raw.key_files.iter().enumerate() {
        let key = format!("token.key_files[{i}]");
        let path = base.resolve(p);
        match errs.read(&path) {
            Ok(pem) => match SigningKey::from_pem(&pem) {
                Ok(k) => {
                    if i == 0 && k.algorithm() != algorithm {
                        errs.push(
                            key,
                            format!(
                                "the first key signs, so it must be a {algorithm:?} key, but {} holds a {:?} key",
                                path.display(),
                                k.algorithm()
                            ),
                        );
                    } else {
                        keys.push(Arc::new(k));
                    }
                }
                Err(e) => errs.push(key, format!("{}: {e}", path.display())),
            },
            Err(e) => errs.push(key, format!("cannot read {}: {e}", path.display())),
        }
        key_files.push(path);
    }
    let header = match raw.header.as_deref() {
        None => TokenHeader::Authorization,
        Some(h) if h.eq_ignore_ascii_case("authorization") => TokenHeader::Authorization,
        Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) if crate::wire::hygiene::is_hop_by_hop(n.as_str()) => {
                errs.push("token.header", format!("`{h}` is a hop-by-hop header"));
                TokenHeader::Authorization
            }
            Ok(n) => TokenHeader::Custom(n),
            Err(_) => {
                errs.push("token.header", format!("`{h}` is not a valid header name"));
                TokenHeader::Authorization
            }
        },
    };
    let copy_claims = raw
        .copy_claims
        .unwrap_or_else(|| vec!["email".into(), "email_verified".into(), "name".into(), "org_id".into()]);
    for (i, c) in copy_claims.iter().enumerate() {
        if RESERVED_CLAIMS.contains(&c.as_str()) {
            errs.push(
                format!("token.copy_claims[{i}]"),
                format!("`{c}` is set by claimsmith itself and cannot be copied"),
            );
        }
    }
    let extra_claims = extra_claims(raw.static_claims, raw.secret_claims, &copy_claims, base, errs);
    TokenConfig { issuer, ttl, algorithm, keys, key_files, header, copy_claims, extra_claims }
}

/// `[token.static_claims]` and `[token.secret_claims]`: every name free (not one
/// claimsmith sets, not copied from the ID token, not in both tables), every secret
/// read now, so a missing one fails the start or the reload. No message holds a
/// secret's value.
fn extra_claims(
    statics: Option<BTreeMap<String, toml::Value>>,
    secrets: Option<BTreeMap<String, RawSecretClaim>>,
    copy_claims: &[String],
    base: &PathBase,
    errs: &mut Errors,
) -> ExtraClaims {
    let (statics, secrets) = (statics.unwrap_or_default(), secrets.unwrap_or_default());
    let mut claims = Vec::with_capacity(statics.len() + secrets.len());
    let name_ok = |key: &str, name: &str, errs: &mut Errors| -> bool {
        let problem = if name.is_empty() {
            Some("a claim name must not be empty".to_string())
        } else if RESERVED_CLAIMS.contains(&name) {
            Some(format!("`{name}` is set by claimsmith itself"))
        } else if copy_claims.iter().any(|c| c == name) {
            Some(format!("`{name}` is also in token.copy_claims"))
        } else {
            None
        };
        match problem {
            Some(p) => errs.push(key, p),
            None => return true,
        }
        false
    };
    for (name, value) in statics {
        let key = format!("token.static_claims.{name}");
        if !name_ok(&key, &name, errs) {
            continue;
        }
        match toml_to_json(value) {
            Ok(v) => claims.push((name, v)),
            Err(why) => errs.push(key, why),
        }
    }
    for (name, raw) in secrets {
        let key = format!("token.secret_claims.{name}");
        if claims.iter().any(|(n, _)| *n == name) {
            errs.push(key, format!("`{name}` is also in token.static_claims"));
            continue;
        }
        if !name_ok(&key, &name, errs) {
            continue;
        }
        if let Some(value) = secret_claim(&key, raw, base, errs) {
            claims.push((name, serde_json::Value::String(value.expose().to_string())));
        }
    }
    ExtraClaims::render(&claims)
}

/// One `[token.secret_claims]` value: `{ env = "NAME" }` or `{ file = "PATH" }` (the
/// content, one trailing newline dropped); empty or missing is an error.
fn secret_claim(key: &str, raw: RawSecretClaim, base: &PathBase, errs: &mut Errors) -> Option<Secret> {
    match (raw.env, raw.file) {
        (None, None) => {
            errs.push(key, "set env = \"NAME\" or file = \"PATH\"");
            None
        }
        (Some(_), Some(_)) => {
            errs.push(key, "set only one of env and file");
            None
        }
        (Some(var), None) => match errs.env(&var) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            Some(_) => {
                errs.push(key, format!("environment variable {var} is empty"));
                None
            }
            None => {
                errs.push(key, format!("environment variable {var} is not set (or not UTF-8)"));
                None
            }
        },
        (None, Some(path)) => {
            let path = base.resolve(&path);
            match errs.read_text(&path) {
                Ok(v) => {
                    // Editors and Kubernetes Secret mounts end a file with a newline;
                    // only that one is not part of the value.
                    let v = v.strip_suffix('\n').map_or(v.as_str(), |v| v.strip_suffix('\r').unwrap_or(v));
                    if v.is_empty() {
                        errs.push(key, format!("{} is empty", path.display()));
                        return None;
                    }
                    Some(Secret::new(v))
                }
                // The I/O error names the problem, never the content.
                Err(e) => {
                    errs.push(key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }
    }
}

/// A TOML value as JSON: a date-time becomes its RFC 3339 text; a float JSON cannot
/// hold (nan, inf) is an error.
fn toml_to_json(v: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => {
            J::Number(serde_json::Number::from_f64(f).ok_or_else(|| format!("{f} cannot be written in JSON"))?)
        }
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| Ok((k, toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

pub(super) fn validate_routes(
    raw: Vec<RawRoute>,
    issuers: &[IssuerConfig],
    base: &PathBase,
    errs: &mut Errors,
) -> Vec<RouteConfig> {
    if raw.is_empty() {
        errs.push("route", "at least one [[route]] is required");
    }
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("route[{i}].{f}");
        let path_prefix = r.path_prefix.unwrap_or_default();
        if !path_prefix.starts_with('/') {
            errs.push(k("path_prefix"), format!("`{path_prefix}` must start with /"));
        } else if crate::wire::path::normalize(&path_prefix).as_deref() != Ok(path_prefix.as_str()) {
            errs.push(k("path_prefix"), format!("`{path_prefix}` is not a normalised path (no dot segments, %2F, backslash or needless percent-encoding)"));
        }
        if out.iter().any(|o| o.path_prefix == path_prefix) {
            errs.push(k("path_prefix"), format!("`{path_prefix}` is used by another route"));
        }
        let upstream = match r.upstream {
            Some(u) => match Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => {
                    if p.query().is_some() || p.fragment().is_some() {
                        errs.push(k("upstream"), "must not have a query or fragment");
                    }
                    p
                }
                _ => {
                    errs.push(k("upstream"), format!("`{u}` is not an http:// or https:// URL"));
                    continue;
                }
            },
            None => {
                errs.push(k("upstream"), "is required");
                continue;
            }
        };
        let auth = match r.auth.as_deref().unwrap_or("required") {
            "required" => AuthMode::Required,
            "optional" => AuthMode::Optional,
            "off" => AuthMode::Off,
            other => {
                errs.push(k("auth"), format!("`{other}` is not one of required, optional, off"));
                AuthMode::Required
            }
        };
        if auth != AuthMode::Off {
            if r.audience.as_deref().unwrap_or("").is_empty() {
                errs.push(k("audience"), "is required unless auth = \"off\" (it becomes the internal token's aud)");
            }
            if issuers.is_empty() {
                errs.push(k("auth"), "this route checks tokens, but no [[issuer]] is configured");
            }
        }
        let ca_file = ca_file(&k("ca_file"), r.ca_file, base, errs);
        // A tunnel carries bytes nobody inspects: only a verified caller may open one
        // by default (docs/security.md, "Upgrades").
        let websocket = r.websocket.unwrap_or(auth != AuthMode::Off);
        let max_body_bytes = match r.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if n >= 0 => n as u64,
            Some(n) => {
                errs.push(k("max_body_bytes"), format!("{n} is negative"));
                DEFAULT_MAX_BODY_BYTES
            }
        };
        if auth == AuthMode::Off && r.user_metadata.is_some() {
            errs.push(k("user_metadata"), "a route with auth = \"off\" has no caller, so no user_metadata to forward");
        }
        let rules = route_rules(i, r.require, r.deny, errs);
        if auth == AuthMode::Off && !rules.is_empty() {
            errs.push(k("auth"), "a route with require or deny rules needs a caller: auth cannot be \"off\"");
        }
        out.push(RouteConfig {
            rules,
            name: Arc::from(path_prefix.as_str()),
            path_prefix,
            upstream,
            ca_file,
            audience: r.audience,
            auth,
            strip_prefix: r.strip_prefix,
            app_metadata: r.app_metadata,
            client_metadata: r.client_metadata,
            user_metadata: r.user_metadata,
            websocket,
            max_body_bytes,
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
    out
}

/// `[[route.require]]` and `[[route.deny]]` of route `i`: every problem named by its
/// key (`route[2].require[0].op`).
fn route_rules(
    i: usize,
    require: Vec<RawRouteRule>,
    deny: Vec<RawRouteRule>,
    errs: &mut Errors,
) -> crate::rules::Rules {
    let mut parse = |kind: &str, raw: Vec<RawRouteRule>| -> Vec<crate::rules::Rule> {
        let mut out = Vec::with_capacity(raw.len());
        for (j, r) in raw.into_iter().enumerate() {
            let label = format!("{kind}[{j}]");
            let raw = crate::rules::RawRule {
                name: r.name,
                source: r.source,
                pointer: r.pointer,
                op: r.op,
                value: r.value,
                methods: r.methods,
            };
            match crate::rules::Rule::parse(raw, &label) {
                Ok(rule) => out.push(rule),
                Err(problems) => {
                    for (field, reason) in problems {
                        errs.push(format!("route[{i}].{label}.{field}"), reason);
                    }
                }
            }
        }
        out
    };
    let require = parse("require", require);
    let deny = parse("deny", deny);
    crate::rules::Rules { require, deny }
}

/// `[shared]`: a Redis URL (a secret, since it may carry a password) and the keys that
/// keep ids and metadata out of Redis in clear.
pub(super) fn validate_shared(raw: RawShared, base: &PathBase, errs: &mut Errors) -> SharedConfig {
    let url = match secret("shared.url", raw.url_env, raw.url_file, base, errs) {
        Some(u) => {
            // Never echo the URL: it may hold a password.
            match Url::parse(u.expose()) {
                Ok(p) if matches!(p.scheme(), "redis" | "rediss") && p.host_str().is_some() => {}
                Ok(_) => errs.push("shared.url", "must be a redis:// or rediss:// URL with a host"),
                Err(_) => errs.push("shared.url", "is not a URL (expected redis://[user:password@]host:port)"),
            }
            u
        }
        None => {
            errs.push("shared.url_env", "set url_env or url_file: the Redis URL");
            Secret::new("")
        }
    };
    let mut keys = Vec::new();
    let mut key_files = Vec::new();
    if raw.key_files.is_empty() {
        errs.push("shared.key_files", "name at least one key file (`claimsmith keygen --shared` writes one)");
    }
    for (i, p) in raw.key_files.iter().enumerate() {
        let key = format!("shared.key_files[{i}]");
        let path = base.resolve(p);
        match errs.read(&path) {
            Ok(bytes) => match parse_shared_key(&bytes) {
                Some(k) => keys.push(k),
                None => {
                    errs.push(key, format!("{} must hold 32 random bytes, raw or base64 on one line", path.display()))
                }
            },
            Err(e) => errs.push(key, format!("cannot read {}: {e}", path.display())),
        }
        key_files.push(path);
    }
    let prefix = raw.prefix.unwrap_or_else(|| "claimsmith".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        errs.push("shared.prefix", "must be 1 to 64 of A-Z a-z 0-9 _ - . :");
    }
    let timeout = duration("shared.timeout", raw.timeout, Duration::from_millis(100), errs);
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        errs.push("shared.timeout", "must be more than 0 and at most 10s");
    }
    let ca_file = ca_file("shared.ca_file", raw.ca_file, base, errs);
    if ca_file.is_some() && !url.expose().starts_with("rediss://") {
        errs.push("shared.ca_file", "only a rediss:// (TLS) URL uses a CA file");
    }
    SharedConfig { url, keys, key_files, prefix, timeout, ca_file }
}

/// 32 bytes as they are, or base64 (standard alphabet) of 32 bytes on one line.
pub(crate) fn parse_shared_key(bytes: &[u8]) -> Option<SharedKey> {
    use base64::Engine;
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(text)
        && let Ok(k) = <[u8; 32]>::try_from(decoded.as_slice())
    {
        return Some(SharedKey(k));
    }
    <[u8; 32]>::try_from(bytes).ok().map(SharedKey)
}

/// `[forward_auth]`: its own address (never the proxy's or the admin listener's: its
/// answers carry internal tokens) and which headers name the checked request.
pub(super) fn validate_forward_auth(
    raw: RawForwardAuth,
    listen: &ListenConfig,
    admin: &AdminConfig,
    errs: &mut Errors,
) -> ForwardAuthConfig {
    let addr = match raw.addr {
        Some(a) => socket_addr("forward_auth.addr", Some(a), "127.0.0.1:0", errs),
        None => {
            errs.push("forward_auth.addr", "set the address the forward-auth listener binds, like \"0.0.0.0:8081\"");
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    if addr.port() != 0 && (addr == listen.addr || addr == admin.addr) {
        errs.push("forward_auth.addr", "must differ from listen.addr and admin.addr: it is a listener of its own");
    }
    let headers = match raw.headers.as_deref() {
        None | Some("auto") => CheckedHeaders::Auto,
        Some("nginx") => CheckedHeaders::Nginx,
        Some("traefik") => CheckedHeaders::Traefik,
        Some("envoy") => CheckedHeaders::Envoy,
        Some(other) => {
            errs.push("forward_auth.headers", format!("`{other}` is not one of auto, nginx, traefik, envoy"));
            CheckedHeaders::Auto
        }
    };
    ForwardAuthConfig { addr, headers }
}

/// `[telemetry]`: the OTLP/HTTP base URL (spans go to `{base}/v1/traces`, as the
/// OpenTelemetry exporters read `OTEL_EXPORTER_OTLP_ENDPOINT`), the service name and
/// the sampling ratio of traces claimsmith starts.
pub(super) fn validate_telemetry(raw: RawTelemetry, base: &PathBase, errs: &mut Errors) -> TelemetryConfig {
    let otlp_endpoint = raw.otlp_endpoint.and_then(|e| match Url::parse(&e) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.query().is_none() => {
            let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
            let mut u = u;
            u.set_path(&path);
            match u.as_str().parse::<http::Uri>() {
                Ok(uri) => Some(uri),
                Err(_) => {
                    errs.push("telemetry.otlp_endpoint", format!("`{e}` is not a usable URL"));
                    None
                }
            }
        }
        _ => {
            errs.push(
                "telemetry.otlp_endpoint",
                format!("`{e}` is not an http(s) URL without a query, like \"http://otel-collector:4318\""),
            );
            None
        }
    });
    let service_name = raw.service_name.unwrap_or_else(|| "claimsmith".to_string());
    if service_name.is_empty() {
        errs.push("telemetry.service_name", "must not be empty");
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errs.push("telemetry.sample_ratio", format!("{sample_ratio} is not between 0 and 1"));
    }
    let ca_file = ca_file("telemetry.ca_file", raw.ca_file, base, errs);
    TelemetryConfig { otlp_endpoint, service_name, sample_ratio, ca_file }
}
