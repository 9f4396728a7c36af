//! A VMM's virtio-net device loop in miniature: two guests on one switch.
//!
//! Each "guest" is real guest memory (a `GuestMemoryMmap`, as rust-vmm VMMs
//! map guest RAM) holding a transmit and a receive virtqueue: descriptor
//! tables, available and used rings, and the buffers the guest driver posts
//! on them. The driver side is played by `guest::mock::DriverQueue`; the
//! device side is what a VMM writes: it pops descriptor chains from
//! virtio-queue `Queue`s, hands them with the guest memory to the
//! [`GuestPort`], puts them on the used ring, and waits on a notifier (an
//! eventfd in a real VMM) for frames the switch sends to the guest. No
//! reference into guest memory is ever formed: the port reads and writes
//! it with volatile copies.
//!
//! * Guest A negotiates every offload and mergeable receive buffers. It
//!   sends one 20 000-byte TCP segmentation (TSO) frame with a partial
//!   checksum.
//! * Guest B negotiates no receive offload: the switch segments A's frame
//!   and computes every checksum before B sees it.
//! * B answers with a frame whose checksum it leaves to the host (CSUM);
//!   A accepts partial checksums, so it arrives as it is, spread over
//!   several 1024-byte receive buffers (`num_buffers`). Then A turns its
//!   receive offloads off through the control queue, and the port
//!   completes the next such frame itself.
//!
//! Run with `cargo run -p vswitch --example embed`.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_ports::features::{Features, Negotiated};
use vswitch_ports::guest::mock::DriverQueue;
use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
use vswitch_ports::offload::checksum::{checksum, pseudo_header_ipv4};
use vswitch_ports::offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
use vswitch_ports::offload::VirtioNetHdr;

/// Size of each receive buffer a guest driver posts when it merges
/// buffers (frames may span several) and when it does not (a frame and its
/// header must fit one).
const RX_BUFFER_MERGEABLE: u32 = 1024;
const RX_BUFFER_SINGLE: u32 = 2048;
/// Receive buffers a guest keeps posted.
const RX_BUFFERS: usize = 64;
/// Descriptors per virtqueue.
const QUEUE_SIZE: u16 = 256;
/// Guest memory layout: both queues' rings, then the transmit buffers, then
/// the receive buffers.
const GUEST_RAM: usize = 4 << 20;
const TX_RINGS: GuestAddress = GuestAddress(0);
const RX_RINGS: GuestAddress = GuestAddress(0x1_0000);
const TX_DATA: GuestAddress = GuestAddress(0x10_0000);
const RX_DATA: GuestAddress = GuestAddress(0x20_0000);
const DATA_LEN: u64 = 0x10_0000;

/// What a device offers.
fn offered() -> Features {
    Features::VERSION_1
        | Features::CSUM
        | Features::GUEST_CSUM
        | Features::HOST_TSO4
        | Features::HOST_TSO6
        | Features::GUEST_TSO4
        | Features::GUEST_TSO6
        | Features::MRG_RXBUF
        | Features::CTRL_VQ
        | Features::CTRL_GUEST_OFFLOADS
        | Features::MTU
        | Features::MAC
}

/// One guest: its memory, the driver's side of its virtqueues, and the
/// device model's state for it.
struct Vm<'m> {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
    mem: &'m GuestMemoryMmap,
    /// The guest driver's side of its transmit and receive virtqueues.
    tx_driver: DriverQueue<'m, GuestMemoryMmap>,
    rx_driver: DriverQueue<'m, GuestMemoryMmap>,
    /// The device model's side of the same virtqueues.
    tx_queue: Queue,
    rx_queue: Queue,
    /// Receive buffers posted and not yet used by the device.
    rx_posted: usize,
    port: Arc<GuestPort>,
    notifier: Arc<CondvarNotifier>,
    rx_buffer: u32,
}

