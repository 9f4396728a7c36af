//! One pass over a descriptor chain: each descriptor read once out of the
//! guest's descriptor table, checked (direction, address range) and kept as
//! a host-side value; then volatile copies between those ranges and host
//! bytes. Nothing here forms a Rust reference into guest memory.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions};

/// One descriptor of a chain, as read once and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Which way the device moves bytes through a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Transmit: every descriptor must be device-readable.
    DeviceReads,
    /// Receive: every descriptor must be device-writable.
    DeviceWrites,
}

/// What is wrong with a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problem {
    /// Its range is not (all) inside guest memory.
    OutsideMemory,
    /// Its address plus its length passes the end of the address space.
    LengthWraps,
    /// It is writable on transmit or readable on receive.
    WrongDirection,
}

/// A descriptor that cannot be used, with where it is in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadDescriptor {
    pub(super) problem: Problem,
    /// Position in the chain, from 0.
    pub(super) index: usize,
    pub(super) addr: u64,
    pub(super) len: u32,
}

/// Appends the descriptors of `chain` to `segments`, each checked against
/// `direction` and the ranges of `mem`, and returns the chain's length in
/// bytes. On an error `segments` may hold part of the chain.
pub(super) fn collect<M, T>(
    mem: &M,
    chain: DescriptorChain<T>,
    direction: Direction,
    segments: &mut Vec<Segment>,
) -> Result<usize, BadDescriptor>
where
    M: GuestMemory + ?Sized,
    T: Deref,
    T::Target: GuestMemory,
{
    let access = match direction {
        Direction::DeviceReads => Permissions::Read,
        Direction::DeviceWrites => Permissions::Write,
    };
    let mut total = 0usize;
    for (index, desc) in chain.enumerate() {
        let addr = desc.addr().0;
        let len = desc.len();
        let bad = |problem| BadDescriptor {
            problem,
            index,
            addr,
            len,
        };
        let writable = desc.is_write_only();
        if writable != (direction == Direction::DeviceWrites) {
            return Err(bad(Problem::WrongDirection));
        }
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(bad(Problem::LengthWraps));
        }
        let len = usize::try_from(len).map_err(|_| bad(Problem::LengthWraps))?;
        if !mem.check_range(desc.addr(), len, access) {
            return Err(bad(Problem::OutsideMemory));
        }
        // The chain iterator stops before 2^32 bytes; this cannot overflow.
        total = total.saturating_add(len);
        segments.push(Segment {
            addr: desc.addr(),
            len,
        });
    }
    Ok(total)
}

/// Where a copy between guest memory and host bytes failed: the guest
/// range went away after it was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CopyFailed {
    pub(super) addr: u64,
    pub(super) len: usize,
}

/// Copies the bytes of `segments` into `out` (volatile reads out of guest
/// memory), as far as either goes; returns the bytes copied.
pub(super) fn read_into<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    out: &mut [u8],
) -> Result<usize, CopyFailed> {
    let mut done = 0;
    for segment in segments {
        let Some(dst) = out.get_mut(done..) else {
            break;
        };
        let take = segment.len.min(dst.len());
        let dst = dst.get_mut(..take).unwrap_or_default();
        // One region holds the range in all but odd layouts: copy out of
        // its slice (a memcpy under vm-memory's volatile access), and leave
        // ranges across regions (or behind an IOMMU) to the general path,
        // whose iterator costs more than the copy of a 4 KiB buffer.
        let direct = mem
            .physical_memory()
            .and_then(|memory| memory.get_slice(segment.addr, take).ok());
        match direct {
            Some(slice) if slice.len() == take => {
                slice.copy_to(dst);
            }
            _ => mem.read_slice(dst, segment.addr).map_err(|_| CopyFailed {
                addr: segment.addr.0,
                len: take,
            })?,
        }
        done += take;
    }
    Ok(done)
}

/// Copies from the front of `sources` into the ranges of `segments`
/// (volatile writes into guest memory) until either runs out, advancing the
/// sources; returns the bytes written.
pub(super) fn write_from<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    sources: &mut [&[u8]],
) -> Result<usize, CopyFailed> {
    let mut written = 0;
    for segment in segments {
        let mut at = 0;
        for source in sources.iter_mut() {
            let take = source.len().min(segment.len - at);
            if take == 0 {
                continue;
            }
            let (now, rest) = source.split_at(take);
            let addr = GuestAddress(segment.addr.0 + at as u64);
            let direct = mem
                .physical_memory()
                .and_then(|memory| memory.get_slice(addr, take).ok());
            match direct {
                Some(slice) if slice.len() == take => slice.copy_from(now),
                _ => mem.write_slice(now, addr).map_err(|_| CopyFailed {
                    addr: addr.0,
                    len: take,
                })?,
            }
            *source = rest;
            at += take;
            if at == segment.len {
                break;
            }
        }
        written += at;
        if at < segment.len {
            break;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn segment(addr: u64, len: usize) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn writes_cross_segments_and_sources_and_stop_where_either_ends() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let segments = [segment(0x100, 3), segment(0x200, 0), segment(0x300, 4)];
        let mut sources: [&[u8]; 3] = [b"ab", b"", b"cdefg"];
        assert_eq!(write_from(&mem, &segments, &mut sources), Ok(7));
        let mut out = [0u8; 7];
        assert_eq!(read_into(&mem, &segments, &mut out), Ok(7));
        assert_eq!(&out, b"abcdefg");
        // Sources run out first: the rest of the segments stay unwritten.
        let mut sources: [&[u8]; 1] = [b"xy"];
        assert_eq!(write_from(&mem, &segments, &mut sources), Ok(2));
        assert_eq!(read_into(&mem, &segments, &mut out), Ok(7));
        assert_eq!(&out, b"xycdefg");
        // The host buffer runs out first.
        let mut short = [0u8; 4];
        assert_eq!(read_into(&mem, &segments, &mut short), Ok(4));
        assert_eq!(&short, b"xycd");
    }

    #[test]
    fn a_range_across_two_regions_is_copied_too() {
        // Two adjacent regions: the direct slice of one region cannot hold
        // the range, so the copy takes the general path.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let segments = [segment(0xff0, 0x20)];
        let data: Vec<u8> = (0..0x20).collect();
        let mut sources: [&[u8]; 1] = [&data];
        assert_eq!(write_from(&mem, &segments, &mut sources), Ok(0x20));
        let mut out = [0u8; 0x20];
        assert_eq!(read_into(&mem, &segments, &mut out), Ok(0x20));
        assert_eq!(&out[..], &data[..]);
    }
}
