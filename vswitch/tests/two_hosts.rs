//! Two hosts on one machine (network namespaces), each running its own
//! `vswitch run` with an uplink on the wire (a veth pair without any
//! offload, as a NIC without TSO or checksum offload) and a TAP to a guest
//! namespace: iperf3 from guest A to guest B through both switches, the
//! receiving kernel verifying every TCP checksum. Host A's switch cuts the
//! guest's TSO frames for the wire; host B's merges them again (GRO) for
//! its guest's TAP, which takes large frames. The topology lives in
//! `benches/scripts/two-hosts.sh`, which the bench runs too (against Linux
//! bridges); this test runs its switch half and checks the counters.
//!
//! A second test puts Linux guests under QEMU on the two hosts, attached
//! over vhost-user: the seed's topology with real virtio-net drivers on
//! both ends.
//!
//! Needs root, iproute2, ethtool, iperf3 and nstat (and QEMU with the guest
//! kernel for the second): ignored by default, run by `.ci/test` where they
//! are.

use std::path::Path;
use std::process::Command;

use vswitch_tests::require_netns;

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Runs two-hosts.sh for one topology and returns its RESULT line.
fn two_hosts(topology: &str, seconds: &str, streams: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scripts/two-hosts.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args([
            "--topology",
            topology,
            "--seconds",
            seconds,
            "--streams",
            streams,
        ])
        .args(["--binary", env!("CARGO_BIN_EXE_vswitch")])
        .output()
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "two-hosts.sh failed:\n{stdout}\n{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("RESULT topology={topology}")))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));
    eprintln!("{line}");
    line.to_string()
}

/// What both topologies must show: traffic crossed, guest B's kernel
/// found no bad checksum, host A's switch cut the guest's TSO frames for
/// the wire, host B's merged the wire's segments for its guest, and both
/// switches account for every frame.
/// Whether a `reason:count,...` list from the script (`-` for none)
/// holds only drops counted as `egress_port_error`: frames toward a port
/// whose link is not up yet (a TAP on its way into its namespace, a guest
/// not yet attached).
fn only_port_errors(reasons: &str) -> bool {
    reasons == "-"
        || reasons
            .split(',')
            .all(|reason| reason.starts_with("egress_port_error:"))
}

fn assert_crossed(line: &str, min_gbps: f64) {
    let gbps: f64 = field(line, "gbps").parse().unwrap();
    assert!(gbps > min_gbps, "nothing crossed: {line}");
    assert_eq!(
        field(line, "csum_errors"),
        "0",
        "guest B's kernel found bad checksums: {line}"
    );
    let segments: u64 = field(line, "a_sw_segments").parse().unwrap();
    assert!(
        segments > 0,
        "host A's switch must cut the guest's TSO frames for the wire: {line}"
    );
    let merges: u64 = field(line, "b_gro_merges").parse().unwrap();
    assert!(
        merges > 0,
        "host B's switch must merge the wire's segments for its guest: {line}"
    );
    // Every frame accounted on both switches: received = forwarded +
    // dropped at ingress, forwarded = sent (segments and merges counted
    // back) + dropped at egress.
    for side in ["a_unaccounted", "b_unaccounted"] {
        assert_eq!(field(line, side), "0", "{side}: {line}");
    }
}

#[test]
#[ignore = "needs root, iproute2, ethtool, iperf3 and nstat; .ci/test runs it where they are"]
fn iperf3_crosses_two_switches_over_a_wire_without_offloads() {
    require_netns!();
    let line = two_hosts("vswitch", "3", "8");
    assert_crossed(&line, 0.01);
    // Nothing dropped while iperf3 ran. Before it, frames toward a TAP
    // while it moved to its namespace (down until it is set up) are the
    // only drops allowed, counted as the link being down.
    assert_eq!(field(&line, "a_transfer_drops"), "0", "{line}");
    assert!(
        only_port_errors(field(&line, "a_setup_drop_reasons")),
        "drops before the transfer: {line}"
    );
}

#[test]
#[ignore = "needs root, iproute2, ethtool, iperf3, nstat, QEMU and the guest kernel (scripts/guest/install-deps.sh); .ci/test runs it where they are"]
fn qemu_guests_cross_two_switches_over_a_wire_without_offloads() {
    require_netns!();
    let line = two_hosts("qemu", "4", "4");
    // TCG guests are slow: a few Mbit/s is not a stall.
    assert_crossed(&line, 0.001);
    // The only drops allowed: frames toward a guest port before its guest
    // attached (the other side's neighbour discovery), counted as such.
    for side in ["a_drop_reasons", "b_drop_reasons"] {
        assert!(only_port_errors(field(&line, side)), "{side}: {line}");
    }
}
