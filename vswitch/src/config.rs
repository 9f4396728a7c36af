//! `vswitch run --config FILE.toml`: ports, VLAN profiles, limits, workers,
//! and the control and metrics addresses in one file. A port table takes
//! the options of its kind's spec (`vswitch run --tap NAME:OPTION=...`),
//! with `_` or `-` in their names, so the file, the command line and
//! `vswitch ctl add-port` share one schema:
//!
//! ```toml
//! workers = 2
//! queues = 1              # per port, unless the port says
//! mtu = 1500              # 576 to 9216
//! stats_interval = 5      # seconds, 0: none
//! ctl = "/run/vswitch/vswitch.ctl"
//! ctl_group = "netdev"
//! metrics = "127.0.0.1:9477"
//!
//! [profiles.tenant-a]     # a VLAN profile ports refer to by name
//! vlan = 10
//! max_learned = 64
//!
//! [[port]]
//! kind = "tap"            # the default
//! name = "tap0"
//! offload = "csum"
//! gro = "off"
//! profile = "tenant-a"
//!
//! [[port]]
//! name = "tap1"
//! trunk = "10,20-30"
//! native = 1
//!
//! [[port]]                # a tenant's guest: see `run::tenant`
//! name = "tap2"
//! isolated = true
//! guard = "all"
//! ip = ["10.0.0.2", "2001:db8::/64"]
//! from_bytes = "125M/1Mi" # 1 Gbit/s out of the guest, a 1 MiB burst
//! to_frames = "100k"
//! ```
//!
//! An error names the file, the line and column, and what was expected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::cli::{MTU_MAX, MTU_MIN, QUEUES_MAX, WORKERS_MAX};
use crate::run::spec::PortSpec;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file says something wrong at a place.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was expected and found.
        message: String,
    },
}

/// The settings a file gives; what it leaves out is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunConfig {
    /// Ports, in file order.
    pub ports: Vec<PortSpec>,
    /// Worker threads.
    pub workers: Option<usize>,
    /// Queues per port.
    pub queues: Option<usize>,
    /// MTU of the ports.
    pub mtu: Option<u16>,
    /// Seconds between statistics lines.
    pub stats_interval: Option<f64>,
    /// The control socket.
    pub ctl: Option<PathBuf>,
    /// The group that may use it.
    pub ctl_group: Option<String>,
    /// The metrics address.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workers: Option<Spanned<i64>>,
    queues: Option<Spanned<i64>>,
    mtu: Option<Spanned<i64>>,
    stats_interval: Option<Spanned<f64>>,
    ctl: Option<PathBuf>,
    ctl_group: Option<String>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    profiles: BTreeMap<String, Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    #[serde(default)]
    port: Vec<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
}

/// The options a profile may set.
const PROFILE_KEYS: [&str; 11] = [
    "vlan",
    "trunk",
    "native",
    "max-learned",
    "isolated",
    "guard",
    "ip",
    "from-bytes",
    "from-frames",
    "to-bytes",
    "to-frames",
];

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl RunConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a file named `path`.
    pub fn parse(text: &str, path: &Path) -> Result<RunConfig, ConfigError> {
        let at = |span: Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            ConfigError::At {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let file: File = toml::from_str(text).map_err(|err| {
            at(
                err.span().unwrap_or(0..0),
                err.message().trim_end().to_string(),
            )
        })?;
        let ranged = |value: &Option<Spanned<i64>>, name: &str, min: i64, max: i64| {
            value
                .as_ref()
                .map(|v| {
                    if (min..=max).contains(v.get_ref()) {
                        Ok(*v.get_ref())
                    } else {
                        Err(at(
                            v.span(),
                            format!("{name}: expected {min} to {max}, found {}", v.get_ref()),
                        ))
                    }
                })
                .transpose()
        };
        // The ranges fit the target types, so the conversions cannot fail.
        let workers = ranged(&file.workers, "workers", 1, WORKERS_MAX as i64)?
            .and_then(|v| usize::try_from(v).ok());
        let queues = ranged(&file.queues, "queues", 1, QUEUES_MAX as i64)?
            .and_then(|v| usize::try_from(v).ok());
        let mtu = ranged(&file.mtu, "mtu", MTU_MIN.into(), MTU_MAX.into())?
            .and_then(|v| u16::try_from(v).ok());
        let stats_interval = file
            .stats_interval
            .as_ref()
            .map(|v| {
                let s = *v.get_ref();
                if (0.0..=86_400.0).contains(&s) {
                    Ok(s)
                } else {
                    Err(at(
                        v.span(),
                        format!("stats_interval: expected 0 to 86400 seconds, found {s}"),
                    ))
                }
            })
            .transpose()?;
        let metrics = file
            .metrics
            .as_ref()
            .map(|v| {
                crate::cli::metrics_addr(v.get_ref())
                    .map_err(|e| at(v.span(), format!("metrics: {e}")))
            })
            .transpose()?;
        let mut profiles: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (name, table) in &file.profiles {
            let mut options = Vec::new();
            for (key, value) in table.get_ref() {
                let key = key.replace('_', "-");
                if !PROFILE_KEYS.contains(&key.as_str()) {
                    return Err(at(
                        value.span(),
                        format!(
                            "profile {name:?}: unknown key {key:?}, expected one of {}",
                            PROFILE_KEYS.join(", ")
                        ),
                    ));
                }
                options.push(format!("{key}={}", option_text(value.get_ref())));
            }
            profiles.insert(name, options);
        }
        let mut ports = Vec::new();
        for table in &file.port {
            let get_str = |key: &str| -> Result<Option<String>, ConfigError> {
                match table.get_ref().get(key) {
                    None => Ok(None),
                    Some(value) => match value.get_ref() {
                        toml::Value::String(s) => Ok(Some(s.clone())),
                        other => Err(at(
                            value.span(),
                            format!("{key}: expected a string, found {}", other.type_str()),
                        )),
                    },
                }
            };
            let kind = get_str("kind")?.unwrap_or_else(|| "tap".into());
            let name = get_str("name")?
                .ok_or_else(|| at(table.span(), "[[port]]: expected a name = \"...\"".into()))?;
            let mut spec = name;
            if let Some(profile) = get_str("profile")? {
                let options = profiles.get(profile.as_str()).ok_or_else(|| {
                    let span = table.get_ref().get("profile").map_or(table.span(), |v| v.span());
                    let known: Vec<&str> = profiles.keys().copied().collect();
                    at(
                        span,
                        format!(
                            "profile {profile:?} is not defined; expected one of [{}] from [profiles.NAME]",
                            known.join(", ")
                        ),
                    )
                })?;
                for option in options {
                    spec.push(':');
                    spec.push_str(option);
                }
            }
            for (key, value) in table.get_ref() {
                if matches!(key.as_str(), "kind" | "name" | "profile") {
                    continue;
                }
                spec.push_str(&format!(
                    ":{}={}",
                    key.replace('_', "-"),
                    option_text(value.get_ref())
                ));
            }
            let parsed = PortSpec::parse_kind(&kind, &spec)
                .map_err(|err| at(table.span(), format!("[[port]] {}", err.problem)))?;
            ports.push(parsed);
        }
        Ok(RunConfig {
            ports,
            workers,
            queues,
            mtu,
            stats_interval,
            ctl: file.ctl,
            ctl_group: file.ctl_group,
            metrics,
        })
    }
}

