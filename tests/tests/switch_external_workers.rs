//! The switch driven on the caller's threads: `Switch::start_external`
//! hands out the workers, and the test polls them itself, so the first
//! test is deterministic (one thread, no sleeps), the second runs the
//! workers on threads the test owns while a port is removed, and the third
//! has a worker sleep in `wait` until a guest port's frames wake it.

mod switch_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use switch_support::*;
use vswitch::{Poll, PortProfile, Switch, SwitchConfig, SwitchWorker, VlanId};
use vswitch_ports::{memory_port, MemoryPortConfig};

/// Polls every worker once per round until a round does nothing.
fn poll_until_idle(workers: &mut [SwitchWorker]) -> usize {
    let mut total = 0;
    loop {
        let mut round = 0;
        for worker in workers.iter_mut() {
            if let Poll::Worked { frames } = worker.poll_once() {
                round += frames;
            }
        }
        if round == 0 {
            return total;
        }
        total += round;
    }
}

#[test]
fn workers_polled_by_the_caller_forward_every_frame_in_order() {
    let (switch, mut workers) = Switch::start_external(SwitchConfig::default().workers(2));
    assert_eq!(workers.len(), 2);
    assert_eq!(
        workers.iter().map(SwitchWorker::index).collect::<Vec<_>>(),
        [0, 1]
    );
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queue_len(4096));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queue_len(4096));
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(Arc::new(a), profile.clone()).unwrap();
    switch.add_port(Arc::new(b), profile).unwrap();
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));

    // B announces itself so that A's frames are unicast to it.
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    poll_until_idle(&mut workers);
    while guest_a.try_collect().is_some() {}

    // 16 flows, 50 frames each, interleaved; nothing moves until polled.
    for seq in 0..50 {
        for flow in 0..16 {
            guest_a
                .try_inject(0, flow_frame(mac_b, mac_a, flow, seq))
                .unwrap();
        }
    }
    assert!(guest_b.try_collect().is_none());
    // Each frame is taken once from A's queue, and once more from an inbox
    // when its flow belongs to the other worker.
    let handled = poll_until_idle(&mut workers);
    assert!((16 * 50..=2 * 16 * 50).contains(&handled), "{handled}");

    let mut next = HashMap::<u16, u32>::new();
    let mut got = 0;
    while let Some(packet) = guest_b.try_collect() {
        let (flow, seq) = flow_of(&packet.data).expect("a flow frame");
        let expected = next.entry(flow).or_insert(0);
        assert_eq!(seq, *expected, "flow {flow} reordered");
        *expected += 1;
        got += 1;
    }
    assert_eq!(got, 16 * 50);
    // Both workers forwarded: the flows were spread by their hash, and
    // every frame (the hello too) was forwarded exactly once.
    let stats = switch.stats();
    assert!(stats.workers.iter().all(|w| w.frames > 0), "{stats:?}");
    let forwarded: u64 = stats.workers.iter().map(|w| w.frames).sum();
    assert_eq!(forwarded, 16 * 50 + 1);
    let handed: u64 = stats.workers.iter().map(|w| w.handed_off).sum();
    assert_eq!(handled as u64, 16 * 50 + handed);

    // Stopping: each worker finishes the frames it was handed and then
    // says so; a worker stops only once every worker has stopped polling
    // ports, so they are polled in turns.
    switch.stop();
    let mut rounds = 0;
    loop {
        let polls: Vec<Poll> = workers.iter_mut().map(SwitchWorker::poll_once).collect();
        if polls.iter().all(|poll| *poll == Poll::Stopped) {
            break;
        }
        rounds += 1;
        assert!(rounds < 100, "the workers do not stop");
    }
    let stats = switch.shutdown();
    let dropped: u64 = stats.ports.iter().map(|p| p.stats.drops.total()).sum();
    assert_eq!(dropped, 0);
}

#[test]
fn a_port_removed_while_the_callers_threads_run_the_workers() {
    let (switch, workers) = Switch::start_external(SwitchConfig::default().workers(2));
    let threads: Vec<_> = workers
        .into_iter()
        .map(|worker| thread::spawn(move || worker.run()))
        .collect();
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    let (c, _guest_c) = memory_port(MemoryPortConfig::new("c"));
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(Arc::new(a), profile.clone()).unwrap();
    switch.add_port(Arc::new(b), profile.clone()).unwrap();
    let id_c = switch.add_port(Arc::new(c), profile).unwrap();

    guest_a.try_inject(0, hello(mac(1, 1))).unwrap();
    assert!(guest_b
        .collect_timeout(std::time::Duration::from_secs(10))
        .is_some());
    // Removing a port needs every worker to take the new table: they run
    // on the test's threads, and the call returns once they have.
    let report = switch.remove_port(id_c).unwrap();
    assert_eq!(report.name, "c");
    guest_a.try_inject(0, hello(mac(1, 2))).unwrap();
    assert!(guest_b
        .collect_timeout(std::time::Duration::from_secs(10))
        .is_some());

    // Shutdown stops the workers on the caller's threads too.
    let stats = switch.shutdown();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(stats.ports.len(), 2);
}

#[test]
fn frames_from_a_guest_port_end_a_workers_wait() {
    use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
    use vswitch_ports::vhost_user::negotiate;

    let (switch, mut workers) = Switch::start_external(SwitchConfig::default().workers(1));
    let worker = workers.pop().unwrap();
    let negotiated = negotiate(1, vswitch_ports::features::Features::VERSION_1.bits()).unwrap();
    let guest = Arc::new(GuestPort::new(
        GuestPortConfig::new("guest"),
        negotiated,
        Arc::new(CondvarNotifier::new()),
    ));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(guest.clone(), profile.clone()).unwrap();
    switch.add_port(Arc::new(b), profile).unwrap();
    // The worker sleeps a minute whenever it runs out of work: only a
    // wake brings a frame through in time.
    let runner = sleepy_worker(worker);
    // One frame at a time, each through before the next is sent, so that
    // each may find the worker asleep, about to sleep, or still polling:
    // a wake lost on the way would hold a frame up for the minute.
    let (mac_guest, mac_b) = (mac(1, 1), mac(2, 1));
    for seq in 0..200 {
        let frame = flow_frame(mac_b, mac_guest, 1, seq);
        let mut chain = vec![0u8; 12];
        chain.extend_from_slice(&frame.data);
        guest.transmit_bytes(chain.into()).unwrap();
        let got = guest_b
            .collect_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("frame {seq} still waits: the wake was lost"));
        assert_eq!(flow_of(&got.data), Some((1, seq)));
    }
    switch.stop();
    let waits = runner.join().unwrap();
    assert!(waits > 0, "the worker never slept");
    let stats = switch.shutdown();
    let dropped: u64 = stats.ports.iter().map(|p| p.stats.drops.total()).sum();
    assert_eq!(dropped, 0);
}
