"""The package's modules import each other without a circle, and each one imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ttsn_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports anywhere (module level or inside functions), relative or absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


def import_graph() -> dict[str, set[str]]:
    # importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, as Python always does; an __init__ that
    # re-exports its submodules is not a circle, so edges from a module to its own ancestor packages are left out
    return {
        name: {target for target in imported_modules(name, path) if not name.startswith(target + ".")}
        for name, path in MODULES.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "ttsn_hf.modeling.model" in graph["ttsn_hf"]  # from .modeling.model import ...
    assert "ttsn_hf.errors" in graph["ttsn_hf.modeling.pretrained"]  # from ..errors import ...
    assert "ttsn_hf.modeling.model" in graph["ttsn_hf.evaluation.evaluate"]  # inside a function


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_package_modules():
    assert find_cycle(import_graph()) is None


FRESH_IMPORTS = """
import importlib, sys, traceback
for name in sys.argv[1:]:
    for loaded in [module for module in sys.modules if module.split(".")[0] == "ttsn_hf"]:
        del sys.modules[loaded]  # each module starts from nothing of ours; torch & co. stay loaded (speed)
    try:
        importlib.import_module(name)
    except Exception:
        print(f"{name}: {traceback.format_exc(limit=3)}")
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, *sorted(MODULES)], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert result.returncode == 0 and not result.stdout, (result.stdout + result.stderr)[-3000:]
