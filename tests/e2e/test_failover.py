"""Upstream health in real Envoy: circuits, Retry-After, adaptive quota and
failover, with Envoy's router as the only retry layer.

Two emulators play the primary and the fallback cluster of the openai-chat route
of envoy/envoy.yaml (with its matcher cluster specifier, retry policy and the
filter's upstream instance). The emulators' admin counts are the referee: which
cluster received what, and when.

Runtime: about 2 minutes (the 429 storm alone runs 30 s, the slow first
tokens 20 s).
"""

from __future__ import annotations

import copy
import json
import threading
import time

import openai

import harness
import loadgen

CHAT = "/v1/chat/completions"
PRIMARY, FALLBACK = "emulator", "emulator-fallback"


def plugin(circuit: dict | None = None, chain=None, route: dict | None = None) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["clusters"][PRIMARY]["circuit"].update(circuit or {})
    if chain is not None:
        p["routes"]["openai-chat"]["clusters"] = chain
    p["routes"]["openai-chat"].update(route or {})
    return p


def start(start_envoy, pair, **kw):
    primary, fb = pair
    return start_envoy(ports={PRIMARY: primary.api_port, FALLBACK: fb.api_port}, **kw)


def client(env, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="k", max_retries=0, **kw)


def chat(env, model="gpt-4o", **kw):
    return client(env).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, **kw)


def raw_chat(env, headers=None, model="gpt-4o"):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
    t0 = time.monotonic()
    status, h, b = harness.raw_request(env.port, "POST", CHAT, body, {
        "content-type": "application/json", "authorization": "Bearer k", **(headers or {})})
    return status, h, b, time.monotonic() - t0


def arrivals(emu) -> list[dict]:
    return sorted(emu.stats()["recent"], key=lambda r: r["received_ms"])


def stat(env, name: str) -> int:
    return sum(v for k, v in env.stats_json().items() if name in k)


def test_429_storm_moves_traffic_and_respects_retry_after(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair)
    primary.faults(storm={"retry_after_s": 5})
    run = loadgen.run(env.base_url + CHAT, rate=30, duration=30, max_in_flight=16, connections=4,
                      body=loadgen.chat_body(model="gpt-4o", max_tokens=5))
    n = len(run.results)
    ok = len(run.ok())
    p_stats, f_stats = primary.stats(), fb.stats()
    attempts = p_stats["requests_total"] + f_stats["requests_total"]
    assert n >= 800, n
    assert ok >= 0.99 * n, run.summary()
    assert attempts <= 1.2 * n, (attempts, n)
    # The primary answered 429 to everything it got; after the first burst (sent
    # before any 429 came back), each arrival comes at least Retry-After (5 s)
    # after the one before it: one probe per cool-down.
    times = [r["received_ms"] for r in arrivals(primary)]
    assert set(p_stats["by_status"]) == {"429"}, p_stats["by_status"]
    first = times[0]
    later = [t for t in times if t - first > 200]
    gaps = [b - a for a, b in zip(later, later[1:])]
    assert later and later[0] - first >= 4950, times
    assert all(g >= 4950 for g in gaps), times
    assert 4 <= len(later) <= 6, times  # about one probe per 5 s over 30 s
    s = env.stats_json()
    assert stat(env, "cluster=.=emulator;.;llmcap_cooldowns_total") >= len(later)
    assert stat(env, "route=.=openai-chat;.;cluster=.=emulator-fallback;.;llmcap_failovers_total") >= 0.9 * n, s


def test_outage_opens_circuit_and_probes_bring_primary_back(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair, plugin=plugin({"consecutive_failures": 3, "open_seconds": 2}))
    primary.faults(outage=True)
    statuses = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        statuses.append(raw_chat(env)[0])
        time.sleep(0.05)
    # Connect failures were retried by Envoy on the fallback: no client saw them.
    assert statuses and all(s == 200 for s in statuses), statuses
    assert stat(env, "cluster=.=emulator;.;state=.=open;.;llmcap_circuit_transitions_total") >= 1
    # Open: the primary is skipped, so almost every request made one attempt.
    assert stat(env, "cluster=.=emulator;.;class=.=reset;.;llmcap_upstream_attempts_total") <= 6
    primary.faults(outage=False)
    primary.reset()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and primary.stats()["requests_total"] < 5:
        assert raw_chat(env)[0] == 200
        time.sleep(0.1)
    # A probe closed the circuit and traffic is back on the primary.
    assert primary.stats()["requests_total"] >= 5
    assert stat(env, "cluster=.=emulator;.;state=.=closed;.;llmcap_circuit_transitions_total") >= 1
    before = fb.stats()["requests_total"]
    for _ in range(5):
        assert raw_chat(env)[0] == 200
    assert fb.stats()["requests_total"] == before


