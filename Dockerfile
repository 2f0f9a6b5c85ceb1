# alipay-sidecar container image.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t alipay-sidecar .
#   docker run --stop-timeout 40 \
#     -v "$PWD/sidecar.toml:/etc/alipay-sidecar/sidecar.toml:ro" \
#     -v "$PWD/keys:/etc/alipay-sidecar/keys:ro" \
#     -p 8081:8081 alipay-sidecar
#
# Paths inside the image:
#   /usr/local/bin/alipay-sidecar       the binary (ENTRYPOINT)
#   /etc/alipay-sidecar/sidecar.toml    configuration (mount it; read by the default CMD)
#   /etc/alipay-sidecar/keys/           merchant private key and Alipay public key(s) (mount
#                                       read-only; point [keys] in sidecar.toml at them)
# Ports: 8080 outbound (app -> Alipay; binds loopback by default, right in a pod where the app
# shares the network namespace), 8081 inbound (Alipay notifications), 9090 admin (/metrics,
# /healthz, /readyz; set [admin] listen = "0.0.0.0:9090" when probed or scraped from outside).
# Shutdown can take shutdown_grace + shutdown_timeout (5 s + 30 s by default): give
# `docker stop` / the orchestrator more than that (Docker's default is only 10 s).
#
# Base images are pinned by exact tag. CI should additionally pin them by digest
# (image:tag@sha256:...) and let a bot (Renovate/Dependabot) bump the digests; digests cannot
# be looked up on the offline machine this file was written on.

# ---- build stage -----------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS build

# pingora-core builds a bundled zlib with cmake, whatever TLS backend is chosen.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the `signature` bench target; cargo wants its source present.
COPY benches ./benches

# Baked into alipay_sidecar_build_info{git_commit}; "unknown" when not given.
ARG GIT_COMMIT=unknown
RUN ALIPAY_SIDECAR_GIT_COMMIT="${GIT_COMMIT}" cargo build --release --locked --bin alipay-sidecar

# ---- runtime stage ---------------------------------------------------------------------
# glibc + libgcc only, no shell, no package manager; the :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /src/target/release/alipay-sidecar /usr/local/bin/alipay-sidecar

# Numeric uid:gid so Kubernetes' runAsNonRoot can check it without an /etc/passwd lookup.
USER 65532:65532

EXPOSE 8080 8081 9090

# Distroless has no curl: the binary itself calls /readyz on the admin listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/alipay-sidecar", "healthcheck"]

# ENTRYPOINT + CMD rather than one ENTRYPOINT, so `docker run IMAGE check-config --config ...`
# and the other subcommands work with the same image.
ENTRYPOINT ["/usr/local/bin/alipay-sidecar"]
CMD ["run", "--config", "/etc/alipay-sidecar/sidecar.toml"]
