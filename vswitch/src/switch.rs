//! The threaded switch: workers that poll ports, hand frames to the worker
//! their flow maps to, run the [`Forwarder`], adapt each frame to its
//! egress port and send it; plus hot add and remove of ports and the
//! statistics.
//!
//! # Threads and queues
//!
//! `N` workers (by default the number of CPUs, at most 8). Receive queue
//! `q` of the port with id `p` is polled by worker `(p + q) % N`. For each
//! frame the polling worker computes [`flow_hash`] and hands the frame to
//! worker [`worker_for_hash`] through that worker's bounded inbox, or keeps
//! it when the flow is its own. A flow therefore always takes the same path
//! through one worker, so its frames never reorder, while many flows spread
//! over all workers. A worker sends to transmit queue `worker % tx_queues`
//! of each egress port. A port with a queue per worker whose outside puts
//! each flow on the queue its worker polls (as RSS in a NIC or a
//! multi-queue guest does) needs no hand-off at all, and each worker then
//! sends on a transmit queue of its own.
//!
//! Queues are bounded and the switch never blocks on one for long: when an
//! inbox or a transmit queue is full, the worker retries for at most
//! [`SwitchConfig::queue_full_wait`] (handling its own inbox meanwhile, so
//! two workers waiting on each other both make progress), then drops the
//! frame and counts it. A queue that timed out once is tried once per frame
//! until it accepts a frame again, so one stuck consumer cannot slow a
//! worker down for everyone else.
//!
//! A worker without work yields, then parks for at most a millisecond; a
//! worker that hands it frames wakes it at the end of its burst.
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
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use vswitch_offload::{OffloadPlan, Packet};
use vswitch_ports::{Port, PortCapabilities, SendError};

use crate::dispatch::{flow_hash, worker_for_hash};
use crate::egress::{adapt_with_plan, EgressEngine};
use crate::ethernet::{retag, VlanTag};
use crate::fdb::{Learned, LookupCache};
use crate::forward::{
    DropReason, Egress, Forwarder, ForwarderConfig, PortId, PortProfile, PortSet,
};
use crate::stats::{PortCounters, PortStats, WorkerCounters, WorkerStats};
use crate::vlan::VlanId;

/// Settings of a [`Switch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Number of worker threads, at least 1.
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

/// A frame on its way from the worker that polled it to the worker of its
/// flow.
type Handoff = (PortId, Packet);

struct WorkerHandle {
    inbox: Sender<Handoff>,
    counters: WorkerCounters,
    seen_generation: AtomicU64,
    /// The worker is (about to be) parked for lack of work; a worker that
    /// hands it a frame unparks it.
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

impl WorkerHandle {
    /// Wakes the worker if it is parked, after a frame was put in its inbox.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

struct Shared {
    config: SwitchConfig,
    forwarder: Forwarder,
    table: RwLock<Arc<PortTable>>,
    generation: AtomicU64,
    /// Serialises add and remove.
    update: Mutex<u32>,
    stop: AtomicBool,
    /// Workers still in their polling loop (see `Worker::finish`).
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
    /// Starts the workers of a switch with no ports.
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        let config = SwitchConfig {
            workers: config.workers.max(1),
            worker_queue_len: config.worker_queue_len.max(1),
            burst: config.burst.max(1),
            ..config
        };
        let (handles, inboxes): (Vec<_>, Vec<_>) = (0..config.workers)
            .map(|_| {
                let (tx, rx) = bounded(config.worker_queue_len);
                let handle = WorkerHandle {
                    inbox: tx,
                    counters: WorkerCounters::default(),
                    seen_generation: AtomicU64::new(0),
                    parked: AtomicBool::new(false),
                    thread: OnceLock::new(),
                };
                (handle, rx)
            })
            .unzip();
        let empty = Arc::new(PortTable {
            generation: 0,
            profiles: PortSet::new(),
            ports: Vec::new(),
        });
        let shared = Arc::new(Shared {
            config,
            forwarder: Forwarder::new(config.forwarder, Instant::now()),
            table: RwLock::new(empty.clone()),
            generation: AtomicU64::new(0),
            update: Mutex::new(0),
            stop: AtomicBool::new(false),
            polling: AtomicUsize::new(config.workers),
            workers: handles,
        });
        let mut switch = Switch {
            shared: shared.clone(),
            threads: Vec::with_capacity(config.workers),
        };
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let worker = Worker::new(index, shared.clone(), inbox, empty.clone());
            let thread = thread::Builder::new()
                .name(format!("vswitch-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| SwitchError::Spawn { index, source })?;
            if let Some(handle) = shared.workers.get(index) {
                // Set once, before any frame can be handed to this worker.
                let _ = handle.thread.set(thread.thread().clone());
            }
            switch.threads.push(thread);
        }
        Ok(switch)
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Adds a port while traffic runs and returns its id. Ids are never
    /// reused.
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
            port,
            caps,
            counters: PortCounters::new(self.shared.workers.len()),
            removed: AtomicBool::new(false),
            congested: AtomicBool::new(false),
        });
        let old = self.shared.current_table();
        let mut profiles = old.profiles.clone();
        profiles.insert(id, profile);
        let mut ports = old.ports.clone();
        ports.push(live); // ids only grow, so the order is kept
        self.publish(PortTable {
            generation: old.generation + 1,
            profiles,
            ports,
        });
        Ok(id)
    }

