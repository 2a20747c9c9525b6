"""The README's Node snippet, run exactly as printed (an ES module in the scratch
project that installed the packed tarball and the pinned eventsource)."""

from __future__ import annotations

import re

import pytest

from tests.node.conftest import ROOT, NodeClient, Project, Service, new_patient
from tests.support.tokens import Tokens

pytestmark = pytest.mark.slow

MARKER = "<!-- node-snippet: tests/node/test_readme_snippet.py runs this block as printed -->"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r"\n```js\n(.*?)```", text, re.S)
    assert match, "the README's Node snippet (after its marker) is missing"
    return match.group(1)


def test_readme_node_snippet_receives_events(project: Project, service: Service) -> None:
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) == 5, "the client under Node in five lines"
    (project.dir / "readme.mjs").write_text(snippet)
    patient = new_patient()
    service.wait_open_streams(0)  # other tests' clients are gone
    client = NodeClient(
        ["readme.mjs"],
        cwd=project.dir,
        env={"NOTIFY_URL": service.base_url, "NOTIFY_TOKEN": Tokens().patient(patient)},
    )
    try:
        # The snippet prints events only: publish once its stream is open.
        service.wait_open_streams(1)
        published = service.publish(patient, "ap_1")
        (line,) = client.wait_kind("text")
        assert line["text"] == f"{published} appointment.rescheduled"
    finally:
        client.proc.kill()
        client.finish()
    assert "Error" not in client.stderr
