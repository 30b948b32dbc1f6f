"""Hedging in real Envoy 1.40 (issue 21).

Two emulators play the chain of envoy/envoy.yaml's openai-chat route; the
route's `hedge.cluster` is `emulator-hedged`, the composite cluster over that
chain (attempt n goes to its n-th cluster). The router sends the hedge (its
per-try timeout, soft, with `x-envoy-hedge-on-per-try-timeout`); the filter
only arms it. The emulators' admin counts (requests answered, requests whose
connection was reset before their answer) are the referee.

Runtime: about 90 s (the share test runs the issue's full minute).
"""

from __future__ import annotations

import copy
import json

import harness
import loadgen

CHAT = "/v1/chat/completions"
PRIMARY, FALLBACK, COMPOSITE = "emulator", "emulator-fallback", "emulator-hedged"
SERVED_BY = "x-llm-capacity-served-by"
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-test"}
NEVER_OPEN = {"consecutive_failures": 0, "error_rate": 1.0, "min_requests": 100000}


def start(start_envoy, pair, hedge: dict, **route):
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    for c in (PRIMARY, FALLBACK):
        p["clusters"][c].setdefault("circuit", {}).update(NEVER_OPEN)
    r = p["routes"]["openai-chat"]
    r["hedge"] = {"cluster": COMPOSITE, **hedge}
    r.update(route)
    primary, fb = pair
    return start_envoy(ports={PRIMARY: primary.api_port, FALLBACK: fb.api_port}, plugin=p)


def hedges(env, result: str) -> float:
    return harness.metric(env, "llmcap_hedges_total", route="openai-chat", result=result) or 0


def load(env, rate, duration, stream=False):
    return loadgen.run(env.base_url + CHAT, rate=rate, duration=duration, max_in_flight=128, connections=16,
                       body=loadgen.chat_body(model="gpt-4o", max_tokens=5, stream=stream))


def test_a_hedge_answers_from_the_fallback_while_the_primary_is_slow(start_envoy, pair):
    primary, fb = pair
    primary.faults(latency_ms=2000, rpm=100_000_000, tpm=1_000_000_000)
    # Every request may hedge here; the route's retry budget would allow 10%.
    env = start(start_envoy, pair, {"after_ms": 300, "max_share": 1.0}, retry_budget_percent=100)
    run = load(env, rate=10, duration=6)
    n = len(run.results)
    assert n >= 55 and len(run.ok()) == n, run.summary()
    # Answers are not streamed: the whole answer bounds time to first byte.
    lat = sorted(r.latency for r in run.results)
    p99 = loadgen.percentile(lat, 0.99)
    print(f"hedged, primary at 2 s, after_ms 300: p50 {loadgen.percentile(lat, 0.5) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms over {n}")
    assert p99 <= 0.45, run.summary()
    assert {r.headers.get(SERVED_BY) for r in run.results} == {FALLBACK}
    # Each hedge won, and the router reset each first attempt: the primary
    # answered none and saw every one of them cancelled.
    harness.wait_for(lambda: primary.stats()["cancelled_total"] >= n, 10, "the primary's cancelled attempts")
    assert (primary.stats()["requests_total"], primary.stats()["cancelled_total"]) == (0, n)
    assert fb.stats()["requests_total"] == n
    harness.wait_for(lambda: hedges(env, "won") >= n, 10, "hedges won")
    assert (hedges(env, "sent"), hedges(env, "won"), hedges(env, "cancelled")) == (n, n, 0)
    entries = [e for e in env.access_entries(n) if e.get("route") == "openai-chat"]
    states = [json.loads(e["llm_capacity"]) for e in entries]
    assert all(s["hedged"] and s["winner"] == "hedge" and s["served_by"] == FALLBACK for s in states), states[:2]
    # Envoy's own log names the composite cluster; the filter's names the member.
    assert {e["upstream_cluster"] for e in entries} == {COMPOSITE}
    # A loser the router cancelled says nothing about its cluster.
    assert harness.metric(env, "llmcap_upstream_attempts_total", cluster=PRIMARY) is None


