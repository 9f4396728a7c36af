//! A physical NIC (or any Ethernet interface) as a switch port, through
//! AF_PACKET sockets with a virtio-net header on every frame.
//!
//! ```no_run
//! use vswitch_ports::uplink::{OffloadMode, UplinkConfig, UplinkPort};
//! use vswitch_ports::Port;
//!
//! // Two receive queues joined in one fanout group, offloads as the NIC has them.
//! let config = UplinkConfig::new(OffloadMode::Auto).queues(2);
//! let uplink = UplinkPort::open("eth1", config)?;
//! println!("{}", uplink.report());
//! assert_eq!(uplink.capabilities().rx_queues, 2);
//! # Ok::<(), vswitch_ports::uplink::UplinkError>(())
//! ```
//!
//! # The sockets
//!
//! Each queue is a pair of AF_PACKET `SOCK_RAW` sockets bound to the
//! interface: one receives, one sends.
//!
//! * `PACKET_VNET_HDR_SZ` 12 (or `PACKET_VNET_HDR`, 10 bytes, on kernels
//!   without it): every frame carries a virtio-net header. Received frames
//!   say whether their checksum is partial (a frame from the host's own
//!   stack, NEEDS_CSUM) or was verified by the NIC (DATA_VALID), and come
//!   as large GSO frames where the NIC or the kernel coalesced them (GRO).
//!   Sent frames may keep a partial checksum and may be 64 KiB TSO frames:
//!   the NIC finishes them, or the kernel does in software just before the
//!   driver.
//! * The receiving sockets are promiscuous members (`PACKET_MR_PROMISC`,
//!   so frames for the guests' addresses arrive) and do not see frames
//!   that leave through the interface (`PACKET_IGNORE_OUTGOING`, Linux
//!   4.20; before it frames are filtered by their packet type), so the
//!   switch never takes back what it sent, nor the host's own traffic.
//! * The sending sockets bind with protocol 0, so the kernel copies them
//!   no received frame, and use `PACKET_QDISC_BYPASS` (configurable): a
//!   frame goes straight to the driver, and a full driver ring is a
//!   [`SendError::Full`] the switch retries, not a frame queued in a
//!   qdisc behind the switch's own queues. The bypass skips the kernel's
//!   software GSO too (a bypassing frame that needs it is dropped), so it
//!   is turned off while the port passes large frames the NIC does not
//!   cut ([`OffloadMode::Tso`] on a NIC without TSO).
//! * With more than one queue the receiving sockets join one
//!   `PACKET_FANOUT_HASH` group: the kernel spreads frames over them by
//!   flow hash, as a multi-queue NIC's RSS does, so each flow stays on one
//!   queue (and so on one switch worker) and keeps its order.
//!
//! # Batching: recvmmsg and sendmmsg, not a ring
//!
//! A receive call takes up to [`RX_BATCH`] frames per `recvmmsg`, each
//! into its own slot of a pooled chunk ([`ChunkPool`]), and the frames
//! leave as slices of it: one copy, made by the kernel, and no allocation
//! in steady state. A send takes up to 32 frames per `sendmmsg`. A
//! TPACKET_V3 ring would save the system call but not the copy: the
//! switch holds frames as owned buffers after `receive` returns, longer
//! than a ring slot may be held, so every frame would be copied a second
//! time out of the ring.
//!
//! What the batches buy was measured with `benches/scripts/uplink-batching.sh`
//! (small UDP frames over veth, frames per second of the calling thread's
//! CPU time, four runs on a shared two-core machine): 32 frames per
//! `sendmmsg` sent 1.45 to 1.7 times as many as one per call, 16 per
//! `recvmmsg` received 1.2 to 1.95 times as many. The rest of the cost per
//! frame is the kernel's own path (the veth transmit, the packet socket's
//! copy), which no batching removes; a ring would remove only the calls.
//!
//! # Offload modes and changes while running
//!
//! [`OffloadMode`] says what passes unfinished. The port's
//! [`capabilities`](Port::capabilities) are those of the mode when the
//! port was opened, and the switch adapts frames to them once. The port
//! re-reads the link state and the NIC's features every
//! [`UplinkConfig::refresh`] (from whichever thread calls `receive` or
//! `send_batch`, or from [`UplinkPort::refresh`]). With
//! [`OffloadMode::Auto`] the capabilities in force then,
//! [`UplinkReport::current`], follow the NIC: a frame the switch left
//! unfinished that the NIC no longer finishes (after
//! `ethtool -K IFACE tso off`) is finished in the port, with the same
//! engine the switch uses ([`vswitch_offload::adapt::adapt`]), and counted
//! in [`UplinkStats::tx_adapted`]. An offload the NIC gains is used once the
//! port is opened again: the switch takes a port's capabilities as fixed.
//! In the other modes the features decide only whether the qdisc may be
//! bypassed (see [`UplinkConfig::qdisc_bypass`]).
//!
//! `auto` is the mode that segments in the switch exactly when the NIC
//! lacks TSO. Toward a NIC without offloads that is not the cheapest
//! choice everywhere: over a veth wire with every offload off, iperf3
//! toward the wire (release build, five runs on a shared two-core
//! machine, `tests/tests/uplink_switch.rs`) moved 1.1 to 2.2 Gbit/s with
//! `auto` (the switch cuts each 64 KiB frame and sends the segments
//! through `sendmmsg`) and 1.5 to 4.5 Gbit/s with `tso` (one frame per
//! system call, cut by the kernel's GSO beneath the socket), about half,
//! with no drop or retransmission in either. A profile of the `auto` run
//! shows the process on a CPU only about a quarter of the time, so the
//! gap is not the switch's own segmentation work; where the time goes
//! has not been found yet.
//!
//! Reading the features takes the kernel's RTNL lock for a moment, which
//! is why it happens once per refresh period and not per burst.
//!
//! # Link down and a NIC that goes away
//!
//! While the link is down (administratively or without carrier) or the
//! interface is gone, `send_batch` takes no frame and answers
//! [`BatchSendError::Disconnected`]: the switch counts them as dropped at
//! this port and keeps forwarding elsewhere; the port counts them too
//! ([`UplinkStats::tx_link_down`]). A send error that says the link went
//! down (ENETDOWN) or away (ENXIO, ENODEV) marks it so at once; a link that
//! comes back up is used again from the next refresh on (the sockets
//! survive it). An interface that disappears ([`LinkState::Gone`]) leaves
//! the sockets unbound; a port opened by name tries, once per refresh, to
//! open new ones, and uses them once an interface of that name is back
//! ([`UplinkStats::reopens`]). A port built from the embedder's socket
//! ([`UplinkPort::from_fd`]) cannot, and stays gone.

