#!/usr/bin/env bash
# Live migration benchmark: total time and guest downtime (QEMU's `downtime` from
# query-migrate) of RUNS migrations (default 20) of a 256 MiB guest that writes a counter
# to its disk (O_DIRECT + fsync per step):
#
# - cvol: `cvol vm migrate` between two host agents in network namespaces (veth and a
#   bridge), the disk in a file pool behind `cvol provider serve`, reached through each
#   host's container (crates/cvol/tests/cluster.rs, a_running_vm_moves_back_and_forth…);
# - anchor: the same QEMU and guest migrating between two plain QEMU processes on
#   loopback, its disk a local raw file, over QMP (the same capabilities cvol sets:
#   pause-before-switchover on the source, late-block-activate on the destination).
#
#   ./scripts/bench-migrate.sh [RUNS]
#
# Prints Markdown for BENCHMARKS.md. Needs what ./scripts/test.sh installs; as root.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runs=${1:-20}
work=$(mktemp -d /var/tmp/cvol-bench-migrate.XXXXXX)
trap 'pkill -f "qemu-system-x86_64 -name anchor" 2>/dev/null || true; rm -rf "$work"' EXIT

CVOL_MIGRATIONS=$runs cargo test --quiet -p cvol --test cluster -- --nocapture --exact \
    a_running_vm_moves_back_and_forth_between_two_hosts >"$work/test.log" 2>&1 ||
    { tail -n 40 "$work/test.log" >&2; exit 1; }
sed -n 's/^migration [0-9]*: .* in \([0-9]*\) ms, downtime \([0-9]*\) ms, handover \([0-9]*\) ms$/\1 \2 \3/p' "$work/test.log" >"$work/cvol"
[[ $(wc -l <"$work/cvol") -eq $runs ]] || { echo "the cvol migrations did not all run" >&2; exit 1; }

counter_guest "$work/guest"
truncate -s 16M "$work/disk.raw"
python3 - "$work" "$kernel" "$runs" >"$work/anchor" <<'PY'
import json, os, socket, subprocess, sys, time
work, kernel, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])

def qemu(name, extra):
    qmp = f"{work}/{name}.qmp"
    if os.path.exists(qmp):
        os.unlink(qmp)
    proc = subprocess.Popen(["qemu-system-x86_64", "-name", "anchor", "-machine", "q35,accel=tcg",
        "-m", "256", "-smp", "1", "-kernel", kernel, "-initrd", f"{work}/guest/initrd.gz",
        "-append", "console=ttyS0 panic=-1",
        "-drive", f"file={work}/disk.raw,format=raw,if=virtio,cache=none",
        "-qmp", f"unix:{qmp},server=on,wait=off", "-display", "none",
        "-serial", f"file:{work}/{name}.console"] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(qmp); break
        except OSError:
            time.sleep(0.05)
    f = s.makefile("rw")
    f.readline()
    def call(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n"); f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply
    call("qmp_capabilities")
    return proc, call

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

src, src_call = qemu("a", [])
time.sleep(3)  # the guest boots and counts
for i in range(runs):
    p = port()
    dst, dst_call = qemu(f"b{i % 2}", ["-incoming", "defer", "-S"])
    dst_call("migrate-set-capabilities", capabilities=[{"capability": "late-block-activate", "state": True}])
    dst_call("migrate-incoming", uri=f"tcp:127.0.0.1:{p}")
    src_call("migrate-set-capabilities", capabilities=[{"capability": "pause-before-switchover", "state": True}])
    start = time.monotonic()
    src_call("migrate", uri=f"tcp:127.0.0.1:{p}")
    while True:
        info = src_call("query-migrate")["return"]
        status = info.get("status")
        if status == "pre-switchover":
            src_call("migrate-continue", state="pre-switchover")
        elif status == "completed":
            break
        elif status in ("failed", "cancelled"):
            sys.exit(f"anchor migration {i} {status}: {info}")
        time.sleep(0.02)
    completed = time.monotonic()
    dst_call("cont")
    handover = (time.monotonic() - completed) * 1000
    total = (time.monotonic() - start) * 1000
    print(f"{total:.0f} {info.get('downtime', 0)} {handover:.0f}")
    src_call("quit"); src.wait()
    src, src_call = dst, dst_call
    time.sleep(0.5)
src_call("quit"); src.wait()
PY

stats() { # FILE COLUMN: median and max
    awk -v c="$2" '{ print $c }' "$1" | sort -n |
        awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%d ms | %d ms", m, a[NR] }'
}
median() { awk -v c="$2" '{ print $c }' "$1" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "$(date -u +%F), $(nproc) vCPU $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $runs migrations each, 256 MiB guest (TCG)"
echo
echo "| | total median | total max | QEMU downtime median | max | hand-over median | max |"
echo "|---|---:|---:|---:|---:|---:|---:|"
echo "| cvol vm migrate (namespaces, file pool via the service, container) | $(stats "$work/cvol" 1) | $(stats "$work/cvol" 2) | $(stats "$work/cvol" 3) |"
echo "| anchor: QEMU to QEMU, loopback, local raw file | $(stats "$work/anchor" 1) | $(stats "$work/anchor" 2) | $(stats "$work/anchor" 3) |"
echo
# The guest is stopped for QEMU's downtime and then the hand-over (completion to cont).
for f in cvol anchor; do awk '{ print $2 + $3 }' "$work/$f" >"$work/$f.stopped"; done
awk -v c="$(median "$work/cvol" 2)" -v a="$(median "$work/anchor" 2)" \
    'BEGIN { printf "QEMU downtime, median: %.2fx the anchor'"'"'s\n", (a > 0 ? c / a : 0) }'
awk -v c="$(median "$work/cvol.stopped" 1)" -v a="$(median "$work/anchor.stopped" 1)" \
    'BEGIN { printf "guest stopped (downtime + hand-over), median: cvol %d ms, anchor %d ms, %.2fx\n", c, a, (a > 0 ? c / a : 0) }'
