//! The forwarding decision, sans-IO: from (ingress port, frame, time) to a
//! list of egress ports or a drop reason. No threads, no clocks, no I/O:
//! the caller supplies the time and the set of ports, so every decision can
//! be reproduced in a test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch_offload::wire::ethertype;
use vswitch_offload::{CheckedFrame, EgressCapabilities, OuterTag};

pub use crate::drop::DropReason;
use crate::fdb::{ForwardingTable, Learned, LookupCache};
use crate::guard::{CompiledGuard, GuardViolation, PortSecurity};
use crate::limit::{PortLimiter, PortLimits};
use crate::mac::MacAddr;
pub use crate::port_id::PortId;
use crate::vlan::{VlanId, VlanMode};

/// Which source addresses a port may send from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceMacPolicy {
    /// Any unicast address (the port may be a bridge or a router).
    #[default]
    Any,
    /// Only these addresses: a guest cannot send as another.
    Only(Vec<MacAddr>),
}

/// How the switch treats one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProfile {
    /// VLAN membership and tagging.
    pub vlan: VlanMode,
    /// Most addresses learned on this port; frames from further addresses
    /// are forwarded but their addresses are not learned (so replies to
    /// them are flooded within the VLAN).
    pub max_learned: usize,
    /// Source-address enforcement.
    pub source_macs: SourceMacPolicy,
    /// An isolated port (a protected port, in the Linux bridge's and OVS's
    /// words) exchanges frames only with ports that are not isolated (an
    /// uplink, a router): never with another isolated port, flooded and
    /// broadcast frames included.
    pub isolated: bool,
    /// The port-security guards and the addresses the port owns.
    pub security: PortSecurity,
    /// Rate limits per direction.
    pub limits: PortLimits,
}

impl PortProfile {
    /// The default limit on learned addresses per port.
    pub const DEFAULT_MAX_LEARNED: usize = 1024;

    /// An access port of `vlan`, any source address, the default limit.
    pub fn access(vlan: VlanId) -> Self {
        PortProfile {
            vlan: VlanMode::Access(vlan),
            max_learned: Self::DEFAULT_MAX_LEARNED,
            source_macs: SourceMacPolicy::Any,
            isolated: false,
            security: PortSecurity::new(),
            limits: PortLimits::new(),
        }
    }

    /// A trunk port carrying `allowed`, with an optional native VLAN.
    pub fn trunk(allowed: crate::vlan::VlanSet, native: Option<VlanId>) -> Self {
        PortProfile {
            vlan: VlanMode::Trunk { allowed, native },
            max_learned: Self::DEFAULT_MAX_LEARNED,
            source_macs: SourceMacPolicy::Any,
            isolated: false,
            security: PortSecurity::new(),
            limits: PortLimits::new(),
        }
    }

    /// Sets the limit on learned addresses.
    pub fn max_learned(mut self, limit: usize) -> Self {
        self.max_learned = limit;
        self
    }

    /// Makes the port isolated (or not): see [`PortProfile::isolated`].
    pub fn isolated(mut self, isolated: bool) -> Self {
        self.isolated = isolated;
        self
    }

    /// Sets the port-security guards and addresses.
    pub fn security(mut self, security: PortSecurity) -> Self {
        self.security = security;
        self
    }

    /// Sets the rate limits.
    pub fn limits(mut self, limits: PortLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether a frame may go from a port of this profile to one of
    /// `egress`: not from one isolated port to another.
    pub fn may_reach(&self, egress: &PortProfile) -> bool {
        !(self.isolated && egress.isolated)
    }

    /// Allows only these source addresses.
    pub fn only_sources(mut self, macs: impl IntoIterator<Item = MacAddr>) -> Self {
        self.source_macs = SourceMacPolicy::Only(macs.into_iter().collect());
        self
    }
}

impl Default for PortProfile {
    fn default() -> Self {
        Self::access(VlanId::DEFAULT)
    }
}

/// The ports a decision is taken over: an immutable set, sorted by id,
/// each with its profile (VLANs, learning) and what it takes at egress.
#[derive(Debug, Clone, Default)]
pub struct PortSet {
    /// The ports, sorted by id.
    ports: Vec<PortEntry>,
    /// Where in `ports` the port with each id below [`DENSE_IDS`] is
    /// ([`NO_SLOT`] for none), up to the highest such id: a port is found
    /// with one indexed read on every frame, not a search. Ids from
    /// [`DENSE_IDS`] on (an embedder's own numbering) are searched for.
    slots: Vec<u32>,
    /// The transmit queues of the ports that have more than one, sorted by
    /// id: frames toward such a port are spread over its queues by flow.
    tx_queues: Vec<(PortId, usize)>,
    /// Whether a port of the set has a transmit-side rate limit.
    tx_limited: bool,
    /// Changes with every change of the set, unique among all sets: a
    /// decision remembered for one version is not replayed for another.
    version: u64,
}

/// One port of a [`PortSet`].
#[derive(Debug, Clone)]
struct PortEntry {
    id: PortId,
    profile: PortProfile,
    egress: EgressCapabilities,
    /// `profile.security` as every frame from the port is checked.
    guard: CompiledGuard,
    /// The running rate limits of the port, if it has any: shared by every
    /// copy of the set, and kept across a profile change that leaves the
    /// limits as they were.
    limiter: Option<Arc<PortLimiter>>,
}

/// Port ids below this are found by [`PortSet::slots`]; the switch hands
/// out ids from 1 up, so only an embedder's own large ids are searched.
const DENSE_IDS: u32 = 4096;
/// A [`PortSet::slots`] entry without a port.
const NO_SLOT: u32 = u32::MAX;

/// Where [`PortSet::version`] values come from.
static PORT_SET_VERSIONS: AtomicU64 = AtomicU64::new(1);

impl PortSet {
    /// An empty set.
    pub fn new() -> Self {
        PortSet::default()
    }

    /// Adds or replaces a port whose egress takes only finished frames up
    /// to 1500 bytes ([`EgressCapabilities::default`]): enough for
    /// forwarding decisions; [`PortSet::insert_port`] says what the port
    /// takes.
    pub fn insert(&mut self, id: PortId, profile: PortProfile) {
        self.insert_port(id, profile, EgressCapabilities::default());
    }

