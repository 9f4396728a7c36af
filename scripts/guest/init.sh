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
#   vsw.extra_ip=ADDR/PREFIX another address on eth0           (default: none)
#   vsw.hotplug_ip=ADDR/PREFIX  the address of a NIC hot-plugged later (eth1):
#                            a background loop waits for it, sets it up, pings
#                            vsw.hotplug_peer over it and notices it go away;
#                            again for each NIC plugged there (default: no loop)
#   vsw.hotplug_peer=ADDR    what to ping over eth1            (default: no ping)
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
# With vsw.hotplug_ip, whenever they happen (between any of the above):
#   VSW-HOTPLUG-UP dev=eth1 ip=A mac=M carrier=0|1 uptime=S
#                                  eth1 appeared and is up with its address
#                                  (carrier=0 after vsw.wait without one)
#   VSW-HOTPLUG-PING ok|fail dev=eth1 peer=P transmitted=N received=N
#                                  ping -I eth1 -c 3 PEER (ok: a reply came)
#   VSW-HOTPLUG-GONE dev=eth1 uptime=S
#                                  eth1 was removed

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
extra_ip=$(param extra_ip "")
hotplug_ip=$(param hotplug_ip "")
hotplug_peer=$(param hotplug_peer "")
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
[ -n "$extra_ip" ] && ip addr add "$extra_ip" dev eth0
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

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# hotplug_watch DEV: forever, wait for DEV to appear (a NIC hot-plugged
# over QMP; virtio_net is loaded, so it binds at once), give it
# $hotplug_ip, ping $hotplug_peer over it and wait for it to go away.
hotplug_watch() {
    dev=$1
    sys=/sys/class/net/$dev
    while :; do
        until [ -e "$sys" ]; do sleep 0.2; done
        ip addr add "$hotplug_ip" dev "$dev"
        ip link set "$dev" up
        n=0
        until [ "$(cat "$sys/carrier" 2>/dev/null)" = 1 ] || [ ! -e "$sys" ]; do
            n=$((n + 1))
            [ "$n" -gt $((wait_s * 10)) ] && break
            sleep 0.1
        done
        echo "VSW-HOTPLUG-UP dev=$dev ip=$hotplug_ip mac=$(cat "$sys/address" 2>/dev/null) carrier=$(cat "$sys/carrier" 2>/dev/null || echo 0) uptime=$(uptime_s)"
        if [ -n "$hotplug_peer" ] && [ -e "$sys" ]; then
            # Bound to the device (SO_BINDTODEVICE), so the echo requests
            # leave through it whatever the routes say; the deadline bounds
            # the wait when nothing answers.
            out=$(ping -I "$dev" -c 3 -w 30 "$hotplug_peer" 2>&1)
            tx=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
            rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
            if [ "${rx:-0}" -gt 0 ]; then result=ok; else result=fail; echo "$out"; fi
            echo "VSW-HOTPLUG-PING $result dev=$dev peer=$hotplug_peer transmitted=${tx:-0} received=${rx:-0}"
        fi
        while [ -e "$sys" ]; do sleep 0.2; done
        echo "VSW-HOTPLUG-GONE dev=$dev uptime=$(uptime_s)"
    done
}

if [ -n "$hotplug_ip" ]; then
    # Two NICs of one guest: by default Linux answers ARP for any of its
    # addresses on any interface, and names any of them as the sender of a
    # request. A peer could then learn eth1's address at eth0's MAC (or the
    # other way round) and answer over the other NIC. arp_ignore=1: a NIC
    # answers only for its own addresses; arp_announce=2: a request out of
    # a NIC names that NIC's address. With eth1 in a subnet of its own
    # (the peer has an address there too, vsw.extra_ip), its traffic then
    # stays on eth1 both ways.
    echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore
    echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce
    hotplug_watch eth1 &
fi

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
