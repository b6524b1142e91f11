//! ID token (or access token) verification, docs/security.md, "token verification" (RFC 8725, OIDC Core
//! §3.1.3.7). The only way to get a [`VerifiedIdentity`] is [`Verifier::verify`].

pub mod cache;
pub mod jwks;
pub(crate) mod turns;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::IssuerConfig;
use crate::http_client::JsonClient;
use jwks::{Jwks, KeySet, Lookup};
use turns::Queue;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. Descriptions are fixed strings: they never echo the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is larger than 16 KiB")]
    TooLarge,
    #[error("the token is not a compact JWS of three parts")]
    Malformed,
    #[error("the token header is not valid")]
    BadHeader,
    #[error("the token claims are not valid JSON")]
    BadClaims,
    #[error("the signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token header has an unsupported crit entry")]
    CriticalHeader,
    #[error("the token issuer is not accepted")]
    UnknownIssuer,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signing key does not match its algorithm")]
    KeyAlgorithmMismatch,
    #[error("the token has no kid and the key set has no single key for its algorithm")]
    AmbiguousKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token audience is not accepted")]
    BadAudience,
    #[error("the token has several audiences and no accepted azp")]
    BadAuthorizedParty,
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// Not the token's fault: no key set has been fetched for its issuer yet.
    #[error("the issuer's signing keys are not available yet")]
    KeysUnavailable,
    /// Not the token's fault: too many signature checks are waiting on this worker
    /// (`verify::turns`).
    #[error("too many tokens are waiting for a signature check")]
    Overloaded,
}

impl VerifyError {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::TooLarge => "too_large",
            VerifyError::Malformed => "malformed",
            VerifyError::BadHeader => "bad_header",
            VerifyError::BadClaims => "bad_claims",
            VerifyError::AlgorithmNotAllowed => "alg_not_allowed",
            VerifyError::CriticalHeader => "crit",
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::UnknownKey => "unknown_kid",
            VerifyError::KeyAlgorithmMismatch => "key_alg_mismatch",
            VerifyError::AmbiguousKey => "ambiguous_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::IssuedInFuture => "iat_in_future",
            VerifyError::BadAudience => "bad_audience",
            VerifyError::BadAuthorizedParty => "bad_azp",
            VerifyError::MissingClaim => "missing_claim",
            VerifyError::KeysUnavailable => "keys_unavailable",
            VerifyError::Overloaded => "overloaded",
        }
    }
}

/// A caller whose token passed every check. Only [`Verifier::verify`] builds one.
///
/// Cheap to clone (two reference counts and a few words): the token cache hands out
/// its [`IdentityCore`] on every hit.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    core: IdentityCore,
    issuer: Arc<IssuerShared>,
    token_hash: [u8; 32],
}

/// What every identity from one issuer shares, so a cached identity holds indexes
/// into it rather than text: the issuer's name, its audiences (a client id that is
/// one of them, the usual case, is held as its index), the kept claims' names, and
/// its leeway.
#[derive(Debug)]
pub(crate) struct IssuerShared {
    name: Arc<str>,
    audiences: Box<[Box<str>]>,
    /// Each of [`Verifier::keep_only_claims`]'s names as a JSON object member's
    /// name (`"email":`), by its index there.
    kept_names: Box<[Box<str>]>,
    leeway: Duration,
}

impl IssuerShared {
    fn new(config: &IssuerConfig, keep: &[String]) -> IssuerShared {
        IssuerShared {
            name: Arc::from(config.issuer.as_str()),
            audiences: config.audiences.iter().map(|a| Box::from(a.as_str())).collect(),
            kept_names: kept_names(keep),
            leeway: config.leeway,
        }
    }
}

/// `keep`'s names as JSON object members' names (`"email":`).
fn kept_names(keep: &[String]) -> Box<[Box<str>]> {
    // Serializing a string cannot fail.
    keep.iter().map(|n| format!("{}:", Value::String(n.clone())).into_boxed_str()).collect()
}

