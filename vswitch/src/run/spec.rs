//! Port specifications: what `vswitch run --tap ...`, `vswitch ctl
//! add-port --tap ...` and a configuration file's `[[port]]` tables say,
//! parsed into one [`PortSpec`] and opened by [`open_port`].
//!
//! # Adding a port kind
//!
//! A kind is one variant of [`PortSpec`] with its own spec type (as
//! [`TapSpec`]), one arm in [`PortSpec::parse_kind`], [`PortSpec::kind`],
//! [`PortSpec::name`] and [`open_port`], and one flag in
//! `cli::PortArgs` (shared by `run` and `ctl add-port`). The options every
//! kind takes (`vlan=`, `trunk=`, `native=`, `max-learned=`) are parsed by
//! [`ProfileOptions::take`], so a kind's parser hands it each option it
//! does not know itself.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use vswitch::{PortProfile, VlanId, VlanMode, VlanSet};
use vswitch_ports::tap::{self, KernelReceive, TapConfig, TapOffloads, TapPort};
use vswitch_ports::uplink::{LinkState, UplinkConfig, UplinkError, UplinkPort};
use vswitch_ports::vhost_user::{
    SocketMode, VhostUserConfig, VhostUserError, VhostUserPort, VhostUserReport, MAX_QUEUE_PAIRS,
};
use vswitch_ports::Port;

use super::tenant::{split_options, TenantOptions};
use crate::cli::{MTU_MAX, MTU_MIN, QUEUES_MAX};
use crate::ctl::protocol::VhostUserView;

/// Why a port spec does not parse. The message names the spec, the option
/// and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port spec {spec:?}: {problem}")]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: String,
}

fn spec_error(spec: &str, problem: impl Into<String>) -> SpecError {
    SpecError {
        spec: spec.to_string(),
        problem: problem.into(),
    }
}

/// A port to open, of any kind the switch knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A TAP device (`--tap NAME[:option...]`).
    Tap(TapSpec),
    /// A guest attached over vhost-user (`--vhost-user PATH[:option...]`).
    VhostUser(VhostUserSpec),
    /// A physical (or any) interface through AF_PACKET (`--uplink
    /// IFACE[:option...]`).
    Uplink(UplinkPortSpec),
}

impl PortSpec {
    /// The kinds, as named on the command line (`--KIND`), in the protocol
    /// and in configuration files.
    pub const KINDS: [&'static str; 3] = ["tap", "vhost-user", "uplink"];

    /// Parses the spec of a port of `kind` (the text after `--KIND`).
    pub fn parse_kind(kind: &str, spec: &str) -> Result<PortSpec, SpecError> {
        match kind {
            "tap" => spec.parse().map(PortSpec::Tap),
            "vhost-user" => spec.parse().map(PortSpec::VhostUser),
            "uplink" => spec.parse().map(PortSpec::Uplink),
            other => Err(spec_error(
                spec,
                format!(
                    "unknown port kind {other:?}, expected one of {}",
                    Self::KINDS.join(", ")
                ),
            )),
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            PortSpec::Tap(_) => "tap",
            PortSpec::VhostUser(_) => "vhost-user",
            PortSpec::Uplink(_) => "uplink",
        }
    }

    /// The port's name in the switch (the interface name for a TAP).
    pub fn name(&self) -> &str {
        match self {
            PortSpec::Tap(spec) => &spec.name,
            PortSpec::VhostUser(spec) => &spec.name,
            PortSpec::Uplink(spec) => &spec.interface,
        }
    }

    /// The options every kind takes.
    pub fn profile(&self) -> &ProfileOptions {
        match self {
            PortSpec::Tap(spec) => &spec.profile,
            PortSpec::VhostUser(spec) => &spec.profile,
            PortSpec::Uplink(spec) => &spec.profile,
        }
    }
}

impl fmt::Display for PortSpec {
    /// `KIND:SPEC`, the spec as it would be given after `--KIND`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Tap(spec) => write!(f, "tap:{spec}"),
            PortSpec::VhostUser(spec) => write!(f, "vhost-user:{spec}"),
            PortSpec::Uplink(spec) => write!(f, "uplink:{spec}"),
        }
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    /// `KIND:SPEC`, as [`Display`](fmt::Display) writes it.
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (kind, spec) = text.split_once(':').ok_or_else(|| {
            spec_error(
                text,
                format!(
                    "expected KIND:SPEC with KIND one of {}",
                    Self::KINDS.join(", ")
                ),
            )
        })?;
        Self::parse_kind(kind, spec)
    }
}

