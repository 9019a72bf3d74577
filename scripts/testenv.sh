#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions are also called indirectly (traps, PREPARE, wait_for)
# Herald's test environment: real Redis, a real Redis Cluster of 3 masters and 3
# replicas (`redis-cluster`), FerretDB (MongoDB wire protocol),
# etcd + kube-apiserver (a node-less Kubernetes control plane), helm and
# check-jsonschema (validates docker-compose.yml against the Compose spec); on request
# (`node`) a real single-node cluster around that control plane, where pods run
# (scripts/testenv-node.sh).
#
#   scripts/testenv.sh [--] COMMAND [ARGS...]   build what is missing, start the
#                                               servers, run COMMAND with their
#                                               addresses exported, stop them
#   scripts/testenv.sh --build-only             build/cache every tool, start nothing
#   scripts/testenv.sh --start                  start the servers and leave them
#                                               running; prints `export` lines
#   scripts/testenv.sh --stop RUN_DIR           stop servers left by --start
#   scripts/testenv.sh --help
#
# Exported to COMMAND: HERALD_TEST_REDIS_URL, HERALD_TEST_REDIS_CONF,
# HERALD_TEST_MONGO_URI, HERALD_TEST_KUBECONFIG (also as KUBECONFIG),
# HERALD_TEST_REDIS_CLUSTER_NODES (with redis-cluster: host:port of every node, comma-separated),
# HERALD_TEST_HELM, HERALD_TEST_CHECK_JSONSCHEMA, HERALD_TESTENV_DIR,
# HELM_{CONFIG,CACHE,DATA}_HOME, and PATH with etcd, kube-apiserver, kubectl,
# ferretdb, helm and check-jsonschema first. With node: HERALD_TEST_NODE_ADDR (the node
# bridge's gateway address, where kube-apiserver, Redis and FerretDB then listen too, and
# where pods reach the machine) and HERALD_TEST_NODE_CONTAINERD (the node's containerd
# socket, for `ctr -n k8s.io images import`).
#
# Settings (environment):
#   HERALD_TESTENV_CACHE    where built tools and Go caches live
#                           (default: ${XDG_CACHE_HOME:-$HOME/.cache}/herald-testenv)
#   HERALD_TESTENV_SERVERS  which servers to start (default: "redis redis-cluster mongo
#                           kube"; add "node" for a real node: root, cgroup v1 and
#                           overlayfs needed)
#   HERALD_TESTENV_NODE_NET the node's /24 as its first three octets (default: 10.213.7)
#   HERALD_TESTENV_GO_P     Go build parallelism (default: 1, or nproc when CI=true)
#   HERALD_TESTENV_KEEP=1   keep the run directory (logs, data) after stopping
#
# Go tools are built from the consumer modules in tools/testenv/*/ (versions are
# pinned by their go.mod/go.sum) at low priority (nice 19), once per version, into
# $CACHE/NAME-VERSION/STAMP/ (STAMP: a hash of what the build depends on, so that
# checkouts with different go.mod files never replace each other's running binaries).
# With node, the kube binaries (control plane and node) come from one `go build`.
# check-jsonschema (pinned below) is installed from PyPI into a virtualenv in
# the cache, once per version; it needs python3 with the venv module.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODS=$ROOT/tools/testenv
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${HERALD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-testenv}
SERVERS=${HERALD_TESTENV_SERVERS:-redis redis-cluster mongo kube}
# The node is a node of the test control plane.
[[ " $SERVERS " != *" node "* || " $SERVERS " == *" kube "* ]] || SERVERS+=" kube"
# Bump when the way tools are built changes, to force a rebuild.
RECIPE=1
# Pinned: its vendored Compose schema changes between releases, and with it the verdict.
CHECK_JSONSCHEMA_VERSION=0.39.0
CHECK_JSONSCHEMA_VENV=$CACHE/check-jsonschema-$CHECK_JSONSCHEMA_VERSION

log() { printf 'testenv: %s\n' "$*" >&2; }
# shellcheck source=scripts/lib/oci.sh
source "$ROOT/scripts/lib/oci.sh"
# shellcheck source=scripts/testenv-node.sh
source "$ROOT/scripts/testenv-node.sh"
trap 'log "unexpected failure (line $LINENO): $BASH_COMMAND"' ERR
die() {
  log "error: $*"
  exit 1
}

