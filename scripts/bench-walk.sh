#!/usr/bin/env bash
# Datastore walks at scale: `cvol vm list` and `cvol datastore fsck` over N VMs (one 64 MiB
# thin disk each, file pool), with the share served by `cvol nfs serve` on loopback,
# reading one VM at a time (--walk-parallel 1, as before issue 19) and 8 at once (the
# default), against the same commands on the share as a local directory.
#
#   ./scripts/bench-walk.sh [VMS] [ROUNDS]     (defaults 1000 and 3; medians)
#
# Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
vms=${1:-1000}
rounds=${2:-3}
cargo build --release --quiet --bin cvol
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-walk.XXXXXX)
server=
cleanup() {
    [[ -z $server ]] || kill "$server" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/share" "$work/pool"
local_share=$work/share
"$cvol" --share "$local_share" datastore create --name walk --provider "pool=file:$work/pool" >/dev/null
for i in $(seq "$vms"); do
    "$cvol" --share "$local_share" vm create "vm$i" --disk 64M --memory 256 >/dev/null
done
"$cvol" nfs serve --no-root-squash "$local_share" >"$work/url" 2>"$work/server.log" &
server=$!
wait_output "$work/url"
nfs_share=$(cat "$work/url")

# median SHARE WALK_PARALLEL ARGS...: the median wall time of ROUNDS runs, in seconds.
median() {
    local share=$1 parallel=$2
    shift 2
    for _ in $(seq "$rounds"); do
        local start end
        start=$(date +%s.%N)
        "$cvol" --share "$share" --walk-parallel "$parallel" "$@" >/dev/null
        end=$(date +%s.%N)
        echo "$end - $start" | bc
    done | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", a[int((NR + 1) / 2)] }'
}

echo "| $vms VMs, median of $rounds | NFS, 1 at a time s | NFS, 8 at once s | ratio | local dir, 8 at once s | NFS/local |"
echo "|---|---:|---:|---:|---:|---:|"
for command in "vm list" "datastore fsck"; do
    # shellcheck disable=SC2086
    one=$(median "$nfs_share" 1 $command)
    # shellcheck disable=SC2086
    eight=$(median "$nfs_share" 8 $command)
    # shellcheck disable=SC2086
    local_eight=$(median "$local_share" 8 $command)
    printf '| %s | %s | %s | %.2fx | %s | %.2fx |\n' "$command" "$one" "$eight" \
        "$(echo "$eight / $one" | bc -l)" "$local_eight" "$(echo "$eight / $local_eight" | bc -l)"
done
