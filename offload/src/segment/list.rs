//! A reusable [`SegmentSink`] that keeps every segment of one frame.

use std::ops::Range;

use super::{SegmentSink, SinkFull};

/// A sink that keeps the segments of a frame back to back in one reused
/// arena.
///
/// [`clear`](Self::clear) keeps the capacity, so once the list has seen a
/// frame of a given size, later frames of that size allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct SegmentList {
    arena: Vec<u8>,
    used: usize,
    /// Each segment's bytes in the arena.
    entries: Vec<Range<usize>>,
}

impl SegmentList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `bytes` of segments and `segments`
    /// entries.
    pub fn with_capacity(bytes: usize, segments: usize) -> Self {
        SegmentList {
            arena: vec![0; bytes],
            used: 0,
            entries: Vec::with_capacity(segments),
        }
    }

    /// Forgets the segments, keeping the buffers.
    pub fn clear(&mut self) {
        self.used = 0;
        self.entries.clear();
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
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.entries.get(index).map(|entry| self.view(entry))
    }

    /// The segments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.entries.iter().map(|entry| self.view(entry))
    }

    fn view(&self, entry: &Range<usize>) -> &[u8] {
        self.arena.get(entry.clone()).unwrap_or(&[])
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
        let segment = self.reserve(len);
        self.entries.push(segment.clone());
        self.arena.get_mut(segment).ok_or(SinkFull)
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
        let (len, segments) = super::run_layout(header_len, payload_len, size);
        let frames = self.reserve(len);
        let at = frames.start;
        self.entries
            .extend(segments.map(|segment| at + segment.start..at + segment.end));
        self.arena.get_mut(frames).map(Some).ok_or(SinkFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_segments_in_order_and_reuses_capacity() {
        let mut list = SegmentList::new();
        list.contiguous(3).unwrap().copy_from_slice(b"abc");
        list.contiguous(9).unwrap().copy_from_slice(b"hdpayload");
        assert_eq!(list.len(), 2);
        assert_eq!(list.get(0).unwrap(), b"abc");
        assert_eq!(list.get(1).unwrap(), b"hdpayload");
        assert_eq!(list.get(2), None);
        let arena = list.arena.as_ptr();
        list.clear();
        assert!(list.is_empty());
        list.contiguous(5).unwrap().copy_from_slice(b"12345");
        assert_eq!(list.arena.as_ptr(), arena, "cleared list reuses its arena");
        assert_eq!(list.iter().collect::<Vec<_>>(), [b"12345"]);
    }

    #[test]
    fn a_run_holds_the_same_segments_as_one_call_each() {
        let mut run = SegmentList::new();
        run.contiguous(1).unwrap().copy_from_slice(b"x");
        let frames = run.contiguous_run(2, 10, 4).unwrap().unwrap();
        assert_eq!(
            frames.len(),
            3 * 2 + 10,
            "three segments of 4, 4 and 2 bytes"
        );
        frames.copy_from_slice(b"h0abcdh1efghh2ij");
        let mut single = SegmentList::new();
        single.contiguous(1).unwrap().copy_from_slice(b"x");
        for segment in [&b"h0abcd"[..], b"h1efgh", b"h2ij"] {
            single
                .contiguous(segment.len())
                .unwrap()
                .copy_from_slice(segment);
        }
        let all = |list: &SegmentList| list.iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(all(&run), all(&single));
        assert_eq!(all(&run)[3], b"h2ij");

        for (payload_len, size) in [(0, 4), (10, 0)] {
            assert!(
                run.contiguous_run(2, payload_len, size).is_err(),
                "{payload_len} bytes in pieces of {size}"
            );
        }
        assert_eq!(run.len(), 4, "a refused run adds nothing");
    }
}
