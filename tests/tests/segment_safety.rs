//! `vswitch segment` never loses data: an output that is the input is
//! refused (also through a hard or a symbolic link) with the input intact;
//! an error part way leaves no output and an existing output as it was;
//! frames a snap length cut short pass unchanged and are counted; pcapng
//! captures are read and written, converted both ways with every timestamp;
//! short frames are padded; only changed checksums count as fixed.
//!
//! The last two tests capture real traffic on the loopback of a network
//! namespace, with `tcpdump -s 128` and with `tshark` (pcapng), and need
//! root: they are ignored by default and run by `bash .ci/test`.

use std::borrow::Cow;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsBlock;
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::DataLink;
use vswitch::pcap_segment::{
    segment_capture_as, segment_files, Args, CaptureFormat, InputError, PcapSegmentError, Position,
    StreamError,
};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_tests::{require_netns, NetNs};

// --- Captures written and read by hand, independent of the tool --------

/// One pcap packet record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    seconds: u32,
    fraction: u32,
    orig_len: u32,
    data: Vec<u8>,
}

impl Record {
    fn new(seconds: u32, data: Vec<u8>) -> Self {
        Record {
            seconds,
            fraction: 0,
            orig_len: data.len() as u32,
            data,
        }
    }

    /// The record of a frame the snap length cut to `snaplen` bytes.
    fn cut(seconds: u32, frame: &[u8], snaplen: usize) -> Self {
        Record {
            seconds,
            fraction: 123,
            orig_len: frame.len() as u32,
            data: frame[..snaplen].to_vec(),
        }
    }
}

/// A little-endian microsecond pcap file.
fn pcap_bytes(snaplen: u32, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, snaplen, 1] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for record in records {
        for word in [
            record.seconds,
            record.fraction,
            record.data.len() as u32,
            record.orig_len,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&record.data);
    }
    out
}

