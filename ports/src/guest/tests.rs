//! Unit tests of the guest port.

use super::*;
use std::time::Duration;

use crate::features::Features;
use bytes::Bytes;
use std::sync::atomic::AtomicUsize;
use vswitch_offload::checksum::{checksum, pseudo_header_ipv4};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::virtio::{HdrError, HdrFormat};
use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE};
use vswitch_offload::virtio::{GSO_TCPV4, GSO_TCPV6};
use vswitch_offload::VirtioNetHdr;

fn all_offloads() -> Features {
    Features::CSUM
        | Features::GUEST_CSUM
        | Features::HOST_TSO4
        | Features::HOST_TSO6
        | Features::GUEST_TSO4
        | Features::GUEST_TSO6
        | Features::CTRL_VQ
        | Features::CTRL_GUEST_OFFLOADS
        | Features::MRG_RXBUF
        | Features::VERSION_1
}

struct Counting(AtomicUsize);

impl Notifier for Counting {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn port_with(acked: Features) -> (GuestPort, Arc<Counting>) {
    let negotiated = Negotiated::new(all_offloads(), acked).unwrap();
    let notifier = Arc::new(Counting(AtomicUsize::new(0)));
    let port = GuestPort::new(GuestPortConfig::new("g"), negotiated, notifier.clone());
    (port, notifier)
}

/// An untagged TCP/IPv4 frame with `payload` bytes; its checksum is
/// left partial (pseudo-header seed) when `partial`, else complete.
fn tcp4(payload: usize, partial: bool) -> Vec<u8> {
    let frame = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
        .ports(1000, 80)
        .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
        .payload_with(payload, |i| (i % 251) as u8);
    if partial {
        frame.partial_checksum().build()
    } else {
        frame.build()
    }
}

fn tcp4_ok(frame: &[u8]) -> bool {
    let tcp_len = frame.len() - 34;
    let mut sum = pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, tcp_len as u16);
    sum.add_bytes(&frame[34..]);
    sum.finish() == 0 && checksum(&frame[14..34]) == 0
}

fn partial_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    }
}

fn tso_hdr(mss: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        gso_type: GSO_TCPV4,
        gso_size: mss,
        hdr_len: 54,
        ..partial_hdr()
    }
}

fn header_bytes(hdr: VirtioNetHdr) -> [u8; 12] {
    let mut raw = [0u8; 12];
    hdr.emit(&mut raw, HdrFormat::V1).unwrap();
    raw
}

/// Header and frame as one host buffer, the way `transmit_bytes` takes a
/// chain.
fn chain_bytes(pieces: &[&[u8]]) -> Bytes {
    Bytes::from(pieces.concat())
}

#[test]
fn transmit_bytes_slices_the_frame_out_of_the_chain() {
    let (port, _) = port_with(all_offloads());
    let frame = tcp4(3000, true);
    let whole = chain_bytes(&[&header_bytes(tso_hdr(1448)), &frame]);
    port.transmit_bytes(whole.clone()).unwrap();
    let mut batch = Vec::new();
    port.receive(0, &mut batch, 8).unwrap();
    assert_eq!(batch[0].hdr, tso_hdr(1448));
    // Sliced out of the chain, not copied.
    assert_eq!(batch[0].data.as_ptr(), whole[12..].as_ptr());
    assert_eq!(port.stats().tx_frames, 1);
}

#[test]
fn frames_queued_when_the_guest_goes_away_are_discarded_and_counted() {
    let (port, _) = port_with(all_offloads());
    // Two frames from the guest the switch has not taken yet, three the
    // switch sent that the guest has not read.
    for _ in 0..2 {
        let frame = tcp4(100, false);
        let hdr = header_bytes(VirtioNetHdr::default());
        port.transmit_bytes(chain_bytes(&[&hdr, &frame])).unwrap();
    }
    for _ in 0..3 {
        port.send(0, Packet::plain(Bytes::from(tcp4(100, false))))
            .unwrap();
    }
    assert_eq!(port.discard_queued(), (3, 2));
    let stats = port.stats();
    assert_eq!((stats.rx_dropped, stats.tx_dropped), (3, 2));
    assert_eq!((stats.rx_frames, stats.tx_frames), (0, 2));
    // Nothing is left on either side, and a second call finds nothing.
    let mut batch = Vec::new();
    assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 0);
    assert_eq!(port.discard_queued(), (0, 0));
}

#[test]
fn offloads_not_negotiated_and_bad_headers_are_refused_and_counted() {
    let (port, _) = port_with(Features::VERSION_1 | Features::CSUM);
    let frame = tcp4(3000, true);
    let tso = header_bytes(tso_hdr(1448));
    assert_eq!(
        port.transmit_bytes(chain_bytes(&[&tso, &frame])),
        Err(GuestTxError::NotNegotiated(
            FeatureError::OffloadNotPermitted {
                asked: "TSO over IPv4"
            }
        ))
    );
    let wrong_l3 = header_bytes(VirtioNetHdr {
        gso_type: GSO_TCPV6,
        ..tso_hdr(1448)
    });
    let (full, _) = port_with(all_offloads());
    assert!(matches!(
        full.transmit_bytes(chain_bytes(&[&wrong_l3, &frame])),
        Err(GuestTxError::InvalidHeader(HdrError::L3Mismatch { .. }))
    ));
    assert_eq!(
        port.transmit_bytes(chain_bytes(&[&[0u8; 12], &[0u8; 13]])),
        Err(GuestTxError::ShortChain {
            required_len: 26,
            len: 25
        })
    );
    let huge = vec![0u8; MAX_GUEST_FRAME + 1];
    assert!(matches!(
        port.transmit_bytes(chain_bytes(&[&[0u8; 12], &huge])),
        Err(GuestTxError::FrameTooLong { .. })
    ));
    let err = port
        .transmit_bytes(chain_bytes(&[&[0u8; 12], &[0u8; 13]]))
        .unwrap_err();
    assert_eq!(err.counter(), "guest_tx_short_chain");
    let err = full
        .transmit_bytes(chain_bytes(&[&wrong_l3, &frame]))
        .unwrap_err();
    assert_eq!(err.counter(), "gso_l3_mismatch");
    assert_eq!(port.stats().tx_errors, 4);
    assert_eq!(port.stats().tx_frames, 0);
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
}

#[test]
fn a_full_transmit_queue_is_an_error_and_tx_room_tells_before() {
    let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
    let port = GuestPort::new(
        GuestPortConfig::new("g").queue_len(2),
        negotiated,
        Arc::new(|| {}),
    );
    let chain = chain_bytes(&[&[0u8; 12], &[0u8; 60]]);
    assert_eq!(port.tx_room(), 2);
    port.transmit_bytes(chain.clone()).unwrap();
    port.transmit_bytes(chain.clone()).unwrap();
    assert_eq!(port.tx_room(), 0);
    assert_eq!(
        port.transmit_bytes(chain.clone()),
        Err(GuestTxError::QueueFull { capacity: 2 })
    );
}

#[test]
fn the_switch_taking_frames_from_a_full_transmit_queue_notifies() {
    let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
    let notifier = Arc::new(Counting(AtomicUsize::new(0)));
    let port = GuestPort::new(
        GuestPortConfig::new("g").queue_len(1),
        negotiated,
        notifier.clone(),
    );
    let chain = chain_bytes(&[&[0u8; 12], &[0u8; 60]]);
    port.transmit_bytes(chain.clone()).unwrap();
    // Taking frames from a queue nobody found full notifies nobody.
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 0);
    port.transmit_bytes(chain.clone()).unwrap();
    assert_eq!(port.tx_room(), 0);
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    assert_eq!(port.tx_room(), 1);
    port.transmit_bytes(chain.clone()).unwrap();
    assert!(port.transmit_bytes(chain.clone()).is_err());
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
    // Once only.
    port.transmit_bytes(chain.clone()).unwrap();
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 1);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
}

