//! Moving frames between a guest's split virtqueues and its [`GuestQueue`]:
//! the device side of one queue pair, over a virtio-queue [`Queue`] and a
//! snapshot of guest memory. No sockets and no threads here, so the same
//! code runs under the vhost-user backend, in a VMM's own in-process
//! virtio-net device, under a fuzzer and in tests over a mock driver.
//!
//! Both directions follow the same rules:
//!
//! * Work is bounded per call (`budget` frames); the caller comes back for
//!   the rest after its other events ([`Drained::more`]).
//! * Used-ring entries are written for the whole batch and the guest is
//!   signalled at most once per call, when the ring's suppression (the
//!   `VRING_F_NO_INTERRUPT` flag, or the used-event index with
//!   `VIRTIO_RING_F_EVENT_IDX`) asks for it ([`Drained::signal`]).
//! * Guest kicks are suppressed while the device is busy on the ring and
//!   enabled again only when it has nothing left to do, with a last look
//!   at the ring after enabling so that a buffer posted in between is not
//!   missed.
//! * A ring the guest corrupted (an available index that runs more than a
//!   queue ahead, a descriptor head outside the table, rings outside
//!   memory, a ring that reports work but yields none) is a
//!   [`QueueBroken`]: the caller stops serving that queue, where a device
//!   would set `DEVICE_NEEDS_RESET`. Problems inside one chain are the
//!   guest port's typed errors and counters, and the chain is returned
//!   with length 0.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::guest::{needs_event, GuestQueue, GuestRxError, LentMemory, Transmitted, UsedChain};

/// Receive chains taken off the available ring at a time.
const RX_TOP_UP: usize = 64;

/// What one call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Chains returned to the guest through the used ring.
    pub chains: usize,
    /// Frames moved (transmitted, or written to the guest).
    pub frames: usize,
    /// The guest must be signalled (call eventfd).
    pub signal: bool,
    /// The budget ran out with work left: call again.
    pub more: bool,
}

/// The guest broke the ring itself; the queue is no longer served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("virtqueue {queue} is broken: {reason}")]
pub struct QueueBroken {
    /// The virtqueue's index (receive queues even, transmit queues odd).
    pub queue: u16,
    /// What was wrong.
    pub reason: String,
}

fn broken(queue: u16, err: impl std::fmt::Display) -> QueueBroken {
    QueueBroken {
        queue,
        reason: err.to_string(),
    }
}

/// Takes the guest's transmitted chains off `queue` (virtqueue index
/// `index`) into `port`, at most `budget`, while the port has room.
/// With no room the ring is left with kicks suppressed: the guest port's
/// notifier fires when the switch has taken frames again.
pub fn drain_tx<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    port: GuestQueue<'_>,
    budget: usize,
    heads: &mut Vec<u16>,
) -> Result<Drained, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    drain(index, queue, mem, None, port, budget, heads)
}

/// [`drain_tx`] with large TCP segmentation frames' payloads lent to the
/// switch ([`GuestQueue::transmit_chain_lending`]) out of `lent_mem`, the
/// same memory as `mem`, shared. Chains whose lent payloads came back
/// since the last call are returned to the guest first, in the same
/// used-ring update as the chains copied; a lent chain is returned only
/// then. The pair's notifier fires when lent chains come back, so a
/// device model that calls this on each notification returns them
/// promptly.
pub fn drain_tx_lending<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    lent_mem: &Arc<dyn LentMemory>,
    port: GuestQueue<'_>,
    budget: usize,
    heads: &mut Vec<u16>,
) -> Result<Drained, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    drain(index, queue, mem, Some(lent_mem), port, budget, heads)
}

/// Returns to the guest, through the used ring of `queue`, the transmit
/// chains of `port` whose lent payloads came back: for a ring its driver
/// disabled (the device still gives back what it took) or one about to
/// stop. Says whether the guest is to be signalled.
pub fn return_lent<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    port: GuestQueue<'_>,
    heads: &mut Vec<u16>,
) -> Result<bool, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    heads.clear();
    port.take_returned(heads);
    if heads.is_empty() {
        return Ok(false);
    }
    publish_used(
        index,
        queue,
        mem.deref(),
        heads.iter().map(|&head| (head, 0)),
    )
}

