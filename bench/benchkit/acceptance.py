"""The acceptance suite's stack and clients (tests/acceptance), importable from bench/.

The benchmarks start and drive the stack exactly as the acceptance journeys do, so they
reuse `LocalStack`, `Clinic`, `Patient` and `PatientStream` from tests/acceptance rather than
keep a copy. Those modules import each other relatively, so they are loaded here as a
package named `acceptance` from their folder, wherever the repository is checked out and
whatever the current directory (pytest's own `tests` packages are not involved).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "tests" / "acceptance"
PACKAGE = "acceptance"


def _package() -> ModuleType:
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, FOLDER / "__init__.py", submodule_search_locations=[str(FOLDER)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the acceptance package from {FOLDER}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


_package()
stack = importlib.import_module(f"{PACKAGE}.stack")
portal = importlib.import_module(f"{PACKAGE}.portal")
checker = importlib.import_module(f"{PACKAGE}.checker")

LocalStack = stack.LocalStack
StackFailed = stack.StackFailed
GATEWAY: str = stack.GATEWAY
SANDBOX: str = stack.SANDBOX
PORTS: dict[str, int] = stack.PORTS
Clinic = portal.Clinic
Patient = portal.Patient
PatientStream = checker.PatientStream
