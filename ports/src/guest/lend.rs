//! Lending a large transmitted frame's payload to the switch: the bytes
//! stay in the sending guest's buffers until the egress that copies them
//! where they go, and the transmit chain goes back to the guest only
//! then. A frame from one guest to another is so copied once, out of the
//! sender's buffers straight into the receiver's.
//!
//! * Only what nothing can decide on is lent. The virtio-net header and
//!   the frame's first [`LENT_HEAD`] bytes are copied into host memory as
//!   for any frame, and the frame is lent only when they hold all its
//!   headers: a TCP segmentation frame ([`LEND_MIN`] bytes or more) whose
//!   Ethernet, IP and TCP headers parse within them. The guest may rewrite
//!   its payload until the copy; that changes only the bytes it sends, as
//!   on a NIC that reads them by DMA later.
//! * The payload is read through vm-memory's volatile copies, never a
//!   Rust reference, out of the memory snapshot the chain was read
//!   through: a region removed meanwhile stays mapped until the last loan
//!   made through it is over.
//! * The chain's head goes back to the guest when the last copy of the
//!   frame is gone (delivered, dropped, or taken into host memory by an
//!   egress that needs it whole): the device model publishes it to the
//!   used ring on its next pass, woken by the pair's notifier. The split
//!   ring lets a device use buffers out of order.
//! * At most [`MAX_LENT`] chains of a pair are lent at once, so a receiver
//!   that holds frames back cannot take the sender's ring with them:
//!   beyond that, frames are copied as before.
//! * A device that must stop using the guest's buffers (the ring stopped,
//!   the device reset, the frontend gone) calls [`Lender::revoke`]: every
//!   payload still lent is copied into host memory there and then, its
//!   frame goes on unchanged, and its chain is returned.

use std::any::Any;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice, WriteVolatile};
use vswitch_offload::{LentBytes, TailError};

use super::chain::Segment;
use super::notify::Notifier;

/// Frames at least this long (header and frame) are lent when they can
/// be: below it the copy costs less than the loan's bookkeeping.
pub(super) const LEND_MIN: usize = 16 * 1024;

/// Bytes of a lent frame copied into host memory: room for an Ethernet
/// header with two VLAN tags, an IPv6 header with extension headers and a
/// TCP header with options.
pub(super) const LENT_HEAD: usize = 256;

/// Most chains of one queue pair lent at once.
pub const MAX_LENT: usize = 64;

/// Guest memory a loan can read after the call that made it: a snapshot
/// of the guest's memory map, shared (`GuestMemoryAtomic::memory()`, an
/// `Arc`).
pub trait LentMemory: Send + Sync + 'static {
    /// The `len` bytes at `addr`, if one region holds them.
    fn lent_slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_, ()>>;
}

impl<T> LentMemory for T
where
    T: Deref<Target = GuestMemoryMmap<()>> + Send + Sync + 'static,
{
    fn lent_slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_, ()>> {
        self.deref().get_slice(addr, len).ok()
    }
}

/// Where a loan's bytes are now.
enum LoanState {
    /// Still in the guest's buffers.
    Lent {
        mem: Arc<dyn LentMemory>,
        segments: Vec<Segment>,
    },
    /// Copied into host memory when the loan was revoked.
    Copied(Vec<u8>),
}

/// The bytes of one loan, shared by the frame and its lender (which may
/// revoke it).
struct LoanCell(Mutex<LoanState>);

impl LoanCell {
    fn lock(&self) -> MutexGuard<'_, LoanState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pair's lent chains, and those given back and not yet published.
#[derive(Default)]
struct Book {
    lent: Vec<(u16, Arc<LoanCell>)>,
    returned: Vec<u16>,
    /// Set while the ring is stopped: nothing is lent.
    stopped: bool,
    /// Batches of frames being dropped ([`Lender::hold`]): chains given
    /// back meanwhile wake the device model once, when the last batch is
    /// done.
    held: usize,
}

/// The loans of one queue pair's transmit ring.
pub(super) struct Lender {
    book: Mutex<Book>,
    /// The pair's notifier: wakes the device model to publish the chains
    /// given back.
    notifier: Arc<dyn Notifier>,
}

impl std::fmt::Debug for Lender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lender").finish_non_exhaustive()
    }
}

