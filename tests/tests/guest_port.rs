//! Guest ports on the threaded switch: TSO frames from a guest with every
//! offload reach a guest without any as checked segments, a TSO frame with
//! ECN reaches a guest without GUEST_ECN as segments with CWR on the first
//! only and a guest with it whole, a guest turning
//! its receive offloads off and on again while frames are on their way gets
//! only what it accepts at each moment, and a pcap port around a guest port
//! records what crosses it. Every guest is real guest memory with
//! virtqueues in it; the device loops pop descriptor chains as a VMM does.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etherparse::{IpEcn, NetHeaders, PacketHeaders, TransportHeader};
use pcap_file::pcap::PcapReader;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::virtio::{HdrFormat, FLAG_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4};
use vswitch_offload::VirtioNetHdr;
use vswitch_ports::features::{Features, Negotiated};
use vswitch_ports::guest::mock::DriverQueue;
use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig, GuestQueue};
use vswitch_ports::pcap::PcapPort;
use vswitch_ports::Port;

const WAIT: Duration = Duration::from_secs(10);

fn all_offloads() -> Features {
    Features::VERSION_1
        | Features::CSUM
        | Features::GUEST_CSUM
        | Features::HOST_TSO4
        | Features::HOST_TSO6
        | Features::GUEST_TSO4
        | Features::GUEST_TSO6
        | Features::MRG_RXBUF
        | Features::CTRL_VQ
        | Features::CTRL_GUEST_OFFLOADS
}

#[derive(Clone, Copy)]
struct Addr {
    mac: [u8; 6],
    ip: [u8; 4],
}

fn addr(host: u8) -> Addr {
    Addr {
        mac: [2, 0, 0, 0, 0, host],
        ip: [10, 0, 0, host],
    }
}

struct Guest {
    port: Arc<GuestPort>,
    notifier: Arc<CondvarNotifier>,
}

/// [`all_offloads`] and ECN in both directions.
fn all_offloads_with_ecn() -> Features {
    all_offloads() | Features::HOST_ECN | Features::GUEST_ECN
}

fn guest_port(name: &str, acked: Features) -> (GuestPort, Arc<CondvarNotifier>) {
    let negotiated = Negotiated::new(all_offloads_with_ecn(), acked).unwrap();
    let notifier = Arc::new(CondvarNotifier::new());
    let port = GuestPort::new(
        GuestPortConfig::new(name).queue_len(4096),
        negotiated,
        notifier.clone(),
    );
    (port, notifier)
}

fn guest(name: &str, acked: Features) -> Guest {
    let (port, notifier) = guest_port(name, acked);
    Guest {
        port: Arc::new(port),
        notifier,
    }
}

fn switch() -> Switch {
    Switch::start(SwitchConfig {
        queue_full_wait: Duration::from_secs(2),
        ..SwitchConfig::default().workers(2)
    })
    .unwrap()
}

fn plug(switch: &Switch, port: Arc<dyn Port>) {
    switch
        .add_port(port, PortProfile::access(VlanId::DEFAULT))
        .unwrap();
}

/// A TCP/IPv4 ACK from `from` to `to` (port 40000 to 5201), sequence
/// number `seq`, with `payload`.
fn tcp(from: Addr, to: Addr, seq: u32, payload: &[u8]) -> FrameBuilder {
    FrameBuilder::tcp4(from.ip, to.ip)
        .macs(from.mac, to.mac)
        .ports(40000, 5201)
        .seq(seq)
        .tcp_flags(tcp_flags::ACK)
        .payload(payload)
}

/// A [`tcp`] frame with a partial TCP checksum.
fn tcp_frame(from: Addr, to: Addr, seq: u32, payload: &[u8]) -> Vec<u8> {
    tcp(from, to, seq, payload).partial_checksum().build()
}