    /// Adds or replaces a port with the capabilities of its egress.
    pub fn insert_port(&mut self, id: PortId, profile: PortProfile, egress: EgressCapabilities) {
        let limits = profile.limits;
        let at = self.ports.binary_search_by_key(&id, |entry| entry.id);
        let kept = match at {
            Ok(index) => self.ports.get_mut(index).and_then(|old| old.limiter.take()),
            Err(_) => None,
        };
        let limiter = match kept {
            _ if limits.is_none() => None,
            Some(limiter) if *limiter.limits() == limits => Some(limiter),
            _ => Some(Arc::new(PortLimiter::new(limits))),
        };
        let entry = PortEntry {
            id,
            guard: CompiledGuard::new(&profile.security),
            profile,
            egress,
            limiter,
        };
        match at {
            Ok(index) => {
                if let Some(slot) = self.ports.get_mut(index) {
                    *slot = entry;
                }
            }
            Err(index) => self.ports.insert(index, entry),
        }
        self.touch();
    }

    fn touch(&mut self) {
        self.version = PORT_SET_VERSIONS.fetch_add(1, Ordering::Relaxed);
        self.tx_limited = self
            .ports
            .iter()
            .filter_map(|entry| entry.limiter.as_ref())
            .any(|limiter| limiter.limits_to_port());
        self.slots.clear();
        for (index, entry) in self.ports.iter().enumerate() {
            if entry.id.0 >= DENSE_IDS {
                break;
            }
            let at = entry.id.0 as usize;
            if self.slots.len() <= at {
                self.slots.resize(at + 1, NO_SLOT);
            }
            self.slots[at] = index as u32;
        }
    }

    /// Sets how many transmit queues port `id` has (1 unless set). Frames
    /// toward a port with several are spread over them by the flow's hash
    /// ([`crate::dispatch::queue_for_hash`]): one flow always on one queue,
    /// many flows on all of them, as RSS spreads a NIC's receive work.
    pub fn set_tx_queues(&mut self, id: PortId, queues: usize) {
        let at = self.tx_queues.binary_search_by_key(&id, |(id, _)| *id);
        match at {
            Ok(index) if queues <= 1 => {
                self.tx_queues.remove(index);
            }
            Ok(index) => {
                if let Some(slot) = self.tx_queues.get_mut(index) {
                    slot.1 = queues;
                }
            }
            Err(_) if queues <= 1 => {}
            Err(index) => self.tx_queues.insert(index, (id, queues)),
        }
        self.touch();
    }

    /// The transmit queues of port `id`: 1 unless [`PortSet::set_tx_queues`]
    /// said more.
    pub fn tx_queues(&self, id: PortId) -> usize {
        match self.tx_queues.binary_search_by_key(&id, |(id, _)| *id) {
            Ok(index) => self.tx_queues.get(index).map_or(1, |(_, queues)| *queues),
            Err(_) => 1,
        }
    }

    /// Removes a port; returns its profile if it was present.
    pub fn remove(&mut self, id: PortId) -> Option<PortProfile> {
        let index = self.index(id)?;
        self.tx_queues.retain(|(port, _)| *port != id);
        let entry = self.ports.remove(index);
        self.touch();
        Some(entry.profile)
    }

    /// Where port `id` is in `ports`, searched for: what changes the set
    /// uses, and lookups of ids the slot table does not cover.
    fn index(&self, id: PortId) -> Option<usize> {
        self.ports.binary_search_by_key(&id, |entry| entry.id).ok()
    }

    /// The profile of `id`.
    pub fn get(&self, id: PortId) -> Option<&PortProfile> {
        self.entry(id).map(|entry| &entry.profile)
    }

    #[inline]
    fn entry(&self, id: PortId) -> Option<&PortEntry> {
        // NO_SLOT is past the end of `ports`.
        if id.0 < DENSE_IDS {
            return self.ports.get(*self.slots.get(id.0 as usize)? as usize);
        }
        self.ports.get(self.index(id)?)
    }

    /// This set's version: it changes with every change of the set and is
    /// unique among all sets, so an answer computed for one version holds
    /// for as long as the version is the same.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether any port of the set limits what is sent to it
    /// ([`crate::limit::PortLimits::to_port`]).
    pub fn has_tx_limits(&self) -> bool {
        self.tx_limited
    }

    /// The running rate limits of `id`, if it has any.
    pub fn limiter(&self, id: PortId) -> Option<&Arc<PortLimiter>> {
        self.entry(id)?.limiter.as_ref()
    }

    /// What the egress of `id` takes.
    pub fn egress(&self, id: PortId) -> Option<&EgressCapabilities> {
        self.entry(id).map(|entry| &entry.egress)
    }

