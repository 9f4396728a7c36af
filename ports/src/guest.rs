//! The guest port: what a virtio-net device model in a VMM calls to connect
//! a guest to the switch.
//!
//! The VMM owns the virtqueues and guest memory; this port owns only the
//! frames in between. Guest memory is passed to each call as slices (the
//! device model resolves descriptors to host slices first, rust-vmm style)
//! and never stored.
//!
//! * Transmit (guest to switch): [`GuestPort::transmit`] takes one
//!   descriptor chain as iovecs, `virtio_net_hdr` followed by the frame. The
//!   header is copied once out of guest memory into a local value, checked
//!   against the negotiated [`HostOffloads`] and then, with the frame copied
//!   into host memory, against the frame. Nothing reads the guest's header
//!   bytes a second time, so a guest rewriting them concurrently cannot pass
//!   a check with one value and be used with another.
//! * Receive (switch to guest): [`GuestPort::receive_into`] writes the next
//!   frame with the header the negotiated features call for into the guest's
//!   receive buffers: one buffer per frame, or with `VIRTIO_NET_F_MRG_RXBUF`
//!   as many as needed, counted in `num_buffers`. A buffer is one slice, or
//!   with [`GuestPort::receive_into_chains`] a descriptor chain of several.
//! * Notification: when the switch queues frames for the guest, the port
//!   calls its [`Notifier`] (an eventfd write in a real VMM, a
//!   [`CondvarNotifier`] in portable code) once until the device model has
//!   drained the queue again. It also calls it when the switch takes frames
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
//! all those acknowledged, the most the guest can ever turn on. When the guest later turns some of them off with the
//! control queue's `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`
//! ([`GuestPort::set_guest_offloads`]), frames the switch adapted to the
//! declared capabilities may still carry a partial checksum or GSO the guest
//! no longer accepts. So the port re-checks every frame against the offloads
//! in force when it is written to the guest's buffers, and completes the
//! checksum or segments the frame itself (with
//! [`vswitch_offload::adapt::adapt`]) when they no longer allow it. Turning
//! offloads back on needs nothing: a frame with less offload work left than
//! the guest accepts is always acceptable.
//!
//! ```
//! use std::sync::Arc;
//! use vswitch_ports::features::{Features, Negotiated};
//! use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
//! use vswitch_ports::offload::Packet;
//! use vswitch_ports::Port;
//!
//! let offered = Features::VERSION_1.or(Features::MRG_RXBUF);
//! let negotiated = Negotiated::new(offered, offered).unwrap();
//! let notifier = Arc::new(CondvarNotifier::new());
//! let port = GuestPort::new(GuestPortConfig::new("vm0"), negotiated, notifier.clone());
//!
//! // The guest transmits: a 12-byte header and a 60-byte frame, in two iovecs.
//! let header = [0u8; 12];
//! let frame = [0xabu8; 60];
//! port.transmit(&[&header, &frame]).unwrap();
//! let mut batch = Vec::new();
//! assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1); // the switch side
//!
//! // The switch sends a frame to the guest: the notifier fires.
//! port.send(0, Packet::plain(vec![0xcd; 60])).unwrap();
//! assert!(notifier.wait_timeout(std::time::Duration::ZERO));
//! let mut buffer = vec![0u8; 2048];
//! let delivered = port.receive_into(&mut [&mut buffer[..]]).unwrap().unwrap();
//! assert_eq!((delivered.buffers, delivered.bytes), (1, 72));
//! assert_eq!(u16::from_le_bytes([buffer[10], buffer[11]]), 1); // num_buffers
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use vswitch_offload::adapt::{adapt, AdaptError, Adapted};
use vswitch_offload::segment::{SegmentList, Segmenter};
use vswitch_offload::virtio::{HdrError, HdrFormat, HDR_LEN_V1, MAX_L3_LEN};
use vswitch_offload::{EgressCapabilities, Packet, VirtioNetHdr};

use crate::features::{FeatureError, Features, GuestOffloads, HostOffloads, Negotiated};
use crate::port::{Port, PortCapabilities, PortError, SendError};

/// Longest frame a guest may transmit: the largest IP packet of a GSO frame
/// plus an Ethernet header with two VLAN tags.
pub const MAX_GUEST_FRAME: usize = MAX_L3_LEN + 14 + 8;

/// Shortest frame a guest may transmit: an Ethernet header.
pub const MIN_GUEST_FRAME: usize = 14;

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

/// Why a transmitted descriptor chain was refused. The frame is dropped and
/// counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestTxError {
    /// The chain is shorter than the header plus an Ethernet header.
    #[error("descriptor chain: expected at least {required_len} bytes (virtio-net header and Ethernet header), found {len}")]
    ShortChain {
        /// Bytes needed.
        required_len: usize,
        /// Bytes in the chain.
        len: usize,
    },
    /// The frame after the header is longer than any valid frame.
    #[error("frame: expected at most {max} bytes, found {len}")]
    FrameTooLong {
        /// The longest frame accepted ([`MAX_GUEST_FRAME`]).
        max: usize,
        /// Length of the frame.
        len: usize,
    },
    /// The header asks for an offload the guest did not negotiate.
    #[error(transparent)]
    NotNegotiated(#[from] FeatureError),
    /// The header does not hold for the frame (reject list).
    #[error("invalid virtio-net header: {0}")]
    InvalidHeader(#[from] HdrError),
    /// The switch has not taken the frames queued before; the frame is
    /// dropped. A device model checks [`GuestPort::tx_room`] before it pops
    /// descriptors to avoid this.
    #[error("transmit queue full ({capacity} frames waiting for the switch)")]
    QueueFull {
        /// Capacity of the queue.
        capacity: usize,
    },
}

/// Why a frame for the guest could not be written to its receive buffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestRxError {
    /// Without mergeable receive buffers a frame must fit one buffer; this
    /// one does not. The frame is dropped and counted; the buffer is unused.
    #[error("receive buffer: expected at least {required_len} bytes for header and frame, found {len}; frame dropped")]
    BufferTooSmall {
        /// Header plus frame length.
        required_len: usize,
        /// Length of the buffer offered.
        len: usize,
    },
    /// The buffers offered hold less than the next frame needs. The frame
    /// stays queued (nothing is dropped): offer more buffers.
    #[error("receive buffers: expected {required_len} bytes for header and frame, found {available} in the buffers offered; frame kept")]
    OutOfBuffers {
        /// Header plus frame length.
        required_len: usize,
        /// Bytes in the buffers offered.
        available: usize,
    },
    /// With mergeable buffers the frame would need more buffers than
    /// `num_buffers` can count. The frame is dropped and counted.
    #[error("receive buffers: a frame may span at most 65535 buffers, this one needs {buffers}; frame dropped")]
    TooManyBuffers {
        /// Buffers the frame would need.
        buffers: usize,
    },
    /// The frame's offload header does not hold for its bytes. Dropped.
    #[error("invalid offload header on a frame for the guest: {0}; frame dropped")]
    InvalidHeader(#[from] HdrError),
    /// The frame could not be made to fit the guest's current receive
    /// offloads. Dropped.
    #[error("cannot adapt a frame to the guest's receive offloads: {0}; frame dropped")]
    Adapt(#[from] AdaptError),
}

impl GuestTxError {
    /// A stable name for the error counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            GuestTxError::ShortChain { .. } => "guest_tx_short_chain",
            GuestTxError::FrameTooLong { .. } => "guest_tx_frame_too_long",
            GuestTxError::NotNegotiated(_) => "guest_tx_offload_not_negotiated",
            GuestTxError::InvalidHeader(err) => err.reason().name(),
            GuestTxError::QueueFull { .. } => "guest_tx_queue_full",
        }
    }
}

