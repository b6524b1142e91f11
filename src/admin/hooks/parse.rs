//! What the push hooks receive, read into what they do (docs/operations.md, "Push
//! invalidation"). Pure functions over the body: a whole delivery is read and checked
//! here before anything is applied, so a malformed one changes nothing.
//!
//! - Event Streams: a CloudEvents 1.0 JSON object or an array of them; `user.updated`
//!   and `user.deleted` (also with the `com.auth0.` prefix) name a user, every other
//!   type is read and ignored.
//! - Log Streams (custom webhook): a JSON array, one object, or JSON lines, each
//!   `{"log_id", "data"}` or the bare `data`; a `sapi` entry whose request was a
//!   `patch`, `put` or `delete` of `/api/v2/clients/{id}` or `/api/v2/users/{id}`
//!   names that client or user, every other entry is ignored.
//!
//! Errors are fixed texts: nothing of the body is ever echoed.

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::metadata::Metadata;

/// The largest delivery read.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Which tenant an event or log entry says it is from (each part when given).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tenant {
    /// The domain of a CloudEvent `source` `urn:auth0:<domain>`.
    pub(crate) domain: Option<String>,
    /// The tenant name: an event's `a0tenant`, a log entry's `tenant_name`.
    pub(crate) name: Option<String>,
}

/// What one event or log entry asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// A user changed: `app_metadata` as of `updated_at_ms` when the event carried
    /// both (then the cached value may be replaced), else only "changed". The
    /// user's `user_metadata` when the event carried it as an object (a profile
    /// without it says nothing about it: a cache that needs it reads the user again).
    User {
        user_id: String,
        app_metadata: Option<Metadata>,
        user_metadata: Option<Metadata>,
        updated_at_ms: Option<u64>,
    },
    /// A user was deleted.
    UserDeleted { user_id: String },
    /// A client changed.
    Client { client_id: String },
    /// Nothing for claimsmith.
    Ignored,
}

/// One event or log entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    /// The event `id` (required) or the entry's `log_id` (when given).
    pub(crate) id: Option<String>,
    pub(crate) tenant: Tenant,
    pub(crate) change: Change,
}

/// Why a delivery was refused (a fixed text, for the 400 answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// An Event Streams delivery: one CloudEvent or an array of them.
pub(crate) fn events(body: &[u8]) -> Result<Vec<Item>, Malformed> {
    let v: Value = serde_json::from_slice(body).map_err(|_| Malformed("the body is not JSON"))?;
    let list = match v {
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => return Err(Malformed("expected a CloudEvent object or an array of them")),
    };
    list.iter().map(event).collect()
}

fn event(v: &Value) -> Result<Item, Malformed> {
    let Value::Object(e) = v else { return Err(Malformed("an event is not a JSON object")) };
    let id = non_empty(e.get("id")).ok_or(Malformed("an event has no id"))?;
    let kind = e.get("type").and_then(Value::as_str).ok_or(Malformed("an event has no type"))?;
    let tenant = Tenant {
        domain: e
            .get("source")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("urn:auth0:"))
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        name: non_empty(e.get("a0tenant")),
    };
    let change = match kind.strip_prefix("com.auth0.").unwrap_or(kind) {
        kind @ ("user.updated" | "user.deleted") => {
            let object = e.get("data").and_then(|d| d.get("object")).and_then(Value::as_object);
            let user_id = object
                .and_then(|o| non_empty(o.get("user_id")))
                .ok_or(Malformed("a user event has no data.object.user_id"))?;
            if kind == "user.deleted" {
                Change::UserDeleted { user_id }
            } else {
                user_updated(object.unwrap_or(&Map::new()), user_id)?
            }
        }
        _ => Change::Ignored,
    };
    Ok(Item { id: Some(id), tenant, change })
}

fn user_updated(object: &Map<String, Value>, user_id: String) -> Result<Change, Malformed> {
    let app_metadata = match object.get("app_metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(Malformed("data.object.app_metadata is not an object")),
    };
    let user_metadata = match object.get("user_metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(Malformed("data.object.user_metadata is not an object")),
    };
    // An unreadable time cannot be ordered against what is held: the user is evicted.
    let updated_at_ms = object.get("updated_at").and_then(Value::as_str).and_then(rfc3339_ms);
    Ok(Change::User { user_id, app_metadata, user_metadata, updated_at_ms })
}

