"""Command line: `tunnelguard run | demo | check | explain` (SPEC section 1)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.config.errors import ConfigError
from proxy.config.load import default_text, load_default, load_file, parse_text
from proxy.config.model import Config, Listen
from proxy.observe.logs import Log

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _listen(text: str) -> Listen:
    listen = Listen.parse(text)
    if listen is None:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return listen


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelguard",
        description="A reverse proxy that turns 200-tunnelled errors into honest statuses.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve (the embedded default unless --config is given)")
    run.add_argument("--config", "-c", help="config file (env TUNNELGUARD_CONFIG)")
    run.add_argument("--upstream", help="upstream URL (env TUNNELGUARD_UPSTREAM)")
    run.add_argument("--listen", type=_listen, help="proxy HOST:PORT (env TUNNELGUARD_LISTEN)")
    run.add_argument(
        "--admin-listen", type=_listen, help="admin HOST:PORT (env TUNNELGUARD_ADMIN_LISTEN)"
    )
    run.add_argument("--log-format", choices=("json", "text"), default="json")
    run.add_argument("--watch", action="store_true", help="reload the config file when it changes")
    run.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    run.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # set by the master

    demo = sub.add_parser("demo", help="run a lying demo upstream behind the proxy")
    demo.add_argument("--listen", type=_listen, default=Listen("127.0.0.1", 8080))
    demo.add_argument("--admin-listen", type=_listen, default=Listen("127.0.0.1", 9090))
    demo.add_argument(
        "--once", action="store_true", help="show the tour and exit instead of serving"
    )

    check = sub.add_parser("check", help="validate config files and run their tests")
    check.add_argument("files", nargs="+", metavar="FILE")

    explain = sub.add_parser(
        "explain",
        help="dry-run one upstream response through a route's rules",
        description="Dry-run one upstream response through a route's rules and say why.",
    )
    explain.add_argument("--config", "-c", required=True, metavar="FILE", help="config file")
    explain.add_argument("--route", metavar="NAME", help="route to use (default: the first)")
    explain.add_argument(
        "--status", type=_status, default=200, help="the upstream's status (default 200)"
    )
    explain.add_argument(
        "--content-type",
        metavar="T",
        help="the upstream's Content-Type (default application/json; '' for none)",
    )
    explain.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="an upstream response header (repeatable)",
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.add_argument(
        "body", nargs="?", metavar="BODY_FILE|-", help="the body as sent (- = stdin; none = empty)"
    )

    suggest = sub.add_parser(
        "suggest",
        help="turn error shapes no rule matches into rules (action: flag) with tests",
        description=(
            "Turn the error shapes no rule matches (a running proxy's /shapes, a HAR "
            "capture, or JSON body files) into YAML rules with embedded tests, merged into "
            "--config or the embedded default. Exit 0: rules written; 1: nothing suspect "
            "found; 2: bad usage or unreadable input."
        ),
    )
    suggest.add_argument("--config", "-c", metavar="FILE", help="merge into this config")
    suggest.add_argument(
        "--route", metavar="NAME", help="only this route (body files: their route)"
    )
    source = suggest.add_mutually_exclusive_group()
    source.add_argument("--admin", metavar="URL", help="a running proxy's admin listener")
    source.add_argument("--har", metavar="FILE", help="a HAR capture (2xx JSON entries are read)")
    suggest.add_argument("bodies", nargs="*", metavar="BODY_FILE", help="JSON bodies (- = stdin)")
    suggest.add_argument("-o", "--output", metavar="OUT", help="write here (default: stdout)")
    return parser


def _status(text: str) -> int:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"expected an HTTP status 100-599, got {text!r}")
    return int(text)


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name or not set(name) <= _TOKEN:
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name, value.strip()


def _env_listen(name: str) -> Listen | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return _listen(value)
    except argparse.ArgumentTypeError as exc:
        print(f"tunnelguard: {name}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def load_run_config(args: argparse.Namespace) -> Config:
    """The config `run` serves: file or embedded default, then flags and env on top."""
    path = args.config or os.environ.get("TUNNELGUARD_CONFIG") or None
    upstream = args.upstream or os.environ.get("TUNNELGUARD_UPSTREAM") or None
    if path is None and upstream is None:
        raise ConfigError([])  # reported as a usage error by the caller
    config = load_file(path, upstream) if path else load_default(str(upstream))
    listen = args.listen or _env_listen("TUNNELGUARD_LISTEN")
    admin = args.admin_listen or _env_listen("TUNNELGUARD_ADMIN_LISTEN")
    if listen is not None:
        config = dataclasses.replace(config, listen=listen)
    if admin is not None:
        config = dataclasses.replace(config, admin_listen=admin)
    return config


def _report(errors: ConfigError) -> None:
    for problem in errors.problems:
        print(problem.render(), file=sys.stderr)


def _failing_tests(config: Config) -> list[str]:
    from proxy.rules.ruletests import failure_report

    return failure_report(config)


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        config = load_run_config(args)
    except ConfigError as errors:
        if not errors.problems:
            print(
                "tunnelguard run: give --config FILE or --upstream URL "
                "(or TUNNELGUARD_CONFIG / TUNNELGUARD_UPSTREAM)",
                file=sys.stderr,
            )
        _report(errors)
        return EXIT_USAGE
    failing = _failing_tests(config)
    if failing:
        print("\n".join(failing), file=sys.stderr)
        return EXIT_USAGE
    log = Log(args.log_format)

    def loader() -> Config:
        return load_run_config(args)

    path = args.config or os.environ.get("TUNNELGUARD_CONFIG") or None
    watch_path = path if args.watch else None
    if args.worker_fd is not None:  # a worker of a --workers N master: it watches nothing
        import socket

        from proxy.serve.lifecycle import serve

        sock = socket.socket(fileno=args.worker_fd)
        return _run_async(serve(config, log, sock, loader=loader))
    if args.workers > 1:
        from proxy.serve.workers import run_master

        worker_argv = [a for a in argv if a != "--watch"] + ["--workers", "1"]
        return run_master(config, log, worker_argv, args.workers, loader, watch_path)
    from proxy.serve.lifecycle import serve

    return _run_async(serve(config, log, loader=loader, watch_path=watch_path))


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            config = load_file(path)
        except ConfigError as errors:
            _report(errors)
            status = EXIT_FAILURE
            continue
        failing = _failing_tests(config)
        if failing:
            print("\n".join(failing), file=sys.stderr)
            status = EXIT_FAILURE
            continue
        print(f"{path}: ok ({len(config.tests)} tests passed)")
    return status


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 when explained (match or not); 2 for bad usage, config or body file."""
    from proxy.tools.explain import explain
    from proxy.tools.explain_render import render, to_json

    try:
        config = load_file(args.config)
    except ConfigError as errors:
        _report(errors)
        return EXIT_USAGE
    names = [r.name for r in config.routes]
    if args.route is not None and args.route not in names:
        print(
            f"tunnelguard explain: unknown route {args.route!r}; routes: {', '.join(names)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    given = [name.lower() for name, _ in args.header]
    if args.content_type is not None and "content-type" in given:
        print(
            "tunnelguard explain: give the content type once (--content-type or --header)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    headers = list(args.header)
    if "content-type" not in given:
        content_type = "application/json" if args.content_type is None else args.content_type
        if content_type:
            headers.insert(0, ("Content-Type", content_type))
    try:
        if args.body == "-":
            body = sys.stdin.buffer.read()
        elif args.body is not None:
            with open(args.body, "rb") as file:
                body = file.read()
        else:
            body = b""
    except OSError as exc:
        print(
            f"tunnelguard explain: cannot read body file {args.body}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = explain(config, args.route, args.status, headers, body)
    if args.json:
        import json

        print(json.dumps(to_json(result), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render(result))
    return EXIT_OK


def cmd_suggest(args: argparse.Namespace) -> int:
    """Exit 0 with rules written, 1 when nothing suspect was found, 2 on bad usage or
    unreadable input (SPEC 1)."""
    from proxy.tools import suggest as sg
    from proxy.tools import suggest_rules as rules

    def fail(message: str) -> int:
        print(f"tunnelguard suggest: {message}", file=sys.stderr)
        return EXIT_USAGE

    given = sum(bool(x) for x in (args.admin, args.har, args.bodies))
    if given != 1:
        return fail("give exactly one source: --admin URL, --har FILE or BODY_FILE...")
    try:  # read once: the same text is parsed here and edited by `merged`
        text = Path(args.config).read_text(encoding="utf-8") if args.config else default_text()
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"cannot read {args.config}: {getattr(exc, 'strerror', None) or exc}")
    try:
        config = parse_text(text, args.config or "default.yaml")
    except ConfigError as errors:
        _report(errors)
        return EXIT_USAGE
    names = [route.name for route in config.routes]
    if args.route is not None and args.route not in names:
        return fail(f"unknown route {args.route!r}; routes: {', '.join(names)}")
    try:
        if args.admin:
            snapshot, source = sg.fetch_shapes(args.admin), args.admin
        elif args.har:
            samples = [(args.route, s) for s in sg.read_har(args.har)]
            snapshot, source = sg.catalogue_of(config, samples), args.har
        else:
            route = args.route or names[0]
            samples = [(route, s) for s in sg.read_bodies(args.bodies)]
            snapshot, source = sg.catalogue_of(config, samples), "body files"
    except sg.SuggestError as exc:
        return fail(str(exc))
    routes = [args.route] if args.route else names
    for other in sorted(set(snapshot["routes"]) - set(names)):
        print(f"tunnelguard suggest: shapes of route {other!r} left out: no such route in "
              f"{args.config or 'the embedded default'}", file=sys.stderr)  # fmt: skip
    found = rules.suggestions(snapshot, routes, taken=[rule.name for rule in config.rules])
    if not found:
        print("tunnelguard suggest: nothing suspect found", file=sys.stderr)
        return EXIT_FAILURE
    for route in config.routes:  # an override beats a rule's own action (SPEC 4.3)
        override = route.action or config.action
        if override == "rewrite" and any(s.route == route.name for s in found):
            print(
                f"tunnelguard suggest: route {route.name!r} overrides every rule's action with "
                "rewrite: the suggested rules will rewrite there, not flag",
                file=sys.stderr,
            )
    out = rules.merged(text, found, source)
    problems = rules.verify(out, args.output or "<suggested>")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return fail("the merged config does not pass `tunnelguard check`; nothing written")
    if args.output:
        try:
            Path(args.output).write_text(out, encoding="utf-8")
        except OSError as exc:
            return fail(f"cannot write {args.output}: {exc.strerror or exc}")
    else:
        sys.stdout.write(out)
    shapes = len({shape for s in found for shape in s.shapes})  # keyword rules share theirs
    where = f" written to {args.output}" if args.output else ""
    print(
        f"tunnelguard suggest: {len(found)} rule(s) from {shapes} shape(s){where}; they "
        "flag (Tunnelguard-Status) until you set `action: rewrite`",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.tools.demo import run_demo

    return _run_async(run_demo(args.listen, args.admin_listen, once=args.once))


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    import uvloop

    try:
        return uvloop.run(coro)
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args, argv)
    commands = {
        "check": cmd_check,
        "demo": cmd_demo,
        "explain": cmd_explain,
        "suggest": cmd_suggest,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
