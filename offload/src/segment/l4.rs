//! TSO and USO: cut the payload into `size`-byte pieces, each with its own
//! copy of the headers.

use crate::checksum::{checksum, pseudo_header_ipv4, pseudo_header_ipv6, Checksum};
use crate::layout::{L3Kind, L4Kind};

use super::field::{
    get_array16, get_array4, get_u16, get_u32, get_u8, set_u16, set_u32, set_u8, window,
};
use super::{
    contiguous_run, copy_headers, emit, finish_l4, fits_u16, Offsets, PayloadSum, SegmentError,
    SegmentSink, SegmentSummary, Segmenter,
};

/// TCP flag bits in byte 13 of the TCP header.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The pseudo-header sum of a frame's addresses and protocol, without the
/// length (added per segment).
pub(crate) fn pseudo_header_base(
    frame: &[u8],
    offsets: &Offsets,
    protocol: u8,
) -> Result<Checksum, SegmentError> {
    Ok(match offsets.l3_kind {
        L3Kind::Ipv4 => pseudo_header_ipv4(
            get_array4(frame, offsets.l3 + 12)?,
            get_array4(frame, offsets.l3 + 16)?,
            protocol,
            0,
        ),
        L3Kind::Ipv6 => pseudo_header_ipv6(
            get_array16(frame, offsets.l3 + 8)?,
            get_array16(frame, offsets.l3 + 24)?,
            protocol,
            0,
        ),
    })
}

/// Recomputes the IPv4 header checksum in `headers`.
pub(crate) fn refresh_ipv4_checksum(
    headers: &mut [u8],
    offsets: &Offsets,
) -> Result<(), SegmentError> {
    set_u16(headers, offsets.l3 + 10, 0)?;
    let ip = headers
        .get(offsets.l3..offsets.l4)
        .ok_or(SegmentError::FieldOutOfBounds {
            offset: offsets.l3,
            width: offsets.l3_len(),
            len: headers.len(),
        })?;
    let value = checksum(ip);
    set_u16(headers, offsets.l3 + 10, value)
}

/// The IP fields that change from segment to segment.
#[derive(Debug, Clone, Copy)]
enum IpFields {
    /// Total length, identification and header checksum.
    V4 {
        /// The header's sum with those three fields zeroed.
        base: Checksum,
        first_id: u16,
        fixed_id: bool,
    },
    /// Payload length (extension headers included).
    V6,
}

/// The transport fields that change from segment to segment.
#[derive(Debug, Clone, Copy)]
enum TransportFields {
    /// Sequence number, flags and checksum.
    Tcp { first_seq: u32, flags: u8 },
    /// Length and checksum.
    Udp,
}

/// Everything about a frame's TSO/USO segments that is known before the
/// first one is written; [`write`](Self::write) patches one segment's copy
/// of the template. Building it checks every length and offset the writes
/// depend on, so the per-segment work is arithmetic and stores.
#[derive(Debug, Clone, Copy)]
struct SegmentFields {
    l3: usize,
    l4: usize,
    l3_len: usize,
    l4_header_len: usize,
    size: usize,
    count: usize,
    ip: IpFields,
    transport: TransportFields,
    /// The pseudo-header (addresses and protocol) plus the transport header
    /// with its changing fields zeroed.
    l4_base: Checksum,
}

impl SegmentFields {
    /// Payload length of segment `i` of a payload of `payload_len` bytes.
    #[inline(always)]
    fn payload_len(&self, i: usize, payload_len: usize) -> usize {
        if i + 1 == self.count {
            payload_len - i * self.size
        } else {
            self.size
        }
    }

    /// Writes segment `i`'s fields into `head`, a copy of the template whose
    /// changing fields are zero; `payload_sum` is the folded sum of its
    /// `payload_len` payload bytes.
    ///
    /// Every segment's lengths fit their fields (checked on the largest one
    /// when `self` was built), so the narrowing casts below are exact.
    #[inline(always)]
    fn write(
        &self,
        head: &mut [u8],
        i: usize,
        payload_len: usize,
        payload_sum: u16,
    ) -> Result<(), SegmentError> {
        let l4_total = self.l4_header_len + payload_len;
        let l3_total = self.l3_len + l4_total;
        match self.ip {
            IpFields::V4 {
                mut base,
                first_id,
                fixed_id,
            } => {
                let ip: &mut [u8; 12] = window(head, self.l3)?;
                let total = l3_total as u16;
                let id = if fixed_id {
                    first_id
                } else {
                    first_id.wrapping_add(i as u16)
                };
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&id.to_be_bytes());
                let checksum = base.add_u16(total).add_u16(id).finish();
                ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            }
            IpFields::V6 => {
                let ip: &mut [u8; 6] = window(head, self.l3)?;
                ip[4..6].copy_from_slice(&((l3_total - 40) as u16).to_be_bytes());
            }
        }
        let mut sum = self.l4_base;
        sum.add_u32(l4_total as u32).add_u16(payload_sum);
        match self.transport {
            TransportFields::Tcp { first_seq, flags } => {
                let tcp: &mut [u8; 18] = window(head, self.l4)?;
                let seq = first_seq.wrapping_add((i * self.size) as u32);
                let mut segment_flags = flags;
                if i + 1 != self.count {
                    segment_flags &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    segment_flags &= !TCP_CWR;
                }
                // The flags are the low byte of their 16-bit word.
                let checksum = sum.add_u32(seq).add_u16(u16::from(segment_flags)).finish();
                tcp[4..8].copy_from_slice(&seq.to_be_bytes());
                tcp[13] = segment_flags;
                tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
            }
            TransportFields::Udp => {
                let udp: &mut [u8; 8] = window(head, self.l4)?;
                let udp_len = l4_total as u16;
                let checksum = finish_l4(*sum.add_u16(udp_len), true);
                udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
                udp[6..8].copy_from_slice(&checksum.to_be_bytes());
            }
        }
        Ok(())
    }
}

