# syntax=docker/dockerfile:1
#
# coffeebot container image, multi-arch (linux/amd64, linux/arm64, linux/arm/v7):
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#     -t ghcr.io/coffeebot/coffeebot:0.1.0 --push .
#
# The build stage runs on the builder's own platform and cross-compiles with the toolchain
# scripts/cross.sh uses (so what CI tests under qemu-user is what ships): Debian forky's rustc
# and cargo, the target's standard library from Debian (libstd-rust-dev:<arch>) and Debian's
# gcc for the target as linker and as C compiler (ring and aws-lc in rustls' dependency tree
# are C). No emulation is needed for compiling. See docs/deploy.md.

ARG DEBIAN_SUITE=forky

FROM --platform=$BUILDPLATFORM debian:${DEBIAN_SUITE} AS build
ARG TARGETPLATFORM
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# C compilers and linkers for every target, used by cc-rs and cargo only for their own target.
ENV CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc \
    AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc

# TARGETPLATFORM -> rust target, Debian architecture, Debian cross gcc for it (the native gcc
# when the target is the builder's own architecture). The testing suite's
# Release file may carry an expired Valid-Until, hence the apt setting.
# hadolint ignore=DL3008
RUN case "${TARGETPLATFORM:?set by buildx}" in \
      linux/amd64)  set -- x86_64-unknown-linux-gnu      amd64 gcc-x86-64-linux-gnu ;; \
      linux/arm64)  set -- aarch64-unknown-linux-gnu     arm64 gcc-aarch64-linux-gnu ;; \
      linux/arm/v7) set -- armv7-unknown-linux-gnueabihf armhf gcc-arm-linux-gnueabihf ;; \
      *) echo "unsupported platform: $TARGETPLATFORM" >&2; exit 1 ;; \
    esac \
    && echo "$1" > /rust-target \
    && echo 'Acquire::Check-Valid-Until "false";' > /etc/apt/apt.conf.d/99valid-until \
    && if [ "$2" = "$(dpkg --print-architecture)" ]; then set -- "$1" "$2" gcc libc6-dev; \
       else dpkg --add-architecture "$2" && set -- "$1" "$2" "$3" "libc6-dev-$2-cross"; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates rustc cargo \
         "libstd-rust-dev:$2" "$3" "$4" \
    && rm -rf /var/lib/apt/lists/* \
    && rustc --version

COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY config ./config
COPY src ./src

# The same command scripts/check-deploy.sh runs natively with COFFEEBOT_DEPLOY_RELEASE=1.
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target,id=coffeebot-target-${TARGETPLATFORM} \
    target="$(cat /rust-target)" \
    && cargo build --release --locked --target "$target" \
    && install -D -m 0755 "target/$target/release/coffeebot" /out/coffeebot

# glibc and libgcc only; no shell, no package manager. Debian 13: the binary built in forky
# needs glibc 2.38 or newer (scripts/cross.sh checks that it needs no more than Debian 13's). The nonroot user is 65532:65532;
# the serial device's group (dialout, GID 20 on Debian and Raspberry Pi OS) is added at run
# time: supplementalGroups in k8s/, --group-add 20 with docker run.
FROM gcr.io/distroless/cc-debian13:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="coffeebot" \
      org.opencontainers.image.description="Bridges a coffee maker's heater controller (USB serial) to MQTT and Home Assistant, safely." \
      org.opencontainers.image.source="https://github.com/coffeebot/coffeebot" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/coffeebot /usr/local/bin/coffeebot
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["coffeebot"]
CMD ["run", "--config", "/etc/coffeebot/coffeebot.toml"]
