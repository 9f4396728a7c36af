//! Every system call of the project, wrapped once. Linux only.
//!
//! Each wrapper checks what the kernel needs (buffer lengths, NUL-terminated
//! names, open descriptors) before the call and turns the C error convention
//! into `io::Result`. The rest of the crate stays in safe code. The module
//! is private: [`crate::tap`], [`crate::uplink`] and [`crate::vhost_user`]
//! use it and re-export or wrap what other crates need.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// Longest interface name the kernel takes, without the terminating NUL.
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// TUNSETOFFLOAD flags (linux/if_tun.h).
pub mod tun_flags {
    /// The kernel may hand over frames with a partial checksum, and we may
    /// hand over frames with one.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP over IPv4 segmentation offload.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP over IPv6 segmentation offload.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO frames may carry ECN (CWR).
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP segmentation offload over IPv4 (Linux 6.2 and later).
    pub const USO4: u32 = libc::TUN_F_USO4;
    /// UDP segmentation offload over IPv6 (Linux 6.2 and later).
    pub const USO6: u32 = libc::TUN_F_USO6;
}

/// Checks an interface name and returns it as the fixed-size, NUL-padded
/// array `struct ifreq` holds.
fn ifname_bytes(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?}: expected 1 to {IFNAME_MAX} bytes without NUL or '/'"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(out)
}

fn zeroed_ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of
    // integers, addresses and pointers); all-zero is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name = ifname_bytes(name)?;
    Ok(ifr)
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Result of a system call that returns -1 and sets errno on failure.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// How a TAP queue is attached to its device
/// ([`TapQueue::open_with`](crate::tap::TapQueue::open_with)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapFlags {
    /// IFF_MULTI_QUEUE: each open attaches one more queue of the device.
    pub multi_queue: bool,
    /// IFF_NAPI: frames written to this queue enter the kernel's stack
    /// through a NAPI context, so GRO can coalesce them.
    pub napi: bool,
}

/// Opens `/dev/net/tun` (non-blocking, close-on-exec) and attaches it to the
/// TAP device `name`, creating the device if it does not exist. Frames carry
/// a virtio-net header (IFF_VNET_HDR) and no packet-information prefix
/// (IFF_NO_PI). IFF_NAPI is asked only when the kernel lists it among the
/// driver's features (Linux 4.15 and later). Returns the descriptor, the
/// name the kernel used and the flags in effect.
pub fn open_tap(name: &str, asked: TapFlags) -> io::Result<(OwnedFd, String, TapFlags)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    let mut ifr = zeroed_ifreq(name)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if asked.multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let napi = asked.napi && tun_features(fd.as_fd())? & libc::IFF_NAPI as u32 != 0;
    if napi {
        flags |= libc::IFF_NAPI;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: `fd` is an open descriptor of /dev/net/tun owned above;
    // TUNSETIFF reads and writes one `struct ifreq`, and `ifr` is a valid,
    // exclusively borrowed one whose name is NUL-terminated (ifname_bytes
    // keeps the last byte zero).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;
    let actual = ifreq_name(&ifr);
    Ok((
        fd,
        actual,
        TapFlags {
            multi_queue: asked.multi_queue,
            napi,
        },
    ))
}

fn gro_flush_timeout_path(name: &str) -> io::Result<String> {
    ifname_bytes(name)?;
    Ok(format!("/sys/class/net/{name}/gro_flush_timeout"))
}

/// Sets how long the NAPI contexts of interface `name` may hold segments
/// for GRO when no more frames follow (sysfs `gro_flush_timeout`, in
/// nanoseconds). The interface must be visible in this network namespace.
pub fn set_gro_flush_timeout(name: &str, timeout: Duration) -> io::Result<()> {
    let path = gro_flush_timeout_path(name)?;
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    std::fs::write(&path, format!("{nanos}\n"))
        .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))
}