impl GuestRxError {
    /// A stable name for the error counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            GuestRxError::BufferTooSmall { .. } => "guest_rx_buffer_too_small",
            GuestRxError::OutOfBuffers { .. } => "guest_rx_out_of_buffers",
            GuestRxError::TooManyBuffers { .. } => "guest_rx_too_many_buffers",
            GuestRxError::InvalidHeader(err) => err.reason().name(),
            GuestRxError::Adapt(err) => err.counter(),
        }
    }

    /// Whether the frame was dropped (every error but
    /// [`GuestRxError::OutOfBuffers`]).
    pub fn dropped_frame(&self) -> bool {
        !matches!(self, GuestRxError::OutOfBuffers { .. })
    }
}

/// One frame written to the guest's receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Buffers used, from the first one offered: every one but the last is
    /// filled completely (its used length is its length).
    pub buffers: usize,
    /// Bytes written to the last buffer used (its used length).
    pub last_len: usize,
    /// Bytes written in total, header included.
    pub bytes: usize,
}

/// Counters of a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestPortStats {
    /// Frames the guest transmitted that were queued for the switch.
    pub tx_frames: u64,
    /// Their bytes (frames only, without the virtio-net header).
    pub tx_bytes: u64,
    /// Transmitted chains refused ([`GuestTxError`]).
    pub tx_errors: u64,
    /// Frames written to the guest's buffers.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Frames for the guest dropped ([`GuestRxError::dropped_frame`]).
    pub rx_dropped: u64,
    /// Frames for the guest the port completed or segmented itself because
    /// the guest's receive offloads changed after the switch adapted them.
    pub rx_adapted: u64,
}

#[derive(Debug, Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_adapted: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// Frames on their way to the guest, after the check against its current
/// receive offloads.
#[derive(Debug, Default)]
struct RxState {
    ready: VecDeque<Packet>,
    segmenter: Segmenter,
    segments: SegmentList,
}

/// One transmit and one receive virtqueue of the guest, with the frames in
/// between.
struct QueuePair {
    from_guest_tx: Sender<Packet>,
    from_guest_rx: Receiver<Packet>,
    to_guest_tx: Sender<Packet>,
    to_guest_rx: Receiver<Packet>,
    rx: Mutex<RxState>,
    notifier: Arc<dyn Notifier>,
    /// The notifier fired and the device model has not drained the receive
    /// queue since.
    notified: AtomicBool,
    /// The device model found the transmit queue full: notify it when the
    /// switch makes room.
    tx_blocked: AtomicBool,
}

impl QueuePair {
    fn new(tx_capacity: usize, rx_capacity: usize, notifier: Arc<dyn Notifier>) -> Self {
        let (from_guest_tx, from_guest_rx) = bounded(tx_capacity);
        let (to_guest_tx, to_guest_rx) = bounded(rx_capacity);
        QueuePair {
            from_guest_tx,
            from_guest_rx,
            to_guest_tx,
            to_guest_rx,
            rx: Mutex::new(RxState::default()),
            notifier,
            notified: AtomicBool::new(false),
            tx_blocked: AtomicBool::new(false),
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
            .field("from_guest", &self.from_guest_rx.len())
            .field("to_guest", &self.to_guest_rx.len())
            .finish_non_exhaustive()
    }
}

/// Copies `out.len()` bytes starting at byte `skip` of the chain into `out`;
/// returns how many were copied (fewer when the chain ends first).
fn gather(chain: &[&[u8]], mut skip: usize, out: &mut [u8]) -> usize {
    let mut filled = 0;
    for iov in chain {
        if filled == out.len() {
            break;
        }
        let Some(rest) = iov.get(skip..) else {
            skip -= iov.len();
            continue;
        };
        skip = 0;
        let take = rest.len().min(out.len() - filled);
        if let (Some(dst), Some(src)) = (out.get_mut(filled..filled + take), rest.get(..take)) {
            dst.copy_from_slice(src);
        }
        filled += take;
    }
    filled
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
        let first_pair = QueuePair::new(tx_capacity, rx_capacity, notifier_for(0));
        let more_pairs = (1..pairs)
            .map(|i| QueuePair::new(tx_capacity, rx_capacity, notifier_for(i)))
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
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuestPortStats {
            tx_frames: load(&c.tx_frames),
            tx_bytes: load(&c.tx_bytes),
            tx_errors: load(&c.tx_errors),
            rx_frames: load(&c.rx_frames),
            rx_bytes: load(&c.rx_bytes),
            rx_dropped: load(&c.rx_dropped),
            rx_adapted: load(&c.rx_adapted),
        }
    }

    /// [`GuestQueue::tx_room`] of queue pair 0.
    pub fn tx_room(&self) -> usize {
        self.first_queue().tx_room()
    }

    /// [`GuestQueue::rx_pending`] of queue pair 0.
    pub fn rx_pending(&self) -> bool {
        self.first_queue().rx_pending()
    }

    /// [`GuestQueue::transmit`] on queue pair 0.
    pub fn transmit(&self, chain: &[&[u8]]) -> Result<(), GuestTxError> {
        self.first_queue().transmit(chain)
    }

    /// [`GuestQueue::transmit_bytes`] on queue pair 0.
    pub fn transmit_bytes(&self, chain: Bytes) -> Result<(), GuestTxError> {
        self.first_queue().transmit_bytes(chain)
    }

