//! Receive coalescing (GRO): merging in-order TCP segments of one flow into
//! one large frame with a virtio-net header, for guests that negotiated
//! `VIRTIO_NET_F_GUEST_TSO4` / `GUEST_TSO6`.
//!
//! A guest that gets one 64 KiB frame instead of 44 segments of 1448 bytes
//! runs its TCP receive path once instead of 44 times. The merged frame is
//! exactly the frame the sender's TSO engine would have started from: the
//! headers of the first segment, the payloads in order, lengths and the IPv4
//! header checksum rewritten, PSH set if the last segment had it.
//!
//! ```
//! use vswitch_offload::gro::{Coalescer, GroConfig};
//! use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_TCPV4};
//! use vswitch_offload::{FrameLayout, L3Kind, L4Kind, VirtioNetHdr};
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
//! let mut delivered: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
//! let mut sink = |hdr: &VirtioNetHdr, frame: &[u8]| delivered.push((*hdr, frame.to_vec()));
//! gro.push(&segment(1, 1000, &[0xaa; 1000]), &layout, &mut sink);
//! gro.push(&segment(2, 2000, &[0xbb; 1000]), &layout, &mut sink);
//! gro.flush_all(&mut sink); // end of the batch
//!
//! let (hdr, frame) = &delivered[0];
//! assert_eq!(delivered.len(), 1);
//! assert_eq!((hdr.gso_type, hdr.gso_size, hdr.flags), (GSO_TCPV4, 1000, FLAG_NEEDS_CSUM));
//! assert_eq!(frame.len(), 54 + 2000);
//! ```
//!
//! # Merge rules
//!
//! A segment is appended to the frame held for its flow only when all of
//! these hold (otherwise the held frame is flushed first, so the guest still
//! sees the flow's frames in arrival order):
//!
//! - same flow: the whole Ethernet header (MAC addresses, VLAN tags,
//!   EtherType), IP addresses and TCP ports;
//! - IPv4 without options and not a fragment, IPv6 without extension
//!   headers; same TOS and TTL (IPv4), same traffic class, flow label and
//!   hop limit (IPv6); same DF bit, and for IPv4 without DF an IP id one
//!   more than the previous segment's (with DF the id carries no meaning,
//!   RFC 6864);
//! - the sequence number continues the held data exactly; same
//!   acknowledgment number, window and TCP option bytes (timestamps included);
//! - only ACK, optionally with PSH, among the TCP flags; PSH ends the merge
//!   after the segment carrying it is included;
//! - a non-empty payload no larger than the first segment's, which sets
//!   `gso_size`; a shorter one is the last merged;
//! - a valid IPv4 header checksum and a valid TCP checksum;
//! - the merged IP datagram stays within [`GroConfig::max_ip_len`].
//!
//! Anything else (other flags, a gap, reordering, pure ACKs, bad checksums,
//! non-TCP traffic) is passed through untouched with an all-zero header.
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
//! `DATA_VALID`, for consumers that want a self-contained frame; it costs
//! nothing extra because the payload sums were taken while verifying.
//! Either way every segment's checksum was verified before merging. A flow
//! that ends with a single segment is delivered unchanged with `DATA_VALID`.
//!
//! # Memory
//!
//! At most [`GroConfig::max_flows`] flows are held; a new flow beyond that
//! flushes the oldest. Each held flow owns one buffer of at most
//! `max_ip_len` plus its Ethernet header; buffers of flushed flows are kept
//! and reused, so in steady state coalescing allocates nothing.

use thiserror::Error;

use crate::checksum::{pseudo_header_ipv4, pseudo_header_ipv6, Checksum};
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
    /// The guest negotiated `VIRTIO_NET_F_GUEST_TSO4`: merge TCP over IPv4.
    pub guest_tso4: bool,
    /// The guest negotiated `VIRTIO_NET_F_GUEST_TSO6`: merge TCP over IPv6.
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
    /// Segments that were held and delivered alone, verified.
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

    fn addresses(&self) -> &'a [u8] {
        let (at, len) = match self.l3 {
            L3Kind::Ipv4 => (12, 8),
            L3Kind::Ipv6 => (8, 32),
        };
        &self.frame[self.l3_offset + at..self.l3_offset + at + len]
    }

    fn ports(&self) -> &'a [u8] {
        &self.frame[self.l4_offset..self.l4_offset + 4]
    }

    fn l2(&self) -> &'a [u8] {
        &self.frame[..self.l3_offset]
    }

    fn tcp_header(&self) -> &'a [u8] {
        &self.frame[self.l4_offset..self.payload_offset]
    }

    fn ip_header(&self) -> &'a [u8] {
        &self.frame[self.l3_offset..self.l4_offset]
    }

    fn payload(&self) -> &'a [u8] {
        &self.frame[self.payload_offset..]
    }

    fn seq(&self) -> u32 {
        be32(self.tcp_header(), 4).unwrap_or(0)
    }

    fn flags(&self) -> u8 {
        self.tcp_header()[13]
    }

    fn psh(&self) -> bool {
        self.flags() & TCP_FLAG_PSH != 0
    }

    /// Checks that need only this segment: may it take part in a merge at all?
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
                    && Checksum::new().add_bytes(ip).sum() == 0xffff
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
    fn header_sum(&self) -> Checksum {
        let mut sum = pseudo_header(self);
        sum.add_bytes(self.tcp_header());
        sum
    }

    /// Whether the TCP checksum is right, given the sum of the payload.
    fn tcp_checksum_ok(&self, payload_sum: &Checksum) -> bool {
        let mut sum = self.header_sum();
        sum.add_checksum(payload_sum);
        sum.sum() == 0xffff
    }
}

