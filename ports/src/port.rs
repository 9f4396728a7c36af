//! What a port is: queues, declared capabilities, and the two calls the
//! switch makes on it.
//!
//! # Why batches of [`Packet`] and not smoltcp-style tokens
//!
//! smoltcp's `phy::Device` hands out an `RxToken`/`TxToken` so that the
//! device owns the buffers and the stack never allocates: the token lends a
//! buffer for the duration of a closure. Two things differ here:
//!
//! * The switch keeps heterogeneous ports in one table and swaps that table
//!   while traffic runs, so the trait must be object safe (`Arc<dyn Port>`).
//!   Token traits with generic associated types are not.
//! * A frame is already an owned, reference-counted buffer
//!   ([`bytes::Bytes`] inside [`Packet`]). The port allocates it when the
//!   frame arrives from the outside (as a device fills its own ring); the
//!   switch only moves it and, when flooding, clones the handle (a reference
//!   count, not a copy).
//!
//! So a [`Packet`] plays the role of the token, and [`Port::receive`] fills a
//! caller-owned vector that the caller reuses from one burst to the next:
//! no allocation per frame on the switch side, and one dynamic call per
//! burst rather than per frame.

use std::task::Waker;

use vswitch_offload::{EgressCapabilities, Packet};

/// What a port declares about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCapabilities {
    /// What the port's far side completes by itself on egress (checksums,
    /// segmentation) and its MTU.
    pub egress: EgressCapabilities,
    /// Number of receive queues (frames from the outside into the switch).
    /// At least 1.
    pub rx_queues: usize,
    /// Number of transmit queues (frames from the switch to the outside).
    /// At least 1.
    pub tx_queues: usize,
}

/// Why a port could not hand over frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The queue index is not one of the port's queues.
    #[error("no {direction} queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// `"rx"` or `"tx"`.
        direction: &'static str,
        /// The queue asked for.
        queue: usize,
        /// How many queues of that direction the port has.
        queues: usize,
    },
    /// The outside end of the port is gone and the queue is empty: no frame
    /// will ever arrive on it again.
    #[error("rx queue {queue} is disconnected: its outside end was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
    },
}

/// Why a frame was not accepted for sending. The frame is handed back so the
/// caller decides whether to retry or to count it as dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The transmit queue is full; the frame may be retried later.
    #[error("tx queue {queue} is full (capacity {capacity})")]
    Full {
        /// The queue asked for.
        queue: usize,
        /// Its capacity in frames.
        capacity: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
    /// The outside end of the port is gone; retrying cannot succeed.
    #[error("tx queue {queue} is disconnected: its outside end was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
    /// The queue index is not one of the port's queues.
    #[error("no tx queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// The queue asked for.
        queue: usize,
        /// How many transmit queues the port has.
        queues: usize,
        /// The frame that was not sent.
        packet: Packet,
    },
    /// The outside refused this one frame (a kernel that rejects its
    /// virtio-net header, say); the queue itself still works, so the frame
    /// is dropped and the next one may go.
    #[error("tx queue {queue} refused the frame: {reason}")]
    Refused {
        /// The queue asked for.
        queue: usize,
        /// What the outside said (an OS error message).
        reason: String,
        /// The frame that was not sent.
        packet: Packet,
    },
}

impl SendError {
    /// The frame that was not sent.
    pub fn into_packet(self) -> Packet {
        match self {
            SendError::Full { packet, .. }
            | SendError::Disconnected { packet, .. }
            | SendError::NoSuchQueue { packet, .. }
            | SendError::Refused { packet, .. } => packet,
        }
    }

    /// Whether a later retry may succeed (the queue was only full).
    pub fn is_full(&self) -> bool {
        matches!(self, SendError::Full { .. })
    }
}

/// A switch port: a set of receive and transmit queues with declared
/// capabilities.
///
/// Both calls take `&self` and may be called from several threads at once,
/// on different queues or on the same one; an implementation keeps each
/// queue first-in first-out.
pub trait Port: Send + Sync {
    /// A short name for logs and statistics.
    fn name(&self) -> &str;

