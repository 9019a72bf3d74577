#!/usr/bin/env bash
# Browser tests for the dashboard (issue #4).
#
# Installs what is missing (Debian chromium, the npm packages), starts a Herald on a free
# loopback port with a throw-away SQLite file plus a loopback webhook receiver, runs the
# tests with Node's test runner, and stops everything again.
#
#   HERALD_BIN   the herald binary (default: target/debug/herald under the repo root;
#                built with `cargo build -p herald-api` when missing)
#   CHROMIUM     the browser (default: /usr/bin/chromium)
#
# The tests write docs/dashboard.png.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

log() { printf 'ui-tests: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  log "installing Debian chromium"
  as_root=()
  [ "$(id -u)" -ne 0 ] && as_root=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" apt-get install -y -q chromium >/dev/null
fi

if [ ! -d "$here/node_modules/playwright-core" ]; then
  log "npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

default_bin=0
[ -z "${HERALD_BIN:-}" ] && default_bin=1
HERALD_BIN="${HERALD_BIN:-target/debug/herald}"
case "$HERALD_BIN" in /*) ;; *) HERALD_BIN="$root/$HERALD_BIN" ;; esac
if [ ! -x "$HERALD_BIN" ]; then
  log "building herald (cargo build -p herald-api)"
  cargo build -p herald-api
elif [ "$default_bin" = 1 ] && [ -n "$(find api/ui api/src -newer "$HERALD_BIN" -type f -print -quit)" ]; then
  # The page is embedded with include_str!: a binary older than api/ui would test a stale page.
  log "target/debug/herald is older than api/ui or api/src: rebuilding (cargo build -p herald-api)"
  cargo build -p herald-api
fi
export HERALD_BIN

# ---------------------------------------------------------------- services
work="$(mktemp -d -t herald-ui-tests.XXXXXX)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -f "$work/herald.log" ]; then
    log "herald log (last 40 lines):"
    tail -n 40 "$work/herald.log" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

wait_for() { # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
    sleep 0.2
  done
}

node "$here/receiver.mjs" >"$work/receiver.out" 2>&1 &
pids+=($!)
wait_for 15 grep -q '^listening ' "$work/receiver.out" || { log "receiver did not start"; cat "$work/receiver.out" >&2; exit 1; }
receiver_port="$(sed -n 's/^listening //p' "$work/receiver.out")"
export RECEIVER_URL="http://127.0.0.1:$receiver_port"

herald_port="$(free_port)"
export HERALD_URL="http://127.0.0.1:$herald_port"
HERALD_ADDR="127.0.0.1:$herald_port" \
HERALD_SQLITE_PATH="$work/herald.db" \
HERALD_ALLOW_TARGETS="127.0.0.0/8,::1/128" \
HERALD_RETRY_SCHEDULE="200ms,200ms" \
  "$HERALD_BIN" >"$work/herald.log" 2>&1 &
pids+=($!)
wait_for 60 node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$HERALD_URL/ping" || { log "herald did not answer /ping on $HERALD_URL"; exit 1; }
log "herald on $HERALD_URL, receiver on $RECEIVER_URL"

export UI_TESTS_WORK="$work"
mkdir -p "$root/docs"
node --test --test-concurrency=1 "$here/dashboard.test.mjs"
