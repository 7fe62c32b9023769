# The one image: `corsair controller` runs from it, and the webhook injects it as the sidecar.
# Build: docker build -t ghcr.io/corsair-dev/corsair:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin corsair

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/corsair /usr/local/bin/corsair
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/corsair"]
