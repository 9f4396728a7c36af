//! Two vhost-user frontends in this process drive the switch over the
//! real protocol and real shared memory, with no VM: guest A's memory and
//! guest B's are files in /dev/shm that the frontend maps and hands to the
//! backend with `SET_MEM_TABLE`, as QEMU does with a `memory-backend-memfd`,
//! and the rings are the guests' split virtqueues in that memory (the
//! project's mock driver). A sends 16 TCP flows of 64 KiB TSO frames with
//! partial checksums; the switch forwards them to B, which verifies every
//! byte: with `GUEST_TSO4` B takes each frame whole in 4 KiB mergeable
//! buffers (the switch passes it through), without it B's port cuts it to
//! B's MTU and computes every checksum, and B checks each segment's
//! checksums and payload. A keeps at most 24 frames in flight to B, as a
//! TCP window would, and B's posted buffers hold them all, so nothing is
//! dropped by design (drops, and frames that never arrive, are printed;
//! through the switch they fail the run).
//!
//! Against the physical limit measured in the same run: memcpy of the same
//! bytes, 64 KiB at a time, three ways. `hot` copies one frame-sized
//! buffer to another again and again, so both stay in the nearest cache;
//! `same` copies the flows' frames in turn into 4 KiB pieces of a 16 MiB
//! area, round-robin, as the bytes move here into B's buffers: out of L2,
//! which costs about three times `hot` on this machine. `pipe` is the
//! copier thread's CPU when nothing but that copy runs between two
//! guest-memory mappings, with a second thread reading each buffer back
//! as B does: the floor for a switch that copies each byte once, here,
//! since its source is cold and its destination was last read on the
//! other core. The goal for the TSO case is at most 1.25 (0.8x the memcpy
//! rate).
//!
//! Two measures are set against memcpy. The time: B's last frame, from
//! A's first send. And the peer's CPU time, read from each thread's
//! `/proc/.../schedstat` up to B's last frame: the switch's threads (every
//! thread of this process but the two frontends'), or testpmd's process.
//! The frontends' own CPU time is printed beside it (`front CPU`). On two
//! cores the time holds every thread's work, the frontends' too (B reads
//! and compares every byte), so the CPU ratio is what says how much the
//! switch itself spends per byte. And against the userspace peer, where `dpdk-testpmd` is
//! installed (scripts/guest/install-deps.sh) and may run (root): the same
//! frontends through DPDK's vhost PMD, two `net_vhost` ports with TSO in
//! io forwarding, with TSO passed through (io forwarding neither cuts nor
//! checksums). Its forwarding lcore polls CPU 0 the whole time. It drops
//! what finds B short of buffers, so some frames go missing there; its
//! time is counted up to the last frame B had.
//!
//! The switch runs twice: copying each transmitted frame into host memory
//! (the default), and with its ports lending large payloads
//! (`VhostUserConfig::lend_payloads`), the receiver's port reading them
//! straight out of A's memory.
//!
//! Every thread (both frontends, the backend's queue threads, the switch's
//! worker) shares this machine's cores, and the frontends' own work
//! (posting, reaping, B's verification) is in the time, as a guest's would
//! be. Nothing here asserts a time.
//!
//! ```text
//! cargo bench -p vswitch-benches --bench vhost_user_protocol
//! ```
//! `VHOST_USER_PROTOCOL_FRAMES` sets the frames per case (default 20000;
//! as a test, without `--bench`, 300, which checks every byte and that
//! nothing was dropped, and measures nothing).
//! `VHOST_USER_PROTOCOL_ONLY=lending` (any part of a row's label) runs only
//! the rows whose label holds it, for a profiler.
//! `VHOST_USER_PROTOCOL_WINDOW=1` keeps one frame in flight instead of 24,
//! so that each waits for the one before: a measure of latency.
//!
//! The frontends notify as a Linux virtio-net driver does where the peer
//! offers `VIRTIO_RING_F_EVENT_IDX` (both do): a kick only where the
//! ring's `avail_event` asks for one, a signal asked for (`used_event`)
//! only before the frontend sleeps. `VHOST_USER_PROTOCOL_EVENT_IDX=0`
//! leaves the bit unacked: then every batch is kicked unless the used
//! ring's `NO_NOTIFY` flag says not to, and every used update signalled.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_benches::virtio_chain;
use vswitch_offload::testing::FrameBuilder;
use vswitch_ports::features::Features;
use vswitch_ports::guest::mock::{Desc, DriverQueue};
use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};
use vswitch_ports::Port;

