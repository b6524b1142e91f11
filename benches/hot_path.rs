//! Criterion benchmarks of the hot path:
//!
//! - `verify/*`: ID token verification, RS256 and ES256, every check (no token
//!   cache), and a token cache hit;
//! - `mint/*`: a fresh internal token (not a reuse) with EdDSA, ES256 and RS256
//!   keys, and a reuse; and EdDSA with `[token.static_claims]` / `[token.secret_claims]`;
//! - `metadata_cache/hit`: one user lookup answered by the metadata cache;
//! - `rules/*`: a route's two authorization rules evaluated over already-parsed
//!   metadata (printing the allocations one evaluation makes: none), and with the
//!   parse of the cached metadata text a request pays when a rule reads it;
//! - `pipeline/*`: one whole request through an in-process claimsmith to a loopback
//!   upstream over a keep-alive hyper client (auth required with every cache warm,
//!   and auth = "off").
//!
//! `cargo bench --bench hot_path` (add `-- verify` to run one group).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use claimsmith::keys::SigningKey;
use claimsmith::metadata::StoredMetadata;
use claimsmith::metadata::cache::Kind;
use claimsmith::mint::{MintRequest, Minter};

const ISSUER: &str = "https://bench-issuer.test/";
const CLIENT: &str = "bench-client";
const USER: &str = "auth0|bench-1";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Serves `body` with status 200 on 127.0.0.1 for any request.
async fn serve_static(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

struct IdpKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl IdpKey {
    fn new(alg: Algorithm, kid: &str) -> IdpKey {
        let (key, pem) = SigningKey::generate(alg).unwrap();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk = key.public_jwk().clone();
        jwk["kid"] = json!(kid);
        IdpKey { alg, kid: kid.into(), encoding, jwk }
    }

    fn token(&self, sub: &str) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        let n = now();
        let claims = json!({"iss": ISSUER, "sub": sub, "aud": CLIENT, "iat": n, "exp": n + 3600,
                            "email": "bench@example.com", "email_verified": true, "name": "Bench User"});
        jsonwebtoken::encode(&h, &claims, &self.encoding).unwrap()
    }
}

/// An in-process claimsmith with a loopback issuer JWKS, upstream and metadata file.
struct Setup {
    running: claimsmith::Running,
    rsa: IdpKey,
    ec: IdpKey,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    claimsmith::install_crypto_provider();
    let rsa = IdpKey::new(Algorithm::RS256, "rsa-1");
    let ec = IdpKey::new(Algorithm::ES256, "ec-1");
    let jwks: &'static str = Box::leak(json!({"keys": [rsa.jwk, ec.jwk]}).to_string().into_boxed_str());
    let jwks_addr = serve_static(jwks).await;
    let upstream = serve_static("ok\n").await;
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata.json");
    std::fs::write(
        &md,
        json!({"users": {USER: {"app_metadata": {"roles": ["reader"], "plan": "pro"}}},
               "clients": {CLIENT: {"client_metadata": {"tenant_key": "k-bench", "region": "eu"}}}})
        .to_string(),
    )
    .unwrap();
    let toml = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
[admin]
addr = "127.0.0.1:0"
[[issuer]]
issuer = "{ISSUER}"
audiences = ["{CLIENT}"]
jwks_uri = "http://{jwks_addr}/jwks.json"
algorithms = ["RS256", "ES256"]
metadata = "local"
[metadata.local]
kind = "file"
path = "{md}"
[token]
issuer = "https://claimsmith.bench/"
algorithm = "EdDSA"
header = "authorization"
copy_claims = ["email", "email_verified", "name"]
[[route]]
path_prefix = "/api/"
upstream = "http://{upstream}"
audience = "bench-api"
[[route]]
path_prefix = "/off/"
upstream = "http://{upstream}"
auth = "off"
"#,
        md = md.display()
    );
    let config = claimsmith::parse_config(&toml).unwrap_or_else(|e| panic!("bench config: {e}"));
    let running = claimsmith::start(config).await.unwrap();
    assert!(running.wait_ready(Duration::from_secs(10)).await, "claimsmith did not become ready");
    Setup { running, rsa, ec, _dir: dir }
}

/// A [`Minter`] signing with a fresh key of `alg`; `token_extra` ends the `[token]` table.
fn minter(alg: Algorithm, dir: &std::path::Path, token_extra: &str) -> Minter {
    let (_, pem) = SigningKey::generate(alg).unwrap();
    let path = dir.join(format!("{alg:?}.pem"));
    std::fs::write(&path, pem).unwrap();
    let toml = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
[admin]
addr = "127.0.0.1:0"
[[issuer]]
issuer = "{ISSUER}"
audiences = ["{CLIENT}"]
jwks_uri = "http://127.0.0.1:9/jwks.json"
algorithms = ["RS256"]
[token]
issuer = "https://claimsmith.bench/"
algorithm = "{alg:?}"
key_files = ["{p}"]
copy_claims = ["email", "email_verified", "name"]
{token_extra}
[[route]]
path_prefix = "/api/"
upstream = "http://127.0.0.1:9"
audience = "bench-api"
"#,
        p = path.display()
    );
    let config = claimsmith::parse_config(&toml).unwrap_or_else(|e| panic!("bench config: {e}"));
    Minter::new(&config.token).unwrap()
}

