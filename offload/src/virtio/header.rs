//! The header's wire format: flags, GSO types, the two layouts, parsing
//! and emitting.

use super::error::{BufferTooShort, HdrError};

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

/// Which layout of the header is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HdrFormat {
    /// `virtio_net_hdr_v1` (12 bytes, with `num_buffers`): virtio 1.0 and
    /// later, or legacy devices with `VIRTIO_NET_F_MRG_RXBUF`.
    V1,
    /// The legacy `virtio_net_hdr` (10 bytes, no `num_buffers`).
    Legacy,
}

impl HdrFormat {
    /// Size of the header in this format.
    pub const fn size(self) -> usize {
        match self {
            HdrFormat::V1 => HDR_LEN_V1,
            HdrFormat::Legacy => HDR_LEN_LEGACY,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing, emitting and validating the header (copy once, validate the copy:
// see the module documentation). Nothing after `parse` reads the guest's
// header bytes again.
// ---------------------------------------------------------------------------

impl VirtioNetHdr {
    /// Copies a header out of the first bytes of `bytes` (little-endian) and
    /// returns it with the number of bytes it took. Each field is read
    /// exactly once; the returned value is the host's copy, which
    /// [`VirtioNetHdr::validate`] checks and everything after it uses.
    /// `num_buffers` is 0 for [`HdrFormat::Legacy`].
    pub fn parse(bytes: &[u8], format: HdrFormat) -> Result<(VirtioNetHdr, usize), HdrError> {
        let n = format.size();
        let b = bytes.get(..n).ok_or(HdrError::ShortHeader {
            required_len: n,
            len: bytes.len(),
        })?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let hdr = VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: if n == HDR_LEN_V1 { le(10) } else { 0 },
        };
        Ok((hdr, n))
    }

    /// Writes the header (little-endian) at the start of `buf`; returns the
    /// number of bytes written. [`HdrFormat::Legacy`] leaves out `num_buffers`.
    pub fn emit(&self, buf: &mut [u8], format: HdrFormat) -> Result<usize, BufferTooShort> {
        let n = format.size();
        let len = buf.len();
        let out = buf.get_mut(..n).ok_or(BufferTooShort {
            required_len: n,
            len,
        })?;
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        if n == HDR_LEN_V1 {
            out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        }
        Ok(n)
    }

    /// Whether `NEEDS_CSUM` is set.
    pub const fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// Whether the header asks for segmentation (any GSO type, the ECN bit
    /// aside).
    pub const fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the frame still has offload work: a partial checksum or
    /// segmentation. A header without either describes a finished frame.
    pub const fn has_offload_work(&self) -> bool {
        self.needs_csum() || self.is_gso()
    }
}
