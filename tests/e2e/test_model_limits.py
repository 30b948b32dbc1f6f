"""What a request may be before it leaves, in real Envoy: per-request turn and
cost caps, the context-window pre-check (with a larger-context fallback), and
the answer's served-by headers. The emulator's admin counts are the referee: a
refused request never reaches it.

Runtime: about 35 s.
"""

from __future__ import annotations

import copy
import json
import time

import anthropic
import openai

import harness

PRICES = {"gpt-4o": {"input": 2.5, "output": 10}}


def plugin(route: dict, **top) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["routes"]["openai-chat"].update(route)
    p.update(top)
    return p


def client(env, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="k", **kw)


def turns(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"step {i}"} for i in range(n)]


def test_a_conversation_over_max_messages_never_leaves(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"max_messages": 20}))
    c = client(env)
    ok = c.chat.completions.create(model="gpt-4o", messages=turns(20), max_tokens=5)
    assert ok.choices
    assert emulator.stats()["requests_total"] == 1
    try:
        c.chat.completions.create(model="gpt-4o", messages=turns(21), max_tokens=5)
        raise AssertionError("not refused")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.code == "too_many_turns", e
        assert e.response.headers["x-should-retry"] == "false"
        assert "21 messages" in e.message and "at most 20" in e.message
    # The SDK did not retry, and nothing reached the provider.
    assert emulator.stats()["requests_total"] == 1
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;outcome=.=rejected_too_many_turns;.;llmcap_requests_total"] == 1


def test_a_request_dearer_than_max_request_cost_never_leaves(start_envoy, emulator):
    # gpt-4o at $10 per million output tokens: 1000 output tokens reserve $0.01.
    env = start_envoy(plugin=plugin({"max_request_cost_usd": 0.005}, prices=PRICES))
    c = client(env)
    ok = c.chat.completions.create(model="gpt-4o", messages=turns(1), max_tokens=100)
    assert ok.choices
    try:
        c.chat.completions.create(model="gpt-4o", messages=turns(1), max_tokens=1000)
        raise AssertionError("not refused")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.code == "request_cost_exceeded", e
        assert e.response.headers["x-should-retry"] == "false"
        assert "at most $0.005000 per request" in e.message, e.message
    assert emulator.stats()["requests_total"] == 1
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;outcome=.=rejected_request_cost;.;llmcap_requests_total"] == 1


PRIMARY, FALLBACK = "emulator", "emulator-fallback"
FALLBACK_PRICES = {"gpt-4o": {"input": 2.5, "output": 10}, "gpt-4o-mini": {"input": 0.15, "output": 0.6}}


def pair_env(start_envoy, emulator, fallback, **plugin_kw):
    for e in (emulator, fallback):
        e.faults(rpm=100_000_000, tpm=1_000_000_000)
    chain = [PRIMARY, {"cluster": FALLBACK, "model": "gpt-4o-mini"}]
    p = plugin({"clusters": chain, "session_budget": {"header": "x-session-id", "max_spend_usd": 100}},
               prices=FALLBACK_PRICES, **plugin_kw)
    return start_envoy(plugin=p, ports={PRIMARY: emulator.api_port, FALLBACK: fallback.api_port})


def served_by(r) -> tuple[str, str, str]:
    h = r.headers
    return h.get("x-llm-capacity-served-by"), h.get("x-llm-capacity-model"), h.get("x-llm-capacity-fallback")


def ask(c: openai.OpenAI):
    # The README's example: the raw response carries the served-by headers.
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)


def test_every_answer_says_who_served_it_and_a_fallback_is_priced_as_its_model(start_envoy, emulator, fallback):
    env = pair_env(start_envoy, emulator, fallback)
    # A client cannot forge the headers, and the provider never sees them.
    c = client(env, max_retries=0, default_headers={
        "x-session-id": "s", "x-llm-capacity-fallback": "false", "x-llm-capacity-served-by": "emulator"})
    r = ask(c)
    assert r.http_response.status_code == 200
    assert served_by(r) == (PRIMARY, "gpt-4o", "false")
    seen = emulator.stats()["recent"][-1]["headers"]
    assert not [k for k in seen if k.startswith("x-llm-capacity-")], seen
    # The primary is out of quota: the router retries on the fallback, whose
    # entry serves gpt-4o-mini.
    emulator.faults(storm={"retry_after_s": 5})
    before = env.stat("wasmcustom.route=.=openai-chat;.;llmcap_spend_microdollars_total")
    r = ask(c)
    assert r.http_response.status_code == 200
    assert served_by(r) == (FALLBACK, "gpt-4o-mini", "true")
    assert [x["model"] for x in fallback.stats()["recent"]] == ["gpt-4o-mini"]
    # Spend: the fallback model's price times its usage, to the micro-dollar.
    usage = r.parse().usage
    pico = usage.prompt_tokens * 150_000 + usage.completion_tokens * 600_000
    deadline = time.time() + 5
    while env.stat("wasmcustom.route=.=openai-chat;.;llmcap_spend_microdollars_total") == before and time.time() < deadline:
        time.sleep(0.05)
    assert env.stat("wasmcustom.route=.=openai-chat;.;llmcap_spend_microdollars_total") - before == pico // 10**6
    entries = [json.loads(e["llm_capacity"]) for e in env.access_entries(2)]
    assert [e.get("served_by") for e in entries[-2:]] == [PRIMARY, FALLBACK], entries


