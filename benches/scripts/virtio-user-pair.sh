#!/usr/bin/env bash
# The vhost-user backend without a VM: two dpdk-testpmd processes attach
# with DPDK's virtio PMD (net_virtio_user, --no-huge), one sending frames
# of LEN bytes (txonly), the other only receiving (rxonly). Between them,
# in turn and in the same run:
#   vswitch  `vswitch run --vhost-user A --vhost-user B --workers 1`
#   testpmd  DPDK's own vhost PMD: testpmd with two net_vhost ports in io
#            forwarding, its forwarding lcore on CPU 0
# The frontends' forwarding lcores share CPU 1, so the switch in the middle
# has CPU 0 to itself in both cases (the vswitch threads are not pinned and
# may use CPU 1 too). What the receiver takes per second is the figure: the
# sender offers more than either peer passes, and the rest is dropped.
#
# Usage: benches/scripts/virtio-user-pair.sh [--seconds N] [--len BYTES]
#            [--binary PATH]
# Prints one RESULT line per peer (the receiver's packets per second, the
# median of its per-second figures, and Gbit/s) and the ratio. Needs
# dpdk-testpmd (scripts/guest/install-deps.sh) and, for /var/run/dpdk, root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
seconds=8 len=1514 binary=""
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --len) len=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "virtio-user-pair: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v dpdk-testpmd >/dev/null || {
    echo "virtio-user-pair: dpdk-testpmd missing (scripts/guest/install-deps.sh)" >&2
    exit 2
}
if [ -z "$binary" ]; then
    (cd "$repo" && cargo build --release -q -p vswitch)
    binary=$repo/target/release/vswitch
fi

tag=$$
work=$(mktemp -d)
pids=()
prefixes=()
# teardown: stops what runs and removes the work and DPDK run directories.
teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for prefix in "${prefixes[@]}"; do rm -rf "/var/run/dpdk/$prefix"; done
    pids=()
    prefixes=()
}
trap 'teardown; rm -rf "$work"' EXIT

# testpmd NAME MAIN ARGS...: one testpmd on CPUs 0 and 1 in the
# background, its main lcore on CPU MAIN (it forwards on the other), its
# output in $work/NAME.log. A stats period keeps it running without a
# terminal.
testpmd() {
    local name=$1 main=$2
    shift 2
    local prefix=vup-$name-$tag
    prefixes+=("$prefix")
    dpdk-testpmd -l 0-1 --main-lcore "$main" --no-huge -m 512 --no-pci \
        --file-prefix "$prefix" "$@" \
        --total-num-mbufs=16384 --nb-cores=1 --stats-period 1 -a \
        </dev/null >"$work/$name.log" 2>&1 &
    pids+=($!)
}

wait_for_socket() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "virtio-user-pair: $1 never appeared" >&2
    exit 1
}

# run PEER: the receiver's median packets per second into $work/PEER.pps.
# Run in this shell, not in $(...), so that the EXIT trap sees what it
# starts.
run() {
    local peer=$1 dir=$work/$1
    mkdir -p "$dir"
    case $peer in
    vswitch)
        "$binary" run --vhost-user "$dir/a.sock" --vhost-user "$dir/b.sock" --workers 1 \
            --no-ctl --stats-interval 0 >"$work/vswitch.log" 2>&1 &
        pids+=($!)
        ;;
    testpmd)
        # The forwarding lcore on CPU 0, the main one on CPU 1.
        testpmd vhost 1 \
            --vdev "net_vhost0,iface=$dir/a.sock,queues=1" \
            --vdev "net_vhost1,iface=$dir/b.sock,queues=1" -- --forward-mode=io
        ;;
    esac
    wait_for_socket "$dir/a.sock"
    wait_for_socket "$dir/b.sock"
    testpmd rx 0 --vdev "net_virtio_user1,path=$dir/b.sock,queues=1" -- \
        --forward-mode=rxonly
    sleep 2
    testpmd tx 0 --vdev "net_virtio_user0,path=$dir/a.sock,queues=1" -- \
        --forward-mode=txonly "--txpkts=$len"
    sleep "$seconds"
    # The per-second figures after the first two, median.
    grep -o 'Rx-pps: *[0-9]*' "$work/rx.log" | awk '{print $2}' | tail -n +3 \
        | sort -n | awk '{v[NR]=$1} END {if (NR == 0) print 0; else print v[int((NR + 1) / 2)]}' \
        >"$work/$peer.pps"
    teardown
}

declare -A pps
for peer in vswitch testpmd; do
    run "$peer"
    pps[$peer]=$(cat "$work/$peer.pps")
    gbps=$(awk -v p="${pps[$peer]}" -v l="$len" 'BEGIN {printf "%.2f", p * l * 8 / 1e9}')
    echo "RESULT peer=$peer len=$len rx_pps=${pps[$peer]} gbps=$gbps"
done
awk -v a="${pps[vswitch]}" -v b="${pps[testpmd]}" \
    'BEGIN {if (b > 0) printf "ratio vswitch/testpmd: %.2f\n", a / b; else print "ratio: testpmd passed nothing"}'
