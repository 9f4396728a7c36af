//! The threaded switch: workers that poll ports, hand frames to the worker
//! their flow maps to, run the [`Datapath`] (forwarding, egress adaptation,
//! accounting) and send what it decides in one batch per egress port; plus
//! hot add and remove of ports and the statistics.
//!
//! # Threads and queues
//!
//! `N` workers (by default the number of CPUs, at most 8). Receive queue
//! `q` of the port with id `p` is polled by worker `(p + q) % N`. The
//! polling worker checks each frame once ([`Datapath::check`]: link-layer
//! header parsed, virtio-net header validated), computes its
//! [`flow_hash`] from that parse and hands the checked frame to worker
//! [`worker_for_hash`] through that worker's bounded inbox, or keeps it
//! when the flow is its own. A flow therefore always takes the same path
//! through one worker, so its frames never reorder, while many flows
//! spread over all workers. Toward a port with several transmit queues a
//! flow leaves by the queue its hash picks
//! ([`queue_for_hash`](crate::dispatch::queue_for_hash), the same
//! mapping as the workers': with as many queues as workers each worker
//! sends on its own, with more the flows still cover them all, as a
//! multi-queue guest's vCPUs expect); toward a port with one, by that one.
//! All of a burst's frames for a queue (the segments of a large frame
//! among them) go in one [`Port::send_batch`] call. A port with a queue per worker whose outside
//! puts each flow on the queue its worker polls (as RSS in a NIC or a
//! multi-queue guest does) needs no hand-off at all, and each worker then
//! sends on a transmit queue of its own.
//!
//! Queues are bounded and the switch never blocks on one for long: when an
//! inbox or a transmit queue is full, the worker retries for at most
//! [`SwitchConfig::queue_full_wait`] (handling its own inbox meanwhile, so
//! two workers waiting on each other both make progress), then drops the
//! frames and counts them. A queue that timed out once is tried once per
//! burst until it accepts a frame again, so one stuck consumer cannot slow
//! a worker down for everyone else.
//!
//! # Who runs the workers
//!
//! [`Switch::start`] spawns a thread per worker. [`Switch::start_external`]
//! spawns none and hands the embedder a [`SwitchWorker`] per worker to run
//! on threads it owns (a thread with its own seccomp filter, an existing
//! event loop): each [`SwitchWorker::poll_once`] call does one round of
//! work and returns at once, [`SwitchWorker::wait`] sleeps until another
//! worker hands this one frames or a timeout passes, and
//! [`SwitchWorker::run`] is the loop the switch's own threads run.
//!
//! A worker without work yields, then parks for at most a millisecond; a
//! worker that hands it frames wakes it at the end of its burst, and so
//! does a port whose receive queue it owns when frames arrive there, if
//! the port can ([`Port::set_rx_waker`]: guest, vhost-user and in-memory
//! ports do).
//! A frame from a guest then waits for no timer.
//!
//! A port whose frames arrive on a thread of its own that may do the
//! switch's work ([`Port::set_rx_runner`]: a vhost-user port's queue-pair
//! threads) gets more than a waker from the workers [`Switch::start`]
//! runs: its thread runs the owning worker's round itself, right after it
//! took the guest's frames, when the worker is free (a worker is a
//! `Mutex` that its own thread and such ports' threads take in turn,
//! never waiting for it: a port's thread that finds it busy wakes it as a
//! waker does). A frame then goes from the sending guest's ring through
//! the switch into the receiving guest's ring on the one thread, with no
//! hand-off to a worker thread and no wake-up of one. Per-flow order
//! holds: one round at a time per worker, whichever thread runs it.
//!
//! # Hot-plug
//!
//! The ports live in an immutable table behind `RwLock<Arc<_>>`; adding or
//! removing a port builds a new table, swaps it in and bumps a generation
//! counter. Workers compare the generation once per polling round and take
//! the new table when it changed, so the frame path takes no lock. Removing
//! a port marks it removed (frames still on their way to it are dropped and
//! counted as [`DropReason::EgressPortGone`] on that port), waits until every
//! worker runs on the new table, and then forgets the addresses learned on
//! it.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use vswitch_offload::{CheckedFrame, Packet};
use vswitch_ports::buffer::ChunkPool;
use vswitch_ports::{BatchSendError, Port, PortCapabilities};

use crate::coalesce::CoalesceConfig;
use crate::datapath::{Datapath, Event, Output};
use crate::dispatch::{flow_hash, worker_for_hash};
use crate::drop::DropReason;
use crate::egress::EgressWork;
use crate::forward::{Forwarder, ForwarderConfig, PortId, PortProfile, PortSet};
use crate::limit::packets_wire_cost_and_len;
use crate::stats::{PortCounters, PortStats, WorkerCounters, WorkerStats};

/// Bytes of one buffer a lent frame is copied into for a port that cannot
/// take it: the largest frame, a 64 KiB IP packet with its Ethernet header
/// and two VLAN tags, fits.
const WHOLE_CHUNK: usize = 66 * 1024;
/// Most such buffers a worker keeps for reuse.
const WHOLE_POOL_LIMIT: usize = 32;
/// Kept buffers a worker looks at for a free one before it allocates.
const WHOLE_POOL_PROBES: usize = 4;

/// Settings of a [`Switch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Number of workers, at least 1.
    pub workers: usize,
    /// Capacity of each worker's inbox, in frames.
    pub worker_queue_len: usize,
    /// Most frames taken from one receive queue or inbox in one go.
    pub burst: usize,
    /// How long a worker retries a full inbox or transmit queue before it
    /// drops the frame. Zero: drop at once.
    pub queue_full_wait: Duration,
    /// Learning and aging.
    pub forwarder: ForwarderConfig,
    /// Receive coalescing toward ports that take large frames (on by
    /// default; [`CoalesceConfig::disabled`] turns it off).
    pub coalesce: CoalesceConfig,
}

