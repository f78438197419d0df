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

# sample: the server's RPCs and CPU, the agent's CPU, its scans and their seconds.
sample() {
    echo "$(rpcs) $(cpu_cs "$serve_pid") $(cpu_cs "$agent_pid")" \
        "$(agent_metric cvol_cluster_scan_seconds_count) $(agent_metric cvol_cluster_scan_seconds_sum)"
}

# run NAME BIN: BIN's agent for the window; prints its line.
run() {
    local name=$1 bin=$2 before after
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
    before=$(sample)
    sleep "$window"
    after=$(sample)
    kill "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=
    "$bin" umount "$work/host/mnt" 2>/dev/null || true
    printf '%s\n%s\n' "$before" "$after" | awk -v n="$name" -v w="$window" '
        NR == 1 { split($0, b) }
        NR == 2 {
            printf "%s | %.0f RPC/s | server CPU %.1f %% | agent CPU %.1f %%", n, ($1 - b[1]) / w, ($2 - b[2]) / w, ($3 - b[3]) / w
            if ($4 > b[4]) printf " | %d scans, %.2f s each", $4 - b[4], ($5 - b[5]) / ($4 - b[4])
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
