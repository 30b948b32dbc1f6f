#!/usr/bin/env python3
"""`make bench-stream`: what the filter adds to a streamed answer (issue 24 item 3).

    make bench-stream                                            # tests/bench/results/stream-latency.{md,json}
    .venv/bin/python tests/bench/stream_latency.py --smoke --out /tmp/s.md   # a few seconds

Set-up on loopback: the project's emulator paces SSE events (`--inter-token-ms 20`,
`--ttft-ms 20`, `x-emulator-output-tokens` events per answer); two Envoys built as
tests/bench/bench.py builds them (`proxy_config("passthrough" | "filter", port)`)
in front of it. One keep-alive connection per variant, requests sequential, the
variants interleaved over rounds (order alternating per round).

Per request the client (raw socket, asyncio, chunked encoding decoded as it
arrives) records the send time, the arrival of the first body byte and of the end
of each SSE event (blank line). Reported per variant:

* time to first byte (TTFB) = first body byte - send; p50/p99 and added
  (filter - passthrough). This includes the filter's request-side work (the
  upstream sees the request later) and its first response-body callback.
* per-chunk: offset(k) = arrival of event k - send. For each event index k, the
  median of offset(k) over a variant's requests; added(k) = filter - passthrough;
  the figure is the median over k of added(k) minus added TTFB (so it is what
  each later chunk adds beyond the shift the request path already caused).
  Inter-arrival gaps minus the 20 ms pacing are shown too: a constant per-chunk
  delay cancels in a gap, so gaps show jitter only, not cost.

The emulator's timer (tokio, ~1 ms resolution) jitters both variants alike; only
medians over many requests resolve tens of microseconds, on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import bench  # noqa: E402
import harness  # noqa: E402

PACE_MS = 20
TARGETS = {"ttfb_p50_us": 100.0, "chunk_p50_us": 20.0}
VARIANTS = ["passthrough", "filter"]


async def one_request(reader, writer, body: bytes, tokens: int) -> dict:
    head = (f"POST {bench.PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer bench\r\nx-emulator-output-tokens: {tokens}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    t0 = time.perf_counter_ns()
    writer.write(head + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = await reader.read(65536)
        if not d:
            raise RuntimeError("connection closed before headers")
        buf += d
    hdr, buf = buf.split(b"\r\n\r\n", 1)
    status = int(hdr.split(b" ", 2)[1])
    if status != 200 or b"chunked" not in hdr.lower():
        raise RuntimeError(f"status {status}: {hdr[:300]!r} {buf[:300]!r}")
    first, events, sse, done = None, [], b"", False
    now = time.perf_counter_ns()
    while not done:
        # decode every complete chunk in buf
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                break
            size = int(buf[:i].split(b";")[0], 16)
            if size == 0:
                done = True
                break
            if len(buf) < i + 2 + size + 2:
                break
            data = buf[i + 2:i + 2 + size]
            buf = buf[i + 2 + size + 2:]
            if first is None:
                first = now
            sse += data
            while b"\n\n" in sse:
                _, sse = sse.split(b"\n\n", 1)
                events.append(now)
        if done:
            break
        d = await reader.read(65536)
        if not d:
            raise RuntimeError("connection closed mid-stream")
        now = time.perf_counter_ns()
        buf += d
    # the trailer after the last chunk
    while not buf.endswith(b"\r\n\r\n") and buf.count(b"\r\n") < 2:
        buf += await reader.read(65536)
    return {"ttfb_us": (first - t0) / 1e3, "events_us": [(e - t0) / 1e3 for e in events]}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def measure(ports: dict, rounds: int, per_round: int, tokens: int, warmup: int) -> dict:
    body = bench.request_body("1k", stream=True)
    conns = {v: await asyncio.open_connection("127.0.0.1", p) for v, p in ports.items()}
    raw = {v: [] for v in ports}
    for v, (r, w) in conns.items():
        for _ in range(warmup):
            await one_request(r, w, body, tokens)
    for rnd in range(rounds):
        order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
        for v in order:
            r, w = conns[v]
            for _ in range(per_round):
                raw[v].append(await one_request(r, w, body, tokens))
    for _, w in conns.values():
        w.close()
    return raw


def analyse(raw: dict) -> dict:
    out = {}
    for v, rs in raw.items():
        n = min(len(r["events_us"]) for r in rs)
        med_k = [statistics.median(r["events_us"][k] for r in rs) for k in range(n)]
        gaps = [r["events_us"][k] - r["events_us"][k - 1] - PACE_MS * 1000
                for r in rs for k in range(2, n) if r["events_us"][k] - r["events_us"][k - 1] > PACE_MS * 500]
        t = [r["ttfb_us"] for r in rs]
        out[v] = {"requests": len(rs), "events": n, "ttfb_p50_us": statistics.median(t), "ttfb_p99_us": pct(t, 99),
                  "offset_median_us": med_k, "gap_minus_pace_p50_us": statistics.median(gaps) if gaps else 0.0,
                  "gap_minus_pace_p99_us": pct(gaps, 99) if gaps else 0.0}
    f, p = out["filter"], out["passthrough"]
    n = min(f["events"], p["events"])
    added_ttfb = f["ttfb_p50_us"] - p["ttfb_p50_us"]
    per_k = [f["offset_median_us"][k] - p["offset_median_us"][k] for k in range(n)]
    out["added"] = {"ttfb_p50_us": added_ttfb, "ttfb_p99_us": f["ttfb_p99_us"] - p["ttfb_p99_us"],
                    "offset_per_event_us": per_k,
                    "chunk_p50_us": statistics.median(per_k) - added_ttfb if per_k else 0.0}
    return out


def report(res: dict, meta: dict) -> str:
    a = res["added"]
    yn = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    L = [f"# Streamed answer latency (tests/bench/stream_latency.py{' --smoke' if meta['smoke'] else ''})", "",
         f"Run {meta['date']}, {meta['cpus']} CPUs, git {meta['git']}; load average during the run "
         f"{meta['load_before']} (before) / {meta['load_after']} (after). Emulator pacing {PACE_MS} ms "
         f"(ttft and between token events), {meta['tokens']} output tokens per answer, one connection, "
         f"{meta['rounds']} rounds x {meta['per_round']} requests per variant, interleaved. Method: the script's docstring.", ""]
    if meta["smoke"]:
        L += ["**Smoke run: too few requests for the targets; figures show that the method works, not the cost.**", ""]
    L += ["| variant | requests | events | TTFB p50 | TTFB p99 | gap - pacing p50 | gap - pacing p99 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        r = res[v]
        L.append(f"| {v} | {r['requests']} | {r['events']} | {r['ttfb_p50_us']:.0f} µs | {r['ttfb_p99_us']:.0f} µs | "
                 f"{r['gap_minus_pace_p50_us']:.0f} µs | {r['gap_minus_pace_p99_us']:.0f} µs |")
    L += ["", "| figure | target | measured | met |", "|---|---|---|---|",
          f"| added TTFB p50 (filter - passthrough) | ≤ {TARGETS['ttfb_p50_us']:.0f} µs | {a['ttfb_p50_us']:.0f} µs | {yn(a['ttfb_p50_us'] <= TARGETS['ttfb_p50_us'])} |",
          f"| added TTFB p99 | - | {a['ttfb_p99_us']:.0f} µs | - |",
          f"| added per-chunk p50 (median over events of added offset, minus added TTFB) | ≤ {TARGETS['chunk_p50_us']:.0f} µs | {a['chunk_p50_us']:.0f} µs | {yn(a['chunk_p50_us'] <= TARGETS['chunk_p50_us'])} |", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="a few seconds: 2 rounds x 3 requests, 5 tokens")
    ap.add_argument("--out", default=str(bench.RESULTS / "stream-latency.md"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.per_round, args.tokens, args.warmup = 2, 3, 5, 1
    for b in (harness.WASM, harness.EMULATOR_BIN):
        if not b.exists():
            print(f"missing {b}: run `make build emulator` first", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="streamlat-"))
    try:
        emu = harness.Emulator(tmp, "--ttft-ms", str(PACE_MS), "--inter-token-ms", str(PACE_MS))
        envs = {v: harness.Envoy(tmp, bench.proxy_config(v, emu.api_port), name=v, concurrency=1) for v in VARIANTS}
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        raw = asyncio.run(measure({v: e.port for v, e in envs.items()}, args.rounds, args.per_round, args.tokens, args.warmup))
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        res = analyse(raw)
        m = bench.machine()
        meta = {"date": m["date"], "cpus": m["cpus"], "git": m["git"], "load_before": load_before, "load_after": load_after,
                "smoke": args.smoke, "tokens": args.tokens, "rounds": args.rounds, "per_round": args.per_round}
        md = report(res, meta)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res, "raw": raw}, indent=1))
        print(md)
        return 0
    finally:
        harness.stop_all()


if __name__ == "__main__":
    sys.exit(main())
