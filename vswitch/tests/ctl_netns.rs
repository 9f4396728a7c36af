//! `vswitch run` between TAP devices in network namespaces, driven by
//! `vswitch ctl`: a port added and removed while a flow runs between two
//! others loses nothing of that flow; `ctl fdb` lists the learned
//! addresses; the metrics endpoint, read by a real Prometheus text parser
//! (python's prometheus_client), agrees with `ctl stats`; a TAP deleted
//! under the switch shows as down with the frames toward it dropped.
//!
//! Needs root, iproute2, ping and /dev/net/tun (and python3 with
//! prometheus_client for the metrics check): ignored by default, run by
//! `.ci/test` where those are present.

mod ctl_support;

use std::process::{Command, Stdio};

use ctl_support::{scrape, Running};
use vswitch_tests::{require_netns, NetNs};

/// Moves `tap` into `ns` with `ip`/24, IPv6 off (no stray traffic), up.
fn plug(ns: &NetNs, tap: &str, ip: &str) {
    ns.adopt(tap).unwrap();
    ns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
    ])
    .unwrap();
    ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", tap])
        .unwrap();
    ns.exec(&["ip", "link", "set", tap, "up"]).unwrap();
}

fn port<'a>(value: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    value["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {value}"))
}

#[test]
#[ignore = "needs root, iproute2, ping and /dev/net/tun; .ci/test runs it where they are"]
fn ports_come_and_go_while_a_flow_runs() {
    require_netns!();
    let id = std::process::id() % 10_000;
    let (a, b, c) = (format!("vca{id}"), format!("vcb{id}"), format!("vcc{id}"));
    let ns_a = NetNs::new("vsca").unwrap();
    let ns_b = NetNs::new("vscb").unwrap();
    let ns_c = NetNs::new("vscc").unwrap();
    let metrics = format!("127.0.0.1:{}", 20_000 + (std::process::id() + 7) % 20_000);
    let running = Running::start(&[
        "--tap",
        &a,
        "--tap",
        &format!("{b}:offload=none"),
        "--mtu",
        "9000",
        "--workers",
        "2",
        "--metrics",
        &metrics,
        "--stats-interval",
        "1",
    ]);
    plug(&ns_a, &a, "198.18.1.1");
    plug(&ns_b, &b, "198.18.1.2");
    ns_a.exec(&["ping", "-c", "2", "-W", "2", "198.18.1.2"])
        .expect("ping a -> b through the switch");
    let show = running.ctl_json(&["show"]);
    assert_eq!(port(&show, &a)["mtu"], 9000);
    assert_eq!(port(&show, &b)["offloads"], "none");
    assert_eq!(port(&show, &b)["switch_does"], "segments and checksums");

    // The first flow: 100 pings 20 ms apart, all of which must come back.
    let flow = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns_a.name(),
            "ping",
            "-q",
            "-c",
            "100",
            "-i",
            "0.02",
            "-W",
            "2",
        ])
        .arg("198.18.1.2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let added = running.ctl_json(&["add-port", "--tap", &format!("{c}:offload=csum:vlan=1")]);
    assert_eq!(added["name"], c.as_str());
    plug(&ns_c, &c, "198.18.1.3");
    ns_c.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.1.1"])
        .expect("ping c -> a through the added port");

    let fdb = running.ctl_json(&["fdb"]);
    let ports: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["port"].as_str().unwrap())
        .collect();
    for name in [&a, &b, &c] {
        assert!(ports.contains(&name.as_str()), "{name} not learned: {fdb}");
    }
    let only_c = running.ctl_json(&["fdb", "--port", &c]);
    assert_eq!(only_c.as_array().unwrap().len(), 1, "{only_c}");
    assert!(running.ctl_ok(&["fdb"]).unwrap().contains("address(es)"));

    // A profile change on the flow's own port, untagged traffic kept in
    // VLAN 1 by the trunk's native VLAN.
    let set = running.ctl_json(&[
        "set-port",
        &a,
        "--trunk",
        "1-10",
        "--native",
        "1",
        "--max-learned",
        "5",
    ]);
    assert_eq!(set["vlan"], "trunk 1-10 native 1", "{set}");
    assert_eq!(set["max_learned"], 5);

    let removed = running.ctl_json(&["del-port", &c]);
    assert!(
        removed["counters"]["rx_frames"].as_u64().unwrap() >= 3,
        "{removed}"
    );
    assert!(
        removed["counters"]["tx_frames"].as_u64().unwrap() >= 3,
        "{removed}"
    );
    assert!(
        running
            .ctl_json(&["fdb", "--port", &a])
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    let out = flow.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("100 packets transmitted, 100 received"),
        "the first flow lost frames while a port came and went: {summary}"
    );

    // Metrics against ctl stats, with the traffic stopped.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stats = running.ctl_json(&["stats"]);
    let body = scrape(&metrics);
    let dir = tempfile::tempdir().unwrap();
    let exposition = dir.path().join("metrics.txt");
    std::fs::write(&exposition, &body).unwrap();
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, json\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             out = {}\n\
             for family in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
             \x20   for s in family.samples:\n\
             \x20       key = s.name + '|' + ','.join(k + '=' + v for k, v in sorted(s.labels.items()))\n\
             \x20       out[key] = s.value\n\
             print(json.dumps(out))\n",
        )
        .arg(&exposition)
        .output()
        .expect("python3 (needed to parse the metrics)");
    assert!(
        parsed.status.success(),
        "the exposition does not parse (python3 with prometheus_client needed): {}\n{body}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    for name in [&a, &b] {
        let from_ctl = port(&stats, name);
        for (key, field) in [
            ("vswitch_port_frames_total|direction=rx,port=", "rx_frames"),
            ("vswitch_port_frames_total|direction=tx,port=", "tx_frames"),
            ("vswitch_port_bytes_total|direction=rx,port=", "rx_bytes"),
        ] {
            let metric = samples[format!("{key}{name}")].as_f64().unwrap_or(-1.0);
            let ctl = from_ctl[field].as_u64().unwrap() as f64;
            assert!(
                metric >= ctl && metric <= ctl + 2000.0,
                "{name} {field}: metrics {metric}, ctl stats {ctl}"
            );
        }
        assert_eq!(samples[format!("vswitch_port_up|port={name}")], 1.0);
    }
    assert!(samples["vswitch_worker_busy_seconds_total|worker=0"]
        .as_f64()
        .is_some());
    assert!(
        samples[format!("vswitch_port_software_segments_total|port={b}")].is_number(),
        "{samples}"
    );

    let (status, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("vswitch::stats"), "{stderr}");
    assert!(
        stderr.contains(" over "),
        "interval rates in the stats lines: {stderr}"
    );
}

