"""`make bench-stream` still works: its smoke run (a few seconds: passthrough,
wasm-floor and filter in front of the paced SSE mock) sees every event of every
answer, each on its own, paced, with the timestamps of both ends agreeing."""

import json
import math

import harness

EVENTS = 4 + 3  # the smoke's content chunks, then stop, usage and [DONE]
PACE_US = 20_000


def test_stream_latency_smoke_sees_every_paced_event(tmp_path):
    out = tmp_path / "s.md"
    # It fails also when the filter did not admit, reconcile from the stream's
    # usage chunk, or count its upstream attempt (bench.filter_checks).
    md = harness.run_bench_smoke("stream_latency.py", out, timeout=120)
    assert "| time to first byte (from the request), one connection | ≤ 100 µs |" in md, md
    assert "| per-chunk latency | ≤ 20 µs |" in md, md
    res = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(res["variants"]) == {"passthrough", "wasm-floor", "filter"}, res["variants"].keys()
    for v, r in res["variants"].items():
        # Every event of every answer reached the client, and Envoy did not
        # gather them: (almost) every recv brought one event.
        assert r["requests"] == 4 and r["events_seen"] == [EVENTS] and r["events_sent"] == [EVENTS], (v, r)
        assert r["coalesced_recvs"] <= r["recvs"] // 4, (v, r)
        # The pacing is visible: events arrive 20 ms apart, not in a burst.
        assert abs(r["gap"]["p50"]) < PACE_US / 4, (v, r["gap"])
        # One clock at both ends: nothing arrives before it was sent, and a hop
        # through a local proxy takes well under the pacing.
        for fig in ("chunk", "last", "first_byte", "req_leg"):
            assert 0 < r[fig]["p50"] < PACE_US / 2, (v, fig, r[fig])
        assert r["ttfb"]["p50"] > r["req_leg"]["p50"], (v, r["ttfb"], r["req_leg"])
    for v, add in res["added"].items():
        for fig, a in add.items():
            if fig != "per_event_p50":
                assert all(math.isfinite(x) for x in (a["p50"], a["p90"], a["p99"], *a["p50_ci95"])), (v, fig, a)
        assert len(add["per_event_p50"]) == EVENTS, (v, add)