    /// The port's queues and egress capabilities. Constant for the life of
    /// the port.
    fn capabilities(&self) -> PortCapabilities;

    /// Moves up to `max` waiting frames of receive queue `queue` to the end
    /// of `batch`, in arrival order, and returns how many were moved
    /// (0 when the queue is empty). Never blocks.
    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError>;

    /// Asks the port to wake `waker` whenever frames arrive on receive
    /// queue `queue` while it was empty, so that whoever polls the queue
    /// (a switch worker) may sleep until then instead of polling it on a
    /// timer. Returns whether the port will; a later call replaces the
    /// waker. The port wakes it from whatever thread the frames arrive on,
    /// after they can be taken with [`Port::receive`], so the poller must
    /// only make sure it looks at the queue after a wake (a wake before it
    /// sleeps must not be lost).
    ///
    /// The provided implementation keeps no waker and returns `false`:
    /// the caller goes on polling the queue.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        let _ = (queue, waker);
        false
    }

    /// Like [`Port::set_rx_waker`], for a port whose frames arrive on a
    /// thread of its own that may do the poller's work itself: waking
    /// `runner` may run a round of the switch's worker right there, on the
    /// waking thread (receiving from this port and sending to any port,
    /// this one too), when that worker is free; otherwise it wakes the
    /// worker as a waker does. So the port wakes it only where that thread
    /// holds none of the port's locks and may spend the time, and then
    /// whenever frames wait in queue `queue`, not only when they arrive
    /// in it empty. A frame then goes from one port to the next with no
    /// hand-off between threads. Returns whether the port will; if not,
    /// the switch gives the queue a plain waker instead.
    ///
    /// The provided implementation keeps nothing and returns `false`.
    fn set_rx_runner(&self, queue: usize, runner: Waker) -> bool {
        let _ = (queue, runner);
        false
    }

    /// Whether the port takes frames whose payload is still lent by the
    /// guest that sent it ([`Packet::tail`]) and copies the lent bytes
    /// where they go itself. Constant for the life of the port. The
    /// provided implementation says no, and the switch then hands the port
    /// every frame whole, in host memory.
    fn takes_lent_frames(&self) -> bool {
        false
    }

    /// Queues one frame for the outside on transmit queue `queue`. Never
    /// blocks: a full queue hands the frame back in [`SendError::Full`].
    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError>;

    /// Queues the frames of `batch` on transmit queue `queue`, in order,
    /// and removes from `batch` those it took. Never blocks. On an error
    /// the frames from the refused one on are still in `batch`, in order,
    /// for the caller to retry or count.
    ///
    /// The switch hands a port all the frames of a burst (the segments of
    /// a large frame among them) in one call, so a port can take them in
    /// one go: one lock, one ring update, at most one notification of its
    /// outside. The provided implementation calls [`Port::send`] once per
    /// frame.
    fn send_batch(&self, queue: usize, batch: &mut Vec<Packet>) -> Result<(), BatchSendError> {
        let mut sent = 0;
        let mut result = Ok(());
        for slot in batch.iter_mut() {
            match self.send(queue, std::mem::take(slot)) {
                Ok(()) => sent += 1,
                Err(err) => {
                    let kind = BatchSendError::from(&err);
                    *slot = err.into_packet();
                    result = Err(kind);
                    break;
                }
            }
        }
        batch.drain(..sent);
        result
    }
}

