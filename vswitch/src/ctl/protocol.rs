//! The control protocol: JSON lines over a Unix stream socket.
//!
//! A client writes one request per line, a JSON object whose `cmd` names
//! it, and reads one response line per request, in order:
//!
//! ```text
//! {"cmd":"show"}
//! {"cmd":"add-port","kind":"tap","spec":"tap2:offload=csum"}
//! {"cmd":"del-port","name":"tap2"}
//! {"cmd":"fdb","vlan":10,"port":"tap0"}        vlan and port may be left out
//! {"cmd":"fdb-flush"}
//! {"cmd":"stats","port":"tap0"}                port may be left out
//! {"cmd":"set-port","name":"tap0","vlan":10,"max_learned":64}
//!                                              or "trunk":"10,20-30","native":1
//! {"cmd":"set-port","name":"tap0","options":["isolated","guard=all","ip=10.0.0.2"]}
//!                                              tenant options, as in a port spec
//! ```
//!
//! A response is `{"ok":RESULT}` or `{"error":{"kind":KIND,"message":TEXT}}`,
//! with KIND one of `bad-request`, `no-such-port`, `port-exists`,
//! `open-failed`, `switch`. The results are the [`Show`], [`PortView`],
//! [`RemovedPort`], [`FdbView`], [`Flushed`] and [`StatsView`] objects below
//! (`add-port` and `set-port` answer a [`PortView`]). `kind` and `spec` of
//! `add-port` are those of `vswitch run --KIND SPEC`. Counters only grow
//! while a port is in the switch; `uptime_ms` of two `stats` answers gives
//! the interval to compute rates over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every port and the workers.
    Show,
    /// Opens a port and adds it.
    AddPort {
        /// The port kind (`tap`).
        kind: String,
        /// The spec, as after `--KIND` on the command line.
        spec: String,
    },
    /// Removes a port; answers its final counters.
    DelPort {
        /// The port's name.
        name: String,
    },
    /// The learned addresses.
    Fdb {
        /// Only this VLAN.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<u16>,
        /// Only this port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// Forgets every learned address.
    FdbFlush,
    /// The counters.
    Stats {
        /// Only this port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// Changes a port's profile; options left out are kept.
    SetPort {
        /// The port's name.
        name: String,
        /// Make it an access port of this VLAN.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<u16>,
        /// Make it a trunk of these VLANs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trunk: Option<String>,
        /// The trunk's untagged VLAN.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        native: Option<u16>,
        /// Most addresses learned on the port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_learned: Option<usize>,
        /// Tenant options (`isolated`, `guard=`, `ip=`, `from-bytes=`,
        /// ...), each as in a port spec.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
    },
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// The request was carried out.
    Ok(serde_json::Value),
    /// It was not.
    Error(ErrorView),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    /// `bad-request`, `no-such-port`, `port-exists`, `open-failed` or `switch`.
    pub kind: String,
    /// What went wrong, what was expected.
    pub message: String,
}

/// One port as `show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// Its name.
    pub name: String,
    /// The switch's id for it.
    pub id: u32,
    /// `tap`, ...
    pub kind: String,
    /// The spec it was opened with (`KIND:SPEC`).
    pub spec: String,
    /// `up` or `down`.
    pub state: String,
    /// Why it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
    /// Queue pairs.
    pub queues: usize,
    /// The MTU the switch segments to.
    pub mtu: u16,
    /// What the port's far side takes (accepted offloads).
    pub offloads: String,
    /// What the switch does for it in software.
    pub switch_does: String,
    /// `access 1`, `trunk 10,20 native 1`.
    pub vlan: String,
    /// Most addresses learned on it.
    pub max_learned: usize,
    /// Addresses learned on it now.
    pub learned: usize,
    /// Kind-specific facts (a TAP's kernel receive mode).
    pub detail: String,
    /// Isolation, guards, addresses and rate limits, when any is set
    /// (`isolated; guard all; ip 10.0.0.2; from-bytes 125000000/12500000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<String>,
    /// A vhost-user port's rings: what its guests broke, and the last
    /// problem, whether or not a guest is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUserView>,
}