/// The options every port kind takes: its VLAN profile and address limit.
/// Unset options keep the defaults (an access port of VLAN 1, the default
/// limit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileOptions {
    /// `vlan=N`: an access port of VLAN N.
    pub access: Option<VlanId>,
    /// `trunk=LIST`: a trunk carrying these VLANs, as given (`10,20-30`)
    /// and as parsed.
    pub trunk: Option<(String, VlanSet)>,
    /// `native=N`: the trunk's untagged VLAN.
    pub native: Option<VlanId>,
    /// `max-learned=N`: most addresses learned on the port.
    pub max_learned: Option<usize>,
    /// Isolation, guards, addresses and rate limits ([`super::tenant`]).
    pub tenant: TenantOptions,
}

/// Parses a VLAN id, saying the range when it is out of it.
pub fn parse_vlan(text: &str) -> Result<VlanId, String> {
    let number: u16 = text
        .parse()
        .map_err(|_| format!("expected a VLAN id of 1 to 4094, found {text:?}"))?;
    VlanId::new(number).map_err(|_| format!("expected a VLAN id of 1 to 4094, found {number}"))
}

/// Parses a VLAN list: ids and ranges separated by commas (`10,20-30`).
pub fn parse_vlan_list(text: &str) -> Result<VlanSet, String> {
    let mut set = VlanSet::new();
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse_vlan(first)?, parse_vlan(last)?),
            None => {
                let vlan = parse_vlan(item)?;
                (vlan, vlan)
            }
        };
        if first > last {
            return Err(format!("VLAN range {item:?} runs backwards"));
        }
        for id in first.get()..=last.get() {
            set.insert(VlanId::new(id).map_err(|e| e.to_string())?);
        }
    }
    Ok(set)
}

impl ProfileOptions {
    /// Takes `option` (`key=value`) if it is one of the common options;
    /// `Ok(false)` when it is not, for the kind's parser to reject.
    pub fn take(&mut self, option: &str) -> Result<bool, String> {
        if self.tenant.take(option)? {
            return Ok(true);
        }
        let Some((key, value)) = option.split_once('=') else {
            return Ok(false);
        };
        match key {
            "vlan" => self.access = Some(parse_vlan(value).map_err(|e| format!("vlan: {e}"))?),
            "trunk" => {
                let set = parse_vlan_list(value).map_err(|e| format!("trunk: {e}"))?;
                self.trunk = Some((value.to_string(), set));
            }
            "native" => self.native = Some(parse_vlan(value).map_err(|e| format!("native: {e}"))?),
            "max-learned" => {
                self.max_learned = Some(value.parse().map_err(|_| {
                    format!("max-learned: expected a number of addresses, found {value:?}")
                })?)
            }
            _ => return Ok(false),
        }
        self.check()?;
        Ok(true)
    }

    fn check(&self) -> Result<(), String> {
        if self.access.is_some() && (self.trunk.is_some() || self.native.is_some()) {
            return Err("vlan= (an access port) and trunk=/native= exclude each other".into());
        }
        Ok(())
    }

    /// The profile these options describe.
    pub fn profile(&self) -> PortProfile {
        let mut profile = match (&self.trunk, self.native) {
            (Some((_, allowed)), native) => PortProfile::trunk(allowed.clone(), native),
            (None, Some(native)) => PortProfile::trunk(VlanSet::new(), Some(native)),
            (None, None) => PortProfile::access(self.access.unwrap_or(VlanId::DEFAULT)),
        };
        if let Some(limit) = self.max_learned {
            profile = profile.max_learned(limit);
        }
        self.tenant.apply(&mut profile);
        profile
    }

    fn write_options(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(vlan) = self.access {
            write!(f, ":vlan={vlan}")?;
        }
        if let Some((list, _)) = &self.trunk {
            write!(f, ":trunk={list}")?;
        }
        if let Some(vlan) = self.native {
            write!(f, ":native={vlan}")?;
        }
        if let Some(limit) = self.max_learned {
            write!(f, ":max-learned={limit}")?;
        }
        self.tenant.write_options(f)
    }
}