    /// [`GuestQueue::receive_into`] on queue pair 0.
    pub fn receive_into(
        &self,
        buffers: &mut [&mut [u8]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.first_queue().receive_into(buffers)
    }

    /// [`GuestQueue::receive_into_chains`] on queue pair 0.
    pub fn receive_into_chains(
        &self,
        chains: &mut [&mut [&mut [u8]]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.first_queue().receive_into_chains(chains)
    }

    /// Copies the header out of the chain (once) and checks the lengths and
    /// the negotiated offloads.
    fn parse_header(
        &self,
        chain: &[&[u8]],
        total: usize,
    ) -> Result<(VirtioNetHdr, usize), GuestTxError> {
        let header_len = self.format.size();
        let frame_len = total.saturating_sub(header_len);
        if total < header_len + MIN_GUEST_FRAME {
            return Err(GuestTxError::ShortChain {
                required_len: header_len + MIN_GUEST_FRAME,
                len: total,
            });
        }
        if frame_len > MAX_GUEST_FRAME {
            return Err(GuestTxError::FrameTooLong {
                max: MAX_GUEST_FRAME,
                len: frame_len,
            });
        }
        let mut raw = [0u8; HDR_LEN_V1];
        let raw = raw.get_mut(..header_len).unwrap_or(&mut []);
        gather(chain, 0, raw);
        let (mut hdr, _) = VirtioNetHdr::parse(raw, self.format)?;
        // num_buffers means nothing on transmit.
        hdr.num_buffers = 0;
        self.host.permits(&hdr)?;
        Ok((hdr, header_len))
    }

    /// Queues `packet` on `rx.ready` as the guest may receive it now.
    fn adapt_to_guest(
        &self,
        rx: &mut RxState,
        packet: Packet,
        caps: &EgressCapabilities,
    ) -> Result<(), GuestRxError> {
        let plan = packet.hdr.validate(&packet.data)?;
        let RxState {
            ready,
            segmenter,
            segments,
        } = rx;
        segments.clear();
        match adapt(segmenter, &packet.data, &plan, caps, segments)? {
            Adapted::PassThrough => ready.push_back(packet),
            Adapted::Checksummed | Adapted::Segmented(_) => {
                bump(&self.counters.rx_adapted, 1);
                for segment in segments.iter() {
                    let mut frame = Vec::with_capacity(segment.len());
                    segment.write_to(&mut frame);
                    ready.push_back(Packet::plain(frame));
                }
            }
        }
        Ok(())
    }

    fn write_frame<B: GuestBuffer>(
        &self,
        packet: &Packet,
        buffers: &mut [B],
    ) -> Result<Delivered, GuestRxError> {
        let header_len = self.format.size();
        let required_len = header_len + packet.data.len();
        let mut hdr = packet.hdr;
        let buffers_needed = if self.mergeable {
            let available = buffers
                .iter()
                .fold(0usize, |n, b| n.saturating_add(b.capacity()));
            let first = buffers.first().map_or(0, |b| b.capacity());
            if first < header_len || available < required_len {
                return Err(GuestRxError::OutOfBuffers {
                    required_len,
                    available,
                });
            }
            let mut left = required_len;
            let mut count = 0usize;
            for buffer in buffers.iter() {
                if left == 0 {
                    break;
                }
                left = left.saturating_sub(buffer.capacity());
                count += 1;
            }
            count
        } else {
            let Some(first) = buffers.first() else {
                return Err(GuestRxError::OutOfBuffers {
                    required_len,
                    available: 0,
                });
            };
            if first.capacity() < required_len {
                return Err(GuestRxError::BufferTooSmall {
                    required_len,
                    len: first.capacity(),
                });
            }
            1
        };
        hdr.num_buffers =
            u16::try_from(buffers_needed).map_err(|_| GuestRxError::TooManyBuffers {
                buffers: buffers_needed,
            })?;
        let mut raw = [0u8; HDR_LEN_V1];
        let raw = raw.get_mut(..header_len).unwrap_or(&mut []);
        // `raw` has exactly the format's size, so emit cannot fail.
        let _ = hdr.emit(raw, self.format);
        let mut sources = [&raw[..], &packet.data[..]];
        let mut last_len = 0;
        for buffer in buffers.iter_mut().take(buffers_needed) {
            last_len = buffer.fill_from(&mut sources);
        }
        Ok(Delivered {
            buffers: buffers_needed,
            last_len,
            bytes: required_len,
        })
    }
}

impl GuestQueue<'_> {
    /// How many more transmitted frames this pair can queue for the switch
    /// now. A device model stops popping the transmit virtqueue at 0 and
    /// waits for the notifier, which fires once the switch has taken
    /// frames again: the guest is held back instead of losing frames.
    pub fn tx_room(&self) -> usize {
        let capacity = self.port.tx_capacity;
        let room = capacity.saturating_sub(self.pair.from_guest_rx.len());
        if room == 0 {
            self.pair.tx_blocked.store(true, Ordering::SeqCst);
            // The switch may have taken frames between the length check and
            // the store, without seeing the flag: look again.
            return capacity.saturating_sub(self.pair.from_guest_rx.len());
        }
        room
    }

    /// Whether frames for the guest are waiting on this pair.
    pub fn rx_pending(&self) -> bool {
        if !self.pair.to_guest_rx.is_empty() {
            return true;
        }
        !self
            .pair
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
            .is_empty()
    }

    /// Takes one transmitted descriptor chain: the virtio-net header
    /// followed by the frame, as iovecs of any split. The header is copied
    /// once, checked against the negotiated host offloads and, with the
    /// frame copied into host memory, against the frame; then the frame is
    /// queued for the switch.
    pub fn transmit(&self, chain: &[&[u8]]) -> Result<(), GuestTxError> {
        let result = self.transmit_chain(chain);
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    /// Like [`transmit`](Self::transmit) for a chain already in host memory
    /// as one buffer: the frame is sliced out of it, not copied.
    pub fn transmit_bytes(&self, chain: Bytes) -> Result<(), GuestTxError> {
        let result = self
            .port
            .parse_header(&[&chain], chain.len())
            .and_then(|(hdr, header_len)| self.queue(hdr, chain.slice(header_len..)));
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    fn transmit_chain(&self, chain: &[&[u8]]) -> Result<(), GuestTxError> {
        let total = chain
            .iter()
            .fold(0usize, |n, iov| n.saturating_add(iov.len()));
        let (hdr, header_len) = self.port.parse_header(chain, total)?;
        let frame_len = total - header_len;
        let mut frame = BytesMut::zeroed(frame_len);
        let copied = gather(chain, header_len, &mut frame);
        frame.truncate(copied);
        self.queue(hdr, frame.freeze())
    }

    fn queue(&self, hdr: VirtioNetHdr, frame: Bytes) -> Result<(), GuestTxError> {
        if hdr.has_offload_work() {
            hdr.validate(&frame)?;
        }
        let len = frame.len();
        match self
            .pair
            .from_guest_tx
            .try_send(Packet::with_hdr(hdr, frame))
        {
            Ok(()) => {
                bump(&self.port.counters.tx_frames, 1);
                bump(&self.port.counters.tx_bytes, len);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pair.tx_blocked.store(true, Ordering::SeqCst);
                Err(GuestTxError::QueueFull {
                    capacity: self.port.tx_capacity,
                })
            }
        }
    }

    /// Writes the next frame for the guest into `buffers` (the guest's
    /// receive buffers, in the order popped from the receive virtqueue),
    /// with the header its negotiated features call for. Returns `None`
    /// when no frame is waiting; the notifier fires again when one arrives.
    ///
    /// Without mergeable receive buffers only the first buffer is used and
    /// must hold header and frame. With them, the frame spans as many
    /// buffers as it needs and `num_buffers` says how many.
    pub fn receive_into(
        &self,
        buffers: &mut [&mut [u8]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.receive_into_buffers(buffers)
    }

    /// Like [`receive_into`](Self::receive_into) for buffers that are
    /// descriptor chains of several writable descriptors each (for example
    /// a legacy driver that posts the header in a descriptor of its own):
    /// each element of `chains` is one buffer, written across its slices
    /// in order.
    pub fn receive_into_chains(
        &self,
        chains: &mut [&mut [&mut [u8]]],
    ) -> Result<Option<Delivered>, GuestRxError> {
        self.receive_into_buffers(chains)
    }

    fn receive_into_buffers<B: GuestBuffer>(
        &self,
        buffers: &mut [B],
    ) -> Result<Option<Delivered>, GuestRxError> {
        let counters = &self.port.counters;
        let mut rx = self.pair.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(packet) = self.next_for_guest(&mut rx)? else {
            return Ok(None);
        };
        match self.port.write_frame(&packet, buffers) {
            Ok(delivered) => {
                bump(&counters.rx_frames, 1);
                bump(&counters.rx_bytes, packet.data.len());
                Ok(Some(delivered))
            }
            Err(err) => {
                if err.dropped_frame() {
                    bump(&counters.rx_dropped, 1);
                } else {
                    rx.ready.push_front(packet);
                }
                Err(err)
            }
        }
    }

    /// The next frame for the guest, checked against the receive offloads
    /// in force now. Re-arms the notifier when the queue is empty.
    fn next_for_guest(&self, rx: &mut RxState) -> Result<Option<Packet>, GuestRxError> {
        let pair = self.pair;
        loop {
            if let Some(packet) = rx.ready.pop_front() {
                return Ok(Some(packet));
            }
            let packet = match pair.to_guest_rx.try_recv() {
                Ok(packet) => packet,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    // Re-arm before looking again: a frame queued after this
                    // store notifies; one queued before it is seen below.
                    pair.notified.store(false, Ordering::SeqCst);
                    match pair.to_guest_rx.try_recv() {
                        Ok(packet) => packet,
                        Err(_) => return Ok(None),
                    }
                }
            };
            if !packet.hdr.has_offload_work() {
                return Ok(Some(packet));
            }
            // The segments are copied into guest memory anyway.
            let caps = self
                .port
                .guest_offloads()
                .egress_capabilities(self.port.mtu)
                .with_scatter_gather(false);
            if let Err(err) = self.port.adapt_to_guest(rx, packet, &caps) {
                bump(&self.port.counters.rx_dropped, 1);
                return Err(err);
            }
        }
    }
}

/// One receive buffer of the guest: a slice, or a descriptor chain of
/// slices.
trait GuestBuffer {
    /// Bytes it holds.
    fn capacity(&self) -> usize;
    /// Copies from the front of `sources` until it is full or they run out,
    /// advancing the sources; returns the bytes written.
    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize;
}

impl GuestBuffer for &mut [u8] {
    fn capacity(&self) -> usize {
        self.len()
    }

    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize {
        fill(self, sources)
    }
}

impl GuestBuffer for &mut [&mut [u8]] {
    fn capacity(&self) -> usize {
        self.iter().fold(0usize, |n, s| n.saturating_add(s.len()))
    }

    fn fill_from(&mut self, sources: &mut [&[u8]]) -> usize {
        let mut written = 0;
        for segment in self.iter_mut() {
            let n = fill(segment, sources);
            written += n;
            if n < segment.len() {
                break;
            }
        }
        written
    }
}

/// Copies from the front of `sources` into `buffer` until one of them runs
/// out, advancing the sources; returns the bytes written.
fn fill(buffer: &mut [u8], sources: &mut [&[u8]]) -> usize {
    let mut written = 0;
    for source in sources.iter_mut() {
        let room = buffer.len() - written;
        let take = source.len().min(room);
        if let (Some(dst), Some(src)) =
            (buffer.get_mut(written..written + take), source.get(..take))
        {
            dst.copy_from_slice(src);
        }
        *source = source.get(take..).unwrap_or(&[]);
        written += take;
        if written == buffer.len() {
            break;
        }
    }
    written
}

impl Port for GuestPort {
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
        let pair = self.pair(queue).ok_or(PortError::NoSuchQueue {
            direction: "rx",
            queue,
            queues: self.pairs(),
        })?;
        let before = batch.len();
        batch.extend(pair.from_guest_rx.try_iter().take(max));
        let moved = batch.len() - before;
        if moved > 0 && pair.tx_blocked.swap(false, Ordering::SeqCst) {
            pair.notifier.notify();
        }
        Ok(moved)
    }

    /// Queues a frame on receive queue `queue` of the guest, folded onto
    /// the queue pairs the guest uses now
    /// ([`GuestPort::set_active_queue_pairs`]).
    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        if queue >= self.pairs() {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.pairs(),
                packet,
            });
        }
        let active = self.active_pairs.load(Ordering::Relaxed).max(1);
        let Some(pair) = self.pair(queue % active) else {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.pairs(),
                packet,
            });
        };
        match pair.to_guest_tx.try_send(packet) {
            Ok(()) => {
                if !pair.notified.swap(true, Ordering::SeqCst) {
                    pair.notifier.notify();
                }
                Ok(())
            }
            Err(TrySendError::Full(packet)) => Err(SendError::Full {
                queue,
                capacity: self.rx_capacity,
                packet,
            }),
            Err(TrySendError::Disconnected(packet)) => {
                Err(SendError::Disconnected { queue, packet })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;
    use std::sync::atomic::AtomicUsize;
    use vswitch_offload::checksum::{checksum, pseudo_header_ipv4};
    use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE};
    use vswitch_offload::virtio::{GSO_TCPV4, GSO_TCPV6};

    fn all_offloads() -> Features {
        [
            Features::CSUM,
            Features::GUEST_CSUM,
            Features::HOST_TSO4,
            Features::HOST_TSO6,
            Features::GUEST_TSO4,
            Features::GUEST_TSO6,
            Features::CTRL_VQ,
            Features::CTRL_GUEST_OFFLOADS,
            Features::MRG_RXBUF,
            Features::VERSION_1,
        ]
        .iter()
        .fold(Features::default(), |acc, f| acc.or(*f))
    }

    struct Counting(AtomicUsize);

    impl Notifier for Counting {
        fn notify(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn port_with(acked: Features) -> (GuestPort, Arc<Counting>) {
        let negotiated = Negotiated::new(all_offloads(), acked).unwrap();
        let notifier = Arc::new(Counting(AtomicUsize::new(0)));
        let port = GuestPort::new(GuestPortConfig::new("g"), negotiated, notifier.clone());
        (port, notifier)
    }

    /// An untagged TCP/IPv4 frame with `payload` bytes; its checksum is
    /// left partial (pseudo-header seed) when `partial`, else complete.
    fn tcp4(payload: usize, partial: bool) -> Vec<u8> {
        let tcp_len = 20 + payload;
        let mut f = vec![0u8; 34 + tcp_len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (20 + tcp_len).min(65535) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        let ip_sum = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = 0x18;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let seed = pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, tcp_len as u16);
        if partial {
            f[50..52].copy_from_slice(&seed.sum().to_be_bytes());
        } else {
            let mut sum = seed;
            sum.add_bytes(&f[34..]);
            f[50..52].copy_from_slice(&sum.finish().to_be_bytes());
        }
        f
    }

    fn tcp4_ok(frame: &[u8]) -> bool {
        let tcp_len = frame.len() - 34;
        let mut sum = pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, tcp_len as u16);
        sum.add_bytes(&frame[34..]);
        sum.finish() == 0 && checksum(&frame[14..34]) == 0
    }

    fn partial_hdr() -> VirtioNetHdr {
        VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        }
    }

    fn tso_hdr(mss: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            gso_type: GSO_TCPV4,
            gso_size: mss,
            hdr_len: 54,
            ..partial_hdr()
        }
    }

    fn header_bytes(hdr: VirtioNetHdr) -> [u8; 12] {
        let mut raw = [0u8; 12];
        hdr.emit(&mut raw, HdrFormat::V1).unwrap();
        raw
    }

    #[test]
    fn a_chain_split_anywhere_gives_the_same_frame_and_header() {
        let (port, _) = port_with(all_offloads());
        let frame = tcp4(3000, true);
        let mut chain = header_bytes(tso_hdr(1448)).to_vec();
        chain.extend_from_slice(&frame);
        for split in [1, 5, 11, 12, 13, 40, chain.len() - 1] {
            let (a, b) = chain.split_at(split);
            let (b, c) = b.split_at(b.len() / 2);
            port.transmit(&[a, &[], b, c]).unwrap();
            let mut batch = Vec::new();
            assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1);
            assert_eq!(batch[0].hdr, tso_hdr(1448));
            assert_eq!(batch[0].data, frame);
        }
        let whole = Bytes::from(chain);
        port.transmit_bytes(whole.clone()).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 8).unwrap();
        // Sliced out of the chain, not copied.
        assert_eq!(batch[0].data.as_ptr(), whole[12..].as_ptr());
        assert_eq!(port.stats().tx_frames, 8);
    }

    #[test]
    fn offloads_not_negotiated_and_bad_headers_are_refused_and_counted() {
        let (port, _) = port_with(Features::VERSION_1.or(Features::CSUM));
        let frame = tcp4(3000, true);
        let tso = header_bytes(tso_hdr(1448));
        assert_eq!(
            port.transmit(&[&tso, &frame]),
            Err(GuestTxError::NotNegotiated(
                FeatureError::OffloadNotPermitted {
                    asked: "TSO over IPv4"
                }
            ))
        );
        let wrong_l3 = header_bytes(VirtioNetHdr {
            gso_type: GSO_TCPV6,
            ..tso_hdr(1448)
        });
        let (full, _) = port_with(all_offloads());
        assert!(matches!(
            full.transmit(&[&wrong_l3, &frame]),
            Err(GuestTxError::InvalidHeader(HdrError::L3Mismatch { .. }))
        ));
        assert_eq!(
            port.transmit(&[&[0u8; 12], &[0u8; 13]]),
            Err(GuestTxError::ShortChain {
                required_len: 26,
                len: 25
            })
        );
        let huge = vec![0u8; MAX_GUEST_FRAME + 1];
        assert!(matches!(
            port.transmit(&[&[0u8; 12], &huge]),
            Err(GuestTxError::FrameTooLong { .. })
        ));
        let err = port.transmit(&[&[0u8; 12], &[0u8; 13]]).unwrap_err();
        assert_eq!(err.counter(), "guest_tx_short_chain");
        let err = full.transmit(&[&wrong_l3, &frame]).unwrap_err();
        assert_eq!(err.counter(), "gso_l3_mismatch");
        assert_eq!(port.stats().tx_errors, 4);
        assert_eq!(port.stats().tx_frames, 0);
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
    }

    /// A guest's TSO frame with SYN or RST, or with an MSS below 88, is
    /// refused at transmit with the typed header error and counted; FIN and
    /// PSH at MSS 88 go through.
    #[test]
    fn tso_with_syn_rst_or_a_tiny_mss_is_refused_at_transmit() {
        let (port, _) = port_with(all_offloads());
        let mut syn_fin_rst = tcp4(3000, true);
        syn_fin_rst[47] = 0x07;
        let err = port
            .transmit(&[&header_bytes(tso_hdr(1448)), &syn_fin_rst])
            .unwrap_err();
        assert_eq!(
            err,
            GuestTxError::InvalidHeader(HdrError::SynOrRstWithGso {
                gso_type: GSO_TCPV4,
                tcp_flags: 0x07
            })
        );
        assert_eq!(err.counter(), "syn_or_rst_with_gso");
        let frame = tcp4(3000, true);
        let err = port
            .transmit(&[&header_bytes(tso_hdr(87)), &frame])
            .unwrap_err();
        assert_eq!(
            err,
            GuestTxError::InvalidHeader(HdrError::BadGsoSize {
                gso_type: GSO_TCPV4,
                gso_size: 87,
                min: 88
            })
        );
        assert_eq!(err.counter(), "bad_gso_size");
        assert_eq!(port.stats().tx_errors, 2);
        assert_eq!(port.stats().tx_frames, 0);

        let mut fin_psh = frame;
        fin_psh[47] = 0x19;
        port.transmit(&[&header_bytes(tso_hdr(88)), &fin_psh])
            .unwrap();
        assert_eq!(port.stats().tx_frames, 1);
    }

    #[test]
    fn a_full_transmit_queue_is_an_error_and_tx_room_tells_before() {
        let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
        let port = GuestPort::new(
            GuestPortConfig::new("g").queue_len(2),
            negotiated,
            Arc::new(|| {}),
        );
        let chain: [&[u8]; 2] = [&[0u8; 12], &[0u8; 60]];
        assert_eq!(port.tx_room(), 2);
        port.transmit(&chain).unwrap();
        port.transmit(&chain).unwrap();
        assert_eq!(port.tx_room(), 0);
        assert_eq!(
            port.transmit(&chain),
            Err(GuestTxError::QueueFull { capacity: 2 })
        );
    }

    #[test]
    fn the_switch_taking_frames_from_a_full_transmit_queue_notifies() {
        let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
        let notifier = Arc::new(Counting(AtomicUsize::new(0)));
        let port = GuestPort::new(
            GuestPortConfig::new("g").queue_len(1),
            negotiated,
            notifier.clone(),
        );
        let chain: [&[u8]; 2] = [&[0u8; 12], &[0u8; 60]];
        port.transmit(&chain).unwrap();
        // Taking frames from a queue nobody found full notifies nobody.
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
        assert_eq!(notifier.0.load(Ordering::SeqCst), 0);
        port.transmit(&chain).unwrap();
        assert_eq!(port.tx_room(), 0);
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
        assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
        assert_eq!(port.tx_room(), 1);
        port.transmit(&chain).unwrap();
        assert!(port.transmit(&chain).is_err());
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
        assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
        // Once only.
        port.transmit(&chain).unwrap();
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
        assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn one_buffer_per_frame_without_mergeable_buffers() {
        let (port, notifier) = port_with(Features::VERSION_1);
        port.send(0, Packet::plain(vec![7u8; 100])).unwrap();
        port.send(0, Packet::plain(vec![8u8; 100])).unwrap();
        // Notified once until the queue is drained.
        assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
        let mut small = vec![0u8; 111];
        let err = port.receive_into(&mut [&mut small]).unwrap_err();
        assert_eq!(
            err,
            GuestRxError::BufferTooSmall {
                required_len: 112,
                len: 111
            }
        );
        let mut big = vec![0u8; 112];
        let mut other = vec![0u8; 112];
        let got = port.receive_into(&mut [&mut big, &mut other]).unwrap();
        assert_eq!(
            got,
            Some(Delivered {
                buffers: 1,
                last_len: 112,
                bytes: 112
            })
        );
        assert_eq!(&big[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(big[12..].iter().all(|&b| b == 8));
        assert_eq!(port.receive_into(&mut [&mut big]).unwrap(), None);
        let stats = port.stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 1));
        // Drained and re-armed: the next frame notifies again.
        port.send(0, Packet::plain(vec![9u8; 100])).unwrap();
        assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
        assert!(port.rx_pending());
    }

    #[test]
    fn descriptor_chains_take_the_header_and_frame_across_descriptors() {
        for acked in [Features::VERSION_1, all_offloads()] {
            let (port, _) = port_with(acked);
            let frame: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
            port.send(0, Packet::plain(frame.clone())).unwrap();
            // Header alone in a 12-byte descriptor, the frame across two.
            let (mut h, mut d1, mut d2) = (vec![0u8; 12], vec![0u8; 1000], vec![0u8; 1000]);
            let mut chain: Vec<&mut [u8]> = vec![&mut h, &mut d1, &mut d2];
            let got = port
                .receive_into_chains(&mut [&mut chain[..]])
                .unwrap()
                .unwrap();
            assert_eq!(
                got,
                Delivered {
                    buffers: 1,
                    last_len: 1412,
                    bytes: 1412
                }
            );
            assert_eq!(u16::from_le_bytes([h[10], h[11]]), 1);
            assert_eq!([&d1[..], &d2[..400]].concat(), frame);
            assert!(d2[400..].iter().all(|&b| b == 0));
            // A chain too short for the frame, without mergeable buffers.
            if acked == Features::VERSION_1 {
                port.send(0, Packet::plain(frame.clone())).unwrap();
                let (mut h, mut d) = (vec![0u8; 12], vec![0u8; 1000]);
                let mut chain: Vec<&mut [u8]> = vec![&mut h, &mut d];
                assert_eq!(
                    port.receive_into_chains(&mut [&mut chain[..]]),
                    Err(GuestRxError::BufferTooSmall {
                        required_len: 1412,
                        len: 1012
                    })
                );
            }
        }
    }

    #[test]
    fn queue_pairs_need_mq_and_each_has_its_own_queues_and_notifier() {
        let single = GuestPort::new(
            GuestPortConfig::new("g").queue_pairs(4),
            Negotiated::new(all_offloads(), Features::VERSION_1).unwrap(),
            Arc::new(|| {}),
        );
        assert_eq!(single.capabilities().rx_queues, 1);
        assert!(single.queue(1).is_none());

        let offered = all_offloads().or(Features::MQ);
        let negotiated = Negotiated::new(
            offered,
            Features::VERSION_1.or(Features::CTRL_VQ).or(Features::MQ),
        )
        .unwrap();
        let notifiers: Vec<Arc<Counting>> = (0..3)
            .map(|_| Arc::new(Counting(AtomicUsize::new(0))))
            .collect();
        let port = GuestPort::with_queue_notifiers(
            GuestPortConfig::new("mq").queue_pairs(3),
            negotiated,
            |i| notifiers[i].clone(),
        );
        let caps = port.capabilities();
        assert_eq!((caps.rx_queues, caps.tx_queues), (3, 3));
        let fired = || -> Vec<usize> {
            notifiers
                .iter()
                .map(|n| n.0.load(Ordering::SeqCst))
                .collect()
        };

        // The switch's transmit queue q is the guest's receive queue q.
        port.send(2, Packet::plain(vec![2u8; 60])).unwrap();
        assert_eq!(fired(), [0, 0, 1]);
        assert!(!port.rx_pending());
        let mut buf = vec![0u8; 100];
        assert_eq!(
            port.queue(1)
                .unwrap()
                .receive_into(&mut [&mut buf])
                .unwrap(),
            None
        );
        let got = port
            .queue(2)
            .unwrap()
            .receive_into(&mut [&mut buf])
            .unwrap();
        assert_eq!(got.map(|d| d.bytes), Some(72));
        assert_eq!(buf[12], 2);

        // The guest's transmit queue q is the switch's receive queue q.
        let chain: [&[u8]; 2] = [&[0u8; 12], &[1u8; 60]];
        port.queue(1).unwrap().transmit(&chain).unwrap();
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
        assert_eq!(port.receive(1, &mut Vec::new(), 8).unwrap(), 1);
        assert!(port.receive(3, &mut Vec::new(), 8).is_err());
        assert!(port.send(3, Packet::plain(vec![0u8; 60])).is_err());

        // The guest uses one pair only: everything folds onto pair 0.
        assert_eq!(
            port.set_active_queue_pairs(4),
            Err(QueuePairsError { max: 3, asked: 4 })
        );
        assert!(port.set_active_queue_pairs(0).is_err());
        port.set_active_queue_pairs(1).unwrap();
        port.send(2, Packet::plain(vec![3u8; 60])).unwrap();
        port.send(1, Packet::plain(vec![4u8; 60])).unwrap();
        assert_eq!(fired(), [1, 0, 1]);
        for tag in [3u8, 4] {
            let got = port.receive_into(&mut [&mut buf]).unwrap();
            assert!(got.is_some());
            assert_eq!(buf[12], tag);
        }
    }

    #[test]
    fn legacy_header_is_ten_bytes() {
        let (port, _) = port_with(Features::CSUM);
        assert_eq!(port.header_format(), HdrFormat::Legacy);
        port.send(0, Packet::plain(vec![1u8; 60])).unwrap();
        let mut buf = vec![0u8; 70];
        let got = port.receive_into(&mut [&mut buf]).unwrap().unwrap();
        assert_eq!(got.bytes, 70);
        assert!(buf[10..].iter().all(|&b| b == 1));
        let chain: [&[u8]; 2] = [&[0u8; 10], &[0u8; 60]];
        port.transmit(&chain).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 1).unwrap();
        assert_eq!(batch[0].data.len(), 60);
    }

    #[test]
    fn mergeable_buffers_span_frames_and_count_them() {
        let (port, _) = port_with(all_offloads());
        let frame = tcp4(20_000, true);
        port.send(0, Packet::with_hdr(tso_hdr(1448), frame.clone()))
            .unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 4096]).collect();
        let mut two: Vec<&mut [u8]> = bufs.iter_mut().take(2).map(|b| &mut b[..]).collect();
        assert_eq!(
            port.receive_into(&mut two),
            Err(GuestRxError::OutOfBuffers {
                required_len: 12 + frame.len(),
                available: 8192
            })
        );
        let mut all: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let got = port.receive_into(&mut all).unwrap().unwrap();
        let needed = (12 + frame.len()).div_ceil(4096);
        assert_eq!(got.buffers, needed);
        assert_eq!(got.last_len, 12 + frame.len() - (needed - 1) * 4096);
        let joined: Vec<u8> = bufs.concat();
        let (hdr, _) = VirtioNetHdr::parse(&joined, HdrFormat::V1).unwrap();
        assert_eq!(hdr.num_buffers as usize, needed);
        assert_eq!(hdr.gso_type, GSO_TCPV4, "GUEST_TSO4 keeps the GSO frame");
        assert_eq!(&joined[12..12 + frame.len()], &frame[..]);
        assert_eq!(port.stats().rx_dropped, 0);
    }

    #[test]
    fn offloads_turned_off_at_run_time_are_done_by_the_port() {
        let (port, _) = port_with(all_offloads());
        let caps = port.capabilities().egress;
        assert!(caps.checksum && caps.tso4 && caps.tso6);
        let frame = tcp4(10_000, true);
        // Queued by the switch under the declared capabilities...
        port.send(0, Packet::with_hdr(tso_hdr(1000), frame.clone()))
            .unwrap();
        port.send(0, Packet::with_hdr(partial_hdr(), tcp4(500, true)))
            .unwrap();
        // ...then the guest turns every receive offload off.
        assert_eq!(
            port.set_guest_offloads(0).unwrap(),
            GuestOffloads::default()
        );
        let mut payload = Vec::new();
        let mut frames = 0;
        loop {
            let mut buf = vec![0u8; 2048];
            let Some(got) = port.receive_into(&mut [&mut buf]).unwrap() else {
                break;
            };
            frames += 1;
            let (hdr, _) = VirtioNetHdr::parse(&buf, HdrFormat::V1).unwrap();
            assert_eq!(hdr.flags & FLAG_NEEDS_CSUM, 0);
            assert_eq!(hdr.gso_type, GSO_NONE);
            let seg = &buf[12..got.bytes];
            assert!(seg.len() - 14 <= 1500);
            assert!(tcp4_ok_any(seg), "segment {frames} has a bad checksum");
            if frames <= 10 {
                payload.extend_from_slice(&seg[54..]);
            } else {
                assert_eq!(seg.len(), 554);
            }
        }
        assert_eq!(frames, 11);
        assert_eq!(payload, frame[54..]);
        assert_eq!(port.stats().rx_adapted, 2);

        // Back on: GSO frames stay as they are again.
        port.set_guest_offloads(all_offloads().and(Features::GUEST_OFFLOAD_BITS).0)
            .unwrap();
        port.send(0, Packet::with_hdr(tso_hdr(1000), frame))
            .unwrap();
        let mut buf = vec![0u8; 20_000];
        let got = port.receive_into(&mut [&mut buf]).unwrap().unwrap();
        assert_eq!(got.bytes, 12 + 34 + 20 + 10_000);
        assert_eq!(buf[1], GSO_TCPV4);
    }

    /// A guest that negotiated GUEST_ECN takes a TSO frame with ECN whole;
    /// once it turns GUEST_ECN off (keeping TSO), the port cuts such a
    /// frame itself, CWR on the first segment only.
    #[test]
    fn ecn_turned_off_at_run_time_gets_ecn_tso_frames_as_segments() {
        use vswitch_offload::virtio::GSO_ECN;
        let ecn = Features::GUEST_ECN.or(Features::HOST_ECN);
        let negotiated = Negotiated::new(all_offloads().or(ecn), all_offloads().or(ecn)).unwrap();
        let port = GuestPort::new(
            GuestPortConfig::new("g"),
            negotiated,
            Arc::new(Counting(AtomicUsize::new(0))),
        );
        assert!(port.capabilities().egress.ecn);
        let (plain, _) = port_with(all_offloads());
        assert!(!plain.capabilities().egress.ecn);

        let mut frame = tcp4(10_000, true);
        frame[47] |= 0x80; // CWR
        let hdr = VirtioNetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..tso_hdr(1000)
        };
        port.send(0, Packet::with_hdr(hdr, frame.clone())).unwrap();
        let mut buf = vec![0u8; 20_000];
        let got = port.receive_into(&mut [&mut buf]).unwrap().unwrap();
        assert_eq!(got.bytes, 12 + frame.len());
        assert_eq!(buf[1], GSO_TCPV4 | GSO_ECN);

        let without_ecn = port
            .guest_offloads()
            .to_features()
            .without(Features::GUEST_ECN);
        let now = port.set_guest_offloads(without_ecn.0).unwrap();
        assert!(now.tso4 && !now.ecn);
        port.send(0, Packet::with_hdr(hdr, frame.clone())).unwrap();
        let mut payload = Vec::new();
        let mut flags = Vec::new();
        while let Some(got) = port.receive_into(&mut [&mut buf]).unwrap() {
            assert_eq!(buf[1], GSO_NONE);
            let seg = &buf[12..got.bytes];
            assert!(tcp4_ok_any(seg));
            flags.push(seg[47]);
            payload.extend_from_slice(&seg[54..]);
        }
        assert_eq!(flags.len(), 10);
        assert_eq!(flags[0], 0x80 | 0x10, "CWR|ACK on the first segment");
        assert!(flags[1..9].iter().all(|&f| f == 0x10), "{flags:x?}");
        assert_eq!(flags[9], 0x18, "PSH|ACK on the last segment");
        assert_eq!(payload, frame[54..]);
        assert_eq!(port.stats().rx_adapted, 1);
    }

    /// Segments carry their own IP length and sequence numbers; check the
    /// checksums with the lengths they declare.
    fn tcp4_ok_any(frame: &[u8]) -> bool {
        frame.len() >= 54 && tcp4_ok(frame)
    }

    #[test]
    fn only_checksum_offload_turned_off_completes_the_checksum() {
        let (port, _) = port_with(all_offloads());
        port.set_guest_offloads(0).unwrap();
        let partial = tcp4(300, true);
        port.send(0, Packet::with_hdr(partial_hdr(), partial))
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let got = port.receive_into(&mut [&mut buf]).unwrap().unwrap();
        assert_eq!(&buf[12..got.bytes], &tcp4(300, false)[..]);
        assert_eq!(buf[0] & FLAG_NEEDS_CSUM, 0);
    }

    #[test]
    fn condvar_notifier_counts_and_times_out() {
        let n = Arc::new(CondvarNotifier::new());
        assert!(!n.wait_timeout(Duration::from_millis(5)));
        let n2 = n.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            n2.notify();
        });
        assert!(n.wait_timeout(Duration::from_secs(5)));
        t.join().unwrap();
        n.notify();
        n.notify();
        assert!(n.wait_timeout(Duration::ZERO));
        assert!(!n.wait_timeout(Duration::ZERO));
    }

    #[test]
    fn bad_queue_indices_are_errors() {
        let (port, _) = port_with(Features::VERSION_1);
        assert!(port.receive(1, &mut Vec::new(), 1).is_err());
        assert!(matches!(
            port.send(1, Packet::plain(vec![0u8; 60])),
            Err(SendError::NoSuchQueue { .. })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn split_chain(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for cut in cuts {
                pieces.push(bytes[at..cut].to_vec());
                at = cut;
            }
            pieces.push(bytes[at..].to_vec());
            pieces
        }

        proptest! {
            /// Any bytes, split anywhere: no panic, the split does not
            /// matter, and an accepted frame is the chain minus the header
            /// copied once.
            #[test]
            fn transmit_takes_any_chain_without_panicking(
                mut header in proptest::collection::vec(any::<u8>(), 12),
                flags in 0u8..3,
                gso_type in proptest::sample::select(vec![0u8, 0, 0, 1, 3, 4, 5, 0x80, 0x81, 9]),
                frame in proptest::collection::vec(any::<u8>(), 0..2000),
                cuts in proptest::collection::vec(any::<usize>(), 0..6),
            ) {
                // Mostly plausible flags and types, so both outcomes occur.
                header[0] = flags;
                header[1] = gso_type;
                let (port, _) = port_with(all_offloads());
                let mut chain = header.clone();
                chain.extend_from_slice(&frame);
                let pieces = split_chain(&chain, &cuts);
                let iovecs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                let split = port.transmit(&iovecs);
                let whole = port.transmit_bytes(Bytes::from(chain.clone()));
                prop_assert_eq!(&split, &whole);
                let mut batch = Vec::new();
                port.receive(0, &mut batch, 8).unwrap();
                if split.is_ok() {
                    let (mut hdr, _) = VirtioNetHdr::parse(&header, HdrFormat::V1).unwrap();
                    hdr.num_buffers = 0;
                    prop_assert_eq!(batch.len(), 2);
                    for packet in &batch {
                        prop_assert_eq!(packet.hdr, hdr);
                        prop_assert_eq!(&packet.data[..], &frame[..]);
                    }
                } else {
                    prop_assert!(batch.is_empty());
                }
            }

            /// Any frame length and buffer sizes: no panic; a delivered
            /// frame reads back as header plus frame across the buffers it
            /// used, every one but the last full.
            #[test]
            fn receive_fills_any_buffers_consistently(
                mergeable in any::<bool>(),
                len in 14usize..1514,
                sizes in proptest::collection::vec(1usize..3000, 0..12),
            ) {
                let acked = if mergeable { all_offloads() } else { Features::VERSION_1 };
                let (port, _) = port_with(acked);
                let frame: Vec<u8> = (0..len).map(|i| (i % 255) as u8 + 1).collect();
                port.send(0, Packet::plain(frame.clone())).unwrap();
                let mut memory: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
                let mut buffers: Vec<&mut [u8]> = memory.iter_mut().map(|b| &mut b[..]).collect();
                let result = port.receive_into(&mut buffers);
                let available: usize = sizes.iter().sum();
                let required = 12 + len;
                match result {
                    Ok(Some(delivered)) => {
                        prop_assert_eq!(delivered.bytes, required);
                        let used = &memory[..delivered.buffers];
                        let written: usize = used[..used.len() - 1].iter().map(Vec::len).sum::<usize>()
                            + delivered.last_len;
                        prop_assert_eq!(written, required);
                        let joined: Vec<u8> = used.concat();
                        let (hdr, _) = VirtioNetHdr::parse(&joined, HdrFormat::V1).unwrap();
                        prop_assert_eq!(usize::from(hdr.num_buffers), delivered.buffers);
                        prop_assert_eq!(&joined[12..required], &frame[..]);
                        if !mergeable {
                            prop_assert_eq!(delivered.buffers, 1);
                        }
                        prop_assert!(!port.rx_pending());
                    }
                    Ok(None) => prop_assert!(false, "a frame was queued"),
                    Err(GuestRxError::OutOfBuffers { required_len, available: found }) => {
                        prop_assert_eq!(required_len, required);
                        prop_assert_eq!(found, if mergeable { available } else { 0 });
                        prop_assert!(port.rx_pending(), "the frame is kept");
                    }
                    Err(GuestRxError::BufferTooSmall { required_len, len: found }) => {
                        prop_assert!(!mergeable);
                        prop_assert_eq!(required_len, required);
                        prop_assert_eq!(found, sizes[0]);
                        prop_assert!(found < required);
                        prop_assert_eq!(port.stats().rx_dropped, 1);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
        }
    }
}