/// One flow being coalesced: the frame built so far and what the next
/// segment must look like.
#[derive(Debug)]
struct Flow {
    /// Headers of the first segment, then every payload in order.
    buf: Vec<u8>,
    l3: L3Kind,
    l3_offset: usize,
    l4_offset: usize,
    payload_offset: usize,
    next_seq: u32,
    next_ip_id: u16,
    /// Payload size of the first segment: the `gso_size`.
    mss: usize,
    segments: u32,
    /// Ones'-complement sum of all payload bytes in `buf`.
    payload_sum: Checksum,
    /// The last merged segment had PSH.
    psh: bool,
    /// Arrival order, for evicting the oldest flow.
    started: u64,
}

impl Flow {
    fn is_same_flow(&self, v: &TcpView<'_>) -> bool {
        let view = TcpView {
            frame: &self.buf,
            l3: self.l3,
            l3_offset: self.l3_offset,
            l4_offset: self.l4_offset,
            payload_offset: self.payload_offset,
        };
        self.l3 == v.l3
            && view.l2() == v.l2()
            && view.addresses() == v.addresses()
            && view.ports() == v.ports()
    }

    fn head(&self) -> TcpView<'_> {
        TcpView {
            frame: &self.buf,
            l3: self.l3,
            l3_offset: self.l3_offset,
            l4_offset: self.l4_offset,
            payload_offset: self.payload_offset,
        }
    }

    /// Whether `v` (already [`TcpView::mergeable`]) continues this flow.
    fn can_append(&self, v: &TcpView<'_>, max_ip_len: usize) -> bool {
        let head = self.head();
        let (h_ip, v_ip) = (head.ip_header(), v.ip_header());
        let (h_tcp, v_tcp) = (head.tcp_header(), v.tcp_header());
        if h_ip.len() != v_ip.len() || h_tcp.len() != v_tcp.len() {
            return false;
        }
        let ip_same = match self.l3 {
            L3Kind::Ipv4 => {
                let df = |ip: &[u8]| ip[6] & 0x40;
                h_ip[1] == v_ip[1] // TOS
                    && h_ip[8] == v_ip[8] // TTL
                    && df(h_ip) == df(v_ip)
                    && (df(v_ip) != 0 || be16(v_ip, 4) == Some(self.next_ip_id))
            }
            // Version, traffic class, flow label; hop limit.
            L3Kind::Ipv6 => h_ip[..4] == v_ip[..4] && h_ip[7] == v_ip[7],
        };
        let payload = v.payload().len();
        ip_same
            && v.seq() == self.next_seq
            && h_tcp[8..12] == v_tcp[8..12] // acknowledgment number
            && h_tcp[14..16] == v_tcp[14..16] // window
            && h_tcp[20..] == v_tcp[20..] // options
            && payload <= self.mss
            && self.buf.len() - self.l3_offset + payload <= max_ip_len
    }
}

/// Merges TCP segments into large frames; see the module documentation.
#[derive(Debug)]
pub struct Coalescer {
    config: GroConfig,
    flows: Vec<Flow>,
    /// Buffers of flushed flows, for reuse.
    spare: Vec<Vec<u8>>,
    stats: GroStats,
    arrivals: u64,
}