impl SwitchConfig {
    /// The default number of workers: the number of CPUs, at most 8.
    pub fn default_workers() -> usize {
        thread::available_parallelism().map_or(1, |n| n.get().min(8))
    }

    /// Sets the number of workers.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: Self::default_workers(),
            worker_queue_len: 4096,
            burst: 64,
            queue_full_wait: Duration::from_millis(1),
            forwarder: ForwarderConfig::default(),
            coalesce: CoalesceConfig::default(),
        }
    }
}

/// Why a switch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No port with this id is in the switch.
    #[error("{port} is not in the switch")]
    NoSuchPort {
        /// The id given.
        port: PortId,
    },
    /// The port declares no receive or no transmit queue.
    #[error("port {name} must have at least one queue each way, found {rx_queues} rx and {tx_queues} tx")]
    NoQueues {
        /// The port's name.
        name: String,
        /// Its receive queues.
        rx_queues: usize,
        /// Its transmit queues.
        tx_queues: usize,
    },
    /// Every port id was used once already (ids are never reused).
    #[error("all {} port ids have been used", u32::MAX)]
    PortIdsExhausted,
    /// A worker thread could not be started.
    #[error("cannot start worker thread {index}: {source}")]
    Spawn {
        /// The worker's index.
        index: usize,
        /// The error from the system.
        #[source]
        source: std::io::Error,
    },
}

/// A port in the switch.
struct LivePort {
    id: PortId,
    name: String,
    port: Arc<dyn Port>,
    caps: PortCapabilities,
    /// [`Port::takes_lent_frames`]: otherwise frames with a lent payload
    /// are taken whole before the port's send.
    takes_lent: bool,
    counters: PortCounters,
    removed: AtomicBool,
    /// A send to this port timed out and none has succeeded since.
    congested: AtomicBool,
}

/// One immutable generation of the port table.
struct PortTable {
    generation: u64,
    profiles: PortSet,
    /// Sorted by id, like `profiles`.
    ports: Vec<Arc<LivePort>>,
}

impl PortTable {
    fn live(&self, id: PortId) -> Option<&Arc<LivePort>> {
        let index = self.ports.binary_search_by_key(&id, |port| port.id).ok()?;
        self.ports.get(index)
    }
}

/// A frame on its way from the worker that polled and checked it to the
/// worker of its flow.
type Handoff = (PortId, CheckedFrame);

struct WorkerHandle {
    inbox: Sender<Handoff>,
    counters: WorkerCounters,
    seen_generation: AtomicU64,
    /// How the worker sleeps and is woken.
    wakeup: Arc<Wakeup>,
    /// The worker has stopped for good (or its value was dropped): nobody
    /// waits for it.
    finished: AtomicBool,
    /// The worker is inside a round ([`SwitchWorker::poll_once`]). One
    /// that is not takes the newest port table before it polls again.
    in_round: AtomicBool,
}

impl WorkerHandle {
    fn new(inbox: Sender<Handoff>) -> Self {
        WorkerHandle {
            inbox,
            counters: WorkerCounters::default(),
            seen_generation: AtomicU64::new(0),
            wakeup: Arc::new(Wakeup::default()),
            finished: AtomicBool::new(false),
            in_round: AtomicBool::new(false),
        }
    }

    /// Wakes the worker if it is parked, after a frame was put in its inbox.
    fn wake(&self) {
        self.wakeup.kick();
    }

    fn unpark(&self) {
        self.wakeup.unpark();
    }
}

/// A worker's sleep, and what wakes it: another worker that hands it
/// frames, a port whose receive queue it owns when frames arrive there
/// ([`Port::set_rx_waker`], as a [`Waker`]), the stop.
///
/// A wake sets `kicked`, then looks at `parked`; the worker sets `parked`,
/// then looks at `kicked` before it sleeps (a fence between each store
/// and load). So either the worker sees the wake and does not sleep, or
/// the waker sees it parked and unparks it: no wake is lost between the
/// worker's last look at its queues and its sleep. The worker clears
/// `kicked` before each round, ahead of looking at its queues.
#[derive(Debug, Default)]
struct Wakeup {
    kicked: AtomicBool,
    /// The worker is (about to be) parked for lack of work.
    parked: AtomicBool,
    /// The thread that parked last (the embedder may move a worker).
    thread: Mutex<Option<Thread>>,
}

impl Wakeup {
    fn kick(&self) {
        // Kicked already: the worker has not begun a round since, so it
        // sees that kick before it sleeps, or its waker saw it parked.
        if self.kicked.load(Ordering::Relaxed) {
            return;
        }
        self.kicked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.unpark();
        }
    }

    fn unpark(&self) {
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = thread.as_ref() {
            thread.unpark();
        }
    }

    /// Parks the calling thread up to `timeout`, unless a kick came since
    /// the last [`clear`](Self::clear) or `awake` (looked at once parked
    /// is set) says there is work.
    fn sleep(&self, timeout: Duration, awake: impl FnOnce() -> bool) {
        {
            let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
            if thread.as_ref().map(Thread::id) != Some(thread::current().id()) {
                *thread = Some(thread::current());
            }
        }
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.kicked.load(Ordering::Relaxed) && !awake() {
            thread::park_timeout(timeout);
        }
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Before a round: wakes from now on are for frames this round may
    /// not see.
    fn clear(&self) {
        if self.kicked.load(Ordering::Relaxed) {
            self.kicked.store(false, Ordering::Relaxed);
            // Seen before the round looks at any queue: a waker that
            // pushes after that look finds it cleared and kicks again.
            fence(Ordering::SeqCst);
        }
    }
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.kick();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.kick();
    }
}

