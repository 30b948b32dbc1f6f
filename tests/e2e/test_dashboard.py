"""The Grafana dashboard (envoy/grafana/llm-capacity.json) against what the filter
really exports, read through a real Prometheus (Debian's `prometheus`, scraping
Envoy's /stats/prometheus every second, queried over its HTTP API): every
panel's query returns series, and every label its legend names is set on them.

Two emulators (primary and fallback) and Envoy from envoy/envoy.yaml with a
plugin config that adds route limits, a queue, a session budget, prices and an
SLO. The traffic makes every family appear: normal calls (tokens, spend,
estimate error, provider quota, latency, goodput), a provider 429 and a
failover, an outage that opens the primary's circuit, a session over its
budget, a burst over the route limit (queue waits and limiter refusals).

Runtime: about 15 s.
"""

from __future__ import annotations

import copy
import json
import re
import time

import harness
import loadgen
from prometheus import Prometheus

DASHBOARD = harness.ROOT / "envoy" / "grafana" / "llm-capacity.json"
CHAT = "/v1/chat/completions"
PRIMARY, FALLBACK = "emulator", "emulator-fallback"
# Grafana's variables, as a Prometheus scraping every second would see them.
VARIABLES = {"route": ".*", "__rate_interval": "1m", "__range": "1h", "__interval": "1s",
             "datasource": "prometheus"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dash: dict) -> list[dict]:
    """Every panel but row headers (rows carry no queries), nested rows included."""
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def targets(dash: dict):
    for p in query_panels(dash):
        for t in p.get("targets", []):
            yield p, t


def legend_labels(fmt: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", fmt or ""))


def expand(expr: str) -> str:
    """Grafana's variables replaced (longest names first: $__range before $route)."""
    for k in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace("${" + k + "}", VARIABLES[k]).replace("$" + k, VARIABLES[k])
    return expr


def variable_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(variable, metric, label) of every label_values(metric, label) variable."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*", q)
        assert m, f"variable {v['name']}: only label_values(metric, label) is supported, got {q!r}"
        out.append((v["name"], m.group(1), m.group(2)))
    return out


# ---------------------------------------------------------------------------
# The JSON itself (no Envoy)
# ---------------------------------------------------------------------------

def test_dashboard_json_is_well_formed():
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41, dash["schemaVersion"]
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["route"]["type"] == "query"
    assert variables["route"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel at {(x, y)}"
                cells.add((x, y))
        if p["type"] == "row":
            assert not p.get("targets"), f"row {p['title']} has queries"
    for p in query_panels(dash):
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["type"] == "prometheus", p["title"]
            assert t.get("expr"), f"panel {p['title']!r}: target {t.get('refId')} has no expr"
            assert "$" not in expand(t["expr"]), f"panel {p['title']!r}: unknown variable in {t['expr']!r}"


# ---------------------------------------------------------------------------
# Against a real Envoy
# ---------------------------------------------------------------------------

def plugin() -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["clusters"][PRIMARY]["circuit"].update({"consecutive_failures": 2, "open_seconds": 30})
    p["routes"]["openai-chat"].update({
        "limits": {"requests_per_minute": 600, "burst_seconds": 1},  # 10/s, 10 at once
        "queue": {"max_wait_seconds": 0.5},
        "session_budget": {"header": "x-session-id", "max_calls": 1},
        "slo": {"time_to_first_token_ms": 5000},
    })
    p["prices"] = {"gpt-4o": {"input": 2.5, "output": 10}, "*": {"input": 1, "output": 1}}
    return p


def chat(env, headers=None, model="gpt-4o", stream=False) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hi to the dashboard."}],
                       "max_tokens": 20, "stream": stream}).encode()
    status, _, _ = harness.raw_request(env.port, "POST", CHAT, body, {
        "content-type": "application/json", "authorization": "Bearer k", **(headers or {})})
    return status


def test_every_panel_query_returns_series_in_prometheus(start_envoy, emulator, fallback, tmp_path):
    dash = dashboard()
    for e in (emulator, fallback):
        e.faults(rpm=100_000, tpm=100_000_000)
    env = start_envoy(plugin=plugin(), ports={PRIMARY: emulator.api_port, FALLBACK: fallback.api_port})
    prom = Prometheus(tmp_path, [env.admin_url])
    try:
        drive(env, emulator)
        check(dash, env, prom)
    finally:
        prom.stop()