/// A profile in words: `access 1`, `trunk 10,20-30 native 1`.
pub fn describe_vlans(mode: &VlanMode, trunk_list: Option<&str>) -> String {
    match mode {
        VlanMode::Access(vlan) => format!("access {vlan}"),
        VlanMode::Trunk { native, .. } => {
            let mut text = format!("trunk {}", trunk_list.unwrap_or("-"));
            if let Some(native) = native {
                text.push_str(&format!(" native {native}"));
            }
            text
        }
    }
}

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

    fn name(self) -> &'static str {
        match self {
            TapOffloadMode::None => "none",
            TapOffloadMode::Checksum => "csum",
            TapOffloadMode::Tso => "tso",
        }
    }
}

/// An interface name as Linux takes it: 1 to `IFNAMSIZ - 1` bytes, no
/// `/`, no spaces.
fn check_interface_name(spec: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty()
        || name.len() > tap::IFNAME_MAX
        || name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace())
    {
        return Err(spec_error(
            spec,
            format!(
                "expected an interface name of 1 to {} bytes without '/' or spaces, found {name:?}",
                tap::IFNAME_MAX
            ),
        ));
    }
    Ok(())
}

/// The count of a `queues=N` option, 1 to `max` (`what` names the unit in
/// the error).
fn parse_queues_option(option: &str, max: usize, what: &str) -> Result<usize, String> {
    option["queues=".len()..]
        .parse::<usize>()
        .ok()
        .filter(|q| (1..=max).contains(q))
        .ok_or_else(|| format!("{option:?}: expected 1 to {max} {what}"))
}

/// The MTU of an `mtu=N` option, in the range every port kind takes.
fn parse_mtu_option(option: &str) -> Result<u16, String> {
    option["mtu=".len()..]
        .parse::<u16>()
        .ok()
        .filter(|m| (MTU_MIN..=MTU_MAX).contains(m))
        .ok_or_else(|| format!("{option:?}: expected an MTU of {MTU_MIN} to {MTU_MAX}"))
}

/// One `--tap NAME[:offload=none|csum|tso][:gro=USEC|off][:queues=N][:mtu=N]
/// [:vlan=N|:trunk=LIST[:native=N]][:max-learned=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    /// Interface name.
    pub name: String,
    /// What it offloads.
    pub offload: TapOffloadMode,
    /// How the kernel takes in what the switch writes to it.
    pub receive: KernelReceive,
    /// Queues, when not the command's `--queues`.
    pub queues: Option<usize>,
    /// MTU, when not the command's `--mtu`.
    pub mtu: Option<u16>,
    /// VLAN profile and address limit.
    pub profile: ProfileOptions,
}

impl FromStr for TapSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut parts = split_options(spec).into_iter();
        let name = parts.next().unwrap_or_default().to_string();
        check_interface_name(spec, &name)?;
        let mut parsed = TapSpec {
            name,
            offload: TapOffloadMode::Tso,
            receive: KernelReceive::default(),
            queues: None,
            mtu: None,
            profile: ProfileOptions::default(),
        };
        for option in parts {
            parsed
                .take(option)
                .map_err(|problem| spec_error(spec, problem))?;
        }
        Ok(parsed)
    }
}

