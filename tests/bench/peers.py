#!/usr/bin/env python3
"""Peer LLM gateways for the benchmark: LiteLLM proxy and Portkey gateway, installed
on demand into project-local directories and started in front of a mock provider.

    .venv/bin/python tests/bench/peers.py --check     # install, start, verify, 5 s of wrk each

Install (no global installs; both idempotent, a stamp file makes a second call instant):

* LiteLLM: `ensure_litellm()` makes the venv `.venv-litellm` (python3 -m venv) and pip-installs
  tests/bench/peers/requirements-litellm.txt (`litellm[proxy]==1.106.2` and its dependencies
  pinned as resolved);
* Portkey: `ensure_portkey()` runs `npm ci` in `.tools/portkey` from
  tests/bench/peers/portkey/package.json + package-lock.json (`@portkey-ai/gateway` 1.15.2).

Each peer is set up for work comparable to llm-capacity's route with limits and failover:

* LiteLLM (tests/bench/peers/litellm-config.yaml): one uvicorn worker, model group
  `gpt-4o-mini` = one deployment on the mock with `rpm`/`tpm` set far above the load and
  enforced before every call (`optional_pre_call_checks: [enforce_model_rate_limits]`,
  counters in LiteLLM's in-process cache), and an ordered fallback to a second deployment
  (`fallbacks: [{gpt-4o-mini: [gpt-4o-mini-fallback]}]`, `num_retries: 0`). A random master key
  per start (LiteLLM 1.106 refuses to start without one; requests carry it as the bearer
  token), no database, no callbacks, log level ERROR (so no per-request access log).
* Portkey (tests/bench/peers/portkey-config.json, sent per request in `x-portkey-config`):
  `strategy: {mode: fallback}` over two OpenAI targets on the mock (`custom_host`). The
  open-source gateway has no rate limiting at all (no rpm/tpm/budget options in 1.15.2;
  limits are a feature of Portkey's hosted/enterprise control plane), so Portkey does
  strictly less work than the other two: routing + fallback + request/response
  transformation only. Started `--headless` with NODE_ENV=production (no UI, no log stream).

`start_litellm(mock_url, port)` / `start_portkey(mock_url, port)` return
`(Popen, request_headers, path)` once a real chat completion went through the peer to the
mock and came back 200 with the mock's completion; `stop(p)` ends the peer (process group)
and removes its working directory. `write_wrk_lua()` writes a wrk script that POSTs the
chat body with those headers; `run_wrk()` runs it (see bench.py).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(__file__).resolve().parent / "peers"
LITELLM_VENV = ROOT / ".venv-litellm"
LITELLM_REQUIREMENTS = PEERS_DIR / "requirements-litellm.txt"
LITELLM_CONFIG = PEERS_DIR / "litellm-config.yaml"
PORTKEY_DIR = ROOT / ".tools" / "portkey"
PORTKEY_PACKAGE_DIR = PEERS_DIR / "portkey"
PORTKEY_CONFIG = PEERS_DIR / "portkey-config.json"
STAMP = ".llmcap-peer-stamp"

LITELLM_VERSION = "1.106.2"
PORTKEY_VERSION = "1.15.2"

PATH = "/v1/chat/completions"
MODEL = "gpt-4o-mini"  # the LiteLLM model group; Portkey passes the body's model through
HUGE_RPM = 1_000_000_000  # never reached: every request is admitted, the limiter still counts
HUGE_TPM = 1_000_000_000_000
START_TIMEOUT = 180.0  # LiteLLM imports a lot; on a busy 2-core machine start-up takes a while


# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()


def _stamped(stamp: Path, want: str, needed: list[Path]) -> bool:
    try:
        return stamp.read_text().strip() == want and all(p.exists() for p in needed)
    except OSError:
        return False


def _run_install(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    t0 = time.monotonic()
    print(f"peers: installing {what} ...", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"installing {what} failed ({' '.join(map(str, cmd))}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(f"peers: installed {what} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def ensure_litellm() -> Path:
    """The `litellm` executable of .venv-litellm, installed from the pinned requirements
    if missing or if the requirements changed. Instant when already installed."""
    exe = LITELLM_VENV / "bin" / "litellm"
    py = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / STAMP
    want = _digest(LITELLM_REQUIREMENTS.read_bytes())
    if _stamped(stamp, want, [exe, py]):
        return exe
    base = shutil.which("python3.11") or shutil.which("python3")
    if base is None:
        raise RuntimeError("python3 not found: needed to make .venv-litellm")
    if LITELLM_VENV.exists():
        shutil.rmtree(LITELLM_VENV)
    _run_install([base, "-m", "venv", str(LITELLM_VENV)], "the .venv-litellm venv")
    _run_install([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                  "-r", str(LITELLM_REQUIREMENTS)], f"litellm[proxy]=={LITELLM_VERSION} into .venv-litellm")
    r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                       capture_output=True, text=True)
    if r.stdout.strip() != LITELLM_VERSION:
        raise RuntimeError(f".venv-litellm has litellm {r.stdout.strip()!r}, expected {LITELLM_VERSION}: {r.stderr[-500:]}")
    stamp.write_text(want + "\n")
    return exe


def ensure_portkey() -> Path:
    """Portkey's Node entry point (build/start-server.js) under .tools/portkey, installed
    with `npm ci` from the pinned package.json + package-lock.json if missing or changed.
    Instant when already installed."""
    entry = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    stamp = PORTKEY_DIR / STAMP
    pkg = PORTKEY_PACKAGE_DIR / "package.json"
    lock = PORTKEY_PACKAGE_DIR / "package-lock.json"
    want = _digest(pkg.read_bytes(), lock.read_bytes())
    if _stamped(stamp, want, [entry]):
        return entry
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("node/npm not found: needed for the Portkey gateway (apt-get install nodejs npm)")
    if PORTKEY_DIR.exists():
        shutil.rmtree(PORTKEY_DIR)
    PORTKEY_DIR.mkdir(parents=True)
    shutil.copy(pkg, PORTKEY_DIR / "package.json")
    shutil.copy(lock, PORTKEY_DIR / "package-lock.json")
    # --ignore-scripts: the package's only install script is patch-package for its own dev tree.
    _run_install([npm, "ci", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund", "--ignore-scripts",
                  "--loglevel", "error"], f"@portkey-ai/gateway@{PORTKEY_VERSION} into .tools/portkey")
    got = json.loads((entry.parents[1] / "package.json").read_text())["version"]
    if got != PORTKEY_VERSION:
        raise RuntimeError(f".tools/portkey has @portkey-ai/gateway {got}, expected {PORTKEY_VERSION}")
    stamp.write_text(want + "\n")
    return entry


# ---------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------

def _completion() -> dict:
    """The mock's fixed completion (tests/bench/bench.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    import bench  # noqa: E402
    return bench.COMPLETION


