//! Port-security guards: what a guest port may claim and announce, checked
//! on every frame it sends, before the switch learns from or forwards it.
//!
//! Four guards, each off by default and turned on per port in its
//! [`PortSecurity`] (Hyper-V's port ACL, DHCP guard and router guard, and
//! libvirt's `clean-traffic` filter are the models):
//!
//! - **IP source guard**: an IPv4 packet's source must be one of the port's
//!   IPv4 addresses, an IPv6 packet's source inside one of its IPv6
//!   prefixes.
//! - **Neighbour guard**: an ARP request or reply's sender address, and an
//!   IPv6 neighbour advertisement's target address, must be the port's own.
//! - **DHCP guard**: no DHCPv4 server messages (UDP 67 → 68: offers, acks,
//!   naks) and no DHCPv6 server messages (from UDP 547: advertise, reply,
//!   reconfigure, relay-reply).
//! - **Router guard**: no IPv6 router advertisements (ICMPv6 type 134).
//!
//! # Addresses a port owns without being told
//!
//! The rules follow what a Linux guest sends while it brings an interface
//! up, so that a guarded guest still gets its addresses:
//!
//! - IPv4 source `0.0.0.0` passes only for a DHCP client message (UDP
//!   68 → 67): DISCOVER and REQUEST go out before the guest has an address.
//!   An ARP probe (RFC 5227: sender address `0.0.0.0`) passes the neighbour
//!   guard.
//! - IPv6 source `::` passes only for the messages RFC 4861, 4862 and 3810
//!   allow from it: a neighbour solicitation for duplicate address
//!   detection (135), a router solicitation (133) and MLD reports (131,
//!   143), which Linux sends before its link-local address is ready.
//! - Link-local IPv6 addresses (`fe80::/10`): every IPv6 interface has one
//!   and picks it itself (from its MAC address, or by stable privacy as
//!   NetworkManager does), so while the port's list names no link-local
//!   prefix, any link-local address passes as a source and as a neighbour
//!   advertisement's target. Naming one (`fe80::1/128`, say) makes
//!   link-local addresses checked like any other.
//! - A multicast source never passes.
//!
//! # Frames the guards cannot read
//!
//! A guard reads the headers it needs where the ingress check found them:
//! the IPv4 guards the IPv4 header and UDP ports at the network offset of
//! the frame's link-layer header (VLAN tags included), nothing behind
//! them; the IPv6 guards the frame's layout ([`CheckedFrame::layout`],
//! parsed once per frame), and an IPv6 packet that does not end its
//! header chain in TCP or UDP has its chain walked to find an ICMPv6
//! header behind extension headers (the way RFC 7113 says router guards
//! are evaded). With any guard on, a frame the guard cannot see into (an
//! IP or ARP header cut short, an IPv6 chain that does not parse, a third
//! VLAN tag) is dropped as
//! [`DropReason::GuardUnreadable`] rather than let through unchecked. A
//! non-first IPv6 fragment carries no transport header and is judged by its
//! source address alone: Linux drops fragmented neighbour discovery
//! messages (RFC 6980), so a fragment cannot carry an advertisement a guest
//! would act on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use vswitch_offload::layout::L4Kind;
use vswitch_offload::wire::ethernet::ethertype;
use vswitch_offload::wire::ipv4::Ipv4Packet;
use vswitch_offload::wire::ipv6::Ipv6Packet;
use vswitch_offload::wire::udp::UdpDatagram;
use vswitch_offload::CheckedFrame;

use crate::drop::DropReason;

/// An IPv6 prefix: an address and how many of its leading bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    addr: Ipv6Addr,
    len: u8,
}

/// A prefix length above 128.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length is more than the address has bits.
    #[error("an IPv6 prefix length is 0 to 128, found {len}")]
    TooLong {
        /// The length given.
        len: u8,
    },
    /// The text is not `ADDRESS` or `ADDRESS/LENGTH`.
    #[error("expected an IPv6 address or prefix (2001:db8::/64), found {text:?}")]
    Syntax {
        /// The text given.
        text: String,
    },
}

