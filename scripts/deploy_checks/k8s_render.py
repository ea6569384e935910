"""Checks that the render of k8s/ is what the product promises.

Reads ROOT/config/, ROOT/mosquitto/config/, ROOT/Dockerfile, ... and the renders that
check-deploy.sh wrote into WORK (k8s.yaml, device-plugin.yaml, privileged-device.yaml), and checks:
the bridge (one replica with Recreate, probes on the operator port, non-root, read-only, no
capabilities, on the labelled node, its state directory on a PVC), the Ingress (only the page's paths), its ConfigMap
(byte-identical to config/k8s.toml, mounted where the image looks) and Secret, the image tag and
toolchain against the Dockerfile and Cargo.toml, mosquitto (two brokers in one pod: every path in
mosquitto.conf and public.conf on the ConfigMap, the Secret or the PVC; listeners, Services and
ACLs agreeing with the bridge's config; the public broker without persistence or passwords, fed
`in` only from a read-only loopback listener; memory limits above the measured bounds of
tests/broker_limits.rs), the NetworkPolicies (the LAN range the one setting of k8s/lan.yaml,
covering no usual pod or service range; externalTrafficPolicy Local), the device plugin and the privileged-device option.

Prints one `ok`/`FAIL` line per check and writes WORK/coffeebot.toml (the ConfigMap's
configuration, for `coffeebot check-config`), WORK/render-checks-passed (the number passed) and,
if any failed, WORK/render-checks-failed (their list); exit status 1 if any failed.
Needs PyYAML (in check-deploy.sh's venv, with kubernetes-validate) and Python 3.11 (tomllib).
"""
import base64
import ipaddress
import os
import re
import subprocess
import tomllib

from common import Checks, parser

WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod")


def containers(pod):
    """A pod spec's init containers and containers."""
    return pod.get("initContainers", []) + pod["containers"]


def privileged(docs):
    """(kind, name, container) of every privileged container in `docs`."""
    return [(d["kind"], d["metadata"]["name"], c["name"]) for d in docs if d["kind"] in WORKLOADS
            for c in containers(d["spec"]["template"]["spec"] if "template" in d["spec"] else d["spec"])
            if (c.get("securityContext") or {}).get("privileged")]


