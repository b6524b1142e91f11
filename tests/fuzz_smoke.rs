//! The fuzz targets of `fuzz/` as a stable-Rust property test.
//!
//! `cargo fuzz` needs nightly; this runs the same target functions (fuzz/src/lib.rs,
//! included by path) on stable, over the committed corpus in `fuzz/corpus/<target>/`
//! plus ten thousand deterministic mutations of it, so `cargo test` catches a
//! regression of any fuzz invariant. `FUZZ_SMOKE_ITERS` changes the mutation count.
//!
//! `cargo test --test fuzz_smoke -- --ignored write_seed_corpus` regenerates the seeds.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use serde_json::json;
use targets::*;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no seed corpus at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(seeds.len() >= 3, "the corpus of {target} is (nearly) empty");
    seeds
}

/// Mutations per target (verify_claims, which signs every input, runs a third;
/// h1_differential, whose every input is two round trips through claimsmith, a
/// tenth).
fn iterations(name: &str) -> usize {
    let n = std::env::var("FUZZ_SMOKE_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    match name {
        "verify_claims" => n / 3,
        "h1_differential" => n / 10,
        _ => n,
    }
}

/// Runs `target` over its corpus and `iterations()` mutations of it, reporting the
/// input that broke an invariant.
fn run(name: &str) {
    let target = TARGETS.iter().find(|(n, _)| *n == name).expect("target").1;
    let seeds = corpus(name);
    let mut rng = Rng::new(0x5eed_0000 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
    let started = std::time::Instant::now();
    let mut inputs = seeds.clone();
    let total = iterations(name);
    for i in 0..total + seeds.len() {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let base = &inputs[rng.below(inputs.len())];
            let other = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, base, other)
        };
        let outcome = std::panic::catch_unwind(|| target(&input));
        if outcome.is_err() {
            panic!("fuzz target {name} broke an invariant on input #{i}: {:?}", String::from_utf8_lossy(&input));
        }
        // Keep some mutants as bases so edits accumulate (a poor man's corpus growth).
        if i >= seeds.len() && rng.below(4) == 0 && inputs.len() < 4096 {
            inputs.push(input);
        }
    }
    eprintln!("{name}: {} inputs in {:?}", total + seeds.len(), started.elapsed());
}

#[test]
fn fuzz_verify_token() {
    run("verify_token");
}

#[test]
fn fuzz_verify_claims() {
    run("verify_claims");
}

#[test]
fn fuzz_hygiene() {
    run("hygiene");
}

#[test]
fn fuzz_normalize() {
    run("normalize");
}

#[test]
fn fuzz_config() {
    run("config");
}

#[test]
fn fuzz_h1_request() {
    run("h1_request");
}

#[test]
fn fuzz_h1_response() {
    run("h1_response");
}

#[test]
fn fuzz_chunked() {
    run("chunked");
}

#[test]
fn fuzz_h1_differential() {
    run("h1_differential");
}

