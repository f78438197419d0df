#!/usr/bin/env bash
# NBD over TLS: what TLS costs cvol's NBD server, beside what it costs qemu-nbd, on the
# same pool file, driven by the same fio jobs (fio's nbd engine, libnbd's GnuTLS, one
# connection, TCP on loopback). x509 certificates made here with openssl.
#
#   ./scripts/bench-nbd-tls.sh [RUNTIME_SECONDS]     (default 10 s per job)
#
# Prints a Markdown table for BENCHMARKS.md. Needs fio, qemu-utils (qemu-nbd), openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runtime=${1:-10}
cargo build --release --quiet --bin cvol
cvol=$PWD/target/release/cvol
work=$(mktemp -d /var/tmp/cvol-bench-nbd-tls.XXXXXX)
mnt=$work/mnt
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
cleanup() {
    stop_server
    "$cvol" umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A CA, and a server certificate for 127.0.0.1 in the file names QEMU's tls-creds-x509
# reads. fio's nbd engine may not name a certificate directory in its URI (libnbd
# refuses local files there), so clients find the CA where libnbd looks by default:
# $HOME/.pki/libnbd.
pki=$work/pki
mkdir -p "$pki/server" "$pki/home/.pki/libnbd"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$pki/ca-key.pem" -out "$pki/server/ca-cert.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$pki/server/server-key.pem" -out "$pki/server.csr" 2>/dev/null
openssl x509 -req -in "$pki/server.csr" -CA "$pki/server/ca-cert.pem" -CAkey "$pki/ca-key.pem" \
    -days 2 -extfile <(echo "subjectAltName=IP:127.0.0.1") -out "$pki/server/server-cert.pem" 2>/dev/null
chmod 600 "$pki/server/server-key.pem"
cp "$pki/server/ca-cert.pem" "$pki/home/.pki/libnbd/"
# fio (libnbd) finds the CA there; nothing else this script runs reads $HOME.
export HOME=$pki/home

bench_datastore "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

jobs=(
    "4k randread QD16|--rw=randread --bs=4k --iodepth=16"
    "1M seq read QD4|--rw=read --bs=1M --iodepth=4"
)

declare -A result

wait_port() {
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no server on port $port" >&2
    return 1
}

plain_uri=nbd://127.0.0.1:$port
tls_uri=nbds://127.0.0.1:$port

for tls in off require; do
    args=(--nbd "tcp:127.0.0.1:$port" --nbd-tls "$tls")
    [[ $tls == off ]] || args+=(--nbd-tls-cert "$pki/server/server-cert.pem" --nbd-tls-key "$pki/server/server-key.pem")
    "$cvol" mount "$mnt" "${args[@]}" &
    server_pid=$!
    wait_port
    if [[ $tls == off ]]; then
        fio_nbd_jobs cvol "$plain_uri/bench/bench"
    else
        fio_nbd_jobs cvol-tls "$tls_uri/bench/bench"
    fi
    "$cvol" umount "$mnt"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
done

for tls in off on; do
    creds=()
    [[ $tls == on ]] && creds=(--object "tls-creds-x509,id=tls0,dir=$pki/server,endpoint=server,verify-peer=off" --tls-creds tls0)
    qemu-nbd --persistent --shared=8 --format=raw --cache=writeback --aio=threads --bind=127.0.0.1 \
        --port="$port" --export-name=bench "${creds[@]}" "$pool_file" &
    server_pid=$!
    wait_port
    if [[ $tls == off ]]; then
        fio_nbd_jobs qemu-nbd "$plain_uri/bench"
    else
        fio_nbd_jobs qemu-nbd-tls "$tls_uri/bench"
    fi
    stop_server
done

echo "| job | cvol MiB/s | cvol TLS MiB/s | cvol TLS / plain | qemu-nbd MiB/s | qemu-nbd TLS MiB/s | qemu-nbd TLS / plain | cvol TLS / qemu-nbd TLS |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for job in "${jobs[@]}"; do
    name=${job%%|*}
    awk -v name="$name" -v c="${result[cvol,$name]}" -v ct="${result[cvol-tls,$name]}" \
        -v q="${result[qemu-nbd,$name]}" -v qt="${result[qemu-nbd-tls,$name]}" \
        'BEGIN { printf "| %s | %s | %s | %.2fx | %s | %s | %.2fx | %.2fx |\n", name, c, ct, ct / c, q, qt, qt / q, ct / qt }'
done