/// The records of a little-endian pcap file, checked whole.
fn pcap_records(bytes: &[u8]) -> Vec<Record> {
    assert!(bytes.len() >= 24, "a pcap header");
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert!(
        [0xa1b2_c3d4, 0xa1b2_3c4d].contains(&word(0)),
        "little-endian pcap"
    );
    let mut at = 24;
    let mut records = Vec::new();
    while at < bytes.len() {
        let caplen = word(at + 8) as usize;
        records.push(Record {
            seconds: word(at),
            fraction: word(at + 4),
            orig_len: word(at + 12),
            data: bytes[at + 16..at + 16 + caplen].to_vec(),
        });
        at += 16 + caplen;
    }
    assert_eq!(at, bytes.len(), "the file ends with its last record");
    records
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A TCP/IPv4 frame with `len` bytes of payload and correct checksums.
fn tcp_frame(len: usize, seq: u32) -> Vec<u8> {
    FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
        .dont_fragment(true)
        .ports(40000, 80)
        .seq(seq)
        .ack_number(1)
        .tcp_flags(tcp_flags::ACK)
        .window(1000)
        .payload(payload(len, seq as u8))
        .build()
}

/// An ICMP echo request with correct checksums, 42 bytes.
fn icmp_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// Checks every checksum of an IP frame and returns its TCP payload (empty
/// for other protocols) and IP length.
fn check(frame: &[u8]) -> (Vec<u8>, usize) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parses strictly");
    let data = headers.payload.slice().to_vec();
    let (ip4, ip6, l3_len) = match headers.net.as_ref().expect("IP") {
        NetHeaders::Ipv4(ip, _) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header");
            (Some(ip), None, usize::from(ip.total_len))
        }
        NetHeaders::Ipv6(ip, _) => (None, Some(ip), 40 + usize::from(ip.payload_length)),
        NetHeaders::Arp(_) => panic!("ARP"),
    };
    let tcp_payload = match headers.transport.as_ref() {
        Some(TransportHeader::Tcp(tcp)) => {
            let expected = match (ip4, ip6) {
                (Some(ip), _) => tcp.calc_checksum_ipv4(ip, &data).unwrap(),
                (_, Some(ip)) => tcp.calc_checksum_ipv6(ip, &data).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(tcp.checksum, expected, "TCP checksum");
            data
        }
        Some(TransportHeader::Udp(udp)) => {
            let expected = match (ip4, ip6) {
                (Some(ip), _) => udp.calc_checksum_ipv4(ip, &data).unwrap(),
                (_, Some(ip)) => udp.calc_checksum_ipv6(ip, &data).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(udp.checksum, expected, "UDP checksum");
            Vec::new()
        }
        _ => Vec::new(),
    };
    (tcp_payload, l3_len)
}

/// The TCP payload bytes of `frames`, their checksums not checked (the
/// loopback's are partial).
fn tcp_payload_bytes<'a>(frames: impl Iterator<Item = &'a [u8]>) -> usize {
    frames
        .map(|frame| {
            let headers = PacketHeaders::from_ethernet_slice(frame).expect("parses strictly");
            match headers.transport {
                Some(TransportHeader::Tcp(_)) => headers.payload.slice().len(),
                _ => 0,
            }
        })
        .sum()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn args(input: &Path, output: &Path) -> Args {
    Args {
        mtu: 1500,
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        format: None,
    }
}

/// A capture of a large frame, a small one and a large one again.
fn good_capture() -> Vec<u8> {
    pcap_bytes(
        262_144,
        &[
            Record::new(1, tcp_frame(5000, 1)),
            Record::new(2, icmp_frame()),
            Record::new(3, tcp_frame(3000, 9001)),
        ],
    )
}

// --- The input is never the output ---------------------------------------

#[test]
fn an_output_that_is_the_input_is_refused_with_the_input_intact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let capture = good_capture();
    std::fs::write(&input, &capture).unwrap();
    let hard = dir.path().join("hard.pcap");
    std::fs::hard_link(&input, &hard).unwrap();
    let soft = dir.path().join("soft.pcap");
    std::os::unix::fs::symlink("in.pcap", &soft).unwrap();
    let before = listing(dir.path());
    for output in [
        input.clone(),
        hard,
        soft,
        dir.path().join("sub/../in.pcap"),
        dir.path().join("./in.pcap"),
    ] {
        if output.to_string_lossy().contains("sub/") {
            std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        }
        let err = segment_files(&args(&input, &output)).unwrap_err();
        assert!(
            matches!(err, PcapSegmentError::SameFile { .. }),
            "{}: {err}",
            output.display()
        );
        assert!(err.is_usage(), "a usage error: exit code 2");
        let message = err.to_string();
        assert!(message.contains("is the input"), "{message}");
        assert!(message.contains("nothing was written"), "{message}");
        assert!(message.contains("hint:"), "{message}");
        assert_eq!(std::fs::read(&input).unwrap(), capture, "input intact");
    }
    let mut after = listing(dir.path());
    after.retain(|name| name != "sub");
    assert_eq!(after, before, "no file left beside the input");
}

// --- No partial output after an error -----------------------------------

#[test]
fn an_error_part_way_leaves_no_output_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cut.pcap");
    let records = [
        Record::new(1, tcp_frame(100, 1)),
        Record::new(2, tcp_frame(5000, 2)),
        Record::new(3, tcp_frame(200, 3)),
        Record::new(4, tcp_frame(300, 4)),
    ];
    let whole = pcap_bytes(262_144, &records);
    // Cut inside the data of the fourth record.
    let fourth_at = 24
        + records[..3]
            .iter()
            .map(|r| 16 + r.data.len())
            .sum::<usize>();
    std::fs::write(&input, &whole[..fourth_at + 16 + 10]).unwrap();
    let output = dir.path().join("out.pcap");
    let err = segment_files(&args(&input, &output)).unwrap_err();
    let PcapSegmentError::Read { at, source, .. } = &err else {
        panic!("expected a read error, found {err}")
    };
    assert_eq!(
        *at,
        Position {
            record: 4,
            offset: fourth_at as u64
        }
    );
    assert!(
        matches!(
            source,
            InputError::Truncated {
                expected,
                found: 26,
                ..
            } if *expected == 16 + records[3].data.len() as u64
        ),
        "{source}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("record 4 (byte offset {fourth_at})")),
        "{message}"
    );
    assert!(message.contains("nothing was written to"), "{message}");
    assert!(!err.is_usage());
    assert!(!output.exists(), "no partial output");
    assert_eq!(listing(dir.path()), ["cut.pcap"], "no temporary file left");

    // Cut inside a record header.
    std::fs::write(&input, &whole[..fourth_at + 7]).unwrap();
    let err = segment_files(&args(&input, &output)).unwrap_err();
    assert!(
        err.to_string().contains("a pcap packet record header"),
        "{err}"
    );
    assert!(!output.exists());
}

