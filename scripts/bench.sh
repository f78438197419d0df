#!/usr/bin/env bash
# Benchmarks of the file system container: the same fio jobs on a disk's flat extent
# through the container (with and without FUSE passthrough) and on the pool file that
# holds it, in one run, so that only ratios matter on a shared machine.
#
#   ./scripts/bench.sh [RUNTIME_SECONDS]     (default 10 s per job)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio (apt-get install fio).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench.XXXXXX)
mnt=$work/mnt
cleanup() {
    "$cvol" umount "$mnt" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bench_datastore "$work"

jobs=(
    "4k randread QD16|--rw=randread --bs=4k --iodepth=16"
    "4k randwrite QD16|--rw=randwrite --bs=4k --iodepth=16"
    "1M seq read|--rw=read --bs=1M --iodepth=4"
    "1M seq write|--rw=write --bs=1M --iodepth=4"
)

# run_job FILE ARGS -> MiB/s (reads + writes)
run_job() {
    local file=$1
    shift
    fio --name=job --filename="$file" --size=2G --ioengine=libaio --direct=1 --time_based \
        --runtime="$runtime" --ramp_time=1 --group_reporting --output-format=terse --terse-version=3 "$@" |
        awk -F';' 'NF > 50 { v = ($7 + $48) / 1024 } END { printf "%.1f", v }'
}

mount_container() {
    "$cvol" mount "$mnt" "$@" &
    wait_mounted "$mnt"
}

declare -A result
for mode in passthrough daemon; do
    if [[ $mode == daemon ]]; then mount_container --no-passthrough; else mount_container; fi
    for job in "${jobs[@]}"; do
        name=${job%%|*}
        # shellcheck disable=SC2086
        result[$mode,$name]=$(run_job "$mnt/bench/bench-flat.vmdk" ${job#*|})
    done
    "$cvol" umount "$mnt"
    wait
done
for job in "${jobs[@]}"; do
    name=${job%%|*}
    # shellcheck disable=SC2086
    result[direct,$name]=$(run_job "$pool_file" ${job#*|})
done

echo "| job | pool file MiB/s | container, passthrough MiB/s | ratio | container, no passthrough MiB/s | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    d=${result[direct,$name]}
    p=${result[passthrough,$name]}
    n=${result[daemon,$name]}
    awk -v name="$name" -v d="$d" -v p="$p" -v n="$n" \
        'BEGIN { printf "| %s | %s | %s | %.2fx | %s | %.2fx |\n", name, d, p, p / d, n, n / d }'
done
