//! Receive coalescing (GRO): merging in-order TCP segments of one flow into
//! one large frame with a virtio-net header, for receivers that take large
//! frames (a guest that negotiated `VIRTIO_NET_F_GUEST_TSO4` /
//! `GUEST_TSO6`, a TAP device with TSO, an uplink whose NIC segments).
//!
//! A guest that gets one 64 KiB frame instead of 44 segments of 1448 bytes
//! runs its TCP receive path once instead of 44 times. The merged frame is
//! exactly the frame the sender's TSO engine would have started from: the
//! headers of the first segment, the payloads in order, lengths and the IPv4
//! header checksum rewritten, PSH set if the last segment had it.
//!
//! ```
//! use vswitch_offload::gro::{Coalescer, Delivered, GroConfig, SegmentChecksum};
//! use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
//! use vswitch_offload::{FrameLayout, L3Kind, L4Kind};
//!
//! // Two in-order segments of one flow (IPv4 id and sequence advancing).
//! let segment = |id: u16, seq: u32, payload: &[u8]| {
//!     let mut ip = etherparse::Ipv4Header::new(
//!         0, 64, etherparse::IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2],
//!     ).unwrap();
//!     ip.identification = id;
//!     let mut tcp = etherparse::TcpHeader::new(40000, 443, seq, 512);
//!     tcp.ack = true;
//!     let mut frame = Vec::new();
//!     etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
//!         .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
//!         .tcp_header(tcp)
//!         .write(&mut frame, payload)
//!         .unwrap();
//!     frame
//! };
//! let layout = FrameLayout {
//!     vlan_tags: 0, l3_offset: 14, l3: L3Kind::Ipv4, l4_offset: 34,
//!     l4: Some(L4Kind::Tcp), payload_offset: 54,
//!     ipv6_fragment_header: None, is_fragment: false,
//! };
//!
//! let mut gro = Coalescer::new(GroConfig::default()).unwrap();
//! let mut delivered: Vec<Delivered<Vec<u8>>> = Vec::new();
//! let unverified = SegmentChecksum::Unverified; // plain frames off the wire
//! gro.push(segment(1, 1000, &[0xaa; 1000]), &layout, unverified, &mut delivered);
//! gro.push(segment(2, 2000, &[0xbb; 1000]), &layout, unverified, &mut delivered);
//! gro.flush_all(&mut delivered); // end of the batch
//!
//! let [Delivered::Merged(merged)] = &delivered[..] else { panic!("one merged frame") };
//! let hdr = merged.hdr;
//! assert_eq!((hdr.gso_type, hdr.gso_size, hdr.flags), (GSO_TCPV4, 1000, FLAG_NEEDS_CSUM));
//! assert_eq!(merged.frame().len(), 54 + 2000);
//! ```
//!
//! # Merge rules
//!
//! A segment is appended to the frame held for its flow only when all of
//! these hold (otherwise the held frame is flushed first, so the receiver
//! still sees the flow's frames in arrival order):
//!
//! - same flow: the whole Ethernet header (MAC addresses, VLAN tags,
//!   EtherType), IP addresses and TCP ports;
//! - IPv4 without options and not a fragment, IPv6 without extension
//!   headers; same TOS and TTL (IPv4), same traffic class, flow label and
//!   hop limit (IPv6), so an ECN mark (CE) that appears or goes ends the
//!   merge; same DF bit, and for IPv4 without DF an IP id one more than the
//!   previous segment's (with DF the id carries no meaning, RFC 6864);
//! - the sequence number continues the held data exactly; same
//!   acknowledgment number, window and TCP option bytes (timestamps included);
//! - only ACK, optionally with PSH, among the TCP flags (FIN, SYN, RST,
//!   URG, ECE and CWR pass through); PSH ends the merge after the segment
//!   carrying it is included;
//! - a non-empty payload no larger than the first segment's, which sets
//!   `gso_size`; a shorter one is the last merged;
//! - a valid IPv4 header checksum and, for [`SegmentChecksum::Unverified`]
//!   segments, a valid TCP checksum;
//! - the merged IP datagram stays within [`GroConfig::max_ip_len`].
//!
//! Anything else (other flags, a gap, reordering, pure ACKs, bad checksums,
//! non-TCP traffic, [`SegmentChecksum::Unmergeable`] frames) is passed
//! through untouched ([`Delivered::Unchanged`]), after the frame held for
//! its flow. The caller flushes at the end of each batch
//! ([`Coalescer::flush_all`]) and sends a frame of a held flow that goes
//! another way only after [`Coalescer::flush_flow`].
//!
//! # Checksum state of merged frames
//!
//! [`GroChecksum::Partial`] (the default) delivers merged frames with
//! `NEEDS_CSUM`: `csum_start` at the TCP header, `csum_offset` 16, and the
//! TCP checksum field holding the pseudo-header sum over the full TCP length,
//! not complemented. This is what Linux does for GRO packets
//! (`tcp_gro_complete` leaves a partial checksum), and what a guest's stack
//! and its own TSO/GSO path expect from a GSO frame: a guest that forwards
//! the frame can re-segment it and must fix each segment's checksum anyway.
//! A Linux guest maps `NEEDS_CSUM` straight onto its partial-checksum state
//! (`virtio_net_hdr_to_skb`), while a GSO frame without it takes a probing
//! path meant for unusual input.
//! [`GroChecksum::Complete`] instead writes the full TCP checksum and sets
//! `DATA_VALID`, for consumers that want a self-contained frame.
//! Every unverified segment's checksum is verified as its payload is copied
//! (one pass over the bytes, [`Checksum::copy_and_add`]); the payload sums
//! give the complete checksum for free.
//!
//! # Cost and memory
//!
//! A frame that is not merged is never copied: it is held as it was pushed
//! and delivered as it came ([`Delivered::Unchanged`]), its checksum left
//! for the receiver. A flow's first segment is copied only when a second
//! one joins it, into a buffer the caller's [`GroOutput`] gives (a switch
//! gives recycled ones), and each later payload is copied once, summed on
//! the way where it must be verified.
//!
//! A segment that continues the flow the previous one was merged into
//! takes a shorter path: one masked comparison with the first segment's
//! headers stands for the flow match and every rule about bytes that must
//! repeat, and its IPv4 and TCP checksums are checked from sums of those
//! repeated bytes, kept per flow, plus the few words that change and the
//! payload's sum from the copy. Its headers are neither parsed nor summed
//! again; anything unusual goes the general way.
//!
//! At most [`GroConfig::max_flows`] flows are held; a new flow beyond that
//! flushes the oldest. Each merging flow holds one buffer of at least
//! `max_ip_len` plus its Ethernet header, handed out with the merged frame.

use bytes::BytesMut;
use thiserror::Error;

use crate::checksum::{
    add_carry, copy_and_sum_native, fold, pseudo_header_ipv4, pseudo_header_ipv6, Checksum,
};
use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::virtio::{VirtioNetHdr, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};

const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_ACK: u8 = 0x10;
/// Offset of the checksum in the TCP header.
const TCP_CSUM_OFFSET: usize = 16;
/// Largest IP datagram a length field can describe.
const MAX_IP_LEN: usize = 65535;

/// How merged frames carry their TCP checksum; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroChecksum {
    /// `NEEDS_CSUM` with the pseudo-header sum in the checksum field.
    #[default]
    Partial,
    /// The full TCP checksum written, `DATA_VALID` set.
    Complete,
}

/// Settings of a [`Coalescer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroConfig {
    /// The receiver takes large TCP/IPv4 frames (a guest negotiated
    /// `VIRTIO_NET_F_GUEST_TSO4`): merge TCP over IPv4.
    pub guest_tso4: bool,
    /// The receiver takes large TCP/IPv6 frames (`VIRTIO_NET_F_GUEST_TSO6`):
    /// merge TCP over IPv6.
    pub guest_tso6: bool,
    /// Most flows held at once (1 or more).
    pub max_flows: usize,
    /// Largest merged IP datagram (IP header included), at most 65535.
    pub max_ip_len: usize,
    /// Checksum state of merged frames.
    pub checksum: GroChecksum,
}

impl Default for GroConfig {
    /// Both families, 8 flows (as Linux holds per GRO bucket), 64 KiB frames,
    /// partial checksums.
    fn default() -> Self {
        GroConfig {
            guest_tso4: true,
            guest_tso6: true,
            max_flows: 8,
            max_ip_len: MAX_IP_LEN,
            checksum: GroChecksum::Partial,
        }
    }
}

/// A [`GroConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroError {
    /// `max_flows` was 0.
    #[error("max_flows must be at least 1, found 0")]
    NoFlows,
    /// `max_ip_len` too small for one header plus a byte, or above 65535.
    #[error("max_ip_len must be from 61 to 65535, found {max_ip_len}")]
    BadMaxIpLen {
        /// The value given.
        max_ip_len: usize,
    },
}

/// Counters of what a [`Coalescer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroStats {
    /// Segments that went into a merged frame (the first one included).
    pub segments_merged: u64,
    /// Merged frames (two or more segments) delivered.
    pub frames_merged: u64,
    /// Segments that were held and delivered alone, as they came.
    pub singles: u64,
    /// Frames passed through untouched.
    pub passed_through: u64,
    /// Frames passed through because a checksum was wrong.
    pub bad_checksum: u64,
    /// Flows flushed to make room for a new one.
    pub evictions: u64,
}

/// Reads a big-endian u16 at `at`, if the bytes are there.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Reads a big-endian u32 at `at`, if the bytes are there.
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads 8 bytes at `at` as a native-endian u64 (0 if they are not there).
#[inline]
fn ne64(b: &[u8], at: usize) -> u64 {
    b.get(at..at.wrapping_add(8))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Reads 4 bytes at `at` as a native-endian u32 (0 if they are not there).
#[inline]
fn ne32(b: &[u8], at: usize) -> u32 {
    b.get(at..at.wrapping_add(4))
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_ne_bytes)
}

/// The ones'-complement sum of a header of whole 32-bit words (IPv4 and
/// TCP headers are), as native-endian words, unfolded. Headers are short
/// (20 to 60 bytes): a plain loop beats a call into a vector kernel, and
/// 15 words cannot overflow the u64.
#[inline]
fn header_words(b: &[u8]) -> u64 {
    let (words, rest) = b.as_chunks::<4>();
    let mut sum = words
        .iter()
        .map(|w| u64::from(u32::from_ne_bytes(*w)))
        .sum::<u64>();
    for (i, byte) in rest.iter().enumerate() {
        // Never taken for real headers; keeps odd lengths right anyway.
        let mut word = [0u8; 2];
        word[i % 2] = *byte;
        sum += u64::from(u16::from_ne_bytes(word));
    }
    sum
}

/// A native-endian sum folded to 16 bits, in network byte order (RFC 1071
/// section 2.B: the sum commutes with byte swapping).
#[inline]
fn folded_network(native: u64) -> u16 {
    u16::from_be(fold(native))
}

/// Ones'-complement addition of two folded 16-bit sums.
#[inline]
fn add16(a: u16, b: u16) -> u16 {
    let sum = u32::from(a) + u32::from(b);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// Whether `a[..len]` and `b[..len]` are equal, for a short `len` (8 to
/// 32: a link-layer header): overlapping 8-byte compares, no call.
#[inline]
fn short_eq(a: &[u8], b: &[u8], len: usize) -> bool {
    if len < 8 || a.len() < len || b.len() < len {
        return a.get(..len) == b.get(..len);
    }
    let mut at = 0;
    while at + 8 < len {
        if ne64(a, at) != ne64(b, at) {
            return false;
        }
        at += 8;
    }
    ne64(a, len - 8) == ne64(b, len - 8)
}

/// Writes a big-endian u16 at `at`; out of range writes nothing.
fn put16(b: &mut [u8], at: usize, value: u16) {
    if let Some(s) = at.checked_add(2).and_then(|end| b.get_mut(at..end)) {
        s.copy_from_slice(&value.to_be_bytes());
    }
}

/// A TCP segment whose header offsets have been checked against its bytes.
///
/// Invariants established by [`TcpView::new`]: `l3_offset + ip_min <=
/// l4_offset`, `l4_offset + 20 <= payload_offset <= frame.len()`, where
/// `frame` ends where the IP datagram ends (Ethernet padding cut off).
#[derive(Clone, Copy)]
struct TcpView<'a> {
    frame: &'a [u8],
    l3: L3Kind,
    l3_offset: usize,
    l4_offset: usize,
    payload_offset: usize,
}

