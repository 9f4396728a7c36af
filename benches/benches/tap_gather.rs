//! Zero-copy against copy mode where the port gathers: the segments of a
//! 64 KiB TCP/IPv4 TSO frame written to a real TAP device with writev.
//!
//! Method. The bench makes two network namespaces, each with one TAP device
//! (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, no offloads, MTU 1500) opened with
//! the project's own `TapPort`, one per way the kernel takes in what is
//! written: `per_frame` (each write runs the kernel's receive path inside
//! it) and `coalesced` (IFF_NAPI, so GRO verifies the checksums and merges
//! the segments first; the switch's default). The frame is what a Linux
//! guest hands over (GSO TCPV4, MSS 1448, NEEDS_CSUM with the pseudo-header
//! seed in the TCP checksum field, TCP timestamps, 65483 payload bytes). It
//! is checked once as the switch checks it at ingress, the egress decision
//! for the port is taken once (`adapt::decide`: segment to MTU 1500), and
//! then every measured frame is cut into 46 segments and written, one
//! writev per segment behind an all-zero virtio-net header:
//!
//! - `copy` (A): `Segmenter::segment_copy` into a `SegmentList` copies and
//!   checksums each payload into a contiguous segment in one pass; writev
//!   takes the header and the segment;
//! - `zero_copy` (B): `Segmenter::segment_zero_copy` into a `SegmentList`
//!   writes only the headers and sums each payload where it lies; writev
//!   takes the header, the segment's headers and the payload slice of the
//!   original frame.
//!
//! Either way the TUN driver copies every byte once in `tun_get_user`. The
//! measured frames are addressed to another host's MAC, so the stack drops
//! them in `ip_rcv` after that copy (and, on the coalesced device, after
//! GRO).
//!
//! Before timing, the bench checks that the kernel accepts what each mode
//! writes, on both devices: one frame's segments, addressed to the
//! namespace's own address and a closed port, must leave TCP's
//! `InCsumErrors` and IP's `InHdrErrors` (read from `/proc/net/snmp` in the
//! namespace) where they were, and on the per-frame device every segment
//! must be answered with a reset (`OutRsts`), which TCP sends only once the
//! checksum has passed. One segment with a payload byte flipped must raise
//! `InCsumErrors`: the counter is read from the right place.
//!
//! Timing. Rounds of samples of `TAP_GATHER_FRAMES` frames (default 100);
//! in each of `TAP_GATHER_ROUNDS` rounds (default 30) every candidate runs
//! one sample, in an order that rotates from round to round, so load from
//! other processes falls on all of them. A sample records its wall time,
//! the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`: user and kernel;
//! receive work the kernel defers to ksoftirqd is not in it) and the time
//! spent in the segmenter. The table gives min/median/max per frame over
//! the rounds, and the ratios B/A taken pair by pair within each round.
//! memcpy of the same 64 KiB frame runs in the same rounds: the physical
//! floor, and about what zero-copy can save at most. Criterion then times
//! one frame of each candidate.
//!
//! Needs root, the `ip` command and /dev/net/tun; without them it prints
//! why and exits 0. Nothing here asserts a time.
//!
//! ```text
//! cargo bench -p vswitch-benches --bench tap_gather -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use vswitch_offload::adapt::{decide, Action};
use vswitch_offload::checksum::pseudo_header_ipv4;
use vswitch_offload::segment::{OutputMode, SegmentList, Segmenter};
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
use vswitch_offload::{CheckedFrame, FrameLayout, GsoKind, Packet, VirtioNetHdr};
use vswitch_ports::tap::{KernelReceive, TapConfig, TapOffloads, TapPort, TapQueue};
use vswitch_ports::tap::{TAP_MAX_FRAME, TAP_VNET_HDR_LEN};
use vswitch_ports::Port;
use vswitch_tests::{netns_unavailable, NetNs};

const MSS: u16 = 1448;
const MTU: u16 = 1500;
/// TCP payload of the frame: the largest IPv4 packet, less IPv4 (20) and
/// TCP with timestamps (32).
const PAYLOAD: usize = 65_535 - 20 - 32;
const SEGMENTS: usize = PAYLOAD.div_ceil(MSS as usize);

const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Another host on the segment: the kernel drops frames sent to it.
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const TAP_IP: [u8; 4] = [198, 18, 0, 1];
const GUEST_IP: [u8; 4] = [198, 18, 0, 2];
/// Nothing listens there, so TCP answers every valid segment with a reset.
const CLOSED_PORT: u16 = 9;

