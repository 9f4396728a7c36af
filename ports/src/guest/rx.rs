//! Receive: frames for the guest into its receive buffers, re-adapted to
//! the receive offloads in force.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, MutexGuard, PoisonError};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vswitch_offload::adapt::Adapted;
use vswitch_offload::segment::Segmenter;
use vswitch_offload::virtio::{HdrError, HDR_LEN_V1};
use vswitch_offload::{CheckError, CheckedFrame, EgressCapabilities, Packet, VirtioNetHdr};

use super::chain::{self, Direction, Segment};
use super::lend::{GuestLoan, Lender, Piece};
use super::stats::bump;
use super::{GuestPort, GuestQueue, GuestRxError};
use crate::buffer::PacketSink;

/// One frame written to the guest's receive buffers (descriptor chains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Chains used, from the first one offered: every one but the last is
    /// filled completely. The used list of the call has one entry each.
    pub buffers: usize,
    /// Bytes written to the last buffer used (its used length).
    pub last_len: usize,
    /// Bytes written in total, header included.
    pub bytes: usize,
}

/// One receive chain the device model returns to the guest: what it
/// passes to the used ring (`QueueT::add_used`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedChain {
    /// The chain's head descriptor index.
    pub head_index: u16,
    /// Bytes written to it.
    pub len: u32,
}

/// Frames on their way to the guest, after the check against its current
/// receive offloads.
#[derive(Debug, Default)]
pub(super) struct RxState {
    /// Frames taken from the switch's queue a burst at a time, not yet
    /// looked at: up to [`RX_TAKE`] beyond the queue's capacity.
    incoming: VecDeque<Packet>,
    ready: VecDeque<Packet>,
    segmenter: Segmenter,
    /// Where frames cut in software for the guest are written: shared
    /// chunks the segments are sliced from, no copy or allocation each.
    sink: PacketSink,
    chains: ChainScratch,
    /// Frames with lent payloads delivered during a fill, dropped at its
    /// end ([`GuestQueue::release_delivered`]).
    delivered: Vec<Packet>,
    /// The senders of those frames, held while they are dropped; empty
    /// between fills, kept for its room.
    lenders: Vec<Arc<Lender>>,
}

/// Frames the device model takes out of the switch's queue at a time.
const RX_TAKE: usize = 64;

/// The checked descriptors of the receive chains a frame is written to,
/// kept between frames so that receiving allocates nothing.
#[derive(Debug, Default)]
struct ChainScratch {
    segments: Vec<Segment>,
    /// Per chain: where its segments end in `segments`, and its length.
    ends: Vec<(usize, usize)>,
}

impl GuestPort {
    /// Queues `packet` on `rx.ready` as the guest may receive it now.
    fn adapt_to_guest(
        &self,
        rx: &mut RxState,
        packet: Packet,
        caps: &EgressCapabilities,
    ) -> Result<(), GuestRxError> {
        // A link-layer header cut short is a malformed header (reject rule 8).
        let frame = CheckedFrame::check(packet).map_err(|err| match err {
            CheckError::Header(err) => GuestRxError::from(err),
            CheckError::LinkLayer(err) => GuestRxError::from(HdrError::from(err)),
            CheckError::Lent(err) => GuestRxError::from(err),
        })?;
        let RxState {
            ready,
            segmenter,
            sink,
            ..
        } = rx;
        match sink.adapt(segmenter, &frame, caps)? {
            Adapted::PassThrough => ready.push_back(frame.into_packet()),
            Adapted::Checksummed | Adapted::Segmented(_) => {
                bump(&self.counters.rx_adapted, 1);
                ready.extend(sink.out().drain(..));
            }
        }
        Ok(())
    }

    /// The header bytes the guest's format calls for, with `num_buffers`.
    fn header_bytes(&self, mut hdr: VirtioNetHdr, num_buffers: u16) -> ([u8; HDR_LEN_V1], usize) {
        let header_len = self.format.size();
        hdr.num_buffers = num_buffers;
        let mut raw = [0u8; HDR_LEN_V1];
        if let Some(dst) = raw.get_mut(..header_len) {
            // `dst` has exactly the format's size, so emit cannot fail.
            let _ = hdr.emit(dst, self.format);
        }
        (raw, header_len)
    }

