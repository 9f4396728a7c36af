//! What a guest asked the host to do with one frame, after its virtio-net
//! header was validated against the frame.
//!
//! An [`OffloadPlan`] is produced only by validation
//! ([`VirtioNetHdr::validate`](crate::VirtioNetHdr::validate), or the
//! shortcut [`crate::CheckedFrame::check`] takes to the same plan for a frame
//! with no offload work) and derived from a validated one by
//! [`OffloadPlan::shifted`]: its fields are private
//! and read through accessors, so no code outside this crate can write a
//! plan by hand. [`crate::CheckedFrame`] keeps a plan beside the bytes it
//! was validated against, and that is the only form the offload entry
//! points ([`crate::adapt`]) take.

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
    layout: Option<FrameLayout>,
    gso: GsoKind,
    partial_checksum: Option<PartialChecksum>,
}

impl OffloadPlan {
    /// A plan from the parts validation found. Only validation (and its
    /// shortcut for finished frames in [`crate::CheckedFrame::check`]) calls
    /// this: the parts must describe the frame the header was validated
    /// against.
    pub(crate) const fn new(
        layout: Option<FrameLayout>,
        gso: GsoKind,
        partial_checksum: Option<PartialChecksum>,
    ) -> OffloadPlan {
        OffloadPlan {
            layout,
            gso,
            partial_checksum,
        }
    }

    /// Header offsets. Always present for GSO frames; `None` for a non-GSO
    /// frame that is not IPv4/IPv6 (a partial checksum may still apply).
    pub const fn layout(&self) -> Option<&FrameLayout> {
        self.layout.as_ref()
    }

    /// The segmentation asked for.
    pub const fn gso(&self) -> GsoKind {
        self.gso
    }

    /// The checksum left for the host, if any.
    pub const fn partial_checksum(&self) -> Option<PartialChecksum> {
        self.partial_checksum
    }

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