/// Each guest's memory.
const MEM_LEN: usize = 32 << 20;
/// Descriptors per virtqueue. (With 1024, testpmd 22.11's vhost PMD took
/// A's frames and sent none to B.)
const QUEUE_LEN: u16 = 512;
/// The receive ring's table and rings, then the transmit ring's.
const RX_RINGS: u64 = 0;
const TX_RINGS: u64 = 0x4_0000;
/// Where buffers are: the transmit frames (one per flow), or B's receive
/// buffers, reused round-robin and not cleared. The area holds 4093 of
/// them, a number prime to a frame's 16, so a buffer is next used at
/// another offset of a frame, where the payload pattern (period 251)
/// differs: a byte the device failed to write cannot pass as written.
const DATA: u64 = 0x10_0000;
const DATA_LEN: u64 = 4093 * RX_BUFFER as u64;
/// The virtio-net header with `VERSION_1` or `MRG_RXBUF`.
const HDR_LEN: usize = 12;
const FLOWS: usize = 16;
const PAYLOAD: usize = 64_000;
const MSS: u16 = 1448;
/// Receive buffers, and the frames A keeps in flight toward B: a window
/// B's posted buffers hold whole (24 frames of 16 buffers), so that a peer
/// that drops what finds no buffer (testpmd's io forwarding) drops nothing
/// while B keeps up.
const RX_BUFFER: u32 = 4096;
const RX_POSTED: usize = 500;
const WINDOW: u64 = 24;

/// The frames A keeps in flight: [`WINDOW`], or fewer as
/// `VHOST_USER_PROTOCOL_WINDOW` says (1 makes each frame wait for the one
/// before: the time is then the path's latency, wake-ups and all).
fn window() -> u64 {
    std::env::var("VHOST_USER_PROTOCOL_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WINDOW)
        .clamp(1, WINDOW)
}
/// Whether the frontends ack `VIRTIO_RING_F_EVENT_IDX` where it is
/// offered: unless `VHOST_USER_PROTOCOL_EVENT_IDX=0`.
fn wants_event_idx() -> bool {
    std::env::var("VHOST_USER_PROTOCOL_EVENT_IDX").map_or(true, |v| v != "0")
}
/// `VIRTIO_RING_F_EVENT_IDX` among the feature bits.
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// `VHOST_USER_F_PROTOCOL_FEATURES` among the feature bits.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// The Ethernet, IPv4 and TCP headers of A's frames.
const HEADERS: usize = 54;

const SRC_IP: [u8; 4] = [198, 18, 0, 1];
const DST_IP: [u8; 4] = [198, 18, 0, 2];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

/// A guest's memory: a file in /dev/shm, unlinked at once, mapped here.
struct GuestMem {
    file: File,
    mem: GuestMemoryMmap,
}

impl GuestMem {
    fn new(name: &str) -> GuestMem {
        let path = PathBuf::from(format!(
            "/dev/shm/vswitch-bench-{}-{name}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("a file in /dev/shm for guest memory");
        std::fs::remove_file(&path).expect("unlink the guest memory file");
        file.set_len(MEM_LEN as u64)
            .expect("size the guest memory file");
        let offset = FileOffset::new(file.try_clone().expect("dup the memory file"), 0);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_LEN,
            Some(offset),
        )])
        .expect("map guest memory");
        GuestMem { file, mem }
    }

    /// Where guest address 0 is mapped in this process.
    fn host_base(&self) -> u64 {
        self.mem
            .get_host_address(GuestAddress(0))
            .expect("mapped memory") as u64
    }
}

/// A connected frontend: the protocol set up, both rings running.
struct Attached {
    _frontend: Frontend,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    /// `VIRTIO_RING_F_EVENT_IDX` was acked.
    event_idx: bool,
}

/// Kicks ring `index` of `front`, whose driver side is `ring`, if the
/// device asked for the chains made available since the available index
/// was `kicked_at` (as a Linux driver decides), and moves `kicked_at` on.
fn kick_if_asked(
    ring: &DriverQueue<'_, GuestMemoryMmap>,
    kicked_at: &mut u16,
    front: &Attached,
    index: usize,
) {
    if ring.needs_kick(*kicked_at, front.event_idx) {
        front.kick[index].write(1).expect("a kick");
    }
    *kicked_at = ring.avail_idx();
}

/// Attaches a frontend for `memory` to the backend at `socket`, acking
/// `wanted` (within what it offers), with the rings `queues` lays out.
fn attach(
    socket: &Path,
    memory: &GuestMem,
    wanted: Features,
    queues: [&DriverQueue<'_, GuestMemoryMmap>; 2],
) -> Attached {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut frontend = loop {
        match Frontend::connect(socket, 2) {
            Ok(frontend) => break frontend,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("connect to {}: {err}", socket.display()),
        }
    };
    frontend.set_owner().expect("SET_OWNER");
    let offered = frontend.get_features().expect("GET_FEATURES");
    let ring = if wants_event_idx() { EVENT_IDX } else { 0 };
    let acked = (wanted.bits() & offered) | (offered & (PROTOCOL_FEATURES | ring));
    frontend.set_features(acked).expect("SET_FEATURES");
    if acked & PROTOCOL_FEATURES != 0 {
        frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::empty())
            .expect("SET_PROTOCOL_FEATURES");
    }
    let base = memory.host_base();
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_LEN as u64,
            userspace_addr: base,
            mmap_offset: 0,
            mmap_handle: memory.file.as_raw_fd(),
        }])
        .expect("SET_MEM_TABLE");
    let new_fd = || EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let (kick, call) = ([new_fd(), new_fd()], [new_fd(), new_fd()]);
    for (index, queue) in queues.iter().enumerate() {
        let (desc, avail, used) = queue.ring_addresses();
        frontend
            .set_vring_num(index, QUEUE_LEN)
            .expect("SET_VRING_NUM");
        frontend
            .set_vring_addr(
                index,
                &VringConfigData {
                    queue_max_size: QUEUE_LEN,
                    queue_size: QUEUE_LEN,
                    flags: 0,
                    desc_table_addr: base + desc.0,
                    used_ring_addr: base + used.0,
                    avail_ring_addr: base + avail.0,
                    log_addr: None,
                },
            )
            .expect("SET_VRING_ADDR");
        frontend.set_vring_base(index, 0).expect("SET_VRING_BASE");
        frontend
            .set_vring_call(index, &call[index])
            .expect("SET_VRING_CALL");
        frontend
            .set_vring_kick(index, &kick[index])
            .expect("SET_VRING_KICK");
        if acked & PROTOCOL_FEATURES != 0 {
            frontend
                .set_vring_enable(index, true)
                .expect("SET_VRING_ENABLE");
        }
    }
    Attached {
        _frontend: frontend,
        kick,
        call,
        event_idx: acked & EVENT_IDX != 0,
    }
}