/// The client id as an [`IdentityCore`] holds it.
enum Client<'a> {
    /// The issuer's audience of this index.
    Audience(usize),
    Other(&'a str),
}

/// What the token cache keeps of a verified identity; the issuer's name and the
/// token's hash are known at lookup, so they are not stored per token. Compact on
/// purpose: the cache holds one per caller, in a table with room for more
/// (docs/performance.md, memory), so every word here is paid about 1.3 times per
/// caller.
#[derive(Debug, Clone)]
pub(crate) struct IdentityCore {
    /// `sub`, then the client id unless it is one of the issuer's audiences, then
    /// the kept claims (see [`kept_members`]), in one allocation.
    text: Arc<str>,
    /// The claims the routes' rules read (docs/configuration.md, "Authorization
    /// rules"), parsed once at verification; `None` when no rule reads claims, so
    /// a configuration without such rules keeps nothing more per token.
    rule_claims: Option<Arc<Value>>,
    /// Seconds since the epoch in 32 bits, which last until 2106. A later `exp` is
    /// held as `u32::MAX`: until then every check and the internal token's `exp`
    /// (at most `ttl` from now) come out the same.
    exp: u32,
    /// `nbf`, 0 when the token has none: a not-before of 0 (1970) never holds a
    /// token back, so the two mean the same here. A token whose `nbf` is past 2106
    /// is not valid yet, so never gets here.
    nbf: u32,
    /// Offsets in `text`: a claim is at most a token long, and a token at most
    /// [`MAX_TOKEN_BYTES`].
    client_at: u16,
    kept_at: u16,
    issuer_index: u16,
    /// 1 + the index of the client id in the issuer's audiences; 0: the client id
    /// is in `text`.
    audience: u16,
}

impl IdentityCore {
    /// `kept_claims`: the claims the internal token copies, as [`kept_members`]
    /// writes them; text costs far less memory than a `Value` per claim. `None`
    /// when a part does not fit the compact fields (never for a token within
    /// [`MAX_TOKEN_BYTES`] and a config's issuers).
    fn new(
        issuer_index: usize,
        subject: &str,
        client: Client<'_>,
        kept_claims: &str,
        exp: u64,
        nbf: Option<u64>,
    ) -> Option<IdentityCore> {
        let (audience, client_text) = match client {
            Client::Audience(i) => (u16::try_from(i + 1).ok()?, ""),
            Client::Other(text) => (0, text),
        };
        Some(IdentityCore {
            client_at: u16::try_from(subject.len()).ok()?,
            kept_at: u16::try_from(subject.len() + client_text.len()).ok()?,
            text: Arc::from([subject, client_text, kept_claims].concat()),
            issuer_index: u16::try_from(issuer_index).ok()?,
            audience,
            exp: u32::try_from(exp).unwrap_or(u32::MAX),
            nbf: u32::try_from(nbf.unwrap_or(0)).ok()?,
            rule_claims: None,
        })
    }
    pub(crate) fn subject(&self) -> &str {
        &self.text[..usize::from(self.client_at)]
    }
    pub(crate) fn issuer_index(&self) -> usize {
        usize::from(self.issuer_index)
    }
    pub(crate) fn exp(&self) -> u64 {
        u64::from(self.exp)
    }
    pub(crate) fn nbf(&self) -> Option<u64> {
        (self.nbf != 0).then_some(u64::from(self.nbf))
    }
}