impl Ipv6Prefix {
    /// The prefix of the first `len` bits of `addr` (the other bits are
    /// cleared).
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Ipv6Prefix, PrefixError> {
        if len > 128 {
            return Err(PrefixError::TooLong { len });
        }
        let bits = u128::from(addr) & Self::mask(len);
        Ok(Ipv6Prefix {
            addr: Ipv6Addr::from(bits),
            len,
        })
    }

    /// The prefix holding exactly `addr` (`/128`).
    pub fn host(addr: Ipv6Addr) -> Ipv6Prefix {
        Ipv6Prefix { addr, len: 128 }
    }

    fn mask(len: u8) -> u128 {
        match len {
            0 => 0,
            len => u128::MAX << (128 - u32::from(len.min(128))),
        }
    }

    /// The prefix's first address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether the prefix is `::/0`, which holds every address.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` is inside the prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & Self::mask(self.len) == u128::from(self.addr)
    }

    fn is_link_local(&self) -> bool {
        self.len >= 10 && is_link_local(self.addr)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = PrefixError;

    /// `2001:db8::/64`, or an address alone for its `/128`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax {
            text: text.to_owned(),
        };
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, len.parse::<u8>().map_err(|_| syntax())?),
            None => (text, 128),
        };
        Ipv6Prefix::new(addr.parse().map_err(|_| syntax())?, len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// The guards of one port and the addresses it owns. Every guard is off by
/// default; a port with a guard off is allowed what that guard refuses (a
/// router port, a DHCP server's port).
///
/// ```
/// use vswitch::guard::PortSecurity;
///
/// let guest = PortSecurity::new()
///     .allow_ipv4("192.0.2.10".parse().unwrap())
///     .allow_ipv6("2001:db8:1::/64".parse().unwrap())
///     .all_guards();
/// assert!(guest.ip_source_guard && guest.router_guard);
/// assert!(!PortSecurity::new().any_guard());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortSecurity {
    /// IPv4 and IPv6 packets must come from the port's addresses.
    pub ip_source_guard: bool,
    /// ARP and IPv6 neighbour advertisements must claim the port's own
    /// addresses.
    pub neighbor_guard: bool,
    /// No DHCPv4 or DHCPv6 server messages.
    pub dhcp_guard: bool,
    /// No IPv6 router advertisements.
    pub router_guard: bool,
    /// The IPv4 addresses the port owns.
    pub ipv4: Vec<Ipv4Addr>,
    /// The IPv6 prefixes the port's addresses are in.
    pub ipv6: Vec<Ipv6Prefix>,
}

impl PortSecurity {
    /// Every guard off, no addresses.
    pub fn new() -> Self {
        PortSecurity::default()
    }

    /// Turns the IP source guard on or off.
    pub fn ip_source_guard(mut self, on: bool) -> Self {
        self.ip_source_guard = on;
        self
    }

    /// Turns the ARP and neighbour-advertisement guard on or off.
    pub fn neighbor_guard(mut self, on: bool) -> Self {
        self.neighbor_guard = on;
        self
    }

    /// Turns the DHCP guard on or off.
    pub fn dhcp_guard(mut self, on: bool) -> Self {
        self.dhcp_guard = on;
        self
    }

    /// Turns the router guard on or off.
    pub fn router_guard(mut self, on: bool) -> Self {
        self.router_guard = on;
        self
    }

    /// Turns every guard on.
    pub fn all_guards(self) -> Self {
        self.ip_source_guard(true)
            .neighbor_guard(true)
            .dhcp_guard(true)
            .router_guard(true)
    }

    /// Adds an IPv4 address the port owns.
    pub fn allow_ipv4(mut self, addr: Ipv4Addr) -> Self {
        if !self.ipv4.contains(&addr) {
            self.ipv4.push(addr);
        }
        self
    }

    /// Adds an IPv6 prefix the port's addresses are in.
    pub fn allow_ipv6(mut self, prefix: Ipv6Prefix) -> Self {
        if !self.ipv6.contains(&prefix) {
            self.ipv6.push(prefix);
        }
        self
    }

