//! `vswitch segment --mtu N IN.pcap OUT.pcap`: re-segment a capture as the
//! wire would carry it.
//!
//! Captures taken on a host with GSO show oversized TCP frames, often with
//! partial checksums and zero or stale IP lengths. This command writes what
//! the peer saw: every TCP frame whose IP length exceeds the MTU is cut with
//! MSS = MTU minus the IP and TCP headers (options included); every other IP
//! frame keeps its size; every IPv4 header, TCP and UDP checksum in the output
//! is recomputed from the bytes; frames that are not IP pass untouched.
//!
//! The work is done by the offload engine: [`FrameLayout::parse`] finds the
//! headers and [`Segmenter`] cuts and checksums.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, PcapError};
use vswitch_offload::checksum::checksum;
use vswitch_offload::segment::{SegmentList, SegmentParams, Segmenter};
use vswitch_offload::{FrameLayout, GsoKind, L3Kind, L4Kind};

/// The usage line of the command.
pub const USAGE: &str = "usage: vswitch segment --mtu N IN.pcap OUT.pcap";

/// The smallest MTU accepted: the IPv4 minimum (RFC 791).
pub const MIN_MTU: u16 = 68;

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum PcapSegmentError {
    /// The command line is wrong.
    #[error("{message}\n{USAGE}")]
    Usage {
        /// What was wrong.
        message: String,
    },
    /// A file could not be opened or created.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The input is not a readable pcap capture.
    #[error("cannot read the capture: expected a pcap file, {}", describe(source))]
    Read {
        /// What the pcap reader reported.
        source: PcapError,
    },
    /// The capture's link type is not Ethernet.
    #[error("expected an Ethernet capture (link type 1), found link type {datalink}")]
    NotEthernet {
        /// The capture's link type.
        datalink: String,
    },
    /// The output could not be written.
    #[error("cannot write the output capture: {}", describe(source))]
    Write {
        /// What the pcap writer reported.
        source: PcapError,
    },
}

/// A pcap error with the system error inside it, if any.
fn describe(err: &PcapError) -> String {
    match err {
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends in the middle of a header or packet".to_string()
        }
        PcapError::IoError(io) => format!("I/O error: {io}"),
        other => other.to_string(),
    }
}

/// What the command did, frame by frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Frames read.
    pub frames_in: u64,
    /// Frames written.
    pub frames_out: u64,
    /// TCP frames larger than the MTU that were cut.
    pub cut: u64,
    /// Segments those frames were cut into.
    pub segments: u64,
    /// IP frames that kept their size, checksums recomputed.
    pub fixed: u64,
    /// Frames that are not IP, passed untouched.
    pub not_ip: u64,
    /// IP frames passed untouched: malformed, truncated by the capture's
    /// snap length, or headers alone larger than the MTU.
    pub untouched: u64,
}

impl fmt::Display for SegmentStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {} frames, wrote {}: {} TCP frames cut into {} segments, {} frames with checksums fixed, {} non-IP and {} unfixable frames untouched",
            self.frames_in,
            self.frames_out,
            self.cut,
            self.segments,
            self.fixed,
            self.not_ip,
            self.untouched
        )
    }
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The egress MTU (largest IP packet).
    pub mtu: u16,
    /// Input capture.
    pub input: String,
    /// Output capture.
    pub output: String,
}

fn usage(message: impl Into<String>) -> PcapSegmentError {
    PcapSegmentError::Usage {
        message: message.into(),
    }
}

/// Parses the arguments after `segment`.
pub fn parse_args(args: &[String]) -> Result<Args, PcapSegmentError> {
    let mut mtu = None;
    let mut paths = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--mtu" {
            Some(
                iter.next()
                    .ok_or_else(|| usage("--mtu needs a value"))?
                    .as_str(),
            )
        } else {
            arg.strip_prefix("--mtu=")
        };
        match value {
            Some(value) => {
                let parsed: u16 = value.parse().map_err(|_| {
                    usage(format!(
                        "--mtu expects a number up to 65535, found '{value}'"
                    ))
                })?;
                if parsed < MIN_MTU {
                    return Err(usage(format!(
                        "--mtu must be at least {MIN_MTU}, found {parsed}"
                    )));
                }
                mtu = Some(parsed);
            }
            None if arg.starts_with("--") => {
                return Err(usage(format!("unknown option '{arg}'")));
            }
            None => paths.push(arg.clone()),
        }
    }
    let mtu = mtu.ok_or_else(|| usage("--mtu N is required"))?;
    match <[String; 2]>::try_from(paths) {
        Ok([input, output]) => Ok(Args { mtu, input, output }),
        Err(paths) => Err(usage(format!(
            "expected an input and an output capture, found {} paths",
            paths.len()
        ))),
    }
}

