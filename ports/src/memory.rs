//! An in-memory port: a bounded queue each way per queue index, for tests,
//! demos and embedders that hand frames to the switch from their own
//! threads. The switch takes and gives a whole burst under one lock, and
//! wakes a waiting outside thread at most once per burst.
//!
//! [`memory_port`] returns the two ends: the [`MemoryPort`] the switch owns
//! and the [`MemoryEndpoint`] the outside (a test, a fake guest, an
//! embedder) uses to inject frames and collect what the switch sends.
//!
//! ```
//! use vswitch_ports::memory::{memory_port, MemoryPortConfig};
//! use vswitch_ports::offload::Packet;
//! use vswitch_ports::Port;
//!
//! let (port, outside) = memory_port(MemoryPortConfig::new("guest0"));
//! outside.try_inject(0, Packet::plain(vec![0u8; 60])).unwrap();
//! let mut batch = Vec::new();
//! assert_eq!(port.receive(0, &mut batch, 32).unwrap(), 1);
//! port.send(0, batch.pop().unwrap()).unwrap();
//! assert_eq!(outside.try_collect().unwrap().data.len(), 60);
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use vswitch_offload::{EgressCapabilities, Packet};

use crate::port::{BatchSendError, Port, PortCapabilities, PortError, SendError};
use crate::wake::{wake, ArrivalWaker};

/// How to build an in-memory port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPortConfig {
    /// The port's name.
    pub name: String,
    /// Number of receive queues (outside to switch), at least 1.
    pub rx_queues: usize,
    /// Number of transmit queues (switch to outside), at least 1.
    pub tx_queues: usize,
    /// Capacity of each queue in frames, at least 1.
    pub queue_len: usize,
    /// What the outside completes by itself on frames the switch sends.
    pub egress: EgressCapabilities,
}

impl MemoryPortConfig {
    /// One queue each way, 1024 frames each, no egress offloads, MTU 1500.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryPortConfig {
            name: name.into(),
            rx_queues: 1,
            tx_queues: 1,
            queue_len: 1024,
            egress: EgressCapabilities::none(1500),
        }
    }

    /// Sets the number of receive and transmit queues.
    pub fn queues(mut self, rx: usize, tx: usize) -> Self {
        self.rx_queues = rx;
        self.tx_queues = tx;
        self
    }

    /// Sets the capacity of every queue.
    pub fn queue_len(mut self, frames: usize) -> Self {
        self.queue_len = frames;
        self
    }

    /// Sets the egress capabilities.
    pub fn egress(mut self, egress: EgressCapabilities) -> Self {
        self.egress = egress;
        self
    }
}

/// Why the outside could not inject a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The receive queue stayed full (for the time allowed, if any).
    #[error("rx queue {queue} is full (capacity {capacity})")]
    Full {
        /// The queue asked for.
        queue: usize,
        /// Its capacity in frames.
        capacity: usize,
        /// The frame that was not injected.
        packet: Packet,
    },
    /// The switch side of the port was dropped.
    #[error("rx queue {queue} is disconnected: the switch side was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
        /// The frame that was not injected.
        packet: Packet,
    },
    /// The queue index is not one of the port's receive queues.
    #[error("no rx queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// The queue asked for.
        queue: usize,
        /// How many receive queues the port has.
        queues: usize,
        /// The frame that was not injected.
        packet: Packet,
    },
}

impl InjectError {
    /// The frame that was not injected.
    pub fn into_packet(self) -> Packet {
        match self {
            InjectError::Full { packet, .. }
            | InjectError::Disconnected { packet, .. }
            | InjectError::NoSuchQueue { packet, .. } => packet,
        }
    }
}

/// One bounded FIFO between the switch and the outside. A burst moves
/// under one lock: the switch takes or gives a whole batch at a time.
///
/// A receive lane is a [`Fifo`], which the switch empties a burst at a
/// time; a transmit lane is a `VecDeque`, since the outside may take its
/// frames one at a time.
#[derive(Debug)]
struct Lane<Q> {
    frames: Mutex<Q>,
}

impl<Q> Lane<Q> {
    fn new(frames: Q) -> Lane<Q> {
        Lane {
            frames: Mutex::new(frames),
        }
    }