fn tso_hdr(mss: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// Whether etherparse parses `frame` strictly as TCP/IPv4 and finds both
/// checksums complete and right.
fn complete_checksums(frame: &[u8]) -> bool {
    let Ok(headers) = PacketHeaders::from_ethernet_slice(frame) else {
        return false;
    };
    let payload = headers.payload.slice();
    match (headers.net, headers.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) => {
            ip.header_checksum == ip.calc_header_checksum()
                && tcp.calc_checksum_ipv4(&ip, payload).ok() == Some(tcp.checksum)
        }
        _ => false,
    }
}

/// Guest memory: 8 MiB, rings at the start, buffers after 1 MiB.
fn guest_ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
}

const QUEUE_SIZE: u16 = 256;

/// A guest's transmit virtqueue: the driver's side and the device's.
struct TxQueue<'m> {
    mem: &'m GuestMemoryMmap,
    driver: DriverQueue<'m, GuestMemoryMmap>,
    device: Queue,
}

impl<'m> TxQueue<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self::at(mem, GuestAddress(0), GuestAddress(1 << 20))
    }

    /// A queue with its rings at `rings` and 1 MiB of buffers at `data`.
    fn at(mem: &'m GuestMemoryMmap, rings: GuestAddress, data: GuestAddress) -> Self {
        let driver = DriverQueue::new(mem, rings, QUEUE_SIZE, data, 1 << 20);
        let device = driver.device_queue();
        TxQueue {
            mem,
            driver,
            device,
        }
    }

    /// The guest transmits header and frame as two descriptors; the device
    /// model pops the chain and hands it to `queue`.
    fn transmit(&mut self, queue: GuestQueue<'_>, hdr: VirtioNetHdr, frame: &[u8]) {
        let mut header = [0u8; 12];
        hdr.emit(&mut header, HdrFormat::V1).unwrap();
        self.driver.post_readable(&[&header, frame]);
        let chain = self.device.pop_descriptor_chain(self.mem).unwrap();
        let head = chain.head_index();
        queue.transmit_chain(self.mem, chain).unwrap();
        self.device.add_used(self.mem, head, 0).unwrap();
        self.driver.take_used();
    }
}

fn first(port: &GuestPort) -> GuestQueue<'_> {
    port.queue(0).unwrap()
}

/// One frame as the guest driver reads it out of its receive buffers.
struct Received {
    hdr: VirtioNetHdr,
    frame: Vec<u8>,
}

/// The device loop: in guest memory of its own, keeps 64 receive buffers
/// of `buffer_len` bytes posted, waits on the notifier and fills them
/// until `until` says it has enough or `WAIT` passes.
fn device_loop(
    port: &GuestPort,
    notifier: &CondvarNotifier,
    buffer_len: u32,
    mut until: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let mem = guest_ram();
    let mut driver = DriverQueue::new(
        &mem,
        GuestAddress(0x1_0000),
        QUEUE_SIZE,
        GuestAddress(2 << 20),
        6 << 20,
    );
    let mut queue = driver.device_queue();
    let deadline = Instant::now() + WAIT;
    let mut posted = 0;
    let mut out = Vec::new();
    let mut used = Vec::new();
    while !until(&out) && Instant::now() < deadline {
        if !port.rx_pending() {
            notifier.wait_timeout(Duration::from_millis(50));
        }
        while posted < 64 {
            driver.post_writable(&[buffer_len]);
            posted += 1;
        }
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
            std::iter::from_fn(|| queue.pop_descriptor_chain(&mem)).collect();
        let mut taken = 0;
        loop {
            match port.receive_into_chains(&mem, &chains[taken..], &mut used) {
                Ok(Some(delivered)) => taken += delivered.buffers,
                Ok(None) => break,
                // All posted buffers used: hand them to the guest, repost.
                Err(err) if !err.dropped_frame() => break,
                Err(err) => panic!("frame dropped: {err}"),
            }
        }
        for chain in used.drain(..) {
            queue.add_used(&mem, chain.head_index, chain.len).unwrap();
        }
        for _ in taken..chains.len() {
            queue.go_to_previous_position();
        }
        posted -= taken;
        let mut entries = driver.take_used().into_iter();
        while let Some((head, len)) = entries.next() {
            let mut bytes = driver.read_chain(head, len as usize);
            let (hdr, header_len) = VirtioNetHdr::parse(&bytes, HdrFormat::V1).unwrap();
            for _ in 1..hdr.num_buffers {
                let (head, len) = entries.next().expect("num_buffers buffers used");
                bytes.extend(driver.read_chain(head, len as usize));
            }
            out.push(Received {
                hdr,
                frame: bytes[header_len..].to_vec(),
            });
        }
    }
    out
}

