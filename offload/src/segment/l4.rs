//! TSO and USO: cut the payload into `size`-byte pieces, each with its own
//! copy of the headers.

use crate::checksum::{checksum, pseudo_header_ipv4, pseudo_header_ipv6, Checksum};
use crate::layout::{L3Kind, L4Kind};

use super::field::{get_array16, get_array4, get_u16, get_u32, get_u8, set_u16, set_u32};
use super::{
    fits_u16, ChecksumFixup, Offsets, Output, SegmentError, SegmentSink, SegmentSummary, Segmenter,
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

/// Segments a TCP (TSO) or UDP (USO) frame into pieces of `size` payload bytes.
pub(super) fn segment<S: SegmentSink + ?Sized>(
    segmenter: &mut Segmenter,
    frame: &[u8],
    offsets: &Offsets,
    kind: L4Kind,
    size: usize,
    out: &mut Output<'_, S>,
) -> Result<SegmentSummary, SegmentError> {
    if size == 0 {
        return Err(SegmentError::SegmentSizeTooSmall { size, min: 1 });
    }
    let Segmenter {
        params,
        headers,
        payload_sums,
        ..
    } = segmenter;
    let params = *params;
    let (protocol, csum_at) = match kind {
        L4Kind::Tcp => (6u8, offsets.l4 + 16),
        L4Kind::Udp => (17u8, offsets.l4 + 6),
    };
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

    let base = pseudo_header_base(frame, offsets, protocol)?;
    let first_id = match offsets.l3_kind {
        L3Kind::Ipv4 => get_u16(frame, offsets.l3 + 4)?,
        L3Kind::Ipv6 => 0,
    };
    let (first_seq, flags) = match kind {
        L4Kind::Tcp => (
            get_u32(frame, offsets.l4 + 4)?,
            get_u8(frame, offsets.l4 + 13)?,
        ),
        L4Kind::Udp => (0, 0),
    };

    headers.clear();
    headers.extend_from_slice(frame.get(..header_len).unwrap_or(&[]));

    // The fields that change per segment are zeroed in the template and
    // summed once; each segment then adds only its own values (RFC 1071:
    // the sum is independent of the order of the words).
    let ipv4_base = match offsets.l3_kind {
        L3Kind::Ipv4 => {
            for at in [offsets.l3 + 2, offsets.l3 + 4, offsets.l3 + 10] {
                set_u16(headers, at, 0)?;
            }
            let mut sum = Checksum::new();
            sum.add_bytes(headers.get(offsets.l3..offsets.l4).unwrap_or(&[]));
            Some(sum)
        }
        L3Kind::Ipv6 => None,
    };
    // TCP: sequence number and the data-offset/flags word; UDP: the length.
    let (changing, word_at) = match kind {
        L4Kind::Tcp => (
            [offsets.l4 + 4, offsets.l4 + 6, offsets.l4 + 12],
            offsets.l4 + 12,
        ),
        L4Kind::Udp => ([offsets.l4 + 4; 3], offsets.l4 + 4),
    };
    let data_offset = match kind {
        L4Kind::Tcp => get_u8(frame, offsets.l4 + 12)?,
        L4Kind::Udp => 0,
    };
    for at in changing.into_iter().chain([csum_at]) {
        set_u16(headers, at, 0)?;
    }
    let mut l4_base = base;
    l4_base.add_bytes(headers.get(offsets.l4..header_len).unwrap_or(&[]));

    let count = payload_len.div_ceil(size).max(1);
    // Zero-copy mode reads the payload only to sum it: one tight pass over
    // the segments' payloads, kept apart from the header writes, runs the
    // summing kernel back to back. Copy mode sums while it copies instead.
    payload_sums.clear();
    if out.is_zero_copy() {
        let payload = frame.get(header_len..).unwrap_or(&[]);
        payload_sums.extend(
            payload
                .chunks(size)
                .map(|chunk| Checksum::new().add_bytes(chunk).sum()),
        );
    }
    let mut bytes = 0;
    for i in 0..count {
        let start = header_len + i * size;
        let end = (start + size).min(frame.len());
        let l4_total = l4_header_len + (end - start);
        let l3_total = l3_len + l4_total;
        // This segment's field values and their sums; `patch` writes them
        // into the copy of the template.
        let (ip_words, ip_count) = match ipv4_base {
            Some(mut ip_sum) => {
                let total = fits_u16("IPv4 total length", l3_total)?;
                let id = if params.fixed_ipv4_id {
                    first_id
                } else {
                    first_id.wrapping_add(i as u16)
                };
                ip_sum.add_u16(total).add_u16(id);
                ([total, id, ip_sum.finish()], 3)
            }
            None => ([fits_u16("IPv6 payload length", l3_total - 40)?, 0, 0], 1),
        };
        let mut sum = l4_base;
        sum.add_u32(l4_total as u32);
        let payload_sum = payload_sums.get(i).copied();
        if let Some(payload_sum) = payload_sum {
            sum.add_u16(payload_sum);
        }
        let (seq, word) = match kind {
            L4Kind::Tcp => {
                let seq = first_seq.wrapping_add((i * size) as u32);
                let mut segment_flags = flags;
                if i + 1 != count {
                    segment_flags &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    segment_flags &= !TCP_CWR;
                }
                let word = u16::from_be_bytes([data_offset, segment_flags]);
                sum.add_u32(seq).add_u16(word);
                (Some(seq), word)
            }
            L4Kind::Udp => {
                let udp_len = fits_u16("UDP length", l4_total)?;
                sum.add_u16(udp_len);
                (None, udp_len)
            }
        };
        let fixup = ChecksumFixup {
            at: csum_at,
            sum,
            zero_as_ffff: kind == L4Kind::Udp,
            payload_summed: payload_sum.is_some(),
        };
        let l3 = offsets.l3;
        let l4 = offsets.l4;
        let patch = |head: &mut [u8]| {
            if ip_count == 3 {
                set_u16(head, l3 + 2, ip_words[0])?;
                set_u16(head, l3 + 4, ip_words[1])?;
                set_u16(head, l3 + 10, ip_words[2])?;
            } else {
                set_u16(head, l3 + 4, ip_words[0])?;
            }
            if let Some(seq) = seq {
                set_u32(head, l4 + 4, seq)?;
            }
            set_u16(head, word_at, word)
        };
        bytes += out.emit(frame, headers, patch, start..end, Some(fixup))?;
    }
    Ok(SegmentSummary {
        segments: count,
        bytes,
    })
}
