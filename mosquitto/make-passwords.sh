#!/usr/bin/env bash
# Creates the LAN listener's password file non-interactively for the users `coffeebot`
# (the bridge), `homeassistant` and `lan`, with `mosquitto_passwd -b`.
#
#   mosquitto/make-passwords.sh [-f PASSWORD_FILE] [user=password ...]
#
# A user's password comes, in this order, from a `user=password` argument, from the
# environment (MQTT_PASSWORD_COFFEEBOT, MQTT_PASSWORD_HOMEASSISTANT, MQTT_PASSWORD_LAN), or
# is generated at random; generated passwords are written (mode 0600) to
# PASSWORD_FILE.generated, never printed. The password file (default: config/passwd beside
# this script) is replaced as a whole, mode 0600; when run as root it is given to the
# `mosquitto` user (override with PASSWORD_FILE_OWNER=user[:group]), because mosquitto 2
# reads it after dropping root privileges.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
file="$here/config/passwd"
users=(coffeebot homeassistant lan)
declare -A pw=()

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -f) [ $# -ge 2 ] || { usage >&2; exit 2; }; file="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*)
      user="${1%%=*}"
      case " ${users[*]} " in
        *" $user "*) pw[$user]="${1#*=}" ;;
        *) echo "make-passwords: unknown user '$user' (known: ${users[*]})" >&2; exit 2 ;;
      esac
      shift ;;
    *) usage >&2; exit 2 ;;
  esac
done

command -v mosquitto_passwd >/dev/null 2>&1 || {
  echo "make-passwords: mosquitto_passwd not found (Debian: apt-get install mosquitto)" >&2
  exit 1
}

umask 077
mkdir -p "$(dirname "$file")"
tmp="$(mktemp "$file.XXXXXX")"
generated="$(mktemp "$file.generated.XXXXXX")"
trap 'rm -f "$tmp" "$generated"' EXIT

for user in "${users[@]}"; do
  env_name="MQTT_PASSWORD_$(echo "$user" | tr '[:lower:]' '[:upper:]')"
  password="${pw[$user]:-${!env_name:-}}"
  if [ -z "$password" ]; then
    password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')"
    echo "$user=$password" >>"$generated"
    echo "make-passwords: $user: generated a random password"
  else
    echo "make-passwords: $user: password given"
  fi
  mosquitto_passwd -b "$tmp" "$user" "$password"
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
