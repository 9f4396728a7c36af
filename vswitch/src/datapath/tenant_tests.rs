//! Deterministic datapath tests of tenant protection: isolated ports, the
//! port-security guards and the rate limits, frame by frame with a given
//! clock.

use std::time::{Duration, Instant};

use vswitch_offload::{EgressCapabilities, Packet};

use super::*;
use crate::ethernet::build_frame;
use crate::forward::{ForwarderConfig, PortProfile};
use crate::mac::MacAddr;
use crate::vlan::VlanId;

fn mac(last: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, last])
}

/// A datapath over ports with the given profiles (ids 1, 2, ...), each
/// taking finished frames of up to 1500 bytes.
struct Bench {
    datapath: Datapath,
    ports: PortSet,
    t0: Instant,
    out: Output,
}

impl Bench {
    fn new(profiles: impl IntoIterator<Item = PortProfile>) -> Self {
        let t0 = Instant::now();
        let mut ports = PortSet::new();
        for (i, profile) in profiles.into_iter().enumerate() {
            ports.insert_port(
                PortId(i as u32 + 1),
                profile,
                EgressCapabilities::none(1500),
            );
        }
        let forwarder = Arc::new(Forwarder::new(ForwarderConfig::default(), t0));
        Bench {
            datapath: Datapath::new(forwarder),
            ports,
            t0,
            out: Output::new(),
        }
    }

    /// Sends `packets` in from `ingress` at `millis` and returns the ports
    /// that got a frame, with how many, and the drops as (port, reason).
    fn burst(
        &mut self,
        millis: u64,
        ingress: u32,
        packets: Vec<Packet>,
    ) -> (Vec<(u32, usize)>, Vec<(u32, DropReason)>) {
        self.out.clear();
        let now = self.t0 + Duration::from_millis(millis);
        self.datapath
            .process(&self.ports, PortId(ingress), packets, now, &mut self.out);
        let sent = self
            .out
            .batches()
            .iter()
            .filter(|batch| !batch.frames.is_empty())
            .map(|batch| (batch.port.0, batch.frames.len()))
            .collect();
        let drops = self
            .out
            .events()
            .iter()
            .filter_map(|event| match event {
                Event::Dropped { port, reason } => Some((port.0, *reason)),
                _ => None,
            })
            .collect();
        (sent, drops)
    }
}

fn arp_like(dst: MacAddr, src: MacAddr) -> Packet {
    Packet::plain(build_frame(dst, src, None, 0x88b5, &[0; 46]))
}

#[test]
fn isolated_ports_never_reach_each_other_flooding_included() {
    let isolated = || PortProfile::access(VlanId::DEFAULT).isolated(true);
    // 1 is the uplink; 2 and 3 are isolated guests.
    let mut b = Bench::new([PortProfile::default(), isolated(), isolated()]);
    // A broadcast from an isolated guest reaches the uplink only.
    let (sent, drops) = b.burst(0, 2, vec![arp_like(MacAddr::BROADCAST, mac(2))]);
    assert_eq!(sent, [(1, 1)]);
    assert!(drops.is_empty());
    // An unknown unicast destination floods to the uplink only, too.
    let (sent, _) = b.burst(0, 3, vec![arp_like(mac(9), mac(3))]);
    assert_eq!(sent, [(1, 1)]);
    // The uplink's broadcast reaches both guests.
    let (sent, _) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert_eq!(sent, [(2, 1), (3, 1)]);
    // Learned unicast between the guests is refused and counted on the
    // sender; to and from the uplink it flows.
    let (sent, drops) = b.burst(0, 2, vec![arp_like(mac(3), mac(2))]);
    assert!(sent.is_empty());
    assert_eq!(drops, [(2, DropReason::PortIsolated)]);
    let (sent, _) = b.burst(0, 2, vec![arp_like(mac(1), mac(2))]);
    assert_eq!(sent, [(1, 1)]);
    let (sent, _) = b.burst(0, 1, vec![arp_like(mac(3), mac(1))]);
    assert_eq!(sent, [(3, 1)]);
}

#[test]
fn an_isolated_port_alone_with_isolated_ports_has_no_destination() {
    let isolated = || PortProfile::access(VlanId::DEFAULT).isolated(true);
    let mut b = Bench::new([isolated(), isolated()]);
    let (sent, drops) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert!(sent.is_empty());
    assert_eq!(drops, [(1, DropReason::NoDestination)]);
    // Turned off, the two ports talk again.
    b.ports.insert_port(
        PortId(2),
        PortProfile::default(),
        EgressCapabilities::none(1500),
    );
    let (sent, _) = b.burst(0, 1, vec![arp_like(MacAddr::BROADCAST, mac(1))]);
    assert_eq!(sent, [(2, 1)]);
}
