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

if os.environ.get("BENCH_GCSTATS"):
    # Diagnosis: how long the cyclic garbage collector stops the event loop.
    import atexit
    import gc
    import time

    _gc_start = [0.0]
    _gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def _gc_cb(phase, info):  # pragma: no cover - diagnosis helper
        if phase == "start":
            _gc_start[0] = time.perf_counter()
        else:
            _gc_pauses[info["generation"]].append(time.perf_counter() - _gc_start[0])
            # Written as it goes: the server may be killed rather than exit.
            if info["generation"] == 2 or sum(map(len, _gc_pauses.values())) % 200 == 0:
                _gc_report()

    gc.callbacks.append(_gc_cb)

    def _gc_report():  # pragma: no cover - diagnosis helper
        out = os.environ.get("BENCH_GCSTATS_OUT", "/tmp/gcstats.txt")
        with open(out + ".tmp", "w") as f:
            for gen, pauses in _gc_pauses.items():
                if not pauses:
                    f.write(f"gen{gen}: 0 collections\n")
                    continue
                p = sorted(pauses)
                f.write(
                    f"gen{gen}: {len(p)} collections, total {sum(p) * 1000:.0f} ms, "
                    f"p50 {p[len(p) // 2] * 1000:.2f} ms, p99 {p[int(0.99 * (len(p) - 1))] * 1000:.2f} ms, "
                    f"max {p[-1] * 1000:.1f} ms\n"
                )
            f.write(f"gc thresholds {gc.get_threshold()}, counts {gc.get_count()}\n")
        os.replace(out + ".tmp", out)

    atexit.register(_gc_report)

if os.environ.get("BENCH_GC_FREEZE_AFTER_S"):
    # Experiment (what would gc.freeze() after start-up buy?): once the server has
    # started, move everything allocated so far out of the collector's scans.
    import gc
    import threading

    def _freeze() -> None:  # pragma: no cover - diagnosis helper
        gc.collect()
        gc.freeze()
        if os.environ.get("BENCH_GC_THRESHOLD"):  # e.g. "10000,10,10"
            gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))

    threading.Timer(float(os.environ["BENCH_GC_FREEZE_AFTER_S"]), _freeze).start()
