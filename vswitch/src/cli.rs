//! The command line of `vswitch`: every command and its options, parsed by
//! clap. Limits are checked here, before anything is opened, and an error
//! states the range it expected.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::run::spec::{PortSpec, SpecError, TapSpec, UplinkPortSpec, VhostUserSpec};

/// Smallest MTU a port may have (`run`, `demo`, port specs): the IPv4
/// minimum datagram every host must take.
pub const MTU_MIN: u16 = 576;
/// Largest MTU a port may have: a 9 KiB jumbo frame.
pub const MTU_MAX: u16 = 9216;
/// Most workers `run` and `demo` start.
pub const WORKERS_MAX: usize = 64;
/// Most queues per port.
pub const QUEUES_MAX: usize = 64;
/// The control socket `run` listens on and `ctl` connects to by default.
pub const DEFAULT_CTL: &str = "/run/vswitch/vswitch.ctl";

/// A virtual switch dataplane with host-side segmentation and checksum
/// offload.
#[derive(Debug, Parser)]
#[command(name = "vswitch", version = vswitch::VERSION, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push TCP traffic between two in-memory guests through the switch.
    Demo(DemoArgs),
    /// Switch between TAP devices until SIGINT or SIGTERM (Linux).
    Run(Box<RunArgs>),
    /// Re-segment a pcap or pcapng capture for an MTU: cut oversized TCP
    /// frames and recompute every IPv4, TCP and UDP checksum.
    #[command(
        long_about = "Reads a pcap or pcapng capture, cuts every TCP frame whose IP packet exceeds \
--mtu into segments of the MTU, recomputes every IPv4 header, TCP and UDP checksum, pads frames \
shorter than 60 bytes, and writes the result in the input's format (or --format). Frames that \
are not IP, and frames the capture's snap length cut short, pass unchanged. The input is never \
overwritten (an output that is the input, a hard link or a symbolic link to it, is refused), and \
the output is written to a temporary file beside it that replaces it only when the whole capture \
was processed: after an error there is no partial output, and the error says which record, at \
which byte offset, was reached."
    )]
    Segment(SegmentArgs),
    /// Talk to a running `vswitch run` through its control socket.
    Ctl(Box<CtlArgs>),
    /// Print the version.
    Version,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn mtu_value() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(i64::from(MTU_MIN)..=i64::from(MTU_MAX))
}

fn workers_value() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=WORKERS_MAX as u64)
}

fn queues_value() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=QUEUES_MAX as u64)
}

fn seconds(text: &str, max: f64, allow_zero: bool) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("expected a number of seconds, found {text:?}"))?;
    let low_ok = if allow_zero {
        value >= 0.0
    } else {
        value > 0.0
    };
    if !(low_ok && value <= max) {
        let low = if allow_zero { "0" } else { "above 0" };
        return Err(format!("expected {low} to {max} seconds, found {value}"));
    }
    Ok(value)
}

fn stats_seconds(text: &str) -> Result<f64, String> {
    seconds(text, 86_400.0, true)
}

fn demo_seconds(text: &str) -> Result<f64, String> {
    seconds(text, 3600.0, false)
}

fn interval_seconds(text: &str) -> Result<f64, String> {
    seconds(text, 86_400.0, false)
}

fn tap_spec(text: &str) -> Result<TapSpec, SpecError> {
    text.parse()
}

fn vhost_user_spec(text: &str) -> Result<VhostUserSpec, SpecError> {
    text.parse()
}

fn uplink_spec(text: &str) -> Result<UplinkPortSpec, SpecError> {
    text.parse()
}

fn vlan_value(text: &str) -> Result<vswitch::VlanId, String> {
    crate::run::spec::parse_vlan(text)
}

fn vlan_list(text: &str) -> Result<String, String> {
    crate::run::spec::parse_vlan_list(text)?;
    Ok(text.to_string())
}

/// What B's port takes in `demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EgressOffloadArg {
    /// Plain, checksummed, MTU-sized frames only.
    None,
    /// Partial checksums, no segmentation.
    Csum,
    /// Partial checksums and TSO.
    Tso,
}

