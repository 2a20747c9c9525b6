"""`pip install ./clients/python` into a fresh virtualenv, as a backend would:
the package brings redis and pydantic, not the web stack, and publishes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]

PUBLISH = """
import json, sys
from notify_publisher import SyncPublisher
event = {"type": "appointment.created", "patient_id": "pt_inst", "appointment_id": "ap_1",
         "occurred_at": "2026-12-01T09:00:00Z", "data": {}}
with SyncPublisher.from_url(sys.argv[1], key_prefix="install:") as publisher:
    print(publisher.publish(event))
"""


def test_the_package_installs_alone_and_publishes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    venv = tmp_path / "backend"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The machine's configured index (pip.conf), as for `make`'s own installs.
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "./clients/python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # -I: nothing of this repository (or the test venv) is importable.
        return subprocess.run(
            [str(python), "-I", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for web in ("fastapi", "starlette", "uvicorn", "sse_starlette", "service"):
        missing = run("-c", f"import {web}")
        assert missing.returncode != 0, web
        assert f"No module named '{web}'" in missing.stderr
    typed = run(
        "-c",
        "import importlib.resources as r; print(r.files('notify_publisher').joinpath('py.typed').is_file(), r.files('notify_publisher').joinpath('publish.lua').is_file())",
    )
    assert typed.stdout.split() == ["True", "True"], typed.stderr

    published = run("-c", PUBLISH, redis_server.url)
    assert published.returncode == 0, published.stderr
    client = redis_server.client()
    try:
        (entry_id,) = [e[0].decode() for e in client.xrange("install:history:{pt_inst}")]  # type: ignore[union-attr]
    finally:
        client.close()
    assert published.stdout.strip() == entry_id
