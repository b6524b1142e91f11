//! The logic of every fuzz target, with the invariants each one checks.
//!
//! This file is used twice:
//! - by the cargo-fuzz binaries in `fuzz/fuzz_targets/` (nightly, libFuzzer);
//! - by the stable-Rust property test `tests/fuzz_smoke.rs` of the main crate, which
//!   includes it with `#[path]` and runs every target over the committed corpus plus
//!   a few thousand deterministic mutations. So it may only use crates the main crate
//!   depends on (claimsmith, bytes, http, httparse, serde, serde_json, base64, jsonwebtoken,
//!   tokio, url).
//!
//! A target returns normally when the input is handled correctly and panics (the
//! fuzzer's crash signal) when an invariant is broken.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::BytesMut;
use claimsmith::verify::Verifier;
use claimsmith::verify::jwks::KeySet;
use claimsmith::wire::chunked::{ChunkError, ChunkedDecoder};
use claimsmith::wire::h1::{self as wire, BadResponse, Framing, Parsed, RequestHead, ResponseHead};
use claimsmith::wire::{hygiene, path};
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The verification fixture: one issuer, a pre-loaded key set, a fixed clock.

/// The issuer every fuzzed token claims.
pub const ISSUER: &str = "https://issuer.fuzz.example/";
/// Its configured audiences.
pub const AUDIENCES: [&str; 2] = ["client-a", "client-b"];
/// The fixed verification time (seconds since the epoch), so seeds never expire.
pub const NOW: u64 = 1_700_000_000;
/// The issuer's leeway (the default, 30 s).
pub const LEEWAY: u64 = 30;
/// Fuzzing only; not a secret of anything.
pub const HMAC_SECRET: &str = "fuzz-hmac-secret-not-a-real-secret-0123456789";
/// Algorithms the fuzz issuer allows.
pub const ALLOWED: [&str; 5] = ["RS256", "PS256", "ES256", "EdDSA", "HS256"];

// Test keys committed for fuzzing only (fuzz/keys/README.md): they sign nothing real.
const ED_PEM: &str = include_str!("../keys/ed25519.pem");
const EC_PEM: &str = include_str!("../keys/p256.pem");
const RSA_PEM: &str = include_str!("../keys/rsa2048.pem");

/// A key of the fixture: the JWK published in the key set, and how to sign with it.
pub struct FixtureKey {
    pub kid: &'static str,
    pub alg: Algorithm,
    pub jwk: Value,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
}

pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub verifier: Verifier,
    pub keys: Vec<FixtureKey>,
    pub hmac_decoding: DecodingKey,
    pub hmac_encoding: EncodingKey,
}

fn fixture_key(pem: &str, kid: &'static str, alg: Algorithm) -> FixtureKey {
    let sk = claimsmith::keys::SigningKey::from_pem(pem.as_bytes()).expect("fixture key");
    let mut jwk = sk.public_jwk().clone();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(claimsmith::mint::alg_name(alg));
    let encoding = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("fixture encoding key");
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("fixture jwk");
    let decoding = DecodingKey::from_jwk(&parsed).expect("fixture decoding key");
    FixtureKey { kid, alg, jwk, encoding, decoding }
}

/// The issuer's configuration: the JWKS URL is a closed loopback port, so an
/// unknown-kid refetch fails fast and the pre-loaded key set stays.
fn fixture_config(secret_file: &std::path::Path) -> String {
    format!(
        r#"
[[issuer]]
issuer = "{ISSUER}"
audiences = ["{a}", "{b}"]
jwks_uri = "http://127.0.0.1:1/jwks.json"
algorithms = ["RS256", "PS256", "ES256", "EdDSA", "HS256"]
hmac_secret_file = "{secret}"

[[route]]
path_prefix = "/api/"
upstream = "http://127.0.0.1:1"
audience = "fuzz-api"
"#,
        a = AUDIENCES[0],
        b = AUDIENCES[1],
        secret = secret_file.display()
    )
}

/// The shared fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        claimsmith::install_crypto_provider();
        let secret_file = std::env::temp_dir().join(format!("claimsmith-fuzz-hmac-{}", std::process::id()));
        std::fs::write(&secret_file, HMAC_SECRET).expect("write the HMAC secret file");
        let cfg = claimsmith::parse_config(&fixture_config(&secret_file)).expect("fixture config");
        let _ = std::fs::remove_file(&secret_file);
        let keys = vec![
            fixture_key(ED_PEM, "ed-1", Algorithm::EdDSA),
            fixture_key(EC_PEM, "ec-1", Algorithm::ES256),
            fixture_key(RSA_PEM, "rsa-1", Algorithm::RS256),
            // The same RSA key, bound to PS256 under another kid.
            fixture_key(RSA_PEM, "rsa-ps", Algorithm::PS256),
        ];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let clients: Vec<claimsmith::http_client::JsonClient> = cfg
            .issuers
            .iter()
            .map(|_| {
                let _guard = rt.enter();
                let direct = claimsmith::http_client::Egress::none();
                let connector = claimsmith::http_client::connector(None, &direct).expect("connector");
                claimsmith::http_client::JsonClient::new(connector, &direct)
            })
            .collect();
        let verifier = Verifier::new(&cfg.issuers, &clients);
        let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        let set = KeySet::parse(doc.to_string().as_bytes()).expect("fixture key set");
        verifier.issuers()[0].jwks.install_for_tests(set);
        assert!(verifier.ready());
        Fixture {
            rt,
            verifier,
            keys,
            hmac_decoding: DecodingKey::from_secret(HMAC_SECRET.as_bytes()),
            hmac_encoding: EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        }
    })
}

/// Signs `header` and `payload` (raw bytes, base64url-encoded as they are).
pub fn sign_raw(header: &[u8], payload: &[u8], alg: Algorithm, key: &EncodingKey) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

/// The encoding key of the fixture for `alg` (HS256: the shared secret).
pub fn encoding_for(f: &Fixture, alg: Algorithm) -> (&EncodingKey, Option<&'static str>) {
    if alg == Algorithm::HS256 {
        return (&f.hmac_encoding, None);
    }
    let k = f.keys.iter().find(|k| k.alg == alg).expect("fixture key for alg");
    (&k.encoding, Some(k.kid))
}

/// Standard valid claims at [`NOW`].
pub fn valid_claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCES[0], "iat": NOW - 10, "exp": NOW + 3600,
           "email": "fuzz@example.com"})
}

