#!/usr/bin/env python3
"""Writes the seed corpus for the fuzz targets: real frames, built field by
field with correct lengths and checksums, as a guest or a capture would
carry them.

    parse_frame/NAME.bin   an Ethernet frame
    validate_hdr/NAME.bin  a 12-byte virtio_net_hdr_v1 followed by the frame
    segment/NAME.bin       a 2-byte little-endian egress MTU (0: none), then
                           a validate_hdr input
    complete_checksum/NAME.bin  csum_start and csum_offset (little-endian
                           u32 each), then a frame with a partial checksum

Run from anywhere: python3 fuzz/seeds/gen_seeds.py. The output is committed;
.ci/fuzz copies it into fuzz/corpus/ before fuzzing.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

SRC_MAC = bytes([2, 0, 0, 0, 0, 1])
DST_MAC = bytes([2, 0, 0, 0, 0, 2])
IP4_SRC = bytes([192, 168, 1, 10])
IP4_DST = bytes([192, 168, 1, 20])
IP6_SRC = bytes.fromhex("20010db8000000000000000000000001")
IP6_DST = bytes.fromhex("20010db8000000000000000000000002")

NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def fold(data):
    """Folded ones'-complement sum, not complemented (a partial checksum seed)."""
    return (~csum(data)) & 0xFFFF


def ethernet(ethertype, tags=()):
    """tags: list of (tpid, vid) from outer to inner."""
    out = DST_MAC + SRC_MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype)


def ipv4(proto, l4, options=b"", total_len=None, ident=0x1C46, flags_frag=0x4000):
    ihl = 5 + len(options) // 4
    tl = 20 + len(options) + len(l4) if total_len is None else total_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl, ident, flags_frag, 64, proto, 0,
                      IP4_SRC, IP4_DST) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr


def ipv6(next_header, payload_len):
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, next_header, 64, IP6_SRC, IP6_DST)


def pseudo4(proto, length):
    return IP4_SRC + IP4_DST + struct.pack("!BBH", 0, proto, length)


def pseudo6(proto, length):
    return IP6_SRC + IP6_DST + struct.pack("!IxxxB", length, proto)


