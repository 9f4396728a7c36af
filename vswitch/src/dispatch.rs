//! Which worker a frame goes to: a hash of its flow, so that every frame of
//! one flow is handled by the same worker (no reordering) while many flows
//! spread over all workers.

use std::sync::OnceLock;

use vswitch_offload::layout::FrameLayout;
use vswitch_offload::rss::{FlowKey, ToeplitzTable, DEFAULT_KEY};
use vswitch_offload::CheckedFrame;

/// The Toeplitz table of the default RSS key, built on first use.
fn rss_table() -> &'static ToeplitzTable {
    static TABLE: OnceLock<ToeplitzTable> = OnceLock::new();
    TABLE.get_or_init(|| ToeplitzTable::new(&DEFAULT_KEY))
}

/// The flow hash of a frame, from which its worker is chosen.
///
/// It is the RSS hash: Toeplitz with the default key over the flow key of
/// [`vswitch_offload::rss`] (source and destination address, then source
/// and destination port for TCP and UDP that are not fragments), so the
/// switch and a NIC or guest doing RSS with the same key agree on a flow's
/// hash. Frames that are not IP, or whose IP headers do not parse, hash
/// their MAC addresses and EtherType the same way. The headers are read
/// from the frame's layout ([`CheckedFrame::layout`]), parsed at most once
/// per frame.
pub fn flow_hash(frame: &CheckedFrame) -> u32 {
    flow_hash_with(frame, frame.layout().as_ref())
}

/// [`flow_hash`] of `frame`, whose layout (`frame.layout()`) the caller
/// already has.
pub(crate) fn flow_hash_with(frame: &CheckedFrame, layout: Option<&FrameLayout>) -> u32 {
    let data = frame.data();
    let ip_key = layout.and_then(|layout| FlowKey::from_frame(data, layout).ok());
    if let Some(key) = ip_key {
        return rss_table().hash(key.as_bytes());
    }
    let mut input = [0u8; 14];
    input[..6].copy_from_slice(&frame.dst_mac());
    input[6..12].copy_from_slice(&frame.src_mac());
    input[12..14].copy_from_slice(&frame.l2().ethertype.to_be_bytes());
    rss_table().hash(&input)
}

/// The hash [`flow_hash`] gives the frame `frame` once checked, for code
/// outside the switch that steers flows the way it will (a guest or NIC
/// doing RSS with the default key, a traffic generator). `None` for bytes
/// the ingress check refuses (shorter than an Ethernet header, a VLAN tag
/// cut short).
pub fn flow_hash_of_bytes(frame: &[u8]) -> Option<u32> {
    let packet = vswitch_offload::Packet::plain(bytes::Bytes::copy_from_slice(frame));
    CheckedFrame::check(packet)
        .ok()
        .map(|frame| flow_hash(&frame))
}

/// The worker, out of `workers`, that handles flows with hash `hash`.
/// `workers` of 0 is treated as 1.
pub fn worker_for_hash(hash: u32, workers: usize) -> usize {
    spread(hash, workers)
}

/// The transmit queue, out of `queues`, that frames of flows with hash
/// `hash` leave a port by. The same mapping as [`worker_for_hash`]: with as
/// many queues as workers, a worker sends on the queue of its own index
/// only, so no two workers share a queue; with more queues than workers,
/// a worker's flows still spread over all of them.
pub fn queue_for_hash(hash: u32, queues: usize) -> usize {
    spread(hash, queues)
}

/// Multiply-shift: maps the 32-bit hash evenly onto 0..n (n of 0 as 1).
fn spread(hash: u32, n: usize) -> usize {
    let n = u64::try_from(n.max(1)).unwrap_or(u64::MAX);
    usize::try_from((u64::from(hash) * n) >> 32).unwrap_or(0)
}

#[cfg(test)]
fn checked(frame: &[u8]) -> Option<CheckedFrame> {
    CheckedFrame::check(vswitch_offload::Packet::plain(frame.to_vec())).ok()
}

