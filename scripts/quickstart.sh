#!/usr/bin/env bash
# Runs the whole product on this machine with a simulated coffee maker: the local pair of
# mosquitto brokers (the shipped mosquitto/ configuration: the LAN broker and the public broker
# fed one way from it; loopback only, fresh random passwords in a temporary directory) and
# `coffeebot run --simulate`, then prints the mosquitto_sub / mosquitto_pub
# lines to watch it and to brew. Ctrl-C stops both and removes the temporary directory.
#
#   scripts/quickstart.sh
#
# Installs mosquitto from the distribution's packages first if it is missing
# (scripts/install-test-deps.sh). Environment: QUICKSTART_MQTT_PORT (default: 1883, or the
# first free of 11883, 21883), QUICKSTART_FEED_PORT (the LAN broker's loopback feed listener,
# 1884 likewise), QUICKSTART_WS_PORT (the public broker's websockets, 9001 likewise),
# QUICKSTART_PUBLIC_PORT (the public broker's loopback MQTT, 9002 likewise),
# QUICKSTART_HTTP_PORT (the status page, 8080 likewise), QUICKSTART_OPS_PORT (metrics and
# probes, 9090 likewise), RUST_LOG, QUICKSTART_SERIAL_PORT (a controller's port, e.g. the link of
# ../shared/realfw/run.sh: the bridge drives it instead of the simulator), QUICKSTART_BIN (a
# coffeebot binary to run instead of building one).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "quickstart: $*"; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! have mosquitto || ! have mosquitto_passwd || ! have mosquitto_sub; then
  say "installing mosquitto"
  "$root/scripts/install-test-deps.sh"
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p
  for p in "$@"; do
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  say "ports $* are all taken; set QUICKSTART_MQTT_PORT, _FEED_PORT, _WS_PORT, _PUBLIC_PORT, _HTTP_PORT, _OPS_PORT" >&2
  return 1
}
mqtt_port="${QUICKSTART_MQTT_PORT:-$(pick_port 1883 11883 21883)}"
feed_port="${QUICKSTART_FEED_PORT:-$(pick_port 1884 11884 21884)}"
ws_port="${QUICKSTART_WS_PORT:-$(pick_port 9001 19001 29001)}"
public_port="${QUICKSTART_PUBLIC_PORT:-$(pick_port 9002 19002 29002)}"
http_port="${QUICKSTART_HTTP_PORT:-$(pick_port 8080 18080 28080)}"
ops_port="${QUICKSTART_OPS_PORT:-$(pick_port 9090 19090 29090)}"

dir="$(mktemp -d "${TMPDIR:-/tmp}/coffeebot-quickstart.XXXXXX")"
mosquitto_pid=""
public_pid=""
bridge_pid=""
cleanup() {
  trap - INT TERM EXIT
  [ -z "$bridge_pid" ] || kill -TERM "$bridge_pid" 2>/dev/null || true
  [ -z "$bridge_pid" ] || wait "$bridge_pid" 2>/dev/null || true
  [ -z "$public_pid" ] || kill -TERM "$public_pid" 2>/dev/null || true
  [ -z "$public_pid" ] || wait "$public_pid" 2>/dev/null || true
  [ -z "$mosquitto_pid" ] || kill -TERM "$mosquitto_pid" 2>/dev/null || true
  [ -z "$mosquitto_pid" ] || wait "$mosquitto_pid" 2>/dev/null || true
  rm -rf "$dir"
  say "stopped"
}
trap cleanup INT TERM EXIT

# The shipped configuration, moved onto loopback ports; nothing else changes.
mkdir -p "$dir/config" "$dir/data"
cp "$root/mosquitto/config/mosquitto.conf" "$root/mosquitto/config/public.conf" \
  "$root/mosquitto/config/acl-lan" "$root/mosquitto/config/acl-feed" \
  "$root/mosquitto/config/acl-public" "$dir/config/"
sed -i -e "s/^listener 1883\$/listener $mqtt_port 127.0.0.1/" \
  -e "s/^listener 1884 127.0.0.1\$/listener $feed_port 127.0.0.1/" "$dir/config/mosquitto.conf"
sed -i -e "s/^listener 9001\$/listener $ws_port 127.0.0.1/" \
  -e "s/^listener 9002 127.0.0.1\$/listener $public_port 127.0.0.1/" \
  -e "s/^address 127.0.0.1:1884\$/address 127.0.0.1:$feed_port/" "$dir/config/public.conf"
