#!/usr/bin/env bash
# Installs what the real-guest tests need, and skips what is already there:
#   - QEMU 10.0.x from bookworm-backports (the bookworm 7.2 build conflicts with
#     the installed qemu-utils 10.0 and crashes with vhost-user + MSI-X under TCG);
#   - the guest's userland: busybox-static, iperf3 (with libiperf0), ethtool;
#   - the guest kernel: the package linux-image-amd64 depends on, fetched with
#     `apt-get download` and unpacked into a cache directory, never installed
#     onto the host's /boot;
#   - DPDK 22.11 (dpdk, dpdk-dev) for the testpmd vhost peer.
#
# Usage: scripts/guest/install-deps.sh [CACHE_DIR]
#   CACHE_DIR defaults to $VSW_GUEST_CACHE or target/guest-deps under the repo.
#   The unpacked kernel lands in CACHE_DIR/kernel/ (boot/ and lib/modules/).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${1:-${VSW_GUEST_CACHE:-$repo/target/guest-deps}}

die() { echo "install-deps: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install needs it); try: sudo $0"
command -v apt-get >/dev/null || die "apt-get not found: these scripts expect a Debian bookworm host"
command -v dpkg-query >/dev/null || die "dpkg-query not found: these scripts expect a Debian bookworm host"

export DEBIAN_FRONTEND=noninteractive

# pkg_version NAME: the installed version, or nothing.
pkg_version() {
    { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } \
        | awk '$1 == "ii" { print $2 }'
}

# The Debian mirror this machine already uses (the first URI serving the
# bookworm suite), so that backports comes from the same host.
debian_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    local f uri
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        case $f in
        *.sources)
            uri=$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ && u != "" { print u; exit }' "$f")
            ;;
        *)
            uri=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
            ;;
        esac
        if [ -n "$uri" ]; then
            echo "$uri"
            return
        fi
    done
    echo "http://deb.debian.org/debian"
}

updated=0
apt_update() {
    if [ "$updated" -eq 0 ]; then
        apt-get update -q
        updated=1
    fi
}

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(debian_mirror)
    echo "install-deps: adding bookworm-backports from $mirror"
    echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
    apt_update
fi

# QEMU: the 10.0 build, from backports.
qemu_version=$(pkg_version qemu-system-x86)
case $qemu_version in
*:10.*) echo "install-deps: qemu-system-x86 $qemu_version present" ;;
*)
    apt_update
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
    ;;
esac

# Plain bookworm packages: the guest userland, DPDK, and the tools the
# image build and testpmd-pair.sh use (cpio, gzip, kmod for depmod, jq).
want=(busybox-static iperf3 libiperf0 ethtool dpdk dpdk-dev cpio gzip kmod jq)
missing=()
for p in "${want[@]}"; do
    [ -n "$(pkg_version "$p")" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps: ${want[*]} present"
fi

# The guest kernel: the image package that linux-image-amd64 depends on.
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
    apt_update
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
stamp="$cache/kernel/.package"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$kpkg" ] && ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "install-deps: guest kernel $kpkg present in $cache/kernel"
else
    echo "install-deps: fetching guest kernel $kpkg"
    rm -rf "$cache/kernel" "$cache"/linux-image-*.deb
    # The cache may not be readable by apt's sandbox user; download as root.
    (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$kpkg")
    deb=$(ls "$cache"/linux-image-*.deb)
    dpkg-deb -x "$deb" "$cache/kernel"
    rm -f "$deb"
    echo "$kpkg" > "$stamp"
fi

echo "install-deps: done (qemu $(pkg_version qemu-system-x86), dpdk $(pkg_version dpdk), kernel $kpkg)"
