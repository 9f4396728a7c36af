//! Tenant protection through the command: a port's isolation, guards,
//! addresses and rate limits from its spec, changed live by `vswitch ctl
//! set-port`, and shown by `vswitch ctl show`. A vhost-user port listening
//! for its guest needs no privileges.

mod ctl_support;

use ctl_support::Running;

#[test]
fn guards_and_limits_are_set_by_spec_and_set_port_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm0.sock");
    let spec = format!(
        "{}:name=vm0:guard=all:ip=[10.0.0.2,2001:db8::/64]",
        socket.display()
    );
    let running = Running::start(&["--vhost-user", &spec, "--stats-interval", "0"]);

    let show = running.ctl_json(&["show"]);
    assert_eq!(
        show["ports"][0]["protection"],
        "guard all; ip 10.0.0.2,2001:db8::/64"
    );

    let text = running
        .ctl_ok(&[
            "set-port",
            "vm0",
            "--isolated",
            "on",
            "--guard",
            "source,router",
            "--from-bytes",
            "125M/1Mi",
            "--to-frames",
            "100k",
        ])
        .unwrap();
    assert!(
        text.contains(
            "vm0 protection: isolated; guard source,router; ip 10.0.0.2,2001:db8::/64; \
             from-bytes 125000000/1048576; to-frames 100000/10000"
        ),
        "{text}"
    );
    let text = running.ctl_ok(&["show"]).unwrap();
    assert!(text.contains("vm0 protection: isolated;"), "{text}");

    // Off again; a bad value is a usage error before anything is sent.
    running
        .ctl_ok(&[
            "set-port",
            "vm0",
            "--isolated",
            "off",
            "--guard",
            "none",
            "--ip",
            "none",
            "--from-bytes",
            "off",
            "--to-frames",
            "off",
        ])
        .unwrap();
    assert!(running.ctl_json(&["show"])["ports"][0]["protection"].is_null());
    let err = running.ctl(&["set-port", "vm0", "--guard", "dns"]);
    assert_eq!(err.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&err.stderr).contains("unknown guard"));
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status}: {stderr}");
}
