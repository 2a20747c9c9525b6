"""``--profile``: sample a Python peer with py-spy during each scenario.

py-spy (``pip install py-spy``) attaches to the server process from outside, so
the server runs unmodified; ``--nonblocking`` keeps its overhead to a few percent.
Each scenario's raw samples land in the work directory, and a summary (frames by
own time and by inclusive time, idle excluded) goes into the results markdown.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def pyspy_path() -> str | None:
    venv = Path(sys.executable).parent / "py-spy"
    return str(venv) if venv.exists() else shutil.which("py-spy")


class Sampler:
    def __init__(self, pid: int, out: Path, rate: int | None = None):
        self.out = out
        rate = rate or int(os.environ.get("BENCH_PYSPY_RATE", "67"))
        exe = pyspy_path()
        self.proc = None
        if exe is None:
            return
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.out if self.out.exists() else None


def _short(frame: str) -> str:
    # "func (path/to/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def summarize(raw: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw) as f:
        for line in f:
            line = line.rstrip()
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = [_short(fr) for fr in stack.split(";")]
            if not any(fr.startswith("Runner.run ") for fr in frames):
                continue  # not the event loop's thread (idle thread-pool workers)
            total += n
            for fr in set(frames):
                incl[fr] += n
            own[frames[-1]] += n
    if not total:
        return "(no samples)"
    lines = [
        f"{total} samples of the event loop's thread. `Runner.run` own time is uvloop's C code "
        "(socket reads, callbacks, polling).",
        "",
        "| own % | frame |",
        "|---|---|",
    ]
    lines += [f"| {100 * c / total:.1f} | `{fr}` |" for fr, c in own.most_common(top)]
    lines += ["", "| inclusive % | frame |", "|---|---|"]
    lines += [f"| {100 * c / total:.1f} | `{fr}` |" for fr, c in incl.most_common(top + 10)]
    return "\n".join(lines)
