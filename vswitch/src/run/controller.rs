//! The running switch as the control plane sees it: the [`Switch`] and,
//! for each port, the spec it was opened from and what `show` tells about
//! it. Every control request (from the socket, the configuration or the
//! command line) goes through [`Controller`].

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use vswitch::{DropSide, PortId, PortProfile, PortStats, Switch, VlanId, VlanMode};
use vswitch_offload::EgressCapabilities;

use crate::ctl::protocol::{
    ErrorView, FdbView, Flushed, PortCounters, PortView, RemovedPort, Request, Response, Show,
    StatsView, WorkerCounters,
};
use crate::run::spec::{
    describe_vlans, open_port, parse_vlan_list, Health, OpenError, PortDefaults, PortHealth,
    PortSpec, PortState, SpecError,
};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request does not make sense.
    #[error("{0}")]
    BadRequest(String),
    /// The spec does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No port of that name.
    #[error("no port named {name:?}; the ports are: {known}")]
    NoSuchPort {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A port of that name is already in the switch.
    #[error("a port named {name:?} is already in the switch (remove it first with `vswitch ctl del-port {name}`)")]
    PortExists {
        /// The name.
        name: String,
    },
    /// The port could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The switch refused.
    #[error(transparent)]
    Switch(#[from] vswitch::SwitchError),
}

impl ControlError {
    fn kind(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) | ControlError::Spec(_) => "bad-request",
            ControlError::NoSuchPort { .. } => "no-such-port",
            ControlError::PortExists { .. } => "port-exists",
            ControlError::Open(_) => "open-failed",
            ControlError::Switch(_) => "switch",
        }
    }
}

struct Entry {
    id: PortId,
    spec: PortSpec,
    profile: PortProfile,
    /// The trunk's VLAN list as given, to show it back.
    trunk_list: Option<String>,
    queues: usize,
    mtu: u16,
    offloads: String,
    switch_does: String,
    detail: String,
    health: Health,
    /// The state last logged.
    logged_up: bool,
    /// The vhost-user queues broken since the port was added, as last
    /// logged.
    logged_broken: u64,
}

/// A change in a port's health worth a log line ([`Controller::state_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// The port came back up.
    Up {
        /// The port's name.
        port: String,
    },
    /// The port went down.
    Down {
        /// The port's name.
        port: String,
        /// Why, as `show` says it.
        reason: String,
    },
    /// The guest of a vhost-user port broke virtqueues since the last call.
    QueuesBroken {
        /// The port's name.
        port: String,
        /// Queues broken since the last call.
        newly: u64,
        /// The queues of the current connection not served now.
        broken_now: Vec<u16>,
        /// The port's last error.
        error: Option<String>,
    },
}

/// The switch and its ports. See the module documentation.
pub struct Controller {
    switch: Switch,
    ports: Mutex<Vec<Entry>>,
    defaults: PortDefaults,
    started: Instant,
}

/// What the switch does in software for a port that takes `egress`.
pub fn software_work(egress: &EgressCapabilities) -> String {
    let segments = !(egress.tso4 && egress.tso6);
    match (egress.checksum, segments) {
        (true, false) => "nothing: large frames pass through".into(),
        (true, true) => "segments (the port completes checksums)".into(),
        (false, _) => "segments and checksums".into(),
    }
}

fn counters_of(name: &str, health: &PortHealth, stats: &PortStats) -> PortCounters {
    PortCounters {
        name: name.to_string(),
        state: state_name(&health.state).into(),
        rx_frames: stats.rx_frames,
        rx_bytes: stats.rx_bytes,
        tx_frames: stats.tx_frames,
        tx_bytes: stats.tx_bytes,
        not_learned: stats.not_learned,
        drops: stats
            .drops
            .nonzero()
            .map(|(reason, count)| (reason.name().to_string(), count))
            .collect(),
        sw_segmented_frames: stats.software.segmented,
        sw_segments: stats.software.segments,
        sw_checksums: stats.software.checksums,
        gro_merges: stats.software.coalesced,
        lent_copied_frames: stats.software.lent_copied,
        drops_ingress: stats.drops.side_total(DropSide::Ingress),
        drops_egress: stats.drops.side_total(DropSide::Egress),
        flood_copies: stats.flood_copies,
        vhost_user: health.vhost_user.clone(),
    }
}