grep -q "^listener $mqtt_port 127.0.0.1\$" "$dir/config/mosquitto.conf" &&
  grep -q "^listener $feed_port 127.0.0.1\$" "$dir/config/mosquitto.conf" &&
  grep -q "^address 127.0.0.1:$feed_port\$" "$dir/config/public.conf" ||
  { say "cannot move the listeners in mosquitto.conf / public.conf" >&2; exit 1; }
"$root/mosquitto/make-passwords.sh" -f "$dir/config/passwd" >/dev/null
password() { sed -n "s/^$1=//p" "$dir/config/passwd.generated"; }
bridge_password="$(password coffeebot)"
lan_password="$(password lan)"
ha_password="$(password homeassistant)"
rm -f "$dir/config/passwd.generated"
chmod 0755 "$dir" "$dir/config"
# Run as root, mosquitto drops to the mosquitto user, which must write data/.
if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then chown mosquitto "$dir/data"; fi

# Waits until mosquitto (pid $1, log $2) listens on port $3; exits with its log if it dies.
wait_listening() {
  for _ in $(seq 100); do
    port_free "$3" || return 0
    kill -0 "$1" 2>/dev/null || { cat "$2" >&2; exit 1; }
    sleep 0.1
  done
}

say "starting the LAN mosquitto on 127.0.0.1:$mqtt_port"
(cd "$dir" && exec "$mosquitto_bin" -c config/mosquitto.conf) >"$dir/mosquitto.log" 2>&1 &
mosquitto_pid=$!
wait_listening "$mosquitto_pid" "$dir/mosquitto.log" "$mqtt_port"
say "starting the public mosquitto on 127.0.0.1:$ws_port (websockets), fed from :$feed_port"
(cd "$dir" && exec "$mosquitto_bin" -c config/public.conf) >"$dir/public.log" 2>&1 &
public_pid=$!
wait_listening "$public_pid" "$dir/public.log" "$ws_port"

if [ -n "${QUICKSTART_BIN:-}" ]; then
  bridge_bin="$QUICKSTART_BIN"
else
  say "building coffeebot"
  cargo build --quiet --manifest-path "$root/Cargo.toml" --bin coffeebot
  target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  bridge_bin="$target/debug/coffeebot"
fi

cat <<EOF_HELP

  The coffee maker is ${QUICKSTART_SERIAL_PORT:-simulated}; the broker runs on 127.0.0.1:$mqtt_port. In another terminal:

  watch everything:
    mosquitto_sub -h 127.0.0.1 -p $mqtt_port -u lan -P '$lan_password' -t 'coffeebot/#' -v

  brew 2 cups (then: STOP; or heater/set ON|OFF, cups/set N, keep_warm/set ON|OFF):
    mosquitto_pub -h 127.0.0.1 -p $mqtt_port -u lan -P '$lan_password' -q 1 -t coffeebot/coffeepot/brew/set -m 2

  Home Assistant: MQTT integration, broker 127.0.0.1:$mqtt_port, user homeassistant,
  password '$ha_password'. The device appears as "Coffee Pot".

  what the public sees (the public broker, anonymous, read-only; websockets on :$ws_port):
    mosquitto_sub -h 127.0.0.1 -p $public_port -t 'coffeebot/#' -v

  the status page: http://127.0.0.1:$http_port/
  metrics and probes: http://127.0.0.1:$ops_port/metrics, /healthz, /readyz

  Ctrl-C stops everything.

EOF_HELP

export COFFEEBOT__MQTT__HOST=127.0.0.1
export COFFEEBOT__MQTT__PORT="$mqtt_port"
export COFFEEBOT__MQTT__USERNAME=coffeebot
export COFFEEBOT__MQTT__PASSWORD="$bridge_password"
export COFFEEBOT__HTTP__LISTEN="127.0.0.1:$http_port"
export COFFEEBOT__HTTP__OPS_LISTEN="127.0.0.1:$ops_port"
if [ -n "${QUICKSTART_SERIAL_PORT:-}" ]; then
  COFFEEBOT__SERIAL__PORT="$QUICKSTART_SERIAL_PORT" "$bridge_bin" run &
else
  "$bridge_bin" run --simulate &
fi
bridge_pid=$!
wait "$bridge_pid" || true
bridge_pid=""
