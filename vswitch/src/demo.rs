//! `vswitch demo`: two in-memory guest ports and the switch between them.
//!
//! Guest A sends bulk TCP flows as a Linux guest running `iperf3 -P 16` does:
//! 64 KiB TSO frames with a partial checksum (the checksum field holds the
//! pseudo-header sum over the full TCP length) and a virtio-net header that
//! asks the host to cut them at the guest's MSS. Port B declares what its
//! far side takes (by default nothing: no checksum offload, no TSO), so the
//! switch segments and checksums in software on the way. B checks every
//! frame it receives: IPv4 and TCP checksums, the MTU, per-flow sequence
//! order, and every payload byte. B acknowledges what it verified, and A
//! never has more than a window of unacknowledged bytes per flow in flight,
//! as TCP would, so queues never overflow and the expected drop count is 0.
//!
//! A's frame buffers are recycled as a guest's ring buffers are: when the
//! switch and B are done with a frame, A rewrites its headers in place for
//! the next one. The payload of every frame of a flow is the same random
//! block (its position in the stream follows from the sequence number), so
//! B checks each segment against the right slice of it.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use vswitch_offload::checksum::{checksum, pseudo_header_ipv4};
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4};
use vswitch_offload::{EgressCapabilities, FrameLayout, L4Kind, Packet, VirtioNetHdr};
use vswitch_ports::buffer::ChunkPool;
use vswitch_ports::memory::{memory_port, MemoryEndpoint, MemoryPortConfig};

use crate::dispatch::{flow_hash_of_bytes, worker_for_hash};
use crate::{PortId, PortProfile, Switch, SwitchConfig, VlanId};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const IP_A: [u8; 4] = [198, 18, 0, 1];
const IP_B: [u8; 4] = [198, 18, 0, 2];
const FIRST_PORT: u16 = 40_000;
const SERVER_PORT: u16 = 5201;
/// Ethernet + IPv4 + TCP with the timestamp option, as Linux sends.
const HEADER_LEN: usize = 14 + 20 + 32;
/// Unacknowledged frames in flight per flow.
const WINDOW_FRAMES: u32 = 4;
/// Frame buffers A keeps per flow for recycling, a window's worth and one
/// more; beyond that the oldest is let go.
const KEPT_FRAMES: usize = WINDOW_FRAMES as usize + 1;
/// Buffers A looks at for one it can reuse: the oldest, which the switch
/// and B are done with first.
const RECYCLE_PROBES: usize = 1;

/// What port B's far side takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressOffload {
    /// Plain, checksummed, MTU-sized frames only.
    None,
    /// Partial checksums, no segmentation.
    Checksum,
    /// Partial checksums and TSO.
    Tso,
}

/// Options of `vswitch demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOptions {
    /// Number of TCP flows.
    pub flows: u16,
    /// How long A sends.
    pub seconds: f64,
    /// Switch workers.
    pub workers: usize,
    /// The MTU of both guests (A's MSS follows from it).
    pub mtu: u16,
    /// What B's port takes.
    pub egress_offload: EgressOffload,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            flows: 16,
            seconds: 5.0,
            workers: SwitchConfig::default_workers(),
            mtu: 1500,
            egress_offload: EgressOffload::None,
        }
    }
}

impl DemoOptions {
    /// The guest's MSS: the MTU less the IPv4 and TCP headers (with timestamps).
    pub fn mss(&self) -> usize {
        usize::from(self.mtu) - 20 - 32
    }

    /// TCP payload of each TSO frame: as many whole segments as fit a
    /// 64 KiB IP packet.
    pub fn frame_payload(&self) -> usize {
        let mss = self.mss();
        ((65_535 - 20 - 32) / mss).max(1) * mss
    }

    fn egress_caps(&self) -> EgressCapabilities {
        match self.egress_offload {
            EgressOffload::None => EgressCapabilities::none(self.mtu),
            EgressOffload::Checksum => EgressCapabilities::checksum_only(self.mtu),
            EgressOffload::Tso => EgressCapabilities::full(self.mtu),
        }
    }
}

