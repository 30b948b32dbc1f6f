"""Faults in real Envoy: the filter's Wasm VM failing with requests queued and in
flight, provider faults under load, and a configuration update under load.

The VM failures are real traps (the Wasm `unreachable` instruction) from the
test-only build with the cargo feature `fault-injection` (`make build-fault`,
`target/fault/...`): a request carrying `x-llmcap-fault: trap` traps its
worker's VM in `on_http_request_headers`; `trap-on-tick` traps it at its next
queue tick. The provider faults come from the emulator's admin API; the
configuration update goes through ECDS from a watched file, swapped atomically.

What Envoy 1.40 does when the VM traps (checked here, with both policies):
- the request that trapped gets 503 at once (details `wasm_fail_stream`);
- requests in flight get 503 `wasm_fail_stream` when their answer comes back
  (the provider did serve them: the answer is replaced, not forwarded);
- queued requests held in Envoy's fault filter (`queue_hold: fault_filter`,
  envoy/envoy.yaml) are answered at their turn, 503 `wasm_fail_stream`: the
  fault filter lets them go at their time. FAIL_CLOSED: the per-attempt
  instance (same failed VM) answers them before they leave; FAIL_RELOAD: they
  reach the provider (admitted and charged) from a reloaded per-attempt
  instance, and the failed downstream instance replaces the answer;
- with `queue_hold: vm` (paused in the VM; Istio's WasmPlugin mode) they get no
  callback again (a failed VM does not tick): they end only when the HCM's
  `stream_idle_timeout` fires, with 503 `wasm_fail_stream` (envoy/envoy.yaml:
  300 s; this file shortens it to 6 s);
- FAIL_RELOAD: the next new request on that worker gets a fresh VM
  (`wasm.<plugin name>.vm_reload_success`); FAIL_CLOSED: every later request of
  that worker, on any route, gets 503 `wasm_fail_stream`.

Runtime: about 1.5 minutes.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

import harness
import loadgen

FAULT_WASM = harness.ROOT / "target" / "fault" / "wasm32-wasip1" / "release" / "llm_capacity.wasm"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 5}).encode()
EMBED_BODY = json.dumps({"model": "text-embedding-3-small", "input": "hi"}).encode()


@pytest.fixture
def envoy_from(tmp_path):
    """Starts Envoy from a ready configuration (ports already localized); always stopped."""
    started = []

    def start(cfg, name="envoy", concurrency=2):
        # Access-log lines reach the file within 0.2 s (default: 10 s).
        env = harness.Envoy(tmp_path, cfg, name=name, concurrency=concurrency,
                            args=("--file-flush-interval-msec", "200"))
        started.append(env)
        return env

    yield start
    for e in started:
        e.stop()


def base_plugin() -> dict:
    return copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))


def hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def fault_config(emulator, plugin: dict, policy: str, idle: str) -> dict:
    """envoy/envoy.yaml with the fault-injection build, `policy` on both instances
    and a short stream idle timeout (the bound this file measures)."""
    if not FAULT_WASM.exists():
        pytest.fail(f"{FAULT_WASM} is missing: run `make build-fault` (make test-e2e does)")
    cfg = harness.localize(harness.load_envoy_config(), emulator.api_port)
    harness.set_plugin_config(cfg, plugin)
    for f in (harness.wasm_filter(cfg), harness.upstream_wasm_filter(cfg)):
        f["vm_config"]["code"]["local"]["filename"] = str(FAULT_WASM)
        f["failure_policy"] = policy
    hcm(cfg)["stream_idle_timeout"] = idle
    return cfg


def post(env, path: str, body: bytes, headers=None, timeout=30.0):
    """(status, headers, body, seconds); status None if the connection failed or timed out."""
    t0 = time.monotonic()
    try:
        s, h, b = harness.raw_request(env.port, "POST", path, body, {
            "content-type": "application/json", "authorization": "Bearer k", **(headers or {})}, timeout=timeout)
    except OSError as e:
        return None, {}, repr(e).encode(), time.monotonic() - t0
    return s, h, b, time.monotonic() - t0


def stat(env, name: str) -> int:
    return env.stats_json().get(name, 0)


def access_log(env) -> list[dict]:
    return [json.loads(l) for l in env.access_log.read_text().splitlines() if l.startswith("{")]


# ---------------------------------------------------------------------------
# The VM traps with requests queued and in flight
# ---------------------------------------------------------------------------

LATENCY_S = 3.0  # the emulator's delay: the first requests are still in flight at the trap
IDLE_S = 6  # stream_idle_timeout with queue_hold vm: what ends requests paused in a dead VM
MARGIN_S = 3.0  # scheduling slack on a loaded 2-core machine
TURN_SLACK_S = 1.0  # a queued request in the fault filter is answered this close to its turn


@pytest.mark.parametrize("policy,fault,hold", [
    ("FAIL_RELOAD", "trap", "fault_filter"),
    ("FAIL_CLOSED", "trap", "fault_filter"),
    # Paused in the VM (no fault filter, e.g. Istio's WasmPlugin): the idle
    # timeout is what ends them, whether the trap is in a request or a tick.
    ("FAIL_RELOAD", "trap", "vm"),
    ("FAIL_RELOAD", "trap-on-tick", "vm"),
])
def test_vm_trap_answers_every_request_queued_and_in_flight(emulator, envoy_from, policy, fault, hold):
    plugin = base_plugin()
    plugin["queue_hold"] = hold
    # 12 rpm with a burst of 2: three requests go at once (the third into a debt
    # of one), each later one waits 5 s more than the one before (max 30 s).
    plugin["routes"]["openai-chat"] = {
        "clusters": ["emulator"],
        "limits": {"requests_per_minute": 12, "burst_seconds": 10},
        "queue": {"max_wait_seconds": 30, "poll_ms": 20},
    }
    plugin["routes"]["llm-other"] = {"clusters": ["emulator"], "limits": {"requests_per_minute": 10000}}
    # One worker: every request lives in the one VM that traps. In the fault
    # filter the idle timeout (60 s) must not be what answers them.
    idle = IDLE_S if hold == "vm" else 60
    env = envoy_from(fault_config(emulator, plugin, policy, f"{idle}s"), concurrency=1)
    emulator.faults(latency_ms=int(LATENCY_S * 1000))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        t0_in_flight = time.monotonic()
        in_flight = [pool.submit(post, env, CHAT, CHAT_BODY) for _ in range(3)]
        harness.wait_for(lambda: stat(env, "cluster.emulator.upstream_rq_active") == 3, 10, "3 requests at the provider")
        queued = []
        for _ in range(3):  # one at a time: their turns are in order, 5 s apart
            queued.append(pool.submit(post, env, CHAT, CHAT_BODY))
            harness.wait_for(lambda: stat(env, "http.llm_egress.downstream_rq_active") == 3 + len(queued), 10,
                             "a queued request")
        t_queued = time.monotonic()
        time.sleep(0.3)
        assert stat(env, "cluster.emulator.upstream_rq_total") == 3, "the queued requests must still be waiting"
        trap = pool.submit(post, env, CHAT, CHAT_BODY, {"x-llmcap-fault": fault})
        if fault == "trap-on-tick":
            queued.append(trap)  # it waits in the queue too; the next tick traps
        else:
            trap.result()
            # From here on the provider answers at once: a queued request is
            # answered at its turn, not a provider latency later.
            emulator.faults(latency_ms=0)
        results = {"in_flight": [f.result() for f in in_flight], "queued": [f.result() for f in queued],
                   "trap": [trap.result()]}

    log = env.log_text()
    # A real trap, where it was asked for.
    where = "proxy_on_tick" if fault == "trap-on-tick" else "proxy_on_request_headers"
    assert f"Function: {where} failed: Uncaught RuntimeError: unreachable" in log, log[-3000:]
    # Every request is answered, by its deadline.
    for kind, rs in results.items():
        for status, _, body, took in rs:
            assert status == 503, (kind, status, body, results)
    if fault == "trap":
        assert results["trap"][0][3] < 2.0, results["trap"]
    assert all(took < LATENCY_S + MARGIN_S for *_, took in results["in_flight"]), results["in_flight"]
    if hold == "vm":
        # Paused in the dead VM: nothing resumes them; the stream idle timeout ends them.
        assert all(took < IDLE_S + MARGIN_S for *_, took in results["queued"]), results["queued"]
    else:
        # Held in the fault filter: each is answered at its own turn (about 5,
        # 10 and 15 s after the first three), long before the idle timeout.
        assert stat(env, "http.llm_egress.fault.delays_injected") == 3
        for n, (*_, took) in enumerate(results["queued"]):
            turn = 5.0 * (n + 1)
            assert turn - 1.5 < took < turn + TURN_SLACK_S + (t_queued - t0_in_flight), (n, results["queued"])
        assert stat(env, "http.llm_egress.fault.active_faults") == 0
    if hold == "vm" or policy == "FAIL_CLOSED":
        # FAIL_CLOSED: the per-attempt instance (same failed VM) answers a held
        # request 503 at its turn before it leaves.
        assert emulator.stats()["requests_total"] == 3, "queued requests must never reach the provider"
    else:
        # FAIL_RELOAD: the per-attempt instance runs in a reloaded VM, so a held
        # request goes to the provider at its turn (it was admitted and charged);
        # the failed downstream instance replaces the answer with 503.
        assert emulator.stats()["requests_total"] == 6
    harness.wait_for(lambda: stat(env, "http.llm_egress.downstream_rq_active") == 0, 10, "no stream left")
    details = [e["details"] for e in env.access_entries(7)]
    assert details.count("wasm_fail_stream") == 7, details

    emulator.faults(latency_ms=0)
    if policy == "FAIL_RELOAD":
        # The next request on the worker gets a fresh VM from the base VM: the
        # filter answers again (its rate-limit headers are on the answer).
        def served():
            s, h, _, took = post(env, EMBEDDINGS, EMBED_BODY, timeout=10)
            assert s in (200, 503) and took < 5, (s, took)
            return s == 200 and h.get("x-ratelimit-limit-requests") == "10000"

        harness.wait_for(served, 15, "a reloaded VM serving requests")
        assert stat(env, "wasm.llm_capacity.vm_reload_success") == 1
        assert stat(env, "wasm.llm_capacity.vm_reload_failure") == 0
        harness.wait_for(lambda: any(e["route"] == "llm-other" and e["status"] == 200 and e["llm_capacity"]
                                     for e in access_log(env)), 10, "the reloaded filter's access-log state")
    else:
        # FAIL_CLOSED: the worker's VM stays failed; every route answers 503 at once.
        for path, method in ((EMBEDDINGS, "POST"), ("/v1/models", "GET")):
            t0 = time.monotonic()
            s, _, _ = harness.raw_request(env.port, method, path, EMBED_BODY if method == "POST" else b"",
                                          {"content-type": "application/json", "authorization": "Bearer k"})
            assert s == 503 and time.monotonic() - t0 < 2, (path, s)
        assert stat(env, "wasm.llm_capacity.vm_reload_success") == 0
        assert emulator.stats()["requests_total"] == 3


def test_in_flight_charges_of_a_failed_vm_expire_with_their_lease(emulator, envoy_from):
    """Requests in flight when their VM fails never settle, and their in-flight
    charges stay in shared data, which outlives the VM: with `max_in_flight: 4`
    and 3 requests in flight at the trap, the reloaded VM admits 1 of 4
    concurrent requests, until the lease (`in_flight_lease_seconds`) frees the
    dead VM's slots: then 4 of 4."""
    plugin = base_plugin()
    plugin["routes"]["openai-chat"] = {"clusters": ["emulator"],
                                       "limits": {"max_in_flight": 4, "in_flight_lease_seconds": 6}}
    env = envoy_from(fault_config(emulator, plugin, "FAIL_RELOAD", "60s"), concurrency=1)
    emulator.faults(latency_ms=2000)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        t0 = time.monotonic()
        first = [pool.submit(post, env, CHAT, CHAT_BODY) for _ in range(3)]
        harness.wait_for(lambda: stat(env, "cluster.emulator.upstream_rq_active") == 3, 10, "3 requests in flight")
        assert post(env, CHAT, CHAT_BODY, {"x-llmcap-fault": "trap"})[0] == 503
        assert [f.result()[0] for f in first] == [503] * 3
        # The reloaded VM reads the same shared data: within the lease the dead
        # VM's three slots are still taken.
        after = [f.result() for f in [pool.submit(post, env, CHAT, CHAT_BODY) for _ in range(4)]]
        assert time.monotonic() - t0 < 4.5, "checked within the lease"
        # The lease (6 s, in periods of 1.5 s) has run out for the dead VM's charges.
        time.sleep(max(0.0, t0 + 7.5 - time.monotonic()))
        again = [f.result() for f in [pool.submit(post, env, CHAT, CHAT_BODY) for _ in range(4)]]
    assert stat(env, "wasm.llm_capacity.vm_reload_success") == 1
    statuses = sorted(s for s, *_ in after)
    assert statuses == [200, 429, 429, 429], after
    refused = [json.loads(b)["error"]["type"] for s, _, b, _ in after if s == 429]
    assert refused == ["in_flight"] * 3, refused
    assert [s for s, *_ in again] == [200] * 4, again


