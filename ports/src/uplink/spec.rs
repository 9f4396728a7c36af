//! An uplink as a command line names it: `IFACE[:key=value,...]`.

use std::str::FromStr;
use std::time::Duration;

use super::{OffloadMode, UplinkConfig};

/// An interface and how to open it, as `--uplink IFACE[:options]` gives
/// them: `eth1`, `eth1:offload=csum`, `eth1:offload=tso,queues=2,mtu=9000`.
///
/// Options: `offload=auto|none|csum|tso`, `queues=N`, `mtu=N`,
/// `refresh-ms=N`, `qdisc-bypass=on|off`, `netns=PATH`, separated by `,`
/// or `:` (as `vswitch run` separates a port's options).
///
/// ```
/// use vswitch_ports::uplink::{OffloadMode, UplinkSpec};
///
/// let spec: UplinkSpec = "eth1:offload=csum,queues=2".parse().unwrap();
/// assert_eq!(spec.interface, "eth1");
/// assert_eq!(spec.config.offload, OffloadMode::Checksum);
/// assert_eq!(spec.config.queues, 2);
/// let err = "eth1:offload=gso".parse::<UplinkSpec>().unwrap_err();
/// assert!(err.to_string().contains("expected auto, none, csum or tso"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// The interface.
    pub interface: String,
    /// How to open it.
    pub config: UplinkConfig,
}

/// Why an uplink specification does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUplinkSpec {
    /// No interface before the options.
    #[error("uplink {spec:?}: expected an interface name before the options (IFACE[:offload=auto|none|csum|tso,...])")]
    NoInterface {
        /// The whole specification.
        spec: String,
    },
    /// An option that is not `key=value`, or whose key is unknown.
    #[error("uplink option {option:?}: expected one of offload=, queues=, mtu=, refresh-ms=, qdisc-bypass=, netns=")]
    UnknownOption {
        /// The option as given.
        option: String,
    },
    /// A value that does not fit its key.
    #[error("uplink option {key}={value:?}: expected {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
}

impl FromStr for UplinkSpec {
    type Err = BadUplinkSpec;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (interface, options) = match spec.split_once(':') {
            Some((interface, options)) => (interface, options),
            None => (spec, ""),
        };
        if interface.is_empty() {
            return Err(BadUplinkSpec::NoInterface {
                spec: spec.to_owned(),
            });
        }
        let mut config = UplinkConfig::default();
        for option in options.split([',', ':']).filter(|o| !o.is_empty()) {
            config.set_option(option)?;
        }
        Ok(UplinkSpec {
            interface: interface.to_owned(),
            config,
        })
    }
}

impl UplinkConfig {
    /// Applies one `key=value` option of an uplink specification (the
    /// options [`UplinkSpec`] lists).
    pub fn set_option(&mut self, option: &str) -> Result<(), BadUplinkSpec> {
        let config = self;
        let Some((key, value)) = option.split_once('=') else {
            return Err(BadUplinkSpec::UnknownOption {
                option: option.to_owned(),
            });
        };
        let bad = |key: &'static str, expected: &'static str| BadUplinkSpec::BadValue {
            key,
            value: value.to_owned(),
            expected,
        };
        match key {
            "offload" => {
                config.offload = value
                    .parse::<OffloadMode>()
                    .map_err(|_| bad("offload", "auto, none, csum or tso"))?;
            }
            "queues" => {
                config.queues = value
                    .parse::<usize>()
                    .ok()
                    .filter(|q| (1..=256).contains(q))
                    .ok_or_else(|| bad("queues", "a number from 1 to 256"))?;
            }
            "mtu" => {
                config.mtu = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|m| *m >= 68)
                        .ok_or_else(|| bad("mtu", "a number from 68 to 65535"))?,
                );
            }
            "refresh-ms" => {
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| bad("refresh-ms", "a number of milliseconds above 0"))?;
                config.refresh = Duration::from_millis(ms);
            }
            "qdisc-bypass" => {
                config.qdisc_bypass = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("qdisc-bypass", "on or off")),
                };
            }
            "netns" if !value.is_empty() => config.netns = Some(value.into()),
            "netns" => return Err(bad("netns", "a path such as /run/netns/NAME")),
            _ => {
                return Err(BadUplinkSpec::UnknownOption {
                    option: option.to_owned(),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_interface_takes_the_defaults() {
        let spec: UplinkSpec = "eth0".parse().unwrap();
        assert_eq!(spec.interface, "eth0");
        assert_eq!(spec.config, UplinkConfig::default());
        assert_eq!("eth0:".parse::<UplinkSpec>().unwrap(), spec);
    }

    #[test]
    fn every_option_sets_its_field() {
        let spec: UplinkSpec =
            "enp3s0:offload=none,queues=4,mtu=9000,refresh-ms=50,qdisc-bypass=off,netns=/run/netns/a"
                .parse()
                .unwrap();
        let expected = UplinkConfig::new(OffloadMode::None)
            .queues(4)
            .mtu(9000)
            .refresh(Duration::from_millis(50))
            .qdisc_bypass(false)
            .netns("/run/netns/a");
        assert_eq!(spec.config, expected);
    }

    #[test]
    fn bad_specifications_say_what_was_expected() {
        let cases = [
            (":offload=tso", "expected an interface name"),
            ("eth0:offload", "expected one of offload="),
            ("eth0:speed=10", "expected one of offload="),
            ("eth0:offload=gso", "expected auto, none, csum or tso"),
            ("eth0:queues=0", "a number from 1 to 256"),
            ("eth0:mtu=10", "a number from 68 to 65535"),
            ("eth0:refresh-ms=0", "milliseconds above 0"),
            ("eth0:qdisc-bypass=yes", "on or off"),
            ("eth0:netns=", "/run/netns/NAME"),
        ];
        for (spec, expected) in cases {
            let err = spec.parse::<UplinkSpec>().unwrap_err().to_string();
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }
}
