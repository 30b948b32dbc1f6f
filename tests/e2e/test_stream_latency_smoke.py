"""`make bench-stream` still works: its smoke run (a few seconds) measures both variants
and reports the targets."""

import json
import subprocess
import sys

import harness

SCRIPT = harness.ROOT / "tests" / "bench" / "stream_latency.py"


def test_stream_latency_smoke_runs_and_reports(tmp_path):
    out = tmp_path / "s.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    md = out.read_text()
    assert "| added TTFB p50 (filter - passthrough) | ≤ 100 µs |" in md
    assert "| added per-chunk p50" in md
    res = json.loads(out.with_suffix(".json").read_text())["results"]
    for v in ("passthrough", "filter"):
        # 5 token events, each paced, plus the framing events: every SSE event was seen
        assert res[v]["requests"] == 6 and res[v]["events"] >= 6, res[v]
        # the pacing is visible: the last event arrives at least ttft + 4 gaps after the send
        assert res[v]["offset_median_us"][-1] >= 5 * 20_000 * 0.9, res[v]
