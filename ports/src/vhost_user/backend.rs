//! The vhost-user-backend side of one connection: feature negotiation,
//! memory updates and the events of each queue pair's thread.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::queue::{drain_tx, drain_tx_lending, fill_rx, return_lent, QueueBroken};
use super::Shared;
use crate::features::Features;
use crate::guest::{GuestPort, GuestPortConfig, LentMemory, Notifier, PairNotifiers};

/// Guest memory as the vhost-user handler maps it.
pub(super) type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The smallest MTU a frontend may set (IPv4's minimum datagram, as
/// Linux's ETH_MIN_MTU).
const MIN_MTU: u16 = 68;

/// Frames (or chains) one event handles before the thread looks at its
/// other events.
const BUDGET: usize = 256;

/// How long a ring that stops waits for its pair's thread to return the
/// chains whose lent payloads were just copied.
const STOP_WAIT: Duration = Duration::from_millis(200);

/// The virtio-net feature bits this backend offers for `pairs` queue pairs.
pub(super) fn offered_features(pairs: usize) -> Features {
    let mut offered = Features::VERSION_1
        | Features::MRG_RXBUF
        | Features::CSUM
        | Features::GUEST_CSUM
        | Features::HOST_TSO4
        | Features::HOST_TSO6
        | Features::HOST_ECN
        | Features::HOST_UFO
        | Features::HOST_USO
        | Features::GUEST_TSO4
        | Features::GUEST_TSO6
        | Features::GUEST_ECN
        | Features::GUEST_UFO
        | Features::GUEST_USO4
        | Features::GUEST_USO6
        | Features::MTU;
    if pairs > 1 {
        offered |= Features::MQ;
    }
    offered
}

/// Ring and transport bits offered beside the virtio-net ones.
const TRANSPORT_BITS: u64 = (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_F_VERSION_1)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// An eventfd the switch writes when frames for the guest arrive on a
/// queue pair (or its transmit side has room again), polled by that
/// pair's thread.
pub(super) struct PairEvent {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

impl PairEvent {
    fn new() -> io::Result<Self> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(PairEvent { consumer, notifier })
    }

    pub(super) fn consumer_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.consumer.as_raw_fd()
    }
}

impl Notifier for PairEvent {
    fn notify(&self) {
        // Fails only when the counter would overflow, which means a
        // notification is pending anyway.
        let _ = self.notifier.notify();
    }
}

/// Fired when a queue pair's transmit chains whose lent payloads came back
/// wait for the used ring: publishes them from the thread that gave them
/// back (the switch's worker, as it delivers the frames) when the pair's
/// thread is not busy with the pair, else wakes that thread.
struct ReturnNotifier {
    backend: Weak<NetBackend>,
    pair: usize,
    event: Arc<PairEvent>,
}

impl Notifier for ReturnNotifier {
    fn notify(&self) {
        let returned = self
            .backend
            .upgrade()
            .is_some_and(|backend| backend.return_from_switch(self.pair));
        if !returned {
            self.event.notify();
        }
    }
}

/// The snapshot of guest memory one event works on.
type Snapshot = <Memory as GuestAddressSpace>::T;

/// A ring the switch's worker serves itself ([`NetBackend::claim`]): the
/// pair's scratch is held, so the pair's thread keeps off the pair.
struct Claimed<'a> {
    vq: u16,
    state: std::sync::RwLockWriteGuard<'a, vhost_user_backend::VringState<Memory>>,
    scratch: std::sync::MutexGuard<'a, Scratch>,
    memory: Snapshot,
}

/// Scratch vectors one pair's thread reuses from event to event (empty
/// between events: no chain outlives the memory snapshot it was read
/// through).
#[derive(Default)]
struct Scratch {
    heads: Vec<u16>,
    chains: Vec<DescriptorChain<Snapshot>>,
}

