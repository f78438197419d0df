#!/usr/bin/env bash
# End to end: a real VM boots from a cVol datastore under QEMU.
#
# A datastore whose metadata share is served by nfs-ganesha (and reached by cvol's own
# NFSv3 client) and whose disks are in a file pool gets a VM whose disk is formatted
# *through the file system container* as an ext4 root file system; QEMU opens the VM's descriptor in the container
# (following its extent to the volume), boots a Debian kernel, and the guest writes a
# random token given on its command line to /marker and powers off. After an unmount and
# a remount the token is read back from the disk. Then the same over NBD and over
# vhost-user-blk (guest RAM in shared memory, the daemon serving the virtqueues), and from a
# `cvol disk clone` of the disk (the clone boots, the original is unchanged), and from
# images made outside cvol and brought in by `cvol vm import`. Then QEMU
# runs as an unprivileged user (as under libvirt) after the VM's disk files are chowned
# to it in the container; another user cannot open them, and the ownership survives a
# remount. Last, libvirt (a session libvirtd as that user) boots the VM from `cvol vm
# domxml`.
#
# Installs what it needs from Debian (qemu-system-x86, busybox-static, e2fsprogs,
# rpcbind, nfs-ganesha, libvirt; the cloud kernel is only unpacked, into $CVOL_E2E_CACHE).
# Bounded to 5 minutes; on failure it prints the guest console and server logs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${CVOL_E2E_BOUNDED:-} ]]; then
    CVOL_E2E_BOUNDED=1 exec timeout --kill-after=10 300 "$0" "$@"
fi
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ensure_packages qemu-system-x86 busybox-static e2fsprogs rpcbind nfs-ganesha nfs-ganesha-vfs \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients

t0=$SECONDS
guest_kernel

cargo build --quiet --bin cvol
cvol=$PWD/target/debug/cvol
work=$(mktemp -d /var/tmp/cvol-e2e.XXXXXX)
mnt=$work/mnt
sock=$work/nbd.sock
daemon=
ganesha_pid=
libvirtd_pid=

mount_container() {
    "$cvol" mount "$mnt" --nbd "unix:$sock" --vhost-user "$work/vhost" --allow-other 2>>"$work/daemon.log" &
    daemon=$!
    wait_mounted "$mnt"
}
unmount_container() {
    "$cvol" umount "$mnt"
    wait "$daemon"
    daemon=
}
finish() {
    local rc=$?
    pkill -f "qemu-system-x86_64 -name e2e" 2>/dev/null || true
    if [[ -n $libvirtd_pid ]]; then
        kill -9 "$libvirtd_pid" 2>/dev/null || true
        pkill -9 -f "qemu-system-x86_64 -name guest=e2e" 2>/dev/null || true
    fi
    if [[ -n $daemon ]]; then
        "$cvol" umount "$mnt" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    if ((rc != 0)); then
        echo "e2e-boot: FAILED (exit $rc)" >&2
        for log in "$work"/console-*.log "$work/daemon.log" "$work/ganesha.log" "$work/libvirtd.log" \
            "$work/libvirt/cache/libvirt/qemu/log/e2e.log"; do
            [[ -f $log ]] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
        done
    fi
    if [[ -n $ganesha_pid ]]; then
        kill -9 "$ganesha_pid" 2>/dev/null || true
        wait "$ganesha_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap finish EXIT

mkdir -p "$work/share" "$work/pool" "$mnt"
start_ganesha "$work" "$work/share"
export CVOL_SHARE="nfs://127.0.0.1:$nfs_port$work/share?mountport=$mount_port"
"$cvol" datastore create --name e2e --provider "pool=file:$work/pool" >/dev/null
"$cvol" vm create e2e --disk 256M --memory 256 >/dev/null
mount_container

# The root file system: busybox, and an init that writes the token it is given.
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys}
cp /bin/busybox "$root/bin/busybox"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
marker=$(/bin/busybox sed -n 's/.*cvol\.marker=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "$marker" >/marker
/bin/busybox sync
echo "cvol-e2e: wrote marker $marker"
/bin/busybox poweroff -f
INIT
chmod +x "$root/init"
mkfs.ext4 -q -F -d "$root" "$mnt/e2e/e2e-flat.vmdk"

# The initramfs (scripts/lib.sh: busybox and the virtio modules; waits for /dev/vda):
# mount /dev/vda and switch to it.
cat >"$work/switch-root.sh" <<'INIT'
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "cvol-e2e: no /dev/vda"; poweroff -f; }
mount --move /dev /newroot/dev
umount /proc
exec switch_root /newroot /init
INIT
guest_initrd "$work" "$work/switch-root.sh"
setup=$((SECONDS - t0))

