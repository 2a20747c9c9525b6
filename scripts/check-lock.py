"""Fails when the venv does not satisfy pyproject.toml (with the `dev` extra).

`make` installs the venv from requirements-dev.lock with `--no-deps`, so a
dependency added to pyproject.toml without `make lock` would otherwise go
unnoticed until an import fails somewhere in the suite. Run by the venv's python.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement

PROJECT = "appointment-notify"
EXTRAS = {"dev"}


def main() -> int:
    problems: list[str] = []
    for line in distribution(PROJECT).requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in {"", *EXTRAS}):
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            problems.append(f"{requirement.name} is not in the lock")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} does not satisfy {requirement}")
    for problem in problems:
        print(f"check-lock: {problem}", file=sys.stderr)
    if problems:
        print(
            "check-lock: pyproject.toml changed: run `make lock` and commit the lock",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