/// Options of `vswitch demo`.
#[derive(Debug, Args)]
#[command(
    long_about = "Guest A sends --flows TCP flows of 64 KiB TSO frames with partial checksums \
to guest B through the switch for --seconds. B's port takes what --egress-offload says \
(none: the switch segments and checksums everything in software; csum: B completes \
checksums, the switch segments; tso: large frames pass through). B verifies every frame. \
Prints throughput, frame rates, each worker's share and the drops (expected 0); exits \
non-zero on any error."
)]
pub struct DemoArgs {
    /// Number of TCP flows (1 to 1024).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub flows: u16,
    /// How long A sends, in seconds (above 0, at most 3600).
    #[arg(long, default_value_t = 5.0, value_parser = demo_seconds)]
    pub seconds: f64,
    /// Switch workers (1 to 64; default: the number of CPUs, at most 8).
    #[arg(long, value_parser = workers_value())]
    pub workers: Option<usize>,
    /// The MTU of both guests (576 to 9216).
    #[arg(long, default_value_t = 1500, value_parser = mtu_value())]
    pub mtu: u16,
    /// What B's port takes.
    #[arg(long, value_enum, default_value_t = EgressOffloadArg::None)]
    pub egress_offload: EgressOffloadArg,
}

impl DemoArgs {
    /// The library's options.
    pub fn options(&self) -> vswitch::demo::DemoOptions {
        use vswitch::demo::EgressOffload;
        vswitch::demo::DemoOptions {
            flows: self.flows,
            seconds: self.seconds,
            workers: self
                .workers
                .unwrap_or_else(vswitch::SwitchConfig::default_workers),
            mtu: self.mtu,
            egress_offload: match self.egress_offload {
                EgressOffloadArg::None => EgressOffload::None,
                EgressOffloadArg::Csum => EgressOffload::Checksum,
                EgressOffloadArg::Tso => EgressOffload::Tso,
            },
        }
    }
}

/// The ports of `run` and `ctl add-port`: one flag per port kind. New
/// kinds add a flag here and a variant to [`PortSpec`].
#[derive(Debug, Clone, Default, Args)]
pub struct PortArgs {
    /// A TAP device: NAME[:offload=none|csum|tso][:gro=USEC|off][:queues=N][:mtu=N]
    /// [:vlan=N | :trunk=LIST[:native=N]][:max-learned=N].
    /// offload=tso (default): the device takes partial checksums and TSO/USO
    /// frames; csum: partial checksums only, the switch segments; none: plain
    /// frames, the switch segments and checksums in software. gro=USEC
    /// (default 1000): the kernel takes in what the switch writes through NAPI
    /// and GRO, flushed at the latest USEC microseconds after the last write;
    /// gro=off: every frame runs through the kernel's stack alone.
    #[arg(long = "tap", value_name = "SPEC", value_parser = tap_spec)]
    pub tap: Vec<TapSpec>,
    /// A guest over vhost-user: PATH[:client][:queues=N][:name=NAME][:mtu=N]
    /// [:lend=on|off][:vlan=N | :trunk=LIST[:native=N]][:max-learned=N].
    /// The switch listens on PATH (QEMU: -chardev socket,path=PATH), or with
    /// `client` connects to a VMM listening there (QEMU: server=on) and
    /// reconnects when it goes away. queues=N: queue pairs offered (1 to 8,
    /// default --queues). The port's name is NAME, else PATH's file stem.
    /// lend=on: the payload of a large TSO frame the guest sends stays in
    /// its memory until the receiving guest's port copies it out (one copy
    /// instead of two; the guest's buffer is returned only then); off
    /// (default): it is copied into the switch's memory at once.
    #[arg(long = "vhost-user", value_name = "SPEC", value_parser = vhost_user_spec)]
    pub vhost_user: Vec<VhostUserSpec>,
    /// An interface (a physical NIC, a veth end) through AF_PACKET:
    /// IFACE[:offload=auto|none|csum|tso][:queues=N][:mtu=N][:refresh-ms=N]
    /// [:qdisc-bypass=on|off][:netns=PATH][:vlan=N | :trunk=LIST[:native=N]]
    /// [:max-learned=N]. offload=auto (default) follows what the NIC does
    /// (ethtool features, re-read while running), so the switch segments
    /// exactly when the NIC lacks TSO. The MTU is the interface's unless
    /// mtu= says otherwise. The interface's own IP traffic then goes through
    /// the switch too.
    #[arg(long = "uplink", value_name = "SPEC", value_parser = uplink_spec)]
    pub uplink: Vec<UplinkPortSpec>,
}