impl Lender {
    pub(super) fn new(notifier: Arc<dyn Notifier>) -> Lender {
        Lender {
            book: Mutex::new(Book::default()),
            notifier,
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a chain may be lent now.
    pub(super) fn has_room(&self) -> bool {
        let book = self.book();
        !book.stopped && book.lent.len() < MAX_LENT
    }

    /// Lends the bytes of `segments` in `mem` for the chain with head
    /// `head`; `None` when no more may be lent now.
    pub(super) fn lend(
        self: &Arc<Self>,
        head: u16,
        mem: Arc<dyn LentMemory>,
        segments: Vec<Segment>,
    ) -> Option<GuestLoan> {
        let mut book = self.book();
        if book.stopped || book.lent.len() >= MAX_LENT {
            return None;
        }
        let cell = Arc::new(LoanCell(Mutex::new(LoanState::Lent { mem, segments })));
        book.lent.push((head, cell.clone()));
        Some(GuestLoan {
            cell,
            head,
            lender: self.clone(),
        })
    }

    /// Moves the heads of the chains given back since the last call to
    /// `heads`, for the used ring.
    pub(super) fn take_returned(&self, heads: &mut Vec<u16>) {
        let mut book = self.book();
        heads.append(&mut book.returned);
    }

    /// Whether chains wait to be published.
    pub(super) fn has_returned(&self) -> bool {
        !self.book().returned.is_empty()
    }

    fn give_back(&self, head: u16, cell: &Arc<LoanCell>) {
        let wake = {
            let mut book = self.book();
            // A revoked loan was given back when it was revoked.
            let Some(at) = book.lent.iter().position(|(_, c)| Arc::ptr_eq(c, cell)) else {
                return;
            };
            book.lent.swap_remove(at);
            book.returned.push(head);
            book.returned.len() == 1 && book.held == 0
        };
        if wake {
            self.notifier.notify();
        }
    }

    /// Holds back the notifier while a batch of frames is dropped: the
    /// chains they give back are published together, after
    /// [`unhold`](Self::unhold), not one at a time.
    pub(super) fn hold(&self) {
        self.book().held += 1;
    }

    /// Ends a [`hold`](Self::hold): the last one fires the notifier if
    /// chains were given back meanwhile.
    pub(super) fn unhold(&self) {
        let wake = {
            let mut book = self.book();
            book.held = book.held.saturating_sub(1);
            book.held == 0 && !book.returned.is_empty()
        };
        if wake {
            self.notifier.notify();
        }
    }

    /// Copies every payload still lent into host memory and gives its
    /// chain back; with `stop`, lends nothing more until
    /// [`resume`](Self::resume). Returns how many loans were revoked.
    pub(super) fn revoke(&self, stop: bool) -> usize {
        let (revoked, wake) = {
            let mut book = self.book();
            book.stopped |= stop;
            let lent = std::mem::take(&mut book.lent);
            let revoked = lent.len();
            for (head, cell) in lent {
                let mut state = cell.lock();
                if let LoanState::Lent { mem, segments } = &*state {
                    let len = segments.iter().map(|s| s.len).sum();
                    let mut copy = vec![0u8; len];
                    // The ranges were checked against this snapshot when
                    // lent, so the copy cannot fail; were it to, the frame
                    // carries zeros where the guest's bytes were not read,
                    // rather than keep reading the guest's memory.
                    let _ = copy_out(mem.as_ref(), segments, &mut copy);
                    *state = LoanState::Copied(copy);
                }
                book.returned.push(head);
            }
            (revoked, revoked > 0)
        };
        if wake {
            self.notifier.notify();
        }
        revoked
    }

    /// Lends again after a [`revoke`](Self::revoke) with `stop`, for a
    /// ring started again; heads given back and not published (the ring
    /// was stopped before they could be) are forgotten: the ring starts
    /// from the index the frontend gives.
    pub(super) fn resume(&self) {
        let mut book = self.book();
        book.stopped = false;
        book.returned.clear();
    }

    /// Chains lent now.
    pub(super) fn lent_now(&self) -> usize {
        self.book().lent.len()
    }

    /// Forgets the loan of `cell` without giving its chain back: the
    /// chain was refused and goes back with the error.
    fn call_off(&self, cell: &Arc<LoanCell>) {
        let mut book = self.book();
        if let Some(at) = book.lent.iter().position(|(_, c)| Arc::ptr_eq(c, cell)) {
            book.lent.swap_remove(at);
        }
    }
}

/// The guest memory of one lent range.
fn segment_slice<'m>(
    mem: &'m dyn LentMemory,
    segment: &Segment,
) -> Result<VolatileSlice<'m, ()>, TailError> {
    mem.lent_slice(segment.addr, segment.len).ok_or(TailError {
        reason: "a lent range is no longer guest memory",
    })
}

