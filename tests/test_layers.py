"""The layer contracts (docs/architecture.md): `lint-imports` keeps them, and fails when one is broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# conftest clears the cache (database-backed without Redis) before every test.
pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    found = Path(sys.executable).parent / "lint-imports"
    if found.exists():
        return str(found)
    which = shutil.which("lint-imports")
    if which is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return which


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_lint_imports(), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_the_code_keeps_every_contract():
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_a_layers_contract(tmp_path):
    # The same tool on a contract the code does not keep: tasks imports events (events is below
    # tasks), so a contract that puts events above tasks must fail and name that import.
    config = tmp_path / "upside_down.ini"
    config.write_text(
        "[importlinter]\n"
        "root_packages =\n    core\n    accounts\n    events\n    tasks\n"
        "[importlinter:contract:upside-down]\n"
        "name = events above tasks (wrong on purpose)\n"
        "type = layers\n"
        "layers =\n    events\n    tasks\n"
    )
    result = _run("--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "tasks is not allowed to import events" in result.stdout
