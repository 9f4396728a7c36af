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
}

fn key(vlan: VlanId, mac: MacAddr) -> u64 {
    (u64::from(vlan.get()) << 48) | mac.to_u64()
}

impl ForwardingTable {
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
        }
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
                    entry.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
                    return Learned::Refreshed;
                }
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = match map.get(&key) {
            Some(entry) if entry.port == port => {
                entry.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
                return Learned::Refreshed;
            }
            Some(entry) => Some(entry.port),
            None => None,
        };
        if let Some(from) = previous {
            map.remove(&key);
            decrement(&mut learned, from);
        }
        let count = learned.entry(port).or_insert(0);
        if *count >= limit {
            if learned.get(&port) == Some(&0) {
                learned.remove(&port);
            }
            return Learned::LimitReached;
        }
        *count += 1;
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
            map.retain(|_, entry| {
                if doomed(entry) {
                    decrement(&mut learned, entry.port);
                    removed += 1;
                    false
                } else {
                    true
                }
            });
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

    /// Number of addresses learned on `port` (aged ones not yet expired
    /// included).
    pub fn learned_on(&self, port: PortId) -> usize {
        let learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        learned.get(&port).copied().unwrap_or(0)
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
}
