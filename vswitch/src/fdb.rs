//! The forwarding database: which port a (VLAN, MAC address) was last seen
//! on, with aging and a per-port limit on learned addresses.
//!
//! # Sharing between workers
//!
//! One table is shared by all workers, split into shards of
//! `RwLock<HashMap>`. Almost every frame only refreshes an entry that
//! already points at its ingress port, and that is done under the shard's
//! read lock by storing the time into an atomic in the entry, so the common
//! path never takes a write lock and workers do not serialise on learning.
//! Write locks are taken only to add, move or remove an entry.
//!
//! Each worker also keeps a [`LookupCache`] of recent answers, valid while
//! the table's change counter (bumped on every add, move and removal) stays
//! the same and for at most a second, so the frames of a busy address take
//! no lock at all and write its entry about once a second per worker. The
//! price is aging accuracy: within one refresh interval.
//!
//! Per-worker tables with learning broadcast were the alternative; they
//! multiply memory by the number of workers and leave a window in which
//! workers disagree on where an address is, which shows up as reordering
//! when a flow's frames are flooded by one worker and unicast by another.
//!
//! Times are milliseconds on a caller-supplied clock; the table reads no
//! clock itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use crate::mac::MacAddr;
use crate::vlan::VlanId;
use crate::PortId;

const SHARDS: usize = 16;

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The address was already known on this port; its age was reset.
    Refreshed,
    /// The address was new and is now known on this port.
    New,
    /// The address was known on another port and now points here.
    Moved {
        /// The port it was known on.
        from: PortId,
    },
    /// The port already has its limit of learned addresses: the address was
    /// not learned (frames from it are still forwarded). If the address was
    /// known on another port, that entry was removed, as it is known wrong.
    LimitReached,
}

#[derive(Debug)]
struct Entry {
    port: PortId,
    last_seen_ms: AtomicU64,
}

impl Entry {
    /// Records a frame at `now_ms`. Writes only when the time moved, so
    /// workers refreshing the same address mostly share the line read-only.
    fn touch(&self, now_ms: u64) {
        if self.last_seen_ms.load(Ordering::Relaxed) < now_ms {
            self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }
}

/// A keyed hash for table keys (VLAN and MAC packed in a `u64`), seeded per
/// table so that addresses picked to collide in one process do not collide
/// in another.
#[derive(Clone, Copy, Debug)]
struct KeyHasherBuilder {
    seed: u64,
}

#[derive(Debug)]
struct KeyHasher {
    state: u64,
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // The finaliser of MurmurHash3's 64-bit variant.
        let mut x = self.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state = (self.state.rotate_left(23) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Shard = RwLock<HashMap<u64, Entry, KeyHasherBuilder>>;

/// The forwarding database. See the module documentation.
#[derive(Debug)]
pub struct ForwardingTable {
    shards: Box<[Shard]>,
    hasher: KeyHasherBuilder,
    /// Learned addresses per port. Locked only while a shard's write lock is
    /// held (shard first, then this), so the limit is exact.
    learned: Mutex<HashMap<PortId, usize>>,
    aging_ms: u64,
    /// Bumped on every insertion, move and removal, so that a
    /// [`LookupCache`] knows when what it remembers may be wrong.
    epoch: AtomicU64,
}

fn key(vlan: VlanId, mac: MacAddr) -> u64 {
    (u64::from(vlan.get()) << 48) | mac.to_u64()
}

impl ForwardingTable {
    /// A counter that changes whenever an entry is added, moved or removed.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// An empty table whose entries age out `aging_ms` milliseconds after
    /// the last frame from their address.
    pub fn new(aging_ms: u64) -> Self {
        let seed = RandomState::new().hash_one(0x5eed_u64);
        let hasher = KeyHasherBuilder { seed };
        ForwardingTable {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher)))
                .collect(),
            hasher,
            learned: Mutex::new(HashMap::new()),
            aging_ms,
            epoch: AtomicU64::new(0),
        }
    }

