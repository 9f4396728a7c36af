//! What an egress port can take, so the engine knows how much work to do in
//! software before a frame leaves through it.

/// The offloads and size limit of an egress port.
///
/// Modelled on smoltcp's `ChecksumCapabilities`: a port declares what its
/// far side completes by itself; everything else the engine does in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressCapabilities {
    /// The port accepts frames whose TCP/UDP checksum is partial
    /// (NEEDS_CSUM) and completes it (virtio `CSUM`, TAP `TUN_F_CSUM`).
    pub checksum: bool,
    /// The port accepts large TCP/IPv4 frames and segments them itself.
    pub tso4: bool,
    /// The port accepts large TCP/IPv6 frames and segments them itself.
    pub tso6: bool,
    /// The port accepts large UDP frames and segments them into datagrams (USO).
    pub uso: bool,
    /// The port accepts large UDP frames and fragments them (UFO).
    pub ufo: bool,
    /// The port takes a frame as a list of buffers (scatter-gather).
    pub scatter_gather: bool,
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
            uso: false,
            ufo: false,
            scatter_gather: false,
            mtu,
        }
    }

    /// A port that completes checksums but does not segment.
    pub const fn checksum_only(mtu: u16) -> Self {
        EgressCapabilities {
            checksum: true,
            ..Self::none(mtu)
        }
    }

    /// A port that completes checksums and segments TCP over IPv4 and IPv6
    /// and UDP (USO) itself.
    pub const fn full(mtu: u16) -> Self {
        EgressCapabilities {
            checksum: true,
            tso4: true,
            tso6: true,
            uso: true,
            ufo: false,
            scatter_gather: true,
            mtu,
        }
    }
}

impl Default for EgressCapabilities {
    fn default() -> Self {
        Self::none(1500)
    }
}