/// Waits for one of some eventfds to be written (a call from the
/// backend, or the other frontend).
struct Waiter<'a> {
    epoll: Epoll,
    fds: &'a [&'a EventFd],
}

impl<'a> Waiter<'a> {
    fn new(fds: &'a [&'a EventFd]) -> Waiter<'a> {
        let epoll = Epoll::new().expect("epoll");
        for fd in fds {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .expect("epoll add");
        }
        Waiter { epoll, fds }
    }

    /// Waits up to `timeout` for any of the eventfds to be written, and
    /// clears them.
    fn wait(&self, timeout: Duration) {
        let mut events = [EpollEvent::default(); 2];
        let _ = self.epoll.wait(timeout.as_millis() as i32, &mut events);
        for fd in self.fds {
            let _ = fd.read();
        }
    }
}

/// Flow `flow`'s frame: virtio-net header (TSO, partial checksum) and a
/// 64 KiB IPv4/TCP frame whose payload bytes depend on flow and offset.
fn tso_chain(flow: usize) -> Vec<u8> {
    let frame = FrameBuilder::tcp4(SRC_IP, DST_IP)
        .macs(MAC_A, MAC_B)
        .ports(10_000 + flow as u16, 5201)
        .seq(1_000_000)
        .payload_with(PAYLOAD, |i| (i % 251) as u8 ^ flow as u8)
        .gso(MSS);
    virtio_chain(&frame.hdr(), &frame.build())
}

/// Posts `count` receive buffers of [`RX_BUFFER`] bytes on `rx`, not
/// zeroed first (the device writes what B reads), and notes under each
/// head where its buffer is.
fn post_buffers(
    rx: &mut DriverQueue<'_, GuestMemoryMmap>,
    buffer_at: &mut [GuestAddress],
    count: usize,
) {
    for _ in 0..count {
        let at = rx.alloc(RX_BUFFER as usize);
        let head = rx.post(&[Desc::writable(at.0, RX_BUFFER)]);
        buffer_at[usize::from(head)] = at;
    }
}

/// The `len` bytes the device wrote into the receive buffer at `at`, read
/// into `scratch` (one small host buffer, which stays in the cache).
fn read_buffer<'s>(
    mem: &GuestMemoryMmap,
    at: GuestAddress,
    len: u32,
    scratch: &'s mut [u8],
) -> &'s [u8] {
    let buffer = &mut scratch[..len as usize];
    mem.read_slice(buffer, at).expect("a receive buffer");
    buffer
}

/// How often, at most, B reads the peer's CPU time as frames arrive.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What B received and checked.
#[derive(Debug, Default, Clone, Copy)]
struct Received {
    frames: u64,
    payload_bytes: u64,
    /// When the last whole frame arrived, from the first send.
    last: Duration,
}

/// Where the TCP checksum field of the frames is (16 bytes into the TCP
/// header, after 14 of Ethernet and 20 of IPv4).
const TCP_CHECKSUM: std::ops::Range<usize> = 50..52;

/// The offset in the frame of the first byte of `got` (which starts at
/// offset `from`) that differs from `sent`; the TCP checksum field is left
/// out unless `checksum_kept` (a peer that completes partial checksums on
/// the way may rewrite it).
fn first_difference(got: &[u8], sent: &[u8], from: usize, checksum_kept: bool) -> Option<usize> {
    if got == sent {
        return None;
    }
    got.iter()
        .zip(sent)
        .enumerate()
        .map(|(i, pair)| (from + i, pair))
        .find(|&(at, (a, b))| a != b && (checksum_kept || !TCP_CHECKSUM.contains(&at)))
        .map(|(at, _)| at)
}

/// The flow of a frame, from its TCP source port.
fn flow_of(frame: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([frame[34], frame[35]]) - 10_000)
}

