//! Test support: frames built with etherparse, their [`FrameLayout`] found
//! by etherparse's parser (a cross-check of the offsets the segmenter
//! trusts), and segment checks with etherparse and smoltcp.

use etherparse::{
    DoubleVlanHeader, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, NetHeaders,
    PacketBuilder, PacketHeaders, SingleVlanHeader, TcpHeader, TcpOptions, TransportHeader,
    VlanHeader, VlanId,
};
use smoltcp::wire::{IpAddress, TcpPacket, UdpPacket};

use crate::checksum::{pseudo_header_ipv4, pseudo_header_ipv6};
use crate::frame::{CheckedFrame, Packet};
use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::plan::GsoKind;
use crate::virtio::{
    VirtioNetHdr, FLAG_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
};

/// The transport of a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4Spec {
    /// TCP; `options` adds timestamps (NOP, NOP, TS).
    Tcp { options: bool },
    /// UDP.
    Udp,
}

/// What frame to build.
#[derive(Debug, Clone)]
pub(crate) struct FrameSpec {
    pub vlans: u8,
    pub ipv6: bool,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ip_options: usize,
    /// IPv6 extension headers: bit 0 hop-by-hop, bit 1 destination options
    /// (before routing), bit 2 routing, bit 3 destination options after routing.
    pub ext_headers: u8,
    pub l4: L4Spec,
    /// Extra 32-bit words of TCP NOP options after the timestamps.
    pub tcp_extra_words: usize,
    pub payload_len: usize,
    pub payload_seed: u8,
    pub seq: u32,
    pub ip_id: u16,
    pub dont_fragment: bool,
    pub fin: bool,
    pub psh: bool,
    pub cwr: bool,
    pub ece: bool,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            vlans: 0,
            ipv6: false,
            ip_options: 0,
            ext_headers: 0,
            l4: L4Spec::Tcp { options: false },
            tcp_extra_words: 0,
            payload_len: 0,
            payload_seed: 0,
            seq: 1000,
            ip_id: 0x4242,
            dont_fragment: true,
            fin: false,
            psh: false,
            cwr: false,
            ece: false,
        }
    }
}

/// A built frame and the layout etherparse found in it.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    pub frame: Vec<u8>,
    pub layout: FrameLayout,
    pub spec: FrameSpec,
}

pub(crate) const SRC4: [u8; 4] = [192, 168, 1, 10];
pub(crate) const DST4: [u8; 4] = [10, 0, 0, 99];
pub(crate) const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(crate) const DST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 2,
];

pub(crate) fn payload_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn ipv4_options(len: usize) -> Ipv4Options {
    let mut bytes = vec![1u8; len];
    if len >= 4 {
        // Router alert: copied into every fragment.
        bytes[..4].copy_from_slice(&[0x94, 4, 0, 0]);
    }
    if len >= 12 {
        // Record route with one slot: not copied into later fragments.
        bytes[4..11].copy_from_slice(&[7, 7, 4, 0, 0, 0, 0]);
    }
    Ipv4Options::try_from(&bytes[..]).expect("option length is a multiple of 4 up to 40")
}

fn raw_ext(payload_len: usize) -> Ipv6RawExtHeader {
    let mut payload = vec![0u8; payload_len];
    // One PadN option covering the rest (harmless for options headers; a
    // routing header reads it as type 1, segments left 4-... unused here).
    payload[0] = 1;
    payload[1] = (payload_len - 2) as u8;
    Ipv6RawExtHeader::new_raw(IpNumber::UDP, &payload).expect("valid extension length")
}

fn routing_ext() -> Ipv6RawExtHeader {
    // Routing type 0xfe (experimental), segments left 0: processed by nobody.
    let mut payload = vec![0u8; 14];
    payload[0] = 0xfe;
    Ipv6RawExtHeader::new_raw(IpNumber::UDP, &payload).expect("valid extension length")
}