    /// Removes a port while traffic runs. Frames still on their way to it
    /// are dropped and counted; the addresses learned on it are forgotten.
    /// Returns the port's final statistics once no worker uses it any more
    /// (or after a few seconds if a worker does not answer).
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
        self.shared.generation.store(generation, Ordering::Release);
    }

    fn wait_for_generation(&self, generation: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let behind = self
                .shared
                .workers
                .iter()
                .zip(&self.threads)
                .any(|(worker, thread)| {
                    !thread.is_finished()
                        && worker.seen_generation.load(Ordering::Acquire) < generation
                });
            if !behind {
                return;
            }
            thread::sleep(Duration::from_micros(100));
        }
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
    /// counted as [`DropReason::Shutdown`]).
    pub fn shutdown(mut self) -> SwitchStats {
        self.stop_and_join();
        self.stats()
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for worker in &self.shared.workers {
            if let Some(thread) = worker.thread.get() {
                thread.unpark();
            }
        }
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// One worker thread's state: its table generation, the queues it polls,
/// and scratch vectors reused for every frame.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    inbox: Receiver<Handoff>,
    table: Arc<PortTable>,
    /// (port, receive queue) pairs this worker polls.
    owned: Vec<(Arc<LivePort>, usize)>,
    rx_batch: Vec<Packet>,
    scratch: Scratch,
}

/// Vectors reused from frame to frame, so the frame path does not allocate.
struct Scratch {
    /// This worker's memory of recent forwarding-table answers.
    cache: LookupCache,
    egress: Vec<Egress>,
    adapted: Vec<Packet>,
    /// The offload engine's per-worker buffers.
    engine: EgressEngine,
    /// Inboxes of other workers that timed out and have not accepted a
    /// frame since.
    congested: Vec<bool>,
    /// Workers handed frames during this burst, to wake once at its end.
    to_wake: Vec<bool>,
}

