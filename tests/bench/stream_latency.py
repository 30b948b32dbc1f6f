#!/usr/bin/env python3
"""`make bench-stream`: what the filter adds to a streamed answer (issue 24 item 3).

    make bench-stream                                            # tests/bench/results/stream-latency.{md,json}
    .venv/bin/python tests/bench/stream_latency.py --smoke --out /tmp/s.md   # a few seconds

Set-up on loopback: tests/bench/sse_mock.py, its own process, answers every chat
completion with an OpenAI stream (bench.sse_body: 24 content chunks, a stop
chunk, a usage chunk, `data: [DONE]`; 27 events), one HTTP/1.1 chunk per event,
20 ms apart, TCP_NODELAY. In front of it, Envoys built as tests/bench/bench.py
builds them (`bench.proxy_config`): `passthrough`, `wasm-floor`, `filter` (as
shipped: estimate, RPM and TPM limits, circuits, the failover chain with the
upstream instance, metrics, access-log state) and `filter-ds` (the same without
the upstream instance: health from final answers only), `--concurrency 2` each. The
client (this process) keeps one keep-alive connection per variant and sends one
request at a time, the variants interleaved request by request (the order
rotating), so that drifts in the machine's load fall on all alike.

Both ends timestamp with CLOCK_MONOTONIC (time.monotonic_ns, system-wide on
Linux): the mock right before and right after each write, the client right
after each recv returns. What the mock's pacing timer does (late wake-ups,
jitter) then cancels: each figure is a difference of two timestamps of the same
event. The figures start at the mock's write call, not at its return: on a busy
2-core machine the proxy thread the write wakes may preempt the mock before
the call returns, and the client then "receives" events before they were sent
(seen here: negative medians). The write call itself (shown as `write`) is the
same for every variant and cancels in the added latency.

* per chunk = client's receive of an event - the mock starting to write it, over every
  event but the last (the last, which carries the stream's end, is reported
  apart: the filter settles the request on it);
* first byte in the proxy = client's first response byte - the mock starting to
  write the response head;
* TTFB = client's first response byte - the client sending the request (this
  includes the request path: the filter reads the body, estimates, admits);
  the request leg alone = the mock having read the request - the client sending it.

Each variant's p50/p90/p99, and the added latency = the same percentile of the
variant minus passthrough's, with a bootstrap 95% interval for the p50s. The
client counts events: every request must show all of them, and it counts the
recvs that brought more than one (Envoy coalescing them would hide per-chunk
cost). The counting build (`make build-hostcalls`), when present, adds the time
spent inside the VM per callback and the host calls per callback for the same
stream.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import bench  # noqa: E402
import harness  # noqa: E402

MOCK = ROOT / "tests" / "bench" / "sse_mock.py"
PACE_MS = 20
TARGETS = {"ttfb": 100.0, "chunk": 20.0}  # µs, added at p50 (issue 24)
VARIANTS = ["passthrough", "wasm-floor", "filter", "filter-ds"]
SMOKE_VARIANTS = ["passthrough", "wasm-floor", "filter"]
PCTS = (50, 90, 99)
VM_FAST_PACE_MS = 1.0
FIGURES = {  # key: (label, what)
    "ttfb": "TTFB (request sent -> first response byte)",
    "req_leg": "request leg (request sent -> mock has read it)",
    "first_byte": "first byte in the proxy (mock starts the head -> client has it)",
    "chunk": "per chunk (mock wrote the event -> client has it), every event but the last",
    "last": "last event, with the stream's end",
    "gap": "gap between received events - pacing",
    "write": "the mock's write call of an event (start -> return)",
}


# ---------------------------------------------------------------------------
# the mock and the client
# ---------------------------------------------------------------------------

class Mock:
    """tests/bench/sse_mock.py in its own process."""

    def __init__(self, tmp: Path, pace_ms: float, events: int, name: str = "mock", end_gap_ms: float = 0.0):
        port_file, self.log = tmp / f"{name}-port", tmp / f"{name}-log.jsonl"
        err = tmp / f"{name}.err"
        self.proc = harness._spawn([sys.executable, MOCK, "--port-file", port_file, "--log", self.log,
                                    "--pace-ms", pace_ms, "--events", events,
                                    "--end-gap-ms", end_gap_ms], subprocess.DEVNULL, err.open("wb"))
        self.port = int(harness.wait_for(lambda: port_file.exists() and port_file.read_text(), 15, "sse mock",
                                         self.proc, err))

    def records(self) -> dict[str, dict]:
        out = {}
        for line in self.log.read_text().splitlines():
            r = json.loads(line)
            out[r["id"]] = r
        return out


class Client:
    """One keep-alive connection to a proxy; one streamed request at a time."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(30)  # a stuck stream fails the run instead of hanging it
        self.body = bench.request_body("1k", stream=True)

    def request(self, rid: str, events: int | None = None) -> dict:
        extra = f"x-bench-events: {events}\r\n" if events is not None else ""
        head = (f"POST {bench.PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer bench\r\nx-bench-id: {rid}\r\n{extra}"
                f"content-length: {len(self.body)}\r\n\r\n").encode()
        s = self.sock
        t_send = time.monotonic_ns()
        s.sendall(head + self.body)
        buf, t_first = b"", None
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            t = time.monotonic_ns()
            if not d:
                raise RuntimeError("connection closed before the response head")
            t_first = t_first or t
            buf += d
        hdr, buf = buf.split(b"\r\n\r\n", 1)
        status = int(hdr.split(b" ", 2)[1])
        if status != 200 or b"transfer-encoding: chunked" not in hdr.lower():
            raise RuntimeError(f"status {status}: {hdr[:400]!r} {buf[:400]!r}")
        sse, times, per_recv, done = b"", [], [], False
        while True:
            got = 0
            while True:  # every complete HTTP chunk in buf
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(buf[:i].split(b";")[0], 16)
                if size == 0:
                    if buf.find(b"\r\n", i + 2) >= 0:  # the (empty) trailer's end
                        buf, done = b"", True
                    break
                if len(buf) < i + 2 + size + 2:
                    break
                sse += buf[i + 2:i + 2 + size]
                buf = buf[i + 4 + size:]
                while b"\n\n" in sse:
                    _, sse = sse.split(b"\n\n", 1)
                    times.append(t)
                    got += 1
            if got:
                per_recv.append(got)
            if done:
                break
            d = s.recv(65536)
            t = time.monotonic_ns()
            if not d:
                raise RuntimeError("connection closed mid-stream")
            buf += d
        return {"id": rid, "t_send": t_send, "t_first": t_first, "events": times, "per_recv": per_recv}

    def close(self) -> None:
        self.sock.close()