    /// Whether any guard is on.
    pub fn any_guard(&self) -> bool {
        // Not short-circuit: four loads and an OR, no branch per guard.
        self.ip_source_guard | self.neighbor_guard | self.dhcp_guard | self.router_guard
    }

    #[inline]
    fn owns_ipv4(&self, addr: Ipv4Addr) -> bool {
        self.owns_ipv4_octets(addr.octets())
    }

    /// [`PortSecurity::owns_ipv4`] on the address as the frame has it.
    #[inline]
    fn owns_ipv4_octets(&self, octets: [u8; 4]) -> bool {
        self.ipv4.iter().any(|owned| owned.octets() == octets)
    }

    fn owns_ipv6(&self, addr: Ipv6Addr) -> bool {
        if self.ipv6.iter().any(|prefix| prefix.contains(addr)) {
            return true;
        }
        is_link_local(addr) && !self.ipv6.iter().any(Ipv6Prefix::is_link_local)
    }

    /// Checks a frame the port sent against its guards. The frame was
    /// checked at ingress; its parsed layout is read, not parsed again.
    /// (The switch's datapath checks through the port's compiled form,
    /// `CompiledGuard`, which passes the common IPv4 packet inline and
    /// asks these rules about everything else.)
    pub fn check(&self, frame: &CheckedFrame) -> Result<(), GuardViolation> {
        if !self.any_guard() {
            return Ok(());
        }
        self.check_guarded(frame)
    }

    /// [`PortSecurity::check`] for a port with a guard on.
    #[inline(never)]
    pub(crate) fn check_guarded(&self, frame: &CheckedFrame) -> Result<(), GuardViolation> {
        let l2 = frame.l2();
        match l2.ethertype {
            ethertype::ARP if self.neighbor_guard => self.check_arp(frame),
            ethertype::IPV4 => match self.check_ipv4(frame) {
                Err(unreadable @ GuardViolation::Unreadable { .. })
                    if self.ip_source_guard || self.dhcp_guard || self.router_guard =>
                {
                    Err(unreadable)
                }
                Err(GuardViolation::Unreadable { .. }) => Ok(()),
                verdict => verdict,
            },
            ethertype::IPV6 => match frame.layout() {
                Some(layout) => self.check_ipv6(frame, &layout),
                None if self.ip_source_guard || self.dhcp_guard || self.router_guard => {
                    Err(GuardViolation::Unreadable {
                        ethertype: l2.ethertype,
                    })
                }
                None if self.neighbor_guard => Err(GuardViolation::Unreadable {
                    ethertype: l2.ethertype,
                }),
                None => Ok(()),
            },
            // A third VLAN tag: the parser stops there, so nothing behind
            // it can be checked.
            other if ethertype::is_vlan(other) => {
                Err(GuardViolation::Unreadable { ethertype: other })
            }
            _ => Ok(()),
        }
    }

    fn check_arp(&self, frame: &CheckedFrame) -> Result<(), GuardViolation> {
        let unreadable = GuardViolation::Unreadable {
            ethertype: ethertype::ARP,
        };
        let Some(arp) = frame.data().get(frame.l2().l3_offset..) else {
            return Err(unreadable);
        };
        // Ethernet/IPv4 ARP (RFC 826): htype 1, ptype 0x0800, hlen 6,
        // plen 4, then oper, sender hardware and protocol addresses.
        let Some(fixed) = arp.get(..ARP_LEN) else {
            return Err(unreadable);
        };
        if fixed[..6] != [0, 1, 0x08, 0x00, 6, 4] {
            return Err(unreadable);
        }
        let operation = u16::from_be_bytes([fixed[6], fixed[7]]);
        let sender = Ipv4Addr::new(fixed[14], fixed[15], fixed[16], fixed[17]);
        let probe = sender.is_unspecified() && operation == ARP_REQUEST;
        if probe || self.owns_ipv4(sender) {
            Ok(())
        } else {
            Err(GuardViolation::ArpNotOwned { sender })
        }
    }