/// What a worker reads while it handles one round of frames. Everything is
/// borrowed: the frame path touches no reference count.
struct Round<'a> {
    index: usize,
    shared: &'a Shared,
    counters: &'a WorkerCounters,
    inbox: &'a Receiver<Handoff>,
    table: &'a PortTable,
    now: Instant,
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        inbox: Receiver<Handoff>,
        table: Arc<PortTable>,
    ) -> Self {
        let burst = shared.config.burst;
        let workers = shared.workers.len();
        let cache = shared.forwarder.new_cache();
        Worker {
            index,
            shared,
            inbox,
            table,
            owned: Vec::new(),
            rx_batch: Vec::with_capacity(burst),
            scratch: Scratch {
                cache,
                egress: Vec::new(),
                adapted: Vec::new(),
                engine: EgressEngine::new(),
                congested: vec![false; workers],
                to_wake: vec![false; workers],
            },
        }
    }

    fn refresh_table(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.table.generation {
            return;
        }
        self.table = self.shared.current_table();
        let workers = self.shared.workers.len();
        self.owned.clear();
        for port in &self.table.ports {
            for queue in 0..port.caps.rx_queues {
                if (port.id.0 as usize).wrapping_add(queue) % workers == self.index {
                    self.owned.push((port.clone(), queue));
                }
            }
        }
        if let Some(handle) = self.shared.workers.get(self.index) {
            handle
                .seen_generation
                .store(self.table.generation, Ordering::Release);
        }
    }

    fn run(mut self) {
        let shared = self.shared.clone();
        let polling = PollingGuard(&shared);
        let mut idle_rounds = 0u32;
        while !self.shared.stop.load(Ordering::Acquire) {
            self.refresh_table();
            let Some(handle) = self.shared.workers.get(self.index) else {
                return;
            };
            let round = Round {
                index: self.index,
                shared: &self.shared,
                counters: &handle.counters,
                inbox: &self.inbox,
                table: &self.table,
                now: Instant::now(),
            };
            let mut handled = round.drain_inbox(&mut self.scratch);
            for (port, queue) in &self.owned {
                handled += round.poll(&mut self.scratch, &mut self.rx_batch, port, *queue);
            }
            if handled > 0 {
                idle_rounds = 0;
            } else {
                idle_rounds = idle_rounds.saturating_add(1);
                self.idle(idle_rounds);
            }
        }
        drop(polling);
        self.finish();
    }

    /// After the stop: ports are no longer polled, so frames are handed
    /// over only until every worker has left its polling loop. Until then,
    /// and until the inbox is empty, the frames already handed over are
    /// forwarded, so none is left behind uncounted.
    fn finish(mut self) {
        loop {
            let Some(handle) = self.shared.workers.get(self.index) else {
                return;
            };
            let round = Round {
                index: self.index,
                shared: &self.shared,
                counters: &handle.counters,
                inbox: &self.inbox,
                table: &self.table,
                now: Instant::now(),
            };
            if round.drain_inbox(&mut self.scratch) == 0 {
                if self.shared.polling.load(Ordering::Acquire) == 0 && self.inbox.is_empty() {
                    return;
                }
                thread::yield_now();
            }
        }
    }
}

/// Whether [`retag`] leaves a frame that arrived with `ingress_tag` as it
/// is when it leaves with `tag`.
fn unchanged_by(ingress_tag: Option<VlanTag>, tag: Option<VlanId>) -> bool {
    match (ingress_tag, tag) {
        (None, None) => true,
        (Some(current), Some(vlan)) => current.vid() == vlan.get(),
        _ => false,
    }
}

/// Counts a worker out of the polling workers when it leaves its polling
/// loop, by returning or by unwinding, so the others do not wait for it.
struct PollingGuard<'a>(&'a Shared);