/// A valid token for `alg` with the fixture's kid.
pub fn valid_token(alg: Algorithm, claims: &Value) -> String {
    let f = fixture();
    let (key, kid) = encoding_for(f, alg);
    let mut h = json!({"alg": claimsmith::mint::alg_name(alg), "typ": "JWT"});
    if let Some(kid) = kid {
        h["kid"] = json!(kid);
    }
    sign_raw(h.to_string().as_bytes(), claims.to_string().as_bytes(), alg, key)
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

/// Everything an accepted token must satisfy, checked independently of the verifier.
fn check_accepted(token: &str, id: &claimsmith::verify::VerifiedIdentity) {
    let f = fixture();
    assert!(token.len() <= claimsmith::verify::MAX_TOKEN_BYTES, "an oversized token was accepted");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "an accepted token is not three parts");
    let header = decode_json(parts[0]).expect("accepted token header is not JSON");
    assert!(header.get("crit").is_none(), "a token with crit was accepted");
    let alg = header["alg"].as_str().expect("accepted token without alg");
    assert!(ALLOWED.contains(&alg), "alg {alg} is not allowed but was accepted");
    // The signature verifies under a key of the fixture bound to that algorithm.
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    let alg_parsed: Algorithm = alg.parse().expect("allowed alg parses");
    let candidates: Vec<&DecodingKey> = if alg_parsed == Algorithm::HS256 {
        vec![&f.hmac_decoding]
    } else {
        f.keys
            .iter()
            .filter(|k| k.alg == alg_parsed)
            .filter(|k| header.get("kid").is_none() || header["kid"] == json!(k.kid))
            .map(|k| &k.decoding)
            .collect()
    };
    assert!(
        candidates
            .iter()
            .any(|k| jsonwebtoken::crypto::verify(parts[2], signing_input.as_bytes(), k, alg_parsed).unwrap_or(false)),
        "accepted a token whose signature no fixture key for {alg} verifies"
    );
    let claims = decode_json(parts[1]).expect("accepted claims are not JSON");
    let expected = claims_verdict(&claims).expect("the verifier accepted claims the oracle refuses");
    assert_eq!(id.subject(), expected.0);
    assert_eq!(id.client_id(), expected.1);
    assert_eq!(id.issuer().as_ref(), ISSUER);
}

/// An independent reading of docs/security.md, "token verification" for the claims: `Ok((sub, client))` when
/// they must be accepted at [`NOW`], `Err(why)` otherwise.
pub fn claims_verdict(claims: &Value) -> Result<(String, String), &'static str> {
    let obj = claims.as_object().ok_or("not an object")?;
    if obj.get("iss") != Some(&json!(ISSUER)) {
        return Err("iss");
    }
    fn date(v: Option<&Value>) -> Result<Option<u64>, &'static str> {
        match v {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => Ok(Some(u)),
                (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                _ => Err("date not a non-negative number"),
            },
            Some(_) => Err("date not a number"),
        }
    }
    let exp = date(obj.get("exp"))?.ok_or("no exp")?;
    if u128::from(NOW) >= u128::from(exp) + u128::from(LEEWAY) {
        return Err("expired");
    }
    for c in ["nbf", "iat"] {
        if let Some(t) = date(obj.get(c))?
            && u128::from(t) > u128::from(NOW) + u128::from(LEEWAY)
        {
            return Err("in the future");
        }
    }
    let sub = match obj.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("sub"),
    };
    let auds: Vec<&str> = match obj.get("aud") {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().ok_or("aud item")).collect::<Result<_, _>>()?,
        _ => return Err("aud"),
    };
    let matched = auds.iter().find(|a| AUDIENCES.contains(a)).ok_or("aud not accepted")?;
    let azp = match obj.get("azp") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("azp type"),
    };
    if auds.len() > 1 && !azp.is_some_and(|z| AUDIENCES.contains(&z)) {
        return Err("azp");
    }
    Ok((sub, azp.unwrap_or(matched).to_string()))
}

/// Target `verify_token`: any string goes to `Verifier::verify_at`. Must never panic;
/// anything accepted must satisfy every rule of docs/security.md, "token verification".
pub fn verify_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let f = fixture();
    if let Ok(id) = f.rt.block_on(f.verifier.verify_at(token, NOW)) {
        check_accepted(token, &id);
    }
}

/// Target `verify_claims`: the input becomes the payload (and header variations) of a
/// token that is then *correctly signed*, so the fuzzer reaches claims validation.
/// Byte 0 picks the algorithm (bits 0-1), the kid (bits 2-3: right, none, unknown, a
/// key of another algorithm) and whether a `crit` header is added (bit 4).
/// The verifier must agree with [`claims_verdict`].
pub fn verify_claims(data: &[u8]) {
    let Some((&mode, payload)) = data.split_first() else { return };
    let f = fixture();
    let alg = [Algorithm::EdDSA, Algorithm::HS256, Algorithm::ES256, Algorithm::RS256][usize::from(mode & 3)];
    let (key, kid) = encoding_for(f, alg);
    let kid_mode = (mode >> 2) & 3;
    let mut header = json!({"alg": claimsmith::mint::alg_name(alg), "typ": "JWT"});
    match (kid_mode, kid) {
        (0, Some(k)) => header["kid"] = json!(k),
        (2, _) => header["kid"] = json!("no-such-kid"),
        (3, _) => header["kid"] = json!(if alg == Algorithm::EdDSA { "ec-1" } else { "ed-1" }),
        _ => {}
    }
    let crit = mode & 16 != 0;
    if crit {
        header["crit"] = json!(["exp"]);
    }
    let token = sign_raw(header.to_string().as_bytes(), payload, alg, key);
    let result = f.rt.block_on(f.verifier.verify_at(&token, NOW));
    // What must happen, from the spec: structure and key first, then the claims.
    // Duplicate member names are refused (so a second `iss` cannot win elsewhere).
    let claims = parse_unique_object(payload);
    // HS256 has one key, the configured secret: its `kid` names nothing and is ignored.
    let key_ok = !crit && (kid_mode == 0 || kid_mode == 1 || alg == Algorithm::HS256);
    let expected = match (&claims, key_ok) {
        (Some(c), true) if token.len() <= claimsmith::verify::MAX_TOKEN_BYTES => claims_verdict(c).is_ok(),
        _ => false,
    };
    match (&result, expected) {
        (Ok(id), true) => check_accepted(&token, id),
        (Err(_), false) => {}
        (Ok(_), false) => panic!("accepted a token the spec refuses (mode {mode:#x})"),
        (Err(e), true) => panic!("refused a valid token: {e:?} (mode {mode:#x})"),
    }
}

/// A JSON object with no duplicate member names, else None.
fn parse_unique_object(bytes: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if !v.is_object() || has_duplicate_top_level(bytes) {
        return None;
    }
    Some(v)
}

/// Whether the top-level object of `bytes` (valid JSON) repeats a member name.
fn has_duplicate_top_level(bytes: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = false;
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                dup |= !seen.insert(k);
            }
            Ok(dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(V).unwrap_or(true)
}

// ---------------------------------------------------------------------------
// Header hygiene

/// RFC 9110 §7.6.1 plus the long-standing hop-by-hop names (independent copy).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn canon(s: &str) -> String {
    s.to_ascii_lowercase().replace('_', "-")
}

/// Cookie pairs (trimmed, non-empty) of every textual Cookie header, in order.
fn cookie_segments(h: &HeaderMap) -> Vec<String> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect::<Vec<_>>())
        .collect()
}

