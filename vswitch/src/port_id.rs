//! A port's identity in the switch.

use std::fmt;

/// A port's identity in the switch. Identifiers are never reused, so a
/// stale reference to a removed port cannot reach a port added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}
