//! A 1 Gbit/s limit on a guest's transmit side, measured by the Linux
//! kernel's TCP stack: iperf3 from a namespace behind one TAP to another
//! behind a second, through the switch, for 5 seconds. The limit counts
//! frames on the wire (every segment with its headers); iperf3 counts TCP
//! payload, so its figure is turned into the wire's: 1448 bytes of payload
//! a segment (MSS 1460 less the timestamp option) in 1514-byte frames.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vswitch::limit::{Bucket, PortLimits, RateLimit};
use vswitch::{PortProfile, Switch, SwitchConfig};
use vswitch_ports::tap::{TapOffloads, TapPort};
use vswitch_tests::{require_netns, run, NetNs};

const IP_A: &str = "198.18.1.1";
const IP_B: &str = "198.18.1.2";
/// 1 Gbit/s in bytes a second.
const LIMIT: u64 = 125_000_000;
const SECONDS: u64 = 5;
/// Wire bytes of a full segment, per byte of its TCP payload: Ethernet
/// (14), IPv4 (20) and TCP with timestamps (32) around 1448 bytes.
const WIRE_PER_PAYLOAD: f64 = 1514.0 / 1448.0;

#[test]
#[ignore = "needs root, iproute2, /dev/net/tun and iperf3: bash .ci/test runs it where they are"]
fn iperf3_through_a_1_gbit_limit_measures_1_gbit() {
    require_netns!();
    vswitch_tests::require_iperf3();
    let ns_a = NetNs::new("vswlima").unwrap();
    let ns_b = NetNs::new("vswlimb").unwrap();
    let id = std::process::id() % 10_000;
    let tap_a = TapPort::open(&format!("vsla{id}"), TapOffloads::FULL, 1, 1500).unwrap();
    let tap_b = TapPort::open(&format!("vslb{id}"), TapOffloads::FULL, 1, 1500).unwrap();
    let (name_a, name_b) = (
        vswitch_ports::Port::name(&tap_a).to_string(),
        vswitch_ports::Port::name(&tap_b).to_string(),
    );
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    // 1 Gbit/s out of A, 1 MiB saved up.
    let limit = RateLimit::none().bytes(Bucket::new(LIMIT, 1 << 20));
    let limited = PortProfile::default().limits(PortLimits::new().from_port(limit));
    let port_a = switch.add_port(Arc::new(tap_a), limited).unwrap();
    switch
        .add_port(Arc::new(tap_b), PortProfile::default())
        .unwrap();
    for (ns, name, ip) in [(&ns_a, &name_a, IP_A), (&ns_b, &name_b, IP_B)] {
        ns.adopt_as_host(name, ip).unwrap();
    }
    ns_a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", IP_B])
        .expect("ping through the switch");
    ns_b.exec(&["iperf3", "-s", "-1", "-D", "-B", IP_B])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seconds = SECONDS.to_string();
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
        &seconds,
        "-J",
        "--connect-timeout",
        "3000",
    ]))
    .expect("iperf3 client");
    let bytes =
        vswitch_tests::iperf3_received_bytes(&json).expect("iperf3 reported received bytes");
    let payload_gbits = bytes as f64 * 8.0 / SECONDS as f64 / 1e9;
    let wire_gbits = payload_gbits * WIRE_PER_PAYLOAD;
    let a = switch.port_stats(port_a).unwrap();
    eprintln!(
        "{bytes} bytes of TCP payload in {SECONDS} s: {payload_gbits:.3} Gbit/s of payload, \
         {wire_gbits:.3} Gbit/s on the wire, against a 1 Gbit/s limit; drops on A {:?}",
        a.drops
    );
    switch.shutdown();
    assert!(
        (0.95..=1.05).contains(&wire_gbits),
        "{wire_gbits:.3} Gbit/s on the wire is not within 5% of the 1 Gbit/s limit"
    );
    assert_eq!(
        a.drops.total(),
        0,
        "a throttled sender loses nothing in the switch"
    );
}
