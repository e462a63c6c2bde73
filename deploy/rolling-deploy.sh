#!/usr/bin/env bash
# Rolling deploy of one pool through the switchyard admin API: for each endpoint,
# deregister (drain), wait for its in-flight requests, deploy, health-check, register (undrain).
# See docs/operations.md, "Rolling deploys". Needs bash, curl 7.76 or later and jq.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: rolling-deploy.sh SERVICE POOL COMMAND [ARG...]

Replaces the instances of pool POOL of service SERVICE one at a time: drains an endpoint,
waits until it serves no request, runs COMMAND [ARG...] HOST:PORT (your deploy step: the
endpoint's address is appended as the last argument; a non-zero exit stops everything),
waits for the new instance to answer 200 on HEALTH_PATH, and undrains it.

Environment:
  ADMIN           switchyard's admin listener       (default http://127.0.0.1:9901)
  TOKEN           bearer token, if admin.token or admin.token_env is set (default none)
  HEALTH_PATH     checked on the new instance before it takes traffic (default /health)
  DRAIN_TIMEOUT   seconds to wait for in-flight requests to finish   (default 120)
  HEALTH_TIMEOUT  seconds to wait for the new instance to answer 200 (default 120)

Example (restart a systemd unit over ssh on each host):
  rolling-deploy.sh shop stable sh -c 'ssh "${1%:*}" sudo systemctl restart shop' deploy

On any failure the endpoint being worked on stays drained, so a broken instance takes no
traffic; undrain it by hand once it is fixed.
EOF
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage
  exit 0
fi
if (($# < 3)); then
  usage >&2
  exit 2
fi

SERVICE=$1
POOL=$2
shift 2
DEPLOY=("$@")

ADMIN=${ADMIN:-http://127.0.0.1:9901}
TOKEN=${TOKEN:-}
HEALTH_PATH=${HEALTH_PATH:-/health}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-120}

die() {
  echo "rolling deploy: $*" >&2
  exit 1
}

for tool in curl jq; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

admin() { # admin METHOD PATH: one admin call, its JSON answer on stdout; fails on a non-2xx
  local body auth=()
  if [[ -n $TOKEN ]]; then
    auth=(-H "Authorization: Bearer $TOKEN")
  fi
  body=$(curl -sS --fail-with-body -X "$1" "${auth[@]}" "$ADMIN$2") ||
    {
      echo "$1 $2: ${body:-no answer}" >&2
      return 1
    }
  printf '%s\n' "$body"
}

endpoint() { # endpoint ADDR: the endpoint's entry in the service state
  admin GET "/admin/services/$SERVICE" |
    jq -e --arg p "$POOL" --arg a "$1" '.pools[$p].endpoints[] | select(.address == $a)'
}

state=$(admin GET "/admin/services/$SERVICE") || die "cannot read service $SERVICE from $ADMIN"
mapfile -t endpoints < <(jq -r --arg p "$POOL" '.pools[$p].endpoints[]?.address' <<<"$state")
((${#endpoints[@]} > 0)) || die "no endpoints in pool $POOL of service $SERVICE"

for ep in "${endpoints[@]}"; do
  base="/admin/services/$SERVICE/pools/$POOL/endpoints/$ep"

  echo "$ep: deregister (drain)"
  admin POST "$base/drain" >/dev/null || die "drain of $ep refused; $ep is untouched"

  deadline=$((SECONDS + DRAIN_TIMEOUT))
  until [[ $(endpoint "$ep" | jq '.inflight') == 0 ]]; do
    ((SECONDS < deadline)) || die "$ep still has requests in flight after ${DRAIN_TIMEOUT}s; it stays drained"
    sleep 1
  done

  echo "$ep: deploy"
  "${DEPLOY[@]}" "$ep" || die "deploy to $ep failed; it stays drained"

  echo "$ep: health check http://$ep$HEALTH_PATH"
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$ep$HEALTH_PATH") == 200 ]]; do
    ((SECONDS < deadline)) || die "$ep not healthy after ${HEALTH_TIMEOUT}s; it stays drained"
    sleep 1
  done

  echo "$ep: register (undrain)"
  admin POST "$base/undrain" >/dev/null

  # With active health checks, wait until switchyard itself sees the endpoint healthy.
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  until [[ $(endpoint "$ep" | jq '.healthy') == true ]]; do
    ((SECONDS < deadline)) || die "switchyard does not see $ep healthy after ${HEALTH_TIMEOUT}s"
    sleep 1
  done
done
echo "rolling deploy of $SERVICE/$POOL done: ${#endpoints[@]} endpoint(s)"
