//! Ports added and removed while traffic runs: the other ports lose
//! nothing, a removed port's addresses are forgotten, and every frame that
//! was heading to it is accounted for (sent, counted as dropped, or flooded
//! once its address was forgotten).

mod switch_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switch_support::*;
use vswitch::{DropReason, PortProfile, SwitchConfig, VlanId};
use vswitch_offload::Packet;
use vswitch_ports::{memory_port, MemoryPortConfig, Port, PortCapabilities, PortError, SendError};

const FLOWS: u16 = 16;
/// The flow number of frames addressed to the hot-plugged port.
const TO_HOTPLUG: u16 = 999;

#[test]
fn hot_add_and_remove_under_traffic_lose_nothing_elsewhere() {
    let switch = patient_switch(4);
    let config = |name: &str| MemoryPortConfig::new(name).queues(2, 2).queue_len(256);
    let (a, guest_a) = memory_port(config("a"));
    let (b, guest_b) = memory_port(config("b"));
    let profile = PortProfile::access(VlanId::DEFAULT);
    let id_a = switch.add_port(Arc::new(a), profile.clone()).unwrap();
    let id_b = switch.add_port(Arc::new(b), profile.clone()).unwrap();
    let (guest_a, guest_b) = (Arc::new(guest_a), Arc::new(guest_b));
    let (mac_a, mac_b, mac_c) = (mac(1, 1), mac(2, 1), mac(3, 1));
    guest_a.try_inject(0, hello(mac_a)).unwrap();
    expect_one(&guest_b);
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);

    let running = Arc::new(AtomicBool::new(true));
    // a sends FLOWS flows to b and one flow to the hot-plugged port's
    // address; b sends FLOWS flows to a. Each returns how many rounds ran.
    let sender = |guest: Arc<vswitch_ports::MemoryEndpoint>, dst, src, to_c: bool| {
        let running = running.clone();
        thread::spawn(move || {
            let mut seq = 0u32;
            while running.load(Ordering::Relaxed) || seq < 200 {
                for flow in 0..FLOWS {
                    inject_all(
                        &guest,
                        usize::from(flow % 2),
                        [flow_frame(dst, src, flow, seq)],
                    );
                }
                if to_c {
                    inject_all(&guest, 0, [flow_frame(mac_c, src, TO_HOTPLUG, seq)]);
                }
                seq += 1;
            }
            seq
        })
    };
    let send_a = sender(guest_a.clone(), mac_b, mac_a, true);
    let send_b = sender(guest_b.clone(), mac_a, mac_b, false);
    let quiet = Duration::from_secs(1);
    let at_a = collector(guest_a.clone(), quiet, |_| false);
    let at_b = tracing_collector(guest_b.clone(), quiet, TO_HOTPLUG);

    let mut dropped_at_hotplug_ports = 0u64;
    let mut delivered_to_c = std::collections::BTreeSet::new();
    for round in 0..12 {
        let (c, guest_c) = memory_port(config(&format!("c{round}")));
        let id_c = switch.add_port(Arc::new(c), profile.clone()).unwrap();
        // The newcomer announces itself (the same address every round: it
        // must be learned afresh on each new port).
        guest_c.try_inject(1, hello(mac_c)).unwrap();
        let guest_c = Arc::new(guest_c);
        let at_c = late_collector(guest_c.clone(), Duration::from_millis(100), TO_HOTPLUG);
        thread::sleep(Duration::from_millis(30));
        // On a loaded machine the worker may not have polled the newcomer
        // yet: give it until the hello is taken in, so the round tests
        // removal under traffic rather than the scheduler.
        let taken_in = Instant::now() + Duration::from_secs(5);
        while switch.port_stats(id_c).is_some_and(|s| s.rx_frames == 0) && Instant::now() < taken_in
        {
            thread::sleep(Duration::from_millis(5));
        }
        let report = switch.remove_port(id_c).unwrap();
        assert_eq!(switch.learned_on(id_c), 0, "round {round}: addresses kept");
        assert!(switch.port_stats(id_c).is_none());
        assert_eq!(report.stats.rx_frames, 1);
        let drops = report.stats.drops;
        assert_eq!(
            drops.total(),
            drops.get(DropReason::EgressPortGone) + drops.get(DropReason::EgressQueueFull),
            "round {round}: {drops:?}"
        );
        let at_c = at_c.join().unwrap();
        assert_eq!(at_c.out_of_order, 0);
        // Everything switched to c reached c's queues, or was counted.
        assert_eq!(report.stats.tx_frames, at_c.flow_frames + at_c.other_frames);
        dropped_at_hotplug_ports += drops.total();
        delivered_to_c.extend(at_c.traced.iter().copied());
        assert!(matches!(
            switch.remove_port(id_c),
            Err(vswitch::SwitchError::NoSuchPort { .. })
        ));
    }
    running.store(false, Ordering::Relaxed);
    let rounds_a = send_a.join().unwrap();
    let rounds_b = send_b.join().unwrap();
    let (at_a, at_b) = (at_a.join().unwrap(), at_b.join().unwrap());

    // Nothing lost or reordered between a and b.
    assert_eq!(at_a.out_of_order + at_a.gaps, 0);
    assert!((0..FLOWS).all(|f| at_a.complete(f, rounds_b)));
    assert_eq!(at_a.flow_frames, u64::from(FLOWS) * u64::from(rounds_b));
    assert_eq!(at_b.out_of_order, 0);
    assert!((0..FLOWS).all(|f| at_b.complete(f, rounds_a)));
    // Frames to c's address went to a hot-plugged port, or were flooded
    // to b while no port had that address (unknown unicast reaches both
    // before c's hello is learned); any frame that reached neither was
    // counted as dropped at a hot-plugged port.
    let mut delivered = delivered_to_c;
    delivered.extend(at_b.traced.iter().copied());
    assert!(delivered.iter().all(|seq| *seq < rounds_a));
    let missing = u64::from(rounds_a) - delivered.len() as u64;
    assert!(
        missing <= dropped_at_hotplug_ports,
        "{missing} frames to c vanished, {dropped_at_hotplug_ports} counted"
    );

    let stats = switch.shutdown();
    assert_eq!(stats.ports.len(), 2);
    for port in &stats.ports {
        assert_eq!(
            port.stats.drops.total(),
            0,
            "{}: {:?}",
            port.name,
            port.stats.drops
        );
    }
    let port_a = *stats.port(id_a).unwrap();
    let port_b = *stats.port(id_b).unwrap();
    assert_eq!(
        port_a.rx_frames,
        1 + u64::from(rounds_a) * u64::from(FLOWS + 1)
    );
    assert_eq!(port_b.rx_frames, 1 + u64::from(rounds_b) * u64::from(FLOWS));
}

