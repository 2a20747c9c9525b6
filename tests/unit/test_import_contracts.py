"""The import-linter layers name every module of `service` (a module left out
would be checked by no layer rule), and every module of `service/fanout/` in the
order an event travels."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def top_level_modules() -> set[str]:
    package = ROOT / "service"
    modules = {f"service.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"service.{p.parent.name}" for p in package.glob("*/__init__.py")}
    return modules


def layers_contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]


def named(layers: list[str]) -> set[str]:
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def layered_modules() -> set[str]:
    (layers,) = [c["layers"] for c in layers_contracts() if "containers" not in c]
    return named(layers)


def test_every_module_has_a_layer() -> None:
    modules = top_level_modules()
    assert {
        "service.config",
        "service.errors",
        "service.schemas",
        "service.middleware",
        "service.fanout",
        "service.transports",
    } <= modules
    assert modules - layered_modules() == set()
    assert layered_modules() - modules == set(), "a layer names a module that does not exist"


def test_every_fanout_module_has_a_layer() -> None:
    (layers,) = [
        c["layers"] for c in layers_contracts() if c.get("containers") == ["service.fanout"]
    ]
    modules = {p.stem for p in (ROOT / "service" / "fanout").glob("*.py") if p.stem != "__init__"}
    assert {"hub", "queue", "subscription", "connection", "closing", "listener"} <= modules
    assert modules == named(layers)
