#!/usr/bin/env bash
# Checks that Herald's API answers as its OpenAPI document says: starts the debug `herald`
# on a free 127.0.0.1 port with a temporary SQLite file and no delivery workers, and runs
# schemathesis against its /openapi.json with the checks below. Fails when schemathesis finds
# a failure. Herald is stopped however the run ends.
#
#   scripts/schemathesis.sh              build herald if needed, run the check
#   scripts/schemathesis.sh --install    only create the schemathesis virtualenv
#
# Settings (environment):
#   HERALD_TESTENV_CACHE          where the virtualenv lives (as scripts/testenv.sh)
#   HERALD_SCHEMATHESIS_EXAMPLES  test cases per operation and phase (default 30)
#   HERALD_SCHEMATHESIS_SEED      generation seed (default fixed, so a run repeats;
#                                 `random` for a fresh one)
#   HERALD_BIN                    a herald binary to test instead of building target/debug/herald
#   HERALD_SCHEMATHESIS_CHECKS    schemathesis checks to run (default: the four named in docs/testing.md)
#   HERALD_SCHEMATHESIS_TIMEOUT   hard limit of the schemathesis run in seconds (default 150)
#   HERALD_SCHEMATHESIS_NETNS     `off` to skip the private network namespace used as root
#
# Safety: HERALD_WORKERS=false, so the subscriptions schemathesis creates (with arbitrary
# target URLs) are never delivered to; schemathesis is pointed at 127.0.0.1 only, and no
# proxy is used.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${HERALD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-testenv}
# Pinned: v4 changed the CLI, and a new release may add checks that change the verdict.
VERSION=4.32.5
VENV=$CACHE/schemathesis-$VERSION
EXAMPLES=${HERALD_SCHEMATHESIS_EXAMPLES:-30}
SEED=${HERALD_SCHEMATHESIS_SEED:-20260802}
LIMIT=${HERALD_SCHEMATHESIS_TIMEOUT:-150}
CHECKS=${HERALD_SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}

log() { printf 'schemathesis: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# install: create the virtualenv once per version (network only then), under a lock so that
# concurrent runs share one install. `.complete` is written last: a run that finds the
# directory without it (an interrupted install) starts over.
install() {
  if [[ -x $VENV/bin/st && -f $VENV/.complete ]]; then
    return 0
  fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.schemathesis.lock"
  flock 9
  if [[ ! -f $VENV/.complete ]]; then
    local start=$SECONDS
    log "installing schemathesis $VERSION into $VENV (once per version)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" ||
      die "pip install schemathesis==$VERSION failed"
    "$VENV/bin/st" --version >/dev/null || die "the installed schemathesis does not run"
    touch "$VENV/.complete"
    log "installed in $((SECONDS - start))s"
  fi
  flock -u 9
  exec 9>&-
}

# free_port: a loopback TCP port below the ephemeral range that nothing listens on.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free loopback port found"
}

RUN=
HERALD_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $HERALD_PID ]] && kill -0 "$HERALD_PID" 2>/dev/null; then
    kill -TERM "$HERALD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$HERALD_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$HERALD_PID" 2>/dev/null || true
    wait "$HERALD_PID" 2>/dev/null || true
  fi
  if [[ -n $RUN && -d $RUN ]]; then
    if ((rc != 0)) && [[ -f $RUN/herald.log ]]; then
      log "last lines of Herald's log:"
      tail -n 20 "$RUN/herald.log" >&2
    fi
    rm -rf "$RUN"
  fi
  exit "$rc"
}

main() {
  case ${1:-} in
    --install)
      install
      exit 0
      ;;
    --in-netns)
      # Inside the private network namespace made below: only loopback exists.
      ip link set lo up
      run_check "$2"
      exit 0
      ;;
    "") ;;
    *) die "unknown argument $1 (see the top of $0)" ;;
  esac
  install
  local bin=${HERALD_BIN:-}
  if [[ -z $bin ]]; then
    # A no-op when `cargo test --workspace` has just built it.
    (cd "$ROOT" && cargo build --quiet --locked -p herald-api --bin herald)
    bin=$ROOT/target/debug/herald
  fi
  [[ -x $bin ]] || die "$bin was not built"
  # As root, run Herald and schemathesis in a network namespace of their own, holding only a
  # loopback interface: then no request, DNS look-up included, can leave this machine whatever
  # the api does with the URLs it is given. Elsewhere the settings above are the only guard.
  if [[ ${HERALD_SCHEMATHESIS_NETNS:-auto} != off ]] && command -v ip >/dev/null &&
    unshare --net true 2>/dev/null; then
    exec unshare --net -- "${BASH_SOURCE[0]}" --in-netns "$bin"
  fi
  log "not in a private network namespace (that needs root, unshare and ip): loopback by settings only"
  run_check "$bin"
}

# run_check BIN: start BIN on a free loopback port, run schemathesis against it, stop it.
run_check() {
  local bin=$1 start=$SECONDS
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/herald-schemathesis.XXXXXX")
  local port key
  port=$(free_port)
  key=st-$RANDOM$RANDOM$RANDOM
  # One key for the management api and ingest, sent on every request.
  env -u HERALD_INGEST_KEY -u HERALD_ALLOW_TARGETS -u HERALD_INGEST_RATE_LIMIT \
    HERALD_ADDR="127.0.0.1:$port" HERALD_SQLITE_PATH="$RUN/herald.db" HERALD_SQLITE_SYNC=normal \
    HERALD_WORKERS=false HERALD_API_KEY="$key" HERALD_LOG_FORMAT=text RUST_LOG=warn \
    "$bin" serve </dev/null >"$RUN/herald.log" 2>&1 &
  HERALD_PID=$!
  local base=http://127.0.0.1:$port ready=
  for _ in $(seq 1 150); do
    kill -0 "$HERALD_PID" 2>/dev/null || die "herald exited during start-up"
    if curl -fsS --noproxy '*' -o /dev/null --max-time 2 "$base/healthz" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.2
  done
  [[ -n $ready ]] || die "herald not ready after 30s"

  local seed=(--seed "$SEED")
  [[ $SEED != random ]] || seed=()
  log "running against $base (checks: $CHECKS; $EXAMPLES examples per operation)"
  local rc=0
  # No proxy: every request goes straight to the loopback Herald started above. Run from the
  # run directory: schemathesis keeps a cache (.schemathesis/) in its working directory.
  (cd "$RUN" && env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
    NO_PROXY='*' SCHEMATHESIS_HOOKS= \
    timeout --kill-after=10 "$LIMIT" \
    "$VENV/bin/st" --no-color run "$base/openapi.json" \
    --url "$base" \
    --header "Authorization: Bearer $key" \
    --checks "$CHECKS" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$EXAMPLES" "${seed[@]}" \
    --workers 1 \
    --request-timeout 10 \
    --max-redirects 0 \
    --generation-database none \
    --suppress-health-check too_slow \
    --report-dir "$RUN/report") || rc=$?
  if ((rc == 124 || rc == 137)); then
    die "schemathesis did not finish within ${LIMIT}s"
  fi
  kill -0 "$HERALD_PID" 2>/dev/null || die "herald died during the run"
  ((rc == 0)) || die "schemathesis found failures (exit $rc)"
  log "passed in $((SECONDS - start))s"
}

main "$@"