/// One connection's backend: built when the frontend connects, dropped
/// when it goes away.
pub(super) struct NetBackend {
    /// This backend, for the notifiers it hands the guest port.
    me: Weak<NetBackend>,
    shared: Arc<Shared>,
    pairs: usize,
    memory: RwLock<Option<Memory>>,
    events: Vec<Arc<PairEvent>>,
    scratch: Vec<Mutex<Scratch>>,
    /// Each pair's receive and transmit rings, kept from the pair thread's
    /// first event so that the switch's worker can fill the receive ring
    /// itself ([`NetBackend::fill_from_switch`]). The handler builds the
    /// rings once per connection, so the first event's are the only ones.
    rings: Vec<OnceLock<Vec<VringRwLock<Memory>>>>,
    acked: AtomicU64,
    /// The MTU the frontend gave the guest (`VHOST_USER_NET_SET_MTU`);
    /// 0 until it does.
    frontend_mtu: AtomicU32,
    /// Which rings the frontend enabled (bit = ring index).
    enabled_rings: AtomicU64,
    /// The connection is over: each pair's thread ends at its next event.
    ending: AtomicBool,
}

impl NetBackend {
    pub(super) fn new(shared: Arc<Shared>) -> io::Result<Arc<Self>> {
        let pairs = shared.config.queue_pairs;
        let events = (0..pairs)
            .map(|_| PairEvent::new().map(Arc::new))
            .collect::<io::Result<_>>()?;
        // A new connection: every ring is served until its guest breaks one.
        shared.clear_broken();
        Ok(Arc::new_cyclic(|me| NetBackend {
            me: me.clone(),
            pairs,
            memory: RwLock::new(None),
            events,
            scratch: (0..pairs).map(|_| Mutex::default()).collect(),
            rings: (0..pairs).map(|_| OnceLock::new()).collect(),
            acked: AtomicU64::new(0),
            frontend_mtu: AtomicU32::new(0),
            enabled_rings: AtomicU64::new(0),
            ending: AtomicBool::new(false),
            shared,
        }))
    }

    /// The event id of a pair's eventfd in its thread's epoll set: the
    /// first one above those vhost-user-backend reserves.
    pub(super) fn pair_event_id(&self) -> u64 {
        2 * self.pairs as u64 + 1
    }

    pub(super) fn pair_event(&self, pair: usize) -> &PairEvent {
        &self.events[pair]
    }

    /// Ends the connection's pair threads: each returns an error from its
    /// next event, which ends vhost-user-backend's loop for that thread,
    /// and the pair eventfds are written so that every thread has one.
    pub(super) fn end_threads(&self) {
        self.ending.store(true, Ordering::SeqCst);
        for event in &self.events {
            event.notify();
        }
    }

    fn connect_guest(&self, acked_bits: u64) -> Result<(), String> {
        let negotiated = super::negotiate(self.pairs, acked_bits).map_err(|e| e.to_string())?;
        let config = GuestPortConfig::new(self.shared.config.name.clone())
            .queue_pairs(self.pairs)
            .mtu(self.guest_mtu())
            .queue_len(self.shared.config.queue_len);
        let port = GuestPort::with_pair_notifiers(config, negotiated, |pair| PairNotifiers {
            frames: self.events[pair].clone(),
            returns: Arc::new(ReturnNotifier {
                backend: self.me.clone(),
                pair,
                event: self.events[pair].clone(),
            }),
        });
        self.shared.attach(Arc::new(port), negotiated.features());
        self.apply_active_pairs();
        Ok(())
    }

    /// `VHOST_USER_SET_VRING_ENABLE` as the handler got it: the frames the
    /// switch sends go to the queue pairs whose receive ring is enabled.
    pub(super) fn ring_enabled(&self, index: u32, on: bool) {
        let Some(bit) = 1u64.checked_shl(index) else {
            return;
        };
        if on {
            self.enabled_rings.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.enabled_rings.fetch_and(!bit, Ordering::SeqCst);
        }
        self.apply_active_pairs();
    }

