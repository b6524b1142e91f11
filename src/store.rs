//! Where the metadata cache keeps its entries: a sharded map with expiry checked at
//! read, least-recently-used eviction, and one source call for concurrent misses.
//!
//! Not moka, for memory: the cache holds one entry per caller, and moka's per-entry
//! bookkeeping (access and timer queue nodes, entry info, the key in its own `Arc`)
//! measured about 300 bytes per entry on top of what a plain map costs
//! (docs/performance.md, memory). What moka gave us here is small to keep: expiry is
//! one comparison at read, a full shard drops its expired entries and then its least
//! recently used eighth, and concurrent misses for one key share one call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

const SHARDS: usize = 16;

/// What a store holds per key: when it was made (its lifetime is the store's
/// `lifetime` of it).
pub trait Timestamped: Clone {
    fn created(&self) -> Stamp;
}

/// A point in monotonic time in 8 bytes, where an `Instant` takes 16: every entry
/// holds one, and the caches hold one entry per caller (docs/performance.md,
/// memory). Nanoseconds from a base taken once per process, signed, so a time
/// before the base (an entry adopted from the second level, already old) is held
/// as it is: ±292 years either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(i64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::at(Instant::now())
    }

    pub fn at(t: Instant) -> Stamp {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(base) {
            Some(after) => Stamp(nanos(after)),
            None => Stamp(-nanos(base.duration_since(t))),
        }
    }

    /// The time from `self` to `later`; zero when `later` is not later.
    pub fn until(self, later: Stamp) -> Duration {
        Duration::from_nanos(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    pub fn elapsed(self) -> Duration {
        self.until(Stamp::now())
    }
}

/// How long a value stays usable.
pub type Lifetime<V> = Box<dyn Fn(&V) -> Duration + Send + Sync>;

/// An entry. Both counters in 32 bits, side by side: with a value of whole words
/// they take one word, where a 64-bit clock alone took one and a tag another.
struct Slot<V> {
    value: V,
    /// The shard's use counter at the last read: a logical clock, no time read
    /// needed. It wraps; ages are taken modulo 2^32 (see [`make_room`]).
    last_used: u32,
    /// What the caller stored the entry with, for [`Store::remove_if`] (the
    /// metadata cache: its issuer), so that need not be part of the key.
    tag: u32,
}

/// One call in flight for a key, shared by every caller that missed meanwhile.
type Flight<V, E> = Arc<OnceCell<Result<V, Arc<E>>>>;

/// The hasher of shard choice and of each shard's map. foldhash rather than std's
/// SipHash: every request hashes its keys six times (user, client and minted-token
/// lookups, each picking a shard and then a slot), and SipHash cost ~2,700
/// instructions of it (docs/performance.md). What SipHash adds is resistance to
/// keys chosen to collide, and these keys are not chosen by a caller: they are
/// SHA-256 digests, of a verified token or of an issuer and the subject or client
/// of a verified identity. The seed is still random per store.
type Hasher = foldhash::fast::RandomState;

struct Shard<K, V> {
    map: HashMap<K, Slot<V>, Hasher>,
    /// Reads and writes of this shard so far (the clock of `last_used`).
    uses: u32,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard { map: HashMap::with_hasher(Hasher::default()), uses: 0 }
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
    fn tick(&mut self) -> u32 {
        self.uses = self.uses.wrapping_add(1);
        self.uses
    }

    fn put(&mut self, key: K, tag: u32, value: V) {
        let last_used = self.tick();
        self.map.insert(key, Slot { value, last_used, tag });
    }
}

pub struct Store<K, V, E> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    lifetime: Lifetime<V>,
    hasher: Hasher,
    flights: Mutex<HashMap<K, Flight<V, E>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Hash + Eq + Clone, V: Timestamped, E> Store<K, V, E> {
    /// A store of at most `capacity` entries.
    pub fn new(capacity: u64, lifetime: Lifetime<V>) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = SHARDS.min(capacity);
        Store {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity / shards,
            lifetime,
            hasher: Hasher::default(),
            flights: Mutex::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, Shard<K, V>> {
        // foldhash's fast hash is well spread for the digests the caches use as keys,
        // but not in every bit for every seed on small sequential keys: a Fibonacci
        // multiply carries every bit into the top 32, which pick the shard (Lemire's
        // multiply-shift instead of a modulo).
        let mixed = self.hasher.hash_one(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let i = ((mixed * self.shards.len() as u64) >> 32) as usize;
        lock(&self.shards[i])
    }

    /// The value of `key`, unless absent or past its lifetime.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_aged(key).map(|(v, _)| v)
    }

    /// The value and its age, unless absent or past its lifetime. `key` may be any
    /// borrowed form of `K` that hashes as `K` does (so a lookup need not build a `K`).
    pub fn get_aged<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(V, Duration)>
    where
        K: std::borrow::Borrow<Q>,
    {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        let slot = shard.map.get_mut(key)?;
        let age = slot.value.created().elapsed();
        if age >= (self.lifetime)(&slot.value) {
            shard.map.remove(key);
            return None;
        }
        shard.uses = shard.uses.wrapping_add(1);
        slot.last_used = shard.uses;
        Some((slot.value.clone(), age))
    }

    /// What `read` makes of the value of `key`, read in place (nothing cloned that
    /// `read` does not take), without the store's lifetime check: for values that
    /// carry a stricter expiry of their own, which `read` checks. The entry counts as
    /// used only when `read` takes it.
    pub fn read_with<Q: Hash + Eq + ?Sized, R>(&self, key: &Q, read: impl FnOnce(&V) -> Option<R>) -> Option<R>
    where
        K: std::borrow::Borrow<Q>,
    {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        let slot = shard.map.get_mut(key)?;
        let taken = read(&slot.value)?;
        shard.uses = shard.uses.wrapping_add(1);
        slot.last_used = shard.uses;
        Some(taken)
    }

    pub fn insert(&self, key: K, value: V) {
        self.insert_tagged(key, 0, value);
    }

    /// [`Self::insert`], the entry tagged with `tag` (see [`Self::remove_if`]).
    pub fn insert_tagged(&self, key: K, tag: u32, value: V) {
        let mut shard = self.shard(&key);
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            make_room(&mut shard, self.per_shard, &self.lifetime);
        }
        shard.put(key, tag, value);
    }

    /// The value of `key` if `accept` takes it, or the one `init` produces, stored.
    /// Callers that miss the same key while a call is running wait for that call and
    /// share its result, errors included (the same `Arc`, so a failure is counted
    /// once). If the caller running the call goes away, a waiting one runs its own
    /// `init` instead; so does one whose `accept` refuses the value the call it
    /// waited for produced (a caller with another idea of what is current).
    pub async fn try_get_with(
        &self,
        (key, tag): (K, u32),
        accept: impl Fn(&V) -> bool,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>> {
        let mut init = std::pin::pin!(init);
        let mut ran = false;
        let flight = lock(&self.flights).entry(key.clone()).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                ran = true;
                // A call that ended just before we joined may have stored the value.
                if let Some(v) = self.get(&key).filter(|v| accept(v)) {
                    return Ok(v);
                }
                let r = init.as_mut().await.map_err(Arc::new);
                if let Ok(v) = &r {
                    self.insert_tagged(key.clone(), tag, v.clone());
                }
                r
            })
            .await
            .clone();
        {
            let mut flights = lock(&self.flights);
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&key);
            }
        }
        match result {
            Ok(v) if !ran && !accept(&v) => {
                let r = init.as_mut().await.map_err(Arc::new);
                if let Ok(v) = &r {
                    self.insert_tagged(key, tag, v.clone());
                }
                r
            }
            r => r,
        }
    }

    /// Sets or removes `key` in one step under its shard's lock, from what is held
    /// (`None` when absent or past its lifetime): `decide` returns the value to store,
    /// or `None` to remove the key. A check-then-write in two steps could let a
    /// concurrent writer's value be overwritten by one decided on what it replaced.
    /// `tag`: as [`Self::insert_tagged`]'s.
    pub fn update(&self, (key, tag): (K, u32), decide: impl FnOnce(Option<&V>) -> Option<V>) {
        let mut shard = self.shard(&key);
        let held = shard.map.get(&key).map(|s| &s.value).filter(|v| v.created().elapsed() < (self.lifetime)(v));
        match decide(held) {
            Some(value) => {
                if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
                    make_room(&mut shard, self.per_shard, &self.lifetime);
                }
                shard.put(key, tag, value);
            }
            None => {
                shard.map.remove(&key);
            }
        }
    }

    /// Removes the entries `drop` selects, by key and tag; returns how many.
    pub fn remove_if(&self, drop: impl Fn(&K, u32) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.map.len();
            shard.map.retain(|k, s| !drop(k, s.tag));
            removed += before - shard.map.len();
        }
        removed
    }

    /// Entries held (expired ones not yet met included).
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).map.len() as u64).sum()
    }
}

