//! A vhost-user-net backend: a switch port a VMM (QEMU, Cloud Hypervisor,
//! crosvm) attaches a guest's virtio-net device to over a Unix socket, as
//! it attaches to OVS-DPDK or VPP.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};
//!
//! // Listen on /tmp/vm0.sock; QEMU then connects with
//! //   -chardev socket,id=c0,path=/tmp/vm0.sock
//! //   -netdev vhost-user,id=n0,chardev=c0,queues=2
//! //   -device virtio-net-pci,netdev=n0,mq=on
//! let port = VhostUserPort::start(VhostUserConfig::new("vm0", "/tmp/vm0.sock").queue_pairs(2))?;
//! // Add `port` to a switch as any other `Arc<dyn Port>`; it stays in the
//! // switch while guests come and go.
//! println!("{:?}", port.report());
//! # Ok::<(), vswitch_ports::vhost_user::VhostUserError>(())
//! ```
//!
//! # What it does
//!
//! The port is built on [`GuestPort`], which holds the frames between the
//! switch and the guest's virtqueues and does everything that touches a
//! frame: the transmit chain's header and headers copied once out of guest
//! memory and checked against what was negotiated, the receive header built for
//! the guest's features, mergeable receive buffers, the software fallback
//! when the guest takes less than the port declared. This module adds the
//! vhost-user transport around it (rust-vmm's `vhost-user-backend`):
//!
//! * **Features offered**: `VERSION_1`, `MRG_RXBUF`, `CSUM`, `GUEST_CSUM`,
//!   TSO4/6 and ECN both ways, UFO both ways, `HOST_USO` and
//!   `GUEST_USO4/6`, `MTU`, `MQ` when configured with more than one queue
//!   pair, `RING_F_EVENT_IDX`, `RING_F_INDIRECT_DESC`; protocol features
//!   `MQ`, `REPLY_ACK`, `NET_MTU` and `CONFIGURE_MEM_SLOTS` (memory
//!   regions added and removed at run time: each event works on a snapshot
//!   of the memory map, so a removed region stays mapped until the event
//!   using it ends).
//! * **The guest's MTU**: a frontend that gives the guest an MTU (QEMU's
//!   `host_mtu=N`, which also sets it in the guest's config space) tells
//!   the backend with `VHOST_USER_NET_SET_MTU`. An MTU from 68 up to the
//!   port's own is taken: frames for the guest are cut to it
//!   ([`VhostUserReport::mtu`]). A larger one is refused (QEMU then does
//!   not start the device and says "MTU not supported by the backend"),
//!   with the reason and the fix in [`VhostUserReport::last_error`]: the
//!   switch would otherwise drop every frame the guest sends above the
//!   port's MTU.
//!   What the guest acknowledges becomes a [`Negotiated`] set through the
//!   typed [`features`](crate::features) module; a set that breaks the
//!   virtio dependency rules keeps the port down, with the reason in
//!   [`VhostUserReport::last_error`].
//! * **The control virtqueue** stays in the frontend: QEMU serves
//!   `VIRTIO_NET_F_CTRL_VQ` itself and enables queue pairs with
//!   `VHOST_USER_SET_VRING_ENABLE`.
//! * **Threads**: one thread per queue pair, which waits on that pair's
//!   kicks and on an eventfd the switch writes when it queued frames for
//!   the guest. Each event moves at most 256 frames per direction, returns
//!   all their chains to the used ring at once and signals the guest at
//!   most once, honouring the ring's suppression (`EVENT_IDX` both ways).
//!   While the device has work it suppresses the guest's kicks.
//! * **Run to completion toward the guest**: the switch's worker that
//!   forwards frames to the guest writes them into its receive ring itself,
//!   in the same call, when the pair's thread is not busy with the pair;
//!   only otherwise (or past the 256-frame budget) is the pair's thread
//!   woken for them. Frames keep their order: whoever fills takes them out
//!   of the pair's one queue, holding the pair.
//! * **Lent payloads** (with [`VhostUserConfig::lend_payloads`]): a large
//!   TCP segmentation frame's payload (16 KiB
//!   or more, its headers within its first 256 bytes) stays in the
//!   sending guest's buffers and is read out of them by the egress that
//!   copies it where it goes, so a byte from one guest to another is
//!   copied once. Its transmit chain goes back to the guest only when the
//!   last copy of the frame is gone: the thread that drops it (usually
//!   the worker filling the receiver) publishes it to the used ring, once
//!   for all the chains one fill gives back, or wakes the pair's thread
//!   when that one is busy with the pair; at
//!   most 64 chains of a pair are lent at once. Before
//!   `VHOST_USER_GET_VRING_BASE` stops a transmit ring, every payload still
//!   lent from it is copied into host memory and its chain returned.
//! * **Flow control**: when the switch has not yet taken what the guest
//!   sent, the pair stops taking transmit chains (the guest sees a full
//!   ring, not loss) and resumes when the switch takes frames again.
//! * **Capabilities**: the port declares the receive offloads it offers
//!   (with the configured MTU) for its whole life, because the switch
//!   keeps a port's capabilities constant while guests come and go. A
//!   guest that acknowledges less gets frames completed or segmented in
//!   software by the guest port on the way in.
//! * **Lifecycle**: in server mode the port listens on the socket; in
//!   client mode (QEMU with `server=on`) it connects, and reconnects every
//!   [`VhostUserConfig::reconnect_interval`] after the frontend went away.
//!   While no guest is attached, frames toward the port are refused
//!   ([`SendError::Disconnected`], which the switch counts as drops) and
//!   every other port keeps flowing; the next connection on the same socket
//!   brings the port back without touching the switch.
//! * **A hostile guest**: problems inside a chain are the guest port's
//!   typed errors and counters, and the chain goes back with length 0. A
//!   guest that breaks a ring itself (an available index more than a queue
//!   ahead, a head outside the descriptor table, rings outside its memory)
//!   gets that queue marked broken ([`VhostUserReport::broken_now`], and
//!   counted in [`VhostUserReport::broken_queues`]) while the guest stays
//!   attached; it is not served again until the device is reset or the
//!   guest reconnects. Descriptor loops and nested indirect tables end a chain
//!   in virtio-queue's own walk. Nothing a guest writes can panic or stall
//!   the switch.
//!
//! # Multi-queue
//!
//! The port has one switch queue per queue pair. The switch sends each
//! flow on the queue its RSS hash picks (whichever worker handles it), so
//! a flow toward the guest stays on one receive queue, in order, and
//! different flows spread over all the pairs and so over the guest's
//! vCPUs, however many workers the switch has. Frames for a pair the guest
//! has not enabled are folded onto those it uses
//! ([`GuestPort::set_active_queue_pairs`]); a guest that negotiated fewer
//! pairs (no `MQ`) is served on pair 0.

