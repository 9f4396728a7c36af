//! `vswitch ctl`: one request to a running switch's control socket, its
//! answer as a table (or as JSON with `--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::protocol::{
    FdbView, Flushed, PortCounters, PortRates, PortView, RemovedPort, Request, Response, Show,
    StatsView,
};
use crate::cli::{CtlArgs, CtlCommand, FdbAction, DEFAULT_CTL};

/// Why a `ctl` request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}{hint}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
        /// A hint.
        hint: &'static str,
    },
    /// The connection broke.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The answer was not what the protocol says.
    #[error("control socket {path}: expected a JSON response line, found {found:?}: {problem}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// The line.
        found: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The switch refused the request.
    #[error("{message}")]
    Refused {
        /// The error's kind.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The command line was incomplete.
    #[error("{0}")]
    Usage(String),
}

/// A connection to a switch's control socket.
pub struct Connection {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Connects to the socket at `path`.
    pub fn open(path: &Path) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            hint: match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    " (hint: is `vswitch run` running? give its --ctl PATH)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (hint: the socket is for the switch's user, or its --ctl-group)"
                }
                _ => "",
            },
            source,
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Connection {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and reads its answer.
    pub fn request(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let io_error = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let line = serde_json::to_string(request).map_err(|e| ClientError::Usage(e.to_string()))?;
        writeln!(self.writer, "{line}").map_err(io_error)?;
        let mut answer = String::new();
        self.reader
            .read_line(&mut answer)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Ok(value)) => Ok(value),
            Ok(Response::Error(err)) => Err(ClientError::Refused {
                kind: err.kind,
                message: err.message,
            }),
            Err(err) => Err(ClientError::Protocol {
                path: self.path.clone(),
                found: answer.trim_end().to_string(),
                problem: err.to_string(),
            }),
        }
    }

    /// Sends one request and reads its answer as `T`.
    pub fn request_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let value = self.request(request)?;
        serde_json::from_value(value.clone()).map_err(|err| ClientError::Protocol {
            path: self.path.clone(),
            found: value.to_string(),
            problem: err.to_string(),
        })
    }
}