mod offload;
mod spec;

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use vswitch_offload::adapt::{adapt, Adapted};
use vswitch_offload::segment::{SegmentList, Segmenter};
use vswitch_offload::virtio::{HdrFormat, FLAG_NEEDS_CSUM, HDR_LEN_V1};
use vswitch_offload::{CheckedFrame, EgressCapabilities, Packet, VirtioNetHdr};

use crate::buffer::ChunkPool;
use crate::port::{BatchSendError, Port, PortCapabilities, PortError, SendError};
use crate::readable::ReadableWakers;
use crate::sys::{self, ethtool_cmd, Received, MMSG_MAX};
use crate::wake::KeptWakers;

pub use offload::{BadOffloadMode, NicFeatures, OffloadMode};
pub use spec::{BadUplinkSpec, UplinkSpec};

/// Largest frame an uplink takes in: a 64 KiB IP packet (a GRO or GSO
/// frame) with Ethernet and two VLAN tags.
pub const UPLINK_MAX_FRAME: usize = 65_535 + 22;

/// Most frames one `recvmmsg` call takes.
pub const RX_BATCH: usize = 16;

/// One receive slot: the largest header and frame, rounded to a cache line.
const RX_SLOT: usize = (HDR_LEN_V1 + UPLINK_MAX_FRAME).div_ceil(64) * 64;

/// Frozen receive chunks a queue keeps for recycling.
const RX_POOL_LIMIT: usize = 16;

/// Receive chunks tried before a new one is allocated.
const RX_POOL_PROBES: usize = 4;

/// Socket buffer size asked for each socket (SO_RCVBUFFORCE /
/// SO_SNDBUFFORCE, which root may set beyond the system maximum).
const SOCKET_BUFFER: i32 = 16 << 20;

/// How an uplink is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// What passes to the NIC unfinished.
    pub offload: OffloadMode,
    /// Queues (receiving sockets in one fanout group, and as many sending
    /// ones). At least 1.
    pub queues: usize,
    /// The MTU the switch segments to; `None` reads the interface's.
    pub mtu: Option<u16>,
    /// How often the link state and (with [`OffloadMode::Auto`]) the NIC's
    /// features are read again.
    pub refresh: Duration,
    /// Send with `PACKET_QDISC_BYPASS` where that is safe: not while large
    /// frames pass that the NIC does not cut, since the kernel drops a
    /// bypassing frame that needs its software GSO.
    pub qdisc_bypass: bool,
    /// Open the sockets in the network namespace at this path (for example
    /// `/run/netns/NAME`), not in the caller's; the interface is looked up
    /// there.
    pub netns: Option<PathBuf>,
}

impl UplinkConfig {
    /// One queue, the interface's MTU, a refresh every 250 ms, qdisc
    /// bypass, the caller's namespace.
    pub fn new(offload: OffloadMode) -> Self {
        UplinkConfig {
            offload,
            queues: 1,
            mtu: None,
            refresh: Duration::from_millis(250),
            qdisc_bypass: true,
            netns: None,
        }
    }

    /// Sets the number of queues.
    #[must_use]
    pub fn queues(mut self, queues: usize) -> Self {
        self.queues = queues;
        self
    }

    /// Sets the MTU the switch segments to.
    #[must_use]
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets how often link and features are read again.
    #[must_use]
    pub fn refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// Sets whether frames bypass the interface's qdisc.
    #[must_use]
    pub fn qdisc_bypass(mut self, bypass: bool) -> Self {
        self.qdisc_bypass = bypass;
        self
    }

    /// Opens the sockets in the network namespace at `path`.
    #[must_use]
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self::new(OffloadMode::Auto)
    }
}

/// Why an uplink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The process may not open AF_PACKET sockets.
    #[error(
        "opening an AF_PACKET socket on {interface} needs CAP_NET_RAW: run as root ({source})"
    )]
    Permission {
        /// The interface asked for.
        interface: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// No interface of that name where the sockets were opened.
    #[error(
        "no interface {interface} in {namespace}: expected an existing interface (see `ip link`)"
    )]
    NoSuchInterface {
        /// The interface asked for.
        interface: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// A step of setting up a socket failed.
    #[error("setting up the AF_PACKET socket on {interface}: {step} failed: {source}")]
    Setup {
        /// The interface asked for.
        interface: String,
        /// The step, as the socket option or request is named.
        step: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The network namespace could not be entered.
    #[error("entering network namespace {path}: {source} (expected a file such as /run/netns/NAME, and CAP_SYS_ADMIN)")]
    Namespace {
        /// The path given.
        path: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The configuration asks for no queue, or more than the fanout allows.
    #[error("an uplink needs 1 to 256 queues, found {queues}")]
    Queues {
        /// The number asked for.
        queues: usize,
    },
}

impl UplinkError {
    fn setup(interface: &str, step: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => UplinkError::Permission {
                interface: interface.to_owned(),
                source,
            },
            _ => UplinkError::Setup {
                interface: interface.to_owned(),
                step,
                source,
            },
        }
    }
}

/// Whether the uplink can carry frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Up, with a carrier.
    Up,
    /// Down (administratively, or no carrier): frames toward it are dropped.
    Down,
    /// The interface is gone; frames toward it are dropped.
    Gone,
}

