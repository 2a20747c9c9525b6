"""The npm package `@appointment-notify/client` (clients/js) as a user gets it: `npm
pack`, then `npm install <tarball>` into a scratch project (CommonJS by default, as
`npm init` makes it) under Node (/usr/bin/node, 20 or newer)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
# npm's cache stays inside the repository's ignored .cache (not the user's ~/.npm).
NPM_CACHE = ROOT / ".cache" / "npm"
# The EventSource implementation the README names for Node, pinned (and its one
# dependency, so that nothing floats).
EVENTSOURCE = ("eventsource@4.1.1", "eventsource-parser@3.0.6")


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is missing: apt-get install nodejs npm (Node 20+)", pytrace=False)
    return found


def npm(*args: str, cwd: Path, timeout_s: float = 300) -> str:
    found = shutil.which("npm")
    if found is None:
        pytest.fail("npm is missing: apt-get install npm", pytrace=False)
    env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
    result = subprocess.run(
        [found, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, f"npm {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Packed:
    tarball: Path
    files: list[str]
    version: str


@pytest.fixture(scope="package")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """`npm pack` of a copy of clients/js (its prepack build writes the CJS entry)."""
    work = tmp_path_factory.mktemp("pack")
    source = work / "client"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("node_modules", "*.tgz"))
    report = json.loads(npm("pack", "--json", "--pack-destination", str(work), cwd=source))
    (entry,) = report
    return Packed(
        tarball=work / entry["filename"],
        files=sorted(f["path"] for f in entry["files"]),
        version=entry["version"],
    )


@dataclass(frozen=True)
class Project:
    dir: Path

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node(), *args], cwd=self.dir, capture_output=True, text=True, timeout=timeout_s
        )


@pytest.fixture(scope="package")
def project(packed: Packed, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A scratch `npm init` project with the tarball and the pinned eventsource."""
    directory = tmp_path_factory.mktemp("scratch")
    npm("init", "-y", cwd=directory)
    npm("install", "--no-audit", "--no-fund", str(packed.tarball), *EVENTSOURCE, cwd=directory)
    return Project(dir=directory)
