"""Tenants from the mesh's identity: the downstream mTLS peer certificate (its URI
SAN, a SPIFFE ID in Istio), in real Envoy with client certificates."""

import http.client
import json
import ssl

import harness


def call(port, d, client):
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(d / f"{client}.pem"), str(d / f"{client}.key"))
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": "Bearer k"})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_tenant_limits_by_peer_certificate(tmp_path, emulator):
    harness.make_pki(tmp_path)
    cfg = harness.require_client_certificates(harness.localize(harness.load_envoy_config(), emulator.api_port),
                                              tmp_path)
    plugin = harness.plugin_config(cfg)
    plugin["routes"]["openai-chat"] = {
        "clusters": ["emulator"],
        "tenant_limits": {"identity": "peer_certificate", "requests_per_minute": 60},  # burst 1
    }
    harness.set_plugin_config(cfg, plugin)
    env = harness.Envoy(tmp_path, cfg)
    try:
        # app1: the bucket admits while positive (into a debt of one request), then refuses.
        statuses = [call(env.port, tmp_path, "app1")[0] for _ in range(2)]
        status, body = call(env.port, tmp_path, "app1")
        assert statuses == [200, 200] and status == 429, (statuses, status, body)
        assert body["error"]["code"] == "tenant_rate_limit_exceeded"
        assert "spiffe://cluster.local/ns/default/sa/app1" in body["error"]["message"]
        # app2 has its own bucket.
        assert call(env.port, tmp_path, "app2")[0] == 200
        assert emulator.stats()["requests_total"] == 3
    finally:
        env.stop()
