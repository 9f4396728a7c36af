//! A Linux TAP device opened with a virtio-net header on every frame.
//!
//! The device is the host kernel's side of a virtual cable: what we write
//! comes out of the interface into the kernel's stack, what the kernel sends
//! through the interface we read. With IFF_VNET_HDR both directions carry a
//! `virtio_net_hdr_v1` (12 bytes), so large TSO frames and partial checksums
//! cross without being cut or completed, as far as the offloads set with
//! TUNSETOFFLOAD allow.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Waker;
use std::time::Duration;

use bytes::BytesMut;
use vswitch_offload::virtio::{HdrFormat, VirtioNetHdr};
use vswitch_offload::{EgressCapabilities, Packet};

use crate::buffer::ChunkPool;
use crate::port::{Port, PortCapabilities, PortError, SendError};
use crate::readable::ReadableWakers;

use crate::features::GuestOffloads;
use crate::sys::{self, tun_flags};

pub use crate::sys::{TapFlags, IFNAME_MAX};

/// Size of the virtio-net header this module configures on every TAP queue.
pub const TAP_VNET_HDR_LEN: usize = 12;

/// Brings interface `name` up (IFF_UP, as `ip link set NAME up` does). The
/// interface must be visible in this network namespace; the caller needs
/// CAP_NET_ADMIN there.
pub fn set_interface_up(name: &str) -> io::Result<()> {
    sys::set_up(name)
}

/// Sets the MTU of interface `name` in this network namespace. A
/// [`TapPort`]'s own MTU ([`TapConfig::mtu`]) is only what the switch
/// segments to; this changes the interface itself.
pub fn set_interface_mtu(name: &str, mtu: u32) -> io::Result<()> {
    sys::set_mtu(name, mtu)
}

/// The offloads asked of a TAP device: what the kernel may hand us without
/// doing the work itself (and, symmetrically, what we may hand it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TapOffloads {
    /// Partial checksums (TUN_F_CSUM). Every other offload needs this one.
    pub checksum: bool,
    /// TCP over IPv4 segmentation (TUN_F_TSO4).
    pub tso4: bool,
    /// TCP over IPv6 segmentation (TUN_F_TSO6).
    pub tso6: bool,
    /// TSO with ECN (TUN_F_TSO_ECN).
    pub tso_ecn: bool,
    /// UDP segmentation over IPv4 and IPv6 (TUN_F_USO4 | TUN_F_USO6).
    pub uso: bool,
}

impl TapOffloads {
    /// No offload: the kernel completes checksums and segments before
    /// handing frames over.
    pub const NONE: TapOffloads = TapOffloads {
        checksum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
        uso: false,
    };

    /// Checksum offload only.
    pub const CHECKSUM: TapOffloads = TapOffloads {
        checksum: true,
        ..TapOffloads::NONE
    };

    /// Everything: checksums, TSO over IPv4 and IPv6 with ECN, USO.
    pub const FULL: TapOffloads = TapOffloads {
        checksum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
        uso: true,
    };

    /// The TUN_F_* bits for these offloads. Segmentation without checksum
    /// offload is meaningless (the kernel refuses it), so it is dropped.
    pub fn to_tun_flags(self) -> u32 {
        if !self.checksum {
            return 0;
        }
        let mut flags = tun_flags::CSUM;
        if self.tso4 {
            flags |= tun_flags::TSO4;
        }
        if self.tso6 {
            flags |= tun_flags::TSO6;
        }
        if self.tso_ecn && (self.tso4 || self.tso6) {
            flags |= tun_flags::TSO_ECN;
        }
        if self.uso {
            flags |= tun_flags::USO4 | tun_flags::USO6;
        }
        flags
    }

    /// What a port writing to a TAP device with these offloads may hand
    /// over unfinished: checksums, TSO (with ECN only under TUN_F_TSO_ECN)
    /// and USO as asked; never UFO, and one buffer per frame.
    pub fn egress_capabilities(self, mtu: u16) -> EgressCapabilities {
        let checksum = self.checksum;
        EgressCapabilities::none(mtu)
            .with_checksum(checksum)
            .with_tso4(checksum && self.tso4)
            .with_tso6(checksum && self.tso6)
            .with_ecn(checksum && self.tso_ecn && (self.tso4 || self.tso6))
            .with_uso(checksum && self.uso)
    }

