//! [`FrameBuilder`]: one TCP or UDP frame with the addresses, ports, TCP
//! fields, VLAN tags, payload and offload request a test asks for.

use etherparse::{
    IpDscp, IpEcn, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel,
    Ipv6Header, PacketBuilder, PacketBuilderStep, TcpHeader, VlanId,
};

use super::spec::IpStep;
use crate::virtio::{FLAG_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::{Packet, VirtioNetHdr};

/// TCP flag bits, as they sit in byte 13 of the TCP header, for
/// [`FrameBuilder::tcp_flags`]: the parser's own constants.
pub use crate::wire::tcp::flags as tcp_flags;

/// The IP addresses of a frame, which also fix its IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addresses {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What the frame asks of the host, in its virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offload {
    /// Nothing: checksums complete, an all-zero header.
    None,
    /// A partial transport checksum.
    Checksum,
    /// A partial transport checksum and segmentation into `mss`-byte
    /// payloads (TSO for TCP, USO for UDP).
    Segment { mss: u16, ecn: bool },
}

/// One TCP or UDP frame over IPv4 or IPv6, written by etherparse's
/// `PacketBuilder` (so lengths and checksums come from an implementation
/// independent of this crate), with the virtio-net header a Linux guest
/// would send with it.
///
/// Unless set otherwise: MAC addresses 02:00:00:00:00:01 to
/// 02:00:00:00:00:02, no VLAN tag, TTL 64, IPv4 identification 0 and no
/// fragment flags, TCP from port 40000 to 80 with sequence number 0, no flags, no
/// acknowledgment number, window 0 and no options, UDP from port 5000 to
/// 53, an empty payload, complete checksums and no offload request.
///
/// [`partial_checksum`](Self::partial_checksum) and [`gso`](Self::gso)
/// leave the transport checksum field as a guest does when it asks for
/// checksum offload: seeded with the pseudo-header sum over the whole
/// transport length, not complemented; the header then points at it.
///
/// ```
/// use vswitch_offload::testing::{tcp_flags, FrameBuilder};
/// use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
/// use vswitch_offload::{CheckedFrame, FrameLayout};
///
/// let tso = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
///     .vlan(100)
///     .ports(40000, 5201)
///     .seq(7)
///     .tcp_flags(tcp_flags::ACK | tcp_flags::PSH)
///     .payload_with(3000, |i| i as u8)
///     .gso(1448);
/// let (hdr, frame) = (tso.hdr(), tso.build());
/// assert_eq!(frame.len(), 18 + 20 + 20 + 3000);
/// assert_eq!((hdr.flags, hdr.gso_type, hdr.gso_size), (FLAG_NEEDS_CSUM, GSO_TCPV4, 1448));
/// assert_eq!((hdr.csum_start, hdr.csum_offset, hdr.hdr_len), (38, 16, 58));
///
/// let layout = FrameLayout::parse(&frame).unwrap();
/// assert_eq!((layout.l4_offset, layout.payload_offset), (38, 58));
/// assert!(CheckedFrame::check(tso.packet()).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: Vec<u16>,
    addresses: Addresses,
    traffic_class: u8,
    ttl: u8,
    ip_id: u16,
    dont_fragment: bool,
    more_fragments: bool,
    udp: bool,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack_number: u32,
    flags: u8,
    window: u16,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
    offload: Offload,
}

impl FrameBuilder {
    fn new(addresses: Addresses, udp: bool) -> FrameBuilder {
        FrameBuilder {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlans: Vec::new(),
            addresses,
            traffic_class: 0,
            ttl: 64,
            ip_id: 0,
            dont_fragment: false,
            more_fragments: false,
            udp,
            src_port: if udp { 5000 } else { 40000 },
            dst_port: if udp { 53 } else { 80 },
            seq: 0,
            ack_number: 0,
            flags: 0,
            window: 0,
            tcp_options: Vec::new(),
            payload: Vec::new(),
            offload: Offload::None,
        }
    }

    /// A TCP/IPv4 frame from `src` to `dst`.
    pub fn tcp4(src: [u8; 4], dst: [u8; 4]) -> FrameBuilder {
        Self::new(Addresses::V4 { src, dst }, false)
    }