impl LinkState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => LinkState::Up,
            1 => LinkState::Down,
            _ => LinkState::Gone,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            LinkState::Up => 0,
            LinkState::Down => 1,
            LinkState::Gone => 2,
        }
    }

    /// `up`, `down` or `gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Gone => "gone",
        }
    }
}

/// Counters of an uplink, beyond what the switch counts per port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    /// Frames received and handed to the switch.
    pub rx_frames: u64,
    /// Received frames refused: cut short (longer than a slot), or a
    /// header that does not parse, or a failed receive call.
    pub rx_errors: u64,
    /// Frames the kernel dropped because a receiving socket's buffer was
    /// full (PACKET_STATISTICS), as of the last refresh.
    pub rx_kernel_drops: u64,
    /// Frames the kernel took for sending.
    pub tx_frames: u64,
    /// Frames the kernel refused (other than a full queue or a link down).
    pub tx_errors: u64,
    /// Frames finished in the port because the NIC no longer takes them as
    /// the switch left them.
    pub tx_adapted: u64,
    /// Frames toward the port while the link was down or gone (the switch
    /// counts them as dropped too), and segments of frames finished in the
    /// port that the kernel did not take.
    pub tx_link_down: u64,
    /// Segments of frames finished in the port that were dropped (the
    /// kernel's queue was full, or the frame could not be finished).
    pub tx_adapt_dropped: u64,
    /// Times the link state changed.
    pub link_changes: u64,
    /// Times the NIC's features changed.
    pub feature_changes: u64,
    /// Times the sockets were opened again after the interface came back.
    pub reopens: u64,
    /// Receive chunks allocated, over all queues; the rest of the receive
    /// calls reused one whose frames were all gone.
    pub rx_chunks_allocated: u64,
    /// Receive chunks reused.
    pub rx_chunks_recycled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_errors: AtomicU64,
    rx_kernel_drops: AtomicU64,
    tx_frames: AtomicU64,
    tx_errors: AtomicU64,
    tx_adapted: AtomicU64,
    tx_link_down: AtomicU64,
    tx_adapt_dropped: AtomicU64,
    link_changes: AtomicU64,
    feature_changes: AtomicU64,
    reopens: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> UplinkStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UplinkStats {
            rx_frames: load(&self.rx_frames),
            rx_errors: load(&self.rx_errors),
            rx_kernel_drops: load(&self.rx_kernel_drops),
            tx_frames: load(&self.tx_frames),
            tx_errors: load(&self.tx_errors),
            tx_adapted: load(&self.tx_adapted),
            tx_link_down: load(&self.tx_link_down),
            tx_adapt_dropped: load(&self.tx_adapt_dropped),
            link_changes: load(&self.link_changes),
            feature_changes: load(&self.feature_changes),
            reopens: load(&self.reopens),
            rx_chunks_allocated: 0,
            rx_chunks_recycled: 0,
        }
    }
}

/// What an uplink reports of itself: what the NIC offers and what the
/// switch does for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkReport {
    /// The interface.
    pub interface: String,
    /// The mode asked for.
    pub mode: OffloadMode,
    /// The link now.
    pub link: LinkState,
    /// What the NIC offers, as last read.
    pub nic: NicFeatures,
    /// The capabilities declared to the switch when the port was opened:
    /// the switch finishes in software what these leave out.
    pub declared: EgressCapabilities,
    /// The capabilities in force now: the port finishes what the declared
    /// ones let through but these do not.
    pub current: EgressCapabilities,
    /// Queues.
    pub queues: usize,
    /// The virtio-net header size in use (12, or 10 on older kernels).
    pub vnet_hdr_len: usize,
    /// Whether frames bypass the interface's qdisc now (see
    /// [`UplinkConfig::qdisc_bypass`]).
    pub qdisc_bypass: bool,
    /// Counters.
    pub stats: UplinkStats,
}

impl std::fmt::Display for UplinkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = |caps: &EgressCapabilities| match (caps.checksum, caps.tso4 || caps.tso6) {
            (_, true) => "passes TSO frames and partial checksums",
            (true, false) => "segments in software, passes partial checksums",
            (false, false) => "segments and checksums in software",
        };
        write!(
            f,
            "uplink {} (offload={}, {} queue(s)): link {}; NIC offers {}; the switch {}",
            self.interface,
            self.mode,
            self.queues,
            self.link.as_str(),
            self.nic,
            what(&self.declared)
        )?;
        if self.current != self.declared {
            write!(f, "; the port now {}", what(&self.current))?;
        }
        Ok(())
    }
}

/// How to open the sockets again when the interface comes back.
#[derive(Debug, Clone)]
enum Reopen {
    /// By name, in the caller's namespace or the one at the path.
    Named,
    /// From descriptors the embedder gave: not possible.
    Never,
}

/// The sockets of all queues, replaced whole when they are opened again.
#[derive(Debug)]
struct Sockets {
    /// Wakes the poller of a receive socket the kernel has frames for
    /// ([`Port::set_rx_waker`]). Before `rx`, so that the sockets are
    /// forgotten by the wake-up thread before they close.
    wakers: ReadableWakers,
    rx: Vec<OwnedFd>,
    tx: Vec<OwnedFd>,
    ifindex: i32,
    format: HdrFormat,
    /// The kernel lacks PACKET_IGNORE_OUTGOING: drop frames of type
    /// PACKET_OUTGOING on receive.
    filter_outgoing: bool,
}

