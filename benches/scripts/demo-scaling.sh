#!/bin/sh
# Runs `vswitch demo` with 1..N workers, R times each, interleaved, and
# prints the range of the throughput and of the workers' cost per byte,
# so figures from a shared machine come with their spread.
#
#   benches/scripts/demo-scaling.sh [max-workers] [repeats] [seconds] [demo options...]
#
# Needs a release build: cargo build --release -p vswitch
set -eu
max=${1:-2}
repeats=${2:-3}
seconds=${3:-3}
shift 3 2>/dev/null || shift $#
bin=${VSWITCH:-./target/release/vswitch}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
r=1
while [ "$r" -le "$repeats" ]; do
    w=1
    while [ "$w" -le "$max" ]; do
        "$bin" demo --seconds "$seconds" --workers "$w" "$@" 2>/dev/null |
            awk -v w="$w" '/throughput/ {g=$2} /switch cost/ {c=$3} END {print w, g, c}' >>"$out"
        w=$((w + 1))
    done
    r=$((r + 1))
done
echo "workers  Gbit/s (min..max)  worker ns/payload byte (min..max)  runs"
sort -n "$out" | awk '
    { n[$1]++; if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2; if ($2 > hi[$1]) hi[$1] = $2;
      if (!($1 in clo) || $3 < clo[$1]) clo[$1] = $3; if ($3 > chi[$1]) chi[$1] = $3 }
    END { for (w in n) printf "%7s  %7.2f..%-7.2f      %.4f..%-.4f                  %d\n", w, lo[w], hi[w], clo[w], chi[w], n[w] }' | sort -n
