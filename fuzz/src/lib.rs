//! The logic of every fuzz target, with the invariants each one checks.
//!
//! This file is used twice:
//! - by the cargo-fuzz binaries in `fuzz/fuzz_targets/` (nightly, libFuzzer);
//! - by the stable-Rust property test `tests/fuzz_smoke.rs` of the main crate, which
//!   includes it with `#[path]` and runs every target over the committed corpus plus
//!   a few thousand deterministic mutations. So it may only use crates the main crate
//!   depends on (claimsmith, http, serde, serde_json, base64, jsonwebtoken, tokio, url).
//!
//! A target returns normally when the input is handled correctly and panics (the
//! fuzzer's crash signal) when an invariant is broken.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use claimsmith::proxy::{hygiene, path};
use claimsmith::verify::Verifier;
use claimsmith::verify::jwks::KeySet;
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
    let sk = claimsmith::mint::SigningKey::from_pem(pem.as_bytes()).expect("fixture key");
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
        let cfg = claimsmith::Config::parse(&fixture_config(&secret_file)).expect("fixture config");
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
                claimsmith::http_client::client(claimsmith::http_client::connector(None).expect("connector"))
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

/// An independent reading of SPEC §3 step 3 for the claims: `Ok((sub, client))` when
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
/// anything accepted must satisfy every rule of SPEC §3 step 3.
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
    let listed: Vec<String> = original
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| canon(s.trim())).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
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
    match claimsmith::Config::parse(text) {
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
];