    /// Writes `packet` with its header into the first of `chains` (or, with
    /// mergeable buffers, as many as it needs), each descriptor walked once
    /// and checked before anything is written.
    fn write_to_chains<M, T>(
        &self,
        mem: &M,
        chains: &[DescriptorChain<T>],
        scratch: &mut ChainScratch,
        packet: &Packet,
        used: &mut Vec<UsedChain>,
    ) -> Result<Delivered, GuestRxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref + Clone,
        T::Target: GuestMemory,
    {
        let header_len = self.format.size();
        let required_len = header_len + packet.len();
        let ChainScratch { segments, ends } = scratch;
        segments.clear();
        ends.clear();
        let offered = if self.mergeable {
            chains.len()
        } else {
            chains.len().min(1)
        };
        let mut available = 0usize;
        let mut regions = chain::Regions::new(mem);
        for (position, chain) in chains.iter().take(offered).enumerate() {
            let len = chain::collect(
                &mut regions,
                chain.clone(),
                Direction::DeviceWrites,
                segments,
            )
            .map_err(|bad| GuestRxError::from_bad_descriptor(position, bad))?;
            ends.push((segments.len(), len));
            available = available.saturating_add(len);
            // A first chain too short for the header fails the frame
            // whatever follows; walk on only to report what was offered.
            let header_fits = ends.first().is_some_and(|&(_, first)| first >= header_len);
            if available >= required_len && header_fits {
                break;
            }
        }
        let first = ends.first().map_or(0, |&(_, len)| len);
        if self.mergeable {
            if first < header_len || available < required_len {
                return Err(GuestRxError::OutOfBuffers {
                    required_len,
                    available,
                });
            }
        } else if ends.is_empty() {
            return Err(GuestRxError::OutOfBuffers {
                required_len,
                available: 0,
            });
        } else if first < required_len {
            return Err(GuestRxError::BufferTooSmall {
                required_len,
                len: first,
            });
        }
        let count = ends.len();
        let num_buffers =
            u16::try_from(count).map_err(|_| GuestRxError::TooManyBuffers { buffers: count })?;
        let (raw, header_len) = self.header_bytes(packet.hdr, num_buffers);
        let used_before = used.len();
        let mut last_len = 0;
        let mut write = |sources: &mut [Piece<'_>]| {
            let mut start = 0;
            for (position, (&(end, _), chain)) in ends.iter().zip(chains).enumerate() {
                let written = segments
                    .get(start..end)
                    .map_or(Ok(0), |mine| chain::write_from(&mut regions, mine, sources))
                    .map_err(|failed| {
                        used.truncate(used_before);
                        GuestRxError::from_copy_failed(position, failed)
                    })?;
                used.push(UsedChain {
                    head_index: chain.head_index(),
                    // A chain holds less than 2^32 bytes.
                    len: u32::try_from(written).unwrap_or(u32::MAX),
                });
                last_len = written;
                start = end;
            }
            Ok::<(), GuestRxError>(())
        };
        let head = [
            Piece::Host(raw.get(..header_len).unwrap_or_default()),
            Piece::Host(&packet.data[..]),
        ];
        match &packet.tail {
            None => {
                let mut head = head;
                write(&mut head)?
            }
            // Another guest's payload: straight from its memory into this
            // guest's buffers.
            Some(tail) => match tail.source::<GuestLoan>() {
                Some(loan) => loan.with_pieces(head, write)??,
                None => {
                    let mut rest = vec![0u8; tail.len()];
                    tail.copy_to(&mut rest)?;
                    let [h, d] = head;
                    write(&mut [h, d, Piece::Host(&rest)])?
                }
            },
        }
        Ok(Delivered {
            buffers: count,
            last_len,
            bytes: required_len,
        })
    }
}