def drive(env, emulator):
    # Normal calls: tokens, reconciliation, spend, estimate error, provider quota,
    # latency (a stream for the time per output token), goodput.
    for _ in range(3):
        assert chat(env) == 200
    assert chat(env, stream=True) == 200
    # A session over its budget (max_calls 1): 402.
    assert chat(env, {"x-session-id": "agent"}) == 200
    assert chat(env, {"x-session-id": "agent"}) == 402
    # The provider's 429: a cool-down, the router retries on the fallback; the next
    # request's first attempt goes to the fallback (a failover).
    emulator.faults(storm={"retry_after_s": 1})
    assert chat(env) == 200
    assert chat(env) == 200
    # An outage once the cool-down is over: resets open the primary's circuit.
    emulator.faults(storm=None, outage=True)
    time.sleep(1.1)
    deadline = time.monotonic() + 5
    while harness.metric(env, "llmcap_circuit_state", cluster=PRIMARY) is None:
        assert time.monotonic() < deadline, "the primary's circuit never changed state"
        assert chat(env) == 200
    # A burst over the route limit: some wait in the queue, the rest are refused.
    burst = loadgen.run(env.base_url + CHAT, rate=400, duration=0.1, max_in_flight=40, connections=40,
                        body=loadgen.chat_body(model="gpt-4o", max_tokens=20))
    statuses = burst.summary()["by_status"]
    assert statuses.get("429") and statuses.get("200"), statuses



def check(dash: dict, env, prom: Prometheus):
    # Histograms reach /stats/prometheus with Envoy's stats flush (every 5 s).
    needed = {m for _, t in targets(dash) for m in re.findall(r"\b(llmcap_\w+_bucket)\b", t["expr"])}
    deadline = time.monotonic() + 12
    while missing := {n for n in needed if f"\n{n}{{" not in env.stats_prometheus()}:
        assert time.monotonic() < deadline, f"histograms never flushed: {missing}"
        time.sleep(0.25)
    prom.wait_scraped(2)
    found = problems(dash, prom)
    assert not found, "\n".join(found)

    # The check itself: a made-up family, label, label value or legend label is caught.
    bad = copy.deepcopy(dash)
    bad["panels"].append({"type": "timeseries", "title": "bogus", "id": 999, "gridPos": {"h": 1, "w": 1, "x": 0, "y": 99},
                          "datasource": {"type": "prometheus", "uid": "${datasource}"}, "targets": [
        {"refId": "A", "expr": "sum(rate(llmcap_made_up_total[$__rate_interval]))", "legendFormat": "x"},
        {"refId": "B", "expr": "sum by (colour) (rate(llmcap_requests_total[$__rate_interval]))", "legendFormat": "{{colour}}"},
        {"refId": "C", "expr": 'sum(rate(llmcap_upstream_attempts_total{class="throttled"}[$__rate_interval]))', "legendFormat": "x"},
        {"refId": "D", "expr": "sum by (cluster) (rate(llmcap_cooldowns_total[$__rate_interval]))", "legendFormat": "{{route}}"},
        {"refId": "E", "expr": "histogram_quantile(0.9, sum by (le) (rate(llmcap_queue_wait_milliseconds[$__rate_interval])))", "legendFormat": "p90"},
    ]})
    found = "\n".join(problems(bad, prom))
    for needle in ("llmcap_made_up_total[1m]))' returns no series", "lacks legend label(s) ['colour']",
                   "class=\"throttled\"}[1m]))' returns no series", "lacks legend label(s) ['route']",
                   "llmcap_queue_wait_milliseconds[1m])))' returns no series"):
        assert needle in found, (needle, found)


def problems(dash: dict, prom: Prometheus) -> list[str]:
    """What the dashboard asks of Prometheus and Prometheus does not have."""
    out = []
    for var, name, label in variable_queries(dash):
        if not prom.query(f"count by ({label}) ({name})"):
            out.append(f"variable ${var}: label_values({name}, {label}) finds nothing")
    # Every query returns series, and every legend label is set on them.
    for p, t in targets(dash):
        expr = expand(t["expr"])
        result = prom.query(expr)
        if not result:
            out.append(f"{p['title']}: {expr!r} returns no series")
        for r in result:
            missing = legend_labels(t.get("legendFormat", "")) - {k for k, v in r["metric"].items() if v}
            if missing:
                out.append(f"{p['title']}: series {r['metric']} lacks legend label(s) {sorted(missing)}")
    return out
