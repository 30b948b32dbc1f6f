#!/usr/bin/env python3
"""Memory under many agent sessions: 100,000 distinct sessions through a route
with a session budget, measuring Envoy's resident memory as they arrive.

Run by hand (not part of `make test`), after `make build`:

    .venv/bin/python tests/bench/sessions_bench.py            # writes tests/bench/results/sessions.md
    .venv/bin/python tests/bench/sessions_bench.py --sessions 20000 --out /tmp/s.md

Set-up: the emulator and Envoy from envoy/envoy.yaml (ports changed, access log
removed), the openai-chat route with `session_budget` (max_calls 1000, the given
number of slots). Closed-loop load from tests/e2e/loadgen.py, one new session per
request. Envoy's VmRSS is read from /proc at checkpoints; the filter's eviction
counter shows the table is full and being recycled. Shared-data keys cannot be
listed from outside; they are bounded by construction (`slots` keys per route,
checked by the core's unit tests with 100,000 sessions).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import harness  # noqa: E402
import loadgen  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--slots", type=int, default=4096)
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "tests" / "bench" / "results" / "sessions.md"))
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sessions-bench-"))
    emu = harness.Emulator(tmp)
    emu.faults(rpm=1_000_000_000, tpm=1_000_000_000_000)
    cfg = harness.localize(harness.load_envoy_config(), emu.api_port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    plugin = copy.deepcopy(harness.plugin_config(cfg))
    plugin["routes"]["openai-chat"]["session_budget"] = {"header": "x-session-id", "max_calls": 1000, "slots": a.slots}
    plugin["routes"]["openai-chat"]["limits"] = None  # only the budget: every request admitted
    harness.set_plugin_config(cfg, plugin)
    env = harness.Envoy(tmp, cfg)
    url = env.base_url + "/v1/chat/completions"
    try:
        # Warm-up on a few sessions, so one-time allocations are not counted as growth.
        loadgen.run(url, rate=None, duration=30, max_in_flight=8, max_requests=500,
                    headers=lambda i: {"x-session-id": f"warm-{i % 10}"})
        rows = [(0, rss_kib(env.proc.pid), 0, 0.0)]
        refused = 0
        step = a.sessions // a.checkpoints
        sent = 0
        t0 = time.monotonic()
        for c in range(a.checkpoints):
            base = sent
            run = loadgen.run(url, rate=None, duration=600, max_in_flight=16, max_requests=step,
                              headers=lambda i, base=base: {"x-session-id": f"s-{base + i}"})
            bad = len(run.results) - len(run.ok())
            refused += bad
            sent += len(run.results)
            ev = sum(v for k, v in env.stats_json().items() if "llmcap_budget_evictions_total" in k)
            rows.append((sent, rss_kib(env.proc.pid), ev, time.monotonic() - t0))
            if bad:
                print(f"warning: {bad} non-200 answers in checkpoint {c}", file=sys.stderr)
        lines = [
            "# Envoy memory under many sessions",
            "",
            f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `tests/bench/sessions_bench.py`: "
            f"{a.sessions} distinct sessions (one request each) through `session_budget` with "
            f"{a.slots} slots, Envoy `--concurrency 2`, closed loop with 16 in flight.",
            "",
            "| sessions so far | Envoy VmRSS (MiB) | slot takeovers (evictions) | elapsed (s) |",
            "|---:|---:|---:|---:|",
        ]
        for n, kib, ev, t in rows:
            lines.append(f"| {n} | {kib / 1024:.1f} | {ev} | {t:.0f} |")
        first, last = rows[1][1], rows[-1][1]
        lines += ["", f"Growth from the first checkpoint to the last: {(last - first) / 1024:+.1f} MiB. "
                  f"Answers other than 200: {refused}."]
        Path(a.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        env.stop()
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
