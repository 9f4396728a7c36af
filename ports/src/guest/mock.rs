//! The driver side of a split virtqueue in guest memory, for tests and for
//! examples of embedders (behind the `test-utils` feature, as virtio-queue's
//! own `mock`).
//!
//! A [`DriverQueue`] lays out a descriptor table and the available and used
//! rings in guest memory (with virtio-queue's [`MockSplitQueue`]), posts
//! buffers as a guest driver would, and reads back what the device wrote.
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

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

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
    rings: MockSplitQueue<'a, M>,
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
        DriverQueue {
            mem,
            rings: MockSplitQueue::create(mem, rings, size),
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
        self.rings
            .create_queue::<Queue>()
            .expect("the mock lays out a valid queue")
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
            self.rings
                .desc_table()
                .store(index, raw)
                .expect("descriptor index inside the table");
        }
        let avail = self.rings.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .expect("ring index inside the ring")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
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
            let raw = self
                .rings
                .desc_table()
                .load(index)
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
        let used = self.rings.used();
        let idx = used.idx().load();
        let mut entries = Vec::new();
        while self.used_seen != idx {
            let elem = used
                .ring()
                .ref_at(usize::from(self.used_seen % self.size))
                .expect("ring index inside the ring")
                .load();
            entries.push((elem.id() as u16, elem.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        entries
    }

    /// Writes the available ring's index as a broken or hostile driver
    /// would, without posting anything.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.rings.avail().idx().store(idx);
    }

    /// Puts `head` on the available ring as it is, whether or not it names
    /// a descriptor of the table.
    pub fn post_head(&mut self, head: u16) {
        let avail = self.rings.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .expect("ring index inside the ring")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &'a M {
        self.mem
    }
}
