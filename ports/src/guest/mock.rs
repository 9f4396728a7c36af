//! The driver side of a split virtqueue in guest memory, for tests and for
//! examples of embedders (behind the `test-utils` feature, as virtio-queue's
//! own `mock`).
//!
//! A [`DriverQueue`] lays out a descriptor table and the available and used
//! rings in guest memory as the virtio specification places them (each
//! ring after the previous one, the used ring 4-byte aligned), posts
//! buffers as a guest driver would, and reads back what the device wrote.
//!
//! It does not use virtio-queue's `MockSplitQueue`: in virtio-queue 0.18
//! that mock computes the end of a ring from its element count instead of
//! its size in bytes, so its used ring starts inside the available ring
//! (at `avail + 4 + size`): the device's used-ring writes then overwrite
//! available entries the driver posted, which surfaces as chains with a
//! head outside the table, used entries of length 0 or frames read from
//! the wrong buffer, whenever a device takes fewer chains than it popped.
//! The device side is a real [`Queue`] built over the same rings
//! ([`DriverQueue::device_queue`]), so the code under test pops
//! [`DescriptorChain`](virtio_queue::DescriptorChain)s exactly as a VMM
//! does.
//!
//! ```
//! use virtio_queue::QueueT;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vswitch_ports::guest::mock::DriverQueue;
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut driver = DriverQueue::new(&mem, GuestAddress(0), 16, GuestAddress(0x1_0000), 0x1_0000);
//! let head = driver.post_readable(&[b"abc", b"de"]);
//! let mut device = driver.device_queue();
//! let chain = device.pop_descriptor_chain(&mem).unwrap();
//! assert_eq!(chain.head_index(), head);
//! assert_eq!(chain.map(|d| d.len()).sum::<u32>(), 5);
//! ```

use std::sync::atomic::{fence, Ordering};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::needs_event;

/// One descriptor as the driver writes it (the `next` link is filled in by
/// [`DriverQueue::post`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// Device-writable (receive buffers) rather than device-readable.
    pub write_only: bool,
}

impl Desc {
    /// A device-readable descriptor.
    pub fn readable(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write_only: false,
        }
    }

    /// A device-writable descriptor.
    pub fn writable(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write_only: true,
        }
    }
}

/// A split virtqueue seen from the guest driver. Panics on misuse (it is a
/// test helper): a ring outside guest memory, or more in flight than the
/// queue or the data area holds.
pub struct DriverQueue<'a, M: GuestMemory> {
    mem: &'a M,
    layout: Layout,
    size: u16,
    next_desc: u16,
    data_start: u64,
    data_end: u64,
    data_next: u64,
    used_seen: u16,
}

impl<'a, M: GuestMemory> DriverQueue<'a, M> {
    /// A queue of `size` descriptors with its table and rings at `rings`,
    /// posting buffers in the `data_len` bytes at `data`. Descriptors and
    /// buffer space are reused round-robin: a test keeps fewer in flight
    /// than the queue and the data area hold.
    pub fn new(
        mem: &'a M,
        rings: GuestAddress,
        size: u16,
        data: GuestAddress,
        data_len: u64,
    ) -> Self {
        assert!(
            size.is_power_of_two(),
            "a split queue's size is a power of 2"
        );
        let layout = Layout::new(rings, size);
        // A fresh queue: flags, indexes and event fields 0.
        let zeroes = vec![0u8; (layout.end.0 - rings.0) as usize];
        mem.write_slice(&zeroes, rings)
            .expect("the rings are inside guest memory");
        DriverQueue {
            mem,
            layout,
            size,
            next_desc: 0,
            data_start: data.0,
            data_end: data.0 + data_len,
            data_next: data.0,
            used_seen: 0,
        }
    }

