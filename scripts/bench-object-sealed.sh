#!/usr/bin/env bash
# What compression + encryption cost an object pool's sequential throughput: a 1 GiB disk
# of random bytes written through NBD (nbdcopy --flush: every chunk uploaded and
# committed) and read back cold from a freshly started daemon, on a plain pool and on a
# compressed + encrypted one, alternating (which goes first alternates too), REPS times
# each, in one Garage on loopback. Medians, and sealed / plain.
#
# Every run writes random bytes of its own: Garage stores a block once however many
# objects hold it, so a plain pool given bytes an earlier run stored would only add
# references to blocks Garage already has (a sealed pool's bytes never repeat: each
# object has its own nonce).
#
#   ./scripts/bench-object-sealed.sh [REPS] [GARAGE_BLOCK_SIZE]
#
# REPS defaults to 3. GARAGE_BLOCK_SIZE (e.g. 8M) sets Garage's block_size (default 1M):
# Garage stores an object in blocks of that size, so a sealed chunk (4 MiB and a 45-byte
# envelope) takes a fifth, tiny block at the default, which a larger block size removes.
# Prints Markdown for BENCHMARKS.md. Needs garage and libnbd-bin (./scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
reps=${1:-3}
block_size=${2:-}
# Garage keeps every run's 2 GiB (it frees deleted blocks only minutes later): a full
# disk would make a late run fail or crawl, and its figures mean nothing.
need_gib=$((2 * reps + 2))
free_gib=$(df --output=avail -B1G /var/tmp | tail -1 | tr -d ' ')
if ((free_gib < need_gib)); then
    echo "bench-object-sealed.sh: needs ${need_gib} GiB free in /var/tmp for $reps runs, has ${free_gib} GiB" >&2
    exit 1
fi
cargo build --release --quiet
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-object-sealed.XXXXXX)
sock=$work/nbd.sock
uri="nbd+unix:///bench/bench?socket=$sock"
server_pid= garage_pid=
trap cleanup_object_bench EXIT

if [[ -n $block_size ]]; then
    export GARAGE_BLOCK_SIZE=$block_size
fi
start_garage "$work/garage"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/pool.key"
chmod 600 "$work/pool.key"

# run NAME SETTING...: writes and reads back the disk of a new datastore NAME on its own
# pool made with SETTINGs; prints "WRITE_MIB_S READ_MIB_S".
run() {
    local name=$1 share=$work/$1-share setting write_s read_s
    shift
    local args=()
    for setting in "$@"; do args+=(--setting "pool.$setting"); done
    mkdir -p "$share"
    export CVOL_SHARE=$share
    "$cvol" datastore create --name bench --provider "pool=object:s3://cvol/$name" "${args[@]}" >/dev/null
    printf 'cache_mib = "1200"\n' >>"$share/.cvol/datastore.toml"
    "$cvol" vm create bench --disk 1G >/dev/null
    head -c 1G /dev/urandom >"$work/disk.raw"
    mount_nbd "$share"
    write_s=$(seconds nbdcopy --flush "$work/disk.raw" "$uri")
    stop_mounted
    mount_nbd "$share"
    read_s=$(seconds nbdcopy "$uri" null:)
    stop_mounted
    awk -v w="$write_s" -v r="$read_s" 'BEGIN { printf "%.1f %.1f", 1024 / w, 1024 / r }'
}

plain_w= plain_r= sealed_w= sealed_r=
plain() {
    read -r w r <<<"$(run "plain$i")"
    plain_w+=" $w" plain_r+=" $r"
}
sealed() {
    read -r w r <<<"$(run "sealed$i" compression=zstd "key_file=$work/pool.key")"
    sealed_w+=" $w" sealed_r+=" $r"
}
for i in $(seq "$reps"); do
    if ((i % 2)); then plain; sealed; else sealed; plain; fi
done

echo "| 1 GiB of random bytes, Garage block_size ${block_size:-1M} | plain pool (runs) | compressed + encrypted (runs) | sealed / plain (medians) |"
echo "|---|---|---|---:|"
for op in write read; do
    p=plain_${op:0:1} s=sealed_${op:0:1}
    awk -v op="$op" -v pr="${!p}" -v sr="${!s}" -v pm="$(median "${!p}")" -v sm="$(median "${!s}")" \
        'BEGIN { printf "| sequential %s, MiB/s | %s | %s | %.2fx |\n", op, pr, sr, sm / pm }'
done
