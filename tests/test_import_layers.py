"""The package's imports form layers, top to bottom, with no circle: a stage never reaches into a
sibling stage or into what drives it. Every import counts, lazy ones inside functions and those under
TYPE_CHECKING included: a lazy import that runs upward is still an arrow the wrong way."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "labalign"

# Top-level module or package of labalign -> its floor. An import may only go to a lower floor or stay
# within its own package; the ground floor's modules may import each other (without a circle).
FLOORS: dict[str, int] = {
    **dict.fromkeys(
        (
            "<root>",
            "errors",
            "redact",
            "jsonl",
            "yamlsafe",
            "paths",
            "fileio",
            "progress",
            "dirlock",
            "interrupts",
            "textmetrics",
            "settings",
            "config",
            "manifest",
        ),
        0,
    ),
    "documents": 1,
    "llm": 1,
    "taxonomy": 2,
    "modeling": 2,
    "sdg": 3,
    "train": 3,
    "evaluate": 3,
    "serve": 3,
    "export": 3,
    "report": 4,
    "run": 5,
    "cli": 6,
    "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every labalign module `path` imports (a `from X import name` counts as X.name when that is a
    module, else as X)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "labalign")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "labalign":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found


def _exists(module: str) -> bool:
    path = SRC.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] |= _imports(path, module) - {module}
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_every_module_has_a_floor() -> None:
    missing = sorted({_top(m) for m in _graph()} - FLOORS.keys())
    assert not missing, f"give these a floor in FLOORS: {missing}"


def test_no_import_runs_up_or_sideways() -> None:
    wrong = []
    for module, targets in _graph().items():
        here = _top(module)
        for target in targets:
            there = _top(target)
            if there == here:
                continue
            if FLOORS[there] > FLOORS[here] or (FLOORS[there] == FLOORS[here] and FLOORS[here] > 0):
                wrong.append(f"{module} (floor {FLOORS[here]}) -> {target} (floor {FLOORS[there]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph = _graph()
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_library_never_calls_its_own_cli() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in PACKAGE.rglob("*.py")
        if _top(_module_name(path)) not in ("cli", "__main__")
        and "labalign.cli" in path.read_text(encoding="utf-8")
    ]
    assert not offenders, f"modules outside the CLI that name labalign.cli: {offenders}"


def test_the_checker_sees_a_wrong_arrow(tmp_path: Path) -> None:
    # The walker itself: a relative import from a stage into the CLI is found and resolved.
    module_file = tmp_path / "probe.py"
    module_file.write_text("def f():\n    from ..cli import run\n", encoding="utf-8")
    found = _imports(module_file, "labalign.train.probe")
    assert "labalign.cli.run" in found
