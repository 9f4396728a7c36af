//! Receive: frames for the guest into its receive buffers, re-adapted to
//! the receive offloads in force.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use crossbeam_channel::TryRecvError;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vswitch_offload::adapt::{adapt, Adapted};
use vswitch_offload::segment::{SegmentList, Segmenter};
use vswitch_offload::virtio::HDR_LEN_V1;
use vswitch_offload::{EgressCapabilities, Packet, VirtioNetHdr};

use super::chain::{self, Direction, Segment};
use super::stats::bump;
use super::{GuestPort, GuestQueue, GuestRxError};

/// One frame written to the guest's receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Buffers used, from the first one offered: every one but the last is
    /// filled completely (its used length is its length).
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
    ready: VecDeque<Packet>,
    segmenter: Segmenter,
    segments: SegmentList,
    chains: ChainScratch,
}

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
        let plan = packet.hdr.validate(&packet.data)?;
        let RxState {
            ready,
            segmenter,
            segments,
            ..
        } = rx;
        segments.clear();
        match adapt(segmenter, &packet.data, &plan, caps, segments)? {
            Adapted::PassThrough => ready.push_back(packet),
            Adapted::Checksummed | Adapted::Segmented(_) => {
                bump(&self.counters.rx_adapted, 1);
                for segment in segments.iter() {
                    let mut frame = Vec::with_capacity(segment.len());
                    segment.write_to(&mut frame);
                    ready.push_back(Packet::plain(frame));
                }
            }
        }
        Ok(())
    }

    fn write_frame<B: GuestBuffer>(
        &self,
        packet: &Packet,
        buffers: &mut [B],
    ) -> Result<Delivered, GuestRxError> {
        let header_len = self.format.size();
        let required_len = header_len + packet.data.len();
        let mut hdr = packet.hdr;
        let buffers_needed = if self.mergeable {
            let available = buffers
                .iter()
                .fold(0usize, |n, b| n.saturating_add(b.capacity()));
            let first = buffers.first().map_or(0, |b| b.capacity());
            if first < header_len || available < required_len {
                return Err(GuestRxError::OutOfBuffers {
                    required_len,
                    available,
                });
            }
            let mut left = required_len;
            let mut count = 0usize;
            for buffer in buffers.iter() {
                if left == 0 {
                    break;
                }
                left = left.saturating_sub(buffer.capacity());
                count += 1;
            }
            count
        } else {
            let Some(first) = buffers.first() else {
                return Err(GuestRxError::OutOfBuffers {
                    required_len,
                    available: 0,
                });
            };
            if first.capacity() < required_len {
                return Err(GuestRxError::BufferTooSmall {
                    required_len,
                    len: first.capacity(),
                });
            }
            1
        };
        hdr.num_buffers =
            u16::try_from(buffers_needed).map_err(|_| GuestRxError::TooManyBuffers {
                buffers: buffers_needed,
            })?;
        let mut raw = [0u8; HDR_LEN_V1];
        let raw = raw.get_mut(..header_len).unwrap_or(&mut []);
        // `raw` has exactly the format's size, so emit cannot fail.
        let _ = hdr.emit(raw, self.format);
        let mut sources = [&raw[..], &packet.data[..]];
        let mut last_len = 0;
        for buffer in buffers.iter_mut().take(buffers_needed) {
            last_len = buffer.fill_from(&mut sources);
        }
        Ok(Delivered {
            buffers: buffers_needed,
            last_len,
            bytes: required_len,
        })
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
        let required_len = header_len + packet.data.len();
        let ChainScratch { segments, ends } = scratch;
        segments.clear();
        ends.clear();
        let offered = if self.mergeable {
            chains.len()
        } else {
            chains.len().min(1)
        };
        let mut available = 0usize;
        for (position, chain) in chains.iter().take(offered).enumerate() {
            let len = chain::collect(mem, chain.clone(), Direction::DeviceWrites, segments)
                .map_err(|bad| GuestRxError::from_bad_descriptor(position, bad))?;
            ends.push((segments.len(), len));
            available = available.saturating_add(len);
            if available >= required_len {
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
        let mut sources = [raw.get(..header_len).unwrap_or_default(), &packet.data[..]];
        let used_before = used.len();
        let mut start = 0;
        let mut last_len = 0;
        for (position, (&(end, _), chain)) in ends.iter().zip(chains).enumerate() {
            let written = segments
                .get(start..end)
                .map_or(Ok(0), |mine| chain::write_from(mem, mine, &mut sources))
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
        if !self.pair.to_guest_rx.is_empty() {
            return true;
        }
        !self
            .pair
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
            .is_empty()
    }

    /// Writes the next frame for the guest into `buffers` (the guest's
    /// receive buffers, in the order popped from the receive virtqueue),
    /// with the header its negotiated features call for. Returns `None`
    /// when no frame is waiting; the notifier fires again when one arrives.
    ///
    /// Without mergeable receive buffers only the first buffer is used and
    /// must hold header and frame. With them, the frame spans as many
    /// buffers as it needs and `num_buffers` says how many.
    pub fn receive_into(
        &self,
        buffers: &mut [&mut [u8]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.receive_into_buffers(buffers)
    }

    /// Like [`receive_into`](Self::receive_into) for buffers that are
    /// descriptor chains of several writable descriptors each (for example
    /// a legacy driver that posts the header in a descriptor of its own):
    /// each element of `chains` is one buffer, written across its slices
    /// in order.
    pub fn receive_into_slice_chains(
        &self,
        chains: &mut [&mut [&mut [u8]]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.receive_into_buffers(chains)
    }

    fn receive_into_buffers<B: GuestBuffer>(
        &self,
        buffers: &mut [B],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.receive_with(|port, _, packet| port.write_frame(packet, buffers))
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
        self.receive_with(|port, scratch, packet| {
            port.write_to_chains(mem, chains, scratch, packet, used)
        })
    }

    /// Writes the next frame for the guest, header first (`num_buffers`
    /// 1), into `out`, host memory the caller owns, replacing what it held.
    /// Returns the bytes written, or `None` when no frame is waiting.
    pub fn receive_into_vec(&self, out: &mut Vec<u8>) -> Result<Option<usize>, GuestRxError> {
        self.receive_with(|port, _, packet| {
            let (raw, header_len) = port.header_bytes(packet.hdr, 1);
            out.clear();
            out.extend_from_slice(raw.get(..header_len).unwrap_or_default());
            out.extend_from_slice(&packet.data);
            Ok(out.len())
        })
    }

    /// Takes the next frame for the guest and hands it to `deliver`;
    /// counts the outcome, and keeps the frame queued if `deliver` failed
    /// without dropping it.
    fn receive_with<R>(
        &self,
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
                bump(&counters.rx_bytes, packet.data.len());
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
    /// in force now. Re-arms the notifier when the queue is empty.
    fn next_for_guest(&self, rx: &mut RxState) -> Result<Option<Packet>, GuestRxError> {
        let pair = self.pair;
        loop {
            if let Some(packet) = rx.ready.pop_front() {
                return Ok(Some(packet));
            }
            let packet = match pair.to_guest_rx.try_recv() {
                Ok(packet) => packet,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    // Re-arm before looking again: a frame queued after this
                    // store notifies; one queued before it is seen below.
                    pair.notified.store(false, Ordering::SeqCst);
                    match pair.to_guest_rx.try_recv() {
                        Ok(packet) => packet,
                        Err(_) => return Ok(None),
                    }
                }
            };
            if !packet.hdr.has_offload_work() {
                return Ok(Some(packet));
            }
            let caps = EgressCapabilities {
                // The segments are copied into guest memory anyway.
                scatter_gather: false,
                ..self
                    .port
                    .guest_offloads()
                    .egress_capabilities(self.port.mtu)
            };
            if let Err(err) = self.port.adapt_to_guest(rx, packet, &caps) {
                bump(&self.port.counters.rx_dropped, 1);
                return Err(err);
            }
        }
    }
}

/// One receive buffer of the guest: a slice, or a descriptor chain of
/// slices.
trait GuestBuffer {
    /// Bytes it holds.
    fn capacity(&self) -> usize;
    /// Copies from the front of `sources` until it is full or they run out,
    /// advancing the sources; returns the bytes written.
    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize;
}

impl GuestBuffer for &mut [u8] {
    fn capacity(&self) -> usize {
        self.len()
    }

    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize {
        fill(self, sources)
    }
}

impl GuestBuffer for &mut [&mut [u8]] {
    fn capacity(&self) -> usize {
        self.iter().fold(0usize, |n, s| n.saturating_add(s.len()))
    }

    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize {
        let mut written = 0;
        for segment in self.iter_mut() {
            let n = fill(segment, sources);
            written += n;
            if n < segment.len() {
                break;
            }
        }
        written
    }
}

/// Copies from the front of `sources` into `buffer` until one of them runs
/// out, advancing the sources; returns the bytes written.
fn fill(buffer: &mut [u8], sources: &mut [&[u8]]) -> usize {
    let mut written = 0;
    for source in sources.iter_mut() {
        let room = buffer.len() - written;
        let take = source.len().min(room);
        if let (Some(dst), Some(src)) =
            (buffer.get_mut(written..written + take), source.get(..take))
        {
            dst.copy_from_slice(src);
        }
        *source = source.get(take..).unwrap_or(&[]);
        written += take;
        if written == buffer.len() {
            break;
        }
    }
    written
}
