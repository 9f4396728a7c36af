//! The `vswitch` command.
#![deny(unsafe_code)]

use std::process::ExitCode;

const USAGE: &str = "\
usage: vswitch <command> [options]

commands:
  help        print this message
  version     print the version
  segment     --mtu N IN.pcap OUT.pcap: cut oversized TCP frames of a capture
              to the MTU and recompute every IPv4, TCP and UDP checksum
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("version" | "-V" | "--version") => {
            println!("vswitch {}", vswitch::VERSION);
            ExitCode::SUCCESS
        }
        Some("segment") => match vswitch::pcap_segment::main(&args[1..]) {
            Ok(stats) => {
                println!("vswitch segment: {stats}");
                ExitCode::SUCCESS
            }
            Err(err @ vswitch::pcap_segment::PcapSegmentError::Usage { .. }) => {
                eprintln!("vswitch segment: {err}");
                ExitCode::from(2)
            }
            Err(err) => {
                eprintln!("vswitch segment: {err}");
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!("vswitch: unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