/// Runs the command with the arguments after `segment`, printing a summary.
pub fn main(args: &[String]) -> Result<SegmentStats, PcapSegmentError> {
    segment_files(&parse_args(args)?)
}

/// Re-segments the capture `args.input` into `args.output`.
pub fn segment_files(args: &Args) -> Result<SegmentStats, PcapSegmentError> {
    let input = File::open(&args.input).map_err(|source| PcapSegmentError::Open {
        path: args.input.clone(),
        source,
    })?;
    let output = File::create(&args.output).map_err(|source| PcapSegmentError::Open {
        path: args.output.clone(),
        source,
    })?;
    let mut output = BufWriter::new(output);
    let stats = segment_capture(BufReader::new(input), &mut output, args.mtu)?;
    output.flush().map_err(|source| PcapSegmentError::Write {
        source: PcapError::IoError(source),
    })?;
    Ok(stats)
}

/// Reads a pcap capture from `input`, re-segments it for `mtu` and writes
/// the result to `output` (same header: link type, resolution, snap length).
pub fn segment_capture<R: Read, W: Write>(
    input: R,
    output: W,
    mtu: u16,
) -> Result<SegmentStats, PcapSegmentError> {
    let mut reader = PcapReader::new(input).map_err(|source| PcapSegmentError::Read { source })?;
    let header = reader.header();
    if header.datalink != DataLink::ETHERNET {
        return Err(PcapSegmentError::NotEthernet {
            datalink: format!("{} ({:?})", u32::from(header.datalink), header.datalink),
        });
    }
    let mut writer = PcapWriter::with_header(output, header)
        .map_err(|source| PcapSegmentError::Write { source })?;
    let mut resegmenter = Resegmenter::new(mtu);
    let mut stats = SegmentStats::default();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|source| PcapSegmentError::Read { source })?;
        stats.frames_in += 1;
        let truncated = packet.data.len() < packet.orig_len as usize;
        let outcome = resegmenter.frame(&packet.data, truncated);
        let mut write = |data: &[u8]| {
            let orig_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            writer
                .write_packet(&PcapPacket::new(packet.timestamp, orig_len, data))
                .map_err(|source| PcapSegmentError::Write { source })
        };
        match outcome {
            Outcome::NotIp | Outcome::Untouched => {
                // Keep the capture's own lengths for frames left as they were.
                writer
                    .write_packet(&PcapPacket::new(
                        packet.timestamp,
                        packet.orig_len,
                        &packet.data,
                    ))
                    .map_err(|source| PcapSegmentError::Write { source })?;
                stats.frames_out += 1;
                if outcome == Outcome::NotIp {
                    stats.not_ip += 1;
                } else {
                    stats.untouched += 1;
                }
            }
            Outcome::Fixed => {
                write(&resegmenter.fixed)?;
                stats.frames_out += 1;
                stats.fixed += 1;
            }
            Outcome::Segmented { cut } => {
                for segment in resegmenter.list.iter() {
                    write(segment)?;
                    stats.frames_out += 1;
                }
                if cut {
                    stats.cut += 1;
                    stats.segments += resegmenter.list.len() as u64;
                } else {
                    stats.fixed += 1;
                }
            }
        }
    }
    Ok(stats)
}

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not IPv4 or IPv6: write as read.
    NotIp,
    /// IP, but nothing can be recomputed: write as read.
    Untouched,
    /// IP without a TCP/UDP checksum to compute (fragment, other
    /// protocol): `fixed` holds the frame with its IPv4 header checksum.
    Fixed,
    /// `list` holds the frame's segments (one if it fit the MTU).
    Segmented {
        /// The frame exceeded the MTU and was cut.
        cut: bool,
    },
}

/// The per-frame work, with buffers reused from frame to frame.
struct Resegmenter {
    mtu: u16,
    segmenter: Segmenter,
    list: SegmentList,
    fixed: Vec<u8>,
}

impl Resegmenter {
    fn new(mtu: u16) -> Self {
        Resegmenter {
            mtu,
            segmenter: Segmenter::new(SegmentParams::default()),
            list: SegmentList::new(),
            fixed: Vec::new(),
        }
    }