impl<'a> TcpView<'a> {
    fn new(frame: &'a [u8], layout: &FrameLayout) -> Option<Self> {
        if layout.l4 != Some(L4Kind::Tcp) || layout.is_fragment {
            return None;
        }
        let (l3, l4, pl) = (layout.l3_offset, layout.l4_offset, layout.payload_offset);
        let (ip_min, version) = match layout.l3 {
            L3Kind::Ipv4 => (20, 4),
            L3Kind::Ipv6 => (40, 6),
        };
        if l3 < 14 || l4 < l3.checked_add(ip_min)? || pl < l4.checked_add(20)? {
            return None;
        }
        let first = *frame.get(l3)?;
        if first >> 4 != version {
            return None;
        }
        let ip_end = match layout.l3 {
            L3Kind::Ipv4 => {
                // The layout must agree with the header length and protocol.
                if usize::from(first & 0x0f) * 4 != l4 - l3 || *frame.get(l3 + 9)? != 6 {
                    return None;
                }
                l3 + usize::from(be16(frame, l3 + 2)?)
            }
            L3Kind::Ipv6 => {
                if l4 == l3 + 40 && *frame.get(l3 + 6)? != 6 {
                    return None;
                }
                l3 + 40 + usize::from(be16(frame, l3 + 4)?)
            }
        };
        if ip_end < pl {
            return None;
        }
        let frame = frame.get(..ip_end)?;
        if usize::from(*frame.get(l4 + 12)? >> 4) * 4 != pl - l4 {
            return None;
        }
        Some(TcpView {
            frame,
            l3: layout.l3,
            l3_offset: l3,
            l4_offset: l4,
            payload_offset: pl,
        })
    }

    #[inline]
    fn addresses(&self) -> &'a [u8] {
        let (at, len) = match self.l3 {
            L3Kind::Ipv4 => (12, 8),
            L3Kind::Ipv6 => (8, 32),
        };
        &self.frame[self.l3_offset + at..self.l3_offset + at + len]
    }

    #[inline]
    fn tcp_header(&self) -> &'a [u8] {
        &self.frame[self.l4_offset..self.payload_offset]
    }

    #[inline]
    fn ip_header(&self) -> &'a [u8] {
        &self.frame[self.l3_offset..self.l4_offset]
    }

    #[inline]
    fn payload(&self) -> &'a [u8] {
        &self.frame[self.payload_offset..]
    }

    #[inline]
    fn seq(&self) -> u32 {
        be32(self.tcp_header(), 4).unwrap_or(0)
    }

    #[inline]
    fn flags(&self) -> u8 {
        self.tcp_header()[13]
    }

    #[inline]
    fn psh(&self) -> bool {
        self.flags() & TCP_FLAG_PSH != 0
    }

    /// Checks that need only this segment: may it take part in a merge at all?
    #[inline]
    fn mergeable(&self, config: &GroConfig) -> bool {
        let tcp = self.tcp_header();
        let ip = self.ip_header();
        let family_ok = match self.l3 {
            L3Kind::Ipv4 => {
                config.guest_tso4
                    && ip.len() == 20
                    // MF clear and fragment offset zero.
                    && be16(ip, 6).is_some_and(|f| f & 0x3fff == 0)
                    // Header checksum valid.
                    && header_checksum_ok(ip)
            }
            L3Kind::Ipv6 => config.guest_tso6 && ip.len() == 40,
        };
        family_ok
            // NS and the reserved bits clear; ACK set; nothing but PSH besides.
            && tcp[12] & 0x0f == 0
            && tcp[13] & !TCP_FLAG_PSH == TCP_FLAG_ACK
            && !self.payload().is_empty()
    }

    /// Sum of the pseudo-header and the TCP header (checksum field as is).
    #[inline]
    fn header_sum(&self) -> Checksum {
        let mut sum = pseudo_header(self);
        sum.add_bytes(self.tcp_header());
        sum
    }

    /// Whether the TCP checksum is right, given the sum of the payload
    /// (which starts at an even offset from the TCP header: its length is
    /// a multiple of 4). The pseudo-header's zero, protocol and length
    /// words are added as the bytes they are on the wire.
    #[inline]
    fn tcp_checksum_ok(&self, payload_sum: &Checksum) -> bool {
        let l4_len = self.frame.len() - self.l4_offset;
        let tail = match self.l3 {
            // Zero, protocol (16 bits); TCP length (16 bits).
            L3Kind::Ipv4 => [0, 6, (l4_len >> 8) as u8, l4_len as u8],
            // IPv6: the 32-bit length's low half and the next header; its
            // high half is zero below 64 KiB, and so are the zero bytes.
            L3Kind::Ipv6 => [(l4_len >> 8) as u8, l4_len as u8, 0, 6],
        };
        let high = if self.l3 == L3Kind::Ipv6 {
            // A jumbogram-sized length's high half, for completeness.
            u64::from(u16::from_ne_bytes([
                (l4_len >> 24) as u8,
                (l4_len >> 16) as u8,
            ]))
        } else {
            0
        };
        let native = header_words(self.addresses())
            + header_words(self.tcp_header())
            + u64::from(u32::from_ne_bytes(tail))
            + high;
        add16(folded_network(native), payload_sum.sum()) == 0xffff
    }
}

/// Most header bytes (Ethernet with tags, IP, TCP with options) a merged
/// frame may have: 22 bytes of Ethernet and two tags, 40 of IPv6, 60 of
/// TCP, with room to spare.
const MAX_HEADERS: usize = 192;

/// How the TCP checksum of a segment stands as it reaches the coalescer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentChecksum {
    /// Complete, but nobody vouched for it (a plain frame from a port
    /// without receive offloads): verified as the segment is copied into a
    /// merged frame, and passed through untouched if wrong.
    Unverified,
    /// Complete and already verified by whoever delivered the frame (a
    /// `DATA_VALID` header from a device that checked it).
    Verified,
    /// Partial: `NEEDS_CSUM` with `csum_start` at this segment's TCP header
    /// and `csum_offset` 16, the field holding a seed, as a local sender
    /// without TSO hands its segments over. Nothing to verify; the merged
    /// frame's checksum is written from its own bytes.
    Partial,
    /// The frame is never merged (a GSO frame, a checksum left elsewhere):
    /// the frame held for its flow, if any, is delivered first, then it.
    Unmergeable,
}

/// Where a [`Coalescer`] gets the buffers it builds merged frames in, and
/// where it delivers frames.
///
/// `Vec<Delivered<T>>` is one: it collects what is delivered and allocates
/// a zeroed buffer per merged frame. A switch gives buffers from a pool
/// that takes them back once the frames sent from them are gone.
pub trait GroOutput<T> {
    /// A buffer of at least `len` initialised bytes, for one merged frame
    /// (called when a second segment joins a flow's first).
    fn buffer(&mut self, len: usize) -> BytesMut;

    /// A frame ready to leave, in the order the receiver must see them.
    fn deliver(&mut self, frame: Delivered<T>);
}

/// A frame a [`Coalescer`] delivers.
#[derive(Debug)]
pub enum Delivered<T> {
    /// A frame as it was pushed, bytes unchanged, to leave with the header
    /// it came with: passed through, or held and then delivered alone.
    Unchanged(T),
    /// Two or more segments merged into one frame.
    Merged(MergedFrame),
}

/// Segments merged into one frame, in the buffer [`GroOutput::buffer`]
/// gave for it.
#[derive(Debug)]
pub struct MergedFrame {
    /// The virtio-net header the frame leaves with: `gso_type`, `gso_size`
    /// and the checksum state of [`GroConfig::checksum`].
    pub hdr: VirtioNetHdr,
    /// How many segments it was made of (at least 2).
    pub segments: u32,
    buf: BytesMut,
    len: usize,
}

impl MergedFrame {
    /// The frame's bytes.
    pub fn frame(&self) -> &[u8] {
        // `len` never exceeds the buffer: appends are bounded by it.
        &self.buf[..self.len]
    }

    /// The buffer the frame was built in and the frame's length: the frame
    /// is `buf[..len]`, the rest of the buffer unused.
    pub fn into_parts(self) -> (BytesMut, usize) {
        (self.buf, self.len)
    }
}

impl<T> GroOutput<T> for Vec<Delivered<T>> {
    fn buffer(&mut self, len: usize) -> BytesMut {
        BytesMut::zeroed(len)
    }

    fn deliver(&mut self, frame: Delivered<T>) {
        self.push(frame);
    }
}

/// The offsets of a segment [`TcpView::new`] accepted, to view its bytes
/// again later without checking them again.
#[derive(Debug, Clone, Copy)]
struct Shape {
    l3: L3Kind,
    l3_offset: usize,
    l4_offset: usize,
    payload_offset: usize,
    /// Where the IP datagram ends (Ethernet padding cut off).
    end: usize,
}

impl Shape {
    /// A view of `frame` with these offsets, if it is still long enough.
    #[inline]
    fn view<'a>(&self, frame: &'a [u8]) -> Option<TcpView<'a>> {
        Some(TcpView {
            frame: frame.get(..self.end)?,
            l3: self.l3,
            l3_offset: self.l3_offset,
            l4_offset: self.l4_offset,
            payload_offset: self.payload_offset,
        })
    }
}

impl TcpView<'_> {
    fn shape(&self) -> Shape {
        Shape {
            l3: self.l3,
            l3_offset: self.l3_offset,
            l4_offset: self.l4_offset,
            payload_offset: self.payload_offset,
            end: self.frame.len(),
        }
    }
}

/// One flow being coalesced: its first segment as it came, or the merged
/// frame built so far, and what the next segment must look like.
#[derive(Debug)]
struct Flow<T> {
    /// The first segment and its checksum state, held as it came until a
    /// second one joins it.
    first: Option<(T, SegmentChecksum)>,
    /// A copy of the first segment's headers, to compare the next ones with.
    head: [u8; MAX_HEADERS],
    /// The merged frame once a second segment joined: the headers of the
    /// first, then every payload in order; `len` bytes of it used.
    buf: BytesMut,
    /// Bytes of the frame so far: the first segment's up to the end of its
    /// IP datagram, then every payload merged.
    len: usize,
    shape: Shape,
    next_seq: u32,
    next_ip_id: u16,
    /// Payload size of the first segment: the `gso_size`.
    mss: usize,
    segments: u32,
    /// Ones'-complement sum of the payloads merged, kept for
    /// [`GroChecksum::Complete`] only.
    payload_sum: Checksum,
    /// The header bytes every later segment repeats, summed once from the
    /// first (see [`RepeatedSums`]).
    repeated: RepeatedSums,
    /// The last merged segment had PSH.
    psh: bool,
    /// Arrival order, for evicting the oldest flow.
    started: u64,
}

/// Native-endian sums (as [`header_words`] gives them) of the header bytes
/// that [`HeaderMask`] makes every segment of a merge repeat from the
/// first: a later segment's header checksums are these plus the few words
/// that change, without summing its headers again.
#[derive(Debug, Clone, Copy, Default)]
struct RepeatedSums {
    /// The IPv4 header but total length, id and header checksum (0 for
    /// IPv6).
    ip: u64,
    /// The pseudo-header's addresses and protocol, and the TCP header but
    /// sequence number, data offset and flags, checksum and urgent pointer.
    tcp: u64,
}