def test_hedges_stay_within_max_share_over_a_minute(start_envoy, pair):
    primary, fb = pair
    # Every first attempt is slower than after_ms: each armed hedge fires.
    primary.faults(latency_ms=400, rpm=100_000_000, tpm=1_000_000_000)
    env = start(start_envoy, pair, {"after_ms": 100, "max_share": 0.05})
    run = load(env, rate=20, duration=60)
    n = len(run.results)
    assert n >= 1150 and len(run.ok()) == n, run.summary()
    harness.wait_for(lambda: hedges(env, "won") + hedges(env, "cancelled") >= hedges(env, "sent") > 0, 10,
                     "hedge outcomes")
    sent, won = hedges(env, "sent"), hedges(env, "won")
    hedged = sum(1 for r in run.results if r.headers.get(SERVED_BY) == FALLBACK)
    print(f"max_share 0.05 at 20/s for 60 s: {sent:.0f} hedges of {n} requests ({100 * sent / n:.2f}%), "
          f"{won:.0f} won, {hedged} answered by the fallback")
    assert sent <= 0.05 * n, (sent, n)
    # The share is used, not just bounded (each armed hedge fires here).
    assert sent >= 0.04 * n, (sent, n)
    # Every hedge reached the fallback, which answers in time: it won.
    assert fb.stats()["requests_total"] == sent == won == hedged
    harness.wait_for(lambda: primary.stats()["cancelled_total"] >= won, 10, "the primary's cancelled attempts")
    assert primary.stats()["cancelled_total"] == won
    assert primary.stats()["requests_total"] == n - won


def test_a_started_stream_is_never_duplicated(start_envoy, pair):
    primary, fb = pair
    env = start(start_envoy, pair, {"after_ms": 300, "max_share": 1.0}, retry_budget_percent=100)
    body = loadgen.chat_body(model="gpt-4o", max_tokens=5, stream=True)
    # Headers at once, the first token after 1.5 s: the stream has started, so
    # the per-try timeout sends no hedge.
    primary.faults(ttft_ms=1500, rpm=100_000_000, tpm=1_000_000_000)
    status, headers, raw = harness.raw_request(env.port, "POST", CHAT, body, HEADERS)
    text = raw.decode()
    assert status == 200 and headers.get(SERVED_BY) == PRIMARY, headers
    assert text.count("data: [DONE]") == 1 and text.count('"role":"assistant"') == 1, text
    assert (primary.stats()["requests_total"], fb.stats()["requests_total"]) == (1, 0)
    # Headers late: the hedge answers, and the client gets one whole stream.
    primary.faults(ttft_ms=0, latency_ms=2000, rpm=100_000_000, tpm=1_000_000_000)
    status, headers, raw = harness.raw_request(env.port, "POST", CHAT, body, HEADERS)
    text = raw.decode()
    assert status == 200 and headers.get(SERVED_BY) == FALLBACK, headers
    assert text.count("data: [DONE]") == 1 and text.count('"role":"assistant"') == 1, text
    harness.wait_for(lambda: primary.stats()["cancelled_total"] >= 1, 10, "the primary's cancelled attempt")
    assert (primary.stats()["requests_total"], fb.stats()["requests_total"]) == (1, 1)
    harness.wait_for(lambda: hedges(env, "won") >= 1, 10, "hedge won")
    assert (hedges(env, "sent"), hedges(env, "won")) == (1, 1)


def test_when_the_first_attempt_answers_first_the_hedge_is_cancelled(start_envoy, pair):
    primary, fb = pair
    primary.faults(latency_ms=600, rpm=100_000_000, tpm=1_000_000_000)
    fb.faults(latency_ms=3000, rpm=100_000_000, tpm=1_000_000_000)
    env = start(start_envoy, pair, {"after_ms": 200, "max_share": 1.0}, retry_budget_percent=100)
    body = loadgen.chat_body(model="gpt-4o", max_tokens=5)
    for _ in range(4):
        status, headers, _ = harness.raw_request(env.port, "POST", CHAT, body, HEADERS)
        assert status == 200 and headers.get(SERVED_BY) == PRIMARY, headers
    harness.wait_for(lambda: hedges(env, "cancelled") >= 4 and fb.stats()["cancelled_total"] >= 4, 10,
                     "cancelled hedges")
    assert (hedges(env, "sent"), hedges(env, "won"), hedges(env, "cancelled")) == (4, 0, 4)
    assert (primary.stats()["requests_total"], fb.stats()["requests_total"]) == (4, 0)
    states = [json.loads(e["llm_capacity"]) for e in env.access_entries(4) if e.get("route") == "openai-chat"]
    assert [(s["hedged"], s["winner"]) for s in states] == [(True, "first")] * 4
    # The winner's answers feed its circuit; the reset hedges count for no one.
    assert harness.metric(env, "llmcap_upstream_attempts_total", cluster=PRIMARY, **{"class": "ok"}) == 4
    assert harness.metric(env, "llmcap_upstream_attempts_total", cluster=FALLBACK) is None