    /// The queue, even if a thread panicked while holding it: a frame
    /// queue has no invariant a panic could break half-way.
    fn lock(&self) -> MutexGuard<'_, Q> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue the switch takes from in bursts: the frames sit in a `Vec` from
/// `head` on, and a burst is moved out of a slice of it, without the
/// per-frame bookkeeping of a ring's iterator. The space before `head` is
/// reclaimed when the queue empties or the `Vec` would grow.
#[derive(Debug)]
struct Fifo {
    frames: Vec<Packet>,
    head: usize,
    /// Whom a frame arriving in the empty queue wakes
    /// ([`Port::set_rx_waker`]).
    waker: ArrivalWaker,
}

impl Fifo {
    /// Room for `capacity` frames, written once (see [`touched_deque`]).
    fn with_capacity(capacity: usize) -> Fifo {
        let mut frames = vec![Packet::default(); capacity];
        frames.clear();
        Fifo {
            frames,
            head: 0,
            waker: ArrivalWaker::default(),
        }
    }

    fn len(&self) -> usize {
        self.frames.len() - self.head
    }

    /// Queues `packet`; the waker to wake (once the lock is let go) if
    /// it found the queue empty.
    fn push(&mut self, packet: Packet) -> Option<Waker> {
        if self.frames.len() == self.frames.capacity() && self.head > 0 {
            self.frames.drain(..self.head);
            self.head = 0;
        }
        self.frames.push(packet);
        self.waker.on_push(1, self.len())
    }

    /// Moves the first `max` frames (or all, if fewer) to `batch` and
    /// returns how many it moved.
    fn take(&mut self, max: usize, batch: &mut Vec<Packet>) -> usize {
        let moved = max.min(self.len());
        let end = self.head + moved;
        batch.extend(self.frames[self.head..end].iter_mut().map(std::mem::take));
        self.head = end;
        if self.head == self.frames.len() {
            self.frames.clear();
            self.head = 0;
        }
        moved
    }
}

/// An empty `VecDeque` with room for `capacity` frames whose memory was
/// written once, here: the thread that builds the port pays for the first
/// touch of its pages, not the worker that fills the queue.
fn touched_deque(capacity: usize) -> VecDeque<Packet> {
    let mut frames = VecDeque::with_capacity(capacity);
    frames.resize(capacity, Packet::default());
    frames.clear();
    frames
}

/// Where a thread of one side waits for the other side to act (room to
/// inject, a frame to collect). The acting side only takes the lock when
/// someone is waiting, so a burst that nobody waits for costs one load.
#[derive(Debug, Default)]
struct Doorbell {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    rung: Condvar,
}

impl Doorbell {
    /// Wakes the waiters, if any.
    fn ring(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.rung.notify_all();
        }
    }

