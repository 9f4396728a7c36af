use super::*;
use vswitch_offload::virtio::{FLAG_DATA_VALID, GSO_TCPV4};

#[test]
fn the_kernel_sees_only_needs_csum_and_a_header_length_the_frame_holds() {
    let guest = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM | FLAG_DATA_VALID,
        gso_type: GSO_TCPV4,
        hdr_len: 9000,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 3,
    };
    let wire = wire_header(&guest, 3000);
    assert_eq!(wire.flags, FLAG_NEEDS_CSUM);
    assert_eq!((wire.hdr_len, wire.num_buffers), (3000, 0));
    assert_eq!(
        (
            wire.gso_type,
            wire.gso_size,
            wire.csum_start,
            wire.csum_offset
        ),
        (GSO_TCPV4, 1448, 34, 16)
    );
    let plain = wire_header(
        &VirtioNetHdr {
            flags: FLAG_DATA_VALID,
            ..VirtioNetHdr::default()
        },
        60,
    );
    assert_eq!(plain, VirtioNetHdr::default());
}

#[test]
fn a_receive_slot_holds_the_largest_frame_and_its_header() {
    const { assert!(RX_SLOT >= HDR_LEN_V1 + UPLINK_MAX_FRAME) };
    assert_eq!(RX_SLOT % 64, 0);
    const { assert!(RX_BATCH <= MMSG_MAX) };
}

#[test]
fn queue_counts_are_checked_before_any_socket_is_opened() {
    for queues in [0, 257] {
        let err = UplinkPort::open("lo", UplinkConfig::default().queues(queues)).unwrap_err();
        assert!(matches!(err, UplinkError::Queues { .. }), "{err}");
        assert!(err.to_string().contains("1 to 256"), "{err}");
    }
}

#[test]
fn the_report_says_what_the_nic_offers_and_what_the_switch_does() {
    let nic = NicFeatures::from_legacy(true, true, false, true);
    let declared = OffloadMode::Auto.egress_capabilities(nic, 1500);
    let report = UplinkReport {
        interface: "eth1".into(),
        mode: OffloadMode::Auto,
        link: LinkState::Up,
        nic,
        declared,
        current: declared.with_checksum(false),
        queues: 2,
        vnet_hdr_len: 12,
        qdisc_bypass: true,
        stats: UplinkStats::default(),
    };
    let text = report.to_string();
    assert!(
        text.contains("uplink eth1 (offload=auto, 2 queue(s)): link up"),
        "{text}"
    );
    assert!(text.contains("tso off"), "{text}");
    assert!(
        text.contains("the switch segments in software, passes partial checksums"),
        "{text}"
    );
    assert!(
        text.contains("the port now segments and checksums in software"),
        "{text}"
    );
}

#[test]
fn config_builders_set_their_field() {
    let config = UplinkConfig::new(OffloadMode::Tso)
        .queues(4)
        .mtu(9000)
        .refresh(Duration::from_millis(20))
        .qdisc_bypass(false)
        .netns("/run/netns/x");
    assert_eq!(config.offload, OffloadMode::Tso);
    assert_eq!((config.queues, config.mtu), (4, Some(9000)));
    assert_eq!(config.refresh, Duration::from_millis(20));
    assert!(!config.qdisc_bypass);
    assert_eq!(config.netns, Some(PathBuf::from("/run/netns/x")));
    assert_eq!(UplinkConfig::default().offload, OffloadMode::Auto);
}

#[test]
fn the_qdisc_is_bypassed_only_where_the_nic_cuts_every_large_frame_passed() {
    let bare = NicFeatures::default();
    let tso_nic = NicFeatures::from_names([
        ("tx-checksum-ip-generic", true),
        ("tx-scatter-gather", true),
        ("tx-tcp-segmentation", true),
        ("tx-tcp6-segmentation", true),
        ("tx-tcp-ecn-segmentation", true),
    ]);
    let config = UplinkConfig::new(OffloadMode::Tso);
    let forced = OffloadMode::Tso.egress_capabilities(bare, 1500);
    assert!(!bypass_fits(&config, bare, &forced));
    assert!(bypass_fits(&config, tso_nic, &forced));
    // TSO without ECN: a TSO frame with ECN would need the kernel's GSO.
    let no_ecn = NicFeatures::from_legacy(true, true, true, true);
    assert!(!bypass_fits(&config, no_ecn, &forced));
    for mode in [OffloadMode::Auto, OffloadMode::None, OffloadMode::Checksum] {
        let config = UplinkConfig::new(mode);
        assert!(bypass_fits(
            &config,
            bare,
            &mode.egress_capabilities(bare, 1500)
        ));
    }
    let off = UplinkConfig::new(OffloadMode::Auto).qdisc_bypass(false);
    assert!(!bypass_fits(&off, tso_nic, &EgressCapabilities::none(1500)));
}