impl VerifiedIdentity {
    pub fn issuer(&self) -> &Arc<str> {
        &self.issuer.name
    }
    /// Index of the issuer in the configuration.
    pub fn issuer_index(&self) -> usize {
        self.core.issuer_index()
    }
    /// The user: the token's `sub`.
    pub fn subject(&self) -> &str {
        self.core.subject()
    }
    /// The application: `azp`, else the audience that matched.
    pub fn client_id(&self) -> &str {
        match self.core.audience.checked_sub(1) {
            // The index was taken from this issuer's audiences: always there.
            Some(i) => self.issuer.audiences.get(usize::from(i)).map_or("", |a| a),
            None => &self.core.text[usize::from(self.core.client_at)..usize::from(self.core.kept_at)],
        }
    }
    pub fn exp(&self) -> u64 {
        self.core.exp()
    }
    /// `nbf` of the token, if any (a `nbf` of 0 counts as none: it holds nothing back).
    pub fn nbf(&self) -> Option<u64> {
        self.core.nbf()
    }
    pub fn leeway(&self) -> Duration {
        self.issuer.leeway
    }
    /// The claims the internal token copies, as JSON object members (`"a":1,"b":"x"`),
    /// empty when the token has none of them.
    pub fn kept_claims_json(&self) -> std::borrow::Cow<'_, str> {
        let kept = &self.core.text[usize::from(self.core.kept_at)..];
        if kept.is_empty() {
            return "".into();
        }
        let mut out = String::with_capacity(kept.len() + 16 * self.issuer.kept_names.len());
        let mut at = 0;
        // Each member: its marker, then its value's text up to the next marker.
        while let Some(&marker) = kept.as_bytes().get(at) {
            let start = at + 1;
            let end =
                kept.as_bytes()[start..].iter().position(|b| *b <= MEMBER_WHOLE).map_or(kept.len(), |n| start + n);
            // Markers are ASCII, so `start` and `end` are character boundaries.
            let value = kept.get(start..end).unwrap_or_default();
            at = end;
            let name = match marker {
                MEMBER_WHOLE => "",
                // The index was taken from the names the issuer shares: always there.
                i => match self.issuer.kept_names.get(usize::from(i - 1)) {
                    Some(name) => name,
                    None => continue,
                },
            };
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
            out.push_str(value);
        }
        out.into()
    }
    /// The token's claims that the routes' rules read, as a JSON object (only the
    /// top-level members some rule points into); `None` when no rule reads claims.
    pub fn rule_claims(&self) -> Option<&Value> {
        self.core.rule_claims.as_deref()
    }
    /// SHA-256 of the token, used as a cache key instead of the token itself.
    pub fn token_hash(&self) -> [u8; 32] {
        self.token_hash
    }
}

/// Marks a kept member held whole (`"name":value`); a byte below it, `1 + i`,
/// marks the value of the `i`-th kept claim, whose name [`IssuerShared`] holds.
const MEMBER_WHOLE: u8 = 0x1f;

/// The members of `claims` named in `keep`, in the token's order, for
/// [`VerifiedIdentity::kept_claims_json`]: each one a control character, then the
/// value's JSON text (for the first 30 names; past them, the whole member). Names
/// are the same for every token, so they are not held per token. serde_json escapes
/// every control character within JSON text, so a marker never occurs in a value.
fn kept_members(claims: &Map<String, Value>, keep: &[String]) -> String {
    let mut out = String::new();
    for (name, value) in claims {
        let Some(i) = keep.iter().position(|k| k == name) else { continue };
        // Serializing a string or a `Value` into a String cannot fail.
        match u8::try_from(i + 1).ok().filter(|m| *m < MEMBER_WHOLE) {
            Some(marker) => out.push(char::from(marker)),
            None => {
                out.push(char::from(MEMBER_WHOLE));
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
            }
        }
        out.push_str(&value.to_string());
    }
    out
}

/// Verification state of one configured issuer.
pub struct IssuerVerifier {
    pub config: IssuerConfig,
    pub issuer: Arc<str>,
    pub jwks: Arc<Jwks>,
    hmac: Option<DecodingKey>,
    shared: Arc<IssuerShared>,
}

/// Verifies tokens against every configured issuer.
pub struct Verifier {
    issuers: Vec<IssuerVerifier>,
    /// Tokens that passed, by SHA-256 (see `cache.rs`); successes only.
    tokens: cache::TokenCache,
    /// Claims kept in a [`VerifiedIdentity`] besides the registered ones it holds as
    /// fields (none by default). Each cached token holds only these, so a large ID
    /// token costs no more memory than the claims the internal token copies.
    keep_claims: Vec<String>,
    /// Claims kept for the routes' rules.
    rule_claims: RuleClaims,
}