/// Why [`Port::send_batch`] stopped before the end of its batch. The
/// frames not taken stay in the batch, the refused one first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchSendError {
    /// The transmit queue is full; the rest may be retried later.
    #[error("tx queue {queue} is full (capacity {capacity})")]
    Full {
        /// The queue asked for.
        queue: usize,
        /// Its capacity in frames.
        capacity: usize,
    },
    /// The outside end of the port is gone; retrying cannot succeed.
    #[error("tx queue {queue} is disconnected: its outside end was dropped")]
    Disconnected {
        /// The queue asked for.
        queue: usize,
    },
    /// The queue index is not one of the port's queues.
    #[error("no tx queue {queue}: the port has {queues}")]
    NoSuchQueue {
        /// The queue asked for.
        queue: usize,
        /// How many transmit queues the port has.
        queues: usize,
    },
    /// The outside refused the first frame left in the batch; the queue
    /// still works, so the caller drops that frame and may send the rest.
    #[error("tx queue {queue} refused the frame: {reason}")]
    Refused {
        /// The queue asked for.
        queue: usize,
        /// What the outside said.
        reason: String,
    },
}

impl BatchSendError {
    /// Whether a later retry may succeed (the queue was only full).
    pub fn is_full(&self) -> bool {
        matches!(self, BatchSendError::Full { .. })
    }
}

impl From<&SendError> for BatchSendError {
    fn from(err: &SendError) -> Self {
        match *err {
            SendError::Full {
                queue, capacity, ..
            } => BatchSendError::Full { queue, capacity },
            SendError::Disconnected { queue, .. } => BatchSendError::Disconnected { queue },
            SendError::NoSuchQueue { queue, queues, .. } => {
                BatchSendError::NoSuchQueue { queue, queues }
            }
            SendError::Refused {
                queue, ref reason, ..
            } => BatchSendError::Refused {
                queue,
                reason: reason.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A port whose single queue takes `room` frames.
    struct Bounded {
        room: Mutex<usize>,
        sent: Mutex<Vec<u8>>,
    }

    impl Port for Bounded {
        fn name(&self) -> &str {
            "bounded"
        }
        fn capabilities(&self) -> PortCapabilities {
            PortCapabilities {
                egress: EgressCapabilities::default(),
                rx_queues: 1,
                tx_queues: 1,
            }
        }
        fn receive(&self, _: usize, _: &mut Vec<Packet>, _: usize) -> Result<usize, PortError> {
            Ok(0)
        }
        fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
            if queue != 0 {
                return Err(SendError::NoSuchQueue {
                    queue,
                    queues: 1,
                    packet,
                });
            }
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(SendError::Full {
                    queue,
                    capacity: 3,
                    packet,
                });
            }
            *room -= 1;
            self.sent.lock().unwrap().push(packet.data[0]);
            Ok(())
        }
    }

    fn batch(tags: std::ops::Range<u8>) -> Vec<Packet> {
        tags.map(|tag| Packet::plain(vec![tag; 60])).collect()
    }

    #[test]
    fn a_batch_stops_at_a_full_queue_and_keeps_the_rest_in_order() {
        let port = Bounded {
            room: Mutex::new(3),
            sent: Mutex::new(Vec::new()),
        };
        let mut frames = batch(0..5);
        let err = port.send_batch(0, &mut frames).unwrap_err();
        assert_eq!(
            err,
            BatchSendError::Full {
                queue: 0,
                capacity: 3
            }
        );
        assert!(err.is_full());
        assert_eq!(*port.sent.lock().unwrap(), [0, 1, 2]);
        let left: Vec<u8> = frames.iter().map(|p| p.data[0]).collect();
        assert_eq!(left, [3, 4]);

        *port.room.lock().unwrap() = 10;
        port.send_batch(0, &mut frames).unwrap();
        assert!(frames.is_empty());
        assert_eq!(*port.sent.lock().unwrap(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_bad_queue_refuses_the_whole_batch() {
        let port = Bounded {
            room: Mutex::new(3),
            sent: Mutex::new(Vec::new()),
        };
        let mut frames = batch(0..2);
        let err = port.send_batch(7, &mut frames).unwrap_err();
        assert_eq!(
            err,
            BatchSendError::NoSuchQueue {
                queue: 7,
                queues: 1
            }
        );
        assert!(!err.is_full());
        assert_eq!(frames.len(), 2);
    }
}
