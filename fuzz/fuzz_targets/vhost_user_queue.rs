//! A hostile guest: every byte of its memory (descriptor table, rings,
//! buffers) comes from the fuzzer, and the device side of a queue pair
//! serves it. The invariant: no panic, no endless loop, and each call
//! either makes bounded progress or reports the queue broken.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch_offload::Packet;
use vswitch_ports::features::Features;
use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
use vswitch_ports::vhost_user::{negotiate, queue};
use vswitch_ports::Port;

const MEMORY: usize = 64 * 1024;
const SIZE: u16 = 16;

fn ring(mem: &GuestMemoryMmap, base: u64) -> Queue {
    let mut queue = Queue::new(SIZE).expect("a power of two");
    queue.set_desc_table_address(Some(base as u32), Some(0));
    queue.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    queue.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    queue.set_ready(true);
    let _ = mem;
    queue
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, memory)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    mem.write_slice(&memory[..memory.len().min(MEMORY)], GuestAddress(0))
        .unwrap();
    let mut acked = Features::VERSION_1 | Features::CSUM | Features::HOST_TSO4;
    if knobs & 1 != 0 {
        acked |= Features::MRG_RXBUF;
    }
    if knobs & 2 != 0 {
        acked |= Features::GUEST_CSUM | Features::GUEST_TSO4;
    }
    let negotiated = negotiate(1, acked.bits()).unwrap();
    let port = GuestPort::new(
        GuestPortConfig::new("fuzz").queue_len(8),
        negotiated,
        Arc::new(CondvarNotifier::new()),
    );
    let pair = port.queue(0).unwrap();
    let mut rx = ring(&mem, 0x0);
    let mut tx = ring(&mem, 0x400);
    if knobs & 4 != 0 {
        rx.set_event_idx(true);
        tx.set_event_idx(true);
    }
    let mut heads = Vec::new();
    let mut used = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..4 {
        if let Ok(done) = queue::drain_tx(1, &mut tx, &&mem, pair, 32, &mut heads) {
            assert!(done.frames <= 32);
        }
        let _ = port.receive(0, &mut batch, 64);
        // What the guest sent goes back to it, as a switch would send it.
        for packet in batch.drain(..) {
            let _ = port.send(0, Packet::plain(packet.data));
        }
        let _ = port.send(0, Packet::plain(vec![0xab; 60 + usize::from(knobs)]));
        if let Ok(done) = queue::fill_rx(0, &mut rx, &&mem, pair, 32, &mut used) {
            assert!(done.frames <= 32);
        }
    }
});
