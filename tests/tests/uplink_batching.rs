//! How much batching the uplink's system calls buys: frames per second of
//! the calling thread's CPU time, sending with one frame per `sendmmsg`
//! against 32, and receiving with one frame per `recvmmsg` against 16,
//! over a veth pair in a namespace made for the run. It prints the
//! figures and their ratio and asserts only that the frames moved.
//!
//! `benches/scripts/uplink-batching.sh` runs it in release mode.

use std::time::Duration;

use vswitch_offload::testing::FrameBuilder;
use vswitch_offload::Packet;
use vswitch_ports::uplink::{OffloadMode, UplinkConfig, UplinkPort};
use vswitch_ports::Port;
use vswitch_tests::{require_netns, NetNs};

/// CPU time this thread has used (the first field of its schedstat).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("schedstat starts with the time on CPU");
    Duration::from_nanos(nanos)
}

fn frames(count: usize) -> Vec<Packet> {
    (0..count)
        .map(|i| {
            FrameBuilder::udp4([198, 18, 0, 1], [198, 18, 0, 2])
                .ports(10_000 + (i % 64) as u16, 9)
                .payload(vec![i as u8; 64])
                .packet()
        })
        .collect()
}

/// Frames per CPU second sending `total` frames in batches of `batch`.
fn send_rate(port: &UplinkPort, total: usize, batch: usize) -> f64 {
    let template = frames(batch);
    let start = thread_cpu();
    let mut sent = 0;
    while sent < total {
        let mut frames = template.clone();
        while !frames.is_empty() {
            let before = frames.len();
            let _ = port.send_batch(0, &mut frames);
            sent += before - frames.len();
        }
    }
    sent as f64 / (thread_cpu() - start).as_secs_f64()
}

/// Frames per CPU second receiving what `sender` sends, `max` per call.
fn receive_rate(port: &UplinkPort, sender: &UplinkPort, rounds: usize, max: usize) -> (f64, usize) {
    let burst = frames(32);
    let mut spent = Duration::ZERO;
    let mut got = 0;
    let mut batch = Vec::with_capacity(64);
    for _ in 0..rounds {
        for _ in 0..64 {
            let mut frames = burst.clone();
            while !frames.is_empty() {
                let _ = sender.send_batch(0, &mut frames);
            }
        }
        let start = thread_cpu();
        loop {
            batch.clear();
            let n = port.receive(0, &mut batch, max).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        spent += thread_cpu() - start;
    }
    (got as f64 / spent.as_secs_f64(), got)
}

#[test]
#[ignore = "a measurement; needs root, ip netns, veth: benches/scripts/uplink-batching.sh runs it"]
fn batched_system_calls_against_one_per_frame() {
    require_netns!();
    let ns = NetNs::new("vswub").unwrap();
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        .unwrap();
    ns.exec(&[
        "ip", "link", "add", "upb", "type", "veth", "peer", "name", "peerb",
    ])
    .unwrap();
    for name in ["upb", "peerb"] {
        ns.exec(&["ip", "link", "set", name, "up"]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let path = format!("/run/netns/{}", ns.name());
    let open = |name: &str| {
        UplinkPort::open(name, UplinkConfig::new(OffloadMode::None).netns(&path)).unwrap()
    };
    let (uplink, peer) = (open("upb"), open("peerb"));
    assert_eq!(uplink.capabilities().rx_queues, 1);

    let total = 200_000;
    let tx_one = send_rate(&uplink, total, 1);
    let tx_many = send_rate(&uplink, total, 32);
    let (rx_one, got_one) = receive_rate(&uplink, &peer, 50, 1);
    let (rx_many, got_many) = receive_rate(&uplink, &peer, 50, 64);
    assert!(got_one > 0 && got_many > 0);
    println!("uplink batching, 106-byte UDP frames over veth, frames per CPU second of the calling thread:");
    println!(
        "  send:    1 per sendmmsg {:>10.0}   32 per sendmmsg {:>10.0}   ratio {:.2}",
        tx_one,
        tx_many,
        tx_many / tx_one
    );
    println!(
        "  receive: 1 per recvmmsg {:>10.0}   16 per recvmmsg {:>10.0}   ratio {:.2}   ({got_one} and {got_many} frames)",
        rx_one,
        rx_many,
        rx_many / rx_one
    );
    println!("  {:?}", uplink.stats());
}