/// A value as a spec option's text. An array (`ip = ["10.0.0.2",
/// "2001:db8::/64"]`) is a list in brackets, so the `:` of IPv6 addresses
/// do not split the spec; a boolean is `on` or `off`.
fn option_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Boolean(on) => if *on { "on" } else { "off" }.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(option_text).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::parse(text, Path::new("sw.toml"))
    }

    #[test]
    fn tenant_options_come_from_profiles_and_ports() {
        let config = parse(
            r#"
[profiles.guest]
isolated = true
guard = "all"

[[port]]
name = "tap0"
profile = "guest"
ip = ["10.0.0.2", "2001:db8::/64"]
from_bytes = "125M/1Mi"
to_frames = "100k"
"#,
        )
        .unwrap();
        let profile = config.ports[0].profile().profile();
        assert!(profile.isolated);
        assert!(profile.security.ip_source_guard && profile.security.router_guard);
        assert_eq!(profile.security.ipv4.len(), 1);
        assert_eq!(profile.security.ipv6.len(), 1);
        let from = profile.limits.from_port.bytes.unwrap();
        assert_eq!((from.rate(), from.burst()), (125_000_000, 1 << 20));
        assert_eq!(profile.limits.to_port.frames.unwrap().rate(), 100_000);
        let err = parse("[[port]]\nname = \"tap0\"\nguard = \"dns\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown guard"), "{err}");
    }

    #[test]
    fn a_full_file_parses() {
        let config = parse(
            r#"
workers = 2
mtu = 9000
stats_interval = 0
ctl = "/tmp/x.ctl"
metrics = ":9477"

[profiles.tenant-a]
vlan = 10
max_learned = 64

[[port]]
name = "tap0"
offload = "csum"
gro = "off"
profile = "tenant-a"

[[port]]
kind = "tap"
name = "tap1"
trunk = "10,20-30"
native = 1
gro = 250
"#,
        )
        .unwrap();
        assert_eq!(config.workers, Some(2));
        assert_eq!(config.mtu, Some(9000));
        assert_eq!(config.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        let specs: Vec<String> = config.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            specs,
            [
                "tap:tap0:offload=csum:gro=off:vlan=10:max-learned=64",
                "tap:tap1:offload=tso:gro=250:trunk=10,20-30:native=1",
            ]
        );
    }

    #[test]
    fn a_vhost_user_port_takes_its_options_booleans_included() {
        let config = parse(
            r#"
[[port]]
kind = "vhost-user"
name = "/tmp/vm0.sock"
queues = 2
lend = true
"#,
        )
        .unwrap();
        let specs: Vec<String> = config.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            specs,
            ["vhost-user:/tmp/vm0.sock:name=vm0:queues=2:lend=on"]
        );
        let err = parse("[[port]]\nkind = \"vhost-user\"\nname = \"/x.sock\"\nlend = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lend=on or lend=off"), "{err}");
    }

    #[test]
    fn errors_name_the_file_line_and_expectation() {
        let err = parse("workers = 2\nmtu = 70000\n").unwrap_err().to_string();
        assert!(err.starts_with("sw.toml:2:"), "{err}");
        assert!(err.contains("576 to 9216"), "{err}");

        let err = parse("workers = 2\n\n[[port]]\nname = \"t\"\noffload = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sw.toml:3:"), "{err}");
        assert!(err.contains("offload=none, csum or tso"), "{err}");

        let err = parse("wokers = 2\n").unwrap_err().to_string();
        assert!(err.starts_with("sw.toml:1:1:"), "{err}");
        assert!(err.contains("wokers"), "{err}");

        let err = parse("workers = \"two\"\n").unwrap_err().to_string();
        assert!(err.starts_with("sw.toml:1:11:"), "{err}");

        let err = parse("[[port]]\nname = \"t\"\nprofile = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sw.toml:3:"), "{err}");

        let err = parse("workers = 1000\n").unwrap_err().to_string();
        assert!(err.contains("1 to 64"), "{err}");
    }
}