/// Copies the bytes of `segments` in `mem` into `dst`.
fn copy_out(mem: &dyn LentMemory, segments: &[Segment], dst: &mut [u8]) -> Result<(), TailError> {
    let mut at = 0;
    for segment in segments {
        let slice = segment_slice(mem, segment)?;
        let Some(out) = dst.get_mut(at..at + segment.len) else {
            return Err(TailError {
                reason: "the destination is shorter than the lent bytes",
            });
        };
        slice.copy_to(out);
        at += segment.len;
    }
    Ok(())
}

/// A frame's payload lent by the guest that sent it: the source of its
/// [`vswitch_offload::Tail`]. Its chain is given back when it is dropped.
pub struct GuestLoan {
    cell: Arc<LoanCell>,
    head: u16,
    lender: Arc<Lender>,
}

impl GuestLoan {
    /// The lender the loan goes back to.
    pub(super) fn lender(&self) -> &Arc<Lender> {
        &self.lender
    }
}

/// One part of what a receive writes: host bytes, or guest memory of the
/// sender.
pub(super) enum Piece<'a> {
    Host(&'a [u8]),
    Guest(VolatileSlice<'a, ()>),
}

impl Piece<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Piece::Host(bytes) => bytes.len(),
            Piece::Guest(slice) => slice.len(),
        }
    }
}

impl GuestLoan {
    /// Calls the loan off: its chain is not given back when it is
    /// dropped (it went back to the guest another way).
    pub(super) fn call_off(&self) {
        self.lender.call_off(&self.cell);
    }

    /// Calls `write` with the loan's bytes as pieces after `before`, while
    /// the loan cannot be revoked.
    pub(super) fn with_pieces<'a, R>(
        &self,
        before: [Piece<'a>; 2],
        write: impl FnOnce(&mut [Piece<'_>]) -> R,
    ) -> Result<R, TailError> {
        let state = self.cell.lock();
        let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(20);
        pieces.extend(before);
        match &*state {
            LoanState::Lent { mem, segments } => {
                for segment in segments {
                    let slice = segment_slice(mem.as_ref(), segment)?;
                    pieces.push(Piece::Guest(slice));
                }
            }
            LoanState::Copied(bytes) => pieces.push(Piece::Host(bytes)),
        }
        Ok(write(&mut pieces))
    }
}

impl LentBytes for GuestLoan {
    fn copy_to(&self, dst: &mut [u8]) -> Result<(), TailError> {
        match &*self.cell.lock() {
            LoanState::Lent { mem, segments } => copy_out(mem.as_ref(), segments, dst),
            LoanState::Copied(bytes) => {
                if bytes.len() != dst.len() {
                    return Err(TailError {
                        reason: "the destination is not as long as the lent bytes",
                    });
                }
                dst.copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Straight into `out`'s spare capacity, with volatile reads: nothing
    /// is zeroed first.
    fn append_to(&self, len: usize, out: &mut Vec<u8>) -> Result<(), TailError> {
        out.reserve(len);
        match &*self.cell.lock() {
            LoanState::Lent { mem, segments } => segments.iter().try_for_each(|segment| {
                let slice = segment_slice(mem.as_ref(), segment)?;
                out.write_all_volatile(&slice).map_err(|_| TailError {
                    reason: "a lent range could not be read",
                })
            }),
            LoanState::Copied(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for GuestLoan {
    fn drop(&mut self) {
        self.lender.give_back(self.head, &self.cell);
    }
}

/// Whether every segment of `segments` lies in one region of `mem`, as a
/// loan's ranges must.
pub(super) fn lendable(mem: &dyn LentMemory, segments: &[Segment]) -> bool {
    segments
        .iter()
        .all(|s| mem.lent_slice(s.addr, s.len).is_some())
}

/// The ranges of `segments` from byte `skip` on.
pub(super) fn segments_after(segments: &[Segment], mut skip: usize) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segments.len());
    for segment in segments {
        if skip >= segment.len {
            skip -= segment.len;
            continue;
        }
        out.push(Segment {
            addr: GuestAddress(segment.addr.0 + skip as u64),
            len: segment.len - skip,
        });
        skip = 0;
    }
    out
}
