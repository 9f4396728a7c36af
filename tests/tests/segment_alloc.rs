//! The steady state of segmentation allocates nothing per segment: a
//! counting global allocator watches the segmenter, the adapt entry point
//! and a reused `SegmentList`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use vswitch_offload::adapt::{adapt, Adapted};
use vswitch_offload::segment::{SegmentList, SegmentParams, Segmenter};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use vswitch_offload::{
    CheckedFrame, EgressCapabilities, FrameLayout, GsoKind, L3Kind, L4Kind, Packet, VirtioNetHdr,
};

/// Counts every allocation and reallocation; frees are not counted.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System` upholds the `GlobalAlloc` contract; the counter is
// an atomic and does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's `layout` obligations are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above
        // with this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is passed on as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn tso_frame(ipv6: bool) -> (Vec<u8>, FrameLayout) {
    let frame = if ipv6 {
        FrameBuilder::tcp6([1; 16], [2; 16])
    } else {
        FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2]).dont_fragment(true)
    }
    .vlan(5)
    .ports(1, 2)
    .seq(3)
    .window(4)
    .tcp_flags(tcp_flags::ACK)
    .payload_with(60_000, |i| i as u8);
    let layout = FrameLayout {
        vlan_tags: 1,
        l3_offset: frame.l3_offset(),
        l3: if ipv6 { L3Kind::Ipv6 } else { L3Kind::Ipv4 },
        l4_offset: frame.l4_offset(),
        l4: Some(L4Kind::Tcp),
        payload_offset: frame.payload_offset(),
        ipv6_fragment_header: None,
        is_fragment: false,
    };
    (frame.build(), layout)
}

/// One test only: the counter is global, and tests in one binary run in
/// parallel.
#[test]
fn segmentation_allocates_nothing_per_segment_once_warm() {
    // The counter sees allocations at all.
    assert_eq!(
        allocations_during(|| drop(std::hint::black_box(vec![0u8; 100]))),
        1
    );
    for ipv6 in [false, true] {
        let (frame, layout) = tso_frame(ipv6);
        let gso = GsoKind::Tcp {
            mss: 1448,
            ecn: false,
        };
        let mut segmenter = Segmenter::new(SegmentParams::default());
        let mut list = SegmentList::new();
        // Warm up: buffers grow to their working size.
        segmenter
            .segment_copy(&frame, &layout, gso, &mut list)
            .unwrap();

        let copy = allocations_during(|| {
            for _ in 0..10 {
                list.clear();
                let summary = segmenter
                    .segment_copy(&frame, &layout, gso, &mut list)
                    .unwrap();
                assert_eq!(summary.segments, 42);
            }
        });
        assert_eq!(copy, 0, "segmentation allocated");

        // Through the entry point, to a port that needs segmentation.
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: 8000,
            csum_start: layout.l4_offset as u16,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        let checked = CheckedFrame::check(Packet::with_hdr(hdr, frame.clone())).unwrap();
        for caps in [
            EgressCapabilities::none(1500),
            EgressCapabilities::full(1280),
        ] {
            list.clear();
            adapt(&mut segmenter, &checked, &caps, &mut list).unwrap();
            let adapted = allocations_during(|| {
                list.clear();
                let done = adapt(&mut segmenter, &checked, &caps, &mut list).unwrap();
                assert!(matches!(done, Adapted::Segmented(_)));
            });
            assert_eq!(adapted, 0, "adapt allocated for {caps:?}");
        }

        // A new frame, in another buffer, costs no allocation either.
        let fresh = frame.clone();
        let per_frame = allocations_during(|| {
            list.clear();
            segmenter
                .segment_copy(&fresh, &layout, gso, &mut list)
                .unwrap();
        });
        assert_eq!(per_frame, 0, "{per_frame} allocations for one new frame");
    }
}
