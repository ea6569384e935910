#!/usr/bin/env bash
# Creates the LAN listener's password file non-interactively for the users `coffeebot`
# (the bridge), `homeassistant` and `lan`, without ever putting a password on a command line.
#
#   mosquitto/make-passwords.sh [-f PASSWORD_FILE] [--stdin]
#
# A user's password comes, in this order, from a `user=password` line on standard input (with
# --stdin), from the environment (MQTT_PASSWORD_COFFEEBOT, MQTT_PASSWORD_HOMEASSISTANT,
# MQTT_PASSWORD_LAN), or is generated at random; generated passwords are written (mode 0600) to
# PASSWORD_FILE.generated, never printed. Each password reaches `mosquitto_passwd` on its
# standard input (its prompt mode, which also keeps a `:` in a password, unlike `-U`): no
# password appears in any process's arguments, which every local user can read in
# /proc/*/cmdline. The password file (default:
# config/passwd beside this script) is replaced as a whole, mode 0600; when run as root it is
# given to the `mosquitto` user (override with PASSWORD_FILE_OWNER=user[:group]), because
# mosquitto 2 reads it after dropping root privileges.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
file="$here/config/passwd"
users=(coffeebot homeassistant lan)
declare -A pw=()
from_stdin=false

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
known() { case " ${users[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    -f) [ $# -ge 2 ] || { usage >&2; exit 2; }; file="$2"; shift 2 ;;
    --stdin) from_stdin=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *=*)
      user="${1%%=*}"
      echo "make-passwords: refusing a password on the command line (any local user can read it" >&2
      echo "make-passwords: in /proc): give it as MQTT_PASSWORD_${user^^}=… in the environment, or" >&2
      echo "make-passwords: as a '$user=…' line on standard input with --stdin" >&2
      exit 2 ;;
    *) usage >&2; exit 2 ;;
  esac
done

if $from_stdin; then
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    user="${line%%=*}"
    [ "$user" != "$line" ] || { echo "make-passwords: stdin: expected user=password lines" >&2; exit 2; }
    known "$user" || { echo "make-passwords: unknown user '$user' (known: ${users[*]})" >&2; exit 2; }
    pw[$user]="${line#*=}"
  done
fi

command -v mosquitto_passwd >/dev/null 2>&1 || {
  echo "make-passwords: mosquitto_passwd not found (Debian: apt-get install mosquitto)" >&2
  exit 1
}

umask 077
mkdir -p "$(dirname "$file")"
tmp="$(mktemp "$file.XXXXXX")"
generated="$(mktemp "$file.generated.XXXXXX")"
trap 'rm -f "$tmp" "$generated"' EXIT

# Only shell builtins (printf, read) ever hold a password here; mosquitto_passwd reads it from
# a pipe, twice (its prompt asks again), and never gets it as an argument.
for user in "${users[@]}"; do
  env_name="MQTT_PASSWORD_${user^^}"
  password="${pw[$user]:-${!env_name:-}}"
  if [ -z "$password" ]; then
    password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')"
    printf '%s=%s\n' "$user" "$password" >>"$generated"
    echo "make-passwords: $user: generated a random password"
  else
    case "$password" in
      *$'\n'*|*$'\r'*) echo "make-passwords: $user: a password cannot contain a line break" >&2; exit 2 ;;
    esac
    echo "make-passwords: $user: password given"
  fi
  printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$tmp" "$user" >/dev/null \
    || { echo "make-passwords: mosquitto_passwd failed for $user" >&2; exit 1; }
done

chmod 0600 "$tmp"
owner="${PASSWORD_FILE_OWNER:-}"
if [ -z "$owner" ] && [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then
  owner="mosquitto:$(id -gn mosquitto)"
fi
[ -z "$owner" ] || chown "$owner" "$tmp"
mv -f "$tmp" "$file"
echo "make-passwords: wrote $file (mode 0600${owner:+, owner $owner})"

if [ -s "$generated" ]; then
  mv -f "$generated" "$file.generated"
  echo "make-passwords: generated passwords are in $file.generated (mode 0600): hand them to"
  echo "make-passwords: the bridge (mqtt.password_file) and Home Assistant, then delete that file"
else
  rm -f "$file.generated"
fi
