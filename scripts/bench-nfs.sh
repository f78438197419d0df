#!/usr/bin/env bash
# Metadata benchmark of the container on an NFS share: `ls -l` over 1,000 VM namespaces,
# and creating and removing 1,000 small files, through the container whose share is on
# nfs-ganesha, against libnfs's nfs-ls / nfs-cp on the same export and the same commands
# on the exported directory itself, in one run, so that only ratios matter.
#
#   ./scripts/bench-nfs.sh [ROUNDS]     (default 5; each figure is the median)
#
# Prints a Markdown table for BENCHMARKS.md. Needs rpcbind, nfs-ganesha(-vfs) and
# libnfs-utils (./scripts/test.sh installs them); run as root (ganesha).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
rounds=${1:-5}
cargo build --release --quiet
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-nfs.XXXXXX)
export_dir=$work/export
mnt=$work/mnt
ganesha_pid=
cleanup() {
    "$cvol" umount "$mnt" 2>/dev/null || true
    [[ -z $ganesha_pid ]] || kill "$ganesha_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$export_dir" "$work/pool" "$mnt" "$work/local"
# The namespaces are made before ganesha starts: it caches directories and does not see
# what changes behind its back. The same tree, unexported, is the local peer's.
for i in $(seq 1000); do
    for top in "$export_dir" "$work/local"; do
        mkdir "$top/vm$i"
        printf 'displayName = "vm%s"\nmemSize = "1024"\n' "$i" >"$top/vm$i/vm$i.vmx"
    done
done
start_ganesha "$work" "$export_dir"
export CVOL_SHARE="nfs://127.0.0.1:$nfs_port$export_dir?mountport=$mount_port"
libnfs="nfs://127.0.0.1$export_dir"
ports="nfsport=$nfs_port&mountport=$mount_port"
"$cvol" datastore create --name bench --provider "pool=file:$work/pool" >/dev/null
src=$work/small.txt
printf 'a small metadata file\n' >"$src"


create_files() { # DIR: one cp per file, as a tool run per file would
    local i
    for i in $(seq 1000); do cp "$src" "$1/f$i.txt"; done
}
remove_files() { # DIR
    local i
    for i in $(seq 1000); do rm "$1/f$i.txt"; done
}
nfs_create_files() { # ROUND: into vm2, under names of their own (libnfs has no rm)
    local i
    for i in $(seq 1000); do nfs-cp "$src" "$libnfs/vm2/f$1-$i.txt?$ports"; done
}

declare -a ls_c ls_n ls_l mk_c mk_n mk_l rm_c rm_l
for round in $(seq "$rounds"); do
    # A fresh mount each round: nothing cached, as for a fresh nfs-ls process.
    "$cvol" mount "$mnt" &
    mount_pid=$!
    wait_mounted "$mnt"
    ls -l "$mnt" | grep -c '^d' | grep -qx 1000 || { echo "the container lists no 1,000 VMs" >&2; exit 1; }
    "$cvol" umount "$mnt"
    wait "$mount_pid"
    "$cvol" mount "$mnt" &
    mount_pid=$!
    wait_mounted "$mnt"
    ls_c+=("$(seconds ls -l "$mnt")")
    mk_c+=("$(seconds create_files "$mnt/vm1")")
    rm_c+=("$(seconds remove_files "$mnt/vm1")")
    "$cvol" umount "$mnt"
    wait "$mount_pid"
    ls_n+=("$(seconds nfs-ls "$libnfs?$ports")")
    mk_n+=("$(seconds nfs_create_files "$round")")
    ls_l+=("$(seconds ls -l "$work/local")")
    mk_l+=("$(seconds create_files "$work/local/vm1")")
    rm_l+=("$(seconds remove_files "$work/local/vm1")")
done

row() { # NAME CONTAINER NFS_TOOLS LOCAL
    awk -v name="$1" -v c="$2" -v n="$3" -v l="$4" 'BEGIN {
        nfs = (n == "-") ? "-" : sprintf("%.3f", n)
        ratio = (n == "-") ? "-" : sprintf("%.2fx", c / n)
        printf "| %s | %.3f | %s | %s | %.3f | %.2fx |\n", name, c, nfs, ratio, l, c / l }'
}
echo "| 1,000 entries, median of $rounds | container on ganesha s | nfs-ls / nfs-cp s | ratio | local dir s | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
row "ls -l of the VM namespaces" "$(median "${ls_c[*]}")" "$(median "${ls_n[*]}")" "$(median "${ls_l[*]}")"
row "create files (a cp / nfs-cp each)" "$(median "${mk_c[*]}")" "$(median "${mk_n[*]}")" "$(median "${mk_l[*]}")"
row "remove files (an rm each)" "$(median "${rm_c[*]}")" "-" "$(median "${rm_l[*]}")"
