"""Fleet-wide limits (docs/global-limits.md): two Envoy processes share one
quota kept by a real rate limit service (Limitador's library over Redis, behind
Envoy's RLS gRPC protocol: tests/rls), per request and with leased batches; the
failure policy when the service stops or is slow.

Runtime: about 3 minutes (two 60 s windows, the rest is short).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import harness
import loadgen
import rls

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ROUTE = "openai-chat"
TOKENS_ROUTE = "llm-other"
DOMAIN = "llm-capacity"
RPM = 600
TPM = 60_000
WINDOW_S = 60


def limits_doc(rpm: int = RPM, tpm: int = TPM, seconds: int = WINDOW_S) -> list[dict]:
    """Limitador limits: requests on the chat route, tokens on the other one."""
    return [
        {"namespace": DOMAIN, "name": "chat-requests", "max_value": rpm, "seconds": seconds,
         "conditions": [f"descriptors[0]['llmcap_route'] == '{ROUTE}'", "descriptors[0]['unit'] == 'requests'"],
         "variables": []},
        {"namespace": DOMAIN, "name": "other-tokens", "max_value": tpm, "seconds": seconds,
         "conditions": [f"descriptors[0]['llmcap_route'] == '{TOKENS_ROUTE}'", "descriptors[0]['unit'] == 'tokens'"],
         "variables": []},
    ]


def plugin_with_global(glob: dict, routes=(ROUTE, TOKENS_ROUTE)) -> dict:
    plugin = harness.plugin_config(harness.load_envoy_config())
    for r in routes:
        plugin["routes"][r].pop("limits", None)  # the global tier alone decides
        plugin["routes"][r]["global"] = dict(glob)
    return plugin


def with_rls_cluster(cfg: dict) -> dict:
    """envoy.yaml plus the rate limit service's HTTP/2 cluster (docs/global-limits.md)."""
    cfg["static_resources"]["clusters"].append(rls.rls_cluster(0, "ratelimit"))
    return cfg


@pytest.fixture
def emu(emulator):
    emulator.faults(rpm=100_000_000, tpm=1_000_000_000)
    return emulator


