#!/usr/bin/env bash
# What `cvol nfs serve` costs per call, A/B: two cvol binaries serve the same tree of N
# VM-like folders (one datastore VM copied N times: a .vmx and a descriptor each), in
# turn, ROUNDS rounds; each round times `nfs-ls -R` (libnfs: a READDIRPLUS per folder
# and a few calls more) and a `vm list` whose file contents are kept from an earlier run
# (one READDIRPLUS per VM folder), and reads the server's CPU time (user + system, from
# /proc) around each. The server's RSS after the round is printed too.
#
#   ./scripts/bench-nfs-serve-cpu.sh OLD_BIN NEW_BIN [N] [ROUNDS] [SERVE_ARGS...]
#
# N defaults to 10000, ROUNDS to 3; SERVE_ARGS go to both servers. The client is always
# NEW_BIN. Prints one line per server and round. Needs libnfs-utils.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
old=$(realpath "$1") new=$(realpath "$2")
vms=${3:-10000}
rounds=${4:-3}
serve_args=("${@:5}")
work=$(mktemp -d /var/tmp/cvol-bench-nfs-serve-cpu.XXXXXX)
share=$work/share
serve_pid=
cleanup() {
    [[ -z $serve_pid ]] || kill "$serve_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share" "$work/pool"
"$new" --share "$share" datastore create --name cpu --provider "pool=file:$work/pool" >/dev/null
"$new" --share "$share" vm create vm1 --disk 64M >/dev/null
for i in $(seq 2 "$vms"); do cp -r "$share/vm1" "$share/vm$i"; done
export CVOL_CACHE_DIR=$work/cache


# round NAME BIN: serves the tree with BIN and prints one line of figures.
round() {
    local name=$1 bin=$2 url port c0 c1 c2 ls_s list_s
    rm -f "$work/url"
    "$bin" nfs serve --no-root-squash "${serve_args[@]}" "$share" >"$work/url" 2>"$work/serve.log" &
    serve_pid=$!
    wait_output "$work/url"
    url=$(cat "$work/url")
    port=${url##*:}
    port=${port%/}
    # Fills the kept contents (their handles are this server's).
    "$new" --share "$url" vm list >/dev/null
    c0=$(cpu_cs "$serve_pid")
    ls_s=$(seconds nfs-ls -R "nfs://127.0.0.1/?nfsport=$port&mountport=$port")
    c1=$(cpu_cs "$serve_pid")
    list_s=$(seconds "$new" --share "$url" vm list)
    c2=$(cpu_cs "$serve_pid")
    printf '%s: nfs-ls -R %s s, server CPU %s s; vm list %s s, server CPU %s s; server RSS %s MiB\n' \
        "$name" "$ls_s" "$(awk -v c=$((c1 - c0)) 'BEGIN { print c / 100 }')" \
        "$list_s" "$(awk -v c=$((c2 - c1)) 'BEGIN { print c / 100 }')" \
        "$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$serve_pid/status")"
    kill "$serve_pid"
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=
}

for _ in $(seq "$rounds"); do
    round old "$old"
    round new "$new"
done