impl TapSpec {
    fn take(&mut self, option: &str) -> Result<(), String> {
        match option {
            "offload=none" => self.offload = TapOffloadMode::None,
            "offload=csum" => self.offload = TapOffloadMode::Checksum,
            "offload=tso" => self.offload = TapOffloadMode::Tso,
            "gro=off" => self.receive = KernelReceive::PerFrame,
            other if other.starts_with("offload=") => {
                return Err(format!("{other:?}: expected offload=none, csum or tso"))
            }
            other if other.starts_with("gro=") => {
                let micros = other["gro=".len()..]
                    .parse::<u64>()
                    .ok()
                    .filter(|micros| (1..=1_000_000).contains(micros))
                    .ok_or_else(|| {
                        format!(
                            "{other:?}: expected gro=off or a flush timeout of 1 to 1000000 microseconds"
                        )
                    })?;
                self.receive = KernelReceive::Coalesced {
                    flush: Duration::from_micros(micros),
                };
            }
            other if other.starts_with("queues=") => {
                self.queues = Some(parse_queues_option(other, QUEUES_MAX, "queues")?)
            }
            other if other.starts_with("mtu=") => self.mtu = Some(parse_mtu_option(other)?),
            other => {
                if !self.profile.take(other)? {
                    return Err(format!(
                        "unknown option {other:?}, expected offload=none|csum|tso, gro=USEC|off, \
                         queues=N, mtu=N, vlan=N, trunk=LIST, native=N, max-learned=N, isolated, \
                         guard=LIST, ip=LIST, from-bytes=, from-frames=, to-bytes= or to-frames="
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for TapSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:offload={}", self.name, self.offload.name())?;
        match self.receive {
            KernelReceive::PerFrame => write!(f, ":gro=off")?,
            KernelReceive::Coalesced { flush } => write!(f, ":gro={}", flush.as_micros())?,
        }
        if let Some(queues) = self.queues {
            write!(f, ":queues={queues}")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, ":mtu={mtu}")?;
        }
        self.profile.write_options(f)
    }
}

/// One `--vhost-user PATH[:client][:queues=N][:name=NAME][:mtu=N][:lend=on|off]
/// [:vlan=N|:trunk=LIST[:native=N]][:max-learned=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserSpec {
    /// The socket.
    pub socket: std::path::PathBuf,
    /// The port's name: `name=`, else the socket's file name without its
    /// extension.
    pub name: String,
    /// The VMM listens (QEMU's `server=on`) and the switch connects.
    pub client: bool,
    /// Queue pairs offered, when not the command's `--queues`.
    pub queues: Option<usize>,
    /// MTU, when not the command's `--mtu`.
    pub mtu: Option<u16>,
    /// Large TSO payloads the guest sends are lent to the switch, read out
    /// of its memory by the receiving guest's port, instead of copied into
    /// host memory first (`VhostUserConfig::lend_payloads`).
    pub lend: bool,
    /// VLAN profile and address limit.
    pub profile: ProfileOptions,
}

impl FromStr for VhostUserSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut parts = split_options(spec).into_iter();
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(spec_error(spec, "expected the socket's path first"));
        }
        let socket = std::path::PathBuf::from(path);
        let mut parsed = VhostUserSpec {
            name: socket
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default(),
            socket,
            client: false,
            queues: None,
            mtu: None,
            lend: false,
            profile: ProfileOptions::default(),
        };
        for option in parts {
            parsed
                .take(option)
                .map_err(|problem| spec_error(spec, problem))?;
        }
        if parsed.name.is_empty() {
            return Err(spec_error(
                spec,
                "the socket's path names no file: give name=NAME",
            ));
        }
        Ok(parsed)
    }
}