def test_slow_primary_moves_traffic_to_fallback(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair, plugin=plugin({"latency_p95_ms": 300, "min_requests": 4, "open_seconds": 30}))
    primary.faults(latency_ms=600)
    for _ in range(4):
        assert raw_chat(env)[0] == 200
    assert primary.stats()["requests_total"] == 4
    took = []
    for _ in range(6):
        status, _, _, t = raw_chat(env)
        assert status == 200
        took.append(t)
    assert primary.stats()["requests_total"] == 4, "the slow primary got traffic after its p95 opened it"
    assert fb.stats()["requests_total"] == 6
    assert max(took) < 0.5, took


def test_slow_first_tokens_open_the_relative_rule_and_recovery_closes_it(start_envoy, pair):
    """Time to first token 50 ms -> 2 s on the primary, no errors, streamed: the
    relative rule (p95 above 2x its own baseline over a 5 s window) opens it,
    traffic moves to the fallback; back to 50 ms, a probe closes it."""
    primary, fb = pair
    rel = {"factor": 2, "window_seconds": 5, "min_requests": 5, "baseline_half_life_seconds": 120}
    env = start(start_envoy, pair, plugin=plugin({"open_seconds": 2, "latency_relative": rel}))
    for e in pair:
        e.faults(ttft_ms=50, inter_token_ms=5)
    stop = threading.Event()
    errors: list[str] = []

    def load():
        c = client(env, timeout=30)
        while not stop.is_set():
            try:
                list(c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, stream=True))
            except openai.OpenAIError as e:
                errors.append(repr(e))
            time.sleep(0.05)

    def transitions(state):
        return stat(env, f"cluster=.=emulator;.;state=.={state};.;llmcap_circuit_transitions_total")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(4)  # the baseline: 50 ms
        assert transitions("open") == 0 and fb.stats()["requests_total"] == 0
        primary.faults(ttft_ms=2000)
        slow_at = time.monotonic()
        harness.wait_for(lambda: transitions("open") >= 1, 5 + 2 + 2, "the relative rule opening")
        assert time.monotonic() - slow_at <= 5 + 2 + 1, "not within the window (and one slow answer)"
        # Open (and each slow probe reopening it): traffic goes to the fallback.
        time.sleep(1)
        p0, f0 = primary.stats()["requests_total"], fb.stats()["requests_total"]
        time.sleep(5)
        p1, f1 = primary.stats()["requests_total"], fb.stats()["requests_total"]
        assert f1 - f0 >= 20 and p1 - p0 <= 4, ((p0, p1), (f0, f1))
        assert transitions("closed") == 0, "a probe as slow as the outage closed it"
        primary.faults(ttft_ms=50)
        harness.wait_for(lambda: transitions("closed") >= 1, 2 + 2 + 3, "a probe closing it")
        time.sleep(1)
        p2, f2 = primary.stats()["requests_total"], fb.stats()["requests_total"]
        time.sleep(2)
        p3, f3 = primary.stats()["requests_total"], fb.stats()["requests_total"]
        assert p3 - p2 >= 20 and f3 - f2 == 0, ((p2, p3), (f2, f3))
        assert not errors, errors[:3]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)


def test_no_healthy_cluster_answers_fast_with_retry_after(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair)
    for e in pair:
        e.faults(storm={"retry_after_s": 5})
    status, h, _, _ = raw_chat(env)
    assert status == 429  # the fallback's own 429, after one retry
    assert primary.stats()["requests_total"] == 1 and fb.stats()["requests_total"] == 1
    assert "x-llm-capacity-retry-after" not in h
    status, h, b, took = raw_chat(env)
    assert status == 429 and took < 0.5, (status, took)
    assert json.loads(b)["error"]["code"] == "upstream_rate_limited"
    assert h["x-llm-capacity"] == "upstream_rate_limited"
    assert 1 <= int(h["retry-after"]) <= 6, h
    assert primary.stats()["requests_total"] == 1 and fb.stats()["requests_total"] == 1


