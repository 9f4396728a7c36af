//! The device side of a queue pair against a mock guest driver, and the
//! port's negotiation.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vswitch_offload::Packet;

use virtio_queue::QueueT;

use super::queue::{drain_tx, drain_tx_lending, fill_rx};
use super::*;
use crate::guest::mock::DriverQueue;
use crate::guest::{CondvarNotifier, GuestPortConfig};

const SIZE: u16 = 16;
const HDR: usize = 12;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn driver(mem: &GuestMemoryMmap) -> DriverQueue<'_, GuestMemoryMmap> {
    DriverQueue::new(mem, GuestAddress(0), SIZE, GuestAddress(0x1_0000), 0x8_0000)
}

/// A guest port as the backend builds it for a guest that acknowledged
/// `acked` (ring bits aside).
fn guest(acked: Features, queue_len: usize) -> (GuestPort, Arc<CondvarNotifier>) {
    let negotiated = negotiate(1, acked.bits()).unwrap();
    let notifier = Arc::new(CondvarNotifier::new());
    let port = GuestPort::new(
        GuestPortConfig::new("vm").queue_len(queue_len),
        negotiated,
        notifier.clone(),
    );
    (port, notifier)
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![tag; len];
    frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    frame
}

#[test]
fn transmitted_chains_reach_the_switch_and_return_in_one_batch() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    let heads: Vec<u16> = (0..3)
        .map(|i| drv.post_readable(&[&[0u8; HDR], &frame(i, 60)]))
        .collect();
    let mut scratch = Vec::new();
    let done = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut scratch,
    )
    .unwrap();
    assert_eq!((done.chains, done.frames, done.more), (3, 3, false));
    assert!(done.signal, "no suppression asked: the guest is signalled");
    let used = drv.take_used();
    assert_eq!(used, heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>());
    let mut batch = Vec::new();
    assert_eq!(port.receive(0, &mut batch, 16).unwrap(), 3);
    for (i, packet) in batch.iter().enumerate() {
        assert_eq!(&packet.data[..], &frame(i as u8, 60)[..]);
    }
}

#[test]
fn a_budget_leaves_the_rest_for_the_next_call() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    for i in 0..5 {
        drv.post_readable(&[&[0u8; HDR], &frame(i, 60)]);
    }
    let mut scratch = Vec::new();
    let first = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        2,
        &mut scratch,
    )
    .unwrap();
    assert_eq!((first.frames, first.more), (2, true));
    let rest = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut scratch,
    )
    .unwrap();
    assert_eq!((rest.frames, rest.more), (3, false));
}

#[test]
fn a_full_switch_queue_holds_the_guest_back_without_loss() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, notifier) = guest(Features::VERSION_1, 2);
    for i in 0..5 {
        drv.post_readable(&[&[0u8; HDR], &frame(i, 60)]);
    }
    let mut scratch = Vec::new();
    let q = port.queue(0).unwrap();
    let done = drain_tx(1, &mut queue, &&mem, q, 256, &mut scratch).unwrap();
    assert_eq!(done.frames, 2, "only what the switch queue holds");
    assert_eq!(
        drv.take_used().len(),
        2,
        "the other chains stay the guest's"
    );
    let mut batch = Vec::new();
    assert_eq!(port.receive(0, &mut batch, 16).unwrap(), 2);
    assert!(
        notifier.wait_timeout(Duration::ZERO),
        "taking frames from a full queue wakes the device side"
    );
    let mut total = 2;
    while total < 5 {
        total += drain_tx(1, &mut queue, &&mem, q, 256, &mut scratch)
            .unwrap()
            .frames;
        port.receive(0, &mut batch, 16).unwrap();
    }
    let tags: Vec<u8> = batch.iter().map(|p| p.data[20]).collect();
    assert_eq!(tags, vec![0, 1, 2, 3, 4], "every frame, in order");
}

