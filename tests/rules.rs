//! Authorization rules end to end (docs/configuration.md, "Authorization rules"): each
//! op holding and failing, deny winning, methods, namespaced claims, missing values,
//! and what a refusal looks like: 403, the rule's name and never a value, no upstream
//! contact. `tests/rules_hyper.rs` runs the same suite over hyper.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// (route, rule tables, status for user 1, status for user 2).
const CASES: &[(&str, &str, u16, u16)] = &[
    (
        "exists",
        r#"source = "app_metadata"
pointer = "/vip"
op = "exists""#,
        200,
        403,
    ),
    (
        "absent",
        r#"source = "app_metadata"
pointer = "/vip"
op = "absent""#,
        403,
        200,
    ),
    (
        "eq",
        r#"source = "app_metadata"
pointer = "/plan"
op = "eq"
value = "pro""#,
        200,
        403,
    ),
    (
        "ne",
        r#"source = "app_metadata"
pointer = "/plan"
op = "ne"
value = "pro""#,
        403,
        200,
    ),
    (
        "in",
        r#"source = "app_metadata"
pointer = "/plan"
op = "in"
value = ["pro", "enterprise"]"#,
        200,
        403,
    ),
    (
        "not_in",
        r#"source = "app_metadata"
pointer = "/plan"
op = "not_in"
value = ["free"]"#,
        200,
        403,
    ),
    (
        "contains_array",
        r#"source = "app_metadata"
pointer = "/roles"
op = "contains"
value = "admin""#,
        200,
        403,
    ),
    (
        "contains_string",
        r#"source = "app_metadata"
pointer = "/region"
op = "contains"
value = "west""#,
        200,
        403,
    ),
    (
        "starts_with",
        r#"source = "app_metadata"
pointer = "/region"
op = "starts_with"
value = "eu-""#,
        200,
        403,
    ),
    (
        "ends_with",
        r#"source = "app_metadata"
pointer = "/region"
op = "ends_with"
value = "-east""#,
        403,
        200,
    ),
    (
        "matches",
        r#"source = "app_metadata"
pointer = "/region"
op = "matches"
value = "[a-z]{2}-west""#,
        200,
        403,
    ),
    (
        "gt",
        r#"source = "app_metadata"
pointer = "/level"
op = "gt"
value = 5"#,
        200,
        403,
    ),
    (
        "gte",
        r#"source = "app_metadata"
pointer = "/level"
op = "gte"
value = 7"#,
        200,
        403,
    ),
    (
        "lt",
        r#"source = "app_metadata"
pointer = "/level"
op = "lt"
value = 7.0"#,
        403,
        200,
    ),
    (
        "lte",
        r#"source = "app_metadata"
pointer = "/level"
op = "lte"
value = 2"#,
        403,
        200,
    ),
    (
        "client",
        r#"source = "client_metadata"
pointer = "/tier"
op = "eq"
value = "gold""#,
        200,
        403,
    ),
    (
        "namespaced_claim",
        r#"source = "claims"
pointer = "/https:~1~1example.com~1roles"
op = "contains"
value = "billing-admin""#,
        200,
        403,
    ),
    (
        "claim_eq",
        r#"source = "claims"
pointer = "/email_verified"
op = "eq"
value = true"#,
        200,
        403,
    ),
    (
        "missing_path",
        r#"source = "app_metadata"
pointer = "/nosuch/deep"
op = "ne"
value = 1"#,
        403,
        403,
    ),
    (
        "missing_path_absent",
        r#"source = "app_metadata"
pointer = "/nosuch/deep"
op = "absent""#,
        200,
        200,
    ),
    (
        "type_mismatch",
        r#"source = "app_metadata"
pointer = "/plan"
op = "gt"
value = 1"#,
        403,
        403,
    ),
    (
        "whole_object",
        r#"source = "client_metadata"
pointer = ""
op = "eq"
value = {}"#,
        403,
        200,
    ),
];

const BASE: &str = r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "{issuer}"
audiences = ["client-1", "client-2"]
algorithms = ["RS256", "ES256"]
metadata = "local"

[metadata.local]
kind = "file"
path = "{metadata}"

[token]
issuer = "https://claimsmith.test/"
algorithm = "EdDSA"
header = "x-internal-token"

[[route]]
path_prefix = "/deny-wins/"
upstream = "{upstream}"
audience = "orders-api"

[[route.require]]
source = "app_metadata"
pointer = "/plan"
op = "eq"
value = "pro"

[[route.deny]]
source = "app_metadata"
pointer = "/level"
op = "eq"
value = 7

[[route]]
path_prefix = "/blocked/"
upstream = "{upstream}"
audience = "orders-api"

[[route.deny]]
name = "blocked users"
source = "app_metadata"
pointer = "/blocked"
op = "eq"
value = true

[[route]]
path_prefix = "/writes/"
upstream = "{upstream}"
audience = "orders-api"

[[route.require]]
name = "paying plan"
source = "app_metadata"
pointer = "/plan"
op = "in"
value = ["pro", "enterprise"]
methods = ["post", "DELETE"]

[[route]]
path_prefix = "/optional/"
upstream = "{upstream}"
audience = "orders-api"
auth = "optional"

[[route.require]]
source = "app_metadata"
pointer = "/plan"
op = "exists"

[[route]]
path_prefix = "/plain/"
upstream = "{upstream}"
audience = "orders-api"
auth = "optional"
"#;

fn template() -> String {
    let mut t = BASE.to_string();
    for (name, rule, _, _) in CASES {
        t.push_str(&format!(
            "\n[[route]]\npath_prefix = \"/r/{name}/\"\nupstream = \"{{upstream}}\"\naudience = \"orders-api\"\n\n[[route.require]]\n{rule}\n"
        ));
    }
    t
}

