//! The switch between two network namespaces, each behind a TAP device, with
//! the Linux kernel's TCP stack and iperf3 as the traffic: no byte of it was
//! written by this project. The receiving kernel must count no checksum
//! error, and the data must arrive.
//!
//! (a) both TAPs take offloads: 64 KiB TSO frames cross the switch whole.
//! (b) the receiving TAP takes none: the switch segments and checksums every
//!     frame in software; the kernel takes them in through GRO (the default
//!     coalesced receive) or (c) one by one.

use std::process::Command;
use std::sync::Arc;

use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_ports::tap::{KernelReceive, TapConfig, TapOffloads, TapPort};
use vswitch_tests::{require_netns, run, NetNs};

const IP_A: &str = "198.18.0.1";
const IP_B: &str = "198.18.0.2";

fn iperf_through_switch(label: &str, receiver: TapOffloads, receive: KernelReceive) {
    vswitch_tests::require_iperf3();
    let ns_a = NetNs::new(&format!("vswe{label}a")).unwrap();
    let ns_b = NetNs::new(&format!("vswe{label}b")).unwrap();
    let id = std::process::id() % 10_000;
    let tap_a = TapPort::open(&format!("vse{label}a{id}"), TapOffloads::FULL, 1, 1500).unwrap();
    let tap_b = TapPort::open_with(
        &format!("vse{label}b{id}"),
        TapConfig::new(receiver).receive(receive),
    )
    .unwrap();
    assert_eq!(tap_b.kernel_receive(), receive);
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
        "16",
        "-t",
        "3",
        "-J",
        "--connect-timeout",
        "3000",
    ]))
    .expect("iperf3 client");
    let bytes =
        vswitch_tests::iperf3_received_bytes(&json).expect("iperf3 reported received bytes");
    let gbits = bytes as f64 * 8.0 / 3.0 / 1e9;
    let stats = switch.stats();
    let a = switch.port_stats(port_a).unwrap();
    let b = switch.port_stats(port_b).unwrap();
    eprintln!(
        "{label}: {bytes} bytes received by iperf3 ({gbits:.2} Gbit/s); \
         to B: {} frames, {} software segments, {} software checksums; drops a={:?} b={:?}",
        b.tx_frames, b.software.segments, b.software.checksums, a.drops, b.drops
    );
    assert!(bytes > 10_000_000, "{label}: only {bytes} bytes arrived");
    assert_eq!(
        ns_b.csum_errors(),
        0,
        "{label}: receiver counted checksum errors"
    );
    assert_eq!(
        ns_a.csum_errors(),
        0,
        "{label}: sender counted checksum errors"
    );
    if receiver == TapOffloads::NONE {
        assert!(
            b.software.segments > 0,
            "{label}: no frame was segmented in software"
        );
    }
    drop(stats);
    switch.shutdown();
}

#[test]
#[ignore = "needs root, iproute2, /dev/net/tun and iperf3: bash .ci/test runs it where they are"]
fn iperf3_with_offloads_on_both_taps() {
    require_netns!();
    iperf_through_switch("o", TapOffloads::FULL, KernelReceive::default());
}

#[test]
#[ignore = "needs root, iproute2, /dev/net/tun and iperf3: bash .ci/test runs it where they are"]
fn iperf3_to_a_tap_without_offloads() {
    require_netns!();
    iperf_through_switch("n", TapOffloads::NONE, KernelReceive::default());
}

#[test]
#[ignore = "needs root, iproute2, /dev/net/tun and iperf3: bash .ci/test runs it where they are"]
fn iperf3_to_a_tap_without_offloads_taking_frames_one_by_one() {
    require_netns!();
    iperf_through_switch("p", TapOffloads::NONE, KernelReceive::PerFrame);
}