    /// Calls `attempt` until it gives a value, waiting for a ring between
    /// attempts, until `deadline`. `attempt` runs while the doorbell is
    /// held, so a ring between an attempt and the wait is not lost.
    fn wait_for<T>(&self, deadline: Instant, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
        let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let found = loop {
            if let Some(found) = attempt() {
                break Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            held = match self.rung.wait_timeout(held, deadline - now) {
                Ok((held, _)) => held,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        found
    }
}

/// What the two ends of a port share.
#[derive(Debug)]
struct Shared {
    /// Outside to switch.
    rx: Vec<Lane<Fifo>>,
    /// Switch to outside.
    tx: Vec<Lane<VecDeque<Packet>>>,
    queue_len: usize,
    /// The switch side still exists.
    port_alive: AtomicBool,
    /// The outside end still exists.
    outside_alive: AtomicBool,
    /// Rung when the switch takes frames (room to inject) or goes away.
    room: Doorbell,
    /// Rung when the switch sends frames or goes away.
    sent: Doorbell,
}

/// The switch side of an in-memory port.
#[derive(Debug)]
pub struct MemoryPort {
    name: String,
    caps: PortCapabilities,
    shared: Arc<Shared>,
}

/// The outside end of an in-memory port: inject frames into the switch,
/// collect the frames the switch sends.
#[derive(Debug)]
pub struct MemoryEndpoint {
    shared: Arc<Shared>,
}

/// Builds an in-memory port. Queue counts and the queue length are raised
/// to at least 1.
pub fn memory_port(config: MemoryPortConfig) -> (MemoryPort, MemoryEndpoint) {
    let rx_queues = config.rx_queues.max(1);
    let tx_queues = config.tx_queues.max(1);
    let queue_len = config.queue_len.max(1);
    let shared = Arc::new(Shared {
        rx: (0..rx_queues)
            .map(|_| Lane::new(Fifo::with_capacity(queue_len)))
            .collect(),
        tx: (0..tx_queues)
            .map(|_| Lane::new(touched_deque(queue_len)))
            .collect(),
        queue_len,
        port_alive: AtomicBool::new(true),
        outside_alive: AtomicBool::new(true),
        room: Doorbell::default(),
        sent: Doorbell::default(),
    });
    let port = MemoryPort {
        name: config.name,
        caps: PortCapabilities {
            egress: config.egress,
            rx_queues,
            tx_queues,
        },
        shared: Arc::clone(&shared),
    };
    (port, MemoryEndpoint { shared })
}

impl Drop for MemoryPort {
    fn drop(&mut self) {
        self.shared.port_alive.store(false, Ordering::SeqCst);
        self.shared.room.ring();
        self.shared.sent.ring();
    }
}

impl Drop for MemoryEndpoint {
    fn drop(&mut self) {
        self.shared.outside_alive.store(false, Ordering::SeqCst);
        // Nobody can collect them any more.
        for lane in &self.shared.tx {
            lane.lock().clear();
        }
    }
}

impl MemoryPort {
    fn tx_lane(&self, queue: usize) -> Option<&Lane<VecDeque<Packet>>> {
        self.shared.tx.get(queue)
    }
}

impl Port for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    /// Yes: a frame injected into an empty receive queue wakes `waker`.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        let Some(lane) = self.shared.rx.get(queue) else {
            return false;
        };
        let mut frames = lane.lock();
        let queued = frames.len();
        let now = frames.waker.set(Some(waker), queued);
        drop(frames);
        wake(now);
        true
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let shared = &self.shared;
        let lane = shared.rx.get(queue).ok_or(PortError::NoSuchQueue {
            direction: "rx",
            queue,
            queues: shared.rx.len(),
        })?;
        let moved = lane.lock().take(max, batch);
        if moved > 0 {
            shared.room.ring();
        } else if !shared.outside_alive.load(Ordering::SeqCst) && lane.lock().len() == 0 {
            // Looked at again after the outside was seen gone: a frame it
            // injected just before going is still taken, not lost.
            return Err(PortError::Disconnected { queue });
        }
        Ok(moved)
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let Some(lane) = self.tx_lane(queue) else {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.shared.tx.len(),
                packet,
            });
        };
        if !self.shared.outside_alive.load(Ordering::SeqCst) {
            return Err(SendError::Disconnected { queue, packet });
        }
        {
            let mut frames = lane.lock();
            if frames.len() >= self.shared.queue_len {
                return Err(SendError::Full {
                    queue,
                    capacity: self.shared.queue_len,
                    packet,
                });
            }
            frames.push_back(packet);
        }
        self.shared.sent.ring();
        Ok(())
    }

    /// The whole batch, or as much as the queue has room for, under one
    /// lock and with at most one wake-up of the outside.
    fn send_batch(&self, queue: usize, batch: &mut Vec<Packet>) -> Result<(), BatchSendError> {
        let Some(lane) = self.tx_lane(queue) else {
            return Err(BatchSendError::NoSuchQueue {
                queue,
                queues: self.shared.tx.len(),
            });
        };
        if !self.shared.outside_alive.load(Ordering::SeqCst) {
            return Err(BatchSendError::Disconnected { queue });
        }
        let capacity = self.shared.queue_len;
        let taken = {
            let mut frames = lane.lock();
            let taken = capacity.saturating_sub(frames.len()).min(batch.len());
            frames.extend(batch.drain(..taken));
            taken
        };
        if taken > 0 {
            self.shared.sent.ring();
        }
        if batch.is_empty() {
            Ok(())
        } else {
            Err(BatchSendError::Full { queue, capacity })
        }
    }
}

impl MemoryEndpoint {
    /// Number of receive queues the frames can be injected into.
    pub fn rx_queues(&self) -> usize {
        self.shared.rx.len()
    }

    /// Number of transmit queues frames are collected from.
    pub fn tx_queues(&self) -> usize {
        self.shared.tx.len()
    }

    /// Injects a frame into receive queue `queue` without waiting.
    pub fn try_inject(&self, queue: usize, packet: Packet) -> Result<(), InjectError> {
        let Some(lane) = self.shared.rx.get(queue) else {
            return Err(self.no_such_queue(queue, packet));
        };
        self.push(queue, lane, packet)
    }

    fn push(&self, queue: usize, lane: &Lane<Fifo>, packet: Packet) -> Result<(), InjectError> {
        if !self.shared.port_alive.load(Ordering::SeqCst) {
            return Err(InjectError::Disconnected { queue, packet });
        }
        let mut frames = lane.lock();
        if frames.len() >= self.shared.queue_len {
            return Err(InjectError::Full {
                queue,
                capacity: self.shared.queue_len,
                packet,
            });
        }
        let arrived = frames.push(packet);
        drop(frames);
        wake(arrived);
        Ok(())
    }

