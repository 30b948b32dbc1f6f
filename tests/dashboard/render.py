"""Renders envoy/grafana/llm-capacity.json over a real run into docs/dashboard.png.

Not a Grafana screenshot: two provider emulators and a real Envoy 1.40 with the
filter (envoy/envoy.yaml, plus a plugin config with route limits, a queue, a
session budget, prices and an SLO) are driven through a scripted scenario with
tests/e2e/loadgen.py; a real Prometheus (Debian's `prometheus`) scrapes
/stats/prometheus every second; every panel's PromQL is asked of it
(/api/v1/query_range) and drawn with matplotlib in the dashboard's own grid.

Scenario (seconds from the start; 160 s, plus a few seconds of
start-up and plotting):

    0-160    steady load, 12 req/s, gpt-4o and gpt-4o-mini, prompts from tests/corpus,
             500 agent sessions (x-session-id) well inside their budget
    25-50    429 storm on the primary (Retry-After: 5 s): cool-downs, probes, failover
    70-90    outage of the primary: resets, circuit open, half-open probes; then recovery
    100-126  three over-limit bursts of 4 s (+50 short or +25 long requests/s): queue
             waits, refusals by the route's requests and tokens per minute
    5-155    a slow agent loop that runs into its session's max_calls
    129-144  runaway agent sessions: a loop breaker (calls_per_minute), a spend cap, a token cap

Usage:
    .venv/bin/pip install matplotlib
    .venv/bin/python tests/dashboard/render.py              # run the scenario, write docs/dashboard.png
    .venv/bin/python tests/dashboard/render.py --replay     # re-plot the last run (no Envoy)

Prometheus' data directory is kept in .run/dashboard/prometheus for --replay
(a Prometheus is started over it again, without targets).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from prometheus import Prometheus  # noqa: E402

DASHBOARD = ROOT / "envoy" / "grafana" / "llm-capacity.json"
OUT = ROOT / "docs" / "dashboard.png"
RUN_DIR = ROOT / ".run" / "dashboard"
PROM_DIR = RUN_DIR / "prometheus"
RUN_INFO = RUN_DIR / "run.json"
CHAT = "/v1/chat/completions"
PRIMARY, FALLBACK = "emulator", "emulator-fallback"

# Grafana's $__rate_interval for this render (1 s scrapes; a real Prometheus at
# 15 s scrapes would give 1m): short enough to show each phase of a 160 s run.
RATE_INTERVAL = "10s"
STEP_S = 1.0

DURATION_S = 160.0
STEADY_RPS = 12.0
STORM = (25.0, 50.0)
OUTAGE = (70.0, 90.0)
BURSTS = [100.0, 111.0, 122.0]
BURST_S, BURST_RPS, LONG_BURST_RPS = 4.0, 50.0, 25.0
RUNAWAY_T = 129.0
PHASES = [  # (start, end, label, colour) for the shaded bands
    (STORM[0], STORM[1], "429 storm on the primary", "#F2495C"),
    (OUTAGE[0], OUTAGE[1], "primary outage", "#FF9830"),
    (BURSTS[0], BURSTS[-1] + BURST_S, "over-limit bursts", "#5794F2"),
    (RUNAWAY_T, RUNAWAY_T + 15, "runaway sessions", "#B877D9"),
]

PRICES = {
    "gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25},
    "gpt-4o-mini*": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
}


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def plugin(harness) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["clusters"][PRIMARY]["circuit"].update({"consecutive_failures": 3, "open_seconds": 5})
    p["routes"]["openai-chat"].update({
        # The provider quota this Envoy may use: the bursts go over it.
        "limits": {"requests_per_minute": 1800, "tokens_per_minute": 650_000, "burst_seconds": 2},
        "queue": {"max_wait_seconds": 1, "max_size": 128},
        "session_budget": {"header": "x-session-id", "max_calls": 30, "max_tokens": 20_000,
                           "max_spend_usd": 0.05, "calls_per_minute": 20},
        "slo": {"time_to_first_token_ms": 1000, "duration_ms": 10_000},
    })
    p["prices"] = PRICES
    return p


def corpus_prompts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for cls in ("english", "code", "cjk", "cyrillic", "json", "english"):
        for line in (ROOT / "tests" / "corpus" / f"{cls}.jsonl").read_text().splitlines()[:60]:
            t = json.loads(line).get("text")
            if t:
                texts.append(t)
    out = []
    for _ in range(n):
        t = rng.choice(texts)
        k = rng.randint(min(80, len(t)), min(len(t), 1400))
        out.append(t[:k])
    return out


def run_scenario() -> tuple[float, float, dict]:
    """Runs the scenario under a Prometheus kept in PROM_DIR; (start, end) wall clock."""
    import harness
    import loadgen

    tmp = Path(tempfile.mkdtemp(prefix="llmcap-dashboard-"))
    (tmp / "primary").mkdir()
    (tmp / "fallback").mkdir()
    summaries: dict = {}
    try:
        primary = harness.Emulator(tmp / "primary")
        fallback = harness.Emulator(tmp / "fallback")
        for e in (primary, fallback):
            e.faults(rpm=2000, tpm=2_000_000)  # the providers' own quota: above the route limit
        cfg = harness.localize(harness.load_envoy_config(), primary.api_port,
                               {PRIMARY: primary.api_port, FALLBACK: fallback.api_port})
        harness.set_plugin_config(cfg, plugin(harness))
        env = harness.Envoy(tmp, cfg)
        url = env.base_url + CHAT
        prompts = corpus_prompts(4000)

        def steady_body(i, long=False):
            rng = random.Random(i)
            model = "gpt-4o" if rng.random() < 0.7 else "gpt-4o-mini"
            prompt = prompts[i % len(prompts)]
            if long:  # about 1,000 tokens: over the route's tokens per minute at 25 req/s
                prompt = "\n\n".join(prompts[(i + j) % len(prompts)] for j in range(6))[:4000]
            # Half of them streamed: time per output token shows too.
            return loadgen.chat_body(model=model, prompt=prompt, max_tokens=256, stream=rng.random() < 0.5)

        def steady_headers(i):
            rng = random.Random(10_000 + i)
            return {"x-session-id": f"user-{i % 500}", "x-emulator-output-tokens": str(rng.randint(20, 200))}

        shutil.rmtree(PROM_DIR, ignore_errors=True)
        prom = Prometheus(RUN_DIR, [env.admin_url], name=PROM_DIR.name)
        prom.wait_scraped(1)
        # Streams with a time to first token and a pace, so latency shows.
        for e in (primary, fallback):
            e.faults(ttft_ms=150, inter_token_ms=5)
        t0 = time.monotonic()
        wall0 = time.time()
        threads: list[threading.Thread] = []

        def at(t: float, name: str, fn, *a, **kw):
            def go():
                delay = t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                r = fn(*a, **kw)
                if r is not None and hasattr(r, "summary"):
                    s = r.summary()
                    summaries[name] = {"sent": s["sent"], "by_status": s["by_status"]}
            th = threading.Thread(target=go, name=name, daemon=True)
            th.start()
            threads.append(th)

        def load(rate, duration, body, headers, **kw):
            return loadgen.run(url, rate=rate, duration=duration, body=body, headers=headers,
                               max_in_flight=96, connections=8, timeout=30, **kw)

        at(0, "steady", load, STEADY_RPS, DURATION_S, steady_body, steady_headers)
        at(STORM[0], "storm on", primary.faults, storm={"retry_after_s": 5})
        at(STORM[1], "storm off", primary.faults, storm=None)
        at(OUTAGE[0], "outage on", primary.faults, outage=True)
        at(OUTAGE[1], "outage off", primary.faults, outage=False)
        # Two bursts of many short requests (over requests per minute), then one of
        # fewer, long ones (over tokens per minute).
        for k, b in enumerate(BURSTS):
            long = k == len(BURSTS) - 1
            at(b, f"burst {k + 1}", load, LONG_BURST_RPS if long else BURST_RPS, BURST_S,
               lambda i, k=k, long=long: steady_body(50_000 + 1000 * k + i, long),
               lambda i, k=k: steady_headers(50_000 + 1000 * k + i))

        def session(sid, model, out_tokens, prompt="Plan the next step."):
            return (lambda i: loadgen.chat_body(model=model, prompt=prompt, max_tokens=out_tokens),
                    {"x-session-id": sid, "x-emulator-output-tokens": str(out_tokens)})

        b, h = session("agent-slow-loop", "gpt-4o-mini", 50)
        at(5, "session: max_calls", load, 0.3, DURATION_S - 5, b, h)
        b, h = session("agent-runaway-loop", "gpt-4o-mini", 30)
        at(RUNAWAY_T, "session: calls_per_minute", load, 5, 12, b, h)
        b, h = session("agent-big-spender", "gpt-4o", 1500)
        at(RUNAWAY_T + 1, "session: spend", load, 1, 12, b, h)
        b, h = session("agent-token-hog", "gpt-4o-mini", 3000)
        at(RUNAWAY_T + 2, "session: tokens", load, 1, 12, b, h)

        for th in threads:
            th.join()
        prom.wait_scraped(1)
        wall1 = time.time()
        summaries["wall_s"] = round(time.monotonic() - t0, 1)
        summaries["primary"] = primary.stats()["by_status"]
        summaries["fallback"] = fallback.stats()["by_status"]
    finally:
        harness.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)  # kept, with Envoy's logs, when the run fails
    return wall0, wall1, summaries


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

FS_TICK, FS_LEGEND, FS_TITLE = 8.5, 8.5, 11.5
BG, PANEL, BORDER, TEXT, DIM, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e8e", "#2b2f36"
NAMED = {
    "green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "purple": "#B877D9",
    "blue": "#5794F2", "text": "#ccccdc", "light-yellow": "#FFEE52", "light-purple": "#CA95E5",
    "dark-yellow": "#E0B400", "transparent": "#00000000",
}
CLASSIC = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A6", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477"]


def color_of(c: str) -> str:
    return NAMED.get(c, c)


def fmt_value(v: float, unit: str, decimals: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "No data"
    if unit == "currencyUSD":
        return f"${v:,.{2 if decimals is None else decimals}f}"
    if unit == "percent":
        return f"{v:.{1 if decimals is None else decimals}f}%"
    if unit == "ms":
        return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.1f}M"
    elif a >= 1e3:
        s = f"{v / 1e3:.1f}K"
    else:
        s = f"{v:.{2 if decimals is None else decimals}f}" if a < 10 else f"{v:.0f}"
    return s + suffix


def tick_formatter(unit: str):
    from matplotlib.ticker import FuncFormatter

    def f(v, _pos):
        if unit == "currencyUSD":
            return f"${v:,.0f}" if abs(v) >= 10 else f"${v:.2f}".rstrip("0").rstrip(".")
        if unit == "percent":
            return f"{v:g}%"
        if unit == "ms":
            return f"{v:g} ms"
        a = abs(v)
        s = f"{v / 1e6:g}M" if a >= 1e6 else f"{v / 1e3:g}K" if a >= 1e3 else f"{v:g}"
        return s + {"reqps": " req/s", "ops": "/s"}.get(unit, "")
    return FuncFormatter(f)


def mmss(t, _pos=None):
    t = int(round(t))
    return f"{t // 60}:{t % 60:02d}"


def override_props(panel: dict, name: str) -> dict:
    props: dict = {}
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        m = o["matcher"]
        hit = (m["id"] == "byName" and m["options"] == name) or \
              (m["id"] == "byRegexp" and re.fullmatch(m["options"], name) is not None)
        if hit:
            for p in o["properties"]:
                props[p["id"]] = p["value"]
    return props


def expand(expr: str, variables: dict) -> str:
    """Grafana's variables replaced (longest names first: $__range before $route)."""
    for k in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + k + "}", variables[k]).replace("$" + k, variables[k])
    return expr


