"""The import rule of DESIGN.md §3, checked on the source: core imports no shell and no I/O;
shells do not import each other; only the composition root (app, cli) wires them; and no
import cycle anywhere in wsgate/, `TYPE_CHECKING` and function-local imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "wsgate"

SHELLS = {"gateway", "upstream", "mock", "store"}
IO_MODULES = {
    "asyncio",
    "time",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "logging",
    "aiohttp",
    "websockets",
    "redis",
    "uvloop",
    "structlog",
    "subprocess",
    "os",
}
ROOTS = {"wsgate.app", "wsgate.cli", "wsgate.__main__"}
# What the core may import: pure standard-library modules and the two JSON libraries.
# An allowlist, so a new I/O dependency cannot slip in under a name we did not think of.
CORE_ALLOWED = {
    "__future__",
    "abc",
    "codecs",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "jiter",
    "json",
    "jwt",  # PyJWT, for core/auth.py: signature checks are pure computation
    "math",
    "msgspec",
    "orjson",
    "re",
    "regex",
    "typing",
    "unicodedata",
    "wsgate",
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_from(node: ast.ImportFrom, path: Path, package: Path = PACKAGE) -> str:
    """The absolute module `from X import ...` names: relative ones resolved against `path`,
    so they cannot dodge a rule."""
    if not node.level:
        return node.module or ""
    base = module_name(path, package).split(".")
    base = base[: len(base) - node.level + (path.name == "__init__.py")]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (name := imported_from(node, path)):
            found.add(name)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def shell_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SHELLS else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("wsgate.core")))
def test_core_modules_import_no_io_and_nothing_outside_the_core(module):
    for name in MODULES[module]:
        top = name.split(".")[0]
        assert top not in IO_MODULES, f"{module} imports {name}"
        assert top in CORE_ALLOWED, f"{module} imports {name}, not on the core's allowlist"
        if top == "wsgate":
            assert name.startswith("wsgate.core"), f"{module} imports {name}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if shell_of(m)))
def test_shells_do_not_import_each_other_or_the_composition_root(module):
    own = shell_of(module)
    for name in MODULES[module]:
        other = shell_of(name)
        assert other in (None, own), f"{module} imports {name}"
        assert name not in ROOTS, f"{module} imports {name}"
        assert name != "wsgate.client", f"{module} imports {name}"


@pytest.mark.parametrize(
    "module",
    ["wsgate.client", "wsgate.config", "wsgate.log", "wsgate.testing", "wsgate.testing_redis"],
)
def test_leaf_modules_import_no_shell_and_no_root(module):
    for name in MODULES[module]:
        assert shell_of(name) is None, f"{module} imports {name}"
        assert name not in ROOTS, f"{module} imports {name}"


# The load generator (wsgate/loadgen/, behind `wsgate loadtest`) is a client-side tool like
# wsgate.client: it measures a gateway from outside, so it imports no shell and no root. One
# exception: the mock's script module, whose text generator and chunker give the exact answer a
# script makes the mock send, so every stream can be checked byte for byte without a second
# copy of them. wsgate.mock.script itself imports only the standard library, msgspec and orjson.
LOADGEN_MAY_IMPORT = {"wsgate.mock.script"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("wsgate.loadgen")))
def test_the_load_generator_imports_no_shell_but_the_mock_script_and_no_root(module):
    for name in MODULES[module]:
        assert shell_of(name) is None or name in LOADGEN_MAY_IMPORT, f"{module} imports {name}"
        assert name not in ROOTS, f"{module} imports {name}"


def test_only_the_command_line_imports_the_load_generator():
    importers = {
        module
        for module, names in MODULES.items()
        if not module.startswith("wsgate.loadgen")
        and any(name.startswith("wsgate.loadgen") for name in names)
    }
    assert importers == {"wsgate.cli"}


def test_every_module_has_a_docstring():
    missing = [
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which modules of `package` each of its modules imports.

    Every import counts, `TYPE_CHECKING` blocks and function-local ones included (`ast.walk`
    sees them all): two modules that import each other are one object split in two files.
    `from a.b import c` counts the module `a.b.c` if there is one, else `a.b`.
    """
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = imported_from(node, path, package)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    found.add(child if child in paths else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {name for name in found if name in paths and name != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import tangle of `graph`, each as one of its shortest cycles (a -> b -> a).

    A tangle is a strongly connected component (Tarjan's algorithm); its cycle starts and
    ends at its first module in sorted order. One path per tangle, so a second cycle is
    never hidden behind the first. `[]` for a graph without cycles.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    tangles: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            tangle = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                tangle.add(member)
                if member == node:
                    break
            tangles.append(tangle)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(
        shortest_cycle(graph, min(tangle), tangle)
        for tangle in tangles
        if len(tangle) > 1 or min(tangle) in graph.get(min(tangle), ())
    )


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest path from `start` back to itself through `within` (breadth first)."""
    came_from: dict[str, str] = {}
    queue = [start]
    for node in queue:  # the list grows as it is walked: a FIFO queue
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt in within and nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} within {sorted(within)}")


GRAPH = import_graph(PACKAGE)


def test_no_module_of_wsgate_takes_part_in_an_import_cycle():
    cycles = find_cycles(GRAPH)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle_with_its_path():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]


def test_the_cycle_finder_does_not_flag_a_dag():
    assert find_cycles({"a": {"b", "c"}, "b": {"c", "d"}, "c": {"d"}, "d": set()}) == []


def test_the_cycle_finder_reports_every_tangle_not_only_the_first():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "x": {"y"}, "y": {"z"}, "z": {"x"}}
    assert find_cycles(graph) == [["a", "b", "a"], ["x", "y", "z", "x"]]


def test_the_cycle_finder_reports_the_shortest_way_round_a_tangle():
    graph = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "d", "a"]]


# Each edge of the cycle is a different kind of import: drop any one and the cycle is gone.
SYNTHETIC = {
    "__init__.py": "",
    "core/__init__.py": "",
    "core/frames.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.shell import conn  # the submodule, not the package\n"
    ),
    "shell/__init__.py": "",
    "shell/conn.py": "from .streams import Streams  # relative\n",
    "shell/streams.py": "def f():\n    from ..core import frames  # function-local\n",
    "leaf.py": "import pkg.core.frames\nfrom pkg import core\nfrom pkg.core.frames import X\n",
}


def synthetic_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / name).write_text('"""Synthetic."""\n' + text)
    return root / "pkg"


def test_the_import_graph_counts_type_checking_local_relative_and_submodule_imports(tmp_path):
    graph = import_graph(synthetic_package(tmp_path, SYNTHETIC))
    assert graph["pkg.core.frames"] == {"pkg.shell.conn"}
    assert graph["pkg.shell.conn"] == {"pkg.shell.streams"}
    assert graph["pkg.shell.streams"] == {"pkg.core.frames"}
    assert graph["pkg.leaf"] == {"pkg.core.frames", "pkg.core"}
    assert find_cycles(graph) == [
        ["pkg.core.frames", "pkg.shell.conn", "pkg.shell.streams", "pkg.core.frames"]
    ]


def test_a_synthetic_package_without_cycles_is_not_flagged(tmp_path):
    graph = import_graph(synthetic_package(tmp_path, {**SYNTHETIC, "core/frames.py": ""}))
    assert graph["pkg.shell.streams"] == {"pkg.core.frames"}
    assert find_cycles(graph) == []


def test_the_cycle_check_sees_the_real_tree_s_submodule_type_checking_and_local_imports():
    assert "wsgate.core.events" in GRAPH["wsgate.core.stream"]  # from wsgate.core import events
    assert "wsgate.loadgen.stream" in GRAPH["wsgate.loadgen.direct"]  # under TYPE_CHECKING
    assert "wsgate.loadgen.runner" in GRAPH["wsgate.loadgen.command"]  # inside a function


def test_the_rule_is_checked_against_a_real_tree():
    assert "wsgate.core.session" in MODULES
    assert "wsgate.gateway.connection" in MODULES
    assert "aiohttp" in MODULES["wsgate.upstream.client"]
    assert GRAPH.keys() == MODULES.keys()