#[test]
fn the_notifier_fires_once_until_the_guest_drains_the_queue() {
    let (port, notifier) = port_with(Features::VERSION_1);
    port.send(0, Packet::plain(vec![7u8; 100])).unwrap();
    port.send(0, Packet::plain(vec![8u8; 100])).unwrap();
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    let mut buf = Vec::new();
    assert_eq!(port.receive_into_vec(&mut buf).unwrap(), Some(112));
    assert_eq!(&buf[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert!(buf[12..].iter().all(|&b| b == 7));
    assert_eq!(port.receive_into_vec(&mut buf).unwrap(), Some(112));
    assert!(buf[12..].iter().all(|&b| b == 8));
    assert_eq!(port.receive_into_vec(&mut buf).unwrap(), None);
    assert_eq!(port.stats().rx_frames, 2);
    // Drained and re-armed: the next frame notifies again.
    port.send(0, Packet::plain(vec![9u8; 100])).unwrap();
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
    assert!(port.rx_pending());
}

/// Frames tagged 0, 1, ... in their first byte.
fn tagged(count: u8) -> Vec<Packet> {
    (0..count).map(|tag| Packet::plain(vec![tag; 60])).collect()
}

/// The tags of the frames waiting for the guest, in delivery order.
fn delivered_tags(port: &GuestPort) -> Vec<u8> {
    let mut tags = Vec::new();
    let mut buf = Vec::new();
    while port.receive_into_vec(&mut buf).unwrap().is_some() {
        tags.push(buf[12]);
    }
    tags
}

#[test]
fn a_batch_notifies_the_guest_once() {
    let (port, notifier) = port_with(Features::VERSION_1);
    let mut batch = tagged(8);
    port.send_batch(0, &mut batch).unwrap();
    assert!(batch.is_empty());
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    // Not drained yet: a second batch queues without notifying again.
    let mut more = tagged(3);
    port.send_batch(0, &mut more).unwrap();
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    assert_eq!(delivered_tags(&port), [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]);
    // Drained and re-armed: the next batch notifies, once.
    port.send_batch(0, &mut tagged(4)).unwrap();
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
    // An empty batch queues nothing and wakes nobody.
    delivered_tags(&port);
    port.send_batch(0, &mut Vec::new()).unwrap();
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
}

/// The notification comes after the whole batch is queued, so the device
/// model wakes to all of it; `send` frame by frame wakes it at the first.
#[test]
fn the_guest_is_notified_after_the_whole_batch_is_queued() {
    use std::sync::{OnceLock, Weak};
    let port_cell: Arc<OnceLock<Weak<GuestPort>>> = Arc::new(OnceLock::new());
    let queued_at_notify = Arc::new(Mutex::new(Vec::new()));
    let notifier = {
        let port_cell = port_cell.clone();
        let queued_at_notify = queued_at_notify.clone();
        Arc::new(move || {
            if let Some(port) = port_cell.get().and_then(Weak::upgrade) {
                let queued = port.first_pair.to_guest.len();
                queued_at_notify.lock().unwrap().push(queued);
            }
        })
    };
    let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
    let port = Arc::new(GuestPort::new(
        GuestPortConfig::new("g"),
        negotiated,
        notifier,
    ));
    port_cell.set(Arc::downgrade(&port)).unwrap();

    port.send_batch(0, &mut tagged(6)).unwrap();
    assert_eq!(*queued_at_notify.lock().unwrap(), [6]);
    delivered_tags(&port);
    for packet in tagged(6) {
        port.send(0, packet).unwrap();
    }
    assert_eq!(*queued_at_notify.lock().unwrap(), [6, 1]);
}

#[test]
fn a_batch_into_a_nearly_full_queue_takes_what_fits_and_keeps_the_rest_in_order() {
    let negotiated = Negotiated::new(all_offloads(), Features::VERSION_1).unwrap();
    let notifier = Arc::new(Counting(AtomicUsize::new(0)));
    let config = GuestPortConfig::new("g").queue_len(3);
    let port = GuestPort::new(config, negotiated, notifier.clone());
    let mut batch = tagged(5);
    let err = port.send_batch(0, &mut batch).unwrap_err();
    assert_eq!(
        err,
        BatchSendError::Full {
            queue: 0,
            capacity: 3
        }
    );
    let left: Vec<u8> = batch.iter().map(|p| p.data[0]).collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    // Full from the first frame: nothing taken, nothing notified.
    assert!(port.send_batch(0, &mut batch).unwrap_err().is_full());
    assert_eq!(batch.len(), 2);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 1);
    assert_eq!(delivered_tags(&port), [0, 1, 2]);
    port.send_batch(0, &mut batch).unwrap();
    assert!(batch.is_empty());
    assert_eq!(notifier.0.load(Ordering::SeqCst), 2);
    assert_eq!(delivered_tags(&port), [3, 4]);
}

#[test]
fn a_batch_to_a_missing_queue_is_refused_whole() {
    let (port, notifier) = port_with(Features::VERSION_1);
    let mut batch = tagged(2);
    assert_eq!(
        port.send_batch(1, &mut batch),
        Err(BatchSendError::NoSuchQueue {
            queue: 1,
            queues: 1
        })
    );
    assert_eq!(batch.len(), 2);
    assert_eq!(notifier.0.load(Ordering::SeqCst), 0);
}

#[test]
fn queue_pairs_need_mq_and_each_has_its_own_queues_and_notifier() {
    let single = GuestPort::new(
        GuestPortConfig::new("g").queue_pairs(4),
        Negotiated::new(all_offloads(), Features::VERSION_1).unwrap(),
        Arc::new(|| {}),
    );
    assert_eq!(single.capabilities().rx_queues, 1);
    assert!(single.queue(1).is_none());

    let offered = all_offloads() | Features::MQ;
    let negotiated = Negotiated::new(
        offered,
        Features::VERSION_1 | Features::CTRL_VQ | Features::MQ,
    )
    .unwrap();
    let notifiers: Vec<Arc<Counting>> = (0..3)
        .map(|_| Arc::new(Counting(AtomicUsize::new(0))))
        .collect();
    let port = GuestPort::with_queue_notifiers(
        GuestPortConfig::new("mq").queue_pairs(3),
        negotiated,
        |i| notifiers[i].clone(),
    );
    let caps = port.capabilities();
    assert_eq!((caps.rx_queues, caps.tx_queues), (3, 3));
    let fired = || -> Vec<usize> {
        notifiers
            .iter()
            .map(|n| n.0.load(Ordering::SeqCst))
            .collect()
    };

    // The switch's transmit queue q is the guest's receive queue q.
    port.send(2, Packet::plain(vec![2u8; 60])).unwrap();
    assert_eq!(fired(), [0, 0, 1]);
    assert!(!port.rx_pending());
    let mut buf = vec![0u8; 100];
    assert_eq!(
        port.queue(1).unwrap().receive_into_vec(&mut buf).unwrap(),
        None
    );
    let got = port.queue(2).unwrap().receive_into_vec(&mut buf).unwrap();
    assert_eq!(got, Some(72));
    assert_eq!(buf[12], 2);

    // The guest's transmit queue q is the switch's receive queue q.
    let chain = chain_bytes(&[&[0u8; 12], &[1u8; 60]]);
    port.queue(1)
        .unwrap()
        .transmit_bytes(chain.clone())
        .unwrap();
    assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
    assert_eq!(port.receive(1, &mut Vec::new(), 8).unwrap(), 1);
    assert!(port.receive(3, &mut Vec::new(), 8).is_err());
    assert!(port.send(3, Packet::plain(vec![0u8; 60])).is_err());

    // The guest uses one pair only: everything folds onto pair 0.
    assert_eq!(
        port.set_active_queue_pairs(4),
        Err(QueuePairsError { max: 3, asked: 4 })
    );
    assert!(port.set_active_queue_pairs(0).is_err());
    port.set_active_queue_pairs(1).unwrap();
    port.send(2, Packet::plain(vec![3u8; 60])).unwrap();
    port.send(1, Packet::plain(vec![4u8; 60])).unwrap();
    assert_eq!(fired(), [1, 0, 1]);
    for tag in [3u8, 4] {
        let got = port.receive_into_vec(&mut buf).unwrap();
        assert!(got.is_some());
        assert_eq!(buf[12], tag);
    }
}

/// The switch validates every header against its frame at ingress (a
/// `CheckedFrame`) before it hands the frame to a port, so a frame whose
/// offloads the guest still accepts is passed on without a second parse.
/// Shown with a TSO header the switch's ingress check would have refused
/// (an MSS below `MIN_TCP_MSS`): with GUEST_TSO4 it reaches the guest as it
/// is, so nothing validated it again; once the guest turns TSO off, the
/// frame needs adapting, is validated first, and is refused.
#[test]
fn a_frame_the_guest_accepts_is_not_validated_again() {
    let (port, _) = port_with(all_offloads());
    let frame = tcp4(3000, true);
    let hdr = tso_hdr(64);
    assert!(matches!(
        hdr.validate(&frame),
        Err(HdrError::BadGsoSize { .. })
    ));
    port.send(0, Packet::with_hdr(hdr, frame.clone())).unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        port.receive_into_vec(&mut buf).unwrap(),
        Some(12 + frame.len())
    );
    let delivered = VirtioNetHdr {
        num_buffers: 1,
        ..hdr
    };
    assert_eq!(buf[..12], header_bytes(delivered));
    assert_eq!(buf[12..], frame[..]);
    let stats = port.stats();
    assert_eq!((stats.rx_adapted, stats.rx_dropped), (0, 0));

    port.set_guest_offloads(Features::GUEST_CSUM.bits())
        .unwrap();
    port.send(0, Packet::with_hdr(hdr, frame)).unwrap();
    assert!(matches!(
        port.receive_into_vec(&mut buf),
        Err(GuestRxError::InvalidHeader(HdrError::BadGsoSize { .. }))
    ));
    assert_eq!(port.stats().rx_dropped, 1);
}