    /// The ports in id order.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, &PortProfile)> {
        self.ports.iter().map(|entry| (entry.id, &entry.profile))
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are no ports.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Why the forwarder dropped a frame, with the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The ingress port is not in the port set.
    #[error("{port} is not in the switch")]
    UnknownIngressPort {
        /// The ingress port given.
        port: PortId,
    },
    /// The source address is multicast or all zeros.
    #[error("source address {mac} on {port} is not a unicast address")]
    InvalidSourceMac {
        /// The ingress port.
        port: PortId,
        /// The source address found.
        mac: MacAddr,
    },
    /// The source address is not one the port may use.
    #[error("{port} may not send from {mac}")]
    SourceMacNotAllowed {
        /// The ingress port.
        port: PortId,
        /// The source address found.
        mac: MacAddr,
    },
    /// A tagged frame on an access port.
    #[error("{port} is an access port but the frame carries a tag (TPID {tpid:#06x})")]
    TaggedOnAccessPort {
        /// The ingress port.
        port: PortId,
        /// The outer TPID found.
        tpid: u16,
    },
    /// An untagged frame on a trunk without native VLAN.
    #[error("{port} is a trunk without a native VLAN but the frame is untagged")]
    UntaggedOnTrunk {
        /// The ingress port.
        port: PortId,
    },
    /// The outer tag of a trunk frame is not 802.1Q.
    #[error("{port} expects 802.1Q tags (TPID 0x8100) but found TPID {tpid:#06x}")]
    UnsupportedTag {
        /// The ingress port.
        port: PortId,
        /// The outer TPID found.
        tpid: u16,
    },
    /// VLAN id 4095 on a trunk frame.
    #[error("VLAN id 4095 is reserved (frame on {port})")]
    InvalidVlanId {
        /// The ingress port.
        port: PortId,
    },
    /// A trunk frame of a VLAN the port does not carry.
    #[error("{port} does not carry VLAN {vlan}")]
    VlanNotAllowed {
        /// The ingress port.
        port: PortId,
        /// The frame's VLAN.
        vlan: VlanId,
    },
    /// A port-security guard refused the frame.
    #[error("{port}: {violation}")]
    Guard {
        /// The ingress port.
        port: PortId,
        /// What the guard refused.
        violation: GuardViolation,
    },
    /// The destination was learned on an isolated port and the frame
    /// came from another.
    #[error("{dst} in VLAN {vlan} is behind {egress}, isolated like the ingress {port}")]
    PortIsolated {
        /// The ingress port.
        port: PortId,
        /// The isolated port the destination was learned on.
        egress: PortId,
        /// The destination address.
        dst: MacAddr,
        /// The frame's VLAN.
        vlan: VlanId,
    },
    /// The destination is behind the ingress port.
    #[error("{dst} in VLAN {vlan} is behind the ingress {port}")]
    DestinationOnIngressPort {
        /// The ingress port.
        port: PortId,
        /// The destination address.
        dst: MacAddr,
        /// The frame's VLAN.
        vlan: VlanId,
    },
    /// Nothing else carries the VLAN.
    #[error("no port other than {port} carries VLAN {vlan}")]
    NoDestination {
        /// The ingress port.
        port: PortId,
        /// The frame's VLAN.
        vlan: VlanId,
    },
}

impl ForwardError {
    /// The counter this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            ForwardError::UnknownIngressPort { .. } => DropReason::UnknownIngressPort,
            ForwardError::InvalidSourceMac { .. } => DropReason::InvalidSourceMac,
            ForwardError::SourceMacNotAllowed { .. } => DropReason::SourceMacNotAllowed,
            ForwardError::TaggedOnAccessPort { .. } => DropReason::TaggedOnAccessPort,
            ForwardError::UntaggedOnTrunk { .. } => DropReason::UntaggedOnTrunk,
            ForwardError::UnsupportedTag { .. } => DropReason::UnsupportedTag,
            ForwardError::InvalidVlanId { .. } => DropReason::InvalidVlanId,
            ForwardError::VlanNotAllowed { .. } => DropReason::VlanNotAllowed,
            ForwardError::DestinationOnIngressPort { .. } => DropReason::DestinationOnIngressPort,
            ForwardError::PortIsolated { .. } => DropReason::PortIsolated,
            ForwardError::Guard { violation, .. } => violation.reason(),
            ForwardError::NoDestination { .. } => DropReason::NoDestination,
        }
    }
}

/// One port a frame leaves through, and the tag it carries there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// The egress port.
    pub port: PortId,
    /// The VLAN tag on that port's wire, `None` for untagged.
    pub tag: Option<VlanId>,
}

/// A decision to forward, with what the caller needs to rewrite the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The VLAN the frame belongs to.
    pub vlan: VlanId,
    /// The frame's outer VLAN tag as it arrived.
    pub ingress_tag: Option<OuterTag>,
    /// Whether the frame is flooded (broadcast, multicast or unknown
    /// destination) rather than sent to a learned port.
    pub flooded: bool,
    /// What learning the source address did.
    pub learned: Learned,
}

/// The last successful decision of one thread, with what it was taken
/// from, so the frames after it with the same ingress port, addresses and
/// outer tag (a flow's next frames, or any flow between the same two
/// guests) skip the lookups. It is replayed only while the port set is the
/// same version, the forwarding table has not changed, and every answer
/// the decision used is still fresh in the lookup cache: the same decision
/// the lookups would give.
#[derive(Debug, Default)]
pub(crate) struct DecisionMemo {
    entry: Option<MemoEntry>,
    egress: Vec<Egress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoKey {
    ingress: PortId,
    src: [u8; 6],
    dst: [u8; 6],
    tag: Option<OuterTag>,
    ports: u64,
}

#[derive(Debug, Clone, Copy)]
struct MemoEntry {
    key: MemoKey,
    epoch: u64,
    until_ms: u64,
    decision: Decision,
}

impl DecisionMemo {
    fn replay(
        &self,
        key: &MemoKey,
        epoch: u64,
        now_ms: u64,
        out: &mut Vec<Egress>,
    ) -> Option<Decision> {
        let entry = self.entry.as_ref()?;
        if entry.key != *key || entry.epoch != epoch || now_ms >= entry.until_ms {
            return None;
        }
        // One port (a learned destination) is the common case: pushed,
        // not copied through a call to memcpy.
        match self.egress[..] {
            [one] => out.push(one),
            _ => out.extend_from_slice(&self.egress),
        }
        Some(entry.decision)
    }
}

/// Settings of a [`Forwarder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// How long a learned address stays without a frame from it.
    pub aging: Duration,
    /// How often aged entries are removed from the table (they are ignored
    /// by lookups as soon as they age).
    pub sweep_interval: Duration,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            aging: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// The learning forwarder: a forwarding table and the decision logic. Safe
/// to share between threads (`&self` everywhere).
#[derive(Debug)]
pub struct Forwarder {
    table: ForwardingTable,
    epoch: Instant,
    aging_ms: u64,
    sweep_ms: u64,
    next_sweep_ms: AtomicU64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Forwarder {
    /// A forwarder with an empty table. `epoch` is the origin of the clock
    /// the caller will pass to [`Forwarder::decide`]; earlier times count as
    /// the epoch itself.
    pub fn new(config: ForwarderConfig, epoch: Instant) -> Self {
        let sweep_ms = millis(config.sweep_interval).max(1);
        let aging_ms = millis(config.aging);
        Forwarder {
            table: ForwardingTable::new(aging_ms),
            epoch,
            aging_ms,
            sweep_ms,
            next_sweep_ms: AtomicU64::new(sweep_ms),
        }
    }

    /// The forwarding table.
    pub fn table(&self) -> &ForwardingTable {
        &self.table
    }

    fn now_ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    /// Every learned address not aged out at `now`, with its age.
    pub fn entries(&self, now: Instant) -> Vec<crate::fdb::FdbEntry> {
        self.table.entries(self.now_ms(now))
    }

    /// Forgets every address learned on `port` (call when it is removed).
    pub fn forget_port(&self, port: PortId) -> usize {
        self.table.forget_port(port)
    }

    /// Removes aged entries if the sweep interval has passed since the last
    /// sweep; one caller wins the sweep when several race.
    fn maybe_sweep(&self, now_ms: u64) {
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now_ms >= due
            && self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now_ms + self.sweep_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.table.expire(now_ms);
        }
    }