/// Target `hygiene`: line 1 is the header name to drop (as `token.header`), line 2 a
/// cookie name (as `listen.token_cookie`), the rest `name: value` header lines.
pub fn hygiene(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let drop = String::from_utf8_lossy(lines.next().unwrap_or_default()).trim().to_string();
    let cookie_name = String::from_utf8_lossy(lines.next().unwrap_or_default()).trim().to_string();

    // canonical: lower case, `_` as `-`, idempotent; is_hop_by_hop agrees with it.
    for s in [&drop, &cookie_name] {
        let c = hygiene::canonical(s);
        assert_eq!(c, canon(s));
        assert_eq!(hygiene::canonical(&c), c, "canonical is not idempotent");
        assert_eq!(hygiene::is_hop_by_hop(s), HOP_BY_HOP.contains(&c.as_ref()));
    }

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let original = headers.clone();

    // strip: no hop-by-hop, no Connection-listed and no dropped name survives; all else does.
    let drop_c = canon(&drop);
    // Every ASCII element of every Connection value names a field, also in a value that
    // holds obs-text elsewhere (RFC 9110 §7.6.1).
    let listed: Vec<String> = original
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).collect::<Vec<_>>())
        .filter(|t| !t.is_empty() && t.is_ascii())
        .map(|t| canon(&String::from_utf8_lossy(t)))
        .collect();
    let doomed = |n: &str| {
        let c = canon(n);
        HOP_BY_HOP.contains(&c.as_str()) || listed.contains(&c) || c == drop_c || c == "authorization"
    };
    let mut stripped = headers.clone();
    hygiene::strip(&mut stripped, |c| c == drop_c || c == "authorization");
    for (n, _) in &stripped {
        let c = hygiene::canonical(n.as_str());
        assert!(!hygiene::is_hop_by_hop(&c), "hop-by-hop header {c} survived strip");
        assert!(!HOP_BY_HOP.contains(&c.as_ref()), "hop-by-hop header {c} survived strip");
        assert!(c != drop_c && c != "authorization", "dropped header {c} survived strip");
        assert!(!listed.iter().any(|l| *l == c), "Connection-listed header {c} survived strip");
    }
    for (n, v) in &original {
        if !doomed(n.as_str()) {
            assert!(stripped.get_all(n).iter().any(|x| x == v), "strip removed an ordinary header {n}");
        }
    }
    assert_eq!(stripped.len(), original.iter().filter(|(n, _)| !doomed(n.as_str())).count());

    // cookie / remove_cookie: after removal the cookie is gone, every other pair stays.
    if cookie_name.is_empty() {
        return;
    }
    let found = hygiene::cookie(&headers, &cookie_name);
    if let Some(v) = found {
        let seg_has = cookie_segments(&headers)
            .iter()
            .any(|s| s.split_once('=').is_some_and(|(k, val)| k.trim() == cookie_name && val.trim() == v));
        assert!(seg_has, "cookie() returned a value that is not in any Cookie header");
    }
    let before = cookie_segments(&headers);
    hygiene::remove_cookie(&mut headers, &cookie_name);
    assert!(hygiene::cookie(&headers, &cookie_name).is_none(), "cookie still readable after remove_cookie");
    let after = cookie_segments(&headers);
    for s in &after {
        assert_ne!(s.split('=').next().map(str::trim), Some(cookie_name.as_str()), "removed cookie still sent");
    }
    let expected: Vec<String> =
        before.into_iter().filter(|s| s.split('=').next().map(str::trim) != Some(cookie_name.as_str())).collect();
    assert_eq!(after, expected, "remove_cookie changed other cookies");
    // Non-cookie headers are untouched.
    for (n, v) in &original {
        if n != http::header::COOKIE {
            assert!(headers.get_all(n).iter().any(|x| x == v));
        }
    }
}

// ---------------------------------------------------------------------------
// Path normalisation

fn percent_decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Target `normalize`: `proxy::path::normalize` of any string. An accepted path is
/// absolute, holds no dot-segment, encoded slash, backslash or NUL (even after a
/// backend percent-decodes it once more), and normalising it again changes nothing.
pub fn normalize(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(out) = path::normalize(input) else { return };
    assert!(out.starts_with('/'), "not absolute: {out:?}");
    for bad in ["/../", "/./", "%2F", "%2f", "\\", "%5C", "%5c", "\0", "%00"] {
        assert!(!out.contains(bad), "{bad:?} in normalised {out:?}");
    }
    assert!(!out.ends_with("/..") && !out.ends_with("/."), "trailing dot-segment in {out:?}");
    assert_eq!(path::normalize(&out).as_deref(), Ok(&*out), "normalize is not idempotent");
    // What a decoding backend sees: still no dot-segment (no %2E survives) and no new slash.
    let decoded = percent_decode_all(&out);
    assert_eq!(
        decoded.iter().filter(|&&b| b == b'/').count(),
        out.matches('/').count(),
        "decoding adds a slash to {out:?}"
    );
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        assert!(seg != b"." && seg != b"..", "a dot-segment appears after decoding {out:?}");
        assert!(!seg.contains(&b'\\') && !seg.contains(&0), "backslash or NUL after decoding {out:?}");
    }
    // Percent-encodings left are upper-case and not of unreserved characters.
    let b = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let (h, l) = (b[i + 1], b[i + 2]);
        assert!(h.is_ascii_hexdigit() && l.is_ascii_hexdigit() && !h.is_ascii_lowercase() && !l.is_ascii_lowercase());
        let c = (h as char).to_digit(16).unwrap() * 16 + (l as char).to_digit(16).unwrap();
        let c = c as u8;
        assert!(!(c.is_ascii_alphanumeric() || b"-._~".contains(&c)), "unreserved still encoded in {out:?}");
    }
    // No work needed means no change.
    if !input.bytes().any(|b| matches!(b, b'%' | b'.' | b'\\' | 0)) {
        assert_eq!(out, input);
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// Target `config`: `Config::parse` of any text never panics; what it accepts is sane.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The parser reads key and secret files named in the config; keep the fuzzer
    // away from device files that never end (an operator-controlled input anyway).
    if ["/dev", "/proc", "/sys", "\\u", "\\U"].iter().any(|p| text.contains(p)) {
        return;
    }
    match claimsmith::parse_config(text) {
        Ok(cfg) => {
            assert!(!cfg.routes.is_empty());
            for w in cfg.routes.windows(2) {
                assert!(w[0].path_prefix.len() >= w[1].path_prefix.len(), "routes not longest-prefix first");
            }
            for r in &cfg.routes {
                assert_eq!(path::normalize(&r.path_prefix).as_deref(), Ok(r.path_prefix.as_str()));
                if r.auth != claimsmith::config::AuthMode::Off {
                    assert!(r.audience.as_deref().is_some_and(|a| !a.is_empty()));
                }
            }
            for i in &cfg.issuers {
                assert_ne!(i.issuer, cfg.token.issuer, "token.issuer equals an ID-token issuer");
                assert!(!i.algorithms.is_empty() && !i.audiences.is_empty());
            }
            let _ = cfg.summary();
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without a reason");
            for e in &errs.0 {
                // The key may be empty only when the file itself names an empty key
                // (`[""]`, `"" = 1`: toml reports "unknown field ``").
                assert!(!e.reason.is_empty(), "an error without a reason");
                assert!(!e.key.is_empty() || e.reason.contains("unknown field ``"), "an error naming no key: {e}");
            }
            let _ = errs.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 fast path: request heads

/// Smallest and largest `max_head` (`listen.max_header_bytes`) an `h1_request` input picks.
pub const H1_MIN_HEAD: usize = 64;
pub const H1_MAX_HEAD: usize = 8192;

/// An `h1_request` input: bytes 0-1 (little-endian) pick `max_head`, byte 2 where the
/// request is split in two reads, the rest is what the client sent.
pub fn h1_request_input(max_head: usize, split: u8, raw: &[u8]) -> Vec<u8> {
    assert!((H1_MIN_HEAD..=H1_MAX_HEAD).contains(&max_head));
    let mut v = ((max_head - H1_MIN_HEAD) as u16).to_le_bytes().to_vec();
    v.push(split);
    v.extend_from_slice(raw);
    v
}

fn h1_kind(p: &Parsed) -> &'static str {
    match p {
        Parsed::Partial => "Partial",
        Parsed::Fast(_) => "Fast",
        Parsed::HandOver => "HandOver",
        Parsed::Refuse { .. } => "Refuse",
    }
}

/// Parses `input` as the client's bytes read so far; returns the outcome and the buffer
/// as `parse_request` left it, after checking the contract on both.
fn h1_parse_checked(input: &[u8], max_head: usize) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(input);
    let parsed = wire::parse_request(&mut buf, max_head);
    h1_check_request(input, max_head, &parsed, &buf);
    (parsed, buf)
}

/// The contract of `wire::parse_request` for one call on `input`.
fn h1_check_request(input: &[u8], max_head: usize, parsed: &Parsed, rest: &[u8]) {
    match parsed {
        Parsed::Partial => {
            assert_eq!(rest, input, "Partial changed the buffer");
            // Waiting for more is only right while no complete head is there and the
            // bytes so far still fit in max_head (else the buffer grows without bound).
            assert!(input.len() <= max_head, "Partial with {} bytes > max_head {max_head}", input.len());
            let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
            let status = httparse::Request::new(&mut fields).parse(input);
            assert!(matches!(status, Ok(httparse::Status::Partial)), "Partial, but httparse says {status:?}");
        }
        Parsed::HandOver => assert_eq!(rest, input, "HandOver changed the buffer"),
        Parsed::Fast(head) => h1_check_fast(input, max_head, head, rest),
        // Refused only for a whole head with two Content-Length fields, or one beside
        // Transfer-Encoding.
        Parsed::Refuse { .. } => {
            let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
            let mut req = httparse::Request::new(&mut fields);
            assert!(matches!(req.parse(input), Ok(httparse::Status::Complete(_))), "Refuse of a partial head");
            let count = |n: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).count();
            let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
            assert!(lengths >= 2 || (lengths == 1 && codings > 0), "Refuse with {lengths} lengths, {codings} codings");
        }
    }
}

