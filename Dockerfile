# syntax=docker/dockerfile:1.7
#
# Herald's image: one image for every process (`herald` api, `herald-delivery` workers,
# `herald-operator`), chosen by the command.
#
#   docker build -t herald .
#   docker run -p 8000:8000 -v herald-data:/data herald                  # standalone, SQLite
#   docker run herald herald-delivery                                    # workers (production mode)
#   docker build --build-arg BINARIES="herald herald-delivery" -t herald .   # without the operator
#
# Build stage: the official Rust image on Debian 12, the glibc of the runtime image below (a
# binary linked on a newer Debian would not start there); the toolchain version CI tests with.
# Dependencies are cached with BuildKit cache mounts (cargo's registry, git checkouts and the
# target directory persist between builds), so a source change recompiles only Herald's own
# crates. That needs no extra tool (cargo-chef) and no dummy-source stage; the cost is that the
# binaries must be copied out of the cached target directory in the same RUN.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder

# Binaries to build and ship, each a `[[bin]]` of the workspace.
ARG BINARIES="herald herald-delivery herald-operator"
ARG PROFILE=release

WORKDIR /src
COPY . .
# --workspace: without it `--bin` looks only in the default member (the api's crate).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    bins=""; for b in $BINARIES; do bins="$bins --bin $b"; done; \
    cargo build --locked --workspace --profile "$PROFILE" $bins; \
    mkdir -p /out/bin /out/data; \
    dir=$PROFILE; [ "$PROFILE" = dev ] && dir=debug; \
    for b in $BINARIES; do install -m 0755 "target/$dir/$b" /out/bin/; done

# Runtime: distroless `cc` (glibc, libgcc, CA certificates, tzdata; no shell, no package
# manager), about 25 MB, rather than Debian slim (about 75 MB, with a shell and apt an attacker
# could use). Herald needs nothing else at run time: SQLite is compiled in, and TLS (webhook
# targets, MongoDB) is rustls with the Mozilla roots compiled in (webpki-roots), so it does not even
# depend on the image's CA bundle. glibc is why `cc` and not `static`: the binaries link it
# dynamically. Without curl or a shell, the HEALTHCHECK runs `herald healthcheck`.
FROM gcr.io/distroless/cc-debian12:nonroot

# Every binary built above, so adding one to BINARIES needs no change here.
COPY --from=builder /out/bin/ /usr/local/bin/
# The standalone SQLite directory, owned by the runtime user: a named volume mounted here is
# initialised from it and stays writable without running as root.
COPY --from=builder --chown=65532:65532 /out/data /data

# Numeric, so that Kubernetes' runAsNonRoot can verify it (distroless' `nonroot` user).
USER 65532:65532
WORKDIR /data

ENV HERALD_ADDR=0.0.0.0:8000 \
    HERALD_SQLITE_PATH=/data/herald.db \
    HERALD_LOG_FORMAT=json

VOLUME ["/data"]
EXPOSE 8000

# Checks the api on loopback (HERALD_ADDR's port). Delivery containers override it with
# `herald healthcheck --url http://127.0.0.1:8001/healthz` and HERALD_HEALTH_ADDR=0.0.0.0:8001.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["herald", "healthcheck"]

CMD ["herald"]
