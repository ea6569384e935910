#!/usr/bin/env bash
# A real Home Assistant Core for the test suite, built from Debian packages and PyPI only.
#
# Home Assistant 2026.x needs Python >= 3.13.2; Debian 12 has 3.11. So HA lives in a Debian
# forky (testing) root made with debootstrap (minbase) holding python3, mosquitto (the broker
# the tests start from the shipped mosquitto/ config) and a virtualenv with a pinned
# homeassistant installed by uv under HA's own package_constraints.txt, plus pytest.
# The root is made once and kept (default /var/cache/coffeebot-ha/forky); it is reused while
# its recipe (packages, HA version, requirements) is unchanged, so later runs take seconds.
#
#   scripts/ha-env.sh install        make (or check) the root; prints how long it took
#   scripts/ha-env.sh run CMD...     run CMD inside the root, in a private mount namespace with
#                                    /proc, /dev, /tmp and the repository bind-mounted at the
#                                    same paths as outside (loopback networking is shared)
#   scripts/ha-env.sh test [ARGS]    install, then run the real-HA tests (tests/ha/, pytest;
#                                    ARGS go to pytest) with the debug `coffeebot` binary
#                                    (its target directory must be in the repository or /tmp)
#
# Needs root (debootstrap, chroot, mounts). Options (environment):
#   COFFEEBOT_HA_ROOT    where the root lives (default /var/cache/coffeebot-ha/forky)
#   COFFEEBOT_HA_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

# The pinned Home Assistant: the newest release on PyPI when this was written.
ha_version=2026.2.3
root="${COFFEEBOT_HA_ROOT:-/var/cache/coffeebot-ha/forky}"
mirror="${COFFEEBOT_HA_MIRROR:-http://deb.debian.org/debian}"
# gcc and python3-dev: a few of HA's requirements have no wheel for the newest Python yet.
packages=(python3 python3-venv python3-dev gcc libc6-dev mosquitto ca-certificates procps)
# paho-mqtt: the MQTT integration's requirement (its manifest's pin), and the tests' own MQTT
# client; pytest runs the tests. The other integrations' requirements HA installs itself at the
# first start (make_venv).
extra_requirements=(paho-mqtt==2.1.0 pytest==8.4.2)
venv_stamp="homeassistant==$ha_version ${extra_requirements[*]}"

log() { printf 'ha-env: %s\n' "$*"; }
die() { printf 'ha-env: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/forky-root.sh
. scripts/forky-root.sh

# in_root ROOT COMMAND...: runs COMMAND chrooted into ROOT (scripts/forky-root.sh), with /tmp,
# the repository and the workspace beside it (../shared, read by some tests, read-only) at the
# same paths as outside, and a clean environment whose PATH starts with HA's virtualenv.
in_root() {
  local binds=(rw /tmp /tmp rw "$repo" "$repo")
  if [ -d "$repo/../shared" ]; then binds+=(ro "$repo/../shared" "$(dirname "$repo")/shared"); fi
  forky_run "$1" root "${binds[@]}" -- /usr/bin/env -i PATH=/opt/ha/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 "${@:2}"
}

# The virtualenv /opt/ha: Home Assistant, then what the tests need, all under HA's
# constraints; then one start of HA with the tests' configuration, so that HA installs the
# requirements of the integrations it loads (its own mechanism, into this virtualenv) now
# rather than during a test.
make_venv() {
  local log_file="$root/var/log/coffeebot-ha-venv.log"
  rm -rf "$root/opt/ha"
  log "homeassistant==$ha_version with uv under HA's package_constraints.txt"
  # uv verifies TLS against the system's trust store (it may hold a site CA).
  in_root "$root" env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_CACHE_DIR=/var/cache/uv \
    UV_LINK_MODE=copy sh -c "
    set -e
    python3 -m venv /opt/ha
    /opt/ha/bin/pip install -q uv
    uv pip install -q --python /opt/ha/bin/python homeassistant==$ha_version
    constraints=\$(/opt/ha/bin/python -c 'import homeassistant, os; print(os.path.join(os.path.dirname(homeassistant.__file__), \"package_constraints.txt\"))')
    uv pip install -q --python /opt/ha/bin/python -c \"\$constraints\" homeassistant==$ha_version ${extra_requirements[*]}
  " >"$log_file" 2>&1 || { tail -n 30 "$log_file" >&2; die "installing Home Assistant failed (log: $log_file)"; }
  log "first start of Home Assistant (it installs its integrations' requirements)"
  in_root "$root" env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_CACHE_DIR=/var/cache/uv \
    python "$repo/tests/ha/harness.py" warm-up >>"$log_file" 2>&1 ||
    { tail -n 30 "$log_file" >&2; die "the first start of Home Assistant failed (log: $log_file)"; }
  echo "$venv_stamp" >"$root/opt/ha/.coffeebot-ha"
}

install() {
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, bind mounts); try: sudo $0"
  forky_ensure "$root" .coffeebot-ha-root "$mirror" "${packages[@]}"
  if [ -f "$root/opt/ha/.coffeebot-ha" ] && [ "$(cat "$root/opt/ha/.coffeebot-ha")" = "$venv_stamp" ]; then
    log "Home Assistant $ha_version is ready (kept from an earlier run)"
  else
    local started=$SECONDS
    make_venv
    log "Home Assistant $ha_version installed in $((SECONDS - started)) s ($(du -sh "$root" | cut -f1) in all)"
  fi
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    [ -f "$root/opt/ha/.coffeebot-ha" ] || die "no root at $root; run: $0 install"
    in_root "$root" "$@"
    ;;
  test)
    shift
    install
    cargo build --locked --quiet --bin coffeebot
    target="$(cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    started=$SECONDS
    in_root "$root" env COFFEEBOT_BIN="$target/debug/coffeebot" \
      python -m pytest -p no:cacheprovider -q "$repo/tests/ha" "$@"
    log "real-HA tests ran in $((SECONDS - started)) s"
    ;;
  *) sed -n '2,20s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
