"""Time inside the VM per request, by callback: host calls (marshalling
included) against our own code, under load, from the counting build
(`make build-hostcalls`: it times every callback and every host call with the
host's clock). Part of the profile of issue 24 (tests/bench/results/profile.md).

    .venv/bin/python tests/bench/vmtime.py [--variants filter,filter-ds] [--duration 4] [--json out.json]

Each variant runs in its own Envoy (one worker) under wrk (one thread, 8
connections) with the bench's 1 KB chat request. Wall-clock times: on a busy
machine a callback can be preempted, which inflates both columns alike.
"""
import argparse, json, re, sys, tempfile, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import bench, harness


def snapshot(env: harness.Envoy) -> dict:
    out: dict = {}
    for name, _, v in harness.prom_samples(env):
        for pattern, key in ((r"llmcap_debug_cb_(\w+)_ns", "ns"), (r"llmcap_debug_cbns_(\w+?)__\w+", "hc_ns"),
                             (r"llmcap_debug_cbhc_(\w+?)__\w+", "calls")):
            m = re.fullmatch(pattern, name)
            if m:
                out.setdefault(m.group(1), {}).setdefault(key, 0)
                out[m.group(1)][key] += v
        m = re.fullmatch(r"llmcap_debug_cb(ns|hc)_(\w+?)__(\w+)", name)
        if m:  # per host-call kind, all callbacks together
            kinds = out.setdefault("__kinds__", {}).setdefault(m.group(3), {})
            kinds[m.group(1)] = kinds.get(m.group(1), 0) + v
    return out


def measure(tmp: Path, upstream_port: int, variant: str, duration: float) -> dict:
    cfg = bench.proxy_config(variant, upstream_port, bench.HOSTCALLS_WASM)
    env = harness.Envoy(tmp, cfg, name=f"vmtime-{variant}", concurrency=1)
    wrk = bench.ensure_wrk()
    lua = bench.write_lua(tmp / f"vmtime-{variant}.lua", bench.request_body("1k"),
                          {"Content-Type": "application/json", "Authorization": "Bearer bench"})
    url = f"http://127.0.0.1:{env.port}{bench.PATH}"
    try:
        bench.run_wrk(wrk, lua, url, 1, 8, 2.0)  # warm-up: V8 tiers up
        time.sleep(0.3)
        a = snapshot(env)
        r = bench.run_wrk(wrk, lua, url, 1, 8, duration)
        time.sleep(0.3)  # the tick publishes the totals
        b = snapshot(env)
    finally:
        env.stop()
    n = max(r["requests"], 1)
    kinds = {}
    for kind, v in b.pop("__kinds__", {}).items():
        was = a.get("__kinds__", {}).get(kind, {})
        calls = (v.get("hc", 0) - was.get("hc", 0)) / n
        if calls > 0.005:
            ns = (v.get("ns", 0) - was.get("ns", 0)) / n
            kinds[kind] = {"calls": calls, "us": ns / 1000, "ns_per_call": ns / calls}
    rows = {}
    for cb, v in b.items():
        if cb == "__kinds__":
            continue
        d = {k: (v.get(k, 0) - a.get(cb, {}).get(k, 0)) / n for k in ("ns", "hc_ns", "calls")}
        if d["ns"] > 0:
            rows[cb] = {"us": d["ns"] / 1000, "host_us": d["hc_ns"] / 1000, "calls": d["calls"]}
    return {"requests": n, "callbacks": rows, "kinds": kinds}


def table(res: dict) -> str:
    lines = ["| callback | in the VM, µs | host calls | in host calls, µs | our code, µs |", "|---|---:|---:|---:|---:|"]
    tot = [0.0, 0.0, 0.0]
    for cb, r in sorted(res["callbacks"].items()):
        lines.append(f"| {cb} | {r['us']:.1f} | {r['calls']:.2f} | {r['host_us']:.1f} | {r['us'] - r['host_us']:.1f} |")
        tot = [tot[0] + r["us"], tot[1] + r["calls"], tot[2] + r["host_us"]]
    lines.append(f"| **all** | **{tot[0]:.1f}** | **{tot[1]:.2f}** | **{tot[2]:.1f}** | **{tot[0] - tot[2]:.1f}** |")
    lines += ["", "| host call | per request | µs per request | ns per call |", "|---|---:|---:|---:|"]
    for kind, k in sorted(res.get("kinds", {}).items(), key=lambda kv: -kv[1]["us"]):
        lines.append(f"| {kind} | {k['calls']:.2f} | {k['us']:.1f} | {k['ns_per_call']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="filter")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--json")
    ap.add_argument("--wasm", help="another counting build (default: make build-hostcalls's)")
    args = ap.parse_args()
    if args.wasm:
        bench.HOSTCALLS_WASM = Path(args.wasm)
    if not bench.HOSTCALLS_WASM.exists():
        print(f"missing {bench.HOSTCALLS_WASM}: run `make build-hostcalls` first", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vmtime-"))
    up = harness.Envoy(tmp, bench.upstream_config(), name="upstream", concurrency=2)
    out = {}
    try:
        for v in args.variants.split(","):
            out[v] = measure(tmp, up.port, v, args.duration)
            print(f"\n{v} ({out[v]['requests']} requests)\n\n{table(out[v])}")
    finally:
        up.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