def measure(ports: dict[str, int], requests: int, warmup: int, events: int | None = None) -> dict[str, list]:
    """`requests` streamed requests per variant, interleaved one by one, order rotating."""
    names = list(ports)
    clients = {v: Client(p) for v, p in ports.items()}
    raw: dict[str, list] = {v: [] for v in names}
    try:
        for v in names:  # V8 tiers up, the pools fill
            for i in range(warmup):
                clients[v].request(f"warm-{v}-{i}", events)
        for i in range(requests):
            k = i % len(names)
            for v in names[k:] + names[:k]:
                raw[v].append(clients[v].request(f"{v}-{i}", events))
    finally:
        for c in clients.values():
            c.close()
    return raw


# ---------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def samples(reqs: list[dict], mock: dict[str, dict], pace_ms: float) -> dict:
    """Per figure, all samples of one variant (µs), and the event counts."""
    out: dict = {k: [] for k in FIGURES}
    out.update(events_seen=[], events_sent=[], coalesced=0, recvs=0, per_event=[])
    for r in reqs:
        m = mock[r["id"]]
        # From the start of the mock's write: the write's return can come late (on
        # a busy machine the woken proxy thread may preempt the mock right after
        # the data is queued, and the client then receives "before" it).
        ev, sends = r["events"], m["starts"]
        out["events_seen"].append(len(ev))
        out["events_sent"].append(len(sends))
        out["coalesced"] += sum(1 for n in r["per_recv"] if n > 1)
        out["recvs"] += len(r["per_recv"])
        out["ttfb"].append((r["t_first"] - r["t_send"]) / 1e3)
        out["req_leg"].append((m["t_req"] - r["t_send"]) / 1e3)
        out["first_byte"].append((r["t_first"] - m["t_head0"]) / 1e3)
        if len(ev) != len(sends):
            continue
        d = [(a - b) / 1e3 for a, b in zip(ev, sends)]
        out["write"] += [(b - a) / 1e3 for a, b in zip(m["starts"], m["sends"])]
        out["chunk"] += d[:-1]
        out["last"].append(d[-1])
        out["per_event"].append(d)
        out["gap"] += [(ev[k] - ev[k - 1]) / 1e3 - pace_ms * 1000 for k in range(1, len(ev))]
    return out