fn h1_check_fast(input: &[u8], max_head: usize, head: &RequestHead, rest: &[u8]) {
    let raw: &[u8] = &head.raw;
    let n = raw.len();
    assert!(n > 0 && n <= max_head, "Fast head of {n} bytes, max_head {max_head}");
    assert!(input.starts_with(raw), "raw is not the front of the input");
    assert_eq!(rest, &input[n..], "Fast did not take exactly the head off the buffer");
    // The head ends exactly where an independent parse of the input says.
    let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    assert_eq!(req.parse(input), Ok(httparse::Status::Complete(n)), "raw is not exactly the head");
    assert_eq!(req.version, Some(1), "Fast for a request that is not HTTP/1.1");
    let method = req.method.expect("method of a complete head");
    assert_eq!(head.method.as_str(), method, "method differs from the request line");
    assert_ne!(head.method, http::Method::CONNECT, "CONNECT took the fast path");
    // The target: origin-form, visible ASCII, no fragment, and path + query is all of it.
    let target = req.path.expect("target of a complete head");
    assert!(target.starts_with('/') && head.target.path().starts_with('/'), "target not in origin-form: {target:?}");
    assert!(target.bytes().all(|b| b.is_ascii_graphic() && b != b'#'), "target not visible ASCII: {target:?}");
    let path = head.target.path();
    assert!(!path.contains('?'), "path {path:?} holds the query");
    let rebuilt = match head.target.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    assert_eq!(rebuilt, target, "path and query are not the target");
    assert_eq!((head.target.len(), head.target.is_empty()), (target.len(), false));
    // Header fields: each one of the head, with its value, in order per name.
    // Authorization and Content-Length are kept apart (the framing is written from the
    // parsed length, never copied).
    let apart = |name: &str| name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("content-length");
    let kept = req.headers.iter().filter(|h| !apart(h.name)).count();
    assert_eq!(head.headers.len(), kept, "header map does not hold every field");
    let (mut hosts, mut close, mut lengths) = (0, false, Vec::new());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let expected: Vec<&[u8]> = match apart(&name) {
            true => Vec::new(),
            false => req.headers.iter().filter(|o| o.name.eq_ignore_ascii_case(&name)).map(|o| o.value).collect(),
        };
        let got: Vec<&[u8]> = head.headers.get_all(name.as_str()).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(got, expected, "values of {name} differ from the head's");
        assert!(
            !["transfer-encoding", "expect", "upgrade"].contains(&name.as_str()),
            "a request with {name} took the fast path"
        );
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => lengths.push(h.value),
            "connection" => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    assert!(!token.eq_ignore_ascii_case(b"upgrade"), "Connection: upgrade took the fast path");
                    close |= token.eq_ignore_ascii_case(b"close");
                }
            }
            _ => {}
        }
    }
    assert!(hosts <= 1, "{hosts} Host fields took the fast path");
    assert_eq!(head.close, close, "close differs from the Connection field");
    match lengths.as_slice() {
        [] => assert_eq!(head.content_length, None, "a body length without Content-Length"),
        [v] => {
            assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "Content-Length {v:?} took the fast path");
            let n: u64 = std::str::from_utf8(v).unwrap().parse().expect("a Content-Length that is not a u64");
            assert_eq!(head.content_length, Some(n), "content_length differs from Content-Length");
        }
        more => panic!("{} Content-Length fields took the fast path", more.len()),
    }
}

fn h1_same_head(a: &RequestHead, b: &RequestHead) {
    assert_eq!(a.raw, b.raw, "a different head when read in two pieces");
    assert_eq!(
        (&a.method, a.target.path(), a.target.query(), a.content_length, a.close),
        (&b.method, b.target.path(), b.target.query(), b.content_length, b.close)
    );
    assert_eq!(a.headers, b.headers);
}

