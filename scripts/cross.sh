#!/usr/bin/env bash
# Builds coffeebot's release binaries for the Raspberry Pi, aarch64-unknown-linux-gnu (64-bit
# Raspberry Pi OS) and armv7-unknown-linux-gnueabihf (32-bit), on an x86_64 Debian machine
# with nothing but Debian packages and crates:
#
#   a Debian forky root (debootstrap, minbase) holding Debian's rustc and cargo, the standard
#   library for both targets (libstd-rust-dev:arm64/armhf), Debian's cross gcc (the linker,
#   and the C compiler of ring/aws-lc) and qemu-user (static, so the host runs it).
#
# The Dockerfile builds with the same choices, so the binaries CI tests are the ones that ship.
# The root is made once and kept (default /var/cache/coffeebot-cross/forky; it is reused when
# its package list is unchanged); the repository is bind-mounted into it at /src in a private
# mount namespace (nothing stays mounted after the script), the host's cargo registry is shared
# so crates are downloaded once, and the build runs as the owner of the checkout, so nothing
# root-owned lands in it. Outputs:
#
#   target/cross/aarch64-unknown-linux-gnu/release/coffeebot
#   target/cross/armv7-unknown-linux-gnueabihf/release/coffeebot
#   target/cross/env   (shell variables: the root, and each target's qemu command line)
#
# Needs root (debootstrap, chroot, mounts). Idempotent. Options (environment):
#   COFFEEBOT_CROSS_ROOT    where the root lives (default /var/cache/coffeebot-cross/forky)
#   COFFEEBOT_CROSS_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   COFFEEBOT_CROSS_TARGETS rust targets to build (default: both)
#   COFFEEBOT_CROSS_MAX_GLIBC the newest glibc a binary may need (default 2.41: Debian 13,
#                           Raspberry Pi OS trixie); a binary that needs more fails the build
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

root="${COFFEEBOT_CROSS_ROOT:-/var/cache/coffeebot-cross/forky}"
mirror="${COFFEEBOT_CROSS_MIRROR:-http://deb.debian.org/debian}"
# The newest glibc a binary may need: Debian 13's and Raspberry Pi OS trixie's (and the
# runtime image's, gcr.io/distroless/cc-debian13).
max_glibc="${COFFEEBOT_CROSS_MAX_GLIBC:-2.41}"
read -r -a targets <<<"${COFFEEBOT_CROSS_TARGETS:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}"

# Inside the root: the toolchain for both targets. A change to this list is installed into the
# root at the next run.
packages=(
  rustc cargo
  libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  libstd-rust-dev:armhf gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  qemu-user ca-certificates
)

log() { printf 'cross: %s\n' "$*"; }
die() { printf 'cross: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, bind mounts); try: sudo $0"

# ----- the root ------------------------------------------------------------------------------

# shellcheck source=scripts/forky-root.sh
. scripts/forky-root.sh

# in_root ROOT USER COMMAND…: runs COMMAND chrooted into ROOT as USER (`root`, or uid:gid) with
# the repository at /src and the cargo registry at /cargo/registry (scripts/forky-root.sh).
in_root() {
  forky_run "$1" "$2" rw "$repo" /src rw "$registry" /cargo/registry -- "${@:3}"
}

# ----- who builds, and the registry --------------------------------------------------------

owner="$(stat -c %u:%g "$repo")"
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
mkdir -p "$registry"
if [ "$(stat -c %u:%g "$registry")" != "$owner" ]; then
  # Not the owner's registry: one of the root's own, owned by the builder.
  registry="$(dirname "$root")/cargo-registry"
  mkdir -p "$registry"
  chown "$owner" "$registry"
fi

forky_ensure "$root" .coffeebot-cross "$mirror" "${packages[@]}"

# ----- the build -----------------------------------------------------------------------------

# Cargo's configuration inside the root: the cross gcc links each target (cc-rs finds the same
# compilers through CC_<target>).
mkdir -p "$root/cargo"
cat >"$root/cargo/config.toml" <<'EOF'
[target.aarch64-unknown-linux-gnu]
linker = "aarch64-linux-gnu-gcc"

[target.armv7-unknown-linux-gnueabihf]
linker = "arm-linux-gnueabihf-gcc"
EOF

mkdir -p target/cross
chown "$owner" target target/cross
target_args=()
for t in "${targets[@]}"; do target_args+=(--target "$t"); done
log "$(in_root "$root" "$owner" rustc --version) building ${targets[*]}"
started=$SECONDS
in_root "$root" "$owner" /usr/bin/env -i \
  PATH=/usr/bin:/bin HOME=/tmp CARGO_HOME=/cargo CARGO_TARGET_DIR=/src/target/cross \
  CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
  CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar \
  sh -c 'cd /src && exec nice cargo build --release --locked --bin coffeebot "$@"' cargo "${target_args[@]}"
log "built in $((SECONDS - started)) s"

# ----- what the tests need ------------------------------------------------------------------

gnu_of() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
    *) die "no Debian cross toolchain known for $1" ;;
  esac
}
qemu_for() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo "$root/usr/bin/qemu-aarch64 -L $root/usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) echo "$root/usr/bin/qemu-arm -L $root/usr/arm-linux-gnueabihf" ;;
    *) die "no qemu known for $1" ;;
  esac
}
{
  echo "COFFEEBOT_CROSS_ROOT='$root'"
  for t in "${targets[@]}"; do
    bin="$repo/target/cross/$t/release/coffeebot"
    [ -x "$bin" ] || die "missing $bin"
    var="$(echo "${t%%-*}" | tr '[:lower:]' '[:upper:]')"
    echo "COFFEEBOT_CROSS_BIN_$var='$bin'"
    echo "COFFEEBOT_CROSS_QEMU_$var='$(qemu_for "$t")'"
    # Proves the binary runs at all (and that qemu is the static one the host can run).
    # shellcheck disable=SC2046
    $(qemu_for "$t") "$bin" --version >/dev/null || die "$bin does not run under qemu"
    # The newest glibc symbol version it links against: what the Pi's OS must have at least.
    glibc="$(in_root "$root" "$owner" "$(gnu_of "$t")-objdump" -T "/src/target/cross/$t/release/coffeebot" |
      grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
    [ "$(printf '%s\n' "$glibc" "$max_glibc" | sort -V | tail -n 1)" = "$max_glibc" ] ||
      die "$t needs glibc $glibc, newer than $max_glibc (Debian 13, Raspberry Pi OS trixie)"
    log "$t: $(stat -c %s "$bin") bytes, needs glibc >= $glibc, $($(qemu_for "$t") "$bin" --version)" >&2
  done
} >target/cross/env.new
mv target/cross/env.new target/cross/env
chown "$owner" target/cross/env
log "ready: target/cross/env"
