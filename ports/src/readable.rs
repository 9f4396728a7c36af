//! Waking whoever polls a receive queue that is a file descriptor (a TAP
//! queue) when the kernel has frames for it ([`crate::Port::set_rx_waker`]).
//!
//! One thread per port waits on an epoll set holding the port's queue
//! descriptors, each registered one-shot (`EPOLLIN | EPOLLONESHOT`): the
//! first frame that makes a queue readable wakes that queue's waker once,
//! and the descriptor stays quiet after that however many frames follow.
//! The poller arms it again when it finds the queue empty
//! ([`ReadableWakers::found_empty`]). Arming is level-triggered, so a frame
//! that arrived between the empty read and the arming fires at once: no
//! frame waits for the poller's timer. Under load the poller keeps finding
//! frames and the thread sleeps; each wake-up costs one `epoll_ctl` when
//! the queue runs dry and one thread wake when the next frame comes.
//!
//! The thread starts with the first waker and ends when the port is
//! dropped.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The epoll data of the stop eventfd; a queue's is its index.
const STOP: u64 = u64::MAX;

/// One queue: its descriptor, who to wake, and whether epoll watches it.
#[derive(Debug)]
struct Slot {
    fd: RawFd,
    waker: Mutex<Option<Waker>>,
    /// Registered and armed: the next readiness is reported. Cleared by
    /// the thread when it reports one (the one-shot disarmed it).
    armed: AtomicBool,
    /// Added to the epoll set (after which arming is a `MOD`).
    added: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    epoll: Epoll,
    stop: EventFd,
    slots: Vec<Slot>,
}

impl Shared {
    /// Arms queue `queue`'s descriptor for one report.
    fn arm(&self, queue: usize) -> io::Result<()> {
        let Some(slot) = self.slots.get(queue) else {
            return Ok(());
        };
        if slot.armed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let event = EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, queue as u64);
        let adding = !slot.added.swap(true, Ordering::SeqCst);
        let operation = if adding {
            ControlOperation::Add
        } else {
            ControlOperation::Modify
        };
        self.epoll.ctl(operation, slot.fd, event).inspect_err(|_| {
            // Not watched after all: the poller's timer still finds the
            // frames, and the next empty poll tries again.
            slot.armed.store(false, Ordering::SeqCst);
            if adding {
                slot.added.store(false, Ordering::SeqCst);
            }
        })
    }

    /// The thread: reports readiness until the stop eventfd is written.
    fn watch(&self) {
        let mut events = vec![EpollEvent::default(); self.slots.len() + 1];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // An epoll set that cannot be waited on reports nothing
                // more; the pollers' timers take over.
                Err(_) => return,
            };
            for event in &events[..ready] {
                if event.data() == STOP {
                    return;
                }
                let Some(slot) = usize::try_from(event.data())
                    .ok()
                    .and_then(|queue| self.slots.get(queue))
                else {
                    continue;
                };
                // Disarmed before the wake, so that the poller it wakes
                // arms it again once it finds the queue empty.
                slot.armed.store(false, Ordering::SeqCst);
                let waker = slot
                    .waker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        }
    }
}

/// The readiness wakers of one port's receive queues. See the [module
/// documentation](self).
#[derive(Debug)]
pub(crate) struct ReadableWakers {
    name: String,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ReadableWakers {
    /// Wakers for the queues whose descriptors are `fds`, in queue order,
    /// for the port `name` (which names the thread). The descriptors must
    /// stay open as long as this lives.
    pub(crate) fn new(name: &str, fds: impl IntoIterator<Item = RawFd>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&stop),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let slots = fds
            .into_iter()
            .map(|fd| Slot {
                fd,
                waker: Mutex::new(None),
                armed: AtomicBool::new(false),
                added: AtomicBool::new(false),
            })
            .collect();
        Ok(ReadableWakers {
            name: name.to_string(),
            shared: Arc::new(Shared { epoll, stop, slots }),
            thread: Mutex::new(None),
        })
    }

    /// Has `waker` woken when queue `queue` becomes readable (at once if
    /// it is now). False for a queue the port does not have, or when the
    /// thread cannot be started (the poller then polls on its timer).
    pub(crate) fn set(&self, queue: usize, waker: Waker) -> bool {
        let Some(slot) = self.shared.slots.get(queue) else {
            return false;
        };
        if !self.start() {
            return false;
        }
        *slot.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
        self.shared.arm(queue).is_ok()
    }

    /// The poller found queue `queue` empty: arms its descriptor again if
    /// it fired since, so that the next frame wakes the poller.
    pub(crate) fn found_empty(&self, queue: usize) {
        let Some(slot) = self.shared.slots.get(queue) else {
            return;
        };
        // Still armed (the common case of an idle poll): nothing to do.
        if slot.armed.load(Ordering::SeqCst) {
            return;
        }
        let has_waker = slot
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if has_waker {
            let _ = self.shared.arm(queue);
        }
    }

    /// Starts the thread if it is not running; false if it cannot be.
    fn start(&self) -> bool {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if thread.is_some() {
            return true;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-rx-wake", self.name))
            .spawn(move || shared.watch());
        match spawned {
            Ok(handle) => {
                *thread = Some(handle);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for ReadableWakers {
    fn drop(&mut self) {
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // A counter of 1 is enough to end the thread's wait; a write
            // fails only if the counter would overflow, when it is set.
            let _ = self.shared.stop.write(1);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::CountWakes;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn wait_for(count: &CountWakes, at_least: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while count.count() < at_least {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_readable_queue_wakes_once_until_it_is_found_empty() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        let wakers = ReadableWakers::new("t", [reader.as_raw_fd()]).unwrap();
        let (count, waker) = CountWakes::new();
        assert!(wakers.set(0, waker));
        assert!(!wakers.set(1, Waker::noop().clone()), "no such queue");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.count(), 0, "nothing to read yet");

        writer.write_all(b"a").unwrap();
        assert!(wait_for(&count, 1));
        // More data while the poller has not found the queue empty: no
        // more wakes.
        writer.write_all(b"b").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.count(), 1);

        // Found empty while data still waits (the read raced with a
        // frame): arming reports it at once.
        wakers.found_empty(0);
        assert!(wait_for(&count, 2));
        // Drained, then found empty: the next frame wakes again.
        let mut buf = [0u8; 8];
        let _ = std::io::Read::read(&mut &reader, &mut buf).unwrap();
        wakers.found_empty(0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.count(), 2);
        writer.write_all(b"c").unwrap();
        assert!(wait_for(&count, 3));
        drop(wakers);
    }

    #[test]
    fn a_queue_with_frames_waiting_wakes_as_soon_as_its_waker_is_set() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        writer.write_all(b"waiting").unwrap();
        let wakers = ReadableWakers::new("t", [reader.as_raw_fd()]).unwrap();
        let (count, waker) = CountWakes::new();
        assert!(wakers.set(0, waker));
        assert!(wait_for(&count, 1));
    }
}
