//! The tenant-protection options of a port, shared by the port specs
//! (`vswitch run --tap NAME:OPTION...`, `vswitch ctl add-port`, a
//! configuration file's `[[port]]` and `[profiles.NAME]`) and `vswitch ctl
//! set-port`:
//!
//! | option | meaning |
//! |---|---|
//! | `isolated` or `isolated=on\|off` | reaches only ports that are not isolated |
//! | `guard=LIST` | guards on: `source`, `neighbor`, `dhcp`, `router`, `all` or `none` |
//! | `ip=LIST` or `ip=[LIST]` | the port's IPv4 addresses and IPv6 prefixes (`10.0.0.2,2001:db8::/64`); `none` |
//! | `from-bytes=RATE[/BURST[/INITIAL]]` | bytes a second the port may send (throttled); `off` |
//! | `from-frames=RATE[/BURST[/INITIAL]]` | frames a second it may send |
//! | `to-bytes=…`, `to-frames=…` | what it may be sent (dropped beyond) |
//!
//! Numbers take a decimal suffix `k`, `M`, `G` or a binary one `Ki`, `Mi`,
//! `Gi`. Rates are bytes, not bits: 1 Gbit/s is `125M`. A burst left out is
//! a tenth of a second's worth; the one-time burst is 0 unless given.
//! In a spec, where options are separated by `:`, a list with IPv6
//! addresses goes in brackets: `tap0:ip=[10.0.0.2,2001:db8::/64]`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use vswitch::guard::{Ipv6Prefix, PortSecurity};
use vswitch::limit::{Bucket, RateLimit};
use vswitch::PortProfile;

/// The option keys this module takes.
pub const KEYS: [&str; 7] = [
    "isolated",
    "guard",
    "ip",
    "from-bytes",
    "from-frames",
    "to-bytes",
    "to-frames",
];

/// Which guards are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guards {
    /// IP source guard.
    pub source: bool,
    /// ARP and neighbour-advertisement guard.
    pub neighbor: bool,
    /// DHCP guard.
    pub dhcp: bool,
    /// Router guard.
    pub router: bool,
}

impl Guards {
    fn of(security: &PortSecurity) -> Guards {
        Guards {
            source: security.ip_source_guard,
            neighbor: security.neighbor_guard,
            dhcp: security.dhcp_guard,
            router: security.router_guard,
        }
    }

    fn parse(text: &str) -> Result<Guards, String> {
        let mut guards = Guards::default();
        for item in text.split(',').filter(|item| !item.is_empty()) {
            match item {
                "source" => guards.source = true,
                "neighbor" => guards.neighbor = true,
                "dhcp" => guards.dhcp = true,
                "router" => guards.router = true,
                "all" => {
                    guards = Guards {
                        source: true,
                        neighbor: true,
                        dhcp: true,
                        router: true,
                    }
                }
                "none" => guards = Guards::default(),
                other => {
                    return Err(format!(
                        "guard: unknown guard {other:?}, expected source, neighbor, dhcp, router, all or none"
                    ))
                }
            }
        }
        Ok(guards)
    }
}

impl fmt::Display for Guards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.source, "source"),
            (self.neighbor, "neighbor"),
            (self.dhcp, "dhcp"),
            (self.router, "router"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        match names.len() {
            0 => f.write_str("none"),
            4 => f.write_str("all"),
            _ => f.write_str(&names.join(",")),
        }
    }
}

/// The addresses a port owns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Addresses {
    /// IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 prefixes.
    pub ipv6: Vec<Ipv6Prefix>,
}