#[test]
fn an_existing_output_is_replaced_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.pcap");
    std::fs::write(&output, b"an earlier result").unwrap();
    std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o640)).unwrap();

    let bad = dir.path().join("bad.pcap");
    let mut cut = good_capture();
    cut.truncate(cut.len() - 1);
    std::fs::write(&bad, &cut).unwrap();
    let err = segment_files(&args(&bad, &output)).unwrap_err();
    assert!(matches!(err, PcapSegmentError::Read { .. }), "{err}");
    assert_eq!(std::fs::read(&output).unwrap(), b"an earlier result");

    let not_a_capture = dir.path().join("notes.txt");
    std::fs::write(&not_a_capture, b"not a capture at all").unwrap();
    let err = segment_files(&args(&not_a_capture, &output)).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected a pcap or pcapng capture"),
        "{err}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"an earlier result");

    let good = dir.path().join("good.pcap");
    std::fs::write(&good, good_capture()).unwrap();
    let done = segment_files(&args(&good, &output)).unwrap();
    let records = pcap_records(&std::fs::read(&output).unwrap());
    assert_eq!(records.len() as u64, done.frames.frames_out);
    let mode = std::fs::metadata(&output).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "the replaced output keeps its mode");
    assert_eq!(
        listing(dir.path()),
        ["bad.pcap", "good.pcap", "notes.txt", "out.pcap"]
    );
}

#[test]
fn an_output_through_a_symbolic_link_replaces_the_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    std::fs::write(&input, good_capture()).unwrap();
    std::fs::create_dir(dir.path().join("results")).unwrap();
    let target = dir.path().join("results/latest.pcap");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("latest.pcap");
    std::os::unix::fs::symlink("results/latest.pcap", &link).unwrap();
    segment_files(&args(&input, &link)).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!pcap_records(&std::fs::read(&target).unwrap()).is_empty());
    assert_eq!(listing(&dir.path().join("results")), ["latest.pcap"]);
}

// --- Snap lengths, padding, what counts as fixed -------------------------

#[test]
fn frames_cut_short_by_the_snap_length_pass_unchanged_and_are_counted() {
    let big = tcp_frame(1448, 1);
    let mut gso = tcp_frame(20_000, 2);
    gso[16..18].copy_from_slice(&[0, 0]);
    let mut ack = tcp_frame(0, 3);
    ack[34 + 16] ^= 0xff; // a partial checksum, as on the loopback
    let records = [
        Record::cut(1, &big, 128),
        Record::cut(2, &gso, 128),
        Record::new(3, ack),
        Record::cut(4, &icmp_frame(), 20),
    ];
    let input = pcap_bytes(128, &records);
    let mut output = Vec::new();
    let done = segment_capture_as(&input[..], &mut output, 1500, None).unwrap();
    let stats = done.frames;
    assert_eq!(stats.cut_short, 3);
    assert_eq!((stats.frames_in, stats.frames_out), (4, 4));
    assert_eq!((stats.checksums_fixed, stats.checksums_unchanged), (1, 0));
    assert_eq!(stats.cut, 0);
    assert!(
        stats.to_string().contains("3 cut short by the snap length"),
        "{stats}"
    );
    let out = pcap_records(&output);
    assert_eq!(out[0], records[0], "timestamp, lengths and bytes kept");
    assert_eq!(out[1], records[1]);
    assert_eq!(out[3], records[3]);
    assert_eq!(out[2].data.len(), 60);
    check(&out[2].data);
    assert_eq!(
        output[..24],
        input[..24],
        "the header, snap length included"
    );
}

