"""The committed AsyncAPI document is exactly what the models generate."""

from __future__ import annotations

import json
from pathlib import Path

from service.asyncapi import DEFAULT_OUTPUT, build_document, main, render
from service.schemas.ws import CLIENT_MODELS, SERVER_MODELS, CloseCode, ErrorCode

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_committed_document_matches_the_models() -> None:
    assert COMMITTED == DEFAULT_OUTPUT
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.json drifted from service/schemas/ws.py: run `python -m service.asyncapi`"
    )


def test_document_covers_every_message_close_code_and_error_code() -> None:
    document = build_document()
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["ws"]["address"] == "/v1/ws"
    operations = document["operations"]
    assert len(operations["receiveClientMessages"]["messages"]) == len(CLIENT_MODELS)
    assert len(operations["sendServerMessages"]["messages"]) == len(SERVER_MODELS)
    schemas = document["components"]["schemas"]
    for model in (*CLIENT_MODELS, *SERVER_MODELS):
        assert model.__name__ in schemas
    # Every $ref points at something the document defines.
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node = document
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]
    assert set(document["x-close-codes"]) == {str(int(code)) for code in CloseCode}
    assert document["x-error-codes"] == [code.value for code in ErrorCode]


def test_check_mode_detects_drift(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.json"
    assert main(["--output", str(target), "--check"]) == 1
    assert main(["--output", str(target)]) == 0
    assert main(["--output", str(target), "--check"]) == 0
    target.write_text(target.read_text().replace("/v1/ws", "/v2/ws"))
    assert main(["--output", str(target), "--check"]) == 1