/// Target `h1_request`: `h1::wire::parse_request` of what a client sent (see
/// [`h1_request_input`]). Never panics; Partial and HandOver leave the buffer byte for
/// byte; Fast takes exactly the head off and holds only what the fast path serves
/// (HTTP/1.1, origin-form visible-ASCII target, no CONNECT, Transfer-Encoding,
/// Expect, Upgrade or `Connection: upgrade`, at most one Host and one valid
/// Content-Length, at most max_head bytes). The same bytes read in two pieces give the
/// same outcome.
pub fn h1_request(data: &[u8]) {
    let (max_head, split, raw) = match data {
        [lo, hi, split, raw @ ..] => {
            (H1_MIN_HEAD + usize::from(u16::from_le_bytes([*lo, *hi])) % (H1_MAX_HEAD - H1_MIN_HEAD + 1), *split, raw)
        }
        _ => (H1_MAX_HEAD, 0, data),
    };
    let (whole, _) = h1_parse_checked(raw, max_head);
    // Two reads: the first `at` bytes, then the rest appended to what is left.
    let at_split = raw.len() * usize::from(split) / 256;
    for at in [at_split, raw.len().saturating_sub(1)] {
        if at == 0 || at >= raw.len() {
            continue;
        }
        let (first, mut buf) = h1_parse_checked(&raw[..at], max_head);
        match (&first, &whole) {
            (Parsed::Partial, _) => {
                buf.extend_from_slice(&raw[at..]);
                let second = wire::parse_request(&mut buf, max_head);
                h1_check_request(raw, max_head, &second, &buf);
                match (&second, &whole) {
                    (Parsed::Fast(a), Parsed::Fast(b)) => h1_same_head(a, b),
                    (a, b) => assert_eq!(h1_kind(a), h1_kind(b), "two reads (split at {at}) decide otherwise"),
                }
            }
            // A head complete in the first piece is the same head in the whole.
            (Parsed::Fast(a), Parsed::Fast(b)) => h1_same_head(a, b),
            (Parsed::HandOver, Parsed::HandOver) | (Parsed::Refuse { .. }, Parsed::Refuse { .. }) => {}
            (a, b) => panic!("the first {at} bytes gave {}, all of them {}", h1_kind(a), h1_kind(b)),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 fast path: upstream response heads

/// The internal token header the response heads of `h1_response` must never carry.
pub const H1_TOKEN_HEADER: &str = "x-internal-token";
/// The request id `h1_response` writes.
pub const H1_REQUEST_ID: &str = "fuzz-request-1";

/// An `h1_response` input: byte 0 holds flags (bit 0: the request was HEAD; bit 1:
/// the client's connection closes after this answer), the rest is what the upstream sent.
pub fn h1_response_input(head_request: bool, close: bool, raw: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::from(head_request) | u8::from(close) << 1];
    v.extend_from_slice(raw);
    v
}

/// What `parse_response` must make of an upstream's bytes, by an independent reading
/// of the framing rules.
#[derive(Debug)]
enum H1Expected {
    /// Not complete; the interim answers before `at` were taken off.
    Partial { at: usize },
    /// A final head at `start..end`.
    Head { start: usize, end: usize, status: u16, framing: Framing, close: bool, length: Option<u64> },
    /// Refused for one of these reasons (several rules may be broken at once).
    Refused(Vec<BadResponse>),
}

fn h1_response_oracle(input: &[u8], head_request: bool) -> H1Expected {
    let mut at = 0;
    loop {
        let buf = &input[at..];
        let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let n = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < wire::MAX_RESPONSE_HEAD => return H1Expected::Partial { at },
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return H1Expected::Refused(vec![BadResponse::TooLarge]);
            }
            Err(_) => return H1Expected::Refused(vec![BadResponse::Malformed]),
        };
        let code = resp.code.expect("status of a complete head");
        match code {
            0..=99 => return H1Expected::Refused(vec![BadResponse::Malformed]),
            101 => return H1Expected::Refused(vec![BadResponse::Switch]),
            100..=199 => {
                at += n;
                continue;
            }
            _ => {}
        }
        let values = |name: &str| -> Vec<&[u8]> {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii))
                .collect()
        };
        // Content-Length: every list element 1-19 digits, all equal.
        let lengths = values("content-length");
        let parsed: Vec<Option<u64>> = lengths
            .iter()
            .map(|v| {
                let digits = !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit);
                digits.then(|| std::str::from_utf8(v).unwrap().parse().unwrap())
            })
            .collect();
        let bad_length = parsed.iter().any(|p| p.is_none() || *p != parsed[0]);
        let length = parsed.first().copied().flatten();
        let codings = values("transfer-encoding");
        let has_te = resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        let chunked = codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked");
        let bodiless = head_request || code == 204 || code == 304;
        let mut refused = Vec::new();
        if bad_length {
            refused.push(BadResponse::ContentLength);
        }
        if !bodiless && has_te && !lengths.is_empty() {
            refused.push(BadResponse::AmbiguousLength);
        }
        if !bodiless && has_te && !chunked {
            refused.push(BadResponse::TransferEncoding);
        }
        if !refused.is_empty() {
            return H1Expected::Refused(refused);
        }
        let framing = match (bodiless, has_te, length) {
            (true, _, _) => Framing::Empty,
            (false, true, _) => Framing::Chunked,
            (false, false, Some(n)) => Framing::Length(n),
            (false, false, None) => Framing::Close,
        };
        let close = resp.version != Some(1)
            || framing == Framing::Close
            || values("connection").iter().any(|t| t.eq_ignore_ascii_case(b"close"));
        return H1Expected::Head { start: at, end: at + n, status: code, framing, close, length };
    }
}

/// Target `h1_response`: `h1::wire::parse_response` of what an upstream sent (see
/// [`h1_response_input`]) agrees with an independent reading of the framing rules
/// (interim answers skipped, 101 refused, HEAD/204/304 bodiless, Transfer-Encoding
/// only as exactly `chunked` and never with Content-Length, Content-Length values
/// valid and equal, else read to close). A parsed head written for the client with
/// `write_response_head` is one well-formed head with our framing, one request id,
/// no token header and no hop-by-hop field but ours, and every end-to-end field kept.
pub fn h1_response(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else { return };
    let (head_request, close) = (flags & 1 != 0, flags & 2 != 0);
    let mut buf = BytesMut::from(input);
    let result = wire::parse_response(&mut buf, head_request);
    let expected = h1_response_oracle(input, head_request);
    match (&result, &expected) {
        (Ok(None), H1Expected::Partial { at }) => {
            assert_eq!(&buf[..], &input[*at..], "interim answers not taken off exactly")
        }
        (Ok(Some(head)), H1Expected::Head { start, end, status, framing, close: upstream_close, length }) => {
            assert_eq!(&buf[..], &input[*end..], "the head was not taken off exactly");
            assert_eq!(head.status.as_u16(), *status);
            assert_eq!(head.framing, *framing, "framing of {:?}", String::from_utf8_lossy(&input[*start..*end]));
            assert_eq!(head.close, *upstream_close, "whether the upstream connection closes");
            h1_check_written(head, &input[*start..*end], *length, close);
        }
        (Err(e), H1Expected::Refused(why)) => assert!(why.contains(e), "refused with {e:?}, expected one of {why:?}"),
        (got, want) => panic!("parse_response gave {got:?}, expected {want:?}"),
    }
}

