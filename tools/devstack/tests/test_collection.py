"""The root conftest keeps same-named `tests` packages of different packages apart."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT_CONFTEST = Path(__file__).resolve().parents[3] / "conftest.py"


def _package(root: Path, name: str) -> None:
    tests = root / name / "tests"
    tests.mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    (tests / "helper.py").write_text(f"VALUE = {name!r}\n")
    (tests / "test_same.py").write_text(
        "from . import helper\n\n\n"
        f"def test_{name}_sees_its_own_helper() -> None:\n"
        f"    assert helper.VALUE == {name!r}\n"
    )


def test_same_named_test_modules_of_two_packages_both_run(tmp_path: Path) -> None:
    shutil.copy(ROOT_CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'addopts = "--import-mode=importlib -p no:cacheprovider"\n'
        'asyncio_default_fixture_loop_scope = "session"\n'
    )
    _package(tmp_path, "alpha")
    _package(tmp_path, "beta")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "alpha", "beta"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    # Without the hook beta's module would be alpha's, run twice under beta's path.
    assert "beta/tests/test_same.py::test_beta_sees_its_own_helper PASSED" in result.stdout
    assert "alpha/tests/test_same.py::test_alpha_sees_its_own_helper PASSED" in result.stdout
