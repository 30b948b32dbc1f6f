"""The exact response cache, request collapsing and idempotency keys in real
Envoy, driven by the official SDKs. The emulator's request count is the
referee: a hit, a collapsed request or an idempotent replay never reaches it.
Every emulator answer has its own id, so an answer equal byte for byte to an
earlier one came from the cache.

Runtime: about 40 s.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import time

import anthropic
import openai

import harness

PRICES = {"gpt-4o": {"input": 2.5, "output": 10}}
TENANTS = {"header": "x-tenant", "trust_header": True, "requests_per_minute": 100000}


def plugin(cache: dict, **route) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["prices"] = PRICES
    for name in ("openai-chat", "anthropic-messages"):
        r = p["routes"][name]
        r["clusters"] = ["emulator"]
        r["cache"] = cache
        r["tenant_limits"] = TENANTS
        r.update(route)
    return p


def oai(env, key="sk-a", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key=key, max_retries=0, **kw)


def ant(env, key="sk-ant-a") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=env.base_url, api_key=key, max_retries=0)


def ask(c: openai.OpenAI, content="Name three colours.", headers=None, **kw):
    """A deterministic chat request; the raw answer (body bytes, headers)."""
    args = {"model": "gpt-4o", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": content}], **kw}
    r = c.chat.completions.with_raw_response.create(extra_headers=headers or {}, **args)
    return r.http_response


def seen(emulator) -> int:
    return emulator.stats()["requests_total"]


def stat(env, name: str) -> int:
    return env.stat("wasmcustom." + name)


def test_a_repeated_request_is_answered_from_the_cache_byte_for_byte_and_misses_by_field_key_and_tenant(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"ttl_seconds": 60}))
    a = oai(env)
    first = ask(a)
    assert first.status_code == 200 and first.headers["x-llm-capacity-cache"] == "miss"
    assert seen(emulator) == 1
    time.sleep(1.1)
    hit = ask(a)
    assert hit.headers["x-llm-capacity-cache"] == "hit"
    assert hit.content == first.content, "byte for byte"
    assert int(hit.headers["age"]) >= 1
    assert seen(emulator) == 1, "a hit never reaches the provider"
    # Key order and whitespace do not matter: the same request, spelled otherwise.
    body = json.loads(first.request.content)
    spelled = json.dumps(dict(reversed(list(body.items()))), indent=3).encode()
    status, headers, raw = harness.raw_request(env.port, "POST", "/v1/chat/completions", spelled,
                                               {"authorization": "Bearer sk-a", "content-type": "application/json"})
    assert status == 200 and headers["x-llm-capacity-cache"] == "hit" and raw == first.content
    # Each answer-changing field, another API key and another tenant miss.
    misses = [
        lambda: ask(a, content="Name four colours."),
        lambda: ask(a, max_tokens=17),
        lambda: ask(a, seed=7),
        lambda: ask(a, model="gpt-4o-mini"),
        lambda: ask(a, response_format={"type": "json_object"}),
        lambda: ask(a, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        lambda: ask(oai(env, key="sk-b")),
        lambda: ask(a, headers={"x-tenant": "t2"}),
    ]
    for i, m in enumerate(misses):
        r = m()
        assert r.headers["x-llm-capacity-cache"] == "miss", i
        assert seen(emulator) == 2 + i, i
    # A non-deterministic request is not cached.
    warm = ask(a, temperature=0.7)
    assert warm.headers["x-llm-capacity-cache"] == "bypass"
    assert ask(a, temperature=0.7).headers["x-llm-capacity-cache"] == "bypass"
    n = seen(emulator)
    assert n == 2 + len(misses) + 1
    # Metrics and the access log name what the cache did.
    assert stat(env, "route=.=openai-chat;.;result=.=hit;.;llmcap_cache_lookups_total") == 2
    assert stat(env, "route=.=openai-chat;.;outcome=.=cached;.;llmcap_requests_total") == 2
    assert stat(env, "route=.=openai-chat;.;source=.=cached;.;llmcap_reconciliations_total") == 2
    assert stat(env, "route=.=openai-chat;.;kind=.=cache;.;llmcap_cache_stores_total") == 1 + len(misses)
    saved = stat(env, "route=.=openai-chat;.;kind=.=output;.;llmcap_cache_saved_tokens_total")
    assert saved == 2 * json.loads(first.content)["usage"]["completion_tokens"]
    assert stat(env, "route=.=openai-chat;.;llmcap_cache_saved_microdollars_total") > 0
    states = [json.loads(e["llm_capacity"]) for e in env.access_entries(n + 2)]
    hits = [s for s in states if s.get("cache") == "hit"]
    assert len(hits) == 2 and all(s["usage_source"] == "cached" for s in hits), hits
    assert hits[0]["gen_ai.usage.output_tokens"] == json.loads(first.content)["usage"]["completion_tokens"]


def test_no_cache_no_store_and_ttl_expiry(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"ttl_seconds": 2}))
    a = oai(env)
    assert ask(a, headers={"cache-control": "no-store"}).headers["x-llm-capacity-cache"] == "miss"
    assert ask(a).headers["x-llm-capacity-cache"] == "miss", "no-store: nothing was stored"
    assert seen(emulator) == 2
    r = ask(a, headers={"cache-control": "no-cache"})
    assert r.headers["x-llm-capacity-cache"] == "bypass" and seen(emulator) == 3
    assert ask(a).headers["x-llm-capacity-cache"] == "hit" and seen(emulator) == 3
    time.sleep(2.2)
    assert ask(a).headers["x-llm-capacity-cache"] == "miss", "expired"
    assert seen(emulator) == 4


def test_opt_in_routes_cache_only_requests_that_ask(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"when": "opt_in"}))
    a = oai(env)
    assert ask(a).headers["x-llm-capacity-cache"] == "bypass"
    allow = {"x-llm-capacity-cache": "allow"}
    ask(a, temperature=1, headers=allow)
    assert ask(a, temperature=1, headers=allow).headers["x-llm-capacity-cache"] == "hit"
    assert seen(emulator) == 2


def test_streams_are_replayed_as_the_same_event_stream_for_openai_and_anthropic(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}))
    a = oai(env)

    def oai_stream():
        text, usage = [], None
        with a.chat.completions.create(model="gpt-4o", temperature=0, max_tokens=24, stream=True,
                                       stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": "Count to five."}]) as s:
            for ch in s:
                if ch.choices and ch.choices[0].delta.content:
                    text.append(ch.choices[0].delta.content)
                if ch.usage:
                    usage = (ch.usage.prompt_tokens, ch.usage.completion_tokens)
            headers = s.response.headers
        return "".join(text), usage, headers["x-llm-capacity-cache"]

    t1, u1, c1 = oai_stream()
    t2, u2, c2 = oai_stream()
    assert (c1, c2) == ("miss", "hit")
    assert t1 and (t2, u2) == (t1, u1) and u1[1] > 0
    assert seen(emulator) == 1

    b = ant(env)

    def ant_stream():
        with b.messages.stream(model="claude-sonnet-4-6", max_tokens=24, extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Count to five."}]) as s:
            text = "".join(s.text_stream)
            m = s.get_final_message()
            return text, (m.usage.input_tokens, m.usage.output_tokens), m.stop_reason, \
                s.response.headers["x-llm-capacity-cache"]

    r1 = ant_stream()
    r2 = ant_stream()
    assert (r1[3], r2[3]) == ("miss", "hit")
    assert r1[0] and r2[:3] == r1[:3] and r1[1][1] > 0
    # A JSON Anthropic answer is replayed byte for byte too.
    j1 = b.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=8, extra_body={"temperature": 0},
                                             messages=[{"role": "user", "content": "Hi"}]).http_response
    j2 = b.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=8, extra_body={"temperature": 0},
                                             messages=[{"role": "user", "content": "Hi"}]).http_response
    assert j2.headers["x-llm-capacity-cache"] == "hit" and j2.content == j1.content
    assert seen(emulator) == 3
    # Another Anthropic key misses.
    with ant(env, key="sk-ant-b").messages.stream(model="claude-sonnet-4-6", max_tokens=24, extra_body={"temperature": 0},
                                                 messages=[{"role": "user", "content": "Count to five."}]) as s:
        s.get_final_message()
        assert s.response.headers["x-llm-capacity-cache"] == "miss"
    assert seen(emulator) == 4


def test_a_cut_stream_is_never_stored(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}))
    a = oai(env)
    emulator.faults(reset_after_events=2)
    try:
        for ch in a.chat.completions.create(model="gpt-4o", temperature=0, max_tokens=24, stream=True,
                                            messages=[{"role": "user", "content": "Count."}]):
            pass
    except (openai.APIError, Exception):  # noqa: BLE001 - the SDK's error for a cut stream varies
        pass
    emulator.faults(reset_after_events=None)
    with a.chat.completions.create(model="gpt-4o", temperature=0, max_tokens=24, stream=True,
                                   messages=[{"role": "user", "content": "Count."}]) as s:
        list(s)
        assert s.response.headers["x-llm-capacity-cache"] == "miss"
    assert seen(emulator) == 2


def test_fifty_identical_concurrent_requests_reach_the_provider_once(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}))
    emulator.faults(latency_ms=1500)
    a = oai(env, timeout=30)

    def one(_):
        r = ask(a, content="One answer for all of us.")
        return r.status_code, r.headers["x-llm-capacity-cache"], r.content

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert seen(emulator) == 1, results[:3]
    assert {s for s, _, _ in results} == {200}
    assert len({body for _, _, body in results}) == 1, "every caller got the one answer"
    caches = [c for _, c, _ in results]
    assert caches.count("miss") == 1 and caches.count("hit") == 49, caches
    collapsed = stat(env, "route=.=openai-chat;.;result=.=hit;.;llmcap_cache_collapsed_total")
    assert collapsed >= 40, collapsed  # the rest arrived after the answer was stored


def test_when_the_first_fails_each_waiter_goes_on_its_own(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}))
    emulator.faults(latency_ms=1000, error_rate=1.0, error_status=[400])
    a = oai(env, timeout=30)

    def one(_):
        try:
            return ask(a, content="Doomed.").status_code
        except openai.APIStatusError as e:
            return e.status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(one, 0)]
        time.sleep(0.3)
        futs += [pool.submit(one, i) for i in range(3)]
        statuses = [f.result() for f in futs]
    assert statuses == [400] * 4
    assert seen(emulator) == 4, "each waiter went on its own"
    assert stat(env, "route=.=openai-chat;.;result=.=alone;.;llmcap_cache_collapsed_total") == 3


def test_idempotency_keys_replay_refuse_another_body_and_a_key_in_flight(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"idempotency_ttl_seconds": 60}))
    a = oai(env)
    key = {"Idempotency-Key": "order-4711"}
    # Any temperature: an idempotent request is stored under its key.
    first = ask(a, temperature=1, headers=key)
    replay = ask(a, temperature=1, headers=key)
    assert replay.headers["x-llm-capacity-idempotent-replay"] == "true"
    assert replay.content == first.content
    assert seen(emulator) == 1
    try:
        ask(a, temperature=1, content="Something else.", headers=key)
        raise AssertionError("not refused")
    except openai.UnprocessableEntityError as e:
        assert e.code == "idempotency_key_reused", e
    # Another caller's identical key is its own.
    ask(oai(env, key="sk-b"), temperature=1, headers=key)
    assert seen(emulator) == 2
    # A repeat while the first is in flight: 409, and the SDK may retry it.
    emulator.faults(latency_ms=1500)
    busy = {"Idempotency-Key": "order-4712"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        f1 = pool.submit(ask, a, "Slow one.", busy, temperature=1)
        time.sleep(0.5)
        try:
            ask(a, "Slow one.", busy, temperature=1)
            raise AssertionError("not refused")
        except openai.ConflictError as e:
            assert e.code == "idempotency_key_in_use", e
            assert e.response.headers["retry-after"] == "1"
        f1.result()
    assert ask(a, "Slow one.", busy, temperature=1).headers["x-llm-capacity-idempotent-replay"] == "true"
    assert seen(emulator) == 3
    for result, n in [("first", 3), ("replay", 2), ("reused", 1), ("in_use", 1)]:
        assert stat(env, f"route=.=openai-chat;.;result=.={result};.;llmcap_idempotency_total") == n, result


def test_the_routers_retry_after_a_reset_never_sends_an_idempotent_request_twice(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}))
    a = oai(env)
    # Without a key the router retries the reset (as before): the provider sees both.
    emulator.faults(drop_requests=1)
    assert ask(a, temperature=1).status_code == 200
    assert seen(emulator) == 2
    emulator.reset()
    # With a key the request may have been answered: the retry is not sent.
    emulator.faults(drop_requests=1)
    try:
        ask(a, temperature=1, headers={"Idempotency-Key": "pay-1"})
        raise AssertionError("retried")
    except openai.APIStatusError as e:
        assert e.status_code == 502 and e.code == "idempotent_retry_refused", e
        assert e.response.headers["x-should-retry"] == "false"
    assert seen(emulator) == 1, "one upstream call"
    assert stat(env, "route=.=openai-chat;.;result=.=retry_refused;.;llmcap_idempotency_total") == 1
