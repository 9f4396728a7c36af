//! Frames for the tests, benchmarks and examples of this crate and its
//! users, behind the `test-utils` feature. Every frame is written by
//! etherparse, so what a test expects comes from an implementation
//! independent of the code under test.
//!
//! - [`FrameBuilder`]: one TCP or UDP frame with chosen addresses, ports,
//!   TCP fields, VLAN tags and payload, and the virtio-net header a Linux
//!   guest sends with it (none, a partial checksum, or TSO/USO).
//! - [`FrameSpec`] and the proptest strategies [`frame_spec`], [`ip_spec`]
//!   and [`l4_spec`]: generated frames with IP options, IPv6 extension
//!   headers and TCP options, and the offsets etherparse finds in them.
//!
//! ```
//! use vswitch_offload::testing::FrameBuilder;
//! use vswitch_offload::FrameLayout;
//!
//! let frame = FrameBuilder::udp4([10, 0, 0, 1], [10, 0, 0, 2])
//!     .payload(*b"hello")
//!     .build();
//! let layout = FrameLayout::parse(&frame).unwrap();
//! assert_eq!(&frame[layout.payload_offset..], b"hello");
//! ```

mod builder;
mod spec;

pub use builder::{tcp_flags, FrameBuilder};
pub use spec::{frame_spec, ip_spec, l4_spec, Expected, FrameSpec, IpSpec, L4Spec};
