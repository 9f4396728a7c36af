//! Many flows through in-memory ports: nothing lost, no flow reordered,
//! flows spread over the workers, learned destinations not flooded.

mod switch_support;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use switch_support::*;
use vswitch::{DropReason, PortProfile, VlanId};
use vswitch_ports::{memory_port, MemoryEndpoint, MemoryPortConfig};

const FLOWS: u16 = 64;

/// Ports "a", "b" and "c" made by `config`, added to `switch` as access
/// ports of VLAN 1: their ids and guest ends.
fn three_ports(
    switch: &vswitch::Switch,
    config: impl Fn(&str) -> MemoryPortConfig,
) -> [(vswitch::PortId, MemoryEndpoint); 3] {
    ["a", "b", "c"].map(|name| {
        let (port, guest) = memory_port(config(name));
        let id = switch
            .add_port(Arc::new(port), PortProfile::access(VlanId::DEFAULT))
            .unwrap();
        (id, guest)
    })
}
const FRAMES_PER_FLOW: u32 = 400;

#[test]
fn many_flows_keep_their_order_and_spread_over_workers() {
    let switch = patient_switch(4);
    let [(id_a, guest_a), (id_b, guest_b), (id_c, guest_c)] = three_ports(&switch, |name| {
        MemoryPortConfig::new(name).queues(3, 2).queue_len(128)
    });
    let (guest_a, guest_b, guest_c) = (Arc::new(guest_a), Arc::new(guest_b), Arc::new(guest_c));

    // Each side announces itself, so the flows are unicast.
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));
    guest_a.try_inject(0, hello(mac_a)).unwrap();
    expect_one(&guest_b);
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);
    expect_one(&guest_c);
    expect_one(&guest_c);

    let expected = u64::from(FLOWS) * u64::from(FRAMES_PER_FLOW);
    let quiet = Duration::from_secs(20);
    let at_b = collector(guest_b.clone(), quiet, move |r| r.flow_frames >= expected);
    let at_a = collector(guest_a.clone(), quiet, move |r| r.flow_frames >= expected);

    let senders: Vec<_> = [
        (guest_a.clone(), mac_b, mac_a),
        (guest_b.clone(), mac_a, mac_b),
    ]
    .into_iter()
    .flat_map(|(guest, dst, src)| {
        // One thread per rx queue; a flow always uses the same queue.
        (0..3usize).map(move |queue| {
            let guest = guest.clone();
            thread::spawn(move || {
                for seq in 0..FRAMES_PER_FLOW {
                    let flows = (0..FLOWS).filter(|f| usize::from(*f) % 3 == queue);
                    let frames = flows.map(|flow| flow_frame(dst, src, flow, seq));
                    inject_all(&guest, queue, frames.collect::<Vec<_>>());
                }
            })
        })
    })
    .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let (at_a, at_b) = (at_a.join().unwrap(), at_b.join().unwrap());

    for (side, received) in [("a", &at_a), ("b", &at_b)] {
        assert_eq!(received.flow_frames, expected, "frames lost towards {side}");
        assert_eq!(received.out_of_order, 0, "flows reordered towards {side}");
        assert_eq!(received.next.len(), usize::from(FLOWS));
        assert!(received.next.values().all(|&n| n == FRAMES_PER_FLOW));
    }
    // Known destinations are not flooded to the third port.
    assert_eq!(guest_c.drain(&mut Vec::new()), 0);

    let stats = switch.shutdown();
    for port in &stats.ports {
        assert_eq!(
            port.stats.drops.total(),
            0,
            "{}: {:?}",
            port.name,
            port.stats.drops
        );
    }
    let port = |id| *stats.port(id).unwrap();
    assert_eq!(port(id_a).rx_frames, expected + 1);
    assert_eq!(port(id_b).tx_frames, expected + 1);
    assert_eq!(port(id_c).tx_frames, 2);
    assert_eq!(port(id_a).rx_bytes, port(id_b).tx_bytes);
    // 128 flows over 4 workers: every worker has a share.
    let handled: Vec<u64> = stats.workers.iter().map(|w| w.frames).collect();
    assert_eq!(handled.iter().sum::<u64>(), 2 * expected + 2);
    assert!(handled.iter().all(|&n| n > expected / 8), "{handled:?}");
    assert!(stats.workers.iter().map(|w| w.handed_off).sum::<u64>() > 0);
}

