//! One pass over a descriptor chain: each descriptor read once out of the
//! guest's descriptor table, checked (direction, address range) and kept as
//! a host-side value; then volatile copies between those ranges and host
//! bytes. Nothing here forms a Rust reference into guest memory.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::bitmap::BS;

use super::lend::Piece;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, Permissions, VolatileSlice,
};

/// One descriptor of a chain, as read once and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) addr: GuestAddress,
    pub(super) len: usize,
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

/// The guest memory region of the last range looked up: the buffers of a
/// frame (every descriptor of its chains) nearly always lie in one region,
/// so each range is tried against that region before a look-up over all
/// of them. Kept for one frame's chains, which it must not outlive.
pub(super) struct Regions<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    last: Option<&'m <M::PhysicalMemory as GuestMemoryBackend>::R>,
}

/// The bitmap slice type of a region of `M`'s physical memory.
type RegionBitmap<'m, M> =
    BS<'m, <<<M as GuestMemory>::PhysicalMemory as GuestMemoryBackend>::R as GuestMemoryRegion>::B>;

impl<'m, M: GuestMemory + ?Sized> Regions<'m, M> {
    pub(super) fn new(mem: &'m M) -> Self {
        Regions { mem, last: None }
    }

    /// The `len` bytes at `addr` as a slice of the one region that holds
    /// them all, or `None` when no region does (they span two, or are not
    /// guest memory, or the memory is behind an IOMMU).
    fn slice(
        &mut self,
        addr: GuestAddress,
        len: usize,
    ) -> Option<VolatileSlice<'m, RegionBitmap<'m, M>>> {
        let within = |region: &'m <M::PhysicalMemory as GuestMemoryBackend>::R| {
            let offset = addr.checked_offset_from(region.start_addr())?;
            region.get_slice(MemoryRegionAddress(offset), len).ok()
        };
        if let Some(slice) = self.last.and_then(within) {
            return Some(slice);
        }
        let region = self.mem.physical_memory()?.find_region(addr)?;
        self.last = Some(region);
        within(region)
    }
}

/// Appends the descriptors of `chain` to `segments`, each checked against
/// `direction` and the ranges of guest memory, and returns the chain's
/// length in bytes. On an error `segments` may hold part of the chain.
pub(super) fn collect<M, T>(
    regions: &mut Regions<'_, M>,
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
        let inside = regions.slice(desc.addr(), len).is_some()
            || regions.mem.check_range(desc.addr(), len, access);
        if !inside {
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
    regions: &mut Regions<'_, M>,
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
        match regions.slice(segment.addr, take) {
            Some(slice) => {
                slice.copy_to(dst);
            }
            None => regions
                .mem
                .read_slice(dst, segment.addr)
                .map_err(|_| CopyFailed {
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
/// sources; returns the bytes written. A source is host bytes or another
/// guest's memory (a lent payload, [`super::lend`]), copied from volatile
/// slice to volatile slice.
pub(super) fn write_from<M: GuestMemory + ?Sized>(
    regions: &mut Regions<'_, M>,
    segments: &[Segment],
    sources: &mut [Piece<'_>],
) -> Result<usize, CopyFailed> {
    let mut written = 0;
    for segment in segments {
        let mut at = 0;
        for source in sources.iter_mut() {
            let take = source.len().min(segment.len - at);
            if take == 0 {
                continue;
            }
            let addr = GuestAddress(segment.addr.0 + at as u64);
            let failed = CopyFailed {
                addr: addr.0,
                len: take,
            };
            match source {
                Piece::Host(bytes) => {
                    let (now, rest) = bytes.split_at(take);
                    match regions.slice(addr, take) {
                        Some(slice) => slice.copy_from(now),
                        None => regions.mem.write_slice(now, addr).map_err(|_| failed)?,
                    }
                    *bytes = rest;
                }
                Piece::Guest(slice) => {
                    let now = slice.subslice(0, take).map_err(|_| failed)?;
                    match regions.slice(addr, take) {
                        Some(dst) => now.copy_to_volatile_slice(dst),
                        None => write_across_regions(regions.mem, &now, addr, failed)?,
                    }
                    *slice = slice.offset(take).map_err(|_| failed)?;
                }
            }
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

/// Copies `src` to `addr` of `mem` where no one region holds the range,
/// through a small host buffer.
fn write_across_regions<M: GuestMemory + ?Sized>(
    mem: &M,
    src: &VolatileSlice<'_, ()>,
    addr: GuestAddress,
    failed: CopyFailed,
) -> Result<(), CopyFailed> {
    let mut bounce = [0u8; 4096];
    let mut done = 0;
    while done < src.len() {
        let n = (src.len() - done).min(bounce.len());
        let part = src.subslice(done, n).map_err(|_| failed)?;
        part.copy_to(&mut bounce[..n]);
        mem.write_slice(&bounce[..n], GuestAddress(addr.0 + done as u64))
            .map_err(|_| failed)?;
        done += n;
    }
    Ok(())
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
        let mut sources = [Piece::Host(b"ab"), Piece::Host(b""), Piece::Host(b"cdefg")];
        assert_eq!(
            write_from(&mut Regions::new(&mem), &segments, &mut sources),
            Ok(7)
        );
        let mut out = [0u8; 7];
        assert_eq!(
            read_into(&mut Regions::new(&mem), &segments, &mut out),
            Ok(7)
        );
        assert_eq!(&out, b"abcdefg");
        // Sources run out first: the rest of the segments stay unwritten.
        let mut sources = [Piece::Host(b"xy")];
        assert_eq!(
            write_from(&mut Regions::new(&mem), &segments, &mut sources),
            Ok(2)
        );
        assert_eq!(
            read_into(&mut Regions::new(&mem), &segments, &mut out),
            Ok(7)
        );
        assert_eq!(&out, b"xycdefg");
        // The host buffer runs out first.
        let mut short = [0u8; 4];
        assert_eq!(
            read_into(&mut Regions::new(&mem), &segments, &mut short),
            Ok(4)
        );
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
        let mut sources = [Piece::Host(&data)];
        assert_eq!(
            write_from(&mut Regions::new(&mem), &segments, &mut sources),
            Ok(0x20)
        );
        let mut out = [0u8; 0x20];
        assert_eq!(
            read_into(&mut Regions::new(&mem), &segments, &mut out),
            Ok(0x20)
        );
        assert_eq!(&out[..], &data[..]);
    }
}
