//! Statistics: atomic counters updated by the workers and plain snapshots
//! read from them.
//!
//! Counters are relaxed atomics: each is exact on its own, but a snapshot
//! taken while traffic runs is not a consistent cut across counters.
//!
//! Every counter has one writer: a port's counters have a lane per worker
//! and a worker's counters are its own, so a count is a plain load and
//! store (`bump`) rather than a locked read-modify-write, which would cost
//! more than the rest of a small frame's bookkeeping. Readers still see
//! every value whole. Counting into one lane from two threads at once would
//! lose counts: only the worker a lane belongs to counts in it.

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::drop::DropReason;
use crate::egress::EgressWork;

/// Drop counts by reason.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DropCounts {
    counts: [u64; DropReason::COUNT],
}

impl Default for DropCounts {
    fn default() -> Self {
        DropCounts {
            counts: [0; DropReason::COUNT],
        }
    }
}

impl DropCounts {
    /// Frames refused for their virtio-net header, whatever rule they broke.
    pub fn invalid_headers(&self) -> u64 {
        self.nonzero()
            .filter(|(reason, _)| reason.is_invalid_header())
            .map(|(_, count)| count)
            .sum()
    }

    /// Frames dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason.index()).copied().unwrap_or(0)
    }

    /// Frames dropped for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Frames dropped for the reasons counted on `side`: on the way in
    /// (on the ingress port) or on the way out (on the egress port).
    pub fn side_total(&self, side: crate::drop::DropSide) -> u64 {
        self.nonzero()
            .filter(|(reason, _)| reason.side() == side)
            .map(|(_, count)| count)
            .sum()
    }

    /// The reasons with a non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|reason| (reason, self.get(reason)))
            .filter(|(_, count)| *count != 0)
    }
}

impl fmt::Debug for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.nonzero().map(|(reason, count)| (reason.name(), count)))
            .finish()
    }
}

#[derive(Debug)]
struct AtomicDrops([AtomicU64; DropReason::COUNT]);

impl Default for AtomicDrops {
    fn default() -> Self {
        AtomicDrops(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl AtomicDrops {
    fn add(&self, reason: DropReason, frames: u64) {
        if let Some(counter) = self.0.get(reason.index()) {
            bump(counter, frames);
        }
    }

    fn snapshot(&self) -> DropCounts {
        DropCounts {
            counts: std::array::from_fn(|i| self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))),
        }
    }
}

/// Software offload work, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftwareWork {
    /// Frames cut into segments in software.
    pub segmented: u64,
    /// Segments made by software segmentation.
    pub segments: u64,
    /// Checksums computed in software.
    pub checksums: u64,
    /// Frames coalesced into others in software.
    pub coalesced: u64,
    /// Frames whose lent payload was copied into host memory for a port
    /// that cannot take lent frames.
    pub lent_copied: u64,
}

#[derive(Debug, Default)]
struct AtomicWork {
    segmented: AtomicU64,
    segments: AtomicU64,
    checksums: AtomicU64,
    coalesced: AtomicU64,
    lent_copied: AtomicU64,
}

impl AtomicWork {
    fn add(&self, work: &EgressWork) {
        for (counter, value) in [
            (&self.segmented, work.segmented),
            (&self.segments, work.segments),
            (&self.checksums, work.checksums),
            (&self.coalesced, work.coalesced),
            (&self.lent_copied, work.lent_copied),
        ] {
            if value != 0 {
                bump(counter, value);
            }
        }
    }

    fn snapshot(&self) -> SoftwareWork {
        SoftwareWork {
            segmented: self.segmented.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            checksums: self.checksums.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            lent_copied: self.lent_copied.load(Ordering::Relaxed),
        }
    }
}

/// One worker's share of a port's counters, alone on its cache lines so
/// workers counting for the same port do not contend.
#[derive(Debug, Default)]
#[repr(align(128))]
struct PortLane {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    not_learned: AtomicU64,
    flood_copies: AtomicU64,
    drops: AtomicDrops,
    work: AtomicWork,
}

/// The live counters of one port: one lane per worker, summed when read.
/// Only worker `i` counts in lane `i`.
#[derive(Debug)]
pub struct PortCounters {
    lanes: Box<[PortLane]>,
}

/// A snapshot of one port's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_frames: u64,
    /// Bytes sent to the port.
    pub tx_bytes: u64,
    /// Frames from the port whose source address was not learned because
    /// the port had reached its limit.
    pub not_learned: u64,
    /// Copies beyond the first of frames from the port that went to
    /// several ports (floods). The frames the switch forwarded from the
    /// port are `rx_frames` minus its ingress drops plus these: each left
    /// through an egress port or was counted as dropped there.
    pub flood_copies: u64,
    /// Drops: of frames received from the port (ingress reasons) and of
    /// frames on their way to it (egress reasons).
    pub drops: DropCounts,
    /// Software offload work done on frames sent to the port.
    pub software: SoftwareWork,
}

impl PortCounters {
    /// Counters with `lanes` lanes (one per worker; at least one).
    pub fn new(lanes: usize) -> Self {
        PortCounters {
            lanes: (0..lanes.max(1)).map(|_| PortLane::default()).collect(),
        }
    }

    fn lane(&self, lane: usize) -> &PortLane {
        // `lanes` is never empty, so the remainder is a valid index.
        &self.lanes[lane % self.lanes.len()]
    }

    /// Counts a frame received, in lane `lane`.
    pub fn received(&self, lane: usize, bytes: usize) {
        self.received_many(lane, 1, bytes);
    }