/// What the refresh learnt, read on every frame path.
#[derive(Debug, Clone, Copy)]
struct Status {
    nic: NicFeatures,
    current: EgressCapabilities,
}

#[derive(Debug)]
struct RxQueue {
    pool: ChunkPool,
}

#[derive(Debug, Default)]
struct TxQueue {
    segmenter: Segmenter,
    segments: SegmentList,
}

/// An interface as a switch port, through AF_PACKET sockets. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct UplinkPort {
    interface: String,
    config: UplinkConfig,
    reopen: Reopen,
    caps: PortCapabilities,
    sockets: RwLock<Arc<Sockets>>,
    status: RwLock<Status>,
    link: AtomicU8,
    /// Whether the sending sockets bypass the qdisc now.
    bypass: AtomicBool,
    /// Whom each receive queue wakes ([`Port::set_rx_waker`]), handed to
    /// the sockets opened again after the interface came back.
    rx_wakers: KeptWakers,
    rx: Vec<Mutex<RxQueue>>,
    tx: Vec<Mutex<TxQueue>>,
    /// Serialises refreshes; `next_refresh` says when the next is due, in
    /// milliseconds since `epoch`.
    refreshing: Mutex<()>,
    next_refresh: AtomicU64,
    epoch: Instant,
    counters: Counters,
}

impl UplinkPort {
    /// Opens `config.queues` queues on interface `interface` (in the
    /// caller's network namespace, or in [`UplinkConfig::netns`]).
    pub fn open(interface: &str, config: UplinkConfig) -> Result<Self, UplinkError> {
        check_queues(config.queues)?;
        let sockets = open_named(interface, &config)?;
        Self::build(interface, config, Reopen::Named, sockets)
    }

    /// Builds a one-queue port from an AF_PACKET socket the embedder
    /// opened (a sandboxed process that may not open sockets itself, or
    /// one in another namespace). The socket is set up as [`open`](Self::open)
    /// would (header, membership, binding to `interface`, looked up in the
    /// socket's own namespace) and used for both directions. If the
    /// interface disappears the port stays [`LinkState::Gone`]: it cannot
    /// open a socket where the embedder's was.
    pub fn from_fd(
        fd: OwnedFd,
        interface: &str,
        config: UplinkConfig,
    ) -> Result<Self, UplinkError> {
        let config = UplinkConfig {
            queues: 1,
            ..config
        };
        let tx = fd
            .try_clone()
            .map_err(|err| UplinkError::setup(interface, "dup", err))?;
        let ifindex = sys::interface_index(fd.as_fd(), interface)
            .map_err(|err| no_such_interface(interface, &config, err))?;
        let (format, filter_outgoing) = setup_rx(&fd, interface, ifindex, None)?;
        setup_tx(&tx, interface, ifindex, format, false)?;
        let rx = vec![fd];
        let sockets = Sockets {
            wakers: ReadableWakers::new(rx.iter().map(AsRawFd::as_raw_fd)),
            rx,
            tx: vec![tx],
            ifindex,
            format,
            filter_outgoing,
        };
        Self::build(interface, config, Reopen::Never, sockets)
    }

