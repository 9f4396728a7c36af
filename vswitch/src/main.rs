//! The `vswitch` command.
#![deny(unsafe_code)]

use std::process::ExitCode;

const USAGE: &str = "\
usage: vswitch <command> [options]

commands:
  demo        push TCP traffic between two in-memory guests through the switch
  run         switch between TAP devices (Linux)
  help        print this message
  version     print the version
  segment     --mtu N IN.pcap OUT.pcap: cut oversized TCP frames of a capture
              to the MTU and recompute every IPv4, TCP and UDP checksum

`vswitch <command> --help` describes a command's options.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let wants_help = rest.iter().any(|a| a == "-h" || a == "--help");
    let result = match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("version" | "-V" | "--version") => {
            println!("vswitch {}", vswitch::VERSION);
            Ok(())
        }
        Some("demo") if wants_help => {
            print!("{}", vswitch::demo::USAGE);
            Ok(())
        }
        Some("demo") => vswitch::demo::run(rest),
        #[cfg(target_os = "linux")]
        Some("run") if wants_help => {
            print!("{}", vswitch::run_tap::USAGE);
            Ok(())
        }
        #[cfg(target_os = "linux")]
        Some("run") => vswitch::run_tap::run(rest),
        Some("segment") => match vswitch::pcap_segment::main(&args[1..]) {
            Ok(stats) => {
                println!("vswitch segment: {stats}");
                Ok(())
            }
            Err(err @ vswitch::pcap_segment::PcapSegmentError::Usage { .. }) => {
                eprintln!("vswitch segment: {err}");
                return ExitCode::from(2);
            }
            Err(err) => Err(format!("segment: {err}")),
        },
        Some(other) => {
            eprintln!("vswitch: unknown command '{other}'\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vswitch: {message}");
            ExitCode::FAILURE
        }
    }
}
