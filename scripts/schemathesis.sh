#!/usr/bin/env bash
# Runs schemathesis (property-based API testing, from PyPI) against a real
# `cvol provider serve` with the OpenAPI file in the repo: every generated request, valid
# or not, must get an answer the file documents, and never a 5xx.
# Usage: scripts/schemathesis.sh [EXAMPLES_PER_OPERATION]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

examples=${1:-100}
version=4.32.5
venv=target/schemathesis-venv
if [[ ! -x $venv/bin/st ]] || ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
    python3 -m venv "$venv" 2>/dev/null || { ensure_packages python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

cargo build -q --bin cvol
work=$(mktemp -d)
service_pid=""
cleanup() {
    [[ -n $service_pid ]] && kill "$service_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/pool"
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token")
target/debug/cvol provider serve --pool "file:$work/pool" --token-file "$work/token" \
    >"$work/url" 2>"$work/service.log" &
service_pid=$!
wait_output "$work/url"
url=$(cat "$work/url")
[[ $url == http://* ]] || { echo "cvol provider serve did not start: $(cat "$work/service.log")" >&2; exit 1; }

# From the scratch directory: schemathesis keeps a cache in the current directory.
schema=$PWD/crates/cvol-provider-service/openapi.yaml
st=$PWD/$venv/bin/st
(cd "$work" && "$st" run "$schema" --url "$url" \
    -H "Authorization: Bearer $(cat "$work/token")" \
    --checks all --max-examples "$examples" --seed "${SCHEMATHESIS_SEED:-$RANDOM}" \
    --report-dir "$work/report" --no-color)
if grep -q ERROR "$work/service.log"; then
    echo "the service logged errors:" >&2
    grep ERROR "$work/service.log" >&2
    exit 1
fi
