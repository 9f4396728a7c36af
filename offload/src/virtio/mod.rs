//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 section
//! 5.1.6) that travels before every frame between a guest and the host.
//!
//! Field values here are in host order; the wire format is little-endian.
//!
//! Copy once, validate the copy: a guest can rewrite its memory while the
//! host reads it, so a header checked in guest memory and read again when
//! used can pass the check with one value and be used with another.
//! [`VirtioNetHdr::parse`] copies the fields out of the guest's bytes in one
//! pass into a host-owned value; [`VirtioNetHdr::validate`] takes that copy
//! (`&self`, never guest memory) with the frame and returns an
//! [`OffloadPlan`](crate::OffloadPlan) built only from the two. The frame too must be in host
//! memory before it is validated.
//!
//! Validation refuses, each with its own [`HdrError`] and [`DropReason`],
//! every header the engine cannot act on safely: the full list is on
//! [`VirtioNetHdr::validate`]. Beyond bounds and protocol agreement, two
//! rules keep a guest from asking for work that no TCP sender asks for: a
//! TCP GSO frame's MSS must be at least Linux's minimum ([`MIN_TCP_MSS`],
//! 88 bytes), so one 64 kB descriptor cannot become tens of thousands of
//! segments; and its TCP header must not carry SYN or RST, which the
//! segmenter would copy onto every segment (FIN and PSH are fine: they go
//! on the last segment only, CWR on the first only).
//!
//! ```
//! use vswitch_offload::virtio::{HdrFormat, GSO_TCPV4, FLAG_NEEDS_CSUM};
//! use vswitch_offload::{GsoKind, VirtioNetHdr};
//!
//! // A guest's TCP/IPv4 TSO frame: MSS 1448, checksum left partial.
//! let guest_bytes = [FLAG_NEEDS_CSUM, GSO_TCPV4, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
//! let mut frame = vec![0u8; 54 + 4000];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
//! frame[14] = 0x45;
//! frame[14 + 9] = 6; // TCP
//! frame[34 + 12] = 5 << 4;
//!
//! let (hdr, used) = VirtioNetHdr::parse(&guest_bytes, HdrFormat::V1).unwrap();
//! assert_eq!(used, 12);
//! let plan = hdr.validate(&frame).unwrap();
//! assert_eq!(plan.gso(), GsoKind::Tcp { mss: 1448, ecn: false });
//! assert_eq!(plan.layout().unwrap().payload_offset, 54);
//!
//! // gso_size 0 would divide by zero in a segmenter: it is rejected.
//! let mut bad = hdr;
//! bad.gso_size = 0;
//! assert_eq!(bad.validate(&frame).unwrap_err().reason().name(), "bad_gso_size");
//! ```

mod error;
mod header;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{gso_type_name, BufferTooShort, DropReason, HdrError};
pub use header::{
    HdrFormat, VirtioNetHdr, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, FLAG_RSC_INFO, GSO_ECN, GSO_NONE,
    GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, HDR_LEN_LEGACY, HDR_LEN_V1,
};
pub use validate::{MAX_L3_LEN, MAX_UDP_L4_SEGMENTS, MIN_TCP_MSS};
