"""The Prometheus scrape: families, types, labels and values against what the
emulator counted, from a real Envoy running envoy/envoy.yaml.

Runtime: about 10 s (one stats flush for the histograms).
"""

from __future__ import annotations

import re
import time

import openai

import harness

MSG = [{"role": "user", "content": "Count the tokens of this sentence, please."}]


def families(prom: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", prom, re.M))


def test_scrape_matches_what_the_provider_saw(emulator, start_envoy):
    env = start_envoy()
    c = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-metrics", max_retries=0)
    n = 4
    for _ in range(n):
        c.chat.completions.create(model="gpt-4o", messages=MSG)
    list(c.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    big = b'{"model":"gpt-4o","messages":[]}' + b" " * 300_000
    status, _, _ = harness.raw_request(env.port, "POST", "/v1/chat/completions", big,
                                       {"content-type": "application/json", "authorization": "Bearer k"})
    assert status == 413
    time.sleep(5.5)  # one stats flush, so histograms are exported too

    prom = env.stats_prometheus()
    fam = families(prom)
    for name, kind in [
        ("llmcap_requests_total", "counter"),
        ("llmcap_tokens_total", "counter"),
        ("llmcap_reconciliations_total", "counter"),
        ("llmcap_upstream_attempts_total", "counter"),
        ("llmcap_provider_remaining", "gauge"),
        ("llmcap_build_info", "gauge"),
        ("llmcap_estimate_error_percent", "histogram"),
    ]:
        assert fam.get(name) == kind, (name, fam.get(name))
    # No label left embedded in a name: every llmcap family is a plain name.
    assert not [f for f in fam if f.startswith("llmcap") and ("=" in f or ";" in f)]

    m = lambda name, **kw: harness.metric(env, name, **kw)  # noqa: E731
    ek = emulator.stats()["by_key"]["k-metrics"]
    assert m("llmcap_requests_total", route="openai-chat", outcome="admitted") == n + 1
    assert m("llmcap_requests_total", route="openai-chat", outcome="rejected_too_large") == 1
    assert m("llmcap_tokens_total", route="openai-chat", kind="input") == ek["prompt_tokens"]
    assert m("llmcap_tokens_total", route="openai-chat", kind="output") == ek["completion_tokens"]
    assert m("llmcap_tokens_total", route="openai-chat", model="gpt-4o-mini", kind="input") > 0
    assert m("llmcap_reconciliations_total", route="openai-chat", source="provider") == n + 1
    # Every attempt went to the primary and was answered: one attempt per request.
    attempts = [v for name, ls, v in harness.prom_samples(env)
                if name == "llmcap_upstream_attempts_total" and ls == {"cluster": "emulator", "class": "ok"}]
    assert attempts == [emulator.stats()["requests_total"]]
    # The provider's last reported remaining requests (the emulator's per-key limiter).
    assert m("llmcap_provider_remaining", cluster="emulator", limit="requests") is not None
    assert re.search(r'^llmcap_estimate_error_percent_bucket\{route="openai-chat",le="\+Inf"\} 5$', prom, re.M), \
        [l for l in prom.splitlines() if "estimate_error" in l][:5]