def boot_median_diff(a: list[float], b: list[float], n: int = 300, seed: int = 24) -> tuple[float, float]:
    """A bootstrap 95% interval of median(a) - median(b)."""
    rng = random.Random(seed)
    ds = sorted(statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
                for _ in range(n))
    return ds[int(0.025 * n)], ds[int(0.975 * n) - 1]


def analyse(raw: dict[str, list], mock: dict[str, dict], pace_ms: float) -> dict:
    s = {v: samples(rs, mock, pace_ms) for v, rs in raw.items()}
    res: dict = {"variants": {}, "added": {}}
    for v, x in s.items():
        row = {"requests": len(raw[v]), "events_seen": sorted(set(x["events_seen"])),
               "events_sent": sorted(set(x["events_sent"])), "coalesced_recvs": x["coalesced"], "recvs": x["recvs"]}
        for f in FIGURES:
            if x[f]:
                row[f] = {f"p{p}": pct(x[f], p) for p in PCTS}
        # the median over requests of each event's time in the proxy, by event index
        if x["per_event"]:
            row["per_event_p50"] = [statistics.median(d[k] for d in x["per_event"])
                                    for k in range(len(x["per_event"][0]))]
        res["variants"][v] = row
    base = "passthrough"
    for v in s:
        if v == base:
            continue
        add = {}
        for f in FIGURES:
            if f in ("gap", "write") or not s[v][f] or not s[base][f]:
                continue
            a = {f"p{p}": res["variants"][v][f][f"p{p}"] - res["variants"][base][f][f"p{p}"] for p in PCTS}
            a["p50_ci95"] = boot_median_diff(s[v][f], s[base][f])
            add[f] = a
        if "per_event_p50" in res["variants"][v] and "per_event_p50" in res["variants"][base]:
            add["per_event_p50"] = [x - y for x, y in zip(res["variants"][v]["per_event_p50"],
                                                          res["variants"][base]["per_event_p50"])]
        res["added"][v] = add
    if "filter" in s and "wasm-floor" in s:
        res["filter_vs_floor"] = {f: res["variants"]["filter"][f]["p50"] - res["variants"]["wasm-floor"][f]["p50"]
                                  for f in ("ttfb", "first_byte", "chunk", "last")
                                  if f in res["variants"]["filter"] and f in res["variants"]["wasm-floor"]}
    return res


# ---------------------------------------------------------------------------
# inside the VM (the counting build)
# ---------------------------------------------------------------------------

