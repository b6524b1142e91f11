//! `[shared]`: several claimsmith processes in front of one Auth0 tenant, sharing one
//! real `redis-server` (docs/scaling.md). What replicas must do together: one user read
//! per user whatever the replica count, one read for simultaneous first requests, one
//! bulk client load, one rate budget, a 429 pausing all of them, evictions reaching
//! every replica; and what Redis failing must never do: fail a request. Redis is
//! scanned for ids and values in clear.
//!
//! Figures (eviction propagation, latency under faults) are printed as `figure:` lines
//! for benches/scaling.sh; nothing here asserts a time except the propagation bound
//! the contract names (1 s), checked with a wide margin of tries.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::auth0::{Auth0Mock, Endpoint, Fault, TenantOpts, WEBHOOK_TOKEN};
use support::redis::{RedisOpts, RedisServer};
use support::replicas::{Fleet, percentile};
use support::*;
use tokio::time::Instant;

fn user(i: usize) -> String {
    format!("auth0|shared-user-{i}")
}

fn user_md(i: usize) -> Value {
    json!({"plan": format!("plan-secret-{i:04}"), "roles": ["reader"]})
}

/// A tenant with `users` users and one client.
async fn tenant(users: usize) -> Auth0Mock {
    let mock = Auth0Mock::start().await;
    for i in 0..users {
        mock.add_user(&user(i), user_md(i));
    }
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    mock
}

