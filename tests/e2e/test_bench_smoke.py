"""`make bench` still works: its smoke run (1 KB bodies, plain and streamed,
Envoy alone and with the filter, one second each) in CI."""


import harness



def test_bench_smoke_runs_and_reports(tmp_path):
    out = tmp_path / "smoke.md"
    md = harness.run_bench_smoke("bench.py", out, timeout=600)
    # Both cases measured, both variants, no errors, and the figures against the targets.
    assert "## 1k body\n" in md and "## 1k body, streamed" in md
    rows = [ln for ln in md.split("## Memory")[0].splitlines()
            if ln.startswith("| passthrough |") or ln.startswith("| filter |")]
    assert len(rows) == 4, rows
    assert all(ln.rstrip(" |").endswith("| 0") for ln in rows), rows
    assert "| .wasm size | ≤ 2 MB |" in md and "| Wasm memory per VM | ≤ 8 MiB |" in md
    assert "Problems" not in md