    /// The IPv4 guards, on the IPv4 header at the offset the ingress
    /// check found: the source address and, for UDP (a whole datagram or
    /// a first fragment), the two port numbers, read straight out of the
    /// frame. Nothing behind them is parsed: a transport header cut short
    /// is the receiver's to drop, and a datagram too short to hold its
    /// ports cannot be a DHCP message. An IPv4 header that does not parse
    /// is [`GuardViolation::Unreadable`].
    fn check_ipv4(&self, frame: &CheckedFrame) -> Result<(), GuardViolation> {
        let unreadable = GuardViolation::Unreadable {
            ethertype: ethertype::IPV4,
        };
        let ip = frame.data().get(frame.l2().l3_offset..).unwrap_or_default();
        let Ok(packet) = Ipv4Packet::new_checked(ip) else {
            return Err(unreadable);
        };
        // UDP source and destination ports, as the frame has them.
        let udp_ports = || -> Option<[u8; 4]> {
            if packet.protocol() != PROTO_UDP || packet.frag_offset() != 0 {
                return None;
            }
            ip.get(packet.header_len()..)?.first_chunk().copied()
        };
        if self.ip_source_guard {
            let octets = packet.src_addr();
            if !self.owns_ipv4_octets(octets) {
                let src = Ipv4Addr::from(octets);
                let dhcp_client = src.is_unspecified() && udp_ports() == Some(DHCP_CLIENT_PORTS);
                if !dhcp_client {
                    return Err(GuardViolation::IpSource {
                        addr: IpAddr::V4(src),
                    });
                }
            }
        }
        if self.dhcp_guard && udp_ports() == Some(DHCP_SERVER_PORTS) {
            return Err(GuardViolation::DhcpServer { src_port: 67 });
        }
        Ok(())
    }

    fn check_ipv6(
        &self,
        frame: &CheckedFrame,
        layout: &vswitch_offload::layout::FrameLayout,
    ) -> Result<(), GuardViolation> {
        let data = frame.data();
        let packet = data.get(layout.l3_offset..).unwrap_or(&[]);
        let ip = Ipv6Packet::new_unchecked(packet);
        let transport = data.get(layout.l4_offset..).unwrap_or(&[]);
        // The protocol that ended the header chain, when a header of it is
        // in this frame (not a non-first fragment).
        let protocol = match layout.l4 {
            Some(L4Kind::Tcp) => Some(PROTO_TCP),
            Some(L4Kind::Udp) => Some(PROTO_UDP),
            None if layout.l4_offset == layout.l3_offset + IPV6_HEADER_LEN => {
                Some(ip.next_header())
            }
            None => match ip.extension_chain() {
                Ok(chain) if !chain.non_first_fragment => Some(chain.transport_protocol),
                Ok(_) => None,
                Err(_) => {
                    return Err(GuardViolation::Unreadable {
                        ethertype: ethertype::IPV6,
                    })
                }
            },
        };
        let icmp_type = match protocol {
            Some(PROTO_ICMPV6) => match transport.first() {
                Some(&icmp_type) => Some(icmp_type),
                None => {
                    return Err(GuardViolation::Unreadable {
                        ethertype: ethertype::IPV6,
                    })
                }
            },
            _ => None,
        };
        if self.ip_source_guard {
            let src = Ipv6Addr::from(ip.src_addr());
            let allowed = if src.is_unspecified() {
                matches!(
                    icmp_type,
                    Some(ICMPV6_RS | ICMPV6_NS | ICMPV6_MLD_REPORT | ICMPV6_MLD2_REPORT)
                )
            } else {
                !src.is_multicast() && self.owns_ipv6(src)
            };
            if !allowed {
                return Err(GuardViolation::IpSource {
                    addr: IpAddr::V6(src),
                });
            }
        }
        match icmp_type {
            Some(ICMPV6_RA) if self.router_guard => {
                return Err(GuardViolation::RouterAdvertisement)
            }
            Some(ICMPV6_NA) if self.neighbor_guard => {
                // Type, code, checksum, flags and reserved, then the target.
                let Some(target) = transport.get(8..24) else {
                    return Err(GuardViolation::Unreadable {
                        ethertype: ethertype::IPV6,
                    });
                };
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(target);
                let target = Ipv6Addr::from(bytes);
                if !self.owns_ipv6(target) {
                    return Err(GuardViolation::NdNotOwned { target });
                }
            }
            _ => {}
        }
        if self.dhcp_guard && layout.l4 == Some(L4Kind::Udp) {
            let udp = UdpDatagram::new_unchecked(transport);
            let message = data.get(layout.payload_offset).copied();
            let server_message = udp.dst_port() == 546
                || matches!(
                    message,
                    Some(DHCPV6_ADVERTISE | DHCPV6_REPLY | DHCPV6_RECONFIGURE | DHCPV6_RELAY_REPL)
                );
            if udp.src_port() == 547 && server_message {
                return Err(GuardViolation::DhcpServer { src_port: 547 });
            }
        }
        Ok(())
    }
}

