//! Waking whoever polls a receive queue that is a file descriptor (a TAP
//! queue, an uplink's socket) when the kernel has frames for it
//! ([`crate::Port::set_rx_waker`]).
//!
//! One thread for the whole process waits on one epoll set holding every
//! such queue's descriptor, each registered one-shot
//! (`EPOLLIN | EPOLLONESHOT`): the first frame that makes a queue readable
//! wakes that queue's waker once, and the descriptor stays quiet after
//! that however many frames follow. The poller arms it again when it finds
//! the queue empty ([`ReadableWakers::found_empty`]). Arming is
//! level-triggered, so a frame that arrived between the empty read and
//! the arming fires at once: no frame waits for the poller's timer. Under
//! load the pollers keep finding frames and the thread sleeps; each
//! wake-up costs one `epoll_ctl` when a queue runs dry and one thread wake
//! when its next frame comes. A switch with many ports has one such
//! thread, not one per port.
//!
//! The thread starts with the first waker any port sets and lasts as long
//! as the process. Each queue is known to it by a key that is never
//! reused, so a report for a queue whose port is gone (its descriptor
//! still open elsewhere, or closed as the report was read) finds no queue
//! and wakes nobody. A descriptor leaves the set when it is closed.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::Waker;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Reports the thread takes from the epoll set at a time.
const EVENTS: usize = 64;

/// The keys of queues, for the epoll data: never reused.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// The process's one epoll set and the queues it may report, by key.
#[derive(Debug)]
struct Reactor {
    epoll: Epoll,
    slots: Mutex<HashMap<u64, Weak<Slot>>>,
}

/// The reactor, its thread started: `None` if the epoll set could not be
/// made or the thread not started, when every poller polls on its timer.
fn reactor() -> Option<&'static Arc<Reactor>> {
    static REACTOR: OnceLock<Option<Arc<Reactor>>> = OnceLock::new();
    REACTOR
        .get_or_init(|| {
            let reactor = Arc::new(Reactor {
                epoll: Epoll::new().ok()?,
                slots: Mutex::new(HashMap::new()),
            });
            let watching = reactor.clone();
            std::thread::Builder::new()
                .name("vswitch-rx-wake".to_string())
                .spawn(move || watching.watch())
                .ok()?;
            Some(reactor)
        })
        .as_ref()
}

impl Reactor {
    /// The thread: reports readiness for as long as the process lasts.
    fn watch(&self) {
        let mut events = vec![EpollEvent::default(); EVENTS];
        let mut wakers = Vec::with_capacity(EVENTS);
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // An epoll set that cannot be waited on reports nothing
                // more; the pollers' timers take over.
                Err(_) => return,
            };
            {
                let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                for event in &events[..ready] {
                    let Some(slot) = slots.get(&event.data()).and_then(Weak::upgrade) else {
                        continue;
                    };
                    // Disarmed before the wake, so that the poller it
                    // wakes arms it again once it finds the queue empty.
                    slot.armed.store(false, Ordering::SeqCst);
                    let waker = slot
                        .waker
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    wakers.extend(waker);
                }
            }
            // Woken with no lock held: a waker may run a poller's code.
            for waker in wakers.drain(..) {
                waker.wake();
            }
        }
    }

    /// Arms `slot`'s descriptor for one report.
    fn arm(&self, slot: &Slot) -> io::Result<()> {
        if slot.armed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let event = EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, slot.key);
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
}

/// One queue: its descriptor, its key, who to wake, and whether the epoll
/// set watches it.
#[derive(Debug)]
struct Slot {
    fd: RawFd,
    key: u64,
    waker: Mutex<Option<Waker>>,
    /// Registered and armed: the next readiness is reported. Cleared by
    /// the thread when it reports one (the one-shot disarmed it).
    armed: AtomicBool,
    /// Added to the epoll set (after which arming is a `MOD`).
    added: AtomicBool,
}

/// The readiness wakers of one port's receive queues. See the [module
/// documentation](self).
#[derive(Debug)]
pub(crate) struct ReadableWakers {
    slots: Vec<Arc<Slot>>,
    /// The slots are in the reactor's table.
    listed: AtomicBool,
}

