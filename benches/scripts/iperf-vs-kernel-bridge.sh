#!/usr/bin/env bash
# iperf3 -P 16 between two network namespaces, in one run:
#   1. through the Linux kernel bridge over veth (the peer),
#   2. through `vswitch run` over TAP devices with offloads on both sides,
#   3. through `vswitch run` with the receiving TAP at offload=none, so the
#      switch segments and checksums every frame in software; its peer is the
#      kernel bridge with offloads off on the port towards B, where the
#      kernel segments and checksums in software. Once with the TAP's
#      default kernel receive (NAPI and GRO, gro=1000) and once with gro=off
#      (every written frame through the receiving stack on its own).
# Prints Gbit/s for each and the ratio to the kernel bridge, and the TCP/UDP
# checksum errors the receiving kernel counted (must be 0). Needs root.
#
#   bash benches/scripts/iperf-vs-kernel-bridge.sh [SECONDS] [STREAMS]
#   VSW_QUEUES=N opens each TAP with N queues (IFF_MULTI_QUEUE).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-5}"
streams="${2:-16}"

if [ "$(id -u)" != 0 ]; then
    echo "needs root (network namespaces and TAP devices)" >&2
    exit 1
fi
command -v iperf3 >/dev/null || { echo "needs iperf3 (bash .ci/install-deps)" >&2; exit 1; }
command -v ethtool >/dev/null || { echo "needs ethtool (apt-get install ethtool)" >&2; exit 1; }

. benches/scripts/netns-lib.sh
switch_pid=""
cleanup() {
    [ -n "$switch_pid" ] && kill "$switch_pid" 2>/dev/null && wait "$switch_pid" 2>/dev/null || true
    vsw_cleanup
}
trap cleanup EXIT

cargo build --release -q -p vswitch
bin=target/release/vswitch

# iperf3 through the kernel bridge, after the setup command given (if any)
# has adjusted it; prints "Gbit/s checksum-errors".
through_bridge() {
    vsw_kernel_bridge
    "$@"
    ip netns exec "$VSW_NS_A" ping -c 1 -W 2 "$VSW_IP_B" >/dev/null
    local rate errors
    rate=$(vsw_iperf "$streams" "$seconds")
    errors=$(vsw_csum_errors "$VSW_NS_B")
    vsw_cleanup
    echo "$rate $errors"
}
# The bridge's port towards B takes no offloads: the kernel segments and
# checksums in software before that port, as the switch does for a TAP
# with offload=none.
no_offloads_towards_b() {
    ip netns exec "$VSW_NS_BR" ethtool -K pb tso off gso off tx off >/dev/null 2>&1
}
# The same with GRO on B's veth (off by default), so B's kernel merges the
# segments before its TCP, as it does behind the switch's TAP with its
# default NAPI receive: the like-for-like peer of row 3.
no_offloads_towards_b_gro_at_b() {
    no_offloads_towards_b
    ip netns exec "$VSW_NS_B" ethtool -K eth0 gro on >/dev/null 2>&1
}

# 1. Kernel bridge, as configured by default; 1b and 1c as above.
read -r kernel kernel_errors < <(through_bridge)
read -r kernel_sw kernel_sw_errors < <(through_bridge no_offloads_towards_b)
read -r kernel_gro kernel_gro_errors < <(through_bridge no_offloads_towards_b_gro_at_b)

# 2 and 3. The switch between two TAPs.
through_switch() {
    local receiver="$1"
    local tap_a="${VSW_PREFIX}ta" tap_b="${VSW_PREFIX}tb"
    vsw_make_ns "$VSW_NS_A"; vsw_make_ns "$VSW_NS_B"
    "$bin" run --tap "$tap_a:offload=tso" --tap "$tap_b:$receiver" \
        --queues "${VSW_QUEUES:-1}" --stats-interval 0 >"/tmp/${VSW_PREFIX}-switch.log" 2>&1 &
    switch_pid=$!
    for _ in $(seq 100); do
        ip link show "$tap_b" >/dev/null 2>&1 && break
        sleep 0.05
    done
    ip link set "$tap_a" netns "$VSW_NS_A"
    ip link set "$tap_b" netns "$VSW_NS_B"
    ip -n "$VSW_NS_A" addr add "$VSW_IP_A/24" dev "$tap_a"
    ip -n "$VSW_NS_B" addr add "$VSW_IP_B/24" dev "$tap_b"
    ip -n "$VSW_NS_A" link set "$tap_a" up
    ip -n "$VSW_NS_B" link set "$tap_b" up
    ip netns exec "$VSW_NS_A" ping -c 1 -W 2 "$VSW_IP_B" >/dev/null
    local rate errors
    rate=$(vsw_iperf "$streams" "$seconds")
    errors=$(vsw_csum_errors "$VSW_NS_B")
    kill -TERM "$switch_pid"; wait "$switch_pid" || true; switch_pid=""
    vsw_cleanup
    echo "$rate $errors"
}
read -r offloaded offloaded_errors < <(through_switch offload=tso)
read -r software software_errors < <(through_switch offload=none)
read -r per_frame per_frame_errors < <(through_switch offload=none:gro=off)

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
printf '%-44s %8s %8s %12s\n' "path (iperf3 -P $streams, ${seconds}s)" "Gbit/s" "ratio" "csum errors"
printf '%-44s %8s %8s %12s\n' "Linux bridge over veth" "$kernel" "1.00" "$kernel_errors"
printf '%-44s %8s %8s %12s\n' "vswitch over TAP, offloads both sides" "$offloaded" "$(ratio "$offloaded" "$kernel")" "$offloaded_errors"
printf '%-44s %8s %8s %12s\n' "Linux bridge, port to B without offloads" "$kernel_sw" "$(ratio "$kernel_sw" "$kernel")" "$kernel_sw_errors"
printf '%-44s %8s %8s %12s\n' "  the same, GRO on B's veth" "$kernel_gro" "$(ratio "$kernel_gro" "$kernel")" "$kernel_gro_errors"
printf '%-44s %8s %8s %12s\n' "vswitch over TAP, receiver offload=none" "$software" "$(ratio "$software" "$kernel")" "$software_errors"
printf '%-44s %8s %8s %12s\n' "  the same, receiver TAP gro=off" "$per_frame" "$(ratio "$per_frame" "$kernel")" "$per_frame_errors"
echo "software segmentation, vswitch vs kernel: $(ratio "$software" "$kernel_sw") (gro=off: $(ratio "$per_frame" "$kernel_sw")); both receivers with GRO: $(ratio "$software" "$kernel_gro")"