/// Checks one segment as B got it (header first) against the chains A
/// sent: IPv4 and TCP checksums complete, the payload the slice of the
/// original its sequence number names. Returns the payload's length and
/// whether it ends its frame.
fn verify_segment(buffer: &[u8], sent: &[Vec<u8>]) -> (usize, bool) {
    let body = &buffer[HDR_LEN..];
    let flow = flow_of(body);
    let original = &sent[flow][HDR_LEN..];
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&body[14..]).expect("an IPv4 header");
    let header = ip.to_header();
    assert_eq!(
        header.calc_header_checksum(),
        header.header_checksum,
        "IPv4 checksum"
    );
    let tcp = etherparse::TcpHeaderSlice::from_slice(&body[34..]).expect("a TCP header");
    let payload = &body[34 + tcp.slice().len()..14 + usize::from(ip.total_len())];
    let sum = tcp
        .to_header()
        .calc_checksum_ipv4(&header, payload)
        .expect("a TCP checksum");
    assert_eq!(sum, tcp.checksum(), "flow {flow}: TCP checksum");
    let at = (tcp.sequence_number() - 1_000_000) as usize;
    assert_eq!(
        payload,
        &original[HEADERS + at..HEADERS + at + payload.len()],
        "flow {flow} at {at}"
    );
    (payload.len(), at + payload.len() == PAYLOAD)
}

/// What serves the two sockets.
enum Peer {
    /// The switch with a vhost-user port on each.
    Switch {
        switch: Switch,
        ports: [Arc<VhostUserPort>; 2],
    },
    /// DPDK's vhost PMD: testpmd with two `net_vhost` ports (TSO on) in io
    /// forwarding, its forwarding lcore polling on CPU 0.
    Testpmd {
        child: Child,
        prefix: String,
        log: PathBuf,
    },
}

impl Peer {
    /// The switch, its ports lending large payloads with `lend`.
    fn switch(sockets: [&Path; 2], lend: bool) -> Peer {
        let switch = Switch::start(SwitchConfig::default().workers(1)).expect("the switch");
        let ports = [("a", sockets[0]), ("b", sockets[1])].map(|(name, socket)| {
            VhostUserPort::start(VhostUserConfig::new(name, socket).lend_payloads(lend))
                .expect("a port")
        });
        for port in &ports {
            switch
                .add_port(
                    port.clone() as Arc<dyn Port>,
                    PortProfile::access(VlanId::DEFAULT),
                )
                .expect("add a port");
        }
        Peer::Switch { switch, ports }
    }

    /// testpmd, if it is installed and may run (root, for /var/run/dpdk);
    /// else why not.
    fn testpmd(sockets: [&Path; 2], log: &Path) -> Result<Peer, String> {
        let prefix = format!("vsw-bench-{}", std::process::id());
        let vdev = |i: usize| format!("net_vhost{i},iface={},queues=1,tso=1", sockets[i].display());
        let child = Command::new("dpdk-testpmd")
            .args([
                "-l",
                "0-1",
                "--main-lcore",
                "1",
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
            ])
            .args([
                "--file-prefix",
                &prefix,
                "--vdev",
                &vdev(0),
                "--vdev",
                &vdev(1),
            ])
            .args([
                "--",
                "--forward-mode=io",
                "--nb-cores=1",
                "--total-num-mbufs=32768",
            ])
            .args(["--stats-period", "1", "-a"])
            .stdin(Stdio::null())
            .stdout(File::create(log).map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("dpdk-testpmd: {e} (scripts/guest/install-deps.sh installs it)")
            })?;
        Ok(Peer::Testpmd {
            child,
            prefix,
            log: log.to_path_buf(),
        })
    }

    /// Both guests attached: the switch's ports say so, or testpmd has
    /// logged both ports' link coming up. (A frame A sends before B's port
    /// is up there is dropped, and with A's window of frames in flight
    /// lost that way B would get nothing at all.)
    fn wait_attached(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let attached = || match self {
            Peer::Switch { ports, .. } => {
                ports.iter().all(|port| port.report().negotiated.is_some())
            }
            Peer::Testpmd { log, .. } => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                (0..2).all(|port| text.contains(&format!("Port {port}: link state change event")))
            }
        };
        while !attached() {
            assert!(Instant::now() < deadline, "the frontends did not attach");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU time each thread of the peer has used: testpmd's, or, for the
    /// switch, whose threads are this process's, every thread of this
    /// process (the frontends' are left out later).
    fn cpu_time(&self) -> ThreadTimes {
        match self {
            Peer::Switch { .. } => threads_cpu("self"),
            Peer::Testpmd { child, .. } => threads_cpu(&child.id().to_string()),
        }
    }

    /// Frames the switch dropped (0 for testpmd, whose losses show as
    /// frames missing at B).
    fn drops(&self) -> u64 {
        match self {
            Peer::Switch { switch, ports } => {
                let dropped: u64 = switch
                    .stats()
                    .ports
                    .iter()
                    .map(|port| port.stats.drops.total())
                    .sum();
                dropped + ports[1].report().guest.rx_dropped
            }
            Peer::Testpmd { .. } => 0,
        }
    }

    /// For the switch: frames A lent, and lent frames the switch had to
    /// copy into host memory on their way to B (none: B's port takes lent
    /// frames and copies them from A's memory straight into B's).
    fn lending(&self) -> Option<(u64, u64)> {
        match self {
            Peer::Switch { switch, ports } => {
                let copied = switch
                    .stats()
                    .ports
                    .iter()
                    .map(|port| port.stats.software.lent_copied)
                    .sum();
                Some((ports[0].report().guest.tx_lent, copied))
            }
            Peer::Testpmd { .. } => None,
        }
    }

    fn report(&self) -> String {
        match self {
            Peer::Switch { ports, .. } => format!("{:?}", ports[1].report()),
            Peer::Testpmd { log, .. } => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "testpmd said:\n{}",
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        match self {
            Peer::Switch { switch, ports } => {
                for port in ports.iter() {
                    port.shutdown();
                }
                switch.stop();
            }
            Peer::Testpmd { child, prefix, .. } => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
            }
        }
    }
}

