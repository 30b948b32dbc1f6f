#!/usr/bin/env python3
"""Cost of the llm-capacity filter and its RPM/TPM limiter in Envoy: throughput and
added latency against plain Envoy, measured in the same run on the same machine.

Run by hand (not part of `make test`), after `make build`:

    .venv/bin/python tests/bench/limits_bench.py            # writes tests/bench/results/limits.md
    .venv/bin/python tests/bench/limits_bench.py --duration 4 --rounds 1 --out /tmp/quick.md

Set-up, all on loopback:

* upstream: a separate Envoy built from envoy/envoy.yaml with every route's action
  replaced by a `direct_response` answering a fixed chat completion (with `usage` and
  provider x-ratelimit-* headers), so the provider is never the bottleneck and costs
  the same in every variant;
* proxies, each `--concurrency 2`, from envoy/envoy.yaml with only the ports changed
  and the access log removed (it would cost the same in every variant and hide
  differences), pointing at the upstream:
  - `passthrough`: the Wasm filter removed (router only);
  - `filter`: the filter as shipped in envoy.yaml, but no limits on the route;
  - `limits`: route limits on (requests, tokens, input and output tokens, in-flight),
    set far above what the load can reach, so nothing is rejected and every request
    takes the limiter's admission and settlement paths in shared data;
  - `limits+tenant`: the same plus per-tenant limits (a second shared-data scope);
* load: `wrk` (Debian's package; installed with apt-get if missing) POSTing a ~1 KB
  chat request to /v1/chat/completions, at 1 connection (latency of one request at a
  time), 16 and 64 connections (saturation: max throughput, latency under load).
  Without wrk the script falls back to tests/e2e/loadgen.py (closed loop), which is
  far slower than Envoy and says so in the report.

The variants run interleaved (every variant at one level, then the next level), for
`--rounds` rounds; each figure in the report is the median over rounds. On a 2-core
machine wrk, the upstream Envoy and the proxy share both cores, so absolute numbers
are low and noisy; the ratios against passthrough in the same run are the result.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import harness  # noqa: E402
import loadgen  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results"
ROUTE = "openai-chat"
PATH = "/v1/chat/completions"
LEVELS = [(1, 1), (2, 16), (2, 64)]  # (wrk threads, connections)
VARIANTS = ["passthrough", "filter", "limits", "limits+tenant"]

HUGE_LIMITS = {  # never reached: every request is admitted, the limiter still does all its work
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "input_tokens_per_minute": 1_000_000_000_000,
    "output_tokens_per_minute": 1_000_000_000_000,
    "max_in_flight": 100_000,
}
TENANT_LIMITS = {"header": "x-tenant-id", "trust_header": True, "slots": 1024,
                 "requests_per_minute": 1_000_000_000, "tokens_per_minute": 1_000_000_000_000}

COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "alpha beta gamma delta apple river " * 4},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 240, "completion_tokens": 24, "total_tokens": 264},
}
PROVIDER_HEADERS = {
    "x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms", "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999000", "x-ratelimit-reset-tokens": "2ms",
}
PROMPT = ("Summarize the capacity planning notes below in three bullet points. "
          + "Queues absorb bursts, buckets shape rates, retries need jitter and budgets. " * 12)


def request_body() -> bytes:
    return loadgen.chat_body(model="gpt-4o-mini", prompt=PROMPT, max_tokens=256)


# ---------------------------------------------------------------------------
# Envoy configurations
# ---------------------------------------------------------------------------

def _hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def upstream_config() -> dict:
    """envoy/envoy.yaml with every route answering a fixed completion by direct_response."""
    cfg = harness.load_envoy_config()
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    lst = cfg["static_resources"]["listeners"][0]
    lst["name"] = "bench_upstream"
    lst["address"]["socket_address"]["port_value"] = 0
    hcm = _hcm(cfg)
    hcm["stat_prefix"] = "bench_upstream"
    hcm.pop("access_log", None)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    body = json.dumps(COMPLETION, separators=(",", ":"))
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            r.pop("route", None)
            r["direct_response"] = {"status": 200, "body": {"inline_string": body}}
            r["response_headers_to_add"] = [
                {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in {"content-type": "application/json", **PROVIDER_HEADERS}.items()]
    cfg["static_resources"]["clusters"] = []
    return cfg


def proxy_config(variant: str, upstream_port: int) -> dict:
    cfg = harness.localize(harness.load_envoy_config(), upstream_port)
    hcm = _hcm(cfg)
    hcm.pop("access_log", None)
    if variant == "passthrough":
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        return cfg
    plugin = harness.plugin_config(cfg)
    policy = plugin["routes"][ROUTE]
    policy.pop("limits", None)
    policy.pop("tenant_limits", None)
    if variant in ("limits", "limits+tenant"):
        policy["limits"] = dict(HUGE_LIMITS)
    if variant == "limits+tenant":
        policy["tenant_limits"] = dict(TENANT_LIMITS)
    harness.set_plugin_config(cfg, plugin)
    return cfg


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
wrk.headers["x-tenant-id"] = "tenant-bench"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d," ..
    "\\"status\\":%d,\\"timeout\\":%d,\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"p999\\":%d,\\"mean\\":%.1f,\\"max\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


def ensure_wrk() -> str | None:
    w = shutil.which("wrk")
    if w:
        return w
    if os.geteuid() == 0:
        print("wrk not found: installing Debian's wrk", file=sys.stderr)
        cmd = "(apt-get install -y wrk || (apt-get update && apt-get install -y wrk)) >/dev/null 2>&1"
        subprocess.run(["bash", "-c", cmd], check=False)
    return shutil.which("wrk")


def run_wrk(wrk: str, lua: Path, url: str, threads: int, conns: int, duration: float) -> dict:
    out = subprocess.run([wrk, "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--timeout", "5s",
                          "-s", str(lua), url], capture_output=True, text=True, timeout=duration + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


def run_python(url: str, conns: int, duration: float) -> dict:
    run = loadgen.run(url, rate=None, duration=duration, max_in_flight=conns, connections=conns,
                      body=request_body(), headers={"x-tenant-id": "tenant-bench"}, api_key="bench")
    lat = sorted(r.latency * 1e6 for r in run.results if r.status is not None)
    n = len(run.results)
    return {"requests": n, "duration_us": run.wall * 1e6, "rps": n / run.wall if run.wall else 0.0,
            "p50": loadgen.percentile(lat, 50), "p90": loadgen.percentile(lat, 90),
            "p99": loadgen.percentile(lat, 99), "p999": loadgen.percentile(lat, 99.9),
            "mean": statistics.fmean(lat) if lat else 0.0, "max": lat[-1] if lat else 0.0,
            "errors": sum(1 for r in run.results if r.status != 200)}


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

def sanity(variant: str, env: harness.Envoy) -> None:
    """One request: answered 200 by the upstream, through the filter where there is one."""
    status, headers, raw = harness.raw_request(env.port, "POST", PATH, request_body(),
                                               {"content-type": "application/json", "authorization": "Bearer bench",
                                                "x-tenant-id": "tenant-bench"})
    if status != 200 or json.loads(raw)["id"] != "chatcmpl-bench":
        raise RuntimeError(f"{variant}: sanity request got {status}: {raw[:300]!r}")
    lim = headers.get("x-ratelimit-limit-requests")
    if variant == "passthrough" or variant == "filter":
        if lim != PROVIDER_HEADERS["x-ratelimit-limit-requests"]:
            raise RuntimeError(f"{variant}: expected the provider's rate-limit headers, got {headers}")
    else:
        want = str(TENANT_LIMITS["requests_per_minute"] if variant == "limits+tenant"
                   else HUGE_LIMITS["requests_per_minute"])
        if lim != want:
            raise RuntimeError(f"{variant}: expected the limiter's x-ratelimit-limit-requests {want}, got {headers}")


def filter_counts(env: harness.Envoy) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in env.stats_prometheus().splitlines():
        if line.startswith("llmcap_requests_total{"):
            name, val = line.rsplit(" ", 1)
            out[name] = float(val)
    return out


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    envoy_v = subprocess.run([str(harness.ENVOY_BIN), "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    wasm = harness.WASM.stat()
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "envoy": envoy_v.split("version:")[-1].strip(), "git": rev,
            "wasm_bytes": wasm.st_size,
            "wasm_built": dt.datetime.fromtimestamp(wasm.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt_us(v: float) -> str:
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def report(res: dict, meta: dict, args, tool: str) -> str:
    lines = ["# Filter and limiter overhead (tests/bench/limits_bench.py)", "",
             f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['cpu']}), kernel {meta['kernel']}, "
             f"Envoy {meta['envoy']}, git {meta['git']}, .wasm {meta['wasm_bytes']} bytes built {meta['wasm_built']}.",
             "",
             f"Load: {tool}, POST {PATH} with a {len(request_body())}-byte chat request; upstream is a separate "
             "Envoy answering a fixed completion by `direct_response`; every proxy runs `--concurrency 2` without "
             f"access log. {args.duration:g} s per measurement after a {args.warmup:g} s warm-up, variants interleaved, "
             f"median of {args.rounds} round(s). Everything shares the same {meta['cpus']} cores, so absolute numbers "
             "are low; compare the ratios (same run).", "",
             "Variants: `passthrough` = no Wasm filter; `filter` = llm-capacity without limits (estimation, "
             "reservation, reconciliation, metrics); `limits` = plus route limits on requests, tokens, input, output "
             "tokens and in-flight, set too high to reject; `limits+tenant` = plus per-tenant limits.", ""]
    base = {lvl: res["passthrough"][lvl] for lvl in res["passthrough"]}
    lines += ["## Max throughput", "",
              "| variant | max req/s | vs passthrough | at connections |", "|---|---:|---:|---:|"]
    for v in res:
        best_lvl = max(res[v], key=lambda l: res[v][l]["rps"])
        best_base = max(b["rps"] for b in base.values())
        lines.append(f"| {v} | {res[v][best_lvl]['rps']:.0f} | {res[v][best_lvl]['rps'] / best_base:.2f} | {best_lvl} |")
    lines += [""]
    for lvl in base:
        title = "one connection (latency of a lone request)" if lvl == "1" else f"{lvl} connections (under load)"
        lines += [f"## {title}", "",
                  "| variant | req/s | req/s range | vs passthrough | p50 | p99 | added p50 | added p99 | p50 ratio | p99 ratio | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        b = base[lvl]
        for v in res:
            r = res[v][lvl]
            lines.append(
                f"| {v} | {r['rps']:.0f} | {min(r['rps_rounds']):.0f}-{max(r['rps_rounds']):.0f} | "
                f"{r['rps'] / b['rps']:.2f} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | "
                f"{fmt_us(r['p50'] - b['p50']) if v != 'passthrough' else '-'} | "
                f"{fmt_us(r['p99'] - b['p99']) if v != 'passthrough' else '-'} | "
                f"{r['p50'] / b['p50']:.2f} | {r['p99'] / b['p99']:.2f} | {r['errors']} |")
        lines += [""]
    lines += ["## Per round (req/s)", "", "| variant | connections | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " |",
              "|---|---:|" + "---:|" * args.rounds]
    for v in res:
        for lvl in res[v]:
            lines.append(f"| {v} | {lvl} | " + " | ".join(f"{x:.0f}" for x in res[v][lvl]["rps_rounds"]) + " |")
    lines += ["", "Checks made by the run: every variant answered a sanity request with the upstream's completion; "
              "the limit variants answered with the limiter's x-ratelimit-* headers (and the others with the "
              "provider's); no errors or non-2xx answers under load; the filter variants counted no "
              "`rejected_rate_limited` outcome.", ""]
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (whole seconds, for wrk)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the first measurement of a variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(RESULTS / "limits.md"))
    ap.add_argument("--note", default="", help="a line appended to the report")
    ap.add_argument("--python-load", action="store_true", help="use tests/e2e/loadgen.py even if wrk is there")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    assert variants and variants[0] == "passthrough" and set(variants) <= set(VARIANTS), variants
    if not harness.WASM.exists():
        print(f"missing {harness.WASM}: run `make build` first", file=sys.stderr)
        return 2

    wrk = None if args.python_load else ensure_wrk()
    tool = f"wrk ({subprocess.run([wrk, '--version'], capture_output=True, text=True).stdout.split(' [')[0].strip()})" \
        if wrk else "tests/e2e/loadgen.py (closed loop; wrk unavailable: Python is the bottleneck, ratios understate the filter's cost)"
    print(f"load: {tool}", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="limits-bench-"))
    envs: dict[str, harness.Envoy] = {}
    try:
        upstream = harness.Envoy(tmp, upstream_config(), name="upstream", concurrency=2)
        for v in variants:
            envs[v] = harness.Envoy(tmp, proxy_config(v, upstream.port), name=v.replace("+", "_"), concurrency=2)
            sanity(v, envs[v])
        lua = tmp / "post.lua"
        lua.write_text(WRK_LUA.format(body=request_body().decode()))

        def measure(v: str, threads: int, conns: int, seconds: float) -> dict:
            u = envs[v].base_url + PATH
            return run_wrk(wrk, lua, u, threads, conns, seconds) if wrk else run_python(u, conns, seconds)

        for v in variants:  # warm-up: V8 tiers up, calibration settles, connections pools fill
            measure(v, 2, 16, args.warmup)
        raw: dict[str, dict[str, list[dict]]] = {v: {str(c): [] for _, c in LEVELS} for v in variants}
        for rnd in range(args.rounds):
            for threads, conns in LEVELS:
                order = variants if rnd % 2 == 0 else list(reversed(variants))
                for v in order:
                    r = measure(v, threads, conns, args.duration)
                    raw[v][str(conns)].append(r)
                    print(f"round {rnd + 1} c={conns:<3} {v:<14} {r['rps']:8.0f} req/s  p50 {fmt_us(r['p50']):>9}  "
                          f"p99 {fmt_us(r['p99']):>9}  errors {r['errors']}", file=sys.stderr)
        res = {v: {lvl: {"rps": statistics.median(x["rps"] for x in rs),
                         "p50": statistics.median(x["p50"] for x in rs),
                         "p99": statistics.median(x["p99"] for x in rs),
                         "errors": sum(x["errors"] for x in rs),
                         "rps_rounds": [x["rps"] for x in rs]}
                   for lvl, rs in raw[v].items()} for v in variants}
        problems = [f"{v} c={lvl}: {r['errors']} errors" for v in res for lvl, r in res[v].items() if r["errors"]]
        for v in variants[1:]:
            c = filter_counts(envs[v])
            admitted = sum(val for k, val in c.items() if 'outcome="admitted"' in k)
            limited = sum(val for k, val in c.items() if 'outcome="rejected_rate_limited"' in k)
            if limited or admitted == 0:
                problems.append(f"{v}: admitted {admitted}, rate limited {limited}")
        meta = machine()
        md = report(res, meta, args, tool)
        if problems:
            md += "\n**Problems:** " + "; ".join(problems) + "\n"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res, "raw": raw}, indent=1))
        print(md)
        return 1 if problems else 0
    finally:
        for e in envs.values():
            e.stop()
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