impl ReadableWakers {
    /// Wakers for the queues whose descriptors are `fds`, in queue order.
    /// The descriptors must stay open as long as this lives.
    pub(crate) fn new(fds: impl IntoIterator<Item = RawFd>) -> Self {
        let slots = fds
            .into_iter()
            .map(|fd| {
                Arc::new(Slot {
                    fd,
                    key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
                    waker: Mutex::new(None),
                    armed: AtomicBool::new(false),
                    added: AtomicBool::new(false),
                })
            })
            .collect();
        ReadableWakers {
            slots,
            listed: AtomicBool::new(false),
        }
    }

    /// Has `waker` woken when queue `queue` becomes readable (at once if
    /// it is now). False for a queue the port does not have, or when the
    /// process's wake-up thread cannot be started (the poller then polls
    /// on its timer).
    pub(crate) fn set(&self, queue: usize, waker: Waker) -> bool {
        let Some(slot) = self.slots.get(queue) else {
            return false;
        };
        let Some(reactor) = reactor() else {
            return false;
        };
        if !self.listed.swap(true, Ordering::SeqCst) {
            let mut slots = reactor.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in &self.slots {
                slots.insert(slot.key, Arc::downgrade(slot));
            }
        }
        *slot.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
        reactor.arm(slot).is_ok()
    }

    /// The poller found queue `queue` empty: arms its descriptor again if
    /// it fired since, so that the next frame wakes the poller.
    pub(crate) fn found_empty(&self, queue: usize) {
        let Some(slot) = self.slots.get(queue) else {
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
        if let (true, Some(reactor)) = (has_waker, reactor()) {
            let _ = reactor.arm(slot);
        }
    }
}

impl Drop for ReadableWakers {
    fn drop(&mut self) {
        if !*self.listed.get_mut() {
            return;
        }
        // The descriptors may be closed (and their numbers taken) by now:
        // they are not touched, only forgotten. A closed one has left the
        // epoll set; a report still on its way finds no queue.
        if let Some(reactor) = reactor() {
            let mut slots = reactor.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in &self.slots {
                slots.remove(&slot.key);
            }
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
        let wakers = ReadableWakers::new([reader.as_raw_fd()]);
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

    /// The threads of this process named `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .count()
    }

    #[test]
    fn many_ports_share_one_wake_up_thread_and_a_gone_port_is_ignored() {
        let pairs: Vec<_> = (0..8)
            .map(|_| {
                let (writer, reader) = UnixStream::pair().unwrap();
                reader.set_nonblocking(true).unwrap();
                (writer, reader)
            })
            .collect();
        // One port of two queues, and six ports of one.
        let mut ports = vec![ReadableWakers::new(
            pairs[..2].iter().map(|(_, reader)| reader.as_raw_fd()),
        )];
        ports.extend(
            pairs[2..]
                .iter()
                .map(|(_, reader)| ReadableWakers::new([reader.as_raw_fd()])),
        );
        let counts: Vec<_> = (0..8)
            .map(|queue| {
                let (count, waker) = CountWakes::new();
                let (port, queue) = if queue < 2 {
                    (0, queue)
                } else {
                    (queue - 1, 0)
                };
                assert!(ports[port].set(queue, waker));
                count
            })
            .collect();
        assert_eq!(threads_named("vswitch-rx-wake"), 1);
        // The last port goes while its socket stays open and readable:
        // its report, if one comes, wakes nobody and stops nobody.
        drop(ports.pop());
        (&pairs[7].0).write_all(b"x").unwrap();
        for (queue, (writer, _)) in pairs[..7].iter().enumerate() {
            let mut writer = writer;
            writer.write_all(b"a").unwrap();
            assert!(wait_for(&counts[queue], 1), "queue {queue} was not woken");
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(counts[7].count(), 0, "a gone port's waker was woken");
        assert!(counts[..7].iter().all(|count| count.count() == 1));
        assert_eq!(threads_named("vswitch-rx-wake"), 1);
    }

    #[test]
    fn a_queue_with_frames_waiting_wakes_as_soon_as_its_waker_is_set() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        writer.write_all(b"waiting").unwrap();
        let wakers = ReadableWakers::new([reader.as_raw_fd()]);
        let (count, waker) = CountWakes::new();
        assert!(wakers.set(0, waker));
        assert!(wait_for(&count, 1));
    }
}
