//! `vswitch segment --mtu N IN OUT`: re-segment a capture as the wire
//! would carry it.
//!
//! Captures taken on a host with GSO show oversized TCP frames, often with
//! partial checksums and zero or stale IP lengths. This command writes what
//! the peer saw: every TCP frame whose IP length exceeds the MTU is cut with
//! MSS = MTU minus the IP and TCP headers (options included); every other IP
//! frame keeps its size; every IPv4 header, TCP and UDP checksum in the output
//! is recomputed from the bytes; a frame shorter than the Ethernet minimum
//! (60 bytes without the FCS) is padded with zeros; frames that are not IP,
//! and frames the capture's snap length cut short, pass unchanged.
//!
//! The input is a pcap or a pcapng capture (tshark's default); the output is
//! in the input's format unless [`Args::format`] asks for the other one.
//!
//! The tool never loses data: it refuses an output that is the input itself
//! (the same device and inode, also through a hard or a symbolic link), and
//! it writes to a temporary file beside the output that replaces the output
//! only once the whole capture was read and written. After an error there is
//! no partial output and an existing output is left as it was; the error says
//! which record of the input, at which byte offset, the tool had reached.
//!
//! The work is done by the offload engine: [`FrameLayout::parse`] finds the
//! headers and [`Segmenter`] cuts and checksums.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapHeader;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::packet::PacketBlock;
use pcap_file::pcapng::blocks::section_header::SectionHeaderBlock;
use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
use pcap_file::pcapng::{Block, PcapNgBlock, RawBlock};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use vswitch_offload::checksum::checksum;
use vswitch_offload::segment::{SegmentList, SegmentParams, Segmenter};
use vswitch_offload::{FrameLayout, GsoKind, L3Kind, L4Kind};

/// The smallest MTU accepted: the IPv4 minimum (RFC 791).
pub const MIN_MTU: u16 = 68;

/// The shortest Ethernet frame, without its FCS (IEEE 802.3: 64 bytes with
/// it). Rewritten frames shorter than this are padded with zeros.
pub const MIN_FRAME_LEN: usize = 60;

/// The longest record (pcap packet record or pcapng block) read, 64 MiB: a
/// longer one is taken for a corrupt length rather than buffered.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// The snap length written when the input states none (pcapng snaplen 0).
const DEFAULT_SNAPLEN: u32 = 262_144;

/// A capture file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureFormat {
    /// The classic libpcap format (tcpdump's default).
    Pcap,
    /// pcapng (tshark's and dumpcap's default).
    PcapNg,
}

impl fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureFormat::Pcap => "pcap",
            CaptureFormat::PcapNg => "pcapng",
        })
    }
}

/// What to do: the command's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The egress MTU (largest IP packet), at least [`MIN_MTU`].
    pub mtu: u16,
    /// Input capture (pcap or pcapng).
    pub input: PathBuf,
    /// Output capture; replaced only when the whole input was processed.
    pub output: PathBuf,
    /// The output's format; `None`: the input's.
    pub format: Option<CaptureFormat>,
}

/// Where in the input the tool was: a record (a pcap packet record, or a
/// pcapng block, counted from 1; 0 is the pcap file header) and the byte
/// offset at which it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The record, counted from 1 (0: the file header).
    pub record: u64,
    /// The offset of the record's first byte in the input.
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.record == 0 {
            write!(f, "the file header (byte offset {})", self.offset)
        } else {
            write!(f, "record {} (byte offset {})", self.record, self.offset)
        }
    }
}

/// What is wrong with the input capture.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file has no bytes.
    #[error("the file is empty, expected a pcap or pcapng capture")]
    Empty,
    /// The file does not start with a pcap or pcapng magic number.
    #[error(
        "expected a pcap or pcapng capture, found a file starting with {found:02x?}\n\
         hint: pcap files start with d4 c3 b2 a1 (or a1 b2 c3 d4, 4d 3c b2 a1, a1 b2 3c 4d), \
         pcapng files with 0a 0d 0d 0a"
    )]
    UnknownFormat {
        /// The first bytes of the file (up to 4).
        found: Vec<u8>,
    },
    /// The file ends inside a record.
    #[error(
        "the file ends in the middle of {what}: expected {expected} bytes, found {found}\n\
         hint: the capture was cut short (a copy or a capture still running?)"
    )]
    Truncated {
        /// The part being read.
        what: &'static str,
        /// The bytes the part needs.
        expected: u64,
        /// The bytes left in the file.
        found: u64,
    },
    /// A record claims more bytes than the tool reads.
    #[error("{what} claims {len} bytes, expected at most {MAX_RECORD_LEN}: a corrupt length?")]
    TooLong {
        /// The part being read.
        what: &'static str,
        /// The length it claims.
        len: u64,
    },
    /// The capture's link type is not Ethernet.
    #[error("expected an Ethernet capture (link type 1), found link type {datalink}")]
    NotEthernet {
        /// The link type found.
        datalink: String,
    },
    /// A pcapng packet names an interface its section does not describe.
    #[error(
        "a packet names interface {interface}, expected one of the {known} the section describes"
    )]
    UnknownInterface {
        /// The interface the packet names.
        interface: u32,
        /// Interfaces described so far in the section.
        known: usize,
    },
    /// A record is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The part being read.
        what: &'static str,
        /// What the parser found wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Why [`segment_capture`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The input is not a capture this tool reads, or is cut short.
    #[error("reading {at}: {source}")]
    Read {
        /// Where the reader was.
        at: Position,
        /// What was wrong.
        source: InputError,
    },
    /// The output could not be written.
    #[error("writing the output for {at} of the input: {source}")]
    Write {
        /// The input record being written.
        at: Position,
        /// The system error.
        source: io::Error,
    },
}

