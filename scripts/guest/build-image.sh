#!/usr/bin/env bash
# Builds the test guest: OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz (cpio newc,
# gzip), and OUTDIR/vmlinux, the same kernel uncompressed for a faster PVH boot. The initramfs holds busybox, iperf3 and ethtool with every library ldd
# lists and the dynamic loader, the kernel modules virtio-net-pci needs (with
# their dependencies from modules.dep), and scripts/guest/init.sh as /init.
#
# Usage: scripts/guest/build-image.sh [OUTDIR]
#   OUTDIR defaults to target/guest-image under the repo (git ignores target/).
#   The kernel comes from the cache install-deps.sh fills ($VSW_GUEST_CACHE or
#   target/guest-deps). Nothing is rebuilt when the inputs are unchanged.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/guest-image}
cache=${VSW_GUEST_CACHE:-$repo/target/guest-deps}
kroot=$cache/kernel

die() { echo "build-image: $*" >&2; exit 1; }

# Userland binaries copied into the image, with their libraries.
bins=(/usr/bin/iperf3 /usr/sbin/ethtool)
busybox=/bin/busybox
# What the guest's virtio-net-pci device needs; dependencies are added below.
want_modules=(virtio_pci virtio_net)

for f in "$busybox" "${bins[@]}"; do
    [ -x "$f" ] || die "$f missing: run scripts/guest/install-deps.sh first"
done
command -v cpio >/dev/null || die "cpio missing: run scripts/guest/install-deps.sh first"
command -v depmod >/dev/null || die "depmod missing: run scripts/guest/install-deps.sh first"
vmlinuz=$(find "$kroot/boot" -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort | head -n1) || true
[ -n "$vmlinuz" ] || die "no kernel in $kroot: run scripts/guest/install-deps.sh first"
kver=${vmlinuz##*/vmlinuz-}
mdir=$kroot/lib/modules/$kver

# libs_of BIN: the libraries ldd lists for BIN, and the loader, one a line.
libs_of() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

files=("$busybox" "${bins[@]}")
for b in "${bins[@]}"; do
    while read -r l; do files+=("$l"); done < <(libs_of "$b")
done

# Inputs: the kernel, every file copied, /init and this script. If their
# digest matches the one recorded with the last image, the image is current.
digest=$(
    {
        echo "$vmlinuz"
        sha256sum "$vmlinuz" "$here/init.sh" "${BASH_SOURCE[0]}"
        printf '%s\n' "${files[@]}" | sort -u | xargs sha256sum
    } | sha256sum | cut -d' ' -f1
)
if [ -f "$out/.inputs" ] && [ "$(cat "$out/.inputs")" = "$digest" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    echo "build-image: $out is up to date"
    exit 0
fi

# modules.dep is not shipped in the kernel package (depmod makes it at install
# time), so make it once in the cache.
if [ ! -f "$mdir/modules.dep" ]; then
    depmod -b "$kroot" "$kver"
fi

# Module paths (relative to $mdir) in load order: each module's dependencies
# first. modules.dep lists a module's dependencies with the ones it needs
# directly first, so they are loaded from the end of the list.
modules=()
add_module() {
    local name=$1 line ko dep i m
    local -a deps
    if grep -q "/$name\.ko\$" "$mdir/modules.builtin" 2>/dev/null; then
        return
    fi
    line=$(grep -E "(^|/)$name\.ko(\.[a-z]+)?:" "$mdir/modules.dep") ||
        die "module $name not in $mdir/modules.dep"
    ko=${line%%:*}
    for m in "${modules[@]}"; do [ "$m" = "$ko" ] && return; done
    read -r -a deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        dep=${deps[i]##*/}
        add_module "${dep%%.ko*}"
    done
    for m in "${modules[@]}"; do [ "$m" = "$ko" ] && return; done
    modules+=("$ko")
}
for m in "${want_modules[@]}"; do add_module "$m"; done

# extract_vmlinux BZIMAGE OUT: the ELF kernel inside a bzImage (what the
# kernel's scripts/extract-vmlinux does): find the compressed payload by its
# magic number and decompress from there until the stream ends.
extract_vmlinux() {
    local magic tool off
    for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
        tool=${magic%%:*}
        command -v "$tool" >/dev/null || continue
        for off in $(LC_ALL=C grep -aboP "${magic#*:}" "$1" | cut -d: -f1 | head -n 5); do
            case $tool in
            xz) tail -c +$((off + 1)) "$1" | xz -dc --single-stream >"$2" 2>/dev/null ;;
            zstd) tail -c +$((off + 1)) "$1" | zstd -qdc >"$2" 2>/dev/null ;;
            gzip) tail -c +$((off + 1)) "$1" | gzip -dc >"$2" 2>/dev/null ;;
            esac
            # A decompressor that hits trailing data may fail after writing
            # the whole kernel: the ELF magic decides.
            [ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
        done
    done
    return 1
}

start=$(date +%s.%N)
mkdir -p "$out"
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,lib/modules}
cp "$busybox" "$stage/bin/busybox"
for f in "${files[@]:1}"; do
    mkdir -p "$stage$(dirname "$f")"
    cp -L "$f" "$stage$f"
done
: >"$stage/etc/vsw-modules"
for ko in "${modules[@]}"; do
    dest=/lib/modules/$kver/$ko
    mkdir -p "$stage$(dirname "$dest")"
    case $ko in
    *.ko.xz) xz -dc "$mdir/$ko" >"$stage${dest%.xz}"; dest=${dest%.xz} ;;
    *.ko.zst) zstd -qdc "$mdir/$ko" >"$stage${dest%.zst}"; dest=${dest%.zst} ;;
    *.ko.gz) gzip -dc "$mdir/$ko" >"$stage${dest%.gz}"; dest=${dest%.gz} ;;
    *) cp "$mdir/$ko" "$stage$dest" ;;
    esac
    echo "$dest" >>"$stage/etc/vsw-modules"
done
install -m 0755 "$here/init.sh" "$stage/init"

(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp "$vmlinuz" "$out/vmlinuz"
# Also the uncompressed kernel, an ELF with a PVH entry note (CONFIG_PVH):
# QEMU loads it straight into guest memory and jumps to the 64-bit entry, so
# the guest skips the real-mode set-up and the in-guest xz decompression,
# which under TCG take most of the boot (measured: ready after ~5 s instead
# of 10-19 s). run-guest.sh uses it when present.
rm -f "$out/vmlinux"
if grep -qx 'CONFIG_PVH=y' "$kroot/boot/config-$kver" 2>/dev/null; then
    if extract_vmlinux "$vmlinuz" "$out/vmlinux.tmp"; then
        mv "$out/vmlinux.tmp" "$out/vmlinux"
    else
        rm -f "$out/vmlinux.tmp"
        echo "build-image: no PVH kernel (could not decompress $vmlinuz); guests boot the bzImage" >&2
    fi
fi
echo "$digest" >"$out/.inputs"

end=$(date +%s.%N)
printf 'build-image: %s/{vmlinuz,vmlinux,initramfs.cpio.gz} (kernel %s, modules: %s; %s bytes) in %.1f s\n' \
    "$out" "$kver" "$(cd "$stage" && xargs -n1 basename <etc/vsw-modules | tr '\n' ' ')" \
    "$(stat -c %s "$out/initramfs.cpio.gz")" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
