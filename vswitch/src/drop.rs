//! Why the switch dropped a frame: one taxonomy for every stage, with one
//! counter naming scheme (short, lower case, `snake_case`, stable across
//! releases), so a counter means the same thing in statistics, in the
//! `vswitch` command's reports and in tests.
//!
//! A frame whose virtio-net header breaks a rule of the offload engine's
//! reject list is counted under that rule ([`DropReason::InvalidHeader`]
//! with the engine's [`HeaderDrop`]), not under one catch-all counter: an
//! operator can tell a guest that sends `gso_size` 0 from one whose
//! checksum offsets point outside its frames.

use std::fmt;

use vswitch_offload::CheckError;

pub use vswitch_offload::virtio::DropReason as HeaderDrop;

/// Why a frame was dropped: the key of the drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The frame is too short for its Ethernet header or a VLAN tag.
    Malformed,
    /// The frame's virtio-net header asks for offload work the frame does
    /// not support: which rule of the reject list it broke.
    InvalidHeader(HeaderDrop),
    /// The ingress port is not (or no longer) in the switch.
    UnknownIngressPort,
    /// A multicast or all-zero source address.
    InvalidSourceMac,
    /// A source address the ingress port may not use.
    SourceMacNotAllowed,
    /// A tagged frame (single or double) arrived on an access port.
    TaggedOnAccessPort,
    /// An untagged frame arrived on a trunk port without a native VLAN.
    UntaggedOnTrunk,
    /// A trunk frame whose outer tag is not an 802.1Q tag.
    UnsupportedTag,
    /// A trunk frame with VLAN id 4095.
    InvalidVlanId,
    /// A trunk frame of a VLAN the port does not carry.
    VlanNotAllowed,
    /// The destination was learned on the ingress port itself.
    DestinationOnIngressPort,
    /// No other port carries the frame's VLAN.
    NoDestination,
    /// The destination is behind an isolated port and the frame came from
    /// another isolated port.
    PortIsolated,
    /// An IP packet from a source address the port does not own (IP source
    /// guard).
    IpSourceNotAllowed,
    /// An ARP request or reply claiming an address the port does not own
    /// (neighbour guard).
    ArpNotOwned,
    /// An IPv6 neighbour advertisement for an address the port does not own
    /// (neighbour guard).
    NdNotOwned,
    /// A DHCPv4 or DHCPv6 server message from a port without the right to
    /// send one (DHCP guard).
    DhcpServer,
    /// An IPv6 router advertisement from a port without the right to send
    /// one (router guard).
    RouterAdvertisement,
    /// A guard is on and the headers it reads are cut short or hidden
    /// behind a third VLAN tag.
    GuardUnreadable,
    /// The frame would have taken the egress port over its rate limit.
    RateLimited,
    /// The VLAN tag could not be pushed or popped without breaking the
    /// frame's offload offsets (a partial checksum inside the link-layer
    /// header, a third tag).
    RetagFailed,
    /// The offload engine could not adapt the frame to the egress port
    /// (for example a segment that cannot fit the egress MTU).
    OffloadFailed,
    /// A frame with no offload work left is larger than the egress MTU, or
    /// the segments of a GSO frame the port would cut itself would be.
    ExceedsMtu,
    /// The egress port was removed while the frame was in flight.
    EgressPortGone,
    /// The worker queue the frame's flow maps to stayed full.
    WorkerQueueFull,
    /// The egress port's transmit queue stayed full.
    EgressQueueFull,
    /// The egress port is disconnected or has no such queue.
    EgressPortError,
    /// The egress port's outside refused this frame (a kernel that rejects
    /// its header, say).
    EgressRefused,
    /// The switch stopped while the frame waited for a full queue.
    Shutdown,
    /// A frame whose payload its sender lent ([`vswitch_offload::tail`])
    /// had to be taken into host memory at ingress, and its lent bytes
    /// could not be read.
    LentUnreadable,
}