def legend(fmt: str, labels: dict, default: str = "") -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    if not fmt:
        return default or ("{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def panel_series(panel: dict, prom: Prometheus, t0: float, end: float, variables: dict):
    """[(legend, [(t, v)])] for every target of the panel; t in seconds from t0."""
    out = []
    for tgt in panel.get("targets", []):
        expr = expand(tgt["expr"], variables)
        res = prom.api("query_range", query=expr, start=f"{t0:.3f}", end=f"{t0 + end:.3f}", step=f"{STEP_S}")
        for r in sorted(res["result"], key=lambda r: sorted(r["metric"].items())):
            pts = [(float(t) - t0, float(v)) for t, v in r["values"]]
            out.append((legend(tgt.get("legendFormat", ""), r["metric"], tgt["expr"]), pts))
    return out


class Canvas:
    """Maps Grafana's grid (24 columns, 30 px rows) onto a matplotlib figure."""

    def __init__(self, rows: int, width_px=1600, row_px=30, header_px=92, dpi=100):
        import matplotlib.pyplot as plt

        self.w, self.row_px, self.header_px, self.dpi = width_px, row_px, header_px, dpi
        self.h = header_px + rows * row_px + 12
        self.fig = plt.figure(figsize=(self.w / dpi, self.h / dpi), dpi=dpi, facecolor=BG)
        self.col_px = (self.w - 16) / 24

    def box(self, gp) -> tuple[float, float, float, float]:
        """Pixel box (left, top, width, height) of a grid position, with Grafana's 8 px gutters."""
        x = 8 + gp["x"] * self.col_px + 4
        y = self.header_px + gp["y"] * self.row_px + 4
        return x, y, gp["w"] * self.col_px - 8, gp["h"] * self.row_px - 8

    def axes(self, left, top, width, height, **kw):
        return self.fig.add_axes((left / self.w, 1 - (top + height) / self.h, width / self.w, height / self.h), **kw)

    def text(self, x, y, s, **kw):
        self.fig.text(x / self.w, 1 - y / self.h, s, **kw)


def draw_frame(cv: Canvas, panel: dict):
    from matplotlib.patches import FancyBboxPatch

    x, y, w, h = cv.box(panel["gridPos"])
    cv.fig.patches.append(FancyBboxPatch(
        (x / cv.w, 1 - (y + h) / cv.h), w / cv.w, h / cv.h, boxstyle="round,pad=0,rounding_size=0.002",
        transform=cv.fig.transFigure, facecolor=PANEL, edgecolor=BORDER, linewidth=1, zorder=-10))
    cv.text(x + 10, y + 16, panel["title"], color=TEXT, fontsize=FS_TITLE, fontweight="bold", va="center")
    return x, y, w, h


def style_axes(ax, start, end, unit):
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_facecolor(PANEL)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(colors=DIM, labelsize=FS_TICK, length=0, pad=3)
    ax.tick_params(axis="x", pad=6)
    ax.grid(True, color=GRID, linewidth=0.7)
    ax.set_axisbelow(True)
    ax.set_xlim(start, end)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 1.5, 3, 6, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(mmss))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.yaxis.set_major_formatter(tick_formatter(unit))


