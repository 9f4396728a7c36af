//! Recycled frame buffers: large chunks that many frames are cut from, taken
//! back whole once every frame cut from them is gone.
//!
//! A receive path or a segmenter writes several frames into one
//! [`BytesMut`] chunk, freezes it once into [`Bytes`] and hands each frame
//! out as a slice of it ([`Bytes::slice`]), so a burst costs one buffer, not
//! one per frame. A [`ChunkPool`] keeps the frozen chunks. A chunk is shared
//! by its slices for as long as any of them lives (in a queue, at a port,
//! in a guest's hands); once the last one is dropped the chunk is unique
//! again ([`Bytes::is_unique`]) and the pool takes it back as a
//! [`BytesMut`] ([`Bytes::try_into_mut`]): full length, still initialised,
//! its pages already faulted in. In steady state nothing is allocated,
//! zeroed or faulted.
//!
//! [`PacketSink`] is the segmenter's side of this: the segments of a frame
//! cut in software (by the switch's egress, or a guest port for a guest
//! that takes fewer offloads than it declared) are written into such
//! chunks and handed out as slices, one [`Packet`] each.
//!
//! The pool never hands out a chunk that any slice still points into: a
//! frame in flight is never overwritten. It is bounded twice: it keeps at
//! most `limit` chunks (beyond that it lets go of the oldest, which is
//! freed when its last slice is) and looks at no more than `probes` of them
//! per request, so a pool full of chunks still in flight costs a few
//! reference-count loads, not a walk over all of them.
//!
//! ```
//! use vswitch_ports::buffer::ChunkPool;
//!
//! let mut pool = ChunkPool::new(4096, 8, 2);
//! let mut chunk = pool.take(1500);
//! assert_eq!(chunk.len(), 4096);
//! chunk[..3].copy_from_slice(b"abc");
//! let whole = chunk.freeze();
//! let frame = whole.slice(0..3);
//! pool.give_back(whole);
//!
//! // While `frame` lives its chunk stays out of reach.
//! let other = pool.take(1500);
//! assert_ne!(other.as_ptr(), frame.as_ptr());
//!
//! // Once it is gone the chunk comes back as it was.
//! let at = frame.as_ptr();
//! drop(frame);
//! let again = pool.take(1500);
//! assert_eq!(again.as_ptr(), at);
//! assert_eq!(&again[..3], b"abc");
//! assert_eq!((pool.recycled(), pool.allocated()), (1, 2));
//! ```

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};
use vswitch_offload::adapt::{adapt, AdaptError, Adapted};
use vswitch_offload::segment::{run_layout, SegmentSink, Segmenter, SinkFull};
use vswitch_offload::{CheckedFrame, EgressCapabilities, Packet};

/// Frozen chunks kept for recycling, oldest first, and the counters of how
/// requests for a chunk were met. See the [module documentation](self).
///
/// A pool belongs to one writer (a queue's receive path, a worker's egress
/// path): it is not shared, only the slices cut from its chunks are.
pub struct ChunkPool {
    /// Frozen chunks whose slices may still be in flight, oldest first.
    kept: VecDeque<Bytes>,
    /// Length of a new chunk, unless a request asks for more.
    chunk_len: usize,
    /// Most chunks kept.
    limit: usize,
    /// Most kept chunks looked at per request.
    probes: usize,
    recycled: u64,
    allocated: u64,
}

impl ChunkPool {
    /// An empty pool whose new chunks are `chunk_len` bytes long (or as
    /// long as a request needs, if more), which keeps at most `limit`
    /// frozen chunks and looks at the `probes` oldest of them for one that
    /// is free before it allocates.
    pub const fn new(chunk_len: usize, limit: usize, probes: usize) -> Self {
        ChunkPool {
            kept: VecDeque::new(),
            chunk_len,
            limit,
            probes,
            recycled: 0,
            allocated: 0,
        }
    }

    /// A full-length, initialised chunk of at least `len` bytes: a kept
    /// one that no slice points into any more, as it was given back, or
    /// else a new one of `chunk_len` (or `len`, if longer) zeroed bytes.
    pub fn take(&mut self, len: usize) -> BytesMut {
        self.take_with(len, |_| {})
    }

    /// As [`take`](Self::take), and a new chunk is passed to `init` before
    /// it is returned. A recycled chunk holds what was written into it
    /// before, so whatever is the same in every use of a chunk (a payload
    /// written once, say) needs to be written only by `init`.
    pub fn take_with(&mut self, len: usize, init: impl FnOnce(&mut [u8])) -> BytesMut {
        if let Some(chunk) = self.recycle(len) {
            self.recycled += 1;
            return chunk;
        }
        self.allocated += 1;
        let mut chunk = BytesMut::zeroed(self.chunk_len.max(len));
        init(&mut chunk);
        chunk
    }