/// The runner [`Switch::start`]'s workers give the ports that take one
/// ([`Port::set_rx_runner`]): a wake runs the worker's rounds on the
/// waking thread while they find work, up to [`InlineRounds::ROUNDS`],
/// if the worker is free, and otherwise (its thread or another port's is
/// in a round, the switch stops, the worker is gone) kicks it as a
/// [`Wakeup`] does. A round that a busy worker misses is not lost: the
/// kick lands after that round's start, so the worker looks again.
struct InlineRounds {
    worker: Weak<Mutex<SwitchWorker>>,
    wakeup: Arc<Wakeup>,
}

impl InlineRounds {
    /// Rounds one wake runs at most; then, if the last still found work,
    /// the worker's thread is kicked for the rest, so that a port's
    /// thread goes back to its own rings in bounded time.
    const ROUNDS: usize = 4;

    fn run_or_kick(&self) {
        if let Some(worker) = self.worker.upgrade() {
            // Busy, or poisoned by a round that panicked: left to its thread.
            let Ok(mut worker) = worker.try_lock() else {
                return self.wakeup.kick();
            };
            for _ in 0..Self::ROUNDS {
                if worker.shared.stop.load(Ordering::Acquire) {
                    break;
                }
                if !matches!(worker.poll_once(), Poll::Worked { .. }) {
                    return;
                }
            }
        }
        self.wakeup.kick();
    }
}

impl Wake for InlineRounds {
    fn wake(self: Arc<Self>) {
        self.run_or_kick();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.run_or_kick();
    }
}

struct Shared {
    config: SwitchConfig,
    forwarder: Arc<Forwarder>,
    table: RwLock<Arc<PortTable>>,
    generation: AtomicU64,
    /// Serialises add and remove.
    update: Mutex<u32>,
    stop: AtomicBool,
    /// Workers still polling ports (see `SwitchWorker::finish_round`).
    polling: AtomicUsize,
    workers: Vec<WorkerHandle>,
}

impl Shared {
    fn current_table(&self) -> Arc<PortTable> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Statistics of a port, with its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReport {
    /// The port's id.
    pub id: PortId,
    /// The port's name.
    pub name: String,
    /// Its counters.
    pub stats: PortStats,
}

/// A snapshot of the whole switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchStats {
    /// The ports in the switch, in id order.
    pub ports: Vec<PortReport>,
    /// The workers, in index order.
    pub workers: Vec<WorkerStats>,
    /// Entries in the forwarding table.
    pub learned_addresses: usize,
}

impl SwitchStats {
    /// The counters of the port `id`, if it is in the switch.
    pub fn port(&self, id: PortId) -> Option<&PortStats> {
        self.ports
            .binary_search_by_key(&id, |report| report.id)
            .ok()
            .and_then(|index| self.ports.get(index))
            .map(|report| &report.stats)
    }
}

/// A running switch. Dropping it stops and joins the workers.
pub struct Switch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("config", &self.shared.config)
            .field("ports", &self.shared.current_table().ports.len())
            .finish()
    }
}