impl VhostUserSpec {
    fn take(&mut self, option: &str) -> Result<(), String> {
        match option {
            "client" => self.client = true,
            "server" => self.client = false,
            "lend" | "lend=on" => self.lend = true,
            "lend=off" => self.lend = false,
            other if other.starts_with("lend=") => {
                return Err(format!("{other:?}: expected lend=on or lend=off"));
            }
            other if other.starts_with("name=") => {
                let name = &other["name=".len()..];
                if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(format!("{other:?}: expected a name without spaces"));
                }
                self.name = name.to_string();
            }
            other if other.starts_with("queues=") => {
                self.queues = Some(parse_queues_option(other, MAX_QUEUE_PAIRS, "queue pairs")?)
            }
            other if other.starts_with("mtu=") => self.mtu = Some(parse_mtu_option(other)?),
            other => {
                if !self.profile.take(other)? {
                    return Err(format!(
                        "unknown option {other:?}, expected client, server, queues=N, name=NAME, \
                         mtu=N, lend=on|off, vlan=N, trunk=LIST, native=N, max-learned=N, isolated, guard=LIST, \
                         ip=LIST, from-bytes=, from-frames=, to-bytes= or to-frames="
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for VhostUserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:name={}", self.socket.display(), self.name)?;
        if self.client {
            write!(f, ":client")?;
        }
        if let Some(queues) = self.queues {
            write!(f, ":queues={queues}")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, ":mtu={mtu}")?;
        }
        if self.lend {
            write!(f, ":lend=on")?;
        }
        self.profile.write_options(f)
    }
}

/// One `--uplink IFACE[:offload=auto|none|csum|tso][:queues=N][:mtu=N]
/// [:refresh-ms=N][:qdisc-bypass=on|off][:netns=PATH]
/// [:vlan=N|:trunk=LIST[:native=N]][:max-learned=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPortSpec {
    /// The interface.
    pub interface: String,
    /// How to open it (`queues` and `mtu` only where the spec says).
    pub config: UplinkConfig,
    /// Whether the spec gave `queues=` (else the command's `--queues`).
    pub queues_given: bool,
    /// The uplink's own options as given, for [`fmt::Display`].
    options: Vec<String>,
    /// VLAN profile and address limit.
    pub profile: ProfileOptions,
}

impl FromStr for UplinkPortSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut parts = split_options(spec).into_iter();
        let interface = parts.next().unwrap_or_default().to_string();
        check_interface_name(spec, &interface)?;
        let mut parsed = UplinkPortSpec {
            interface,
            config: UplinkConfig::default(),
            queues_given: false,
            options: Vec::new(),
            profile: ProfileOptions::default(),
        };
        for option in parts {
            if parsed
                .profile
                .take(option)
                .map_err(|problem| spec_error(spec, problem))?
            {
                continue;
            }
            parsed
                .config
                .set_option(option)
                .map_err(|problem| spec_error(spec, problem.to_string()))?;
            parsed.queues_given |= option.starts_with("queues=");
            parsed.options.push(option.to_string());
        }
        Ok(parsed)
    }
}

impl fmt::Display for UplinkPortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.interface)?;
        for option in &self.options {
            write!(f, ":{option}")?;
        }
        self.profile.write_options(f)
    }
}

/// What a port is opened with when its spec does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDefaults {
    /// Queues per port.
    pub queues: usize,
    /// MTU.
    pub mtu: u16,
}

/// Whether a port still works, and what else its far side did.
pub type Health = Arc<dyn Fn() -> PortHealth + Send + Sync>;

/// A port's state as `show`, `stats` and the metrics tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHealth {
    /// Up, or down and why.
    pub state: PortState,
    /// A vhost-user port's rings (`None` for other kinds).
    pub vhost_user: Option<VhostUserView>,
}

impl From<PortState> for PortHealth {
    fn from(state: PortState) -> Self {
        PortHealth {
            state,
            vhost_user: None,
        }
    }
}

/// Up, or down and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// The port works.
    Up,
    /// The port's outside is gone.
    Down {
        /// Why, in words.
        reason: String,
    },
}

/// A port opened from its spec, ready for [`vswitch::Switch::add_port`].
pub struct OpenedPort {
    /// The port.
    pub port: Arc<dyn Port>,
    /// How the switch treats it.
    pub profile: PortProfile,
    /// Queues opened.
    pub queues: usize,
    /// The MTU the switch segments to.
    pub mtu: u16,
    /// What the port's far side takes, as it accepted it.
    pub offloads: String,
    /// Anything else worth showing (the kernel receive mode of a TAP).
    pub detail: String,
    /// Tells whether the port still works.
    pub health: Health,
}

/// Why a port could not be opened, with a hint at the usual cause.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The TAP device could not be opened.
    #[error("cannot open TAP {name}: {source}{}", hint_suffix(*hint))]
    Tap {
        /// The device.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
        /// What usually causes it.
        hint: Option<&'static str>,
    },
    /// The uplink's interface could not be opened.
    #[error("cannot open uplink {name}: {source}")]
    Uplink {
        /// The interface.
        name: String,
        /// What failed (with its own hint).
        #[source]
        source: UplinkError,
    },
    /// The vhost-user socket could not be opened.
    #[error("cannot start vhost-user port {name}: {source}")]
    VhostUser {
        /// The port.
        name: String,
        /// What failed (with its own hint).
        #[source]
        source: VhostUserError,
    },
}

fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|hint| format!(" (hint: {hint})"))
        .unwrap_or_default()
}

