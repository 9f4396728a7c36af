//! The control plane of `vswitch run`: the protocol, the socket it serves
//! and the `vswitch ctl` client.

pub mod client;
pub mod protocol;
pub mod server;
