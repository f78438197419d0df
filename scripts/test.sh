#!/usr/bin/env bash
# Installs everything the tests need (idempotent, quiet; as root on Debian 12) and runs
# the whole suite: formatting, lints, unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Debian packages the tests drive for real: qemu-img and qemu-io (qemu-utils), the FUSE
# helpers (fuse3), fio, the libnbd tools (nbdinfo, nbdcopy), nbdkit, an NFS server
# (rpcbind, nfs-ganesha) and libnfs's tools, and for the boot test QEMU itself, busybox
# and e2fsprogs (all installed together, in matching versions), qemu-storage-daemon (the
# reference vhost-user-blk server the vhost tests compare with), libvirt (the boot test
# boots a VM under it from `cvol vm domxml`), and for the cluster tests
# (hosts in network namespaces) iproute2 and curl, and tcpdump (the TLS test looks for
# the token in a capture of its traffic), and OpenSSL's headers (libssl-dev, pkg-config)
# for NBD's TLS-PSK, which the tests build with `--features cvol/tls-psk`; Ceph's
# monitor, OSD and tools (ceph-mon, ceph-osd, ceph-common, with librbd1) for the `rbd`
# pool's tests, which start a single-node cluster, and QEMU's rbd driver
# (qemu-block-extra), which scripts/bench-rbd.sh compares with. The S3 server (Garage) comes from
# crates.io.
packages=(qemu-utils qemu-system-x86 qemu-system-common fuse3 fio libnbd-bin nbdkit rpcbind nfs-ganesha nfs-ganesha-vfs libnfs-utils
    busybox-static e2fsprogs iproute2 curl tcpdump libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    libssl-dev pkg-config ceph-mon ceph-osd ceph-common librbd1 qemu-block-extra)

ensure_packages "${packages[@]}"
ensure_garage
for c in clippy rustfmt; do
    cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --workspace --all-targets --quiet --features cvol/tls-psk -- -D warnings
cargo test --workspace --features cvol/tls-psk
./scripts/fuzz.sh 20000
./scripts/schemathesis.sh 100
./scripts/e2e-boot.sh