/// A full shard drops its expired entries, then, if still full, its least recently
/// used eighth: one scan per `per_shard / 8` inserts, not one per insert.
///
/// Recency is the age in uses, `uses - last_used` modulo 2^32: exact for every
/// entry read within the shard's last 2^32 uses. One idle longer looks recent
/// and may outstay entries read since, until its lifetime ends; at a million
/// lookups a second over 16 shards that is 19 hours idle, beyond the default
/// lifetime (`ttl` + `max_stale`) of 65 minutes.
fn make_room<K: Hash + Eq, V: Timestamped>(shard: &mut Shard<K, V>, per_shard: usize, lifetime: &Lifetime<V>) {
    let now = Stamp::now();
    shard.map.retain(|_, s| s.value.created().until(now) < lifetime(&s.value));
    if shard.map.len() < per_shard {
        return;
    }
    let uses = shard.uses;
    let mut ages: Vec<u32> = shard.map.values().map(|s| uses.wrapping_sub(s.last_used)).collect();
    let cut = (ages.len() / 8).max(1);
    // The cut-th oldest: it and every older entry go.
    let (_, threshold, _) = ages.select_nth_unstable_by(cut - 1, |a, b| b.cmp(a));
    let threshold = *threshold;
    shard.map.retain(|_, s| uses.wrapping_sub(s.last_used) < threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[derive(Clone, Debug, PartialEq)]
    struct V(u32, Stamp, Duration);
    impl Timestamped for V {
        fn created(&self) -> Stamp {
            self.1
        }
    }
    fn store<E>(capacity: u64) -> Store<u32, V, E> {
        Store::new(capacity, Box::new(|v: &V| v.2))
    }
    fn v(n: u32) -> V {
        V(n, Stamp::now(), Duration::from_secs(60))
    }

    #[test]
    fn a_stamp_keeps_times_before_its_base() {
        let now = Instant::now();
        let (then, later) = (Stamp::at(now), Stamp::at(now + Duration::from_millis(1500)));
        assert_eq!(then.until(later), Duration::from_millis(1500));
        assert_eq!(later.until(then), Duration::ZERO);
        if let Some(earlier) = now.checked_sub(Duration::from_secs(3)) {
            // Before the process's base: negative, still exact.
            assert_eq!(Stamp::at(earlier).until(then), Duration::from_secs(3));
        }
    }

    #[test]
    fn expired_values_are_not_returned() {
        let s: Store<u32, V, ()> = store(10);
        s.insert(1, V(1, Stamp::now(), Duration::ZERO));
        s.insert(2, v(2));
        assert_eq!(s.get(&1), None);
        assert_eq!(s.get(&2).map(|v| v.0), Some(2));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn read_with_takes_what_the_reader_takes() {
        let s: Store<u32, V, ()> = store(10);
        s.insert(1, v(1));
        assert_eq!(s.read_with(&1, |v| Some(v.0 * 10)), Some(10));
        assert_eq!(s.read_with(&1, |_| None::<u32>), None, "declined");
        assert_eq!(s.read_with(&2, |v| Some(v.0)), None, "absent");
        // No lifetime check: the reader's own expiry is what counts.
        s.insert(3, V(3, Stamp::now(), Duration::ZERO));
        assert_eq!(s.read_with(&3, |v| Some(v.0)), Some(3));
        assert_eq!(s.get(&3), None);
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_used() {
        // From a fresh clock, and from one about to wrap.
        for start in [0, u32::MAX - 10] {
            let s: Store<u32, V, ()> = store(16 * 8);
            for shard in s.shards.iter() {
                lock(shard).uses = start;
            }
            s.insert(0, v(0));
            // Key 0 is read between all later inserts (the shards fill unevenly, so
            // evictions start before 128 entries): it stays.
            for i in (1..(16 * 8)).chain(1000..1400) {
                assert!(s.get(&0).is_some(), "the recently used entry was evicted before insert {i} ({start})");
                s.insert(i, v(i));
            }
            assert!(s.len() <= 16 * 8, "{} entries", s.len());
            assert!(s.get(&1399).is_some(), "the newest entry was not kept");
            // The others of the first fill were not used again: all gone.
            assert_eq!((1..16 * 8).filter(|i| s.get(i).is_some()).count(), 0, "{start}");
        }
    }

    #[test]
    fn entries_are_removed_by_key_or_tag() {
        let s: Store<u32, V, ()> = store(100);
        for i in 0..10 {
            s.insert_tagged(i, i % 3, v(i));
        }
        assert_eq!(s.remove_if(|_, tag| tag == 1), 3);
        assert_eq!(s.remove_if(|k, _| *k == 0), 1);
        let left: Vec<u32> = (0..10).filter(|i| s.get(i).is_some()).collect();
        assert_eq!(left, [2, 3, 5, 6, 8, 9]);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_call_and_its_error() {
        let s: Arc<Store<u32, V, String>> = Arc::new(store(10));
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (s, calls, gate) = (s.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                s.try_get_with((7, 0), |_| true, async {
                    calls.fetch_add(1, Relaxed);
                    gate.notified().await;
                    Err::<V, _>("down".to_string())
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.notify_one();
        let errs: Vec<Arc<String>> = futures_like_join(tasks).await.into_iter().map(|r| r.unwrap_err()).collect();
        assert_eq!(calls.load(Relaxed), 1);
        assert!(errs.iter().all(|e| Arc::ptr_eq(e, &errs[0])));
        // Nothing stored after a failure; the next call runs again and stores.
        let ok = s.try_get_with((7, 0), |_| true, async { Ok::<_, String>(v(7)) }).await.unwrap();
        assert_eq!(ok.0, 7);
        assert_eq!(s.get(&7).map(|v| v.0), Some(7));
    }

    #[test]
    fn update_decides_on_the_live_value_only() {
        let s: Store<u32, V, ()> = store(10);
        s.update((1, 0), |held| {
            assert!(held.is_none());
            Some(v(10))
        });
        s.update((1, 0), |held| {
            assert_eq!(held.map(|v| v.0), Some(10));
            Some(v(11))
        });
        assert_eq!(s.get(&1).map(|v| v.0), Some(11));
        s.update((1, 0), |_| None);
        assert_eq!(s.get(&1), None);
        // An expired value counts as not held.
        s.insert(2, V(2, Stamp::now(), Duration::ZERO));
        s.update((2, 0), |held| {
            assert!(held.is_none());
            None
        });
        assert_eq!(s.len(), 0);
    }

    #[tokio::test]
    async fn a_caller_refusing_the_shared_result_makes_its_own_call() {
        let s: Arc<Store<u32, V, String>> = Arc::new(store(10));
        let gate = Arc::new(tokio::sync::Notify::new());
        // A call for key 7 is running, about to produce 1 (as a state a reload
        // replaced, still reading its old source).
        let first = tokio::spawn({
            let (s, gate) = (s.clone(), gate.clone());
            async move {
                s.try_get_with((7, 0), |_| true, async {
                    gate.notified().await;
                    Ok::<_, String>(v(1))
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // This caller wants only 2: it joins the call, refuses its 1, and makes its own.
        let second = tokio::spawn({
            let s = s.clone();
            async move { s.try_get_with((7, 0), |x: &V| x.0 == 2, async { Ok::<_, String>(v(2)) }).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap().0, 1);
        assert_eq!(second.await.unwrap().unwrap().0, 2);
        // A value held but refused is not returned either.
        let third = s.try_get_with((7, 0), |x: &V| x.0 == 3, async { Ok::<_, String>(v(3)) }).await.unwrap();
        assert_eq!(third.0, 3);
        assert_eq!(s.get(&7).map(|v| v.0), Some(3));
    }

    async fn futures_like_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}
