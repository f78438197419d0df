# Helpers sourced by the scripts in this folder.

# missing_packages PKG...: prints the Debian packages that are not installed.
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# ensure_packages PKG...: installs the Debian packages that are missing (quietly; as root,
# or through sudo). A second round reinstalls what the first removed: a newer qemu-utils
# that some images carry is removed by Debian's qemu-system-x86, and comes back in the
# matching version.
ensure_packages() {
    local sudo="" round missing
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    for round in 1 2; do
        mapfile -t missing < <(missing_packages "$@")
        ((${#missing[@]})) || return 0
        echo "installing ${missing[*]}" >&2
        ((round == 2)) || $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    done
    mapfile -t missing < <(missing_packages "$@")
    if ((${#missing[@]})); then
        echo "cannot install ${missing[*]}" >&2
        return 1
    fi
}

# The S3 server the tests and benchmarks run against (Garage: a real object store, in
# Rust, one binary; Debian has no S3 server package). Only its sqlite metadata engine is
# built, which keeps the one-time `cargo install` near 15 minutes on 2 cores; later runs
# find it on PATH and skip it.
GARAGE_VERSION=2.5.0

# ensure_garage: garage $GARAGE_VERSION on PATH, installed with cargo if it is not.
ensure_garage() {
    if garage --version 2>/dev/null | grep -q "[:v]$GARAGE_VERSION\b"; then
        return 0
    fi
    echo "installing garage $GARAGE_VERSION (cargo install, once: about 15 minutes)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --quiet \
        --no-default-features --features bundled-libs,sqlite
    garage --version | grep -q "[:v]$GARAGE_VERSION\b"
}

# wait_mounted DIR: waits up to 20 s for a cvol container at DIR.
wait_mounted() {
    local _
    for _ in $(seq 200); do
        grep -q " $1 .* cvol:" /proc/self/mountinfo && return 0
        sleep 0.1
    done
    echo "no container mounted at $1" >&2
    return 1
}

# vms_datastore BIN SHARE POOL N: a datastore on SHARE (a file pool in POOL) of N VMs,
# vm1 to vmN, with a 64 MiB thin disk and 256 MiB of memory each.
vms_datastore() {
    local bin=$1 share=$2 pool=$3 n=$4 i
    "$bin" --share "$share" datastore create --name scale --provider "pool=file:$pool" >/dev/null
    for i in $(seq "$n"); do
        "$bin" --share "$share" vm create "vm$i" --disk 64M --memory 256 >/dev/null
    done
}

# vm_leases SHARE N: a stopped lease (epoch 1, last held by host h1) for each of vm1 to
# vmN, as on a datastore whose VMs have all run once.
vm_leases() {
    local share=$1 n=$2 i
    for i in $(seq "$n"); do
        mkdir -p "$share/.cvol/leases/vm$i"
        printf 'vm = "vm%s"\nepoch = 1\nowner = "h1"\nboot_id = "bench"\nheartbeat = 0\n\n[state]\nkind = "stopped"\n' \
            "$i" >"$share/.cvol/leases/vm$i/1"
    done
}

# serve_metered BIN DIR WORK: serves DIR with `BIN nfs serve`, its metrics on a free
# port; sets serve_pid, metrics (that port) and url (the share's URL). Logs in WORK.
serve_metered() {
    local bin=$1 dir=$2 work=$3
    metrics=$(free_port)
    "$bin" nfs serve --no-root-squash --metrics "127.0.0.1:$metrics" "$dir" >"$work/url" 2>"$work/serve.log" &
    serve_pid=$!
    wait_output "$work/url"
    url=$(cat "$work/url")
}

# cpu_cs PID: the CPU time process PID has used so far (user + system), in centiseconds.
cpu_cs() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# rpcs: the calls the server of serve_metered has answered so far.
rpcs() {
    curl -sf "http://127.0.0.1:$metrics/metrics" |
        awk '/^cvol_nfs_server_rpc_seconds_count/ { n += $2 } END { print n + 0 }'
}

# bench_datastore WORK: a datastore in WORK (share, pool) with a VM "bench" whose 2 GiB
# disk is filled, so reads read data; exports CVOL_SHARE and sets pool_file to the
# volume's file. Needs cvol in $cvol.
bench_datastore() {
    local work=$1 volume
    export CVOL_SHARE=$work/share
    mkdir -p "$work/share" "$work/pool" "$work/mnt"
    "$cvol" datastore create --name bench --provider "pool=file:$work/pool" >/dev/null
    "$cvol" vm create bench --disk 2G >/dev/null
    volume=$("$cvol" --json disk list bench | sed -n 's/.*"volume": "\(vol-[0-9a-f]*\)".*/\1/p')
    pool_file=$work/pool/volumes/$volume/data
    fio --name=fill --filename="$pool_file" --rw=write --bs=1M --size=2G --ioengine=psync --output=/dev/null
}

# seconds CMD...: runs CMD (its output dropped), prints its wall-clock seconds.
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }'
}

# wait_socket SOCK: waits up to 10 s for a server's unix socket SOCK.
wait_socket() {
    local _
    for _ in $(seq 100); do
        [[ -S $1 ]] && return 0
        sleep 0.1
    done
    echo "no server on $1" >&2
    return 1
}

# wait_output FILE: waits up to 10 s for a server started in the background to print
# something (its URL) to FILE; the caller checks what it printed.
wait_output() {
    local _
    for _ in $(seq 100); do
        [[ -s $1 ]] && return 0
        sleep 0.1
    done
}

# free_port: prints a TCP port nothing listens on at 127.0.0.1.
free_port() {
    local port
    while :; do
        # Below the kernel's ephemeral range (32768-60999), where a port a connection
        # just used may sit in TIME_WAIT and refuse a bind that a connect test misses.
        port=$((10000 + RANDOM % 22000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# start_ganesha DIR EXPORT: runs nfs-ganesha (and rpcbind, which it needs first) on
# loopback, exporting EXPORT, with its config, log and pid in DIR; sets ganesha_pid,
# nfs_port and mount_port.
start_ganesha() {
    local dir=$1 export=$2 attempt
    (exec 3<>/dev/tcp/127.0.0.1/111) 2>/dev/null || rpcbind -w
    # A port found free can be taken before ganesha binds it: try fresh ports again.
    for attempt in 1 2 3; do
        start_ganesha_once "$dir" "$export" && return 0
        echo "nfs-ganesha did not start (attempt $attempt):" >&2
        tail -n 5 "$dir/ganesha.log" >&2
    done
    return 1
}

start_ganesha_once() {
    local dir=$1 export=$2
    nfs_port=$(free_port)
    mount_port=$(free_port)
    cat >"$dir/ganesha.conf" <<CONF
NFS_CORE_PARAM { Protocols = 3, 4; NFS_Port = $nfs_port; MNT_Port = $mount_port;
  NLM_Port = $(free_port); Rquota_Port = $(free_port); Enable_RQUOTA = false;
  Enable_NLM = false; Bind_addr = 127.0.0.1; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = $export; Pseudo = /export; Access_Type = RW;
  Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP;
  FSAL { Name = VFS; } }
CONF
    ganesha.nfsd -F -f "$dir/ganesha.conf" -L "$dir/ganesha.log" -p "$dir/ganesha.pid" &
    ganesha_pid=$!
    local _
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$nfs_port") 2>/dev/null && return 0
        kill -0 "$ganesha_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$ganesha_pid" 2>/dev/null || true
    wait "$ganesha_pid" 2>/dev/null || true
    ganesha_pid=
    return 1
}

# start_garage DIR: runs a single-node Garage in DIR on loopback, with bucket "cvol" and
# a key allowed on it; exports the AWS_* variables that point clients at it and sets
# garage_pid. The same setup as the Rust tests' (crates/cvol/tests/common/garage.rs);
# $GARAGE_BLOCK_SIZE, if set, is its block_size.
start_garage() {
    local dir=$1 rpc s3 admin node _
    rpc=$(free_port) s3=$(free_port) admin=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
${GARAGE_BLOCK_SIZE:+block_size = \"$GARAGE_BLOCK_SIZE\"}
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
    RUST_LOG=garage=warn garage -c "$dir/garage.toml" server 2>"$dir/garage.log" &
    garage_pid=$!
    for _ in $(seq 300); do
        node=$(garage -c "$dir/garage.toml" node id -q 2>/dev/null) && break
        sleep 0.1
    done
    [[ -n $node ]] || { cat "$dir/garage.log" >&2; return 1; }
    garage -c "$dir/garage.toml" layout assign -z dc1 -c 1G "${node%@*}" >/dev/null
    garage -c "$dir/garage.toml" layout apply --version 1 >/dev/null
    garage -c "$dir/garage.toml" bucket create cvol >/dev/null
    AWS_ACCESS_KEY_ID=GK$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    AWS_SECRET_ACCESS_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    garage -c "$dir/garage.toml" key import --yes -n cvol "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
    garage -c "$dir/garage.toml" bucket allow --read --write --owner cvol --key "$AWS_ACCESS_KEY_ID" >/dev/null
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL=http://127.0.0.1:$s3 AWS_REGION=garage
}

# guest_kernel: a Debian cloud kernel for test guests, unpacked (not installed) into
# $CVOL_E2E_CACHE (default /var/tmp/cvol-e2e-kernel) once; sets kernel and modules.
guest_kernel() {
    local cache=${CVOL_E2E_CACHE:-/var/tmp/cvol-e2e-kernel} pkg
    if ! compgen -G "$cache/boot/vmlinuz-*" >/dev/null; then
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/ { print $2; exit }')
        mkdir -p "$cache"
        (cd "$cache" && apt-get download -q "$pkg" >&2 2>/dev/null && dpkg -x ./*.deb . && rm -f ./*.deb)
    fi
    kernel=$(compgen -G "$cache/boot/vmlinuz-*" | head -1)
    modules=$(compgen -G "$cache/lib/modules/*" | head -1)
}

# The virtio modules the cloud kernel has as modules, in dependency order.
GUEST_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"

# guest_initrd DIR INIT: an initramfs DIR/initrd.gz with busybox, the virtio modules and
# INIT (a shell script run after /dev/vda appeared) as /init. Needs guest_kernel first.
guest_initrd() {
    local dir=$1 init=$2 root=$1/initrd m
    mkdir -p "$root"/{bin,dev,proc,sys,lib}
    cp /bin/busybox "$root/bin/busybox"
    for m in $GUEST_MODULES; do
        cp "$(find "$modules" -name "$m.ko" | head -1)" "$root/lib/"
    done
    {
        echo '#!/bin/busybox sh'
        echo '/bin/busybox --install -s /bin'
        echo 'mount -t proc proc /proc'
        echo 'mount -t devtmpfs dev /dev'
        echo "for m in $GUEST_MODULES; do insmod /lib/\$m.ko; done"
        echo 'for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done'
        cat "$init"
    } >"$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$dir/initrd.gz")
}

# counter_guest DIR: a guest (guest_kernel, then DIR/initrd.gz) that writes an increasing
# counter to /dev/vda, one 512-byte block per step with O_DIRECT and fsync: block N holds
# "N BOOT" (BOOT: random per boot); each step writes the same block of every other disk
# (vdb, vdc, …) after vda's. It continues after the highest N on vda, and prints
# "cvol-counter: N BOOT" on its console for each step completed.
counter_guest() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/counter.sh" <<'INIT'
boot=$(cat /proc/sys/kernel/random/uuid)
last=$(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | tr -d '\000' |
    awk '$1 ~ /^[0-9]+$/ && $1 + 0 > m { m = $1 + 0 } END { print m + 0 }')
n=$((last + 1))
echo "cvol-counter: start $n $boot"
while [ "$n" -lt 2048 ]; do
    failed=
    for disk in /dev/vd?; do
        echo "$n $boot" | dd of="$disk" bs=512 seek="$n" count=1 conv=sync,notrunc,fsync oflag=direct 2>/dev/null ||
            { failed=1; break; }
    done
    [ -z "$failed" ] || { echo "cvol-counter: write $n failed"; sleep 1; continue; }
    echo "cvol-counter: $n $boot"
    n=$((n + 1))
    sleep 0.05
done
poweroff -f
INIT
    guest_kernel
    guest_initrd "$dir" "$dir/counter.sh"
}

# median "N N N...": prints the median of the numbers (the upper one of an even count).
median() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# settle_pool_file: writes $pool_file back and reads all of it into the page cache, so
# every server starts a job from the same state (otherwise a server run after another
# rewrites pages still dirty from the last, which costs less).
settle_pool_file() {
    sync
    cat "$pool_file" >/dev/null
}

# fio_nbd mibps|iops URI RUNTIME FIO_ARGS...: runs one fio job (nbd engine, 2 GiB, after
# a 1 s ramp) against the NBD export at URI and prints its MiB/s or IOPS, reads plus
# writes.
fio_nbd() {
    local unit=$1 uri=$2 runtime=$3
    shift 3
    fio --name=job --ioengine=nbd --uri="$uri" --size=2G --time_based --runtime="$runtime" \
        --ramp_time=1 --output-format=terse --terse-version=3 "$@" |
        awk -F';' -v unit="$unit" 'NF > 50 { v = unit == "iops" ? $8 + $49 : ($7 + $48) / 1024 }
            END { printf(unit == "iops" ? "%d" : "%.1f", v) }'
}

# fio_nbd_jobs SERVER URI: runs every job of the array `jobs` ("NAME|FIO_ARGS") for
# $runtime seconds against the NBD export at URI, each after settle_pool_file, and fills
# the associative array `result[SERVER,NAME]` with MiB/s (reads plus writes).
fio_nbd_jobs() {
    local server=$1 uri=$2 job
    for job in "${jobs[@]}"; do
        settle_pool_file
        # shellcheck disable=SC2086
        result[$server,${job%%|*}]=$(fio_nbd mibps "$uri" "$runtime" ${job#*|})
    done
}

# mount_nbd SHARE: mounts the datastore of SHARE on $work/mnt with "$cvol", serving NBD
# on $sock; sets server_pid (stop_mounted undoes it).
mount_nbd() {
    mkdir -p "$work/mnt"
    rm -f "$sock"
    CVOL_SHARE=$1 "$cvol" mount "$work/mnt" --nbd "unix:$sock" 2>"$work/daemon.log" &
    server_pid=$!
    wait_socket "$sock" || { cat "$work/daemon.log" >&2; exit 1; }
}

# stop_mounted: unmounts $work/mnt, which "$cvol" mounted as process $server_pid (if
# one is running), and waits for that process to end.
stop_mounted() {
    if [[ -n $server_pid ]]; then
        "$cvol" umount "$work/mnt" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}

# cleanup_object_bench: on exit of an object-pool benchmark, stops its mount and its
# Garage ($garage_pid) and deletes $work.
cleanup_object_bench() {
    stop_mounted
    [[ -z $garage_pid ]] || kill "$garage_pid" 2>/dev/null || true
    rm -rf "$work"
}

# start_ceph DIR: runs a single-node Ceph cluster (one monitor, one memstore OSD, no
# manager, no authentication) in DIR on loopback, with an RBD pool "rbd"; exports
# CEPH_CONF (read by librados, the ceph and rbd tools and fio's rbd engine) and sets
# ceph_pids. The same setup as the Rust tests' (crates/cvol/tests/common/ceph.rs).
start_ceph() {
    local dir=$1 port fsid id uuid attempt _
    port=$(free_port)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mkdir -p "$dir"/{mon,osd,run}
    cat >"$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
ms bind msgr2 = false
ms bind ipv6 = false
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 1
osd objectstore = memstore
memstore device bytes = 12884901888
run dir = $dir/run
log file = $dir/\$name.log
[mon.a]
mon data = $dir/mon
public addr = 127.0.0.1:$port
[osd.0]
osd data = $dir/osd
public addr = 127.0.0.1
cluster addr = 127.0.0.1
CONF
    export CEPH_CONF=$dir/ceph.conf
    monmaptool --create --addv a "[v1:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$dir/monmap" >/dev/null
    ceph-mon -i a -f 2>"$dir/mon.out" &
    ceph_pids=$!
    uuid=$(cat /proc/sys/kernel/random/uuid)
    for _ in $(seq 300); do
        id=$(ceph --connect-timeout 30 osd new "$uuid" 2>/dev/null) && break
        sleep 0.2
    done
    ceph-osd -i "$id" --mkfs --osd-uuid "$uuid" >/dev/null 2>&1
    ceph --connect-timeout 30 osd set-require-min-compat-client mimic >/dev/null 2>&1
    # An OSD started right after its monitor is sometimes refused at boot: again.
    for attempt in 1 2 3; do
        ceph-osd -i "$id" -f 2>"$dir/osd.out" &
        for _ in $(seq 100); do
            if ceph --connect-timeout 30 osd stat 2>/dev/null | grep -q "1 up"; then
                ceph_pids+=" $!"
                timeout 60 ceph osd pool create rbd 8 >/dev/null 2>&1
                timeout 60 rbd pool init rbd
                return 0
            fi
            sleep 0.2
        done
        kill -9 $! 2>/dev/null || true
    done
    echo "the OSD did not come up (attempt $attempt): $dir/osd.0.log" >&2
    return 1
}
