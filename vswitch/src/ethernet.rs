//! The Ethernet header as the switch needs it: addresses, the outer VLAN
//! tag, and adding or removing that tag at the edges.
//!
//! Only the bytes needed for forwarding are read; everything above the
//! outer tag is the offload engine's business.

use bytes::{BufMut, Bytes, BytesMut};
use vswitch_offload::Packet;

use crate::mac::MacAddr;
use crate::vlan::VlanId;

/// Length of an Ethernet header without tags.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID and TCI).
pub const VLAN_TAG_LEN: usize = 4;
/// TPID of an 802.1Q customer tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;
/// A TPID used for service tags before 802.1ad.
pub const TPID_QINQ_LEGACY: u16 = 0x9100;

/// Whether `ethertype` is one of the TPIDs that start a VLAN tag.
pub fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY)
}

/// A frame the switch cannot forward because of its Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends before the header it must carry.
    #[error("{layer} needs {required_len} bytes but the frame has {len}")]
    TooShort {
        /// The header that did not fit: `"Ethernet"` or `"VLAN tag"`.
        layer: &'static str,
        /// The frame length the header needs.
        required_len: usize,
        /// The frame length.
        len: usize,
    },
}

/// The outer VLAN tag of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    /// The tag protocol identifier (0x8100, 0x88a8 or 0x9100).
    pub tpid: u16,
    /// Tag control information: priority (3 bits), drop eligible (1 bit)
    /// and VLAN identifier (12 bits).
    pub tci: u16,
}

impl VlanTag {
    /// The 12-bit VLAN identifier (0 for a priority-only tag).
    pub fn vid(self) -> u16 {
        self.tci & 0x0fff
    }
}

/// What forwarding reads from the start of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetHeader {
    /// Destination address.
    pub dst: MacAddr,
    /// Source address.
    pub src: MacAddr,
    /// The outer VLAN tag, if the frame has one.
    pub outer_tag: Option<VlanTag>,
}

impl EthernetHeader {
    /// Reads the addresses and, if present, the whole outer VLAN tag.
    pub fn parse(frame: &[u8]) -> Result<EthernetHeader, FrameError> {
        let Some(header) = frame.get(..ETHERNET_HEADER_LEN) else {
            return Err(FrameError::TooShort {
                layer: "Ethernet",
                required_len: ETHERNET_HEADER_LEN,
                len: frame.len(),
            });
        };
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&header[0..6]);
        src.copy_from_slice(&header[6..12]);
        let ethertype = u16::from_be_bytes([header[12], header[13]]);
        let outer_tag = if is_vlan_tpid(ethertype) {
            let Some(tag) = frame.get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + VLAN_TAG_LEN)
            else {
                return Err(FrameError::TooShort {
                    layer: "VLAN tag",
                    required_len: ETHERNET_HEADER_LEN + VLAN_TAG_LEN,
                    len: frame.len(),
                });
            };
            Some(VlanTag {
                tpid: ethertype,
                tci: u16::from_be_bytes([tag[0], tag[1]]),
            })
        } else {
            None
        };
        Ok(EthernetHeader {
            dst: MacAddr(dst),
            src: MacAddr(src),
            outer_tag,
        })
    }
}

/// The L2 header length of a frame as far as the egress checks need it:
/// 14 plus 4 for each leading VLAN tag (at most two are counted), bounded
/// by the frame length.
pub fn l2_header_len(frame: &[u8]) -> usize {
    let mut len = ETHERNET_HEADER_LEN;
    for _ in 0..2 {
        match frame.get(len - 2..len) {
            Some(&[hi, lo]) if is_vlan_tpid(u16::from_be_bytes([hi, lo])) => len += VLAN_TAG_LEN,
            _ => break,
        }
    }
    len.min(frame.len())
}

/// Rewrites the outer tag of `packet` for an egress port: `tag` is the VLAN
/// the frame must carry (`None`: untagged). `ingress_tag` is the frame's
/// current outer 802.1Q tag as parsed on ingress, if it had one.
///
/// An unchanged frame is returned as a clone of the same buffer; pushing,
/// popping or rewriting a tag copies the frame once. The offsets of the
/// virtio-net header (`csum_start`, `hdr_len`) move with the tag.
pub fn retag(packet: &Packet, ingress_tag: Option<VlanTag>, tag: Option<VlanId>) -> Packet {
    let data = &packet.data;
    match (ingress_tag, tag) {
        (None, None) => packet.clone(),
        (Some(current), Some(vlan)) if current.vid() == vlan.get() => packet.clone(),
        (Some(current), Some(vlan)) => {
            // Same position, new VID, priority and DEI kept.
            let tci = (current.tci & 0xf000) | vlan.get();
            let mut out = BytesMut::from(&data[..]);
            if let Some(field) = out.get_mut(14..16) {
                field.copy_from_slice(&tci.to_be_bytes());
            }
            Packet {
                hdr: packet.hdr,
                data: out.freeze(),
            }
        }
        (Some(_), None) => {
            let cut = ETHERNET_HEADER_LEN - 2;
            let mut out = BytesMut::with_capacity(data.len().saturating_sub(VLAN_TAG_LEN));
            out.put_slice(data.get(..cut).unwrap_or_default());
            out.put_slice(data.get(cut + VLAN_TAG_LEN..).unwrap_or_default());
            Packet {
                hdr: shift_offsets(packet, false),
                data: out.freeze(),
            }
        }
        (None, Some(vlan)) => {
            let cut = (ETHERNET_HEADER_LEN - 2).min(data.len());
            let mut out = BytesMut::with_capacity(data.len() + VLAN_TAG_LEN);
            out.put_slice(data.get(..cut).unwrap_or_default());
            out.put_u16(TPID_8021Q);
            out.put_u16(vlan.get());
            out.put_slice(data.get(cut..).unwrap_or_default());
            Packet {
                hdr: shift_offsets(packet, true),
                data: out.freeze(),
            }
        }
    }
}