fn state_name(state: &PortState) -> &'static str {
    match state {
        PortState::Up => "up",
        PortState::Down { .. } => "down",
    }
}

impl Controller {
    /// A controller of `switch`, whose ports open with `defaults`.
    pub fn new(switch: Switch, defaults: PortDefaults) -> Self {
        Controller {
            switch,
            ports: Mutex::new(Vec::new()),
            defaults,
            started: Instant::now(),
        }
    }

    /// The switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Gives the switch back, for its shutdown.
    pub fn into_switch(self) -> Switch {
        self.switch
    }

    fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn no_such_port(ports: &[Entry], name: &str) -> ControlError {
        let known: Vec<&str> = ports.iter().map(|e| e.spec.name()).collect();
        ControlError::NoSuchPort {
            name: name.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }

    /// Opens a port and adds it to the switch while traffic runs.
    pub fn add_port(&self, spec: PortSpec) -> Result<PortView, ControlError> {
        let mut ports = self.lock();
        if ports.iter().any(|e| e.spec.name() == spec.name()) {
            return Err(ControlError::PortExists {
                name: spec.name().to_string(),
            });
        }
        let opened = open_port(&spec, self.defaults)?;
        let egress = opened.port.capabilities().egress;
        let id = self
            .switch
            .add_port(opened.port.clone(), opened.profile.clone())?;
        tracing::info!(
            port = spec.name(),
            kind = spec.kind(),
            queues = opened.queues,
            mtu = opened.mtu,
            offloads = %opened.offloads,
            "port added ({})",
            opened.detail
        );
        let entry = Entry {
            id,
            trunk_list: spec.profile().trunk.as_ref().map(|(list, _)| list.clone()),
            spec,
            profile: opened.profile,
            queues: opened.queues,
            mtu: opened.mtu,
            offloads: opened.offloads,
            switch_does: software_work(&egress),
            detail: opened.detail,
            health: opened.health,
            logged_up: true,
            logged_broken: 0,
        };
        let view = self.view(&entry);
        ports.push(entry);
        Ok(view)
    }

    /// Removes a port; returns it with its final counters.
    pub fn del_port(&self, name: &str) -> Result<RemovedPort, ControlError> {
        let mut ports = self.lock();
        let index = ports
            .iter()
            .position(|e| e.spec.name() == name)
            .ok_or_else(|| Self::no_such_port(&ports, name))?;
        let view = self.view(&ports[index]);
        let health = (ports[index].health)();
        let report = self.switch.remove_port(ports[index].id)?;
        ports.remove(index);
        tracing::info!(port = name, "port removed");
        Ok(RemovedPort {
            port: view,
            counters: counters_of(name, &health, &report.stats),
        })
    }

    fn view(&self, entry: &Entry) -> PortView {
        let PortHealth { state, vhost_user } = (entry.health)();
        PortView {
            name: entry.spec.name().to_string(),
            id: entry.id.0,
            kind: entry.spec.kind().to_string(),
            spec: entry.spec.to_string(),
            state: state_name(&state).into(),
            down_reason: match state {
                PortState::Up => None,
                PortState::Down { reason } => Some(reason),
            },
            queues: entry.queues,
            mtu: entry.mtu,
            offloads: entry.offloads.clone(),
            switch_does: entry.switch_does.clone(),
            vlan: describe_vlans(&entry.profile.vlan, entry.trunk_list.as_deref()),
            max_learned: entry.profile.max_learned,
            learned: self.switch.learned_on(entry.id),
            detail: entry.detail.clone(),
            protection: super::tenant::describe(&entry.profile),
            vhost_user,
        }
    }

    /// Logs every port that went down (or came back), and every guest
    /// that broke a virtqueue, since the last call.
    pub fn log_state_changes(&self) {
        for change in self.state_changes() {
            match change {
                StateChange::Up { port } => tracing::info!(port, "port is up again"),
                StateChange::Down { port, reason } => tracing::warn!(
                    port,
                    "port is down: {reason}; frames toward it are dropped and counted \
                     (egress_port_error) until `vswitch ctl del-port {port}`"
                ),
                StateChange::QueuesBroken {
                    port,
                    newly,
                    broken_now,
                    error,
                } => tracing::warn!(
                    port,
                    "the guest broke {newly} virtqueue(s) (not served now: {broken_now:?}); \
                     they stay unserved until it resets the device or reconnects; last error: {}",
                    error.as_deref().unwrap_or("none")
                ),
            }
        }
    }

    /// What changed in the ports' health since the last call: ports that
    /// went down or came back, guests that broke virtqueues.
    pub fn state_changes(&self) -> Vec<StateChange> {
        let mut changes = Vec::new();
        let mut ports = self.lock();
        for entry in ports.iter_mut() {
            let health = (entry.health)();
            let port = entry.spec.name().to_string();
            if let Some(rings) = health.vhost_user {
                if rings.broken_queues > entry.logged_broken {
                    changes.push(StateChange::QueuesBroken {
                        port: port.clone(),
                        newly: rings.broken_queues - entry.logged_broken,
                        broken_now: rings.broken_now,
                        error: rings.last_error,
                    });
                    entry.logged_broken = rings.broken_queues;
                }
            }
            let up = health.state == PortState::Up;
            if up != entry.logged_up {
                entry.logged_up = up;
                changes.push(match health.state {
                    PortState::Up => StateChange::Up { port },
                    PortState::Down { reason } => StateChange::Down { port, reason },
                });
            }
        }
        changes
    }

    /// Every port and the workers.
    pub fn show(&self) -> Show {
        let ports = self.lock();
        Show {
            version: vswitch::VERSION.to_string(),
            workers: self.switch.workers(),
            uptime_ms: self.uptime_ms(),
            learned_addresses: self.switch.stats().learned_addresses,
            ports: ports.iter().map(|e| self.view(e)).collect(),
        }
    }

    /// The counters of every port (or of one).
    pub fn stats(&self, only: Option<&str>) -> Result<StatsView, ControlError> {
        let ports = self.lock();
        if let Some(name) = only {
            if !ports.iter().any(|e| e.spec.name() == name) {
                return Err(Self::no_such_port(&ports, name));
            }
        }
        let stats = self.switch.stats();
        let uptime_ms = self.uptime_ms();
        let counters = stats
            .ports
            .iter()
            .filter_map(|report| {
                let entry = ports.iter().find(|e| e.id == report.id)?;
                if only.is_some_and(|name| name != report.name) {
                    return None;
                }
                Some(counters_of(&report.name, &(entry.health)(), &report.stats))
            })
            .collect();
        Ok(StatsView {
            uptime_ms,
            ports: counters,
            workers: stats
                .workers
                .iter()
                .enumerate()
                .map(|(index, w)| WorkerCounters {
                    index,
                    frames: w.frames,
                    bytes: w.bytes,
                    handed_off: w.handed_off,
                    sent: w.sent,
                    busy_ns: w.busy_ns,
                })
                .collect(),
            learned_addresses: stats.learned_addresses,
        })
    }

    /// The learned addresses, optionally of one VLAN or port.
    pub fn fdb(&self, vlan: Option<u16>, port: Option<&str>) -> Result<Vec<FdbView>, ControlError> {
        let vlan = vlan
            .map(VlanId::new)
            .transpose()
            .map_err(|e| ControlError::BadRequest(format!("vlan: {e}")))?;
        let ports = self.lock();
        let port_id = match port {
            Some(name) => Some(
                ports
                    .iter()
                    .find(|e| e.spec.name() == name)
                    .map(|e| e.id)
                    .ok_or_else(|| Self::no_such_port(&ports, name))?,
            ),
            None => None,
        };
        Ok(self
            .switch
            .fdb_entries()
            .into_iter()
            .filter(|e| vlan.is_none_or(|v| e.vlan == v))
            .filter(|e| port_id.is_none_or(|p| e.port == p))
            .map(|e| FdbView {
                mac: e.mac.to_string(),
                vlan: e.vlan.get(),
                port: ports
                    .iter()
                    .find(|p| p.id == e.port)
                    .map_or_else(|| e.port.to_string(), |p| p.spec.name().to_string()),
                age_ms: e.age_ms,
            })
            .collect())
    }

    /// Changes a port's profile.
    pub fn set_port(
        &self,
        name: &str,
        vlan: Option<u16>,
        trunk: Option<String>,
        native: Option<u16>,
        max_learned: Option<usize>,
        options: &[String],
    ) -> Result<PortView, ControlError> {
        let mut tenant = super::tenant::TenantOptions::default();
        for option in options {
            if !tenant.take(option).map_err(ControlError::BadRequest)? {
                return Err(ControlError::BadRequest(format!(
                    "options: {option:?} is not a tenant option, expected one of {}",
                    super::tenant::KEYS.join(", ")
                )));
            }
        }
        if vlan.is_some() && (trunk.is_some() || native.is_some()) {
            return Err(ControlError::BadRequest(
                "vlan (an access port) and trunk/native exclude each other".into(),
            ));
        }
        let vlan_id = |v: u16| VlanId::new(v).map_err(|e| ControlError::BadRequest(e.to_string()));
        let mut ports = self.lock();
        let index = ports
            .iter()
            .position(|e| e.spec.name() == name)
            .ok_or_else(|| Self::no_such_port(&ports, name))?;
        let entry = &ports[index];
        let mut profile = entry.profile.clone();
        let mut trunk_list = entry.trunk_list.clone();
        if let Some(v) = vlan {
            profile.vlan = VlanMode::Access(vlan_id(v)?);
            trunk_list = None;
        }
        if trunk.is_some() || native.is_some() {
            let (old_allowed, old_native) = match &profile.vlan {
                VlanMode::Trunk { allowed, native } => (Some(allowed.clone()), *native),
                VlanMode::Access(_) => (None, None),
            };
            let allowed = match &trunk {
                Some(list) => parse_vlan_list(list).map_err(ControlError::BadRequest)?,
                None => old_allowed.unwrap_or_default(),
            };
            let native: Option<VlanId> = match native {
                Some(v) => Some(vlan_id(v)?),
                None => old_native,
            };
            if trunk.is_some() {
                trunk_list = trunk;
            }
            profile.vlan = VlanMode::Trunk { allowed, native };
        }
        if let Some(limit) = max_learned {
            profile.max_learned = limit;
        }
        tenant.apply(&mut profile);
        self.switch.set_port_profile(entry.id, profile.clone())?;
        let entry = &mut ports[index];
        entry.profile = profile;
        entry.trunk_list = trunk_list;
        tracing::info!(port = name, "port profile changed");
        Ok(self.view(entry))
    }

    /// Carries out one request.
    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Show => to_value(self.show()),
            Request::AddPort { kind, spec } => PortSpec::parse_kind(&kind, &spec)
                .map_err(ControlError::from)
                .and_then(|spec| self.add_port(spec))
                .and_then(to_value),
            Request::DelPort { name } => self.del_port(&name).and_then(to_value),
            Request::Fdb { vlan, port } => self.fdb(vlan, port.as_deref()).and_then(to_value),
            Request::FdbFlush => to_value(Flushed {
                removed: self.switch.flush_fdb(),
            }),
            Request::Stats { port } => self.stats(port.as_deref()).and_then(to_value),
            Request::SetPort {
                name,
                vlan,
                trunk,
                native,
                max_learned,
                options,
            } => self
                .set_port(&name, vlan, trunk, native, max_learned, &options)
                .and_then(to_value),
        };
        match result {
            Ok(value) => Response::Ok(value),
            Err(err) => Response::Error(ErrorView {
                kind: err.kind().into(),
                message: err.to_string(),
            }),
        }
    }
}

