//! The TAP device against the real kernel: a frame written into the TAP
//! reaches a network namespace's stack, and its answer comes back out.

use std::time::{Duration, Instant};

use vswitch_ports::tap::{
    KernelReceive, TapConfig, TapFlags, TapOffloads, TapPort, TapQueue, TAP_VNET_HDR_LEN,
};
use vswitch_tests::{require_netns, NetNs};

mod switch_support;
use switch_support::sleepy_worker;

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const OUR_IP: [u8; 4] = [198, 18, 0, 2];
const KERNEL_IP: [u8; 4] = [198, 18, 0, 1];

/// An ARP request (RFC 826) from OUR_MAC/OUR_IP asking for KERNEL_IP.
fn arp_request() -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&OUR_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    frame.extend_from_slice(&OUR_MAC);
    frame.extend_from_slice(&OUR_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&KERNEL_IP);
    frame
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn tap_carries_frames_to_and_from_a_namespace() {
    require_netns!();
    arp_round_trip("vswt-tap", "vswt", false);
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn a_napi_tap_carries_frames_to_and_from_a_namespace() {
    require_netns!();
    arp_round_trip("vswt-napi", "vswn", true);
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn a_frame_toward_a_tap_that_is_down_counts_as_link_down_not_refused() {
    require_netns!();
    use vswitch_offload::Packet;
    use vswitch_ports::port::{Port, SendError};
    let ns = NetNs::new("vswt-down").expect("create namespace");
    let ifname = format!("vswd{}", std::process::id() % 100_000);
    let tap = TapPort::open(&ifname, TapOffloads::NONE, 1, 1500).expect("open TAP");
    ns.adopt(&ifname).expect("move TAP into namespace");
    // Moved, and not brought up: the kernel takes nothing from it.
    let sent = tap.send(0, Packet::plain(arp_request()));
    assert!(
        matches!(sent, Err(SendError::Disconnected { .. })),
        "a TAP that is down: {sent:?}"
    );
    assert_eq!((tap.tx_link_down(), tap.tx_errors()), (1, 0));
    assert!(
        !tap.is_gone(),
        "a link that is down is not a device that is gone"
    );
    ns.exec(&["ip", "link", "set", &ifname, "up"])
        .expect("bring the TAP up");
    tap.send(0, Packet::plain(arp_request()))
        .expect("once it is up, frames go");
    assert_eq!(tap.tx_link_down(), 1);
}

/// Moves the TAP `name` into `ns`, where it gets the kernel's address
/// (198.18.0.1/24) and comes up.
fn bring_up(ns: &NetNs, name: &str) {
    ns.adopt(name).expect("move TAP into namespace");
    ns.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", name])
        .unwrap();
    ns.exec(&["ip", "link", "set", name, "up"]).unwrap();
}

/// Writes an ARP request into a TAP whose other side is a namespace and
/// waits for the kernel's reply, with the queue attached with or without
/// IFF_NAPI (the frames then enter the kernel through GRO).
fn arp_round_trip(ns_name: &str, prefix: &str, napi: bool) {
    let ns = NetNs::new(ns_name).expect("create namespace");
    let ifname = format!("{prefix}{}", std::process::id() % 100_000);
    let flags = TapFlags {
        multi_queue: false,
        napi,
    };
    let tap = TapQueue::open_with(&ifname, TapOffloads::FULL, flags).expect("open TAP");
    assert_eq!(tap.napi(), napi, "IFF_NAPI is in every kernel since 4.15");
    assert!(
        tap.offloads().checksum && tap.offloads().tso4,
        "kernel refused csum/TSO4: {:?}",
        tap.offloads()
    );
    bring_up(&ns, tap.name());

    let request = arp_request();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut hdr = [0u8; TAP_VNET_HDR_LEN];
    let mut buf = vec![0u8; 65_550];
    let mut sent = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "no ARP reply from the kernel within 5 s"
        );
        if !sent {
            sent = tap
                .send(&[0; TAP_VNET_HDR_LEN], &[&request[..14], &request[14..]])
                .unwrap();
        }
        tap.wait_readable(Duration::from_millis(100)).unwrap();
        while let Some(len) = tap.recv(&mut hdr, &mut buf).unwrap() {
            let frame = &buf[..len];
            // An ARP reply (opcode 2) to us from the kernel's address.
            if len >= 42 && frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 2] {
                assert_eq!(&frame[0..6], &OUR_MAC, "reply addressed to us");
                assert_eq!(&frame[28..32], &KERNEL_IP, "sender is the kernel's address");
                assert_eq!(&frame[38..42], &OUR_IP, "target is our address");
                return;
            }
        }
    }
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn a_multi_queue_tap_port_opens_one_queue_per_worker() {
    require_netns!();
    let ns = NetNs::new("vswt-mq").expect("create namespace");
    let ifname = format!("vswq{}", std::process::id() % 100_000);
    let port = vswitch_ports::tap::TapPort::open(&ifname, TapOffloads::CHECKSUM, 3, 1500).unwrap();
    assert_eq!(port.queues().len(), 3);
    let caps = vswitch_ports::Port::capabilities(&port);
    assert_eq!((caps.rx_queues, caps.tx_queues), (3, 3));
    assert!(caps.egress.checksum && !caps.egress.tso4, "{caps:?}");
    // The kernel's own view of the device: three attached queues.
    let details =
        vswitch_tests::run(std::process::Command::new("ip").args(["-d", "link", "show", &ifname]))
            .unwrap();
    assert!(details.contains("multi_queue numqueues 3"), "{details}");
    ns.adopt(&ifname).unwrap();
    drop(port);
    // Closing every queue removes the (non-persistent) device with it.
    let gone = ns.exec(&["ip", "link", "show", &ifname]);
    assert!(gone.is_err(), "the device outlived its queues: {gone:?}");
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn coalesced_kernel_receive_sets_napi_and_the_flush_timeout() {
    require_netns!();
    let ns = NetNs::new("vswt-gro").expect("create namespace");
    let ifname = format!("vswg{}", std::process::id() % 100_000);
    let flush = Duration::from_micros(750);
    let config = TapConfig::new(TapOffloads::NONE)
        .queues(2)
        .receive(KernelReceive::Coalesced { flush });
    let port = TapPort::open_with(&ifname, config).unwrap();
    assert_eq!(port.kernel_receive(), KernelReceive::Coalesced { flush });
    assert!(port.queues().iter().all(TapQueue::napi));
    // What the kernel itself reports for the device, in nanoseconds.
    let sysfs =
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/gro_flush_timeout")).unwrap();
    assert_eq!(sysfs.trim(), "750000");
    ns.adopt(&ifname).unwrap();
    drop(port);

    let ifname = format!("vswp{}", std::process::id() % 100_000);
    let config = TapConfig::new(TapOffloads::NONE).receive(KernelReceive::PerFrame);
    let port = TapPort::open_with(&ifname, config).unwrap();
    assert_eq!(port.kernel_receive(), KernelReceive::PerFrame);
    assert!(!port.queues()[0].napi());
    ns.adopt(&ifname).unwrap();
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: bash .ci/test runs it where they are"]
fn a_frame_from_the_kernel_ends_a_workers_wait() {
    require_netns!();
    use std::sync::Arc;
    use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
    use vswitch_ports::{memory_port, MemoryPortConfig};

    let ns = NetNs::new("vswt-wake").expect("create namespace");
    let ifname = format!("vsww{}", std::process::id() % 100_000);
    let tap = TapPort::open(&ifname, TapOffloads::FULL, 1, 1500).expect("open TAP");
    bring_up(&ns, &ifname);

    let (switch, mut workers) = Switch::start_external(SwitchConfig::default().workers(1));
    let worker = workers.pop().unwrap();
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(Arc::new(tap), profile.clone()).unwrap();
    switch.add_port(Arc::new(b), profile).unwrap();
    // The worker sleeps a minute whenever it runs out of work: the kernel's
    // replies come through in time only if the TAP wakes it.
    let runner = sleepy_worker(worker);
    // The kernel speaks first: a ping toward an address nobody has makes
    // it ask for that address (ARP) on its own, while the worker sleeps.
    // Each request must reach b long before the worker's minute is up.
    let mut pings = Vec::new();
    for round in 0..20u8 {
        std::thread::sleep(Duration::from_millis(20));
        let target = format!("198.18.0.{}", 10 + round);
        pings.push(
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns.name(),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &target,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("ping"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = guest_b.collect_timeout(left).unwrap_or_else(|| {
                panic!(
                    "the kernel's ARP request {round} still waits: the TAP did not wake the worker"
                )
            });
            let frame = &got.data;
            // A request (opcode 1) for the target, from the kernel's address.
            if frame.len() >= 42
                && frame[12..14] == [0x08, 0x06]
                && frame[20..22] == [0, 1]
                && frame[38..42] == [198, 18, 0, 10 + round]
            {
                assert_eq!(&frame[28..32], &KERNEL_IP);
                break;
            }
        }
    }
    for mut ping in pings {
        let _ = ping.kill();
        let _ = ping.wait();
    }
    switch.stop();
    let waits = runner.join().unwrap();
    assert!(waits > 0, "the worker never slept");
    switch.shutdown();
}
