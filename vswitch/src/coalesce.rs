//! Receive coalescing at egress: the TCP segments a burst sends toward a
//! port that takes large frames are merged, per flow, into GSO frames
//! ([`vswitch_offload::gro`]).
//!
//! Frames come in MTU-sized from a TAP device without offloads, a guest
//! without TSO or a NIC; a guest that negotiated `GUEST_TSO4`/`GUEST_TSO6`,
//! a TAP device with TSO or an uplink whose NIC segments takes one 64 KiB
//! frame in their place and runs its receive path once instead of 44 times.
//! The [`Datapath`](crate::datapath::Datapath) decides per frame, in its
//! egress stage, after forwarding:
//!
//! - A port takes large frames when its [`EgressCapabilities`] have `tso4`
//!   or `tso6` and `checksum` (merged frames carry a partial checksum, or
//!   `DATA_VALID` with [`GroChecksum::Complete`]). Toward any other port
//!   nothing changes.
//! - A finished TCP frame (no offload work; its checksum complete, or
//!   `DATA_VALID` from a device that verified it) or one whose only work is
//!   a partial checksum at its TCP header goes to that port's coalescer,
//!   after the MTU check every frame passes. Its checksum is verified as it
//!   is copied into a merged frame, unless a device vouched for it.
//! - Any other frame of a held flow (a GSO frame, a family the port does
//!   not segment) has that flow's held frame delivered first, then takes
//!   the usual egress path. A flow's frames therefore never reorder, and a
//!   frame that is not merged keeps its place among its flow's frames;
//!   only frames of different flows may pass each other.
//! - Everything held is delivered into the port's batch at the end of the
//!   burst ([`Datapath::end_burst`](crate::datapath::Datapath::end_burst)),
//!   or earlier when the oldest held frame has waited the
//!   [`CoalesceConfig::time_budget`] by the time the next frame is
//!   forwarded.
//!
//! Each merged frame counts as [`EgressWork::coalesced`] = segments − 1 on
//! its egress port: the frames that went into another, so that frames
//! received = frames sent + frames coalesced + frames dropped.
//!
//! Merged frames are built in the egress engine's recycled chunks; frames
//! not merged are held as they came and never copied.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use vswitch_offload::gro::{
    Coalescer, Delivered, GroChecksum, GroConfig, GroOutput, SegmentChecksum,
};
use vswitch_offload::virtio::FLAG_DATA_VALID;
use vswitch_offload::Packet;
use vswitch_offload::{CheckedFrame, EgressCapabilities, FrameLayout, GsoKind, L3Kind, L4Kind};
use vswitch_ports::buffer::ChunkPool;

use crate::datapath::{Destination, Event, Output};
use crate::egress::EgressWork;
use crate::forward::PortId;

/// Offset of the checksum in the TCP header.
const TCP_CSUM_OFFSET: usize = 16;

/// Settings of receive coalescing in a datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// Merge at all. On by default: only ports that take large frames are
    /// affected.
    pub enabled: bool,
    /// Most flows held per egress port at once (at least 1); one more
    /// flushes the oldest.
    pub max_flows: usize,
    /// Longest a held frame waits for the next segment of its flow, for a
    /// driver whose bursts are long: a frame forwarded this long after the
    /// oldest held one has everything held delivered first. The end of a
    /// burst delivers everything anyway.
    pub time_budget: Duration,
    /// The checksum state merged frames leave with: partial (`NEEDS_CSUM`,
    /// what Linux GRO hands up) or complete with `DATA_VALID`.
    pub checksum: GroChecksum,
}

impl CoalesceConfig {
    /// No coalescing: every frame leaves as forwarding made it.
    pub fn disabled() -> Self {
        CoalesceConfig {
            enabled: false,
            ..CoalesceConfig::default()
        }
    }
}

impl Default for CoalesceConfig {
    /// On, 8 flows per port (as a Linux GRO bucket), 50 µs, partial
    /// checksums.
    fn default() -> Self {
        CoalesceConfig {
            enabled: true,
            max_flows: 8,
            time_budget: Duration::from_micros(50),
            checksum: GroChecksum::Partial,
        }
    }
}

/// What the egress stage does with one frame toward a port that takes
/// large frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Into the port's coalescer, with its checksum state.
    Coalesce(FrameLayout, SegmentChecksum),
    /// The usual egress path, after the held frame of its flow (if any).
    AfterItsFlow(FrameLayout),
    /// The usual egress path: it belongs to no flow that can be held.
    Direct,
}

impl Route {
    /// The route of `frame`, whose layout is `layout`, toward a port with
    /// `caps` (which takes large frames).
    pub(crate) fn of(
        frame: &CheckedFrame,
        layout: Option<FrameLayout>,
        caps: &EgressCapabilities,
    ) -> Route {
        let Some(layout) = layout else {
            return Route::Direct;
        };
        let family = match layout.l3 {
            L3Kind::Ipv4 => caps.tso4,
            L3Kind::Ipv6 => caps.tso6,
        };
        if !family || frame.gso() != GsoKind::None {
            return Route::AfterItsFlow(layout);
        }
        let checksum = match frame.partial_checksum() {
            None if frame.hdr().flags & FLAG_DATA_VALID != 0 => SegmentChecksum::Verified,
            None => SegmentChecksum::Unverified,
            Some(partial)
                if layout.l4 == Some(L4Kind::Tcp)
                    && partial.start == layout.l4_offset
                    && partial.offset == TCP_CSUM_OFFSET =>
            {
                SegmentChecksum::Partial
            }
            Some(_) => return Route::AfterItsFlow(layout),
        };
        Route::Coalesce(layout, checksum)
    }
}

/// A frame held in a coalescer, as it came.
#[derive(Debug)]
pub(crate) struct Held(Packet);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.0.data
    }
}

