"""What ships in deploy/ loads, and the sidecar's embedded rules are a valid config."""

from __future__ import annotations

import yaml

from proxy.config import parse_text

from .conftest import ROOT


def test_deploy_yaml_files_load() -> None:
    files = sorted((ROOT / "deploy").rglob("*.y*ml"))
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path


def test_sidecar_configmap_holds_a_valid_config() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar.yaml").read_text()))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_text(configmap["data"]["config.yaml"], "sidecar.yaml")
    assert str(config.listen) == "0.0.0.0:8080"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    sidecar = next(
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "tunnelguard"
    )
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["containerPort"] for p in sidecar["ports"]} == {
        config.listen.port,
        config.admin_listen.port,
    }
