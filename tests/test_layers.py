"""The layer rules over the import graph (../shared/design.md, docs/architecture.md), lazy imports included.

ground -> stores and clients -> the answer core -> fronts -> CLI: a module imports only from its own
layer or below, never up; rooms (top-level folders; service/ by layer) import each other without a
cycle; every import of ours counts, at the top of a module, inside a function or under
``TYPE_CHECKING``. So a room cannot drift back into two jobs, and a lazy import cannot hide an upward
dependency.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

from fixtures.core import REPO_ROOT

GROUND, STORES, CORE, FRONTS, TOP = 1, 2, 3, 4, 5

# Longest prefix wins. A room is one layer; service/ holds the API (a front) and, below it, its answer
# core and the LLM client, each a named module.
LAYERS = {
    "candor": GROUND,
    "candor.ingest": STORES,
    "candor.feedback": STORES,
    "candor.service.llm_client": STORES,
    "candor.service.chat_template": STORES,
    "candor.service.answering": CORE,
    "candor.service.refusal_policy": CORE,
    "candor.service.injection": CORE,
    "candor.service.protocols": CORE,
    "candor.service": FRONTS,
    "candor.model_server": FRONTS,
    "candor.finetune": FRONTS,
    "candor.retrain": FRONTS,
    "candor.cli": TOP,
}


def _modules() -> dict[str, Path]:
    """Every module of ours by its import name, from pyproject.toml's package-dir mapping."""
    mapping = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for name, folder in mapping.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "migrations" in rel.parts:  # Alembic's scripts: loaded by Alembic, never imported
                continue
            out[".".join([name, *parts])] = path
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in ROOMS else "candor"


ROOMS = {name.split(".")[1] for name in LAYERS if name.count(".") == 1}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours that ``module`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: a relative import (write candor.<room>.<module>)"
            base = node.module or ""
            # `from candor.service import answering` imports candor.service.answering
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}


def test_every_room_is_mapped_to_a_layer():
    assert {_room(m) for m in _modules()} <= set(LAYERS)


def test_no_import_points_up():
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in sorted(_graph().items())
        for b in sorted(deps)
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_ground_imports_only_ground():
    bad = [
        f"{a} imports {b}" for a, deps in _graph().items() if _layer(a) == GROUND for b in deps if _layer(b) != GROUND
    ]
    assert not bad, "\n".join(bad)


def _part(module: str) -> str:
    """A room's part at one layer (service/ has three: the API, the answer core, the clients)."""
    return f"{_room(module)}@{_layer(module)}"


def test_rooms_import_each_other_without_a_cycle():
    rooms: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for a, deps in _graph().items():
        for b in deps:
            ra, rb = _part(a), _part(b)
            if ra != rb:
                rooms[ra].add(rb)
                why.setdefault((ra, rb), f"{a} -> {b}")
    done: set[str] = set()

    def visit(room: str, path: list[str]) -> None:
        if room in path:
            cycle = path[path.index(room) :] + [room]
            steps = [why[(x, y)] for x, y in zip(cycle, cycle[1:], strict=False)]
            raise AssertionError("rooms import each other in a cycle: " + "; ".join(steps))
        if room in done:
            return
        for nxt in sorted(rooms[room]):
            visit(nxt, [*path, room])
        done.add(room)

    for room in sorted(rooms):
        visit(room, [])


def test_the_api_and_the_model_server_share_nothing():
    graph = _graph()
    crossing = [
        f"{a} imports {b}"
        for a, deps in graph.items()
        for b in deps
        if {_room(a), _room(b)} == {"candor.service", "candor.model_server"}
    ]
    assert not crossing, "\n".join(crossing)


# Libraries too slow to import at the top of a module that `candor --help`, the API or a loop stage loads.
HEAVY = {"torch", "transformers", "chromadb", "llama_index", "peft", "sentence_transformers", "numpy", "safetensors"}
KNOWN_LAZY: set[str] = set()  # modules allowed light imports inside functions: none


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements run at import: the module's own, and those under a module-level if/try (TYPE_CHECKING)."""
    out: list[ast.stmt] = []
    for node in tree.body:
        out.append(node)
        if isinstance(node, ast.If | ast.Try):
            out.extend(n for block in (node.body, node.orelse) for n in block)
    return out


def test_imports_inside_functions_are_for_heavy_libraries_only():
    """A light module of ours is imported at the top, where a reader sees what depends on what; only the
    CLI (which composes the fronts) and modules that pull in a heavy library are imported lazily."""
    modules = _modules()
    known = set(modules)
    top = {}
    for m, path in modules.items():
        ours, others = set(), set()
        for node in _module_level(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                if name.startswith("candor"):
                    while name and name not in known:
                        name = name.rpartition(".")[0]
                    if name and name != m:
                        ours.add(name)
                else:
                    others.add(name.split(".")[0])
        top[m] = (ours, others)

    heavy: dict[str, bool] = {}

    def is_heavy(m: str, seen: frozenset[str] = frozenset()) -> bool:
        if m not in heavy:
            ours, others = top[m]
            heavy[m] = bool(others & HEAVY) or any(is_heavy(d, seen | {m}) for d in ours if d not in seen)
        return heavy[m]

    light_lazy = []
    for m, deps in sorted(_graph().items()):
        if m.startswith("candor.cli") or m in KNOWN_LAZY:
            continue
        for d in sorted(deps - top[m][0]):
            if not is_heavy(d):
                light_lazy.append(f"{m} imports {d} inside a function")
    assert not light_lazy, "\n".join(light_lazy)


def test_the_api_never_imports_the_trainer_or_the_model_server():
    """The API process stays small: whatever it imports, lazily or not, reaches neither room."""
    graph = _graph()
    seen, todo = set(), ["candor.service.api"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not {m for m in seen if _room(m) in ("candor.finetune", "candor.model_server")}