    fn build(
        interface: &str,
        config: UplinkConfig,
        reopen: Reopen,
        sockets: Sockets,
    ) -> Result<Self, UplinkError> {
        let fd = sockets.rx[0].as_fd();
        let mtu = match config.mtu {
            Some(mtu) => mtu,
            None => sys::interface_mtu(fd, interface)
                .map_err(|err| UplinkError::setup(interface, "SIOCGIFMTU", err))?
                .min(u32::from(u16::MAX)) as u16,
        };
        let nic = read_features(fd, interface).unwrap_or_default();
        let declared = config.offload.egress_capabilities(nic, mtu);
        let bypass = bypass_fits(&config, nic, &declared);
        set_bypass(&sockets, bypass)
            .map_err(|err| UplinkError::setup(interface, "PACKET_QDISC_BYPASS", err))?;
        let link = read_link(&sockets, interface);
        let queues = sockets.rx.len();
        let port = UplinkPort {
            interface: interface.to_owned(),
            reopen,
            caps: PortCapabilities {
                egress: declared,
                rx_queues: queues,
                tx_queues: queues,
            },
            status: RwLock::new(Status {
                nic,
                current: declared,
            }),
            link: AtomicU8::new(link.as_u8()),
            bypass: AtomicBool::new(bypass),
            rx_wakers: KeptWakers::new(queues),
            rx: (0..queues)
                .map(|_| {
                    Mutex::new(RxQueue {
                        pool: ChunkPool::new(RX_BATCH * RX_SLOT, RX_POOL_LIMIT, RX_POOL_PROBES),
                    })
                })
                .collect(),
            tx: (0..queues).map(|_| Mutex::default()).collect(),
            sockets: RwLock::new(Arc::new(sockets)),
            refreshing: Mutex::new(()),
            next_refresh: AtomicU64::new(0),
            epoch: Instant::now(),
            counters: Counters::default(),
            config,
        };
        port.schedule_refresh();
        Ok(port)
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The link as last seen.
    pub fn link(&self) -> LinkState {
        LinkState::from_u8(self.link.load(Ordering::Acquire))
    }

    /// The capabilities in force now (see the [module documentation](self)).
    pub fn current_capabilities(&self) -> EgressCapabilities {
        self.status().current
    }

    /// The counters.
    pub fn stats(&self) -> UplinkStats {
        let mut stats = self.counters.snapshot();
        for rx in &self.rx {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            stats.rx_chunks_allocated += rx.pool.allocated();
            stats.rx_chunks_recycled += rx.pool.recycled();
        }
        stats
    }

    /// What the NIC offers and what the switch and the port do for it.
    pub fn report(&self) -> UplinkReport {
        let status = self.status();
        UplinkReport {
            interface: self.interface.clone(),
            mode: self.config.offload,
            link: self.link(),
            nic: status.nic,
            declared: self.caps.egress,
            current: status.current,
            queues: self.caps.rx_queues,
            vnet_hdr_len: self.sockets().format.size(),
            qdisc_bypass: self.bypass.load(Ordering::Acquire),
            stats: self.stats(),
        }
    }

    /// Reads the link state and (with [`OffloadMode::Auto`]) the NIC's
    /// features now, opens the sockets again if the interface came back,
    /// and returns the link state. The frame paths call this every
    /// [`UplinkConfig::refresh`]; a control plane may call it at any time.
    pub fn refresh(&self) -> LinkState {
        let _guard = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refresh_locked()
    }

    fn refresh_locked(&self) -> LinkState {
        self.schedule_refresh();
        let mut sockets = self.sockets();
        let mut link = read_link(&sockets, &self.interface);
        let mut reopened = false;
        if link == LinkState::Gone {
            if let Some(fresh) = self.try_reopen() {
                let fresh = Arc::new(fresh);
                *self.sockets.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                // After the swap: a waker set meanwhile reaches the new
                // sockets either here or in `set_rx_waker`.
                self.rx_wakers.hand_over(|queue, waker| {
                    fresh.wakers.set(queue, waker);
                });
                bump(&self.counters.reopens, 1);
                sockets = fresh;
                link = read_link(&sockets, &self.interface);
                reopened = true;
            }
        }
        let old = LinkState::from_u8(self.link.swap(link.as_u8(), Ordering::AcqRel));
        if old != link {
            bump(&self.counters.link_changes, 1);
        }
        for rx in &sockets.rx {
            if let Ok((_, drops)) = sys::packet_statistics(rx.as_fd()) {
                bump(&self.counters.rx_kernel_drops, u64::from(drops));
            }
        }
        if link != LinkState::Gone {
            if let Ok(nic) = read_features(sockets.rx[0].as_fd(), &self.interface) {
                let mut status = self.status.write().unwrap_or_else(PoisonError::into_inner);
                if status.nic != nic {
                    bump(&self.counters.feature_changes, 1);
                    status.nic = nic;
                    if self.config.offload == OffloadMode::Auto {
                        status.current = self
                            .config
                            .offload
                            .egress_capabilities(nic, self.caps.egress.mtu);
                    }
                }
            }
            let status = self.status();
            let bypass = bypass_fits(&self.config, status.nic, &status.current);
            if (reopened || bypass != self.bypass.load(Ordering::Acquire))
                && set_bypass(&sockets, bypass).is_ok()
            {
                self.bypass.store(bypass, Ordering::Release);
            }
        }
        link
    }

    fn try_reopen(&self) -> Option<Sockets> {
        match self.reopen {
            Reopen::Named => open_named(&self.interface, &self.config).ok(),
            Reopen::Never => None,
        }
    }

    fn schedule_refresh(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let period = self.config.refresh.as_millis().max(1) as u64;
        self.next_refresh.store(now + period, Ordering::Release);
    }

    /// Refreshes when one is due and no other thread is at it.
    fn maybe_refresh(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.next_refresh.load(Ordering::Acquire) {
            return;
        }
        if let Ok(_guard) = self.refreshing.try_lock() {
            if now >= self.next_refresh.load(Ordering::Acquire) {
                self.refresh_locked();
            }
        }
    }

    /// Makes the next frame path refresh at once (after an error that says
    /// the link changed).
    fn refresh_soon(&self) {
        self.next_refresh.store(0, Ordering::Release);
    }

    fn sockets(&self) -> Arc<Sockets> {
        self.sockets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn status(&self) -> Status {
        *self.status.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the link down or gone after a send error that says so.
    fn note_link_error(&self, err: &io::Error) {
        let state = match err.raw_os_error() {
            Some(libc::ENXIO | libc::ENODEV) => LinkState::Gone,
            _ => LinkState::Down,
        };
        let old = LinkState::from_u8(self.link.swap(state.as_u8(), Ordering::AcqRel));
        if old != state {
            bump(&self.counters.link_changes, 1);
        }
        self.refresh_soon();
    }

    /// Sends the frames of `batch` from `start` on that the NIC takes as
    /// they are, up to [`MMSG_MAX`] in one sendmmsg; returns how many the
    /// kernel took (at least one), or the error of the first.
    fn send_run(
        &self,
        fd: &OwnedFd,
        format: HdrFormat,
        batch: &[Packet],
        caps: &EgressCapabilities,
    ) -> io::Result<usize> {
        let run = batch
            .iter()
            .take(MMSG_MAX)
            .take_while(|packet| offload::caps_accept(caps, &packet.hdr))
            .count();
        let mut hdrs = [[0u8; HDR_LEN_V1]; MMSG_MAX];
        for (raw, packet) in hdrs.iter_mut().zip(&batch[..run]) {
            // The buffer has the V1 size, so emitting cannot fail.
            let _ = wire_header(&packet.hdr, packet.data.len()).emit(raw, format);
        }
        let len = format.size();
        let mut iovs = [[IoSlice::new(&[]); 2]; MMSG_MAX];
        for ((iov, raw), packet) in iovs.iter_mut().zip(&hdrs).zip(&batch[..run]) {
            *iov = [IoSlice::new(&raw[..len]), IoSlice::new(&packet.data)];
        }
        sys::send_frames(fd.as_fd(), &iovs[..run])
    }

    /// Finishes `packet` for capabilities `caps` (it asked for an offload
    /// the NIC no longer has) and sends what results. Returns whether it
    /// was taken as a whole.
    fn send_adapted(
        &self,
        fd: &OwnedFd,
        format: HdrFormat,
        queue: &mut TxQueue,
        packet: &Packet,
        caps: &EgressCapabilities,
    ) -> bool {
        let Ok(frame) = CheckedFrame::check(packet.clone()) else {
            bump(&self.counters.tx_adapt_dropped, 1);
            return false;
        };
        let TxQueue {
            segmenter,
            segments,
        } = queue;
        segments.clear();
        let plain: Vec<Packet> = match adapt(segmenter, &frame, caps, segments) {
            Ok(Adapted::PassThrough) => vec![packet.clone()],
            Ok(Adapted::Checksummed | Adapted::Segmented(_)) => segments
                .iter()
                .map(|segment| Packet::plain(segment.to_vec()))
                .collect(),
            Err(_) => {
                bump(&self.counters.tx_adapt_dropped, 1);
                return false;
            }
        };
        bump(&self.counters.tx_adapted, 1);
        let everything = EgressCapabilities::full(caps.mtu).with_ufo(true);
        let mut sent = 0;
        while sent < plain.len() {
            match self.send_run(fd, format, &plain[sent..], &everything) {
                Ok(n) => sent += n.max(1),
                Err(_) => break,
            }
        }
        bump(&self.counters.tx_frames, sent as u64);
        let lost = (plain.len() - sent) as u64;
        bump(&self.counters.tx_adapt_dropped, lost);
        lost == 0
    }
}

/// Opens an unbound AF_PACKET raw socket, non-blocking and close-on-exec,
/// in this network namespace or the one at `netns`: what a privileged
/// process hands to a sandboxed one for [`UplinkPort::from_fd`]. It
/// receives nothing until that binds it.
pub fn open_packet_socket(netns: Option<&std::path::Path>) -> Result<OwnedFd, UplinkError> {
    let socket_error = |err| UplinkError::setup("an uplink", "socket", err);
    match netns {
        None => sys::packet_socket().map_err(socket_error),
        Some(path) => sys::in_netns(path, || Ok(sys::packet_socket()))
            .map_err(|source| UplinkError::Namespace {
                path: path.display().to_string(),
                source,
            })?
            .map_err(socket_error),
    }
}

/// The header as the kernel is to see it: only NEEDS_CSUM among the flags
/// (DATA_VALID means nothing on transmit), no merged buffers, and a header
/// length the frame holds (the kernel refuses a longer one; a guest's is
/// only a hint).
fn wire_header(hdr: &VirtioNetHdr, len: usize) -> VirtioNetHdr {
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    VirtioNetHdr {
        flags: hdr.flags & FLAG_NEEDS_CSUM,
        hdr_len: hdr.hdr_len.min(len),
        num_buffers: 0,
        ..*hdr
    }
}

fn check_queues(queues: usize) -> Result<(), UplinkError> {
    if (1..=256).contains(&queues) {
        Ok(())
    } else {
        Err(UplinkError::Queues { queues })
    }
}

fn namespace_name(config: &UplinkConfig) -> String {
    match &config.netns {
        Some(path) => format!("network namespace {}", path.display()),
        None => "this network namespace".to_owned(),
    }
}

fn no_such_interface(interface: &str, config: &UplinkConfig, err: io::Error) -> UplinkError {
    match err.raw_os_error() {
        Some(libc::ENODEV) => UplinkError::NoSuchInterface {
            interface: interface.to_owned(),
            namespace: namespace_name(config),
        },
        _ => UplinkError::setup(interface, "SIOCGIFINDEX", err),
    }
}

/// Opens every queue's sockets on `interface`, in the configured namespace.
fn open_named(interface: &str, config: &UplinkConfig) -> Result<Sockets, UplinkError> {
    match &config.netns {
        None => open_sockets(interface, config),
        Some(path) => {
            let (name, cfg) = (interface.to_owned(), config.clone());
            sys::in_netns(path, move || Ok(open_sockets(&name, &cfg))).map_err(|source| {
                UplinkError::Namespace {
                    path: path.display().to_string(),
                    source,
                }
            })?
        }
    }
}

fn open_sockets(interface: &str, config: &UplinkConfig) -> Result<Sockets, UplinkError> {
    let mut rx = Vec::with_capacity(config.queues);
    let mut tx = Vec::with_capacity(config.queues);
    let mut ifindex = 0;
    let mut format = HdrFormat::V1;
    let mut filter_outgoing = false;
    let mut fanout = None;
    for queue in 0..config.queues {
        let socket =
            sys::packet_socket().map_err(|err| UplinkError::setup(interface, "socket", err))?;
        if queue == 0 {
            ifindex = sys::interface_index(socket.as_fd(), interface)
                .map_err(|err| no_such_interface(interface, config, err))?;
        }
        let group = if config.queues > 1 {
            Some(fanout)
        } else {
            None
        };
        let (f, filter) = setup_rx(&socket, interface, ifindex, group)?;
        if queue == 0 && config.queues > 1 {
            let value = sys::int_option(socket.as_fd(), libc::SOL_PACKET, libc::PACKET_FANOUT)
                .map_err(|err| UplinkError::setup(interface, "PACKET_FANOUT", err))?;
            fanout = Some(value as u16);
        }
        format = f;
        filter_outgoing |= filter;
        let sender =
            sys::packet_socket().map_err(|err| UplinkError::setup(interface, "socket", err))?;
        setup_tx(&sender, interface, ifindex, format, true)?;
        rx.push(socket);
        tx.push(sender);
    }
    Ok(Sockets {
        wakers: ReadableWakers::new(rx.iter().map(AsRawFd::as_raw_fd)),
        rx,
        tx,
        ifindex,
        format,
        filter_outgoing,
    })
}

/// Asks for the 12-byte header, or the 10-byte one where the kernel lacks
/// PACKET_VNET_HDR_SZ.
fn set_vnet_header(fd: &OwnedFd, interface: &str) -> Result<HdrFormat, UplinkError> {
    let v1 = libc::c_int::try_from(HDR_LEN_V1).unwrap_or(12);
    match sys::set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR_SZ, v1) {
        Ok(()) => Ok(HdrFormat::V1),
        Err(_) => {
            sys::set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
                .map_err(|err| UplinkError::setup(interface, "PACKET_VNET_HDR", err))?;
            Ok(HdrFormat::Legacy)
        }
    }
}

/// Sets up a receiving socket: header, own frames ignored, buffer, bound,
/// promiscuous, and in the fanout group (`Some(None)`: create one,
/// `Some(Some(id))`: join it). Returns the header format and whether
/// outgoing frames must be filtered by hand.
fn setup_rx(
    fd: &OwnedFd,
    interface: &str,
    ifindex: i32,
    fanout: Option<Option<u16>>,
) -> Result<(HdrFormat, bool), UplinkError> {
    let format = set_vnet_header(fd, interface)?;
    let filter_outgoing = sys::set_int_option(
        fd.as_fd(),
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        1,
    )
    .is_err();
    if sys::set_int_option(
        fd.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        SOCKET_BUFFER,
    )
    .is_err()
    {
        let _ = sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
    }
    sys::bind_packet(fd.as_fd(), ifindex, true)
        .map_err(|err| UplinkError::setup(interface, "bind", err))?;
    sys::add_promiscuous_membership(fd.as_fd(), ifindex)
        .map_err(|err| UplinkError::setup(interface, "PACKET_ADD_MEMBERSHIP", err))?;
    if let Some(group) = fanout {
        let hash = libc::PACKET_FANOUT_HASH as i32;
        let arg = match group {
            None => (hash | libc::PACKET_FANOUT_FLAG_UNIQUEID as i32) << 16,
            Some(id) => i32::from(id) | (hash << 16),
        };
        sys::set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_FANOUT, arg)
            .map_err(|err| UplinkError::setup(interface, "PACKET_FANOUT", err))?;
    }
    Ok((format, filter_outgoing))
}

/// Sets up a sending socket: the same header format, buffer,
/// and (with `bind`) bound without a receive hook. A socket that also
/// receives (from [`UplinkPort::from_fd`]) is bound already.
fn setup_tx(
    fd: &OwnedFd,
    interface: &str,
    ifindex: i32,
    format: HdrFormat,
    bind: bool,
) -> Result<(), UplinkError> {
    match format {
        HdrFormat::V1 => {
            let v1 = libc::c_int::try_from(HDR_LEN_V1).unwrap_or(12);
            sys::set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR_SZ, v1)
                .map_err(|err| UplinkError::setup(interface, "PACKET_VNET_HDR_SZ", err))?;
        }
        HdrFormat::Legacy => {
            sys::set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
                .map_err(|err| UplinkError::setup(interface, "PACKET_VNET_HDR", err))?;
        }
    }
    if sys::set_int_option(
        fd.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SOCKET_BUFFER,
    )
    .is_err()
    {
        let _ = sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER);
    }
    if bind {
        sys::bind_packet(fd.as_fd(), ifindex, false)
            .map_err(|err| UplinkError::setup(interface, "bind", err))?;
    }
    Ok(())
}