impl PortArgs {
    /// The ports, in the order of their kinds' flags.
    pub fn specs(&self) -> Vec<PortSpec> {
        let taps = self.tap.iter().cloned().map(PortSpec::Tap);
        let guests = self.vhost_user.iter().cloned().map(PortSpec::VhostUser);
        let uplinks = self.uplink.iter().cloned().map(PortSpec::Uplink);
        taps.chain(guests).chain(uplinks).collect()
    }
}

/// Options of `vswitch run`.
#[derive(Debug, Args)]
#[command(
    long_about = "Opens each port (creating a TAP device with a virtio-net header when it does \
not exist, setting its MTU and bringing it up) and switches frames between them until SIGINT \
or SIGTERM. SIGUSR1 prints the statistics. A control socket (--ctl) lets `vswitch ctl` show, \
add and remove ports while traffic runs."
)]
pub struct RunArgs {
    /// The ports.
    #[command(flatten)]
    pub ports: PortArgs,
    /// A TOML file declaring ports, VLAN profiles, limits, workers and the
    /// control and metrics addresses; the command line adds to it and
    /// overrides its settings.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Worker threads (1 to 64; default: the number of CPUs, at most 8).
    #[arg(long, value_parser = workers_value())]
    pub workers: Option<usize>,
    /// Queues per port unless its spec says queues=N (1 to 64; default 1).
    #[arg(long, value_parser = queues_value())]
    pub queues: Option<usize>,
    /// MTU of the ports unless a spec says mtu=N (576 to 9216; default 1500).
    #[arg(long, value_parser = mtu_value())]
    pub mtu: Option<u16>,
    /// Seconds between statistics lines (0: only on SIGUSR1 and at exit;
    /// default 5).
    #[arg(long, value_parser = stats_seconds)]
    pub stats_interval: Option<f64>,
    /// The control socket [default: /run/vswitch/vswitch.ctl].
    #[arg(long, value_name = "PATH")]
    pub ctl: Option<PathBuf>,
    /// Let this group use the control socket (mode 0660) instead of only
    /// this user (mode 0600).
    #[arg(long, value_name = "GROUP")]
    pub ctl_group: Option<String>,
    /// Run without a control socket.
    #[arg(long, conflicts_with_all = ["ctl", "ctl_group"])]
    pub no_ctl: bool,
    /// Serve every counter in the Prometheus text format over HTTP at ADDR
    /// (a port alone, as `:9477`, listens on 127.0.0.1).
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr)]
    pub metrics: Option<SocketAddr>,
}

/// A metrics address: `HOST:PORT`, or `PORT` / `:PORT` on the loopback.
pub fn metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!("expected HOST:PORT (as 127.0.0.1:9477) or a port alone, found {text:?}")
    })
}

/// The format `vswitch segment` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureFormatArg {
    /// The classic libpcap format (tcpdump's default).
    Pcap,
    /// pcapng (tshark's default).
    Pcapng,
}

/// Options of `vswitch segment`.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// The egress MTU: the largest IP packet (68 to 65535).
    #[arg(long, value_parser = clap::value_parser!(u16).range(i64::from(vswitch::pcap_segment::MIN_MTU)..))]
    pub mtu: u16,
    /// The output's format [default: the input's].
    #[arg(long, value_enum)]
    pub format: Option<CaptureFormatArg>,
    /// The capture to read (pcap or pcapng).
    pub input: PathBuf,
    /// The capture to write; replaced only on success.
    pub output: PathBuf,
}

