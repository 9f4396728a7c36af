//! Zero-copy parsing views over frame bytes, and the frame parser that
//! produces a [`FrameLayout`](crate::layout::FrameLayout).
//!
//! Each view wraps any `T: AsRef<[u8]>` (a slice, a `Vec`, `bytes::Bytes`)
//! starting at its header. `new_checked` checks, once, that every field the
//! getters read lies inside the buffer; after that the getters index without
//! further checks. Setters live in a separate impl for `T: AsMut<[u8]>`.
//! Field ranges are private.
//!
//! Lengths written in headers (IPv4 Total Length, IPv6 Payload Length, UDP
//! Length) are never used to bound anything: a guest's TSO frame may carry 0
//! or a stale value there, so every view's payload runs to the end of its
//! buffer.
//!
//! ```
//! use vswitch_offload::wire::{ethertype, EthernetFrame, Ipv4Packet};
//! use vswitch_offload::{FrameLayout, L3Kind, L4Kind};
//!
//! let mut frame = vec![0u8; 14 + 20 + 20];
//! EthernetFrame::new_unchecked(&mut frame[..]).set_ethertype(ethertype::IPV4);
//! frame[14] = 0x45; // IPv4, IHL 5
//! frame[14 + 9] = 6; // TCP
//! frame[34 + 12] = 5 << 4; // TCP data offset 5
//! let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
//! assert_eq!(ip.header_len(), 20);
//!
//! let layout = FrameLayout::parse(&frame).unwrap();
//! assert_eq!((layout.l3, layout.l4), (L3Kind::Ipv4, Some(L4Kind::Tcp)));
//! assert_eq!((layout.l3_offset, layout.l4_offset, layout.payload_offset), (14, 34, 54));
//! ```

mod error;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
mod parse;
pub mod tcp;
pub mod udp;

pub use error::{
    EthernetError, Ipv4Error, Ipv6Error, Layer, ParseError, TcpError, UdpError, VlanError,
};
pub use ethernet::{ethertype, EthernetFrame, L2Header, VlanTag};
pub use ipv4::Ipv4Packet;
pub use ipv6::{Ipv6ExtChain, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6FragmentInfo, Ipv6Packet};
pub use tcp::TcpSegment;
pub use udp::UdpDatagram;

/// IP protocol numbers (IPv4 Protocol, IPv6 Next Header) the parser knows.
pub mod protocol {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const IPV6_ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// IPv6: no next header.
    pub const IPV6_NO_NEXT: u8 = 59;
    /// IPv6 destination options.
    pub const IPV6_DEST_OPTS: u8 = 60;
}

// Field readers and writers for the views. Callers have checked the
// buffer length in `check_len`, so the fixed-size slices are in bounds.
#[inline]
fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
