//! Interoperability with the JWT libraries backends and identity providers really use.
//! Both directions, through real requests on loopback:
//!
//! - claimsmith → library: the internal token a backend receives verifies with node
//!   `jose` (createRemoteJWKSet + jwtVerify, `typ: at+jwt`), Auth0's node `jwks-rsa`
//!   with `jsonwebtoken`, and Python PyJWT (PyJWKClient), each reading the admin JWKS,
//!   for every `token.algorithm` (EdDSA, ES256, RS256);
//! - library → claimsmith: ID tokens signed by node `jose` and by PyJWT (RS256, ES256,
//!   EdDSA) with keys they generate are accepted when their JWKS is the issuer's.
//!
//! The verifiers are scripts in tests/interop/, run as child processes. Their packages
//! come from `bash .ci/interop-setup.sh` (npm ci + a pinned venv, from the registries);
//! when they are missing, the first test runs that script itself, so a plain
//! `cargo test` on a fresh machine works. If they still cannot be had, these tests
//! FAIL with a message saying so; they never skip.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;

const SETUP: &str = "run `bash .ci/interop-setup.sh` first (npm ci in tests/interop, pip install -r tests/interop/requirements.txt into tests/interop/.venv)";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The Python with PyJWT: the setup's venv, else `python3` from PATH.
fn python() -> PathBuf {
    let venv = interop_dir().join(".venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// Installs the verifiers once per test run when they are missing.
fn ensure_installed() {
    static SETUP_RUN: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    SETUP_RUN.get_or_init(|| {
        let installed = ["jose", "jwks-rsa", "jsonwebtoken"]
            .iter()
            .all(|p| interop_dir().join("node_modules").join(p).join("package.json").exists())
            && interop_dir().join(".venv/bin/python").exists();
        if !installed {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/interop-setup.sh");
            let out = std::process::Command::new("bash").arg(script).output();
            if let Ok(o) = &out
                && !o.status.success()
            {
                eprintln!("interop setup failed:\n{}", String::from_utf8_lossy(&o.stderr));
            }
        }
    });
}

/// Fails (never skips) when a verifier's runtime or packages are missing.
fn preflight() {
    ensure_installed();
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "interop: `node` is not installed; {SETUP}");
    for p in ["jose", "jwks-rsa", "jsonwebtoken"] {
        let manifest = interop_dir().join("node_modules").join(p).join("package.json");
        assert!(manifest.exists(), "interop: node package `{p}` is not installed in tests/interop; {SETUP}");
    }
    let py = std::process::Command::new(python()).args(["-c", "import jwt, cryptography"]).output();
    assert!(
        py.is_ok_and(|o| o.status.success()),
        "interop: Python packages PyJWT and cryptography are not importable by {}; {SETUP}",
        python().display()
    );
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs a script of tests/interop/ (async, so the in-process servers keep serving).
async fn script(program: &Path, args: &[&str]) -> Outcome {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(interop_dir())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} took over 60 s", program.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    claimsmith::mint::alg_name(alg)
}

/// The three backend verifiers: (library name, program, script).
fn verifiers() -> Vec<(&'static str, PathBuf, &'static str)> {
    vec![
        ("jose", PathBuf::from("node"), "verify.mjs"),
        ("jwks-rsa+jsonwebtoken", PathBuf::from("node"), "verify-jwks-rsa.mjs"),
        ("pyjwt", python(), "verify.py"),
    ]
}

/// Whether a library cannot handle `alg` at all (checked, not assumed: the test
/// fails if the library starts supporting it, so this table stays true).
fn unsupported_by_library(library: &str, alg: Algorithm) -> bool {
    // node jsonwebtoken 9.0.3 verifies only rsa, rsa-pss and ec keys (HS*, RS*, PS*,
    // ES*, none): no EdDSA. jwks-rsa 4.1.0 itself returns the Ed25519 key fine.
    library == "jwks-rsa+jsonwebtoken" && alg == Algorithm::EdDSA
}

/// claimsmith → library, for one `token.algorithm`.
async fn internal_token_verifies_everywhere(alg: Algorithm) {
    preflight();
    init();
    let dir = tempfile::tempdir().unwrap();
    let (key, pem) = claimsmith::keys::SigningKey::generate(alg).unwrap();
    let key_path = dir.path().join("signing.pem");
    std::fs::write(&key_path, pem).unwrap();
    let keys = format!("algorithm = \"{}\"\nkey_files = [\"{}\"]\n", alg_name(alg), key_path.display());
    assert!(DEFAULT_TOML.contains("algorithm = \"EdDSA\"\n"));
    let h = Harness::start_with(&DEFAULT_TOML.replace("algorithm = \"EdDSA\"\n", &keys), default_metadata()).await;

    let r = h.get_with_token("/api/orders", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let internal = h.last_internal_token().expect("no internal token");
    let header = jsonwebtoken::decode_header(&internal).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (alg, Some(key.kid())));
    let jwks_url = h.admin_url("/.well-known/jwks.json");

    for (library, program, file) in verifiers() {
        let cell = format!("{library} × {} × claimsmith→library", alg_name(alg));
        let ok = script(&program, &[file, &jwks_url, &internal, TOKEN_ISSUER, INTERNAL_AUD]).await;
        if unsupported_by_library(library, alg) {
            assert_eq!(ok.code, 3, "{cell}: expected the library to report the algorithm unsupported: {}", ok.stderr);
            // jwks-rsa hands over the Ed25519 key; node jsonwebtoken 9 refuses the key type.
            assert!(ok.stderr.contains("UNSUPPORTED-BY-LIBRARY: jsonwebtoken"), "{cell}: {}", ok.stderr);
            assert!(ok.stderr.contains(r#"Unknown key type "ed25519""#), "{cell}: {}", ok.stderr);
            eprintln!("interop: {cell}: unsupported by the library ({})", ok.stderr.trim());
            continue;
        }
        assert_eq!(ok.code, 0, "{cell}: the library refused claimsmith's token: {}", ok.stderr);
        let v = ok.json();
        assert_eq!(v["alg"], alg_name(alg), "{cell}");
        assert_eq!(v["kid"], key.kid(), "{cell}");
        let c = &v["claims"];
        assert_eq!(c["iss"], TOKEN_ISSUER, "{cell}");
        assert_eq!(c["aud"], INTERNAL_AUD, "{cell}");
        assert_eq!(c["sub"], USER_1, "{cell}");
        assert_eq!(c["client_id"], CLIENT_1, "{cell}");
        assert_eq!(c["email"], "u1@example.com", "{cell}");
        assert_eq!(c["app_metadata"], json!({"roles": ["admin"], "plan": "pro", "note": USER_NOTE}), "{cell}");
        assert_eq!(c["client_metadata"], json!({"tenant_key": TENANT_KEY, "region": "eu"}), "{cell}");

        // The library really checks: another audience, or a flipped signature, fails.
        let wrong_aud = script(&program, &[file, &jwks_url, &internal, TOKEN_ISSUER, "another-api"]).await;
        assert_eq!(wrong_aud.code, 1, "{cell}: a wrong audience was accepted: {}", wrong_aud.stdout);
        let tampered = flip_signature(&internal);
        let bad_sig = script(&program, &[file, &jwks_url, &tampered, TOKEN_ISSUER, INTERNAL_AUD]).await;
        assert_eq!(bad_sig.code, 1, "{cell}: a tampered signature was accepted: {}", bad_sig.stdout);
        eprintln!("interop: {cell}: pass");
    }
}

/// The same token with one signature character changed (still valid base64url).
fn flip_signature(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = token.rfind('.').unwrap() + 3;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn eddsa_internal_tokens_verify_with_jose_jwks_rsa_and_pyjwt() {
    internal_token_verifies_everywhere(Algorithm::EdDSA).await;
}

#[tokio::test]
async fn es256_internal_tokens_verify_with_jose_jwks_rsa_and_pyjwt() {
    internal_token_verifies_everywhere(Algorithm::ES256).await;
}

#[tokio::test]
async fn rs256_internal_tokens_verify_with_jose_jwks_rsa_and_pyjwt() {
    internal_token_verifies_everywhere(Algorithm::RS256).await;
}

/// library → claimsmith: ID tokens signed by jose and PyJWT are accepted.
#[tokio::test]
async fn id_tokens_signed_by_jose_and_pyjwt_are_accepted() {
    preflight();
    init();
    let issuer = Issuer::start().await;
    let cases = [
        ("jose", PathBuf::from("node"), "sign.mjs", "RS256"),
        ("jose", PathBuf::from("node"), "sign.mjs", "ES256"),
        ("jose", PathBuf::from("node"), "sign.mjs", "EdDSA"),
        ("pyjwt", python(), "sign.py", "RS256"),
        ("pyjwt", python(), "sign.py", "ES256"),
        ("pyjwt", python(), "sign.py", "EdDSA"),
    ];
    // Every key is published before claimsmith starts, so its start-up fetch holds
    // them all (no unknown-kid refetch, which is limited to one per 30 s).
    let mut tokens = Vec::new();
    for (library, program, file, alg) in &cases {
        let out = script(program, &[file, alg, &issuer.url, CLIENT_1, USER_1]).await;
        assert_eq!(out.code, 0, "{library} could not sign an {alg} token: {}", out.stderr);
        let v = out.json();
        let jwk = v["jwks"]["keys"][0].clone();
        assert!(jwk.is_object(), "{library} printed no JWK: {}", out.stdout);
        issuer.published.lock().unwrap().push(jwk);
        tokens.push((*library, *alg, v["token"].as_str().expect("no token").to_string()));
    }
    let upstream = Upstream::start().await;
    let from = r#"algorithms = ["RS256", "ES256"]"#;
    assert!(DEFAULT_TOML.contains(from));
    let template = DEFAULT_TOML.replace(from, r#"algorithms = ["RS256", "ES256", "EdDSA"]"#);
    let h = Harness::start_parts(issuer, upstream, &template, default_metadata()).await;
    let jwks = h.admin_jwks().await;

    for (library, alg, token) in &tokens {
        let cell = format!("{library} × {alg} × library→claimsmith");
        assert_eq!(jsonwebtoken::decode_header(token).unwrap().alg, alg.parse::<Algorithm>().unwrap(), "{cell}");
        let r = h.get_with_token("/api/x", token).await;
        assert_eq!(r.status, StatusCode::OK, "{cell}: claimsmith refused the token: {}", r.text());
        let claims = verify_internal(&h.last_internal_token().unwrap(), &jwks, INTERNAL_AUD);
        assert_eq!(claims["sub"], USER_1, "{cell}");
        assert_eq!(claims["client_id"], CLIENT_1, "{cell}");
        let email = if *library == "jose" { "jose@example.com" } else { "pyjwt@example.com" };
        assert_eq!(claims["email"], email, "{cell}: copy_claims from the ID token");
        // The same token with a flipped signature is refused.
        h.get_with_token("/api/x", &flip_signature(token)).await.assert_invalid_token();
        eprintln!("interop: {cell}: pass");
    }
}