#[cfg(test)]
fn hash_of(frame: &[u8]) -> u32 {
    flow_hash(&checked(frame).expect("a frame with a whole link-layer header"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_offload::testing::FrameBuilder;

    /// A TCP/IPv4 frame from 10.0.0.1:`src_port` to 10.0.0.2:80 behind
    /// `tags` VLAN tags (VID 5), the first fragment of a datagram if
    /// `fragment`.
    fn ipv4_tcp(src_port: u16, tags: usize, fragment: bool) -> Vec<u8> {
        let frame = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
            .ports(src_port, 80)
            .more_fragments(fragment);
        (0..tags).fold(frame, |frame, _| frame.vlan(5)).build()
    }

    /// The RSS hash of the test flow's addresses, then ports if given.
    fn rss_of(ports: Option<(u16, u16)>) -> u32 {
        use vswitch_offload::rss::toeplitz_hash;
        let mut input = vec![10, 0, 0, 1, 10, 0, 0, 2];
        if let Some((sport, dport)) = ports {
            input.extend_from_slice(&sport.to_be_bytes());
            input.extend_from_slice(&dport.to_be_bytes());
        }
        toeplitz_hash(&DEFAULT_KEY, &input)
    }

    #[test]
    fn key_reads_addresses_and_ports_through_tags() {
        for tags in 0..=2 {
            let frame = ipv4_tcp(1234, tags, false);
            assert_eq!(hash_of(&frame), rss_of(Some((1234, 80))));
        }
        let fragment = ipv4_tcp(1234, 0, true);
        assert_eq!(hash_of(&fragment), rss_of(None));
    }

    #[test]
    fn same_flow_same_hash_other_flows_spread() {
        let a = hash_of(&ipv4_tcp(1000, 0, false));
        assert_eq!(a, hash_of(&ipv4_tcp(1000, 0, false)));
        // The payload does not matter.
        let mut with_payload = ipv4_tcp(1000, 0, false);
        with_payload.extend_from_slice(&[7; 100]);
        assert_eq!(a, hash_of(&with_payload));
        let mut per_worker = [0usize; 4];
        for port in 0..4000u16 {
            let worker = worker_for_hash(hash_of(&ipv4_tcp(port, 0, false)), 4);
            per_worker[worker] += 1;
        }
        assert!(per_worker.iter().all(|&n| n > 800), "{per_worker:?}");
    }

    #[test]
    fn the_hash_is_the_rss_hash_of_the_flow() {
        use vswitch_offload::rss::toeplitz_hash;
        let frame = ipv4_tcp(1234, 1, false);
        let mut input = vec![10, 0, 0, 1, 10, 0, 0, 2];
        input.extend_from_slice(&1234u16.to_be_bytes());
        input.extend_from_slice(&80u16.to_be_bytes());
        assert_eq!(hash_of(&frame), toeplitz_hash(&DEFAULT_KEY, &input));
        let fragment = ipv4_tcp(1234, 0, true);
        assert_eq!(hash_of(&fragment), toeplitz_hash(&DEFAULT_KEY, &input[..8]));
    }

    #[test]
    fn truncated_frames_fall_back_without_panicking() {
        use vswitch_offload::rss::toeplitz_hash;
        let full = ipv4_tcp(1, 2, false);
        for len in 0..full.len() {
            // A runt or a cut tag is refused by the check, before any hash.
            if let Some(frame) = checked(&full[..len]) {
                let _ = flow_hash(&frame);
            }
        }
        assert!(checked(&full[..5]).is_none());
        // Tags but no complete IP header: the MACs and the inner EtherType.
        let mut macs_and_type = full[..12].to_vec();
        macs_and_type.extend_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(
            hash_of(&full[..30]),
            toeplitz_hash(&DEFAULT_KEY, &macs_and_type)
        );
        assert_eq!(worker_for_hash(u32::MAX, 0), 0);
        assert_eq!(worker_for_hash(u32::MAX, 8), 7);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_hash_without_panicking(frame in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Some(frame) = checked(&frame) {
                prop_assert!(worker_for_hash(flow_hash(&frame), 3) < 3);
            }
        }

        #[test]
        fn the_payload_does_not_change_the_hash(
            sport in any::<u16>(),
            tags in 0usize..3,
            tail_a in proptest::collection::vec(any::<u8>(), 0..64),
            tail_b in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
            for _ in 0..tags {
                frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            }
            frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 17, 64]);
            frame.extend_from_slice(&[0xfd; 32]);
            frame.extend_from_slice(&sport.to_be_bytes());
            frame.extend_from_slice(&[0, 53, 0, 20, 0, 0]);
            let (mut a, mut b) = (frame.clone(), frame);
            a.extend_from_slice(&tail_a);
            b.extend_from_slice(&tail_b);
            prop_assert_eq!(hash_of(&a), hash_of(&b));
            // The ports are part of the key: the hash is the 4-tuple's.
            let mut input = vec![0xfd; 32];
            input.extend_from_slice(&sport.to_be_bytes());
            input.extend_from_slice(&53u16.to_be_bytes());
            prop_assert_eq!(
                hash_of(&a),
                vswitch_offload::rss::toeplitz_hash(&DEFAULT_KEY, &input)
            );
        }
    }
}
