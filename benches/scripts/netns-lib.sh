# Shared helpers for the namespace-based bench scripts. Source it.
# Every namespace and device made here is named with the prefix below and
# removed by vsw_cleanup (called on EXIT by the scripts).

VSW_PREFIX="${VSW_PREFIX:-vswb$$}"
VSW_NS_A="${VSW_PREFIX}a"
VSW_NS_B="${VSW_PREFIX}b"
VSW_NS_BR="${VSW_PREFIX}br"
VSW_IP_A=198.18.0.1
VSW_IP_B=198.18.0.2

vsw_cleanup() {
    for ns in "$VSW_NS_A" "$VSW_NS_B" "$VSW_NS_BR"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

vsw_make_ns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# Two hosts joined by the Linux kernel bridge: A <-veth-> bridge <-veth-> B.
vsw_kernel_bridge() {
    vsw_make_ns "$VSW_NS_A"; vsw_make_ns "$VSW_NS_B"; vsw_make_ns "$VSW_NS_BR"
    ip -n "$VSW_NS_BR" link add br0 type bridge
    ip -n "$VSW_NS_BR" link set br0 up
    for side in a b; do
        local ns="${VSW_PREFIX}${side}"
        ip -n "$VSW_NS_BR" link add "p$side" type veth peer name eth0 netns "$ns"
        ip -n "$VSW_NS_BR" link set "p$side" master br0 up
    done
    ip -n "$VSW_NS_A" addr add "$VSW_IP_A/24" dev eth0
    ip -n "$VSW_NS_B" addr add "$VSW_IP_B/24" dev eth0
    ip -n "$VSW_NS_A" link set eth0 up
    ip -n "$VSW_NS_B" link set eth0 up
}

# iperf3 from A to B with $1 parallel streams for $2 seconds; prints Gbit/s.
vsw_iperf() {
    local streams="$1" seconds="$2"
    ip netns exec "$VSW_NS_B" iperf3 -s -1 -D -B "$VSW_IP_B" >/dev/null
    sleep 0.3
    ip netns exec "$VSW_NS_A" iperf3 -c "$VSW_IP_B" -P "$streams" -t "$seconds" -J \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f" % (r["end"]["sum_received"]["bits_per_second"]/1e9))'
}

# TCP and UDP checksum errors counted by the kernel in namespace $1.
vsw_csum_errors() {
    ip netns exec "$1" nstat -az TcpInCsumErrors UdpInCsumErrors 2>/dev/null \
        | awk '/InCsumErrors/ {sum += $2} END {print sum + 0}'
}