/// What the client gets for `head` (whose bytes are `upstream`).
fn h1_check_written(head: &ResponseHead, upstream: &[u8], length: Option<u64>, close: bool) {
    let request_id = HeaderValue::from_static(H1_REQUEST_ID);
    let mut out = Vec::new();
    wire::write_response_head(&mut out, head, H1_TOKEN_HEADER, &request_id, close);
    let shown = String::from_utf8_lossy(&out).into_owned();
    let mut fields = [httparse::EMPTY_HEADER; 2 * wire::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())), "not one well-formed head: {shown:?}");
    assert_eq!((resp.version, resp.code), (Some(1), Some(head.status.as_u16())), "{shown:?}");
    // Names compared canonically (lower case, `_` as `-`), as backends may merge them.
    let count = |name: &str| resp.headers.iter().filter(|h| canon(h.name) == name).count();
    let value = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let ids: Vec<&[u8]> =
        resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-request-id")).map(|h| h.value).collect();
    assert_eq!(ids, [H1_REQUEST_ID.as_bytes()], "not exactly our request id: {shown:?}");
    assert_eq!(count(H1_TOKEN_HEADER), 0, "the token header reaches the client: {shown:?}");
    for hop in
        ["keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authenticate", "proxy-authorization"]
    {
        assert_eq!(count(hop), 0, "hop-by-hop {hop} reaches the client: {shown:?}");
    }
    // Connection: only ours, `close`, exactly when asked.
    assert_eq!(count("connection"), usize::from(close), "{shown:?}");
    if close {
        assert_eq!(value("connection"), Some(&b"close"[..]));
    }
    // Framing: ours only, one way, matching the upstream's.
    let lengths = resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).count();
    let te = count("transfer-encoding");
    assert!(lengths <= 1 && te <= 1 && lengths + te <= 1, "framing fields: {shown:?}");
    if te == 1 {
        assert_eq!(value("transfer-encoding"), Some(&b"chunked"[..]), "{shown:?}");
    }
    let written_length = value("content-length").map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap());
    match head.framing {
        Framing::Chunked | Framing::Close => assert_eq!(te, 1, "chunked toward the client: {shown:?}"),
        Framing::Length(n) => assert_eq!(written_length, Some(n), "{shown:?}"),
        Framing::Empty => {
            assert_eq!(te, 0, "{shown:?}");
            if head.status == http::StatusCode::NO_CONTENT {
                assert_eq!(lengths, 0, "a 204 with Content-Length: {shown:?}");
            } else {
                assert_eq!(written_length, length, "HEAD/304 length not passed on: {shown:?}");
            }
        }
    }
    // Every end-to-end field of the upstream is kept, in order, and nothing else
    // comes through: what the client gets is those, then our own fields.
    let mut up_fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
    let mut up = httparse::Response::new(&mut up_fields);
    assert!(matches!(up.parse(upstream), Ok(httparse::Status::Complete(_))));
    let listed: Vec<String> = up
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .map(canon)
        .collect();
    let dropped = |name: &str| {
        let c = canon(name);
        HOP_BY_HOP.contains(&c.as_str())
            || c == H1_TOKEN_HEADER
            || listed.contains(&c)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("x-request-id")
    };
    let kept: Vec<(&str, &[u8])> = up.headers.iter().filter(|h| !dropped(h.name)).map(|h| (h.name, h.value)).collect();
    let got: Vec<(&str, &[u8])> = resp.headers.iter().map(|h| (h.name, h.value)).collect();
    // RFC 9110 §7.6.1: the fields `Connection` names are for the upstream hop only
    // (ours, which the upstream may name too, are written anyway).
    const OURS: [&str; 5] = ["content-length", "transfer-encoding", "x-request-id", "connection", "date"];
    for (n, _) in &got {
        assert!(!listed.contains(&canon(n)) || OURS.contains(n), "Connection-listed {n} reaches the client: {shown:?}");
    }
    assert!(got.starts_with(&kept), "end-to-end fields not kept as they were: {shown:?}");
    let ours: Vec<String> = got[kept.len()..].iter().map(|(n, _)| n.to_string()).collect();
    for n in &ours {
        let upstream_date = kept.iter().any(|(k, _)| k.eq_ignore_ascii_case("date"));
        let allowed = OURS[..4].contains(&n.as_str()) || (n == "date" && !upstream_date);
        assert!(allowed, "{n} is neither the upstream's nor ours: {shown:?}");
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 fast path: chunked bodies

/// What feeding a decoder gave.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    /// Bytes consumed (0 once refused).
    used: usize,
    done: bool,
    error: Option<ChunkError>,
}

/// Feeds `input` to a new decoder in pieces of `piece()` bytes (at least one), checking
/// that a call consumes at most its piece, all of it unless the body ended, never
/// hands on more data than it consumed, and that a finished decoder takes nothing more.
fn decode_pieces(input: &[u8], mut piece: impl FnMut() -> usize) -> Decoded {
    let mut d = ChunkedDecoder::default();
    let mut out = Decoded { data: Vec::new(), used: 0, done: false, error: None };
    while out.used < input.len() && !out.done {
        let n = piece().clamp(1, input.len() - out.used);
        let part = &input[out.used..out.used + n];
        let before = out.data.len();
        match d.feed(part, |b| out.data.extend_from_slice(b)) {
            Ok(k) => {
                assert!(k <= n, "consumed {k} of {n} bytes");
                assert!(out.data.len() - before <= k, "handed on more data than it consumed");
                assert!(k == n || d.is_done(), "stopped after {k} of {n} bytes without the body's end");
                out.used += k;
                out.done = d.is_done();
            }
            Err(e) => {
                // A refused body's connection is closed: what was consumed no longer matters.
                out.error = Some(e);
                out.used = 0;
                return out;
            }
        }
    }
    if out.done {
        let next = [&input[out.used..], b"5\r\nhello\r\n0\r\n\r\n"].concat();
        let again = d.feed(&next, |_| panic!("data after the end of the body"));
        assert_eq!(again, Ok(0), "a finished decoder consumed more");
        assert!(d.is_done());
    }
    out
}

/// Extensions a round trip adds after a chunk size (valid per RFC 9112 §7.1.1).
const CHUNK_EXTENSIONS: &[&[u8]] =
    &[b";a", b";name=value", b";q=\"quoted; \\\"value\\\"\"", b" ;x=1", b"\t;y = z", b";a=1;b;c=\"\""];
/// Trailer sections a round trip adds after the last chunk.
const CHUNK_TRAILERS: &[&[u8]] = &[b"x-trailer: 1\r\n", b"Expires: never\r\nx-a:\r\nx-b:  2 \r\n"];
/// What may follow a chunked body on a connection.
const CHUNK_AFTER: &[&[u8]] = &[b"", b"HTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\n", b"\r\n", b"5\r\nhello"];

