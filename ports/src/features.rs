//! Typed virtio-net feature negotiation (virtio 1.2, section 5.1.3).
//!
//! A device model offers feature bits, the guest acknowledges a subset, and
//! from then on the acknowledged set decides what may cross: which offloads a
//! guest's transmitted frames may ask of the host ([`HostOffloads`]), and what
//! the guest's receive path accepts ([`GuestOffloads`]). This module turns
//! raw bits into those two typed views, checks the dependency rules the
//! specification sets between bits, and handles the control queue's
//! `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`, which changes the receive offloads at
//! run time.

use thiserror::Error;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net as vn;
use vswitch_offload::virtio::{self as hdr, VirtioNetHdr};
use vswitch_offload::EgressCapabilities;

/// The mask of one feature bit number.
const fn bit(n: u32) -> u64 {
    1 << n
}

bitflags::bitflags! {
    /// A set of virtio-net feature bits.
    ///
    /// The named flags are the bits this crate acts on. A set may hold
    /// other bits too (a device model offers ring features such as
    /// `VIRTIO_F_RING_EVENT_IDX` that the port never looks at): build it
    /// with [`from_bits_retain`](Self::from_bits_retain), and such bits are
    /// kept through `|`, `&`, `-`, [`union`](Self::union),
    /// [`intersection`](Self::intersection) and
    /// [`difference`](Self::difference). Only `!` and
    /// [`complement`](Self::complement) drop them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// The device handles packets with a partial checksum (guest transmit).
        const CSUM = bit(vn::VIRTIO_NET_F_CSUM);
        /// The guest handles packets with a partial checksum (guest receive).
        const GUEST_CSUM = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
        /// Receive offloads can be changed through the control queue.
        const CTRL_GUEST_OFFLOADS = bit(vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
        /// The device reports a maximum MTU.
        const MTU = bit(vn::VIRTIO_NET_F_MTU);
        /// The device has a MAC address.
        const MAC = bit(vn::VIRTIO_NET_F_MAC);
        /// The guest receives TSO frames over IPv4.
        const GUEST_TSO4 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
        /// The guest receives TSO frames over IPv6.
        const GUEST_TSO6 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
        /// The guest receives TSO frames with ECN.
        const GUEST_ECN = bit(vn::VIRTIO_NET_F_GUEST_ECN);
        /// The guest receives UFO frames.
        const GUEST_UFO = bit(vn::VIRTIO_NET_F_GUEST_UFO);
        /// The guest may send TSO frames over IPv4.
        const HOST_TSO4 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
        /// The guest may send TSO frames over IPv6.
        const HOST_TSO6 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
        /// The guest may send TSO frames with ECN.
        const HOST_ECN = bit(vn::VIRTIO_NET_F_HOST_ECN);
        /// The guest may send UFO frames.
        const HOST_UFO = bit(vn::VIRTIO_NET_F_HOST_UFO);
        /// The guest merges receive buffers (the header carries `num_buffers`).
        const MRG_RXBUF = bit(vn::VIRTIO_NET_F_MRG_RXBUF);
        /// The device has a control virtqueue.
        const CTRL_VQ = bit(vn::VIRTIO_NET_F_CTRL_VQ);
        /// The device has several queue pairs.
        const MQ = bit(vn::VIRTIO_NET_F_MQ);
        /// The guest receives USO frames over IPv4.
        const GUEST_USO4 = bit(vn::VIRTIO_NET_F_GUEST_USO4);
        /// The guest receives USO frames over IPv6.
        const GUEST_USO6 = bit(vn::VIRTIO_NET_F_GUEST_USO6);
        /// The guest may send USO frames.
        const HOST_USO = bit(vn::VIRTIO_NET_F_HOST_USO);
        /// Virtio 1.0 or later (the 12-byte header in every case).
        const VERSION_1 = bit(VIRTIO_F_VERSION_1);
    }
}

impl Features {
    /// The receive-offload bits the control queue may change. Not a named
    /// flag of its own, so that `Debug` lists the single bits.
    pub const GUEST_OFFLOAD_BITS: Features = Self::GUEST_CSUM
        .union(Self::GUEST_TSO4)
        .union(Self::GUEST_TSO6)
        .union(Self::GUEST_ECN)
        .union(Self::GUEST_UFO)
        .union(Self::GUEST_USO4)
        .union(Self::GUEST_USO6);
}