/// The `gro_flush_timeout` of interface `name`.
pub fn gro_flush_timeout(name: &str) -> io::Result<Duration> {
    let path = gro_flush_timeout_path(name)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))?;
    let nanos = text.trim().parse::<u64>().map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: {:?} is not a number: {err}", text.trim()),
        )
    })?;
    Ok(Duration::from_nanos(nanos))
}

/// Sets the size of the virtio-net header the device reads and writes
/// before every frame (10 for the legacy header, 12 for `virtio_net_hdr_v1`).
pub fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "vnet header size too large"))?;
    // SAFETY: `fd` is borrowed, so open for the call; TUNSETVNETHDRSZ reads
    // one c_int through the pointer, which points at `size` on this stack.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) })?;
    Ok(())
}

/// Tells the kernel which offloads this side of the TAP handles (TUN_F_*):
/// what the kernel may hand us still unsegmented or with partial checksums.
/// The kernel answers EINVAL for flags it does not know.
pub fn set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: `fd` is open for the call; TUNSETOFFLOAD takes the flags as the
    // integer argument itself, not through a pointer.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    })?;
    Ok(())
}

/// The IFF_* features this kernel's TUN driver supports.
pub fn tun_features(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut features: libc::c_uint = 0;
    // SAFETY: `fd` is open for the call; TUNGETFEATURES writes one
    // c_uint through the pointer, which points at `features` on this stack.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &mut features) })?;
    Ok(features)
}

/// Reads one frame (header and data) into `bufs` without blocking.
/// Returns `ErrorKind::WouldBlock` when nothing is queued.
pub fn readv(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let count = libc::c_int::try_from(bufs.len().min(1024)).unwrap_or(1024);
    // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` (std
    // guarantees it on Unix); each one describes a live, exclusively
    // borrowed buffer, and `count` does not exceed `bufs.len()`.
    let ret = unsafe { libc::readv(fd.as_raw_fd(), bufs.as_mut_ptr().cast(), count) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Writes one frame (header and data, gathered from `bufs`) without blocking.
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = libc::c_int::try_from(bufs.len().min(1024)).unwrap_or(1024);
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec`; each one
    // describes a live borrowed buffer the kernel only reads, and `count`
    // does not exceed `bufs.len()`.
    let ret = unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), count) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Waits until `fd` is readable or `timeout` passes. Returns whether it is
/// readable. An interrupted wait returns `Ok(false)`.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd on this stack and the count is 1.
    let ret = unsafe { libc::poll(&mut pfd, 1, millis) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(ret > 0 && pfd.revents & libc::POLLIN != 0)
}

/// A datagram socket used only as a handle for interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` was just returned by socket(), is open, and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sets the MTU of interface `name` (SIOCSIFMTU).
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = control_socket()?;
    let mut ifr = zeroed_ifreq(name)?;
    ifr.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU too large"))?;
    // SAFETY: `sock` is an open socket; SIOCSIFMTU reads one `struct ifreq`
    // with a NUL-terminated name, which `ifr` is.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &ifr) })?;
    Ok(())
}

/// Brings interface `name` up (sets IFF_UP with SIOCGIFFLAGS/SIOCSIFFLAGS).
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut ifr = zeroed_ifreq(name)?;
    // SAFETY: `sock` is open; SIOCGIFFLAGS fills the flags of the valid,
    // exclusively borrowed `ifr`, whose name is NUL-terminated.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: reading the union field SIOCGIFFLAGS just wrote.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `ifr`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) })?;
    Ok(())
}

// --- File descriptors passed over Unix sockets (vhost-user) -------------