/// Whether the sending sockets may bypass the qdisc: asked for, and no
/// large frame passes that the NIC does not cut itself. The kernel's
/// software GSO runs only on the qdisc path: a frame sent with
/// `PACKET_QDISC_BYPASS` that would need it is dropped by the kernel, so
/// [`OffloadMode::Tso`] over a NIC without TSO sends through the qdisc.
fn bypass_fits(config: &UplinkConfig, nic: NicFeatures, passed: &EgressCapabilities) -> bool {
    let cut = nic.egress_capabilities(passed.mtu);
    config.qdisc_bypass
        && (cut.tso4 || !passed.tso4)
        && (cut.tso6 || !passed.tso6)
        && (cut.ecn || !passed.ecn)
        && (cut.uso || !passed.uso)
        && (cut.ufo || !passed.ufo)
}

/// Turns `PACKET_QDISC_BYPASS` on or off on every sending socket.
fn set_bypass(sockets: &Sockets, bypass: bool) -> io::Result<()> {
    for fd in &sockets.tx {
        sys::set_int_option(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            i32::from(bypass),
        )?;
    }
    Ok(())
}

/// The link of the interface the sockets are bound to.
fn read_link(sockets: &Sockets, interface: &str) -> LinkState {
    let fd = sockets.rx[0].as_fd();
    match sys::interface_index(fd, interface) {
        Ok(index) if index == sockets.ifindex => {}
        _ => return LinkState::Gone,
    }
    match sys::interface_flags(fd, interface) {
        Ok(flags) if flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0 => LinkState::Up,
        Ok(_) => LinkState::Down,
        Err(_) => LinkState::Gone,
    }
}