/// The dependency rules of virtio 1.2 section 5.1.3.1: a feature the guest
/// acknowledges without what it requires is refused.
const REQUIREMENTS: &[(Features, Features, &str)] = &[
    (Features::GUEST_TSO4, Features::GUEST_CSUM, "GUEST_CSUM"),
    (Features::GUEST_TSO6, Features::GUEST_CSUM, "GUEST_CSUM"),
    (Features::GUEST_UFO, Features::GUEST_CSUM, "GUEST_CSUM"),
    (Features::GUEST_USO4, Features::GUEST_CSUM, "GUEST_CSUM"),
    (Features::GUEST_USO6, Features::GUEST_CSUM, "GUEST_CSUM"),
    (Features::HOST_TSO4, Features::CSUM, "CSUM"),
    (Features::HOST_TSO6, Features::CSUM, "CSUM"),
    (Features::HOST_UFO, Features::CSUM, "CSUM"),
    (Features::HOST_USO, Features::CSUM, "CSUM"),
    (Features::CTRL_GUEST_OFFLOADS, Features::CTRL_VQ, "CTRL_VQ"),
    (Features::MQ, Features::CTRL_VQ, "CTRL_VQ"),
];

/// Why a feature set or a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FeatureError {
    /// The guest acknowledged bits the device did not offer.
    #[error("the guest acknowledged feature bits {bits:#x} that were not offered")]
    NotOffered {
        /// The offending bits.
        bits: u64,
    },
    /// A feature was acknowledged without a feature it requires.
    #[error(
        "feature bits {feature:#x} need {requires} ({required:#x}), which is not acknowledged"
    )]
    MissingDependency {
        /// The feature acknowledged.
        feature: u64,
        /// The bit it needs.
        required: u64,
        /// The name of the bit it needs.
        requires: &'static str,
    },
    /// An ECN feature without any TSO feature of the same direction.
    #[error("feature bits {feature:#x}: ECN needs TSO4 or TSO6 in the same direction")]
    EcnWithoutTso {
        /// The ECN bit acknowledged.
        feature: u64,
    },
    /// GUEST_OFFLOADS_SET without CTRL_GUEST_OFFLOADS negotiated.
    #[error("the guest changed its receive offloads without negotiating CTRL_GUEST_OFFLOADS")]
    OffloadControlNotNegotiated,
    /// GUEST_OFFLOADS_SET asked for bits outside the negotiated receive offloads.
    #[error("receive offloads {bits:#x} asked for at run time were not negotiated")]
    OffloadNotNegotiated {
        /// The offending bits.
        bits: u64,
    },
    /// A transmitted frame asks for an offload the guest did not negotiate.
    #[error("the frame asks for {asked}, which the guest did not negotiate")]
    OffloadNotPermitted {
        /// The offload asked for (`partial checksum`, `TSO over IPv4`, ...).
        asked: &'static str,
    },
}

fn check_dependencies(set: Features) -> Result<(), FeatureError> {
    for &(feature, required, requires) in REQUIREMENTS {
        if set.contains(feature) && !set.contains(required) {
            return Err(FeatureError::MissingDependency {
                feature: feature.bits(),
                required: required.bits(),
                requires,
            });
        }
    }
    if set.contains(Features::GUEST_ECN)
        && !set.intersects(Features::GUEST_TSO4 | Features::GUEST_TSO6)
    {
        return Err(FeatureError::EcnWithoutTso {
            feature: Features::GUEST_ECN.bits(),
        });
    }
    if set.contains(Features::HOST_ECN)
        && !set.intersects(Features::HOST_TSO4 | Features::HOST_TSO6)
    {
        return Err(FeatureError::EcnWithoutTso {
            feature: Features::HOST_ECN.bits(),
        });
    }
    Ok(())
}

/// What a guest's transmitted frames may ask of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostOffloads {
    /// Partial checksums (CSUM).
    pub checksum: bool,
    /// TSO over IPv4 (HOST_TSO4).
    pub tso4: bool,
    /// TSO over IPv6 (HOST_TSO6).
    pub tso6: bool,
    /// TSO with ECN (HOST_ECN).
    pub ecn: bool,
    /// UFO (HOST_UFO).
    pub ufo: bool,
    /// USO (HOST_USO).
    pub uso: bool,
}

