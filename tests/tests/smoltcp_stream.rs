//! Two smoltcp TCP/IP stacks on two switch ports exchange a 10 MB stream,
//! with an MTU change half-way, and the data is checked byte for byte.
//!
//! The MTU change: after the first 5 MB at MTU 1500 on both sides, host B's
//! link is re-plugged with MTU 1280: its switch port is removed and a new
//! one declaring an egress MTU of 1280 takes its place, and B's stack comes
//! back on a device with the smaller MTU (same MAC and IP address, as a
//! guest whose NIC was reconfigured). smoltcp fixes a connection's MSS at
//! the handshake, so the rest of the stream goes over a new connection, on
//! which B's SYN advertises MSS 1240 and A (still at MTU 1500) must send
//! smaller segments. The test checks the segment sizes on B's side before
//! and after, that the switch never had to drop a frame over B's new MTU,
//! and that the 10 MB arrive intact and in order.
//!
//! (A connection whose MSS is not renegotiated would black-hole here: the
//! switch drops plain frames larger than the egress MTU, since it sends no
//! ICMP for path MTU discovery, and counts them as `exceeds_mtu`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use vswitch::{DropReason, PortId, PortProfile, Switch, SwitchConfig, VlanId};
use vswitch_ports::smoltcp_port::{smoltcp_port, SmoltcpDevice};

const TOTAL: usize = 10 * 1024 * 1024;
const SOCKET_BUFFER: usize = 1024 * 1024;
/// The whole test fails past this; it takes about a second unoptimised.
const TIME_LIMIT: Duration = Duration::from_secs(20);

const IP_A: IpAddress = IpAddress::v4(10, 0, 0, 1);
const IP_B: IpAddress = IpAddress::v4(10, 0, 0, 2);

struct Host {
    iface: Interface,
    device: SmoltcpDevice,
    sockets: SocketSet<'static>,
}

fn smol_now(start: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64)
}

fn host(mut device: SmoltcpDevice, mac: [u8; 6], ip: IpAddress, start: Instant) -> Host {
    let config = Config::new(EthernetAddress(mac).into());
    let mut iface = Interface::new(config, &mut device, smol_now(start));
    iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(ip, 24)).unwrap());
    Host {
        iface,
        device,
        sockets: SocketSet::new(Vec::new()),
    }
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    )
}

/// Deterministic, non-repeating test data (xorshift64).
fn stream_data(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `data` from A to B over a new connection to `port` and returns
/// what B received once A's side is fully acknowledged.
fn transfer(a: &mut Host, b: &mut Host, data: &[u8], port: u16, start: Instant) -> Vec<u8> {
    let mut listener = tcp_socket();
    listener.listen(port).unwrap();
    let server = b.sockets.add(listener);
    let client = a.sockets.add(tcp_socket());
    let cx = a.iface.context();
    a.sockets
        .get_mut::<tcp::Socket>(client)
        .connect(cx, (IP_B, port), 40_000 + port)
        .unwrap();

    let mut sent = 0;
    let mut received = Vec::with_capacity(data.len());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        assert!(
            start.elapsed() < TIME_LIMIT,
            "stream stalled: {sent} bytes sent, {} received, A {:?}, B {:?}",
            received.len(),
            a.device.stats(),
            b.device.stats()
        );
        let now = smol_now(start);
        a.iface.poll(now, &mut a.device, &mut a.sockets);
        let socket = a.sockets.get_mut::<tcp::Socket>(client);
        if sent < data.len() && socket.can_send() {
            sent += socket.send_slice(&data[sent..]).unwrap();
        }
        let a_done = sent == data.len() && socket.send_queue() == 0;
        a.iface.poll(now, &mut a.device, &mut a.sockets);

        b.iface.poll(now, &mut b.device, &mut b.sockets);
        let socket = b.sockets.get_mut::<tcp::Socket>(server);
        let mut moved = false;
        while socket.can_recv() {
            let n = socket.recv_slice(&mut chunk).unwrap();
            received.extend_from_slice(&chunk[..n]);
            moved |= n > 0;
        }
        if moved {
            // Window updates go out now rather than on the next round.
            b.iface.poll(now, &mut b.device, &mut b.sockets);
        }
        if a_done && received.len() >= data.len() {
            break;
        }
        if !moved {
            // Nothing to read: sleep until B's next frame (or a timer).
            b.device.wait(Duration::from_micros(200));
        }
    }
    // Closing is not part of the check; reset both ends and forget them.
    a.sockets.get_mut::<tcp::Socket>(client).abort();
    b.sockets.get_mut::<tcp::Socket>(server).abort();
    let now = smol_now(start);
    a.iface.poll(now, &mut a.device, &mut a.sockets);
    b.iface.poll(now, &mut b.device, &mut b.sockets);
    a.sockets.remove(client);
    b.sockets.remove(server);
    received
}

fn plug(switch: &Switch, name: &str, mtu: u16) -> (PortId, SmoltcpDevice) {
    let (port, device) = smoltcp_port(name, mtu);
    let id = switch
        .add_port(Arc::new(port), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    (id, device)
}

#[test]
fn ten_megabytes_through_the_switch_with_an_mtu_change() {
    let start = Instant::now();
    let data = stream_data(TOTAL);
    let (first, second) = data.split_at(TOTAL / 2);
    let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
    let mac_a = [2, 0, 0, 0, 0, 0xa];
    let mac_b = [2, 0, 0, 0, 0, 0xb];

    let (id_a, device_a) = plug(&switch, "a", 1500);
    let (id_b, device_b) = plug(&switch, "b", 1500);
    let mut a = host(device_a, mac_a, IP_A, start);
    let mut b = host(device_b, mac_b, IP_B, start);

    let mut received = transfer(&mut a, &mut b, first, 5001, start);
    assert_eq!(
        b.device.stats().rx_largest,
        1514,
        "full-size segments at MTU 1500"
    );

    // Re-plug B with MTU 1280.
    switch.remove_port(id_b).unwrap();
    let (id_b2, device_b2) = plug(&switch, "b-1280", 1280);
    let mut b = host(device_b2, mac_b, IP_B, start);
    received.extend(transfer(&mut a, &mut b, second, 5002, start));

    assert_eq!(received.len(), data.len());
    if let Some(at) = received.iter().zip(&data).position(|(x, y)| x != y) {
        panic!("stream differs from byte {at} on");
    }
    let largest = b.device.stats().rx_largest;
    assert_eq!(largest, 1280 + 14, "segments sized for the new MTU");
    let b_stats = switch.port_stats(id_b2).unwrap();
    assert_eq!(b_stats.drops.get(DropReason::ExceedsMtu), 0);
    let a_stats = switch.port_stats(id_a).unwrap();
    assert_eq!(a_stats.drops.get(DropReason::ExceedsMtu), 0);
    assert!(start.elapsed() < TIME_LIMIT, "took {:?}", start.elapsed());
    eprintln!(
        "10 MB in {:?}; B at MTU 1280 received {} frames",
        start.elapsed(),
        b.device.stats().rx_frames
    );
    switch.shutdown();
}