/// The reasons other than [`DropReason::InvalidHeader`], in counter order.
const SWITCH_REASONS: [DropReason; 29] = [
    DropReason::Malformed,
    DropReason::UnknownIngressPort,
    DropReason::InvalidSourceMac,
    DropReason::SourceMacNotAllowed,
    DropReason::TaggedOnAccessPort,
    DropReason::UntaggedOnTrunk,
    DropReason::UnsupportedTag,
    DropReason::InvalidVlanId,
    DropReason::VlanNotAllowed,
    DropReason::DestinationOnIngressPort,
    DropReason::NoDestination,
    DropReason::RetagFailed,
    DropReason::OffloadFailed,
    DropReason::ExceedsMtu,
    DropReason::EgressPortGone,
    DropReason::WorkerQueueFull,
    DropReason::EgressQueueFull,
    DropReason::EgressPortError,
    DropReason::EgressRefused,
    DropReason::Shutdown,
    DropReason::PortIsolated,
    DropReason::IpSourceNotAllowed,
    DropReason::ArpNotOwned,
    DropReason::NdNotOwned,
    DropReason::DhcpServer,
    DropReason::RouterAdvertisement,
    DropReason::GuardUnreadable,
    DropReason::RateLimited,
    DropReason::LentUnreadable,
];

/// Which port a drop is counted on: the one the frame came from, or the one
/// it was on its way to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropSide {
    /// Counted on the ingress port: the frame was refused before any
    /// egress port was chosen (a bad header, a guard, no destination), or
    /// while it was handed to another worker.
    Ingress,
    /// Counted on the egress port: the frame, or a copy of it for that
    /// port, could not leave there (adaptation, MTU, rate limit, a full or
    /// broken queue, the port gone).
    Egress,
}

impl DropReason {
    /// The port this reason's drops are counted on. With it a port's drops
    /// split into frames it sent that went nowhere and frames toward it
    /// that did not leave, which is what balancing a switch's counters
    /// needs (every frame received is forwarded or dropped).
    pub const fn side(self) -> DropSide {
        match self {
            DropReason::RetagFailed
            | DropReason::OffloadFailed
            | DropReason::ExceedsMtu
            | DropReason::EgressPortGone
            | DropReason::EgressQueueFull
            | DropReason::EgressPortError
            | DropReason::EgressRefused
            | DropReason::RateLimited
            | DropReason::Shutdown => DropSide::Egress,
            DropReason::Malformed
            | DropReason::InvalidHeader(_)
            | DropReason::UnknownIngressPort
            | DropReason::InvalidSourceMac
            | DropReason::SourceMacNotAllowed
            | DropReason::TaggedOnAccessPort
            | DropReason::UntaggedOnTrunk
            | DropReason::UnsupportedTag
            | DropReason::InvalidVlanId
            | DropReason::VlanNotAllowed
            | DropReason::DestinationOnIngressPort
            | DropReason::NoDestination
            | DropReason::PortIsolated
            | DropReason::IpSourceNotAllowed
            | DropReason::ArpNotOwned
            | DropReason::NdNotOwned
            | DropReason::DhcpServer
            | DropReason::RouterAdvertisement
            | DropReason::GuardUnreadable
            | DropReason::LentUnreadable
            | DropReason::WorkerQueueFull => DropSide::Ingress,
        }
    }

    /// Number of reasons: the size of a counter array.
    pub const COUNT: usize = SWITCH_REASONS.len() + HeaderDrop::COUNT;

    /// Every reason, in counter order (`ALL[r.index()] == r`): the switch's
    /// own, then one per rule of the header reject list.
    pub const ALL: [DropReason; DropReason::COUNT] = {
        let mut all = [DropReason::Malformed; DropReason::COUNT];
        let mut i = 0;
        while i < SWITCH_REASONS.len() {
            all[i] = SWITCH_REASONS[i];
            i += 1;
        }
        let mut j = 0;
        while j < HeaderDrop::COUNT {
            all[i + j] = DropReason::InvalidHeader(HeaderDrop::ALL[j]);
            j += 1;
        }
        all
    };

    /// Position in [`DropReason::ALL`], to index a counter array.
    pub const fn index(self) -> usize {
        match self {
            DropReason::Malformed => 0,
            DropReason::UnknownIngressPort => 1,
            DropReason::InvalidSourceMac => 2,
            DropReason::SourceMacNotAllowed => 3,
            DropReason::TaggedOnAccessPort => 4,
            DropReason::UntaggedOnTrunk => 5,
            DropReason::UnsupportedTag => 6,
            DropReason::InvalidVlanId => 7,
            DropReason::VlanNotAllowed => 8,
            DropReason::DestinationOnIngressPort => 9,
            DropReason::NoDestination => 10,
            DropReason::RetagFailed => 11,
            DropReason::OffloadFailed => 12,
            DropReason::ExceedsMtu => 13,
            DropReason::EgressPortGone => 14,
            DropReason::WorkerQueueFull => 15,
            DropReason::EgressQueueFull => 16,
            DropReason::EgressPortError => 17,
            DropReason::EgressRefused => 18,
            DropReason::Shutdown => 19,
            DropReason::PortIsolated => 20,
            DropReason::IpSourceNotAllowed => 21,
            DropReason::ArpNotOwned => 22,
            DropReason::NdNotOwned => 23,
            DropReason::DhcpServer => 24,
            DropReason::RouterAdvertisement => 25,
            DropReason::GuardUnreadable => 26,
            DropReason::RateLimited => 27,
            DropReason::LentUnreadable => 28,
            DropReason::InvalidHeader(rule) => SWITCH_REASONS.len() + rule.index(),
        }
    }