pub(crate) fn build(spec: &FrameSpec) -> Built {
    let payload = payload_bytes(spec.payload_len, spec.payload_seed);
    let ip = if spec.ipv6 {
        let header = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: 0,
            next_header: IpNumber::TCP,
            hop_limit: 64,
            source: SRC6,
            destination: DST6,
        };
        let routing = (spec.ext_headers & 4 != 0).then(|| Ipv6RoutingExtensions {
            routing: routing_ext(),
            final_destination_options: (spec.ext_headers & 8 != 0).then(|| raw_ext(14)),
        });
        let exts = Ipv6Extensions {
            hop_by_hop_options: (spec.ext_headers & 1 != 0).then(|| raw_ext(6)),
            destination_options: (spec.ext_headers & 2 != 0).then(|| raw_ext(22)),
            routing,
            fragment: None,
            auth: None,
        };
        IpHeaders::Ipv6(header, exts)
    } else {
        let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, SRC4, DST4).expect("header");
        header.identification = spec.ip_id;
        header.dont_fragment = spec.dont_fragment;
        header.options = ipv4_options(spec.ip_options);
        IpHeaders::Ipv4(header, Ipv4Extensions::default())
    };
    let step = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let step = match spec.vlans {
        0 => step.ip(ip),
        1 => step
            .single_vlan(VlanId::try_new(100).expect("vlan id"))
            .ip(ip),
        _ => step
            .vlan(VlanHeader::Double(DoubleVlanHeader {
                outer: SingleVlanHeader {
                    vlan_id: VlanId::try_new(200).expect("vlan id"),
                    ..Default::default()
                },
                inner: SingleVlanHeader {
                    vlan_id: VlanId::try_new(300).expect("vlan id"),
                    ..Default::default()
                },
            }))
            .ip(ip),
    };
    let mut frame = Vec::new();
    match spec.l4 {
        L4Spec::Tcp { options } => {
            let mut tcp = TcpHeader::new(40000, 443, spec.seq, 501);
            tcp.ack = true;
            tcp.acknowledgment_number = 0x1122_3344;
            tcp.fin = spec.fin;
            tcp.psh = spec.psh;
            tcp.cwr = spec.cwr;
            tcp.ece = spec.ece;
            let mut raw = Vec::new();
            if options {
                raw.extend_from_slice(&[1, 1, 8, 10]);
                raw.extend_from_slice(&0xaabb_ccddu32.to_be_bytes());
                raw.extend_from_slice(&0x0102_0304u32.to_be_bytes());
            }
            raw.extend(std::iter::repeat_n(1u8, 4 * spec.tcp_extra_words));
            tcp.options = TcpOptions::try_from_slice(&raw).expect("options fit");
            step.tcp_header(tcp)
                .write_to_vec(&mut frame, &payload)
                .expect("frame builds");
        }
        L4Spec::Udp => {
            step.udp(5353, 53)
                .write_to_vec(&mut frame, &payload)
                .expect("frame builds");
        }
    }
    let layout = layout_of(&frame);
    Built {
        frame,
        layout,
        spec: spec.clone(),
    }
}

/// The layout of `frame` as etherparse parses it.
pub(crate) fn layout_of(frame: &[u8]) -> FrameLayout {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the frame");
    let vlan_tags = headers.link_exts.len() as u8;
    let l3_offset = 14 + 4 * usize::from(vlan_tags);
    let (l3, l3_len, fragment) = match headers.net.as_ref().expect("an IP header") {
        NetHeaders::Ipv4(h, exts) => (
            L3Kind::Ipv4,
            h.header_len() + exts.header_len(),
            h.more_fragments || h.fragment_offset.value() != 0,
        ),
        NetHeaders::Ipv6(_, exts) => (
            L3Kind::Ipv6,
            40 + exts.header_len(),
            exts.fragment.is_some(),
        ),
        NetHeaders::Arp(_) => panic!("not IP"),
    };
    let l4_offset = l3_offset + l3_len;
    let (l4, l4_len) = match headers.transport.as_ref() {
        Some(TransportHeader::Tcp(tcp)) => (Some(L4Kind::Tcp), tcp.header_len()),
        Some(TransportHeader::Udp(_)) => (Some(L4Kind::Udp), 8),
        _ => (None, 0),
    };
    FrameLayout {
        vlan_tags,
        l3_offset,
        l3,
        l4_offset,
        l4,
        payload_offset: l4_offset + l4_len,
        ipv6_fragment_header: None,
        is_fragment: fragment,
    }
}

