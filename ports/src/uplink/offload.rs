//! What the NIC under an uplink does on transmit, and what the switch may
//! therefore hand it unfinished: the `offload=auto|none|csum|tso` modes.

use std::fmt;
use std::str::FromStr;

use vswitch_offload::virtio::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use vswitch_offload::{EgressCapabilities, VirtioNetHdr};

/// The transmit offloads an interface has turned on, as `ethtool -k`
/// shows them.
///
/// Read by name with `ETHTOOL_GFEATURES`; where a driver lists no feature
/// names, the legacy one-flag get commands answer instead, which cannot
/// tell TSO over IPv4 from TSO over IPv6 nor see TSO with ECN or USO: TSO
/// then counts for both IP versions and ECN and USO count as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct NicFeatures {
    /// `tx-checksumming` for both IP versions (`tx-checksum-ip-generic`,
    /// or both `tx-checksum-ipv4` and `tx-checksum-ipv6`): the NIC
    /// completes TCP/UDP checksums.
    pub tx_checksum: bool,
    /// `tx-scatter-gather`: the NIC takes a frame in several buffers (the
    /// kernel turns TSO off without it).
    pub scatter_gather: bool,
    /// `tx-tcp-segmentation`: the NIC cuts large TCP/IPv4 frames.
    pub tso: bool,
    /// `tx-tcp6-segmentation`: the NIC cuts large TCP/IPv6 frames.
    pub tso6: bool,
    /// `tx-tcp-ecn-segmentation`: the NIC puts CWR on the first segment only.
    pub tso_ecn: bool,
    /// `tx-udp-segmentation`: the NIC cuts large UDP frames into datagrams.
    pub uso: bool,
    /// `tx-generic-segmentation`: the kernel's own stack may build large
    /// frames for this device and cut them in software just before the
    /// driver. It says nothing of the NIC itself.
    pub gso: bool,
}

impl NicFeatures {
    /// Features from the legacy get commands (see the type's docs).
    pub fn from_legacy(tx_checksum: bool, scatter_gather: bool, tso: bool, gso: bool) -> Self {
        NicFeatures {
            tx_checksum,
            scatter_gather,
            tso,
            tso6: tso,
            tso_ecn: false,
            uso: false,
            gso,
        }
    }

    /// Features from `ethtool -k` names and whether each is active.
    pub fn from_names<'a>(active: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut features = NicFeatures::default();
        let (mut v4, mut v6, mut generic) = (false, false, false);
        for (name, on) in active {
            match name {
                "tx-checksum-ipv4" => v4 = on,
                "tx-checksum-ipv6" => v6 = on,
                "tx-checksum-ip-generic" | "tx-checksum-hw" => generic |= on,
                "tx-scatter-gather" => features.scatter_gather = on,
                "tx-tcp-segmentation" => features.tso = on,
                "tx-tcp6-segmentation" => features.tso6 = on,
                "tx-tcp-ecn-segmentation" => features.tso_ecn = on,
                "tx-udp-segmentation" => features.uso = on,
                "tx-generic-segmentation" => features.gso = on,
                _ => {}
            }
        }
        features.tx_checksum = generic || (v4 && v6);
        features
    }

    /// What the NIC itself finishes: checksums when it has tx
    /// checksumming, and each kind of segmentation it has, where it also
    /// has scatter-gather and checksums (every segment needs its own).
    pub fn egress_capabilities(self, mtu: u16) -> EgressCapabilities {
        let can_cut = self.tx_checksum && self.scatter_gather;
        let tso4 = can_cut && self.tso;
        let tso6 = can_cut && self.tso6;
        EgressCapabilities::none(mtu)
            .with_checksum(self.tx_checksum)
            .with_tso4(tso4)
            .with_tso6(tso6)
            .with_ecn((tso4 || tso6) && self.tso_ecn)
            .with_uso(can_cut && self.uso)
    }
}

impl fmt::Display for NicFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "tx-checksumming {}, scatter-gather {}, tso {}, tso6 {}, tso-ecn {}, uso {}, gso {}",
            on(self.tx_checksum),
            on(self.scatter_gather),
            on(self.tso),
            on(self.tso6),
            on(self.tso_ecn),
            on(self.uso),
            on(self.gso)
        )
    }
}

