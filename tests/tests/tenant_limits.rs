//! Rate limits and guards through the threaded switch with in-memory
//! ports: a throttled guest loses nothing (its frames arrive, later), a
//! limited port does not hold back another, bytes sent toward a limited
//! port count what it got, and guard drops are counted on the port that
//! sent the frame.

mod switch_support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switch_support::*;
use vswitch::guard::PortSecurity;
use vswitch::limit::{Bucket, PortLimits, RateLimit};
use vswitch::{DropReason, PortProfile};
use vswitch_ports::{memory_port, MemoryEndpoint, MemoryPortConfig};

/// Frames a second the limited guest may send, and how many it saves up.
const RATE: u64 = 500;
const BURST: u64 = 25;
/// Frames it sends: about a second's worth beyond its burst.
const FRAMES: u32 = 525;

fn throttled() -> PortProfile {
    let limit = RateLimit::none().frames(Bucket::new(RATE, BURST));
    PortProfile::default().limits(PortLimits::new().from_port(limit))
}

/// Collects on `endpoint` until every flow in `expected` (flow, frames)
/// is complete or nothing came for 10 s; returns what arrived and when
/// each flow completed, from `start`.
fn collect_flows(
    endpoint: Arc<MemoryEndpoint>,
    expected: Vec<(u16, u32)>,
    start: Instant,
) -> thread::JoinHandle<(Received, Vec<Option<Duration>>)> {
    thread::spawn(move || {
        let mut received = Received::default();
        let mut done = vec![None; expected.len()];
        let mut last = Instant::now();
        while done.iter().any(Option::is_none) && last.elapsed() < Duration::from_secs(10) {
            if let Some(packet) = endpoint.collect_timeout(Duration::from_millis(20)) {
                received.record(&packet.data);
                last = Instant::now();
                for (slot, (flow, frames)) in done.iter_mut().zip(&expected) {
                    if slot.is_none() && received.complete(*flow, *frames) {
                        *slot = Some(start.elapsed());
                    }
                }
            }
        }
        (received, done)
    })
}

#[test]
fn a_throttled_guest_loses_no_frame_it_arrives_later() {
    let switch = patient_switch(2);
    let config = |name: &str| MemoryPortConfig::new(name).queue_len(32);
    let (a, guest_a) = memory_port(config("a"));
    let (b, guest_b) = memory_port(config("b"));
    let id_a = switch.add_port(Arc::new(a), throttled()).unwrap();
    switch
        .add_port(Arc::new(b), PortProfile::default())
        .unwrap();
    let guest_b = Arc::new(guest_b);
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));

    let start = Instant::now();
    let at_b = collect_flows(guest_b, vec![(0, FRAMES)], start);
    // The guest's queue holds 32 frames: it is held back while the switch
    // does not poll it, as a guest whose ring is full.
    inject_all(
        &guest_a,
        0,
        (0..FRAMES).map(|seq| flow_frame(mac_b, mac_a, 0, seq)),
    );
    let (received, done) = at_b.join().unwrap();

    assert!(received.complete(0, FRAMES), "{received:?}");
    assert_eq!((received.gaps, received.out_of_order), (0, 0));
    let took = done[0].expect("every frame arrived");
    // (525 - 25) frames at 500 a second: a second, less the time the
    // first poll waited.
    assert!(
        took >= Duration::from_millis(800),
        "{took:?}: the limit did not hold"
    );
    let stats = switch.port_stats(id_a).unwrap();
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops);
}

#[test]
fn a_limited_port_does_not_slow_another() {
    let switch = patient_switch(2);
    let config = |name: &str| MemoryPortConfig::new(name).queue_len(32);
    let (a, guest_a) = memory_port(config("a"));
    let (b, guest_b) = memory_port(config("b"));
    let (c, guest_c) = memory_port(config("c"));
    switch.add_port(Arc::new(a), throttled()).unwrap();
    switch
        .add_port(Arc::new(b), PortProfile::default())
        .unwrap();
    switch
        .add_port(Arc::new(c), PortProfile::default())
        .unwrap();
    let (guest_a, guest_b, guest_c) = (Arc::new(guest_a), Arc::new(guest_b), Arc::new(guest_c));
    let (mac_a, mac_b, mac_c) = (mac(1, 1), mac(2, 1), mac(3, 1));
    // b announces itself so that both flows are unicast to it.
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);
    expect_one(&guest_c);

    let free_frames = 4 * FRAMES;
    let start = Instant::now();
    let at_b = collect_flows(guest_b, vec![(1, FRAMES), (2, free_frames)], start);
    let limited = {
        let guest_a = guest_a.clone();
        thread::spawn(move || {
            inject_all(
                &guest_a,
                0,
                (0..FRAMES).map(|seq| flow_frame(mac_b, mac_a, 1, seq)),
            )
        })
    };
    inject_all(
        &guest_c,
        0,
        (0..free_frames).map(|seq| flow_frame(mac_b, mac_c, 2, seq)),
    );
    limited.join().unwrap();
    let (received, done) = at_b.join().unwrap();
    let (limited_took, free_took) = (done[0].unwrap(), done[1].unwrap());
    assert!(received.complete(1, FRAMES) && received.complete(2, free_frames));
    // Four times the frames, through the same worker queues and the same
    // egress port, done while the limited guest is still held back.
    assert!(
        limited_took >= Duration::from_millis(800),
        "{limited_took:?}"
    );
    assert!(
        free_took < limited_took / 2,
        "{free_took:?} vs {limited_took:?}"
    );
}

