#!/usr/bin/env bash
# idle-load.sh -- does a crowd of idle clients slow the busy ones down?
#
# Each proxy (switchyard, NGINX; one worker, pinned to core PROXY_CPU) runs in front of one upstream
# NGINX (return 200; pinned with wrk to core LOAD_CPU). For each proxy, ROUNDS times:
#   1. wrk -c CONNECTIONS for DURATION with no idle clients;
#   2. IDLE clients (default 10,000) each send one request, read the answer and stay open;
#   3. the same wrk run again beside them; then the idle clients close.
# Reported per proxy (medians over the rounds): req/s and p99 without and with the idle clients,
# their ratio, wrk's errors (connect, read, write, timeout, non-2xx) and the proxy's peak RSS.
# Loopback only; every run is bounded and every process is stopped at exit.
#
# usage: SWITCHYARD_BIN=target/release/switchyard [IDLE=10000] [CONNECTIONS=256] [DURATION=10s]
#        [ROUNDS=3] [PROXY_CPU=0] [LOAD_CPU=1] benches/idle-load.sh
set -euo pipefail
IDLE=${IDLE:-10000}
CONNECTIONS=${CONNECTIONS:-256}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SY=${SWITCHYARD_BIN:?set SWITCHYARD_BIN to a switchyard binary}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(free_port); PNG=$(free_port); PSY=$(free_port); PSA=$(free_port)
mkdir -p "$work/logs"
cat > "$work/up.conf" <<C
worker_processes 1; pid $work/up.pid; error_log $work/logs/up.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP backlog=4096; location / { return 200 "v1\n"; } } }
C
cat > "$work/ng.conf" <<C
worker_processes 1; pid $work/ng.pid; error_log $work/logs/ng.err; daemon off; worker_rlimit_nofile $((IDLE * 2 + 4000));
events { worker_connections $((IDLE + CONNECTIONS + 2000)); }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream u { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$PNG backlog=4096; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat > "$work/sy.toml" <<C
[server]
listen = "127.0.0.1:$PSY"
idle_timeout = "300s"
max_connections = $((IDLE + CONNECTIONS + 2000))
[admin]
listen = "127.0.0.1:$PSA"
persist = false
[[routes]]
path_prefix = "/"
service = "shop"
[services.shop]
strategy = "canary"
weights = { stable = 100 }
[services.shop.pools.stable]
endpoints = ["127.0.0.1:$UP"]
C
cat > "$work/idle.py" <<'P'
# Opens N connections that each send one request and read its answer, says "ready", then holds
# them until stdin closes.
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); socks.append(s)
for s in socks:
    s.settimeout(30); s.recv(65536)
print("ready", flush=True)
sys.stdin.read()
P
taskset -c "$LOAD_CPU" nginx -c "$work/up.conf" & pids+=($!)
wait_up() { for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }
wait_up "$UP"

# wrk's summary as "rps p99_ms errors".
run_wrk() {
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$1/" 2>&1)
  echo "$out" | awk '
    /Requests\/sec/ {rps = $2}
    /^ +99%/ {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; p99 = v}
    /Socket errors/ {gsub(/,/, ""); err += $4 + $6 + $8 + $10}
    /Non-2xx/ {err += $NF}
    END {printf "%s %s %d\n", rps, p99, err}'
}

# One proxy's rounds: "rps_alone p99_alone err_alone rps_idle p99_idle err_idle" per line.
measure() {
  local name=$1 port=$2 pid=$3 r
  for r in $(seq "$ROUNDS"); do
    local alone crowd
    alone=$(run_wrk "$port")
    coproc IDLER { python3 "$work/idle.py" "$port" "$IDLE"; }
    local ready=""
    read -r -t 120 ready <&"${IDLER[0]}" || true
    [[ $ready == ready ]] || { echo "$name: the idle clients did not connect" >&2; exit 1; }
    crowd=$(run_wrk "$port")
    exec {IDLER[1]}>&-
    wait "$IDLER_PID" 2>/dev/null || true
    echo "$alone $crowd"
    sleep 2
  done > "$work/$name.runs"
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  python3 - "$name" "$hwm" "$work/$name.runs" <<'PY'
import statistics as st, sys
name, hwm, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [list(map(float, l.split())) for l in open(path) if l.strip()]
col = lambda i: st.median(r[i] for r in rows)
a, pa, b, pb = col(0), col(1), col(3), col(4)
ea, eb = sum(r[2] for r in rows), sum(r[5] for r in rows)
print(f"{name}\t{a:.0f}\t{b:.0f}\t{b / a:.3f}\t{pa:.2f}\t{pb:.2f}\t{pb / pa:.3f}\t{ea:.0f}\t{eb:.0f}\t{hwm / 1024:.1f}")
PY
}

{
  printf 'proxy\trps_alone\trps_with_idle\trps_ratio\tp99_ms_alone\tp99_ms_with_idle\tp99_ratio\terrors_alone\terrors_with_idle\tpeak_rss_mib\n'
  taskset -c "$PROXY_CPU" nginx -c "$work/ng.conf" & ngpid=$!; pids+=($ngpid)
  wait_up "$PNG"
  measure nginx "$PNG" "$(pgrep -P "$ngpid" | head -1)"
  kill "$ngpid"; wait "$ngpid" 2>/dev/null || true
  SWITCHYARD_WORKERS=1 taskset -c "$PROXY_CPU" "$SY" run --config "$work/sy.toml" > "$work/logs/sy.log" 2>&1 & sypid=$!; pids+=($sypid)
  wait_up "$PSY"
  measure switchyard "$PSY" "$sypid"
} > "$work/out.tsv"
echo "$(date -u '+%F %H:%M UTC'), $IDLE idle clients beside wrk -c$CONNECTIONS -d$DURATION, $ROUNDS rounds (medians)"
column -t -s $'\t' "$work/out.tsv"
