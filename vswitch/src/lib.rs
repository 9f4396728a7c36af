//! The switching core of the vswitch dataplane: forwarding, learning, VLANs,
//! queues, workers, statistics and hot-plug, with the offload engine adapting
//! every frame to its egress port.
//!
//! ```
//! assert!(!vswitch::VERSION.is_empty());
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod pcap_segment;

pub use vswitch_offload as offload;
pub use vswitch_ports as ports;

/// The version of this crate, as published.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