# ---------------------------------------------------------------------------
# Provider outage, slowness and a 429 storm during load
# ---------------------------------------------------------------------------

MAX_IN_FLIGHT = 12


def test_provider_faults_under_load_answer_everything_and_leave_nothing_in_flight(emulator, start_envoy):
    plugin = base_plugin()
    plugin["clusters"]["emulator"]["circuit"]["open_seconds"] = 2
    plugin["routes"]["openai-chat"]["clusters"] = ["emulator"]
    plugin["routes"]["openai-chat"]["limits"] = {"requests_per_minute": 100000, "max_in_flight": MAX_IN_FLIGHT}
    env = start_envoy(plugin=plugin)
    emulator.faults(rpm=1_000_000)
    # The release build has no fault hook: the header is just a header.
    assert b"x-llmcap-fault" not in harness.WASM.read_bytes()
    assert post(env, CHAT, CHAT_BODY, {"x-llmcap-fault": "trap"})[0] == 200
    # 20 requests/s for 17 s through 24 connections: normal, slow (about 30 in
    # flight wanted, the in-flight cap refuses the rest), a 429 storm, an outage
    # (connections refused and dropped), normal again.
    phases = [(3, {}), (3, {"latency_ms": 1500}), (3, {"latency_ms": 0, "storm": {"retry_after_s": 1}}),
              (3, {"storm": None, "outage": True}), (5, {"outage": False})]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("run", loadgen.run(
        env.base_url + CHAT, rate=20, duration=sum(p[0] for p in phases), max_in_flight=24, connections=8,
        body=loadgen.chat_body(max_tokens=5), timeout=30)))
    t.start()
    for seconds, faults in phases:
        if faults:
            emulator.faults(**faults)
        time.sleep(seconds)
    t.join(60)
    assert not t.is_alive()
    run = out["run"]
    s = run.summary()
    # Every request answered, none dropped, no connection error.
    assert s["sent"] == 340 and not run.dropped, s
    assert not s["transport_errors"], s
    assert set(s["by_status"]) <= {"200", "429", "502", "503", "504"}, s
    assert all(r.latency < 10 for r in run.results), s
    # Each fault showed: refusals by the in-flight cap while slow, the provider's
    # 429s, the outage's 503s; and requests went through before and after.
    errors = [r.error_body.get("error", {}) for r in run.results if isinstance(r.error_body, dict)]
    assert any(e.get("type") == "in_flight" for e in errors), s
    assert any(e.get("code") == "upstream_rate_limited" for e in errors), s
    assert s["by_status"].get("503", 0) > 0, s
    assert any(r.status == 200 for r in run.sent_between(0, 2.5)), s
    assert any(r.status == 200 for r in run.sent_between(14, 17)), s
    # No VM failure.
    log = env.log_text()
    assert "RuntimeError" not in log and "panic" not in log, log[-3000:]
    assert stat(env, "wasm.llm_capacity.vm_reload_success") == 0
    assert stat(env, "wasm.llm_capacity_upstream.vm_reload_success") == 0
    # Nothing left in flight: Envoy's gauges, and the filter's own count (the cap
    # admits exactly MAX_IN_FLIGHT slow requests at once, and refuses one more).
    harness.wait_for(lambda: stat(env, "http.llm_egress.downstream_rq_active") == 0
                     and stat(env, "cluster.emulator.upstream_rq_active") == 0, 10, "no stream left")
    harness.wait_for(lambda: post(env, CHAT, CHAT_BODY, timeout=10)[0] == 200, 15, "the circuit closed again")
    emulator.faults(latency_ms=2500)
    with concurrent.futures.ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT) as pool:
        probe = [pool.submit(post, env, CHAT, CHAT_BODY) for _ in range(MAX_IN_FLIGHT)]
        harness.wait_for(lambda: stat(env, "cluster.emulator.upstream_rq_active") == MAX_IN_FLIGHT, 5,
                         "the probe requests in flight")
        extra = post(env, CHAT, CHAT_BODY)
        probe = [f.result() for f in probe]
    assert [p[0] for p in probe] == [200] * MAX_IN_FLIGHT, probe
    assert extra[0] == 429 and json.loads(extra[2])["error"]["type"] == "in_flight", extra


