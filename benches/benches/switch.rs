//! The switch as a whole: how fast it moves bulk TCP and small frames, how
//! it scales with workers, and what a port and a learned address cost in
//! memory. Every figure is printed beside a peer measured in the same run:
//!
//! - demo throughput with 1..N workers (the `vswitch demo` code, software
//!   segmentation and checksums to a port without offloads), the scaling
//!   ratio, and the workers' cost per payload byte against `memcpy` of the
//!   same bytes on one core;
//! - 64-byte frames between two in-memory ports: Mpps per worker (frames
//!   over worker CPU time) against a bare hop of the same frames between
//!   two bounded channels on one thread, the floor of what a worker must do
//!   for a frame (take it from one queue, put it in another);
//! - memory: bytes the switch allocates per added port and the forwarding
//!   table per learned address, counted by a counting global allocator.
//!
//! Criterion then times the per-frame pieces: the flow hash, the forwarding
//! decision, and the egress adaptation of one 64 KiB TSO frame.
//!
//! Nothing here asserts a time. Set `SWITCH_BENCH_SECONDS` to change the
//! length of each demo run (default 2), and `SWITCH_BENCH_PARTS` to run
//! only some parts (`demo,small,memory,pieces`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use vswitch::datapath::{Datapath, Output};
use vswitch::demo::{run_demo, DemoOptions, EgressOffload};
use vswitch::dispatch::{flow_hash, flow_hash_of_bytes, worker_for_hash};
use vswitch::egress::{adapt_for_egress, EgressEngine};
use vswitch::ethernet::build_frame;
use vswitch::fdb::ForwardingTable;
use vswitch::mac::MacAddr;
use vswitch::{
    Forwarder, ForwarderConfig, PortId, PortProfile, PortSet, Switch, SwitchConfig, VlanId,
};
use vswitch_offload::checksum::checksum;
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::{CheckedFrame, EgressCapabilities, Packet};
use vswitch_ports::memory::{memory_port, MemoryPortConfig};

#[allow(unsafe_code)]
mod counting {
    //! A global allocator that counts the bytes live on the heap.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};

    /// Forwards to the system allocator and keeps a running total of the
    /// bytes allocated and not yet freed.
    pub struct Counting;

    static LIVE: AtomicIsize = AtomicIsize::new(0);

    /// Bytes allocated and not freed so far.
    pub fn live_bytes() -> isize {
        LIVE.load(Ordering::SeqCst)
    }

