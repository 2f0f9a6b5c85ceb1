#!/usr/bin/env bash
# Throughput of the sidecar's outbound path (read → sign → forward over TLS → read → answer),
# on loopback only, bounded in time. Starts the fake gateway (TLS) and the sidecar (release
# builds), runs examples/load.rs against the sidecar, stops everything.
#
# The fake gateway signs its answers with the deliberately independent pure-Rust `rsa`
# crate (~3 ms each), which would make the gateway, not the sidecar, the bottleneck; so it
# runs with `--fault invalid_signature` and answers Alipay's unsigned F rejection. That
# measures the sidecar's request signing (its dominant cost) and proxying; response
# verification (see `cargo bench`) is not in this figure. scripts/bench-sidecar.sh measures
# the whole path (signed and verified, against nginx) next to OpenSSL's figures.
#
# usage: scripts/load.sh [SECONDS=10] [CONNECTIONS=4] [SIDECAR_THREADS=1]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; conns=${2:-4}; threads=${3:-1}
cargo build --release --quiet --bin alipay-sidecar --example load
bin=target/release/alipay-sidecar
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(port); out=$(port); admin=$(port)

"$bin" keygen --out "$dir/keys" >/dev/null
"$bin" mock-gateway --listen "127.0.0.1:$gw" --tls --out-dir "$dir/gw" \
  --merchant-public-key "$dir/keys/merchant_public_key.pem" --fault invalid_signature >"$dir/gw.log" 2>&1 &
for _ in $(seq 100); do [ -f "$dir/gw/alipay_public_key.pem" ] && [ -f "$dir/gw/ca.pem" ] && break; sleep 0.1; done
cat >"$dir/sidecar.toml" <<TOML
client_id = "LOAD_TEST_CLIENT"
[keys]
merchant_private_key = "keys/merchant_private_key.pem"
alipay_public_keys = { "1" = "gw/alipay_public_key.pem" }
[outbound]
listen = "127.0.0.1:$out"
gateway = "https://127.0.0.1:$gw"
ca_file = "gw/ca.pem"
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
[server]
threads = $threads
shutdown_grace = "1s"
TOML
"$bin" run --config "$dir/sidecar.toml" >"$dir/sidecar.log" 2>&1 &
for _ in $(seq 100); do "$bin" healthcheck --url "http://127.0.0.1:$admin/readyz" 2>/dev/null && break; sleep 0.1; done
echo "sidecar threads=$threads, $conns connections, ${secs}s, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/examples/load "127.0.0.1:$out" /ams/api/v1/payments/consult "$secs" "$conns"