impl Switch {
    /// Starts a switch with no ports and a thread per worker.
    ///
    /// Ports that can ([`Port::set_rx_runner`]) also run their worker's
    /// rounds on their own threads (see the module's documentation).
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        let (mut switch, workers) = Self::start_external(config);
        for mut worker in workers {
            let index = worker.index;
            let sleep = worker.sleep_handle();
            let shared = Arc::new_cyclic(|this: &Weak<Mutex<SwitchWorker>>| {
                worker.runner = Some(Waker::from(Arc::new(InlineRounds {
                    worker: this.clone(),
                    wakeup: worker.handle().wakeup.clone(),
                })));
                Mutex::new(worker)
            });
            let thread = thread::Builder::new()
                .name(format!("vswitch-worker-{index}"))
                .spawn(move || run_shared(&shared, &sleep))
                .map_err(|source| SwitchError::Spawn { index, source })?;
            switch.threads.push(thread);
        }
        Ok(switch)
    }

    /// Starts a switch with no ports whose workers the caller runs: one
    /// [`SwitchWorker`] per worker, each to be driven by
    /// [`SwitchWorker::poll_once`] (or [`SwitchWorker::run`]) on a thread
    /// the caller owns. Ports added to the switch are polled only by the
    /// workers, so frames move only while the caller drives them.
    pub fn start_external(config: SwitchConfig) -> (Switch, Vec<SwitchWorker>) {
        let config = SwitchConfig {
            workers: config.workers.max(1),
            worker_queue_len: config.worker_queue_len.max(1),
            burst: config.burst.max(1),
            ..config
        };
        let (handles, inboxes): (Vec<_>, Vec<_>) = (0..config.workers)
            .map(|_| {
                let (tx, rx) = bounded(config.worker_queue_len);
                (WorkerHandle::new(tx), rx)
            })
            .unzip();
        let empty = Arc::new(PortTable {
            generation: 0,
            profiles: PortSet::new(),
            ports: Vec::new(),
        });
        let shared = Arc::new(Shared {
            config,
            forwarder: Arc::new(Forwarder::new(config.forwarder, Instant::now())),
            table: RwLock::new(empty.clone()),
            generation: AtomicU64::new(0),
            update: Mutex::new(0),
            stop: AtomicBool::new(false),
            polling: AtomicUsize::new(config.workers),
            workers: handles,
        });
        let workers = inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| SwitchWorker::new(index, shared.clone(), inbox, empty.clone()))
            .collect();
        let switch = Switch {
            shared,
            threads: Vec::with_capacity(config.workers),
        };
        (switch, workers)
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Adds a port while traffic runs and returns its id. Ids are never
    /// reused. Returns once no worker forwards with a table that lacks the
    /// port, so a frame any port receives from then on may be flooded to
    /// it. Only a worker in the middle of a round (which ends on its own)
    /// is waited for, up to a second.
    pub fn add_port(
        &self,
        port: Arc<dyn Port>,
        profile: PortProfile,
    ) -> Result<PortId, SwitchError> {
        let caps = port.capabilities();
        if caps.rx_queues == 0 || caps.tx_queues == 0 {
            return Err(SwitchError::NoQueues {
                name: port.name().to_owned(),
                rx_queues: caps.rx_queues,
                tx_queues: caps.tx_queues,
            });
        }
        let mut next_id = self
            .shared
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let id = PortId(*next_id);
        *next_id = next_id
            .checked_add(1)
            .ok_or(SwitchError::PortIdsExhausted)?;
        let live = Arc::new(LivePort {
            id,
            name: port.name().to_owned(),
            takes_lent: port.takes_lent_frames(),
            port,
            caps,
            counters: PortCounters::new(self.shared.workers.len()),
            removed: AtomicBool::new(false),
            congested: AtomicBool::new(false),
        });
        let old = self.shared.current_table();
        let mut profiles = old.profiles.clone();
        profiles.insert_port(id, profile, caps.egress);
        profiles.set_tx_queues(id, caps.tx_queues);
        let mut ports = old.ports.clone();
        ports.push(live); // ids only grow, so the order is kept
        let generation = old.generation + 1;
        drop(old);
        self.publish(PortTable {
            generation,
            profiles,
            ports,
        });
        self.wait_for_rounds(generation);
        Ok(id)
    }

    /// Removes a port while traffic runs. Frames still on their way to it
    /// are dropped and counted; the addresses learned on it are forgotten.
    /// Returns the port's final statistics once no worker uses it any more
    /// (or after a few seconds if a worker does not answer). Workers run by
    /// the caller ([`Switch::start_external`]) must be polled meanwhile, from
    /// other threads, for this to return early.
    pub fn remove_port(&self, id: PortId) -> Result<PortReport, SwitchError> {
        let _guard = self
            .shared
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.shared.current_table();
        let Some(live) = old.live(id).cloned() else {
            return Err(SwitchError::NoSuchPort { port: id });
        };
        live.removed.store(true, Ordering::Release);
        let mut profiles = old.profiles.clone();
        profiles.remove(id);
        let ports = old
            .ports
            .iter()
            .filter(|port| port.id != id)
            .cloned()
            .collect();
        let generation = old.generation + 1;
        drop(old);
        self.publish(PortTable {
            generation,
            profiles,
            ports,
        });
        self.shared.forwarder.forget_port(id);
        self.wait_for_generation(generation, Duration::from_secs(5));
        // A worker on the old table may have learned on the port after the
        // first pass; none can now (the port is not in any table in use).
        self.shared.forwarder.forget_port(id);
        Ok(PortReport {
            id,
            name: live.name.clone(),
            stats: live.counters.snapshot(),
        })
    }

    fn publish(&self, table: PortTable) {
        let generation = table.generation;
        *self
            .shared
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        self.shared.generation.store(generation, Ordering::SeqCst);
        // A parked worker takes the table now rather than at its timer.
        for worker in &self.shared.workers {
            worker.wake();
        }
    }

    /// Waits (up to `limit`) until no worker that has not finished holds a
    /// table older than `generation`.
    fn wait_for_generation(&self, generation: u64, limit: Duration) {
        self.wait_until_seen(generation, limit, |_| true);
    }

    /// Waits (up to a second) until no worker forwards with a table
    /// older than `generation`: only one inside a round may, as every other
    /// takes the newest table when its next round begins.
    fn wait_for_rounds(&self, generation: u64) {
        // The generation was stored, and each worker marks its round
        // begun before it reads the generation, all in one total order
        // (SeqCst): a worker seen out of its round here finds this table
        // (or a newer one) when its next round begins.
        self.wait_until_seen(generation, Duration::from_secs(1), |worker| {
            worker.in_round.load(Ordering::SeqCst)
        });
    }

    fn wait_until_seen(
        &self,
        generation: u64,
        limit: Duration,
        counts: impl Fn(&WorkerHandle) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let behind = self.shared.workers.iter().any(|worker| {
                !worker.finished.load(Ordering::Acquire)
                    && worker.seen_generation.load(Ordering::Acquire) < generation
                    && counts(worker)
            });
            if !behind {
                return;
            }
            thread::sleep(Duration::from_micros(100));
        }
    }

    /// Changes the profile (VLANs, address limit, source policy) of a port
    /// while traffic runs. Returns once no worker forwards with the old
    /// profile, waiting as [`add_port`](Self::add_port) does.
    pub fn set_port_profile(&self, id: PortId, profile: PortProfile) -> Result<(), SwitchError> {
        let _guard = self
            .shared
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.shared.current_table();
        let Some(live) = old.live(id) else {
            return Err(SwitchError::NoSuchPort { port: id });
        };
        let mut profiles = old.profiles.clone();
        profiles.insert_port(id, profile, live.caps.egress);
        let table = PortTable {
            generation: old.generation + 1,
            profiles,
            ports: old.ports.clone(),
        };
        drop(old);
        let generation = table.generation;
        self.publish(table);
        self.wait_for_rounds(generation);
        Ok(())
    }

    /// The learned addresses not aged out, sorted by VLAN and address.
    pub fn fdb_entries(&self) -> Vec<crate::fdb::FdbEntry> {
        self.shared.forwarder.entries(Instant::now())
    }

    /// Forgets every learned address; returns how many there were.
    pub fn flush_fdb(&self) -> usize {
        self.shared.forwarder.table().flush()
    }

    /// The statistics of one port.
    pub fn port_stats(&self, id: PortId) -> Option<PortStats> {
        let table = self.shared.current_table();
        table.live(id).map(|port| port.counters.snapshot())
    }

    /// Number of addresses learned on `port` and not yet expired or
    /// forgotten.
    pub fn learned_on(&self, port: PortId) -> usize {
        self.shared.forwarder.table().learned_on(port)
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> SwitchStats {
        let table = self.shared.current_table();
        SwitchStats {
            ports: table
                .ports
                .iter()
                .map(|port| PortReport {
                    id: port.id,
                    name: port.name.clone(),
                    stats: port.counters.snapshot(),
                })
                .collect(),
            workers: self
                .shared
                .workers
                .iter()
                .map(|worker| worker.counters.snapshot())
                .collect(),
            learned_addresses: self.shared.forwarder.table().len(),
        }
    }

    /// Stops the workers, waits for them, and returns the final statistics.
    /// Ports are no longer polled; frames already taken from them are
    /// forwarded first (without waiting on full transmit queues: those are
    /// counted as [`DropReason::Shutdown`]). Workers run by the caller
    /// ([`Switch::start_external`]) are waited for up to five seconds: they
    /// finish when their [`SwitchWorker::poll_once`] returns
    /// [`Poll::Stopped`] or when they are dropped.
    pub fn shutdown(mut self) -> SwitchStats {
        self.stop_and_join();
        self.stats()
    }

    /// Asks the workers to stop, without waiting: their
    /// [`SwitchWorker::poll_once`] finishes the frames already taken from
    /// the ports and then returns [`Poll::Stopped`].
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for worker in &self.shared.workers {
            worker.unpark();
        }
    }

    fn stop_and_join(&mut self) {
        self.stop();
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = thread.join();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !self
                .shared
                .workers
                .iter()
                .all(|worker| worker.finished.load(Ordering::Acquire))
        {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What one [`SwitchWorker::poll_once`] round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Frames were handled (taken from a port or from the inbox).
    Worked {
        /// How many.
        frames: usize,
    },
    /// Nothing to do this round: the caller may [`SwitchWorker::wait`].
    Idle,
    /// The switch stopped and this worker has finished every frame it
    /// was handed: it will do nothing more.
    Stopped,
}

/// One worker of a switch: the receive queues it polls, its inbox of
/// frames other workers handed it, its [`Datapath`] and its counters.
///
/// [`Switch::start`] runs each on a thread of its own;
/// [`Switch::start_external`] gives them to the caller. A worker is driven
/// from one thread at a time (it is `Send`, not `Sync`).
pub struct SwitchWorker {
    index: usize,
    shared: Arc<Shared>,
    inbox: Receiver<Handoff>,
    table: Arc<PortTable>,
    /// (port, receive queue) pairs this worker polls.
    owned: Vec<(Arc<LivePort>, usize)>,
    rx_batch: Vec<Packet>,
    datapath: Datapath,
    output: Output,
    /// Inboxes of other workers that timed out and have not accepted a
    /// frame since.
    congested: Vec<bool>,
    /// Workers handed frames during this burst, to wake once at its end.
    to_wake: Vec<bool>,
    /// This worker still counts among the polling ones.
    polling: bool,
    idle_rounds: u32,
    /// What this worker gives the ports that can run its rounds
    /// ([`Port::set_rx_runner`]); `None` for an embedder's worker, which
    /// runs only where the embedder drives it.
    runner: Option<Waker>,
    /// Every receive queue this worker owns took its runner: their ports'
    /// threads run the rounds their frames need, and this worker's thread
    /// is only a backstop for what they miss, so it sleeps its longest as
    /// soon as it is idle rather than polling on between yields and short
    /// waits (and taking the worker from them).
    run_elsewhere: bool,
    /// Buffers lent frames are copied into for ports that cannot take
    /// them ([`SwitchWorker::take_whole`]), recycled once the port is done
    /// with the frame: no allocation and no fresh pages per frame.
    whole: ChunkPool,
}

impl std::fmt::Debug for SwitchWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchWorker")
            .field("index", &self.index)
            .field("queues", &self.owned.len())
            .finish()
    }
}

