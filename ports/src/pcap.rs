//! A middleware port that records every frame it passes to a pcap file.
//!
//! [`PcapPort`] wraps any [`Port`] and writes each frame the switch receives
//! from it and each frame the switch sends to it (once the inner port took
//! it) as one Ethernet record, with the wall-clock time in nanoseconds, in
//! the order they passed. Classic pcap has no direction field: both
//! directions go to one file.
//!
//! Frames are recorded as they cross the port, offload metadata aside: a
//! frame that still has a partial checksum shows the pseudo-header seed in
//! its checksum field, and a GSO frame appears as one large record (the
//! snapshot length, [`SNAPLEN`], is large enough for any GSO frame).
//!
//! A failed write does not stop traffic: it is counted
//! ([`PcapPort::write_errors`]) and the frame goes on.
//!
//! ```
//! use vswitch_ports::memory::{memory_port, MemoryPortConfig};
//! use vswitch_ports::offload::Packet;
//! use vswitch_ports::pcap::PcapPort;
//! use vswitch_ports::Port;
//!
//! let (inner, outside) = memory_port(MemoryPortConfig::new("p"));
//! let port = PcapPort::new(inner, Vec::new()).unwrap();
//! outside.try_inject(0, Packet::plain(vec![1u8; 60])).unwrap();
//! port.receive(0, &mut Vec::new(), 8).unwrap();
//! port.send(0, Packet::plain(vec![2u8; 64])).unwrap();
//! assert_eq!(port.recorded(), 2);
//! let (_inner, file) = port.into_parts();
//! assert_eq!(file.len(), 24 + (16 + 60) + (16 + 64));
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use vswitch_offload::Packet;

use crate::port::{Port, PortCapabilities, PortError, SendError};

/// Snapshot length of the files written: larger than any frame a port
/// carries (a 64 KiB GSO frame with its headers), as tcpdump's default.
pub const SNAPLEN: u32 = 262_144;

/// Why a pcap recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum PcapPortError {
    /// The file could not be created.
    #[error("cannot create pcap file {path}: {source}")]
    Create {
        /// The path given.
        path: String,
        /// The error from the system.
        #[source]
        source: std::io::Error,
    },
    /// The pcap file header could not be written.
    #[error("cannot write the pcap file header: {source}")]
    Header {
        /// The error from the pcap writer.
        #[source]
        source: PcapError,
    },
}

/// A port that records what passes through it. See the module documentation.
#[derive(Debug)]
pub struct PcapPort<P: Port, W: Write + Send> {
    inner: P,
    writer: Mutex<PcapWriter<W>>,
    recorded: AtomicU64,
    write_errors: AtomicU64,
}

impl<P: Port> PcapPort<P, BufWriter<File>> {
    /// Records into a new file at `path` (truncated if it exists). Records
    /// are buffered: the file is complete once the port is dropped or
    /// taken apart with [`into_parts`](Self::into_parts) and flushed.
    pub fn create(inner: P, path: impl AsRef<Path>) -> Result<Self, PcapPortError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| PcapPortError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(inner, BufWriter::new(file))
    }
}