@pytest.fixture
def redis(tmp_path):
    r = rls.RedisServer(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def start_rls(tmp_path, redis):
    started = []

    def start(limits=None, delay_ms=0, port=None):
        s = rls.RateLimitService(tmp_path, limits or limits_doc(), redis=redis, delay_ms=delay_ms, port=port or 0,
                                 name=f"rls{len(started)}")
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def envoys(tmp_path, emu):
    started = []

    def start(plugin: dict, rls_port: int, name: str = "envoy"):
        base = with_rls_cluster(harness.load_envoy_config())
        cfg = harness.localize(base, emu.api_port, {"ratelimit": rls_port})
        harness.set_plugin_config(cfg, plugin)
        env = harness.Envoy(tmp_path, cfg, name=name, concurrency=2, args=("--file-flush-interval-msec", "100"))
        started.append(env)
        return env

    yield start
    for e in started:
        e.stop()


def drive(envs, path, rate_each, duration, **kw) -> list[loadgen.Run]:
    """Loads every Envoy at once, each from its own thread."""
    runs: list = [None] * len(envs)

    def one(i):
        runs[i] = loadgen.run(envs[i].base_url + path, rate=rate_each, duration=duration, max_in_flight=32,
                              connections=8, **kw)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(envs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def wasm_failures(env) -> int:
    s = env.stats_json()
    return sum(v for k, v in s.items() if "vm_reload" in k or k.endswith("wasm.runtime.v8.failed"))


def metric_sum(env, name, **labels) -> float:
    return sum(v for n, l, v in harness.prom_samples(env) if n == name and all(l.get(k) == x for k, x in labels.items()))


@pytest.mark.parametrize("mode", ["per_request", "leased"])
def test_two_envoys_at_5x_keep_the_global_limit_within_2_percent(emu, start_rls, envoys, mode):
    svc = start_rls()
    glob = {"cluster": "ratelimit", "timeout_ms": 500}
    if mode == "leased":
        glob["lease"] = {"requests": 4, "tokens": 600}
    plugin = plugin_with_global(glob)
    a, b = envoys(plugin, svc.port, "a"), envoys(plugin, svc.port, "b")

    # Tokens route: reservation = input x (1 + the margin for its kind of text) + max_tokens
    # (100); real output 10..100.
    body = json.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": loadgen.DEFAULT_PROMPT,
                       "max_tokens": 100}).encode()
    mean_tokens = 30 + 55  # about: prompt ~30, output mean 55
    duration = WINDOW_S - 4  # every admission falls in the service's first window
    results: dict = {}

    def requests_side():
        results["req"] = drive([a, b], CHAT, 5 * RPM / 60 / 2, duration, output_tokens=5, api_key="k-req")

    def tokens_side():
        results["tok"] = drive([a, b], COMPLETIONS, 5 * TPM / 60 / mean_tokens / 2, duration,
                               body=body, api_key="k-tok",
                               headers=lambda i: {"x-emulator-output-tokens": str(10 + (i * 37) % 91)})

    t1, t2 = threading.Thread(target=requests_side), threading.Thread(target=tokens_side)
    t1.start(); t2.start(); t1.join(); t2.join()

    stats = emu.stats()["by_key"]
    admitted_req = stats["k-req"]["requests"]
    tok = stats["k-tok"]
    admitted_tok = tok["prompt_tokens"] + tok["completion_tokens"]
    req_runs, tok_runs = results["req"], results["tok"]
    sent_req = sum(len(r.results) for r in req_runs)
    ok_req = sum(len(r.ok()) for r in req_runs)
    print(f"\n{mode}: requests sent {sent_req}, admitted {admitted_req} (limit {RPM}); "
          f"tokens admitted {admitted_tok} (limit {TPM}) in {sum(len(r.ok()) for r in tok_runs)} requests")
    assert ok_req == admitted_req
    assert sent_req >= 4 * RPM, "the load was not 5x the limit"
    assert abs(admitted_req - RPM) <= 0.02 * RPM, (admitted_req, RPM)
    assert abs(admitted_tok - TPM) <= 0.02 * TPM, (admitted_tok, TPM)
    # Refusals are the service's, answered as 429 with a wait until its reset.
    refused = [r for run in req_runs for r in run.with_status(429)]
    assert refused and all((r.error_body or {}).get("error", {}).get("code") == "rate_limit_exceeded" for r in refused[:20])
    assert all(1 <= int(r.headers["retry-after"]) <= WINDOW_S + 15 for r in refused[:20])
    # Both Envoys took part; nothing failed.
    for env in (a, b):
        assert metric_sum(env, "llmcap_global_decisions_total", result="over_limit") > 0
        assert metric_sum(env, "llmcap_global_calls_total", result="error") == 0
        assert wasm_failures(env) == 0
    if mode == "leased":
        # Most requests were served from leased quota, without a call.
        pooled = sum(metric_sum(e, "llmcap_global_decisions_total", route=ROUTE, result="pool") for e in (a, b))
        assert pooled >= 0.5 * RPM, pooled


def test_service_stopped_mid_run_fails_open_to_the_replica_share(emu, start_rls, envoys):
    svc = start_rls(limits_doc(rpm=100_000))
    share = 120  # this replica's static share, per minute
    plugin = plugin_with_global({"cluster": "ratelimit", "timeout_ms": 200, "on_failure": "open",
                                 "retry_interval_ms": 500,
                                 "fallback_limits": {"requests_per_minute": share, "burst_seconds": 1}},
                                routes=(ROUTE,))
    a, b = envoys(plugin, svc.port, "a"), envoys(plugin, svc.port, "b")
    before = drive([a, b], CHAT, 10, 3, output_tokens=5)
    assert all(len(r.ok()) == len(r.results) for r in before)
    svc.stop()
    after = drive([a, b], CHAT, 10, 10, output_tokens=5)
    for env, run in zip((a, b), after):
        assert len(run.ok()) + len(run.with_status(429)) == len(run.results), run.summary()["by_status"]
        # Nothing hangs: a failed call costs at most its timeout.
        assert max(r.latency for r in run.results) < 2.0, run.summary()
        # The static share holds: rate x W + burst (+ one).
        w = run.send_span()
        assert len(run.ok()) <= share / 60 * w + share / 60 * 1 + 2, (len(run.ok()), w)
        assert len(run.ok()) >= 0.8 * share / 60 * w, (len(run.ok()), w)
        assert metric_sum(env, "llmcap_global_decisions_total", result="fail_open") >= len(run.ok()) - 2
        assert metric_sum(env, "llmcap_global_calls_total", result="error") >= 1
        assert wasm_failures(env) == 0


