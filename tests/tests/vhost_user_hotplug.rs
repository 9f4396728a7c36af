//! A NIC hot-added to a running guest and removed again over QMP while
//! the guest's first NIC carries iperf3: the switch takes a third
//! vhost-user port while traffic runs, the new NIC comes up in the guest
//! and pings the peer over it, goes away again, and the first NIC's flows
//! keep going throughout. In the end the switch accounts for every frame,
//! floods to three ports included.
//!
//! The guests are the project's initramfs test guests
//! (`scripts/guest/build-image.sh`) booted by `scripts/guest/run-guest.sh`
//! with `--qmp` and `--hotplug-slots`; `/init` sets up the hot-plugged NIC
//! (`vsw.hotplug_ip`) and prints `VSW-HOTPLUG-*` markers
//! (`scripts/guest/README.md`). Ignored by default; `.ci/test` runs it
//! where QEMU is installed (`scripts/guest/install-deps.sh`), and there a
//! missing piece fails it.

mod guest_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_support::qmp::{Qmp, QmpError};
use guest_support::{
    guest_image, plug, received_bps, wait_until, Guest, TempDir, CLIENT_ARGS, SERVER_ARGS,
};
use serde_json::{json, Value};
use vswitch::{DropSide, PortStats, Switch, SwitchConfig, SwitchStats};
use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};

/// The hot-plugged NIC's virtio-net-pci properties: those run-guest.sh
/// gives the first NIC (QMP wants booleans as JSON booleans), on the first
/// hot-plug slot.
fn hotplugged_nic(id: &str, netdev: &str, mac: &str) -> Value {
    let mut device = json!({
        "driver": "virtio-net-pci",
        "id": id,
        "netdev": netdev,
        "bus": "hp1",
        "mac": mac,
        "disable-legacy": "on",
        "vectors": 4,
        "rx_queue_size": 1024,
        "tx_queue_size": 1024,
    });
    for on in [
        "mq",
        "mrg_rxbuf",
        "csum",
        "guest_csum",
        "gso",
        "host_tso4",
        "host_tso6",
        "host_ecn",
        "guest_tso4",
        "guest_tso6",
        "guest_ecn",
        "host_uso",
        "guest_uso4",
        "guest_uso6",
        "ctrl_vq",
        "ctrl_guest_offloads",
        "event_idx",
        "indirect_desc",
    ] {
        device[on] = json!(true);
    }
    for off in ["host_ufo", "guest_ufo", "packed"] {
        device[off] = json!(false);
    }
    device
}

/// Frames the switch took in (received, less those dropped on the way in,
/// plus the extra copies of floods) and frames it accounted for on the way
/// out (sent, or dropped toward a port; a frame cut into N segments counts
/// once, not N; a frame merged into another counts too), over all ports.
fn balance(stats: &SwitchStats) -> (i128, i128) {
    let mut forwarded = 0i128;
    let mut left = 0i128;
    for port in &stats.ports {
        let s = &port.stats;
        forwarded += i128::from(s.rx_frames) - i128::from(s.drops.side_total(DropSide::Ingress))
            + i128::from(s.flood_copies);
        left += i128::from(s.tx_frames)
            + i128::from(s.drops.side_total(DropSide::Egress))
            + i128::from(s.software.segmented)
            - i128::from(s.software.segments)
            + i128::from(s.software.coalesced);
    }
    (forwarded, left)
}

fn counters_line(name: &str, s: &PortStats) -> String {
    format!(
        "{name}: rx {} tx {} flood_copies {} drops_ingress {} drops_egress {} {:?} \
         segmented {} segments {} merges {}",
        s.rx_frames,
        s.tx_frames,
        s.flood_copies,
        s.drops.side_total(DropSide::Ingress),
        s.drops.side_total(DropSide::Egress),
        s.drops,
        s.software.segmented,
        s.software.segments,
        s.software.coalesced
    )
}

/// Reads a counter from a thread of its own until finished, and keeps
/// the longest time it stood still.
struct StallWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Duration>>,
}

