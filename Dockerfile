# PERE's server in a container: built from this workspace, run as a user without privileges,
# its SQLite store in the /data volume.
#
#   docker build -t pere .
#   docker run -p 4567:4567 -v pere-data:/data -e PERE_JWT_SECRET=... pere
#
# Clients reach the container through its network, not its loopback: give it a token key
# (PERE_JWT_SECRET, PERE_JWT_SECRET_FILE or PERE_JWT_PUBLIC_KEY), or PERE_OPEN=true on a trusted
# network; without either it answers 403 to everyone but itself.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pere-server \
 && install -m 0755 target/release/pere-server /pere-server

FROM debian:bookworm-slim
# The system's CA certificates: a rediss:// store signed by a public CA needs them (a private CA
# is given with PERE_REDIS_CA). A fixed user id, so a volume's owner is the same on every host.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pere \
 && useradd --system --uid 10001 --gid pere --home-dir /data --shell /usr/sbin/nologin pere \
 && mkdir /data && chown pere:pere /data
COPY --from=build /pere-server /usr/local/bin/pere-server
USER pere
WORKDIR /data
ENV PERE_HOST=0.0.0.0 \
    PERE_PORT=4567 \
    PERE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 4567
# SIGTERM (docker stop): /readyz turns 503, feeds close, open requests get 5 s; docker's default
# 10 s before SIGKILL covers it unless PERE_SHUTDOWN_GRACE is set (then: docker stop -t).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pere-server"]
