"""Istio packaging (istio/): schema validation of every manifest, consistency of
the names the plugin configuration shares with Istio, and the filter in a real
Envoy 1.40 configured the way Istio would configure the egress gateway (and an
application sidecar) from these manifests, driven by the official SDKs.

What is modelled of Istio, and how, is in tests/istio/istio_xds.py; the schema
validator and its strictness in tests/istio/istio_schema.py. Runtime: about 10 s.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "istio"))
import istio_schema  # noqa: E402
import istio_xds  # noqa: E402
from istio_xds import Proxy  # noqa: E402

ISTIO = istio_schema.ISTIO_DIR
PROVIDERS = ISTIO / "providers.yaml"
MESH = [ISTIO / "mesh-config.yaml"]
OPENAI = "outbound|443||api.openai.com"
MINI = "outbound|443|gpt-4o-mini|api.openai.com"
ANTHROPIC = "outbound|443||api.anthropic.com"


def gateway_proxy() -> Proxy:
    gw = istio_xds.of_kind(istio_xds.load([ISTIO / "egress-gateway" / "gateway.yaml"]), "Gateway")[0]
    return Proxy(kind="gateway", namespace="istio-system", labels={"istio": "egressgateway", "app": "istio-egressgateway"},
                 listener_port=8080, service_port=gw["spec"]["servers"][0]["port"]["number"],
                 gateway=gw["metadata"]["name"], gateway_server_port_name=gw["spec"]["servers"][0]["port"]["name"],
                 manifests=[PROVIDERS, *sorted((ISTIO / "egress-gateway").glob("*.yaml"))])


def sidecar_proxy() -> Proxy:
    return Proxy(kind="sidecar", namespace="llm-agents", labels={"app": "llm-agent"}, listener_port=80, service_port=80,
                 manifests=[PROVIDERS, *sorted((ISTIO / "sidecar").glob("*.yaml"))])


PROXIES = {"gateway": gateway_proxy, "sidecar": sidecar_proxy}
DOCS = list(istio_schema.documents())


def docs_named(name: str) -> dict:
    return dict(DOCS)[name]


# --- schemas ---------------------------------------------------------------------

def test_manifests_exist_for_every_part():
    kinds = {(n.split("/")[0] if "/" in n else "", d["kind"]) for n, d in DOCS}
    for want in [("", "ServiceEntry"), ("", "DestinationRule"), ("", "IstioOperator"),
                 ("egress-gateway", "Gateway"), ("egress-gateway", "VirtualService"),
                 ("egress-gateway", "EnvoyFilter"), ("egress-gateway", "Telemetry"),
                 ("sidecar", "VirtualService"), ("sidecar", "EnvoyFilter"), ("sidecar", "Telemetry"),
                 ("wasmplugin", "WasmPlugin")]:
        assert want in kinds, want


@pytest.mark.parametrize("name", [n for n, _ in DOCS])
def test_manifest_is_valid_for_istio_schema(name):
    istio_schema.validate(docs_named(name))


def _mutate(name: str, path: list, value) -> dict:
    doc = copy.deepcopy(docs_named(name))
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


EF = "egress-gateway/envoyfilter-llm-capacity.yaml#0"
VS = "egress-gateway/virtualservice.yaml#0"
WP = "wasmplugin/wasmplugin.yaml#0"


@pytest.mark.parametrize("doc,why", [
    (_mutate(VS, ["spec", "http", 1, "retries", "atempts"], 1), "atempts: unknown field"),
    (_mutate(VS, ["spec", "http", 1, "retries", "attempts"], "1"), "valid integer"),
    (_mutate(VS, ["spec", "bogus"], True), "bogus: unknown field"),
    (_mutate(VS, ["metadata", "labelz"], {}), "labelz: unknown field"),
    (_mutate(EF, ["spec", "configPatches", 0, "applyTo"], "HTTP_FILTERS"), "applyTo"),
    (_mutate(EF, ["spec", "configPatches", 1, "patch", "operaton"], "MERGE"), "operaton: unknown field"),
    (_mutate(EF, ["spec", "configPatches", 1, "match", "context"], "OUTBOUND"), "context"),
    (_mutate(WP, ["spec", "failStrategy"], "FAIL_LATER"), "failStrategy"),
    (_mutate(WP, ["spec", "priority"], 1.5), "valid integer"),
    (_mutate("providers.yaml#0", ["spec", "ports", 0, "number"], "80"), "valid integer"),
    (_mutate("providers.yaml#2", ["spec", "trafficPolicy", "portLevelSettings", 0, "tls", "mode"], "simple"), "mode"),
    (_mutate("mesh-config.yaml#0", ["spec", "meshConfig", "defaultConfig", "extraStatTag"], ["route"]), "unknown field"),
    (_mutate("mesh-config.yaml#0", ["spec", "meshConfig", "defaultConfig", "extraStatTags"], "route"), "expected list"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "VirtualSevice", "metadata": {"name": "x"}}, "no schema"),
])
def test_validator_rejects_what_istio_would(doc, why):
    with pytest.raises(istio_schema.InvalidManifest, match=re.escape(why)):
        istio_schema.validate(doc)


def test_only_fail_reload_is_newer_than_the_schema():
    # FAIL_RELOAD passes (Istio >= 1.27); the schema's own values still do; nothing else.
    for v in ("FAIL_RELOAD", "FAIL_OPEN", "FAIL_CLOSE"):
        istio_schema.validate(_mutate(WP, ["spec", "failStrategy"], v))
    with pytest.raises(istio_schema.InvalidManifest):
        istio_schema.validate(_mutate(WP, ["spec", "imagePullPolicy"], "FAIL_RELOAD"))


# --- names and configuration shared with Istio ------------------------------------

def wasm_instances(ef: dict) -> tuple[dict, dict]:
    """(downstream ECDS config, upstream instance config) of an EnvoyFilter."""
    patches = ef["spec"]["configPatches"]
    down = next(p for p in patches if p["applyTo"] == "EXTENSION_CONFIG")["patch"]["value"]["typed_config"]["config"]
    merge = next(p for p in patches if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "MERGE")
    ups = merge["patch"]["value"]["typed_config"]["upstream_http_filters"]
    assert [u["name"] for u in ups] == ["envoy.filters.http.wasm", "envoy.filters.http.upstream_codec"]
    return down, ups[0]["typed_config"]["config"]


@pytest.mark.parametrize("variant", ["egress-gateway", "sidecar"])
def test_both_instances_share_vm_and_configuration(variant):
    down, up = wasm_instances(docs_named(f"{variant}/envoyfilter-llm-capacity.yaml#0"))
    assert down["root_id"] == "llm_capacity" and up["root_id"] == "llm_capacity_upstream"
    assert down["vm_config"] == up["vm_config"] and down["vm_config"]["vm_id"] == "llm_capacity"
    assert down["vm_config"]["code"]["local"]["filename"] == istio_xds.WASM_FILE_IN_POD
    for c in (down, up):
        assert c["failure_policy"] == "FAIL_RELOAD" and c["allow_on_headers_stop_iteration"] is True
    assert down["configuration"] == up["configuration"]
    assert down["configuration"]["value"]["upstream_filter"] is True


@pytest.mark.parametrize("variant", ["egress-gateway", "sidecar"])
def test_queued_requests_are_held_by_a_fault_filter_after_the_wasm_filter(variant):
    """queue_hold: fault_filter needs Envoy's fault filter after the Wasm filter:
    both inserted before the router, in that order; holding only requests the
    filter marked, with no max_active_faults (past it, requests would go
    unheld); and the hold's headers removed on every policy route."""
    ef = docs_named(f"{variant}/envoyfilter-llm-capacity.yaml#0")
    down, _ = wasm_instances(ef)
    assert down["configuration"]["value"]["queue_hold"] == "fault_filter"
    inserts = [p for p in ef["spec"]["configPatches"]
               if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "INSERT_BEFORE"]
    assert [p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] for p in inserts] == [
        "envoy.filters.http.router"] * 2
    wasm, hold = (p["patch"]["value"] for p in inserts)
    assert "config_discovery" in wasm and hold["name"] == wasm["name"] + "-hold"
    assert inserts[0]["match"] == inserts[1]["match"]
    fault = hold["typed_config"]
    assert fault["@type"] == "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    assert fault["delay"] == {"header_delay": {}, "percentage": {"numerator": 100}}
    assert fault["headers"] == [{"name": "x-llm-capacity-hold", "present_match": True}]
    assert "max_active_faults" not in fault and "abort" not in fault
    routes = docs_named(f"{variant}/envoyfilter-routes.yaml#0")["spec"]["configPatches"]
    policy_routes = [p for p in routes if p["applyTo"] == "HTTP_ROUTE"]
    names = {p["match"]["routeConfiguration"]["vhost"]["route"]["name"] for p in policy_routes}
    assert names == set(down["configuration"]["value"]["routes"]), names
    for p in policy_routes:
        assert p["patch"]["value"]["request_headers_to_remove"] == [
            "x-envoy-fault-delay-request", "x-llm-capacity-hold"], p


