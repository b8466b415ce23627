"""The package's layers (docs/architecture.md): imports point down only, and never in a cycle.

Each subpackage's `__init__.py` docstring says which layers it may import ("May import:");
this test holds every import in `proxy/` (those inside functions too) against that line,
holds each line against the order of the layers, and looks for cycles between modules.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"

# bottom to top (compat and wire import nothing of ours); "request" is the request's story
# at the top of the package (handler.py, exchange.py, websocket.py); "cli" is __main__.py
ORDER = (
    "compat", "wire", "observe", "config", "rules", "upstream", "downstream", "request", "serve",
    "tools", "cli",
)  # fmt: skip
SUBPACKAGES = (
    "compat",
    "wire",
    "observe",
    "config",
    "rules",
    "upstream",
    "downstream",
    "serve",
    "tools",
)
REQUEST_MODULES = ("handler", "exchange", "websocket")
REQUEST_MAY_IMPORT = frozenset(ORDER[: ORDER.index("request")])


class Package:
    """The modules of a `proxy/` folder and the imports between them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules = {self._name(p): p for p in sorted(root.rglob("*.py"))}

    def _name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def imports_of(self, module: str) -> list[tuple[str, int]]:
        """Every proxy module `module` imports, anywhere in it, with the line."""
        path = self.modules[module]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: list[tuple[str, int]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from proxy.upstream import connection` imports proxy.upstream.connection
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in self.modules else base
                    for a in node.names
                ]
            else:
                continue
            found += [(t, node.lineno) for t in targets if t == "proxy" or t.startswith("proxy.")]
        return found

    def may_import(self, layer: str) -> frozenset[str]:
        if layer == "request":
            return REQUEST_MAY_IMPORT
        if layer == "cli":
            return frozenset(ORDER)
        doc = self.docstring(layer)
        line = re.search(r"^May import: (.*?)(?:\n\n|\Z)", doc, re.M | re.S)
        assert line is not None, f"proxy/{layer}/__init__.py does not say what it may import"
        text = line.group(1).replace("\n", " ")
        if text.startswith("nothing"):
            return frozenset()
        named = set(re.findall(r"\b(" + "|".join(ORDER) + r")\b", text))
        if "request layer" in text:
            named.add("request")
        return frozenset(named)

    def docstring(self, layer: str) -> str:
        init = self.root / layer / "__init__.py"
        return ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""

    def upward_imports(self) -> list[str]:
        upward = []
        for module in self.modules:
            layer = layer_of(module)
            if layer is None:
                continue
            allowed = self.may_import(layer) | {layer}
            for target, line in self.imports_of(module):
                target_layer = layer_of(target)
                if target_layer is not None and target_layer not in allowed:
                    upward.append(f"{self.modules[module]}:{line}: {layer} imports {target}")
        return upward

    def cycles(self) -> list[list[str]]:
        graph = {
            m: sorted({t for t, _ in self.imports_of(m) if t in self.modules and t != m})
            for m in self.modules
        }
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        found: list[list[str]] = []

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for nxt in graph[node]:
                if state.get(nxt) == 1:
                    found.append([*path[path.index(nxt) :], nxt])
                elif nxt not in state:
                    visit(nxt, [*path, nxt])
            state[node] = 2

        for module in graph:
            if module not in state:
                visit(module, [module])
        return found


def layer_of(module: str) -> str | None:
    """The layer a module belongs to; None for the package root (`proxy.__version__`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] == "__main__":
        return "cli"
    if parts[1] in REQUEST_MODULES:
        return "request"
    raise AssertionError(f"{module} belongs to no layer: add it to one (and to this test)")


@pytest.fixture(scope="module")
def package() -> Package:
    return Package(PACKAGE)


@pytest.mark.parametrize("layer", SUBPACKAGES)
def test_each_layer_says_its_job_and_may_import_only_layers_below_it(
    package: Package, layer: str
) -> None:
    doc = package.docstring(layer)
    assert doc.startswith(f"{layer}: "), f"proxy/{layer}/__init__.py: say the layer's job first"
    below = set(ORDER[: ORDER.index(layer)])
    extra = package.may_import(layer) - below
    assert not extra, f"{layer} may import {sorted(extra)}, which are not below it"


def test_every_module_belongs_to_a_layer(package: Package) -> None:
    for module in package.modules:
        layer_of(module)


def test_imports_point_down_only(package: Package) -> None:
    upward = package.upward_imports()
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles(package: Package) -> None:
    cycles = package.cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_an_upward_import_and_a_cycle_are_found(tmp_path: Path) -> None:
    """The checks can fail: a copy of the package with an upward import planted inside a
    function (rules -> upstream) and a cycle (wire.headers <-> wire.problem) fails both."""
    copy = tmp_path / "proxy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    ruleset = copy / "rules" / "ruleset.py"
    ruleset.write_text(
        ruleset.read_text() + "\n\ndef _late() -> None:\n    from proxy.upstream import pool\n"
    )
    headers = copy / "wire" / "headers.py"
    headers.write_text(headers.read_text() + "\nfrom proxy.wire import problem  # noqa\n")
    problem = copy / "wire" / "problem.py"
    problem.write_text(problem.read_text() + "\nfrom proxy.wire import headers  # noqa\n")
    planted = Package(copy)
    assert [u.split(": ", 1)[1] for u in planted.upward_imports()] == [
        "rules imports proxy.upstream.pool"
    ]
    assert any({"proxy.wire.headers", "proxy.wire.problem"} <= set(c) for c in planted.cycles())


# Public names defined in more than one module, each pair meaning the same thing.
SHARED_NAMES = {
    "checked_version": "the library version a compat shim was checked against",
    "endpoint": "pool.endpoint() builds a connection.Endpoint",
    "flush_delay": "how long batched output may wait (metrics, log)",
    "relay": "copy an upstream's answer to the client (a body; WebSocket messages)",
}


def test_no_two_public_names_mean_different_things(package: Package) -> None:
    """Issue 16: a name says one thing (three `classify`s and three `Attempt`s did not)."""
    where: dict[str, list[str]] = {}
    for module, path in package.modules.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            for name in names:
                if not name.startswith("_"):
                    where.setdefault(name.lower(), []).append(module)
    repeated = {n: ms for n, ms in where.items() if len(ms) > 1 and n not in SHARED_NAMES}
    assert not repeated, f"public names defined twice: {repeated}"


def test_no_module_shadows_the_standard_library(package: Package) -> None:
    shadowing = [m for m in package.modules if m.rpartition(".")[2] in sys.stdlib_module_names]
    assert not shadowing, shadowing


def test_every_module_has_its_mirror_or_says_where_it_is_covered(package: Package) -> None:
    """tests/<layer>/test_<module>.py, or the layer's tests/<layer>/__init__.py names the
    module (in backquotes) and the file that covers it."""
    tests = PACKAGE.parent / "tests"
    missing = []
    for module, path in package.modules.items():
        parts = module.split(".")
        if path.name == "__init__.py" or len(parts) == 1:
            continue
        folder = tests.joinpath(*parts[1:-1])
        name = "main" if parts[-1] == "__main__" else parts[-1]
        if (folder / f"test_{name}.py").exists():
            continue
        said = (folder / "__init__.py").read_text(encoding="utf-8")
        if f"`{name}`" not in said:
            missing.append(module)
    assert not missing, f"modules with no test file and no word on where they are tested: {missing}"
