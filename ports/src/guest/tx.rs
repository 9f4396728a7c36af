//! Transmit: the guest's descriptor chains into frames for the switch.

use std::ops::Deref;
use std::sync::{Arc, PoisonError};

use bytes::{Bytes, BytesMut};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vswitch_offload::virtio::{GSO_ECN, GSO_TCPV4, GSO_TCPV6, HDR_LEN_V1};
use vswitch_offload::{Packet, Tail, VirtioNetHdr};

use crate::buffer::ChunkPool;

use super::chain::{self, Direction};
use super::lend::{self, GuestLoan, LentMemory, LEND_MIN, LENT_HEAD};
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

/// How a transmitted chain was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmitted {
    /// Copied into host memory: the chain goes back to the guest now.
    Copied,
    /// The frame's payload is lent to the switch: the chain goes back to
    /// the guest when the switch is done with it, through
    /// [`GuestQueue::take_returned`].
    Lent,
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
        self.transmit(mem, None, chain).map(drop)
    }

    /// Like [`transmit_chain`](Self::transmit_chain), but a large TCP
    /// segmentation frame may have its payload lent to the switch instead
    /// of copied: the payload stays in the guest's buffers, read through
    /// `lent_mem` (the snapshot of the guest's memory `mem` is, shared), and
    /// is copied once, by the egress; a guest port copies it straight into
    /// its guest's buffers. The header and the frame's first bytes, every
    /// header among them, are copied and checked as for any frame. See the
    /// `lend` rules in the module documentation.
    ///
    /// On [`Transmitted::Lent`] the device model must not return the chain
    /// now: its head comes back through [`take_returned`](Self::take_returned)
    /// once the frame is gone, and the pair's notifier fires then. On an
    /// error the chain was not lent; it goes back to the guest at once, as
    /// with `transmit_chain`.
    pub fn transmit_chain_lending<M, T>(
        &self,
        mem: &M,
        lent_mem: &Arc<dyn LentMemory>,
        chain: DescriptorChain<T>,
    ) -> Result<Transmitted, GuestTxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let head = chain.head_index();
        self.transmit(mem, Some((lent_mem, head)), chain)
    }

    /// [`transmit_chain_lending`](Self::transmit_chain_lending), lending
    /// only with `lend`; a refused chain is counted.
    fn transmit<M, T>(
        &self,
        mem: &M,
        lend: Option<(&Arc<dyn LentMemory>, u16)>,
        chain: DescriptorChain<T>,
    ) -> Result<Transmitted, GuestTxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let result = match self.copy_or_lend(mem, lend, chain) {
            Ok(Taken::Copied(bytes)) => self.take_chain(bytes).map(|()| Transmitted::Copied),
            Ok(Taken::Lent(packet)) => self.queue_lent(packet).map(|()| Transmitted::Lent),
            Err(err) => Err(err),
        };
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    /// Moves the heads of this pair's transmit chains whose lent payloads
    /// the switch is done with to `heads`, for the used ring (used length
    /// 0, as every transmit chain).
    pub fn take_returned(&self, heads: &mut Vec<u16>) {
        self.pair.lender.take_returned(heads);
    }

    /// Whether chains wait in [`take_returned`](Self::take_returned).
    pub fn has_returned(&self) -> bool {
        self.pair.lender.has_returned()
    }

    /// Whether frames the guest transmitted on this pair wait for the
    /// switch to take them ([`Port::receive`](crate::Port::receive)).
    pub fn has_transmitted(&self) -> bool {
        !self.pair.from_guest.is_empty()
    }

    /// Copies every payload of this pair still lent into host memory and
    /// returns its chain (through [`take_returned`](Self::take_returned)),
    /// for a device that must stop using the guest's transmit buffers: the
    /// frames go on unchanged. With `stop`, nothing more is lent until
    /// [`resume_lending`](Self::resume_lending). Returns how many payloads
    /// were copied.
    pub fn revoke_lent(&self, stop: bool) -> usize {
        let revoked = self.pair.lender.revoke(stop);
        bump(&self.port.counters.tx_lent_revoked, revoked);
        revoked
    }

    /// Lends again after [`revoke_lent`](Self::revoke_lent) with `stop`,
    /// for a transmit ring started again. Heads returned and not taken yet
    /// are forgotten: a ring started again begins at the index its driver
    /// gives.
    pub fn resume_lending(&self) {
        self.pair.lender.resume();
    }

    /// Chains of this pair whose payloads are lent now.
    pub fn lent_now(&self) -> usize {
        self.pair.lender.lent_now()
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
    /// current small-frame chunk for a small one. With `lend` (the memory
    /// to lend from and the chain's head), a frame that can be lent is
    /// lent instead, with only its first bytes copied.
    fn copy_or_lend<M, T>(
        &self,
        mem: &M,
        lend: Option<(&Arc<dyn LentMemory>, u16)>,
        chain: DescriptorChain<T>,
    ) -> Result<Taken, GuestTxError>
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
        if let Some((lent_mem, head)) = lend {
            if total >= LEND_MIN && self.pair.lender.has_room() {
                let head_len = self.port.format.size() + LENT_HEAD;
                let first = read_small(small, &mut regions, segments, head_len)?;
                if let Some(packet) = self.lend(first, total, segments, lent_mem, head)? {
                    return Ok(Taken::Lent(packet));
                }
            }
        }
        if total < POOLED_CHAIN {
            // Small frames are cut one after another from a shared chunk:
            // one allocation per chunk instead of one buffer (and one
            // shared-count block, made when the frame is sliced off its
            // header) per frame. A chunk whose frames are all gone is
            // taken back whole; one still in use is left to its frames.
            let frame = read_small(small, &mut regions, segments, total)?;
            return Ok(Taken::Copied(frame));
        }
        let mut chunk = pool.take(total);
        let copied = chain::read_into(&mut regions, segments, &mut chunk[..total])?;
        let whole = chunk.freeze();
        let frame = whole.slice(..copied);
        pool.give_back(whole);
        Ok(Taken::Copied(frame))
    }

    /// The frame of a chain of `total` bytes whose first bytes (header
    /// and frame) are `first`, with the rest lent from `segments`: `None`
    /// when it is not to be lent (not a TCP segmentation frame whose
    /// headers all lie in `first`, ranges across memory regions, as many
    /// loans out as allowed), and the caller copies it as any frame. The
    /// header is checked, and the frame validated against it, here.
    fn lend(
        &self,
        first: Bytes,
        total: usize,
        segments: &[chain::Segment],
        lent_mem: &Arc<dyn LentMemory>,
        head: u16,
    ) -> Result<Option<Packet>, GuestTxError> {
        let header_len = self.port.format.size();
        let hdr = self
            .port
            .parse_header(first.get(..header_len).unwrap_or_default())?;
        let data = first.slice(header_len..);
        let tcp_gso = matches!(hdr.gso_type & !GSO_ECN, GSO_TCPV4 | GSO_TCPV6);
        if !tcp_gso || first.len() >= total || !vswitch_offload::tail::headers_within(&data) {
            return Ok(None);
        }
        hdr.validate_headers(&data, total - header_len)?;
        let rest = lend::segments_after(segments, first.len());
        if !lend::lendable(lent_mem.as_ref(), &rest) {
            return Ok(None);
        }
        let Some(loan) = self.pair.lender.lend(head, lent_mem.clone(), rest) else {
            return Ok(None);
        };
        Ok(Some(Packet {
            hdr,
            data,
            tail: Some(Tail::new(total - first.len(), loan)),
        }))
    }

    /// Queues a frame whose payload is lent (header validated already).
    /// Should the queue be full, the loan is called off before the frame
    /// is dropped, so the chain goes back to the guest with the error, not
    /// through the lender.
    fn queue_lent(&self, packet: Packet) -> Result<(), GuestTxError> {
        let len = packet.len();
        match self.pair.from_guest.push(packet) {
            Ok(()) => {
                bump(&self.port.counters.tx_frames, 1);
                bump(&self.port.counters.tx_bytes, len);
                bump(&self.port.counters.tx_lent, 1);
                Ok(())
            }
            Err(packet) => {
                if let Some(loan) = packet.tail.as_ref().and_then(|t| t.source::<GuestLoan>()) {
                    loan.call_off();
                }
                Err(GuestTxError::QueueFull {
                    capacity: self.port.tx_capacity,
                })
            }
        }
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

/// Copies the first `len` bytes of the chain of `segments` into the next
/// bytes of the small-frame chunk `small` (a new chunk when it has no room
/// and its frames still hold it); returns the bytes copied.
fn read_small<M: GuestMemory + ?Sized>(
    small: &mut BytesMut,
    regions: &mut chain::Regions<'_, M>,
    segments: &[chain::Segment],
    len: usize,
) -> Result<Bytes, GuestTxError> {
    small.clear();
    if small.capacity() < len && !small.try_reclaim(SMALL_CHUNK) {
        *small = BytesMut::with_capacity(SMALL_CHUNK);
    }
    small.resize(len, 0);
    let copied = chain::read_into(regions, segments, small)?;
    let mut frame = small.split_to(len);
    frame.truncate(copied);
    Ok(frame.freeze())
}

/// A chain taken off the ring: copied, or its frame with a lent payload.
enum Taken {
    Copied(Bytes),
    Lent(Packet),
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
