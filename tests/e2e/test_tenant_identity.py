"""Tenants from the mesh's identity: the downstream mTLS peer certificate (its URI
SAN, a SPIFFE ID in Istio), in real Envoy with client certificates."""

import http.client
import json
import ssl
import subprocess

import harness


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=test-ca", cwd=d)

    def leaf(name, san):
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)

    leaf("server", "IP:127.0.0.1")
    leaf("app1", "URI:spiffe://cluster.local/ns/default/sa/app1")
    leaf("app2", "URI:spiffe://cluster.local/ns/default/sa/app2")


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
    make_pki(tmp_path)
    cfg = harness.localize(harness.load_envoy_config(), emulator.api_port)
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(tmp_path / "server.pem")},
                                      "private_key": {"filename": str(tmp_path / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(tmp_path / "ca.pem")}},
            },
        },
    }
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