impl SegmentArgs {
    /// The library's options.
    pub fn options(&self) -> vswitch::pcap_segment::Args {
        use vswitch::pcap_segment::CaptureFormat;
        vswitch::pcap_segment::Args {
            mtu: self.mtu,
            input: self.input.clone(),
            output: self.output.clone(),
            format: self.format.map(|format| match format {
                CaptureFormatArg::Pcap => CaptureFormat::Pcap,
                CaptureFormatArg::Pcapng => CaptureFormat::PcapNg,
            }),
        }
    }
}

/// Options of `vswitch ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control socket of the running switch [default: /run/vswitch/vswitch.ctl].
    #[arg(long, value_name = "PATH", global = true)]
    pub ctl: Option<PathBuf>,
    /// Print the answer as JSON (with `stats --interval`, one object per
    /// line, with the rates).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Requests of `vswitch ctl`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every port: kind, state, queues, MTU, offloads, VLAN profile, address
    /// limit; and the workers.
    Show,
    /// Open a port and add it to the running switch.
    AddPort {
        /// The port (one flag, as for `run`).
        #[command(flatten)]
        ports: PortArgs,
    },
    /// Remove a port from the running switch and print its final counters.
    DelPort {
        /// The port's name.
        name: String,
    },
    /// The learned addresses: MAC, VLAN, port, age. `fdb flush` forgets them.
    Fdb {
        /// Only this VLAN.
        #[arg(long, value_parser = vlan_value)]
        vlan: Option<vswitch::VlanId>,
        /// Only this port.
        #[arg(long)]
        port: Option<String>,
        /// `flush`: forget every learned address.
        #[command(subcommand)]
        action: Option<FdbAction>,
    },
    /// Counters: frames, bytes, drops by reason, software work, with rates.
    Stats {
        /// Only this port.
        port: Option<String>,
        /// Print again every S seconds, with rates over the interval.
        #[arg(long, value_name = "S", value_parser = interval_seconds)]
        interval: Option<f64>,
    },
    /// Change a port's VLAN profile, address limit, isolation, guards or
    /// rate limits while traffic runs.
    SetPort {
        /// The port's name.
        name: String,
        /// Make it an access port of this VLAN.
        #[arg(long, value_parser = vlan_value, conflicts_with_all = ["trunk", "native"])]
        vlan: Option<vswitch::VlanId>,
        /// Make it a trunk carrying these VLANs (`10,20-30`).
        #[arg(long, value_name = "LIST", value_parser = vlan_list)]
        trunk: Option<String>,
        /// The trunk's untagged VLAN.
        #[arg(long, value_parser = vlan_value)]
        native: Option<vswitch::VlanId>,
        /// Most addresses learned on the port.
        #[arg(long, value_name = "N")]
        max_learned: Option<usize>,
        /// Isolate the port: it reaches only ports that are not isolated.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        isolated: Option<String>,
        /// Guards on: source, neighbor, dhcp, router, all or none
        /// (`source,dhcp`).
        #[arg(long, value_name = "LIST")]
        guard: Option<String>,
        /// The port's IPv4 addresses and IPv6 prefixes
        /// (`10.0.0.2,2001:db8::/64`), or none.
        #[arg(long, value_name = "LIST")]
        ip: Option<String>,
        /// Bytes a second the port may send, throttled:
        /// RATE[/BURST[/INITIAL]] (125M is 1 Gbit/s), or off.
        #[arg(long, value_name = "RATE")]
        from_bytes: Option<String>,
        /// Frames a second the port may send: RATE[/BURST[/INITIAL]], or off.
        #[arg(long, value_name = "RATE")]
        from_frames: Option<String>,
        /// Bytes a second the port may be sent, dropped beyond:
        /// RATE[/BURST[/INITIAL]], or off.
        #[arg(long, value_name = "RATE")]
        to_bytes: Option<String>,
        /// Frames a second the port may be sent: RATE[/BURST[/INITIAL]], or off.
        #[arg(long, value_name = "RATE")]
        to_frames: Option<String>,
    },
}