/// Partial checksums and TSO the guest still accepts after a change at
/// run time pass through whole; only what it turned off is adapted.
#[test]
fn offloads_still_accepted_after_a_change_pass_through() {
    let (port, _) = port_with(all_offloads());
    let without_tso6 = (Features::GUEST_OFFLOAD_BITS & all_offloads()) - Features::GUEST_TSO6;
    port.set_guest_offloads(without_tso6.bits()).unwrap();
    let frame = tcp4(10_000, true);
    port.send(0, Packet::with_hdr(tso_hdr(1448), frame.clone()))
        .unwrap();
    port.send(0, Packet::with_hdr(partial_hdr(), tcp4(500, true)))
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        port.receive_into_vec(&mut buf).unwrap(),
        Some(12 + frame.len())
    );
    let (hdr, _) = VirtioNetHdr::parse(&buf, HdrFormat::V1).unwrap();
    assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1448));
    assert_eq!(buf[12..], frame[..]);
    assert_eq!(port.receive_into_vec(&mut buf).unwrap(), Some(12 + 554));
    let (hdr, _) = VirtioNetHdr::parse(&buf, HdrFormat::V1).unwrap();
    assert_eq!(hdr.flags & FLAG_NEEDS_CSUM, FLAG_NEEDS_CSUM);
    assert_eq!(port.stats().rx_adapted, 0);
}

#[test]
fn offloads_turned_off_at_run_time_are_done_by_the_port() {
    let (port, _) = port_with(all_offloads());
    let caps = port.capabilities().egress;
    assert!(caps.checksum && caps.tso4 && caps.tso6);
    let frame = tcp4(10_000, true);
    // Queued by the switch under the declared capabilities...
    port.send(0, Packet::with_hdr(tso_hdr(1000), frame.clone()))
        .unwrap();
    port.send(0, Packet::with_hdr(partial_hdr(), tcp4(500, true)))
        .unwrap();
    // ...then the guest turns every receive offload off.
    assert_eq!(
        port.set_guest_offloads(0).unwrap(),
        GuestOffloads::default()
    );
    let mut payload = Vec::new();
    let mut frames = 0;
    loop {
        let mut buf = vec![0u8; 2048];
        let Some(got) = port.receive_into_vec(&mut buf).unwrap() else {
            break;
        };
        frames += 1;
        let (hdr, _) = VirtioNetHdr::parse(&buf, HdrFormat::V1).unwrap();
        assert_eq!(hdr.flags & FLAG_NEEDS_CSUM, 0);
        assert_eq!(hdr.gso_type, GSO_NONE);
        let seg = &buf[12..got];
        assert!(seg.len() - 14 <= 1500);
        assert!(tcp4_ok_any(seg), "segment {frames} has a bad checksum");
        if frames <= 10 {
            payload.extend_from_slice(&seg[54..]);
        } else {
            assert_eq!(seg.len(), 554);
        }
    }
    assert_eq!(frames, 11);
    assert_eq!(payload, frame[54..]);
    assert_eq!(port.stats().rx_adapted, 2);

    // Back on: GSO frames stay as they are again.
    port.set_guest_offloads((all_offloads() & Features::GUEST_OFFLOAD_BITS).bits())
        .unwrap();
    port.send(0, Packet::with_hdr(tso_hdr(1000), frame))
        .unwrap();
    let mut buf = vec![0u8; 20_000];
    let got = port.receive_into_vec(&mut buf).unwrap().unwrap();
    assert_eq!(got, 12 + 34 + 20 + 10_000);
    assert_eq!(buf[1], GSO_TCPV4);
}

/// A guest's TSO frame with SYN or RST, or with an MSS below 88, is
/// refused at transmit with the typed header error and counted; FIN and
/// PSH at MSS 88 go through.
#[test]
fn tso_with_syn_rst_or_a_tiny_mss_is_refused_at_transmit() {
    let (port, _) = port_with(all_offloads());
    let mut syn_fin_rst = tcp4(3000, true);
    syn_fin_rst[47] = 0x07;
    let err = port
        .transmit_bytes(chain_bytes(&[&header_bytes(tso_hdr(1448)), &syn_fin_rst]))
        .unwrap_err();
    assert_eq!(
        err,
        GuestTxError::InvalidHeader(HdrError::SynOrRstWithGso {
            gso_type: GSO_TCPV4,
            tcp_flags: 0x07
        })
    );
    assert_eq!(err.counter(), "syn_or_rst_with_gso");
    let frame = tcp4(3000, true);
    let err = port
        .transmit_bytes(chain_bytes(&[&header_bytes(tso_hdr(87)), &frame]))
        .unwrap_err();
    assert_eq!(
        err,
        GuestTxError::InvalidHeader(HdrError::BadGsoSize {
            gso_type: GSO_TCPV4,
            gso_size: 87,
            min: 88
        })
    );
    assert_eq!(err.counter(), "bad_gso_size");
    assert_eq!(port.stats().tx_errors, 2);
    assert_eq!(port.stats().tx_frames, 0);

    let mut fin_psh = frame;
    fin_psh[47] = 0x19;
    port.transmit_bytes(chain_bytes(&[&header_bytes(tso_hdr(88)), &fin_psh]))
        .unwrap();
    assert_eq!(port.stats().tx_frames, 1);
}