/// Where a coalescer's frames go: the batch of its port, merged frames
/// built in the egress engine's chunks.
struct ToBatch<'a> {
    port: PortId,
    frames: &'a mut Vec<Packet>,
    events: &'a mut Vec<Event>,
    pool: &'a mut ChunkPool,
}

impl GroOutput<Held> for ToBatch<'_> {
    fn buffer(&mut self, len: usize) -> BytesMut {
        self.pool.take(len)
    }

    fn deliver(&mut self, frame: Delivered<Held>) {
        match frame {
            Delivered::Unchanged(Held(packet)) => self.frames.push(packet),
            Delivered::Merged(merged) => {
                let (hdr, segments) = (merged.hdr, merged.segments);
                let (buf, len) = merged.into_parts();
                let whole = buf.freeze();
                self.frames.push(Packet::with_hdr(hdr, whole.slice(..len)));
                self.pool.give_back(whole);
                self.events.push(Event::Worked {
                    port: self.port,
                    work: EgressWork {
                        coalesced: u64::from(segments.saturating_sub(1)),
                        ..EgressWork::default()
                    },
                });
            }
        }
    }
}

/// The coalescers of one datapath: one per egress port frames are held
/// for in the current burst, and empty ones kept for the next.
#[derive(Debug)]
pub(crate) struct PortCoalescers {
    config: CoalesceConfig,
    /// One per destination: a port with several transmit queues has one
    /// per queue its flows hash to, so a merged frame leaves by its flow's.
    active: Vec<(Destination, Coalescer<Held>)>,
    idle: Vec<Coalescer<Held>>,
    /// When the oldest frame held now was pushed.
    since: Option<Instant>,
}

impl PortCoalescers {
    pub(crate) fn new(config: CoalesceConfig) -> Self {
        PortCoalescers {
            config: CoalesceConfig {
                max_flows: config.max_flows.max(1),
                ..config
            },
            active: Vec::new(),
            idle: Vec::new(),
            since: None,
        }
    }

    pub(crate) fn config(&self) -> &CoalesceConfig {
        &self.config
    }

    /// Whether frames toward a port with `caps` are coalesced.
    pub(crate) fn takes(&self, caps: &EgressCapabilities) -> bool {
        self.config.enabled && caps.checksum && (caps.tso4 || caps.tso6)
    }

    /// Whether frames are held now.
    pub(crate) fn holding(&self) -> bool {
        self.since.is_some()
    }

    /// Delivers everything held if the oldest held frame has waited the
    /// time budget at `now`.
    pub(crate) fn expire(&mut self, now: Instant, pool: &mut ChunkPool, out: &mut Output) {
        if let Some(since) = self.since {
            if now.saturating_duration_since(since) >= self.config.time_budget {
                self.flush_all(pool, out);
            }
        }
    }

    /// Pushes `packet` (at the offsets of `layout`, its checksum as
    /// `checksum` says) into the coalescer toward `dest`.
    pub(crate) fn push(
        &mut self,
        dest: Destination,
        packet: Packet,
        layout: &FrameLayout,
        checksum: SegmentChecksum,
        pool: &mut ChunkPool,
        out: &mut Output,
    ) {
        let gro = self.coalescer(dest);
        let (frames, events) = out.batch_and_events(dest);
        let mut to = ToBatch {
            port: dest.port,
            frames,
            events,
            pool,
        };
        gro.push(Held(packet), layout, checksum, &mut to);
    }

    /// Notes that a frame was pushed at `now`: the time budget runs from
    /// the first one held.
    pub(crate) fn pushed_at(&mut self, now: Instant) {
        if self.since.is_none() && self.active.iter().any(|(_, gro)| gro.held_flows() > 0) {
            self.since = Some(now);
        }
    }

    /// Delivers the frame held for the flow of `frame` toward `dest`, if
    /// any, before that frame takes another way there.
    pub(crate) fn flush_flow(
        &mut self,
        dest: Destination,
        frame: &[u8],
        layout: &FrameLayout,
        pool: &mut ChunkPool,
        out: &mut Output,
    ) {
        let Some((_, gro)) = self.active.iter_mut().find(|(d, _)| *d == dest) else {
            return;
        };
        if gro.held_flows() == 0 {
            return;
        }
        let (frames, events) = out.batch_and_events(dest);
        let mut to = ToBatch {
            port: dest.port,
            frames,
            events,
            pool,
        };
        gro.flush_flow(frame, layout, &mut to);
    }

    /// Delivers everything held, into each port's batch.
    pub(crate) fn flush_all(&mut self, pool: &mut ChunkPool, out: &mut Output) {
        for (dest, mut gro) in self.active.drain(..) {
            let (frames, events) = out.batch_and_events(dest);
            let mut to = ToBatch {
                port: dest.port,
                frames,
                events,
                pool,
            };
            gro.flush_all(&mut to);
            self.idle.push(gro);
        }
        self.since = None;
    }

    fn coalescer(&mut self, dest: Destination) -> &mut Coalescer<Held> {
        let index = match self.active.iter().position(|(d, _)| *d == dest) {
            Some(index) => index,
            None => {
                let gro = self.idle.pop().unwrap_or_else(|| self.new_coalescer());
                self.active.push((dest, gro));
                self.active.len() - 1
            }
        };
        &mut self.active[index].1
    }

    fn new_coalescer(&self) -> Coalescer<Held> {
        let config = GroConfig {
            max_flows: self.config.max_flows,
            checksum: self.config.checksum,
            ..GroConfig::default()
        };
        // max_flows is at least 1 (new) and the rest are the defaults, which
        // Coalescer::new accepts; a refusal would be a bug there.
        Coalescer::new(config).unwrap_or_else(|err| unreachable!("{err}"))
    }
}
