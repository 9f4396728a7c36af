//! The uplink port against the real kernel: both ends of a veth pair in a
//! namespace made for the test, an uplink on each. What one sends the
//! other receives, with its content and its checksum state; flows spread
//! over a fanout group; `ethtool -K` on the running port is followed; a
//! link that goes down, and an interface that disappears and comes back.

use std::time::{Duration, Instant};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use vswitch_offload::testing::FrameBuilder;
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4};
use vswitch_offload::{CheckedFrame, Packet};
use vswitch_ports::uplink::{open_packet_socket, LinkState, OffloadMode, UplinkConfig, UplinkPort};
use vswitch_ports::{BatchSendError, Port};
use vswitch_tests::{require_netns, NetNs};

const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];

/// A namespace with a veth pair `up` - `peer`, both up, IPv6 off so that
/// the kernel sends nothing of its own on it.
struct Wire {
    ns: NetNs,
    up: String,
    peer: String,
}

impl Wire {
    fn new(label: &str) -> Wire {
        let ns = NetNs::new(&format!("vswu{label}")).expect("create namespace");
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .unwrap();
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            .unwrap();
        let wire = Wire {
            ns,
            up: format!("up{label}"),
            peer: format!("peer{label}"),
        };
        wire.create();
        wire
    }

    fn create(&self) {
        self.ns
            .exec(&[
                "ip", "link", "add", &self.up, "type", "veth", "peer", "name", &self.peer,
            ])
            .unwrap();
        for name in [&self.up, &self.peer] {
            self.ns.exec(&["ip", "link", "set", name, "up"]).unwrap();
        }
        // The carrier comes a moment after (linkwatch); an uplink opened
        // before it starts down.
        let deadline = Instant::now() + Duration::from_secs(3);
        for name in [&self.up, &self.peer] {
            while !self
                .ns
                .exec(&["ip", "-o", "link", "show", "dev", name])
                .unwrap()
                .contains("state UP")
            {
                assert!(Instant::now() < deadline, "{name} did not come up");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.ns.name())
    }

    fn open(&self, interface: &str, config: UplinkConfig) -> UplinkPort {
        UplinkPort::open(interface, config.netns(self.netns_path())).expect("open uplink")
    }

    /// The uplink on `up` with offloads as the interface has them, looking
    /// at the link every 10 ms: for the tests of a link that changes.
    fn open_watching(&self) -> UplinkPort {
        self.open(
            &self.up,
            UplinkConfig::new(OffloadMode::Auto).refresh(Duration::from_millis(10)),
        )
    }
}

/// Polls `port`'s queue `queue` until `count` frames arrived or 3 s passed.
fn receive(port: &UplinkPort, queue: usize, count: usize) -> Vec<Packet> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    while got.len() < count && Instant::now() < deadline {
        if port.receive(queue, &mut got, 64).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// What stays queued on `port` for 100 ms.
fn leftovers(port: &UplinkPort) -> usize {
    std::thread::sleep(Duration::from_millis(100));
    let mut got = Vec::new();
    for queue in 0..port.capabilities().rx_queues {
        port.receive(queue, &mut got, 64).unwrap();
    }
    got.len()
}

/// Refreshes `port` until its link is `state`, for at most 3 s.
fn wait_for(port: &UplinkPort, state: LinkState) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while port.refresh() != state {
        assert!(
            Instant::now() < deadline,
            "the link did not become {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A 100-byte UDP frame from A to B.
fn small_udp() -> Packet {
    FrameBuilder::udp4(A, B).payload(vec![1; 100]).packet()
}

fn send(port: &UplinkPort, frames: Vec<Packet>) {
    let mut batch = frames;
    port.send_batch(0, &mut batch).expect("send");
    assert!(batch.is_empty());
}

/// Whether etherparse finds the IPv4 and TCP/UDP checksums of `frame`
/// complete and right.
fn checksums_ok(frame: &[u8]) -> bool {
    let Ok(headers) = PacketHeaders::from_ethernet_slice(frame) else {
        return false;
    };
    let payload = headers.payload.slice();
    match (headers.net, headers.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) => {
            ip.header_checksum == ip.calc_header_checksum()
                && tcp.calc_checksum_ipv4(&ip, payload).ok() == Some(tcp.checksum)
        }
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Udp(udp))) => {
            ip.header_checksum == ip.calc_header_checksum()
                && udp.calc_checksum_ipv4(&ip, payload).ok() == Some(udp.checksum)
        }
        _ => false,
    }
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn frames_cross_the_wire_with_their_content_and_checksum_state() {
    require_netns!();
    let wire = Wire::new("c");
    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::Tso));
    let uplink = wire.open(&wire.up, UplinkConfig::new(OffloadMode::Auto));
    assert_eq!(uplink.link(), LinkState::Up);
    let report = uplink.report();
    assert_eq!(
        report.vnet_hdr_len, 12,
        "a kernel with PACKET_VNET_HDR_SZ takes the 12-byte header"
    );
    // Read by name: the legacy flags cannot see TSO with ECN.
    assert!(report.nic.tx_checksum && report.nic.tso, "{report}");
    assert!(report.nic.tso6 && report.nic.tso_ecn, "{report}");
    assert!(uplink.capabilities().egress.tso4, "veth does TSO: {report}");