    fn frame(&mut self, data: &[u8], truncated: bool) -> Outcome {
        let Ok(layout) = FrameLayout::parse(data) else {
            return if is_ip(data) {
                Outcome::Untouched
            } else {
                Outcome::NotIp
            };
        };
        if truncated {
            return Outcome::Untouched;
        }
        let frame = without_padding(data, &layout);
        if layout.payload_offset > frame.len() {
            return Outcome::Untouched;
        }
        let l3_len = frame.len() - layout.l3_offset;
        let payload_len = frame.len() - layout.payload_offset;
        let whole = |size: usize| u16::try_from(size.max(1)).ok();
        let gso = match layout.l4 {
            Some(_) if layout.is_fragment => None,
            Some(L4Kind::Tcp) if l3_len > usize::from(self.mtu) => {
                match (GsoKind::Tcp {
                    mss: u16::MAX,
                    ecn: false,
                })
                .fit_mtu(&layout, self.mtu)
                {
                    Ok(gso) => Some((gso, true)),
                    Err(_) => return Outcome::Untouched,
                }
            }
            Some(L4Kind::Tcp) => {
                whole(payload_len).map(|mss| (GsoKind::Tcp { mss, ecn: false }, false))
            }
            Some(L4Kind::Udp) => whole(payload_len).map(|size| (GsoKind::UdpL4 { size }, false)),
            None => None,
        };
        match gso {
            Some((gso, cut)) => {
                self.list.clear();
                match self
                    .segmenter
                    .segment_copy(frame, &layout, gso, &mut self.list)
                {
                    Ok(_) => Outcome::Segmented { cut },
                    Err(_) => Outcome::Untouched,
                }
            }
            None => {
                self.fixed.clear();
                self.fixed.extend_from_slice(frame);
                if layout.l3 == L3Kind::Ipv4 {
                    fix_ipv4_header_checksum(&mut self.fixed, &layout);
                }
                Outcome::Fixed
            }
        }
    }
}

/// Whether the frame says it carries IPv4 or IPv6 (after up to two VLAN tags).
fn is_ip(data: &[u8]) -> bool {
    let mut at = 12;
    loop {
        match data.get(at..at + 2) {
            Some([0x81, 0x00] | [0x88, 0xa8]) if at < 20 => at += 4,
            Some([0x08, 0x00] | [0x86, 0xdd]) => return true,
            _ => return false,
        }
    }
}

/// The frame without Ethernet padding: the IP length field, when it is set
/// and shorter than the frame, ends the packet. A zero or longer field (a
/// GSO capture) leaves the frame as it is.
fn without_padding<'a>(data: &'a [u8], layout: &FrameLayout) -> &'a [u8] {
    let l3 = layout.l3_offset;
    let (field_at, fixed) = match layout.l3 {
        L3Kind::Ipv4 => (l3 + 2, 0),
        L3Kind::Ipv6 => (l3 + 4, 40),
    };
    let declared = match data.get(field_at..field_at + 2) {
        Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
        _ => return data,
    };
    let end = l3 + fixed + declared;
    if declared != 0 && end < data.len() && end >= layout.payload_offset {
        &data[..end]
    } else {
        data
    }
}

/// Recomputes the IPv4 header checksum in place.
fn fix_ipv4_header_checksum(frame: &mut [u8], layout: &FrameLayout) {
    let at = layout.l3_offset + 10;
    if let Some(field) = frame.get_mut(at..at + 2) {
        field.copy_from_slice(&[0, 0]);
    }
    if let Some(header) = frame.get(layout.l3_offset..layout.l4_offset) {
        let value = checksum(header);
        if let Some(field) = frame.get_mut(at..at + 2) {
            field.copy_from_slice(&value.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_command_line() {
        let parsed = parse_args(&args(&["--mtu", "1500", "in.pcap", "out.pcap"])).unwrap();
        assert_eq!(
            parsed,
            Args {
                mtu: 1500,
                input: "in.pcap".into(),
                output: "out.pcap".into()
            }
        );
        let parsed = parse_args(&args(&["in.pcap", "--mtu=9000", "out.pcap"])).unwrap();
        assert_eq!(parsed.mtu, 9000);
    }

    #[test]
    fn rejects_bad_command_lines_with_a_reason() {
        for (list, expect) in [
            (&["in.pcap", "out.pcap"][..], "--mtu N is required"),
            (&["--mtu"][..], "--mtu needs a value"),
            (&["--mtu", "big", "a", "b"][..], "found 'big'"),
            (&["--mtu", "70000", "a", "b"][..], "found '70000'"),
            (&["--mtu", "40", "a", "b"][..], "at least 68"),
            (&["--mtu", "1500", "a"][..], "found 1 paths"),
            (
                &["--mtu", "1500", "--fast", "a", "b"][..],
                "unknown option '--fast'",
            ),
        ] {
            let err = parse_args(&args(list)).unwrap_err().to_string();
            assert!(err.contains(expect), "{list:?}: {err}");
            assert!(err.contains(USAGE));
        }
    }

    #[test]
    fn recognises_ip_behind_vlan_tags() {
        let mut frame = vec![0u8; 30];
        frame[12..14].copy_from_slice(&[0x88, 0xa8]);
        frame[16..18].copy_from_slice(&[0x81, 0x00]);
        frame[20..22].copy_from_slice(&[0x86, 0xdd]);
        assert!(is_ip(&frame));
        frame[20..22].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_ip(&frame));
        assert!(!is_ip(&[0u8; 5]));
    }
}
