#!/usr/bin/env bash
# Two hosts on one machine: host A and host B are network namespaces joined
# by a veth pair that is the wire (MTU 1500, and on both ends tso, gso, gro
# and tx checksumming off: a NIC without offloads). Each host has a guest
# (another namespace) behind it. iperf3 -P STREAMS runs from guest A to
# guest B, and the receiving kernel verifies every TCP checksum.
#
# Topologies, each in its own fresh set of namespaces, in the same run:
#   vswitch  each host runs `vswitch run --uplink WIRE --tap GUEST`; the
#            guest's TAP carries TSO frames, so host A's switch cuts them
#            to the wire's MTU and checksums them in software
#   bridge   each host runs a Linux bridge over the wire and a veth to its
#            guest (the kernel's software GSO does the same cutting)
#   qemu     as vswitch, but each guest is a Linux VM under QEMU (TCG)
#            attached with `--vhost-user`: guest A's virtio-net sends TSO
#            frames, host B's switch merges the wire's segments for guest
#            B, whose kernel verifies the checksums (not part of "both":
#            under TCG the guests, not the switches, set the pace)
#
# Usage: benches/scripts/two-hosts.sh [--seconds N] [--streams N]
#            [--topology vswitch|bridge|both|qemu] [--workers N] [--binary PATH]
#            [--uplink-offload auto|none|csum|tso]
# --uplink-offload is the switches' uplink mode (default auto: on this wire
# the switch cuts and checksums every frame itself; tso hands the kernel
# whole frames and its GSO beneath the socket cuts them, as the bridge's).
# Prints one RESULT line per topology (key=value) and the ratio. Needs
# root, iproute2, ethtool, iperf3, nstat; qemu also needs QEMU and the
# guest kernel (scripts/guest/install-deps.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
seconds=5 streams=16 topology=both workers=1 binary="" uplink_offload=auto
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --topology) topology=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --uplink-offload) uplink_offload=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "two-hosts: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "two-hosts: needs root (network namespaces)" >&2; exit 2; }
for tool in ip ethtool iperf3 nstat; do
    command -v "$tool" >/dev/null || { echo "two-hosts: $tool missing (.ci/install-deps)" >&2; exit 2; }
done
if [ -z "$binary" ] && [ "$topology" != bridge ]; then
    (cd "$repo" && cargo build --release -q -p vswitch)
    binary=$repo/target/release/vswitch
fi

tag=$$
work=$(mktemp -d)
namespaces=()
pids=()
# teardown: stops the switches and deletes the namespaces made so far.
teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    pids=()
    namespaces=()
}
trap 'teardown; rm -rf "$work"' EXIT

netns() {
    ip netns add "$1"
    namespaces+=("$1")
    ip -n "$1" link set lo up
}

# user_system_ticks PID...: the processes' user and system clock ticks so
# far, as "USER SYSTEM".
user_system_ticks() {
    local user=0 system=0 pid fields
    for pid in "$@"; do
        read -r -a fields <"/proc/$pid/stat"
        user=$((user + fields[13])) system=$((system + fields[14]))
    done
    echo "$user $system"
}

# seconds_of TICKS: clock ticks as seconds, two decimals.
seconds_of() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }

# system_ticks: every CPU's busy ticks (all but idle and iowait).
system_ticks() {
    local fields
    read -r -a fields </proc/stat
    # cpu user nice system idle iowait irq softirq steal ...
    echo $((fields[1] + fields[2] + fields[3] + fields[6] + fields[7] + fields[8]))
}

wire() {
    local a=$1 b=$2
    ip link add wire-a netns "$a" type veth peer name wire-b netns "$b"
    local ns dev
    for ns_dev in "$a:wire-a" "$b:wire-b"; do
        ns=${ns_dev%%:*} dev=${ns_dev#*:}
        ip -n "$ns" link set "$dev" mtu 1500 up
        ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off tx off >/dev/null 2>&1
    done
}

guest_address() {
    local ns=$1 dev=$2 addr=$3
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
    ip -n "$ns" addr add "$addr/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
}

wait_for_socket() {
    local _
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "two-hosts: $1 did not appear" >&2
    return 1
}

# ctl_stats SOCKET: the switch's counters as JSON.
ctl_stats() { "$binary" ctl --ctl "$1" --json stats; }

run_iperf() {
    local client=$1 server=$2 out=$3
    ip netns exec "$server" iperf3 -s -1 -D -p 5201
    sleep 0.5
    ip netns exec "$client" iperf3 -c 10.99.0.2 -p 5201 -P "$streams" -t "$seconds" -J >"$out"
}

gbps() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$1"
}

