#!/usr/bin/env bash
# Metadata at scale: N VMs (one 64 MiB thin disk each, file pool) listed, checked and
# browsed, with the share served by `cvol nfs serve` and by nfs-ganesha over the same
# directory, and the same commands on the directory itself. `ls -l` of every VM folder
# runs through a fresh container (cold), then again at once (warm, within the attribute
# cache); `nfs-ls -R` (libnfs) of the same tree on each server, and `ls -l` of the plain
# directory, are the anchors for it.
# RPCs per operation are counted by `cvol nfs serve` itself (its --metrics endpoint).
#
#   ./scripts/bench-scale.sh [VMS] [ROUNDS]     (defaults 1000 and 3; medians)
#
# Prints a Markdown table for BENCHMARKS.md. Needs nfs-ganesha, libnfs-utils.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
vms=${1:-1000}
rounds=${2:-3}
cargo build --release --quiet --bin cvol
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-scale.XXXXXX)
export_dir=$work/export
share=$export_dir/share
mnt=$work/mnt
serve_pid= ganesha_pid= mount_pid=
cleanup() {
    "$cvol" umount "$mnt" 2>/dev/null || true
    for pid in $mount_pid $serve_pid $ganesha_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share" "$work/pool" "$mnt"
# Made before the servers start: ganesha caches directories and does not see what
# changes behind its back.
vms_datastore "$cvol" "$share" "$work/pool" "$vms"

serve_metered "$cvol" "$share" "$work"
start_ganesha "$work" "$export_dir"
cvol_url=$url
unset url
declare -A url=(
    [cvol]=$cvol_url
    [ganesha]="nfs://127.0.0.1:$nfs_port$share?mountport=$mount_port"
    [local]=$share
)
cvol_port=${url[cvol]##*:}
cvol_port=${cvol_port%/}
declare -A libnfs=(
    [cvol]="nfs://127.0.0.1/?nfsport=$cvol_port&mountport=$cvol_port"
    [ganesha]="nfs://127.0.0.1$share?nfsport=$nfs_port&mountport=$mount_port"
)

declare -A time calls
# record SERVER OPERATION CMD...: runs CMD, adds its seconds (and, on cvol's server, the
# RPCs it cost) to the operation's samples.
record() {
    local server=$1 op=$2 before
    shift 2
    before=$(rpcs)
    time[$server,$op]+="$(seconds "$@") "
    [[ $server != cvol ]] || calls[$op]=$(($(rpcs) - before))
}
ls_folders() { ls -l "$mnt"/*/ >/dev/null; }
find_descriptors() { find "$mnt" -name '*.vmdk' ! -name '*-flat.vmdk' >/dev/null; }

# What cvol keeps between runs (--cache-dir) is the bench's own: one run per server fills
# it, and `vm list` is also timed with nothing kept (a host's first run).
export CVOL_CACHE_DIR=$work/cache
for server in cvol ganesha; do
    "$cvol" --share "${url[$server]}" vm list >/dev/null
done

declare -A rss
for _ in $(seq "$rounds"); do
    for server in cvol ganesha local; do
        record "$server" "vm list, nothing kept from earlier runs" \
            "$cvol" --cache-dir '' --share "${url[$server]}" vm list
        record "$server" "vm list" "$cvol" --share "${url[$server]}" vm list
        record "$server" "vm list --json" "$cvol" --share "${url[$server]}" --json vm list
        record "$server" "datastore fsck" "$cvol" --share "${url[$server]}" datastore fsck
        # A fresh container each round: nothing cached.
        "$cvol" --share "${url[$server]}" mount "$mnt" &
        mount_pid=$!
        wait_mounted "$mnt"
        record "$server" "ls -l of every VM folder, cold" ls_folders
        record "$server" "ls -l of every VM folder, warm" ls_folders
        record "$server" "find every descriptor, warm" find_descriptors
        rss[$server]=$(($(ps -o rss= -p "$mount_pid") / 1024))
        "$cvol" umount "$mnt"
        wait "$mount_pid"
        mount_pid=
        if [[ $server == local ]]; then
            record local "ls -l of every VM folder, plain directory" ls -l "$share"/*/
        else
            record "$server" "nfs-ls -R (libnfs)" nfs-ls -R "${libnfs[$server]}"
        fi
    done
done

echo "| $vms VMs, median of $rounds | cvol nfs serve s | RPCs | nfs-ganesha s | local dir s |"
echo "|---|---:|---:|---:|---:|"
for op in "vm list, nothing kept from earlier runs" "vm list" "vm list --json" "datastore fsck" "ls -l of every VM folder, cold" \
    "ls -l of every VM folder, warm" "find every descriptor, warm" "nfs-ls -R (libnfs)" \
    "ls -l of every VM folder, plain directory"; do
    printf '| %s | %s | %s | %s | %s |\n' "$op" "$(median "${time[cvol,$op]:-}")" "${calls[$op]:-}" \
        "$(median "${time[ganesha,$op]:-}")" "$(median "${time[local,$op]:-}")"
done
printf '| mount daemon RSS, MiB | %s | | %s | %s |\n' "${rss[cvol]}" "${rss[ganesha]}" "${rss[local]}"
echo "cvol nfs serve RSS: $(($(ps -o rss= -p "$serve_pid") / 1024)) MiB"