impl HostOffloads {
    fn from_features(set: Features) -> Self {
        HostOffloads {
            checksum: set.contains(Features::CSUM),
            tso4: set.contains(Features::HOST_TSO4),
            tso6: set.contains(Features::HOST_TSO6),
            ecn: set.contains(Features::HOST_ECN),
            ufo: set.contains(Features::HOST_UFO),
            uso: set.contains(Features::HOST_USO),
        }
    }

    /// Checks that a header copied from a transmitted descriptor asks only
    /// for negotiated offloads. (Validating it against the frame is the
    /// offload engine's job; this is the feature check before it.)
    pub fn permits(&self, header: &VirtioNetHdr) -> Result<(), FeatureError> {
        let offered = OffloadSet {
            checksum: self.checksum,
            tso4: self.tso4,
            tso6: self.tso6,
            ecn: self.ecn,
            ufo: self.ufo,
            uso: self.uso,
        };
        match offered.first_missing(header) {
            Some(asked) => Err(FeatureError::OffloadNotPermitted { asked }),
            None => Ok(()),
        }
    }
}

/// The offloads one side of a virtio-net device takes, as the header's
/// fields name them: the common ground of [`HostOffloads::permits`] and
/// [`GuestOffloads::accepts`].
struct OffloadSet {
    checksum: bool,
    tso4: bool,
    tso6: bool,
    ecn: bool,
    ufo: bool,
    uso: bool,
}

impl OffloadSet {
    /// The first offload `header` asks for that this set lacks, named for
    /// an error message. A `gso_type` this crate does not know asks for no
    /// offload here: refusing it is header validation's job.
    fn first_missing(&self, header: &VirtioNetHdr) -> Option<&'static str> {
        if header.needs_csum() && !self.checksum {
            return Some("a partial checksum");
        }
        match header.gso_type & !hdr::GSO_ECN {
            hdr::GSO_TCPV4 if !self.tso4 => return Some("TSO over IPv4"),
            hdr::GSO_TCPV6 if !self.tso6 => return Some("TSO over IPv6"),
            hdr::GSO_UDP if !self.ufo => return Some("UFO"),
            hdr::GSO_UDP_L4 if !self.uso => return Some("USO"),
            _ => {}
        }
        if header.gso_type & hdr::GSO_ECN != 0 && !self.ecn {
            return Some("TSO with ECN");
        }
        None
    }
}

/// What a guest's receive path accepts: the offloads frames towards it may
/// keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GuestOffloads {
    /// Partial checksums (GUEST_CSUM).
    pub checksum: bool,
    /// TSO frames over IPv4 (GUEST_TSO4).
    pub tso4: bool,
    /// TSO frames over IPv6 (GUEST_TSO6).
    pub tso6: bool,
    /// TSO frames with ECN (GUEST_ECN).
    pub ecn: bool,
    /// UFO frames (GUEST_UFO).
    pub ufo: bool,
    /// USO frames over IPv4 (GUEST_USO4).
    pub uso4: bool,
    /// USO frames over IPv6 (GUEST_USO6).
    pub uso6: bool,
}

impl GuestOffloads {
    /// The receive offloads named by a feature set.
    pub fn from_features(set: Features) -> Self {
        GuestOffloads {
            checksum: set.contains(Features::GUEST_CSUM),
            tso4: set.contains(Features::GUEST_TSO4),
            tso6: set.contains(Features::GUEST_TSO6),
            ecn: set.contains(Features::GUEST_ECN),
            ufo: set.contains(Features::GUEST_UFO),
            uso4: set.contains(Features::GUEST_USO4),
            uso6: set.contains(Features::GUEST_USO6),
        }
    }

    /// The feature bits of these receive offloads.
    pub fn to_features(self) -> Features {
        let pairs = [
            (self.checksum, Features::GUEST_CSUM),
            (self.tso4, Features::GUEST_TSO4),
            (self.tso6, Features::GUEST_TSO6),
            (self.ecn, Features::GUEST_ECN),
            (self.ufo, Features::GUEST_UFO),
            (self.uso4, Features::GUEST_USO4),
            (self.uso6, Features::GUEST_USO6),
        ];
        pairs
            .iter()
            .filter(|(on, _)| *on)
            .fold(Features::empty(), |acc, (_, bit)| acc | *bit)
    }

