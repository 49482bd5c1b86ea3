# The image the Helm chart runs: `tessera serve --kube`.
#   docker build -t <registry>/tessera:0.1.0 .
# Build stage: the release binary, from the committed Cargo.lock.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tessera \
 && strip target/release/tessera

# Runtime: glibc and CA roots only, no shell, user 65532 (nonroot). SQLite is bundled and
# TLS is rustls with ring, so nothing else is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
USER 65532:65532
# Agent-facing HTTPS and HTTP, and the admin API (health, readiness, metrics).
EXPOSE 8443 8080 9090
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve", "--kube", "--state", "/var/lib/tessera", "--admin-address", "0.0.0.0:9090"]