/// A port's guards in the form the datapath checks on every frame the port
/// sends, made once when the port joins the set ([`crate::PortSet`]):
/// whether any guard is on, the port's first IPv4 address as the frame
/// carries it, and a mask for each of the two IPv4 guards. An IPv4 packet
/// from that address that is not a DHCP server message passes on one
/// bounds check, three reads and a masked compare, without a branch per
/// guard; every other frame of a guarded port is judged by
/// [`PortSecurity::check`]'s rules in full, which decide alone whether it
/// goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompiledGuard {
    /// Whether any guard is on.
    on: bool,
    /// The first IPv4 address the port owns, its four bytes read in the
    /// machine's order, or [`NO_IPV4`] (no 32-bit read equals it).
    ipv4: u64,
    /// All ones when the IP source guard is on, else zero: the bits of a
    /// source address that must equal `ipv4`'s.
    source_mask: u64,
    /// One when the DHCP guard is on, else zero.
    dhcp_mask: u64,
}

/// [`CompiledGuard::ipv4`] of a port that owns no IPv4 address.
const NO_IPV4: u64 = u64::MAX;

impl CompiledGuard {
    /// The compiled form of `security`.
    pub(crate) fn new(security: &PortSecurity) -> CompiledGuard {
        let ipv4 = security
            .ipv4
            .first()
            .map_or(NO_IPV4, |addr| u64::from(u32::from_ne_bytes(addr.octets())));
        CompiledGuard {
            on: security.any_guard(),
            ipv4,
            source_mask: if security.ip_source_guard {
                u64::MAX
            } else {
                0
            },
            dhcp_mask: u64::from(security.dhcp_guard),
        }
    }

    /// Checks a frame the port sent: the answer of `security.check`, for
    /// the `security` this was compiled from.
    #[inline(always)]
    pub(crate) fn check(
        &self,
        security: &PortSecurity,
        frame: &CheckedFrame,
    ) -> Result<(), GuardViolation> {
        if !self.on || self.passes_ipv4(frame) {
            return Ok(());
        }
        security.check_guarded(frame)
    }

    /// Whether `frame` is an IPv4 packet the guards let through without
    /// a closer look: from the port's first address (or any, with the
    /// source guard off), and not UDP 67 → 68 (or any, with the DHCP
    /// guard off). `false` says only that the full rules must decide.
    ///
    /// It reads the link-layer header the ingress check parsed, not the
    /// frame's layout, so a frame it passes is never parsed past that.
    /// The frame's first 24 bytes from the IP header on are read as one
    /// window, with one bounds check: a first byte of 0x45 says IPv4
    /// without options, whose whole header is then in the window; the
    /// source address is at 12 and the transport ports at 20. A packet
    /// shorter than that, or with options, goes to the full rules. The
    /// ports are compared whatever the protocol: a TCP segment from 67 to
    /// 68 goes to the full rules too, which let it pass.
    #[inline(always)]
    fn passes_ipv4(&self, frame: &CheckedFrame) -> bool {
        let l2 = frame.l2();
        if l2.ethertype != ethertype::IPV4 {
            return false;
        }
        let data: &[u8] = frame.data();
        let Some(ip) = data
            .get(l2.l3_offset..)
            .and_then(<[u8]>::first_chunk::<IPV4_WINDOW>)
        else {
            return false;
        };
        // Both guards' answers without a branch: a header that is not
        // plain IPv4, a source address that is not the port's (its guard
        // on), or a 67 → 68 port pair (the DHCP guard on), leaves a bit
        // set.
        let [a, b, c, d] = [ip[12], ip[13], ip[14], ip[15]];
        let source = u64::from(u32::from_ne_bytes([a, b, c, d]));
        let foreign = (source ^ self.ipv4) & self.source_mask;
        let options = u64::from(ip[0] != IPV4_NO_OPTIONS);
        let dhcp = u64::from(ip[20..24] == DHCP_SERVER_PORTS);
        foreign | options | (dhcp & self.dhcp_mask) == 0
    }
}

