//! A frame as it moves through the switch: the bytes and the virtio-net
//! header that says what is still to be done to them.

use bytes::{Bytes, BytesMut};

use crate::tail::{Tail, TailError};
use crate::virtio::VirtioNetHdr;

/// An Ethernet frame with its offload metadata.
///
/// `hdr` is all zero for a plain frame (fully checksummed, no segmentation).
///
/// The frame's bytes are `data`, followed by `tail` when there is one: a
/// payload still lent by the guest that sent it ([`crate::tail`]). A
/// packet with a tail has every header the switch reads in `data`;
/// [`Packet::len`] counts both parts, and code that needs the bytes in one
/// buffer takes [`Packet::into_whole`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packet {
    /// Offload metadata (partial checksum, segmentation).
    pub hdr: VirtioNetHdr,
    /// The frame, from the destination MAC address on: all of it, or its
    /// first bytes when it has a `tail`.
    pub data: Bytes,
    /// The rest of the frame, still in its sender's memory.
    pub tail: Option<Tail>,
}

impl Packet {
    /// A plain frame: nothing left to do.
    pub fn plain(data: impl Into<Bytes>) -> Self {
        Packet {
            hdr: VirtioNetHdr::default(),
            data: data.into(),
            tail: None,
        }
    }

    /// A frame with offload work left, as a guest hands it over.
    pub fn with_hdr(hdr: VirtioNetHdr, data: impl Into<Bytes>) -> Self {
        Packet {
            hdr,
            data: data.into(),
            tail: None,
        }
    }

    /// The frame's length in bytes, its tail included.
    pub fn len(&self) -> usize {
        self.data.len() + self.tail.as_ref().map_or(0, Tail::len)
    }

    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame with all its bytes in `data`: itself when it has no tail,
    /// otherwise `data` and the tail copied into one new buffer (and the
    /// tail given back to its owner).
    pub fn into_whole(self) -> Result<Packet, TailError> {
        let Some(tail) = self.tail else {
            return Ok(self);
        };
        // Exactly as long as the frame, so that it becomes `Bytes` as it
        // is; filled by appending, so that nothing is zeroed first.
        let mut whole = Vec::with_capacity(self.data.len() + tail.len());
        whole.extend_from_slice(&self.data);
        tail.append_to(&mut whole)?;
        Ok(Packet {
            hdr: self.hdr,
            data: Bytes::from(whole),
            tail: None,
        })
    }
}

// ---------------------------------------------------------------------------
// A frame checked once at ingress.
// ---------------------------------------------------------------------------

use crate::layout::FrameLayout;
use crate::plan::{GsoKind, OffloadPlan, PartialChecksum};
use crate::virtio::HdrError;
use crate::wire::ethernet::{ethertype, L2Header, HEADER_LEN, VLAN_TAG_LEN};
use crate::wire::ParseError;

/// Why a frame was refused at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The Ethernet header or a VLAN tag is cut short.
    #[error("link-layer header: {0}")]
    LinkLayer(ParseError),
    /// The virtio-net header asks for something the frame cannot take.
    #[error(transparent)]
    Header(#[from] HdrError),
    /// The frame's lent bytes could not be taken into host memory (its
    /// headers did not all come before them).
    #[error(transparent)]
    Lent(#[from] TailError),
}

/// The outer VLAN tag of a frame: its TPID and tag control information.
///
/// One TPID policy for the whole switch, the one Linux applies
/// (`eth_type_vlan`): 0x8100 (802.1Q) and 0x88a8 (802.1ad) start a tag;
/// anything else, 0x9100 included, is an EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterTag {
    /// The tag protocol identifier, [`ethertype::VLAN`] or [`ethertype::QINQ`].
    pub tpid: u16,
    /// Priority (3 bits), drop eligible (1 bit), VLAN id (12 bits).
    pub tci: u16,
}