def shade_phases(ax):
    for a, b, _, c in PHASES:
        ax.axvspan(a, b, color=c, alpha=0.07, linewidth=0, zorder=0)


def legend_rows(labels: list[str], width_px: float) -> tuple[int, int]:
    if not labels:
        return 1, 0
    item = max(len(s) for s in labels) * FS_LEGEND * 0.74 + 34
    ncol = max(1, min(len(labels), int((width_px - 20) // item)))
    return ncol, math.ceil(len(labels) / ncol)


def row_major(handles, labels, ncol):
    """matplotlib fills legend columns first; Grafana's list legend reads left to right."""
    from matplotlib.lines import Line2D

    n = len(handles)
    nrows = math.ceil(n / ncol)
    pad = nrows * ncol - n
    handles = list(handles) + [Line2D([], [], linewidth=0)] * pad
    labels = list(labels) + [""] * pad
    order = [r * ncol + c for c in range(ncol) for r in range(nrows)]
    return [handles[k] for k in order], [labels[k] for k in order]


def draw_timeseries(cv: Canvas, panel, series, start, end):
    import numpy as np
    from matplotlib.lines import Line2D

    x, y, w, h = draw_frame(cv, panel)
    d = panel["fieldConfig"]["defaults"]
    unit = d.get("unit", "short")
    custom = d.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode") in ("normal", "percent")
    labels = [s[0] for s in series]
    ncol, nrows = legend_rows(labels, w)
    leg_h = nrows * (FS_LEGEND * 2.2) + 6
    right_units = {override_props(panel, n).get("unit") for n in labels if
                   override_props(panel, n).get("custom.axisPlacement") == "right"}
    has_right = bool(right_units)
    left_pad = 58
    right_pad = 84 if has_right else 14
    ax = cv.axes(x + left_pad, y + 32, w - left_pad - right_pad, h - 32 - 22 - leg_h)
    style_axes(ax, start, end, unit)
    shade_phases(ax)
    if custom.get("axisLabel"):
        ax.set_ylabel(custom["axisLabel"], color=DIM, fontsize=FS_TICK)
    ax2 = None
    if has_right:
        ax2 = ax.twinx()
        ax2.set_xlim(start, end)
        for s in ax2.spines.values():
            s.set_visible(False)
        ax2.tick_params(colors=DIM, labelsize=FS_TICK, length=0, pad=3)
        from matplotlib.ticker import MaxNLocator
        ax2.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax2.yaxis.set_major_formatter(tick_formatter(next(iter(right_units)) or unit))
        r_label = next((override_props(panel, n).get("custom.axisLabel") for n in labels
                        if override_props(panel, n).get("custom.axisLabel")), "")
        if r_label:
            ax2.set_ylabel(r_label, color=DIM, fontsize=FS_TICK)
    handles = []
    stack_base = None
    grid_t = np.arange(start, end + STEP_S / 2, STEP_S)
    for i, (name, pts) in enumerate(series):
        props = override_props(panel, name)
        color = color_of(props.get("color", {}).get("fixedColor", CLASSIC[i % len(CLASSIC)]))
        dashed = "custom.lineStyle" in props
        target_ax = ax2 if props.get("custom.axisPlacement") == "right" and ax2 is not None else ax
        vals = np.full(len(grid_t), np.nan)
        for t, v in pts:
            k = int(round((t - start) / STEP_S))
            if 0 <= k < len(vals) and math.isfinite(v):
                vals[k] = v
        if stacked:
            base = np.zeros(len(grid_t)) if stack_base is None else stack_base
            top = base + np.nan_to_num(vals)
            target_ax.fill_between(grid_t, base, top, color=color, alpha=0.35, linewidth=0, step=None)
            target_ax.plot(grid_t, np.where(np.isnan(vals), np.nan, top), color=color, linewidth=1)
            stack_base = top
        else:
            target_ax.plot(grid_t, vals, color=color, linewidth=1.3 if not dashed else 1.1,
                           linestyle=(0, (4, 3)) if dashed else "-")
            target_ax.fill_between(grid_t, 0, np.nan_to_num(vals), where=~np.isnan(vals), color=color,
                                   alpha=0.06, linewidth=0)
        handles.append(Line2D([], [], color=color, linewidth=2.5, linestyle=(0, (2, 1.5)) if dashed else "-"))
    if d.get("min") == 0:
        lo, hi = ax.get_ylim()
        ax.set_ylim(0, max(hi, 1e-9))
        if ax2 is not None:
            ax2.set_ylim(0, max(ax2.get_ylim()[1], 1e-9))
    if not series:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=DIM, fontsize=12)
    if series:
        handles, labels = row_major(handles, labels, ncol)
        leg = cv.fig.legend(handles, labels, loc="upper left", ncol=ncol, frameon=False, fontsize=FS_LEGEND,
                            bbox_to_anchor=((x + 8) / cv.w, 1 - (y + h - leg_h - 2) / cv.h),
                            handlelength=1.6, handletextpad=0.5, columnspacing=1.4, labelcolor=TEXT)
        leg.set_zorder(5)


def draw_stat(cv: Canvas, panel, series, start, end):
    x, y, w, h = draw_frame(cv, panel)
    d = panel["fieldConfig"]["defaults"]
    opts = panel["options"]
    calc = opts["reduceOptions"]["calcs"][0]
    color = color_of(d.get("color", {}).get("fixedColor", "text"))
    if not series:
        cv.text(x + w / 2, y + h / 2 + 8, "No data", color=DIM, fontsize=16, ha="center", va="center")
        return
    name, pts = series[0]
    vals = [v for _, v in pts if math.isfinite(v)]
    if opts.get("textMode") == "name":
        size = min(15.0, (w - 16) / (len(name) * 0.64) * 72 / cv.dpi)
        cv.text(x + w / 2, y + h / 2 + 10, name, color=TEXT, fontsize=size, ha="center", va="center", fontweight="bold")
        return
    v = (sum(vals) / len(vals) if calc == "mean" else vals[-1]) if vals else math.nan
    if opts.get("graphMode") == "area" and vals:
        ax = cv.axes(x + 2, y + h * 0.62, w - 4, h * 0.38 - 2)
        ax.set_axis_off()
        ts = [t for t, v2 in pts if math.isfinite(v2)]
        ax.fill_between(ts, 0, vals, color=color, alpha=0.18, linewidth=0)
        ax.plot(ts, vals, color=color, linewidth=1, alpha=0.8)
        ax.set_xlim(start, end)
        ax.set_ylim(0, max(max(vals) * 1.15, 1e-9))
    label = fmt_value(v, d.get("unit", "short"), d.get("decimals"))
    cv.text(x + w / 2, y + h * 0.46, label, color=color, fontsize=24, ha="center", va="center", fontweight="bold")
    cv.text(x + w - 10, y + 16, {"mean": "mean", "lastNotNull": "last"}.get(calc, calc),
            color=DIM, fontsize=8, ha="right", va="center")


def draw_state_timeline(cv: Canvas, panel, series, start, end):
    from matplotlib.patches import Patch

    x, y, w, h = draw_frame(cv, panel)
    d = panel["fieldConfig"]["defaults"]
    mapping = {}
    for m in d.get("mappings", []):
        for k, v in m.get("options", {}).items():
            mapping[float(k)] = (v["text"], color_of(v["color"]))
    leg_h = 20
    ax = cv.axes(x + 110, y + 32, w - 110 - 14, h - 32 - 22 - leg_h)
    style_axes(ax, start, end, "short")
    ax.grid(False)
    ax.set_yticks([])
    if not series:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=DIM, fontsize=12)
    n = len(series)
    for row, (name, pts) in enumerate(series):
        yc = n - 1 - row
        seg = None
        pts = [(t, v) for t, v in pts if math.isfinite(v)]
        for k, (t, v) in enumerate(pts):
            t_next = pts[k + 1][0] if k + 1 < len(pts) else t + STEP_S
            if seg and seg[2] == v and abs(seg[1] - t) < 1e-6:
                seg[1] = t_next
            else:
                if seg:
                    _state_bar(ax, seg, yc, mapping)
                seg = [t, t_next, v]
        if seg:
            _state_bar(ax, seg, yc, mapping)
        cv.text(x + 104, y + 32 + (row + 0.5) * (h - 32 - 22 - leg_h) / max(n, 1), name, color=TEXT,
                fontsize=9, ha="right", va="center")
    ax.set_ylim(-0.5, max(n, 1) - 0.5)
    handles = [Patch(color=c, alpha=0.85) for _, (t, c) in sorted(mapping.items())]
    cv.fig.legend(handles, [t for _, (t, c) in sorted(mapping.items())], loc="upper left", ncol=3, frameon=False,
                  fontsize=FS_LEGEND, bbox_to_anchor=((x + 8) / cv.w, 1 - (y + h - leg_h - 2) / cv.h), labelcolor=TEXT,
                  handlelength=1.4)


def _state_bar(ax, seg, yc, mapping):
    text, color = mapping.get(seg[2], (f"{seg[2]:g}", "#808080"))
    ax.barh(yc, seg[1] - seg[0], left=seg[0], height=0.8, color=color, alpha=0.85, linewidth=0)
    if seg[1] - seg[0] > 6:
        ax.text(seg[0] + 0.8, yc, text, color="#111217", fontsize=8.5, va="center", ha="left", clip_on=True)


def render(wall0: float, wall1: float, out: Path = OUT, dashboard: Path = DASHBOARD, info: str = "") -> None:
    """Plots the run between wall clock `wall0` and `wall1` from the Prometheus data in PROM_DIR."""
    prom = Prometheus(RUN_DIR, [], name=PROM_DIR.name)
    try:
        _render(prom, wall0, wall1, out, dashboard, info)
    finally:
        prom.stop()


def _render(prom: Prometheus, wall0: float, wall1: float, out: Path, dashboard: Path, info: str) -> None:
    import matplotlib
    from matplotlib.patches import Rectangle

    matplotlib.use("Agg")
    dash = json.loads(dashboard.read_text())
    start, end = 0.0, math.floor(wall1 - wall0)
    variables = {"route": ".*", "__rate_interval": RATE_INTERVAL, "__range": f"{int(end - start)}s",
                 "__interval": f"{int(STEP_S)}s", "datasource": "prometheus"}
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    cv = Canvas(rows)
    cv.text(16, 24, dash["title"], color=TEXT, fontsize=15, fontweight="bold", va="center")
    vars_txt = "   ".join(f"{v.get('label', v['name'])}: {'All' if v['name'] == 'route' else 'Prometheus'}"
                          for v in dash["templating"]["list"])
    cv.text(175, 24, vars_txt, color=DIM, fontsize=9, va="center")
    cv.text(cv.w - 16, 24, f"$__rate_interval = {RATE_INTERVAL}, 1 s scrapes" + (f"   {info}" if info else ""),
            color=DIM, fontsize=8.5, va="center", ha="right")
    cv.text(16, 50, "Not a Grafana screenshot: the dashboard's own PromQL asked of a real Prometheus scraping "
            "a real Envoy 1.40 + two provider emulators every second (tests/dashboard/render.py). Shaded:",
            color=DIM, fontsize=8.5, va="center")
    px = 16
    cv.text(px, 70, "scenario phases:", color=DIM, fontsize=8.5, va="center")
    px += 112
    for a, b, label, c in PHASES:
        cv.fig.patches.append(Rectangle(
            (px / cv.w, 1 - 76 / cv.h), 12 / cv.w, 12 / cv.h, transform=cv.fig.transFigure, color=c, alpha=0.6))
        cv.text(px + 17, 70, f"{label} ({mmss(a)}-{mmss(b)})", color=TEXT, fontsize=8.5, va="center")
        px += 17 + 6.2 * len(f"{label} ({mmss(a)}-{mmss(b)})") + 22
    for p in dash["panels"]:
        if p["type"] == "row":
            x, y, w, h = cv.box(p["gridPos"])
            cv.text(x + 2, y + 10, "⌄  " + p["title"], color=TEXT, fontsize=11.5, fontweight="bold", va="center")
            continue
        series = panel_series(p, prom, wall0, end, variables)
        {"timeseries": draw_timeseries, "stat": draw_stat, "state-timeline": draw_state_timeline}[p["type"]](
            cv, p, series, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv.fig.savefig(out, dpi=cv.dpi, facecolor=BG, metadata={"Software": None})
    _quantize(out)


def _hex(c: str) -> tuple[int, int, int]:
    return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))


