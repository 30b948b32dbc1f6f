//! Answers that say who served them, and spend priced by the model that
//! answered (tests/e2e/test_model_limits.py).

use super::*;
use crate::core::telemetry::SPEND_MICRODOLLARS_TOTAL;
use crate::core::upstream::failover::{encode_plan_asked, PLAN_PROPERTY};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn chain(upstream_filter: bool) -> Envoy {
    Envoy::new(json!({
        "upstream_filter": upstream_filter,
        "prices": {"gpt-4o": {"input": 2.5, "output": 10}, "gpt-4o-mini": {"input": 0.15, "output": 0.6}},
        "clusters": {
            "a": {"provider": "openai", "circuit": {"consecutive_failures": 1, "open_seconds": 10}},
            "b": {"provider": "openai"}
        },
        "routes": {"chat": {
            "clusters": ["a", {"cluster": "b", "model": "gpt-4o-mini"}],
            "session_budget": {"header": "x-session-id", "max_spend_usd": 100}
        }}
    }))
}

fn served(env: &Envoy) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        env.host.response_header("x-llm-capacity-served-by"),
        env.host.response_header("x-llm-capacity-model"),
        env.host.response_header("x-llm-capacity-fallback"),
    )
}

/// The upstream instance's attempt on `cluster`, answered `status` (with a
/// provider that sends forged served-by headers of its own).
fn attempt(env: &mut Envoy, cluster: &str, status: u32) {
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan_asked("chat", Some("gpt-4o"), Some("gpt-4o"), None, 1, None, false).as_bytes(),
    );
    env.host
        .set_property_str("xds.cluster_name", cluster.as_bytes());
    env.host.request_headers = vec![(":path".into(), CHAT.into())];
    env.host.request_body = CHAT_BODY.as_bytes().to_vec();
    let mut a = env.upstream();
    a.on_request_headers(&mut env.host, false);
    a.on_request_body(&mut env.host, CHAT_BODY.len(), true);
    env.host.response_headers = vec![
        (":status".into(), status.to_string()),
        ("x-llm-capacity-served-by".into(), "forged".into()),
        ("x-llm-capacity-fallback".into(), "false".into()),
    ];
    a.on_response_headers(&mut env.host);
}

#[test]
fn each_attempt_says_which_cluster_and_model_served_it() {
    let mut env = chain(true);
    attempt(&mut env, "a", 200);
    assert_eq!(served(&env), (Some("a"), Some("gpt-4o"), Some("false")));
    attempt(&mut env, "b", 200);
    assert_eq!(
        served(&env),
        (Some("b"), Some("gpt-4o-mini"), Some("true")),
        "the provider's own copies are replaced"
    );
}

#[test]
fn the_downstream_says_who_served_when_there_is_no_upstream_instance() {
    let mut env = chain(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(&mut x, 503, &[("x-llm-capacity-fallback", "false")], &[]);
    assert_eq!(served(&env), (Some("a"), Some("gpt-4o"), Some("false")));
    env.end(&mut x);
    // a is open now: b serves, with its own model.
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer_usage(&mut x, 10, 10);
    assert_eq!(served(&env), (Some("b"), Some("gpt-4o-mini"), Some("true")));
    env.end(&mut x);
    assert_eq!(env.filter_state()["served_by"], "b");
}

#[test]
fn a_client_cannot_send_the_served_by_headers_on() {
    let mut env = chain(true);
    let (_x, flow) = env.send(
        "chat",
        &[
            ("x-llm-capacity-served-by", "a"),
            ("x-llm-capacity-fallback", "false"),
        ],
        Some(CHAT_BODY),
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(env.host.request_header("x-llm-capacity-served-by"), None);
    assert_eq!(env.host.request_header("x-llm-capacity-fallback"), None);
}

#[test]
fn a_fallback_answer_is_priced_as_the_fallback_model() {
    let mut env = chain(true);
    let (mut x, _) = env.send("chat", &[("x-session-id", "s")], Some(CHAT_BODY));
    // The upstream instance's headers, as the fallback's attempt wrote them.
    let body = r#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":1000000,"completion_tokens":100000,"total_tokens":1100000}}"#;
    env.answer(
        &mut x,
        200,
        &[
            ("content-type", "application/json"),
            ("x-llm-capacity-served-by", "b"),
            ("x-llm-capacity-model", "gpt-4o-mini"),
            ("x-llm-capacity-fallback", "true"),
        ],
        &[body],
    );
    env.end(&mut x);
    // 1M input at $0.15 and 100k output at $0.60: $0.21, not gpt-4o's $3.50.
    assert_eq!(
        env.host
            .counter(SPEND_MICRODOLLARS_TOTAL, &[("route", "chat")]),
        210_000
    );
    assert_eq!(env.filter_state()["served_by"], "b");
}