# boot LABEL VM TOKEN START-ARGS...: boots VM once, with TOKEN on its command line.
boot() {
    local label=$1 vm=$2 token=$3
    shift 3
    # TCG: KVM may be present yet broken in nested setups such as CI's.
    "$cvol" vm start "$vm" --accel tcg "$@" --dry-run
    timeout 120 "$cvol" vm start "$vm" --accel tcg "$@" -- -kernel "$kernel" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 panic=-1 cvol.marker=$token" -display none -no-reboot \
        -serial "file:$work/console-$label.log"
    grep -q "cvol-e2e: wrote marker $token" "$work/console-$label.log"
}
# marker VM DISK: the token on the disk, read through the container.
marker() {
    debugfs -R 'cat /marker' "$mnt/$1/$2-flat.vmdk" 2>/dev/null
}
token() {
    od -An -N8 -tx1 /dev/urandom | tr -d ' \n'
}

t1=$SECONDS
token1=$(token)
boot container e2e "$token1" --container "$mnt"
boot_container=$((SECONDS - t1))
unmount_container
mount_container
[[ $(marker e2e e2e) == "$token1" ]] || { echo "marker after remount: $(marker e2e e2e), expected $token1" >&2; exit 1; }

t2=$SECONDS
token2=$(token)
boot nbd e2e "$token2" --nbd-socket "$sock"
boot_nbd=$((SECONDS - t2))
[[ $(marker e2e e2e) == "$token2" ]] || { echo "marker after the NBD boot: $(marker e2e e2e)" >&2; exit 1; }

# vhost-user-blk: QEMU reaches the disk from shared memory, served by the daemon.
t_vhost=$SECONDS
token7=$(token)
boot vhost e2e "$token7" --vhost-user "$work/vhost"
boot_vhost=$((SECONDS - t_vhost))
[[ $(marker e2e e2e) == "$token7" ]] || { echo "marker after the vhost-user boot: $(marker e2e e2e)" >&2; exit 1; }

"$cvol" vm create e2eclone --memory 256 >/dev/null
"$cvol" disk clone e2e/e2e e2eclone/e2eclone >/dev/null
token3=$(token)
t3=$SECONDS
boot clone e2eclone "$token3" --container "$mnt"
boot_clone=$((SECONDS - t3))
[[ $(marker e2eclone e2eclone) == "$token3" ]] || { echo "clone marker: $(marker e2eclone e2eclone)" >&2; exit 1; }
[[ $(marker e2e e2e) == "$token7" ]] || { echo "the original changed: $(marker e2e e2e)" >&2; exit 1; }

# The same root file system built outside cvol, as a cloud image would be, brought in
# by `cvol vm import` as qcow2 (then booted) and as a stream-optimized VMDK (the bytes
# compared), and taken out again by `cvol disk export`.
t_import=$SECONDS
mkfs.ext4 -q -F -d "$root" "$work/image.raw" 64M >/dev/null
qemu-img convert -f raw -O qcow2 "$work/image.raw" "$work/image.qcow2"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$work/image.raw" "$work/image.vmdk"
"$cvol" vm import "$work/image.qcow2" --name imported --memory 256 >/dev/null
"$cvol" vm import "$work/image.vmdk" --name imported-vmdk >/dev/null
qemu-img compare -q "$work/image.raw" "$mnt/imported/imported-flat.vmdk"
qemu-img compare -q "$work/image.raw" "$mnt/imported-vmdk/imported-vmdk-flat.vmdk"
token5=$(token)
boot imported imported "$token5" --container "$mnt"
[[ $(marker imported imported) == "$token5" ]] || { echo "imported VM's marker: $(marker imported imported)" >&2; exit 1; }
"$cvol" disk export imported/imported "$work/exported.raw" --format raw >/dev/null
[[ $(debugfs -R 'cat /marker' "$work/exported.raw" 2>/dev/null) == "$token5" ]] || { echo "the export lacks the marker" >&2; exit 1; }
boot_import=$((SECONDS - t_import))