def test_wasmplugin_config_is_the_gateway_one_without_upstream_instance():
    gw, _ = wasm_instances(docs_named(EF))
    wp = docs_named(WP)["spec"]
    a, b = dict(wp["pluginConfig"]), dict(gw["configuration"]["value"])
    assert a.pop("upstream_filter") is False and b.pop("upstream_filter") is True
    assert a.pop("hold_headers") is False and "hold_headers" not in b
    # No fault filter after a WasmPlugin (and no held headers): queued requests pause in the VM.
    assert a.pop("queue_hold") == "vm" and b.pop("queue_hold") == "fault_filter"
    assert a == b
    assert wp["pluginName"] == gw["root_id"] and wp["failStrategy"] == gw["failure_policy"]


@pytest.mark.parametrize("kind", ["gateway", "sidecar"])
def test_policy_names_are_istio_names(kind):
    proxy = PROXIES[kind]()
    docs = istio_xds.load(proxy.manifests)
    ef = next(d for d in docs if d["kind"] == "EnvoyFilter" and d["metadata"]["name"] == "llm-capacity")
    plugin = wasm_instances(ef)[0]["configuration"]["value"]
    routes = {r["name"]: r for vh in istio_xds.virtual_hosts(docs, proxy) for r in vh["routes"]}
    clusters = {c["name"] for c in istio_xds.clusters(docs, {n: 1 for n in (OPENAI, MINI, ANTHROPIC)})}
    assert clusters == {OPENAI, MINI, ANTHROPIC}
    assert set(plugin["clusters"]) == clusters
    assert set(plugin["routes"]) <= set(routes), "every route policy names a VirtualService route on this proxy"
    for name, policy in plugin["routes"].items():
        chain = [c if isinstance(c, str) else c["cluster"] for c in policy["clusters"]]
        # The primary is where Istio's route sends the request.
        assert routes[name]["route"]["cluster"] == chain[0], name


