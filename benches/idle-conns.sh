#!/usr/bin/env bash
# idle-conns.sh -- memory per idle keep-alive client connection, switchyard vs NGINX vs HAProxy.
#
# Each proxy runs with ONE worker in front of one upstream NGINX (return 200). N client connections
# (default 4000) each send one request, read the answer and then stay open and idle. Reported per proxy:
# RSS before, RSS with N idle connections, KiB per idle connection, and RSS 2 s after all of them
# closed (memory that is not given back shows there). Loopback only; every process is stopped at exit.
# With H2=1 the clients speak HTTP/2 over cleartext (prior knowledge): each opens the connection, sends
# one GET and acknowledges the server's settings; only switchyard is measured then (the peers' configs
# here listen for HTTP/1 only).
#
# usage: SWITCHYARD_BIN=target/release/switchyard [N=4000] [H2=1] [OUT_TSV=file] benches/idle-conns.sh
set -euo pipefail
N=${N:-4000}
H2=${H2:-0}
SY=${SWITCHYARD_BIN:?set SWITCHYARD_BIN to a switchyard binary}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(free_port); PNG=$(free_port); PHA=$(free_port); PSY=$(free_port); PSA=$(free_port)
mkdir -p "$work/logs"
cat > "$work/up.conf" <<C
worker_processes 1; pid $work/up.pid; error_log $work/logs/up.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "v1\n"; } } }
C
cat > "$work/ng.conf" <<C
worker_processes 1; pid $work/ng.pid; error_log $work/logs/ng.err; daemon off; worker_rlimit_nofile $((N * 2 + 1000));
events { worker_connections $((N + 1000)); }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream u { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$PNG backlog=4096; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat > "$work/ha.cfg" <<C
global
  maxconn $((N + 1000))
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend f
  bind 127.0.0.1:$PHA
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$UP
C
cat > "$work/sy.toml" <<C
[server]
listen = "127.0.0.1:$PSY"
idle_timeout = "300s"
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
nginx -c "$work/up.conf" & pids+=($!)
sleep 0.5
nginx -c "$work/ng.conf" & pids+=($!); ngmaster=$!
haproxy -f "$work/ha.cfg" -db > "$work/logs/ha.log" 2>&1 & pids+=($!); hapid=$!
SWITCHYARD_WORKERS=1 "$SY" run --config "$work/sy.toml" > "$work/logs/sy.log" 2>&1 & pids+=($!); sypid=$!
for p in $PNG $PHA $PSY; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
done
ngworker=$(pgrep -P "$ngmaster" | head -1)
cat > "$work/idle.py" <<'P'
import socket, sys, time
name, port, n, pid, h2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
# HTTP/2: preface, empty SETTINGS, HEADERS (END_STREAM|END_HEADERS) for GET http://x/ in HPACK.
REQ = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
       + bytes([0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x01, 0x78])) if h2 else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
SETTINGS_ACK = bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
base = rss(); socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(REQ); socks.append(s)
for s in socks:
    s.settimeout(10); s.recv(65536)
    if h2:
        s.sendall(SETTINGS_ACK)
time.sleep(1.0)
held = rss()
for s in socks:
    s.close()
time.sleep(2.0)
after = rss()
print(f"{name}\t{n}\t{base}\t{held}\t{(held - base) / n:.2f}\t{after}")
P
{
  printf 'proxy\tconnections\trss_before_kib\trss_idle_kib\tkib_per_idle_conn\trss_after_close_kib\n'
  if [ "$H2" != 1 ]; then
    python3 "$work/idle.py" nginx $PNG "$N" "$ngworker" 0
    python3 "$work/idle.py" haproxy $PHA "$N" "$hapid" 0
  fi
  python3 "$work/idle.py" switchyard $PSY "$N" "$sypid" "$H2"
} > "$work/out.tsv"
[ -n "${OUT_TSV:-}" ] && cp "$work/out.tsv" "$OUT_TSV"
column -t -s $'\t' "$work/out.tsv"