mod backend;
pub mod queue;
mod relay;
#[cfg(test)]
mod tests;

pub use queue::{Drained, QueueBroken};

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::Waker;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vhost::vhost_user::{Error as VhostUserProtocolError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vswitch_offload::Packet;

use crate::features::{Features, GuestOffloads, Negotiated};
use crate::guest::{GuestPort, GuestPortStats};
use crate::port::{BatchSendError, Port, PortCapabilities, PortError, SendError};
use crate::wake::KeptWakers;
use backend::NetBackend;

/// Most queue pairs a port serves.
pub const MAX_QUEUE_PAIRS: usize = 8;

/// Largest virtqueue the backend accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// How long a guest port that went away waits for the threads still
/// using it (one send or one event each) before its queued frames are
/// counted and dropped.
const RETIRE_WAIT: Duration = Duration::from_millis(50);

/// Who opens the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// The port listens; the frontend connects (QEMU's default).
    Server,
    /// The frontend listens (`server=on` in QEMU); the port connects and
    /// reconnects.
    Client,
}

/// How to start a vhost-user port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserConfig {
    /// The port's name.
    pub name: String,
    /// The Unix socket.
    pub socket: PathBuf,
    /// Who opens it.
    pub mode: SocketMode,
    /// Queue pairs offered (1 to [`MAX_QUEUE_PAIRS`]).
    pub queue_pairs: usize,
    /// The MTU the switch segments to for this guest.
    pub mtu: u16,
    /// Largest virtqueue size accepted (a power of two up to
    /// [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// Frames held per direction and queue pair between the switch and
    /// the guest's rings.
    pub queue_len: usize,
    /// In client mode, the wait between connection attempts.
    pub reconnect_interval: Duration,
    /// Lend large TCP segmentation payloads instead of copying them on
    /// transmit (see "Lent payloads" in the module documentation). Off by
    /// default: it saves a copy a byte toward another guest, but holds the
    /// sender's chains until the receiver has the bytes, which costs more
    /// than the copy end to end where frontends and switch share few cores.
    pub lend_payloads: bool,
}