/// FNV-1a, to seed split points from the input.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Target `chunked`: byte 0 picks how bodies are split into reads (bits 0-2: the
/// largest piece) and how the round trip encodes (bits 3-7), the rest is
/// (a) fed to `ChunkedDecoder` as an upstream's body: never panics, consumes at most
///     what it is given (all of it unless the body ended), nothing once done, and the
///     outcome does not depend on how the input is split into reads;
/// (b) cut into data pieces, encoded with `write_chunk` and `LAST_CHUNK` (plus
///     extensions and trailers inserted by hand), followed by more bytes: decoding in
///     random pieces gives back the data and consumes exactly the encoding.
pub fn chunked(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let mut rng = Rng::new(fnv(data));
    let max_piece = [1, 2, 3, 7, 16, 100, 4096, usize::MAX][usize::from(mode & 7)];
    let pieces = |rng: &mut Rng| 1 + rng.below(max_piece.min(body.len() + 1));

    // (a) arbitrary bytes.
    let whole = decode_pieces(body, || usize::MAX);
    let split = decode_pieces(body, || pieces(&mut rng));
    assert_eq!(split, whole, "the outcome depends on how the body is split into reads");
    let single = decode_pieces(body, || 1);
    assert_eq!(single, whole, "the outcome differs when read byte by byte");

    // (b) round trip.
    let mut expected = Vec::new();
    let mut encoded = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let n = match rng.below(4) {
            0 => 0,
            1 => 1 + rng.below(8),
            2 => 1 + rng.below(300),
            _ => body.len(),
        }
        .min(body.len() - at);
        let piece = &body[at..at + n];
        at += n;
        expected.extend_from_slice(piece);
        let start = encoded.len();
        wire::write_chunk(&mut encoded, piece);
        if piece.is_empty() {
            assert_eq!(encoded.len(), start, "an empty piece was written as a chunk (the last chunk)");
            continue;
        }
        let size_end = start + encoded[start..].iter().position(|&b| b == b'\r').expect("a chunk size line");
        assert_eq!(
            usize::from_str_radix(std::str::from_utf8(&encoded[start..size_end]).unwrap(), 16),
            Ok(n),
            "the chunk size is not the piece's length"
        );
        if mode & 0x08 != 0 {
            encoded[start..size_end].make_ascii_uppercase();
        }
        if mode & 0x10 != 0 && rng.below(2) == 0 {
            encoded.splice(start..start, *b"000");
        }
        if mode & 0x20 != 0 && rng.below(2) == 0 {
            let ext = CHUNK_EXTENSIONS[rng.below(CHUNK_EXTENSIONS.len())];
            let size_end = start + encoded[start..].iter().position(|&b| b == b'\r').unwrap();
            encoded.splice(size_end..size_end, ext.iter().copied());
        }
    }
    let mut last = wire::LAST_CHUNK.to_vec();
    if mode & 0x40 != 0 {
        // Trailer fields go between the last chunk's line and the final CRLF.
        let line_end = last.windows(2).position(|w| w == b"\r\n").expect("the last chunk's line") + 2;
        let trailers = CHUNK_TRAILERS[rng.below(CHUNK_TRAILERS.len())];
        last.splice(line_end..line_end, trailers.iter().copied());
    }
    if mode & 0x80 != 0 {
        let ext = CHUNK_EXTENSIONS[rng.below(CHUNK_EXTENSIONS.len())];
        last.splice(1..1, ext.iter().copied());
    }
    encoded.extend_from_slice(&last);
    let mut stream = encoded.clone();
    stream.extend_from_slice(CHUNK_AFTER[rng.below(CHUNK_AFTER.len())]);
    stream.extend_from_slice(&body[..rng.below(body.len().min(16) + 1)]);
    let decoded = decode_pieces(&stream, || pieces(&mut rng));
    let shown = String::from_utf8_lossy(&encoded);
    assert_eq!(decoded.error, None, "refused a valid chunked body: {shown:?}");
    assert!(decoded.done, "did not finish a whole chunked body: {shown:?}");
    assert!(decoded.data == expected, "decoded data differs from the pieces encoded: {shown:?}");
    assert_eq!(decoded.used, encoded.len(), "did not consume exactly the chunked body: {shown:?}");
    // Cut short, it is neither finished nor refused.
    let cut = decode_pieces(&encoded[..encoded.len() - 1], || pieces(&mut rng));
    assert_eq!((cut.error, cut.done, cut.used), (None, false, encoded.len() - 1), "a truncated body: {shown:?}");
}

// ---------------------------------------------------------------------------
// A small deterministic mutator for the stable smoke test (libFuzzer has its own).

/// xorshift64*: deterministic, seedable, good enough to mutate inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Tokens a mutator splices in: the characters the code under test treats specially.
const DICTIONARY: &[&[u8]] = &[
    b"/",
    b".",
    b"..",
    b"/../",
    b"/./",
    b"%2e",
    b"%2E",
    b"%2F",
    b"%2f",
    b"%5C",
    b"%00",
    b"\\",
    b"%",
    b"%25",
    b";",
    b"=",
    b":",
    b",",
    b"_",
    b"-",
    b"\n",
    b" ",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"true",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"0.5",
    b"\"iss\"",
    b"\"aud\"",
    b"\"exp\"",
    b"\"sub\"",
    b"\"azp\"",
    b"\"nbf\"",
    b"\"crit\"",
    b"\"kid\"",
    b"\"alg\"",
    b"\"none\"",
    b"connection",
    b"Connection: ",
    b"keep-alive",
    b"Upgrade",
    b"cookie: ",
    b"X_Internal_Token",
    b"Transfer-Encoding",
    b"[[route]]",
    b"[[issuer]]",
    b"[token]",
    b"key_files",
    b"algorithms = [\"HS256\"]",
    b"auth = \"off\"",
    b"ttl = \"99999999999999999999h\"",
    b"\r\n",
    b"\r\n\r\n",
    b" HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.0",
    b"Host: x\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"chunked",
    b"Expect: 100-continue\r\n",
    b"x-internal-token: ",
    b"0\r\n\r\n",
    b"\r\n0\r\n",
    b"ffffffffffffffff",
];

/// One to four random edits of `input` (byte flips, inserts, deletes, dictionary
/// splices, or a splice with `other`).
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(pos, rng.next() as u8),
            2 if !v.is_empty() => {
                let end = (pos + 1 + rng.below(8)).min(v.len());
                v.drain(pos.min(end)..end);
            }
            3 | 4 => {
                let d = DICTIONARY[rng.below(DICTIONARY.len())];
                v.splice(pos..pos, d.iter().copied());
            }
            5 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(32)).min(other.len());
                v.splice(pos..pos, other[start..end].iter().copied());
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                const SPECIAL: &[u8] = b"./%\\\0=;:_-aZ9";
                v[i] = SPECIAL[rng.below(SPECIAL.len())];
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// A fuzz target: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("verify_token", verify_token),
    ("verify_claims", verify_claims),
    ("hygiene", hygiene),
    ("normalize", normalize),
    ("config", config),
    ("h1_request", h1_request),
    ("h1_response", h1_response),
    ("chunked", chunked),
    ("h1_differential", h1_differential),
];

// ---------------------------------------------------------------------------
// HTTP/1.1 differential: client bytes through running claimsmith instances

#[path = "../../tests/support/strict_h1.rs"]
mod strict_h1;

/// What the strict upstream of `h1_differential` saw that it must not have.
#[derive(Default)]
struct H1DiffState {
    /// Bytes its strict parser refused (claimsmith and the upstream disagree on framing).
    violations: std::sync::Mutex<Vec<String>>,
    /// Requests under /api/, which no fuzzed request can ever be verified for.
    api: std::sync::Mutex<Vec<String>>,
    /// Requests parsed whole.
    requests: std::sync::atomic::AtomicUsize,
    /// Connections with bytes not yet parsed or answered.
    busy: std::sync::atomic::AtomicUsize,
    /// Connections open.
    open: std::sync::atomic::AtomicUsize,
    last_activity: std::sync::Mutex<Option<std::time::Instant>>,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl H1DiffState {
    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }
}

/// The running setup: two claimsmith instances (fast path on, fast path off) whose
/// routes `/public/` (`auth = "off"`) and `/api/` (a token required, from an issuer
/// whose only algorithm is HS256 with a random secret, so nothing ever verifies) both
/// lead to one strict upstream. All of it runs on one runtime thread of its own.
pub struct H1Diff {
    pub proxies: [std::net::SocketAddr; 2],
    state: std::sync::Arc<H1DiffState>,
    /// One input at a time: the upstream's bookkeeping is per input.
    one_at_a_time: std::sync::Mutex<()>,
}

/// A secret nobody (the fuzzer included) can know: fresh per process.
fn h1_diff_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4).map(|_| format!("{:016x}", std::collections::hash_map::RandomState::new().build_hasher().finish())).collect()
}

fn h1_diff_config(upstream: std::net::SocketAddr, secret_file: &std::path::Path, fast_path: bool) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
fast_path = {fast_path}
request_timeout = "2s"
header_read_timeout = "2s"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "https://issuer.h1-differential.example/"
audiences = ["fuzz"]
jwks_uri = "http://127.0.0.1:1/jwks.json"
algorithms = ["HS256"]
hmac_secret_file = "{secret}"

