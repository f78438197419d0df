#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for N executions each, on the stable toolchain.
#
#   ./scripts/fuzz.sh [N] [TARGET...]     (default 100000 executions, every target)
#
# The targets are built as cargo-fuzz builds them with `--sanitizer none` (libFuzzer with
# SanitizerCoverage, no nightly needed); with RUSTC_BOOTSTRAP=1 in the environment they
# are built with AddressSanitizer as well, as oss-fuzz does. Each target keeps its corpus
# in target/fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET) and its crashes in
# target/fuzz/artifacts/TARGET (target/fuzz-asan/… with AddressSanitizer); the inputs of crashes found and fixed are kept in
# fuzz/regressions/TARGET and run first, every time. Exits non-zero on the first crash.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100000}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
out=$PWD/target/fuzz
if [[ -n ${RUSTC_BOOTSTRAP:-} ]]; then
    flags+=" -Zsanitizer=address"
    out=$PWD/target/fuzz-asan
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^cvol-fuzz$')
fi
# --target keeps the flags off build scripts and proc macros.
(cd fuzz && RUSTFLAGS=$flags CARGO_TARGET_DIR=$out cargo build --quiet --release --target "$host" \
    $(printf -- '--bin %s ' "${targets[@]}"))
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t artifacts=$out/artifacts/$t/
    mkdir -p "$corpus" "$artifacts"
    if [[ -d fuzz/regressions/$t ]]; then
        "$out/$host/release/$t" -runs=0 fuzz/regressions/$t/* >/dev/null 2>&1 ||
            { echo "fuzz $t: a kept regression input fails again" >&2; exit 1; }
    fi
    seeds=()
    [[ -d fuzz/seeds/$t ]] && seeds=("fuzz/seeds/$t")
    start=$SECONDS
    if ! "$out/$host/release/$t" -runs="$runs" -artifact_prefix="$artifacts" "$corpus" "${seeds[@]}" \
        >"$out/$t.log" 2>&1; then
        tail -n 30 "$out/$t.log" >&2
        echo "fuzz $t: crashed; the input is in $artifacts" >&2
        exit 1
    fi
    echo "fuzz $t: $runs executions in $((SECONDS - start)) s, $(grep -ao 'cov: [0-9]*' "$out/$t.log" | tail -1), corpus $(find "$corpus" -type f | wc -l)"
done
