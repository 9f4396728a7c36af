//! QEMU guests for the guest tests: the project's initramfs test guest
//! booted by `scripts/guest/run-guest.sh`, its console markers, and a QMP
//! client ([`qmp`]) to change a running guest's devices.
#![allow(dead_code)]

pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch::{PortProfile, Switch, VlanId};
use vswitch_ports::vhost_user::VhostUserPort;
use vswitch_ports::Port;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Builds the guest image if needed (cheap when up to date) and returns
/// its directory; panics with what is missing.
pub fn guest_image() -> PathBuf {
    let repo = repo();
    let out = repo.join("target/guest-image");
    let status = Command::new("bash")
        .arg(repo.join("scripts/guest/build-image.sh"))
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "building the guest image failed: run scripts/guest/install-deps.sh as root first"
    );
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    assert!(
        qemu.map(|o| o.status.success()).unwrap_or(false),
        "qemu-system-x86_64 is missing: run scripts/guest/install-deps.sh as root"
    );
    out
}

/// A QEMU guest, killed when dropped (also when the test fails).
pub struct Guest {
    pub child: Child,
    pub log: PathBuf,
    /// QEMU's own messages (a failed start, a vhost-user error).
    pub stderr: PathBuf,
}

impl Guest {
    pub fn start(image: &Path, dir: &Path, name: &str, socket: &Path, args: &[&str]) -> Guest {
        let log = dir.join(format!("{name}.log"));
        let stderr = dir.join(format!("{name}.stderr"));
        let stderr_file = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new("bash")
            .arg(repo().join("scripts/guest/run-guest.sh"))
            .arg("--image")
            .arg(image)
            .arg("--socket")
            .arg(socket)
            .arg("--log")
            .arg(&log)
            // Every vhost-user message QEMU sends and reads, on stderr: shown
            // when a test fails.
            .args(["--trace", "vhost_user_*"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .spawn()
            .expect("run-guest.sh starts");
        Guest { child, log, stderr }
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether QEMU has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Whether the guest never got to its `/init`, for a reason that is
    /// QEMU's and not the switch's: QEMU was killed by a signal (a crash),
    /// or is still running with nothing on the console (TCG stuck in the
    /// kernel's boot, seen now and then on a loaded machine). The switch
    /// has no part in a boot until `/init` has printed `VSW-BOOT`: the
    /// virtio-net driver, a module, is loaded after it.
    pub fn failed_to_boot(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let crashed_or_running = match self.child.try_wait() {
            Ok(Some(status)) => status.signal().is_some(),
            Ok(None) => true,
            Err(_) => false,
        };
        crashed_or_running && !self.console().contains("VSW-BOOT")
    }

    /// The console and QEMU's own messages, for a failure report.
    pub fn describe(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited ({status})"),
            Ok(None) => "running".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        format!(
            "QEMU {state}; stderr:\n{}\nconsole:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            self.console()
        )
    }

    /// Waits until the console shows `marker`, or the guest exits, or the
    /// time is up.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.console().contains(marker) {
                return true;
            }
            if self.exited() {
                return self.console().contains(marker);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The text between `VSW-NAME-BEGIN` and `VSW-NAME-END`.
    pub fn section(&self, name: &str) -> Option<String> {
        let console = self.console();
        let begin = format!("VSW-{name}-BEGIN");
        let end = format!("VSW-{name}-END");
        let from = console.find(&begin)? + begin.len();
        let to = from + console[from..].find(&end)?;
        Some(console[from..to].to_string())
    }

    /// The first console line that starts with `marker`.
    pub fn line(&self, marker: &str) -> Option<String> {
        self.console()
            .lines()
            .find(|l| l.starts_with(marker))
            .map(|l| l.trim_end().to_string())
    }

    /// The number after `field=` on the first line starting with `key`.
    pub fn line_value(&self, key: &str, field: &str) -> Option<u64> {
        let line = self.line(key)?;
        let field = format!("{field}=");
        let at = line.find(&field)? + field.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory for one test's sockets and logs, removed when dropped
/// (kept when the test fails, for the logs).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vswitch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The bits per second the receiver counted, from iperf3's JSON.
pub fn received_bps(json: &str) -> f64 {
    let key = "\"sum_received\"";
    let at = json.find(key).expect("iperf3 JSON has sum_received");
    let rest = &json[at..];
    let bps = rest.find("\"bits_per_second\"").expect("bits_per_second");
    rest[bps + 18..]
        .trim_start_matches([':', ' '])
        .split([',', '\n', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("a number")
}

/// Waits until `ok` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

/// The receiving guest's role and addresses.
pub const SERVER_ARGS: [&str; 6] = [
    "--role",
    "server",
    "--ip",
    "10.0.0.1/24",
    "--mac",
    "52:54:00:00:00:01",
];

/// The sending guest's role and addresses (its iperf3 arguments follow).
pub const CLIENT_ARGS: [&str; 8] = [
    "--role",
    "client",
    "--ip",
    "10.0.0.2/24",
    "--peer",
    "10.0.0.1",
    "--mac",
    "52:54:00:00:00:02",
];

/// Adds a vhost-user port to the switch as an access port of VLAN 1.
pub fn plug(switch: &Switch, port: &Arc<VhostUserPort>) -> vswitch::PortId {
    switch
        .add_port(
            port.clone() as Arc<dyn Port>,
            PortProfile::access(VlanId::DEFAULT),
        )
        .unwrap()
}
