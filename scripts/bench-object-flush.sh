#!/usr/bin/env bash
# Small synchronous writes on an object pool: fio's nbd engine, 4k random writes with a
# flush after every write (fsync=1), QD1 and QD16, through `cvol mount --nbd`, on an
# object pool in Garage (S3 on loopback) and in a file:/// store, beside the same job on
# a file pool (the peer). Also the bytes each flush puts into the store: the file:///
# store's growth over the flushes fio made.
#
#   ./scripts/bench-object-flush.sh [RUNTIME_SECONDS] [CVOL_BINARY...]
#
# Every row is measured with each binary given (default: this tree's release build), in
# the same run, so that an older build is compared on the same machine and day.
# Prints Markdown for BENCHMARKS.md. Needs garage, fio, libnbd-bin (./scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
shift || true
cargo build --release --quiet
binaries=("$@")
((${#binaries[@]})) || binaries=("$PWD/target/release/cvol")
work=$(mktemp -d /var/tmp/cvol-bench-object-flush.XXXXXX)
sock=$work/nbd.sock
server_pid= garage_pid= cvol=
trap cleanup_object_bench EXIT
start_garage "$work/garage"

# serve POOL: a new datastore on POOL with one 256 MiB disk, mounted with NBD on $sock.
serve() {
    local share
    share=$(mktemp -d "$work/share.XXXXXX")
    export CVOL_SHARE=$share
    "$cvol" datastore create --name bench --provider "pool=$1" >/dev/null
    "$cvol" vm create bench --disk 256M >/dev/null
    mkdir -p "$work/mnt"
    rm -f "$sock"
    "$cvol" mount "$work/mnt" --nbd "unix:$sock" 2>"$work/daemon.log" &
    server_pid=$!
    wait_socket "$sock" || { cat "$work/daemon.log" >&2; exit 1; }
}

# sync_writes QD: IOPS and write count of fio's 4k random write + flush job, "IOPS COUNT".
sync_writes() {
    fio --name=job --ioengine=nbd --uri="nbd+unix:///bench/bench?socket=$sock" --size=256M \
        --time_based --runtime="$runtime" --rw=randwrite --bs=4k --iodepth="$1" --fsync=1 \
        --output-format=json |
        # fio's nbd engine says "fio: connected to NBD server" before the JSON.
        sed -n '/^{/,$p' |
        python3 -c 'import json, sys; w = json.load(sys.stdin)["jobs"][0]["write"]; print(int(w["iops"]), w["total_ios"])'
}

echo "| cvol | pool | QD | IOPS | file pool IOPS | object / file | bytes stored per flush |"
echo "|---|---|---:|---:|---:|---:|---:|"
for cvol in "${binaries[@]}"; do
    for qd in 1 16; do
        serve "file:$(mktemp -d "$work/pool.XXXXXX")"
        read -r file_iops _ <<<"$(sync_writes "$qd")"
        stop_mounted
        for pool in s3 file; do
            if [[ $pool == s3 ]]; then
                serve "object:s3://cvol/$(basename "$(mktemp -u)")"
                read -r iops _ <<<"$(sync_writes "$qd")"
                per_flush=-
            else
                store=$(mktemp -d "$work/store.XXXXXX")
                serve "object:file://$store"
                before=$(du -sb "$store" | cut -f1)
                read -r iops writes <<<"$(sync_writes "$qd")"
                after=$(du -sb "$store" | cut -f1)
                per_flush=$(((after - before) / writes))
            fi
            stop_mounted
            awk -v c="$cvol" -v p="$pool" -v q="$qd" -v i="$iops" -v f="$file_iops" -v b="$per_flush" \
                'BEGIN { printf "| %s | object, %s | %d | %d | %d | %.2fx | %s |\n", c, p, q, i, f, i / f, b }'
        done
    done
done