/// Sequence number and payload of a TCP frame, as etherparse reads them.
fn payload_of(frame: &[u8]) -> (u32, &[u8]) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parses strictly");
    let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
        panic!("not TCP");
    };
    (tcp.sequence_number, headers.payload.slice())
}

fn stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

#[test]
fn tso_from_a_full_offload_guest_reaches_a_plain_guest_as_checked_segments() {
    let switch = switch();
    let a = guest("a", all_offloads());
    let b = guest("b", Features::VERSION_1 | Features::CSUM);
    plug(&switch, a.port.clone());
    plug(&switch, b.port.clone());
    assert!(!b.port.capabilities().egress.checksum);

    const FRAMES: usize = 40;
    const PAYLOAD: usize = 30_000;
    let data = stream(FRAMES * PAYLOAD);
    let (b_port, b_notifier) = (b.port.clone(), b.notifier.clone());
    let receiver = thread::spawn(move || {
        device_loop(&b_port, &b_notifier, 2048, |got| {
            got.iter().map(|r| r.frame.len() - 54).sum::<usize>() >= FRAMES * PAYLOAD
        })
    });
    let a_ram = guest_ram();
    let mut a_tx = TxQueue::new(&a_ram);
    for (i, chunk) in data.chunks(PAYLOAD).enumerate() {
        let frame = tcp_frame(addr(1), addr(2), (i * PAYLOAD) as u32, chunk);
        a_tx.transmit(first(&a.port), tso_hdr(1448), &frame);
    }
    let got = receiver.join().unwrap();

    let mut reassembled = vec![0u8; data.len()];
    for r in &got {
        assert_eq!(r.hdr.flags & FLAG_NEEDS_CSUM, 0);
        assert_eq!(r.hdr.gso_type, GSO_NONE);
        assert_eq!(r.hdr.num_buffers, 1);
        assert!(r.frame.len() <= 1514);
        assert!(complete_checksums(&r.frame), "bad checksum");
        let (seq, payload) = payload_of(&r.frame);
        reassembled[seq as usize..seq as usize + payload.len()].copy_from_slice(payload);
    }
    assert_eq!(got.len(), FRAMES * PAYLOAD.div_ceil(1448));
    assert!(reassembled == data, "payload differs");
    assert_eq!(a.port.stats().tx_frames, FRAMES as u64);
    assert_eq!(b.port.stats().rx_frames, got.len() as u64);
    switch.shutdown();
}

