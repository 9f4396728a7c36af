//! `vswitch run`: switch between TAP devices until SIGINT or SIGTERM.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch_ports::tap::{self, KernelReceive, TapConfig, TapOffloads, TapPort};

use crate::cli::{number, value};
use crate::{PortProfile, Switch, SwitchConfig, SwitchStats, VlanId};

/// Usage text of `vswitch run`.
pub const USAGE: &str = "\
usage: vswitch run --tap NAME[:offload=none|csum|tso][:gro=USEC|off] [--tap ...]
                   [--workers N] [--queues N] [--mtu N] [--stats-interval S]

Creates (or attaches to) each TAP device with a virtio-net header and
switches frames between them until SIGINT or SIGTERM.

  offload=tso   (default) the device takes partial checksums and TSO/USO
                frames: large frames pass through it unsegmented
  offload=csum  partial checksums only: the switch segments
  offload=none  only plain, checksummed, MTU-sized frames: the switch
                segments and checksums in software
  gro=USEC      (default 1000) the kernel takes in what the switch writes
                through NAPI and GRO, merging a flow's TCP segments before
                its stack; a merge is flushed at the latest USEC
                microseconds after the last write
  gro=off       every frame written runs through the kernel's stack alone
  --queues N    open each device with N queues (IFF_MULTI_QUEUE), default 1
  --mtu N       the MTU the switch segments to for these devices, default 1500
  --stats-interval S   print statistics every S seconds (0: only at exit)
";

/// How much a TAP device is asked to offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapOffloadMode {
    /// Plain frames only.
    None,
    /// Partial checksums.
    Checksum,
    /// Partial checksums and segmentation.
    Tso,
}

impl TapOffloadMode {
    /// The TAP offload flags for this mode.
    pub fn offloads(self) -> TapOffloads {
        match self {
            TapOffloadMode::None => TapOffloads::NONE,
            TapOffloadMode::Checksum => TapOffloads::CHECKSUM,
            TapOffloadMode::Tso => TapOffloads::FULL,
        }
    }
}

/// One `--tap` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    /// Interface name.
    pub name: String,
    /// What it offloads.
    pub offload: TapOffloadMode,
    /// How the kernel takes in what the switch writes to it.
    pub receive: KernelReceive,
}

impl std::str::FromStr for TapSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        if name.is_empty() || name.len() > tap::IFNAME_MAX {
            return Err(format!(
                "--tap {spec:?}: expected an interface name of 1 to {} bytes",
                tap::IFNAME_MAX
            ));
        }
        let mut offload = TapOffloadMode::Tso;
        let mut receive = KernelReceive::default();
        for option in parts {
            match option {
                "offload=none" => offload = TapOffloadMode::None,
                "offload=csum" => offload = TapOffloadMode::Checksum,
                "offload=tso" => offload = TapOffloadMode::Tso,
                "gro=off" => receive = KernelReceive::PerFrame,
                other if other.starts_with("gro=") => {
                    let micros = other["gro=".len()..]
                        .parse::<u64>()
                        .ok()
                        .filter(|&micros| (1..=1_000_000).contains(&micros))
                        .ok_or_else(|| {
                            format!(
                                "--tap {spec:?}: {other:?} expects off or a flush timeout \
                                 of 1 to 1000000 microseconds"
                            )
                        })?;
                    receive = KernelReceive::Coalesced {
                        flush: Duration::from_micros(micros),
                    };
                }
                other => {
                    return Err(format!(
                        "--tap {spec:?}: unknown option {other:?}, expected \
                         offload=none|csum|tso or gro=USEC|off"
                    ))
                }
            }
        }
        Ok(TapSpec {
            name,
            offload,
            receive,
        })
    }
}

/// Parsed options of `vswitch run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// The TAP devices.
    pub taps: Vec<TapSpec>,
    /// Worker threads.
    pub workers: usize,
    /// Queues per device.
    pub queues: usize,
    /// MTU of the devices.
    pub mtu: u16,
    /// Seconds between statistics lines; zero for none until exit.
    pub stats_interval: f64,
}

impl RunOptions {
    /// Parses the arguments after `run`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = RunOptions {
            taps: Vec::new(),
            workers: SwitchConfig::default_workers(),
            queues: 1,
            mtu: 1500,
            stats_interval: 5.0,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--tap" => options.taps.push(value(&mut args, arg)?.parse()?),
                "--workers" => options.workers = number(value(&mut args, arg)?, arg)?,
                "--queues" => options.queues = number(value(&mut args, arg)?, arg)?,
                "--mtu" => options.mtu = number(value(&mut args, arg)?, arg)?,
                "--stats-interval" => options.stats_interval = number(value(&mut args, arg)?, arg)?,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if options.taps.is_empty() {
            return Err("at least one --tap is needed".into());
        }
        if options.workers == 0 || options.queues == 0 {
            return Err("--workers and --queues must be at least 1".into());
        }
        if options.mtu < 576 {
            return Err(format!("--mtu {}: expected at least 576", options.mtu));
        }
        if !(options.stats_interval >= 0.0 && options.stats_interval.is_finite()) {
            return Err("--stats-interval: expected a non-negative number of seconds".into());
        }
        Ok(options)
    }
}