    let plain = FrameBuilder::udp4(A, B).payload_with(200, |i| i as u8);
    let partial = FrameBuilder::tcp4(A, B)
        .payload_with(1000, |i| (i * 7) as u8)
        .partial_checksum();
    let tso = FrameBuilder::tcp4(A, B)
        .seq(1000)
        .payload_with(6000, |i| (i * 3) as u8)
        .gso(1448);
    send(
        &sender,
        vec![plain.packet(), partial.packet(), tso.packet()],
    );
    let got = receive(&uplink, 0, 3);
    assert_eq!(got.len(), 3, "three frames sent, {} arrived", got.len());

    assert_eq!(&got[0].data[..], &plain.build()[..]);
    assert!(!got[0].hdr.needs_csum());
    assert!(checksums_ok(&got[0].data));

    // The partial checksum arrives partial, pointing where it did.
    assert_eq!(&got[1].data[..], &partial.build()[..]);
    let hdr = got[1].hdr;
    assert_eq!(hdr.flags & FLAG_NEEDS_CSUM, FLAG_NEEDS_CSUM, "{hdr:?}");
    assert_eq!(
        (hdr.gso_type, hdr.csum_start, hdr.csum_offset),
        (GSO_NONE, 34, 16)
    );

    // The TSO frame crosses whole: veth does not cut it.
    assert_eq!(&got[2].data[..], &tso.build()[..]);
    let hdr = got[2].hdr;
    assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1448), "{hdr:?}");
    for packet in got {
        CheckedFrame::check(packet).expect("what the kernel hands over validates");
    }

    // Neither side sees its own frames again.
    assert_eq!(leftovers(&sender), 0, "the sender took back what it sent");
    send(&uplink, vec![plain.packet()]);
    assert_eq!(receive(&sender, 0, 1).len(), 1);
    assert_eq!(leftovers(&uplink), 0, "the uplink took back what it sent");
    let stats = uplink.stats();
    assert_eq!((stats.rx_frames, stats.tx_frames), (3, 1), "{stats:?}");
    assert_eq!((stats.rx_errors, stats.tx_errors), (0, 0), "{stats:?}");
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn a_fanout_group_spreads_flows_and_keeps_each_on_one_queue_in_order() {
    require_netns!();
    let wire = Wire::new("f");
    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    let uplink = wire.open(&wire.up, UplinkConfig::new(OffloadMode::Auto).queues(2));
    let caps = uplink.capabilities();
    assert_eq!((caps.rx_queues, caps.tx_queues), (2, 2));
    const FLOWS: u16 = 32;
    const PER_FLOW: u8 = 4;
    let mut frames = Vec::new();
    for round in 0..PER_FLOW {
        for flow in 0..FLOWS {
            frames.push(
                FrameBuilder::udp4(A, B)
                    .ports(10_000 + flow, 4789)
                    .payload(vec![round; 64])
                    .packet(),
            );
        }
    }
    for chunk in frames.chunks(32) {
        send(&sender, chunk.to_vec());
    }
    let total = usize::from(FLOWS) * usize::from(PER_FLOW);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut queues = [Vec::new(), Vec::new()];
    while queues.iter().map(Vec::len).sum::<usize>() < total && Instant::now() < deadline {
        for (queue, got) in queues.iter_mut().enumerate() {
            uplink.receive(queue, got, 64).unwrap();
        }
    }
    assert_eq!(queues.iter().map(Vec::len).sum::<usize>(), total);
    assert!(
        queues.iter().all(|q| !q.is_empty()),
        "32 flows all on one queue: {} and {}",
        queues[0].len(),
        queues[1].len()
    );
    let mut queue_of = std::collections::HashMap::new();
    for (queue, got) in queues.iter().enumerate() {
        let mut next_round = std::collections::HashMap::new();
        for packet in got {
            let port = u16::from_be_bytes([packet.data[34], packet.data[35]]);
            assert_eq!(
                *queue_of.entry(port).or_insert(queue),
                queue,
                "flow {port} split"
            );
            let round = *packet.data.last().unwrap();
            let expected = next_round.entry(port).or_insert(0u8);
            assert_eq!(round, *expected, "flow {port} reordered");
            *expected += 1;
        }
    }
}

