//! Building Ethernet frames from their parts, for tests, examples and the
//! demo. Parsing lives in the offload engine: a frame is parsed once at
//! ingress into a [`vswitch_offload::CheckedFrame`], and its addresses,
//! outer VLAN tag and offsets are read from that parse everywhere after.

use bytes::{BufMut, Bytes, BytesMut};
use vswitch_offload::wire::ethertype;

use crate::mac::MacAddr;

/// A frame built from its parts: destination, source, optional 802.1Q tag
/// (TCI), EtherType and payload.
pub fn build_frame(
    dst: MacAddr,
    src: MacAddr,
    tci: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(18 + payload.len());
    out.put_slice(&dst.0);
    out.put_slice(&src.0);
    if let Some(tci) = tci {
        out.put_u16(ethertype::VLAN);
        out.put_u16(tci);
    }
    out.put_u16(ethertype);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
    use vswitch_offload::{CheckedFrame, Packet, VirtioNetHdr};

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn built_frames_parse_back_with_their_addresses_and_tag() {
        let frame = build_frame(B, A, Some(0x2064), 0x0800, &[1, 2, 3]);
        let checked = CheckedFrame::check(Packet::plain(frame)).unwrap();
        assert_eq!((checked.dst_mac(), checked.src_mac()), (B.0, A.0));
        let tag = checked.outer_tag().unwrap();
        assert_eq!((tag.tpid, tag.vid(), tag.tci >> 13), (0x8100, 100, 1));
        assert_eq!(checked.l2().l3_offset, 18);
    }

    #[test]
    fn push_pop_and_rewrite_keep_payload_and_shift_offsets() {
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut ip_tcp = [0u8; 40 + 40];
        ip_tcp[0] = 0x45;
        ip_tcp[9] = 6;
        ip_tcp[20 + 12] = 5 << 4;
        let plain = Packet::with_hdr(hdr, build_frame(B, A, None, 0x0800, &ip_tcp));
        let plain = CheckedFrame::check(plain).unwrap();
        let tagged = plain.retagged(Some(7)).unwrap();
        assert_eq!(tagged.data(), &build_frame(B, A, Some(7), 0x0800, &ip_tcp));
        assert_eq!((tagged.hdr().csum_start, tagged.hdr().hdr_len), (38, 58));

        let same = tagged.retagged(Some(7)).unwrap();
        assert_eq!(same.data().as_ptr(), tagged.data().as_ptr());
        let moved = tagged.retagged(Some(9)).unwrap();
        assert_eq!(moved.data(), &build_frame(B, A, Some(9), 0x0800, &ip_tcp));
        assert_eq!(moved.hdr(), tagged.hdr());

        let untagged = tagged.retagged(None).unwrap();
        assert_eq!(untagged, plain);
    }
}
