#!/usr/bin/env bash
# The comparison behind docs/performance.md: switchyard against NGINX and HAProxy on one core
# each, on this machine, in one go. Every part is a script of its own in benches/:
#   1. peers.sh, HTTP/1.1 keep-alive, c=64 and c=256 (NGINX_KEEPALIVE=512): req/s, p50/p99,
#      peak RSS, core use, new upstream connections, and a check of the 90/10 split;
#   2. h2-vs-nginx.sh, HTTP/2 from clients (h2c prior knowledge, h2load -c 16 -m 16);
#   3. tls-vs-nginx.sh, TLS with an ECDSA P-256 certificate: keep-alive HTTPS req/s and full
#      handshakes per second;
#   4. idle-load.sh, wrk -c256 with and without 10,000 idle keep-alive clients beside it.
# Usage (a release build first):
#   cargo build --release && benches/compare.sh > /tmp/compare.md
# PARTS="peers64 peers256 h2 tls idle10k" picks parts; each script's own knobs pass through
# (REPEAT, DURATION, ROUNDS, ...). Installs what it needs with apt-get (nginx-light, haproxy,
# wrk, nghttp2-client, curl, openssl). Loopback only; every run is bounded and stops itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SWITCHYARD_BIN=${SWITCHYARD_BIN:-target/release/switchyard}
PARTS=${PARTS:-peers64 peers256 h2 tls idle10k}
[[ -x $SWITCHYARD_BIN ]] || { echo "no $SWITCHYARD_BIN: run cargo build --release first" >&2; exit 1; }

echo "# switchyard vs NGINX and HAProxy, one core each"
echo
echo "$(date -u '+%F %H:%M UTC'); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);" \
  "$("$SWITCHYARD_BIN" --version | head -1), $(nginx -v 2>&1 | cut -d/ -f2), HAProxy" \
  "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')"
for part in $PARTS; do
  case $part in
    peers64) echo; echo "## HTTP/1.1, 64 connections"; echo; CONNECTIONS=64 NGINX_KEEPALIVE=512 benches/peers.sh ;;
    peers256) echo; echo "## HTTP/1.1, 256 connections"; echo; CONNECTIONS=256 NGINX_KEEPALIVE=512 benches/peers.sh ;;
    h2) echo; echo "## HTTP/2 from clients"; echo; benches/h2-vs-nginx.sh ;;
    tls) echo; echo "## TLS (ECDSA P-256)"; echo; benches/tls-vs-nginx.sh ;;
    idle10k) echo; echo "## 10,000 idle clients beside wrk -c256"; echo; IDLE=10000 CONNECTIONS=256 benches/idle-load.sh ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