    /// The device side: a ready [`Queue`] over the same rings.
    pub fn device_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).expect("a power-of-2 queue size");
        let Layout {
            desc, avail, used, ..
        } = self.layout;
        // The transport writes each address as two 32-bit halves.
        let halves = |addr: GuestAddress| (Some(addr.0 as u32), Some((addr.0 >> 32) as u32));
        let (low, high) = halves(desc);
        queue.set_desc_table_address(low, high);
        let (low, high) = halves(avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = halves(used);
        queue.set_used_ring_address(low, high);
        queue.set_size(self.size);
        queue.set_ready(true);
        queue
    }

    /// Where the descriptor table, the available ring and the used ring
    /// lie, for a transport that gives them to the device (vhost-user's
    /// `SET_VRING_ADDR`).
    pub fn ring_addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.layout.desc, self.layout.avail, self.layout.used)
    }

    /// Guest memory for one buffer of `len` bytes in the data area.
    pub fn alloc(&mut self, len: usize) -> GuestAddress {
        let len = len as u64;
        assert!(
            len <= self.data_end - self.data_start,
            "buffer larger than the data area"
        );
        if self.data_next + len > self.data_end {
            self.data_next = self.data_start;
        }
        let addr = self.data_next;
        // Keep buffers 8-byte aligned, as drivers do.
        self.data_next = (addr + len + 7) & !7;
        GuestAddress(addr)
    }

    /// Writes `descs` as one chain into the descriptor table and makes it
    /// available; returns its head index.
    pub fn post(&mut self, descs: &[Desc]) -> u16 {
        assert!(!descs.is_empty() && descs.len() <= usize::from(self.size));
        let head = self.next_desc;
        for (i, desc) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = 0;
            if desc.write_only {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                self.next_desc
            } else {
                0
            };
            let raw = RawDescriptor::from(Descriptor::new(desc.addr, desc.len, flags, next));
            self.mem
                .write_obj(raw, self.layout.descriptor(index))
                .expect("descriptor index inside the table");
        }
        self.post_head(head);
        head
    }

    /// Copies `pieces` into the data area and posts them as one
    /// device-readable chain, one descriptor per piece (a transmit
    /// buffer); returns its head index.
    pub fn post_readable(&mut self, pieces: &[&[u8]]) -> u16 {
        let descs: Vec<Desc> = pieces
            .iter()
            .map(|piece| {
                let addr = self.alloc(piece.len());
                self.mem
                    .write_slice(piece, addr)
                    .expect("the data area is guest memory");
                Desc::readable(addr.0, piece.len() as u32)
            })
            .collect();
        self.post(&descs)
    }

    /// Posts one device-writable chain of descriptors of `lens` bytes each,
    /// zeroed (a receive buffer); returns its head index.
    pub fn post_writable(&mut self, lens: &[u32]) -> u16 {
        let descs: Vec<Desc> = lens
            .iter()
            .map(|&len| {
                let addr = self.alloc(len as usize);
                self.mem
                    .write_slice(&vec![0u8; len as usize], addr)
                    .expect("the data area is guest memory");
                Desc::writable(addr.0, len)
            })
            .collect();
        self.post(&descs)
    }

    /// The chain at `head` as it is in the descriptor table now.
    pub fn chain(&self, head: u16) -> Vec<Desc> {
        let mut descs = Vec::new();
        let mut index = head;
        for _ in 0..self.size {
            let raw: RawDescriptor = self
                .mem
                .read_obj(self.layout.descriptor(index))
                .expect("descriptor index inside the table");
            let desc = Descriptor::from(raw);
            descs.push(Desc {
                addr: desc.addr().0,
                len: desc.len(),
                write_only: desc.is_write_only(),
            });
            if !desc.has_next() {
                break;
            }
            index = desc.next();
        }
        descs
    }

    /// The first `len` bytes of the buffers of the chain at `head`, in
    /// order (what the guest driver reads after the device used it).
    pub fn read_chain(&self, head: u16, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for desc in self.chain(head) {
            let take = (len - out.len()).min(desc.len as usize);
            let mut piece = vec![0u8; take];
            self.mem
                .read_slice(&mut piece, GuestAddress(desc.addr))
                .expect("the chain is in guest memory");
            out.extend_from_slice(&piece);
            if out.len() == len {
                break;
            }
        }
        out
    }

    /// Entries the device added to the used ring since the last call, as
    /// (head index, length).
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.used_idx();
        let mut entries = Vec::new();
        while self.used_seen != idx {
            let elem = self.layout.used_elem(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(elem).expect("used ring in guest memory");
            let len: u32 = self
                .mem
                .read_obj(elem.unchecked_add(4))
                .expect("used ring in guest memory");
            entries.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        entries
    }

    /// Writes the available ring's index as a broken or hostile driver
    /// would, without posting anything.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mem
            .store(idx, self.layout.avail_idx(), Ordering::Release)
            .expect("the available ring is inside guest memory");
    }

    /// Puts `head` on the available ring as it is, whether or not it names
    /// a descriptor of the table.
    pub fn post_head(&mut self, head: u16) {
        let idx = self.avail_idx();
        self.mem
            .write_obj(head, self.layout.avail_entry(idx % self.size))
            .expect("the available ring is inside guest memory");
        // The entry before the index, as a driver's write barrier orders it.
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// Writes the available ring's `used_event` field: with
    /// `VIRTIO_RING_F_EVENT_IDX`, the used index after which the driver
    /// wants to be signalled.
    pub fn set_used_event(&mut self, idx: u16) {
        let at = self.layout.avail_entry(self.size);
        self.mem
            .store(idx.to_le(), at, Ordering::Release)
            .expect("the available ring is inside guest memory");
    }

    /// The available ring's index: how many chains the driver has made
    /// available, modulo 2^16.
    pub fn avail_idx(&self) -> u16 {
        self.mem
            .load(self.layout.avail_idx(), Ordering::Acquire)
            .expect("the available ring is inside guest memory")
    }

    /// Whether the device asked to be kicked for the chains made available
    /// since the available index was `old` (the index when the driver
    /// last decided whether to kick), as a virtio driver decides after it
    /// published them: with `VIRTIO_RING_F_EVENT_IDX` (`event_idx`), when
    /// the used ring's `avail_event` lies in `[old, now)`; without it,
    /// unless the device set `VRING_USED_F_NO_NOTIFY` in the used ring's
    /// flags. A full fence orders the index written before the device's
    /// field is read, as the driver's `virtio_mb` does: a device that
    /// re-enables kicks and then looks at the ring once more either sees
    /// the chains or is kicked for them.
    pub fn needs_kick(&self, old: u16, event_idx: bool) -> bool {
        fence(Ordering::SeqCst);
        let now = self.avail_idx();
        if event_idx {
            let event = u16::from_le(
                self.mem
                    .load(self.layout.avail_event(self.size), Ordering::Acquire)
                    .expect("the used ring is inside guest memory"),
            );
            needs_event(event, now, old)
        } else {
            let flags = u16::from_le(
                self.mem
                    .load(self.layout.used, Ordering::Acquire)
                    .expect("the used ring is inside guest memory"),
            );
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// With `VIRTIO_RING_F_EVENT_IDX`: asks to be signalled for the next
    /// used entry (`used_event` = the entries taken so far), as a driver
    /// does before it sleeps, and returns whether entries came already, in
    /// which case it should take them rather than sleep (the device may
    /// have looked at `used_event` before it changed).
    pub fn arm_signal(&mut self) -> bool {
        self.set_used_event(self.used_seen);
        fence(Ordering::SeqCst);
        self.used_idx() != self.used_seen
    }

    /// The used ring's index, as the device last published it.
    fn used_idx(&self) -> u16 {
        self.mem
            .load(self.layout.used_idx(), Ordering::Acquire)
            .expect("the used ring is inside guest memory")
    }

    /// Sets or clears `VRING_AVAIL_F_NO_INTERRUPT` in the available ring's
    /// flags: without `VIRTIO_RING_F_EVENT_IDX`, the driver asks not to be
    /// signalled.
    pub fn suppress_interrupts(&mut self, on: bool) {
        self.mem
            .store(u16::from(on).to_le(), self.layout.avail, Ordering::Release)
            .expect("the available ring is inside guest memory");
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &'a M {
        self.mem
    }
}

/// Where a split queue's parts lie in guest memory (virtio 1.x, 2.7): the
/// descriptor table (16 bytes a descriptor), then the available ring
/// (flags, idx, `size` entries of 2 bytes, used_event), then, 4-byte
/// aligned, the used ring (flags, idx, `size` entries of 8 bytes,
/// avail_event).
#[derive(Debug, Clone, Copy)]
struct Layout {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    end: GuestAddress,
}

impl Layout {
    fn new(start: GuestAddress, size: u16) -> Layout {
        let size = u64::from(size);
        let avail = start.unchecked_add(16 * size);
        let used = GuestAddress((avail.0 + 4 + 2 * size + 2 + 3) & !3);
        Layout {
            desc: start,
            avail,
            used,
            end: used.unchecked_add(4 + 8 * size + 2),
        }
    }

    fn descriptor(&self, index: u16) -> GuestAddress {
        self.desc.unchecked_add(16 * u64::from(index))
    }

    fn avail_idx(&self) -> GuestAddress {
        self.avail.unchecked_add(2)
    }

    fn avail_entry(&self, slot: u16) -> GuestAddress {
        self.avail.unchecked_add(4 + 2 * u64::from(slot))
    }

    fn used_idx(&self) -> GuestAddress {
        self.used.unchecked_add(2)
    }

    fn used_elem(&self, slot: u16) -> GuestAddress {
        self.used.unchecked_add(4 + 8 * u64::from(slot))
    }

    /// The used ring's last field, after its `size` entries.
    fn avail_event(&self, size: u16) -> GuestAddress {
        self.used_elem(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestMemoryMmap;

    /// The rings do not overlap: a device that pops every posted chain,
    /// returns some and leaves the rest for later (rewinding) sees each
    /// chain as the driver posted it, whatever the used ring holds. With
    /// a used ring inside the available ring, this fails at the entry the
    /// used index overwrites.
    #[test]
    fn used_ring_writes_leave_posted_chains_alone() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let size = 256;
        let mut driver = DriverQueue::new(
            &mem,
            GuestAddress(0x1000),
            size,
            GuestAddress(0x8_0000),
            0x8_0000,
        );
        let mut device = driver.device_queue();
        let mut expected = std::collections::VecDeque::new();
        for round in 0..40u32 {
            while expected.len() < 64 {
                expected.push_back(driver.post_writable(&[64]));
            }
            let heads: Vec<u16> =
                std::iter::from_fn(|| device.pop_descriptor_chain(&mem).map(|c| c.head_index()))
                    .collect();
            assert_eq!(heads, Vec::from(expected.clone()), "round {round}");
            // Return a few, leave the others available.
            let taken = 1 + (round as usize * 7) % 20;
            for &head in &heads[..taken] {
                device.add_used(&mem, head, 64).unwrap();
                assert_eq!(expected.pop_front(), Some(head));
            }
            for _ in taken..heads.len() {
                device.go_to_previous_position();
            }
            let used: Vec<u16> = driver.take_used().into_iter().map(|(h, _)| h).collect();
            assert_eq!(used, heads[..taken].to_vec());
        }
    }

    #[test]
    fn the_layout_follows_the_specification() {
        let layout = Layout::new(GuestAddress(0x1_0000), 256);
        assert_eq!(layout.avail.0, 0x1_0000 + 4096);
        // 4 + 512 + 2 bytes of available ring, rounded up to 4.
        assert_eq!(layout.used.0, 0x1_0000 + 4096 + 520);
        assert_eq!(layout.end.0, layout.used.0 + 4 + 2048 + 2);
    }

    /// The driver kicks and sleeps as the device's event fields say, read
    /// by virtio-queue's device side: a kick for chains the device asked
    /// for (its `avail_event` in the new range), none while it did not
    /// re-enable them; a signal only once the driver armed it.
    #[test]
    fn event_idx_kicks_and_signals_follow_the_devices_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut driver = DriverQueue::new(
            &mem,
            GuestAddress(0x1000),
            16,
            GuestAddress(0x8_0000),
            0x8_0000,
        );
        let mut device = driver.device_queue();
        device.set_event_idx(true);
        // avail_event starts at 0: the first chain is kicked for.
        driver.post_writable(&[64]);
        assert!(driver.needs_kick(0, true));
        let head = device.pop_descriptor_chain(&mem).unwrap().head_index();
        // The device, busy, has not re-enabled kicks: none for more.
        driver.post_writable(&[64]);
        assert!(!driver.needs_kick(1, true));
        // Re-enabled (avail_event = what it has seen, 1): kicked for the
        // chains from index 1 on, once.
        assert!(device.enable_notification(&mem).unwrap(), "one waits");
        driver.post_writable(&[64]);
        assert!(driver.needs_kick(1, true));
        assert!(!driver.needs_kick(3, true));

        // Not armed (used_event 0 and one entry already past it): no
        // signal for a second entry.
        device.add_used(&mem, head, 64).unwrap();
        assert!(device.needs_notification(&mem).unwrap(), "used_event 0");
        assert_eq!(driver.take_used().len(), 1);
        let second = device.pop_descriptor_chain(&mem).unwrap().head_index();
        device.add_used(&mem, second, 64).unwrap();
        assert!(!device.needs_notification(&mem).unwrap());
        // Armed after it came: told to take it instead of sleeping.
        assert!(driver.arm_signal());
        assert_eq!(driver.take_used().len(), 1);
        // Armed with nothing new: the next entry signals.
        assert!(!driver.arm_signal());
        let third = device.pop_descriptor_chain(&mem).unwrap().head_index();
        device.add_used(&mem, third, 64).unwrap();
        assert!(device.needs_notification(&mem).unwrap());

        // Without EVENT_IDX, the used ring's NO_NOTIFY flag decides.
        let mut plain = driver.device_queue();
        plain.disable_notification(&mem).unwrap();
        assert!(!driver.needs_kick(0, false));
        plain.enable_notification(&mem).unwrap();
        assert!(driver.needs_kick(0, false));
    }
}
