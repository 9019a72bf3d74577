# shellcheck shell=bash
# Writing OCI image archives without Docker or a registry: one layer made with GNU tar from a
# root filesystem directory, the image configuration, manifest and index written by hand (the
# OCI image-spec's layout, tarred). `ctr images import`, `podman load` and Docker 25+'s
# `docker load` read the result. Sourced by scripts/build-image.sh and scripts/testenv-node.sh.

# oci_arch: the machine's architecture in OCI terms.
oci_arch() {
  case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# oci_blob DIR FILE: move FILE into DIR/blobs/sha256 under its digest; prints "DIGEST SIZE".
oci_blob() {
  local dir=$1 file=$2 sum size
  sum=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mkdir -p "$dir/blobs/sha256"
  mv -f "$file" "$dir/blobs/sha256/$sum"
  echo "sha256:$sum $size"
}

# oci_layer_tar ROOTFS OUT [OWNED_PATH UID:GID]...: a reproducible tar of ROOTFS (sorted, mtime
# 0, numeric owners): everything owned by 0:0 except each OWNED_PATH (a directory or file
# relative to ROOTFS, with what is below it), owned by the UID:GID after it. Ownership is set in
# the archive, so this needs no root.
oci_layer_tar() {
  local rootfs=$1 out=$2
  shift 2
  local -a common=(--sort=name --numeric-owner --mtime=@0 --format=posix
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
  local -a excludes=()
  local i
  for ((i = 1; i <= $#; i += 2)); do excludes+=("--exclude=./${!i}"); done
  (cd "$rootfs" && tar "${common[@]}" --owner=0 --group=0 "${excludes[@]}" -cf "$out" .)
  while (($#)); do
    local path=$1 owner=$2
    shift 2
    (cd "$rootfs" && tar "${common[@]}" --owner="${owner%%:*}" --group="${owner##*:}" -rf "$out" "./$path")
  done
}

# oci_archive LAYER_TAR CONFIG_BODY NAME OUT: an OCI archive at OUT holding one image named NAME
# (repository:tag) made of the uncompressed layer LAYER_TAR (consumed) and the image
# configuration's "config" object CONFIG_BODY (JSON text).
oci_archive() {
  local layer=$1 body=$2 name=$3 out=$4 dir diff_id layer_desc config_desc manifest_desc
  dir=$(mktemp -d "${TMPDIR:-/tmp}/oci.XXXXXX")
  diff_id=sha256:$(sha256sum "$layer" | cut -d' ' -f1)
  gzip -n -6 -c "$layer" >"$dir/layer.tar.gz"
  rm -f "$layer"
  read -r -a layer_desc < <(oci_blob "$dir" "$dir/layer.tar.gz")
  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created_by":"scripts/build-image.sh"}]}' \
    "$(oci_arch)" "$body" "$diff_id" >"$dir/config.json"
  read -r -a config_desc < <(oci_blob "$dir" "$dir/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "${config_desc[0]}" "${config_desc[1]}" "${layer_desc[0]}" "${layer_desc[1]}" >"$dir/manifest.json"
  read -r -a manifest_desc < <(oci_blob "$dir" "$dir/manifest.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest_desc[0]}" "${manifest_desc[1]}" "$name" "${name##*:}" >"$dir/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$dir" -cf "$out.tmp" oci-layout index.json blobs
  mv -f "$out.tmp" "$out"
  rm -rf "$dir"
}