#[test]
fn short_frames_are_padded_and_only_changed_checksums_count_as_fixed() {
    let icmp = icmp_frame();
    let udp = FrameBuilder::udp4([10, 0, 0, 1], [10, 0, 0, 3])
        .ports(5353, 53)
        .payload(payload(4, 1))
        .build();
    let mut bad_udp = udp.clone();
    bad_udp[34 + 6] ^= 0x10;
    let mut bad_ip = icmp.clone();
    bad_ip[24] ^= 0x01;
    let ok_tcp = tcp_frame(100, 5);
    let records = [
        Record::new(1, icmp.clone()),
        Record::new(2, udp.clone()),
        Record::new(3, bad_udp),
        Record::new(4, bad_ip),
        Record::new(5, ok_tcp.clone()),
    ];
    let input = pcap_bytes(65_535, &records);
    let mut output = Vec::new();
    let stats = segment_capture_as(&input[..], &mut output, 1500, None)
        .unwrap()
        .frames;
    assert_eq!((stats.checksums_fixed, stats.checksums_unchanged), (2, 3));
    assert_eq!(
        stats.padded, 4,
        "ICMP (42 bytes) and UDP (46 bytes) twice each"
    );
    let out = pcap_records(&output);
    for (record, original) in out.iter().zip([&icmp, &udp, &udp, &icmp]) {
        assert_eq!(record.data.len(), 60);
        assert_eq!(record.orig_len, 60);
        assert_eq!(&record.data[..original.len()], &original[..]);
        assert!(record.data[original.len()..].iter().all(|&b| b == 0));
        check(&record.data);
    }
    assert_eq!(out[4].data, ok_tcp, "a correct frame is written as it was");
}

/// A file system that fills up after `room` bytes.
struct FillsUp {
    room: usize,
}

impl std::io::Write for FillsUp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        let len = buf.len().min(self.room);
        self.room -= len;
        Ok(len)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_says_which_record_it_was_writing() {
    let records = [
        Record::new(1, tcp_frame(100, 1)),
        Record::new(2, tcp_frame(100, 2)),
        Record::new(3, tcp_frame(100, 3)),
    ];
    let input = pcap_bytes(65_535, &records);
    let record_len = 16 + records[0].data.len();
    // Room for the header, the first record and half the second.
    let room = 24 + record_len + record_len / 2;
    let err = segment_capture_as(&input[..], FillsUp { room }, 1500, None).unwrap_err();
    let StreamError::Write { at, source } = &err else {
        panic!("expected a write error, found {err}")
    };
    assert_eq!(
        *at,
        Position {
            record: 2,
            offset: (24 + record_len) as u64
        }
    );
    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
}

// --- pcapng ----------------------------------------------------------------

/// A pcapng capture: an interface counting microseconds, a GSO frame with a
/// comment and a hash, an ICMP frame, interface statistics.
fn pcapng_capture(gso: &[u8]) -> Vec<u8> {
    let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
    let interface = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Borrowed("lo")),
            InterfaceDescriptionOption::IfTsResol(6),
        ],
    };
    writer.write_pcapng_block(interface).unwrap();
    let packet = |raw_us: u64, data: &[u8], options| EnhancedPacketBlock {
        interface_id: 0,
        timestamp: Duration::from_nanos(raw_us), // pcap-file's raw count
        original_len: data.len() as u32,
        data: Cow::Owned(data.to_vec()),
        options,
    };
    writer
        .write_pcapng_block(packet(
            1_700_000_000_123_456,
            gso,
            vec![
                EnhancedPacketOption::Comment(Cow::Borrowed("the big one")),
                EnhancedPacketOption::Hash(Cow::Borrowed(&[2, 1, 2, 3, 4])),
            ],
        ))
        .unwrap();
    writer
        .write_pcapng_block(packet(1_700_000_000_223_456, &icmp_frame(), vec![]))
        .unwrap();
    writer
        .write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: 0,
            timestamp: 1_700_000_001_000_000,
            options: vec![],
        })
        .unwrap();
    writer.into_inner()
}

