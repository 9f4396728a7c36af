#!/usr/bin/env bash
# Boots one test guest (built by build-image.sh) with one virtio-net-pci port
# backed by a vhost-user socket. The guest runs one iperf3 test and powers off;
# QEMU then exits. See scripts/guest/README.md for the console markers.
#
# Usage: scripts/guest/run-guest.sh --socket PATH --role server|client [options]
#   --socket PATH        vhost-user socket
#   --socket-mode M      client (default): QEMU connects to a backend that
#                        listens on PATH, retrying every second until it does;
#                        server: QEMU listens on PATH and the backend connects
#   --queues N           queue pairs (default 1); also the guest's vCPU count
#   --mac MAC            (default 52:54:00:00:00:01)
#   --mem SIZE           guest memory, shared with the backend (default 512M)
#   --role R             server | client
#   --ip ADDR/PREFIX     (default 10.0.0.1/24 for a server, 10.0.0.2/24 for a client)
#   --peer ADDR          the iperf3 server, for a client (default 10.0.0.1)
#   --args "ARGS"        iperf3 client arguments (default "-P 16 -t 5")
#   --append "K=V ..."   more kernel command line (e.g. "vsw.ethtool=\"tso off\"")
#   --device-opts "..."  more virtio-net-pci properties, appended last so they
#                        override the defaults below (e.g. "host_tso4=off")
#   --log FILE           serial console to FILE (default: stdout)
#   --image DIR          where vmlinuz (or vmlinux) and initramfs.cpio.gz are
#                        (default target/guest-image)
#   --kernel FILE        kernel to boot (default: DIR/vmlinux, the PVH ELF
#                        build-image.sh extracts, else DIR/vmlinuz)
#   --accel A            tcg (default) or kvm
#   --trace PATTERN      enable QEMU trace events matching PATTERN on stderr
#                        (e.g. 'vhost_user_*' for every vhost-user message);
#                        may be given more than once
#   --qmp PATH           a QMP monitor on the Unix socket PATH (QEMU listens,
#                        -qmp unix:PATH,server=on,wait=off), for hot-plugging
#                        devices into the running guest
#   --hotplug-slots N    N empty pcie-root-ports, ids hp1 ... hpN (default 0):
#                        q35's root bus takes no hot-plugged device, a root
#                        port does (device_add ...,bus=hp1)
#   --dry-run            print the QEMU command line and exit
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "run-guest: $*" >&2; exit 2; }

sock="" sock_mode=client queues=1 mac=52:54:00:00:00:01 mem=512M
role="" ip="" peer=10.0.0.1 iperf_args="-P 16 -t 5" append="" dev_opts=""
log="" image=$repo/target/guest-image kernel="" accel=tcg dry_run=0
qmp="" hotplug_slots=0
traces=()
while [ $# -gt 0 ]; do
    case $1 in
    --socket) sock=$2; shift 2 ;;
    --socket-mode) sock_mode=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --mac) mac=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --role) role=$2; shift 2 ;;
    --ip) ip=$2; shift 2 ;;
    --peer) peer=$2; shift 2 ;;
    --args) iperf_args=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --device-opts) dev_opts=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --trace) traces+=(-trace "enable=$2"); shift 2 ;;
    --qmp) qmp=$2; shift 2 ;;
    --hotplug-slots) hotplug_slots=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$sock" ] || die "--socket is required"
case $role in
server) ip=${ip:-10.0.0.1/24} ;;
client) ip=${ip:-10.0.0.2/24} ;;
*) die "--role must be server or client" ;;
esac
case $sock_mode in
# reconnect-ms: the backend may not listen yet (or may restart); QEMU waits
# for it instead of failing at start.
client) chardev="socket,id=c0,path=$sock,reconnect-ms=1000" ;;
# wait=off: QEMU starts the guest without waiting for the backend to connect;
# the link stays down until it does.
server) chardev="socket,id=c0,path=$sock,server=on,wait=off" ;;
*) die "--socket-mode must be client or server" ;;
esac
if ! [[ $queues =~ ^[0-9]+$ ]] || [ "$queues" -lt 1 ]; then
    die "--queues must be a positive number"
fi
if ! [[ $hotplug_slots =~ ^[0-9]+$ ]] || [ "$hotplug_slots" -gt 32 ]; then
    die "--hotplug-slots must be a number from 0 to 32"
fi
if [ -z "$kernel" ]; then
    # The ELF kernel boots through its PVH entry: no in-guest decompression,
    # about three times faster under TCG than the bzImage.
    if [ -f "$image/vmlinux" ]; then kernel=$image/vmlinux; else kernel=$image/vmlinuz; fi
