"""Start and stop the systems under test (and the benchmark's own Redis).

Every peer runs as its own OS process (never inside the generator), bound to
127.0.0.1 on a free port, with ``RLIMIT_NOFILE`` raised to the hard limit.

* ``ours``: our service, ``notify serve`` (falls back to
  ``uvicorn --factory service.main:create_app``) with NOTIFY_* settings.
* ``baseline``: ``bench/baselines/tutorial_sse.py`` under uvicorn.
* ``nchan``: nginx + Debian's ``libnginx-mod-nchan``, one worker process.
* ``trivial``: ``bench/trivial_server.py``, a bare-asyncio fan-out used only to
  show the generator's ceiling.
* ``floor``: ``bench/floor_sse.py``, the least an authenticated SSE stream costs in
  Python (uvloop, httptools, PyJWT per connect, no Redis, no events): issue 23's floor.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.setsid()


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class Peer:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    # generator settings for this peer
    ws_subscribe: dict[str, Any] | None
    publish: str  # "redis" | "nchan" | "none" (the floor: nothing to publish to)
    history: str  # "ours-http" | "nchan" | "none"
    # Our API's routes unless the peer has its own (Nchan).
    sse_path: str = "/v1/patients/me/events"
    ws_path: str = "/v1/ws"
    auth: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def procs(self) -> list[int]:
        """The server's pid and its descendants (nginx: master + worker)."""
        return procstat.tree(self.proc.pid)

    def rss_kb(self) -> int:
        return sum(procstat.rss_kb(pid) for pid in self.procs())

    def cpu_s(self) -> float:
        return sum(procstat.cpu_s(pid) for pid in self.procs())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Redis:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log = workdir / "redis.log"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "19000",
                "--dir",
                str(workdir),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        wait_port(self.port, 10, self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port)
        r.flushall()
        r.close()

    def cpu_s(self) -> float:
        return procstat.cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _spawn(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("PYTHONPATH", str(REPO))
    if any(
        os.environ.get(k) for k in ("BENCH_TRACEMALLOC", "BENCH_GCSTATS", "BENCH_GC_FREEZE_AFTER_S")
    ):
        # --memprofile / --gcstats: diagnosis hooks in the Python peers
        full_env["PYTHONPATH"] = f"{BENCH_DIR / 'memprof'}:{full_env['PYTHONPATH']}"
        full_env["BENCH_TRACEMALLOC_OUT"] = str(log.with_suffix(".tracemalloc.txt"))
        full_env["BENCH_GCSTATS_OUT"] = str(log.with_suffix(".gcstats.txt"))
    # The child gets its own copy of the descriptor; the parent's is closed at once.
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd,
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            preexec_fn=_raise_nofile,
        )


def ours_available() -> tuple[bool, str]:
    if not (REPO / "service" / "main.py").exists():
        return False, "service/main.py not found (our service is not in this tree yet)"
    return True, ""


def start_ours(
    redis: Redis,
    workdir: Path,
    heartbeat_s: float,
    *,
    port: int | None = None,
    env_overrides: dict[str, str] | None = None,
    log_name: str = "ours.log",
    shared_socket_workers: int | None = None,
) -> Peer:
    """`notify serve`; with `shared_socket_workers`, uvicorn's own multi-process
    mode instead (one listening socket shared by every worker, as `notify serve`
    did before issue 23), the A side of the workers row."""
    port = port or free_port()
    log = workdir / log_name
    env = {
        "NOTIFY_ENV": "development",
        "NOTIFY_HOST": "127.0.0.1",
        "NOTIFY_PORT": str(port),
        "NOTIFY_WORKERS": "1",
        "NOTIFY_REDIS_URL": redis.url,
        "NOTIFY_JWT_SECRET": JWT_SECRET,
        "NOTIFY_HEARTBEAT_S": str(heartbeat_s),
        "NOTIFY_MAX_CONNECTIONS": "50000",
        "NOTIFY_MAX_CONNECTIONS_PER_SUBJECT": "50000",
        "NOTIFY_LOG_LEVEL": "warning",
        "NOTIFY_LOG_FORMAT": "json",
    }
    env.update(env_overrides or {})
    env.update({k: v for k, v in os.environ.items() if k.startswith("BENCH_NOTIFY_")})
    env = {k.replace("BENCH_NOTIFY_", "NOTIFY_"): v for k, v in env.items()}
    notify = REPO / ".venv" / "bin" / "notify"
    if shared_socket_workers:
        cmd = uvicorn_cmd("--factory", "service.main:create_app", port=port)
        cmd += ["--workers", str(shared_socket_workers)]
    elif notify.exists() and not os.environ.get("BENCH_OURS_UVICORN"):
        cmd = [str(notify), "serve"]
    else:
        cmd = uvicorn_cmd("--factory", "service.main:create_app", port=port)
    proc = _spawn(cmd, env, log)
    wait_port(port, 30, proc)
    return Peer(
        "ours",
        port,
        proc,
        workdir,
        log,
        ws_subscribe={"type": "subscribe"},
        publish="redis",
        history="ours-http",
    )


