# syntax=docker/dockerfile:1
# dify-gateway: build with cargo, run on slim Debian as a non-root user.
#   docker build -t dify-gateway .
#   docker run -p 80:80 -e DIFY_API_UPSTREAM=api:5001 -e DIFY_WEB_UPSTREAM=web:3000 dify-gateway

FROM rust:1-slim-bookworm AS build
# Pingora builds C code (cmake); the TLS stack needs no system OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY conf ./conf
# --release is what ships: fat LTO, one codegen unit (Cargo.toml); the quick start's `fast` profile
# builds sooner and serves fewer requests per second.
RUN cargo build --release --locked --bin dify-gateway \
 && strip target/release/dify-gateway

FROM debian:bookworm-slim
# ca-certificates: TLS to identity providers is verified; curl: the health check below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin dify-gateway \
 && mkdir -p /etc/dify-gateway
COPY --from=build /src/target/release/dify-gateway /usr/local/bin/dify-gateway
# The container's configuration is the embedded default's twin: Dify's stock routing, driven by
# the same environment variables as Dify's nginx (NGINX_PORT, ...). Mount your own over it.
COPY src/config/default.yaml /etc/dify-gateway/config.yaml
# Numeric, so Kubernetes runAsNonRoot can verify it.
USER 10001:10001
# Pid file and upgrade socket live in /tmp, writable by the non-root user.
ENV NGINX_PORT=80
EXPOSE 80 443
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:9901/healthz"]
# Pingora drains on SIGTERM within server.graceful_shutdown_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dify-gateway"]
CMD ["-c", "/etc/dify-gateway/config.yaml"]
