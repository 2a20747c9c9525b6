"""Diagnosis only (``python -m bench --memprofile``): tracemalloc in a server process.

Put on PYTHONPATH by the bench launcher when BENCH_TRACEMALLOC is set. Each
SIGUSR2 takes a snapshot; from the second one on, the growth since the previous
snapshot is written to $BENCH_TRACEMALLOC_OUT (by line and by traceback), which
is where the per-connection memory of an idle stream goes.
"""

import os

if os.environ.get("BENCH_TRACEMALLOC"):
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "12")))
    _snaps: list = []

    def _dump(signum, frame):  # pragma: no cover - diagnosis helper
        snap = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ]
        )
        _snaps.append(snap)
        if len(_snaps) < 2:
            return
        out = os.environ.get("BENCH_TRACEMALLOC_OUT", "/tmp/tracemalloc.txt")
        n = int(os.environ.get("BENCH_TRACEMALLOC_STREAMS", "1")) or 1
        with open(out + ".tmp", "w") as f:
            diff = snap.compare_to(_snaps[-2], "lineno")
            total = sum(d.size_diff for d in diff)
            f.write(
                f"# growth {total / 1024:.0f} KiB in Python allocations = {total / n / 1024:.2f} KiB per stream ({n} streams)\n\n"
            )
            f.write("## by file\n")
            for d in snap.compare_to(_snaps[-2], "filename")[:25]:
                f.write(
                    f"{d.size_diff / n:9.0f} B/stream {d.count_diff / n:7.2f} blocks/stream  {d.traceback[0].filename}\n"
                )
            f.write("\n## by line\n")
            for d in diff[:45]:
                f.write(
                    f"{d.size_diff / n:9.0f} B/stream {d.count_diff / n:7.2f} blocks/stream  {d.traceback[0]}\n"
                )
            f.write("\n## by traceback (top 12)\n")
            for d in snap.compare_to(_snaps[-2], "traceback")[:12]:
                f.write(
                    f"\n{d.size_diff / n:9.0f} B/stream {d.count_diff / n:7.2f} blocks/stream\n"
                )
                for line in d.traceback.format()[-16:]:
                    f.write("    " + line + "\n")
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR2, _dump)
