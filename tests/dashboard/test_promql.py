"""Unit tests of the small PromQL evaluator the dashboard renderer uses (no Envoy).

Run: .venv/bin/python -m pytest -q tests/dashboard
"""

import json
import math
from pathlib import Path

import pytest

import promql

DASHBOARD = Path(__file__).resolve().parents[2] / "envoy" / "grafana" / "llm-capacity.json"


def store_of(points: dict[str, list[tuple[float, dict, float]]]) -> promql.Store:
    """{name: [(t, labels, value), ...]} scraped in time order."""
    by_t: dict[float, list] = {}
    for name, pts in points.items():
        for t, labels, v in pts:
            by_t.setdefault(t, []).append((name, labels, v))
    s = promql.Store()
    for t in sorted(by_t):
        s.add(t, by_t[t])
    return s


def test_rate_and_increase_match_prometheus_extrapolation():
    # A counter growing 2/s, scraped every second from t=0 (value 100 at t=0).
    s = store_of({"c_total": [(float(t), {"a": "x"}, 100 + 2 * t) for t in range(0, 31)]})
    k = (("a", "x"),)
    assert promql.evaluate(promql.parse("rate(c_total[10s])"), s, 30.0)[k] == pytest.approx(2.0)
    assert promql.evaluate(promql.parse("increase(c_total[10s])"), s, 30.0)[k] == pytest.approx(20.0)
    # A reset (restart) counts as the value before it plus the growth after it.
    s = store_of({"c_total": [(0.0, {}, 10), (1.0, {}, 20), (2.0, {}, 5), (3.0, {}, 15)]})
    # 10 -> 20, reset, 5 -> 15: 25 over the 3 s sampled, extrapolated by the 1 s to the window's start.
    assert promql.evaluate(promql.parse("increase(c_total[4s])"), s, 3.0)[()] == pytest.approx(25 * 4 / 3)
    # One sample in the window: no result (as Prometheus).
    assert promql.evaluate(promql.parse("rate(c_total[1s])"), s, 3.0) == {}


def test_sum_by_matchers_and_scalar_arithmetic():
    def linear(labels, per_s):
        return [(float(t), labels, per_s * t) for t in (0, 5, 10)]

    s = store_of({"r_total": linear({"route": "a", "outcome": "admitted"}, 10)
                  + linear({"route": "a", "outcome": "rejected_x"}, 5)
                  + linear({"route": "b", "outcome": "admitted"}, 1)})
    v = promql.evaluate(promql.parse('sum by (route) (rate(r_total{outcome=~"rejected_.*|admitted"}[10s])) * 3600 / 1e6'), s, 10.0)
    assert v[(("route", "a"),)] == pytest.approx(15 * 3600 / 1e6)
    assert v[(("route", "b"),)] == pytest.approx(1 * 3600 / 1e6)
    v = promql.evaluate(promql.parse('sum(rate(r_total{route!="b", outcome!~"adm.*"}[10s]))'), s, 10.0)
    assert v == {(): pytest.approx(5.0)}
    assert promql.evaluate(promql.parse("max by (route) (r_total)"), s, 10.0)[(("route", "a"),)] == 100


def test_histogram_quantile_interpolates_like_prometheus():
    b = [(0.5, 0), (1, 10), (5, 20), (math.inf, 20)]
    assert promql.bucket_quantile(0.5, b) == pytest.approx(1.0)  # rank 10: top of the (0.5, 1] bucket
    assert promql.bucket_quantile(0.75, b) == pytest.approx(1 + 4 * 0.5)
    assert promql.bucket_quantile(0.9, [(1, 1), (math.inf, 10)]) == 1  # in the +Inf bucket: highest bound
    assert math.isnan(promql.bucket_quantile(0.5, [(1, 0), (math.inf, 0)]))
    s = store_of({"h_bucket": [(t, {"route": "a", "le": le}, c * t) for t in (0.0, 5.0)
                               for le, c in (("1", 1), ("10", 3), ("+Inf", 4))]})
    v = promql.evaluate(promql.parse('histogram_quantile(0.5, sum by (le, route) (rate(h_bucket[10s])))'), s, 5.0)
    assert list(v) == [(("route", "a"),)]
    assert v[(("route", "a"),)] == pytest.approx(1 + 9 * (1 / 2))


def test_parse_rejects_what_it_cannot_evaluate():
    for bad in ("irate(x[1m])", "sum without (a) (x)", "x offset 5m", "rate(x)", "x > 1"):
        with pytest.raises(promql.ParseError):
            promql.parse(bad)


def test_every_dashboard_query_parses():
    dash = json.loads(DASHBOARD.read_text())
    variables = {"route": ".*", "__rate_interval": "1m", "__range": "1h", "__interval": "15s", "datasource": "x"}
    n = 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            promql.parse(promql.expand(t["expr"], variables))
            n += 1
    assert n >= 12