/// Segments a TCP (TSO) or UDP (USO) frame into pieces of `size` payload bytes.
pub(super) fn segment<S: SegmentSink + ?Sized>(
    segmenter: &mut Segmenter,
    frame: &[u8],
    offsets: &Offsets,
    kind: L4Kind,
    size: usize,
    sink: &mut S,
) -> Result<SegmentSummary, SegmentError> {
    if size == 0 {
        return Err(SegmentError::SegmentSizeTooSmall { size, min: 1 });
    }
    let Segmenter {
        params, headers, ..
    } = segmenter;
    let params = *params;
    let header_len = offsets.payload;
    let l3_len = offsets.l3_len();
    let l4_header_len = offsets.l4_len();
    if kind == L4Kind::Udp && l4_header_len != 8 {
        return Err(SegmentError::LayoutMismatch {
            gso: "UDP_L4",
            expected: "an 8-byte UDP header",
            found: "a transport header of another length",
        });
    }
    let payload_len = frame.len() - header_len;
    let largest = size.min(payload_len);
    // The largest segment decides whether every length field can hold it.
    let largest_l4 = l4_header_len + largest;
    match offsets.l3_kind {
        L3Kind::Ipv4 => fits_u16("IPv4 total length", l3_len + largest_l4)?,
        L3Kind::Ipv6 => fits_u16("IPv6 payload length", l3_len - 40 + largest_l4)?,
    };
    if kind == L4Kind::Udp {
        fits_u16("UDP length", largest_l4)?;
    }

    headers.clear();
    headers.extend_from_slice(frame.get(..header_len).unwrap_or(&[]));

    // The fields that change per segment are zeroed in the template and
    // summed once; each segment then adds only its own values (RFC 1071:
    // the sum is independent of the order of the words).
    let ip = match offsets.l3_kind {
        L3Kind::Ipv4 => {
            let first_id = get_u16(frame, offsets.l3 + 4)?;
            for at in [offsets.l3 + 2, offsets.l3 + 4, offsets.l3 + 10] {
                set_u16(headers, at, 0)?;
            }
            let mut base = Checksum::new();
            base.add_bytes(headers.get(offsets.l3..offsets.l4).unwrap_or(&[]));
            IpFields::V4 {
                base,
                first_id,
                fixed_id: params.fixed_ipv4_id,
            }
        }
        L3Kind::Ipv6 => {
            set_u16(headers, offsets.l3 + 4, 0)?;
            IpFields::V6
        }
    };
    // TCP: sequence number, flags and checksum; UDP: length and checksum.
    let (protocol, transport) = match kind {
        L4Kind::Tcp => {
            let transport = TransportFields::Tcp {
                first_seq: get_u32(frame, offsets.l4 + 4)?,
                flags: get_u8(frame, offsets.l4 + 13)?,
            };
            set_u32(headers, offsets.l4 + 4, 0)?;
            set_u8(headers, offsets.l4 + 13, 0)?;
            set_u16(headers, offsets.l4 + 16, 0)?;
            (6u8, transport)
        }
        L4Kind::Udp => {
            set_u32(headers, offsets.l4 + 4, 0)?;
            (17u8, TransportFields::Udp)
        }
    };
    let mut l4_base = pseudo_header_base(frame, offsets, protocol)?;
    l4_base.add_bytes(headers.get(offsets.l4..header_len).unwrap_or(&[]));

    let fields = SegmentFields {
        l3: offsets.l3,
        l4: offsets.l4,
        l3_len,
        l4_header_len,
        size,
        count: payload_len.div_ceil(size).max(1),
        ip,
        transport,
        l4_base,
    };
    let payload = frame.get(header_len..).unwrap_or(&[]);
    let summary = SegmentSummary {
        segments: fields.count,
        bytes: fields.count * header_len + payload_len,
    };

    // A sink that takes the whole run gets it in one buffer, filled segment
    // after segment with nothing else in the loop.
    if let Some(frames) = contiguous_run(sink, header_len, payload_len, size)? {
        for ((i, segment), piece) in frames
            .chunks_mut(header_len + size)
            .enumerate()
            .zip(payload.chunks(size))
        {
            // `contiguous_run` checked the buffer's length, so every segment
            // holds its headers and exactly `piece.len()` payload bytes.
            let (head, body) = segment.split_at_mut(header_len);
            copy_headers(head, headers);
            let payload_sum = Checksum::new().copy_and_add(body, piece).sum();
            fields.write(head, i, piece.len(), payload_sum)?;
        }
        return Ok(summary);
    }

    for i in 0..fields.count {
        let start = header_len + i * size;
        let len = fields.payload_len(i, payload_len);
        emit(
            sink,
            frame,
            headers,
            start..start + len,
            PayloadSum::Compute,
            |head, payload_sum| fields.write(head, i, len, payload_sum),
        )?;
    }
    Ok(summary)
}