/// What an uplink lets through unfinished (`offload=...`).
///
/// Under an AF_PACKET socket with a virtio-net header the kernel finishes
/// whatever the NIC cannot: it completes a partial checksum and cuts a
/// large frame in software (its own GSO) just before the driver. So every
/// mode is correct on every NIC; the modes choose *who* does the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OffloadMode {
    /// Follow the NIC: partial checksums and large TCP frames pass only
    /// where the NIC finishes them itself, and the switch does the rest in
    /// software, so no work is left to the kernel's fallbacks. Changes made
    /// while running (`ethtool -K IFACE tso off`) are followed.
    #[default]
    Auto,
    /// Nothing passes unfinished: the switch completes every checksum and
    /// cuts every large frame.
    None,
    /// Partial checksums pass (the NIC or the kernel completes them); the
    /// switch cuts large frames.
    Checksum,
    /// Partial checksums and large TCP frames pass whole, whatever the NIC
    /// says: on a NIC without TSO the kernel's software GSO cuts them,
    /// after one system call per large frame rather than one per segment.
    Tso,
}

impl OffloadMode {
    /// The capabilities this mode gives a port over a NIC with `nic`.
    pub fn egress_capabilities(self, nic: NicFeatures, mtu: u16) -> EgressCapabilities {
        match self {
            OffloadMode::Auto => nic.egress_capabilities(mtu),
            OffloadMode::None => EgressCapabilities::none(mtu),
            OffloadMode::Checksum => EgressCapabilities::checksum_only(mtu),
            OffloadMode::Tso => EgressCapabilities::checksum_only(mtu)
                .with_tso4(true)
                .with_tso6(true)
                .with_ecn(true),
        }
    }

    /// The name `offload=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadMode::Auto => "auto",
            OffloadMode::None => "none",
            OffloadMode::Checksum => "csum",
            OffloadMode::Tso => "tso",
        }
    }
}

impl fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `offload=` value that is not one of the modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offload mode {found:?}: expected auto, none, csum or tso")]
pub struct BadOffloadMode {
    /// What was given.
    pub found: String,
}

impl FromStr for OffloadMode {
    type Err = BadOffloadMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(OffloadMode::Auto),
            "none" => Ok(OffloadMode::None),
            "csum" => Ok(OffloadMode::Checksum),
            "tso" => Ok(OffloadMode::Tso),
            other => Err(BadOffloadMode {
                found: other.to_owned(),
            }),
        }
    }
}