impl GuestQueue<'_> {
    /// Whether frames for the guest are waiting on this pair.
    pub fn rx_pending(&self) -> bool {
        if !self.pair.to_guest.is_empty() {
            return true;
        }
        let rx = self.pair.rx.lock().unwrap_or_else(PoisonError::into_inner);
        !rx.ready.is_empty() || !rx.incoming.is_empty()
    }

    /// [`GuestQueue::rx_pending`] for a device model about to stop
    /// draining (its budget spent): when nothing is waiting, the notifier
    /// is re-armed first, so that the next frame queued fires it. Without
    /// this, a drain that ends exactly as the queue empties leaves the
    /// notifier spent, and frames queued afterwards wake nobody until the
    /// guest kicks, which a polling driver that only receives never does.
    pub fn rx_pending_or_rearm(&self) -> bool {
        if self.rx_pending() {
            return true;
        }
        self.pair.rearm();
        self.rx_pending()
    }

    /// Writes the next frame for the guest into the receive chains the
    /// device model popped from this pair's receive virtqueue, in order,
    /// through guest memory `mem`, with the header the negotiated features
    /// call for. Returns `None` when no frame is waiting; the notifier
    /// fires again when one arrives.
    ///
    /// Every descriptor of the chains the frame needs is read once out of
    /// the descriptor table and checked (device-writable, inside `mem`)
    /// before anything is written; header and frame are then written with
    /// volatile copies out of host memory. Without mergeable receive
    /// buffers only the first chain is used and must hold header and
    /// frame; with them the frame spans as many chains as it needs, and
    /// `num_buffers` in the first chain's header says how many.
    ///
    /// For each chain used, from the first, `used` gets its head index and
    /// the bytes written, for the used ring. Chains after those stay the
    /// device model's, to offer with the next call. On
    /// [`GuestRxError::bad_chain`] nothing was written and the frame stays
    /// queued.
    pub fn receive_into_chains<M, T>(
        &self,
        mem: &M,
        chains: &[DescriptorChain<T>],
        used: &mut Vec<UsedChain>,
    ) -> Result<Option<Delivered>, GuestRxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref + Clone,
        T::Target: GuestMemory,
    {
        self.receive_with(false, |port, scratch, packet| {
            port.write_to_chains(mem, chains, scratch, packet, used)
        })
    }

    /// [`receive_into_chains`](Self::receive_into_chains) for a device
    /// model's fill of several frames: a delivered frame whose payload
    /// another guest lent is kept until [`release_delivered`]
    /// (Self::release_delivered), so that the sender's device model is
    /// woken once for the fill's frames, not once for each.
    pub(crate) fn receive_into_chains_in_fill<M, T>(
        &self,
        mem: &M,
        chains: &[DescriptorChain<T>],
        used: &mut Vec<UsedChain>,
    ) -> Result<Option<Delivered>, GuestRxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref + Clone,
        T::Target: GuestMemory,
    {
        self.receive_with(true, |port, scratch, packet| {
            port.write_to_chains(mem, chains, scratch, packet, used)
        })
    }

    /// Drops the delivered frames [`receive_into_chains_in_fill`]
    /// (Self::receive_into_chains_in_fill) kept, which gives their lent
    /// payloads back.
    pub(crate) fn release_delivered(&self) {
        let (mut spent, mut lenders) = {
            let mut rx = self.pair.rx.lock().unwrap_or_else(PoisonError::into_inner);
            (
                std::mem::take(&mut rx.delivered),
                std::mem::take(&mut rx.lenders),
            )
        };
        // Each sender is woken once for all of its chains, even where its
        // notifier publishes them at once, from this thread.
        for packet in &spent {
            let lender = packet
                .tail
                .as_ref()
                .and_then(|tail| tail.source::<GuestLoan>())
                .map(GuestLoan::lender);
            if let Some(lender) = lender {
                if !lenders.iter().any(|held| Arc::ptr_eq(held, lender)) {
                    lender.hold();
                    lenders.push(lender.clone());
                }
            }
        }
        spent.clear();
        for lender in lenders.drain(..) {
            lender.unhold();
        }
        // The lists keep their room for the next fill.
        let mut rx = self.pair.rx.lock().unwrap_or_else(PoisonError::into_inner);
        if rx.delivered.is_empty() {
            rx.delivered = spent;
        }
        rx.lenders = lenders;
    }

    /// The list a device model's receive fill on this pair collects its
    /// used-ring entries in, empty and kept from fill to fill so that
    /// filling allocates nothing once it has grown. Held for one fill.
    pub(crate) fn rx_used_list(&self) -> MutexGuard<'_, Vec<UsedChain>> {
        let mut used = self
            .pair
            .rx_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        used.clear();
        used
    }

    /// Writes the next frame for the guest, header first (`num_buffers`
    /// 1), into `out`, host memory the caller owns, replacing what it held.
    /// Returns the bytes written, or `None` when no frame is waiting.
    pub fn receive_into_vec(&self, out: &mut Vec<u8>) -> Result<Option<usize>, GuestRxError> {
        self.receive_with(false, |port, _, packet| {
            let (raw, header_len) = port.header_bytes(packet.hdr, 1);
            out.clear();
            out.extend_from_slice(raw.get(..header_len).unwrap_or_default());
            out.extend_from_slice(&packet.data);
            if let Some(tail) = &packet.tail {
                let at = out.len();
                out.resize(at + tail.len(), 0);
                tail.copy_to(&mut out[at..])?;
            }
            Ok(out.len())
        })
    }

    /// Takes the next frame for the guest and hands it to `deliver`;
    /// counts the outcome, and keeps the frame queued if `deliver` failed
    /// without dropping it.
    /// With `keep_lent`, a delivered frame with a lent payload is kept in
    /// the pair's delivered list instead of dropped.
    fn receive_with<R>(
        &self,
        keep_lent: bool,
        deliver: impl FnOnce(&GuestPort, &mut ChainScratch, &Packet) -> Result<R, GuestRxError>,
    ) -> Result<Option<R>, GuestRxError> {
        let counters = &self.port.counters;
        let mut rx = self.pair.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(packet) = self.next_for_guest(&mut rx)? else {
            return Ok(None);
        };
        match deliver(self.port, &mut rx.chains, &packet) {
            Ok(delivered) => {
                bump(&counters.rx_frames, 1);
                bump(&counters.rx_bytes, packet.len());
                if keep_lent && packet.tail.is_some() {
                    rx.delivered.push(packet);
                }
                Ok(Some(delivered))
            }
            Err(err) => {
                if err.bad_chain().is_some() {
                    bump(&counters.rx_bad_chains, 1);
                }
                if err.dropped_frame() {
                    bump(&counters.rx_dropped, 1);
                } else {
                    rx.ready.push_front(packet);
                }
                Err(err)
            }
        }
    }

    /// The next frame for the guest, checked against the receive offloads
    /// in force now: a frame whose header asks for nothing more than those
    /// is passed on as it is, any other is validated and adapted. Re-arms
    /// the notifier when the queue is empty.
    fn next_for_guest(&self, rx: &mut RxState) -> Result<Option<Packet>, GuestRxError> {
        let pair = self.pair;
        loop {
            if let Some(packet) = rx.ready.pop_front() {
                return Ok(Some(packet));
            }
            if rx.incoming.is_empty() {
                pair.to_guest.take(&mut rx.incoming, RX_TAKE);
            }
            if rx.incoming.is_empty() {
                pair.rearm();
                pair.to_guest.take(&mut rx.incoming, RX_TAKE);
            }
            let Some(packet) = rx.incoming.pop_front() else {
                return Ok(None);
            };
            if !packet.hdr.has_offload_work() {
                return Ok(Some(packet));
            }
            let offloads = self.port.guest_offloads();
            // The switch validated this header against the frame once, at
            // ingress, and adapted the frame to the port's capabilities:
            // the offloads negotiated, at the same MTU. Offloads turned on
            // at run time are a subset of those, so a header that asks
            // only for offloads the guest accepts now would pass the
            // adaptation untouched: send it without parsing it again.
            if offloads.accepts(&packet.hdr) {
                return Ok(Some(packet));
            }
            let caps = offloads.egress_capabilities(self.port.mtu);
            if let Err(err) = self.port.adapt_to_guest(rx, packet, &caps) {
                bump(&self.port.counters.rx_dropped, 1);
                return Err(err);
            }
        }
    }
}

impl super::QueuePair {
    /// Drops the frames the device model took from the switch's queue and
    /// has not looked at yet (for a guest that went away); returns how
    /// many.
    pub(super) fn discard_taken_for_guest(&self) -> usize {
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = rx.incoming.len();
        rx.incoming.clear();
        dropped
    }
}