/// A Log Streams delivery: a JSON array, one object, or JSON lines.
pub(crate) fn logs(body: &[u8]) -> Result<Vec<Item>, Malformed> {
    const NOT_JSON: Malformed = Malformed("the body is not a JSON array, object or JSON lines");
    let mut entries = Vec::new();
    // Whitespace-separated values: one array, one object, or one object a line.
    for v in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        match v.map_err(|_| NOT_JSON)? {
            Value::Array(a) => entries.extend(a),
            v @ Value::Object(_) => entries.push(v),
            _ => return Err(Malformed("a log entry is not a JSON object")),
        }
    }
    if entries.is_empty() && !body.iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(Malformed("the body is empty"));
    }
    entries.iter().map(log_entry).collect()
}

fn log_entry(v: &Value) -> Result<Item, Malformed> {
    let Value::Object(entry) = v else { return Err(Malformed("a log entry is not a JSON object")) };
    let data = match entry.get("data") {
        None => entry,
        Some(Value::Object(d)) => d,
        Some(_) => return Err(Malformed("a log entry's data is not a JSON object")),
    };
    let id = non_empty(entry.get("log_id")).or_else(|| non_empty(data.get("log_id")));
    let tenant = Tenant { domain: None, name: non_empty(data.get("tenant_name")) };
    Ok(Item { id, tenant, change: sapi_change(data) })
}

/// The client or user a Management API call changed, from a `sapi` entry.
fn sapi_change(data: &Map<String, Value>) -> Change {
    if data.get("type").and_then(Value::as_str) != Some("sapi") {
        return Change::Ignored;
    }
    let request = data.get("details").and_then(|d| d.get("request"));
    let method = request.and_then(|r| r.get("method")).and_then(Value::as_str).unwrap_or("");
    if !["patch", "put", "delete"].iter().any(|m| method.eq_ignore_ascii_case(m)) {
        return Change::Ignored;
    }
    let Some(path) = request.and_then(|r| r.get("path")).and_then(Value::as_str) else { return Change::Ignored };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let id = |prefix: &str| {
        let raw = path.strip_prefix(prefix).filter(|r| !r.is_empty() && !r.contains('/'))?;
        let id = percent_decode_str(raw).decode_utf8().ok()?;
        (!id.is_empty()).then(|| id.into_owned())
    };
    if let Some(client_id) = id("/api/v2/clients/") {
        Change::Client { client_id }
    } else if let Some(user_id) = id("/api/v2/users/") {
        Change::User { user_id, app_metadata: None, user_metadata: None, updated_at_ms: None }
    } else {
        Change::Ignored
    }
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// The `[metadata.NAME]` sources (name, Auth0 domain) a tenant is: those whose domain
/// is the event's `urn:auth0:` domain, or whose domain's first label is its tenant
/// name; a delivery that names no tenant belongs to the only auth0 source, if there is
/// exactly one.
pub(crate) fn sources_of<'a>(tenant: &Tenant, auth0: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    if tenant.domain.is_none() && tenant.name.is_none() {
        return match auth0 {
            [(name, _)] => vec![*name],
            _ => Vec::new(),
        };
    }
    auth0
        .iter()
        .filter(|(_, domain)| {
            let label = domain.split('.').next().unwrap_or(domain);
            tenant.domain.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(domain))
                || tenant.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label))
        })
        .map(|(name, _)| *name)
        .collect()
}

