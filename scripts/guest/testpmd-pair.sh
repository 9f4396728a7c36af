#!/usr/bin/env bash
# End-to-end proof of the guest image against a vhost-user peer that exists:
# DPDK testpmd with two vhost PMD ports, forwarding port 0 <-> port 1 ("io"
# mode: frames pass unchanged, offload metadata and all). Guest A (iperf3
# server) sits on port 0, guest B (iperf3 client) on port 1.
#
# Prints one line:
#   RESULT gbps=G retransmits=R server_csum_errors=N client_csum_errors=M ...
# and exits non-zero if the transfer failed or either guest counted a TCP
# checksum error.
#
# Usage: scripts/guest/testpmd-pair.sh [options]
#   --queues N       queue pairs per port and guest vCPUs (default 1)
#   --args "ARGS"    iperf3 client arguments (default "-P 16 -t 5")
#   --fwd io|csum    testpmd forwarding: io (default) passes frames and their
#                    offload metadata unchanged, so a NEEDS_CSUM or TSO frame
#                    reaches the receiver as the sender gave it, and the
#                    receiving kernel trusts the partial checksum; csum has
#                    testpmd compute every IPv4/TCP/UDP checksum in software
#                    and drop the metadata, so the receiver verifies each one
#                    (a TSO frame then arrives whole, up to 64 KiB, unsegmented)
#   --tso 0|1        vhost PMD tso devarg: 1 (default) lets it offer TSO and
#                    checksum offload to the guests; 0 hides TSO
#   --mem SIZE       memory of each guest (default 512M)
#   --device-opts S  more virtio-net-pci properties for both guests
#   --rx-verify      both guests refuse partial checksums and TSO on receive
#                    (guest_csum=off and guest_tso*/ecn off), so the receiving
#                    kernels verify every checksum themselves; without it they
#                    trust the NEEDS_CSUM frames the peer passes through
#   --append S       more kernel command line for both guests
#   --vswitch PATH   run this vswitch binary (`vswitch run --vhost-user`, one
#                    worker) as the switch instead of testpmd, to compare the
#                    two on the same guests
#   --qemu-listens   QEMU listens on the sockets and testpmd connects
#                    (default: testpmd listens, QEMU connects)
#   --timeout S      give up after S seconds (default 240)
#   --image DIR      guest image (default target/guest-image)
#   --workdir DIR    sockets and logs (default: a fresh temporary directory,
#                    removed at exit unless --keep)
#   --keep           keep the work directory (logs: testpmd.log, server.log,
#                    client.log)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "testpmd-pair: $*" >&2; exit 2; }

vswitch="" queues=1 iperf_args="-P 16 -t 5" fwd=io tso=1 mem=512M dev_opts="" append="" timeout_s=240
image=$repo/target/guest-image workdir="" keep=0 rx_verify=0 qemu_listens=0
while [ $# -gt 0 ]; do
    case $1 in
    --queues) queues=$2; shift 2 ;;
    --args) iperf_args=$2; shift 2 ;;
    --fwd) fwd=$2; shift 2 ;;
    --tso) tso=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --device-opts) dev_opts=$2; shift 2 ;;
    --rx-verify) rx_verify=1; shift ;;
    --qemu-listens) qemu_listens=1; shift ;;
    --vswitch) vswitch=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
if [ "$rx_verify" -eq 1 ]; then
    # GUEST_TSO4/6 and GUEST_ECN require GUEST_CSUM, so they go too.
    dev_opts="guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off${dev_opts:+,$dev_opts}"
fi
if [ -n "$vswitch" ]; then
    [ -x "$vswitch" ] || die "--vswitch $vswitch is not an executable"
    [ "$fwd" = io ] || die "--fwd is testpmd's; the vswitch forwards by learned address"
else
    command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd missing: run scripts/guest/install-deps.sh"
fi
command -v jq >/dev/null || die "jq missing: run scripts/guest/install-deps.sh"
[ -f "$image/initramfs.cpio.gz" ] || die "no image in $image: run scripts/guest/build-image.sh"

if [ -z "$workdir" ]; then
    workdir=$(mktemp -d /tmp/vsw-testpmd.XXXXXX)
else
    mkdir -p "$workdir"
    keep=1
    # A previous run's logs would be read as this run's (VSW-READY at once).
    rm -f "$workdir"/{server,client}.{log,log.qemu,json} "$workdir"/testpmd.log "$workdir"/port{0,1}.sock
