#!/bin/sh
# Frames per CPU second of the uplink's send and receive paths with one
# frame per sendmmsg/recvmmsg against full batches, over a veth pair in a
# namespace of its own, and their ratio. Needs root and iproute2.
#
#   benches/scripts/uplink-batching.sh [repeats]
set -eu
repeats=${1:-3}
r=1
while [ "$r" -le "$repeats" ]; do
    cargo test -q --release -p vswitch-tests --test uplink_batching -- \
        --include-ignored --nocapture 2>/dev/null | grep -E '^  (send|receive)'
    r=$((r + 1))
done