/// Why the command failed. In every case the output was not written: no
/// partial file was left and an existing output is as it was.
#[derive(Debug, thiserror::Error)]
pub enum PcapSegmentError {
    /// The output is the input (a usage error: exit code 2).
    #[error(
        "{output} is the input {input} (the same file: device {device}, inode {inode}); \
         writing it would destroy the capture, nothing was written\n\
         hint: give an output path that is not the input, a hard link or a symbolic link to it"
    )]
    SameFile {
        /// The input path.
        input: PathBuf,
        /// The output path.
        output: PathBuf,
        /// The device both are on.
        device: u64,
        /// The inode both name.
        inode: u64,
    },
    /// The input could not be opened.
    #[error("cannot open the input {path}: {source}{}", io_hint(source))]
    Open {
        /// The path given.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The output path names a directory.
    #[error("cannot write the output {path}: expected a file path, found a directory")]
    OutputIsDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The temporary file could not be created beside the output.
    #[error(
        "cannot create a temporary file in {dir} for the output: {source}{}",
        io_hint(source)
    )]
    CreateTemp {
        /// The output's directory.
        dir: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The input is not a capture this tool reads, or is cut short.
    #[error("cannot read {input}: {at}: {source}\nnothing was written to {output}")]
    Read {
        /// The input path.
        input: PathBuf,
        /// The output path.
        output: PathBuf,
        /// Where the reader was.
        at: Position,
        /// What was wrong.
        source: InputError,
    },
    /// The output could not be written.
    #[error(
        "cannot write the output at {at} of {input}: {source}{}\nnothing was written to {output}",
        io_hint(source)
    )]
    Write {
        /// The input path.
        input: PathBuf,
        /// The output path.
        output: PathBuf,
        /// The input record being written.
        at: Position,
        /// The system error.
        source: io::Error,
    },
    /// The last bytes of the output could not be written.
    #[error(
        "cannot finish the output after reading all of {input} ({records} records, {bytes} bytes): \
         {source}{}\nnothing was written to {output}",
        io_hint(source)
    )]
    Finish {
        /// The input path.
        input: PathBuf,
        /// The output path.
        output: PathBuf,
        /// Records read.
        records: u64,
        /// Bytes read.
        bytes: u64,
        /// The system error.
        source: io::Error,
    },
    /// The finished output could not be moved into place.
    #[error(
        "cannot move the finished output into place at {output}: {source}{}\n\
         nothing was written to {output}",
        io_hint(source)
    )]
    Persist {
        /// The output path.
        output: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

impl PcapSegmentError {
    /// Whether the error is the command line's (exit code 2) rather than a
    /// failure while running (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PcapSegmentError::SameFile { .. } | PcapSegmentError::OutputIsDirectory { .. }
        )
    }
}

/// A hint for the common system errors.
fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::NotFound => "\nhint: check the path",
        io::ErrorKind::PermissionDenied => {
            "\nhint: this user lacks the permission (read for the input, write for the output's directory)"
        }
        io::ErrorKind::StorageFull => "\nhint: the file system is full",
        _ => "",
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
    /// IP frames that kept their size and had at least one checksum (IPv4
    /// header, TCP or UDP) whose value changed.
    pub checksums_fixed: u64,
    /// IP frames that kept their size and whose recomputed checksums equal
    /// what they held. Only IPv4 header, TCP and UDP checksums are
    /// computed; ICMP's and other protocols' are left as they are.
    pub checksums_unchanged: u64,
    /// Frames written padded to [`MIN_FRAME_LEN`].
    pub padded: u64,
    /// Frames the capture's snap length cut short (captured length below
    /// the original length), passed unchanged.
    pub cut_short: u64,
    /// Frames that are not IP, passed unchanged.
    pub not_ip: u64,
    /// IP frames passed unchanged: malformed, or headers alone larger than
    /// the MTU.
    pub untouched: u64,
}

impl fmt::Display for SegmentStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {} frames, wrote {}: {} TCP frames cut into {} segments, \
             {} frames with checksums fixed, {} with checksums unchanged, {} padded to {MIN_FRAME_LEN} bytes; \
             passed unchanged: {} cut short by the snap length, {} non-IP, {} unparsable or too large",
            self.frames_in,
            self.frames_out,
            self.cut,
            self.segments,
            self.checksums_fixed,
            self.checksums_unchanged,
            self.padded,
            self.cut_short,
            self.not_ip,
            self.untouched
        )
    }
}

