//! Which worker a frame goes to: a hash of its flow, so that every frame of
//! one flow is handled by the same worker (no reordering) while many flows
//! spread over all workers.

use std::sync::OnceLock;

use vswitch_offload::rss::{ToeplitzTable, DEFAULT_KEY};

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The flow key of a frame: what [`flow_hash`] hashes.
///
/// For IPv4 and IPv6 carrying TCP or UDP: source and destination address
/// and port (the 4-tuple RSS hashes). For other IP packets, and for IPv4
/// fragments (whose later pieces have no ports): the two addresses. For
/// anything else: the two MAC addresses and the EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKey<'a> {
    /// Addresses (4 or 16 bytes each) and, when the transport header is
    /// present, source and destination port.
    Ip {
        /// Source address bytes.
        src: &'a [u8],
        /// Destination address bytes.
        dst: &'a [u8],
        /// Source and destination port.
        ports: Option<(u16, u16)>,
    },
    /// A non-IP frame: destination and source MAC, EtherType.
    Ethernet {
        /// The first 12 bytes of the frame.
        macs: &'a [u8],
        /// The EtherType after the VLAN tags.
        ethertype: u16,
    },
    /// Fewer than 14 bytes: nothing to key on.
    Runt,
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let bytes = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Reads the flow key of a frame. Every read is bounds-checked; a frame too
/// short for a header falls back to the key of the layer below.
pub fn flow_key(frame: &[u8]) -> FlowKey<'_> {
    let Some(macs) = frame.get(..12) else {
        return FlowKey::Runt;
    };
    let mut offset = 12;
    let mut ethertype = match be16(frame, offset) {
        Some(value) => value,
        None => return FlowKey::Runt,
    };
    // Up to two VLAN tags (802.1Q, 802.1ad, or the older QinQ TPID).
    for _ in 0..2 {
        if !crate::ethernet::is_vlan_tpid(ethertype) {
            break;
        }
        offset += 4;
        match be16(frame, offset) {
            Some(value) => ethertype = value,
            None => return FlowKey::Ethernet { macs, ethertype },
        }
    }
    let l3 = offset + 2;
    let ip = match ethertype {
        ETHERTYPE_IPV4 => ipv4_key(frame, l3),
        ETHERTYPE_IPV6 => ipv6_key(frame, l3),
        _ => None,
    };
    ip.unwrap_or(FlowKey::Ethernet { macs, ethertype })
}

fn ipv4_key(frame: &[u8], l3: usize) -> Option<FlowKey<'_>> {
    let header = frame.get(l3..l3 + 20)?;
    let ihl = usize::from(header.first()? & 0x0f) * 4;
    let src = header.get(12..16)?;
    let dst = header.get(16..20)?;
    let flags_fragment = be16(header, 6)?;
    let fragment = flags_fragment & 0x3fff != 0; // MF or a non-zero offset
    let protocol = *header.get(9)?;
    let ports = if ihl >= 20 && !fragment && matches!(protocol, PROTO_TCP | PROTO_UDP) {
        transport_ports(frame, l3 + ihl)
    } else {
        None
    };
    Some(FlowKey::Ip { src, dst, ports })
}

fn ipv6_key(frame: &[u8], l3: usize) -> Option<FlowKey<'_>> {
    let header = frame.get(l3..l3 + 40)?;
    let next_header = *header.get(6)?;
    let src = header.get(8..24)?;
    let dst = header.get(24..40)?;
    // Ports only when TCP or UDP follows the fixed header directly; with
    // extension headers in between the two addresses are the key.
    let ports = if matches!(next_header, PROTO_TCP | PROTO_UDP) {
        transport_ports(frame, l3 + 40)
    } else {
        None
    };
    Some(FlowKey::Ip { src, dst, ports })
}

fn transport_ports(frame: &[u8], l4: usize) -> Option<(u16, u16)> {
    Some((be16(frame, l4)?, be16(frame, l4 + 2)?))
}

/// The Toeplitz table of the default RSS key, built on first use.
fn rss_table() -> &'static ToeplitzTable {
    static TABLE: OnceLock<ToeplitzTable> = OnceLock::new();
    TABLE.get_or_init(|| ToeplitzTable::new(&DEFAULT_KEY))
}