/// A guest that may send TSO frames with ECN sends one (CWR, ECE and PSH
/// set, the IP header marked CE). The switch floods it, the destination not
/// being learned, to a guest with TSO but without GUEST_ECN, which must get
/// segments with CWR on the first one only and the ECN marks of the IP
/// header on every one, and to a guest with GUEST_ECN, which gets the frame
/// whole with the ECN bit in its header.
#[test]
fn tso_with_ecn_is_cut_for_a_guest_without_guest_ecn_and_whole_for_one_with_it() {
    let switch = switch();
    let a = guest("a", all_offloads() | Features::HOST_ECN);
    let b = guest("b", all_offloads());
    let c = guest("c", all_offloads() | Features::GUEST_ECN);
    plug(&switch, a.port.clone());
    plug(&switch, b.port.clone());
    plug(&switch, c.port.clone());
    let (b_caps, c_caps) = (b.port.capabilities().egress, c.port.capabilities().egress);
    assert!(b_caps.tso4 && !b_caps.ecn);
    assert!(c_caps.tso4 && c_caps.ecn);

    const PAYLOAD: usize = 10_000;
    const MSS: usize = 1000;
    let frame = tcp(addr(1), addr(2), 5000, &stream(PAYLOAD))
        .tcp_flags(tcp_flags::CWR | tcp_flags::ECE | tcp_flags::ACK | tcp_flags::PSH)
        .traffic_class((46 << 2) | 0b11) // DSCP EF, ECN CE
        .partial_checksum()
        .build();
    let hdr = VirtioNetHdr {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..tso_hdr(MSS as u16)
    };
    let a_ram = guest_ram();
    TxQueue::new(&a_ram).transmit(first(&a.port), hdr, &frame);

    let at_b = device_loop(&b.port, &b.notifier, 2048, |got| {
        got.iter().map(|r| r.frame.len() - 54).sum::<usize>() >= PAYLOAD
    });
    assert_eq!(at_b.len(), PAYLOAD / MSS);
    let mut payload = Vec::new();
    for (i, r) in at_b.iter().enumerate() {
        assert_eq!(r.hdr.gso_type, GSO_NONE);
        assert_eq!(r.hdr.flags & FLAG_NEEDS_CSUM, 0);
        assert!(complete_checksums(&r.frame), "segment {i}: bad checksum");
        let headers = PacketHeaders::from_ethernet_slice(&r.frame).unwrap();
        let Some(NetHeaders::Ipv4(ip, _)) = &headers.net else {
            panic!("segment {i}: not IPv4");
        };
        assert_eq!(ip.ecn, IpEcn::CongestionExperienced, "segment {i}");
        assert_eq!(ip.dscp.value(), 46, "segment {i}");
        let Some(TransportHeader::Tcp(tcp)) = &headers.transport else {
            panic!("segment {i}: not TCP");
        };
        assert_eq!(tcp.sequence_number, (5000 + i * MSS) as u32);
        assert_eq!(tcp.cwr, i == 0, "CWR on segment {i}");
        assert!(tcp.ece && tcp.ack, "ECE and ACK on segment {i}");
        assert_eq!(tcp.psh, i + 1 == at_b.len(), "PSH on segment {i}");
        payload.extend_from_slice(&r.frame[54..]);
    }
    assert!(payload == frame[54..], "payload differs");

    let at_c = device_loop(&c.port, &c.notifier, 4096, |got| !got.is_empty());
    assert_eq!(at_c.len(), 1);
    assert_eq!(at_c[0].hdr.gso_type, GSO_TCPV4 | GSO_ECN);
    assert_eq!(usize::from(at_c[0].hdr.gso_size), MSS);
    assert!(at_c[0].frame == frame, "the frame is passed on as sent");
    assert_eq!(
        b.port.stats().rx_adapted,
        0,
        "the switch cut it, not the port"
    );
    switch.shutdown();
}

fn switch_tx(switch: &Switch, name: &str) -> u64 {
    switch
        .stats()
        .ports
        .iter()
        .find(|p| p.name == name)
        .map_or(0, |p| p.stats.tx_frames)
}

