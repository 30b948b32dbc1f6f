"""`make bench-profile` still works: its smoke run (passthrough and filter, one
second each, perf on Envoy, the counting build inside the VM) gives a report
with every part of the decomposition, measured."""

import json

import harness



def test_profile_smoke_decomposes_the_gap(tmp_path):
    out = tmp_path / "profile.md"
    md = harness.run_bench_smoke("profile.py", out, timeout=300)
    for row in ("| passthrough |", "| filter |", "| **gap: filter − passthrough** |",
                "| (b) in the VM: request body |", "| (b) in the VM: upstream instance |",
                "| (d) residual |", "Check: (a) + (b) + (c) = "):
        assert row in md, (row, md)
    data = json.loads(out.with_suffix(".json").read_text())
    res, vm = data["results"], data["vm"]
    # Both variants measured; the filter costs more than Envoy alone, and perf saw
    # Envoy's code in both and the module's code only with the filter.
    for v in ("passthrough", "filter"):
        assert res[v]["user_us"] > 0 and res[v]["sys_us"] > 0 and sum(res[v]["samples"].values()) > 100, res[v]
        assert res[v]["bucket_us"]["envoy"] > 0, res[v]
    assert res["filter"]["cpu_us"] > res["passthrough"]["cpu_us"], res
    assert res["filter"]["bucket_us"]["wasm"] > 0 and res["passthrough"]["bucket_us"]["wasm"] == 0, res
    # The counting build timed each phase under load and counted its host calls.
    phases = vm["filter"]["phases"]
    for label in ("request headers", "request body", "response headers", "response body", "log",
                  "upstream instance"):
        assert phases[label]["ns"] > 0 and phases[label]["entries"] > 0.9 and phases[label]["host_calls"] > 0, \
            (label, phases[label])
    assert data["decomposition"]["gap"] > 0
