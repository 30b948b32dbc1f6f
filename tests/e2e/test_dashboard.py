"""The Grafana dashboard (envoy/grafana/llm-capacity.json) against what the filter
really exports: every metric family and label a panel queries, groups by or
names in its legend must be in a real Envoy's /stats/prometheus.

Two emulators (primary and fallback) and Envoy from envoy/envoy.yaml with a
plugin config that adds route limits, a queue, a session budget and prices. The
traffic makes every family appear: normal calls (tokens, spend, estimate error,
provider quota), a provider 429 and a failover, an outage that opens the
primary's circuit, a session over its budget, a burst over the route limit
(queue waits and limiter refusals). After Envoy's stats flush (histograms) the
panels' queries are checked statically (families, labels, matcher values) and
evaluated over two scrapes with tests/dashboard/promql.py (every query returns
series, every legend label is set).

Runtime: about 5 s.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time

import pytest

import harness
import loadgen

sys.path.insert(0, str(harness.ROOT / "tests" / "dashboard"))
import promql  # noqa: E402

DASHBOARD = harness.ROOT / "envoy" / "grafana" / "llm-capacity.json"
CHAT = "/v1/chat/completions"
PRIMARY, FALLBACK = "emulator", "emulator-fallback"
# Grafana's variables, as a Prometheus scraping every second would see them.
VARIABLES = {"route": ".*", "__rate_interval": "5s", "__range": "1h", "__interval": "1s",
             "datasource": "prometheus"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


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


def references(dash: dict) -> list[tuple[str, promql.Sel, set[str]]]:
    """(panel title, selector, labels the selector's series must carry) for every selector.

    The labels: those its matchers name, those every enclosing aggregation groups by.
    """
    out = []
    for p, t in targets(dash):
        node = promql.parse(promql.expand(t["expr"], VARIABLES))
        for sel, grouping in promql.selectors_with_grouping(node):
            out.append((p["title"], sel, set(grouping) | {m.label for m in sel.matchers}))
    return out


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
            node = promql.parse(promql.expand(t["expr"], VARIABLES))  # only what the evaluator knows
            out = promql.output_labels(node)
            if out is not None:
                missing = legend_labels(t.get("legendFormat", "")) - out
                assert not missing, f"panel {p['title']!r}: legend names {missing}, the query keeps only {out}"


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
    })
    p["prices"] = {"gpt-4o": {"input": 2.5, "output": 10}, "*": {"input": 1, "output": 1}}
    return p


def chat(env, headers=None, model="gpt-4o") -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hi to the dashboard."}],
                       "max_tokens": 20}).encode()
    status, _, _ = harness.raw_request(env.port, "POST", CHAT, body, {
        "content-type": "application/json", "authorization": "Bearer k", **(headers or {})})
    return status


def families(text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, labels, _ in promql.parse_exposition(text):
        out.setdefault(name, []).append(labels)
    return out


def test_every_panel_query_is_backed_by_exported_metrics(start_envoy, emulator, fallback):
    dash = dashboard()
    refs = references(dash)
    assert refs, "the dashboard references no metric"
    for e in (emulator, fallback):
        e.faults(rpm=100_000, tpm=100_000_000)
    env = start_envoy(plugin=plugin(), ports={PRIMARY: emulator.api_port, FALLBACK: fallback.api_port})

    # Normal calls: tokens, reconciliation, spend, estimate error, provider quota.
    for _ in range(3):
        assert chat(env) == 200
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

    # Histograms reach /stats/prometheus with Envoy's stats flush (every 5 s).
    needed = {sel.name for _, sel, _ in refs if sel.name.endswith(HISTOGRAM_SUFFIXES)}
    deadline = time.monotonic() + 12
    while not needed <= set(families(env.stats_prometheus())):
        assert time.monotonic() < deadline, f"histograms never flushed: {needed - set(families(env.stats_prometheus()))}"
        time.sleep(0.25)

    store = promql.Store()
    t0 = time.monotonic()
    store.add_exposition(0.0, env.stats_prometheus())
    time.sleep(1.0)
    store.add_exposition(time.monotonic() - t0, env.stats_prometheus())
    found = problems(dash, store)
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
    found = "\n".join(problems(bad, store))
    for needle in ("llmcap_made_up_total is not exported", "labels ['colour']", "class='throttled'",
                   "lacks legend label(s) ['route']", "llmcap_queue_wait_milliseconds is not exported"):
        assert needle in found, (needle, found)


def problems(dash: dict, store: promql.Store) -> list[str]:
    """What the dashboard asks of the last scrape in `store` and the scrapes do not have."""
    fams: dict[str, list[dict]] = {}
    for name, series in store.series.items():
        fams[name] = [dict(k) for k, s in series.items() if s.times and s.times[-1] == store.scrape_times[-1]]
    out = []
    for title, sel, labels in references(dash):
        samples = fams.get(sel.name)
        if not samples:
            out.append(f"{title}: {sel.name} is not exported")
            continue
        if not any(labels <= set(s) for s in samples):
            have = sorted({k for s in samples for k in s})
            out.append(f"{title}: {sel.name} has no series with labels {sorted(labels)} (it has {have})")
            continue
        if not any(all(m.matches(s.get(m.label, "")) for m in sel.matchers) for s in samples):
            want = ", ".join(f"{m.label}{m.op}{m.value!r}" for m in sel.matchers)
            values = sorted({f"{m.label}={s.get(m.label)}" for s in samples for m in sel.matchers})
            out.append(f"{title}: no {sel.name} series matches {{{want}}} (values seen: {values})")
    for var, name, label in variable_queries(dash):
        if not any(label in s for s in fams.get(name, [])):
            out.append(f"variable ${var}: label_values({name}, {label}) finds nothing")
    # Every query returns series, and every legend label is set on them.
    t_end = store.scrape_times[-1]
    for p, t in targets(dash):
        result = promql.evaluate(promql.parse(promql.expand(t["expr"], VARIABLES)), store, t_end)
        if not isinstance(result, dict):
            continue
        if not result:
            out.append(f"{p['title']}: {t['expr']!r} returns no series")
        for labels in result:
            missing = legend_labels(t.get("legendFormat", "")) - {k for k, v in labels if v}
            if missing:
                out.append(f"{p['title']}: series {dict(labels)} lacks legend label(s) {sorted(missing)}")
    return out