/// One line per port: frames and bytes each way, drops, software work.
pub fn format_stats(stats: &SwitchStats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    for port in &stats.ports {
        let s = &port.stats;
        let _ = writeln!(
            out,
            "  {:<12} rx {:>10} frames {:>8.3} Gbit/s | tx {:>10} frames {:>8.3} Gbit/s | \
             drops {} | software: {} segments, {} checksums",
            port.name,
            s.rx_frames,
            s.rx_bytes as f64 * 8.0 / secs / 1e9,
            s.tx_frames,
            s.tx_bytes as f64 * 8.0 / secs / 1e9,
            s.drops.total(),
            s.software.segments,
            s.software.checksums,
        );
    }
    out
}

/// Runs the switch on TAP devices until SIGINT or SIGTERM.
pub fn run(args: &[String]) -> Result<(), String> {
    let options = RunOptions::parse(args)?;
    let stop =
        tap::termination_flag().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let switch = Switch::start(SwitchConfig::default().workers(options.workers))
        .map_err(|e| format!("cannot start the switch: {e}"))?;
    for spec in &options.taps {
        let config = TapConfig::new(spec.offload.offloads())
            .queues(options.queues)
            .mtu(options.mtu)
            .receive(spec.receive);
        let port = TapPort::open_with(&spec.name, config)
            .map_err(|e| format!("cannot open TAP {}: {e}", spec.name))?;
        // The device may already be up or live in another namespace by now.
        let _ = tap::set_interface_up(vswitch_ports::Port::name(&port));
        let receive = match port.kernel_receive() {
            KernelReceive::PerFrame => "per frame".to_string(),
            KernelReceive::Coalesced { flush } => {
                format!("GRO, flushed within {} us", flush.as_micros())
            }
        };
        println!(
            "{}: {} queue(s), kernel accepted offloads {:?}, kernel receive {receive}",
            vswitch_ports::Port::name(&port),
            port.queues().len(),
            port.offloads()
        );
        switch
            .add_port(Arc::new(port), PortProfile::access(VlanId::DEFAULT))
            .map_err(|e| format!("cannot add TAP {}: {e}", spec.name))?;
    }
    println!(
        "switching with {} worker(s); SIGINT or SIGTERM stops",
        switch.workers()
    );
    let start = Instant::now();
    let mut last_print = start;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if options.stats_interval > 0.0
            && last_print.elapsed().as_secs_f64() >= options.stats_interval
        {
            last_print = Instant::now();
            print!("{}", format_stats(&switch.stats(), start.elapsed()));
        }
    }
    let elapsed = start.elapsed();
    let stats = switch.shutdown();
    println!("stopped after {:.1} s", elapsed.as_secs_f64());
    print!("{}", format_stats(&stats, elapsed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args;

    #[test]
    fn tap_specs_parse() {
        assert_eq!(
            "tap0".parse::<TapSpec>().unwrap(),
            TapSpec {
                name: "tap0".into(),
                offload: TapOffloadMode::Tso,
                receive: KernelReceive::default(),
            }
        );
        assert_eq!(
            "tap1:offload=none:gro=250".parse::<TapSpec>().unwrap(),
            TapSpec {
                name: "tap1".into(),
                offload: TapOffloadMode::None,
                receive: KernelReceive::Coalesced {
                    flush: Duration::from_micros(250)
                },
            }
        );
        assert_eq!(
            "tap1:gro=off".parse::<TapSpec>().unwrap().receive,
            KernelReceive::PerFrame
        );
        assert!("tap1:offload=fast".parse::<TapSpec>().is_err());
        for bad in ["gro=", "gro=0", "gro=-5", "gro=1000001", "gro=on"] {
            assert!(format!("tap1:{bad}").parse::<TapSpec>().is_err(), "{bad}");
        }
        assert!("".parse::<TapSpec>().is_err());
        assert!("a-name-far-too-long-for-linux".parse::<TapSpec>().is_err());
    }

    #[test]
    fn options_parse_and_are_checked() {
        let o = RunOptions::parse(&args(&[
            "--tap",
            "a",
            "--tap",
            "b:offload=csum",
            "--workers",
            "2",
            "--stats-interval",
            "0",
        ]))
        .unwrap();
        assert_eq!(o.taps.len(), 2);
        assert_eq!(o.workers, 2);
        assert_eq!(o.stats_interval, 0.0);
        assert!(RunOptions::parse(&args(&[])).is_err());
        assert!(RunOptions::parse(&args(&["--tap", "a", "--workers", "0"])).is_err());
        assert!(RunOptions::parse(&args(&["--tap", "a", "--mtu", "100"])).is_err());
        assert!(RunOptions::parse(&args(&["--tap", "a", "--bogus"])).is_err());
        assert!(RunOptions::parse(&args(&["--tap"])).is_err());
    }
}