def main():
    args = parser(__doc__)
    args.add_argument("root", metavar="ROOT", help="the repository's root")
    args.add_argument("work", metavar="WORK", help="check-deploy.sh's work directory, with the renders")
    args = args.parse_args()
    import yaml  # here, not at the top: --help works without PyYAML

    root, work = args.root, args.work
    checks = Checks()

    def finish():
        checks.finish(os.path.join(work, "render-checks"))

    def load(name):
        with open(os.path.join(work, name)) as f:
            return [d for d in yaml.safe_load_all(f) if d]

    def one(docs, kind, name):
        # Generated ConfigMaps carry a content hash suffix.
        pattern = re.escape(name) + (r"-[a-z0-9]{10}" if kind == "ConfigMap" else "")
        found = [d for d in docs if d["kind"] == kind and re.fullmatch(pattern, d["metadata"]["name"])]
        if len(found) != 1:
            checks.check(False, f"exactly one {kind} {name} (found {len(found)})")
            finish()
        return found[0]

    def read(path, mode="r"):
        with open(os.path.join(root, path), mode) as f:
            return f.read()

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
    checks.check(spec.get("replicas") == 1, "bridge: exactly one replica")
    checks.check(spec.get("strategy", {}).get("type") == "Recreate", "bridge: strategy Recreate")
    http_port = int(setting("http", "listen").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    checks.check(setting("http", "listen").startswith("0.0.0.0:") and ports.get("http") == http_port,
                 f"bridge: http.listen {setting('http', 'listen')} is the container's port 'http'")
    ops_port = int(setting("http", "ops_listen").rsplit(":", 1)[1])
    checks.check(ports.get("ops") == ops_port != http_port, f"bridge: http.ops_listen is the port 'ops' ({ops_port})")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        checks.check(get.get("path") == path and get.get("port") in ("ops", ops_port),
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
                checks.check(p.get("pathType") == "Exact" and p.get("path") in public_paths and target == "http",
                             f"ingress {ing['metadata']['name']}: {p.get('path')} ({p.get('pathType')}) is a page path on the public port")
        checks.check(not ing["spec"].get("defaultBackend"), "ingress: no default backend")
    checks.check(any(d.get("kind") == "Ingress" for d in docs), "an example Ingress for the page")
    np = one(docs, "NetworkPolicy", "coffeebot")
    opened = {p["port"]: r.get("from") for r in np["spec"]["ingress"] for p in r.get("ports", [])}
    checks.check(set(opened) == {http_port, ops_port} and all(opened.values()),
                 "networkpolicy: the public and the operator port each from one namespace only")
    checks.check(pod.get("terminationGracePeriodSeconds", 30) >= 5,
                 "bridge: terminationGracePeriodSeconds leaves room for the 2 s heater-off shutdown")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    checks.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "bridge: non-root")
    checks.check(20 in psc.get("supplementalGroups", []), "bridge: dialout (GID 20) supplemental group")
    checks.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "bridge: seccomp RuntimeDefault")
    checks.check(csc.get("readOnlyRootFilesystem") is True, "bridge: read-only root filesystem")
    checks.check(csc.get("allowPrivilegeEscalation") is False, "bridge: no privilege escalation")
    checks.check(csc.get("capabilities", {}).get("drop") == ["ALL"], "bridge: all capabilities dropped")
    checks.check(bool(c.get("resources", {}).get("limits", {}).get("memory")), "bridge: resource limits")
    checks.check(pod.get("nodeSelector", {}).get("coffeebot.io/serial-device") == "true",
                 "bridge: scheduled on the node labelled coffeebot.io/serial-device=true")
    checks.check(privileged(docs) == [], "k8s/: no privileged container")

    # The bridge's configuration: the ConfigMap is config/k8s.toml, mounted where the image looks.
    cfg = one(docs, "ConfigMap", "coffeebot-config")
    checks.check(cfg["data"] == {"coffeebot.toml": k8s_toml}, "ConfigMap coffeebot-config is config/k8s.toml")
    with open(os.path.join(work, "coffeebot.toml"), "w") as f:
        f.write(cfg["data"]["coffeebot.toml"])
    dockerfile = read("Dockerfile")
    cmd = re.search(r'^CMD \[(.*)\]$', dockerfile, re.M).group(1)
    image_config = re.search(r'"--config", "([^"]+)"', cmd).group(1)
    def mount_of(volume_name):
        return next((m for m in c["volumeMounts"] if m["name"] == volume_name), None)
    vols = {v["name"]: v for v in pod["volumes"]}
    cfg_vol = next((n for n, v in vols.items() if v.get("configMap", {}).get("name") == cfg["metadata"]["name"]), None)
    checks.check(cfg_vol is not None and mount_of(cfg_vol)["mountPath"] == os.path.dirname(image_config)
                 and "coffeebot.toml" == os.path.basename(image_config),
                 f"bridge: the ConfigMap is mounted as the image's {image_config}")
    pw_file = setting("mqtt", "password_file")
    pw_vol = next((n for n, v in vols.items() if "secret" in v), None)
    pw_items = [i["path"] for i in vols[pw_vol]["secret"].get("items", [])] if pw_vol else []
    checks.check(pw_vol is not None and mount_of(pw_vol)["mountPath"] == os.path.dirname(pw_file)
                 and os.path.basename(pw_file) in pw_items,
                 f"bridge: mqtt.password_file {pw_file} comes from the Secret {vols.get(pw_vol, {}).get('secret', {}).get('secretName')}")
    checks.check(not setting("mqtt", "password"), "config/k8s.toml holds no password")
    # The state directory (household counters): a writable PVC mount, so they survive the pod.
    state_dir = setting("counters", "state_dir")
    state_mount = next((m for m in c["volumeMounts"] if state_dir and m["mountPath"].rstrip("/") == state_dir.rstrip("/")), None)
    claim = vols.get(state_mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName") if state_mount else None
    checks.check(claim is not None and not state_mount.get("readOnly")
                 and any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in docs),
                 f"bridge: counters.state_dir {state_dir!r} is the PVC {claim}, writable (counters survive restarts)")
    checks.check(psc.get("fsGroup") is not None, f"bridge: the state volume is writable through fsGroup {psc.get('fsGroup')}")

    # Images: the bridge's tag is the crate's version, as in the Dockerfile's label.
    cargo = tomllib.loads(read("Cargo.toml"))["package"]
    kust = yaml.safe_load(read("k8s/kustomization.yaml"))
    tag = next(i["newTag"] for i in kust["images"] if i["name"] == "coffeebot")
    label = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.M).group(1)
    checks.check(tag == cargo["version"] == label,
                 f"image tag {tag}, Dockerfile VERSION {label} and Cargo.toml version {cargo['version']} agree")
    # The toolchain: Debian's rustc of the same suite as scripts/cross.sh, whose binaries CI tests
    # under qemu-user (cargo itself refuses a rustc older than the crate's rust-version).
    suite = re.search(r"^ARG DEBIAN_SUITE=(\S+)$", dockerfile, re.M).group(1)
    cross, forky = read("scripts/cross.sh"), read("scripts/forky-root.sh")
    checks.check(re.search(rf"debootstrap --variant=minbase {re.escape(suite)} ", forky) is not None
                 and "forky-root.sh" in cross and "rustc cargo" in cross
                 and "rustc cargo" in dockerfile and "libstd-rust-dev:$2" in dockerfile,
                 f"the Dockerfile builds with Debian {suite}'s rustc and cargo, as scripts/cross.sh does")

    # mosquitto: two brokers in one pod, each a container with the layout of mosquitto/ (config/
    # and data/) rebuilt around it: the LAN broker (mosquitto.conf) and the public broker
    # (public.conf), fed one way from the LAN broker over the pod's loopback. Every path in a
    # configuration is relative to the layout's root, the container's workingDir: each must land
    # on the ConfigMap (byte-identical to the file at that path under mosquitto/), the Secret
    # (password_file) or the PVC (persistence_location).
    layout = "mosquitto"
    def parse(conf):
        """(directives before the first `listener`, {port: listener's directives}, bridges)."""
        blocks, bridges, cur = [{}], [], None
        for line in conf.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, _, value = line.strip().partition(" ")
            if key == "listener":
                blocks.append({})
                cur = blocks[-1]
            elif key == "connection":
                bridges.append({})
                cur = bridges[-1]
            target = cur if cur is not None else blocks[0]
            target.setdefault(key, []).append(value.strip())
        return blocks[0], {int(b["listener"][0].split()[0]): b for b in blocks[1:]}, bridges
    def loopback(block):
        return block["listener"][0].split()[1:2] == ["127.0.0.1"]
    mcfg = one(docs, "ConfigMap", "mosquitto-config")
    data = {k: v.encode() for k, v in mcfg.get("data", {}).items()}
    data.update({k: base64.b64decode(v) for k, v in mcfg.get("binaryData", {}).items()})
    mq = one(docs, "Deployment", "mosquitto")
    mpod = mq["spec"]["template"]["spec"]
    mvols = {v["name"]: v for v in mpod["volumes"]}
    mpsc = mpod.get("securityContext", {})
    config_dir = "config"
    try:
        in_git = subprocess.run(["git", "-C", root, "ls-files", f"{layout}/{config_dir}"], check=True,
                                capture_output=True, text=True).stdout.split()
        in_git = {os.path.relpath(f, f"{layout}/{config_dir}") for f in in_git}
    except (OSError, subprocess.CalledProcessError):
        in_git = set(data)  # not a git checkout
    checks.check(set(data) == in_git,
                 f"ConfigMap mosquitto-config holds exactly {layout}/{config_dir}/ as in git: {sorted(in_git)} (has {sorted(data)})")
    checks.check(mpsc.get("runAsNonRoot") is True and mpsc.get("runAsUser") == 1883 and mpsc.get("fsGroup") is not None,
                 "mosquitto pod: as the image's mosquitto user (1883), files readable through fsGroup")

    def broker(container_name, conf_path):
        """Checks one broker's container against its configuration; returns what later checks need."""
        conf = read(f"{layout}/{conf_path}")
        glob, listeners, bridges = parse(conf)
        mc = next((c for c in mpod["containers"] if c["name"] == container_name), None)
        if mc is None:
            checks.check(False, f"mosquitto pod: a container {container_name} for {conf_path}")
            finish()
        files, dirs = {}, {}  # path in the container -> ("configmap", key) / ("secret", name); dir -> mount
        for m in mc.get("volumeMounts", []):
            v = mvols[m["name"]]
            dirs[m["mountPath"].rstrip("/")] = (m, v)
            sources = v.get("projected", {}).get("sources", []) + ([{"configMap": v["configMap"]}] if "configMap" in v else [])
            for s_ in sources:
                if "configMap" in s_ and s_["configMap"]["name"] == mcfg["metadata"]["name"]:
                    keys = [i["key"] for i in s_["configMap"]["items"]] if "items" in s_["configMap"] else list(data)
                    files.update({os.path.join(m["mountPath"], k): ("configmap", k) for k in keys if k in data})
                if "secret" in s_:
                    files.update({os.path.join(m["mountPath"], i["path"]): ("secret", s_["secret"]["name"])
                                  for i in s_["secret"].get("items", [])})
        wd = mc.get("workingDir")
        name = f"mosquitto ({container_name})"
        checks.check(wd == "/mosquitto", f"{name}: workingDir /mosquitto, the root that {conf_path}'s paths start from (is {wd})")
        def resolve(p):
            return os.path.normpath(os.path.join(wd or "/", p))
        def from_configmap(rel):
            src = files.get(resolve(rel))
            return src is not None and src[0] == "configmap" and data[src[1]] == read(f"{layout}/{rel}", "rb")
        checks.check(mc.get("command", [])[-2:] == ["-c", resolve(conf_path)] and from_configmap(conf_path),
                     f"{name} runs {resolve(conf_path)}, from the ConfigMap, byte-identical to {layout}/{conf_path}")
        acl_files = sorted({p for b in [glob, *listeners.values()] for p in b.get("acl_file", [])})
        for p in acl_files:
            checks.check(from_configmap(p), f"{name}: acl_file {p} is {resolve(p)}, from the ConfigMap, byte-identical to {layout}/{p}")
        pw_files = sorted({p for b in [glob, *listeners.values()] for p in b.get("password_file", [])})
        for p in pw_files:
            src = files.get(resolve(p))
            checks.check(src is not None and src[0] == "secret" and p not in in_git and os.path.basename(p) not in data,
                         f"{name}: password_file {p} is {resolve(p)}, from the Secret {src[1] if src else '?'}, not from the repository")
        config_vol = dirs.get(resolve(config_dir), (None, {}))[1].get("projected", {})
        mode = config_vol.get("defaultMode", 0o644)
        checks.check(mode & 0o040 and not mode & 0o007,
                     f"{name}: {resolve(config_dir)} readable through fsGroup {mpsc.get('fsGroup')}, not world-readable (mode {mode:o})")
        if glob.get("persistence", ["false"])[-1] == "true":
            for p in glob.get("persistence_location", []):
                m, v = dirs.get(resolve(p).rstrip("/"), (None, {}))
                checks.check("persistentVolumeClaim" in v and not m.get("readOnly"),
                             f"{name}: persistence_location {p} is {resolve(p)}, the PVC {v.get('persistentVolumeClaim', {}).get('claimName')}, writable")
        checks.check(not any(d.split()[0] == "file" for d in glob.get("log_dest", [])),
                     f"{name} logs to stdout/stderr (kubectl logs), not to a file")
        ports = {p["name"]: p["containerPort"] for p in mc.get("ports", [])}
        outside = sorted(p for p, b in listeners.items() if not loopback(b))
        checks.check(sorted(ports.values()) == outside,
                     f"{name}: its listeners off the loopback {outside} are the container's ports {sorted(ports.values())}")
        msc = mc.get("securityContext", {})
        checks.check(msc.get("readOnlyRootFilesystem") is True and msc.get("capabilities", {}).get("drop") == ["ALL"]
                     and msc.get("allowPrivilegeEscalation") is False, f"{name}: read-only, no capabilities")
        # Memory: the Kubernetes limit above what tests/broker_limits.rs bounds the resident memory
        # to under its worst attack, which is above the heap limit (memory_limit) it is measured with.
        limit = (mc.get("resources", {}).get("limits", {}) or {}).get("memory", "")
        limit_mib = int(limit[:-2]) if limit.endswith("Mi") else 0
        heap = int(glob.get("memory_limit", ["0"])[-1])
        return {"mc": mc, "glob": glob, "listeners": listeners, "bridges": bridges, "ports": ports,
                "pw_files": pw_files, "limit_mib": limit_mib, "heap": heap, "name": name}

    lan_b = broker("mosquitto", "config/mosquitto.conf")
    pub_b = broker("mosquitto-public", "config/public.conf")
    checks.check(bool(lan_b["pw_files"]), "mosquitto.conf names a password_file")
    listeners, mports = lan_b["listeners"], lan_b["ports"]

    limits_rs = read("tests/broker_limits.rs")
    def bound_kib(const):
        m = re.search(rf"const {const}: u64 = (\d+) \* 1024;", limits_rs)
        return int(m.group(1)) * 1024 if m else None
    for b, const in ((lan_b, "RSS_BOUND_KIB"), (pub_b, "PUBLIC_RSS_BOUND_KIB")):
        bound = bound_kib(const)
        checks.check(bound is not None and b["heap"] > 0 and b["heap"] < bound * 1024 < b["limit_mib"] * 1024 * 1024,
                     f"{b['name']}: memory_limit {b['heap'] >> 20} MiB < measured bound {bound and bound >> 10} MiB "
                     f"(tests/broker_limits.rs {const}) < Kubernetes limit {b['limit_mib']} Mi")

    # The public broker: keeps nothing, authenticates no one, and is fed one way from a loopback
    # listener of the LAN broker in the same pod, which lets it read and write nothing.
    pglob = pub_b["glob"]
    checks.check(pglob.get("persistence") == ["false"] and not any(
                     m["mountPath"].startswith("/mosquitto/data") for m in pub_b["mc"].get("volumeMounts", [])),
                 "mosquitto-public: persistence false, no data volume: nothing from the public side survives a restart")
    checks.check(not pub_b["pw_files"] and not any(m["name"] == "config" for m in pub_b["mc"].get("volumeMounts", [])),
                 "mosquitto-public: no password file, and not the LAN broker's config volume (it holds passwd)")
    feeds = pub_b["bridges"]
    feed_addr = feeds[0].get("address", [""])[0] if len(feeds) == 1 else ""
    feed_host, _, feed_port = feed_addr.rpartition(":")
    feed = listeners.get(int(feed_port) if feed_port.isdigit() else -1, {})
    topics = [t.split() for t in (feeds[0].get("topic", []) if feeds else [])]
    checks.check(len(feeds) == 1 and feed_host == "127.0.0.1" and feed and loopback(feed),
                 f"mosquitto-public: one feed, from the LAN broker's loopback listener {feed_addr} in the same pod")
    checks.check(topics and all(len(t) >= 2 and t[1] == "in" for t in topics),
                 f"mosquitto-public: every feed topic is `in` only (LAN broker -> public): {[' '.join(t) for t in topics]}")
    feed_acl = (feed.get("acl_file") or [None])[0]
    acl_lines = [l.split() for l in read(f"{layout}/{feed_acl}").splitlines()
                 if l.strip() and not l.lstrip().startswith("#")] if feed_acl else []
    checks.check(feed_acl and acl_lines and all(l[0] == "topic" and l[1] == "read" for l in acl_lines),
                 f"mosquitto: the feed listener's {feed_acl} only reads (no write, readwrite or user lines)")

    # Services: the bridge's mqtt.host:port reaches the authenticated listener, whose ACL knows the
    # bridge's user; mosquitto-lan reaches only that listener, keeping the client's address;
    # mosquitto-public only the public broker's anonymous websockets listener.
    svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    all_ports = {**pub_b["ports"], **mports}
    def reaches(name, port=None):  # the container ports a Service's ports lead to
        return {all_ports.get(p.get("targetPort"), p.get("targetPort", p["port"]))
                for p in svcs.get(name, {}).get("spec", {}).get("ports", []) if port in (None, p["port"])}
    host, port, user = setting("mqtt", "host"), setting("mqtt", "port"), setting("mqtt", "username")
    lan_port = next(iter(reaches(host, port)), None)
    lan = listeners.get(lan_port, {})
    checks.check(lan != {} and lan_port in mports.values(), f"bridge: mqtt.host {host}:{port} is a Service to the LAN broker's listener {lan_port}")
    checks.check(lan.get("allow_anonymous") == ["false"] and lan.get("password_file", []) == lan_b["pw_files"],
                 f"mosquitto: listener {lan_port} refuses anonymous clients and checks {lan_b['pw_files']}")
    acl = (lan.get("acl_file") or [None])[0]
    acl_users = re.findall(r"^user\s+(\S+)", read(f"{layout}/{acl}"), re.M) if acl else []
    checks.check(user in acl_users, f"bridge: mqtt.username {user} has rights in listener {lan_port}'s {acl} (users {acl_users})")
    lan_svc = svcs.get("mosquitto-lan", {}).get("spec", {})
    checks.check(lan_svc.get("type") in ("NodePort", "LoadBalancer") and reaches("mosquitto-lan") == {lan_port},
                 f"Service mosquitto-lan: the LAN entry point, listener {lan_port} only")
    checks.check(lan_svc.get("externalTrafficPolicy") == "Local",
                 "Service mosquitto-lan: externalTrafficPolicy Local, so the NetworkPolicy sees the client's own address")
    pub_ports = reaches("mosquitto-public")
    pub = pub_b["listeners"].get(next(iter(pub_ports), None), {})
    checks.check(len(pub_ports) == 1 and next(iter(pub_ports)) in pub_b["ports"].values()
                 and pub.get("protocol") == ["websockets"] and pglob.get("allow_anonymous", pub.get("allow_anonymous")) == ["true"],
                 f"Service mosquitto-public: the public broker's anonymous read-only websockets listener {sorted(pub_ports)} only")

    # NetworkPolicies.
    nps = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    checks.check(any(s["podSelector"] == {} and set(s.get("policyTypes", [])) == {"Ingress", "Egress"}
                     and not s.get("ingress") and not s.get("egress") for s in nps.values()),
                 "NetworkPolicy: default deny of ingress and egress in the namespace")
    def ingress_to(app):
        return [r for s in nps.values() if s["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app
                for r in s.get("ingress", [])]
    lan_names = (lan_port, next((n for n, p in mports.items() if p == lan_port), None))
    rules_lan = [r for r in ingress_to("mosquitto") if any(p.get("port") in lan_names for p in r.get("ports", []))]
    peers = [p for r in rules_lan for p in r.get("from", [None])]
    checks.check(rules_lan and None not in peers and all(
                     (p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "coffeebot"
                      and "namespaceSelector" not in p) or "ipBlock" in p for p in peers),
                 f"NetworkPolicy: only the bridge and the LAN range reach mosquitto's {lan_port}")
    checks.check(all(not any(p.get("port") in lan_names for p in r.get("ports", [])) for r in ingress_to("mosquitto")
                     if r not in rules_lan) and all(r.get("ports") for r in ingress_to("mosquitto")),
                 f"NetworkPolicy: every other rule into mosquitto is port-limited and not {lan_port}")
    checks.check(any(any(p.get("port") in (http_port, "http") for p in r.get("ports", [])) for r in ingress_to("coffeebot")),
                 f"NetworkPolicy: the bridge's HTTP port {http_port} is reachable")
    # The LAN range: one setting (k8s/lan.yaml), the only ipBlock anywhere, never covering a
    # cluster's usual pod or service range.
    lan_cfg = yaml.safe_load(read("k8s/lan.yaml"))
    cidr = lan_cfg.get("data", {}).get("cidr", "")
    blocks = [p["ipBlock"] for s in nps.values() for r in s.get("ingress", []) for p in r.get("from", []) if "ipBlock" in p]
    checks.check(lan_cfg.get("metadata", {}).get("annotations", {}).get("config.kubernetes.io/local-config") == "true"
                 and not any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "lan" for d in docs),
                 "k8s/lan.yaml: local to kustomize, not applied")
    checks.check(blocks == [{"cidr": cidr}], f"NetworkPolicy: the one LAN ipBlock is k8s/lan.yaml's cidr {cidr} (found {blocks})")
    try:
        net = ipaddress.ip_network(cidr)
        cluster = [ipaddress.ip_network(c) for c in
                   ("192.168.0.0/16", "10.42.0.0/16", "10.43.0.0/16", "10.244.0.0/16", "10.96.0.0/12", "10.0.0.0/14")]
        covered = [str(c) for c in cluster if c.version == net.version and c.subnet_of(net)]
        checks.check(not covered, f"the LAN range {cidr} covers no usual pod or service range (covers: {covered})")
    except ValueError as e:
        checks.check(False, f"k8s/lan.yaml: cidr {cidr!r} is a network ({e})")

    # The device: the plugin offers it where the config looks for it, on the labelled node.
    plugin_docs = load("device-plugin.yaml")
    ds = one(plugin_docs, "DaemonSet", "coffeebot-device-plugin")
    dspod = ds["spec"]["template"]["spec"]
    devices = [yaml.safe_load(a) for cc in dspod["containers"] for a in cc.get("args", []) if a.lstrip().startswith("name:")]
    resource = next((r for r in c["resources"].get("limits", {}) if "/" in r), "")
    dev = next((d for d in devices if "squat.ai/" + d["name"] == resource), None)
    mount_paths = [p.get("mountPath", p["path"]) for g in (dev or {}).get("groups", []) for p in g.get("paths", [])]
    checks.check(dev is not None and mount_paths == [setting("serial", "port")],
                 f"device plugin offers {resource} at serial.port {setting('serial', 'port')}")
    checks.check(dspod.get("nodeSelector") == {"coffeebot.io/serial-device": "true"},
                 "device plugin runs on the labelled node only")
    checks.check(privileged(plugin_docs) == [("DaemonSet", "coffeebot-device-plugin", "generic-device-plugin")],
                 "k8s/device-plugin/: the plugin is its only privileged container")

    # The documented option: privileged bridge with a hostPath character device.
    opt = load("privileged-device.yaml")
    obridge = one(opt, "Deployment", "coffeebot")["spec"]["template"]["spec"]
    ovols = [v for v in obridge["volumes"] if v.get("hostPath", {}).get("type") == "CharDevice"]
    omounts = {m["name"]: m["mountPath"] for m in obridge["containers"][0]["volumeMounts"]}
    checks.check(privileged(opt) == [("Deployment", "coffeebot", "coffeebot")] and len(ovols) == 1
                 and omounts.get(ovols[0]["name"]) == setting("serial", "port"),
                 "option privileged-device: only the bridge is privileged, with a CharDevice at serial.port")

    finish()


if __name__ == "__main__":
    main()