/// The segments leave with their checksums complete: no offload asked.
const PLAIN_HDR: [u8; TAP_VNET_HDR_LEN] = [0; TAP_VNET_HDR_LEN];

/// A frame checked as the switch checks it at ingress, with the
/// segmentation the egress decision asks for this port.
struct Frame {
    data: Bytes,
    layout: FrameLayout,
    gso: GsoKind,
}

/// A 64 KiB TSO frame to `dst_mac` as a Linux guest sends it: the TCP
/// checksum field holds the pseudo-header sum over the full TCP length.
fn guest_frame(dst_mac: [u8; 6], port: &TapPort) -> Frame {
    let tcp_len = 32 + PAYLOAD;
    let ip_len = 20 + tcp_len;
    let mut f = vec![0u8; 14 + ip_len];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
    f[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&GUEST_IP);
    f[30..34].copy_from_slice(&TAP_IP);
    f[34..36].copy_from_slice(&40_000u16.to_be_bytes());
    f[36..38].copy_from_slice(&CLOSED_PORT.to_be_bytes());
    f[38..42].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    f[42..46].copy_from_slice(&7u32.to_be_bytes());
    f[46] = 8 << 4; // data offset: 32 bytes
    f[47] = 0x18; // PSH | ACK
    f[48..50].copy_from_slice(&501u16.to_be_bytes());
    let seed = pseudo_header_ipv4(GUEST_IP, TAP_IP, 6, tcp_len as u16).sum();
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    f[54..66].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[66..].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let hdr = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let checked = CheckedFrame::check(Packet::with_hdr(hdr, f)).expect("a valid guest frame");
    let plan = checked.plan();
    let caps = port.capabilities().egress;
    let Ok(Action::Segment(gso)) = decide(&checked, &caps) else {
        panic!("a TSO frame to a TAP without offloads is segmented");
    };
    Frame {
        data: checked.data().clone(),
        layout: *plan.layout().expect("a TCP frame has a layout"),
        gso,
    }
}

/// One output mode: a segmenter and a segment list, reused frame to frame.
struct Writer {
    mode: OutputMode,
    segmenter: Segmenter,
    list: SegmentList,
}

impl Writer {
    fn new(mode: OutputMode) -> Self {
        Writer {
            mode,
            segmenter: Segmenter::default(),
            list: SegmentList::with_capacity(2 * TAP_MAX_FRAME, 64),
        }
    }

    fn name(&self) -> &'static str {
        match self.mode {
            OutputMode::Copy => "copy",
            OutputMode::ZeroCopy => "zero_copy",
        }
    }

    /// Segments `frame` into the list, returning the time it took.
    fn segment(&mut self, frame: &Frame) -> Duration {
        let start = Instant::now();
        self.list.clear();
        self.segmenter
            .segment(
                &frame.data,
                &frame.layout,
                frame.gso,
                self.mode,
                &mut self.list,
            )
            .expect("the frame segments");
        start.elapsed()
    }

    /// Writes every segment in the list to `queue`, one writev each: the
    /// header and the segment, or the header, the segment's headers and its
    /// payload slice.
    fn write(&self, queue: &TapQueue) -> io::Result<()> {
        for segment in self.list.iter() {
            let parts = [segment.head, segment.payload];
            let parts = if segment.is_scatter_gather() {
                &parts[..]
            } else {
                &parts[..1]
            };
            if !queue.send(&PLAIN_HDR, parts)? {
                return Err(io::Error::other("the TAP refused a write (queue full)"));
            }
        }
        Ok(())
    }

    /// One frame: segment, then write.
    fn send(&mut self, queue: &TapQueue, frame: &Frame) -> Duration {
        let engine = self.segment(frame);
        self.write(queue).expect("the TAP takes the segments");
        engine
    }
}

/// One TAP device in its own namespace. The port is dropped (and the
/// device with it) before the namespace.
struct Device {
    name: &'static str,
    port: TapPort,
    ns: NetNs,
}

