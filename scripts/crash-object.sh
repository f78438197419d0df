#!/usr/bin/env bash
# Crash test of object pools at length: CYCLES times, kill -9 the host daemon at a random
# moment while a writer writes 64 KiB blocks and fsyncs every 8, then mount again and
# check that the disk reads back exactly as of a completed flush (never a mix), on
# Garage (S3) and on a file:/// store. The test suite runs 5 cycles of each.
#
#   ./scripts/crash-object.sh [CYCLES]     (default 100)
#
# Needs what ./scripts/test.sh installs (garage, fuse3).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-100}
CVOL_CRASH_CYCLES=$cycles cargo test --quiet -p cvol --test object kill_9 -- --nocapture --test-threads=1 2>&1 |
    grep -E "kill -9 cycles|test result|panicked|FAILED"
