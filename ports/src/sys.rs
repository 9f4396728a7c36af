//! Every system call of the project, wrapped once. Linux only.
//!
//! Each wrapper checks what the kernel needs (buffer lengths, NUL-terminated
//! names, open descriptors) before the call and turns the C error convention
//! into `io::Result`. The rest of the crate stays in safe code. The module
//! is private: [`crate::tap`] is its only user and re-exports or wraps what
//! other crates need.
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
