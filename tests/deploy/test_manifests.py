"""deploy/: the Kubernetes manifests and the Compose example are valid, and agree with each other
and with the config they carry.

- every YAML file under deploy/ loads and passes yamllint (deploy/.yamllint);
- every Kubernetes manifest passes `kubernetes-validate --strict` for Kubernetes 1.29 (offline
  schemas bundled with the package); the PodMonitor, a CRD without a bundled schema, is checked
  field by field here instead;
- the ConfigMap's config parses and its embedded tests pass; the Deployments (classic and
  native sidecar) mount it as a directory, probe the admin port, give the drain enough time,
  and run with a restrictive securityContext; the Service targets the proxy port;
- the kustomization lists files that exist, and renders with `kubectl kustomize` when kubectl
  (or kustomize) is on the PATH;
- deploy/compose/compose.yaml is checked structurally (neither `docker compose` nor
  `podman-compose` is needed), its Prometheus config with promtool, and its example app through
  a real tunnelguard with the Compose config.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import parse_text
from proxy.config.model import Config
from proxy.rules.ruletests import failure_report
from tests.conftest import ROOT
from tests.deploy.promstack import binary, spawn_tunnelguard

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
KUBERNETES_VERSION = "1.29.0"
IMAGE = "tunnelguard:0.1.0"
CONFIG_PATH = "/etc/tunnelguard/config.yaml"
SIDECAR_ARGS = ["run", "--config", CONFIG_PATH, "--watch"]
CLASSIC = K8S / "deployment.yaml"
NATIVE = K8S / "deployment-native-sidecar.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Measured by bench/run.py (docs/deploy.md#resource-sizing): VmRSS right after start-up and
# VmHWM after 10 s runs of 32 connections; one process never uses more than one core.
IDLE_RSS_MIB = 47
PEAK_RSS_MIB = 64  # VmHWM after bench/run.py's load cells (bench/results.md)
# A Deployment's terminationGracePeriodSeconds must exceed what it has to cover by this much.
GRACE_MARGIN_S = 5


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _only(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(path) if d["kind"] == kind]
    return doc


def _configmap() -> dict[str, Any]:
    return _only(K8S / "configmap.yaml", "ConfigMap")


def _config() -> Config:
    return parse_text(_configmap()["data"]["config.yaml"], "deploy/kubernetes/configmap.yaml")


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, f"not a duration: {text!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def _mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"use Ki/Mi/Gi for memory: {quantity!r}"
    return int(match[1]) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}[match[2]]


def _cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# -- every file -----------------------------------------------------------------------------


def test_deploy_yaml_files_load() -> None:
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert len(files) >= 12, files
    for path in files:
        assert _docs(path), path


def test_yamllint_passes_on_every_yaml_file() -> None:
    config = DEPLOY / ".yamllint"
    listed = subprocess.run(
        [sys.executable, "-m", "yamllint", "--list-files", "-c", str(config), str(DEPLOY)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # The config's `ignore` only relaxes line-length for one file: no file escapes linting
    # (the config itself is YAML too).
    assert {Path(p) for p in listed.stdout.split()} == {*DEPLOY.rglob("*.y*ml"), config}
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(config), str(DEPLOY)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


# -- kubernetes-validate --------------------------------------------------------------------


def _kubernetes_validate(version: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", version,
         *map(str, paths)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_manifests_pass_kubernetes_validate_strict() -> None:
    assert [p.name for p in MANIFESTS] == [
        "configmap.yaml",
        "deployment-native-sidecar.yaml",
        "deployment.yaml",
        "podmonitor.yaml",
        "service.yaml",
    ]
    result = _kubernetes_validate(KUBERNETES_VERSION, *MANIFESTS)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR" not in out, out
    for path in MANIFESTS:
        for doc in _docs(path):
            name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            if doc["kind"] == "PodMonitor":  # no bundled schema: see test_podmonitor_fields
                assert f"{path.name} Couldn't find schema for kind PodMonitor" in out, out
            else:
                assert f"{path.name} passed for resource {name} against version 1.29" in out


def test_native_sidecar_form_needs_kubernetes_1_28_or_later() -> None:
    # The same strict schemas reject `restartPolicy` on an init container before 1.28: proof
    # that the validation above really looks at the field.
    old = _kubernetes_validate("1.27.0", NATIVE)
    assert old.returncode != 0
    assert "'restartPolicy' was unexpected" in old.stdout + old.stderr
    for version in ("1.28.0", "1.33.0"):
        result = _kubernetes_validate(version, NATIVE)
        assert result.returncode == 0, result.stdout + result.stderr


def test_podmonitor_fields() -> None:
    monitor = _only(K8S / "podmonitor.yaml", "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) == {"selector", "podMetricsEndpoints"}
    assert set(spec["selector"]) == {"matchLabels"}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    for path in (CLASSIC, NATIVE):  # it selects the pods and names the admin port of both forms
        deployment = _only(path, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in _sidecar(deployment)["ports"]}
        assert ports[endpoint["port"]] == _env_port(_sidecar(deployment), "ADMIN")


# -- the ConfigMap ------------------------------------------------------------------------


def test_configmap_holds_a_valid_config_whose_tests_pass() -> None:
    configmap = _configmap()
    assert configmap["metadata"]["name"] == "tunnelguard-rules"
    assert set(configmap["data"]) == {"config.yaml"}
    config = _config()
    assert len(config.tests) >= 3
    assert failure_report(config) == []
    (upstream,) = config.upstreams
    assert upstream.url == "http://127.0.0.1:3000"  # the app container, same pod
    assert (config.drain.delay, config.drain.timeout) == (5.0, 25.0)
    # A request the upstream answers within its response timeout can finish during a drain.
    assert upstream.timeouts.response <= config.drain.timeout
    # The listen addresses come from the container's environment, not from the file.
    assert "listen" not in yaml.safe_load(configmap["data"]["config.yaml"])


# -- the Deployments ----------------------------------------------------------------------


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _sidecar(deployment: dict[str, Any]) -> dict[str, Any]:
    pod = _pod(deployment)
    found = [
        c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == "tunnelguard"
    ]
    assert len(found) == 1
    return found[0]


def _app(deployment: dict[str, Any]) -> dict[str, Any]:
    (app,) = [c for c in _pod(deployment)["containers"] if c["name"] == "app"]
    return app


def _env_port(container: dict[str, Any], which: str) -> int:
    env = {e["name"]: e["value"] for e in container["env"]}
    name = {"PROXY": "TUNNELGUARD_LISTEN", "ADMIN": "TUNNELGUARD_ADMIN_LISTEN"}[which]
    assert env[name].startswith("0.0.0.0:"), env  # reachable by the kubelet and Prometheus
    return _port(env[name])


def _prestop_sleep(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


@pytest.fixture(params=[CLASSIC, NATIVE], ids=["classic", "native-sidecar"])
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each form's Deployment."""
    return _only(request.param, "Deployment")


