//! Receive-side scaling: the Toeplitz flow hash of the Microsoft RSS
//! specification, the flow key it is computed over, and the indirection
//! table that turns a hash into a queue.
//!
//! ```
//! use vswitch_offload::rss::{toeplitz_hash, ToeplitzTable, DEFAULT_KEY};
//!
//! // The first row of the specification's IPv4 verification table:
//! // 66.9.149.187:2794 -> 161.142.100.80:1766.
//! let input = [
//!     66, 9, 149, 187, 161, 142, 100, 80, // source, destination address
//!     0x0a, 0xea, 0x06, 0xe6, // source port 2794, destination port 1766
//! ];
//! assert_eq!(toeplitz_hash(&DEFAULT_KEY, &input), 0x51cc_c178);
//! assert_eq!(toeplitz_hash(&DEFAULT_KEY, &input[..8]), 0x323e_8fc2);
//!
//! // The table-driven fast path gives the same value.
//! let table = ToeplitzTable::new(&DEFAULT_KEY);
//! assert_eq!(table.hash(&input), 0x51cc_c178);
//! ```
//!
//! # The hash input
//!
//! The specification ("RSS hashing types") hashes, in this order and in
//! network byte order: the source address, the destination address, then for
//! TCP (and, as every NIC that hashes UDP does, for UDP) the source port and
//! the destination port. IPv4 input is 8 or 12 bytes, IPv6 input 32 or 36.
//! IP fragments hash on the addresses only, since the ports are not in every
//! fragment and all fragments of a datagram must land on one queue; so do
//! protocols other than TCP and UDP.
//!
//! # VLANs
//!
//! The Toeplitz input is exactly the specification's, so the hash a guest
//! is told about (virtio hash report) and the hash a NIC would compute agree.
//! The VLAN id is mixed into the *queue choice* instead: [`Rss::classify`]
//! XORs a multiplicative hash of the VLAN id(s) into the value it looks up in
//! the indirection table. Two tenants reusing the same addresses on
//! different VLANs then spread over the queues instead of piling onto one,
//! and both directions of a connection still share the VLAN, so symmetric
//! mode is unaffected.
//!
//! # Symmetric mode
//!
//! In symmetric mode the two endpoints (address, port) are put in a fixed
//! order before hashing: the smaller endpoint (compared as address bytes,
//! then port) goes first. Both directions of a connection then produce the
//! same input and so the same hash, with any key. This was chosen over the
//! other common approach, a key made of one repeated 16-bit pattern
//! (0x6d5a...), because such a key makes the hash depend only on the XOR
//! of 16-bit words of the input and throws away most of the key's entropy;
//! sorting keeps the standard key and its distribution. The price is that a
//! symmetric hash is not the value a NIC with the standard key reports.

use thiserror::Error;

use crate::layout::{FrameLayout, L3Kind, L4Kind};

/// The default RSS secret key of the Microsoft RSS specification, the key of
/// its verification tables (40 bytes, enough for a 36-byte IPv6 input).
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Default number of entries of an [`IndirectionTable`] (as in NDIS and
/// the virtio RSS default).
pub const DEFAULT_INDIRECTION_LEN: usize = 128;

/// Largest accepted indirection table (the virtio-net limit).
pub const MAX_INDIRECTION_LEN: usize = 1 << 15;

/// Longest flow key: two IPv6 addresses and two ports.
pub const MAX_INPUT_LEN: usize = 36;

/// Why a flow key or an RSS configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RssError {
    /// The frame is shorter than the header the layout points at.
    #[error("frame truncated: {layer} header needs bytes up to {required_len}, frame has {len}")]
    Truncated {
        /// Which header was being read.
        layer: &'static str,
        /// Bytes needed from the start of the frame.
        required_len: usize,
        /// Bytes the frame has.
        len: usize,
    },
    /// The IP version nibble disagrees with the layout.
    #[error("IP version mismatch: layout says {expected:?}, header version is {found}")]
    IpVersionMismatch {
        /// What the layout said.
        expected: L3Kind,
        /// The version nibble found.
        found: u8,
    },
    /// An indirection table size that is not a power of two in range.
    #[error(
        "indirection table size must be a power of two from 1 to {MAX_INDIRECTION_LEN}, found {len}"
    )]
    BadTableSize {
        /// The size asked for.
        len: usize,
    },
    /// Zero queues asked for.
    #[error("number of queues must be at least 1, found 0")]
    NoQueues,
}

