# syntax=docker/dockerfile:1
# One image with both binaries, statically linked (musl), on a distroless base with no shell:
#   /usr/local/bin/acteon-operator   (the chart runs `acteon-operator run`)
#   /usr/local/bin/acteon-gateway    (the default entrypoint: `acteon-gateway serve`)
#
#   docker build -t acteon .
#   docker run --rm -p 8080:8080 acteon      # standalone: the samples, in-memory backend
#
# The build stage runs the same cargo command as CI's build step (scripts/test.sh:
# `cargo build --workspace --bins --locked`), with --release and the musl target.

ARG RUST_VERSION=1.95
ARG TARGET=x86_64-unknown-linux-musl

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGET
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${TARGET}"
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build output between builds; the binaries are copied
# out of the cached target directory before the layer ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --workspace --bins --locked --release --target "${TARGET}" \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/acteon-operator" "target/${TARGET}/release/acteon-gateway" /out/

# Static binaries need no libc: the distroless "static" image adds only CA certificates,
# /etc/passwd with the nonroot user (65532) and tzdata.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/acteon-operator /out/acteon-gateway /usr/local/bin/
# What a standalone gateway serves by default (config/samples and rules, relative to /).
COPY config/samples /config/samples
COPY rules /rules
WORKDIR /
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/acteon-gateway"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
