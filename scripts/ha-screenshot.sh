#!/usr/bin/env bash
# A screenshot of the coffee pot's device page in a real Home Assistant, for the README:
# tests/ha/screenshot.py runs the tests' stack (shipped mosquitto config, simulator, bridge,
# HA with the examples) in the root of scripts/ha-env.sh, and headless Chromium (Debian's,
# outside the root, driven by scripts/cdp-screenshot.py) opens the device page, logged in
# through the frontend's own OAuth callback.
#
#   scripts/ha-screenshot.sh [OUT.png]    default docs/ha-device-page.png
#
# Needs root (as scripts/ha-env.sh) and chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/ha-device-page.png}"
browser="$(command -v chromium || command -v chromium-browser)" || { echo "ha-screenshot: no chromium" >&2; exit 1; }
scripts/ha-env.sh install >/dev/null
cargo build --locked --quiet --bin coffeebot
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
handshake="$(mktemp -d /tmp/coffeebot-ha-shot.XXXXXX)"
chmod 755 "$handshake"
# The frontend asks HA for every action's description, which imports HA's base entity
# components (ai_task, assist_satellite, camera, …) and with them their integrations'
# requirements, which the tests do not need. They go to a directory of this run only, so the
# cached root stays as scripts/ha-env.sh made it: the pinned wheels under HA's constraints,
# and two empty stand-ins for the voice pipeline's native modules (they need a C++ compiler the
# root has not; nothing on the page uses them).
# shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
scripts/ha-env.sh run env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_CACHE_DIR=/var/cache/uv sh -c '
  constraints=$(python -c "import homeassistant, os; print(os.path.join(os.path.dirname(homeassistant.__file__), \"package_constraints.txt\"))")
  uv pip install -q --python /opt/ha/bin/python --target "$1" -c "$constraints" \
    hassil home-assistant-intents numpy mutagen PyTurboJPEG ha-ffmpeg
  printf "class MicroVad:\n    pass\n" >"$1/pymicro_vad.py"
  printf "class AudioProcessor:\n    pass\n" >"$1/pyspeex_noise.py"
' sh "$handshake/python" >"$handshake/uv.log" 2>&1 || { tail -20 "$handshake/uv.log" >&2; exit 1; }
scripts/ha-env.sh run env COFFEEBOT_BIN="$target/debug/coffeebot" \
  PYTHONPATH="$(pwd)/tests/ha:$handshake/python" \
  python "$(pwd)/tests/ha/screenshot.py" "$handshake" &
stack=$!
trap 'touch "$handshake/done"; wait "$stack" || true; rm -rf "$handshake"' EXIT
for _ in $(seq 600); do
  [ -s "$handshake/url" ] && break
  kill -0 "$stack" 2>/dev/null || { echo "ha-screenshot: the stack did not come up" >&2; exit 1; }
  sleep 0.5
done
[ -s "$handshake/url" ] || { echo "ha-screenshot: the stack did not come up in 5 minutes" >&2; exit 1; }
# Chromium's own --screenshot fires before the frontend has drawn (it renders over a
# websocket): scripts/cdp-screenshot.py waits for the device page's "Sensors" section.
python3 scripts/cdp-screenshot.py "$browser" "$(cat "$handshake/url")" Sensors "$(realpath -m "$out")" 1280x1000
echo "ha-screenshot: $out"
