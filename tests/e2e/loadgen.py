"""A bounded load generator for POST /v1/chat/completions (or any JSON POST).

Open loop: request i is due at ``start + i / rate`` whether or not earlier ones
have been answered, as clients of a shared quota behave. In-flight requests are
bounded by ``max_in_flight`` (one request per HTTP/1.1 keep-alive connection,
no pipelining); when every connection is busy a due request either waits for one
(``on_saturation="wait"``, its real send time is recorded, so lag is visible) or
is dropped (``"drop"``). ``rate=None`` is closed loop: every connection sends
its next request as soon as the previous one is answered (for throughput).

``connections`` connections are opened before the clock starts and reused in
FIFO order, so the load is spread over all of them (and so over Envoy's
workers, which accept connections independently). The total number of requests
and the run time are bounded; the run always stops by itself.

Plain asyncio streams, no third-party HTTP client: cheap enough to offer a few
hundred requests per second from one Python process on a 2-core machine.

Per request it records the scheduled and actual send times, the completion
time, the status, the response headers (lowercase, repeats joined with ", "),
``usage`` from a JSON body, and the error body of non-200 answers.

From the command line::

    .venv/bin/python tests/e2e/loadgen.py --url http://127.0.0.1:10000/v1/chat/completions \\
        --rate 100 --duration 30 --max-in-flight 64 --output-tokens 50 --json /tmp/run.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable
from urllib.parse import urlsplit

DEFAULT_PROMPT = "Explain in two sentences why retries need jitter."


def chat_body(model: str = "gpt-4o-mini", prompt: str = DEFAULT_PROMPT, max_tokens: int | None = None,
              stream: bool = False) -> bytes:
    """A compact chat-completions body."""
    b: dict = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if stream:
        b["stream"] = True
    return json.dumps(b, separators=(",", ":")).encode()


@dataclass
class Result:
    idx: int
    t_sched: float  # when it was due, seconds since the run's start
    t_send: float  # when its bytes were written
    t_done: float  # when the whole answer was read (or the error happened)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict | None = None  # "usage" of a 2xx answer (JSON body, or the last SSE event carrying one)
    error_body: dict | str | None = None  # the body of non-2xx answers
    error: str | None = None  # transport error
    conn: int = -1

    @property
    def latency(self) -> float:
        return self.t_done - self.t_send

    @property
    def tokens(self) -> int:
        """prompt + completion tokens the answer reports (0 when none)."""
        if not self.usage:
            return 0
        return int(self.usage.get("prompt_tokens", 0)) + int(self.usage.get("completion_tokens", 0))


@dataclass
class Run:
    results: list[Result]
    dropped: list[float]  # scheduled times of requests dropped at saturation
    duration: float  # configured duration (open loop) or measured (closed loop)
    rate: float | None
    wall: float  # from the first send to the last answer

    # ---- selections -------------------------------------------------------
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.status == 200]

    def with_status(self, status: int) -> list[Result]:
        return [r for r in self.results if r.status == status]

    def sent_between(self, t0: float, t1: float) -> list[Result]:
        return [r for r in self.results if t0 <= r.t_send <= t1]

    def send_span(self) -> float:
        """Seconds from the first to the last send."""
        if not self.results:
            return 0.0
        ts = [r.t_send for r in self.results]
        return max(ts) - min(ts)

    def max_lag(self) -> float:
        return max((r.t_send - r.t_sched for r in self.results), default=0.0)

    def lag_share_over(self, seconds: float) -> float:
        """The share of sends that left more than `seconds` after their schedule."""
        if not self.results:
            return 0.0
        return sum(1 for r in self.results if r.t_send - r.t_sched > seconds) / len(self.results)

    # ---- summary ----------------------------------------------------------
    def summary(self) -> dict:
        by_status: dict[str, int] = {}
        for r in self.results:
            k = str(r.status) if r.status is not None else "error"
            by_status[k] = by_status.get(k, 0) + 1
        ok = self.ok()
        out = {
            "offered_rate": self.rate,
            "duration_s": round(self.duration, 3),
            "sent": len(self.results),
            "dropped": len(self.dropped),
            "by_status": dict(sorted(by_status.items())),
            "transport_errors": sorted({r.error for r in self.results if r.error})[:5],
            "send_span_s": round(self.send_span(), 3),
            "max_send_lag_ms": round(self.max_lag() * 1000, 1),
            "ok_per_s": round(len(ok) / self.wall, 2) if self.wall > 0 else None,
            "ok_prompt_tokens": sum(int((r.usage or {}).get("prompt_tokens", 0)) for r in ok),
            "ok_completion_tokens": sum(int((r.usage or {}).get("completion_tokens", 0)) for r in ok),
        }
        for name, sel in (("ok", ok), ("all", self.results)):
            lat = sorted(r.latency for r in sel if r.status is not None)
            if lat:
                out[f"latency_ms_{name}"] = {p: round(percentile(lat, q) * 1000, 3)
                                             for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
        return out

    def to_json(self) -> dict:
        return {"summary": self.summary(), "results": [asdict(r) for r in self.results], "dropped": self.dropped}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# ---------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams
# ---------------------------------------------------------------------------

class _Conn:
    def __init__(self, cid: int, host: str, port: int):
        self.cid = cid
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes, timeout: float, on_sent: Callable[[], None]):
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        on_sent()
        self.writer.write(head + body)
        await self.writer.drain()
        return await asyncio.wait_for(self._read_response(), timeout)

    async def _read_response(self):
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            k = k.strip().lower()
            v = v.strip()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers, until an empty line
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.reader.read()  # until close
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


def _sse_usage(body: bytes) -> dict | None:
    """The last `usage` object of an SSE stream (OpenAI: the final chunk with include_usage)."""
    usage = None
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                u = json.loads(line[5:]).get("usage")
            except ValueError:
                continue
            if isinstance(u, dict):
                usage = u
    return usage


def _parse_body(res: Result, body: bytes):
    if (res.status is not None and 200 <= res.status < 300
            and res.headers.get("content-type", "").startswith("text/event-stream")):
        res.usage = _sse_usage(body)
        return
    try:
        j = json.loads(body) if body else None
    except ValueError:
        j = None
    if res.status is not None and 200 <= res.status < 300:
        if isinstance(j, dict) and isinstance(j.get("usage"), dict):
            res.usage = j["usage"]
    else:
        res.error_body = j if j is not None else body[:2000].decode(errors="replace")


async def run_async(url: str, *, rate: float | None, duration: float, max_in_flight: int = 64,
                    connections: int | None = None, body: bytes | Callable[[int], bytes] | None = None,
                    headers: dict[str, str] | Callable[[int], dict[str, str]] | None = None,
                    output_tokens: int | None = None, api_key: str = "loadgen",
                    on_saturation: str = "wait", timeout: float = 30.0,
                    max_requests: int = 1_000_000) -> Run:
    """Drives `url` and returns every request's record. See the module docstring."""
    if on_saturation not in ("wait", "drop"):
        raise ValueError("on_saturation must be 'wait' or 'drop'")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for closed loop)")
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    n_conn = max(1, min(connections or min(max_in_flight, 8), max_in_flight))

    def build(i: int) -> tuple[bytes, bytes]:
        b = body(i) if callable(body) else (body if body is not None else chat_body())
        h = {"host": f"{host}:{port}", "content-type": "application/json", "authorization": f"Bearer {api_key}"}
        if output_tokens is not None:
            h["x-emulator-output-tokens"] = str(output_tokens)
        h.update(headers(i) if callable(headers) else (headers or {}))
        h["content-length"] = str(len(b))
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        return head.encode("latin-1"), b

    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    all_conns: list[_Conn] = []
    for cid in range(n_conn):
        c = _Conn(cid, host, port)
        await c.open()
        all_conns.append(c)
        idle.put_nowait(c)

    results: list[Result] = []
    dropped: list[float] = []
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(i: int, conn: _Conn, t_sched: float):
        res = Result(idx=i, t_sched=t_sched, t_send=loop.time() - start, t_done=0.0, conn=conn.cid)
        results.append(res)
        head, b = build(i)

        def sent():
            res.t_send = loop.time() - start

        try:
            status, hdrs, raw = await conn.request(head, b, timeout, sent)
            res.status, res.headers = status, hdrs
            _parse_body(res, raw)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            res.error = f"{type(e).__name__}: {e}"
            conn.close()
        finally:
            res.t_done = loop.time() - start
            idle.put_nowait(conn)

    async def acquire() -> _Conn | None:
        if not idle.empty():
            return idle.get_nowait()
        if len(all_conns) < max_in_flight:
            c = _Conn(len(all_conns), host, port)
            all_conns.append(c)
            return c
        if on_saturation == "drop":
            return None
        return await idle.get()

    try:
        i = 0
        if rate is not None:
            n_total = min(max_requests, max(1, int(round(rate * duration))))
            while i < n_total:
                due = i / rate
                delay = start + due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                conn = await acquire()
                if conn is None:
                    dropped.append(due)
                else:
                    t = asyncio.create_task(one(i, conn, due))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                i += 1
        else:
            async def worker():
                nonlocal i
                while loop.time() - start < duration and i < max_requests:
                    conn = await idle.get()
                    k = i
                    i += 1
                    await one(k, conn, loop.time() - start)

            await asyncio.gather(*(worker() for _ in range(n_conn)))
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout + 5)
    finally:
        for t in list(tasks):
            t.cancel()
        for c in all_conns:
            c.close()
    results.sort(key=lambda r: r.idx)
    first = min((r.t_send for r in results), default=0.0)
    last = max((r.t_done for r in results), default=0.0)
    return Run(results=results, dropped=dropped, duration=duration if rate is not None else last,
               rate=rate, wall=max(0.0, last - first))


