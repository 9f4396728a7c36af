//! A smoltcp device on a switch port, so an smoltcp interface (a TCP/IP
//! stack in the same process) can hang on the switch.
//!
//! [`smoltcp_port`] returns the two ends of an in-memory port: the
//! [`MemoryPort`] the switch owns and a [`SmoltcpDevice`] implementing
//! [`smoltcp::phy::Device`] over the outside end.
//!
//! smoltcp computes and verifies every checksum itself and sends frames no
//! larger than its MTU, so the port declares no egress offload
//! ([`EgressCapabilities::none`]): the switch completes partial checksums and
//! segments GSO frames before they reach the stack, and the device declares
//! [`ChecksumCapabilities::default`] (compute and verify everything) to
//! smoltcp. A frame that arrives with offload work left anyway is dropped
//! and counted rather than handed to the stack with a wrong checksum.
//!
//! ```
//! use smoltcp::phy::Device;
//! use vswitch_ports::smoltcp_port::smoltcp_port;
//!
//! let (_port, device) = smoltcp_port("stack0", 1280);
//! assert_eq!(device.capabilities().max_transmission_unit, 1280 + 14);
//! ```

use std::time::Duration;

/// The smoltcp crate this device is built against.
pub use smoltcp;

use bytes::BytesMut;
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use vswitch_offload::{EgressCapabilities, Packet};

use crate::memory::{memory_port, MemoryEndpoint, MemoryPort, MemoryPortConfig};

/// Length of an Ethernet header without VLAN tags.
const ETHERNET_HEADER_LEN: usize = 14;

/// Counters of a [`SmoltcpDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmoltcpDeviceStats {
    /// Frames handed to the stack.
    pub rx_frames: u64,
    /// Frames dropped because they still had offload work (partial checksum
    /// or GSO) the stack cannot do.
    pub rx_offload_dropped: u64,
    /// Frames the stack sent into the switch.
    pub tx_frames: u64,
    /// Frames the stack sent that were dropped because the port's receive
    /// queue was full (TCP retransmits them).
    pub tx_dropped: u64,
    /// Largest frame handed to the stack, in bytes.
    pub rx_largest: usize,
}

/// The smoltcp end of a switch port.
#[derive(Debug)]
pub struct SmoltcpDevice {
    endpoint: MemoryEndpoint,
    mtu: u16,
    waiting: Option<Packet>,
    stats: SmoltcpDeviceStats,
}

/// Builds a port for the switch and the smoltcp device on its far side,
/// both with IP MTU `mtu`.
pub fn smoltcp_port(name: impl Into<String>, mtu: u16) -> (MemoryPort, SmoltcpDevice) {
    let config = MemoryPortConfig::new(name)
        .queue_len(4096)
        .egress(EgressCapabilities::none(mtu));
    let (port, endpoint) = memory_port(config);
    let device = SmoltcpDevice {
        endpoint,
        mtu,
        waiting: None,
        stats: SmoltcpDeviceStats::default(),
    };
    (port, device)
}

impl SmoltcpDevice {
    /// The IP MTU the device declares to smoltcp.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The counters so far.
    pub fn stats(&self) -> SmoltcpDeviceStats {
        self.stats
    }

    /// Waits up to `timeout` for a frame from the switch, so a poll loop can
    /// sleep instead of spinning. Returns whether one is waiting; it is
    /// handed to the stack by the next receive.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if self.waiting.is_none() {
            self.waiting = self.endpoint.collect_timeout(timeout);
        }
        self.waiting.is_some()
    }

    fn next_frame(&mut self) -> Option<Packet> {
        loop {
            let packet = self
                .waiting
                .take()
                .or_else(|| self.endpoint.try_collect())?;
            let hdr = packet.hdr;
            if hdr.has_offload_work() {
                self.stats.rx_offload_dropped += 1;
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_largest = self.stats.rx_largest.max(packet.data.len());
            return Some(packet);
        }
    }
}

/// A frame from the switch, lent to the stack.
#[derive(Debug)]
pub struct SmoltcpRxToken {
    packet: Packet,
}

impl phy::RxToken for SmoltcpRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.packet.data)
    }
}

/// Room for one frame from the stack into the switch.
#[derive(Debug)]
pub struct SmoltcpTxToken<'a> {
    endpoint: &'a MemoryEndpoint,
    stats: &'a mut SmoltcpDeviceStats,
}

impl phy::TxToken for SmoltcpTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = BytesMut::zeroed(len);
        let result = f(&mut frame);
        match self.endpoint.try_inject(0, Packet::plain(frame.freeze())) {
            Ok(()) => self.stats.tx_frames += 1,
            Err(_) => self.stats.tx_dropped += 1,
        }
        result
    }
}

impl phy::Device for SmoltcpDevice {
    type RxToken<'a> = SmoltcpRxToken;
    type TxToken<'a> = SmoltcpTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.next_frame()?;
        Some((
            SmoltcpRxToken { packet },
            SmoltcpTxToken {
                endpoint: &self.endpoint,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(SmoltcpTxToken {
            endpoint: &self.endpoint,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu) + ETHERNET_HEADER_LEN;
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::Port;
    use smoltcp::phy::{Device, RxToken, TxToken};
    use vswitch_offload::virtio::FLAG_NEEDS_CSUM;
    use vswitch_offload::VirtioNetHdr;

    #[test]
    fn frames_cross_both_ways_and_offload_frames_are_dropped() {
        let (port, mut device) = smoltcp_port("s", 1500);
        assert_eq!(port.capabilities().egress, EgressCapabilities::none(1500));
        let now = Instant::from_millis(0);
        device
            .transmit(now)
            .unwrap()
            .consume(60, |buf| buf.fill(0x5a));
        let mut batch = Vec::new();
        assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1);
        assert_eq!(batch[0].data, vec![0x5a; 60]);

        let partial = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            ..VirtioNetHdr::default()
        };
        port.send(0, Packet::with_hdr(partial, vec![1u8; 80]))
            .unwrap();
        port.send(0, Packet::plain(vec![2u8; 70])).unwrap();
        assert!(device.wait(Duration::from_secs(1)));
        let (rx, _tx) = device.receive(now).unwrap();
        assert_eq!(rx.consume(|frame| frame.to_vec()), vec![2u8; 70]);
        assert!(device.receive(now).is_none());
        assert!(!device.wait(Duration::from_millis(1)));
        let stats = device.stats();
        assert_eq!(
            (stats.rx_frames, stats.rx_offload_dropped, stats.tx_frames),
            (1, 1, 1)
        );
        assert_eq!(stats.rx_largest, 70);
    }
}
