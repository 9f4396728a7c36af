//! Generated frames for property tests: a [`FrameSpec`] describes a frame
//! (tags, IP options or IPv6 extension headers, TCP options, payload),
//! etherparse's `PacketBuilder` writes it, and etherparse's parser says
//! where each layer starts, so the expected offsets come from an
//! independent implementation.

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder,
    PacketBuilderStep, VlanId,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// The network layer of a generated frame.
#[derive(Debug, Clone)]
pub enum IpSpec {
    /// IPv4 with `options` (a multiple of 4 bytes, at most 40).
    V4 {
        /// The raw option bytes.
        options: Vec<u8>,
    },
    /// IPv6 with optional extension headers; each `Vec` is the header
    /// payload after its two fixed bytes (6 + 8k bytes).
    V6 {
        /// A hop-by-hop options header.
        hop_by_hop: Option<Vec<u8>>,
        /// A destination options header.
        dest_opts: Option<Vec<u8>>,
        /// A routing header.
        routing: Option<Vec<u8>>,
        /// Whether a fragment header (offset 0, last fragment) follows.
        fragment: bool,
    },
}

/// The transport layer of a generated frame.
#[derive(Debug, Clone)]
pub enum L4Spec {
    /// TCP with `options` (a multiple of 4 bytes, at most 40).
    Tcp {
        /// The raw option bytes.
        options: Vec<u8>,
    },
    /// UDP.
    Udp,
}

/// A frame to build.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// 0, 1 or 2 VLAN tags; with two, `outer_8100` swaps the 802.1ad outer
    /// TPID etherparse writes for an 802.1Q one.
    pub vlan_tags: u8,
    /// See `vlan_tags`.
    pub outer_8100: bool,
    /// Network layer.
    pub ip: IpSpec,
    /// Transport layer.
    pub l4: L4Spec,
    /// Transport payload.
    pub payload: Vec<u8>,
}

/// What etherparse says about a built frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// VLAN tags in front of the IP header.
    pub vlan_tags: u8,
    /// Where the IP header starts.
    pub l3_offset: usize,
    /// Where the TCP or UDP header starts.
    pub l4_offset: usize,
    /// Where the transport payload starts.
    pub payload_offset: usize,
    /// Where the IPv6 fragment header starts, if there is one.
    pub ipv6_fragment_header: Option<usize>,
}

impl FrameSpec {
    /// A TCP/IPv4 frame without options or tags.
    pub fn tcp4(payload_len: usize) -> FrameSpec {
        FrameSpec {
            vlan_tags: 0,
            outer_8100: false,
            ip: IpSpec::V4 { options: vec![] },
            l4: L4Spec::Tcp { options: vec![] },
            payload: (0..payload_len).map(|i| i as u8).collect(),
        }
    }

    /// A TCP/IPv6 frame without extension headers or tags.
    pub fn tcp6(payload_len: usize) -> FrameSpec {
        FrameSpec {
            ip: IpSpec::V6 {
                hop_by_hop: None,
                dest_opts: None,
                routing: None,
                fragment: false,
            },
            ..Self::tcp4(payload_len)
        }
    }

    /// The same frame carrying UDP.
    pub fn udp(mut self) -> FrameSpec {
        self.l4 = L4Spec::Udp;
        self
    }

    /// The same frame with `n` VLAN tags.
    pub fn tagged(mut self, n: u8) -> FrameSpec {
        self.vlan_tags = n;
        self
    }

