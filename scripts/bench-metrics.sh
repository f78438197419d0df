#!/usr/bin/env bash
# What `--metrics` costs the data path: the same pool file served over NBD by
# `cvol mount` without an endpoint (the metrics calls record into nothing) and with one
# (every request counted and timed into Prometheus histograms), driven by the same fio
# jobs (fio's nbd engine, one connection, unix socket). The two run in turn, three
# rounds, medians kept: only the ratio means something on a shared machine.
#
#   ./scripts/bench-metrics.sh [RUNTIME_SECONDS]     (default 5 s per job)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-5}
rounds=3
cargo build --release --quiet --bin cvol
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-metrics.XXXXXX)
mnt=$work/mnt
sock=$work/nbd.sock
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        "$cvol" umount "$mnt" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    rm -f "$sock"
}
trap 'stop_server; rm -rf "$work"' EXIT

bench_datastore "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

jobs=(
    "4k randread QD16|--rw=randread --bs=4k --iodepth=16"
    "4k randwrite QD16|--rw=randwrite --bs=4k --iodepth=16"
)
declare -A iops
for _ in $(seq "$rounds"); do
    for mode in off on; do
        extra=()
        [[ $mode == on ]] && extra=(--metrics "127.0.0.1:$port")
        "$cvol" mount "$mnt" --nbd "unix:$sock" "${extra[@]}" &
        server_pid=$!
        wait_socket "$sock"
        for job in "${jobs[@]}"; do
            settle_pool_file
            # shellcheck disable=SC2086
            iops[$mode,${job%%|*}]+="$(fio_nbd iops "nbd+unix:///bench/bench?socket=$sock" "$runtime" ${job#*|}) "
        done
        if [[ $mode == on ]]; then
            # The endpoint answered throughout: its request counters hold the jobs.
            curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^cvol_volume_write_seconds_count' ||
                { echo "no metrics were served" >&2; exit 1; }
        fi
        stop_server
    done
done

echo "| job | without --metrics IOPS | with --metrics IOPS | with / without |"
echo "|---|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    off=$(median "${iops[off,$name]}")
    on=$(median "${iops[on,$name]}")
    awk -v name="$name" -v off="$off" -v on="$on" \
        'BEGIN { printf "| %s | %d | %d | %.2fx |\n", name, off, on, on / off }'
done
