//! Frames whose payload is still lent by the guest that sent them
//! (`Packet::tail`): a port that takes lent frames gets them as they are,
//! any other gets them whole, and the switch counts that copy for it.

mod switch_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switch_support::*;
use vswitch::{PortProfile, VlanId};
use vswitch_offload::{EgressCapabilities, Packet, Tail, VirtioNetHdr};
use vswitch_ports::{memory_port, MemoryPortConfig, Port, PortCapabilities, PortError, SendError};

/// Bytes of the frame kept in host memory; the rest is lent.
const HEAD: usize = 128;

/// A TCP frame toward an unknown destination whose payload, not all zeros,
/// differs with `n`.
fn tcp_frame(n: u32) -> bytes::Bytes {
    bytes::Bytes::from(
        tcp4(mac(9, 9), mac(1, 1))
            .payload((0..1400u32).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>())
            .build(),
    )
}

/// `whole` as a guest lends it: its first bytes in host memory, the rest
/// lent.
fn lent(whole: &bytes::Bytes) -> Packet {
    let rest = whole.slice(HEAD..);
    Packet {
        hdr: VirtioNetHdr::default(),
        data: whole.slice(..HEAD),
        tail: Some(Tail::new(rest.len(), rest)),
    }
}

/// A port that takes lent frames and keeps what it is sent.
#[derive(Default)]
struct LentTaker {
    got: Mutex<Vec<Packet>>,
}

impl Port for LentTaker {
    fn name(&self) -> &str {
        "taker"
    }
    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            egress: EgressCapabilities::none(1500),
            rx_queues: 1,
            tx_queues: 1,
        }
    }
    fn takes_lent_frames(&self) -> bool {
        true
    }
    fn receive(&self, _: usize, _: &mut Vec<Packet>, _: usize) -> Result<usize, PortError> {
        Ok(0)
    }
    fn send(&self, _: usize, packet: Packet) -> Result<(), SendError> {
        self.got.lock().unwrap().push(packet);
        Ok(())
    }
}

#[test]
fn a_lent_frame_is_copied_only_for_the_port_that_cannot_take_it() {
    let switch = patient_switch(1);
    let profile = PortProfile::access(VlanId::DEFAULT);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
    let taker = Arc::new(LentTaker::default());
    switch.add_port(Arc::new(a), profile.clone()).unwrap();
    let id_b = switch.add_port(Arc::new(b), profile.clone()).unwrap();
    let id_taker = switch.add_port(taker.clone(), profile).unwrap();

    // A lent frame toward an unknown destination: both other ports get it.
    let whole = tcp_frame(0);
    guest_a.try_inject(0, lent(&whole)).unwrap();

    let at_b = expect_one(&guest_b);
    assert!(at_b.tail.is_none(), "b cannot take lent frames");
    assert_eq!(at_b.data, whole, "b got every byte");

    let deadline = Instant::now() + Duration::from_secs(10);
    let at_taker = loop {
        if let Some(packet) = taker.got.lock().unwrap().pop() {
            break packet;
        }
        assert!(Instant::now() < deadline, "the taker got nothing");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        at_taker.data,
        whole.slice(..HEAD),
        "the taker got the frame as lent"
    );
    assert_eq!(at_taker.len(), whole.len());
    assert!(at_taker.tail.is_some());

    let copied = |id| switch.port_stats(id).unwrap().software.lent_copied;
    assert_eq!(copied(id_b), 1, "the copy for b is counted on b");
    assert_eq!(copied(id_taker), 0, "nothing was copied for the taker");
    assert_eq!(switch.stats().workers[0].software.lent_copied, 1);
}

#[test]
fn lent_frames_copied_for_a_port_keep_their_bytes_while_it_holds_them() {
    let switch = patient_switch(1);
    let profile = PortProfile::access(VlanId::DEFAULT);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queue_len(64));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queue_len(64));
    switch.add_port(Arc::new(a), profile.clone()).unwrap();
    let id_b = switch.add_port(Arc::new(b), profile).unwrap();

    // More frames than the worker keeps buffers for, all held at b until
    // the end: none may be overwritten by the copy of a later one.
    let frames: Vec<bytes::Bytes> = (0..40).map(tcp_frame).collect();
    for whole in &frames {
        guest_a.try_inject(0, lent(whole)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while switch.port_stats(id_b).unwrap().tx_frames < frames.len() as u64 {
        assert!(Instant::now() < deadline, "b did not get every frame");
        std::thread::sleep(Duration::from_millis(5));
    }
    for (n, whole) in frames.iter().enumerate() {
        let got = expect_one(&guest_b);
        assert!(got.tail.is_none());
        assert_eq!(&got.data, whole, "frame {n}");
    }
    assert_eq!(
        switch.port_stats(id_b).unwrap().software.lent_copied,
        frames.len() as u64
    );
}
