#!/usr/bin/env bash
# What cvol's NFS client and container cost on a datastore of N VMs, A/B: two cvol
# binaries are the client in turn (ROUNDS rounds, the order alternating), against one
# `cvol nfs serve` (NEW_BIN) of the same datastore (one 64 MiB thin disk per VM, file
# pool). Each round and client times `vm list` and `datastore fsck` (file contents kept
# from an earlier run, as on any host after its first), then `ls -l` of every VM folder
# through a fresh `cvol mount` of that client (cold), again at once (warm), and a third
# time, then 10 s of idling (what the mount daemon's watch costs); the server's CPU time
# around each (user + system, from /proc) and the RPCs it answered (its --metrics) are
# printed beside it, and the mount daemon's CPU time and RSS after the idling. `nfs-ls -R` (libnfs) of the same tree,
# each round, is the anchor.
#
#   ./scripts/bench-client-ab.sh OLD_BIN NEW_BIN [N] [ROUNDS]
#
# N defaults to 1000, ROUNDS to 3. With LEASES=1 every VM also has a lease (a stopped
# one, as once its VM has run), which fsck reads. Prints one line per client, operation
# and round. Needs libnfs-utils.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
old=$(realpath "$1") new=$(realpath "$2")
vms=${3:-1000}
rounds=${4:-3}
work=$(mktemp -d /var/tmp/cvol-bench-client-ab.XXXXXX)
share=$work/share
mnt=$work/mnt
serve_pid= mount_pid=
cleanup() {
    [[ -z $mount_pid ]] || "$new" umount "$mnt" 2>/dev/null || true
    for pid in $mount_pid $serve_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share" "$work/pool" "$mnt"
vms_datastore "$new" "$share" "$work/pool" "$vms"
[[ ${LEASES:-} != 1 ]] || vm_leases "$share" "$vms"
serve_metered "$new" "$share" "$work"
port=${url##*:}
port=${port%/}
export CVOL_CACHE_DIR=$work/cache
for bin in "$old" "$new"; do
    CVOL_CACHE_DIR=$work/cache-$(basename "$bin") "$bin" --share "$url" vm list >/dev/null
done


# timed NAME OP CMD...: runs CMD, prints its seconds, the server's CPU seconds and the
# RPCs it answered.
timed() {
    local name=$1 op=$2 c0 r0 s c1 r1
    shift 2
    r0=$(rpcs)
    c0=$(cpu_cs "$serve_pid")
    s=$(seconds "$@")
    c1=$(cpu_cs "$serve_pid")
    r1=$(rpcs)
    printf '%s | %s | %s s | server CPU %s s | %s RPCs\n' "$name" "$op" "$s" \
        "$(awk -v c=$((c1 - c0)) 'BEGIN { print c / 100 }')" "$((r1 - r0))"
}
ls_folders() { ls -l "$mnt"/*/ >/dev/null; }

# round NAME BIN: every operation with BIN as the client.
round() {
    local name=$1 bin=$2
    export CVOL_CACHE_DIR=$work/cache-$(basename "$bin")
    timed "$name" "vm list" "$bin" --share "$url" vm list
    timed "$name" "datastore fsck" "$bin" --share "$url" datastore fsck
    "$bin" --share "$url" mount "$mnt" &
    mount_pid=$!
    wait_mounted "$mnt"
    timed "$name" "ls -l, cold" ls_folders
    timed "$name" "ls -l, warm" ls_folders
    timed "$name" "ls -l, third" ls_folders
    local d0 d1
    d0=$(cpu_cs "$mount_pid")
    timed "$name" "idle, 10 s after" sleep 10
    d1=$(cpu_cs "$mount_pid")
    printf '%s | mount daemon | CPU %s s in those 10 s | RSS %s MiB\n' "$name" \
        "$(awk -v c=$((d1 - d0)) 'BEGIN { print c / 100 }')" \
        "$(awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$mount_pid/status")"
    "$bin" umount "$mnt"
    wait "$mount_pid"
    mount_pid=
}

for r in $(seq "$rounds"); do
    if ((r % 2)); then
        round old "$old"
        round new "$new"
    else
        round new "$new"
        round old "$old"
    fi
    timed anchor "nfs-ls -R" nfs-ls -R "nfs://127.0.0.1/?nfsport=$port&mountport=$port"
done
