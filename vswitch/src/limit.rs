//! Rate limits per port and direction: token buckets for bytes per second
//! and frames per second, each with a burst size and an optional one-time
//! initial burst (the model of Firecracker's and Cloud Hypervisor's
//! limiters, so that a VMM's settings carry over).
//!
//! # Directions
//!
//! - **From a port** (what its guest transmits, the switch's receive side):
//!   the limit throttles. A port out of tokens is not polled until they
//!   return, so its frames wait in its own queue and the guest sees
//!   backpressure, not loss. A burst taken from the queue is charged as a
//!   whole and may leave the bucket in debt by up to one burst; the port is
//!   polled again when the debt is paid, so over time the rate is exact.
//! - **To a port** (what the switch sends it): the limit drops, and counts
//!   [`DropReason::RateLimited`](crate::DropReason::RateLimited) on that
//!   port. A frame is taken whole or not at all; a frame larger than the
//!   whole burst is taken when the bucket is full, and the debt is paid
//!   before the next.
//!
//! # What a frame costs
//!
//! Its wire cost ([`wire_cost`]): a TSO or USO frame costs the segments it
//! will be on the wire, each with its headers, whether the switch cuts it
//! or the port does; any other frame costs one frame of its length (from
//! the destination MAC address, no FCS).
//!
//! # No lock per frame
//!
//! The state of a bucket is shared by every worker, in atomics: a port's
//! queues are polled by several workers and its flows spread over all of
//! them, so buckets per worker would have to split the rate by a guess of
//! how the traffic spreads. Each bucket is one `AtomicU64` holding the
//! time its tokens run out (the generic cell rate algorithm's theoretical
//! arrival time, in sixteenths of a nanosecond): taking tokens is one
//! compare-and-swap, on a cache line only the workers that move that
//! port's traffic touch. The receive side charges a burst at once, one
//! operation per burst. The transmit side takes tokens ahead, a sixteenth
//! of the bucket at a time, into a [`Credit`] each worker keeps per port
//! (see [`PortLimiter::admit_with`]), and charges what a burst sends to the
//! port as one batch, after adaptation
//! ([`Datapath::end_burst`](crate::datapath::Datapath::end_burst)): while
//! the credit covers the batch, a frame costs a sum and no shared cache
//! line is touched; a worker holds at most a sixteenth of the bucket
//! unspent. The one-time burst is a second atomic, read once per charge
//! and written only while it lasts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use vswitch_offload::layout::FrameLayout;
use vswitch_offload::plan::GsoKind;
use vswitch_offload::virtio::GSO_NONE;
use vswitch_offload::{CheckedFrame, Packet};

/// One token bucket: `rate` tokens a second, holding at most `burst`, and
/// `initial` more tokens once, at the start, that are not refilled.
///
/// In Firecracker's terms: `size` is `burst`, `refill_time` is
/// `burst / rate` seconds, `one_time_burst` is `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    initial: u64,
}

impl Bucket {
    /// `rate` tokens a second (at least 1), at most `burst` saved up (at
    /// least 1).
    pub fn new(rate: u64, burst: u64) -> Bucket {
        Bucket {
            rate: rate.max(1),
            burst: burst.max(1),
            initial: 0,
        }
    }

    /// `rate` tokens a second with a burst of a tenth of a second's worth.
    pub fn per_second(rate: u64) -> Bucket {
        Bucket::new(rate, rate / 10)
    }

    /// Adds a one-time burst of `tokens`, spent before the bucket's own.
    pub fn initial(mut self, tokens: u64) -> Bucket {
        self.initial = tokens;
        self
    }

    /// Tokens a second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most tokens saved up.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The one-time burst.
    pub fn initial_burst(&self) -> u64 {
        self.initial
    }
}

/// The limit of one direction: a byte bucket, a frame bucket, both or
/// neither. A frame passes when every bucket set has its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RateLimit {
    /// Bytes a second.
    pub bytes: Option<Bucket>,
    /// Frames a second.
    pub frames: Option<Bucket>,
}

impl RateLimit {
    /// No limit.
    pub fn none() -> Self {
        RateLimit::default()
    }

    /// Sets the byte bucket.
    pub fn bytes(mut self, bucket: Bucket) -> Self {
        self.bytes = Some(bucket);
        self
    }

    /// Sets the frame bucket.
    pub fn frames(mut self, bucket: Bucket) -> Self {
        self.frames = Some(bucket);
        self
    }

