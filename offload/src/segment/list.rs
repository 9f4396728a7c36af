//! A reusable [`SegmentSink`] that keeps every segment of one frame.

use std::ops::Range;

use bytes::Bytes;

use super::{SegmentSink, SinkFull};

/// One segment in a [`SegmentList`].
#[derive(Debug, Clone)]
struct Entry {
    /// The segment's bytes in the arena: the whole frame for a contiguous
    /// segment, the headers for a scatter-gather one.
    head: Range<usize>,
    /// The payload of a scatter-gather segment: this range of
    /// `sources[source]`. Empty for a contiguous segment.
    payload: Range<usize>,
    source: usize,
}

/// A sink that keeps the segments of a frame: contiguous segments in one
/// reused arena, scatter-gather segments as header bytes in the arena plus a
/// range of the original frame.
///
/// The list keeps one reference to each source frame, not one per segment:
/// a 64 KiB frame cut into 45 segments costs one reference count, not 45.
/// [`payload_bytes`](Self::payload_bytes) hands out a segment's payload as
/// its own [`Bytes`] when it must outlive the list.
///
/// [`clear`](Self::clear) keeps the capacity, so once the list has seen a
/// frame of a given size, later frames of that size allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct SegmentList {
    arena: Vec<u8>,
    used: usize,
    entries: Vec<Entry>,
    sources: Vec<Bytes>,
}

/// A borrowed segment from a [`SegmentList`]: `head` followed by `payload`
/// is the frame (for a contiguous segment `payload` is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef<'a> {
    /// The headers (or the whole frame, for a contiguous segment).
    pub head: &'a [u8],
    /// The shared payload of a scatter-gather segment, else empty.
    pub payload: &'a [u8],
}

impl SegmentRef<'_> {
    /// Length of the segment in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// True for an empty segment (never produced by the segmenter).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if the segment was delivered as headers plus a payload slice.
    pub fn is_scatter_gather(&self) -> bool {
        !self.payload.is_empty()
    }

    /// Appends the segment's bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head);
        out.extend_from_slice(self.payload);
    }

    /// The segment as one vector (for tests and diagnostics).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }
}

impl SegmentList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `bytes` of contiguous segments and
    /// `segments` entries.
    pub fn with_capacity(bytes: usize, segments: usize) -> Self {
        SegmentList {
            arena: vec![0; bytes],
            used: 0,
            entries: Vec::with_capacity(segments),
            sources: Vec::with_capacity(1),
        }
    }

    /// Forgets the segments (and releases the source frames), keeping the
    /// buffers.
    pub fn clear(&mut self) {
        self.used = 0;
        self.entries.clear();
        self.sources.clear();
    }

    /// Number of segments held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no segment is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The segment at `index`.
    pub fn get(&self, index: usize) -> Option<SegmentRef<'_>> {
        self.entries.get(index).map(|entry| self.view(entry))
    }

    /// The segments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SegmentRef<'_>> + '_ {
        self.entries.iter().map(|entry| self.view(entry))
    }

    /// The payload of the scatter-gather segment at `index` as a [`Bytes`]
    /// slice of the original frame (one reference count): `None` for a
    /// contiguous segment or an index past the end.
    pub fn payload_bytes(&self, index: usize) -> Option<Bytes> {
        let entry = self.entries.get(index)?;
        if entry.payload.is_empty() {
            return None;
        }
        Some(self.sources.get(entry.source)?.slice(entry.payload.clone()))
    }

    fn view<'a>(&'a self, entry: &'a Entry) -> SegmentRef<'a> {
        let payload = match self.sources.get(entry.source) {
            Some(source) => source.get(entry.payload.clone()).unwrap_or(&[]),
            None => &[],
        };
        SegmentRef {
            head: self.arena.get(entry.head.clone()).unwrap_or(&[]),
            payload,
        }
    }

    /// The index of `frame` in `sources`, adding a reference to it if it is
    /// not the most recent source.
    fn source_of(&mut self, frame: &Bytes) -> usize {
        match self.sources.last() {
            Some(last) if last.as_ptr() == frame.as_ptr() && last.len() == frame.len() => {
                self.sources.len() - 1
            }
            _ => {
                self.sources.push(frame.clone());
                self.sources.len() - 1
            }
        }
    }

    /// Reserves `len` bytes of arena and returns their range. The arena only
    /// grows; bytes past `used` are left as they were, not zeroed again.
    fn reserve(&mut self, len: usize) -> Range<usize> {
        let start = self.used;
        let end = start + len;
        if self.arena.len() < end {
            let grown = end.max(self.arena.len() * 2);
            self.arena.resize(grown, 0);
        }
        self.used = end;
        start..end
    }
}

impl SegmentSink for SegmentList {
    fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull> {
        let head = self.reserve(len);
        self.entries.push(Entry {
            head: head.clone(),
            payload: 0..0,
            source: usize::MAX,
        });
        self.arena.get_mut(head).ok_or(SinkFull)
    }