    /// Keeps `chunk`, frozen with slices of it handed out, to take it back
    /// once they are all gone. When the pool already keeps `limit` chunks
    /// it lets go of the oldest (freed when its last slice is).
    pub fn give_back(&mut self, chunk: Bytes) {
        if self.limit == 0 {
            return;
        }
        if self.kept.len() >= self.limit {
            self.kept.pop_front();
        }
        self.kept.push_back(chunk);
    }

    /// Requests met with a kept chunk.
    pub fn recycled(&self) -> u64 {
        self.recycled
    }

    /// Requests met with a new chunk.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Chunks kept now, whether still in flight or free.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// The first of the `probes` oldest kept chunks that is long enough
    /// and that nothing else points into, taken out of the pool. A chunk
    /// still in flight keeps its place, so the kept chunks stay in age
    /// order and the bound lets go of the oldest first.
    fn recycle(&mut self, len: usize) -> Option<BytesMut> {
        let probed = self.probes.min(self.kept.len());
        let at = self.kept.range(..probed).position(|chunk| {
            // Only this pool holds a unique chunk, so nothing can share it
            // again before `try_into_mut` below.
            chunk.len() >= len && chunk.is_unique()
        })?;
        let chunk = self.kept.remove(at)?;
        match chunk.try_into_mut() {
            Ok(chunk) => Some(chunk),
            Err(chunk) => {
                self.kept.insert(at, chunk);
                None
            }
        }
    }
}

impl fmt::Debug for ChunkPool {
    /// The limits and counters; the chunks themselves are not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkPool")
            .field("chunk_len", &self.chunk_len)
            .field("limit", &self.limit)
            .field("probes", &self.probes)
            .field("kept", &self.kept.len())
            .field("recycled", &self.recycled)
            .field("allocated", &self.allocated)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Segments cut from shared buffers.
// ---------------------------------------------------------------------------

/// Size of the shared buffers the segments of small frames are cut from.
const SEGMENT_CHUNK: usize = 256 * 1024;

/// GSO frames at least this long have their segments written into a
/// recycled chunk of their own instead. Below it (and for frames that are
/// only checksummed) a chunk would be mostly empty while the frame is in
/// flight, so those share the cut buffers.
pub const POOLED_FRAME: usize = 32 * 1024;

/// Size of a recycled chunk: the segments of one 64 KiB TSO frame at any
/// MTU from 576 up (45 segments of 1514 bytes at MTU 1500, 125 of 590 at
/// 576). A frame whose segments do not fit spills into a second chunk.
const POOLED_CHUNK: usize = 80 * 1024;

/// Most chunks a worker keeps for recycling: enough for the frames in
/// flight at a receiver that keeps up; beyond that the oldest is let go
/// (freed when its last segment is).
const POOL_LIMIT: usize = 64;

/// Chunks tried for recycling before a new one is allocated.
const POOL_PROBES: usize = 4;

/// A [`SegmentSink`] that turns every segment into a plain [`Packet`] cut
/// from a shared buffer: what the switch's egress and a guest port's
/// software fallback segment into, so that a 64 KiB frame cut in 45 costs
/// no allocation and no copy per segment.
///
/// [`adapt`](Self::adapt) runs the offload engine on a frame with this
/// sink; the segments it made are then in [`out`](Self::out).
///
/// Small frames (a checksum completed into a copy) are cut one by one from
/// a large shared buffer. The segments of a large frame are written into a
/// chunk that is frozen once, after the frame, and sliced: so once every
/// segment of a chunk has been dropped by whoever received it, the
/// [`ChunkPool`] takes the chunk back whole and still initialised, with no
/// allocation, page faults or zeroing.
#[derive(Debug)]
pub struct PacketSink {
    /// The rest of the current shared buffer for small frames, initialised.
    chunk: BytesMut,
    /// Length of the segment handed out last and not yet cut off.
    pending: Option<usize>,
    /// The frame being adapted is large: write into `pooled`.
    large: bool,
    /// The chunk the segments of the current large frame are written into
    /// (full length, initialised), and how much of it is used.
    pooled: Option<BytesMut>,
    pooled_used: usize,
    /// Where in `pooled` each segment written so far lies.
    ranges: Vec<(usize, usize)>,
    /// Frozen chunks whose segments may still be in flight.
    pool: ChunkPool,
    out: Vec<Packet>,
}

impl Default for PacketSink {
    fn default() -> Self {
        PacketSink {
            chunk: BytesMut::new(),
            pending: None,
            large: false,
            pooled: None,
            pooled_used: 0,
            ranges: Vec::new(),
            pool: ChunkPool::new(POOLED_CHUNK, POOL_LIMIT, POOL_PROBES),
            out: Vec::new(),
        }
    }
}

impl PacketSink {
    /// An empty sink with an empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The segments sealed so far, in order, for the caller to take.
    pub fn out(&mut self) -> &mut Vec<Packet> {
        &mut self.out
    }

