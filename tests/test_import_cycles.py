"""The module graph of chat/ and inference/ has no cycles, lazy imports included, and every
module imports on its own in any order (docs/architecture.md shows the layers)."""

import ast
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chat", "inference")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports anywhere in its body (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from chat import jobs` imports the module chat.jobs; `from chat.x import y` chat.x.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_modules_import_each_other():
    found = modules()
    known = set(found)
    graph = {}
    for name, path in found.items():
        # A package's own __init__ is imported by its modules implicitly: not an edge back.
        graph[name] = {m for m in imports(path, known) if m != name and not name.startswith(m + ".")}
    assert find_cycle(graph) is None


def test_every_module_imports_in_any_order():
    names = [n for n in modules() if not n.endswith("__main__")]
    random.Random(0).shuffle(names)
    orders = [names, list(reversed(names))]
    for order in orders:
        code = (
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'grokweb.settings.test');"
            "django.setup(); import importlib;"
            f"[importlib.import_module(n) for n in {order!r}]"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