/// The header of `packet` with its frame offsets moved by one tag.
fn shift_offsets(packet: &Packet, pushed: bool) -> vswitch_offload::VirtioNetHdr {
    let mut hdr = packet.hdr;
    let shift = |value: u16| {
        if pushed {
            value.saturating_add(VLAN_TAG_LEN as u16)
        } else {
            value.saturating_sub(VLAN_TAG_LEN as u16)
        }
    };
    if hdr.needs_csum() {
        hdr.csum_start = shift(hdr.csum_start);
    }
    if hdr.is_gso() || hdr.hdr_len != 0 {
        hdr.hdr_len = shift(hdr.hdr_len);
    }
    hdr
}

/// A frame built from its parts, for tests and examples: destination,
/// source, optional 802.1Q tag (TCI), EtherType and payload.
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
        out.put_u16(TPID_8021Q);
        out.put_u16(tci);
    }
    out.put_u16(ethertype);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_offload::virtio::FLAG_NEEDS_CSUM;
    use vswitch_offload::VirtioNetHdr;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn short_frames_are_errors() {
        assert_eq!(
            EthernetHeader::parse(&[0; 13]),
            Err(FrameError::TooShort {
                layer: "Ethernet",
                required_len: 14,
                len: 13
            })
        );
        let mut tagged = vec![0u8; 16];
        tagged[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
        assert_eq!(
            EthernetHeader::parse(&tagged),
            Err(FrameError::TooShort {
                layer: "VLAN tag",
                required_len: 18,
                len: 16
            })
        );
        assert_eq!(
            EthernetHeader::parse(&[]).unwrap_err().to_string(),
            "Ethernet needs 14 bytes but the frame has 0"
        );
    }

    #[test]
    fn parse_reads_addresses_and_outer_tag() {
        let frame = build_frame(B, A, Some(0x2064), 0x0800, &[1, 2, 3]);
        let header = EthernetHeader::parse(&frame).unwrap();
        assert_eq!((header.dst, header.src), (B, A));
        let tag = header.outer_tag.unwrap();
        assert_eq!((tag.tpid, tag.vid(), tag.tci >> 13), (0x8100, 100, 1));
        assert_eq!(l2_header_len(&frame), 18);
        assert_eq!(l2_header_len(&build_frame(B, A, None, 0x0800, &[])), 14);
    }

    #[test]
    fn push_pop_and_rewrite_keep_payload_and_shift_offsets() {
        let vlan = |id| VlanId::new(id).unwrap();
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: vswitch_offload::virtio::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        let plain = Packet::with_hdr(hdr, build_frame(B, A, None, 0x0800, &[9; 40]));
        let tagged = retag(&plain, None, Some(vlan(7)));
        assert_eq!(tagged.data, build_frame(B, A, Some(7), 0x0800, &[9; 40]));
        assert_eq!((tagged.hdr.csum_start, tagged.hdr.hdr_len), (38, 58));

        let tag = EthernetHeader::parse(&tagged.data).unwrap().outer_tag;
        let same = retag(&tagged, tag, Some(vlan(7)));
        assert_eq!(same.data.as_ptr(), tagged.data.as_ptr());
        let moved = retag(&tagged, tag, Some(vlan(9)));
        assert_eq!(moved.data, build_frame(B, A, Some(9), 0x0800, &[9; 40]));
        assert_eq!(moved.hdr, tagged.hdr);

        let untagged = retag(&tagged, tag, None);
        assert_eq!(untagged, plain);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use vswitch_offload::virtio::FLAG_NEEDS_CSUM;

    use super::*;
    use vswitch_offload::VirtioNetHdr;

    proptest! {
        #[test]
        fn parsing_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = EthernetHeader::parse(&frame);
            prop_assert!(l2_header_len(&frame) <= frame.len());
        }

        #[test]
        fn push_then_pop_gives_the_frame_back(
            body in proptest::collection::vec(any::<u8>(), 14..200),
            vid in 1u16..4095,
            csum_start in 14u16..1000,
        ) {
            let mut body = body;
            // An untagged frame: the EtherType must not be a TPID.
            body[12] = 0x08;
            body[13] = 0x00;
            let hdr = VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                csum_start,
                csum_offset: 6,
                ..VirtioNetHdr::default()
            };
            let packet = Packet::with_hdr(hdr, body);
            let vlan = VlanId::new(vid).unwrap();
            let tagged = retag(&packet, None, Some(vlan));
            let header = EthernetHeader::parse(&tagged.data).unwrap();
            prop_assert_eq!(header.outer_tag.map(VlanTag::vid), Some(vid));
            prop_assert_eq!(tagged.hdr.csum_start, csum_start + 4);
            let back = retag(&tagged, header.outer_tag, None);
            prop_assert_eq!(back, packet);
        }
    }
}