/// `vswitch ctl fdb flush`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum FdbAction {
    /// Forget every learned address.
    Flush,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vswitch").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        match parse(args)?.command {
            Command::Run(run) => Ok(*run),
            other => panic!("expected run, found {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn both_value_forms_are_taken() {
        let a = run_args(&["run", "--tap", "a", "--workers", "2", "--mtu=9000"]).unwrap();
        assert_eq!(a.workers, Some(2));
        assert_eq!(a.mtu, Some(9000));
        let b = run_args(&["run", "--tap=a:offload=csum", "--tap", "b"]).unwrap();
        assert_eq!(b.ports.tap.len(), 2);
    }

    #[test]
    fn limits_state_their_range() {
        let err = run_args(&["run", "--tap", "a", "--mtu", "70000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("576..=9216"), "{err}");
        let err = run_args(&["run", "--tap", "a", "--workers", "1000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1..=64"), "{err}");
        assert!(run_args(&["run", "--tap", "a", "--workers", "0"]).is_err());
        let err = parse(&["demo", "--mtu", "70000"]).unwrap_err().to_string();
        assert!(err.contains("576..=9216"), "{err}");
        let err = run_args(&["run", "--tap", "a:mtu=70000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("576 to 9216"), "{err}");
        assert!(run_args(&["run", "--tap", "a", "--stats-interval", "-1"]).is_err());
        assert!(run_args(&["run", "--tap", "a", "--bogus"]).is_err());
        assert!(run_args(&["run", "--tap"]).is_err());
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let err = run_args(&["run", "--mtu", "x"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["segment", "--mtu", "67", "a", "b"]).unwrap_err();
        assert!(err.to_string().contains("68..=65535"), "{err}");
        assert!(parse(&["segment", "--mtu=68", "a", "b"]).is_ok());
        let Command::Segment(segment) =
            parse(&["segment", "--mtu", "1500", "--format=pcapng", "a", "b"])
                .unwrap()
                .command
        else {
            panic!("expected segment")
        };
        let options = segment.options();
        assert_eq!(
            options.format,
            Some(vswitch::pcap_segment::CaptureFormat::PcapNg)
        );
        assert_eq!(options.input, std::path::Path::new("a"));
        assert!(parse(&["segment", "--mtu", "1500", "--format", "erf", "a", "b"]).is_err());
        let help = parse(&["segment", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(help.exit_code(), 0);
    }

    #[test]
    fn demo_options_map_to_the_library() {
        let Command::Demo(demo) = parse(&[
            "demo",
            "--flows",
            "4",
            "--egress-offload",
            "tso",
            "--seconds",
            "0.5",
        ])
        .unwrap()
        .command
        else {
            panic!("expected demo")
        };
        let options = demo.options();
        assert_eq!(options.flows, 4);
        assert_eq!(options.egress_offload, vswitch::demo::EgressOffload::Tso);
        for bad in [
            &["demo", "--flows", "0"][..],
            &["demo", "--mtu", "100"],
            &["demo", "--egress-offload", "gso"],
            &["demo", "--seconds", "-1"],
            &["demo", "--seconds", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ctl_commands_parse() {
        let Command::Ctl(ctl) =
            parse(&["ctl", "--ctl", "/tmp/x.ctl", "fdb", "--vlan", "10", "flush"])
                .unwrap()
                .command
        else {
            panic!("expected ctl")
        };
        assert_eq!(ctl.ctl.as_deref(), Some(std::path::Path::new("/tmp/x.ctl")));
        assert!(matches!(
            ctl.command,
            CtlCommand::Fdb {
                action: Some(FdbAction::Flush),
                ..
            }
        ));
        assert!(parse(&["ctl", "fdb", "--vlan", "4095"]).is_err());
        assert!(parse(&["ctl", "add-port", "--tap", "t3:offload=csum"]).is_ok());
        assert!(parse(&["ctl", "set-port", "t3", "--vlan", "5", "--trunk", "6"]).is_err());
        assert!(parse(&["ctl", "stats", "t3", "--interval", "0"]).is_err());
    }

    #[test]
    fn metrics_addresses_default_to_the_loopback() {
        assert_eq!(
            metrics_addr(":9477").unwrap(),
            "127.0.0.1:9477".parse().unwrap()
        );
        assert_eq!(
            metrics_addr("9477").unwrap(),
            "127.0.0.1:9477".parse().unwrap()
        );
        assert_eq!(
            metrics_addr("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert!(metrics_addr("localhost").is_err());
    }
}
