//! The switch between a wire and a guest's TAP: an uplink on one end of a
//! veth pair whose other end is host A's stack (198.18.0.1), a TAP whose
//! other side is host B's (198.18.0.2), and iperf3 between them. The
//! receiving kernels verify every TCP checksum and must count no error.
//!
//! (o) the wire offers tx checksumming and TSO: large frames cross whole;
//!     the uplink has two queues in a fanout group, one per worker.
//! (n) the wire offers nothing (`ethtool -K tx off sg off tso off gso off`,
//!     a NIC without offloads): the switch segments and checksums every
//!     frame toward it in software, or (k) with offload=tso passes them
//!     whole and the kernel's software GSO cuts them beneath the socket.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_ports::tap::{TapOffloads, TapPort};
use vswitch_ports::uplink::{LinkState, OffloadMode, UplinkConfig, UplinkPort};
use vswitch_tests::{require_netns, run, NetNs};

const IP_A: &str = "198.18.0.1";
const IP_B: &str = "198.18.0.2";

fn retransmissions(ns: &NetNs) -> u64 {
    ns.exec(&["nstat", "-az", "TcpRetransSegs"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn wait_until_up(ns: &NetNs, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ns
        .exec(&["ip", "-o", "link", "show", "dev", name])
        .unwrap()
        .contains("state UP")
    {
        assert!(Instant::now() < deadline, "{name} did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn iperf_between_wire_and_tap(label: &str, wire_offloads: bool, mode: OffloadMode, queues: usize) {
    vswitch_tests::require_iperf3();
    let ns_a = NetNs::new(&format!("vswsw{label}a")).unwrap();
    let ns_b = NetNs::new(&format!("vswsw{label}b")).unwrap();
    let (up, peer) = (format!("up{label}"), format!("peer{label}"));
    ns_a.exec(&[
        "ip", "link", "add", &up, "type", "veth", "peer", "name", &peer,
    ])
    .unwrap();
    if !wire_offloads {
        ns_a.exec(&[
            "ethtool", "-K", &up, "tx", "off", "sg", "off", "tso", "off", "gso", "off",
        ])
        .expect("ethtool -K (install ethtool)");
    }
    ns_a.exec(&["ip", "addr", "add", &format!("{IP_A}/24"), "dev", &peer])
        .unwrap();
    for name in [&up, &peer] {
        ns_a.exec(&["ip", "link", "set", name, "up"]).unwrap();
    }
    wait_until_up(&ns_a, &up);

    let uplink = UplinkPort::open(
        &up,
        UplinkConfig::new(mode)
            .queues(queues)
            .netns(format!("/run/netns/{}", ns_a.name())),
    )
    .expect("open uplink");
    assert_eq!(uplink.link(), LinkState::Up);
    let report = uplink.report();
    eprintln!("{label}: {report}");
    let passes_tso = wire_offloads || mode == OffloadMode::Tso;
    assert_eq!(report.declared.tso4, passes_tso, "{report}");
    assert_eq!(report.declared.checksum, passes_tso, "{report}");
    let uplink = Arc::new(uplink);

    let id = std::process::id() % 10_000;
    let tap = TapPort::open(&format!("vsu{label}{id}"), TapOffloads::FULL, 1, 1500).unwrap();
    let tap_name = vswitch_ports::Port::name(&tap).to_string();
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let wire_id = switch
        .add_port(uplink.clone(), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let tap_id = switch
        .add_port(Arc::new(tap), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    ns_b.adopt_as_host(&tap_name, IP_B).unwrap();

    ns_a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", IP_B])
        .expect("ping across the switch");

    // B sends to A, so what crosses the wire is what the switch made of
    // B's TSO frames; then A sends to B.
    let mut total = 0;
    for (server, client, server_ip) in [(&ns_a, &ns_b, IP_A), (&ns_b, &ns_a, IP_B)] {
        server
            .exec(&["iperf3", "-s", "-1", "-D", "-B", server_ip])
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let json = run(Command::new("ip").args([
            "netns",
            "exec",
            client.name(),
            "timeout",
            "30",
            "iperf3",
            "-c",
            server_ip,
            "-P",
            "4",
            "-t",
            "2",
            "-J",
            "--connect-timeout",
            "3000",
        ]))
        .expect("iperf3 client");
        let bytes =
            vswitch_tests::iperf3_received_bytes(&json).expect("iperf3 reported received bytes");
        eprintln!(
            "{label}: to {server_ip}: {bytes} bytes ({:.2} Gbit/s)",
            bytes as f64 * 8.0 / 2.0 / 1e9
        );
        assert!(
            bytes > 5_000_000,
            "{label}: only {bytes} bytes reached {server_ip}"
        );
        total += bytes;
    }
    eprintln!(
        "{label}: TCP retransmissions at A: {}; at B: {}",
        retransmissions(&ns_a),
        retransmissions(&ns_b)
    );
    let wire = switch.port_stats(wire_id).unwrap();
    let guest = switch.port_stats(tap_id).unwrap();
    let report = uplink.report();
    eprintln!(
        "{label}: {total} bytes; to the wire: {} frames, {} software segments, {} software checksums, \
         drops {:?}; to the TAP: drops {:?}; {report}; {:?}",
        wire.tx_frames, wire.software.segments, wire.software.checksums, wire.drops, guest.drops,
        report.stats
    );
    assert_eq!(
        ns_a.csum_errors(),
        0,
        "{label}: host A counted checksum errors"
    );
    assert_eq!(
        ns_b.csum_errors(),
        0,
        "{label}: host B counted checksum errors"
    );
    if passes_tso {
        assert_eq!(wire.software.segments, 0, "{label}: TSO frames pass whole");
    } else {
        assert!(
            wire.software.segments > 0,
            "{label}: nothing segmented for the wire"
        );
        assert!(
            wire.software.checksums > 0,
            "{label}: nothing checksummed for the wire"
        );
    }
    assert_eq!(report.stats.tx_errors, 0, "{report:?}");
    assert_eq!(report.stats.rx_errors, 0, "{report:?}");
    switch.shutdown();
}

#[test]
#[ignore = "needs root, ip netns, veth, ethtool and iperf3: bash .ci/test runs it where they are"]
fn iperf3_between_a_wire_with_offloads_and_a_tap() {
    require_netns!();
    iperf_between_wire_and_tap("o", true, OffloadMode::Auto, 2);
}

#[test]
#[ignore = "needs root, ip netns, veth, ethtool and iperf3: bash .ci/test runs it where they are"]
fn iperf3_between_a_wire_without_offloads_and_a_tap() {
    require_netns!();
    iperf_between_wire_and_tap("n", false, OffloadMode::Auto, 1);
}

/// offload=tso over a wire without TSO: the switch passes large frames
/// whole and the kernel beneath the socket cuts and checksums them (its
/// software GSO); the receiver must still count no checksum error.
#[test]
#[ignore = "needs root, ip netns, veth, ethtool and iperf3: bash .ci/test runs it where they are"]
fn iperf3_with_forced_tso_over_a_wire_without_offloads() {
    require_netns!();
    iperf_between_wire_and_tap("k", false, OffloadMode::Tso, 1);
}
