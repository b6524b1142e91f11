//! Authorization rules (`[[route.require]]`, `[[route.deny]]`, docs/configuration.md):
//! the rule as validated at load, and its evaluation over already-parsed JSON.
//!
//! Everything that can be wrong with a rule is found at load ([`Rule::parse`]): the
//! pointer is split into its reference tokens, the value's shape is checked for its
//! op, a regex is compiled once. Evaluation then allocates nothing, and fails closed:
//! a pointer that does not resolve, or a value of a type the op does not take, makes
//! the test false (only `absent` holds on a missing value). The request phase that
//! applies a route's rules is `proxy::rules`.

use std::cmp::Ordering;
use std::sync::Arc;

use http::Method;
use serde_json::{Number, Value};

/// Which of the caller's documents a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The verified token's payload.
    Claims,
    /// The user's app_metadata, before the route's projection.
    AppMetadata,
    /// The client's client_metadata, before the route's projection.
    ClientMetadata,
    /// The user's user_metadata, whether or not the route forwards it. The user can
    /// edit it: docs/security.md says why it must not decide access.
    UserMetadata,
}

/// An RFC 6901 JSON pointer, split into its unescaped reference tokens at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// Parses `""` (the whole document) or `/token/...`, with `~1` for `/` and `~0`
    /// for `~` (RFC 6901 §3-4); any other `~` is an error.
    pub fn parse(s: &str) -> Result<Pointer, String> {
        if s.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("`{s}` is not a JSON pointer: it must be \"\" or start with /"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err(format!("`{s}` has a ~ that is not ~0 or ~1 (RFC 6901)")),
                    },
                    c => token.push(c),
                }
            }
            tokens.push(token);
        }
        Ok(Pointer(tokens))
    }

    /// The first reference token: the top-level member a pointer reads (`None` for
    /// the whole document).
    pub fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// The value the pointer refers to in `doc`, if it resolves. An array index is
    /// digits without a leading zero (RFC 6901 §4); `-` never resolves.
    pub fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(doc, |v, token| match v {
            Value::Object(m) => m.get(token),
            Value::Array(a) => index(token).and_then(|i| a.get(i)),
            _ => None,
        })
    }
}

fn index(token: &str) -> Option<usize> {
    let ok =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    if ok { token.parse().ok() } else { None }
}

/// An op with its value, shaped for it at load.
#[derive(Debug, Clone)]
pub enum Test {
    Exists,
    Absent,
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
    /// Anchored at both ends at load (`^(?:...)$`).
    Matches(regex::Regex),
    /// `gt` `gte` `lt` `lte`: the orderings of (actual vs value) that hold.
    Compare(Comparison, Number),
}

/// A numeric comparison, as the orderings of (actual, value) that make it hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Comparison::Gt => o == Ordering::Greater,
            Comparison::Gte => o != Ordering::Less,
            Comparison::Lt => o == Ordering::Less,
            Comparison::Lte => o != Ordering::Greater,
        }
    }
}

/// The ops, as the file spells them.
pub const OPS: &[&str] = &[
    "exists",
    "absent",
    "eq",
    "ne",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "gt",
    "gte",
    "lt",
    "lte",
];

/// Methods a rule may be limited to (RFC 9110 §9 and RFC 5789's PATCH).
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// One rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    /// How refusals, logs and metrics name it: its `name`, else `require[i]` /
    /// `deny[i]`. Never a value.
    pub label: Arc<str>,
    pub source: Source,
    pub pointer: Pointer,
    pub test: Test,
    /// Empty: every method.
    pub methods: Vec<Method>,
}

/// A rule as the file writes it, before validation.
#[derive(Debug, Default)]
pub struct RawRule {
    pub name: Option<String>,
    pub source: Option<String>,
    pub pointer: Option<String>,
    pub op: Option<String>,
    pub value: Option<Value>,
    pub methods: Option<Vec<String>>,
}

