//! The command line as a user meets it (README, "Command line"): exit codes, messages that name the
//! key, keygen output, and the demo's printed curl lines working as printed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claimsmith");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env_remove("CLAIMSMITH_CONFIG").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn assert_plain(stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "not a plain message: {stderr}");
}

#[test]
fn check_on_a_broken_config_exits_2_and_names_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[cache]
ttl = "five minutes"

[token]
algorithm = "HS256"

[[route]]
path_prefix = "/api/"
upstream = "ftp://example"
"#,
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    for key in ["cache.ttl", "token.algorithm", "route[0].upstream"] {
        assert!(err.contains(key), "stderr does not name {key}: {err}");
    }
    assert_plain(&err);
}

#[test]
fn check_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(&cfg, "[listen]\nadress = \"127.0.0.1:8080\"\n").unwrap();
    let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("adress"), "{err}");
    assert_plain(&err);
}

#[test]
fn missing_config_is_invalid_config() {
    let (code, _, err) = run(&["check", "--config", "/nonexistent/claimsmith.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/claimsmith.toml"), "{err}");
    let (code, _, err) = run(&["run", "--config", "/nonexistent/claimsmith.toml"]);
    assert_eq!(code, 2);
    assert_plain(&err);
}

#[test]
fn check_on_a_good_config_prints_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(&md, claimsmith::metadata::file::EXAMPLE).unwrap();
    let key = dir.path().join("key.pem");
    let (code, _, _) = run(&["keygen", "--alg", "EdDSA", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0);
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        r#"
[[issuer]]
issuer = "https://tenant.eu.auth0.com/"
audiences = ["CLIENT_ID_1"]
metadata = "local"

[metadata.local]
kind = "file"
path = "metadata.json"

[token]
key_files = ["key.pem"]

[[route]]
path_prefix = "/api/"
upstream = "http://127.0.0.1:3000"
audience = "orders-api"
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("config ok"), "{out}");
}

#[test]
fn a_broken_metadata_file_fails_check_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metadata.json"), r#"{"users": {"u": "s3cr3t-value"}}"#).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[issuer]]\nissuer = \"https://t.example/\"\naudiences = [\"a\"]\nmetadata = \"m\"\n[metadata.m]\nkind = \"file\"\npath = \"metadata.json\"\n[[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\naudience = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("metadata.m.path"), "{err}");
    assert!(!err.contains("s3cr3t-value"), "{err}");
}

#[test]
fn keygen_writes_pkcs8_keys_for_each_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["EdDSA", "ES256", "RS256"] {
        let path = dir.path().join(format!("{alg}.pem"));
        let (code, _, err) = run(&["keygen", "--alg", alg, "--out", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg}: not PKCS#8");
        let key = claimsmith::keys::SigningKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(claimsmith::mint::alg_name(key.algorithm()), alg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never overwrites an existing key.
        let (code, _, _) = run(&["keygen", "--alg", alg, "--out", path.to_str().unwrap()]);
        assert_eq!(code, 1);
    }
    let (code, out, _) = run(&["keygen", "--alg", "ES256"]);
    assert_eq!(code, 0);
    assert!(out.contains("BEGIN PRIVATE KEY"));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(&["keygen", "--alg", "HS256"]).0, 2);
    assert_eq!(run(&["frobnicate"]).0, 2);
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["--help"]).0, 0);
}

