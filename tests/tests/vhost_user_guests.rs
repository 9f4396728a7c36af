//! Two Linux guests under QEMU (TCG), each attached to the switch over
//! vhost-user, run iperf3 between each other; the receiving guest's kernel
//! verifies every TCP checksum.
//!
//! The guests are the project's own initramfs test guests
//! (`scripts/guest/build-image.sh`, from Debian's kernel, busybox and
//! iperf3 packages) started by `scripts/guest/run-guest.sh`. The tests are
//! ignored by default; `.ci/test` runs them where QEMU is installed
//! (`scripts/guest/install-deps.sh`), and there a missing piece fails them.

mod guest_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};

use guest_support::{
    guest_image, plug, received_bps, wait_until, Guest, TempDir, CLIENT_ARGS, SERVER_ARGS,
};

/// The MTU `port` reports once `guest` has attached and negotiated, or
/// `None` if it never does within two minutes (or exits first).
fn attached_mtu(port: &VhostUserPort, guest: &mut Guest) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let report = port.report();
        if report.negotiated.is_some() {
            return report.mtu;
        }
        if let Ok(Some(_)) = guest.child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// What one pair run asks of the guests.
struct Pair<'a> {
    name: &'a str,
    queue_pairs: usize,
    iperf_args: &'a str,
    /// More virtio-net-pci properties for the receiving guest.
    server_device: &'a str,
    /// Guests booted one pair after the other on the same sockets.
    rounds: usize,
    /// An MTU for both ports, and one (at most as large) for both guests
    /// through QEMU's `host_mtu`, which QEMU tells the backend.
    mtu: Option<(u16, u16)>,
    /// Both ports lend large TSO payloads (`VhostUserConfig::lend_payloads`).
    lend: bool,
}

