"""No attempt reaches a rate-limited cluster before its wait (issue 16), in real Envoy.

Whatever a 429 says or does not say (a named wait, reset headers only, nothing at
all), the cluster cools down for the wait it implies, and no attempt of any
request, the router's own retries included, reaches it before that wait is over,
except one probe after it. The emulator's admin arrivals (with their times) are
the referee; every answer a client gets names its wait in `retry-after`.

Each case sends 25 requests over 5 s (some concurrent: a router retry may wait
inside Envoy) to a route whose cluster answers every request with the fault.
Runtime: about 1.5 minutes.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import math
import time

import pytest

import harness

PRIMARY, FALLBACK = "emulator", "emulator-fallback"
DEFAULT_COOLDOWN_S = 2
# Cool-downs start when the filter reads the answer, after the emulator stamped
# its arrival, so gaps are only ever longer; this covers clock granularity.
SLACK_MS = 30

OPENAI = ("/v1/chat/completions", {"authorization": "Bearer k"},
          {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
ANTHROPIC = ("/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01"},
             {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
GEMINI = ("/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "k"},
          {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})


def plugin(chain=None) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["clusters"][PRIMARY]["circuit"]["default_cooldown_seconds"] = DEFAULT_COOLDOWN_S
    p["clusters"][PRIMARY]["circuit"]["consecutive_failures"] = 1000  # 503 case: waits, not the circuit
    p["clusters"][PRIMARY]["circuit"]["min_requests"] = 1000
    p["routes"]["openai-chat"]["clusters"] = chain or [PRIMARY]
    return p


def send_all(env, api, n=25, span_s=5.0) -> list[tuple[int, dict, float]]:
    """n requests spread evenly over span_s; (status, headers, answered-at) each."""
    path, headers, body = api
    data = json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **headers}
    t0 = time.monotonic()

    def one(i):
        time.sleep(max(0.0, t0 + i * span_s / n - time.monotonic()))
        status, h, _ = harness.raw_request(env.port, "POST", path, data, hdrs, timeout=30)
        return status, h, time.time() * 1000

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def arrival_times(emu) -> list[int]:
    return sorted(r["received_ms"] for r in emu.stats()["recent"])


def assert_spaced(times: list[int], wait_ms: int):
    """After the first arrival (sent before any answer came back), each arrival
    comes at least `wait_ms` after the one before it: one probe per cool-down."""
    assert times, "the cluster got no request at all"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= wait_ms - SLACK_MS for g in gaps), (wait_ms, gaps)
    span = times[-1] - times[0]
    assert len(times) <= span // (wait_ms - SLACK_MS) + 1, (wait_ms, times)


def assert_retry_after(answers, status: int, longest_wait_s: float):
    """Every client answer is `status` and names a wait no longer than the
    longest cool-down (plus the local replies' 10% spread, rounded up), at least 1 s."""
    statuses = [s for s, _, _ in answers]
    assert set(statuses) == {status}, statuses
    for _, h, _ in answers:
        assert "retry-after" in h, h
        assert 1 <= int(h["retry-after"]) <= math.ceil(longest_wait_s * 1.1), h


CASES = [
    # id, api, faults, the wait implied (s), the longest it can be (s): the
    # emulator's RFC 3339 resets are rounded up to a whole second, then S on.
    ("openai-bare-429", OPENAI, {"storm": {"retry_after_s": 9, "headers": "none"}}, DEFAULT_COOLDOWN_S, 2),
    ("openai-resets-only", OPENAI, {"storm": {"retry_after_s": 3, "headers": "resets"}}, 3, 3),
    ("anthropic-bare-429", ANTHROPIC, {"storm": {"retry_after_s": 9, "headers": "none"}}, DEFAULT_COOLDOWN_S, 2),
    ("anthropic-resets-only", ANTHROPIC, {"storm": {"retry_after_s": 3, "headers": "resets"}}, 3, 4),
    ("gemini-bare-429", GEMINI, {"storm": {"retry_after_s": 9, "headers": "none"}}, DEFAULT_COOLDOWN_S, 2),
    ("openai-named-wait", OPENAI, {"storm": {"retry_after_s": 3}}, 3, 3),
]


@pytest.mark.parametrize("api,faults,wait_s,longest_s", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_single_cluster_route_never_jumps_the_wait(start_envoy, emulator, api, faults, wait_s, longest_s):
    env = start_envoy(plugin=plugin())
    emulator.faults(**faults)
    answers = send_all(env, api)
    assert_spaced(arrival_times(emulator), wait_s * 1000)
    assert_retry_after(answers, 429, longest_s)


def test_503_naming_a_wait_is_honoured_too(start_envoy, emulator):
    env = start_envoy(plugin=plugin())
    emulator.faults(error_rate=1.0, error_status=[503], response_headers={"retry-after": "3"})
    answers = send_all(env, OPENAI)
    assert_spaced(arrival_times(emulator), 3000)
    # The provider's own 503s, and the local answers while cooling down (429).
    assert {s for s, _, _ in answers} <= {429, 503}, answers
    assert all("retry-after" in h for _, h, _ in answers)


def test_chain_bare_429_cools_the_primary_and_fails_over(start_envoy, emulator, fallback):
    env = start_envoy(plugin=plugin(chain=[PRIMARY, FALLBACK]),
                      ports={PRIMARY: emulator.api_port, FALLBACK: fallback.api_port})
    emulator.faults(storm={"retry_after_s": 9, "headers": "none"})
    answers = send_all(env, OPENAI)
    assert_spaced(arrival_times(emulator), DEFAULT_COOLDOWN_S * 1000)
    assert [s for s, _, _ in answers] == [200] * len(answers)
    assert fallback.stats()["requests_total"] == len(answers)


def test_a_wait_beyond_the_routers_reach_is_not_retried(start_envoy, emulator):
    """A wait longer than rate_limited_retry_back_off's max_interval (30 s): the
    router would fall back to its short back-off, so no retry is made: the client
    gets the provider's 429 at once, with its wait."""
    env = start_envoy(plugin=plugin())
    emulator.faults(storm={"retry_after_s": 40})
    t0 = time.monotonic()
    status, h, _ = harness.raw_request(env.port, "POST", OPENAI[0], json.dumps(OPENAI[2]).encode(),
                                       {"content-type": "application/json", **OPENAI[1]}, timeout=30)
    took = time.monotonic() - t0
    assert status == 429 and h["retry-after"] == "40", (status, h)
    assert h.get("x-envoy-ratelimited") == "true", h
    assert took < 1.0, took
    assert len(arrival_times(emulator)) == 1


def test_the_clients_deadline_bounds_the_routers_wait(start_envoy, emulator):
    """A client with 2.5 s left cannot absorb a 3 s wait: no retry, an answer now."""
    env = start_envoy(plugin=plugin())
    emulator.faults(storm={"retry_after_s": 3})
    t0 = time.monotonic()
    status, h, _ = harness.raw_request(env.port, "POST", OPENAI[0], json.dumps(OPENAI[2]).encode(),
                                       {"content-type": "application/json", "x-stainless-timeout": "2.5",
                                        **OPENAI[1]}, timeout=30)
    assert status == 429 and h["retry-after"] == "3", (status, h)
    assert time.monotonic() - t0 < 1.0
    assert len(arrival_times(emulator)) == 1


def test_a_single_cluster_retry_waits_the_cool_down_inside_envoy(start_envoy, emulator):
    """With time to spare, the router waits the 3 s (then up to half as long
    again, its jitter) and its retry, the probe after the cool-down, reaches the
    provider again; the client is held inside Envoy meanwhile."""
    env = start_envoy(plugin=plugin())
    emulator.faults(storm={"retry_after_s": 3})
    t0 = time.monotonic()
    status, h, _ = harness.raw_request(env.port, "POST", OPENAI[0], json.dumps(OPENAI[2]).encode(),
                                       {"content-type": "application/json", **OPENAI[1]}, timeout=30)
    took = time.monotonic() - t0
    times = arrival_times(emulator)
    assert status == 429 and len(times) == 2, (status, times)
    assert 3000 - SLACK_MS <= times[1] - times[0] <= 4600, times
    assert 3.0 <= took < 5.0, took


def test_retries_that_wake_together_send_one_probe(start_envoy, emulator):
    """Four requests reach the provider together (it answers after 100 ms) and
    all get a bare 429; their four router retries wake after the cool-down, but
    only one (the probe) is sent: the others are answered inside Envoy by the
    retry gate, with the wait."""
    env = start_envoy(plugin=plugin())
    emulator.faults(latency_ms=100, storm={"retry_after_s": 9, "headers": "none"})
    path, headers, body = OPENAI
    data = json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **headers}

    def one(_):
        t0 = time.monotonic()
        status, h, _ = harness.raw_request(env.port, "POST", path, data, hdrs, timeout=30)
        return status, h, time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    times = arrival_times(emulator)
    first = [t for t in times if t - times[0] < 500]
    later = [t for t in times if t - times[0] >= 500]
    assert len(first) == 4 and len(later) == 1, times
    assert later[0] - first[-1] >= DEFAULT_COOLDOWN_S * 1000 - SLACK_MS, times
    assert [s for s, _, _ in answers] == [429] * 4, answers
    assert all("retry-after" in h for _, h, _ in answers), answers
    # The clients whose retry was made waited the cool-down inside Envoy (Envoy's
    # retry circuit breaker, max_retries 3 per cluster by default, may refuse one
    # retry: that client gets the provider's 429 at once, with its wait). Of the
    # retries, one was sent (the probe); the others were answered by the gate.
    waited = [h for _, h, took in answers if took >= DEFAULT_COOLDOWN_S]
    assert len(waited) >= 3, answers
    gated = [h for h in waited if h.get("x-llm-capacity") == "upstream_rate_limited"]
    assert len(gated) == len(waited) - 1, answers


def test_a_5xx_without_a_wait_is_retried_after_envoys_back_off(start_envoy, emulator):
    """No wait named: the router's own fully jittered back-off (envoy.yaml:
    base_interval 50 ms, so the first retry within [0, 50 ms)), same cluster."""
    env = start_envoy(plugin=plugin())
    emulator.faults(error_rate=1.0, error_status=[503])
    path, headers, body = OPENAI
    data = json.dumps(body).encode()
    for _ in range(20):
        status, h, _ = harness.raw_request(env.port, "POST", path, data,
                                           {"content-type": "application/json", **headers})
        assert status == 503 and "x-llm-capacity-retry-after" not in h, (status, h)
    recent = sorted(emulator.stats()["recent"], key=lambda r: r["received_ms"])
    assert len(recent) == 40, len(recent)
    gaps = [b["received_ms"] - a["received_ms"] for a, b in zip(recent[::2], recent[1::2])]
    assert all(0 <= g < 50 + SLACK_MS for g in gaps), gaps
    assert [r["headers"].get("x-envoy-attempt-count") for r in recent[1::2]] == ["2"] * 20