csum_errors() {
    ip netns exec "$1" nstat -az TcpInCsumErrors | awk '/TcpInCsumErrors/ {print $2}'
}

# counters A.json B.json [A-BEFORE.json]: the two switches' software work
# and drops, from their `ctl --json stats`; with A's stats from before the
# transfer, also what A dropped during it and before it (while the TAPs
# moved to their namespaces, down, frames toward them are link-down drops).
counters() {
    python3 - "$@" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
a0 = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None
def total(s, key): return sum(p[key] for p in s["ports"])
def drops(s): return sum(sum(p["drops"].values()) for p in s["ports"])
def reasons(s):
    seen = {}
    for p in s["ports"]:
        for reason, n in p["drops"].items():
            seen[reason] = seen.get(reason, 0) + n
    return ",".join("%s:%d" % kv for kv in sorted(seen.items())) or "-"
def unaccounted(s):
    # Every frame a port sent the switch was forwarded to the other port
    # (one other port: floods too) or dropped on the way in; every frame
    # forwarded to a port left it (cut into segments, merged with others)
    # or was dropped on the way out. What does not balance, both ways.
    ports = s["ports"]
    if len(ports) != 2:
        return -1
    off = 0
    for src, dst in ((ports[0], ports[1]), (ports[1], ports[0])):
        forwarded = src["rx_frames"] - src.get("drops_ingress", 0)
        left = (dst["tx_frames"] + dst.get("drops_egress", 0)
                + dst.get("sw_segmented_frames", 0) - dst["sw_segments"] + dst["gro_merges"])
        off += abs(forwarded - left)
    return off
print("a_sw_segments=%d a_sw_checksums=%d b_gro_merges=%d a_drops=%d b_drops=%d a_drop_reasons=%s b_drop_reasons=%s a_unaccounted=%d b_unaccounted=%d" % (
    total(a, "sw_segments"), total(a, "sw_checksums"), total(b, "gro_merges"), drops(a), drops(b),
    reasons(a), reasons(b), unaccounted(a), unaccounted(b)), end="")
if a0 is not None:
    print(" a_transfer_drops=%d a_setup_drop_reasons=%s" % (drops(a) - drops(a0), reasons(a0)), end="")
print()
PY
}

run_vswitch() {
    local ha=vsw-ha-$tag hb=vsw-hb-$tag ga=vsw-ga-$tag gb=vsw-gb-$tag
    netns "$ha"; netns "$hb"; netns "$ga"; netns "$gb"
    wire "$ha" "$hb"
    ip netns exec "$ha" "$binary" run --uplink "wire-a:offload=$uplink_offload" --tap tap-a --workers "$workers" \
        --ctl "$work/a.ctl" --stats-interval 0 >"$work/a.log" 2>&1 &
    pids+=($!); local pid_a=$!
    ip netns exec "$hb" "$binary" run --uplink "wire-b:offload=$uplink_offload" --tap tap-b --workers "$workers" \
        --ctl "$work/b.ctl" --stats-interval 0 >"$work/b.log" 2>&1 &
    pids+=($!); local pid_b=$!
    wait_for_socket "$work/a.ctl"; wait_for_socket "$work/b.ctl"
    ip -n "$ha" link set tap-a netns "$ga"
    ip -n "$hb" link set tap-b netns "$gb"
    guest_address "$ga" tap-a 10.99.0.1
    guest_address "$gb" tap-b 10.99.0.2
    ip netns exec "$ga" ping -c 1 -W 5 10.99.0.2 >/dev/null
    ip netns exec "$gb" nstat -n
    local user0 kernel0 sys0 user1 kernel1 sys1
    ctl_stats "$work/a.ctl" >"$work/a0.json"
    read -r user0 kernel0 < <(user_system_ticks "$pid_a" "$pid_b"); sys0=$(system_ticks)
    run_iperf "$ga" "$gb" "$work/vswitch.json"
    read -r user1 kernel1 < <(user_system_ticks "$pid_a" "$pid_b"); sys1=$(system_ticks)
    ctl_stats "$work/a.ctl" >"$work/a.json"
    ctl_stats "$work/b.ctl" >"$work/b.json"
    counters "$work/a.json" "$work/b.json" "$work/a0.json" >"$work/counters"
    # The switches' CPU split: their own code (user) and the kernel's work
    # in their system calls (system: copies to and from the TAP and the
    # packet socket, the kernel's GSO under the socket).
    echo "RESULT topology=vswitch gbps=$(gbps "$work/vswitch.json") csum_errors=$(csum_errors "$gb")" \
        "$(cat "$work/counters") switch_cpu_s=$(seconds_of $((user1 - user0 + kernel1 - kernel0)))" \
        "switch_user_cpu_s=$(seconds_of $((user1 - user0)))" \
        "switch_system_cpu_s=$(seconds_of $((kernel1 - kernel0)))" \
        "system_cpu_s=$(seconds_of $((sys1 - sys0)))"
}

