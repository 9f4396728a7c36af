//! Ports of the vswitch dataplane: what a port is (a trait and its declared
//! capabilities) and the adapters that connect the switch to the outside
//! (in-memory channels, TAP devices, virtio-net guests, smoltcp, pcap).
//!
//! All unsafe system calls of the project live in this crate's private `sys`
//! module; what callers need of them (opening TAP devices, bringing an
//! interface up, a termination flag for a command's main loop) is safe API
//! in [`tap`], [`uplink`] and [`vhost_user`].
//!
//! [`buffer::ChunkPool`] recycles the large chunks that frames are cut
//! from, for the TAP receive path here and for the switch's egress.
//!
//! ```
//! // The offload engine is re-exported for port implementers.
//! use vswitch_ports::offload::checksum::checksum;
//! assert_eq!(checksum(&[0xff, 0xff]), 0);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use vswitch_offload as offload;

pub mod buffer;
pub mod features;
pub mod guest;
pub mod memory;
pub mod pcap;
pub mod port;
#[cfg(target_os = "linux")]
mod readable;
pub mod smoltcp_port;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(target_os = "linux")]
pub mod tap;
#[cfg(target_os = "linux")]
pub mod uplink;
#[cfg(target_os = "linux")]
pub mod vhost_user;
mod wake;

pub use memory::{memory_port, InjectError, MemoryEndpoint, MemoryPort, MemoryPortConfig};
pub use port::{BatchSendError, Port, PortCapabilities, PortError, SendError};
