//! Transmit: the guest's descriptor chains into frames for the switch.

use std::sync::PoisonError;

use std::ops::Deref;

use bytes::{Bytes, BytesMut};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vswitch_offload::virtio::HDR_LEN_V1;
use vswitch_offload::{Packet, VirtioNetHdr};

use crate::buffer::ChunkPool;

use super::chain::{self, Direction};
use super::stats::bump;
use super::{GuestPort, GuestQueue, GuestTxError, MAX_GUEST_FRAME, MIN_GUEST_FRAME};

impl GuestPort {
    /// Checks the length of a chain (header and frame) and returns the
    /// header's length.
    fn check_chain_len(&self, total: usize) -> Result<usize, GuestTxError> {
        let header_len = self.format.size();
        if total < header_len + MIN_GUEST_FRAME {
            return Err(GuestTxError::ShortChain {
                required_len: header_len + MIN_GUEST_FRAME,
                len: total,
            });
        }
        let frame_len = total - header_len;
        if frame_len > MAX_GUEST_FRAME {
            return Err(GuestTxError::FrameTooLong {
                max: MAX_GUEST_FRAME,
                len: frame_len,
            });
        }
        Ok(header_len)
    }

    /// Parses the header out of its host copy and checks it against the
    /// negotiated offloads.
    fn parse_header(&self, raw: &[u8]) -> Result<VirtioNetHdr, GuestTxError> {
        let (mut hdr, _) = VirtioNetHdr::parse(raw, self.format)?;
        // num_buffers means nothing on transmit.
        hdr.num_buffers = 0;
        self.host.permits(&hdr)?;
        Ok(hdr)
    }
}

impl GuestQueue<'_> {
    /// Takes one transmitted descriptor chain out of guest memory `mem`:
    /// the virtio-net header followed by the frame, split across device-
    /// readable descriptors in any way.
    ///
    /// Each descriptor is read once out of the descriptor table and
    /// checked (device-readable, inside `mem`); then header and frame are
    /// copied once, with volatile reads, into one host buffer. The header
    /// is parsed from that copy and checked against the negotiated host
    /// offloads and the frame; the frame is sliced out of the same buffer
    /// and queued for the switch. The guest may rewrite its buffers
    /// afterwards without changing what was checked.
    ///
    /// The device model returns the chain to the guest (used length 0)
    /// whatever the result; an error is counted in
    /// [`GuestPortStats::tx_errors`](super::GuestPortStats::tx_errors).
    pub fn transmit_chain<M, T>(
        &self,
        mem: &M,
        chain: DescriptorChain<T>,
    ) -> Result<(), GuestTxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let result = self
            .copy_chain(mem, chain)
            .and_then(|bytes| self.take_chain(bytes));
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    /// Like [`transmit_chain`](Self::transmit_chain) for a chain already
    /// in host memory the caller owns, as one buffer: header and frame.
    /// The frame is sliced out of it, not copied.
    pub fn transmit_bytes(&self, chain: Bytes) -> Result<(), GuestTxError> {
        let result = self
            .port
            .check_chain_len(chain.len())
            .and_then(|_| self.take_chain(chain));
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    /// Walks the chain once and copies it, header and frame, into one host
    /// buffer: a chunk of the pair's pool for a large frame (no allocation
    /// or zeroing once the pool is warm), the next bytes of the pair's
    /// current small-frame chunk for a small one.
    fn copy_chain<M, T>(&self, mem: &M, chain: DescriptorChain<T>) -> Result<Bytes, GuestTxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let mut tx = self.pair.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let TxState {
            segments,
            pool,
            small,
        } = &mut *tx;
        segments.clear();
        let mut regions = chain::Regions::new(mem);
        let total = chain::collect(&mut regions, chain, Direction::DeviceReads, segments)?;
        self.port.check_chain_len(total)?;
        if total < POOLED_CHAIN {
            // Small frames are cut one after another from a shared chunk:
            // one allocation per chunk instead of one buffer (and one
            // shared-count block, made when the frame is sliced off its
            // header) per frame. A chunk whose frames are all gone is
            // taken back whole; one still in use is left to its frames.
            small.clear();
            if small.capacity() < total && !small.try_reclaim(SMALL_CHUNK) {
                *small = BytesMut::with_capacity(SMALL_CHUNK);
            }
            small.resize(total, 0);
            let copied = chain::read_into(&mut regions, segments, small)?;
            let mut frame = small.split_to(total);
            frame.truncate(copied);
            return Ok(frame.freeze());
        }
        let mut chunk = pool.take(total);
        let copied = chain::read_into(&mut regions, segments, &mut chunk[..total])?;
        let whole = chunk.freeze();
        let frame = whole.slice(..copied);
        pool.give_back(whole);
        Ok(frame)
    }

    /// Header and frame in host memory, of a length already checked:
    /// parses and checks the header, then queues the frame.
    fn take_chain(&self, bytes: Bytes) -> Result<(), GuestTxError> {
        let header_len = self.port.format.size();
        let hdr = self
            .port
            .parse_header(bytes.get(..header_len).unwrap_or_default())?;
        self.queue(hdr, bytes.slice(header_len..))
    }

    fn queue(&self, hdr: VirtioNetHdr, frame: Bytes) -> Result<(), GuestTxError> {
        if hdr.has_offload_work() {
            hdr.validate(&frame)?;
        }
        let len = frame.len();
        match self.pair.from_guest.push(Packet::with_hdr(hdr, frame)) {
            Ok(()) => {
                bump(&self.port.counters.tx_frames, 1);
                bump(&self.port.counters.tx_bytes, len);
                Ok(())
            }
            // Marked as found full: the switch's next take notifies.
            Err(_) => Err(GuestTxError::QueueFull {
                capacity: self.port.tx_capacity,
            }),
        }
    }
}

/// Chains of at least this many bytes are copied into pooled chunks.
const POOLED_CHAIN: usize = 16 * 1024;

/// A pooled chunk holds the largest chain a guest may transmit.
const TX_CHUNK: usize = MAX_GUEST_FRAME + HDR_LEN_V1;

/// Large frames in flight per pair whose chunks the pool keeps.
const TX_POOL_LIMIT: usize = 64;

/// The chunk small frames are cut from: room for 40 full-size Ethernet
/// frames, or about 800 of 64 bytes. A frame still held somewhere keeps at
/// most this much memory alive.
const SMALL_CHUNK: usize = 64 * 1024;

/// A pair's transmit-side state, used by the device model's thread.
pub(super) struct TxState {
    /// The descriptors of the chain being copied.
    segments: Vec<chain::Segment>,
    /// Chunks large frames are copied into.
    pool: ChunkPool,
    /// What is left of the chunk small frames are cut from.
    small: BytesMut,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            segments: Vec::new(),
            pool: ChunkPool::new(TX_CHUNK, TX_POOL_LIMIT, 4),
            small: BytesMut::new(),
        }
    }
}