fi
prefix=vsw-testpmd-$$
server_mac=52:54:00:00:00:01
client_mac=52:54:00:00:00:02
pids=()
cleanup() {
    local rc=$? p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "/var/run/dpdk/$prefix"
    if [ "$keep" -eq 1 ]; then
        echo "testpmd-pair: logs in $workdir" >&2
    else
        rm -rf "$workdir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# testpmd, non-interactive. Notes for DPDK 22.11:
# - --no-huge needs --file-prefix (not --in-memory, which it rejects with
#   --no-huge's implied --legacy-mem); a per-run prefix keeps parallel runs apart.
# - -l 0,1: lcore 0 is the main thread (prints stats, sleeps), lcore 1 the one
#   forwarding thread that polls every queue of both ports (frugal on 2 cores).
# - --rxq/--txq: testpmd uses one queue per port unless told; queues=N in the
#   vdev only sets the maximum.
# - --stats-period: keeps testpmd running with stdin not a terminal (without
#   it, it waits for Enter and exits at EOF) and logs the port counters.
# - The vhost PMD listens on the sockets (it is the vhost-user server), so the
#   guests connect as clients.
# - csum forwarding rewrites the Ethernet addresses (source: the testpmd
#   port, destination: --eth-peer of the egress port), so each egress port's
#   peer is the guest behind it. Its checksum settings need the ports
#   stopped; --cmdline-file runs them before forwarding starts.
fwd_args=(--forward-mode="$fwd" --auto-start)
case $fwd in
io) ;;
csum)
    cmds=$workdir/testpmd-cmds
    {
        echo "port stop all"
        for port in 0 1; do
            for proto in ip tcp udp; do echo "csum set $proto sw $port"; done
        done
        echo "port start all"
    } >"$cmds"
    fwd_args+=(--cmdline-file="$cmds" "--eth-peer=0,$server_mac" "--eth-peer=1,$client_mac")
    ;;
*) die "--fwd must be io or csum" ;;
esac
# - With --qemu-listens, QEMU owns the sockets (server=on,wait=off) and the
#   vhost PMD connects to them (client=1) and reconnects when a guest goes.
vdev_opts="queues=$queues,tso=$tso"
[ "$qemu_listens" -eq 0 ] || vdev_opts+=",client=1"
if [ -n "$vswitch" ]; then
    # One worker, as testpmd forwards on one thread.
    vsw_opts=":queues=$queues"
    [ "$qemu_listens" -eq 0 ] || vsw_opts+=":client"
    "$vswitch" run --vhost-user "$workdir/port0.sock$vsw_opts" \
        --vhost-user "$workdir/port1.sock$vsw_opts" --workers 1 --no-ctl \
        --stats-interval 0 </dev/null >"$workdir/testpmd.log" 2>&1 &
else
    dpdk-testpmd -l 0,1 --no-huge --no-pci -m 1024 --file-prefix "$prefix" \
        --vdev "net_vhost0,iface=$workdir/port0.sock,$vdev_opts" \
        --vdev "net_vhost1,iface=$workdir/port1.sock,$vdev_opts" \
        -- "${fwd_args[@]}" --rxq="$queues" --txq="$queues" \
        --nb-cores=1 --stats-period 2 </dev/null >"$workdir/testpmd.log" 2>&1 &
fi
pids+=($!)
if [ "$qemu_listens" -eq 0 ]; then
    for _ in $(seq 100); do
        [ -S "$workdir/port0.sock" ] && [ -S "$workdir/port1.sock" ] && break
        kill -0 "${pids[0]}" 2>/dev/null || { cat "$workdir/testpmd.log" >&2; die "testpmd exited"; }
        sleep 0.1
    done
    [ -S "$workdir/port1.sock" ] || die "testpmd made no sockets"
    sock_mode=client
else
    sock_mode=server
fi

start=$(date +%s.%N)
guest() {
    local role=$1 sock=$2 mac=$3 ip=$4 log=$5
    # exec: this subshell becomes timeout(1), which passes a TERM on to QEMU.
    exec timeout "$timeout_s" "$here/run-guest.sh" --socket "$sock" --socket-mode "$sock_mode" --role "$role" \
        --queues "$queues" --mac "$mac" --ip "$ip" --peer 10.0.0.1 --mem "$mem" \
        --args "$iperf_args" --image "$image" --log "$log" \
        ${dev_opts:+--device-opts "$dev_opts"} ${append:+--append "$append"} \
        >"$log.qemu" 2>&1
}
guest server "$workdir/port0.sock" "$server_mac" 10.0.0.1/24 "$workdir/server.log" &
server_pid=$!
pids+=("$server_pid")
guest client "$workdir/port1.sock" "$client_mac" 10.0.0.2/24 "$workdir/client.log" &
client_pid=$!
pids+=("$client_pid")

# Boot-to-ready: when the server's console says VSW-READY.
ready=""
while kill -0 "$server_pid" 2>/dev/null; do
    if grep -q '^VSW-READY' "$workdir/server.log" 2>/dev/null; then
        ready=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        break
    fi
    sleep 0.2
done
client_rc=0
wait "$client_pid" || client_rc=$?
server_rc=0
wait "$server_pid" || server_rc=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# section LOG BEGIN END: the lines between two markers, without CRs.
section() { tr -d '\r' <"$1" | awk -v b="$2" -v e="$3" '$0 ~ "^"e { p = 0 } p { print } $0 ~ "^"b { p = 1 }'; }
# csum LOG PROTO: the guest's InCsumErrors for PROTO (tcp or udp).
csum() { tr -d '\r' <"$1" | sed -n "s/^VSW-CSUM-ERRORS .*$2=\\([0-9]*\\).*/\\1/p"; }
# exit_rc LOG: iperf3's exit status in the guest.
exit_rc() { tr -d '\r' <"$1" | sed -n 's/^VSW-EXIT rc=\([0-9]*\).*/\1/p'; }