    /// Decides where the frame `frame`, received on `ingress` at `now`,
    /// goes among `ports`. The frame was checked at ingress
    /// ([`CheckedFrame::check`]); its addresses and outer tag are read from
    /// that parse. The egress ports are appended to `out` (cleared
    /// first), in port id order when flooding; the ingress port is never
    /// among them.
    pub fn decide(
        &self,
        ports: &PortSet,
        ingress: PortId,
        frame: &CheckedFrame,
        now: Instant,
        out: &mut Vec<Egress>,
    ) -> Result<Decision, ForwardError> {
        self.decide_inner(None, ports, ingress, frame, now, out)
    }

    /// A cache for [`Forwarder::decide_cached`], one per thread.
    pub fn new_cache(&self) -> LookupCache {
        LookupCache::new((self.aging_ms / 8).clamp(1, 1000))
    }

    /// [`Forwarder::decide`] with table answers remembered in `cache` (see
    /// [`LookupCache`]): the same decisions, except that an address may age
    /// out up to one refresh interval (at most a second) early or late.
    /// This is what the workers use, so that busy addresses do not make
    /// every frame take the shared table's locks.
    pub fn decide_cached(
        &self,
        cache: &mut LookupCache,
        ports: &PortSet,
        ingress: PortId,
        frame: &CheckedFrame,
        now: Instant,
        out: &mut Vec<Egress>,
    ) -> Result<Decision, ForwardError> {
        self.decide_inner(Some(cache), ports, ingress, frame, now, out)
    }

    fn decide_inner(
        &self,
        mut cache: Option<&mut LookupCache>,
        ports: &PortSet,
        ingress: PortId,
        frame: &CheckedFrame,
        now: Instant,
        out: &mut Vec<Egress>,
    ) -> Result<Decision, ForwardError> {
        out.clear();
        let Some(PortEntry { profile, guard, .. }) = ports.entry(ingress) else {
            return Err(ForwardError::UnknownIngressPort { port: ingress });
        };
        let src = MacAddr(frame.src_mac());
        if !src.is_valid_source() {
            return Err(ForwardError::InvalidSourceMac {
                port: ingress,
                mac: src,
            });
        }
        if let SourceMacPolicy::Only(allowed) = &profile.source_macs {
            if !allowed.contains(&src) {
                return Err(ForwardError::SourceMacNotAllowed {
                    port: ingress,
                    mac: src,
                });
            }
        }
        guard
            .check(&profile.security, frame)
            .map_err(|violation| ForwardError::Guard {
                port: ingress,
                violation,
            })?;
        let ingress_tag = frame.outer_tag();
        let vlan = classify(ingress, &profile.vlan, ingress_tag)?;

        let now_ms = match cache.as_deref_mut() {
            Some(cache) => cache.millis(now, |now| self.now_ms(now)),
            None => self.now_ms(now),
        };
        self.maybe_sweep(now_ms);
        let dst = MacAddr(frame.dst_mac());
        let memo_key = MemoKey {
            ingress,
            src: src.0,
            dst: dst.0,
            tag: ingress_tag,
            ports: ports.version,
        };
        if let Some(cache) = cache.as_deref_mut() {
            if let Some(decision) = cache
                .memo
                .replay(&memo_key, self.table.epoch(), now_ms, out)
            {
                return Ok(decision);
            }
        }
        let limit = profile.max_learned;
        let learned = match cache.as_deref_mut() {
            Some(cache) => self
                .table
                .learn_cached(cache, vlan, src, ingress, limit, now_ms),
            None => self.table.learn(vlan, src, ingress, limit, now_ms),
        };

        let known = match cache.as_deref_mut() {
            _ if dst.is_multicast() => None,
            Some(cache) => self.table.lookup_cached(cache, vlan, dst, now_ms),
            None => self.table.lookup(vlan, dst, now_ms),
        };
        let unicast_to = known.and_then(|port| {
            let egress = ports.get(port)?;
            egress.vlan.carries(vlan).then_some((port, egress))
        });
        let flooded = match unicast_to {
            Some((port, _)) if port == ingress => {
                return Err(ForwardError::DestinationOnIngressPort {
                    port: ingress,
                    dst,
                    vlan,
                })
            }
            Some((port, egress)) if !profile.may_reach(egress) => {
                return Err(ForwardError::PortIsolated {
                    port: ingress,
                    egress: port,
                    dst,
                    vlan,
                })
            }
            Some((port, egress)) => {
                out.push(Egress {
                    port,
                    tag: egress.vlan.egress_tag(vlan),
                });
                false
            }
            None => {
                out.extend(
                    ports
                        .iter()
                        .filter(|(id, egress)| {
                            *id != ingress && egress.vlan.carries(vlan) && profile.may_reach(egress)
                        })
                        .map(|(port, egress)| Egress {
                            port,
                            tag: egress.vlan.egress_tag(vlan),
                        }),
                );
                if out.is_empty() {
                    return Err(ForwardError::NoDestination {
                        port: ingress,
                        vlan,
                    });
                }
                true
            }
        };
        let decision = Decision {
            vlan,
            ingress_tag,
            flooded,
            learned,
        };
        if let Some(cache) = cache {
            Self::remember(cache, memo_key, decision, src, dst, now_ms, out);
        }
        Ok(decision)
    }