impl RepeatedSums {
    fn of(v: &TcpView<'_>) -> Self {
        // Headers are at most 60 bytes (IPv4 and TCP options): copies with
        // the changing fields zeroed, summed as they are.
        let without = |header: &[u8], changing: &[(usize, usize)]| {
            let mut copy = [0u8; 60];
            let len = header.len().min(60);
            copy[..len].copy_from_slice(&header[..len]);
            for &(from, to) in changing {
                copy[from..to].fill(0);
            }
            header_words(&copy[..len])
        };
        let ip = match v.l3 {
            L3Kind::Ipv4 => without(v.ip_header(), &[(2, 6), (10, 12)]),
            L3Kind::Ipv6 => 0,
        };
        let tcp = header_words(v.addresses())
            + u64::from(u16::from_ne_bytes([0, 6]))
            + without(v.tcp_header(), &[(4, 8), (12, 14), (16, 20)]);
        RepeatedSums { ip, tcp }
    }
}

/// What [`Coalescer::fast_append`] did with a segment.
enum Fast {
    /// Not the common case: nothing changed, the general path decides.
    Declined,
    /// Appended to the flow at this index; `last` if that ends the merge.
    Merged { index: usize, last: bool },
    /// Of the flow at this index and mergeable but for its TCP checksum,
    /// which is wrong: the general path would flush the flow and pass the
    /// segment through, and so must the caller.
    BadChecksum { index: usize },
}

impl<T> Flow<T> {
    /// Records a segment's payload of `len` bytes, with PSH or not, just
    /// appended to the merged frame.
    #[inline]
    fn appended(&mut self, len: usize, psh: bool) {
        self.len += len;
        self.next_seq = self.next_seq.wrapping_add(len as u32);
        self.next_ip_id = self.next_ip_id.wrapping_add(1);
        self.segments += 1;
        self.psh = psh;
    }

    /// Whether the segment of `len` payload bytes (with PSH or not) just
    /// appended ends the merge: PSH, a short segment, or no room for
    /// another byte under `max_ip_len`.
    #[inline]
    fn ends_merge(&self, len: usize, psh: bool, max_ip_len: usize) -> bool {
        let room = max_ip_len - (self.len - self.shape.l3_offset);
        psh || len < self.mss || room == 0
    }

    fn is_same_flow(&self, v: &TcpView<'_>) -> bool {
        let (shape, head) = (&self.shape, &self.head[..]);
        let (frame, at) = (v.frame, v.l4_offset);
        if shape.l3 != v.l3
            || ne32(head, shape.l4_offset) != ne32(frame, at)
            || shape.l3_offset != v.l3_offset
        {
            return false;
        }
        let (h, f) = (shape.l3_offset, v.l3_offset);
        let addresses = match v.l3 {
            L3Kind::Ipv4 => ne64(head, h + 12) == ne64(frame, f + 12),
            L3Kind::Ipv6 => (8..40)
                .step_by(8)
                .all(|i| ne64(head, h + i) == ne64(frame, f + i)),
        };
        addresses && short_eq(head, frame, shape.l3_offset)
    }

    /// Whether `v` (already [`TcpView::mergeable`], of this flow)
    /// continues it: the same header bytes where `mask` says they must
    /// be, the next sequence number (and IPv4 id, without DF), a payload
    /// no larger than the first, room left.
    fn can_append(&self, v: &TcpView<'_>, mask: &HeaderMask, max_ip_len: usize) -> bool {
        let shape = &self.shape;
        if shape.l4_offset != v.l4_offset || shape.payload_offset != v.payload_offset {
            return false;
        }
        let id_ok = match shape.l3 {
            L3Kind::Ipv4 => {
                let ip = v.ip_header();
                ip[6] & 0x40 != 0 || be16(ip, 4) == Some(self.next_ip_id)
            }
            L3Kind::Ipv6 => true,
        };
        let payload = v.payload().len();
        v.seq() == self.next_seq
            && id_ok
            && payload <= self.mss
            && self.len - shape.l3_offset + payload <= max_ip_len
            && mask.matches(&self.head, v.frame)
    }
}

/// Which header bytes every segment of a merged frame must repeat from the
/// first one: all of them (Ethernet header and tags; IP version, header
/// length, TOS or traffic class and flow label, DF and the fragment bits,
/// TTL or hop limit, protocol, addresses; TCP ports, acknowledgment
/// number, data offset, window, options) except those that change from
/// segment to segment (IP lengths, id and checksum; TCP sequence number,
/// flags, checksum and urgent pointer). A mask byte per header byte, read
/// as 8-byte words, so a segment is compared in a few word operations.
#[derive(Debug, Clone)]
struct HeaderMask {
    /// The shape the mask is for: L3 kind, L3, L4 and payload offsets.
    key: Option<(L3Kind, usize, usize, usize)>,
    /// The header length rounded up to whole 8-byte words (the mask is 0
    /// past the header).
    words_len: usize,
    bytes: [u8; MAX_HEADERS],
}

impl HeaderMask {
    fn new() -> Self {
        HeaderMask {
            key: None,
            words_len: 0,
            bytes: [0; MAX_HEADERS],
        }
    }

    /// Makes this the mask of segments shaped as `shape`.
    fn set(&mut self, shape: &Shape) {
        let key = (
            shape.l3,
            shape.l3_offset,
            shape.l4_offset,
            shape.payload_offset,
        );
        if self.key == Some(key) {
            return;
        }
        let (l3, l4, end) = (shape.l3_offset, shape.l4_offset, shape.payload_offset);
        self.bytes = [0; MAX_HEADERS];
        self.bytes[..end].fill(0xff);
        let changing: &[(usize, usize)] = match shape.l3 {
            // Total length, identification; header checksum.
            L3Kind::Ipv4 => &[(l3 + 2, l3 + 6), (l3 + 10, l3 + 12)],
            // Payload length.
            L3Kind::Ipv6 => &[(l3 + 4, l3 + 6)],
        };
        // Sequence number; flags; checksum and urgent pointer.
        let tcp = [(l4 + 4, l4 + 8), (l4 + 13, l4 + 14), (l4 + 16, l4 + 20)];
        for &(from, to) in changing.iter().chain(&tcp) {
            self.bytes[from..to].fill(0);
        }
        // At most MAX_HEADERS, a multiple of 8: the caller keeps `end` there.
        self.words_len = end.next_multiple_of(8).min(MAX_HEADERS);
        self.key = Some(key);
    }

    /// [`matches`](Self::matches) for a frame with at least the header's
    /// whole words: a fixed run of word compares, no tail. `None` if the
    /// frame is shorter than that.
    #[inline]
    fn matches_words(&self, head: &[u8; MAX_HEADERS], frame: &[u8]) -> Option<bool> {
        let n = self.words_len;
        let (frame, head, mask) = (frame.get(..n)?, head.get(..n)?, self.bytes.get(..n)?);
        let (f, _) = frame.as_chunks::<8>();
        let (h, _) = head.as_chunks::<8>();
        let (m, _) = mask.as_chunks::<8>();
        let diff = f.iter().zip(h).zip(m).fold(0u64, |diff, ((f, h), m)| {
            let (f, h, m) = (
                u64::from_ne_bytes(*f),
                u64::from_ne_bytes(*h),
                u64::from_ne_bytes(*m),
            );
            diff | ((f ^ h) & m)
        });
        Some(diff == 0)
    }

    /// Whether `frame` repeats `head` wherever the mask says it must.
    #[inline]
    fn matches(&self, head: &[u8; MAX_HEADERS], frame: &[u8]) -> bool {
        let end = self.key.map_or(0, |(_, _, _, end)| end);
        let mut diff = 0u64;
        let mut at = 0;
        while at < end {
            let mask = ne64(&self.bytes, at);
            let word = if frame.len() >= at + 8 {
                ne64(frame, at)
            } else {
                // The last header bytes at the very end of a short frame.
                let mut tail = [0u8; 8];
                let have = frame.len().saturating_sub(at).min(8);
                tail[..have].copy_from_slice(frame.get(at..at + have).unwrap_or_default());
                u64::from_ne_bytes(tail)
            };
            diff |= (ne64(head, at) ^ word) & mask;
            at += 8;
        }
        diff == 0
    }
}

/// Merges TCP segments into large frames; see the module documentation.
///
/// `T` is the frame type pushed (anything that reads as bytes: a slice, a
/// `Vec<u8>`, a switch's packet). A frame that is not merged comes back
/// out as it went in, so no frame is copied unless it is merged.
#[derive(Debug)]
pub struct Coalescer<T> {
    config: GroConfig,
    flows: Vec<Flow<T>>,
    /// A buffer taken for a merge that did not happen (a checksum was
    /// wrong), for the next one.
    spare: Option<BytesMut>,
    /// The header bytes a segment must repeat, for the shape seen last.
    mask: HeaderMask,
    /// The flow a segment was last merged into: where the next segment
    /// most likely goes (may be stale; [`Coalescer::fast_append`] checks).
    hint: usize,
    stats: GroStats,
    arrivals: u64,
    /// What the fast path did, and a switch to turn it off (tests compare
    /// the two paths).
    #[cfg(test)]
    probe: FastProbe,
}

/// Counts of [`Coalescer::fast_append`]'s outcomes, and a switch to skip it.
#[cfg(test)]
#[derive(Debug, Default, Clone, Copy)]
struct FastProbe {
    disabled: bool,
    merged: u64,
    bad_checksum: u64,
}