    /// A UDP/IPv4 frame from `src` to `dst`.
    pub fn udp4(src: [u8; 4], dst: [u8; 4]) -> FrameBuilder {
        Self::new(Addresses::V4 { src, dst }, true)
    }

    /// A TCP/IPv6 frame from `src` to `dst`.
    pub fn tcp6(src: [u8; 16], dst: [u8; 16]) -> FrameBuilder {
        Self::new(Addresses::V6 { src, dst }, false)
    }

    /// A UDP/IPv6 frame from `src` to `dst`.
    pub fn udp6(src: [u8; 16], dst: [u8; 16]) -> FrameBuilder {
        Self::new(Addresses::V6 { src, dst }, true)
    }

    /// The Ethernet source and destination addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> FrameBuilder {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds an 802.1Q tag with VLAN ID `vid` (priority 0) inside the tags
    /// already added. With two, etherparse writes the outer one with the
    /// 802.1ad TPID 0x88a8.
    ///
    /// # Panics
    ///
    /// With a third tag, or a `vid` above 4095.
    pub fn vlan(mut self, vid: u16) -> FrameBuilder {
        assert!(self.vlans.len() < 2, "at most two VLAN tags");
        assert!(vid <= VlanId::MAX_U16, "VLAN ID {vid} above 4095");
        self.vlans.push(vid);
        self
    }

    /// The IPv4 type-of-service byte or the IPv6 traffic class: DSCP in the
    /// upper six bits, ECN in the lower two.
    pub fn traffic_class(mut self, traffic_class: u8) -> FrameBuilder {
        self.traffic_class = traffic_class;
        self
    }