impl Device {
    fn open(name: &'static str, prefix: &str, receive: KernelReceive) -> io::Result<Self> {
        let ns = NetNs::new(&format!("vswb-{prefix}"))?;
        let ifname = format!("{prefix}{}", std::process::id());
        let config = TapConfig::new(TapOffloads::NONE).mtu(MTU).receive(receive);
        let port = TapPort::open_with(&ifname, config)?;
        let device = Device { name, port, ns };
        device.ns.adopt(&ifname)?;
        let hex = |mac: [u8; 6]| mac.map(|b| format!("{b:02x}")).join(":");
        let ip = |a: [u8; 4]| a.map(|b| b.to_string()).join(".");
        let (mac, guest_mac) = (hex(TAP_MAC), hex(GUEST_MAC));
        let (tap_ip, guest_ip) = (ip(TAP_IP), ip(GUEST_IP));
        for command in [
            format!("ip link set dev {ifname} address {mac} mtu {MTU}"),
            format!("ip addr add {tap_ip}/24 dev {ifname}"),
            format!("ip link set dev {ifname} up"),
            // The resets TCP sends back need no ARP round trip.
            format!("ip neigh replace {guest_ip} lladdr {guest_mac} dev {ifname} nud permanent"),
        ] {
            let argv: Vec<&str> = command.split_whitespace().collect();
            device.ns.exec(&argv)?;
        }
        Ok(device)
    }

    fn queue(&self) -> &TapQueue {
        &self.port.queues()[0]
    }

    /// Reads and drops what the kernel sent out of the device (resets).
    fn drain(&self) {
        let mut hdr = [0u8; TAP_VNET_HDR_LEN];
        let mut buf = vec![0u8; TAP_MAX_FRAME];
        while let Ok(Some(_)) = self.queue().recv(&mut hdr, &mut buf) {}
    }
}

/// The namespace's IP and TCP counters (`/proc/net/snmp`).
struct Snmp(String);

impl Snmp {
    fn read(ns: &NetNs) -> Snmp {
        Snmp(
            ns.exec(&["cat", "/proc/net/snmp"])
                .expect("read /proc/net/snmp"),
        )
    }

    /// Counter `field` of `proto` (`Ip`, `Tcp`): a line of names followed
    /// by a line of values.
    fn get(&self, proto: &str, field: &str) -> u64 {
        let prefix = format!("{proto}:");
        let mut lines = self.0.lines().filter(|line| line.starts_with(&prefix));
        let (names, values) = (lines.next(), lines.next());
        names
            .zip(values)
            .and_then(|(names, values)| {
                let at = names.split_whitespace().position(|name| name == field)?;
                values.split_whitespace().nth(at)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("{proto} {field} in /proc/net/snmp"))
    }

    /// How much each counter grew since `before`.
    fn delta(&self, before: &Snmp, proto: &str, field: &str) -> u64 {
        self.get(proto, field) - before.get(proto, field)
    }
}

/// Sends one frame's segments to the kernel's own address in each mode and
/// checks, from its counters, that the kernel found every checksum right;
/// then that a corrupted segment is counted, so the check can fail.
fn verify(devices: &[Device], writers: &mut [Writer]) {
    let settle = || std::thread::sleep(Duration::from_millis(50));
    for device in devices {
        let frame = guest_frame(TAP_MAC, &device.port);
        for writer in writers.iter_mut() {
            let before = Snmp::read(&device.ns);
            writer.send(device.queue(), &frame);
            settle();
            let after = Snmp::read(&device.ns);
            let (segs, rsts) = (
                after.delta(&before, "Tcp", "InSegs"),
                after.delta(&before, "Tcp", "OutRsts"),
            );
            let csum = after.delta(&before, "Tcp", "InCsumErrors");
            let ip = after.delta(&before, "Ip", "InHdrErrors");
            println!(
                "verify {:<9} {:<9}: {} segments written; kernel TCP InSegs +{segs}, OutRsts +{rsts}, \
                 InCsumErrors +{csum}; IP InHdrErrors +{ip}",
                device.name,
                writer.name(),
                writer.list.len()
            );
            assert_eq!(writer.list.len(), SEGMENTS);
            assert_eq!((csum, ip), (0, 0), "the kernel found bad checksums");
            if device.port.kernel_receive() == KernelReceive::PerFrame {
                assert_eq!(
                    (segs, rsts),
                    (SEGMENTS as u64, SEGMENTS as u64),
                    "every segment reaches TCP and passes its checksum"
                );
            } else {
                assert!(segs > 0 && rsts > 0, "the segments reach TCP");
            }
            device.drain();
        }
    }
    let (copy, zero) = (&writers[0].list, &writers[1].list);
    assert!(
        copy.iter()
            .zip(zero.iter())
            .all(|(a, b)| a.to_vec() == b.to_vec()),
        "both modes write the same bytes"
    );
    let device = &devices[0];
    let mut bad = copy.get(1).expect("a second segment").to_vec();
    *bad.last_mut().expect("payload") ^= 0x40;
    let before = Snmp::read(&device.ns);
    device.queue().send(&PLAIN_HDR, &[&bad]).expect("write");
    settle();
    let after = Snmp::read(&device.ns);
    let csum = after.delta(&before, "Tcp", "InCsumErrors");
    println!(
        "verify {:<9} corrupted: kernel TCP InCsumErrors +{csum}",
        device.name
    );
    assert_eq!(csum, 1, "a corrupted segment raises InCsumErrors");
}

#[allow(unsafe_code)]
mod cpu {
    //! The calling thread's CPU time.
    use std::time::Duration;