usage() { sed -n '3,/^set -E/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

has_server() { [[ " $SERVERS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------

# modver MODULE_DIR MODULE_PATH: the version a consumer go.mod requires.
modver() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' \
    "$MODS/$1/go.mod"
}

KUBE_VERSION=$(modver kube k8s.io/kubernetes)
ETCD_VERSION=$(modver etcd go.etcd.io/etcd/server/v3)
FERRETDB_VERSION=$(modver ferretdb github.com/FerretDB/FerretDB)
HELM_VERSION=$(modver helm helm.sh/helm/v3)
[[ -n $KUBE_VERSION && -n $ETCD_VERSION && -n $FERRETDB_VERSION && -n $HELM_VERSION ]] ||
  die "could not read pinned versions from $MODS/*/go.mod"

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    [[ -x /usr/local/go/bin/go ]] || die "Go is needed to build the test servers (not found on PATH)"
    PATH=/usr/local/go/bin:$PATH
  fi
}

# go_build NAME VERSION MODULE PACKAGE LDFLAGS [PREPARE]: build PACKAGE from the
# consumer module tools/testenv/MODULE into $CACHE/NAME-VERSION/NAME unless an
# identical build is already there. PREPARE, if given, is a function that gets
# the output directory and prints the directory to build in instead.
go_build() {
  go_build_set "$2" "$3" "$5" "${6:-}" "$1=$4"
}

# build_stamp MODULE_DIR PACKAGE LDFLAGS PREPARE: what a binary's build depends on.
build_stamp() {
  local mod=$1
  {
    echo "recipe=$RECIPE pkg=$2 ldflags=$3 prepare=$4"
    shopt -s nullglob
    local f
    for f in "$mod"/go.mod "$mod"/go.sum "$mod"/*.go "$mod"/*.txt; do [[ ! -f $f ]] || cat "$f"; done
  } | sha256sum | cut -d' ' -f1
}

# Where each built tool is (TOOL[NAME]), set by go_build_set.
declare -A TOOL=()

# go_build_set VERSION MODULE LDFLAGS PREPARE NAME=PACKAGE...: each PACKAGE of the consumer
# module tools/testenv/MODULE into $CACHE/NAME-VERSION/STAMP/NAME, unless an identical build is
# already there; the missing ones in one `go build` (their shared packages compile once).
# STAMP (a hash of what the build depends on) names the directory, so that a different build
# (another branch's go.mod) never replaces a binary that a running server was started from.
# PREPARE, if not empty, is a function that gets the output directory and prints the
# directory to build in instead.
go_build_set() {
  local version=$1 modname=$2 mod=$MODS/$2 ldflags=$3 prepare=$4
  shift 4
  local -a names=() pkgs=() stamps=()
  local spec name pkg stamp dir
  for spec in "$@"; do
    name=${spec%%=*} pkg=${spec#*=}
    stamp=$(build_stamp "$mod" "$pkg" "$ldflags" "$prepare")
    dir=$CACHE/$name-$version/${stamp:0:16}
    TOOL[$name]=$dir/$name
    [[ -x $dir/$name ]] && continue
    names+=("$name") pkgs+=("$pkg") stamps+=("$stamp")
  done
  ((${#names[@]})) || return 0
  ensure_go
  local label=${names[*]} logname=${names[0]}
  ((${#names[@]} == 1)) || logname=$modname
  local out=${TOOL[${names[0]}]%/*}
  mkdir -p "$out" "$CACHE/logs"
  local p=${HERALD_TESTENV_GO_P:-}
  if [[ -z $p ]]; then
    if [[ ${CI:-} == true ]]; then p=$(nproc); else p=1; fi
  fi
  log "building ${label// /, } $version (once per version; log: $CACHE/logs/$logname.log)"
  local start=$SECONDS tmp=$out/.build.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # A subshell, so that none of these settings leak into the tested command.
  if ! (
    export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOWORK=off CGO_ENABLED=0
    export GOFLAGS="-mod=readonly -trimpath -buildvcs=false -p=$p"
    builddir=$mod
    if [[ -n $prepare ]]; then builddir=$("$prepare" "$out" "$mod") || exit 1; fi
    # With several packages, -o names a directory and each binary is named after its package.
    if ((${#pkgs[@]} == 1)); then target=$tmp/${names[0]}; else target=$tmp/; fi
    cd "$builddir" && nice -n 19 go build -ldflags "$ldflags" -o "$target" "${pkgs[@]}"
  ) >"$CACHE/logs/$logname.log" 2>&1; then
    tail -n 40 "$CACHE/logs/$logname.log" >&2
    die "building $label failed (full log: $CACHE/logs/$logname.log)"
  fi
  local i
  for i in "${!names[@]}"; do
    name=${names[i]} dir=${TOOL[${names[i]}]%/*}
    mkdir -p "$dir"
    [[ -x $tmp/$name ]] || die "go build made no $name (log: $CACHE/logs/$logname.log)"
    mv -f "$tmp/$name" "$dir/$name"
    echo "${stamps[i]}" >"$dir/.stamp"
  done
  rm -rf "$tmp"
  log "built ${label// /, } $version in $((SECONDS - start))s"
}

# FerretDB embeds build/version/version.txt, which its release process generates;
# a binary built straight from the module proxy panics at start-up without it.
# So build from a writable copy of the module source with that file added
# (tools/testenv/ferretdb/version.txt), wired in by a directory replace.
prepare_ferretdb() {
  local out=$1 mod=$2 src
  src=$(cd "$mod" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  # (Chained with &&: this runs where `set -e` does not apply.)
  [[ -d $src ]] &&
    rm -rf "$out/src" "$out/build" &&
    mkdir -p "$out/build" &&
    cp -r "$src" "$out/src" &&
    chmod -R u+w "$out/src" &&
    cp "$mod/version.txt" "$out/src/build/version/version.txt" &&
    cp "$mod/go.mod" "$mod/go.sum" "$out/build/" &&
    echo "replace github.com/FerretDB/FerretDB => ../src" >>"$out/build/go.mod" &&
    echo "$out/build"
}

kube_ldflags() {
  local v=$KUBE_VERSION major minor
  major=${v#v}
  major=${major%%.*}
  minor=${v#v*.}
  minor=${minor%%.*}
  local f="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}

helm_ldflags() {
  # As helm's Makefile: the default Kubernetes version comes from its client-go.
  local cg major minor
  cg=$(modver helm k8s.io/client-go) # v0.MINOR.PATCH
  major=$((${cg:1:1} + 1))
  minor=${cg#v*.}
  minor=${minor%%.*}
  local f="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  f+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    f+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  echo "$f"
}

# build_all: build every tool the selected servers need (plus helm and kubectl
# with kube), serialised by a lock so that concurrent runs share one build.
build_all() {
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.build.lock"
  if ! flock -n 8; then
    log "waiting for another testenv build to finish ($CACHE/.build.lock)"
    flock 8
  fi
  if has_server mongo; then
    go_build ferretdb "$FERRETDB_VERSION" ferretdb github.com/FerretDB/FerretDB/cmd/ferretdb "-s -w" \
      prepare_ferretdb
  fi
  if has_server kube; then
    go_build etcd "$ETCD_VERSION" etcd . "-s -w"
    # One `go build` for the control plane and, with node, the node's binaries.
    local -a kube=(kube-apiserver kubectl) specs=()
    has_server node && read -r -a kube <<<"${kube[*]} $NODE_BINARIES"
    local b
    for b in "${kube[@]}"; do specs+=("$b=k8s.io/kubernetes/cmd/$b"); done
    go_build_set "$KUBE_VERSION" kube "$(kube_ldflags)" "" "${specs[@]}"
    go_build helm "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm "$(helm_ldflags)"
  fi
  if has_server node; then
    build_pause_image
  fi
  flock -u 8
  exec 8>&-
}

# install_check_jsonschema: the virtualenv, once per version (network only then), under a
# lock so that concurrent runs share one install. `.complete` is written last: a run that
# finds the directory without it (an interrupted install) starts over.
install_check_jsonschema() {
  local venv=$CHECK_JSONSCHEMA_VENV
  [[ -x $venv/bin/check-jsonschema && -f $venv/.complete ]] && return 0
  mkdir -p "$CACHE"
  exec 7>"$CACHE/.check-jsonschema.lock"
  flock 7
  if [[ ! -f $venv/.complete ]]; then
    local start=$SECONDS
    log "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $venv (once per version)"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" ||
      die "pip install check-jsonschema==$CHECK_JSONSCHEMA_VERSION failed"
    "$venv/bin/check-jsonschema" --version >/dev/null || die "the installed check-jsonschema does not run"
    touch "$venv/.complete"
    log "installed check-jsonschema in $((SECONDS - start))s"
  fi
  flock -u 7
  exec 7>&-
}

# Redis, and Debian's faketime (libfaketime), which the clock-skew tests run a worker under.
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 &&
    command -v faketime >/dev/null 2>&1 && return 0
  log "installing Debian's redis-server and faketime packages"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
  # Keep the package's own service from starting (we start our own instance).
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    made_policy=1
  fi
  local ok=
  export DEBIAN_FRONTEND=noninteractive
  if "${sudo[@]}" apt-get install -y -q --no-install-recommends redis-server faketime >&2 ||
    { "${sudo[@]}" apt-get update -q >&2 &&
      "${sudo[@]}" apt-get install -y -q --no-install-recommends redis-server faketime >&2; }; then
    ok=1
  fi
  [[ -z $made_policy ]] || "${sudo[@]}" rm -f "$policy"
  [[ -n $ok ]] || die "could not install redis-server and faketime with apt-get"
}

# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

RUN=
CMD_PID=
NODE_UP=
BIND_ADDR=127.0.0.1
DETACH=()
declare -A USED_PORTS=()

# free_port: a loopback TCP port below the ephemeral range that nothing listens on.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [[ -z ${USED_PORTS[$p]:-} ]] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS[$p]=1
      echo "$p"
      return 0
    fi
  done
  die "no free loopback port found"
}

# start_server NAME BINARY ARGS...: start in the background, log to $RUN/NAME.log
# and record "PID NAME BINARY" so that stop_servers (or --stop) can end it.
start_server() {
  local name=$1
  shift
  "${DETACH[@]}" "$@" </dev/null >"$RUN/$name.log" 2>&1 &
  echo "$! $name $(readlink -f "$(command -v "$1")")" >>"$RUN/servers"
}

# wait_for NAME SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local name=$1 timeout=$2 pid
  shift 2
  pid=$(awk -v n="$name" '$2 == n { print $1 }' "$RUN/servers")
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$RUN/$name.log" >&2
      die "$name exited during start-up (log: $RUN/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$RUN/$name.log" >&2
      die "$name not ready after ${timeout}s (log: $RUN/$name.log)"
    fi
    sleep 0.2
  done
}

tcp_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# is_ours PID BINARY: PID is still the process we started (not a reused PID).
is_ours() {
  kill -0 "$1" 2>/dev/null && [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$2" ]]
}

# stop_one PID NAME BINARY: SIGTERM, and SIGKILL after 15 s.
stop_one() {
  local pid=$1 name=$2 bin=$3 deadline
  is_ours "$pid" "$bin" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 15))
  while is_ours "$pid" "$bin" && ((SECONDS < deadline)); do sleep 0.1; done
  if is_ours "$pid" "$bin"; then
    log "$name did not stop in 15s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_servers DIR: stop the servers recorded in DIR/servers, newest first (the node's
# servers, pods and network first: node_teardown).
stop_servers() {
  local dir=$1 pid name bin
  [[ -f $dir/servers ]] || return 0
  node_teardown "$dir"
  while read -r pid name bin; do
    stop_one "$pid" "$name" "$bin"
  done < <(tac "$dir/servers")
  # A test may have restarted Redis from $HERALD_TEST_REDIS_CONF: stop that too.
  if [[ -f $dir/redis/port ]] && command -v redis-cli >/dev/null 2>&1; then
    local port
    port=$(<"$dir/redis/port")
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG &&
      redis-cli -h 127.0.0.1 -p "$port" config get dir 2>/dev/null | grep -qxF "$dir/redis"; then
      redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
  fi
  : >"$dir/servers"
}

# owner_alive PID: PID is a running testenv.sh (not a zombie, not a reused PID).
owner_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q testenv.sh
}

# Servers of earlier runs whose script was killed outright (SIGKILL) are stopped
# here; runs left by --start (owner "detached") are left alone.
reap_stale_runs() {
  local d owner
  for d in "${TMPDIR:-/tmp}"/herald-testenv.*/; do
    [[ -f $d/owner ]] || continue
    owner=$(<"$d/owner")
    [[ $owner != detached ]] || continue
    owner_alive "$owner" && continue
    log "stopping servers left by an interrupted run in $d"
    stop_servers "${d%/}"
    rm -rf "${d:?}"
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $CMD_PID ]] && kill -0 "$CMD_PID" 2>/dev/null; then
    # The command runs in its own process group: stop all of it (cargo and
    # the test binaries it started).
    kill -TERM -- "-$CMD_PID" 2>/dev/null || kill -TERM "$CMD_PID" 2>/dev/null || true
    wait "$CMD_PID" 2>/dev/null || true
  fi
  if [[ -n $RUN && -d $RUN ]]; then
    stop_servers "$RUN"
    if [[ ${HERALD_TESTENV_KEEP:-} == 1 ]]; then
      log "kept $RUN"
    else
      rm -rf "$RUN"
    fi
  fi
  exit "$rc"
}

start_redis() {
  local port
  port=$(free_port)
  mkdir -p "$RUN/redis"
  echo "$port" >"$RUN/redis/port"
  cat >"$RUN/redis/redis.conf" <<EOF
bind 127.0.0.1${NODE_UP:+ $NODE_GW}
port $port
# With a node, pods connect from the bridge (a private /24 whose traffic stays on the machine).
protected-mode $(if [[ -n $NODE_UP ]]; then echo no; else echo yes; fi)
dir $RUN/redis
appendonly yes
appendfsync everysec
save ""
daemonize no
logfile ""
EOF
  start_server redis redis-server "$RUN/redis/redis.conf"
  export HERALD_TEST_REDIS_URL=redis://127.0.0.1:$port
  export HERALD_TEST_REDIS_CONF=$RUN/redis/redis.conf
}

# A Redis Cluster of 3 masters with a replica each, from the same redis-server, on
# loopback: the cluster-mode counterpart of start_redis. Each node's bus port is a free
# port of its own (cluster-port), not port + 10000, which may be taken or out of range.
start_redis_cluster() {
  local i port bus nodes=()
  mkdir -p "$RUN/redis-cluster"
  for i in 1 2 3 4 5 6; do
    port=$(free_port)
    bus=$(free_port)
    mkdir -p "$RUN/redis-cluster/$i"
    echo "$port" >"$RUN/redis-cluster/$i/port"
    cat >"$RUN/redis-cluster/$i/redis.conf" <<EOF
bind 127.0.0.1
port $port
cluster-enabled yes
cluster-port $bus
cluster-config-file nodes.conf
cluster-node-timeout 2000
dir $RUN/redis-cluster/$i
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
save ""
daemonize no
logfile ""
EOF
    start_server "redis-cluster-$i" redis-server "$RUN/redis-cluster/$i/redis.conf"
    nodes+=("127.0.0.1:$port")
  done
  (
    IFS=,
    echo "${nodes[*]}" >"$RUN/redis-cluster/nodes"
  )
  export HERALD_TEST_REDIS_CLUSTER_NODES
  HERALD_TEST_REDIS_CLUSTER_NODES=$(<"$RUN/redis-cluster/nodes")
}

# Joins the six nodes into one cluster and waits until every slot is served.
form_redis_cluster() {
  local i nodes first
  for i in 1 2 3 4 5 6; do
    wait_for "redis-cluster-$i" 30 sh -c "redis-cli -h 127.0.0.1 -p $(<"$RUN/redis-cluster/$i/port") ping | grep -q PONG"
  done
  nodes=$(tr ',' ' ' <"$RUN/redis-cluster/nodes")
  first=$(<"$RUN/redis-cluster/1/port")
  # shellcheck disable=SC2086 # one argument per node
  redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes \
    >"$RUN/redis-cluster/create.log" 2>&1 ||
    { tail -n 30 "$RUN/redis-cluster/create.log" >&2; die "redis-cli --cluster create failed"; }
  wait_for redis-cluster-1 30 sh -c "redis-cli -h 127.0.0.1 -p $first cluster info | grep -q '^cluster_state:ok'"
}

start_mongo() {
  local port
  port=$(free_port)
  mkdir -p "$RUN/ferretdb/data" "$RUN/ferretdb/state"
  echo "$port" >"$RUN/ferretdb/port"
  start_server ferretdb ferretdb --handler=sqlite --sqlite-url="file:$RUN/ferretdb/data/" \
    --listen-addr="$BIND_ADDR:$port" --debug-addr=- --state-dir="$RUN/ferretdb/state" \
    --telemetry=disable --log-level=warn
  export HERALD_TEST_MONGO_URI=mongodb://$BIND_ADDR:$port/
}

# Certificates for the control plane: one CA signing the apiserver's serving
# certificate (127.0.0.1, localhost) and an admin client certificate
# (O=system:masters), plus the service-account signing key.
make_kube_certs() {
  local d=$RUN/kube/pki
  mkdir -p "$d"
  # With a node, the apiserver listens on the bridge's gateway and pods reach it as the
  # `kubernetes` Service (the range's first address) by its in-cluster names.
  local sans="IP:127.0.0.1,DNS:localhost"
  [[ -z ${NODE_UP:-} ]] || sans+=",IP:$NODE_GW,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  (
    cd "$d"
    openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=herald-testenv-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt 2>/dev/null
    local kind
    for kind in server admin; do
      openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$kind.key"
    done
    openssl req -new -key server.key -subj "/CN=kube-apiserver" -out server.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=$sans" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req -new -key admin.key -subj "/O=system:masters/CN=herald-admin" -out admin.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=clientAuth" >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out sa.key
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "generating certificates with openssl failed"
}

start_kube() {
  local etcd_port peer_port api_port token
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)
  mkdir -p "$RUN/etcd" "$RUN/kube/certs"
  chmod 700 "$RUN/etcd"
  start_server etcd etcd --name=herald-testenv --data-dir="$RUN/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="herald-testenv=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level=warn

  make_kube_certs
  local pki=$RUN/kube/pki
  token=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  echo "$token,herald-admin,herald-admin,system:masters" >"$RUN/kube/tokens.csv"

  wait_for etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"
  # Without a node no controller makes ServiceAccounts, so that admission is off; with one it
  # is on (pods get tokens), and the apiserver reaches the kubelet by its address, as admin.
  local -a node_flags=(--disable-admission-plugins=ServiceAccount)
  [[ -z ${NODE_UP:-} ]] || node_flags=(--kubelet-preferred-address-types=InternalIP
    --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key")
  start_server kube-apiserver kube-apiserver \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$BIND_ADDR" --advertise-address="$BIND_ADDR" --secure-port="$api_port" \
    --cert-dir="$RUN/kube/certs" --tls-cert-file="$pki/server.crt" --tls-private-key-file="$pki/server.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$RUN/kube/tokens.csv" \
    --service-account-issuer="https://$BIND_ADDR:$api_port" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --authorization-mode=RBAC "${node_flags[@]}" \
    --profiling=false

  b64() { base64 -w0 <"$pki/$1"; }
  cat >"$RUN/kube/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: herald-testenv
  cluster:
    server: https://$BIND_ADDR:$api_port
    certificate-authority-data: $(b64 ca.crt)
users:
- name: herald-admin
  user:
    token: $token
- name: herald-admin-cert
  user:
    client-certificate-data: $(b64 admin.crt)
    client-key-data: $(b64 admin.key)
contexts:
- name: herald-testenv
  context:
    cluster: herald-testenv
    user: herald-admin
    namespace: default
- name: herald-testenv-cert
  context:
    cluster: herald-testenv
    user: herald-admin-cert
    namespace: default
current-context: herald-testenv
preferences: {}
EOF
  chmod 600 "$RUN/kube/kubeconfig"
  export HERALD_TEST_KUBECONFIG=$RUN/kube/kubeconfig KUBECONFIG=$RUN/kube/kubeconfig
  KUBE_READY=(curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token"
    "https://$BIND_ADDR:$api_port/readyz")
}

start_all() {
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/herald-testenv.XXXXXX")
  echo "${1:-$$}" >"$RUN/owner"
  : >"$RUN/servers"
  mkdir -p "$RUN/bin"
  local name dir
  if has_server kube; then
    for name in etcd kube-apiserver kubectl helm; do
      ln -s "${TOOL[$name]}" "$RUN/bin/$name"
    done
    export HERALD_TEST_HELM=$RUN/bin/helm
    # Keep helm's repositories, cache and plugins inside the run directory.
    export HELM_CONFIG_HOME=$RUN/helm/config HELM_CACHE_HOME=$RUN/helm/cache HELM_DATA_HOME=$RUN/helm/data
  fi
  if has_server mongo; then
    ln -s "${TOOL[ferretdb]}" "$RUN/bin/ferretdb"
  fi
  ln -s "$CHECK_JSONSCHEMA_VENV/bin/check-jsonschema" "$RUN/bin/check-jsonschema"
  export HERALD_TEST_CHECK_JSONSCHEMA=$RUN/bin/check-jsonschema
  export PATH=$RUN/bin:$PATH
  export HERALD_TESTENV_DIR=$RUN

  local start=$SECONDS
  BIND_ADDR=127.0.0.1
  if has_server node; then
    node_lock
    node_net_up
    NODE_UP=1 BIND_ADDR=$NODE_GW
    for name in $NODE_BINARIES; do ln -s "${TOOL[$name]}" "$RUN/bin/$name"; done
  fi
  has_server redis && start_redis
  has_server redis-cluster && start_redis_cluster
  has_server mongo && start_mongo
  has_server kube && start_kube
  if has_server redis; then
    wait_for redis 30 sh -c "redis-cli -h 127.0.0.1 -p $(<"$RUN/redis/port") ping | grep -q PONG"
  fi
  if has_server redis-cluster; then
    form_redis_cluster
  fi
  if has_server mongo; then
    wait_for ferretdb 60 tcp_open "$(<"$RUN/ferretdb/port")" "$BIND_ADDR"
  fi
  if has_server kube; then
    wait_for kube-apiserver 240 "${KUBE_READY[@]}"
  fi
  if has_server node; then
    start_node
    wait_node
  fi
  log "servers ready in $((SECONDS - start))s (run dir: $RUN)"
}

print_env() {
  local v
  for v in HERALD_TEST_REDIS_URL HERALD_TEST_REDIS_CONF HERALD_TEST_REDIS_CLUSTER_NODES HERALD_TEST_MONGO_URI HERALD_TEST_KUBECONFIG KUBECONFIG \
    HERALD_TEST_HELM HERALD_TEST_CHECK_JSONSCHEMA HERALD_TEST_NODE_ADDR HERALD_TEST_NODE_CONTAINERD HELM_CONFIG_HOME HELM_CACHE_HOME HELM_DATA_HOME HERALD_TESTENV_DIR PATH; do
    [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  return 0
}

# Builds what is missing, stops servers of runs that were killed outright, and installs the
# traps that stop this run's servers however it ends.
prepare_run() {
  { has_server redis || has_server redis-cluster; } && ensure_redis
  has_server node && ensure_node_packages
  build_all
  install_check_jsonschema
  reap_stale_runs
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# ---------------------------------------------------------------------------

# All of the top level is inside main, so that bash has read the whole script
# before running any of it: editing the file during a run cannot derail it.
main() {
  local rc=0
  case ${1:-} in
    "" | -h | --help)
      usage
      [[ -n ${1:-} ]] || exit 2
      exit 0
      ;;
    --build-only)
      { has_server redis || has_server redis-cluster; } && ensure_redis
      has_server node && ensure_node_packages
      build_all
      install_check_jsonschema
      log "all tools built (cache: $CACHE)"
      exit 0
      ;;
    --stop)
      [[ -n ${2:-} && -f $2/owner ]] || die "usage: $0 --stop RUN_DIR (a directory printed by --start)"
      stop_servers "$2"
      rm -rf "${2:?}"
      log "stopped"
      exit 0
      ;;
    --start)
      prepare_run
      DETACH=(setsid) # own session: not stopped by the caller's Ctrl-C
      start_all detached
      trap - EXIT INT TERM HUP
      print_env
      echo "# stop with: $0 --stop $RUN"
      exit 0
      ;;
    --)
      shift
      [[ $# -gt 0 ]] || die "no command given"
      ;;
    -*) die "unknown option $1 (see --help)" ;;
  esac

  prepare_run
  start_all
  if [[ -t 0 ]]; then
    # Interactive: keep the command in the foreground so it can use the terminal.
    "$@" || rc=$?
  else
    # Otherwise run it in the background, in a process group of its own, so that
    # a signal to this script is handled at once: the trap stops the command's
    # whole process group, then the servers.
    set -m
    "$@" <&0 &
    CMD_PID=$!
    set +m
    wait "$CMD_PID" || rc=$?
    CMD_PID=
  fi
  exit "$rc"
}

main "$@"