impl<T: AsRef<[u8]>> Coalescer<T> {
    /// A coalescer holding nothing yet.
    pub fn new(config: GroConfig) -> Result<Self, GroError> {
        if config.max_flows == 0 {
            return Err(GroError::NoFlows);
        }
        if !(61..=MAX_IP_LEN).contains(&config.max_ip_len) {
            return Err(GroError::BadMaxIpLen {
                max_ip_len: config.max_ip_len,
            });
        }
        Ok(Coalescer {
            config,
            flows: Vec::with_capacity(config.max_flows),
            spare: None,
            mask: HeaderMask::new(),
            hint: 0,
            stats: GroStats::default(),
            arrivals: 0,
            #[cfg(test)]
            probe: FastProbe::default(),
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &GroConfig {
        &self.config
    }

    /// What has been done so far.
    pub fn stats(&self) -> GroStats {
        self.stats
    }

    /// Number of flows currently held.
    pub fn held_flows(&self) -> usize {
        self.flows.len()
    }

    /// Takes one received frame, whose headers are at the offsets of
    /// `layout` (checked against the frame before any use) and whose TCP
    /// checksum stands as `checksum` says. Frames that are complete now (a
    /// flushed flow, a frame passed through) go to `out`, in the order the
    /// receiver must see them: a flow's frames never overtake each other.
    pub fn push<O>(
        &mut self,
        frame: T,
        layout: &FrameLayout,
        checksum: SegmentChecksum,
        out: &mut O,
    ) where
        O: GroOutput<T> + ?Sized,
    {
        self.arrivals += 1;
        match self.fast_append(frame.as_ref(), layout, checksum) {
            Fast::Declined => {}
            Fast::Merged { index, last } => {
                if last {
                    self.flush_index(index, out);
                }
                return;
            }
            Fast::BadChecksum { index } => {
                self.flush_index(index, out);
                self.stats.bad_checksum += 1;
                self.pass_through(frame, out);
                return;
            }
        }
        let Some(view) = TcpView::new(frame.as_ref(), layout) else {
            // An IP fragment may belong to a held TCP flow without showing
            // its ports: everything held goes first.
            if layout.is_fragment {
                self.flush_all(out);
            }
            self.pass_through(frame, out);
            return;
        };
        let shape = view.shape();
        let held = self.flows.iter().position(|f| f.is_same_flow(&view));
        let mergeable = checksum != SegmentChecksum::Unmergeable
            && shape.payload_offset <= MAX_HEADERS
            && view.mergeable(&self.config);
        if !mergeable {
            let bad_ip = view.l3 == L3Kind::Ipv4
                && view.ip_header().len() == 20
                && !header_checksum_ok(view.ip_header());
            if let Some(i) = held {
                self.flush_index(i, out);
            }
            if bad_ip {
                self.stats.bad_checksum += 1;
            }
            self.pass_through(frame, out);
            return;
        }
        let Some(i) = held else {
            self.start_flow(frame, shape, checksum, out);
            return;
        };
        self.mask.set(&shape);
        if !self.flows[i].can_append(&view, &self.mask, self.config.max_ip_len) {
            self.flush_index(i, out);
            self.start_flow(frame, shape, checksum, out);
            return;
        }
        if self.flows[i].first.is_some() {
            self.join_first(i, frame, shape, checksum, out);
            return;
        }
        if self.append(i, &view, checksum) {
            self.hint = i;
            if self.flows[i].ends_merge(view.payload().len(), view.psh(), self.config.max_ip_len) {
                self.flush_index(i, out);
            }
        } else {
            self.flush_index(i, out);
            self.stats.bad_checksum += 1;
            self.pass_through(frame, out);
        }
    }

    /// The common case, decided from the few header bytes that change from
    /// segment to segment: `frame` continues the flow a segment was last
    /// merged into ([`Coalescer::hint`]), which holds a merged frame.
    ///
    /// It makes every check of the general path, most of them implied by
    /// one comparison: the flow's first segment passed [`TcpView::new`] and
    /// [`TcpView::mergeable`] at these offsets, so a frame that repeats its
    /// header bytes where [`HeaderMask`] says is of that flow (addresses,
    /// ports, Ethernet header) and has the same version, header lengths,
    /// protocol, fragment bits and TCP data offset. What is left is checked
    /// here: the IP length against the frame, the flags, the IPv4 id,
    /// sequence number, payload size and room (as
    /// [`Flow::can_append`]), and the IPv4 header checksum and TCP checksum
    /// from the flow's [`RepeatedSums`] plus the changing words and the
    /// payload's sum taken as it is copied. Anything else is
    /// [`Fast::Declined`] with nothing changed.
    #[inline]
    fn fast_append(
        &mut self,
        frame: &[u8],
        layout: &FrameLayout,
        checksum: SegmentChecksum,
    ) -> Fast {
        #[cfg(test)]
        if self.probe.disabled {
            return Fast::Declined;
        }
        let index = self.hint;
        let Some(flow) = self.flows.get_mut(index) else {
            return Fast::Declined;
        };
        let shape = flow.shape;
        let key = (
            shape.l3,
            shape.l3_offset,
            shape.l4_offset,
            shape.payload_offset,
        );
        if checksum == SegmentChecksum::Unmergeable
            || flow.first.is_some()
            || layout.l4 != Some(L4Kind::Tcp)
            || layout.is_fragment
            || (
                layout.l3,
                layout.l3_offset,
                layout.l4_offset,
                layout.payload_offset,
            ) != key
            || self.mask.key != Some(key)
            || self.mask.matches_words(&flow.head, frame) != Some(true)
        {
            return Fast::Declined;
        }
        let (l3, l4, pl) = (shape.l3_offset, shape.l4_offset, shape.payload_offset);
        // The words read below, at fixed places: the IPv4 header (or the
        // start of the IPv6 one) and the fixed TCP header.
        let ip = frame.get(l3..).and_then(<[u8]>::first_chunk::<20>);
        let tcp = frame.get(l4..).and_then(<[u8]>::first_chunk::<20>);
        let (Some(ip), Some(tcp)) = (ip, tcp) else {
            return Fast::Declined;
        };
        let word = |b: &[u8; 20], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        let pair =
            |b: &[u8; 20], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let ip_end = match shape.l3 {
            L3Kind::Ipv4 => l3 + usize::from(u16::from_be(word(ip, 2))),
            L3Kind::Ipv6 => l3 + 40 + usize::from(u16::from_be(word(ip, 4))),
        };
        let Some(payload) = frame.get(pl..ip_end) else {
            return Fast::Declined;
        };
        let ip_ok = match shape.l3 {
            L3Kind::Ipv4 => {
                let df = ip[6] & 0x40 != 0;
                let sum = flow.repeated.ip + u64::from(pair(ip, 2)) + u64::from(word(ip, 10));
                (df || u16::from_be(word(ip, 4)) == flow.next_ip_id) && fold(sum) == 0xffff
            }
            L3Kind::Ipv6 => true,
        };
        let flags = tcp[13];
        let len = payload.len();
        if !ip_ok
            || len == 0
            || flags & !TCP_FLAG_PSH != TCP_FLAG_ACK
            || u32::from_be(pair(tcp, 4)) != flow.next_seq
            || len > flow.mss
            || flow.len - l3 + len > self.config.max_ip_len
        {
            return Fast::Declined;
        }
        let at = flow.len;
        let Some(dst) = flow.buf.get_mut(at..at + len) else {
            return Fast::Declined;
        };
        let verify = checksum == SegmentChecksum::Unverified;
        let sum_all = self.config.checksum == GroChecksum::Complete;
        if verify || sum_all {
            let payload_sum = copy_and_sum_native(dst, payload);
            if verify {
                // Fits in 16 bits: the IP length field bounds it.
                let l4_len = (pl + len - l4) as u16;
                let header = flow.repeated.tcp
                    + u64::from(pair(tcp, 4))
                    + u64::from(word(tcp, 12))
                    + u64::from(pair(tcp, 16))
                    + u64::from(u16::from_ne_bytes(l4_len.to_be_bytes()));
                if fold(add_carry(header, payload_sum)) != 0xffff {
                    #[cfg(test)]
                    {
                        self.probe.bad_checksum += 1;
                    }
                    return Fast::BadChecksum { index };
                }
            }
            if sum_all {
                flow.payload_sum.add_native(payload_sum, len);
            }
        } else {
            dst.copy_from_slice(payload);
        }
        let psh = flags & TCP_FLAG_PSH != 0;
        flow.appended(len, psh);
        #[cfg(test)]
        {
            self.probe.merged += 1;
        }
        Fast::Merged {
            index,
            last: flow.ends_merge(len, psh, self.config.max_ip_len),
        }
    }

    /// Delivers the frame held for the flow of `frame` (at the offsets of
    /// `layout`), if there is one, without taking `frame`: for a frame of
    /// that flow that goes another way and must not overtake it.
    pub fn flush_flow<O>(&mut self, frame: &[u8], layout: &FrameLayout, out: &mut O)
    where
        O: GroOutput<T> + ?Sized,
    {
        match TcpView::new(frame, layout) {
            Some(view) => {
                if let Some(i) = self.flows.iter().position(|f| f.is_same_flow(&view)) {
                    self.flush_index(i, out);
                }
            }
            None if layout.is_fragment => self.flush_all(out),
            None => {}
        }
    }

    /// Delivers every held flow, oldest first: call at the end of each batch.
    pub fn flush_all<O>(&mut self, out: &mut O)
    where
        O: GroOutput<T> + ?Sized,
    {
        while let Some(oldest) = self.oldest() {
            self.flush_index(oldest, out);
        }
    }

    fn oldest(&self) -> Option<usize> {
        self.flows
            .iter()
            .enumerate()
            .min_by_key(|(_, f)| f.started)
            .map(|(i, _)| i)
    }

    fn pass_through<O>(&mut self, frame: T, out: &mut O)
    where
        O: GroOutput<T> + ?Sized,
    {
        self.stats.passed_through += 1;
        out.deliver(Delivered::Unchanged(frame));
    }

    /// Appends the payload of `v` to the merged frame of flow `i` if its
    /// checksum holds; returns false (the flow as it was) if not.
    fn append(&mut self, i: usize, v: &TcpView<'_>, checksum: SegmentChecksum) -> bool {
        let sum_all = self.config.checksum == GroChecksum::Complete;
        let flow = &mut self.flows[i];
        let at = flow.len;
        let Some(sum) = copy_payload(&mut flow.buf, at, v, checksum, sum_all) else {
            return false;
        };
        flow.payload_sum.add_checksum(&sum);
        flow.appended(v.payload().len(), v.psh());
        true
    }

    /// A second segment continues the first segment of flow `i`, held as
    /// it came: both are copied into a buffer, verified as they are copied
    /// where they must be. A first segment with a wrong checksum is passed
    /// through and the second starts the flow again; a second one with a
    /// wrong checksum is passed through after the first.
    fn join_first<O>(
        &mut self,
        i: usize,
        second: T,
        shape: Shape,
        checksum: SegmentChecksum,
        out: &mut O,
    ) where
        O: GroOutput<T> + ?Sized,
    {
        let need = self.flows[i].shape.l3_offset + self.config.max_ip_len;
        let mut buf = match self.spare.take() {
            Some(buf) if buf.len() >= need => buf,
            _ => out.buffer(need),
        };
        let flow = &self.flows[i];
        let Some((first, first_checksum)) = &flow.first else {
            return;
        };
        let (first_end, header_len) = (flow.len, flow.shape.payload_offset);
        // The views cannot fail: both frames were viewed with these shapes.
        let first_view = flow.shape.view(first.as_ref());
        let second_view = shape.view(second.as_ref());
        let (Some(first_view), Some(second_view)) = (first_view, second_view) else {
            self.spare = Some(buf);
            self.flush_index(i, out);
            self.pass_through(second, out);
            return;
        };
        if buf.len() < need {
            // The output gave less than asked: no merge, nothing lost.
            self.flush_index(i, out);
            self.start_flow(second, shape, checksum, out);
            return;
        }
        buf[..header_len].copy_from_slice(&flow.head[..header_len]);
        let sum_all = self.config.checksum == GroChecksum::Complete;
        let first_sum = copy_payload(&mut buf, header_len, &first_view, *first_checksum, sum_all);
        let second_sum = first_sum
            .and_then(|_| copy_payload(&mut buf, first_end, &second_view, checksum, sum_all));
        match (first_sum, second_sum) {
            (Some(first_sum), Some(second_sum)) => {
                let second_len = second_view.payload().len();
                let psh = second_view.psh();
                let flow = &mut self.flows[i];
                flow.first = None;
                flow.buf = buf;
                flow.payload_sum = first_sum;
                flow.payload_sum.add_checksum(&second_sum);
                // The first segment, held as it came, is now the frame's
                // start; the second is appended to it.
                flow.len = first_end;
                flow.appended(second_len, psh);
                self.hint = i;
                if flow.ends_merge(second_len, psh, self.config.max_ip_len) {
                    self.flush_index(i, out);
                }
            }
            (None, _) => {
                self.spare = Some(buf);
                let flow = self.flows.swap_remove(i);
                if let Some((first, _)) = flow.first {
                    self.stats.bad_checksum += 1;
                    self.pass_through(first, out);
                }
                self.start_flow(second, shape, checksum, out);
            }
            (Some(_), None) => {
                self.spare = Some(buf);
                self.flush_index(i, out);
                self.stats.bad_checksum += 1;
                self.pass_through(second, out);
            }
        }
    }

    /// Starts holding a new flow with `frame` as its first segment, or
    /// delivers it at once if nothing may follow it (PSH).
    fn start_flow<O>(&mut self, frame: T, shape: Shape, checksum: SegmentChecksum, out: &mut O)
    where
        O: GroOutput<T> + ?Sized,
    {
        let Some(v) = shape.view(frame.as_ref()) else {
            self.pass_through(frame, out);
            return;
        };
        if v.psh() {
            self.stats.singles += 1;
            out.deliver(Delivered::Unchanged(frame));
            return;
        }
        let mut head = [0u8; MAX_HEADERS];
        head[..shape.payload_offset].copy_from_slice(&v.frame[..shape.payload_offset]);
        let ip_id = match v.l3 {
            L3Kind::Ipv4 => be16(v.ip_header(), 4).unwrap_or(0),
            L3Kind::Ipv6 => 0,
        };
        let next_seq = v.seq().wrapping_add(v.payload().len() as u32);
        let mss = v.payload().len();
        let repeated = RepeatedSums::of(&v);
        if self.flows.len() >= self.config.max_flows {
            if let Some(oldest) = self.oldest() {
                self.stats.evictions += 1;
                self.flush_index(oldest, out);
            }
        }
        self.flows.push(Flow {
            first: Some((frame, checksum)),
            head,
            buf: BytesMut::new(),
            len: shape.end,
            shape,
            next_seq,
            next_ip_id: ip_id.wrapping_add(1),
            mss,
            segments: 1,
            payload_sum: Checksum::new(),
            repeated,
            psh: false,
            started: self.arrivals,
        });
    }

    /// Delivers flow `i`.
    fn flush_index<O>(&mut self, i: usize, out: &mut O)
    where
        O: GroOutput<T> + ?Sized,
    {
        let mut flow = self.flows.swap_remove(i);
        if let Some((first, _)) = flow.first.take() {
            self.stats.singles += 1;
            out.deliver(Delivered::Unchanged(first));
            return;
        }
        self.stats.frames_merged += 1;
        self.stats.segments_merged += u64::from(flow.segments);
        let hdr = finish_merged(&mut flow, self.config.checksum);
        out.deliver(Delivered::Merged(MergedFrame {
            hdr,
            segments: flow.segments,
            buf: flow.buf,
            len: flow.len,
        }));
    }
}

/// Copies the payload of `v` to `buf[at..]`, summing it on the way when
/// the segment's checksum must be verified (`Unverified`) or `sum_all`
/// (the merged frame's checksum is written in full). Returns the payload's
/// sum (empty when not taken), or `None` if the segment's checksum is
/// wrong (or `buf` too short).
///
/// Always inlined: returned through memory, the sum (written as a word and
/// a flag, read back as one 16-byte value) stalled on store forwarding,
/// half of this function's time.
#[inline(always)]
fn copy_payload(
    buf: &mut [u8],
    at: usize,
    v: &TcpView<'_>,
    checksum: SegmentChecksum,
    sum_all: bool,
) -> Option<Checksum> {
    let payload = v.payload();
    let dst = buf.get_mut(at..at + payload.len())?;
    let mut sum = Checksum::new();
    let verify = checksum == SegmentChecksum::Unverified;
    if verify || sum_all {
        sum.copy_and_add(dst, payload);
        if verify && !v.tcp_checksum_ok(&sum) {
            return None;
        }
    } else {
        dst.copy_from_slice(payload);
    }
    Some(sum)
}

/// Whether an IPv4 header's checksum holds.
#[inline]
fn header_checksum_ok(ip: &[u8]) -> bool {
    fold(header_words(ip)) == 0xffff
}

/// Rewrites the headers of a merged frame (lengths, IPv4 checksum, PSH, TCP
/// checksum) and returns its virtio-net header.
fn finish_merged<T>(flow: &mut Flow<T>, mode: GroChecksum) -> VirtioNetHdr {
    let shape = flow.shape;
    let (l3, l4) = (shape.l3_offset, shape.l4_offset);
    let total = flow.len;
    let frame = &mut flow.buf[..total];
    // Fits in 16 bits: appends keep total - l3 <= max_ip_len <= 65535.
    let ip_len = (total - l3) as u16;
    let gso_type = match shape.l3 {
        L3Kind::Ipv4 => {
            put16(frame, l3 + 2, ip_len);
            put16(frame, l3 + 10, 0);
            let csum = Checksum::new()
                .add_bytes(frame.get(l3..l4).unwrap_or_default())
                .finish();
            put16(frame, l3 + 10, csum);
            GSO_TCPV4
        }
        L3Kind::Ipv6 => {
            put16(frame, l3 + 4, ip_len.saturating_sub(40));
            GSO_TCPV6
        }
    };
    if flow.psh {
        if let Some(flags) = frame.get_mut(l4 + 13) {
            *flags |= TCP_FLAG_PSH;
        }
    }
    let csum_at = l4 + TCP_CSUM_OFFSET;
    put16(frame, csum_at, 0);
    let head = TcpView {
        frame,
        l3: shape.l3,
        l3_offset: l3,
        l4_offset: l4,
        payload_offset: shape.payload_offset,
    };
    let (flags, csum_start, csum_offset, value) = match mode {
        GroChecksum::Partial => (
            FLAG_NEEDS_CSUM,
            l4 as u16,
            TCP_CSUM_OFFSET as u16,
            pseudo_header(&head).sum(),
        ),
        GroChecksum::Complete => {
            // The checksum field is zero now, so this is the full sum.
            let mut sum = head.header_sum();
            sum.add_checksum(&flow.payload_sum);
            (FLAG_DATA_VALID, 0, 0, sum.finish())
        }
    };
    put16(frame, csum_at, value);
    VirtioNetHdr {
        flags,
        gso_type,
        hdr_len: shape.payload_offset as u16,
        gso_size: flow.mss as u16,
        csum_start,
        csum_offset,
        num_buffers: 0,
    }
}

/// The pseudo-header sum of `v` over its full TCP length.
fn pseudo_header(v: &TcpView<'_>) -> Checksum {
    let l4_len = v.frame.len() - v.l4_offset;
    let addrs = v.addresses();
    match v.l3 {
        L3Kind::Ipv4 => {
            let (s, d) = addrs.split_at(4);
            pseudo_header_ipv4(
                s.try_into().unwrap_or_default(),
                d.try_into().unwrap_or_default(),
                6,
                l4_len as u16,
            )
        }
        L3Kind::Ipv6 => {
            let (s, d) = addrs.split_at(16);
            pseudo_header_ipv6(
                s.try_into().unwrap_or_default(),
                d.try_into().unwrap_or_default(),
                6,
                l4_len as u32,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::checksum;
    use crate::plan::GsoKind;
    use crate::segment::testing::layout_of;
    use crate::segment::{SegmentList, SegmentParams, Segmenter};
    use crate::virtio::GSO_NONE;
    use etherparse::{
        IpDscp, IpEcn, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header,
        PacketBuilder, TcpHeader, TcpOptionElement, VlanId,
    };
    use proptest::prelude::*;

    type Out = Vec<(VirtioNetHdr, Vec<u8>)>;

    /// What the test frames vary in.
    #[derive(Debug, Clone)]
    struct Spec {
        v6: bool,
        vlan: Option<u16>,
        /// A second (inner) tag after `vlan`: QinQ.
        inner_vlan: Option<u16>,
        timestamps: Option<(u32, u32)>,
        sport: u16,
        seq: u32,
        ack: u32,
        window: u16,
        psh: bool,
        ttl: u8,
        tos: u8,
        ip_id: u16,
        df: bool,
        flow_label: u32,
        ip_options: bool,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                v6: false,
                vlan: None,
                inner_vlan: None,
                timestamps: Some((1000, 2000)),
                sport: 40000,
                seq: 1,
                ack: 77,
                window: 512,
                psh: false,
                ttl: 64,
                tos: 0,
                ip_id: 100,
                df: true,
                flow_label: 0,
                ip_options: false,
            }
        }
    }

    fn spec_strategy() -> impl Strategy<Value = Spec> {
        (
            (
                any::<bool>(),
                proptest::option::of(1u16..4095),
                proptest::option::of(1u16..4095),
            ),
            proptest::option::of(any::<(u32, u32)>()),
            (any::<u16>(), any::<u32>(), any::<u32>(), any::<u16>()),
            (any::<bool>(), any::<u8>(), any::<u8>(), any::<u16>()),
            (any::<bool>(), 0u32..(1 << 20)),
        )
            .prop_map(
                |(
                    (v6, vlan, inner_vlan),
                    timestamps,
                    (sport, seq, ack, window),
                    (psh, ttl, tos, ip_id),
                    (df, flow_label),
                )| {
                    Spec {
                        v6,
                        vlan,
                        inner_vlan,
                        timestamps,
                        sport,
                        seq,
                        ack,
                        window,
                        psh,
                        ttl,
                        tos,
                        ip_id,
                        df,
                        flow_label,
                        ip_options: false,
                    }
                },
            )
    }

    /// A frame written by etherparse (lengths and checksums its own).
    fn build(spec: &Spec, payload: &[u8]) -> Vec<u8> {
        let mut tcp = TcpHeader::new(spec.sport, 443, spec.seq, spec.window);
        tcp.ack = true;
        tcp.acknowledgment_number = spec.ack;
        tcp.psh = spec.psh;
        if let Some((a, b)) = spec.timestamps {
            tcp.set_options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(a, b),
            ])
            .unwrap();
        }
        let ip = if spec.v6 {
            IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: spec.tos,
                    flow_label: Ipv6FlowLabel::try_from(spec.flow_label).unwrap(),
                    payload_length: 0,
                    next_header: IpNumber::TCP,
                    hop_limit: spec.ttl,
                    source: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    destination: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                },
                Default::default(),
            )
        } else {
            let mut h =
                Ipv4Header::new(0, spec.ttl, IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
            h.identification = spec.ip_id;
            h.dont_fragment = spec.df;
            h.dscp = IpDscp::try_from(spec.tos >> 2).unwrap();
            h.ecn = IpEcn::try_from(spec.tos & 3).unwrap();
            if spec.ip_options {
                h.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
            }
            IpHeaders::Ipv4(h, Default::default())
        };
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        match (spec.vlan, spec.inner_vlan) {
            (Some(outer), Some(inner)) => eth
                .double_vlan(
                    VlanId::try_new(outer).unwrap(),
                    VlanId::try_new(inner).unwrap(),
                )
                .ip(ip)
                .tcp_header(tcp)
                .write(&mut out, payload),
            (Some(id), None) => eth
                .single_vlan(VlanId::try_new(id).unwrap())
                .ip(ip)
                .tcp_header(tcp)
                .write(&mut out, payload),
            (None, _) => eth.ip(ip).tcp_header(tcp).write(&mut out, payload),
        }
        .unwrap();
        out
    }

    fn rd16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    fn rd32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// TCP checksum of `frame` (field zeroed first) with the crate's checksum.
    fn tcp_checksum(frame: &mut [u8], l: &FrameLayout) -> u16 {
        let l4 = l.l4_offset;
        frame[l4 + 16..l4 + 18].fill(0);
        let len = frame.len() - l4;
        let mut sum = match l.l3 {
            L3Kind::Ipv4 => {
                let a = &frame[l.l3_offset + 12..l.l3_offset + 20];
                pseudo_header_ipv4(
                    a[..4].try_into().unwrap(),
                    a[4..].try_into().unwrap(),
                    6,
                    len as u16,
                )
            }
            L3Kind::Ipv6 => {
                let a = &frame[l.l3_offset + 8..l.l3_offset + 40];
                pseudo_header_ipv6(
                    a[..16].try_into().unwrap(),
                    a[16..].try_into().unwrap(),
                    6,
                    len as u32,
                )
            }
        };
        sum.add_bytes(&frame[l4..]);
        sum.finish()
    }

    /// Cuts a large TCP frame into `mss`-byte segments with the crate's
    /// segmenter, so the round trips below run against the real engine.
    fn cut(frame: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let layout = layout_of(frame);
        let gso = GsoKind::Tcp {
            mss: u16::try_from(mss).unwrap(),
            ecn: false,
        };
        let mut segmenter = Segmenter::new(SegmentParams::default());
        let mut copied = SegmentList::new();
        segmenter
            .segment_copy(frame, &layout, gso, &mut copied)
            .unwrap();
        copied.iter().map(<[u8]>::to_vec).collect()
    }

    /// Completes a NEEDS_CSUM frame as a device would.
    fn complete(hdr: &VirtioNetHdr, frame: &mut [u8]) {
        if hdr.flags & FLAG_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            let c = checksum(&frame[start..]);
            frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }

    /// What was delivered, as (header, bytes): an all-zero header for a
    /// frame delivered as it came.
    fn flatten<T: AsRef<[u8]>>(delivered: Vec<Delivered<T>>) -> Out {
        delivered
            .into_iter()
            .map(|d| match d {
                Delivered::Unchanged(f) => (VirtioNetHdr::default(), f.as_ref().to_vec()),
                Delivered::Merged(m) => (m.hdr, m.frame().to_vec()),
            })
            .collect()
    }

    /// Pushes `frames` in one batch; the general path only if `general_only`.
    fn run_on(
        config: GroConfig,
        frames: &[Vec<u8>],
        checksum: SegmentChecksum,
        general_only: bool,
    ) -> (Out, GroStats, FastProbe) {
        let mut gro = Coalescer::new(config).unwrap();
        gro.probe.disabled = general_only;
        let mut out: Vec<Delivered<&[u8]>> = Vec::new();
        for f in frames {
            gro.push(&f[..], &layout_of(f), checksum, &mut out);
        }
        gro.flush_all(&mut out);
        assert_eq!(gro.held_flows(), 0);
        (flatten(out), gro.stats(), gro.probe)
    }

    /// Pushes `frames` in one batch, and checks that the general path alone
    /// gives the same frames and counts: the fast path is only a shortcut.
    fn run_with(
        config: GroConfig,
        frames: &[Vec<u8>],
        checksum: SegmentChecksum,
    ) -> (Out, GroStats) {
        let (out, stats, _) = run_on(config, frames, checksum, false);
        let (general, general_stats, probe) = run_on(config, frames, checksum, true);
        assert_eq!((probe.merged, probe.bad_checksum), (0, 0));
        assert!(out == general, "the fast path changed the frames delivered");
        assert_eq!(stats, general_stats, "the fast path changed the counts");
        (out, stats)
    }

    fn run(config: GroConfig, frames: &[Vec<u8>]) -> (Out, GroStats) {
        run_with(config, frames, SegmentChecksum::Unverified)
    }

    fn payload_len(frame: &[u8]) -> usize {
        let l = layout_of(frame);
        frame.len() - l.payload_offset
    }

    fn config(mode: GroChecksum) -> GroConfig {
        GroConfig {
            checksum: mode,
            ..GroConfig::default()
        }
    }

    fn round_trip(spec: &Spec, payload: &[u8], mss: usize, mode: GroChecksum) {
        let original = build(spec, payload);
        let segments = cut(&original, mss);
        let (out, stats) = run(config(mode), &segments);
        assert_eq!(out.len(), 1, "{stats:?}");
        let (hdr, mut merged) = out.into_iter().next().unwrap();
        if segments.len() == 1 {
            assert_eq!(hdr, VirtioNetHdr::default());
            assert_eq!(merged, segments[0]);
            return;
        }
        let l = layout_of(&original);
        let expected = VirtioNetHdr {
            flags: match mode {
                GroChecksum::Partial => FLAG_NEEDS_CSUM,
                GroChecksum::Complete => FLAG_DATA_VALID,
            },
            gso_type: if spec.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: l.payload_offset as u16,
            gso_size: mss as u16,
            csum_start: if mode == GroChecksum::Partial {
                l.l4_offset as u16
            } else {
                0
            },
            csum_offset: if mode == GroChecksum::Partial { 16 } else { 0 },
            num_buffers: 0,
        };
        assert_eq!(hdr, expected);
        if mode == GroChecksum::Complete {
            assert_eq!(merged, original);
        }
        complete(&hdr, &mut merged);
        assert_eq!(merged, original);
        // And back: segmenting the merged frame gives the segments again.
        assert_eq!(cut(&merged, usize::from(hdr.gso_size)), segments);
        assert_eq!(stats.segments_merged, segments.len() as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn coalescing_the_segments_gives_back_the_frame(
            spec in spec_strategy(),
            payload in proptest::collection::vec(any::<u8>(), 1..12000),
            mss in 1usize..1500,
            complete_mode: bool,
        ) {
            // Keep the segment count moderate for tiny MSS values.
            let mss = mss.max(payload.len() / 300 + 1);
            let mode = if complete_mode { GroChecksum::Complete } else { GroChecksum::Partial };
            round_trip(&spec, &payload, mss, mode);
        }
    }

    #[test]
    fn round_trip_of_a_full_64k_frame_both_families_with_vlans() {
        for (v6, inner_vlan) in [
            (false, None),
            (true, None),
            (false, Some(7)),
            (true, Some(8)),
        ] {
            let spec = Spec {
                v6,
                vlan: Some(100),
                inner_vlan,
                psh: true,
                seq: u32::MAX - 5000, // sequence numbers wrap inside the frame
                ..Spec::default()
            };
            let headers = if v6 { 40 } else { 20 } + 32;
            let payload: Vec<u8> = (0..65535 - headers).map(|i| (i * 7 + 3) as u8).collect();
            for mode in [GroChecksum::Partial, GroChecksum::Complete] {
                round_trip(&spec, &payload, 1448, mode);
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Swap(usize, usize),
        Drop(usize),
        /// OR these TCP flag bits (byte 13) into a segment, checksum fixed.
        Flags(usize, u8),
        /// Flip a payload byte, checksum left stale.
        Corrupt(usize, usize),
        /// Flip a bit of the IPv4 header checksum.
        CorruptIp(usize),
        /// Change the acknowledgment number, checksum fixed.
        Ack(usize),
        /// Change the timestamp option, checksum fixed.
        Options(usize),
        /// Cut the segment's payload shorter, lengths and checksums fixed.
        Shorten(usize),
    }

    fn mutation_strategy() -> impl Strategy<Value = Mutation> {
        let i = any::<prop::sample::Index>();
        prop_oneof![
            (i.clone(), any::<prop::sample::Index>())
                .prop_map(|(a, b)| Mutation::Swap(a.index(1 << 20), b.index(1 << 20))),
            i.clone().prop_map(|a| Mutation::Drop(a.index(1 << 20))),
            (
                i.clone(),
                prop::sample::select(vec![0x01u8, 0x02, 0x04, 0x20, 0x40, 0x80])
            )
                .prop_map(|(a, f)| Mutation::Flags(a.index(1 << 20), f)),
            (i.clone(), any::<usize>()).prop_map(|(a, b)| Mutation::Corrupt(a.index(1 << 20), b)),
            i.clone()
                .prop_map(|a| Mutation::CorruptIp(a.index(1 << 20))),
            i.clone().prop_map(|a| Mutation::Ack(a.index(1 << 20))),
            i.clone().prop_map(|a| Mutation::Options(a.index(1 << 20))),
            i.prop_map(|a| Mutation::Shorten(a.index(1 << 20))),
        ]
    }

    fn refresh_tcp_checksum(seg: &mut [u8]) {
        let l = layout_of(seg);
        let c = tcp_checksum(seg, &l);
        seg[l.l4_offset + 16..l.l4_offset + 18].copy_from_slice(&c.to_be_bytes());
    }

    /// Applies `m`; returns the frame that must come out untouched, if any.
    fn mutate(segs: &mut Vec<Vec<u8>>, m: &Mutation) -> Option<Vec<u8>> {
        let n = segs.len();
        let l = layout_of(&segs[0]);
        let l4 = l.l4_offset;
        match *m {
            Mutation::Swap(a, b) => {
                segs.swap(a % n, b % n);
                None
            }
            Mutation::Drop(a) => {
                segs.remove(a % n);
                None
            }
            Mutation::Flags(a, f) => {
                let s = &mut segs[a % n];
                s[l4 + 13] |= f;
                refresh_tcp_checksum(s);
                Some(s.clone())
            }
            Mutation::Corrupt(a, b) => {
                let s = &mut segs[a % n];
                let at = l.payload_offset + b % (s.len() - l.payload_offset);
                s[at] ^= 0x5a;
                Some(s.clone())
            }
            Mutation::CorruptIp(a) => {
                let s = &mut segs[a % n];
                if l.l3 == L3Kind::Ipv4 {
                    s[l.l3_offset + 10] ^= 0x01;
                    Some(s.clone())
                } else {
                    None
                }
            }
            Mutation::Ack(a) => {
                let s = &mut segs[a % n];
                s[l4 + 8] ^= 0x10;
                refresh_tcp_checksum(s);
                None
            }
            Mutation::Options(a) => {
                let s = &mut segs[a % n];
                if l.payload_offset - l4 > 20 {
                    s[l.payload_offset - 1] ^= 0x01;
                    refresh_tcp_checksum(s);
                }
                None
            }
            Mutation::Shorten(a) => {
                let s = &mut segs[a % n];
                let keep = (s.len() - l.payload_offset) / 2;
                if keep == 0 {
                    return None;
                }
                s.truncate(l.payload_offset + keep);
                let len = (s.len() - l.l3_offset) as u16;
                if l.l3 == L3Kind::Ipv4 {
                    s[l.l3_offset + 2..l.l3_offset + 4].copy_from_slice(&len.to_be_bytes());
                    s[l.l3_offset + 10..l.l3_offset + 12].fill(0);
                    let c = checksum(&s[l.l3_offset..l4]);
                    s[l.l3_offset + 10..l.l3_offset + 12].copy_from_slice(&c.to_be_bytes());
                } else {
                    s[l.l3_offset + 4..l.l3_offset + 6].copy_from_slice(&(len - 40).to_be_bytes());
                }
                refresh_tcp_checksum(s);
                None
            }
        }
    }

    /// Checks the invariants of a coalescer's output against its input:
    /// pass-through frames are input frames unchanged; every other frame is
    /// a valid frame whose payload is the original's at its sequence number;
    /// every payload byte of the input comes out exactly as often as it
    /// went in.
    fn check_output(inputs: &[Vec<u8>], out: &Out, original: &[u8]) {
        let lo = layout_of(original);
        let seq0 = rd32(original, lo.l4_offset + 4);
        let orig_payload = &original[lo.payload_offset..];
        let mut coverage_in = vec![0u32; orig_payload.len()];
        let mut coverage_out = vec![0u32; orig_payload.len()];
        let count = |cov: &mut Vec<u32>, frame: &[u8]| {
            let l = layout_of(frame);
            let off = rd32(frame, l.l4_offset + 4).wrapping_sub(seq0) as usize;
            for c in &mut cov[off..off + frame.len() - l.payload_offset] {
                *c += 1;
            }
        };
        for f in inputs {
            count(&mut coverage_in, f);
        }
        for (hdr, frame) in out {
            count(&mut coverage_out, frame);
            if *hdr == VirtioNetHdr::default() {
                assert!(inputs.contains(frame), "pass-through frame was changed");
                continue;
            }
            let mut frame = frame.clone();
            complete(hdr, &mut frame);
            let l = layout_of(&frame);
            if l.l3 == L3Kind::Ipv4 {
                assert_eq!(checksum(&frame[l.l3_offset..l.l4_offset]), 0);
                assert_eq!(
                    usize::from(rd16(&frame, l.l3_offset + 2)),
                    frame.len() - l.l3_offset
                );
            } else {
                assert_eq!(
                    usize::from(rd16(&frame, l.l3_offset + 4)),
                    frame.len() - l.l3_offset - 40
                );
            }
            let stored = rd16(&frame, l.l4_offset + 16);
            assert_eq!(tcp_checksum(&mut frame, &l), stored, "TCP checksum");
            let off = rd32(&frame, l.l4_offset + 4).wrapping_sub(seq0) as usize;
            let payload = &frame[l.payload_offset..];
            assert_eq!(
                payload,
                &orig_payload[off..off + payload.len()],
                "payload at {off}"
            );
            if hdr.gso_type != GSO_NONE {
                assert!(payload.len() > usize::from(hdr.gso_size));
                // Every input segment inside this frame had the same flow
                // headers: L2, IP fields, ack, window, options; only ACK/PSH.
                let end = off + payload.len();
                for seg in inputs {
                    let sl = layout_of(seg);
                    let s_off = rd32(seg, sl.l4_offset + 4).wrapping_sub(seq0) as usize;
                    if s_off < off || s_off >= end {
                        continue;
                    }
                    assert_eq!(sl, l);
                    assert_eq!(seg[..l.l3_offset], frame[..l.l3_offset]);
                    let (ip_s, ip_m) = (&seg[l.l3_offset..], &frame[l.l3_offset..]);
                    if l.l3 == L3Kind::Ipv4 {
                        assert_eq!(
                            (ip_s[1], ip_s[8], ip_s[6] & 0x40),
                            (ip_m[1], ip_m[8], ip_m[6] & 0x40)
                        );
                    } else {
                        assert_eq!((&ip_s[..4], ip_s[7]), (&ip_m[..4], ip_m[7]));
                    }
                    let (t_s, t_m) = (
                        &seg[l.l4_offset..sl.payload_offset],
                        &frame[l.l4_offset..l.payload_offset],
                    );
                    assert_eq!(t_s[8..12], t_m[8..12], "ack");
                    assert_eq!(t_s[14..16], t_m[14..16], "window");
                    assert_eq!(t_s[20..], t_m[20..], "options");
                    assert_eq!(t_s[12] & 0x0f, 0);
                    assert_eq!(t_s[13] & !TCP_FLAG_PSH, TCP_FLAG_ACK, "flags");
                }
            }
        }
        assert_eq!(coverage_in, coverage_out, "bytes lost or duplicated");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(160))]

        #[test]
        fn anomalies_are_never_merged_and_no_byte_is_lost(
            spec in spec_strategy(),
            payload in proptest::collection::vec(any::<u8>(), 200..6000),
            mss in 16usize..700,
            mutation in mutation_strategy(),
            complete_mode: bool,
        ) {
            let spec = Spec { psh: false, ..spec };
            let original = build(&spec, &payload);
            let mut segs = cut(&original, mss);
            let untouched = mutate(&mut segs, &mutation);
            let mode = if complete_mode { GroChecksum::Complete } else { GroChecksum::Partial };
            let (out, _) = run(config(mode), &segs);
            check_output(&segs, &out, &original);
            if let Some(frame) = untouched {
                prop_assert!(out.contains(&(VirtioNetHdr::default(), frame)));
            }
        }

        #[test]
        fn arbitrary_bytes_and_layouts_never_panic(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            vlan_tags in 0u8..3,
            l3_offset in 0usize..80,
            l4_delta in 0usize..80,
            pl_delta in 0usize..80,
            v6: bool,
            fragment: bool,
        ) {
            let layout = FrameLayout {
                vlan_tags,
                l3_offset,
                l3: if v6 { L3Kind::Ipv6 } else { L3Kind::Ipv4 },
                l4_offset: l3_offset + l4_delta,
                l4: Some(L4Kind::Tcp),
                payload_offset: l3_offset + l4_delta + pl_delta,
                ipv6_fragment_header: None,
                is_fragment: fragment,
            };
            let mut gro = Coalescer::new(GroConfig::default()).unwrap();
            let mut out: Vec<Delivered<&[u8]>> = Vec::new();
            for checksum in [SegmentChecksum::Unverified, SegmentChecksum::Partial] {
                gro.push(&frame[..], &layout, checksum, &mut out);
                gro.flush_flow(&frame, &layout, &mut out);
                gro.push(&frame[..], &layout, checksum, &mut out);
            }
            gro.flush_all(&mut out);
            prop_assert_eq!(out.len(), 4);
        }

        #[test]
        fn corrupted_valid_segment_bytes_never_panic(
            spec in spec_strategy(),
            payload in proptest::collection::vec(any::<u8>(), 1..400),
            at in any::<usize>(),
            value: u8,
        ) {
            // A correct layout over a frame with any one byte changed.
            let mut frame = build(&spec, &payload);
            let layout = layout_of(&frame);
            let at = at % frame.len();
            frame[at] = value;
            let mut gro = Coalescer::new(GroConfig::default()).unwrap();
            let mut out: Vec<Delivered<&[u8]>> = Vec::new();
            gro.push(&frame[..], &layout, SegmentChecksum::Unverified, &mut out);
            gro.push(&frame[..at], &layout, SegmentChecksum::Unverified, &mut out);
            gro.flush_all(&mut out);
            prop_assert_eq!(out.len(), 2);
        }
    }

    fn segments(spec: &Spec, payload_len: usize, mss: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let original = build(spec, &payload);
        let segs = cut(&original, mss);
        (original, segs)
    }

    #[test]
    fn interleaved_flows_on_vlans_merge_separately() {
        let a = Spec {
            vlan: Some(10),
            ..Spec::default()
        };
        let b = Spec {
            vlan: Some(11),
            ..Spec::default()
        }; // same addresses, other VLAN
        let c = Spec {
            v6: true,
            sport: 5,
            ..Spec::default()
        };
        let (oa, sa) = segments(&a, 5000, 1000);
        let (ob, sb) = segments(&b, 4000, 1000);
        let (oc, sc) = segments(&c, 3000, 1000);
        let mut input = Vec::new();
        for i in 0..5 {
            for s in [&sa, &sb, &sc] {
                if let Some(f) = s.get(i) {
                    input.push(f.clone());
                }
            }
        }
        let (out, stats) = run(config(GroChecksum::Complete), &input);
        let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
        assert_eq!(frames.len(), 3);
        for o in [oa, ob, oc] {
            assert!(frames.contains(&o));
        }
        assert_eq!(stats.frames_merged, 3);
        assert_eq!(stats.segments_merged, 12);
    }

    #[test]
    fn ipv4_options_and_disabled_families_pass_through() {
        let spec = Spec {
            ip_options: true,
            ..Spec::default()
        };
        let (_, segs) = segments(&spec, 3000, 1000);
        let (out, stats) = run(GroConfig::default(), &segs);
        assert_eq!(stats.passed_through, 3);
        assert!(out.iter().all(|(h, _)| *h == VirtioNetHdr::default()));

        for (v6, cfg) in [
            (
                false,
                GroConfig {
                    guest_tso4: false,
                    ..GroConfig::default()
                },
            ),
            (
                true,
                GroConfig {
                    guest_tso6: false,
                    ..GroConfig::default()
                },
            ),
        ] {
            let (_, segs) = segments(
                &Spec {
                    v6,
                    ..Spec::default()
                },
                3000,
                1000,
            );
            let (out, _) = run(cfg, &segs);
            let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
            assert_eq!(frames, segs);
        }
    }

    #[test]
    fn non_tcp_passes_through() {
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
            .udp(1, 2)
            .write(&mut udp, &[7; 100])
            .unwrap();
        let (out, _) = run(GroConfig::default(), &[udp.clone(), udp.clone()]);
        assert_eq!(
            out,
            vec![
                (VirtioNetHdr::default(), udp.clone()),
                (VirtioNetHdr::default(), udp)
            ]
        );
    }

    #[test]
    fn pure_ack_flushes_the_flow_first() {
        let spec = Spec::default();
        let (_, segs) = segments(&spec, 3000, 1000);
        let ack = build(
            &Spec {
                seq: 3001,
                ..spec.clone()
            },
            &[],
        );
        let input = vec![
            segs[0].clone(),
            segs[1].clone(),
            ack.clone(),
            segs[2].clone(),
        ];
        let (out, _) = run(GroConfig::default(), &input);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0.gso_type, GSO_TCPV4);
        assert_eq!(payload_len(&out[0].1), 2000);
        assert_eq!(out[1], (VirtioNetHdr::default(), ack));
        assert_eq!(out[2], (VirtioNetHdr::default(), segs[2].clone()));
    }

    #[test]
    fn larger_segment_after_first_starts_a_new_frame() {
        let spec = Spec::default();
        let small = build(&spec, &[1; 500]);
        let big = build(
            &Spec {
                seq: 501,
                ip_id: 101,
                ..spec
            },
            &[2; 1000],
        );
        let (out, _) = run(GroConfig::default(), &[small.clone(), big.clone()]);
        assert_eq!(
            out,
            vec![
                (VirtioNetHdr::default(), small),
                (VirtioNetHdr::default(), big)
            ]
        );
    }

    #[test]
    fn shorter_segment_is_merged_last_and_flushes() {
        let (original, segs) = segments(&Spec::default(), 2500, 1000);
        let mut gro = Coalescer::new(config(GroChecksum::Complete)).unwrap();
        let mut out: Vec<Delivered<&[u8]>> = Vec::new();
        for s in &segs {
            gro.push(&s[..], &layout_of(s), SegmentChecksum::Unverified, &mut out);
        }
        // Delivered without waiting for the end of the batch.
        assert_eq!(gro.held_flows(), 0);
        let out = flatten(out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, original);
    }

    #[test]
    fn ip_id_must_increment_without_df() {
        let spec = Spec {
            df: false,
            ..Spec::default()
        };
        let (_, mut segs) = segments(&spec, 3000, 1000);
        // Same id on the second segment: with DF clear that is not one train.
        let l = layout_of(&segs[1]);
        let s = &mut segs[1];
        s[l.l3_offset + 4..l.l3_offset + 6].copy_from_slice(&100u16.to_be_bytes());
        s[l.l3_offset + 10..l.l3_offset + 12].fill(0);
        let c = checksum(&s[l.l3_offset..l.l4_offset]);
        s[l.l3_offset + 10..l.l3_offset + 12].copy_from_slice(&c.to_be_bytes());
        let (out, _) = run(GroConfig::default(), &segs);
        // The second segment breaks the train, and the third does not
        // continue the second (its id is two more).
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], (VirtioNetHdr::default(), segs[0].clone()));