    /// `VHOST_USER_GET_VRING_BASE` is about to reach the handler, which
    /// stops ring `index` there: the device must be done with the ring's
    /// buffers by then. For a transmit ring, every payload still lent is
    /// copied into host memory, and the pair's thread returns the chains
    /// through the used ring before the handler stops it (waited for, at
    /// most [`STOP_WAIT`]).
    pub(super) fn ring_stopping(&self, index: u32) {
        let Some(port) = self.shared.guest() else {
            return;
        };
        let Some(queue) = (index % 2 == 1)
            .then(|| port.queue(index as usize / 2))
            .flatten()
        else {
            return;
        };
        queue.revoke_lent(true);
        let deadline = Instant::now() + STOP_WAIT;
        while queue.has_returned() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// `VHOST_USER_SET_VRING_BASE` is about to reach the handler: ring
    /// `index` starts (again) from the index the frontend gives, and a
    /// transmit ring lends payloads again.
    pub(super) fn ring_starting(&self, index: u32) {
        let Some(port) = self.shared.guest() else {
            return;
        };
        if index % 2 == 1 {
            if let Some(queue) = port.queue(index as usize / 2) {
                queue.resume_lending();
            }
        }
    }

    /// Tells the attached guest port how many queue pairs the guest uses:
    /// the leading pairs whose receive ring (2 × pair) is enabled. A guest
    /// that turns pairs off (`ethtool -L eth0 combined 1`) gets its frames
    /// folded onto the rest instead of left on rings nobody serves.
    fn apply_active_pairs(&self) {
        let Some(port) = self.shared.guest() else {
            return;
        };
        let rings = self.enabled_rings.load(Ordering::SeqCst);
        let active = (0..self.pairs)
            .take_while(|pair| rings & (1 << (2 * pair)) != 0)
            .count();
        if active > 0 {
            // Within 1..=pairs by construction, which the port accepts.
            let _ = port.set_active_queue_pairs(active);
        }
    }

    /// The MTU frames for the guest are cut to: the frontend's, else the
    /// port's.
    fn guest_mtu(&self) -> u16 {
        match u16::try_from(self.frontend_mtu.load(Ordering::Relaxed)) {
            Ok(mtu) if mtu != 0 => mtu,
            _ => self.shared.config.mtu,
        }
    }

    /// `VHOST_USER_NET_SET_MTU`: the MTU the frontend gave the guest. One
    /// from 68 up to the port's MTU is taken (and a guest attached already
    /// is set up again with it); a larger one is refused, because the
    /// switch would drop whatever the guest sent above the port's MTU.
    pub(super) fn set_frontend_mtu(&self, mtu: u64) -> Result<(), String> {
        let port_mtu = self.shared.config.mtu;
        let taken = u16::try_from(mtu)
            .ok()
            .filter(|mtu| (MIN_MTU..=port_mtu).contains(mtu));
        let Some(mtu) = taken else {
            let reason = format!(
                "the frontend set the guest's MTU to {mtu}, outside {MIN_MTU}..={port_mtu} \
                 (the port's MTU): refused (hint: give the port mtu={mtu}, or the frontend \
                 an MTU of at most {port_mtu}, e.g. QEMU's host_mtu={port_mtu})"
            );
            self.shared.note(reason.clone());
            return Err(reason);
        };
        let before = self.frontend_mtu.swap(u32::from(mtu), Ordering::Relaxed);
        let acked = self.acked.load(Ordering::Relaxed);
        if before != u32::from(mtu) && acked != 0 && self.shared.is_attached() {
            if let Err(reason) = self.connect_guest(acked) {
                self.shared.negotiation_failed(reason);
            }
        }
        Ok(())
    }

    fn mark_broken(&self, err: &QueueBroken) {
        if usize::from(err.queue) < 2 * self.pairs {
            self.shared.queue_broken(err);
        }
    }

    /// The memory snapshot an event or a call from the switch works on;
    /// `None` before the frontend gave the memory table.
    fn snapshot(&self) -> Option<Snapshot> {
        self.memory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|m| m.memory())
    }

