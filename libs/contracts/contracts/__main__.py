"""`python -m contracts export|check`: write or verify the committed JSON Schemas."""

from __future__ import annotations

import sys

from contracts.schemas import check, export


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit code."""
    command = argv[0] if argv else "check"
    if command == "export":
        problems = [p for p in check() if "breaking change" in p]
        if problems and "--force" not in argv:
            sys.stderr.write("\n".join(problems) + "\nA breaking change needs a new version.\n")
            return 1
        for path in export():
            sys.stdout.write(f"wrote {path}\n")
        return 0
    if command == "check":
        problems = check()
        sys.stdout.write("\n".join(problems) + "\n" if problems else "schemas up to date\n")
        return 1 if problems else 0
    sys.stderr.write("usage: python -m contracts export|check\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