impl Rule {
    /// Validates `raw`; `label` names it when it has no `name`. Errors are (the key
    /// within the rule, why), every one found.
    pub fn parse(raw: RawRule, label: &str) -> Result<Rule, Vec<(&'static str, String)>> {
        let mut errs: Vec<(&'static str, String)> = Vec::new();
        let label: Arc<str> = match raw.name {
            Some(n) if n.trim().is_empty() => {
                errs.push(("name", "must not be empty".into()));
                Arc::from(label)
            }
            // A name is shown in problem bodies and metric labels: keep it printable.
            Some(n) if n.len() > 128 || n.chars().any(char::is_control) => {
                errs.push(("name", "must be at most 128 printable characters".into()));
                Arc::from(label)
            }
            Some(n) => Arc::from(n),
            None => Arc::from(label),
        };
        let source = match raw.source.as_deref() {
            Some("claims") => Some(Source::Claims),
            Some("app_metadata") => Some(Source::AppMetadata),
            Some("client_metadata") => Some(Source::ClientMetadata),
            Some("user_metadata") => Some(Source::UserMetadata),
            Some(other) => {
                errs.push((
                    "source",
                    format!("`{other}` is not one of claims, app_metadata, client_metadata, user_metadata"),
                ));
                None
            }
            None => {
                errs.push(("source", "is required (claims, app_metadata, client_metadata or user_metadata)".into()));
                None
            }
        };
        let pointer = match raw.pointer.as_deref() {
            Some(p) => Pointer::parse(p).map_err(|e| errs.push(("pointer", e))).ok(),
            None => {
                errs.push(("pointer", "is required (a JSON pointer such as \"/plan\"; \"\" for the whole)".into()));
                None
            }
        };
        let test = match raw.op.as_deref() {
            Some(op) if OPS.contains(&op) => test(op, raw.value).map_err(|e| errs.push(("value", e))).ok(),
            Some(op) => {
                errs.push(("op", format!("`{op}` is not one of {}", OPS.join(", "))));
                None
            }
            None => {
                errs.push(("op", format!("is required (one of {})", OPS.join(", "))));
                None
            }
        };
        let mut methods = Vec::new();
        match raw.methods {
            Some(list) if list.is_empty() => {
                errs.push(("methods", "is empty; leave it out to apply to every method".into()))
            }
            Some(list) => {
                for m in list {
                    let upper = m.to_ascii_uppercase();
                    match METHODS.contains(&upper.as_str()).then(|| Method::from_bytes(upper.as_bytes())) {
                        Some(Ok(method)) => methods.push(method),
                        _ => errs.push(("methods", format!("`{m}` is not one of {}", METHODS.join(", ")))),
                    }
                }
            }
            None => {}
        }
        match (source, pointer, test) {
            (Some(source), Some(pointer), Some(test)) if errs.is_empty() => {
                Ok(Rule { label, source, pointer, test, methods })
            }
            _ => Err(errs),
        }
    }

    /// Whether the rule applies to a request with this method.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Whether the rule's test holds for `actual`, the value its pointer resolved to
    /// (`None`: it did not resolve).
    pub fn holds(&self, actual: Option<&Value>) -> bool {
        let Some(v) = actual else { return matches!(self.test, Test::Absent) };
        match &self.test {
            Test::Exists => true,
            Test::Absent => false,
            Test::Eq(want) => json_eq(v, want),
            Test::Ne(want) => !json_eq(v, want),
            Test::In(set) => set.iter().any(|w| json_eq(v, w)),
            Test::NotIn(set) => !set.iter().any(|w| json_eq(v, w)),
            Test::Contains(want) => match (v, want) {
                (Value::Array(a), _) => a.iter().any(|e| json_eq(e, want)),
                (Value::String(s), Value::String(w)) => s.contains(w.as_str()),
                _ => false,
            },
            Test::StartsWith(w) => v.as_str().is_some_and(|s| s.starts_with(w.as_str())),
            Test::EndsWith(w) => v.as_str().is_some_and(|s| s.ends_with(w.as_str())),
            Test::Matches(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            Test::Compare(c, want) => match v {
                Value::Number(n) => number_cmp(n, want).is_some_and(|o| c.holds(o)),
                _ => false,
            },
        }
    }
}

/// Checks the value's shape for `op` and builds its test.
fn test(op: &str, value: Option<Value>) -> Result<Test, String> {
    let compare = |c: Comparison, v: Option<Value>| match v {
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(Test::Compare(c, n)),
        _ => Err(format!("`{op}` needs a number")),
    };
    let string = |v: Option<Value>| match v {
        Some(Value::String(s)) => Ok(s),
        _ => Err(format!("`{op}` needs a string")),
    };
    let array = |v: Option<Value>| match v {
        Some(Value::Array(a)) => Ok(a),
        _ => Err(format!("`{op}` needs an array of values")),
    };
    let any = |v: Option<Value>| v.ok_or_else(|| format!("`{op}` needs a value"));
    match op {
        "exists" | "absent" if value.is_some() => Err(format!("`{op}` takes no value")),
        "exists" => Ok(Test::Exists),
        "absent" => Ok(Test::Absent),
        "eq" => any(value).map(Test::Eq),
        "ne" => any(value).map(Test::Ne),
        "contains" => any(value).map(Test::Contains),
        "in" => array(value).map(Test::In),
        "not_in" => array(value).map(Test::NotIn),
        "starts_with" => string(value).map(Test::StartsWith),
        "ends_with" => string(value).map(Test::EndsWith),
        "matches" => {
            let re = string(value)?;
            // The regex crate never backtracks (linear time in the input); anchoring
            // makes `admin` mean exactly "admin", not any string holding it.
            regex::Regex::new(&format!("^(?:{re})$"))
                .map(Test::Matches)
                .map_err(|e| format!("the regex does not compile: {}", e.to_string().lines().last().unwrap_or("")))
        }
        "gt" => compare(Comparison::Gt, value),
        "gte" => compare(Comparison::Gte, value),
        "lt" => compare(Comparison::Lt, value),
        "lte" => compare(Comparison::Lte, value),
        _ => Err(format!("`{op}` is not an op")),
    }
}

/// Numbers as numbers: two integers exactly (so 2^53 + 1 is not 2^53), anything
/// else as f64. `None` for NaN, which JSON cannot hold anyway.
fn number_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn int(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// JSON equality with numbers compared as numbers (`1` equals `1.0`), members and
/// elements compared the same way.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A route's rules, as the phase applies them.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub require: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// The caller's documents a route's rules read; `None` where the rules read none
/// (a rule reading it then sees nothing resolve, and fails closed).
#[derive(Default, Clone, Copy)]
pub struct Facts<'a> {
    pub claims: Option<&'a Value>,
    pub app_metadata: Option<&'a Value>,
    pub client_metadata: Option<&'a Value>,
    pub user_metadata: Option<&'a Value>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.require.is_empty() && self.deny.is_empty()
    }

    /// Whether any rule reads `source` (so the request parses it only then).
    pub fn reads(&self, source: Source) -> bool {
        self.require.iter().chain(&self.deny).any(|r| r.source == source)
    }

    /// Every rule, require then deny.
    pub fn all(&self) -> impl Iterator<Item = &Rule> {
        self.require.iter().chain(&self.deny)
    }

    /// The rule that refuses this request, if one does: a deny rule that applies
    /// and holds (deny wins, so they are looked at first), else a require rule that
    /// applies and does not hold.
    pub fn refusal(&self, method: &Method, facts: &Facts<'_>) -> Option<&Rule> {
        let value = |r: &Rule| {
            let doc = match r.source {
                Source::Claims => facts.claims,
                Source::AppMetadata => facts.app_metadata,
                Source::ClientMetadata => facts.client_metadata,
                Source::UserMetadata => facts.user_metadata,
            };
            doc.and_then(|d| r.pointer.resolve(d))
        };
        let applies = |r: &&Rule| r.applies_to(method);
        // Deny wins, so a holding deny rule is looked for first.
        let denied = self.deny.iter().filter(applies).find(|r| r.holds(value(r)));
        denied.or_else(|| self.require.iter().filter(applies).find(|r| !r.holds(value(r))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(op: &str, value: Option<Value>) -> Rule {
        let raw = RawRule {
            source: Some("app_metadata".into()),
            pointer: Some("/x".into()),
            op: Some(op.into()),
            value,
            ..RawRule::default()
        };
        Rule::parse(raw, "require[0]").unwrap()
    }

    /// Whether `op value` holds for `actual` (`None`: missing).
    fn holds(op: &str, value: Value, actual: Option<Value>) -> bool {
        let value = if matches!(op, "exists" | "absent") { None } else { Some(value) };
        rule(op, value).holds(actual.as_ref())
    }

    #[test]
    fn pointers_parse_as_rfc_6901_says() {
        assert_eq!(Pointer::parse("").unwrap(), Pointer(vec![]));
        assert_eq!(Pointer::parse("/").unwrap(), Pointer(vec!["".into()]));
        assert_eq!(Pointer::parse("/a/b").unwrap(), Pointer(vec!["a".into(), "b".into()]));
        assert_eq!(
            Pointer::parse("/https:~1~1example.com~1roles").unwrap(),
            Pointer(vec!["https://example.com/roles".into()])
        );
        // ~01 is "~1", not "/": unescape ~1 only after ~0 would be wrong, RFC 6901 §4.
        assert_eq!(Pointer::parse("/a~01").unwrap(), Pointer(vec!["a~1".into()]));
        for bad in ["a", "a/b", "/a~", "/a~2", "/~x"] {
            assert!(Pointer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pointers_resolve_objects_and_array_indexes() {
        let doc = json!({"a": {"b": [10, 20]}, "": 1, "k/s": 2});
        let at = |p: &str| Pointer::parse(p).unwrap().resolve(&doc).cloned();
        assert_eq!(at(""), Some(doc.clone()));
        assert_eq!(at("/a/b/1"), Some(json!(20)));
        assert_eq!(at("/"), Some(json!(1)));
        assert_eq!(at("/k~1s"), Some(json!(2)));
        for missing in ["/a/b/2", "/a/b/01", "/a/b/-", "/a/b/x", "/a/c", "/z", "/a/b/1/c"] {
            assert_eq!(at(missing), None, "{missing}");
        }
    }

    #[test]
    fn each_op_holds_and_fails() {
        let cases: &[(&str, Value, Value, Value)] = &[
            // op, value, an actual that holds, one that does not
            ("exists", Value::Null, json!(false), Value::Null),
            ("eq", json!("pro"), json!("pro"), json!("free")),
            ("eq", json!({"a": [1]}), json!({"a": [1.0]}), json!({"a": [1], "b": 2})),
            ("ne", json!("pro"), json!("free"), json!("pro")),
            ("in", json!(["pro", "enterprise"]), json!("enterprise"), json!("free")),
            ("not_in", json!(["free"]), json!("pro"), json!("free")),
            ("contains", json!("admin"), json!(["viewer", "admin"]), json!(["viewer"])),
            ("contains", json!("adm"), json!("sysadmin"), json!("root")),
            ("starts_with", json!("eu-"), json!("eu-west"), json!("us-east")),
            ("ends_with", json!("@example.com"), json!("a@example.com"), json!("a@example.org")),
            ("matches", json!("[a-z]+-[0-9]+"), json!("team-42"), json!("xteam-42!")),
            ("gt", json!(5), json!(6), json!(5)),
            ("gte", json!(5), json!(5.0), json!(4.9)),
            ("lt", json!(1.5), json!(1), json!(2)),
            ("lte", json!(10), json!(10), json!(10.5)),
        ];
        for (op, value, yes, no) in cases {
            assert!(holds(op, value.clone(), Some(yes.clone())), "{op} {value} on {yes}");
            // `exists` fails only on a missing value.
            let no = if *op == "exists" { None } else { Some(no.clone()) };
            assert!(!holds(op, value.clone(), no.clone()), "{op} {value} on {no:?}");
        }
        assert!(holds("absent", Value::Null, None));
        assert!(!holds("absent", Value::Null, Some(Value::Null)));
    }

    #[test]
    fn a_missing_value_fails_every_op_but_absent() {
        for (op, value) in [
            ("exists", Value::Null),
            ("eq", json!(1)),
            ("ne", json!(1)),
            ("in", json!([1])),
            ("not_in", json!([1])),
            ("contains", json!(1)),
            ("starts_with", json!("a")),
            ("ends_with", json!("a")),
            ("matches", json!(".*")),
            ("gt", json!(0)),
            ("gte", json!(0)),
            ("lt", json!(0)),
            ("lte", json!(0)),
        ] {
            assert!(!holds(op, value, None), "{op}");
        }
    }

    #[test]
    fn a_type_that_does_not_fit_is_false() {
        assert!(!holds("gt", json!(1), Some(json!("2"))));
        assert!(!holds("lte", json!(1), Some(json!(null))));
        assert!(!holds("contains", json!(1), Some(json!(12))));
        assert!(!holds("contains", json!(1), Some(json!("12"))));
        assert!(!holds("starts_with", json!("a"), Some(json!(["a"]))));
        assert!(!holds("matches", json!(".*"), Some(json!(1))));
        assert!(!holds("eq", json!("1"), Some(json!(1))));
    }

    #[test]
    fn numbers_compare_as_numbers_and_large_integers_exactly() {
        let big = 9_007_199_254_740_993u64; // 2^53 + 1: f64 would round it to 2^53
        assert!(!holds("eq", json!(big - 1), Some(json!(big))));
        assert!(holds("gt", json!(big - 1), Some(json!(big))));
        assert!(holds("eq", json!(-3), Some(json!(-3.0))));
        assert!(holds("lt", json!(u64::MAX), Some(json!(-1))));
    }

    #[test]
    fn matches_is_anchored_at_both_ends() {
        assert!(holds("matches", json!("admin|staff"), Some(json!("staff"))));
        assert!(!holds("matches", json!("admin|staff"), Some(json!("staffer"))));
        assert!(!holds("matches", json!("admin|staff"), Some(json!("xadmin"))));
    }

    #[test]
    fn values_of_the_wrong_shape_are_refused_at_load() {
        let err = |op: &str, value: Option<Value>| {
            let raw = RawRule {
                source: Some("claims".into()),
                pointer: Some("/x".into()),
                op: Some(op.into()),
                value,
                ..RawRule::default()
            };
            Rule::parse(raw, "deny[0]").unwrap_err().into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        assert_eq!(err("exists", Some(json!(1))), ["value"]);
        assert_eq!(err("in", Some(json!("pro"))), ["value"]);
        assert_eq!(err("not_in", None), ["value"]);
        assert_eq!(err("starts_with", Some(json!(1))), ["value"]);
        assert_eq!(err("matches", Some(json!("("))), ["value"]);
        assert_eq!(err("gt", Some(json!("5"))), ["value"]);
        assert_eq!(err("eq", None), ["value"]);
        assert_eq!(err("is", Some(json!(1))), ["op"]);
    }

    #[test]
    fn methods_are_known_tokens_kept_uppercase() {
        let raw = |m: Vec<&str>| RawRule {
            source: Some("claims".into()),
            pointer: Some("/x".into()),
            op: Some("exists".into()),
            methods: Some(m.into_iter().map(String::from).collect()),
            ..RawRule::default()
        };
        let r = Rule::parse(raw(vec!["post", "DELETE"]), "require[0]").unwrap();
        assert_eq!(r.methods, [Method::POST, Method::DELETE]);
        assert!(r.applies_to(&Method::POST) && !r.applies_to(&Method::GET));
        assert!(Rule::parse(raw(vec!["FETCH"]), "require[0]").is_err());
        assert!(Rule::parse(raw(vec![]), "require[0]").is_err());
    }

    #[test]
    fn deny_wins_and_names_the_rule() {
        let parse = |name: Option<&str>, op: &str, value: Value, label: &str| {
            let raw = RawRule {
                name: name.map(String::from),
                source: Some("app_metadata".into()),
                pointer: Some("/plan".into()),
                op: Some(op.into()),
                value: Some(value),
                ..RawRule::default()
            };
            Rule::parse(raw, label).unwrap()
        };
        let rules = Rules {
            require: vec![parse(Some("paying plan"), "in", json!(["pro", "enterprise"]), "require[0]")],
            deny: vec![parse(None, "eq", json!("pro"), "deny[0]")],
        };
        let md = |plan: &str| json!({ "plan": plan });
        let facts = |v: &'static Value| Facts { app_metadata: Some(v), ..Facts::default() };
        let (pro, ent, free) =
            (Box::leak(Box::new(md("pro"))), Box::leak(Box::new(md("enterprise"))), Box::leak(Box::new(md("free"))));
        assert_eq!(rules.refusal(&Method::GET, &facts(pro)).map(|r| &*r.label), Some("deny[0]"));
        assert_eq!(rules.refusal(&Method::GET, &facts(ent)).map(|r| &*r.label), None);
        assert_eq!(rules.refusal(&Method::GET, &facts(free)).map(|r| &*r.label), Some("paying plan"));
        // No document at all: the require fails closed.
        assert_eq!(rules.refusal(&Method::GET, &Facts::default()).map(|r| &*r.label), Some("paying plan"));
    }
}
