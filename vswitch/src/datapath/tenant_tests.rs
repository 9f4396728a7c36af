//! Deterministic datapath tests of tenant protection: isolated ports, the
//! port-security guards and the rate limits, frame by frame with a given
//! clock.

use std::time::{Duration, Instant};

use vswitch_offload::{EgressCapabilities, Packet};

use super::*;
use crate::ethernet::build_frame;
use crate::forward::{ForwarderConfig, PortProfile};
use crate::mac::MacAddr;
use crate::vlan::VlanId;

fn mac(last: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, last])
}

/// Where a burst went, (port, frames), and what it dropped, (port, reason).
type Outcome = (Vec<(u32, usize)>, Vec<(u32, DropReason)>);

/// A datapath over ports with the given profiles (ids 1, 2, ...), each
/// taking finished frames of up to 1500 bytes.
struct Bench {
    datapath: Datapath,
    ports: PortSet,
    t0: Instant,
    out: Output,
}

impl Bench {
    fn new(profiles: impl IntoIterator<Item = PortProfile>) -> Self {
        let t0 = Instant::now();
        let mut ports = PortSet::new();
        for (i, profile) in profiles.into_iter().enumerate() {
            ports.insert_port(
                PortId(i as u32 + 1),
                profile,
                EgressCapabilities::none(1500),
            );
        }
        let forwarder = Arc::new(Forwarder::new(ForwarderConfig::default(), t0));
        Bench {
            datapath: Datapath::new(forwarder),
            ports,
            t0,
            out: Output::new(),
        }
    }

    /// Sends `packets` in from `ingress` at `millis` and returns the ports
    /// that got a frame, with how many, and the drops as (port, reason).
    fn burst(&mut self, millis: u64, ingress: u32, packets: Vec<Packet>) -> Outcome {
        self.out.clear();
        let now = self.t0 + Duration::from_millis(millis);
        self.datapath
            .process(&self.ports, PortId(ingress), packets, now, &mut self.out);
        let sent = self
            .out
            .batches()
            .iter()
            .filter(|batch| !batch.frames.is_empty())
            .map(|batch| (batch.port.0, batch.frames.len()))
            .collect();
        let drops = self
            .out
            .events()
            .iter()
            .filter_map(|event| match event {
                Event::Dropped { port, reason } => Some((port.0, *reason)),
                _ => None,
            })
            .collect();
        (sent, drops)
    }
}

fn arp_like(dst: MacAddr, src: MacAddr) -> Packet {
    Packet::plain(build_frame(dst, src, None, 0x88b5, &[0; 46]))
}

#[test]
fn isolated_ports_never_reach_each_other_flooding_included() {
    let isolated = || PortProfile::access(VlanId::DEFAULT).isolated(true);
    // 1 is the uplink; 2 and 3 are isolated guests.
    let mut b = Bench::new([PortProfile::default(), isolated(), isolated()]);
    // A broadcast from an isolated guest reaches the uplink only.
    let (sent, drops) = b.burst(0, 2, vec![arp_like(MacAddr::BROADCAST, mac(2))]);
    assert_eq!(sent, [(1, 1)]);
    assert!(drops.is_empty());
    // An unknown unicast destination floods to the uplink only, too.
    let (sent, _) = b.burst(0, 3, vec![arp_like(mac(9), mac(3))]);
    assert_eq!(sent, [(1, 1)]);
    // The uplink's broadcast reaches both guests.
    let (sent, _) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert_eq!(sent, [(2, 1), (3, 1)]);
    // Learned unicast between the guests is refused and counted on the
    // sender; to and from the uplink it flows.
    let (sent, drops) = b.burst(0, 2, vec![arp_like(mac(3), mac(2))]);
    assert!(sent.is_empty());
    assert_eq!(drops, [(2, DropReason::PortIsolated)]);
    let (sent, _) = b.burst(0, 2, vec![arp_like(mac(1), mac(2))]);
    assert_eq!(sent, [(1, 1)]);
    let (sent, _) = b.burst(0, 1, vec![arp_like(mac(3), mac(1))]);
    assert_eq!(sent, [(3, 1)]);
}

