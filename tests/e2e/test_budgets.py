"""Session and tenant budgets in real Envoy: a runaway agent loop is stopped at
its cap, spend caps hit at the right call to the cent, and many sessions keep
the slot table bounded. The emulator's admin counts are the referee.

Runtime: about 30 s.
"""

from __future__ import annotations

import copy
import json

import openai

import harness
import loadgen

CHAT = "/v1/chat/completions"
PROMPT = "Plan the next step of the migration."
OUTPUT_TOKENS = 1000
PRICES = {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}, "*": {"input": 1, "output": 1}}
PICO = 10**12


def plugin(route: dict, prices=None) -> dict:
    p = copy.deepcopy(harness.plugin_config(harness.load_envoy_config()))
    p["routes"]["openai-chat"].update(route)
    if prices is not None:
        p["prices"] = prices
    return p


def agent(env, session: str, **kw) -> openai.OpenAI:
    # The SDK's default retries stay on: a budget answer must not be retried.
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="k",
                         default_headers={"x-session-id": session, "x-emulator-output-tokens": str(OUTPUT_TOKENS)}, **kw)


def call(c: openai.OpenAI):
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=OUTPUT_TOKENS)


def run_until_refused(c: openai.OpenAI, limit: int = 100):
    ok = []
    for _ in range(limit):
        try:
            ok.append(call(c))
        except openai.APIStatusError as e:
            return ok, e
    raise AssertionError("never refused")


def pico_cost(usage, price) -> int:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    return ((usage["prompt_tokens"] - cached) * round(price["input"] * 10**6)
            + cached * round(price.get("cached_input", price["input"]) * 10**6)
            + usage["completion_tokens"] * round(price["output"] * 10**6))


def test_runaway_agent_is_stopped_at_its_call_cap(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"session_budget": {"header": "x-session-id", "max_calls": 10}}))
    ok, err = run_until_refused(agent(env, "agent-1"))
    assert len(ok) == 10
    assert err.status_code == 402 and err.code == "session_budget_exceeded", err
    assert err.response.headers["x-should-retry"] == "false"
    assert [r.headers["x-llm-capacity-session-remaining-calls"] for r in ok] == [str(9 - i) for i in range(10)]
    # Exactly the cap reached the provider, and the SDK did not retry the refusal.
    assert emulator.stats()["requests_total"] == 10
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;outcome=.=rejected_budget;.;llmcap_requests_total"] == 1
    assert s["wasmcustom.route=.=openai-chat;.;scope=.=session;.;limit=.=calls;.;llmcap_budget_exceeded_total"] == 1
    # Another session on the same route is unaffected.
    assert call(agent(env, "agent-2")).http_response.status_code == 200
    assert emulator.stats()["requests_total"] == 11


def test_loop_breaker_limits_calls_per_minute(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"session_budget": {"header": "x-session-id", "calls_per_minute": 3}}))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    h = {"content-type": "application/json", "authorization": "Bearer k", "x-session-id": "loop"}
    statuses = [harness.raw_request(env.port, "POST", CHAT, body, h) for _ in range(4)]
    assert [s for s, _, _ in statuses] == [200, 200, 200, 429]
    _, rh, rb = statuses[3]
    assert json.loads(rb)["error"]["code"] == "session_rate_limited"
    assert 1 <= int(rh["retry-after"]) <= 60
    assert emulator.stats()["requests_total"] == 3


def test_spend_cap_is_hit_at_the_right_call_to_the_cent(start_envoy, emulator):
    # One call's exact usage, straight from the emulator (no filter in the way).
    probe = openai.OpenAI(base_url=f"http://127.0.0.1:{emulator.api_port}/v1", api_key="k",
                          default_headers={"x-emulator-output-tokens": str(OUTPUT_TOKENS)})
    usage = json.loads(call(probe).text)["usage"]
    per_call = pico_cost(usage, PRICES["gpt-4o"])
    assert per_call > PICO // 100  # over a cent per call, so one cent separates the cases below
    emulator.reset()
    # A cap one cent above three calls' spend: the fourth call starts under it and
    # is admitted, the fifth starts over it and is refused.
    cap_pico = 3 * per_call + PICO // 100
    cap_usd = f"{cap_pico / PICO:.12f}"
    env = start_envoy(plugin=plugin({"session_budget": {"header": "x-session-id", "max_spend_usd": cap_usd}},
                                    prices=PRICES))
    ok, err = run_until_refused(agent(env, "spender"))
    assert len(ok) == 4
    assert err.status_code == 402 and err.code == "session_budget_exceeded"
    assert "spend" in err.message
    assert emulator.stats()["requests_total"] == 4
    spent_micro = sum(pico_cost(json.loads(r.text)["usage"], PRICES["gpt-4o"]) // 10**6 for r in ok)
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;llmcap_spend_microdollars_total"] == spent_micro
    # Remaining spend on the first answer: the cap less that call's reservation.
    first_left = float(ok[0].headers["x-llm-capacity-session-remaining-usd"])
    assert 0 < first_left < cap_pico / PICO


def test_tenant_daily_spend_budget(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"tenant_budget": {"header": "x-tenant-id", "trust_header": True,
                                                       "spend_per_day_usd": 0.015}}, prices=PRICES))
    def tenant(t):
        return openai.OpenAI(base_url=env.base_url + "/v1", api_key="k", max_retries=0,
                             default_headers={"x-tenant-id": t, "x-emulator-output-tokens": str(OUTPUT_TOKENS)})
    ok, err = run_until_refused(tenant("team-a"))
    assert len(ok) == 2  # 0.01 after one call, 0.02 after two: the third starts over 0.015
    assert err.status_code == 402 and err.code == "tenant_budget_exceeded"
    assert 1 <= int(err.response.headers["retry-after"]) <= 86400
    assert "x-llm-capacity-tenant-remaining-usd-day" in ok[0].headers
    assert call(tenant("team-b")).http_response.status_code == 200


def test_missing_required_session_header_is_a_400(start_envoy, emulator):
    env = start_envoy(plugin=plugin({"session_budget": {"header": "x-session-id", "max_calls": 5, "required": True}}))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, h, b = harness.raw_request(env.port, "POST", CHAT, body, {"content-type": "application/json"})
    assert status == 400 and json.loads(b)["error"]["code"] == "session_required"
    assert emulator.stats()["requests_total"] == 0


def test_many_sessions_share_a_bounded_table_without_merging(start_envoy, emulator):
    # Only the budgets count here: no route limits, no emulator key limits.
    emulator.faults(rpm=100_000_000, tpm=1_000_000_000)
    env = start_envoy(plugin=plugin({"limits": None,
                                     "session_budget": {"header": "x-session-id", "max_calls": 2, "slots": 16}}))
    n = 2000
    run = loadgen.run(env.base_url + CHAT, rate=None, duration=60, max_in_flight=8, max_requests=n,
                      headers=lambda i: {"x-session-id": f"s-{i}"})
    assert len(run.results) == n and len(run.ok()) == n, run.summary()
    s = env.stats_json()
    assert s["wasmcustom.route=.=openai-chat;.;llmcap_budget_evictions_total"] > 0
    # A session that just used its two calls is refused, whatever else went on.
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    h = {"content-type": "application/json", "authorization": "Bearer k", "x-session-id": "tail"}
    assert [harness.raw_request(env.port, "POST", CHAT, body, h)[0] for _ in range(3)] == [200, 200, 402]