def vm_time(tmp: Path, mock_port: int, requests: int, events: tuple[int, int] = (4, 44),
            name: str = "hostcalls") -> dict:
    """Time inside the VM and host calls per callback, counted by the hostcall-count
    build (`filter`, one worker) on the same paced stream: `requests` answers with
    each of two numbers of content chunks. Per callback and answer: calls, µs per
    call, host calls per call; and from the difference between the two, what one
    more content chunk costs each callback (the first-token and end-of-stream work,
    the same in both, drops out)."""
    if not bench.HOSTCALLS_WASM.exists():
        return {}
    env = harness.Envoy(tmp, bench.proxy_config("filter", mock_port, bench.HOSTCALLS_WASM), name=name,
                        concurrency=1)
    runs: dict[int, dict[str, float]] = {}
    try:
        def read() -> dict[str, float]:
            return {n: v for n, _, v in harness.prom_samples(env) if n.startswith("llmcap_debug_cb")}
        c = Client(env.port)
        for i in range(5):
            c.request(f"hc-warm-{i}", events[0])
        for n in events:
            before = read()
            for i in range(requests):
                c.request(f"hc-{n}-{i}", n)
            after = read()
            runs[n] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
        c.close()
    finally:
        env.stop()

    def table(delta: dict[str, float]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for k, v in delta.items():
            m = re.fullmatch(r"llmcap_debug_cb_(\w+)_(ns|calls)", k)
            if m and not k.startswith("llmcap_debug_cbhc_"):
                out.setdefault(m.group(1), {})[m.group(2)] = v
        for cb, row in out.items():
            row["hostcalls"] = sum(v for k, v in delta.items() if k.startswith(f"llmcap_debug_cbhc_{cb}__"))
        return out

    lo, hi = (table(runs[n]) for n in events)
    per_answer = {cb: {"per_request": r.get("calls", 0) / requests,
                       "us_per_call": r.get("ns", 0) / max(r.get("calls", 0), 1) / 1e3,
                       "hostcalls_per_call": r["hostcalls"] / max(r.get("calls", 0), 1)} for cb, r in hi.items()}
    per_chunk = {}
    for cb in ("ds_on_http_response_body", "up_on_http_response_body"):
        if cb in lo and cb in hi:
            dc = hi[cb].get("calls", 0) - lo[cb].get("calls", 0)
            if dc > 0:
                per_chunk[cb] = {"us": (hi[cb].get("ns", 0) - lo[cb].get("ns", 0)) / dc / 1e3,
                                 "hostcalls": (hi[cb]["hostcalls"] - lo[cb]["hostcalls"]) / dc,
                                 "calls_per_chunk": dc / (requests * (events[1] - events[0]))}
    return {"requests": requests, "events": [n + 3 for n in events], "callbacks": per_answer,
            "per_chunk": per_chunk}


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def us(v: float) -> str:
    return f"{v:.0f} µs" if abs(v) < 10_000 else f"{v / 1000:.1f} ms"


def report(res: dict, meta: dict, vm: dict) -> str:
    V, A = res["variants"], res["added"]
    yn = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    L = [f"# Streamed answer latency (tests/bench/stream_latency.py{' --smoke' if meta['smoke'] else ''}, "
         "`make bench-stream`)", "",
         f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['cpu']}), Envoy {meta['envoy']}, git {meta['git']}. "
         f"Load average {meta['load_before']} before, {meta['load_after']} after; the machine's CPUs were "
         f"{meta['busy_pct']:.0f}% busy during the {meta['seconds']:.0f} s of measurement (this run included; "
         "the machine is shared).", "",
         f"Paced SSE mock (tests/bench/sse_mock.py): {meta['events']} events per answer, {meta['pace_ms']:g} ms "
         f"apart, one HTTP/1.1 chunk each, " + (f"the body's end {meta['end_gap_ms']:g} ms after `[DONE]`"
         if meta.get("end_gap_ms") else "the body's end in the same write as `[DONE]`") +
         f". One connection per variant, one request at a time, {meta['requests']} "
         f"requests per variant after {meta['warmup']} of warm-up, interleaved request by request. Every figure "
         "is a difference of two CLOCK_MONOTONIC timestamps of the same event (the mock's right before its "
         "write, the client's right after its recv), so the pacing's jitter cancels. Method: the script's "
         "docstring.", ""]
    if meta["smoke"]:
        L += ["**Smoke run: too few requests for the targets; it shows that the method works, not the cost.**", ""]
    f = A.get("filter", {})
    if f:
        L += ["## Against the targets (filter - passthrough, same run)", "",
              "| figure | target | added p50 | 95% interval | met |", "|---|---|---:|---|---|"]
        for key, label in (("ttfb", "time to first byte (from the request), one connection"),
                           ("chunk", "per-chunk latency")):
            lo, hi = f[key]["p50_ci95"]
            L.append(f"| {label} | ≤ {TARGETS[key]:.0f} µs | {f[key]['p50']:.1f} µs | {lo:.1f} .. {hi:.1f} µs | "
                     f"{yn(f[key]['p50'] <= TARGETS[key])} |")
        L.append("")
    L += ["## Each variant", "",
          "| variant | requests | events seen per answer | recvs with >1 event | " +
          " | ".join(f"{k} p50 / p90 / p99" for k in FIGURES) + " |",
          "|---|---:|---|---:|" + "---:|" * len(FIGURES)]
    for v, r in V.items():
        cells = [" / ".join(us(r[k][f"p{p}"]) for p in PCTS) if k in r else "-" for k in FIGURES]
        L.append(f"| {v} | {r['requests']} | {','.join(map(str, r['events_seen']))} of "
                 f"{','.join(map(str, r['events_sent']))} | {r['coalesced_recvs']} of {r['recvs']} | " +
                 " | ".join(cells) + " |")
    L += ["", "Figures: " + "; ".join(f"**{k}**: {w}" for k, w in FIGURES.items()) + ".", "",
          "## Added latency against passthrough", "",
          "| variant | figure | p50 | p50 95% interval | p90 | p99 |", "|---|---|---:|---|---:|---:|"]
    for v, add in A.items():
        for k, a in add.items():
            if k == "per_event_p50":
                continue
            lo, hi = a["p50_ci95"]
            L.append(f"| {v} | {k} | {a['p50']:.1f} µs | {lo:.1f} .. {hi:.1f} | {a['p90']:.1f} µs | "
                     f"{a['p99']:.1f} µs |")
    if res.get("filter_vs_floor"):
        L += ["", "filter - wasm-floor at p50 (what the filter's own work adds over any Wasm filter): " +
              ", ".join(f"{k} {v:.1f} µs" for k, v in res["filter_vs_floor"].items()) + "."]
    if f.get("per_event_p50"):
        L += ["", "filter's added p50 by event index (0 = the role chunk, then content, stop, usage, [DONE]): " +
              " ".join(f"{x:.0f}" for x in f["per_event_p50"]) + " µs."]
    paces = (vm or {}).get("paces", {})
    first = next(iter(paces.values()), {})
    if first.get("callbacks"):
        lo_ev, hi_ev = first["events"]
        L += ["", "## Inside the VM (`filter`, counting build `make build-hostcalls`, one worker)", "",
              f"Per answer of {hi_ev} events ({first['requests']} answers), paced {next(iter(paces))} ms as above:", "",
              "| callback | calls per answer | µs per call (inside the VM) | host calls per call |",
              "|---|---:|---:|---:|"]
        for cb, r in sorted(first["callbacks"].items()):
            L.append(f"| {cb} | {r['per_request']:.2f} | {r['us_per_call']:.1f} | {r['hostcalls_per_call']:.2f} |")
        L += ["", f"One more content chunk (answers of {hi_ev} against {lo_ev} events, so the first token's and the "
              "stream end's work drop out), by pacing:", "",
              "| pacing | callback | µs inside the VM | host calls | callbacks per chunk |", "|---|---|---:|---:|---:|"]
        for pace, r in paces.items():
            for cb, c in r.get("per_chunk", {}).items():
                L.append(f"| {pace} ms | {cb} | {c['us']:.1f} | {c['hostcalls']:.2f} | {c['calls_per_chunk']:.2f} |")
        L += ["", "The counting build times each callback with the host clock from its start to its end, "
              "host calls included; the VM entry and exit and Envoy's side of the Wasm filter are outside it."]
    if meta.get("problems"):
        L += ["", "**Problems:** " + "; ".join(meta["problems"])]
    L.append("")
    return "\n".join(L)