#[test]
fn an_isolated_port_alone_with_isolated_ports_has_no_destination() {
    let isolated = || PortProfile::access(VlanId::DEFAULT).isolated(true);
    let mut b = Bench::new([isolated(), isolated()]);
    let (sent, drops) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert!(sent.is_empty());
    assert_eq!(drops, [(1, DropReason::NoDestination)]);
    // Turned off, the two ports talk again.
    b.ports.insert_port(
        PortId(2),
        PortProfile::default(),
        EgressCapabilities::none(1500),
    );
    let (sent, _) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert_eq!(sent, [(2, 1)]);
}

mod guards {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use vswitch_offload::testing::FrameBuilder;

    use super::*;
    use crate::guard::PortSecurity;
    use crate::vlan::VlanSet;

    const GUEST: [u8; 4] = [10, 0, 0, 1];
    const OTHER: [u8; 4] = [10, 0, 0, 99];

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    /// Every guard on, owning 10.0.0.1 and 2001:db8:1::/64.
    fn guarded() -> PortSecurity {
        PortSecurity::new()
            .allow_ipv4(Ipv4Addr::from(GUEST))
            .allow_ipv6("2001:db8:1::/64".parse().unwrap())
            .all_guards()
    }

    /// Port 1 is a guarded guest, port 2 an unguarded uplink (a router, a
    /// DHCP server): what 1 may not send, 2 may.
    fn bench() -> Bench {
        Bench::new([
            PortProfile::default().security(guarded()),
            PortProfile::default(),
        ])
    }

    /// Sends one frame from `port` and returns where it went and the drops.
    fn send(b: &mut Bench, port: u32, packet: Packet) -> Outcome {
        b.burst(0, port, vec![packet])
    }

    /// Asserts that `packet` is dropped for `reason` from the guest (port 1)
    /// and passes from the uplink (port 2).
    fn refused_from_guest_only(packet: Packet, reason: DropReason) {
        let mut b = bench();
        assert_eq!(send(&mut b, 1, packet.clone()), (vec![], vec![(1, reason)]));
        let (sent, drops) = send(&mut b, 2, packet);
        assert!(drops.is_empty(), "{drops:?}");
        // A TSO frame leaves port 1 (which takes no offloads) in segments.
        assert!(matches!(sent[..], [(1, n)] if n >= 1), "{sent:?}");
    }

    fn passes_from_guest(packet: Packet) {
        let mut b = bench();
        assert_eq!(send(&mut b, 1, packet), (vec![(2, 1)], vec![]));
    }

    fn udp4(src: [u8; 4], ports: (u16, u16), mac_src: MacAddr) -> FrameBuilder {
        FrameBuilder::udp4(src, [255, 255, 255, 255])
            .macs(mac_src.0, MacAddr::BROADCAST.0)
            .ports(ports.0, ports.1)
            .payload(vec![0; 32])
    }

