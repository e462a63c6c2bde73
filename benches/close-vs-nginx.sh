#!/usr/bin/env bash
# New connections on one core: switchyard against NGINX, every request on a connection of
# its own (`wrk -H 'Connection: close'`), in clear text and over TLS (full handshakes,
# ECDSA P-256), in front of one upstream nginx on loopback. Proxy pinned to cpu 0 with one
# worker; upstream and wrk on cpu 1. Rounds interleave the proxies.
# Modes: `http`; `https`, TLS 1.3 on both proxies (NGINX 1.22 enables only up to TLS 1.2
# unless told, so it is told, as NGINX 1.23.4+ does by default); `https12`, the client
# (wrk's OpenSSL) capped at TLS 1.2 through OPENSSL_CONF. wrk's side of a TLS 1.3 handshake
# costs OpenSSL 3.0 about twice its side of a TLS 1.2 one, and wrk shares its core with the
# upstream: with TLS the load core saturates first, so compare the protocols apart and read
# the proxy's CPU per connection (µs of proxy CPU per connection) as well as the rate.
#   SWITCHYARD_BIN=target/release/switchyard benches/close-vs-nginx.sh
#   SWITCHYARD_BASE=sy.base benches/close-vs-nginx.sh   # also runs a second (baseline) binary
# Per run: connections/s, ratio to the NGINX run just before, the proxy's CPU use (100% is a
# core: below it, something other than CPU holds the connections up) and how many
# connections the upstream accepted (the upstream pool should serve them all with a few).
# Knobs: ROUNDS [3], CONNS [32] (wrk -c), DURATION [6] seconds, MODES ["http https https12"].
# Needs nginx (with stub_status), wrk, curl, openssl, taskset.
# Loopback only; every run is bounded (wrk -d); every process is stopped on exit.
set -euo pipefail
BIN=$(readlink -f "${SWITCHYARD_BIN:-target/release/switchyard}")
BASE=${SWITCHYARD_BASE:+$(readlink -f "$SWITCHYARD_BASE")}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
DURATION=${DURATION:-6}
MODES=${MODES:-http https https12}
W=$(mktemp -d /tmp/close-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/key.pem" \
  -out "$W/cert.pem" -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

cat >"$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19301; location / { return 200 "v1\n"; } }
  server { listen 127.0.0.1:19302; location / { stub_status; } } }
CONF
cat >"$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ng.pid; error_log $W/ng.err;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:19301; keepalive 512; }
  server { listen 127.0.0.1:18380; listen 127.0.0.1:18743 ssl;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat >"$W/sy.toml" <<CONF
[server]
listen = "127.0.0.1:18381"
[server.tls]
listen = "127.0.0.1:18744"
certs = [ { cert = "$W/cert.pem", key = "$W/key.pem" } ]
[admin]
listen = "127.0.0.1:18481"
persist = false
[[routes]]
service = "bench"
[services.bench]
strategy = "canary"
weights = { stable = 100 }
[services.bench.pools.stable]
endpoints = ["127.0.0.1:19301"]
CONF
cat >"$W/tls12.cnf" <<CONF
openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = tls12
[tls12]
MaxProtocol = TLSv1.2
CONF

taskset -c 1 nginx -c "$W/upstream.conf" & PIDS+=($!)
sleep 0.5
upstream_accepts() { curl -s http://127.0.0.1:19302/ | awk 'NR == 3 {print $1}'; }
# CPU ticks of a process and its children (NGINX's worker is the master's child).
cpu_ticks() {
  local p t=0
  for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
declare -A NGINX_RATE
# run NAME PID URL MODE: one bounded wrk run against a started proxy; prints one row.
run() {
  local name=$1 pid=$2 url=$3 mode=$4 a0 a1 t0 t1 rate ratio busy per hz conf=
  hz=$(getconf CLK_TCK)
  [[ $mode == https12 ]] && conf=$W/tls12.cnf
  env ${conf:+OPENSSL_CONF=$conf} taskset -c 1 wrk -t1 -c"$CONNS" -d1s -H 'Connection: close' "$url" >/dev/null 2>&1
  a0=$(upstream_accepts); t0=$(cpu_ticks "$pid")
  rate=$(env ${conf:+OPENSSL_CONF=$conf} taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H 'Connection: close' "$url" |
    awk '/Requests\/sec/ {print $2}')
  t1=$(cpu_ticks "$pid"); a1=$(upstream_accepts)
  busy=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v d="$DURATION" 'BEGIN {printf "%.0f", 100 * t / hz / d}')
  per=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v d="$DURATION" -v r="$rate" 'BEGIN {printf "%.0f", 1e6 * t / hz / (r * d)}')
  if [[ $name == nginx ]]; then NGINX_RATE[$mode]=$rate; ratio=1.00; else
    ratio=$(awk -v a="$rate" -v b="${NGINX_RATE[$mode]}" 'BEGIN {printf "%.2f", a / b}'); fi
  # The stub_status request itself is one accept.
  printf '| %s | %-10s | %9s/s | %s× | %3s%% | %4s µs | %5s |\n' "$mode" "$name" "$rate" "$ratio" \
    "$busy" "$per" "$((a1 - a0 - 1))"
}
start_sy() {
  SWITCHYARD_WORKERS=1 RUST_LOG=warn taskset -c 0 "$1" run --config "$W/sy.toml" & SY=$!
  PIDS+=("$SY")
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18381/ && return; sleep 0.1; done
}
echo "| mode | proxy | new connections | vs NGINX | proxy CPU | per connection | upstream accepts |"
echo "|---|---|---:|---:|---:|---:|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in $MODES; do
    if [[ $mode == http ]]; then ng=http://127.0.0.1:18380/ sy=http://127.0.0.1:18381/; else
      ng=https://localhost:18743/ sy=https://localhost:18744/; fi
    taskset -c 0 nginx -c "$W/nginx.conf" & p=$!; PIDS+=($p)
    sleep 0.5; run nginx "$p" "$ng" "$mode"; kill "$p"; wait "$p" 2>/dev/null || true
    if [[ -n $BASE ]]; then
      start_sy "$BASE"; run base "$SY" "$sy" "$mode"; kill "$SY"; wait "$SY" 2>/dev/null || true
    fi
    start_sy "$BIN"; run switchyard "$SY" "$sy" "$mode"; kill "$SY"; wait "$SY" 2>/dev/null || true
  done
done
