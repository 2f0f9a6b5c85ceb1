# alipay-sidecar container image.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t alipay-sidecar .
#
# The sidecar's outbound listener is for the app next to it: run it in the app's network
# namespace (Kubernetes: the same pod, config/kubernetes/; Docker: `--network container:<app>`
# or config/docker-compose.yaml, `network_mode: service:app`). A plain
# `docker run -p 8080:8080` cannot work: the outbound listener binds 127.0.0.1 on purpose (it
# is a signing oracle).
#
#   docker run --stop-timeout 40 --network container:my-app \
#     -v "$PWD/sidecar.toml:/etc/alipay-sidecar/sidecar.toml:ro" \
#     -v "$PWD/keys:/etc/alipay-sidecar/keys:ro" alipay-sidecar
#
# Key files: the image runs as uid:gid 65532:65532, so mounted key files must be readable by
# it. `keygen` writes the private key 0600 owned by you, which that uid cannot read. Before
# mounting: `sudo chown 65532:65532 keys/*.pem && sudo chmod 0400 keys/merchant_private_key.pem`
# (or `sudo chgrp 65532` with mode 0440); check-config says this when it cannot read a key.
#
# Paths inside the image:
#   /usr/local/bin/alipay-sidecar       the binary (ENTRYPOINT)
#   /etc/alipay-sidecar/sidecar.toml    configuration (mount it; read by the default CMD and
#                                       the HEALTHCHECK)
#   /etc/alipay-sidecar/keys/           merchant private key and Alipay public key(s) (mount
#                                       read-only; point [keys] in sidecar.toml at them)
#   /usr/share/doc/alipay-sidecar/sidecar.example.toml
#                                       the example config, every option explained (config
#                                       errors refer to it): `docker run --rm --entrypoint
#                                       "" ...` has no shell, so copy it out with
#                                       `docker create` + `docker cp`, or read it in the repo
# Ports: 8080 outbound (app -> Alipay; binds loopback by default), 8081 inbound (Alipay
# notifications), 9090 admin (/metrics, /healthz, /readyz; set [admin] listen = "0.0.0.0:9090"
# when probed or scraped from outside).
# Shutdown can take shutdown_grace + shutdown_timeout (5 s + 30 s by default): give
# `docker stop` / the orchestrator more than that (Docker's default is only 10 s).

# ---- build stage -----------------------------------------------------------------------
# Pinned by exact tag (the toolchain version is what matters for reproducible builds).
FROM rust:1.95.0-bookworm AS build

# pingora-core builds a bundled zlib with cmake, whatever TLS backend is chosen; gcc (for
# ring, zstd and zlib-ng) is in the rust image already.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# 1. Dependencies only, in their own layer: with placeholder sources, so that a change in the
#    sources reuses this layer instead of rebuilding every crate (a manifest or Cargo.lock
#    change rebuilds it). Cargo reads every workspace member's manifest (and wants the targets
#    it declares to exist), so each crate's Cargo.toml is copied here and given placeholders.
#    `--no-default-features`: the image ships neither the fake gateway nor `demo` (the
#    `mock-gateway` feature), nor the crates only they need.
COPY Cargo.toml Cargo.lock ./
COPY crates/ams-signature/Cargo.toml crates/ams-signature/
COPY crates/ams-mock-gateway/Cargo.toml crates/ams-mock-gateway/
COPY crates/sidecar-store/Cargo.toml crates/sidecar-store/
COPY crates/test-support/Cargo.toml crates/test-support/
RUN mkdir -p src crates/ams-signature/src crates/ams-signature/benches crates/ams-mock-gateway/src \
        crates/sidecar-store/src crates/test-support/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/ams-signature/src/lib.rs crates/ams-mock-gateway/src/lib.rs \
        crates/sidecar-store/src/lib.rs crates/test-support/src/lib.rs \
    && echo 'fn main() {}' > crates/ams-signature/benches/signature.rs \
    && cargo build --release --locked --no-default-features -p alipay-sidecar --bin alipay-sidecar \
    && rm -rf src crates \
        target/release/alipay-sidecar* \
        target/release/deps/alipay_sidecar-* target/release/deps/libalipay_sidecar-* \
        target/release/.fingerprint/alipay-sidecar-* \
        target/release/deps/ams_signature-* target/release/deps/libams_signature-* \
        target/release/.fingerprint/ams-signature-* \
        target/release/deps/sidecar_store-* target/release/deps/libsidecar_store-* \
        target/release/.fingerprint/sidecar-store-* \
        target/release/deps/ams_mock_gateway-* target/release/deps/libams_mock_gateway-* \
        target/release/.fingerprint/ams-mock-gateway-*

# 2. The sidecar itself and every workspace crate it builds (`ams-signature`,
#    `sidecar-store`; the manifests of `ams-mock-gateway` and `test-support` must be present
#    even though this build leaves them out). Step 1 built each of them from an empty placeholder: their artifacts
#    and fingerprints were removed above (every workspace member, not only the binary's
#    crate: a stale placeholder `sidecar-store` would otherwise be linked in, issue 20), and
#    every source file is touched here, because COPY keeps the context's modification times,
#    which can be older than the placeholders' artifacts. scripts/dockerfile-replay.sh
#    replays this stage in CI without Docker.
COPY src ./src
COPY crates ./crates

# Baked into `--version` and alipay_sidecar_build_info{git_commit}; "unknown" when not given.
ARG GIT_COMMIT=unknown
RUN find src crates -type f -exec touch {} + \
    && ALIPAY_SIDECAR_GIT_COMMIT="${GIT_COMMIT}" \
        cargo build --release --locked --no-default-features -p alipay-sidecar --bin alipay-sidecar

# ---- runtime stage ---------------------------------------------------------------------
# glibc + libgcc only, no shell, no package manager; the :nonroot tag runs as uid 65532.
# Pinned by digest, so a rebuild gets the same bytes. Where the digest comes from: no machine
# this file was written on can reach a container registry, so it was NOT read from
# gcr.io; it is the digest that several independent public Dockerfiles pin for this same
# tag (found by searching public repositories, December 2026). It MUST be checked against
# the registry before a release, and updated regularly (e.g. monthly, for Debian security
# fixes):
#   crane digest gcr.io/distroless/cc-debian12:nonroot
#   (or: docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot, "Digest:")
# and paste the index digest here, or let Renovate/Dependabot (docker ecosystem) bump it.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

COPY --from=build /src/target/release/alipay-sidecar /usr/local/bin/alipay-sidecar
# Config errors point here: every option, commented.
COPY config/sidecar.example.toml /usr/share/doc/alipay-sidecar/sidecar.example.toml

# Numeric uid:gid so Kubernetes' runAsNonRoot can check it without an /etc/passwd lookup.
USER 65532:65532

EXPOSE 8080 8081 9090

# Distroless has no curl: the binary itself calls /readyz, on the admin address of the same
# config file the default CMD runs (`[admin] listen`, or ALIPAY_SIDECAR_ADMIN_LISTEN). With a
# config elsewhere, override it: --health-cmd '/usr/local/bin/alipay-sidecar healthcheck
# --config /path/sidecar.toml' (or --url http://127.0.0.1:PORT/readyz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/alipay-sidecar", "healthcheck", "--config", "/etc/alipay-sidecar/sidecar.toml", "--timeout", "2s"]

# ENTRYPOINT + CMD rather than one ENTRYPOINT, so `docker run IMAGE check-config --config ...`
# and the other subcommands work with the same image.
ENTRYPOINT ["/usr/local/bin/alipay-sidecar"]
CMD ["run", "--config", "/etc/alipay-sidecar/sidecar.toml"]