impl SwitchWorker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        inbox: Receiver<Handoff>,
        table: Arc<PortTable>,
    ) -> Self {
        let burst = shared.config.burst;
        let workers = shared.workers.len();
        let datapath =
            Datapath::new(shared.forwarder.clone()).with_coalescing(shared.config.coalesce);
        SwitchWorker {
            index,
            shared,
            inbox,
            table,
            owned: Vec::new(),
            rx_batch: Vec::with_capacity(burst),
            datapath,
            output: Output::new(),
            congested: vec![false; workers],
            to_wake: vec![false; workers],
            polling: true,
            idle_rounds: 0,
            runner: None,
            run_elsewhere: false,
            whole: ChunkPool::new(WHOLE_CHUNK, WHOLE_POOL_LIMIT, WHOLE_POOL_PROBES),
        }
    }

    /// This worker's index, `0..workers`.
    pub fn index(&self) -> usize {
        self.index
    }

    fn handle(&self) -> &WorkerHandle {
        // `index` is below the number of handles by construction.
        &self.shared.workers[self.index]
    }

    /// One round of work, without blocking: takes the current port table,
    /// forwards up to a burst of frames from the inbox and from each owned
    /// receive queue, and sends them. After [`Switch::stop`] (or
    /// [`Switch::shutdown`]) it no longer polls ports; it finishes the
    /// frames other workers handed it and then returns [`Poll::Stopped`].
    pub fn poll_once(&mut self) -> Poll {
        if self.handle().finished.load(Ordering::Acquire) {
            return Poll::Stopped;
        }
        if self.shared.stop.load(Ordering::Acquire) {
            return self.finish_round();
        }
        // Ordered before the generation is read (see
        // `Switch::wait_for_rounds`).
        self.handle().in_round.swap(true, Ordering::SeqCst);
        self.refresh_table();
        self.handle().wakeup.clear();
        let now = Instant::now();
        let mut handled = self.drain_inbox(now);
        for i in 0..self.owned.len() {
            handled += self.poll_queue(i, now);
        }
        self.handle().in_round.store(false, Ordering::Release);
        if handled > 0 {
            self.idle_rounds = 0;
            self.handle().counters.busy(now.elapsed());
            Poll::Worked { frames: handled }
        } else {
            self.idle_rounds = self.idle_rounds.saturating_add(1);
            Poll::Idle
        }
    }

    /// Sleeps until another worker hands this one frames, frames arrive
    /// on an owned receive queue whose port wakes ([`Port::set_rx_waker`]),
    /// the switch stops, or `timeout` passes. A wake since the start of
    /// the last [`poll_once`](Self::poll_once) returns at once. Frames
    /// arriving on the other ports do not wake it: poll again within the
    /// time such a port may wait.
    pub fn wait(&self, timeout: Duration) {
        sleep_until_work(&self.shared, self.index, &self.inbox, timeout);
    }

    /// Runs rounds until the switch stops, backing off when idle: yields
    /// first, then waits 50 µs, doubling up to a millisecond (woken early
    /// as [`wait`](Self::wait) says), so idle workers leave the CPU to
    /// others.
    pub fn run(mut self) {
        loop {
            let poll = self.poll_once();
            if !back_off(poll, self.idle_rounds, |timeout| self.wait(timeout)) {
                return;
            }
        }
    }

    /// What [`wait`](Self::wait) needs, apart from the worker.
    fn sleep_handle(&self) -> SleepHandle {
        SleepHandle {
            shared: self.shared.clone(),
            index: self.index,
            inbox: self.inbox.clone(),
        }
    }

    fn refresh_table(&mut self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation == self.table.generation {
            return;
        }
        self.table = self.shared.current_table();
        let workers = self.shared.workers.len();
        self.owned.clear();
        // Ports that can run this worker's rounds are given its runner,
        // and the others that can wake it when frames arrive its waker
        // (again, for a table that only changed elsewhere: a replaced one
        // is the same).
        let waker = Waker::from(self.handle().wakeup.clone());
        let mut run_elsewhere = true;
        for port in &self.table.ports {
            for queue in 0..port.caps.rx_queues {
                if (port.id.0 as usize).wrapping_add(queue) % workers == self.index {
                    self.owned.push((port.clone(), queue));
                    let runs = self
                        .runner
                        .as_ref()
                        .is_some_and(|runner| port.port.set_rx_runner(queue, runner.clone()));
                    if !runs {
                        port.port.set_rx_waker(queue, waker.clone());
                    }
                    run_elsewhere &= runs;
                }
            }
        }
        self.run_elsewhere = run_elsewhere && !self.owned.is_empty();
        self.handle()
            .seen_generation
            .store(self.table.generation, Ordering::Release);
    }

    /// After the stop: ports are no longer polled, so frames are handed
    /// over only until every worker has left its polling rounds. Until
    /// then, and until the inbox is empty, the frames already handed over
    /// are forwarded, so none is left behind uncounted.
    fn finish_round(&mut self) -> Poll {
        if std::mem::take(&mut self.polling) {
            self.shared.polling.fetch_sub(1, Ordering::AcqRel);
        }
        let handled = self.drain_inbox(Instant::now());
        if handled > 0 {
            return Poll::Worked { frames: handled };
        }
        if self.shared.polling.load(Ordering::Acquire) == 0 && self.inbox.is_empty() {
            self.handle().finished.store(true, Ordering::Release);
            return Poll::Stopped;
        }
        Poll::Idle
    }

    /// Handles up to a burst of frames other workers handed over.
    fn drain_inbox(&mut self, now: Instant) -> usize {
        let (mut handled, mut bytes) = (0, 0);
        while handled < self.shared.config.burst {
            match self.inbox.try_recv() {
                Ok((ingress, frame)) => {
                    bytes += frame.len();
                    self.datapath.forward(
                        &self.table.profiles,
                        ingress,
                        frame,
                        now,
                        &mut self.output,
                    );
                    handled += 1;
                }
                Err(_) => break,
            }
        }
        self.handle().counters.handled(handled, bytes);
        self.flush(now);
        handled
    }

    /// Takes a burst from owned receive queue `i`, checks each frame once
    /// and forwards it here or hands it to the worker of its flow.
    fn poll_queue(&mut self, i: usize, now: Instant) -> usize {
        let Some((port, queue)) = self.owned.get(i).cloned() else {
            return 0;
        };
        // A port over its receive-side rate limit is not polled: its frames
        // wait in its queue until the tokens return.
        // Its clock is read once for the check and the charge.
        let limiter = self
            .table
            .profiles
            .limiter(port.id)
            .filter(|limiter| limiter.limits_from_port())
            .map(|limiter| (limiter, limiter.clock(now)));
        if limiter.is_some_and(|(limiter, clock)| !limiter.may_receive_at(clock)) {
            return 0;
        }
        self.rx_batch.clear();
        // An error here is an outside end that went away: nothing to poll.
        let received = port
            .port
            .receive(queue, &mut self.rx_batch, self.shared.config.burst)
            .unwrap_or(0);
        let workers = self.shared.workers.len();
        let mut batch = std::mem::take(&mut self.rx_batch);
        // The burst is counted as received, and charged to a receive-side
        // limit, before any of it is forwarded, so a snapshot never shows a
        // frame sent before it arrived. Its wire cost is summed in the
        // same pass as its bytes (a frame the check refuses costs what it
        // is, like any other).
        let rx_bytes = match limiter {
            Some((limiter, clock)) => {
                let ((frames, bytes), len) = packets_wire_cost_and_len(&batch);
                limiter.charge_received_at(frames, bytes, clock);
                len as usize
            }
            None => batch.iter().map(Packet::len).sum(),
        };
        port.counters
            .received_many(self.index, batch.len(), rx_bytes);
        let (mut handled, mut handled_bytes) = (0, 0);
        for packet in batch.drain(..) {
            let Some(mut frame) = Datapath::check(port.id, packet, &mut self.output) else {
                continue;
            };
            let target = if workers == 1 {
                self.index
            } else {
                // Kept with the frame for the worker's own readers (the
                // egress queue's flow hash, coalescing).
                frame.parse_layout();
                worker_for_hash(flow_hash(&frame), workers)
            };
            if target == self.index {
                (handled, handled_bytes) = (handled + 1, handled_bytes + frame.len());
                self.datapath
                    .forward(&self.table.profiles, port.id, frame, now, &mut self.output);
            } else {
                self.hand_off(target, &port, frame, now);
            }
        }
        self.rx_batch = batch;
        self.handle().counters.handled(handled, handled_bytes);
        self.flush(now);
        for target in 0..self.to_wake.len() {
            if std::mem::take(&mut self.to_wake[target]) {
                if let Some(handle) = self.shared.workers.get(target) {
                    handle.wake();
                }
            }
        }
        received
    }

    /// Passes a frame to the worker of its flow, waiting a bounded time for
    /// room in its inbox and handling this worker's own inbox meanwhile.
    fn hand_off(&mut self, target: usize, ingress: &LivePort, frame: CheckedFrame, now: Instant) {
        let Some(inbox) = self.shared.workers.get(target).map(|w| w.inbox.clone()) else {
            self.drop_at(ingress, DropReason::WorkerQueueFull, 1);
            return;
        };
        let mut item = (ingress.id, frame);
        let wait = self.shared.config.queue_full_wait;
        let mut deadline = None;
        loop {
            match inbox.try_send(item) {
                Ok(()) => {
                    self.handle().counters.handed_off();
                    self.to_wake[target] = true;
                    self.congested[target] = false;
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
                    if self.congested[target] || wait.is_zero() || Instant::now() >= deadline {
                        self.congested[target] = true;
                        self.drop_at(ingress, DropReason::WorkerQueueFull, 1);
                        return;
                    }
                    item = back;
                    if self.drain_inbox(now) == 0 {
                        thread::yield_now();
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.drop_at(ingress, DropReason::WorkerQueueFull, 1);
                    return;
                }
            }
        }
    }

    /// Counts drops on a port and on this worker.
    fn drop_at(&self, port: &LivePort, reason: DropReason, frames: u64) {
        port.counters.dropped(self.index, reason, frames);
        self.handle().counters.dropped(reason, frames);
    }

    /// Sends what the datapath decided, one batch per egress port, and
    /// counts its events.
    fn flush(&mut self, now: Instant) {
        self.datapath
            .end_burst(&self.table.profiles, now, &mut self.output);
        let mut output = std::mem::take(&mut self.output);
        for event in output.events() {
            self.count(event);
        }
        for batch in output.batches_mut() {
            if batch.frames.is_empty() {
                continue;
            }
            match self.table.live(batch.port).cloned() {
                Some(port) => {
                    let known_len = batch.known_len();
                    self.send_batch(&port, batch.queue, &mut batch.frames, known_len)
                }
                None => {
                    let frames = batch.frames.len() as u64;
                    batch.frames.clear();
                    self.handle()
                        .counters
                        .dropped(DropReason::EgressPortGone, frames);
                }
            }
        }
        output.clear();
        self.output = output;
    }

    fn count(&self, event: &Event) {
        let counters = &self.handle().counters;
        match *event {
            Event::Dropped { port, reason } => {
                if let Some(live) = self.table.live(port) {
                    live.counters.dropped(self.index, reason, 1);
                }
                counters.dropped(reason, 1);
            }
            Event::Worked { port, work } => {
                if let Some(live) = self.table.live(port) {
                    live.counters.worked(self.index, &work);
                }
                counters.worked(&work);
            }
            Event::NotLearned { port } => {
                if let Some(live) = self.table.live(port) {
                    live.counters.not_learned(self.index);
                }
            }
            Event::Flooded { port, copies } => {
                if let Some(live) = self.table.live(port) {
                    live.counters.flooded(self.index, copies);
                }
            }
        }
    }

    /// Sends a batch to one port, on `queue` (the one its flows hash to,
    /// for a port with several) or else this worker's, retrying a full
    /// queue for a bounded time; whatever is left in `frames` at the end is
    /// dropped and counted. `known_len` is the frames' summed length, when
    /// the caller has it, so that the byte counter need not sum it again.
    fn send_batch(
        &mut self,
        port: &LivePort,
        queue: Option<usize>,
        frames: &mut Vec<Packet>,
        mut known_len: Option<usize>,
    ) {
        let queues = port.caps.tx_queues.max(1);
        let queue = queue.map_or(self.index % queues, |queue| queue % queues);
        if !port.takes_lent {
            self.take_whole(port, frames);
        }
        let wait = self.shared.config.queue_full_wait;
        let mut deadline = None;
        while !frames.is_empty() {
            if port.removed.load(Ordering::Acquire) {
                return self.drop_rest(port, frames, DropReason::EgressPortGone);
            }
            let before = known_len
                .take()
                .unwrap_or_else(|| frames.iter().map(Packet::len).sum());
            let count = frames.len();
            let result = port.port.send_batch(queue, frames);
            let after: usize = frames.iter().map(Packet::len).sum();
            let sent = count - frames.len();
            if sent > 0 {
                port.counters.sent_many(self.index, sent, before - after);
                self.handle().counters.sent(sent);
                if port.congested.load(Ordering::Relaxed) {
                    port.congested.store(false, Ordering::Relaxed);
                }
            }
            match result {
                Ok(()) => return,
                Err(BatchSendError::Full { .. }) => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
                    if wait.is_zero()
                        || port.congested.load(Ordering::Relaxed)
                        || Instant::now() >= deadline
                    {
                        port.congested.store(true, Ordering::Relaxed);
                        return self.drop_rest(port, frames, DropReason::EgressQueueFull);
                    }
                    if self.shared.stop.load(Ordering::Acquire) {
                        return self.drop_rest(port, frames, DropReason::Shutdown);
                    }
                    thread::yield_now();
                }
                Err(BatchSendError::Refused { .. }) => {
                    // Only the first frame left was refused; the queue works.
                    if !frames.is_empty() {
                        frames.remove(0);
                        self.drop_at(port, DropReason::EgressRefused, 1);
                    }
                }
                Err(BatchSendError::Disconnected { .. } | BatchSendError::NoSuchQueue { .. }) => {
                    return self.drop_rest(port, frames, DropReason::EgressPortError);
                }
            }
        }
    }

    fn drop_rest(&self, port: &LivePort, frames: &mut Vec<Packet>, reason: DropReason) {
        self.drop_at(port, reason, frames.len() as u64);
        frames.clear();
    }

    /// Takes every frame of `frames` whose payload is still lent into host
    /// memory, for a port that does not take lent frames; one whose lent
    /// bytes cannot be read is dropped and counted. The frames' lengths do
    /// not change. Each is copied into a buffer of the worker's pool, which
    /// takes it back once the port has let go of the frame.
    fn take_whole(&mut self, port: &LivePort, frames: &mut Vec<Packet>) {
        if frames.iter().all(|packet| packet.tail.is_none()) {
            return;
        }
        let (mut copied, mut unreadable) = (0, 0);
        let pool = &mut self.whole;
        frames.retain_mut(|packet| {
            let Some(tail) = &packet.tail else {
                return true;
            };
            let (head, len) = (packet.data.len(), packet.len());
            let mut chunk = pool.take(len);
            chunk[..head].copy_from_slice(&packet.data);
            let read = tail.copy_to(&mut chunk[head..len]);
            let chunk = chunk.freeze();
            let data = chunk.slice(..len);
            pool.give_back(chunk);
            match read {
                Ok(()) => {
                    // The lent bytes go back to their owner here.
                    *packet = Packet {
                        hdr: packet.hdr,
                        data,
                        tail: None,
                    };
                    copied += 1;
                    true
                }
                Err(_) => {
                    unreadable += 1;
                    false
                }
            }
        });
        if copied > 0 {
            let work = EgressWork {
                lent_copied: copied,
                ..EgressWork::default()
            };
            port.counters.worked(self.index, &work);
            self.handle().counters.worked(&work);
        }
        if unreadable > 0 {
            self.drop_at(port, DropReason::OffloadFailed, unreadable);
        }
    }
}

