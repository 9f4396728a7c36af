//! UFO: checksum a UDP datagram whole, then cut it into IP fragments.

use crate::layout::L3Kind;

use super::field::{get_u16, get_u8, set_u16, set_u32, set_u8};
use super::l4::{pseudo_header_base, refresh_ipv4_checksum};
use super::{
    emit, finish_l4, fits_u16, Offsets, PayloadSum, SegmentError, SegmentParams, SegmentSink,
    SegmentSummary,
};

/// IPv4 flags/fragment-offset field: more fragments.
const IPV4_MF: u16 = 0x2000;
/// IPv6 next-header values met while walking the extension chain.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const UDP: u8 = 17;
/// Length of the IPv6 fragment header.
const FRAGMENT_HEADER_LEN: usize = 8;

/// Where an IPv6 fragment header goes: after the unfragmentable part.
struct Insertion {
    /// Offset in the frame where the fragment header is inserted.
    at: usize,
    /// Offset of the next-header byte that must now say "fragment".
    next_header_byte: usize,
}

/// Walks the IPv6 extension chain (already validated by the parser) to find
/// the end of the unfragmentable part: RFC 8200 section 4.5, the IPv6 header
/// plus the hop-by-hop options and every header up to the routing header.
fn ipv6_insertion(frame: &[u8], offsets: &Offsets) -> Result<Insertion, SegmentError> {
    let mut next_header_byte = offsets.l3 + 6;
    let mut pos = offsets.l3 + 40;
    let mut insertion = Insertion {
        at: pos,
        next_header_byte,
    };
    while pos < offsets.l4 {
        let kind = get_u8(frame, next_header_byte)?;
        let len_field = usize::from(get_u8(frame, pos + 1)?);
        let len = match kind {
            IPV6_FRAGMENT => return Err(SegmentError::AlreadyFragmented),
            IPV6_AUTH => (len_field + 2) * 4,
            _ => (len_field + 1) * 8,
        };
        if kind == IPV6_HOP_BY_HOP || kind == IPV6_ROUTING {
            insertion = Insertion {
                at: pos + len,
                next_header_byte: pos,
            };
        }
        next_header_byte = pos;
        pos += len;
    }
    if pos != offsets.l4 || get_u8(frame, next_header_byte)? != UDP {
        return Err(SegmentError::Ipv6ChainInconsistent {
            end: pos,
            l4_offset: offsets.l4,
        });
    }
    Ok(insertion)
}

/// Replaces IPv4 options whose "copied" bit is clear with no-operation
/// options (RFC 791: only copied options go into later fragments; the header
/// keeps its length, as Linux does).
fn strip_uncopied_ipv4_options(headers: &mut [u8], offsets: &Offsets) {
    let mut pos = offsets.l3 + 20;
    while pos < offsets.l4 {
        let Some(&kind) = headers.get(pos) else {
            return;
        };
        match kind {
            0 => return,
            1 => pos += 1,
            _ => {
                let len = headers.get(pos + 1).map_or(0, |&l| usize::from(l));
                if len < 2 {
                    return;
                }
                let end = (pos + len).min(offsets.l4);
                if kind & 0x80 == 0 {
                    if let Some(option) = headers.get_mut(pos..end) {
                        option.fill(1);
                    }
                }
                pos += len;
            }
        }
    }
}

