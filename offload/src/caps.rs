//! What an egress port can take, so the engine knows how much work to do in
//! software before a frame leaves through it.
//!
//! A port declares what its far side completes by itself; everything else
//! the engine does in software (see [`crate::adapt`]):
//! * `checksum`: partial TCP/UDP checksums (NEEDS_CSUM) are completed there.
//! * `tso4`, `tso6`, `uso`, `ufo`: large frames of that kind are cut there.
//!   Each needs `checksum` too, since every segment needs its own checksum.
//! * `ecn`: TSO frames whose `gso_type` carries the ECN bit are taken too.
//!   Such a frame has CWR set, and CWR must end up on the first segment
//!   only; a far side that did not say it handles this (virtio
//!   `VIRTIO_NET_F_GUEST_ECN`, TAP `TUN_F_TSO_ECN`) gets the segments
//!   instead.
//! * `mtu`: the largest IP packet that leaves.
//!
//! Frames the engine writes are contiguous: there is no capability for a
//! port that gathers a frame from several buffers, because handing one the
//! payload in place of a copy was measured to cost more CPU than the copy
//! (see [`crate::segment`]).
//!
//! The struct is `#[non_exhaustive]`, so capabilities can be added (tunnel
//! offloads, USO per IP version) without breaking callers: outside this
//! crate a value starts from [`EgressCapabilities::none`],
//! [`EgressCapabilities::checksum_only`] or [`EgressCapabilities::full`] and
//! is changed with the `with_*` methods.
//!
//! ```
//! use vswitch_offload::EgressCapabilities;
//!
//! // A TAP device asked for checksums and TSO over IPv4, without TSO_ECN.
//! let tap = EgressCapabilities::checksum_only(1500).with_tso4(true);
//! assert!(tap.checksum && tap.tso4 && !tap.tso6 && !tap.ecn);
//! assert!(EgressCapabilities::full(9000).ecn);
//! ```

/// The offloads and size limit of an egress port.
///
/// Modelled on smoltcp's `ChecksumCapabilities`: a port declares what its
/// far side completes by itself; everything else the engine does in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EgressCapabilities {
    /// The port accepts frames whose TCP/UDP checksum is partial
    /// (NEEDS_CSUM) and completes it (virtio `CSUM`, TAP `TUN_F_CSUM`).
    pub checksum: bool,
    /// The port accepts large TCP/IPv4 frames and segments them itself.
    pub tso4: bool,
    /// The port accepts large TCP/IPv6 frames and segments them itself.
    pub tso6: bool,
    /// The port's far side takes TSO frames with ECN (the ECN bit in
    /// `gso_type`), that is, it handles CWR itself: it puts it on the first
    /// segment only (virtio `GUEST_ECN`, TAP `TUN_F_TSO_ECN`). Without it a
    /// TSO frame with ECN is segmented in software even when `tso4`/`tso6`
    /// is set.
    pub ecn: bool,
    /// The port accepts large UDP frames and segments them into datagrams (USO).
    pub uso: bool,
    /// The port accepts large UDP frames and fragments them (UFO).
    pub ufo: bool,
    /// The largest IP packet (L3 length) the port carries, as an interface MTU.
    pub mtu: u16,
}

impl EgressCapabilities {
    /// A port that completes nothing: every frame must be fully checksummed
    /// and fit the MTU.
    pub const fn none(mtu: u16) -> Self {
        EgressCapabilities {
            checksum: false,
            tso4: false,
            tso6: false,
            ecn: false,
            uso: false,
            ufo: false,
            mtu,
        }
    }

    /// A port that completes checksums but does not segment.
    pub const fn checksum_only(mtu: u16) -> Self {
        Self::none(mtu).with_checksum(true)
    }

    /// A port that completes checksums and segments TCP over IPv4 and IPv6
    /// (ECN included) and UDP (USO) itself.
    pub const fn full(mtu: u16) -> Self {
        EgressCapabilities {
            checksum: true,
            tso4: true,
            tso6: true,
            ecn: true,
            uso: true,
            ufo: false,
            mtu,
        }
    }

    /// These capabilities with checksum completion on or off.
    #[must_use]
    pub const fn with_checksum(mut self, checksum: bool) -> Self {
        self.checksum = checksum;
        self
    }

    /// These capabilities with TCP/IPv4 segmentation on or off.
    #[must_use]
    pub const fn with_tso4(mut self, tso4: bool) -> Self {
        self.tso4 = tso4;
        self
    }

    /// These capabilities with TCP/IPv6 segmentation on or off.
    #[must_use]
    pub const fn with_tso6(mut self, tso6: bool) -> Self {
        self.tso6 = tso6;
        self
    }

    /// These capabilities with TSO frames with ECN taken or not.
    #[must_use]
    pub const fn with_ecn(mut self, ecn: bool) -> Self {
        self.ecn = ecn;
        self
    }

    /// These capabilities with UDP segmentation (USO) on or off.
    #[must_use]
    pub const fn with_uso(mut self, uso: bool) -> Self {
        self.uso = uso;
        self
    }

    /// These capabilities with UDP fragmentation (UFO) on or off.
    #[must_use]
    pub const fn with_ufo(mut self, ufo: bool) -> Self {
        self.ufo = ufo;
        self
    }

    /// These capabilities with another MTU.
    #[must_use]
    pub const fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }
}

impl Default for EgressCapabilities {
    fn default() -> Self {
        Self::none(1500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_and_builders_set_exactly_their_field() {
        let none = EgressCapabilities::none(1280);
        assert_eq!(
            (none.checksum, none.tso4, none.tso6, none.ecn),
            (false, false, false, false)
        );
        assert_eq!((none.uso, none.ufo), (false, false));
        assert_eq!(none.mtu, 1280);
        assert_eq!(
            EgressCapabilities::checksum_only(1280),
            EgressCapabilities {
                checksum: true,
                ..none
            }
        );
        let full = EgressCapabilities::full(9000);
        assert!(full.checksum && full.tso4 && full.tso6 && full.ecn && full.uso);
        assert!(!full.ufo);
        let builders: [(EgressCapabilities, EgressCapabilities); 7] = [
            (
                none.with_checksum(true),
                EgressCapabilities {
                    checksum: true,
                    ..none
                },
            ),
            (
                none.with_tso4(true),
                EgressCapabilities { tso4: true, ..none },
            ),
            (
                none.with_tso6(true),
                EgressCapabilities { tso6: true, ..none },
            ),
            (
                none.with_ecn(true),
                EgressCapabilities { ecn: true, ..none },
            ),
            (
                none.with_uso(true),
                EgressCapabilities { uso: true, ..none },
            ),
            (
                none.with_ufo(true),
                EgressCapabilities { ufo: true, ..none },
            ),
            (
                none.with_mtu(9000),
                EgressCapabilities { mtu: 9000, ..none },
            ),
        ];
        for (built, expected) in builders {
            assert_eq!(built, expected);
            assert_ne!(built, none);
        }
        assert_eq!(full.with_ecn(false).with_ecn(true), full);
        assert_eq!(
            EgressCapabilities::default(),
            EgressCapabilities::none(1500)
        );
    }
}