#[test]
fn receive_offloads_changed_at_run_time_are_respected_frame_by_frame() {
    let switch = switch();
    let sender = guest("s", all_offloads());
    let receiver = guest("r", all_offloads());
    plug(&switch, sender.port.clone());
    plug(&switch, receiver.port.clone());
    assert!(receiver.port.capabilities().egress.tso4);

    let sender_ram = guest_ram();
    let mut sender_tx = TxQueue::new(&sender_ram);
    let mut send_batch = |first_seq: u32, frames: usize| {
        for i in 0..frames {
            let seq = first_seq + (i * 10_000) as u32;
            let frame = tcp_frame(addr(1), addr(2), seq, &stream(10_000));
            sender_tx.transmit(first(&sender.port), tso_hdr(1000), &frame);
        }
    };
    let wait_queued = |frames: u64| {
        // The switch forwards GSO frames untouched to this port: wait until
        // they are all queued on it, before the offload change.
        let deadline = Instant::now() + WAIT;
        while switch_tx(&switch, "r") < frames {
            assert!(Instant::now() < deadline, "frames did not reach the port");
            thread::sleep(Duration::from_millis(2));
        }
    };
    let read = |enough: usize| {
        device_loop(&receiver.port, &receiver.notifier, 4096, |got| {
            got.len() >= enough
        })
    };

    // 1. With offloads on, TSO frames arrive whole, over three mergeable
    // buffers each.
    send_batch(0, 5);
    wait_queued(5);
    let on = read(5);
    assert_eq!(on.len(), 5);
    for r in &on {
        assert_eq!(r.hdr.gso_type, GSO_TCPV4);
        assert_eq!(r.frame.len(), 10_054);
        assert_eq!(r.hdr.num_buffers, 3);
    }

    // 2. Frames queued under the old offloads, then offloads off: the port
    // segments them and completes their checksums itself.
    send_batch(50_000, 5);
    wait_queued(10);
    receiver.port.set_guest_offloads(0).unwrap();
    let off = read(50);
    assert_eq!(off.len(), 50);
    for r in &off {
        assert_eq!(r.hdr.gso_type, GSO_NONE);
        assert_eq!(r.hdr.flags & FLAG_NEEDS_CSUM, 0);
        assert!(complete_checksums(&r.frame));
        assert_eq!(r.frame.len(), 1054);
    }
    let seqs: Vec<u32> = off.iter().map(|r| payload_of(&r.frame).0).collect();
    let expected: Vec<u32> = (0..50).map(|i| 50_000 + i * 1000).collect();
    assert_eq!(seqs, expected, "segments in order");
    assert_eq!(receiver.port.stats().rx_adapted, 5);

    // 3. Back on: whole frames again.
    receiver
        .port
        .set_guest_offloads((all_offloads() & Features::GUEST_OFFLOAD_BITS).bits())
        .unwrap();
    send_batch(100_000, 2);
    let back = read(2);
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|r| r.hdr.gso_type == GSO_TCPV4));
    assert_eq!(receiver.port.stats().rx_dropped, 0);
    switch.shutdown();
}

#[test]
fn a_pcap_port_around_a_guest_port_records_both_directions() {
    let switch = switch();
    let a = guest("a", all_offloads());
    let (b_port, b_notifier) = guest_port("b", Features::VERSION_1 | Features::CSUM);
    let recorded = Arc::new(PcapPort::new(b_port, Vec::new()).unwrap());
    plug(&switch, a.port.clone());
    plug(&switch, recorded.clone());
    let b = recorded.inner();

    // b -> a: one plain frame (recorded as received from b's port).
    let hello = tcp(addr(2), addr(1), 7, b"hello").build();
    assert!(complete_checksums(&hello));
    let (a_ram, b_ram) = (guest_ram(), guest_ram());
    let (mut a_tx, mut b_tx) = (TxQueue::new(&a_ram), TxQueue::new(&b_ram));
    b_tx.transmit(first(b), VirtioNetHdr::default(), &hello);
    let at_a = device_loop(&a.port, &a.notifier, 2048, |got| !got.is_empty());
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0].frame, hello);

    // a -> b: a TSO frame, cut by the switch (recorded as sent to b).
    let frame = tcp_frame(addr(1), addr(2), 0, &stream(5000));
    a_tx.transmit(first(&a.port), tso_hdr(1448), &frame);
    let at_b = device_loop(b, &b_notifier, 2048, |got| got.len() >= 4);
    assert_eq!(at_b.len(), 4);

    switch.shutdown();
    let recorded = Arc::try_unwrap(recorded).expect("the switch let go of the port");
    let (_, file) = recorded.into_parts();
    let mut reader = PcapReader::new(&file[..]).unwrap();
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        frames.push(packet.unwrap().data.into_owned());
    }
    let mut expected = vec![hello];
    expected.extend(at_b.into_iter().map(|r| r.frame));
    assert_eq!(frames, expected);
}