/// A guest that negotiated GUEST_ECN takes a TSO frame with ECN whole;
/// once it turns GUEST_ECN off (keeping TSO), the port cuts such a frame
/// itself, CWR on the first segment only.
#[test]
fn ecn_turned_off_at_run_time_gets_ecn_tso_frames_as_segments() {
    use vswitch_offload::virtio::GSO_ECN;
    let ecn = Features::GUEST_ECN | Features::HOST_ECN;
    let negotiated = Negotiated::new(all_offloads() | ecn, all_offloads() | ecn).unwrap();
    let port = GuestPort::new(
        GuestPortConfig::new("g"),
        negotiated,
        Arc::new(Counting(AtomicUsize::new(0))),
    );
    assert!(port.capabilities().egress.ecn);
    let (plain, _) = port_with(all_offloads());
    assert!(!plain.capabilities().egress.ecn);

    let mut frame = tcp4(10_000, true);
    frame[47] |= 0x80; // CWR
    let hdr = VirtioNetHdr {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..tso_hdr(1000)
    };
    port.send(0, Packet::with_hdr(hdr, frame.clone())).unwrap();
    let mut buf = Vec::new();
    let got = port.receive_into_vec(&mut buf).unwrap().unwrap();
    assert_eq!(got, 12 + frame.len());
    assert_eq!(buf[1], GSO_TCPV4 | GSO_ECN);

    let without_ecn = port.guest_offloads().to_features() - Features::GUEST_ECN;
    let now = port.set_guest_offloads(without_ecn.bits()).unwrap();
    assert!(now.tso4 && !now.ecn);
    port.send(0, Packet::with_hdr(hdr, frame.clone())).unwrap();
    let mut payload = Vec::new();
    let mut flags = Vec::new();
    while let Some(got) = port.receive_into_vec(&mut buf).unwrap() {
        assert_eq!(buf[1], GSO_NONE);
        let seg = &buf[12..got];
        assert!(tcp4_ok_any(seg));
        flags.push(seg[47]);
        payload.extend_from_slice(&seg[54..]);
    }
    assert_eq!(flags.len(), 10);
    assert_eq!(flags[0], 0x80 | 0x10, "CWR|ACK on the first segment");
    assert!(flags[1..9].iter().all(|&f| f == 0x10), "{flags:x?}");
    assert_eq!(flags[9], 0x18, "PSH|ACK on the last segment");
    assert_eq!(payload, frame[54..]);
    assert_eq!(port.stats().rx_adapted, 1);
}

/// Segments carry their own IP length and sequence numbers; check the
/// checksums with the lengths they declare.
fn tcp4_ok_any(frame: &[u8]) -> bool {
    frame.len() >= 54 && tcp4_ok(frame)
}

#[test]
fn only_checksum_offload_turned_off_completes_the_checksum() {
    let (port, _) = port_with(all_offloads());
    port.set_guest_offloads(0).unwrap();
    let partial = tcp4(300, true);
    port.send(0, Packet::with_hdr(partial_hdr(), partial))
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let got = port.receive_into_vec(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[12..got], &tcp4(300, false)[..]);
    assert_eq!(buf[0] & FLAG_NEEDS_CSUM, 0);
}

#[test]
fn condvar_notifier_counts_and_times_out() {
    let n = Arc::new(CondvarNotifier::new());
    assert!(!n.wait_timeout(Duration::from_millis(5)));
    let n2 = n.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        n2.notify();
    });
    assert!(n.wait_timeout(Duration::from_secs(5)));
    t.join().unwrap();
    n.notify();
    n.notify();
    assert!(n.wait_timeout(Duration::ZERO));
    assert!(!n.wait_timeout(Duration::ZERO));
}

#[test]
fn bad_queue_indices_are_errors() {
    let (port, _) = port_with(Features::VERSION_1);
    assert!(port.receive(1, &mut Vec::new(), 1).is_err());
    assert!(matches!(
        port.send(1, Packet::plain(vec![0u8; 60])),
        Err(SendError::NoSuchQueue { .. })
    ));
}

/// Guest memory and virtqueues for the descriptor-chain paths.
mod guest_memory {
    use super::*;
    use crate::guest::mock::{Desc, DriverQueue};
    use virtio_queue::{DescriptorChain, QueueT};
    use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

