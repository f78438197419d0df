#!/usr/bin/env bash
# NBD benchmark: the same pool file served by cvol (`cvol mount --nbd`), by qemu-nbd and
# by nbdkit's file plugin, each driven by the same fio jobs (fio's nbd engine, one
# connection) in one run, so that only ratios matter on a shared machine.
#
#   ./scripts/bench-nbd.sh [RUNTIME_SECONDS]     (default 10 s per job)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio, qemu-utils (qemu-nbd), nbdkit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-nbd.XXXXXX)
mnt=$work/mnt
sock=$work/nbd.sock
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
    rm -rf "$work"
}
trap cleanup EXIT

bench_datastore "$work"

jobs=(
    "4k randread QD1|--rw=randread --bs=4k --iodepth=1"
    "4k randread QD16|--rw=randread --bs=4k --iodepth=16"
    "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1"
    "4k randwrite QD16|--rw=randwrite --bs=4k --iodepth=16"
    "1M seq read|--rw=read --bs=1M --iodepth=4"
    "1M seq write|--rw=write --bs=1M --iodepth=4"
)

declare -A result

"$cvol" mount "$mnt" --nbd "unix:$sock" &
server_pid=$!
wait_socket "$sock"
fio_nbd_jobs cvol "nbd+unix:///bench/bench?socket=$sock"
stop_server

qemu-nbd --persistent --shared=8 --format=raw --cache=writeback --aio=threads --socket="$sock" --export-name=bench "$pool_file" &
server_pid=$!
wait_socket "$sock"
fio_nbd_jobs qemu-nbd "nbd+unix:///bench?socket=$sock"
stop_server

nbdkit --foreground --unix "$sock" --exportname=bench file "$pool_file" &
server_pid=$!
wait_socket "$sock"
fio_nbd_jobs nbdkit "nbd+unix:///bench?socket=$sock"
stop_server

echo "| job | cvol MiB/s | qemu-nbd MiB/s | nbdkit file MiB/s | cvol / qemu-nbd | cvol / nbdkit |"
echo "|---|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    awk -v name="$name" -v c="${result[cvol,$name]}" -v q="${result[qemu-nbd,$name]}" -v k="${result[nbdkit,$name]}" \
        'BEGIN { printf "| %s | %s | %s | %s | %.2fx | %.2fx |\n", name, c, q, k, c / q, c / k }'
done
