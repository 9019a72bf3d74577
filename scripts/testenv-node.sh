# shellcheck shell=bash
# shellcheck disable=SC2317  # functions are called from scripts/testenv.sh
# The `node` server of scripts/testenv.sh (sourced by it): a real single-node Kubernetes cluster
# around the test environment's kube-apiserver, so that pods run.
#
#   containerd + runc (Debian packages), its own root, state and socket under the run directory
#   CNI bridge plugin (Debian's containernetworking-plugins) on a bridge and /24 of its own
#   kubelet, kube-controller-manager, kube-scheduler, kube-proxy (iptables mode): built from the
#   same Go module set as kube-apiserver (tools/testenv/kube), in the same `go build`
#   a pause image built here from tools/testenv/pause (no image is pulled from any registry)
#
# Nothing leaves the machine: every server binds to the bridge's gateway address (or loopback),
# the pods' only routes lead to that address, forwarding off the bridge is dropped, and pods get
# no DNS servers. Teardown (node_teardown, also from --stop and the reaping of killed runs)
# leaves nothing behind: pod processes (by cgroup) and shims (by their containerd socket), then
# the servers by PID, mounts under the run directory, the pods' network namespaces, KUBE-*
# iptables chains and the rules added here, the bridge, cgroups, and the sysctls the kubelet
# and the CNI plugin change (restored to their values before the start).
#
# One node at a time per machine (the bridge, the /24 and kube-proxy's iptables chains are
# machine-wide): a lock, held by every server of the run, serialises runs that want a node.
#
# What it took, each found the hard way on this kind of machine (cgroup v1, no
# CAP_SYS_RESOURCE, no DNS off the machine allowed):
#   - containerd's CRI `restrict_oom_score_adj = true`: without CAP_SYS_RESOURCE runc fails every
#     sandbox ("can't get final child's PID from pipe: EOF", oom_score_adj: Permission denied).
#   - kubelet on cgroup v1: failCgroupV1: false, cgroupDriver: cgroupfs, failSwapOn: false.
#   - kube-apiserver --kubelet-preferred-address-types=InternalIP: otherwise `kubectl logs` and
#     `port-forward` resolve the node's name through the machine's resolver.
#   - a fixed MAC on the bridge: otherwise it takes the lowest of its ports' MACs, the gateway's
#     MAC changes as pods come and go, and every pod loses its stores for seconds.
#   - kube-proxy: conntrack.maxPerCore 0 and zero timeouts (the host's conntrack sysctls are
#     left alone), nodePortAddresses on the gateway address only.

NODE_NAME=herald-node
NODE_BRIDGE=herald-node0
# The bridge's /24 (pods and the gateway). The service range is kube-apiserver's 10.0.0.0/24.
NODE_NET=${HERALD_TESTENV_NODE_NET:-10.213.7}
NODE_GW=$NODE_NET.1
NODE_CGROUP=herald-testenv-node
NODE_LOCK=/run/lock/herald-testenv-node.lock
NODE_BINARIES="kubelet kube-controller-manager kube-scheduler kube-proxy"
# Sysctls the kubelet (and the bridge plugin: ip_forward) may change, restored at teardown.
NODE_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables"
NODE_PAUSE_IMAGE=herald.local/pause:1

# node_refuse_reason: why this machine cannot run the node (empty: it can).
node_refuse_reason() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "the node server needs root (containerd, runc, network namespaces, iptables)"
  elif ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
    echo "the node server needs overlayfs (not in /proc/filesystems)"
  elif [[ ! -d /sys/fs/cgroup/pids && $(stat -fc %T /sys/fs/cgroup 2>/dev/null) != cgroup2fs ]]; then
    echo "the node server needs cgroups (no cgroup v1 pids controller or cgroup v2 at /sys/fs/cgroup)"
  elif [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
    echo "the node server supports cgroup v1 hosts only so far (this one has cgroup v2)"
  elif [[ $(uname -m) != x86_64 ]]; then
    echo "the node server is only tried on x86_64"
  fi
}

node_check() {
  local why
  why=$(node_refuse_reason)
  [[ -z $why ]] || die "$why: not starting it (leave node out of HERALD_TESTENV_SERVERS)"
}