impl Coalescer {
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
            spare: Vec::new(),
            stats: GroStats::default(),
            arrivals: 0,
        })
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
    /// `layout` (checked against the frame before any use). Frames that are
    /// complete now (a flushed flow, a frame passed through) go to `sink`
    /// with their virtio-net header, in the order the guest must see them.
    pub fn push<F>(&mut self, frame: &[u8], layout: &FrameLayout, sink: &mut F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        self.arrivals += 1;
        let Some(view) = TcpView::new(frame, layout) else {
            self.pass_through(frame, sink);
            return;
        };
        let held = self.flows.iter().position(|f| f.is_same_flow(&view));
        if !view.mergeable(&self.config) {
            if let Some(i) = held {
                self.flush_index(i, sink);
            }
            if view.l3 == L3Kind::Ipv4
                && view.ip_header().len() == 20
                && Checksum::new().add_bytes(view.ip_header()).sum() != 0xffff
            {
                self.stats.bad_checksum += 1;
            }
            self.pass_through(frame, sink);
            return;
        }

        if let Some(i) = held {
            if self.flows[i].can_append(&view, self.config.max_ip_len) {
                if self.append(i, &view) {
                    let flow = &self.flows[i];
                    let room = self.config.max_ip_len - (flow.buf.len() - flow.l3_offset);
                    if view.psh() || view.payload().len() < flow.mss || room == 0 {
                        self.flush_index(i, sink);
                    }
                } else {
                    self.flush_index(i, sink);
                    self.stats.bad_checksum += 1;
                    self.pass_through(frame, sink);
                }
                return;
            }
            self.flush_index(i, sink);
        }
        self.start_flow(frame, &view, sink);
    }

    /// Delivers every held flow, oldest first: call at the end of each batch.
    pub fn flush_all<F>(&mut self, sink: &mut F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        while let Some(oldest) = self.oldest() {
            self.flush_index(oldest, sink);
        }
    }

    fn oldest(&self) -> Option<usize> {
        self.flows
            .iter()
            .enumerate()
            .min_by_key(|(_, f)| f.started)
            .map(|(i, _)| i)
    }

    fn pass_through<F>(&mut self, frame: &[u8], sink: &mut F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        self.stats.passed_through += 1;
        sink(&VirtioNetHdr::default(), frame);
    }

    /// Appends the payload of `v` to flow `i` if its TCP checksum is right;
    /// returns false (and leaves the flow as it was) if not.
    fn append(&mut self, i: usize, v: &TcpView<'_>) -> bool {
        let flow = &mut self.flows[i];
        let start = flow.buf.len();
        flow.buf.extend_from_slice(v.payload());
        let mut sum = Checksum::new();
        sum.add_bytes(&flow.buf[start..]);
        if !v.tcp_checksum_ok(&sum) {
            flow.buf.truncate(start);
            return false;
        }
        flow.payload_sum.add_checksum(&sum);
        flow.next_seq = flow.next_seq.wrapping_add(v.payload().len() as u32);
        flow.next_ip_id = flow.next_ip_id.wrapping_add(1);
        flow.segments += 1;
        flow.psh = v.psh();
        true
    }

    /// Starts holding a new flow with `v` as its first segment, or delivers
    /// it at once if it cannot be followed (PSH), or passes it through if
    /// its checksum is wrong.
    fn start_flow<F>(&mut self, frame: &[u8], v: &TcpView<'_>, sink: &mut F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        if v.psh() {
            let mut sum = Checksum::new();
            sum.add_bytes(v.payload());
            if v.tcp_checksum_ok(&sum) {
                self.stats.singles += 1;
                sink(&single_hdr(), frame);
            } else {
                self.stats.bad_checksum += 1;
                self.pass_through(frame, sink);
            }
            return;
        }
        let capacity = v.l3_offset + self.config.max_ip_len;
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity));
        buf.clear();
        buf.extend_from_slice(v.frame);
        let mut sum = Checksum::new();
        sum.add_bytes(&buf[v.payload_offset..]);
        if !v.tcp_checksum_ok(&sum) {
            self.spare.push(buf);
            self.stats.bad_checksum += 1;
            self.pass_through(frame, sink);
            return;
        }
        if self.flows.len() >= self.config.max_flows {
            if let Some(oldest) = self.oldest() {
                self.stats.evictions += 1;
                self.flush_index(oldest, sink);
            }
        }
        let ip_id = match v.l3 {
            L3Kind::Ipv4 => be16(v.ip_header(), 4).unwrap_or(0),
            L3Kind::Ipv6 => 0,
        };
        self.flows.push(Flow {
            buf,
            l3: v.l3,
            l3_offset: v.l3_offset,
            l4_offset: v.l4_offset,
            payload_offset: v.payload_offset,
            next_seq: v.seq().wrapping_add(v.payload().len() as u32),
            next_ip_id: ip_id.wrapping_add(1),
            mss: v.payload().len(),
            segments: 1,
            payload_sum: sum,
            psh: false,
            started: self.arrivals,
        });
    }

    /// Delivers flow `i` and keeps its buffer for reuse.
    fn flush_index<F>(&mut self, i: usize, sink: &mut F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        let mut flow = self.flows.swap_remove(i);
        if flow.segments == 1 {
            self.stats.singles += 1;
            sink(&single_hdr(), &flow.buf);
        } else {
            self.stats.frames_merged += 1;
            self.stats.segments_merged += u64::from(flow.segments);
            let hdr = finish_merged(&mut flow, self.config.checksum);
            sink(&hdr, &flow.buf);
        }
        flow.buf.clear();
        self.spare.push(flow.buf);
    }
}

