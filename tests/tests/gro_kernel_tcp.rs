//! The switch's receive coalescing between two Linux TCP stacks: the sender
//! sits behind a TAP device without offloads, so its kernel hands the switch
//! MTU-sized segments with complete checksums; the receiver's TAP takes TSO,
//! so the switch merges them into GSO frames. The receiving kernel must
//! count no checksum error, the data must arrive, and the switch must have
//! merged frames.

use std::process::Command;
use std::sync::Arc;

use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_ports::tap::{TapOffloads, TapPort};
use vswitch_tests::{require_netns, run, NetNs};

const IP_A: &str = "198.18.1.1";
const IP_B: &str = "198.18.1.2";

#[test]
#[ignore = "needs root, iproute2, /dev/net/tun and iperf3: bash .ci/test runs it where they are"]
fn segments_from_a_tap_without_offloads_reach_a_tso_tap_merged() {
    require_netns!();
    vswitch_tests::require_iperf3();
    let ns_a = NetNs::new("vswgroa").unwrap();
    let ns_b = NetNs::new("vswgrob").unwrap();
    let id = std::process::id() % 10_000;
    // A: no offloads, so its kernel segments and checksums before the switch.
    let tap_a = TapPort::open(&format!("vsga{id}"), TapOffloads::NONE, 1, 1500).unwrap();
    let tap_b = TapPort::open(&format!("vsgb{id}"), TapOffloads::FULL, 1, 1500).unwrap();
    let (name_a, name_b) = (
        vswitch_ports::Port::name(&tap_a).to_string(),
        vswitch_ports::Port::name(&tap_b).to_string(),
    );
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let port_a = switch
        .add_port(Arc::new(tap_a), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let port_b = switch
        .add_port(Arc::new(tap_b), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    for (ns, name, ip) in [(&ns_a, &name_a, IP_A), (&ns_b, &name_b, IP_B)] {
        ns.adopt_as_host(name, ip).unwrap();
    }
    ns_a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", IP_B])
        .expect("ping through the switch");
    let errors_before = ns_b.csum_errors();

    ns_b.exec(&["iperf3", "-s", "-1", "-D", "-B", IP_B])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let json = run(Command::new("ip").args([
        "netns",
        "exec",
        ns_a.name(),
        "timeout",
        "30",
        "iperf3",
        "-c",
        IP_B,
        "-P",
        "4",
        "-t",
        "3",
        "-J",
        "--connect-timeout",
        "3000",
    ]))
    .expect("iperf3 client");
    let bytes =
        vswitch_tests::iperf3_received_bytes(&json).expect("iperf3 reported received bytes");
    let stats = switch.shutdown();
    let port = |id| *stats.port(id).unwrap();
    let (a, b) = (port(port_a), port(port_b));
    eprintln!(
        "{bytes} bytes received by iperf3 ({:.2} Gbit/s); from A: {} frames; \
         to B: {} frames, {} merged into others; drops a={:?} b={:?}",
        bytes as f64 * 8.0 / 3.0 / 1e9,
        a.rx_frames,
        b.tx_frames,
        b.software.coalesced,
        a.drops,
        b.drops
    );
    assert!(bytes > 10_000_000, "only {bytes} bytes arrived");
    assert_eq!(
        ns_b.csum_errors(),
        errors_before,
        "the receiver counted checksum errors"
    );
    assert!(
        b.software.coalesced > 0,
        "no segment was merged toward the TSO TAP"
    );
    // Every frame from A is accounted for: sent to B, merged into one sent
    // to B, or counted as dropped.
    let to_b = b.tx_frames + b.software.coalesced;
    assert!(
        to_b <= a.rx_frames,
        "{to_b} frames to B, {} from A",
        a.rx_frames
    );
    assert!(
        to_b + a.drops.total() + b.drops.total() >= a.rx_frames,
        "{} frames from A not accounted for",
        a.rx_frames - to_b
    );
}