impl<'m> Vm<'m> {
    fn new(
        name: &'static str,
        host: u8,
        acked: Features,
        mem: &'m GuestMemoryMmap,
        switch: &Switch,
    ) -> Vm<'m> {
        let negotiated = Negotiated::new(offered(), acked).expect("the guest acks a valid set");
        println!(
            "{name}: acked {:#x}, header {} bytes, mergeable rx buffers: {}",
            acked.bits(),
            negotiated.header_len(),
            negotiated.mergeable_rx_buffers()
        );
        let notifier = Arc::new(CondvarNotifier::new());
        let port = Arc::new(GuestPort::new(
            GuestPortConfig::new(name),
            negotiated,
            notifier.clone(),
        ));
        let rx_buffer = if negotiated.mergeable_rx_buffers() {
            RX_BUFFER_MERGEABLE
        } else {
            RX_BUFFER_SINGLE
        };
        println!("{name}: egress capabilities {:?}", port_caps(&port));
        switch
            .add_port(port.clone(), PortProfile::access(VlanId::DEFAULT))
            .expect("port added");
        let tx_driver = DriverQueue::new(mem, TX_RINGS, QUEUE_SIZE, TX_DATA, DATA_LEN);
        let rx_driver = DriverQueue::new(mem, RX_RINGS, QUEUE_SIZE, RX_DATA, 2 * DATA_LEN);
        let (tx_queue, rx_queue) = (tx_driver.device_queue(), rx_driver.device_queue());
        assert!(tx_queue.is_valid(mem) && rx_queue.is_valid(mem));
        Vm {
            name,
            mac: [2, 0, 0, 0, 0, host],
            ip: [10, 0, 0, host],
            mem,
            tx_driver,
            rx_driver,
            tx_queue,
            rx_queue,
            rx_posted: 0,
            port,
            notifier,
            rx_buffer,
        }
    }

    /// The guest driver writes a header and a frame into two transmit
    /// buffers and posts them as one chain; the device model pops the
    /// chain, hands it to the port with the guest memory, and returns it on
    /// the used ring.
    fn guest_transmit(&mut self, hdr: VirtioNetHdr, frame: &[u8]) {
        let mut header = [0u8; 12];
        let header_len = self.port.header_format().size();
        hdr.emit(&mut header[..header_len], self.port.header_format())
            .expect("room for the header");
        self.tx_driver
            .post_readable(&[&header[..header_len], frame]);

        // The device model, woken by the guest's kick.
        while let Some(chain) = self.tx_queue.pop_descriptor_chain(self.mem) {
            let head = chain.head_index();
            match self.port.transmit_chain(self.mem, chain) {
                Ok(()) => println!(
                    "{}: transmitted {} bytes (gso_type {}, gso_size {}, needs_csum {})",
                    self.name,
                    frame.len(),
                    hdr.gso_type,
                    hdr.gso_size,
                    hdr.flags & FLAG_NEEDS_CSUM != 0
                ),
                Err(err) => println!("{}: transmit refused: {err}", self.name),
            }
            self.tx_queue
                .add_used(self.mem, head, 0)
                .expect("used ring in guest memory");
        }
        self.tx_driver.take_used();
    }

    /// The device loop's receive side: wait for the notifier, then fill
    /// the posted receive chains until the port has no more frames. The
    /// guest driver then reads header and frame out of the used buffers.
    fn device_receive(&mut self, wait: Duration) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut frames = Vec::new();
        while self.notifier.wait_timeout(wait) || self.port.rx_pending() {
            // The guest driver keeps RX_BUFFERS buffers posted.
            while self.rx_posted < RX_BUFFERS {
                self.rx_driver.post_writable(&[self.rx_buffer]);
                self.rx_posted += 1;
            }

            // The device model pops what is available...
            let mem = self.mem;
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
                std::iter::from_fn(|| self.rx_queue.pop_descriptor_chain(mem)).collect();
            let mut taken = 0;
            let mut used = Vec::new();
            loop {
                match self
                    .port
                    .receive_into_chains(mem, &chains[taken..], &mut used)
                {
                    Ok(Some(delivered)) => taken += delivered.buffers,
                    Ok(None) => break,
                    Err(err) if err.dropped_frame() => println!("{}: {err}", self.name),
                    // Out of posted buffers (or a chain the guest got
                    // wrong): hand these to the guest first.
                    Err(_) => break,
                }
            }
            // ...puts the chains it filled on the used ring and leaves the
            // others available for the next frames.
            for chain in &used {
                self.rx_queue
                    .add_used(mem, chain.head_index, chain.len)
                    .expect("used ring in guest memory");
            }
            for _ in taken..chains.len() {
                self.rx_queue.go_to_previous_position();
            }
            self.rx_posted -= taken;

            // The guest driver side: one frame per first buffer, possibly
            // spread over several (num_buffers).
            let format = self.port.header_format();
            let mut entries = self.rx_driver.take_used().into_iter();
            while let Some((head, len)) = entries.next() {
                let mut bytes = self.rx_driver.read_chain(head, len as usize);
                let (hdr, header_len) = VirtioNetHdr::parse(&bytes, format).expect("header");
                for _ in 1..hdr.num_buffers.max(1) {
                    let (head, len) = entries.next().expect("num_buffers buffers used");
                    bytes.extend(self.rx_driver.read_chain(head, len as usize));
                }
                frames.push((hdr, bytes[header_len..].to_vec()));
            }
        }
        frames
    }
}

