"""The import graph of `agent/` against its layer order (docs/architecture.md): every import between packages
points down, no two packages import each other (directly or around a loop), and a function imports only the
heavy or optional third-party modules that would slow start-up (never the project's own modules).

Module-level and function-level imports are read alike (the AST of every module, `if TYPE_CHECKING:` blocks
included), so an upward edge cannot hide inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

AGENT = Path(__file__).resolve().parents[1] / "agent"

# Bottom to top; a package may import only the packages before it. The same order is written in
# docs/architecture.md. Foundation modules (single files directly under agent/) come first.
LAYERS: Tuple[str, ...] = (
    "errors",
    "lazy",
    "models",
    "config",
    "store",
    "device",
    "calib",
    "engine",
    "runtime",
    "vision",
    "gate",
    "telemetry",
    "fleet",
    "daemon",
    "operator",
    "cli",
)
# `python -m agent` is the command line.
ALIASES = {"__main__": "cli"}
# Third-party modules a function may import (heavy or optional: start-up time and the `cpu` extra).
LAZY_THIRD_PARTY = frozenset({"onnxruntime", "onnx", "cv2", "tensorrt", "pycuda"})
# The one place that loads the project's own modules by name: the command line imports only the subcommand
# that was asked for, so `edge-agent --help` stays light.
DYNAMIC_IMPORTS = {"agent.cli.main"}


class Edge:
    def __init__(self, source: str, target: str, line: int, in_function: bool) -> None:
        self.source, self.target, self.line, self.in_function = source, target, line, in_function

    def __repr__(self) -> str:
        where = "function" if self.in_function else "module"
        return f"{self.source} -> {self.target} (line {self.line}, {where} level)"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    """agent.engine.build -> engine; agent.config -> config; agent (the package itself) -> errors (foundation)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "errors"
    return ALIASES.get(parts[1], parts[1])


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _function_nodes(tree: ast.AST) -> Set[int]:
    inside: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.walk(node):
                if child is not node:
                    inside.add(id(child))
    return inside


