//! The offload engine of the vswitch dataplane: pure functions over frame
//! bytes. Checksums (scalar and SIMD), parsing views, the virtio-net header,
//! segmentation, coalescing and RSS hashing. No threads, no I/O, no clocks.
//!
//! ```
//! use vswitch_offload::checksum::checksum;
//! // RFC 1071 section 3 test vector.
//! assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod adapt;
pub mod caps;
pub mod checksum;
pub mod complete;
pub mod frame;
pub mod gro;
pub mod layout;
pub mod plan;
pub mod rss;
pub mod segment;
pub mod tail;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;
pub mod wire;

pub use caps::EgressCapabilities;
pub use frame::{CheckError, CheckedFrame, OuterTag, Packet};
pub use layout::{FrameLayout, L3Kind, L4Kind};
pub use plan::{GsoKind, OffloadPlan, PartialChecksum};
pub use tail::{LentBytes, Tail, TailError};
pub use virtio::VirtioNetHdr;