/// One queue each way, no offloads: the test ports below.
fn one_queue() -> PortCapabilities {
    PortCapabilities {
        egress: vswitch_offload::EgressCapabilities::none(1500),
        rx_queues: 1,
        tx_queues: 1,
    }
}

/// A port whose transmit queue is always full, and which reports the
/// first send attempt.
struct StuckPort {
    attempted: std::sync::mpsc::SyncSender<()>,
}

impl Port for StuckPort {
    fn name(&self) -> &str {
        "stuck"
    }
    fn capabilities(&self) -> PortCapabilities {
        one_queue()
    }
    fn receive(&self, _: usize, _: &mut Vec<Packet>, _: usize) -> Result<usize, PortError> {
        Ok(0)
    }
    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let _ = self.attempted.try_send(());
        Err(SendError::Full {
            queue,
            capacity: 0,
            packet,
        })
    }
}

#[test]
fn a_frame_in_flight_to_a_removed_port_is_counted_as_dropped() {
    let config = SwitchConfig {
        queue_full_wait: Duration::from_secs(20),
        ..SwitchConfig::default().workers(1)
    };
    let switch = vswitch::Switch::start(config).unwrap();
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
    let (attempted, first_attempt) = std::sync::mpsc::sync_channel(1);
    let profile = PortProfile::access(VlanId::DEFAULT);
    let id_a = switch.add_port(Arc::new(a), profile.clone()).unwrap();
    let id_stuck = switch
        .add_port(Arc::new(StuckPort { attempted }), profile)
        .unwrap();
    guest_a.try_inject(0, hello(mac(1, 1))).unwrap();
    // The worker is now retrying the stuck port.
    first_attempt.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = std::time::Instant::now();
    let report = switch.remove_port(id_stuck).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "removal waited for the queue"
    );
    assert_eq!(report.stats.drops.get(DropReason::EgressPortGone), 1);
    assert_eq!(report.stats.drops.total(), 1);
    assert_eq!(report.stats.tx_frames, 0);
    let stats = switch.shutdown();
    assert_eq!(stats.ports.len(), 1);
    assert_eq!(stats.ports[0].id, id_a);
    assert_eq!(stats.workers[0].drops.get(DropReason::EgressPortGone), 1);
}

