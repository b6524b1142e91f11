//! A bounded cache of tokens that passed verification, so a caller who sends the
//! same ID token on every request pays base64, JSON and signature checks once.
//!
//! - Keyed by SHA-256 of the exact token bytes, its first 128 bits held: a different
//!   token (one changed bit, another signature) is another key and goes through the
//!   full check. 128 bits keep a second token from landing on a cached token's entry
//!   (a second preimage, 2^128 work); a pair of colliding tokens made together
//!   (2^64 work) would only share the entry of a token its maker already holds.
//! - Only successes are stored. A failure is never remembered, so nothing a bad
//!   token does can make it, or another token, pass.
//! - Time is checked at every use: `exp` (and `nbf`) against the clock now, with the
//!   issuer's leeway. An expired entry is dropped when met, and swept from its shard
//!   whenever that shard fills up; an expired token is never inserted.
//! - An entry remembers the key set that verified it; once the issuer's JWKS is
//!   replaced (rotation, refresh), the entry is not used and the token is verified
//!   again against the new keys, so a key withdrawn at the IdP stops working.
//! - At most [`DEFAULT_CAPACITY`] entries. The map is split in shards, each behind its
//!   own mutex (held only for one lookup or insert, never across an await); a full
//!   shard first drops its expired entries, then an arbitrary half of the rest (the
//!   keys are SHA-256 outputs, so which half is effectively random). Evicted tokens
//!   are simply verified again.
//!
//! No moka here: keys are already uniform hashes, entries expire by their own `exp`,
//! and a hit must stay cheap (one short lock, no read log, no timer wheel).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use super::IdentityCore;
use super::jwks::KeySet;

/// Tokens held at most. Each entry is the verified identity (ids, times and the
/// kept claims as text) plus a 16-byte key: about 200 bytes.
pub const DEFAULT_CAPACITY: u64 = 100_000;

const SHARDS: usize = 16;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// What the map holds of a [`TokenHash`]: its first 128 bits (see the module's doc).
type Key = [u8; 16];

fn key(hash: &TokenHash) -> Key {
    let mut k = [0; 16];
    k.copy_from_slice(&hash[..16]);
    k
}

/// One verified token.
#[derive(Clone)]
pub(crate) struct Cached {
    identity: IdentityCore,
    /// The key set that verified the signature; `None` for HMAC (the secret is
    /// fixed for the life of the verifier).
    keys: Option<Arc<KeySet>>,
}

impl Cached {
    /// Past `exp` and the issuer's leeway (`leeways`, by issuer index). An issuer
    /// not there (never: one cache per verifier) counts as expired.
    fn expired(&self, now: u64, leeways: &[u64]) -> bool {
        leeways
            .get(self.identity.issuer_index())
            .is_none_or(|leeway| now >= self.identity.exp().saturating_add(*leeway))
    }
}

/// The key is SHA-256 output: its first 8 bytes are already a uniform hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            Some(head) => self.0 ^= u64::from_le_bytes(*head),
            None => bytes.iter().for_each(|b| self.0 = self.0.rotate_left(8) ^ u64::from(*b)),
        }
    }
    /// The slice length prefix carries nothing: every key is 16 bytes.
    fn write_usize(&mut self, _: usize) {}
    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<Key, Cached, BuildHasherDefault<DigestHasher>>;

/// The cache of verified tokens of one [`super::Verifier`].
pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// Each issuer's leeway in seconds, by issuer index: the same for all its
    /// tokens, so not held per token.
    leeways: Box<[u64]>,
}

impl TokenCache {
    /// At most `capacity` tokens, of issuers with these leeways (seconds, by index).
    pub fn new(capacity: u64, leeways: Vec<u64>) -> TokenCache {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = SHARDS.min(capacity);
        TokenCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity / shards,
            leeways: leeways.into(),
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        // Byte 8 on: independent of the bytes the map hashes with.
        let i = usize::from(key[8]) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity of a token verified before, if it is still valid at `now` and
    /// was verified with `current` (the issuer's key set now in use).
    pub(crate) fn get(
        &self,
        hash: &TokenHash,
        now: u64,
        current: impl FnOnce(usize) -> Option<Arc<KeySet>>,
    ) -> Option<IdentityCore> {
        let key = key(hash);
        // Cloned out (two reference counts) so the shard's lock is held for the lookup only.
        let c = self.shard(&key).get(&key).cloned()?;
        if c.expired(now, &self.leeways) {
            self.shard(&key).remove(&key);
            return None;
        }
        let id = &c.identity;
        // Not expired, so the issuer's leeway is there.
        let leeway = self.leeways.get(id.issuer_index()).copied().unwrap_or(0);
        if id.nbf().is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return None;
        }
        if let Some(keys) = &c.keys {
            match current(id.issuer_index()) {
                Some(now_in_use) if Arc::ptr_eq(keys, &now_in_use) => {}
                _ => {
                    self.shard(&key).remove(&key);
                    return None;
                }
            }
        }
        Some(c.identity)
    }

