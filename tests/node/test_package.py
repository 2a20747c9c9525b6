"""`npm pack` builds the package and a fresh project installs it: ES module and
CommonJS entries, types for both, no runtime dependency, one version everywhere."""

from __future__ import annotations

import json
import re
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
        "README.md",
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


TYPED_ESM = """
import { NotifyClient, VERSION, compareIds } from "@appointment-notify/client";
import type { AppointmentEvent, ConnectionState, TabRole } from "@appointment-notify/client";
import { EventSource } from "eventsource";
const roles: TabRole[] = [];
const client = new NotifyClient({
  baseUrl: "https://notify.example",
  getToken: async () => "token",
  share: false,
  shareKey: "user-1",
  onEvent: (event: AppointmentEvent) => console.log(event.id, event.data.starts_at),
  onStateChange: (state: ConnectionState) => console.log(state),
  onRoleChange: (role) => roles.push(role),
  onResumePoint: (id: string) => console.log(id),
});
// Under Node: the eventsource package's class fits the EventSource option.
new NotifyClient({ baseUrl: "https://notify.example", getToken: () => "t", EventSource });
const version: string = VERSION;
const order: number = compareIds("1-0", "2-0");
const last: string | null = client.lastEventId;
// @ts-expect-error getToken is required
new NotifyClient({ baseUrl: "https://notify.example" });
// @ts-expect-error no such transport
new NotifyClient({ getToken: () => "t", transport: "carrier-pigeon" });
export { version, order, last };
"""

TYPED_CJS = """
import notify = require("@appointment-notify/client");
const client = new notify.NotifyClient({ baseUrl: "https://notify.example", getToken: () => "t" });
client.command("confirm", "ap_1").then((reply) => reply.command_id.toUpperCase());
// @ts-expect-error not an action
client.command("reschedule-now", "ap_1");
export = client;
"""

TSCONFIG = {
    "compilerOptions": {
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "target": "es2022",
        "lib": ["es2022", "dom"],
        "types": [],
        "strict": True,
        "noEmit": True,
        "skipLibCheck": False,
    },
    "files": ["typed.mts", "typed.cts"],
}


def test_types_check_for_es_module_and_commonjs_users(project: Project) -> None:
    """tsc resolves the `types` of each `exports` condition (.d.ts for import,
    .d.cts for require) and the declarations hold what the client takes."""
    (project.dir / "typed.mts").write_text(TYPED_ESM)
    (project.dir / "typed.cts").write_text(TYPED_CJS)
    (project.dir / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    tsc = project.dir / "node_modules" / "typescript" / "bin" / "tsc"
    result = project.run(str(tsc), "-p", "tsconfig.json", "--traceResolution")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    resolved = re.findall(r"successfully resolved to '([^']+)'", result.stdout)
    assert any(path.endswith("notify-client.d.ts") for path in resolved)
    assert any(path.endswith("notify-client.d.cts") for path in resolved)
    # Negative control: a wrong option type is an error.
    (project.dir / "typed.mts").write_text(TYPED_ESM.replace("share: false", 'share: "no"'))
    broken = project.run(str(tsc), "-p", "tsconfig.json")
    assert broken.returncode != 0
    assert "typed.mts" in broken.stdout
