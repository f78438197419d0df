#!/usr/bin/env bash
# Object-pool benchmark, all against one Garage S3 server started here on loopback:
#
# - sequential write and read of a 1 GiB disk through NBD (nbdcopy: write with --flush,
#   so every chunk is uploaded and committed; read from a freshly started daemon, so every
#   chunk is downloaded) vs object_store put/get of the same bytes as plain 4 MiB objects
#   (the object_pool bench's `peer`);
# - 4k random read, cache warm, through NBD: the object pool vs a file pool (fio's nbd
#   engine, the same job);
# - snapshot and clone time of a 1 GiB and a 100 GiB volume (the object_pool bench's
#   `snapshots`).
#
#   ./scripts/bench-object.sh [RUNTIME_SECONDS]     (default 10 s per fio job)
#
# Prints Markdown for BENCHMARKS.md. Needs garage, fio, libnbd-bin (./scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet
cargo bench --no-run --quiet -p cvol-provider --bench object_pool
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-object.XXXXXX)
sock=$work/nbd.sock
server_pid= garage_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        "$cvol" umount "$work/mnt" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
cleanup() {
    stop_server
    [[ -z $garage_pid ]] || kill "$garage_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# serve SHARE: mounts the datastore of SHARE with an NBD server on $sock.
serve() {
    mkdir -p "$work/mnt"
    rm -f "$sock"
    CVOL_SHARE=$1 "$cvol" mount "$work/mnt" --nbd "unix:$sock" 2>"$work/daemon.log" &
    server_pid=$!
    wait_socket "$sock" || { cat "$work/daemon.log" >&2; exit 1; }
}

# mib_per_s SECONDS: 1 GiB in SECONDS, in MiB/s.
mib_per_s() { awk -v s="$1" 'BEGIN { printf "%.1f", 1024 / s }'; }

randread() {
    fio --name=job --ioengine=nbd --uri="$1" --size=1G --time_based --runtime="$runtime" \
        --ramp_time=1 --rw=randread --bs=4k --iodepth=16 --output-format=terse --terse-version=3 |
        awk -F';' 'NF > 50 { v = $7 / 1024 } END { printf "%.1f", v }'
}

start_garage "$work/garage"
head -c 1G /dev/urandom >"$work/disk.raw"

# The object pool, with a cache that holds the whole disk for the warm random reads.
mkdir -p "$work/s3-share"
export CVOL_SHARE=$work/s3-share
"$cvol" datastore create --name bench --provider pool=object:s3://cvol/bench >/dev/null
printf 'cache_mib = "1200"\n' >>"$work/s3-share/.cvol/datastore.toml"
"$cvol" vm create bench --disk 1G >/dev/null
uri="nbd+unix:///bench/bench?socket=$sock"
serve "$work/s3-share"
write_s=$(seconds nbdcopy --flush "$work/disk.raw" "$uri")
stop_server
serve "$work/s3-share"
read_s=$(seconds nbdcopy "$uri" null:)
nbdcopy "$uri" "$work/back.raw"
cmp "$work/disk.raw" "$work/back.raw"
s3_randread=$(randread "$uri")
stop_server

# The file pool, the same disk, warm in the page cache.
mkdir -p "$work/file-share" "$work/file-pool"
export CVOL_SHARE=$work/file-share
"$cvol" datastore create --name bench --provider "pool=file:$work/file-pool" >/dev/null
"$cvol" vm create bench --disk 1G >/dev/null
serve "$work/file-share"
nbdcopy --flush "$work/disk.raw" "$uri"
nbdcopy "$uri" null:
file_randread=$(randread "$uri")
stop_server

peer=$(cargo bench --quiet -p cvol-provider --bench object_pool -- peer s3://cvol/peer 1024)
peer_put=$(awk '/^peer_put_mib_s/ { print $2 }' <<<"$peer")
peer_get=$(awk '/^peer_get_mib_s/ { print $2 }' <<<"$peer")
snapshots=$(cargo bench --quiet -p cvol-provider --bench object_pool -- snapshots s3://cvol/snapshots)

write=$(mib_per_s "$write_s")
read=$(mib_per_s "$read_s")
echo "| job | cvol (object pool, NBD) | peer | cvol / peer |"
echo "|---|---:|---:|---:|"
awk -v c="$write" -v p="$peer_put" 'BEGIN { printf "| 1 GiB sequential write + flush | %s MiB/s | %s MiB/s (object_store put) | %.2fx |\n", c, p, c / p }'
awk -v c="$read" -v p="$peer_get" 'BEGIN { printf "| 1 GiB sequential read, cold | %s MiB/s | %s MiB/s (object_store get) | %.2fx |\n", c, p, c / p }'
awk -v c="$s3_randread" -v p="$file_randread" 'BEGIN { printf "| 4k random read QD16, warm | %s MiB/s | %s MiB/s (file pool, NBD) | %.2fx |\n", c, p, c / p }'
echo
echo "$snapshots"