/// h1_differential is not vacuous: plain requests get through both claimsmith
/// instances to the strict upstream (one each), and a request to /api/ does not.
#[test]
fn h1_differential_reaches_the_upstream() {
    let seen =
        h1_differential_counted(b"GET /public/a HTTP/1.1\r\nHost: a\r\n\r\nGET /api/b HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(seen, 2, "the public request reached the upstream {seen} times over two instances");
    let seen =
        h1_differential_counted(b"POST /public/b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(seen, 2, "the chunked request reached the upstream {seen} times over two instances");
}

/// The verification fixture is not vacuous: valid tokens of every allowed algorithm
/// pass, and the same tokens broken in one way each fail.
#[test]
fn fixture_accepts_valid_and_refuses_broken_tokens() {
    let f = fixture();
    let verify = |t: &str| f.rt.block_on(f.verifier.verify_at(t, NOW));
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256, Algorithm::PS256, Algorithm::HS256] {
        let t = valid_token(alg, &valid_claims("user-1"));
        let id = verify(&t).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!((id.subject(), id.client_id()), ("user-1", AUDIENCES[0]));
        verify_token(t.as_bytes());
        let mut bad = valid_claims("user-1");
        bad["exp"] = json!(NOW - 31);
        assert!(verify(&valid_token(alg, &bad)).is_err());
        let mut sig_flipped = t.clone().into_bytes();
        let last = sig_flipped.len() - 2;
        sig_flipped[last] = if sig_flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(verify(std::str::from_utf8(&sig_flipped).unwrap()).is_err());
    }
    // verify_claims with mode 0 (EdDSA, right kid) accepts valid claims.
    let mut input = vec![0u8];
    input.extend(valid_claims("user-1").to_string().into_bytes());
    verify_claims(&input);
}

// ---------------------------------------------------------------------------
// Seeds

fn write(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let f = fixture();
    let c = valid_claims("auth0|seed-user");

    // verify_token: valid tokens, then one broken way each.
    for (n, alg) in [
        ("valid-eddsa", Algorithm::EdDSA),
        ("valid-es256", Algorithm::ES256),
        ("valid-rs256", Algorithm::RS256),
        ("valid-ps256", Algorithm::PS256),
        ("valid-hs256", Algorithm::HS256),
    ] {
        write("verify_token", n, valid_token(alg, &c));
    }
    let mut multi = c.clone();
    multi["aud"] = json!(AUDIENCES);
    multi["azp"] = json!(AUDIENCES[1]);
    write("verify_token", "valid-multi-aud-azp", valid_token(Algorithm::EdDSA, &multi));
    let nokid = sign_raw(
        json!({"alg": "RS256"}).to_string().as_bytes(),
        c.to_string().as_bytes(),
        Algorithm::RS256,
        encoding_for(f, Algorithm::RS256).0,
    );
    write("verify_token", "valid-rs256-no-kid", nokid);
    let mut expired = c.clone();
    expired["exp"] = json!(NOW - 100);
    write("verify_token", "expired", valid_token(Algorithm::EdDSA, &expired));
    let payload = b64(&c);
    write("verify_token", "alg-none", format!("{}.{payload}.", b64(&json!({"alg": "none"}))));
    write("verify_token", "alg-none-sig", format!("{}.{payload}.AAAA", b64(&json!({"alg": "none", "kid": "ed-1"}))));
    write(
        "verify_token",
        "jku-header",
        format!("{}.{payload}.AAAA", b64(&json!({"alg": "RS256", "jku": "http://127.0.0.1:1/x", "kid": "evil"}))),
    );
    write("verify_token", "crit", format!("{}.{payload}.AAAA", b64(&json!({"alg": "EdDSA", "crit": ["b64"]}))));
    let dup = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"iss":"https://evil/","iss":"{ISSUER}","sub":"x","aud":"client-a","exp":9999999999}}"#));
    write("verify_token", "duplicate-iss", format!("{}.{dup}.AAAA", b64(&json!({"alg": "EdDSA", "kid": "ed-1"}))));
    write("verify_token", "four-parts", "a.b.c.d");
    write("verify_token", "dots", "..");
    write("verify_token", "short", "eyJhbGciOiJIUzI1NiJ9.e30.");

    // verify_claims: mode byte + payload.
    let claims_seed = |name: &str, mode: u8, payload: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(payload.as_bytes());
        write("verify_claims", name, v);
    };
    claims_seed("valid-eddsa", 0, &c.to_string());
    claims_seed("valid-hs256", 1, &c.to_string());
    claims_seed("valid-es256", 2, &c.to_string());
    claims_seed("valid-rs256", 3, &c.to_string());
    claims_seed("multi-aud", 0, &multi.to_string());
    claims_seed("no-kid-eddsa", 4, &c.to_string());
    claims_seed("unknown-kid", 8, &c.to_string());
    claims_seed("wrong-family-kid", 12, &c.to_string());
    claims_seed("crit", 16, &c.to_string());
    claims_seed(
        "float-dates",
        0,
        &format!(r#"{{"iss":"{ISSUER}","sub":"s","aud":["client-b"],"exp":1.7e9,"nbf":1700000029.9,"iat":0}}"#),
    );
    claims_seed(
        "dup-sub",
        0,
        &format!(r#"{{"iss":"{ISSUER}","sub":"a","sub":"b","aud":"client-a","exp":1800000000}}"#),
    );
    claims_seed("empty", 0, "{}");

    // hygiene: drop name, cookie name, header lines.
    write(
        "hygiene",
        "basic",
        "x-internal-token\nid_token\nConnection: close, X-Secret\nX-Secret: 1\nKeep-Alive: timeout=5\nX_Internal_Token: forged\nCookie: a=1; id_token=abc; b=2\nAccept: */*\n",
    );
    write(
        "hygiene",
        "authorization",
        "authorization\nsession\nAuthorization: Bearer x\nProxy-Authorization: Basic y\nTE: trailers\nUpgrade: websocket\nConnection: upgrade\n",
    );
    write(
        "hygiene",
        "cookies",
        "x-user\nid_token\nCookie: id_token=1\nCookie: theme=dark;id_token = 2 ; lang=en\nCookie: id_token\nCookie: =;;\nX-User: forged\n",
    );
    write(
        "hygiene",
        "underscores",
        "X_Forwarded_For\ntok\nx-forwarded-for: 1.2.3.4\nx_forwarded_for: 5.6.7.8\nTransfer_Encoding: chunked\n",
    );

    // normalize: tricky paths.
    for (i, p) in [
        "/",
        "/api/x",
        "/public/../api/x",
        "/a/./b/../c/",
        "/%61pi/%2e%2e/x",
        "/a%2e%2e/b",
        "/api%2Fx",
        "/api%5cx",
        "/api\\x",
        "/%2e%2e/",
        "/a//b/../..",
        "/ünï/%C3%BC",
        "/a%20b%3a%7E",
        "/a/.%2e/b",
        "/x/%252e%252e/y",
        "/a/b/.",
    ]
    .iter()
    .enumerate()
    {
        write("normalize", &format!("path-{i:02}"), p);
    }

    // config: valid and invalid configurations.
    let valid = r#"[listen]
addr = "127.0.0.1:0"
token_cookie = "id_token"
trusted_proxies = ["10.0.0.0/8", "::1"]

[admin]
addr = "127.0.0.1:0"

[[issuer]]
issuer = "https://tenant.eu.auth0.com/"
audiences = ["CLIENT_ID_1", "CLIENT_ID_2"]
algorithms = ["RS256", "ES256"]
leeway = "30s"

[cache]
ttl = "5m"
max_stale = "1h"
negative_ttl = "30s"
max_entries = 100000

[token]
issuer = "https://claimsmith.internal/"
ttl = "5m"
algorithm = "EdDSA"
header = "x-internal-token"
copy_claims = ["email", "name"]

[[route]]
path_prefix = "/api/"
upstream = "http://127.0.0.1:3000"
audience = "orders-api"
app_metadata = ["roles"]

[[route]]
path_prefix = "/public/"
upstream = "http://127.0.0.1:3000"
auth = "off"
"#;
    write("config", "valid", valid);
    write("config", "same-issuer", valid.replace("https://claimsmith.internal/", "https://tenant.eu.auth0.com/"));
    write(
        "config",
        "bad-durations",
        valid.replace("\"5m\"", "\"99999999999999999999h\"").replace("\"30s\"", "\"-1s\""),
    );
    write("config", "dot-prefix", valid.replace("/public/", "/public/../api/"));
    write("config", "unknown-key", format!("{valid}\n[tokne]\nissuer = \"x\"\n"));
    write(
        "config",
        "auth0-source",
        r#"[[issuer]]
issuer = "https://t.example/"
audiences = ["c"]
metadata = "auth0"
hmac_secret_env = "NO_SUCH_VAR_CLAIMSMITH_FUZZ"
algorithms = ["HS256", "none"]

[metadata.auth0]
kind = "auth0"
domain = "t.example"
client_id = "m2m"
client_secret_env = "NO_SUCH_VAR_CLAIMSMITH_FUZZ"

[[route]]
path_prefix = "/"
upstream = "https://backend.example"
"#,
    );
    write("config", "empty", "");

    write_h1_seeds();
}

/// The seeds of the HTTP/1.1 fast path targets alone (they need no fixture).
#[test]
#[ignore = "regenerates fuzz/corpus/{h1_request,h1_response,chunked,h1_differential}; run by hand"]
fn write_h1_seed_corpus() {
    write_h1_seeds();
}

fn write_h1_seeds() {
    // h1_request: max_head, split point (of 256), what the client sent.
    for (n, max_head, split, raw) in [
        (
            "get-pipelined",
            8192,
            128,
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: 1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n",
        ),
        ("close", 8192, 200, "DELETE / HTTP/1.1\r\nConnection: keep-alive, Close\r\nHost: x\r\n\r\n"),
        ("bare-lf", 1024, 17, "GET /x HTTP/1.1\nHost: x\nAccept: */*\n\n"),
        ("partial", 8192, 100, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"),
        (
            "oversized",
            64,
            30,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        ),
        (
            "exact-max",
            100,
            255,
            "GET /exactly-one-hundred HTTP/1.1\r\nHost: example.com\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        ),
        ("http10", 8192, 50, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
        ("absolute-form", 8192, 50, "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("connect", 8192, 50, "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"),
        ("te-chunked", 8192, 50, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("expect", 8192, 50, "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
        ("upgrade", 8192, 50, "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        ("two-hosts", 8192, 50, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("length-list", 8192, 50, "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na"),
        ("h2-preface", 8192, 50, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("fragment", 8192, 50, "GET /a#b HTTP/1.1\r\n\r\n"),
        ("del-in-value", 8192, 50, "GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n"),
    ] {
        write("h1_request", n, h1_request_input(max_head, split, raw.as_bytes()));
    }

    // h1_response: HEAD request?, close the client's connection?, what the upstream sent.
    for (n, head_request, close, raw) in [
        ("length", false, false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"),
        (
            "interim-chunked",
            false,
            true,
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
             Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("head", true, false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n"),
        ("no-content", false, false, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ("not-modified", false, false, "HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\nETag: x\r\n\r\n"),
        (
            "http10-close",
            false,
            false,
            "HTTP/1.0 200 OK\r\nX_Internal_Token: t\r\nx-internal-token: u\r\nX-Request-Id: theirs\r\nDate: D\r\n\r\nbody",
        ),
        (
            "hop-by-hop",
            false,
            false,
            "HTTP/1.1 200 OK\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2\r\n\
             Transfer_Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
        ),
        ("ambiguous", false, false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("gzip-chunked", false, false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        ("lengths-differ", false, false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        ("switch", false, false, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        ("partial", false, false, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-"),
    ] {
        write("h1_response", n, h1_response_input(head_request, close, raw.as_bytes()));
    }

    // chunked: mode byte (split size, how the round trip encodes), then a body.
    for (n, mode, body) in [
        ("extension-trailer", 0x00u8, "5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT"),
        ("upper-hex", 0x2b, "A\r\n0123456789\r\n0\r\n\r\n"),
        ("empty-body", 0xf0, "0\r\n\r\n"),
        ("then-response", 0x07, "3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"),
        ("overflow", 0x01, "11111111111111111\r\n"),
        ("missing-crlf", 0x02, "5\r\nhelloXX"),
        ("text", 0xfd, "The quick brown fox jumps over the lazy dog, again and again and again."),
    ] {
        let mut v = vec![mode];
        v.extend_from_slice(body.as_bytes());
        write("chunked", n, v);
    }

    // h1_differential: a client's whole connection. The first three are the known
    // smuggling payloads (Connection naming Content-Length).
    let hidden = "GET /api/admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let post = |connection: &str| {
        format!("POST /public/x HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nContent-Length: 40\r\n\r\n{hidden}")
    };
    let chunk = format!("{:x}\r\n{hidden}\r\n", hidden.len());
    for (n, raw) in [
        ("payload-connection-content-length", post("content-length")),
        ("payload-keep-alive-content-length-underscore", post("keep-alive, Content_Length")),
        ("payload-close-content-length", post("close, content-length")),
        ("get-then-api", format!("GET /public/a HTTP/1.1\r\nHost: a\r\n\r\n{hidden}")),
        (
            "body-holds-a-request",
            format!("POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "chunked-extension-trailer",
            format!("PUT /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0;e=1\r\nX-T: 1\r\n\r\n", chunk.replacen("\r\n", ";n=\"v\"\r\n", 1)),
        ),
        (
            "cl-te",
            format!("POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}", 5 + hidden.len()),
        ),
        (
            "te-cl",
            format!("POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunk}0\r\n\r\n"),
        ),
        (
            "two-lengths",
            format!("POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "expect-continue",
            "POST /public/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".into(),
        ),
        (
            "websocket",
            "GET /public/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".into(),
        ),
        (
            "h2c",
            "GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".into(),
        ),
        (
            "http10-keep-alive",
            format!("GET /public/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET http://a/public/b HTTP/1.1\r\nHost: a\r\n\r\n{hidden}"),
        ),
        ("obs-fold-bare-lf", format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\nGET /public/b HTTP/1.1\nHost: a\n\n{hidden}")),
        (
            "bad-chunk-size",
            format!("POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
    ] {
        write("h1_differential", n, raw);
    }
}