impl VhostUserConfig {
    /// A server-mode port with one queue pair, MTU 1500 and 1024-entry
    /// rings.
    pub fn new(name: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        VhostUserConfig {
            name: name.into(),
            socket: socket.into(),
            mode: SocketMode::Server,
            queue_pairs: 1,
            mtu: 1500,
            queue_size: MAX_QUEUE_SIZE,
            queue_len: 1024,
            reconnect_interval: Duration::from_millis(200),
            lend_payloads: false,
        }
    }

    /// Sets the queue pairs offered.
    pub fn queue_pairs(mut self, pairs: usize) -> Self {
        self.queue_pairs = pairs;
        self
    }

    /// Sets who opens the socket.
    pub fn mode(mut self, mode: SocketMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Sets whether large TCP segmentation payloads are lent
    /// ([`lend_payloads`](Self::lend_payloads)).
    pub fn lend_payloads(mut self, lend: bool) -> Self {
        self.lend_payloads = lend;
        self
    }

    fn check(&self) -> Result<(), VhostUserError> {
        if self.queue_pairs == 0 || self.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(VhostUserError::QueuePairs {
                found: self.queue_pairs,
            });
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(VhostUserError::QueueSize {
                found: self.queue_size,
            });
        }
        if !(68..=9216).contains(&self.mtu) {
            return Err(VhostUserError::Mtu { found: self.mtu });
        }
        Ok(())
    }
}

/// Why a vhost-user port could not start.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// Queue pairs out of range.
    #[error("queue pairs: expected 1 to {MAX_QUEUE_PAIRS}, found {found}")]
    QueuePairs {
        /// The number asked for.
        found: usize,
    },
    /// Ring size out of range.
    #[error("queue size: expected a power of two up to {MAX_QUEUE_SIZE}, found {found}")]
    QueueSize {
        /// The size asked for.
        found: u16,
    },
    /// MTU out of range.
    #[error("MTU: expected 68 to 9216, found {found}")]
    Mtu {
        /// The MTU asked for.
        found: u16,
    },
    /// The socket could not be opened.
    #[error("vhost-user socket {path}: {source} (hint: the directory must exist and be writable; in client mode the frontend must listen there)")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The backend could not be set up.
    #[error("vhost-user backend {name}: {reason}")]
    Backend {
        /// The port's name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// What the port has seen, for statistics and the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhostUserReport {
    /// A guest is attached and negotiated features.
    pub connected: bool,
    /// Connections accepted (or made, in client mode) so far.
    pub connections: u64,
    /// The virtio-net features the attached guest negotiated.
    pub negotiated: Option<Features>,
    /// Virtqueues marked broken because the guest corrupted a ring, over
    /// every connection so far.
    pub broken_queues: u64,
    /// The virtqueues of the current connection not served because its
    /// guest broke them (receive queues even, transmit queues odd), in
    /// order; empty again once the guest resets the device or another
    /// connection starts.
    pub broken_now: Vec<u16>,
    /// The last problem with a connection or a ring, if any.
    pub last_error: Option<String>,
    /// The MTU frames for the attached guest are cut to: the one its
    /// frontend set (`VHOST_USER_NET_SET_MTU`, QEMU's `host_mtu`), else
    /// the port's.
    pub mtu: Option<u16>,
    /// The guest port's counters, summed over every connection so far.
    pub guest: GuestPortStats,
}