/// A worker's sleep, held apart from the worker so that a thread can
/// sleep without holding a worker that others may run
/// ([`Switch::start`]).
struct SleepHandle {
    shared: Arc<Shared>,
    index: usize,
    inbox: Receiver<Handoff>,
}

impl SleepHandle {
    /// [`SwitchWorker::wait`].
    fn wait(&self, timeout: Duration) {
        sleep_until_work(&self.shared, self.index, &self.inbox, timeout);
    }
}

/// [`SwitchWorker::wait`] for worker `index`, whose inbox is `inbox`.
fn sleep_until_work(shared: &Shared, index: usize, inbox: &Receiver<Handoff>, timeout: Duration) {
    if let Some(handle) = shared.workers.get(index) {
        handle.wakeup.sleep(timeout, || {
            !inbox.is_empty() || shared.stop.load(Ordering::Acquire)
        });
    }
}

/// Idle rounds a worker yields between before it waits.
const YIELDS: u32 = 16;
/// Idle rounds after which a worker waits a millisecond, its longest.
const LONGEST_WAIT: u32 = YIELDS + 5;

/// What [`SwitchWorker::run`] does after a round that returned `poll`,
/// the worker having been idle `idle_rounds` rounds in a row: nothing
/// after work, a yield or a `wait` after none, and `false` once the
/// worker stopped.
fn back_off(poll: Poll, idle_rounds: u32, wait: impl FnOnce(Duration)) -> bool {
    match poll {
        Poll::Stopped => return false,
        Poll::Worked { .. } => {}
        Poll::Idle if idle_rounds < YIELDS => thread::yield_now(),
        Poll::Idle => {
            let micros = (50u64 << (idle_rounds - YIELDS).min(LONGEST_WAIT - YIELDS)).min(1000);
            wait(Duration::from_micros(micros));
        }
    }
    true
}

