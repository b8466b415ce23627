"""`tunnelguard suggest`'s inputs (SPEC 1 and 10): a catalogue of suspect shapes in
`/shapes`'s JSON form, from a running proxy (`fetch_shapes`), or built here from captured
responses (`read_har`, `read_bodies`) by the proxy's own pipeline (`catalogue_of`): the
route's rules judge each 2xx JSON body (`decide`), and only a body no rule matched goes
through the detector into a catalogue, exactly as when serving.  `tools.suggest_rules` turns
the catalogue into rules.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.config.model import Config
from proxy.rules import inspection as ins
from proxy.rules.catalogue import ShapeCatalogue
from proxy.rules.decide import decide
from proxy.rules.snapshot import Route, build
from proxy.rules.suspect import Suspect
from proxy.wire import headers as h

FETCH_TIMEOUT = 10.0  # seconds to wait for a proxy's /shapes


class SuggestError(Exception):
    """Input that cannot be read or used: the CLI's exit 2."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One captured upstream response: where it went, its status, type and body."""

    host: str
    path: str
    status: int
    content_type: str
    body: bytes


# -- reading the catalogue -----------------------------------------------------------------


def fetch_shapes(admin: str) -> dict[str, Any]:
    """GET a running proxy's `/shapes` (`admin` is its admin listener's URL, with or
    without the path)."""
    url = admin.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    if not url.endswith("/shapes"):
        url += "/shapes"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SuggestError(f"cannot read {url}: {reason}") from None
    try:
        snapshot = json.loads(data)
    except ValueError:
        raise SuggestError(f"{url} did not answer JSON") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("routes"), dict):
        raise SuggestError(f"{url} did not answer a shape catalogue ({{'routes': ...}})")
    return snapshot


def read_har(path: str) -> list[Sample]:
    """The 2xx JSON responses of a HAR 1.2 file (browsers' and mitmproxy's export), with
    the host and path of the request each answered."""
    try:
        har = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise SuggestError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SuggestError(f"{path}: not JSON ({exc})") from None
    entries = har.get("log", {}).get("entries") if isinstance(har, dict) else None
    if not isinstance(entries, list):
        raise SuggestError(f"{path}: not a HAR file (no log.entries)")
    samples = []
    for entry in entries:
        sample = _har_sample(entry)
        if sample is not None:
            samples.append(sample)
    return samples


def _har_sample(entry: Any) -> Sample | None:
    try:
        request, response = entry["request"], entry["response"]
        status = int(response["status"])
        content = response.get("content") or {}
        text = content.get("text")
        url = urlsplit(request["url"])
    except (KeyError, TypeError, ValueError):
        return None  # an entry a tool wrote without what we read: not a response to judge
    if not 200 <= status <= 299 or not isinstance(text, str):
        return None
    if content.get("encoding") == "base64":
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        body = text.encode("utf-8", "surrogatepass")
    mime = content.get("mimeType") or _har_header(response, "content-type") or ""
    return Sample(url.netloc, url.path or "/", status, str(mime), body)


def _har_header(response: Mapping[str, Any], name: str) -> str | None:
    for header in response.get("headers") or ():
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name:
            return str(header.get("value", ""))
    return None


def catalogue_of(config: Config, samples: Iterable[tuple[str | None, Sample]]) -> dict[str, Any]:
    """The catalogue the proxy would have built from these responses (`/shapes` form).
    Each sample names its route, or None to route it by host and path."""
    runtime = build(config)
    routes = {route.name: route for route in runtime.routes}
    catalogue = ShapeCatalogue()
    policy = runtime.inspect
    now = time.time()
    for name, sample in samples:
        route = runtime.route_for(sample.host, sample.path) if name is None else routes.get(name)
        if route is None or not route.rules or not policy.wants_status("GET", sample.status):
            continue
        mtype = ins.media_type(sample.content_type)
        if policy.skip_reason(mtype, (), len(sample.body)) is not None:
            continue
        suspect = _suspect(route, policy, sample, mtype)
        if suspect is not None:
            catalogue.record(route.name, suspect, now, route.discover.max_shapes)
    return catalogue.snapshot()


def _suspect(route: Route, policy: ins.InspectPolicy, sample: Sample, mtype: str) -> Suspect | None:
    """The body's suspect shape when no rule of its route matched it (as when serving;
    detection runs here even where a route turned discovery off: it was asked for)."""
    headers: h.Headers = [("Content-Type", sample.content_type)]
    decision = decide(
        route.rules, policy, sample.status, headers, sample.body, mtype, (),
        fallback_retry_after=route.fallback_retry_after, trace_id="0" * 32, discover=True,
    )  # fmt: skip
    return decision.suspect


def read_bodies(paths: Sequence[str]) -> Iterator[Sample]:
    for path in paths:
        try:
            data = Path(path).read_bytes() if path != "-" else _stdin()
        except OSError as exc:
            raise SuggestError(f"cannot read {path}: {exc.strerror or exc}") from None
        yield Sample("", "/", 200, "application/json", data)


def _stdin() -> bytes:
    import sys

    return sys.stdin.buffer.read()