/// Re-segments the capture `args.input` into `args.output`.
///
/// Refuses an output that is the input; writes a temporary file in the
/// output's directory and renames it over the output only on success. A
/// new output gets the permissions `File::create` would give it; a
/// replaced one keeps its permissions. An output that is a symbolic link
/// to a file replaces that file, and the link stays.
pub fn segment_files(args: &Args) -> Result<CaptureStats, PcapSegmentError> {
    let input = File::open(&args.input).map_err(|source| PcapSegmentError::Open {
        path: args.input.clone(),
        source,
    })?;
    let input_meta = input.metadata().map_err(|source| PcapSegmentError::Open {
        path: args.input.clone(),
        source,
    })?;
    // Follows symbolic links: a link to the input is the input.
    let existing = match fs::metadata(&args.output) {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PcapSegmentError::CreateTemp {
                dir: output_dir(&args.output),
                source,
            })
        }
    };
    if let Some(meta) = &existing {
        if meta.dev() == input_meta.dev() && meta.ino() == input_meta.ino() {
            return Err(PcapSegmentError::SameFile {
                input: args.input.clone(),
                output: args.output.clone(),
                device: meta.dev(),
                inode: meta.ino(),
            });
        }
        if meta.is_dir() {
            return Err(PcapSegmentError::OutputIsDirectory {
                path: args.output.clone(),
            });
        }
    }
    // Replace the file a symbolic link points at, not the link.
    let target = match &existing {
        Some(_) => fs::canonicalize(&args.output).unwrap_or_else(|_| args.output.clone()),
        None => args.output.clone(),
    };
    let dir = output_dir(&target);
    let prefix = format!(
        ".{}.",
        target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(&dir)
        .map_err(|source| PcapSegmentError::CreateTemp {
            dir: dir.clone(),
            source,
        })?;
    let write_error = |at: Position, source: io::Error| PcapSegmentError::Write {
        input: args.input.clone(),
        output: args.output.clone(),
        at,
        source,
    };
    if let Some(meta) = &existing {
        let mode = Permissions::from_mode(meta.permissions().mode() & 0o7777);
        temp.as_file()
            .set_permissions(mode)
            .map_err(|source| PcapSegmentError::CreateTemp {
                dir: dir.clone(),
                source,
            })?;
    }
    let mut writer = BufWriter::new(temp.as_file_mut());
    let stats = match segment_capture_as(input, &mut writer, args.mtu, args.format) {
        Ok(stats) => stats,
        // `temp` is deleted when dropped: no partial output.
        Err(StreamError::Read { at, source }) => {
            return Err(PcapSegmentError::Read {
                input: args.input.clone(),
                output: args.output.clone(),
                at,
                source,
            })
        }
        Err(StreamError::Write { at, source }) => return Err(write_error(at, source)),
    };
    let finish_error = |source| PcapSegmentError::Finish {
        input: args.input.clone(),
        output: args.output.clone(),
        records: stats.records,
        bytes: stats.bytes_read,
        source,
    };
    writer.flush().map_err(finish_error)?;
    drop(writer);
    temp.as_file().sync_all().map_err(finish_error)?;
    temp.persist(&target)
        .map_err(|err| PcapSegmentError::Persist {
            output: args.output.clone(),
            source: err.error,
        })?;
    Ok(stats)
}

/// The directory a path's file is in (`.` for a bare name).
fn output_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads a pcap or pcapng capture from `input`, re-segments it for `mtu`
/// and writes the result to `output` in the input's format.
pub fn segment_capture<R: Read, W: Write>(
    input: R,
    output: W,
    mtu: u16,
) -> Result<SegmentStats, StreamError> {
    segment_capture_as(input, output, mtu, None).map(|done| done.frames)
}

/// What a run through a capture did, and how far it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureStats {
    /// What became of the frames.
    pub frames: SegmentStats,
    /// The input's format.
    pub input_format: CaptureFormat,
    /// The output's format.
    pub output_format: CaptureFormat,
    /// Records read (pcap packet records, or pcapng blocks).
    pub records: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

/// Reads a pcap or pcapng capture from `input`, re-segments it for `mtu`
/// and writes the result to `output` in `format` (`None`: the input's).
///
/// Converting keeps every packet and its timestamp; pcapng to pcap writes
/// nanosecond timestamps and leaves out what pcap cannot hold (comments,
/// interface statistics, name resolution blocks, interface numbers).
pub fn segment_capture_as<R: Read, W: Write>(
    input: R,
    output: W,
    mtu: u16,
    format: Option<CaptureFormat>,
) -> Result<CaptureStats, StreamError> {
    let mut input = Input::new(input);
    let read_error = |at: Position| move |source: InputError| StreamError::Read { at, source };
    let input_format = input.detect().map_err(read_error(input.position()))?;
    let output_format = format.unwrap_or(input_format);
    let mut job = Job {
        resegmenter: Resegmenter::new(mtu),
        stats: SegmentStats::default(),
        output: Output::new(output, output_format),
        pad: [0; MIN_FRAME_LEN],
    };
    match input_format {
        CaptureFormat::Pcap => read_pcap(&mut input, &mut job)?,
        CaptureFormat::PcapNg => read_pcapng(&mut input, &mut job)?,
    }
    let end = input.position();
    job.output
        .finish()
        .map_err(|source| StreamError::Write { at: end, source })?;
    Ok(CaptureStats {
        frames: job.stats,
        input_format,
        output_format,
        records: input.record,
        bytes_read: input.offset,
    })
}

// --- Reading --------------------------------------------------------------

/// The input, buffered so that a whole record is in memory before it is
/// parsed, with the record number and byte offset it has reached.
struct Input<R> {
    reader: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Offset in the file of `buffer[start]`.
    offset: u64,
    /// Records read so far (the one being read, once counted).
    record: u64,
}

impl<R: Read> Input<R> {
    fn new(reader: R) -> Self {
        Input {
            reader,
            buffer: vec![0; 1 << 20],
            start: 0,
            end: 0,
            offset: 0,
            record: 0,
        }
    }

    fn position(&self) -> Position {
        Position {
            record: self.record,
            offset: self.offset,
        }
    }