/// Per-flow state shared by A (sender) and B (receiver).
struct FlowShared {
    /// Sequence number B has verified up to (what it acknowledges).
    acked: AtomicU32,
}

/// How A waits for acknowledgements when every flow's window is full: it
/// yields a few times, then parks until B acknowledges (or a short
/// timeout), so a blocked sender leaves the CPU to the switch and to B.
#[derive(Debug, Default)]
struct SenderWait {
    /// A is parked or about to park.
    parked: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl SenderWait {
    /// Rounds without a frame to send before A parks.
    const SPIN_ROUNDS: u32 = 8;

    fn park(&self, stop: &AtomicBool) {
        self.parked.store(true, Ordering::SeqCst);
        if !stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_micros(500));
        }
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Wakes A if it is parked (after B acknowledged, or at the stop).
    fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// The first sequence number of flow `flow`.
fn initial_seq(flow: u16) -> u32 {
    0x1000_0000_u32.wrapping_mul(u32::from(flow) + 1) ^ 0x5a5a_1234
}

/// The payload block of a flow: xorshift bytes seeded by the flow number.
fn payload_block(flow: u16, len: usize) -> Vec<u8> {
    let mut state =
        0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(flow) + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes the Ethernet, IPv4 and TCP headers of flow `flow` into
/// `frame[..HEADER_LEN]`, as a guest's stack leaves them in a TSO frame:
/// IPv4 header checksum filled, TCP checksum field seeded with the
/// pseudo-header sum over the full TCP length.
fn write_headers(frame: &mut [u8], flow: u16, seq: u32, ip_id: u16, tsval: u32) {
    let ip_len = frame.len() - 14;
    let tcp_len = ip_len - 20;
    let h = &mut frame[..HEADER_LEN];
    h[0..6].copy_from_slice(&MAC_B);
    h[6..12].copy_from_slice(&MAC_A);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0x00]);
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&IP_A);
    ip[16..20].copy_from_slice(&IP_B);
    let ip_csum = checksum(ip);
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let tcp = &mut h[34..66];
    tcp[0..2].copy_from_slice(&(FIRST_PORT + flow).to_be_bytes());
    tcp[2..4].copy_from_slice(&SERVER_PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18; // ACK | PSH
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    let seed = pseudo_header_ipv4(IP_A, IP_B, 6, tcp_len as u16).sum();
    tcp[16..18].copy_from_slice(&seed.to_be_bytes());
    tcp[18..20].copy_from_slice(&[0, 0]);
    tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
    tcp[24..28].copy_from_slice(&tsval.to_be_bytes());
    tcp[28..32].copy_from_slice(&0u32.to_be_bytes());
}

/// Guest A: round-robin over the flows, each limited to a window of
/// unacknowledged frames, until `stop`.
struct Sender {
    options: DemoOptions,
    hdr: VirtioNetHdr,
    blocks: Vec<Vec<u8>>,
    next_seq: Vec<u32>,
    /// Each flow's frame buffers, one frame per chunk.
    buffers: Vec<ChunkPool>,
    ip_id: u16,
    frames: u64,
    /// The receive queue each flow is sent on.
    queue_of_flow: Vec<usize>,
}

/// The receive queue of port `port` that the worker handling flow `flow`
/// polls: a guest steering each flow to one queue, as RSS would, so the
/// switch need not hand the flow's frames from worker to worker. Queue `q`
/// of port `p` is polled by worker `(p + q) % workers`.
fn queue_for_flow(flow: u16, port: PortId, workers: usize) -> usize {
    let mut headers = [0u8; HEADER_LEN];
    write_headers(&mut headers, flow, 0, 0, 0);
    let worker = worker_for_hash(flow_hash_of_bytes(&headers).unwrap_or(0), workers);
    let workers = workers.max(1);
    (worker + workers - (port.0 as usize % workers)) % workers
}

