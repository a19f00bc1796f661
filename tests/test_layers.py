"""The parts of the service import downwards only: no part imports one above it, so no cycle.

From the bottom: the unit-of-work layer (``service.db``), jobs (``service.jobs``),
the web platform (``service.errors``, ``service.security``, ``service.logs``,
``service.ratelimit``, ``service.openapi``, ``service.guard``, ``service.serving``), the
domain (``service.ledger``), and what assembles them (the app, the command line, the
worker, ``service.modules``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"

ALLOWED = {
    "service.db": {"service.db"},
    "service.jobs": {"service.db", "service.config", "service.jobs"},
    "service.ledger": {
        "service.db",
        "service.jobs",
        "service.config",
        "service.errors",
        "service.logs",
        "service.openapi",
        "service.ratelimit",
        "service.security",
        "service.ledger",
    },
    # The web platform under the domain: errors, request ids and headers, logs, limits.
    "service.security": {"service.errors"},
    "service.logs": {"service.security"},
    "service.ratelimit": {"service.errors"},
    "service.openapi": {"service.errors"},
    # In front of the app: the ASGI guard, and Hypercorn as the service runs it.
    "service.guard": set(),
    "service.serving": {"service.guard"},
    "service.worker": {
        "service.db",
        "service.jobs",
        "service.config",
        "service.modules",
        "service.tracing",
    },
}


def _part(module: str) -> str | None:
    return next((part for part in ALLOWED if module == part or module.startswith(part + ".")), None)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "service"}


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(SERVICE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules.append((name, path))
    return modules


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_a_part_imports_only_the_parts_below_it(module: str, path: Path) -> None:
    part = _part(module)
    if part is None:
        return  # the app, the command line, modules, config, errors: they assemble the rest
    allowed = ALLOWED[part]
    wrong = sorted(
        name
        for name in _imports(path)
        if not any(name == lower or name.startswith(lower + ".") for lower in allowed)
        and name != "service"
    )
    assert wrong == [], f"{module} ({part}) imports {wrong}"


def test_importing_jobs_loads_neither_the_worker_nor_the_domain() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, service.jobs; print(sorted(m for m in sys.modules "
            "if m.startswith(('service.ledger', 'service.worker', 'service.app'))))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
