#!/usr/bin/env bash
# Cluster benchmark, with hosts in network namespaces (crates/cvol/tests/cluster.rs) and
# the default lease timing (renew 2 s, fence after 10 s, expiry 16 s):
#
# - failover: RUNS times (default 20), an HA VM's host is partitioned (its link goes
#   down); the time until the VM's QEMU runs on another host and until the restarted
#   guest's first write, and when the partitioned host killed its own QEMU;
# - the start race: two agents start one VM at the same instant, ROUNDS rounds (default
#   200): exactly one wins each (the test asserts it);
# - steady state: one agent with 0 and then IDLE (default 100) idle VMs running: share
#   requests per second, agent CPU and RSS.
#
#   ./scripts/bench-failover.sh [RUNS] [ROUNDS] [IDLE]
#
# Prints Markdown for BENCHMARKS.md. Needs what ./scripts/test.sh installs; as root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20} rounds=${2:-200} idle=${3:-100}
cargo test --quiet -p cvol --test cluster --no-run 2>/dev/null
log=$(mktemp /var/tmp/cvol-bench-failover.XXXXXX)
trap 'rm -f "$log"' EXIT

for i in $(seq "$runs"); do
    cargo test --quiet -p cvol --test cluster -- --nocapture --exact \
        a_partitioned_hosts_ha_vm_runs_elsewhere_and_the_host_fences_itself 2>&1 |
        grep '^Partition' >>"$log" || { echo "run $i failed" >&2; exit 1; }
    echo "failover run $i/$runs: $(tail -1 "$log")" >&2
done
CVOL_RACE_ROUNDS=$rounds cargo test --quiet -p cvol --test cluster -- --nocapture --exact \
    two_agents_starting_one_vm_at_once_exactly_one_runs_it 2>&1 | grep 'rounds:' >"$log.race"
CVOL_IDLE_VMS=$idle cargo test --quiet -p cvol --test cluster -- --ignored --nocapture --exact \
    steady_state_cost_of_idle_vms 2>&1 | grep '^steady state' >"$log.idle"

# "Partition (File pool): h1's QEMU gone after 9.0s; the VM ran on h2 after 15.2s, first write after 17.4s"
stats() { # column: prints median and max of the seconds in that field
    sed -E 's/[^0-9.]+([0-9.]+)(ms|s)[^0-9.]+([0-9.]+)(ms|s)[^0-9.]+([0-9.]+)(ms|s).*/\1 \2 \3 \4 \5 \6/' "$log" |
        awk -v c="$1" '{ v = $(2 * c - 1); if ($(2 * c) == "ms") v /= 1000; print v }' | sort -n |
        awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.1f s | %.1f s", m, a[NR] }'
}
echo "| $(date -u +%F) | $(nproc) vCPU $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo) | $runs runs |"
echo
echo "| from the partition to | median | max |"
echo "|---|---:|---:|"
echo "| the partitioned host's QEMU killed (self-fence) | $(stats 1) |"
echo "| the VM's QEMU running on another host | $(stats 2) |"
echo "| the restarted guest's first write | $(stats 3) |"
echo
echo "start race: $(cat "$log.race")"
echo
sed 's/^/- /' "$log.idle"
rm -f "$log.race" "$log.idle"