/// Which claims the routes' rules read: none, some top-level members, or all (a rule
/// whose pointer is `""`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum RuleClaims {
    #[default]
    None,
    Members(Vec<String>),
    All,
}

impl RuleClaims {
    /// What of `claims` to keep for the rules.
    fn select(&self, claims: Map<String, Value>) -> Option<Arc<Value>> {
        match self {
            RuleClaims::None => None,
            RuleClaims::All => Some(Arc::new(Value::Object(claims))),
            RuleClaims::Members(names) => {
                Some(Arc::new(Value::Object(claims.into_iter().filter(|(k, _)| names.contains(k)).collect())))
            }
        }
    }
}

impl Verifier {
    pub fn new(issuers: &[IssuerConfig], clients: &[JsonClient]) -> Verifier {
        let issuers = issuers
            .iter()
            .zip(clients)
            .map(|(cfg, client)| IssuerVerifier {
                config: cfg.clone(),
                issuer: Arc::from(cfg.issuer.as_str()),
                jwks: Arc::new(Jwks::new(cfg, client.clone())),
                hmac: cfg.hmac_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
                shared: Arc::new(IssuerShared::new(cfg, &[])),
            })
            .collect::<Vec<_>>();
        let tokens = cache::TokenCache::new(cache::DEFAULT_CAPACITY, leeways(&issuers));
        Verifier { issuers, tokens, keep_claims: Vec::new(), rule_claims: RuleClaims::None }
    }

    /// Keeps these claims of each verified token (for the internal token's
    /// `copy_claims`), see [`VerifiedIdentity::kept_claims_json`].
    pub fn keep_only_claims(mut self, names: &[String]) -> Verifier {
        self.keep_claims = names.to_vec();
        for i in &mut self.issuers {
            i.shared = Arc::new(IssuerShared::new(&i.config, names));
        }
        self
    }