impl Sender {
    fn new(options: &DemoOptions, port: PortId) -> Self {
        let payload = options.frame_payload();
        Sender {
            queue_of_flow: (0..options.flows)
                .map(|f| queue_for_flow(f, port, options.workers))
                .collect(),
            options: options.clone(),
            hdr: VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: HEADER_LEN as u16,
                gso_size: options.mss() as u16,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            },
            blocks: (0..options.flows)
                .map(|f| payload_block(f, payload))
                .collect(),
            next_seq: (0..options.flows).map(initial_seq).collect(),
            buffers: (0..options.flows)
                .map(|_| ChunkPool::new(HEADER_LEN + payload, KEPT_FRAMES, RECYCLE_PROBES))
                .collect(),
            ip_id: 1,
            frames: 0,
        }
    }

    /// A buffer for flow `flow`'s next frame: the oldest one sent if the
    /// switch and B are done with it (its payload is already right), else
    /// a new one with the flow's payload.
    fn buffer(&mut self, flow: usize) -> BytesMut {
        let block = &self.blocks[flow];
        self.buffers[flow].take_with(HEADER_LEN + block.len(), |buf| {
            buf[HEADER_LEN..].copy_from_slice(block)
        })
    }

    /// Frame buffers reused after the switch and B were done with them.
    fn recycled(&self) -> u64 {
        self.buffers.iter().map(ChunkPool::recycled).sum()
    }

    fn run(
        &mut self,
        a: &MemoryEndpoint,
        shared: &[FlowShared],
        stop: &AtomicBool,
        wait: &SenderWait,
        start: Instant,
    ) {
        let window = WINDOW_FRAMES * self.options.frame_payload() as u32;
        let mut idle_rounds = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut sent_any = false;
            for (flow, flow_shared) in shared.iter().enumerate() {
                let acked = flow_shared.acked.load(Ordering::Acquire);
                if self.next_seq[flow].wrapping_sub(acked) >= window {
                    continue;
                }
                let mut buf = self.buffer(flow);
                let seq = self.next_seq[flow];
                let tsval = start.elapsed().as_millis() as u32;
                write_headers(&mut buf, flow as u16, seq, self.ip_id, tsval);
                let frame = buf.freeze();
                let packet = Packet::with_hdr(self.hdr, frame.clone());
                let mut packet = Some(packet);
                while let Some(p) = packet.take() {
                    let queue = self.queue_of_flow.get(flow).copied().unwrap_or(0);
                    match a.inject_timeout(queue, p, Duration::from_millis(50)) {
                        Ok(()) => {}
                        Err(err @ vswitch_ports::InjectError::Full { .. })
                            if !stop.load(Ordering::Relaxed) =>
                        {
                            packet = Some(err.into_packet());
                        }
                        Err(_) => return,
                    }
                }
                self.buffers[flow].give_back(frame);
                self.next_seq[flow] = seq.wrapping_add(self.options.frame_payload() as u32);
                self.ip_id = self.ip_id.wrapping_add(1);
                self.frames += 1;
                sent_any = true;
            }
            if sent_any {
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                if idle_rounds < SenderWait::SPIN_ROUNDS {
                    std::thread::yield_now();
                } else {
                    wait.park(stop);
                }
            }
        }
    }
}

/// What B found.
#[derive(Debug, Default, Clone, Copy)]
struct ReceiverReport {
    frames: u64,
    frame_bytes: u64,
    payload_bytes: u64,
    errors: u64,
    first_error: Option<&'static str>,
}