    /// Buffers at least `len` bytes unless the file ends first; returns the
    /// bytes buffered.
    fn fill(&mut self, len: usize) -> io::Result<usize> {
        if self.end - self.start >= len {
            return Ok(self.end - self.start);
        }
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        while self.end < len {
            match self.reader.read(&mut self.buffer[self.end..]) {
                Ok(0) => break,
                Ok(read) => self.end += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(self.end - self.start)
    }

    /// Buffers exactly `len` bytes of `what`, or says the file ends first.
    fn need(&mut self, len: usize, what: &'static str) -> Result<(), InputError> {
        if len > MAX_RECORD_LEN {
            return Err(InputError::TooLong {
                what,
                len: len as u64,
            });
        }
        let found = self.fill(len)?;
        if found < len {
            return Err(InputError::Truncated {
                what,
                expected: len as u64,
                found: found as u64,
            });
        }
        Ok(())
    }

    fn peek(&self, len: usize) -> &[u8] {
        &self.buffer[self.start..self.start + len]
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        self.offset += len as u64;
    }

    /// Tells pcap from pcapng by the magic number.
    fn detect(&mut self) -> Result<CaptureFormat, InputError> {
        let found = self.fill(4)?;
        let head = self.peek(found.min(4));
        match head {
            [] => Err(InputError::Empty),
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => Ok(CaptureFormat::Pcap),
            [0x0a, 0x0d, 0x0d, 0x0a] => Ok(CaptureFormat::PcapNg),
            _ => Err(InputError::UnknownFormat {
                found: head.to_vec(),
            }),
        }
    }
}

fn read_u32(bytes: &[u8], endianness: Endianness) -> u32 {
    let word = [bytes[0], bytes[1], bytes[2], bytes[3]];
    match endianness {
        Endianness::Big => u32::from_be_bytes(word),
        Endianness::Little => u32::from_le_bytes(word),
    }
}

fn malformed(what: &'static str) -> impl Fn(PcapError) -> InputError {
    move |err| InputError::Malformed {
        what,
        reason: err.to_string(),
    }
}

fn not_ethernet(datalink: DataLink) -> InputError {
    InputError::NotEthernet {
        datalink: format!("{} ({datalink:?})", u32::from(datalink)),
    }
}

/// A packet's timestamp, as the input holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// pcap: seconds and a fraction in micro- or nanoseconds.
    Pcap {
        seconds: u32,
        fraction: u32,
        nanos: bool,
    },
    /// pcapng: a count of the interface's units since `offset` seconds.
    PcapNg { raw: u64, unit: TsUnit, offset: u64 },
    /// pcapng simple packet blocks carry none.
    None,
}

/// A pcapng interface's timestamp unit (if_tsresol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsUnit {
    /// 10^-n seconds.
    Decimal(u8),
    /// 2^-n seconds.
    Binary(u8),
}

impl TsUnit {
    fn from_option(value: u8) -> Self {
        if value & 0x80 == 0 {
            TsUnit::Decimal(value)
        } else {
            TsUnit::Binary(value & 0x7f)
        }
    }

    fn to_nanos(self, raw: u64) -> u128 {
        let raw = u128::from(raw);
        match self {
            TsUnit::Decimal(n) if n <= 9 => raw * 10u128.pow(u32::from(9 - n)),
            TsUnit::Decimal(n) => raw / 10u128.pow(u32::from(n - 9).min(38)),
            TsUnit::Binary(n) => (raw * 1_000_000_000) >> n.min(127),
        }
    }
}

impl Stamp {
    fn nanos(self) -> u128 {
        match self {
            Stamp::Pcap {
                seconds,
                fraction,
                nanos,
            } => {
                let unit = if nanos { 1 } else { 1000 };
                u128::from(seconds) * 1_000_000_000 + u128::from(fraction) * unit
            }
            Stamp::PcapNg { raw, unit, offset } => {
                unit.to_nanos(raw) + u128::from(offset) * 1_000_000_000
            }
            Stamp::None => 0,
        }
    }
}

/// Where a packet came from, and what the pcapng writer copies from it.
enum Source<'a> {
    /// A pcap packet record.
    Pcap,
    /// A pcapng enhanced packet block.
    Enhanced {
        interface: u32,
        options: Vec<EnhancedPacketOption<'a>>,
    },
    /// A pcapng (obsolete) packet block.
    Obsolete {
        interface: u16,
        drop_count: u16,
        raw_timestamp: u64,
    },
    /// A pcapng simple packet block.
    Simple,
}

/// One packet of the input, with the raw record to copy when it passes
/// unchanged into an output of the same format.
struct Packet<'a> {
    data: &'a [u8],
    orig_len: u32,
    stamp: Stamp,
    source: Source<'a>,
    raw: &'a [u8],
}

fn read_pcap<R: Read, W: Write>(input: &mut Input<R>, job: &mut Job<W>) -> Result<(), StreamError> {
    let header_error = |at| move |source| StreamError::Read { at, source };
    let at = input.position();
    input
        .need(24, "the pcap file header")
        .map_err(header_error(at))?;
    let (_, header) = PcapHeader::from_slice(input.peek(24))
        .map_err(malformed("pcap file header"))
        .map_err(header_error(at))?;
    if header.datalink != DataLink::ETHERNET {
        return Err(header_error(at)(not_ethernet(header.datalink)));
    }
    job.output
        .pcap_header(&header)
        .map_err(|source| StreamError::Write { at, source })?;
    input.consume(24);
    let nanos = header.ts_resolution == TsResolution::NanoSecond;
    loop {
        let found = input
            .fill(16)
            .map_err(|err| header_error(input.position())(err.into()))?;
        if found == 0 {
            return Ok(());
        }
        input.record += 1;
        let at = input.position();
        let read_error = header_error(at);
        input
            .need(16, "a pcap packet record header")
            .map_err(read_error)?;
        let head = input.peek(16);
        let field = |i: usize| read_u32(&head[i * 4..], header.endianness);
        let (seconds, fraction, incl_len, orig_len) = (field(0), field(1), field(2), field(3));
        let len = 16 + incl_len as usize;
        input
            .need(len, "a pcap packet record")
            .map_err(header_error(at))?;
        let raw = input.peek(len);
        let packet = Packet {
            data: &raw[16..],
            orig_len,
            stamp: Stamp::Pcap {
                seconds,
                fraction,
                nanos,
            },
            source: Source::Pcap,
            raw,
        };
        job.packet(&packet)
            .map_err(|source| StreamError::Write { at, source })?;
        input.consume(len);
    }
}