@pytest.mark.parametrize("kind", ["gateway", "sidecar"])
def test_retries_are_explicit_and_retry_what_the_filter_steers(kind):
    proxy = PROXIES[kind]()
    docs = istio_xds.load(proxy.manifests)
    for vs in istio_xds.of_kind(docs, "VirtualService"):
        for h in vs["spec"]["http"]:
            assert "retries" in h, f"{h['name']}: without retries Istio retries twice"
    assert istio_xds.convert_retry_policy(None)["num_retries"] == 2  # Istio's default, modelled
    routes = {r["name"]: r for vh in istio_xds.virtual_hosts(docs, proxy) for r in vh["routes"]}
    for name in ("openai-chat", "openai-other", "anthropic-messages"):
        rp = routes[name]["route"]["retry_policy"]
        assert rp["num_retries"] == 1
        assert set(rp["retry_on"].split(",")) >= {"retriable-status-codes", "reset", "connect-failure"}
        assert rp["retriable_status_codes"] == [429, 502, 503, 504]
    for name in ("openai-passthrough", "anthropic-passthrough"):
        rp = routes[name]["route"]["retry_policy"]
        assert "retriable_status_codes" not in rp and rp["retry_on"] == "connect-failure,refused-stream"


def test_failover_matcher_names_the_chain():
    plugin = wasm_instances(docs_named(EF))[0]["configuration"]["value"]
    chain = [c if isinstance(c, str) else c["cluster"] for c in plugin["routes"]["openai-chat"]["clusters"]]
    patch = next(p for p in docs_named("egress-gateway/envoyfilter-routes.yaml#0")["spec"]["configPatches"]
                 if p["match"]["routeConfiguration"]["vhost"].get("route", {}).get("name") == "openai-chat")
    spec = patch["patch"]["value"]["route"]["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
    text = json.dumps(spec)
    keys = re.findall(r'"key": "(wasm\.llmcap_try_\d)"', text)
    assert sorted(set(keys)) == [f"wasm.llmcap_try_{i + 1}" for i in range(len(chain))]
    assert set(re.findall(r'"cluster": "([^"]+)"', text)) == set(chain)


# --- Istio-shaped Envoy ------------------------------------------------------------

@pytest.fixture
def emulators(tmp_path):
    emus = {}
    for name in ("primary", "mini"):
        d = tmp_path / name
        d.mkdir()
        emus[name] = harness.Emulator(d)
    yield emus
    for e in emus.values():
        e.stop()


def start_istio_envoy(tmp_path, proxy: Proxy, emus, started: list, replace_wasm_with_wasmplugin=False):
    ports = {OPENAI: emus["primary"].api_port, ANTHROPIC: emus["primary"].api_port, MINI: emus["mini"].api_port}
    if replace_wasm_with_wasmplugin:
        proxy.manifests = [p for p in proxy.manifests if p.name != "envoyfilter-llm-capacity.yaml"]
    cfg, applied = istio_xds.bootstrap(proxy, ports, harness.WASM, MESH)
    if replace_wasm_with_wasmplugin:
        hcm = istio_xds.hcm_of(cfg)
        hcm["http_filters"].insert(len(hcm["http_filters"]) - 1, wasmplugin_as_istio_builds_it(docs_named(WP)))
    # File access logs are flushed every 10 s by default; the test reads them at once.
    env = harness.Envoy(tmp_path, cfg, name=f"envoy-{proxy.kind}", args=("--file-flush-interval-msec", "50"))
    started.append(env)
    return env, applied


@pytest.fixture
def envoys():
    started: list = []
    yield started
    for e in started:
        e.stop()


def wasmplugin_as_istio_builds_it(wp: dict) -> dict:
    """pilot/pkg/model/extensions.go convertToWasmPluginWrapper/buildVMConfig:
    name <ns>.<name>, root_id from pluginName, pluginConfig as a JSON string,
    vm_config with runtime and code only (no vm_id), no
    allow_on_headers_stop_iteration; istio-agent has fetched the OCI image into
    a local file (and dropped its ISTIO_META_* variables)."""
    spec, meta = wp["spec"], wp["metadata"]
    return {
        "name": f"{meta['namespace']}.{meta['name']}",
        "typed_config": {
            "@type": istio_xds.WASM_TYPE,
            "config": {
                "name": f"{meta['namespace']}.{meta['name']}",
                "root_id": spec["pluginName"],
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(spec["pluginConfig"])},
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(harness.WASM)}}},
                "failure_policy": spec["failStrategy"],
            },
        },
    }


