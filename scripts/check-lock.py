"""Fails when the venv does not satisfy pyproject.toml (with the `dev` extra; with
`--runtime`, the runtime dependencies only).

`make` installs the venv from requirements-dev.lock (`make run`: from the runtime
lock, deploy/docker/requirements.lock) with `--no-deps`, so a dependency added to
pyproject.toml without `make lock` would otherwise go unnoticed until an import
fails somewhere. Run by the venv's python.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution, version

try:
    from packaging.requirements import Requirement
except ImportError:  # the runtime lock has no `packaging`; pip always carries one
    from pip._vendor.packaging.requirements import Requirement

PROJECT = "appointment-notify"


def main(argv: list[str]) -> int:
    extras = set() if "--runtime" in argv else {"dev"}
    problems: list[str] = []
    for line in distribution(PROJECT).requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in {"", *extras}):
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
    sys.exit(main(sys.argv[1:]))