/// The Toeplitz hash of `input` under `key`, bit by bit as the
/// specification's pseudocode describes it:
///
/// ```text
/// result = 0
/// for each bit b of input, from the most significant bit of input[0] on:
///     if b == 1: result ^= the left-most 32 bits of K
///     shift K left by one bit
/// ```
///
/// Key bits past the end of `key` count as zero (a 40-byte key covers
/// inputs up to 36 bytes, which is every input the specification defines).
/// This is the reference; [`ToeplitzTable`] computes the same values faster.
pub fn toeplitz_hash(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |byte| u32::from((byte >> (7 - i % 8)) & 1))
    };
    // The left-most 32 bits of K, then fed one key bit at a time.
    let mut window = (0..32).fold(0u32, |w, i| (w << 1) | key_bit(i));
    let mut next_bit = 32;
    let mut result = 0u32;
    for &byte in input {
        for bit in (0..8).rev() {
            if (byte >> bit) & 1 == 1 {
                result ^= window;
            }
            window = (window << 1) | key_bit(next_bit);
            next_bit += 1;
        }
    }
    result
}

/// The Toeplitz hash precomputed for one key: for every input byte position
/// and every byte value, the 32-bit value that byte contributes. Hashing an
/// n-byte input is then n table lookups XORed together.
///
/// The hash is linear over XOR, so the contribution of a byte at position
/// `p` does not depend on the other bytes; the table is built from the 8
/// key windows of each position.
#[derive(Clone)]
pub struct ToeplitzTable {
    /// `lookup[p][v]`: what byte value `v` at input position `p` contributes.
    lookup: Box<[[u32; 256]]>,
}

impl std::fmt::Debug for ToeplitzTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToeplitzTable")
            .field("positions", &self.lookup.len())
            .finish()
    }
}

impl ToeplitzTable {
    /// Precomputes the table for `key`. Input positions at or past
    /// `key.len()` see an all-zero key window, so they contribute nothing and
    /// get no table.
    pub fn new(key: &[u8]) -> Self {
        let key_byte = |i: usize| -> u64 { u64::from(key.get(i).copied().unwrap_or(0)) };
        let mut lookup = vec![[0u32; 256]; key.len()].into_boxed_slice();
        for (pos, row) in lookup.iter_mut().enumerate() {
            // Key bits pos*8 .. pos*8 + 40 cover the windows of all 8 bits.
            let bits = (0..5).fold(0u64, |acc, i| (acc << 8) | key_byte(pos + i));
            // windows[j]: the window for the bit of weight 2^j (bit 7 is the
            // most significant, the first one in input order).
            let mut windows = [0u32; 8];
            for (j, window) in windows.iter_mut().enumerate() {
                let shift = 8 - (7 - j) as u32; // 40-bit value, window starts at bit 7-j
                *window = (bits >> shift) as u32;
            }
            for value in 1..256usize {
                let low = value.trailing_zeros() as usize;
                row[value] = row[value & (value - 1)] ^ windows[low];
            }
        }
        ToeplitzTable { lookup }
    }

    /// The Toeplitz hash of `input`, equal to [`toeplitz_hash`] with the key
    /// this table was built from.
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        self.lookup
            .iter()
            .zip(input)
            .fold(0, |acc, (row, &byte)| acc ^ row[usize::from(byte)])
    }
}

/// Which fields a hash was computed over (the NDIS / virtio hash types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashType {
    /// IPv4 addresses only.
    Ipv4,
    /// IPv4 addresses and TCP ports.
    TcpIpv4,
    /// IPv4 addresses and UDP ports.
    UdpIpv4,
    /// IPv6 addresses only.
    Ipv6,
    /// IPv6 addresses and TCP ports.
    TcpIpv6,
    /// IPv6 addresses and UDP ports.
    UdpIpv6,
}

/// The bytes a frame is hashed over, in the specification's order, plus the
/// VLAN ids the frame carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    input: [u8; MAX_INPUT_LEN],
    len: u8,
    /// Length of one address (4 or 16).
    addr_len: u8,
    /// What the input covers.
    pub hash_type: HashType,
    /// VLAN ids of the outer and inner tag (12 bits each), when present.
    pub vlan_ids: [Option<u16>; 2],
}

/// Reads a big-endian u16 at `at`, if the bytes are there.
fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let bytes = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