def prom_value(text: str, family: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def oa(env, **kw) -> openai.OpenAI:
    # Applications call http://api.openai.com; the virtual host matches the Host.
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="k-istio", max_retries=0, timeout=20,
                         default_headers={"Host": "api.openai.com"}, **kw)


def entries_for(env, route: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in env.access_entries(1) if e.get("route") == route]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["gateway", "sidecar"])
def test_istio_shaped_envoy_serves_measures_logs_and_fails_over(tmp_path, emulators, envoys, kind):
    proxy = PROXIES[kind]()
    env, applied = start_istio_envoy(tmp_path, proxy, emulators, envoys)
    name = f"{proxy.namespace}.llm-capacity"

    # Every patch landed where it should, in Istio's order.
    assert set(applied.log) == {
        f"llm-capacity: EXTENSION_CONFIG {name}",
        "llm-capacity: HTTP_FILTER INSERT_BEFORE envoy.filters.http.router",
        "llm-capacity: HTTP_FILTER MERGE envoy.filters.http.router",
        "llm-capacity-routes: VIRTUAL_HOST MERGE api.openai.com:80",
        "llm-capacity-routes: HTTP_ROUTE MERGE api.openai.com:80/openai-chat",
        "llm-capacity-routes: HTTP_ROUTE MERGE api.openai.com:80/openai-other",
        "llm-capacity-routes: HTTP_ROUTE MERGE api.anthropic.com:80/anthropic-messages",
    }, applied.log
    cfg = yaml_cfg(env)
    hcm = istio_xds.hcm_of(cfg)
    assert cfg["static_resources"]["listeners"][0]["name"] == f"0.0.0.0_{proxy.listener_port}"
    assert hcm["stat_prefix"] == f"outbound_0.0.0.0_{proxy.listener_port}"
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.fault", "envoy.filters.http.cors", name, f"{name}-hold", "envoy.filters.http.router"]

    # OpenAI through the openai-chat route: answered, counted, logged.
    r = oa(env).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say hello through the mesh."}], max_tokens=8)
    chat = r.parse()
    assert r.http_response.status_code == 200 and chat.choices[0].message.content
    assert chat.model == "gpt-4o"
    # Anthropic through anthropic-messages.
    msg = anthropic.Anthropic(base_url=env.base_url, api_key="k-istio", max_retries=0, timeout=20,
                              default_headers={"Host": "api.anthropic.com"}).messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text and msg.usage.output_tokens == 8
    # A path without a policy passes through untouched.
    assert oa(env).models.list().data

    prom = env.stats_prometheus()
    assert prom_value(prom, "llmcap_requests_total", route="openai-chat", outcome="admitted") == 1
    assert prom_value(prom, "llmcap_requests_total", route="anthropic-messages", outcome="admitted") == 1
    assert prom_value(prom, "llmcap_requests_total", route="openai-passthrough", outcome="unmatched") == 1
    assert re.search(r"^llmcap_tokens_total\{[^}]*route=\"openai-chat\"", prom, re.M), "token counters with labels"

    (log,) = entries_for(env, "openai-chat", 1)
    assert log["status"] in (200, "200") and log["upstream_cluster"] == OPENAI
    state = json.loads(log["llm_capacity"])
    assert state["route"] == "openai-chat" and state["outcome"] == "admitted"
    (alog,) = entries_for(env, "anthropic-messages", 1)
    assert json.loads(alog["llm_capacity"])["route"] == "anthropic-messages"

    # Failover through the HTTP_ROUTE patch: the primary rate-limits, the retry
    # goes to the smaller model's cluster with the model rewritten, and the next
    # request goes there first while the primary cools down.
    primary, mini = emulators["primary"], emulators["mini"]
    primary.faults(storm={"retry_after_s": 30})
    before = primary.stats()["requests_total"]
    for i in range(2):
        r = oa(env).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"failover {i}"}], max_tokens=5)
        assert r.http_response.status_code == 200
        assert r.parse().model == "gpt-4o-mini"
    assert primary.stats()["requests_total"] - before == 1, "one 429, then no request before its Retry-After"
    assert [x["model"] for x in mini.stats()["recent"]] == ["gpt-4o-mini", "gpt-4o-mini"]
    logs = entries_for(env, "openai-chat", 3)
    assert [(e["upstream_cluster"], int(e["attempts"])) for e in logs[1:]] == [(MINI, 2), (MINI, 1)]