    fn ip_headers(&self) -> IpHeaders {
        match &self.ip {
            IpSpec::V4 { options } => {
                let mut h =
                    Ipv4Header::new(0, 64, IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
                h.identification = 0x1234;
                h.options = options.as_slice().try_into().unwrap();
                IpHeaders::Ipv4(h, Ipv4Extensions::default())
            }
            IpSpec::V6 {
                hop_by_hop,
                dest_opts,
                routing,
                fragment,
            } => {
                let raw = |p: &Vec<u8>| Ipv6RawExtHeader::new_raw(IpNumber::TCP, p).unwrap();
                let exts = Ipv6Extensions {
                    hop_by_hop_options: hop_by_hop.as_ref().map(raw),
                    destination_options: dest_opts.as_ref().map(raw),
                    routing: routing.as_ref().map(|r| Ipv6RoutingExtensions {
                        routing: raw(r),
                        final_destination_options: None,
                    }),
                    fragment: fragment.then(|| {
                        Ipv6FragmentHeader::new(IpNumber::TCP, IpFragOffset::ZERO, false, 77)
                    }),
                    auth: None,
                };
                let h = Ipv6Header {
                    hop_limit: 64,
                    source: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    destination: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    ..Default::default()
                };
                IpHeaders::Ipv6(h, exts)
            }
        }
    }

    fn write_l4<S>(&self, step: PacketBuilderStep<S>, out: &mut Vec<u8>)
    where
        PacketBuilderStep<S>: IpStep,
    {
        let ip = step.ip_step(self.ip_headers());
        match &self.l4 {
            L4Spec::Tcp { options } => ip
                .tcp(40000, 80, 0x0102_0304, 0xffff)
                .ack(0x0a0b_0c0d)
                .options_raw(options)
                .unwrap()
                .write(out, &self.payload)
                .unwrap(),
            L4Spec::Udp => ip.udp(5000, 53).write(out, &self.payload).unwrap(),
        }
    }

    /// Builds the frame and what etherparse reports about it.
    pub fn build(&self) -> (Vec<u8>, Expected) {
        let mut frame = Vec::new();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let vid = |v: u16| VlanId::try_new(v).unwrap();
        match self.vlan_tags {
            0 => self.write_l4(eth, &mut frame),
            1 => self.write_l4(eth.single_vlan(vid(100)), &mut frame),
            _ => self.write_l4(eth.double_vlan(vid(200), vid(100)), &mut frame),
        }
        if self.vlan_tags == 2 && self.outer_8100 {
            frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        }
        let expected = expected_from_etherparse(&frame, &self.ip);
        (frame, expected)
    }
}

/// Abstracts over the builder steps that accept an IP header.
pub(super) trait IpStep {
    /// Adds the IP header.
    fn ip_step(self, ip: IpHeaders) -> PacketBuilderStep<IpHeaders>;
}

impl IpStep for PacketBuilderStep<etherparse::Ethernet2Header> {
    fn ip_step(self, ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
        self.ip(ip)
    }
}

impl IpStep for PacketBuilderStep<etherparse::VlanHeader> {
    fn ip_step(self, ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
        self.ip(ip)
    }
}

fn expected_from_etherparse(frame: &[u8], spec: &IpSpec) -> Expected {
    let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).unwrap();
    let vlan_tags = headers.link_exts.len() as u8;
    let l3_offset = 14 + 4 * usize::from(vlan_tags);
    let net = headers.net.as_ref().unwrap();
    let l4_offset = l3_offset + net.header_len();
    let payload_offset = l4_offset + headers.transport.as_ref().unwrap().header_len();
    // etherparse writes extension headers in the order hop-by-hop,
    // destination options, routing, fragment.
    let ipv6_fragment_header = match (net, spec) {
        (etherparse::NetHeaders::Ipv6(_, exts), IpSpec::V6 { fragment: true, .. }) => Some(
            l3_offset
                + 40
                + exts
                    .hop_by_hop_options
                    .as_ref()
                    .map_or(0, |h| h.header_len())
                + exts
                    .destination_options
                    .as_ref()
                    .map_or(0, |h| h.header_len())
                + exts.routing.as_ref().map_or(0, |h| h.header_len()),
        ),
        _ => None,
    };
    Expected {
        vlan_tags,
        l3_offset,
        l4_offset,
        payload_offset,
        ipv6_fragment_header,
    }
}

fn ext_payload() -> impl Strategy<Value = Vec<u8>> {
    (0usize..4).prop_flat_map(|k| vec(any::<u8>(), 6 + 8 * k))
}

fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|n| vec(any::<u8>(), 4 * n))
}

/// Any network layer: IPv4 with 0 to 40 bytes of options, or IPv6 with any
/// subset of hop-by-hop, destination options, routing and fragment headers.
pub fn ip_spec() -> impl Strategy<Value = IpSpec> {
    prop_oneof![
        words(10).prop_map(|options| IpSpec::V4 { options }),
        (
            proptest::option::of(ext_payload()),
            proptest::option::of(ext_payload()),
            proptest::option::of(ext_payload()),
            any::<bool>()
        )
            .prop_map(|(hop_by_hop, dest_opts, routing, fragment)| IpSpec::V6 {
                hop_by_hop,
                dest_opts,
                routing,
                fragment
            }),
    ]
}

/// Any transport layer: TCP with 0 to 40 bytes of options, or UDP.
pub fn l4_spec() -> impl Strategy<Value = L4Spec> {
    prop_oneof![
        words(10).prop_map(|options| L4Spec::Tcp { options }),
        Just(L4Spec::Udp),
    ]
}

/// Any frame, with a payload of up to `max_payload` bytes.
pub fn frame_spec(max_payload: usize) -> impl Strategy<Value = FrameSpec> {
    (
        0u8..=2,
        any::<bool>(),
        ip_spec(),
        l4_spec(),
        vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(vlan_tags, outer_8100, ip, l4, payload)| FrameSpec {
            vlan_tags,
            outer_8100,
            ip,
            l4,
            payload,
        })
}