/// The usual cause of an error opening a TAP device.
pub fn tap_open_hint(err: &io::Error, queues: usize) -> Option<&'static str> {
    match err.raw_os_error()? {
        libc::EPERM | libc::EACCES => Some("needs root or CAP_NET_ADMIN"),
        libc::EINVAL if queues == 1 => Some(
            "a TUN device of that name exists, or a multi-queue TAP of that name: give --queues N (or queues=N in the spec) to match it",
        ),
        libc::EINVAL => Some(
            "a TUN device or a single-queue TAP of that name exists: give --queues 1, or another name",
        ),
        libc::EBUSY => Some("another process holds the device's queues"),
        libc::ENOENT | libc::ENODEV => {
            Some("no /dev/net/tun: load the tun module (modprobe tun)")
        }
        _ => None,
    }
}

/// Opens the port a spec describes. The extension point for new kinds:
/// one match arm per [`PortSpec`] variant.
pub fn open_port(spec: &PortSpec, defaults: PortDefaults) -> Result<OpenedPort, OpenError> {
    match spec {
        PortSpec::Tap(tap) => open_tap(tap, defaults),
        PortSpec::VhostUser(spec) => open_vhost_user(spec, defaults),
        PortSpec::Uplink(spec) => open_uplink(spec, defaults),
    }
}

fn open_tap(spec: &TapSpec, defaults: PortDefaults) -> Result<OpenedPort, OpenError> {
    let queues = spec.queues.unwrap_or(defaults.queues);
    let mtu = spec.mtu.unwrap_or(defaults.mtu);
    let config = TapConfig::new(spec.offload.offloads())
        .queues(queues)
        .mtu(mtu)
        .receive(spec.receive);
    let port = TapPort::open_with(&spec.name, config).map_err(|source| OpenError::Tap {
        name: spec.name.clone(),
        hint: tap_open_hint(&source, queues),
        source,
    })?;
    // The device lives in this namespace unless it was moved away before
    // the switch attached to it; then whoever moved it sets it up.
    if let Err(err) = tap::set_interface_mtu(&spec.name, u32::from(mtu)) {
        tracing::warn!(port = %spec.name, "cannot set the interface MTU to {mtu}: {err}");
    }
    if let Err(err) = tap::set_interface_up(&spec.name) {
        tracing::warn!(port = %spec.name, "cannot bring the interface up: {err}");
    }
    let detail = match port.kernel_receive() {
        KernelReceive::PerFrame => "kernel receive per frame".to_string(),
        KernelReceive::Coalesced { flush } => {
            format!(
                "kernel receive GRO, flushed within {} us",
                flush.as_micros()
            )
        }
    };
    let accepted = port.offloads();
    let offloads = describe_tap_offloads(accepted);
    let port = Arc::new(port);
    let health_port = port.clone();
    let health: Health = Arc::new(move || {
        if health_port.is_gone() {
            PortState::Down {
                reason: "the TAP device was deleted".into(),
            }
            .into()
        } else {
            PortState::Up.into()
        }
    });
    Ok(OpenedPort {
        queues: port.queues().len(),
        port,
        profile: spec.profile.profile(),
        mtu,
        offloads,
        detail,
        health,
    })
}

fn open_vhost_user(spec: &VhostUserSpec, defaults: PortDefaults) -> Result<OpenedPort, OpenError> {
    // More queue pairs than a guest may ever use serve nobody.
    let pairs = spec.queues.unwrap_or(defaults.queues).min(MAX_QUEUE_PAIRS);
    let mtu = spec.mtu.unwrap_or(defaults.mtu);
    let mode = if spec.client {
        SocketMode::Client
    } else {
        SocketMode::Server
    };
    let config = VhostUserConfig::new(spec.name.clone(), spec.socket.clone())
        .queue_pairs(pairs)
        .mtu(mtu)
        .mode(mode)
        .lend_payloads(spec.lend);
    let port = VhostUserPort::start(config).map_err(|source| OpenError::VhostUser {
        name: spec.name.clone(),
        source,
    })?;
    let health_port = port.clone();
    let health: Health = Arc::new(move || vhost_user_health(health_port.report()));
    Ok(OpenedPort {
        queues: pairs,
        port: port.clone(),
        profile: spec.profile.profile(),
        mtu,
        offloads: "offered: csum, TSO4/6, ECN, UFO, USO".into(),
        detail: format!(
            "socket {} ({}{})",
            spec.socket.display(),
            if spec.client {
                "the VMM listens"
            } else {
                "the switch listens"
            },
            if spec.lend {
                "; large TSO payloads lent, not copied"
            } else {
                ""
            }
        ),
        health,
    })
}