impl ReceiverReport {
    fn fail(&mut self, what: &'static str) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// Guest B: verifies every frame and acknowledges verified bytes per flow.
struct Receiver {
    options: DemoOptions,
    blocks: Vec<Vec<u8>>,
    expected: Vec<u32>,
    /// Bytes of each flow verified so far (the stream position of
    /// `expected`, which wraps at 4 GiB while this does not).
    position: Vec<u64>,
    report: ReceiverReport,
    /// A whole TSO frame of some flow was verified since A was last woken.
    frame_done: bool,
}

impl Receiver {
    fn new(options: &DemoOptions) -> Self {
        let payload = options.frame_payload();
        Receiver {
            options: options.clone(),
            blocks: (0..options.flows)
                .map(|f| payload_block(f, payload))
                .collect(),
            expected: (0..options.flows).map(initial_seq).collect(),
            position: vec![0; usize::from(options.flows)],
            report: ReceiverReport::default(),
            frame_done: false,
        }
    }

    fn check(&mut self, packet: &Packet, shared: &[FlowShared]) {
        let frame = &packet.data[..];
        self.report.frames += 1;
        self.report.frame_bytes += frame.len() as u64;
        let layout = match FrameLayout::parse(frame) {
            Ok(layout) if layout.l4 == Some(L4Kind::Tcp) && layout.l3_offset == 14 => layout,
            _ => return self.report.fail("a frame that is not TCP over IPv4"),
        };
        let ip = &frame[14..layout.l4_offset];
        if checksum(ip) != 0 {
            return self.report.fail("an IPv4 header checksum");
        }
        let ip_len = frame.len() - 14;
        if usize::from(u16::from_be_bytes([ip[2], ip[3]])) != ip_len {
            return self.report.fail("an IPv4 total length");
        }
        let tcp = &frame[layout.l4_offset..];
        let pseudo = pseudo_header_ipv4(IP_A, IP_B, 6, tcp.len() as u16);
        let large = packet.hdr.gso_type != GSO_NONE;
        if large {
            // A TSO frame passed through for B to segment: its checksum
            // field must hold the pseudo-header sum, the rest B's far side
            // does.
            if packet.hdr.flags & FLAG_NEEDS_CSUM == 0
                || u16::from_be_bytes([tcp[16], tcp[17]]) != pseudo.sum()
            {
                return self.report.fail("a partial checksum seed");
            }
        } else {
            if ip_len > usize::from(self.options.mtu) {
                return self.report.fail("a frame over the MTU");
            }
            let mut sum = pseudo;
            if packet.hdr.flags & FLAG_NEEDS_CSUM != 0 {
                // B completes checksums itself (csum offload): complete it
                // here as its far side would, then check.
                let seeded = u16::from_be_bytes([tcp[16], tcp[17]]);
                if seeded != pseudo.sum() {
                    return self.report.fail("a partial checksum seed");
                }
            } else if sum.add_bytes(tcp).finish() != 0 {
                return self.report.fail("a TCP checksum");
            }
        }
        let src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        let flow = usize::from(src_port.wrapping_sub(FIRST_PORT));
        if flow >= self.expected.len() {
            return self.report.fail("a frame of an unknown flow");
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        if seq != self.expected[flow] {
            return self
                .report
                .fail("per-flow order (a sequence gap or a reordered segment)");
        }
        let payload = &frame[layout.payload_offset..];
        let block = &self.blocks[flow];
        let offset = (self.position[flow] % block.len() as u64) as usize;
        if block.get(offset..offset + payload.len()) != Some(payload) {
            return self.report.fail("payload bytes");
        }
        self.expected[flow] = seq.wrapping_add(payload.len() as u32);
        let frame_payload = self.options.frame_payload() as u64;
        let before = self.position[flow] / frame_payload;
        self.position[flow] += payload.len() as u64;
        if self.position[flow] / frame_payload != before {
            self.frame_done = true;
        }
        self.report.payload_bytes += payload.len() as u64;
        shared[flow]
            .acked
            .store(self.expected[flow], Ordering::Release);
    }

    /// Verifies frames until the switch is done. An idle B yields a few
    /// times before it blocks on its queue, so a switch worker sending to a
    /// busy B does not pay for a wake-up with every frame.
    fn run(
        &mut self,
        b: &MemoryEndpoint,
        shared: &[FlowShared],
        done: &AtomicBool,
        sender: &SenderWait,
    ) {
        const SPIN_ROUNDS: u32 = 32;
        let mut batch = Vec::with_capacity(1024);
        let mut idle_rounds = 0u32;
        loop {
            batch.clear();
            if b.drain(&mut batch) == 0 {
                if done.load(Ordering::Acquire) {
                    // One last look after the switch stopped.
                    if b.drain(&mut batch) == 0 {
                        return;
                    }
                } else if idle_rounds < SPIN_ROUNDS {
                    idle_rounds += 1;
                    std::thread::yield_now();
                    continue;
                } else if let Some(packet) = b.collect_timeout(Duration::from_millis(5)) {
                    batch.push(packet);
                }
            }
            idle_rounds = 0;
            for packet in batch.drain(..) {
                self.check(&packet, shared);
            }
            // A can only use a whole frame's room: wake it once per
            // frame verified, not once per segment.
            if std::mem::take(&mut self.frame_done) {
                sender.wake();
            }
        }
    }
}

fn progress(line: &str, tty: bool) {
    let mut err = std::io::stderr();
    if tty {
        let _ = write!(err, "\r{line}\x1b[K");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// CPU time one thread of the process used, from the kernel's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The thread's name (`vswitch-worker-0`, `demo-guest-a`, ...).
    pub name: String,
    /// CPU time it ran while A was sending.
    pub cpu: Duration,
}

/// The run time of every thread of this process, by name, from
/// `/proc/self/task/*/schedstat` (nanoseconds on the CPU). Empty where the
/// file is not available.
fn thread_times() -> Vec<(u64, String, Duration)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            out.push((tid, name.trim().to_owned(), Duration::from_nanos(ns)));
        }
    }
    out
}

/// CPU time of each thread between two [`thread_times`] readings, for the
/// threads present in both, busiest first.
fn thread_cpu_between(
    before: &[(u64, String, Duration)],
    after: &[(u64, String, Duration)],
) -> Vec<ThreadCpu> {
    let mut out: Vec<ThreadCpu> = after
        .iter()
        .filter_map(|(tid, name, end)| {
            let start = before.iter().find(|(t, _, _)| t == tid)?.2;
            Some(ThreadCpu {
                name: name.clone(),
                cpu: end.saturating_sub(start),
            })
        })
        .collect();
    out.sort_by(|a, b| b.cpu.cmp(&a.cpu).then_with(|| a.name.cmp(&b.name)));
    out
}

/// What a run of the demo measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The options it ran with.
    pub options: DemoOptions,
    /// How long A sent.
    pub elapsed: Duration,
    /// TCP payload bytes B verified and received in order.
    pub payload_bytes: u64,
    /// Frame bytes B received.
    pub frame_bytes: u64,
    /// Frames B received.
    pub received_frames: u64,
    /// TSO frames A sent.
    pub sent_frames: u64,
    /// A's frame buffers reused after the switch and B were done with them.
    pub recycled: u64,
    /// Segments the switch made in software for B.
    pub segments: u64,
    /// Checksums the switch computed in software for B.
    pub checksums: u64,
    /// Frames each worker handled, in worker order.
    pub worker_frames: Vec<u64>,
    /// Frames a worker took from a queue but handed to the worker of
    /// their flow.
    pub handed_off: u64,
    /// Frames dropped anywhere in the switch.
    pub drops: u64,
    /// Frames that failed B's verification.
    pub errors: u64,
    /// What the first failing frame failed on.
    pub first_error: Option<&'static str>,
    /// CPU time of each thread while A sent (empty where the system does
    /// not say).
    pub threads: Vec<ThreadCpu>,
}

