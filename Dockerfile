# The image the Helm chart runs: `tessera serve --kube`, and `serve --git`, which needs git.
# From the repository's root (needs network to docker.io and crates.io):
#   docker build -t ghcr.io/tessera-dev/tessera:0.1.0 .
# Build stage: the release binary, from the committed Cargo.lock.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tessera \
 && strip target/release/tessera

# Runtime: Debian (the build stage's glibc) with what `serve --git` runs: git, ssh for
# git@ remotes, and the CA roots git's HTTPS checks against. SQLite is bundled and Tessera's
# own TLS is rustls with ring, so nothing else. Runs as user 65532 with no shell login and
# nothing writable in the image: the chart mounts the state directory and an emptyDir on
# /tmp, and makes the root file system read-only.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /var/lib/tessera
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
# git and ssh keep what they write (known hosts, temporary files) under HOME, on /tmp.
ENV HOME=/tmp
USER 65532:65532
# Agent-facing HTTPS and HTTP, and the admin API (health, readiness, metrics). Off loopback
# the admin API needs a token (`tessera admin-token create`); /metrics stays open.
EXPOSE 8443 8080 9090
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve", "--kube", "--state", "/var/lib/tessera", "--admin-address", "0.0.0.0:9090", "--admin-auth", "token", "--admin-public-metrics"]