fn pcapng_blocks(bytes: &[u8]) -> Vec<Block<'static>> {
    let mut reader = PcapNgReader::new(bytes).unwrap();
    let mut blocks = vec![Block::SectionHeader(reader.section().clone())];
    while let Some(block) = reader.next_block() {
        blocks.push(block.unwrap().into_owned());
    }
    blocks
}

#[test]
fn pcapng_is_read_and_written_with_its_blocks_and_timestamps() {
    let mut gso = tcp_frame(10_000, 1);
    gso[16..18].copy_from_slice(&[0, 0]);
    let input = pcapng_capture(&gso);
    let mut output = Vec::new();
    let done = segment_capture_as(&input[..], &mut output, 1500, None).unwrap();
    assert_eq!(done.input_format, CaptureFormat::PcapNg);
    assert_eq!(done.output_format, CaptureFormat::PcapNg);
    let segments = 10_000usize.div_ceil(1448);
    assert_eq!(done.frames.segments, segments as u64);
    let blocks = pcapng_blocks(&output);
    assert!(matches!(blocks[0], Block::SectionHeader(_)));
    let Block::InterfaceDescription(interface) = &blocks[1] else {
        panic!("expected the interface, found {:?}", blocks[1])
    };
    assert!(interface
        .options
        .contains(&InterfaceDescriptionOption::IfTsResol(6)));
    let packets: Vec<&EnhancedPacketBlock> = blocks
        .iter()
        .filter_map(|block| match block {
            Block::EnhancedPacket(packet) => Some(packet),
            _ => None,
        })
        .collect();
    assert_eq!(packets.len(), segments + 1);
    let mut data = Vec::new();
    for (i, packet) in packets[..segments].iter().enumerate() {
        assert_eq!(
            packet.timestamp,
            Duration::from_nanos(1_700_000_000_123_456)
        );
        assert_eq!(packet.original_len as usize, packet.data.len());
        let (payload, l3_len) = check(&packet.data);
        assert!(l3_len <= 1500);
        data.extend_from_slice(&payload);
        let comment = EnhancedPacketOption::Comment(Cow::Borrowed("the big one"));
        assert_eq!(packet.options.contains(&comment), i == 0, "comment once");
        assert!(
            !packet
                .options
                .iter()
                .any(|o| matches!(o, EnhancedPacketOption::Hash(_))),
            "the hash was of other bytes"
        );
    }
    assert_eq!(data, payload(10_000, 1));
    assert_eq!(packets[segments].data.len(), 60, "ICMP padded");
    assert!(
        matches!(blocks.last(), Some(Block::InterfaceStatistics(_))),
        "other blocks copied"
    );
}

#[test]
fn converting_keeps_every_timestamp() {
    let input = pcapng_capture(&tcp_frame(3000, 1));
    let mut pcap = Vec::new();
    let done = segment_capture_as(&input[..], &mut pcap, 1500, Some(CaptureFormat::Pcap)).unwrap();
    assert_eq!(done.output_format, CaptureFormat::Pcap);
    let mut reader = PcapReader::new(&pcap[..]).unwrap();
    assert_eq!(reader.header().datalink, DataLink::ETHERNET);
    let mut stamps = Vec::new();
    while let Some(packet) = reader.next_packet() {
        stamps.push(packet.unwrap().timestamp);
    }
    assert_eq!(stamps.len(), 3 + 1);
    // Microseconds in the pcapng, nanoseconds in the pcap.
    assert_eq!(stamps[0], Duration::new(1_700_000_000, 123_456_000));
    assert_eq!(stamps[3], Duration::new(1_700_000_000, 223_456_000));

    // And back: pcap (nanoseconds now) to pcapng.
    let mut back = Vec::new();
    segment_capture_as(&pcap[..], &mut back, 1500, Some(CaptureFormat::PcapNg)).unwrap();
    let blocks = pcapng_blocks(&back);
    let Block::InterfaceDescription(interface) = &blocks[1] else {
        panic!("expected an interface, found {:?}", blocks[1])
    };
    assert!(interface
        .options
        .contains(&InterfaceDescriptionOption::IfTsResol(9)));
    let Block::EnhancedPacket(first) = &blocks[2] else {
        panic!("expected a packet, found {:?}", blocks[2])
    };
    assert_eq!(
        first.timestamp,
        Duration::from_nanos(1_700_000_000_123_456_000),
        "nanoseconds, the interface's unit"
    );
}