    /// This thread's CPU time so far, user and kernel, to the nanosecond
    /// (`CLOCK_THREAD_CPUTIME_ID` adds the time since the last tick, which
    /// `/proc/thread-self/schedstat` does not).
    pub fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, exclusively borrowed timespec on this
        // stack, which clock_gettime only writes; the clock id is a constant
        // every Linux kernel since 2.6.12 has.
        let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(ret, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}
use cpu::thread_cpu;

/// Per-frame figures of one sample.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    engine: Duration,
}

/// What one sample runs.
enum Candidate<'a> {
    Memcpy(&'a Frame, Vec<u8>),
    Tap(&'a Device, Box<Writer>, Frame),
}

impl Candidate<'_> {
    fn name(&self) -> String {
        match self {
            Candidate::Memcpy(..) => "memcpy 64 KiB".into(),
            Candidate::Tap(device, writer, _) => format!("{:<10} {}", device.name, writer.name()),
        }
    }

    /// Runs `frames` frames and returns the figures per frame.
    fn sample(&mut self, frames: usize) -> Sample {
        let (cpu, start) = (thread_cpu(), Instant::now());
        let mut engine = Duration::ZERO;
        match self {
            Candidate::Memcpy(frame, dst) => {
                for _ in 0..frames {
                    dst.copy_from_slice(black_box(&frame.data));
                    black_box(&dst);
                }
            }
            Candidate::Tap(device, writer, frame) => {
                for _ in 0..frames {
                    engine += writer.send(device.queue(), frame);
                }
            }
        }
        let per = |d: Duration| d / frames as u32;
        Sample {
            wall: per(start.elapsed()),
            cpu: per(thread_cpu() - cpu),
            engine: per(engine),
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Min, median and max.
fn spread(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    [
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    ]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print_table(devices: &[Device], interrupted: &AtomicBool) {
    let rounds = env_or("TAP_GATHER_ROUNDS", 30).max(1);
    let frames = env_or("TAP_GATHER_FRAMES", 100).max(1);
    let floor = guest_frame(OTHER_MAC, &devices[0].port);
    let mut candidates = vec![Candidate::Memcpy(&floor, vec![0; floor.data.len()])];
    for device in devices {
        for mode in [OutputMode::Copy, OutputMode::ZeroCopy] {
            let frame = guest_frame(OTHER_MAC, &device.port);
            candidates.push(Candidate::Tap(device, Box::new(Writer::new(mode)), frame));
        }
    }
    for candidate in &mut candidates {
        candidate.sample(frames);
    }
    let mut samples: Vec<Vec<Sample>> = candidates.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..candidates.len() {
            if interrupted.load(Ordering::Relaxed) {
                println!("interrupted");
                return;
            }
            let i = (round + k) % candidates.len();
            samples[i].push(candidates[i].sample(frames));
        }
    }

    println!(
        "\ntap_gather: 64 KiB TCP/IPv4 TSO frame ({PAYLOAD} payload bytes) in {SEGMENTS} segments \
         of MSS {MSS} through a TAP (MTU {MTU}, no offloads); {rounds} rounds of {frames} frames, \
         interleaved; per frame, min/median/max"
    );
    println!(
        "{:<21} {:>22} {:>22} {:>9} {:>9} {:>8} {:>8}",
        "", "wall us", "cpu us", "engine", "kernel", "Gbit/s", "Mseg/s"
    );
    let row = |name: &str, s: &[Sample]| {
        let [w0, w, w1] = spread(s.iter().map(|s| us(s.wall)).collect());
        let [c0, c, c1] = spread(s.iter().map(|s| us(s.cpu)).collect());
        let [_, e, _] = spread(s.iter().map(|s| us(s.engine)).collect());
        let (gbps, mseg) = (PAYLOAD as f64 * 8.0 / w / 1e3, SEGMENTS as f64 / w);
        let kernel = if e > 0.0 {
            format!("{:.1}", c - e)
        } else {
            "-".into()
        };
        println!(
            "{name:<21} {w0:>6.1} {w:>7.1} {w1:>7.1} {c0:>6.1} {c:>7.1} {c1:>7.1} {e:>9.1} {kernel:>9} \
             {gbps:>8.1} {mseg:>8.2}"
        );
    };
    for (candidate, s) in candidates.iter().zip(&samples) {
        row(&candidate.name(), s);
    }
    let [_, memcpy, _] = spread(samples[0].iter().map(|s| us(s.wall)).collect());
    println!(
        "\nB/A = zero_copy over copy, pair by pair in each round (throughput above 1 and CPU below 1: \
         zero-copy pays); saved = copy - zero_copy, median CPU us per frame, against one memcpy"
    );
    for (d, device) in devices.iter().enumerate() {
        let (a, b) = (&samples[1 + 2 * d], &samples[2 + 2 * d]);
        let pair = |f: fn(&Sample, &Sample) -> f64| {
            spread(a.iter().zip(b).map(|(a, b)| f(a, b)).collect())
        };
        let [t0, t, t1] = pair(|a, b| a.wall.as_secs_f64() / b.wall.as_secs_f64());
        let [c0, c, c1] = pair(|a, b| b.cpu.as_secs_f64() / a.cpu.as_secs_f64());
        let [_, saved, _] = pair(|a, b| us(a.cpu) - us(b.cpu));
        let [_, engine, _] = pair(|a, b| us(a.engine) - us(b.engine));
        let [_, kernel, _] =
            pair(|a, b| us(a.cpu.saturating_sub(a.engine)) - us(b.cpu.saturating_sub(b.engine)));
        println!(
            "{:<10} throughput B/A {t0:.3} {t:.3} {t1:.3}   CPU B/A {c0:.3} {c:.3} {c1:.3}   \
             saved {saved:.1} us: engine {engine:.1}, kernel {kernel:.1} (memcpy {memcpy:.1} us)",
            device.name
        );
    }
    println!();
}

fn bench_tap(c: &mut Criterion, devices: &[Device], interrupted: &AtomicBool) {
    let mut group = c.benchmark_group("tap_gather_64k_mss1448");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for device in devices {
        let frame = guest_frame(OTHER_MAC, &device.port);
        for mode in [OutputMode::Copy, OutputMode::ZeroCopy] {
            let mut writer = Writer::new(mode);
            let id = format!("{}/{}", writer.name(), device.name);
            group.bench_function(id, |b| {
                b.iter(|| {
                    // Unwinding drops the devices and namespaces.
                    assert!(!interrupted.load(Ordering::Relaxed), "interrupted");
                    writer.send(device.queue(), &frame)
                })
            });
        }
    }
    let frame = guest_frame(OTHER_MAC, &devices[0].port);
    let mut dst = vec![0u8; frame.data.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&frame.data)))
    });
    group.finish();
}