/// Starts `claimsmith demo` as a user would, runs the printed curl lines with a real
/// curl, and checks what the browser side gets back.
#[test]
fn demo_curl_lines_work_as_printed() {
    let (mut child, banner, _stdout) = start_demo();
    let curls: Vec<&str> = banner.lines().map(str::trim).filter(|l| l.starts_with("curl ")).collect();
    assert!(curls.len() >= 7, "banner has no curl lines:\n{banner}");

    // Every ID token payload shown is free of metadata.
    assert!(!banner.contains(claimsmith::demo::TENANT_KEY));
    assert!(!banner.contains("app_metadata\":"), "an ID token carries metadata");

    // alice: the backend saw her app_metadata and the client's secret (masked in its reply).
    let alice = sh(curls[0]);
    let v: serde_json::Value = serde_json::from_str(&alice).unwrap_or_else(|_| panic!("not JSON: {alice}"));
    assert_eq!(v["user"], "auth0|alice");
    assert_eq!(v["app_metadata"]["roles"][0], "admin");
    assert_eq!(v["client_metadata"]["tenant_key"], "k-1…(12 chars)");
    assert!(!alice.contains(claimsmith::demo::TENANT_KEY), "the client got the secret");
    let bob: serde_json::Value = serde_json::from_str(&sh(curls[1])).unwrap();
    assert_eq!(bob["app_metadata"]["roles"][0], "viewer");
    // The enterprise-only route: alice's plan passes its rule, bob's does not.
    let alice_reports = sh(curls[2]);
    assert!(alice_reports.starts_with("HTTP/1.1 200"), "{alice_reports}");
    let bob_reports = sh(curls[3]);
    assert!(bob_reports.starts_with("HTTP/1.1 403"), "{bob_reports}");
    assert!(bob_reports.contains("urn:claimsmith:problem:forbidden") && bob_reports.contains("enterprise plan"));
    assert!(!bob_reports.contains("\"free\""), "the refusal shows a metadata value");
    // No token: 401 problem.
    let anon = sh(curls[4]);
    assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
    assert!(anon.contains("application/problem+json"));
    // Public route and JWKS.
    assert!(sh(curls[5]).contains("\"internal_token\":null"));
    let jwks: serde_json::Value = serde_json::from_str(&sh(curls[6])).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo did not exit cleanly on SIGINT: {status}");
}

