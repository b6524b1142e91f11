//! Configuration parsing and validation, key by key.

use super::validate::*;
use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1d").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn unknown_key_is_named() {
    let e = Config::parse("[listen]\nadress = \"x\"\n").unwrap_err();
    assert_eq!(e.0[0].key, "adress");
}

#[test]
fn an_empty_key_still_names_a_place() {
    for text in ["[\"\"]\n", "\"\" = 1\n"] {
        let e = Config::parse(text).unwrap_err();
        assert!(!e.0[0].key.is_empty(), "{text:?} gave an empty key");
    }
}

#[test]
fn every_error_is_reported() {
    let e = Config::parse(
        r#"
        [cache]
        ttl = "5 minutes"
        [[route]]
        path_prefix = "api"
        upstream = "ftp://x"
        "#,
    )
    .unwrap_err();
    let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"cache.ttl"), "{keys:?}");
    assert!(keys.contains(&"route[0].path_prefix"), "{keys:?}");
    assert!(keys.contains(&"route[0].upstream"), "{keys:?}");
}

#[test]
fn hmac_needs_a_secret() {
    let e = Config::parse(
        r#"
        [[issuer]]
        issuer = "https://t.example/"
        audiences = ["a"]
        algorithms = ["HS256", "none"]
        [[route]]
        path_prefix = "/"
        upstream = "http://127.0.0.1:1"
        audience = "x"
        "#,
    )
    .unwrap_err();
    let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"issuer[0].algorithms[0]"), "{keys:?}");
    assert!(keys.contains(&"issuer[0].algorithms[1]"), "{keys:?}");
}

#[test]
fn own_issuer_cannot_be_an_accepted_issuer() {
    let e = Config::parse(
        r#"
        [[issuer]]
        issuer = "https://same.example/"
        audiences = ["a"]
        [token]
        issuer = "https://same.example/"
        [[route]]
        path_prefix = "/"
        upstream = "http://127.0.0.1:1"
        audience = "x"
        "#,
    )
    .unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "token.issuer"), "{e}");
}

#[test]
fn routes_sorted_longest_first() {
    let c = Config::parse(
        r#"
        [[route]]
        path_prefix = "/"
        upstream = "http://127.0.0.1:1"
        auth = "off"
        [[route]]
        path_prefix = "/api/v1/"
        upstream = "http://127.0.0.1:2"
        auth = "off"
        "#,
    )
    .unwrap();
    assert_eq!(c.routes[0].path_prefix, "/api/v1/");
}

#[test]
fn the_webhook_token_is_read_like_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (good, empty) = (dir.path().join("good"), dir.path().join("empty"));
    std::fs::write(&good, "hook-token-value\n").unwrap();
    std::fs::write(&empty, "\n").unwrap();
    let with = |admin: &str| {
        format!("[admin]\n{admin}\n[[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"off\"\n")
    };
    let c = Config::parse(&with("")).unwrap();
    assert!(c.admin.webhook_token.is_none(), "unset: the hooks are off");
    let c = Config::parse(&with(&format!("webhook_token_file = {:?}", good.display().to_string()))).unwrap();
    assert_eq!(c.admin.webhook_token.as_ref().map(Secret::expose), Some("hook-token-value"));
    assert!(!format!("{c:?}").contains("hook-token-value"), "Debug must not show the token");
    let e = Config::parse(&with(&format!("webhook_token_file = {:?}", empty.display().to_string()))).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_file"), "{e}");
    let e = Config::parse(&with(&format!(
        "webhook_token_file = {:?}\nwebhook_token_env = \"CLAIMSMITH_TEST_UNSET_HOOK_TOKEN\"",
        good.display().to_string()
    )))
    .unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_env"), "{e}");
    let e = Config::parse(&with("webhook_token_env = \"CLAIMSMITH_TEST_UNSET_HOOK_TOKEN\"")).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_env"), "{e}");
}
