#!/usr/bin/env bash
# An rbd pool's data path: the same fio jobs on the same RBD image, through cvol (the
# container's NBD export, fio's nbd engine), through qemu-nbd with QEMU's rbd driver (the
# same NBD hop, no cvol), and straight through librbd (fio's rbd engine: the path QEMU's
# own rbd driver takes, no NBD hop and no cvol process in between); and the time
# `cvol disk snapshot` and `cvol disk clone` take on a 1 GiB and a 100 GiB disk (median of
# 5). One single-node Ceph cluster (memstore OSD) started here on loopback.
#
#   ./scripts/bench-rbd.sh [RUNTIME_SECONDS]     (default 10 s per fio job)
#
# Prints Markdown for BENCHMARKS.md. Needs Ceph and fio (./scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-rbd.XXXXXX)
sock=$work/nbd.sock
server_pid= ceph_pids= qemu_pid= service_pid=
cleanup() {
    [[ -z $qemu_pid ]] || kill "$qemu_pid" 2>/dev/null || true
    [[ -z $service_pid ]] || kill "$service_pid" 2>/dev/null || true
    stop_mounted
    # shellcheck disable=SC2086
    [[ -z $ceph_pids ]] || kill -9 $ceph_pids 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
start_ceph "$work/ceph"

export CVOL_SHARE=$work/share
mkdir -p "$CVOL_SHARE"
"$cvol" datastore create --name bench --provider pool=rbd:rbd --setting "pool.conf=$CEPH_CONF" >/dev/null
"$cvol" vm create bench --disk 1G >/dev/null
image=$("$cvol" --json disk list bench | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["volume"])')

# fio_job ENGINE_ARGS... : MiB/s of one job (reads plus writes), after a 1 s ramp.
fio_job() {
    fio --name=job --size=1G --time_based --runtime="$runtime" --ramp_time=1 \
        --output-format=terse --terse-version=3 "$@" |
        awk -F';' 'NF > 50 { v = ($7 + $48) / 1024 } END { printf "%.1f", v }'
}
jobs=("4k random write QD16|--rw=randwrite --bs=4k --iodepth=16"
    "4k random read QD16|--rw=randread --bs=4k --iodepth=16"
    "1M sequential read QD4|--rw=read --bs=1M --iodepth=4"
    "1M sequential write QD4|--rw=write --bs=1M --iodepth=4")
# Every byte written once, so reads read data.
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" --size=1G \
    --rw=write --bs=4M --iodepth=4 >/dev/null
declare -A direct nbd
for job in "${jobs[@]}"; do
    # shellcheck disable=SC2086
    direct[${job%%|*}]=$(fio_job --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" ${job#*|})
done
# The same NBD hop without cvol: qemu-nbd serving the image through QEMU's rbd driver.
qsock=$work/qemu-nbd.sock
qemu-nbd --persistent --shared=8 --format=raw --cache=writeback --socket="$qsock" \
    --export-name=bench "rbd:rbd/$image:conf=$CEPH_CONF" &
qemu_pid=$!
for _ in $(seq 100); do [[ -S $qsock ]] && break; sleep 0.1; done
declare -A qemu
for job in "${jobs[@]}"; do
    # shellcheck disable=SC2086
    qemu[${job%%|*}]=$(fio_job --ioengine=nbd --uri="nbd+unix:///bench?socket=$qsock" ${job#*|})
done
kill "$qemu_pid"
wait "$qemu_pid" || true
mount_nbd "$CVOL_SHARE"
for job in "${jobs[@]}"; do
    # shellcheck disable=SC2086
    nbd[${job%%|*}]=$(fio_job --ioengine=nbd --uri="nbd+unix:///bench/bench?socket=$sock" ${job#*|})
done
stop_mounted

echo "| job | cvol (NBD) | qemu-nbd (rbd driver) | librbd (fio rbd engine) | cvol / qemu-nbd | cvol / librbd |"
echo "|---|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    awk -v n="$name" -v c="${nbd[$name]}" -v q="${qemu[$name]}" -v d="${direct[$name]}" \
        'BEGIN { printf "| %s | %s MiB/s | %s MiB/s | %s MiB/s | %.2fx | %.2fx |\n", n, c, q, d, c / q, c / d }'
done

# snapshot_and_clone SIZE: median ms of `cvol disk snapshot` and of `cvol disk clone`.
echo
echo "| disk | snapshot (median of 5) | clone (median of 5) |"
echo "|---|---:|---:|"
for size in 1G 100G; do
    vm=s$size
    "$cvol" vm create "$vm" --disk "$size" >/dev/null
    "$cvol" vm create "c$size" >/dev/null
    snaps= clones=
    for i in 1 2 3 4 5; do
        snaps+=" $(seconds "$cvol" disk snapshot "$vm/$vm" "t$i")"
        clones+=" $(seconds "$cvol" disk clone "$vm/$vm@t$i" "c$size/d$i")"
    done
    awk -v s="$size" -v a="$(median "$snaps")" -v b="$(median "$clones")" \
        'BEGIN { printf "| %s | %.1f ms | %.1f ms |\n", s, a * 1000, b * 1000 }'
done

# Walks: `vm list` and `datastore fsck` of 50 VMs (one 64 MiB disk each), on the rbd
# pool and, as the peer, on a file pool; median of 3.
echo
echo "| 50 VMs, median of 3 | rbd pool | file pool | rbd / file |"
echo "|---|---:|---:|---:|"
declare -A walk
for kind in rbd file; do
    export CVOL_SHARE=$work/walk-$kind
    mkdir -p "$CVOL_SHARE" "$work/walk-pool"
    case $kind in
    rbd) "$cvol" datastore create --name walk --provider pool=rbd:rbd --setting "pool.conf=$CEPH_CONF" >/dev/null ;;
    file) "$cvol" datastore create --name walk --provider "pool=file:$work/walk-pool" >/dev/null ;;
    esac
    for i in $(seq 50); do "$cvol" vm create "w$i" --disk 64M >/dev/null; done
    lists= fscks=
    for _ in 1 2 3; do
        lists+=" $(seconds "$cvol" vm list)"
        fscks+=" $(seconds "$cvol" datastore fsck)"
    done
    walk[$kind,list]=$(median "$lists") walk[$kind,fsck]=$(median "$fscks")
done
for op in "vm list|list" "datastore fsck|fsck"; do
    awk -v n="${op%%|*}" -v r="${walk[rbd,${op#*|}]}" -v f="${walk[file,${op#*|}]}" \
        'BEGIN { printf "| %s | %.3f s | %.3f s | %.1fx |\n", n, r, f, r / f }'
done
# The peer on the same pool: the rbd tool's long listing opens every image too.
lists=
for _ in 1 2 3; do lists+=" $(seconds rbd ls -l rbd)"; done
echo "| \`rbd ls -l\` of the pool ($(rbd ls rbd | wc -l) images) | $(median "$lists") s | | |"

# The control plane's own time, without a CLI's start and connection: the same calls on
# the provider service's API (`cvol provider serve --pool rbd:rbd`), from a client that
# stays connected as a cloud control plane does; on the default monitor, then on one that
# proposes changes every 10 ms instead of every second (an RBD snapshot id is a monitor
# change).
"$cvol" provider serve --pool rbd:rbd --listen 127.0.0.1:0 >"$work/service.url" &
service_pid=$!
wait_output "$work/service.url"
url=$(head -1 "$work/service.url")
hex32() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
# api PATH JSON: seconds one POST took.
api() {
    curl -sf -o /dev/null -w '%{time_total}' -X POST -H 'content-type: application/json' \
        -d "$2" "$url/v1$1"
}
echo
echo "| monitor | disk | snapshot via the API (median of 5) | clone via the API (median of 5) | \`rbd snap create\` (median of 5) |"
echo "|---|---|---:|---:|---:|"
for monitor in "default (1 s)" "10 ms"; do
    if [[ $monitor == "10 ms" ]]; then
        ceph tell mon.a injectargs --paxos_propose_interval=0.01 >/dev/null 2>&1
    fi
    for size in 1 100; do
        id=vol-$(hex32)
        api /volumes "{\"id\": \"$id\", \"owner\": \"bench\", \"size\": $((size << 30))}" >/dev/null
        snaps= clones= tool=
        for i in 1 2 3 4 5; do
            snaps+=" $(api "/volumes/$id/snapshots" "{\"name\": \"t$i\"}")"
            clones+=" $(api /volumes "{\"id\": \"vol-$(hex32)\", \"owner\": \"bench\", \"source\": {\"volume\": \"$id\", \"snapshot\": \"t$i\"}}")"
            tool+=" $(seconds rbd snap create --no-progress "rbd/$id@r$i")"
        done
        awk -v m="$monitor" -v s="$size GiB" -v a="$(median "$snaps")" -v b="$(median "$clones")" -v t="$(median "$tool")" \
            'BEGIN { printf "| %s | %s | %.1f ms | %.1f ms | %.1f ms |\n", m, s, a * 1000, b * 1000, t * 1000 }'
    done
done
kill "$service_pid"