/// State shared by the port, its connection thread and each connection's
/// backend.
struct Shared {
    config: VhostUserConfig,
    guest: RwLock<Option<Arc<GuestPort>>>,
    negotiated: Mutex<Option<Features>>,
    /// Counters of guest ports that are gone.
    past: Mutex<GuestPortStats>,
    connections: AtomicU64,
    broken_queues: AtomicU64,
    /// The current connection's broken virtqueues (bit = virtqueue index;
    /// [`MAX_QUEUE_PAIRS`] pairs need 16).
    broken_now: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
    shutdown: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
    /// Whom each receive queue wakes when frames arrive
    /// ([`Port::set_rx_waker`]), handed to each connection's guest port.
    rx_wakers: KeptWakers,
    /// What each receive queue's pair thread runs once it has taken the
    /// guest's frames ([`Port::set_rx_runner`]): the switch's round, on
    /// that thread. Kept across connections.
    rx_runners: KeptWakers,
    /// The current connection's backend, which writes the frames the
    /// switch sends straight into the guest from the sender's thread
    /// ([`NetBackend::fill_from_switch`]); empty between connections.
    backend: RwLock<Weak<NetBackend>>,
}

/// Virtqueue `queue`'s bit in [`Shared::broken_now`]'s set; `None` past
/// the set's 64 queues.
fn queue_bit(queue: usize) -> Option<u64> {
    u32::try_from(queue)
        .ok()
        .and_then(|queue| 1u64.checked_shl(queue))
}

impl Shared {
    fn guest(&self) -> Option<Arc<GuestPort>> {
        self.guest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether frames the attached guest sent on pair `pair` wait for the
    /// switch.
    fn has_transmitted(&self, pair: usize) -> bool {
        self.guest().is_some_and(|guest| {
            guest
                .queue(pair)
                .is_some_and(|queue| queue.has_transmitted())
        })
    }

    fn is_attached(&self) -> bool {
        self.guest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn attach(&self, port: Arc<GuestPort>, negotiated: Features) {
        let old = self
            .guest
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(port.clone());
        if let Some(old) = old {
            self.retire(old);
        }
        // After the swap: a waker set meanwhile reaches this port either
        // here or in `set_rx_waker`.
        self.rx_wakers.hand_over(|queue, waker| {
            port.set_rx_waker(queue, waker);
        });
        *self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(negotiated);
    }

    fn detach(&self) {
        let old = self
            .guest
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            self.retire(old);
        }
        *self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn retire(&self, old: Arc<GuestPort>) {
        // Frames still queued either way go with the guest, counted. A
        // worker or device thread that took the port just before it was
        // swapped out holds it for one send or one event at most: wait
        // for them (briefly), so that what they queue is counted too.
        let deadline = Instant::now() + RETIRE_WAIT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(100));
        }
        old.discard_queued();
        let stats = old.stats();
        let mut past = self.past.lock().unwrap_or_else(PoisonError::into_inner);
        add_stats(&mut past, &stats);
    }

    fn negotiation_failed(&self, reason: String) {
        self.detach();
        self.note(format!("feature negotiation refused: {reason}"));
    }

    /// Marks a virtqueue of the current connection broken: it is not
    /// served again until [`Shared::clear_broken`]. Counted and noted the
    /// first time only.
    fn queue_broken(&self, err: &QueueBroken) {
        let Some(bit) = queue_bit(usize::from(err.queue)) else {
            return;
        };
        if self.broken_now.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.broken_queues.fetch_add(1, Ordering::Relaxed);
            self.note(err.to_string());
        }
    }

    fn is_broken(&self, queue: usize) -> bool {
        queue_bit(queue).is_some_and(|bit| self.broken_now.load(Ordering::Relaxed) & bit != 0)
    }

    /// Every virtqueue is served again: the device was reset, or a
    /// connection ends or starts.
    fn clear_broken(&self) {
        self.broken_now.store(0, Ordering::Relaxed);
    }

    fn broken_now(&self) -> Vec<u16> {
        let bits = self.broken_now.load(Ordering::Relaxed);
        (0..u64::BITS)
            .filter(|queue| bits & (1 << queue) != 0)
            .filter_map(|queue| u16::try_from(queue).ok())
            .collect()
    }

    /// Writes the frames just queued on `port`'s pair `pair` into the
    /// guest from this thread; false when the pair's thread must be woken
    /// for them instead.
    fn fill_from_switch(&self, port: &GuestPort, pair: usize) -> bool {
        let backend = self
            .backend
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        backend.is_some_and(|backend| backend.fill_from_switch(port, pair))
    }

    fn note(&self, message: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }
}

