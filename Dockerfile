# syntax=docker/dockerfile:1
# switchyard container image.
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -v "$PWD/my.toml:/etc/switchyard/switchyard.toml:ro" switchyard
# The image ships config/ as /etc/switchyard/; mount your own switchyard.toml over it
# (in Kubernetes: a ConfigMap mounted as a directory, so hot reload sees updates).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out
# of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/switchyard /out/switchyard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/switchyard /usr/local/bin/switchyard
COPY config/ /etc/switchyard/
# 8080: traffic (server.listen); 9901: admin API, /metrics, /healthz, /readyz (admin.listen).
# To reach the admin port from outside the container, set admin.listen = "0.0.0.0:9901" and
# a token (token_env): a non-loopback admin address without a token is a config error.
EXPOSE 8080 9901
# No HEALTHCHECK: distroless has no shell or curl to run one. Kubernetes probes
# GET /healthz (liveness) and /readyz (readiness) on the admin port instead.
# Runs as the distroless "nonroot" user (65532): with admin.persist = true, give it a
# writable config file or admin changes stay in memory only (persisted: false).
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "--config", "/etc/switchyard/switchyard.toml"]