    /// Remembers a decision for [`DecisionMemo`] until the first of the
    /// answers it used goes stale.
    fn remember(
        cache: &mut LookupCache,
        key: MemoKey,
        decision: Decision,
        src: MacAddr,
        dst: MacAddr,
        now_ms: u64,
        egress: &[Egress],
    ) {
        let vlan = decision.vlan;
        let Some(mut at) = cache.answered_at(vlan, src, now_ms) else {
            cache.memo.entry = None;
            return;
        };
        if !dst.is_multicast() {
            match cache.answered_at(vlan, dst, now_ms) {
                Some(dst_at) => at = at.min(dst_at),
                None => {
                    cache.memo.entry = None;
                    return;
                }
            }
        }
        let learned = match decision.learned {
            // What the cached learning answers for the next frame.
            Learned::New | Learned::Moved { .. } => Learned::Refreshed,
            other => other,
        };
        cache.memo.entry = Some(MemoEntry {
            key,
            epoch: cache.epoch(),
            until_ms: at.saturating_add(cache.refresh_ms()),
            decision: Decision {
                learned,
                ..decision
            },
        });
        cache.memo.egress.clear();
        cache.memo.egress.extend_from_slice(egress);
    }
}

/// The VLAN of a frame arriving on a port in `mode`.
fn classify(port: PortId, mode: &VlanMode, tag: Option<OuterTag>) -> Result<VlanId, ForwardError> {
    match (mode, tag) {
        (VlanMode::Access(vlan), None) => Ok(*vlan),
        (VlanMode::Access(_), Some(tag)) => Err(ForwardError::TaggedOnAccessPort {
            port,
            tpid: tag.tpid,
        }),
        (VlanMode::Trunk { native, .. }, None) => {
            native.ok_or(ForwardError::UntaggedOnTrunk { port })
        }
        (VlanMode::Trunk { .. }, Some(tag)) if tag.tpid != ethertype::VLAN => {
            Err(ForwardError::UnsupportedTag {
                port,
                tpid: tag.tpid,
            })
        }
        (VlanMode::Trunk { native, .. }, Some(tag)) if tag.vid() == 0 => {
            // A priority tag: the frame belongs to the native VLAN.
            native.ok_or(ForwardError::UntaggedOnTrunk { port })
        }
        (VlanMode::Trunk { .. }, Some(tag)) => {
            let vlan = VlanId::new(tag.vid()).map_err(|_| ForwardError::InvalidVlanId { port })?;
            if mode.carries(vlan) {
                Ok(vlan)
            } else {
                Err(ForwardError::VlanNotAllowed { port, vlan })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethernet::build_frame;
    use vswitch_offload::Packet;

    const TPID_8021AD: u16 = ethertype::QINQ;

    /// The frame as ingress checks it.
    fn c(frame: &[u8]) -> CheckedFrame {
        CheckedFrame::check(Packet::plain(frame.to_vec())).unwrap()
    }
    use crate::vlan::VlanSet;

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }
    fn vlan(id: u16) -> VlanId {
        VlanId::new(id).unwrap()
    }
    fn frame(dst: MacAddr, src: MacAddr) -> bytes::Bytes {
        build_frame(dst, src, None, 0x0800, &[0; 46])
    }
    fn tagged(dst: MacAddr, src: MacAddr, vid: u16) -> bytes::Bytes {
        build_frame(dst, src, Some(vid), 0x0800, &[0; 46])
    }

    /// A forwarder and its clock origin, ports 1..=n as access ports of VLAN 1.
    struct Bench {
        fwd: Forwarder,
        t0: Instant,
        ports: PortSet,
        out: Vec<Egress>,
        cache: Option<LookupCache>,
    }

    impl Bench {
        /// The same bench, deciding through a worker's lookup cache if
        /// `cached`: the decisions must be the same.
        fn cached_if(mut self, cached: bool) -> Self {
            if cached {
                self.cache = Some(self.fwd.new_cache());
            }
            self
        }

        fn new(access_ports: u32) -> Self {
            let t0 = Instant::now();
            let mut ports = PortSet::new();
            for id in 1..=access_ports {
                ports.insert(PortId(id), PortProfile::access(VlanId::DEFAULT));
            }
            Bench {
                fwd: Forwarder::new(ForwarderConfig::default(), t0),
                t0,
                ports,
                out: Vec::new(),
                cache: None,
            }
        }

        fn at(&mut self, secs: u64, ingress: u32, frame: &[u8]) -> Result<Vec<u32>, DropReason> {
            let now = self.t0 + Duration::from_secs(secs);
            let port = PortId(ingress);
            let Ok(frame) = CheckedFrame::check(Packet::plain(frame.to_vec())) else {
                return Err(DropReason::Malformed);
            };
            let frame = &frame;
            match &mut self.cache {
                Some(cache) => {
                    self.fwd
                        .decide_cached(cache, &self.ports, port, frame, now, &mut self.out)
                }
                None => self
                    .fwd
                    .decide(&self.ports, port, frame, now, &mut self.out),
            }
            .map(|_| self.out.iter().map(|e| e.port.0).collect())
            .map_err(|err| err.reason())
        }
    }

    /// The worker's remembered decision is replayed only while nothing it
    /// was taken from changed: the port set, the table, or the time an
    /// answer may be trusted.
    #[test]
    fn a_remembered_decision_follows_ports_table_and_time() {
        let mut b = Bench::new(3).cached_if(true);
        b.at(0, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // The destination moves to port 3: the table changed.
        b.at(0, 3, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![3]));
        // Port 3 leaves VLAN 1: the port set changed.
        b.ports.insert(PortId(3), PortProfile::access(vlan(9)));
        assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // The same decision as the exact forwarder at every step.
        let mut exact = Bench::new(3);
        exact.at(0, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        exact.at(0, 3, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        exact.ports.insert(PortId(3), PortProfile::access(vlan(9)));
        assert_eq!(exact.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // After the aging time the destination is unknown again, memo or not.
        assert_eq!(b.at(400, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        let learned_on_1 = b.fwd.table().learned_on(PortId(1));
        assert_eq!(learned_on_1, 1, "the source was learned again after aging");
    }

    #[test]
    fn unknown_destinations_flood_then_learned_ones_are_unicast() {
        for cached in [false, true] {
            let mut b = Bench::new(4).cached_if(cached);
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2, 3, 4]));
            assert_eq!(b.at(0, 2, &frame(mac(1), mac(2))), Ok(vec![1]));
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
            // Broadcast and multicast always flood, never back to the ingress.
            assert_eq!(
                b.at(0, 3, &frame(MacAddr::BROADCAST, mac(3))),
                Ok(vec![1, 2, 4])
            );
            let group = MacAddr([0x01, 0, 0x5e, 0, 0, 7]);
            assert_eq!(b.at(0, 4, &frame(group, mac(4))), Ok(vec![1, 2, 3]));
            // A station that moves is followed.
            assert_eq!(
                b.at(1, 4, &frame(MacAddr::BROADCAST, mac(1))),
                Ok(vec![1, 2, 3])
            );
            assert_eq!(b.at(1, 2, &frame(mac(1), mac(2))), Ok(vec![4]));
        }
    }

    #[test]
    fn decisions_report_flooding_and_learning() {
        let b = Bench::new(2);
        let mut out = Vec::new();
        let d = b
            .fwd
            .decide(
                &b.ports,
                PortId(1),
                &c(&frame(mac(2), mac(1))),
                b.t0,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            (d.vlan, d.flooded, d.learned, d.ingress_tag),
            (vlan(1), true, Learned::New, None)
        );
        let d = b
            .fwd
            .decide(
                &b.ports,
                PortId(2),
                &c(&frame(mac(1), mac(2))),
                b.t0,
                &mut out,
            )
            .unwrap();
        assert!(!d.flooded);
        assert_eq!(
            out,
            vec![Egress {
                port: PortId(1),
                tag: None
            }]
        );
    }

    #[test]
    fn entries_age_out_after_300_seconds_of_silence() {
        let mut b = Bench::new(3);
        b.at(0, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(299, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // 300 s after the last frame from mac(2): unknown again.
        assert_eq!(b.at(300, 1, &frame(mac(2), mac(1))), Ok(vec![2, 3]));
        // A frame from it refreshes the entry.
        b.at(400, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(699, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // The sweep removes aged entries from the table.
        assert_eq!(b.fwd.table().len(), 2);
        b.at(2000, 3, &frame(MacAddr::BROADCAST, mac(3))).unwrap();
        assert_eq!(b.fwd.table().len(), 1);
    }

    #[test]
    fn cached_decisions_age_within_one_second() {
        let mut b = Bench::new(3).cached_if(true);
        b.at(0, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(299, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
        // The cache may answer for up to a second past the aging time, no more.
        assert_eq!(b.at(301, 1, &frame(mac(2), mac(1))), Ok(vec![2, 3]));
        // A frame from mac(2) is learned again and seen at once, although the
        // cache had it as unknown.
        b.at(302, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
        assert_eq!(b.at(302, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
    }

    #[test]
    fn a_frame_to_its_own_port_is_not_sent_back() {
        for cached in [false, true] {
            let mut b = Bench::new(2).cached_if(cached);
            b.at(0, 1, &frame(MacAddr::BROADCAST, mac(1))).unwrap();
            b.at(0, 1, &frame(MacAddr::BROADCAST, mac(5))).unwrap();
            assert_eq!(
                b.at(0, 1, &frame(mac(5), mac(1))),
                Err(DropReason::DestinationOnIngressPort)
            );
        }
    }

    #[test]
    fn vlans_are_isolated() {
        for cached in [false, true] {
            let mut b = Bench::new(0).cached_if(cached);
            b.ports.insert(PortId(1), PortProfile::access(vlan(10)));
            b.ports.insert(PortId(2), PortProfile::access(vlan(10)));
            b.ports.insert(PortId(3), PortProfile::access(vlan(20)));
            b.ports.insert(PortId(4), PortProfile::access(vlan(20)));
            let trunk: VlanSet = [vlan(10)].into_iter().collect();
            b.ports.insert(PortId(5), PortProfile::trunk(trunk, None));

            assert_eq!(
                b.at(0, 1, &frame(MacAddr::BROADCAST, mac(1))),
                Ok(vec![2, 5])
            );
            assert_eq!(b.at(0, 3, &frame(MacAddr::BROADCAST, mac(3))), Ok(vec![4]));
            // mac(1) is known in VLAN 10 only: from VLAN 20 it is unknown.
            assert_eq!(b.at(0, 4, &frame(mac(1), mac(4))), Ok(vec![3]));
            // The same address may live in two VLANs on two ports.
            b.at(0, 3, &frame(MacAddr::BROADCAST, mac(1))).unwrap();
            assert_eq!(b.at(0, 2, &frame(mac(1), mac(2))), Ok(vec![1]));
            assert_eq!(b.at(0, 4, &frame(mac(1), mac(4))), Ok(vec![3]));
            // The trunk's frames carry VLAN 10 tags; it cannot reach VLAN 20.
            assert_eq!(b.at(0, 5, &tagged(mac(1), mac(9), 10)), Ok(vec![1]));
            assert_eq!(
                b.at(0, 5, &tagged(mac(3), mac(9), 20)),
                Err(DropReason::VlanNotAllowed)
            );
            let egress_tags: Vec<_> = {
                b.at(0, 1, &frame(MacAddr::BROADCAST, mac(1))).unwrap();
                b.out.iter().map(|e| (e.port.0, e.tag)).collect()
            };
            assert_eq!(egress_tags, vec![(2, None), (5, Some(vlan(10)))]);
        }
    }

    #[test]
    fn tagged_frames_on_access_ports_are_dropped_double_tags_too() {
        for cached in [false, true] {
            let mut b = Bench::new(2).cached_if(cached);
            assert_eq!(
                b.at(0, 1, &tagged(MacAddr::BROADCAST, mac(1), 1)),
                Err(DropReason::TaggedOnAccessPort)
            );
            // QinQ: an 802.1ad outer tag and an 802.1Q inner one.
            let mut qinq = vec![0xff; 6];
            qinq.extend_from_slice(&mac(1).0);
            qinq.extend_from_slice(&TPID_8021AD.to_be_bytes());
            qinq.extend_from_slice(&[0, 1, 0x81, 0, 0, 1, 0x08, 0]);
            qinq.extend_from_slice(&[0; 46]);
            assert_eq!(b.at(0, 1, &qinq), Err(DropReason::TaggedOnAccessPort));
            // Two 802.1Q tags.
            let double = build_frame(
                MacAddr::BROADCAST,
                mac(1),
                Some(1),
                0x8100,
                &[0, 1, 8, 0, 0, 0],
            );
            assert_eq!(b.at(0, 1, &double), Err(DropReason::TaggedOnAccessPort));
            // A priority tag (VID 0) is a tag too.
            assert_eq!(
                b.at(0, 1, &tagged(MacAddr::BROADCAST, mac(1), 0)),
                Err(DropReason::TaggedOnAccessPort)
            );
            // Nothing was learned from the dropped frames.
            assert_eq!(b.fwd.table().len(), 0);
        }
    }

    #[test]
    fn trunk_ingress_rules() {
        for cached in [false, true] {
            let mut b = Bench::new(1).cached_if(cached);
            let allowed: VlanSet = [vlan(1), vlan(7)].into_iter().collect();
            b.ports
                .insert(PortId(2), PortProfile::trunk(allowed.clone(), None));
            b.ports
                .insert(PortId(3), PortProfile::trunk(allowed, Some(vlan(1))));
            b.ports.insert(PortId(4), PortProfile::access(vlan(7)));
            let bc = MacAddr::BROADCAST;
            assert_eq!(
                b.at(0, 2, &frame(bc, mac(2))),
                Err(DropReason::UntaggedOnTrunk)
            );
            assert_eq!(
                b.at(0, 2, &tagged(bc, mac(2), 0)),
                Err(DropReason::UntaggedOnTrunk)
            );
            assert_eq!(
                b.at(0, 2, &tagged(bc, mac(2), 4095)),
                Err(DropReason::InvalidVlanId)
            );
            let mut stag = tagged(bc, mac(2), 7).to_vec();
            stag[12..14].copy_from_slice(&TPID_8021AD.to_be_bytes());
            assert_eq!(b.at(0, 2, &stag), Err(DropReason::UnsupportedTag));
            assert_eq!(b.at(0, 2, &tagged(bc, mac(2), 7)), Ok(vec![3, 4]));
            // Native VLAN: untagged and priority-tagged frames belong to VLAN 1,
            // and leave untagged on the native trunk but tagged on the other.
            assert_eq!(b.at(0, 3, &frame(bc, mac(3))), Ok(vec![1, 2]));
            assert_eq!(b.at(0, 3, &tagged(bc, mac(3), 0)), Ok(vec![1, 2]));
            let tags: Vec<_> = b.out.iter().map(|e| e.tag).collect();
            assert_eq!(tags, vec![None, Some(vlan(1))]);
        }
    }

    #[test]
    fn one_port_cannot_exhaust_the_table() {
        for cached in [false, true] {
            let mut b = Bench::new(0).cached_if(cached);
            b.ports.insert(
                PortId(1),
                PortProfile::access(VlanId::DEFAULT).max_learned(4),
            );
            b.ports
                .insert(PortId(2), PortProfile::access(VlanId::DEFAULT));
            b.ports
                .insert(PortId(3), PortProfile::access(VlanId::DEFAULT));
            for i in 10..60 {
                // Frames beyond the limit are still forwarded.
                assert_eq!(
                    b.at(0, 1, &frame(MacAddr::BROADCAST, mac(i))),
                    Ok(vec![2, 3])
                );
            }
            assert_eq!(b.fwd.table().learned_on(PortId(1)), 4);
            assert_eq!(b.fwd.table().len(), 4);
            // Learned addresses are unicast to, the others flooded.
            assert_eq!(b.at(0, 2, &frame(mac(12), mac(2))), Ok(vec![1]));
            assert_eq!(b.at(0, 2, &frame(mac(50), mac(2))), Ok(vec![1, 3]));
            // Other ports still learn.
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(10))), Ok(vec![2]));
            let mut out = Vec::new();
            let d = b
                .fwd
                .decide(
                    &b.ports,
                    PortId(1),
                    &c(&frame(mac(2), mac(55))),
                    b.t0,
                    &mut out,
                )
                .unwrap();
            assert_eq!(d.learned, Learned::LimitReached);
            // Once entries age out there is room again.
            assert_eq!(
                b.at(400, 1, &frame(MacAddr::BROADCAST, mac(55))),
                Ok(vec![2, 3])
            );
            assert_eq!(b.at(400, 2, &frame(mac(55), mac(2))), Ok(vec![1]));
        }
    }

    #[test]
    fn source_addresses_are_enforced_when_asked() {
        for cached in [false, true] {
            let mut b = Bench::new(0).cached_if(cached);
            b.ports.insert(
                PortId(1),
                PortProfile::access(VlanId::DEFAULT).only_sources([mac(1)]),
            );
            b.ports
                .insert(PortId(2), PortProfile::access(VlanId::DEFAULT));
            let bc = MacAddr::BROADCAST;
            assert_eq!(b.at(0, 1, &frame(bc, mac(1))), Ok(vec![2]));
            assert_eq!(
                b.at(0, 1, &frame(bc, mac(2))),
                Err(DropReason::SourceMacNotAllowed)
            );
            // The spoofed frame did not move mac(2) to port 1.
            b.at(0, 2, &frame(bc, mac(2))).unwrap();
            b.at(0, 1, &frame(bc, mac(2))).unwrap_err();
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
            // Without enforcement any unicast source goes; group or zero never.
            assert_eq!(b.at(0, 2, &frame(bc, mac(77))), Ok(vec![1]));
            assert_eq!(
                b.at(0, 2, &frame(bc, bc)),
                Err(DropReason::InvalidSourceMac)
            );
            assert_eq!(
                b.at(0, 2, &frame(bc, MacAddr::ZERO)),
                Err(DropReason::InvalidSourceMac)
            );
        }
    }

    #[test]
    fn malformed_and_orphan_frames_are_typed_drops() {
        for cached in [false, true] {
            let mut b = Bench::new(2).cached_if(cached);
            let full = frame(MacAddr::BROADCAST, mac(1));
            for len in 0..14 {
                assert_eq!(b.at(0, 1, &full[..len]), Err(DropReason::Malformed));
            }
            // A tag cut short is refused by the ingress check too.
            let tag = tagged(MacAddr::BROADCAST, mac(1), 5);
            assert_eq!(b.at(0, 1, &tag[..16]), Err(DropReason::Malformed));
            assert_eq!(b.at(0, 9, &full), Err(DropReason::UnknownIngressPort));
            // A lone port has nowhere to send.
            b.ports.insert(PortId(3), PortProfile::access(vlan(3)));
            assert_eq!(b.at(0, 3, &full), Err(DropReason::NoDestination));
            // A bare 14-byte header is enough to switch.
            assert_eq!(b.at(0, 1, &full[..14]), Ok(vec![2]));
        }
    }

    #[test]
    fn forgotten_and_removed_ports_are_not_unicast_to() {
        for cached in [false, true] {
            let mut b = Bench::new(3).cached_if(cached);
            b.at(0, 2, &frame(MacAddr::BROADCAST, mac(2))).unwrap();
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![2]));
            // Removed from the set but still in the table: flooded.
            b.ports.remove(PortId(2));
            assert_eq!(b.at(0, 1, &frame(mac(2), mac(1))), Ok(vec![3]));
            assert_eq!(b.fwd.forget_port(PortId(2)), 1);
            assert_eq!(b.fwd.table().learned_on(PortId(2)), 0);
        }
    }

    #[test]
    fn drop_reasons_have_distinct_indices_and_names() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::ethernet::build_frame;
    use crate::vlan::VlanSet;

    /// Port modes over VLANs 1..=3, so that ports share VLANs often.
    fn profile() -> impl Strategy<Value = PortProfile> {
        let vlan = (1u16..=3).prop_map(|v| VlanId::new(v).unwrap());
        prop_oneof![
            vlan.clone().prop_map(PortProfile::access),
            (
                proptest::collection::vec(vlan.clone(), 0..3),
                proptest::option::of(vlan)
            )
                .prop_map(|(allowed, native)| {
                    PortProfile::trunk(allowed.into_iter().collect::<VlanSet>(), native)
                }),
        ]
        .prop_flat_map(|p| (Just(p), 1usize..4))
        .prop_map(|(p, limit)| p.max_learned(limit))
    }

    /// A frame: ingress port, destination and source host numbers (0 is
    /// broadcast as destination), an optional tag VID, and a clock step.
    fn event() -> impl Strategy<Value = (u32, u8, u8, Option<u16>, u64)> {
        (
            0u32..5,
            0u8..6,
            1u8..6,
            proptest::option::of(0u16..5),
            0u64..3,
        )
    }

    fn host(n: u8) -> MacAddr {
        if n == 0 {
            MacAddr::BROADCAST
        } else {
            MacAddr([2, 0, 0, 0, 0, n])
        }
    }

    proptest! {
        #[test]
        fn decisions_keep_the_switch_invariants(
            profiles in proptest::collection::vec(profile(), 1..5),
            events in proptest::collection::vec(event(), 1..60),
        ) {
            let mut ports = PortSet::new();
            for (i, p) in profiles.iter().enumerate() {
                ports.insert(PortId(i as u32), p.clone());
            }
            let t0 = Instant::now();
            let config = ForwarderConfig {
                aging: Duration::from_secs(5),
                sweep_interval: Duration::from_secs(1),
            };
            let exact = Forwarder::new(config, t0);
            let cached = Forwarder::new(config, t0);
            let mut cache = cached.new_cache();
            let (mut out, mut out_cached) = (Vec::new(), Vec::new());
            let mut secs = 0;
            for (ingress, dst, src, vid, step) in events {
                secs += step * 10;
                let now = t0 + Duration::from_secs(secs);
                let frame = build_frame(host(dst), host(src), vid, 0x0800, &[0; 46]);
                let frame = CheckedFrame::check(vswitch_offload::Packet::plain(frame)).unwrap();
                let ingress = PortId(ingress);
                let decision = exact.decide(&ports, ingress, &frame, now, &mut out);
                let decision_cached =
                    cached.decide_cached(&mut cache, &ports, ingress, &frame, now, &mut out_cached);
                // Whole seconds apart and aging far from a boundary... the
                // cache gives the same answers as the table.
                prop_assert_eq!(&decision, &decision_cached);
                prop_assert_eq!(&out, &out_cached);
                match decision {
                    Ok(d) => {
                        let profile = ports.get(ingress).unwrap();
                        prop_assert!(profile.vlan.carries(d.vlan));
                        prop_assert!(!out.is_empty());
                        let mut seen = HashSet::new();
                        for e in &out {
                            prop_assert!(e.port != ingress);
                            prop_assert!(seen.insert(e.port));
                            let egress = ports.get(e.port).unwrap();
                            prop_assert!(egress.vlan.carries(d.vlan));
                            prop_assert_eq!(e.tag, egress.vlan.egress_tag(d.vlan));
                        }
                        if let VlanMode::Access(_) = profile.vlan {
                            prop_assert!(vid.is_none());
                        }
                    }
                    Err(err) => {
                        if let Some(profile) = ports.get(ingress) {
                            if let (VlanMode::Access(_), Some(_)) = (&profile.vlan, vid) {
                                prop_assert_eq!(err.reason(), DropReason::TaggedOnAccessPort);
                            }
                        }
                    }
                }
                for (id, profile) in ports.iter() {
                    prop_assert!(exact.table().learned_on(id) <= profile.max_learned);
                }
            }
        }

        /// A port set finds each port by id as a map of its ports would,
        /// whatever ids come and go: small ones (found by index), ones
        /// from `DENSE_IDS` on (searched for), and ids it never had.
        #[test]
        fn ports_are_found_by_id_through_inserts_and_removals(
            ops in proptest::collection::vec(
                (
                    any::<bool>(),
                    prop_oneof![0u32..8, DENSE_IDS - 2..DENSE_IDS + 2, Just(u32::MAX)],
                    1u16..5,
                    any::<bool>(),
                ),
                1..40,
            ),
        ) {
            let mut ports = PortSet::new();
            let mut model = std::collections::BTreeMap::new();
            let limits = crate::limit::PortLimits::new().from_port(
                crate::limit::RateLimit::none().frames(crate::limit::Bucket::per_second(1000)),
            );
            for (insert, id, vid, limited) in ops {
                let id = PortId(id);
                if insert {
                    let mut profile = PortProfile::access(VlanId::new(vid).unwrap());
                    if limited {
                        profile = profile.limits(limits);
                    }
                    ports.insert(id, profile.clone());
                    model.insert(id, profile);
                } else {
                    prop_assert_eq!(ports.remove(id), model.remove(&id));
                }
                prop_assert_eq!(ports.len(), model.len());
                for probe in [0, 1, 3, 7, DENSE_IDS - 1, DENSE_IDS, DENSE_IDS + 1, u32::MAX] {
                    let probe = PortId(probe);
                    let expected = model.get(&probe);
                    prop_assert_eq!(ports.get(probe), expected);
                    prop_assert_eq!(ports.egress(probe).is_some(), expected.is_some());
                    prop_assert_eq!(
                        ports.limiter(probe).is_some(),
                        expected.is_some_and(|p| !p.limits.is_none())
                    );
                }
                let listed: Vec<_> = ports.iter().map(|(id, _)| id).collect();
                let modelled: Vec<_> = model.keys().copied().collect();
                prop_assert_eq!(listed, modelled);
            }
        }
    }
}
