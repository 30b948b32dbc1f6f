"""Host calls per request of one counting build (feature hostcall-count), as
bench.py measures them, without the rest of the benchmark: to compare two
builds (results in tests/bench/results/hostcalls-*.md).

    make build-hostcalls
    .venv/bin/python tests/bench/hostcalls.py target/hostcalls/wasm32-wasip1/release/llm_capacity.wasm [--json out.json]

Prints, per case (the bench's 1 KB request, plain and streamed), the total and
the calls by kind, then a markdown table of calls per request by callback
(`ds_*` the downstream filter, `up_*` the upstream instance, `root_on_tick`
the VM's tick, `vm` anything outside those).
"""
import sys, json, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import bench, harness
wasm = Path(sys.argv[1])
bench.HOSTCALLS_WASM = wasm
tmp = Path(tempfile.mkdtemp(prefix="hc-"))
up = harness.Envoy(tmp, bench.upstream_config(), name="upstream", concurrency=2)
try:
    out = bench.host_calls(tmp, up.port, [("1k", False), ("1k", True)], n=200)
finally:
    up.stop()
if "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(out, indent=1, sort_keys=True))
for case, per in out["per_request"].items():
    print(case, round(sum(per.values()), 2), json.dumps({k: round(v, 2) for k, v in sorted(per.items())}))
for case, by_cb in out.get("per_callback", {}).items():
    kinds = sorted({k for per in by_cb.values() for k in per})
    print(f"\n{case}\n")
    print("| callback | total | " + " | ".join(kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    for cb, per in sorted(by_cb.items()):
        print(f"| {cb} | {sum(per.values()):.2f} | " + " | ".join(f"{per.get(k, 0):.2f}" if per.get(k) else "" for k in kinds) + " |")
    print(f"| **all** | **{sum(sum(p.values()) for p in by_cb.values()):.2f}** | "
          + " | ".join(f"{sum(p.get(k, 0) for p in by_cb.values()):.2f}" for k in kinds) + " |")
