//! docs/security.md, "token verification": every way a token must be refused. Each test asserts the answer
//! (401 `invalid_token` problem) and that the upstream saw nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD as B64};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

// ---------------------------------------------------------------------------
// Helpers

/// Signs `header.payload` (both already base64url) with `key`, as its issuer would.
fn sign_parts(h_b64: &str, p_b64: &str, key: &IssuerKey) -> String {
    let input = format!("{h_b64}.{p_b64}");
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{input}.{sig}")
}

/// Signs raw JSON texts (which may hold duplicate members) with `key`.
fn sign_json(header: &str, payload: &str, key: &IssuerKey) -> String {
    sign_parts(&B64.encode(header), &B64.encode(payload), key)
}

fn rsa_header(key: &IssuerKey) -> String {
    json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}).to_string()
}

/// Asserts a 401 `invalid_token` for `token` on /api/x.
async fn refused(h: &Harness, token: &str, what: &str) {
    let r = h.get_with_token("/api/x", token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: accepted ({})", r.text());
    r.assert_invalid_token();
}

/// A harness whose issuer allows HS256 with a configured secret.
async fn hmac_harness(secret: &str) -> (Harness, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("hmac.secret");
    std::fs::write(&path, secret).unwrap();
    let toml = DEFAULT_TOML.replace(
        "algorithms = [\"RS256\", \"ES256\"]",
        &format!("algorithms = [\"RS256\", \"ES256\", \"HS256\"]\nhmac_secret_file = \"{}\"", path.display()),
    );
    assert_ne!(toml, DEFAULT_TOML, "the template changed; update hmac_harness");
    (Harness::start_with(&toml, default_metadata()).await, d)
}

/// Every `secrets` form, with the key's kid and without, signs an HS256 token that
/// must be refused with 401 `invalid_token`.
async fn refuses_hs256_keyed_with(h: &Harness, secrets: &[(&str, Vec<u8>)], kid: &str, label: &str) {
    let claims = h.issuer.claims(USER_1);
    for (what, secret) in secrets {
        for k in [Some(kid), None] {
            refused(h, &hs256(&claims, secret, k), &format!("HS256 keyed with the {label}{what} (kid {k:?})")).await;
        }
    }
}

fn hs256(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

// Minimal DER, to turn the published JWKs into the byte forms an HS256 key
// confusion attack would use as the "secret".
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 128 {
        out.push(n as u8);
    } else {
        let be = n.to_be_bytes();
        let be: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | be.len() as u8);
        out.extend(be);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(b: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
    if v.first().is_none_or(|x| x & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn pem(label: &str, der: &[u8], trailing_newline: bool) -> Vec<u8> {
    let b64 = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for c in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(c).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----"));
    if trailing_newline {
        s.push('\n');
    }
    s.into_bytes()
}

fn jwk_bytes(jwk: &Value, field: &str) -> Vec<u8> {
    B64.decode(jwk[field].as_str().unwrap()).unwrap()
}

/// Every byte form of the issuer's RSA public key.
fn rsa_public_forms(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let (n, e) = (jwk_bytes(jwk, "n"), jwk_bytes(jwk, "e"));
    let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let alg_id =
        der(0x30, &[der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]), vec![0x05, 0x00]].concat());
    let spki = der(0x30, &[alg_id, der(0x03, &[&[0u8][..], &pkcs1].concat())].concat());
    vec![
        ("SPKI PEM", pem("PUBLIC KEY", &spki, true)),
        ("SPKI PEM without final newline", pem("PUBLIC KEY", &spki, false)),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1, true)),
        ("SPKI DER", spki),
        ("PKCS#1 DER", pkcs1),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("modulus bytes", n),
    ]
}

/// Every byte form of the issuer's EC public key.
fn ec_public_forms(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let point = [&[4u8][..], &jwk_bytes(jwk, "x"), &jwk_bytes(jwk, "y")].concat();
    let alg_id = der(
        0x30,
        &[
            der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ]
        .concat(),
    );
    let spki = der(0x30, &[alg_id, der(0x03, &[&[0u8][..], &point].concat())].concat());
    vec![
        ("SPKI PEM", pem("PUBLIC KEY", &spki, true)),
        ("SPKI PEM without final newline", pem("PUBLIC KEY", &spki, false)),
        ("SPKI DER", spki),
        ("uncompressed point", point),
        ("JWK JSON", jwk.to_string().into_bytes()),
    ]
}

