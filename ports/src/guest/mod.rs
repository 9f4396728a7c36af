//! The guest port: what a virtio-net device model in a VMM calls to connect
//! a guest to the switch.
//!
//! The VMM owns the virtqueues and guest memory; this port owns only the
//! frames in between. Guest memory is passed to each call (any
//! [`vm_memory::GuestMemory`]; with a `GuestAddressSpace` such as
//! `GuestMemoryAtomic`, the snapshot `memory()` returns) and never stored, so
//! a VMM may remap or hot-plug memory between calls.
//!
//! # Guest memory is not a `&[u8]`
//!
//! The guest can write its memory at any moment, from another CPU, while
//! the device reads or writes it. A Rust `&[u8]` or `&mut [u8]` into that
//! memory promises the compiler that nobody else changes it for the
//! reference's lifetime; the guest breaks that promise whenever it likes, and
//! the result is undefined behaviour, not merely a torn read. So this port
//! never forms such a reference. It takes virtio-queue [`DescriptorChain`]s
//! and moves bytes only with vm-memory's volatile copies (the
//! [`VolatileSlice`](vm_memory::VolatileSlice) accessors behind
//! [`vm_memory::Bytes`]), between guest memory and host buffers it owns:
//!
//! * Each descriptor is read once out of the descriptor table into a host
//!   value and checked there: device-readable on transmit, device-writable
//!   on receive, its range inside guest memory and not wrapping around the
//!   address space. A bad descriptor is a [`GuestTxError`] or
//!   [`GuestRxError`] naming it, and a counter; never a panic.
//! * Each guest byte is copied once. Whatever the guest writes afterwards
//!   changes nothing the port already checked.
//!
//! virtio-queue's own `Reader` is not used on transmit because it skips
//! device-writable descriptors silently; here a transmit chain with one is
//! an error.
//!
//! # The calls
//!
//! * Transmit (guest to switch): [`GuestPort::transmit_chain`] takes one
//!   descriptor chain, `virtio_net_hdr` followed by the frame, split across
//!   descriptors in any way. Header and frame are copied once into one host
//!   buffer; the header is parsed from that copy, checked against the
//!   negotiated [`HostOffloads`] and then against the frame, and the frame
//!   is sliced out of the same buffer. Nothing reads the guest's header
//!   bytes a second time, so a guest rewriting them concurrently cannot pass
//!   a check with one value and be used with another.
//!   [`GuestPort::transmit_bytes`] takes a chain already in host memory.
//! * Receive (switch to guest): [`GuestPort::receive_into_chains`] writes
//!   the next frame with the header the negotiated features call for into
//!   the receive chains the device model popped: one chain per frame, or
//!   with `VIRTIO_NET_F_MRG_RXBUF` as many as needed, counted in
//!   `num_buffers` in the first chain's header. It reports each chain's head
//!   index and used length ([`UsedChain`]) for the used ring.
//!   [`GuestPort::receive_into_vec`] writes into a host buffer instead.
//! * Notification: when the switch queues frames for the guest, the port
//!   calls its [`Notifier`] (an eventfd write in a real VMM, a
//!   [`CondvarNotifier`] in portable code) once until the device model has
//!   drained the queue again; a burst the switch hands over with
//!   [`Port::send_batch`] is queued whole before that one call. It also calls it when the switch takes frames
//!   from a transmit queue the device model found full
//!   ([`GuestPort::tx_room`] returned 0, or a transmit failed with
//!   [`GuestTxError::QueueFull`]), so the device loop resumes the guest's
//!   transmit virtqueue.
//! * Several queue pairs (`VIRTIO_NET_F_MQ`): the port has one switch
//!   receive and transmit queue per pair, so the switch spreads the guest's
//!   flows over its workers; [`GuestPort::queue`] gives the calls above for
//!   one pair, each pair with its own notifier
//!   ([`GuestPort::with_queue_notifiers`]), and
//!   [`GuestPort::set_active_queue_pairs`] handles the control queue's
//!   `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
//!
//! # Receive offloads that change at run time
//!
//! The switch adapts each frame to the [`PortCapabilities`] a port declares,
//! and those are constant for the life of the port. A guest port declares
//! the receive offloads in force when it is built: right after negotiation,
//! all those acknowledged, the most the guest can ever turn on. When the
//! guest later turns some of them off with the control queue's
//! `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET` ([`GuestPort::set_guest_offloads`]),
//! frames the switch adapted to the
//! declared capabilities may still carry a partial checksum or GSO the guest
//! no longer accepts. So the port re-checks every frame's header against the
//! offloads in force when it is written to the guest's buffers
//! ([`GuestOffloads::accepts`], a look at the header's fields only), and
//! when they no longer allow it validates the frame again and completes the
//! checksum or segments it itself (with [`vswitch_offload::adapt::adapt`]).
//! Turning offloads back on needs nothing: a frame with less offload work
//! left than the guest accepts is always acceptable.
//!
//! A frame the guest accepts as it is goes out without a second parse: the
//! switch validated its header against the frame at ingress and adapted it
//! to the port's capabilities. So a caller of [`Port::send`] other than the
//! switch hands frames with offload work only in that state, checked (as
//! [`vswitch_offload::CheckedFrame`] checks them) and within the port's
//! [`PortCapabilities`]; a frame without offload work is always fine.
//!
//! # Example
//!
//! A device loop in miniature. The chains come from virtio-queue's
//! `MockSplitQueue`, which lays out a descriptor table and rings in guest
//! memory the way a guest driver does; a VMM pops them from its `Queue`
//! (`QueueT::pop_descriptor_chain`) instead.
//!
//! ```
//! use std::sync::Arc;
//! use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
//! use virtio_queue::desc::{split::Descriptor, RawDescriptor};
//! use virtio_queue::mock::MockSplitQueue;
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! use vswitch_ports::features::{Features, Negotiated};
//! use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
//! use vswitch_ports::offload::Packet;
//! use vswitch_ports::Port;
//!
//! let offered = Features::VERSION_1 | Features::MRG_RXBUF;
//! let negotiated = Negotiated::new(offered, offered).unwrap();
//! let notifier = Arc::new(CondvarNotifier::new());
//! let port = GuestPort::new(GuestPortConfig::new("vm0"), negotiated, notifier.clone());
//!
//! // 1 MiB of guest memory; the virtqueue's rings at 0.
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let vq = MockSplitQueue::new(&mem, 16);
//!
//! // The guest transmits a 12-byte header and a 60-byte frame, in two
//! // descriptors.
//! mem.write_slice(&[0u8; 12], GuestAddress(0x1_0000)).unwrap();
//! mem.write_slice(&[0xab; 60], GuestAddress(0x2_0000)).unwrap();
//! let chain = vq
//!     .build_desc_chain(&[
//!         RawDescriptor::from(Descriptor::new(0x1_0000, 12, 0, 0)),
//!         RawDescriptor::from(Descriptor::new(0x2_0000, 60, 0, 0)),
//!     ])
//!     .unwrap();
//! port.transmit_chain(&mem, chain).unwrap();
//! let mut batch = Vec::new();
//! assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1); // the switch side
//! assert_eq!(&batch[0].data[..], &[0xab; 60][..]);
//!
//! // The switch sends a frame to the guest: the notifier fires, and the
//! // device model fills a 2048-byte receive buffer.
//! port.send(0, Packet::plain(vec![0xcd; 60])).unwrap();
//! assert!(notifier.wait_timeout(std::time::Duration::ZERO));
//! let write = VRING_DESC_F_WRITE as u16;
//! let chain = vq
//!     .build_desc_chain(&[RawDescriptor::from(Descriptor::new(0x3_0000, 2048, write, 0))])
//!     .unwrap();
//! let head = chain.head_index();
//! let mut used = Vec::new();
//! let delivered = port.receive_into_chains(&mem, &[chain], &mut used).unwrap().unwrap();
//! assert_eq!((delivered.buffers, delivered.bytes), (1, 72));
//! assert_eq!((used[0].head_index, used[0].len), (head, 72)); // for the used ring
//! let mut header = [0u8; 12];
//! mem.read_slice(&mut header, GuestAddress(0x3_0000)).unwrap();
//! assert_eq!(u16::from_le_bytes([header[10], header[11]]), 1); // num_buffers
//! ```