    /// Whether the guest's receive path takes a frame with `header` as it
    /// is: every offload the header asks for (a partial checksum, TSO over
    /// IPv4 or IPv6 by `gso_type`, the ECN bit, UFO, USO) is one these
    /// offloads accept, with the same rules as
    /// [`egress_capabilities`](Self::egress_capabilities): nothing without
    /// the checksum offload, USO only with both USO4 and USO6.
    ///
    /// This reads the header's fields only, never the frame: it does not
    /// validate the header against the frame, and says `false` for a
    /// `gso_type` this crate does not know and for the ECN bit on anything
    /// but TSO, so that such a header goes on to validation.
    pub fn accepts(&self, header: &VirtioNetHdr) -> bool {
        let gso = header.gso_type & !hdr::GSO_ECN;
        let known = matches!(
            gso,
            hdr::GSO_NONE | hdr::GSO_TCPV4 | hdr::GSO_TCPV6 | hdr::GSO_UDP | hdr::GSO_UDP_L4
        );
        let ecn_on_tso =
            header.gso_type & hdr::GSO_ECN == 0 || matches!(gso, hdr::GSO_TCPV4 | hdr::GSO_TCPV6);
        let accepted = OffloadSet {
            checksum: self.checksum,
            tso4: self.checksum && self.tso4,
            tso6: self.checksum && self.tso6,
            ecn: self.checksum && self.ecn,
            ufo: self.checksum && self.ufo,
            uso: self.checksum && self.uso4 && self.uso6,
        };
        known && ecn_on_tso && accepted.first_missing(header).is_none()
    }

    /// What the switch must do for this guest at egress: the capabilities
    /// of a port whose far side is this guest's receive path. USO is used
    /// only when the guest takes it over both IPv4 and IPv6, since the
    /// capabilities do not tell the two apart. `ecn` follows GUEST_ECN: a
    /// guest without it gets TSO frames with ECN as segments.
    pub fn egress_capabilities(self, mtu: u16) -> EgressCapabilities {
        EgressCapabilities::none(mtu)
            .with_checksum(self.checksum)
            .with_tso4(self.checksum && self.tso4)
            .with_tso6(self.checksum && self.tso6)
            .with_ecn(self.checksum && self.ecn)
            .with_uso(self.checksum && self.uso4 && self.uso6)
            .with_ufo(self.checksum && self.ufo)
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    acked: Features,
    guest: GuestOffloads,
}

impl Negotiated {
    /// Checks the guest's acknowledged bits against what was offered and
    /// against the dependency rules.
    pub fn new(offered: Features, acked: Features) -> Result<Self, FeatureError> {
        // Bits this module does not name are kept, not dropped: a device
        // model may offer (and the guest acknowledge) ring features the port
        // never looks at, and they stay in `features()`.
        let extra = acked - offered;
        if !extra.is_empty() {
            return Err(FeatureError::NotOffered { bits: extra.bits() });
        }
        check_dependencies(acked)?;
        Ok(Negotiated {
            acked,
            guest: GuestOffloads::from_features(acked),
        })
    }

    /// The acknowledged feature bits.
    pub fn features(&self) -> Features {
        self.acked
    }

    /// What the guest's transmitted frames may ask for.
    pub fn host_offloads(&self) -> HostOffloads {
        HostOffloads::from_features(self.acked)
    }

    /// What the guest's receive path currently accepts (changed at run time
    /// by [`set_guest_offloads`](Self::set_guest_offloads)).
    pub fn guest_offloads(&self) -> GuestOffloads {
        self.guest
    }

    /// Size of the virtio-net header on every buffer: 12 bytes with
    /// VERSION_1 or MRG_RXBUF, else the 10-byte legacy header.
    pub fn header_len(&self) -> usize {
        if self
            .acked
            .intersects(Features::VERSION_1 | Features::MRG_RXBUF)
        {
            hdr::HDR_LEN_V1
        } else {
            hdr::HDR_LEN_LEGACY
        }
    }