/// The flow hash of a frame, from which its worker is chosen.
///
/// It is the RSS hash: Toeplitz with the default key over the
/// [`FlowKey`] in the order the RSS specification gives (source address,
/// destination address, then source and destination port when present),
/// so the switch and a NIC or guest doing RSS with the same key agree on a
/// flow's hash. Frames that are not IP hash their MAC addresses and
/// EtherType the same way. Any frame, even a runt, gets a hash; this
/// never panics.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut input = [0u8; 36];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        if let Some(slot) = input.get_mut(len..len + bytes.len()) {
            slot.copy_from_slice(bytes);
            len += bytes.len();
        }
    };
    match flow_key(frame) {
        FlowKey::Ip { src, dst, ports } => {
            push(src);
            push(dst);
            if let Some((sport, dport)) = ports {
                push(&sport.to_be_bytes());
                push(&dport.to_be_bytes());
            }
        }
        FlowKey::Ethernet { macs, ethertype } => {
            push(macs);
            push(&ethertype.to_be_bytes());
        }
        FlowKey::Runt => {}
    }
    rss_table().hash(input.get(..len).unwrap_or(&[]))
}

/// The worker, out of `workers`, that handles flows with hash `hash`.
/// `workers` of 0 is treated as 1.
pub fn worker_for_hash(hash: u32, workers: usize) -> usize {
    let workers = u64::try_from(workers.max(1)).unwrap_or(u64::MAX);
    // Multiply-shift: maps the 32-bit hash evenly onto 0..workers.
    usize::try_from((u64::from(hash) * workers) >> 32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(src_port: u16, tags: usize, fragment: bool) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for _ in 0..tags {
            frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        if fragment {
            ip[6] = 0x20; // MF
        }
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&src_port.to_be_bytes());
        frame.extend_from_slice(&80u16.to_be_bytes());
        frame.extend_from_slice(&[0; 16]);
        frame
    }

    #[test]
    fn key_reads_addresses_and_ports_through_tags() {
        for tags in 0..=2 {
            let frame = ipv4_tcp(1234, tags, false);
            assert_eq!(
                flow_key(&frame),
                FlowKey::Ip {
                    src: &[10, 0, 0, 1],
                    dst: &[10, 0, 0, 2],
                    ports: Some((1234, 80))
                }
            );
        }
        let fragment = ipv4_tcp(1234, 0, true);
        assert!(matches!(
            flow_key(&fragment),
            FlowKey::Ip { ports: None, .. }
        ));
    }

    #[test]
    fn same_flow_same_hash_other_flows_spread() {
        let a = flow_hash(&ipv4_tcp(1000, 0, false));
        assert_eq!(a, flow_hash(&ipv4_tcp(1000, 0, false)));
        // The payload does not matter.
        let mut with_payload = ipv4_tcp(1000, 0, false);
        with_payload.extend_from_slice(&[7; 100]);
        assert_eq!(a, flow_hash(&with_payload));
        let mut per_worker = [0usize; 4];
        for port in 0..4000u16 {
            let worker = worker_for_hash(flow_hash(&ipv4_tcp(port, 0, false)), 4);
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
        assert_eq!(flow_hash(&frame), toeplitz_hash(&DEFAULT_KEY, &input));
        let fragment = ipv4_tcp(1234, 0, true);
        assert_eq!(
            flow_hash(&fragment),
            toeplitz_hash(&DEFAULT_KEY, &input[..8])
        );
    }

    #[test]
    fn truncated_frames_fall_back_without_panicking() {
        let full = ipv4_tcp(1, 2, false);
        for len in 0..full.len() {
            let _ = flow_hash(&full[..len]);
            let _ = flow_key(&full[..len]);
        }
        assert_eq!(flow_key(&full[..5]), FlowKey::Runt);
        assert!(matches!(
            flow_key(&full[..30]),
            FlowKey::Ethernet {
                ethertype: 0x0800,
                ..
            }
        ));
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
            let hash = flow_hash(&frame);
            prop_assert!(worker_for_hash(hash, 3) < 3);
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
            prop_assert_eq!(flow_hash(&a), flow_hash(&b));
            let key = flow_key(&a);
            let ports = match key {
                FlowKey::Ip { ports, .. } => ports,
                _ => None,
            };
            prop_assert_eq!(ports, Some((sport, 53)));
        }
    }
}
