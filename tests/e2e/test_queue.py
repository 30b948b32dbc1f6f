"""Queueing instead of refusing, in real Envoy: requests wait for capacity within
their budget, are admitted in order, and never wait longer than the budget;
held in Envoy's fault filter (`queue_hold: fault_filter`, envoy/envoy.yaml) or
paused in the VM (`queue_hold: vm`)."""

import concurrent.futures
import http.client
import json
import time

import openai
import pytest

import harness

MSG = [{"role": "user", "content": "hi"}]


HOLDS = pytest.mark.parametrize("hold", ["fault_filter", "vm"])


def plugin_with(route_policy, hold):
    plugin = harness.plugin_config(harness.load_envoy_config())
    plugin["queue_hold"] = hold
    plugin["routes"]["openai-chat"] = {"clusters": ["emulator"], **route_policy}
    return plugin


def held_in_fault_filter(env, hold, n):
    """The fault filter held exactly the n requests that waited (none with `vm`)."""
    assert env.stat("http.llm_egress.fault.delays_injected") == (n if hold == "fault_filter" else 0)


BODY = json.dumps({"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer k-q"}


def raw_call(env):
    t0 = time.monotonic()
    s, _, _ = harness.raw_request(env.port, "POST", "/v1/chat/completions", BODY, HEADERS, timeout=20)
    return s, time.monotonic() - t0


def timed_call(client):
    t0 = time.monotonic()
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        return 200, time.monotonic() - t0
    except openai.RateLimitError:
        return 429, time.monotonic() - t0


@HOLDS
def test_queue_at_twice_the_limit_admits_within_budget(emulator, start_envoy, hold):
    # 120 rpm = 2/s; 12 requests at once need about 6 s of capacity: the first
    # ones are admitted at once, the rest wait their turn, none past 5 s would fit.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 120, "burst_seconds": 0.5},
        "queue": {"max_wait_seconds": 5, "poll_ms": 10},
    }, hold))
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
    queued = harness.metric(env, "llmcap_queued_total", route="openai-chat", result="admitted")
    assert queued and queued >= 7, prom[-3000:]
    assert "llmcap_queue_wait_milliseconds_bucket" in prom
    held_in_fault_filter(env, hold, queued)
    # Histograms reach the admin endpoint at the stats flush (5 s).
    harness.wait_for(lambda: harness.metric(env, "llmcap_queue_wait_milliseconds_count", route="openai-chat")
                     == queued, 15, "a queue wait per queued request")


@HOLDS
def test_requests_whose_wait_does_not_fit_are_refused_at_once(emulator, start_envoy, hold):
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 6, "burst_seconds": 10},  # 1 per 10 s
        "queue": {"max_wait_seconds": 1},
    }, hold))
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


@HOLDS
def test_sustained_twice_the_limit_waits_within_budget_or_is_refused_at_once(emulator, start_envoy, hold):
    # 120 rpm = 2/s offered 4/s for 8 s with a 5 s budget, on 2 workers. Each
    # request either gets a place it can reach within 5 s (and waits no longer),
    # or is refused at once with a Retry-After beyond the budget.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 120, "burst_seconds": 0.5},
        "queue": {"max_wait_seconds": 5, "poll_ms": 10},
    }, hold))
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
    queued = harness.metric(env, "llmcap_queued_total", route="openai-chat", result="admitted")
    held_in_fault_filter(env, hold, queued)


def test_client_leaving_during_the_fault_filter_hold_gives_its_place_and_slot_back(emulator, start_envoy):
    # 30 rpm with 2 s of burst (one request deep) and one request in flight
    # at most. A1 and A2 go at once (A2 into a debt of one); B is charged its
    # place and the in-flight slot and held by the fault filter for about 2 s;
    # its client leaves after 0.3 s.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 30, "burst_seconds": 2, "max_in_flight": 1},
        "queue": {"max_wait_seconds": 5},
    }, "fault_filter"))
    for n in (1, 2):
        assert raw_call(env)[0] == 200
        harness.wait_for(lambda: harness.metric(env, "llmcap_requests_total", route="openai-chat",
                                                outcome="admitted") == n, 5, "A finished")
    c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=0.3)
    c.request("POST", "/v1/chat/completions", body=BODY, headers=HEADERS)
    with pytest.raises(TimeoutError):
        c.getresponse()
    c.close()
    harness.wait_for(lambda: harness.metric(env, "llmcap_queued_total", route="openai-chat", result="abandoned") == 1,
                     5, "the abandoned request counted")
    assert env.stat("http.llm_egress.fault.delays_injected") == 1
    # Its in-flight slot is free (kept, it would refuse C with `in_flight`
    # for the 600 s lease), and its place too: C waits what is left of the
    # refill, not a second place behind B's.
    s, took = raw_call(env)
    assert s == 200 and took < 2.5, (s, took)
    assert emulator.stats()["requests_total"] == 3, "the abandoned request reached the provider"
    assert harness.metric(env, "llmcap_queued_total", route="openai-chat", result="abandoned") == 1
    assert harness.metric(env, "llmcap_requests_total", route="openai-chat", outcome="admitted") == 3
    assert env.stat("http.llm_egress.fault.active_faults") == 0
    line = env.access_entries(4)[2]
    assert line["status"] == "0" or line["status"] == 0, line


@HOLDS
def test_queue_size_bounds_requests_held_per_worker(emulator, start_envoy, hold):
    # One worker, at most 2 waiting. 20 rpm with 3 s of burst: two go at
    # once (the second into a debt of one), each later one waits 3 s more (at
    # 1 s apart a CI stall let the first waiting one leave before the overflow
    # came). The provider takes 4 s, so requests that left the queue are still
    # in flight when the next one comes.
    env = start_envoy(plugin=plugin_with({
        "limits": {"requests_per_minute": 20, "burst_seconds": 3},
        "queue": {"max_wait_seconds": 10, "max_size": 2},
    }, hold), concurrency=1)
    emulator.faults(latency_ms=4000)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        first = [pool.submit(raw_call, env) for _ in range(2)]
        harness.wait_for(lambda: env.stat("cluster.emulator.upstream_rq_total") == 2, 5, "the first two at the provider")
        waiting = [pool.submit(raw_call, env) for _ in range(2)]
        harness.wait_for(lambda: env.stat("http.llm_egress.downstream_rq_active") == 4, 5, "two waiting")
        # The queue is full: refused at once, whatever the wait would be.
        over = [raw_call(env) for _ in range(2)]
        assert [s for s, _ in over] == [429, 429] and all(t < 0.5 for _, t in over), over
        # Once the two have left the queue (still at the provider), their
        # places are free again: the next one waits its turn, not refused.
        harness.wait_for(lambda: env.stat("cluster.emulator.upstream_rq_total") == 4, 10, "the two waiting ones sent")
        late = raw_call(env)
        results = [f.result() for f in first + waiting]
    assert [s for s, _ in results] == [200] * 4, results
    assert late[0] == 200, late
    held_in_fault_filter(env, hold, 3)
