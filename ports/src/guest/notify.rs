//! Waking the device model when frames for the guest arrive.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Something to wake when frames for the guest arrive: in a VMM, a write to
/// the eventfd the device model's thread polls.
pub trait Notifier: Send + Sync {
    /// Wakes the waiter. Called from switch threads; must not block for long.
    fn notify(&self);
}

impl<F: Fn() + Send + Sync> Notifier for F {
    fn notify(&self) {
        self()
    }
}

/// A portable [`Notifier`] with the semantics of an eventfd: notifications
/// are counted, and a wait consumes all of them.
#[derive(Debug, Default)]
pub struct CondvarNotifier {
    count: Mutex<u64>,
    cond: Condvar,
}

impl CondvarNotifier {
    /// A notifier with no notification pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until at least one notification is pending or `timeout`
    /// passed, then consumes the pending notifications. Returns whether
    /// there was one.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *count == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self
                .cond
                .wait_timeout(count, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *count = 0;
        true
    }
}

impl Notifier for CondvarNotifier {
    fn notify(&self) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_add(1);
        self.cond.notify_all();
    }
}