/// One case's outcome.
struct Outcome {
    spent: Duration,
    got: Received,
    drops: u64,
    /// [`Peer::lending`].
    lending: Option<(u64, u64)>,
    /// CPU time the peer used in the run: the switch's threads (the
    /// process's, less the frontends'), or testpmd's process.
    peer_cpu: Duration,
    /// CPU time both frontends' threads used.
    frontends_cpu: Duration,
}

/// Runs `frames` frames from A to B through the peer `start` makes; what
/// B got, and the time. A peer that stops passing frames (nothing at B
/// for 5 s) ends the run early, with what got through.
fn run(
    receiver_takes_tso: bool,
    frames: u64,
    start_peer: impl FnOnce([&Path; 2], &Path) -> Result<Peer, String>,
) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("vswitch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a socket directory");
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let peer = start_peer([&sock_a, &sock_b], &dir.join("peer.log"))?;
    // The switch passes a partial checksum through as the guest wrote it.
    let tcp_checksum_kept = matches!(peer, Peer::Switch { .. });

    let (mem_a, mem_b) = (GuestMem::new("a"), GuestMem::new("b"));
    let ring = |mem, at| {
        DriverQueue::new(
            mem,
            GuestAddress(at),
            QUEUE_LEN,
            GuestAddress(DATA),
            DATA_LEN,
        )
    };
    let (a_rx, mut a_tx) = (ring(&mem_a.mem, RX_RINGS), ring(&mem_a.mem, TX_RINGS));
    let (mut b_rx, b_tx) = (ring(&mem_b.mem, RX_RINGS), ring(&mem_b.mem, TX_RINGS));
    let base = Features::VERSION_1 | Features::MRG_RXBUF | Features::CSUM | Features::HOST_TSO4;
    let b_features = if receiver_takes_tso {
        base | Features::GUEST_CSUM | Features::GUEST_TSO4
    } else {
        base
    };
    let front_a = attach(&sock_a, &mem_a, base | Features::GUEST_CSUM, [&a_rx, &a_tx]);
    let front_b = attach(&sock_b, &mem_b, b_features, [&b_rx, &b_tx]);
    peer.wait_attached();

    // A's frames, written once; each send posts one of them again.
    let chains: Vec<Vec<u8>> = (0..FLOWS).map(tso_chain).collect();
    let frame_at: Vec<GuestAddress> = chains
        .iter()
        .map(|chain| {
            let at = a_tx.alloc(chain.len());
            mem_a.mem.write_slice(chain, at).expect("write a frame");
            at
        })
        .collect();
    // Frames B has had whole, and A's wake-up when that opens its window.
    let delivered = AtomicU64::new(0);
    let window_open = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let stalled = AtomicBool::new(false);
    let window = window();
    let peer_cpu_before = peer.cpu_time();
    let start = Instant::now();
    let (received, peer_cpu_after, (frontend_tids, frontends_cpu)) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let (_, thread_cpu_before) = this_thread_cpu();
            let fds = [&front_a.call[1], &window_open];
            let a_calls = Waiter::new(&fds);
            let mut in_ring = 0usize;
            let mut sent = 0u64;
            // The available index when A last decided whether to kick.
            let mut kicked_at = 0u16;
            while sent < frames && !stalled.load(Ordering::Relaxed) {
                in_ring -= a_tx.take_used().len();
                let window = window.saturating_sub(sent - delivered.load(Ordering::Acquire));
                let room = (usize::from(QUEUE_LEN) / 2 - in_ring).min(window as usize);
                let batch = room.min((frames - sent) as usize);
                for _ in 0..batch {
                    let flow = (sent % FLOWS as u64) as usize;
                    a_tx.post(&[Desc::readable(frame_at[flow].0, chains[flow].len() as u32)]);
                    sent += 1;
                }
                in_ring += batch;
                if batch > 0 {
                    kick_if_asked(&a_tx, &mut kicked_at, &front_a, 1);
                } else if !(front_a.event_idx && a_tx.arm_signal()) {
                    // Until the switch takes frames or B gets some.
                    a_calls.wait(Duration::from_millis(10));
                }
            }
            let (tid, thread_cpu) = this_thread_cpu();
            (tid, thread_cpu - thread_cpu_before)
        });
        // B: buffers posted, frames reaped and checked, buffers posted again.
        let (_, b_cpu_before) = this_thread_cpu();
        let (mut peer_cpu_after, mut sampled_at) = (None, Instant::now());
        let mut got = Received::default();
        // Where the buffer posted under each head is, so that reaping one
        // needs no walk of the descriptor table.
        let mut buffer_at = vec![GuestAddress(0); usize::from(QUEUE_LEN)];
        let fds = [&front_b.call[0]];
        let b_calls = Waiter::new(&fds);
        post_buffers(&mut b_rx, &mut buffer_at, RX_POSTED);
        front_b.kick[0].write(1).expect("kick B's receive ring");
        let mut kicked_at = b_rx.avail_idx();
        let mut scratch = vec![0u8; RX_BUFFER as usize];
        let mut pending: std::collections::VecDeque<(u16, u32)> = Default::default();
        let mut idle_since = Instant::now();
        while got.frames < frames {
            pending.extend(b_rx.take_used());
            let mut reaped = 0;
            while let Some(&(head, _)) = pending.front() {
                // num_buffers, in the first buffer's header.
                let mut count = [0u8; 2];
                let first = buffer_at[usize::from(head)];
                mem_b
                    .mem
                    .read_slice(&mut count, first.unchecked_add(10))
                    .expect("a header");
                let buffers = usize::from(u16::from_le_bytes(count)).max(1);
                if pending.len() < buffers {
                    break;
                }
                reaped += buffers;
                // Each buffer is compared with what A sent.
                let done = if receiver_takes_tso {
                    let (mut at, mut flow) = (0usize, None);
                    for (head, len) in pending.drain(..buffers) {
                        let buffer = read_buffer(
                            &mem_b.mem,
                            buffer_at[usize::from(head)],
                            len,
                            &mut scratch,
                        );
                        let skip = HDR_LEN.saturating_sub(at).min(buffer.len());
                        let flow = *flow.get_or_insert_with(|| flow_of(&buffer[HDR_LEN..]));
                        let original = &chains[flow][HDR_LEN..];
                        let from = at + skip - HDR_LEN;
                        let expected = &original[from..from + buffer.len() - skip];
                        if let Some(bad) =
                            first_difference(&buffer[skip..], expected, from, tcp_checksum_kept)
                        {
                            panic!(
                                "flow {flow}: byte {bad} of the frame changed on its way \
                                 ({:#04x}, sent {:#04x})",
                                buffer[skip + bad - from],
                                expected[bad - from]
                            );
                        }
                        at += buffer.len();
                    }
                    let flow = flow.unwrap_or_default();
                    assert_eq!(at, chains[flow].len(), "flow {flow}: a whole frame");
                    got.payload_bytes += PAYLOAD as u64;
                    true
                } else {
                    let (head, len) = pending.pop_front().expect("one buffer");
                    let buffer =
                        read_buffer(&mem_b.mem, buffer_at[usize::from(head)], len, &mut scratch);
                    let (payload, last) = verify_segment(buffer, &chains);
                    got.payload_bytes += payload as u64;
                    last
                };
                if done {
                    got.frames += 1;
                    got.last = start.elapsed();
                    // The peer's CPU time as of this frame, at most
                    // every 20 ms (it is read from /proc), and at the
                    // last: a peer that lost frames is not charged for
                    // the time B waited for them.
                    if got.frames == frames || sampled_at.elapsed() > SAMPLE_EVERY {
                        peer_cpu_after = Some(peer.cpu_time());
                        sampled_at = Instant::now();
                    }
                    delivered.fetch_add(1, Ordering::Release);
                    window_open.write(1).expect("wake A");
                }
            }
            if reaped > 0 {
                post_buffers(&mut b_rx, &mut buffer_at, reaped);
                kick_if_asked(&b_rx, &mut kicked_at, &front_b, 0);
                idle_since = Instant::now();
            } else if idle_since.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "B got nothing for 5 s ({} of {frames} frames): {}",
                    got.frames,
                    peer.report()
                );
                stalled.store(true, Ordering::Relaxed);
                break;
            } else if !(front_b.event_idx && b_rx.arm_signal()) {
                b_calls.wait(Duration::from_millis(10));
            }
        }
        let (b_tid, b_cpu) = this_thread_cpu();
        let peer_cpu_after = peer_cpu_after.unwrap_or_else(|| peer.cpu_time());
        let (a_tid, a_cpu) = sender.join().expect("the sender");
        let frontends = ([a_tid, b_tid], a_cpu + b_cpu - b_cpu_before);
        (got, peer_cpu_after, frontends)
    });
    // The frontends' threads are this process's too: left out.
    let peer_cpu = cpu_between(&peer_cpu_before, &peer_cpu_after, &frontend_tids);
    // Up to the last frame B had: a peer that lost frames is not charged
    // for the time B waited for them.
    let spent = received.last;
    let drops = peer.drops();
    let lending = peer.lending();
    drop((front_a, front_b, peer));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome {
        spent,
        got: received,
        drops,
        lending,
        peer_cpu,
        frontends_cpu,
    })
}

