# syntax=docker/dockerfile:1
# The node image: build the release binary in a Rust image, run it in a slim Debian as an unprivileged user.
#
#   docker build -t im-node .
#   docker run --rm -e IM_TOKEN_SECRET=... -e IM_REDIS_URL=... -e IM_POSTGRES_URL=... -p 7001:7001 im-node
#
# Every setting is an IM_* variable (see `node --help` and docs/operations.md).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target folder between builds; the binary is copied out of the
# mounted target folder because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p node --bin node \
    && install -D -m 0755 target/release/node /out/node

# Same Debian release as the build image, so the binary's glibc matches.
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 im \
    && useradd --system --uid 10001 --gid im --no-create-home --shell /usr/sbin/nologin im
COPY --from=build /out/node /usr/local/bin/node
USER 10001:10001
ENV IM_LISTEN=0.0.0.0:7001 \
    IM_LOG=info
EXPOSE 7001
# The node drains on SIGTERM (kick clients, flush the writer, release the lease) within --drain-grace-secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/node"]
