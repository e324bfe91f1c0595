"""The package's layer rules, kept by an ``ast`` walk of every import (module level and inside
functions, ``TYPE_CHECKING`` blocks included): no import cycle between modules, and no arrow
that runs up a layer (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lollms_server"

# (importer prefix, forbidden imported prefix): arrows that would run up a layer
FORBIDDEN = [
    ("lollms_server.core", "lollms_server.api"),
    ("lollms_server.core", "lollms_server.main"),
    ("lollms_server.core", "lollms_server.cli"),
    ("lollms_server.core.bindings", "lollms_server.core.pools"),
    ("lollms_server.core.bindings", "lollms_server.core.generation"),
    ("lollms_server.core.bindings", "lollms_server.core.resource_manager"),
    ("lollms_server.core.pools", "lollms_server.core.generation"),
    ("lollms_server.core.resource_manager", "lollms_server.core.bindings"),
    ("lollms_server.core.resource_manager", "lollms_server.core.pools"),
    ("lollms_server.core.resource_manager", "lollms_server.core.generation"),
    ("lollms_server.core.scheduler", "lollms_server.core.bindings"),
    ("lollms_server.core.scheduler", "lollms_server.core.pools"),
    ("lollms_server.core.scheduler", "lollms_server.core.generation"),
    ("lollms_server.core.scheduler", "lollms_server.core.resource_manager"),
    # devices (memory arbiters) sit below pools, bindings and residency: they know models only
    # through what the resource manager hands them
    ("lollms_server.core.devices", "lollms_server.core.bindings"),
    ("lollms_server.core.devices", "lollms_server.core.pools"),
    ("lollms_server.core.devices", "lollms_server.core.resource_manager"),
    ("lollms_server.core.devices", "lollms_server.core.generation"),
    ("lollms_server.core.devices", "lollms_server.core.jobs"),
    ("lollms_server.core.devices", "lollms_server.core.models"),
    ("lollms_server.core.device_share", "lollms_server.core.bindings"),
    ("lollms_server.core.device_share", "lollms_server.core.pools"),
    ("lollms_server.core.device_share", "lollms_server.core.resource_manager"),
    ("lollms_server.core.device_share", "lollms_server.core.devices"),
    # models on disk (pulls): above bindings and config, below generation and pools
    ("lollms_server.core.models", "lollms_server.core.generation"),
    ("lollms_server.core.models", "lollms_server.core.pools"),
    ("lollms_server.core.bindings", "lollms_server.core.models"),
    ("lollms_server.core.pools", "lollms_server.core.models"),
    # jobs sit on top of generation: nothing else in core knows them, and they reach pools only
    # through GenerationService
    ("lollms_server.core.generation", "lollms_server.core.jobs"),
    ("lollms_server.core.pools", "lollms_server.core.jobs"),
    ("lollms_server.core.bindings", "lollms_server.core.jobs"),
    ("lollms_server.core.resource_manager", "lollms_server.core.jobs"),
    ("lollms_server.core.scheduler", "lollms_server.core.jobs"),
    ("lollms_server.core.jobs", "lollms_server.core.pools"),
    ("lollms_server.core.jobs", "lollms_server.core.resource_manager"),
    ("lollms_server.core.jobs", "lollms_server.core.scheduler"),
    ("lollms_server.utils", "lollms_server.core"),
    ("lollms_server.utils", "lollms_server.api"),
    ("lollms_server.errors", "lollms_server."),
    # the Ollama API is a surface over GenerationService: no pools, residency or other routes
    ("lollms_server.api.ollama_compat", "lollms_server.main"),
    ("lollms_server.api.ollama_compat", "lollms_server.api.endpoints"),
    ("lollms_server.api.ollama_compat", "lollms_server.api.pool_rpc"),
    ("lollms_server.api.ollama_compat", "lollms_server.core.pools"),
    ("lollms_server.api.ollama_compat", "lollms_server.core.resource_manager"),
    ("lollms_server.api.openai_compat", "lollms_server.api.ollama_compat"),
    # API families share the kit, never each other; the kit knows no family (api/families.py)
    ("lollms_server.api.ollama_compat", "lollms_server.api.openai_compat"),
    ("lollms_server.api.anthropic", "lollms_server.api.openai_compat"),
    ("lollms_server.api.anthropic", "lollms_server.api.ollama_compat"),
    ("lollms_server.api.openai_compat", "lollms_server.api.anthropic"),
    ("lollms_server.api.ollama_compat", "lollms_server.api.anthropic"),
    ("lollms_server.api.kit", "lollms_server.api.openai_compat"),
    ("lollms_server.api.kit", "lollms_server.api.ollama_compat"),
    ("lollms_server.api.kit", "lollms_server.api.anthropic"),
    ("lollms_server.api.kit", "lollms_server.api.responses"),
    ("lollms_server.api.responses", "lollms_server.api.openai_compat"),
    ("lollms_server.api.responses", "lollms_server.api.ollama_compat"),
    ("lollms_server.api.responses", "lollms_server.api.anthropic"),
    ("lollms_server.api.openai_compat", "lollms_server.api.responses"),
    ("lollms_server.api.ollama_compat", "lollms_server.api.responses"),
    ("lollms_server.api.anthropic", "lollms_server.api.responses"),
    # the lollms_client adapter is created by the manager, never the other way round
    ("lollms_server.core.bindings.lollms_client_adapter", "lollms_server.core.bindings.manager"),
]
# re-exporting modules of public import paths: their import is the re-export itself
SHIMS = {"lollms_server.core.errors", "lollms_server.core.torch_models"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` imports the module (its package's __init__ is the
            # parent-package mechanism, not an arrow of the design); other names import ``base``
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        for target in targets:
            # the longest package module the target names (``from a.b import c`` may be a.b.c)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, name, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")

    wrong = []
    for importer, imported in sorted(graph.items()):
        if importer in SHIMS:
            continue
        for target in sorted(imported):
            for source_prefix, target_prefix in FORBIDDEN:
                if under(importer, source_prefix) and under(target, target_prefix):
                    wrong.append(f"{importer} -> {target}")
    return wrong


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_no_import_runs_up_a_layer() -> None:
    assert upward_arrows(import_graph(PACKAGE)) == []


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("core/resource_manager.py", "from lollms_server.core.bindings import Binding", "upward"),
        ("utils/paths.py", "from lollms_server.core.config import AppConfig", "upward"),
        ("core/bindings/manager.py", "    from lollms_server.core.pools import registry", "upward"),
        ("core/types.py", "from lollms_server.core.config import AppConfig", "cycle"),
        ("core/devices.py", "from lollms_server.core.resource_manager import LoadedModel", "upward"),
    ],
)
def test_the_checks_catch_an_added_upward_import_or_cycle(
    tmp_path: Path, module: str, line: str, expected: str
) -> None:
    import shutil

    copy = tmp_path / "lollms_server"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    source = target.read_text(encoding="utf-8")
    if line.startswith("    "):  # an import inside a function
        source += f"\n\ndef _added() -> None:\n{line}\n"
    else:
        source += f"\n{line}\n"
    target.write_text(source, encoding="utf-8")
    graph = import_graph(copy)
    if expected == "upward":
        assert upward_arrows(graph), "the upward import was not caught"
    else:
        assert cycles(graph), "the cycle was not caught"