    /// The counter name. Header rules keep the offload engine's names
    /// (`bad_gso_size`, `csum_start_beyond_frame`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::InvalidHeader(rule) => rule.name(),
            DropReason::UnknownIngressPort => "unknown_ingress_port",
            DropReason::InvalidSourceMac => "invalid_source_mac",
            DropReason::SourceMacNotAllowed => "source_mac_not_allowed",
            DropReason::TaggedOnAccessPort => "tagged_on_access_port",
            DropReason::UntaggedOnTrunk => "untagged_on_trunk",
            DropReason::UnsupportedTag => "unsupported_tag",
            DropReason::InvalidVlanId => "invalid_vlan_id",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::DestinationOnIngressPort => "destination_on_ingress_port",
            DropReason::NoDestination => "no_destination",
            DropReason::RetagFailed => "retag_failed",
            DropReason::OffloadFailed => "offload_failed",
            DropReason::ExceedsMtu => "exceeds_mtu",
            DropReason::EgressPortGone => "egress_port_gone",
            DropReason::WorkerQueueFull => "worker_queue_full",
            DropReason::EgressQueueFull => "egress_queue_full",
            DropReason::EgressPortError => "egress_port_error",
            DropReason::EgressRefused => "egress_refused",
            DropReason::Shutdown => "shutdown",
            DropReason::PortIsolated => "port_isolated",
            DropReason::IpSourceNotAllowed => "ip_source_not_allowed",
            DropReason::ArpNotOwned => "arp_not_owned",
            DropReason::NdNotOwned => "nd_not_owned",
            DropReason::DhcpServer => "dhcp_server",
            DropReason::RouterAdvertisement => "router_advertisement",
            DropReason::GuardUnreadable => "guard_unreadable",
            DropReason::RateLimited => "rate_limited",
            DropReason::LentUnreadable => "lent_unreadable",
        }
    }

    /// Whether the frame was refused for its virtio-net header.
    pub const fn is_invalid_header(self) -> bool {
        matches!(self, DropReason::InvalidHeader(_))
    }
}

impl From<HeaderDrop> for DropReason {
    fn from(rule: HeaderDrop) -> Self {
        DropReason::InvalidHeader(rule)
    }
}

impl From<&CheckError> for DropReason {
    /// The counter of a frame refused by the ingress check.
    fn from(err: &CheckError) -> Self {
        match err {
            CheckError::LinkLayer(_) => DropReason::Malformed,
            CheckError::Header(err) => DropReason::InvalidHeader(err.reason()),
            CheckError::Lent(_) => DropReason::LentUnreadable,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_index_and_name() {
        let mut names = std::collections::HashSet::new();
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
            assert!(names.insert(reason.name()), "{} named twice", reason.name());
            let name = reason.name();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not snake_case"
            );
        }
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn header_rules_keep_the_engine_names() {
        let reason = DropReason::from(HeaderDrop::BadGsoSize);
        assert_eq!(reason.name(), "bad_gso_size");
        assert!(reason.is_invalid_header());
        assert!(!DropReason::Malformed.is_invalid_header());
    }

    #[test]
    fn drops_are_counted_on_the_side_of_their_port() {
        assert_eq!(DropReason::NoDestination.side(), DropSide::Ingress);
        assert_eq!(DropReason::WorkerQueueFull.side(), DropSide::Ingress);
        assert_eq!(DropReason::ExceedsMtu.side(), DropSide::Egress);
        assert_eq!(DropReason::RateLimited.side(), DropSide::Egress);
        let ingress = DropReason::ALL
            .iter()
            .filter(|r| r.side() == DropSide::Ingress)
            .count();
        // Every header rule is an ingress reason.
        assert!(ingress > HeaderDrop::COUNT);
    }
}
