//! The switching core of the vswitch dataplane: forwarding, learning, VLANs,
//! queues, workers, statistics and hot-plug, with the offload engine adapting
//! every frame to its egress port.
//!
//! The datapath is sans-IO: [`datapath::Datapath`] takes frames, the time
//! and the set of ports, and returns what to send to which port and what
//! to count, so it runs the same in a deterministic test, in an embedder's
//! own loop and in [`Switch`], which drives it from worker threads (its own,
//! or the embedder's through [`Switch::start_external`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vswitch::{PortProfile, Switch, SwitchConfig, VlanId};
//! use vswitch::ethernet::build_frame;
//! use vswitch::mac::MacAddr;
//! use vswitch_ports::{memory_port, MemoryPortConfig};
//! use vswitch_ports::offload::Packet;
//!
//! let switch = Switch::start(SwitchConfig::default().workers(2)).unwrap();
//! let (a, guest_a) = memory_port(MemoryPortConfig::new("a"));
//! let (b, guest_b) = memory_port(MemoryPortConfig::new("b"));
//! switch.add_port(Arc::new(a), PortProfile::access(VlanId::DEFAULT)).unwrap();
//! switch.add_port(Arc::new(b), PortProfile::access(VlanId::DEFAULT)).unwrap();
//!
//! let frame = build_frame(MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 0, 1]), None, 0x0806, &[0; 46]);
//! guest_a.try_inject(0, Packet::plain(frame.clone())).unwrap();
//! let got = guest_b.collect_timeout(Duration::from_secs(5)).unwrap();
//! assert_eq!(got.data, frame);
//! ```
//!
//! # Features
//!
//! `cli` is on by default, for the `vswitch` command. An embedder depends on
//! the crate with `default-features = false` and compiles the switching core
//! alone:
//!
//! ```toml
//! vswitch = { version = "0.1", default-features = false }
//! ```
//!
//! - `demo`: the `demo` module, two in-memory guests pushing TSO flows through the
//!   switch (`vswitch demo`, the switch benchmark).
//! - `pcap-tool`: the `pcap_segment` module, re-segmenting a pcap or pcapng capture
//!   for an MTU (`vswitch segment`).
//! - `cli`: both, and what the `vswitch` command needs (clap, the control
//!   socket, metrics, configuration files); the binary requires it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "pcap-tool")]
pub mod pcap_segment;

pub use vswitch_offload as offload;
pub use vswitch_ports as ports;

pub mod coalesce;
pub mod datapath;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dispatch;
pub mod drop;
pub mod egress;
pub mod ethernet;
pub mod fdb;
pub mod forward;
pub mod guard;
pub mod limit;
pub mod mac;
pub mod port_id;
pub mod stats;
pub mod switch;
pub mod vlan;

pub use drop::DropSide;
pub use forward::{
    Decision, DropReason, Egress, ForwardError, Forwarder, ForwarderConfig, PortId, PortProfile,
    PortSet, SourceMacPolicy,
};
pub use mac::MacAddr;
pub use stats::{DropCounts, PortStats, SoftwareWork, WorkerStats};
pub use switch::{Poll, PortReport, Switch, SwitchConfig, SwitchError, SwitchStats, SwitchWorker};
pub use vlan::{VlanId, VlanMode, VlanSet};

/// The version of this crate, as published.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