/// The NIC's transmit features: by name where the driver lists them,
/// through the legacy one-flag commands where it does not.
fn read_features(fd: std::os::fd::BorrowedFd<'_>, interface: &str) -> io::Result<NicFeatures> {
    if let Ok(names) = sys::ethtool_feature_names(fd, interface) {
        if let Ok(active) = sys::ethtool_active_features(fd, interface, names.len()) {
            return Ok(NicFeatures::from_names(
                names.iter().map(String::as_str).zip(active),
            ));
        }
    }
    Ok(NicFeatures::from_legacy(
        sys::ethtool_flag(fd, interface, ethtool_cmd::TX_CSUM)?,
        sys::ethtool_flag(fd, interface, ethtool_cmd::SG)?,
        sys::ethtool_flag(fd, interface, ethtool_cmd::TSO)?,
        sys::ethtool_flag(fd, interface, ethtool_cmd::GSO)?,
    ))
}

impl Port for UplinkPort {
    fn name(&self) -> &str {
        &self.interface
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    /// Yes, for each queue: a thread waiting on the receive sockets wakes
    /// `waker` when the kernel has frames for a queue the poller found
    /// empty. Kept across the sockets opened again when the interface
    /// comes back.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        self.rx_wakers
            .keep(queue, waker, |waker| {
                self.sockets().wakers.set(queue, waker)
            })
            .unwrap_or(false)
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let Some(rx) = self.rx.get(queue) else {
            return Err(PortError::NoSuchQueue {
                direction: "rx",
                queue,
                queues: self.rx.len(),
            });
        };
        self.maybe_refresh();
        let sockets = self.sockets();
        let Some(fd) = sockets.rx.get(queue) else {
            return Ok(0);
        };
        let hdr_len = sockets.format.size();
        let mut rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
        let before = batch.len();
        while batch.len() - before < max {
            let want = (max - (batch.len() - before)).min(RX_BATCH);
            let mut chunk = rx.pool.take(RX_BATCH * RX_SLOT);
            let mut meta = [Received::default(); RX_BATCH];
            let result = {
                let mut slots = chunk.chunks_exact_mut(RX_SLOT);
                let mut bufs: [&mut [u8]; RX_BATCH] =
                    std::array::from_fn(|_| slots.next().unwrap_or_default());
                sys::recv_frames(fd.as_fd(), &mut bufs[..want], &mut meta)
            };
            let whole = chunk.freeze();
            let received = match result {
                Ok(n) => n,
                Err(err) => {
                    rx.pool.give_back(whole);
                    match err.kind() {
                        io::ErrorKind::WouldBlock if batch.len() == before => {
                            // Nothing since the last poll: the next frame
                            // is to wake the poller.
                            sockets.wakers.found_empty(queue);
                        }
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                        // A link that went down reports it once here.
                        _ if err.raw_os_error() == Some(libc::ENETDOWN) => self.refresh_soon(),
                        _ => bump(&self.counters.rx_errors, 1),
                    }
                    break;
                }
            };
            for (i, got) in meta[..received].iter().enumerate() {
                if sockets.filter_outgoing && got.pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let start = i * RX_SLOT;
                if got.truncated || got.len < hdr_len {
                    bump(&self.counters.rx_errors, 1);
                    continue;
                }
                match VirtioNetHdr::parse(&whole[start..start + hdr_len], sockets.format) {
                    Ok((hdr, _)) => batch.push(Packet {
                        hdr,
                        data: whole.slice(start + hdr_len..start + got.len),
                        tail: None,
                    }),
                    Err(_) => bump(&self.counters.rx_errors, 1),
                }
            }
            rx.pool.give_back(whole);
            if received < want {
                break;
            }
        }
        let got = batch.len() - before;
        bump(&self.counters.rx_frames, got as u64);
        Ok(got)
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let mut batch = vec![packet];
        match self.send_batch(queue, &mut batch) {
            Ok(()) => Ok(()),
            Err(err) => {
                let packet = batch.pop().unwrap_or_default();
                Err(match err {
                    BatchSendError::Full { queue, capacity } => SendError::Full {
                        queue,
                        capacity,
                        packet,
                    },
                    BatchSendError::Disconnected { queue } => {
                        SendError::Disconnected { queue, packet }
                    }
                    BatchSendError::NoSuchQueue { queue, queues } => SendError::NoSuchQueue {
                        queue,
                        queues,
                        packet,
                    },
                    BatchSendError::Refused { queue, reason } => SendError::Refused {
                        queue,
                        reason,
                        packet,
                    },
                })
            }
        }
    }

