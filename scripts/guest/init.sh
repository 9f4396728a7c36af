#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test guest: one virtio-net port, one iperf3 run, power off.
#
# Everything it needs comes from the kernel command line (keys are described in
# scripts/guest/README.md):
#   vsw.role=server|client   required
#   vsw.ip=ADDR/PREFIX       eth0's address   (default 10.0.0.1/24 server, 10.0.0.2/24 client)
#   vsw.peer=ADDR            the server, for a client          (default 10.0.0.1)
#   vsw.args="..."           extra iperf3 client arguments     (default "-P 16 -t 5")
#   vsw.port=N               iperf3 port                       (default 5201)
#   vsw.queues=N             ethtool -L eth0 combined N        (default: kernel's choice)
#   vsw.mtu=N                eth0's MTU                        (default: as negotiated)
#   vsw.ethtool="..."        arguments for `ethtool -K eth0`, e.g. "tso off"
#   vsw.wait=SECONDS         how long to wait for the peer     (default 120)
#
# Serial console protocol, each marker at the start of its own line:
#   VSW-BOOT role=R ip=A           init started
#   VSW-FEATURES-BEGIN/END         virtio feature bits ("virtio-features" and a
#                                  0/1 string, bit 0 first, as negotiated),
#                                  ethtool -k and -l, link state
#   VSW-LINK carrier=0|1 uptime=S  eth0's carrier once up (or after vsw.wait)
#   VSW-READY uptime=S             (server) iperf3 listens
#   VSW-RESULT-BEGIN/END           iperf3 -J output (JSON), client and server alike
#   VSW-SNMP-BEGIN/END             the Tcp: and Udp: lines of /proc/net/snmp
#   VSW-CSUM-ERRORS tcp=N udp=N    InCsumErrors after the run
#   VSW-EXIT rc=N                  iperf3's exit status (0 = transfer done)
# then the guest powers off (QEMU runs with -no-reboot and exits).

/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
# Keep kernel messages off the console so the markers and JSON stay clean.
echo 1 >/proc/sys/kernel/printk

# param KEY DEFAULT: the value of vsw.KEY on the kernel command line, with
# surrounding double quotes removed (the kernel keeps them in /proc/cmdline).
param() {
    v=$(sed -n "s/.*\\(^\\| \\)vsw\\.$1=\\(\"[^\"]*\"\\|[^ ]*\\).*/\\2/p" /proc/cmdline)
    v=${v#\"}
    v=${v%\"}
    echo "${v:-$2}"
}

finish() {
    echo "VSW-EXIT rc=$1"
    sync
    poweroff -f
    sleep 5
}

role=$(param role "")
if [ "$role" = client ]; then ip=$(param ip 10.0.0.2/24); else ip=$(param ip 10.0.0.1/24); fi
peer=$(param peer 10.0.0.1)
args=$(param args "-P 16 -t 5")
port=$(param port 5201)
queues=$(param queues "")
mtu=$(param mtu "")
offload=$(param ethtool "")
wait_s=$(param wait 120)
echo "VSW-BOOT role=$role ip=$ip"

# Modules, in dependency order, as build-image.sh listed them.
while read -r ko; do
    [ -n "$ko" ] && insmod "$ko"
done </etc/vsw-modules

n=0
while [ ! -e /sys/class/net/eth0 ]; do
    n=$((n + 1))
    if [ "$n" -gt 100 ]; then
        echo "VSW-ERROR no eth0"
        finish 2
    fi
    sleep 0.1
done

ip link set lo up
[ -n "$queues" ] && ethtool -L eth0 combined "$queues"
[ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
# Word splitting of $offload is wanted: it is a list of ethtool arguments.
# shellcheck disable=SC2086
[ -n "$offload" ] && ethtool -K eth0 $offload
ip addr add "$ip" dev eth0
ip link set eth0 up
# The link comes up when the backend has set up the queues (VIRTIO_NET_F_STATUS);
# wait for it so that the state printed below is the one the test runs with.
n=0
until [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ]; do
    n=$((n + 1))
    if [ "$n" -gt $((wait_s * 10)) ]; then
        echo "VSW-ERROR eth0 has no carrier after ${wait_s}s"
        break
    fi
    sleep 0.1
done
echo "VSW-LINK carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null) uptime=$(cut -d' ' -f1 /proc/uptime)"

echo "VSW-FEATURES-BEGIN"
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device")" = "0x0001" ] && echo "virtio-features $(cat "$d/features")"
done
ethtool -k eth0
ethtool -l eth0
# (busybox ip shows NO-CARRIER next to LOWER_UP; sysfs is the reliable source)
echo "link: carrier=$(cat /sys/class/net/eth0/carrier) operstate=$(cat /sys/class/net/eth0/operstate) mtu=$(cat /sys/class/net/eth0/mtu) mac=$(cat /sys/class/net/eth0/address)"
echo "VSW-FEATURES-END"

csum_errors() {
    # /proc/net/snmp has a header line and a value line per protocol; print
    # the InCsumErrors value of the protocol named in $1.
    awk -v p="$1:" '$1 == p { if (!h) { for (i = 1; i <= NF; i++) if ($i == "InCsumErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

report() {
    echo "VSW-SNMP-BEGIN"
    grep -E '^(Tcp|Udp):' /proc/net/snmp
    echo "VSW-SNMP-END"
    echo "VSW-CSUM-ERRORS tcp=$(csum_errors Tcp) udp=$(csum_errors Udp)"
}

case $role in
server)
    iperf3 -s -1 -J -p "$port" >/tmp/result.json 2>/tmp/iperf3.err &
    pid=$!
    n=0
    until netstat -ltn | grep -q ":$port "; do
        n=$((n + 1))
        if [ "$n" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
            cat /tmp/iperf3.err
            echo "VSW-ERROR iperf3 server did not start"
            finish 3
        fi
        sleep 0.1
    done
    echo "VSW-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
    # The server exits after one test; kill it if no client came in time.
    ( sleep "$wait_s"; kill "$pid" 2>/dev/null ) &
    watchdog=$!
    rc=0
    wait "$pid" || rc=$?
    kill "$watchdog" 2>/dev/null
    ;;
client)
    # The server may still be booting: retry until it answers or time runs out.
    deadline=$(($(date +%s) + wait_s))
    while :; do
        rc=0
        # shellcheck disable=SC2086
        iperf3 -c "$peer" -p "$port" -J --connect-timeout 2000 $args >/tmp/result.json 2>/tmp/iperf3.err || rc=$?
        # iperf3 3.12 with -J exits 0 even when it could not connect; the
        # JSON then has an "error" member.
        [ "$rc" -eq 0 ] && grep -q '"error":' /tmp/result.json && rc=1
        [ "$rc" -eq 0 ] && break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            cat /tmp/iperf3.err
            break
        fi
        sleep 1
    done
    ;;
*)
    echo "VSW-ERROR vsw.role must be server or client, got '$role'"
    finish 4
    ;;
esac

echo "VSW-RESULT-BEGIN"
cat /tmp/result.json
echo "VSW-RESULT-END"
report
finish "$rc"