/// A pcapng interface, as its description block said.
#[derive(Debug, Clone, Copy)]
struct Interface {
    unit: TsUnit,
    offset: u64,
}

fn read_pcapng<R: Read, W: Write>(
    input: &mut Input<R>,
    job: &mut Job<W>,
) -> Result<(), StreamError> {
    const SECTION_HEADER: u32 = 0x0A0D_0D0A;
    const INTERFACE_DESCRIPTION: u32 = 1;
    const PACKET: u32 = 2;
    const SIMPLE_PACKET: u32 = 3;
    const ENHANCED_PACKET: u32 = 6;
    let mut endianness = Endianness::Little;
    let mut interfaces: Vec<Interface> = Vec::new();
    loop {
        let found = input.fill(12).map_err(|err| StreamError::Read {
            at: input.position(),
            source: err.into(),
        })?;
        if found == 0 {
            return Ok(());
        }
        input.record += 1;
        let at = input.position();
        let read_error = |source| StreamError::Read { at, source };
        input
            .need(12, "a pcapng block header")
            .map_err(read_error)?;
        let head = input.peek(12);
        if head[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
            endianness = match head[8..12] {
                [0x1a, 0x2b, 0x3c, 0x4d] => Endianness::Big,
                [0x4d, 0x3c, 0x2b, 0x1a] => Endianness::Little,
                _ => {
                    return Err(read_error(InputError::Malformed {
                        what: "pcapng section header",
                        reason: format!(
                            "expected the byte-order magic 1a2b3c4d, found {:02x?}",
                            &head[8..12]
                        ),
                    }))
                }
            };
        }
        let block_type = read_u32(&head[0..4], endianness);
        let len = read_u32(&head[4..8], endianness) as usize;
        if !len.is_multiple_of(4) || len < 12 {
            return Err(read_error(InputError::Malformed {
                what: "pcapng block",
                reason: format!(
                    "expected a length of at least 12 and a multiple of 4, found {len}"
                ),
            }));
        }
        input.need(len, "a pcapng block").map_err(read_error)?;
        let bytes = input.peek(len);
        let block = match endianness {
            Endianness::Big => RawBlock::from_slice::<byteorder_slice::BigEndian>(bytes),
            Endianness::Little => RawBlock::from_slice::<byteorder_slice::LittleEndian>(bytes),
        };
        let (_, raw_block) = block
            .map_err(malformed("pcapng block"))
            .map_err(read_error)?;
        let parse = |what: &'static str| {
            parse_block(raw_block.clone(), endianness)
                .map_err(malformed(what))
                .map_err(read_error)
        };
        let write =
            |result: io::Result<()>| result.map_err(|source| StreamError::Write { at, source });
        match block_type {
            SECTION_HEADER => {
                let Block::SectionHeader(section) = parse("pcapng section header")? else {
                    unreachable!("a section header block parses as one")
                };
                interfaces.clear();
                write(job.output.section(&section))?;
            }
            INTERFACE_DESCRIPTION => {
                let Block::InterfaceDescription(interface) = parse("pcapng interface description")?
                else {
                    unreachable!("an interface description block parses as one")
                };
                if interface.linktype != DataLink::ETHERNET {
                    return Err(read_error(not_ethernet(interface.linktype)));
                }
                let mut described = Interface {
                    unit: TsUnit::Decimal(6),
                    offset: 0,
                };
                for option in &interface.options {
                    match option {
                        InterfaceDescriptionOption::IfTsResol(value) => {
                            described.unit = TsUnit::from_option(*value)
                        }
                        InterfaceDescriptionOption::IfTsOffset(value) => described.offset = *value,
                        _ => {}
                    }
                }
                interfaces.push(described);
                write(job.output.interface(&interface, bytes))?;
            }
            ENHANCED_PACKET | PACKET | SIMPLE_PACKET => {
                let (interface_id, packet) = match parse("pcapng packet block")? {
                    Block::EnhancedPacket(EnhancedPacketBlock {
                        interface_id,
                        timestamp,
                        original_len,
                        data,
                        options,
                    }) => (
                        interface_id,
                        (
                            data,
                            original_len,
                            timestamp_raw(timestamp),
                            Source::Enhanced {
                                interface: interface_id,
                                options,
                            },
                        ),
                    ),
                    Block::Packet(PacketBlock {
                        interface_id,
                        drop_count,
                        timestamp,
                        original_len,
                        data,
                        ..
                    }) => (
                        u32::from(interface_id),
                        (
                            data,
                            original_len,
                            timestamp,
                            Source::Obsolete {
                                interface: interface_id,
                                drop_count,
                                raw_timestamp: timestamp,
                            },
                        ),
                    ),
                    Block::SimplePacket(SimplePacketBlock { original_len, data }) => {
                        // The body is padded to 4 bytes: the packet is at
                        // most its original length.
                        let data = match data {
                            Cow::Borrowed(data) => {
                                Cow::Borrowed(&data[..data.len().min(original_len as usize)])
                            }
                            Cow::Owned(mut data) => {
                                data.truncate(original_len as usize);
                                Cow::Owned(data)
                            }
                        };
                        (0, (data, original_len, 0, Source::Simple))
                    }
                    _ => unreachable!("a packet block parses as one"),
                };
                let Some(interface) = interfaces.get(interface_id as usize).copied() else {
                    return Err(read_error(InputError::UnknownInterface {
                        interface: interface_id,
                        known: interfaces.len(),
                    }));
                };
                let (data, orig_len, raw_ts, source) = packet;
                let stamp = match source {
                    Source::Simple => Stamp::None,
                    _ => Stamp::PcapNg {
                        raw: raw_ts,
                        unit: interface.unit,
                        offset: interface.offset,
                    },
                };
                let packet = Packet {
                    data: &data,
                    orig_len,
                    stamp,
                    source,
                    raw: bytes,
                };
                write(job.packet(&packet))?;
            }
            _ => write(job.output.other_block(bytes))?,
        }
        input.consume(len);
    }
}

