//! Header validation on arbitrary input: the first 12 bytes are a
//! virtio_net_hdr_v1, the rest the frame. `validate` must never panic; when
//! it accepts, every offset in the plan lies within the frame, the checksum
//! field fits, and the segment size is usable: a TCP MSS is at least
//! `MIN_TCP_MSS` (88) and the TCP header of a GSO frame has neither SYN nor
//! RST.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_offload::virtio::{HdrFormat, MAX_L3_LEN, MIN_TCP_MSS};
use vswitch_offload::{FrameLayout, GsoKind, L3Kind, OffloadPlan, VirtioNetHdr};

fn check_plan(hdr: &VirtioNetHdr, frame: &[u8], plan: &OffloadPlan) {
    match plan.partial_checksum() {
        Some(p) => {
            assert!(hdr.needs_csum());
            assert!(p.start <= frame.len());
            assert!(p.start + p.offset + 2 <= frame.len());
        }
        None => assert!(!hdr.needs_csum()),
    }
    if let Some(&l) = plan.layout() {
        assert!(l.l3_offset < l.l4_offset);
        assert!(l.l4_offset <= l.payload_offset);
        assert!(l.payload_offset <= frame.len());
        assert_eq!(FrameLayout::parse(frame), Ok(l));
        assert!(frame.len() <= MAX_L3_LEN + l.l3_offset);
        if let Some(p) = plan.partial_checksum() {
            let min_l3_len = match l.l3 {
                L3Kind::Ipv4 => 20,
                L3Kind::Ipv6 => 40,
            };
            assert!(p.start >= l.l3_offset + min_l3_len);
        }
    }
    match plan.gso() {
        GsoKind::None => {}
        GsoKind::Tcp { mss: size, .. } | GsoKind::UdpL4 { size } | GsoKind::Ufo { size } => {
            assert!(size != 0 && size != u16::MAX);
            assert_eq!(size, hdr.gso_size);
            let l = plan.layout().expect("a GSO plan has a layout");
            assert!(l.l4.is_some());
            assert!(!l.is_fragment);
            if let Some(p) = plan.partial_checksum() {
                assert_eq!(p.start, l.l4_offset);
            }
            if let GsoKind::Tcp { mss, .. } = plan.gso() {
                assert!(mss >= MIN_TCP_MSS);
                assert_eq!(frame[l.l4_offset + 13] & 0x06, 0, "no SYN or RST");
            }
            if let GsoKind::UdpL4 { size } = plan.gso() {
                assert!(frame.len() - l.payload_offset <= usize::from(size) * 128);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for format in [HdrFormat::V1, HdrFormat::Legacy] {
        let Ok((hdr, n)) = VirtioNetHdr::parse(data, format) else {
            assert!(data.len() < format.size());
            continue;
        };
        let mut emitted = [0u8; 12];
        assert_eq!(hdr.emit(&mut emitted, format), Ok(n));
        assert_eq!(&emitted[..n], &data[..n]);
        let frame = &data[n..];
        match hdr.validate(frame) {
            Ok(plan) => check_plan(&hdr, frame, &plan),
            Err(e) => {
                assert!(!e.reason().name().is_empty());
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