    /// Like [`ForwardingTable::learn`], answered from `cache` when the cache
    /// saw the same answer less than its refresh interval ago and the table
    /// has not changed since. An entry's age is then refreshed at most once
    /// per interval per cache, so it may age out up to one interval early.
    pub fn learn_cached(
        &self,
        cache: &mut LookupCache,
        vlan: VlanId,
        mac: MacAddr,
        port: PortId,
        limit: usize,
        now_ms: u64,
    ) -> Learned {
        cache.validate(self.epoch.load(Ordering::Acquire));
        let key = key(vlan, mac);
        if let Some(known) = cache.fresh(key, now_ms) {
            match known {
                Cached::At(at) if at == port => return Learned::Refreshed,
                Cached::Refused(at) if at == port => return Learned::LimitReached,
                _ => {}
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let learned = self.learn(vlan, mac, port, limit, now_ms);
        let value = match learned {
            Learned::LimitReached => Cached::Refused(port),
            _ => Cached::At(port),
        };
        cache.remember(epoch, key, value, now_ms);
        learned
    }

    /// Like [`ForwardingTable::lookup`], answered from `cache` when the
    /// cache looked the address up less than its refresh interval ago and
    /// the table has not changed since. An aged entry may then be reported
    /// for up to one interval (until the sweep removes it).
    pub fn lookup_cached(
        &self,
        cache: &mut LookupCache,
        vlan: VlanId,
        mac: MacAddr,
        now_ms: u64,
    ) -> Option<PortId> {
        cache.validate(self.epoch.load(Ordering::Acquire));
        let key = key(vlan, mac);
        match cache.fresh(key, now_ms) {
            Some(Cached::At(port)) => return Some(port),
            Some(Cached::Absent) => return None,
            _ => {}
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.lookup(vlan, mac, now_ms);
        let value = found.map_or(Cached::Absent, Cached::At);
        cache.remember(epoch, key, value, now_ms);
        found
    }

    fn shard(&self, key: u64) -> &Shard {
        let index = (self.hasher.hash_one(key) >> 60) as usize % SHARDS;
        // `index < SHARDS == self.shards.len()`.
        &self.shards[index]
    }

    fn is_aged(&self, entry: &Entry, now_ms: u64) -> bool {
        now_ms.saturating_sub(entry.last_seen_ms.load(Ordering::Relaxed)) >= self.aging_ms
    }

    /// Where `mac` in `vlan` was last seen, unless that entry has aged out.
    pub fn lookup(&self, vlan: VlanId, mac: MacAddr, now_ms: u64) -> Option<PortId> {
        let key = key(vlan, mac);
        let map = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&key)
            .filter(|entry| !self.is_aged(entry, now_ms))
            .map(|entry| entry.port)
    }

    /// Records that `mac` in `vlan` was seen on `port` at `now_ms`, unless
    /// `port` already has `limit` learned addresses.
    pub fn learn(
        &self,
        vlan: VlanId,
        mac: MacAddr,
        port: PortId,
        limit: usize,
        now_ms: u64,
    ) -> Learned {
        let key = key(vlan, mac);
        let shard = self.shard(key);
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = map.get(&key) {
                if entry.port == port {
                    entry.touch(now_ms);
                    return Learned::Refreshed;
                }
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = match map.get(&key) {
            Some(entry) if entry.port == port => {
                entry.touch(now_ms);
                return Learned::Refreshed;
            }
            Some(entry) => Some(entry.port),
            None => None,
        };
        if let Some(from) = previous {
            map.remove(&key);
            decrement(&mut learned, from);
            self.epoch.fetch_add(1, Ordering::Release);
        }
        let count = learned.entry(port).or_insert(0);
        if *count >= limit {
            if learned.get(&port) == Some(&0) {
                learned.remove(&port);
            }
            return Learned::LimitReached;
        }
        *count += 1;
        self.epoch.fetch_add(1, Ordering::Release);
        map.insert(
            key,
            Entry {
                port,
                last_seen_ms: AtomicU64::new(now_ms),
            },
        );
        match previous {
            Some(from) => Learned::Moved { from },
            None => Learned::New,
        }
    }

    /// Removes every entry that has aged out by `now_ms`; returns how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.remove_where(|entry| self.is_aged(entry, now_ms))
    }

    /// Removes every entry pointing at `port` (the port is gone); returns
    /// how many.
    pub fn forget_port(&self, port: PortId) -> usize {
        self.remove_where(|entry| entry.port == port)
    }

    fn remove_where(&self, doomed: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
            let before = removed;
            map.retain(|_, entry| {
                if doomed(entry) {
                    decrement(&mut learned, entry.port);
                    removed += 1;
                    false
                } else {
                    true
                }
            });
            if removed != before {
                self.epoch.fetch_add(1, Ordering::Release);
            }
        }
        removed
    }

    /// Number of entries, aged ones not yet expired included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry not aged out by `now_ms`, with its age in milliseconds,
    /// sorted by VLAN, then address.
    pub fn entries(&self, now_ms: u64) -> Vec<FdbEntry> {
        let mut entries: Vec<FdbEntry> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let map = shard.read().unwrap_or_else(PoisonError::into_inner);
                map.iter()
                    .filter(|(_, entry)| !self.is_aged(entry, now_ms))
                    .filter_map(|(&key, entry)| {
                        Some(FdbEntry {
                            vlan: VlanId::new((key >> 48) as u16).ok()?,
                            mac: {
                                let [_, _, a, b, c, d, e, f] = key.to_be_bytes();
                                MacAddr([a, b, c, d, e, f])
                            },
                            port: entry.port,
                            age_ms: now_ms
                                .saturating_sub(entry.last_seen_ms.load(Ordering::Relaxed)),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        entries.sort_by_key(|entry| (entry.vlan, entry.mac));
        entries
    }

    /// Removes every entry; returns how many.
    pub fn flush(&self) -> usize {
        self.remove_where(|_| true)
    }

    /// Number of addresses learned on `port` (aged ones not yet expired
    /// included).
    pub fn learned_on(&self, port: PortId) -> usize {
        let learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        learned.get(&port).copied().unwrap_or(0)
    }
}

/// One learned address, as [`ForwardingTable::entries`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The VLAN it was learned in.
    pub vlan: VlanId,
    /// The address.
    pub mac: MacAddr,
    /// The port it was last seen on.
    pub port: PortId,
    /// Milliseconds since the last frame from it.
    pub age_ms: u64,
}

/// What a [`LookupCache`] remembers about one (VLAN, MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    /// The table had it on this port.
    At(PortId),
    /// The table did not have it.
    Absent,
    /// This port was at its limit and could not learn it.
    Refused(PortId),
}

/// One remembered answer of a [`LookupCache`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    /// The table epoch the answer was read at; a slot of another epoch is
    /// empty.
    epoch: u64,
    at_ms: u64,
    value: Cached,
}

/// The epoch of a slot that never held an answer (the table's epoch would
/// need 2^64 changes to reach it).
const NO_EPOCH: u64 = u64::MAX;

/// One worker's memory of recent table answers, so that the frames of a
/// busy address do not all take the shared table's locks and write its
/// entry. Every answer is dropped as soon as the table changes (any entry
/// added, moved or removed) and is trusted for at most the refresh
/// interval otherwise.
///
/// It is direct-mapped: each key has one slot, chosen by a seeded hash,
/// so a lookup is one multiply and one compare, and an address whose slot
/// another took is simply asked of the table again. Slots carry the table
/// epoch they were filled at, so a change of the table empties them all
/// without touching them.
#[derive(Debug)]
pub struct LookupCache {
    epoch: u64,
    refresh_ms: u64,
    seed: u64,
    slots: Box<[Slot]>,
    /// The last time converted to the table's milliseconds: a burst's
    /// frames share one `now`, so the conversion is done once per burst.
    clock: Option<(std::time::Instant, u64)>,
    /// The last forwarding decision, replayed for the frames after it with
    /// the same addresses, ports and tag (see `forward::DecisionMemo`).
    pub(crate) memo: crate::forward::DecisionMemo,
}

impl LookupCache {
    /// Most entries kept (one per slot).
    pub const CAPACITY: usize = 512;

    /// An empty cache trusting answers for `refresh_ms` milliseconds.
    pub fn new(refresh_ms: u64) -> Self {
        let seed = RandomState::new().hash_one(0xcac4e_u64);
        let empty = Slot {
            key: 0,
            epoch: NO_EPOCH,
            at_ms: 0,
            value: Cached::Absent,
        };
        LookupCache {
            epoch: NO_EPOCH,
            refresh_ms,
            seed,
            slots: vec![empty; Self::CAPACITY].into_boxed_slice(),
            clock: None,
            memo: crate::forward::DecisionMemo::default(),
        }
    }

    /// The epoch this cache's answers belong to (the table's, as of the
    /// last lookup through it).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the cached answer for (`vlan`, `mac`) was read from the table,
    /// if it is still fresh at `now_ms`.
    pub(crate) fn answered_at(&self, vlan: VlanId, mac: MacAddr, now_ms: u64) -> Option<u64> {
        let key = key(vlan, mac);
        self.fresh(key, now_ms)?;
        self.slots.get(self.slot_index(key)).map(|slot| slot.at_ms)
    }

    /// How long an answer is trusted.
    pub(crate) fn refresh_ms(&self) -> u64 {
        self.refresh_ms
    }

    /// `now` in milliseconds as `convert` gives it, remembering the last
    /// conversion.
    pub(crate) fn millis(
        &mut self,
        now: std::time::Instant,
        convert: impl FnOnce(std::time::Instant) -> u64,
    ) -> u64 {
        match self.clock {
            Some((at, ms)) if at == now => ms,
            _ => {
                let ms = convert(now);
                self.clock = Some((now, ms));
                ms
            }
        }
    }

    fn slot_index(&self, key: u64) -> usize {
        let mixed = (key ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The top bits of the product depend on every bit of the key.
        (mixed >> 55) as usize % Self::CAPACITY
    }

    fn validate(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn fresh(&self, key: u64, now_ms: u64) -> Option<Cached> {
        let slot = self.slots.get(self.slot_index(key))?;
        (slot.epoch == self.epoch
            && slot.epoch != NO_EPOCH
            && slot.key == key
            && now_ms.saturating_sub(slot.at_ms) < self.refresh_ms
            && slot.at_ms <= now_ms)
            .then_some(slot.value)
    }

    /// Remembers an answer read from the table at `epoch` (read before the
    /// table was consulted, so a change in between invalidates it).
    fn remember(&mut self, epoch: u64, key: u64, value: Cached, now_ms: u64) {
        if epoch != self.epoch || epoch == NO_EPOCH {
            return;
        }
        let index = self.slot_index(key);
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Slot {
                key,
                epoch,
                at_ms: now_ms,
                value,
            };
        }
    }
}

fn decrement(learned: &mut HashMap<PortId, usize>, port: PortId) {
    if let Some(count) = learned.get_mut(&port) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            learned.remove(&port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }
    const V1: VlanId = VlanId::DEFAULT;

    #[test]
    fn entries_list_live_addresses_with_their_age_and_flush_empties() {
        let table = ForwardingTable::new(10_000);
        let v7 = VlanId::new(7).unwrap();
        table.learn(v7, mac(9), PortId(3), 10, 1_000);
        table.learn(V1, mac(2), PortId(1), 10, 4_000);
        table.learn(V1, mac(1), PortId(2), 10, 0);
        let entries = table.entries(5_000);
        let listed: Vec<_> = entries
            .iter()
            .map(|e| (e.vlan, e.mac, e.port, e.age_ms))
            .collect();
        assert_eq!(
            listed,
            [
                (V1, mac(1), PortId(2), 5_000),
                (V1, mac(2), PortId(1), 1_000),
                (v7, mac(9), PortId(3), 4_000),
            ]
        );
        assert_eq!(
            table.entries(10_500).len(),
            2,
            "an aged entry is not listed"
        );
        assert_eq!(table.flush(), 3);
        assert!(table.is_empty());
        assert_eq!(table.learned_on(PortId(1)), 0);
    }

    #[test]
    fn learn_refresh_move_and_age() {
        let table = ForwardingTable::new(300_000);
        let (p1, p2) = (PortId(1), PortId(2));
        assert_eq!(table.learn(V1, mac(1), p1, 10, 0), Learned::New);
        assert_eq!(table.learn(V1, mac(1), p1, 10, 1000), Learned::Refreshed);
        assert_eq!(table.lookup(V1, mac(1), 300_999), Some(p1));
        assert_eq!(table.lookup(V1, mac(1), 301_000), None);
        assert_eq!(
            table.learn(V1, mac(1), p2, 10, 2000),
            Learned::Moved { from: p1 }
        );
        assert_eq!((table.learned_on(p1), table.learned_on(p2)), (0, 1));
        let other = VlanId::new(2).unwrap();
        assert_eq!(table.lookup(other, mac(1), 2000), None);
        assert_eq!(table.expire(302_000), 1);
        assert!(table.is_empty());
        assert_eq!(table.learned_on(p2), 0);
    }

    #[test]
    fn limit_is_per_port_and_exact() {
        let table = ForwardingTable::new(300_000);
        let (p1, p2) = (PortId(1), PortId(2));
        for i in 0..3 {
            assert_eq!(table.learn(V1, mac(i), p1, 3, 0), Learned::New);
        }
        assert_eq!(table.learn(V1, mac(9), p1, 3, 0), Learned::LimitReached);
        assert_eq!(table.lookup(V1, mac(9), 0), None);
        assert_eq!(table.learn(V1, mac(9), p2, 3, 0), Learned::New);
        // Moving a known address onto a full port removes the wrong entry.
        assert_eq!(table.learn(V1, mac(9), p1, 3, 0), Learned::LimitReached);
        assert_eq!(table.lookup(V1, mac(9), 0), None);
        assert_eq!(table.learned_on(p2), 0);
        assert_eq!(table.forget_port(p1), 3);
        assert_eq!(table.learned_on(p1), 0);
        assert_eq!(table.learn(V1, mac(9), p1, 3, 0), Learned::New);
    }

    #[test]
    fn caches_follow_changes_made_through_other_caches() {
        let table = ForwardingTable::new(300_000);
        let (p1, p2) = (PortId(1), PortId(2));
        let (mut one, mut two) = (LookupCache::new(1000), LookupCache::new(1000));
        assert_eq!(table.lookup_cached(&mut one, V1, mac(1), 0), None);
        assert_eq!(
            table.learn_cached(&mut two, V1, mac(1), p1, 10, 0),
            Learned::New
        );
        // The negative answer in `one` is gone with the insertion.
        assert_eq!(table.lookup_cached(&mut one, V1, mac(1), 1), Some(p1));
        assert_eq!(
            table.learn_cached(&mut two, V1, mac(1), p1, 10, 2),
            Learned::Refreshed
        );
        // A station move through `two` is seen by `one`.
        assert_eq!(
            table.learn_cached(&mut two, V1, mac(1), p2, 10, 3),
            Learned::Moved { from: p1 }
        );
        assert_eq!(table.lookup_cached(&mut one, V1, mac(1), 4), Some(p2));
        // Removal too.
        table.forget_port(p2);
        assert_eq!(table.lookup_cached(&mut one, V1, mac(1), 5), None);
        // Refusals are remembered, and forgotten when room is made.
        assert_eq!(
            table.learn_cached(&mut one, V1, mac(2), p1, 1, 6),
            Learned::New
        );
        assert_eq!(
            table.learn_cached(&mut one, V1, mac(3), p1, 1, 7),
            Learned::LimitReached
        );
        assert_eq!(
            table.learn_cached(&mut one, V1, mac(3), p1, 1, 8),
            Learned::LimitReached
        );
        table.forget_port(p1);
        assert_eq!(
            table.learn_cached(&mut one, V1, mac(3), p1, 1, 9),
            Learned::New
        );
    }

    #[test]
    fn cached_refreshes_reach_the_table_once_per_interval() {
        let table = ForwardingTable::new(10_000);
        let mut cache = LookupCache::new(1000);
        let p1 = PortId(1);
        table.learn_cached(&mut cache, V1, mac(1), p1, 10, 0);
        // Frames every 500 ms keep the entry alive far past the aging time.
        for t in (500..30_000).step_by(500) {
            assert_eq!(
                table.learn_cached(&mut cache, V1, mac(1), p1, 10, t),
                Learned::Refreshed
            );
        }
        assert_eq!(table.lookup(V1, mac(1), 30_000), Some(p1));
        assert_eq!(table.lookup(V1, mac(1), 39_500), None);
    }
}