# ---------------------------------------------------------------------------
# Configuration update under load (ECDS from a watched file)
# ---------------------------------------------------------------------------

RPM = 60  # with burst_seconds 60: the bucket starts full, 60 requests deep


def ecds_config(emulator, tmp: Path, plugin: dict, new_vm: bool):
    """envoy/envoy.yaml with the downstream instance delivered by ECDS from a
    file in a watched directory. Returns the config, the filter's first version
    and a function that publishes a version atomically (write, then rename)."""
    cfg = harness.localize(harness.load_envoy_config(), emulator.api_port)
    wasm = copy.deepcopy(harness.wasm_filter(cfg))
    wasm["configuration"] = {"@type": "type.googleapis.com/google.protobuf.Struct", "value": plugin}
    if new_vm:
        # No upstream instance: no other VM of this vm_id keeps its shared data alive.
        plugin["upstream_filter"] = False
        router = next(f for f in hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.router")
        router["typed_config"].pop("upstream_http_filters")
    else:
        harness.set_plugin_config(cfg, copy.deepcopy(plugin))
    d = tmp / "ecds"
    d.mkdir()
    path = d / "llm_capacity.yaml"

    def publish(version: int, wasm_config: dict):
        doc = {"version_info": str(version), "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "llm_capacity", "typed_config": {"@type": WASM_TYPE, "config": wasm_config}}]}
        tmp_file = d / f".llm_capacity.yaml.{version}"
        tmp_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.rename(tmp_file, path)

    publish(1, wasm)
    hcm(cfg)["http_filters"][0] = {"name": "llm_capacity", "config_discovery": {
        "config_source": {"path_config_source": {"path": str(path), "watched_directory": {"path": str(d)}}},
        "type_urls": [WASM_TYPE]}}
    cfg["node"] = {"id": "llm-capacity-e2e", "cluster": "llm-capacity"}  # required by xDS subscriptions
    return cfg, wasm, publish


@pytest.mark.parametrize("new_vm", [False, True], ids=["plugin-config", "new-vm"])
def test_config_update_under_load_keeps_limiter_state(emulator, envoy_from, tmp_path, new_vm):
    plugin = base_plugin()
    plugin["routes"]["openai-chat"] = {
        "clusters": ["emulator"],
        "limits": {"requests_per_minute": RPM, "burst_seconds": 60},
        "rate_limit_headers": "both",
    }
    cfg, wasm, publish = ecds_config(emulator, tmp_path, plugin, new_vm)
    env = envoy_from(cfg)
    created = stat(env, "wasm.envoy.wasm.runtime.v8.created")
    # 8 requests/s for 12 s: 96 requests against a bucket of 60 refilling 1/s.
    # The update lands after about 48: if the limiter's state were lost with the
    # old configuration, a fresh bucket would admit every later one (96 in all).
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("run", loadgen.run(
        env.base_url + CHAT, rate=8, duration=12, max_in_flight=16, connections=4,
        body=loadgen.chat_body(max_tokens=5), timeout=20)))
    t.start()
    time.sleep(6)
    # The new version differs visibly: OpenAI headers only (no IETF RateLimit-Policy).
    new = copy.deepcopy(wasm)
    new["configuration"]["value"]["routes"]["openai-chat"]["rate_limit_headers"] = "openai"
    if new_vm:
        # A different VM key (Envoy >= 1.39 keys VMs on environment variables too).
        new["vm_config"]["environment_variables"] = {"key_values": {"LLMCAP_CONFIG_GENERATION": "2"}}
    t_update = time.monotonic()
    publish(2, new)
    harness.wait_for(lambda: env.stats_json().get("extension_config_discovery.http_filter.llm_capacity.version_text")
                     == "2", 10, "ECDS version 2")
    applied = time.monotonic() - t_update
    t.join(40)
    assert not t.is_alive()
    run = out["run"]
    s = run.summary()
    assert stat(env, "extension_config_discovery.http_filter.llm_capacity.update_rejected") == 0
    if new_vm:
        assert stat(env, "wasm.envoy.wasm.runtime.v8.created") > created, "a new VM was expected"
    # No request lost: every one answered by the filter (admitted or refused).
    assert s["sent"] == 96 and not run.dropped and not s["transport_errors"], s
    assert set(s["by_status"]) <= {"200", "429"}, s
    # Both versions served, in order.
    ietf = [("ratelimit-policy" in r.headers) for r in run.results]
    assert ietf[0] and not ietf[-1], s
    switch = ietf.index(False)
    assert all(ietf[:switch]) and not any(ietf[switch:]), ietf
    assert 30 <= switch <= 80, (switch, applied)
    # The limiter's counts carried over: over the run, at most the bucket, its
    # refill and one request of debt.
    ok = len(run.ok())
    span = run.send_span()
    assert RPM <= ok <= RPM + span * RPM / 60 + 2, (ok, span, s)
    # Refusals are the limiter's (not a failing filter's).
    codes = {(r.error_body or {}).get("error", {}).get("code") for r in run.with_status(429)}
    assert codes == {"rate_limit_exceeded"}, codes
