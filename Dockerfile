# syntax=docker/dockerfile:1
# switchyard container image.
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -v "$PWD/my.toml:/etc/switchyard/switchyard.toml:ro" switchyard
# The image ships config/ as /etc/switchyard/; mount your own switchyard.toml over it
# (in Kubernetes: a ConfigMap mounted as a directory, so hot reload sees updates; see
# deploy/kubernetes/ and docs/kubernetes.md).

FROM rust:1-bookworm AS builder
# Nothing to install beyond Rust: fleet mode's etcd client comes with its generated code
# (vendor/etcd-client), so the build needs no protoc.
WORKDIR /src
# .dockerignore keeps target/, .git/ and the deploy files out of the context.
COPY . .
# Cache mounts keep the registry, git checkouts and target dir between builds; the binary is
# copied out of the cached target dir in the same step. --locked: exactly Cargo.lock. Every
# build has every feature, fleet mode included (`switchyard --version` lists them).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/switchyard /out/switchyard

# glibc + libgcc_s (all the binary links), no shell. Built on bookworm, so glibc matches
# debian12's. Pin by digest (cc-debian12:nonroot@sha256:...) for reproducible images.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/switchyard /usr/local/bin/switchyard
# Owned by root and read-only to the process: with admin.persist = true, admin changes then
# stay live in memory only ("persisted": false); mount a writable file (its directory too:
# the write is a temp file + rename) to keep them, or set persist = false.
COPY config/ /etc/switchyard/
# Numeric, so Kubernetes can verify runAsNonRoot (distroless "nonroot" is 65532).
USER 65532:65532
# 8080: traffic (server.listen); 9901: admin API, /metrics, /healthz, /readyz (admin.listen).
# The shipped config binds the admin API to 127.0.0.1, so 9901 is reachable from outside the
# container only with admin.listen = "0.0.0.0:9901" and a token (token_env): a non-loopback
# admin address without a token is a config error. The HTTPS listener ([server.tls], 8443) is
# off in the shipped config; publish 8443 when you enable it.
EXPOSE 8080 9901
# distroless has no shell, curl or wget: the binary checks itself. `switchyard ready` asks
# GET /readyz on the admin listener named in the config and exits 0 on a 200 (Kubernetes
# uses /healthz and /readyz directly: deploy/kubernetes/deployment.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/switchyard", "ready", "--config", "/etc/switchyard/switchyard.toml"]
#
# No init (tini, dumb-init) is needed as PID 1: switchyard installs its own SIGTERM/SIGINT
# handlers before it binds (src/shutdown.rs), so `docker stop` / pod termination drains
# gracefully (readyz 503, in-flight requests finish within server.shutdown_grace, exit 0),
# and it spawns no child processes that would need reaping.
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "--config", "/etc/switchyard/switchyard.toml"]