    /// Injects a frame into receive queue `queue`, waiting up to `timeout`
    /// for room: the outside is held back while the switch is behind, as a
    /// guest whose ring is full.
    pub fn inject_timeout(
        &self,
        queue: usize,
        packet: Packet,
        timeout: Duration,
    ) -> Result<(), InjectError> {
        let Some(lane) = self.shared.rx.get(queue) else {
            return Err(self.no_such_queue(queue, packet));
        };
        let deadline = Instant::now() + timeout;
        let mut packet = Some(packet);
        let outcome = self.shared.room.wait_for(deadline, || {
            let frame = packet.take()?;
            match self.push(queue, lane, frame) {
                Err(InjectError::Full { packet: back, .. }) => {
                    packet = Some(back);
                    None
                }
                done => Some(done),
            }
        });
        match (outcome, packet) {
            (Some(done), _) => done,
            (None, Some(packet)) => Err(InjectError::Full {
                queue,
                capacity: self.shared.queue_len,
                packet,
            }),
            // `attempt` only gives `None` after putting the frame back.
            (None, None) => Ok(()),
        }
    }

    fn no_such_queue(&self, queue: usize, packet: Packet) -> InjectError {
        InjectError::NoSuchQueue {
            queue,
            queues: self.shared.rx.len(),
            packet,
        }
    }

    /// Takes one frame the switch sent, from any transmit queue, without
    /// waiting. Frames of one transmit queue come out in the order sent.
    pub fn try_collect(&self) -> Option<Packet> {
        self.shared
            .tx
            .iter()
            .find_map(|lane| lane.lock().pop_front())
    }

    /// Takes one frame the switch sent, from any transmit queue, waiting up
    /// to `timeout`. `None` when nothing arrived in time or the switch side
    /// is gone.
    pub fn collect_timeout(&self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        self.shared.sent.wait_for(deadline, || {
            self.try_collect().map(Some).or_else(|| {
                // Nothing will come from a switch side that is gone.
                (!self.shared.port_alive.load(Ordering::SeqCst)).then_some(None)
            })
        })?
    }

    /// Moves every frame waiting on the transmit queues to `out` and returns
    /// how many were moved.
    pub fn drain(&self, out: &mut Vec<Packet>) -> usize {
        let before = out.len();
        for lane in &self.shared.tx {
            out.extend(lane.lock().drain(..));
        }
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8) -> Packet {
        Packet::plain(vec![tag; 64])
    }

