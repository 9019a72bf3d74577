#!/usr/bin/env bash
# Herald's benchmark matrix: floors (empty axum handler, HTTP + Redis XADD), then ingest,
# end-to-end delivery, retry timing, memory and fairness against a Herald the harness starts
# itself, fresh per scenario. Under 10 minutes on the 2-core reference machine (plus the release
# build, when it is not already up to date). Writes bench/results/<date>-<commit>.{md,json}.
#
#   scripts/bench.sh                          # the whole matrix, standalone (SQLite)
#   scripts/bench.sh --quick                  # seconds-long smoke version (figures not comparable)
#   scripts/bench.sh --url http://127.0.0.1:8000 --pid 1234   # an already-running Herald
#   scripts/bench.sh --mode redis-mongo       # api + 2 delivery processes on Redis + MongoDB
#                                             # (~5 minutes; a local redis-server and FerretDB
#                                             # unless --redis-url / --mongo-uri are given);
#                                             # writes <date>-<commit>-redis-mongo.{md,json}
#
# Extra arguments go to `herald-bench matrix` (see `target/release/herald-bench matrix --help`).
# Traffic goes to 127.0.0.1 only; every load loop is bounded in time and request count.
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTTP + Redis floor needs a Redis: HERALD_TEST_REDIS_URL, or a redis-server the harness
# starts on a free loopback port (Debian's package).
if [ -z "${HERALD_TEST_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing redis-server for the HTTP + Redis floor" >&2
        (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) ||
            echo "bench.sh: could not install redis-server; the Redis floors will be skipped" >&2
    else
        echo "bench.sh: no redis-server and no HERALD_TEST_REDIS_URL; the Redis floors will be skipped" >&2
    fi
fi

# redis-mongo mode without --mongo-uri runs FerretDB, which scripts/testenv.sh builds (once per
# version, cached in ~/.cache/herald-testenv; a no-op when it is there).
mode=standalone mongo_given=
prev=
for arg in "$@"; do
    case "$arg" in
        --mode=*) mode=${arg#--mode=} ;;
        --mongo-uri | --mongo-uri=*) mongo_given=1 ;;
    esac
    [ "$prev" = --mode ] && mode=$arg
    prev=$arg
done
[ -n "${HERALD_TEST_MONGO_URI:-}" ] && mongo_given=1
if [ "$mode" = redis-mongo ] && [ -z "$mongo_given" ] && ! command -v ferretdb >/dev/null 2>&1; then
    echo "bench.sh: HERALD_TESTENV_SERVERS='redis mongo' scripts/testenv.sh --build-only (FerretDB for redis-mongo mode)" >&2
    HERALD_TESTENV_SERVERS="redis mongo" scripts/testenv.sh --build-only
fi

echo "bench.sh: cargo build --release -p herald-api -p herald-delivery -p herald-bench" >&2
cargo build --release -p herald-api -p herald-delivery -p herald-bench

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no -- api backends core delivery Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    commit="${commit}-dirty"
fi
date="$(date -u +%Y-%m-%d)"

# The matrix bounds itself (~7 minutes); the timeout is a backstop.
exec timeout --signal=TERM --kill-after=30s 15m \
    "${CARGO_TARGET_DIR:-target}/release/herald-bench" matrix \
    --out-dir bench/results --commit "$commit" --date "$date" \
    --command "scripts/bench.sh${*:+ $*}" "$@"
