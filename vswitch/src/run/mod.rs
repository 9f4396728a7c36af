//! `vswitch run`: the switch between the ports given on the command line or
//! in a configuration file, a control socket for `vswitch ctl`, optional
//! Prometheus metrics, and statistics lines, until SIGINT or SIGTERM.

pub mod controller;
pub mod spec;
pub mod tenant;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch::{Switch, SwitchConfig};

use crate::cli::{RunArgs, DEFAULT_CTL};
use crate::config::{ConfigError, RunConfig};
use crate::ctl::client::rates;
use crate::ctl::protocol::StatsView;
use crate::ctl::server::{group_id, ControlServer, ServeError};
use crate::metrics::{MetricsError, MetricsServer};
use controller::{ControlError, Controller};
use spec::{PortDefaults, PortSpec};

/// Why `vswitch run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings contradict each other (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration file is wrong (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The switch did not start.
    #[error("cannot start the switch: {0}")]
    Switch(#[from] vswitch::SwitchError),
    /// A port could not be added.
    #[error(transparent)]
    Port(#[from] ControlError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ServeError),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

impl RunError {
    /// Whether the error is in what the user asked (exit code 2), rather
    /// than in running it (1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RunError::Usage(_)
                | RunError::Config(_)
                | RunError::Control(ServeError::UnknownGroup { .. })
        )
    }
}

/// Everything `run` needs, from the configuration file and the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// The ports, the file's first.
    pub ports: Vec<PortSpec>,
    /// Worker threads.
    pub workers: usize,
    /// Defaults of the ports.
    pub defaults: PortDefaults,
    /// Seconds between statistics lines; zero for none.
    pub stats_interval: f64,
    /// The control socket, unless disabled.
    pub ctl: Option<PathBuf>,
    /// The group that may use it.
    pub ctl_group: Option<String>,
    /// The metrics address.
    pub metrics: Option<SocketAddr>,
}

impl RunSettings {
    /// Merges the file (if any) and the command line, which overrides it,
    /// and checks the result before anything is opened.
    pub fn resolve(args: &RunArgs) -> Result<RunSettings, RunError> {
        let file = match &args.config {
            Some(path) => RunConfig::load(path)?,
            None => RunConfig::default(),
        };
        let mut ports = file.ports.clone();
        ports.extend(args.ports.specs());
        let mut seen = HashSet::new();
        for port in &ports {
            if !seen.insert(port.name()) {
                return Err(RunError::Usage(format!(
                    "port {:?} is named twice: expected each port once",
                    port.name()
                )));
            }
        }
        let ctl = if args.no_ctl {
            None
        } else {
            Some(
                args.ctl
                    .clone()
                    .or(file.ctl.clone())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CTL)),
            )
        };
        if ports.is_empty() && ctl.is_none() {
            return Err(RunError::Usage(
                "no ports and no control socket: expected at least one --tap (or a [[port]] in --config), \
                 or a control socket to add ports through"
                    .into(),
            ));
        }
        Ok(RunSettings {
            ports,
            workers: args
                .workers
                .or(file.workers)
                .unwrap_or_else(SwitchConfig::default_workers),
            defaults: PortDefaults {
                queues: args.queues.or(file.queues).unwrap_or(1),
                mtu: args.mtu.or(file.mtu).unwrap_or(1500),
            },
            stats_interval: args.stats_interval.or(file.stats_interval).unwrap_or(5.0),
            ctl,
            ctl_group: args.ctl_group.clone().or(file.ctl_group.clone()),
            metrics: args.metrics.or(file.metrics),
        })
    }
}

/// Runs the switch until SIGINT or SIGTERM.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    let settings = RunSettings::resolve(args)?;
    let group = settings.ctl_group.as_deref().map(group_id).transpose()?;

    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(RunError::Signals)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, report.clone())
        .map_err(RunError::Signals)?;

    let switch = Switch::start(SwitchConfig::default().workers(settings.workers))?;
    let controller = Arc::new(Controller::new(switch, settings.defaults));
    for spec in &settings.ports {
        controller.add_port(spec.clone())?;
    }
    let control = settings
        .ctl
        .as_deref()
        .map(|path| ControlServer::start(path, group, controller.clone()))
        .transpose()?;
    let metrics = settings
        .metrics
        .map(|addr| MetricsServer::start(addr, controller.clone()))
        .transpose()?;
    tracing::info!(
        workers = controller.switch().workers(),
        ports = settings.ports.len(),
        "switching; SIGINT or SIGTERM stops, SIGUSR1 prints statistics"
    );

    let start = Instant::now();
    let mut last = controller.stats(None).unwrap_or_default();
    let mut last_line = start;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        controller.log_state_changes();
        let due = settings.stats_interval > 0.0
            && last_line.elapsed().as_secs_f64() >= settings.stats_interval;
        if due || report.swap(false, Ordering::Relaxed) {
            let now = controller.stats(None).unwrap_or_default();
            log_stats(&now, Some(&last));
            last = now;
            last_line = Instant::now();
        }
    }
    tracing::info!("stopping after {:.1} s", start.elapsed().as_secs_f64());
    drop(control);
    drop(metrics);
    let now = controller.stats(None).unwrap_or_default();
    let controller = match Arc::try_unwrap(controller) {
        Ok(controller) => controller,
        Err(_) => {
            // Something still holds it (it cannot, once the servers are
            // dropped): report what there is and let the process end.
            log_stats(&now, None);
            return Ok(());
        }
    };
    let final_stats = controller.stats(None).unwrap_or(now);
    let _ = controller.into_switch().shutdown();
    log_stats(&final_stats, None);
    Ok(())
}

/// Logs one statistics line per port: with `before`, the rates over the
/// interval since; without, the totals.
pub fn log_stats(now: &StatsView, before: Option<&StatsView>) {
    let interval = before.map(|b| now.uptime_ms.saturating_sub(b.uptime_ms) as f64 / 1000.0);
    let rates = before.map(|b| rates(b, now)).unwrap_or_default();
    for port in &now.ports {
        let drops: Vec<String> = port.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let drops = if drops.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", port.drops_total(), drops.join(" "))
        };
        match (interval, rates.get(&port.name)) {
            (Some(seconds), Some(r)) => tracing::info!(
                target: "vswitch::stats",
                "{} {}: over {seconds:.1} s rx {:.0} frames/s {:.3} Gbit/s | tx {:.0} frames/s {:.3} Gbit/s | \
                 {:.0} drops/s, drops total {drops} | software: {} segments, {} checksums, {} GRO merges",
                port.name, port.state, r.rx_fps, r.rx_bps / 1e9, r.tx_fps, r.tx_bps / 1e9, r.drops_ps,
                port.sw_segments, port.sw_checksums, port.gro_merges
            ),
            _ => tracing::info!(
                target: "vswitch::stats",
                "{} {}: rx {} frames {} bytes | tx {} frames {} bytes | drops {drops} | \
                 software: {} segments, {} checksums, {} GRO merges",
                port.name, port.state, port.rx_frames, port.rx_bytes, port.tx_frames, port.tx_bytes,
                port.sw_segments, port.sw_checksums, port.gro_merges
            ),
        }
    }
}
