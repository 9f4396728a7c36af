//! Waking whoever polls a receive queue ([`crate::Port::set_rx_waker`])
//! when frames arrive in it empty: the one rule the ports' queues share.

use std::sync::{Mutex, PoisonError};
use std::task::Waker;

/// The waker of one receive queue, kept beside the queue's frames and
/// under the same lock, so that "the queue was empty" and "who to wake"
/// are read together.
#[derive(Debug, Default)]
pub(crate) struct ArrivalWaker(Option<Waker>);

impl ArrivalWaker {
    /// Replaces the waker (`None`: nobody). Returns it to be woken now if
    /// frames are `queued` already, so that none waits for the next
    /// arrival.
    pub(crate) fn set(&mut self, waker: Option<Waker>, queued: usize) -> Option<Waker> {
        self.0 = waker;
        if queued > 0 {
            self.0.clone()
        } else {
            None
        }
    }

    /// The waker to wake now that `pushed` frames joined the queue, which
    /// holds `queued` with them: only if they found it empty. A poller
    /// that finds frames left takes them in its next round anyway, so
    /// later pushes wake nobody.
    pub(crate) fn on_push(&self, pushed: usize, queued: usize) -> Option<Waker> {
        if pushed > 0 && queued == pushed {
            self.0.clone()
        } else {
            None
        }
    }
}

/// The receive wakers of a port whose queues are served by something that
/// comes and goes (a guest's connection, sockets opened again): kept by
/// the port and handed to each new server. Handing over and keeping take
/// one lock, so a waker kept while a new server takes over reaches it
/// either way.
#[derive(Debug)]
pub(crate) struct KeptWakers(Mutex<Vec<Option<Waker>>>);

impl KeptWakers {
    /// No waker yet for any of `queues` queues.
    pub(crate) fn new(queues: usize) -> Self {
        KeptWakers(Mutex::new(vec![None; queues]))
    }

    /// Keeps `waker` for `queue` and gives it to the queue's server now
    /// with `hand`; `None`, keeping nothing, for a queue the port does not
    /// have.
    pub(crate) fn keep<R>(
        &self,
        queue: usize,
        waker: Waker,
        hand: impl FnOnce(Waker) -> R,
    ) -> Option<R> {
        let mut wakers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = wakers.get_mut(queue)?;
        *slot = Some(waker.clone());
        Some(hand(waker))
    }

    /// The waker kept for `queue`, if any.
    pub(crate) fn get(&self, queue: usize) -> Option<Waker> {
        let wakers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        wakers.get(queue).cloned().flatten()
    }

    /// Gives every kept waker to a new server of the queues with `hand`
    /// (queue, waker). The new server must be in place already, so that a
    /// waker kept from now on reaches it through [`keep`](Self::keep).
    pub(crate) fn hand_over(&self, mut hand: impl FnMut(usize, Waker)) {
        let wakers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (queue, waker) in wakers.iter().enumerate() {
            if let Some(waker) = waker {
                hand(queue, waker.clone());
            }
        }
    }
}

/// Wakes what [`ArrivalWaker`] returned, once the queue's lock is let go
/// (the poller it wakes takes that lock first thing).
pub(crate) fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A waker that counts its wakes, for the tests of every port that wakes.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct CountWakes(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl CountWakes {
    /// A new counter and a waker that counts on it.
    pub(crate) fn new() -> (std::sync::Arc<CountWakes>, Waker) {
        let count = std::sync::Arc::new(CountWakes::default());
        let waker = Waker::from(count.clone());
        (count, waker)
    }

    /// Wakes so far.
    pub(crate) fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl std::task::Wake for CountWakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
