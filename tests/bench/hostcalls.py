"""Host calls per request of one counting build (feature hostcall-count), as
bench.py measures them, without the rest of the benchmark: to compare two
builds (results in tests/bench/results/hostcalls-latency.md).

    make build-hostcalls
    .venv/bin/python tests/bench/hostcalls.py target/hostcalls/wasm32-wasip1/release/llm_capacity.wasm
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
for case, per in out["per_request"].items():
    print(case, round(sum(per.values()), 2), json.dumps({k: round(v, 2) for k, v in sorted(per.items())}))
