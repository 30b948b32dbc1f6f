"""Queueing instead of refusing, in real Envoy: requests wait for capacity within
their budget, are admitted in order, and never wait longer than the budget."""

import concurrent.futures
import json
import time

import openai

import harness

MSG = [{"role": "user", "content": "hi"}]


def plugin_with(route_policy):
    plugin = harness.plugin_config(harness.load_envoy_config())
    plugin["routes"]["openai-chat"] = {"clusters": ["emulator"], **route_policy}
    return plugin


def timed_call(client):
    t0 = time.monotonic()
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        return 200, time.monotonic() - t0
    except openai.RateLimitError:
        return 429, time.monotonic() - t0


def test_queue_at_twice_the_limit_admits_within_budget(emulator, start_envoy):
    # 120 rpm = 2/s; 12 requests at once need about 6 s of capacity: the first
    # ones are admitted at once, the rest wait their turn, none past 5 s would fit.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 120, "burst_seconds": 0.5},
        "queue": {"max_wait_seconds": 5, "poll_ms": 10},
    }))
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-q", max_retries=0, timeout=20)
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: timed_call(client), range(10)))
    ok = [t for s, t in results if s == 200]
    refused = [t for s, t in results if s == 429]
    # 10 requests at 2/s need 4.5 s after the first: all fit in the 5 s budget.
    assert len(ok) == 10, results
    assert max(ok) <= 5.0 + 0.5, results
    # They really waited: admissions are spread over the refill time.
    assert max(ok) >= 3.5, results
    assert not refused
    assert emulator.stats()["requests_total"] == 10
    prom = env.stats_prometheus()
    assert 'llmcap_queued_total{route="openai-chat",result="admitted"}' in prom, prom[-3000:]
    assert "llmcap_queue_wait_milliseconds_bucket" in prom


def test_requests_whose_wait_does_not_fit_are_refused_at_once(emulator, start_envoy):
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 6, "burst_seconds": 10},  # 1 per 10 s
        "queue": {"max_wait_seconds": 1},
    }))
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-q", max_retries=0, timeout=20)
    # The bucket (depth 1) admits while positive: the first takes it to 0, the
    # next one a moment later (a sliver has refilled) into a debt of about 1.
    assert timed_call(client)[0] == 200
    assert timed_call(client)[0] == 200
    # Now about 10 s away: beyond the 1 s budget, so refused at once.
    status, took = timed_call(client)
    assert status == 429 and took < 0.5, (status, took)
    entries = env.access_entries(3)
    assert json.loads(entries[2]["llm_capacity"])["outcome"] == "rejected_rate_limited"


def test_sustained_twice_the_limit_waits_within_budget_or_is_refused_at_once(emulator, start_envoy):
    # 120 rpm = 2/s offered 4/s for 8 s with a 5 s budget, on 2 workers. Each
    # request either gets a place it can reach within 5 s (and waits no longer),
    # or is refused at once with a Retry-After beyond the budget.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 120, "burst_seconds": 0.5},
        "queue": {"max_wait_seconds": 5, "poll_ms": 10},
    }))
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-q", max_retries=0, timeout=20)

    def call(i):
        time.sleep(i * 0.25)
        t0 = time.monotonic()
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            return 200, time.monotonic() - t0, None
        except openai.RateLimitError as e:
            return 429, time.monotonic() - t0, int(e.response.headers["retry-after-ms"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(32)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert all(t <= 5.0 + 0.4 for _, t, _ in ok), ok
    assert all(t < 0.4 for _, t, _ in refused), refused
    # Refused only when the wait would not fit (the Retry-After carries jitter on top).
    assert all(ms > 5000 for _, _, ms in refused), refused
    # Places exist up to 5 s after the last arrival (t = 7.75 s): about 1 + 2 x 12.75.
    assert 23 <= len(ok) <= 28, (len(ok), results)
    assert refused, "twice the limit must refuse some"
    assert emulator.stats()["requests_total"] == len(ok)