/// Starts `claimsmith demo` on free ports; returns it with its banner, once printed
/// (the proxy is ready by then), and its standard output, to be held open while it
/// runs (it writes there).
fn start_demo() -> (std::process::Child, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(BIN)
        .args(["demo", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 {
            break;
        }
        let done = l.contains("/.well-known/jwks.json") && l.trim_start().starts_with("curl");
        lines.push(l);
        if done {
            break;
        }
    }
    (child, lines.concat(), reader)
}

fn sh(line: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
    assert!(out.status.success(), "{line}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker stop`, `kill` and supervisors send SIGTERM: the demo stops as on Ctrl-C.
#[test]
fn demo_stops_cleanly_on_sigterm() {
    let (mut child, banner, _stdout) = start_demo();
    let jwks = banner.lines().map(str::trim).find(|l| l.starts_with("curl ") && l.contains("jwks.json"));
    let jwks = jwks.unwrap_or_else(|| panic!("no JWKS line in the banner:\n{banner}"));
    // It answers.
    let keys: serde_json::Value = serde_json::from_str(&sh(jwks)).unwrap();
    assert!(keys["keys"].as_array().is_some_and(|k| !k.is_empty()), "{keys}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // A generous bound on the wait, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "the demo did not exit cleanly on SIGTERM: {status}");
}

/// A config reading metadata from `[metadata.idp]`, written as `source`.
fn idp_config(source: &str) -> String {
    format!(
        "[[issuer]]\nissuer = \"https://t.example/\"\naudiences = [\"a\"]\nmetadata = \"idp\"\n[metadata.idp]\n{source}\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\naudience = \"x\"\n"
    )
}

#[test]
fn check_accepts_keycloak_and_okta_sources_and_names_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let key = dir.path().join("okta.pem");
    let (code, _, _) = run(&["keygen", "--alg", "RS256", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0);
    std::fs::write(dir.path().join("kc-secret"), "kc-secret-value\n").unwrap();
    std::fs::write(
        dir.path().join("broken.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA-secret-bits\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let keycloak = "kind = \"keycloak\"\nbase_url = \"https://sso.example.com\"\nrealm = \"acme\"\nclient_id = \"cs\"\n\
                    client_secret_file = \"kc-secret\"";
    let okta = "kind = \"okta\"\ndomain = \"acme.okta.com\"\nclient_id = \"0oa1\"\nprivate_key_file = \"okta.pem\"";
    for good in [keycloak, okta] {
        std::fs::write(&cfg, idp_config(good)).unwrap();
        let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("config ok"), "{out}");
    }
    for (bad, key) in [
        (keycloak.replace("realm = \"acme\"\n", ""), "metadata.idp.realm"),
        (okta.replace("domain = \"acme.okta.com\"\n", ""), "metadata.idp.domain"),
        (okta.replace("okta.pem", "broken.pem"), "metadata.idp.private_key_file"),
        (okta.replace("\nprivate_key_file = \"okta.pem\"", ""), "metadata.idp.private_key_file"),
    ] {
        std::fs::write(&cfg, idp_config(&bad)).unwrap();
        let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(key), "stderr does not name {key}: {err}");
        assert!(!err.contains("secret-bits"), "{err}");
        assert_plain(&err);
    }
}

/// `claimsmith check` (and `run`) on a config with `[token.static_claims]` /
/// `[token.secret_claims]` (docs/configuration.md, "[token]"): a name claimsmith sets,
/// one copied from the ID token, one in both tables, a missing environment variable
/// or file: exit 2, naming the key; the secret's value is never printed, whatever
/// the outcome.
#[test]
fn check_refuses_bad_static_and_secret_claims_by_key_and_never_prints_a_secret() {
    const SECRET: &str = "system-key-value-7d1e9c";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("system.key"), format!("{SECRET}-from-file\n")).unwrap();
    let check = |token: &str, env: &[(&str, &str)]| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[issuer]]\nissuer = \"https://t.example/\"\naudiences = [\"a\"]\n\
                 [[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\naudience = \"x\"\n\
                 [token]\ncopy_claims = [\"email\"]\n{token}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config", cfg.to_str().unwrap()]).env_remove("CLAIMSMITH_CONFIG");
        cmd.env_remove("CHECK_SYSTEM_KEY").env_remove("CHECK_UNSET_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "a secret was printed: {stdout}{stderr}");
        assert_plain(&stderr);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    let env = [("CHECK_SYSTEM_KEY", SECRET)];
    let good = "[token.static_claims]\ndeployment = \"eu-prod\"\n[token.secret_claims]\n\
                system_key = { env = \"CHECK_SYSTEM_KEY\" }\nfile_key = { file = \"system.key\" }";
    let (code, out, err) = check(good, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("config ok"), "{out}");

    for (token, key) in [
        ("[token.static_claims]\nsub = \"x\"", "token.static_claims.sub"),
        ("[token.static_claims]\nuser_metadata = {}", "token.static_claims.user_metadata"),
        ("[token.secret_claims]\niss = { env = \"CHECK_SYSTEM_KEY\" }", "token.secret_claims.iss"),
        ("[token.static_claims]\nemail = \"x\"", "token.static_claims.email"),
        (
            "[token.static_claims]\nk = 1\n[token.secret_claims]\nk = { env = \"CHECK_SYSTEM_KEY\" }",
            "token.secret_claims.k",
        ),
        ("[token.secret_claims]\nsystem_key = { env = \"CHECK_UNSET_KEY\" }", "token.secret_claims.system_key"),
        ("[token.secret_claims]\nsystem_key = { file = \"missing.key\" }", "token.secret_claims.system_key"),
    ] {
        // With the secret in the environment all the same: refused configs print no more.
        let (code, _, err) = check(token, &env);
        assert_eq!(code, 2, "{token}: {err}");
        assert!(err.contains(key), "{token}: stderr does not name {key}: {err}");
    }
    // A bad key elsewhere: the rest, secrets included, is read and never printed.
    let (code, _, err) = check(&format!("{good}\nbogus = 1"), &env);
    assert_eq!(code, 2, "{err}");

    // `run` refuses to start the same way.
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "[[issuer]]\nissuer = \"https://t.example/\"\naudiences = [\"a\"]\n[[route]]\npath_prefix = \"/\"\n\
         upstream = \"http://127.0.0.1:1\"\naudience = \"x\"\n[token.secret_claims]\nk = { env = \"CHECK_UNSET_KEY\" }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env_remove("CLAIMSMITH_CONFIG")
        .env_remove("CHECK_UNSET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token.secret_claims.k"));
}