def test_service_stopped_mid_run_fails_closed_and_recovers(emu, start_rls, envoys):
    svc = start_rls(limits_doc(rpm=100_000))
    plugin = plugin_with_global({"cluster": "ratelimit", "timeout_ms": 200, "on_failure": "closed",
                                 "retry_interval_ms": 500}, routes=(ROUTE,))
    env = envoys(plugin, svc.port)
    run = drive([env], CHAT, 10, 2, output_tokens=5)[0]
    assert len(run.ok()) == len(run.results)
    port = svc.port
    svc.stop()
    run = drive([env], CHAT, 10, 4, output_tokens=5)[0]
    assert run.with_status(503) and not run.ok(), run.summary()
    assert max(r.latency for r in run.results) < 2.0
    r = run.with_status(503)[0]
    assert (r.error_body or {}).get("error", {}).get("code") == "global_limit_unavailable" and int(r.headers["retry-after"]) >= 1
    before = emu.stats()["requests_total"]
    assert metric_sum(env, "llmcap_requests_total", outcome="rejected_global_unavailable") == len(run.results)
    # Back on the same port: admitted again after the retry interval.
    start_rls(limits_doc(rpm=100_000), port=port)
    time.sleep(0.6)
    run = drive([env], CHAT, 10, 2, output_tokens=5)[0]
    assert len(run.ok()) >= len(run.results) - 2, run.summary()
    assert emu.stats()["requests_total"] - before == len(run.ok())
    assert wasm_failures(env) == 0


def test_slow_service_times_out_into_the_policy(emu, start_rls, envoys):
    svc = start_rls(limits_doc(rpm=100_000), delay_ms=1_000)
    plugin = plugin_with_global({"cluster": "ratelimit", "timeout_ms": 100, "on_failure": "closed",
                                 "retry_interval_ms": 0}, routes=(ROUTE,))
    env = envoys(plugin, svc.port)
    t0 = time.monotonic()
    status, headers, body = harness.raw_request(env.port, "POST", CHAT, loadgen.chat_body(),
                                                {"content-type": "application/json"})
    took = time.monotonic() - t0
    assert status == 503 and b"global_limit_unavailable" in body, (status, body)
    assert took < 0.8, took
    assert metric_sum(env, "llmcap_global_calls_total", result="timeout") == 1, [x for x in harness.prom_samples(env) if "global" in x[0] and x[2]]


def test_a_missing_service_cluster_is_a_failure_not_a_crash(emu, start_rls, envoys):
    svc = start_rls()
    plugin = plugin_with_global({"cluster": "no-such-cluster", "on_failure": "open"}, routes=(ROUTE,))
    env = envoys(plugin, svc.port)
    for _ in range(3):
        status, _, body = harness.raw_request(env.port, "POST", CHAT, loadgen.chat_body(),
                                              {"content-type": "application/json", "authorization": "Bearer k"})
        assert status == 200, body
    assert metric_sum(env, "llmcap_global_decisions_total", result="fail_open") == 3
    assert [json.loads(e["llm_capacity"])["global"] for e in env.access_entries(3)] == ["fail_open"] * 3
    assert wasm_failures(env) == 0


def test_client_leaving_while_the_service_is_asked_gives_its_share_back(emu, start_rls, envoys):
    # The service answers after 1 s; the client leaves after 0.2 s: nothing is sent upstream.
    svc = start_rls(limits_doc(rpm=100_000), delay_ms=1_000)
    plugin = plugin_with_global({"cluster": "ratelimit", "timeout_ms": 3_000}, routes=(ROUTE,))
    env = envoys(plugin, svc.port)
    with pytest.raises(Exception):
        harness.raw_request(env.port, "POST", CHAT, loadgen.chat_body(), {"content-type": "application/json"},
                            timeout=0.2)
    time.sleep(1.5)
    assert emu.stats()["requests_total"] == 0
    assert wasm_failures(env) == 0
