#!/usr/bin/env bash
# HTTP/2 from clients on one core: switchyard against NGINX, both serving h2c (prior
# knowledge, clear text) in front of one upstream nginx over HTTP/1.1 keep-alive on loopback.
# Proxy pinned to cpu 0; upstream and h2load to cpu 1. Prints one markdown row per run.
#   SWITCHYARD_BIN=target/release/switchyard benches/h2-vs-nginx.sh
# Knobs: ROUNDS [3], CLIENTS [16], STREAMS [16] (per connection), DURATION [8] seconds.
# Needs nginx, h2load, curl, taskset (apt-get install nginx-light nghttp2-client curl).
# Loopback only; every run is bounded (h2load -D); every process is stopped on exit.
set -euo pipefail
BIN=${SWITCHYARD_BIN:-target/release/switchyard}
BIN=$(readlink -f "$BIN")
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
STREAMS=${STREAMS:-16}
DURATION=${DURATION:-8}
W=$(mktemp -d /tmp/h2-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

cat >"$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19201; location / { return 200 "v1\n"; } } }
CONF
cat >"$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ng.pid; error_log $W/ng.err;
events { worker_connections 4096; }
http { access_log off; http2 on; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:19201; keepalive 512; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18643;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
# nginx before 1.25.1 has no `http2 on;`: the listen parameter says it there.
if ! nginx -t -c "$W/nginx.conf" -p "$W" >/dev/null 2>&1; then
  sed -i 's/ http2 on;//; s/listen 127.0.0.1:18643;/listen 127.0.0.1:18643 http2;/' "$W/nginx.conf"
fi
cat >"$W/sy.toml" <<CONF
[server]
listen = "127.0.0.1:18644"
[admin]
listen = "127.0.0.1:18744"
persist = false
[[routes]]
service = "bench"
[services.bench]
strategy = "canary"
weights = { stable = 100 }
[services.bench.pools.stable]
endpoints = ["127.0.0.1:19201"]
CONF

wait_up() { # until the proxy answers over h2c, at most 10 s
  local i
  for ((i = 0; i < 100; i++)); do
    curl -sf --http2-prior-knowledge -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}
measure() { # name url pid
  local name=$1 url=$2 pid=$3 out rps p99 hwm
  wait_up "$url"
  taskset -c 1 h2load -c "$CLIENTS" -m "$STREAMS" -D 2 "$url" >/dev/null 2>&1 || true
  out=$(taskset -c 1 h2load -c "$CLIENTS" -m "$STREAMS" -D "$DURATION" "$url" 2>&1)
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  p99=$(awk '/^time for request:/ {print $6}' <<<"$out")
  hwm=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  fail=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) print $i}' <<<"$out")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$r" "$name" "$rps" "${fail:-?}" "$p99" "$hwm"
}
taskset -c 1 nginx -c "$W/upstream.conf" -p "$W" & PIDS+=($!)
echo "h2c, h2load -c $CLIENTS -m $STREAMS -D $DURATION, proxy on one core ($(nproc) cores), $(date -u +%F)"
echo
echo "| round | proxy | req/s | failed | mean latency | peak RSS MiB |"
echo "|---:|---|---:|---:|---|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
  taskset -c 0 nginx -c "$W/nginx.conf" -p "$W" & p=$!; PIDS+=($p)
  measure nginx http://127.0.0.1:18643/ "$p"; kill "$p"; wait "$p" 2>/dev/null || true
  SWITCHYARD_WORKERS=1 RUST_LOG=warn taskset -c 0 "$BIN" run --config "$W/sy.toml" & p=$!; PIDS+=($p)
  measure switchyard http://127.0.0.1:18644/ "$p"; kill "$p"; wait "$p" 2>/dev/null || true
done