def cpu_busy() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)  # busy, total (idle and iowait apart)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=120, help="per variant")
    ap.add_argument("--warmup", type=int, default=10, help="per variant")
    ap.add_argument("--events", type=int, default=24, help="content chunks per answer (+3 framing events)")
    ap.add_argument("--pace-ms", type=float, default=PACE_MS)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--end-gap-ms", type=float, default=0.0,
                    help="the mock ends the body this long after [DONE] (0: in the same write)")
    ap.add_argument("--vm-requests", type=int, default=30, help="answers through the counting build (0: skip)")
    ap.add_argument("--smoke", action="store_true", help="a few seconds: 4 requests per variant, 4 content chunks")
    ap.add_argument("--out", default=str(bench.RESULTS / "stream-latency.md"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.requests, args.warmup, args.events, args.vm_requests = 4, 1, 4, 0
        args.variants = ",".join(SMOKE_VARIANTS)
    variants = [v for v in args.variants.split(",") if v]
    assert variants[0] == "passthrough" and set(variants) <= set(VARIANTS), variants
    if not harness.WASM.exists():
        print(f"missing {harness.WASM}: run `make build` first", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="streamlat-"))
    envs: dict[str, harness.Envoy] = {}
    try:
        mock = Mock(tmp, args.pace_ms, args.events, end_gap_ms=args.end_gap_ms)
        for v in variants:  # started together, then waited for
            envs[v] = harness.Envoy(tmp, bench.proxy_config(v, mock.port), name=v.replace("-", "_"),
                                    concurrency=2, expect_start=False)
        for e in envs.values():
            e._wait_ready()
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        b0, t0, w0 = *cpu_busy(), time.monotonic()
        raw = measure({v: e.port for v, e in envs.items()}, args.requests, args.warmup)
        b1, t1, w1 = *cpu_busy(), time.monotonic()
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        problems: list[str] = []
        for v in variants:
            problems += bench.filter_checks(envs[v], v)
        for e in envs.values():
            e.stop()
        envs.clear()
        res = analyse(raw, mock.records(), args.pace_ms)
        expected = args.events + 3
        for v, r in res["variants"].items():
            if r["events_seen"] != [expected] or r["events_sent"] != [expected]:
                problems.append(f"{v}: events seen {r['events_seen']}, sent {r['events_sent']}, expected {expected}")
        # Inside the VM at the run's pacing, and nearly back to back (caches warm).
        vm = {}
        if args.vm_requests:
            fast = Mock(tmp, VM_FAST_PACE_MS, args.events, name="mock-fast")
            vm = {"paces": {f"{args.pace_ms:g}": vm_time(tmp, mock.port, args.vm_requests),
                            f"{VM_FAST_PACE_MS:g}": vm_time(tmp, fast.port, args.vm_requests, name="hostcalls-fast")}}
        m = bench.machine()
        meta = {"date": m["date"], "cpus": m["cpus"], "cpu": m["cpu"], "envoy": m["envoy"], "git": m["git"],
                "load_before": load_before, "load_after": load_after,
                "busy_pct": 100 * (b1 - b0) / max(t1 - t0, 1), "seconds": w1 - w0, "smoke": args.smoke,
                "events": expected, "pace_ms": args.pace_ms, "end_gap_ms": args.end_gap_ms, "requests": args.requests, "warmup": args.warmup,
                "problems": problems}
        md = report(res, meta, vm)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res, "vm": vm}, indent=1))
        print(md)
        return 1 if problems else 0
    finally:
        for e in envs.values():
            e.stop()
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
