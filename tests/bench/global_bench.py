"""The cost of the global tier (docs/global-limits.md), in one run on one machine.

Variants, each an Envoy in front of the same direct_response mock (see bench.py):

- ``passthrough``: Envoy alone.
- ``local``: the filter with local limits only (the shipped default).
- ``global-per-request``: local limits, then a call to the rate limit service
  (tests/rls: Limitador over Redis, Envoy's RLS gRPC protocol) for every request.
- ``global-leased``: the same, with leased batches (``lease: {requests: 200,
  tokens: 200000}``): most requests are served from the leased pool, one in
  about 200 waits for a call.

The service's limits are far above the load, so every request is admitted and
the numbers are the tier's own cost. Reported: added p50 and p99 at one
connection, throughput and proxy CPU per request at 32 connections, and how the
requests were decided (pool or service), as medians over alternating rounds.

    make bench-global      # about 3 minutes; writes tests/bench/results/global.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import harness  # noqa: E402
import rls  # noqa: E402

VARIANTS = ["passthrough", "local", "global-per-request", "global-leased"]
OUT = bench.RESULTS / "global.md"
HUGE = 1_000_000_000


def service_limits() -> list[dict]:
    return [{"namespace": "llm-capacity", "name": f"bench-{unit}", "max_value": HUGE, "seconds": 60,
             "conditions": [f"descriptors[0]['unit'] == '{unit}'"], "variables": []}
            for unit in ("requests", "tokens")]


def variant_config(variant: str, upstream_port: int, rls_port: int) -> dict:
    if variant == "passthrough":
        return bench.proxy_config("passthrough", upstream_port)
    cfg = bench.proxy_config("filter", upstream_port)
    cfg["static_resources"]["clusters"].append(rls.rls_cluster(rls_port, "ratelimit"))
    plugin = harness.plugin_config(cfg)
    if variant != "local":
        g = {"cluster": "ratelimit", "timeout_ms": 1000, "on_failure": "closed"}
        if variant == "global-leased":
            g["lease"] = {"requests": 200, "tokens": 200_000}
        plugin["routes"][bench.ROUTE]["global"] = g
    harness.set_plugin_config(cfg, plugin)
    return cfg


def decisions(env: harness.Envoy) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, labels, v in harness.prom_samples(env):
        if n in ("llmcap_global_decisions_total", "llmcap_global_calls_total"):
            k = labels.get("result", "") if n == "llmcap_global_decisions_total" else f"call:{labels.get('result')}"
            out[k] = out.get(k, 0) + v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--smoke", action="store_true", help="1 round of 1 s, no file written")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds = 1.0, 1
    wrk = bench.ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="bench-global-"))
    envs: dict[str, harness.Envoy] = {}
    redis = svc = None
    try:
        redis = rls.RedisServer(tmp)
        svc = rls.RateLimitService(tmp, service_limits(), redis=redis)
        upstream = harness.Envoy(tmp, bench.upstream_config(), name="upstream", concurrency=2)
        targets = {}
        for v in VARIANTS:
            envs[v] = harness.Envoy(tmp, variant_config(v, upstream.port, svc.port), name=v.replace("-", "_"),
                                    concurrency=2)
            t = bench.Target(v, envs[v].port, envs[v].proc.pid, {"Authorization": "Bearer bench"})
            bench.sanity(t, "1k", False)
            t.lua[("1k", False)] = bench.write_lua(tmp / f"{v}.lua", bench.request_body("1k"),
                                                   {"Content-Type": "application/json", **t.headers})
            targets[v] = t
        for v in VARIANTS:
            bench.run_wrk(wrk, targets[v].lua[("1k", False)], targets[v].url, 2, 16, 1.0)
        raw = {v: {"one": [], "load": []} for v in VARIANTS}
        for rnd in range(args.rounds):
            for level, (threads, conns) in (("one", (1, 1)), ("load", (2, bench.LOAD_CONNS))):
                for v in (VARIANTS if rnd % 2 == 0 else list(reversed(VARIANTS))):
                    t = targets[v]
                    c0 = bench.cpu_seconds(t.pid)
                    r = bench.run_wrk(wrk, t.lua[("1k", False)], t.url, threads, conns, args.duration)
                    r["cpu_us"] = (bench.cpu_seconds(t.pid) - c0) / max(r["requests"], 1) * 1e6
                    raw[v][level].append(r)
                    print(f"round {rnd + 1} {level:4} {v:20} {r['rps']:8.0f} req/s  p50 {bench.fmt_us(r['p50']):>9}"
                          f"  p99 {bench.fmt_us(r['p99']):>9}  errors {r['errors']}", file=sys.stderr, flush=True)
        res = {v: {lvl: {k: statistics.median(x[k] for x in rs) for k in ("rps", "cpu_us", "p50", "p99")}
                   | {"errors": sum(x["errors"] for x in rs)} for lvl, rs in raw[v].items()} for v in VARIANTS}
        dec = {v: decisions(envs[v]) for v in VARIANTS[2:]}
        problems = [f"{v} {lvl}: {r['errors']} errors" for v in VARIANTS for lvl, r in res[v].items() if r["errors"]]
        for v, d in dec.items():
            bad = {k: n for k, n in d.items() if k not in ("pool", "service", "call:ok")}
            if bad:
                problems.append(f"{v}: {bad}")
        md = report(res, dec, args)
        if problems:
            md += "\n**Problems:** " + "; ".join(problems) + "\n"
        print(md)
        if not args.smoke:
            Path(args.out).write_text(md)
            Path(args.out).with_suffix(".json").write_text(json.dumps({"results": res, "decisions": dec}, indent=1))
        return 1 if problems else 0
    finally:
        for e in envs.values():
            e.stop()
        for p in (svc, redis):
            if p is not None:
                p.stop()
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict, dec: dict, args) -> str:
    base, local = res["passthrough"], res["local"]
    meta = bench.machine()
    lines = [
        "# Global tier: added latency and throughput",
        "",
        f"`make bench-global` on {meta.get('cpu', '?')}, {meta.get('cpus', '?')} cores, Envoy {meta.get('envoy', '?')}, git {meta.get('git', '?')}, {meta.get('date', '')}; 1 KB chat bodies, "
        f"not streamed; medians of {args.rounds} rounds of {args.duration:.0f} s (alternating order). "
        "The rate limit service is tests/rls (Limitador over Redis) on the same machine.",
        "",
        "| variant | p50 at 1 conn | p99 at 1 conn | added p50 vs local | added p99 vs local | req/s at 32 conns "
        "| vs passthrough | vs local | proxy CPU/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        r = res[v]
        lines.append(
            f"| {v} | {bench.fmt_us(r['one']['p50'])} | {bench.fmt_us(r['one']['p99'])} "
            f"| {'' if v == 'passthrough' else bench.fmt_us(r['one']['p50'] - local['one']['p50'])} "
            f"| {'' if v == 'passthrough' else bench.fmt_us(r['one']['p99'] - local['one']['p99'])} "
            f"| {r['load']['rps']:.0f} | {r['load']['rps'] / base['load']['rps']:.2f}x "
            f"| {r['load']['rps'] / local['load']['rps']:.2f}x | {r['load']['cpu_us']:.0f} µs |")
    lines += ["", "How the global variants decided (whole run, both levels):", ""]
    for v, d in dec.items():
        lines.append(f"- {v}: " + ", ".join(f"{k} {int(n)}" for k, n in sorted(d.items())))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