impl Drop for PollingGuard<'_> {
    fn drop(&mut self) {
        self.0.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Worker {
    /// Backs off when a round found no work: yield first, then park for up
    /// to a millisecond (woken early by a hand-off), so idle workers leave
    /// the CPU to others. Frames arriving on the ports themselves are seen
    /// within that millisecond.
    fn idle(&self, rounds: u32) {
        if rounds < 16 {
            thread::yield_now();
            return;
        }
        let Some(handle) = self.shared.workers.get(self.index) else {
            return;
        };
        let micros = (50u64 << (rounds - 16).min(5)).min(1000);
        handle.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.inbox.is_empty() && !self.shared.stop.load(Ordering::Acquire) {
            thread::park_timeout(Duration::from_micros(micros));
        }
        handle.parked.store(false, Ordering::Relaxed);
    }
}

impl Round<'_> {
    /// Handles up to a burst of frames other workers handed over.
    fn drain_inbox(&self, scratch: &mut Scratch) -> usize {
        let mut handled = 0;
        while handled < self.shared.config.burst {
            match self.inbox.try_recv() {
                Ok((ingress, packet)) => {
                    self.forward(scratch, ingress, packet);
                    handled += 1;
                }
                Err(_) => break,
            }
        }
        handled
    }

    /// Takes a burst from one owned receive queue and dispatches it by flow.
    fn poll(
        &self,
        scratch: &mut Scratch,
        batch: &mut Vec<Packet>,
        port: &LivePort,
        queue: usize,
    ) -> usize {
        batch.clear();
        // An error here is an outside end that went away: nothing to poll.
        let received = port
            .port
            .receive(queue, batch, self.shared.config.burst)
            .unwrap_or(0);
        let workers = self.shared.workers.len();
        for packet in batch.drain(..) {
            port.counters.received(self.index, packet.data.len());
            let target = if workers == 1 {
                self.index
            } else {
                worker_for_hash(flow_hash(&packet.data), workers)
            };
            if target == self.index {
                self.forward(scratch, port.id, packet);
            } else {
                self.hand_off(scratch, target, port, packet);
            }
        }
        for (target, flag) in scratch.to_wake.iter_mut().enumerate() {
            if std::mem::take(flag) {
                if let Some(handle) = self.shared.workers.get(target) {
                    handle.wake();
                }
            }
        }
        received
    }

    /// Passes a frame to the worker of its flow, waiting a bounded time for
    /// room in its inbox and handling this worker's own inbox meanwhile.
    fn hand_off(&self, scratch: &mut Scratch, target: usize, ingress: &LivePort, packet: Packet) {
        let Some(inbox) = self.shared.workers.get(target).map(|w| &w.inbox) else {
            self.drop_at(ingress, DropReason::WorkerQueueFull);
            return;
        };
        let mut item = (ingress.id, packet);
        let wait = self.shared.config.queue_full_wait;
        let mut deadline = None;
        loop {
            match inbox.try_send(item) {
                Ok(()) => {
                    self.counters.handed_off();
                    if let Some(flag) = scratch.to_wake.get_mut(target) {
                        *flag = true;
                    }
                    if let Some(flag) = scratch.congested.get_mut(target) {
                        *flag = false;
                    }
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    let congested = scratch.congested.get(target).copied().unwrap_or(true);
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
                    if congested || wait.is_zero() || Instant::now() >= deadline {
                        if let Some(flag) = scratch.congested.get_mut(target) {
                            *flag = true;
                        }
                        self.drop_at(ingress, DropReason::WorkerQueueFull);
                        return;
                    }
                    item = back;
                    if self.drain_inbox(scratch) == 0 {
                        thread::yield_now();
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.drop_at(ingress, DropReason::WorkerQueueFull);
                    return;
                }
            }
        }
    }

    /// Counts a drop on a port and on this worker.
    fn drop_at(&self, port: &LivePort, reason: DropReason) {
        port.counters.dropped(self.index, reason, 1);
        self.counters.dropped(reason, 1);
    }

    /// Forwards one frame of a flow this worker owns.
    fn forward(&self, scratch: &mut Scratch, ingress: PortId, packet: Packet) {
        self.counters.handled(packet.data.len());
        let table = self.table;
        // A guest's offload request is checked against its frame once, at
        // ingress, so a bad one is counted on the port that sent it. The
        // plan is reused at egress for the frame as it is; a retagged copy
        // (offsets moved by the tag) is checked again there.
        let plan = if packet.hdr.has_offload_work() {
            match packet.hdr.validate(&packet.data) {
                Ok(plan) => Some(plan),
                Err(_) => {
                    match table.live(ingress) {
                        Some(port) => self.drop_at(port, DropReason::InvalidOffloadHeader),
                        None => self.counters.dropped(DropReason::InvalidOffloadHeader, 1),
                    }
                    return;
                }
            }
        } else {
            None
        };
        let decision = self.shared.forwarder.decide_cached(
            &mut scratch.cache,
            &table.profiles,
            ingress,
            &packet.data,
            self.now,
            &mut scratch.egress,
        );
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => {
                match table.live(ingress) {
                    Some(port) => self.drop_at(port, err.reason()),
                    None => self.counters.dropped(err.reason(), 1),
                }
                return;
            }
        };
        if decision.learned == Learned::LimitReached {
            if let Some(port) = table.live(ingress) {
                port.counters.not_learned(self.index);
            }
        }
        // At most two versions of the frame: untagged and tagged with its
        // VLAN; every port of a kind shares one buffer. A frame that leaves
        // unchanged through its last egress port is moved there, not cloned
        // (the common case of one unicast destination).
        let mut original = Some(packet);
        let mut untagged: Option<Packet> = None;
        let mut tagged: Option<Packet> = None;
        let count = scratch.egress.len();
        for (i, out) in scratch.egress.iter().enumerate() {
            let unchanged = unchanged_by(decision.ingress_tag, out.tag);
            let version = if unchanged {
                let moved = if i + 1 == count {
                    original.take()
                } else {
                    None
                };
                match moved.or_else(|| original.clone()) {
                    Some(packet) => packet,
                    None => continue,
                }
            } else {
                let Some(packet) = original.as_ref() else {
                    continue;
                };
                match out.tag {
                    None => {
                        untagged.get_or_insert_with(|| retag(packet, decision.ingress_tag, None))
                    }
                    Some(vlan) => tagged
                        .get_or_insert_with(|| retag(packet, decision.ingress_tag, Some(vlan))),
                }
                .clone()
            };
            match table.live(out.port) {
                Some(port) => {
                    let plan = if unchanged { plan.as_ref() } else { None };
                    self.transmit(
                        &mut scratch.engine,
                        &mut scratch.adapted,
                        port,
                        version,
                        plan,
                    )
                }
                None => self.counters.dropped(DropReason::EgressPortGone, 1),
            }
        }
    }

    /// The egress path of one frame to one port: the adaptation seam, then
    /// the port's send. `plan` is the frame's validated offload plan when
    /// the frame is byte for byte the one validated at ingress.
    fn transmit(
        &self,
        engine: &mut EgressEngine,
        adapted: &mut Vec<Packet>,
        port: &LivePort,
        packet: Packet,
        plan: Option<&OffloadPlan>,
    ) {
        if port.removed.load(Ordering::Acquire) {
            self.drop_at(port, DropReason::EgressPortGone);
            return;
        }
        adapted.clear();
        match adapt_with_plan(engine, packet, plan, &port.caps.egress, adapted) {
            Err(err) => self.drop_at(port, err.reason()),
            Ok(work) => {
                port.counters.worked(self.index, &work);
                self.counters.worked(&work);
                for packet in adapted.drain(..) {
                    self.send(port, packet);
                }
            }
        }
    }

    /// Sends one frame, retrying a full queue for a bounded time.
    fn send(&self, port: &LivePort, packet: Packet) {
        let queue = self.index % port.caps.tx_queues.max(1);
        let bytes = packet.data.len();
        let wait = self.shared.config.queue_full_wait;
        let mut packet = packet;
        let mut deadline = None;
        loop {
            match port.port.send(queue, packet) {
                Ok(()) => {
                    port.counters.sent(self.index, bytes);
                    self.counters.sent();
                    if port.congested.load(Ordering::Relaxed) {
                        port.congested.store(false, Ordering::Relaxed);
                    }
                    return;
                }
                Err(err @ SendError::Full { .. }) => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
                    if wait.is_zero()
                        || port.congested.load(Ordering::Relaxed)
                        || Instant::now() >= deadline
                    {
                        port.congested.store(true, Ordering::Relaxed);
                        self.drop_at(port, DropReason::EgressQueueFull);
                        return;
                    }
                    if port.removed.load(Ordering::Acquire) {
                        self.drop_at(port, DropReason::EgressPortGone);
                        return;
                    }
                    if self.shared.stop.load(Ordering::Acquire) {
                        self.drop_at(port, DropReason::Shutdown);
                        return;
                    }
                    packet = err.into_packet();
                    thread::yield_now();
                }
                Err(_) => {
                    self.drop_at(port, DropReason::EgressPortError);
                    return;
                }
            }
        }
    }
}
