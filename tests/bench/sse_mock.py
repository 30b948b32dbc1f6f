#!/usr/bin/env python3
"""A paced SSE provider for tests/bench/stream_latency.py: answers every POST with
an OpenAI chat-completions stream (bench.sse_body: content chunks, a stop chunk, a
usage chunk, `data: [DONE]`), one HTTP/1.1 chunk per event, events `--pace-ms`
apart on an absolute schedule from the response head, and logs when each write
was made.

    sse_mock.py --port-file P --log L [--pace-ms 20] [--events 24]

Per request it appends one JSON line to `--log`: the request's `x-bench-id`, the
CLOCK_MONOTONIC time (time.monotonic_ns, comparable across processes on Linux)
when the request was read in full, when it started and finished writing the head,
and for each event when its write started and returned (the bench measures from
the start: the return can come late when the woken proxy preempts the mock). The last event carries
the chunked terminator in the same write (the stream's end reaches the proxy with
the `[DONE]` event, as a server that ends the body right after it), or
`--end-gap-ms` later.
`x-bench-events: N` overrides `--events` per request. TCP_NODELAY on every
connection; a thread per connection (the bench keeps one busy at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

_log_lock = threading.Lock()
_events_cache: dict[int, list[bytes]] = {}


def events(n: int) -> list[bytes]:
    """The stream's events as HTTP/1.1 chunks (each `data: ...\\n\\n`)."""
    if n not in _events_cache:
        evs = [e + "\n\n" for e in bench.sse_body(n).split("\n\n") if e]
        _events_cache[n] = [f"{len(e.encode()):x}\r\n".encode() + e.encode() + b"\r\n" for e in evs]
    return _events_cache[n]


def read_request(conn: socket.socket, buf: bytes) -> tuple[dict[str, str], bytes] | None:
    while b"\r\n\r\n" not in buf:
        d = conn.recv(65536)
        if not d:
            return None
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        d = conn.recv(65536)
        if not d:
            return None
        rest += d
    return headers, rest[n:]


def serve(conn: socket.socket, args, log) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head_tail = "".join(f"{k}: {v}\r\n" for k, v in bench.PROVIDER_HEADERS.items())
    head = ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            f"{head_tail}transfer-encoding: chunked\r\n\r\n").encode()
    pace = args.pace_ms * 1_000_000
    buf = b""
    with conn:
        while True:
            got = read_request(conn, buf)
            if got is None:
                return
            headers, buf = got
            t_req = time.monotonic_ns()
            evs = events(int(headers.get("x-bench-events", args.events)))
            t_head0 = time.monotonic_ns()
            conn.sendall(head)
            t_head = time.monotonic_ns()
            starts, sends = [], []
            for k, ev in enumerate(evs):
                delay = t_head + (k + 1) * pace - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                last = k == len(evs) - 1
                if last and not args.end_gap_ms:
                    ev += b"0\r\n\r\n"
                starts.append(time.monotonic_ns())
                conn.sendall(ev)
                sends.append(time.monotonic_ns())
                if last and args.end_gap_ms:
                    time.sleep(args.end_gap_ms / 1e3)
                    conn.sendall(b"0\r\n\r\n")
            line = json.dumps({"id": headers.get("x-bench-id", ""), "t_req": t_req, "t_head0": t_head0,
                               "t_head": t_head, "starts": starts, "sends": sends})
            with _log_lock:
                log.write(line + "\n")
                log.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pace-ms", type=float, default=20.0)
    ap.add_argument("--events", type=int, default=24)
    ap.add_argument("--end-gap-ms", type=float, default=0.0,
                    help="write the chunked terminator this long after the last event (0: with it)")
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    log = open(args.log, "a")  # noqa: SIM115 (open for the process's life)
    tmp = args.port_file + ".tmp"
    Path(tmp).write_text(str(srv.getsockname()[1]))
    os.replace(tmp, args.port_file)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, args, log), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
