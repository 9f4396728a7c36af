//! `vswitch segment` as a user runs it: an output that is the input is a
//! usage error (exit code 2) that leaves the input as it was; a capture cut
//! short is a runtime error (exit code 1) that writes nothing; a capture
//! that reads through prints the summary line. Needs no privileges.

use std::path::Path;
use std::process::Output;

/// A microsecond pcap file holding `frames` whole.
fn pcap(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, frame) in frames.iter().enumerate() {
        let len = frame.len() as u32;
        for word in [i as u32, 0, len, len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

/// An ARP-typed frame: not IP, passed unchanged.
fn not_ip_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0x11; 46]);
    frame
}

fn segment(input: &Path, output: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .args(["segment", "--mtu", "1500"])
        .arg(input)
        .arg(output)
        .output()
        .unwrap()
}

#[test]
fn the_input_as_output_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.pcap");
    let capture = pcap(&[&not_ip_frame()]);
    std::fs::write(&input, &capture).unwrap();
    let link = dir.path().join("link.pcap");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for output in [&input, &link] {
        let out = segment(&input, output);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("is the input"), "{stderr}");
        assert_eq!(std::fs::read(&input).unwrap(), capture, "input intact");
    }
}

#[test]
fn a_capture_cut_short_writes_nothing_and_exits_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cut.pcap");
    let frame = not_ip_frame();
    let capture = pcap(&[&frame, &frame]);
    std::fs::write(&input, &capture[..capture.len() - 5]).unwrap();
    let output = dir.path().join("out.pcap");
    let out = segment(&input, &output);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let second_at = 24 + 16 + frame.len();
    assert!(
        stderr.contains(&format!("record 2 (byte offset {second_at})")),
        "{stderr}"
    );
    assert!(!output.exists());
}

#[test]
fn a_capture_that_reads_through_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let capture = pcap(&[&not_ip_frame()]);
    std::fs::write(&input, &capture).unwrap();
    let output = dir.path().join("out.pcap");
    let out = segment(&input, &output);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read 1 frames, wrote 1"), "{stdout}");
    assert!(stdout.contains("(pcap in, pcap out)"), "{stdout}");
    assert_eq!(std::fs::read(&output).unwrap(), capture);
}