def uvicorn_cmd(*app: str, port: int) -> list[str]:
    """The same uvicorn flags for every Python peer, so they are compared alike."""
    return [
        python(),
        "-m",
        "uvicorn",
        *app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "2",
        "--backlog",
        "4096",
    ]


def start_baseline(redis: Redis, workdir: Path, heartbeat_s: float) -> Peer:
    port = free_port()
    log = workdir / "baseline.log"
    env = {
        "BASELINE_REDIS_URL": redis.url,
        "BASELINE_JWT_SECRET": JWT_SECRET,
        "BASELINE_HEARTBEAT_S": str(heartbeat_s),
        "BASELINE_REDIS_MAX_CONNECTIONS": "50000",
    }
    cmd = uvicorn_cmd("bench.baselines.tutorial_sse:app", port=port)
    proc = _spawn(cmd, env, log)
    wait_port(port, 30, proc)
    return Peer(
        "baseline",
        port,
        proc,
        workdir,
        log,
        ws_subscribe={"type": "subscribe"},
        publish="redis",
        history="none",
    )


def start_trivial(redis: Redis, workdir: Path, heartbeat_s: float) -> Peer:
    port = free_port()
    log = workdir / "trivial.log"
    cmd = [
        python(),
        "-m",
        "bench.trivial_server",
        "--port",
        str(port),
        "--redis-port",
        str(redis.port),
    ]
    proc = _spawn(cmd, {}, log)
    wait_port(port, 30, proc)
    return Peer(
        "trivial",
        port,
        proc,
        workdir,
        log,
        ws_subscribe=None,
        publish="redis",
        history="none",
    )


def start_floor(workdir: Path, *, port: int | None = None, log_name: str = "floor.log") -> Peer:
    """`bench/floor_sse.py` with our service's token settings (secret, audience,
    issuer): it answers every path with a held SSE stream and publishes nothing, so
    the generator's readiness barrier does not apply to it (`publish="none"`)."""
    port = port or free_port()
    log = workdir / log_name
    env = {
        "NOTIFY_JWT_SECRET": JWT_SECRET,
        "NOTIFY_JWT_AUDIENCE": "notify",
        "NOTIFY_JWT_ISSUER": "notify-dev",
    }
    proc = _spawn([python(), "-m", "bench.floor_sse", "--port", str(port)], env, log)
    wait_port(port, 30, proc)
    return Peer(
        "floor",
        port,
        proc,
        workdir,
        log,
        ws_subscribe=None,
        publish="none",
        history="none",
    )


def ensure_nchan(install: bool) -> tuple[bool, str]:
    """Nchan present? Optionally install Debian's package (root + apt only)."""
    if shutil.which("nginx") and NCHAN_MODULE.exists():
        return True, ""
    if install and shutil.which("apt-get") and os.geteuid() == 0:
        print(
            "bench: Nchan missing, installing nginx + libnginx-mod-nchan with apt-get ...",
            file=sys.stderr,
        )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        ok = (
            subprocess.run(
                [
                    "apt-get",
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "nginx",
                    "libnginx-mod-nchan",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ).returncode
            == 0
        )
        if not ok:
            subprocess.run(
                ["apt-get", "update", "-qq"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            ok = (
                subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "nginx", "libnginx-mod-nchan"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ).returncode
                == 0
            )
        # Debian's package may start a system nginx on :80; the benchmark never uses it.
        if ok and shutil.which("nginx") and NCHAN_MODULE.exists():
            return True, ""
        return False, "apt-get install nginx libnginx-mod-nchan failed"
    if not shutil.which("nginx") or not NCHAN_MODULE.exists():
        return False, (
            "Nchan not installed (need nginx and libnginx-mod-nchan: "
            "`apt-get install nginx libnginx-mod-nchan`, or run as root with apt for auto-install)"
        )
    return True, ""


def start_nchan(workdir: Path, heartbeat_s: float) -> Peer:
    port = free_port()
    d = workdir / "nchan"
    d.mkdir(parents=True, exist_ok=True)
    tmpl = (BENCH_DIR / "nchan" / "nginx.conf.tmpl").read_text()
    conf = (
        tmpl.replace("{{dir}}", str(d))
        .replace("{{port}}", str(port))
        .replace("{{heartbeat_s}}", str(max(1, round(heartbeat_s))))
    )
    (d / "nginx.conf").write_text(conf)
    log = workdir / "nchan.log"
    proc = _spawn(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], {}, log, cwd=d)
    wait_port(port, 15, proc)
    return Peer(
        "nchan",
        port,
        proc,
        workdir,
        log,
        sse_path="/sub/{channel}",
        ws_path="/sub/{channel}",
        ws_subscribe=None,
        publish="nchan",
        history="nchan",
        auth=False,
    )


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="notify-bench-"))
