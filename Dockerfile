# A static, non-root image of the operator.
#   docker build -t REGISTRY/tinystacks-operator:VERSION .
#   docker push REGISTRY/tinystacks-operator:VERSION
# Reproducible: the toolchain and base images are pinned, Cargo.lock is honoured, paths are
# remapped and timestamps come from SOURCE_DATE_EPOCH.

FROM rust:1.95-alpine3.22 AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
ARG SOURCE_DATE_EPOCH=0
ENV RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo" \
    CARGO_INCREMENTAL=0
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin tinystacks-operator \
 && strip target/release/tinystacks-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/tinystacks-operator /usr/local/bin/tinystacks-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tinystacks-operator"]
CMD ["run"]
