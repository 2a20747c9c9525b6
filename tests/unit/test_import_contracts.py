"""The import-linter layers name every module of `service` (a module left out
would be checked by no layer rule)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def top_level_modules() -> set[str]:
    package = ROOT / "service"
    modules = {f"service.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"service.{p.parent.name}" for p in package.glob("*/__init__.py")}
    return modules


def layered_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def test_every_module_has_a_layer() -> None:
    modules = top_level_modules()
    assert {"service.config", "service.errors", "service.schemas", "service.middleware"} <= modules
    assert modules - layered_modules() == set()
    assert layered_modules() - modules == set(), "a layer names a module that does not exist"