    /// An IPv6 packet with `next` header and `body` (its checksums are
    /// not the switch's business).
    fn ipv6(src: Ipv6Addr, next: u8, body: &[u8], tci: Option<u16>) -> Packet {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[next, 255]);
        packet.extend_from_slice(&src.octets());
        packet.extend_from_slice(&v6("ff02::1").octets());
        packet.extend_from_slice(body);
        Packet::plain(build_frame(
            MacAddr::BROADCAST,
            mac(1),
            tci,
            0x86dd,
            &packet,
        ))
    }

    fn icmpv6(icmp_type: u8, target: Option<Ipv6Addr>) -> Vec<u8> {
        let mut body = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        match target {
            Some(target) => body.extend_from_slice(&target.octets()),
            None => body.extend_from_slice(&[0; 8]),
        }
        body
    }

    fn arp(operation: u16, sender: [u8; 4]) -> Packet {
        let mut body = vec![0, 1, 0x08, 0x00, 6, 4];
        body.extend_from_slice(&operation.to_be_bytes());
        body.extend_from_slice(&mac(1).0);
        body.extend_from_slice(&sender);
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&[10, 0, 0, 2]);
        Packet::plain(build_frame(MacAddr::BROADCAST, mac(1), None, 0x0806, &body))
    }

    #[test]
    fn spoofed_source_addresses_are_dropped_and_counted() {
        // Its own addresses pass.
        passes_from_guest(udp4(GUEST, (5000, 5001), mac(1)).packet());
        passes_from_guest(ipv6(v6("2001:db8:1::7"), 17, &[0; 16], None));
        // Another IPv4 or IPv6 source does not.
        refused_from_guest_only(
            udp4(OTHER, (5000, 5001), mac(1)).packet(),
            DropReason::IpSourceNotAllowed,
        );
        refused_from_guest_only(
            ipv6(v6("2001:db8:2::7"), 17, &[0; 16], None),
            DropReason::IpSourceNotAllowed,
        );
        refused_from_guest_only(
            ipv6(v6("ff02::1"), 17, &[0; 16], None),
            DropReason::IpSourceNotAllowed,
        );
        // TCP, and a TSO frame, are judged the same way.
        let tcp = FrameBuilder::tcp4(OTHER, [10, 0, 0, 2])
            .macs(mac(1).0, MacAddr::BROADCAST.0)
            .payload_with(4000, |i| i as u8)
            .gso(1448);
        refused_from_guest_only(tcp.packet(), DropReason::IpSourceNotAllowed);
    }

    #[test]
    fn addresses_a_booting_guest_uses_pass_the_source_guard() {
        // DHCP DISCOVER from 0.0.0.0; but 0.0.0.0 for anything else is not.
        passes_from_guest(udp4([0; 4], (68, 67), mac(1)).packet());
        refused_from_guest_only(
            udp4([0; 4], (68, 53), mac(1)).packet(),
            DropReason::IpSourceNotAllowed,
        );
        // Link-local IPv6, and DAD's neighbour solicitation from ::.
        passes_from_guest(ipv6(v6("fe80::1"), 17, &[0; 16], None));
        passes_from_guest(ipv6(
            Ipv6Addr::UNSPECIFIED,
            58,
            &icmpv6(135, Some(v6("2001:db8:1::7"))),
            None,
        ));
        refused_from_guest_only(
            ipv6(Ipv6Addr::UNSPECIFIED, 17, &[0; 16], None),
            DropReason::IpSourceNotAllowed,
        );
    }

    #[test]
    fn arp_and_neighbour_advertisements_for_foreign_addresses_are_dropped() {
        passes_from_guest(arp(2, GUEST));
        passes_from_guest(arp(1, GUEST));
        // An ARP probe (RFC 5227) claims nothing.
        passes_from_guest(arp(1, [0; 4]));
        refused_from_guest_only(arp(2, OTHER), DropReason::ArpNotOwned);
        refused_from_guest_only(arp(1, OTHER), DropReason::ArpNotOwned);
        // Neighbour advertisements: the target is what is claimed.
        passes_from_guest(ipv6(
            v6("fe80::1"),
            58,
            &icmpv6(136, Some(v6("2001:db8:1::7"))),
            None,
        ));
        refused_from_guest_only(
            ipv6(
                v6("fe80::1"),
                58,
                &icmpv6(136, Some(v6("2001:db8:2::1"))),
                None,
            ),
            DropReason::NdNotOwned,
        );
    }

    #[test]
    fn dhcp_server_messages_from_a_guest_are_dropped() {
        // An offer or ack from an address the port owns: still refused.
        refused_from_guest_only(
            udp4(GUEST, (67, 68), mac(1)).packet(),
            DropReason::DhcpServer,
        );
        // DHCPv6 advertise (2) and reply (7) from port 547.
        for message in [2u8, 7] {
            let mut udp = vec![0x02, 0x23, 0x02, 0x22, 0, 16, 0, 0];
            udp.extend_from_slice(&[message, 0, 0, 1, 0, 0, 0, 0]);
            refused_from_guest_only(ipv6(v6("fe80::1"), 17, &udp, None), DropReason::DhcpServer);
        }
        // The client's side passes.
        let mut solicit = vec![0x02, 0x22, 0x02, 0x23, 0, 16, 0, 0];
        solicit.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0]);
        passes_from_guest(ipv6(v6("fe80::1"), 17, &solicit, None));
    }

    #[test]
    fn router_advertisements_from_a_guest_are_dropped_behind_extension_headers_too() {
        refused_from_guest_only(
            ipv6(v6("fe80::1"), 58, &icmpv6(134, None), None),
            DropReason::RouterAdvertisement,
        );
        // Behind a hop-by-hop header (RFC 7113's evasion).
        let mut hop_by_hop = vec![58, 0, 1, 4, 0, 0, 0, 0];
        hop_by_hop.extend_from_slice(&icmpv6(134, None));
        refused_from_guest_only(
            ipv6(v6("fe80::1"), 0, &hop_by_hop, None),
            DropReason::RouterAdvertisement,
        );
        // A router solicitation is a guest's to send.
        passes_from_guest(ipv6(v6("fe80::1"), 58, &icmpv6(133, None), None));
    }

    /// The IPv4 guards judge a packet on its IPv4 header and UDP ports:
    /// a TCP header cut short behind a whole IPv4 header is the
    /// receiver's to drop, from the guest's own address or not.
    #[test]
    fn ipv4_guards_read_the_ip_header_not_what_is_behind_it() {
        let cut_tcp = |src: [u8; 4]| {
            let mut ip = vec![0x45, 0, 0, 24, 0, 0, 0, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&[10, 0, 0, 2]);
            // Four bytes of a TCP header: its ports only.
            ip.extend_from_slice(&[0x30, 0x39, 0, 80]);
            Packet::plain(build_frame(MacAddr::BROADCAST, mac(1), None, 0x0800, &ip))
        };
        let packet = cut_tcp(GUEST);
        assert_eq!(
            CheckedFrame::check(packet.clone()).unwrap().layout(),
            None,
            "the layout parse refuses the cut TCP header"
        );
        passes_from_guest(packet);
        refused_from_guest_only(cut_tcp(OTHER), DropReason::IpSourceNotAllowed);
    }

    #[test]
    fn guards_read_past_vlan_tags() {
        let trunk = || {
            PortProfile::trunk(
                [VlanId::new(10).unwrap()].into_iter().collect::<VlanSet>(),
                None,
            )
        };
        let mut b = Bench::new([trunk().security(guarded()), trunk()]);
        let offer = udp4(GUEST, (67, 68), mac(1)).vlan(10).packet();
        assert_eq!(
            send(&mut b, 1, offer.clone()),
            (vec![], vec![(1, DropReason::DhcpServer)])
        );
        assert_eq!(send(&mut b, 2, offer), (vec![(1, 1)], vec![]));
        let ra = ipv6(v6("fe80::1"), 58, &icmpv6(134, None), Some(10));
        assert_eq!(
            send(&mut b, 1, ra),
            (vec![], vec![(1, DropReason::RouterAdvertisement)])
        );
        let spoofed = udp4(OTHER, (1, 2), mac(1)).vlan(10).packet();
        assert_eq!(
            send(&mut b, 1, spoofed),
            (vec![], vec![(1, DropReason::IpSourceNotAllowed)])
        );
    }

    #[test]
    fn frames_a_guard_cannot_read_are_dropped_not_passed() {
        // An IPv4 header cut short, an ARP without its addresses.
        let runt_ip = Packet::plain(build_frame(
            MacAddr::BROADCAST,
            mac(1),
            None,
            0x0800,
            &[0x45, 0, 0],
        ));
        refused_from_guest_only(runt_ip, DropReason::GuardUnreadable);
        let runt_arp = Packet::plain(build_frame(
            MacAddr::BROADCAST,
            mac(1),
            None,
            0x0806,
            &[0, 1, 8, 0],
        ));
        refused_from_guest_only(runt_arp, DropReason::GuardUnreadable);
        // Other protocols are none of the guards' business.
        passes_from_guest(arp_like(MacAddr::BROADCAST, mac(1)));
    }

    #[test]
    fn a_frame_refused_by_a_guard_teaches_the_switch_nothing() {
        let mut b = bench();
        send(&mut b, 1, udp4(OTHER, (1, 2), mac(7)).packet());
        send(&mut b, 1, udp4(GUEST, (1, 2), mac(8)).packet());
        let learned: Vec<_> = b
            .datapath
            .forwarder()
            .entries(b.t0)
            .iter()
            .map(|e| e.mac)
            .collect();
        assert_eq!(learned, [mac(8)]);
        assert!(b
            .datapath
            .forwarder()
            .entries(b.t0)
            .iter()
            .all(|e| e.mac != mac(7)));
    }
}

