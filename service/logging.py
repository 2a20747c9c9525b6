"""structlog set-up: JSON in production, console in development, one pipeline for
our loggers and uvicorn's, and a redaction step no log line can bypass."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor

REDACTED = "[redacted]"
# Keys whose values are credentials: masked wherever they appear.
_SECRET_KEY = re.compile(r"token|ticket|authorization|cookie|secret|password|jwt|bearer", re.I)
# Keys whose values would be event payloads (PHI): dropped, never rendered.
_PAYLOAD_KEYS = frozenset({"payload", "data", "event_data", "body", "raw"})
# Anything shaped like a JWT, wherever it hides in a string.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){0,2}")
_QUERY_SECRET = re.compile(r"((?:ticket|token|access_token)=)[^&\s\"']+", re.I)
# `DELETE /v1/stream-tickets/{ticket}` carries a ticket in the path itself.
_PATH_TICKET = re.compile(r"(/stream-tickets/)(?!\{ticket\})[^/?#\s\"']+")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = _PATH_TICKET.sub(r"\1" + REDACTED, _JWT_LIKE.sub(REDACTED, value))
        return _QUERY_SECRET.sub(r"\1" + REDACTED, value)
    if isinstance(value, dict):
        return {k: _redact_pair(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _redact_pair(key: Any, value: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEY.search(key):
        return REDACTED
    return _scrub(value)


def redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Mask credential-like fields, drop payload-like ones, scrub JWTs in strings."""
    for key in list(event_dict):
        if key in _PAYLOAD_KEYS:
            event_dict[key] = REDACTED
        elif key != "exc_info":
            event_dict[key] = _redact_pair(key, event_dict[key])
    return event_dict


def _drop_color_message(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates its message with ANSI colours in this extra.
    event_dict.pop("color_message", None)
    return event_dict


# Prefixes of the `websockets` protocol's debug traces (uvicorn hands it the
# `uvicorn.error` logger): "<"/">" are frames and handshake lines read or written,
# i.e. tokens in `auth` frames, Authorization headers and event payloads.
_WIRE_TRACE_PREFIXES = ("< ", "> ", "= ", "! ", "% ", "x ", "? ")


def _drop_wire_traces(record: logging.LogRecord) -> bool:
    """Debug traces of what went over the wire are never logged, whatever the level."""
    if record.levelno > logging.DEBUG or not record.name.startswith(("uvicorn", "websockets")):
        return True
    return not (isinstance(record.msg, str) and record.msg.startswith(_WIRE_TRACE_PREFIXES))


def configure_logging(*, fmt: Literal["console", "json"], level: str, stream: Any = None) -> None:
    """Idempotent: tests and the CLI may call it more than once."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
    ]
    renderer: Processor
    if fmt == "json":
        # Tracebacks as data, but never with frame locals: those hold headers,
        # tokens and event payloads.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    # Last before rendering, so that it also sees rendered tracebacks.
    shared.append(redact)

    structlog.configure(
        # The level first: a line below it costs one `isEnabledFor`, not the whole
        # chain (timestamps, redaction regexes) before the handler drops it (in a
        # storm at NOTIFY_LOG_LEVEL=warning that chain was 9 % of the CPU).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a later configure() (tests) must take effect.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_drop_wire_traces)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers keep their own handlers unless rerouted; its access log is
    # replaced by our middleware's line (it prints query strings, i.e. tickets).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # At debug level sse-starlette logs every chunk it sends: event payloads.
    logging.getLogger("sse_starlette").setLevel(max(logging.INFO, root.level))