#[test]
#[ignore = "needs root, iproute2, ping and /dev/net/tun; .ci/test runs it where they are"]
fn a_deleted_tap_is_down_and_frames_toward_it_are_dropped() {
    require_netns!();
    let id = std::process::id() % 10_000;
    let (a, b) = (format!("vda{id}"), format!("vdb{id}"));
    let ns_a = NetNs::new("vsda").unwrap();
    let ns_b = NetNs::new("vsdb").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ctl_support::write_file(
        dir.path(),
        "switch.toml",
        &format!(
            "workers = 1\nstats_interval = 0\n\n[[port]]\nname = \"{a}\"\noffload = \"csum\"\n"
        ),
    );
    let running = Running::start(&["--config", config.to_str().unwrap(), "--tap", &b]);
    plug(&ns_a, &a, "198.18.2.1");
    plug(&ns_b, &b, "198.18.2.2");
    ns_a.exec(&["ping", "-c", "1", "-W", "2", "198.18.2.2"])
        .unwrap();

    ns_b.exec(&["ip", "link", "del", &b]).unwrap();
    // Frames toward the deleted port: ARP for an address only b had.
    let _ = ns_a.exec(&["ip", "neigh", "flush", "all"]);
    let _ = ns_a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.2.2"]);

    let show = running.ctl_json(&["show"]);
    assert_eq!(port(&show, &b)["state"], "down", "{show}");
    assert!(port(&show, &b)["down_reason"]
        .as_str()
        .unwrap()
        .contains("deleted"));
    assert_eq!(port(&show, &a)["state"], "up");
    assert_eq!(port(&show, &a)["offloads"], "checksum", "from the file");
    assert_eq!(show["workers"], 1, "from the file");
    let stats = running.ctl_json(&["stats", &b]);
    let dropped = port(&stats, &b)["drops"]["egress_port_error"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "frames toward the deleted TAP are counted: {stats}"
    );
    assert!(running
        .ctl_ok(&["show"])
        .unwrap()
        .contains("is down: the TAP device was deleted"));

    let removed = running.ctl_json(&["del-port", &b]);
    assert_eq!(removed["counters"]["state"], "down");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("port is down"), "{stderr}");
}