/// Whether a frame with `hdr` may leave through a port with `caps` as it
/// is: a look at the header's fields only. The switch adapted the frame to
/// the capabilities the port declared when it was added; this tells the
/// port whether the ones in force now still take it.
pub(crate) fn caps_accept(caps: &EgressCapabilities, hdr: &VirtioNetHdr) -> bool {
    if !hdr.has_offload_work() {
        return true;
    }
    if hdr.needs_csum() && !caps.checksum {
        return false;
    }
    let ecn = hdr.gso_type & GSO_ECN != 0;
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => !ecn,
        GSO_TCPV4 => caps.tso4 && (!ecn || caps.ecn),
        GSO_TCPV6 => caps.tso6 && (!ecn || caps.ecn),
        GSO_UDP_L4 => caps.uso && !ecn,
        GSO_UDP => caps.ufo && !ecn,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_offload::virtio::FLAG_NEEDS_CSUM;

    const FULL_NIC: NicFeatures = NicFeatures {
        tx_checksum: true,
        scatter_gather: true,
        tso: true,
        tso6: true,
        tso_ecn: true,
        uso: false,
        gso: true,
    };

    #[test]
    fn modes_parse_and_print_as_offload_takes_them() {
        for mode in [
            OffloadMode::Auto,
            OffloadMode::None,
            OffloadMode::Checksum,
            OffloadMode::Tso,
        ] {
            assert_eq!(mode.as_str().parse::<OffloadMode>(), Ok(mode));
        }
        let err = "gso".parse::<OffloadMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "offload mode \"gso\": expected auto, none, csum or tso"
        );
    }

    #[test]
    fn auto_follows_the_nic_and_tso_needs_checksums_and_scatter_gather() {
        let caps = OffloadMode::Auto.egress_capabilities(FULL_NIC, 1500);
        assert!(caps.checksum && caps.tso4 && caps.tso6 && caps.ecn);
        assert!(!caps.uso && !caps.ufo);
        let no_tso = NicFeatures {
            tso: false,
            tso6: false,
            ..FULL_NIC
        };
        assert_eq!(
            OffloadMode::Auto.egress_capabilities(no_tso, 1500),
            EgressCapabilities::checksum_only(1500)
        );
        let no_sg = NicFeatures {
            scatter_gather: false,
            ..FULL_NIC
        };
        assert!(!OffloadMode::Auto.egress_capabilities(no_sg, 1500).tso4);
        let bare = NicFeatures::default();
        assert_eq!(
            OffloadMode::Auto.egress_capabilities(bare, 9000),
            EgressCapabilities::none(9000)
        );
    }

    #[test]
    fn features_by_name_tell_the_ip_versions_ecn_and_uso_apart() {
        let names = [
            ("tx-checksum-ipv4", true),
            ("tx-checksum-ipv6", true),
            ("tx-scatter-gather", true),
            ("tx-tcp-segmentation", true),
            ("tx-tcp6-segmentation", false),
            ("tx-tcp-ecn-segmentation", false),
            ("tx-udp-segmentation", true),
            ("rx-gro", true),
        ];
        let nic = NicFeatures::from_names(names);
        assert!(nic.tx_checksum && nic.tso && !nic.tso6 && !nic.tso_ecn && nic.uso);
        let caps = OffloadMode::Auto.egress_capabilities(nic, 1500);
        assert!(caps.tso4 && !caps.tso6 && !caps.ecn && caps.uso);
        // Checksums for one IP version only are not checksums.
        let v4_only = NicFeatures::from_names([("tx-checksum-ipv4", true)]);
        assert!(!v4_only.tx_checksum);
        let generic = NicFeatures::from_names([("tx-checksum-ip-generic", true)]);
        assert!(generic.tx_checksum);
        // The legacy flags cannot see ECN or USO, so they count as absent.
        let legacy = NicFeatures::from_legacy(true, true, true, true);
        let caps = legacy.egress_capabilities(1500);
        assert!(caps.tso4 && caps.tso6 && !caps.ecn && !caps.uso);
    }

    #[test]
    fn explicit_modes_ignore_the_nic() {
        let bare = NicFeatures::default();
        assert_eq!(
            OffloadMode::None.egress_capabilities(FULL_NIC, 1500),
            EgressCapabilities::none(1500)
        );
        assert_eq!(
            OffloadMode::Checksum.egress_capabilities(bare, 1500),
            EgressCapabilities::checksum_only(1500)
        );
        let tso = OffloadMode::Tso.egress_capabilities(bare, 1500);
        assert!(tso.checksum && tso.tso4 && tso.tso6 && tso.ecn && !tso.uso);
    }

    #[test]
    fn a_header_is_accepted_only_for_offloads_in_force() {
        let partial = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        let tso4 = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            ..partial
        };
        let tso4_ecn = VirtioNetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..tso4
        };
        let tso6 = VirtioNetHdr {
            gso_type: GSO_TCPV6,
            ..tso4
        };
        let none = EgressCapabilities::none(1500);
        let csum = EgressCapabilities::checksum_only(1500);
        let tso = OffloadMode::Tso.egress_capabilities(NicFeatures::default(), 1500);
        assert!(caps_accept(&none, &VirtioNetHdr::default()));
        assert!(!caps_accept(&none, &partial));
        assert!(caps_accept(&csum, &partial));
        assert!(!caps_accept(&csum, &tso4));
        assert!(caps_accept(&tso, &tso4) && caps_accept(&tso, &tso6));
        assert!(caps_accept(&tso, &tso4_ecn));
        assert!(!caps_accept(&tso.with_ecn(false), &tso4_ecn));
        assert!(!caps_accept(&tso.with_tso6(false), &tso6));
        let uso = VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            ..partial
        };
        assert!(!caps_accept(&tso, &uso));
        assert!(caps_accept(&tso.with_uso(true), &uso));
        let unknown = VirtioNetHdr {
            gso_type: 9,
            ..partial
        };
        assert!(!caps_accept(&EgressCapabilities::full(1500), &unknown));
    }
}
