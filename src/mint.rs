//! The internal token (README, "What a backend receives"): its claims, signing with
//! the first of the configured keys (`keys.rs`), reuse, and the published JWKS.
//!
//! Signing uses aws-lc-rs key pairs parsed once at load, so no PEM or DER is parsed
//! per request. A minted token is reused for the same (ID token, route) while more
//! than half of its life is left and the metadata it carries is unchanged.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::config::TokenConfig;
use crate::keys::{KeyError, SigningKey};
use crate::metadata::StoredMetadata;
use crate::verify::VerifiedIdentity;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("signing the internal token failed")]
    Sign,
    #[error("encoding the internal token failed")]
    Encode,
}

/// What the pipeline hands to the minter for one request.
pub struct MintRequest<'a> {
    pub identity: &'a VerifiedIdentity,
    /// The route's internal-token audience.
    pub audience: &'a str,
    /// Identifies the route, so projections of different routes are not mixed up.
    pub route: &'a Arc<str>,
    pub app_metadata: &'a Arc<StoredMetadata>,
    pub client_metadata: &'a Arc<StoredMetadata>,
    pub app_keys: Option<&'a [String]>,
    pub client_keys: Option<&'a [String]>,
    /// The route's `user_metadata` keys (empty: all); `None`: no `user_metadata`
    /// claim. Read from `app_metadata`, which carries the user's user_metadata.
    pub user_keys: Option<&'a [String]>,
}

/// A signed token and what it was made from (for reuse).
#[derive(Clone)]
pub struct Minted {
    /// The token as the header value the upstream receives (`Bearer ...` for
    /// `Authorization`), built and validated once: a reused token is then one
    /// reference-count increment per request, not a copy and a byte-by-byte check.
    pub header_value: HeaderValue,
    /// Reused until then: while more than half of its life is left.
    fresh_until: u64,
    app: Arc<StoredMetadata>,
    client: Arc<StoredMetadata>,
    /// When it was minted, for the reuse store's expiry.
    created: crate::store::Stamp,
}

impl crate::store::Timestamped for Minted {
    fn created(&self) -> crate::store::Stamp {
        self.created
    }
}

/// The first 128 bits of the ID token's SHA-256, and the route. The token has
/// passed verification when its key is built, so two keys meet only for two tokens
/// the issuer signed whose hashes share 128 bits: a second preimage of a given
/// caller's token, 2^128 work.
type ReuseKey = ([u8; 16], Arc<str>);

/// Minted tokens kept for reuse at most.
pub const REUSE_CAPACITY: u64 = 10_000;

/// Mints internal tokens and publishes the keys that verify them.
pub struct Minter {
    issuer: String,
    ttl: Duration,
    signing: Arc<SigningKey>,
    /// Whether header values get the `Bearer ` prefix (`token.header = "authorization"`).
    bearer: bool,
    published: Vec<Arc<SigningKey>>,
    header_json_b64: String,
    /// `[token.static_claims]` and `[token.secret_claims]` as JSON object members,
    /// rendered at load ([`crate::config::ExtraClaims`]); spliced into every token.
    extra_claims: crate::config::ExtraClaims,
    /// The same sharded store as the metadata cache (a lookup per request: a lock and
    /// a hash, none of moka's read bookkeeping).
    reuse: crate::store::Store<ReuseKey, Minted, std::convert::Infallible>,
    minted: std::sync::atomic::AtomicU64,
    reused: std::sync::atomic::AtomicU64,
}

impl Minter {
    /// Builds from config; with no key_files an ephemeral key of `token.algorithm` is made.
    pub fn new(cfg: &TokenConfig) -> Result<Minter, KeyError> {
        let published = if cfg.keys.is_empty() {
            tracing::warn!(
                alg = ?cfg.algorithm,
                "no token.key_files configured: using an ephemeral signing key; internal tokens will not verify after a restart"
            );
            vec![Arc::new(SigningKey::generate(cfg.algorithm)?.0)]
        } else {
            cfg.keys.clone()
        };
        let signing = published[0].clone();
        let header = json!({"alg": alg_name(signing.algorithm()), "kid": signing.kid(), "typ": "at+jwt"});
        let header_json_b64 = B64.encode(header.to_string());
        Ok(Minter {
            issuer: cfg.issuer.clone(),
            ttl: cfg.ttl,
            signing,
            bearer: cfg.header == crate::config::TokenHeader::Authorization,
            published,
            header_json_b64,
            extra_claims: cfg.extra_claims.clone(),
            // Reuse pays off for callers that come back within half a token's life;
            // the most recent 10,000 are enough for that, and each entry holds a whole
            // signed token (~0.7 KB), so a larger bound costs memory, not signatures.
            reuse: {
                let ttl = cfg.ttl;
                crate::store::Store::new(REUSE_CAPACITY, Box::new(move |_: &Minted| ttl))
            },
            minted: Default::default(),
            reused: Default::default(),
        })
    }