fi
for f in "$kernel" "$image/initramfs.cpio.gz"; do
    [ -f "$f" ] || [ "$dry_run" -eq 1 ] || die "$f missing: run scripts/guest/build-image.sh"
done

# The device, feature by feature. QEMU offers the guest what is set here AND
# what the vhost-user backend offers in VHOST_USER_GET_FEATURES; the guest
# then acks what its driver supports.
dev=virtio-net-pci
dev+=",netdev=n0,mac=$mac"
dev+=",disable-legacy=on"          # virtio 1.x only: VIRTIO_F_VERSION_1, 12-byte header
dev+=",mq=on,vectors=$((2 * queues + 2))" # MQ; one MSI-X vector per queue, + config + ctrl
dev+=",mrg_rxbuf=on"               # MRG_RXBUF: large rx frames span buffers (num_buffers)
dev+=",csum=on,guest_csum=on"      # CSUM (guest tx partial csum), GUEST_CSUM (rx partial ok)
dev+=",gso=on"                     # legacy VIRTIO_NET_F_GSO bit (Linux drivers ignore it)
dev+=",host_tso4=on,host_tso6=on,host_ecn=on" # HOST_TSO4/6/ECN: guest sends TSO frames
dev+=",guest_tso4=on,guest_tso6=on,guest_ecn=on" # GUEST_TSO4/6/ECN: guest takes TSO frames
dev+=",host_ufo=off,guest_ufo=off" # UFO: deprecated in Linux, not used by the guest
dev+=",host_uso=on,guest_uso4=on,guest_uso6=on" # USO (Linux 6.2+ guests use it)
dev+=",ctrl_vq=on,ctrl_guest_offloads=on" # control queue: MQ set-up, offload toggles
dev+=",event_idx=on,indirect_desc=on,packed=off" # split ring with event index
# 1024-entry rings (the most virtio-net-pci allows; tx above 256 needs a
# vhost-user or vDPA backend): a TCG guest refills its rx ring slowly, and a
# short ring makes the backend drop frames it cannot place.
dev+=",rx_queue_size=1024,tx_queue_size=1024"
[ -z "$dev_opts" ] || dev+=",$dev_opts"

cmdline="console=ttyS0 quiet loglevel=1 panic=-1"
cmdline+=" vsw.role=$role vsw.ip=$ip vsw.peer=$peer vsw.args=\"$iperf_args\""
[ "$queues" -eq 1 ] || cmdline+=" vsw.queues=$queues"
[ -z "$append" ] || cmdline+=" $append"

if [ -n "$log" ]; then serial="file:$log"; else serial=stdio; fi

# Hot-plug slots and the monitor that fills them, only when asked for, so
# that the command line of a guest without them stays as it was.
extra=()
for ((i = 1; i <= hotplug_slots; i++)); do
    # A root port per slot; chassis numbers keep the slots' (chassis, slot)
    # pairs unique. The guest's kernel runs the slots (pciehp or ACPI
    # hot-plug, both built into Debian's kernel).
    extra+=(-device "pcie-root-port,id=hp$i,bus=pcie.0,chassis=$i")
done
[ -z "$qmp" ] || extra+=(-qmp "unix:$qmp,server=on,wait=off")

qemu=(
    qemu-system-x86_64
    -name "vsw-$role"
    # q35 gives a PCIe virtio device with MSI-X. Its RAM is the memfd backend
    # below: vhost-user maps guest memory into the backend process, so the
    # memory must be a shareable file (share=on), not anonymous memory.
    -machine "q35,accel=$accel,memory-backend=mem"
    -object "memory-backend-memfd,id=mem,size=$mem,share=on"
    -m "$mem"
    # TCG emulates every CPU feature the guest kernel may probe for.
    -cpu max
    # One vCPU per queue pair, so each queue pair has its own interrupt and
    # transmit CPU in the guest (virtio_net uses min(queue pairs, CPUs)).
    -smp "$queues"
    -kernel "$kernel"
    -initrd "$image/initramfs.cpio.gz"
    -append "$cmdline"
    -chardev "$chardev"
    -netdev "vhost-user,id=n0,chardev=c0,queues=$queues"
    -device "$dev"
    # No default devices (no VGA, no default NIC, no monitor), no display;
    # the serial port is the only output.
    -nodefaults -display none -serial "$serial"
    # The guest powers off when done; a panic (panic=-1) reboots, and
    # -no-reboot turns that into a QEMU exit too.
    -no-reboot
    "${extra[@]}"
    "${traces[@]}"
)
if [ "$dry_run" -eq 1 ]; then
    printf '%q ' "${qemu[@]}"
    echo
    exit 0
fi
exec "${qemu[@]}" </dev/null