fn drain<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    lent_mem: Option<&Arc<dyn LentMemory>>,
    port: GuestQueue<'_>,
    budget: usize,
    heads: &mut Vec<u16>,
) -> Result<Drained, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let mut out = Drained::default();
    let target = mem.deref();
    if lent_mem.is_some() {
        out.signal = return_lent(index, queue, mem, port, heads)?;
        out.chains = heads.len();
    }
    queue
        .disable_notification(target)
        .map_err(|e| broken(index, e))?;
    loop {
        let room = port.tx_room();
        if room == 0 {
            // Held back until the switch takes frames: the port's notifier
            // brings the device model back.
            break;
        }
        if out.frames >= budget {
            out.more = true;
            break;
        }
        let want = room.min(budget - out.frames);
        heads.clear();
        let before = out.frames;
        {
            let chains = queue.iter(mem.clone()).map_err(|e| broken(index, e))?;
            for chain in chains.take(want) {
                let head = chain.head_index();
                out.frames += 1;
                // A refused chain is counted by the port; it goes back to
                // the guest all the same. A lent one goes back later.
                let lent = match lent_mem {
                    Some(lent_mem) => {
                        port.transmit_chain_lending(target, lent_mem, chain)
                            == Ok(Transmitted::Lent)
                    }
                    None => {
                        let _ = port.transmit_chain(target, chain);
                        false
                    }
                };
                if !lent {
                    heads.push(head);
                }
            }
        }
        let taken = out.frames - before;
        if publish_used(index, queue, target, heads.iter().map(|&head| (head, 0)))? {
            out.signal = true;
        }
        out.chains += heads.len();
        if taken == 0 {
            // Nothing was on the ring: enable kicks, then look once more
            // for a chain posted meanwhile.
            let more = queue
                .enable_notification(target)
                .map_err(|e| broken(index, e))?;
            if !more {
                break;
            }
            if !ring_yields(queue, mem) {
                return Err(broken(
                    index,
                    "the available index is ahead of the ring, but no chain can be read",
                ));
            }
            queue
                .disable_notification(target)
                .map_err(|e| broken(index, e))?;
        }
    }
    Ok(out)
}

/// Whether the available ring yields a chain now; leaves it where it was.
fn ring_yields<M>(queue: &mut Queue, mem: &M) -> bool
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let got = match queue.iter(mem.clone()) {
        Ok(mut chains) => chains.next().is_some(),
        Err(_) => false,
    };
    if got {
        queue.go_to_previous_position();
    }
    got
}

/// Writes frames waiting in `port` for the guest into the receive chains
/// on `queue` (virtqueue index `index`), at most `budget` frames. Chains
/// taken off the ring but not filled are put back (the ring's next
/// available index is moved back over them).
///
/// `chains` holds the chains taken off the ring during the call and is
/// left empty; a caller that keeps it from call to call (as the queue
/// pair keeps the used-ring entries it collects) fills without
/// allocating once both have grown.
pub fn fill_rx<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    port: GuestQueue<'_>,
    budget: usize,
    chains: &mut Vec<DescriptorChain<M>>,
) -> Result<Drained, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let target = mem.deref();
    let mut out = Drained::default();
    let mut used = port.rx_used_list();
    chains.clear();
    // `chains[..next]` are done with (filled, or returned empty);
    // `chains[next..]` are taken and not used yet, offered in order.
    let mut next = 0;
    let mut starved = false;
    let result = (|| {
        loop {
            if out.frames >= budget {
                out.more = port.rx_pending_or_rearm();
                break;
            }
            // With nothing waiting the call below finds the queue empty
            // and re-arms the port's notifier; so it is made even then.
            if next == chains.len() && port.rx_pending() {
                // Every chain taken is done with (the used list has them):
                // the next ones take their places.
                chains.clear();
                next = 0;
                if top_up(index, queue, mem, chains)? == 0 {
                    starved = true;
                    break;
                }
            }
            let before = used.len();
            match port.receive_into_chains_in_fill(target, &chains[next..], &mut used) {
                Ok(None) => break,
                Ok(Some(_)) => {
                    next += used.len() - before;
                    out.frames += 1;
                }
                Err(err) => {
                    used.truncate(before);
                    if let Some(bad) = err.bad_chain() {
                        // A position among the chains offered, always.
                        let Some(window) = chains.get_mut(next..=next + bad) else {
                            break;
                        };
                        // Returned empty; the chains after it are offered
                        // again with the same frame: it moves to the front
                        // of those not used yet, and out of them.
                        window.rotate_right(1);
                        used.push(UsedChain {
                            head_index: window[0].head_index(),
                            len: 0,
                        });
                        next += 1;
                    } else if matches!(err, GuestRxError::OutOfBuffers { .. })
                        && top_up(index, queue, mem, chains)? == 0
                    {
                        starved = true;
                        break;
                    }
                    // Any other error dropped the frame (counted by the
                    // port); go on with the next.
                }
            }
        }
        Ok::<(), QueueBroken>(())
    })();
    // Chains taken but not used go back on the ring, in order, for the
    // next frame.
    let unused = u16::try_from(chains.len() - next).unwrap_or(u16::MAX);
    chains.clear();
    let seen_to = queue.next_avail();
    queue.set_next_avail(seen_to.wrapping_sub(unused));
    // The frames written: a sender that lent their payloads gets its
    // chains back now, woken once for all of them.
    port.release_delivered();
    result?;
    out.signal = publish_used(
        index,
        queue,
        target,
        used.iter().map(|chain| (chain.head_index, chain.len)),
    )?;
    out.chains = used.len();
    drop(used);
    if starved {
        // Out of buffers: ask the guest to kick when it posts more, and
        // come back at once if it did so meanwhile (beyond the chains put
        // back, which were not enough). With EVENT_IDX the kick is asked
        // for at the available index seen, not at the one moved back over
        // the chains put back: a driver kicks only when its new entries
        // pass `avail_event`, and the entries before the index seen were
        // posted (and decided on) already, so an `avail_event` among them
        // would never bring a kick.
        queue.set_next_avail(seen_to);
        let enabled = queue.enable_notification(target);
        queue.set_next_avail(seen_to.wrapping_sub(unused));
        out.more = enabled.map_err(|e| broken(index, e))?;
    } else {
        // Buffers to spare: the guest need not kick for more.
        queue
            .disable_notification(target)
            .map_err(|e| broken(index, e))?;
    }
    Ok(out)
}

