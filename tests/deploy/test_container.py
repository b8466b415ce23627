"""The container image (issue 8): the Dockerfile built and run for real, and linted.

podman builds the Dockerfile once for the module (`--pull=never`, with its layer cache, on a
local stand-in for the base image: see tests/deploy/containerstack.py) and runs it on the host
network with a read-only root filesystem, in front of an upstream served by this test's event
loop on 127.0.0.1.  Everything is checked through the running container: readiness, a tunnelled
error rewritten, metrics, the numeric user, a mounted config, SIGTERM draining to exit 0.  The
measured times are printed.

The first run on a machine makes the base rootfs with debootstrap (about a minute here); later
runs reuse it from /var/tmp/tunnelguard-base, and the image's layers from podman's store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from tests.conftest import ROOT, UpstreamFactory
from tests.deploy import containerstack

# The first run builds a Debian rootfs (bounded by containerstack's own timeouts).
pytestmark = pytest.mark.timeout(1200)

START_TIMEOUT = 30.0  # podman run until /readyz answers 200 (about 1 s here)
STOP_TIMEOUT = 40.0  # SIGTERM until exit: drain.timeout (30 s) + margin
SLOW = 3.0  # seconds the upstream takes for /slow: in flight while SIGTERM arrives
POLL = 0.1
TUNNELLED = {"ok": False, "error": "invalid_auth"}


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture (the measured times belong in the suite's output)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n[container] {line}", flush=True)


@pytest.fixture(scope="module")
def image(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[containerstack.Image]:
    with containerstack.built_image(tmp_path_factory.mktemp("container")) as built:
        base = built.base
        kind = "stand-in" if base.stand_in else "real image"
        _say(
            request.config,
            f"base image {base.name} ({kind}) ready in {base.seconds:.1f} s ({base.how}); "
            f"image built in {built.build_seconds:.1f} s "
            f"({built.cached_steps} of {built.steps} steps from the layer cache)",
        )
        yield built
        runs = ", ".join(f"{k} {v:.1f} s" for k, v in built.timings.items())
        _say(request.config, f"containers: {runs}")


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """The proxy's and the admin port, held for the test's container (see
    `containerstack.reserved_ports`)."""
    with containerstack.reserved_ports(2) as (port, admin_port):
        yield port, admin_port


def _upstream_app() -> web.Application:
    async def tunnelled(request: web.Request) -> web.Response:
        return web.json_response(TUNNELLED)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/auth.test", tunnelled)
    app.router.add_get("/slow", slow)
    return app


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(POLL)


async def _status(client: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with client.get(url) as response:
            await response.read()
            return response.status
    except aiohttp.ClientError:
        return None


async def _wait_ready(
    client: aiohttp.ClientSession, container: containerstack.Container, admin: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while await _status(client, f"{admin}/readyz") != 200:
        if time.monotonic() > deadline or not await asyncio.to_thread(container.running):
            logs = await asyncio.to_thread(container.logs)
            errors = await asyncio.to_thread(container.stderr)
            pytest.fail(f"container not ready within {START_TIMEOUT:.0f} s:\n{logs}\n{errors}")
        await asyncio.sleep(POLL)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with client.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def _metrics_with(
    client: aiohttp.ClientSession, admin: str, name: str, sample: tuple[dict[str, str], float]
) -> list[tuple[dict[str, str], float]]:
    """`name`'s samples once `sample` is among them, polled (bounded): with --workers the
    master reads the workers' files.  The last samples read otherwise, for the assert."""
    deadline = time.monotonic() + 10.0
    while True:
        status, _, body = await _get(client, f"{admin}/metrics")
        assert status == 200
        samples = _samples(body.decode(), name)
        if sample in samples or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(POLL)


def _ended(records: list[dict[str, Any]]) -> bool:
    """The process's last line is in the log: its shutdown (a --workers master's, which
    counts restarts, comes after its workers')."""
    return bool(records) and records[-1].get("event") == "shutdown"


def test_hadolint_passes_without_warnings() -> None:
    done = containerstack.run([containerstack.hadolint(), str(containerstack.DOCKERFILE)])
    assert done.stdout == ""


