"""Where the repository is and how to find free TCP ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# A file only the portal repository has, so a search upwards cannot stop at a nested project.
_MARKER = Path("deploy") / "local" / "kafka" / "pom.xml"


def repo_root() -> Path:
    """The root of the portal repository.

    `DEVSTACK_REPO_ROOT` wins; otherwise the first directory above this package (an editable
    install lives in the repository) or above the working directory that holds the Kafka pom.
    """
    override = os.environ.get("DEVSTACK_REPO_ROOT")
    if override:
        return Path(override).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if (candidate / _MARKER).is_file():
                return candidate
    raise FileNotFoundError(
        f"cannot find the repository root (no {_MARKER} above {Path.cwd()}); "
        "run from inside the repository or set DEVSTACK_REPO_ROOT"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
