"""Load-generator worker processes (subscribers and the publisher).

Each worker is a separate OS process running uvloop, driven by the
orchestrator over a ``multiprocessing`` pipe with small command dicts. The
orchestrator never touches a socket of the system under test itself.

Stream-client worker ops: ``open`` (connect streams, bounded concurrency),
``reset`` (zero the per-stream counters before a measured step), ``stats``
(counters + latencies), ``unready`` (channels whose streams have not yet seen a
readiness probe), ``close``.
Publisher worker ops: ``publish`` (fixed rate for a duration, raw Redis PUBLISH
or Nchan HTTP POST), ``probe`` (seq-0 event to given channels), ``history``
(pre-populate resumable history through the peer's publish path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
import traceback
import uuid
from array import array

from bench.proto import (
    EVENT_RE,
    PipelinedHTTP,
    RespPublisher,
    Sink,
    SSEConn,
    StreamConn,
    WSConn,
    now_ns,
    resp_command,
    sse_request,
    ws_request,
)

SRC_IPS = [f"127.0.0.{i}" for i in range(2, 10)]


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def chan_name(i: int) -> str:
    return f"pt_{i:05d}"


def mint_token(secret: str, sub: str, role: str = "patient", scope: str | None = None) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "sub": sub,
        "role": role,
        "aud": "notify",
        "iss": "notify-dev",
        "iat": now,
        "exp": now + 4 * 3600,
        "jti": uuid.uuid4().hex,
    }
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm="HS256")


def event_json(chan: str, seq: int, sent_ns: int) -> bytes:
    # Key order matters to the generator's regex: seq then sent_ns, last in data.
    return (
        b'{"type":"appointment.updated","patient_id":"%s","appointment_id":"ap_1",'
        b'"occurred_at":"2026-11-27T09:30:00Z","data":{"status":"scheduled",'
        b'"location_id":"loc_3","seq":%d,"sent_ns":%d}}' % (chan.encode(), seq, sent_ns)
    )


# ------------------------------------------------------------------------- subscribers


class StreamClientWorker(Sink):
    def __init__(self):
        self.conns: list[StreamConn] = []
        self.reset()
        self.failed: dict[str, int] = {}
        self.closed_unexpected = 0
        self.n_ready = 0

    def reset(
        self,
        track_fanout: bool = False,
        record_latency: bool = True,
        base_seq: int = 0,
        target_seq: int = 0,
    ):
        self.lat = array("q")
        self.record_latency = record_latency
        self.track_fanout = track_fanout
        self.fanout: dict[int, int] = {}
        n = len(getattr(self, "conns", []))
        self.last = [base_seq] * n
        self.got = [0] * n
        self.dups = [0] * n
        self.probed = [False] * n
        self.target_seq = target_seq
        self.caught_up_ns = [0] * n
        self.closed_unexpected = 0
        self.reset_ns = now_ns()

    # Sink interface -----------------------------------------------------------------
    def on_ready(self, conn):
        self.n_ready += 1

    def on_failed(self, conn, why):
        key = why.split(":")[0][:60]
        self.failed[key] = self.failed.get(key, 0) + 1

    def on_closed(self, conn):
        self.closed_unexpected += 1

    def on_events(self, conn, buf, now):
        sid = conn.sid
        last = self.last[sid]
        for m in EVENT_RE.finditer(buf):
            seq = int(m.group(1))
            if seq == 0:
                self.probed[sid] = True
                continue
            if seq > last:
                last = seq
                self.got[sid] += 1
                if self.record_latency:
                    lat = now - int(m.group(2))
                    self.lat.append(lat)
                    if self.track_fanout:
                        f = self.fanout
                        if lat > f.get(seq, 0):
                            f[seq] = lat
                if seq == self.target_seq:
                    self.caught_up_ns[sid] = now
            else:
                self.dups[sid] += 1
        self.last[sid] = last

    # ops ------------------------------------------------------------------------------
    async def open(self, spec):
        loop = asyncio.get_running_loop()
        host, port = spec["host"], spec["port"]
        kind = spec["kind"]  # "sse" | "ws"
        path_tmpl = spec["path"]
        secret = spec.get("secret")
        conc = spec.get("concurrency", 500)
        timeout = spec.get("timeout_s", 60)
        last_ids = spec.get("last_event_ids") or {}
        subscribe = spec.get("ws_subscribe")
        sem = asyncio.Semaphore(conc)
        base = len(self.conns)
        items = spec["streams"]  # list of channel indexes, one per stream
        # grow the per-stream arrays
        self.last.extend([spec.get("base_seq", 0)] * len(items))
        self.got.extend([0] * len(items))
        self.dups.extend([0] * len(items))
        self.probed.extend([False] * len(items))
        self.caught_up_ns.extend([0] * len(items))
        tokens: dict[int, str] = {}
        if secret:
            for ch in set(items):
                tokens[ch] = mint_token(secret, chan_name(ch))
        before_failed = sum(self.failed.values())
        t0 = now_ns()
        connect_lat = array("q")

        async def one(k: int, ch: int):
            sid = base + k
            name = chan_name(ch)
            path = path_tmpl.replace("{channel}", name)
            tok = tokens.get(ch)
            async with sem:
                fut = loop.create_future()
                if kind == "sse":
                    req = sse_request(
                        host, port, path, tok, last_ids.get(str(ch)) or last_ids.get(ch)
                    )
                    proto = SSEConn(self, sid, ch, req, fut)
                else:
                    req = ws_request(host, port, path, tok)
                    sub = None
                    if subscribe is not None:
                        since = last_ids.get(str(ch)) or last_ids.get(ch)
                        msg = dict(subscribe)
                        if since:
                            msg["since"] = since
                        sub = json.dumps(msg, separators=(",", ":")).encode()
                    proto = WSConn(self, sid, ch, req, fut, subscribe=sub)
                self.conns[sid] = proto
                try:
                    await loop.create_connection(
                        lambda: proto, host, port, local_addr=(SRC_IPS[sid % len(SRC_IPS)], 0)
                    )
                except OSError as exc:
                    if not fut.done():
                        fut.set_result(False)
                    self.on_failed(proto, f"connect {exc.__class__.__name__}")
                    return
                try:
                    ok = await asyncio.wait_for(fut, timeout)
                except TimeoutError:
                    proto.ready_fut = None
                    self.on_failed(proto, "ready timeout")
                    proto.abort()
                    return
                if ok:
                    connect_lat.append(proto.t_ready - proto.t_start)

        self.conns.extend([None] * len(items))  # type: ignore[list-item]
        await asyncio.gather(*(one(k, ch) for k, ch in enumerate(items)))
        elapsed = (now_ns() - t0) / 1e9
        opened = sum(1 for c in self.conns[base:] if c is not None and c.ready and not c.closed)
        refused = sum(1 for c in self.conns[base:] if c is not None and c.refused)
        return {
            "opened": opened,
            "refused": refused,
            "failed": sum(self.failed.values()) - before_failed,
            "fail_reasons": dict(self.failed),
            "elapsed_s": elapsed,
            "connect_lat": connect_lat.tobytes(),
            "t0_ns": t0,
        }

    def unready(self):
        return sorted(
            {
                c.chan
                for i, c in enumerate(self.conns)
                if c is not None and not c.closed and not self.probed[i]
            }
        )

    def stats(self, detail: bool = True):
        live = sum(1 for c in self.conns if c is not None and not c.closed)
        per_chan_got: dict[int, list[int]] = {}
        out = {
            "streams": len(self.conns),
            "live": live,
            "got_total": sum(self.got),
            "dups_total": sum(self.dups),
            "closed_unexpected": self.closed_unexpected,
            "refused": sum(1 for c in self.conns if c is not None and c.refused),
            "pings": sum(c.pings for c in self.conns if c is not None),
            "fail_reasons": dict(self.failed),
        }
        if detail:
            for i, c in enumerate(self.conns):
                if c is None:
                    continue
                per_chan_got.setdefault(c.chan, []).append(self.got[i])
            out["per_chan_got"] = per_chan_got
            out["lat"] = self.lat.tobytes()
            out["fanout"] = self.fanout
            out["caught_up_ns"] = [t for t in self.caught_up_ns if t]
            out["not_caught_up"] = sum(
                1 for i, t in enumerate(self.caught_up_ns) if not t and self.conns[i] is not None
            )
            out["ready_ns"] = [c.t_ready for c in self.conns if c is not None and c.t_ready]
        return out

    def churn_close(self, polite_every: int = 2):
        """End every stream, one in `polite_every` politely (a WebSocket close frame,
        then FIN), the others with a TCP reset; forget them all."""
        polite = reset = 0
        for i, c in enumerate(self.conns):
            if c is None or c.closed or c.transport is None:
                continue
            if i % polite_every == 0:
                polite += 1
                c.close_politely()
            else:
                reset += 1
                c.abort()
        self.close()
        return {"polite": polite, "reset": reset}

    def close(self):
        for c in self.conns:
            if c is not None:
                c.abort()
        self.conns = []
        self.failed = {}
        self.n_ready = 0
        self.reset()


# --------------------------------------------------------------------------- publisher


class PublisherWorker:
    def __init__(self):
        self.seq: dict[int, int] = {}
        self.redis: RespPublisher | None = None
        self.https: list[PipelinedHTTP] = []
        self.target: dict | None = None

    async def connect(self, target):
        loop = asyncio.get_running_loop()
        for old in ([self.redis] if self.redis is not None else []) + self.https:
            if old.transport is not None:
                old.transport.close()
        self.redis = None
        self.https = []
        self.seq = {}
        self.target = target
        if target["publish"] == "redis":
            _, self.redis = await loop.create_connection(
                RespPublisher, target["redis_host"], target["redis_port"]
            )
        else:
            self.https = []
            for _ in range(target.get("http_conns", 2)):
                _, p = await loop.create_connection(PipelinedHTTP, target["host"], target["port"])
                self.https.append(p)
        return {"ok": True}

    async def _ensure_http(self) -> None:
        """Replace publisher connections the peer closed (e.g. keepalive_requests)."""
        if self.redis is not None or not self.https:
            return
        loop = asyncio.get_running_loop()
        t = self.target
        for i, p in enumerate(self.https):
            if p.transport is None or p.transport.is_closing():
                _, self.https[i] = await loop.create_connection(PipelinedHTTP, t["host"], t["port"])

    def _build(self, chans: list[int], seqs: list[int], sent: int) -> bytes:
        t = self.target
        if t["publish"] == "redis":
            prefix = t.get("channel_prefix", "notify:patient:").encode()
            # The key scheme's hash tag: notify:patient:{pt_00001}.
            return b"".join(
                resp_command(
                    b"PUBLISH",
                    prefix + b"{" + chan_name(c).encode() + b"}",
                    event_json(chan_name(c), s, sent),
                )
                for c, s in zip(chans, seqs, strict=False)
            )
        hostport = f"{t['host']}:{t['port']}".encode()
        out = []
        for c, s in zip(chans, seqs, strict=False):
            body = event_json(chan_name(c), s, sent)
            out.append(
                b"POST /pub/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (chan_name(c).encode(), hostport, len(body), body)
            )
        return b"".join(out)

    def _write(self, raw: bytes, n: int, k: int = 0):
        if self.redis is not None:
            self.redis.transport.write(raw)
            self.redis.sent += n
        else:
            self.https[k % len(self.https)].send(raw, n)

    def _send(self, chans: list[int], seqs: list[int]) -> None:
        """Publish one batch. Over HTTP a channel always uses the same connection,
        so that its events keep their order (pipelined requests on one connection
        are handled in order; across connections they are not)."""
        sent = now_ns()
        if self.redis is not None or len(self.https) == 1:
            self._write(self._build(chans, seqs, sent), len(chans), 0)
            return
        n = len(self.https)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for c, s in zip(chans, seqs, strict=False):
            g = groups.setdefault(c % n, ([], []))
            g[0].append(c)
            g[1].append(s)
        for k, (cs, ss) in groups.items():
            self._write(self._build(cs, ss, sent), len(cs), k)

    def _backlog(self) -> int:
        if self.redis is not None:
            return self.redis.sent - self.redis.replies
        return sum(p.pending for p in self.https)

    async def probe(self, chans: list[int]):
        await self._ensure_http()
        for i in range(0, len(chans), 2000):
            part = chans[i : i + 2000]
            self._send(part, [0] * len(part))
            await asyncio.sleep(0)
        await self._drain(5)
        return {"sent": len(chans)}

    async def _drain(self, timeout: float):  # noqa: ASYNC109
        t_end = time.monotonic() + timeout
        while self._backlog() > 0 and time.monotonic() < t_end:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def reset(self):
        self.seq = {}
        return {"ok": True}

    async def publish(self, spec):
        """Publish ``rate`` events/s for ``duration_s`` round-robin over ``channels``."""
        await self._ensure_http()
        chans: list[int] = spec["channels"]
        rate = float(spec["rate"])
        duration = float(spec["duration_s"])
        total = max(1, round(rate * duration))
        tick = spec.get("tick_s", 0.002)
        max_backlog = spec.get("max_backlog", 200000)
        seq = self.seq
        start_seq = {c: seq.get(c, 0) for c in set(chans)}
        nch = len(chans)
        sent = 0
        t0 = time.monotonic()
        k = 0
        stalled = 0.0
        while sent < total:
            now = time.monotonic()
            due = min(total, int((now - t0) * rate) + 1) - sent
            if due > 0:
                if self._backlog() > max_backlog:
                    stalled += tick
                else:
                    due = min(due, 5000)
                    batch_ch = [chans[(sent + i) % nch] for i in range(due)]
                    batch_seq = []
                    for c in batch_ch:
                        s = seq.get(c, 0) + 1
                        seq[c] = s
                        batch_seq.append(s)
                    self._send(batch_ch, batch_seq)
                    k += 1
                    sent += due
            if sent < total:
                await asyncio.sleep(tick)
        t_pub = time.monotonic() - t0
        await self._drain(10)
        return {
            "sent": sent,
            "elapsed_s": t_pub,
            "achieved_rate": sent / t_pub if t_pub > 0 else float("inf"),
            "backlog_after": self._backlog(),
            "stalled_s": stalled,
            "expected": {c: seq.get(c, 0) - start_seq[c] for c in set(chans)},
        }

    async def history(self, spec):
        """Pre-populate resumable history: ``per_channel`` events per channel.

        Returns the id of each channel's first event (the ``Last-Event-ID`` a
        client that saw only that one would resume from).
        mode "ours-http": POST /v1/events with a service token (our publish path).
        mode "nchan": POST /pub/<ch> with Accept: text/json (Nchan's message id).
        mode "none": raw PUBLISH with nobody listening (the baseline has no history).
        """
        mode = spec["mode"]
        chans = spec["channels"]
        per = spec["per_channel"]
        first_ids: dict[int, str] = {}
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        if mode == "none":
            for s in range(1, per + 1):
                for i in range(0, len(chans), 2000):
                    part = chans[i : i + 2000]
                    self._send(part, [s] * len(part))
                    await asyncio.sleep(0)
            await self._drain(10)
            return {"first_ids": {}, "elapsed_s": time.monotonic() - t0}
        t = self.target
        hostport = f"{t['host']}:{t['port']}".encode()
        if not self.https:  # Redis-published peer: its history path is HTTP (POST /v1/events)
            for _ in range(t.get("http_conns", 2)):
                _, p = await loop.create_connection(PipelinedHTTP, t["host"], t["port"])
                self.https.append(p)
        conns = self.https
        token = spec.get("service_token")
        window = spec.get("window", 64)
        errors: dict[int, int] = {}
        for s in range(1, per + 1):
            futs_all = []
            for i, c in enumerate(chans):
                body = event_json(chan_name(c), s, now_ns())
                if mode == "nchan":
                    req = (
                        b"POST /pub/%s HTTP/1.1\r\nHost: %s\r\nAccept: text/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s"
                        % (chan_name(c).encode(), hostport, len(body), body)
                    )
                else:
                    req = (
                        b"POST /v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                        % (hostport, token.encode(), len(body), body)
                    )
                fut = loop.create_future()
                p = conns[i % len(conns)]
                p.send(req, 1, [fut])
                futs_all.append((c, fut))
                if p.pending > window:
                    await asyncio.sleep(0)
                    while p.pending > window:  # noqa: ASYNC110
                        await asyncio.sleep(0.001)
            for c, fut in futs_all:
                status, body = await fut
                if status >= 300:
                    errors[status] = errors.get(status, 0) + 1
                    continue
                if s == 1:
                    j = json.loads(body)
                    first_ids[c] = str(j.get("last_message_id") or j.get("id"))
        return {"first_ids": first_ids, "elapsed_s": time.monotonic() - t0, "errors": errors}


# ------------------------------------------------------------------------------ main


def worker_main(conn, role: str) -> None:
    run_worker(conn, role, lambda: StreamClientWorker() if role == "sub" else PublisherWorker())


def run_worker(conn, role: str, make) -> None:
    """A generator process: serve the harness's commands to the worker `make()` builds."""
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(conn, role, make))


async def _serve(conn, role: str, make) -> None:
    loop = asyncio.get_running_loop()
    w = make()
    while True:
        msg = await loop.run_in_executor(None, conn.recv)
        op = msg.pop("op")
        try:
            if op == "exit":
                if isinstance(w, StreamClientWorker):
                    w.close()
                conn.send({"ok": True})
                return
            fn = getattr(w, op)
            res = fn(**msg) if msg else fn()
            if asyncio.iscoroutine(res):
                res = await res
            conn.send(res if res is not None else {"ok": True})
        except Exception as exc:  # report, keep serving
            conn.send(
                {"error": f"{exc.__class__.__name__}: {exc}", "trace": traceback.format_exc()}
            )
        await asyncio.sleep(0)
        if os.environ.get("BENCH_WORKER_DEBUG"):
            print(role, op, "done", flush=True)