/// An RFC 3339 date-time (`2025-02-01T12:34:56.789Z`, any fraction, `Z` or an offset)
/// as milliseconds since the epoch; `None` when it is not one or is before 1970.
pub(crate) fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // 60: a leap second, counted as the next second's start.
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        for k in 0..3 {
            millis = millis * 10 + b.get(start + k).filter(|_| start + k < i).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_secs = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |x: u8| i64::from(x - b'0');
            let (oh, om) = (d(digits[0]) * 10 + d(digits[1]), d(digits[2]) * 10 + d(digits[3]));
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs.checked_mul(1000)?.checked_add(millis)?).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn updated(id: &str, user: &str, md: Value, at: &str) -> Value {
        json!({
            "specversion": "1.0", "type": "user.updated", "source": "urn:auth0:tenant.eu.auth0.com",
            "id": id, "time": at, "a0tenant": "tenant", "a0stream": "est_1",
            "data": {"object": {"user_id": user, "updated_at": at, "app_metadata": md}}
        })
    }

    #[test]
    fn times_are_read_as_rfc3339() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2025-02-01T12:34:56Z"), Some(1_738_413_296_000));
        assert_eq!(rfc3339_ms("2025-02-01T12:34:56.789Z"), Some(1_738_413_296_789));
        assert_eq!(rfc3339_ms("2025-02-01T12:34:56.7Z"), Some(1_738_413_296_700));
        assert_eq!(rfc3339_ms("2025-02-01T12:34:56.789123456Z"), Some(1_738_413_296_789));
        assert_eq!(rfc3339_ms("2025-02-01T13:34:56+01:00"), Some(1_738_413_296_000));
        assert_eq!(rfc3339_ms("2025-02-01T11:04:56-01:30"), Some(1_738_413_296_000));
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2025-02-01",
            "2025-02-01T12:34:56",
            "2025-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-02-01T24:00:00Z",
            "2025-02-01T12:34:56.Z",
            "2025-02-01T12:34:56+0100",
            "2025-02-01T12:34:56Zjunk",
            "1969-12-31T23:59:59Z",
            "२०२५-02-01T12:34:56Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_event_stream_delivery_is_one_event_or_an_array() {
        let one = updated("evt_1", "auth0|1", json!({"plan": "pro"}), "2025-02-01T12:34:56.000Z");
        let items = events(one.to_string().as_bytes()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id.as_deref(), Some("evt_1"));
        assert_eq!(items[0].tenant, Tenant { domain: Some("tenant.eu.auth0.com".into()), name: Some("tenant".into()) });
        let Change::User { user_id, app_metadata, user_metadata, updated_at_ms } = &items[0].change else { panic!() };
        assert_eq!(user_id, "auth0|1");
        assert_eq!(app_metadata.as_ref().unwrap()["plan"], "pro");
        assert_eq!(*user_metadata, None, "a profile without user_metadata says nothing about it");
        assert_eq!(*updated_at_ms, Some(1_738_413_296_000));
        let mut with_user = one.clone();
        with_user["data"]["object"]["user_metadata"] = json!({"theme": "dark"});
        let Change::User { user_metadata, .. } = &events(with_user.to_string().as_bytes()).unwrap()[0].change else {
            panic!()
        };
        assert_eq!(user_metadata.as_ref().unwrap()["theme"], "dark");
        with_user["data"]["object"]["user_metadata"] = json!("dark");
        assert_eq!(
            events(with_user.to_string().as_bytes()),
            Err(Malformed("data.object.user_metadata is not an object"))
        );

        let deleted = json!({"specversion": "1.0", "type": "com.auth0.user.deleted", "id": "evt_2",
            "source": "urn:auth0:tenant.eu.auth0.com",
            "data": {"object": {"user_id": "auth0|2", "deleted_at": "2025-02-01T12:34:56Z"}}});
        let created = json!({"type": "user.created", "id": "evt_3", "data": {"object": {}}});
        let items = events(json!([one, deleted, created]).to_string().as_bytes()).unwrap();
        assert_eq!(items[1].change, Change::UserDeleted { user_id: "auth0|2".into() });
        assert_eq!(items[2].change, Change::Ignored);

        // Without app_metadata, or with an unreadable updated_at: only "changed".
        let bare = json!({"type": "user.updated", "id": "e", "data": {"object": {"user_id": "u", "updated_at": "x"}}});
        assert_eq!(
            events(bare.to_string().as_bytes()).unwrap()[0].change,
            Change::User { user_id: "u".into(), app_metadata: None, user_metadata: None, updated_at_ms: None }
        );
    }

    #[test]
    fn a_malformed_event_refuses_the_whole_delivery() {
        let good = updated("evt_1", "auth0|1", json!({}), "2025-02-01T12:34:56Z");
        for bad in [
            json!("text"),
            json!([good, 7]),
            json!([good, {"type": "user.updated", "data": {"object": {"user_id": "u"}}}]),
            json!([good, {"id": "", "type": "user.updated"}]),
            json!([good, {"id": "e"}]),
            json!([good, {"id": "e", "type": "user.updated", "data": {"object": {}}}]),
            json!([good, {"id": "e", "type": "user.deleted"}]),
            json!([good, {"id": "e", "type": "user.updated", "data": {"object": {"user_id": "u", "app_metadata": [1]}}}]),
        ] {
            assert!(events(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        assert!(events(b"").is_err());
        assert!(events(b"{\"id\": ").is_err());
        assert!(events(format!("{good}\n{good}").as_bytes()).is_err(), "JSON lines are the log hook's form");
    }

    fn sapi(log_id: &str, method: &str, path: &str) -> Value {
        json!({"log_id": log_id, "data": {
            "date": "2021-11-04T00:14:30.201Z", "type": "sapi", "description": "Update a client",
            "client_id": "caller-client", "ip": "203.0.113.7", "tenant_name": "tenant",
            "details": {"request": {"method": method, "path": path, "body": {"client_metadata": {"tier": "gold"}}},
                        "response": {"statusCode": 200}}}})
    }

    #[test]
    fn a_log_stream_delivery_is_an_array_an_object_or_json_lines() {
        let a = sapi("90020211104001430299115418365351830745472004626724159538", "patch", "/api/v2/clients/c1");
        let b = sapi("2", "DELETE", "/api/v2/users/auth0%7C507f");
        let expect = vec![
            Item {
                id: Some("90020211104001430299115418365351830745472004626724159538".into()),
                tenant: Tenant { domain: None, name: Some("tenant".into()) },
                change: Change::Client { client_id: "c1".into() },
            },
            Item {
                id: Some("2".into()),
                tenant: Tenant { domain: None, name: Some("tenant".into()) },
                change: Change::User {
                    user_id: "auth0|507f".into(),
                    app_metadata: None,
                    user_metadata: None,
                    updated_at_ms: None,
                },
            },
        ];
        assert_eq!(logs(json!([a, b]).to_string().as_bytes()).unwrap(), expect);
        assert_eq!(logs(format!("{a}\n{b}\n").as_bytes()).unwrap(), expect);
        assert_eq!(logs(format!("{a}\r\n\r\n{b}").as_bytes()).unwrap(), expect);
        assert_eq!(logs(a.to_string().as_bytes()).unwrap(), expect[..1]);
        // The bare data object, its log_id inside.
        let mut bare = a["data"].clone();
        bare["log_id"] = a["log_id"].clone();
        assert_eq!(logs(bare.to_string().as_bytes()).unwrap(), expect[..1]);
        // Pretty-printed.
        assert_eq!(logs(serde_json::to_string_pretty(&json!([a, b])).unwrap().as_bytes()).unwrap(), expect);
    }

    #[test]
    fn only_changing_sapi_calls_on_one_client_or_user_count() {
        let change =
            |method: &str, path: &str| logs(sapi("1", method, path).to_string().as_bytes()).unwrap()[0].change.clone();
        assert_eq!(change("put", "/api/v2/clients/c%2F1"), Change::Client { client_id: "c/1".into() });
        assert_eq!(change("Patch", "/api/v2/clients/c1?x=1"), Change::Client { client_id: "c1".into() });
        for (m, p) in [
            ("get", "/api/v2/clients/c1"),
            ("post", "/api/v2/clients"),
            ("patch", "/api/v2/clients/"),
            ("patch", "/api/v2/clients/c1/credentials"),
            ("patch", "/api/v2/users/u1/roles"),
            ("patch", "/api/v2/roles/r1"),
            ("patch", "/api/v2/clients/%FF"),
        ] {
            assert_eq!(change(m, p), Change::Ignored, "{m} {p}");
        }
        let login = json!({"log_id": "3", "data": {"type": "s", "description": "Success Login"}});
        assert_eq!(logs(login.to_string().as_bytes()).unwrap()[0].change, Change::Ignored);
        let no_details = json!({"type": "sapi"});
        assert_eq!(logs(no_details.to_string().as_bytes()).unwrap()[0].change, Change::Ignored);
    }

    #[test]
    fn a_malformed_log_delivery_applies_nothing() {
        let a = sapi("1", "patch", "/api/v2/clients/c1");
        assert!(logs(format!("{a}\n{{\"log_id\": \"2\", \"data\": {{").as_bytes()).is_err());
        assert!(logs(format!("{a}\nnot json").as_bytes()).is_err());
        assert!(logs(json!([a, "x"]).to_string().as_bytes()).is_err());
        assert!(logs(json!([a, {"log_id": "2", "data": 5}]).to_string().as_bytes()).is_err());
        assert!(logs(format!("{a}\n7").as_bytes()).is_err());
        assert!(logs(b"").is_err());
        assert!(logs(b" \n").is_err());
    }

    #[test]
    fn a_tenant_is_matched_by_domain_or_name() {
        let one = [("tenant", "tenant.eu.auth0.com")];
        let two = [("a", "alpha.us.auth0.com"), ("b", "beta.eu.auth0.com")];
        let t = |d: Option<&str>, n: Option<&str>| Tenant { domain: d.map(Into::into), name: n.map(Into::into) };
        assert_eq!(sources_of(&t(Some("TENANT.eu.auth0.com"), None), &one), ["tenant"]);
        assert_eq!(sources_of(&t(None, Some("tenant")), &one), ["tenant"]);
        assert_eq!(sources_of(&t(None, None), &one), ["tenant"]);
        assert!(sources_of(&t(Some("other.eu.auth0.com"), Some("other")), &one).is_empty());
        assert!(sources_of(&t(None, None), &two).is_empty(), "two tenants: which one is not guessed");
        assert_eq!(sources_of(&t(None, Some("beta")), &two), ["b"]);
        assert_eq!(sources_of(&t(Some("alpha.us.auth0.com"), Some("alpha")), &two), ["a"]);
        assert!(sources_of(&t(None, Some("tenant")), &[]).is_empty());
    }
}