fn tries() -> usize {
    std::env::var("CLAIMSMITH_TRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

async fn fleet(mock: &Auth0Mock, o: &TenantOpts, n: usize, redis: &RedisServer) -> Fleet {
    let f = Fleet::start(mock, o, n, Some(&redis.url()), "").await;
    for i in 0..n {
        f.wait_shared(i, true, Duration::from_secs(10)).await;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_requested_on_every_replica_are_read_once_and_clients_loaded_once() {
    let redis = RedisServer::start();
    let mock = tenant(20).await;
    let f = Arc::new(fleet(&mock, &TenantOpts::default(), 3, &redis).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        for r in 0..3 {
            let f = f.clone();
            tasks.push(tokio::spawn(async move {
                let a = f.get(r, "/api/x", &f.issuer.token(&user(i))).await;
                (a.status, r)
            }));
        }
    }
    for t in tasks {
        let (status, r) = t.await.expect("task");
        assert_eq!(status, StatusCode::OK, "replica {r}:\n{}", f.log(r));
    }
    eprintln!("figure: 20 users x 3 replicas -> {}", mock.summary());
    assert_eq!(mock.count(Endpoint::User), 20, "one read per user, not one per replica: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::ClientList), 1, "one bulk client load in total: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::Client), 0, "clients come from the bulk load: {}", mock.summary());
    let hits: f64 = futures_util::future::join_all((0..3).map(|r| f.metric(r, "claimsmith_shared_hits_total")))
        .await
        .into_iter()
        .map(|m| m.unwrap_or(0.0))
        .sum();
    assert!(hits >= 40.0 - 1.0, "the other replicas' misses were answered by Redis: {hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_simultaneous_first_requests_over_three_replicas_make_one_read() {
    let redis = RedisServer::start();
    let mock = tenant(1).await;
    let f = Arc::new(fleet(&mock, &TenantOpts::default(), 3, &redis).await);
    let token = Arc::new(f.issuer.token(&user(0)));
    let tasks: Vec<_> = (0..30)
        .map(|n| {
            let (f, token) = (f.clone(), token.clone());
            tokio::spawn(async move { f.get(n % 3, "/api/x", &token).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(mock.count(Endpoint::User), 1, "{}", mock.summary());
    let waits: f64 = futures_util::future::join_all((0..3).map(|r| f.metric(r, "claimsmith_shared_lease_waits_total")))
        .await
        .into_iter()
        .map(|m| m.unwrap_or(0.0))
        .sum();
    eprintln!("figure: 30 simultaneous first requests over 3 replicas -> 1 user read, {waits} lease waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rate_budget_for_every_replica() {
    let redis = RedisServer::start();
    let mock = tenant(12).await;
    let o = TenantOpts { rps: 2, timeout: "30s", ..TenantOpts::default() };
    let f = Arc::new(fleet(&mock, &o, 3, &redis).await);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { f.get(i % 3, "/api/x", &f.issuer.token(&user(i))).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let calls = mock.calls();
    let (first, last) = (calls.first().expect("calls").at, calls.last().expect("calls").at);
    let span = last.duration_since(first).as_secs_f64();
    let allowed = 2.0 * span + 2.0;
    eprintln!(
        "figure: max_requests_per_second = 2 over 3 replicas: {} calls to the tenant in {span:.2} s ({:.2}/s after the burst of 2)",
        calls.len(),
        (calls.len() as f64 - 2.0) / span.max(0.001)
    );
    // +1: the bucket's refill and the calls' arrival times are measured on two clocks.
    assert!(calls.len() as f64 <= allowed + 1.0, "{} calls in {span:.2} s exceed 2/s plus the burst", calls.len());
    assert_eq!(mock.count(Endpoint::User), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_replica() {
    let redis = RedisServer::start();
    let mock = tenant(3).await;
    let f = fleet(&mock, &TenantOpts::default(), 3, &redis).await;
    mock.fail_next(Endpoint::User, 1, Fault::RateLimited { retry_after: Some(3) });
    // Replica 0 meets the 429; its read waits out the 3 s within its 5 s timeout.
    let f = Arc::new(f);
    let first = {
        let f = f.clone();
        tokio::spawn(async move { f.get(0, "/api/x", &f.issuer.token(&user(0))).await.status })
    };
    let give_up = Instant::now() + Duration::from_secs(2);
    while mock.count(Endpoint::User) == 0 {
        assert!(Instant::now() < give_up, "replica 0 never read the user");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reads_before = mock.count(Endpoint::User);
    // Another replica, another user, during the pause: no call reaches the tenant.
    let t0 = Instant::now();
    let other = f.get(1, "/api/x", &f.issuer.token(&user(1))).await;
    let calls_during_pause = mock
        .calls()
        .iter()
        .filter(|c| c.endpoint == Endpoint::User && c.at >= t0 && c.at < t0 + Duration::from_millis(2500))
        .count();
    eprintln!("replica 1 during the pause: {} after {:?}", other.status, other.took);
    assert_eq!(calls_during_pause, 0, "replica 1 called the tenant during another replica's 429 pause");
    assert!(reads_before >= 1);
    assert_eq!(first.await.expect("task"), StatusCode::OK, "replica 0's read succeeds after the pause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_on_one_replica_reaches_the_others_within_a_second() {
    let redis = RedisServer::start();
    let mock = tenant(1).await;
    let f = fleet(&mock, &TenantOpts::default(), 3, &redis).await;
    let token = f.issuer.token(&user(0));
    let mut samples = Vec::new();
    for n in 0..tries() {
        for r in 0..3 {
            assert_eq!(f.get(r, "/api/x", &token).await.status, StatusCode::OK);
        }
        let reads = mock.count(Endpoint::User);
        let plan = format!("plan-v{n}");
        mock.set_app_metadata(&user(0), json!({"plan": plan}));
        let evicted_at = Instant::now();
        assert_eq!(f.admin_delete(0, "/cache/users/auth0%7Cshared-user-0").await, StatusCode::NO_CONTENT);
        // Each other replica serves the new value as soon as it dropped the old one.
        for r in 1..3 {
            loop {
                let a = f.get(r, "/api/x", &token).await;
                assert_eq!(a.status, StatusCode::OK);
                if f.last_app_metadata()["plan"] == plan {
                    samples.push(evicted_at.elapsed());
                    break;
                }
                assert!(
                    evicted_at.elapsed() < Duration::from_secs(1),
                    "replica {r} still served the old value after 1 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(mock.count(Endpoint::User), reads + 1, "one read for the three replicas after an eviction");
    }
    let (p50, p99) = (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
    eprintln!(
        "figure: eviction on one replica seen by the other two: p50 {p50:?}, p99 {p99:?} over {} samples",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_eviction_reaches_every_replica_through_one_single_client_read() {
    let redis = RedisServer::start();
    let mock = tenant(1).await;
    let f = fleet(&mock, &TenantOpts::default(), 3, &redis).await;
    let token = f.issuer.token(&user(0));
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &token).await.status, StatusCode::OK);
    }
    assert_eq!(mock.count(Endpoint::ClientList), 1);
    mock.set_client_metadata(CLIENT_1, json!({"tenant_key": "k-rotated-0042"}));
    assert_eq!(f.admin_delete(2, &format!("/cache/clients/{CLIENT_1}")).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &token).await.status, StatusCode::OK);
        let seen = f.upstream.last();
        let t = seen.headers.get("x-internal-token").and_then(|v| v.to_str().ok()).expect("token");
        let claims = claims_of(t);
        assert_eq!(claims["client_metadata"]["tenant_key"], "k-rotated-0042", "replica {r}");
    }
    assert_eq!(mock.count(Endpoint::Client), 1, "one single-client read for all replicas: {}", mock.summary());
    assert_eq!(mock.count(Endpoint::ClientList), 1, "no new bulk load: {}", mock.summary());
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("b64"))
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_id_token_or_metadata_value_in_clear() {
    let redis = RedisServer::start();
    let mock = tenant(5).await;
    mock.add_user("auth0|negative-probe", json!({}));
    let f = fleet(&mock, &TenantOpts::default(), 2, &redis).await;
    for i in 0..5 {
        assert_eq!(f.get(i % 2, "/api/x", &f.issuer.token(&user(i))).await.status, StatusCode::OK);
    }
    // A user the tenant does not know: a negative entry.
    let _ = f.get(0, "/api/x", &f.issuer.token("auth0|nobody-here")).await;
    let dump = redis.dump_all();
    assert!(dump.len() >= 6, "entries, the token and the client list are shared: {} keys", dump.len());
    let mut needles: Vec<String> = (0..5).map(user).collect();
    needles.extend((0..5).map(|i| format!("plan-secret-{i:04}")));
    needles.extend(
        ["shared-user", "nobody-here", CLIENT_1, TENANT_KEY, "reader", "mgmt-token-", "tenant.test"].map(String::from),
    );
    needles.push(support::auth0::M2M_CLIENT_SECRET.to_string());
    for (k, v) in &dump {
        for n in &needles {
            let hit = |b: &[u8]| b.windows(n.len()).any(|w| w == n.as_bytes());
            assert!(!hit(k), "a Redis key holds {n:?}: {}", String::from_utf8_lossy(k));
            assert!(!hit(v), "the value of {} holds {n:?}", String::from_utf8_lossy(k));
        }
        assert!(k.starts_with(b"claimsmith:"), "every key is under the prefix: {}", String::from_utf8_lossy(k));
    }
}

/// Requests for ever new users (so every one needs Redis or the tenant) from 3
/// replicas while `fault` happens to Redis; every answer must be 200.
async fn load_through_a_fault(name: &str, redis: &RedisServer, fault: impl FnOnce(), heal: impl FnOnce()) {
    let mock = tenant(600).await;
    let f = Arc::new(fleet(&mock, &TenantOpts::default(), 3, redis).await);
    let next = Arc::new(AtomicUsize::new(0));
    let run = |secs: u64| {
        let (f, next) = (f.clone(), next.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut inflight = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                let i = next.fetch_add(1, SeqCst) % 600;
                let f = f.clone();
                inflight.push(tokio::spawn(async move {
                    let a = f.get(i % 3, "/api/x", &f.issuer.token(&user(i))).await;
                    (a.status, a.took)
                }));
            }
            for t in inflight {
                let (s, took) = t.await.expect("task");
                lat.push(took);
                if s != StatusCode::OK {
                    failed.push(s);
                }
            }
            (lat, failed)
        })
    };
    let load = run(3);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fault();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut lat, failed) = load.await.expect("load");
    let (p50, p99, max) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0), percentile(&mut lat, 100.0));
    eprintln!(
        "figure: Redis {name} mid-load: {} requests, {} failed, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        lat.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "Redis {name}: requests failed: {failed:?}");
    for r in 0..3 {
        let warned = f.log(r).matches("shared cache unavailable").count();
        assert!(warned <= 1, "replica {r} warned {warned} times for one outage:\n{}", f.log(r));
    }
    heal();
    // Back: every replica reconnects by itself, and drops what it cached meanwhile.
    for r in 0..3 {
        f.wait_shared(r, true, Duration::from_secs(10)).await;
    }
    let warm = user(0);
    let before = mock.count_target(Endpoint::User, "shared-user-0?");
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &f.issuer.token(&warm)).await.status, StatusCode::OK);
    }
    let after = mock.count_target(Endpoint::User, "shared-user-0?");
    assert!(after - before <= 1, "after reconnecting, one read for all replicas ({before} -> {after})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_no_request() {
    let redis = RedisServer::start();
    load_through_a_fault("killed", &redis, || redis.kill(), || redis.restart()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_fails_no_request() {
    let redis = RedisServer::start();
    load_through_a_fault("stopped (SIGSTOP)", &redis, || redis.pause(), || redis.resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_the_password_mid_load_fails_no_request() {
    let redis = RedisServer::start_with(RedisOpts::default().user("claimsmith", "first-password-0001"));
    load_through_a_fault(
        "refusing the password",
        &redis,
        || redis.set_password("second-password-0002"),
        // The operator puts the password back: the replicas' one works again.
        || redis.set_password("first-password-0001"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_from_the_start_replicas_serve_alone_and_are_ready() {
    let mock = tenant(3).await;
    // Nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let f = Fleet::start(&mock, &TenantOpts::default(), 2, Some(&format!("redis://{dead}")), "").await;
    for r in 0..2 {
        assert_eq!(f.admin_get(r, "/readyz").await.expect("readyz").status, StatusCode::OK);
        for i in 0..3 {
            assert_eq!(f.get(r, "/api/x", &f.issuer.token(&user(i))).await.status, StatusCode::OK);
        }
        assert_eq!(f.metric(r, "claimsmith_shared_up").await, Some(0.0));
    }
    assert_eq!(mock.count(Endpoint::User), 6, "each replica reads for itself");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for r in 0..2 {
        assert_eq!(f.log(r).matches("shared cache unavailable").count(), 1, "warned once:\n{}", f.log(r));
        assert!(f.metric(r, "claimsmith_shared_errors_total").await.unwrap_or(0.0) >= 2.0, "reconnection is retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_client_load_runs_once_per_ttl_over_all_replicas() {
    let redis = RedisServer::start();
    let mock = tenant(1).await;
    let o = TenantOpts { ttl: "2s", ..TenantOpts::default() };
    let started = Instant::now();
    let f = fleet(&mock, &o, 3, &redis).await;
    tokio::time::sleep(Duration::from_millis(5000)).await;
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &f.issuer.token(&user(0))).await.status, StatusCode::OK);
    }
    let secs = started.elapsed().as_secs_f64();
    let loads = mock.count(Endpoint::ClientList);
    eprintln!("figure: ttl 2 s, 3 replicas, {secs:.1} s: {loads} bulk client loads in total");
    // One at start and one per ttl since; three replicas loading on their own would
    // make three times that.
    assert!(loads as f64 <= (secs / 2.0).ceil() + 1.0, "{loads} bulk loads in {secs:.1} s with ttl 2 s");
    assert_eq!(mock.count(Endpoint::Client), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_pushed_to_one_replica_reaches_every_replica_without_a_read() {
    let redis = RedisServer::start();
    let mock = tenant(2).await;
    let o = TenantOpts { webhooks: true, ..TenantOpts::default() };
    let f = fleet(&mock, &o, 3, &redis).await;
    let token = f.issuer.token(&user(0));
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &token).await.status, StatusCode::OK);
    }
    let reads = mock.count(Endpoint::User);
    // Auth0 delivers to one replica (behind a Service, whichever it picks).
    mock.set_hooks(&f.admin_url(1), WEBHOOK_TOKEN);
    assert_eq!(mock.update_app_metadata(&user(0), json!({"plan": "enterprise-pushed"})).await, StatusCode::NO_CONTENT);
    for r in [1, 0, 2] {
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            assert_eq!(f.get(r, "/api/x", &token).await.status, StatusCode::OK);
            if f.last_app_metadata()["plan"] == "enterprise-pushed" {
                break;
            }
            assert!(Instant::now() < give_up, "replica {r} never saw the pushed change");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(mock.count(Endpoint::User), reads, "the pushed value came through Redis, not the Management API");
    // A deleted user is refused on every replica, again with no read.
    let gone = f.issuer.token(&user(1));
    for r in 0..3 {
        assert_eq!(f.get(r, "/api/x", &gone).await.status, StatusCode::OK);
    }
    let reads = mock.count(Endpoint::User);
    assert_eq!(mock.delete_user(&user(1)).await, StatusCode::NO_CONTENT);
    for r in [0, 2, 1] {
        let give_up = Instant::now() + Duration::from_secs(1);
        while f.get(r, "/api/x", &gone).await.status != StatusCode::UNAUTHORIZED {
            assert!(Instant::now() < give_up, "replica {r} still admits a deleted user");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(mock.count(Endpoint::User), reads, "the delete came through Redis: {}", mock.summary());
}

/// A `redis-server` serving TLS only, with a certificate for 127.0.0.1 from a CA of
/// its own: the CA's PEM path, the server's `rediss://` URL, and the process.
fn tls_redis(dir: &std::path::Path) -> (std::path::PathBuf, String, std::process::Child) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "claimsmith test Redis CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("cert");
    let (ca_path, cert_path, key_path) = (dir.join("redis-ca.pem"), dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&ca_path, ca.pem()).expect("write");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-auth-clients", "no", "--dir"])
        .arg(dir)
        .arg("--tls-cert-file")
        .arg(&cert_path)
        .arg("--tls-key-file")
        .arg(&key_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < give_up, "the TLS redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (ca_path, format!("rediss://127.0.0.1:{port}"), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_is_shared_and_an_untrusted_one_is_not_used() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, url, mut child) = tls_redis(dir.path());
    let mock = tenant(2).await;
    let trusting =
        Fleet::start(&mock, &TenantOpts::default(), 2, Some(&url), &format!("ca_file = \"{}\"", ca.display())).await;
    for r in 0..2 {
        trusting.wait_shared(r, true, Duration::from_secs(10)).await;
    }
    for r in 0..2 {
        assert_eq!(trusting.get(r, "/api/x", &trusting.issuer.token(&user(0))).await.status, StatusCode::OK);
    }
    assert_eq!(mock.count(Endpoint::User), 1, "the two replicas shared one read over TLS: {}", mock.summary());
    drop(trusting);
    // Without the CA the certificate is not trusted: Redis is never used, nothing fails.
    let untrusting = Fleet::start(&mock, &TenantOpts::default(), 1, Some(&url), "").await;
    assert_eq!(untrusting.get(0, "/api/x", &untrusting.issuer.token(&user(1))).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(untrusting.metric(0, "claimsmith_shared_up").await, Some(0.0));
    let _ = child.kill();
    let _ = child.wait();
}

/// user_metadata through `[shared]` (docs/scaling.md): a replica that reads it finds
/// an entry another replica stored without it (its configuration forwards none) and
/// reads the user again rather than forward "none"; what it read goes through the
/// sealed second level, so a third replica that reads it makes no read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_metadata_is_shared_and_an_entry_without_it_is_never_taken_for_none() {
    let redis = RedisServer::start();
    let mock = tenant(1).await;
    let theme = json!({"theme": "shared-theme-secret", "locale": "fr"});
    mock.state.lock().unwrap().users.get_mut(&user(0)).unwrap()["user_metadata"] = theme.clone();
    let plain = TenantOpts::default();
    let forwards = TenantOpts { route_extra: "user_metadata = []", ..TenantOpts::default() };
    let mut f = fleet(&mock, &plain, 1, &redis).await;
    let token = f.issuer.token(&user(0));
    let claims = |f: &Fleet| -> Value {
        use base64::Engine;
        let t = f.upstream.last().headers["x-internal-token"].to_str().unwrap().to_string();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap();
        serde_json::from_slice(&payload).unwrap()
    };
    let fields = |mock: &Auth0Mock| -> Vec<String> {
        mock.calls()
            .iter()
            .filter(|c| c.endpoint == Endpoint::User)
            .map(|c| c.target.split_once("fields=").map_or("", |(_, q)| q).to_string())
            .collect()
    };

    let a = f.get(0, "/api/x", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", f.log(0));
    assert!(claims(&f).get("user_metadata").is_none());
    assert_eq!(fields(&mock), ["app_metadata&include_fields=true"]);

    // A replica that forwards user_metadata: the shared entry lacks it, so it reads.
    for i in [1, 2] {
        let r = f.add(&mock, &forwards, Some(&redis.url()), "").await;
        f.wait_shared(r, true, Duration::from_secs(10)).await;
        assert_eq!(r, i);
    }
    let a = f.get(1, "/api/x", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", f.log(1));
    assert_eq!(claims(&f)["user_metadata"], theme);
    assert_eq!(
        fields(&mock),
        ["app_metadata&include_fields=true", "app_metadata,user_metadata&include_fields=true"],
        "{}",
        mock.summary()
    );

    // The third replica finds it in Redis, user_metadata included.
    let a = f.get(2, "/api/x", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", f.log(2));
    assert_eq!(claims(&f)["user_metadata"], theme);
    assert_eq!(mock.count(Endpoint::User), 2, "{}", mock.summary());
    assert!(f.metric(2, "claimsmith_shared_hits_total").await.unwrap_or(0.0) >= 1.0);
    // And the first, which forwards none, still forwards none.
    let a = f.get(0, "/api/y", &f.issuer.token(&user(0))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(claims(&f).get("user_metadata").is_none());
}