    /// Ring `offset` (0: receive, 1: transmit) of pair `pair`, claimed for
    /// the caller's thread (the switch's worker): `None` when the pair's
    /// thread is to be woken for it instead, because that thread is busy
    /// with the pair (it holds the pair's scratch), the ring is not known
    /// yet, not ready, or broken, or the connection ends.
    fn claim(&self, pair: usize, offset: usize) -> Option<Claimed<'_>> {
        if self.ending.load(Ordering::SeqCst) {
            return None;
        }
        let ring = self.rings.get(pair)?.get()?.get(offset)?;
        let index = 2 * pair + offset;
        let vq = u16::try_from(index).ok()?;
        if self.shared.is_broken(index) {
            return None;
        }
        let scratch = match self.scratch.get(pair)?.try_lock() {
            Ok(scratch) => scratch,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return None,
        };
        let memory = self.snapshot()?;
        let state = ring.get_mut();
        if !state.get_queue().ready() {
            return None;
        }
        Some(Claimed {
            vq,
            state,
            scratch,
            memory,
        })
    }

    /// Writes the frames the switch just queued on `port`'s pair `pair`
    /// into the guest's receive ring from the caller's thread (the
    /// switch's worker), so that a frame reaches the guest with no hand-off
    /// to the pair's thread and no wake-up of it. Returns false, having
    /// done nothing, where the ring cannot be [claimed](Self::claim) or is
    /// disabled: the caller then wakes the pair's thread as usual. A fill
    /// whose budget runs out wakes that thread for the rest itself.
    ///
    /// Frames stay in order: whoever fills takes them out of the pair's
    /// one queue, holding the pair's scratch.
    pub(super) fn fill_from_switch(&self, port: &GuestPort, pair: usize) -> bool {
        let Some(queue) = port.queue(pair) else {
            return false;
        };
        let Some(mut claimed) = self.claim(pair, 0) else {
            return false;
        };
        if !claimed.state.is_enabled() {
            return false;
        }
        match fill_rx(
            claimed.vq,
            claimed.state.get_queue_mut(),
            &claimed.memory,
            queue,
            BUDGET,
            &mut claimed.scratch.chains,
        ) {
            Ok(done) => {
                if done.signal && claimed.state.signal_used_queue().is_err() {
                    // The call eventfd is gone (the frontend is going
                    // away): the pair's thread finds out on its own.
                    return false;
                }
                if done.more {
                    self.events[pair].notify();
                }
            }
            Err(err) => self.mark_broken(&err),
        }
        true
    }

    /// Publishes the transmit chains of pair `pair` whose lent payloads
    /// came back to the guest's used ring from the caller's thread, and
    /// signals the guest if it asks for it (a disabled ring too: the
    /// device still gives back what it took). Returns false, having done
    /// nothing, where the ring cannot be [claimed](Self::claim): the caller
    /// then wakes the pair's thread.
    fn return_from_switch(&self, pair: usize) -> bool {
        let Some(port) = self.shared.guest() else {
            return false;
        };
        let Some(queue) = port.queue(pair) else {
            return false;
        };
        let Some(mut claimed) = self.claim(pair, 1) else {
            return false;
        };
        match return_lent(
            claimed.vq,
            claimed.state.get_queue_mut(),
            &claimed.memory,
            queue,
            &mut claimed.scratch.heads,
        ) {
            Ok(signal) => {
                if signal && claimed.state.signal_used_queue().is_err() {
                    return false;
                }
            }
            Err(err) => self.mark_broken(&err),
        }
        true
    }

    /// Runs the switch's round on this thread if frames the guest sent on
    /// pair `pair` wait for it and the switch gave the queue a runner
    /// ([`Port::set_rx_runner`](crate::Port::set_rx_runner)). Called with
    /// none of the pair's locks held: the round may write into this
    /// guest's receive ring too.
    fn run_switch(&self, pair: usize) {
        if self.shared.has_transmitted(pair) {
            if let Some(runner) = self.shared.rx_runners.get(pair) {
                runner.wake();
            }
        }
    }

    /// Serves queue pair `pair`: fills its receive ring, drains its
    /// transmit ring; asks to be called again when a budget ran out.
    fn serve_pair(&self, pair: usize, vrings: &[VringRwLock<Memory>]) -> io::Result<()> {
        let Some(port) = self.shared.guest() else {
            return Ok(());
        };
        let Some(queue) = port.queue(pair) else {
            return Ok(());
        };
        let Some(memory) = self.snapshot() else {
            return Ok(());
        };
        let mut scratch = self.scratch[pair]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let scratch = &mut *scratch;
        let mut again = false;
        for (offset, vring) in vrings.iter().enumerate().take(2) {
            let index = 2 * pair + offset;
            if self.shared.is_broken(index) {
                continue;
            }
            let mut state = vring.get_mut();
            let vq = u16::try_from(index).unwrap_or(u16::MAX);
            if !state.get_queue().ready() {
                continue;
            }
            if !state.is_enabled() {
                // A disabled transmit ring takes nothing new, but the
                // chains whose lent payloads came back still go back.
                if offset == 1 && queue.has_returned() {
                    match return_lent(
                        vq,
                        state.get_queue_mut(),
                        &memory,
                        queue,
                        &mut scratch.heads,
                    ) {
                        Ok(true) => state.signal_used_queue()?,
                        Ok(false) => {}
                        Err(err) => self.mark_broken(&err),
                    }
                }
                continue;
            }
            let result = if offset == 0 {
                fill_rx(
                    vq,
                    state.get_queue_mut(),
                    &memory,
                    queue,
                    BUDGET,
                    &mut scratch.chains,
                )
            } else if self.shared.config.lend_payloads {
                // The payloads of large frames are lent out of this
                // snapshot: they stay mapped until the last is copied.
                let lent: Arc<dyn LentMemory> = Arc::new(memory.clone());
                drain_tx_lending(
                    vq,
                    state.get_queue_mut(),
                    &memory,
                    &lent,
                    queue,
                    BUDGET,
                    &mut scratch.heads,
                )
            } else {
                drain_tx(
                    vq,
                    state.get_queue_mut(),
                    &memory,
                    queue,
                    BUDGET,
                    &mut scratch.heads,
                )
            };
            match result {
                Ok(done) => {
                    if done.signal {
                        state.signal_used_queue()?;
                    }
                    again |= done.more;
                }
                Err(err) => self.mark_broken(&err),
            }
        }
        if again {
            self.events[pair].notify();
        }
        Ok(())
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        2 * self.pairs
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.config.queue_size)
    }

    fn features(&self) -> u64 {
        offered_features(self.pairs).bits() | TRANSPORT_BITS
    }

    fn acked_features(&self, features: u64) {
        // The frontend sends SET_FEATURES once per queue pair it sets up:
        // the guest port is built once per distinct set.
        if self.acked.swap(features, Ordering::Relaxed) == features && self.shared.is_attached() {
            return;
        }
        if let Err(reason) = self.connect_guest(features) {
            self.shared.negotiation_failed(reason);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // MTU: VHOST_USER_NET_SET_MTU, which the relay answers.
        let mut features = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::MTU;
        if self.pairs > 1 {
            features |= VhostUserProtocolFeatures::MQ;
        }
        features
    }

    fn reset_device(&self) {
        self.shared.detach();
        self.acked.store(0, Ordering::Relaxed);
        self.frontend_mtu.store(0, Ordering::Relaxed);
        self.enabled_rings.store(0, Ordering::SeqCst);
        self.shared.clear_broken();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The handler sets it on every ring; the queue code asks the ring.
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        // A snapshot per event: a region removed now stays mapped until the
        // event that was using it is done.
        *self.memory.write().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One thread per queue pair: its receive and transmit rings.
        (0..self.pairs).map(|pair| 0b11u64 << (2 * pair)).collect()
    }

    /// None: vhost-user-backend 0.24 registers an exit event's consumer
    /// with `into_raw_fd` and never closes it, two eventfds lost per
    /// connection until the process runs out (found by the
    /// `vhost_user_messages` fuzz target: the port stopped accepting after
    /// 113 connections under `ulimit -n 256`). The pair threads end through
    /// the pair eventfds instead ([`NetBackend::end_threads`]).
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        None
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock<Memory>],
        thread_id: usize,
    ) -> io::Result<()> {
        if thread_id >= self.pairs {
            return Ok(());
        }
        if let Some(rings) = self.rings.get(thread_id) {
            rings.get_or_init(|| vrings.iter().take(2).cloned().collect());
        }
        if u64::from(device_event) == self.pair_event_id() {
            // Reads and clears the count; nothing pending is not an error.
            let _ = self.events[thread_id].consumer.consume();
        }
        if self.ending.load(Ordering::SeqCst) {
            // Ends this thread's event loop (the error is the loop's exit).
            return Err(io::Error::other("the vhost-user connection ended"));
        }
        // A kick on either ring, or the switch: serve both directions.
        self.serve_pair(thread_id, vrings)?;
        self.run_switch(thread_id);
        Ok(())
    }
}