fn addresses(frame: &[u8], layout: &FrameLayout) -> (IpAddress, IpAddress) {
    let l3 = layout.l3_offset;
    match layout.l3 {
        L3Kind::Ipv4 => {
            let a: [u8; 4] = frame[l3 + 12..l3 + 16].try_into().unwrap();
            let b: [u8; 4] = frame[l3 + 16..l3 + 20].try_into().unwrap();
            (IpAddress::Ipv4(a.into()), IpAddress::Ipv4(b.into()))
        }
        L3Kind::Ipv6 => {
            let a: [u8; 16] = frame[l3 + 8..l3 + 24].try_into().unwrap();
            let b: [u8; 16] = frame[l3 + 24..l3 + 40].try_into().unwrap();
            (IpAddress::Ipv6(a.into()), IpAddress::Ipv6(b.into()))
        }
    }
}

/// Whether the TCP or UDP checksum of a transport area verifies (smoltcp).
pub(crate) fn transport_checksum_ok(
    l4: L4Kind,
    src: &IpAddress,
    dst: &IpAddress,
    data: &[u8],
) -> bool {
    match l4 {
        L4Kind::Tcp => TcpPacket::new_checked(data).is_ok_and(|p| p.verify_checksum(src, dst)),
        L4Kind::Udp => UdpPacket::new_checked(data)
            .is_ok_and(|p| p.checksum() != 0 && p.verify_checksum(src, dst)),
    }
}

/// The virtio-net header a guest sends with a frame of `layout` to ask for
/// `gso`, leaving the transport checksum partial if `partial`.
pub(crate) fn guest_hdr(layout: &FrameLayout, gso: GsoKind, partial: bool) -> VirtioNetHdr {
    let (gso_type, gso_size) = match (gso, layout.l3) {
        (GsoKind::None, _) => (GSO_NONE, 0),
        (GsoKind::Tcp { mss, ecn }, l3) => {
            let t = if l3 == L3Kind::Ipv4 {
                GSO_TCPV4
            } else {
                GSO_TCPV6
            };
            (if ecn { t | GSO_ECN } else { t }, mss)
        }
        (GsoKind::UdpL4 { size }, _) => (GSO_UDP_L4, size),
        (GsoKind::Ufo { size }, _) => (GSO_UDP, size),
    };
    let csum_offset = match layout.l4 {
        Some(L4Kind::Udp) => 6,
        _ => 16,
    };
    VirtioNetHdr {
        flags: if partial { FLAG_NEEDS_CSUM } else { 0 },
        gso_type,
        gso_size,
        csum_start: if partial { layout.l4_offset as u16 } else { 0 },
        csum_offset: if partial { csum_offset } else { 0 },
        ..VirtioNetHdr::default()
    }
}

