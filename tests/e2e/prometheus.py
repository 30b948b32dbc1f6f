"""A real Prometheus (Debian's `prometheus` package) scraping Envoy's admin
/stats/prometheus, queried through its HTTP API. Started on a free port with
its own config and data directory under the test's tmp dir; killed by group on
teardown like every process of the harness.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

import harness
from rls import free_port

PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
RULES = harness.ROOT / "envoy" / "prometheus" / "alerts.yaml"


class Prometheus:
    """`targets`: Envoy admin URLs (`http://127.0.0.1:port`); `rules`: rule
    files to evaluate; scrapes and evaluates every `interval_s`."""

    def __init__(self, tmp: Path, targets: list[str], rules: list[Path] = (), interval_s: float = 1.0,
                 name: str = "prometheus"):
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        interval = f"{int(interval_s * 1000)}ms"
        cfg = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(r) for r in rules],
            "scrape_configs": [{
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [urllib.parse.urlparse(t).netloc for t in targets]}],
            }],
        }
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = self.dir / "prometheus.log"
        self.proc = harness._spawn(
            [PROMETHEUS_BIN, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess_devnull(), stderr=self.log.open("wb"))
        harness.wait_for(self._ready, 30, "prometheus ready", self.proc, self.log)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's series: [{"metric": {...}, "value": [t, "v"]}]."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        r = self.query(expr)
        if not r:
            return None
        assert len(r) == 1, (expr, r)
        return float(r[0]["value"][1])

    def wait_scraped(self, count: int = 2, timeout: float = 30.0) -> None:
        """Waits until every target was scraped `count` more times."""
        start = time.time()

        def scraped():
            ts = self.api("targets")["activeTargets"]
            ok = ts and all(t["health"] == "up" and _ts(t["lastScrape"]) > start for t in ts)
            return ok

        for _ in range(count):
            harness.wait_for(scraped, timeout, "a prometheus scrape", self.proc, self.log)
            start = time.time()

    def alerts(self) -> list[dict]:
        """Alerts firing or pending now (the `ALERTS` series)."""
        return [r["metric"] for r in self.query("ALERTS")]

    def stop(self):
        harness.stop(self.proc)


def _ts(rfc3339: str) -> float:
    from datetime import datetime
    s = rfc3339.replace("Z", "+00:00")
    # Prometheus gives nanoseconds; Python's fromisoformat takes microseconds.
    if "." in s:
        head, rest = s.split(".", 1)
        frac, tz = rest[:rest.index("+") if "+" in rest else len(rest)], rest[rest.index("+"):] if "+" in rest else ""
        s = f"{head}.{frac[:6]}{tz}"
    return datetime.fromisoformat(s).timestamp()


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL
