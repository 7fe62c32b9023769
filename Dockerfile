# Two images from one Dockerfile:
#
#   the controller image (the default, last stage): `corsair`, which runs `corsair controller`
#   and every other subcommand, plus `corsair-proxy`, so that it can also serve as a sidecar
#   image through the corsair.dev/image annotation;
#     docker build -t ghcr.io/corsair-dev/corsair:0.1.0 .
#
#   the sidecar image (`--target sidecar`): only the slim `corsair-proxy` binary, which the
#   webhook injects by default (no kube, no controller, no certificate code).
#     docker build --target sidecar -t ghcr.io/corsair-dev/corsair-proxy:0.1.0 .
#
# `corsair-proxy`, in both images, is built with profile-guided optimisation
# (scripts/sidecar-pgo.sh): an instrumented build serves about 20 s of CORS traffic on loopback
# inside the build stage, then the release build uses that profile.
#
# The webhook runs the command `corsair-proxy` (looked up on the image's PATH) whatever the
# image, so an image given with corsair.dev/image or --sidecar-image must provide it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p corsair --bin corsair

# Built alone, so its features are those of the proxy package, not the whole workspace's.
# llvm-tools gives the llvm-profdata of this toolchain's own LLVM; the script installs the
# training's nginx, wrk, h2load and curl from Debian.
FROM rust:1-bookworm AS build-sidecar
RUN rustup component add llvm-tools
WORKDIR /src
COPY . .
RUN bash scripts/sidecar-pgo.sh /src/corsair-proxy

FROM gcr.io/distroless/cc-debian12:nonroot AS sidecar
COPY --from=build-sidecar /src/corsair-proxy /usr/local/bin/corsair-proxy
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/corsair-proxy"]

FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/corsair /usr/local/bin/corsair
COPY --from=build-sidecar /src/corsair-proxy /usr/local/bin/corsair-proxy
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/corsair"]