/// Takes up to [`RX_TOP_UP`] more chains off the ring into `stash`.
fn top_up<M>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    stash: &mut Vec<DescriptorChain<M>>,
) -> Result<usize, QueueBroken>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let before = stash.len();
    stash.extend(
        queue
            .iter(mem.clone())
            .map_err(|e| broken(index, e))?
            .take(RX_TOP_UP),
    );
    Ok(stash.len() - before)
}

/// Bytes before the first element of the used ring (flags, index).
const USED_HEADER: usize = 4;
/// Bytes of one used-ring element (descriptor id, length).
const USED_ELEMENT: usize = 8;
/// Bytes before the first element of the available ring (flags, index).
const AVAIL_HEADER: u64 = 4;
/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks not to be signalled.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Returns the chains of `entries` (head index, bytes written) to the
/// guest through the used ring of `queue`, and says whether the guest is
/// to be signalled for them.
///
/// The elements are written first and the used index once after them,
/// with release ordering, so the driver sees the whole batch at once (as
/// many `add_used` calls would end, without a store of the index and a
/// look-up of the ring per chain). Whether to signal follows the driver's
/// suppression for the batch as a whole: with `VIRTIO_RING_F_EVENT_IDX`,
/// whether the used-event index lies among the entries just published
/// (the kernel's `vring_need_event`); without it, unless the driver set
/// `VRING_AVAIL_F_NO_INTERRUPT`. A used ring that does not lie in one
/// region of guest memory takes `add_used` per chain and virtio-queue's
/// decision, which signals whatever the flag says.
fn publish_used<M, I>(
    index: u16,
    queue: &mut Queue,
    mem: &M,
    entries: I,
) -> Result<bool, QueueBroken>
where
    M: GuestMemory,
    I: ExactSizeIterator<Item = (u16, u32)>,
{
    if entries.len() == 0 {
        return Ok(false);
    }
    let size = queue.size();
    let ring_len = USED_HEADER + USED_ELEMENT * usize::from(size);
    let ring = mem
        .physical_memory()
        .and_then(|memory| {
            memory
                .get_slice(GuestAddress(queue.used_ring()), ring_len)
                .ok()
        })
        .filter(|slice| slice.len() == ring_len);
    let Some(ring) = ring else {
        for (head, len) in entries {
            queue
                .add_used(mem, head, len)
                .map_err(|e| broken(index, e))?;
        }
        return queue.needs_notification(mem).map_err(|e| broken(index, e));
    };
    let old = Wrapping(queue.next_used());
    let mut next = old;
    for (head, len) in entries {
        if head >= size {
            return Err(broken(
                index,
                format!("chain head {head} returned to a queue of {size} descriptors"),
            ));
        }
        let mut element = [0u8; USED_ELEMENT];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        let at = USED_HEADER + USED_ELEMENT * usize::from(next.0 % size);
        ring.write_slice(&element, at)
            .map_err(|e| broken(index, e))?;
        next += Wrapping(1);
    }
    ring.store(next.0.to_le(), 2, Ordering::Release)
        .map_err(|e| broken(index, e))?;
    queue.set_next_used(next.0);
    // The used index is stored before the driver's suppression is read.
    fence(Ordering::SeqCst);
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        let event_at = avail
            .0
            .checked_add(AVAIL_HEADER + 2 * u64::from(size))
            .ok_or_else(|| broken(index, "the used-event index is beyond the address space"))?;
        let used_event: u16 = mem
            .load(GuestAddress(event_at), Ordering::Relaxed)
            .map_err(|e| broken(index, e))?;
        return Ok(needs_event(u16::from_le(used_event), next.0, old.0));
    }
    let flags: u16 = mem
        .load(avail, Ordering::Relaxed)
        .map_err(|e| broken(index, e))?;
    Ok(u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0)
}