    /// The offloads that TUN_F_* bits stand for.
    pub fn from_tun_flags(flags: u32) -> Self {
        let checksum = flags & tun_flags::CSUM != 0;
        TapOffloads {
            checksum,
            tso4: checksum && flags & tun_flags::TSO4 != 0,
            tso6: checksum && flags & tun_flags::TSO6 != 0,
            tso_ecn: checksum && flags & tun_flags::TSO_ECN != 0,
            uso: checksum
                && flags & (tun_flags::USO4 | tun_flags::USO6)
                    == (tun_flags::USO4 | tun_flags::USO6),
        }
    }
}

impl From<GuestOffloads> for TapOffloads {
    /// The one place where a guest's receive offloads (GUEST_* features)
    /// become TAP offload flags: a TAP that feeds a guest directly may hand
    /// over exactly what the guest's receive path accepts. USO is asked only
    /// when the guest takes it over both IPv4 and IPv6 (the TAP sets both
    /// flags together here).
    fn from(guest: GuestOffloads) -> Self {
        TapOffloads {
            checksum: guest.checksum,
            tso4: guest.checksum && guest.tso4,
            tso6: guest.checksum && guest.tso6,
            tso_ecn: guest.checksum && guest.ecn && (guest.tso4 || guest.tso6),
            uso: guest.checksum && guest.uso4 && guest.uso6,
        }
    }
}

/// One queue of a TAP device, with a 12-byte virtio-net header on every frame.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
    offloads: TapOffloads,
    napi: bool,
}

impl TapQueue {
    /// Opens (creating if needed) the TAP device `name` and asks for
    /// `offloads`. Flags the kernel does not know (USO before Linux 6.2) are
    /// dropped and the rest asked again; [`offloads`](Self::offloads) says
    /// what the kernel accepted. With `multi_queue` the device is opened with
    /// IFF_MULTI_QUEUE and every call attaches one more queue.
    pub fn open(name: &str, offloads: TapOffloads, multi_queue: bool) -> io::Result<Self> {
        Self::open_with(
            name,
            offloads,
            TapFlags {
                multi_queue,
                napi: false,
            },
        )
    }

    /// As [`open`](Self::open), with the attach flags spelled out; IFF_NAPI
    /// is asked only where the kernel supports it, and
    /// [`napi`](Self::napi) says whether it is in effect.
    pub fn open_with(name: &str, offloads: TapOffloads, flags: TapFlags) -> io::Result<Self> {
        let (fd, name, flags) = sys::open_tap(name, flags)?;
        Self::configure(fd, name, offloads, flags.napi)
    }

    /// Takes a TAP descriptor a VMM already opened and attached with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (a jailed VMM cannot open
    /// /dev/net/tun itself), sets the header size and asks for `offloads`.
    /// The descriptor should be non-blocking. Whether the VMM attached it
    /// with IFF_NAPI cannot be asked of the kernel; [`napi`](Self::napi)
    /// answers `false`.
    pub fn from_fd(
        fd: OwnedFd,
        name: impl Into<String>,
        offloads: TapOffloads,
    ) -> io::Result<Self> {
        Self::configure(fd, name.into(), offloads, false)
    }