impl DemoReport {
    /// Gbit/s of TCP payload delivered in order.
    pub fn gbits(&self) -> f64 {
        self.payload_bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }

    /// CPU time of the threads whose name starts with `prefix`.
    pub fn cpu_of(&self, prefix: &str) -> Duration {
        self.threads
            .iter()
            .filter(|t| t.name.starts_with(prefix))
            .map(|t| t.cpu)
            .sum()
    }

    /// Nanoseconds of worker CPU per payload byte delivered: the switch's
    /// own cost, apart from the guests'.
    pub fn worker_ns_per_byte(&self) -> f64 {
        self.cpu_of("vswitch-worker").as_nanos() as f64 / self.payload_bytes.max(1) as f64
    }
}

/// Runs the demo with `options` and returns what it measured. With
/// `show_progress`, a progress line is drawn on standard error. An `Err`
/// is a setup failure; verification errors and drops are in the report.
pub fn run_demo(options: &DemoOptions, show_progress: bool) -> Result<DemoReport, String> {
    let options = options.clone();
    let switch = Switch::start(SwitchConfig::default().workers(options.workers))
        .map_err(|e| format!("cannot start the switch: {e}"))?;
    let queue_len = usize::from(options.flows) * WINDOW_FRAMES as usize * 64 + 1024;
    // Both guests have a queue pair per worker, as multi-queue virtio-net
    // guests do, so each worker polls and sends on queues of its own.
    let queues = options.workers.max(1);
    let (port_a, a) = memory_port(
        MemoryPortConfig::new("guest-a")
            .queues(queues, queues)
            .queue_len(queue_len)
            .egress(EgressCapabilities::full(options.mtu)),
    );
    let (port_b, b) = memory_port(
        MemoryPortConfig::new("guest-b")
            .queues(queues, queues)
            .queue_len(queue_len)
            .egress(options.egress_caps()),
    );
    let id_a = switch
        .add_port(Arc::new(port_a), PortProfile::access(VlanId::DEFAULT))
        .map_err(|e| e.to_string())?;
    let id_b = switch
        .add_port(Arc::new(port_b), PortProfile::access(VlanId::DEFAULT))
        .map_err(|e| e.to_string())?;

    let shared: Arc<Vec<FlowShared>> = Arc::new(
        (0..options.flows)
            .map(|f| FlowShared {
                acked: AtomicU32::new(initial_seq(f)),
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sender_waiting = Arc::new(SenderWait::default());
    let start = Instant::now();

    let sender = {
        let (shared, stop, options, wait) = (
            shared.clone(),
            stop.clone(),
            options.clone(),
            sender_waiting.clone(),
        );
        std::thread::Builder::new()
            .name("demo-guest-a".into())
            .spawn(move || {
                let _ = wait.thread.set(std::thread::current());
                let mut sender = Sender::new(&options, id_a);
                sender.run(&a, &shared, &stop, &wait, start);
                (sender.frames, sender.recycled(), a)
            })
            .map_err(|e| e.to_string())?
    };
    let receiver = {
        let (shared, done, options, wait) = (
            shared.clone(),
            done.clone(),
            options.clone(),
            sender_waiting.clone(),
        );
        std::thread::Builder::new()
            .name("demo-guest-b".into())
            .spawn(move || {
                let mut receiver = Receiver::new(&options);
                receiver.run(&b, &shared, &done, &wait);
                receiver.report
            })
            .map_err(|e| e.to_string())?
    };
    let times_at_start = thread_times();

    let tty = show_progress && std::io::stderr().is_terminal();
    let total = Duration::from_secs_f64(options.seconds);
    let tick = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    while start.elapsed() < total {
        std::thread::sleep(tick.min(total.saturating_sub(start.elapsed())));
        if !show_progress {
            continue;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let bytes = switch.port_stats(id_b).map_or(0, |s| s.tx_bytes);
        let filled = ((elapsed / options.seconds) * 30.0).min(30.0) as usize;
        progress(
            &format!(
                "[{}{}] {:>5.1}/{:.1} s  {:>6.2} Gbit/s to B",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                elapsed.min(options.seconds),
                options.seconds,
                bytes as f64 * 8.0 / elapsed / 1e9
            ),
            tty,
        );
    }
    if tty {
        eprintln!();
    }
    let times_at_end = thread_times();
    stop.store(true, Ordering::Relaxed);
    sender_waiting.wake();
    let (sent_frames, recycled, a) = sender.join().map_err(|_| "guest A panicked".to_string())?;
    let send_elapsed = start.elapsed();
    // Let the switch empty its queues, then stop it and let B finish.
    let settle = Instant::now();
    let mut last = u64::MAX;
    while settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        let now = switch.port_stats(id_b).map_or(0, |s| s.tx_frames);
        if now == last {
            break;
        }
        last = now;
    }
    let stats = switch.shutdown();
    drop(a);
    done.store(true, Ordering::Release);
    let report = receiver
        .join()
        .map_err(|_| "guest B panicked".to_string())?;

    let software = stats
        .ports
        .iter()
        .find(|p| p.id == id_b)
        .map(|p| p.stats.software)
        .unwrap_or_default();
    Ok(DemoReport {
        options,
        elapsed: send_elapsed,
        payload_bytes: report.payload_bytes,
        frame_bytes: report.frame_bytes,
        received_frames: report.frames,
        sent_frames,
        recycled,
        segments: software.segments,
        checksums: software.checksums,
        worker_frames: stats.workers.iter().map(|w| w.frames).collect(),
        handed_off: stats.workers.iter().map(|w| w.handed_off).sum(),
        drops: stats.ports.iter().map(|p| p.stats.drops.total()).sum(),
        errors: report.errors,
        first_error: report.first_error,
        threads: thread_cpu_between(&times_at_start, &times_at_end),
    })
}

/// Runs the demo and prints the result. Returns an error when any frame
/// failed verification or was dropped.
pub fn run(options: &DemoOptions) -> Result<(), String> {
    println!(
        "vswitch demo: {} TCP flows of {} KiB TSO frames (MSS {}) from guest A to guest B, \
         B's port offload {:?} at MTU {}, {} worker(s), {:.1} s",
        options.flows,
        (options.frame_payload() + HEADER_LEN) / 1024,
        options.mss(),
        options.egress_offload,
        options.mtu,
        options.workers,
        options.seconds
    );
    let report = run_demo(options, true)?;
    let elapsed = report.elapsed.as_secs_f64();
    let worker_frames: u64 = report.worker_frames.iter().sum();
    let shares: Vec<String> = report
        .worker_frames
        .iter()
        .enumerate()
        .map(|(i, frames)| {
            format!(
                "worker {i}: {:.1}%",
                100.0 * *frames as f64 / worker_frames.max(1) as f64
            )
        })
        .collect();
    println!(
        "  throughput  {:.2} Gbit/s of TCP payload delivered in order \
         ({:.2} GB in {elapsed:.2} s; {:.2} Gbit/s of frames at B)",
        report.gbits(),
        report.payload_bytes as f64 / 1e9,
        report.frame_bytes as f64 * 8.0 / elapsed / 1e9
    );
    println!(
        "  frames      A sent {} TSO frames ({:.0}/s, {} buffers recycled); \
         B received {} frames ({:.2} M/s)",
        report.sent_frames,
        report.sent_frames as f64 / elapsed,
        report.recycled,
        report.received_frames,
        report.received_frames as f64 / elapsed / 1e6
    );
    println!(
        "  software    {} segments and {} checksums made by the switch",
        report.segments, report.checksums
    );
    println!(
        "  workers     {} ({} frames handed between workers)",
        shares.join(", "),
        report.handed_off
    );
    if !report.threads.is_empty() {
        let percent = |cpu: Duration| 100.0 * cpu.as_secs_f64() / elapsed;
        // Thread names are cut to 15 characters by the system, so the
        // workers are told apart by position only.
        let workers: Vec<String> = report
            .threads
            .iter()
            .filter(|t| t.name.starts_with("vswitch-worker"))
            .map(|t| format!("{:.0}%", percent(t.cpu)))
            .collect();
        let cpu = [
            format!("workers {}", workers.join(" + ")),
            format!("guest A {:.0}%", percent(report.cpu_of("demo-guest-a"))),
            format!(
                "guest B (verifying) {:.0}%",
                percent(report.cpu_of("demo-guest-b"))
            ),
        ];
        println!("  cpu         {} (of one core each)", cpu.join(", "));
        let worker_cpu = report.cpu_of("vswitch-worker").as_secs_f64();
        if report.segments > 0 && worker_cpu > 0.0 {
            println!(
                "  switch cost {:.3} ns of worker CPU per payload byte, {:.0} ns per segment \
                 ({:.1} Gbit/s per busy worker core)",
                report.worker_ns_per_byte(),
                worker_cpu * 1e9 / report.segments as f64,
                report.payload_bytes as f64 * 8.0 / worker_cpu / 1e9
            );
        }
    }
    println!("  drops       {} (expected 0)", report.drops);
    match report.first_error {
        None => println!(
            "  verified    every frame at B: checksums, MTU, per-flow order, payload bytes: 0 errors"
        ),
        Some(first) => println!(
            "  verified    {} frames FAILED verification at B; the first failed on {first}",
            report.errors
        ),
    }
    if report.errors > 0 || report.drops > 0 {
        return Err(format!(
            "{} verification errors, {} drops",
            report.errors, report.drops
        ));
    }
    if report.payload_bytes == 0 {
        return Err("no payload reached B".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn frames_are_whole_segments_within_64_kib() {
        let o = DemoOptions::default();
        assert_eq!(o.mss(), 1448);
        assert_eq!(o.frame_payload() % o.mss(), 0);
        assert!(o.frame_payload() + 52 <= 65_535);
    }

    #[test]
    fn each_flow_is_sent_on_the_queue_its_worker_polls() {
        for workers in 1..=4 {
            for port in 0..3 {
                for flow in 0..16 {
                    let queue = queue_for_flow(flow, PortId(port), workers);
                    assert!(queue < workers);
                    let mut frame = vec![0u8; HEADER_LEN + 100];
                    write_headers(&mut frame, flow, 1234, 9, 5);
                    let worker = worker_for_hash(flow_hash_of_bytes(&frame).unwrap(), workers);
                    assert_eq!((port as usize + queue) % workers, worker);
                }
            }
        }
    }

    #[test]
    fn a_frame_buffer_is_reused_once_the_switch_and_b_are_done_with_it() {
        let options = DemoOptions {
            flows: 2,
            ..DemoOptions::default()
        };
        let mut sender = Sender::new(&options, PortId(0));
        let block = sender.blocks[1].clone();
        let first = sender.buffer(1);
        assert_eq!(
            &first[HEADER_LEN..],
            &block[..],
            "a new buffer has the payload"
        );
        let sent = first.freeze();
        let held = sent.clone();
        sender.buffers[1].give_back(sent);

        // While the switch or B holds the frame, A writes into another.
        let second = sender.buffer(1);
        assert_ne!(second.as_ptr(), held.as_ptr());
        assert_eq!(&second[HEADER_LEN..], &block[..]);
        sender.buffers[1].give_back(second.freeze());

        let at = held.as_ptr();
        drop(held);
        let mut again = sender.buffer(1);
        assert_eq!(again.as_ptr(), at);
        assert_eq!(&again[HEADER_LEN..], &block[..], "the payload is kept");
        write_headers(&mut again, 1, 5, 6, 7);
        assert_eq!(checksum(&again[14..34]), 0);
        assert_eq!(sender.recycled(), 1);
        assert_eq!(
            sender.buffers[0].allocated(),
            0,
            "flows keep their own buffers"
        );
    }

    #[test]
    fn headers_carry_a_valid_ip_checksum_and_the_pseudo_header_seed() {
        let mut frame = vec![0u8; HEADER_LEN + 1000];
        write_headers(&mut frame, 3, 77, 5, 0);
        let layout = FrameLayout::parse(&frame).unwrap();
        assert_eq!(layout.payload_offset, HEADER_LEN);
        assert_eq!(checksum(&frame[14..34]), 0);
        let seed = u16::from_be_bytes([frame[50], frame[51]]);
        assert_eq!(seed, pseudo_header_ipv4(IP_A, IP_B, 6, 1032).sum());
    }
}