/// A vhost-user port's state from its report: up while a guest is
/// attached, and, attached or not, the queues its guests broke and the
/// last problem.
pub fn vhost_user_health(report: VhostUserReport) -> PortHealth {
    let state = if report.connected {
        PortState::Up
    } else {
        PortState::Down {
            reason: match &report.last_error {
                Some(error) if report.connections > 0 => {
                    format!("no guest attached (last: {error})")
                }
                None if report.connections > 0 => {
                    "no guest attached (the last one disconnected)".into()
                }
                _ => "no guest attached yet".into(),
            },
        }
    };
    PortHealth {
        vhost_user: Some(VhostUserView {
            // What no guest is attached to is not served anyway.
            broken_now: if report.connected {
                report.broken_now
            } else {
                Vec::new()
            },
            broken_queues: report.broken_queues,
            last_error: report.last_error,
        }),
        state,
    }
}

fn open_uplink(spec: &UplinkPortSpec, defaults: PortDefaults) -> Result<OpenedPort, OpenError> {
    let mut config = spec.config.clone();
    if !spec.queues_given {
        config.queues = defaults.queues;
    }
    let port = UplinkPort::open(&spec.interface, config).map_err(|source| OpenError::Uplink {
        name: spec.interface.clone(),
        source,
    })?;
    let report = port.report();
    let mtu = report.declared.mtu;
    let port = Arc::new(port);
    let health_port = port.clone();
    let health: Health = Arc::new(move || {
        match health_port.link() {
            LinkState::Up => PortState::Up,
            LinkState::Down => PortState::Down {
                reason: "the interface's link is down".into(),
            },
            LinkState::Gone => PortState::Down {
                reason: "the interface is gone".into(),
            },
        }
        .into()
    });
    Ok(OpenedPort {
        queues: report.queues,
        port,
        profile: spec.profile.profile(),
        mtu,
        offloads: format!("NIC offers {}", report.nic),
        detail: report.to_string(),
        health,
    })
}

