#!/usr/bin/env bash
# Installs everything the tests need (idempotent, quiet; as root on Debian 12) and runs
# the whole suite: formatting, lints, unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: qemu-img and qemu-io (qemu-utils), the FUSE
# helpers (fuse3), fio, the libnbd tools (nbdinfo, nbdcopy) and nbdkit.
packages=(qemu-utils fuse3 fio libnbd-bin nbdkit)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for c in clippy rustfmt; do
    cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