#[test]
fn shutdown_leaves_no_frame_taken_from_a_port_uncounted() {
    let switch = vswitch::Switch::start(vswitch::SwitchConfig::default().workers(4)).unwrap();
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queues(2, 1).queue_len(4096));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queues(1, 4).queue_len(512));
    let profile = PortProfile::access(VlanId::DEFAULT);
    let id_a = switch.add_port(Arc::new(a), profile.clone()).unwrap();
    let id_b = switch.add_port(Arc::new(b), profile).unwrap();
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);
    // Nobody collects at b: its queues fill and the rest is dropped.
    for seq in 0..2000 {
        for flow in 0..8 {
            let frame = flow_frame(mac_b, mac_a, flow, seq);
            guest_a.try_inject(usize::from(flow % 2), frame).ok();
        }
    }
    let stats = switch.shutdown();
    let port = |id| *stats.port(id).unwrap();
    let (at_a, at_b) = (port(id_a), port(id_b));
    assert!(at_a.rx_frames > 0);
    // Every frame taken from a was sent to b or counted as dropped.
    assert_eq!(
        at_a.rx_frames,
        at_b.tx_frames + at_a.drops.total() + at_b.drops.total(),
        "a: {at_a:?}, b: {at_b:?}"
    );
    // Each worker sends on its own queue of b; the frames that found it
    // full were counted.
    assert!(at_b.tx_frames <= 4 * 512);
    assert!(at_b.drops.get(DropReason::EgressQueueFull) > 0);
    let mut left = Vec::new();
    assert_eq!(guest_b.drain(&mut left) as u64, at_b.tx_frames);
}

#[test]
fn with_three_ports_the_counters_balance_floods_included() {
    let switch = patient_switch(2);
    let [(id_a, guest_a), (id_b, guest_b), (id_c, guest_c)] =
        three_ports(&switch, |name| MemoryPortConfig::new(name).queue_len(256));
    let (mac_a, mac_b, mac_c) = (mac(1, 1), mac(2, 1), mac(3, 1));
    // b announces itself (to a and c: one copy more), a sends it 20
    // frames (unicast), c sends 5 to an address nobody has (flooded to a
    // and b) and a 3 broadcasts.
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);
    inject_all(
        &guest_a,
        0,
        (0..20).map(|seq| flow_frame(mac_b, mac_a, 0, seq)),
    );
    inject_all(
        &guest_c,
        0,
        (0..5).map(|seq| flow_frame(mac(9, 9), mac_c, 1, seq)),
    );
    inject_all(&guest_a, 0, (0..3).map(|_| hello(mac_a)));
    // The switch stops polling at shutdown: first let it take all 29.
    let taken = || -> u64 { switch.stats().ports.iter().map(|p| p.stats.rx_frames).sum() };
    for _ in 0..1000 {
        if taken() == 29 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let stats = switch.shutdown();
    let port = |id| *stats.port(id).unwrap();
    let (at_a, at_b, at_c) = (port(id_a), port(id_b), port(id_c));
    assert_eq!(
        (at_a.flood_copies, at_b.flood_copies, at_c.flood_copies),
        (3, 1, 5)
    );
    // Every frame received, and every copy of it, left or was dropped.
    let forwarded: u64 = [at_a, at_b, at_c]
        .iter()
        .map(|s| s.rx_frames + s.flood_copies)
        .sum();
    let left: u64 = [at_a, at_b, at_c]
        .iter()
        .map(|s| s.tx_frames + s.drops.total())
        .sum();
    assert_eq!(forwarded, 1 + 20 + 5 + 3 + 1 + 5 + 3);
    assert_eq!(forwarded, left, "a: {at_a:?}, b: {at_b:?}, c: {at_c:?}");
}
