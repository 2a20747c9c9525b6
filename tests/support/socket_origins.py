"""Where each socket of the test process was opened, named in the report of one
that was collected unclosed.

A socket left open is closed by its finalizer with a `ResourceWarning`, which the
suite turns into an error of whichever test's phase the collection ran in, not
the test that opened it, and without tracemalloc (too slow for the loop guard)
the report cannot say where it came from. `install()` notes a few frames of the
caller of every `socket.socket` made from then on (a weak reference and file:line
pairs: nothing is kept alive), and wraps `sys.unraisablehook` (pytest's, once
installed) so that such a report starts with where its socket was opened.
"""

from __future__ import annotations

import socket
import sys
import weakref
from types import FrameType, SimpleNamespace
from typing import Any, Final

FRAMES: Final = 12
_PRUNE_EVERY: Final = 4096

_origins: dict[int, tuple[weakref.ref[socket.socket], tuple[str, ...]]] = {}
_made = 0
_init: Any = None


def _where() -> tuple[str, ...]:
    frames: list[str] = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and len(frames) < FRAMES:
        code = frame.f_code
        frames.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(frames)


def _init_noting_origin(self: socket.socket, *args: Any, **kwargs: Any) -> None:
    global _made
    _init(self, *args, **kwargs)
    _origins[id(self)] = (weakref.ref(self), _where())
    _made += 1
    if _made % _PRUNE_EVERY == 0:
        for key in [k for k, (ref, _) in _origins.items() if ref() is None]:
            del _origins[key]


def origin(obj: object) -> tuple[str, ...] | None:
    """Where `obj` (a socket being finalized, its weak references already cleared)
    was opened, if it was noted."""
    if not isinstance(obj, socket.socket):
        return None
    entry = _origins.get(id(obj))
    if entry is None:
        return None
    ref, frames = entry
    alive = ref()
    return frames if alive is None or alive is obj else None


def install() -> None:
    """Note every socket opened from now on, and name its origin in the report of
    an unraisable exception (the unclosed-socket `ResourceWarning`)."""
    global _init
    if _init is not None:
        return
    _init = socket.socket.__init__
    socket.socket.__init__ = _init_noting_origin  # type: ignore[method-assign]
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        previous(with_origin(unraisable))

    sys.unraisablehook = hook


def with_origin(unraisable: Any) -> Any:
    """`unraisable` (`sys.UnraisableHookArgs`), its message starting with where its
    object was opened when that is a socket noted here."""
    frames = origin(unraisable.object)
    if frames is None:
        return unraisable
    opened = "\n    ".join(frames)
    err_msg = unraisable.err_msg or "Exception ignored in"
    return SimpleNamespace(
        exc_type=unraisable.exc_type,
        exc_value=unraisable.exc_value,
        exc_traceback=unraisable.exc_traceback,
        err_msg=f"{err_msg} (a socket opened at, innermost first:\n    {opened}\n)",
        object=unraisable.object,
    )