/// Deletes the namespaces a run of this bench left behind when it was
/// killed: their names end in the id of a process that is gone.
fn remove_stale_namespaces() {
    let Ok(list) = vswitch_tests::run(std::process::Command::new("ip").args(["netns", "list"]))
    else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let pid = ["vswb-tgp", "vswb-tgn"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .filter(|pid| pid.parse::<u32>().is_ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let del = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
            drop(del);
        }
    }
}

fn main() {
    if let Some(reason) = netns_unavailable() {
        println!("tap_gather: skipping: {reason}");
        return;
    }
    remove_stale_namespaces();
    let interrupted = vswitch_ports::tap::termination_flag().expect("signal handlers");
    let open = || -> io::Result<Vec<Device>> {
        Ok(vec![
            Device::open("per_frame", "tgp", KernelReceive::PerFrame)?,
            Device::open("coalesced", "tgn", KernelReceive::default())?,
        ])
    };
    let devices = match open() {
        Ok(devices) => devices,
        Err(err) => {
            println!("tap_gather: skipping: cannot set up the TAP devices: {err}");
            return;
        }
    };
    let mut writers = [
        Writer::new(OutputMode::Copy),
        Writer::new(OutputMode::ZeroCopy),
    ];
    verify(&devices, &mut writers);
    // `cargo bench` passes --bench; `cargo test --benches` does not, and then
    // only the check and criterion's quick test mode run.
    if std::env::args().any(|arg| arg == "--bench") {
        print_table(&devices, interrupted);
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench_tap(&mut criterion, &devices, interrupted);
    criterion.final_summary();
}
