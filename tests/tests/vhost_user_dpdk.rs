//! DPDK's virtio PMD as the frontend: two `dpdk-testpmd` processes attach
//! to the switch over vhost-user with `net_virtio_user` (no VM; their own
//! memory is shared with the switch through the real protocol), one
//! sending 1514-byte frames (`txonly`), the other only receiving
//! (`rxonly`). A receiver that only polls never kicks its queues: the
//! switch's own wake-ups are all that keep frames flowing to it, which is
//! what this test checks, with a driver the project did not write.
//!
//! Ignored by default: it needs `dpdk-testpmd` (Debian's `dpdk` package,
//! installed by `scripts/guest/install-deps.sh`); `.ci/test` runs it where
//! the guest tools are, and there a missing testpmd fails it.

mod guest_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vswitch::{Switch, SwitchConfig};
use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};

use guest_support::{plug, wait_until, TempDir};

/// A testpmd process, stopped (and its DPDK run directory removed) when
/// dropped, so a failing test leaves nothing behind.
struct Testpmd {
    child: Child,
    prefix: String,
    log: std::path::PathBuf,
}

impl Testpmd {
    /// testpmd with one virtio-user port on `socket` in forwarding mode
    /// `mode`, `extra` testpmd arguments after the defaults.
    fn start(dir: &Path, name: &str, socket: &Path, mode: &str, extra: &[&str]) -> Testpmd {
        let prefix = format!("vsw-{name}-{}", std::process::id());
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("a log file");
        let vdev = format!(
            "net_virtio_user0,path={},queues=1",
            socket.to_str().expect("a UTF-8 path")
        );
        let child = Command::new("dpdk-testpmd")
            // Two lcores (main and forwarding), no hugepages, no PCI: all
            // this machine allows, and all a virtio-user port needs.
            .args(["-l", "0-1", "--no-huge", "-m", "512", "--no-pci"])
            .args(["--file-prefix", &prefix, "--vdev", &vdev, "--"])
            .args(["--forward-mode", mode, "--total-num-mbufs=16384"])
            .args(["--nb-cores=1", "--stats-period", "1", "-a"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .expect("dpdk-testpmd runs (scripts/guest/install-deps.sh installs it)");
        Testpmd { child, prefix, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}

#[test]
#[ignore = "needs dpdk-testpmd (scripts/guest/install-deps.sh); run by .ci/test"]
fn a_dpdk_receiver_that_only_polls_keeps_receiving() {
    assert!(
        Command::new("dpdk-testpmd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "dpdk-testpmd missing: run scripts/guest/install-deps.sh"
    );
    let dir = TempDir::new("vsw-dpdk");
    let (sock_a, sock_b) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
    let switch = Switch::start(SwitchConfig::default().workers(1)).unwrap();
    let port_a = VhostUserPort::start(VhostUserConfig::new("a", &sock_a)).unwrap();
    let port_b = VhostUserPort::start(VhostUserConfig::new("b", &sock_b)).unwrap();
    let (id_a, id_b) = (plug(&switch, &port_a), plug(&switch, &port_b));

    let receiver = Testpmd::start(&dir.0, "rx", &sock_b, "rxonly", &[]);
    let attached = wait_until(Duration::from_secs(30), || {
        port_b.report().negotiated.is_some()
    });
    assert!(attached, "the receiver did not attach\n{}", receiver.log());
    let sender = Testpmd::start(&dir.0, "tx", &sock_a, "txonly", &["--txpkts=1514"]);

    // Frames reach the receiver...
    let received = || port_b.report().guest.rx_frames;
    let flowing = wait_until(Duration::from_secs(30), || received() > 1000);
    let report = || {
        format!(
            "a: {:?}\nb: {:?}\nswitch a: {:?}\nswitch b: {:?}\nsender:\n{}\nreceiver:\n{}",
            port_a.report(),
            port_b.report(),
            switch.port_stats(id_a),
            switch.port_stats(id_b),
            sender.log(),
            receiver.log()
        )
    };
    assert!(flowing, "no frames reached the receiver\n{}", report());
    // ...and go on reaching it: before the fix the receiver stopped for
    // good after 1024 to 17280 frames, the rest dropped in the switch.
    for second in 0..4 {
        let before = received();
        std::thread::sleep(Duration::from_secs(1));
        let after = received();
        assert!(
            after > before,
            "second {second}: the receiver got nothing more ({after} frames in all)\n{}",
            report()
        );
    }
    let report_b = port_b.report();
    eprintln!(
        "dpdk virtio-user: {} frames reached the receiver; switch b: {:?}",
        report_b.guest.rx_frames,
        switch.port_stats(id_b)
    );
    assert_eq!(report_b.broken_queues, 0, "{}", report());
    drop(sender);
    drop(receiver);
    switch.stop();
}
