"""The wheel (what the Docker image installs) carries the browser client that
`/v1/client.js` serves: package data, not a file beside the repository. Its source is
the npm package in clients/js (service/clients/js links to it)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .test_dockerfile import instructions

ROOT = Path(__file__).resolve().parents[2]
CLIENT_FILES = ("notify-client.js", "notify-client.d.ts", "package.json")


def build_wheel(source: Path, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(into),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = into.glob("appointment_notify-*.whl")
    return wheel


def assert_ships_the_client(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in CLIENT_FILES:
        member = f"service/clients/js/{name}"
        assert member in names, f"{member} missing from {wheel.name}"
        shipped = zipfile.ZipFile(wheel).read(member)
        assert shipped == (ROOT / "clients" / "js" / name).read_bytes()


@pytest.mark.slow
def test_wheel_ships_the_browser_client(tmp_path: Path) -> None:
    assert (ROOT / "service" / "clients" / "js").resolve() == ROOT / "clients" / "js"
    wheel = build_wheel(ROOT, tmp_path)
    assert_ships_the_client(wheel)
    # `notify outbox migrate` in the image reads the outbox's SQL from the package.
    shipped = zipfile.ZipFile(wheel).read("service/outbox/schema.sql")
    assert shipped == (ROOT / "service" / "outbox" / "schema.sql").read_bytes()


def docker_context(into: Path) -> None:
    """The build context .dockerignore lets through (its `*` then `!allowed` then
    `excluded` lines, in order: the last matching line wins), symlinks kept as links."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(relative: str) -> bool:
        keep = True
        for rule in rules:
            pattern, allow = (rule[1:], True) if rule.startswith("!") else (rule, False)
            pattern = pattern.rstrip("/").removeprefix("**/")
            parts = relative.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or any(
                fnmatch.fnmatchcase(part, pattern) for part in parts
            ):
                keep = allow
        return keep

    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for relative in filter(None, tracked.split("\0")):
        source = ROOT / relative
        if not included(relative) or (not source.is_symlink() and not source.is_file()):
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copyfile(source, target)


@pytest.mark.slow
def test_image_build_ships_the_browser_client(tmp_path: Path) -> None:
    """What the Dockerfile's build stage does, without a Docker daemon: the context
    .dockerignore allows, the COPY lines into /src, then `pip install .` (a wheel)."""
    context, src, out = tmp_path / "context", tmp_path / "src", tmp_path / "wheel"
    docker_context(context)
    copies = [a.split() for k, a in instructions() if k == "COPY" and "--from=" not in a]
    for *sources, destination in copies:
        for source in sources:
            origin = context / source
            target = (
                src / destination / Path(source).name
                if destination.endswith("/")
                else src / destination
            )
            if origin.is_dir():
                shutil.copytree(origin, target, symlinks=True, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target)
    assert (src / "service" / "clients" / "js").is_symlink()
    assert_ships_the_client(build_wheel(src, out))