def test_without_the_upstream_instance_the_downstream_says_who_served(start_envoy, emulator, fallback):
    env = pair_env(start_envoy, emulator, fallback, upstream_filter=False)
    r = ask(client(env, max_retries=0))
    assert served_by(r) == (PRIMARY, "gpt-4o", "false")


SMALL_MODELS = {"small-ctx": {"context_window": 1000, "max_output_tokens": 500},
                "large-ctx": {"context_window": 200000, "max_output_tokens": 8000},
                "claude-small": {"context_window": 1000, "max_output_tokens": 500}}
LONG_PROMPT = "word " * 3000


def test_a_prompt_over_the_small_models_window_goes_to_the_larger_context_entry(start_envoy, emulator, fallback):
    for e in (emulator, fallback):
        e.faults(rpm=100_000_000, tpm=1_000_000_000)
    chain = [{"cluster": PRIMARY, "model": "small-ctx"}, {"cluster": FALLBACK, "model": "large-ctx"}]
    env = start_envoy(plugin=plugin({"clusters": chain}, models=SMALL_MODELS),
                      ports={PRIMARY: emulator.api_port, FALLBACK: fallback.api_port})
    c = client(env, max_retries=0)
    r = c.chat.completions.with_raw_response.create(
        model="small-ctx", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=100)
    assert r.http_response.status_code == 200
    assert served_by(r) == (FALLBACK, "large-ctx", "true")
    assert [x["model"] for x in fallback.stats()["recent"]] == ["large-ctx"]
    assert emulator.stats()["requests_total"] == 0
    # A short prompt stays on the small model.
    r = c.chat.completions.with_raw_response.create(
        model="small-ctx", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert served_by(r) == (PRIMARY, "small-ctx", "false")
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;cluster=.=emulator;.;llmcap_context_window_skips_total"] == 1


def test_with_no_larger_entry_the_answer_is_the_providers_own_400_in_under_5_ms(start_envoy, emulator):
    env = start_envoy(plugin=plugin({}, models=SMALL_MODELS))
    c = anthropic.Anthropic(base_url=env.base_url, api_key="k")
    try:
        c.messages.create(model="claude-small", max_tokens=100,
                          messages=[{"role": "user", "content": LONG_PROMPT}])
        raise AssertionError("not refused")
    except anthropic.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body
        assert "context window of claude-small (1000 tokens)" in e.body["error"]["message"]
        assert e.response.headers["x-should-retry"] == "false"
    # OpenAI's own code on the OpenAI route.
    try:
        client(env).chat.completions.create(
            model="small-ctx", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=100)
        raise AssertionError("not refused")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e
    # Neither reached the provider, and the SDKs did not retry them.
    assert emulator.stats()["requests_total"] == 0
    entries = env.access_entries(2)
    for e in entries:
        state = json.loads(e["llm_capacity"])
        assert state["outcome"] == "rejected_context_window" and state["context_window"] == 1000, state
        assert int(e["duration_ms"]) < 5, e
    s = env.stats_json()
    assert s["wasmcustom.route=.=anthropic-messages;.;outcome=.=rejected_context_window;.;llmcap_requests_total"] == 1
    # A prompt that fits goes, and its answer says who served it.
    r = c.messages.with_raw_response.create(model="claude-small", max_tokens=100,
                                            messages=[{"role": "user", "content": "hi"}])
    assert r.http_response.status_code == 200
    assert served_by(r) == (PRIMARY, "claude-small", "false")
    assert emulator.stats()["requests_total"] == 1


def test_a_tokens_per_day_quota_admits_up_to_it_then_refuses_until_midnight(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"limits": {"tokens_per_day": 10_000}}))
    c = client(env, max_retries=0, default_headers={"x-emulator-output-tokens": "500"})
    used, biggest = 0, 0
    for _ in range(100):
        try:
            r = c.chat.completions.create(model="gpt-4o", messages=turns(1), max_tokens=500)
        except openai.RateLimitError as e:
            refused = e
            break
        used += r.usage.total_tokens
        biggest = max(biggest, r.usage.total_tokens)
    else:
        raise AssertionError("never refused")
    # Admitted while the day's count was under the quota: within 1% + one request.
    assert 10_000 <= used <= 10_100 + biggest, (used, biggest)
    assert emulator.stats()["requests_total"] * biggest >= used
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    assert refused.body["type"] == "tokens_per_day", refused.body
    now = time.time()
    to_midnight = 86_400 - now % 86_400
    retry = int(refused.response.headers["retry-after"])
    assert to_midnight - 2 <= retry <= to_midnight + 62, (retry, to_midnight)
    assert refused.response.headers["x-ratelimit-remaining-tokens-day"] == "0"
    assert 'tokens_per_day";q=10000;w=86400' in refused.response.headers["ratelimit-policy"]
    before = emulator.stats()["requests_total"]
    try:
        c.chat.completions.create(model="gpt-4o", messages=turns(1), max_tokens=500)
        raise AssertionError("admitted again before midnight")
    except openai.RateLimitError:
        pass
    assert emulator.stats()["requests_total"] == before
