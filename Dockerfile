# syntax=docker/dockerfile:1
# ccgate's image: built with cargo, run as a non-root user on distroless (glibc, no shell, no
# package manager). The binary is the only thing in it besides the base's CA roots.
#
#   docker build --build-arg CCGATE_COMMIT="$(git rev-parse --short=12 HEAD)" -t ccgate .
#   docker run --rm ccgate --version
#
# Config comes from a mounted file (CCGATE_CONFIG) and CCGATE__SECTION__KEY variables; see
# deploy/kubernetes/ for a sidecar example. Checked by hadolint in tests/it/deploy.rs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The commit for `ccgate --version` and ccgate_build_info: .git is not in the build context.
ARG CCGATE_COMMIT=unknown
ENV CCGATE_COMMIT=${CCGATE_COMMIT}
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY src ./src
# The OpenAPI description is compiled in (the admin listener serves it).
COPY api ./api
# --locked: the image gets exactly the dependencies the tests ran with.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ccgate \
    && cp target/release/ccgate /usr/local/bin/ccgate

# cc: glibc and libgcc (the binary links both); nonroot: uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
# OCI annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md):
# what the image is, its license and the commit it was built from.
ARG CCGATE_COMMIT=unknown
LABEL org.opencontainers.image.title="ccgate" \
      org.opencontainers.image.description="Authenticating sidecar for the Huawei CEC CC-Gateway: app JWTs in, agent Guids out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${CCGATE_COMMIT}" \
      org.opencontainers.image.documentation="README.md in the source repository"
COPY --from=build /usr/local/bin/ccgate /usr/local/bin/ccgate
ENV CCGATE_CONFIG=/etc/ccgate/ccgate.toml
USER 65532:65532
# The app-facing listener and the admin listener (metrics, health).
EXPOSE 8443 9464
# No curl in the image: the binary asks its own admin listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/ccgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/ccgate"]
CMD ["serve"]
