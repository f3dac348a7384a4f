# syntax=docker/dockerfile:1
#
# mosaic-as container image.
#
#   docker build -t mosaic-as .
#   docker run -v mosaic-data:/data -p 29330:29330 mosaic-as
#
# The image runs `mosaic-as --config /data/mosaic-as.toml serve` as the unprivileged user
# 10001. /data holds the config and, with SQLite, the database. Secrets can come from the
# environment instead of the file: MOSAIC_AS_AS_TOKEN, MOSAIC_AS_HS_TOKEN,
# MOSAIC_AS_ADMIN_TOKEN, MOSAIC_AS_DATABASE_URL (see docs/deploy.md).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------- build ---
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so that this layer is reused until
# Cargo.toml or Cargo.lock change. The bench targets named in Cargo.toml must exist for
# Cargo to read the manifest.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/ingest.rs \
    && echo 'fn main() {}' > benches/stream_latency.rs \
    && echo 'fn main() {}' > benches/homeserver.rs \
    && echo 'fn main() {}' > benches/capacity.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. The migrations are compiled into the binary.
COPY src ./src
COPY migrations ./migrations
# COPY keeps the files' old modification times; touch the crate roots so that Cargo
# rebuilds the crate instead of keeping the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/mosaic-as /out/mosaic-as

# -------------------------------------------------------------------------- runtime ---
FROM debian:${DEBIAN_RELEASE}-slim

# ca-certificates: HTTPS to homeservers, model endpoints, Discord and Telegram.
# curl: the health check. Unpinned on purpose: the release's security updates apply.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mosaic \
    && useradd --system --uid 10001 --gid mosaic --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin mosaic \
    && mkdir -p /data \
    && chown mosaic:mosaic /data \
    && chmod 0700 /data

COPY --from=build /out/mosaic-as /usr/local/bin/mosaic-as

ENV MOSAIC_AS_CONFIG=/data/mosaic-as.toml
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# The appservice API, /health, /ready, /metrics and the admin API. The config must listen
# on 0.0.0.0:29330 inside the container (deploy/mosaic-as.toml.example does).
EXPOSE 29330

# /health answers 200 while the process serves HTTP; /ready also needs the database and
# the homeserver. If you change the listen port, override this check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:29330/health"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["mosaic-as"]
CMD ["--config", "/data/mosaic-as.toml", "serve"]
