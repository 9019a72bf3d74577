#!/usr/bin/env bash
# Herald's image without Docker: an OCI archive laid out as the Dockerfile's runtime stage lays
# out its image (same paths, user, environment, entrypoint, healthcheck), from binaries built on
# this machine. The Dockerfile stays the way to build the image for users; this script is for
# machines without a Docker engine (the test node of scripts/testenv.sh). A test
# (testenv/tests/it/dockerfile.rs) builds an archive with this script and compares it with the
# Dockerfile, so that the two cannot drift.
#
#   scripts/build-image.sh [--profile release|dev] [--bin-dir DIR] [--name NAME] [--no-build] OUT.tar
#
#   --profile   cargo profile of the binaries (default: release, as the Dockerfile)
#   --bin-dir   take the binaries from DIR instead of building them with cargo
#   --name      image name (default: herald:<workspace version>)
#
# The distroless `cc` base of the Dockerfile (glibc, libgcc, CA certificates, a `nonroot` user)
# is replaced by what the binaries need of this machine: the shared libraries `ldd` lists, the CA
# bundle, and /etc/passwd and /etc/group with root, nobody and nonroot (65532). So the binaries
# must have been linked against a glibc no newer than the one they then run with: this machine's.
# Debug information is stripped from the copies (the release profile strips already).
# Load the result with `ctr -n k8s.io images import OUT.tar`, `podman load -i OUT.tar`, or
# Docker 25+'s `docker load -i OUT.tar`.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/oci.sh
source "$ROOT/scripts/lib/oci.sh"

# What the Dockerfile's runtime stage says (testenv/tests/it/dockerfile.rs compares).
BINARIES="herald herald-delivery herald-operator" # ARG BINARIES
BIN_DEST=usr/local/bin                             # COPY --from=builder /out/bin/ /usr/local/bin/
DATA_DIR=data                                      # COPY --chown=65532:65532 /out/data /data
RUN_USER=65532:65532                               # USER
WORKDIR=/data                                      # WORKDIR
ENV_VARS=(HERALD_ADDR=0.0.0.0:8000 HERALD_SQLITE_PATH=/data/herald.db HERALD_LOG_FORMAT=json)
VOLUMES=(/data)                                    # VOLUME
PORTS=(8000/tcp)                                   # EXPOSE
HEALTHCHECK_CMD=(herald healthcheck)               # HEALTHCHECK ... CMD [...]
HEALTHCHECK_TIMES=(10s 5s 10s 3)                   # --interval --timeout --start-period --retries
CMD=(herald)                                       # CMD
# From the distroless base (gcr.io/distroless/cc-debian12:nonroot).
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)

die() {
  echo "build-image: error: $*" >&2
  exit 1
}
usage() { sed -n '2,/^set -E/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

profile=release bin_dir= name= build=1 out=
while (($#)); do
  case $1 in
    --profile) profile=${2:?}; shift 2 ;;
    --bin-dir) bin_dir=${2:?}; build=; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --no-build) build=; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $out ]] || die "one output file only"; out=$1; shift ;;
  esac
done
[[ -n $out ]] || die "usage: $0 [--profile P] [--bin-dir DIR] [--name NAME] OUT.tar"
if [[ -z $name ]]; then
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
  name=herald:$version
fi
# As Docker names it: `herald:0.1.0` is docker.io/library/herald:0.1.0 (the name the Kubernetes
# runtime looks the chart's `image.repository: herald` up by).
first=${name%%/*}
if [[ $name != */* ]]; then
  name=docker.io/library/$name
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
  name=docker.io/$name
fi
if [[ -z $bin_dir ]]; then
  target=${CARGO_TARGET_DIR:-$ROOT/target}
  [[ $profile == dev ]] && bin_dir=$target/debug || bin_dir=$target/$profile
fi
if [[ -n $build ]]; then
  args=()
  for b in $BINARIES; do args+=(--bin "$b"); done
  (cd "$ROOT" && cargo build --locked --workspace --profile "$profile" "${args[@]}") >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/herald-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/$BIN_DEST" "$rootfs/$DATA_DIR" "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

declare -A libs=()
for b in $BINARIES; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b not found (build it, or give --bin-dir)"
  install -m 0755 "$bin_dir/$b" "$rootfs/$BIN_DEST/$b"
  strip --strip-debug "$rootfs/$BIN_DEST/$b" 2>/dev/null || true
  # `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  while read -r lib; do libs[$lib]=1; done < <(ldd "$bin_dir/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
for lib in "${!libs[@]}"; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
ca=/etc/ssl/certs/ca-certificates.crt
if [[ -f $ca ]]; then cp -L "$ca" "$rootfs$ca"; fi
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$rootfs/etc/group"

json_array() {
  local out= v
  for v in "$@"; do out+="${out:+,}\"$v\""; done
  printf '[%s]' "$out"
}
json_set() {
  local out= v
  for v in "$@"; do out+="${out:+,}\"$v\":{}"; done
  printf '{%s}' "$out"
}
ns() { # Go duration in nanoseconds, as Docker stores a healthcheck's times (10s -> 10000000000)
  echo "$((${1%s} * 1000000000))"
}
body=$(printf '{"User":"%s","WorkingDir":"%s","Env":%s,"Cmd":%s,"Volumes":%s,"ExposedPorts":%s,"Healthcheck":{"Test":%s,"Interval":%s,"Timeout":%s,"StartPeriod":%s,"Retries":%s}}' \
  "$RUN_USER" "$WORKDIR" "$(json_array "${BASE_ENV[@]}" "${ENV_VARS[@]}")" "$(json_array "${CMD[@]}")" \
  "$(json_set "${VOLUMES[@]}")" "$(json_set "${PORTS[@]}")" "$(json_array CMD "${HEALTHCHECK_CMD[@]}")" \
  "$(ns "${HEALTHCHECK_TIMES[0]}")" "$(ns "${HEALTHCHECK_TIMES[1]}")" "$(ns "${HEALTHCHECK_TIMES[2]}")" \
  "${HEALTHCHECK_TIMES[3]}")

oci_layer_tar "$rootfs" "$work/layer.tar" "$DATA_DIR" "$RUN_USER" home/nonroot "$RUN_USER"
oci_archive "$work/layer.tar" "$body" "$name" "$out"
echo "build-image: wrote $out ($name, $(du -h "$out" | cut -f1))" >&2
