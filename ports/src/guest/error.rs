//! Why a transmitted chain was refused or a frame for the guest not written.

use vswitch_offload::adapt::AdaptError;
use vswitch_offload::virtio::HdrError;

#[cfg(doc)]
use super::{GuestPort, MAX_GUEST_FRAME};
use crate::features::FeatureError;

/// Why a transmitted descriptor chain was refused. The frame is dropped and
/// counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestTxError {
    /// The chain is shorter than the header plus an Ethernet header.
    #[error("descriptor chain: expected at least {required_len} bytes (virtio-net header and Ethernet header), found {len}")]
    ShortChain {
        /// Bytes needed.
        required_len: usize,
        /// Bytes in the chain.
        len: usize,
    },
    /// The frame after the header is longer than any valid frame.
    #[error("frame: expected at most {max} bytes, found {len}")]
    FrameTooLong {
        /// The longest frame accepted ([`MAX_GUEST_FRAME`]).
        max: usize,
        /// Length of the frame.
        len: usize,
    },
    /// The header asks for an offload the guest did not negotiate.
    #[error(transparent)]
    NotNegotiated(#[from] FeatureError),
    /// The header does not hold for the frame (reject list).
    #[error("invalid virtio-net header: {0}")]
    InvalidHeader(#[from] HdrError),
    /// The switch has not taken the frames queued before; the frame is
    /// dropped. A device model checks [`GuestPort::tx_room`] before it pops
    /// descriptors to avoid this.
    #[error("transmit queue full ({capacity} frames waiting for the switch)")]
    QueueFull {
        /// Capacity of the queue.
        capacity: usize,
    },
}

/// Why a frame for the guest could not be written to its receive buffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestRxError {
    /// Without mergeable receive buffers a frame must fit one buffer; this
    /// one does not. The frame is dropped and counted; the buffer is unused.
    #[error("receive buffer: expected at least {required_len} bytes for header and frame, found {len}; frame dropped")]
    BufferTooSmall {
        /// Header plus frame length.
        required_len: usize,
        /// Length of the buffer offered.
        len: usize,
    },
    /// The buffers offered hold less than the next frame needs. The frame
    /// stays queued (nothing is dropped): offer more buffers.
    #[error("receive buffers: expected {required_len} bytes for header and frame, found {available} in the buffers offered; frame kept")]
    OutOfBuffers {
        /// Header plus frame length.
        required_len: usize,
        /// Bytes in the buffers offered.
        available: usize,
    },
    /// With mergeable buffers the frame would need more buffers than
    /// `num_buffers` can count. The frame is dropped and counted.
    #[error("receive buffers: a frame may span at most 65535 buffers, this one needs {buffers}; frame dropped")]
    TooManyBuffers {
        /// Buffers the frame would need.
        buffers: usize,
    },
    /// The frame's offload header does not hold for its bytes. Dropped.
    #[error("invalid offload header on a frame for the guest: {0}; frame dropped")]
    InvalidHeader(#[from] HdrError),
    /// The frame could not be made to fit the guest's current receive
    /// offloads. Dropped.
    #[error("cannot adapt a frame to the guest's receive offloads: {0}; frame dropped")]
    Adapt(#[from] AdaptError),
}

impl GuestTxError {
    /// A stable name for the error counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            GuestTxError::ShortChain { .. } => "guest_tx_short_chain",
            GuestTxError::FrameTooLong { .. } => "guest_tx_frame_too_long",
            GuestTxError::NotNegotiated(_) => "guest_tx_offload_not_negotiated",
            GuestTxError::InvalidHeader(err) => err.reason().name(),
            GuestTxError::QueueFull { .. } => "guest_tx_queue_full",
        }
    }
}

impl GuestRxError {
    /// A stable name for the error counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            GuestRxError::BufferTooSmall { .. } => "guest_rx_buffer_too_small",
            GuestRxError::OutOfBuffers { .. } => "guest_rx_out_of_buffers",
            GuestRxError::TooManyBuffers { .. } => "guest_rx_too_many_buffers",
            GuestRxError::InvalidHeader(err) => err.reason().name(),
            GuestRxError::Adapt(err) => err.counter(),
        }
    }

    /// Whether the frame was dropped (every error but
    /// [`GuestRxError::OutOfBuffers`]).
    pub fn dropped_frame(&self) -> bool {
        !matches!(self, GuestRxError::OutOfBuffers { .. })
    }
}