#[test]
fn guard_drops_are_counted_on_the_guest_port_and_set_live() {
    let switch = patient_switch(2);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    let id_a = switch
        .add_port(Arc::new(a), PortProfile::default())
        .unwrap();
    switch
        .add_port(Arc::new(b), PortProfile::default())
        .unwrap();
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));
    // flow_frame sends from 10.0.1.1; the guard allows 10.0.1.2 only.
    let security = PortSecurity::new()
        .allow_ipv4(Ipv4Addr::new(10, 0, 1, 2))
        .ip_source_guard(true);
    guest_a
        .try_inject(0, flow_frame(mac_b, mac_a, 0, 0))
        .unwrap();
    expect_one(&guest_b);
    switch
        .set_port_profile(id_a, PortProfile::default().security(security))
        .unwrap();
    // The profile takes effect with the workers' next table.
    let deadline = Instant::now() + Duration::from_secs(10);
    while switch
        .port_stats(id_a)
        .unwrap()
        .drops
        .get(DropReason::IpSourceNotAllowed)
        == 0
    {
        assert!(Instant::now() < deadline, "the guard never dropped");
        guest_a
            .try_inject(0, flow_frame(mac_b, mac_a, 0, 1))
            .unwrap();
        thread::sleep(Duration::from_millis(20));
        while guest_b.try_collect().is_some() {}
    }
    thread::sleep(Duration::from_millis(50));
    while guest_b.try_collect().is_some() {}
    guest_a
        .try_inject(0, flow_frame(mac_b, mac_a, 0, 2))
        .unwrap();
    assert!(guest_b
        .collect_timeout(Duration::from_millis(300))
        .is_none());
}

#[test]
fn bytes_sent_toward_a_limited_port_count_what_it_got() {
    // B takes 40 frames, then a frame a second: most of a 200-frame
    // stream toward it is dropped at its egress. C's limit never binds:
    // every batch toward it is charged whole, and its summed length is
    // what the byte counter counts.
    let switch = patient_switch(1);
    let config = |name: &str| MemoryPortConfig::new(name).queue_len(512);
    let (a, guest_a) = memory_port(config("a"));
    let (b, guest_b) = memory_port(config("b"));
    let (c, guest_c) = memory_port(config("c"));
    let to_port = |limit| PortProfile::default().limits(PortLimits::new().to_port(limit));
    let id_a = switch
        .add_port(Arc::new(a), PortProfile::default())
        .unwrap();
    let binding = RateLimit::none().frames(Bucket::new(1, 40));
    let id_b = switch.add_port(Arc::new(b), to_port(binding)).unwrap();
    let free = RateLimit::none().frames(Bucket::per_second(1_000_000_000));
    let id_c = switch.add_port(Arc::new(c), to_port(free)).unwrap();
    let (mac_a, mac_b, mac_c) = (mac(1, 1), mac(2, 1), mac(3, 1));
    for (mac, guest) in [(mac_b, &guest_b), (mac_c, &guest_c)] {
        guest.try_inject(0, hello(mac)).unwrap();
        expect_one(&guest_a);
    }
    // Each hello flooded to the other port too; once both are counted
    // there, the stream starts.
    expect_one(&guest_b);
    expect_one(&guest_c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while [id_b, id_c].map(|id| switch.port_stats(id).unwrap().tx_frames) != [1, 1] {
        assert!(Instant::now() < deadline, "the hellos were never counted");
        thread::sleep(Duration::from_millis(1));
    }
    let before = |id| switch.port_stats(id).unwrap();
    let (before_b, before_c) = (before(id_b), before(id_c));
    let frames = (0..200).flat_map(|seq| {
        [
            flow_frame(mac_b, mac_a, 0, seq),
            flow_frame(mac_c, mac_a, 1, seq),
        ]
    });
    inject_all(&guest_a, 0, frames);
    let deadline = Instant::now() + Duration::from_secs(10);
    // What a port sent and dropped since the hellos.
    let delta = |id, before: &vswitch::PortStats| {
        let stats = switch.port_stats(id).unwrap();
        let limited = |stats: &vswitch::PortStats| stats.drops.get(DropReason::RateLimited);
        (
            stats.tx_frames - before.tx_frames,
            stats.tx_bytes - before.tx_bytes,
            limited(&stats) - limited(before),
        )
    };
    let settled = |id, before| {
        let (sent, _, dropped) = delta(id, before);
        sent + dropped >= 200
    };
    while !(settled(id_b, &before_b) && settled(id_c, &before_c)) {
        assert!(Instant::now() < deadline, "the frames never settled");
        thread::sleep(Duration::from_millis(10));
    }
    let ports = [
        (id_b, &before_b, &guest_b, 39..=198),
        (id_c, &before_c, &guest_c, 200..=200),
    ];
    for (id, before, guest, expected) in ports {
        let mut got = Vec::new();
        guest.drain(&mut got);
        let (sent, bytes, dropped) = delta(id, before);
        let n = got.len() as u64;
        assert!(expected.contains(&n), "{id}: {n} frames");
        assert_eq!((sent, dropped), (n, 200 - n), "{id}");
        let len: usize = got.iter().map(|packet| packet.data.len()).sum();
        assert_eq!(bytes, len as u64, "{id}");
    }
    assert_eq!(switch.port_stats(id_a).unwrap().rx_frames, 400);
}
