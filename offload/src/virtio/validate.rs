//! Validation: a host-owned copy of the header checked against its frame,
//! by the reject list on [`VirtioNetHdr::validate`].

use super::error::HdrError;
use super::header::{VirtioNetHdr, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::plan::{GsoKind, OffloadPlan, PartialChecksum};
use crate::wire::ethernet::L2Header;
use crate::wire::{tcp, udp, ParseError};

/// Largest IP packet a GSO frame may carry; the frame may add its link-layer
/// headers on top (reject rule 10).
pub const MAX_L3_LEN: usize = 65535;
/// Most datagrams one `GSO_UDP_L4` frame may be cut into (Linux
/// `UDP_MAX_SEGMENTS`, reject rule 9).
pub const MAX_UDP_L4_SEGMENTS: usize = 128;
/// Smallest `gso_size` accepted for `GSO_TCPV4` and `GSO_TCPV6`: Linux's
/// `TCP_MIN_MSS` (88, in `include/net/tcp.h`), below which no Linux sender
/// goes. Without it `gso_size` 1 would cut one 20 kB frame into 20,000
/// segments (reject rule 2).
pub const MIN_TCP_MSS: u16 = 88;

impl VirtioNetHdr {
    /// Checks this header against the frame it came with, applying every
    /// rule of the reject list, and says what to do with the frame.
    ///
    /// Takes `&self`: a copy in host memory (see [`VirtioNetHdr::parse`]),
    /// never the guest's bytes, so the header cannot change between this
    /// check and its use. `frame` must likewise be host memory. `hdr_len` is
    /// ignored: every offset comes from parsing the frame.
    ///
    /// The reject list (each rule a typed [`HdrError`], counted under its
    /// [`DropReason`](super::DropReason)):
    /// 1. `gso_type`, ECN bit masked, not NONE, TCPV4, TCPV6, UDP or UDP_L4;
    ///    NONE with the ECN bit.
    /// 2. With GSO, `gso_size` 0 or 0xFFFF; with TCPV4/TCPV6, `gso_size`
    ///    below [`MIN_TCP_MSS`] (88, Linux's `TCP_MIN_MSS`).
    /// 3. With `NEEDS_CSUM`, `csum_start` beyond the frame, or the 2-byte
    ///    field at `csum_start + csum_offset` not within it.
    /// 4. A partial TCP checksum with `csum_offset` other than 16, a partial
    ///    UDP checksum with `csum_offset` other than 6; UDP_L4 without
    ///    `NEEDS_CSUM`.
    /// 5. The frame's IP version not the one `gso_type` names (or not IP at
    ///    all), or its transport not TCP for TCPV4/TCPV6, UDP for
    ///    UDP/UDP_L4.
    /// 6. With GSO and `NEEDS_CSUM`, `csum_start` not the parsed transport
    ///    header offset.
    /// 7. `csum_start` inside the minimal IP header (20 bytes for IPv4, 40
    ///    for IPv6).
    /// 8. Truncated or malformed headers: Ethernet, VLAN tags, IPv4 IHL
    ///    below 5 or beyond the frame, IPv6 extension chain beyond the frame,
    ///    TCP data offset below 5 or beyond the frame.
    /// 9. UDP_L4 with a payload of more than 128 segments
    ///    ([`MAX_UDP_L4_SEGMENTS`]); the ECN bit with UDP or UDP_L4.
    /// 10. A frame longer than 65535 bytes plus its link-layer headers; GSO
    ///     on an IP fragment (IPv4 MF or fragment offset, IPv6 fragment
    ///     header).
    /// 11. (Not an error: a GSO frame whose payload fits one segment, see
    ///     below.)
    /// 12. TCPV4/TCPV6 with SYN or RST in the TCP header, in any
    ///     combination with other flags: every segment would carry it. FIN
    ///     and PSH are accepted (the segmenter puts them on the last segment
    ///     only), as is CWR (first segment only).
    ///
    /// What is accepted:
    /// - No GSO, no `NEEDS_CSUM`: nothing to do. `layout` is the parsed
    ///   layout for a well-formed IP frame, else `None` (non-IP, or headers
    ///   the parser rejects: the frame is passed on as the guest sent it).
    /// - No GSO with `NEEDS_CSUM`: `partial_checksum` from the header, bounds
    ///   checked. An IP frame must parse (`layout` is `Some`); a non-IP
    ///   frame gets `layout: None`.
    /// - GSO: the frame must parse as the IP version and transport that
    ///   `gso_type` names. A GSO frame whose payload fits in one segment is
    ///   valid (rule 11) and keeps its [`GsoKind`], so the segmenter emits
    ///   it as one segment with lengths and checksums recomputed.
    ///   `csum_start` and `csum_offset` are only checked with `NEEDS_CSUM`
    ///   (without it they carry no meaning and the segmenter computes full
    ///   checksums).
    pub fn validate(&self, frame: &[u8]) -> Result<OffloadPlan, HdrError> {
        self.validate_after_l2(frame, frame.len(), L2Header::parse(frame))
    }

    /// [`VirtioNetHdr::validate`] for a frame of `len` bytes of which
    /// `headers` holds the first ones, every header among them: a frame
    /// whose payload is still lent ([`crate::tail`]). The rules that look
    /// at the frame's length use `len`; those that read bytes read
    /// `headers`, so a header cut short in `headers` is refused as in a
    /// frame that short. `len` below `headers.len()` counts as
    /// `headers.len()`.
    pub fn validate_headers(&self, headers: &[u8], len: usize) -> Result<OffloadPlan, HdrError> {
        self.validate_after_l2(headers, len.max(headers.len()), L2Header::parse(headers))
    }

    /// [`VirtioNetHdr::validate`] for a caller that already parsed the
    /// frame's link-layer header (`l2`, the result of [`L2Header::parse`] on
    /// `frame`), so the VLAN tags are walked once. `frame` holds the first
    /// bytes of a frame `len` bytes long (all of them unless it has a tail).
    pub(crate) fn validate_after_l2(
        &self,
        frame: &[u8],
        len: usize,
        l2: Result<L2Header, ParseError>,
    ) -> Result<OffloadPlan, HdrError> {
        let ecn = self.gso_type & GSO_ECN != 0;
        let gso = match self.gso_type & !GSO_ECN {
            GSO_NONE if !ecn => None,
            t @ (GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4) => Some(t),
            _ => {
                return Err(HdrError::UnknownGsoType {
                    gso_type: self.gso_type,
                })
            }
        };
        let needs_csum = self.needs_csum();

        if let Some(t) = gso {
            let min = match t {
                GSO_TCPV4 | GSO_TCPV6 => MIN_TCP_MSS,
                _ => 1,
            };
            if self.gso_size < min || self.gso_size == 0xffff {
                return Err(HdrError::BadGsoSize {
                    gso_type: self.gso_type,
                    gso_size: self.gso_size,
                    min,
                });
            }
            if ecn && (t == GSO_UDP || t == GSO_UDP_L4) {
                return Err(HdrError::EcnWithUdp {
                    gso_type: self.gso_type,
                });
            }
            if t == GSO_UDP_L4 && !needs_csum {
                return Err(HdrError::UdpL4WithoutCsum { flags: self.flags });
            }
        }

        let partial = if needs_csum {
            Some(self.partial_checksum(len)?)
        } else {
            None
        };
        // Rule 4. With GSO, rule 6 pins csum_start to the transport header,
        // so the field must be that header's checksum; this holds for UFO
        // too (Linux leaves UFO unchecked, but its guests always send 6).
        if let (Some(p), Some(t)) = (partial, gso) {
            let (l4, expected) = match t {
                GSO_TCPV4 | GSO_TCPV6 => (L4Kind::Tcp, tcp::CHECKSUM_OFFSET),
                _ => (L4Kind::Udp, udp::CHECKSUM_OFFSET),
            };
            if p.offset != expected {
                return Err(HdrError::BadCsumOffset {
                    l4,
                    expected: expected as u16,
                    found: self.csum_offset,
                });
            }
        }

        let work = gso.is_some() || needs_csum;
        let l2 = match l2 {
            Ok(l2) => l2,
            Err(e) if work => return Err(e.into()),
            Err(_) => return Ok(Self::plan(None, GsoKind::None, None)),
        };
        let max_len = MAX_L3_LEN + l2.l3_offset;
        if len > max_len {
            return Err(HdrError::FrameTooLong { len, max_len });
        }

        let (layout, protocol) = match FrameLayout::parse_after_l2(frame, &l2) {
            Ok(parsed) => parsed,
            Err(ParseError::NotIp { ethertype, .. }) => {
                if gso.is_some() {
                    return Err(HdrError::L3Mismatch {
                        gso_type: self.gso_type,
                        ethertype,
                    });
                }
                return Ok(Self::plan(None, GsoKind::None, partial));
            }
            Err(e) if work => return Err(e.into()),
            Err(_) => return Ok(Self::plan(None, GsoKind::None, None)),
        };

        if let Some(p) = partial {
            let min_l3_len = match layout.l3 {
                L3Kind::Ipv4 => crate::wire::ipv4::MIN_HEADER_LEN,
                L3Kind::Ipv6 => crate::wire::ipv6::HEADER_LEN,
            };
            if p.start < layout.l3_offset + min_l3_len {
                return Err(HdrError::TransportOffsetTooSmall {
                    csum_start: self.csum_start,
                    l3_offset: layout.l3_offset,
                    min_l3_len,
                });
            }
        }

        let Some(t) = gso else {
            // A partial checksum that starts at the parsed TCP or UDP header
            // must end at that header's checksum field.
            if let (Some(p), Some(l4)) = (partial, layout.l4) {
                let expected = match l4 {
                    L4Kind::Tcp => tcp::CHECKSUM_OFFSET,
                    L4Kind::Udp => udp::CHECKSUM_OFFSET,
                };
                if p.start == layout.l4_offset && p.offset != expected {
                    return Err(HdrError::BadCsumOffset {
                        l4,
                        expected: expected as u16,
                        found: self.csum_offset,
                    });
                }
            }
            return Ok(Self::plan(Some(layout), GsoKind::None, partial));
        };

        match (t, layout.l3) {
            (GSO_TCPV4, L3Kind::Ipv6) | (GSO_TCPV6, L3Kind::Ipv4) => {
                return Err(HdrError::L3Mismatch {
                    gso_type: self.gso_type,
                    ethertype: match layout.l3 {
                        L3Kind::Ipv4 => crate::wire::ethertype::IPV4,
                        L3Kind::Ipv6 => crate::wire::ethertype::IPV6,
                    },
                })
            }
            _ => {}
        }
        if layout.is_fragment {
            return Err(HdrError::FragmentWithGso {
                gso_type: self.gso_type,
                l3: layout.l3,
            });
        }
        let expected_l4 = match t {
            GSO_TCPV4 | GSO_TCPV6 => L4Kind::Tcp,
            _ => L4Kind::Udp,
        };
        if layout.l4 != Some(expected_l4) {
            return Err(HdrError::L4Mismatch {
                gso_type: self.gso_type,
                expected: expected_l4,
                protocol,
            });
        }
        if let Some(p) = partial {
            if p.start != layout.l4_offset {
                return Err(HdrError::CsumStartMismatch {
                    csum_start: self.csum_start,
                    l4_offset: layout.l4_offset,
                });
            }
        }
        let size = self.gso_size;
        let kind = match t {
            GSO_TCPV4 | GSO_TCPV6 => {
                let tcp_flags =
                    tcp::TcpSegment::new_checked(frame.get(layout.l4_offset..).unwrap_or(&[]))
                        .map_err(ParseError::from)?
                        .flags();
                if tcp_flags & (tcp::flags::SYN | tcp::flags::RST) != 0 {
                    return Err(HdrError::SynOrRstWithGso {
                        gso_type: self.gso_type,
                        tcp_flags,
                    });
                }
                GsoKind::Tcp { mss: size, ecn }
            }
            GSO_UDP_L4 => {
                let payload_len = len - layout.payload_offset;
                if payload_len > usize::from(size) * MAX_UDP_L4_SEGMENTS {
                    return Err(HdrError::TooManySegments {
                        payload_len,
                        gso_size: size,
                        max_segments: MAX_UDP_L4_SEGMENTS,
                    });
                }
                GsoKind::UdpL4 { size }
            }
            _ => GsoKind::Ufo { size },
        };
        Ok(Self::plan(Some(layout), kind, partial))
    }

    /// Rule 3: `csum_start` and the 2-byte field at `csum_start +
    /// csum_offset` must lie within the frame.
    fn partial_checksum(&self, frame_len: usize) -> Result<PartialChecksum, HdrError> {
        let start = usize::from(self.csum_start);
        let offset = usize::from(self.csum_offset);
        if start > frame_len {
            return Err(HdrError::CsumStartBeyondFrame {
                csum_start: self.csum_start,
                frame_len,
            });
        }
        if start + offset + 2 > frame_len {
            return Err(HdrError::CsumFieldBeyondFrame {
                csum_start: self.csum_start,
                csum_offset: self.csum_offset,
                frame_len,
            });
        }
        Ok(PartialChecksum { start, offset })
    }

    fn plan(
        layout: Option<FrameLayout>,
        gso: GsoKind,
        partial_checksum: Option<PartialChecksum>,
    ) -> OffloadPlan {
        OffloadPlan::new(layout, gso, partial_checksum)
    }
}