#[test]
#[ignore = "needs root, ip netns, veth, ethtool: bash .ci/test runs it where they are"]
fn an_ethtool_change_while_running_is_followed() {
    require_netns!();
    let wire = Wire::new("e");
    let receiver = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    let uplink = wire.open_watching();
    assert!(uplink.capabilities().egress.tso4);
    let tso = FrameBuilder::tcp4(A, B)
        .payload_with(5000, |i| i as u8)
        .gso(1448);

    wire.ns
        .exec(&["ethtool", "-K", &wire.up, "tso", "off"])
        .expect("ethtool -K (install ethtool)");
    // The refresh runs from the frame path once its period is over.
    std::thread::sleep(Duration::from_millis(20));
    send(&uplink, vec![tso.packet()]);
    let report = uplink.report();
    assert!(!report.nic.tso && !report.current.tso4, "{report}");
    assert!(report.current.checksum, "{report}");
    assert!(report.declared.tso4, "the switch still hands it TSO frames");
    assert!(
        report.to_string().contains("the port now segments"),
        "{report}"
    );
    let segments = receive(&receiver, 0, 4);
    assert_eq!(segments.len(), 4, "5000 bytes in 1448-byte segments");
    // The port cut the frame with the switch's own engine: plain,
    // fully checksummed segments.
    for segment in &segments {
        assert_eq!(segment.hdr.gso_type, GSO_NONE);
        assert!(segment.data.len() <= 14 + 1500);
        assert!(checksums_ok(&segment.data));
    }
    let stats = uplink.stats();
    assert_eq!(
        (stats.tx_adapted, stats.feature_changes),
        (1, 1),
        "{stats:?}"
    );

    wire.ns
        .exec(&["ethtool", "-K", &wire.up, "tx", "off"])
        .unwrap();
    assert_eq!(uplink.refresh(), LinkState::Up);
    assert!(!uplink.current_capabilities().checksum);
    let partial = FrameBuilder::tcp4(A, B)
        .payload_with(700, |i| i as u8)
        .partial_checksum();
    send(&uplink, vec![partial.packet(), tso.packet()]);
    let got = receive(&receiver, 0, 5);
    assert_eq!(got.len(), 5);
    for frame in &got {
        assert!(!frame.hdr.needs_csum(), "{:?}", frame.hdr);
        assert!(checksums_ok(&frame.data), "the port completed the checksum");
    }
    assert_eq!(uplink.stats().tx_adapted, 3);
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn a_link_that_goes_down_or_away_drops_frames_and_comes_back() {
    require_netns!();
    let wire = Wire::new("l");
    let uplink = wire.open_watching();
    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));

    // The peer going down takes the carrier away.
    wire.ns
        .exec(&["ip", "link", "set", &wire.peer, "down"])
        .unwrap();
    // The kernel reports the carrier change a moment later (linkwatch).
    wait_for(&uplink, LinkState::Down);
    let mut batch = vec![small_udp(), small_udp()];
    let err = uplink.send_batch(0, &mut batch).unwrap_err();
    assert!(matches!(err, BatchSendError::Disconnected { .. }), "{err}");
    assert_eq!(batch.len(), 2, "the switch counts them as dropped");
    assert_eq!(uplink.stats().tx_link_down, 2);

    wire.ns
        .exec(&["ip", "link", "set", &wire.peer, "up"])
        .unwrap();
    wait_for(&uplink, LinkState::Up);
    send(&uplink, vec![small_udp()]);
    assert_eq!(receive(&sender, 0, 1).len(), 1);
    drop(sender);

    // The interface disappears: the port is gone until one of that name
    // is back, then opens new sockets.
    wire.ns.exec(&["ip", "link", "del", &wire.up]).unwrap();
    assert_eq!(uplink.refresh(), LinkState::Gone);
    let mut batch = vec![small_udp()];
    assert!(uplink.send_batch(0, &mut batch).is_err());
    let mut nothing = Vec::new();
    assert_eq!(uplink.receive(0, &mut nothing, 64).unwrap(), 0);
    wire.create();
    wait_for(&uplink, LinkState::Up);
    let stats = uplink.stats();
    assert_eq!(stats.reopens, 1, "{stats:?}");
    assert!(stats.link_changes >= 3, "{stats:?}");
    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    send(&sender, vec![small_udp()]);
    assert_eq!(
        receive(&uplink, 0, 1).len(),
        1,
        "frames arrive after reopen"
    );
    send(&uplink, vec![small_udp()]);
    assert_eq!(receive(&sender, 0, 1).len(), 1, "frames leave after reopen");
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn opening_a_missing_interface_says_what_was_expected() {
    require_netns!();
    let wire = Wire::new("m");
    let err = UplinkPort::open(
        "nosuchif0",
        UplinkConfig::default().netns(wire.netns_path()),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no interface nosuchif0 in network namespace /run/netns/"),
        "{text}"
    );
    let err = UplinkPort::open("x", UplinkConfig::default().netns("/nonexistent/ns")).unwrap_err();
    assert!(err.to_string().contains("/run/netns/NAME"), "{err}");
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn a_port_from_a_socket_the_embedder_opened_carries_frames_both_ways() {
    require_netns!();
    let wire = Wire::new("d");
    let path = wire.netns_path();
    // A socket opened in the wire's namespace; the port looks the
    // interface up in the socket's namespace, not in the caller's.
    let fd = open_packet_socket(Some(std::path::Path::new(&path))).unwrap();
    let uplink = UplinkPort::from_fd(fd, &wire.up, UplinkConfig::new(OffloadMode::Auto)).unwrap();
    let caps = uplink.capabilities();
    assert_eq!((caps.rx_queues, caps.tx_queues), (1, 1));
    assert_eq!(uplink.link(), LinkState::Up);
    let peer = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    let frame = FrameBuilder::udp4(A, B).payload(vec![5; 300]);
    send(&uplink, vec![frame.packet()]);
    assert_eq!(&receive(&peer, 0, 1)[0].data[..], &frame.build()[..]);
    send(&peer, vec![frame.packet()]);
    assert_eq!(&receive(&uplink, 0, 1)[0].data[..], &frame.build()[..]);
    assert_eq!(
        leftovers(&uplink),
        0,
        "one socket both ways still skips its own frames"
    );
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountWakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl CountWakes {
    /// Waits up to 10 s for at least `wakes` wakes.
    fn reached(&self, wakes: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.load(std::sync::atomic::Ordering::SeqCst) < wakes {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

#[test]
#[ignore = "needs root, ip netns, veth: bash .ci/test runs it where they are"]
fn a_frame_that_arrives_wakes_the_poller_also_after_the_interface_came_back() {
    require_netns!();
    let wire = Wire::new("w");
    let uplink = wire.open_watching();
    let counter = std::sync::Arc::new(CountWakes::default());
    assert!(uplink.set_rx_waker(0, std::task::Waker::from(counter.clone())));
    assert!(!uplink.set_rx_waker(1, std::task::Waker::noop().clone()));
    // Whatever the kernel sent on the new link is taken first.
    let _ = leftovers(&uplink);
    let before = counter.0.load(std::sync::atomic::Ordering::SeqCst);

    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    send(&sender, vec![small_udp()]);
    assert!(counter.reached(before + 1), "the frame woke nobody");
    assert_eq!(receive(&uplink, 0, 1).len(), 1);
    // Found empty: the next frame wakes again.
    assert_eq!(leftovers(&uplink), 0);
    send(&sender, vec![small_udp()]);
    assert!(counter.reached(before + 2), "the second frame woke nobody");
    assert_eq!(receive(&uplink, 0, 1).len(), 1);
    drop(sender);

    // New sockets after the interface came back wake the same waker.
    wire.ns.exec(&["ip", "link", "del", &wire.up]).unwrap();
    assert_eq!(uplink.refresh(), LinkState::Gone);
    wire.create();
    wait_for(&uplink, LinkState::Up);
    assert_eq!(uplink.stats().reopens, 1);
    let _ = leftovers(&uplink);
    let woken = counter.0.load(std::sync::atomic::Ordering::SeqCst);
    let sender = wire.open(&wire.peer, UplinkConfig::new(OffloadMode::None));
    send(&sender, vec![small_udp()]);
    assert!(
        counter.reached(woken + 1),
        "after the reopen the frame woke nobody"
    );
    assert_eq!(receive(&uplink, 0, 1).len(), 1);
}