/// Runs `vswitch ctl`.
pub fn run(args: CtlArgs) -> Result<(), ClientError> {
    let path = args.ctl.unwrap_or_else(|| PathBuf::from(DEFAULT_CTL));
    let as_json = args.json;
    let mut conn = Connection::open(&path)?;
    let out = &mut io::stdout().lock();
    let print = |out: &mut dyn Write, text: String| -> Result<(), ClientError> {
        // A closed standard output (`| head`) ends the command quietly.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        Ok(())
    };
    let json =
        |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    match args.command {
        CtlCommand::Show => {
            let value = conn.request(&Request::Show)?;
            if as_json {
                return print(out, json(&value));
            }
            let show: Show = from_value(&path, value)?;
            print(out, format_show(&show))?;
        }
        CtlCommand::AddPort { ports } => {
            let specs = ports.specs();
            let [spec] = specs.as_slice() else {
                return Err(ClientError::Usage(format!(
                    "add-port takes exactly one port (as --tap SPEC), found {}",
                    specs.len()
                )));
            };
            let text = spec.to_string();
            let spec_text = text
                .split_once(':')
                .map_or("", |(_, rest)| rest)
                .to_string();
            let value = conn.request(&Request::AddPort {
                kind: spec.kind().into(),
                spec: spec_text,
            })?;
            if as_json {
                return print(out, json(&value));
            }
            let port: PortView = from_value(&path, value)?;
            print(
                out,
                format!("added {}\n{}", port.name.clone(), format_ports(&[port])),
            )?;
        }
        CtlCommand::DelPort { name } => {
            let value = conn.request(&Request::DelPort { name })?;
            if as_json {
                return print(out, json(&value));
            }
            let removed: RemovedPort = from_value(&path, value)?;
            print(
                out,
                format!(
                    "removed {}; its final counters:\n{}",
                    removed.port.name,
                    format_counters(&[removed.counters], None)
                ),
            )?;
        }
        CtlCommand::Fdb { vlan, port, action } => match action {
            Some(FdbAction::Flush) => {
                let value = conn.request(&Request::FdbFlush)?;
                if as_json {
                    return print(out, json(&value));
                }
                let flushed: Flushed = from_value(&path, value)?;
                print(
                    out,
                    format!("forgot {} learned addresses\n", flushed.removed),
                )?;
            }
            None => {
                let value = conn.request(&Request::Fdb {
                    vlan: vlan.map(|v| v.get()),
                    port,
                })?;
                if as_json {
                    return print(out, json(&value));
                }
                let entries: Vec<FdbView> = from_value(&path, value)?;
                print(out, format_fdb(&entries))?;
            }
        },
        CtlCommand::Stats { port, interval } => {
            let request = Request::Stats { port };
            let Some(interval) = interval else {
                let value = conn.request(&request)?;
                if as_json {
                    return print(out, json(&value));
                }
                let stats: StatsView = from_value(&path, value)?;
                return print(out, format_stats(&stats, None));
            };
            let mut before: StatsView = conn.request_as(&request)?;
            let period = Duration::from_secs_f64(interval);
            let mut next = Instant::now() + period;
            loop {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += period;
                let value = conn.request(&request)?;
                let now: StatsView = from_value(&path, value.clone())?;
                if as_json {
                    let mut line = value;
                    line["rates"] = serde_json::to_value(rates(&before, &now)).unwrap_or_default();
                    print(out, format!("{line}\n"))?;
                } else {
                    print(out, format_stats(&now, Some(&before)))?;
                }
                before = now;
            }
        }
        CtlCommand::SetPort {
            name,
            vlan,
            trunk,
            native,
            max_learned,
            isolated,
            guard,
            ip,
            from_bytes,
            from_frames,
            to_bytes,
            to_frames,
        } => {
            let options: Vec<String> = [
                ("isolated", isolated),
                ("guard", guard),
                ("ip", ip),
                ("from-bytes", from_bytes),
                ("from-frames", from_frames),
                ("to-bytes", to_bytes),
                ("to-frames", to_frames),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| format!("{key}={value}")))
            .collect();
            let mut check = crate::run::tenant::TenantOptions::default();
            for option in &options {
                check
                    .take(option)
                    .map_err(|e| ClientError::Usage(format!("set-port: {e}")))?;
            }
            if vlan.is_none()
                && trunk.is_none()
                && native.is_none()
                && max_learned.is_none()
                && options.is_empty()
            {
                return Err(ClientError::Usage(
                    "set-port: nothing to change; give --vlan N, --trunk LIST, --native N, --max-learned N, \
                     --isolated, --guard, --ip, --from-bytes, --from-frames, --to-bytes or --to-frames"
                        .into(),
                ));
            }
            let value = conn.request(&Request::SetPort {
                name,
                vlan: vlan.map(|v| v.get()),
                trunk,
                native: native.map(|v| v.get()),
                max_learned,
                options,
            })?;
            if as_json {
                return print(out, json(&value));
            }
            let port: PortView = from_value(&path, value)?;
            print(out, format_ports(&[port]))?;
        }
    }
    Ok(())
}

fn from_value<T: DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
) -> Result<T, ClientError> {
    serde_json::from_value(value.clone()).map_err(|err| ClientError::Protocol {
        path: path.to_path_buf(),
        found: value.to_string(),
        problem: err.to_string(),
    })
}

/// Rates per port between two answers.
pub fn rates(before: &StatsView, now: &StatsView) -> BTreeMap<String, PortRates> {
    let seconds = now.uptime_ms.saturating_sub(before.uptime_ms) as f64 / 1000.0;
    now.ports
        .iter()
        .map(|port| {
            let old = before.ports.iter().find(|p| p.name == port.name);
            (port.name.clone(), PortRates::between(old, port, seconds))
        })
        .collect()
}

/// `show` as tables.
pub fn format_show(show: &Show) -> String {
    let mut out = format!(
        "vswitch {}: {} worker(s), up {:.1} s, {} learned address(es)\n",
        show.version,
        show.workers,
        show.uptime_ms as f64 / 1000.0,
        show.learned_addresses
    );
    out.push_str(&format_ports(&show.ports));
    out
}

/// Ports as a table.
pub fn format_ports(ports: &[PortView]) -> String {
    let mut out = format!(
        "{:<12} {:<10} {:<14} {:>6} {:>5} {:<20} {:<40} {:<18} {:>11}\n",
        "PORT", "KIND", "STATE", "QUEUES", "MTU", "OFFLOADS", "SWITCH DOES", "VLAN", "LEARNED/MAX"
    );
    for p in ports {
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<14} {:>6} {:>5} {:<20} {:<40} {:<18} {:>11}",
            p.name,
            p.kind,
            p.state,
            p.queues,
            p.mtu,
            p.offloads,
            p.switch_does,
            p.vlan,
            format!("{}/{}", p.learned, p.max_learned)
        );
    }
    for p in ports {
        if let Some(protection) = &p.protection {
            let _ = writeln!(out, "{} protection: {protection}", p.name);
        }
    }
    for p in ports {
        if let Some(rings) = describe_vhost_user(p) {
            let _ = writeln!(out, "{} guest: {rings}", p.name);
        }
    }
    for p in ports {
        if let Some(reason) = &p.down_reason {
            let _ = writeln!(out, "{} is down: {reason}", p.name);
        }
    }
    if ports.is_empty() {
        out.push_str("(no ports)\n");
    }
    out
}

