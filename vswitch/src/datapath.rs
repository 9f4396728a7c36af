//! The datapath, sans-IO: the forwarding, egress adaptation and accounting
//! of a burst of frames, as a value that takes frames and the time and
//! returns what to send where. No threads, no clocks, no ports: the caller
//! supplies the set of ports and the time, and sends what it is told to,
//! so every step can be reproduced in a test.
//!
//! [`crate::Switch`] is one driver of it (worker threads, hand-offs between
//! them, bounded retries on full queues); an embedder can drive it from any
//! loop it owns.
//!
//! A frame is parsed once. [`Datapath::check`] parses its link-layer header
//! and validates its virtio-net header into a [`CheckedFrame`] as it enters;
//! the flow hash ([`crate::dispatch::flow_hash`]), the forwarding decision
//! and the egress adaptation all read that parse, and a VLAN tag pushed or
//! popped on the way moves its offsets ([`CheckedFrame::retagged`]) instead
//! of parsing the new bytes. The IP and transport headers of a frame with
//! no offload work are parsed only for the readers that need them
//! ([`CheckedFrame::layout`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use vswitch::datapath::{Datapath, Event, Output};
//! use vswitch::ethernet::build_frame;
//! use vswitch::{Forwarder, ForwarderConfig, MacAddr, PortId, PortProfile, PortSet};
//! use vswitch_offload::{EgressCapabilities, Packet};
//!
//! let now = Instant::now();
//! let mut ports = PortSet::new();
//! for id in 1..=3 {
//!     ports.insert_port(PortId(id), PortProfile::default(), EgressCapabilities::none(1500));
//! }
//! let mut datapath = Datapath::new(Arc::new(Forwarder::new(ForwarderConfig::default(), now)));
//! let mut out = Output::new();
//!
//! // A broadcast from port 1 is flooded to ports 2 and 3.
//! let frame = build_frame(MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 0, 1]), None, 0x0806, &[0; 46]);
//! datapath.process(&ports, PortId(1), [Packet::plain(frame)], now, &mut out);
//! let to: Vec<_> = out.batches().iter().map(|batch| (batch.port, batch.frames.len())).collect();
//! assert_eq!(to, [(PortId(2), 1), (PortId(3), 1)]);
//! // The second copy is counted on the ingress port.
//! assert_eq!(out.events(), [Event::Flooded { port: PortId(1), copies: 1 }]);
//! ```

use std::sync::Arc;
use std::time::Instant;

use vswitch_offload::{CheckedFrame, Packet};

use crate::coalesce::{CoalesceConfig, PortCoalescers, Route};
use crate::dispatch::{flow_hash_with, queue_for_hash};
use crate::drop::DropReason;
use crate::egress::{adapt_checked, fits_mtu, EgressEngine, EgressWork};
use crate::fdb::{Learned, LookupCache};
use crate::forward::{Egress, Forwarder, PortId, PortSet};
use crate::limit::{packets_wire_cost, packets_wire_cost_and_len, wire_cost, Credit, PortLimiter};

/// Where frames leave: a port and, for a port with several transmit
/// queues ([`PortSet::set_tx_queues`]), the queue their flow's hash picks
/// ([`crate::dispatch::queue_for_hash`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The egress port.
    pub port: PortId,
    /// The transmit queue, or `None` for a port with one: the driver
    /// picks (the threaded switch: its worker's).
    pub queue: Option<usize>,
}

/// The frames a burst sends to one port (one queue of it, for a port with
/// several), in the order they must leave.
#[derive(Debug, Default)]
pub struct TxBatch {
    /// The egress port.
    pub port: PortId,
    /// The transmit queue the frames' flows hash to, for a port with
    /// several; `None` for a port with one.
    pub queue: Option<usize>,
    /// The frames, ready for the port's send: adapted to what it takes.
    pub frames: Vec<Packet>,
    /// How many of `frames` [`Datapath::end_burst`] charged to the port's
    /// transmit-side rate limit already.
    charged: usize,
    /// The runs of `frames` cut from one frame, as (first, count): a rate
    /// limit takes each run whole or drops it whole.
    cut: Vec<(usize, usize)>,
    /// The lengths of `frames[..charged]` summed, when the charge summed
    /// them all (see [`TxBatch::known_len`]).
    charged_len: Option<usize>,
}

impl TxBatch {
    /// The sum of the frames' lengths, when charging the batch to a rate
    /// limit summed it already and the frames are the ones it summed:
    /// the sender's byte counter need not walk them again.
    pub(crate) fn known_len(&self) -> Option<usize> {
        self.charged_len
            .filter(|_| self.charged == self.frames.len())
    }
}

/// Something the caller counts: what the datapath did besides sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A frame was dropped. Drops at ingress count on the ingress port,
    /// drops at egress on the egress port.
    Dropped {
        /// The port the drop counts on.
        port: PortId,
        /// Why.
        reason: DropReason,
    },
    /// Software offload work done for a frame leaving through `port`.
    Worked {
        /// The egress port.
        port: PortId,
        /// Segments and checksums made in software.
        work: EgressWork,
    },
    /// A source address seen on `port` was not learned: the port is at its
    /// address limit.
    NotLearned {
        /// The ingress port.
        port: PortId,
    },
    /// A frame received on `port` went to several egress ports (a flood:
    /// broadcast, multicast, an unknown destination). Each copy is sent,
    /// merged, cut or counted as dropped at its egress port like any frame;
    /// `copies` counts those beyond the first, which is what balancing the
    /// counters of a switch with more than two ports needs.
    Flooded {
        /// The ingress port.
        port: PortId,
        /// Copies made beyond the first (egress ports minus one).
        copies: u64,
    },
}