    /// Counts `frames` frames of `bytes` bytes in all received, in lane
    /// `lane`: a burst is counted once, not frame by frame.
    pub fn received_many(&self, lane: usize, frames: usize, bytes: usize) {
        let lane = self.lane(lane);
        bump(&lane.rx_frames, frames as u64);
        bump(&lane.rx_bytes, bytes as u64);
    }

    /// Counts a frame sent, in lane `lane`.
    pub fn sent(&self, lane: usize, bytes: usize) {
        self.sent_many(lane, 1, bytes);
    }

    /// Counts `frames` frames of `bytes` bytes in all sent, in lane `lane`.
    pub fn sent_many(&self, lane: usize, frames: usize, bytes: usize) {
        let lane = self.lane(lane);
        bump(&lane.tx_frames, frames as u64);
        bump(&lane.tx_bytes, bytes as u64);
    }

    /// Counts a source address not learned, in lane `lane`.
    pub fn not_learned(&self, lane: usize) {
        bump(&self.lane(lane).not_learned, 1);
    }

    /// Counts `frames` drops for `reason`, in lane `lane`.
    pub fn dropped(&self, lane: usize, reason: DropReason, frames: u64) {
        self.lane(lane).drops.add(reason, frames);
    }

    /// Counts `copies` more copies of a flooded frame, in lane `lane`.
    pub fn flooded(&self, lane: usize, copies: u64) {
        bump(&self.lane(lane).flood_copies, copies);
    }

    /// Counts software offload work, in lane `lane`.
    pub fn worked(&self, lane: usize, work: &EgressWork) {
        self.lane(lane).work.add(work);
    }

    /// A snapshot: the sum of the lanes.
    pub fn snapshot(&self) -> PortStats {
        let mut stats = PortStats::default();
        for lane in self.lanes.iter() {
            stats.rx_frames += lane.rx_frames.load(Ordering::Relaxed);
            stats.rx_bytes += lane.rx_bytes.load(Ordering::Relaxed);
            stats.tx_frames += lane.tx_frames.load(Ordering::Relaxed);
            stats.tx_bytes += lane.tx_bytes.load(Ordering::Relaxed);
            stats.not_learned += lane.not_learned.load(Ordering::Relaxed);
            stats.flood_copies += lane.flood_copies.load(Ordering::Relaxed);
            let drops = lane.drops.snapshot();
            for (total, count) in stats.drops.counts.iter_mut().zip(drops.counts) {
                *total += count;
            }
            let work = lane.work.snapshot();
            stats.software.segmented += work.segmented;
            stats.software.segments += work.segments;
            stats.software.checksums += work.checksums;
            stats.software.coalesced += work.coalesced;
            stats.software.lent_copied += work.lent_copied;
        }
        stats
    }
}

/// The live counters of one worker, alone on its cache lines. Only that
/// worker counts in them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    handed_off: AtomicU64,
    sent: AtomicU64,
    busy_ns: AtomicU64,
    drops: AtomicDrops,
    work: AtomicWork,
}

/// A snapshot of one worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Frames this worker forwarded or dropped (its share of the flows).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames this worker received from a port but handed to the worker
    /// their flow maps to.
    pub handed_off: u64,
    /// Frames this worker sent to egress ports.
    pub sent: u64,
    /// Nanoseconds this worker spent in rounds that handled frames.
    pub busy_ns: u64,
    /// Frames this worker dropped, by reason.
    pub drops: DropCounts,
    /// Software offload work this worker did.
    pub software: SoftwareWork,
}

impl WorkerCounters {
    /// Counts `frames` frames of `bytes` bytes in all handled.
    pub fn handled(&self, frames: usize, bytes: usize) {
        bump(&self.frames, frames as u64);
        bump(&self.bytes, bytes as u64);
    }

    /// Counts a frame handed to another worker.
    pub fn handed_off(&self) {
        bump(&self.handed_off, 1);
    }

    /// Counts `frames` frames sent.
    pub fn sent(&self, frames: usize) {
        bump(&self.sent, frames as u64);
    }

    /// Counts time spent in a round that handled frames.
    pub fn busy(&self, time: std::time::Duration) {
        bump(
            &self.busy_ns,
            u64::try_from(time.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Counts `frames` drops for `reason`.
    pub fn dropped(&self, reason: DropReason, frames: u64) {
        self.drops.add(reason, frames);
    }

    /// Counts software offload work.
    pub fn worked(&self, work: &EgressWork) {
        self.work.add(work);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            frames: self.frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            drops: self.drops.snapshot(),
            software: self.work.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_snapshot() {
        let port = PortCounters::new(3);
        port.received(0, 60);
        port.received(4, 1514);
        port.sent(2, 60);
        port.dropped(1, DropReason::Malformed, 2);
        port.dropped(2, DropReason::EgressQueueFull, 1);
        port.worked(
            0,
            &EgressWork {
                segmented: 1,
                segments: 45,
                checksums: 45,
                coalesced: 0,
                lent_copied: 0,
            },
        );
        let stats = port.snapshot();
        assert_eq!((stats.rx_frames, stats.rx_bytes), (2, 1574));
        assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 60));
        assert_eq!(stats.drops.get(DropReason::Malformed), 2);
        assert_eq!(stats.drops.total(), 3);
        assert_eq!(stats.drops.nonzero().count(), 2);
        assert_eq!((stats.software.segmented, stats.software.segments), (1, 45));
        assert_eq!(
            format!("{:?}", stats.drops),
            r#"{"malformed": 2, "egress_queue_full": 1}"#
        );
    }
}
