//! Counters of a guest port.

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(doc)]
use super::{GuestRxError, GuestTxError};

/// Counters of a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GuestPortStats {
    /// Frames the guest transmitted that were queued for the switch.
    pub tx_frames: u64,
    /// Their bytes (frames only, without the virtio-net header).
    pub tx_bytes: u64,
    /// Transmitted chains refused ([`GuestTxError`]).
    pub tx_errors: u64,
    /// Frames the guest transmitted that the switch never took: the guest
    /// went away first ([`GuestPort::discard_queued`](super::GuestPort::discard_queued)).
    pub tx_dropped: u64,
    /// Frames written to the guest's buffers.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Frames for the guest dropped ([`GuestRxError::dropped_frame`]), and
    /// frames still queued for it when it went away.
    pub rx_dropped: u64,
    /// Receive chains refused because the guest got them wrong
    /// ([`GuestRxError::bad_chain`]); the frame was kept.
    pub rx_bad_chains: u64,
    /// Frames for the guest the port completed or segmented itself because
    /// the guest's receive offloads changed after the switch adapted them.
    pub rx_adapted: u64,
    /// Transmitted frames whose payload was lent to the switch instead of
    /// copied (counted in `tx_frames` too): copied once, by the egress.
    pub tx_lent: u64,
    /// Lent payloads copied into host memory because the device had to
    /// stop using the guest's buffers (a ring stopped, the guest gone).
    pub tx_lent_revoked: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) tx_dropped: AtomicU64,
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) rx_bad_chains: AtomicU64,
    pub(super) rx_adapted: AtomicU64,
    pub(super) tx_lent: AtomicU64,
    pub(super) tx_lent_revoked: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

impl Counters {
    /// The counters now.
    pub(super) fn snapshot(&self) -> GuestPortStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuestPortStats {
            tx_frames: load(&self.tx_frames),
            tx_bytes: load(&self.tx_bytes),
            tx_errors: load(&self.tx_errors),
            tx_dropped: load(&self.tx_dropped),
            rx_frames: load(&self.rx_frames),
            rx_bytes: load(&self.rx_bytes),
            rx_dropped: load(&self.rx_dropped),
            rx_bad_chains: load(&self.rx_bad_chains),
            rx_adapted: load(&self.rx_adapted),
            tx_lent: load(&self.tx_lent),
            tx_lent_revoked: load(&self.tx_lent_revoked),
        }
    }
}