impl FlowKey {
    /// Extracts the flow key of `frame`, whose headers are at the offsets of
    /// `layout`. Every offset is checked against the frame before use.
    pub fn from_frame(frame: &[u8], layout: &FrameLayout) -> Result<FlowKey, RssError> {
        let truncated = |layer, required_len| RssError::Truncated {
            layer,
            required_len,
            len: frame.len(),
        };
        let l3 = layout.l3_offset;
        let (addr_len, addr_at, version) = match layout.l3 {
            L3Kind::Ipv4 => (4usize, 12usize, 4u8),
            L3Kind::Ipv6 => (16, 8, 6),
        };
        let first = *frame.get(l3).ok_or_else(|| truncated("IP", l3 + 1))?;
        if first >> 4 != version {
            return Err(RssError::IpVersionMismatch {
                expected: layout.l3,
                found: first >> 4,
            });
        }
        let addr_start = l3 + addr_at;
        let addr_end = addr_start + 2 * addr_len;
        let addrs = frame
            .get(addr_start..addr_end)
            .ok_or_else(|| truncated("IP", addr_end))?;
        let mut input = [0u8; MAX_INPUT_LEN];
        input[..2 * addr_len].copy_from_slice(addrs);
        let mut len = 2 * addr_len;

        let ports = match (layout.l4, layout.is_fragment) {
            (Some(kind), false) => Some(kind),
            _ => None,
        };
        let hash_type = match (layout.l3, ports) {
            (L3Kind::Ipv4, None) => HashType::Ipv4,
            (L3Kind::Ipv4, Some(L4Kind::Tcp)) => HashType::TcpIpv4,
            (L3Kind::Ipv4, Some(L4Kind::Udp)) => HashType::UdpIpv4,
            (L3Kind::Ipv6, None) => HashType::Ipv6,
            (L3Kind::Ipv6, Some(L4Kind::Tcp)) => HashType::TcpIpv6,
            (L3Kind::Ipv6, Some(L4Kind::Udp)) => HashType::UdpIpv6,
        };
        if ports.is_some() {
            let l4 = layout.l4_offset;
            let port_bytes = frame
                .get(l4..l4 + 4)
                .ok_or_else(|| truncated("transport", l4 + 4))?;
            input[len..len + 4].copy_from_slice(port_bytes);
            len += 4;
        }

        let mut vlan_ids = [None; 2];
        for (i, id) in vlan_ids
            .iter_mut()
            .enumerate()
            .take(usize::from(layout.vlan_tags.min(2)))
        {
            let tci_at = 14 + 4 * i;
            let tci = be16(frame, tci_at).ok_or_else(|| truncated("VLAN", tci_at + 2))?;
            *id = Some(tci & 0x0fff);
        }

        Ok(FlowKey {
            input,
            len: len as u8,
            addr_len: addr_len as u8,
            hash_type,
            vlan_ids,
        })
    }

    /// The hash input: addresses, then ports if the hash type has them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.input[..usize::from(self.len)]
    }

    /// The same key with its two endpoints in a fixed order (the smaller
    /// address, port pair first), so that both directions of a connection
    /// give the same key.
    pub fn symmetric(&self) -> FlowKey {
        let a = usize::from(self.addr_len);
        let has_ports = usize::from(self.len) > 2 * a;
        let port = |i: usize| -> [u8; 2] {
            if has_ports {
                let at = 2 * a + 2 * i;
                [self.input[at], self.input[at + 1]]
            } else {
                [0, 0]
            }
        };
        let src = (&self.input[..a], port(0));
        let dst = (&self.input[a..2 * a], port(1));
        if src <= dst {
            return *self;
        }
        let mut swapped = *self;
        swapped.input[..a].copy_from_slice(dst.0);
        swapped.input[a..2 * a].copy_from_slice(src.0);
        if has_ports {
            swapped.input[2 * a..2 * a + 2].copy_from_slice(&dst.1);
            swapped.input[2 * a + 2..2 * a + 4].copy_from_slice(&src.1);
        }
        swapped
    }

    /// A 32-bit value derived from the VLAN ids, zero for an untagged frame,
    /// to XOR into the hash before the indirection table lookup.
    pub fn vlan_mix(&self) -> u32 {
        match self.vlan_ids {
            [None, _] => 0,
            [Some(outer), inner] => {
                let mut x = (u32::from(outer) << 12) | u32::from(inner.unwrap_or(0));
                // The 32-bit finalizer of MurmurHash3: every input bit
                // reaches the low bits the indirection table indexes with
                // (a bare multiplication would leave them depending on the
                // low input bits only).
                x ^= x >> 16;
                x = x.wrapping_mul(0x85eb_ca6b);
                x ^= x >> 13;
                x = x.wrapping_mul(0xc2b2_ae35);
                x ^= x >> 16;
                x
            }
        }
    }
}