    fn configure(fd: OwnedFd, name: String, offloads: TapOffloads, napi: bool) -> io::Result<Self> {
        sys::set_vnet_hdr_size(fd.as_fd(), TAP_VNET_HDR_LEN)?;
        let wanted = offloads.to_tun_flags();
        let accepted = match sys::set_offload(fd.as_fd(), wanted) {
            Ok(()) => wanted,
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                let without_uso = wanted & !(tun_flags::USO4 | tun_flags::USO6);
                sys::set_offload(fd.as_fd(), without_uso)?;
                without_uso
            }
            Err(err) => return Err(err),
        };
        Ok(TapQueue {
            fd,
            name,
            offloads: TapOffloads::from_tun_flags(accepted),
            napi,
        })
    }

    /// Whether frames written to this queue enter the kernel through NAPI
    /// and GRO (IFF_NAPI).
    pub fn napi(&self) -> bool {
        self.napi
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads the kernel accepted.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// Changes the offloads at run time (a guest's GUEST_OFFLOADS_SET).
    pub fn set_offloads(&mut self, offloads: TapOffloads) -> io::Result<()> {
        sys::set_offload(self.fd.as_fd(), offloads.to_tun_flags())?;
        self.offloads = offloads;
        Ok(())
    }

    /// Reads one frame without blocking: the virtio-net header into `hdr`,
    /// the frame into `frame`. Returns the frame length, or `None` when
    /// nothing is queued. A frame longer than `frame` is truncated by the
    /// kernel: size `frame` for the largest GSO frame (65550 bytes or more).
    pub fn recv(
        &self,
        hdr: &mut [u8; TAP_VNET_HDR_LEN],
        frame: &mut [u8],
    ) -> io::Result<Option<usize>> {
        let mut bufs = [IoSliceMut::new(hdr), IoSliceMut::new(frame)];
        match sys::readv(self.fd.as_fd(), &mut bufs) {
            Ok(n) if n < TAP_VNET_HDR_LEN => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TAP read of {n} bytes is shorter than the {TAP_VNET_HDR_LEN}-byte header"),
            )),
            Ok(n) => Ok(Some(n - TAP_VNET_HDR_LEN)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes one frame without blocking: the header, then the frame
    /// gathered from `parts`. Returns `false` when the device's queue is
    /// full and nothing was written.
    pub fn send(&self, hdr: &[u8; TAP_VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<bool> {
        let mut iov: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
        if parts.len() + 1 > iov.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame in {} parts: at most {} are supported",
                    parts.len(),
                    iov.len() - 1
                ),
            ));
        }
        iov[0] = IoSlice::new(hdr);
        for (slot, part) in iov[1..].iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
        }
        match sys::writev(self.fd.as_fd(), &iov[..parts.len() + 1]) {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Waits until a frame can be read or `timeout` passes.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        sys::wait_readable(self.fd.as_fd(), timeout)
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Largest frame a TAP hands over: a 64 KiB IP packet with Ethernet and
/// two VLAN tags.
pub const TAP_MAX_FRAME: usize = 65_535 + 22;

/// Receive buffers are carved out of chunks of this size, so a burst of
/// frames costs no allocation per frame.
const RX_CHUNK: usize = 256 * 1024;

/// Most frozen chunks a queue keeps for recycling.
const RX_POOL_LIMIT: usize = 64;

/// Chunks tried for recycling before a new one is allocated.
const RX_POOL_PROBES: usize = 4;

/// Receive buffers of one queue.
///
/// Frames are read into a full-length, initialised chunk; at the end of a
/// burst the chunk is frozen once and each frame is a slice of it. The
/// frozen chunks go back to a [`ChunkPool`]: once every frame cut from one
/// has been dropped (sent, or delivered and released), it is taken back
/// whole and still initialised, so steady-state receive allocates, zeroes
/// and page-faults nothing.
#[derive(Debug)]
struct RxBuffers {
    chunk: Option<BytesMut>,
    used: usize,
    ranges: Vec<(usize, usize, VirtioNetHdr)>,
    pool: ChunkPool,
}

impl Default for RxBuffers {
    fn default() -> Self {
        RxBuffers {
            chunk: None,
            used: 0,
            ranges: Vec::new(),
            pool: ChunkPool::new(RX_CHUNK, RX_POOL_LIMIT, RX_POOL_PROBES),
        }
    }
}

impl RxBuffers {
    /// Room for one more frame of up to [`TAP_MAX_FRAME`] bytes, sealing the
    /// current chunk into `batch` when it has too little.
    fn room(&mut self, batch: &mut Vec<Packet>) -> &mut [u8] {
        let chunk = match self.chunk.take() {
            Some(chunk) if chunk.len() - self.used >= TAP_MAX_FRAME => chunk,
            current => {
                self.chunk = current;
                self.seal(batch);
                self.used = 0;
                self.pool.take(TAP_MAX_FRAME)
            }
        };
        let used = self.used;
        &mut self.chunk.insert(chunk)[used..used + TAP_MAX_FRAME]
    }

    /// Records the frame of `len` bytes just read into [`room`](Self::room).
    fn commit(&mut self, len: usize, hdr: VirtioNetHdr) {
        let start = self.used;
        self.used += len;
        self.ranges.push((start, start + len, hdr));
    }

    /// Freezes the current chunk, appends its frames to `batch` and gives
    /// it to the pool to take back once they are gone.
    fn seal(&mut self, batch: &mut Vec<Packet>) {
        if self.ranges.is_empty() {
            return;
        }
        if let Some(chunk) = self.chunk.take() {
            let whole = chunk.freeze();
            for (start, end, hdr) in self.ranges.drain(..) {
                batch.push(Packet {
                    hdr,
                    data: whole.slice(start..end),
                    tail: None,
                });
            }
            self.pool.give_back(whole);
        }
        self.ranges.clear();
        self.used = 0;
    }
}

/// How the kernel takes in the frames the switch writes to a TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelReceive {
    /// Every written frame runs through the kernel's receive path on its
    /// own, inside the write (the TUN driver's default).
    PerFrame,
    /// Written frames enter through a NAPI context per queue (IFF_NAPI), so
    /// GRO merges consecutive TCP segments of a flow before the kernel's
    /// stack sees them, as a NIC driver's receive path does: one trip
    /// through IP and TCP, and one acknowledgement, per merged frame rather
    /// than per segment. A segment with PSH, FIN, SYN or RST, a merged frame
    /// reaching 64 KiB and every non-TCP frame go up at once; what is still
    /// held goes up at the latest `flush` after the last write (the
    /// device's `gro_flush_timeout`).
    Coalesced {
        /// The longest a held segment waits when no more frames follow.
        flush: Duration,
    },
}

