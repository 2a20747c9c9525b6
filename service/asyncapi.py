"""The WebSocket protocol as an AsyncAPI 3.0 document, generated from the Pydantic
models of `service/schemas/ws.py`.

    python -m service.asyncapi            # writes docs/asyncapi.json
    python -m service.asyncapi --check    # exit 1 when the committed file drifted

The document describes the server: it *receives* client messages and *sends*
server messages on the one channel `/v1/ws`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service.schemas.ws import CLIENT_MODELS, SERVER_MODELS, CloseCode, ErrorCode

DEFAULT_OUTPUT: Final = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
_REF: Final = "#/components/schemas/{model}"

_CLOSE_MEANINGS: Final[dict[CloseCode, str]] = {
    CloseCode.NORMAL: "Normal closure.",
    CloseCode.GOING_AWAY: "Server shutting down or draining; a `reconnect` hint came first.",
    CloseCode.POLICY: "Too many invalid frames.",
    CloseCode.TOO_BIG: "A frame above the size limit (NOTIFY_WS_MAX_MESSAGE_BYTES).",
    CloseCode.INTERNAL: "Unexpected server error.",
    CloseCode.TRY_AGAIN_LATER: (
        "Over capacity, or Redis unreachable; a `reconnect` hint came first."
    ),
    CloseCode.TOKEN_EXPIRED: "The token expired (`token_expiring` came first).",
    CloseCode.REVOKED: "The token, its subject or the stream ticket was revoked.",
    CloseCode.TOO_SLOW: "The client did not read fast enough; a `reconnect` hint came first.",
    CloseCode.UNAUTHORIZED: "First-message `auth` missing, late or invalid.",
}

_DESCRIPTION: Final = """\
Real-time appointment notifications over one WebSocket. Every frame is a JSON object
with a `type`. Authenticate with a stream ticket (`?ticket=`), an `Authorization:
Bearer` header (non-browser clients), or an `auth` message as the first frame. A
refused handshake is an HTTP 401; a failed first-message `auth` closes with 4401.
Nothing is delivered before authentication. See docs/websocket.md."""


def _message_name(model: type[BaseModel]) -> str:
    (name,) = get_args(model.model_fields["type"].annotation)
    return str(name)


def build_document() -> dict[str, Any]:
    """The AsyncAPI document as a JSON-compatible dict (deterministic)."""
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in CLIENT_MODELS),
        *((model, "serialization") for model in SERVER_MODELS),
    ]
    _, definitions = models_json_schema(inputs, ref_template=_REF)
    schemas = dict(sorted(definitions.get("$defs", {}).items()))

    messages: dict[str, Any] = {}
    client_refs: list[dict[str, str]] = []
    server_refs: list[dict[str, str]] = []
    for models, refs, direction in (
        (CLIENT_MODELS, client_refs, "client → server"),
        (SERVER_MODELS, server_refs, "server → client"),
    ):
        for model in models:
            name = _message_name(model)
            messages[name] = {
                "name": name,
                "title": model.__name__,
                "summary": f"{direction}: `{name}`",
                "contentType": "application/json",
                "payload": {"$ref": _REF.format(model=model.__name__)},
            }
            if model.__doc__:
                messages[name]["description"] = " ".join(model.__doc__.split())
            refs.append({"$ref": f"#/channels/ws/messages/{name}"})

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Appointment notifications: WebSocket channel",
            "version": "1",
            "description": _DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "`notify serve` in development (use wss:// behind TLS).",
            }
        },
        "channels": {
            "ws": {
                "address": "/v1/ws",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "ticket": {
                                    "type": "string",
                                    "description": "Stream ticket from POST /v1/stream-tickets.",
                                }
                            },
                        },
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Authorization": {
                                    "type": "string",
                                    "description": "`Bearer <token>` (non-browser clients).",
                                }
                            },
                        },
                    }
                },
            }
        },
        "operations": {
            "receiveClientMessages": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "Frames the client sends.",
                "messages": client_refs,
            },
            "sendServerMessages": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "Frames the server sends.",
                "messages": server_refs,
            },
        },
        "components": {"messages": messages, "schemas": schemas},
        "x-close-codes": {
            str(int(code)): {"name": code.name, "description": _CLOSE_MEANINGS[code]}
            for code in CloseCode
        },
        "x-error-codes": [code.value for code in ErrorCode],
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.asyncapi", description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is out of date: run python -m service.asyncapi", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