/// [`SwitchWorker::run`] for a worker that ports' threads may run too:
/// the worker is held for each round only, never while its thread sleeps.
fn run_shared(worker: &Mutex<SwitchWorker>, sleep: &SleepHandle) {
    loop {
        let (poll, idle_rounds) = {
            let mut worker = worker.lock().unwrap_or_else(PoisonError::into_inner);
            let poll = worker.poll_once();
            // A backstop waits its longest at once: what it is for wakes
            // it (a runner that missed, another worker's frames, a new
            // table, the stop), and a shorter wait would only take rounds
            // from the ports' threads.
            let idle_rounds = if worker.run_elsewhere {
                LONGEST_WAIT
            } else {
                worker.idle_rounds
            };
            (poll, idle_rounds)
        };
        if !back_off(poll, idle_rounds, |timeout| sleep.wait(timeout)) {
            return;
        }
    }
}

impl Drop for SwitchWorker {
    /// A worker that goes away (its thread ended, or the embedder dropped
    /// it) no longer counts among the polling ones, so the others do not
    /// wait for it to stop or to take a new port table.
    fn drop(&mut self) {
        if std::mem::take(&mut self.polling) {
            self.shared.polling.fetch_sub(1, Ordering::AcqRel);
        }
        self.handle().finished.store(true, Ordering::Release);
    }
}