    /// The issuer placed in `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Algorithms of all published keys, signing key first.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for k in &self.published {
            let a = alg_name(k.algorithm());
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    }

    /// `{"keys": [...]}` with every published key.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.published.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
    }

    /// (minted, reused) counts, for metrics.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.minted.load(Relaxed), self.reused.load(Relaxed))
    }

    /// Returns a token for this request, as the value of `token.header` (marked
    /// sensitive): a reused one when still fresh enough, else a new one.
    pub fn mint(&self, req: &MintRequest<'_>) -> Result<HeaderValue, MintError> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::clock::unix_now();
        let hash = req.identity.token_hash();
        let mut head = [0; 16];
        head.copy_from_slice(&hash[..16]);
        let key: ReuseKey = (head, req.route.clone());
        // `fresh_until` comes before the store's own expiry (`created` + ttl), so the
        // store's check is not needed: only the header value is taken out.
        let fresh = |m: &Minted| {
            (now < m.fresh_until
                && Arc::ptr_eq(&m.app, req.app_metadata)
                && Arc::ptr_eq(&m.client, req.client_metadata))
            .then(|| m.header_value.clone())
        };
        if let Some(header_value) = self.reuse.read_with(&key, fresh) {
            self.reused.fetch_add(1, Relaxed);
            return Ok(header_value);
        }
        let id = req.identity;
        let leeway = id.leeway().as_secs();
        let exp = (now + self.ttl.as_secs()).min(id.exp().saturating_add(leeway));
        let payload = claims_json(&ClaimsInput {
            iss: &self.issuer,
            aud: req.audience,
            sub: id.subject(),
            client_id: id.client_id(),
            iat: now,
            exp,
            jti: &new_jti(),
            kept_claims: &id.kept_claims_json(),
            extra_claims: self.extra_claims.members_json(),
            app_metadata: &project(req.app_metadata, req.app_keys),
            client_metadata: &project(req.client_metadata, req.client_keys),
            user_metadata: req.user_keys.map(|keys| req.app_metadata.project_user_metadata(keys)).as_deref(),
        });
        let token = self.signed(&payload)?;
        // Base64url and "Bearer " only: always a valid header value.
        let mut header_value =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(token)).map_err(|_| MintError::Encode)?;
        header_value.set_sensitive(true);
        self.minted.fetch_add(1, Relaxed);
        if exp > now + 1 {
            self.reuse.insert(
                key,
                Minted {
                    header_value: header_value.clone(),
                    // A later request at `t` reuses it while `t + (exp - now) / 2 < exp`.
                    fresh_until: exp - (exp - now) / 2,
                    app: req.app_metadata.clone(),
                    client: req.client_metadata.clone(),
                    created: crate::store::Stamp::now(),
                },
            );
        }
        Ok(header_value)
    }

    /// The signed token (`Bearer ` first for `Authorization`) for the claims `payload`.
    fn signed(&self, payload: &[u8]) -> Result<String, MintError> {
        let prefix = if self.bearer { "Bearer " } else { "" };
        // Exactly the token's length: the reuse store keeps the buffer as it is, so
        // room left over would be held with every reused token (docs/performance.md,
        // memory). `None` only for lengths no token reaches; then the buffer grows.
        let b64_len = |n: usize| base64::encoded_len(n, false).unwrap_or(0);
        let mut token = String::with_capacity(
            prefix.len()
                + self.header_json_b64.len()
                + 1
                + b64_len(payload.len())
                + 1
                + b64_len(self.signing.signature_len()),
        );
        token.push_str(prefix);
        token.push_str(&self.header_json_b64);
        token.push('.');
        B64.encode_string(payload, &mut token);
        let sig = self.signing.sign(&token.as_bytes()[prefix.len()..]).map_err(|_| MintError::Sign)?;
        token.push('.');
        B64.encode_string(&sig, &mut token);
        Ok(token)
    }
}

/// Keeps only `keys` (top-level) when a route lists them.
fn project<'m>(m: &'m StoredMetadata, keys: Option<&[String]>) -> std::borrow::Cow<'m, str> {
    match keys {
        None => m.json().into(),
        Some(keys) => m.project(keys).into(),
    }
}

/// The parts of the internal token's claims (README, "What a backend receives"), each already checked or
/// produced by serde_json.
struct ClaimsInput<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    client_id: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    /// JSON object members (`"a":1,"b":2`) or empty: [`VerifiedIdentity::kept_claims_json`].
    kept_claims: &'a str,
    /// JSON object members or empty: `[token.static_claims]` and `[token.secret_claims]`.
    extra_claims: &'a str,
    /// JSON object texts: [`StoredMetadata`].
    app_metadata: &'a str,
    client_metadata: &'a str,
    /// `None`: the route does not forward user_metadata.
    user_metadata: Option<&'a str>,
}