impl Built {
    /// `frame` (this frame, possibly with a seed or other bytes changed)
    /// checked with the header a guest sends to ask for `gso` (see
    /// [`guest_hdr`]). Panics if validation refuses it or plans other than
    /// `gso`.
    pub(crate) fn checked(&self, frame: &[u8], gso: GsoKind, partial: bool) -> CheckedFrame {
        let hdr = guest_hdr(&self.layout, gso, partial);
        let checked = CheckedFrame::check(Packet::with_hdr(hdr, frame.to_vec()))
            .unwrap_or_else(|err| panic!("{hdr:?} refused: {err}"));
        assert_eq!(checked.plan().gso(), gso);
        checked
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.layout.payload_offset..]
    }

    fn checksum_at(&self) -> usize {
        self.layout.l4_offset
            + match self.layout.l4 {
                Some(L4Kind::Udp) => 6,
                _ => 16,
            }
    }

    /// Puts a partial-checksum seed into the frame's checksum field: the
    /// pseudo-header sum with (Linux) or without (DPDK) the L4 length.
    pub(crate) fn seed_partial(&self, frame: &mut [u8], with_len: bool) {
        let l4 = self.layout.l4_offset;
        let l4_len = if with_len { frame.len() - l4 } else { 0 };
        let l3 = self.layout.l3_offset;
        let (proto, _) = match self.layout.l4 {
            Some(L4Kind::Udp) => (17, ()),
            _ => (6, ()),
        };
        let seed = match self.layout.l3 {
            L3Kind::Ipv4 => pseudo_header_ipv4(
                frame[l3 + 12..l3 + 16].try_into().unwrap(),
                frame[l3 + 16..l3 + 20].try_into().unwrap(),
                proto,
                l4_len as u16,
            ),
            L3Kind::Ipv6 => pseudo_header_ipv6(
                frame[l3 + 8..l3 + 24].try_into().unwrap(),
                frame[l3 + 24..l3 + 40].try_into().unwrap(),
                proto,
                l4_len as u32,
            ),
        };
        let at = self.checksum_at();
        frame[at..at + 2].copy_from_slice(&seed.sum().to_be_bytes());
    }

    pub(crate) fn frame_with_seed(&self, with_len: bool) -> Vec<u8> {
        let mut frame = self.frame.clone();
        self.seed_partial(&mut frame, with_len);
        frame
    }

    /// Whether the transport checksum of `frame` (this frame's layout)
    /// verifies, according to smoltcp.
    pub(crate) fn l4_checksum_ok(&self, frame: &[u8]) -> bool {
        let (src, dst) = addresses(frame, &self.layout);
        transport_checksum_ok(
            self.layout.l4.expect("a transport"),
            &src,
            &dst,
            &frame[self.layout.l4_offset..],
        )
    }
}

/// What a checked segment carries.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    /// IP length (IPv4 total length, or 40 + IPv6 payload length).
    pub l3_len: usize,
    pub ipv4_id: Option<u16>,
    pub ipv4_df: bool,
    /// (offset in bytes, more fragments, identification) of an IP fragment.
    pub fragment: Option<(usize, bool, u32)>,
    pub tcp: Option<TcpHeader>,
    pub udp_len: Option<u16>,
    /// The IP payload of a fragment, or the transport payload otherwise.
    pub payload: Vec<u8>,
    /// Bytes before the IP payload of a fragment (headers to compare).
    pub header_len: usize,
}