    /// The IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> FrameBuilder {
        self.ttl = ttl;
        self
    }

    /// The IPv4 identification field (ignored for IPv6).
    pub fn ip_id(mut self, id: u16) -> FrameBuilder {
        self.ip_id = id;
        self
    }

    /// The IPv4 Don't Fragment flag (ignored for IPv6).
    pub fn dont_fragment(mut self, df: bool) -> FrameBuilder {
        self.dont_fragment = df;
        self
    }

    /// The IPv4 More Fragments flag (ignored for IPv6): the frame becomes
    /// the first fragment of a datagram.
    pub fn more_fragments(mut self, mf: bool) -> FrameBuilder {
        self.more_fragments = mf;
        self
    }

    /// The transport source and destination ports.
    pub fn ports(mut self, src: u16, dst: u16) -> FrameBuilder {
        self.src_port = src;
        self.dst_port = dst;
        self
    }

    /// The TCP sequence number.
    pub fn seq(mut self, seq: u32) -> FrameBuilder {
        self.seq = seq;
        self
    }

    /// The TCP acknowledgment number (the ACK flag is set with
    /// [`tcp_flags`](Self::tcp_flags)).
    pub fn ack_number(mut self, ack: u32) -> FrameBuilder {
        self.ack_number = ack;
        self
    }

    /// All eight TCP flags at once, from the [`tcp_flags`](mod@tcp_flags)
    /// bits.
    pub fn tcp_flags(mut self, flags: u8) -> FrameBuilder {
        self.flags = flags;
        self
    }

    /// The TCP window.
    pub fn window(mut self, window: u16) -> FrameBuilder {
        self.window = window;
        self
    }

    /// Raw TCP options.
    ///
    /// # Panics
    ///
    /// In [`build`](Self::build), unless `options` is a multiple of 4 bytes
    /// and at most 40.
    pub fn tcp_options(mut self, options: &[u8]) -> FrameBuilder {
        self.tcp_options = options.to_vec();
        self
    }

    /// The transport payload.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> FrameBuilder {
        self.payload = payload.into();
        self
    }

    /// A payload of `len` bytes, byte `i` being `pattern(i)`.
    pub fn payload_with(self, len: usize, pattern: impl Fn(usize) -> u8) -> FrameBuilder {
        self.payload((0..len).map(pattern).collect::<Vec<u8>>())
    }

    /// Asks for checksum offload: the transport checksum is left partial
    /// and the header says where it is.
    pub fn partial_checksum(mut self) -> FrameBuilder {
        self.offload = Offload::Checksum;
        self
    }

    /// Asks for segmentation into payloads of `mss` bytes (TSO for TCP,
    /// USO for UDP), with the transport checksum left partial.
    pub fn gso(mut self, mss: u16) -> FrameBuilder {
        self.offload = Offload::Segment { mss, ecn: false };
        self
    }

    /// Sets `GSO_ECN` in a TSO request: the sender has ECN set up, so CWR
    /// may stay on the first segment only.
    ///
    /// # Panics
    ///
    /// Without [`gso`](Self::gso) first.
    pub fn gso_ecn(mut self) -> FrameBuilder {
        let Offload::Segment { ecn, .. } = &mut self.offload else {
            panic!("gso_ecn without gso");
        };
        *ecn = true;
        self
    }

    /// Length of the IP header (no options or extension headers here).
    fn ip_header_len(&self) -> usize {
        match self.addresses {
            Addresses::V4 { .. } => Ipv4Header::MIN_LEN,
            Addresses::V6 { .. } => Ipv6Header::LEN,
        }
    }

    /// Length of the TCP or UDP header.
    fn l4_header_len(&self) -> usize {
        if self.udp {
            8
        } else {
            TcpHeader::MIN_LEN + self.tcp_options.len()
        }
    }

    /// Where the IP header starts: after the Ethernet header and the tags.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// Where the TCP or UDP header starts.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset() + self.ip_header_len()
    }

    /// Where the transport payload starts.
    pub fn payload_offset(&self) -> usize {
        self.l4_offset() + self.l4_header_len()
    }

    /// The virtio-net header that goes with the frame.
    pub fn hdr(&self) -> VirtioNetHdr {
        let csum_offset = if self.udp { 6 } else { 16 };
        let partial = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: self.l4_offset() as u16,
            csum_offset,
            ..VirtioNetHdr::default()
        };
        match self.offload {
            Offload::None => VirtioNetHdr::default(),
            Offload::Checksum => partial,
            Offload::Segment { mss, ecn } => {
                let gso_type = match (self.udp, self.addresses) {
                    (true, _) => GSO_UDP_L4,
                    (false, Addresses::V4 { .. }) => GSO_TCPV4,
                    (false, Addresses::V6 { .. }) => GSO_TCPV6,
                };
                VirtioNetHdr {
                    gso_type: if ecn { gso_type | GSO_ECN } else { gso_type },
                    gso_size: mss,
                    hdr_len: self.payload_offset() as u16,
                    ..partial
                }
            }
        }
    }

    /// The frame bytes.
    ///
    /// # Panics
    ///
    /// If etherparse refuses the frame: an IPv4 packet above 65 535 bytes,
    /// TCP options of a bad length.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.payload_offset() + self.payload.len());
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let vid = |v: u16| VlanId::try_new(v).expect("VLAN ID checked in `vlan`");
        match self.vlans[..] {
            [] => self.write_ip(eth, &mut frame),
            [vid0] => self.write_ip(eth.single_vlan(vid(vid0)), &mut frame),
            [outer, inner] => self.write_ip(eth.double_vlan(vid(outer), vid(inner)), &mut frame),
            _ => unreachable!("at most two tags, checked in `vlan`"),
        }
        if self.offload != Offload::None {
            let at = self.l4_offset() + usize::from(self.hdr().csum_offset);
            let seed = self.pseudo_header_sum(frame.len() - self.l4_offset());
            frame[at..at + 2].copy_from_slice(&seed.to_be_bytes());
        }
        frame
    }

    /// The frame and its header, as a guest hands them over.
    pub fn packet(&self) -> Packet {
        Packet::with_hdr(self.hdr(), self.build())
    }

    fn ip_headers(&self) -> IpHeaders {
        let protocol = if self.udp {
            IpNumber::UDP
        } else {
            IpNumber::TCP
        };
        match self.addresses {
            Addresses::V4 { src, dst } => {
                let mut h = Ipv4Header::new(0, self.ttl, protocol, src, dst)
                    .expect("an empty payload fits");
                h.dscp = IpDscp::try_new(self.traffic_class >> 2).expect("six bits");
                h.ecn = IpEcn::try_new(self.traffic_class & 3).expect("two bits");
                h.identification = self.ip_id;
                h.dont_fragment = self.dont_fragment;
                h.more_fragments = self.more_fragments;
                IpHeaders::Ipv4(h, Ipv4Extensions::default())
            }
            Addresses::V6 { src, dst } => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: self.traffic_class,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: 0,
                    next_header: protocol,
                    hop_limit: self.ttl,
                    source: src,
                    destination: dst,
                },
                Ipv6Extensions::default(),
            ),
        }
    }

    fn write_ip<S>(&self, step: PacketBuilderStep<S>, out: &mut Vec<u8>)
    where
        PacketBuilderStep<S>: IpStep,
    {
        let ip = step.ip_step(self.ip_headers());
        if self.udp {
            ip.udp(self.src_port, self.dst_port)
                .write(out, &self.payload)
                .expect("etherparse writes the UDP frame");
            return;
        }
        let mut tcp = TcpHeader::new(self.src_port, self.dst_port, self.seq, self.window);
        tcp.acknowledgment_number = self.ack_number;
        let bit = |b: u8| self.flags & b != 0;
        tcp.fin = bit(tcp_flags::FIN);
        tcp.syn = bit(tcp_flags::SYN);
        tcp.rst = bit(tcp_flags::RST);
        tcp.psh = bit(tcp_flags::PSH);
        tcp.ack = bit(tcp_flags::ACK);
        tcp.urg = bit(tcp_flags::URG);
        tcp.ece = bit(tcp_flags::ECE);
        tcp.cwr = bit(tcp_flags::CWR);
        tcp.set_options_raw(&self.tcp_options)
            .expect("TCP options: a multiple of 4 bytes, at most 40");
        ip.tcp_header(tcp)
            .write(out, &self.payload)
            .expect("etherparse writes the TCP frame");
    }

    /// The folded ones'-complement sum of the pseudo-header (RFC 793
    /// section 3.1, RFC 8200 section 8.1) over `l4_len` transport bytes,
    /// not complemented, summed by etherparse.
    fn pseudo_header_sum(&self, l4_len: usize) -> u16 {
        use etherparse::checksum::Sum16BitWords;
        let protocol = if self.udp { 17 } else { 6 };
        let sum = match self.addresses {
            Addresses::V4 { src, dst } => Sum16BitWords::new().add_4bytes(src).add_4bytes(dst),
            Addresses::V6 { src, dst } => Sum16BitWords::new().add_16bytes(src).add_16bytes(dst),
        };
        let l4_len = u32::try_from(l4_len).expect("a transport length that fits 32 bits");
        // etherparse sums native-endian words: the native bytes of its
        // complement, complemented again, are the folded sum in network
        // order.
        let folded = !sum
            .add_2bytes([0, protocol])
            .add_4bytes(l4_len.to_be_bytes())
            .ones_complement();
        u16::from_be_bytes(folded.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{checksum, pseudo_header_ipv4, pseudo_header_ipv6};
    use crate::{CheckedFrame, FrameLayout, L3Kind, L4Kind};

    const V6_SRC: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_DST: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn all_four() -> [FrameBuilder; 4] {
        let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
        [
            FrameBuilder::tcp4(a, b),
            FrameBuilder::udp4(a, b),
            FrameBuilder::tcp6(V6_SRC, V6_DST),
            FrameBuilder::udp6(V6_SRC, V6_DST),
        ]
    }

    /// The pseudo-header sum over the transport bytes, from this crate's
    /// checksum module: a cross-check of etherparse and of the seed.
    fn pseudo_header(frame: &[u8], layout: &FrameLayout) -> crate::checksum::Checksum {
        let (l3, l4) = (&frame[layout.l3_offset..], &frame[layout.l4_offset..]);
        let proto = if layout.l4 == Some(L4Kind::Udp) {
            17
        } else {
            6
        };
        match layout.l3 {
            L3Kind::Ipv4 => {
                let ip = |at: usize| [l3[at], l3[at + 1], l3[at + 2], l3[at + 3]];
                pseudo_header_ipv4(ip(12), ip(16), proto, l4.len() as u16)
            }
            _ => {
                let ip = |at: usize| <[u8; 16]>::try_from(&l3[at..at + 16]).unwrap();
                pseudo_header_ipv6(ip(8), ip(24), proto, l4.len() as u32)
            }
        }
    }

    #[test]
    fn complete_checksums_verify_and_offsets_match_the_parser() {
        for (i, b) in all_four().into_iter().enumerate() {
            for tags in 0..=2 {
                let mut b = b.clone().payload_with(100 + i, |j| (j * 7 % 251) as u8);
                for t in 0..tags {
                    b = b.vlan(10 + t);
                }
                let frame = b.build();
                let layout = FrameLayout::parse(&frame).unwrap();
                assert_eq!(layout.vlan_tags, tags as u8);
                assert_eq!(
                    (layout.l3_offset, layout.l4_offset, layout.payload_offset),
                    (b.l3_offset(), b.l4_offset(), b.payload_offset())
                );
                let mut sum = pseudo_header(&frame, &layout);
                sum.add_bytes(&frame[layout.l4_offset..]);
                assert_eq!(sum.finish(), 0, "builder {i}, {tags} tags");
                if layout.l3 == L3Kind::Ipv4 {
                    assert_eq!(checksum(&frame[layout.l3_offset..layout.l4_offset]), 0);
                }
                assert_eq!(b.hdr(), VirtioNetHdr::default());
            }
        }
    }

    #[test]
    fn partial_checksums_hold_the_pseudo_header_sum_and_pass_the_check() {
        for b in all_four() {
            for b in [b.clone().partial_checksum(), b.gso(100)] {
                let b = b.vlan(7).payload_with(1000, |j| j as u8);
                let (frame, hdr) = (b.build(), b.hdr());
                let layout = FrameLayout::parse(&frame).unwrap();
                let at = usize::from(hdr.csum_start + hdr.csum_offset);
                let seed = u16::from_be_bytes([frame[at], frame[at + 1]]);
                assert_eq!(seed, pseudo_header(&frame, &layout).sum());
                assert_eq!(usize::from(hdr.csum_start), layout.l4_offset);
                assert!(CheckedFrame::check(b.packet()).is_ok(), "{hdr:?}");
            }
        }
    }

    #[test]
    fn gso_types_follow_the_transport_and_the_ip_version() {
        let types = all_four().map(|b| b.gso(1000).hdr().gso_type);
        assert_eq!(types, [GSO_TCPV4, GSO_UDP_L4, GSO_TCPV6, GSO_UDP_L4]);
        let ecn = all_four()[0].clone().gso(1000).gso_ecn().hdr();
        assert_eq!((ecn.gso_type, ecn.hdr_len), (GSO_TCPV4 | GSO_ECN, 54));
    }

    #[test]
    fn tcp_and_ip_fields_land_where_the_caller_put_them() {
        let frame = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .macs([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb])
            .traffic_class((46 << 2) | 3)
            .ttl(5)
            .ip_id(0x1234)
            .dont_fragment(true)
            .more_fragments(true)
            .ports(1000, 2000)
            .seq(0x0102_0304)
            .ack_number(0x0a0b_0c0d)
            .tcp_flags(tcp_flags::CWR | tcp_flags::ACK | tcp_flags::FIN)
            .window(0xffff)
            .tcp_options(&[1, 1, 1, 0])
            .payload(*b"xy")
            .build();
        assert_eq!(&frame[..12], &[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
        let ip = &frame[14..34];
        assert_eq!(
            (ip[1], ip[8], &ip[4..6], ip[6]),
            ((46 << 2) | 3, 5, &[0x12, 0x34][..], 0x60)
        );
        let tcp = &frame[34..58];
        assert_eq!(&tcp[..4], &[0x03, 0xe8, 0x07, 0xd0]);
        assert_eq!(&tcp[4..12], &[1, 2, 3, 4, 0xa, 0xb, 0xc, 0xd]);
        assert_eq!(
            (tcp[12], tcp[13], &tcp[14..16]),
            (6 << 4, 0x91, &[0xff, 0xff][..])
        );
        assert_eq!(&tcp[20..], &[1, 1, 1, 0]);
        assert_eq!(&frame[58..], b"xy");
    }
}