def test_image_metadata(image: containerstack.Image) -> None:
    info = containerstack.image_config(image)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    assert config["StopSignal"] in ("SIGTERM", "15")
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "/usr/local/bin/docker-entrypoint"]
    assert config["Cmd"] == ["run"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TUNNELGUARD_LISTEN"] == "0.0.0.0:8080"
    assert env["TUNNELGUARD_ADMIN_LISTEN"] == "0.0.0.0:9090"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert info["Healthcheck"]["Test"][0] == "CMD"  # exec form: no shell in the health check
    labels = info["Labels"]
    assert labels["org.opencontainers.image.title"] == "tunnelguard"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == containerstack.base_image_name()

    # Arguments go to tunnelguard; the runtime stage has no installer, compiler or cache and
    # the application is not writable by its user.
    assert containerstack.run_once(image, "--version").strip() == f"tunnelguard {__version__}"
    probe = (
        "import importlib.util, json, os, shutil; print(json.dumps({"
        "'uid': os.getuid(), 'gid': os.getgid(),"
        "'pip': importlib.util.find_spec('pip') is not None,"
        "'tools': [t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)],"
        "'caches': [p for p in ('/root/.cache', '/tmp/.cache', '/src', '/dist')"
        " if os.path.exists(p)],"
        "'writable': [p for p in ('/', '/opt/venv', '/opt/venv/lib', '/etc/tunnelguard', '/tmp')"
        " if os.access(p, os.W_OK)]}))"
    )
    facts = json.loads(
        containerstack.run_once(image, "-c", probe, entrypoint="/opt/venv/bin/python")
    )
    assert facts["uid"] == 10001 and facts["gid"] == 10001
    assert facts["pip"] is False and facts["caches"] == [] and facts["writable"] == []
    # the official slim image ships pip in its system Python, which the venv does not use
    assert set(facts["tools"]) <= {"pip", "pip3"}
    assert "gcc" not in facts["tools"] and "make" not in facts["tools"]


async def test_default_config_serves_drains_and_exits_0(
    image: containerstack.Image,
    start_upstream: UpstreamFactory,
    client: aiohttp.ClientSession,
    ports: tuple[int, int],
) -> None:
    upstream = await start_upstream(_upstream_app())
    port, admin_port = ports
    proxy, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    env = {
        "TUNNELGUARD_UPSTREAM": upstream.url,
        "TUNNELGUARD_LISTEN": f"127.0.0.1:{port}",
        "TUNNELGUARD_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
    }
    started = time.monotonic()
    # no tmpfs at all: single-process mode writes nothing
    with containerstack.start_container(image, env) as container:
        await _wait_ready(client, container, admin)
        image.timings["start to ready (default config)"] = time.monotonic() - started

        status, headers, body = await _get(client, f"{proxy}/api/auth.test")
        assert status == 401
        assert headers["Tunnelguard-Rule"] == "slack"
        assert json.loads(body) == TUNNELLED

        status, _, body = await _get(client, f"{admin}/config")
        assert status == 200
        assert [r["name"] for r in json.loads(body)["routes"]] == ["default"]

        rewritten = {
            "route": "default",
            "method": "GET",
            "code": "401",
            "class": "4xx",
            "source": "rewritten",
        }
        found = await _metrics_with(client, admin, "tunnelguard_requests_total", (rewritten, 1.0))
        assert (rewritten, 1.0) in found

        uid = await asyncio.to_thread(container.exec, "id", "-u")
        assert (uid.returncode, uid.stdout.strip()) == (0, "10001")
        health = await asyncio.to_thread(container.healthcheck)
        assert health.returncode == 0, health.stdout + health.stderr
        records = await asyncio.to_thread(
            container.log_records_when, lambda rs: any("pid" in r for r in rs)
        )  # an access line is written within 100 ms
        requests = [r for r in records if "pid" in r]
        assert requests and {r["pid"] for r in requests} == {1}  # tunnelguard itself is PID 1

        # SIGTERM with a request in flight: /readyz turns 503, the request completes, exit 0.
        in_flight = asyncio.create_task(_get(client, f"{proxy}/slow"))

        async def slow_arrived() -> bool:
            return any(seen["path_qs"] == "/slow" for seen in upstream.seen)

        await _until("/slow reaching the upstream", slow_arrived, 10.0)
        await asyncio.to_thread(container.kill, "TERM")

        async def not_ready() -> bool:
            return await _status(client, f"{admin}/readyz") == 503

        await _until("/readyz turning 503 on SIGTERM", not_ready, SLOW - 1.0)
        assert not in_flight.done()
        status, headers, body = await in_flight
        assert status == 200 and json.loads(body) == {"ok": True}
        assert headers.get("Connection", "").lower() == "close"

        stopping = time.monotonic()
        assert await asyncio.to_thread(container.wait, STOP_TIMEOUT) == 0
        image.timings["drain to exit"] = time.monotonic() - stopping
        records = await asyncio.to_thread(container.log_records_when, _ended)
        events = [r.get("event") for r in records]
        assert events[0] == "startup" and events[-1] == "shutdown"
        assert "draining" in events
        assert "Traceback" not in await asyncio.to_thread(container.stderr)


FLAG_CONFIG = """\
version: 1
upstreams:
  app: {{url: {url}}}
routes:
  - name: mounted
    upstream: app
    rules: [slack]
    action: flag
tests:
  - name: invalid_auth is flagged with its true status, not rewritten
    route: mounted
    response: {{body: {{ok: false, error: invalid_auth}}}}
    expect: {{status: 200, rule: slack, action: flag, headers: {{tunnelguard-status: "401"}}}}
"""


async def test_mounted_config_is_used_with_workers_on_a_read_only_root(
    image: containerstack.Image,
    start_upstream: UpstreamFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    ports: tuple[int, int],
) -> None:
    upstream = await start_upstream(_upstream_app())
    config = tmp_path / "config.yaml"
    config.write_text(FLAG_CONFIG.format(url=upstream.url))
    config.chmod(0o644)  # read by uid 10001
    port, admin_port = ports
    proxy, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    env = {
        "TUNNELGUARD_LISTEN": f"127.0.0.1:{port}",
        "TUNNELGUARD_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
    }
    started = time.monotonic()
    # --workers needs a writable temp dir (prometheus-client's multiprocess files): a tmpfs
    with containerstack.start_container(
        image,
        env,
        args=["run", "--workers", "2"],
        volumes=[f"{config}:/etc/tunnelguard/config.yaml:ro"],
        tmpfs=["/tmp"],
    ) as container:
        await _wait_ready(client, container, admin)
        image.timings["start to ready (mounted config, 2 workers)"] = time.monotonic() - started

        status, headers, body = await _get(client, f"{proxy}/api/auth.test")
        assert status == 200  # flagged, not rewritten: the mounted file is in force
        assert headers["Tunnelguard-Rule"] == "slack"
        assert headers["Tunnelguard-Status"] == "401"
        assert json.loads(body) == TUNNELLED

        status, _, body = await _get(client, f"{admin}/config")
        assert [r["name"] for r in json.loads(body)["routes"]] == ["mounted"]
        flagged = {
            "route": "mounted",
            "method": "GET",
            "code": "200",
            "class": "4xx",
            "source": "flagged",
        }
        found = await _metrics_with(client, admin, "tunnelguard_requests_total", (flagged, 1.0))
        assert (flagged, 1.0) in found

        def both_workers_up(records: list[dict[str, Any]]) -> bool:
            return [r.get("event") for r in records].count("worker_startup") == 2

        # /readyz answers for the master: the workers may still be starting
        records = await asyncio.to_thread(container.log_records_when, both_workers_up)
        assert both_workers_up(records), records
        startup = next(r for r in records if r.get("workers"))
        assert startup["config"] == "/etc/tunnelguard/config.yaml"
        assert len(startup["workers"]) == 2

        # `podman stop` sends the image's STOPSIGNAL and waits.
        stopping = time.monotonic()
        assert await asyncio.to_thread(container.stop, int(STOP_TIMEOUT)) == 0
        image.timings["stop (2 workers)"] = time.monotonic() - stopping

        def master_ended(records: list[dict[str, Any]]) -> bool:
            return _ended(records) and "restarts" in records[-1]

        records = await asyncio.to_thread(container.log_records_when, master_ended)
        assert records[-1] == {**records[-1], "event": "shutdown", "restarts": 0}
        events = [r.get("event") for r in records]
        assert events.count("shutdown") == 3, records  # both workers' first


def test_dockerfile_names_the_base_the_stand_in_replaces() -> None:
    """The Dockerfile builds on a fully qualified base, the same in both stages."""
    text = (ROOT / "Dockerfile").read_text()
    assert containerstack.base_image_name() == "docker.io/library/python:3.11-slim"
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