fn parse_block(raw: RawBlock<'_>, endianness: Endianness) -> Result<Block<'_>, PcapError> {
    match endianness {
        Endianness::Big => raw.try_into_block::<byteorder_slice::BigEndian>(),
        Endianness::Little => raw.try_into_block::<byteorder_slice::LittleEndian>(),
    }
}

/// pcap-file 2 hands the enhanced packet block's 64-bit timestamp over as
/// that many nanoseconds, whatever the interface's unit: the raw count.
fn timestamp_raw(timestamp: std::time::Duration) -> u64 {
    u64::try_from(timestamp.as_nanos()).unwrap_or(u64::MAX)
}

// --- Writing --------------------------------------------------------------

/// The output capture.
struct Output<W> {
    writer: W,
    format: CaptureFormat,
    /// pcap: whether the file header is written.
    started: bool,
    /// pcap output: timestamps in nanoseconds.
    nanos: bool,
    /// The output's byte order.
    endianness: Endianness,
    /// Whether the input is pcap (and the pcapng output's one interface
    /// was written by us).
    from_pcap: bool,
}

impl<W: Write> Output<W> {
    fn new(writer: W, format: CaptureFormat) -> Self {
        Output {
            writer,
            format,
            started: false,
            nanos: true,
            endianness: Endianness::Little,
            from_pcap: false,
        }
    }

    fn write_block(&mut self, block: &Block<'_>) -> io::Result<()> {
        match self.endianness {
            Endianness::Big => block.write_to::<byteorder_slice::BigEndian, _>(&mut self.writer),
            Endianness::Little => {
                block.write_to::<byteorder_slice::LittleEndian, _>(&mut self.writer)
            }
        }
        .map(drop)
    }

    fn write_pcap_header(&mut self, header: &PcapHeader) -> io::Result<()> {
        header.write_to(&mut self.writer).map_err(into_io)?;
        self.nanos = header.ts_resolution == TsResolution::NanoSecond;
        self.endianness = header.endianness;
        self.started = true;
        Ok(())
    }

    /// The input is pcap: copy its header, or describe it as a pcapng
    /// section with one interface.
    fn pcap_header(&mut self, header: &PcapHeader) -> io::Result<()> {
        self.from_pcap = true;
        match self.format {
            CaptureFormat::Pcap => self.write_pcap_header(header),
            CaptureFormat::PcapNg => {
                self.endianness = header.endianness;
                let section = SectionHeaderBlock {
                    endianness: header.endianness,
                    ..SectionHeaderBlock::default()
                };
                self.write_block(&section.into_block())?;
                let mut interface = InterfaceDescriptionBlock::new(header.datalink, header.snaplen);
                self.nanos = header.ts_resolution == TsResolution::NanoSecond;
                if self.nanos {
                    interface
                        .options
                        .push(InterfaceDescriptionOption::IfTsResol(9));
                }
                self.write_block(&interface.into_block())
            }
        }
    }

    /// A pcapng section starts. Its length is not known any more.
    fn section(&mut self, section: &SectionHeaderBlock<'_>) -> io::Result<()> {
        if self.format == CaptureFormat::PcapNg {
            self.endianness = section.endianness;
            let mut section = section.clone();
            section.section_length = -1;
            self.write_block(&section.into_block())?;
        }
        Ok(())
    }

    /// A pcapng interface description: copied, or the first one gives the
    /// pcap header's snap length.
    fn interface(
        &mut self,
        interface: &InterfaceDescriptionBlock<'_>,
        raw: &[u8],
    ) -> io::Result<()> {
        match self.format {
            CaptureFormat::PcapNg => self.writer.write_all(raw),
            CaptureFormat::Pcap if !self.started => {
                self.write_pcap_header(&pcap_header_for(if interface.snaplen == 0 {
                    DEFAULT_SNAPLEN
                } else {
                    interface.snaplen
                }))
            }
            CaptureFormat::Pcap => Ok(()),
        }
    }

    /// Any other pcapng block: copied into a pcapng output, left out of a
    /// pcap one.
    fn other_block(&mut self, raw: &[u8]) -> io::Result<()> {
        match self.format {
            CaptureFormat::PcapNg => self.writer.write_all(raw),
            CaptureFormat::Pcap => Ok(()),
        }
    }

    /// Writes a packet as the input had it: the same record, or the same
    /// packet converted.
    fn unchanged(&mut self, packet: &Packet<'_>) -> io::Result<()> {
        let same_format = (self.format == CaptureFormat::Pcap) == self.from_pcap;
        if same_format {
            return self.writer.write_all(packet.raw);
        }
        self.frame(packet, packet.data, packet.orig_len, true)
    }

    /// Writes one frame of `packet` (`first`: the first written for it).
    fn frame(
        &mut self,
        packet: &Packet<'_>,
        data: &[u8],
        orig_len: u32,
        first: bool,
    ) -> io::Result<()> {
        let caplen = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a frame longer than 4 GiB"))?;
        match self.format {
            CaptureFormat::Pcap => {
                if !self.started {
                    self.write_pcap_header(&pcap_header_for(DEFAULT_SNAPLEN))?;
                }
                let (seconds, fraction) = match packet.stamp {
                    Stamp::Pcap {
                        seconds,
                        fraction,
                        nanos,
                    } if nanos == self.nanos => (seconds, fraction),
                    stamp => {
                        let nanos = stamp.nanos();
                        let seconds = u32::try_from(nanos / 1_000_000_000).map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "a timestamp after 2106 does not fit a pcap file \
                                 (hint: --format pcapng)",
                            )
                        })?;
                        let fraction = (nanos % 1_000_000_000) as u32;
                        (
                            seconds,
                            if self.nanos {
                                fraction
                            } else {
                                fraction / 1000
                            },
                        )
                    }
                };
                let mut head = [0u8; 16];
                for (i, value) in [seconds, fraction, caplen, orig_len]
                    .into_iter()
                    .enumerate()
                {
                    let bytes = match self.endianness {
                        Endianness::Big => value.to_be_bytes(),
                        Endianness::Little => value.to_le_bytes(),
                    };
                    head[i * 4..i * 4 + 4].copy_from_slice(&bytes);
                }
                self.writer.write_all(&head)?;
                self.writer.write_all(data)
            }
            CaptureFormat::PcapNg => {
                let block = match &packet.source {
                    Source::Pcap => {
                        let Stamp::Pcap {
                            seconds, fraction, ..
                        } = packet.stamp
                        else {
                            unreachable!("pcap packets carry pcap timestamps")
                        };
                        // The interface written for a pcap input counts in
                        // the pcap's own unit.
                        let unit: u64 = if self.nanos { 1_000_000_000 } else { 1_000_000 };
                        let raw = u64::from(seconds) * unit + u64::from(fraction);
                        EnhancedPacketBlock {
                            interface_id: 0,
                            timestamp: std::time::Duration::from_nanos(raw),
                            original_len: orig_len,
                            data: Cow::Borrowed(data),
                            options: vec![],
                        }
                        .into_block()
                    }
                    Source::Enhanced { interface, options } => {
                        let Stamp::PcapNg { raw, .. } = packet.stamp else {
                            unreachable!("pcapng packets carry pcapng timestamps")
                        };
                        // The hash is of the bytes read; the rest (flags,
                        // comments, drop count) goes with the first frame,
                        // the direction flags with every one.
                        let options = options
                            .iter()
                            .filter(|option| match option {
                                EnhancedPacketOption::Hash(_) => false,
                                EnhancedPacketOption::Flags(_) => true,
                                _ => first,
                            })
                            .cloned()
                            .collect();
                        EnhancedPacketBlock {
                            interface_id: *interface,
                            timestamp: std::time::Duration::from_nanos(raw),
                            original_len: orig_len,
                            data: Cow::Borrowed(data),
                            options,
                        }
                        .into_block()
                    }
                    Source::Obsolete {
                        interface,
                        drop_count,
                        raw_timestamp,
                    } => PacketBlock {
                        interface_id: *interface,
                        drop_count: if first { *drop_count } else { 0 },
                        timestamp: *raw_timestamp,
                        captured_len: caplen,
                        original_len: orig_len,
                        data: Cow::Borrowed(data),
                        options: vec![],
                    }
                    .into_block(),
                    Source::Simple => SimplePacketBlock {
                        original_len: orig_len,
                        data: Cow::Borrowed(data),
                    }
                    .into_block(),
                };
                self.write_block(&block)
            }
        }
    }

    /// Ends the output: a pcap output of a pcapng input without interfaces
    /// still gets its header.
    fn finish(&mut self) -> io::Result<()> {
        if self.format == CaptureFormat::Pcap && !self.started {
            self.write_pcap_header(&pcap_header_for(DEFAULT_SNAPLEN))?;
        }
        self.writer.flush()
    }
}