/// A loopback server standing in for an attacker's key host; counts every request.
async fn attacker_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve({
        let hits = hits.clone();
        move |_req: Request<Incoming>| {
            hits.fetch_add(1, SeqCst);
            async move { json_response(StatusCode::OK, &json!({"keys": []})) }
        }
    })
    .await;
    (format!("http://{addr}"), hits)
}

/// Only discovery and the JWKS were ever asked of the issuer.
fn issuer_paths_are_clean(h: &Harness) {
    for p in h.issuer.paths.lock().unwrap().iter() {
        assert!(
            p == "/.well-known/openid-configuration" || p == "/.well-known/jwks.json",
            "the issuer was asked for {p:?}"
        );
    }
}

/// Runs the embedded-key-header attack for `field` set to `value(attacker_url, jwk)`.
async fn embedded_key_header(field: &str, value: impl Fn(&str, &Value) -> Value) {
    let h = Harness::start().await;
    let (url, hits) = attacker_server().await;
    let attacker = IssuerKey::generate(Algorithm::RS256, "attacker-1");
    let claims = h.issuer.claims(USER_1).to_string();
    // With the attacker's own kid (unknown to the issuer) and with the issuer's kid.
    for kid in ["attacker-1", "rsa-1"] {
        let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        header[field] = value(&url, &attacker.jwk);
        let t = sign_json(&header.to_string(), &claims, &attacker);
        refused(&h, &t, &format!("{field} with kid {kid}")).await;
    }
    assert_eq!(hits.load(SeqCst), 0, "claimsmith fetched the {field} URL");
    issuer_paths_are_clean(&h);
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// alg

#[tokio::test]
async fn alg_none_is_refused_in_any_casing() {
    let h = Harness::start().await;
    let claims = B64.encode(h.issuer.claims(USER_1).to_string());
    let real_sig = h.issuer.token(USER_1).rsplit('.').next().unwrap().to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for header in [json!({"alg": alg}), json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"})] {
            let hb = B64.encode(header.to_string());
            for sig in ["", real_sig.as_str(), "AAAA"] {
                refused(&h, &format!("{hb}.{claims}.{sig}"), &format!("alg {alg} sig {:.8}", sig)).await;
            }
        }
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_pem_is_refused() {
    let plain = Harness::start().await;
    let (hmac, _d) = hmac_harness("the-configured-client-secret").await;
    for h in [&plain, &hmac] {
        let forms: Vec<_> =
            rsa_public_forms(&h.issuer.rsa.jwk).into_iter().filter(|(w, _)| w.contains("PEM")).collect();
        refuses_hs256_keyed_with(h, &forms, "rsa-1", "").await;
        assert!(h.upstream.saw_nothing());
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_der_or_jwk_bytes_is_refused() {
    let plain = Harness::start().await;
    let (hmac, _d) = hmac_harness("the-configured-client-secret").await;
    for h in [&plain, &hmac] {
        let forms: Vec<_> =
            rsa_public_forms(&h.issuer.rsa.jwk).into_iter().filter(|(w, _)| !w.contains("PEM")).collect();
        assert!(forms.len() >= 4);
        refuses_hs256_keyed_with(h, &forms, "rsa-1", "").await;
        assert!(h.upstream.saw_nothing());
    }
}

#[tokio::test]
async fn hs256_signed_with_the_ec_public_key_is_refused() {
    let plain = Harness::start().await;
    let (hmac, _d) = hmac_harness("the-configured-client-secret").await;
    for h in [&plain, &hmac] {
        refuses_hs256_keyed_with(h, &ec_public_forms(&h.issuer.ec.jwk), "ec-1", "EC ").await;
        assert!(h.upstream.saw_nothing());
    }
}

#[tokio::test]
async fn hs256_with_the_configured_secret_is_accepted_control() {
    // Control for the key-confusion tests: HS256 itself works where it is configured.
    let (h, _d) = hmac_harness("the-configured-client-secret").await;
    let r = h.get_with_token("/api/x", &hs256(&h.issuer.claims(USER_1), b"the-configured-client-secret", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(h.upstream.requests().len(), 1);
}

#[tokio::test]
async fn hs256_without_a_configured_hmac_secret_is_refused() {
    let h = Harness::start().await;
    let claims = h.issuer.claims(USER_1);
    for secret in [&b"secret"[..], b"", b"the-configured-client-secret"] {
        refused(&h, &hs256(&claims, secret, None), "HS256 without a secret").await;
        refused(&h, &hs256(&claims, secret, Some("rsa-1")), "HS256 without a secret").await;
    }
    for alg in ["HS384", "HS512"] {
        let hb = B64.encode(json!({"alg": alg, "kid": "rsa-1"}).to_string());
        refused(&h, &format!("{hb}.{}.AAAA", B64.encode(claims.to_string())), alg).await;
    }
    assert!(h.upstream.saw_nothing());
    // And the configuration cannot even allow HS256 without a secret.
    let toml = DEFAULT_TOML
        .replace("algorithms = [\"RS256\", \"ES256\"]", "algorithms = [\"RS256\", \"HS256\"]")
        .replace("{issuer}", "https://issuer.example/")
        .replace("{upstream}", "http://127.0.0.1:9")
        .replace("{metadata}", "/nonexistent.json");
    assert!(claimsmith::parse_config(&toml).is_err(), "HS256 without hmac_secret_* was accepted by the config");
}

#[tokio::test]
async fn alg_that_does_not_match_the_kid_key_is_refused() {
    let h = Harness::start().await;
    let claims = h.issuer.claims(USER_1).to_string();
    // An RS256 signature presented under the EC key's kid, and the reverse.
    let t = sign_json(&json!({"alg": "RS256", "kid": "ec-1"}).to_string(), &claims, &h.issuer.rsa);
    refused(&h, &t, "RS256 with the EC kid").await;
    let t = sign_json(&json!({"alg": "ES256", "kid": "rsa-1"}).to_string(), &claims, &h.issuer.ec);
    refused(&h, &t, "ES256 with the RSA kid").await;
    // An algorithm outside the allow-list, even with a key of the right family.
    let hb = B64.encode(json!({"alg": "PS256", "kid": "rsa-1"}).to_string());
    refused(&h, &format!("{hb}.{}.AAAA", B64.encode(&claims)), "PS256").await;
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// kid and the JWKS

#[tokio::test]
async fn unknown_kids_cause_at_most_one_refetch() {
    let h = Arc::new(Harness::start().await);
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 1, "start-up fetch");
    let claims = h.issuer.claims(USER_1);
    let token = |i: usize| {
        let mut hd = Header::new(Algorithm::RS256);
        hd.kid = Some(format!("unknown-kid-{i}"));
        h.issuer.sign_header(&h.issuer.rsa, &hd, &claims)
    };
    // Ten at once...
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (h, t) = (h.clone(), token(i));
        set.spawn(async move { h.get_with_token("/api/x", &t).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().assert_invalid_token();
    }
    // ...then ten one after the other.
    for i in 10..20 {
        refused(&h, &token(i), "unknown kid").await;
    }
    let fetches = h.issuer.jwks_fetches.load(SeqCst);
    assert!(fetches <= 2, "20 unknown kids made {fetches} JWKS fetches (start-up included)");
    assert!(h.upstream.saw_nothing());
    // The known key still works.
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn key_rotated_in_at_the_issuer_is_accepted_on_first_sight() {
    let h = Harness::start().await;
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 1);
    let new_key = IssuerKey::generate(Algorithm::RS256, "rsa-2");
    h.issuer.published.lock().unwrap().push(new_key.jwk.clone());
    let r = h.get_with_token("/api/x", &h.issuer.sign(&new_key, &h.issuer.claims(USER_1))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 2, "one refetch for the new kid");
    // Known now: no further fetch.
    let r = h.get_with_token("/api/x", &h.issuer.sign(&new_key, &h.issuer.claims(USER_2))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 2);
}

#[tokio::test]
async fn key_rotated_in_within_30s_of_an_unknown_kid_refetch_is_refused() {
    // The price of the spraying limit (docs/security.md, "token verification"): one unknown-kid refetch per 30 s.
    let h = Harness::start().await;
    let mut hd = Header::new(Algorithm::RS256);
    hd.kid = Some("spray".into());
    refused(&h, &h.issuer.sign_header(&h.issuer.rsa, &hd, &h.issuer.claims(USER_1)), "unknown kid").await;
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 2);
    let new_key = IssuerKey::generate(Algorithm::RS256, "rsa-2");
    h.issuer.published.lock().unwrap().push(new_key.jwk.clone());
    refused(&h, &h.issuer.sign(&new_key, &h.issuer.claims(USER_1)), "new key inside the 30 s window").await;
    assert_eq!(h.issuer.jwks_fetches.load(SeqCst), 2, "refetched inside the 30 s window");
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn kid_path_traversal_and_injection_strings_are_refused() {
    let h = Harness::start().await;
    let claims = h.issuer.claims(USER_1);
    let long = "k".repeat(10_000);
    for kid in [
        "../../etc/passwd",
        "../../../../../../dev/null",
        "/.well-known/jwks.json",
        "' OR 1=1 --",
        "\" OR \"\"=\"",
        "rsa-1' --",
        "rsa-1\u{0}",
        "rsa-1 ",
        "RSA-1",
        "$(id)",
        "http://127.0.0.1:1/jwks.json",
        long.as_str(),
    ] {
        let mut hd = Header::new(Algorithm::RS256);
        hd.kid = Some(kid.to_string());
        refused(&h, &h.issuer.sign_header(&h.issuer.rsa, &hd, &claims), &format!("kid {:.40}", kid)).await;
    }
    issuer_paths_are_clean(&h);
    assert!(h.issuer.jwks_fetches.load(SeqCst) <= 2);
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn token_without_kid_is_accepted_with_one_key_per_algorithm() {
    let h = Harness::start().await;
    let mut claims = h.issuer.claims(USER_1);
    let rs = h.issuer.sign_header(&h.issuer.rsa, &Header::new(Algorithm::RS256), &claims);
    let r = h.get_with_token("/api/x", &rs).await;
    assert_eq!(r.status, StatusCode::OK, "RS256 without kid: {}", r.text());
    claims["sub"] = json!(USER_2);
    let es = h.issuer.sign_header(&h.issuer.ec, &Header::new(Algorithm::ES256), &claims);
    let r = h.get_with_token("/api/x", &es).await;
    assert_eq!(r.status, StatusCode::OK, "ES256 without kid: {}", r.text());
    assert_eq!(h.upstream.requests().len(), 2);
}

#[tokio::test]
async fn token_without_kid_is_refused_with_two_rsa_keys() {
    init();
    let issuer = Issuer::start().await;
    let second = IssuerKey::generate(Algorithm::RS256, "rsa-2");
    issuer.published.lock().unwrap().push(second.jwk.clone());
    let h = Harness::start_parts(issuer, Upstream::start().await, DEFAULT_TOML, default_metadata()).await;
    let claims = h.issuer.claims(USER_1);
    for key in [&*h.issuer.rsa, &second] {
        refused(&h, &h.issuer.sign_header(key, &Header::new(Algorithm::RS256), &claims), "no kid, two RSA keys").await;
    }
    assert!(h.upstream.saw_nothing());
    // With its kid each key works.
    let r = h.get_with_token("/api/x", &h.issuer.sign(&second, &claims)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn jku_header_is_ignored() {
    embedded_key_header("jku", |url, _| json!(format!("{url}/jwks.json"))).await;
}

#[tokio::test]
async fn x5u_header_is_ignored() {
    embedded_key_header("x5u", |url, _| json!(format!("{url}/cert.pem"))).await;
}

#[tokio::test]
async fn jwk_header_is_ignored() {
    embedded_key_header("jwk", |_, jwk| jwk.clone()).await;
}

#[tokio::test]
async fn x5c_header_is_ignored() {
    embedded_key_header("x5c", |_, jwk| {
        // Not a real certificate: the point is that nothing in x5c is ever used.
        json!([STANDARD.encode(jwk.to_string())])
    })
    .await;
}

#[tokio::test]
async fn unknown_crit_is_refused() {
    let h = Harness::start().await;
    let claims = h.issuer.claims(USER_1).to_string();
    for header in [
        json!({"alg": "RS256", "kid": "rsa-1", "crit": ["x-unknown"], "x-unknown": 1}),
        json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": false}),
        json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}),
        json!({"alg": "RS256", "kid": "rsa-1", "crit": []}),
    ] {
        refused(&h, &sign_json(&header.to_string(), &claims, &h.issuer.rsa), &header.to_string()).await;
    }
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// Claims

async fn refused_claims(edit: impl Fn(&mut Value, u64)) {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    edit(&mut c, now());
    refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), &c.to_string()).await;
    refused(&h, &h.issuer.sign(&h.issuer.ec, &c), &c.to_string()).await;
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn expired_beyond_leeway_is_refused() {
    refused_claims(|c, n| c["exp"] = json!(n - 120)).await;
}

#[tokio::test]
async fn expired_within_leeway_is_accepted_control() {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    c["exp"] = json!(now() - 5);
    let r = h.get_with_token("/api/x", &h.issuer.sign(&h.issuer.rsa, &c)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn exp_missing_is_refused() {
    refused_claims(|c, _| {
        c.as_object_mut().unwrap().remove("exp");
    })
    .await;
}

#[tokio::test]
async fn exp_not_a_number_is_refused() {
    refused_claims(|c, n| c["exp"] = json!((n + 600).to_string())).await;
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    refused_claims(|c, n| c["nbf"] = json!(n + 120)).await;
}

#[tokio::test]
async fn iat_in_the_future_is_refused() {
    refused_claims(|c, n| c["iat"] = json!(n + 120)).await;
}

#[tokio::test]
async fn wrong_iss_is_refused() {
    let h = Harness::start().await;
    let good = h.issuer.url.clone();
    for iss in [
        json!("https://evil.example/"),
        json!(good.trim_end_matches('/')),
        json!(format!("{good}/")),
        json!(good.to_uppercase()),
        json!(format!(" {good}")),
        json!([good]),
        Value::Null,
    ] {
        let mut c = h.issuer.claims(USER_1);
        c["iss"] = iss.clone();
        refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), &format!("iss {iss}")).await;
    }
    let mut c = h.issuer.claims(USER_1);
    c.as_object_mut().unwrap().remove("iss");
    refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), "iss missing").await;
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn wrong_aud_is_refused() {
    let h = Harness::start().await;
    for aud in [json!("client-3"), json!(["client-3"]), json!("CLIENT-1"), json!([]), json!(1), json!(INTERNAL_AUD)] {
        let mut c = h.issuer.claims(USER_1);
        c["aud"] = aud.clone();
        refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), &format!("aud {aud}")).await;
    }
    let mut c = h.issuer.claims(USER_1);
    c.as_object_mut().unwrap().remove("aud");
    refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), "aud missing").await;
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn two_audiences_without_azp_are_refused() {
    refused_claims(|c, _| c["aud"] = json!([CLIENT_1, CLIENT_2])).await;
}

#[tokio::test]
async fn two_audiences_with_azp_not_in_audiences_are_refused() {
    let h = Harness::start().await;
    for azp in [json!("client-3"), json!(""), json!([CLIENT_1]), json!(INTERNAL_AUD)] {
        let mut c = h.issuer.claims(USER_1);
        c["aud"] = json!([CLIENT_1, "client-3"]);
        c["azp"] = azp.clone();
        refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), &format!("azp {azp}")).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn sub_missing_is_refused() {
    let h = Harness::start().await;
    for sub in [None, Some(json!("")), Some(json!(42)), Some(Value::Null)] {
        let mut c = h.issuer.claims(USER_1);
        match &sub {
            None => {
                c.as_object_mut().unwrap().remove("sub");
            }
            Some(v) => c["sub"] = v.clone(),
        }
        refused(&h, &h.issuer.sign(&h.issuer.rsa, &c), &format!("sub {sub:?}")).await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn duplicate_iss_members_are_refused() {
    let h = Harness::start().await;
    let good = h.issuer.url.clone();
    let n = now();
    let rest = format!(r#""sub":"{USER_1}","aud":"{CLIENT_1}","iat":{n},"exp":{}"#, n + 600);
    for payload in [
        format!(r#"{{"iss":"{good}","iss":"https://evil.example/",{rest}}}"#),
        format!(r#"{{"iss":"https://evil.example/","iss":"{good}",{rest}}}"#),
        format!(r#"{{"iss":"{good}","iss":"{good}",{rest}}}"#),
        format!(r#"{{"iss":"{good}",{rest},"sub":"{USER_2}"}}"#),
        format!(r#"{{"iss":"{good}",{rest},"aud":"client-3"}}"#),
    ] {
        refused(&h, &sign_json(&rsa_header(&h.issuer.rsa), &payload, &h.issuer.rsa), &payload).await;
    }
    // Duplicates in the header too.
    let claims = h.issuer.claims(USER_1).to_string();
    for header in [r#"{"alg":"RS256","alg":"none","kid":"rsa-1"}"#, r#"{"alg":"RS256","kid":"rsa-1","kid":"ec-1"}"#] {
        refused(&h, &sign_json(header, &claims, &h.issuer.rsa), header).await;
    }
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// Shape and encoding

#[tokio::test]
async fn two_parts_are_refused() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let (hp, _) = t.rsplit_once('.').unwrap();
    for bad in [hp.to_string(), format!("{hp}."), t.split('.').next().unwrap().to_string()] {
        refused(&h, &bad, "two parts").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn four_parts_are_refused() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    let (hp, sig) = t.rsplit_once('.').unwrap();
    let (hd, p) = hp.split_once('.').unwrap();
    for bad in [format!("{t}.{sig}"), format!("{t}."), format!("{hd}.{hd}.{p}.{sig}"), format!("{hd}..{p}.{sig}")] {
        refused(&h, &bad, "four parts").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn jwe_shaped_token_is_refused() {
    let h = Harness::start().await;
    let claims = B64.encode(h.issuer.claims(USER_1).to_string());
    for alg in ["RSA-OAEP", "RS256", "dir"] {
        let hb = B64.encode(json!({"alg": alg, "enc": "A256GCM", "kid": "rsa-1"}).to_string());
        let jwe =
            format!("{hb}.{}.{}.{claims}.{}", B64.encode([7u8; 256]), B64.encode([1u8; 12]), B64.encode([2u8; 16]));
        refused(&h, &jwe, "five parts").await;
        refused(&h, &format!("{hb}..{}.{claims}.{}", B64.encode([1u8; 12]), B64.encode([2u8; 16])), "JWE dir").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn token_over_16_kib_is_refused() {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    c["pad"] = json!("p".repeat(13_000));
    let t = h.issuer.sign(&h.issuer.rsa, &c);
    assert!(t.len() > 16 * 1024, "{}", t.len());
    refused(&h, &t, "over 16 KiB").await;
    // Also when the excess is pure garbage that would not even decode.
    refused(&h, &"a".repeat(16 * 1024 + 1), "over 16 KiB garbage").await;
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn token_just_under_16_kib_is_accepted_control() {
    let h = Harness::start().await;
    let mut c = h.issuer.claims(USER_1);
    c["pad"] = json!("p".repeat(11_000));
    let t = h.issuer.sign(&h.issuer.rsa, &c);
    assert!(t.len() < 16 * 1024, "{}", t.len());
    let r = h.get_with_token("/api/x", &t).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn empty_signature_is_refused() {
    let h = Harness::start().await;
    for t in [h.issuer.token(USER_1), h.issuer.token_es256(USER_1)] {
        let (hp, _) = t.rsplit_once('.').unwrap();
        refused(&h, &format!("{hp}."), "empty signature").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn truncated_signature_is_refused() {
    let h = Harness::start().await;
    for t in [h.issuer.token(USER_1), h.issuer.token_es256(USER_1)] {
        let (hp, sig) = t.rsplit_once('.').unwrap();
        for cut in [1, 2, 4, sig.len() / 2, sig.len() - 1] {
            refused(&h, &format!("{hp}.{}", &sig[..sig.len() - cut]), &format!("signature minus {cut}")).await;
        }
        // A flipped bit, for good measure.
        let mut raw = B64.decode(sig).unwrap();
        raw[0] ^= 1;
        refused(&h, &format!("{hp}.{}", B64.encode(&raw)), "flipped bit").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn ecdsa_psychic_signature_is_refused() {
    // CVE-2022-21449: r = s = 0 verified as valid in some Java versions.
    let h = Harness::start().await;
    let claims = h.issuer.claims(USER_1);
    // The order n of P-256: r = s = n is the same attack modulo n.
    let n = hex_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    for kid in [Some("ec-1"), None] {
        let mut header = json!({"alg": "ES256", "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        for sig in [vec![0u8; 64], [n.clone(), n.clone()].concat(), [vec![0u8; 32], n.clone()].concat()] {
            refused(&h, &raw_token(&header, &claims, &sig), "psychic signature").await;
        }
        // The DER form of r = s = 0 as well.
        refused(&h, &raw_token(&header, &claims, &[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]), "DER zeros").await;
    }
    assert!(h.upstream.saw_nothing());
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// JSON text of `base` plus filler whose base64url encoding has `want` in it.
fn json_whose_b64_has(base: &Value, want: char) -> String {
    for filler in ["~~~", "~~~~", "~~~~~", "???", "????", "?????", "~?~?~?", ">>>~~~???"] {
        for spaces in 0..3 {
            let mut v = base.clone();
            v["f"] = json!(filler);
            let s = format!("{v}{}", " ".repeat(spaces));
            if B64.encode(&s).contains(want) {
                return s;
            }
        }
    }
    panic!("no filler gives {want}");
}

#[tokio::test]
async fn padding_in_any_part_is_refused() {
    let h = Harness::start().await;
    let key = &h.issuer.rsa;
    let mut header = rsa_header(key);
    while header.len().is_multiple_of(3) {
        header.push(' ');
    }
    let mut payload = h.issuer.claims(USER_1).to_string();
    while payload.len().is_multiple_of(3) {
        payload.push(' ');
    }
    let (hp, pp) = (URL_SAFE.encode(&header), URL_SAFE.encode(&payload));
    assert!(hp.ends_with('=') && pp.ends_with('='));
    let (hn, pn) = (B64.encode(&header), B64.encode(&payload));
    // Signed over the padded text, as a sloppy issuer would.
    refused(&h, &sign_parts(&hp, &pn, key), "padded header").await;
    refused(&h, &sign_parts(&hn, &pp, key), "padded payload").await;
    let good = sign_parts(&hn, &pn, key);
    let sig = good.rsplit('.').next().unwrap();
    let padded_sig = URL_SAFE.encode(B64.decode(sig).unwrap());
    assert!(padded_sig.ends_with('='));
    refused(&h, &format!("{hn}.{pn}.{padded_sig}"), "padded signature").await;
    refused(&h, &format!("{hn}.{pn}.{sig}="), "one = on the signature").await;
    refused(&h, &format!("{hn}=.{pn}.{sig}"), "stray = on the header").await;
    assert!(h.upstream.saw_nothing());
    // Control: the canonical form of the same token goes through.
    let r = h.get_with_token("/api/x", &good).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn whitespace_in_any_part_is_refused() {
    let h = Harness::start().await;
    let key = &h.issuer.rsa;
    let (hn, pn) = (B64.encode(rsa_header(key)), B64.encode(h.issuer.claims(USER_1).to_string()));
    let good = sign_parts(&hn, &pn, key);
    let sig = good.rsplit('.').next().unwrap().to_string();
    let ins = |s: &str, ws: &str| format!("{}{ws}{}", &s[..s.len() / 2], &s[s.len() / 2..]);
    for ws in ["\t", " "] {
        refused(&h, &sign_parts(&ins(&hn, ws), &pn, key), "whitespace in header").await;
        refused(&h, &sign_parts(&hn, &ins(&pn, ws), key), "whitespace in payload").await;
        refused(&h, &format!("{hn}.{pn}.{}", ins(&sig, ws)), "whitespace in signature").await;
        refused(&h, &format!("{hn}{ws}.{pn}.{sig}"), "whitespace before a dot").await;
        refused(&h, &format!("{hn}.{ws}{pn}.{sig}"), "whitespace after a dot").await;
    }
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn standard_base64_alphabet_in_any_part_is_refused() {
    let h = Harness::start().await;
    let key = &h.issuer.rsa;
    let std_alpha = |s: &str| s.replace('-', "+").replace('_', "/");
    let base_header = json!({"alg": "RS256", "typ": "JWT", "kid": key.kid});
    for want in ['-', '_'] {
        let header = json_whose_b64_has(&base_header, want);
        let payload = json_whose_b64_has(&h.issuer.claims(USER_1), want);
        let (hn, pn) = (B64.encode(&header), B64.encode(&payload));
        refused(&h, &sign_parts(&std_alpha(&hn), &pn, key), &format!("header with {want} as std")).await;
        refused(&h, &sign_parts(&hn, &std_alpha(&pn), key), &format!("payload with {want} as std")).await;
    }
    // The signature: sign until it holds a '-' or '_' (almost always at once).
    let mut tries = 0;
    let (hn, pn, sig) = loop {
        tries += 1;
        assert!(tries < 50);
        let mut c = h.issuer.claims(USER_1);
        c["n"] = json!(tries);
        let (hn, pn) = (B64.encode(rsa_header(key)), B64.encode(c.to_string()));
        let t = sign_parts(&hn, &pn, key);
        let sig = t.rsplit('.').next().unwrap().to_string();
        if sig.contains(['-', '_']) {
            break (hn, pn, sig);
        }
    };
    refused(&h, &format!("{hn}.{pn}.{}", std_alpha(&sig)), "signature in the standard alphabet").await;
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// Where tokens come from

#[tokio::test]
async fn internal_token_presented_back_is_refused() {
    let h = Harness::start().await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let internal = h.last_internal_token().expect("no internal token");
    refused(&h, &internal, "internal token as bearer").await;
    let r = h.get("/api/x", &[("cookie", &format!("id_token={internal}"))]).await;
    r.assert_invalid_token();
    let r = h.get("/optional/x", &[("authorization", &format!("Bearer {internal}"))]).await;
    r.assert_invalid_token();
    assert_eq!(h.upstream.requests().len(), 1, "a replayed internal token reached the upstream");
}

#[tokio::test]
async fn token_only_in_the_query_string_is_no_token() {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    h.add_secret(&t);
    for q in ["access_token", "id_token", "token"] {
        let r = h.get(&format!("/api/x?{q}={t}"), &[]).await;
        r.assert_problem(401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"claimsmith\""), "{q}");
    }
    assert!(h.upstream.saw_nothing());
}

// ---------------------------------------------------------------------------
// Authorization headers that cannot be read as one bearer token

/// Sends a raw GET of `/api/x` with the fields `fields` makes from a valid token of
/// USER_1; returns the harness and the answer.
async fn answer_to(fields: impl FnOnce(&str) -> Vec<Vec<u8>>) -> (Harness, Resp) {
    let h = Harness::start().await;
    let t = h.issuer.token(USER_1);
    h.add_secret(&t);
    let mut req = format!("GET /api/x HTTP/1.1\r\nHost: {}\r\n", h.proxy.proxy_addr).into_bytes();
    for f in fields(&t) {
        req.extend_from_slice(&f);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let r = h.raw(&req).await.expect("no answer").to_resp();
    (h, r)
}

#[tokio::test]
async fn two_authorization_headers_are_400_even_when_both_are_valid() {
    let (h, r) =
        answer_to(|t| vec![format!("Authorization: Bearer {t}").into(), format!("authorization: Bearer {t}").into()])
            .await;
    r.assert_problem(400);
    assert!(r.text().contains("more than one Authorization header"), "{}", r.text());
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn authorization_that_is_not_text_is_400() {
    // obs-text (a Latin-1 byte) after an otherwise valid token.
    let (h, r) = answer_to(|t| vec![[format!("Authorization: Bearer {t}").as_bytes(), b"\xe9"].concat()]).await;
    r.assert_problem(400);
    assert!(r.text().contains("not text"), "{}", r.text());
    assert!(h.upstream.saw_nothing());
}

#[tokio::test]
async fn authorization_with_utf8_text_that_is_not_ascii_is_400() {
    // Valid UTF-8, not ASCII: in the token (with and without a space beside it), and
    // in another scheme's credentials.
    let cases: [fn(&str) -> Vec<u8>; 3] = [
        |t| format!("Authorization: Bearer {t}\u{e9}").into_bytes(),
        |t| format!("Authorization: Bearer \u{e9}{t} x").into_bytes(),
        |_| "Authorization: Basic \u{e9}".to_string().into_bytes(),
    ];
    for case in cases {
        let (h, r) = answer_to(|t| vec![case(t)]).await;
        r.assert_problem(400);
        assert!(r.text().contains("not text"), "{}", r.text());
        assert!(h.upstream.saw_nothing());
    }
}

#[tokio::test]
async fn bearer_token_with_an_embedded_space_is_invalid() {
    let (h, r) = answer_to(|t| {
        let (a, b) = t.split_at(t.len() / 2);
        vec![format!("Authorization: Bearer {a} {b}").into()]
    })
    .await;
    r.assert_invalid_token();
    assert!(h.upstream.saw_nothing());
}