fn add_stats(sum: &mut GuestPortStats, more: &GuestPortStats) {
    // Every field named: a counter added to the guest port must be summed
    // here too, or this does not compile.
    let GuestPortStats {
        tx_frames,
        tx_bytes,
        tx_errors,
        tx_dropped,
        rx_frames,
        rx_bytes,
        rx_dropped,
        rx_bad_chains,
        rx_adapted,
        tx_lent,
        tx_lent_revoked,
    } = *more;
    sum.tx_frames += tx_frames;
    sum.tx_bytes += tx_bytes;
    sum.tx_errors += tx_errors;
    sum.tx_dropped += tx_dropped;
    sum.rx_frames += rx_frames;
    sum.rx_bytes += rx_bytes;
    sum.rx_dropped += rx_dropped;
    sum.rx_bad_chains += rx_bad_chains;
    sum.rx_adapted += rx_adapted;
    sum.tx_lent += tx_lent;
    sum.tx_lent_revoked += tx_lent_revoked;
}

/// A switch port served over vhost-user. See the module documentation.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    caps: PortCapabilities,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for VhostUserPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserPort")
            .field("name", &self.shared.config.name)
            .field("socket", &self.shared.config.socket)
            .field("connected", &self.shared.is_attached())
            .finish_non_exhaustive()
    }
}