/// The CPU time each of a process's threads has run, by thread id.
type ThreadTimes = HashMap<u32, Duration>;

/// The CPU time each thread of process `pid` (or "self") has run, from
/// /proc/PID/task/TID/schedstat, whose first field is nanoseconds on a CPU.
fn threads_cpu(pid: &str) -> ThreadTimes {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return ThreadTimes::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            Some((tid, schedstat_runtime(&task.path().join("schedstat"))?))
        })
        .collect()
}

/// This thread's id and the CPU time it has run.
fn this_thread_cpu() -> (u32, Duration) {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|name| name.to_str()?.parse().ok())
        .expect("a thread id in /proc/thread-self");
    let runtime = schedstat_runtime(Path::new("/proc/thread-self/schedstat"))
        .expect("/proc/thread-self/schedstat");
    (tid, runtime)
}

fn schedstat_runtime(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(Duration::from_nanos(text.split(' ').next()?.parse().ok()?))
}

/// The CPU time the threads of `after` ran since `before`, leaving out
/// the threads `except`; a thread not in `before` started in between.
fn cpu_between(before: &ThreadTimes, after: &ThreadTimes, except: &[u32]) -> Duration {
    after
        .iter()
        .filter(|(tid, _)| !except.contains(tid))
        .map(|(tid, &ran)| ran.saturating_sub(before.get(tid).copied().unwrap_or_default()))
        .sum()
}

