//! The threat model's claims (tests/e2e/test_security.py, test_tenant_identity.py).

use super::*;
use crate::core::upstream::failover::RETRY_AFTER_HEADER;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn held() -> Envoy {
    Envoy::new(json!({
        "queue_hold": "fault_filter",
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {"clusters": ["a"], "limits": {"requests_per_minute": 100}}}
    }))
}

#[test]
fn a_clients_fault_filter_headers_are_stripped() {
    let mut env = held();
    let (_, _) = env.send(
        "chat",
        &[
            ("x-envoy-fault-delay-request", "60000"),
            ("x-envoy-fault-abort-request", "503"),
            ("x-envoy-fault-delay-request-percentage", "100"),
            ("x-llm-capacity-hold", "1"),
            ("x-keep", "yes"),
        ],
        Some(CHAT_BODY),
    );
    for h in [
        "x-envoy-fault-delay-request",
        "x-envoy-fault-abort-request",
        "x-envoy-fault-delay-request-percentage",
        "x-llm-capacity-hold",
    ] {
        assert_eq!(env.host.request_header(h), None, "{h}");
    }
    assert_eq!(env.host.request_header("x-keep"), Some("yes"));
}

#[test]
fn the_hold_marker_is_stripped_on_routes_without_a_policy() {
    let mut env = held();
    let (_, _) = env.send("other", &[("x-llm-capacity-hold", "1")], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-llm-capacity-hold"), None);
}

#[test]
fn a_clients_attempt_count_cannot_steer_the_cluster() {
    let mut env = held();
    let (_, _) = env.send("chat", &[("x-envoy-attempt-count", "3")], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-envoy-attempt-count"), None);
}

#[test]
fn the_routers_retry_wait_never_reaches_the_client() {
    let mut env = held();
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(&mut x, 200, &[(RETRY_AFTER_HEADER, "5")], &["{}"]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), None);
}

#[test]
fn a_tenant_header_is_cut_at_128_bytes() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "tenant_limits": {"header": "x-tenant", "trust_header": true, "requests_per_minute": 1}
    }}}));
    let long = "t".repeat(300);
    env.call("chat", &[("x-tenant", &long)], 1, 1);
    let (_, flow) = env.send("chat", &[("x-tenant", &long)], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    let msg = env.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!("tenant \"{}\" on route", "t".repeat(128))),
        "{msg}"
    );
}

#[test]
fn the_tenant_can_come_from_the_peer_certificate() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "tenant_limits": {"identity": "peer_certificate", "requests_per_minute": 1}
    }}}));
    env.host.set_property_str(
        "connection.uri_san_peer_certificate",
        b"spiffe://cluster.local/ns/default/sa/app1",
    );
    env.call("chat", &[("x-tenant", "forged")], 1, 1);
    let (_, flow) = env.send("chat", &[("x-tenant", "other")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause, "a header cannot pick another tenant");
    let msg = env.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("tenant \"spiffe://cluster.local/ns/default/sa/app1\""),
        "{msg}"
    );
}
