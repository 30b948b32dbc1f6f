"""The shipped latency alert in a real Prometheus: a provider whose time to
first token goes from 50 ms to 2 s (no errors) fires
LlmcapTimeToFirstTokenAboveBaseline, read from Prometheus' ALERTS series.

The rules are envoy/prometheus/alerts.yaml with its windows shortened for a
test (5m -> 15s, the 6h baseline -> 40s, 15 minutes before -> 20s, for 5m -> 5s);
the expressions are the shipped ones.

Runtime: about 75 s.
"""

from __future__ import annotations

import threading
from pathlib import Path
import time

import openai

import harness
from prometheus import RULES, Prometheus

MSG = [{"role": "user", "content": "One word, please."}]


def shortened(tmp: Path) -> Path:
    text = RULES.read_text()
    for a, b in [("[5m]", "[15s]"), ("[6h] offset 15m", "[40s] offset 20s"), ("for: 5m", "for: 5s")]:
        assert a in text, a
        text = text.replace(a, b)
    out = tmp / "alerts.yaml"
    out.write_text(text)
    return out


def test_a_slow_provider_fires_the_latency_alert(emulator, start_envoy, tmp_path):
    env = start_envoy()
    prom = Prometheus(tmp_path, [env.admin_url], rules=[shortened(tmp_path)])
    stop = threading.Event()
    errors: list[str] = []

    def client():
        c = openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-slow", max_retries=0, timeout=30)
        while not stop.is_set():
            try:
                list(c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=3, stream=True))
            except openai.OpenAIError as e:
                errors.append(repr(e))
            time.sleep(0.1)

    emulator.faults(ttft_ms=50, inter_token_ms=5)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(45)  # the baseline: 50 ms
        assert not prom.alerts(), prom.alerts()
        emulator.faults(ttft_ms=2000)

        def firing():
            return [a for a in prom.alerts()
                    if a["alertname"] == "LlmcapTimeToFirstTokenAboveBaseline" and a["alertstate"] == "firing"]

        fired = harness.wait_for(firing, 60, "the latency alert firing")
        assert fired[0]["cluster"] == "emulator" and fired[0]["route"] == "openai-chat", fired
        assert not errors, errors[:3]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
        prom.stop()