/// What a vhost-user port's guests did to its rings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VhostUserView {
    /// Virtqueues of the attached guest the port no longer serves because
    /// the guest broke them (receive queues even, transmit queues odd:
    /// queue pair N is 2N and 2N+1), until it resets the device or
    /// reconnects. Empty while no guest is attached.
    #[serde(default)]
    pub broken_now: Vec<u16>,
    /// Virtqueues marked broken since the port was added, over every guest.
    #[serde(default)]
    pub broken_queues: u64,
    /// The last problem with a connection or a ring, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The answer to `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Show {
    /// The switch's version.
    pub version: String,
    /// Worker threads.
    pub workers: usize,
    /// Milliseconds since the switch started.
    pub uptime_ms: u64,
    /// Learned addresses in all.
    pub learned_addresses: usize,
    /// The ports, in id order.
    pub ports: Vec<PortView>,
}

/// One port's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortCounters {
    /// Its name.
    pub name: String,
    /// `up` or `down`.
    pub state: String,
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_frames: u64,
    /// Bytes sent to the port.
    pub tx_bytes: u64,
    /// Source addresses not learned (the port was at its limit).
    pub not_learned: u64,
    /// Drops by reason (only reasons with drops).
    pub drops: BTreeMap<String, u64>,
    /// Frames to this port cut into segments in software.
    #[serde(default)]
    pub sw_segmented_frames: u64,
    /// Segments made in software for frames to this port.
    pub sw_segments: u64,
    /// Checksums completed in software.
    pub sw_checksums: u64,
    /// Frames merged into others (GRO) in software.
    pub gro_merges: u64,
    /// Frames whose payload another guest lent, copied into host memory
    /// because this port cannot take lent frames (a copy lending saves
    /// elsewhere).
    #[serde(default)]
    pub lent_copied_frames: u64,
    /// Drops of frames received from this port (the reasons counted on the
    /// ingress port: headers, guards, VLANs, no destination).
    #[serde(default)]
    pub drops_ingress: u64,
    /// Drops of frames on their way to this port (adaptation, MTU, rate
    /// limit, full or broken queues).
    #[serde(default)]
    pub drops_egress: u64,
    /// Copies beyond the first of frames from this port flooded to several
    /// ports: what a frame forwarded from it becomes besides one frame.
    #[serde(default)]
    pub flood_copies: u64,
    /// A vhost-user port's rings, as in [`PortView::vhost_user`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUserView>,
}

impl PortCounters {
    /// Drops of every reason.
    pub fn drops_total(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// One worker's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Its index.
    pub index: usize,
    /// Frames it forwarded or dropped.
    pub frames: u64,
    /// Bytes of those.
    pub bytes: u64,
    /// Frames it handed to the worker of their flow.
    pub handed_off: u64,
    /// Frames it sent.
    pub sent: u64,
    /// Nanoseconds it spent in rounds that handled frames.
    pub busy_ns: u64,
}

/// The answer to `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatsView {
    /// Milliseconds since the switch started, when the counters were read.
    pub uptime_ms: u64,
    /// The ports asked for.
    pub ports: Vec<PortCounters>,
    /// The workers.
    pub workers: Vec<WorkerCounters>,
    /// Learned addresses.
    pub learned_addresses: usize,
}

/// The answer to `del-port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedPort {
    /// The port as it was.
    pub port: PortView,
    /// Its final counters.
    pub counters: PortCounters,
}

/// One learned address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbView {
    /// The address, `02:00:00:00:00:01`.
    pub mac: String,
    /// Its VLAN.
    pub vlan: u16,
    /// The port it was last seen on.
    pub port: String,
    /// Milliseconds since the last frame from it.
    pub age_ms: u64,
}