impl StallWatch {
    fn start(read: impl Fn() -> u64 + Send + 'static) -> StallWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut last, mut since, mut longest) = (read(), Instant::now(), Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    let now = read();
                    if now != last {
                        (last, since) = (now, Instant::now());
                    }
                    longest = longest.max(since.elapsed());
                }
                longest
            })
        };
        StallWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// The longest stand-still so far; ends the watch.
    fn finish(mut self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(Duration::MAX)
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Boots a guest; boots it once more if QEMU died on a signal or hung
/// before the guest got to its /init (not the switch's doing; seen now and
/// then under TCG on a loaded machine).
fn boot(
    image: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    socket: &std::path::Path,
    args: &[&str],
    ready: &str,
) -> Guest {
    let mut guest = Guest::start(image, dir, name, socket, args);
    if !guest.wait_for(ready, Duration::from_secs(120)) && guest.failed_to_boot() {
        eprintln!(
            "{name}: QEMU crashed or hung before the guest booted; once more\n{}",
            guest.describe()
        );
        guest = Guest::start(image, dir, &format!("{name}-again"), socket, args);
        guest.wait_for(ready, Duration::from_secs(120));
    }
    guest
}

#[test]
#[ignore = "boots two QEMU guests (TCG): needs qemu-system-x86_64 and the guest image (scripts/guest/install-deps.sh); run by .ci/test"]
fn a_nic_hot_added_and_removed_over_qmp_while_iperf3_runs_on_the_first() {
    let started = Instant::now();
    let image = guest_image();
    let dir = TempDir::new("vhost-user-hotplug");
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let (sock_a, sock_b, sock_a2) = (
        dir.0.join("a.sock"),
        dir.0.join("b.sock"),
        dir.0.join("a2.sock"),
    );
    let qmp_path = dir.0.join("a.qmp");
    // A's first NIC and B's NIC; A's second comes later.
    let port_a = VhostUserPort::start(VhostUserConfig::new("a", &sock_a)).unwrap();
    let port_b = VhostUserPort::start(VhostUserConfig::new("b", &sock_b)).unwrap();
    let id_a = plug(&switch, &port_a);
    let id_b = plug(&switch, &port_b);

    // B: the iperf3 server, with a second address in the subnet of A's
    // future eth1 (A's eth1 in a subnet of its own keeps its traffic on
    // eth1; see scripts/guest/README.md).
    let mut guest_b = boot(
        &image,
        &dir.0,
        "b",
        &sock_b,
        &[&SERVER_ARGS[..], &["--append", "vsw.extra_ip=10.0.1.1/24"]].concat(),
        "VSW-READY",
    );
    assert!(
        guest_b.console().contains("VSW-READY"),
        "guest B did not get ready\n{}\nport b: {:?}",
        guest_b.describe(),
        port_b.report()
    );
    // A: the client, long enough for the NIC to come and go meanwhile.
    let mut guest_a = boot(
        &image,
        &dir.0,
        "a",
        &sock_a,
        &[
            &CLIENT_ARGS[..],
            &[
                "--args",
                "-P 4 -t 40",
                "--append",
                "vsw.hotplug_ip=10.0.1.2/24 vsw.hotplug_peer=10.0.1.1",
                "--qmp",
                qmp_path.to_str().unwrap(),
                "--hotplug-slots",
                "1",
            ],
        ]
        .concat(),
        "VSW-LINK",
    );
    let mut qmp = match Qmp::connect(&qmp_path, Duration::from_secs(30)) {
        Ok(qmp) => qmp,
        Err(e) => panic!("QMP: {e}\n{}", guest_a.describe()),
    };
    let rx_a = |switch: &Switch| switch.port_stats(id_a).map_or(0, |s| s.rx_frames);
    let flowing = wait_until(Duration::from_secs(120), || rx_a(&switch) > 2000);
    let booted = started.elapsed();
    assert!(
        flowing,
        "A's iperf3 did not start\nA: {}\nB: {}",
        guest_a.describe(),
        guest_b.describe()
    );

    // The third port joins the switch while A's flows run.
    let port_a2 = VhostUserPort::start(VhostUserConfig::new("a2", &sock_a2)).unwrap();
    let id_a2 = plug(&switch, &port_a2);

    // Everything the failure messages below show.
    macro_rules! report {
        () => {
            format!(
                "QMP:\n{}\nA: {}\nB: {}\nport a: {:?}\nport b: {:?}\nport a2: {:?}\nswitch: {:?}",
                qmp.transcript(),
                guest_a.describe(),
                guest_b.describe(),
                port_a.report(),
                port_b.report(),
                port_a2.report(),
                switch.stats()
            )
        };
    }

    // Hot-add: the chardev connects to the port's socket, the netdev
    // talks vhost-user over it (netdev_add returns once the backend has
    // answered), the device goes into the free root port.
    let rx_before_add = rx_a(&switch);
    // A's first NIC, frame by frame as its guest sends them, while the
    // second comes and goes.
    let stalls = {
        let port_a = port_a.clone();
        StallWatch::start(move || port_a.report().guest.tx_frames)
    };
    let hot_add = Instant::now();
    let socket = sock_a2.to_str().unwrap();
    let steps = [
        (
            "chardev-add",
            json!({
                "id": "c1",
                "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": socket}},
                    "server": false,
                    "reconnect-ms": 1000,
                }},
            }),
        ),
        (
            "netdev_add",
            json!({"type": "vhost-user", "id": "n1", "chardev": "c1", "queues": 1}),
        ),
        (
            "device_add",
            hotplugged_nic("nic1", "n1", "52:54:00:00:01:02"),
        ),
    ];
    for (command, arguments) in steps {
        if let Err(e) = qmp.execute(command, arguments) {
            panic!("{command}: {e}\n{}", report!());
        }
    }
    let up = guest_a.wait_for("VSW-HOTPLUG-PING", Duration::from_secs(120));
    let attached = wait_until(Duration::from_secs(30), || {
        port_a2.report().negotiated.is_some()
    });
    let added_in = hot_add.elapsed();
    assert!(
        up && attached,
        "the hot-plugged NIC did not come up\n{}",
        report!()
    );
    let up_line = guest_a.line("VSW-HOTPLUG-UP").unwrap_or_default();
    let ping_line = guest_a.line("VSW-HOTPLUG-PING").unwrap_or_default();
    assert!(
        up_line.contains("dev=eth1") && up_line.contains("carrier=1"),
        "{up_line}\n{}",
        report!()
    );
    assert!(
        ping_line.starts_with("VSW-HOTPLUG-PING ok"),
        "A could not ping B over the hot-plugged NIC: {ping_line}\n{}",
        report!()
    );
    let through_a2 = switch.port_stats(id_a2).unwrap_or_default();
    let guest_a2 = port_a2.report().guest;
    assert!(
        through_a2.rx_frames > 0 && through_a2.tx_frames > 0,
        "no frames through the hot-plugged port\n{}",
        report!()
    );
    assert!(
        guest_a2.tx_frames > 0 && guest_a2.rx_frames > 0,
        "{}",
        report!()
    );
    let rx_after_add = rx_a(&switch);
    assert!(
        !guest_a.console().contains("VSW-RESULT-BEGIN"),
        "iperf3 ended before the NIC was up: make its run longer\n{}",
        report!()
    );

    // Hot-remove: the guest gives the device up (DEVICE_DELETED), then
    // the netdev and the chardev go, which closes the port's socket.
    let hot_remove = Instant::now();
    if let Err(e) = qmp.execute("device_del", json!({"id": "nic1"})) {
        panic!("device_del: {e}\n{}", report!());
    }
    let deleted = qmp.wait_event(
        "DEVICE_DELETED",
        |data| data.get("device").and_then(Value::as_str) == Some("nic1"),
        Duration::from_secs(60),
    );
    match deleted {
        Ok(Some(_)) => {}
        Ok(None) => panic!("no DEVICE_DELETED for nic1 within 60 s\n{}", report!()),
        Err(e) => panic!("waiting for DEVICE_DELETED: {e}\n{}", report!()),
    }
    // Whether the device's reset already let the port go, before its
    // socket closes.
    let attached_after_device_del = port_a2.report().connected;
    // The chardev cannot go first: the netdev holds it. netdev_del of a
    // vhost-user netdev then deletes the chardev with it (QEMU 10 answers
    // a chardev-remove after it with "Chardev 'c1' not found"), so it is
    // removed here only if it is still listed.
    let early_remove = match qmp.execute("chardev-remove", json!({"id": "c1"})) {
        Err(QmpError::Refused { desc, .. }) => desc,
        other => panic!(
            "chardev-remove while the netdev holds the chardev: {other:?}\n{}",
            report!()
        ),
    };
    if let Err(e) = qmp.execute("netdev_del", json!({"id": "n1"})) {
        panic!("netdev_del: {e}\n{}", report!());
    }
    let chardevs = match qmp.execute("query-chardev", Value::Null) {
        Ok(list) => list,
        Err(e) => panic!("query-chardev: {e}\n{}", report!()),
    };
    let listed = chardevs
        .as_array()
        .is_some_and(|list| list.iter().any(|c| c["label"] == "c1"));
    let chardev_removed = if listed {
        if let Err(e) = qmp.execute("chardev-remove", json!({"id": "c1"})) {
            panic!("chardev-remove: {e}\n{}", report!());
        }
        "by chardev-remove"
    } else {
        "with the netdev"
    };
    let gone_in_guest = guest_a.wait_for("VSW-HOTPLUG-GONE", Duration::from_secs(30));
    let detached = wait_until(Duration::from_secs(30), || !port_a2.report().connected);
    let removed_in = hot_remove.elapsed();
    assert!(
        gone_in_guest && detached,
        "the NIC did not go away (guest: {gone_in_guest}, port: {detached})\n{}",
        report!()
    );
    let rx_after_remove = rx_a(&switch);
    assert!(
        !guest_a.console().contains("VSW-RESULT-BEGIN"),
        "iperf3 ended before the NIC was removed: make its run longer\n{}",
        report!()
    );
    // A's first NIC kept sending through both changes, without a pause
    // longer than TCG and a loaded machine explain.
    let longest_stall = stalls.finish();
    assert!(
        rx_after_add > rx_before_add
            && rx_after_remove > rx_after_add
            && longest_stall < Duration::from_secs(5),
        "A's flows stalled: {rx_before_add} -> {rx_after_add} -> {rx_after_remove} frames, \
         standing still for up to {longest_stall:?}\n{}",
        report!()
    );

    let done = guest_a.wait_for("VSW-EXIT", Duration::from_secs(180))
        && guest_b.wait_for("VSW-CSUM-ERRORS", Duration::from_secs(30));
    assert!(done, "the transfer did not finish\n{}", report!());
    assert_eq!(
        guest_a.line_value("VSW-EXIT", "rc"),
        Some(0),
        "iperf3 failed\n{}",
        report!()
    );
    let json = guest_a.section("RESULT").expect("iperf3 result");
    let bps = received_bps(&json);
    // Two TCG guests on a loaded two-core machine can fall to about
    // 10 Mbit/s; a stall is far below that.
    assert!(
        bps > 1e6,
        "{:.2} Mbit/s received: the transfer stalled\n{}",
        bps / 1e6,
        report!()
    );
    let csum_errors = [
        ("B", guest_b.line_value("VSW-CSUM-ERRORS", "tcp")),
        ("A", guest_a.line_value("VSW-CSUM-ERRORS", "tcp")),
    ];
    for (name, errors) in csum_errors {
        assert_eq!(
            errors,
            Some(0),
            "{name}'s kernel found bad TCP checksums\n{}",
            report!()
        );
    }
    // Both guests power off when done; then nothing moves any more.
    let off = wait_until(Duration::from_secs(60), || {
        guest_a.exited() && guest_b.exited()
    });
    assert!(off, "a guest did not power off\n{}", report!());
    std::thread::sleep(Duration::from_millis(200));
    let reports = [port_a.report(), port_b.report(), port_a2.report()];
    assert!(
        reports
            .iter()
            .all(|r| r.broken_queues == 0 && r.last_error.is_none() && !r.connected),
        "{}",
        report!()
    );
    assert_eq!(reports[2].connections, 1, "{}", report!());
    let stats = switch.stats();
    let (forwarded, left) = balance(&stats);
    let unaccounted = forwarded - left;
    let port = |id| stats.port(id).copied().unwrap_or_default();
    let lines = [("a", id_a), ("b", id_b), ("a2", id_a2)]
        .iter()
        .zip(&reports)
        .map(|((name, id), report)| {
            let g = &report.guest;
            format!(
                "{}; its guest sent {} (refused {}), got {} (dropped {})",
                counters_line(name, &port(*id)),
                g.tx_frames,
                g.tx_errors,
                g.rx_frames,
                g.rx_dropped
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "hot-plug: A booted and sending after {:.1} s; NIC added (QMP to ping) in {:.1} s, \
         removed (device_del to port detached) in {:.1} s (attached after DEVICE_DELETED: \
         {attached_after_device_del}; chardev-remove before netdev_del: {early_remove}; chardev \
         removed {chardev_removed}); {:.2} Gbit/s, A's first NIC never still for more than \
         {:.0} ms meanwhile (sampled every 20 ms); {}; {}\n\
         through the hot-plugged port: {} frames in, {} out (guest: {:?})\n{lines}\n\
         forwarded {forwarded}, accounted {left}, unaccounted {unaccounted}; total {:.1} s",
        booted.as_secs_f64(),
        added_in.as_secs_f64(),
        removed_in.as_secs_f64(),
        bps / 1e9,
        longest_stall.as_secs_f64() * 1e3,
        up_line,
        ping_line,
        port(id_a2).rx_frames,
        port(id_a2).tx_frames,
        port_a2.report().guest,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        unaccounted,
        0,
        "frames the switch does not account for\n{lines}\n{}",
        report!()
    );
    // The hot-plugged port's guest is gone for good: what the switch sent
    // it was written to the guest's buffers or counted as dropped there,
    // and what the switch took from it is what the guest sent, less what
    // it never took.
    let (switch_a2, guest_a2) = (port(id_a2), port_a2.report().guest);
    if guest_a2.rx_adapted == 0 {
        assert_eq!(
            switch_a2.tx_frames,
            guest_a2.rx_frames + guest_a2.rx_dropped,
            "frames to the hot-plugged port\n{lines}"
        );
    }
    assert_eq!(
        switch_a2.rx_frames,
        guest_a2.tx_frames - guest_a2.tx_dropped,
        "frames from the hot-plugged port\n{lines}"
    );
    switch.stop();
}
