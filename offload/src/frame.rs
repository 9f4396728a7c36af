//! A frame as it moves through the switch: the bytes and the virtio-net
//! header that says what is still to be done to them.

use bytes::Bytes;

use crate::virtio::VirtioNetHdr;

/// An Ethernet frame with its offload metadata.
///
/// `hdr` is all zero for a plain frame (fully checksummed, no segmentation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packet {
    /// Offload metadata (partial checksum, segmentation).
    pub hdr: VirtioNetHdr,
    /// The frame, from the destination MAC address on.
    pub data: Bytes,
}

impl Packet {
    /// A plain frame: nothing left to do.
    pub fn plain(data: impl Into<Bytes>) -> Self {
        Packet {
            hdr: VirtioNetHdr::default(),
            data: data.into(),
        }
    }

    /// A frame with offload work left, as a guest hands it over.
    pub fn with_hdr(hdr: VirtioNetHdr, data: impl Into<Bytes>) -> Self {
        Packet {
            hdr,
            data: data.into(),
        }
    }
}
