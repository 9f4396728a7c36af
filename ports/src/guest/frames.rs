//! The bounded frame queues between a device model's thread and the
//! switch's: one lock, taken once per burst on the switch's side.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use vswitch_offload::Packet;

use crate::wake::{wake, ArrivalWaker};

/// A bounded FIFO of frames, whether a pusher found it full since the
/// last frames were taken out (so that the taker can wake it), and whom
/// to wake when frames arrive in it empty (the taker, if it sleeps).
///
/// Every operation is one short critical section: a burst goes in or out
/// under one acquisition, and the flag is read and written under the same
/// lock as the frames, so "found it full" and "took frames" cannot pass
/// each other.
pub(super) struct FrameQueue {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    frames: VecDeque<Packet>,
    blocked: bool,
    waker: ArrivalWaker,
}

impl FrameQueue {
    /// An empty queue of `capacity` frames (at least 1). Its memory is
    /// written once here, so that the thread building the port pays for
    /// the first touch of its pages, not the threads that move frames.
    pub(super) fn new(capacity: usize) -> FrameQueue {
        let capacity = capacity.max(1);
        let mut frames = VecDeque::with_capacity(capacity);
        frames.resize(capacity, Packet::default());
        frames.clear();
        FrameQueue {
            inner: Mutex::new(Inner {
                frames,
                blocked: false,
                waker: ArrivalWaker::default(),
            }),
            capacity,
        }
    }

    /// The queue, even if a thread panicked while holding it: a frame
    /// queue has no invariant a panic could break half-way.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frames queued now.
    pub(super) fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame is queued now.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    /// Room for more frames now; at 0 the queue is marked as found full.
    pub(super) fn room_or_block(&self) -> usize {
        let mut inner = self.lock();
        let room = self.capacity.saturating_sub(inner.frames.len());
        if room == 0 {
            inner.blocked = true;
        }
        room
    }

    /// Whom to wake when frames arrive in the queue empty from now on
    /// (`None`: nobody). Woken at once if frames are queued already, so
    /// that none waits for the next arrival.
    pub(super) fn set_waker(&self, waker: Option<Waker>) {
        let mut inner = self.lock();
        let queued = inner.frames.len();
        let now = inner.waker.set(waker, queued);
        drop(inner);
        wake(now);
    }

    /// Queues `packet`, or hands it back if the queue is full (and marks
    /// it as found full).
    pub(super) fn push(&self, packet: Packet) -> Result<(), Packet> {
        let mut inner = self.lock();
        if inner.frames.len() >= self.capacity {
            inner.blocked = true;
            return Err(packet);
        }
        inner.frames.push_back(packet);
        let arrived = inner.waker.on_push(1, inner.frames.len());
        drop(inner);
        wake(arrived);
        Ok(())
    }

    /// Moves frames from the front of `batch` to the queue, as many as fit,
    /// in order; returns how many. Those that did not fit stay in `batch`.
    pub(super) fn push_from(&self, batch: &mut Vec<Packet>) -> usize {
        let mut inner = self.lock();
        let fits = self
            .capacity
            .saturating_sub(inner.frames.len())
            .min(batch.len());
        inner.frames.extend(batch.drain(..fits));
        let arrived = inner.waker.on_push(fits, inner.frames.len());
        drop(inner);
        wake(arrived);
        fits
    }

    /// Moves up to `max` frames from the front of the queue to `out`, in
    /// order. Returns how many, and whether the queue had been found full
    /// and is no longer (frames were taken): the pusher is then to be woken.
    pub(super) fn take(&self, out: &mut impl Extend<Packet>, max: usize) -> (usize, bool) {
        let mut inner = self.lock();
        let moved = max.min(inner.frames.len());
        if moved == 0 {
            return (0, false);
        }
        out.extend(inner.frames.drain(..moved));
        (moved, std::mem::take(&mut inner.blocked))
    }

    /// Drops every queued frame; returns how many.
    pub(super) fn clear(&self) -> usize {
        let mut inner = self.lock();
        let dropped = inner.frames.len();
        inner.frames.clear();
        dropped
    }
}

impl std::fmt::Debug for FrameQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8) -> Packet {
        Packet::plain(vec![tag; 60])
    }

    fn tags(frames: &[Packet]) -> Vec<u8> {
        frames.iter().map(|p| p.data[0]).collect()
    }

    #[test]
    fn frames_come_out_in_order_and_a_full_queue_hands_them_back() {
        let queue = FrameQueue::new(3);
        let mut batch: Vec<Packet> = (0..5).map(frame).collect();
        assert_eq!(queue.push_from(&mut batch), 3);
        assert_eq!(tags(&batch), [3, 4], "what did not fit stays, in order");
        assert_eq!(queue.push(frame(9)).unwrap_err().data[0], 9);
        let mut out = Vec::new();
        assert_eq!(
            queue.take(&mut out, 2),
            (2, true),
            "found full, now has room"
        );
        assert_eq!(queue.take(&mut out, 8), (1, false), "woken once only");
        assert_eq!(tags(&out), [0, 1, 2]);
        assert_eq!(queue.take(&mut out, 8), (0, false));
        assert!(queue.is_empty());
    }

    #[test]
    fn frames_that_find_the_queue_empty_wake_the_taker_once() {
        let queue = FrameQueue::new(4);
        let (count, waker) = crate::wake::CountWakes::new();
        let wakes = || count.count();
        queue.push(frame(0)).unwrap();
        queue.set_waker(Some(waker));
        assert_eq!(wakes(), 1, "a frame queued already wakes at once");
        let mut out = Vec::new();
        queue.take(&mut out, 8);
        queue.push(frame(1)).unwrap();
        assert_eq!(wakes(), 2, "the first frame into an empty queue wakes");
        queue.push(frame(2)).unwrap();
        let mut batch = vec![frame(3)];
        assert_eq!(queue.push_from(&mut batch), 1);
        assert_eq!(wakes(), 2, "frames behind others wake nobody");
        queue.take(&mut out, 8);
        let mut batch: Vec<Packet> = (4..10).map(frame).collect();
        assert_eq!(queue.push_from(&mut batch), 4);
        assert_eq!(wakes(), 3, "a batch into an empty queue wakes once");
        queue.take(&mut out, 8);
        let mut none = Vec::new();
        assert_eq!(queue.push_from(&mut none), 0);
        assert_eq!(wakes(), 3, "nothing pushed wakes nobody");
        for tag in 10..14 {
            queue.push(frame(tag)).unwrap();
        }
        assert!(queue.push(frame(14)).is_err(), "full");
        assert_eq!(wakes(), 4, "a frame refused wakes nobody");
        queue.take(&mut out, 8);
        queue.set_waker(None);
        queue.push(frame(15)).unwrap();
        assert_eq!(wakes(), 4, "no waker, no wake");
        assert_eq!(tags(&out), [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]);
    }

    #[test]
    fn room_at_zero_marks_the_queue_found_full() {
        let queue = FrameQueue::new(1);
        assert_eq!(queue.room_or_block(), 1);
        queue.push(frame(1)).unwrap();
        let mut out = Vec::new();
        assert_eq!(queue.take(&mut out, 1), (1, false), "never found full");
        queue.push(frame(2)).unwrap();
        assert_eq!(queue.room_or_block(), 0);
        assert_eq!(queue.take(&mut out, 1), (1, true));
        assert_eq!(queue.len(), 0);
        queue.push(frame(3)).unwrap();
        assert_eq!(queue.clear(), 1);
        assert!(queue.is_empty());
    }
}