/// Two TCG guests take both CPUs of a small machine: one pair at a time.
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_pair(pair: Pair<'_>) {
    let _turn = ONE_PAIR_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let image = guest_image();
    let dir = TempDir::new(pair.name);
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let sock_a = dir.0.join("a.sock");
    let sock_b = dir.0.join("b.sock");
    let config = |name: &str, sock: &Path| {
        let config = VhostUserConfig::new(name, sock)
            .queue_pairs(pair.queue_pairs)
            .lend_payloads(pair.lend);
        match pair.mtu {
            Some((port_mtu, _)) => config.mtu(port_mtu),
            None => config,
        }
    };
    let host_mtu = pair.mtu.map(|(_, mtu)| format!("host_mtu={mtu}"));
    let server_device = [pair.server_device, host_mtu.as_deref().unwrap_or("")]
        .iter()
        .filter(|opts| !opts.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let port_a = VhostUserPort::start(config("a", &sock_a)).unwrap();
    let port_b = VhostUserPort::start(config("b", &sock_b)).unwrap();
    plug(&switch, &port_a);
    plug(&switch, &port_b);
    let queues = pair.queue_pairs.to_string();
    for round in 1..=pair.rounds {
        let mut server_args = SERVER_ARGS.to_vec();
        server_args.extend(["--queues", &queues]);
        if !server_device.is_empty() {
            server_args.extend(["--device-opts", &server_device]);
        }
        let connections_before = port_a.report().connections;
        // Connections of a server QEMU that crashed or hung and was booted
        // again.
        let mut crashed_connections = 0;
        let mut server = Guest::start(
            &image,
            &dir.0,
            &format!("server{round}"),
            &sock_a,
            &server_args,
        );
        if !server.wait_for("VSW-READY", Duration::from_secs(120)) && server.failed_to_boot() {
            // QEMU itself died on a signal, or hung, before the guest's
            // kernel got to /init: not the switch's doing (a QEMU that
            // refuses what the backend answers exits with an error instead,
            // and fails the test below). Say so, and boot the server once
            // more.
            eprintln!(
                "round {round}: QEMU crashed or hung before the guest booted; once more\n{}",
                server.describe()
            );
            crashed_connections = port_a.report().connections - connections_before;
            server = Guest::start(
                &image,
                &dir.0,
                &format!("server{round}-again"),
                &sock_a,
                &server_args,
            );
            server.wait_for("VSW-READY", Duration::from_secs(120));
        }
        if !server.console().contains("VSW-READY") {
            panic!(
                "round {round}: the server guest did not get ready\n{}\nport: {:?}",
                server.describe(),
                port_a.report()
            );
        }
        let mut client_args = CLIENT_ARGS.to_vec();
        client_args.extend(["--queues", &queues, "--args", pair.iperf_args]);
        if let Some(opts) = &host_mtu {
            client_args.extend(["--device-opts", opts]);
        }
        let mut client = Guest::start(
            &image,
            &dir.0,
            &format!("client{round}"),
            &sock_b,
            &client_args,
        );
        // The MTU each port cuts to, read while its guest is attached (a
        // guest powers off as soon as it is done).
        let server_mtu = port_a.report().mtu;
        let client_mtu = attached_mtu(&port_b, &mut client);
        let done = client.wait_for("VSW-EXIT", Duration::from_secs(180))
            && server.wait_for("VSW-CSUM-ERRORS", Duration::from_secs(30));
        let report = format!(
            "round {round}\nclient: {}\nserver: {}\nport a: {:?}\nport b: {:?}\nswitch: {:?}",
            client.describe(),
            server.describe(),
            port_a.report(),
            port_b.report(),
            switch.stats()
        );
        assert!(done, "the transfer did not finish\n{report}");
        assert_eq!(
            client.line_value("VSW-EXIT", "rc"),
            Some(0),
            "iperf3 failed\n{report}"
        );
        let json = client.section("RESULT").expect("iperf3 result");
        let bps = received_bps(&json);
        // Two TCG guests on a loaded two-core machine can fall to about
        // 10 Mbit/s; a stall is far below that.
        assert!(
            bps > 1e6,
            "{:.2} Mbit/s received: the transfer stalled\n{report}",
            bps / 1e6
        );
        assert_eq!(
            server.line_value("VSW-CSUM-ERRORS", "tcp"),
            Some(0),
            "the receiving kernel found bad TCP checksums\n{report}"
        );
        let a = port_a.report();
        let b = port_b.report();
        assert_eq!((a.broken_queues, b.broken_queues), (0, 0), "{report}");
        assert!(a.guest.rx_frames > 0 && b.guest.tx_frames > 0, "{report}");
        assert_eq!(
            a.connections,
            connections_before + crashed_connections + 1,
            "one connection a round\n{report}"
        );
        eprintln!(
            "{} round {round}: {:.2} Gbit/s received; a: {:?}; b: {:?}",
            pair.name,
            bps / 1e9,
            a.guest,
            b.guest
        );
        if !pair.server_device.is_empty() {
            assert!(
                a.guest.rx_adapted > 0,
                "frames were cut for the guest\n{report}"
            );
        }
        if pair.lend {
            // The sender's kernel hands over TSO frames of 16 KiB and more
            // under iperf3; each one's chain came back to it only once
            // the receiver's port had copied the payload out.
            assert!(b.guest.tx_lent > 0, "no payload was lent\n{report}");
        }
        if let Some((_, mtu)) = pair.mtu {
            // The guests' kernels took the MTU QEMU put in their config
            // space, and the ports cut to the one QEMU told the backend,
            // not to their own.
            let link = format!(" mtu={mtu} ");
            assert!(
                server.console().contains(&link) && client.console().contains(&link),
                "a guest's eth0 is not at MTU {mtu}\n{report}"
            );
            assert_eq!((server_mtu, client_mtu), (Some(mtu), Some(mtu)), "{report}");
        }
        // Both guests power off when done; the ports go down and stay in
        // the switch for the next round.
        let _ = client.child.wait();
        let _ = server.child.wait();
    }
    switch.stop();
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn two_guests_run_iperf3_over_vhost_user() {
    run_pair(Pair {
        name: "vhost-user-1q",
        queue_pairs: 1,
        iperf_args: "-P 4 -t 4",
        server_device: "",
        rounds: 1,
        mtu: None,
        lend: false,
    });
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn two_multi_queue_guests_spread_flows_over_queue_pairs() {
    run_pair(Pair {
        name: "vhost-user-2q",
        queue_pairs: 2,
        iperf_args: "-P 8 -t 4",
        server_device: "",
        rounds: 1,
        mtu: None,
        lend: false,
    });
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn a_guest_without_receive_offloads_gets_segments_its_kernel_verifies() {
    run_pair(Pair {
        name: "vhost-user-no-rx-offload",
        queue_pairs: 1,
        iperf_args: "-P 4 -t 4",
        server_device: NO_RX_OFFLOADS,
        rounds: 1,
        mtu: None,
        lend: false,
    });
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn guests_that_power_off_come_back_on_the_same_sockets() {
    run_pair(Pair {
        name: "vhost-user-reconnect",
        queue_pairs: 1,
        iperf_args: "-P 2 -t 2",
        server_device: "",
        rounds: 2,
        mtu: None,
        lend: false,
    });
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn lent_tso_payloads_reach_a_guest_that_takes_tso_and_one_that_does_not() {
    // One pair a round: the first receiver takes TSO frames whole, their
    // payloads copied straight out of the sender's buffers; the second
    // takes none, and gets them cut, every checksum computed.
    run_pair(Pair {
        name: "vhost-user-lent",
        queue_pairs: 1,
        iperf_args: "-P 4 -t 3",
        server_device: "",
        rounds: 1,
        mtu: None,
        lend: true,
    });
    run_pair(Pair {
        name: "vhost-user-lent-no-rx-offload",
        queue_pairs: 1,
        iperf_args: "-P 4 -t 3",
        server_device: NO_RX_OFFLOADS,
        rounds: 1,
        mtu: None,
        lend: true,
    });
}

/// virtio-net-pci properties of a guest that takes no receive offload:
/// the switch completes checksums and cuts TSO frames for it.
const NO_RX_OFFLOADS: &str =
    "guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_uso4=off,guest_uso6=off";

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn guests_at_a_jumbo_mtu_from_qemu_get_jumbo_segments_their_kernel_verifies() {
    // QEMU's host_mtu=9000 reaches the guests' config space and, with
    // VHOST_USER_NET_SET_MTU, the ports (at 9216 themselves); the receiver
    // takes no offload, so every TSO frame is cut into jumbo frames in
    // software.
    run_pair(Pair {
        name: "vhost-user-jumbo",
        queue_pairs: 1,
        iperf_args: "-P 4 -t 4",
        server_device: NO_RX_OFFLOADS,
        rounds: 1,
        mtu: Some((9216, 9000)),
        lend: false,
    });
}

#[test]
#[ignore = "boots a QEMU guest (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn an_mtu_above_the_ports_is_refused_with_the_reason() {
    let _turn = ONE_PAIR_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let image = guest_image();
    let dir = TempDir::new("vhost-user-mtu-refused");
    let sock = dir.0.join("a.sock");
    // The port is at 1500; QEMU gives the guest 9000.
    let port = VhostUserPort::start(VhostUserConfig::new("a", &sock)).unwrap();
    let mut guest = Guest::start(
        &image,
        &dir.0,
        "guest",
        &sock,
        &["--role", "server", "--device-opts", "host_mtu=9000"],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let refused = loop {
        let report = port.report();
        if report
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("MTU to 9000") && e.contains("refused"))
        {
            break report;
        }
        if Instant::now() > deadline || matches!(guest.child.try_wait(), Ok(Some(_))) {
            panic!(
                "the MTU was not refused\n{}\nport: {report:?}",
                guest.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // QEMU does not start the device the backend refused: no features
    // were set, no guest is attached.
    std::thread::sleep(Duration::from_secs(1));
    let report = port.report();
    assert!(
        !report.connected && report.negotiated.is_none(),
        "{refused:?}\n{report:?}"
    );
    let stderr = std::fs::read_to_string(&guest.stderr).unwrap_or_default();
    assert!(
        stderr.contains("MTU not supported by the backend"),
        "QEMU says why it did not start the device\n{}",
        guest.describe()
    );
    eprintln!("refused: {:?}", refused.last_error);
}

/// Frames between two in-memory ports C and D, sent by a thread of their
/// own for as long as the test runs: the "other ports" that must keep
/// flowing while a guest goes away and comes back.
struct Bystanders {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
}

impl Bystanders {
    fn start(switch: &Switch) -> Bystanders {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use vswitch_ports::memory::{memory_port, MemoryPortConfig};
        let (port_c, c) = memory_port(MemoryPortConfig::new("c").queue_len(4096));
        let (port_d, d) = memory_port(MemoryPortConfig::new("d").queue_len(4096));
        for port in [port_c, port_d] {
            switch
                .add_port(Arc::new(port), PortProfile::access(VlanId::DEFAULT))
                .unwrap();
        }
        let frame = |dst: u8, src: u8| {
            let mut frame = vec![0u8; 60];
            frame[..6].copy_from_slice(&[2, 0, 0, 0, 0xcd, dst]);
            frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0xcd, src]);
            frame[12..14].copy_from_slice(&[0x88, 0xb5]);
            vswitch::offload::Packet::plain(frame)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, delivered) = (stop.clone(), delivered.clone());
            std::thread::spawn(move || {
                // D speaks first, so the switch learns where it is and C's
                // frames go to D alone.
                let _ = d.try_inject(0, frame(0xc, 0xd));
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100 {
                        let _ = c.try_inject(0, frame(0xd, 0xc));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    out.clear();
                    let got = d.drain(&mut out);
                    delivered.fetch_add(got as u64, Ordering::Relaxed);
                    c.drain(&mut out);
                }
            })
        };
        Bystanders {
            stop,
            thread: Some(thread),
            delivered,
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Bystanders {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
#[ignore = "boots QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn a_guest_killed_mid_transfer_comes_back_and_the_others_keep_flowing() {
    let _turn = ONE_PAIR_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let image = guest_image();
    let dir = TempDir::new("vhost-user-killed");
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let (sock_a, sock_b) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
    let port_a = VhostUserPort::start(VhostUserConfig::new("a", &sock_a)).unwrap();
    let port_b = VhostUserPort::start(VhostUserConfig::new("b", &sock_b)).unwrap();
    let id_a = plug(&switch, &port_a);
    plug(&switch, &port_b);
    let bystanders = Bystanders::start(&switch);
    let server_args = SERVER_ARGS;
    let client_args = |iperf: &'static str| {
        let mut args = CLIENT_ARGS.to_vec();
        args.extend(["--args", iperf]);
        args
    };

    // A server guest on A, ready, then a client on B running `iperf`.
    let boot_pair = |round: u32, iperf: &'static str| {
        let mut server = Guest::start(
            &image,
            &dir.0,
            &format!("server{round}"),
            &sock_a,
            &server_args,
        );
        assert!(
            server.wait_for("VSW-READY", Duration::from_secs(120)),
            "round {round}: the server guest did not get ready\n{}",
            server.describe()
        );
        let client = Guest::start(
            &image,
            &dir.0,
            &format!("client{round}"),
            &sock_b,
            &client_args(iperf),
        );
        (server, client)
    };

    // A long transfer from B to A.
    let (mut server, mut client) = boot_pair(1, "-P 2 -t 60");
    let flowing = wait_until(Duration::from_secs(120), || {
        port_a.report().guest.rx_frames > 2000
    });
    assert!(
        flowing,
        "the transfer did not start\nclient: {}\nserver: {}",
        client.describe(),
        server.describe()
    );

    // Guest A's QEMU dies mid-transfer.
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert!(
        wait_until(Duration::from_secs(10), || !port_a.report().connected),
        "the port noticed its guest gone: {:?}",
        port_a.report()
    );
    let drops_before = switch.port_stats(id_a).map_or(0, |s| s.drops.total());
    let bystanders_before = bystanders.delivered();
    std::thread::sleep(Duration::from_secs(2));
    let bystanders_during = bystanders.delivered() - bystanders_before;
    assert!(
        bystanders_during > 1000,
        "the other ports kept flowing while the guest was gone: {bystanders_during} frames in 2 s"
    );
    let drops_during = switch.port_stats(id_a).map_or(0, |s| s.drops.total()) - drops_before;

    // A new QEMU on the same socket brings the port back; a new transfer
    // runs to completion.
    let _ = client.child.kill();
    let _ = client.child.wait();
    let (mut server, mut client) = boot_pair(2, "-P 2 -t 3");
    let done = client.wait_for("VSW-EXIT", Duration::from_secs(180))
        && server.wait_for("VSW-CSUM-ERRORS", Duration::from_secs(30));
    let report = format!(
        "client: {}\nserver: {}\nport a: {:?}\nport b: {:?}",
        client.describe(),
        server.describe(),
        port_a.report(),
        port_b.report()
    );
    assert!(done, "the second transfer did not finish\n{report}");
    assert_eq!(client.line_value("VSW-EXIT", "rc"), Some(0), "{report}");
    let json = client.section("RESULT").expect("iperf3 result");
    assert!(received_bps(&json) > 1e6, "{report}");
    assert_eq!(
        server.line_value("VSW-CSUM-ERRORS", "tcp"),
        Some(0),
        "{report}"
    );
    assert!(port_a.report().connections >= 2, "{report}");
    eprintln!(
        "killed mid-transfer: {bystanders_during} bystander frames and {drops_during} drops toward \
         the gone guest in 2 s; then {:.2} Gbit/s again",
        received_bps(&json) / 1e9
    );
    let _ = client.child.wait();
    let _ = server.child.wait();
    drop(bystanders);
    switch.stop();
}
