"""The boundaries are checked by a tool (import-linter, in ``make lint``), and the tool is checked
here: it passes on this tree, and fails on a copy that breaks a boundary on purpose. What is
loaded at run time is checked too, where a contract on imports cannot see it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": str(LINT_IMPORTS.parent)},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "service", tmp_path / "service")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_this_tree(tree: Path) -> None:
    checked = _lint_imports(tree)

    assert checked.returncode == 0, checked.stdout
    assert "Contracts: 6 kept, 0 broken." in checked.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("db/_types.py", "from service.ledger.models import User", "knows nothing of the rest"),
        ("db/_sqlite.py", "from service.db._unit import UnitOfWork", "runs one way"),
        ("db/_context.py", "from service.db._session import session", "runs one way"),
        ("db/_session.py", "import quart", "loads Quart, werkzeug and click only"),
        ("jobs/_admin.py", "from service.db._session import session", "public names only"),
        ("testing/_support.py", "from service.ledger.models import User", "no domain model"),
        ("jobs/_admin.py", "from service.ledger.models import User", "downwards only"),
    ],
)
def test_a_broken_boundary_fails_the_check(
    tree: Path, module: str, line: str, contract: str
) -> None:
    path = tree / "service" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402, F401\n")

    checked = _lint_imports(tree)

    assert checked.returncode != 0
    broken = [row for row in checked.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(contract in row for row in broken), (broken, checked.stdout[-2000:])


def test_the_layer_loads_no_web_framework_and_its_binding_and_jobs_no_domain() -> None:
    probe = (
        "import sys, service.db\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'quart', 'werkzeug', 'flask'}))\n"
        "import service.db.quart, service.jobs\n"
        "print(sorted(m for m in sys.modules\n"
        "    if m.startswith(('service.ledger', 'service.worker', 'service.app'))))\n"
    )

    printed = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()

    assert printed == ["[]", "[]"]


def test_the_structure_page_lists_the_layers_the_contract_checks() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [layering] = [c for c in contracts["contracts"] if c.get("containers") == ["service.db"]]
    page = (ROOT / "docs" / "layer" / "structure.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and "`" in line]
    drawn = [
        {name.strip("` ") for name in row.split("|")[2].split(",")}
        for row in rows
        if row.split("|")[2].strip()
    ]
    contracted = [{name.strip() for name in layer.split("|")} for layer in layering["layers"]]

    assert drawn == contracted
