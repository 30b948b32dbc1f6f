"""The global rate-limit engine for the end-to-end tests: a redis-server and llmcap-rls
(tests/rls, built by `make build-rls`), each in its own process group, torn down like the
harness's other processes (harness.stop_all covers them too).

    redis = RedisServer(tmp_path)
    rls = RateLimitService(tmp_path, llm_limits(requests=5, tokens=500), redis=redis)
    cfg = harness.localize(cfg, emulator.api_port, ports={RLS_CLUSTER: rls.port})
    ...
    rls.stop()              # the filter's failure policy while it is gone
    rls.start()             # back on the same port, same limits; counters are in Redis
    rls.restart(delay_ms=2000)   # now every answer is late (the filter's timeout)

The limits document is Limitador's format (a list of dicts), see tests/rls/README.md.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

from harness import ROOT, _spawn, stop, wait_for

RLS_BIN = ROOT / "tests" / "rls" / "target" / "release" / "llmcap-rls"
DOMAIN = "llm-capacity"
RLS_CLUSTER = "llm_capacity_rls"


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server on a free loopback port, no persistence, files in tmp/NAME."""

    def __init__(self, tmp: Path, name: str = "redis"):
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        for _ in range(5):  # the port can be taken between the pick and the bind
            self.port = free_port()
            self.proc = _spawn(
                ["redis-server", "--port", self.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--daemonize", "no"],
                stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: _redis_ping(self.port), 10, "redis-server ping", self.proc, self.log)
                return
            except RuntimeError:
                continue
        raise RuntimeError(f"could not start redis-server:\n{self.log.read_text(errors='replace')[-2000:]}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class RateLimitService:
    """llmcap-rls with `limits` (a Limitador limits list), counters in `redis` (or in the
    process when None), every answer `delay_ms` late. `port` 0 picks a free one; stop()
    and start() keep it, so Envoy's cluster needs no change across a restart. With
    `verbose`, its log (tmp/NAME.log) has one line per call: what was asked, what was answered."""

    def __init__(self, tmp: Path, limits: list[dict], redis: RedisServer | None = None, delay_ms: int = 0,
                 port: int = 0, name: str = "rls", start: bool = True, verbose: bool = True):
        if not RLS_BIN.exists():
            raise RuntimeError(f"{RLS_BIN} is missing: make build-rls")
        self.tmp = tmp
        self.name = name
        self.redis = redis
        self.delay_ms = delay_ms
        self.verbose = verbose
        self.port = port
        self.limits_path = tmp / f"{name}-limits.yaml"
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.limits_path.write_text(yaml.safe_dump(limits, sort_keys=False))
        if start:
            self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, delay_ms: int | None = None, limits: list[dict] | None = None) -> None:
        """Starts it (again): same port once it has one, optionally new delay or limits.
        Returns once it answers calls."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("llmcap-rls is already running: stop() it first")
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if limits is not None:
            self.limits_path.write_text(yaml.safe_dump(limits, sort_keys=False))
        offset = self.log.stat().st_size if self.log.exists() else 0
        args = [RLS_BIN, "--listen", self.address, "--limits", self.limits_path, "--delay-ms", self.delay_ms]
        if self.redis is not None:
            args += ["--redis", self.redis.url]
        if self.verbose:
            args.append("--verbose")
        self.proc = _spawn(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

        def listening():
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            for line in text.splitlines():
                if line.startswith("llmcap-rls listening on "):
                    return line.split()[3]
            return None

        addr = wait_for(listening, 20, "llmcap-rls listening", self.proc, self.log)
        self.port = int(addr.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def restart(self, delay_ms: int | None = None, limits: list[dict] | None = None) -> None:
        self.stop()
        self.start(delay_ms=delay_ms, limits=limits)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def calls(self) -> list[str]:
        """The --verbose lines so far, one per call answered (or refused)."""
        return [l for l in self.log_text().splitlines() if l.startswith("call ")]


def llm_limits(domain: str = DOMAIN, requests: int = 600, tokens: int = 60000, seconds: int = 60,
               routes: list[str] | None = None) -> list[dict]:
    """Limits for the filter's descriptors [{llmcap_route: R}, {unit: requests}] and
    [{llmcap_route: R}, {unit: tokens}]: `requests` and `tokens` per `seconds` for each route
    (every route, each with its own counters, when `routes` is None; else only those)."""
    out = []
    for unit, max_value in (("requests", requests), ("tokens", tokens)):
        if routes is None:
            out.append({
                "namespace": domain, "name": f"{unit}-per-route", "max_value": max_value, "seconds": seconds,
                "conditions": [f"descriptors[0]['unit'] == '{unit}'"],
                "variables": ["descriptors[0]['llmcap_route']"],
            })
        else:
            for r in routes:
                out.append({
                    "namespace": domain, "name": f"{unit}-{r}", "max_value": max_value, "seconds": seconds,
                    "conditions": [f"descriptors[0]['unit'] == '{unit}'", f"descriptors[0]['llmcap_route'] == '{r}'"],
                    "variables": [],
                })
    return out


def rls_cluster(port: int, name: str = RLS_CLUSTER) -> dict:
    """A static HTTP/2 (gRPC) Envoy cluster for the service on 127.0.0.1:port (harness.localize
    sets its port from ports={name: port} like any other cluster's)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
