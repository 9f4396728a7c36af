//! Why a transmitted chain was refused or a frame for the guest not written.

use vswitch_offload::adapt::AdaptError;
use vswitch_offload::virtio::HdrError;

use super::chain::{BadDescriptor, CopyFailed, Problem};
#[cfg(doc)]
use super::{GuestPort, MAX_GUEST_FRAME};
use crate::features::FeatureError;

/// Why a transmitted descriptor chain was refused. The frame is dropped and
/// counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestTxError {
    /// A descriptor's range is not inside guest memory.
    #[error("descriptor {index} of the transmit chain: expected {len} bytes at {addr:#x} inside guest memory, found them outside")]
    OutsideMemory {
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A descriptor's address plus length passes the end of the guest
    /// address space.
    #[error("descriptor {index} of the transmit chain: {len} bytes at {addr:#x} wrap past the end of the address space")]
    LengthWraps {
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A transmit chain holds a device-writable descriptor.
    #[error("descriptor {index} of the transmit chain: expected device-readable, found write-only ({len} bytes at {addr:#x})")]
    WriteOnlyDescriptor {
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Guest memory checked before the copy could not be read: the memory
    /// map changed under the copy.
    #[error("transmit chain: reading {len} bytes at {addr:#x} failed after the range was checked")]
    CopyFailed {
        /// Guest physical address of the failed read.
        addr: u64,
        /// Its length.
        len: usize,
    },
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
    /// A descriptor of a receive chain is not inside guest memory. The
    /// frame stays queued; nothing was written. The device model returns
    /// that chain with a used length of 0 and offers the others again.
    #[error("descriptor {index} of receive chain {chain}: expected {len} bytes at {addr:#x} inside guest memory, found them outside; frame kept")]
    OutsideMemory {
        /// Position of the chain among those offered, from 0.
        chain: usize,
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A descriptor of a receive chain wraps past the end of the guest
    /// address space. The frame stays queued, as for
    /// [`OutsideMemory`](Self::OutsideMemory).
    #[error("descriptor {index} of receive chain {chain}: {len} bytes at {addr:#x} wrap past the end of the address space; frame kept")]
    LengthWraps {
        /// Position of the chain among those offered, from 0.
        chain: usize,
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A receive chain holds a device-readable descriptor. The frame stays
    /// queued, as for [`OutsideMemory`](Self::OutsideMemory).
    #[error("descriptor {index} of receive chain {chain}: expected write-only, found device-readable ({len} bytes at {addr:#x}); frame kept")]
    ReadOnlyDescriptor {
        /// Position of the chain among those offered, from 0.
        chain: usize,
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// Its guest physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Guest memory checked before the copy could not be written: the
    /// memory map changed under the copy. The frame is dropped.
    #[error("receive chain {chain}: writing {len} bytes at {addr:#x} failed after the range was checked; frame dropped")]
    CopyFailed {
        /// Position of the chain among those offered, from 0.
        chain: usize,
        /// Guest physical address of the failed write.
        addr: u64,
        /// Its length.
        len: usize,
    },
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
    /// The frame's payload, lent by the guest that sent it, could not be
    /// read. Dropped.
    #[error("{0}; frame dropped")]
    Lent(#[from] vswitch_offload::TailError),
}

impl GuestTxError {
    /// A stable name for the error counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            GuestTxError::OutsideMemory { .. } => "guest_tx_outside_memory",
            GuestTxError::LengthWraps { .. } => "guest_tx_length_wraps",
            GuestTxError::WriteOnlyDescriptor { .. } => "guest_tx_write_only_descriptor",
            GuestTxError::CopyFailed { .. } => "guest_tx_copy_failed",
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
            GuestRxError::OutsideMemory { .. } => "guest_rx_outside_memory",
            GuestRxError::LengthWraps { .. } => "guest_rx_length_wraps",
            GuestRxError::ReadOnlyDescriptor { .. } => "guest_rx_read_only_descriptor",
            GuestRxError::CopyFailed { .. } => "guest_rx_copy_failed",
            GuestRxError::BufferTooSmall { .. } => "guest_rx_buffer_too_small",
            GuestRxError::OutOfBuffers { .. } => "guest_rx_out_of_buffers",
            GuestRxError::TooManyBuffers { .. } => "guest_rx_too_many_buffers",
            GuestRxError::InvalidHeader(err) => err.reason().name(),
            GuestRxError::Adapt(err) => err.counter(),
            GuestRxError::Lent(_) => "guest_rx_lent_unreadable",
        }
    }

    /// Whether the frame was dropped: every error but
    /// [`OutOfBuffers`](Self::OutOfBuffers) and a bad chain
    /// ([`bad_chain`](Self::bad_chain)), which keep it queued.
    pub fn dropped_frame(&self) -> bool {
        !matches!(self, GuestRxError::OutOfBuffers { .. }) && self.bad_chain().is_none()
    }

    /// The position, among the chains offered, of a chain the guest got
    /// wrong ([`OutsideMemory`](Self::OutsideMemory),
    /// [`LengthWraps`](Self::LengthWraps),
    /// [`ReadOnlyDescriptor`](Self::ReadOnlyDescriptor)). The device model
    /// returns it with a used length of 0 and offers the chains after it
    /// again; nothing was written to any of them.
    pub fn bad_chain(&self) -> Option<usize> {
        match self {
            GuestRxError::OutsideMemory { chain, .. }
            | GuestRxError::LengthWraps { chain, .. }
            | GuestRxError::ReadOnlyDescriptor { chain, .. } => Some(*chain),
            _ => None,
        }
    }

    pub(super) fn from_bad_descriptor(chain: usize, bad: BadDescriptor) -> Self {
        let BadDescriptor {
            problem,
            index,
            addr,
            len,
        } = bad;
        match problem {
            Problem::OutsideMemory => GuestRxError::OutsideMemory {
                chain,
                index,
                addr,
                len,
            },
            Problem::LengthWraps => GuestRxError::LengthWraps {
                chain,
                index,
                addr,
                len,
            },
            Problem::WrongDirection => GuestRxError::ReadOnlyDescriptor {
                chain,
                index,
                addr,
                len,
            },
        }
    }

    pub(super) fn from_copy_failed(chain: usize, failed: CopyFailed) -> Self {
        GuestRxError::CopyFailed {
            chain,
            addr: failed.addr,
            len: failed.len,
        }
    }
}

impl From<BadDescriptor> for GuestTxError {
    fn from(bad: BadDescriptor) -> Self {
        let BadDescriptor {
            problem,
            index,
            addr,
            len,
        } = bad;
        match problem {
            Problem::OutsideMemory => GuestTxError::OutsideMemory { index, addr, len },
            Problem::LengthWraps => GuestTxError::LengthWraps { index, addr, len },
            Problem::WrongDirection => GuestTxError::WriteOnlyDescriptor { index, addr, len },
        }
    }
}

impl From<CopyFailed> for GuestTxError {
    fn from(failed: CopyFailed) -> Self {
        GuestTxError::CopyFailed {
            addr: failed.addr,
            len: failed.len,
        }
    }
}