/// The answer to `fdb-flush`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Addresses forgotten.
    pub removed: usize,
}

/// Rates of one port between two [`StatsView`]s.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PortRates {
    /// Frames per second received from the port.
    pub rx_fps: f64,
    /// Bits per second received from the port.
    pub rx_bps: f64,
    /// Frames per second sent to the port.
    pub tx_fps: f64,
    /// Bits per second sent to the port.
    pub tx_bps: f64,
    /// Drops per second.
    pub drops_ps: f64,
}

impl PortRates {
    /// The rates of `now` over the interval since `before` (`None` when the
    /// port was not there before: counted from its start, over `seconds`).
    pub fn between(before: Option<&PortCounters>, now: &PortCounters, seconds: f64) -> Self {
        let zero = PortCounters::default();
        let before = before.unwrap_or(&zero);
        let per_second = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds.max(1e-9);
        PortRates {
            rx_fps: per_second(now.rx_frames, before.rx_frames),
            rx_bps: 8.0 * per_second(now.rx_bytes, before.rx_bytes),
            tx_fps: per_second(now.tx_frames, before.tx_frames),
            tx_bps: 8.0 * per_second(now.tx_bytes, before.tx_bytes),
            drops_ps: per_second(now.drops_total(), before.drops_total()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_as_documented() {
        let cases = [
            (r#"{"cmd":"show"}"#, Request::Show),
            (
                r#"{"cmd":"add-port","kind":"tap","spec":"tap2:offload=csum"}"#,
                Request::AddPort {
                    kind: "tap".into(),
                    spec: "tap2:offload=csum".into(),
                },
            ),
            (
                r#"{"cmd":"del-port","name":"tap2"}"#,
                Request::DelPort {
                    name: "tap2".into(),
                },
            ),
            (
                r#"{"cmd":"fdb","vlan":10,"port":"tap0"}"#,
                Request::Fdb {
                    vlan: Some(10),
                    port: Some("tap0".into()),
                },
            ),
            (r#"{"cmd":"fdb-flush"}"#, Request::FdbFlush),
            (r#"{"cmd":"stats"}"#, Request::Stats { port: None }),
            (
                r#"{"cmd":"set-port","name":"tap0","vlan":10,"max_learned":64}"#,
                Request::SetPort {
                    name: "tap0".into(),
                    vlan: Some(10),
                    trunk: None,
                    native: None,
                    max_learned: Some(64),
                    options: vec![],
                },
            ),
            (
                r#"{"cmd":"set-port","name":"tap0","options":["isolated","guard=all","ip=10.0.0.2"]}"#,
                Request::SetPort {
                    name: "tap0".into(),
                    vlan: None,
                    trunk: None,
                    native: None,
                    max_learned: None,
                    options: vec!["isolated".into(), "guard=all".into(), "ip=10.0.0.2".into()],
                },
            ),
        ];
        for (line, request) in cases {
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
        }
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"del-port","nme":"x"}"#).is_err());
    }

    #[test]
    fn responses_are_ok_or_error() {
        let ok = Response::Ok(serde_json::json!({"removed": 3}));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":{"removed":3}}"#
        );
        let err = Response::Error(ErrorView {
            kind: "no-such-port".into(),
            message: "no port x".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"kind":"no-such-port","message":"no port x"}}"#
        );
    }

    #[test]
    fn rates_are_over_the_interval() {
        let before = PortCounters {
            rx_frames: 100,
            rx_bytes: 1000,
            ..PortCounters::default()
        };
        let now = PortCounters {
            rx_frames: 300,
            rx_bytes: 3000,
            drops: BTreeMap::from([("no_destination".to_string(), 4)]),
            ..PortCounters::default()
        };
        let rates = PortRates::between(Some(&before), &now, 2.0);
        assert_eq!(rates.rx_fps, 100.0);
        assert_eq!(rates.rx_bps, 8000.0);
        assert_eq!(rates.drops_ps, 2.0);
    }
}
