//! Writes what the load test (`benches/load.sh`) needs, and starts nothing:
//!
//! - `jwks.json`: the public key of a fresh issuer key (served by nginx in the test);
//! - `tokens.txt`: one signed ID token per line, one per distinct user;
//! - `metadata.json`: a file metadata source holding every one of those users and
//!   the client (the file source's format, docs/configuration.md);
//! - with `--new-users N --new-sets K`: `tokens-new-1.txt` .. `tokens-new-K.txt`, N
//!   tokens each, of users that come after the first `--users` and are in no file:
//!   the never-seen users of the load test's burst (a fresh set per round, so no
//!   round finds the previous round's users already verified). They are signed with
//!   the same key as `tokens.txt`: one run makes every set.
//!
//! ```text
//! cargo run --release --example bench_tokens -- OUT_DIR [--users 1000] [--alg RS256]
//!     [--issuer https://bench-issuer.test/] [--audience bench-client] [--ttl-secs 86400]
//!     [--new-users 0] [--new-sets 1]
//! ```

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let (mut users, mut alg, mut issuer, mut audience, mut ttl) =
        (1000usize, "RS256".to_string(), "https://bench-issuer.test/".to_string(), "bench-client".to_string(), 86_400);
    let (mut new_users, mut new_sets) = (0usize, 1usize);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--users" => users = val().parse().unwrap_or_else(|_| usage("--users takes a number")),
            "--alg" => alg = val(),
            "--issuer" => issuer = val(),
            "--audience" => audience = val(),
            "--ttl-secs" => ttl = val().parse().unwrap_or_else(|_| usage("--ttl-secs takes a number")),
            "--new-users" => new_users = val().parse().unwrap_or_else(|_| usage("--new-users takes a number")),
            "--new-sets" => new_sets = val().parse().unwrap_or_else(|_| usage("--new-sets takes a number")),
            _ if !a.starts_with('-') && out.is_none() => out = Some(PathBuf::from(a)),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let out = out.unwrap_or_else(|| usage("OUT_DIR is required"));
    let alg = match alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => usage("--alg is RS256, ES256 or EdDSA"),
    };
    std::fs::create_dir_all(&out).expect("cannot create OUT_DIR");
    let issuer_key = BenchIssuer::new(alg, &issuer, &audience);
    std::fs::write(out.join("jwks.json"), issuer_key.jwks().to_string()).expect("write jwks.json");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    std::fs::write(out.join("tokens.txt"), tokens(&issuer_key, 0..users, now, ttl)).expect("write tokens.txt");
    std::fs::write(out.join("metadata.json"), metadata(users, &audience).to_string()).expect("write metadata.json");
    eprintln!("bench_tokens: wrote {users} {alg:?} tokens, jwks.json and metadata.json to {}", out.display());
    if new_users > 0 {
        for k in 0..new_sets {
            let first = users + k * new_users;
            let file = format!("tokens-new-{}.txt", k + 1);
            std::fs::write(out.join(&file), tokens(&issuer_key, first..first + new_users, now, ttl))
                .unwrap_or_else(|e| panic!("write {file}: {e}"));
        }
        eprintln!("bench_tokens: wrote {new_sets} set(s) of {new_users} never-seen users' tokens (tokens-new-*.txt)");
    }
}

/// One token per line for the users numbered `ids`, signed on every core (an RS256
/// signature takes about a millisecond, and the burst needs tens of thousands).
fn tokens(issuer: &BenchIssuer, ids: std::ops::Range<usize>, now: u64, ttl: u64) -> String {
    let ids: Vec<usize> = ids.collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = ids.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || part.iter().map(|&i| issuer.token(&user_id(i), now, ttl) + "\n").collect::<String>())
            })
            .collect();
        parts.into_iter().map(|p| p.join().expect("signing thread")).collect()
    })
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "bench_tokens: {msg}\nusage: bench_tokens OUT_DIR [--users N] [--alg RS256|ES256|EdDSA] [--issuer URL] [--audience ID] [--ttl-secs N] [--new-users N] [--new-sets K]"
    );
    std::process::exit(2)
}

/// The id of bench user `i`.
pub fn user_id(i: usize) -> String {
    format!("auth0|bench-{i:06}")
}

/// A file metadata document with `users` users and one client, `audience`.
pub fn metadata(users: usize, audience: &str) -> Value {
    let mut u = Map::new();
    for i in 0..users {
        u.insert(
            user_id(i),
            json!({"app_metadata": {"roles": ["reader"], "plan": "pro", "org_id": format!("org-{}", i % 97)}}),
        );
    }
    json!({"users": u, "clients": {audience: {"client_metadata": {"tenant_key": "k-bench-tenant", "region": "eu"}}}})
}

/// A signing key of an imaginary IdP.
pub struct BenchIssuer {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    issuer: String,
    audience: String,
}

impl BenchIssuer {
    pub fn new(alg: Algorithm, issuer: &str, audience: &str) -> BenchIssuer {
        let (key, pem) = claimsmith::keys::SigningKey::generate(alg).expect("key generation");
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .expect("PEM");
        BenchIssuer {
            alg,
            kid: key.kid().to_string(),
            encoding,
            jwk: key.public_jwk().clone(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
        }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// An ID token for `sub`, valid from `now` for `ttl` seconds.
    pub fn token(&self, sub: &str, now: u64, ttl: u64) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        let claims = json!({"iss": self.issuer, "sub": sub, "aud": self.audience, "iat": now, "exp": now + ttl,
                            "email": format!("{}@bench.example", &sub[6..]), "email_verified": true, "name": "Bench User"});
        jsonwebtoken::encode(&h, &claims, &self.encoding).expect("signing")
    }
}
