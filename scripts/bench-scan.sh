#!/usr/bin/env bash
# What a host agent's scan of every lease costs on a datastore of N leases, A/B: two cvol
# binaries run `cvol host run` in turn (ROUNDS rounds, the order alternating) for SECONDS
# each, against one `cvol nfs serve` (NEW_BIN) of a share where every one of N VMs has a
# stopped lease (as once its VM has run). For each run: the RPCs per second the server
# answered (its --metrics), the server's and the agent's CPU (user + system, from /proc),
# and, where the binary counts them (cvol_cluster_scan_seconds), the scans and their mean
# time. The first WARMUP seconds (default 10: the first scan reads every lease once) are
# left out.
#
#   ./scripts/bench-scan.sh OLD_BIN NEW_BIN [N] [ROUNDS] [SECONDS]
#
# N defaults to 1000, ROUNDS to 2, SECONDS to 20. As root (the agent mounts its
# container). Prints one line per binary and round.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
old=$(realpath "$1") new=$(realpath "$2")
vms=${3:-1000}
rounds=${4:-2}
window=${5:-20}
warmup=${WARMUP:-10}
work=$(mktemp -d /var/tmp/cvol-bench-scan.XXXXXX)
share=$work/share
serve_pid= agent_pid=
cleanup() {
    [[ -z $agent_pid ]] || kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
    "$new" umount "$work/host/mnt" 2>/dev/null || true
    [[ -z $serve_pid ]] || kill "$serve_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share" "$work/pool"
"$new" --share "$share" datastore create --name scan --provider "pool=file:$work/pool" >/dev/null
vm_leases "$share" "$vms"
serve_metered "$new" "$share" "$work"

agent_metric() { # NAME: the agent's value of metric NAME, 0 if it has none
    curl -sf "http://127.0.0.1:$agent_metrics/metrics" |
        awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

# run NAME BIN: BIN's agent for the window; prints its line.
run() {
    local name=$1 bin=$2 r0 r1 s0 s1 a0 a1 scans0 scans1 sum0 sum1
    rm -rf "$work/host"
    mkdir -p "$work/host/mnt"
    agent_metrics=$(free_port)
    "$bin" --share "$url" --host-id bench --cache-dir "$work/cache-$(basename "$bin")" host run \
        --mountpoint "$work/host/mnt" --state-dir "$work/host/state" \
        --metrics "127.0.0.1:$agent_metrics" 2>"$work/agent.log" &
    agent_pid=$!
    wait_mounted "$work/host/mnt"
    # Past the first scan, which reads every lease (the old binary does not say when
    # it is done).
    sleep "$warmup"
    r0=$(rpcs) s0=$(cpu_cs "$serve_pid") a0=$(cpu_cs "$agent_pid")
    scans0=$(agent_metric cvol_cluster_scan_seconds_count)
    sum0=$(agent_metric cvol_cluster_scan_seconds_sum)
    sleep "$window"
    r1=$(rpcs) s1=$(cpu_cs "$serve_pid") a1=$(cpu_cs "$agent_pid")
    scans1=$(agent_metric cvol_cluster_scan_seconds_count)
    sum1=$(agent_metric cvol_cluster_scan_seconds_sum)
    kill "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=
    "$bin" umount "$work/host/mnt" 2>/dev/null || true
    awk -v n="$name" -v r=$((r1 - r0)) -v w="$window" -v s="$s0" -v S="$s1" -v a="$a0" -v A="$a1" \
        -v c="$scans0" -v C="$scans1" -v u="$sum0" -v U="$sum1" 'BEGIN {
            printf "%s | %.0f RPC/s | server CPU %.1f %% | agent CPU %.1f %%", n, r / w, (S - s) / w, (A - a) / w
            if (C > c) printf " | %d scans, %.2f s each", C - c, (U - u) / (C - c)
            print ""
        }'
}

for r in $(seq "$rounds"); do
    if ((r % 2)); then
        run old "$old"
        run new "$new"
    else
        run new "$new"
        run old "$old"
    fi
done