impl OuterTag {
    /// The 12-bit VLAN id (0 for a priority-only tag).
    pub const fn vid(self) -> u16 {
        self.tci & 0x0fff
    }
}

/// A frame whose link-layer header was parsed and whose virtio-net header
/// was validated against its bytes, once, when it entered the switch.
///
/// A frame that asks nothing of the host (no segmentation, no partial
/// checksum) has its IP and transport headers parsed only when something
/// needs them (a flow hash, a guard's full rules, coalescing): its owner
/// calls [`CheckedFrame::parse_layout`], which keeps the parse with the
/// frame. The frames of a plain layer-2 hop, the common case of a switch,
/// are never parsed past their Ethernet header. A frame with offload work
/// has its layout from validation.
///
/// The only ways to get one are [`CheckedFrame::check`] and the methods
/// that derive a new frame from a checked one ([`CheckedFrame::retagged`]),
/// which carry the plan over instead of parsing again. The bytes cannot be
/// changed behind the plan's back: there is no mutable access. So code
/// that takes a `CheckedFrame` (forwarding, flow hashing, egress
/// adaptation) may trust its offsets.
#[derive(Debug, Clone)]
pub struct CheckedFrame {
    packet: Packet,
    l2: L2Header,
    /// The segmentation asked for.
    gso: GsoKind,
    /// The checksum left for the host.
    partial_checksum: Option<PartialChecksum>,
    /// The layout: from validation for a frame with offload work;
    /// otherwise not parsed until the frame's owner asks
    /// ([`CheckedFrame::parse_layout`]).
    layout: LayoutState,
}

/// Whether a frame's layout was parsed, and what it is. (One enum, not an
/// `Option` and a flag: its spare values leave the checked frame no
/// larger, and the frame moves as cheaply as before.)
#[derive(Debug, Clone, Copy)]
enum LayoutState {
    NotParsed,
    Parsed(Option<FrameLayout>),
}

/// Two checked frames are equal when their bytes, headers and plans are:
/// whether one of them has had its layout parsed yet does not matter, as
/// the layout is a function of the bytes.
impl PartialEq for CheckedFrame {
    fn eq(&self, other: &Self) -> bool {
        self.packet == other.packet
            && self.l2 == other.l2
            && self.gso == other.gso
            && self.partial_checksum == other.partial_checksum
            && self.layout() == other.layout()
    }
}

impl Eq for CheckedFrame {}

impl CheckedFrame {
    /// Parses the link-layer header and validates the virtio-net header
    /// against the frame ([`crate::VirtioNetHdr::validate`]).
    ///
    /// A packet with a [`Tail`] is checked on its `data` and its whole
    /// length: every header validation reads is in `data`. So a lent frame
    /// is a TCP frame whose headers parse within `data`; any other is taken
    /// whole first ([`Packet::into_whole`]), and checked as any frame is.
    // Inlined into the switch's per-frame loop, which it is written for:
    // as a call, its 160-byte result is copied out and back every frame.
    // The rare lent frame to be taken whole is kept out of line, so that
    // it does not stop the inlining.
    #[inline(always)]
    pub fn check(packet: Packet) -> Result<CheckedFrame, CheckError> {
        let l2 = L2Header::parse(&packet.data).map_err(CheckError::LinkLayer)?;
        if packet.tail.is_some() && !headers_lead(&packet.data, &l2) {
            return Self::check_whole(packet);
        }
        Self::check_parsed(packet, l2)
    }

    /// [`check`](Self::check) of a lent frame whose headers are not all in
    /// its `data`: taken whole first.
    #[cold]
    #[inline(never)]
    fn check_whole(packet: Packet) -> Result<CheckedFrame, CheckError> {
        let packet = packet.into_whole()?;
        let l2 = L2Header::parse(&packet.data).map_err(CheckError::LinkLayer)?;
        Self::check_parsed(packet, l2)
    }

