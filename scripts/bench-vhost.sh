#!/usr/bin/env bash
# vhost-user-blk benchmark: the same pool file served by cvol (`cvol mount --vhost-user`)
# and by qemu-storage-daemon (io_uring, an iothread; O_DIRECT as the issue asks, and
# through the page cache as cvol's file pool is), and a disk on an object pool (file://
# store, warm), each driven by the same libblkio load generator
# (crates/cvol-vhost/examples/vhost-load.rs, one queue). All servers run at once and
# every job runs on each in turn, three rounds, the median kept: on a shared machine
# only ratios measured close together in time mean something.
#
#   ./scripts/bench-vhost.sh [RUNTIME_SECONDS]     (default 5 s per job and server)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio and qemu-storage-daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-5}
rounds=3
cargo build --release --quiet --bin cvol
cargo build --release --quiet -p cvol-vhost --features client --example vhost-load
cvol=$PWD/target/release/cvol
load=$PWD/target/release/examples/vhost-load
work=$(mktemp -d /var/tmp/cvol-bench-vhost.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    "$cvol" umount "$work/mnt" 2>/dev/null || true
    "$cvol" umount "$work/objmnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bench_datastore "$work"
"$cvol" mount "$work/mnt" --vhost-user "$work/vhost" --vhost-user-queues 1 2>/dev/null &
pids+=($!)
declare -A socket=([cvol]=$work/vhost/bench/bench.sock)

# qsd NAME CACHE_DIRECT: a qemu-storage-daemon on the pool file (no image locking: the
# servers share the file, which only the benchmark's data lives in).
qsd() {
    socket[$1]=$work/$1.sock
    qemu-storage-daemon --object iothread,id=io0 \
        --blockdev "driver=file,node-name=f,filename=$pool_file,aio=io_uring,cache.direct=$2,locking=off" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${socket[$1]},writable=on,num-queues=1,iothread=io0" &
    pids+=($!)
}
qsd qsd-direct on
qsd qsd-cached off

# The object pool: a disk that fits the default 256 MiB chunk cache, filled through the
# container, so every job runs warm.
mkdir -p "$work/objshare" "$work/objpool" "$work/objmnt"
export CVOL_SHARE=$work/objshare
"$cvol" datastore create --name obj --provider "pool=object:file://$work/objpool" >/dev/null
"$cvol" vm create bench --disk 192M >/dev/null
"$cvol" mount "$work/objmnt" --vhost-user "$work/objvhost" --vhost-user-queues 1 2>/dev/null &
pids+=($!)
socket[object]=$work/objvhost/bench/bench.sock
servers=(cvol qsd-direct qsd-cached object)
for s in "${servers[@]}"; do wait_socket "${socket[$s]}"; done
fio --name=fill --filename="$work/objmnt/bench/bench-flat.vmdk" --rw=write --bs=1M --size=192M \
    --ioengine=psync --end_fsync=1 --output=/dev/null

jobs=(
    "4k randread QD1|randread 4096 1"
    "4k randread QD32|randread 4096 32"
    "4k randwrite QD1|randwrite 4096 1"
    "4k randwrite QD32|randwrite 4096 32"
    "1M seq read QD4|read 1048576 4"
    "1M seq write QD4|write 1048576 4"
)

# Each job on each server starts from the state a guest's first read leaves: the pool
# file written back and dropped from the page cache, then the whole disk read once,
# sequentially, through the server under test. So each server's own read path shapes the
# cache its job meets (the generator's offsets repeat: a server run after another would
# otherwise rewrite pages still dirty, which costs less). An earlier version filled the
# cache with `cat`, whose readahead leaves large folios that make 4k writes several times
# slower — a state of the benchmark's making, not of the server's.
settle() {
    sync
    python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$pool_file"
    "$load" "${socket[$1]}" read 1048576 4 pass >/dev/null
}

declare -A iops
for _ in $(seq "$rounds"); do
    for job in "${jobs[@]}"; do
        for s in "${servers[@]}"; do
            settle "$s"
            # shellcheck disable=SC2086
            out=$("$load" "${socket[$s]}" ${job#*|} "$runtime")
            iops[$s,${job%%|*}]+="$(sed -n 's/.*"iops":\([0-9]*\).*/\1/p' <<<"$out") "
        done
    done
done

echo "| job | cvol IOPS | qsd O_DIRECT IOPS | qsd cached IOPS | cvol / qsd O_DIRECT | cvol / qsd cached | object pool IOPS | object / qsd cached |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    c=$(median "${iops[cvol,$name]}")
    d=$(median "${iops[qsd-direct,$name]}")
    q=$(median "${iops[qsd-cached,$name]}")
    o=$(median "${iops[object,$name]}")
    awk -v name="$name" -v c="$c" -v d="$d" -v q="$q" -v o="$o" \
        'BEGIN { printf "| %s | %d | %d | %d | %.2fx | %.2fx | %d | %.2fx |\n", name, c, d, q, c / d, c / q, o, o / q }'
done
