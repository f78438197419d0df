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
#   `snapshots`);
# - the same 1 GiB write and cold read on a compressed and encrypted pool (random bytes
#   do not compress: what trying and encrypting cost), in Garage and on a file:/// store;
# - 4k random read QD16 right after a remount, on a pool whose disk cache the first
#   mount filled, vs the file pool;
# - the compression ratio of the boot test's root file system (ext4 with busybox,
#   256 MiB) imported into a compressed pool (`cvol provider stats`).
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
trap cleanup_object_bench EXIT

# mib_per_s SECONDS: 1 GiB in SECONDS, in MiB/s.
mib_per_s() { awk -v s="$1" 'BEGIN { printf "%.1f", 1024 / s }'; }

randread() {
    fio --name=job --ioengine=nbd --uri="$1" --size=1G --time_based --runtime="$runtime" \
        --ramp_time=1 --rw=randread --bs=4k --iodepth=16 --output-format=terse --terse-version=3 |
        awk -F';' 'NF > 50 { v = $7 / 1024 } END { printf "%.1f", v }'
}

start_garage "$work/garage"
head -c 1G /dev/urandom >"$work/disk.raw"

# new_datastore NAME CACHE_MIB POOL_URL SETTING...: a datastore in $work/NAME-share on
# the object pool POOL_URL (made with the provider settings given) with a 1 GiB disk and
# CACHE_MIB of memory cache.
new_datastore() {
    local name=$1 cache=$2 url=$3 setting
    shift 3
    mkdir -p "$work/$name-share"
    export CVOL_SHARE=$work/$name-share
    local args=()
    for setting in "$@"; do args+=(--setting "pool.$setting"); done
    "$cvol" datastore create --name bench --provider "pool=object:$url" "${args[@]}" >/dev/null
    printf 'cache_mib = "%s"\n' "$cache" >>"$work/$name-share/.cvol/datastore.toml"
    "$cvol" vm create bench --disk 1G >/dev/null
}

# write_then_read NAME: writes disk.raw into the disk of datastore NAME (flushed), then
# reads it back from a freshly started daemon (every chunk downloaded) and compares;
# sets write_s and read_s. NAME stays mounted.
write_then_read() {
    mount_nbd "$work/$1-share"
    write_s=$(seconds nbdcopy --flush "$work/disk.raw" "$uri")
    stop_mounted
    mount_nbd "$work/$1-share"
    read_s=$(seconds nbdcopy "$uri" null:)
    nbdcopy "$uri" "$work/back.raw"
    cmp "$work/disk.raw" "$work/back.raw"
}

uri="nbd+unix:///bench/bench?socket=$sock"
# The object pool, with a cache that holds the whole disk for the warm random reads.
new_datastore s3 1200 s3://cvol/bench
write_then_read s3
s3_randread=$(randread "$uri")
stop_mounted
plain_write_s=$write_s plain_read_s=$read_s

od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/pool.key"
chmod 600 "$work/pool.key"
new_datastore sealed 1200 s3://cvol/sealed compression=zstd "key_file=$work/pool.key"
write_then_read sealed
stop_mounted
sealed_write_s=$write_s sealed_read_s=$read_s

# The same pair on a file:/// store: what sealing costs cvol, apart from the store (Garage
# splits objects into 1 MiB blocks, and a sealed chunk's 45 bytes of envelope make a
# fifth).
new_datastore file-plain 1200 "file://$work/file-plain-objects"
write_then_read file-plain
stop_mounted
file_plain_write_s=$write_s file_plain_read_s=$read_s
new_datastore file-sealed 1200 "file://$work/file-sealed-objects" compression=zstd "key_file=$work/pool.key"
write_then_read file-sealed
stop_mounted
file_sealed_write_s=$write_s file_sealed_read_s=$read_s

# A disk cache: filled by the first mount's write and read, read right after a remount.
new_datastore cached 64 s3://cvol/cached "disk_cache=$work/disk-cache"
mount_nbd "$work/cached-share"
nbdcopy --flush "$work/disk.raw" "$uri"
nbdcopy "$uri" null:
stop_mounted
mount_nbd "$work/cached-share"
cached_randread=$(randread "$uri")
stop_mounted

