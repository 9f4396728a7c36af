//! Ports whose own threads run the switch's rounds (`Port::set_rx_runner`):
//! frames go from such a port to the next on the port's thread when the
//! worker is free, are left to the worker's thread when it is not, and an
//! embedder's workers, which run only where the embedder drives them, hand
//! out plain wakers instead.

mod switch_support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use switch_support::*;
use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_offload::{EgressCapabilities, Packet};
use vswitch_ports::{Port, PortCapabilities, PortError, SendError};

/// Waits up to 10 s for `done`; returns whether it came.
fn within_10s(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

fn one_queue() -> PortCapabilities {
    PortCapabilities {
        egress: EgressCapabilities::none(1500),
        rx_queues: 1,
        tx_queues: 1,
    }
}

/// A port with a receive queue the test fills, which takes a runner (and
/// records a waker if it is given one instead). Armed, its next receive
/// holds the worker in its round until released.
#[derive(Default)]
struct RunnerPort {
    queue: Mutex<VecDeque<Packet>>,
    runner: Mutex<Option<Waker>>,
    waker: Mutex<Option<Waker>>,
    hold: Mutex<Option<(SyncSender<()>, Receiver<()>)>>,
}

impl RunnerPort {
    fn runner(&self) -> Option<Waker> {
        self.runner.lock().unwrap().clone()
    }

    /// The runner, once the worker has given it (up to 10 s).
    fn wait_for_runner(&self) -> Waker {
        within_10s(|| self.runner().is_some());
        self.runner()
            .expect("the switch's worker gives the port a runner")
    }
}

impl Port for RunnerPort {
    fn name(&self) -> &str {
        "runner"
    }
    fn capabilities(&self) -> PortCapabilities {
        one_queue()
    }
    fn set_rx_waker(&self, _: usize, waker: Waker) -> bool {
        *self.waker.lock().unwrap() = Some(waker);
        true
    }
    fn set_rx_runner(&self, _: usize, runner: Waker) -> bool {
        *self.runner.lock().unwrap() = Some(runner);
        true
    }
    fn receive(&self, _: usize, batch: &mut Vec<Packet>, max: usize) -> Result<usize, PortError> {
        if let Some((held, release)) = self.hold.lock().unwrap().take() {
            let _ = held.send(());
            let _ = release.recv_timeout(Duration::from_secs(10));
        }
        let mut queue = self.queue.lock().unwrap();
        let take = max.min(queue.len());
        batch.extend(queue.drain(..take));
        Ok(take)
    }
    fn send(&self, _: usize, _: Packet) -> Result<(), SendError> {
        Ok(())
    }
}

/// A port that records which thread sent it each frame. It receives
/// nothing, and takes a runner it never runs, so that its worker, all of
/// whose queues have runners, leaves the rounds to them.
#[derive(Default)]
struct RecordingPort {
    sent: Mutex<Vec<(ThreadId, Packet)>>,
}

impl RecordingPort {
    /// Waits up to 10 s for `frames` frames; returns what came.
    fn wait_for(&self, frames: usize) -> Vec<(ThreadId, Packet)> {
        within_10s(|| self.sent.lock().unwrap().len() >= frames);
        self.sent.lock().unwrap().clone()
    }
}

impl Port for RecordingPort {
    fn name(&self) -> &str {
        "recording"
    }
    fn capabilities(&self) -> PortCapabilities {
        one_queue()
    }
    fn set_rx_runner(&self, _: usize, _: Waker) -> bool {
        true
    }
    fn receive(&self, _: usize, _: &mut Vec<Packet>, _: usize) -> Result<usize, PortError> {
        Ok(0)
    }
    fn send(&self, _: usize, packet: Packet) -> Result<(), SendError> {
        self.sent
            .lock()
            .unwrap()
            .push((thread::current().id(), packet));
        Ok(())
    }
}

/// A one-worker switch with a runner port and a recording port.
fn two_ports() -> (Switch, Arc<RunnerPort>, Arc<RecordingPort>) {
    let switch = Switch::start(SwitchConfig::default().workers(1)).unwrap();
    let (from, to) = (Arc::new(RunnerPort::default()), Arc::default());
    let profile = PortProfile::access(VlanId::DEFAULT);
    switch.add_port(from.clone(), profile.clone()).unwrap();
    switch
        .add_port(Arc::clone(&to) as Arc<dyn Port>, profile)
        .unwrap();
    (switch, from, to)
}

/// The sequence numbers of flow 0's frames, in the order they came.
fn seqs(sent: &[(ThreadId, Packet)]) -> Vec<u32> {
    sent.iter()
        .filter_map(|(_, packet)| flow_of(&packet.data))
        .map(|(_, seq)| seq)
        .collect()
}

#[test]
fn a_port_with_a_runner_has_its_frames_forwarded_on_its_own_thread() {
    let (switch, from, to) = two_ports();
    let runner = from.wait_for_runner();
    assert!(
        from.waker.lock().unwrap().is_none(),
        "a port that runs the rounds needs no waker"
    );
    const FRAMES: u32 = 200;
    for seq in 0..FRAMES {
        from.queue
            .lock()
            .unwrap()
            .push_back(flow_frame(mac(2, 1), mac(1, 1), 0, seq));
        runner.wake_by_ref();
    }
    let sent = to.wait_for(FRAMES as usize);
    assert_eq!(
        seqs(&sent),
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame, in order"
    );
    // The worker's own thread runs a round only on its idle timer here
    // (nothing kicks it unless a wake finds it in such a round), so
    // nearly every frame goes on this thread; a switch that ignored the
    // runner would forward none here.
    let here = thread::current().id();
    let inline = sent.iter().filter(|(thread, _)| *thread == here).count();
    assert!(
        inline > 0,
        "no frame was forwarded on the port's thread ({} frames)",
        sent.len()
    );
    drop(switch);
}

#[test]
fn a_runner_that_finds_the_worker_busy_leaves_the_frames_to_it() {
    let (switch, from, to) = two_ports();
    let runner = from.wait_for_runner();
    // The worker's thread is held in its round, in the port's receive.
    let (held, worker_held) = sync_channel(1);
    let (release, released) = sync_channel(1);
    *from.hold.lock().unwrap() = Some((held, released));
    worker_held
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker polls the port");
    from.queue
        .lock()
        .unwrap()
        .push_back(flow_frame(mac(2, 1), mac(1, 1), 0, 7));
    let done = Arc::new(AtomicBool::new(false));
    let waking = {
        let (runner, done) = (runner.clone(), done.clone());
        thread::spawn(move || {
            runner.wake();
            done.store(true, Ordering::Release);
        })
    };
    assert!(
        within_10s(|| done.load(Ordering::Acquire)),
        "a runner must not wait for a busy worker"
    );
    let waker_thread = waking.thread().id();
    waking.join().unwrap();
    assert!(to.sent.lock().unwrap().is_empty(), "nothing moved yet");
    release.send(()).unwrap();
    let sent = to.wait_for(1);
    assert_eq!(seqs(&sent), [7], "the worker's thread forwards the frame");
    assert_ne!(sent[0].0, waker_thread);
    drop(switch);
}

#[test]
fn an_embedders_workers_give_wakers_not_runners() {
    let (switch, mut workers) = Switch::start_external(SwitchConfig::default().workers(1));
    let from = Arc::new(RunnerPort::default());
    switch
        .add_port(from.clone(), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    workers[0].poll_once();
    assert!(from.waker.lock().unwrap().is_some(), "a waker");
    assert!(
        from.runner().is_none(),
        "no runner: the embedder decides where its workers run"
    );
}