def _blend(fg: str, bg: str, alpha: float) -> tuple[int, int, int]:
    return tuple(round(a * alpha + b * (1 - alpha)) for a, b in zip(_hex(fg), _hex(bg)))


def _quantize(path: Path) -> None:
    """A 256-colour palette keeps the PNG small. A plain median cut drops the rare
    colours (legend swatches, the phase bands), so the palette is the exact colours
    of the series, the bands and the frame, plus a median cut of the rest."""
    try:
        from PIL import Image
    except ImportError:
        return
    im = Image.open(path).convert("RGB")
    fixed = {_hex(c) for c in (BG, PANEL, BORDER, TEXT, DIM, GRID, *NAMED.values(), *CLASSIC) if len(c) == 7}
    for _, _, _, c in PHASES:
        fixed.add(_blend(c, PANEL, 0.07))
        fixed.add(_blend(c, PANEL, 0.6))
    fixed = sorted(fixed)
    rest = im.quantize(colors=256 - len(fixed), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = rest.getpalette()[: 3 * (256 - len(fixed))]
    pal_img = Image.new("P", (1, 1))
    pal_img.putpalette([v for rgb in fixed for v in rgb] + pal)
    im.quantize(palette=pal_img, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replay", action="store_true",
                    help=f"re-plot the last run from {PROM_DIR.relative_to(ROOT)}")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.replay:
        saved = json.loads(RUN_INFO.read_text())
        wall0, wall1, summaries = saved["start"], saved["end"], saved["summaries"]
    else:
        t = time.monotonic()
        wall0, wall1, summaries = run_scenario()
        summaries["scenario_s"] = round(time.monotonic() - t, 1)
        RUN_INFO.write_text(json.dumps({"start": wall0, "end": wall1, "summaries": summaries}))
    print(json.dumps(summaries, indent=1))
    render(wall0, wall1, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
