#!/usr/bin/env bash
# TLS on one core: switchyard against NGINX, both terminating TLS (ECDSA P-256) in front of
# one upstream nginx on loopback. Proxy pinned to cpu 0; upstream and wrk to cpu 1.
# Measures keep-alive requests/s (+ p99) and new connections (full handshakes) per second.
#   SWITCHYARD_BIN=target/release/switchyard benches/tls-vs-nginx.sh
# Both proxies speak TLS 1.3 (NGINX_PROTOCOLS): NGINX 1.22 enables only up to TLS 1.2 unless
# told (TLS 1.3 is its default from 1.23.4), and the figures before 2026-12-06 compared its
# TLS 1.2 with switchyard's TLS 1.3; wrk's OpenSSL spends about twice the CPU on its side of a
# TLS 1.3 handshake, and the load core saturates first (docs/performance.md, "New
# connections"). NGINX_PROTOCOLS="TLSv1 TLSv1.1 TLSv1.2" gives the old comparison.
# Needs nginx, wrk, openssl, taskset (apt-get install nginx-light wrk openssl util-linux).
# Loopback only; every run is bounded (wrk -d); every process is stopped on exit.
set -euo pipefail
BIN=${SWITCHYARD_BIN:-target/release/switchyard}
BIN=$(readlink -f "$BIN")
ROUNDS=${ROUNDS:-2}
NGINX_PROTOCOLS=${NGINX_PROTOCOLS:-TLSv1.2 TLSv1.3}
W=$(mktemp -d /tmp/tls-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/key.pem" \
  -out "$W/cert.pem" -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

cat >"$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19101; location / { return 200 "v1\n"; } } }
CONF
cat >"$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ng.pid; error_log $W/ng.err;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:19101; keepalive 512; }
  server { listen 127.0.0.1:18543 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols $NGINX_PROTOCOLS;
    keepalive_requests 1000000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat >"$W/sy.toml" <<CONF
[server]
listen = "127.0.0.1:18184"
[server.tls]
listen = "127.0.0.1:18544"
certs = [ { cert = "$W/cert.pem", key = "$W/key.pem" } ]
[admin]
listen = "127.0.0.1:18284"
persist = false
[[routes]]
service = "bench"
[services.bench]
strategy = "canary"
weights = { stable = 100 }
[services.bench.pools.stable]
endpoints = ["127.0.0.1:19101"]
CONF

taskset -c 1 nginx -c "$W/upstream.conf" & PIDS+=($!)
sleep 0.5
measure() {
  local name=$1 url=$2 ka hs
  taskset -c 1 wrk -t1 -c64 -d2s "$url" >/dev/null 2>&1
  ka=$(taskset -c 1 wrk -t1 -c64 -d8s --latency "$url" | awk '/Requests\/sec/ {r=$2} /99%/ {p=$2} END {print r " req/s, p99 " p}')
  hs=$(taskset -c 1 wrk -t1 -c32 -d8s -H 'Connection: close' "$url" | awk '/Requests\/sec/ {print $2}')
  printf '%-10s keep-alive: %s; new connections (full handshakes)/s: %s\n' "$name" "$ka" "$hs"
}
for ((r = 1; r <= ROUNDS; r++)); do
  taskset -c 0 nginx -c "$W/nginx.conf" & p=$!; PIDS+=($p)
  sleep 0.5; measure nginx https://localhost:18543/; kill "$p"; wait "$p" 2>/dev/null || true
  SWITCHYARD_WORKERS=1 RUST_LOG=warn taskset -c 0 "$BIN" run --config "$W/sy.toml" & p=$!; PIDS+=($p)
  sleep 1; measure switchyard https://localhost:18544/; kill "$p"; wait "$p" 2>/dev/null || true
done
