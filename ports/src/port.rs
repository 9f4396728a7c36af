//! What a port is: queues, declared capabilities, and the two calls the
//! switch makes on it.
//!
//! # Why batches of [`Packet`] and not smoltcp-style tokens
//!
//! smoltcp's `phy::Device` hands out an `RxToken`/`TxToken` so that the
//! device owns the buffers and the stack never allocates: the token lends a
//! buffer for the duration of a closure. Two things differ here:
//!
//! * The switch keeps heterogeneous ports in one table and swaps that table
//!   while traffic runs, so the trait must be object safe (`Arc<dyn Port>`).
//!   Token traits with generic associated types are not.
//! * A frame is already an owned, reference-counted buffer
//!   ([`bytes::Bytes`] inside [`Packet`]). The port allocates it when the
//!   frame arrives from the outside (as a device fills its own ring); the
//!   switch only moves it and, when flooding, clones the handle (a reference
//!   count, not a copy).
//!
//! So a [`Packet`] plays the role of the token, and [`Port::receive`] fills a
//! caller-owned vector that the caller reuses from one burst to the next:
//! no allocation per frame on the switch side, and one dynamic call per
//! burst rather than per frame.

use vswitch_offload::{EgressCapabilities, Packet};

/// What a port declares about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCapabilities {
    /// What the port's far side completes by itself on egress (checksums,
    /// segmentation) and its MTU.
    pub egress: EgressCapabilities,
    /// Number of receive queues (frames from the outside into the switch).
    /// At least 1.
    pub rx_queues: usize,
    /// Number of transmit queues (frames from the switch to the outside).
    /// At least 1.
    pub tx_queues: usize,
}

/// Why a port could not hand over frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The queue index is not one of the port's queues.
    #[error("no {direction} queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// `"rx"` or `"tx"`.
        direction: &'static str,
        /// The queue asked for.
        queue: usize,
        /// How many queues of that direction the port has.
        queues: usize,
    },
    /// The outside end of the port is gone and the queue is empty: no frame
    /// will ever arrive on it again.
    #[error("rx queue {queue} is disconnected: its outside end was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
    },
}

/// Why a frame was not accepted for sending. The frame is handed back so the
/// caller decides whether to retry or to count it as dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The transmit queue is full; the frame may be retried later.
    #[error("tx queue {queue} is full (capacity {capacity})")]
    Full {
        /// The queue asked for.
        queue: usize,
        /// Its capacity in frames.
        capacity: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
    /// The outside end of the port is gone; retrying cannot succeed.
    #[error("tx queue {queue} is disconnected: its outside end was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
    /// The queue index is not one of the port's queues.
    #[error("no tx queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// The queue asked for.
        queue: usize,
        /// How many transmit queues the port has.
        queues: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
}

impl SendError {
    /// The frame that was not sent.
    pub fn into_packet(self) -> Packet {
        match self {
            SendError::Full { packet, .. }
            | SendError::Disconnected { packet, .. }
            | SendError::NoSuchQueue { packet, .. } => packet,
        }
    }

    /// Whether a later retry may succeed (the queue was only full).
    pub fn is_full(&self) -> bool {
        matches!(self, SendError::Full { .. })
    }
}

/// A switch port: a set of receive and transmit queues with declared
/// capabilities.
///
/// Both calls take `&self` and may be called from several threads at once,
/// on different queues or on the same one; an implementation keeps each
/// queue first-in first-out.
pub trait Port: Send + Sync {
    /// A short name for logs and statistics.
    fn name(&self) -> &str;

    /// The port's queues and egress capabilities. Constant for the life of
    /// the port.
    fn capabilities(&self) -> PortCapabilities;

    /// Moves up to `max` waiting frames of receive queue `queue` to the end
    /// of `batch`, in arrival order, and returns how many were moved
    /// (0 when the queue is empty). Never blocks.
    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError>;

    /// Queues one frame for the outside on transmit queue `queue`. Never
    /// blocks: a full queue hands the frame back in [`SendError::Full`].
    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError>;
}