def expected_content() -> str:
    return _completion()["choices"][0]["message"]["content"]


def chat_body(prompt: str | None = None, max_tokens: int = 256) -> bytes:
    """The benchmark's chat request (bench.request_body() unless a prompt is given)."""
    if prompt is None:
        sys.path.insert(0, str(ROOT / "tests" / "bench"))
        import bench  # noqa: E402
        return bench.request_body()
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens}, separators=(",", ":")).encode()


def post(port: int, path: str, headers: dict[str, str], body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def check_answer(status: int, raw: bytes, content: str | None) -> str | None:
    """None if (status, raw) is the mock's completion passed through, else what is wrong."""
    if status != 200:
        return f"status {status}: {raw[:300]!r}"
    try:
        got = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {raw[:300]!r}"
    if content is not None and got != content:
        return f"not the mock's completion: {got[:100]!r}"
    return None


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

def _spawn(cmd: list[str], workdir: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    log = workdir / f"{name}.log"
    p = subprocess.Popen([str(c) for c in cmd], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                         stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    p.workdir = workdir  # type: ignore[attr-defined]
    p.log_path = log  # type: ignore[attr-defined]
    p.peer = name  # type: ignore[attr-defined]
    return p


def log_tail(p: subprocess.Popen, n: int = 3000) -> str:
    log = getattr(p, "log_path", None)
    return log.read_text(errors="replace")[-n:] if log and log.exists() else ""


def stop(p: subprocess.Popen, timeout: float = 10.0, keep_workdir: bool = False) -> None:
    """Ends the peer and everything it started (its process group), then removes its
    working directory (config and log) unless keep_workdir."""
    if p.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
    else:  # the leader is gone; its group may not be
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    wd = getattr(p, "workdir", None)
    if wd is not None and not keep_workdir:
        shutil.rmtree(wd, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_answer(p: subprocess.Popen, port: int, path: str, headers: dict[str, str], body: bytes,
                 content: str | None, timeout: float) -> None:
    """Polls with real chat completions until one comes back as the mock's completion."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{p.peer} exited with {p.returncode} while starting:\n{log_tail(p)}")  # type: ignore[attr-defined]
        try:
            status, raw = post(port, path, headers, body, timeout=10)
            err = check_answer(status, raw, content)
            if err is None:
                return
            last = err
            if status in (400, 401, 403, 404, 422):  # a configuration error, not start-up
                break
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.25)
    stop(p, keep_workdir=True)
    raise RuntimeError(f"{p.peer} on port {port} did not answer a chat completion through to the mock "  # type: ignore[attr-defined]
                       f"({last}); log {p.log_path}:\n{log_tail(p)}")  # type: ignore[attr-defined]


def _openai_base(url: str) -> str:
    """An OpenAI-style base (…/v1) from the mock's URL (http://127.0.0.1:PORT or …/v1)."""
    u = url.rstrip("/")
    return u if urllib.parse.urlparse(u).path.endswith("/v1") else u + "/v1"


# ---------------------------------------------------------------------------
# LiteLLM
# ---------------------------------------------------------------------------

def litellm_config(primary_url: str, fallback_url: str, rpm: int = HUGE_RPM, tpm: int = HUGE_TPM) -> dict:
    import yaml  # .venv has PyYAML (tests/e2e/harness.py needs it too)
    cfg = yaml.safe_load(LITELLM_CONFIG.read_text())
    bases = {MODEL: _openai_base(primary_url), f"{MODEL}-fallback": _openai_base(fallback_url)}
    for m in cfg["model_list"]:
        m["litellm_params"]["api_base"] = bases[m["model_name"]]
        m["litellm_params"]["rpm"] = rpm
        m["litellm_params"]["tpm"] = tpm
    return cfg


def start_litellm(mock_url: str, port: int, *, fallback_url: str | None = None, primary_url: str | None = None,
                  rpm: int = HUGE_RPM, tpm: int = HUGE_TPM, content: str | None = "mock",
                  timeout: float = START_TIMEOUT) -> tuple[subprocess.Popen, dict[str, str], str]:
    """LiteLLM proxy (one worker) on 127.0.0.1:port in front of the mock at mock_url
    (http://127.0.0.1:PORT). Both deployments point at the mock unless primary_url /
    fallback_url say otherwise (a dead primary_url proves the fallback). Returns once a
    chat completion came back through it with the mock's content (content="mock": the
    bench completion; None: any completion)."""
    exe = ensure_litellm()
    if not _port_free(port):
        raise RuntimeError(f"port {port} is in use")
    workdir = Path(tempfile.mkdtemp(prefix="peer-litellm-"))
    cfg = litellm_config(primary_url or mock_url, fallback_url or mock_url, rpm, tpm)
    # LiteLLM 1.106 refuses to start without a strong master key; no DB, so auth is a
    # compare against it (plus LiteLLM's key-auth bookkeeping) on every request.
    master_key = "sk-" + secrets.token_hex(32)
    cfg.setdefault("general_settings", {})["master_key"] = master_key
    (workdir / "config.json").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LITELLM_", "DATABASE_", "REDIS_", "OPENAI_", "PROMETHEUS_", "OTEL_", "LANGFUSE_"))
           and k not in ("DIRECT_URL", "STORE_MODEL_IN_DB", "PORT", "HOST")}
    env.update({
        "LITELLM_LOG": "ERROR",                  # uvicorn at error level: no per-request access log
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start-up (no network here)
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True", "NO_REDOC": "True",
        "PYTHONUNBUFFERED": "1",
    })
    p = _spawn([exe, "--config", workdir / "config.json", "--host", "127.0.0.1", "--port", str(port),
                "--num_workers", "1", "--telemetry", "False"], workdir, "litellm", env)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {master_key}"}
    want = expected_content() if content == "mock" else content
    _wait_answer(p, port, PATH, headers, chat_body(), want, timeout)
    return p, headers, PATH


# ---------------------------------------------------------------------------
# Portkey
# ---------------------------------------------------------------------------

def portkey_config(primary_url: str, fallback_url: str) -> dict:
    cfg = json.loads(PORTKEY_CONFIG.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["targets"][0]["custom_host"] = _openai_base(primary_url)
    cfg["targets"][1]["custom_host"] = _openai_base(fallback_url)
    return cfg


def start_portkey(mock_url: str, port: int, *, fallback_url: str | None = None, primary_url: str | None = None,
                  content: str | None = "mock", timeout: float = 60.0) -> tuple[subprocess.Popen, dict[str, str], str]:
    """Portkey gateway (Node, one process) on port `port` in front of the mock at mock_url,
    the fallback config sent per request in x-portkey-config (in the returned headers).
    The gateway takes no host option and listens on all interfaces; only loopback is used."""
    entry = ensure_portkey()
    if not _port_free(port):
        raise RuntimeError(f"port {port} is in use")
    workdir = Path(tempfile.mkdtemp(prefix="peer-portkey-"))
    cfg = portkey_config(primary_url or mock_url, fallback_url or mock_url)
    (workdir / "portkey-config.json").write_text(json.dumps(cfg, indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTKEY_", "REDIS_", "AWS_", "AZURE_"))
           and k not in ("PORT", "HTTP_PROXY", "HTTPS_PROXY", "TRUSTED_CUSTOM_HOSTS", "APM_LOGGER")}
    env.update({"NODE_ENV": "production", "PORT": str(port)})
    p = _spawn([shutil.which("node") or "node", entry, f"--port={port}", "--headless"], workdir, "portkey", env)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench",
               "x-portkey-config": json.dumps(cfg, separators=(",", ":"))}
    want = expected_content() if content == "mock" else content
    _wait_answer(p, port, PATH, headers, chat_body(), want, timeout)
    return p, headers, PATH


PEERS = {"litellm": start_litellm, "portkey": start_portkey}


def peer_versions() -> dict[str, str]:
    """Pinned versions, for a report's header."""
    return {"litellm": LITELLM_VERSION, "portkey": PORTKEY_VERSION}


# ---------------------------------------------------------------------------
# load (wrk)
# ---------------------------------------------------------------------------

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"status\":%d,\"timeout\":%d,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"p999\":%d,\"mean\":%.1f,\"max\":%d}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


def _lua_long(s: str) -> str:
    eq = "=" * 2
    while f"]{eq}]" in s:
        eq += "="
    return f"[{eq}[{s}]{eq}]"


def write_wrk_lua(path: Path, body: bytes, headers: dict[str, str], method: str = "POST") -> Path:
    """A wrk script sending `method` with `body` and `headers`, printing a WRKJSON line
    that bench.run_wrk() parses."""
    lines = [f'wrk.method = "{method}"', f"wrk.body = {_lua_long(body.decode())}"]
    lines += [f"wrk.headers[ {_lua_long(k)} ] = {_lua_long(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def run_wrk(lua: Path, url: str, threads: int = 1, conns: int = 16, duration: float = 5.0,
            wrk: str = "/usr/bin/wrk") -> dict:
    """One wrk run; requests, rps, errors and latency percentiles (µs)."""
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    import bench  # noqa: E402
    return bench.run_wrk(wrk if Path(wrk).exists() else (shutil.which("wrk") or wrk), lua, url,
                                threads, conns, duration)


# ---------------------------------------------------------------------------
# --check
# ---------------------------------------------------------------------------

def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def check(args) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    import harness  # noqa: E402
    import bench  # noqa: E402

    t0 = time.monotonic()
    ensure_litellm()
    t_lite = time.monotonic() - t0
    t0 = time.monotonic()
    ensure_portkey()
    t_pk = time.monotonic() - t0
    print(f"install: litellm {LITELLM_VERSION} ready in {t_lite:.1f} s, portkey {PORTKEY_VERSION} ready in {t_pk:.1f} s")

    tmp = Path(tempfile.mkdtemp(prefix="peers-check-"))
    peers: list[subprocess.Popen] = []
    problems: list[str] = []
    try:
        mock = harness.Envoy(tmp, bench.upstream_config(), name="mock", concurrency=1)
        mock_url = mock.base_url
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
        body = chat_body()
        content = expected_content()
        targets: dict[str, tuple[int, dict[str, str], str]] = {
            "mock (direct)": (mock.port, {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}, PATH)}

        for name, start in PEERS.items():
            port = free_port()
            t0 = time.monotonic()
            p, headers, path = start(mock_url, port)
            peers.append(p)
            print(f"{name}: up on 127.0.0.1:{port} in {time.monotonic() - t0:.1f} s (pid {p.pid}); "
                  f"headers {sorted(headers)}")
            for i in range(args.requests):
                err = check_answer(*post(port, path, headers, body), content)
                if err:
                    problems.append(f"{name} request {i}: {err}")
            print(f"{name}: {args.requests} requests answered with the mock's completion"
                  if not any(x.startswith(f"{name} request") for x in problems) else f"{name}: request problems")
            targets[name] = (port, headers, path)

        if not args.skip_fallback:
            # Primary on a dead port: a 200 with the mock's completion can only come from the fallback target.
            for name, start in PEERS.items():
                port = free_port()
                p, headers, path = start(mock_url, port, primary_url=dead)
                try:
                    err = check_answer(*post(port, path, headers, body), content)
                    print(f"{name}: fallback with a dead primary: " + ("answered by the fallback target" if err is None else err))
                    if err:
                        problems.append(f"{name} fallback: {err}")
                finally:
                    stop(p)
            # LiteLLM's limiter is really on: with rpm=2 on both deployments the 5th request in the minute is refused.
            port = free_port()
            p, headers, path = start_litellm(mock_url, port, rpm=2)
            try:
                statuses = [post(port, path, headers, body)[0] for _ in range(6)]
                print(f"litellm: rpm=2 on both deployments, requests after the start-up probe: {statuses} "
                      "(429 = the deployment limits are enforced)")
                if 429 not in statuses:
                    problems.append(f"litellm rpm=2 did not reject: {statuses}")
            finally:
                stop(p)

        lua_dir = tmp / "lua"
        lua_dir.mkdir()
        print(f"\nwrk: 1 thread, {args.connections} connections, {args.duration:g} s each "
              f"(after {args.warmup:g} s warm-up), POST {PATH} with a {len(body)}-byte chat body")
        print(f"{'target':<16} {'req/s':>8} {'p50':>10} {'p99':>10} {'errors':>7}")
        for name, (port, headers, path) in targets.items():
            lua = write_wrk_lua(lua_dir / f"{name.split()[0]}.lua", body, headers)
            url = f"http://127.0.0.1:{port}{path}"
            if args.warmup > 0:
                run_wrk(lua, url, 1, args.connections, args.warmup)
            r = run_wrk(lua, url, 1, args.connections, args.duration)
            print(f"{name:<16} {r['rps']:8.0f} {_ms(r['p50']):>10} {_ms(r['p99']):>10} {r['errors']:7d}")
            if r["errors"]:
                problems.append(f"{name}: {r['errors']} wrk errors")
        if problems:
            print("\nPROBLEMS: " + "; ".join(problems))
            return 1
        print("\nok")
        return 0
    finally:
        for p in peers:
            stop(p)
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="install, start both peers on a mock, verify, 5 s of wrk each")
    ap.add_argument("--install", action="store_true", help="only install (or confirm) both peers and print their paths")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5, help="sanity requests through each peer before the load")
    ap.add_argument("--skip-fallback", action="store_true", help="skip the fallback and rate-limit checks (3 extra starts)")
    args = ap.parse_args(argv)
    if args.install:
        print(ensure_litellm())
        print(ensure_portkey())
        return 0
    if args.check:
        return check(args)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