/// The header of a pcap converted from pcapng: Ethernet, nanoseconds.
fn pcap_header_for(snaplen: u32) -> PcapHeader {
    PcapHeader {
        snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    }
}

fn into_io(err: PcapError) -> io::Error {
    match err {
        PcapError::IoError(err) => err,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

// --- The work on each frame ---------------------------------------------

/// One run: the frame work, its counters and the output.
struct Job<W> {
    resegmenter: Resegmenter,
    stats: SegmentStats,
    output: Output<W>,
    pad: [u8; MIN_FRAME_LEN],
}

impl<W: Write> Job<W> {
    fn packet(&mut self, packet: &Packet<'_>) -> io::Result<()> {
        let Job {
            resegmenter,
            stats,
            output,
            pad,
        } = self;
        stats.frames_in += 1;
        let changed = match resegmenter.frame(packet.data, packet.orig_len) {
            Outcome::CutShort => {
                return write_unchanged(stats, output, packet, |s| &mut s.cut_short)
            }
            Outcome::NotIp => return write_unchanged(stats, output, packet, |s| &mut s.not_ip),
            Outcome::Untouched => {
                return write_unchanged(stats, output, packet, |s| &mut s.untouched)
            }
            Outcome::Fixed { changed } => {
                write_padded(stats, output, pad, packet, &resegmenter.fixed, true)?;
                changed
            }
            Outcome::Segmented { cut, changed } => {
                for (i, segment) in resegmenter.list.iter().enumerate() {
                    write_padded(stats, output, pad, packet, segment, i == 0)?;
                }
                if cut {
                    stats.cut += 1;
                    stats.segments += resegmenter.list.len() as u64;
                    return Ok(());
                }
                changed
            }
        };
        if changed {
            stats.checksums_fixed += 1;
        } else {
            stats.checksums_unchanged += 1;
        }
        Ok(())
    }
}

/// Writes a frame as read, counted under `counter`.
fn write_unchanged<W: Write>(
    stats: &mut SegmentStats,
    output: &mut Output<W>,
    packet: &Packet<'_>,
    counter: impl FnOnce(&mut SegmentStats) -> &mut u64,
) -> io::Result<()> {
    *counter(stats) += 1;
    stats.frames_out += 1;
    output.unchanged(packet)
}

/// Writes a rewritten frame, padded to the Ethernet minimum.
fn write_padded<W: Write>(
    stats: &mut SegmentStats,
    output: &mut Output<W>,
    pad: &mut [u8; MIN_FRAME_LEN],
    packet: &Packet<'_>,
    frame: &[u8],
    first: bool,
) -> io::Result<()> {
    stats.frames_out += 1;
    let frame = if frame.len() < MIN_FRAME_LEN {
        stats.padded += 1;
        *pad = [0; MIN_FRAME_LEN];
        pad[..frame.len()].copy_from_slice(frame);
        &pad[..]
    } else {
        frame
    };
    output.frame(packet, frame, frame.len() as u32, first)
}

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The capture holds less than the frame: write as read.
    CutShort,
    /// Not IPv4 or IPv6: write as read.
    NotIp,
    /// IP, but nothing can be recomputed: write as read.
    Untouched,
    /// IP without a TCP/UDP checksum to compute (fragment, other
    /// protocol): `fixed` holds the frame with its IPv4 header checksum.
    Fixed {
        /// The IPv4 header checksum changed.
        changed: bool,
    },
    /// `list` holds the frame's segments (one if it fit the MTU).
    Segmented {
        /// The frame exceeded the MTU and was cut.
        cut: bool,
        /// Not cut, and a checksum's value changed.
        changed: bool,
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

    fn frame(&mut self, data: &[u8], orig_len: u32) -> Outcome {
        if data.len() < orig_len as usize {
            return Outcome::CutShort;
        }
        let Ok(layout) = FrameLayout::parse(data) else {
            return if is_ip(data) {
                Outcome::Untouched
            } else {
                Outcome::NotIp
            };
        };
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
                    Ok(_) => {
                        let changed = !cut
                            && self
                                .list
                                .get(0)
                                .is_some_and(|out| checksums_differ(frame, out, &layout));
                        Outcome::Segmented { cut, changed }
                    }
                    Err(_) => Outcome::Untouched,
                }
            }
            None => {
                self.fixed.clear();
                self.fixed.extend_from_slice(frame);
                if layout.l3 == L3Kind::Ipv4 {
                    fix_ipv4_header_checksum(&mut self.fixed, &layout);
                }
                Outcome::Fixed {
                    changed: checksums_differ(frame, &self.fixed, &layout),
                }
            }
        }
    }
}