/// Maps a hash to a queue: entry `hash & (len - 1)` names the queue.
///
/// The size is a power of two so the lookup is a mask; entries can be
/// reprogrammed at any time (for example when queues are added or removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndirectionTable {
    entries: Vec<u16>,
}

impl Default for IndirectionTable {
    /// 128 entries, all naming queue 0.
    fn default() -> Self {
        IndirectionTable {
            entries: vec![0; DEFAULT_INDIRECTION_LEN],
        }
    }
}

impl IndirectionTable {
    /// A table of `len` entries spread round-robin over `queues` queues.
    pub fn new(len: usize, queues: u16) -> Result<Self, RssError> {
        if !len.is_power_of_two() || len > MAX_INDIRECTION_LEN {
            return Err(RssError::BadTableSize { len });
        }
        let mut table = IndirectionTable {
            entries: vec![0; len],
        };
        table.spread(queues)?;
        Ok(table)
    }

    /// Reprograms every entry round-robin over queues `0..queues`.
    pub fn spread(&mut self, queues: u16) -> Result<(), RssError> {
        if queues == 0 {
            return Err(RssError::NoQueues);
        }
        for (i, entry) in self.entries.iter_mut().enumerate() {
            *entry = (i % usize::from(queues)) as u16;
        }
        Ok(())
    }

    /// Replaces the whole table; its length must be a power of two.
    pub fn set_entries(&mut self, entries: &[u16]) -> Result<(), RssError> {
        let len = entries.len();
        if !len.is_power_of_two() || len > MAX_INDIRECTION_LEN {
            return Err(RssError::BadTableSize { len });
        }
        self.entries.clear();
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// The entries, in index order.
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// The queue for `hash`.
    #[inline]
    pub fn queue(&self, hash: u32) -> u16 {
        // len is a non-zero power of two, so the mask keeps the index in range.
        let index = hash as usize & (self.entries.len() - 1);
        self.entries[index]
    }
}

/// What [`Rss::classify`] decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssDecision {
    /// The Toeplitz hash (over the sorted key in symmetric mode).
    pub hash: u32,
    /// The fields it covers.
    pub hash_type: HashType,
    /// The queue the indirection table chose.
    pub queue: u16,
}

/// A complete RSS configuration: key (as a precomputed table), indirection
/// table and mode.
#[derive(Debug, Clone)]
pub struct Rss {
    table: ToeplitzTable,
    indirection: IndirectionTable,
    symmetric: bool,
}

impl Rss {
    /// RSS with `key`, `queues` queues over a default-size indirection
    /// table, and the given mode.
    pub fn new(key: &[u8], queues: u16, symmetric: bool) -> Result<Self, RssError> {
        Ok(Rss {
            table: ToeplitzTable::new(key),
            indirection: IndirectionTable::new(DEFAULT_INDIRECTION_LEN, queues)?,
            symmetric,
        })
    }

    /// Replaces the key.
    pub fn set_key(&mut self, key: &[u8]) {
        self.table = ToeplitzTable::new(key);
    }

    /// Switches symmetric mode on or off.
    pub fn set_symmetric(&mut self, symmetric: bool) {
        self.symmetric = symmetric;
    }

    /// The indirection table, to reprogram it.
    pub fn indirection_mut(&mut self) -> &mut IndirectionTable {
        &mut self.indirection
    }

    /// The indirection table.
    pub fn indirection(&self) -> &IndirectionTable {
        &self.indirection
    }