    // SAFETY: every method forwards to `System` with the caller's arguments
    // unchanged, so `System` upholds the `GlobalAlloc` contract; the count is
    // an atomic and does not allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            // SAFETY: the caller's `layout` obligations are passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System` through the methods above
            // with this `layout`, as the caller guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            // SAFETY: as for `dealloc`; `new_size` is passed on as given.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Best-of-rounds bytes per second of `memcpy` of a 64 KiB frame, the
/// size the demo's frames are, on this thread.
fn memcpy_bytes_per_second() -> f64 {
    let src = vec![0x5au8; 64 * 1024];
    let mut dst = vec![0u8; 64 * 1024];
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let start = Instant::now();
        for _ in 0..200 {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    (200 * src.len()) as f64 / best
}

/// How much faster `threads` threads finish `threads` equal pieces of
/// plain CPU work (checksumming a 64 KiB buffer) than one thread finishes
/// one: what the machine offers in parallel right now, the ceiling of any
/// scaling ratio measured in the same run on a shared machine.
fn machine_speedup(threads: usize) -> f64 {
    fn work() {
        let buf = vec![0x3cu8; 64 * 1024];
        for _ in 0..3000 {
            black_box(checksum(black_box(&buf)));
        }
    }
    let best = |threads: usize| {
        (0..3)
            .map(|_| {
                let start = Instant::now();
                let handles: Vec<_> = (0..threads).map(|_| std::thread::spawn(work)).collect();
                for handle in handles {
                    let _ = handle.join();
                }
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let one = best(1);
    let many = best(threads);
    threads as f64 * one / many
}

/// Bytes per second of the demo's data path without the switch: one thread
/// copies a 64 KiB block into a buffer, another reads and checksums it
/// (as the worker writes segments and B verifies them), buffers cycling
/// between them through channels. With `threads` false, one thread does
/// both. Where the two threads land on different cores, every byte
/// crosses between them: the cost the demo pays too.
fn copy_then_verify_bytes_per_second(threads: bool) -> f64 {
    const BLOCK: usize = 64 * 1024;
    const ROUNDS: usize = 20_000;
    let source = vec![0x6bu8; BLOCK];
    if !threads {
        let mut buf = vec![0u8; BLOCK];
        let start = Instant::now();
        for _ in 0..ROUNDS {
            buf.copy_from_slice(black_box(&source));
            black_box(checksum(black_box(&buf)));
        }
        return (ROUNDS * BLOCK) as f64 / start.elapsed().as_secs_f64();
    }
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Vec<u8>>(16);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(16);
    for _ in 0..16 {
        let _ = empty_tx.send(vec![0u8; BLOCK]);
    }
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        while let Ok(buf) = full_rx.recv() {
            black_box(checksum(black_box(&buf)));
            if empty_tx.send(buf).is_err() {
                break;
            }
        }
    });
    for _ in 0..ROUNDS {
        let Ok(mut buf) = empty_rx.recv() else {
            break;
        };
        buf.copy_from_slice(black_box(&source));
        if full_tx.send(buf).is_err() {
            break;
        }
    }
    drop(full_tx);
    let _ = reader.join();
    (ROUNDS * BLOCK) as f64 / start.elapsed().as_secs_f64()
}

/// (a) The demo with 1..N workers.
fn demo_scaling() {
    let seconds: f64 = std::env::var("SWITCH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let max_workers = cores().max(2);
    let memcpy = memcpy_bytes_per_second();
    let parallel = machine_speedup(max_workers);
    let one_thread = copy_then_verify_bytes_per_second(false);
    let two_threads = copy_then_verify_bytes_per_second(true);
    println!();
    println!(
        "demo: 16 flows of 64 KiB TSO frames, B without offloads (software segmentation and \
         checksums), {seconds} s per run, {} CPUs",
        cores()
    );
    println!(
        "  {:>7}  {:>9}  {:>8}  {:>22}  {:>14}  {:>13}  {:>8}",
        "workers",
        "Gbit/s",
        "vs 1",
        "worker CPU / guests",
        "ns/byte worker",
        "vs memcpy/B",
        "drops"
    );
    let mut first = None;
    for workers in 1..=max_workers {
        let options = DemoOptions {
            workers,
            seconds,
            egress_offload: EgressOffload::None,
            ..DemoOptions::default()
        };
        let report = match run_demo(&options, false) {
            Ok(report) => report,
            Err(err) => {
                println!("  {workers:>7}  demo failed to start: {err}");
                continue;
            }
        };
        let gbits = report.gbits();
        let base = *first.get_or_insert(gbits);
        let elapsed = report.elapsed.as_secs_f64();
        let worker_cpu = report.cpu_of("vswitch-worker").as_secs_f64();
        let guests = report.cpu_of("demo-guest").as_secs_f64();
        let ns_per_byte = report.worker_ns_per_byte();
        let memcpy_ns_per_byte = 1e9 / memcpy;
        println!(
            "  {workers:>7}  {gbits:>9.2}  {:>7.2}x  {:>9.0}% / {:>8.0}%  {ns_per_byte:>14.4}  \
             {:>12.2}x  {:>8}{}",
            gbits / base,
            100.0 * worker_cpu / elapsed,
            100.0 * guests / elapsed,
            ns_per_byte / memcpy_ns_per_byte,
            report.drops,
            if report.errors > 0 {
                "  VERIFICATION ERRORS"
            } else {
                ""
            }
        );
    }
    println!(
        "  peer: {max_workers} threads of plain CPU work ran {parallel:.2}x as fast as one in \
         this run (the machine's own scaling ceiling right now)"
    );
    println!(
        "  peer: copy a 64 KiB block then checksum it: {:.1} Gbit/s on one thread, {:.1} Gbit/s \
         with the copy and the checksum on two threads (the data crosses between cores)",
        one_thread * 8.0 / 1e9,
        two_threads * 8.0 / 1e9
    );
    println!(
        "  memcpy of 64 KiB on one core: {:.1} GB/s ({:.4} ns/byte); the switch's work per \
         byte is one copy plus checksums of every segment.",
        memcpy / 1e9,
        1e9 / memcpy
    );
    println!(
        "  CPU % is of one core over the run; on a machine with as many cores as threads, \
         throughput scales with the workers only while the guests (A sending, B verifying \
         every byte) are not the bottleneck."
    );
}

/// A 64-byte IPv4/UDP frame of flow `flow` from A to B.
fn small_frame(flow: u16) -> Bytes {
    FrameBuilder::udp4([198, 18, 0, 1], [198, 18, 0, 2])
        .macs([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 0x0b])
        .ports(10_000 + flow, 9)
        .payload([0; 22])
        .build()
        .into()
}

/// Frames moved per second of one thread's time through a bare hop: take
/// from one bounded channel, put into another. The floor of a worker.
fn channel_hop_frames_per_second(frames: &[Packet], count: usize) -> f64 {
    let (in_tx, in_rx) = crossbeam_channel::bounded::<Packet>(count);
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Packet>(count);
    for i in 0..count {
        let _ = in_tx.try_send(frames[i % frames.len()].clone());
    }
    let start = Instant::now();
    let mover = std::thread::spawn(move || {
        let mut moved = 0;
        while let Ok(packet) = in_rx.try_recv() {
            if out_tx.try_send(packet).is_ok() {
                moved += 1;
            }
        }
        moved
    });
    let moved = mover.join().unwrap_or(0);
    let elapsed = start.elapsed().as_secs_f64();
    drop(out_rx);
    moved as f64 / elapsed
}

/// (b) 64-byte frames from A to B through a switch with `workers`
/// workers: (wall-clock frames/s, frames per second of worker CPU, drops).
///
/// With `steered`, both ports have a queue per worker and each frame is
/// put on the receive queue its flow's worker polls (as a multi-queue NIC
/// or guest doing RSS would); otherwise A has one receive queue and its
/// worker hands the other workers' flows over.
fn small_frames_through_switch(
    frames: &[Packet],
    count: usize,
    workers: usize,
    steered: bool,
) -> (f64, f64, u64) {
    let Ok(switch) = Switch::start(SwitchConfig::default().workers(workers)) else {
        return (0.0, 0.0, 0);
    };
    let queues = if steered { workers } else { 1 };
    let (port_b, guest_b) = memory_port(
        MemoryPortConfig::new("b")
            .queues(1, queues)
            .queue_len(count),
    );
    let (port_a, guest_a) = memory_port(
        MemoryPortConfig::new("a")
            .queues(queues, 1)
            .queue_len(count),
    );
    let Ok(id_b) = switch.add_port(Arc::new(port_b), PortProfile::access(VlanId::DEFAULT)) else {
        return (0.0, 0.0, 0);
    };
    // Ids are handed out in order: A will be the next one. Queue `q` of
    // port `p` is polled by worker `(p + q) % workers`.
    let expected_a = id_b.0 as usize + 1;
    // A's queues are filled before A joins, so the workers run flat out
    // from the moment it does, with no sender thread competing for a core.
    for i in 0..count {
        let frame = &frames[i % frames.len()];
        let queue = if steered {
            let worker = worker_for_hash(flow_hash_of_bytes(&frame.data).unwrap_or(0), workers);
            (worker + workers - expected_a % workers) % workers
        } else {
            0
        };
        let _ = guest_a.try_inject(queue, frame.clone());
    }
    std::thread::sleep(Duration::from_millis(20));
    let cpu_before = vswitch_benches::cpu_of_threads("vswitch-worker");
    let start = Instant::now();
    let Ok(id_a) = switch.add_port(Arc::new(port_a), PortProfile::access(VlanId::DEFAULT)) else {
        return (0.0, 0.0, 0);
    };
    if steered && id_a.0 as usize != expected_a {
        println!("  (port A got id {id_a}, not the expected {expected_a}: frames not steered)");
    }
    let deadline = start + Duration::from_secs(60);
    loop {
        let sent = switch.port_stats(id_b).map_or(0, |s| s.tx_frames);
        let dropped = switch.port_stats(id_a).map_or(0, |s| s.drops.total())
            + switch.port_stats(id_b).map_or(0, |s| s.drops.total());
        if sent + dropped >= count as u64 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let worker_cpu = vswitch_benches::cpu_of_threads("vswitch-worker")
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let stats = switch.shutdown();
    drop(guest_a);
    let mut out = Vec::new();
    guest_b.drain(&mut out);
    let drops = stats.ports.iter().map(|p| p.stats.drops.total()).sum();
    let delivered = out.len() as f64;
    (delivered / elapsed, delivered / worker_cpu.max(1e-9), drops)
}

fn small_frame_switching() {
    let frames: Vec<Packet> = (0..64).map(|f| Packet::plain(small_frame(f))).collect();
    let count = 1_000_000;
    println!();
    println!(
        "64-byte frames, 64 UDP flows, {count} frames from in-memory port A to B \
         (queued before the run; no guest threads)"
    );
    let hop = (0..3)
        .map(|_| channel_hop_frames_per_second(&frames, count))
        .fold(0.0, f64::max);
    println!(
        "  peer: bare channel hop on one thread (try_recv + try_send of the same frames): \
         {:.2} Mpps",
        hop / 1e6
    );
    println!(
        "  {:>7}  {:>28}  {:>12}  {:>16}  {:>15}  {:>6}  {:>10}",
        "workers",
        "queues",
        "Mpps (wall)",
        "Mpps/worker-CPU",
        "vs channel hop",
        "drops",
        "vs 1 (wall)"
    );
    for steered in [false, true] {
        let mut first = None;
        for workers in 1..=cores().max(2) {
            let (wall, per_cpu, drops) = (0..2)
                .map(|_| small_frames_through_switch(&frames, count, workers, steered))
                .fold(
                    (0.0, 0.0, 0),
                    |best, run| if run.0 > best.0 { run } else { best },
                );
            let base = *first.get_or_insert(wall);
            println!(
                "  {workers:>7}  {:>28}  {:>12.2}  {:>16.2}  {:>14.2}x  {drops:>6}  {:>9.2}x",
                if steered {
                    "one per worker, RSS-steered"
                } else {
                    "one (hand-off by flow)"
                },
                wall / 1e6,
                per_cpu / 1e6,
                per_cpu / hop,
                wall / base.max(1e-9)
            );
        }
    }
    println!(
        "  peer: {} threads of plain CPU work ran {:.2}x as fast as one in this run",
        cores().max(2),
        machine_speedup(cores().max(2))
    );
    println!(
        "  Mpps/worker-CPU: frames delivered per second of CPU the workers used; wall-clock \
         rates depend on how many cores are free."
    );
}

/// (c) Memory per port and per learned address.
fn memory_costs() {
    println!();
    println!("memory (bytes on the heap, counted by the global allocator)");
    let ports = 256;
    let queue_len = 256;
    let workers = 2;
    let Ok(switch) = Switch::start(SwitchConfig::default().workers(workers)) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(20));
    // The in-memory ports' own queues are the adapter's, not the switch's:
    // measure them apart.
    let before_ports = counting::live_bytes();
    let made: Vec<_> = (0..ports)
        .map(|i| memory_port(MemoryPortConfig::new(format!("p{i}")).queue_len(queue_len)))
        .collect();
    let adapter = counting::live_bytes() - before_ports;
    let before_switch = counting::live_bytes();
    let mut outsides = Vec::new();
    for (port, outside) in made {
        let _ = switch.add_port(Arc::new(port), PortProfile::access(VlanId::DEFAULT));
        outsides.push(outside);
    }
    // Let every worker move to the newest port table, so the old ones are freed.
    std::thread::sleep(Duration::from_millis(50));
    let in_switch = counting::live_bytes() - before_switch;
    println!(
        "  per port in the switch ({workers} workers): {:.0} bytes (table entry, counters lane \
         per worker); the in-memory port itself, queue length {queue_len}: {:.0} bytes",
        in_switch as f64 / ports as f64,
        adapter as f64 / ports as f64
    );
    drop(switch);
    drop(outsides);

    let addresses = 100_000u32;
    let table = ForwardingTable::new(300_000);
    let before = counting::live_bytes();
    for i in 0..addresses {
        let b = i.to_be_bytes();
        let mac = MacAddr([2, 0, b[0], b[1], b[2], b[3]]);
        table.learn(VlanId::DEFAULT, mac, PortId(i % 64), usize::MAX, 0);
    }
    let learned = counting::live_bytes() - before;
    println!(
        "  per learned address: {:.1} bytes ({} addresses on 64 ports, {} in the table; \
         includes the hash table's spare capacity)",
        learned as f64 / f64::from(addresses),
        addresses,
        table.len()
    );
}

/// A 64 KiB TSO frame with a partial checksum, as the demo's guest sends.
fn tso_frame() -> Packet {
    FrameBuilder::tcp4([198, 18, 0, 1], [198, 18, 0, 2])
        .macs([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 0x0b])
        .ports(40_000, 5201)
        .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
        .payload_with(45 * 1448, |i| (i * 7 % 251) as u8)
        .gso(1448)
        .packet()
}

fn bench_pieces(c: &mut Criterion) {
    let frame = small_frame(7);
    let mut group = c.benchmark_group("switch/per_frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ingress_check_64B", |b| {
        b.iter(|| CheckedFrame::check(Packet::plain(black_box(&frame).clone())).is_ok())
    });
    let frame = CheckedFrame::check(Packet::plain(frame)).expect("a valid frame");
    group.bench_function("flow_hash_rss_64B", |b| {
        b.iter(|| flow_hash(black_box(&frame)))
    });
    let forwarder = Forwarder::new(ForwarderConfig::default(), Instant::now());
    let mut ports = PortSet::new();
    ports.insert(PortId(0), PortProfile::access(VlanId::DEFAULT));
    ports.insert(PortId(1), PortProfile::access(VlanId::DEFAULT));
    let mut cache = forwarder.new_cache();
    let mut out = Vec::new();
    let now = Instant::now();
    group.bench_function("decide_cached_64B", |b| {
        b.iter(|| {
            let decision = forwarder.decide_cached(
                &mut cache,
                &ports,
                PortId(0),
                black_box(&frame),
                now,
                &mut out,
            );
            black_box(decision.is_ok())
        })
    });
    group.finish();

    // The whole sans-IO datapath on one thread: a burst of 64 frames of 64
    // flows checked, hashed, forwarded to a learned port and batched.
    let mut group = c.benchmark_group("switch/datapath_burst64");
    group.throughput(Throughput::Elements(64));
    let burst: Vec<Packet> = (0..64).map(|f| Packet::plain(small_frame(f))).collect();
    let mut ports = PortSet::new();
    for id in 0..2 {
        ports.insert_port(
            PortId(id),
            PortProfile::access(VlanId::DEFAULT),
            EgressCapabilities::none(1500),
        );
    }
    let mut datapath = Datapath::new(Arc::new(Forwarder::new(ForwarderConfig::default(), now)));
    let mut output = Output::new();
    // Port 1 announces the destination address so frames are unicast.
    let dst = MacAddr([2, 0, 0, 0, 0, 0x0b]);
    let hello = build_frame(MacAddr::BROADCAST, dst, None, 0x88b5, &[0; 46]);
    datapath.process(&ports, PortId(1), [Packet::plain(hello)], now, &mut output);
    group.bench_function("check_hash_forward_64B", |b| {
        b.iter(|| {
            // What a polling worker does per frame: check, hash, forward.
            output.clear();
            for packet in &burst {
                if let Some(frame) = Datapath::check(PortId(0), packet.clone(), &mut output) {
                    black_box(flow_hash(&frame));
                    datapath.forward(&ports, PortId(0), frame, now, &mut output);
                }
            }
            black_box(output.batches().len())
        })
    });
    let mut moved = Vec::with_capacity(64);
    group.bench_function("peer_vec_move_of_the_packets", |b| {
        b.iter(|| {
            moved.clear();
            moved.extend(black_box(&burst).iter().cloned());
            black_box(moved.len())
        })
    });
    group.finish();

    let tso = tso_frame();
    let caps = EgressCapabilities::none(1500);
    let mut engine = EgressEngine::new();
    let mut adapted = Vec::new();
    let mut group = c.benchmark_group("switch/egress_64KiB_tso");
    group.throughput(Throughput::Bytes(tso.data.len() as u64));
    group.bench_function("segment_and_checksum_to_no_offload_port", |b| {
        b.iter(|| {
            adapted.clear();
            let work = adapt_for_egress(&mut engine, tso.clone(), &caps, &mut adapted);
            black_box(work.is_ok())
        })
    });
    let src = tso.data.to_vec();
    let mut dst = vec![0u8; src.len()];
    group.bench_function("memcpy_peer", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    group.finish();
}

criterion_group! {
    name = pieces;
    config = Criterion::default();
    targets = bench_pieces
}

/// Whether the part `name` is to run: all of them unless
/// `SWITCH_BENCH_PARTS` lists some (`demo,small,memory,pieces`).
fn part(name: &str) -> bool {
    std::env::var("SWITCH_BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|p| p == name))
}

fn main() {
    if part("demo") {
        demo_scaling();
    }
    if part("small") {
        small_frame_switching();
    }
    if part("memory") {
        memory_costs();
    }
    if part("pieces") {
        pieces();
        Criterion::default().configure_from_args().final_summary();
    }
}