    /// Remembers a token that has just passed every check.
    pub(crate) fn insert(&self, hash: &TokenHash, identity: IdentityCore, keys: Option<Arc<KeySet>>) {
        let entry = Cached { identity, keys };
        let now = crate::clock::unix_now();
        if entry.expired(now, &self.leeways) {
            return;
        }
        let key = key(hash);
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, c| !c.expired(now, &self.leeways));
            if shard.len() >= self.per_shard {
                // Drop about half: the keys are uniform, so one bit splits them evenly.
                let bit = key[9] & 1;
                shard.retain(|k, _| k[9] & 1 != bit);
            }
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(key, entry);
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(exp: u64, extra: serde_json::Value) -> IdentityCore {
        let nbf = extra.get("nbf").and_then(serde_json::Value::as_u64);
        IdentityCore::new(0, "u1", super::super::Client::Other("c1"), "", exp, nbf).unwrap()
    }

    fn key_set() -> Arc<KeySet> {
        let (k, _) = crate::keys::SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
        let doc = json!({"keys": [k.public_jwk()]}).to_string();
        Arc::new(KeySet::parse(doc.as_bytes()).unwrap())
    }

    #[test]
    fn a_hit_is_rechecked_against_exp_at_use() {
        // Insert refuses tokens already expired by the real clock: times are relative to now.
        let t = crate::clock::unix_now();
        let c = TokenCache::new(10, vec![30]);
        let keys = key_set();
        c.insert(&[1; 32], identity(t + 1_000, json!({})), Some(keys.clone()));
        assert_eq!(c.get(&[1; 32], t + 900, |_| Some(keys.clone())).unwrap().subject(), "u1");
        // Within the leeway still, past it not.
        assert!(c.get(&[1; 32], t + 1_029, |_| Some(keys.clone())).is_some());
        assert!(c.get(&[1; 32], t + 1_030, |_| Some(keys.clone())).is_none());
        // Another token is another key.
        assert!(c.get(&[2; 32], t + 900, |_| Some(keys.clone())).is_none());
    }

    #[test]
    fn an_expired_token_is_not_kept() {
        let t = crate::clock::unix_now();
        let c = TokenCache::new(10, vec![30]);
        c.insert(&[1; 32], identity(t - 60, json!({})), None);
        assert!(c.get(&[1; 32], t - 100, |_| None).is_none());
    }

    #[test]
    fn nbf_is_rechecked_at_use() {
        let t = crate::clock::unix_now();
        let c = TokenCache::new(10, vec![30]);
        c.insert(&[1; 32], identity(t + 10_000, json!({"nbf": t + 5_000})), None);
        assert!(c.get(&[1; 32], t + 4_000, |_| None).is_none());
        assert!(c.get(&[1; 32], t + 5_000, |_| None).is_some());
    }

    #[test]
    fn a_new_key_set_means_verifying_again() {
        let c = TokenCache::new(10, vec![30]);
        let (old, new) = (key_set(), key_set());
        c.insert(&[1; 32], identity(u64::MAX / 2, json!({})), Some(old.clone()));
        assert!(c.get(&[1; 32], 100, |_| Some(old.clone())).is_some());
        assert!(c.get(&[1; 32], 100, |_| Some(new.clone())).is_none());
        // The entry is gone, even if the old set came back.
        assert!(c.get(&[1; 32], 100, |_| Some(old.clone())).is_none());
        // No key set held at all: no hit either.
        c.insert(&[1; 32], identity(u64::MAX / 2, json!({})), Some(old.clone()));
        assert!(c.get(&[1; 32], 100, |_| None).is_none());
    }

    #[test]
    fn an_entry_stays_small() {
        // One per caller, in a table with room for more: docs/performance.md, memory.
        assert!(std::mem::size_of::<(Key, Cached)>() <= 64, "{}", std::mem::size_of::<(Key, Cached)>());
    }

    #[test]
    fn it_is_bounded() {
        use sha2::{Digest, Sha256};
        let key = |i: u32| -> TokenHash { Sha256::digest(i.to_le_bytes()).into() };
        let c = TokenCache::new(50, vec![30]);
        for i in 0..500u32 {
            c.insert(&key(i), identity(u64::MAX / 2, json!({})), None);
        }
        assert!(c.len() <= 50, "{} entries", c.len());
        // A full shard makes room: the newest token is held.
        assert!(c.get(&key(499), crate::clock::unix_now(), |_| None).is_some());
    }
}