def tcp(payload, pseudo, seq=1000, flags=0x18, options=b"", partial=False):
    doff = 5 + len(options) // 4
    hdr = struct.pack("!HHIIBBHHH", 40000, 80, seq, 5000, doff << 4, flags, 65535, 0, 0) + options
    if partial:
        c = fold(pseudo)  # Linux convention: pseudo-header over the full length
    else:
        c = csum(pseudo + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


def udp(payload, pseudo, partial=False):
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", 5000, 53, length & 0xFFFF, 0)
    c = fold(pseudo) if partial else (csum(pseudo + hdr + payload) or 0xFFFF)
    return hdr[:6] + struct.pack("!H", c) + payload


def vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def payload(n):
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def tcp4_frame(n, tags=(), ip_options=b"", tcp_options=b"", partial=False, total_len=None,
               flags=0x18):
    data = payload(n)
    seg = tcp(data, pseudo4(6, 20 + len(tcp_options) + n), options=tcp_options, partial=partial,
              flags=flags)
    ip = ipv4(6, seg, options=ip_options, total_len=total_len)
    return ethernet(0x0800, tags) + ip + seg


def tcp6_frame(n, ext=b"", first_next=6, partial=False):
    data = payload(n)
    seg = tcp(data, pseudo6(6, 20 + 12 + n), options=TS_OPTS, partial=partial)
    return ethernet(0x86DD) + ipv6(first_next, len(ext) + len(seg)) + ext + seg


def udp4_frame(n, tags=(), partial=False):
    data = payload(n)
    dg = udp(data, pseudo4(17, 8 + n), partial=partial)
    return ethernet(0x0800, tags) + ipv4(17, dg, flags_frag=0) + dg


def udp6_frame(n, partial=False):
    data = payload(n)
    dg = udp(data, pseudo6(17, 8 + n), partial=partial)
    return ethernet(0x86DD) + ipv6(17, len(dg)) + dg


# TCP options: NOP, NOP, timestamps (12 bytes), as Linux sends on every segment.
TS_OPTS = bytes([1, 1, 8, 10]) + struct.pack("!II", 123456, 654321)
# IPv4 option: router alert (4 bytes).
IP_OPTS = bytes([0x94, 4, 0, 0])
# IPv6 hop-by-hop header (8 bytes, PadN) then destination options (8 bytes).
HBH_DST = bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([6, 0, 1, 4, 0, 0, 0, 0])


def main():
    frames = {
        "tcp4": tcp4_frame(64, tcp_options=TS_OPTS),
        "tcp4_ipopts": tcp4_frame(32, ip_options=IP_OPTS),
        "tcp6_ext": tcp6_frame(64, ext=HBH_DST, first_next=0),
        "vlan_tcp4": tcp4_frame(40, tags=[(0x8100, 100)]),
        "qinq_udp4": udp4_frame(40, tags=[(0x88A8, 200), (0x8100, 100)]),
        "udp4": udp4_frame(100),
        "udp6": udp6_frame(100),
        "arp": ethernet(0x0806) + bytes.fromhex("0001080006040001") + SRC_MAC + IP4_SRC
        + bytes(6) + IP4_DST,
    }
    # Guest TSO frames: partial checksums, and a zero IPv4 total length.
    tso4 = tcp4_frame(4000, tags=[(0x8100, 7)], tcp_options=TS_OPTS, partial=True, total_len=0)
    tso6 = tcp6_frame(3000, ext=HBH_DST, first_next=0, partial=True)
    uso4 = udp4_frame(3000, partial=True)
    ufo6 = udp6_frame(2000, partial=True)
    csum4 = udp4_frame(200, partial=True)
    requests = {
        "tso4_vlan": vnet(NEEDS_CSUM, GSO_TCPV4, 18 + 20 + 32, 1448, 38, 16) + tso4,
        "tso4_vlan_ecn": vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 0, 1000, 38, 16) + tso4,
        "tso6_ext": vnet(NEEDS_CSUM, GSO_TCPV6, 0, 1428, 14 + 40 + 16, 16) + tso6,
        "uso4": vnet(NEEDS_CSUM, GSO_UDP_L4, 42, 1400, 34, 6) + uso4,
        "ufo6": vnet(NEEDS_CSUM, GSO_UDP, 62, 1232, 54, 6) + ufo6,
        "csum_udp4": vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6) + csum4,
        "plain_arp": vnet(0, GSO_NONE, 0, 0, 0, 0) + frames["arp"],
        "csum_bad_offset": vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1448, 38, 6) + tso4,
    }
    ufo4 = udp4_frame(3000, partial=True)
    segment_requests = dict(requests)
    # Requests validate_hdr must refuse (validate_hdr only): SYN, FIN and
    # RST on a TSO frame, and an MSS one below Linux's TCP_MIN_MSS (88).
    tso4_syn = tcp4_frame(4000, tags=[(0x8100, 7)], tcp_options=TS_OPTS, partial=True,
                          flags=0x17)
    requests["tso4_syn_fin_rst"] = vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1448, 38, 16) + tso4_syn
    requests["tso4_mss87"] = vnet(NEEDS_CSUM, GSO_TCPV4, 0, 87, 38, 16) + tso4
    segment_requests["ufo4"] = vnet(NEEDS_CSUM, GSO_UDP, 42, 1480, 34, 6) + ufo4
    segment_requests["uso4_vlan"] = (
        vnet(NEEDS_CSUM, GSO_UDP_L4, 0, 1000, 38, 6)
        + udp4_frame(2500, tags=[(0x8100, 9)], partial=True))
    segments = {}
    for name, request in segment_requests.items():
        for mtu in (0, 1500, 1280, 576):
            segments["%s_mtu%d" % (name, mtu)] = struct.pack("<H", mtu) + request
    completions = {
        "udp4": struct.pack("<II", 34, 6) + csum4,
        "tcp4_vlan": struct.pack("<II", 38, 16) + tso4,
        "tcp6_ext": struct.pack("<II", 14 + 40 + 16, 16) + tso6,
        "udp6": struct.pack("<II", 54, 6) + ufo6,
        "field_at_end": struct.pack("<II", 34, len(csum4) - 36) + csum4,
    }
    # The datapath target: three port setups (VLAN mode, MTU, offloads in
    # one byte each; see fuzz_targets/datapath.rs), then frames with their
    # ingress port: a broadcast to learn from, then guest offload requests.
    def through(ingress, request):
        return bytes([ingress]) + struct.pack("<H", len(request) - 12) + request
    tso4_untagged = tcp4_frame(4000, tcp_options=TS_OPTS, partial=True, total_len=0)
    tso4_vlan2 = tcp4_frame(4000, tags=[(0x8100, 2)], tcp_options=TS_OPTS, partial=True)
    arp = vnet(0, GSO_NONE, 0, 0, 0, 0) + frames["arp"]
    traffic = (through(0, arp)
               + through(1, vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1448, 34, 16) + tso4_untagged)
               + through(1, vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 0, 1000, 34, 16)
                         + tso4_untagged)
               + through(2, vnet(NEEDS_CSUM, GSO_TCPV6, 0, 1428, 14 + 40 + 16, 16) + tso6)
               + through(0, vnet(NEEDS_CSUM, GSO_UDP_L4, 42, 1400, 34, 6) + uso4)
               + through(2, vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6) + csum4))
    datapath = {
        # access VLAN 1 at 1500 without offloads, with every offload, and at
        # 576 with checksum offload only
        "access_mixed": bytes([3, 21, 9]) + traffic,
        # a trunk with every offload, an access port without, and an access
        # port of VLAN 2 without ECN
        "trunk": bytes([23, 3, 31]) + traffic
        + through(0, vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1448, 38, 16) + tso4_vlan2),
    }
    for target, items in (("parse_frame", frames), ("validate_hdr", requests),
                          ("segment", segments), ("complete_checksum", completions),
                          ("datapath", datapath)):
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        for name, data in items.items():
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