/// Time to memcpy `bytes` bytes 64 KiB at a time, best of 5: `hot`, one
/// frame-sized buffer copied to another again and again, so both stay in
/// the nearest cache; and `same buffers`, the way the bytes move through
/// the switch: each of the flows' frames in turn, cut into
/// [`RX_BUFFER`]-sized pieces, into as many buffers as B posts in its
/// data area, round-robin (more than this machine's L2 holds).
fn memcpy(bytes: u64) -> (Duration, Duration) {
    let frame = HDR_LEN + HEADERS + PAYLOAD;
    let rounds = bytes / PAYLOAD as u64;
    let best_of = |copy: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                copy();
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let src = vec![7u8; frame];
    let mut dst = vec![0u8; frame];
    let hot = best_of(&mut || {
        for _ in 0..rounds {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
    });
    let frames: Vec<u8> = (0..FLOWS * frame).map(|i| i as u8).collect();
    let buffer = RX_BUFFER as usize;
    let mut area = vec![0u8; DATA_LEN as usize];
    let buffers = area.len() / buffer;
    let mut next = 0;
    let same_buffers = best_of(&mut || {
        for round in 0..rounds as usize {
            let flow = round % FLOWS;
            for piece in frames[flow * frame..(flow + 1) * frame].chunks(buffer) {
                let at = next % buffers * buffer;
                area[at..at + piece.len()].copy_from_slice(black_box(piece));
                next += 1;
            }
            black_box(&mut area);
        }
    });
    (hot, same_buffers)
}

/// CPU time, best of 3, of a thread that does nothing but the one copy a
/// switch must make, in the conditions the switch makes it here: the
/// flows' frames, in turn, from one guest-memory mapping (a file in
/// /dev/shm, as A's) into [`RX_BUFFER`]-sized buffers of another, taken
/// round-robin from its data area with [`RX_POSTED`] of them posted at a
/// time, through the same `vm-memory` copy the switch uses; while a
/// second thread, as B does, reads each filled buffer back, compares it
/// with what was sent, and posts it again. This is the floor for a
/// one-copy switch on this machine: the copy's source is cold and its
/// destination was last read on another core, which the two `memcpy`
/// figures above spare. No descriptors, no notifications, no switching.
fn pipeline_copy(bytes: u64) -> Duration {
    use std::sync::mpsc::sync_channel;
    let (from, into) = (GuestMem::new("copy-a"), GuestMem::new("copy-b"));
    let chains: Vec<Vec<u8>> = (0..FLOWS).map(tso_chain).collect();
    let stride = chains[0].len().next_multiple_of(8) as u64;
    for (flow, chain) in chains.iter().enumerate() {
        from.mem
            .write_slice(chain, GuestAddress(DATA + flow as u64 * stride))
            .expect("write a frame");
    }
    let rounds = bytes / PAYLOAD as u64;
    let buffers = DATA_LEN / u64::from(RX_BUFFER);
    let buffer = usize::try_from(RX_BUFFER).expect("a 4 KiB buffer");
    // Where the `n`th buffer taken is, round-robin over the data area.
    let buffer_at = |n: u64| GuestAddress(DATA + n % buffers * u64::from(RX_BUFFER));
    let once = || {
        // Filled: (first buffer, flow); posted again: a frame's buffers.
        let (filled, to_check) = sync_channel::<(u64, usize)>(RX_POSTED);
        let (reposted, returned) = sync_channel::<usize>(RX_POSTED);
        std::thread::scope(|scope| {
            let (chains, into) = (&chains, &into);
            scope.spawn(move || {
                let mut scratch = vec![0u8; buffer];
                while let Ok((first, flow)) = to_check.recv() {
                    let pieces = chains[flow].chunks(buffer);
                    let count = pieces.len();
                    for (i, sent) in pieces.enumerate() {
                        let at = buffer_at(first + i as u64);
                        let got = read_buffer(&into.mem, at, sent.len() as u32, &mut scratch);
                        assert!(got == sent, "flow {flow}: the copy changed a byte");
                    }
                    if reposted.send(count).is_err() {
                        return;
                    }
                }
            });
            let (_, cpu_before) = this_thread_cpu();
            let (mut posted, mut next) = (RX_POSTED, 0u64);
            for round in 0..rounds {
                let flow = (round % FLOWS as u64) as usize;
                let len = chains[flow].len();
                let count = len.div_ceil(buffer);
                while posted < count {
                    posted += returned.recv().expect("the reader posts buffers");
                }
                let source = GuestAddress(DATA + flow as u64 * stride);
                for i in 0..count {
                    let at = i * buffer;
                    let take = buffer.min(len - at);
                    let src = from
                        .mem
                        .get_slice(source.unchecked_add(at as u64), take)
                        .expect("A's frame");
                    let dst = into
                        .mem
                        .get_slice(buffer_at(next + i as u64), take)
                        .expect("a buffer");
                    src.copy_to_volatile_slice(dst);
                }
                filled.send((next, flow)).expect("the reader checks");
                next += count as u64;
                posted -= count;
            }
            let (_, cpu_after) = this_thread_cpu();
            drop(filled);
            cpu_after - cpu_before
        })
    };
    (0..3).map(|_| once()).min().unwrap_or_default()
}

/// Prints one row of the table.
fn row(label: &str, outcome: &Outcome, frames: u64) {
    let Outcome {
        spent,
        got,
        drops,
        peer_cpu,
        frontends_cpu,
        lending: _,
    } = outcome;
    if got.frames == 0 {
        println!("{label:>38} no frame reached B ({drops} drops)");
        return;
    }
    let (hot, same_buffers) = memcpy(got.payload_bytes);
    let pipeline = pipeline_copy(got.payload_bytes);
    let per_kib = |d: Duration| d.as_nanos() as f64 * 1024.0 / got.payload_bytes as f64;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "{label:>38} {:>6.2} {:>5.0} {:>5.0} {:>5.0} {:>5.0} {:>6.2}x {:>5.0} {:>6.2}x {:>6.2}x {:>6.2}x {:>5.0} {:>5} {:>4}",
        got.payload_bytes as f64 * 8.0 / spent.as_secs_f64() / 1e9,
        per_kib(*spent),
        per_kib(hot),
        per_kib(same_buffers),
        per_kib(pipeline),
        ratio(*spent, hot),
        per_kib(*peer_cpu),
        ratio(*peer_cpu, hot),
        ratio(*peer_cpu, same_buffers),
        ratio(*peer_cpu, pipeline),
        per_kib(*frontends_cpu),
        drops,
        frames - got.frames,
    );
}

