"""``python -m bench``: our service vs the tutorial baseline vs Nchan, in one run.

    python -m bench --quick            # `make bench`: about two minutes
    python -m bench --full             # the targets' sizes (10,000 streams): ~15 minutes
    python -m bench --targets ours,nchan --scenarios idle,broadcast
    python -m bench --calibrate        # generator ceiling against a bare-asyncio fan-out
    python -m bench churn              # RSS under 100,000 short connections (bench/churn.py)
    python -m bench restart            # SIGTERM + restart with 5,000 SSE clients (bench/restart.py)
    python -m bench targets            # issue 15's table, every row (bench/targets.py)
    python -m bench shards             # unicast through 1 vs 3 Redis Cluster shards (bench/shards.py)
    python -m bench half_open          # 4,000 half-open requests: cost and end (bench/half_open.py)
    python -m bench outbox             # the PostgreSQL outbox relay: rows/s with 1 and 2 relays, COMMIT -> client p50/p99

Writes the markdown table to stdout and to bench/results/ (plus the raw JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench import peers, profiling, report, scenarios
from bench.scenarios import FULL, QUICK, Harness

ALL_SCENARIOS = ["idle", "storm", "unicast", "broadcast", "ws_broadcast", "ws_unicast"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_target(
    name: str,
    h: Harness,
    redis: peers.Redis,
    prof,
    wanted: list[str],
    workdir: Path,
    profile: bool = False,
) -> dict:
    redis.flush()
    if name == "ours":
        peer = peers.start_ours(redis, workdir, prof.heartbeat_s)
    elif name == "baseline":
        peer = peers.start_baseline(redis, workdir, prof.heartbeat_s)
    elif name == "nchan":
        peer = peers.start_nchan(workdir, prof.heartbeat_s)
    elif name == "trivial":
        peer = peers.start_trivial(redis, workdir, prof.heartbeat_s)
    else:
        raise ValueError(name)
    log(
        f"== {name} on 127.0.0.1:{peer.port} (pid {peer.proc.pid}), RSS {peer.rss_kb() / 1024:.1f} MiB"
    )
    h.pub_call("connect", target=scenarios.target_spec(peer, redis))
    out: dict = {"port": peer.port}
    plan = []
    for sc in wanted:
        if sc == "unicast":
            plan += [
                (f"unicast_{n}", lambda n=n: scenarios.sc_unicast(h, peer, redis, prof, log, n))
                for n in prof.unicast_patients
            ]
        elif sc == "ws_unicast":
            n = prof.ws_unicast_patients
            plan.append(
                (
                    f"ws_unicast_{n}",
                    lambda n=n: scenarios.sc_unicast(h, peer, redis, prof, log, n, kind="ws"),
                )
            )
        elif sc == "broadcast":
            plan.append(("broadcast", lambda: scenarios.sc_broadcast(h, peer, redis, prof, log)))
        elif sc == "ws_broadcast":
            plan.append(
                (
                    "ws_broadcast",
                    lambda: scenarios.sc_broadcast(h, peer, redis, prof, log, kind="ws"),
                )
            )
        elif sc == "idle":
            plan.append(("idle", lambda: scenarios.sc_idle(h, peer, redis, prof, log)))
        elif sc == "storm":
            plan.append(("storm", lambda: scenarios.sc_storm(h, peer, redis, prof, log)))
    try:
        for key, fn in plan:
            if name == "trivial" and key not in ("broadcast", "unicast_1000"):
                continue
            log(f"-- {name}: {key}")
            t0 = time.monotonic()
            sampler = None
            if profile and name in ("ours", "baseline"):
                sampler = profiling.Sampler(peer.proc.pid, workdir / f"{name}-{key}.pyspy.txt")
            try:
                out[key] = fn()
            except Exception as exc:  # keep going: one broken scenario must not lose the run
                log(
                    f"   {key} failed: {exc}\n{traceback.format_exc()}\n--- server log tail:\n{peer.log_tail()}"
                )
                out[key] = {
                    "error": str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                }
                with contextlib.suppress(Exception):
                    scenarios.close_streams(h)
            out[key + "_wall_s"] = round(time.monotonic() - t0, 1)
            if sampler is not None:
                raw = sampler.stop()
                if raw is not None:
                    out.setdefault("profiles", {})[key] = profiling.summarize(raw)
            if not peer.alive():
                log(f"   {name} server died:\n{peer.log_tail()}")
                out["died"] = True
                break
            if redis.proc.poll() is not None:
                raise RuntimeError("benchmark redis died")
    finally:
        peer.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["churn"]:
        from bench import churn

        return churn.main(args[1:])
    if args[:1] == ["targets"]:
        from bench import targets

        return targets.main(args[1:])
    if args[:1] == ["shards"]:
        from bench import shards

        return shards.main(args[1:])
    if args[:1] == ["half_open"]:
        from bench import half_open

        return half_open.main(args[1:])
    if args[:1] == ["outbox"]:
        from bench import outbox

        return outbox.main(args[1:])
    if args[:1] == ["restart"]:
        from bench import restart

        return restart.main(args[1:])
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="short run, ~2 minutes (default)")
    g.add_argument(
        "--full", action="store_true", help="the issue's sizes: 10,000 streams, longer steps"
    )
    ap.add_argument(
        "--targets", default="ours,baseline,nchan", help="comma list of ours,baseline,nchan,trivial"
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help="comma list of " + ",".join(ALL_SCENARIOS),
    )
    ap.add_argument("--subs", type=int, default=2, help="subscriber processes in the generator")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file tag (default: the profile name)")
    ap.add_argument(
        "--no-write", action="store_true", help="print only, write nothing under bench/results"
    )
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="never apt-get install Nchan; skip its column instead",
    )
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="add the bare-asyncio 'trivial' peer (generator ceiling)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample ours and the baseline with py-spy during each scenario (summary in the report)",
    )
    ap.add_argument(
        "--gcstats",
        action="store_true",
        help="diagnosis: record the garbage collector's pauses in the Python peers",
    )
    ap.add_argument(
        "--memprofile",
        action="store_true",
        help="diagnosis: tracemalloc growth per idle stream in the Python peers (slows them)",
    )
    ap.add_argument("--note", action="append", default=[], help="a note to add to the report")
    a = ap.parse_args(argv)

    prof = FULL if a.full else QUICK
    if a.gcstats:
        os.environ["BENCH_GCSTATS"] = "1"
    if a.memprofile:
        os.environ["BENCH_TRACEMALLOC"] = "1"
        os.environ["BENCH_TRACEMALLOC_STREAMS"] = str(prof.idle_streams)
    targets = [t for t in a.targets.split(",") if t]
    if a.calibrate and "trivial" not in targets:
        targets.append("trivial")
    wanted = [s for s in a.scenarios.split(",") if s]
    bad = set(wanted) - set(ALL_SCENARIOS)
    if bad:
        ap.error(f"unknown scenarios {sorted(bad)}")

    skipped: dict[str, str] = {}
    if "ours" in targets:
        ok, why = peers.ours_available()
        if not ok:
            skipped["ours"] = why
            targets.remove("ours")
    if "nchan" in targets:
        ok, why = peers.ensure_nchan(install=not a.no_install)
        if not ok:
            skipped["nchan"] = why
            targets.remove("nchan")
    for name, why in skipped.items():
        log(f"bench: skipping {name}: {why}")

    if not shutil.which("redis-server"):
        log(
            "bench: redis-server not found (apt-get install redis-server); it is needed for ours and the baseline"
        )
        return 2
    workdir = peers.make_workdir()
    t_start = time.monotonic()
    results = {
        "meta": {
            "profile": prof.name,
            "profile_params": prof.__dict__,
            "machine": report.machine(),
            "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "n_subs": a.subs,
        },
        "targets": {},
        "skipped": skipped,
        "notes": list(a.note),
    }
    redis = peers.Redis(workdir)
    h = Harness(a.subs)
    try:
        for t in targets:
            results["targets"][t] = run_target(t, h, redis, prof, wanted, workdir, a.profile)
    except KeyboardInterrupt:
        log("bench: interrupted; reporting what was measured")
    finally:
        h.close()
        redis.stop()
    results["meta"]["wall_s"] = time.monotonic() - t_start
    md = report.render(results)
    print(md)
    if not a.no_write:
        md_path, json_path = report.write(results, a.out, a.tag or prof.name)
        log(f"bench: wrote {md_path} and {json_path}")
    log(f"bench: logs and server output in {workdir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