#[test]
fn frames_for_the_guest_fill_its_buffers_and_unused_ones_go_back() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    port.send(0, Packet::plain(frame(7, 60))).unwrap();
    port.send(0, Packet::plain(frame(8, 60))).unwrap();
    let heads: Vec<u16> = (0..3).map(|_| drv.post_writable(&[2048])).collect();
    let mut used = Vec::new();
    let done = fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 256, &mut used).unwrap();
    assert_eq!((done.frames, done.chains, done.more), (2, 2, false));
    assert_eq!(
        drv.take_used(),
        vec![(heads[0], (HDR + 60) as u32), (heads[1], (HDR + 60) as u32)]
    );
    let written = drv.read_chain(heads[1], HDR + 60);
    assert_eq!(&written[HDR..], &frame(8, 60)[..]);
    // The third buffer was taken off the ring and put back: the next frame
    // lands in it.
    port.send(0, Packet::plain(frame(9, 60))).unwrap();
    fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 256, &mut used).unwrap();
    assert_eq!(drv.take_used(), vec![(heads[2], (HDR + 60) as u32)]);
}

#[test]
fn a_large_frame_spans_mergeable_buffers() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1 | Features::MRG_RXBUF, 64);
    port.send(0, Packet::plain(frame(3, 1400))).unwrap();
    for _ in 0..4 {
        drv.post_writable(&[512]);
    }
    let mut used = Vec::new();
    let done = fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 256, &mut used).unwrap();
    assert_eq!(
        (done.frames, done.chains),
        (1, 3),
        "1412 bytes in 512-byte buffers"
    );
    let entries = drv.take_used();
    let header = drv.read_chain(entries[0].0, HDR);
    assert_eq!(
        u16::from_le_bytes([header[10], header[11]]),
        3,
        "num_buffers"
    );
    assert_eq!(
        entries.iter().map(|e| e.1).sum::<u32>() as usize,
        HDR + 1400
    );
}

#[test]
fn without_buffers_frames_wait_and_the_guest_is_asked_to_kick() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1 | Features::MRG_RXBUF, 64);
    port.send(0, Packet::plain(frame(3, 1400))).unwrap();
    drv.post_writable(&[512]);
    let mut used = Vec::new();
    let q = port.queue(0).unwrap();
    let done = fill_rx(0, &mut queue, &&mem, q, 256, &mut used).unwrap();
    assert_eq!((done.frames, done.chains, done.more), (0, 0, false));
    assert!(q.rx_pending(), "the frame is kept");
    // More buffers: the frame goes out, in the one put back and two new.
    drv.post_writable(&[512]);
    drv.post_writable(&[512]);
    let done = fill_rx(0, &mut queue, &&mem, q, 256, &mut used).unwrap();
    assert_eq!((done.frames, done.chains), (1, 3));
}

#[test]
fn with_event_idx_a_starved_fill_asks_for_the_kick_of_the_next_buffers() {
    // A driver with EVENT_IDX kicks only when its new entries pass the
    // device's avail_event: the fill that ran out of buffers must put it
    // at the entries still to come, not at the one it put back.
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    queue.set_event_idx(true);
    let (port, _) = guest(Features::VERSION_1 | Features::MRG_RXBUF, 64);
    port.send(0, Packet::plain(frame(3, 1400))).unwrap();
    drv.post_writable(&[512]);
    drv.post_writable(&[512]);
    let kicked_at = drv.avail_idx();
    let mut used = Vec::new();
    let q = port.queue(0).unwrap();
    let done = fill_rx(0, &mut queue, &&mem, q, 256, &mut used).unwrap();
    assert_eq!((done.frames, done.more), (0, false), "two buffers of three");
    drv.post_writable(&[512]);
    assert!(
        drv.needs_kick(kicked_at, true),
        "the buffer the frame waits for is kicked for"
    );
    let done = fill_rx(0, &mut queue, &&mem, q, 256, &mut used).unwrap();
    assert_eq!((done.frames, done.chains), (1, 3));
}

