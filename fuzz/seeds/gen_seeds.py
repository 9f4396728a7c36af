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
    vhost_user_messages/NAME.bin  vhost-user sessions of a frontend, in the
                           target's message encoding (see
                           fuzz_targets/vhost_user_messages.rs)

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


# vhost-user: request codes, the target's control bits, descriptor kinds.
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
SET_BACKEND_REQ_FD, GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 21, 36, 37, 38
KICK, POKE, RAW = 0, 45, 47
NO_NEED_REPLY, FDS, SIZE_LIE, RAW_FLAGS, SPLIT, LONG_BODY = 0x01, 0x02, 0x10, 0x20, 0x40, 0x80
MEMFD, EVENTFD, TWO_MEMFDS, SOCKET = 0, 1, 2, 3

F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4, F_MRG_RXBUF, F_MQ = 0, 1, 7, 11, 15, 22
F_INDIRECT_DESC, F_EVENT_IDX, F_PROTOCOL_FEATURES, F_VERSION_1 = 28, 29, 30, 32
PF_MQ, PF_REPLY_ACK, PF_CONFIGURE_MEM_SLOTS = 0, 3, 15

# Where the frontend says guest memory lives in its own address space.
VMM_BASE = 0x7F00_0000_0000
REGION = 0x10000  # the target's memfds are 64 KiB
RING = 256


def bits(*positions):
    return sum(1 << b for b in positions)


def vmsg(request, body=b"", need_reply=True, fds=None, size=None, flags=None, split=False):
    """One message: selector, control, [raw request], [flags], length,
    [size field], body."""
    ctl = 0 if need_reply else NO_NEED_REPLY
    if fds is not None:
        ctl |= FDS | (fds << 2)
    if size is not None:
        ctl |= SIZE_LIE
    if flags is not None:
        ctl |= RAW_FLAGS
    if split:
        ctl |= SPLIT
    if len(body) > 255:
        ctl |= LONG_BODY
    if request in (KICK, POKE) or 1 <= request <= 44:
        out = bytes([request, ctl])
    else:
        out = bytes([RAW, ctl]) + struct.pack("<I", request)
    if flags is not None:
        out += bytes([flags])
    out += struct.pack("<H", len(body)) if len(body) > 255 else bytes([len(body)])
    if size is not None:
        out += struct.pack("<H", size)
    return out + body


def u64(value):
    return struct.pack("<Q", value)


def vring_state(index, num):
    return struct.pack("<II", index, num)


def vring_addr(index, base):
    """Descriptor table, available and used ring of a RING-entry queue at
    guest offset `base` of the region mapped at VMM_BASE."""
    desc, avail_ring, used = base, base + 0x1000, base + 0x2000
    return struct.pack("<IIQQQQ", index, 0, VMM_BASE + desc, VMM_BASE + used,
                       VMM_BASE + avail_ring, 0)


def region(gpa, user, size=REGION, offset=0):
    return struct.pack("<QQQQ", gpa, size, user, offset)


def poke(offset, data):
    return vmsg(POKE, struct.pack("<H", offset) + data)


def descriptor(addr, length, flags=0, next_=0):
    return struct.pack("<QIHH", addr, length, flags, next_)


def avail(heads):
    return struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)


def handshake(features, protocol=bits(PF_MQ, PF_REPLY_ACK, PF_CONFIGURE_MEM_SLOTS)):
    """What QEMU sends before the guest driver starts, with the early ring
    enable the relay holds back until the features."""
    return (vmsg(GET_FEATURES) + vmsg(SET_OWNER, need_reply=False)
            + vmsg(GET_PROTOCOL_FEATURES) + vmsg(SET_PROTOCOL_FEATURES, u64(protocol))
            + (vmsg(GET_QUEUE_NUM) if protocol & bits(PF_MQ) else b"")
            + (vmsg(GET_MAX_MEM_SLOTS) if protocol & bits(PF_CONFIGURE_MEM_SLOTS) else b"")
            + vmsg(SET_VRING_ENABLE, vring_state(0, 1))
            + vmsg(SET_FEATURES, u64(features)))


def queue_setup(index, base):
    return (vmsg(SET_VRING_NUM, vring_state(index, RING))
            + vmsg(SET_VRING_ADDR, vring_addr(index, base))
            + vmsg(SET_VRING_BASE, vring_state(index, 0))
            + vmsg(SET_VRING_CALL, u64(index), fds=EVENTFD)
            + vmsg(SET_VRING_KICK, u64(index), fds=EVENTFD)
            + vmsg(SET_VRING_ENABLE, vring_state(index, 1)))


