//! The cache shared by replicas (docs/scaling.md): one Redis (or Valkey) that every
//! replica uses as a second-level cache behind its in-process one, and as the place
//! where replicas coordinate: one source call per key (a lease), one rate budget per
//! tenant (a token bucket run by a Lua script on the server's clock), a pause every
//! replica honours after a 429, and evictions published to every replica.
//!
//! Why Redis and this client: Redis (or Valkey) is what a platform team already runs,
//! and it does replication and failover itself; claimsmith only needs `GET`/`SET PX`,
//! `SET NX PX`, scripts and pub/sub. The `redis` crate (1.x) is the maintained,
//! widely used client; its multiplexed connection lets every request share one TCP
//! connection without a pool. We do not use its connection manager: claimsmith must
//! know the moment Redis is lost (to stop waiting on it, and to drop in-process entries
//! when it comes back, since evictions may have been missed), so one supervisor task
//! here owns connecting, the subscription and the backoff.
//!
//! Nothing readable goes to Redis: a key is `PREFIX:TAG:` and the base64url HMAC-SHA256
//! of what it names (kind, source, issuer, id) under a key derived from the first
//! `[shared].key_files` key; a value is AES-256-GCM sealed under a key derived from the
//! same file, with the Redis key as associated data, so a value cannot be moved to
//! another key. Every key file opens values, so a new key can be put first while the
//! old one still opens what other replicas wrote.
//!
//! Redis failing never fails a request: every call has `[shared].timeout`; a failed or
//! slow call marks Redis unavailable, after which calls are not even tried until the
//! supervisor has reconnected (so an outage costs one timeout, not one per request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::Kind;
use crate::config::{Secret, SharedConfig};

/// A new key for `[shared].key_files`: 32 random bytes, base64 on one line.
pub fn generate_key() -> String {
    let mut k = [0u8; 32];
    fill_random(&mut k);
    format!("{}\n", STANDARD.encode(k))
}

fn fill_random(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(buf);
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct SharedStats {
    /// Whether Redis is connected and answering.
    pub up: AtomicBool,
    /// Calls that failed or timed out, and failed connection attempts.
    pub errors: AtomicU64,
    /// Lookups the in-process cache missed and Redis answered.
    pub hits: AtomicU64,
    /// Times a lookup waited because another replica held the key's lease.
    pub lease_waits: AtomicU64,
    /// Times a source call waited for the shared rate budget.
    pub budget_waits: AtomicU64,
}

/// What replicas tell each other: drop this from your in-process cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One user or client; `issuer` `None`: of every issuer.
    Entry { kind: Kind, issuer: Option<String>, id: String },
    /// Every entry of an issuer (its source changed).
    Issuer(String),
}

/// Where the supervisor applies what other replicas publish.
pub trait Coherence: Send + Sync {
    /// Drops what `inv` names from the in-process cache (never publishes again).
    fn apply(&self, inv: &Invalidation);
    /// Redis came back after an outage: evictions may have been missed, so every
    /// in-process entry goes.
    fn forget_all(&self);
    /// Whether the state this supervisor serves is still in use; it stops otherwise.
    fn alive(&self) -> bool;
}

/// A value as Redis holds it, once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// When the source answered (ms since the UNIX epoch): `ttl`, `max_stale` and
    /// `negative_ttl` count from it on every replica.
    pub fetched_ms: u64,
    /// The time the value is known current as of (the read's start, or a pushed
    /// change's `updated_at`): a pushed change older than this loses.
    pub as_of_ms: u64,
    /// The metadata's JSON text; `None`: the id does not exist.
    pub value: Option<String>,
    /// A user's user_metadata JSON text, when it was read with the user; `None`:
    /// not read (a replica that wants it reads the user again).
    pub user_metadata: Option<String>,
}

/// The answer to "may I call the source for this key?".
pub enum Lease {
    /// Yes; release it when the value is written.
    Held { key: String, token: String },
    /// Another replica is calling it: wait for its value.
    Busy,
    /// Redis is not usable: call the source yourself.
    Unavailable,
}

/// The answer of the shared rate budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A request may be sent now.
    Granted,
    /// Not before this long.
    Wait(Duration),
    /// The API answered 429 to some replica: nobody calls it for this long.
    Paused(Duration),
    /// Redis is not usable: use the local budget.
    Unavailable,
}

/// Derived keys: one names, the others seal (the first) and open (all).
struct Keys {
    name: hmac::Key,
    seal: Vec<LessSafeKey>,
}

