# shellcheck shell=bash
# A Debian forky (testing) root made with debootstrap (minbase), kept under /var/cache and
# reused while its recipe is unchanged: the one place scripts/cross.sh (the Raspberry Pi
# toolchain) and scripts/ha-env.sh (a real Home Assistant) make and enter their roots.
# Sourced, not run; the caller defines `log MESSAGE` and `die MESSAGE`.
#
#   forky_ensure ROOT STAMP MIRROR PACKAGE...
#       makes ROOT (or keeps it when the file ROOT/STAMP holds this recipe); a PACKAGE named
#       NAME:ARCH adds the foreign architecture ARCH first. When only the packages changed,
#       they are installed into the existing root instead of a new debootstrap.
#   forky_run ROOT USER [ro|rw SOURCE TARGET]... -- COMMAND...
#       runs COMMAND chrooted into ROOT as USER (`root`, or uid:gid) in a private mount
#       namespace with /dev, /proc, the host's resolv.conf and CA bundle, and each SOURCE
#       bind-mounted at TARGET inside (read-only for `ro`); the mounts end with the command.

# forky_run: see the head of this file.
forky_run() {
  local dir="$1" user="$2"
  shift 2
  # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
  unshare --mount --propagation private -- /bin/sh -eu -c '
    dir="$1"; user="$2"; shift 2
    mount --rbind /dev "$dir/dev"
    mount -t proc proc "$dir/proc"
    while [ "$1" != -- ]; do
      mode="$1"; source="$2"; target="$dir$3"; shift 3
      mkdir -p "$target"
      if [ "$mode" = ro ]; then mount --bind -o ro "$source" "$target"; else mount --bind "$source" "$target"; fi
    done
    shift
    # The host trust store (it may hold a site CA that the registries are reached through).
    if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ -f "$dir/etc/ssl/certs/ca-certificates.crt" ]; then
      mount --bind -o ro /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    fi
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    if [ "$user" = root ]; then exec chroot "$dir" "$@"; fi
    exec chroot --userspec="$user" "$dir" "$@"
  ' forky_run "$dir" "$user" "$@"
}

# forky_ensure: see the head of this file.
forky_ensure() {
  local root="$1" stamp="$2" mirror="$3"
  shift 3
  local recipe="forky minbase $*"
  if [ -f "$root/$stamp" ] && [ "$(cat "$root/$stamp")" = "$recipe" ]; then
    log "root $root is ready (kept from an earlier run)"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, bind mounts); try: sudo $0"
  local started=$SECONDS new="$root.new"
  rm -rf "$new"
  mkdir -p "$(dirname "$root")"
  if [ -f "$root/$stamp" ]; then
    # Only the package list changed: install into the existing root.
    mv "$root" "$new"
  else
    forky_debootstrap "$new" "$mirror"
  fi
  local archs=() p
  for p in "$@"; do
    case "$p" in *:*) archs+=("dpkg --add-architecture ${p#*:};") ;; esac
  done
  log "apt-get install $*"
  forky_run "$new" root -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive sh -c "
    set -e
    ${archs[*]}
    apt-get update -q
    apt-get install -y -q $*
    apt-get clean
  " >"$new.apt.log" 2>&1 || { tail -n 30 "$new.apt.log" >&2; die "apt-get in the root failed (log: $new.apt.log)"; }
  echo "$recipe" >"$new/$stamp"
  rm -rf "$root"
  mv "$new" "$root"
  rm -f "$new.log" "$new.apt.log"
  log "root made in $((SECONDS - started)) s"
}

# forky_debootstrap DIR MIRROR: a bare forky minbase in DIR, its apt set up for a testing
# mirror and without recommended packages.
forky_debootstrap() {
  local new="$1" mirror="$2"
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  fi
  # bookworm's debootstrap has no script named forky; sid's is the same bootstrap.
  local script=/usr/share/debootstrap/scripts/sid
  [ -f "$script" ] || die "no debootstrap script $script"
  log "debootstrap forky into $new"
  debootstrap --variant=minbase forky "$new" "$mirror" "$script" >"$new.log" 2>&1 ||
    { tail -n 30 "$new.log" >&2; die "debootstrap failed (log: $new.log)"; }
  # The testing mirror's Release file can carry an expired Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' >"$new/etc/apt/apt.conf.d/99coffeebot-valid-until"
  echo 'APT::Install-Recommends "false";' >"$new/etc/apt/apt.conf.d/99coffeebot-no-recommends"
}