    /// Hashes `frame` and picks its queue.
    pub fn classify(&self, frame: &[u8], layout: &FrameLayout) -> Result<RssDecision, RssError> {
        let key = FlowKey::from_frame(frame, layout)?;
        let key = if self.symmetric { key.symmetric() } else { key };
        let hash = self.table.hash(key.as_bytes());
        Ok(RssDecision {
            hash,
            hash_type: key.hash_type,
            queue: self.indirection.queue(hash ^ key.vlan_mix()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::testing::layout_of;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Verification table of the Microsoft RSS specification ("Verifying the
    // RSS Hash Calculation"), standard key: source, source port,
    // destination, destination port, hash of addresses only, hash with ports.
    const IPV4_TABLE: [(&str, u16, &str, u16, u32, u32); 5] = [
        (
            "66.9.149.187",
            2794,
            "161.142.100.80",
            1766,
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            "199.92.111.2",
            14230,
            "65.69.140.83",
            4739,
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            "24.19.198.95",
            12898,
            "12.22.207.184",
            38024,
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            "38.27.205.30",
            48228,
            "209.142.163.6",
            2217,
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            "153.39.163.191",
            44251,
            "202.188.127.2",
            1303,
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];
    const IPV6_TABLE: [(&str, u16, &str, u16, u32, u32); 3] = [
        (
            "3ffe:2501:200:1fff::7",
            2794,
            "3ffe:2501:200:3::1",
            1766,
            0x2cc1_8cd5,
            0x4020_7d3d,
        ),
        (
            "3ffe:501:8::260:97ff:fe40:efab",
            14230,
            "ff02::1",
            4739,
            0x0f0c_461c,
            0xdde5_1bbf,
        ),
        (
            "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
            44251,
            "fe80::200:f8ff:fe21:67cf",
            38024,
            0x4b61_e985,
            0x02d1_feef,
        ),
    ];

    fn input(src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(src);
        v.extend_from_slice(dst);
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v
    }

    fn check_row(src: &[u8], sport: u16, dst: &[u8], dport: u16, no_ports: u32, ports: u32) {
        let table = ToeplitzTable::new(&DEFAULT_KEY);
        let with_ports = input(src, sport, dst, dport);
        let addrs = &with_ports[..with_ports.len() - 4];
        assert_eq!(toeplitz_hash(&DEFAULT_KEY, addrs), no_ports, "{src:?}");
        assert_eq!(toeplitz_hash(&DEFAULT_KEY, &with_ports), ports, "{src:?}");
        assert_eq!(table.hash(addrs), no_ports);
        assert_eq!(table.hash(&with_ports), ports);
    }

    #[test]
    fn ipv4_verification_table() {
        for (src, sport, dst, dport, no_ports, ports) in IPV4_TABLE {
            let src: Ipv4Addr = src.parse().unwrap();
            let dst: Ipv4Addr = dst.parse().unwrap();
            check_row(&src.octets(), sport, &dst.octets(), dport, no_ports, ports);
        }
    }

    #[test]
    fn ipv6_verification_table() {
        for (src, sport, dst, dport, no_ports, ports) in IPV6_TABLE {
            let src: Ipv6Addr = src.parse().unwrap();
            let dst: Ipv6Addr = dst.parse().unwrap();
            check_row(&src.octets(), sport, &dst.octets(), dport, no_ports, ports);
        }
    }

    #[test]
    fn short_key_counts_missing_bits_as_zero() {
        // With a 4-byte key only the first input bit sees a non-zero window
        // of all 32 key bits; later bits see shifted, zero-filled windows.
        let key = [0x80, 0, 0, 1];
        assert_eq!(toeplitz_hash(&key, &[0x80]), 0x8000_0001);
        assert_eq!(toeplitz_hash(&key, &[0x40]), 0x0000_0002);
        assert_eq!(toeplitz_hash(&key, &[0, 0, 0, 0, 0xff]), 0);
        let table = ToeplitzTable::new(&key);
        assert_eq!(table.hash(&[0x40]), 2);
        assert_eq!(table.hash(&[0xc0, 0, 0, 0, 0xff]), 0x8000_0003);
        assert_eq!(toeplitz_hash(&key, &[0xc0, 0, 0, 0, 0xff]), 0x8000_0003);
    }

    #[test]
    fn indirection_table_sizes_and_reprogramming() {
        assert_eq!(IndirectionTable::default().entries().len(), 128);
        assert_eq!(
            IndirectionTable::new(100, 4),
            Err(RssError::BadTableSize { len: 100 })
        );
        assert_eq!(
            IndirectionTable::new(0, 4),
            Err(RssError::BadTableSize { len: 0 })
        );
        assert_eq!(IndirectionTable::new(8, 0), Err(RssError::NoQueues));
        let mut t = IndirectionTable::new(8, 3).unwrap();
        assert_eq!(t.entries(), &[0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(t.queue(0x1234_5675), 2); // index 5
        t.set_entries(&[7, 6, 5, 4]).unwrap();
        assert_eq!(t.queue(0xffff_fff9), 6); // index 1
        assert_eq!(
            t.set_entries(&[1, 2, 3]),
            Err(RssError::BadTableSize { len: 3 })
        );
        assert_eq!(t.entries(), &[7, 6, 5, 4]);
        t.spread(2).unwrap();
        assert_eq!(t.entries(), &[0, 1, 0, 1]);
    }

    fn tcp4_frame(
        vlan: Option<u16>,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
    ) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]);
        let mut out = Vec::new();
        match vlan {
            Some(id) => b
                .single_vlan(etherparse::VlanId::try_new(id).unwrap())
                .ipv4(src, dst, 64)
                .tcp(sport, dport, 1, 1000)
                .write(&mut out, b"hello"),
            None => b
                .ipv4(src, dst, 64)
                .tcp(sport, dport, 1, 1000)
                .write(&mut out, b"hello"),
        }
        .unwrap();
        out
    }

    #[test]
    fn flow_key_of_ipv4_tcp_frame_matches_table() {
        for (src, sport, dst, dport, no_ports, ports) in IPV4_TABLE {
            let src: Ipv4Addr = src.parse().unwrap();
            let dst: Ipv4Addr = dst.parse().unwrap();
            for vlan in [None, Some(42)] {
                let frame = tcp4_frame(vlan, src.octets(), sport, dst.octets(), dport);
                let layout = layout_of(&frame);
                let key = FlowKey::from_frame(&frame, &layout).unwrap();
                assert_eq!(key.hash_type, HashType::TcpIpv4);
                assert_eq!(key.vlan_ids, [vlan, None]);
                assert_eq!(toeplitz_hash(&DEFAULT_KEY, key.as_bytes()), ports);
                // A fragment hashes the addresses only.
                let frag = FrameLayout {
                    is_fragment: true,
                    ..layout
                };
                let key = FlowKey::from_frame(&frame, &frag).unwrap();
                assert_eq!(key.hash_type, HashType::Ipv4);
                assert_eq!(toeplitz_hash(&DEFAULT_KEY, key.as_bytes()), no_ports);
            }
        }
    }

    #[test]
    fn ports_are_read_after_ipv4_options_and_vlan_tags() {
        let (src, sport, dst, dport, _, ports) = IPV4_TABLE[2];
        let src: Ipv4Addr = src.parse().unwrap();
        let dst: Ipv4Addr = dst.parse().unwrap();
        let mut ip = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::TCP,
            src.octets(),
            dst.octets(),
        )
        .unwrap();
        ip.options = etherparse::Ipv4Options::try_from(&[1u8, 1, 1, 1, 1, 1, 1, 0][..]).unwrap();
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(
                etherparse::VlanId::try_new(1).unwrap(),
                etherparse::VlanId::try_new(2).unwrap(),
            )
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(sport, dport, 1, 100)
            .write(&mut frame, &[])
            .unwrap();
        let layout = layout_of(&frame);
        assert_eq!((layout.l3_offset, layout.l4_offset), (22, 22 + 28));
        let key = FlowKey::from_frame(&frame, &layout).unwrap();
        assert_eq!(toeplitz_hash(&DEFAULT_KEY, key.as_bytes()), ports);
    }

    #[test]
    fn flow_key_of_ipv6_udp_and_other_protocols() {
        for (src, sport, dst, dport, no_ports, ports) in IPV6_TABLE {
            let src: Ipv6Addr = src.parse().unwrap();
            let dst: Ipv6Addr = dst.parse().unwrap();
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .double_vlan(
                    etherparse::VlanId::try_new(5).unwrap(),
                    etherparse::VlanId::try_new(6).unwrap(),
                )
                .ipv6(src.octets(), dst.octets(), 9)
                .udp(sport, dport)
                .write(&mut frame, &[0u8; 3])
                .unwrap();
            let layout = layout_of(&frame);
            assert_eq!(layout.vlan_tags, 2);
            let key = FlowKey::from_frame(&frame, &layout).unwrap();
            assert_eq!(key.hash_type, HashType::UdpIpv6);
            assert_eq!(key.vlan_ids, [Some(5), Some(6)]);
            assert_eq!(toeplitz_hash(&DEFAULT_KEY, key.as_bytes()), ports);
            // Another protocol: addresses only.
            let other = FrameLayout {
                l4: None,
                payload_offset: layout.l4_offset,
                ..layout
            };
            let key = FlowKey::from_frame(&frame, &other).unwrap();
            assert_eq!(key.hash_type, HashType::Ipv6);
            assert_eq!(toeplitz_hash(&DEFAULT_KEY, key.as_bytes()), no_ports);
        }
    }

    #[test]
    fn flow_key_rejects_bad_layouts_without_panicking() {
        let frame = tcp4_frame(None, [10, 0, 0, 1], 1, [10, 0, 0, 2], 2);
        let layout = layout_of(&frame);
        for cut in 0..frame.len() {
            let _ = FlowKey::from_frame(&frame[..cut], &layout);
        }
        assert!(matches!(
            FlowKey::from_frame(&frame[..30], &layout),
            Err(RssError::Truncated {
                layer: "IP",
                required_len: 34,
                len: 30
            })
        ));
        let v6 = FrameLayout {
            l3: L3Kind::Ipv6,
            ..layout
        };
        assert_eq!(
            FlowKey::from_frame(&frame, &v6),
            Err(RssError::IpVersionMismatch {
                expected: L3Kind::Ipv6,
                found: 4
            })
        );
        let far = FrameLayout {
            l3_offset: usize::MAX - 1,
            l4_offset: usize::MAX,
            ..layout
        };
        assert!(FlowKey::from_frame(&frame, &far).is_err());
    }

    #[test]
    fn symmetric_mode_puts_both_directions_on_one_queue() {
        let a = [192, 168, 1, 10];
        let b = [10, 20, 30, 40];
        let mut rss = Rss::new(&DEFAULT_KEY, 16, false).unwrap();
        let mut asymmetric_differs = false;
        for port in 1000..1064u16 {
            for vlan in [None, Some(7)] {
                let fwd = tcp4_frame(vlan, a, port, b, 443);
                let rev = tcp4_frame(vlan, b, 443, a, port);
                let (lf, lr) = (layout_of(&fwd), layout_of(&rev));
                rss.set_symmetric(true);
                let df = rss.classify(&fwd, &lf).unwrap();
                let dr = rss.classify(&rev, &lr).unwrap();
                assert_eq!(df.hash, dr.hash);
                assert_eq!(df.queue, dr.queue);
                rss.set_symmetric(false);
                let df = rss.classify(&fwd, &lf).unwrap();
                let dr = rss.classify(&rev, &lr).unwrap();
                asymmetric_differs |= df.hash != dr.hash;
            }
        }
        assert!(asymmetric_differs);
    }

    #[test]
    fn vlan_changes_the_queue_not_the_hash() {
        let rss = Rss::new(&DEFAULT_KEY, 64, false).unwrap();
        let mut queues = std::collections::HashSet::new();
        for vlan in 1..33u16 {
            let f = tcp4_frame(Some(vlan), [1, 1, 1, 1], 5, [2, 2, 2, 2], 6);
            let d = rss.classify(&f, &layout_of(&f)).unwrap();
            let plain = tcp4_frame(None, [1, 1, 1, 1], 5, [2, 2, 2, 2], 6);
            assert_eq!(
                d.hash,
                rss.classify(&plain, &layout_of(&plain)).unwrap().hash
            );
            queues.insert(d.queue);
        }
        // 32 VLANs over 64 queues: far more than one queue used.
        assert!(queues.len() > 8, "{queues:?}");
    }

    proptest! {
        #[test]
        fn table_equals_reference(
            key in proptest::collection::vec(any::<u8>(), 0..48),
            input in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let table = ToeplitzTable::new(&key);
            prop_assert_eq!(table.hash(&input), toeplitz_hash(&key, &input));
        }

        #[test]
        fn symmetric_key_is_direction_free(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), pa: u16, pb: u16, v6: bool,
        ) {
            let n = if v6 { 16 } else { 4 };
            let fwd = input(&a[..n], pa, &b[..n], pb);
            let rev = input(&b[..n], pb, &a[..n], pa);
            let mk = |bytes: &[u8]| {
                let mut k = FlowKey {
                    input: [0; MAX_INPUT_LEN],
                    len: bytes.len() as u8,
                    addr_len: n as u8,
                    hash_type: HashType::TcpIpv6,
                    vlan_ids: [None, None],
                };
                k.input[..bytes.len()].copy_from_slice(bytes);
                k
            };
            prop_assert_eq!(mk(&fwd).symmetric(), mk(&rev).symmetric());
        }
    }
}