# section CONSOLE NAME: the text between a guest's VSW-NAME-BEGIN and
# VSW-NAME-END markers.
section() { sed -n "/VSW-$2-BEGIN/,/VSW-$2-END/{/VSW-$2-/d;p}" "$1"; }

# wait_console FILE MARKER SECONDS PID: waits for MARKER in a guest's
# console, or for its QEMU to exit, or for the time to run out.
wait_console() {
    local file=$1 marker=$2 limit=$3 pid=$4 _
    for _ in $(seq $((limit * 10))); do
        grep -q "$marker" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "$marker" "$file" 2>/dev/null && return 0
    echo "two-hosts: no $marker from $file; console:" >&2
    cat "$file" >&2 || true
    return 1
}

run_qemu() {
    local ha=vm-ha-$tag hb=vm-hb-$tag
    bash "$repo/scripts/guest/build-image.sh" "$repo/target/guest-image" >/dev/null
    netns "$ha"; netns "$hb"
    wire "$ha" "$hb"
    ip netns exec "$ha" "$binary" run --uplink wire-a --vhost-user "$work/a.sock" \
        --workers "$workers" --ctl "$work/a.ctl" --stats-interval 0 >"$work/a.log" 2>&1 &
    pids+=($!); local pid_a=$!
    ip netns exec "$hb" "$binary" run --uplink wire-b --vhost-user "$work/b.sock" \
        --workers "$workers" --ctl "$work/b.ctl" --stats-interval 0 >"$work/b.log" 2>&1 &
    pids+=($!); local pid_b=$!
    wait_for_socket "$work/a.ctl"; wait_for_socket "$work/b.ctl"
    local guest=$repo/scripts/guest/run-guest.sh
    # The guests need no network namespace: their only NIC is the
    # vhost-user socket, in this script's directory.
    bash "$guest" --socket "$work/b.sock" --role server --ip 10.99.0.2/24 \
        --mac 52:54:00:99:00:02 --log "$work/guest-b.log" 2>"$work/guest-b.err" &
    pids+=($!); local vm_b=$!
    wait_console "$work/guest-b.log" VSW-READY 180 "$vm_b"
    local user0 kernel0 sys0 user1 kernel1 sys1
    read -r user0 kernel0 < <(user_system_ticks "$pid_a" "$pid_b"); sys0=$(system_ticks)
    bash "$guest" --socket "$work/a.sock" --role client --ip 10.99.0.1/24 --peer 10.99.0.2 \
        --mac 52:54:00:99:00:01 --args "-P $streams -t $seconds" \
        --log "$work/guest-a.log" 2>"$work/guest-a.err" &
    pids+=($!); local vm_a=$!
    wait_console "$work/guest-a.log" VSW-EXIT $((seconds + 240)) "$vm_a"
    wait_console "$work/guest-b.log" VSW-CSUM-ERRORS 60 "$vm_b"
    read -r user1 kernel1 < <(user_system_ticks "$pid_a" "$pid_b"); sys1=$(system_ticks)
    section "$work/guest-a.log" RESULT >"$work/qemu.json"
    ctl_stats "$work/a.ctl" >"$work/a.json"
    ctl_stats "$work/b.ctl" >"$work/b.json"
    counters "$work/a.json" "$work/b.json" >"$work/counters"
    local csum
    csum=$(sed -n 's/.*VSW-CSUM-ERRORS tcp=\([0-9]*\).*/\1/p' "$work/guest-b.log")
    echo "RESULT topology=qemu gbps=$(gbps "$work/qemu.json") csum_errors=${csum:-unknown}" \
        "$(cat "$work/counters") switch_cpu_s=$(seconds_of $((user1 - user0 + kernel1 - kernel0)))" \
        "system_cpu_s=$(seconds_of $((sys1 - sys0)))"
}