    /// [`check`](Self::check) once the link-layer header is parsed.
    #[inline(always)]
    fn check_parsed(packet: Packet, l2: L2Header) -> Result<CheckedFrame, CheckError> {
        let hdr = &packet.hdr;
        // Most frames ask nothing of the host: no GSO, no partial checksum,
        // a length no rule refuses. For them validation reduces to the
        // layout parse (an unparsable frame passes on without one), which
        // is done here without the rule list's results and errors.
        if hdr.gso_type == crate::virtio::GSO_NONE
            && !hdr.needs_csum()
            && packet.len() <= crate::virtio::MAX_L3_LEN + l2.l3_offset
        {
            // Its IP and transport headers are parsed only if something
            // asks for them (`layout`).
            return Ok(CheckedFrame {
                packet,
                l2,
                gso: GsoKind::None,
                partial_checksum: None,
                layout: LayoutState::NotParsed,
            });
        }
        let plan = packet
            .hdr
            .validate_after_l2(&packet.data, packet.len(), Ok(l2))?;
        Ok(CheckedFrame {
            packet,
            l2,
            gso: plan.gso(),
            partial_checksum: plan.partial_checksum(),
            layout: LayoutState::Parsed(plan.layout().copied()),
        })
    }

    /// The offsets and kinds of the frame's IP and transport headers:
    /// `None` for a frame that is not IPv4 or IPv6, or whose IP or
    /// transport header does not parse (such a frame with nothing asked of
    /// the host passes on as it is). For a frame with offload work this is
    /// the layout validation found ([`OffloadPlan::layout`]); for one
    /// without, it is what [`CheckedFrame::parse_layout`] kept, or, before
    /// that, a parse made for this call. Code that owns a frame several
    /// readers will ask calls `parse_layout` first, so the frame is parsed
    /// once.
    pub fn layout(&self) -> Option<FrameLayout> {
        match self.layout {
            LayoutState::Parsed(layout) => layout,
            LayoutState::NotParsed => self.parse(),
        }
    }

    /// Parses the layout of a frame that asked nothing of the host, if it
    /// was not yet, and keeps it with the frame (and the copies made of it
    /// afterwards).
    pub fn parse_layout(&mut self) -> Option<&FrameLayout> {
        if let LayoutState::NotParsed = self.layout {
            self.layout = LayoutState::Parsed(self.parse());
        }
        match &self.layout {
            LayoutState::Parsed(layout) => layout.as_ref(),
            LayoutState::NotParsed => None,
        }
    }

    fn parse(&self) -> Option<FrameLayout> {
        FrameLayout::parse_after_l2(&self.packet.data, &self.l2)
            .ok()
            .map(|(layout, _)| layout)
    }

    /// The frame and its virtio-net header.
    pub fn packet(&self) -> &Packet {
        &self.packet
    }

    /// The frame bytes, from the destination MAC address on: all of them,
    /// or, for a frame with a [`Tail`], the first ones, with every header.
    pub fn data(&self) -> &Bytes {
        &self.packet.data
    }

    /// The validated virtio-net header.
    pub fn hdr(&self) -> &VirtioNetHdr {
        &self.packet.hdr
    }

    /// The segmentation the frame asks of the host.
    pub fn gso(&self) -> GsoKind {
        self.gso
    }

    /// The checksum the frame leaves for the host, if any.
    pub fn partial_checksum(&self) -> Option<PartialChecksum> {
        self.partial_checksum
    }

    /// What the frame asks of the host, with its header offsets, as
    /// validation gives it ([`VirtioNetHdr::validate`]). Parses the
    /// layout if nothing did yet: code that needs one part asks for that
    /// part ([`CheckedFrame::gso`], [`CheckedFrame::partial_checksum`],
    /// [`CheckedFrame::layout`]).
    pub fn plan(&self) -> OffloadPlan {
        OffloadPlan::new(self.layout(), self.gso, self.partial_checksum)
    }