#[test]
fn an_available_index_a_queue_ahead_breaks_the_queue_not_the_port() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    drv.set_avail_idx(SIZE + 1);
    let mut scratch = Vec::new();
    let err = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut scratch,
    )
    .unwrap_err();
    assert_eq!(err.queue, 1);
    port.send(0, Packet::plain(frame(1, 60))).unwrap();
    let mut used = Vec::new();
    let mut rx_drv = DriverQueue::new(
        &mem,
        GuestAddress(0x9_0000),
        SIZE,
        GuestAddress(0xa_0000),
        0x1_0000,
    );
    let mut rx_queue = rx_drv.device_queue();
    rx_drv.post_writable(&[2048]);
    let done = fill_rx(
        0,
        &mut rx_queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut used,
    )
    .unwrap();
    assert_eq!(done.frames, 1, "the other ring keeps working");
}

#[test]
fn a_head_outside_the_descriptor_table_breaks_the_queue() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    drv.post_head(SIZE + 3);
    let mut scratch = Vec::new();
    assert!(drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut scratch
    )
    .is_err());
    assert_eq!(port.stats().tx_errors, 1, "the chain itself is counted too");
}

#[test]
fn a_chain_with_a_bad_descriptor_is_returned_empty_and_counted() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    let bad = drv.post(&[crate::guest::mock::Desc::readable(0xfff_0000, 100)]);
    let good = drv.post_readable(&[&[0u8; HDR], &frame(5, 60)]);
    let mut scratch = Vec::new();
    let done = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut scratch,
    )
    .unwrap();
    assert_eq!(done.chains, 2);
    assert_eq!(drv.take_used(), vec![(bad, 0), (good, 0)]);
    assert_eq!(port.stats().tx_errors, 1);
    assert_eq!(port.stats().tx_frames, 1);
}

#[test]
fn negotiation_adds_the_frontends_control_queue_for_mq() {
    let acked = Features::VERSION_1 | Features::MQ | Features::CSUM | Features::HOST_TSO4;
    let negotiated = negotiate(4, acked.bits() | (1 << 29) | (1 << 30)).unwrap();
    assert!(negotiated
        .features()
        .contains(Features::MQ | Features::CTRL_VQ));
    assert!(negotiate(1, (Features::VERSION_1 | Features::HOST_TSO4).bits()).is_err());
}

#[test]
fn the_port_declares_what_it_offers_and_refuses_frames_while_down() {
    let dir = std::env::temp_dir().join(format!("vhost-user-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("down.sock");
    let port = VhostUserPort::start(VhostUserConfig::new("down", &socket).queue_pairs(2)).unwrap();
    let caps = port.capabilities();
    assert_eq!((caps.rx_queues, caps.tx_queues), (2, 2));
    assert!(caps.egress.tso4 && caps.egress.tso6 && caps.egress.checksum);
    let err = port.send(1, Packet::plain(frame(1, 60))).unwrap_err();
    assert!(matches!(err, SendError::Disconnected { .. }));
    let mut batch = Vec::new();
    assert_eq!(port.receive(1, &mut batch, 8).unwrap(), 0);
    assert!(!port.report().connected);
    assert!(socket.exists());
    port.shutdown();
    assert!(!socket.exists(), "the socket is removed");
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn bad_configurations_are_refused_before_anything_opens() {
    let err = VhostUserPort::start(VhostUserConfig::new("x", "/nonexistent/x.sock").queue_pairs(9))
        .unwrap_err();
    assert!(err.to_string().contains("expected 1 to 8"), "{err}");
    let err =
        VhostUserPort::start(VhostUserConfig::new("x", "/nonexistent/dir/x.sock")).unwrap_err();
    assert!(err.to_string().contains("hint"), "{err}");
}

#[test]
fn after_the_guest_took_everything_the_next_frame_notifies_again() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, notifier) = guest(Features::VERSION_1, 64);
    for _ in 0..4 {
        drv.post_writable(&[2048]);
    }
    let mut used = Vec::new();
    for round in 0..3u8 {
        port.send(0, Packet::plain(frame(round, 60))).unwrap();
        assert!(
            notifier.wait_timeout(Duration::ZERO),
            "round {round}: the device side is woken"
        );
        let done = fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 256, &mut used).unwrap();
        assert_eq!(done.frames, 1, "round {round}");
    }
}