def guest_traffic(gpa, at=0):
    """Written into the last memfd sent (guest address `gpa` is its offset
    `at`): a receive queue at `gpa` with four 2 KiB buffers, a transmit
    queue at `gpa` + 0x3000 with one frame."""
    frame = bytes(12) + DST_MAC + SRC_MAC + b"\x88\xb5" + payload(46)
    rx = b"".join(descriptor(gpa + 0xA000 + i * 0x800, 0x800, flags=2) for i in range(4))
    return (poke(at, rx) + poke(at + 0x1000, avail([0, 1, 2, 3]))
            + poke(at + 0x3000, descriptor(gpa + 0x8000, len(frame)))
            + poke(at + 0x4000, avail([0])) + poke(at + 0x8000, frame))


def vhost_user_sessions():
    mq = bits(F_VERSION_1, F_PROTOCOL_FEATURES, F_MRG_RXBUF, F_CSUM, F_GUEST_CSUM, F_HOST_TSO4,
              F_GUEST_TSO4, F_MQ, F_EVENT_IDX, F_INDIRECT_DESC)
    plain = bits(F_VERSION_1, F_PROTOCOL_FEATURES)
    mem_table = vmsg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, VMM_BASE), fds=MEMFD)
    second = struct.pack("<Q", 0) + region(REGION, VMM_BASE + REGION)
    rings = (mem_table + guest_traffic(0) + queue_setup(0, 0) + queue_setup(1, 0x3000)
             + vmsg(KICK) + vmsg(GET_VRING_BASE, vring_state(1, 0)))
    return {
        "handshake": handshake(mq) + b"".join(
            vmsg(SET_VRING_NUM, vring_state(q, RING)) for q in range(4)) + b"".join(
            vmsg(SET_VRING_ENABLE, vring_state(q, 1)) for q in range(4)),
        "handshake_plain": handshake(plain, protocol=bits(PF_REPLY_ACK)),
        "rings": handshake(mq) + rings,
        "rings_plain": handshake(plain, protocol=bits(PF_REPLY_ACK)) + rings,
        # The second queue pair in a memory region added at run time, and
        # the region removed again while its rings are live.
        "mq_mem_slots": handshake(mq) + rings
        + vmsg(ADD_MEM_REG, second, fds=MEMFD)
        + guest_traffic(REGION)
        + queue_setup(2, REGION) + queue_setup(3, REGION + 0x3000) + vmsg(KICK)
        + vmsg(REM_MEM_REG, second, fds=MEMFD),
        # Two regions in one table (the rings of pair 0 in the second, which
        # is the memfd the pokes reach), then a backend channel the port
        # does not offer.
        "two_regions": handshake(mq)
        + vmsg(SET_MEM_TABLE, struct.pack("<II", 2, 0) + region(0, VMM_BASE)
               + region(REGION, VMM_BASE + REGION), fds=TWO_MEMFDS)
        + guest_traffic(REGION) + queue_setup(0, REGION) + queue_setup(1, REGION + 0x3000)
        + vmsg(KICK) + vmsg(SET_BACKEND_REQ_FD, fds=SOCKET),
        # Reset and negotiate again, with a set that breaks a dependency
        # (GUEST_TSO4 without GUEST_CSUM), then a valid one.
        "renegotiate": handshake(mq) + rings + vmsg(RESET_OWNER, need_reply=False)
        + vmsg(GET_FEATURES)
        + vmsg(SET_FEATURES, u64(bits(F_VERSION_1, F_PROTOCOL_FEATURES, F_GUEST_TSO4)))
        + vmsg(SET_FEATURES, u64(plain)) + vmsg(GET_VRING_BASE, vring_state(0, 0)),
        # A split header, a size field shorter than the body, then one above
        # the relay's bound.
        "lies": vmsg(GET_FEATURES, split=True) + vmsg(SET_OWNER, split=True)
        + vmsg(SET_FEATURES, u64(plain), size=4) + vmsg(SET_MEM_TABLE, size=5000),
        # No REPLY_ACK: requests are not answered; a version-only flags
        # field; an unknown request with the REPLY bit set.
        "no_reply_ack": handshake(plain, protocol=0) + vmsg(SET_VRING_NUM, vring_state(0, 8))
        + vmsg(SET_VRING_BASE, vring_state(0, 0), flags=0x1)
        + vmsg(0x1234, flags=0x5),
    }


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
                          ("datapath", datapath),
                          ("vhost_user_messages", vhost_user_sessions())):
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        for name, data in items.items():
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