def run(url: str, **kw) -> Run:
    """Synchronous wrapper of :func:`run_async` (for tests)."""
    return asyncio.run(run_async(url, **kw))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="e.g. http://127.0.0.1:10000/v1/chat/completions")
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop); 0 = closed loop")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds")
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--connections", type=int, default=None, help="connections opened up front (default min(in-flight, 8))")
    ap.add_argument("--on-saturation", choices=["wait", "drop"], default="wait")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--prompt-repeat", type=int, default=1, help="repeat the prompt text N times (bigger input)")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--output-tokens", type=int, default=None, help="x-emulator-output-tokens")
    ap.add_argument("--header", action="append", default=[], help="extra header 'name: value' (repeatable)")
    ap.add_argument("--api-key", default="loadgen")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--json", help="write the summary and every request record here")
    a = ap.parse_args(argv)
    extra = {}
    for h in a.header:
        k, _, v = h.partition(":")
        extra[k.strip().lower()] = v.strip()
    body = chat_body(a.model, " ".join([a.prompt] * a.prompt_repeat), a.max_tokens)
    r = run(a.url, rate=a.rate or None, duration=a.duration, max_in_flight=a.max_in_flight,
            connections=a.connections, body=body, headers=extra, output_tokens=a.output_tokens,
            api_key=a.api_key, on_saturation=a.on_saturation, timeout=a.timeout)
    s = r.summary()
    print(json.dumps(s, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r.to_json(), f)
    return 0 if s["sent"] and not s["transport_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
