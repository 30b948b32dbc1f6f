"""End-to-end harness: a real emulator and a real Envoy per test, always torn down.

Each process runs in its own session (process group) and is killed by group on
teardown, so nothing outlives a test, even a failing one. Ports are ephemeral:
the emulator reports its own through --port-file, Envoy its admin address
through --admin-address-path and its listener through /listeners.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
ENVOY_BIN = VENV_BIN / "envoy"
EMULATOR_BIN = ROOT / "target" / "release" / "llm-emulator"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_capacity.wasm"
DEFAULT_ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
# The filter's gauge of VMs holding metric updates not written yet, and how long
# a stats read waits for it to reach 0 (a batch waits 100 ms; a loaded CI box).
UNFLUSHED = "llmcap_metrics_unflushed"
METRIC_SETTLE_S = 3.0

_live: list[subprocess.Popen] = []


def _spawn(args, stdout, stderr, cwd=None) -> subprocess.Popen:
    p = subprocess.Popen(
        [str(a) for a in args],
        stdout=stdout,
        stderr=stderr,
        cwd=cwd or ROOT,
        start_new_session=True,
    )
    _live.append(p)
    return p


def stop(p: subprocess.Popen, timeout: float = 5.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout)
    if p in _live:
        _live.remove(p)


def stop_all() -> None:
    for p in list(_live):
        stop(p)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def http_json(method: str, url: str, body=None, headers=None, timeout=10.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def raw_request(port: int, method: str, path: str, body: bytes = b"", headers=None, timeout=10.0):
    """Plain HTTP/1.1 for inputs the SDKs would never send. Returns (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


class Emulator:
    def __init__(self, tmp: Path, *args: str):
        self.tmp = tmp
        port_file = tmp / "emulator-ports.json"
        self.log = tmp / "emulator.log"
        self.proc = _spawn(
            [EMULATOR_BIN, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--port-file", port_file, *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        ports = wait_for(lambda: port_file.exists() and json.loads(port_file.read_text()), 15, "emulator ports", self.proc, self.log)
        self.api_port = ports["api"]
        self.admin_port = ports["admin"]

    def admin(self, method: str, path: str, body=None):
        return http_json(method, f"http://127.0.0.1:{self.admin_port}{path}", body)

    def stats(self):
        return self.admin("GET", "/admin/stats")

    def reset(self):
        return self.admin("POST", "/admin/reset", {})

    def faults(self, **kw):
        return self.admin("POST", "/admin/faults", kw)

    def stop(self):
        stop(self.proc)


def load_envoy_config(path: Path = DEFAULT_ENVOY_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def wasm_filter(cfg: dict) -> dict:
    """The llm-capacity Wasm filter entry of the (single) listener."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise KeyError("no wasm filter")


def upstream_wasm_filter(cfg: dict) -> dict | None:
    """The per-attempt instance of the filter (router upstream_http_filters), if any."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.router":
            for u in f["typed_config"].get("upstream_http_filters", []):
                if u["name"] == "envoy.filters.http.wasm":
                    return u["typed_config"]["config"]
    return None


def plugin_config(cfg: dict) -> dict:
    return wasm_filter(cfg)["configuration"]["value"]


def set_plugin_config(cfg: dict, value: dict) -> dict:
    """Sets the plugin config of both instances (downstream and per-attempt)."""
    for f in (wasm_filter(cfg), upstream_wasm_filter(cfg)):
        if f is not None:
            f["configuration"] = {"@type": "type.googleapis.com/google.protobuf.Struct", "value": value}
    return cfg


def localize(cfg: dict, upstream_port: int, ports: dict[str, int] | None = None) -> dict:
    """Ephemeral ports everywhere, absolute .wasm path, upstream clusters on the
    emulator (or on the port `ports` gives for a cluster name)."""
    cfg = copy.deepcopy(cfg)
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    for lst in cfg["static_resources"]["listeners"]:
        lst["address"]["socket_address"]["port_value"] = 0
    for cl in cfg["static_resources"]["clusters"]:
        for ep in cl.get("load_assignment", {}).get("endpoints", []):
            for lb in ep["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"]["port_value"] = (ports or {}).get(cl["name"], upstream_port)
    for f in (wasm_filter(cfg), upstream_wasm_filter(cfg)):
        if f is not None:
            f["vm_config"]["code"]["local"]["filename"] = str(WASM)
    return cfg


class Envoy:
    def __init__(self, tmp: Path, cfg: dict, name: str = "envoy", expect_start: bool = True,
                 concurrency: int = 2, args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.concurrency = concurrency
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.admin_file = tmp / f"{name}-admin.txt"
        self.log = tmp / f"{name}.log"
        self.access_log = tmp / f"{name}-access.log"
        self.proc = _spawn(
            [ENVOY_BIN, "-c", self.config_path, "--concurrency", str(concurrency), "--use-dynamic-base-id",
             "--admin-address-path", self.admin_file, "-l", "info", *args],
            # Envoy's own log goes to stderr, unbuffered (--log-path flushes late).
            stdout=self.access_log.open("wb"),
            stderr=self.log.open("wb"),
        )
        if expect_start:
            self._wait_ready()

    def _wait_ready(self):
        addr = wait_for(lambda: self.admin_file.exists() and self.admin_file.read_text().strip(), 30, "envoy admin address", self.proc, self.log)
        self.admin_url = f"http://{addr}"

        def ready():
            try:
                with urllib.request.urlopen(self.admin_url + "/ready", timeout=2) as r:
                    return r.read().startswith(b"LIVE")
            except OSError:
                return False

        wait_for(ready, 30, "envoy ready", self.proc, self.log)
        listeners = http_json("GET", self.admin_url + "/listeners?format=json")
        sock = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        self.port = sock["port_value"]
        self.base_url = f"http://127.0.0.1:{self.port}"

    def wait_exit(self, timeout=30.0) -> int:
        return self.proc.wait(timeout)

    def stats_json(self) -> dict[str, int]:
        """Counters and gauges by their full Envoy name (labels still embedded),
        once the filter has written every update made so far (see settled)."""
        def read():
            with urllib.request.urlopen(self.admin_url + "/stats?format=json", timeout=5) as r:
                stats = json.loads(r.read())["stats"]
            return {s["name"]: s["value"] for s in stats if "value" in s}
        return self.settled(read, lambda s: s.get("wasmcustom." + UNFLUSHED, 0))

    def settled(self, read, unflushed):
        """read() again until unflushed(result) is 0: the filter batches counter
        increments and gauge moves per VM and writes them within 100 ms (docs/observability.md),
        counting the VMs holding some in the gauge UNFLUSHED. Gives the last read
        after METRIC_SETTLE_S (a stuck batch then fails the test's own assertion)."""
        deadline = time.monotonic() + METRIC_SETTLE_S
        while True:
            out = read()
            if not unflushed(out) or time.monotonic() > deadline:
                return out
            time.sleep(0.02)

    def stat(self, name: str) -> int:
        return self.stats_json().get(name, 0)

    def stats_prometheus(self) -> str:
        def read():
            with urllib.request.urlopen(self.admin_url + "/stats/prometheus", timeout=5) as r:
                return r.read().decode()

        def unflushed(text):
            m = re.search(rf"^\w*{UNFLUSHED}(?:{{[^}}]*}})? (\S+)$", text, re.M)
            return float(m.group(1)) if m else 0
        return self.settled(read, unflushed)

    def access_entries(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Access-log lines as JSON (stdout logger); waits for at least `count`."""

        def read():
            lines = [l for l in self.access_log.read_text().splitlines() if l.startswith("{")]
            return lines if len(lines) >= count else None

        return [json.loads(l) for l in wait_for(read, timeout, f"{count} access-log lines")]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self):
        stop(self.proc)


def run_bench_smoke(script: str, out: Path, timeout: float) -> str:
    """Runs tests/bench/<script> --smoke --out <out> (CI's smoke of a benchmark);
    fails with the tail of its output, else returns the report it wrote."""
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / script), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out.read_text()


def prom_samples(env) -> list[tuple[str, dict, float]]:
    out = []
    for line in env.stats_prometheus().splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric(env, name: str, **labels) -> float | None:
    """Sum of the Prometheus samples of `name` whose labels include `labels`; None if there is none."""
    vals = [v for n, ls, v in prom_samples(env) if n == name and all(ls.get(k) == v2 for k, v2 in labels.items())]
    return sum(vals) if vals else None


def make_pki(d: Path) -> None:
    """A test CA, a server certificate for 127.0.0.1 and two clients (app1, app2)
    with SPIFFE URI SANs, as Istio issues them."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=test-ca")
    for name, san in [("server", "IP:127.0.0.1"), ("app1", "URI:spiffe://cluster.local/ns/default/sa/app1"),
                      ("app2", "URI:spiffe://cluster.local/ns/default/sa/app2")]:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")


def require_client_certificates(cfg: dict, d: Path) -> dict:
    """The listener terminates TLS with make_pki's server certificate and requires
    a client certificate from its CA (the mesh's mTLS)."""
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(d / "server.pem")},
                                      "private_key": {"filename": str(d / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(d / "ca.pem")}},
            },
        },
    }
    return cfg