mod limits {
    use vswitch_offload::testing::FrameBuilder;

    use super::*;
    use crate::limit::{Bucket, PortLimits, RateLimit};

    #[test]
    fn frames_over_the_limit_toward_a_port_are_dropped_and_counted() {
        // Port 2 takes 10 frames a second, 5 saved up; port 3 is unlimited.
        let limited = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(10, 5)));
        let mut b = Bench::new([
            PortProfile::default(),
            PortProfile::default().limits(limited),
            PortProfile::default(),
        ]);
        let frames = || {
            (0..8)
                .map(|_| arp_like(MacAddr::BROADCAST, mac(1)))
                .collect()
        };
        let (sent, drops) = b.burst(0, 1, frames());
        assert_eq!(sent, [(2, 5), (3, 8)]);
        assert_eq!(drops, vec![(2, DropReason::RateLimited); 3]);
        // 300 ms later: three tokens back.
        let (sent, drops) = b.burst(300, 1, frames());
        assert_eq!(sent, [(2, 3), (3, 8)]);
        assert_eq!(drops.len(), 5);
    }

    /// Two TSO frames of 7 segments each from port 1 toward port 2, which
    /// takes `egress` and 10 frames a second, 10 saved up.
    fn two_tso_frames_toward_a_limited_port(egress: EgressCapabilities) -> Outcome {
        let limited = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(1, 10)));
        let mut b = Bench::new([PortProfile::default()]);
        b.ports
            .insert_port(PortId(2), PortProfile::default().limits(limited), egress);
        let tso = || {
            FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
                .macs(mac(1).0, mac(9).0)
                .payload_with(10_000, |i| i as u8)
                .gso(1448)
                .packet()
        };
        b.burst(0, 1, vec![tso(), tso()])
    }

    #[test]
    fn a_tso_frame_toward_a_port_costs_every_segment() {
        // Cut by the switch into 7 segments of 1502 bytes at most: the
        // bucket takes one such frame, not two, and drops the other whole.
        let (sent, drops) = two_tso_frames_toward_a_limited_port(EgressCapabilities::none(1500));
        assert_eq!(sent, [(2, 7)]);
        assert_eq!(drops, [(2, DropReason::RateLimited)]);
    }

    #[test]
    fn a_tso_frame_a_port_segments_itself_costs_its_segments_too() {
        // Toward a port that takes TSO the frames leave whole, and each
        // still costs its 7 segments.
        let (sent, drops) = two_tso_frames_toward_a_limited_port(EgressCapabilities::full(1500));
        assert_eq!(sent, [(2, 1)]);
        assert_eq!(drops, [(2, DropReason::RateLimited)]);
    }

    #[test]
    fn the_frames_of_later_calls_are_charged_once() {
        // 4 frames saved up toward port 2: two forwards of 3 frames, one
        // end of burst after each, without clearing the output between.
        let limited = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(1, 4)));
        let mut b = Bench::new([
            PortProfile::default(),
            PortProfile::default().limits(limited),
        ]);
        let now = b.t0;
        b.out.clear();
        for _ in 0..2 {
            for _ in 0..3 {
                let frame =
                    Datapath::check(PortId(1), arp_like(MacAddr::BROADCAST, mac(1)), &mut b.out)
                        .expect("a valid frame");
                b.datapath
                    .forward(&b.ports, PortId(1), frame, now, &mut b.out);
            }
            b.datapath.end_burst(&b.ports, now, &mut b.out);
        }
        assert_eq!(b.out.batches()[0].frames.len(), 4);
        let drops = b
            .out
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Dropped { .. }))
            .count();
        assert_eq!(drops, 2);
    }

    #[test]
    fn a_batch_charged_whole_knows_its_length_until_its_frames_change() {
        // Port 2 has a limit that binds after 5 frames, port 3 none.
        let limited = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(1, 5)));
        let mut b = Bench::new([
            PortProfile::default(),
            PortProfile::default().limits(limited),
            PortProfile::default(),
        ]);
        let now = b.t0;
        let flood = |b: &mut Bench, n: usize, len: usize| {
            for _ in 0..n {
                let frame = Packet::plain(build_frame(
                    MacAddr::BROADCAST,
                    mac(1),
                    None,
                    0x88b5,
                    &vec![0; len - 14],
                ));
                let frame = Datapath::check(PortId(1), frame, &mut b.out).expect("a valid frame");
                b.datapath
                    .forward(&b.ports, PortId(1), frame, now, &mut b.out);
            }
            b.datapath.end_burst(&b.ports, now, &mut b.out);
        };
        let known = |b: &Bench| -> Vec<(u32, Option<usize>)> {
            let batches = b.out.batches().iter();
            batches
                .map(|batch| (batch.port.0, batch.known_len()))
                .collect()
        };
        b.out.clear();
        flood(&mut b, 2, 100);
        // The limited port's batch was summed to be charged; the other's
        // was not.
        assert_eq!(known(&b), [(2, Some(200)), (3, None)]);
        // A second round without clearing: the sum goes on.
        flood(&mut b, 1, 60);
        assert_eq!(known(&b), [(2, Some(260)), (3, None)]);
        // Frames added after the charge: no longer known.
        b.out.batches_mut()[0]
            .frames
            .push(Packet::plain(vec![0u8; 60]));
        assert_eq!(known(&b)[0], (2, None));
        // Nor once frames are taken out, charged again or not.
        b.out.batches_mut()[0].frames.truncate(2);
        b.datapath.end_burst(&b.ports, now, &mut b.out);
        assert_eq!(known(&b)[0], (2, None));
        // A batch the credit does not cover is charged frame by frame and
        // drops some: its length is not known.
        b.out.clear();
        flood(&mut b, 4, 100);
        assert_eq!(b.out.batches()[0].frames.len(), 2);
        assert_eq!(known(&b)[0], (2, None));
    }

    #[test]
    fn a_port_over_its_receive_limit_is_not_polled_until_tokens_return() {
        // 1000 bytes a second from port 1, 100 saved up.
        let limited = PortLimits::new().from_port(RateLimit::none().bytes(Bucket::new(1000, 100)));
        let mut b = Bench::new([
            PortProfile::default().limits(limited),
            PortProfile::default(),
        ]);
        let now = |millis| b.t0 + Duration::from_millis(millis);
        assert!(Datapath::may_receive(&b.ports, PortId(1), now(0)));
        // Four 60-byte frames: 240 bytes, 140 beyond the burst: nothing
        // is dropped, the port waits 140 ms.
        let (sent, drops) = b.burst(
            0,
            1,
            (0..4)
                .map(|_| arp_like(MacAddr::BROADCAST, mac(1)))
                .collect(),
        );
        assert_eq!((sent, drops), (vec![(2, 4)], vec![]));
        let now = |millis| b.t0 + Duration::from_millis(millis);
        assert!(!Datapath::may_receive(&b.ports, PortId(1), now(139)));
        assert!(Datapath::may_receive(&b.ports, PortId(1), now(140)));
        // The other port is never held back.
        assert!(Datapath::may_receive(&b.ports, PortId(2), now(0)));
    }

    #[test]
    fn a_profile_change_keeps_the_running_limit_unless_it_changes() {
        let limited = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(1, 2)));
        let mut b = Bench::new([
            PortProfile::default(),
            PortProfile::default().limits(limited),
        ]);
        let before = b.ports.limiter(PortId(2)).cloned().unwrap();
        let caps = EgressCapabilities::none(1500);
        b.ports.insert_port(
            PortId(2),
            PortProfile::default().limits(limited).isolated(true),
            caps,
        );
        assert!(Arc::ptr_eq(&before, b.ports.limiter(PortId(2)).unwrap()));
        let other = PortLimits::new().to_port(RateLimit::none().frames(Bucket::new(2, 2)));
        b.ports
            .insert_port(PortId(2), PortProfile::default().limits(other), caps);
        assert!(!Arc::ptr_eq(&before, b.ports.limiter(PortId(2)).unwrap()));
        b.ports.insert_port(PortId(2), PortProfile::default(), caps);
        assert!(b.ports.limiter(PortId(2)).is_none());
    }
}