/// Fragments the UDP datagram of `frame` into IP fragments of at most `size`
/// bytes of IP payload (rounded down to a multiple of 8).
pub(super) fn fragment<S: SegmentSink + ?Sized>(
    headers: &mut Vec<u8>,
    template: &mut Vec<u8>,
    params: SegmentParams,
    frame: &[u8],
    offsets: &Offsets,
    size: usize,
    sink: &mut S,
) -> Result<SegmentSummary, SegmentError> {
    let l4 = offsets.l4;
    let udp_end = l4 + 8;
    if offsets.l4_len() != 8 {
        return Err(SegmentError::LayoutMismatch {
            gso: "UDP",
            expected: "an 8-byte UDP header",
            found: "a transport header of another length",
        });
    }
    let datagram_len = frame.len() - l4;
    let udp_len = fits_u16("UDP length", datagram_len)?;

    // The datagram's checksum, over all of it, before it is cut.
    let mut udp_header = [0u8; 8];
    udp_header.copy_from_slice(frame.get(l4..udp_end).unwrap_or(&[0; 8]));
    set_u16(&mut udp_header, 4, udp_len)?;
    set_u16(&mut udp_header, 6, 0)?;
    let mut sum = pseudo_header_base(frame, offsets, UDP)?;
    sum.add_u32(u32::from(udp_len))
        .add_bytes(&udp_header)
        .add_bytes(frame.get(udp_end..).unwrap_or(&[]));
    set_u16(&mut udp_header, 6, finish_l4(sum, true))?;

    let (unfragmentable_end, insertion) = match offsets.l3_kind {
        L3Kind::Ipv4 => (l4, None),
        L3Kind::Ipv6 => {
            let insertion = ipv6_insertion(frame, offsets)?;
            (insertion.at, Some(insertion))
        }
    };
    let fragmentable = frame.len() - unfragmentable_end;

    headers.clear();
    headers.extend_from_slice(frame.get(..l4).unwrap_or(&[]));
    headers.extend_from_slice(&udp_header);

    if fragmentable <= size {
        // Fits in one packet: no fragmentation, just the checksummed datagram.
        let l3_total = offsets.l3_len() + datagram_len;
        match offsets.l3_kind {
            L3Kind::Ipv4 => {
                set_u16(
                    headers,
                    offsets.l3 + 2,
                    fits_u16("IPv4 total length", l3_total)?,
                )?;
                refresh_ipv4_checksum(headers, offsets)?;
            }
            L3Kind::Ipv6 => set_u16(
                headers,
                offsets.l3 + 4,
                fits_u16("IPv6 payload length", l3_total - 40)?,
            )?,
        }
        let bytes = emit(
            sink,
            frame,
            headers,
            udp_end..frame.len(),
            PayloadSum::Unused,
            |_, _| Ok(()),
        )?;
        return Ok(SegmentSummary { segments: 1, bytes });
    }

    let fragment_size = size & !7;
    if fragment_size < 8 {
        return Err(SegmentError::SegmentSizeTooSmall { size, min: 8 });
    }
    // The first fragment carries every header up to and including UDP.
    let first_headers = udp_end - unfragmentable_end;
    if fragment_size < first_headers {
        return Err(SegmentError::FirstFragmentTooSmall {
            size: fragment_size,
            headers: first_headers,
        });
    }

    // Headers of every fragment but the first: the unfragmentable part, plus
    // a fragment header for IPv6.
    template.clear();
    template.extend_from_slice(frame.get(..unfragmentable_end).unwrap_or(&[]));
    let frag_header_at = unfragmentable_end;
    let ip_id = match &insertion {
        None => get_u16(frame, offsets.l3 + 4)?,
        Some(insertion) => {
            let next = get_u8(frame, insertion.next_header_byte)?;
            set_u8(template, insertion.next_header_byte, IPV6_FRAGMENT)?;
            template.extend_from_slice(&[next, 0, 0, 0]);
            template.extend_from_slice(&params.ipv6_fragment_id.to_be_bytes());
            0
        }
    };
    // The first fragment: the same, then the rest of the chain and the
    // checksummed UDP header.
    headers.clear();
    headers.extend_from_slice(template);
    headers.extend_from_slice(frame.get(unfragmentable_end..l4).unwrap_or(&[]));
    headers.extend_from_slice(&udp_header);
    if insertion.is_none() {
        strip_uncopied_ipv4_options(template, offsets);
    }

    let count = fragmentable.div_ceil(fragment_size);
    let mut bytes = 0;
    for i in 0..count {
        let offset = i * fragment_size;
        let len = fragment_size.min(fragmentable - offset);
        let more = i + 1 != count;
        let (hdr, payload) = if i == 0 {
            (&mut *headers, udp_end..unfragmentable_end + len)
        } else {
            let start = unfragmentable_end + offset;
            (&mut *template, start..start + len)
        };
        let offset_units = fits_u16("fragment offset", offset / 8)?;
        match offsets.l3_kind {
            L3Kind::Ipv4 => {
                let l3_total = offsets.l3_len() + len;
                set_u16(
                    hdr,
                    offsets.l3 + 2,
                    fits_u16("IPv4 total length", l3_total)?,
                )?;
                set_u16(hdr, offsets.l3 + 4, ip_id)?;
                let flags = if more { IPV4_MF } else { 0 };
                set_u16(hdr, offsets.l3 + 6, offset_units | flags)?;
                refresh_ipv4_checksum(hdr, offsets)?;
            }
            L3Kind::Ipv6 => {
                let payload_len = unfragmentable_end - offsets.l3 - 40 + FRAGMENT_HEADER_LEN + len;
                set_u16(
                    hdr,
                    offsets.l3 + 4,
                    fits_u16("IPv6 payload length", payload_len)?,
                )?;
                set_u16(
                    hdr,
                    frag_header_at + 2,
                    (offset_units << 3) | u16::from(more),
                )?;
                set_u32(hdr, frag_header_at + 4, params.ipv6_fragment_id)?;
            }
        }
        bytes += emit(sink, frame, hdr, payload, PayloadSum::Unused, |_, _| Ok(()))?;
    }
    Ok(SegmentSummary {
        segments: count,
        bytes,
    })
}