/// What the datapath decided for one or more frames: a batch of frames per
/// egress port, and the events to count. Reuse one from burst to burst
/// ([`Output::clear`]): its vectors keep their allocations.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<TxBatch>,
    active: usize,
    /// The batch a frame went to last: the next frame of a burst usually
    /// goes there too, and is put there without a search.
    last: usize,
    events: Vec<Event>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Output::default()
    }

    /// The batches to send, one per egress port (per queue, for a port with
    /// several), in the order each was first sent to.
    pub fn batches(&self) -> &[TxBatch] {
        &self.batches[..self.active]
    }

    /// The batches to send, for the caller to take the frames out of.
    pub fn batches_mut(&mut self) -> &mut [TxBatch] {
        &mut self.batches[..self.active]
    }

    /// The events, in the order they happened.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Whether there is nothing to send and nothing to count.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.batches().iter().all(|b| b.frames.is_empty())
    }

    /// Forgets every batch and event, keeping the allocations.
    pub fn clear(&mut self) {
        for batch in &mut self.batches[..self.active] {
            batch.frames.clear();
            batch.charged = 0;
            batch.charged_len = None;
            batch.cut.clear();
        }
        self.active = 0;
        self.events.clear();
    }

    fn batch(&mut self, to: Destination) -> &mut Vec<Packet> {
        let index = self.batch_index(to);
        &mut self.batches[index].frames
    }

    /// The index of the batch toward `to`, made if there is none yet.
    #[inline]
    fn batch_index(&mut self, to: Destination) -> usize {
        if let Some(last) = self.batches[..self.active].get(self.last) {
            if last.port == to.port && last.queue == to.queue {
                return self.last;
            }
        }
        self.last = self.find_batch(to);
        self.last
    }

    /// [`Output::batch_index`] when the batch is not the last one used.
    #[cold]
    fn find_batch(&mut self, to: Destination) -> usize {
        let found = self.batches[..self.active]
            .iter()
            .position(|batch| batch.port == to.port && batch.queue == to.queue);
        match found {
            Some(index) => index,
            None => {
                if self.active == self.batches.len() {
                    self.batches.push(TxBatch::default());
                }
                let index = self.active;
                self.batches[index].port = to.port;
                self.batches[index].queue = to.queue;
                self.batches[index].charged = 0;
                self.batches[index].charged_len = None;
                self.batches[index].cut.clear();
                self.active += 1;
                index
            }
        }
    }

    fn dropped(&mut self, port: PortId, reason: DropReason) {
        self.events.push(Event::Dropped { port, reason });
    }

    /// The batch toward `to` and the events, both to append to.
    pub(crate) fn batch_and_events(
        &mut self,
        to: Destination,
    ) -> (&mut Vec<Packet>, &mut Vec<Event>) {
        let index = self.batch_index(to);
        (&mut self.batches[index].frames, &mut self.events)
    }
}

/// The datapath of one worker: the shared learning forwarder, this
/// worker's lookup cache and offload buffers. Keep one per thread that
/// forwards; they share the forwarder.
#[derive(Debug)]
pub struct Datapath {
    forwarder: Arc<Forwarder>,
    cache: LookupCache,
    engine: EgressEngine,
    egress: Vec<Egress>,
    adapted: Vec<Packet>,
    /// Tokens taken ahead from the transmit-side rate limits of the ports
    /// this datapath sent to (see [`PortLimiter::admit_with`]).
    credits: Vec<(Arc<PortLimiter>, Credit)>,
    coalescers: PortCoalescers,
}