# The boot test's root file system, imported into a compressed pool.
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys}
cp /bin/busybox "$root/bin/busybox"
mkfs.ext4 -q -F -d "$root" "$work/boot.raw" 256M
mkdir -p "$work/zstd-share"
export CVOL_SHARE=$work/zstd-share
"$cvol" datastore create --name bench --provider pool=object:s3://cvol/zstd --setting pool.compression=zstd >/dev/null
"$cvol" vm create boot --disk 1M >/dev/null
"$cvol" disk import boot "$work/boot.raw" >/dev/null
ratio=$("$cvol" --json provider stats --pool object:s3://cvol/zstd |
    python3 -c 'import json, sys; s = json.load(sys.stdin); print("%.1f %d %d" % (s["logical_bytes"] / (s["live_bytes"] + s["log_bytes"]), s["logical_bytes"], s["live_bytes"] + s["log_bytes"]))')

# The file pool, the same disk, warm in the page cache.
mkdir -p "$work/file-share" "$work/file-pool"
export CVOL_SHARE=$work/file-share
"$cvol" datastore create --name bench --provider "pool=file:$work/file-pool" >/dev/null
"$cvol" vm create bench --disk 1G >/dev/null
mount_nbd "$work/file-share"
nbdcopy --flush "$work/disk.raw" "$uri"
nbdcopy "$uri" null:
file_randread=$(randread "$uri")
stop_mounted

peer=$(cargo bench --quiet -p cvol-provider --bench object_pool -- peer s3://cvol/peer 1024)
peer_put=$(awk '/^peer_put_mib_s/ { print $2 }' <<<"$peer")
peer_get=$(awk '/^peer_get_mib_s/ { print $2 }' <<<"$peer")
snapshots=$(cargo bench --quiet -p cvol-provider --bench object_pool -- snapshots s3://cvol/snapshots)

write=$(mib_per_s "$plain_write_s")
read=$(mib_per_s "$plain_read_s")
echo "| job | cvol (object pool, NBD) | peer | cvol / peer |"
echo "|---|---:|---:|---:|"
awk -v c="$write" -v p="$peer_put" 'BEGIN { printf "| 1 GiB sequential write + flush | %s MiB/s | %s MiB/s (object_store put) | %.2fx |\n", c, p, c / p }'
awk -v c="$read" -v p="$peer_get" 'BEGIN { printf "| 1 GiB sequential read, cold | %s MiB/s | %s MiB/s (object_store get) | %.2fx |\n", c, p, c / p }'
awk -v c="$s3_randread" -v p="$file_randread" 'BEGIN { printf "| 4k random read QD16, warm | %s MiB/s | %s MiB/s (file pool, NBD) | %.2fx |\n", c, p, c / p }'
awk -v c="$cached_randread" -v p="$file_randread" 'BEGIN { printf "| 4k random read QD16, right after a remount, disk cache | %s MiB/s | %s MiB/s (file pool, NBD) | %.2fx |\n", c, p, c / p }'
sealed_write=$(mib_per_s "$sealed_write_s")
sealed_read=$(mib_per_s "$sealed_read_s")
awk -v c="$sealed_write" -v p="$write" 'BEGIN { printf "| 1 GiB sequential write + flush, compressed + encrypted | %s MiB/s | %s MiB/s (plain object pool) | %.2fx |\n", c, p, c / p }'
awk -v c="$sealed_read" -v p="$read" 'BEGIN { printf "| 1 GiB sequential read, cold, compressed + encrypted | %s MiB/s | %s MiB/s (plain object pool) | %.2fx |\n", c, p, c / p }'
for op in write read; do
    plain_s=file_plain_${op}_s sealed_s=file_sealed_${op}_s
    awk -v op="$op" -v c="$(mib_per_s "${!sealed_s}")" -v p="$(mib_per_s "${!plain_s}")" 'BEGIN { printf "| 1 GiB sequential %s, compressed + encrypted, file:/// store | %s MiB/s | %s MiB/s (plain object pool, file:///) | %.2fx |\n", op, c, p, c / p }'
done
read -r r logical stored <<<"$ratio"
echo
echo "Compression (zstd) of the boot test's 256 MiB ext4 root file system: $logical bytes of chunks stored in $stored ($r x)."
echo
echo "$snapshots"
