//! Configuration parsing and validation, key by key.

use super::validate::*;
use super::*;
use crate::host::FileStamp;

/// This machine's files and environment, read directly (tests may; the binary reads
/// them through `app::System`, which this module must not depend on).
struct Disk;

impl Host for Disk {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn stat(&self, path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp { modified: m.modified().ok(), changed: None, len: m.len(), inode: None })
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Validates `text` against this machine's files and environment.
fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, &Disk)
}

/// A machine made of a few files and variables: validation reads only through its
/// [`Host`], so what it sees is exactly what the test gives it.
#[derive(Default)]
struct Machine {
    files: BTreeMap<PathBuf, Vec<u8>>,
    env: BTreeMap<String, String>,
}

impl Host for Machine {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn stat(&self, path: &Path) -> std::io::Result<FileStamp> {
        let f = self.files.get(path).ok_or(std::io::ErrorKind::NotFound)?;
        Ok(FileStamp { modified: None, changed: None, len: f.len() as u64, inode: None })
    }

    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

#[test]
fn validation_reads_files_and_variables_only_through_its_host() {
    let (_, key) = crate::keys::SigningKey::generate(Algorithm::EdDSA).unwrap();
    let mut m = Machine::default();
    m.files.insert("/cfg/keys/signing.pem".into(), key.into_bytes());
    m.files.insert("/cfg/admin-token".into(), b"admin-token-value\n".to_vec());
    m.env.insert("HOOK_TOKEN".into(), "hook-token-value".into());
    let text = r#"
[admin]
token_file = "admin-token"
webhook_token_env = "HOOK_TOKEN"

[token]
key_files = ["keys/signing.pem"]

[[issuer]]
issuer = "https://idp.example/"
audiences = ["a"]

[[route]]
path_prefix = "/"
upstream = "http://127.0.0.1:9000"
audience = "backend"
"#;
    // Relative paths resolve against the config file's directory, on the host.
    let c = Config::parse_with_base(text, Some("/cfg".into()), &m).expect("valid on this machine");
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("admin-token-value"));
    assert_eq!(c.admin.webhook_token.as_ref().map(Secret::expose), Some("hook-token-value"));
    assert_eq!(c.token.keys.len(), 1);
    assert_eq!(c.files, [PathBuf::from("/cfg/admin-token"), PathBuf::from("/cfg/keys/signing.pem")]);

    // The same text on a machine without those files or that variable is refused,
    // each missing piece named by its key.
    let e = Config::parse_with_base(text, Some("/cfg".into()), &Machine::default()).unwrap_err();
    let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"admin.token_file"), "{keys:?}");
    assert!(keys.contains(&"admin.webhook_token_env"), "{keys:?}");
    assert!(keys.contains(&"token.key_files[0]"), "{keys:?}");
}

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
    let e = parse("[listen]\nadress = \"x\"\n").unwrap_err();
    assert_eq!(e.0[0].key, "adress");
}

#[test]
fn an_empty_key_still_names_a_place() {
    for text in ["[\"\"]\n", "\"\" = 1\n"] {
        let e = parse(text).unwrap_err();
        assert!(!e.0[0].key.is_empty(), "{text:?} gave an empty key");
    }
}

