//! Shared helpers for the integration and end-to-end tests in `tests/tests/`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Whether the current process runs as root (needed for namespaces and TAP
/// devices).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

use std::process::Command;

/// Why an end-to-end test cannot run here, or `None` when it can: it needs
/// root, the `ip` command and `/dev/net/tun`.
pub fn netns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces and TAP devices)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs the `ip` command (iproute2)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun".into());
    }
    None
}

/// Fails the calling test, saying what is missing, when namespaces are
/// unavailable. Tests that need them are `#[ignore]`d by default, so the
/// runner's summary counts them as ignored where they cannot run;
/// `bash .ci/test` runs them (`--include-ignored`) on a machine that has
/// what they need, as CI's does, and there a missing piece is a failure,
/// never a silent pass.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = $crate::netns_unavailable() {
            panic!(
                "{} cannot run here: {reason} (run it as root on a machine with iproute2 and /dev/net/tun)",
                module_path!()
            );
        }
    };
}

/// A network namespace made for one test, deleted (with every interface in
/// it) when dropped, also when the test fails.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `{prefix}{pid}`, removing a stale one of the
    /// same name first, and brings its loopback up.
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let name = format!("{prefix}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; fails with its stderr when it
    /// exits non-zero. Returns its stdout.
    pub fn exec(&self, argv: &[&str]) -> std::io::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// Moves interface `ifname` from the current namespace into this one.
    pub fn adopt(&self, ifname: &str) -> std::io::Result<()> {
        run(Command::new("ip").args(["link", "set", ifname, "netns", &self.name])).map(|_| ())
    }

    /// Moves interface `ifname` into this namespace, gives it `ip`/24 and
    /// brings it up: a host behind that interface.
    pub fn adopt_as_host(&self, ifname: &str, ip: &str) -> std::io::Result<()> {
        self.adopt(ifname)?;
        self.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname])?;
        self.exec(&["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// TCP and UDP checksum errors the namespace's kernel counted so far
    /// (nstat's TcpInCsumErrors and UdpInCsumErrors).
    pub fn csum_errors(&self) -> u64 {
        let out = self
            .exec(&["nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors"])
            .expect("nstat runs (iproute2)");
        out.lines()
            .filter(|line| line.contains("InCsumErrors"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    }
}

/// Fails the calling test when iperf3 is missing (`.ci/install-deps`
/// installs it).
pub fn require_iperf3() {
    assert!(
        Command::new("iperf3").arg("--version").output().is_ok(),
        "iperf3 is not installed (.ci/install-deps installs it)"
    );
}

/// The `"bytes"` of the `end.sum_received` object of iperf3's JSON: what
/// the receiver got.
pub fn iperf3_received_bytes(json: &str) -> Option<u64> {
    let section = &json[json.find("\"sum_received\"")?..];
    let at = section.find("\"bytes\"")? + "\"bytes\"".len();
    let digits: String = section[at..]
        .chars()
        .skip_while(|c| *c == ':' || c.is_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command; a non-zero exit becomes an error carrying its stderr.
pub fn run(command: &mut Command) -> std::io::Result<String> {
    let output = command.output()?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "{command:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