[token]
issuer = "https://claimsmith.h1-differential.example/"
header = "x-internal-token"

[[route]]
path_prefix = "/api/"
upstream = "http://{upstream}"
audience = "fuzz-api"

[[route]]
path_prefix = "/public/"
upstream = "http://{upstream}"
auth = "off"
"#,
        secret = secret_file.display()
    )
}

/// One upstream connection: parse strictly, answer every request with a
/// `Content-Length` body, stop at the first byte the parser refuses.
async fn h1_diff_serve(mut stream: tokio::net::TcpStream, state: std::sync::Arc<H1DiffState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    struct Open(std::sync::Arc<H1DiffState>, bool);
    impl Drop for Open {
        fn drop(&mut self) {
            if self.1 {
                self.0.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.0.touch();
        }
    }
    let mut open = Open(state.clone(), false);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !open.1 {
            open.1 = true;
            state.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        state.touch();
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match strict_h1::parse_request(&buf) {
                strict_h1::Step::Done(req, used) => {
                    buf.drain(..used);
                    state.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if req.path().starts_with("/api/") {
                        let what = format!("{} {}", req.method, req.target);
                        state.api.lock().unwrap_or_else(|p| p.into_inner()).push(what);
                    }
                    let body = format!("path={}", strict_h1::escape(req.path().as_bytes()));
                    let head_request = req.method == "HEAD";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                        body.len(),
                        if head_request { "" } else { body.as_str() }
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    state.touch();
                }
                strict_h1::Step::Incomplete => break,
                strict_h1::Step::Error { offset, reason } => {
                    let from = offset.saturating_sub(200);
                    let to = (offset + 80).min(buf.len());
                    let what = format!(
                        "{reason}: {}<<HERE>>{}",
                        strict_h1::escape(&buf[from..offset]),
                        strict_h1::escape(&buf[offset..to])
                    );
                    state.violations.lock().unwrap_or_else(|p| p.into_inner()).push(what);
                    return;
                }
            }
        }
        if buf.is_empty() && open.1 {
            open.1 = false;
            state.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The shared setup, started on first use.
pub fn h1_diff() -> &'static H1Diff {
    static F: OnceLock<H1Diff> = OnceLock::new();
    F.get_or_init(|| {
        claimsmith::install_crypto_provider();
        let state = std::sync::Arc::new(H1DiffState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::Builder::new()
            .name("h1-differential".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("upstream listener");
                    let upstream = listener.local_addr().expect("upstream address");
                    let accept_state = st.clone();
                    tokio::spawn(async move {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else { continue };
                            accept_state.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            accept_state.touch();
                            let task = tokio::spawn(h1_diff_serve(stream, accept_state.clone()));
                            let mut tasks = accept_state.tasks.lock().unwrap_or_else(|p| p.into_inner());
                            tasks.retain(|t| !t.is_finished());
                            tasks.push(task.abort_handle());
                        }
                    });
                    let secret_file =
                        std::env::temp_dir().join(format!("claimsmith-h1-differential-{}", std::process::id()));
                    std::fs::write(&secret_file, h1_diff_secret()).expect("write the HMAC secret file");
                    let mut running = Vec::new();
                    for fast_path in [true, false] {
                        let cfg = claimsmith::parse_config(&h1_diff_config(upstream, &secret_file, fast_path))
                            .expect("h1_differential config");
                        running.push(claimsmith::start(cfg).await.expect("start claimsmith"));
                    }
                    let _ = std::fs::remove_file(&secret_file);
                    tx.send([running[0].proxy_addr, running[1].proxy_addr]).expect("hand over the addresses");
                    // Serve for the life of the process.
                    std::future::pending::<()>().await;
                    drop(running);
                });
            })
            .expect("spawn the h1_differential runtime thread");
        let proxies = rx.recv().expect("the h1_differential setup failed to start");
        H1Diff { proxies, state, one_at_a_time: std::sync::Mutex::new(()) }
    })
}

/// How long the client, claimsmith and the upstream must all have been silent before
/// the client ends its side. Ending it earlier would lose requests: hyper drops a
/// request in progress when the client half-closes (which is no error of claimsmith's,
/// but would leave those requests unfuzzed).
const H1_DIFF_QUIET: std::time::Duration = std::time::Duration::from_millis(5);

impl H1Diff {
    fn upstream_quiet(&self, for_at_least: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let last = *self.state.last_activity.lock().unwrap_or_else(|p| p.into_inner());
        self.state.busy.load(SeqCst) == 0 && last.is_none_or(|t| t.elapsed() >= for_at_least)
    }

    /// Connects, writes `data`, reads until everything has gone quiet, ends the write
    /// side, reads until claimsmith closes (or stays silent for a moment).
    fn exchange(&self, addr: std::net::SocketAddr, data: &[u8]) {
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};
        let mut s = std::net::TcpStream::connect(addr).expect("connect to claimsmith");
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        // claimsmith may close before reading everything: that is its right.
        let _ = s.write_all(data);
        let mut buf = [0u8; 16 * 1024];
        let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => last = Instant::now(),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            let quiet = last.elapsed() >= H1_DIFF_QUIET && self.upstream_quiet(H1_DIFF_QUIET);
            if quiet || Instant::now() >= deadline {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Waits until no upstream connection holds bytes it has not dealt with, and the
    /// upstream has been quiet for a moment (bounded).
    fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.upstream_quiet(std::time::Duration::from_millis(2)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Closes every upstream connection (each input starts on fresh ones) and waits
    /// until they are gone.
    fn close_upstream_connections(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let tasks = std::mem::take(&mut *self.state.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.iter().for_each(tokio::task::AbortHandle::abort);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.state.open.load(SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Target `h1_differential`: any bytes, as a client's whole connection, to claimsmith
/// with the fast path on and with it off. The strict upstream (the independent parser
/// in tests/support/strict_h1.rs) must never get bytes it refuses (claimsmith and
/// the upstream agree on where every request ends: no smuggling, no desync), and
/// never a request under /api/ (no request is ever verified, so none may reach the
/// protected route).
pub fn h1_differential(data: &[u8]) {
    h1_differential_counted(data);
}

/// [`h1_differential`], returning how many requests the upstream got (both
/// instances together), so tests can tell that inputs get through at all.
pub fn h1_differential_counted(data: &[u8]) -> usize {
    let f = h1_diff();
    let _one = f.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
    let before = f.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    for (addr, fast_path) in [(f.proxies[0], true), (f.proxies[1], false)] {
        f.exchange(addr, data);
        f.settle();
        let violations = std::mem::take(&mut *f.state.violations.lock().unwrap_or_else(|p| p.into_inner()));
        let api = std::mem::take(&mut *f.state.api.lock().unwrap_or_else(|p| p.into_inner()));
        f.close_upstream_connections();
        assert!(
            violations.is_empty(),
            "fast_path={fast_path}: the upstream got bytes a strict HTTP/1.1 parser refuses: {violations:?}\ninput: {}",
            strict_h1::escape(data)
        );
        assert!(
            api.is_empty(),
            "fast_path={fast_path}: unverified requests reached the protected route: {api:?}\ninput: {}",
            strict_h1::escape(data)
        );
    }
    f.state.requests.load(std::sync::atomic::Ordering::SeqCst) - before
}