    /// Keeps, with each verified token, the claims these rules read (those whose
    /// source is `claims`), see [`VerifiedIdentity::rule_claims`].
    pub fn keep_claims_for_rules<'r>(mut self, rules: impl Iterator<Item = &'r crate::rules::Rule>) -> Verifier {
        let mut members = Vec::new();
        for r in rules.filter(|r| r.source == crate::rules::Source::Claims) {
            match r.pointer.first() {
                None => {
                    self.rule_claims = RuleClaims::All;
                    return self;
                }
                Some(m) if !members.iter().any(|k: &String| k == m) => members.push(m.to_string()),
                Some(_) => {}
            }
        }
        if !members.is_empty() {
            self.rule_claims = RuleClaims::Members(members);
        }
        self
    }

    pub fn issuers(&self) -> &[IssuerVerifier] {
        &self.issuers
    }

    /// Holds at most `n` verified tokens (the configured `cache.max_entries`: one
    /// token per caller, as the metadata cache holds one entry per caller).
    pub fn token_cache_capacity(mut self, n: u64) -> Verifier {
        self.tokens = cache::TokenCache::new(n, leeways(&self.issuers));
        self
    }

    /// Tokens held in the token cache.
    pub fn cached_tokens(&self) -> u64 {
        self.tokens.len()
    }

    /// Whether every issuer holds a key set.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.jwks.current().is_some())
    }

    /// Checks `token` and returns who is calling.
    pub async fn verify(&self, token: &str) -> Result<VerifiedIdentity, VerifyError> {
        self.verify_at(token, crate::clock::unix_now()).await
    }

    /// [`Self::verify`] at a given time (seconds since the epoch). A token that
    /// passed before is answered from the token cache, with its time claims checked
    /// again at `now` and only while its issuer's key set is unchanged.
    pub async fn verify_at(&self, token: &str, now: u64) -> Result<VerifiedIdentity, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let token_hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(core) = self.tokens.get(&token_hash, now, |i| self.issuers.get(i).and_then(|i| i.jwks.current()))
            && let Some(issuer) = self.issuers.get(core.issuer_index())
        {
            return Ok(VerifiedIdentity { core, issuer: issuer.shared.clone(), token_hash });
        }
        // Boxed: the full check (and a JWKS refetch) is the rare path; unboxed, its
        // state would enlarge, and be copied with, every request's future.
        let (identity, keys) = Box::pin(self.verify_full(token, token_hash, now)).await?;
        self.tokens.insert(&token_hash, identity.core.clone(), keys);
        Ok(identity)
    }

    /// Every check, without the token cache (benchmarks, tests).
    pub async fn verify_uncached_at(&self, token: &str, now: u64) -> Result<VerifiedIdentity, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        Ok(self.verify_full(token, Sha256::digest(token.as_bytes()).into(), now).await?.0)
    }

    /// The full verification; also returns the key set that checked the signature.
    async fn verify_full(
        &self,
        token: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<(VerifiedIdentity, Option<Arc<KeySet>>), VerifyError> {
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
        let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(VerifyError::Malformed)?;
        if payload_b64.contains('.') || sig_b64.is_empty() || header_b64.is_empty() || payload_b64.is_empty() {
            return Err(VerifyError::Malformed);
        }
        let header = decode_object(header_b64).ok_or(VerifyError::BadHeader)?;
        // RFC 7515 §4.1.11: we understand no extension, so any crit is unsupported.
        if header.contains_key("crit") {
            return Err(VerifyError::CriticalHeader);
        }
        let alg_name = header.get("alg").and_then(Value::as_str).ok_or(VerifyError::BadHeader)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(VerifyError::BadHeader),
        };
        // jku, x5u, jwk and x5c are deliberately never read (RFC 8725 §3.10).
        let claims = decode_object(payload_b64).ok_or(VerifyError::BadClaims)?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(VerifyError::MissingClaim)?;
        let (issuer_index, issuer) =
            self.issuers.iter().enumerate().find(|(_, i)| *i.issuer == *iss).ok_or(VerifyError::UnknownIssuer)?;
        // `none` and anything unknown fail to parse; the allow-list is the issuer's.
        let alg = Algorithm::from_str(alg_name).map_err(|_| VerifyError::AlgorithmNotAllowed)?;
        if !issuer.config.algorithms.contains(&alg) {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let (valid, keys) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let key = issuer.hmac.as_ref().ok_or(VerifyError::AlgorithmNotAllowed)?;
                (check_signature(sig_b64, signing_input, key, alg), None)
            }
            _ => {
                let (valid, set) = self.verify_with_jwks(issuer, kid, alg, sig_b64, signing_input).await?;
                (valid, Some(set))
            }
        };
        if !valid {
            return Err(VerifyError::BadSignature);
        }
        let (subject, client_id, exp) = validate_claims(&claims, &issuer.config, now)?;
        // validate_claims accepted it, so it is a valid NumericDate or absent.
        let nbf = numeric_date(claims.get("nbf"))?;
        let kept = kept_members(&claims, &self.keep_claims);
        let client = match issuer.config.audiences.iter().position(|a| *a == client_id) {
            Some(i) => Client::Audience(i),
            None => Client::Other(&client_id),
        };
        let mut core =
            IdentityCore::new(issuer_index, &subject, client, &kept, exp, nbf).ok_or(VerifyError::TooLarge)?;
        core.rule_claims = self.rule_claims.select(claims);
        let identity = VerifiedIdentity { core, issuer: issuer.shared.clone(), token_hash };
        Ok((identity, keys))
    }

    async fn verify_with_jwks(
        &self,
        issuer: &IssuerVerifier,
        kid: Option<&str>,
        alg: Algorithm,
        sig_b64: &str,
        signing_input: &str,
    ) -> Result<(bool, Arc<KeySet>), VerifyError> {
        let mut refetched = false;
        loop {
            let set = issuer.jwks.current().ok_or(VerifyError::KeysUnavailable)?;
            match set.lookup(kid, alg) {
                Lookup::Found(key) => {
                    // Checks take turns with everything else on this worker (turns.rs).
                    let turn = Queue::this_thread().take().await.ok_or(VerifyError::Overloaded)?;
                    let valid = check_signature(sig_b64, signing_input, key, alg);
                    turn.end().await;
                    return Ok((valid, set));
                }
                Lookup::WrongAlgorithm => return Err(VerifyError::KeyAlgorithmMismatch),
                Lookup::Ambiguous => return Err(VerifyError::AmbiguousKey),
                Lookup::UnknownKid if refetched => return Err(VerifyError::UnknownKey),
                Lookup::UnknownKid => {
                    refetched = true;
                    tracing::info!(issuer = %issuer.issuer, "token names an unknown kid; refetching the JWKS at most once per 30 s");
                    issuer.jwks.refetch_for_unknown_kid().await;
                }
            }
        }
    }
}