impl VhostUserPort {
    /// Opens the socket (listens, in server mode) and starts serving
    /// guests on it, one at a time, until the port is dropped.
    pub fn start(config: VhostUserConfig) -> Result<Arc<VhostUserPort>, VhostUserError> {
        config.check()?;
        let socket_error = |source: io::Error| VhostUserError::Socket {
            path: config.socket.clone(),
            source,
        };
        let public = match config.mode {
            SocketMode::Server => Some(bind_public(&config.socket).map_err(socket_error)?),
            SocketMode::Client => None,
        };
        let inner = InnerSocket::new().map_err(|e| VhostUserError::Backend {
            name: config.name.clone(),
            reason: format!("cannot make its private socket: {e}"),
        })?;
        let offered = backend::offered_features(config.queue_pairs);
        let caps = PortCapabilities {
            egress: GuestOffloads::from_features(offered).egress_capabilities(config.mtu),
            rx_queues: config.queue_pairs,
            tx_queues: config.queue_pairs,
        };
        let shared = Arc::new(Shared {
            config,
            guest: RwLock::new(None),
            negotiated: Mutex::new(None),
            past: Mutex::new(GuestPortStats::default()),
            connections: AtomicU64::new(0),
            broken_queues: AtomicU64::new(0),
            broken_now: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            shutdown: Mutex::new(None),
            rx_wakers: KeptWakers::new(caps.rx_queues),
            rx_runners: KeptWakers::new(caps.rx_queues),
            backend: RwLock::new(Weak::new()),
        });
        let serving = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("vhost-user {}", shared.config.name))
            .spawn(move || serve(serving, public, inner))
            .map_err(|e| VhostUserError::Backend {
                name: shared.config.name.clone(),
                reason: format!("cannot start its thread: {e}"),
            })?;
        Ok(Arc::new(VhostUserPort {
            shared,
            caps,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.shared.config.socket
    }

    /// What the port has seen so far.
    pub fn report(&self) -> VhostUserReport {
        let mut guest = *self
            .shared
            .past
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let attached = self.shared.guest();
        if let Some(port) = &attached {
            add_stats(&mut guest, &port.stats());
        }
        VhostUserReport {
            connected: self.shared.is_attached(),
            connections: self.shared.connections.load(Ordering::Relaxed),
            negotiated: *self
                .shared
                .negotiated
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            broken_queues: self.shared.broken_queues.load(Ordering::Relaxed),
            broken_now: self.shared.broken_now(),
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            mtu: attached.map(|port| port.mtu()),
            guest,
        }
    }

    /// Stops serving: the guest attached now is disconnected, the socket
    /// closed (and removed, in server mode). Dropping the port does the
    /// same.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        if shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(handle) = shared
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            handle.shutdown();
        }
        if shared.config.mode == SocketMode::Server {
            // Wakes the listener's accept with a connection of our own,
            // which the thread sees with `stop` set and closes.
            let _ = UnixStream::connect(&shared.config.socket);
        }
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
        if shared.config.mode == SocketMode::Server {
            let _ = std::fs::remove_file(&shared.config.socket);
        }
        shared.detach();
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Listens on `path`, replacing a socket left there by an earlier run (but
/// never a file of another kind).
fn bind_public(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; not removing it",
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// The handler's side of the relay: a socket in a directory only this
/// user can enter, so nobody else can reach the handler directly.
struct InnerSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Listener,
}

impl InnerSocket {
    fn new() -> io::Result<InnerSocket> {
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vswitch-vhost-user-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("handler.sock");
        let listener = Listener::from(UnixListener::bind(&path)?);
        Ok(InnerSocket {
            dir,
            path,
            listener,
        })
    }
}

impl Drop for InnerSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The frontend's next connection: accepted (server mode) or made (client
/// mode, retried until the frontend listens or the port stops).
fn next_frontend(shared: &Shared, public: Option<&UnixListener>) -> Option<UnixStream> {
    while !shared.stop.load(Ordering::SeqCst) {
        let result = match public {
            Some(listener) => listener.accept().map(|(stream, _)| stream),
            None => UnixStream::connect(&shared.config.socket),
        };
        match result {
            Ok(stream) => return Some(stream),
            Err(e) => {
                if public.is_some() {
                    shared.note(format!("accepting a connection failed: {e}"));
                }
                thread::sleep(shared.config.reconnect_interval);
            }
        }
    }
    None
}

/// The connection thread: one connection at a time, each with a fresh
/// backend and handler, until the port stops.
fn serve(shared: Arc<Shared>, public: Option<UnixListener>, mut inner: InnerSocket) {
    while let Some(frontend) = next_frontend(&shared, public.as_ref()) {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(reason) = serve_connection(&shared, frontend, &mut inner) {
            shared.note(reason);
            thread::sleep(shared.config.reconnect_interval);
        }
        // The connection's threads are gone: nothing of it is served now.
        *shared
            .backend
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Weak::new();
        shared.detach();
        shared.clear_broken();
    }
}

/// Tells a connection's pair threads to end when dropped, whatever
/// happened to the connection (before the handler joins them).
struct EndThreads(Arc<NetBackend>);

impl Drop for EndThreads {
    fn drop(&mut self) {
        self.0.end_threads();
    }
}

/// Serves one frontend connection until it ends.
fn serve_connection(
    shared: &Arc<Shared>,
    frontend: UnixStream,
    inner: &mut InnerSocket,
) -> Result<(), String> {
    let backend = NetBackend::new(shared.clone())
        .map_err(|e| format!("cannot create the backend's eventfds: {e}"))?;
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(shared.config.name.clone(), backend.clone(), memory)
        .map_err(|e| format!("cannot start the vhost-user handler: {e}"))?;
    // The pair threads run from here on, and the only way to end them is
    // their pair eventfd (see NetBackend::exit_event): watch it before
    // anything else can fail.
    for (pair, handler) in daemon.get_epoll_handlers().iter().enumerate() {
        let fd = backend.pair_event(pair).consumer_fd();
        if let Err(e) = handler.register_listener(fd, EventSet::IN, backend.pair_event_id()) {
            // That pair's thread could never be told to end, and dropping
            // the daemon joins it: leave the daemon and its threads (a
            // bounded loss, on a failure epoll_ctl all but never has)
            // rather than hang the port.
            backend.end_threads();
            std::mem::forget(daemon);
            return Err(format!("cannot watch queue pair {pair}'s eventfd: {e}"));
        }
    }
    let _end_threads = EndThreads(backend.clone());
    *shared
        .backend
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&backend);
    let to_handler = UnixStream::connect(&inner.path)
        .map_err(|e| format!("cannot reach the vhost-user handler: {e}"))?;
    let hooks = relay::Hooks {
        set_mtu: {
            let backend = backend.clone();
            Arc::new(move |mtu| backend.set_frontend_mtu(mtu))
        },
        ring_enabled: {
            let backend = backend.clone();
            Arc::new(move |index, on| backend.ring_enabled(index, on))
        },
        ring_stopping: {
            let backend = backend.clone();
            Arc::new(move |index| backend.ring_stopping(index))
        },
        ring_starting: {
            let backend = backend.clone();
            Arc::new(move |index| backend.ring_starting(index))
        },
    };
    let relay = relay::Relay::start(frontend, to_handler, hooks)
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    daemon
        .start(&mut inner.listener)
        .map_err(|e| format!("the vhost-user handler refused the connection: {e}"))?;
    shared.connections.fetch_add(1, Ordering::Relaxed);
    *shared
        .shutdown
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = daemon.shutdown_handle();
    if shared.stop.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    let result = daemon.wait();
    shared
        .shutdown
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let relay_error = relay.finish();
    match (result, relay_error) {
        (_, Some(why)) => Err(format!("connection ended by the switch: {why}")),
        // The frontend closed the connection (QEMU exited, the guest
        // powered off): the usual end, not a problem to report.
        (
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserProtocolError::Disconnected | VhostUserProtocolError::PartialMessage,
            )),
            None,
        ) => Ok(()),
        (Err(e), None) => Err(format!("connection ended: {e}")),
    }
}