/// A port that, once armed, holds up the worker's next poll of it until
/// released, and reports that the worker is held.
struct HoldingPort {
    armed: AtomicBool,
    held: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Port for HoldingPort {
    fn name(&self) -> &str {
        "holding"
    }
    fn capabilities(&self) -> PortCapabilities {
        one_queue()
    }
    fn receive(&self, _: usize, _: &mut Vec<Packet>, _: usize) -> Result<usize, PortError> {
        if self.armed.swap(false, Ordering::AcqRel) {
            let _ = self.held.try_send(());
            let release = self.release.lock().unwrap();
            let _ = release.recv_timeout(Duration::from_secs(10));
        }
        Ok(0)
    }
    fn send(&self, _: usize, _: Packet) -> Result<(), SendError> {
        Ok(())
    }
}

#[test]
fn a_port_added_while_a_worker_is_mid_round_gets_the_floods_that_follow() {
    // The worker is held in a round, polling the first port, on a table
    // without c. Once `add_port(c)` returns, b's hello goes in: the worker
    // must not poll b on the old table, or the hello misses c.
    let switch = vswitch::Switch::start(SwitchConfig::default().workers(1)).unwrap();
    let (held, worker_held) = std::sync::mpsc::sync_channel(1);
    let (release, released) = std::sync::mpsc::sync_channel(1);
    let holding = Arc::new(HoldingPort {
        armed: AtomicBool::new(false),
        held,
        release: std::sync::Mutex::new(released),
    });
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(holding.clone(), profile.clone()).unwrap();
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    switch.add_port(Arc::new(a), profile.clone()).unwrap();
    switch.add_port(Arc::new(b), profile.clone()).unwrap();
    // A frame through b shows the worker polls it; it floods to a.
    guest_b.try_inject(0, hello(mac(2, 1))).unwrap();
    expect_one(&guest_a);
    holding.armed.store(true, Ordering::Release);
    worker_held
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker polls the holding port");
    let (c, guest_c) = memory_port(MemoryPortConfig::new("c"));
    thread::scope(|scope| {
        let adder = scope.spawn(|| {
            switch.add_port(Arc::new(c), profile).unwrap();
            guest_b.try_inject(0, hello(mac(2, 1))).unwrap();
        });
        // Long enough for the hello to be in b's queue before the round
        // goes on, were `add_port` not to wait for it.
        thread::sleep(Duration::from_millis(100));
        release.send(()).unwrap();
        adder.join().unwrap();
    });
    let got = expect_one(&guest_c);
    assert_eq!(got.data[6..12], mac(2, 1).0);
    switch.shutdown();
}