impl Datapath {
    /// A datapath that learns into and forwards with `forwarder`, with
    /// receive coalescing on ([`CoalesceConfig::default`]).
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        let cache = forwarder.new_cache();
        Datapath {
            forwarder,
            cache,
            engine: EgressEngine::new(),
            egress: Vec::new(),
            adapted: Vec::new(),
            credits: Vec::new(),
            coalescers: PortCoalescers::new(CoalesceConfig::default()),
        }
    }

    /// This datapath with other receive coalescing settings
    /// ([`crate::coalesce`]); [`CoalesceConfig::disabled`] turns it off.
    pub fn with_coalescing(mut self, config: CoalesceConfig) -> Self {
        self.coalescers = PortCoalescers::new(config);
        self
    }

    /// The receive coalescing settings.
    pub fn coalescing(&self) -> &CoalesceConfig {
        self.coalescers.config()
    }

    /// The forwarder this datapath learns into.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// The ingress check of a frame received on `ingress`: its link-layer
    /// header parsed and its virtio-net header validated, once. A refused
    /// frame is counted in `out` (as [`DropReason::Malformed`] or the
    /// header rule it broke) and `None` is returned.
    // Always inlined: as a call, turning the check's `Result` into the
    // `Option` copied every frame out and back.
    #[inline(always)]
    pub fn check(ingress: PortId, packet: Packet, out: &mut Output) -> Option<CheckedFrame> {
        match CheckedFrame::check(packet) {
            Ok(frame) => Some(frame),
            Err(err) => {
                out.dropped(ingress, DropReason::from(&err));
                None
            }
        }
    }

    /// Checks and forwards every frame of a burst received on `ingress`,
    /// charges the burst to the port's receive-side rate limit, and ends
    /// the burst ([`Datapath::end_burst`]). A caller that honours the limit
    /// polls the port only while [`Datapath::may_receive`] says so.
    pub fn process(
        &mut self,
        ports: &PortSet,
        ingress: PortId,
        packets: impl IntoIterator<Item = Packet>,
        now: Instant,
        out: &mut Output,
    ) {
        // Borrowed from the port set, not cloned: two reference-count
        // updates a burst saved.
        let limiter = ports.limiter(ingress);
        let (mut frames, mut bytes) = (0, 0);
        for packet in packets {
            let len = packet.len() as u64;
            let Some(frame) = Self::check(ingress, packet, out) else {
                (frames, bytes) = (frames + 1, bytes + len);
                continue;
            };
            if limiter.is_some() {
                let (f, b) = wire_cost(&frame);
                (frames, bytes) = (frames + f, bytes + b);
            }
            self.forward(ports, ingress, frame, now, out);
        }
        if let Some(limiter) = limiter {
            limiter.charge_received(frames, bytes, now);
        }
        self.end_burst(ports, now, out);
    }

    /// Ends a burst: the frames held for coalescing ([`crate::coalesce`])
    /// go into their ports' batches in `out`, and every batch is charged
    /// to its port's transmit-side rate limit (if it has one). A caller of
    /// [`Datapath::forward`] calls it before it sends what `out` holds.
    ///
    /// The limit is charged with what leaves: the frames as adapted (each
    /// segment of a frame the switch cut; a frame the port segments itself
    /// costs the segments it will be,
    /// [`packet_wire_cost`](crate::limit::packet_wire_cost)). A batch whose
    /// cost the port's tokens cover is charged at once, which is what a
    /// limit that does not bind costs: nothing per frame but a sum. Where
    /// the tokens taken ahead run short, the batch is charged frame by
    /// frame in order, the segments cut from one frame as one, and each
    /// frame the tokens do not cover is dropped whole and counted as
    /// [`DropReason::RateLimited`]. Frames charged by an earlier call (no
    /// [`Output::clear`] between) are not charged again.
    pub fn end_burst(&mut self, ports: &PortSet, now: Instant, out: &mut Output) {
        if self.coalescers.holding() {
            self.coalescers.flush_all(self.engine.chunk_pool(), out);
        }
        if !ports.has_tx_limits() {
            for batch in &mut out.batches[..out.active] {
                batch.charged = batch.frames.len();
                batch.charged_len = None;
            }
            return;
        }
        let Output {
            batches,
            active,
            events,
            ..
        } = out;
        for batch in &mut batches[..*active] {
            let from = std::mem::replace(&mut batch.charged, batch.frames.len());
            // The summed length holds while the frames charged are the
            // frames held.
            let charged_len = batch.charged_len.take();
            if from >= batch.frames.len() {
                batch.charged_len = charged_len.filter(|_| from == batch.frames.len());
                continue;
            }
            let Some(index) = self.credit_index(ports, batch.port) else {
                continue;
            };
            let Some((limiter, credit)) = self.credits.get_mut(index) else {
                continue;
            };
            let ((frames, bytes), added) = packets_wire_cost_and_len(&batch.frames[from..]);
            let summed = match from {
                0 => Some(added as usize),
                _ => charged_len.map(|before| before + added as usize),
            };
            if PortLimiter::spend_credit(credit, frames, bytes) {
                batch.charged_len = summed;
                batch.cut.clear();
                continue;
            }
            // The credit taken ahead does not cover the batch: frame by
            // frame (taking more ahead), the segments cut from one frame
            // together, keeping the order of those that go.
            let len = batch.frames.len();
            let mut runs = batch
                .cut
                .iter()
                .filter(|(first, _)| *first >= from)
                .peekable();
            let (mut kept, mut i) = (from, from);
            while i < len {
                let n = match runs.peek() {
                    Some(&&(first, count)) if first == i => {
                        runs.next();
                        count.clamp(1, len - i)
                    }
                    _ => 1,
                };
                let (frames, bytes) = packets_wire_cost(&batch.frames[i..i + n]);
                if limiter.admit_with(credit, frames, bytes, now) {
                    for j in i..i + n {
                        batch.frames.swap(kept, j);
                        kept += 1;
                    }
                } else {
                    events.push(Event::Dropped {
                        port: batch.port,
                        reason: DropReason::RateLimited,
                    });
                }
                i += n;
            }
            batch.charged_len = summed.filter(|_| kept == len);
            batch.frames.truncate(kept);
            batch.charged = kept;
            batch.cut.clear();
        }
    }

    /// Whether `port` may be polled at `now`: its receive-side rate limit
    /// (if it has one) is not in debt. A port that may not waits with its
    /// frames in its own queue: backpressure, not loss.
    pub fn may_receive(ports: &PortSet, port: PortId, now: Instant) -> bool {
        ports
            .limiter(port)
            .is_none_or(|limiter| limiter.may_receive(now))
    }

    /// Where the credit for `port`'s transmit limit is in `credits`, added
    /// if it is not there yet; `None` if the port has no limit.
    fn credit_index(&mut self, ports: &PortSet, port: PortId) -> Option<usize> {
        let limiter = ports.limiter(port).filter(|l| l.limits_to_port())?;
        if let Some(index) = self
            .credits
            .iter()
            .position(|(held, _)| Arc::ptr_eq(held, limiter))
        {
            return Some(index);
        }
        // Credit for limiters no longer in use goes with them.
        if self.credits.len() >= 64 {
            self.credits.clear();
        }
        self.credits.push((limiter.clone(), Credit::default()));
        Some(self.credits.len() - 1)
    }

    /// Forwards one checked frame received on `ingress` at `now` among
    /// `ports`: learns its source, picks the egress ports, retags it for
    /// each, adapts it to what each takes, and appends the result to that
    /// port's batch in `out`. A TCP segment toward a port that takes large
    /// frames may instead be held to be merged with the next ones of its
    /// flow, until [`Datapath::end_burst`] (or the coalescing time budget).
    pub fn forward(
        &mut self,
        ports: &PortSet,
        ingress: PortId,
        frame: CheckedFrame,
        now: Instant,
        out: &mut Output,
    ) {
        let decision = self.forwarder.decide_cached(
            &mut self.cache,
            ports,
            ingress,
            &frame,
            now,
            &mut self.egress,
        );
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => {
                out.dropped(ingress, err.reason());
                return;
            }
        };
        if decision.learned == Learned::LimitReached {
            out.events.push(Event::NotLearned { port: ingress });
        }
        let ingress_vid = decision.ingress_tag.map(|tag| tag.vid());
        // The common case, one destination and the frame unchanged: moved
        // there as it is.
        if let [egress] = self.egress[..] {
            if egress.tag.map(|vlan| vlan.get()) == ingress_vid {
                self.emit(ports, egress.port, frame, now, out);
                return;
            }
        }
        // At most two versions of the frame: untagged and tagged with its
        // VLAN; every port of a kind shares one buffer. A frame that leaves
        // unchanged through its last egress port is moved there, not cloned.
        let mut original = Some(frame);
        let mut untagged: Option<Option<CheckedFrame>> = None;
        let mut tagged: Option<Option<CheckedFrame>> = None;
        let egress_ports = std::mem::take(&mut self.egress);
        let count = egress_ports.len();
        if count > 1 {
            out.events.push(Event::Flooded {
                port: ingress,
                copies: count as u64 - 1,
            });
            // Parsed before the copies are made, so that the egress ports
            // that need the layout (a flow hash, coalescing) share one
            // parse instead of each copy making its own.
            if let Some(frame) = &mut original {
                frame.parse_layout();
            }
        }
        for (i, egress) in egress_ports.iter().enumerate() {
            let vid = egress.tag.map(|vlan| vlan.get());
            let version = if vid == ingress_vid {
                if i + 1 == count {
                    original.take()
                } else {
                    original.clone()
                }
            } else {
                let Some(frame) = original.as_ref() else {
                    continue;
                };
                let slot = if vid.is_none() {
                    &mut untagged
                } else {
                    &mut tagged
                };
                slot.get_or_insert_with(|| frame.retagged(vid)).clone()
            };
            match version {
                Some(version) => self.emit(ports, egress.port, version, now, out),
                None => out.dropped(egress.port, DropReason::RetagFailed),
            }
        }
        self.egress = egress_ports;
    }

    /// Adapts one version of a frame to what `port` takes and appends the
    /// result to that port's batch, or to the port's coalescer.
    fn emit(
        &mut self,
        ports: &PortSet,
        port: PortId,
        version: CheckedFrame,
        now: Instant,
        out: &mut Output,
    ) {
        let Some(caps) = ports.egress(port) else {
            out.dropped(port, DropReason::EgressPortGone);
            return;
        };
        // A port with several transmit queues gets each flow on the queue
        // its hash picks (computed here, once per frame before any cutting,
        // only for such ports); every frame made from this one goes there.
        let queues = ports.tx_queues(port);
        let coalescing = self.coalescers.takes(caps);
        // The flow hash and the coalescer read the layout: parsed once
        // for both, and only for them. (Read, not kept in `version`: a
        // frame changed here would be copied on every call.)
        let layout = if queues > 1 || coalescing {
            version.layout()
        } else {
            None
        };
        let to = Destination {
            port,
            queue: (queues > 1)
                .then(|| queue_for_hash(flow_hash_with(&version, layout.as_ref()), queues)),
        };
        if self.coalescers.holding() {
            self.coalescers.expire(now, self.engine.chunk_pool(), out);
        }
        if coalescing {
            match Route::of(&version, layout, caps) {
                Route::Coalesce(layout, checksum) => {
                    match fits_mtu(&version, caps) {
                        Ok(()) => {
                            let pool = self.engine.chunk_pool();
                            self.coalescers.push(
                                to,
                                version.into_packet(),
                                &layout,
                                checksum,
                                pool,
                                out,
                            );
                            self.coalescers.pushed_at(now);
                        }
                        Err(err) => out.dropped(port, err.reason()),
                    }
                    return;
                }
                Route::AfterItsFlow(layout) => {
                    let pool = self.engine.chunk_pool();
                    self.coalescers
                        .flush_flow(to, version.data(), &layout, pool, out);
                }
                Route::Direct => {}
            }
        }
        if !version.hdr().has_offload_work() {
            // Nothing to adapt: straight into the batch once it fits, without
            // adapt_checked's detour through the engine's output vector.
            match fits_mtu(&version, caps) {
                Ok(()) => out.batch(to).push(version.into_packet()),
                Err(err) => out.dropped(port, err.reason()),
            }
            return;
        }
        self.adapted.clear();
        match adapt_checked(&mut self.engine, version, caps, &mut self.adapted) {
            Err(err) => out.dropped(port, err.reason()),
            Ok(work) => {
                if work != EgressWork::default() {
                    out.events.push(Event::Worked { port, work });
                }
                let index = out.batch_index(to);
                let batch = &mut out.batches[index];
                if self.adapted.len() > 1 {
                    batch.cut.push((batch.frames.len(), self.adapted.len()));
                }
                batch.frames.append(&mut self.adapted);
            }
        }
    }
}