#[test]
fn a_pcapng_packet_on_an_undescribed_interface_is_an_error() {
    let mut input = pcapng_capture(&tcp_frame(100, 1));
    // The first packet block follows the section header (28 bytes) and the
    // interface description; make it name interface 7.
    let shb_len = u32::from_le_bytes(input[4..8].try_into().unwrap()) as usize;
    let idb_len = u32::from_le_bytes(input[shb_len + 4..shb_len + 8].try_into().unwrap()) as usize;
    let epb = shb_len + idb_len;
    input[epb + 8..epb + 12].copy_from_slice(&7u32.to_le_bytes());
    let err = segment_capture_as(&input[..], Vec::new(), 1500, None).unwrap_err();
    let StreamError::Read { at, source } = &err else {
        panic!("expected a read error, found {err}")
    };
    assert_eq!((at.record, at.offset), (3, epb as u64));
    assert!(
        matches!(
            source,
            InputError::UnknownInterface {
                interface: 7,
                known: 1
            }
        ),
        "{source}"
    );
}

// --- Real captures (root) -------------------------------------------------

/// Kills and reaps a child process when dropped, also when the test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test, saying what is missing, when `tool` is not installed.
fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "this test needs {tool} (bash .ci/install-deps installs it)"
    );
}

/// Starts `argv` in `ns` and waits until it prints a line containing
/// `ready` on stderr (a capture tool listening).
fn start_capture(ns: &NetNs, argv: &[&str], ready: &str) -> Reaped {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {argv:?}: {err}"));
    let stderr = child.stderr.take().unwrap();
    let child = Reaped(child);
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(ready) => break,
            Some(Ok(line)) => seen.push(line),
            _ => panic!("{argv:?} stopped before capturing: {seen:?}"),
        }
    }
    // Keep draining stderr so the tool never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Runs TCP transfers with iperf3 in `ns` until `capture` has exited (it
/// stops by itself after `-c N` packets), at most 60 s.
fn traffic_until_done(ns: &NetNs, capture: &mut Reaped) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while capture.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the capture never got its packets"
        );
        let server = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iperf3", "-s", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _server = Reaped(server);
        std::thread::sleep(Duration::from_millis(300));
        let _ = ns.exec(&["iperf3", "-c", "127.0.0.1", "-n", "2M"]);
    }
    let status = capture.0.wait().unwrap();
    assert!(status.success(), "the capture tool failed: {status}");
}

#[test]
#[ignore = "needs root: captures with tcpdump in a network namespace (bash .ci/test runs it)"]
fn a_tcpdump_capture_with_a_snap_length_is_read() {
    require_netns!();
    require_tool("tcpdump");
    require_tool("iperf3");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("snap.pcap");
    let output = dir.path().join("out.pcap");
    let ns = NetNs::new("vsseg-tcpdump").unwrap();
    let input_arg = input.to_string_lossy().into_owned();
    let mut capture = start_capture(
        &ns,
        &[
            "tcpdump", "-Z", "root", "-i", "lo", "-s", "128", "-U", "-c", "60", "-w", &input_arg,
        ],
        "listening on",
    );
    // Ten echo frames of 1042 bytes, cut to 128, then TCP until 60.
    ns.exec(&["ping", "-c", "5", "-i", "0.2", "-s", "1000", "127.0.0.1"])
        .unwrap();
    traffic_until_done(&ns, &mut capture);

    let records = pcap_records(&std::fs::read(&input).unwrap());
    assert_eq!(records.len(), 60);
    let cut_short = records
        .iter()
        .filter(|r| (r.data.len() as u32) < r.orig_len)
        .count();
    assert!(cut_short >= 10, "the pings and TCP data were cut");

    let done = segment_files(&Args {
        mtu: 1500,
        input: input.clone(),
        output: output.clone(),
        format: None,
    })
    .unwrap();
    let stats = done.frames;
    assert_eq!(stats.cut_short as usize, cut_short);
    assert_eq!(stats.frames_in, 60);
    assert_eq!(stats.frames_out, 60, "nothing complete exceeds 1500 bytes");
    assert!(
        stats.checksums_fixed > 0,
        "TCP over the loopback carries partial checksums: {stats}"
    );
    let out = pcap_records(&std::fs::read(&output).unwrap());
    assert_eq!(out.len(), records.len());
    for (before, after) in records.iter().zip(&out) {
        if (before.data.len() as u32) < before.orig_len {
            assert_eq!(after, before, "cut-short frames pass unchanged");
        } else {
            assert_eq!(
                (after.seconds, after.fraction),
                (before.seconds, before.fraction)
            );
            assert!(after.data.len() >= 60);
            check(&after.data);
        }
    }
}