run_bridge() {
    local ha=br-ha-$tag hb=br-hb-$tag ga=br-ga-$tag gb=br-gb-$tag
    netns "$ha"; netns "$hb"; netns "$ga"; netns "$gb"
    wire "$ha" "$hb"
    local host guest side
    for side in a b; do
        if [ "$side" = a ]; then host=$ha guest=$ga; else host=$hb guest=$gb; fi
        ip -n "$host" link add br0 type bridge
        ip -n "$host" link set br0 up
        ip -n "$host" link set "wire-$side" master br0
        ip -n "$host" link add "port-$side" type veth peer name "eth-$side" netns "$guest"
        ip -n "$host" link set "port-$side" master br0 up
    done
    guest_address "$ga" eth-a 10.99.0.1
    guest_address "$gb" eth-b 10.99.0.2
    ip netns exec "$ga" ping -c 1 -W 5 10.99.0.2 >/dev/null
    ip netns exec "$gb" nstat -n
    local sys0 sys1
    sys0=$(system_ticks)
    run_iperf "$ga" "$gb" "$work/bridge.json"
    sys1=$(system_ticks)
    echo "RESULT topology=bridge gbps=$(gbps "$work/bridge.json") csum_errors=$(csum_errors "$gb")" \
        "system_cpu_s=$(seconds_of $((sys1 - sys0)))"
}

case $topology in
vswitch | bridge | both | qemu) ;;
*) echo "two-hosts: --topology must be vswitch, bridge, both or qemu" >&2; exit 2 ;;
esac
if [ "$topology" = qemu ]; then
    command -v qemu-system-x86_64 >/dev/null ||
        { echo "two-hosts: qemu-system-x86_64 missing (scripts/guest/install-deps.sh)" >&2; exit 2; }
fi
: >"$work/results"
if [ "$topology" = qemu ]; then
    run_qemu >>"$work/results"
    teardown
fi
if [ "$topology" = vswitch ] || [ "$topology" = both ]; then
    run_vswitch >>"$work/results"
    teardown
fi
if [ "$topology" = bridge ] || [ "$topology" = both ]; then
    run_bridge >>"$work/results"
    teardown
fi
cat "$work/results"
v=$(sed -n 's/.*topology=vswitch gbps=\([0-9.]*\).*/\1/p' "$work/results")
b=$(sed -n 's/.*topology=bridge gbps=\([0-9.]*\).*/\1/p' "$work/results")
if [ -n "$v" ] && [ -n "$b" ]; then
    python3 -c 'import sys; v,b=map(float,sys.argv[1:]); print("RATIO vswitch/bridge=%.2f" % (v/b if b else 0))' "$v" "$b"
    # What the switches' own code costs the run: were it free, and the CPU
    # it used went to the rest (iperf3, the guests' TCP, the kernel's work
    # in the switches' system calls) at that rest's cost per bit, the run
    # would reach at most this. Below the bridges, the gap is in the
    # kernel work a userspace switch's system calls cause, not its code.
    sed -n 's/.*topology=vswitch gbps=\([0-9.]*\).* switch_user_cpu_s=\([0-9.]*\).* system_cpu_s=\([0-9.]*\).*/\1 \2 \3/p' \
        "$work/results" | python3 -c '
import sys
v, user, total = map(float, sys.stdin.read().split())
b = float(sys.argv[1])
bound = v * total / (total - user) if total > user else 0
print("BOUND switch code free: at most %.2f Gbit/s (%.2fx the bridges); its own code used %.0f%% of the busy CPU"
      % (bound, bound / b if b else 0, 100 * user / total if total else 0))' "$b"
fi