    /// Whether no bucket is set.
    pub fn is_none(&self) -> bool {
        self.bytes.is_none() && self.frames.is_none()
    }
}

/// The limits of a port, per direction.
///
/// ```
/// use vswitch::limit::{Bucket, PortLimits, RateLimit};
///
/// // 1 Gbit/s out of the guest, a 1 MB burst and 8 MB once at boot.
/// let limits = PortLimits::new()
///     .from_port(RateLimit::none().bytes(Bucket::new(125_000_000, 1 << 20).initial(8 << 20)));
/// assert!(!limits.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PortLimits {
    /// What the port sends into the switch: throttled.
    pub from_port: RateLimit,
    /// What the switch sends the port: dropped beyond the limit.
    pub to_port: RateLimit,
}

impl PortLimits {
    /// No limits.
    pub fn new() -> Self {
        PortLimits::default()
    }

    /// Sets the limit on what the port sends.
    pub fn from_port(mut self, limit: RateLimit) -> Self {
        self.from_port = limit;
        self
    }

    /// Sets the limit on what the port is sent.
    pub fn to_port(mut self, limit: RateLimit) -> Self {
        self.to_port = limit;
        self
    }

    /// Whether neither direction is limited.
    pub fn is_none(&self) -> bool {
        self.from_port.is_none() && self.to_port.is_none()
    }
}

/// What a frame costs on the wire: (frames, bytes). See the module docs.
#[inline]
pub fn wire_cost(frame: &CheckedFrame) -> (u64, u64) {
    cost_of(frame.len() as u64, frame.gso(), || frame.layout())
}

/// [`wire_cost`] of a frame not held as a [`CheckedFrame`]: one ready to
/// leave (adapted, or built by coalescing) or one just received, before
/// its check. Only a GSO frame's header is validated, for the layout its
/// segments repeat; a frame whose header does not validate costs one
/// frame of its length, as it would if the check refused it.
#[inline]
pub fn packet_wire_cost(packet: &Packet) -> (u64, u64) {
    let len = packet.len() as u64;
    if packet.hdr.gso_type == GSO_NONE {
        return (1, len);
    }
    match packet.hdr.validate_headers(&packet.data, packet.len()) {
        Ok(plan) => cost_of(len, plan.gso(), || plan.layout().copied()),
        Err(_) => (1, len),
    }
}

/// [`packet_wire_cost`] summed over `packets`: a burst received, or a
/// batch about to leave. A burst without a GSO frame (the common case)
/// costs one frame a packet and its bytes, summed in one pass that reads
/// each packet's length and GSO type; only a burst with one is costed
/// frame by frame.
#[inline]
pub fn packets_wire_cost(packets: &[Packet]) -> (u64, u64) {
    packets_wire_cost_and_len(packets).0
}

/// [`packets_wire_cost`], and the sum of the packets' lengths (what the
/// port counters count) from the same pass.
#[inline]
pub(crate) fn packets_wire_cost_and_len(packets: &[Packet]) -> ((u64, u64), u64) {
    let (mut bytes, mut gso) = (0u64, GSO_NONE);
    // Four at a time, so the loop's own counting is paid once for four
    // packets wherever it is inlined.
    let mut quads = packets.chunks_exact(4);
    for quad in &mut quads {
        bytes += quad.iter().map(|p| p.len() as u64).sum::<u64>();
        gso |= quad.iter().fold(GSO_NONE, |gso, p| gso | p.hdr.gso_type);
    }
    for packet in quads.remainder() {
        bytes += packet.len() as u64;
        gso |= packet.hdr.gso_type;
    }
    if gso == GSO_NONE {
        return ((packets.len() as u64, bytes), bytes);
    }
    (packets_wire_cost_with_gso(packets), bytes)
}

/// [`packets_wire_cost`] of packets among which a GSO frame is.
#[cold]
#[inline(never)]
fn packets_wire_cost_with_gso(packets: &[Packet]) -> (u64, u64) {
    packets
        .iter()
        .map(packet_wire_cost)
        .fold((0, 0), |(f, b), (pf, pb)| (f + pf, b + pb))
}