# ensure_node_packages: containerd, runc, the CNI plugins and iptables from Debian (once).
ensure_node_packages() {
  node_check
  command -v containerd >/dev/null && command -v runc >/dev/null && command -v ctr >/dev/null &&
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] &&
    command -v iptables-restore >/dev/null && return 0
  log "installing Debian's containerd, runc, containernetworking-plugins and iptables"
  local policy=/usr/sbin/policy-rc.d made_policy= ok=
  # Keep containerd's own service from starting (the node runs its own instance).
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  local pkgs=(containerd runc containernetworking-plugins iptables)
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; }; then
    ok=1
  fi
  [[ -z $made_policy ]] || rm -f "$policy"
  [[ -n $ok ]] || die "could not install ${pkgs[*]} with apt-get"
}

# build_pause_image: the pause binary (tools/testenv/pause) and its OCI archive, in the cache.
build_pause_image() {
  go_build pause v1 pause . "-s -w"
  local dir=${TOOL[pause]%/*}
  NODE_PAUSE_ARCHIVE=$dir/pause.oci.tar
  if [[ ! -f $dir/pause.oci.tar || $dir/pause.oci.tar -ot $dir/pause ]]; then
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/pause-rootfs.XXXXXX")
    install -m 0755 "$dir/pause" "$rootfs/pause"
    oci_layer_tar "$rootfs" "$dir/layer.tar"
    oci_archive "$dir/layer.tar" '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$NODE_PAUSE_IMAGE" \
      "$dir/pause.oci.tar"
    rm -rf "$rootfs"
  fi
}

# node_lock: one node per machine. The lock is on fd 9, which every server started afterwards
# inherits, so it is held until the last of them has stopped (also for --start runs).
node_lock() {
  mkdir -p "$(dirname "$NODE_LOCK")"
  exec 9>"$NODE_LOCK"
  if ! flock -n 9; then
    log "waiting for another testenv run's node to stop ($NODE_LOCK)"
    flock 9
  fi
}

# node_net_up: the bridge with a fixed MAC and the gateway address, the sysctls saved first, and
# forwarding off the bridge dropped. Before the other servers start: they bind to $NODE_GW.
node_net_up() {
  local n=$RUN/node s
  mkdir -p "$n"
  printf 'NODE_BRIDGE=%s\nNODE_GW=%s\nNODE_CGROUP=%s\n' "$NODE_BRIDGE" "$NODE_GW" "$NODE_CGROUP" >"$n/env"
  for s in $NODE_SYSCTLS; do
    if [[ -e /proc/sys/${s//.//} ]]; then echo "$s=$(sysctl -n "$s")"; fi
  done >"$n/sysctls"
  ls -1 /run/netns 2>/dev/null >"$n/netns.before" || true
  local d
  for d in /var/log/containers /var/log/pods /run/containerd /var/lib/cni /run/netns; do
    [[ -e $d ]] || echo "$d"
  done >"$n/created.dirs"
  if ip -4 route show | grep -q "^$NODE_NET\.0/24 " || ip -4 addr show | grep -q "inet $NODE_NET\."; then
    die "$NODE_NET.0/24 is in use on this machine (set HERALD_TESTENV_NODE_NET to another 10.x.y)"
  fi
  ip link add "$NODE_BRIDGE" type bridge
  ip link set "$NODE_BRIDGE" address 02:42:0a:d5:07:01
  ip addr add "$NODE_GW/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  local cmd
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    # mangle comes before filter, where kube-proxy's own FORWARD rules would accept first.
    "$cmd" -t mangle -I FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" \
      -m comment --comment herald-testenv-node -j DROP
  done
}

node_configs() {
  local n=$RUN/node pki=$RUN/kube/pki
  mkdir -p "$n/containerd" "$n/cni/net.d" "$n/kubelet" "$n/pod-logs"
  cat >"$n/containerd/config.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$n/containerd.sock"
[ttrpc]
  address = "$n/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
EOF
  cat >"$n/cni/net.d/10-herald.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "herald-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_NET.0/24", "rangeStart": "$NODE_NET.10", "gateway": "$NODE_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$n/cni/ipam"
      }
    }
  ]
}
EOF
  : >"$n/resolv.conf"
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_GW
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$n/containerd.sock
imageServiceEndpoint: unix://$n/containerd.sock
podLogsDir: $n/pod-logs
resolvConf: $n/resolv.conf
# Absolute and small: the machine's disk is shared with builds, and an eviction of the pods
# under test would make a failure that says nothing about them.
evictionHard: {memory.available: 50Mi, nodefs.available: 100Mi, imagefs.available: 100Mi, nodefs.inodesFree: "1000"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 30
EOF
  cat >"$n/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RUN/kube/kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_GW
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
mode: iptables
clusterCIDR: $NODE_NET.0/24
nodePortAddresses: ["$NODE_GW/32"]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: true, localhostNodePorts: false, minSyncPeriod: 1s}
EOF
}

# node_cgroups_create: the kubelet's cgroupRoot in every v1 hierarchy (cpuset's needs its cpus
# and mems filled in before anything can join it).
node_cgroups_create() {
  local c
  for c in /sys/fs/cgroup/*/; do
    [[ $(stat -fc %T "$c") == cgroupfs ]] || continue
    mkdir -p "$c$NODE_CGROUP"
  done
  if [[ -d /sys/fs/cgroup/cpuset/$NODE_CGROUP ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$NODE_CGROUP/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$NODE_CGROUP/cpuset.mems"
  fi
}

node_ready() {
  [[ $(kubectl get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] &&
    kubectl get serviceaccount default >/dev/null 2>&1 &&
    kubectl get configmap kube-root-ca.crt >/dev/null 2>&1
}

# start_node: after kube-apiserver answers (it binds to $NODE_GW then).
start_node() {
  local n=$RUN/node pki=$RUN/kube/pki
  node_configs
  node_cgroups_create
  # Image pulls (of whatever image a test's pod names) go to a proxy that is not there: they
  # fail at once on loopback instead of resolving and reaching a public registry.
  HTTP_PROXY=http://127.0.0.1:1 HTTPS_PROXY=http://127.0.0.1:1 NO_PROXY= \
    start_server containerd containerd --config "$n/containerd/config.toml"
  wait_for containerd 60 ctr --address "$n/containerd.sock" version
  ctr --address "$n/containerd.sock" -n k8s.io images import "$NODE_PAUSE_ARCHIVE" >/dev/null ||
    die "importing the pause image into containerd failed"
  start_server kube-controller-manager kube-controller-manager --kubeconfig="$RUN/kube/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=false --controllers='*,-bootstrapsigner,-tokencleaner' \
    --profiling=false
  start_server kube-scheduler kube-scheduler --kubeconfig="$RUN/kube/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false --profiling=false
  start_server kubelet kubelet --config="$n/kubelet.yaml" --kubeconfig="$RUN/kube/kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_GW" --root-dir="$n/kubelet" \
    --cert-dir="$n/kubelet-pki"
  start_server kube-proxy kube-proxy --config="$n/kube-proxy.yaml"
  export HERALD_TEST_NODE_ADDR=$NODE_GW HERALD_TEST_NODE_CONTAINERD=$n/containerd.sock
}

wait_node() {
  wait_for kubelet 120 node_ready
}

# ---------------------------------------------------------------------------
# Teardown (works from the run directory alone: --stop and reaping use it too)
# ---------------------------------------------------------------------------

# node_kill_pods DIR: every process in the node's cgroups, then containerd's shims.
node_kill_pods() {
  local dir=$1 cg=$2 deadline pids pid
  deadline=$((SECONDS + 20))
  while :; do
    pids=$(find "/sys/fs/cgroup/pids/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u) || true
    [[ -n $pids ]] || break
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    ((SECONDS < deadline)) || {
      log "node: processes left in cgroup $cg: $pids"
      break
    }
    sleep 0.2
  done
  local sock=$dir/node/containerd.sock p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $sock " || continue
    kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
}

# node_stop_servers DIR: the node's servers by PID (the kubelet first, so that it restarts
# nothing), then the pods, then containerd.
node_stop_servers() {
  local dir=$1 pid name bin want
  for want in kubelet kube-proxy kube-scheduler kube-controller-manager; do
    while read -r pid name bin; do
      [[ $name == "$want" ]] || continue
      stop_one "$pid" "$name" "$bin"
    done <"$dir/servers"
  done
  # shellcheck disable=SC1091
  (source "$dir/node/env" && node_kill_pods "$dir" "$NODE_CGROUP")
  while read -r pid name bin; do
    if [[ $name == containerd ]]; then stop_one "$pid" "$name" "$bin"; fi
  done <"$dir/servers"
  # With a node, kube-apiserver's graceful stop hangs in "Shutting down kubernetes service
  # endpoint reconciler" (it would be killed after 15 s). Its data is thrown away: 3 s, then kill.
  local deadline
  while read -r pid name bin; do
    [[ $name == kube-apiserver ]] || continue
    is_ours "$pid" "$bin" || continue
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 3))
    while is_ours "$pid" "$bin" && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done <"$dir/servers"
  return 0
}

# node_iptables_clean: the KUBE-* chains (kubelet's and kube-proxy's), the rules jumping to
# them, and the rules tagged herald-testenv-node, in every table, for IPv4 and IPv6.
node_iptables_clean() {
  local cmd table rules script
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      rules=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      script=$(
        echo "*$table"
        { grep -E '^-A ' <<<"$rules" | grep -vE '^-A KUBE-' |
          grep -E -- '-j KUBE-|--comment "?herald-testenv-node' | sed 's/^-A /-D /'; } || true
        { grep -oE '^:KUBE-[^ ]+' <<<"$rules" | sed 's/^:/-F /'; } || true
        { grep -oE '^:KUBE-[^ ]+' <<<"$rules" | sed 's/^:/-X /'; } || true
        echo COMMIT
      )
      [[ $(wc -l <<<"$script") -gt 2 ]] || continue
      "$cmd-restore" --noflush <<<"$script" || log "node: cleaning $cmd $table failed"
    done
  done
}

# node_teardown DIR: everything start_node and node_net_up made, after the servers stopped.
node_teardown() {
  local dir=$1 n=$1/node
  [[ -f $n/env ]] || return 0
  local NODE_BRIDGE NODE_GW NODE_CGROUP
  # shellcheck disable=SC1091
  source "$n/env"
  node_stop_servers "$dir"
  # Mounts below the run directory (volumes, rootfs, shm), deepest first; several rounds
  # because of the kubelet's shared bind mounts.
  local round m
  for round in 1 2 3 4 5; do
    local mounts
    mounts=$(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    [[ -n $mounts ]] || break
    for m in $mounts; do umount "$m" 2>/dev/null || ((round < 3)) || umount -l "$m" 2>/dev/null || true; done
  done
  # The pods' network namespaces (named cni-*, made by containerd) that were not there before.
  local ns
  for ns in $(ls -1 /run/netns 2>/dev/null || true); do
    [[ $ns == cni-* ]] || continue
    grep -qxF "$ns" "$n/netns.before" 2>/dev/null && continue
    ip netns delete "$ns" 2>/dev/null || true
  done
  local veth
  for veth in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link delete "$veth" 2>/dev/null || true
  done
  ip link delete "$NODE_BRIDGE" 2>/dev/null || true
  node_iptables_clean
  local c
  for c in /sys/fs/cgroup/*/; do
    [[ -d $c$NODE_CGROUP ]] || continue
    find "$c$NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  local line
  while IFS= read -r line; do
    [[ -n $line ]] && sysctl -q -w "$line" >/dev/null 2>&1 || true
  done <"$n/sysctls"
  # The kubelet links container logs into /var/log/containers whatever podLogsDir says;
  # libcni keeps results under /var/lib/cni; shims' sockets go to /run/containerd/s.
  local l
  for l in /var/log/containers/*; do
    if [[ -L $l && $(readlink "$l") == "$n/"* ]]; then rm -f "$l"; fi
  done
  # libcni's cached results, one per sandbox and network (named after the sandbox's id).
  local id
  for id in $(ls -1 "$n/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null || true); do
    rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true
  done
  local d
  while IFS= read -r d; do
    [[ -n $d && -d $d ]] || continue
    # Only what the node leaves there: sockets, fifos, empty directories.
    find "$d" -depth \( -type s -o -type p -o -type l \) -delete 2>/dev/null || true
    find "$d" -depth -type d -empty -delete 2>/dev/null || true
  done <"$n/created.dirs"
  rm -f "$n/env"
}