fn describe_tap_offloads(offloads: TapOffloads) -> String {
    if offloads == TapOffloads::FULL {
        "checksum, TSO, USO".into()
    } else if offloads == TapOffloads::CHECKSUM {
        "checksum".into()
    } else if offloads == TapOffloads::NONE {
        "none".into()
    } else {
        format!("{offloads:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_specs_parse() {
        let tap0 = "tap0".parse::<TapSpec>().unwrap();
        assert_eq!(tap0.name, "tap0");
        assert_eq!(tap0.offload, TapOffloadMode::Tso);
        assert_eq!(tap0.receive, KernelReceive::default());
        let tap1 = "tap1:offload=none:gro=250".parse::<TapSpec>().unwrap();
        assert_eq!(tap1.offload, TapOffloadMode::None);
        assert_eq!(
            tap1.receive,
            KernelReceive::Coalesced {
                flush: Duration::from_micros(250)
            }
        );
        assert_eq!(
            "tap1:gro=off".parse::<TapSpec>().unwrap().receive,
            KernelReceive::PerFrame
        );
        for bad in [
            "offload=fast",
            "gro=",
            "gro=0",
            "gro=-5",
            "gro=1000001",
            "gro=on",
            "queues=0",
            "mtu=70000",
            "mtu=100",
            "vlan=4095",
            "trunk=10-5",
            "max-learned=x",
            "colour=red",
        ] {
            assert!(format!("tap1:{bad}").parse::<TapSpec>().is_err(), "{bad}");
        }
        assert!("".parse::<TapSpec>().is_err());
        assert!("a-name-far-too-long-for-linux".parse::<TapSpec>().is_err());
        assert!("tap1:vlan=10:trunk=20".parse::<TapSpec>().is_err());
    }

    #[test]
    fn uplink_specs_parse() {
        let spec: UplinkPortSpec = "eth1:offload=none:queues=4:trunk=10,20".parse().unwrap();
        assert_eq!(spec.interface, "eth1");
        assert!(spec.queues_given && spec.config.queues == 4);
        assert!(spec.profile.trunk.is_some());
        for bad in [
            "",
            "eth1:offload=gso",
            "eth1:queues=0",
            "eth1:speed=10",
            "a/b",
        ] {
            assert!(bad.parse::<UplinkPortSpec>().is_err(), "{bad}");
        }
        let err = "eth1:offload=gso"
            .parse::<UplinkPortSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("auto, none, csum or tso"), "{err}");
    }

    #[test]
    fn vhost_user_specs_parse() {
        let spec: VhostUserSpec = "/run/vswitch/vm0.sock".parse().unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.client, spec.queues),
            ("vm0", false, None)
        );
        let spec: VhostUserSpec = "/tmp/q.sock:client:queues=8:name=web".parse().unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.client, spec.queues, spec.lend),
            ("web", true, Some(8), false)
        );
        for lent in ["/tmp/q.sock:lend", "/tmp/q.sock:lend=on"] {
            let spec: VhostUserSpec = lent.parse().unwrap();
            assert!(spec.lend, "{lent}");
            assert_eq!(spec.to_string(), "/tmp/q.sock:name=q:lend=on");
            assert_eq!(spec.to_string().parse::<VhostUserSpec>().unwrap(), spec);
        }
        let spec: VhostUserSpec = "/tmp/q.sock:lend:lend=off".parse().unwrap();
        assert!(!spec.lend, "the last one says");
        let err = "/x.sock:lend=yes"
            .parse::<VhostUserSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("lend=on or lend=off"), "{err}");
        for bad in [
            "",
            ":client",
            "/x.sock:queues=9",
            "/x.sock:queues=0",
            "/x.sock:mtu=70000",
            "/x.sock:colour=red",
        ] {
            assert!(bad.parse::<VhostUserSpec>().is_err(), "{bad}");
        }
        let err = "/x.sock:queues=9"
            .parse::<VhostUserSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 8"), "{err}");
    }

    #[test]
    fn errors_say_what_was_expected() {
        let err = "tap1:mtu=70000".parse::<TapSpec>().unwrap_err().to_string();
        assert!(err.contains("576 to 9216"), "{err}");
        let err = "tap1:vlan=0".parse::<TapSpec>().unwrap_err().to_string();
        assert!(err.contains("1 to 4094"), "{err}");
    }

    #[test]
    fn specs_round_trip_through_their_text() {
        for text in [
            "tap:tap0:offload=tso:gro=1000",
            "tap:t1:offload=csum:gro=off:queues=2:mtu=9000:vlan=10:max-learned=5",
            "tap:t2:offload=none:gro=250:trunk=10,20-30:native=1",
            "tap:t3:offload=tso:gro=1000:isolated=on:guard=source,dhcp:ip=[10.0.0.2,2001:db8::/64]\
             :from-bytes=125000000/1048576:to-frames=1000/100/5000",
        ] {
            let spec: PortSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.kind(), "tap");
        }
        assert!("vhost:x".parse::<PortSpec>().is_err());
        for text in [
            "uplink:eth1",
            "uplink:eth1:offload=csum:queues=2:vlan=20",
            "vhost-user:/run/vm0.sock:name=vm0",
            "vhost-user:/tmp/a.sock:name=guest-a:client:queues=4:mtu=9000:vlan=20",
            "vhost-user:/tmp/b.sock:name=b:guard=all:ip=[fe80::1/128]:from-frames=off",
        ] {
            let spec: PortSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert!("tap0".parse::<PortSpec>().is_err());
    }

    #[test]
    fn profiles_follow_the_options() {
        let spec: TapSpec = "t:trunk=10,20-22:native=1:max-learned=7".parse().unwrap();
        let profile = spec.profile.profile();
        assert_eq!(profile.max_learned, 7);
        match profile.vlan {
            VlanMode::Trunk { allowed, native } => {
                assert!(allowed.contains(VlanId::new(21).unwrap()));
                assert!(!allowed.contains(VlanId::new(23).unwrap()));
                assert_eq!(native, Some(VlanId::DEFAULT));
            }
            other => panic!("expected a trunk, found {other:?}"),
        }
        let access: TapSpec = "t:vlan=30".parse().unwrap();
        assert_eq!(
            access.profile.profile().vlan,
            VlanMode::Access(VlanId::new(30).unwrap())
        );
    }
}
