//! The egress adaptation: the one function every frame passes through
//! before a port's send, which makes the frame fit what that port takes.
//!
//! What it does now: a frame with no offload work left (no GSO, no partial
//! checksum) that fits the port's MTU passes; a frame whose remaining work
//! the port declares it does itself (checksum completion, TSO, USO, UFO)
//! passes with its virtio-net header, for the port to act on; anything else
//! is refused with [`EgressError::NeedsSoftwareOffload`] (or
//! [`EgressError::ExceedsMtu`] for a finished frame that is too large, or
//! a GSO frame whose segments would not fit the port's MTU).
//! The software segmentation and checksum engine replaces that refusal by
//! doing the work, through this same function.

use vswitch_offload::virtio::{
    FLAG_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
};
use vswitch_offload::{EgressCapabilities, Packet};

use crate::ethernet::l2_header_len;
use crate::forward::DropReason;

/// Work the egress path did in software on one frame, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressWork {
    /// Segments produced by software segmentation.
    pub segments: u64,
    /// Checksums computed in software.
    pub checksums: u64,
    /// Frames merged into others by software coalescing.
    pub coalesced: u64,
}

/// Why a frame cannot leave through a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The frame needs work in software that the port cannot do.
    #[error(
        "frame needs software offload (gso_type {gso_type:#04x}, flags {flags:#04x}) \
         that the port cannot do itself"
    )]
    NeedsSoftwareOffload {
        /// The frame's `gso_type`.
        gso_type: u8,
        /// The frame's virtio-net `flags`.
        flags: u8,
    },
    /// A frame with nothing left to do, or a segment the port would cut
    /// from a GSO frame, is larger than the port's MTU.
    #[error("IP packet of {l3_len} bytes exceeds the egress MTU of {mtu}")]
    ExceedsMtu {
        /// Length from the IP header on.
        l3_len: usize,
        /// The port's MTU.
        mtu: u16,
    },
}

impl EgressError {
    /// The counter this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            EgressError::NeedsSoftwareOffload { .. } => DropReason::NeedsSoftwareOffload,
            EgressError::ExceedsMtu { .. } => DropReason::ExceedsMtu,
        }
    }
}

/// Whether the port completes the segmentation `gso_type` asks for.
fn port_segments(gso_type: u8, caps: &EgressCapabilities) -> bool {
    match gso_type & !GSO_ECN {
        GSO_TCPV4 => caps.tso4,
        GSO_TCPV6 => caps.tso6,
        GSO_UDP_L4 => caps.uso,
        GSO_UDP => caps.ufo,
        _ => false,
    }
}

/// The smallest IP and transport headers a segment of `gso_type` carries.
fn min_segment_headers(gso_type: u8) -> usize {
    match gso_type & !GSO_ECN {
        GSO_TCPV4 => 20 + 20,
        GSO_TCPV6 => 40 + 20,
        GSO_UDP_L4 => 20 + 8,
        // UFO: gso_size is the IP payload of each fragment.
        _ => 20,
    }
}

