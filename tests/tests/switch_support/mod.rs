//! Frames and guests shared by the threaded switch tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vswitch::ethernet::build_frame;
use vswitch::{MacAddr, Poll, Switch, SwitchConfig, SwitchWorker};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
use vswitch_offload::{Packet, VirtioNetHdr};
use vswitch_ports::MemoryEndpoint;

/// The marker at the start of every flow frame's payload.
pub const MAGIC: u32 = 0x5357_4654;

pub fn mac(host: u8, n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, host, n])
}

/// A switch whose queues wait long (but boundedly) before dropping, so a
/// slow test thread on a busy machine is back-pressured instead of losing
/// frames.
pub fn patient_switch(workers: usize) -> Switch {
    let config = SwitchConfig {
        queue_full_wait: Duration::from_secs(2),
        ..SwitchConfig::default().workers(workers)
    };
    Switch::start(config).expect("switch starts")
}

/// An IPv4/UDP frame of flow `flow` carrying sequence number `seq`, from
/// 10.0.x.y to 10.0.z.w (the last two bytes of each MAC address).
pub fn flow_frame(dst: MacAddr, src: MacAddr, flow: u16, seq: u32) -> Packet {
    // The marker [`flow_of`] reads back: MAGIC, flow, 2 bytes of padding,
    // seq.
    let mut marker = [0u8; 12];
    marker[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    marker[4..6].copy_from_slice(&flow.to_be_bytes());
    marker[8..12].copy_from_slice(&seq.to_be_bytes());
    FrameBuilder::udp4([10, 0, src.0[4], src.0[5]], [10, 0, dst.0[4], dst.0[5]])
        .macs(src.0, dst.0)
        .ports(10_000 + flow, 5001)
        .payload(marker)
        .packet()
}

/// The (flow, seq) of a frame built by [`flow_frame`], after `tags` VLAN
/// tags.
pub fn flow_of(frame: &[u8]) -> Option<(u16, u32)> {
    let at = 14 + 28;
    let body = frame.get(at..at + 12)?;
    if body[0..4] != MAGIC.to_be_bytes() {
        return None;
    }
    Some((
        u16::from_be_bytes([body[4], body[5]]),
        u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
    ))
}

/// A broadcast that makes the switch learn `src`.
pub fn hello(src: MacAddr) -> Packet {
    Packet::plain(build_frame(MacAddr::BROADCAST, src, None, 0x88b5, &[0; 46]))
}

/// What a collecting guest saw.
#[derive(Debug, Default)]
pub struct Received {
    /// Next expected sequence number per flow.
    pub next: HashMap<u16, u32>,
    /// Frames received per flow.
    pub per_flow: HashMap<u16, u64>,
    /// Flow frames whose sequence number went backwards (reordered or
    /// duplicated).
    pub out_of_order: u64,
    /// Flow frames that skipped sequence numbers (frames missing before them).
    pub gaps: u64,
    /// Flow frames received.
    pub flow_frames: u64,
    /// Other frames received.
    pub other_frames: u64,
    /// Flows may start at any sequence number (a port that joined late).
    pub joined_late: bool,
    /// Every sequence number seen, for this flow only.
    pub trace_flow: Option<u16>,
    /// The sequence numbers of `trace_flow`.
    pub traced: Vec<u32>,
}

impl Received {
    pub fn record(&mut self, frame: &[u8]) {
        match flow_of(frame) {
            Some((flow, seq)) => {
                let first = if self.joined_late { seq } else { 0 };
                let next = self.next.entry(flow).or_insert(first);
                if seq < *next {
                    self.out_of_order += 1;
                } else if seq > *next {
                    self.gaps += 1;
                }
                *next = seq + 1;
                *self.per_flow.entry(flow).or_default() += 1;
                self.flow_frames += 1;
                if self.trace_flow == Some(flow) {
                    self.traced.push(seq);
                }
            }
            None => self.other_frames += 1,
        }
    }

    /// Whether `flow` arrived complete and in order: `frames` frames,
    /// numbered 0 to `frames - 1`.
    pub fn complete(&self, flow: u16, frames: u32) -> bool {
        self.per_flow.get(&flow) == Some(&u64::from(frames))
            && self.next.get(&flow) == Some(&frames)
    }
}

/// Collects frames on `endpoint` until `done(&received)` holds or no frame
/// came for `quiet`.
pub fn collector(
    endpoint: Arc<MemoryEndpoint>,
    quiet: Duration,
    done: impl Fn(&Received) -> bool + Send + 'static,
) -> JoinHandle<Received> {
    collect_with(endpoint, quiet, Received::default(), done)
}

/// [`collector`] that also records the sequence numbers of `trace_flow`.
pub fn tracing_collector(
    endpoint: Arc<MemoryEndpoint>,
    quiet: Duration,
    trace_flow: u16,
) -> JoinHandle<Received> {
    let received = Received {
        trace_flow: Some(trace_flow),
        ..Received::default()
    };
    collect_with(endpoint, quiet, received, |_| false)
}

/// [`collector`] for a port that joins while flows run.
pub fn late_collector(
    endpoint: Arc<MemoryEndpoint>,
    quiet: Duration,
    trace_flow: u16,
) -> JoinHandle<Received> {
    let received = Received {
        joined_late: true,
        trace_flow: Some(trace_flow),
        ..Received::default()
    };
    collect_with(endpoint, quiet, received, |_| false)
}

fn collect_with(
    endpoint: Arc<MemoryEndpoint>,
    quiet: Duration,
    mut received: Received,
    done: impl Fn(&Received) -> bool + Send + 'static,
) -> JoinHandle<Received> {
    thread::spawn(move || {
        let mut last = Instant::now();
        while !done(&received) && last.elapsed() < quiet {
            if let Some(packet) = endpoint.collect_timeout(Duration::from_millis(20)) {
                received.record(&packet.data);
                last = Instant::now();
            }
        }
        received
    })
}

/// Injects `frames` into rx queue `queue`, waiting for room as a guest
/// whose ring is full does.
pub fn inject_all(
    endpoint: &MemoryEndpoint,
    queue: usize,
    frames: impl IntoIterator<Item = Packet>,
) {
    for frame in frames {
        endpoint
            .inject_timeout(queue, frame, Duration::from_secs(30))
            .expect("the switch keeps draining its ports");
    }
}

/// Waits until `endpoint` received a frame (used after a hello).
pub fn expect_one(endpoint: &MemoryEndpoint) -> Packet {
    endpoint
        .collect_timeout(Duration::from_secs(10))
        .expect("a frame arrives")
}

/// The virtio-net header of a TSO request for an untagged TCP/IPv4 frame
/// with 20-byte headers: partial checksum at the TCP header, MSS 1448.
pub const TSO4: VirtioNetHdr = VirtioNetHdr {
    flags: FLAG_NEEDS_CSUM,
    gso_type: GSO_TCPV4,
    hdr_len: 54,
    gso_size: 1448,
    csum_start: 34,
    csum_offset: 16,
    num_buffers: 0,
};

/// An untagged TCP/IPv4 frame from `src` to `dst` (198.18.0.1 to
/// 198.18.0.2, ports 0, ACK, 20-byte IP and TCP headers), for the caller to
/// give a payload.
pub fn tcp4(dst: MacAddr, src: MacAddr) -> FrameBuilder {
    FrameBuilder::tcp4([198, 18, 0, 1], [198, 18, 0, 2])
        .macs(src.0, dst.0)
        .ports(0, 0)
        .tcp_flags(tcp_flags::ACK)
}

/// A [`tcp4`] frame whose IP packet is `ip_len` bytes, the payload zeros,
/// its TCP checksum seeded for a [`TSO4`] request.
pub fn tcp4_frame(dst: MacAddr, src: MacAddr, ip_len: u16) -> bytes::Bytes {
    tcp4(dst, src)
        .payload(vec![0; usize::from(ip_len) - 40])
        .partial_checksum()
        .build()
        .into()
}

/// Runs `worker` on a thread of its own that sleeps a minute whenever it
/// runs out of work, so that only a wake brings a frame through in time.
/// The thread ends when the switch stops, with the number of times it
/// slept.
pub fn sleepy_worker(mut worker: SwitchWorker) -> JoinHandle<u32> {
    thread::spawn(move || {
        let mut waits = 0u32;
        loop {
            match worker.poll_once() {
                Poll::Stopped => return waits,
                Poll::Worked { .. } => {}
                Poll::Idle => {
                    waits += 1;
                    worker.wait(Duration::from_secs(60));
                }
            }
        }
    })
}