def _is_native(deployment: dict[str, Any]) -> bool:
    return "initContainers" in _pod(deployment)


def test_sidecar_runs_the_image_on_the_mounted_configmap(deployment: dict[str, Any]) -> None:
    sidecar = _sidecar(deployment)
    assert sidecar["image"] == IMAGE
    assert sidecar["args"] == SIDECAR_ARGS
    assert "command" not in sidecar  # the image's entrypoint is `tunnelguard`
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    (rules,) = [m for m in mounts.values() if "configMap" in volumes[m["name"]]]
    # A directory mount: kubelet updates it in place (a subPath mount never changes).
    assert rules["mountPath"] == str(Path(CONFIG_PATH).parent)
    assert "subPath" not in rules and "subPathExpr" not in rules
    assert rules["readOnly"] is True
    assert volumes[rules["name"]]["configMap"]["name"] == _configmap()["metadata"]["name"]
    # readOnlyRootFilesystem: --workers N needs a writable temp dir for its metrics files.
    (tmp,) = [m for m in mounts.values() if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]


def test_probes_use_the_admin_port(deployment: dict[str, Any]) -> None:
    sidecar = _sidecar(deployment)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"http": _env_port(sidecar, "PROXY"), "admin": _env_port(sidecar, "ADMIN")}
    assert ports == {"http": 8080, "admin": 9090}  # the image's defaults
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    if "restartPolicy" in sidecar:  # native: the app starts once tunnelguard is ready
        probes["startupProbe"] = "/readyz"
    assert {k for k in sidecar if k.endswith("Probe")} == set(probes)
    for probe, path in probes.items():
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    assert sidecar["readinessProbe"]["periodSeconds"] <= 5  # drain.delay: notice it in time
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["admin"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "ports" not in _app(deployment)  # the app is reached only through tunnelguard


def test_termination_grace_period_fits_the_drain(deployment: dict[str, Any]) -> None:
    drain = _config().drain
    grace = _pod(deployment)["terminationGracePeriodSeconds"]
    app_sleep = _prestop_sleep(_app(deployment))
    assert app_sleep > drain.delay  # the app keeps serving the requests accepted meanwhile
    if _is_native(deployment):
        # The app stops first (preStop, then SIGTERM); tunnelguard drains after it has exited.
        assert grace >= app_sleep + drain.delay + drain.timeout + GRACE_MARGIN_S
    else:
        assert grace >= drain.delay + drain.timeout + GRACE_MARGIN_S
        assert grace >= app_sleep + GRACE_MARGIN_S


def test_native_sidecar_is_a_restartable_init_container() -> None:
    pod = _pod(_only(NATIVE, "Deployment"))
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "tunnelguard"
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["app"]
    classic = _pod(_only(CLASSIC, "Deployment"))
    assert "initContainers" not in classic
    assert [c["name"] for c in classic["containers"]] == ["app", "tunnelguard"]
    # Apart from where the sidecar sits, its probes and the grace period, the forms agree.
    native_sidecar = {
        k: v for k, v in sidecar.items() if k not in ("restartPolicy", "startupProbe")
    }
    assert native_sidecar == _sidecar(_only(CLASSIC, "Deployment"))
    for key in ("volumes", "securityContext", "automountServiceAccountToken"):
        assert pod[key] == classic[key], key


def test_resources_follow_the_measurements(deployment: dict[str, Any]) -> None:
    resources = _sidecar(deployment)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert _mebibytes(requests["memory"]) >= IDLE_RSS_MIB
    assert _mebibytes(requests["memory"]) >= PEAK_RSS_MIB  # what it used under load
    assert _mebibytes(limits["memory"]) >= 2 * PEAK_RSS_MIB  # room for buffered bodies
    assert _cores(requests["cpu"]) > 0
    # One event loop uses at most one core; a lower CPU limit only throttles it.
    assert _cores(limits["cpu"]) >= 1


def test_security_context_is_restrictive(deployment: dict[str, Any]) -> None:
    pod = _pod(deployment)
    assert pod["automountServiceAccountToken"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"} & pod.keys()
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sidecar = _sidecar(deployment)["securityContext"]
    assert sidecar == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # Every container meets the Pod Security Standard "restricted".
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert not context.get("privileged"), container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True


def test_service_targets_the_proxy_port(deployment: dict[str, Any]) -> None:
    service = _only(K8S / "service.yaml", "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    ports = {p["name"]: p["containerPort"] for p in _sidecar(deployment)["ports"]}
    assert ports[port["targetPort"]] == _env_port(_sidecar(deployment), "PROXY")


# -- kustomize ------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    (doc,) = _docs(K8S / "kustomization.yaml")
    return doc


def test_kustomization_lists_existing_manifests() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert resources == ["configmap.yaml", "deployment.yaml", "service.yaml", "podmonitor.yaml"]
    kinds = []
    for name in resources:
        assert (K8S / name).is_file(), name
        kinds += [d["kind"] for d in _docs(K8S / name)]
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodMonitor", "Service"]
    # Every manifest is composed, except the alternative form the comment tells how to use.
    assert {p.name for p in MANIFESTS} - set(resources) == {NATIVE.name}
    assert NATIVE.name in (K8S / "kustomization.yaml").read_text()


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("form", ["classic", "native-sidecar"])
def test_kustomization_renders(form: str, tmp_path: Path) -> None:
    command = _kustomize_command()
    if command is None:  # the lists and files are still checked above
        pytest.skip("neither kustomize nor kubectl is installed")
    directory = K8S
    if form == "native-sidecar":  # what the kustomization's comment says to do
        directory = tmp_path / "kubernetes"
        shutil.copytree(K8S, directory)
        text = (directory / "kustomization.yaml").read_text()
        swapped = text.replace("  - deployment.yaml ", "  - deployment-native-sidecar.yaml ")
        assert swapped != text
        (directory / "kustomization.yaml").write_text(swapped)
    rendered = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered.stdout)}
    assert sorted(docs) == ["ConfigMap", "Deployment", "PodMonitor", "Service"]
    source = CLASSIC if form == "classic" else NATIVE
    assert docs["Deployment"]["spec"] == _only(source, "Deployment")["spec"]
    assert docs["ConfigMap"]["data"] == _configmap()["data"]


# -- Compose --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (doc,) = _docs(COMPOSE / "compose.yaml")
    return doc


def _binds(service: dict[str, Any]) -> list[tuple[Path, str, str]]:
    """(host path, container path, options) of a service's bind mounts."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        assert source.startswith("."), f"not a bind mount of a file here: {volume}"
        out.append(((COMPOSE / source).resolve(), target, ",".join(options)))
    return out


def test_compose_services_images_and_network() -> None:
    compose = _compose()
    services = compose["services"]
    assert list(services) == ["app", "tunnelguard", "prometheus"]
    app, tg, prom = services["app"], services["tunnelguard"], services["prometheus"]
    assert app["image"] == "python:3.11-slim"
    assert tg["image"] == IMAGE
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"])
    assert (COMPOSE / tg["build"]["context"]).resolve() == ROOT  # the repository's Dockerfile
    # Like a pod: tunnelguard shares the app's network namespace, the app binds localhost only.
    assert tg["network_mode"] == "service:app"
    assert "ports" not in tg  # published on the service that owns the namespace
    command = app["command"]
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    config = _compose_config()
    assert config.upstreams[0].url == f"http://127.0.0.1:{command[3]}"
    assert tg["command"] == SIDECAR_ARGS
    env = tg["environment"]
    proxy, admin = _port(env["TUNNELGUARD_LISTEN"]), _port(env["TUNNELGUARD_ADMIN_LISTEN"])
    assert app["ports"] == [f"127.0.0.1:{proxy}:{proxy}", f"127.0.0.1:{admin}:{admin}"]
    host_ports = [p.split(":")[1] for p in app["ports"] + prom["ports"]]
    assert len(set(host_ports)) == len(host_ports)
    assert prom["ports"][0].endswith(":9090")
    # The same restrictions as the Kubernetes sidecar.
    assert tg["user"] == "10001:10001" and tg["read_only"] is True
    assert tg["cap_drop"] == ["ALL"] and tg["security_opt"] == ["no-new-privileges:true"]
    assert tg["tmpfs"] == ["/tmp"]
    drain = config.drain
    assert _seconds(tg["stop_grace_period"]) >= drain.delay + drain.timeout + GRACE_MARGIN_S


def test_compose_volumes_exist() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for source, target, options in _binds(service):
            assert source.exists(), f"{name}: {source} does not exist"
            assert target.startswith("/"), target
            assert options == "ro", f"{name}: mount {source} read-only"
    (rules,) = _binds(services["tunnelguard"])
    # A directory, like the ConfigMap: an editor's rename-over is seen by --watch.
    assert rules[0].is_dir() and rules[1] == str(Path(CONFIG_PATH).parent)
    assert (rules[0] / Path(CONFIG_PATH).name).is_file()
    (app_files,) = _binds(services["app"])
    assert {p.name for p in app_files[0].glob("*.json")} >= {"ok.json", "invalid-auth.json"}


def test_compose_healthchecks_and_start_order() -> None:
    services = _compose()["services"]
    for name in ("app", "tunnelguard"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert {"interval", "timeout", "retries"} <= check.keys(), name
    admin = _port(services["tunnelguard"]["environment"]["TUNNELGUARD_ADMIN_LISTEN"])
    assert f"http://127.0.0.1:{admin}/readyz" in services["tunnelguard"]["healthcheck"]["test"][-1]
    assert "http://127.0.0.1:3000/" in services["app"]["healthcheck"]["test"][-1]
    assert services["tunnelguard"]["depends_on"] == {"app": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"] == {"tunnelguard": {"condition": "service_healthy"}}
    for service in services.values():  # a depends_on target exists and can become healthy
        for target, condition in service.get("depends_on", {}).items():
            assert target in services
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target]


def _compose_config() -> Config:
    path = COMPOSE / "tunnelguard/config.yaml"
    return parse_text(path.read_text(), str(path.relative_to(ROOT)))


def test_compose_config_is_the_configmaps() -> None:
    compose, configmap = _compose_config(), _config()
    assert failure_report(compose) == []

    def served(config: Config) -> Config:  # what is served, not where it was read
        return dataclasses.replace(config, source="", tests=())

    assert served(compose) == served(configmap)
    assert [t.name for t in compose.tests] == [t.name for t in configmap.tests]


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    prometheus = _compose()["services"]["prometheus"]
    root = tmp_path / "container"
    for source, target, _ in _binds(prometheus):  # the files where the container sees them
        (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / target.lstrip("/"))
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_file = root / config_flag.split("=", 1)[1].lstrip("/")
    checked = subprocess.run(
        [binary("promtool"), "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rule files found" in checked.stdout + checked.stderr
    scrape = yaml.safe_load(config_file.read_text())["scrape_configs"]
    (job,) = scrape
    admin = _compose()["services"]["tunnelguard"]["environment"]["TUNNELGUARD_ADMIN_LISTEN"]
    # tunnelguard has no address of its own: it lives in the app service's network namespace.
    assert job["static_configs"][0]["targets"] == [f"app:{_port(admin)}"]


def test_compose_example_app_through_tunnelguard(tmp_path: Path) -> None:
    """The curl lines of compose.yaml, minus the containers: the example app's files served
    the way the app service serves them, behind a real tunnelguard on the Compose config."""
    log = tmp_path / "http.server.out"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
             "--directory", str(COMPOSE / "app")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    tunnelguard = None
    try:
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            match = re.search(r"port (\d+)", log.read_text())
            port = int(match[1]) if match else None
            assert server.poll() is None, log.read_text()
            time.sleep(0.05)
        assert port, log.read_text()
        tunnelguard = spawn_tunnelguard(
            tmp_path / "tg",
            "--config", str(COMPOSE / "tunnelguard/config.yaml"),
            "--upstream", f"http://127.0.0.1:{port}",
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        )  # fmt: skip
        expected = {"invalid-auth.json": 401, "report.json": 504, "ok.json": 200}
        for name, status in expected.items():
            assert _status(f"{tunnelguard.url}/{name}") == status, name
        deadline = time.monotonic() + 10  # the access-log line follows the response
        while len(tunnelguard.records()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(r["path"], r["code"]) for r in tunnelguard.records()] == [
            (f"/{name}", status) for name, status in expected.items()
        ]
    finally:
        if tunnelguard is not None:  # the drain (5 s) is tested in test_configmap_reload.py
            tunnelguard.proc.send_signal(signal.SIGKILL)
            tunnelguard.proc.wait()
        server.terminate()
        server.wait(10)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_docs_quote_the_measured_numbers() -> None:
    text = (ROOT / "docs/deploy.md").read_text()
    assert f"{IDLE_RSS_MIB} MiB" in text and f"{PEAK_RSS_MIB} MiB" in text
