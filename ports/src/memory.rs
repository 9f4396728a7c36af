//! An in-memory port: bounded channels per queue, for tests, demos and
//! embedders that hand frames to the switch from their own threads.
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

use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, Receiver, Select, SendTimeoutError, Sender, TryRecvError, TrySendError,
};
use vswitch_offload::{EgressCapabilities, Packet};

use crate::port::{Port, PortCapabilities, PortError, SendError};

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

/// The switch side of an in-memory port.
#[derive(Debug)]
pub struct MemoryPort {
    name: String,
    caps: PortCapabilities,
    queue_len: usize,
    rx: Vec<Receiver<Packet>>,
    tx: Vec<Sender<Packet>>,
}

/// The outside end of an in-memory port: inject frames into the switch,
/// collect the frames the switch sends.
#[derive(Debug)]
pub struct MemoryEndpoint {
    queue_len: usize,
    inject: Vec<Sender<Packet>>,
    collect: Vec<Receiver<Packet>>,
}

/// Builds an in-memory port. Queue counts and the queue length are raised
/// to at least 1.
pub fn memory_port(config: MemoryPortConfig) -> (MemoryPort, MemoryEndpoint) {
    let rx_queues = config.rx_queues.max(1);
    let tx_queues = config.tx_queues.max(1);
    let queue_len = config.queue_len.max(1);
    let (inject, rx): (Vec<_>, Vec<_>) = (0..rx_queues).map(|_| bounded(queue_len)).unzip();
    let (tx, collect): (Vec<_>, Vec<_>) = (0..tx_queues).map(|_| bounded(queue_len)).unzip();
    let port = MemoryPort {
        name: config.name,
        caps: PortCapabilities {
            egress: config.egress,
            rx_queues,
            tx_queues,
        },
        queue_len,
        rx,
        tx,
    };
    let endpoint = MemoryEndpoint {
        queue_len,
        inject,
        collect,
    };
    (port, endpoint)
}

impl Port for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let rx = self.rx.get(queue).ok_or(PortError::NoSuchQueue {
            direction: "rx",
            queue,
            queues: self.rx.len(),
        })?;
        let mut moved = 0;
        while moved < max {
            match rx.try_recv() {
                Ok(packet) => {
                    batch.push(packet);
                    moved += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if moved == 0 => {
                    return Err(PortError::Disconnected { queue })
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        Ok(moved)
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let Some(tx) = self.tx.get(queue) else {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.tx.len(),
                packet,
            });
        };
        tx.try_send(packet).map_err(|err| match err {
            TrySendError::Full(packet) => SendError::Full {
                queue,
                capacity: self.queue_len,
                packet,
            },
            TrySendError::Disconnected(packet) => SendError::Disconnected { queue, packet },
        })
    }
}

impl MemoryEndpoint {
    /// Number of receive queues the frames can be injected into.
    pub fn rx_queues(&self) -> usize {
        self.inject.len()
    }

    /// Number of transmit queues frames are collected from.
    pub fn tx_queues(&self) -> usize {
        self.collect.len()
    }

    /// Injects a frame into receive queue `queue` without waiting.
    pub fn try_inject(&self, queue: usize, packet: Packet) -> Result<(), InjectError> {
        let Some(tx) = self.inject.get(queue) else {
            return Err(self.no_such_queue(queue, packet));
        };
        tx.try_send(packet).map_err(|err| match err {
            TrySendError::Full(packet) => InjectError::Full {
                queue,
                capacity: self.queue_len,
                packet,
            },
            TrySendError::Disconnected(packet) => InjectError::Disconnected { queue, packet },
        })
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
        let Some(tx) = self.inject.get(queue) else {
            return Err(self.no_such_queue(queue, packet));
        };
        tx.send_timeout(packet, timeout).map_err(|err| match err {
            SendTimeoutError::Timeout(packet) => InjectError::Full {
                queue,
                capacity: self.queue_len,
                packet,
            },
            SendTimeoutError::Disconnected(packet) => InjectError::Disconnected { queue, packet },
        })
    }

    fn no_such_queue(&self, queue: usize, packet: Packet) -> InjectError {
        InjectError::NoSuchQueue {
            queue,
            queues: self.inject.len(),
            packet,
        }
    }

    /// Takes one frame the switch sent, from any transmit queue, without
    /// waiting. Frames of one transmit queue come out in the order sent.
    pub fn try_collect(&self) -> Option<Packet> {
        self.collect.iter().find_map(|rx| rx.try_recv().ok())
    }

    /// Takes one frame the switch sent, from any transmit queue, waiting up
    /// to `timeout`. `None` when nothing arrived in time or the switch side
    /// is gone.
    pub fn collect_timeout(&self, timeout: Duration) -> Option<Packet> {
        if let Some(packet) = self.try_collect() {
            return Some(packet);
        }
        let deadline = Instant::now() + timeout;
        let mut select = Select::new();
        for rx in &self.collect {
            select.recv(rx);
        }
        let mut open = self.collect.len();
        while open > 0 {
            let op = select.select_deadline(deadline).ok()?;
            let index = op.index();
            let rx = self.collect.get(index)?;
            match op.recv(rx) {
                Ok(packet) => return Some(packet),
                Err(_) => {
                    // That queue's switch side is gone; wait on the others.
                    select.remove(index);
                    open -= 1;
                }
            }
        }
        None
    }

    /// Moves every frame waiting on the transmit queues to `out` and returns
    /// how many were moved.
    pub fn drain(&self, out: &mut Vec<Packet>) -> usize {
        let before = out.len();
        for rx in &self.collect {
            out.extend(rx.try_iter());
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
}