/// The wire cost of a frame of `len` bytes asking for `gso`, whose
/// layout `layout` gives (asked for only when `gso` cuts the frame).
#[inline]
fn cost_of(len: u64, gso: GsoKind, layout: impl FnOnce() -> Option<FrameLayout>) -> (u64, u64) {
    // Most frames: one discriminant compared.
    if gso == GsoKind::None {
        return (1, len);
    }
    let Some(layout) = layout() else {
        return (1, len);
    };
    let (per_segment, headers) = match gso {
        GsoKind::None => return (1, len),
        GsoKind::Tcp { mss, .. } => (u64::from(mss), layout.header_len() as u64),
        GsoKind::UdpL4 { size } => (u64::from(size), layout.header_len() as u64),
        // IP fragments: the headers up to IP repeat, the IP payload (the
        // UDP header with it) is cut in multiples of 8.
        GsoKind::Ufo { size } => ((u64::from(size) & !7).max(8), layout.l4_offset as u64),
    };
    let payload = len.saturating_sub(headers);
    let segments = payload.div_ceil(per_segment.max(1)).max(1);
    (segments, payload + segments * headers)
}

/// Sixteenths of a nanosecond in a second: the bucket clock's unit.
const UNITS_PER_SECOND: u128 = 16_000_000_000;

/// Clock units (sixteenths of a nanosecond) from `epoch` to `now`, 0 if
/// `now` is earlier; saturates after about 36 years.
fn units_since(epoch: Instant, now: Instant) -> u64 {
    let elapsed = now.saturating_duration_since(epoch);
    elapsed
        .as_secs()
        .saturating_mul(UNITS_PER_SECOND as u64)
        .saturating_add(u64::from(elapsed.subsec_nanos()) * 16)
}

/// The shared state of one [`Bucket`].
#[derive(Debug)]
struct AtomicBucket {
    /// The bucket's depth in clock units: how long it takes to fill.
    depth: u64,
    /// The burst, in tokens.
    depth_tokens: u64,
    /// Clock units a token takes to come back, in 32.32 fixed point, so a
    /// charge multiplies instead of dividing.
    per_token: u128,
    /// When the tokens run out (in debt when later than now), on the clock
    /// of [`AtomicBucket::clock`]. Starts at 0: full.
    empty_at: AtomicU64,
    /// What is left of the one-time burst.
    initial: AtomicU64,
}

impl AtomicBucket {
    fn new(config: Bucket) -> Self {
        AtomicBucket {
            depth: Self::units(config.burst, config.rate),
            depth_tokens: config.burst,
            per_token: (UNITS_PER_SECOND << 32) / u128::from(config.rate.max(1)),
            empty_at: AtomicU64::new(0),
            initial: AtomicU64::new(config.initial),
        }
    }

    fn units(tokens: u64, rate: u64) -> u64 {
        let units = u128::from(tokens) * UNITS_PER_SECOND / u128::from(rate.max(1));
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// The clock units `tokens` take to come back (within a unit).
    fn price(&self, tokens: u64) -> u64 {
        u64::try_from((u128::from(tokens) * self.per_token) >> 32).unwrap_or(u64::MAX)
    }

    /// The clock at `units` since the limiter's epoch
    /// ([`PortLimiter::units`], computed once for every bucket of a port),
    /// plus the depth, so that an `empty_at` of 0 is a full bucket and the
    /// arithmetic stays unsigned.
    fn clock(&self, units: u64) -> u64 {
        units.saturating_add(self.depth)
    }

    /// Takes from the one-time burst what it holds of `cost` (all of it
    /// when `whole_only`, or nothing); returns what is left to pay.
    fn spend_initial(&self, cost: u64, whole_only: bool) -> u64 {
        let mut left = self.initial.load(Ordering::Relaxed);
        while left > 0 {
            if whole_only && left < cost {
                return cost;
            }
            let spent = left.min(cost);
            match self.initial.compare_exchange_weak(
                left,
                left - spent,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return cost - spent,
                Err(now) => left = now,
            }
        }
        cost
    }

    /// The tokens a worker takes ahead at a time: a sixteenth of the burst.
    fn chunk(&self, cost: u64) -> u64 {
        (self.depth_tokens / 16).max(cost)
    }

    /// Whether the bucket is out of debt at `clock`.
    fn ready(&self, clock: u64) -> bool {
        self.initial.load(Ordering::Relaxed) > 0 || self.empty_at.load(Ordering::Relaxed) <= clock
    }

    /// Takes `cost` tokens if they are there (or the bucket is full):
    /// whether it did.
    fn try_take(&self, cost: u64, clock: u64) -> bool {
        let cost = self.spend_initial(cost, true);
        if cost == 0 {
            return true;
        }
        let price = self.price(cost);
        let floor = clock - self.depth;
        let mut empty_at = self.empty_at.load(Ordering::Relaxed);
        loop {
            let from = empty_at.max(floor);
            if from.saturating_add(price.min(self.depth)) > clock {
                return false;
            }
            match self.empty_at.compare_exchange_weak(
                empty_at,
                from.saturating_add(price),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => empty_at = now,
            }
        }
    }

    /// Charges `cost` tokens, into debt if need be.
    fn charge(&self, cost: u64, clock: u64) {
        let cost = self.spend_initial(cost, false);
        if cost == 0 {
            return;
        }
        let price = self.price(cost);
        let floor = clock - self.depth;
        let _ = self
            .empty_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |empty_at| {
                Some(empty_at.max(floor).saturating_add(price))
            });
    }

