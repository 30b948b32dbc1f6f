#!/usr/bin/env python3
"""`make bench`: what llm-capacity costs on top of Envoy, and against peer gateways,
all measured in one run on one machine.

    make bench                                   # full run: tests/bench/results/bench.{md,json}, docs/bench.png
    .venv/bin/python tests/bench/bench.py --smoke --out /tmp/smoke.md   # CI smoke (seconds)

Set-up, all on loopback:

* mock provider: a separate Envoy answering every chat completion by
  `direct_response` (a JSON completion with `usage` and provider `x-ratelimit-*`
  headers, or, for requests carrying `x-bench-stream: 1`, an SSE stream ending
  in a usage chunk), so the upstream is never the bottleneck and costs the same
  for everyone;
* the variants, each `--concurrency 2`, built from envoy/envoy.yaml with only
  the ports changed and the access log removed (same for all):
  - `passthrough`: no Wasm filter; the route sends to the primary cluster with
    the same retry policy;
  - `wasm-floor`: the module loaded, with no route policy and telemetry off:
    what any proxy-wasm filter costs in this Envoy (VM calls per stream);
  - `filter`: llm-capacity as shipped: body estimate, RPM and TPM limits (set
    too high to refuse), circuits, the two-cluster failover chain with the
    per-attempt upstream instance, metrics and the access-log state;
  - `filter-ds`: the same with health from final answers only
    (`upstream_filter: false`, no upstream instance);
  - peers (1 KB, not streamed): LiteLLM proxy and Portkey gateway in front of
    the same mock, with a fallback and (LiteLLM) enforced rpm/tpm limits
    (tests/bench/peers.py installs them);
* load: wrk (Debian's package), 1 connection (latency of a lone request) and
  32 connections (saturation). Variants interleave in alternating order for
  `--rounds` rounds; each figure is the median over rounds.

Reported, each against passthrough in the same run: max throughput, added p50
and p99 at one connection and under load, CPU time per request of the proxy
process; plus Wasm memory per VM, module size, host calls and shared-data
operations per request (a build with `--features hostcall-count`), and the
measured cost of each kind of host call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import harness  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results"
PLOT = ROOT / "docs" / "bench.png"
HOSTCALLS_WASM = ROOT / "target" / "hostcalls" / "wasm32-wasip1" / "release" / "llm_capacity.wasm"
ROUTE = "openai-chat"
PATH = "/v1/chat/completions"
VARIANTS = ["passthrough", "wasm-floor", "filter", "filter-ds"]
# The filter with one feature off each: where its cost goes (1 KB, not streamed);
# and with one opt-in routing feature on: lowest_latency, hedging armed on every
# request but never firing (the mock answers long before after_ms).
ABLATION = ["filter-nometrics", "filter-nostate", "filter-nolimits", "filter-nochain", "filter-nohold",
            "filter-lowlat", "filter-hedge"]
PEERS = ["litellm", "portkey"]
SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}
LOAD_CONNS = 32

HUGE_LIMITS = {  # never reached: every request is admitted, the limiter does all its work
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
}

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
PROMPT_UNIT = "Queues absorb bursts, buckets shape rates, retries need jitter and budgets. "


def sse_body(events: int = 24) -> str:
    """A chat completion stream: `events` content chunks, a usage chunk, [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-4o-mini"}
    out = []
    for i in range(events):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": " word"}
        out.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out.append({**base, "choices": [], "usage": COMPLETION["usage"]})
    return "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in out) + "data: [DONE]\n\n"


def request_body(size: str = "1k", stream: bool = False) -> bytes:
    """A chat request of about SIZES[size] bytes (the prompt is padded to reach it)."""
    target = SIZES[size]
    body = {"model": "gpt-4o-mini", "max_tokens": 256,
            "messages": [{"role": "system", "content": "You are a concise assistant."},
                         {"role": "user", "content": ""}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    empty = len(json.dumps(body, separators=(",", ":")))
    n = max(1, target - empty)
    body["messages"][1]["content"] = (PROMPT_UNIT * (n // len(PROMPT_UNIT) + 1))[:n]
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------
# Envoy configurations
# ---------------------------------------------------------------------------

def _hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def upstream_config() -> dict:
    """envoy/envoy.yaml with every route answering by direct_response (SSE when asked)."""
    cfg = harness.load_envoy_config()
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    lst = cfg["static_resources"]["listeners"][0]
    lst["name"] = "bench_upstream"
    lst["address"]["socket_address"]["port_value"] = 0
    hcm = _hcm(cfg)
    hcm["stat_prefix"] = "bench_upstream"
    hcm.pop("access_log", None)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    hcm["http_filters"][0]["typed_config"].pop("upstream_http_filters", None)
    # The whole request is read before the answer: a direct_response made at the
    # headers leaves the body unread, and Envoy then closes the connection (the
    # proxy under test opened one upstream connection per request, seen in the
    # profile of 2026-12-07: about 50 µs of its system CPU per request).
    hcm["http_filters"].insert(0, {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1 << 20}})

    def answer(body: str, content_type: str, match: dict) -> dict:
        return {"match": match, "direct_response": {"status": 200, "body": {"inline_string": body}},
                "response_headers_to_add": [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in {"content-type": content_type, **PROVIDER_HEADERS}.items()]}

    stream_match = {"prefix": "/", "headers": [{"name": "x-bench-stream", "string_match": {"exact": "1"}}]}
    hcm["route_config"] = {"name": "bench_upstream", "max_direct_response_body_size_bytes": 65536, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        answer(sse_body(), "text/event-stream", stream_match),
        answer(json.dumps(COMPLETION, separators=(",", ":")), "application/json", {"prefix": "/"}),
    ]}]}
    cfg["static_resources"]["clusters"] = []
    return cfg


def _plain_route(hcm: dict) -> None:
    """The chain route's cluster matcher replaced by its primary cluster."""
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            if "route" in r and "inline_cluster_specifier_plugin" in r["route"]:
                r["route"].pop("inline_cluster_specifier_plugin")
                r["route"]["cluster"] = "emulator"


def _router(hcm: dict) -> dict:
    return next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")["typed_config"]


def proxy_config(variant: str, upstream_port: int, wasm: Path | None = None) -> dict:
    cfg = harness.localize(harness.load_envoy_config(), upstream_port)
    hcm = _hcm(cfg)
    hcm.pop("access_log", None)
    if wasm is not None:
        for f in (harness.wasm_filter(cfg), harness.upstream_wasm_filter(cfg)):
            if f is not None:
                f["vm_config"]["code"]["local"]["filename"] = str(wasm)
    if variant == "passthrough":
        hcm["http_filters"] = [f for f in hcm["http_filters"]
                               if f["name"] not in ("envoy.filters.http.wasm", "envoy.filters.http.fault")]
        _router(hcm).pop("upstream_http_filters", None)
        _plain_route(hcm)
        return cfg
    plugin = harness.plugin_config(cfg)
    plugin["routes"][ROUTE]["limits"] = dict(HUGE_LIMITS)
    if variant == "wasm-floor":
        plugin["routes"] = {}
        plugin["telemetry"] = {"metrics": False, "filter_state": False}
    if variant == "filter-nometrics":
        plugin.setdefault("telemetry", {})["metrics"] = False
    if variant == "filter-nostate":
        plugin.setdefault("telemetry", {})["filter_state"] = False
    if variant == "filter-nolimits":
        plugin["routes"][ROUTE].pop("limits", None)
    if variant == "filter-nohold":
        plugin["hold_headers"] = False
        plugin["queue_hold"] = "vm"  # the fault filter's delay needs held headers
    if variant == "filter-lowlat":
        plugin["routes"][ROUTE]["strategy"] = "lowest_latency"
    if variant == "filter-hedge":
        plugin["routes"][ROUTE]["hedge"] = {"after_ms": 60000, "max_share": 1.0, "cluster": "emulator-hedged"}
        plugin["routes"][ROUTE]["retry_budget_percent"] = 100
    if variant == "filter-nochain":
        plugin["routes"][ROUTE]["clusters"] = ["emulator"]
        _plain_route(hcm)
    if variant in ("wasm-floor", "filter-ds"):
        plugin["upstream_filter"] = False
        _router(hcm).pop("upstream_http_filters", None)
    if variant == "wasm-floor":
        _plain_route(hcm)
    harness.set_plugin_config(cfg, plugin)
    return cfg


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------

PERCENTILES = [50, 75, 90, 99, 99.9]
WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"mean\\":%.1f,\\"max\\":%d", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency.mean, latency.max))
  for _, p in ipairs({{{pcts}}}) do
    io.write(string.format(",\\"p%s\\":%d", tostring(p), latency:percentile(p)))
  end
  io.write("}}\\n")
end
"""


def write_lua(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    hl = "\n".join(f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items())
    path.write_text(WRK_LUA.format(body=body.decode(), headers=hl, pcts=", ".join(str(p) for p in PERCENTILES)))
    return path


def ensure_wrk() -> str:
    w = shutil.which("wrk")
    if not w and os.geteuid() == 0:
        subprocess.run(["bash", "-c", "(apt-get install -y wrk || (apt-get update && apt-get install -y wrk))"
                        " >/dev/null 2>&1"], check=False)
        w = shutil.which("wrk")
    if not w:
        raise SystemExit("wrk is needed (Debian package wrk)")
    return w


def run_wrk(wrk: str, lua: Path, url: str, threads: int, conns: int, duration: float) -> dict:
    out = subprocess.run([wrk, "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s",
                          "--timeout", "10s", "-s", str(lua), url], capture_output=True, text=True,
                         timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------

class Target:
    """Something wrk can load: a proxy variant or a peer gateway."""

    def __init__(self, name: str, port: int, pid: int, headers: dict[str, str], path: str = PATH):
        self.name, self.port, self.pid, self.headers, self.path = name, port, pid, headers, path
        self.url = f"http://127.0.0.1:{port}{path}"
        self.lua: dict[tuple[str, bool], Path] = {}


def sanity(t: Target, size: str, stream: bool) -> None:
    """One request: the mock's answer comes back through the target."""
    headers = {"content-type": "application/json", **{k.lower(): v for k, v in t.headers.items()}}
    if stream:
        headers["x-bench-stream"] = "1"
    status, _, raw = harness.raw_request(t.port, "POST", t.path, request_body(size, stream), headers, timeout=30)
    ok = status == 200 and (b"data: [DONE]" in raw if stream else json.loads(raw).get("id") == "chatcmpl-bench")
    if not ok:
        raise RuntimeError(f"{t.name} {size} stream={stream}: got {status}: {raw[:300]!r}")


def filter_checks(env: harness.Envoy, variant: str) -> list[str]:
    """The filter variants did their work: every request admitted, none refused."""
    samples = harness.prom_samples(env)
    total = lambda name, **kw: sum(v for n, ls, v in samples  # noqa: E731
                                   if n == name and all(ls.get(k) == w for k, w in kw.items()))
    problems = []
    if variant.startswith("filter"):
        if variant == "filter-nometrics":
            return problems
        admitted = total("llmcap_requests_total", route=ROUTE, outcome="admitted")
        refused = sum(v for n, ls, v in samples if n == "llmcap_requests_total" and ls.get("outcome", "").startswith("rejected"))
        if admitted == 0 or refused:
            problems.append(f"{variant}: admitted {admitted:.0f}, refused {refused:.0f}")
        if variant != "filter-nometrics" and total("llmcap_reconciliations_total", route=ROUTE, source="provider") == 0:
            problems.append(f"{variant}: no provider reconciliation")
        if variant == "filter" and total("llmcap_upstream_attempts_total", cluster="emulator", **{"class": "ok"}) == 0:
            problems.append("filter: the upstream instance counted no attempt")
    return problems


# ---------------------------------------------------------------------------
# host calls per request (the hostcall-count build)
# ---------------------------------------------------------------------------

def host_calls(tmp: Path, upstream_port: int, cases: list[tuple[str, bool]], n: int = 200,
               variant: str = "filter") -> dict:
    """Host calls per request by kind, and (for `filter`) per-call costs, from the counting build."""
    if not HOSTCALLS_WASM.exists():
        return {}
    out: dict = {"per_request": {}, "call_ns": {}}
    env = harness.Envoy(tmp, proxy_config(variant, upstream_port, HOSTCALLS_WASM), name=f"hostcalls-{variant}",
                        concurrency=1)
    try:
        before: dict[str, float] = {}
        for size, stream in cases:
            body = request_body(size, stream)
            hdrs = {"content-type": "application/json", "authorization": "Bearer bench"}
            if stream:
                hdrs["x-bench-stream"] = "1"
            for _ in range(n):
                status, _, _ = harness.raw_request(env.port, "POST", PATH, body, hdrs)
                if status != 200:
                    raise RuntimeError(f"hostcalls build: {status}")
            now = {}
            for name, _, v in harness.prom_samples(env):
                m = re.fullmatch(r"llmcap_debug_hostcalls_(\w+)", name) or re.fullmatch(
                    r"llmcap_debug_cbhc_(\w+?__\w+)", name)
                if m:
                    now[m.group(1)] = v
                # Time inside the VM per callback (the Timer's gauges): "cb:<callback>:ns" and ":calls".
                m = re.fullmatch(r"llmcap_debug_cb_(\w+)_(ns|calls)", name)
                if m:
                    now[f"cb:{m.group(1)}:{m.group(2)}"] = v
            per = {k: (v - before.get(k, 0)) / n for k, v in now.items() if v - before.get(k, 0) > 0}
            case = f"{size}{' stream' if stream else ''}"
            spent: dict[str, dict[str, float]] = {}
            for k in [k for k in per if k.startswith("cb:")]:
                _, cb, unit = k.split(":")
                spent.setdefault(cb, {})[unit] = per.pop(k)
            out.setdefault("cb_spent", {})[case] = spent  # callback -> ns and entries per request
            out["per_request"][case] = {k: v for k, v in per.items() if "__" not in k}
            # callback -> kind -> calls per request
            by_cb: dict[str, dict[str, float]] = {}
            for k, v in per.items():
                if "__" in k:
                    cb, kind = k.split("__", 1)
                    by_cb.setdefault(cb, {})[kind] = v
            out.setdefault("per_callback", {})[case] = by_cb
            before = now
        if variant != "filter":
            return out
        harness.raw_request(env.port, "POST", PATH, request_body("1k"), {"content-type": "application/json",
                                                                          "x-llmcap-time-calls": "1"})
        for line in env.log.read_text().splitlines():
            m = re.search(r"host call (\w+): (\d+) ns", line)
            if m:
                out["call_ns"][m.group(1)] = int(m.group(2))  # the last (warmest) run wins
    finally:
        env.stop()
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def machine() -> dict:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    envoy_v = subprocess.run([str(harness.ENVOY_BIN), "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "envoy": envoy_v.split("version:")[-1].strip(), "git": rev, "wasm_bytes": harness.WASM.stat().st_size,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt_us(v: float) -> str:
    return f"{v / 1000:.2f} ms" if abs(v) >= 1000 else f"{v:.0f} µs"


TARGETS = {  # issue 8's bar, per body size: max throughput ratio; added p50/p99 at one connection (10 KB)
    "rps": {"1k": 0.90, "10k": 0.85},
    "p50": 40.0, "p99": 100.0, "memory": 8 * 1024 * 1024, "module": 2 * 1024 * 1024,
    "portkey": 9.0, "litellm": 90.0,
}


def report(res: dict, meta: dict, extra: dict, args) -> str:
    L = ["# Overhead benchmark (tests/bench/bench.py, `make bench`)", "",
         f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['cpu']}), kernel {meta['kernel']}, Envoy {meta['envoy']}, "
         f"git {meta['git']}, .wasm {meta['wasm_bytes']:,} bytes.", "",
         f"wrk POSTs a chat request to `{PATH}`; a separate Envoy answers by `direct_response`. Every proxy runs "
         f"`--concurrency 2` without access log; wrk, the mock and the proxy share the {meta['cpus']} cores. "
         f"{args.duration:g} s per measurement after a warm-up, variants interleaved, median of {args.rounds} "
         f"round(s). Absolute numbers are low and noisy; the ratios within this run are the result.", "",
         "Variants: `passthrough` = Envoy alone; `wasm-floor` = the module loaded but with nothing to do (no "
         "route policy, telemetry off), the cost of any proxy-wasm filter here; `filter` = llm-capacity as "
         "shipped (estimate, RPM+TPM limits, circuits, two-cluster failover chain with the per-attempt upstream "
         "instance, metrics, access-log state); `filter-ds` = the same, health from final answers only (no "
         "upstream instance).", ""]
    if meta.get("peers"):
        L += [f"Peers, 1 KB not streamed, same mock: LiteLLM proxy {meta['peers']['litellm']} (one worker, rpm and "
              f"tpm enforced by `enforce_model_rate_limits`, a fallback deployment, no database) and Portkey gateway "
              f"{meta['peers']['portkey']} (a fallback config; its open-source gateway has no rate limits). CPU per "
              "request is not measured for them (worker processes).", ""]
    base = "passthrough"
    # summary against the targets
    L += ["## Against the targets", "", "| figure | target | measured | met |", "|---|---|---|---|"]
    for size in ("1k", "10k"):
        key = f"{size}"
        if key in res and "load" in res[key].get("filter", {}):
            ratio = res[key]["filter"]["load"]["rps"] / res[key][base]["load"]["rps"]
            want = TARGETS["rps"][size]
            L.append(f"| throughput, {size} body (filter / passthrough) | ≥ {want:.2f}× | {ratio:.2f}× | "
                     f"{'yes' if ratio >= want else '**no**'} |")
    if "10k" in res and "one" in res["10k"].get("filter", {}):
        for p, want in (("p50", TARGETS["p50"]), ("p99", TARGETS["p99"])):
            added = res["10k"]["filter"]["one"][p] - res["10k"][base]["one"][p]
            L.append(f"| added {p} at one connection, 10 KB | ≤ {want:.0f} µs | {fmt_us(added)} | "
                     f"{'yes' if added <= want else '**no**'} |")
    if extra.get("wasm_memory"):
        mem = extra["wasm_memory"]
        L.append(f"| Wasm memory per VM | ≤ 8 MiB | {mem / 1048576:.1f} MiB | {'yes' if mem <= TARGETS['memory'] else '**no**'} |")
    L.append(f"| .wasm size | ≤ 2 MB | {meta['wasm_bytes'] / 1e6:.2f} MB | "
             f"{'yes' if meta['wasm_bytes'] <= TARGETS['module'] else '**no**'} |")
    if "1k" in res:
        for peer in PEERS:
            if peer in res["1k"] and "load" in res["1k"][peer]:
                ratio = res["1k"]["filter"]["load"]["rps"] / max(res["1k"][peer]["load"]["rps"], 1e-9)
                want = TARGETS[peer]
                L.append(f"| throughput vs {peer} (filter / {peer}, 1 KB) | ≥ {want:.0f}× | {ratio:.1f}× | "
                         f"{'yes' if ratio >= want else '**no**'} |")
    L.append("")
    for case, rs in res.items():
        title = (f"## {case.replace(' stream', '')} body, streamed (SSE, 26 events)" if "stream" in case else
                 "## Where the filter's cost goes: one feature off at a time, and the opt-in routing features on (1 KB body)" if "ablation" in case else
                 f"## {case} body")
        L += [title, "",
              "| target | req/s (32 conns) | vs passthrough | CPU µs/req | CPU vs passthrough | p50 one conn | added p50 | p99 one conn | added p99 | p50 at 32 | p99 at 32 | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        b = rs.get(base, {})
        for name, r in rs.items():
            one, load = r.get("one", {}), r.get("load", {})
            bl, bo = b.get("load", {}), b.get("one", {})
            rel = lambda x, y: f"{x / y:.2f}" if x and y else "-"  # noqa: E731
            add = lambda k: fmt_us(one[k] - bo[k]) if name != base and k in one and k in bo else "-"  # noqa: E731
            L.append(f"| {name} | {load.get('rps', 0):.0f} | {rel(load.get('rps'), bl.get('rps'))} | "
                     f"{load.get('cpu_us', 0):.0f} | {rel(load.get('cpu_us'), bl.get('cpu_us'))} | "
                     f"{fmt_us(one.get('p50', 0))} | {add('p50')} | {fmt_us(one.get('p99', 0))} | {add('p99')} | "
                     f"{fmt_us(load.get('p50', 0))} | {fmt_us(load.get('p99', 0))} | "
                     f"{one.get('errors', 0) + load.get('errors', 0)} |")
        L.append("")
    if extra.get("rss"):
        L += ["## Memory", "", "| variant | Envoy RSS after the run | vs passthrough |", "|---|---:|---:|"]
        for v, b in extra["rss"].items():
            L.append(f"| {v} | {b / 1048576:.1f} MiB | {(b - extra['rss'].get(base, b)) / 1048576:+.1f} MiB |")
        if extra.get("wasm_memory"):
            L.append("")
            L.append(f"Wasm linear memory of a worker's VM (`llmcap_wasm_memory_bytes`): "
                     f"{extra['wasm_memory'] / 1048576:.2f} MiB.")
        L.append("")
    hc = extra.get("host_calls") or {}
    if hc.get("per_request"):
        kinds = sorted({k for per in hc["per_request"].values() for k in per})
        L += ["## Host calls per request (`filter`, counted by the `hostcall-count` build)", "",
              "| case | total | shared-data ops | " + " | ".join(kinds) + " |",
              "|---|---:|---:|" + "---:|" * len(kinds)]
        for case, per in hc["per_request"].items():
            shared = per.get("shared_get", 0) + per.get("shared_set", 0)
            L.append(f"| {case} | {sum(per.values()):.1f} | {shared:.1f} | " +
                     " | ".join(f"{per.get(k, 0):.1f}" for k in kinds) + " |")
        L.append("")
    if hc.get("call_ns"):
        L += ["## Cost of one host call in this Envoy (V8), timed inside the VM (20,000 calls each)", "",
              "| call | ns |", "|---|---:|"]
        for k, v in hc["call_ns"].items():
            L.append(f"| {k} | {v} |")
        L.append("")
    if args.note:
        L += [args.note, ""]
    return "\n".join(L)


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    cases = [c for c in res if "ablation" not in c]
    names = [n for n in VARIANTS + PEERS if any(n in res[c] for c in cases)]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs, ys = [], []
        for j, c in enumerate(cases):
            r = res[c].get(n, {}).get("load")
            if r:
                xs.append(j + i * width)
                ys.append(r["rps"])
        a1.bar(xs, ys, width, label=n)
    a1.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases)
    a1.set_ylabel(f"req/s at {LOAD_CONNS} connections")
    a1.set_title("Throughput (same run, 2 cores shared with wrk and the mock)")
    a1.legend(fontsize=8)
    case = "10k" if "10k" in res else cases[0]
    for n in names:
        r = res[case].get(n, {}).get("one")
        if r:
            a2.plot([str(p) for p in PERCENTILES], [r[f"p{p}"] / 1000 for p in PERCENTILES], marker="o", label=n)
    a2.set_yscale("log")
    a2.set_xlabel("percentile")
    a2.set_ylabel("latency (ms, log)")
    a2.set_title(f"Latency of a lone request, {case} body")
    a2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1k,10k,100k")
    ap.add_argument("--streams", default="no,yes")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list, or empty for none")
    ap.add_argument("--out", default=str(RESULTS / "bench.md"))
    ap.add_argument("--plot", default=str(PLOT))
    ap.add_argument("--note", default="")
    ap.add_argument("--no-ablation", action="store_true", help="skip the one-feature-off variants")
    ap.add_argument("--smoke", action="store_true", help="CI smoke: 1 KB, passthrough and filter, 1 s, no peers")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.rounds = 1.0, 1.0, 1
        args.sizes, args.streams, args.variants, args.peers = "1k", "no,yes", "passthrough,filter", ""
        args.plot = ""
    variants = [v for v in args.variants.split(",") if v]
    peers = [p for p in args.peers.split(",") if p]
    assert variants[0] == "passthrough" and set(variants) <= set(VARIANTS + ABLATION), variants
    cases = [(s, st == "yes") for s in args.sizes.split(",") for st in args.streams.split(",")]
    ablation = [] if args.smoke or args.no_ablation else [v for v in ABLATION if v not in variants]
    all_variants = variants + ablation
    if not harness.WASM.exists():
        print(f"missing {harness.WASM}: run `make build` first", file=sys.stderr)
        return 2
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    envs: dict[str, harness.Envoy] = {}
    peer_procs = []
    problems: list[str] = []
    try:
        upstream = harness.Envoy(tmp, upstream_config(), name="upstream", concurrency=2)
        targets: dict[str, Target] = {}
        for v in all_variants:
            envs[v] = harness.Envoy(tmp, proxy_config(v, upstream.port), name=v.replace("-", "_"), concurrency=2)
            targets[v] = Target(v, envs[v].port, envs[v].proc.pid, {"Authorization": "Bearer bench"})
        if peers:
            import peers as peer_mod
            for p in peers:
                start = peer_mod.PEERS[p]
                port = peer_mod.free_port()
                proc, headers, path = start(f"http://127.0.0.1:{upstream.port}", port)
                peer_procs.append(proc)
                targets[p] = Target(p, port, proc.pid, headers, path)
        res: dict[str, dict[str, dict]] = {}
        runs = [(size, stream, f"{size}{' stream' if stream else ''}",
                 list(variants) + [p for p in peers if size == "1k" and not stream]) for size, stream in cases]
        if ablation:
            runs.append(("1k", False, "1k ablation", ["passthrough", "filter", *ablation]))
        for size, stream, case, names in runs:
            for n in names:
                sanity(targets[n], size, stream)
                hdrs = {"Content-Type": "application/json", **targets[n].headers}
                if stream:
                    hdrs["x-bench-stream"] = "1"
                targets[n].lua[(size, stream)] = write_lua(tmp / f"{n}-{size}-{int(stream)}.lua",
                                                           request_body(size, stream), hdrs)
            raw: dict[str, dict[str, list]] = {n: {"one": [], "load": []} for n in names}
            for n in names:  # warm-up: V8 tiers, pools fill
                run_wrk(wrk, targets[n].lua[(size, stream)], targets[n].url, 2, 16, args.warmup)
            for rnd in range(args.rounds):
                for level, (threads, conns) in (("one", (1, 1)), ("load", (2, LOAD_CONNS))):
                    order = names if rnd % 2 == 0 else list(reversed(names))
                    for n in order:
                        t = targets[n]
                        # CPU per request of the proxy process (peers run worker processes: not measured).
                        mine = n in all_variants
                        c0 = cpu_seconds(t.pid) if mine else 0.0
                        r = run_wrk(wrk, t.lua[(size, stream)], t.url, threads, conns, args.duration)
                        r["cpu_us"] = ((cpu_seconds(t.pid) - c0) / max(r["requests"], 1) * 1e6) if mine else 0.0
                        raw[n][level].append(r)
                        print(f"{case:10} round {rnd + 1} {level:4} {n:12} {r['rps']:8.0f} req/s  p50 "
                              f"{fmt_us(r['p50']):>9}  p99 {fmt_us(r['p99']):>9}  cpu {r['cpu_us']:6.0f} µs/req  "
                              f"errors {r['errors']}", file=sys.stderr, flush=True)
            res[case] = {}
            for n in names:
                res[case][n] = {}
                for level, rs in raw[n].items():
                    agg = {k: statistics.median(x[k] for x in rs) for k in ["rps", "cpu_us", "mean"] + [f"p{p}" for p in PERCENTILES]}
                    agg["errors"] = sum(x["errors"] for x in rs)
                    agg["rps_rounds"] = [x["rps"] for x in rs]
                    res[case][n][level] = agg
                    if agg["errors"]:
                        problems.append(f"{case} {n} {level}: {agg['errors']} errors")
        for v in all_variants:
            problems += filter_checks(envs[v], v)
        extra: dict = {"rss": {v: rss_bytes(envs[v].proc.pid) for v in variants}}
        if "filter" in envs:
            extra["wasm_memory"] = harness.metric(envs["filter"], "llmcap_wasm_memory_bytes") or 0
            if not extra["wasm_memory"]:
                problems.append("filter: no llmcap_wasm_memory_bytes")
        for e in envs.values():
            e.stop()
        envs.clear()
        if not args.smoke:
            extra["host_calls"] = host_calls(tmp, upstream.port, cases)
            # What the opt-in routing features add per request, deterministically.
            for v in ("filter-lowlat", "filter-hedge"):
                if v in ablation and extra["host_calls"]:
                    per = host_calls(tmp, upstream.port, [("1k", False)], variant=v)["per_request"]["1k"]
                    extra["host_calls"]["per_request"][f"1k, {v}"] = per
        meta = machine()
        if peers:
            import peers as peer_mod
            meta["peers"] = peer_mod.peer_versions()
        md = report(res, meta, extra, args)
        if problems:
            md += "\n**Problems:** " + "; ".join(problems) + "\n"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res, "extra": extra}, indent=1))
        if args.plot:
            plot(res, Path(args.plot))
        print(md)
        return 1 if problems else 0
    finally:
        for e in envs.values():
            e.stop()
        if peer_procs:
            import peers as peer_mod
            for p in peer_procs:
                peer_mod.stop(p)
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
