#!/usr/bin/env bash
# vhost-user-blk benchmark: the same pool file served by cvol (`cvol mount --vhost-user`)
# and by qemu-storage-daemon (io_uring, an iothread; O_DIRECT as the issue asks, and
# through the page cache as cvol's file pool is), each driven by the same libblkio load
# generator (crates/cvol-vhost/examples/vhost-load.rs, one queue) in one run, so that only
# ratios matter on a shared machine. Then a disk on an object pool (file:// store, warm).
#
#   ./scripts/bench-vhost.sh [RUNTIME_SECONDS]     (default 10 s per job)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio and qemu-storage-daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet --bin cvol
cargo build --release --quiet -p cvol-vhost --features client --example vhost-load
cvol=$PWD/target/release/cvol
load=$PWD/target/release/examples/vhost-load
work=$(mktemp -d /var/tmp/cvol-bench-vhost.XXXXXX)
mnt=$work/mnt
sock=$work/qsd.sock
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    rm -f "$sock"
}
cleanup() {
    stop_server
    "$cvol" umount "$mnt" 2>/dev/null || true
    "$cvol" umount "$work/objmnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bench_datastore "$work"

jobs=(
    "4k randread QD1|randread 4096 1"
    "4k randread QD32|randread 4096 32"
    "4k randwrite QD1|randwrite 4096 1"
    "4k randwrite QD32|randwrite 4096 32"
    "1M seq read QD4|read 1048576 4"
    "1M seq write QD4|write 1048576 4"
)

# Every server starts from the same state: the pool file written back and all of it in
# the page cache (the load generator's offsets are the same each run, so a server run
# after another would otherwise rewrite pages that are still dirty, which costs less).
settle() {
    sync
    cat "$pool_file" >/dev/null
}

# run_jobs SERVER SOCKET: fills result[SERVER,job] with IOPS and MiB/s
declare -A result
run_jobs() {
    local server=$1 socket=$2
    for job in "${jobs[@]}"; do
        settle
        local name=${job%%|*} out
        # shellcheck disable=SC2086
        out=$("$load" "$socket" ${job#*|} "$runtime")
        result[$server,$name]=$(sed -n 's/.*"iops":\([0-9]*\),"mib_s":\([0-9.]*\).*/\1 \2/p' <<<"$out")
    done
}

"$cvol" mount "$mnt" --vhost-user "$work/vhost" --vhost-user-queues 1 &
server_pid=$!
wait_socket "$work/vhost/bench/bench.sock"
run_jobs cvol "$work/vhost/bench/bench.sock"
stop_server

# qsd_run NAME CACHE_DIRECT: qemu-storage-daemon on the pool file.
qsd_run() {
    qemu-storage-daemon --object iothread,id=io0 \
        --blockdev "driver=file,node-name=f,filename=$pool_file,aio=io_uring,cache.direct=$2" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=1,iothread=io0" &
    server_pid=$!
    wait_socket "$sock"
    run_jobs "$1" "$sock"
    stop_server
}
qsd_run qsd-direct on
qsd_run qsd-cached off

# The object pool: a disk that fits the default 256 MiB chunk cache, filled through the
# container, so every row runs warm.
mkdir -p "$work/objshare" "$work/objpool" "$work/objmnt"
CVOL_SHARE=$work/objshare "$cvol" datastore create --name obj --provider "pool=object:file://$work/objpool" >/dev/null
CVOL_SHARE=$work/objshare "$cvol" vm create bench --disk 192M >/dev/null
CVOL_SHARE=$work/objshare "$cvol" mount "$work/objmnt" --vhost-user "$work/objvhost" --vhost-user-queues 1 &
server_pid=$!
wait_socket "$work/objvhost/bench/bench.sock"
fio --name=fill --filename="$work/objmnt/bench/bench-flat.vmdk" --rw=write --bs=1M --size=192M \
    --ioengine=psync --end_fsync=1 --output=/dev/null
run_jobs object "$work/objvhost/bench/bench.sock"
kill "$server_pid"
wait "$server_pid" || true
server_pid=

echo "| job | cvol IOPS | qsd O_DIRECT IOPS | qsd cached IOPS | cvol / qsd O_DIRECT | cvol / qsd cached | object pool IOPS | object / qsd cached |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    read -r c _ <<<"${result[cvol,$name]}"
    read -r d _ <<<"${result[qsd-direct,$name]}"
    read -r q _ <<<"${result[qsd-cached,$name]}"
    read -r o _ <<<"${result[object,$name]}"
    awk -v name="$name" -v c="$c" -v d="$d" -v q="$q" -v o="$o" \
        'BEGIN { printf "| %s | %d | %d | %d | %.2fx | %.2fx | %d | %.2fx |\n", name, c, d, q, c / d, c / q, o, o / q }'
done