/// Whether a checksum field (IPv4 header, TCP, UDP) holds another value in
/// `after` than in `before`, two frames with the same headers.
fn checksums_differ(before: &[u8], after: &[u8], layout: &FrameLayout) -> bool {
    let mut fields = Vec::with_capacity(2);
    if layout.l3 == L3Kind::Ipv4 {
        fields.push(layout.l3_offset + 10);
    }
    if !layout.is_fragment {
        match layout.l4 {
            Some(L4Kind::Tcp) => fields.push(layout.l4_offset + 16),
            Some(L4Kind::Udp) => fields.push(layout.l4_offset + 6),
            None => {}
        }
    }
    fields
        .into_iter()
        .any(|at| before.get(at..at + 2) != after.get(at..at + 2))
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

    #[test]
    fn pcapng_timestamp_units_convert_to_nanoseconds() {
        assert_eq!(TsUnit::Decimal(6).to_nanos(1_500_000), 1_500_000_000);
        assert_eq!(TsUnit::Decimal(9).to_nanos(7), 7);
        assert_eq!(TsUnit::Decimal(12).to_nanos(7_000), 7);
        assert_eq!(TsUnit::Binary(10).to_nanos(1024), 1_000_000_000);
        assert_eq!(TsUnit::from_option(0x86), TsUnit::Binary(6));
        let stamp = Stamp::PcapNg {
            raw: 2,
            unit: TsUnit::Decimal(0),
            offset: 3,
        };
        assert_eq!(stamp.nanos(), 5_000_000_000);
    }

    #[test]
    fn detects_the_format_by_its_magic() {
        let formats = [
            (&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0][..], Ok(CaptureFormat::Pcap)),
            (&[0xa1, 0xb2, 0x3c, 0x4d][..], Ok(CaptureFormat::Pcap)),
            (&[0x0a, 0x0d, 0x0d, 0x0a][..], Ok(CaptureFormat::PcapNg)),
        ];
        for (bytes, expect) in formats {
            let got = Input::new(bytes).detect().map_err(|e| e.to_string());
            assert_eq!(got, expect.map_err(|e: String| e));
        }
        let err = Input::new(&b""[..]).detect().unwrap_err();
        assert!(matches!(err, InputError::Empty), "{err}");
        let err = Input::new(&b"GET /"[..]).detect().unwrap_err();
        assert!(err.to_string().contains("[47, 45, 54, 20]"), "{err}");
    }
}