#[test]
fn a_multi_queue_guest_gets_its_flows_spread_over_its_queue_pairs_in_order() {
    spread_over_queue_pairs(2, 2);
}

/// With fewer workers than the guest has queue pairs, the flows still
/// cover every pair: the queue is the flow's hash's, not the worker's.
#[test]
fn one_worker_spreads_flows_over_all_four_queue_pairs_of_a_guest() {
    spread_over_queue_pairs(1, 4);
}

/// 32 flows from a two-pair guest A to guest B with `pairs` queue pairs,
/// through a switch of `workers` workers: every flow arrives on one pair,
/// in order, and the flows use every pair of B.
fn spread_over_queue_pairs(workers: usize, pairs: usize) {
    const FLOWS: u16 = 32;
    const PER_FLOW: u32 = 50;
    let switch = Switch::start(SwitchConfig {
        queue_full_wait: Duration::from_secs(2),
        ..SwitchConfig::default().workers(workers)
    })
    .unwrap();
    let mq = all_offloads() | Features::MQ;
    let notifiers: Vec<Arc<CondvarNotifier>> = (0..pairs.max(2))
        .map(|_| Arc::new(CondvarNotifier::new()))
        .collect();
    let multi_queue = |name: &str, pairs: usize| {
        Arc::new(GuestPort::with_queue_notifiers(
            GuestPortConfig::new(name)
                .queue_pairs(pairs)
                .queue_len(4096),
            Negotiated::new(mq, mq).unwrap(),
            |i| notifiers[i].clone(),
        ))
    };
    let a = multi_queue("a", 2);
    let b = multi_queue("b", pairs);
    plug(&switch, a.clone());
    plug(&switch, b.clone());
    assert_eq!(b.capabilities().tx_queues, pairs);

    // Flow f leaves guest A on queue pair f % 2; frames are plain. Each
    // pair has its transmit virtqueue in A's memory.
    let a_ram = guest_ram();
    let mut a_tx = [
        TxQueue::new(&a_ram),
        TxQueue::at(&a_ram, GuestAddress(0x2_0000), GuestAddress(3 << 20)),
    ];
    for seq in 0..PER_FLOW {
        for flow in 0..FLOWS {
            let frame = tcp(addr(1), addr(2), seq, &[0u8; 64])
                .ports(1000 + flow, 5201)
                .partial_checksum()
                .build();
            let pair = usize::from(flow % 2);
            a_tx[pair].transmit(a.queue(pair).unwrap(), VirtioNetHdr::default(), &frame);
        }
    }

    // B's device loop serves every receive queue.
    let total = usize::from(FLOWS) * PER_FLOW as usize;
    let mut seen: Vec<Vec<(usize, u32)>> = vec![Vec::new(); usize::from(FLOWS)];
    let mut received = 0;
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    while received < total {
        assert!(Instant::now() < deadline, "{received} of {total} frames");
        let mut idle = true;
        for pair in 0..pairs {
            let queue = b.queue(pair).unwrap();
            while let Some(len) = queue.receive_into_vec(&mut buf).unwrap() {
                idle = false;
                let frame = &buf[12..len];
                let flow = u16::from_be_bytes([frame[34], frame[35]]) - 1000;
                seen[usize::from(flow)].push((pair, payload_of(frame).0));
                received += 1;
            }
        }
        if idle {
            notifiers[0].wait_timeout(Duration::from_millis(1));
        }
    }
    let mut pairs_used = vec![false; pairs];
    for (flow, frames) in seen.iter().enumerate() {
        let pair = frames[0].0;
        pairs_used[pair] = true;
        assert!(
            frames.iter().all(|&(p, _)| p == pair),
            "flow {flow} crossed queue pairs"
        );
        let seqs: Vec<u32> = frames.iter().map(|&(_, s)| s).collect();
        assert_eq!(seqs, (0..PER_FLOW).collect::<Vec<_>>(), "flow {flow}");
    }
    assert!(
        pairs_used.iter().all(|&used| used),
        "flows spread over every pair: {pairs_used:?}"
    );
    switch.shutdown();
}