/// What a vhost-user port's guests broke, when they broke anything or
/// something went wrong (the last error of a port that is down is in its
/// reason already).
fn describe_vhost_user(port: &PortView) -> Option<String> {
    let rings = port.vhost_user.as_ref()?;
    let mut parts = Vec::new();
    if !rings.broken_now.is_empty() {
        let queues: Vec<String> = rings
            .broken_now
            .iter()
            .map(|&queue| {
                let side = if queue % 2 == 0 {
                    "receive"
                } else {
                    "transmit"
                };
                format!("virtqueue {queue} (pair {} {side})", queue / 2)
            })
            .collect();
        parts.push(format!(
            "{} broken, not served until the guest resets the device or reconnects",
            queues.join(", ")
        ));
    }
    if rings.broken_queues > 0 {
        parts.push(format!(
            "{} queue(s) broken since the port was added",
            rings.broken_queues
        ));
    }
    if let (Some(error), None) = (&rings.last_error, &port.down_reason) {
        parts.push(format!("last error: {error}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The learned addresses as a table.
pub fn format_fdb(entries: &[FdbView]) -> String {
    let mut out = format!(
        "{:<17} {:>4} {:<12} {:>9}\n",
        "MAC", "VLAN", "PORT", "AGE (s)"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<17} {:>4} {:<12} {:>9.1}",
            e.mac,
            e.vlan,
            e.port,
            e.age_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "{} address(es)", entries.len());
    out
}

fn gbits(bps: f64) -> String {
    format!("{:.3} Gbit/s", bps / 1e9)
}

/// Counters as a table; with `before`, the rates over the interval too.
pub fn format_counters(ports: &[PortCounters], before: Option<(&StatsView, f64)>) -> String {
    let mut out = String::new();
    for p in ports {
        let _ = writeln!(
            out,
            "{} ({}): rx {} frames {} bytes | tx {} frames {} bytes | software: {} segments, {} checksums, {} GRO merges, {} lent frames copied | flood copies {} | not learned {}",
            p.name, p.state, p.rx_frames, p.rx_bytes, p.tx_frames, p.tx_bytes,
            p.sw_segments, p.sw_checksums, p.gro_merges, p.lent_copied_frames, p.flood_copies, p.not_learned
        );
        if let Some((before, seconds)) = before {
            let old = before.ports.iter().find(|o| o.name == p.name);
            let r = PortRates::between(old, p, seconds);
            let _ = writeln!(
                out,
                "    over {seconds:.1} s: rx {:.0} frames/s {} | tx {:.0} frames/s {} | {:.0} drops/s",
                r.rx_fps,
                gbits(r.rx_bps),
                r.tx_fps,
                gbits(r.tx_bps),
                r.drops_ps
            );
        }
        if p.drops.is_empty() {
            let _ = writeln!(out, "    drops: 0");
        } else {
            let list: Vec<String> = p.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "    drops: {} ({})", p.drops_total(), list.join(", "));
        }
    }
    out
}

/// A `stats` answer, with rates when an earlier one is given.
pub fn format_stats(now: &StatsView, before: Option<&StatsView>) -> String {
    let seconds = before.map(|b| (b, now.uptime_ms.saturating_sub(b.uptime_ms) as f64 / 1000.0));
    let mut out = String::new();
    if before.is_some() {
        let _ = writeln!(
            out,
            "-- at {:.1} s of uptime",
            now.uptime_ms as f64 / 1000.0
        );
    }
    out.push_str(&format_counters(&now.ports, seconds));
    for w in &now.workers {
        let busy = match seconds {
            Some((b, s)) => {
                let old = b.workers.iter().find(|o| o.index == w.index);
                let ns = w.busy_ns.saturating_sub(old.map_or(0, |o| o.busy_ns));
                format!("{:.1}% busy", 100.0 * ns as f64 / 1e9 / s.max(1e-9))
            }
            None => format!("{:.3} s busy", w.busy_ns as f64 / 1e9),
        };
        let _ = writeln!(
            out,
            "worker {}: {} frames, {} handed off, {} sent, {busy}",
            w.index, w.frames, w.handed_off, w.sent
        );
    }
    let _ = writeln!(out, "learned addresses: {}", now.learned_addresses);
    out
}
