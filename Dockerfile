# shardwire proxy image. Used by docker-compose.yml; see docker/README.md.
#
#   docker build -t shardwire .
#   docker run -v ./my.toml:/etc/shardwire/shardwire.toml:ro -p 6432:6432 shardwire

# Build: the official Rust image, on the same Debian release as the runtime
# stage so that the binary's glibc matches.
FROM rust:1-bookworm AS build
WORKDIR /src
# Cargo.toml names benches/routing.rs as a target, so it must be present.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked \
    && cp target/release/shardwire /usr/local/bin/shardwire

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/shardwire /usr/local/bin/shardwire
# The compose cluster's config; mount your own over it.
COPY docker/shardwire.toml /etc/shardwire/shardwire.toml
RUN useradd --system --no-create-home --shell /usr/sbin/nologin shardwire
USER shardwire
# PostgreSQL wire protocol, and the HTTP port (listen port + 1).
EXPOSE 6432 6433
ENTRYPOINT ["shardwire"]
CMD ["serve", "--config", "/etc/shardwire/shardwire.toml"]
