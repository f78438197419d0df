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
