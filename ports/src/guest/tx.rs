//! Transmit: the guest's descriptor chains into frames for the switch.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use vswitch_offload::virtio::HDR_LEN_V1;
use vswitch_offload::{Packet, VirtioNetHdr};

use super::stats::bump;
use super::{GuestPort, GuestQueue, GuestTxError, MAX_GUEST_FRAME, MIN_GUEST_FRAME};

/// Copies `out.len()` bytes starting at byte `skip` of the chain into `out`;
/// returns how many were copied (fewer when the chain ends first).
fn gather(chain: &[&[u8]], mut skip: usize, out: &mut [u8]) -> usize {
    let mut filled = 0;
    for iov in chain {
        if filled == out.len() {
            break;
        }
        let Some(rest) = iov.get(skip..) else {
            skip -= iov.len();
            continue;
        };
        skip = 0;
        let take = rest.len().min(out.len() - filled);
        if let (Some(dst), Some(src)) = (out.get_mut(filled..filled + take), rest.get(..take)) {
            dst.copy_from_slice(src);
        }
        filled += take;
    }
    filled
}

impl GuestPort {
    /// Copies the header out of the chain (once) and checks the lengths and
    /// the negotiated offloads.
    fn parse_header(
        &self,
        chain: &[&[u8]],
        total: usize,
    ) -> Result<(VirtioNetHdr, usize), GuestTxError> {
        let header_len = self.format.size();
        let frame_len = total.saturating_sub(header_len);
        if total < header_len + MIN_GUEST_FRAME {
            return Err(GuestTxError::ShortChain {
                required_len: header_len + MIN_GUEST_FRAME,
                len: total,
            });
        }
        if frame_len > MAX_GUEST_FRAME {
            return Err(GuestTxError::FrameTooLong {
                max: MAX_GUEST_FRAME,
                len: frame_len,
            });
        }
        let mut raw = [0u8; HDR_LEN_V1];
        let raw = raw.get_mut(..header_len).unwrap_or(&mut []);
        gather(chain, 0, raw);
        let (mut hdr, _) = VirtioNetHdr::parse(raw, self.format)?;
        // num_buffers means nothing on transmit.
        hdr.num_buffers = 0;
        self.host.permits(&hdr)?;
        Ok((hdr, header_len))
    }
}

impl GuestQueue<'_> {
    /// Takes one transmitted descriptor chain: the virtio-net header
    /// followed by the frame, as iovecs of any split. The header is copied
    /// once, checked against the negotiated host offloads and, with the
    /// frame copied into host memory, against the frame; then the frame is
    /// queued for the switch.
    pub fn transmit(&self, chain: &[&[u8]]) -> Result<(), GuestTxError> {
        let result = self.transmit_chain(chain);
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    /// Like [`transmit`](Self::transmit) for a chain already in host memory
    /// as one buffer: the frame is sliced out of it, not copied.
    pub fn transmit_bytes(&self, chain: Bytes) -> Result<(), GuestTxError> {
        let result = self
            .port
            .parse_header(&[&chain], chain.len())
            .and_then(|(hdr, header_len)| self.queue(hdr, chain.slice(header_len..)));
        if result.is_err() {
            bump(&self.port.counters.tx_errors, 1);
        }
        result
    }

    fn transmit_chain(&self, chain: &[&[u8]]) -> Result<(), GuestTxError> {
        let total = chain
            .iter()
            .fold(0usize, |n, iov| n.saturating_add(iov.len()));
        let (hdr, header_len) = self.port.parse_header(chain, total)?;
        let frame_len = total - header_len;
        let mut frame = BytesMut::zeroed(frame_len);
        let copied = gather(chain, header_len, &mut frame);
        frame.truncate(copied);
        self.queue(hdr, frame.freeze())
    }

    fn queue(&self, hdr: VirtioNetHdr, frame: Bytes) -> Result<(), GuestTxError> {
        if hdr.has_offload_work() {
            hdr.validate(&frame)?;
        }
        let len = frame.len();
        match self
            .pair
            .from_guest_tx
            .try_send(Packet::with_hdr(hdr, frame))
        {
            Ok(()) => {
                bump(&self.port.counters.tx_frames, 1);
                bump(&self.port.counters.tx_bytes, len);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pair.tx_blocked.store(true, Ordering::SeqCst);
                Err(GuestTxError::QueueFull {
                    capacity: self.port.tx_capacity,
                })
            }
        }
    }
}
