"""Configuration: every shipped YAML validates in real Envoy; bad configs are refused
with a message naming the field."""

import re
import subprocess

import pytest
import yaml

import harness

ROOT = harness.ROOT


def envoy_yamls():
    # envoy/prometheus holds Prometheus rules, not Envoy configs.
    return sorted(p for p in (ROOT / "envoy").glob("**/*.yaml") if "prometheus" not in p.parts)


def doc_pages():
    """README.md and every page of the book (docs/**/*.md)."""
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("**/*.md"))


def readme_plugin_examples():
    """YAML blocks in README.md and docs/**/*.md that are plugin configurations (marked
    `# plugin-config`), as (page, index in page, parsed config)."""
    found = []
    for page in doc_pages():
        blocks = re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
        examples = [b for b in blocks if b.startswith("# plugin-config")]
        found += [(page.relative_to(ROOT).as_posix(), i, yaml.safe_load(b)) for i, b in enumerate(examples)]
    return found


def validate(path, cwd=ROOT):
    return subprocess.run(
        [harness.ENVOY_BIN, "--mode", "validate", "-c", path, "--use-dynamic-base-id"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def test_there_are_envoy_yamls_and_readme_examples():
    assert harness.DEFAULT_ENVOY_YAML in envoy_yamls()
    pages = {page for page, _, _ in readme_plugin_examples()}
    assert "README.md" in pages and "docs/configuration.md" in pages, pages
    assert len(readme_plugin_examples()) >= 4


@pytest.mark.parametrize("path", envoy_yamls(), ids=lambda p: p.name)
def test_envoy_yaml_validates(path):
    r = validate(path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    # Validation runs the filter's on_configure: the config was accepted by it.
    assert "llm-capacity: configuration accepted" in r.stdout + r.stderr


@pytest.mark.parametrize("example", [pytest.param(e, id=f"{page}:{i}") for page, i, e in readme_plugin_examples()])
def test_readme_plugin_example_is_accepted(tmp_path, example):
    cfg = harness.load_envoy_config()
    harness.wasm_filter(cfg)["vm_config"]["code"]["local"]["filename"] = str(harness.WASM)
    harness.set_plugin_config(cfg, example)
    p = tmp_path / "readme.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = validate(p)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


BAD = [
    (
        lambda c: c["routes"]["openai-chat"].update({"max_request_byte": 5}),
        "llm-capacity: invalid config at routes.openai-chat.max_request_byte: unknown field; "
        "expected one of: api, cache, calibrate, clusters, default_max_tokens, encoding, enforce_max_tokens, global, hedge, include_usage, input_margin, invalid_body, limits, lowest_latency, max_messages, max_request_bytes, max_request_cost_usd, priority, queue, rate_limit_headers, retry_budget_percent, retry_budget_window_seconds, retry_min_remaining_seconds, session_budget, slo, strategy, tenant_budget, tenant_limits",
    ),
    (
        lambda c: c["routes"]["openai-chat"].update({"global": {"cluster": "ratelimit", "lease": {"tokens": -5}}}),
        "llm-capacity: invalid config at routes.openai-chat.global.lease.tokens: expected an integer from 0 to "
        "100000000, got -5",
    ),
    (
        lambda c: c["defaults"].update({"max_request_bytes": "big"}),
        'llm-capacity: invalid config at defaults.max_request_bytes: expected a positive integer (bytes), got "big"',
    ),
    (
        lambda c: c["routes"]["openai-chat"].update({"clusters": ["emulator", "nowhere"]}),
        'llm-capacity: invalid config at routes.openai-chat.clusters[1]: unknown cluster "nowhere" (define it under clusters)',
    ),
]


@pytest.mark.parametrize("mutate,message", BAD, ids=["misspelled", "global-lease", "mistyped", "dangling"])
def test_bad_config_is_refused_with_exact_message(start_envoy, mutate, message):
    cfg = harness.load_envoy_config()
    plugin = harness.plugin_config(cfg)
    mutate(plugin)
    env = start_envoy(plugin=plugin, expect_start=False)
    code = env.wait_exit(timeout=30)
    assert code != 0
    log = env.log_text()
    assert message in log, log[-2000:]
    assert "Unable to create Wasm plugin llm_capacity" in log


def test_bad_config_fails_validation_too(tmp_path):
    cfg = harness.load_envoy_config()
    harness.wasm_filter(cfg)["vm_config"]["code"]["local"]["filename"] = str(harness.WASM)
    harness.plugin_config(cfg)["log_level"] = "loud"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = validate(p)
    out = r.stdout + r.stderr
    assert 'llm-capacity: invalid config at log_level: expected one of trace, debug, info, warn, error, got "loud"' in out
    assert "OK" not in r.stdout