fn metadata() -> Value {
    json!({
        "users": {
            USER_1: {"app_metadata": {"plan": "pro", "roles": ["admin", "billing"], "level": 7, "region": "eu-west",
                                      "blocked": false, "vip": true, "note": USER_NOTE}},
            USER_2: {"app_metadata": {"plan": "free", "roles": ["viewer"], "level": 2, "region": "us-east",
                                      "blocked": true}}
        },
        "clients": {
            CLIENT_1: {"client_metadata": {"tenant_key": TENANT_KEY, "tier": "gold"}},
            CLIENT_2: {"client_metadata": {}}
        }
    })
}

/// User 1 through client 1, with a namespaced roles claim; user 2 through client 2.
fn tokens(h: &Harness) -> (String, String) {
    let mut c1 = h.issuer.claims(USER_1);
    c1["https://example.com/roles"] = json!(["billing-admin", "reader"]);
    c1["email_verified"] = json!(true);
    let mut c2 = h.issuer.claims(USER_2);
    c2["aud"] = json!(CLIENT_2);
    c2["email_verified"] = json!(false);
    (h.issuer.sign(&h.issuer.rsa, &c1), h.issuer.sign(&h.issuer.rsa, &c2))
}

async fn call(h: &Harness, method: Method, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    h.send(method, &h.proxy_url(path), &[("authorization", &auth)], Bytes::new()).await
}

/// A 403 from a rule: its problem, its header, the rule named, the upstream untouched.
fn assert_refused(h: &Harness, r: &Resp, rule: &str, upstream_before: usize) {
    r.assert_problem(403);
    let v = r.json();
    assert_eq!(v["type"], "urn:claimsmith:problem:forbidden");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"claimsmith\", error=\"insufficient_scope\""));
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("`{rule}`")), "{detail}");
    assert_eq!(h.upstream.requests().len(), upstream_before, "a refused request reached the upstream");
}

#[tokio::test]
async fn each_op_holds_for_one_caller_and_not_the_other() {
    let h = Harness::start_with(&template(), metadata()).await;
    // Short values the leak audit would not look for by itself.
    for v in ["\"pro\"", "\"free\"", "gold", "west", "east", "billing-admin"] {
        h.add_secret(v);
    }
    let (t1, t2) = tokens(&h);
    for (name, _, want1, want2) in CASES {
        for (who, token, want) in [("user 1", &t1, *want1), ("user 2", &t2, *want2)] {
            let before = h.upstream.requests().len();
            let r = call(&h, Method::GET, &format!("/r/{name}/x"), token).await;
            assert_eq!(r.status.as_u16(), want, "{name} for {who}: {}", r.text());
            if want == 403 {
                assert_refused(&h, &r, "require[0]", before);
            } else {
                assert_eq!(h.upstream.requests().len(), before + 1);
            }
        }
    }
}

#[tokio::test]
async fn deny_wins_and_refusals_name_the_rule() {
    let h = Harness::start_with(&template(), metadata()).await;
    let (t1, t2) = tokens(&h);
    // User 1 meets the require rule, but the deny rule holds too: deny wins.
    let before = h.upstream.requests().len();
    let r = call(&h, Method::GET, "/deny-wins/x", &t1).await;
    assert_refused(&h, &r, "deny[0]", before);
    // User 2 fails the require rule and no deny holds.
    let r = call(&h, Method::GET, "/deny-wins/x", &t2).await;
    assert_refused(&h, &r, "require[0]", before);
    // A named rule is named by its name.
    let r = call(&h, Method::GET, "/blocked/x", &t2).await;
    assert_refused(&h, &r, "blocked users", before);
    let r = call(&h, Method::GET, "/blocked/x", &t1).await;
    assert_eq!(r.status, StatusCode::OK);

    let metrics = h.send(Method::GET, &h.admin_url("/metrics"), &[], Bytes::new()).await.text();
    assert!(metrics.contains("claimsmith_authz_denied_total{route=\"/deny-wins/\",rule=\"deny[0]\"} 1"), "{metrics}");
    assert!(
        metrics.contains("claimsmith_authz_denied_total{route=\"/blocked/\",rule=\"blocked users\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn methods_limit_a_rule() {
    let h = Harness::start_with(&template(), metadata()).await;
    let (t1, t2) = tokens(&h);
    // Reading needs no paying plan; writing does.
    assert_eq!(call(&h, Method::GET, "/writes/x", &t2).await.status, StatusCode::OK);
    assert_eq!(call(&h, Method::PUT, "/writes/x", &t2).await.status, StatusCode::OK);
    let before = h.upstream.requests().len();
    let r = call(&h, Method::POST, "/writes/x", &t2).await;
    assert_refused(&h, &r, "paying plan", before);
    let r = call(&h, Method::DELETE, "/writes/x", &t2).await;
    assert_refused(&h, &r, "paying plan", before);
    assert_eq!(call(&h, Method::POST, "/writes/x", &t1).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_optional_route_with_rules_needs_a_caller() {
    let h = Harness::start_with(&template(), metadata()).await;
    let (t1, _) = tokens(&h);
    let r = h.get("/optional/x", &[]).await;
    r.assert_problem(401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"claimsmith\""));
    assert!(h.upstream.saw_nothing());
    assert_eq!(call(&h, Method::GET, "/optional/x", &t1).await.status, StatusCode::OK);
    // Without rules, optional stays optional.
    assert_eq!(h.get("/plain/x", &[]).await.status, StatusCode::OK);
}