mod chain;
mod error;
mod frames;
mod lend;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
mod notify;
mod rx;
mod stats;
mod tx;

#[cfg(test)]
mod tests;

pub use error::{GuestRxError, GuestTxError};
pub use lend::{GuestLoan, LentMemory, MAX_LENT};
pub use notify::{CondvarNotifier, Notifier};
pub use rx::{Delivered, UsedChain};
pub use stats::GuestPortStats;
pub use tx::Transmitted;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use bytes::Bytes;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vswitch_offload::virtio::{HdrFormat, HDR_LEN_V1, MAX_L3_LEN};
use vswitch_offload::Packet;

use crate::features::{FeatureError, Features, GuestOffloads, HostOffloads, Negotiated};
use crate::port::{BatchSendError, Port, PortCapabilities, PortError, SendError};

use frames::FrameQueue;
use lend::Lender;
use rx::RxState;
use stats::Counters;
use tx::TxState;

/// Whether a ring index moving from `old` to `new` passes `event`, the
/// index after which the other side asked to be told (`used_event` for
/// the device's signal, `avail_event` for the driver's kick): whether
/// `event` lies in `[old, new)`, in the ring's wrapping index space (the
/// kernel's `vring_need_event`).
pub(crate) fn needs_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Longest frame a guest may transmit: the largest IP packet of a GSO frame
/// plus an Ethernet header with two VLAN tags.
pub const MAX_GUEST_FRAME: usize = MAX_L3_LEN + 14 + 8;

