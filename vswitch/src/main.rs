//! The `vswitch` command.
#![deny(unsafe_code)]

use std::process::ExitCode;

const USAGE: &str = "\
usage: vswitch <command> [options]

commands:
  help        print this message
  version     print the version
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
        Some(other) => {
            eprintln!("vswitch: unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
