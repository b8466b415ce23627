"""`tools.suggest_rules`: the rules made from a catalogue of suspect shapes (SPEC 10) flag
what the detector calls suspect and nothing else, pass `tunnelguard check`, and merge into a
config without losing its comments.  Pure tables; the command is in test_suggest.py.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from proxy.config.load import default_text, parse_text
from proxy.config.model import TestResponse as Response
from proxy.rules.ruletests import simulate
from proxy.rules.snapshot import build
from proxy.tools import suggest as sg
from proxy.tools import suggest_rules as sr

# SPEC 10's example catalogue, and shapes like the ones the detector finds in the wild
SNAPSHOT: dict[str, Any] = {
    "routes": {
        "default": [
            {
                "id": "s-3f9a1c2e", "count": 41, "keys": ["errcode", "errmsg"],
                "markers": [{"pointer": "/errcode", "type": "number", "values": {
                    "40001": {"count": 40, "status": 400}, "45009": {"count": 1, "status": 429},
                }}],
                "status": 400,
            },
            {  # the same markers with one more key: the same rule
                "id": "s-0badcafe", "count": 2, "keys": ["errcode", "errmsg", "hint"],
                "markers": [{"pointer": "/errcode", "type": "number", "values": {
                    "40001": {"count": 1, "status": 400}, "40013": {"count": 1, "status": 400},
                }}],
                "status": 400,
            },
            {
                "id": "s-11aa22bb", "count": 7, "keys": ["errors", "items", "took"],
                "markers": [{"pointer": "/errors", "type": "boolean", "values": {}}],
                "status": 502,
            },
            {
                "id": "s-5e5e5e5e", "count": 3, "keys": ["meta"],
                "markers": [{"pointer": "/meta/code", "type": "number",
                             "values": {"401": {"count": 3, "status": 401}}}],
                "status": 401,
            },
            {
                "id": "s-77777777", "count": 2, "keys": ["code", "message", "stat"],
                "markers": [{"pointer": "/stat", "type": "string",
                             "values": {"fail": {"count": 2, "status": 502}}}],
                "status": 502,
            },
            {  # a lone message: a marker only with no zero code beside it
                "id": "s-44444444", "count": 1, "keys": ["data"],
                "markers": [{"pointer": "/data/errmsg", "type": "string", "values": {}}],
                "status": 502,
            },
            {
                "id": "s-66666666", "count": 1, "keys": ["result"],
                "markers": [{"pointer": "/result/success", "type": "boolean", "values": {}}],
                "status": 502,
            },
        ],
        "gone": [  # a route the config does not have
            {"id": "s-deadbeef", "count": 1, "keys": ["err"],
             "markers": [{"pointer": "/err", "type": "string", "values": {}}], "status": 502},
        ],
    }
}  # fmt: skip


def judge(text: str, body: object, route: str = "default") -> tuple[str | None, str | None]:
    """(rule, Tunnelguard-Status) for a 200 JSON `body` on `route` of the config `text`."""
    runtime = build(parse_text(text, "suggested.yaml"))
    (compiled,) = [r for r in runtime.routes if r.name == route]
    response = Response(200, (("content-type", "application/json"),), json.dumps(body).encode())
    sim = simulate(compiled.rules, runtime, response)
    headers = {k.lower(): v for k, v in sim.headers}
    return sim.rule, headers.get("tunnelguard-status")


@pytest.fixture(scope="module")
def suggested() -> str:
    found = sr.suggestions(SNAPSHOT, ["default"])
    return sr.merged(default_text(), found, "a test")


def test_one_rule_per_set_of_markers_most_seen_first() -> None:
    found = sr.suggestions(SNAPSHOT, ["default"])
    assert [s.name for s in found] == [
        "shape-3f9a1c2e", "shape-11aa22bb", "shape-5e5e5e5e", "shape-77777777",
        "shape-44444444", "shape-66666666",
    ]  # fmt: skip
    first = found[0]
    assert first.shapes == ("s-3f9a1c2e", "s-0badcafe") and first.responses == 43
    assert first.rule["action"] == "flag"
    assert first.rule["status"] == {
        "from": "/errcode",
        "map": {"40001": 400, "40013": 400, "45009": 429},
        "default": 400,
    }
    assert found[1].rule["status"] == 502  # no code values seen: the shape's status


def test_names_in_use_and_unknown_routes_are_left_out() -> None:
    found = sr.suggestions(SNAPSHOT, ["default"], taken=["shape-3f9a1c2e"])
    assert "shape-3f9a1c2e" not in [s.name for s in found]
    assert all(s.route == "default" for s in sr.suggestions(SNAPSHOT, ["default"]))
    assert sr.suggestions(SNAPSHOT, ["elsewhere"]) == []


def test_the_output_passes_check_and_keeps_the_default(suggested: str) -> None:
    assert sr.verify(suggested, "suggested.yaml") == []
    config = parse_text(suggested, "suggested.yaml")
    (route,) = config.routes
    assert route.rules[:4] == ("graphql", "jsonrpc", "slack", "error-envelope")
    assert route.rules[4:6] == ("shape-3f9a1c2e", "shape-11aa22bb")
    # the default's own comments and tests are still there, the new tests after them
    assert "# tunnelguard's embedded default (SPEC section 3)" in suggested
    assert "shape s-3f9a1c2e, s-0badcafe on route default, 43 responses" in suggested
    names = [t.name for t in config.tests]
    assert names[0] == "generic error envelope with a timeout becomes 504"
    assert "shape-3f9a1c2e: /errcode 40001 is flagged 400" in names
    assert "shape-3f9a1c2e: /errcode 45009 is flagged 429" in names
    assert sum(n.startswith("shape-3f9a1c2e:") for n in names) == 4  # 3 values + clean


@pytest.mark.parametrize(
    ("body", "rule", "status"),
    [
        ({"errcode": 40001, "errmsg": "invalid credential"}, "shape-3f9a1c2e", "400"),
        ({"errcode": 45009, "errmsg": "reach max api daily quota limit"}, "shape-3f9a1c2e", "429"),
        ({"errcode": 99999}, "shape-3f9a1c2e", "400"),  # an unseen code: the default
        ({"errcode": "40001"}, None, None),  # a string there is another shape (its own rule)
        ({"errcode": [1]}, None, None),
        ({"took": 3, "errors": True, "items": []}, "shape-11aa22bb", "502"),
        ({"meta": {"code": 401, "error_type": "OAuthException"}}, "shape-5e5e5e5e", "401"),
        ({"meta": {"code": 503}}, "shape-5e5e5e5e", "401"),
        ({"stat": "FAIL", "code": 1}, "shape-77777777", "502"),
        ({"result": {"success": False, "data": None}}, "shape-66666666", "502"),
        ({"data": {"errmsg": "session expired"}}, "shape-44444444", "502"),
        ({"data": {"errmsg": "ok", "errcode": 0}}, None, None),
        ({"data": {"errmsg": "session expired", "errcode": 0}}, None, None),
        ({"data": {"errmsg": "session expired", "ret": "0"}}, None, None),
        ({"data": {"errmsg": "Success"}}, None, None),  # a success word is no error
        ({"data": {"errmsg": "0"}}, None, None),
        # what is not a marker is never flagged
        ({"errcode": 0, "errmsg": "ok"}, None, None),
        ({"took": 3, "errors": False, "items": []}, None, None),
        ({"meta": {"code": 200}}, None, None),
        ({"stat": "ok"}, None, None),
        ({"result": {"success": True}}, None, None),
        # a resource that describes a failure is not a tunnelled error (SPEC 3, 4.4)
        ({"id": "job-1", "errcode": 40001}, None, None),
        ({"done": True, "meta": {"code": 500}}, None, None),
        ({"createTime": "2026-12-06T10:01:02Z", "errcode": 40001}, None, None),  # lifecycle
        # the presets still come after: a Slack error is theirs
        ({"ok": False, "error": "invalid_auth"}, "slack", None),
    ],
)
def test_the_rules_flag_the_markers_and_nothing_else(
    suggested: str, body: object, rule: str | None, status: str | None
) -> None:
    assert judge(suggested, body) == (rule, status)


def test_merged_into_a_config_keeps_its_comments_and_goes_after_its_routes_rules() -> None:
    text = (
        "# my proxy\nversion: 1\nupstreams:\n  u: {url: 'http://127.0.0.1:1'}  # the app\n"
        "routes:\n  - name: api\n    match: {path_prefix: /api/}\n    upstream: u\n"
        "    rules: [mine, slack]\n  - name: rest\n    upstream: u\n"
        "rules:\n  - name: mine\n    when: {path: /state, equals: broken}\n    status: 503\n"
    )
    snapshot = {"routes": {"api": SNAPSHOT["routes"]["default"][:1]}}
    found = sr.suggestions(snapshot, ["api", "rest"], taken=["mine"])
    out = sr.merged(text, found, "http://127.0.0.1:9090")
    assert out.startswith("# my proxy\n") and "# the app" in out
    config = parse_text(out, "merged.yaml")
    assert config.routes[0].rules == ("mine", "slack", "shape-3f9a1c2e")
    assert config.routes[1].rules == ()
    assert [r.name for r in config.rules] == ["mine", "shape-3f9a1c2e"]
    assert sr.verify(out, "merged.yaml") == []
    assert all(t.route == "api" for t in config.tests)


def test_the_discovery_corpora_through_suggested_rules() -> None:
    """Issue 20's corpora: a catalogue built from the tunnelled bodies becomes rules that
    `check` passes, that flag every tunnelled body with the status its code implied (the
    detector's own reading), and that leave every clean body (and issue 17's resources that
    describe a failure, and its bodies the presets match) as the embedded default judges
    them."""
    from proxy.config.load import load_default
    from proxy.rules.suspect import detect
    from tests.rules import corpus
    from tests.rules.corpus import discovery

    config = load_default("http://127.0.0.1:1")
    samples = [
        (None, sg.Sample("", "/", 200, entry.content_type, entry.raw))
        for entry in discovery.tunnelled()
    ]
    snapshot = sg.catalogue_of(config, samples)
    found = sr.suggestions(snapshot, ["default"])
    covered = {shape for s in found for shape in s.shapes}
    assert covered == {shape["id"] for shape in snapshot["routes"]["default"]}
    text = sr.merged(default_text(), found, "corpus")
    assert sr.verify(text, "corpus.yaml") == []
    for entry in discovery.tunnelled():
        suspect = detect(entry.body)
        assert suspect is not None
        rule, status = judge(text, entry.body)
        assert rule is not None and rule.startswith(sr.RULE_PREFIX), entry.api
        assert status is not None and int(status) // 100 == suspect.status // 100, entry.api
    default = default_text()
    others = [e.body for e in discovery.clean()]
    for entry in corpus.entries():  # issue 17's, errors included (not its invalid JSON)
        with contextlib.suppress(ValueError):
            others.append(json.loads(entry.body))
    for body in others:
        if detect(body) is None:  # what the detector calls suspect is the rules' to flag
            assert judge(text, body) == judge(default, body), body