# QEMU as nobody, with no other groups: kernel, initrd and the console log must be
# reachable by it; the disk's descriptor and extent are chowned to it, as libvirt does.
t4=$SECONDS
chmod 755 "$work"
install -o nobody -g nogroup -m 644 /dev/null "$work/console-nobody.log"
cat >"$work/qemu-as-nobody" <<'QEMU'
#!/bin/sh
exec setpriv --reuid=nobody --regid=nogroup --clear-groups qemu-system-x86_64 "$@"
QEMU
chmod 755 "$work/qemu-as-nobody"
chown nobody:nogroup "$mnt/e2e/e2e.vmdk" "$mnt/e2e/e2e-flat.vmdk"
chmod 600 "$mnt/e2e/e2e.vmdk" "$mnt/e2e/e2e-flat.vmdk"
if setpriv --reuid=daemon --regid=daemon --clear-groups head -c 512 "$mnt/e2e/e2e-flat.vmdk" >/dev/null 2>&1; then
    echo "another user read a disk chowned to nobody with mode 600" >&2
    exit 1
fi
token4=$(token)
boot nobody e2e "$token4" --container "$mnt" --qemu "$work/qemu-as-nobody"
boot_nobody=$((SECONDS - t4))
unmount_container
mount_container
[[ $(marker e2e e2e) == "$token4" ]] || { echo "marker after the boot as nobody: $(marker e2e e2e)" >&2; exit 1; }
owner=$(stat -c '%U:%G %a' "$mnt/e2e/e2e-flat.vmdk")
[[ $owner == "nobody:nogroup 600" ]] || { echo "after a remount the disk is $owner" >&2; exit 1; }

# Under libvirt: a session libvirtd as nobody (private directories; started and killed
# here) defines the VM from `cvol vm domxml` and boots it, its QEMU opening the disk in
# the container as the owner libvirt's dynamic ownership would have made it.
t_libvirt=$SECONDS
lv=$work/libvirt
install -d -o nobody -g nogroup "$lv"
setpriv --reuid=nobody --regid=nogroup --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$lv" XDG_RUNTIME_DIR="$lv/run" XDG_CONFIG_HOME="$lv/config" XDG_CACHE_HOME="$lv/cache" \
    libvirtd 2>"$work/libvirtd.log" &
libvirtd_pid=$!
for _ in $(seq 100); do
    [[ -S $lv/run/libvirt/libvirt-sock ]] && break
    sleep 0.1
done
virsh=(virsh -q -c "qemu+unix:///session?socket=$lv/run/libvirt/libvirt-sock")
token6=$(token)
"$cvol" vm set e2e --kernel "$kernel" --initrd "$work/initrd.gz" \
    --cmdline "console=ttyS0 panic=-1 cvol.marker=$token6" >/dev/null
"$cvol" vm domxml e2e --container "$mnt" --accel tcg >"$work/domain.xml"
"${virsh[@]}" define "$work/domain.xml" >/dev/null
"${virsh[@]}" start e2e >/dev/null
for _ in $(seq 1200); do
    [[ $("${virsh[@]}" domstate e2e) == "shut off" ]] && break
    sleep 0.1
done
[[ $("${virsh[@]}" domstate e2e) == "shut off" ]] || { echo "the libvirt domain did not power off" >&2; exit 1; }
"${virsh[@]}" undefine e2e >/dev/null
kill "$libvirtd_pid"
wait "$libvirtd_pid" 2>/dev/null || true
libvirtd_pid=
[[ $(marker e2e e2e) == "$token6" ]] || { echo "marker after the libvirt boot: $(marker e2e e2e)" >&2; exit 1; }
boot_libvirt=$((SECONDS - t_libvirt))

t5=$SECONDS
unmount_container
"$cvol" datastore fsck >/dev/null
teardown=$((SECONDS - t5))
echo "e2e-boot: setup ${setup}s, boot via container ${boot_container}s, via NBD ${boot_nbd}s, via vhost-user ${boot_vhost}s, clone ${boot_clone}s, imported ${boot_import}s, as nobody ${boot_nobody}s, under libvirt ${boot_libvirt}s, teardown ${teardown}s"
echo "e2e-boot: 7 passed, 0 failed"