    /// The pool of chunks large frames' segments are written into.
    pub fn pool(&self) -> &ChunkPool {
        &self.pool
    }

    /// The pool, for other writers of large frames on the same thread (the
    /// switch's coalescer).
    pub fn pool_mut(&mut self) -> &mut ChunkPool {
        &mut self.pool
    }

    /// Adapts `frame` to `caps` ([`vswitch_offload::adapt::adapt`]) into
    /// this sink. When it was checksummed or segmented, [`out`](Self::out)
    /// holds the frames made from it, and nothing else; after an error it is
    /// empty (segments written before the failure are incomplete).
    pub fn adapt(
        &mut self,
        segmenter: &mut Segmenter,
        frame: &CheckedFrame,
        caps: &EgressCapabilities,
    ) -> Result<Adapted, AdaptError> {
        self.out.clear();
        self.large = frame.hdr().is_gso() && frame.len() >= POOLED_FRAME;
        let result = adapt(segmenter, frame, caps, self);
        self.seal();
        if result.is_err() {
            self.out.clear();
        }
        result
    }

    /// Cuts off every segment written so far into [`out`](Self::out).
    fn seal(&mut self) {
        if let Some(len) = self.pending.take() {
            let frame = self.chunk.split_to(len).freeze();
            self.out.push(Packet::plain(frame));
        }
        if !self.ranges.is_empty() {
            if let Some(chunk) = self.pooled.take() {
                let whole = chunk.freeze();
                for (start, end) in self.ranges.drain(..) {
                    self.out.push(Packet::plain(whole.slice(start..end)));
                }
                self.pool.give_back(whole);
            }
            self.ranges.clear();
            self.pooled_used = 0;
        }
    }

    fn reserve(&mut self, len: usize) -> &mut [u8] {
        if !self.large {
            self.seal();
            if self.chunk.len() < len {
                self.chunk = BytesMut::zeroed(SEGMENT_CHUNK.max(len));
            }
            self.pending = Some(len);
            return &mut self.chunk[..len];
        }
        self.claim_pooled(len, [(0, len)])
    }

    /// Claims `len` bytes of the current large frame's chunk for segments
    /// at `cuts` (ranges within the claim), taking a new chunk when this
    /// one is too full, and returns the claimed bytes. A small frame's
    /// segment still pending is cut off first.
    fn claim_pooled(
        &mut self,
        len: usize,
        cuts: impl IntoIterator<Item = (usize, usize)>,
    ) -> &mut [u8] {
        if self.pending.is_some() {
            self.seal();
        }
        let chunk = match self.pooled.take() {
            Some(chunk) if chunk.len() - self.pooled_used >= len => chunk,
            current => {
                // The current chunk is full: hand out what it holds, take another.
                self.pooled = current;
                self.seal();
                self.pooled_used = 0;
                self.pool.take(len)
            }
        };
        let start = self.pooled_used;
        self.pooled_used = start + len;
        self.ranges.extend(
            cuts.into_iter()
                .map(|(from, to)| (start + from, start + to)),
        );
        &mut self.pooled.insert(chunk)[start..start + len]
    }
}

impl SegmentSink for PacketSink {
    fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull> {
        Ok(self.reserve(len))
    }

