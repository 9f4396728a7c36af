//! IEEE 802.1Q VLANs: identifiers, sets of them, and a port's VLAN mode.

use std::fmt;

/// A VLAN identifier in 1..=4094 (0 means "priority tag only" and 4095 is
/// reserved, so neither names a VLAN).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

/// A VLAN identifier outside 1..=4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VLAN id {found} is not in 1..=4094")]
pub struct InvalidVlanId {
    /// The value given.
    pub found: u16,
}

impl VlanId {
    /// VLAN 1, the usual default.
    pub const DEFAULT: VlanId = VlanId(1);

    /// A VLAN identifier, if `id` is in 1..=4094.
    pub const fn new(id: u16) -> Result<VlanId, InvalidVlanId> {
        if id >= 1 && id <= 4094 {
            Ok(VlanId(id))
        } else {
            Err(InvalidVlanId { found: id })
        }
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VlanId({})", self.0)
    }
}

/// A set of VLANs, as a 4096-bit map (512 bytes on the heap, so a port
/// mode stays small; no allocation per lookup).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet {
    bits: Box<[u64; 64]>,
}

impl VlanSet {
    /// The empty set.
    pub fn new() -> Self {
        VlanSet {
            bits: Box::new([0; 64]),
        }
    }

    /// Every VLAN, 1 to 4094.
    pub fn all() -> Self {
        let mut set = VlanSet {
            bits: Box::new([u64::MAX; 64]),
        };
        set.bits[0] &= !1; // 0 is not a VLAN
        set.bits[63] &= !(1 << 63); // nor is 4095
        set
    }

    /// Adds `vlan`.
    pub fn insert(&mut self, vlan: VlanId) {
        let id = usize::from(vlan.get());
        if let Some(word) = self.bits.get_mut(id / 64) {
            *word |= 1 << (id % 64);
        }
    }

    /// Whether `vlan` is in the set.
    pub fn contains(&self, vlan: VlanId) -> bool {
        let id = usize::from(vlan.get());
        self.bits
            .get(id / 64)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }
}

impl Default for VlanSet {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<VlanId> for VlanSet {
    fn from_iter<I: IntoIterator<Item = VlanId>>(iter: I) -> Self {
        let mut set = VlanSet::new();
        for vlan in iter {
            set.insert(vlan);
        }
        set
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = (1..=4094u16)
            .filter_map(|id| VlanId::new(id).ok())
            .filter(|vlan| self.contains(*vlan));
        f.debug_set().entries(members).finish()
    }
}

/// How a port takes part in VLANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlanMode {
    /// An access port: its frames are untagged on the wire and belong to
    /// one VLAN. Tagged frames arriving on it are dropped.
    Access(VlanId),
    /// A trunk port: its frames carry an 802.1Q tag naming their VLAN, which
    /// must be in `allowed`. Frames of the `native` VLAN, if one is set,
    /// travel untagged; without a native VLAN untagged frames are dropped.
    Trunk {
        /// The VLANs the port carries.
        allowed: VlanSet,
        /// The VLAN of untagged (and priority-tagged, VID 0) frames.
        native: Option<VlanId>,
    },
}

impl VlanMode {
    /// Whether frames of `vlan` may leave through a port in this mode.
    pub fn carries(&self, vlan: VlanId) -> bool {
        match self {
            VlanMode::Access(own) => *own == vlan,
            VlanMode::Trunk { allowed, native } => *native == Some(vlan) || allowed.contains(vlan),
        }
    }

    /// The tag a frame of `vlan` carries when it leaves through a port in
    /// this mode: `None` for untagged.
    pub fn egress_tag(&self, vlan: VlanId) -> Option<VlanId> {
        match self {
            VlanMode::Access(_) => None,
            VlanMode::Trunk { native, .. } if *native == Some(vlan) => None,
            VlanMode::Trunk { .. } => Some(vlan),
        }
    }
}

impl Default for VlanMode {
    fn default() -> Self {
        VlanMode::Access(VlanId::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vlan(id: u16) -> VlanId {
        VlanId::new(id).unwrap()
    }

    #[test]
    fn ids_outside_the_range_are_rejected() {
        assert_eq!(VlanId::new(0), Err(InvalidVlanId { found: 0 }));
        assert_eq!(VlanId::new(4095), Err(InvalidVlanId { found: 4095 }));
        assert_eq!(VlanId::new(4094).map(VlanId::get), Ok(4094));
    }

    #[test]
    fn sets_and_modes() {
        let set: VlanSet = [vlan(10), vlan(4094)].into_iter().collect();
        assert!(set.contains(vlan(10)) && set.contains(vlan(4094)));
        assert!(!set.contains(vlan(11)));
        assert!(VlanSet::all().contains(vlan(1)) && VlanSet::all().contains(vlan(4094)));

        let trunk = VlanMode::Trunk {
            allowed: set,
            native: Some(vlan(5)),
        };
        assert!(trunk.carries(vlan(5)) && trunk.carries(vlan(10)) && !trunk.carries(vlan(6)));
        assert_eq!(trunk.egress_tag(vlan(5)), None);
        assert_eq!(trunk.egress_tag(vlan(10)), Some(vlan(10)));
        let access = VlanMode::Access(vlan(10));
        assert!(access.carries(vlan(10)) && !access.carries(vlan(5)));
        assert_eq!(access.egress_tag(vlan(10)), None);
    }
}