impl Keys {
    fn new(cfg: &SharedConfig) -> Keys {
        let derive = |k: &[u8; 32], label: &str| {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), label.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        };
        let first = cfg.keys.first().map(|k| k.0).unwrap_or_default();
        let seal = cfg
            .keys
            .iter()
            .filter_map(|k| UnboundKey::new(&AES_256_GCM, &derive(&k.0, "claimsmith shared seal v1")).ok())
            .map(LessSafeKey::new)
            .collect();
        Keys { name: hmac::Key::new(hmac::HMAC_SHA256, &derive(&first, "claimsmith shared name v1")), seal }
    }
}

/// Lets a lease go only when it is still ours (it may have expired and been taken).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A token bucket of `ARGV[1]` requests a second and a burst of as many, on the
/// server's clock (replicas' clocks differ), and the pause a 429 set. Returns
/// `{0, 0}` granted, `{1, ms}` wait, `{2, ms}` paused.
const TAKE: &str = r"
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {2, paused} end
local rate = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or rate
local at = tonumber(b[2]) or now
tokens = math.min(rate, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
if wait > 0 then return {1, wait} end
return {0, 0}";

/// Sets a pause unless a longer one is set.
const PAUSE: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1";

/// The scripts, hashed once (they are sent by hash, and in full only when Redis
/// does not know them yet).
struct Scripts {
    release: redis::Script,
    take: redis::Script,
    pause: redis::Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    release: redis::Script::new(RELEASE),
    take: redis::Script::new(TAKE),
    pause: redis::Script::new(PAUSE),
});

/// First pause between connection attempts; doubled per failure.
const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Cap of that pause.
const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// How long one lease lasts when its holder dies before releasing it.
const LEASE_LIFE: Duration = Duration::from_secs(5);
/// How often a waiting replica looks for the lease holder's value.
const LEASE_POLL: Duration = Duration::from_millis(10);