impl Port for VhostUserPort {
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    /// Yes, as the guest port it hands frames to: a payload another
    /// guest lent is copied from that guest's memory straight into this
    /// one's receive buffers, with no copy into host memory on the way.
    fn takes_lent_frames(&self) -> bool {
        true
    }

    /// Yes, for each queue the port offers: kept across connections, so
    /// each guest that attaches wakes the same wakers.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        self.shared
            .rx_wakers
            .keep(queue, waker, |waker| {
                if let Some(guest) = self.shared.guest() {
                    guest.set_rx_waker(queue, waker);
                }
            })
            .is_some()
    }

    /// Yes, for each queue the port offers, kept across connections: the
    /// thread of the queue's pair runs it each time it is done with the
    /// guest's rings and frames the guest sent wait for the switch (it
    /// holds none of the pair's locks then), so that the switch forwards
    /// them on that thread.
    fn set_rx_runner(&self, queue: usize, runner: Waker) -> bool {
        let kept = self.shared.rx_runners.keep(queue, runner, |runner| {
            // Frames that waited for a runner are not left for the next.
            if self.shared.has_transmitted(queue) {
                runner.wake();
            }
        });
        kept.is_some()
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        if queue >= self.caps.rx_queues {
            return Err(PortError::NoSuchQueue {
                direction: "rx",
                queue,
                queues: self.caps.rx_queues,
            });
        }
        match self.shared.guest() {
            // A guest with fewer pairs than offered has nothing on the
            // others.
            Some(port) if port.capabilities().rx_queues > queue => port.receive(queue, batch, max),
            _ => Ok(0),
        }
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        match self.shared.guest() {
            Some(port) => {
                let queues = port.capabilities().tx_queues.max(1);
                port.send(queue % queues, packet)
            }
            None => Err(SendError::Disconnected { queue, packet }),
        }
    }

    /// Queues the batch for the guest and, where the pair's thread is not
    /// busy with the pair, writes it into the guest's receive ring from
    /// this thread (run to completion: the worker that forwarded the frames
    /// delivers them); otherwise wakes the pair's thread as
    /// [`GuestPort`]'s `send_batch` does.
    fn send_batch(&self, queue: usize, batch: &mut Vec<Packet>) -> Result<(), BatchSendError> {
        match self.shared.guest() {
            Some(port) => {
                let queues = port.capabilities().tx_queues.max(1);
                let queued = port.queue_batch_quietly(queue % queues, batch)?;
                if queued.sent > 0 && !self.shared.fill_from_switch(&port, queued.pair) {
                    port.wake_device(queued.pair);
                }
                queued.result
            }
            None => Err(BatchSendError::Disconnected { queue }),
        }
    }
}

/// Negotiation as the port does it: what a guest that acknowledged the
/// feature bits `acked` (as the frontend sends them with
/// `VHOST_USER_SET_FEATURES`) ends up with on a port of `queue_pairs`
/// pairs. Ring and transport bits are not virtio-net features and are left
/// out; the control virtqueue, which the frontend serves, is added where
/// `MQ` needs it.
pub fn negotiate(
    queue_pairs: usize,
    acked: u64,
) -> Result<Negotiated, crate::features::FeatureError> {
    let offered = backend::offered_features(queue_pairs);
    let mut acked = Features::from_bits_retain(acked) & offered;
    let mut with_ctrl = offered;
    if acked.contains(Features::MQ) {
        acked |= Features::CTRL_VQ;
        with_ctrl |= Features::CTRL_VQ;
    }
    Negotiated::new(with_ctrl, acked)
}
