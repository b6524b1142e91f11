//! An issuer's signing keys: fetched from discovery or `jwks_uri`, refreshed in the
//! background every 5 minutes, refetched on an unknown `kid` at most once per 30 s.
//! When a fetch fails the last good key set stays in use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{IssuerConfig, JwksLocation};
use crate::http_client::{self, JsonClient};

/// How often the key set is refreshed in the background.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// At most one unknown-kid refetch per issuer in this window (docs/security.md, "token verification").
pub const UNKNOWN_KID_WINDOW: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOC_BYTES: usize = 1024 * 1024;

/// The family of a key, which bounds the algorithms it may verify (RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One usable public key.
pub struct PublicKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    family: KeyFamily,
    key: DecodingKey,
}

impl PublicKey {
    /// Whether this key may verify a signature made with `alg`.
    fn allows(&self, alg: Algorithm) -> bool {
        if let Some(own) = self.alg {
            return own == alg;
        }
        matches!(
            (self.family, alg),
            (
                KeyFamily::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyFamily::P256, Algorithm::ES256)
                | (KeyFamily::P384, Algorithm::ES384)
                | (KeyFamily::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// A fetched key set.
pub struct KeySet {
    keys: Vec<PublicKey>,
    pub fetched_at: Instant,
}

/// Outcome of looking a key up.
pub enum Lookup<'a> {
    Found(&'a DecodingKey),
    /// No key with that kid: a refetch may help.
    UnknownKid,
    /// The kid exists but is bound to another algorithm.
    WrongAlgorithm,
    /// No kid, and not exactly one key for the algorithm.
    Ambiguous,
}

impl KeySet {
    /// Parses a JWKS document, keeping keys we can use and skipping the rest.
    pub fn parse(doc: &[u8]) -> Result<KeySet, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|_| "JWKS is not JSON".to_string())?;
        let arr = v.get("keys").and_then(Value::as_array).ok_or("JWKS has no `keys` array")?;
        let mut keys = Vec::new();
        for k in arr {
            // A key of a kind we do not know is skipped, not fatal (RFC 7517 §5).
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else { continue };
            if let Some(pk) = public_key(&jwk) {
                keys.push(pk);
            }
        }
        if keys.is_empty() {
            return Err("JWKS holds no usable signing key".into());
        }
        Ok(KeySet { keys, fetched_at: Instant::now() })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Finds the key for `kid` (or the only key for `alg` when there is no kid).
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if k.allows(alg) => Lookup::Found(&k.key),
                Some(_) => Lookup::WrongAlgorithm,
                None => Lookup::UnknownKid,
            },
            None => {
                let mut it = self.keys.iter().filter(|k| k.allows(alg));
                match (it.next(), it.next()) {
                    (Some(k), None) => Lookup::Found(&k.key),
                    _ => Lookup::Ambiguous,
                }
            }
        }
    }
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::P256,
            EllipticCurve::P384 => KeyFamily::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyFamily::Ed25519,
        // Symmetric keys are never taken from a JWKS: an HMAC key must be configured.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => match ka {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            // A key marked for encryption or HMAC is not a signature key for us.
            _ => return None,
        },
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let pk = PublicKey { kid: jwk.common.key_id.clone(), alg, family, key };
    if let Some(a) = alg {
        // A JWK whose alg contradicts its key type is unusable.
        let probe = PublicKey { alg: None, ..pk };
        if !probe.allows(a) {
            return None;
        }
        return Some(PublicKey { alg: Some(a), ..probe });
    }
    Some(pk)
}

/// Fetches and holds one issuer's key set.
pub struct Jwks {
    issuer: Arc<str>,
    location: JwksLocation,
    client: JsonClient,
    current: ArcSwapOption<KeySet>,
    /// Serialises refetches; holds the time of the last unknown-kid refetch.
    unknown_kid_refetch: Mutex<Option<Instant>>,
    /// Serialises all fetches so concurrent callers share one.
    fetch_lock: Mutex<()>,
    pub fetches_ok: AtomicU64,
    pub fetches_failed: AtomicU64,
    /// Whether the most recent fetch succeeded (for `/metrics`).
    pub last_fetch_ok: std::sync::atomic::AtomicBool,
}

impl Jwks {
    pub fn new(cfg: &IssuerConfig, client: JsonClient) -> Jwks {
        Jwks {
            issuer: Arc::from(cfg.issuer.as_str()),
            location: cfg.jwks.clone(),
            client,
            current: ArcSwapOption::empty(),
            unknown_kid_refetch: Mutex::new(None),
            fetch_lock: Mutex::new(()),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            last_fetch_ok: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The key set now in use, if one has ever been fetched.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Installs a key set without fetching (fuzzing and tests only: the running proxy
    /// always fetches from the issuer).
    #[doc(hidden)]
    pub fn install_for_tests(&self, set: KeySet) {
        self.current.store(Some(Arc::new(set)));
    }

    /// Fetches the key set now. On failure the previous set stays.
    pub async fn refresh(&self) -> Result<(), String> {
        let _one_at_a_time = self.fetch_lock.lock().await;
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(issuer = %self.issuer, keys = set.len(), "JWKS fetched");
                self.current.store(Some(Arc::new(set)));
                self.fetches_ok.fetch_add(1, Relaxed);
                self.last_fetch_ok.store(true, Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS fetch failed; keeping the last good key set");
                self.fetches_failed.fetch_add(1, Relaxed);
                self.last_fetch_ok.store(false, Relaxed);
                Err(e)
            }
        }
    }

    /// Refetches because a token named an unknown kid, unless that already happened
    /// in the last 30 s. Returns whether a fetch took place and succeeded.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let mut last = self.unknown_kid_refetch.lock().await;
        if let Some(t) = *last
            && t.elapsed() < UNKNOWN_KID_WINDOW
        {
            return false;
        }
        *last = Some(Instant::now());
        self.refresh().await.is_ok()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let jwks_uri = match &self.location {
            JwksLocation::Uri(u) => u.to_string(),
            JwksLocation::Discovery => self.discover().await?,
        };
        let body = self.get(&jwks_uri).await?;
        KeySet::parse(&body)
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let body = self.get(&url).await?;
        let doc: Value = serde_json::from_slice(&body).map_err(|_| "discovery document is not JSON".to_string())?;
        // OIDC Discovery §4.3: the document's issuer must be the one we asked about.
        if doc.get("issuer").and_then(Value::as_str) != Some(&self.issuer) {
            return Err("discovery document names another issuer".into());
        }
        let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("discovery document has no jwks_uri")?;
        match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(uri.to_string()),
            _ => Err("discovery jwks_uri is not an http(s) URL".into()),
        }
    }

    async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        let req = http_client::get_request(url).map_err(|e| e.to_string())?;
        let resp =
            http_client::fetch(&self.client, req, FETCH_TIMEOUT, MAX_DOC_BYTES).await.map_err(|e| e.to_string())?;
        if !resp.status.is_success() {
            return Err(format!("HTTP {}", resp.status.as_u16()));
        }
        Ok(resp.body)
    }

    /// Runs forever: the start-up fetch with backoff until it succeeds, then a refresh
    /// every 5 minutes (30 s after a failure).
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let ok = self.refresh().await.is_ok();
            let wait = if ok {
                backoff = Duration::from_millis(250);
                REFRESH_EVERY
            } else if self.current().is_none() {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            } else {
                Duration::from_secs(30)
            };
            tokio::time::sleep(wait).await;
        }
    }
}
