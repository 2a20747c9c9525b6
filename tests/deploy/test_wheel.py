"""The wheel (what the Docker image installs) carries the browser client that
`/v1/client.js` serves: package data, not a file beside the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_FILES = ("notify-client.js", "notify-client.d.ts", "package.json")


@pytest.mark.slow
def test_wheel_ships_the_browser_client(tmp_path: Path) -> None:
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
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("appointment_notify-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in CLIENT_FILES:
        member = f"service/clients/js/{name}"
        assert member in names, f"{member} missing from {wheel.name}"
        shipped = zipfile.ZipFile(wheel).read(member)
        assert shipped == (ROOT / member).read_bytes()