impl Addresses {
    fn parse(text: &str) -> Result<Addresses, String> {
        let text = text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(text);
        let mut addresses = Addresses::default();
        if text == "none" {
            return Ok(addresses);
        }
        for item in text.split(',').filter(|item| !item.is_empty()) {
            match item.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => addresses.ipv4.push(v4),
                Ok(IpAddr::V6(v6)) => addresses.ipv6.push(Ipv6Prefix::host(v6)),
                Err(_) => addresses.ipv6.push(item.parse().map_err(|_| {
                    format!("ip: expected IPv4 addresses and IPv6 prefixes (10.0.0.2,2001:db8::/64), found {item:?}")
                })?),
            }
        }
        Ok(addresses)
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .ipv4
            .iter()
            .map(ToString::to_string)
            .chain(self.ipv6.iter().map(ToString::to_string))
            .collect();
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

/// A number with an optional `k`, `M`, `G`, `Ki`, `Mi` or `Gi` suffix.
fn parse_amount(text: &str) -> Option<u64> {
    let (digits, scale) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .into_iter()
    .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|d| (d, scale)))
    .unwrap_or((text, 1));
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// `RATE[/BURST[/INITIAL]]` or `off`.
fn parse_bucket(key: &str, text: &str) -> Result<Option<Bucket>, String> {
    if text == "off" {
        return Ok(None);
    }
    let bad = || {
        format!(
            "{key}: expected RATE[/BURST[/INITIAL]] (numbers, with k, M, G, Ki, Mi or Gi) or off, found {text:?}"
        )
    };
    let mut parts = text.split('/');
    let rate = parts
        .next()
        .and_then(parse_amount)
        .filter(|r| *r > 0)
        .ok_or_else(bad)?;
    let burst = match parts.next() {
        Some(burst) => parse_amount(burst).filter(|b| *b > 0).ok_or_else(bad)?,
        None => (rate / 10).max(1),
    };
    let initial = match parts.next() {
        Some(initial) => parse_amount(initial).ok_or_else(bad)?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(Some(Bucket::new(rate, burst).initial(initial)))
}

fn bucket_text(bucket: &Option<Bucket>) -> String {
    match bucket {
        None => "off".into(),
        Some(b) if b.initial_burst() == 0 => format!("{}/{}", b.rate(), b.burst()),
        Some(b) => format!("{}/{}/{}", b.rate(), b.burst(), b.initial_burst()),
    }
}

/// The tenant options given; what is left out is `None` and keeps the
/// profile's value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantOptions {
    /// `isolated`.
    pub isolated: Option<bool>,
    /// `guard=`.
    pub guards: Option<Guards>,
    /// `ip=`.
    pub addresses: Option<Addresses>,
    /// `from-bytes=`.
    pub from_bytes: Option<Option<Bucket>>,
    /// `from-frames=`.
    pub from_frames: Option<Option<Bucket>>,
    /// `to-bytes=`.
    pub to_bytes: Option<Option<Bucket>>,
    /// `to-frames=`.
    pub to_frames: Option<Option<Bucket>>,
}