    /// Gives back `cost` tokens taken by [`AtomicBucket::try_take`] for a
    /// frame another bucket then refused.
    fn refund(&self, cost: u64) {
        let price = self.price(cost);
        let _ = self
            .empty_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |empty_at| {
                Some(empty_at.saturating_sub(price))
            });
    }
}

/// The running buckets of one direction.
#[derive(Debug, Default)]
struct DirectionState {
    bytes: Option<AtomicBucket>,
    frames: Option<AtomicBucket>,
}

impl DirectionState {
    fn new(limit: &RateLimit) -> Self {
        DirectionState {
            bytes: limit.bytes.map(AtomicBucket::new),
            frames: limit.frames.map(AtomicBucket::new),
        }
    }

    fn is_none(&self) -> bool {
        self.bytes.is_none() && self.frames.is_none()
    }

    fn buckets(&self) -> impl Iterator<Item = &AtomicBucket> {
        self.bytes.iter().chain(self.frames.iter())
    }
}

/// A [`PortLimiter`]'s clock read at one instant ([`PortLimiter::clock`]),
/// for the calls a poll makes at that instant: the conversion from an
/// `Instant` is done once. It belongs to the limiter that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterClock(u64);

/// The running limits of one port, shared by every worker (see the
/// module docs for how).
#[derive(Debug)]
pub struct PortLimiter {
    limits: PortLimits,
    /// The clock's origin: the first time the limiter was asked.
    epoch: OnceLock<Instant>,
    from_port: DirectionState,
    to_port: DirectionState,
}

impl PortLimiter {
    /// Full buckets for `limits`.
    pub fn new(limits: PortLimits) -> Self {
        PortLimiter {
            limits,
            epoch: OnceLock::new(),
            from_port: DirectionState::new(&limits.from_port),
            to_port: DirectionState::new(&limits.to_port),
        }
    }

    /// The limits this limiter enforces.
    pub fn limits(&self) -> &PortLimits {
        &self.limits
    }

    /// Whether frames toward the port are limited (a bucket on its
    /// transmit side).
    pub fn limits_to_port(&self) -> bool {
        !self.to_port.is_none()
    }

    fn epoch(&self, now: Instant) -> Instant {
        *self.epoch.get_or_init(|| now)
    }

    /// Clock units from the epoch to `now`, for [`AtomicBucket::clock`].
    fn units(&self, now: Instant) -> u64 {
        units_since(self.epoch(now), now)
    }

    /// Whether frames from the port are limited (a bucket on its receive
    /// side).
    pub fn limits_from_port(&self) -> bool {
        !self.from_port.is_none()
    }

    /// The limiter's clock at `now`, read once for the calls a poll makes
    /// at that instant ([`PortLimiter::may_receive_at`],
    /// [`PortLimiter::charge_received_at`]).
    pub fn clock(&self, now: Instant) -> LimiterClock {
        LimiterClock(self.units(now))
    }

    /// Whether the port may be polled at `now`: every bucket of its
    /// receive side is out of debt.
    pub fn may_receive(&self, now: Instant) -> bool {
        !self.limits_from_port() || self.may_receive_at(self.clock(now))
    }

    /// [`PortLimiter::may_receive`] at a clock already read.
    pub fn may_receive_at(&self, clock: LimiterClock) -> bool {
        self.from_port
            .buckets()
            .all(|bucket| bucket.ready(bucket.clock(clock.0)))
    }