/// The claims object, written directly: the metadata and the kept claims are
/// already JSON text, so they are spliced in rather than parsed and re-encoded.
/// `copy_claims` and the static and secret claims may not name a claim written here,
/// nor one another (config validation), so no member appears twice.
fn claims_json(c: &ClaimsInput<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        180 + c.iss.len()
            + c.aud.len()
            + c.sub.len()
            + c.client_id.len()
            + c.kept_claims.len()
            + c.extra_claims.len()
            + c.app_metadata.len()
            + c.client_metadata.len()
            + c.user_metadata.map_or(0, str::len),
    );
    let string = |out: &mut Vec<u8>, name: &str, v: &str| {
        out.extend_from_slice(name.as_bytes());
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    };
    string(&mut out, "{\"iss\":", c.iss);
    string(&mut out, ",\"aud\":", c.aud);
    string(&mut out, ",\"sub\":", c.sub);
    string(&mut out, ",\"client_id\":", c.client_id);
    out.extend_from_slice(format!(",\"iat\":{},\"exp\":{}", c.iat, c.exp).as_bytes());
    string(&mut out, ",\"jti\":", c.jti);
    if !c.kept_claims.is_empty() {
        out.push(b',');
        out.extend_from_slice(c.kept_claims.as_bytes());
    }
    if !c.extra_claims.is_empty() {
        out.push(b',');
        out.extend_from_slice(c.extra_claims.as_bytes());
    }
    out.extend_from_slice(b",\"app_metadata\":");
    out.extend_from_slice(c.app_metadata.as_bytes());
    out.extend_from_slice(b",\"client_metadata\":");
    out.extend_from_slice(c.client_metadata.as_bytes());
    if let Some(user) = c.user_metadata {
        out.extend_from_slice(b",\"user_metadata\":");
        out.extend_from_slice(user.as_bytes());
    }
    out.push(b'}');
    out
}

fn new_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    B64.encode(bytes)
}

/// The JOSE name of an algorithm.
pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_one_valid_object_with_spliced_parts() {
        let app = StoredMetadata::new(json!({"roles": ["a\"b"], "n": 1}).as_object().unwrap().clone());
        let keys = ["n".to_string(), "absent".to_string()];
        let projected = project(&app, Some(&keys));
        let input = ClaimsInput {
            iss: "https://cs/",
            aud: "api",
            sub: "auth0|\"quoted\"\u{2028}",
            client_id: "c",
            iat: 10,
            exp: 20,
            jti: "j",
            kept_claims: r#""email":"a@b.c","email_verified":true"#,
            extra_claims: r#""deployment":"eu-prod","system_key":"s\"k""#,
            app_metadata: app.json(),
            client_metadata: &projected,
            user_metadata: Some(r#"{"theme":"dark"}"#),
        };
        let v: Value = serde_json::from_slice(&claims_json(&input)).unwrap();
        assert_eq!(
            v,
            json!({"iss": "https://cs/", "aud": "api", "sub": "auth0|\"quoted\"\u{2028}", "client_id": "c",
                   "iat": 10, "exp": 20, "jti": "j", "email": "a@b.c", "email_verified": true,
                   "deployment": "eu-prod", "system_key": "s\"k",
                   "app_metadata": {"roles": ["a\"b"], "n": 1}, "client_metadata": {"n": 1},
                   "user_metadata": {"theme": "dark"}})
        );
        let none = ClaimsInput {
            kept_claims: "",
            extra_claims: "",
            app_metadata: "{}",
            client_metadata: "{}",
            user_metadata: None,
            ..input
        };
        let v: Value = serde_json::from_slice(&claims_json(&none)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 9);
    }

    #[test]
    fn a_reuse_entry_stays_small() {
        // 10,000 of them, in a table with room for more: docs/performance.md, memory.
        let entry = std::mem::size_of::<(ReuseKey, Minted)>();
        assert!(entry <= 104, "{entry}");
    }

    #[test]
    fn a_token_fills_its_buffer_exactly() {
        // The reuse store keeps each token's buffer: none may hold spare room.
        for alg in ["EdDSA", "ES256", "RS256"] {
            let toml = format!(
                "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
                 [[issuer]]\nissuer = \"https://idp/\"\naudiences = [\"c\"]\n\
                 jwks_uri = \"http://127.0.0.1:9/jwks.json\"\n\
                 [token]\nissuer = \"https://cs/\"\nalgorithm = \"{alg}\"\n\
                 [[route]]\npath_prefix = \"/api/\"\nupstream = \"http://127.0.0.1:9\"\naudience = \"api\"\n"
            );
            let config = crate::parse_config(&toml).unwrap();
            let minter = Minter::new(&config.token).unwrap();
            for payload in [&b"{}"[..], br#"{"sub":"a","n":12345}"#] {
                let token = minter.signed(payload).unwrap();
                assert_eq!(token.len(), token.capacity(), "{alg}");
            }
        }
    }
}