/// One Redis, as every replica sees it.
pub struct Shared {
    client: redis::Client,
    /// `None` while Redis is unavailable: calls are skipped, not tried.
    conn: ArcSwapOption<MultiplexedConnection>,
    keys: Keys,
    prefix: String,
    timeout: Duration,
    /// Tells this replica's own messages apart.
    replica: u64,
    pub stats: Arc<SharedStats>,
    /// A call failed: the supervisor reconnects.
    lost: Notify,
    /// The outage has been logged (once per outage, not per request).
    warned: AtomicBool,
    /// Set after the first connection: a later one is a reconnection.
    connected_once: AtomicBool,
    /// Becomes true once the first connection attempt has ended, either way.
    settled: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Reads the configuration; connects later, in [`Shared::maintain`].
    pub fn new(cfg: &SharedConfig) -> Result<Shared, String> {
        let client = match cfg.ca_file.as_ref().map(|c| c.pem.to_vec()) {
            None => redis::Client::open(cfg.url.expose()),
            Some(pem) => redis::Client::build_with_tls(
                cfg.url.expose(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem) },
            ),
        }
        // The error may quote the URL, which may hold a password.
        .map_err(|_| "not a usable Redis URL, or an unusable CA file".to_string())?;
        Ok(Shared {
            client,
            conn: ArcSwapOption::empty(),
            keys: Keys::new(cfg),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            replica: rand::random(),
            stats: Arc::default(),
            lost: Notify::new(),
            warned: AtomicBool::new(false),
            connected_once: AtomicBool::new(false),
            settled: tokio::sync::watch::channel(false).0,
        })
    }

    /// Carries the counters of the instance a reload replaces, so metrics do not
    /// restart at zero.
    pub fn keep_stats(&self, old: &Shared) {
        for (new, old) in [
            (&self.stats.errors, &old.stats.errors),
            (&self.stats.hits, &old.stats.hits),
            (&self.stats.lease_waits, &old.stats.lease_waits),
            (&self.stats.budget_waits, &old.stats.budget_waits),
        ] {
            new.fetch_add(old.load(Relaxed), Relaxed);
        }
    }

    /// Waits (a bounded time) until the first connection attempt has ended, so work
    /// that starts with the process (the first bulk client load) is coordinated
    /// instead of done by every replica at once.
    pub async fn settled(&self) {
        let mut rx = self.settled.subscribe();
        let limit = self.timeout.max(Duration::from_secs(1)) * 3;
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done)).await;
    }

    /// Whether Redis is connected now.
    pub fn up(&self) -> bool {
        self.conn.load().is_some()
    }

    // -- names and seals ------------------------------------------------------------

    /// `PREFIX:TAG:` + HMAC of the parts (each length-prefixed, so no two lists of
    /// parts give the same input).
    fn name(&self, tag: &str, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.keys.name);
        for p in std::iter::once(&tag).chain(parts) {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p.as_bytes());
        }
        format!("{}:{tag}:{}", self.prefix, URL_SAFE_NO_PAD.encode(ctx.sign().as_ref()))
    }

    /// The Redis key of a user's or client's entry read from source `scope`.
    pub fn entry_name(&self, kind: Kind, scope: &str, issuer: &str, id: &str) -> String {
        self.name(kind.as_str(), &[scope, issuer, id])
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let sealer = self.keys.seal.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut buf = plain.to_vec();
        sealer
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut buf)
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Some(out)
    }

    fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        for k in &self.keys.seal {
            let mut buf = body.to_vec();
            let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else { return None };
            if let Ok(plain) = k.open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf) {
                let n = plain.len();
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }

    // -- calls ----------------------------------------------------------------------

    /// Runs one call with the timeout; `None` when Redis is unavailable or the call
    /// failed (which marks it unavailable).
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn.load_full()?;
        match tokio::time::timeout(self.timeout, f((*conn).clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.lose(&conn, &format!("{:?}", e.kind()));
                None
            }
            Err(_) => {
                self.lose(&conn, "timed out");
                None
            }
        }
    }

    /// A call on `conn` failed: stop using it and let the supervisor reconnect.
    fn lose(&self, conn: &Arc<MultiplexedConnection>, why: &str) {
        self.stats.errors.fetch_add(1, Relaxed);
        let current = self.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.conn.store(None);
            self.stats.up.store(false, Relaxed);
            self.warn_once(why);
            self.lost.notify_one();
        }
    }

    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                reason = why,
                "shared cache unavailable: this replica uses its own cache and rate budget until Redis is back"
            );
        }
    }

    /// The entry named `key`, when Redis holds one this replica can open.
    pub async fn get_entry(&self, key: &str) -> Option<SharedEntry> {
        let sealed: Option<Vec<u8>> =
            self.call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await?;
        let plain = self.open(key, &sealed?)?;
        decode_entry(&plain)
    }

    /// Stores `entry` under `key` for `life`.
    pub async fn put_entry(&self, key: &str, entry: &SharedEntry, life: Duration) {
        if let Some(sealed) = self.seal(key, &encode_entry(entry)) {
            self.set(key, sealed, life).await;
        }
    }

    async fn set(&self, key: &str, value: Vec<u8>, life: Duration) {
        let ms = life.as_millis().max(1) as u64;
        let _: Option<()> =
            self.call(|mut c| async move {
                redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms).query_async(&mut c).await
            })
            .await;
    }

    /// Deletes `keys`.
    pub async fn delete(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let _: Option<i64> =
            self.call(|mut c| async move { redis::cmd("DEL").arg(keys).query_async(&mut c).await }).await;
    }

    /// Asks for the right to call the source for `key`.
    pub async fn lease(&self, key: &str) -> Lease {
        self.take_lease(format!("{key}:lease"), LEASE_LIFE).await
    }

    /// `SET lease_key <random token> NX PX life`: held when set, busy when another
    /// holder has it. The token lets only its holder release it.
    async fn take_lease(&self, lease_key: String, life: Duration) -> Lease {
        let mut raw = [0u8; 16];
        fill_random(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let ms = life.as_millis().max(1) as u64;
        let got: Option<Option<String>> = self
            .call(|mut c| {
                let (k, t) = (lease_key.clone(), token.clone());
                async move { redis::cmd("SET").arg(k).arg(t).arg("NX").arg("PX").arg(ms).query_async(&mut c).await }
            })
            .await;
        match got {
            None => Lease::Unavailable,
            Some(Some(_)) => Lease::Held { key: lease_key, token },
            Some(None) => Lease::Busy,
        }
    }

    /// Gives a lease back (only if still ours).
    pub async fn release(&self, lease: Lease) {
        if let Lease::Held { key, token } = lease {
            let _: Option<i64> =
                self.call(|mut c| async move { SCRIPTS.release.key(key).arg(token).invoke_async(&mut c).await }).await;
        }
    }

    /// How long a replica waits between looks at a key another one is loading.
    pub fn lease_poll(&self) -> Duration {
        LEASE_POLL
    }

    /// Takes one request from the shared budget of `scope` (a tenant).
    pub async fn take(&self, scope: &str, rate: u32) -> Budget {
        let (bucket, pause) = (self.name("budget", &[scope]), self.name("pause", &[scope]));
        let r: Option<(i64, i64)> = self
            .call(
                |mut c| async move { SCRIPTS.take.key(bucket).key(pause).arg(rate.max(1)).invoke_async(&mut c).await },
            )
            .await;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0).max(1));
        match r {
            None => Budget::Unavailable,
            Some((0, _)) => Budget::Granted,
            Some((1, w)) => Budget::Wait(ms(w)),
            Some((_, w)) => Budget::Paused(ms(w)),
        }
    }

    /// Every replica stops calling `scope` for `d` (it answered 429).
    pub async fn pause(&self, scope: &str, d: Duration) {
        let key = self.name("pause", &[scope]);
        let ms = d.as_millis().max(1) as u64;
        let _: Option<i64> =
            self.call(|mut c| async move { SCRIPTS.pause.key(key).arg(ms).invoke_async(&mut c).await }).await;
    }

    /// A sealed value of `tag` for `scope` (the management token, the bulk client list).
    pub async fn get_blob(&self, tag: &str, scope: &str) -> Option<Vec<u8>> {
        let key = self.name(tag, &[scope]);
        let sealed: Option<Vec<u8>> = self
            .call(|mut c| {
                let k = key.clone();
                async move { redis::cmd("GET").arg(k).query_async(&mut c).await }
            })
            .await?;
        self.open(&key, &sealed?)
    }

    /// Stores a sealed value of `tag` for `scope` for `life`.
    pub async fn put_blob(&self, tag: &str, scope: &str, plain: &[u8], life: Duration) {
        let key = self.name(tag, &[scope]);
        if let Some(sealed) = self.seal(&key, plain) {
            self.set(&key, sealed, life).await;
        }
    }

    /// Deletes the value of `tag` for `scope`.
    pub async fn delete_blob(&self, tag: &str, scope: &str) {
        self.delete(&[self.name(tag, &[scope])]).await;
    }

    /// A lease on the value of `tag` for `scope`, lasting `life` unless released.
    pub async fn lease_blob(&self, tag: &str, scope: &str, life: Duration) -> Lease {
        self.take_lease(format!("{}:lease", self.name(tag, &[scope])), life).await
    }

    // -- coherence ------------------------------------------------------------------

    fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// Tells every other replica to drop `inv` from its in-process cache.
    pub async fn publish(&self, inv: &Invalidation) {
        let channel = self.channel();
        let Some(msg) = self.seal(&channel, &encode_invalidation(self.replica, inv)) else { return };
        let _: Option<i64> = self
            .call(|mut c| async move { redis::cmd("PUBLISH").arg(channel).arg(msg).query_async(&mut c).await })
            .await;
    }

    /// Connects, subscribes and applies other replicas' messages to `sink`; on any
    /// loss, reconnects with backoff. Returns once `sink` is no longer alive.
    pub async fn maintain(self: Arc<Self>, sink: Arc<dyn Coherence>) {
        let mut pause = RECONNECT_BASE;
        while sink.alive() {
            let r = self.session(sink.as_ref()).await;
            self.settled.send_replace(true);
            match r {
                Ok(()) => pause = RECONNECT_BASE,
                Err(why) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    self.warn_once(&why);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECONNECT_CAP);
                }
            }
        }
        self.conn.store(None);
        self.stats.up.store(false, Relaxed);
    }

    /// One connection's life: `Ok` when it was up and then lost (or the sink died),
    /// `Err` when it could not be set up.
    async fn session(&self, sink: &dyn Coherence) -> Result<(), String> {
        // Connecting happens here, off the request path, so it may take longer
        // than one call.
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(connect_timeout));
        let conn =
            tokio::time::timeout(connect_timeout, self.client.get_multiplexed_async_connection_with_config(&cfg))
                .await
                .map_err(|_| "connecting timed out".to_string())?
                .map_err(|e| describe(&e))?;
        let mut pubsub = tokio::time::timeout(connect_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| describe(&e))?;
        tokio::time::timeout(connect_timeout, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| "subscribing timed out".to_string())?
            .map_err(|e| describe(&e))?;
        let mut messages = pubsub.into_on_message();
        if self.connected_once.swap(true, Relaxed) {
            // Evictions published while we were away were missed.
            sink.forget_all();
            tracing::info!(
                "shared cache reconnected; in-process entries dropped, since evictions may have been missed"
            );
        } else {
            tracing::info!("shared cache connected");
        }
        self.conn.store(Some(Arc::new(conn)));
        self.stats.up.store(true, Relaxed);
        self.warned.store(false, Relaxed);
        self.settled.send_replace(true);
        let channel = self.channel();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(msg) => {
                        if let Some(inv) = self.open(&channel, msg.get_payload_bytes())
                            .and_then(|p| decode_invalidation(&p))
                            .and_then(|(from, inv)| (from != self.replica).then_some(inv))
                        {
                            sink.apply(&inv);
                        }
                    }
                    None => {
                        self.conn.store(None);
                        self.stats.up.store(false, Relaxed);
                        self.stats.errors.fetch_add(1, Relaxed);
                        self.warn_once("the subscription connection closed");
                        return Ok(());
                    }
                },
                () = self.lost.notified() => {
                    if self.conn.load().is_none() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !sink.alive() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A Redis error without anything from the URL (the crate's messages may quote it).
fn describe(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code().is_some_and(|c| c.contains("AUTH")) {
        "Redis refused the credentials".to_string()
    } else {
        format!("{:?}", e.kind())
    }
}

/// `fetched_ms` and `as_of_ms` (8 bytes each, big-endian), then 0 (does not exist),
/// 1 and the JSON text, or 2, the JSON text's length (4 bytes, big-endian), the JSON
/// text and the user_metadata's JSON text. Tag 2 is new with user_metadata: a
/// replica that predates it finds no usable entry and reads the source, never a
/// wrong one.
fn encode_entry(e: &SharedEntry) -> Vec<u8> {
    let len = e.value.as_ref().map_or(0, String::len) + e.user_metadata.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(21 + len);
    out.extend_from_slice(&e.fetched_ms.to_be_bytes());
    out.extend_from_slice(&e.as_of_ms.to_be_bytes());
    // A value of 4 GiB is not one a source answers (1 MiB at most); stored without
    // its user_metadata it is read again by whoever wants it.
    let value_len = e.value.as_ref().and_then(|v| u32::try_from(v.len()).ok());
    match (&e.value, &e.user_metadata, value_len) {
        (Some(v), Some(u), Some(n)) => {
            out.push(2);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(u.as_bytes());
        }
        (Some(v), _, _) => {
            out.push(1);
            out.extend_from_slice(v.as_bytes());
        }
        (None, _, _) => out.push(0),
    }
    out
}

fn decode_entry(b: &[u8]) -> Option<SharedEntry> {
    let fetched_ms = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let as_of_ms = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let (value, user_metadata) = match b.get(16)? {
        0 => (None, None),
        1 => (Some(text(b.get(17..)?)?), None),
        2 => {
            let n = usize::try_from(u32::from_be_bytes(b.get(17..21)?.try_into().ok()?)).ok()?;
            let end = n.checked_add(21)?;
            (Some(text(b.get(21..end)?)?), Some(text(b.get(end..)?)?))
        }
        _ => return None,
    };
    Some(SharedEntry { fetched_ms, as_of_ms, value, user_metadata })
}

fn encode_invalidation(replica: u64, inv: &Invalidation) -> Vec<u8> {
    let v = match inv {
        Invalidation::Entry { kind, issuer, id } => {
            serde_json::json!({"r": replica, "k": kind.as_str(), "i": issuer, "id": id})
        }
        Invalidation::Issuer(issuer) => serde_json::json!({"r": replica, "k": "issuer", "i": issuer}),
    };
    v.to_string().into_bytes()
}

fn decode_invalidation(b: &[u8]) -> Option<(u64, Invalidation)> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    let from = v.get("r")?.as_u64()?;
    let issuer = v.get("i").and_then(|i| i.as_str()).map(str::to_string);
    let inv = match v.get("k")?.as_str()? {
        "issuer" => Invalidation::Issuer(issuer?),
        k => {
            let kind = match k {
                "user" => Kind::User,
                "client" => Kind::Client,
                _ => return None,
            };
            Invalidation::Entry { kind, issuer, id: v.get("id")?.as_str()?.to_string() }
        }
    };
    Some((from, inv))
}

/// The Redis URL without its credentials, for logs.
pub fn redacted_url(url: &Secret) -> String {
    match url::Url::parse(url.expose()) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<invalid>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SharedKey;

    fn shared(keys: &[[u8; 32]]) -> Shared {
        Shared::new(&SharedConfig {
            url: Secret::new("redis://127.0.0.1:1/"),
            keys: keys.iter().map(|k| SharedKey(*k)).collect(),
            key_files: vec![],
            prefix: "p".into(),
            timeout: Duration::from_millis(100),
            ca_file: None,
        })
        .expect("a valid config")
    }

    #[test]
    fn names_hide_what_they_name_and_differ_per_part() {
        let s = shared(&[[7; 32]]);
        let a = s.entry_name(Kind::User, "auth0 https://t/", "https://iss/", "auth0|u1");
        assert!(a.starts_with("p:user:"), "{a}");
        assert!(!a.contains("u1") && !a.contains("iss"), "{a}");
        assert_ne!(a, s.entry_name(Kind::Client, "auth0 https://t/", "https://iss/", "auth0|u1"));
        assert_ne!(a, s.entry_name(Kind::User, "auth0 https://t/", "https://iss/", "auth0|u2"));
        // Length prefixes: moving a boundary changes the name.
        assert_ne!(s.name("x", &["ab", "c"]), s.name("x", &["a", "bc"]));
        assert_eq!(
            a,
            shared(&[[7; 32], [9; 32]]).entry_name(Kind::User, "auth0 https://t/", "https://iss/", "auth0|u1")
        );
    }

    #[test]
    fn seals_open_under_any_key_and_only_at_their_own_name() {
        let old = shared(&[[1; 32]]);
        let rotated = shared(&[[2; 32], [1; 32]]);
        let e = SharedEntry {
            fetched_ms: 1_700_000_000_123,
            as_of_ms: 1_700_000_000_100,
            value: Some(r#"{"roles":["admin"]}"#.into()),
            user_metadata: None,
        };
        let sealed = old.seal("p:user:abc", &encode_entry(&e)).expect("sealed");
        assert!(!String::from_utf8_lossy(&sealed).contains("admin"));
        let opened = rotated.open("p:user:abc", &sealed).expect("the second key opens");
        assert_eq!(decode_entry(&opened), Some(e.clone()));
        assert!(rotated.open("p:user:other", &sealed).is_none(), "moved to another key");
        assert!(shared(&[[3; 32]]).open("p:user:abc", &sealed).is_none(), "an unknown key");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(rotated.open("p:user:abc", &tampered).is_none());
        assert!(rotated.open("p:user:abc", &sealed[..5]).is_none());
        let absent = SharedEntry { fetched_ms: 5, as_of_ms: 4, value: None, user_metadata: None };
        assert_eq!(decode_entry(&encode_entry(&absent)), Some(absent));
        let with_user = SharedEntry {
            fetched_ms: 5,
            as_of_ms: 4,
            value: Some(r#"{"roles":["admin"]}"#.into()),
            user_metadata: Some(r#"{"theme":"dark"}"#.into()),
        };
        let encoded = encode_entry(&with_user);
        assert_eq!(decode_entry(&encoded), Some(with_user));
        // Cut short of its user_metadata, it is no entry.
        for cut in 17..encoded.len() - r#"{"theme":"dark"}"#.len() {
            assert_eq!(decode_entry(&encoded[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn invalidations_round_trip() {
        for inv in [
            Invalidation::Entry { kind: Kind::User, issuer: Some("https://iss/".into()), id: "auth0|u1".into() },
            Invalidation::Entry { kind: Kind::Client, issuer: None, id: "c1".into() },
            Invalidation::Issuer("https://iss/".into()),
        ] {
            assert_eq!(decode_invalidation(&encode_invalidation(42, &inv)), Some((42, inv)));
        }
        assert_eq!(decode_invalidation(b"{\"r\":1,\"k\":\"other\",\"id\":\"x\"}"), None);
    }

    #[test]
    fn generated_keys_parse() {
        let k = generate_key();
        assert!(k.ends_with('\n'));
        assert_eq!(STANDARD.decode(k.trim_end()).map(|b| b.len()), Ok(32));
    }

    #[test]
    fn redacted_urls_lose_their_credentials() {
        let u = redacted_url(&Secret::new("redis://app:hunter2@redis.internal:6379/0"));
        assert_eq!(u, "redis://redis.internal:6379/0");
    }
}