fn port_caps(port: &GuestPort) -> vswitch_ports::PortCapabilities {
    use vswitch_ports::Port;
    port.capabilities()
}

/// A TCP/IPv4 frame from `from` to `to` with `payload_len` bytes; the TCP
/// checksum is left partial (pseudo-header seed) when `partial`.
fn tcp_frame(from: &Vm<'_>, to: &Vm<'_>, payload_len: usize, partial: bool) -> Vec<u8> {
    let frame = FrameBuilder::tcp4(from.ip, to.ip)
        .macs(from.mac, to.mac)
        .ports(40000, 5201)
        .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
        .payload_with(payload_len, |i| i as u8);
    if partial {
        frame.partial_checksum().build()
    } else {
        frame.build()
    }
}

/// Whether a received TCP/IPv4 frame's checksums are complete and right.
fn checksums_ok(frame: &[u8]) -> bool {
    let (Some(ip), Some(tcp)) = (frame.get(14..34), frame.get(34..)) else {
        return false;
    };
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let Ok(tcp_len) = u16::try_from(tcp.len()) else {
        return false;
    };
    let mut sum = pseudo_header_ipv4(src, dst, 6, tcp_len);
    sum.add_bytes(tcp);
    checksum(ip) == 0 && sum.finish() == 0
}

fn describe(name: &str, frames: &[(VirtioNetHdr, Vec<u8>)]) {
    let ok = frames.iter().filter(|(_, f)| checksums_ok(f)).count();
    let partial = frames
        .iter()
        .filter(|(h, _)| h.flags & FLAG_NEEDS_CSUM != 0)
        .count();
    let largest = frames.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    println!(
        "{name}: received {} frames (largest {largest} bytes), {ok} with complete checksums, {partial} with NEEDS_CSUM",
        frames.len()
    );
}

fn guest_ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)]).expect("anonymous guest memory")
}

fn main() {
    let switch = Switch::start(SwitchConfig::default().workers(2)).expect("switch starts");
    let (ram_a, ram_b) = (guest_ram(), guest_ram());
    let mut a = Vm::new("vm-a", 1, offered(), &ram_a, &switch);
    let mut b = Vm::new(
        "vm-b",
        2,
        Features::VERSION_1 | Features::CSUM,
        &ram_b,
        &switch,
    );
    let wait = Duration::from_millis(200);

    // A sends a 20 000-byte TSO frame; B cannot take TSO or partial
    // checksums, so the switch cuts and checksums it.
    let big = tcp_frame(&a, &b, 20_000, true);
    let tso = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    a.guest_transmit(tso, &big);
    let at_b = b.device_receive(wait);
    describe(b.name, &at_b);
    let payload: Vec<u8> = at_b.iter().flat_map(|(_, f)| f[54..].to_vec()).collect();
    println!(
        "{}: reassembled payload matches: {}",
        b.name,
        payload == big[54..]
    );

    // B may not send TSO (it did not negotiate HOST_TSO4): refused.
    b.guest_transmit(tso, &tcp_frame(&b, &a, 5_000, true));

    // B answers with a partial checksum; A takes it as it is.
    let partial = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    };
    b.guest_transmit(partial, &tcp_frame(&b, &a, 1_400, true));
    let at_a = a.device_receive(wait);
    describe(a.name, &at_a);
    if let Some((hdr, _)) = at_a.first() {
        println!(
            "{}: num_buffers {} for a {}-byte frame in {}-byte buffers",
            a.name,
            hdr.num_buffers,
            at_a[0].1.len(),
            a.rx_buffer
        );
    }

    // A turns its receive offloads off (control queue GUEST_OFFLOADS_SET
    // with 0); the port completes the checksum of the next frame itself.
    let now = a
        .port
        .set_guest_offloads(0)
        .expect("offload control negotiated");
    println!("{}: receive offloads now {now:?}", a.name);
    b.guest_transmit(partial, &tcp_frame(&b, &a, 1_000, true));
    let at_a = a.device_receive(wait);
    describe(a.name, &at_a);

    for vm in [&a, &b] {
        println!("{}: {:?}", vm.name, vm.port.stats());
    }
    let stats = switch.shutdown();
    for port in &stats.ports {
        println!(
            "switch port {}: rx {} tx {} frames, drops {}",
            port.name,
            port.stats.rx_frames,
            port.stats.tx_frames,
            port.stats.drops.total()
        );
    }
}