impl TenantOptions {
    /// Takes `option` if it is a tenant option; `Ok(false)` when it is not.
    pub fn take(&mut self, option: &str) -> Result<bool, String> {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "isolated" => {
                self.isolated = Some(match value {
                    "" | "on" | "true" => true,
                    "off" | "false" => false,
                    other => return Err(format!("isolated: expected on or off, found {other:?}")),
                })
            }
            "guard" => self.guards = Some(Guards::parse(value)?),
            "ip" => self.addresses = Some(Addresses::parse(value)?),
            "from-bytes" => self.from_bytes = Some(parse_bucket(key, value)?),
            "from-frames" => self.from_frames = Some(parse_bucket(key, value)?),
            "to-bytes" => self.to_bytes = Some(parse_bucket(key, value)?),
            "to-frames" => self.to_frames = Some(parse_bucket(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets what was given on `profile`.
    pub fn apply(&self, profile: &mut PortProfile) {
        if let Some(isolated) = self.isolated {
            profile.isolated = isolated;
        }
        let security = &mut profile.security;
        if let Some(guards) = self.guards {
            security.ip_source_guard = guards.source;
            security.neighbor_guard = guards.neighbor;
            security.dhcp_guard = guards.dhcp;
            security.router_guard = guards.router;
        }
        if let Some(addresses) = &self.addresses {
            security.ipv4 = addresses.ipv4.clone();
            security.ipv6 = addresses.ipv6.clone();
        }
        let set = |slot: &mut Option<Bucket>, given: &Option<Option<Bucket>>| {
            if let Some(bucket) = given {
                *slot = *bucket;
            }
        };
        let limits = &mut profile.limits;
        set(&mut limits.from_port.bytes, &self.from_bytes);
        set(&mut limits.from_port.frames, &self.from_frames);
        set(&mut limits.to_port.bytes, &self.to_bytes);
        set(&mut limits.to_port.frames, &self.to_frames);
    }

    /// Writes the options given as spec options (`:isolated:guard=all...`).
    pub fn write_options(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(isolated) = self.isolated {
            write!(f, ":isolated={}", if isolated { "on" } else { "off" })?;
        }
        if let Some(guards) = self.guards {
            write!(f, ":guard={guards}")?;
        }
        if let Some(addresses) = &self.addresses {
            write!(f, ":ip=[{addresses}]")?;
        }
        for (key, bucket) in [
            ("from-bytes", &self.from_bytes),
            ("from-frames", &self.from_frames),
            ("to-bytes", &self.to_bytes),
            ("to-frames", &self.to_frames),
        ] {
            if let Some(bucket) = bucket {
                write!(f, ":{key}={}", bucket_text(bucket))?;
            }
        }
        Ok(())
    }
}

/// What `show` says of a profile's tenant protection, `None` when it has
/// none.
pub fn describe(profile: &PortProfile) -> Option<String> {
    let mut parts = Vec::new();
    if profile.isolated {
        parts.push("isolated".to_string());
    }
    let security = &profile.security;
    if security.any_guard() {
        parts.push(format!("guard {}", Guards::of(security)));
    }
    if !security.ipv4.is_empty() || !security.ipv6.is_empty() {
        let addresses = Addresses {
            ipv4: security.ipv4.clone(),
            ipv6: security.ipv6.clone(),
        };
        parts.push(format!("ip {addresses}"));
    }
    let limit = |name: &str, limit: &RateLimit, parts: &mut Vec<String>| {
        if let Some(bucket) = &limit.bytes {
            parts.push(format!("{name}-bytes {}", bucket_text(&Some(*bucket))));
        }
        if let Some(bucket) = &limit.frames {
            parts.push(format!("{name}-frames {}", bucket_text(&Some(*bucket))));
        }
    };
    limit("from", &profile.limits.from_port, &mut parts);
    limit("to", &profile.limits.to_port, &mut parts);
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Splits a port spec at its `:` separators, except inside brackets (an
/// `ip=[...]` list with IPv6 addresses).
pub fn split_options(spec: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&spec[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(list: &[&str]) -> Result<TenantOptions, String> {
        let mut options = TenantOptions::default();
        for option in list {
            assert!(options.take(option)?, "{option} not taken");
        }
        Ok(options)
    }

    #[test]
    fn options_set_the_profile() {
        let given = options(&[
            "isolated",
            "guard=source,router",
            "ip=[10.0.0.2,2001:db8::/64,fe80::1]",
            "from-bytes=125M/1Mi/8Mi",
            "to-frames=10k",
        ])
        .unwrap();
        let mut profile = PortProfile::default();
        given.apply(&mut profile);
        assert!(profile.isolated);
        assert!(profile.security.ip_source_guard && profile.security.router_guard);
        assert!(!profile.security.dhcp_guard);
        assert_eq!(
            profile.security.ipv4,
            ["10.0.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(profile.security.ipv6.len(), 2);
        let from = profile.limits.from_port.bytes.unwrap();
        assert_eq!(
            (from.rate(), from.burst(), from.initial_burst()),
            (125_000_000, 1 << 20, 8 << 20)
        );
        let to = profile.limits.to_port.frames.unwrap();
        assert_eq!((to.rate(), to.burst()), (10_000, 1000));
        assert_eq!(
            describe(&profile).unwrap(),
            "isolated; guard source,router; ip 10.0.0.2,2001:db8::/64,fe80::1/128; \
             from-bytes 125000000/1048576/8388608; to-frames 10000/1000"
        );
        // Turned off again, one by one.
        options(&[
            "isolated=off",
            "guard=none",
            "ip=none",
            "from-bytes=off",
            "to-frames=off",
        ])
        .unwrap()
        .apply(&mut profile);
        assert_eq!(describe(&profile), None);
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        for (option, expected) in [
            ("guard=dns", "expected source, neighbor"),
            ("ip=10.0.0.300", "expected IPv4 addresses"),
            ("from-bytes=fast", "expected RATE"),
            ("to-bytes=0", "expected RATE"),
            ("to-bytes=1/2/3/4", "expected RATE"),
            ("isolated=maybe", "expected on or off"),
        ] {
            let err = options(&[option]).unwrap_err();
            assert!(err.contains(expected), "{option}: {err}");
        }
        assert_eq!(TenantOptions::default().take("vlan=3"), Ok(false));
    }

    #[test]
    fn specs_split_outside_brackets() {
        assert_eq!(
            split_options("tap0:ip=[10.0.0.2,2001:db8::/64]:guard=all"),
            ["tap0", "ip=[10.0.0.2,2001:db8::/64]", "guard=all"]
        );
        assert_eq!(split_options("tap0"), ["tap0"]);
    }
}