impl KernelReceive {
    /// The flush timeout of the default mode. Shorter timeouts fire during
    /// sustained traffic whenever the switch pauses between writes to a
    /// queue, and every early flush cuts a merge short: with 16 iperf3
    /// streams into a TAP at offload=none, 200 us gave a third less
    /// throughput than 1 ms.
    pub const DEFAULT_FLUSH: Duration = Duration::from_millis(1);
}

impl Default for KernelReceive {
    /// [`KernelReceive::Coalesced`] with [`KernelReceive::DEFAULT_FLUSH`].
    fn default() -> Self {
        KernelReceive::Coalesced {
            flush: KernelReceive::DEFAULT_FLUSH,
        }
    }
}

/// How [`TapPort::open_with`] opens a TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapConfig {
    /// The offloads asked of the kernel.
    pub offloads: TapOffloads,
    /// Queue pairs; more than one opens the device with IFF_MULTI_QUEUE.
    pub queues: usize,
    /// What the switch assumes the device carries. It does not change the
    /// interface, whose MTU the caller sets where the interface lives (see
    /// [`set_interface_mtu`]).
    pub mtu: u16,
    /// How the kernel takes in what the switch writes.
    pub receive: KernelReceive,
}

impl TapConfig {
    /// One queue, MTU 1500, coalesced kernel receive.
    pub fn new(offloads: TapOffloads) -> Self {
        TapConfig {
            offloads,
            queues: 1,
            mtu: 1500,
            receive: KernelReceive::default(),
        }
    }

    /// Sets the number of queue pairs.
    pub fn queues(mut self, queues: usize) -> Self {
        self.queues = queues;
        self
    }

    /// Sets the MTU the switch segments to.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Sets how the kernel takes in what the switch writes.
    pub fn receive(mut self, receive: KernelReceive) -> Self {
        self.receive = receive;
        self
    }
}

/// Counters of a [`TapPort`] that the switch's statistics do not see.
#[derive(Debug, Default)]
struct TapCounters {
    rx_errors: AtomicU64,
    tx_errors: AtomicU64,
    /// Frames not written because the interface was down.
    tx_link_down: AtomicU64,
    /// The device was deleted (`ip link del`) under the open queues.
    gone: std::sync::atomic::AtomicBool,
}

/// Whether an error from a queue says its device was deleted: the kernel
/// detaches the queues of a deleted TUN/TAP device, and reads and writes
/// on them then fail with EBADFD.
fn is_device_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EBADFD)
}

