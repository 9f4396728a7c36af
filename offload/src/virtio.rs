//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 section
//! 5.1.6) that travels before every frame between a guest and the host.
//!
//! Field values here are in host order; the wire format is little-endian.

/// `flags`: the checksum is partial (start at `csum_start`, store at
/// `csum_start + csum_offset`).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `flags`: receive only, the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;
/// `flags`: receive only, RSC information in `csum_*` fields.
pub const FLAG_RSC_INFO: u8 = 4;

/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO).
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO), one datagram per segment.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP frame has ECN (CWR must go on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`).
pub const HDR_LEN_V1: usize = 12;
/// Size of the legacy `virtio_net_hdr` (without `num_buffers`).
pub const HDR_LEN_LEGACY: usize = 10;

/// A virtio-net header, copied out of guest memory into host memory.
///
/// Copy it once and validate the copy: guest memory can change under the
/// host between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VirtioNetHdr {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` value, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of all headers: a hint from the guest, never trusted.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum is stored.
    pub csum_offset: u16,
    /// Number of merged receive buffers (receive side with
    /// `VIRTIO_NET_F_MRG_RXBUF` only).
    pub num_buffers: u16,
}
