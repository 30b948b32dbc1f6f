"""Latency as the user feels it, read back through a real Prometheus: time to
first token and time per output token for OpenAI, Anthropic and Gemini streams
and for answers that are not streamed; goodput of a scripted mix; in-flight
back to 0. The emulator is told its time to first token and its gap between
token events (admin faults); the histograms' medians (histogram_quantile over
what Prometheus scraped from Envoy's /stats/prometheus) must be within 10% (or
5 ms) of it.

Runtime: about 25 s.
"""

from __future__ import annotations

import copy
import json
import time

import anthropic
import openai

import harness
from prometheus import Prometheus

TTFT_MS, INTER_MS, WHOLE_MS = 300, 40, 200
MSG = [{"role": "user", "content": "Tell me a short story about capacity planning, please."}]
N = 4


def close(got: float | None, want: float) -> bool:
    return got is not None and abs(got - want) <= max(0.10 * want, 5)


def median(prom: Prometheus, metric: str, **labels) -> float | None:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return prom.value(f"histogram_quantile(0.5, sum by (le) ({metric}_bucket{{{sel}}}))")


def plugin() -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["routes"]["anthropic-messages"]["slo"] = {"time_to_first_token_ms": 450}
    return p


def test_timings_goodput_and_in_flight_through_prometheus(emulator, start_envoy, tmp_path):
    env = start_envoy(plugin())
    prom = Prometheus(tmp_path, [env.admin_url])
    try:
        emulator.faults(ttft_ms=TTFT_MS, inter_token_ms=INTER_MS)
        oa = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-lat", max_retries=0, timeout=30)
        an = anthropic.Anthropic(base_url=env.base_url, api_key="k-lat", max_retries=0, timeout=30)
        for _ in range(N):
            list(oa.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=40, stream=True))
            with an.messages.stream(model="claude-sonnet-4-6", max_tokens=40, messages=MSG) as s:
                s.get_final_message()
            body = {"contents": [{"role": "user", "parts": [{"text": MSG[0]["content"]}]}],
                    "generationConfig": {"maxOutputTokens": 40}}
            status, _, _ = harness.raw_request(
                env.port, "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                json.dumps(body).encode(), {"content-type": "application/json", "x-goog-api-key": "k-lat"})
            assert status == 200
        # Answers that are not streamed: the whole answer is the first token.
        emulator.faults(ttft_ms=0, inter_token_ms=0, latency_ms=WHOLE_MS)
        for _ in range(N):
            oa.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=40)
        # The goodput mix on anthropic-messages (slo: first token within 450 ms):
        # N streams above were met; 2 whole answers late (600 ms), 3 failed (400).
        emulator.faults(latency_ms=600)
        for _ in range(2):
            an.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG)
        emulator.faults(latency_ms=0, error_rate=1.0, error_status=[400])
        for _ in range(3):
            try:
                an.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG)
            except anthropic.BadRequestError:
                pass
        emulator.faults(error_rate=0.0)
        time.sleep(5.5)  # one stats flush: histograms reach /stats/prometheus
        prom.wait_scraped(2)

        ttft, tpot = "llmcap_time_to_first_token_milliseconds", "llmcap_time_per_output_token_microseconds"
        got = {}
        for route, model in [("openai-chat", "gpt-4o"), ("anthropic-messages", "claude-sonnet-4-6"),
                             ("llm-other", "gemini-2.5-flash")]:
            got[route] = (median(prom, ttft, route=route, model=model),
                          median(prom, tpot, route=route, model=model))
        whole = median(prom, ttft, route="openai-chat", model="gpt-4o-mini")
        for route, (t, p) in got.items():
            assert close(t, TTFT_MS), (route, "ttft", got)
            assert close(p / 1000 if p is not None else None, INTER_MS), (route, "tpot", got)
        assert close(whole, WHOLE_MS), whole
        assert median(prom, tpot, route="openai-chat", model="gpt-4o-mini") is None
        dur = median(prom, "llmcap_request_duration_milliseconds", route="openai-chat", model="gpt-4o-mini")
        assert close(dur, WHOLE_MS), dur

        goodput = {r["metric"]["result"]: float(r["value"][1])
                   for r in prom.query('llmcap_goodput_total{route="anthropic-messages"}')}
        assert goodput == {"met": N, "late": 2, "failed": 3}, goodput
        # No SLO on the other routes: no goodput there.
        assert prom.query('llmcap_goodput_total{route!="anthropic-messages"}') == []
        inflight = prom.query("sum by (route) (llmcap_in_flight)")
        assert inflight and all(float(r["value"][1]) == 0 for r in inflight), inflight

        # The access log carries the same timings, in seconds.
        states = [json.loads(e["llm_capacity"]) for e in env.access_entries(3 * N)]
        s = [x for x in states if x.get("route") == "openai-chat"][0]
        assert abs(s["gen_ai.server.time_to_first_token"] - TTFT_MS / 1000) <= 0.05, s
        assert abs(s["gen_ai.server.time_per_output_token"] - INTER_MS / 1000) <= 0.01, s
    finally:
        prom.stop()


def test_an_attempt_out_of_time_counts_as_a_timeout(emulator, start_envoy):
    """Envoy 1.40 sets x-envoy-expected-rq-timeout-ms (the per-try timeout) on
    each attempt's request, and the upstream filter still reads it when the
    attempt ends unanswered: a per-try timeout is a `timeout`, not a `reset`."""
    cfg = harness.load_envoy_config()
    for vh in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            if r.get("name") == "anthropic-messages":
                r["route"] = copy.deepcopy(r["route"])
                r["route"]["retry_policy"]["per_try_timeout"] = "0.3s"
                r["route"]["retry_policy"]["num_retries"] = 0
    env = start_envoy(base=cfg)
    emulator.faults(latency_ms=800)
    an = anthropic.Anthropic(base_url=env.base_url, api_key="k-to", max_retries=0, timeout=10)
    try:
        an.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG)
        raise AssertionError("answered in time")
    except anthropic.APIStatusError as e:
        assert e.status_code == 504
    emulator.faults(latency_ms=0)
    harness.wait_for(lambda: harness.metric(env, "llmcap_upstream_attempts_total", cluster="emulator",
                                            **{"class": "timeout"}) == 1, 5, "a timeout attempt")
    assert harness.metric(env, "llmcap_upstream_attempts_total", cluster="emulator", **{"class": "reset"}) is None