/// Whether an error from a write says the interface is down: the kernel
/// takes nothing from a TAP whose interface is not up (EIO), whatever the
/// frame, until it is brought up again (as it is while the device moves to
/// another network namespace).
fn is_link_down(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EIO)
}

/// A TAP device as a switch port: one [`TapQueue`] per queue pair.
///
/// Frames read from the device carry the kernel's virtio-net header
/// (partial checksums and GSO frames as far as the offloads allow); frames
/// sent to it carry theirs. The egress capabilities are what the kernel
/// accepted, so the switch segments and checksums in software exactly
/// what the kernel was not asked to take.
#[derive(Debug)]
pub struct TapPort {
    name: String,
    /// Wakes the poller of a queue the kernel has frames for
    /// ([`Port::set_rx_waker`]). Before `queues`, so that the queues are
    /// forgotten by the wake-up thread before they close.
    rx_wakers: ReadableWakers,
    queues: Vec<TapQueue>,
    rx_buffers: Vec<Mutex<RxBuffers>>,
    caps: PortCapabilities,
    receive: KernelReceive,
    counters: TapCounters,
}

impl TapPort {
    /// Opens (creating if needed) TAP device `name` with `queues` queue
    /// pairs (IFF_MULTI_QUEUE when more than one), the offloads asked for
    /// and the default [`KernelReceive`]. `mtu` is what the switch assumes
    /// the device carries: it does not change the interface, whose MTU the
    /// caller sets where the interface lives (see [`set_interface_mtu`]).
    pub fn open(name: &str, offloads: TapOffloads, queues: usize, mtu: u16) -> io::Result<Self> {
        Self::open_with(name, TapConfig::new(offloads).queues(queues).mtu(mtu))
    }

    /// Opens (creating if needed) TAP device `name` as `config` says. For
    /// [`KernelReceive::Coalesced`] the queues are attached with IFF_NAPI
    /// where the kernel supports it (otherwise the port falls back to
    /// [`KernelReceive::PerFrame`], see [`kernel_receive`](Self::kernel_receive))
    /// and the device's `gro_flush_timeout` is set through sysfs, so the
    /// device must be visible in this network namespace when it is opened;
    /// failing to set it is an error, because NAPI without a flush timeout
    /// merges nothing and costs more than per-frame receive.
    pub fn open_with(name: &str, config: TapConfig) -> io::Result<Self> {
        let count = config.queues.max(1);
        let flags = TapFlags {
            multi_queue: count > 1,
            napi: matches!(config.receive, KernelReceive::Coalesced { .. }),
        };
        let mut opened = Vec::with_capacity(count);
        let mut actual = name.to_string();
        for _ in 0..count {
            let queue = TapQueue::open_with(&actual, config.offloads, flags)?;
            actual = queue.name().to_string();
            opened.push(queue);
        }
        if let KernelReceive::Coalesced { flush } = config.receive {
            if opened.iter().all(TapQueue::napi) {
                sys::set_gro_flush_timeout(&actual, flush).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!(
                            "coalesced kernel receive on {actual} needs its gro_flush_timeout \
                             ({err}); open it with KernelReceive::PerFrame instead"
                        ),
                    )
                })?;
            }
        }
        Ok(Self::from_queues(opened, config.mtu))
    }

    /// Builds a port from queues already opened (for example from
    /// descriptors a VMM passed in, see [`TapQueue::from_fd`]). The port's
    /// offloads are those the first queue's kernel accepted; its kernel
    /// receive is coalesced when every queue was attached with IFF_NAPI and
    /// the device's `gro_flush_timeout` (read through sysfs) is not zero.
    ///
    /// # Panics
    /// If `queues` is empty.
    pub fn from_queues(queues: Vec<TapQueue>, mtu: u16) -> Self {
        assert!(!queues.is_empty(), "a TAP port needs at least one queue");
        let offloads = queues[0].offloads();
        let caps = PortCapabilities {
            egress: offloads.egress_capabilities(mtu),
            rx_queues: queues.len(),
            tx_queues: queues.len(),
        };
        let rx_wakers = ReadableWakers::new(queues.iter().map(|q| q.fd.as_raw_fd()));
        TapPort {
            name: queues[0].name().to_string(),
            rx_wakers,
            rx_buffers: queues
                .iter()
                .map(|_| Mutex::new(RxBuffers::default()))
                .collect(),
            receive: kernel_receive_of(&queues),
            queues,
            caps,
            counters: TapCounters::default(),
        }
    }

    /// How the kernel takes in what the switch writes to this device.
    pub fn kernel_receive(&self) -> KernelReceive {
        self.receive
    }

    /// The offloads the kernel accepted.
    pub fn offloads(&self) -> TapOffloads {
        self.queues[0].offloads()
    }

    /// The queues, to wait on their descriptors (for example with poll or
    /// an eventfd-driven loop).
    pub fn queues(&self) -> &[TapQueue] {
        &self.queues
    }

    /// Reads that failed or returned a malformed frame (shorter than its
    /// header).
    pub fn rx_errors(&self) -> u64 {
        self.counters.rx_errors.load(Ordering::Relaxed)
    }

    /// Writes the kernel refused (other than a full queue or a link that
    /// is down).
    pub fn tx_errors(&self) -> u64 {
        self.counters.tx_errors.load(Ordering::Relaxed)
    }

    /// Frames not written because the interface was down. Such a send
    /// reports [`SendError::Disconnected`], as an uplink whose link is down
    /// does: every frame would fail the same way. The port is not
    /// [gone](Self::is_gone); frames flow again once the interface is up.
    pub fn tx_link_down(&self) -> u64 {
        self.counters.tx_link_down.load(Ordering::Relaxed)
    }

    /// Whether the device was deleted under the port (`ip link del`): its
    /// queues then refuse every read and write, receive reports
    /// [`PortError::Disconnected`] and send [`SendError::Disconnected`].
    pub fn is_gone(&self) -> bool {
        self.counters.gone.load(Ordering::Relaxed)
    }

    fn queue(&self, direction: &'static str, queue: usize) -> Result<&TapQueue, PortError> {
        self.queues.get(queue).ok_or(PortError::NoSuchQueue {
            direction,
            queue,
            queues: self.queues.len(),
        })
    }
}