def test_all_clusters_down_gives_fast_503(start_envoy, pair):
    p = plugin({"consecutive_failures": 2, "open_seconds": 30})
    p["clusters"][FALLBACK]["circuit"] = {"consecutive_failures": 2, "open_seconds": 30}
    env = start(start_envoy, pair, plugin=p)
    for e in pair:
        e.faults(outage=True)
    seen = []
    for _ in range(6):
        status, h, b, took = raw_chat(env)
        seen.append(status)
        if status == 503 and h.get("x-llm-capacity") == "upstream_unavailable":
            assert took < 0.5 and int(h["retry-after"]) >= 1, (took, h)
            return
    raise AssertionError(f"no local 503 after both clusters failed: {seen}")


def test_adaptive_quota_moves_traffic_before_the_provider_says_429(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair)
    primary.faults(rpm=5)  # the primary's x-ratelimit-remaining-requests counts down to 0
    for _ in range(10):
        assert raw_chat(env)[0] == 200
    ps = primary.stats()
    assert ps["by_status"] == {"200": 5}, ps["by_status"]
    assert fb.stats()["requests_total"] == 5
    assert stat(env, "cluster=.=emulator;.;limit=.=requests;.;llmcap_provider_remaining") == 0


def test_each_attempt_carries_its_clusters_model(start_envoy, pair):
    primary, fb = pair
    chain = [PRIMARY, {"cluster": FALLBACK, "model": "gpt-4o-mini"}]
    env = start(start_envoy, pair, plugin=plugin(chain=chain))
    primary.faults(storm={"retry_after_s": 5})
    # Attempt 1 goes to the primary as gpt-4o, its 429 is retried on the fallback
    # with gpt-4o-mini (body rewritten per attempt by the upstream instance).
    r = chat(env)
    assert r.http_response.status_code == 200
    assert [x["model"] for x in arrivals(primary)] == ["gpt-4o"]
    assert [x["model"] for x in arrivals(fb)] == ["gpt-4o-mini"]
    # Now the primary cools down: the first attempt itself goes to the fallback,
    # rewritten by the downstream filter.
    r = chat(env)
    assert r.http_response.status_code == 200
    assert r.parse().model.startswith("gpt-4o-mini")
    assert [x["model"] for x in arrivals(fb)] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert len(arrivals(primary)) == 1


def test_short_client_deadline_gets_no_retry(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair)
    primary.faults(error_rate=1.0, error_status=[503])
    # 1 s left is under retry_min_remaining_seconds (2 s): one attempt only.
    status, _, _, _ = raw_chat(env, headers={"x-stainless-timeout": "1"})
    assert status == 503
    assert primary.stats()["requests_total"] == 1 and fb.stats()["requests_total"] == 0
    # With time to spare the router retries on the fallback.
    status, _, _, _ = raw_chat(env, headers={"x-stainless-timeout": "60"})
    assert status == 200
    assert fb.stats()["requests_total"] == 1


def test_without_upstream_instance_the_final_answer_feeds_the_circuit(start_envoy, pair):
    primary, fb = pair
    p = plugin({"consecutive_failures": 3, "open_seconds": 30}, chain=[PRIMARY])
    p["upstream_filter"] = False
    env = start(start_envoy, pair, plugin=p)
    primary.faults(error_rate=1.0, error_status=[500])
    assert [raw_chat(env)[0] for _ in range(3)] == [500, 500, 500]
    status, h, _, took = raw_chat(env)
    assert status == 503 and h["x-llm-capacity"] == "upstream_unavailable" and took < 0.5, (status, h)
    assert primary.stats()["requests_total"] == 3


def test_clients_that_leave_do_not_open_the_circuit(start_envoy, pair):
    """A client that gives up (timeout, cancelled agent step) resets the upstream
    attempt; that says nothing about the provider and must not count against it."""
    import socket
    primary, fb = pair
    env = start(start_envoy, pair, plugin=plugin({"consecutive_failures": 3, "open_seconds": 30}))
    primary.faults(latency_ms=1500)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer k\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    socks = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
        s.sendall(head + body)
        socks.append(s)
    time.sleep(0.5)  # the attempts are at the primary, waiting for its answer
    for s in socks:
        s.close()
    time.sleep(2.0)  # the attempts' ends have been handled (the primary would answer after 1.5 s)
    assert stat(env, "cluster=.=emulator;.;class=.=reset;.;llmcap_upstream_attempts_total") == 0
    assert stat(env, "cluster=.=emulator;.;state=.=open;.;llmcap_circuit_transitions_total") == 0
    # The primary still takes the next request (no failover to the fallback).
    primary.faults(latency_ms=0)
    assert raw_chat(env)[0] == 200
    assert fb.stats()["requests_total"] == 0