/// Shortest frame a guest may transmit: an Ethernet header.
pub const MIN_GUEST_FRAME: usize = 14;

/// How to build a guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPortConfig {
    /// The port's name.
    pub name: String,
    /// The guest's MTU (what the device reports with `VIRTIO_NET_F_MTU`).
    pub mtu: u16,
    /// Frames the guest transmitted that wait for the switch, at least 1.
    pub tx_queue_len: usize,
    /// Frames the switch sent that wait for the guest's buffers, at least 1.
    /// The device model takes them out of this queue up to 64 at a time,
    /// so up to 64 more may be on their way into the guest's buffers.
    pub rx_queue_len: usize,
    /// Queue pairs, used when the guest negotiated `VIRTIO_NET_F_MQ`; at
    /// least 1.
    pub queue_pairs: usize,
}

impl GuestPortConfig {
    /// MTU 1500, 1024 frames each way, one queue pair.
    pub fn new(name: impl Into<String>) -> Self {
        GuestPortConfig {
            name: name.into(),
            mtu: 1500,
            tx_queue_len: 1024,
            rx_queue_len: 1024,
            queue_pairs: 1,
        }
    }

    /// Sets the number of queue pairs.
    pub fn queue_pairs(mut self, pairs: usize) -> Self {
        self.queue_pairs = pairs;
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Sets both queue lengths.
    pub fn queue_len(mut self, frames: usize) -> Self {
        self.tx_queue_len = frames;
        self.rx_queue_len = frames;
        self
    }
}

/// One transmit and one receive virtqueue of the guest, with the frames in
/// between.
struct QueuePair {
    /// Frames the guest transmitted, for the switch. Found full, it holds
    /// the guest back: the device model stops taking transmit chains until
    /// the switch takes frames, which fires the notifier.
    from_guest: FrameQueue,
    /// Frames the switch sent, for the guest's receive buffers.
    to_guest: FrameQueue,
    rx: Mutex<RxState>,
    /// The used-ring entries a device model's receive fill collects before
    /// it writes them, kept so that a fill allocates nothing.
    rx_used: Mutex<Vec<UsedChain>>,
    notifier: Arc<dyn Notifier>,
    /// The notifier fired and the device model has not drained the receive
    /// queue since.
    notified: AtomicBool,
    /// Transmit-side scratch and the chunks large transmitted frames are
    /// copied into, reused once the switch is done with them.
    tx: Mutex<TxState>,
    /// The transmit chains whose payloads are lent to the switch.
    lender: Arc<Lender>,
}

impl QueuePair {
    fn new(tx_capacity: usize, rx_capacity: usize, notifiers: PairNotifiers) -> Self {
        QueuePair {
            from_guest: FrameQueue::new(tx_capacity),
            to_guest: FrameQueue::new(rx_capacity),
            rx: Mutex::new(RxState::default()),
            rx_used: Mutex::new(Vec::new()),
            lender: Arc::new(Lender::new(notifiers.returns)),
            notifier: notifiers.frames,
            notified: AtomicBool::new(false),
            tx: Mutex::new(TxState::default()),
        }
    }
}

/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` asked for a number of queue pairs the
/// port does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("queue pairs: expected 1 to {max}, found {asked}")]
pub struct QueuePairsError {
    /// Queue pairs the port has.
    pub max: usize,
    /// The number asked for.
    pub asked: usize,
}

/// A switch port whose far side is a virtio-net guest. See the module
/// documentation.
pub struct GuestPort {
    name: String,
    caps: PortCapabilities,
    mtu: u16,
    format: HdrFormat,
    mergeable: bool,
    host: HostOffloads,
    negotiated: Mutex<Negotiated>,
    tx_capacity: usize,
    rx_capacity: usize,
    first_pair: QueuePair,
    more_pairs: Vec<QueuePair>,
    active_pairs: AtomicUsize,
    counters: Counters,
}

impl std::fmt::Debug for GuestPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestPort")
            .field("name", &self.name)
            .field("caps", &self.caps)
            .field("format", &self.format)
            .field("mergeable", &self.mergeable)
            .finish_non_exhaustive()
    }
}

/// One queue pair of a [`GuestPort`], for a device model with several
/// (`VIRTIO_NET_F_MQ`): the same calls as on the port, on this pair's
/// virtqueues. [`GuestPort`]'s own calls use pair 0.
#[derive(Debug, Clone, Copy)]
pub struct GuestQueue<'a> {
    port: &'a GuestPort,
    pair: &'a QueuePair,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("from_guest", &self.from_guest.len())
            .field("to_guest", &self.to_guest.len())
            .finish_non_exhaustive()
    }
}

impl GuestPort {
    /// A port for a guest that negotiated `negotiated`. Its egress
    /// capabilities are the guest's receive offloads as negotiated, with
    /// the configured MTU; `notifier` is called when frames for the guest
    /// arrive (on any queue pair).
    pub fn new(
        config: GuestPortConfig,
        negotiated: Negotiated,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self::with_queue_notifiers(config, negotiated, |_| notifier.clone())
    }

    /// Like [`new`](Self::new) with one notifier per queue pair (an
    /// eventfd per receive virtqueue): `notifier_for(i)` gives pair `i`'s.
    /// The port has [`GuestPortConfig::queue_pairs`] pairs if the guest
    /// negotiated `VIRTIO_NET_F_MQ`, else one.
    pub fn with_queue_notifiers(
        config: GuestPortConfig,
        negotiated: Negotiated,
        mut notifier_for: impl FnMut(usize) -> Arc<dyn Notifier>,
    ) -> Self {
        Self::with_pair_notifiers(config, negotiated, |pair| {
            let notifier = notifier_for(pair);
            PairNotifiers {
                frames: notifier.clone(),
                returns: notifier,
            }
        })
    }

    /// Like [`with_queue_notifiers`](Self::with_queue_notifiers) with a
    /// second notifier per pair for the transmit chains whose lent payloads
    /// came back, for a device model that can publish them from the thread
    /// that gives them back.
    pub(crate) fn with_pair_notifiers(
        config: GuestPortConfig,
        negotiated: Negotiated,
        mut notifiers_for: impl FnMut(usize) -> PairNotifiers,
    ) -> Self {
        let tx_capacity = config.tx_queue_len.max(1);
        let rx_capacity = config.rx_queue_len.max(1);
        let pairs = if negotiated.features().contains(Features::MQ) {
            config.queue_pairs.max(1)
        } else {
            1
        };
        let format = if negotiated.header_len() == HDR_LEN_V1 {
            HdrFormat::V1
        } else {
            HdrFormat::Legacy
        };
        let first_pair = QueuePair::new(tx_capacity, rx_capacity, notifiers_for(0));
        let more_pairs = (1..pairs)
            .map(|i| QueuePair::new(tx_capacity, rx_capacity, notifiers_for(i)))
            .collect();
        GuestPort {
            name: config.name,
            caps: PortCapabilities {
                egress: negotiated.guest_offloads().egress_capabilities(config.mtu),
                rx_queues: pairs,
                tx_queues: pairs,
            },
            mtu: config.mtu,
            format,
            mergeable: negotiated.mergeable_rx_buffers(),
            host: negotiated.host_offloads(),
            negotiated: Mutex::new(negotiated),
            tx_capacity,
            rx_capacity,
            first_pair,
            more_pairs,
            active_pairs: AtomicUsize::new(pairs),
            counters: Counters::default(),
        }
    }

    fn pair(&self, index: usize) -> Option<&QueuePair> {
        match index.checked_sub(1) {
            None => Some(&self.first_pair),
            Some(more) => self.more_pairs.get(more),
        }
    }

    fn pairs(&self) -> usize {
        1 + self.more_pairs.len()
    }

    /// Queue pair `index`, if the port has it.
    pub fn queue(&self, index: usize) -> Option<GuestQueue<'_>> {
        self.pair(index).map(|pair| GuestQueue { port: self, pair })
    }

    fn first_queue(&self) -> GuestQueue<'_> {
        GuestQueue {
            port: self,
            pair: &self.first_pair,
        }
    }

    /// Handles the control queue's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: the
    /// switch's frames go to the first `pairs` queue pairs from now on.
    /// Frames already waiting on a pair that is no longer used stay there
    /// for the device model to deliver or discard.
    pub fn set_active_queue_pairs(&self, pairs: usize) -> Result<(), QueuePairsError> {
        if pairs == 0 || pairs > self.pairs() {
            return Err(QueuePairsError {
                max: self.pairs(),
                asked: pairs,
            });
        }
        self.active_pairs.store(pairs, Ordering::Relaxed);
        Ok(())
    }

    /// The virtio-net header layout on every buffer of this guest.
    pub fn header_format(&self) -> HdrFormat {
        self.format
    }

    /// The guest's receive offloads in force now.
    pub fn guest_offloads(&self) -> GuestOffloads {
        self.negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .guest_offloads()
    }

    /// Handles the control queue's `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`
    /// with the 64-bit offload mask the guest sent. Frames written to the
    /// guest from now on respect the new offloads (see the module
    /// documentation).
    pub fn set_guest_offloads(&self, bits: u64) -> Result<GuestOffloads, FeatureError> {
        self.negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_guest_offloads(bits)
    }

    /// The counters so far (all queue pairs).
    pub fn stats(&self) -> GuestPortStats {
        self.counters.snapshot()
    }

    /// Drops every frame queued between the switch and a guest that went
    /// away, in both directions, and counts them: those for the guest in
    /// `rx_dropped`, those it transmitted in `tx_dropped`. Payloads the
    /// guest lent to frames still in the switch are copied into host memory
    /// first ([`GuestQueue::revoke_lent`]), and nothing more is lent. Returns (frames
    /// for the guest, frames from it). A device model calls it when its
    /// guest disconnects, so that every frame the switch handed the port
    /// is accounted for.
    pub fn discard_queued(&self) -> (u64, u64) {
        let (mut to_guest, mut from_guest) = (0, 0);
        for pair in std::iter::once(&self.first_pair).chain(&self.more_pairs) {
            // The guest's buffers are no longer the device's to read: the
            // payloads still lent are copied, and their frames go on.
            stats::bump(&self.counters.tx_lent_revoked, pair.lender.revoke(true));
            to_guest += pair.to_guest.clear() + pair.discard_taken_for_guest();
            from_guest += pair.from_guest.clear();
        }
        stats::bump(&self.counters.rx_dropped, to_guest);
        stats::bump(&self.counters.tx_dropped, from_guest);
        (to_guest as u64, from_guest as u64)
    }

    /// [`GuestQueue::tx_room`] of queue pair 0.
    pub fn tx_room(&self) -> usize {
        self.first_queue().tx_room()
    }

    /// [`GuestQueue::rx_pending`] of queue pair 0.
    pub fn rx_pending(&self) -> bool {
        self.first_queue().rx_pending()
    }

    /// [`GuestQueue::transmit_bytes`] on queue pair 0.
    pub fn transmit_bytes(&self, chain: Bytes) -> Result<(), GuestTxError> {
        self.first_queue().transmit_bytes(chain)
    }

    /// [`GuestQueue::transmit_chain`] on queue pair 0.
    pub fn transmit_chain<M, T>(
        &self,
        mem: &M,
        chain: DescriptorChain<T>,
    ) -> Result<(), GuestTxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        self.first_queue().transmit_chain(mem, chain)
    }

    /// [`GuestQueue::receive_into_chains`] on queue pair 0.
    pub fn receive_into_chains<M, T>(
        &self,
        mem: &M,
        chains: &[DescriptorChain<T>],
        used: &mut Vec<UsedChain>,
    ) -> Result<Option<Delivered>, GuestRxError>
    where
        M: GuestMemory + ?Sized,
        T: Deref + Clone,
        T::Target: GuestMemory,
    {
        self.first_queue().receive_into_chains(mem, chains, used)
    }

    /// The MTU the port segments and checks frames for the guest to.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// [`GuestQueue::receive_into_vec`] on queue pair 0.
    pub fn receive_into_vec(&self, out: &mut Vec<u8>) -> Result<Option<usize>, GuestRxError> {
        self.first_queue().receive_into_vec(out)
    }
}

impl GuestQueue<'_> {
    /// How many more transmitted frames this pair can queue for the switch
    /// now. A device model stops popping the transmit virtqueue at 0 and
    /// waits for the notifier, which fires once the switch has taken
    /// frames again: the guest is held back instead of losing frames.
    pub fn tx_room(&self) -> usize {
        self.pair.from_guest.room_or_block()
    }
}

impl Port for GuestPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    /// Yes: a payload lent by another guest is copied from that guest's
    /// memory straight into this one's buffers; one lent by anything else
    /// is taken whole on the way.
    fn takes_lent_frames(&self) -> bool {
        true
    }

    /// Yes, for each of its queue pairs: the transmitted frames the device
    /// model queues for the switch wake `waker` when they find the pair's
    /// queue empty.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        match self.pair(queue) {
            Some(pair) => {
                pair.from_guest.set_waker(Some(waker));
                true
            }
            None => false,
        }
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let pair = self.pair(queue).ok_or(PortError::NoSuchQueue {
            direction: "rx",
            queue,
            queues: self.pairs(),
        })?;
        let (moved, unblocked) = pair.from_guest.take(batch, max);
        if unblocked {
            pair.notifier.notify();
        }
        Ok(moved)
    }

    /// Queues a frame on receive queue `queue` of the guest, folded onto
    /// the queue pairs the guest uses now
    /// ([`GuestPort::set_active_queue_pairs`]).
    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let Some(pair) = self.pair_for_send(queue) else {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.pairs(),
                packet,
            });
        };
        match pair.to_guest.push(packet) {
            Ok(()) => {
                pair.wake_guest();
                Ok(())
            }
            Err(packet) => Err(SendError::Full {
                queue,
                capacity: self.rx_capacity,
                packet,
            }),
        }
    }

    /// Queues the frames of `batch` on receive queue `queue` of the guest
    /// (folded onto the active queue pairs as [`send`](Port::send) does),
    /// all on one pair, and then notifies the guest at most once for the
    /// whole batch, and not at all if it was notified before and has not
    /// drained the queue since. A full queue takes what fits: the rest stay
    /// in `batch`, in order, with [`BatchSendError::Full`].
    fn send_batch(&self, queue: usize, batch: &mut Vec<Packet>) -> Result<(), BatchSendError> {
        let queued = self.queue_batch_quietly(queue, batch)?;
        // After the whole burst is queued, so the device model wakes to all
        // of it. A drain that re-armed before the frames went in is seen by
        // the swap; one that re-armed after looks at the queue again and
        // finds them.
        if queued.sent > 0 {
            self.wake_device(queued.pair);
        }
        queued.result
    }
}

/// The notifiers of one queue pair ([`GuestPort::with_pair_notifiers`]).
pub(crate) struct PairNotifiers {
    /// Fired when frames for the guest arrive, and when the switch takes
    /// transmitted frames from a full queue.
    pub(crate) frames: Arc<dyn Notifier>,
    /// Fired when transmit chains whose lent payloads came back wait to be
    /// published to the used ring.
    pub(crate) returns: Arc<dyn Notifier>,
}

/// What [`GuestPort::queue_batch_quietly`] did with a batch.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The queue pair the frames went to.
    pub(crate) pair: usize,
    /// Frames queued.
    pub(crate) sent: usize,
    /// What [`Port::send_batch`] returns for the batch.
    pub(crate) result: Result<(), BatchSendError>,
}

impl GuestPort {
    /// [`Port::send_batch`] without the notifier: the frames are queued
    /// on the pair they fold onto, and the caller either writes them into
    /// the guest's buffers itself right away or calls
    /// [`wake_device`](Self::wake_device) for the pair.
    pub(crate) fn queue_batch_quietly(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
    ) -> Result<Queued, BatchSendError> {
        let Some(pair) = self.pair_index_for_send(queue) else {
            return Err(BatchSendError::NoSuchQueue {
                queue,
                queues: self.pairs(),
            });
        };
        let sent = self
            .pair(pair)
            .map_or(0, |queues| queues.to_guest.push_from(batch));
        let result = if batch.is_empty() {
            Ok(())
        } else {
            Err(BatchSendError::Full {
                queue,
                capacity: self.rx_capacity,
            })
        };
        Ok(Queued { pair, sent, result })
    }

    /// Fires pair `pair`'s notifier for frames queued for the guest, unless
    /// it fired already and the device model has not drained the receive
    /// queue since.
    pub(crate) fn wake_device(&self, pair: usize) {
        if let Some(pair) = self.pair(pair) {
            pair.wake_guest();
        }
    }
}

impl GuestPort {
    /// The queue pair frames sent on switch queue `queue` go to: `queue`
    /// folded onto the active pairs, or `None` if the port has no such
    /// queue.
    fn pair_for_send(&self, queue: usize) -> Option<&QueuePair> {
        self.pair_index_for_send(queue)
            .and_then(|index| self.pair(index))
    }

    /// The index of [`pair_for_send`](Self::pair_for_send)'s pair.
    fn pair_index_for_send(&self, queue: usize) -> Option<usize> {
        if queue >= self.pairs() {
            return None;
        }
        let active = self.active_pairs.load(Ordering::Relaxed).max(1);
        Some(queue % active)
    }
}

impl QueuePair {
    /// Calls the notifier for frames just queued for the guest, unless it
    /// fired already and the device model has not drained the receive
    /// queue since (it re-arms when it finds the queue empty).
    fn wake_guest(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            self.notifier.notify();
        }
    }

    /// Re-arms the notifier, for a device model that found the receive
    /// queue empty. Look at the queue once more after it: a frame queued
    /// after this store notifies, one queued before it is seen then.
    fn rearm(&self) {
        self.notified.store(false, Ordering::SeqCst);
    }
}