    /// 2 MiB in two adjacent regions, so buffers may cross a region
    /// boundary (at 1 MiB).
    pub(super) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
        ])
        .unwrap()
    }

    /// A queue of 256 descriptors with rings at 0 and buffers from 64 KiB
    /// to the end of memory.
    pub(super) fn driver(mem: &GuestMemoryMmap) -> DriverQueue<'_, GuestMemoryMmap> {
        DriverQueue::new(
            mem,
            GuestAddress(0),
            256,
            GuestAddress(0x1_0000),
            (2 << 20) - 0x1_0000,
        )
    }

    /// Every chain the driver posted, popped by the device.
    pub(super) fn pop_all<'m>(
        mem: &'m GuestMemoryMmap,
        driver: &DriverQueue<'m, GuestMemoryMmap>,
    ) -> Vec<DescriptorChain<&'m GuestMemoryMmap>> {
        let mut queue = driver.device_queue();
        std::iter::from_fn(|| queue.pop_descriptor_chain(mem)).collect()
    }

    fn transmit_pieces(port: &GuestPort, pieces: &[&[u8]]) -> Result<(), GuestTxError> {
        let mem = memory();
        let mut driver = driver(&mem);
        driver.post_readable(pieces);
        let chain = pop_all(&mem, &driver).pop().unwrap();
        port.transmit_chain(&mem, chain)
    }

    fn transmit_descs(
        port: &GuestPort,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
    ) -> Result<(), GuestTxError> {
        let mut driver = driver(mem);
        driver.post(descs);
        let chain = pop_all(mem, &driver).pop().unwrap();
        port.transmit_chain(mem, chain)
    }

    #[test]
    fn a_chain_split_at_any_descriptor_gives_the_same_frame_and_header() {
        let (port, _) = port_with(all_offloads());
        let frame = tcp4(3000, true);
        let mut chain = header_bytes(tso_hdr(1448)).to_vec();
        chain.extend_from_slice(&frame);
        for split in [1, 5, 11, 12, 13, 40, chain.len() - 1] {
            let (a, b) = chain.split_at(split);
            let (b, c) = b.split_at(b.len() / 2);
            transmit_pieces(&port, &[a, &[], b, c]).unwrap();
            let mut batch = Vec::new();
            assert_eq!(port.receive(0, &mut batch, 8).unwrap(), 1);
            assert_eq!(batch[0].hdr, tso_hdr(1448));
            assert_eq!(batch[0].data, frame);
        }
        assert_eq!(port.stats().tx_frames, 7);
    }

    #[test]
    fn small_frames_share_chunks_and_keep_their_bytes_while_held() {
        // Small frames are cut one after another from shared chunks: hold
        // more than a chunk's worth while more are copied, refuse a chain
        // now and then (copied in part, then dropped), let one wave go,
        // and every frame held still reads as it was sent.
        let (port, _) = port_with(Features::VERSION_1);
        let header = header_bytes(VirtioNetHdr::default());
        let frame = |wave: u8, i: u8| -> Vec<u8> {
            let mut f = vec![wave; 60 + usize::from(i) * 23];
            f[0] = i;
            f
        };
        let mut held = Vec::new();
        for wave in 0..4u8 {
            let mut batch = Vec::new();
            for i in 0..60u8 {
                transmit_pieces(&port, &[&header, &frame(wave, i)]).unwrap();
                if i % 16 == 0 {
                    // Too short for a frame: refused after its walk.
                    assert!(transmit_pieces(&port, &[&header, &[wave; 13]]).is_err());
                }
                if i % 20 == 19 {
                    port.receive(0, &mut batch, 64).unwrap();
                }
            }
            assert_eq!(batch.len(), 60);
            if wave != 1 {
                held.push((wave, batch));
            }
        }
        for (wave, batch) in held {
            for (i, packet) in batch.iter().enumerate() {
                assert_eq!(packet.data, frame(wave, i as u8), "wave {wave} frame {i}");
            }
        }
    }

    #[test]
    fn a_descriptor_across_two_memory_regions_is_read_whole() {
        let (port, _) = port_with(Features::VERSION_1);
        let mem = memory();
        let mut bytes = vec![0u8; 12];
        bytes.extend((0..1000u32).map(|i| i as u8));
        let at = (1u64 << 20) - 300;
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        transmit_descs(&port, &mem, &[Desc::readable(at, bytes.len() as u32)]).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 1).unwrap();
        assert_eq!(batch[0].data, bytes[12..]);
    }

    #[test]
    fn hostile_transmit_chains_are_typed_errors_and_counted() {
        let (port, _) = port_with(all_offloads());
        let mem = memory();
        let ok = Desc::readable(0x2_0000, 12);
        let end = 2u64 << 20;
        let cases = [
            (
                vec![ok, Desc::readable(end - 10, 100)],
                GuestTxError::OutsideMemory {
                    index: 1,
                    addr: end - 10,
                    len: 100,
                },
                "guest_tx_outside_memory",
            ),
            (
                vec![Desc::readable(0x10_0000_0000, 60)],
                GuestTxError::OutsideMemory {
                    index: 0,
                    addr: 0x10_0000_0000,
                    len: 60,
                },
                "guest_tx_outside_memory",
            ),
            (
                vec![ok, Desc::readable(u64::MAX - 10, 100)],
                GuestTxError::LengthWraps {
                    index: 1,
                    addr: u64::MAX - 10,
                    len: 100,
                },
                "guest_tx_length_wraps",
            ),
            (
                vec![ok, Desc::writable(0x3_0000, 60)],
                GuestTxError::WriteOnlyDescriptor {
                    index: 1,
                    addr: 0x3_0000,
                    len: 60,
                },
                "guest_tx_write_only_descriptor",
            ),
            (
                vec![ok, Desc::readable(0x3_0000, 13)],
                GuestTxError::ShortChain {
                    required_len: 26,
                    len: 25,
                },
                "guest_tx_short_chain",
            ),
        ];
        for (i, (descs, expected, counter)) in cases.iter().enumerate() {
            let err = transmit_descs(&port, &mem, descs).unwrap_err();
            assert_eq!(&err, expected);
            assert_eq!(err.counter(), *counter);
            assert_eq!(port.stats().tx_errors, i as u64 + 1);
        }
        assert_eq!(port.stats().tx_frames, 0);
        assert_eq!(port.receive(0, &mut Vec::new(), 8).unwrap(), 0);
    }

    #[test]
    fn a_header_the_guest_rewrites_after_transmit_changes_nothing_validated() {
        let (port, _) = port_with(all_offloads());
        let mem = memory();
        let mut driver = driver(&mem);
        let frame = tcp4(3000, true);
        let header = header_bytes(tso_hdr(1448));
        driver.post_readable(&[&header, &frame]);
        let chain = pop_all(&mem, &driver).pop().unwrap();
        let header_at = GuestAddress(driver.chain(chain.head_index())[0].addr);
        port.transmit_chain(&mem, chain).unwrap();
        // The guest now claims a different offload, one the frame does not
        // fit (GSO over IPv6 on an IPv4 frame), and scribbles on the frame.
        let hostile = header_bytes(VirtioNetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 1,
            ..tso_hdr(1448)
        });
        mem.write_slice(&hostile, header_at).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 1).unwrap();
        assert_eq!(batch[0].hdr, tso_hdr(1448));
        assert_eq!(batch[0].data, frame);
        assert!(batch[0].hdr.validate(&batch[0].data).is_ok());
    }

    /// Posts receive chains of `lens` (each chain a list of descriptor
    /// lengths) and pops them.
    fn rx_chains<'m>(
        mem: &'m GuestMemoryMmap,
        driver: &mut DriverQueue<'m, GuestMemoryMmap>,
        lens: &[&[u32]],
    ) -> Vec<DescriptorChain<&'m GuestMemoryMmap>> {
        for chain in lens {
            driver.post_writable(chain);
        }
        pop_all(mem, driver)
    }

    #[test]
    fn mergeable_buffers_span_chains_and_the_first_header_counts_them() {
        let (port, _) = port_with(all_offloads());
        let mem = memory();
        let mut driver = driver(&mem);
        let frame = tcp4(5000, true);
        port.send(0, Packet::with_hdr(tso_hdr(1448), frame.clone()))
            .unwrap();
        // Six chains of 1500 bytes, the first two of two descriptors each.
        let chains = rx_chains(
            &mem,
            &mut driver,
            &[&[12, 1488], &[700, 800], &[1500], &[1500], &[1500], &[1500]],
        );
        let heads: Vec<u16> = chains.iter().map(DescriptorChain::head_index).collect();
        let mut used = Vec::new();
        // Three chains are not enough: the frame stays.
        assert_eq!(
            port.receive_into_chains(&mem, &chains[..3], &mut used),
            Err(GuestRxError::OutOfBuffers {
                required_len: 12 + frame.len(),
                available: 4500
            })
        );
        assert!(used.is_empty());
        let got = port
            .receive_into_chains(&mem, &chains, &mut used)
            .unwrap()
            .unwrap();
        let required = 12 + frame.len();
        assert_eq!(
            got,
            Delivered {
                buffers: 4,
                last_len: required - 4500,
                bytes: required
            }
        );
        let expected: Vec<UsedChain> = (0..4)
            .map(|i| UsedChain {
                head_index: heads[i],
                len: if i < 3 {
                    1500
                } else {
                    (required - 4500) as u32
                },
            })
            .collect();
        assert_eq!(used, expected);
        let joined: Vec<u8> = used
            .iter()
            .flat_map(|u| driver.read_chain(u.head_index, u.len as usize))
            .collect();
        let (hdr, _) = VirtioNetHdr::parse(&joined, HdrFormat::V1).unwrap();
        assert_eq!(hdr.num_buffers, 4);
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(&joined[12..], &frame[..]);
        // Chains after the fourth were not touched.
        assert!(driver.read_chain(heads[4], 1500).iter().all(|&b| b == 0));
    }

    #[test]
    fn one_chain_per_frame_without_mergeable_buffers() {
        let (port, _) = port_with(Features::VERSION_1);
        let mem = memory();
        let mut driver = driver(&mem);
        port.send(0, Packet::plain(vec![7u8; 100])).unwrap();
        port.send(0, Packet::plain(vec![8u8; 100])).unwrap();
        let chains = rx_chains(&mem, &mut driver, &[&[12, 99], &[12, 100], &[112]]);
        let mut used = Vec::new();
        assert_eq!(
            port.receive_into_chains(&mem, &chains, &mut used),
            Err(GuestRxError::BufferTooSmall {
                required_len: 112,
                len: 111
            })
        );
        let got = port
            .receive_into_chains(&mem, &chains[1..], &mut used)
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            Delivered {
                buffers: 1,
                last_len: 112,
                bytes: 112
            }
        );
        assert_eq!(
            used,
            [UsedChain {
                head_index: chains[1].head_index(),
                len: 112
            }]
        );
        let bytes = driver.read_chain(chains[1].head_index(), 112);
        assert_eq!(&bytes[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(bytes[12..].iter().all(|&b| b == 8));
        assert_eq!(
            port.receive_into_chains(&mem, &chains[2..], &mut used)
                .unwrap(),
            None
        );
        assert_eq!((port.stats().rx_frames, port.stats().rx_dropped), (1, 1));
    }

    #[test]
    fn hostile_receive_chains_keep_the_frame_and_are_counted() {
        let (port, _) = port_with(all_offloads());
        let mem = memory();
        let end = 2u64 << 20;
        let cases = [
            (
                vec![Desc::writable(0x2_0000, 100), Desc::readable(0x3_0000, 100)],
                GuestRxError::ReadOnlyDescriptor {
                    chain: 0,
                    index: 1,
                    addr: 0x3_0000,
                    len: 100,
                },
            ),
            (
                vec![Desc::writable(end - 50, 100)],
                GuestRxError::OutsideMemory {
                    chain: 0,
                    index: 0,
                    addr: end - 50,
                    len: 100,
                },
            ),
            (
                vec![Desc::writable(u64::MAX - 10, 100)],
                GuestRxError::LengthWraps {
                    chain: 0,
                    index: 0,
                    addr: u64::MAX - 10,
                    len: 100,
                },
            ),
        ];
        port.send(0, Packet::plain(vec![5u8; 60])).unwrap();
        for (i, (descs, expected)) in cases.iter().enumerate() {
            let mut driver = driver(&mem);
            driver.post(descs);
            let good = driver.post_writable(&[2048]);
            let chains = pop_all(&mem, &driver);
            let mut used = Vec::new();
            let err = port
                .receive_into_chains(&mem, &chains, &mut used)
                .unwrap_err();
            assert_eq!(&err, expected);
            assert_eq!(err.bad_chain(), Some(0));
            assert!(!err.dropped_frame());
            assert!(used.is_empty());
            assert_eq!(port.stats().rx_bad_chains, i as u64 + 1);
            assert!(port.rx_pending(), "the frame is kept");
            if i == cases.len() - 1 {
                // The device model returns the bad chain and offers the rest.
                let got = port
                    .receive_into_chains(&mem, &chains[1..], &mut used)
                    .unwrap()
                    .unwrap();
                assert_eq!(got.bytes, 72);
                assert_eq!(used[0].head_index, good);
                assert_eq!(driver.read_chain(good, 72)[12..], [5u8; 60]);
            }
        }
        assert_eq!(port.stats().rx_dropped, 0);
    }

    #[test]
    fn legacy_header_is_ten_bytes_in_guest_memory() {
        let (port, _) = port_with(Features::CSUM);
        let mem = memory();
        let mut driver = driver(&mem);
        // A legacy driver posts the header in a descriptor of its own.
        let chains = rx_chains(&mem, &mut driver, &[&[10, 60]]);
        port.send(0, Packet::plain(vec![1u8; 60])).unwrap();
        let mut used = Vec::new();
        let got = port
            .receive_into_chains(&mem, &chains, &mut used)
            .unwrap()
            .unwrap();
        assert_eq!(got.bytes, 70);
        let bytes = driver.read_chain(chains[0].head_index(), 70);
        assert_eq!(bytes[..10], [0u8; 10]);
        assert!(bytes[10..].iter().all(|&b| b == 1));
        transmit_pieces(&port, &[&[0u8; 10], &[0u8; 60]]).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 1).unwrap();
        assert_eq!(batch[0].data.len(), 60);
    }

    /// A vhost-user backend holds guest memory as a `GuestMemoryAtomic`
    /// and pops chains over snapshots of it: the same calls take those.
    #[test]
    fn chains_over_a_guest_memory_atomic_snapshot_work_alike() {
        use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
        let (port, _) = port_with(all_offloads());
        let atomic = GuestMemoryAtomic::new(memory());
        let mem = atomic.memory();
        let mut driver = driver(&mem);
        let frame = tcp4(100, false);
        driver.post_readable(&[&header_bytes(VirtioNetHdr::default()), &frame]);
        let mut queue = driver.device_queue();
        let chain = queue.pop_descriptor_chain(atomic.memory()).unwrap();
        port.transmit_chain(&*mem, chain).unwrap();
        let mut batch = Vec::new();
        port.receive(0, &mut batch, 1).unwrap();
        assert_eq!(batch[0].data, frame);

        port.send(0, Packet::plain(frame.clone())).unwrap();
        let head = driver.post_writable(&[2048]);
        let chains: Vec<_> =
            std::iter::from_fn(|| queue.pop_descriptor_chain(atomic.memory())).collect();
        let mut used = Vec::new();
        port.receive_into_chains(&*mem, &chains, &mut used)
            .unwrap()
            .unwrap();
        assert_eq!(
            used,
            [UsedChain {
                head_index: head,
                len: 12 + frame.len() as u32
            }]
        );
        assert_eq!(
            driver.read_chain(head, used[0].len as usize)[12..],
            frame[..]
        );
    }

    /// Lent payloads: a large TSO frame's payload stays in the sender's
    /// memory until the receiver's port copies it.
    mod lending {
        use super::*;
        use crate::guest::{LentMemory, Transmitted, MAX_LENT};
        use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
        use vswitch_offload::CheckedFrame;

        /// One region, so every lent range lies in one.
        fn one_region() -> GuestMemoryMmap {
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
        }

        /// A TSO frame as Linux hands it over: header and headers in one
        /// descriptor, the payload in pages.
        fn tso_pieces(payload: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
            let frame = tcp4(payload, true);
            let mut pieces = vec![header_bytes(tso_hdr(1448)).to_vec()];
            pieces.push(frame[..54].to_vec());
            pieces.extend(frame[54..].chunks(4096).map(<[u8]>::to_vec));
            (frame, pieces)
        }

        struct Sender {
            atomic: GuestMemoryAtomic<GuestMemoryMmap>,
            port: GuestPort,
            notified: Arc<Counting>,
        }

        impl Sender {
            fn new() -> Sender {
                let (port, notified) = port_with(all_offloads());
                Sender {
                    atomic: GuestMemoryAtomic::new(one_region()),
                    port,
                    notified,
                }
            }

            /// Posts `pieces` as one chain and transmits it, lending from
            /// a snapshot of the memory.
            fn transmit(
                &self,
                driver: &mut DriverQueue<'_, GuestMemoryMmap>,
                pieces: &[Vec<u8>],
            ) -> (u16, Result<Transmitted, GuestTxError>) {
                let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                let head = driver.post_readable(&pieces);
                let mem = self.atomic.memory();
                let lent: Arc<dyn LentMemory> = Arc::new(mem.clone());
                let mut queue = driver.device_queue();
                // The device's queue starts at the ring's first entry: move
                // it to the chain just posted.
                let chain = std::iter::from_fn(|| queue.pop_descriptor_chain(mem.clone()))
                    .last()
                    .unwrap();
                assert_eq!(chain.head_index(), head);
                let sent = self
                    .port
                    .queue(0)
                    .unwrap()
                    .transmit_chain_lending(&*mem, &lent, chain);
                (head, sent)
            }

            fn returned(&self) -> Vec<u16> {
                let mut heads = Vec::new();
                self.port.queue(0).unwrap().take_returned(&mut heads);
                heads
            }

            fn take_one(&self) -> Packet {
                let mut batch = Vec::new();
                assert_eq!(self.port.receive(0, &mut batch, 8).unwrap(), 1);
                batch.pop().unwrap()
            }
        }

        /// Writes `packet` into 4 KiB mergeable buffers of a receiving
        /// guest and returns what the guest reads: header and frame.
        fn deliver(packet: Packet) -> Vec<u8> {
            let (port, _) = port_with(all_offloads());
            let mem = one_region();
            let mut driver = driver(&mem);
            port.send(0, packet).unwrap();
            let chains = rx_chains(&mem, &mut driver, &[&[4096u32][..]; 20]);
            let mut used = Vec::new();
            port.receive_into_chains(&mem, &chains, &mut used)
                .unwrap()
                .unwrap();
            used.iter()
                .flat_map(|u| driver.read_chain(u.head_index, u.len as usize))
                .collect()
        }

        #[test]
        fn a_large_tso_frame_is_lent_and_copied_once_into_the_receivers_buffers() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (frame, pieces) = tso_pieces(60_000);
            let (head, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Lent));
            let packet = sender.take_one();
            // The headers are in host memory, the rest is lent.
            assert_eq!(packet.data.len(), 256);
            assert_eq!(packet.len(), frame.len());
            assert_eq!(&packet.data[..], &frame[..256]);
            // Checked on its first bytes, the frame gets the plan its
            // whole bytes give.
            let checked = CheckedFrame::check(packet.clone()).unwrap();
            assert_eq!(Ok(checked.plan()), tso_hdr(1448).validate(&frame));
            drop(checked);
            // The chain stays the switch's while the frame lives.
            assert!(sender.returned().is_empty());
            let before = sender.notified.0.load(Ordering::SeqCst);
            let got = deliver(packet);
            assert_eq!(&got[12..], &frame[..]);
            assert_eq!(got[10..12], 15u16.to_le_bytes(), "num_buffers");
            // Delivered and dropped: the chain comes back, and the sender's
            // device model is woken to return it.
            assert_eq!(sender.returned(), [head]);
            assert!(sender.notified.0.load(Ordering::SeqCst) > before);
            let stats = sender.port.stats();
            assert_eq!((stats.tx_frames, stats.tx_lent), (1, 1));
            assert_eq!(stats.tx_bytes, frame.len() as u64);
        }

        #[test]
        fn headers_are_the_copy_taken_at_transmit_the_payload_is_read_at_delivery() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (frame, pieces) = tso_pieces(20_000);
            let (head, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Lent));
            let packet = sender.take_one();
            // The guest rewrites its whole chain after handing it over.
            let descs = driver.chain(head);
            for desc in &descs {
                mem.write_slice(&vec![0xee; desc.len as usize], GuestAddress(desc.addr))
                    .unwrap();
            }
            let got = deliver(packet);
            // What the switch checked is what leaves: the header and the
            // frame's first 256 bytes as they were; the payload after them
            // is what the guest's buffers hold at the copy, as a NIC that
            // reads by DMA would send it.
            assert_eq!(got[12..12 + 256], frame[..256]);
            assert!(got[12 + 256..].iter().all(|&b| b == 0xee));
            assert_eq!(got.len(), 12 + frame.len());
        }

        #[test]
        fn a_revoked_loan_is_copied_then_and_its_chain_returned_once() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (frame, pieces) = tso_pieces(30_000);
            let (head, _) = sender.transmit(&mut driver, &pieces);
            let packet = sender.take_one();
            let queue = sender.port.queue(0).unwrap();
            assert_eq!(queue.lent_now(), 1);
            // The ring stops: the payload is copied now, the chain returned.
            assert_eq!(queue.revoke_lent(true), 1);
            assert_eq!(sender.returned(), [head]);
            assert_eq!(queue.lent_now(), 0);
            // The guest may reuse its buffers: the frame keeps its bytes.
            for desc in driver.chain(head) {
                mem.write_slice(&vec![0; desc.len as usize], GuestAddress(desc.addr))
                    .unwrap();
            }
            assert_eq!(&deliver(packet)[12..], &frame[..]);
            assert!(sender.returned().is_empty(), "returned twice");
            // Stopped: frames are copied. Started again: lent again.
            let (_, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Copied));
            queue.resume_lending();
            let (_, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Lent));
            assert_eq!(sender.port.stats().tx_lent_revoked, 1);
        }

        #[test]
        fn a_guest_that_goes_away_has_its_loans_copied() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (frame, pieces) = tso_pieces(30_000);
            assert_eq!(
                sender.transmit(&mut driver, &pieces).1,
                Ok(Transmitted::Lent)
            );
            let packet = sender.take_one();
            sender.port.discard_queued();
            let (_, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Copied));
            // Memory gone: the frame still has every byte.
            drop(mem);
            drop(sender);
            assert_eq!(packet.into_whole().unwrap().data, frame);
        }

        #[test]
        fn at_most_max_lent_chains_are_lent_at_once() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (_, pieces) = tso_pieces(17_000);
            let mut held = Vec::new();
            for _ in 0..MAX_LENT {
                let (_, sent) = sender.transmit(&mut driver, &pieces);
                assert_eq!(sent, Ok(Transmitted::Lent));
                held.push(sender.take_one());
            }
            let (_, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Copied));
            assert!(sender.take_one().tail.is_none());
            held.pop();
            assert_eq!(sender.returned().len(), 1);
            let (_, sent) = sender.transmit(&mut driver, &pieces);
            assert_eq!(sent, Ok(Transmitted::Lent));
        }

        #[test]
        fn only_large_tcp_segmentation_frames_whose_headers_lead_are_lent() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            // Too small to be worth a loan.
            let (_, small) = tso_pieces(3_000);
            assert_eq!(
                sender.transmit(&mut driver, &small).1,
                Ok(Transmitted::Copied)
            );
            // Large, but asking for no segmentation (a jumbo frame).
            let frame = tcp4(30_000, false);
            let plain = vec![header_bytes(VirtioNetHdr::default()).to_vec(), frame];
            assert_eq!(
                sender.transmit(&mut driver, &plain).1,
                Ok(Transmitted::Copied)
            );
            // TSO whose TCP header ends past the first 256 bytes: the
            // frame is not lent (and here refused, its TCP header being
            // cut by the IP header's claimed options: all bytes checked).
            let (mut frame, _) = tso_pieces(30_000);
            frame[14] = 0x4f; // IHL 15: 60-byte IPv4 header
            let pieces = vec![header_bytes(tso_hdr(1448)).to_vec(), frame];
            assert_ne!(
                sender.transmit(&mut driver, &pieces).1,
                Ok(Transmitted::Lent)
            );
            let mut batch = Vec::new();
            sender.port.receive(0, &mut batch, 8).unwrap();
            assert!(batch.iter().all(|p| p.tail.is_none()));
            assert_eq!(sender.port.stats().tx_lent, 0);
        }

        #[test]
        fn a_lent_frame_refused_by_a_full_queue_returns_its_chain_with_the_error() {
            let negotiated = Negotiated::new(all_offloads(), all_offloads()).unwrap();
            let notifier = Arc::new(Counting(AtomicUsize::new(0)));
            let mut sender = Sender::new();
            sender.port =
                GuestPort::new(GuestPortConfig::new("g").queue_len(1), negotiated, notifier);
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (_, pieces) = tso_pieces(30_000);
            assert_eq!(
                sender.transmit(&mut driver, &pieces).1,
                Ok(Transmitted::Lent)
            );
            assert_eq!(
                sender.transmit(&mut driver, &pieces).1,
                Err(GuestTxError::QueueFull { capacity: 1 })
            );
            // The refused frame is gone; its chain went back with the
            // error, not through the lender.
            assert!(sender.returned().is_empty());
            assert_eq!(sender.port.queue(0).unwrap().lent_now(), 1);
        }

        #[test]
        fn a_lent_frame_taken_whole_equals_the_frame_and_returns_its_chain() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut driver = driver(&mem);
            let (frame, pieces) = tso_pieces(40_000);
            let (head, _) = sender.transmit(&mut driver, &pieces);
            let whole = sender.take_one().into_whole().unwrap();
            assert!(whole.tail.is_none());
            assert_eq!(whole.data, frame);
            assert_eq!(sender.returned(), [head]);
            // receive_into_vec writes the lent bytes too.
            assert_eq!(
                sender.transmit(&mut driver, &pieces).1,
                Ok(Transmitted::Lent)
            );
            let (port, _) = port_with(all_offloads());
            port.send(0, sender.take_one()).unwrap();
            let mut out = Vec::new();
            port.receive_into_vec(&mut out).unwrap();
            assert_eq!(&out[12..], &frame[..]);
        }

        #[test]
        fn a_receiver_without_tso_gets_the_lent_frame_cut_with_checksums() {
            let sender = Sender::new();
            let mem = sender.atomic.memory();
            let mut tx_driver = driver(&mem);
            let (frame, pieces) = tso_pieces(10 * 1448 + 2000);
            let (head, _) = sender.transmit(&mut tx_driver, &pieces);
            let packet = sender.take_one();
            // A guest that turned TSO off: its port segments in software.
            let (port, _) = port_with(all_offloads());
            port.set_guest_offloads(0).unwrap();
            port.send(0, packet).unwrap();
            let rx_mem = one_region();
            let mut rx_driver = driver(&rx_mem);
            let chains = rx_chains(&rx_mem, &mut rx_driver, &[&[2048u32][..]; 12]);
            let mut payload = Vec::new();
            let mut offered = &chains[..];
            let mut used = Vec::new();
            while let Some(got) = port
                .receive_into_chains(&rx_mem, offered, &mut used)
                .unwrap()
            {
                offered = &offered[got.buffers..];
            }
            assert_eq!(used.len(), 12);
            for u in &used {
                let segment = rx_driver.read_chain(u.head_index, u.len as usize);
                assert!(tcp4_ok_any(&segment[12..]), "checksums of a segment");
                payload.extend_from_slice(&segment[12 + 54..]);
            }
            assert_eq!(payload, frame[54..]);
            assert_eq!(sender.returned(), [head]);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes, split into descriptors anywhere and placed
            /// anywhere (across the region boundary too): the split does
            /// not matter, and an accepted frame is the chain minus the
            /// header.
            #[test]
            fn a_chain_in_guest_memory_reads_as_the_same_bytes(
                mut header in proptest::collection::vec(any::<u8>(), 12),
                flags in 0u8..3,
                gso_type in proptest::sample::select(vec![0u8, 0, 0, 1, 3, 4, 5, 0x80, 9]),
                frame in proptest::collection::vec(any::<u8>(), 0..2000),
                cuts in proptest::collection::vec(any::<usize>(), 0..6),
                place in 0u64..(1 << 20),
            ) {
                header[0] = flags;
                header[1] = gso_type;
                let (port, _) = port_with(all_offloads());
                let mut bytes = header.clone();
                bytes.extend_from_slice(&frame);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(bytes.len());
                let mem = memory();
                let mut descs = Vec::new();
                let (mut from, mut addr) = (0, (1 << 19) + place);
                for cut in cuts {
                    mem.write_slice(&bytes[from..cut], GuestAddress(addr)).unwrap();
                    descs.push(Desc::readable(addr, (cut - from) as u32));
                    addr += (cut - from) as u64 + 3;
                    from = cut;
                }
                let split = transmit_descs(&port, &mem, &descs);
                let whole = port.transmit_bytes(Bytes::from(bytes.clone()));
                prop_assert_eq!(&split, &whole);
                let mut batch = Vec::new();
                port.receive(0, &mut batch, 8).unwrap();
                if split.is_ok() {
                    let (mut hdr, _) = VirtioNetHdr::parse(&header, HdrFormat::V1).unwrap();
                    hdr.num_buffers = 0;
                    prop_assert_eq!(batch.len(), 2);
                    for packet in &batch {
                        prop_assert_eq!(packet.hdr, hdr);
                        prop_assert_eq!(&packet.data[..], &frame[..]);
                    }
                } else {
                    prop_assert!(batch.is_empty());
                }
            }

            /// Any frame and receive chains: a delivered frame reads back as
            /// header plus frame across the chains used, every one but the
            /// last full; otherwise a typed error says why.
            #[test]
            fn receive_fills_any_chains_consistently(
                mergeable in any::<bool>(),
                len in 14usize..1514,
                chains in proptest::collection::vec(
                    proptest::collection::vec(0u32..800, 1..4), 0..10),
            ) {
                let acked = if mergeable { all_offloads() } else { Features::VERSION_1 };
                let (port, _) = port_with(acked);
                let frame: Vec<u8> = (0..len).map(|i| (i % 255) as u8 + 1).collect();
                port.send(0, Packet::plain(frame.clone())).unwrap();
                let mem = memory();
                let mut driver = driver(&mem);
                let lens: Vec<&[u32]> = chains.iter().map(Vec::as_slice).collect();
                let popped = rx_chains(&mem, &mut driver, &lens);
                let sizes: Vec<usize> = chains.iter().map(|c| c.iter().sum::<u32>() as usize).collect();
                let mut used = Vec::new();
                let required = 12 + len;
                match port.receive_into_chains(&mem, &popped, &mut used) {
                    Ok(Some(delivered)) => {
                        prop_assert_eq!(delivered.bytes, required);
                        prop_assert_eq!(used.len(), delivered.buffers);
                        for (i, u) in used.iter().enumerate() {
                            prop_assert_eq!(u.head_index, popped[i].head_index());
                            if i + 1 < used.len() {
                                prop_assert_eq!(u.len as usize, sizes[i]);
                            }
                        }
                        let joined: Vec<u8> = used
                            .iter()
                            .flat_map(|u| driver.read_chain(u.head_index, u.len as usize))
                            .collect();
                        prop_assert_eq!(joined.len(), required);
                        let (hdr, _) = VirtioNetHdr::parse(&joined, HdrFormat::V1).unwrap();
                        prop_assert_eq!(usize::from(hdr.num_buffers), delivered.buffers);
                        prop_assert_eq!(&joined[12..], &frame[..]);
                        if !mergeable {
                            prop_assert_eq!(delivered.buffers, 1);
                        }
                    }
                    Ok(None) => prop_assert!(false, "a frame was queued"),
                    Err(GuestRxError::OutOfBuffers { required_len, available }) => {
                        prop_assert_eq!(required_len, required);
                        let total: usize = sizes.iter().sum();
                        prop_assert_eq!(available, if mergeable { total } else { 0 });
                        prop_assert!(port.rx_pending(), "the frame is kept");
                    }
                    Err(GuestRxError::BufferTooSmall { required_len, len: found }) => {
                        prop_assert!(!mergeable);
                        prop_assert_eq!(required_len, required);
                        prop_assert_eq!(found, sizes[0]);
                        prop_assert_eq!(port.stats().rx_dropped, 1);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
        }
    }
}