/// Counts allocations, so the rules bench can show that evaluation makes none.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Two rules as a route might have them: a plan in a set, and no `blocked` flag.
fn bench_rules(c: &mut Criterion) {
    use claimsmith::rules::{Facts, RawRule, Rule, Rules};
    let rule = |op: &str, pointer: &str, value: Option<Value>, label: &str| {
        let raw = RawRule {
            source: Some("app_metadata".into()),
            pointer: Some(pointer.into()),
            op: Some(op.into()),
            value,
            ..RawRule::default()
        };
        Rule::parse(raw, label).unwrap()
    };
    let rules = Rules {
        require: vec![rule("in", "/plan", Some(json!(["pro", "enterprise"])), "require[0]")],
        deny: vec![rule("eq", "/blocked", Some(json!(true)), "deny[0]")],
    };
    let text = StoredMetadata::new(
        json!({"roles": ["reader"], "plan": "pro", "blocked": false, "note": "x".repeat(64)})
            .as_object()
            .unwrap()
            .clone(),
    );
    let parsed: Value = serde_json::from_str(text.json()).unwrap();
    let facts = Facts { app_metadata: Some(&parsed), ..Facts::default() };
    let method = http::Method::GET;
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..1000 {
        assert!(rules.refusal(&method, &facts).is_none());
    }
    let per_call = (ALLOCATIONS.load(Relaxed) - before) as f64 / 1000.0;
    println!("rules/evaluate_two: {per_call} allocations per evaluation");
    let mut g = c.benchmark_group("rules");
    g.bench_function("evaluate_two", |b| b.iter(|| rules.refusal(&method, std::hint::black_box(&facts)).is_none()));
    g.bench_function("parse_and_evaluate_two", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(std::hint::black_box(text.json())).unwrap();
            rules.refusal(&method, &Facts { app_metadata: Some(&v), ..Facts::default() }).is_none()
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_rules(c);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = rt.block_on(setup());
    let app = s.running.app();
    let rsa_token = s.rsa.token(USER);
    let ec_token = s.ec.token(USER);

    let mut g = c.benchmark_group("verify");
    g.bench_function("RS256_full", |b| {
        b.to_async(&rt).iter(|| async { app.verifier.verify_uncached_at(&rsa_token, now()).await.unwrap() })
    });
    g.bench_function("ES256_full", |b| {
        b.to_async(&rt).iter(|| async { app.verifier.verify_uncached_at(&ec_token, now()).await.unwrap() })
    });
    g.bench_function("token_cache_hit", |b| {
        b.to_async(&rt).iter(|| async { app.verifier.verify(&rsa_token).await.unwrap() })
    });
    g.finish();

    let identity = rt.block_on(app.verifier.verify(&rsa_token)).unwrap();
    let stored = |v: serde_json::Value| Arc::new(StoredMetadata::new(v.as_object().unwrap().clone()));
    let app_md = stored(json!({"roles": ["reader"], "plan": "pro"}));
    let client_md = stored(json!({"tenant_key": "k-bench", "region": "eu"}));
    let mint = |m: &Minter, route: &Arc<str>| {
        m.mint(&MintRequest {
            identity: &identity,
            audience: "bench-api",
            route,
            app_metadata: &app_md,
            client_metadata: &client_md,
            app_keys: None,
            client_keys: None,
            user_keys: None,
        })
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("mint");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let m = minter(alg, dir.path(), "");
        // A new route name per call: no reuse is possible, every call signs.
        let n = AtomicU64::new(0);
        g.bench_function(format!("{alg:?}_fresh"), |b| {
            b.iter(|| {
                let route: Arc<str> = Arc::from(format!("r{}", n.fetch_add(1, Relaxed)));
                mint(&m, &route)
            })
        });
        if alg == Algorithm::EdDSA {
            let route: Arc<str> = Arc::from("reused");
            g.bench_function("reuse", |b| b.iter(|| mint(&m, &route)));
        }
    }
    // The same with [token.static_claims] and [token.secret_claims]: rendered at
    // load, spliced per token, so only the extra bytes to sign and encode cost.
    std::fs::write(dir.path().join("system.key"), "bench-system-key-0123456789abcdef\n").unwrap();
    let extra = format!(
        "[token.static_claims]\ndeployment = \"eu-prod\"\nregion = \"eu-west-1\"\n\
         [token.secret_claims]\nsystem_key = {{ file = {:?} }}\n",
        dir.path().join("system.key").display().to_string()
    );
    let m = minter(Algorithm::EdDSA, dir.path(), &extra);
    let n = AtomicU64::new(0);
    g.bench_function("EdDSA_fresh_static_and_secret_claims", |b| {
        b.iter(|| {
            let route: Arc<str> = Arc::from(format!("r{}", n.fetch_add(1, Relaxed)));
            mint(&m, &route)
        })
    });
    g.finish();

    let source = app.sources[0].clone().expect("the issuer has a metadata source");
    let issuer: Arc<str> = Arc::from(ISSUER);
    rt.block_on(app.cache.get(Kind::User, &source, &issuer, USER)).unwrap().expect("bench user exists");
    let mut g = c.benchmark_group("metadata_cache");
    g.bench_function("hit", |b| {
        b.to_async(&rt).iter(|| async { app.cache.get(Kind::User, &source, &issuer, USER).await.unwrap() })
    });
    g.finish();

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{}", s.running.proxy_addr);
    let bearer = format!("Bearer {rsa_token}");
    let get = |path: &'static str| {
        let (client, url, bearer) = (client.clone(), format!("{base}{path}"), bearer.clone());
        async move {
            let req = Request::get(url).header("authorization", bearer).body(Empty::new()).unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    };
    rt.block_on(get("/api/warm"));
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("verified_cache_hit", |b| b.to_async(&rt).iter(|| get("/api/orders")));
    g.bench_function("auth_off", |b| b.to_async(&rt).iter(|| get("/off/orders")));
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(hot_path);
