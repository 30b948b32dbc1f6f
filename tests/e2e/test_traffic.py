"""Traffic through real Envoy with the filter, driven by the official SDKs."""

import json
import re

import anthropic
import openai
import pytest

import harness

MSG = [{"role": "user", "content": "Say hello to the capacity layer."}]


def openai_client(env, key="key-openai"):
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def anthropic_client(env, key="key-anthropic"):
    return anthropic.Anthropic(base_url=env.base_url, api_key=key, max_retries=0, timeout=20)


def test_openai_sdk_non_streaming_and_streaming(emulator, start_envoy):
    env = start_envoy()
    client = openai_client(env)

    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage is not None

    stats = emulator.stats()
    assert stats["requests_total"] == 2
    key = stats["by_key"]["key-openai"]
    # What the SDK saw is exactly what the provider counted: nothing lost or added on the way.
    assert key["requests"] == 2
    assert key["prompt_tokens"] == r.usage.prompt_tokens + usage.prompt_tokens
    assert key["completion_tokens"] == r.usage.completion_tokens + usage.completion_tokens

    entries = env.access_entries(2)
    for e in entries:
        assert e["route"] == "openai-chat"
        assert e["status"] == 200
        st = json.loads(e["llm_capacity"])
        assert (st["route"], st["outcome"], st["usage_source"]) == ("openai-chat", "admitted", "provider")


def test_anthropic_sdk_non_streaming_and_streaming(emulator, start_envoy):
    env = start_envoy()
    client = anthropic_client(env)

    m = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MSG)
    assert m.content[0].text
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text

    stats = emulator.stats()
    key = stats["by_key"]["key-anthropic"]
    assert key["requests"] == 2
    assert key["prompt_tokens"] == m.usage.input_tokens + final.usage.input_tokens
    assert key["completion_tokens"] == m.usage.output_tokens + final.usage.output_tokens
    assert all(e["route"] == "anthropic-messages" for e in env.access_entries(2))


def test_oversized_body_gets_openai_413_and_never_reaches_provider(emulator, start_envoy):
    env = start_envoy()
    # anthropic-messages caps bodies at 131072 bytes in envoy/envoy.yaml.
    big = {"model": "claude-sonnet-4-6", "max_tokens": 16,
           "messages": [{"role": "user", "content": "x" * 140_000}]}
    client = anthropic_client(env)
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.create(**big)
    assert exc.value.status_code == 413

    status, headers, body = harness.raw_request(
        env.port, "POST", "/v1/chat/completions", json.dumps({"x": "y" * 300_000}).encode(),
        {"content-type": "application/json"})
    assert status == 413
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "request_too_large"
    assert re.match(r"Request body of \d+ bytes exceeds the limit of 262144 bytes", err["message"])

    # Under the cap goes through.
    under = json.dumps({"model": "m", "messages": [{"role": "user", "content": "z" * 1000}]}).encode()
    status, _, _ = harness.raw_request(env.port, "POST", "/v1/chat/completions", under,
                                       {"content-type": "application/json", "authorization": "Bearer k"})
    assert status == 200

    assert emulator.stats()["requests_total"] == 1
    outcomes = [json.loads(e["llm_capacity"])["outcome"] for e in env.access_entries(3)]
    assert outcomes == ["rejected_too_large", "rejected_too_large", "admitted"]


def test_invalid_body_pass_lets_the_provider_answer(emulator, start_envoy):
    # invalid_body: pass sends unreadable bodies on, charged by size; the provider answers them.
    plugin = harness.plugin_config(harness.load_envoy_config())
    plugin["routes"]["openai-chat"]["invalid_body"] = "pass"
    env = start_envoy(plugin=plugin)
    bad = b'{"model": "m", "messages": ['
    status, _, body = harness.raw_request(env.port, "POST", "/v1/chat/completions", bad,
                                          {"content-type": "application/json", "authorization": "Bearer k"})
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert emulator.stats()["requests_total"] == 1
    st = json.loads(env.access_entries(1)[0]["llm_capacity"])
    assert st["outcome"] == "admitted" and st["usage_source"] == "refused"
    assert st["input_estimate"] == (len(bad) + 3) // 4


def test_unmatched_routes_pass_or_are_rejected(emulator, start_envoy):
    plugin = harness.plugin_config(harness.load_envoy_config())
    env = start_envoy(plugin=plugin)
    status, _, _ = harness.raw_request(env.port, "GET", "/v1/models", headers={"authorization": "Bearer k"})
    assert status == 200
    assert json.loads(env.access_entries(1)[0]["llm_capacity"]) == {"route": "passthrough", "outcome": "unmatched"}
    env.stop()

    plugin["unmatched_routes"] = "reject"
    env = start_envoy(plugin=plugin, name="reject")
    status, headers, body = harness.raw_request(env.port, "GET", "/v1/models")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "route_not_configured"
    assert headers["x-llm-capacity"] == "route_not_configured"
    # The policy routes still work.
    r = openai_client(env).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content
    assert emulator.stats()["requests_total"] == 2  # one from the first Envoy, one now


def test_metrics_and_version_reach_prometheus_and_log(emulator, start_envoy):
    env = start_envoy()
    client = openai_client(env)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    harness.raw_request(env.port, "POST", "/v1/chat/completions", b"x" * 300_000)
    harness.raw_request(env.port, "GET", "/v1/models", headers={"authorization": "Bearer k"})

    prom = env.stats_prometheus()
    assert re.search(r'^llmcap_requests_total\{route="openai-chat",outcome="admitted"\} 3$', prom, re.M), prom[-3000:]
    assert re.search(r'^llmcap_requests_total\{route="openai-chat",outcome="rejected_too_large"\} 1$', prom, re.M)
    assert re.search(r'^llmcap_requests_total\{route="passthrough",outcome="unmatched"\} 1$', prom, re.M)
    assert re.search(r'^llmcap_build_info\{version="0\.1\.0",revision="[0-9a-z-]+"\} 1$', prom, re.M)
    # Workers agree: two workers, one counter per name.
    assert len(re.findall(r'^llmcap_requests_total\{route="openai-chat",outcome="admitted"\}', prom, re.M)) == 1
    assert re.search(r"llm-capacity 0\.1\.0 \(git [0-9a-z-]+\) starting", env.log_text())
