"""The app's log as its operators see it: every line through the formatter the
lifespan installed (`service/logging.py`, JSON in tests), structlog's lines and
foreign ones alike (uvicorn's errors, asyncio's "exception was never retrieved")."""

from __future__ import annotations

import json
import logging
from typing import Any

# asyncio's debug mode (every test loop) warns about slow callbacks; the blocking
# guard of tests/conftest.py judges those, net of the time spent waiting for a CPU.
_SLOW_CALLBACK = ("Executing ", "took ")


class CapturedLog(logging.Handler):
    """Attach once the app's lifespan configured logging (it replaces the root's
    handlers); detach after the app stopped."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def attach(self) -> None:
        root = logging.getLogger()
        (installed,) = [h for h in root.handlers if h.formatter is not None]
        self.setFormatter(installed.formatter)
        root.addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        try:
            line = json.loads(text)
        except ValueError:
            line = {"event": text, "level": record.levelname.lower(), "unparsed": True}
        line.setdefault("logger", record.name)
        self.lines.append(line)

    def of(self, event: str, subject: str) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("event") == event and line.get("subject") == subject
        ]

    def trouble(self) -> list[dict[str, Any]]:
        """Errors, exceptions and warnings (asyncio's slow-callback notes aside)."""
        found = []
        for line in self.lines:
            level = str(line.get("level", "")).lower()
            event = str(line.get("event", ""))
            if line.get("logger") == "asyncio" and all(p in event for p in _SLOW_CALLBACK):
                continue
            if level in ("warning", "error", "critical", "exception") or any(
                key in line for key in ("exception", "exc_info", "stack")
            ):
                found.append(line)
        return found
