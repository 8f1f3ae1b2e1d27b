# orb-operator container image: a release build in the Rust image, copied into a minimal
# non-root runtime (distroless: glibc and CA certificates, no shell). Build from the repository
# root: `docker build -t orb-operator:dev .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY bench ./bench
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin orb-operator \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin orb-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/orb-operator /usr/local/bin/orb-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/orb-operator"]
CMD ["run"]