/// The bytes [`CompiledGuard::passes_ipv4`] reads from the IP header on:
/// an IPv4 header without options and the transport ports after it.
const IPV4_WINDOW: usize = 24;
/// The first byte of an IPv4 header without options: version 4, 5 words.
const IPV4_NO_OPTIONS: u8 = 0x45;

const ARP_LEN: usize = 28;
/// UDP 68 → 67: a DHCPv4 client's message, source and destination port
/// as the frame has them.
const DHCP_CLIENT_PORTS: [u8; 4] = [0, 68, 0, 67];
/// UDP 67 → 68: a DHCPv4 server's message.
const DHCP_SERVER_PORTS: [u8; 4] = [0, 67, 0, 68];
const ARP_REQUEST: u16 = 1;
const IPV6_HEADER_LEN: usize = 40;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const ICMPV6_MLD_REPORT: u8 = 131;
const ICMPV6_RS: u8 = 133;
const ICMPV6_RA: u8 = 134;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const ICMPV6_MLD2_REPORT: u8 = 143;
const DHCPV6_ADVERTISE: u8 = 2;
const DHCPV6_REPLY: u8 = 7;
const DHCPV6_RECONFIGURE: u8 = 10;
const DHCPV6_RELAY_REPL: u8 = 13;

/// What a guard refused, with the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuardViolation {
    /// An IP packet from an address the port does not own.
    #[error("source address {addr} is not one of the port's")]
    IpSource {
        /// The source address found.
        addr: IpAddr,
    },
    /// An ARP request or reply claiming an address the port does not own.
    #[error("ARP for {sender}, which is not one of the port's addresses")]
    ArpNotOwned {
        /// The sender protocol address found.
        sender: Ipv4Addr,
    },
    /// A neighbour advertisement for an address the port does not own.
    #[error("neighbour advertisement for {target}, which is not one of the port's addresses")]
    NdNotOwned {
        /// The target address found.
        target: Ipv6Addr,
    },
    /// A DHCP server message.
    #[error("DHCP server message (UDP source port {src_port})")]
    DhcpServer {
        /// 67 for DHCPv4, 547 for DHCPv6.
        src_port: u16,
    },
    /// An IPv6 router advertisement.
    #[error("IPv6 router advertisement")]
    RouterAdvertisement,
    /// A guard is on and the headers it reads are cut short or hidden.
    #[error("a guard could not read the frame's headers (EtherType {ethertype:#06x})")]
    Unreadable {
        /// The EtherType the headers were under.
        ethertype: u16,
    },
}