#[test]
fn a_drain_that_ends_at_its_budget_as_the_queue_empties_still_wakes_on_the_next_frame() {
    // A guest that only receives and never kicks (a polling driver, as
    // DPDK's virtio PMD under testpmd rxonly): the switch's notifier is
    // all that brings the device side back.
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, notifier) = guest(Features::VERSION_1, 64);
    for _ in 0..8 {
        drv.post_writable(&[2048]);
    }
    let mut used = Vec::new();
    for tag in 0..4 {
        port.send(0, Packet::plain(frame(tag, 60))).unwrap();
    }
    assert!(notifier.wait_timeout(Duration::ZERO));
    // The budget is spent on the last frame waiting: nothing more to do.
    let done = fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 4, &mut used).unwrap();
    assert_eq!((done.frames, done.more), (4, false));
    // A frame queued afterwards wakes the device side again.
    port.send(0, Packet::plain(frame(9, 60))).unwrap();
    assert!(
        notifier.wait_timeout(Duration::ZERO),
        "the notifier was left spent: the frame would wait for a kick that never comes"
    );
    let done = fill_rx(0, &mut queue, &&mem, port.queue(0).unwrap(), 4, &mut used).unwrap();
    assert_eq!(done.frames, 1);
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// A frontend that connects, asks for the features and goes away, again
/// and again: every connection's threads and descriptors go with it.
#[test]
fn connections_that_come_and_go_leave_no_descriptors_behind() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let dir = std::env::temp_dir().join(format!("vhost-user-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("fds.sock");
    let mut config = VhostUserConfig::new("fds", &socket).queue_pairs(2);
    config.reconnect_interval = Duration::from_millis(1);
    let port = VhostUserPort::start(config).unwrap();
    let get_features = [1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let connect_once = || {
        let mut frontend = UnixStream::connect(&socket).unwrap();
        frontend.write_all(&get_features).unwrap();
        let mut reply = [0u8; 20];
        frontend.read_exact(&mut reply).unwrap();
        assert_eq!(reply[0], 1, "a GET_FEATURES reply");
    };
    // The first connections settle what the process keeps open anyway.
    for _ in 0..3 {
        connect_once();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds();
    for _ in 0..40 {
        connect_once();
    }
    // Each connection's teardown runs on the port's thread.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_fds() > before + 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = open_fds();
    assert!(
        after <= before + 4,
        "{before} descriptors open before 40 connections, {after} after"
    );
    assert!(port.report().connections >= 43);
    port.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_receive_chain_goes_back_empty_and_the_frame_takes_the_next_ones() {
    use crate::guest::mock::Desc;
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1 | Features::MRG_RXBUF, 64);
    port.send(0, Packet::plain(frame(3, 1400))).unwrap();
    port.send(0, Packet::plain(frame(4, 60))).unwrap();
    let first = drv.post_writable(&[512]);
    // Device-readable: the guest got it wrong.
    let bad = drv.post(&[Desc::readable(0x2_0000, 512)]);
    let rest: Vec<u16> = (0..3).map(|_| drv.post_writable(&[512])).collect();
    let mut chains = Vec::new();
    let done = fill_rx(
        0,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut chains,
    )
    .unwrap();
    assert_eq!((done.frames, done.chains), (2, 5));
    assert!(chains.is_empty(), "no chain is kept past the call");
    assert_eq!(
        drv.take_used(),
        vec![
            (bad, 0),
            (first, 512),
            (rest[0], 512),
            (rest[1], (HDR + 1400 - 1024) as u32),
            (rest[2], (HDR + 60) as u32),
        ]
    );
    assert_eq!(port.stats().rx_bad_chains, 1);
    let written = drv.read_chain(rest[2], HDR + 60);
    assert_eq!(&written[HDR..], &frame(4, 60)[..]);
}

/// A guest that breaks its transmit ring and stays attached: the port's
/// report says which queue and why while the guest is there, and the
/// receive ring of the same pair keeps working.
#[test]
fn a_queue_the_attached_guest_broke_is_in_the_report() {
    use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
    use virtio_queue::QueueT;
    use vm_memory::GuestMemoryAtomic;

    let dir = std::env::temp_dir().join(format!("vhost-user-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = VhostUserPort::start(VhostUserConfig::new("vm", dir.join("vm.sock"))).unwrap();
    let shared = port.shared.clone();
    let backend = backend::NetBackend::new(shared).unwrap();
    // As the handler does it for a frontend that set up one pair.
    backend.acked_features((Features::VERSION_1 | Features::MRG_RXBUF).bits());
    let mem = memory();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    backend.update_memory(atomic.clone()).unwrap();
    let mut rx_drv = DriverQueue::new(
        &mem,
        GuestAddress(0x9_0000),
        SIZE,
        GuestAddress(0xa_0000),
        0x1_0000,
    );
    let mut tx_drv = driver(&mem);
    let vrings: Vec<VringRwLock<_>> = [&rx_drv, &tx_drv]
        .iter()
        .map(|drv| {
            let ring = drv.device_queue();
            let vring = VringRwLock::new(atomic.clone(), SIZE).unwrap();
            vring
                .set_queue_info(ring.desc_table(), ring.avail_ring(), ring.used_ring())
                .unwrap();
            vring.set_queue_size(SIZE);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vring
        })
        .collect();
    let before = port.report();
    assert!(before.connected);
    assert_eq!((before.broken_queues, before.broken_now.len()), (0, 0));

    // The guest claims more chains than its ring holds, and kicks.
    tx_drv.set_avail_idx(SIZE + 1);
    backend
        .handle_event(1, vmm_sys_util::epoll::EventSet::IN, &vrings, 0)
        .unwrap();
    let report = port.report();
    assert!(report.connected, "the guest stays attached");
    assert_eq!(report.broken_now, vec![1]);
    assert_eq!(report.broken_queues, 1);
    let error = report.last_error.unwrap();
    assert!(error.starts_with("virtqueue 1 is broken"), "{error}");

    // The broken ring is left alone, the other one is served.
    port.send(0, Packet::plain(frame(1, 60))).unwrap();
    let head = rx_drv.post_writable(&[2048]);
    backend
        .handle_event(1, vmm_sys_util::epoll::EventSet::IN, &vrings, 0)
        .unwrap();
    assert_eq!(rx_drv.take_used(), vec![(head, (HDR + 60) as u32)]);
    assert_eq!(port.report().broken_queues, 1, "counted once");

    // A device reset serves every ring again; the count stays.
    backend.reset_device();
    let after = port.report();
    assert_eq!((after.broken_queues, after.broken_now.len()), (1, 0));
    port.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Posts `count` small frames on the transmit ring, drains them into the
/// port and takes them out of it again; returns what the drain did.
fn transmit_round(
    drv: &mut DriverQueue<'_, GuestMemoryMmap>,
    queue: &mut virtio_queue::Queue,
    port: &GuestPort,
    count: u8,
) -> super::queue::Drained {
    for i in 0..count {
        drv.post_readable(&[&[0u8; HDR], &frame(i, 60)]);
    }
    let mem = drv.memory();
    let done = drain_tx(1, queue, &mem, port.queue(0).unwrap(), 256, &mut Vec::new()).unwrap();
    port.receive(0, &mut Vec::new(), 256).unwrap();
    done
}

#[test]
fn the_used_event_index_decides_the_signal_for_a_whole_batch() {
    use virtio_queue::QueueT;
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    queue.set_event_idx(true);
    let (port, _) = guest(Features::VERSION_1, 64);
    // Used entries 0..3: the driver asked for a signal after entry 1.
    drv.set_used_event(1);
    let done = transmit_round(&mut drv, &mut queue, &port, 3);
    assert_eq!((done.chains, done.signal), (3, true));
    // Entries 3..6, the driver waits for entry 10: no signal.
    drv.set_used_event(10);
    assert!(!transmit_round(&mut drv, &mut queue, &port, 3).signal);
    // Entries 6..9 pass entry 7.
    drv.set_used_event(7);
    assert!(transmit_round(&mut drv, &mut queue, &port, 3).signal);
    // Nothing returned, nothing to signal.
    drv.set_used_event(9);
    assert!(!transmit_round(&mut drv, &mut queue, &port, 0).signal);
    assert_eq!(drv.take_used().len(), 9, "every chain came back");
}

#[test]
fn the_used_event_test_holds_across_the_index_wrap() {
    use crate::guest::needs_event;
    // Entries 65534, 65535, 0, 1 published at once.
    assert!(needs_event(65534, 2, 65534));
    assert!(needs_event(65535, 2, 65534));
    assert!(needs_event(1, 2, 65534));
    assert!(
        !needs_event(2, 2, 65534),
        "the next entry is not passed yet"
    );
    assert!(!needs_event(65533, 2, 65534), "passed before this batch");
    assert!(!needs_event(7, 7, 7), "an empty batch passes nothing");
}

#[test]
fn a_driver_that_suppresses_interrupts_is_not_signalled() {
    let mem = memory();
    let mut drv = driver(&mem);
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    drv.suppress_interrupts(true);
    let done = transmit_round(&mut drv, &mut queue, &port, 2);
    assert_eq!((done.chains, done.signal), (2, false));
    assert_eq!(
        drv.take_used().len(),
        2,
        "the chains come back all the same"
    );
    drv.suppress_interrupts(false);
    assert!(transmit_round(&mut drv, &mut queue, &port, 2).signal);
}

#[test]
fn a_used_ring_across_two_memory_regions_is_written_entry_by_entry() {
    // The used ring of a 16-entry queue at 0x1000 - 300 starts 4 bytes
    // before the second region and ends in it.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1000),
        (GuestAddress(0x1000), 1 << 20),
    ])
    .unwrap();
    let mut drv = DriverQueue::new(
        &mem,
        GuestAddress(0x1000 - 300),
        SIZE,
        GuestAddress(0x1_0000),
        0x8_0000,
    );
    let mut queue = drv.device_queue();
    let (port, _) = guest(Features::VERSION_1, 64);
    let heads: Vec<u16> = (0..3)
        .map(|i| drv.post_readable(&[&[0u8; HDR], &frame(i, 60)]))
        .collect();
    let done = drain_tx(
        1,
        &mut queue,
        &&mem,
        port.queue(0).unwrap(),
        256,
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!((done.chains, done.signal), (3, true));
    assert_eq!(
        drv.take_used(),
        heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>()
    );
}

/// A TCP/IPv4 TSO frame of `payload` bytes as a Linux driver posts it:
/// virtio-net header and headers in one descriptor, the payload in pages.
fn tso_chain(payload: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    use vswitch_offload::testing::{tcp_flags, FrameBuilder};
    use vswitch_offload::virtio::{HdrFormat, FLAG_NEEDS_CSUM, GSO_TCPV4};
    let frame = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
        .ports(1000, 80)
        .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
        .payload_with(payload, |i| (i % 251) as u8)
        .partial_checksum()
        .build();
    let hdr = vswitch_offload::VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    let mut raw = [0u8; HDR];
    hdr.emit(&mut raw, HdrFormat::V1).unwrap();
    let mut head = raw.to_vec();
    head.extend_from_slice(&frame[..54]);
    let mut pieces = vec![head];
    pieces.extend(frame[54..].chunks(4096).map(<[u8]>::to_vec));
    (frame, pieces)
}

/// What a guest that sends and takes TSO4 frames, with mergeable receive
/// buffers, acknowledges.
fn tso_both_ways() -> Features {
    Features::VERSION_1
        | Features::CSUM
        | Features::GUEST_CSUM
        | Features::HOST_TSO4
        | Features::GUEST_TSO4
        | Features::MRG_RXBUF
}

#[test]
fn a_lent_chain_goes_back_to_the_sender_once_the_receiver_has_the_bytes() {
    use crate::guest::LentMemory;
    let tso = tso_both_ways();
    // The sender's memory is shared, as the backend's snapshots are.
    let a_mem = Arc::new(memory());
    let lent: Arc<dyn LentMemory> = Arc::new(a_mem.clone());
    let mut a_drv = driver(&a_mem);
    let mut a_tx = a_drv.device_queue();
    let (a, a_notifier) = guest(tso, 64);
    let b_mem = memory();
    let mut b_drv = driver(&b_mem);
    let mut b_rx = b_drv.device_queue();
    let (b, _) = guest(tso, 64);

    let small = a_drv.post_readable(&[&[0u8; HDR], &frame(7, 60)]);
    let (frame, pieces) = tso_chain(40_000);
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let large = a_drv.post_readable(&pieces);
    let mut heads = Vec::new();
    let a_queue = a.queue(0).unwrap();
    let done = drain_tx_lending(1, &mut a_tx, &&*a_mem, &lent, a_queue, 256, &mut heads).unwrap();
    assert_eq!((done.frames, done.chains), (2, 1));
    assert_eq!(
        a_drv.take_used(),
        vec![(small, 0)],
        "the small frame was copied and its chain returned; the large one is lent"
    );
    assert_eq!((a.stats().tx_lent, a_queue.lent_now()), (1, 1));

    let mut batch = Vec::new();
    assert_eq!(a.receive(0, &mut batch, 8).unwrap(), 2);
    for packet in batch {
        b.send(0, packet).unwrap();
    }
    // Still lent while the frame waits in the receiver's queue.
    let again = drain_tx_lending(1, &mut a_tx, &&*a_mem, &lent, a_queue, 256, &mut heads).unwrap();
    assert_eq!((again.frames, again.chains), (0, 0));
    assert!(a_drv.take_used().is_empty());

    let rx_heads: Vec<u16> = (0..16).map(|_| b_drv.post_writable(&[4096])).collect();
    let mut chains = Vec::new();
    let filled = fill_rx(0, &mut b_rx, &&b_mem, b.queue(0).unwrap(), 256, &mut chains).unwrap();
    assert_eq!(filled.frames, 2);
    let used = b_drv.take_used();
    let written: Vec<u8> = used[1..]
        .iter()
        .flat_map(|&(head, len)| b_drv.read_chain(head, len as usize))
        .collect();
    assert_eq!(used[1].0, rx_heads[1]);
    assert_eq!(
        &written[HDR..],
        &frame[..],
        "every byte, read out of A's buffers"
    );
    // The sender's device side is woken, and returns the chain on its next
    // pass, with a signal.
    assert!(a_notifier.wait_timeout(Duration::ZERO));
    let back = drain_tx_lending(1, &mut a_tx, &&*a_mem, &lent, a_queue, 256, &mut heads).unwrap();
    assert_eq!((back.frames, back.chains, back.signal), (0, 1, true));
    assert_eq!(a_drv.take_used(), vec![(large, 0)]);
    assert_eq!(a_queue.lent_now(), 0);
}

/// A sender's notifier that publishes the chains given back as soon as it
/// is called, as the backend's does from the thread that gives them back:
/// counts its calls and keeps the heads it took.
#[derive(Default)]
struct PublishAtOnce {
    port: std::sync::OnceLock<std::sync::Weak<GuestPort>>,
    calls: std::sync::atomic::AtomicUsize,
    published: std::sync::Mutex<Vec<u16>>,
}

impl crate::guest::Notifier for PublishAtOnce {
    fn notify(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(port) = self.port.get().and_then(std::sync::Weak::upgrade) {
            let mut published = self.published.lock().unwrap();
            port.queue(0).unwrap().take_returned(&mut published);
        }
    }
}

#[test]
fn one_fill_wakes_the_sender_once_for_every_chain_it_gives_back() {
    use crate::guest::LentMemory;
    use std::sync::atomic::Ordering::SeqCst;
    let tso = tso_both_ways();
    let a_mem = Arc::new(memory());
    let lent: Arc<dyn LentMemory> = Arc::new(a_mem.clone());
    let mut a_drv = driver(&a_mem);
    let mut a_tx = a_drv.device_queue();
    let notifier = Arc::new(PublishAtOnce::default());
    let a = Arc::new(GuestPort::new(
        GuestPortConfig::new("a").queue_len(64),
        negotiate(1, tso.bits()).unwrap(),
        notifier.clone(),
    ));
    notifier.port.set(Arc::downgrade(&a)).unwrap();
    let (b, _) = guest(tso, 64);
    let b_mem = memory();
    let mut b_drv = driver(&b_mem);
    let mut b_rx = b_drv.device_queue();

    let (frame, pieces) = tso_chain(17_000);
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let mut lent_heads: Vec<u16> = (0..2).map(|_| a_drv.post_readable(&pieces)).collect();
    let mut heads = Vec::new();
    let a_queue = a.queue(0).unwrap();
    let done = drain_tx_lending(1, &mut a_tx, &&*a_mem, &lent, a_queue, 256, &mut heads).unwrap();
    assert_eq!((done.frames, done.chains, a_queue.lent_now()), (2, 0, 2));
    let mut batch = Vec::new();
    assert_eq!(a.receive(0, &mut batch, 8).unwrap(), 2);
    b.send_batch(0, &mut batch).unwrap();

    for _ in 0..SIZE {
        b_drv.post_writable(&[4096]);
    }
    let before = notifier.calls.load(SeqCst);
    let mut chains = Vec::new();
    let filled = fill_rx(0, &mut b_rx, &&b_mem, b.queue(0).unwrap(), 256, &mut chains).unwrap();
    assert_eq!(filled.frames, 2);
    let per_frame = (HDR + frame.len()).div_ceil(4096);
    assert_eq!(b_drv.take_used().len(), 2 * per_frame);
    // Both chains came back in the one fill: one call publishes the two.
    assert_eq!(notifier.calls.load(SeqCst), before + 1);
    let mut published = notifier.published.lock().unwrap().clone();
    published.sort_unstable();
    lent_heads.sort_unstable();
    assert_eq!(published, lent_heads);
    assert_eq!(a_queue.lent_now(), 0);
}

#[test]
fn the_receive_waker_is_woken_by_every_guest_that_attaches() {
    let dir = std::env::temp_dir().join(format!("vhost-user-waker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = VhostUserPort::start(VhostUserConfig::new("vm", dir.join("vm.sock"))).unwrap();
    let (count, waker) = crate::wake::CountWakes::new();
    let wakes = || count.count();
    // Set before any guest is there, as a switch does when the port is
    // added.
    assert!(port.set_rx_waker(0, waker.clone()));
    assert!(
        !port.set_rx_waker(1, waker),
        "one queue pair offered: no receive queue 1"
    );
    for connection in 1..=2 {
        let (guest, _) = guest(Features::VERSION_1, 64);
        let guest = Arc::new(guest);
        port.shared.attach(guest.clone(), Features::VERSION_1);
        let mem = memory();
        let mut drv = driver(&mem);
        let mut queue = drv.device_queue();
        transmit_round(&mut drv, &mut queue, &guest, 3);
        assert_eq!(
            wakes(),
            connection,
            "connection {connection}: the first frame into the empty queue wakes, once"
        );
        port.shared.detach();
    }
    port.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lent_frames_stay_counted_after_their_guest_is_gone() {
    use crate::guest::LentMemory;
    let dir = std::env::temp_dir().join(format!("vhost-user-lent-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = VhostUserPort::start(VhostUserConfig::new("vm", dir.join("vm.sock"))).unwrap();
    let tso = Features::VERSION_1 | Features::CSUM | Features::HOST_TSO4;
    for connection in 1..=2u64 {
        let (guest, _) = guest(tso, 64);
        let guest = Arc::new(guest);
        port.shared.attach(guest.clone(), tso);
        let mem = Arc::new(memory());
        let lent: Arc<dyn LentMemory> = Arc::new(mem.clone());
        let mut drv = driver(&mem);
        let mut queue = drv.device_queue();
        let (_, pieces) = tso_chain(40_000);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        drv.post_readable(&pieces);
        let queue_pair = guest.queue(0).unwrap();
        drain_tx_lending(
            1,
            &mut queue,
            &&*mem,
            &lent,
            queue_pair,
            256,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(guest.stats().tx_lent, 1);
        // The guest goes before the switch took the frame: the port
        // discards it, and its counters join those of the guests before.
        port.shared.detach();
        let summed = port.report().guest;
        assert_eq!(
            (summed.tx_frames, summed.tx_lent, summed.tx_dropped),
            (connection, connection, connection),
            "connection {connection}: {summed:?}"
        );
    }
    port.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