/// Receives up to `buf.len()` bytes from `sock` into `buf` and the file
/// descriptors the sender attached to them, at most `max_fds`, as owned
/// descriptors that close when dropped. Returns the bytes received (0: the
/// peer closed the connection).
pub(crate) fn recv_with_fds(
    sock: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut raw = vec![-1; max_fds];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the one iovec points at `buf`, which is borrowed mutably for
    // the call and `buf.len()` bytes long, so the kernel may write any bytes
    // there; `raw` has room for `max_fds` descriptors.
    let (read, count) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    for &fd in raw.iter().take(count) {
        // SAFETY: the first `count` entries are descriptors the kernel just
        // installed in this process for this message; nothing else owns
        // them, so each is wrapped once, here.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(read)
}

// ---------------------------------------------------------------------------
// AF_PACKET sockets and interface queries for the uplink port
// ([`crate::uplink`]). Every call here works on a descriptor the caller
// owns or borrows, so an interface is always looked up in the network
// namespace the socket was created in, whatever namespace the thread is in.
// ---------------------------------------------------------------------------

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The legacy ethtool commands that read one offload flag each
/// (linux/ethtool.h).
pub mod ethtool_cmd {
    /// Transmit checksumming, any family (ETHTOOL_GTXCSUM).
    pub const TX_CSUM: u32 = 0x16;
    /// Scatter-gather (ETHTOOL_GSG).
    pub const SG: u32 = 0x18;
    /// TCP segmentation, any family (ETHTOOL_GTSO).
    pub const TSO: u32 = 0x1e;
    /// Generic segmentation in the kernel (ETHTOOL_GGSO).
    pub const GSO: u32 = 0x23;
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `ETH_P_ALL` in network byte order, as `sockaddr_ll` and `socket` take it.
fn eth_p_all_be() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

/// Opens an AF_PACKET raw socket, non-blocking and close-on-exec, with
/// protocol 0 so that it receives nothing until it is bound.
pub fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `raw` was just returned by socket(), is open, and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Runs `open` on a new thread that first enters the network namespace at
/// `netns` (a file such as `/run/netns/NAME`), and returns what it returned.
/// Sockets created there stay in that namespace; the calling thread's own
/// namespace never changes.
pub fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    open: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(netns)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", netns.display())))?;
    let thread = std::thread::Builder::new()
        .name("vswitch-netns".into())
        .spawn(move || {
            // SAFETY: `ns` is an open descriptor of a namespace file owned by
            // this closure; setns only changes the namespace of this
            // thread, which ends when the closure returns.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            open()
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the thread opening sockets in a namespace panicked"))?
}

/// Index of interface `name` in the namespace of `fd` (SIOCGIFINDEX).
pub fn interface_index(fd: BorrowedFd<'_>, name: &str) -> io::Result<i32> {
    let mut ifr = zeroed_ifreq(name)?;
    // SAFETY: `fd` is open for the call; SIOCGIFINDEX reads the
    // NUL-terminated name of the valid, exclusively borrowed `ifr` and
    // writes its index field.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) })?;
    // SAFETY: reading the union field SIOCGIFINDEX just wrote.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
}

/// The IFF_* flags of interface `name` in the namespace of `fd`
/// (SIOCGIFFLAGS): IFF_UP (administratively up), IFF_RUNNING (up with a
/// carrier).
pub fn interface_flags(fd: BorrowedFd<'_>, name: &str) -> io::Result<i32> {
    let mut ifr = zeroed_ifreq(name)?;
    // SAFETY: as in interface_index; SIOCGIFFLAGS writes the flags field.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: reading the union field SIOCGIFFLAGS just wrote.
    Ok(i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff)
}

/// The MTU of interface `name` in the namespace of `fd` (SIOCGIFMTU).
pub fn interface_mtu(fd: BorrowedFd<'_>, name: &str) -> io::Result<u32> {
    let mut ifr = zeroed_ifreq(name)?;
    // SAFETY: as in interface_index; SIOCGIFMTU writes the MTU field.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) })?;
    // SAFETY: reading the union field SIOCGIFMTU just wrote.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// One legacy ethtool flag of interface `name` (an [`ethtool_cmd`] value).
/// The kernel takes the RTNL lock for it.
pub fn ethtool_flag(fd: BorrowedFd<'_>, name: &str, cmd: u32) -> io::Result<bool> {
    let mut value = EthtoolValue { cmd, data: 0 };
    let mut ifr = zeroed_ifreq(name)?;
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: `fd` is open; SIOCETHTOOL reads the NUL-terminated name of
    // `ifr` and, for the get commands in `ethtool_cmd`, reads `cmd` and
    // writes `data` of the `struct ethtool_value` that `ifru_data` points
    // at: `value`, live and exclusively borrowed on this stack for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) })?;
    Ok(value.data != 0)
}

/// `ETHTOOL_GSSET_INFO`, `ETHTOOL_GSTRINGS`, `ETHTOOL_GFEATURES` and the
/// string set of feature names (linux/ethtool.h).
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// Issues SIOCETHTOOL on interface `name` with the command block `buf`
/// (its first word the command), which the kernel reads and fills in.
fn ethtool_words(fd: BorrowedFd<'_>, name: &str, buf: &mut [u32]) -> io::Result<()> {
    let mut ifr = zeroed_ifreq(name)?;
    ifr.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    // SAFETY: `fd` is open; `ifr` has a NUL-terminated name and points at
    // `buf`, live and exclusively borrowed for the call. The callers size
    // `buf` for the command's reply from the counts they put in it
    // (ETHTOOL_GSSET_INFO: one data word per mask bit; GSTRINGS: `len`
    // strings of ETH_GSTRING_LEN bytes; GFEATURES: `size` blocks of four
    // words), and the kernel writes no more than those counts say.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) })?;
    Ok(())
}

/// The names of interface `name`'s features (`ethtool -k` names such as
/// `tx-tcp6-segmentation`), in the order of their bits.
pub fn ethtool_feature_names(fd: BorrowedFd<'_>, name: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
    // The low half of the 64-bit mask comes first in memory on a
    // little-endian machine, second on a big-endian one.
    let mask_low = if cfg!(target_endian = "little") { 2 } else { 3 };
    let mut info = [ETHTOOL_GSSET_INFO, 0, 0, 0, 0];
    info[mask_low] = 1 << ETH_SS_FEATURES;
    ethtool_words(fd, name, &mut info)?;
    if info[mask_low] & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{name}: the kernel lists no feature names"),
        ));
    }
    let count = info[4] as usize;
    if count > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: {count} feature names, expected at most 4096"),
        ));
    }
    // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool_words(fd, name, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks_exact(ETH_GSTRING_LEN)
        .map(|raw| {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .collect())
}