#[test]
fn every_error_is_reported() {
    let e = parse(
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
    let e = parse(
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
    let e = parse(
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
    let c = parse(
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
    let c = parse(&with("")).unwrap();
    assert!(c.admin.webhook_token.is_none(), "unset: the hooks are off");
    let c = parse(&with(&format!("webhook_token_file = {:?}", good.display().to_string()))).unwrap();
    assert_eq!(c.admin.webhook_token.as_ref().map(Secret::expose), Some("hook-token-value"));
    assert!(!format!("{c:?}").contains("hook-token-value"), "Debug must not show the token");
    let e = parse(&with(&format!("webhook_token_file = {:?}", empty.display().to_string()))).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_file"), "{e}");
    let e = parse(&with(&format!(
        "webhook_token_file = {:?}\nwebhook_token_env = \"CLAIMSMITH_TEST_UNSET_HOOK_TOKEN\"",
        good.display().to_string()
    )))
    .unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_env"), "{e}");
    let e = parse(&with("webhook_token_env = \"CLAIMSMITH_TEST_UNSET_HOOK_TOKEN\"")).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "admin.webhook_token_env"), "{e}");
}

/// A valid config with one `/billing/` route; `rules` is appended to it.
fn with_rules(auth: &str, rules: &str) -> Result<Config, ConfigErrors> {
    parse(&format!(
        r#"
        [[issuer]]
        issuer = "https://t.example/"
        audiences = ["a"]
        jwks_uri = "https://t.example/jwks.json"
        [[route]]
        path_prefix = "/other/"
        upstream = "http://127.0.0.1:1"
        audience = "x"
        [[route]]
        path_prefix = "/billing/"
        upstream = "http://127.0.0.1:1"
        audience = "billing-api"
        auth = "{auth}"
        {rules}
        "#
    ))
}

fn rule_error_keys(auth: &str, rules: &str) -> Vec<String> {
    with_rules(auth, rules).unwrap_err().0.into_iter().map(|e| e.key).collect()
}

#[test]
fn rules_are_validated_at_load() {
    let c = with_rules(
        "required",
        r#"
        [[route.require]]
        name = "paying plan"
        source = "app_metadata"
        pointer = "/plan"
        op = "in"
        value = ["pro", "enterprise"]
        [[route.require]]
        source = "claims"
        pointer = "/https:~1~1example.com~1roles"
        op = "contains"
        value = "billing-admin"
        methods = ["post", "PUT"]
        [[route.deny]]
        source = "app_metadata"
        pointer = "/blocked"
        op = "eq"
        value = true
        "#,
    )
    .unwrap();
    let route = c.routes.iter().find(|r| r.path_prefix == "/billing/").unwrap();
    let labels: Vec<&str> = route.rules.all().map(|r| &*r.label).collect();
    assert_eq!(labels, ["paying plan", "require[1]", "deny[0]"]);
    assert_eq!(route.rules.require[1].methods, [http::Method::POST, http::Method::PUT]);
}

#[test]
fn each_rule_error_names_its_key() {
    let rule = |field: &str| {
        let mut lines = vec![
            ("source", r#"source = "app_metadata""#),
            ("pointer", r#"pointer = "/plan""#),
            ("op", r#"op = "starts_with""#),
            ("value", r#"value = "pro""#),
        ];
        let bad = match field {
            "source" => r#"source = "headers""#,
            "pointer" => r#"pointer = "plan""#,
            "pointer~" => r#"pointer = "/a~2""#,
            "op" => r#"op = "like""#,
            "value" => r#"value = ["pro"]"#,
            "methods" => r#"methods = ["FETCH"]"#,
            _ => unreachable!(),
        };
        let key = field.trim_end_matches('~');
        lines.retain(|(k, _)| *k != key);
        lines.push((key, bad));
        format!("[[route.require]]\n[[route.deny]]\n{}", lines.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n"))
    };
    for field in ["source", "pointer", "pointer~", "op", "value", "methods"] {
        let keys = rule_error_keys("required", &rule(field));
        let want = format!("route[1].deny[0].{}", field.trim_end_matches('~'));
        assert!(keys.contains(&want), "{field}: {keys:?}");
        // The empty require rule before it lacks everything it needs.
        for missing in ["source", "pointer", "op"] {
            assert!(keys.contains(&format!("route[1].require[0].{missing}")), "{keys:?}");
        }
    }
    let keys = rule_error_keys("required", "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"in\"\n");
    assert_eq!(keys, ["route[1].require[0].value"]);
    let keys = rule_error_keys(
        "required",
        "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"matches\"\nvalue = \"(unclosed\"\n",
    );
    assert_eq!(keys, ["route[1].require[0].value"]);
    let keys = rule_error_keys(
        "required",
        "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"exists\"\nvalue = 1\n",
    );
    assert_eq!(keys, ["route[1].require[0].value"]);
    let keys = rule_error_keys(
        "required",
        "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"gt\"\nvalue = \"1\"\n",
    );
    assert_eq!(keys, ["route[1].require[0].value"]);
    let keys = rule_error_keys(
        "required",
        "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"exists\"\nflavour = 1\n",
    );
    assert!(keys.iter().any(|k| k.contains("flavour")), "{keys:?}");
}

#[test]
fn rules_on_an_auth_off_route_are_an_error() {
    let keys = rule_error_keys("off", "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"exists\"\n");
    assert_eq!(keys, ["route[1].auth"]);
    assert!(
        with_rules("optional", "[[route.require]]\nsource = \"claims\"\npointer = \"/a\"\nop = \"exists\"\n").is_ok()
    );
}

fn with_forward_auth(table: &str) -> Result<Config, ConfigErrors> {
    parse(&format!(
        r#"
        [listen]
        addr = "127.0.0.1:8080"
        [admin]
        addr = "127.0.0.1:9090"
        [[issuer]]
        issuer = "https://t.example/"
        audiences = ["a"]
        jwks_uri = "https://t.example/jwks.json"
        [[route]]
        path_prefix = "/"
        upstream = "http://127.0.0.1:1"
        audience = "x"
        {table}
        "#
    ))
}

#[test]
fn forward_auth_is_a_listener_of_its_own() {
    let c = with_forward_auth("[forward_auth]\naddr = \"127.0.0.1:8081\"").unwrap();
    let f = c.forward_auth.clone().expect("the table makes the listener");
    assert_eq!((f.addr.port(), f.headers), (8081, CheckedHeaders::Auto));
    assert!(c.summary().contains("forward-auth on 127.0.0.1:8081"));
    assert!(with_forward_auth("").unwrap().forward_auth.is_none());
    let c = with_forward_auth("[forward_auth]\naddr = \"127.0.0.1:8081\"\nheaders = \"traefik\"").unwrap();
    assert_eq!(c.forward_auth.map(|f| f.headers), Some(CheckedHeaders::Traefik));
    for (table, key) in [
        ("[forward_auth]", "forward_auth.addr"),
        ("[forward_auth]\naddr = \"8081\"", "forward_auth.addr"),
        ("[forward_auth]\naddr = \"127.0.0.1:8080\"", "forward_auth.addr"),
        ("[forward_auth]\naddr = \"127.0.0.1:9090\"", "forward_auth.addr"),
        ("[forward_auth]\naddr = \"127.0.0.1:8081\"\nheaders = \"haproxy\"", "forward_auth.headers"),
        ("[forward_auth]\naddr = \"127.0.0.1:8081\"\npath = \"/auth\"", "path"),
    ] {
        let e = with_forward_auth(table).unwrap_err();
        assert_eq!(e.0[0].key, key, "{table}");
    }
}

/// A valid config whose `[metadata.src]` table is `source`; relative paths resolve in `dir`.
fn with_source(dir: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let text = format!(
        "[[issuer]]\nissuer = \"https://t.example/\"\naudiences = [\"a\"]\nmetadata = \"src\"\n\
         [metadata.src]\n{source}\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\naudience = \"x\"\n"
    );
    Config::parse_with_base(&text, Some(dir.to_path_buf()), &Disk)
}

/// The keys named, without the issuer's "no such source" that follows from a source
/// that could not be read.
fn error_keys(r: Result<Config, ConfigErrors>) -> Vec<String> {
    let keys: Vec<String> = r.err().map(|e| e.0.into_iter().map(|e| e.key).collect()).unwrap_or_default();
    keys.into_iter().filter(|k| k != "issuer[0].metadata").collect()
}

#[test]
fn a_keycloak_source_is_read_and_each_missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kc-secret"), "kc-secret-value\n").unwrap();
    let good = "kind = \"keycloak\"\nbase_url = \"https://sso.example.com/\"\nrealm = \"acme\"\n\
                client_id = \"claimsmith\"\nclient_secret_file = \"kc-secret\"\nattribute_prefix = \"claimsmith.\"";
    let c = with_source(dir.path(), good).unwrap();
    let SourceConfig::Keycloak(kc) = &c.sources["src"] else { panic!("not keycloak: {:?}", c.sources["src"]) };
    assert_eq!((kc.realm.as_str(), kc.client_id.as_str()), ("acme", "claimsmith"));
    assert_eq!(kc.client_secret.expose(), "kc-secret-value");
    assert_eq!(kc.attribute_prefix.as_deref(), Some("claimsmith."));
    assert_eq!((kc.max_requests_per_second, kc.timeout), (5, Duration::from_secs(5)));
    assert!(!format!("{c:?}").contains("kc-secret-value"));

    let without = |key: &str| good.lines().filter(|l| !l.starts_with(key)).collect::<Vec<_>>().join("\n");
    for (key, named) in [
        ("realm", "metadata.src.realm"),
        ("client_id", "metadata.src.client_id"),
        ("base_url", "metadata.src.base_url"),
        ("client_secret_file", "metadata.src.client_secret_env"),
    ] {
        let keys = error_keys(with_source(dir.path(), &without(key)));
        assert_eq!(keys, [named], "without {key}");
    }
    let keys = error_keys(with_source(dir.path(), &good.replace("https://sso.example.com/", "https://sso/realms")));
    assert_eq!(keys, ["metadata.src.base_url"]);
    let keys = error_keys(with_source(dir.path(), &format!("{good}\nscopes = [\"x\"]\ndomain = \"d\"")));
    assert_eq!(keys, ["metadata.src.domain", "metadata.src.scopes"], "okta keys are not keycloak's");
}

#[test]
fn an_okta_source_reads_its_key_at_load_and_each_missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, rsa) = SigningKey::generate(Algorithm::RS256).unwrap();
    let (_, ec) = SigningKey::generate(Algorithm::ES256).unwrap();
    std::fs::write(dir.path().join("okta.pem"), &rsa).unwrap();
    std::fs::write(dir.path().join("ec.pem"), &ec).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "-----BEGIN PRIVATE KEY-----\nnot-a-key\n").unwrap();
    let good = "kind = \"okta\"\ndomain = \"acme.okta.com\"\nclient_id = \"0oa-app\"\nprivate_key_file = \"okta.pem\"";
    let c = with_source(dir.path(), good).unwrap();
    let SourceConfig::Okta(o) = &c.sources["src"] else { panic!("not okta") };
    assert_eq!(o.base_url.as_str(), "https://acme.okta.com/");
    assert_eq!(o.scopes, ["okta.users.read", "okta.apps.read"]);
    assert_eq!(o.private_key_file, dir.path().join("okta.pem"));
    assert!(!format!("{c:?}").contains(rsa.lines().nth(2).unwrap()), "Debug must not show the key");
    let c = with_source(
        dir.path(),
        &format!("{good}\nbase_url = \"http://127.0.0.1:4001\"\nscopes = [\"okta.users.read\"]"),
    )
    .unwrap();
    let SourceConfig::Okta(o) = &c.sources["src"] else { panic!("not okta") };
    assert_eq!((o.base_url.as_str(), o.scopes.len()), ("http://127.0.0.1:4001/", 1));

    let without = |key: &str| good.lines().filter(|l| !l.starts_with(key)).collect::<Vec<_>>().join("\n");
    for (key, named) in [
        ("domain", "metadata.src.domain"),
        ("client_id", "metadata.src.client_id"),
        ("private_key_file", "metadata.src.private_key_file"),
    ] {
        assert_eq!(error_keys(with_source(dir.path(), &without(key))), [named], "without {key}");
    }
    for file in ["garbage.pem", "ec.pem", "missing.pem"] {
        let keys = error_keys(with_source(dir.path(), &good.replace("okta.pem", file)));
        assert_eq!(keys, ["metadata.src.private_key_file"], "{file}");
    }
    let e = with_source(dir.path(), &good.replace("okta.pem", "garbage.pem")).unwrap_err();
    assert!(!e.to_string().contains("not-a-key"), "the file's content is never quoted: {e}");
    assert_eq!(error_keys(with_source(dir.path(), &format!("{good}\nscopes = []"))), ["metadata.src.scopes"]);
    assert_eq!(
        error_keys(with_source(dir.path(), &format!("{good}\nrealm = \"r\"\nclient_secret_env = \"X\""))),
        ["metadata.src.client_secret_env", "metadata.src.realm"],
        "keycloak keys are not okta's"
    );
}

/// A valid config whose `[token]` table ends with `token`, then the route with `route`.
fn with_token(token: &str, route: &str) -> Result<Config, ConfigErrors> {
    parse(&format!(
        r#"
        [[issuer]]
        issuer = "https://t.example/"
        audiences = ["a"]
        jwks_uri = "https://t.example/jwks.json"
        [[route]]
        path_prefix = "/api/"
        upstream = "http://127.0.0.1:1"
        audience = "x"
        {route}
        [token]
        {token}
        "#
    ))
}

fn token_error_keys(token: &str) -> Vec<String> {
    with_token(token, "").unwrap_err().0.into_iter().map(|e| e.key).collect()
}

#[test]
fn static_claims_are_rendered_once_as_json_members() {
    let c = with_token(
        r#"
        [token.static_claims]
        deployment = "eu-prod"
        replicas = 3
        ratio = 0.5
        canary = false
        since = 2025-02-01T12:34:56Z
        zones = ["a", "b"]
        limits = { rps = 10, burst = [1, 2] }
        "#,
        "",
    )
    .unwrap();
    let members: serde_json::Value =
        serde_json::from_str(&format!("{{{}}}", c.token.extra_claims.members_json())).unwrap();
    assert_eq!(
        members,
        serde_json::json!({"deployment": "eu-prod", "replicas": 3, "ratio": 0.5, "canary": false,
            "since": "2025-02-01T12:34:56Z", "zones": ["a", "b"], "limits": {"rps": 10, "burst": [1, 2]}})
    );
    let none = with_token("", "").unwrap();
    assert_eq!(none.token.extra_claims.members_json(), "");
    assert!(none.token.extra_claims.names().is_empty());
}

#[test]
fn a_claim_claimsmith_sets_cannot_be_a_static_or_secret_claim() {
    for name in RESERVED_CLAIMS.iter().chain(&["user_metadata"]) {
        let keys = token_error_keys(&format!("[token.static_claims]\n{name} = \"x\"\n"));
        assert_eq!(keys, vec![format!("token.static_claims.{name}")]);
        let keys = token_error_keys(&format!("[token.secret_claims]\n{name} = {{ env = \"CARGO_PKG_NAME\" }}\n"));
        assert_eq!(keys, vec![format!("token.secret_claims.{name}")]);
        let keys = token_error_keys(&format!("copy_claims = [\"{name}\"]\n"));
        assert_eq!(keys, vec!["token.copy_claims[0]".to_string()]);
    }
    let keys = token_error_keys("copy_claims = [\"email\", \"tier\"]\n[token.static_claims]\ntier = \"gold\"\n");
    assert_eq!(keys, vec!["token.static_claims.tier"]);
    let keys = token_error_keys("copy_claims = [\"key\"]\n[token.secret_claims]\nkey = { env = \"CARGO_PKG_NAME\" }\n");
    assert_eq!(keys, vec!["token.secret_claims.key"]);
    let keys = token_error_keys(
        "[token.static_claims]\nshared = 1\n[token.secret_claims]\nshared = { env = \"CARGO_PKG_NAME\" }\n",
    );
    assert_eq!(keys, vec!["token.secret_claims.shared"]);
    let keys = token_error_keys("[token.static_claims]\n\"\" = 1\n");
    assert_eq!(keys, vec!["token.static_claims."]);
    let keys = token_error_keys("[token.static_claims]\nbad = nan\n");
    assert_eq!(keys, vec!["token.static_claims.bad"]);
}

#[test]
fn secret_claims_are_read_at_load_and_never_shown() {
    // Cargo sets it for every test process: an environment variable that is set.
    let pkg = std::env::var("CARGO_PKG_NAME").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let (one, two, crlf, empty, newline) = (
        file("one", "file-secret-value\n"),
        file("two", "two-newlines\n\n"),
        file("crlf", "crlf-value\r\n"),
        file("empty", ""),
        file("newline", "\n"),
    );
    let c = with_token(
        &format!(
            "[token.secret_claims]\nfrom_env = {{ env = \"CARGO_PKG_NAME\" }}\nfrom_file = {{ file = {one:?} }}\n\
             two = {{ file = {two:?} }}\ncrlf = {{ file = {crlf:?} }}\n"
        ),
        "",
    )
    .unwrap();
    let members: serde_json::Value =
        serde_json::from_str(&format!("{{{}}}", c.token.extra_claims.members_json())).unwrap();
    assert_eq!(
        members,
        serde_json::json!({"crlf": "crlf-value", "from_env": pkg, "from_file": "file-secret-value",
            "two": "two-newlines\n"}),
        "one trailing newline is dropped, no more"
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("file-secret-value") && !debug.contains("crlf-value"), "{debug}");
    assert!(debug.contains("from_file"), "Debug names the claims: {debug}");

    let missing = dir.path().join("missing").display().to_string();
    for (claim, reason) in [
        ("{ env = \"CLAIMSMITH_TEST_UNSET_SECRET_CLAIM\" }", "not set"),
        (&format!("{{ file = {missing:?} }}"), "cannot read"),
        (&format!("{{ file = {empty:?} }}"), "is empty"),
        (&format!("{{ file = {newline:?} }}"), "is empty"),
        ("{ }", "set env"),
        (&format!("{{ env = \"CARGO_PKG_NAME\", file = {one:?} }}"), "only one"),
    ] {
        let e = with_token(&format!("[token.secret_claims]\nsystem_key = {claim}\n"), "").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "token.secret_claims.system_key");
        assert!(e.0[0].reason.contains(reason), "{claim}: {}", e.0[0].reason);
        assert!(!e.0[0].reason.contains("file-secret-value"));
    }
    let e = with_token("[token.secret_claims]\nsystem_key = { environment = \"X\" }\n", "").unwrap_err();
    assert_eq!(e.0[0].key, "environment");
}

#[test]
fn user_metadata_is_read_when_a_route_forwards_it_or_a_rule_reads_it() {
    assert!(!with_token("", "").unwrap().fetches_user_metadata());
    let c = with_token("", "user_metadata = [\"theme\"]").unwrap();
    assert!(c.fetches_user_metadata());
    assert_eq!(c.routes[0].user_metadata.as_deref(), Some(&["theme".to_string()][..]));
    assert!(with_token("", "user_metadata = []").unwrap().fetches_user_metadata());
    let rule = "[[route.deny]]\nsource = \"user_metadata\"\npointer = \"/theme\"\nop = \"eq\"\nvalue = \"x\"\n";
    let c = with_token("", rule).unwrap();
    assert!(c.fetches_user_metadata(), "a rule reads it though the route does not forward it");
    assert!(c.routes[0].user_metadata.is_none());
    let other = "[[route.require]]\nsource = \"app_metadata\"\npointer = \"/plan\"\nop = \"exists\"\n";
    assert!(!with_token("", other).unwrap().fetches_user_metadata());
    let e = parse(
        "[[route]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"off\"\nuser_metadata = []\n",
    )
    .unwrap_err();
    assert_eq!(e.0[0].key, "route[0].user_metadata");
}

#[test]
fn tls_and_ca_files_are_read_and_checked_at_load() {
    let ca = rcgen::generate_simple_self_signed(vec!["idp.example".into()]).unwrap();
    let mut m = Machine::default();
    m.files.insert("/cfg/tls/cert.pem".into(), ca.cert.pem().into_bytes());
    m.files.insert("/cfg/tls/key.pem".into(), ca.signing_key.serialize_pem().into_bytes());
    m.files.insert("/cfg/ca.pem".into(), ca.cert.pem().into_bytes());
    m.files.insert("/cfg/empty.pem".into(), b"not a certificate\n".to_vec());
    let text = |cert: &str, key: &str, ca: &str| {
        format!(
            r#"
[listen]
tls_cert_file = "{cert}"
tls_key_file = "{key}"

[[issuer]]
issuer = "https://idp.example/"
audiences = ["a"]
ca_file = "{ca}"

[[route]]
path_prefix = "/"
upstream = "http://127.0.0.1:9000"
audience = "backend"
"#
        )
    };
    // Relative to the config file's folder, like every other path.
    let c = Config::parse_with_base(&text("tls/cert.pem", "tls/key.pem", "ca.pem"), Some("/cfg".into()), &m).unwrap();
    let tls = c.listen.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("/cfg/tls/cert.pem"));
    assert!(tls.key_pem.expose().contains("PRIVATE KEY"));
    assert_eq!(c.issuers[0].ca_file.as_ref().map(|c| c.path.clone()), Some(PathBuf::from("/cfg/ca.pem")));
    // The key's Debug never shows it.
    assert!(!format!("{c:?}").contains("PRIVATE KEY"));

    // A certificate file without a certificate, a key file without a key, a CA file
    // without a certificate: each refused at load, by its key, without its content.
    let e =
        Config::parse_with_base(&text("empty.pem", "tls/cert.pem", "empty.pem"), Some("/cfg".into()), &m).unwrap_err();
    let got: Vec<(&str, &str)> = e.0.iter().map(|e| (e.key.as_str(), e.reason.as_str())).collect();
    assert!(got.contains(&("listen.tls_cert_file", "/cfg/empty.pem holds no PEM certificate")), "{got:?}");
    assert!(got.contains(&("listen.tls_key_file", "/cfg/tls/cert.pem holds no PEM private key")), "{got:?}");
    assert!(got.contains(&("issuer[0].ca_file", "/cfg/empty.pem holds no PEM certificate")), "{got:?}");
    assert!(!format!("{e}").contains("not a certificate"));
}