    /// The Ethernet header and its VLAN tags.
    pub fn l2(&self) -> &L2Header {
        &self.l2
    }

    /// Length of the frame in bytes, its tail included.
    pub fn len(&self) -> usize {
        self.packet.len()
    }

    /// Whether the frame has no bytes (never true: a checked frame holds
    /// at least an Ethernet header).
    pub fn is_empty(&self) -> bool {
        self.packet.data.is_empty()
    }

    /// Whether part of the frame is still lent ([`Packet::tail`]).
    pub fn has_tail(&self) -> bool {
        self.packet.tail.is_some()
    }

    fn mac(&self, at: usize) -> [u8; 6] {
        let mut mac = [0u8; 6];
        if let Some(bytes) = self.packet.data.get(at..at + 6) {
            mac.copy_from_slice(bytes);
        }
        mac
    }

    /// The destination MAC address.
    pub fn dst_mac(&self) -> [u8; 6] {
        self.mac(0)
    }

    /// The source MAC address.
    pub fn src_mac(&self) -> [u8; 6] {
        self.mac(6)
    }

    /// The outer VLAN tag, if the frame has one.
    pub fn outer_tag(&self) -> Option<OuterTag> {
        if self.l2.vlan_tags == 0 {
            return None;
        }
        let data = &self.packet.data;
        let read = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        Some(OuterTag {
            tpid: read(HEADER_LEN - 2)?,
            tci: read(HEADER_LEN)?,
        })
    }

    /// Gives the frame back, for a port's send.
    pub fn into_packet(self) -> Packet {
        self.packet
    }

    /// The frame with its outer 802.1Q tag set to `vid`, pushed if it has
    /// none, or removed with `None`. The virtio-net header's offsets and
    /// the plan move with the tag, so nothing is parsed again. An outer tag
    /// that is already `vid` (or no tag and `None`) gives a clone of the
    /// same buffer; otherwise the frame is copied once. A rewritten tag
    /// keeps its priority and drop-eligible bits.
    ///
    /// Returns `None` when the offsets cannot move with the tag: a partial
    /// checksum that starts inside the link-layer header (possible only on
    /// a frame that is not IP), or a third tag pushed onto a QinQ frame.
    pub fn retagged(&self, vid: Option<u16>) -> Option<CheckedFrame> {
        let data = &self.packet.data;
        let current = self.outer_tag();
        let cut = HEADER_LEN - 2;
        let (bytes, delta, tags) = match (current, vid) {
            (None, None) => return Some(self.clone()),
            (Some(tag), Some(vid)) if tag.vid() == vid & 0x0fff => return Some(self.clone()),
            (Some(tag), Some(vid)) => {
                let tci = (tag.tci & 0xf000) | (vid & 0x0fff);
                let mut out = BytesMut::from(&data[..]);
                out.get_mut(HEADER_LEN..HEADER_LEN + 2)?
                    .copy_from_slice(&tci.to_be_bytes());
                (out, 0isize, self.l2.vlan_tags)
            }
            (Some(_), None) => {
                let mut out = BytesMut::with_capacity(data.len() - VLAN_TAG_LEN);
                out.extend_from_slice(data.get(..cut)?);
                out.extend_from_slice(data.get(cut + VLAN_TAG_LEN..)?);
                (out, -(VLAN_TAG_LEN as isize), self.l2.vlan_tags - 1)
            }
            (None, Some(vid)) => {
                if self.l2.vlan_tags >= crate::wire::ethernet::MAX_VLAN_TAGS {
                    return None;
                }
                let mut out = BytesMut::with_capacity(data.len() + VLAN_TAG_LEN);
                out.extend_from_slice(data.get(..cut)?);
                out.extend_from_slice(&ethertype::VLAN.to_be_bytes());
                out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
                out.extend_from_slice(data.get(cut..)?);
                (out, VLAN_TAG_LEN as isize, self.l2.vlan_tags + 1)
            }
        };
        if let Some(partial) = self.partial_checksum {
            if partial.start < self.l2.l3_offset {
                return None;
            }
        }
        let plan = OffloadPlan::new(None, self.gso, self.partial_checksum).shifted(delta, tags)?;
        // A layout parsed already moves with the tag; one not asked for
        // yet stays to be parsed from the new bytes if it ever is.
        let layout = match self.layout {
            LayoutState::Parsed(Some(layout)) => {
                LayoutState::Parsed(Some(layout.shifted(delta, tags)?))
            }
            other => other,
        };
        let shift = |value: u16| -> Option<u16> {
            u16::try_from(isize::try_from(value).ok()?.checked_add(delta)?).ok()
        };
        let mut hdr = self.packet.hdr;
        if hdr.needs_csum() {
            hdr.csum_start = shift(hdr.csum_start)?;
        }
        if hdr.hdr_len != 0 {
            // A hint only (never trusted), kept consistent with the frame.
            hdr.hdr_len = shift(hdr.hdr_len).unwrap_or(0);
        }
        let l2 = L2Header {
            vlan_tags: tags,
            ethertype: self.l2.ethertype,
            ethertype_offset: self.l2.ethertype_offset.checked_add_signed(delta)?,
            l3_offset: self.l2.l3_offset.checked_add_signed(delta)?,
        };
        Some(CheckedFrame {
            packet: Packet {
                hdr,
                data: bytes.freeze(),
                tail: self.packet.tail.clone(),
            },
            l2,
            gso: plan.gso(),
            partial_checksum: plan.partial_checksum(),
            layout,
        })
    }
}