        // With DF set the id is ignored (RFC 6864).
        let (original, mut segs) = segments(&Spec::default(), 3000, 1000);
        for s in &mut segs {
            let l = layout_of(s);
            s[l.l3_offset + 4..l.l3_offset + 6].copy_from_slice(&7u16.to_be_bytes());
            s[l.l3_offset + 10..l.l3_offset + 12].fill(0);
            let c = checksum(&s[l.l3_offset..l.l4_offset]);
            s[l.l3_offset + 10..l.l3_offset + 12].copy_from_slice(&c.to_be_bytes());
        }
        let (out, _) = run(config(GroChecksum::Complete), &segs);
        assert_eq!(out.len(), 1);
        assert_eq!(payload_len(&out[0].1), payload_len(&original));
    }

    #[test]
    fn ttl_tos_and_ipv6_flow_label_changes_split() {
        let base = Spec::default();
        for change in [
            Spec {
                ttl: 63,
                ..base.clone()
            },
            Spec {
                tos: 4,
                ..base.clone()
            },
            Spec {
                window: 1,
                ..base.clone()
            },
            Spec {
                v6: true,
                flow_label: 9,
                ..base.clone()
            },
            Spec {
                v6: true,
                ttl: 1,
                ..base.clone()
            },
            Spec {
                v6: true,
                tos: 0x20,
                ..base.clone()
            },
        ] {
            let first_spec = Spec {
                v6: change.v6,
                ..base.clone()
            };
            let first = build(&first_spec, &[1; 1000]);
            let second = build(
                &Spec {
                    seq: 1001,
                    ip_id: 101,
                    ..change
                },
                &[2; 1000],
            );
            let (out, _) = run(GroConfig::default(), &[first.clone(), second.clone()]);
            assert_eq!(
                out,
                vec![
                    (VirtioNetHdr::default(), first),
                    (VirtioNetHdr::default(), second)
                ]
            );
        }
    }

    #[test]
    fn flows_beyond_the_limit_evict_the_oldest() {
        let cfg = GroConfig {
            max_flows: 2,
            ..config(GroChecksum::Complete)
        };
        let all: Vec<(Vec<u8>, Vec<Vec<u8>>)> = (0..3)
            .map(|i| {
                let spec = Spec {
                    sport: 100 + i,
                    ..Spec::default()
                };
                segments(&spec, 4000, 1000)
            })
            .collect();
        let mut input = Vec::new();
        for i in 0..4 {
            for (_, segs) in &all {
                input.push(segs[i].clone());
            }
        }
        let (out, stats) = run(cfg, &input);
        assert!(stats.evictions > 0);
        let source_port = |f: &[u8]| rd16(f, layout_of(f).l4_offset);
        for (original, segs) in &all {
            let port = source_port(original);
            let mine: Out = out
                .iter()
                .filter(|(_, f)| source_port(f) == port)
                .cloned()
                .collect();
            check_output(segs, &mine, original);
        }
        let total: usize = out.iter().map(|(_, f)| payload_len(f)).sum();
        assert_eq!(total, 12000);
    }

    #[test]
    fn merged_frames_stay_within_max_ip_len() {
        let cfg = GroConfig {
            max_ip_len: 3100,
            ..config(GroChecksum::Complete)
        };
        let (original, segs) = segments(&Spec::default(), 20000, 1000);
        let (out, _) = run(cfg, &segs);
        check_output(&segs, &out, &original);
        for (hdr, f) in &out {
            let l = layout_of(f);
            assert!(f.len() - l.l3_offset <= 3100);
            assert_eq!(hdr.gso_type, GSO_TCPV4);
        }
        // 20 + 32 bytes of headers: three 1000-byte payloads fit, four do not.
        assert_eq!(out.len(), 7);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(
            Coalescer::<Vec<u8>>::new(GroConfig {
                max_flows: 0,
                ..GroConfig::default()
            })
            .unwrap_err(),
            GroError::NoFlows
        );
        assert_eq!(
            Coalescer::<Vec<u8>>::new(GroConfig {
                max_ip_len: 65536,
                ..GroConfig::default()
            })
            .unwrap_err(),
            GroError::BadMaxIpLen { max_ip_len: 65536 }
        );
    }

    /// A [`GroOutput`] that counts the buffers it gives.
    #[derive(Default)]
    struct Counting {
        buffers: usize,
        out: Vec<Delivered<Vec<u8>>>,
    }

    impl GroOutput<Vec<u8>> for Counting {
        fn buffer(&mut self, len: usize) -> BytesMut {
            self.buffers += 1;
            BytesMut::zeroed(len)
        }

        fn deliver(&mut self, frame: Delivered<Vec<u8>>) {
            self.out.push(frame);
        }
    }

    #[test]
    fn only_a_merge_takes_a_buffer_and_frames_not_merged_come_back_as_they_were() {
        let (_, segs) = segments(&Spec::default(), 40000, 1448);
        let mut gro = Coalescer::new(GroConfig::default()).unwrap();
        let mut out = Counting::default();
        // One segment per flow and batch: held, then given back, no copy.
        for s in &segs[..3] {
            gro.push(
                s.clone(),
                &layout_of(s),
                SegmentChecksum::Unverified,
                &mut out,
            );
            gro.flush_all(&mut out);
        }
        assert_eq!(out.buffers, 0);
        assert!(
            matches!(&out.out[..], [Delivered::Unchanged(a), Delivered::Unchanged(b), Delivered::Unchanged(c)]
            if [a, b, c] == [&segs[0], &segs[1], &segs[2]])
        );
        // The rest in one batch: one buffer for the one merged frame.
        out.out.clear();
        for s in &segs[3..] {
            gro.push(
                s.clone(),
                &layout_of(s),
                SegmentChecksum::Unverified,
                &mut out,
            );
        }
        gro.flush_all(&mut out);
        assert_eq!(out.buffers, 1);
        assert!(
            matches!(&out.out[..], [Delivered::Merged(m)] if m.segments as usize == segs.len() - 3)
        );
        assert_eq!(gro.stats().singles, 3);
    }

    #[test]
    fn verified_and_partial_segments_merge_without_verification() {
        let (original, segs) = segments(&Spec::default(), 5000, 1000);
        // A wrong TCP checksum in the middle: a device that said DATA_VALID
        // is trusted, so it merges (the merged checksum is written anew).
        let mut segs_bad = segs.clone();
        let l = layout_of(&segs_bad[2]);
        segs_bad[2][l.l4_offset + 16] ^= 0xff;
        for checksum in [SegmentChecksum::Verified, SegmentChecksum::Partial] {
            let (out, stats) = run_with(config(GroChecksum::Complete), &segs_bad, checksum);
            assert_eq!(out.len(), 1, "{checksum:?}");
            assert_eq!(out[0].1, original);
            assert_eq!(stats.bad_checksum, 0);
        }
        // Unverified, the same segment is passed through, the rest merged
        // around it.
        let (out, stats) = run(config(GroChecksum::Complete), &segs_bad);
        assert_eq!(stats.bad_checksum, 1);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1], (VirtioNetHdr::default(), segs_bad[2].clone()));
        // A partial checksum as a sender leaves it: seeded, not complemented.
        let partial: Vec<Vec<u8>> = segs
            .iter()
            .map(|s| {
                let mut s = s.clone();
                let l = layout_of(&s);
                let c = tcp_checksum(&mut s, &l);
                // The pseudo-header sum is the complement of the checksum of
                // the rest; any seed will do, the merged frame's is rewritten.
                s[l.l4_offset + 16..l.l4_offset + 18].copy_from_slice(&(!c).to_be_bytes());
                s
            })
            .collect();
        let (out, _) = run_with(GroConfig::default(), &partial, SegmentChecksum::Partial);
        assert_eq!(out.len(), 1);
        let (hdr, mut merged) = out.into_iter().next().unwrap();
        complete(&hdr, &mut merged);
        assert_eq!(merged, original);
    }

    #[test]
    fn unmergeable_frames_and_flush_flow_keep_the_flow_in_order() {
        let (_, a) = segments(&Spec::default(), 3000, 1000);
        let (_, b) = segments(
            &Spec {
                sport: 1,
                ..Spec::default()
            },
            3000,
            1000,
        );
        let mut gro = Coalescer::new(GroConfig::default()).unwrap();
        let mut out: Vec<Delivered<&[u8]>> = Vec::new();
        let unverified = SegmentChecksum::Unverified;
        for f in [&a[0], &a[1], &b[0]] {
            gro.push(&f[..], &layout_of(f), unverified, &mut out);
        }
        // A frame of flow a that is never merged: a's held frame goes first,
        // b stays held.
        gro.push(
            &a[2][..],
            &layout_of(&a[2]),
            SegmentChecksum::Unmergeable,
            &mut out,
        );
        assert_eq!(gro.held_flows(), 1);
        // flush_flow delivers b's held frame without taking a frame.
        gro.flush_flow(&b[1], &layout_of(&b[1]), &mut out);
        assert_eq!(gro.held_flows(), 0);
        let out = flatten(out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0.gso_type, GSO_TCPV4);
        assert_eq!(payload_len(&out[0].1), 2000);
        assert_eq!(out[1].1, a[2]);
        assert_eq!(out[2].1, b[0]);
    }

    #[test]
    fn a_fragment_flushes_everything_held() {
        let (_, segs) = segments(&Spec::default(), 3000, 1000);
        let mut gro = Coalescer::new(GroConfig::default()).unwrap();
        let mut out: Vec<Delivered<&[u8]>> = Vec::new();
        gro.push(
            &segs[0][..],
            &layout_of(&segs[0]),
            SegmentChecksum::Unverified,
            &mut out,
        );
        let mut fragment = layout_of(&segs[1]);
        fragment.is_fragment = true;
        gro.push(
            &segs[1][..],
            &fragment,
            SegmentChecksum::Unverified,
            &mut out,
        );
        let out = flatten(out);
        assert_eq!(
            out,
            vec![
                (VirtioNetHdr::default(), segs[0].clone()),
                (VirtioNetHdr::default(), segs[1].clone())
            ]
        );
    }

    /// A segment whose bytes changed after its checksums were written is
    /// never merged, in the middle of a merge that the fast path runs: it
    /// is passed through as it came, counted, and the flow merges around
    /// it. Only bytes no other rule looks at are changed, so a checksum is
    /// all that can catch them.
    #[test]
    fn a_corrupted_segment_in_a_running_merge_is_passed_through() {
        for v6 in [false, true] {
            let spec = Spec {
                v6,
                ..Spec::default()
            };
            let (original, segs) = segments(&spec, 10 * 999, 999);
            let l = layout_of(&segs[0]);
            let (l3, l4, pl) = (l.l3_offset, l.l4_offset, l.payload_offset);
            let end = segs[5].len();
            // (what, byte, bits flipped, caught by the TCP checksum)
            let mut places = vec![
                ("first payload byte", pl, 0x01, true),
                ("second payload byte", pl + 1, 0x80, true),
                ("last payload byte", end - 1, 0x10, true),
                ("TCP checksum", l4 + 16, 0x01, true),
                ("urgent pointer", l4 + 19, 0x01, true),
                ("PSH flag", l4 + 13, TCP_FLAG_PSH, true),
            ];
            if !v6 {
                places.extend([
                    // With DF the id is not compared: the header checksum
                    // is all that notices.
                    ("IPv4 id", l3 + 5, 0x01, false),
                    ("IPv4 header checksum", l3 + 11, 0x01, false),
                ]);
            }
            for (what, at, bits, tcp) in places {
                for mode in [GroChecksum::Partial, GroChecksum::Complete] {
                    let mut segs = segs.clone();
                    segs[5][at] ^= bits;
                    let (out, stats) = run(config(mode), &segs);
                    check_output(&segs, &out, &original);
                    assert_eq!(stats.bad_checksum, 1, "{what}");
                    assert_eq!(out.len(), 3, "{what}");
                    assert_eq!(out[1], (VirtioNetHdr::default(), segs[5].clone()), "{what}");
                    assert_eq!(
                        (out[0].1.len(), out[2].1.len()),
                        (pl + 5 * 999, pl + 4 * 999)
                    );
                    // Segments 2..=4 and 8..=9 took the fast path (1 and 7
                    // joined the first of a flow), and it caught the
                    // TCP-level changes itself.
                    let (_, _, probe) =
                        run_on(config(mode), &segs, SegmentChecksum::Unverified, false);
                    assert_eq!(probe.merged, 5, "{what}");
                    assert_eq!(probe.bad_checksum, u64::from(tcp), "{what}");
                }
            }
        }
    }

    /// The same segments, trusted (`Verified`, `Partial`): nothing is
    /// verified, so the changed one merges, on the fast path too.
    #[test]
    fn trusted_segments_merge_on_the_fast_path_unverified() {
        let (_, mut segs) = segments(&Spec::default(), 10 * 999, 999);
        let l = layout_of(&segs[0]);
        segs[5][l.payload_offset] ^= 0x01;
        for checksum in [SegmentChecksum::Verified, SegmentChecksum::Partial] {
            for mode in [GroChecksum::Partial, GroChecksum::Complete] {
                let (out, stats) = run_with(config(mode), &segs, checksum);
                assert_eq!((out.len(), stats.bad_checksum), (1, 0));
                let (_, _, probe) = run_on(config(mode), &segs, checksum, false);
                assert_eq!((probe.merged, probe.bad_checksum), (8, 0));
            }
        }
    }
}
