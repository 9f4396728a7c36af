//! What a guest asked the host to do with one frame, after its virtio-net
//! header was validated against the frame.
//!
//! An [`OffloadPlan`] is produced only by validation (see [`crate::virtio`]);
//! the segmenter and the checksum completer trust its offsets.

use crate::layout::FrameLayout;

/// The segmentation a frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// Not a GSO frame: send as it is (after checksum completion).
    None,
    /// TCP segmentation (TSO) over IPv4 or IPv6, `mss` payload bytes per
    /// segment. `ecn`: the guest set the ECN bit, so CWR goes on the first
    /// segment only.
    Tcp {
        /// Payload bytes per segment.
        mss: u16,
        /// The gso_type carried the ECN bit.
        ecn: bool,
    },
    /// UDP segmentation (USO, `GSO_UDP_L4`): each segment is a datagram of
    /// `size` payload bytes (the last may be shorter).
    UdpL4 {
        /// Payload bytes per datagram.
        size: u16,
    },
    /// UDP fragmentation (UFO, `GSO_UDP`): one datagram, IP-fragmented with
    /// at most `size` bytes of IP payload per fragment (rounded down to a
    /// multiple of 8 on all but the last).
    Ufo {
        /// IP payload bytes per fragment, before rounding.
        size: u16,
    },
}

/// A partial checksum to complete: sum from `start` to the end of the frame
/// and store the complement at `start + offset`. The field already holds the
/// seed (usually the pseudo-header sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialChecksum {
    /// Offset of the first byte summed (the transport header).
    pub start: usize,
    /// Where, after `start`, the 16-bit result goes (16 for TCP, 6 for UDP).
    pub offset: usize,
}

/// A validated request: the parsed layout, the segmentation, the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffloadPlan {
    /// Header offsets. Always present for GSO frames; `None` for a non-GSO
    /// frame that is not IPv4/IPv6 (a partial checksum may still apply).
    pub layout: Option<FrameLayout>,
    /// The segmentation asked for.
    pub gso: GsoKind,
    /// The checksum left for the host, if any.
    pub partial_checksum: Option<PartialChecksum>,
}

impl OffloadPlan {
    /// The same plan for the frame after `delta` bytes were inserted or
    /// removed before its IP header (a VLAN tag pushed or popped), with
    /// `tags` VLAN tags now. `None` if an offset would leave the frame's
    /// start.
    pub fn shifted(&self, delta: isize, tags: u8) -> Option<OffloadPlan> {
        let layout = match &self.layout {
            Some(layout) => Some(layout.shifted(delta, tags)?),
            None => None,
        };
        let partial_checksum = match self.partial_checksum {
            Some(partial) => Some(PartialChecksum {
                start: partial.start.checked_add_signed(delta)?,
                offset: partial.offset,
            }),
            None => None,
        };
        Some(OffloadPlan {
            layout,
            gso: self.gso,
            partial_checksum,
        })
    }
}