    /// Whether received frames may span several buffers (`num_buffers`).
    pub fn mergeable_rx_buffers(&self) -> bool {
        self.acked.contains(Features::MRG_RXBUF)
    }

    /// Handles `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`: the guest asks for a new
    /// set of receive offloads (a subset of those negotiated).
    pub fn set_guest_offloads(&mut self, bits: u64) -> Result<GuestOffloads, FeatureError> {
        if !self.acked.contains(Features::CTRL_GUEST_OFFLOADS) {
            return Err(FeatureError::OffloadControlNotNegotiated);
        }
        let asked = Features::from_bits_retain(bits);
        let outside = asked - (self.acked & Features::GUEST_OFFLOAD_BITS);
        if !outside.is_empty() {
            return Err(FeatureError::OffloadNotNegotiated {
                bits: outside.bits(),
            });
        }
        check_dependencies(asked)?;
        self.guest = GuestOffloads::from_features(asked);
        Ok(self.guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_offloads() -> Features {
        Features::CSUM
            | Features::GUEST_CSUM
            | Features::HOST_TSO4
            | Features::HOST_TSO6
            | Features::HOST_ECN
            | Features::HOST_USO
            | Features::GUEST_TSO4
            | Features::GUEST_TSO6
            | Features::GUEST_ECN
            | Features::GUEST_USO4
            | Features::GUEST_USO6
            | Features::CTRL_VQ
            | Features::CTRL_GUEST_OFFLOADS
            | Features::MRG_RXBUF
            | Features::VERSION_1
    }

    #[test]
    fn bit_numbers_follow_the_specification() {
        assert_eq!(Features::CSUM.bits(), 1 << 0);
        assert_eq!(Features::GUEST_TSO4.bits(), 1 << 7);
        assert_eq!(Features::HOST_TSO4.bits(), 1 << 11);
        assert_eq!(Features::MRG_RXBUF.bits(), 1 << 15);
        assert_eq!(Features::HOST_USO.bits(), 1 << 56);
        assert_eq!(Features::VERSION_1.bits(), 1 << 32);
    }

    #[test]
    fn full_offer_full_ack_is_accepted() {
        let n = Negotiated::new(all_offloads(), all_offloads()).unwrap();
        assert_eq!(n.header_len(), 12);
        assert!(n.mergeable_rx_buffers());
        let host = n.host_offloads();
        assert!(host.checksum && host.tso4 && host.tso6 && host.ecn && host.uso && !host.ufo);
        let caps = n.guest_offloads().egress_capabilities(1500);
        assert!(caps.checksum && caps.tso4 && caps.tso6 && caps.ecn && caps.uso && !caps.ufo);
    }

    /// The ecn capability is GUEST_ECN, for the offloads negotiated and for
    /// those changed at run time; without GUEST_CSUM nothing is offloaded.
    #[test]
    fn egress_ecn_follows_guest_ecn() {
        let tso = Features::GUEST_CSUM | Features::GUEST_TSO4;
        let caps = |acked: Features| {
            Negotiated::new(all_offloads(), acked)
                .unwrap()
                .guest_offloads()
                .egress_capabilities(1500)
        };
        assert!(caps(tso | Features::GUEST_ECN).ecn);
        assert!(caps(tso | Features::GUEST_ECN).tso4);
        assert!(!caps(tso).ecn);
        assert!(caps(tso).tso4);
        let odd = GuestOffloads {
            ecn: true,
            tso4: true,
            ..GuestOffloads::default()
        };
        assert!(!odd.egress_capabilities(1500).ecn);

        let mut n = Negotiated::new(all_offloads(), all_offloads()).unwrap();
        assert!(n.guest_offloads().egress_capabilities(1500).ecn);
        let without_ecn = (Features::GUEST_OFFLOAD_BITS & all_offloads()) - Features::GUEST_ECN;
        let now = n.set_guest_offloads(without_ecn.bits()).unwrap();
        let caps = now.egress_capabilities(1500);
        assert!(caps.tso4 && caps.tso6 && !caps.ecn);
    }

    /// Bits without a name here (VIRTIO_F_RING_EVENT_IDX, bit 29, say)
    /// are negotiated like any other: kept when offered, refused when not.
    #[test]
    fn bits_without_a_name_are_kept_or_refused_like_the_others() {
        let event_idx = Features::from_bits_retain(1 << 29);
        assert!(Features::from_bits(event_idx.bits()).is_none());
        let offered = Features::VERSION_1 | event_idx;
        let n = Negotiated::new(offered, offered).unwrap();
        assert_eq!(n.features().bits(), offered.bits());
        assert!(n.features().contains(event_idx));
        assert_eq!(
            Negotiated::new(Features::VERSION_1, offered).unwrap_err(),
            FeatureError::NotOffered { bits: 1 << 29 }
        );
        let mut with_ctrl = Negotiated::new(all_offloads(), all_offloads()).unwrap();
        assert_eq!(
            with_ctrl.set_guest_offloads(Features::GUEST_CSUM.bits() | 1 << 29),
            Err(FeatureError::OffloadNotNegotiated { bits: 1 << 29 })
        );
    }

    #[test]
    fn bits_not_offered_are_refused() {
        let err =
            Negotiated::new(Features::CSUM, Features::CSUM | Features::HOST_TSO4).unwrap_err();
        assert_eq!(
            err,
            FeatureError::NotOffered {
                bits: Features::HOST_TSO4.bits()
            }
        );
    }

    #[test]
    fn every_dependency_rule_is_enforced() {
        for &(feature, required, _) in REQUIREMENTS {
            let err = Negotiated::new(Features::from_bits_retain(u64::MAX), feature).unwrap_err();
            assert!(
                matches!(err, FeatureError::MissingDependency { feature: f, required: r, .. } if f == feature.bits() && r == required.bits()),
                "{feature:?} without {required:?}: {err:?}"
            );
            assert!(
                Negotiated::new(Features::from_bits_retain(u64::MAX), feature | required).is_ok()
            );
        }
        let ecn_alone = Features::GUEST_CSUM | Features::GUEST_ECN;
        assert!(matches!(
            Negotiated::new(all_offloads(), ecn_alone),
            Err(FeatureError::EcnWithoutTso { .. })
        ));
        let host_ecn_alone = Features::CSUM | Features::HOST_ECN;
        assert!(matches!(
            Negotiated::new(all_offloads(), host_ecn_alone),
            Err(FeatureError::EcnWithoutTso { .. })
        ));
    }

    #[test]
    fn legacy_header_without_version_1_or_mergeable_buffers() {
        let n = Negotiated::new(all_offloads(), Features::CSUM).unwrap();
        assert_eq!(n.header_len(), 10);
        let n = Negotiated::new(all_offloads(), Features::MRG_RXBUF).unwrap();
        assert_eq!(n.header_len(), 12);
    }

    #[test]
    fn guest_offloads_change_at_run_time_within_the_negotiated_set() {
        let mut n = Negotiated::new(all_offloads(), all_offloads()).unwrap();
        let only_csum = n.set_guest_offloads(Features::GUEST_CSUM.bits()).unwrap();
        assert!(only_csum.checksum && !only_csum.tso4);
        assert!(!n.guest_offloads().egress_capabilities(1500).tso4);
        assert!(matches!(
            n.set_guest_offloads((Features::GUEST_UFO | Features::GUEST_CSUM).bits()),
            Err(FeatureError::OffloadNotNegotiated { .. })
        ));
        assert!(matches!(
            n.set_guest_offloads(Features::GUEST_TSO4.bits()),
            Err(FeatureError::MissingDependency { .. })
        ));
        let back = n
            .set_guest_offloads((all_offloads() & Features::GUEST_OFFLOAD_BITS).bits())
            .unwrap();
        assert_eq!(back, GuestOffloads::from_features(all_offloads()));

        let mut no_ctrl = Negotiated::new(all_offloads(), Features::GUEST_CSUM).unwrap();
        assert_eq!(
            no_ctrl.set_guest_offloads(0),
            Err(FeatureError::OffloadControlNotNegotiated)
        );
    }

    #[test]
    fn transmitted_headers_are_checked_against_host_offloads() {
        let n = Negotiated::new(all_offloads(), Features::CSUM | Features::HOST_TSO4).unwrap();
        let host = n.host_offloads();
        let tso4 = VirtioNetHdr {
            flags: hdr::FLAG_NEEDS_CSUM,
            gso_type: hdr::GSO_TCPV4,
            gso_size: 1448,
            ..VirtioNetHdr::default()
        };
        assert_eq!(host.permits(&tso4), Ok(()));
        let tso6 = VirtioNetHdr {
            gso_type: hdr::GSO_TCPV6,
            ..tso4
        };
        assert!(host.permits(&tso6).is_err());
        let ecn = VirtioNetHdr {
            gso_type: hdr::GSO_TCPV4 | hdr::GSO_ECN,
            ..tso4
        };
        assert!(host.permits(&ecn).is_err());
        let plain = Negotiated::new(all_offloads(), Features::empty())
            .unwrap()
            .host_offloads();
        assert!(plain.permits(&tso4).is_err());
        assert_eq!(plain.permits(&VirtioNetHdr::default()), Ok(()));
    }

    #[test]
    fn received_headers_are_checked_against_guest_offloads() {
        let tso4 = VirtioNetHdr {
            flags: hdr::FLAG_NEEDS_CSUM,
            gso_type: hdr::GSO_TCPV4,
            gso_size: 1448,
            ..VirtioNetHdr::default()
        };
        let with = |set: Features| GuestOffloads::from_features(set);
        let csum_tso4 = with(Features::GUEST_CSUM | Features::GUEST_TSO4);
        assert!(csum_tso4.accepts(&tso4));
        assert!(csum_tso4.accepts(&VirtioNetHdr::default()));
        let partial = VirtioNetHdr {
            gso_type: hdr::GSO_NONE,
            gso_size: 0,
            ..tso4
        };
        assert!(csum_tso4.accepts(&partial));
        assert!(!with(Features::empty()).accepts(&partial));
        assert!(!with(Features::GUEST_CSUM).accepts(&tso4));
        let tso6 = VirtioNetHdr {
            gso_type: hdr::GSO_TCPV6,
            ..tso4
        };
        assert!(!csum_tso4.accepts(&tso6));
        let ecn = VirtioNetHdr {
            gso_type: hdr::GSO_TCPV4 | hdr::GSO_ECN,
            ..tso4
        };
        assert!(!csum_tso4.accepts(&ecn));
        assert!(
            with(Features::GUEST_CSUM | Features::GUEST_TSO4 | Features::GUEST_ECN).accepts(&ecn)
        );
        // TSO without the checksum offload, as a hand-built value: refused,
        // as egress_capabilities refuses it.
        let no_csum = GuestOffloads {
            tso4: true,
            ..GuestOffloads::default()
        };
        assert!(!no_csum.accepts(&tso4));
        // USO needs both directions.
        let uso = VirtioNetHdr {
            gso_type: hdr::GSO_UDP_L4,
            ..tso4
        };
        assert!(!with(Features::GUEST_CSUM | Features::GUEST_USO4).accepts(&uso));
        let both = Features::GUEST_CSUM | Features::GUEST_USO4 | Features::GUEST_USO6;
        assert!(with(both).accepts(&uso));
        let ufo = VirtioNetHdr {
            gso_type: hdr::GSO_UDP,
            ..tso4
        };
        assert!(!with(both).accepts(&ufo));
        assert!(with(Features::GUEST_CSUM | Features::GUEST_UFO).accepts(&ufo));
        // Not offload questions: left to validation.
        let all = GuestOffloads::from_features(Features::GUEST_OFFLOAD_BITS);
        let unknown = VirtioNetHdr {
            gso_type: 2,
            ..tso4
        };
        assert!(!all.accepts(&unknown));
        let ecn_on_udp = VirtioNetHdr {
            gso_type: hdr::GSO_UDP_L4 | hdr::GSO_ECN,
            ..tso4
        };
        assert!(!all.accepts(&ecn_on_udp));
        let ecn_alone = VirtioNetHdr {
            gso_type: hdr::GSO_ECN,
            ..tso4
        };
        assert!(!all.accepts(&ecn_alone));
    }

    #[test]
    fn guest_offload_bits_round_trip() {
        let all = GuestOffloads::from_features(Features::GUEST_OFFLOAD_BITS);
        assert_eq!(all.to_features(), Features::GUEST_OFFLOAD_BITS);
        assert_eq!(GuestOffloads::default().to_features(), Features::empty());
    }
}
