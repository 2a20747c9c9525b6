"""`npm pack` builds the package and a fresh project installs it: ES module and
CommonJS entries, types for both, no runtime dependency, one version everywhere."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.node.conftest import PACKAGE, Packed, Project, node

pytestmark = pytest.mark.slow

EXPORTS = ["EVENT_TYPES", "NotifyClient", "VERSION", "compareIds", "connect"]


def test_pack_holds_both_entries_their_types_and_no_dependencies(packed: Packed) -> None:
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert packed.version == manifest["version"]
    assert manifest["name"] == "@appointment-notify/client"
    assert packed.files == [
        "notify-client.cjs",
        "notify-client.d.cts",
        "notify-client.d.ts",
        "notify-client.js",
        "package.json",
    ]
    assert "dependencies" not in manifest
    entry = manifest["exports"]["."]
    assert entry["import"] == {"types": "./notify-client.d.ts", "default": "./notify-client.js"}
    assert entry["require"] == {"types": "./notify-client.d.cts", "default": "./notify-client.cjs"}


def test_commonjs_project_requires_it(project: Project, packed: Packed) -> None:
    # `npm init` makes a CommonJS project: the case that failed with a copied file.
    assert json.loads((project.dir / "package.json").read_text()).get("type") != "module"
    script = (
        "const c = require('@appointment-notify/client');"
        "console.log(JSON.stringify({keys: Object.keys(c).sort(), version: c.VERSION,"
        " cmp: c.compareIds('2-0', '10-0')}));"
    )
    result = project.run("-e", script)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"keys": EXPORTS, "version": packed.version, "cmp": -1}


def test_es_module_project_imports_it(project: Project, packed: Packed) -> None:
    (project.dir / "check.mjs").write_text(
        "import * as c from '@appointment-notify/client';\n"
        "import { NotifyClient, VERSION } from '@appointment-notify/client';\n"
        "console.log(JSON.stringify({keys: Object.keys(c).sort(), version: VERSION,"
        " same: c.NotifyClient === NotifyClient}));\n"
    )
    result = project.run("check.mjs")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"keys": EXPORTS, "version": packed.version, "same": True}


def test_sources_pass_node_check(packed: Packed) -> None:
    """A syntax lint of the package's JavaScript, the generated CJS entry included."""
    built = packed.tarball.parent / "client"
    paths = [*PACKAGE.glob("*.js"), *PACKAGE.glob("*.mjs"), built / "notify-client.cjs"]
    for path in paths:
        result = subprocess.run(
            [node(), "--check", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