/// The kernel receive in effect for `queues` of one device.
fn kernel_receive_of(queues: &[TapQueue]) -> KernelReceive {
    if !queues.iter().all(TapQueue::napi) {
        return KernelReceive::PerFrame;
    }
    match sys::gro_flush_timeout(queues[0].name()) {
        Ok(flush) if !flush.is_zero() => KernelReceive::Coalesced { flush },
        _ => KernelReceive::PerFrame,
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> PortCapabilities {
        self.caps
    }

    /// Yes, for each queue: a thread waiting on the queues' descriptors
    /// wakes `waker` when the kernel has frames for a queue the poller
    /// found empty.
    fn set_rx_waker(&self, queue: usize, waker: Waker) -> bool {
        self.rx_wakers.set(queue, waker)
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let tap = self.queue("rx", queue)?;
        let mut buffers = self.rx_buffers[queue]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = batch.len();
        let mut read = 0;
        while read < max {
            let mut hdr = [0u8; TAP_VNET_HDR_LEN];
            match tap.recv(&mut hdr, buffers.room(batch)) {
                Ok(Some(len)) => match VirtioNetHdr::parse(&hdr, HdrFormat::V1) {
                    Ok((hdr, _)) => {
                        buffers.commit(len, hdr);
                        read += 1;
                    }
                    Err(_) => {
                        self.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Ok(None) => {
                    if read == 0 {
                        // Nothing since the last poll: the next frame is to
                        // wake the poller.
                        self.rx_wakers.found_empty(queue);
                    }
                    break;
                }
                Err(err) if is_device_gone(&err) => {
                    self.counters.gone.store(true, Ordering::Relaxed);
                    buffers.seal(batch);
                    return match batch.len() - before {
                        0 => Err(PortError::Disconnected { queue }),
                        read => Ok(read),
                    };
                }
                Err(_) => {
                    self.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        buffers.seal(batch);
        Ok(batch.len() - before)
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        let Some(tap) = self.queues.get(queue) else {
            return Err(SendError::NoSuchQueue {
                queue,
                queues: self.queues.len(),
                packet,
            });
        };
        let mut hdr = [0u8; TAP_VNET_HDR_LEN];
        // The buffer has the V1 size, so emitting cannot fail.
        let _ = packet.hdr.emit(&mut hdr, HdrFormat::V1);
        match tap.send(&hdr, &[&packet.data]) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::Full {
                queue,
                capacity: 0,
                packet,
            }),
            Err(err) if is_device_gone(&err) => {
                self.counters.gone.store(true, Ordering::Relaxed);
                Err(SendError::Disconnected { queue, packet })
            }
            Err(err) if is_link_down(&err) => {
                self.counters.tx_link_down.fetch_add(1, Ordering::Relaxed);
                Err(SendError::Disconnected { queue, packet })
            }
            Err(err) => {
                // The kernel refused this frame (for example a header it
                // does not accept): counted here, and handed back so the
                // switch counts the drop too.
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                Err(SendError::Refused {
                    queue,
                    reason: err.to_string(),
                    packet,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_flags_round_trip() {
        for offloads in [TapOffloads::NONE, TapOffloads::CHECKSUM, TapOffloads::FULL] {
            assert_eq!(
                TapOffloads::from_tun_flags(offloads.to_tun_flags()),
                offloads
            );
        }
    }

    #[test]
    fn guest_features_map_to_tun_flags() {
        use crate::features::Features;
        let guest = GuestOffloads::from_features(
            Features::GUEST_CSUM
                | Features::GUEST_TSO4
                | Features::GUEST_ECN
                | Features::GUEST_USO4,
        );
        let flags = TapOffloads::from(guest).to_tun_flags();
        assert_eq!(
            flags,
            tun_flags::CSUM | tun_flags::TSO4 | tun_flags::TSO_ECN
        );
        assert_eq!(
            TapOffloads::from(GuestOffloads::default()).to_tun_flags(),
            0
        );
    }

    /// TUN_F_TSO_ECN is what lets a TSO frame with ECN pass to the kernel
    /// whole; a TAP with TSO but without it gets such frames as segments.
    #[test]
    fn tso_ecn_flag_maps_to_the_ecn_capability() {
        let with_ecn =
            TapOffloads::from_tun_flags(tun_flags::CSUM | tun_flags::TSO4 | tun_flags::TSO_ECN);
        let caps = with_ecn.egress_capabilities(1500);
        assert!(caps.checksum && caps.tso4 && caps.ecn && !caps.tso6);
        let without = TapOffloads::from_tun_flags(tun_flags::CSUM | tun_flags::TSO4);
        let caps = without.egress_capabilities(1500);
        assert!(caps.tso4 && !caps.ecn);
        assert!(TapOffloads::FULL.egress_capabilities(9000).ecn);
        assert_eq!(TapOffloads::FULL.egress_capabilities(9000).mtu, 9000);
        let caps = TapOffloads::FULL.egress_capabilities(1500);
        assert!(!caps.ufo);
        // ECN without TSO, or anything without checksums, is not offered.
        let ecn_only = TapOffloads {
            tso_ecn: true,
            ..TapOffloads::CHECKSUM
        };
        assert!(!ecn_only.egress_capabilities(1500).ecn);
        let no_csum = TapOffloads {
            checksum: false,
            ..TapOffloads::FULL
        };
        assert_eq!(
            no_csum.egress_capabilities(1500),
            EgressCapabilities::none(1500)
        );
    }

    /// A TAP that feeds a guest (offloads from the guest's receive
    /// features) gives the switch the same segmentation and ECN
    /// capabilities as the guest port itself would, for every valid set of
    /// receive features.
    #[test]
    fn a_tap_feeding_a_guest_offers_what_the_guest_accepts() {
        use crate::features::{Features, Negotiated};
        let bits = [
            Features::GUEST_CSUM,
            Features::GUEST_TSO4,
            Features::GUEST_TSO6,
            Features::GUEST_ECN,
            Features::GUEST_USO4,
            Features::GUEST_USO6,
        ];
        let offered = bits.iter().fold(Features::empty(), |a, b| a | *b);
        let mut checked = 0;
        for mask in 0u32..1 << bits.len() {
            let acked = (0..bits.len())
                .filter(|i| mask & (1 << i) != 0)
                .fold(Features::empty(), |a, i| a | bits[i]);
            let Ok(negotiated) = Negotiated::new(offered, acked) else {
                continue;
            };
            let guest = negotiated.guest_offloads();
            let via_tap = TapOffloads::from(guest).egress_capabilities(1500);
            let direct = guest.egress_capabilities(1500);
            assert_eq!(
                (
                    via_tap.checksum,
                    via_tap.tso4,
                    via_tap.tso6,
                    via_tap.ecn,
                    via_tap.uso
                ),
                (
                    direct.checksum,
                    direct.tso4,
                    direct.tso6,
                    direct.ecn,
                    direct.uso
                ),
                "{acked:?}"
            );
            checked += 1;
        }
        assert!(checked > 8);
    }

    /// The interface helpers check the name before any system call, so a
    /// bad one is an `InvalidInput` error whatever the privileges.
    #[test]
    fn interface_helpers_refuse_bad_names_before_the_kernel_sees_them() {
        let too_long = "x".repeat(IFNAME_MAX + 1);
        for bad in ["", "bad/name", "nul\0", too_long.as_str()] {
            let err = set_interface_up(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            let err = set_interface_mtu(bad, 1500).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(IFNAME_MAX, 15);
    }

    /// Reads one frame into `buffers` as a receive burst would.
    fn read_frame(buffers: &mut RxBuffers, batch: &mut Vec<Packet>, frame: &[u8]) {
        buffers.room(batch)[..frame.len()].copy_from_slice(frame);
        buffers.commit(frame.len(), VirtioNetHdr::default());
    }

    #[test]
    fn a_receive_chunk_is_reused_once_its_frames_are_gone_and_never_before() {
        let mut buffers = RxBuffers::default();
        let mut first = Vec::new();
        read_frame(&mut buffers, &mut first, b"first");
        read_frame(&mut buffers, &mut first, b"burst");
        buffers.seal(&mut first);
        assert_eq!(first.len(), 2);
        assert_eq!(&first[1].data[..], b"burst");
        let at = first[0].data.as_ptr();

        // The next burst, while one frame of the first is held, is read
        // into other memory.
        let held = first.pop().unwrap();
        drop(first);
        let mut second = Vec::new();
        read_frame(&mut buffers, &mut second, b"second");
        buffers.seal(&mut second);
        assert_ne!(second[0].data.as_ptr(), at);
        assert_eq!(&held.data[..], b"burst");

        drop(held);
        let mut third = Vec::new();
        read_frame(&mut buffers, &mut third, b"third");
        buffers.seal(&mut third);
        assert_eq!(third[0].data.as_ptr(), at);
        assert_eq!(&third[0].data[..], b"third");
        assert_eq!((buffers.pool.recycled(), buffers.pool.allocated()), (1, 2));
    }

    #[test]
    fn a_full_receive_chunk_is_sealed_within_the_burst() {
        let mut buffers = RxBuffers::default();
        let mut batch = Vec::new();
        let frame = vec![0xabu8; TAP_MAX_FRAME];
        let per_chunk = (RX_CHUNK - TAP_MAX_FRAME) / TAP_MAX_FRAME + 1;
        for _ in 0..per_chunk {
            read_frame(&mut buffers, &mut batch, &frame);
        }
        assert!(batch.is_empty(), "frames leave at the end of the burst");
        read_frame(&mut buffers, &mut batch, &frame);
        assert_eq!(batch.len(), per_chunk, "a full chunk leaves at once");
        buffers.seal(&mut batch);
        assert_eq!(batch.len(), per_chunk + 1);
        assert!(batch.iter().all(|p| p.data[..] == frame[..]));
        assert_eq!(buffers.pool.allocated(), 2);
        assert_eq!(buffers.pool.kept(), 2);
    }

    #[test]
    fn segmentation_without_checksum_is_not_asked() {
        let odd = TapOffloads {
            checksum: false,
            tso4: true,
            ..TapOffloads::NONE
        };
        assert_eq!(odd.to_tun_flags(), 0);
    }
}