# feature_names BITS: the virtio-net feature names of a 0/1 string (bit 0
# first) as the guest's /sys/bus/virtio/devices/*/features shows it.
feature_names() {
    local -A name=(
        [0]=CSUM [1]=GUEST_CSUM [2]=CTRL_GUEST_OFFLOADS [3]=MTU [5]=MAC [6]=GSO
        [7]=GUEST_TSO4 [8]=GUEST_TSO6 [9]=GUEST_ECN [10]=GUEST_UFO [11]=HOST_TSO4
        [12]=HOST_TSO6 [13]=HOST_ECN [14]=HOST_UFO [15]=MRG_RXBUF [16]=STATUS
        [17]=CTRL_VQ [18]=CTRL_RX [19]=CTRL_VLAN [20]=CTRL_RX_EXTRA
        [21]=GUEST_ANNOUNCE [22]=MQ [23]=CTRL_MAC_ADDR [28]=RING_INDIRECT_DESC
        [29]=RING_EVENT_IDX [32]=VERSION_1 [33]=ACCESS_PLATFORM [34]=RING_PACKED
        [35]=IN_ORDER [52]=VQ_NOTF_COAL [53]=NOTF_COAL [54]=GUEST_USO4
        [55]=GUEST_USO6 [56]=HOST_USO [57]=HASH_REPORT [59]=GUEST_HDRLEN [60]=RSS
        [61]=RSC_EXT [62]=STANDBY [63]=SPEED_DUPLEX
    )
    local bits=$1 i out=""
    for ((i = 0; i < ${#bits}; i++)); do
        [ "${bits:i:1}" = 1 ] && out+=" ${name[$i]:-bit$i}"
    done
    echo "${out# }"
}
for r in server client; do
    feats=$(section "$workdir/$r.log" VSW-FEATURES-BEGIN VSW-FEATURES-END)
    bits=$(sed -n 's/^virtio-features //p' <<<"$feats")
    echo "$r guest virtio features: $(feature_names "$bits")"
    echo "$r guest ethtool: $(grep -E '^(rx-checksumming|tx-checksumming|tcp-segmentation-offload|generic-receive-offload|rx-gro-hw):' <<<"$feats" | sed 's/: /=/; s/ \[fixed\]//' | tr '\n' ' ')queues=$(grep 'Combined:' <<<"$feats" | tail -n1 | tr -dc 0-9)"
done

section "$workdir/client.log" VSW-RESULT-BEGIN VSW-RESULT-END >"$workdir/client.json"
section "$workdir/server.log" VSW-RESULT-BEGIN VSW-RESULT-END >"$workdir/server.json"
fail=""
if ! jq -e '.end.sum_received.bits_per_second' "$workdir/client.json" >/dev/null 2>&1; then
    fail="no iperf3 result from the client"
    err=$(jq -r '.error // empty' "$workdir/client.json" 2>/dev/null || true)
    [ -z "$err" ] || fail+=" ($err)"
fi
s_csum=$(csum "$workdir/server.log" tcp)
c_csum=$(csum "$workdir/client.log" tcp)
s_exit=$(exit_rc "$workdir/server.log")
c_exit=$(exit_rc "$workdir/client.log")
[ "${c_exit:-x}" = 0 ] || fail+="${fail:+; }client iperf3 rc=${c_exit:-none} (qemu rc=$client_rc)"
[ "${s_exit:-x}" = 0 ] || fail+="${fail:+; }server iperf3 rc=${s_exit:-none} (qemu rc=$server_rc)"
[ "${s_csum:-x}" = 0 ] || fail+="${fail:+; }server InCsumErrors=${s_csum:-none}"
[ "${c_csum:-x}" = 0 ] || fail+="${fail:+; }client InCsumErrors=${c_csum:-none}"

gbps=$(jq -r '(.end.sum_received.bits_per_second // 0) / 1e9 | . * 100 | round / 100' "$workdir/client.json" 2>/dev/null || echo 0)
retr=$(jq -r '.end.sum_sent.retransmits // "none"' "$workdir/client.json" 2>/dev/null || echo none)
streams=$(jq -r '.start.test_start.num_streams // "?"' "$workdir/client.json" 2>/dev/null || echo "?")
switch_name=testpmd
[ -z "$vswitch" ] || switch_name=vswitch
echo "RESULT switch=$switch_name gbps=$gbps retransmits=$retr server_csum_errors=${s_csum:-none} client_csum_errors=${c_csum:-none} streams=$streams queues=$queues fwd=$fwd tso=$tso rx_verify=$rx_verify boot_to_ready_s=${ready:-none} total_s=$elapsed"
if [ -n "$fail" ]; then
    echo "testpmd-pair: FAILED: $fail" >&2
    tail -n 20 "$workdir/client.log" "$workdir/server.log" >&2 || true
    exit 1
fi