def imports(path: Path) -> Iterator[Tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of the file."""
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    inside = _function_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in inside
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path.name == "__init__.py", node)
            if node.module is None:  # `from . import x`: each name is a module
                for alias in node.names:
                    yield f"{base}.{alias.name}", node.lineno, id(node) in inside
            else:
                yield base, node.lineno, id(node) in inside


def dynamic_imports(path: Path) -> Iterator[int]:
    """Lines that load a module by name (importlib.import_module / __import__) with a literal 'agent...' name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in ("import_module", "__import__", "try_import", "require"):
            continue
        first = node.args[0]
        text: Optional[str] = None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            text = first.value
        elif isinstance(first, ast.JoinedStr) and first.values and isinstance(first.values[0], ast.Constant):
            text = str(first.values[0].value)
        if text is not None and text.startswith("agent"):
            yield node.lineno


def project_edges() -> List[Edge]:
    edges = []
    for path in sorted(AGENT.rglob("*.py")):
        source = module_name(path)
        for target, line, in_function in imports(path):
            if target == "agent" or target.startswith("agent."):
                edges.append(Edge(source, target, line, in_function))
    return edges


def test_the_layer_list_names_every_package_and_foundation_module() -> None:
    found = {p.name for p in AGENT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    found |= {p.stem for p in AGENT.glob("*.py") if p.stem not in ("__init__",) and p.stem not in ALIASES}
    assert found <= set(LAYERS), f"add {sorted(found - set(LAYERS))} to LAYERS (and to docs/architecture.md)"


def test_the_documented_order_is_the_tested_order() -> None:
    text = (AGENT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    line = next((ln for ln in text.splitlines() if ln.startswith("Layers, bottom to top:")), "")
    documented = [word.strip(" `.") for word in line.split(":", 1)[1].replace("<", ",").split(",")] if line else []
    assert [w for w in documented if w] == list(LAYERS)


def test_every_import_between_packages_points_down() -> None:
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = [e for e in project_edges() if rank[layer_of(e.target)] > rank[layer_of(e.source)]]
    assert not upward, "imports that point up the layer order:\n" + "\n".join(map(repr, upward))


def test_no_cycle_between_packages() -> None:
    graph: Dict[str, Set[str]] = {}
    for edge in project_edges():
        a, b = layer_of(edge.source), layer_of(edge.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    # a cycle exists iff a depth-first search meets a node on its own stack
    state: Dict[str, int] = {}
    cycle: List[str] = []

    def visit(node: str, stack: List[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt):], node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, "packages that import each other: " + " -> ".join(cycle)


def test_functions_import_no_project_module() -> None:
    hidden = [e for e in project_edges() if e.in_function]
    assert not hidden, "the project's own modules imported inside functions (import them at module level):\n" + "\n".join(map(repr, hidden))


def test_functions_import_only_heavy_or_optional_third_party_modules() -> None:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, line, in_function in imports(path):
            if not in_function or target.startswith("agent"):
                continue
            top = target.split(".")[0]
            if top not in LAZY_THIRD_PARTY:
                found.append(f"{module_name(path)}:{line}: {target} (import it at module level)")
            elif not _commented(lines, line):
                found.append(f"{module_name(path)}:{line}: {target} needs a comment saying why it is imported here")
    assert not found, "\n".join(found)


def _commented(lines: List[str], line: int) -> bool:
    """A comment on the import's line, or above the run of imports it belongs to."""
    index = line - 1
    if "#" in lines[index]:
        return True
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        if "#" in lines[index]:
            return True
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#")


def test_no_module_loads_the_project_by_name() -> None:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        if module_name(path) in DYNAMIC_IMPORTS:
            continue
        found += [f"{module_name(path)}:{line}" for line in dynamic_imports(path)]
    assert not found, "project modules loaded by name (import them; a missing module is a bug, not an option): " + ", ".join(found)


def test_the_configuration_is_a_foundation_module() -> None:
    """agent/config.py is read by every layer, so it imports only the error types and the document models."""
    found = {target for target, _line, _inside in imports(AGENT / "config.py") if target.startswith("agent")}
    assert found <= {"agent", "agent.errors", "agent.models"}, sorted(found)


# What an idle agent loads (issue 13: 40 MB RSS, bench/startup.py measures it) -------------------------------------
# `edge-agent run` imports the whole deployment path at start-up (the daemon holds the steps that apply a
# deployment), so the heavy third-party modules that path needs at module level are bound with
# agent.lazy.deferred instead (the real import behind `if TYPE_CHECKING:`), and load at the first deployment.
IDLE_ENTRY = ("agent.cli.main", "agent.cli.run_cmd")
NOT_AT_IDLE = frozenset({"numpy", "cryptography"}) | LAZY_THIRD_PARTY


def _runtime_imports(path: Path) -> Iterator[Tuple[str, int]]:
    """(module, line) of the imports that run when the module is imported: not in functions, not in
    `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _function_nodes(tree)
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            assert isinstance(node, ast.If)
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    imported = {(target, line) for target, line, _inside in imports(path)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
            yield from ((target, line) for target, line in imported if line == node.lineno)


def _module_file(module: str) -> Optional[Path]:
    base = AGENT.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def idle_modules() -> Dict[str, Path]:
    """The project's modules that `edge-agent run` imports before any deployment (with their packages)."""
    found: Dict[str, Path] = {}
    todo = list(IDLE_ENTRY)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = _module_file(name)
            if path is None or name in found:
                continue
            found[name] = path
            todo.extend(target for target, _line in _runtime_imports(path) if target.split(".")[0] == "agent")
    return found


def test_the_idle_agent_imports_no_heavy_module() -> None:
    modules = idle_modules()
    assert "agent.daemon.daemon" in modules and "agent.daemon.pipeline_steps" in modules
    found = [
        f"{name}:{line}: {target}"
        for name, path in sorted(modules.items())
        for target, line in _runtime_imports(path)
        if target.split(".")[0] in NOT_AT_IDLE
    ]
    assert not found, "heavy modules an idle agent would load (bind them with agent.lazy.deferred):\n" + "\n".join(found)