#[test]
#[ignore = "needs root: captures with tshark in a network namespace (bash .ci/test runs it)"]
fn a_tshark_pcapng_capture_is_segmented() {
    require_netns!();
    require_tool("tshark");
    require_tool("iperf3");
    let dir = tempfile::tempdir().unwrap();
    let input: PathBuf = dir.path().join("capture.pcapng");
    let ns = NetNs::new("vsseg-tshark").unwrap();
    let input_arg = input.to_string_lossy().into_owned();
    let mut capture = start_capture(
        &ns,
        &["tshark", "-i", "lo", "-c", "80", "-w", &input_arg],
        "Capturing on",
    );
    traffic_until_done(&ns, &mut capture);
    let input_bytes = std::fs::read(&input).unwrap();
    assert_eq!(input_bytes[..4], [0x0a, 0x0d, 0x0d, 0x0a], "pcapng");
    let packets_in: Vec<EnhancedPacketBlock> = pcapng_blocks(&input_bytes)
        .into_iter()
        .filter_map(|block| block.into_enhanced_packet())
        .collect();
    assert_eq!(packets_in.len(), 80);
    let large = packets_in.iter().filter(|p| p.data.len() > 1514).count();
    assert!(large > 0, "the loopback's GSO frames are larger than 1500");
    let bytes_in = tcp_payload_bytes(packets_in.iter().map(|p| &p.data[..]));

    let output = dir.path().join("out.pcapng");
    let done = segment_files(&Args {
        mtu: 1500,
        input: input.clone(),
        output: output.clone(),
        format: None,
    })
    .unwrap();
    assert_eq!(done.output_format, CaptureFormat::PcapNg);
    assert!(done.frames.cut > 0, "{}", done.frames);
    let packets_out: Vec<EnhancedPacketBlock> = pcapng_blocks(&std::fs::read(&output).unwrap())
        .into_iter()
        .filter_map(|block| block.into_enhanced_packet())
        .collect();
    assert_eq!(packets_out.len() as u64, done.frames.frames_out);
    let stamps_in: std::collections::HashSet<Duration> =
        packets_in.iter().map(|p| p.timestamp).collect();
    for packet in &packets_out {
        assert!(
            stamps_in.contains(&packet.timestamp),
            "a timestamp of the input"
        );
        let (_, l3_len) = check(&packet.data);
        assert!(l3_len <= 1500, "cut to the MTU");
    }
    let bytes_out = tcp_payload_bytes(packets_out.iter().map(|p| &p.data[..]));
    assert_eq!(bytes_out, bytes_in, "every TCP payload byte is kept");

    // The same capture as pcap.
    let as_pcap = dir.path().join("out.pcap");
    let done = segment_files(&Args {
        format: Some(CaptureFormat::Pcap),
        output: as_pcap.clone(),
        ..Args {
            mtu: 1500,
            input,
            output,
            format: None,
        }
    })
    .unwrap();
    let pcap = std::fs::read(&as_pcap).unwrap();
    let mut reader = PcapReader::new(&pcap[..]).unwrap();
    let mut count = 0;
    while let Some(packet) = reader.next_packet() {
        packet.unwrap();
        count += 1;
    }
    assert_eq!(count, done.frames.frames_out);
}