fn main() {
    // Under `cargo test` (no `--bench`): a short run of both cases through
    // the switch, as an end-to-end check of the protocol, the switch and
    // every byte.
    let measure = std::env::args().any(|arg| arg == "--bench");
    let frames = std::env::var("VHOST_USER_PROTOCOL_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measure { 20_000u64 } else { 300 });
    println!(
        "vhost-user protocol, two frontends in this process: {FLOWS} flows of {PAYLOAD}-byte \
         TSO frames, {frames} frames a case, at most {} in flight, every byte checked by B",
        window()
    );
    println!(
        "{:>38} {:>6} {:>5} {:>17} {:>7} {:>29} {:>5} {:>5} {:>4}",
        "", "", "time", "memcpy /KiB", "time /", "peer CPU: /KiB, / memcpy", "front", "", "miss"
    );
    println!(
        "{:>38} {:>6} {:>5} {:>5} {:>5} {:>5} {:>7} {:>5} {:>7} {:>7} {:>7} {:>5} {:>5} {:>4}",
        "peer, receiver",
        "Gbit/s",
        "/KiB",
        "hot",
        "same",
        "pipe",
        "hot",
        "ns",
        "hot",
        "same",
        "pipe",
        "CPU",
        "drops",
        "ing"
    );
    // `VHOST_USER_PROTOCOL_ONLY` runs only the rows whose label holds it
    // (for a profiler).
    let only = std::env::var("VHOST_USER_PROTOCOL_ONLY").unwrap_or_default();
    let cases = [
        (true, false, "switch, GUEST_TSO4 (passed through)"),
        (false, false, "switch, no offloads (port cuts)"),
        (true, true, "switch lending, GUEST_TSO4"),
        (false, true, "switch lending, no offloads"),
    ];
    for (takes_tso, lend, label) in cases {
        if !label.contains(&only) {
            continue;
        }
        let outcome = run(takes_tso, frames, |sockets, _| {
            Ok(Peer::switch(sockets, lend))
        })
        .expect("the switch starts");
        assert_eq!(outcome.got.frames, frames, "every frame reached B");
        assert_eq!(outcome.drops, 0, "nothing was dropped");
        let (lent, copied) = outcome.lending.expect("the switch reports lending");
        assert_eq!(lent > 0, lend, "A lends its large frames only when told to");
        assert_eq!(copied, 0, "no lent frame was copied on the way to B");
        row(label, &outcome, frames);
    }
    // The userspace peer, with TSO passed through (io forwarding neither
    // segments nor checksums, so a receiver without offloads has no
    // counterpart there).
    let label = "testpmd vhost io-fwd, GUEST_TSO4";
    if !measure || !label.contains(&only) {
        return;
    }
    match run(true, frames, Peer::testpmd) {
        Ok(outcome) => row(label, &outcome, frames),
        Err(why) => println!("{label:>38} skipped: {why}"),
    }
}
