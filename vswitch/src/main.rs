//! The `vswitch` command. Exit codes: 0 success, 1 a runtime error, 2 a
//! usage error (a bad option, value or configuration file).
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

mod cli;
mod config;
mod ctl;
mod metrics;
mod run;

use cli::{Cli, Command};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let failure = |message: String, code: u8| {
        eprintln!("vswitch: {message}");
        ExitCode::from(code)
    };
    match cli.command {
        Command::Version => {
            println!("vswitch {}", vswitch::VERSION);
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "vswitch",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Demo(args) => match vswitch::demo::run(&args.options()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => failure(format!("demo: {message}"), 1),
        },
        Command::Segment(args) => match vswitch::pcap_segment::segment_files(&args.options()) {
            Ok(done) => {
                println!(
                    "vswitch segment: {} ({} in, {} out)",
                    done.frames, done.input_format, done.output_format
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                let code = if err.is_usage() { 2 } else { 1 };
                failure(format!("segment: {err}"), code)
            }
        },
        Command::Run(args) => {
            init_logging();
            match run::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    let code = if err.is_usage() { 2 } else { 1 };
                    failure(format!("run: {err}"), code)
                }
            }
        }
        Command::Ctl(args) => match ctl::client::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err @ ctl::client::ClientError::Usage(_)) => failure(format!("ctl: {err}"), 2),
            Err(err) => failure(format!("ctl: {err}"), 1),
        },
    }
}
