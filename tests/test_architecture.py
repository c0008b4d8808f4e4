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
    "itertools",
    "jiter",
    "json",
    "math",
    "msgspec",
    "orjson",
    "re",
    "regex",
    "typing",
    "unicodedata",
    "wsgate",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports are resolved against the package, so they cannot dodge the rule.
            if node.level:
                base = module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
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
    "module", ["wsgate.client", "wsgate.config", "wsgate.log", "wsgate.testing"]
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


def wsgate_imports(module: str) -> set[str]:
    """The wsgate modules `module` imports: `from a.b import c` counts `a.b.c` if a module.

    Every import counts, `TYPE_CHECKING` blocks and function-local ones included: two
    modules that import each other are one object split in two files.
    """
    path = next(p for p in PACKAGE.rglob("*.py") if module_name(p) == module)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (path.name == "__init__.py")]
                base = ".".join([*parts, node.module] if node.module else parts)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path (a -> b -> a), or None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_module_of_wsgate_takes_part_in_an_import_cycle():
    graph = {module: wsgate_imports(module) for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_resolves_submodules_imported_from_their_package():
    assert "wsgate.core.events" in wsgate_imports(
        "wsgate.core.stream"
    )  # from wsgate.core import events


def test_the_rule_is_checked_against_a_real_tree():
    assert "wsgate.core.session" in MODULES
    assert "wsgate.gateway.connection" in MODULES
    assert "aiohttp" in MODULES["wsgate.upstream.client"]