/// The active feature bits of interface `name`, `count` of them (as many
/// as [`ethtool_feature_names`] returned), one bool per name.
pub fn ethtool_active_features(
    fd: BorrowedFd<'_>,
    name: &str,
    count: usize,
) -> io::Result<Vec<bool>> {
    let blocks = count.div_ceil(32);
    // struct ethtool_gfeatures: cmd, size, then per block available,
    // requested, active, never_changed.
    let mut buf = vec![0u32; 2 + 4 * blocks];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = blocks as u32;
    ethtool_words(fd, name, &mut buf)?;
    Ok((0..count)
        .map(|bit| buf[2 + 4 * (bit / 32) + 2] & (1 << (bit % 32)) != 0)
        .collect())
}

/// Binds an AF_PACKET socket to interface `ifindex`. With `receive` it
/// takes every protocol (ETH_P_ALL); without, it only sends (protocol 0
/// registers no receive hook).
pub fn bind_packet(fd: BorrowedFd<'_>, ifindex: i32, receive: bool) -> io::Result<()> {
    // SAFETY: `sockaddr_ll` is a plain C struct; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = if receive { eth_p_all_be() } else { 0 };
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a valid sockaddr_ll on this stack and the length
    // passed is its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sets an integer socket option.
pub fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is open; the option value is one c_int on this stack and
    // the length passed is its size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Reads an integer socket option.
pub fn int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is open; the kernel writes at most `len` bytes (one
    // c_int) into `value` and its length into `len`, both on this stack.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Makes the interface deliver every frame to this socket, whatever its
/// destination address (PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC). The
/// membership ends with the socket.
pub fn add_promiscuous_membership(fd: BorrowedFd<'_>, ifindex: i32) -> io::Result<()> {
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: `fd` is open; the value is one packet_mreq on this stack and
    // the length passed is its size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Frames this socket received and frames the kernel dropped for want of
/// room in its receive buffer since the last call (PACKET_STATISTICS,
/// which resets the counters).
pub fn packet_statistics(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `fd` is open; the kernel writes at most `len` bytes (one
    // tpacket_stats) into `stats` and its length into `len`, both on this
    // stack.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    })?;
    Ok((stats.tp_packets, stats.tp_drops))
}

/// Most messages one [`recv_frames`] or [`send_frames`] call moves.
pub const MMSG_MAX: usize = 32;

/// What [`recv_frames`] learnt of one received frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer (header included).
    pub len: usize,
    /// The frame was longer than its buffer and was cut.
    pub truncated: bool,
    /// `sll_pkttype`: PACKET_OUTGOING for a frame this host sent.
    pub pkttype: u8,
}

/// Receives up to `bufs.len()` (at most [`MMSG_MAX`]) frames in one
/// recvmmsg call without blocking, one frame per buffer, and describes
/// them in `out`. Returns how many arrived; `ErrorKind::WouldBlock` when
/// none is queued.
pub fn recv_frames(
    fd: BorrowedFd<'_>,
    bufs: &mut [&mut [u8]],
    out: &mut [Received],
) -> io::Result<usize> {
    let count = bufs.len().min(out.len()).min(MMSG_MAX);
    // SAFETY: `iovec` and `sockaddr_ll` are plain C structs; all-zero is a
    // valid value of each.
    let mut iovs: [libc::iovec; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_ll; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: `mmsghdr` is a plain C struct of pointers and integers; all
    // zero (null pointers, zero lengths) is a valid value.
    let mut msgs: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_ll).cast();
        msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    }
    // SAFETY: the first `count` entries of `msgs` each point at one iovec
    // describing a live, exclusively borrowed buffer of `bufs` and at one
    // sockaddr_ll of `addrs` with its true size; all three arrays outlive
    // the call, and the kernel writes no more than those lengths.
    let ret = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    let received = usize::try_from(check(ret)?).unwrap_or(0).min(count);
    for i in 0..received {
        let len = msgs[i].msg_len as usize;
        out[i] = Received {
            len: len.min(bufs[i].len()),
            truncated: len > bufs[i].len() || msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            pkttype: addrs[i].sll_pkttype,
        };
    }
    Ok(received)
}

/// Sends up to [`MMSG_MAX`] frames in one sendmmsg call without blocking,
/// each gathered from its two parts (virtio-net header, frame). Returns how
/// many the kernel took; the error of the first frame it refused (the
/// first of `frames` when it took none) is returned as `Err`.
pub fn send_frames(fd: BorrowedFd<'_>, frames: &[[IoSlice<'_>; 2]]) -> io::Result<usize> {
    let count = frames.len().min(MMSG_MAX);
    // SAFETY: `mmsghdr` is a plain C struct; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    for (msg, parts) in msgs.iter_mut().zip(&frames[..count]) {
        // The kernel only reads through msg_iov on send.
        msg.msg_hdr.msg_iov = parts.as_ptr().cast_mut().cast();
        msg.msg_hdr.msg_iovlen = parts.len();
    }
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec`; the first
    // `count` messages each point at two of them in `frames`, describing
    // live borrowed buffers that the kernel only reads; `frames` and `msgs`
    // outlive the call; no address is given (the socket is bound).
    let ret = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    Ok(usize::try_from(check(ret)?).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifname_bytes("tap0").is_ok());
        assert!(ifname_bytes("").is_err());
        assert!(ifname_bytes("a-name-that-is-too-long").is_err());
        assert!(ifname_bytes("bad/name").is_err());
        assert!(ifname_bytes("nul\0").is_err());
        let bytes = ifname_bytes("x".repeat(IFNAME_MAX).as_str()).unwrap();
        assert_eq!(bytes[IFNAME_MAX], 0, "the last byte stays NUL");
    }
}