/// Whether the frame's IP and TCP headers all lie in `data`, as they must
/// for a frame with a tail to be checked without its tail: a TCP frame
/// whose layout parses within `data`.
pub(crate) fn headers_lead(data: &[u8], l2: &L2Header) -> bool {
    matches!(
        FrameLayout::parse_after_l2(data, l2),
        Ok((layout, _)) if layout.l4 == Some(crate::layout::L4Kind::Tcp)
            && layout.payload_offset <= data.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{FrameLayout, L4Kind};
    use crate::testing::{frame_spec, FrameSpec, IpSpec, L4Spec};
    use crate::virtio::{FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
    use proptest::prelude::*;

    /// The header a guest would send with `spec`'s frame: TSO/USO with a
    /// partial checksum if `gso`, else only the partial checksum.
    fn guest_hdr(spec: &FrameSpec, frame: &[u8], gso: bool) -> VirtioNetHdr {
        let layout = FrameLayout::parse(frame).unwrap();
        let (gso_type, csum_offset) = match (&spec.ip, &spec.l4, layout.l4) {
            (_, L4Spec::Udp, _) => (GSO_UDP_L4, 6),
            (IpSpec::V4 { .. }, _, Some(L4Kind::Tcp)) => (GSO_TCPV4, 16),
            (_, _, _) => (GSO_TCPV6, 16),
        };
        VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: if gso { gso_type } else { GSO_NONE },
            hdr_len: layout.header_len() as u16,
            gso_size: if gso { 1000 } else { 0 },
            csum_start: layout.l4_offset as u16,
            csum_offset,
            num_buffers: 0,
        }
    }

    #[test]
    fn short_frames_are_refused_before_the_header_is_looked_at() {
        let err = CheckedFrame::check(Packet::plain(vec![0u8; 13])).unwrap_err();
        assert!(matches!(err, CheckError::LinkLayer(_)), "{err}");
        let mut tagged = vec![0u8; 16];
        tagged[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        let err = CheckedFrame::check(Packet::plain(tagged)).unwrap_err();
        assert!(matches!(err, CheckError::LinkLayer(_)), "{err}");
    }

    #[test]
    fn the_old_service_tag_0x9100_is_an_ethertype_not_a_tag() {
        let mut frame = vec![0u8; 60];
        frame[12..14].copy_from_slice(&0x9100u16.to_be_bytes());
        let checked = CheckedFrame::check(Packet::plain(frame)).unwrap();
        assert_eq!(checked.outer_tag(), None);
        assert_eq!(checked.l2().ethertype, 0x9100);
    }

    #[test]
    fn a_rewritten_tag_keeps_priority_and_drop_eligibility() {
        let (frame, _) = FrameSpec::tcp4(100).tagged(1).build();
        let checked = CheckedFrame::check(Packet::plain(frame)).unwrap();
        let before = checked.outer_tag().unwrap();
        let moved = checked.retagged(Some(200)).unwrap();
        let after = moved.outer_tag().unwrap();
        assert_eq!(after.vid(), 200);
        assert_eq!(after.tci & 0xf000, before.tci & 0xf000);
        assert_eq!(moved.len(), checked.len());
    }

    proptest! {
        /// For a frame with nothing left to do, the check (which hands its
        /// link-layer parse on) gives exactly the plan validation gives, on
        /// any bytes.
        #[test]
        fn checking_a_finished_frame_is_validation(
            bytes in proptest::collection::vec(any::<u8>(), 14..200),
            spec in frame_spec(200),
            flags in prop_oneof![Just(0u8), Just(crate::virtio::FLAG_DATA_VALID)],
        ) {
            let hdr = VirtioNetHdr { flags, ..VirtioNetHdr::default() };
            for frame in [bytes.clone(), spec.build().0] {
                let validated = hdr.validate(&frame);
                match CheckedFrame::check(Packet::with_hdr(hdr, frame.clone())) {
                    // `plan` parses the layout the check left for later.
                    Ok(checked) => prop_assert_eq!(Ok(checked.plan()), validated),
                    Err(CheckError::Header(err)) => prop_assert_eq!(Err(err), validated),
                    Err(CheckError::LinkLayer(_)) => {
                        prop_assert!(L2Header::parse(&frame).is_err());
                    }
                    Err(CheckError::Lent(err)) => prop_assert!(false, "no tail: {err}"),
                }
            }
        }

        /// Whatever the tags and headers, moving a tag carries the plan
        /// over exactly as validating the new bytes from scratch would.
        #[test]
        fn a_retagged_frame_is_what_checking_its_bytes_gives(
            spec in frame_spec(3000),
            gso in any::<bool>(),
            plain in any::<bool>(),
            parsed_first in any::<bool>(),
            vid in prop_oneof![Just(None), (1u16..4095).prop_map(Some)],
        ) {
            let (frame, _) = spec.build();
            let hdr = if plain {
                VirtioNetHdr::default()
            } else {
                guest_hdr(&spec, &frame, gso)
            };
            let Ok(checked) = CheckedFrame::check(Packet::with_hdr(hdr, frame)) else {
                // Refused frames (fragments with GSO, too many segments)
                // are not what this property is about.
                return Ok(());
            };
            let mut checked = checked;
            if parsed_first {
                // A layout parsed before the retag moves with the tag.
                checked.parse_layout();
            }
            match checked.retagged(vid) {
                Some(moved) => {
                    let again = CheckedFrame::check(moved.packet().clone()).unwrap();
                    prop_assert_eq!(&again, &moved);
                    prop_assert_eq!(again.layout(), moved.layout());
                    prop_assert_eq!(moved.outer_tag().map(|t| t.vid()).unwrap_or(0),
                        match (vid, checked.outer_tag()) {
                            (Some(v), _) => v,
                            (None, _) if checked.l2().vlan_tags == 2 => {
                                // Popping the outer of two tags exposes the inner.
                                again.outer_tag().map(|t| t.vid()).unwrap_or(0)
                            }
                            (None, _) => 0,
                        });
                }
                None => prop_assert!(vid.is_some() && checked.l2().vlan_tags == 2),
            }
        }
    }
}