    fn scatter_gather(
        &mut self,
        header_len: usize,
        frame: &Bytes,
        payload: Range<usize>,
    ) -> Result<&mut [u8], SinkFull> {
        if frame.get(payload.clone()).is_none() {
            return Err(SinkFull);
        }
        let source = self.source_of(frame);
        let head = self.reserve(header_len);
        self.entries.push(Entry {
            head: head.clone(),
            payload,
            source,
        });
        self.arena.get_mut(head).ok_or(SinkFull)
    }

    /// Keeps the whole run's frames back to back in the arena and one entry
    /// per segment, without a call per segment.
    fn contiguous_run(
        &mut self,
        header_len: usize,
        payload_len: usize,
        size: usize,
    ) -> Result<Option<&mut [u8]>, SinkFull> {
        if size == 0 || payload_len == 0 {
            return Err(SinkFull);
        }
        let count = payload_len.div_ceil(size);
        let frames = self.reserve(count * header_len + payload_len);
        let stride = header_len + size;
        self.entries.extend((0..count).map(|i| {
            let start = frames.start + i * stride;
            Entry {
                head: start..(start + stride).min(frames.end),
                payload: 0..0,
                source: usize::MAX,
            }
        }));
        self.arena.get_mut(frames).map(Some).ok_or(SinkFull)
    }

    /// Keeps the whole run's headers back to back in the arena and one
    /// entry per segment, without a call per segment.
    fn scatter_gather_run(
        &mut self,
        header_len: usize,
        frame: &Bytes,
        payload: Range<usize>,
        size: usize,
    ) -> Result<Option<&mut [u8]>, SinkFull> {
        if size == 0 || payload.is_empty() || frame.get(payload.clone()).is_none() {
            return Err(SinkFull);
        }
        let source = self.source_of(frame);
        let count = payload.len().div_ceil(size);
        let heads = self.reserve(count * header_len);
        self.entries.extend((0..count).map(|i| {
            let head = heads.start + i * header_len;
            let start = payload.start + i * size;
            Entry {
                head: head..head + header_len,
                payload: start..(start + size).min(payload.end),
                source,
            }
        }));
        self.arena.get_mut(heads).map(Some).ok_or(SinkFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_both_kinds_in_order_and_reuses_capacity() {
        let mut list = SegmentList::new();
        list.contiguous(3).unwrap().copy_from_slice(b"abc");
        let frame = Bytes::from_static(b"--payload");
        list.scatter_gather(2, &frame, 2..9)
            .unwrap()
            .copy_from_slice(b"hd");
        assert_eq!(list.len(), 2);
        assert_eq!(list.get(0).unwrap().to_vec(), b"abc");
        assert!(!list.get(0).unwrap().is_scatter_gather());
        assert_eq!(list.get(1).unwrap().to_vec(), b"hdpayload");
        assert!(list.get(1).unwrap().is_scatter_gather());
        assert_eq!(list.payload_bytes(1).unwrap(), &b"payload"[..]);
        assert_eq!(list.payload_bytes(0), None);
        assert!(
            list.scatter_gather(2, &frame, 5..10).is_err(),
            "range past the frame"
        );
        let arena = list.arena.as_ptr();
        list.clear();
        assert!(list.is_empty());
        list.contiguous(5).unwrap().copy_from_slice(b"12345");
        assert_eq!(list.arena.as_ptr(), arena, "cleared list reuses its arena");
        assert_eq!(
            list.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
            [b"12345".to_vec()]
        );
    }

    #[test]
    fn a_run_holds_the_same_segments_as_one_call_each() {
        let frame = Bytes::from_static(b"HDRabcdefghij");
        let mut run = SegmentList::new();
        run.contiguous(1).unwrap().copy_from_slice(b"x");
        let heads = run
            .scatter_gather_run(2, &frame, 3..13, 4)
            .unwrap()
            .unwrap();
        assert_eq!(heads.len(), 3 * 2, "three segments of 4, 4 and 2 bytes");
        heads.copy_from_slice(b"h0h1h2");
        let mut single = SegmentList::new();
        single.contiguous(1).unwrap().copy_from_slice(b"x");
        for (i, piece) in [3..7, 7..11, 11..13].into_iter().enumerate() {
            let head = single.scatter_gather(2, &frame, piece).unwrap();
            head.copy_from_slice(format!("h{i}").as_bytes());
        }
        let all = |list: &SegmentList| list.iter().map(|s| s.to_vec()).collect::<Vec<_>>();
        assert_eq!(all(&run), all(&single));
        assert_eq!(all(&run)[3], b"h2ij");
        assert_eq!(run.payload_bytes(2).unwrap(), &b"efgh"[..]);
        assert_eq!(run.sources.len(), 1, "one reference to the frame");

        for (payload, size) in [(3..14, 4), (3..3, 4), (3..13, 0)] {
            assert!(
                run.scatter_gather_run(2, &frame, payload.clone(), size)
                    .is_err(),
                "{payload:?} in pieces of {size}"
            );
        }
        assert_eq!(run.len(), 4, "a refused run adds nothing");
    }
}
