"""Failover across providers in real Envoy: a chain whose fallback speaks
another API than the client, translated per attempt by the upstream instance.

Two emulators play the primary and the fallback; each speaks every API, so a
cluster's `provider` is what the filter believes, and the fallback's admin
counts (path, model, tokens) are the referee: the request reached it in its
own dialect, and the client's usage is the fallback's own count. The official
SDKs parse every answer and stream.

Runtime: about 35 s (three Envoy starts).
"""

from __future__ import annotations

import copy
import json
import time

import anthropic
import openai
import pytest

import harness

PRIMARY, FALLBACK = "emulator", "emulator-fallback"
CLAUDE, GPT = "claude-sonnet-4-6", "gpt-4o"
TOOLS_OA = [{"type": "function", "function": {
    "name": "lookup", "description": "Looks a word up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
TOOLS_AN = [{"name": "lookup", "description": "Looks a word up.",
             "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]
CALL = {"x-emulator-tool-call": "lookup"}


def envoy_config(client: str) -> dict:
    cfg = harness.load_envoy_config()
    if client == "anthropic":
        # The Anthropic route gets the chat route's matcher, retries and timeout.
        routes = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        chat = next(r for r in routes if r["name"] == "openai-chat")
        msgs = next(r for r in routes if r["name"] == "anthropic-messages")
        msgs["route"] = copy.deepcopy(chat["route"])
    return cfg


def plugin(client: str) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["clusters"][PRIMARY]["circuit"].update({"consecutive_failures": 2, "open_seconds": 60})
    if client == "openai":
        p["clusters"][PRIMARY]["provider"] = "openai"
        p["clusters"][FALLBACK] = {"provider": "anthropic"}
        p["routes"]["openai-chat"].update(
            {"api": "openai_chat", "clusters": [PRIMARY, {"cluster": FALLBACK, "model": CLAUDE}]})
    else:
        p["clusters"][PRIMARY]["provider"] = "anthropic"
        p["clusters"][FALLBACK] = {"provider": "openai"}
        p["routes"]["openai-chat"]["clusters"] = [FALLBACK]  # not under test here
        p["routes"]["anthropic-messages"].update(
            {"api": "anthropic_messages", "clusters": [PRIMARY, {"cluster": FALLBACK, "model": GPT}]})
    p["prices"] = {CLAUDE: {"input": 3, "output": 15}, GPT: {"input": 2.5, "output": 10}, "*": {"input": 100, "output": 100}}
    return p


def start(start_envoy, pair, client):
    primary, fb = pair
    return start_envoy(base=envoy_config(client), plugin=plugin(client),
                       ports={PRIMARY: primary.api_port, FALLBACK: fb.api_port})


def last(emu) -> dict:
    return sorted(emu.stats()["recent"], key=lambda r: r["received_ms"])[-1]


def usage_of(emu) -> tuple[int, int]:
    """The fallback emulator's own counts for its last answer."""
    rec = last(emu)
    return rec["prompt_tokens"], rec["completion_tokens"]


def arrivals(stream) -> tuple[list, list[float]]:
    """The stream's items and when each arrived (monotonic seconds)."""
    items, at = [], []
    for item in stream:
        items.append(item)
        at.append(time.monotonic())
    return items, at


def states(env, n):
    return [json.loads(e["llm_capacity"]) for e in env.access_entries(n)]


def test_openai_client_fails_over_to_anthropic(start_envoy, pair):
    primary, fb = pair
    primary.faults(outage=True)
    env = start(start_envoy, pair, "openai")
    c = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k", max_retries=0)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]

    # Not streamed (the first attempts meet the outage and are retried on the fallback).
    raw = c.chat.completions.with_raw_response.create(model=GPT, messages=msgs, max_tokens=20, temperature=0.5)
    comp = raw.parse()
    rec = last(fb)
    assert (rec["path"], rec["model"], rec["status"]) == ("/v1/messages", CLAUDE, 200), rec
    assert raw.headers["x-llm-capacity-served-by"] == FALLBACK
    assert raw.headers["x-llm-capacity-translated"] == "openai_to_anthropic"
    assert "content-length" not in raw.headers or int(raw.headers["content-length"]) == len(raw.http_response.content)
    assert comp.object == "chat.completion" and comp.model == CLAUDE
    assert comp.choices[0].finish_reason == "stop"
    assert comp.choices[0].message.content.startswith("alpha beta gamma")
    assert len(comp.choices[0].message.content.split()) == 12
    assert (comp.usage.prompt_tokens, comp.usage.completion_tokens) == (rec["prompt_tokens"], rec["completion_tokens"])
    assert comp.usage.completion_tokens == 12

    # Streamed, with the usage chunk the route asks for.
    stream = c.chat.completions.create(model=GPT, messages=msgs, max_tokens=5, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    rec = last(fb)
    assert rec["stream"] and rec["path"] == "/v1/messages"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "alpha beta gamma delta apple", text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == usage_of(fb) == (rec["prompt_tokens"], 5)

    # A tool-call round trip, not streamed.
    user = {"role": "user", "content": "Look up alpha."}
    r1 = c.chat.completions.create(model=GPT, messages=[user], tools=TOOLS_OA, max_tokens=3, extra_headers=CALL)
    call = r1.choices[0].message.tool_calls[0]
    assert r1.choices[0].finish_reason == "tool_calls"
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "lookup", {"q": "alpha beta gamma"})
    assert (r1.usage.prompt_tokens, r1.usage.completion_tokens) == usage_of(fb)
    assert r1.usage.completion_tokens == 3
    r2 = c.chat.completions.create(model=GPT, tools=TOOLS_OA, max_tokens=2, extra_headers=CALL, messages=[
        user, r1.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "a Greek letter"}])
    # The emulator answers text once the last turn is the tool's result: it got a tool_result.
    assert r2.choices[0].message.content == "alpha beta" and r2.choices[0].finish_reason == "length"
    assert (r2.usage.prompt_tokens, r2.usage.completion_tokens) == usage_of(fb)

    # The same call streamed: the arguments arrive in pieces.
    stream = c.chat.completions.create(model=GPT, messages=[user], tools=TOOLS_OA, max_tokens=3,
                                       stream=True, stream_options={"include_usage": True}, extra_headers=CALL)
    chunks = list(stream)
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "lookup"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"q": "alpha beta gamma"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == usage_of(fb)
    assert chunks[-1].usage.completion_tokens == 3

    # Translated incrementally, not buffered: with 300 ms between the fallback's
    # tokens, the first translated chunk reaches the client long before the last.
    fb.faults(inter_token_ms=300)
    chunks, at = arrivals(c.chat.completions.create(
        model=GPT, messages=msgs, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    fb.faults(inter_token_ms=0)
    first = next(i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].delta.content)
    assert at[-1] - at[first] >= 1.0, (at[-1] - at[first], len(chunks))
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == usage_of(fb)

    # A provider stream with malformed events (a cut object, bytes that are not
    # UTF-8, a line without a field, a 300 KiB line): they are skipped, the SDK
    # parses the rest, the usage is still the fallback's.
    fb.faults(broken_sse=True)
    chunks = list(c.chat.completions.create(model=GPT, messages=msgs, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    fb.faults(broken_sse=False)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "alpha beta gamma delta"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == usage_of(fb)

    # Accounting: settled at the fallback's usage, priced at its model; translated in the log.
    entries = states(env, 7)
    for s in entries[-7:]:
        assert s["translated"] == "openai_to_anthropic" and s["served_by"] == FALLBACK, s
        assert s["usage_source"] == "provider", s
    n = sum(v for k, v in env.stats_json().items()
            if "direction=.=openai_to_anthropic;.;llmcap_translated_attempts_total" in k)
    assert n >= 7, n
    prom = [l for l in env.stats_prometheus().splitlines() if l.startswith("llmcap_translated_attempts_total{")]
    assert any('direction="openai_to_anthropic"' in l and f'cluster="{FALLBACK}"' in l for l in prom), prom

    # The fallback's connection drops mid-stream: Envoy resets the client's
    # stream too (the upstream instance never sees an end to translate), so the
    # SDK raises a connection error, as without translation; the request is
    # settled at the streamed text's estimate.
    fb.faults(reset_after_events=3)
    with pytest.raises(openai.APIConnectionError):
        list(c.chat.completions.create(model=GPT, messages=msgs, max_tokens=8, stream=True))
    fb.faults(reset_after_events=None)
    s = states(env, 8)[-1]
    assert (s["translated"], s["usage_source"]) == ("openai_to_anthropic", "streamed_text"), s


def test_anthropic_client_fails_over_to_openai(start_envoy, pair):
    primary, fb = pair
    primary.faults(storm={"retry_after_s": 30})
    env = start(start_envoy, pair, "anthropic")
    c = anthropic.Anthropic(base_url=env.base_url, api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": "Say hi."}]

    raw = c.messages.with_raw_response.create(model=CLAUDE, system="Be brief.", messages=msgs, max_tokens=20)
    m = raw.parse()
    rec = last(fb)
    assert (rec["path"], rec["model"], rec["status"]) == ("/v1/chat/completions", GPT, 200), rec
    assert raw.headers["x-llm-capacity-translated"] == "anthropic_to_openai"
    assert m.type == "message" and m.model == GPT and m.stop_reason == "end_turn"
    assert m.content[0].type == "text" and m.content[0].text.startswith("alpha beta")
    assert (m.usage.input_tokens, m.usage.output_tokens) == (rec["prompt_tokens"], rec["completion_tokens"])

    # Streamed: message_start ... message_stop, usage at message_delta.
    with c.messages.stream(model=CLAUDE, messages=msgs, max_tokens=4) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    rec = last(fb)
    assert rec["stream"] and rec["path"] == "/v1/chat/completions"
    assert text == "alpha beta gamma delta" and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage_of(fb) == (rec["prompt_tokens"], 4)

    # Tool use round trip, streamed then not.
    user = {"role": "user", "content": "Look up alpha."}
    with c.messages.stream(model=CLAUDE, messages=[user], tools=TOOLS_AN, max_tokens=3, extra_headers=CALL) as s:
        first = s.get_final_message()
    use = next(b for b in first.content if b.type == "tool_use")
    assert first.stop_reason == "tool_use" and use.name == "lookup" and use.input == {"q": "alpha beta gamma"}
    assert (first.usage.input_tokens, first.usage.output_tokens) == usage_of(fb)
    second = c.messages.create(model=CLAUDE, tools=TOOLS_AN, max_tokens=2, extra_headers=CALL, messages=[
        user, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a Greek letter"}]}])
    assert second.content[0].text == "alpha beta" and second.stop_reason == "max_tokens"
    assert (second.usage.input_tokens, second.usage.output_tokens) == usage_of(fb)
    one = c.messages.create(model=CLAUDE, messages=[user], tools=TOOLS_AN, max_tokens=3, extra_headers=CALL)
    assert one.content[0].type == "tool_use" and one.content[0].input == {"q": "alpha beta gamma"}
    assert one.stop_reason == "tool_use" and (one.usage.input_tokens, one.usage.output_tokens) == usage_of(fb)

    # Incremental (see the OpenAI client's test), and malformed provider events skipped.
    fb.faults(inter_token_ms=300)
    with c.messages.stream(model=CLAUDE, messages=msgs, max_tokens=6) as s:
        events, at = arrivals(s)
    fb.faults(inter_token_ms=0, broken_sse=True)
    first_text = next(i for i, e in enumerate(events) if e.type == "text")
    assert at[-1] - at[first_text] >= 1.0, (at[-1] - at[first_text], len(events))
    with c.messages.stream(model=CLAUDE, messages=msgs, max_tokens=4) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    fb.faults(broken_sse=False)
    assert text == "alpha beta gamma delta"
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage_of(fb)

    entries = states(env, 7)
    for s in entries[-7:]:
        assert s["translated"] == "anthropic_to_openai" and s["served_by"] == FALLBACK, s
        assert s["usage_source"] == "provider", s
    # The primary's 429 storm was never seen by the client (each 429 retried on the fallback).
    assert primary.stats()["by_status"].get("429", 0) >= 1


def test_errors_come_back_in_the_clients_dialect(start_envoy, pair):
    """The fallback answers an error: the client's SDK raises its own exception type."""
    primary, fb = pair
    primary.faults(outage=True)
    env = start(start_envoy, pair, "openai")
    fb.faults(storm={"retry_after_s": 7})
    c = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "x"}], max_tokens=3)
    body = e.value.response.json()
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded", body
    assert e.value.response.headers["x-llm-capacity-translated"] == "openai_to_anthropic"
    assert int(e.value.response.headers["retry-after"]) >= 6
    assert not any(k.startswith("anthropic-ratelimit-") for k in e.value.response.headers)