    /// Charges frames taken from the port: `frames` and `bytes` of wire
    /// cost ([`wire_cost`], summed over a burst).
    pub fn charge_received(&self, frames: u64, bytes: u64, now: Instant) {
        if self.limits_from_port() {
            self.charge_received_at(frames, bytes, self.clock(now));
        }
    }

    /// [`PortLimiter::charge_received`] at a clock already read.
    pub fn charge_received_at(&self, frames: u64, bytes: u64, clock: LimiterClock) {
        // An empty poll (a queue found empty) charges nothing.
        if frames == 0 && bytes == 0 {
            return;
        }
        let units = clock.0;
        if let Some(bucket) = &self.from_port.bytes {
            bucket.charge(bytes, bucket.clock(units));
        }
        if let Some(bucket) = &self.from_port.frames {
            bucket.charge(frames, bucket.clock(units));
        }
    }

    /// Whether a frame of wire cost (`frames`, `bytes`) may be sent to the
    /// port at `now`; if so its tokens are taken.
    pub fn admit(&self, frames: u64, bytes: u64, now: Instant) -> bool {
        if self.to_port.is_none() {
            return true;
        }
        let units = self.units(now);
        if let Some(bucket) = &self.to_port.bytes {
            if !bucket.try_take(bytes, bucket.clock(units)) {
                return false;
            }
        }
        if let Some(bucket) = &self.to_port.frames {
            if !bucket.try_take(frames, bucket.clock(units)) {
                if let Some(bytes_bucket) = &self.to_port.bytes {
                    bytes_bucket.refund(bytes);
                }
                return false;
            }
        }
        true
    }
}

/// Tokens a worker took ahead from one port's transmit-side buckets and
/// has not spent yet (see [`PortLimiter::admit_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    bytes: u64,
    frames: u64,
}

impl PortLimiter {
    /// [`PortLimiter::admit`] spending `credit` first: when it runs short,
    /// a sixteenth of each bucket's burst (or the frame's cost, if more) is
    /// taken ahead into it with one operation on the shared bucket, and
    /// when the bucket does not hold that much, only the frame's cost.
    /// Keep one credit per worker and port.
    ///
    /// A direction without a bucket gives unbounded credit for it, so a
    /// frame that the credit covers costs two comparisons and two
    /// subtractions, whatever buckets are set.
    #[inline]
    pub fn admit_with(&self, credit: &mut Credit, frames: u64, bytes: u64, now: Instant) -> bool {
        Self::spend_credit(credit, frames, bytes)
            || self.refill_and_admit(credit, frames, bytes, now)
    }

    /// Spends `credit` on a cost only if it covers it all; never touches
    /// the shared buckets. For a batch of frames: one that the credit
    /// does not cover goes frame by frame through
    /// [`PortLimiter::admit_with`], so that no batch passes as a whole
    /// where its frames alone would not (a frame larger than the burst is
    /// taken when the bucket is full; a batch is not one frame).
    #[inline]
    pub fn spend_credit(credit: &mut Credit, frames: u64, bytes: u64) -> bool {
        if credit.bytes >= bytes && credit.frames >= frames {
            credit.bytes -= bytes;
            credit.frames -= frames;
            return true;
        }
        false
    }

