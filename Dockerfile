# syntax=docker/dockerfile:1
# The node image: the release binary (built in a Rust image) and the web client (built with npm in a Node image),
# run in a slim Debian as an unprivileged user from a working directory it cannot write.
#
#   docker build -t im-node .
#   docker run --rm --read-only --tmpfs /tmp -e IM_TOKEN_SECRET=... -e IM_REDIS_URL=... -e IM_POSTGRES_URL=... \
#     -p 7001:7001 im-node
#   docker run --rm -e IM_POSTGRES_URL=... im-node migrate     # apply migrations and exit
#
# Every setting is an IM_* variable (see `node --help` and docs/operations.md). The suite's deployment-conditions
# test (tests/tests/suite/deployment.rs) reads this file's runtime stage (USER, WORKDIR, ENV, VOLUME, ENTRYPOINT,
# the web folder) and runs the release binary the same way, since no container engine runs on our CI machines.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target folder between builds; the binary is copied out of the
# mounted target folder because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p node --bin node \
    && install -D -m 0755 target/release/node /out/node

# The web client: the lock file pins every package; `npm run build` type-checks and bundles into /web/dist.
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# Same Debian release as the build image, so the binary's glibc matches.
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 im \
    && useradd --system --uid 10001 --gid im --no-create-home --shell /usr/sbin/nologin im
COPY --from=build /out/node /usr/local/bin/node
COPY --from=web /web/dist /srv/im/web
# Owned by root: the node reads its web client here and writes nothing. Relative paths resolve here too.
WORKDIR /srv/im
USER 10001:10001
# Clients on 7001; /metrics, /healthz and /readyz only on the admin port 9464 (not for the public). Media bytes
# live in Postgres by default (IM_MEDIA_STORE); IM_MEDIA_DIR is used only with IM_MEDIA_STORE=local, and then a
# volume shared by every node must be mounted there.
ENV IM_LISTEN=0.0.0.0:7001 \
    IM_ADMIN_LISTEN=0.0.0.0:9464 \
    IM_WEB_DIR=/srv/im/web \
    IM_MEDIA_DIR=/srv/im/media \
    IM_LOG=info
# The only path the node may write (scratch space); everything else may be read-only (`docker run --read-only`,
# Kubernetes readOnlyRootFilesystem with an emptyDir here).
VOLUME ["/tmp"]
EXPOSE 7001 9464
# The node drains on SIGTERM (kick clients, flush the writer, release the lease) within --drain-grace-secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/node"]
