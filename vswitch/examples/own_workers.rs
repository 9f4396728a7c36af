//! An embedder that runs the switch's datapath on threads it owns.
//!
//! `Switch::start_external` starts a switch without threads and hands out
//! one `SwitchWorker` per worker. Here each worker runs on a thread this
//! program spawns and drives it with `poll_once`, waiting with `wait` when
//! a round finds nothing: the place where a VMM would install a per-thread
//! seccomp filter first, or call `poll_once` from its own event loop.
//!
//! Two in-memory ports stand in for guests; one sends 10,000 frames of 8
//! flows to the other, which checks that each flow arrives in order.
//!
//! ```sh
//! cargo run -p vswitch --example own_workers
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vswitch::{MacAddr, Poll, PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_offload::testing::FrameBuilder;
use vswitch_ports::offload::Packet;
use vswitch_ports::{memory_port, MemoryPortConfig};

const FLOWS: u16 = 8;
const FRAMES: u32 = 10_000;

/// A UDP/IPv4 frame of flow `flow` carrying sequence number `seq`: the
/// payload is the flow (2 bytes), the sequence number (4) and 2 bytes of
/// padding, read back by the receiving side.
fn frame(dst: MacAddr, src: MacAddr, flow: u16, seq: u32) -> Packet {
    let mut payload = [0u8; 8];
    payload[0..2].copy_from_slice(&flow.to_be_bytes());
    payload[2..6].copy_from_slice(&seq.to_be_bytes());
    FrameBuilder::udp4([10, 0, 0, 1], [10, 0, 0, 2])
        .macs(src.0, dst.0)
        .ports(5000 + flow, 7)
        .payload(payload)
        .packet()
}

fn main() {
    let (switch, workers) = Switch::start_external(SwitchConfig::default().workers(2));
    let threads: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            thread::spawn(move || {
                // An embedder's loop: a round of work, or a short wait.
                loop {
                    match worker.poll_once() {
                        Poll::Stopped => break,
                        Poll::Worked { .. } => {}
                        Poll::Idle => worker.wait(Duration::from_micros(200)),
                    }
                }
            })
        })
        .collect();

    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queue_len(16_384));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queue_len(16_384));
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch
        .add_port(Arc::new(a), profile.clone())
        .expect("port a");
    switch.add_port(Arc::new(b), profile).expect("port b");

    let (mac_a, mac_b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
    let start = Instant::now();
    for seq in 0..FRAMES / u32::from(FLOWS) {
        for flow in 0..FLOWS {
            let mut packet = frame(mac_b, mac_a, flow, seq);
            while let Err(err) = guest_a.try_inject(0, packet) {
                packet = err.into_packet();
                thread::yield_now();
            }
        }
    }

    let mut next = HashMap::new();
    let mut received = 0;
    while received < FRAMES {
        let Some(packet) = guest_b.collect_timeout(Duration::from_secs(5)) else {
            break;
        };
        let flow = u16::from_be_bytes([packet.data[42], packet.data[43]]);
        let seq = u32::from_be_bytes(packet.data[44..48].try_into().expect("4 bytes"));
        let expected = next.entry(flow).or_insert(0u32);
        assert_eq!(seq, *expected, "flow {flow} reordered");
        *expected += 1;
        received += 1;
    }
    let elapsed = start.elapsed();

    let stats = switch.shutdown();
    for thread in threads {
        thread.join().expect("worker thread");
    }
    let drops: u64 = stats.ports.iter().map(|p| p.stats.drops.total()).sum();
    println!(
        "{received} of {FRAMES} frames in {} flows arrived in order in {:.1} ms; drops: {drops}",
        next.len(),
        elapsed.as_secs_f64() * 1e3
    );
    for (i, worker) in stats.workers.iter().enumerate() {
        println!(
            "worker {i} (on a thread of this program): forwarded {} frames, handed {} to the other",
            worker.frames, worker.handed_off
        );
    }
    assert_eq!(received, FRAMES, "frames were lost");
}
