//! The command line and the control socket without any device: usage
//! errors (exit code 2, ranges stated, before anything is opened), a
//! configuration file's error naming its line, and a switch with no ports
//! driven through `vswitch ctl`. Needs no privileges.

mod ctl_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ctl_support::{scrape, vswitch, write_file, Running};

fn fails_with(args: &[&str], code: i32, expected: &str) {
    let out = vswitch().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

#[test]
fn usage_errors_exit_with_2_and_state_the_range() {
    fails_with(&["run", "--tap", "a", "--mtu", "70000"], 2, "576..=9216");
    fails_with(&["run", "--tap", "a", "--workers=1000"], 2, "1..=64");
    fails_with(&["demo", "--mtu", "100"], 2, "576..=9216");
    fails_with(&["run", "--tap", "a:mtu=70000"], 2, "576 to 9216");
    fails_with(
        &["run", "--tap", "a", "--tap", "a", "--no-ctl"],
        2,
        "named twice",
    );
    fails_with(&["run", "--no-ctl"], 2, "no ports");
    fails_with(&["bogus"], 2, "unrecognized subcommand");
    for command in ["demo", "run", "segment", "ctl", "version"] {
        let out = vswitch().args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: vswitch"));
    }
    let out = vswitch().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("add-port"));
}

#[test]
fn a_configuration_error_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "bad.toml",
        "workers = 2\n\n[[port]]\nname = \"t0\"\noffload = \"fast\"\n",
    );
    let path = path.to_str().unwrap();
    fails_with(&["run", "--config", path], 2, &format!("{path}:3:"));
    fails_with(&["run", "--config", path], 2, "offload=none, csum or tso");
    let path = write_file(dir.path(), "mtu.toml", "workers = 2\nmtu = 70000\n");
    fails_with(
        &["run", "--config", path.to_str().unwrap()],
        2,
        "mtu.toml:2:7: mtu: expected 576 to 9216",
    );
}

#[test]
fn ctl_reports_an_absent_switch_with_a_hint() {
    fails_with(
        &["ctl", "--ctl", "/nonexistent/vswitch.ctl", "show"],
        1,
        "is `vswitch run` running?",
    );
}

#[test]
fn a_switch_without_ports_is_driven_through_its_socket() {
    let metrics = format!("127.0.0.1:{}", 20_000 + std::process::id() % 20_000);
    let mut running = Running::start(&["--metrics", &metrics, "--stats-interval", "0"]);
    let mode = std::fs::metadata(&running.ctl)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the control socket is for this user only"
    );

    let show = running.ctl_json(&["show"]);
    assert_eq!(show["ports"].as_array().unwrap().len(), 0);
    assert!(show["workers"].as_u64().unwrap() >= 1);
    assert!(running.ctl_ok(&["show"]).unwrap().contains("(no ports)"));
    assert_eq!(running.ctl_json(&["fdb"]), serde_json::json!([]));
    assert_eq!(running.ctl_json(&["fdb", "flush"])["removed"], 0);
    let stats = running.ctl_json(&["stats"]);
    assert_eq!(stats["ports"], serde_json::json!([]));

    let err = running.ctl(&["del-port", "nope"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("no port named \"nope\""));
    let err = running.ctl(&["add-port", "--tap", "x:mtu=70000"]);
    assert_eq!(err.status.code(), Some(2));
    let err = running.ctl(&["add-port"]);
    assert_eq!(err.status.code(), Some(2));
    let err = running.ctl(&["set-port", "nope"]);
    assert_eq!(
        err.status.code(),
        Some(2),
        "nothing to change is a usage error"
    );

    let body = scrape(&metrics);
    assert!(
        body.contains("# TYPE vswitch_worker_frames counter"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"));

    running.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        running.is_running(),
        "SIGUSR1 prints statistics, it does not stop the switch"
    );
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopping after"), "{stderr}");
}

#[test]
#[ignore = "needs root, to connect as another user (setpriv); .ci/test runs it as root"]
fn another_user_is_refused() {
    assert!(
        vswitch_tests::is_root(),
        "another_user_is_refused cannot run here: needs root"
    );
    let running = Running::start(&["--stats-interval", "0"]);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_vswitch"))
        .arg("ctl")
        .arg("--ctl")
        .arg(&running.ctl)
        .arg("show")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    fails_with(
        &["run", "--ctl-group", "no-such-group-here"],
        2,
        "--ctl-group",
    );
}

/// A TUN device made for a test, deleted when dropped.
struct TunDevice(String);

impl Drop for TunDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun; .ci/test runs it where they are"]
fn os_errors_carry_a_hint() {
    if let Some(reason) = vswitch_tests::netns_unavailable() {
        panic!("os_errors_carry_a_hint cannot run here: {reason}");
    }
    let name = format!("vsht{}", std::process::id() % 10_000);
    let status = std::process::Command::new("ip")
        .args(["tuntap", "add", "dev", &name, "mode", "tun"])
        .status()
        .unwrap();
    assert!(status.success());
    let _tun = TunDevice(name.clone());
    fails_with(
        &["run", "--tap", &name, "--no-ctl"],
        1,
        "hint: a TUN device of that name exists",
    );
}