#[cfg(test)]
mod tenant_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use vswitch_offload::testing::{tcp_flags, FrameBuilder};
    use vswitch_offload::EgressCapabilities;

    use super::*;
    use crate::coalesce::CoalesceConfig;
    use crate::drop::HeaderDrop;
    use crate::ethernet::build_frame;
    use crate::forward::{ForwarderConfig, PortProfile};
    use crate::mac::MacAddr;
    use crate::vlan::{VlanId, VlanSet};

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }

    fn vlan(id: u16) -> VlanId {
        VlanId::new(id).unwrap()
    }

    /// A datapath, its clock origin, and ports 1..=n as access ports of
    /// VLAN 1 without offloads.
    struct Bench {
        datapath: Datapath,
        ports: PortSet,
        t0: Instant,
        out: Output,
    }

    impl Bench {
        fn new(access_ports: u32) -> Self {
            let t0 = Instant::now();
            let mut ports = PortSet::new();
            for id in 1..=access_ports {
                ports.insert_port(
                    PortId(id),
                    PortProfile::access(VlanId::DEFAULT),
                    EgressCapabilities::none(1500),
                );
            }
            let forwarder = Arc::new(Forwarder::new(ForwarderConfig::default(), t0));
            Bench {
                datapath: Datapath::new(forwarder),
                ports,
                t0,
                out: Output::new(),
            }
        }

        /// Sends `packets` in from `ingress` at `secs`, and returns where
        /// frames went (port, frames) and the events.
        fn burst(
            &mut self,
            secs: u64,
            ingress: u32,
            packets: Vec<Packet>,
        ) -> (Vec<(u32, Vec<Packet>)>, Vec<Event>) {
            self.out.clear();
            let now = self.t0 + Duration::from_secs(secs);
            self.datapath
                .process(&self.ports, PortId(ingress), packets, now, &mut self.out);
            let sent = self
                .out
                .batches_mut()
                .iter_mut()
                .map(|batch| (batch.port.0, std::mem::take(&mut batch.frames)))
                .collect();
            (sent, self.out.events().to_vec())
        }
    }

    fn plain(dst: MacAddr, src: MacAddr, tci: Option<u16>) -> Packet {
        Packet::plain(build_frame(dst, src, tci, 0x0806, &[0; 46]))
    }

    fn ports_of(sent: &[(u32, Vec<Packet>)]) -> Vec<(u32, usize)> {
        sent.iter()
            .map(|(port, frames)| (*port, frames.len()))
            .collect()
    }

    /// A TCP/IPv4 TSO frame from `src` to `dst` with `payload` bytes, its
    /// checksum partial as a Linux guest hands it over, and an IPv4 total
    /// length of 0 that the segmenter must not trust.
    fn tso(dst: MacAddr, src: MacAddr, payload: usize, mss: u16) -> Packet {
        let tso = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .macs(src.0, dst.0)
            .ports(0, 0)
            .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
            .payload_with(payload, |i| i as u8)
            .gso(mss);
        let mut frame = tso.build();
        frame[14 + 2..14 + 4].fill(0);
        Packet::with_hdr(tso.hdr(), frame)
    }

    #[test]
    fn unknown_destinations_flood_then_learned_ones_are_unicast() {
        let mut b = Bench::new(3);
        let (sent, events) = b.burst(0, 1, vec![plain(mac(2), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1), (3, 1)]);
        assert_eq!(
            events,
            [Event::Flooded {
                port: PortId(1),
                copies: 1
            }]
        );
        // 2 answers 1: 1 was learned, so only 1 gets it; 2 is learned too.
        let (sent, _) = b.burst(0, 2, vec![plain(mac(1), mac(2), None)]);
        assert_eq!(ports_of(&sent), [(1, 1)]);
        let (sent, _) = b.burst(0, 1, vec![plain(mac(2), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1)]);
        // After the aging time, 2 is unknown again.
        let (sent, _) = b.burst(400, 1, vec![plain(mac(2), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1), (3, 1)]);
    }

    #[test]
    fn a_flood_counts_its_copies_beyond_the_first_on_the_ingress_port() {
        let mut b = Bench::new(4);
        let (sent, events) = b.burst(0, 1, vec![plain(MacAddr::BROADCAST, mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1), (3, 1), (4, 1)]);
        assert_eq!(
            events,
            [Event::Flooded {
                port: PortId(1),
                copies: 2
            }]
        );
        // A learned destination: one copy, nothing to count.
        let (sent, events) = b.burst(0, 2, vec![plain(mac(1), mac(2), None)]);
        assert_eq!(ports_of(&sent), [(1, 1)]);
        assert!(events.is_empty());
        // Unknown unicast is flooded too; with one other port left in its
        // VLAN there is one copy only.
        b.ports.remove(PortId(3));
        b.ports.remove(PortId(4));
        let (sent, events) = b.burst(0, 2, vec![plain(mac(9), mac(2), None)]);
        assert_eq!(ports_of(&sent), [(1, 1)]);
        assert!(events.is_empty());
    }

    #[test]
    fn a_burst_gives_one_batch_per_port_in_order() {
        let mut b = Bench::new(3);
        b.burst(0, 2, vec![plain(MacAddr::BROADCAST, mac(2), None)]);
        b.burst(0, 3, vec![plain(MacAddr::BROADCAST, mac(3), None)]);
        let frames: Vec<Packet> = (0..6)
            .map(|i| {
                let dst = if i % 2 == 0 { mac(2) } else { mac(3) };
                let mut frame = build_frame(dst, mac(1), None, 0x0806, &[0; 46]).to_vec();
                frame[20] = i;
                Packet::plain(frame)
            })
            .collect();
        let (sent, _) = b.burst(0, 1, frames);
        assert_eq!(ports_of(&sent), [(2, 3), (3, 3)]);
        let order = |frames: &[Packet]| frames.iter().map(|p| p.data[20]).collect::<Vec<_>>();
        assert_eq!(order(&sent[0].1), [0, 2, 4]);
        assert_eq!(order(&sent[1].1), [1, 3, 5]);
    }

    #[test]
    fn vlans_are_kept_apart_and_tags_follow_the_egress_port() {
        let mut b = Bench::new(0);
        let caps = EgressCapabilities::none(1500);
        b.ports
            .insert_port(PortId(1), PortProfile::access(vlan(10)), caps);
        b.ports
            .insert_port(PortId(2), PortProfile::access(vlan(20)), caps);
        let trunk: VlanSet = [vlan(10), vlan(20)].into_iter().collect();
        b.ports
            .insert_port(PortId(3), PortProfile::trunk(trunk, None), caps);
        // From the VLAN 10 access port: only the trunk, tagged 10.
        let (sent, _) = b.burst(0, 1, vec![plain(MacAddr::BROADCAST, mac(1), None)]);
        assert_eq!(ports_of(&sent), [(3, 1)]);
        let frame = CheckedFrame::check(sent[0].1[0].clone()).unwrap();
        assert_eq!(frame.outer_tag().map(|t| t.vid()), Some(10));
        // From the trunk in VLAN 20: the VLAN 20 access port, untagged.
        let (sent, _) = b.burst(0, 3, vec![plain(MacAddr::BROADCAST, mac(3), Some(20))]);
        assert_eq!(ports_of(&sent), [(2, 1)]);
        let frame = CheckedFrame::check(sent[0].1[0].clone()).unwrap();
        assert_eq!(frame.outer_tag(), None);
        // A tagged frame on an access port is dropped on that port.
        let (sent, events) = b.burst(0, 1, vec![plain(MacAddr::BROADCAST, mac(1), Some(10))]);
        assert!(sent.is_empty());
        assert_eq!(
            events,
            [Event::Dropped {
                port: PortId(1),
                reason: DropReason::TaggedOnAccessPort
            }]
        );
    }

    #[test]
    fn a_tso_frame_is_cut_for_a_port_without_offloads_and_passed_to_one_with() {
        let mut b = Bench::new(2);
        b.ports.insert_port(
            PortId(3),
            PortProfile::access(VlanId::DEFAULT),
            EgressCapabilities::full(9000),
        );
        let (sent, events) = b.burst(0, 1, vec![tso(MacAddr::BROADCAST, mac(1), 10_000, 1448)]);
        // Port 2 takes finished frames of at most 1500 bytes: 7 segments.
        assert_eq!(ports_of(&sent), [(2, 7), (3, 1)]);
        for segment in &sent[0].1 {
            assert!(segment.data.len() <= 1514);
            assert!(!segment.hdr.has_offload_work());
            // Checked by etherparse: both checksums as a receiver computes them.
            let headers = etherparse::PacketHeaders::from_ethernet_slice(&segment.data).unwrap();
            let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &headers.net else {
                panic!("expected IPv4");
            };
            let Some(etherparse::TransportHeader::Tcp(tcp)) = &headers.transport else {
                panic!("expected TCP");
            };
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            let payload = headers.payload.slice();
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(ip, payload).unwrap());
        }
        let payload: usize = sent[0].1.iter().map(|s| s.data.len() - 54).sum();
        assert_eq!(payload, 10_000);
        // Port 3 segments itself: the frame goes whole, with its header.
        assert!(sent[1].1[0].hdr.is_gso());
        // A broadcast: the copy for port 3 is counted on port 1.
        assert_eq!(
            events,
            [
                Event::Flooded {
                    port: PortId(1),
                    copies: 1
                },
                Event::Worked {
                    port: PortId(2),
                    work: EgressWork {
                        segmented: 1,
                        segments: 7,
                        checksums: 7,
                        coalesced: 0,
                        lent_copied: 0
                    }
                }
            ]
        );
    }

    #[test]
    fn drops_are_counted_by_reason_on_the_port_they_belong_to() {
        let mut b = Bench::new(2);
        let mut zero_mss = tso(mac(2), mac(1), 3000, 1448);
        zero_mss.hdr.gso_size = 0;
        let runt = Packet::plain(Bytes::from_static(&[0u8; 10]));
        let multicast_source = plain(mac(2), MacAddr([3, 0, 0, 0, 0, 1]), None);
        let (sent, events) = b.burst(0, 1, vec![zero_mss, runt, multicast_source]);
        assert!(sent.is_empty());
        let reasons: Vec<_> = events
            .iter()
            .map(|e| match e {
                Event::Dropped { port, reason } => (port.0, *reason),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                (1, DropReason::InvalidHeader(HeaderDrop::BadGsoSize)),
                (1, DropReason::Malformed),
                (1, DropReason::InvalidSourceMac),
            ]
        );
        // A finished frame larger than the egress MTU is dropped at egress.
        let big = Packet::plain(build_frame(mac(2), mac(1), None, 0x0806, &[0; 2000]));
        let (_, events) = b.burst(0, 1, vec![big]);
        assert_eq!(
            events,
            [Event::Dropped {
                port: PortId(2),
                reason: DropReason::ExceedsMtu
            },]
        );
    }

    #[test]
    fn a_port_removed_from_the_set_gets_nothing_and_its_addresses_go() {
        let mut b = Bench::new(3);
        b.burst(0, 3, vec![plain(MacAddr::BROADCAST, mac(3), None)]);
        let (sent, _) = b.burst(0, 1, vec![plain(mac(3), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(3, 1)]);
        // Hot-unplug: the port leaves the set and the forwarder forgets it.
        b.ports.remove(PortId(3));
        b.datapath.forwarder().forget_port(PortId(3));
        let (sent, _) = b.burst(0, 1, vec![plain(mac(3), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1)]);
        // Hot-plug: a new port is flooded to at once.
        b.ports.insert_port(
            PortId(4),
            PortProfile::access(VlanId::DEFAULT),
            EgressCapabilities::none(1500),
        );
        let (sent, _) = b.burst(0, 1, vec![plain(mac(3), mac(1), None)]);
        assert_eq!(ports_of(&sent), [(2, 1), (4, 1)]);
    }

    #[test]
    fn the_address_limit_is_an_event() {
        let mut b = Bench::new(2);
        b.ports.insert_port(
            PortId(1),
            PortProfile::access(VlanId::DEFAULT).max_learned(1),
            EgressCapabilities::none(1500),
        );
        let (_, events) = b.burst(
            0,
            1,
            vec![
                plain(MacAddr::BROADCAST, mac(10), None),
                plain(MacAddr::BROADCAST, mac(11), None),
            ],
        );
        assert_eq!(events, [Event::NotLearned { port: PortId(1) }]);
    }

    // ------------------------------------------------------------------
    // Receive coalescing toward ports that take large frames.
    // ------------------------------------------------------------------

    const MSS: usize = 1448;
    /// NOP, NOP, timestamps: a Linux sender's options.
    const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    /// Segment `i` of a bulk TCP/IPv4 flow from mac(1) to mac(2), as a
    /// sender without TSO puts it on the wire (complete checksums, DF,
    /// ids and sequence numbers advancing), changed by `change`.
    fn segment(i: usize, change: impl FnOnce(FrameBuilder) -> FrameBuilder) -> Packet {
        let builder = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .macs(mac(1).0, mac(2).0)
            .dont_fragment(true)
            .ip_id(100 + i as u16)
            .ports(40000, 5201)
            .seq(1000 + (i * MSS) as u32)
            .ack_number(7)
            .tcp_flags(tcp_flags::ACK)
            .window(512)
            .tcp_options(&TIMESTAMPS)
            .payload_with(MSS, move |j| (i * 31 + j) as u8);
        Packet::plain(change(builder).build())
    }

    fn segments(n: usize) -> Vec<Packet> {
        (0..n).map(|i| segment(i, |b| b)).collect()
    }

    /// Port 1 without offloads (where segments come from), port 2 takes
    /// large frames (a guest with GUEST_TSO4/6, a TAP with TSO), and
    /// mac(2) learned on port 2.
    fn gro_bench(coalescing: CoalesceConfig) -> Bench {
        let mut b = Bench::new(1);
        b.datapath = Datapath::new(b.datapath.forwarder().clone()).with_coalescing(coalescing);
        b.ports.insert_port(
            PortId(2),
            PortProfile::access(VlanId::DEFAULT),
            EgressCapabilities::checksum_only(1500)
                .with_tso4(true)
                .with_tso6(true),
        );
        b.burst(0, 2, vec![plain(MacAddr::BROADCAST, mac(2), None)]);
        b
    }

    /// What a frame sent is: (first sequence number, segments of MSS it
    /// carries, whether it is a GSO frame).
    fn summary(packet: &Packet) -> (u32, usize, bool) {
        let layout = vswitch_offload::FrameLayout::parse(&packet.data).unwrap();
        let tcp = &packet.data[layout.l4_offset..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let payload = packet.data.len() - layout.payload_offset;
        (seq, payload.div_ceil(MSS), packet.hdr.is_gso())
    }

    fn seq(i: usize) -> u32 {
        1000 + (i * MSS) as u32
    }

    fn coalesced(events: &[Event]) -> u64 {
        events
            .iter()
            .map(|e| match e {
                Event::Worked { work, .. } => work.coalesced,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn mtu_sized_segments_toward_a_tso_port_leave_as_one_gso_frame() {
        let mut b = gro_bench(CoalesceConfig::default());
        let input = segments(44);
        let (sent, events) = b.burst(1, 1, input.clone());
        assert_eq!(ports_of(&sent), [(2, 1)]);
        let merged = &sent[0].1[0];
        let hdr = merged.hdr;
        assert_eq!(hdr.gso_type, vswitch_offload::virtio::GSO_TCPV4);
        assert_eq!(usize::from(hdr.gso_size), MSS);
        assert_eq!(hdr.flags, vswitch_offload::virtio::FLAG_NEEDS_CSUM);
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
        assert_eq!(merged.data.len(), 66 + 44 * MSS);
        // Its IP header as a receiver reads it: the whole datagram, a
        // valid header checksum.
        let headers = etherparse::PacketHeaders::from_ethernet_slice(&merged.data).unwrap();
        let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &headers.net else {
            panic!("expected IPv4");
        };
        assert_eq!(usize::from(ip.total_len), 20 + 32 + 44 * MSS);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        // Cut again by the engine for a port without offloads: exactly the
        // segments that came in.
        let mut again = Vec::new();
        crate::egress::adapt_for_egress(
            &mut EgressEngine::new(),
            merged.clone(),
            &EgressCapabilities::none(1500),
            &mut again,
        )
        .unwrap();
        assert_eq!(again, input);
        assert_eq!(coalesced(&events), 43);
        assert_eq!(
            events,
            [Event::Worked {
                port: PortId(2),
                work: EgressWork {
                    coalesced: 43,
                    ..EgressWork::default()
                }
            }]
        );
    }

    /// (port, queue, frames) of every batch of the last burst.
    fn queued(b: &mut Bench) -> Vec<(u32, Option<usize>, Vec<Packet>)> {
        b.out
            .batches_mut()
            .iter_mut()
            .map(|batch| (batch.port.0, batch.queue, std::mem::take(&mut batch.frames)))
            .collect()
    }

    /// TCP port of the flow a frame belongs to (its source port).
    fn source_port(packet: &Packet) -> u16 {
        let layout = vswitch_offload::FrameLayout::parse(&packet.data).unwrap();
        u16::from_be_bytes([
            packet.data[layout.l4_offset],
            packet.data[layout.l4_offset + 1],
        ])
    }

    #[test]
    fn toward_a_multi_queue_port_each_flow_takes_the_queue_its_hash_picks() {
        let mut b = Bench::new(2);
        b.ports.set_tx_queues(PortId(2), 4);
        b.burst(0, 2, vec![plain(MacAddr::BROADCAST, mac(2), None)]);
        // 32 flows, 3 frames each, interleaved; plain frames and TSO frames
        // cut for the port (no offloads), which must stay on their flow's
        // queue with every segment.
        let mut input = Vec::new();
        for round in 0..3 {
            for flow in 0..32u16 {
                let builder = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
                    .macs(mac(1).0, mac(2).0)
                    .ports(40_000 + flow, 5201)
                    .seq(round * 3000)
                    .tcp_flags(tcp_flags::ACK);
                input.push(if round == 1 {
                    let tso = builder.payload_with(3000, |i| i as u8).gso(1000);
                    Packet::with_hdr(tso.hdr(), tso.build())
                } else {
                    Packet::plain(builder.payload_with(100, |i| i as u8).build())
                });
            }
        }
        let now = b.t0 + Duration::from_secs(1);
        b.out.clear();
        b.datapath
            .process(&b.ports, PortId(1), input.clone(), now, &mut b.out);
        let batches = queued(&mut b);
        let mut queue_of = std::collections::HashMap::new();
        let mut per_flow: std::collections::HashMap<u16, Vec<u32>> = Default::default();
        for (port, queue, frames) in &batches {
            assert_eq!(*port, 2);
            let queue = queue.expect("a queue for a port with several");
            assert!(queue < 4);
            for frame in frames {
                let flow = source_port(frame);
                // Every frame of a flow on one queue: the one its hash picks.
                assert_eq!(*queue_of.entry(flow).or_insert(queue), queue, "flow {flow}");
                let hash = crate::dispatch::flow_hash_of_bytes(&frame.data).unwrap();
                assert_eq!(crate::dispatch::queue_for_hash(hash, 4), queue);
                let tcp = &frame.data[34..];
                per_flow
                    .entry(flow)
                    .or_default()
                    .push(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]));
            }
        }
        // The flows cover every queue, and each flow's frames (1 + 3 + 1)
        // are in order.
        let used: std::collections::HashSet<_> = queue_of.values().collect();
        assert_eq!(used.len(), 4, "{queue_of:?}");
        for (flow, seqs) in &per_flow {
            assert_eq!(seqs, &[0, 3000, 4000, 5000, 6000], "flow {flow}");
        }
        // A port with one queue leaves the choice to the driver.
        b.ports.set_tx_queues(PortId(2), 1);
        b.out.clear();
        b.datapath
            .process(&b.ports, PortId(1), input[..4].to_vec(), now, &mut b.out);
        let batches = queued(&mut b);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            (batches[0].0, batches[0].1, batches[0].2.len()),
            (2, None, 4)
        );
    }

    #[test]
    fn merged_frames_leave_by_their_flows_queue() {
        let mut b = gro_bench(CoalesceConfig::default());
        b.ports.set_tx_queues(PortId(2), 8);
        // Eight flows of 10 segments each, interleaved.
        let mut input = Vec::new();
        for i in 0..10 {
            for flow in 0..8u16 {
                input.push(segment(i, |f| f.ports(41_000 + flow, 5201)));
            }
        }
        let now = b.t0 + Duration::from_secs(1);
        b.out.clear();
        b.datapath
            .process(&b.ports, PortId(1), input, now, &mut b.out);
        let batches = queued(&mut b);
        let mut flows = 0;
        for (port, queue, frames) in &batches {
            assert_eq!(*port, 2);
            for frame in frames {
                assert_eq!(
                    summary(frame),
                    (seq(0), 10, true),
                    "one merged frame a flow"
                );
                let hash = crate::dispatch::flow_hash_of_bytes(&frame.data).unwrap();
                assert_eq!(*queue, Some(crate::dispatch::queue_for_hash(hash, 8)));
                flows += 1;
            }
        }
        assert_eq!(flows, 8);
        assert!(batches.len() > 1, "eight flows on more than one queue");
    }

    #[test]
    fn a_port_without_tso_gets_the_frames_untouched() {
        let mut b = gro_bench(CoalesceConfig::default());
        for caps in [
            EgressCapabilities::none(1500),
            EgressCapabilities::checksum_only(1500),
            // TSO without checksum completion cannot take a partial checksum.
            EgressCapabilities::none(1500).with_tso4(true),
        ] {
            b.ports
                .insert_port(PortId(3), PortProfile::access(VlanId::DEFAULT), caps);
            // An unknown destination: flooded to 2 and 3.
            let input: Vec<Packet> = (0..10)
                .map(|i| segment(i, |f| f.macs(mac(1).0, mac(9).0)))
                .collect();
            let (sent, events) = b.burst(1, 1, input.clone());
            assert_eq!(ports_of(&sent), [(2, 1), (3, 10)], "{caps:?}");
            assert_eq!(sent[1].1, input);
            assert_eq!(coalesced(&events), 9);
        }
    }

    #[test]
    fn coalescing_turned_off_leaves_every_frame_as_it_was() {
        let mut b = gro_bench(CoalesceConfig::disabled());
        let input = segments(10);
        let (sent, events) = b.burst(1, 1, input.clone());
        assert_eq!(sent[0].1, input);
        assert!(events.is_empty());
        assert!(!b.datapath.coalescing().enabled);
    }

    /// Sends segments 0..8 with `change` applied to segment 3 and returns
    /// the summaries of what port 2 got.
    fn with_segment_3(change: impl Fn(FrameBuilder) -> FrameBuilder) -> Vec<(u32, usize, bool)> {
        let mut b = gro_bench(CoalesceConfig::default());
        let input: Vec<Packet> = (0..8)
            .map(|i| {
                if i == 3 {
                    segment(i, &change)
                } else {
                    segment(i, |f| f)
                }
            })
            .collect();
        let (sent, _) = b.burst(1, 1, input);
        sent[0].1.iter().map(summary).collect()
    }

    #[test]
    fn psh_ends_a_merge_after_the_segment_carrying_it() {
        let out = with_segment_3(|f| f.tcp_flags(tcp_flags::ACK | tcp_flags::PSH));
        assert_eq!(out, [(seq(0), 4, true), (seq(4), 4, true)]);
    }

    #[test]
    fn fin_and_any_other_flag_flush_the_flow_and_pass_alone() {
        for flags in [
            tcp_flags::FIN,
            tcp_flags::URG,
            tcp_flags::ECE,
            tcp_flags::CWR,
            tcp_flags::RST,
        ] {
            let out = with_segment_3(|f| f.tcp_flags(tcp_flags::ACK | flags));
            assert_eq!(
                out,
                [(seq(0), 3, true), (seq(3), 1, false), (seq(4), 4, true)],
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn an_ecn_mark_splits_the_merge() {
        // CE on one segment: it is not merged with the unmarked ones.
        let out = with_segment_3(|f| f.traffic_class(0x03));
        assert_eq!(
            out,
            [(seq(0), 3, true), (seq(3), 1, false), (seq(4), 4, true)]
        );
    }

    #[test]
    fn options_and_acknowledgment_changes_split_the_merge() {
        let out = with_segment_3(|f| f.tcp_options(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 2]));
        assert_eq!(
            out,
            [(seq(0), 3, true), (seq(3), 1, false), (seq(4), 4, true)]
        );
        let out = with_segment_3(|f| f.ack_number(8));
        assert_eq!(
            out,
            [(seq(0), 3, true), (seq(3), 1, false), (seq(4), 4, true)]
        );
    }

    #[test]
    fn out_of_order_segments_are_never_merged_out_of_order() {
        let mut b = gro_bench(CoalesceConfig::default());
        let mut input = segments(6);
        input.swap(2, 3);
        let (sent, _) = b.burst(1, 1, input);
        let out: Vec<_> = sent[0].1.iter().map(summary).collect();
        // 0-1, then 3 (a gap), then 2 (behind), then 4-5.
        assert_eq!(
            out,
            [
                (seq(0), 2, true),
                (seq(3), 1, false),
                (seq(2), 1, false),
                (seq(4), 2, true)
            ]
        );
    }

    #[test]
    fn a_wrong_checksum_is_passed_on_for_the_receiver_to_drop() {
        let mut b = gro_bench(CoalesceConfig::default());
        let mut input = segments(6);
        let mut bad = input[2].data.to_vec();
        bad[100] ^= 0x55;
        input[2] = Packet::plain(bad);
        let (sent, _) = b.burst(1, 1, input.clone());
        let frames = &sent[0].1;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], input[2]);
        assert_eq!(summary(&frames[0]), (seq(0), 2, true));
        assert_eq!(summary(&frames[2]), (seq(3), 3, true));
    }

    #[test]
    fn two_interleaved_flows_merge_apart_each_in_order() {
        let mut b = gro_bench(CoalesceConfig::default());
        let other = |i: usize| segment(i, |f| f.ports(40001, 5201).seq(9000 + (i * MSS) as u32));
        let input: Vec<Packet> = (0..10)
            .flat_map(|i| [segment(i, |f| f), other(i)])
            .collect();
        let (sent, events) = b.burst(1, 1, input);
        let frames = &sent[0].1;
        assert_eq!(frames.len(), 2);
        assert_eq!(summary(&frames[0]), (seq(0), 10, true));
        assert_eq!(summary(&frames[1]), (9000, 10, true));
        assert_eq!(coalesced(&events), 18);
    }

    #[test]
    fn a_frame_of_the_flow_that_is_not_merged_keeps_its_place() {
        let mut b = gro_bench(CoalesceConfig::default());
        // Segments 0 and 1, then a TSO frame of the same flow carrying
        // segments 2 and 3 (a guest's, with a partial checksum), then 4, 5.
        let tso = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .macs(mac(1).0, mac(2).0)
            .dont_fragment(true)
            .ip_id(102)
            .ports(40000, 5201)
            .seq(seq(2))
            .ack_number(7)
            .tcp_flags(tcp_flags::ACK)
            .window(512)
            .tcp_options(&TIMESTAMPS)
            .payload_with(2 * MSS, |j| j as u8)
            .gso(MSS as u16)
            .packet();
        let input = vec![
            segment(0, |f| f),
            segment(1, |f| f),
            tso.clone(),
            segment(4, |f| f),
            segment(5, |f| f),
        ];
        let (sent, _) = b.burst(1, 1, input);
        let out: Vec<_> = sent[0].1.iter().map(summary).collect();
        assert_eq!(
            out,
            [(seq(0), 2, true), (seq(2), 2, true), (seq(4), 2, true)]
        );
        assert_eq!(sent[0].1[1], tso, "the TSO frame passes as it came");
    }

    #[test]
    fn nothing_is_held_past_the_end_of_a_burst() {
        let mut b = gro_bench(CoalesceConfig::default());
        let (first, _) = b.burst(1, 1, segments(3));
        assert_eq!(
            first[0].1.iter().map(summary).collect::<Vec<_>>(),
            [(seq(0), 3, true)]
        );
        let (second, _) = b.burst(1, 1, (3..5).map(|i| segment(i, |f| f)).collect());
        assert_eq!(
            second[0].1.iter().map(summary).collect::<Vec<_>>(),
            [(seq(3), 2, true)]
        );
        // A lone segment is held for the burst and leaves as it came.
        let lone = segment(5, |f| f);
        let (third, _) = b.burst(1, 1, vec![lone.clone()]);
        assert_eq!(third[0].1, [lone]);
    }

    #[test]
    fn the_time_budget_delivers_what_waited_too_long() {
        let budget = Duration::from_micros(50);
        let mut b = gro_bench(CoalesceConfig {
            time_budget: budget,
            ..CoalesceConfig::default()
        });
        let t = b.t0 + Duration::from_secs(1);
        let forward = |b: &mut Bench, i: usize, at: Instant| {
            let frame = Datapath::check(PortId(1), segment(i, |f| f), &mut b.out).unwrap();
            b.datapath
                .forward(&b.ports, PortId(1), frame, at, &mut b.out);
        };
        b.out.clear();
        forward(&mut b, 0, t);
        forward(&mut b, 1, t + Duration::from_micros(10));
        assert!(b.out.batches().iter().all(|batch| batch.frames.is_empty()));
        // 60 µs after the first: the two held go out before the third.
        forward(&mut b, 2, t + Duration::from_micros(60));
        let held: Vec<_> = b.out.batches()[0].frames.iter().map(summary).collect();
        assert_eq!(held, [(seq(0), 2, true)]);
        b.datapath
            .end_burst(&b.ports, t + Duration::from_micros(60), &mut b.out);
        let all: Vec<_> = b.out.batches()[0].frames.iter().map(summary).collect();
        assert_eq!(all, [(seq(0), 2, true), (seq(2), 1, false)]);
    }

    #[test]
    fn partial_and_device_verified_segments_merge_too() {
        use vswitch_offload::virtio::{FLAG_DATA_VALID, FLAG_NEEDS_CSUM};
        let mut b = gro_bench(CoalesceConfig::default());
        // A guest with checksum offload but no TSO: partial checksums.
        let partial: Vec<Packet> = (0..4)
            .map(|i| {
                let f = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
                    .macs(mac(1).0, mac(2).0)
                    .dont_fragment(true)
                    .ip_id(100 + i as u16)
                    .ports(40000, 5201)
                    .seq(seq(i))
                    .ack_number(7)
                    .tcp_flags(tcp_flags::ACK)
                    .window(512)
                    .tcp_options(&TIMESTAMPS)
                    .payload_with(MSS, move |j| (i * 31 + j) as u8)
                    .partial_checksum();
                f.packet()
            })
            .collect();
        assert_eq!(partial[0].hdr.flags, FLAG_NEEDS_CSUM);
        let (sent, _) = b.burst(1, 1, partial);
        let merged = &sent[0].1[0];
        assert_eq!(summary(merged), (seq(0), 4, true));
        let mut again = Vec::new();
        crate::egress::adapt_for_egress(
            &mut EgressEngine::new(),
            merged.clone(),
            &EgressCapabilities::none(1500),
            &mut again,
        )
        .unwrap();
        assert_eq!(again, segments(4));
        // A NIC that verified them (DATA_VALID).
        let valid: Vec<Packet> = segments(4)
            .into_iter()
            .map(|mut p| {
                p.hdr.flags = FLAG_DATA_VALID;
                p
            })
            .collect();
        let (sent, _) = b.burst(1, 1, valid);
        assert_eq!(summary(&sent[0].1[0]), (seq(0), 4, true));
    }
}