fn to_value<T: serde::Serialize>(value: T) -> Result<serde_json::Value, ControlError> {
    serde_json::to_value(value).map_err(|e| ControlError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller over a one-worker switch, with one queue and MTU 1500
    /// as the port defaults.
    fn one_worker_controller() -> Controller {
        let switch = Switch::start(vswitch::SwitchConfig::default().workers(1)).unwrap();
        Controller::new(
            switch,
            PortDefaults {
                queues: 1,
                mtu: 1500,
            },
        )
    }

    #[test]
    fn software_work_follows_the_capabilities() {
        assert_eq!(
            software_work(&EgressCapabilities::none(1500)),
            "segments and checksums"
        );
        assert_eq!(
            software_work(&EgressCapabilities::checksum_only(1500)),
            "segments (the port completes checksums)"
        );
        assert_eq!(
            software_work(&EgressCapabilities::full(1500)),
            "nothing: large frames pass through"
        );
    }

    /// A vhost-user port whose guest broke its transmit ring and stays
    /// attached, with the report the port gives then (see the port's own
    /// test, `a_queue_the_attached_guest_broke_is_in_the_report`): `show`,
    /// its JSON and the metrics all say so.
    #[test]
    fn a_queue_broken_by_an_attached_guest_is_shown() {
        use vswitch_ports::vhost_user::VhostUserReport;
        use vswitch_ports::{memory_port, MemoryPortConfig};

        use crate::run::spec::vhost_user_health;

        let controller = one_worker_controller();
        let error = "virtqueue 1 is broken: invalid available ring index \
                     (more descriptors to process than queue size)";
        let report = VhostUserReport {
            connected: true,
            connections: 1,
            broken_queues: 1,
            broken_now: vec![1],
            last_error: Some(error.into()),
            ..VhostUserReport::default()
        };
        // The port the switch moves frames through stands in for the
        // vhost-user port, whose report the health closure reads.
        let (port, _endpoint) = memory_port(MemoryPortConfig::new("vm0"));
        let id = controller
            .switch
            .add_port(std::sync::Arc::new(port), PortProfile::default())
            .unwrap();
        controller.lock().push(Entry {
            id,
            spec: PortSpec::parse_kind("vhost-user", "/tmp/vm0.sock:name=vm0").unwrap(),
            profile: PortProfile::default(),
            trunk_list: None,
            queues: 1,
            mtu: 1500,
            offloads: "offered: csum".into(),
            switch_does: "nothing".into(),
            detail: "socket /tmp/vm0.sock".into(),
            health: std::sync::Arc::new(move || vhost_user_health(report.clone())),
            logged_up: true,
            logged_broken: 0,
        });

        // The log says it once.
        assert_eq!(
            controller.state_changes(),
            vec![StateChange::QueuesBroken {
                port: "vm0".into(),
                newly: 1,
                broken_now: vec![1],
                error: Some(error.into()),
            }]
        );
        assert_eq!(controller.state_changes(), Vec::new());

        let show = controller.show();
        let text = crate::ctl::client::format_show(&show);
        assert!(
            text.lines().any(|line| line
                == format!(
                    "vm0 guest: virtqueue 1 (pair 0 transmit) broken, not served until the \
                     guest resets the device or reconnects; 1 queue(s) broken since the port \
                     was added; last error: {error}"
                )),
            "{text}"
        );
        assert!(!text.contains("is down"), "{text}");
        let json = serde_json::to_value(&show).unwrap();
        assert_eq!(json["ports"][0]["state"], "up");
        assert_eq!(
            json["ports"][0]["vhost_user"],
            serde_json::json!({"broken_now": [1], "broken_queues": 1, "last_error": error})
        );

        let metrics = crate::metrics::encode_stats(&controller.stats(None).unwrap());
        for line in [
            r#"vswitch_port_up{port="vm0"} 1"#.to_string(),
            r#"vswitch_port_broken_queues{port="vm0"} 1"#.to_string(),
            r#"vswitch_port_queues_broken_total{port="vm0"} 1"#.to_string(),
            format!(r#"vswitch_port_last_error{{port="vm0",error="{error}"}} 1"#),
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{line} missing from\n{metrics}"
            );
        }
        controller.into_switch().shutdown();
    }

    #[test]
    fn requests_about_unknown_ports_say_which_exist() {
        let controller = one_worker_controller();
        let Response::Error(err) = controller.handle(Request::DelPort { name: "x".into() }) else {
            panic!("expected an error")
        };
        assert_eq!(err.kind, "no-such-port");
        assert!(
            err.message.contains("the ports are: none"),
            "{}",
            err.message
        );
        let Response::Error(err) = controller.handle(Request::AddPort {
            kind: "vhost".into(),
            spec: "x".into(),
        }) else {
            panic!("expected an error")
        };
        assert_eq!(err.kind, "bad-request");
        let Response::Ok(flushed) = controller.handle(Request::FdbFlush) else {
            panic!("expected ok")
        };
        assert_eq!(flushed["removed"], 0);
    }
}