/// Adapts `packet` to an egress port with capabilities `caps`. The frames
/// to send are appended to `out` (one today; several once software
/// segmentation runs here). Returns the software work done.
pub fn adapt_for_egress(
    packet: Packet,
    caps: &EgressCapabilities,
    out: &mut Vec<Packet>,
) -> Result<EgressWork, EgressError> {
    let hdr = packet.hdr;
    let gso = hdr.gso_type & !GSO_ECN != GSO_NONE;
    let needs_csum = hdr.flags & FLAG_NEEDS_CSUM != 0;
    if !gso {
        if needs_csum && !caps.checksum {
            return Err(EgressError::NeedsSoftwareOffload {
                gso_type: hdr.gso_type,
                flags: hdr.flags,
            });
        }
        let l3_len = packet.data.len() - l2_header_len(&packet.data);
        if l3_len > usize::from(caps.mtu) {
            return Err(EgressError::ExceedsMtu {
                l3_len,
                mtu: caps.mtu,
            });
        }
    } else if !port_segments(hdr.gso_type, caps) || (needs_csum && !caps.checksum) {
        return Err(EgressError::NeedsSoftwareOffload {
            gso_type: hdr.gso_type,
            flags: hdr.flags,
        });
    } else {
        // The port cuts segments of gso_size payload bytes; with the
        // smallest headers of that kind they must still fit its MTU (as
        // Linux checks GSO frames before a bridge forwards them).
        let l3_len = usize::from(hdr.gso_size) + min_segment_headers(hdr.gso_type);
        if l3_len > usize::from(caps.mtu) {
            return Err(EgressError::ExceedsMtu {
                l3_len,
                mtu: caps.mtu,
            });
        }
    }
    out.push(packet);
    Ok(EgressWork::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_offload::VirtioNetHdr;

    fn frame(l3_len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + l3_len];
        frame[12] = 0x08;
        frame
    }

    fn hdr(flags: u8, gso_type: u8) -> VirtioNetHdr {
        VirtioNetHdr {
            flags,
            gso_type,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        }
    }

    fn adapt(packet: Packet, caps: EgressCapabilities) -> Result<usize, EgressError> {
        let mut out = Vec::new();
        adapt_for_egress(packet, &caps, &mut out)?;
        Ok(out.len())
    }

    #[test]
    fn finished_frames_pass_when_they_fit() {
        let none = EgressCapabilities::none(1500);
        assert_eq!(adapt(Packet::plain(frame(1500)), none), Ok(1));
        assert_eq!(
            adapt(Packet::plain(frame(1501)), none),
            Err(EgressError::ExceedsMtu {
                l3_len: 1501,
                mtu: 1500
            })
        );
        // A tag does not count against the MTU.
        let mut tagged = frame(1504);
        tagged[12..14].copy_from_slice(&[0x81, 0]);
        assert_eq!(adapt(Packet::plain(tagged), none), Ok(1));
    }

    #[test]
    fn work_the_port_does_passes_other_work_is_refused() {
        let partial = Packet::with_hdr(hdr(FLAG_NEEDS_CSUM, GSO_NONE), frame(100));
        assert_eq!(
            adapt(partial.clone(), EgressCapabilities::checksum_only(1500)),
            Ok(1)
        );
        let refused = adapt(partial, EgressCapabilities::none(1500)).unwrap_err();
        assert_eq!(refused.reason(), DropReason::NeedsSoftwareOffload);

        let tso4 = Packet::with_hdr(hdr(FLAG_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN), frame(65000));
        assert_eq!(adapt(tso4.clone(), EgressCapabilities::full(1500)), Ok(1));
        for caps in [
            EgressCapabilities::none(1500),
            EgressCapabilities::checksum_only(9000),
            EgressCapabilities {
                tso4: false,
                ..EgressCapabilities::full(1500)
            },
            EgressCapabilities {
                checksum: false,
                ..EgressCapabilities::full(1500)
            },
        ] {
            assert_eq!(
                adapt(tso4.clone(), caps).unwrap_err().reason(),
                DropReason::NeedsSoftwareOffload,
                "{caps:?}"
            );
        }
        // Segments the port would cut must fit its MTU.
        let mut jumbo_mss = tso4.clone();
        jumbo_mss.hdr.gso_size = 1461;
        assert_eq!(
            adapt(jumbo_mss.clone(), EgressCapabilities::full(1500)),
            Err(EgressError::ExceedsMtu {
                l3_len: 1501,
                mtu: 1500
            })
        );
        assert_eq!(adapt(jumbo_mss, EgressCapabilities::full(9000)), Ok(1));
        let ufo = Packet::with_hdr(hdr(0, GSO_UDP), frame(9000));
        assert!(adapt(ufo.clone(), EgressCapabilities::full(1500)).is_err());
        let with_ufo = EgressCapabilities {
            ufo: true,
            ..EgressCapabilities::full(1500)
        };
        assert_eq!(adapt(ufo, with_ufo), Ok(1));
        let unknown = Packet::with_hdr(hdr(0, 0x42), frame(100));
        assert!(adapt(unknown, EgressCapabilities::full(1500)).is_err());
    }
}