    /// The segments of a large frame go into its chunk back to back, so the
    /// whole run is claimed at once; small frames are cut one by one.
    fn contiguous_run(
        &mut self,
        header_len: usize,
        payload_len: usize,
        size: usize,
    ) -> Result<Option<&mut [u8]>, SinkFull> {
        if !self.large || size == 0 || payload_len == 0 {
            return Ok(None);
        }
        let (len, segments) = run_layout(header_len, payload_len, size);
        let cuts = segments.map(|segment| (segment.start, segment.end));
        Ok(Some(self.claim_pooled(len, cuts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freezes `chunk`, cuts `frames` slices of 100 bytes from it and gives
    /// the chunk back; returns the slices.
    fn hand_out(pool: &mut ChunkPool, chunk: BytesMut, frames: usize) -> Vec<Bytes> {
        let whole = chunk.freeze();
        let slices = (0..frames)
            .map(|i| whole.slice(i * 100..(i + 1) * 100))
            .collect();
        pool.give_back(whole);
        slices
    }

    #[test]
    fn a_chunk_comes_back_only_once_every_slice_of_it_is_gone() {
        let mut pool = ChunkPool::new(1000, 4, 4);
        let mut first = pool.take(1000);
        first[..4].copy_from_slice(b"kept");
        let first_at = first.as_ptr();
        let mut slices = hand_out(&mut pool, first, 3);

        // Two of three slices gone: the chunk is still shared.
        let last = slices.pop().unwrap();
        drop(slices);
        let second = pool.take(1000);
        assert_ne!(second.as_ptr(), first_at, "a chunk in flight is not reused");
        let second_at = second.as_ptr();
        let held = hand_out(&mut pool, second, 1);

        // The last slice gone: the same memory comes back, whole and as
        // it was written, and the chunk still in flight is left alone.
        drop(last);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), first_at);
        assert_eq!(again.len(), 1000);
        assert_eq!(&again[..4], b"kept");
        assert_ne!(again.as_ptr(), second_at);
        assert_eq!((pool.recycled(), pool.allocated()), (1, 2));
        assert_eq!(pool.kept(), 1, "the second chunk is still kept");
        drop(held);
        assert_eq!(pool.take(1000).as_ptr(), second_at);
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit_and_lets_go_of_the_oldest() {
        let mut pool = ChunkPool::new(1000, 3, 8);
        let mut held = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..10 {
            let chunk = pool.take(1000);
            addresses.push(chunk.as_ptr());
            held.extend(hand_out(&mut pool, chunk, 1));
            assert!(pool.kept() <= 3);
        }
        assert_eq!(pool.kept(), 3);
        assert_eq!(pool.allocated(), 10);
        drop(held);
        // Only the three newest were kept.
        let mut back: Vec<_> = (0..3).map(|_| pool.take(1000).as_ptr()).collect();
        back.sort();
        let mut newest = addresses[7..].to_vec();
        newest.sort();
        assert_eq!(back, newest);
        assert_eq!(pool.recycled(), 3);
        pool.take(1000);
        assert_eq!(pool.allocated(), 11, "then a new one");

        let mut none = ChunkPool::new(1000, 0, 4);
        let chunk = none.take(10);
        none.give_back(chunk.freeze());
        assert_eq!(none.kept(), 0);
    }

    #[test]
    fn a_chunk_too_short_for_a_request_is_not_handed_out() {
        let mut pool = ChunkPool::new(1000, 4, 4);
        let short = pool.take(1000);
        let short_at = short.as_ptr();
        pool.give_back(short.freeze());
        let long = pool.take(5000);
        assert_ne!(long.as_ptr(), short_at);
        assert_eq!(
            long.len(),
            5000,
            "a request longer than a chunk gets its length"
        );
        assert_eq!((pool.recycled(), pool.allocated()), (0, 2));
        // The short one is still there for a request it fits.
        let fits = pool.take(800);
        assert_eq!(fits.as_ptr(), short_at);
        assert!(fits.len() >= 800);
    }

    #[test]
    fn only_the_oldest_probes_are_looked_at() {
        let mut pool = ChunkPool::new(1000, 8, 2);
        let mut held = Vec::new();
        for _ in 0..2 {
            let chunk = pool.take(1000);
            held.extend(hand_out(&mut pool, chunk, 1));
        }
        let free = pool.take(1000);
        let free_at = free.as_ptr();
        pool.give_back(free.freeze());
        // The free chunk is third oldest, out of reach of two probes.
        assert_ne!(pool.take(1000).as_ptr(), free_at);
        drop(held.remove(0));
        // A probed chunk that is free comes back; the one in flight keeps
        // its place in front of the rest.
        let first_free = pool.take(1000);
        assert_ne!(first_free.as_ptr(), free_at);
        assert_eq!(pool.take(1000).as_ptr(), free_at);
        assert_eq!(pool.recycled(), 2);
    }

    #[test]
    fn init_runs_on_new_chunks_only() {
        let mut pool = ChunkPool::new(64, 2, 1);
        let mut runs = 0;
        let chunk = pool.take_with(64, |buf| {
            runs += 1;
            buf.fill(7);
        });
        assert!(chunk.iter().all(|&b| b == 7));
        pool.give_back(chunk.freeze());
        let again = pool.take_with(64, |_| runs += 1);
        assert_eq!(runs, 1, "a recycled chunk keeps what it holds");
        assert!(again.iter().all(|&b| b == 7));
    }

    #[test]
    fn debug_shows_counters_not_bytes() {
        let mut pool = ChunkPool::new(1 << 16, 2, 1);
        let chunk = pool.take(1);
        pool.give_back(chunk.freeze());
        let text = format!("{pool:?}");
        assert!(text.contains("kept: 1") && text.contains("allocated: 1"));
        assert!(text.len() < 200, "{text}");
    }
}