def yaml_cfg(env) -> dict:
    """The bootstrap Envoy was started with."""
    return yaml.safe_load(env.config_path.read_text())


def test_wasmplugin_translation_serves_policy_routes_without_held_headers(tmp_path, emulators, envoys):
    """The configuration Istio builds from wasmplugin.yaml has no
    allow_on_headers_stop_iteration; with hold_headers: false the filter holds
    the body instead of the headers, so policy routes are served, estimated and
    counted (no body rewrites, no failover routing)."""
    env, _ = start_istio_envoy(tmp_path, gateway_proxy(), emulators, envoys, replace_wasm_with_wasmplugin=True)
    assert "vm_id" not in json.dumps(istio_xds.hcm_of(yaml_cfg(env))["http_filters"])
    assert "allow_on_headers_stop_iteration" not in json.dumps(istio_xds.hcm_of(yaml_cfg(env))["http_filters"])
    assert oa(env).models.list().data
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
    status, _, b = harness.raw_request(env.port, "POST", "/v1/chat/completions", body,
                                       {"host": "api.openai.com", "content-type": "application/json",
                                        "authorization": "Bearer k"}, timeout=5)
    assert status == 200, b
    assert harness.metric(env, "llmcap_requests_total", route="openai-chat", outcome="admitted") == 1
    # The body went on as the client sent it (no include_usage rewrite without held headers).
    sent = [x for x in emulators["primary"].stats()["recent"] if x["path"] == "/v1/chat/completions"]
    assert len(sent) == 1 and sent[0]["headers"]["content-length"] == str(len(body))
    # A body over the route's cap is still answered locally.
    big = b'{"model":"gpt-4o","messages":[]}' + b" " * 300_000
    status, _, _ = harness.raw_request(env.port, "POST", "/v1/chat/completions", big,
                                       {"host": "api.openai.com", "content-type": "application/json",
                                        "authorization": "Bearer k"}, timeout=5)
    assert status == 413