    #[test]
    fn a_frame_injected_into_an_empty_queue_wakes_the_poller() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queues(2, 1));
        let (count, waker) = crate::wake::CountWakes::new();
        let wakes = || count.count();
        outside.try_inject(0, frame(0)).unwrap();
        assert!(port.set_rx_waker(0, waker.clone()));
        assert!(!port.set_rx_waker(2, waker), "two queues");
        assert_eq!(wakes(), 1, "a frame waiting already wakes at once");
        outside.try_inject(0, frame(1)).unwrap();
        outside.try_inject(1, frame(2)).unwrap();
        assert_eq!(wakes(), 1, "behind another, or on a queue without a waker");
        let mut batch = Vec::new();
        assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 2);
        outside.try_inject(0, frame(3)).unwrap();
        assert_eq!(wakes(), 2, "into the empty queue again");
    }

    #[test]
    fn frames_keep_their_order_per_queue() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queues(2, 1));
        for i in 0..10 {
            outside.try_inject(1, frame(i)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(port.receive(0, &mut batch, 64).unwrap(), 0);
        assert_eq!(port.receive(1, &mut batch, 4).unwrap(), 4);
        assert_eq!(port.receive(1, &mut batch, 64).unwrap(), 6);
        let tags: Vec<u8> = batch.iter().map(|p| p.data[0]).collect();
        assert_eq!(tags, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn a_full_queue_hands_the_frame_back() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queue_len(2));
        outside.try_inject(0, frame(1)).unwrap();
        outside.try_inject(0, frame(2)).unwrap();
        let err = outside.try_inject(0, frame(3)).unwrap_err();
        assert!(matches!(err, InjectError::Full { capacity: 2, .. }));
        assert_eq!(err.into_packet().data[0], 3);

        port.send(0, frame(4)).unwrap();
        port.send(0, frame(5)).unwrap();
        let err = port.send(0, frame(6)).unwrap_err();
        assert!(err.is_full());
        assert_eq!(err.into_packet().data[0], 6);
    }

    #[test]
    fn bad_queue_indices_are_errors() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p"));
        let mut batch = Vec::new();
        assert_eq!(
            port.receive(3, &mut batch, 1),
            Err(PortError::NoSuchQueue {
                direction: "rx",
                queue: 3,
                queues: 1
            })
        );
        let err = port.send(7, frame(9)).unwrap_err();
        assert!(matches!(
            err,
            SendError::NoSuchQueue {
                queue: 7,
                queues: 1,
                ..
            }
        ));
        let err = outside.try_inject(2, frame(8)).unwrap_err();
        assert!(matches!(err, InjectError::NoSuchQueue { queue: 2, .. }));
        assert_eq!(err.into_packet().data[0], 8);
    }

    #[test]
    fn a_dropped_outside_disconnects_the_queues() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p"));
        outside.try_inject(0, frame(1)).unwrap();
        drop(outside);
        let mut batch = Vec::new();
        assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1);
        assert_eq!(
            port.receive(0, &mut batch, 8),
            Err(PortError::Disconnected { queue: 0 })
        );
        assert!(matches!(
            port.send(0, frame(2)),
            Err(SendError::Disconnected { .. })
        ));
    }

    #[test]
    fn collect_waits_across_queues_and_clones_share_bytes() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queues(1, 3));
        let packet = frame(5);
        let copy = packet.clone();
        port.send(2, packet).unwrap();
        let got = outside.collect_timeout(Duration::from_millis(100)).unwrap();
        // A Bytes clone is a reference to the same buffer, not a copy.
        assert_eq!(got.data.as_ptr(), copy.data.as_ptr());
        assert!(outside.collect_timeout(Duration::from_millis(10)).is_none());
        port.send(0, frame(1)).unwrap();
        port.send(1, frame(2)).unwrap();
        let mut out = Vec::new();
        assert_eq!(outside.drain(&mut out), 2);
    }

    #[test]
    fn a_batch_fills_the_room_left_and_hands_back_the_rest_in_order() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queue_len(4));
        port.send(0, frame(0)).unwrap();
        let mut batch: Vec<Packet> = (1..6).map(frame).collect();
        let err = port.send_batch(0, &mut batch).unwrap_err();
        assert_eq!(
            err,
            BatchSendError::Full {
                queue: 0,
                capacity: 4
            }
        );
        let left: Vec<u8> = batch.iter().map(|p| p.data[0]).collect();
        assert_eq!(left, [4, 5]);
        let mut out = Vec::new();
        assert_eq!(outside.drain(&mut out), 4);
        let got: Vec<u8> = out.iter().map(|p| p.data[0]).collect();
        assert_eq!(got, [0, 1, 2, 3]);
        port.send_batch(0, &mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(
            port.send_batch(3, &mut vec![frame(9)]),
            Err(BatchSendError::NoSuchQueue {
                queue: 3,
                queues: 1
            })
        );
        drop(outside);
        assert_eq!(
            port.send_batch(0, &mut vec![frame(9)]),
            Err(BatchSendError::Disconnected { queue: 0 })
        );
    }

    #[test]
    fn waiting_ends_when_the_other_side_acts() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p").queue_len(1));
        outside.try_inject(0, frame(1)).unwrap();
        let port = Arc::new(port);
        let switch = Arc::clone(&port);
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut batch = Vec::new();
            let taken = switch.receive(0, &mut batch, 8).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            switch.send_batch(0, &mut batch).unwrap();
            taken
        });
        // The queue is full until the switch takes the first frame.
        let start = Instant::now();
        outside
            .inject_timeout(0, frame(2), Duration::from_secs(10))
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        let got = outside.collect_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.data[0], 1);
        assert_eq!(taker.join().unwrap(), 1);
        // A full queue that nobody drains gives the frame back in time.
        let err = outside
            .inject_timeout(0, frame(3), Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(err.into_packet().data[0], 3);
    }

    #[test]
    fn a_dropped_switch_side_ends_a_wait_at_once() {
        let (port, outside) = memory_port(MemoryPortConfig::new("p"));
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(port);
        });
        let start = Instant::now();
        assert!(outside.collect_timeout(Duration::from_secs(30)).is_none());
        assert!(start.elapsed() < Duration::from_secs(10));
        dropper.join().unwrap();
        let err = outside.try_inject(0, frame(1)).unwrap_err();
        assert!(matches!(err, InjectError::Disconnected { queue: 0, .. }));
    }
}