/// Re-parses a segment with etherparse (strict: every length must agree
/// with the frame), checks the IPv4 header checksum and, for an unfragmented
/// segment, the TCP or UDP checksum with smoltcp.
pub(crate) fn check_segment(segment: &[u8]) -> SegmentInfo {
    if let Some(info) = check_ipv6_fragment(segment) {
        return info;
    }
    let headers =
        PacketHeaders::from_ethernet_slice(segment).expect("etherparse parses the segment");
    let l3_offset = 14 + 4 * headers.link_exts.len();
    let (l3_len, ipv4_id, ipv4_df, fragment, ip_header_len) = match headers.net.as_ref().unwrap() {
        NetHeaders::Ipv4(h, _) => {
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            let fragment = (h.more_fragments || h.fragment_offset.value() != 0).then(|| {
                (
                    usize::from(h.fragment_offset.value()) * 8,
                    h.more_fragments,
                    u32::from(h.identification),
                )
            });
            (
                usize::from(h.total_len),
                Some(h.identification),
                h.dont_fragment,
                fragment,
                h.header_len(),
            )
        }
        NetHeaders::Ipv6(h, exts) => {
            let fragment = exts.fragment.as_ref().map(|f| {
                (
                    usize::from(f.fragment_offset.value()) * 8,
                    f.more_fragments,
                    f.identification,
                )
            });
            (
                40 + usize::from(h.payload_length),
                None,
                false,
                fragment,
                40 + exts.header_len(),
            )
        }
        NetHeaders::Arp(_) => panic!("not IP"),
    };
    assert_eq!(
        l3_offset + l3_len,
        segment.len(),
        "IP length matches the segment"
    );
    let (src, dst) = addresses(
        segment,
        &FrameLayout {
            vlan_tags: 0,
            l3_offset,
            l3: if ipv4_id.is_some() {
                L3Kind::Ipv4
            } else {
                L3Kind::Ipv6
            },
            l4_offset: 0,
            l4: None,
            payload_offset: 0,
            ipv6_fragment_header: None,
            is_fragment: false,
        },
    );
    let l4_offset = l3_offset + ip_header_len;
    let mut info = SegmentInfo {
        l3_len,
        ipv4_id,
        ipv4_df,
        fragment,
        tcp: None,
        udp_len: None,
        payload: Vec::new(),
        header_len: l4_offset,
    };
    if fragment.is_some() {
        info.payload = segment[info.header_len..].to_vec();
        return info;
    }
    match headers.transport.as_ref().expect("a transport header") {
        TransportHeader::Tcp(tcp) => {
            assert!(
                transport_checksum_ok(L4Kind::Tcp, &src, &dst, &segment[l4_offset..]),
                "TCP checksum verifies"
            );
            info.tcp = Some(tcp.clone());
            info.header_len = l4_offset + tcp.header_len();
        }
        TransportHeader::Udp(udp) => {
            assert!(
                transport_checksum_ok(L4Kind::Udp, &src, &dst, &segment[l4_offset..]),
                "UDP checksum verifies"
            );
            info.udp_len = Some(udp.length);
            info.header_len = l4_offset + 8;
        }
        _ => panic!("unexpected transport"),
    }
    info.payload = segment[info.header_len..].to_vec();
    info
}

/// An IPv6 fragment: etherparse would read the fragmentable part of a
/// later fragment as extension headers, so only the IPv6 header and the
/// fragment header are parsed (found by walking the chain).
fn check_ipv6_fragment(segment: &[u8]) -> Option<SegmentInfo> {
    let mut l3 = 14;
    while matches!(segment[l3 - 2..l3], [0x81, 0x00] | [0x88, 0xa8]) {
        l3 += 4;
    }
    if segment[l3 - 2..l3] != [0x86, 0xdd] {
        return None;
    }
    let (header, _) = Ipv6Header::from_slice(&segment[l3..]).expect("IPv6 header parses");
    let mut next = header.next_header.0;
    let mut pos = l3 + 40;
    while matches!(next, 0 | 43 | 60) {
        next = segment[pos];
        pos += (usize::from(segment[pos + 1]) + 1) * 8;
    }
    if next != 44 {
        return None;
    }
    let (frag, _) =
        Ipv6FragmentHeader::from_slice(&segment[pos..]).expect("fragment header parses");
    let l3_len = 40 + usize::from(header.payload_length);
    assert_eq!(l3 + l3_len, segment.len(), "IP length matches the segment");
    Some(SegmentInfo {
        l3_len,
        ipv4_id: None,
        ipv4_df: false,
        fragment: Some((
            usize::from(frag.fragment_offset.value()) * 8,
            frag.more_fragments,
            frag.identification,
        )),
        tcp: None,
        udp_len: None,
        payload: segment[pos + 8..].to_vec(),
        header_len: pos + 8,
    })
}