    /// [`PortLimiter::admit_with`] when the credit does not cover the
    /// frame: tokens taken ahead from the shared buckets.
    #[cold]
    fn refill_and_admit(&self, credit: &mut Credit, frames: u64, bytes: u64, now: Instant) -> bool {
        if self.to_port.bytes.is_none() {
            credit.bytes = u64::MAX;
        }
        if self.to_port.frames.is_none() {
            credit.frames = u64::MAX;
        }
        let short_bytes = credit.bytes < bytes;
        let short_frames = credit.frames < frames;
        if short_bytes || short_frames {
            let units = self.units(now);
            let take = |bucket: &AtomicBucket, need: u64| -> Option<u64> {
                let clock = bucket.clock(units);
                let chunk = bucket.chunk(need);
                if bucket.try_take(chunk, clock) {
                    Some(chunk)
                } else if chunk > need && bucket.try_take(need, clock) {
                    Some(need)
                } else {
                    None
                }
            };
            let mut got_bytes = 0;
            if short_bytes {
                if let Some(bucket) = &self.to_port.bytes {
                    match take(bucket, bytes - credit.bytes) {
                        Some(got) => got_bytes = got,
                        None => return false,
                    }
                }
            }
            if short_frames {
                if let Some(bucket) = &self.to_port.frames {
                    match take(bucket, frames - credit.frames) {
                        Some(got) => credit.frames += got,
                        None => {
                            // Kept for the next frame rather than given back.
                            credit.bytes += got_bytes;
                            return false;
                        }
                    }
                }
            }
            credit.bytes += got_bytes;
        }
        credit.bytes -= bytes;
        credit.frames -= frames;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vswitch_offload::testing::FrameBuilder;
    use vswitch_offload::Packet;

    use super::*;

    fn ms(t0: Instant, millis: u64) -> Instant {
        t0 + Duration::from_millis(millis)
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        // 1000 frames a second, 10 saved up.
        let limiter = PortLimiter::new(
            PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(1000, 10))),
        );
        let taken = (0..100).filter(|_| limiter.admit(1, 64, t0)).count();
        assert_eq!(taken, 10);
        // 5 ms later, 5 more; a second later, the burst again, not more.
        let taken = (0..100).filter(|_| limiter.admit(1, 64, ms(t0, 5))).count();
        assert_eq!(taken, 5);
        let taken = (0..100)
            .filter(|_| limiter.admit(1, 64, ms(t0, 1005)))
            .count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let bucket = Bucket::new(1000, 10).initial(50);
        let limiter = PortLimiter::new(PortLimits::new().to_port(RateLimit::none().bytes(bucket)));
        let taken = (0..100).filter(|_| limiter.admit(1, 1, t0)).count();
        assert_eq!(taken, 60);
        let taken = (0..100)
            .filter(|_| limiter.admit(1, 1, ms(t0, 10_000)))
            .count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn a_frame_larger_than_the_burst_passes_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        // 1000 bytes a second, 100 saved up; a 300-byte frame.
        let limiter = PortLimiter::new(
            PortLimits::new().to_port(RateLimit::none().bytes(Bucket::new(1000, 100))),
        );
        assert!(limiter.admit(1, 300, t0));
        assert!(!limiter.admit(1, 1, ms(t0, 150)));
        // The debt (200 bytes) is paid after 200 ms; 1 byte after 201.
        assert!(limiter.admit(1, 1, ms(t0, 201)));
    }

    #[test]
    fn a_frame_refused_by_one_bucket_costs_the_other_nothing() {
        let t0 = Instant::now();
        let limit = RateLimit::none()
            .bytes(Bucket::new(1, 1000))
            .frames(Bucket::new(1, 1));
        let limiter = PortLimiter::new(PortLimits::new().to_port(limit));
        assert!(limiter.admit(1, 100, t0));
        for _ in 0..20 {
            assert!(!limiter.admit(1, 100, t0));
        }
        // The byte bucket (1 byte a second) still holds 900: a frame token
        // later, 900 bytes pass.
        assert!(limiter.admit(1, 900, ms(t0, 1000)));
    }

    #[test]
    fn the_receive_side_goes_into_debt_and_waits_it_out() {
        let t0 = Instant::now();
        // 1 MB/s, 10 kB burst.
        let limit = RateLimit::none().bytes(Bucket::new(1_000_000, 10_000));
        let limiter = PortLimiter::new(PortLimits::new().from_port(limit));
        assert!(limiter.may_receive(t0));
        // A burst of 30 kB: 20 kB of debt, 20 ms to pay.
        limiter.charge_received(20, 30_000, t0);
        assert!(!limiter.may_receive(ms(t0, 19)));
        assert!(limiter.may_receive(ms(t0, 20)));
    }

    #[test]
    fn a_clock_read_once_answers_as_the_instant_it_was_read_at() {
        let t0 = Instant::now();
        let limit = RateLimit::none().bytes(Bucket::new(1_000_000, 10_000));
        let limiter = PortLimiter::new(PortLimits::new().from_port(limit));
        assert!(limiter.limits_from_port() && !limiter.limits_to_port());
        // Read at t0 (the limiter's epoch), the same debt as above.
        let clock = limiter.clock(t0);
        assert!(limiter.may_receive_at(clock));
        limiter.charge_received_at(20, 30_000, clock);
        assert!(!limiter.may_receive_at(clock));
        assert!(!limiter.may_receive_at(limiter.clock(ms(t0, 19))));
        assert!(limiter.may_receive_at(limiter.clock(ms(t0, 20))));
        assert_eq!(limiter.clock(ms(t0, 20)), limiter.clock(ms(t0, 20)));
        // A port limited the other way only is never held back.
        let other = PortLimiter::new(PortLimits::new().to_port(limit));
        assert!(!other.limits_from_port());
        other.charge_received(20, 30_000, t0);
        assert!(other.may_receive(ms(t0, 1)));
    }

    #[test]
    fn credit_taken_ahead_admits_the_same_frames() {
        let t0 = Instant::now();
        // 1600 frames a second, 160 saved up: credit comes 10 at a time.
        let limit = RateLimit::none()
            .frames(Bucket::new(1600, 160))
            .bytes(Bucket::new(1_600_000, 160_000));
        let limiter = PortLimiter::new(PortLimits::new().to_port(limit));
        let mut credit = Credit::default();
        let taken = (0..1000)
            .filter(|_| limiter.admit_with(&mut credit, 1, 1000, t0))
            .count();
        assert_eq!(taken, 160);
        // A second later the bucket is full again: 160 more, not more.
        let taken = (0..1000)
            .filter(|_| limiter.admit_with(&mut credit, 1, 1000, ms(t0, 1000)))
            .count();
        assert_eq!(taken, 160);
        // Credit on one worker, none on another: the bucket is shared.
        let mut other = Credit::default();
        assert!(limiter.admit_with(&mut credit, 1, 1000, ms(t0, 2000)));
        let taken = (0..1000)
            .filter(|_| limiter.admit_with(&mut other, 1, 1000, ms(t0, 2000)))
            .count();
        assert_eq!(taken, 150, "the first worker holds 9 frames of credit");
    }

    #[test]
    fn credit_for_one_bucket_leaves_the_other_unbounded() {
        let t0 = Instant::now();
        // Bytes only: frames are never what stops a frame.
        let bytes = RateLimit::none().bytes(Bucket::new(1_600_000, 160_000));
        let limiter = PortLimiter::new(PortLimits::new().to_port(bytes));
        let mut credit = Credit::default();
        let taken = (0..1000)
            .filter(|_| limiter.admit_with(&mut credit, 1, 1000, t0))
            .count();
        assert_eq!(taken, 160);
        // Frames only: bytes are never what stops a frame, however large.
        let frames = RateLimit::none().frames(Bucket::new(1600, 160));
        let limiter = PortLimiter::new(PortLimits::new().to_port(frames));
        let mut credit = Credit::default();
        let taken = (0..1000)
            .filter(|_| limiter.admit_with(&mut credit, 1, 1 << 40, t0))
            .count();
        assert_eq!(taken, 160);
        // No bucket at all: everything passes.
        let limiter = PortLimiter::new(PortLimits::new());
        let mut credit = Credit::default();
        assert!((0..1000).all(|_| limiter.admit_with(&mut credit, 1 << 20, 1 << 40, t0)));
    }

    #[test]
    fn a_tso_frame_costs_its_segments() {
        let tso = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .payload_with(10_000, |i| i as u8)
            .gso(1448);
        let frame = CheckedFrame::check(tso.packet()).unwrap();
        // 7 segments of 54 bytes of headers each, and the 10 000 bytes.
        assert_eq!(wire_cost(&frame), (7, 10_000 + 7 * 54));
        let plain = CheckedFrame::check(Packet::plain(vec![0u8; 60])).unwrap();
        assert_eq!(wire_cost(&plain), (1, 60));
        // The same costs for the frames as they leave.
        assert_eq!(packet_wire_cost(frame.packet()), (7, 10_000 + 7 * 54));
        assert_eq!(packet_wire_cost(plain.packet()), (1, 60));
    }

    #[test]
    fn a_burst_costs_the_sum_of_its_frames() {
        let tso = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .payload_with(10_000, |i| i as u8)
            .gso(1448)
            .packet();
        let plain = Packet::plain(vec![0u8; 60]);
        let odd = Packet::plain(vec![0u8; 1514]);
        assert_eq!(packets_wire_cost(&[]), (0, 0));
        let burst = [plain.clone(), odd.clone(), plain.clone()];
        assert_eq!(packets_wire_cost(&burst), (3, 60 + 1514 + 60));
        // One GSO frame anywhere in the burst, the last included, costs
        // its segments.
        for at in 0..3 {
            let mut burst = vec![plain.clone(), odd.clone()];
            burst.insert(at, tso.clone());
            assert_eq!(
                packets_wire_cost(&burst),
                (1 + 1 + 7, 60 + 1514 + 10_000 + 7 * 54),
                "GSO frame at {at}"
            );
        }
    }
}