/// Each issuer's leeway in seconds, by index, for the token cache's checks.
fn leeways(issuers: &[IssuerVerifier]) -> Vec<u64> {
    issuers.iter().map(|i| i.config.leeway.as_secs()).collect()
}

fn check_signature(sig_b64: &str, signing_input: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    // Errors (bad base64, key/algorithm family mismatch) are failures too.
    jsonwebtoken::crypto::verify(sig_b64, signing_input.as_bytes(), key, alg).unwrap_or(false)
}

/// Checks the registered claims; returns (sub, client, exp).
fn validate_claims(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now: u64,
) -> Result<(String, String, u64), VerifyError> {
    let leeway = cfg.leeway.as_secs();
    let exp = numeric_date(claims.get("exp"))?.ok_or(VerifyError::MissingClaim)?;
    if now >= exp.saturating_add(leeway) {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"))?
        && nbf > now.saturating_add(leeway)
    {
        return Err(VerifyError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims.get("iat"))?
        && iat > now.saturating_add(leeway)
    {
        return Err(VerifyError::IssuedInFuture);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(VerifyError::MissingClaim),
    };
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(v)) => {
            let mut out = Vec::with_capacity(v.len());
            for a in v {
                out.push(a.as_str().ok_or(VerifyError::BadAudience)?);
            }
            out
        }
        None => return Err(VerifyError::MissingClaim),
        Some(_) => return Err(VerifyError::BadAudience),
    };
    let matched = auds.iter().find(|a| cfg.audiences.iter().any(|c| c == *a)).ok_or(VerifyError::BadAudience)?;
    let azp = match claims.get("azp") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(VerifyError::BadAuthorizedParty),
    };
    // OIDC Core §3.1.3.7 items 4-5: several audiences need an azp we accept.
    if auds.len() > 1 && !azp.is_some_and(|z| cfg.audiences.iter().any(|c| c == z)) {
        return Err(VerifyError::BadAuthorizedParty);
    }
    let client = azp.unwrap_or(matched).to_string();
    Ok((sub, client, exp))
}

/// A NumericDate (RFC 7519 §2): a non-negative number, possibly with a fraction.
fn numeric_date(v: Option<&Value>) -> Result<Option<u64>, VerifyError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                Ok(Some(f as u64))
            } else {
                Err(VerifyError::BadClaims)
            }
        }
        Some(_) => Err(VerifyError::BadClaims),
    }
}

/// Decodes a base64url (no padding) JSON object, refusing duplicate member names,
/// so that a second `iss` cannot override the first in some other parser.
fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = B64.decode(part).ok()?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let obj = UniqueObject::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(obj.0)
}

struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: Value = map.next_value()?;
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused() {
        let part = B64.encode(br#"{"iss":"a","iss":"b"}"#);
        assert!(decode_object(&part).is_none());
        let part = B64.encode(br#"{"iss":"a"}"#);
        assert!(decode_object(&part).is_some());
    }

    #[test]
    fn padded_or_standard_base64_is_refused() {
        let part = base64::engine::general_purpose::URL_SAFE.encode(br#"{"a":1}"#);
        assert!(part.ends_with('='));
        assert!(decode_object(&part).is_none());
        assert!(decode_object(" eyJhIjoxfQ").is_none());
    }

    /// What the internal token copies: the kept members as JSON text, in the
    /// token's order, read back from the compact form.
    fn kept_json(claims: serde_json::Value, keep: &[&str], audiences: &[&str], client: &str) -> (String, String) {
        let keep: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
        let shared = Arc::new(IssuerShared {
            name: Arc::from("https://idp/"),
            audiences: audiences.iter().map(|a| Box::from(*a)).collect(),
            kept_names: kept_names(&keep),
            leeway: Duration::from_secs(30),
        });
        let claims = claims.as_object().cloned().unwrap();
        let kept = kept_members(&claims, &keep);
        let client = match audiences.iter().position(|a| *a == client) {
            Some(i) => Client::Audience(i),
            None => Client::Other(client),
        };
        let core = IdentityCore::new(0, "sub|1", client, &kept, 10, None).unwrap();
        let id = VerifiedIdentity { core, issuer: shared, token_hash: [0; 32] };
        assert_eq!(id.subject(), "sub|1");
        (id.client_id().to_string(), id.kept_claims_json().into_owned())
    }

    #[test]
    fn kept_claims_and_the_client_read_back_as_they_were() {
        use serde_json::json;
        let claims =
            json!({"name": "A \"B\"", "iss": "x", "email": "a@b.c", "ctl": "1\u{1}2\u{1f}", "n": [1, {"k": null}]});
        // In the token's order, names from the shared list, values as serde_json writes them.
        let (client, kept) = kept_json(claims.clone(), &["email", "ctl", "name", "n", "absent"], &["api"], "api");
        assert_eq!(client, "api");
        assert_eq!(kept, r#""name":"A \"B\"","email":"a@b.c","ctl":"1\u00012\u001f","n":[1,{"k":null}]"#);
        let v: Value = serde_json::from_str(&format!("{{{kept}}}")).unwrap();
        assert_eq!(v, json!({"name": "A \"B\"", "email": "a@b.c", "ctl": "1\u{1}2\u{1f}", "n": [1, {"k": null}]}));
        // None kept; a client id that is not an audience is held as text.
        assert_eq!(kept_json(claims.clone(), &[], &["api"], "other"), ("other".into(), String::new()));
        assert_eq!(kept_json(claims.clone(), &["absent"], &["api"], "").0, "");
        // Past 30 names a member is held whole: the same text comes back.
        let mut many: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        many.push("name".into());
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let big = json!({"c0": 0, "c35": "x", "name": "n", "c29": true, "c30": 30});
        let (_, kept) = kept_json(big, &many, &[], "c");
        assert_eq!(kept, r#""c0":0,"c35":"x","name":"n","c29":true,"c30":30"#);
    }

    #[test]
    fn the_compact_identity_keeps_what_the_checks_read() {
        let id = IdentityCore::new(2, "u", Client::Other("c"), "", 2_000_000_000, Some(1_900_000_000)).unwrap();
        assert_eq!((id.subject(), id.issuer_index(), id.exp(), id.nbf()), ("u", 2, 2_000_000_000, Some(1_900_000_000)));
        // Past 2106: exp is held as the last second 32 bits count, still far ahead.
        let late = IdentityCore::new(0, "u", Client::Other("c"), "", u64::MAX, None).unwrap();
        assert_eq!((late.exp(), late.nbf()), (u64::from(u32::MAX), None));
        // An nbf past 2106 (a token not valid yet) does not fit.
        assert!(IdentityCore::new(0, "u", Client::Other("c"), "", u64::MAX, Some(1 << 33)).is_none());
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(numeric_date(Some(&serde_json::json!(12))), Ok(Some(12)));
        assert_eq!(numeric_date(Some(&serde_json::json!(12.7))), Ok(Some(12)));
        assert!(numeric_date(Some(&serde_json::json!("12"))).is_err());
        assert!(numeric_date(Some(&serde_json::json!(-1))).is_err());
    }
}