impl GuardViolation {
    /// The counter this violation is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            GuardViolation::IpSource { .. } => DropReason::IpSourceNotAllowed,
            GuardViolation::ArpNotOwned { .. } => DropReason::ArpNotOwned,
            GuardViolation::NdNotOwned { .. } => DropReason::NdNotOwned,
            GuardViolation::DhcpServer { .. } => DropReason::DhcpServer,
            GuardViolation::RouterAdvertisement => DropReason::RouterAdvertisement,
            GuardViolation::Unreadable { .. } => DropReason::GuardUnreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_hold_their_addresses() {
        let prefix: Ipv6Prefix = "2001:db8:1::5/64".parse().unwrap();
        assert_eq!(prefix.to_string(), "2001:db8:1::/64");
        assert!(prefix.contains("2001:db8:1::ffff".parse().unwrap()));
        assert!(!prefix.contains("2001:db8:2::1".parse().unwrap()));
        let host: Ipv6Prefix = "2001:db8::1".parse().unwrap();
        assert_eq!(host.len(), 128);
        assert!(host.contains("2001:db8::1".parse().unwrap()));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
        let all: Ipv6Prefix = "::/0".parse().unwrap();
        assert!(all.is_empty() && all.contains(Ipv6Addr::LOCALHOST));
        assert_eq!(
            "::/129".parse::<Ipv6Prefix>(),
            Err(PrefixError::TooLong { len: 129 })
        );
        assert!(matches!(
            "10.0.0.1/8".parse::<Ipv6Prefix>(),
            Err(PrefixError::Syntax { .. })
        ));
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;
        use vswitch_offload::testing::FrameBuilder;
        use vswitch_offload::Packet;

        const OWNED: [u8; 4] = [192, 0, 2, 10];

        proptest! {
            /// `check`, and the datapath's compiled guard with its
            /// in-line IPv4 path, answer what the general path answers,
            /// for any guards, addresses and frame (byte changes included,
            /// so that odd parses are reached too).
            #[test]
            fn the_ipv4_shortcut_answers_as_the_full_check(
                guards in any::<[bool; 4]>(),
                owned in 0usize..3,
                second_first in any::<bool>(),
                src in prop_oneof![Just(OWNED), Just([0, 0, 0, 0]), any::<[u8; 4]>()],
                ports in prop_oneof![Just((67u16, 68u16)), Just((68, 67)), any::<(u16, u16)>()],
                udp in any::<bool>(),
                vlan in proptest::option::of(1u16..4095),
                flip in proptest::option::of((0usize..80, any::<u8>())),
                cut in proptest::option::of(14usize..80),
                options in any::<bool>(),
            ) {
                let mut security = PortSecurity::new()
                    .ip_source_guard(guards[0])
                    .neighbor_guard(guards[1])
                    .dhcp_guard(guards[2])
                    .router_guard(guards[3]);
                // The shortcut knows the first address only: owning OWNED
                // second tests the way past it.
                let other = [198, 51, 100, 7];
                let addrs = if second_first { [other, OWNED] } else { [OWNED, other] };
                for addr in addrs.iter().take(owned) {
                    security = security.allow_ipv4(Ipv4Addr::from(*addr));
                }
                let mut frame = if udp {
                    FrameBuilder::udp4(src, [192, 0, 2, 1])
                } else {
                    FrameBuilder::tcp4(src, [192, 0, 2, 1])
                };
                frame = frame.ports(ports.0, ports.1).payload([7; 30]);
                if let Some(vid) = vlan {
                    frame = frame.vlan(vid);
                }
                let mut bytes = frame.build();
                if options {
                    // Four NOP options: the ports move past where a
                    // header without options has them.
                    let l3 = 14 + 4 * usize::from(vlan.is_some());
                    bytes[l3] = 0x46;
                    let total = u16::from_be_bytes([bytes[l3 + 2], bytes[l3 + 3]]) + 4;
                    bytes[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                    bytes.splice(l3 + 20..l3 + 20, [1, 1, 1, 1]);
                }
                if let Some((at, value)) = flip {
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte = value;
                    }
                }
                // Short frames too: a header or ports past the end.
                if let Some(len) = cut {
                    bytes.truncate(len);
                }
                if let Ok(frame) = CheckedFrame::check(Packet::plain(bytes::Bytes::from(bytes))) {
                    prop_assert_eq!(security.check(&frame), security.check_guarded(&frame));
                    let compiled = CompiledGuard::new(&security);
                    prop_assert_eq!(compiled.check(&security, &frame), security.check(&frame));
                }
            }
        }
    }

    #[test]
    fn link_local_addresses_pass_until_one_is_named() {
        let lla: Ipv6Addr = "fe80::1".parse().unwrap();
        let open = PortSecurity::new().allow_ipv6("2001:db8::/64".parse().unwrap());
        assert!(open.owns_ipv6(lla));
        let named = open.allow_ipv6("fe80::2/128".parse().unwrap());
        assert!(!named.owns_ipv6(lla));
        assert!(named.owns_ipv6("fe80::2".parse().unwrap()));
    }
}