    fn send_batch(&self, queue: usize, batch: &mut Vec<Packet>) -> Result<(), BatchSendError> {
        let Some(tx) = self.tx.get(queue) else {
            return Err(BatchSendError::NoSuchQueue {
                queue,
                queues: self.tx.len(),
            });
        };
        self.maybe_refresh();
        if self.link() != LinkState::Up {
            bump(&self.counters.tx_link_down, batch.len() as u64);
            return Err(BatchSendError::Disconnected { queue });
        }
        let sockets = self.sockets();
        let Some(fd) = sockets.tx.get(queue) else {
            return Err(BatchSendError::Disconnected { queue });
        };
        let caps = self.status().current;
        let mut tx = tx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = 0;
        let mut result = Ok(());
        while taken < batch.len() {
            let first = &batch[taken];
            if !offload::caps_accept(&caps, &first.hdr) {
                // Taken whether or not every segment went: what did not is
                // counted in tx_adapt_dropped.
                self.send_adapted(fd, sockets.format, &mut tx, first, &caps);
                taken += 1;
                continue;
            }
            match self.send_run(fd, sockets.format, &batch[taken..], &caps) {
                Ok(0) => {
                    // Nothing taken and no error: treat it as a full
                    // queue, so the caller retries the rest.
                    result = Err(BatchSendError::Full { queue, capacity: 0 });
                    break;
                }
                Ok(n) => {
                    bump(&self.counters.tx_frames, n as u64);
                    taken += n;
                }
                Err(err) => {
                    result = Err(self.send_error(queue, &err, batch.len() - taken));
                    break;
                }
            }
        }
        batch.drain(..taken);
        result
    }
}

impl UplinkPort {
    /// What a send error means for the batch, with the counting it needs.
    fn send_error(&self, queue: usize, err: &io::Error, left: usize) -> BatchSendError {
        match err.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR) => {
                BatchSendError::Full { queue, capacity: 0 }
            }
            Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV | libc::ENETUNREACH) => {
                self.note_link_error(err);
                bump(&self.counters.tx_link_down, left as u64);
                BatchSendError::Disconnected { queue }
            }
            _ => {
                bump(&self.counters.tx_errors, 1);
                BatchSendError::Refused {
                    queue,
                    reason: err.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