/// The header of a verified frame delivered as it came.
fn single_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: FLAG_DATA_VALID,
        ..VirtioNetHdr::default()
    }
}

/// Rewrites the headers of a merged frame (lengths, IPv4 checksum, PSH, TCP
/// checksum) and returns its virtio-net header.
fn finish_merged(flow: &mut Flow, mode: GroChecksum) -> VirtioNetHdr {
    let (l3, l4) = (flow.l3_offset, flow.l4_offset);
    let total = flow.buf.len();
    // Both fit in 16 bits: appends keep total - l3 <= max_ip_len <= 65535.
    let ip_len = (total - l3) as u16;
    let gso_type = match flow.l3 {
        L3Kind::Ipv4 => {
            put16(&mut flow.buf, l3 + 2, ip_len);
            put16(&mut flow.buf, l3 + 10, 0);
            let csum = Checksum::new()
                .add_bytes(flow.buf.get(l3..l4).unwrap_or_default())
                .finish();
            put16(&mut flow.buf, l3 + 10, csum);
            GSO_TCPV4
        }
        L3Kind::Ipv6 => {
            put16(&mut flow.buf, l3 + 4, ip_len.saturating_sub(40));
            GSO_TCPV6
        }
    };
    if flow.psh {
        if let Some(flags) = flow.buf.get_mut(l4 + 13) {
            *flags |= TCP_FLAG_PSH;
        }
    }
    let csum_at = l4 + TCP_CSUM_OFFSET;
    put16(&mut flow.buf, csum_at, 0);
    let head = flow.head();
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
    put16(&mut flow.buf, csum_at, value);
    VirtioNetHdr {
        flags,
        gso_type,
        hdr_len: flow.payload_offset as u16,
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

    fn run(config: GroConfig, frames: &[Vec<u8>]) -> (Out, GroStats) {
        let mut gro = Coalescer::new(config).unwrap();
        let mut out: Out = Vec::new();
        let mut sink = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
        for f in frames {
            gro.push(f, &layout_of(f), &mut sink);
        }
        gro.flush_all(&mut sink);
        assert_eq!(gro.held_flows(), 0);
        (out, gro.stats())
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
            assert_eq!(hdr, single_hdr());
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
            let mut n = 0;
            let mut sink = |_: &VirtioNetHdr, _: &[u8]| n += 1;
            gro.push(&frame, &layout, &mut sink);
            gro.push(&frame, &layout, &mut sink);
            gro.flush_all(&mut sink);
            prop_assert_eq!(n, 2);
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
            let mut out: Out = Vec::new();
            let mut sink = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
            gro.push(&frame, &layout, &mut sink);
            gro.push(&frame[..at], &layout, &mut sink);
            gro.flush_all(&mut sink);
            prop_assert!(!out.is_empty());
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
        assert_eq!(out[2], (single_hdr(), segs[2].clone()));
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
        assert_eq!(out, vec![(single_hdr(), small), (single_hdr(), big)]);
    }

    #[test]
    fn shorter_segment_is_merged_last_and_flushes() {
        let (original, segs) = segments(&Spec::default(), 2500, 1000);
        let mut gro = Coalescer::new(config(GroChecksum::Complete)).unwrap();
        let mut out: Out = Vec::new();
        let mut sink = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
        for s in &segs {
            gro.push(s, &layout_of(s), &mut sink);
        }
        // Delivered without waiting for the end of the batch.
        assert_eq!(gro.held_flows(), 0);
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
        assert_eq!(out[0], (single_hdr(), segs[0].clone()));

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
            assert_eq!(out, vec![(single_hdr(), first), (single_hdr(), second)]);
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
            Coalescer::new(GroConfig {
                max_flows: 0,
                ..GroConfig::default()
            })
            .unwrap_err(),
            GroError::NoFlows
        );
        assert_eq!(
            Coalescer::new(GroConfig {
                max_ip_len: 65536,
                ..GroConfig::default()
            })
            .unwrap_err(),
            GroError::BadMaxIpLen { max_ip_len: 65536 }
        );
    }

    #[test]
    fn buffers_are_reused_across_batches() {
        let (_, segs) = segments(&Spec::default(), 40000, 1448);
        let mut gro = Coalescer::new(GroConfig::default()).unwrap();
        let mut ptrs = Vec::new();
        for _ in 0..3 {
            let mut sink = |_: &VirtioNetHdr, f: &[u8]| ptrs.push(f.as_ptr() as usize);
            for s in &segs {
                gro.push(s, &layout_of(s), &mut sink);
            }
            gro.flush_all(&mut sink);
        }
        assert_eq!(ptrs.len(), 3);
        assert!(ptrs.iter().all(|&p| p == ptrs[0]), "{ptrs:?}");
    }
}