impl<P: Port, W: Write + Send> PcapPort<P, W> {
    /// Records into `out`, writing the pcap file header (Ethernet link
    /// type, nanosecond timestamps, [`SNAPLEN`]) first.
    pub fn new(inner: P, out: W) -> Result<Self, PcapPortError> {
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(out, header)
            .map_err(|source| PcapPortError::Header { source })?;
        Ok(PcapPort {
            inner,
            writer: Mutex::new(writer),
            recorded: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Frames recorded so far.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Frames that passed but could not be recorded (write errors).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// The wrapped port and the output, in that order.
    pub fn into_parts(self) -> (P, W) {
        let writer = self
            .writer
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        (self.inner, writer.into_writer())
    }

    fn record<'a>(&self, frames: impl Iterator<Item = &'a Packet>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        for packet in frames {
            let data = &packet.data[..];
            let captured = data.get(..SNAPLEN as usize).unwrap_or(data);
            let orig_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            match writer.write_packet(&PcapPacket::new(now, orig_len, captured)) {
                Ok(_) => self.recorded.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.write_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

impl<P: Port, W: Write + Send> Port for PcapPort<P, W> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> PortCapabilities {
        self.inner.capabilities()
    }

    /// As the inner port: its frames are recorded as they are taken, so
    /// its wakes mean the same here.
    fn set_rx_waker(&self, queue: usize, waker: std::task::Waker) -> bool {
        self.inner.set_rx_waker(queue, waker)
    }

    fn receive(
        &self,
        queue: usize,
        batch: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let before = batch.len();
        let moved = self.inner.receive(queue, batch, max)?;
        if let Some(new) = batch.get(before..) {
            if !new.is_empty() {
                self.record(new.iter());
            }
        }
        Ok(moved)
    }

    fn send(&self, queue: usize, packet: Packet) -> Result<(), SendError> {
        // A clone shares the bytes: a reference count, not a copy.
        let copy = packet.clone();
        self.inner.send(queue, packet)?;
        self.record(std::iter::once(&copy));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{memory_port, MemoryPortConfig};
    use pcap_file::pcap::PcapReader;
    use vswitch_offload::VirtioNetHdr;

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn the_inner_ports_wakes_reach_the_poller() {
        let (inner, outside) = memory_port(MemoryPortConfig::new("p"));
        let port = PcapPort::new(inner, Vec::new()).unwrap();
        let (count, waker) = crate::wake::CountWakes::new();
        assert!(port.set_rx_waker(0, waker));
        outside.try_inject(0, Packet::plain(frame(1, 60))).unwrap();
        assert_eq!(count.count(), 1);
    }

    #[test]
    fn both_directions_are_recorded_in_order_with_timestamps() {
        let (inner, outside) = memory_port(MemoryPortConfig::new("p").queue_len(2));
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let port = PcapPort::new(inner, Vec::new()).unwrap();
        let mut expected = Vec::new();
        for i in 0..3u8 {
            let rx = frame(i, 60 + usize::from(i));
            outside.try_inject(0, Packet::plain(rx.clone())).unwrap();
            let mut batch = Vec::new();
            assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1);
            assert_eq!(batch[0].data, rx);
            expected.push(rx);
            let tx = frame(100 + i, 70_000);
            let hdr = VirtioNetHdr {
                gso_type: 1,
                gso_size: 1448,
                ..VirtioNetHdr::default()
            };
            port.send(0, Packet::with_hdr(hdr, tx.clone())).unwrap();
            assert_eq!(outside.try_collect().unwrap().data, tx);
            expected.push(tx);
        }
        // A frame the inner port refused is not recorded.
        port.send(0, Packet::plain(frame(1, 60))).unwrap();
        port.send(0, Packet::plain(frame(2, 60))).unwrap();
        assert!(port.send(0, Packet::plain(frame(3, 60))).is_err());
        expected.push(frame(1, 60));
        expected.push(frame(2, 60));
        // An empty receive records nothing.
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
        assert_eq!(port.recorded(), 8);
        assert_eq!(port.write_errors(), 0);

        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (_, bytes) = port.into_parts();
        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        assert_eq!(reader.header().ts_resolution, TsResolution::NanoSecond);
        let mut last = Duration::ZERO;
        let mut got = Vec::new();
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap();
            assert!(packet.timestamp >= before && packet.timestamp <= after);
            assert!(packet.timestamp >= last, "timestamps go backwards");
            last = packet.timestamp;
            assert_eq!(packet.orig_len as usize, packet.data.len());
            got.push(packet.data.into_owned());
        }
        assert_eq!(got, expected);
    }

    struct FailingWriter;

    impl Write for FailingWriter {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_is_counted_and_traffic_goes_on() {
        let (inner, _outside) = memory_port(MemoryPortConfig::new("p"));
        assert!(matches!(
            PcapPort::new(inner, FailingWriter),
            Err(PcapPortError::Header { .. })
        ));
        // Accept the header, fail afterwards.
        struct FailAfter(usize);
        impl Write for FailAfter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 -= 1;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (inner, outside) = memory_port(MemoryPortConfig::new("p"));
        let port = PcapPort::new(inner, FailAfter(7)).unwrap();
        port.send(0, Packet::plain(frame(0, 60))).unwrap();
        assert_eq!(outside.try_collect().unwrap().data.len(), 60);
        assert_eq!((port.recorded(), port.write_errors()), (0, 1));
    }

    #[test]
    fn create_writes_a_readable_file() {
        let path = std::env::temp_dir().join(format!("pcap-port-{}.pcap", std::process::id()));
        let (inner, outside) = memory_port(MemoryPortConfig::new("p"));
        let port = PcapPort::create(inner, &path).unwrap();
        outside.try_inject(0, Packet::plain(frame(9, 90))).unwrap();
        port.receive(0, &mut Vec::new(), 1).unwrap();
        let (_, mut file) = port.into_parts();
        file.flush().unwrap();
        drop(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        let packet = reader.next_packet().unwrap().unwrap();
        assert_eq!(packet.data.as_ref(), &frame(9, 90)[..]);
        assert!(reader.next_packet().is_none());
    }
}
