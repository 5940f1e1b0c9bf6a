"""`make run` and the Docker image install requirements.txt alone: every module the application
imports outside its tests must come from a distribution pinned there, not from
requirements-dev.txt (a worker that cannot import its tasks dies at start)."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
APPS = {"accounts", "analytics", "billing", "chat", "config", "manage"}


def _pinned(requirements: Path) -> set[str]:
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[=<>~!\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def _optional(node: ast.AST, parents: dict) -> bool:
    """Inside `try: ... except ImportError:` (a dev-only extra the code does without)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            return True
    return False


def _runtime_imports() -> dict[str, set[str]]:
    """Top-level module -> the application files that import it, tests and benchmarks left out."""
    found: dict[str, set[str]] = {}
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] not in APPS or "tests" in relative.parts or relative.parts[0] == ".venv":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            if _optional(node, parents):
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], set()).add(str(relative))
    return found


def test_every_module_the_application_imports_is_pinned_in_the_runtime_requirements():
    pinned = _pinned(ROOT / "requirements.txt")
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in _runtime_imports().items():
        if module in APPS or module in sys.stdlib_module_names or module == "__future__":
            continue
        names = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if not names & pinned:
            missing[module] = sorted(files)
    assert missing == {}, f"imported at runtime but not pinned in requirements.txt: {missing}"
