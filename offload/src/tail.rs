//! The bytes of a frame that are not in host memory yet: a frame's
//! payload still in the memory of the guest that sent it, lent to the
//! switch until the egress that copies it where it goes.
//!
//! A guest-to-guest frame is then copied once, from the sender's buffers
//! straight into the receiver's, instead of into a host buffer and out of
//! it again. The frame's first bytes (every header the switch reads) are
//! still copied into host memory at ingress, in [`Packet::data`]: nothing
//! the switch decides on can change under it, and only the payload is
//! lent. Whatever else needs the bytes (a software checksum or
//! segmentation, a TAP device, a capture) takes them whole first
//! ([`Packet::into_whole`]).
//!
//! [`Packet::data`]: crate::Packet::data
//! [`Packet::into_whole`]: crate::Packet::into_whole

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::wire::ethernet::L2Header;

/// Whether `data`, a frame's first bytes, holds all its headers as the
/// data of a packet with a tail must to be checked without its tail: a
/// TCP frame whose Ethernet, IP and TCP headers parse within `data`.
pub fn headers_within(data: &[u8]) -> bool {
    L2Header::parse(data).is_ok_and(|l2| crate::frame::headers_lead(data, &l2))
}

/// Where the bytes of a [`Tail`] are, and how to copy them out. The
/// implementation decides what lending them means for their owner (a
/// guest's transmit chain is returned to it when the last clone of the
/// tail is dropped).
pub trait LentBytes: Send + Sync + 'static {
    /// Copies the lent bytes, all of them, into `dst`, which is exactly as
    /// long as they are.
    fn copy_to(&self, dst: &mut [u8]) -> Result<(), TailError>;

    /// Appends the lent bytes, all `len` of them, to `out`. The provided
    /// implementation grows `out` with zeros and copies over them
    /// ([`copy_to`](Self::copy_to)); a source that can write into `out`'s
    /// spare capacity is spared the zeroing. On an error `out` may hold
    /// part of them: [`Tail::append_to`], the caller, takes them back.
    fn append_to(&self, len: usize, out: &mut Vec<u8>) -> Result<(), TailError> {
        let start = out.len();
        out.resize(start + len, 0);
        self.copy_to(&mut out[start..])
    }

    /// The source itself, for an egress that knows its type and copies
    /// from it without a host buffer in between.
    fn as_any(&self) -> &dyn Any;
}

/// The lent bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lent bytes of a frame could not be read: {reason}")]
pub struct TailError {
    /// What went wrong.
    pub reason: &'static str,
}

/// The rest of a frame after [`Packet::data`](crate::Packet::data), lent
/// by its owner. Clones share the same bytes (the copies of a flood); the
/// owner gets them back when the last clone is dropped.
#[derive(Clone)]
pub struct Tail(Arc<Lent>);

struct Lent {
    len: usize,
    source: Box<dyn LentBytes>,
}

impl Tail {
    /// `len` bytes lent by `source`.
    pub fn new(len: usize, source: impl LentBytes) -> Tail {
        Tail(Arc::new(Lent {
            len,
            source: Box::new(source),
        }))
    }

    /// How many bytes are lent.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether no bytes are lent.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Copies the lent bytes into `dst`, which must be exactly
    /// [`len`](Self::len) bytes long.
    pub fn copy_to(&self, dst: &mut [u8]) -> Result<(), TailError> {
        if dst.len() != self.0.len {
            return Err(TailError {
                reason: "the destination is not as long as the lent bytes",
            });
        }
        self.0.source.copy_to(dst)
    }

    /// Appends the lent bytes to `out`, [`len`](Self::len) of them; on an
    /// error `out` is as it was.
    pub fn append_to(&self, out: &mut Vec<u8>) -> Result<(), TailError> {
        let start = out.len();
        let appended = self.0.source.append_to(self.0.len, out).and_then(|()| {
            if out.len() == start + self.0.len {
                Ok(())
            } else {
                Err(TailError {
                    reason: "the source appended another number of bytes than it lends",
                })
            }
        });
        if appended.is_err() {
            out.truncate(start);
        }
        appended
    }

    /// The source, if it is a `T`.
    pub fn source<T: 'static>(&self) -> Option<&T> {
        self.0.source.as_any().downcast_ref()
    }
}

/// Two tails are equal when they are the same lent bytes.
impl PartialEq for Tail {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Tail {}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tail").field("len", &self.0.len).finish()
    }
}

/// Host bytes lent as a tail: for tests and for code that builds a lent
/// frame out of a buffer it owns.
impl LentBytes for bytes::Bytes {
    fn copy_to(&self, dst: &mut [u8]) -> Result<(), TailError> {
        if dst.len() != self.len() {
            return Err(TailError {
                reason: "the destination is not as long as the lent bytes",
            });
        }
        dst.copy_from_slice(self);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Packet;

    /// A source whose bytes cannot be read.
    struct Gone;

    impl LentBytes for Gone {
        fn copy_to(&self, _: &mut [u8]) -> Result<(), TailError> {
            Err(TailError { reason: "gone" })
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    /// A source that appends one byte fewer than it lends.
    struct Short;

    impl LentBytes for Short {
        fn copy_to(&self, _: &mut [u8]) -> Result<(), TailError> {
            unreachable!("appended only")
        }

        fn append_to(&self, len: usize, out: &mut Vec<u8>) -> Result<(), TailError> {
            out.extend(std::iter::repeat_n(1, len - 1));
            Ok(())
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn lent(head: &[u8], tail: Tail) -> Packet {
        Packet {
            tail: Some(tail),
            ..Packet::plain(head.to_vec())
        }
    }

    #[test]
    fn a_packet_taken_whole_has_its_head_then_its_tail() {
        let tail = bytes::Bytes::from_static(b"payload");
        let packet = lent(b"head:", Tail::new(tail.len(), tail));
        assert_eq!(packet.len(), 12);
        let whole = packet.into_whole().unwrap();
        assert_eq!((&whole.data[..], whole.tail), (&b"head:payload"[..], None));
    }

    #[test]
    fn a_tail_that_cannot_be_read_leaves_the_buffer_as_it_was() {
        let mut out = b"kept".to_vec();
        let err = Tail::new(100, Gone).append_to(&mut out).unwrap_err();
        assert_eq!((err.reason, &out[..]), ("gone", &b"kept"[..]));
        assert!(lent(b"head", Tail::new(100, Gone)).into_whole().is_err());

        let err = Tail::new(8, Short).append_to(&mut out).unwrap_err();
        assert!(err.reason.contains("another number of bytes"), "{err}");
        assert_eq!(
            &out[..],
            b"kept",
            "what a short source appended is taken back"
        );
    }
}
