//! The context-window pre-check: entries that cannot hold the request are
//! skipped, and none fitting is a provider-format 400 (tests/e2e/test_model_limits.py).

use super::*;
use crate::core::telemetry::{CONTEXT_WINDOW_SKIPS_TOTAL, UNKNOWN_MODELS_TOTAL};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn chain(small_window: u64) -> Envoy {
    Envoy::new(json!({
        "models": {
            "small-model": {"context_window": small_window, "max_output_tokens": 500},
            "big-model*": {"context_window": 100_000, "max_output_tokens": 4_000}
        },
        "clusters": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
        "routes": {
            "chat": {"clusters": [{"cluster": "a", "model": "small-model"}, {"cluster": "b", "model": "big-model-1"}]},
            "solo": {"clusters": [{"cluster": "a", "model": "small-model"}]},
            "bare": {}
        }
    }))
}

/// About `words` tokens of prompt, with a 100-token cap.
fn long_chat(model: &str, words: usize) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "word ".repeat(words)}], "max_tokens": 100})
        .to_string()
}

#[test]
fn a_prompt_over_the_primarys_window_goes_to_the_larger_entry() {
    let mut env = chain(1_000);
    let body = long_chat("small-model", 2_000);
    let (mut x, flow) = env.send("chat", &[], Some(&body));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(env.host.property_str("llmcap_try_1").as_deref(), Some("b"));
    let sent: Value = serde_json::from_slice(&env.host.request_body).unwrap();
    assert_eq!(sent["model"], "big-model-1");
    assert_eq!(
        env.host.counter(
            CONTEXT_WINDOW_SKIPS_TOTAL,
            &[("route", "chat"), ("cluster", "a")]
        ),
        1
    );
    env.answer_usage(&mut x, 2_000, 5);
    env.end(&mut x);
    assert_eq!(
        env.host.response_header("x-llm-capacity-fallback"),
        Some("true")
    );
    assert_eq!(env.host.route_cache_clears, 1, "the route moved to b");
    // A short prompt stays on the primary: the route is left alone.
    let (_x, flow) = env.send("chat", &[], Some(&long_chat("small-model", 10)));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(env.host.route_cache_clears, 1);
    let sent: Value = serde_json::from_slice(&env.host.request_body).unwrap();
    assert_eq!(sent["model"], "small-model");
}

#[test]
fn the_fit_includes_the_margin_and_the_output_allowance() {
    // 15% margin: the reservation is input * 1.15 + 100 output.
    let mut env = chain(1_000_000);
    let body = long_chat("small-model", 600);
    let pre = estimate(&env, "solo", &body);
    let need = pre.reserved_input + pre.output_allowance;
    assert!(need > pre.input_estimate + 100, "margin counted");
    env = chain(need);
    let (_, flow) = env.send("solo", &[], Some(&body));
    assert_eq!(flow, Flow::Continue, "exactly the window fits");
    env = chain(need - 1);
    let (_, flow) = env.send("solo", &[], Some(&body));
    assert_eq!(flow, Flow::Pause, "one token over does not");
    assert_eq!(env.last_reply().status, 400);
}

#[test]
fn no_entry_fitting_is_an_openai_400_that_names_the_estimate_and_the_window() {
    let mut env = chain(1_000);
    let body = long_chat("small-model", 2_000);
    let pre = estimate(&env, "solo", &body);
    let (mut x, flow) = env.send("solo", &[], Some(&body));
    assert_eq!(flow, Flow::Pause);
    let r = env.last_reply().clone();
    assert_eq!(r.status, 400);
    assert_eq!(env.reply_header("x-should-retry"), Some("false"));
    let e = &env.reply_json()["error"];
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(
        e["message"],
        format!(
            "This request needs about {} tokens ({} input, estimated with the route's margin, plus 100 output), more than the context window of small-model (1000 tokens), the largest this route can send it to.",
            pre.reserved_input + 100,
            pre.reserved_input
        )
    );
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("solo", "rejected_context_window"), 1);
    let s = env.filter_state();
    assert_eq!(s["outcome"], "rejected_context_window");
    assert_eq!(s["context_window"], 1_000);
}

#[test]
fn an_anthropic_route_answers_in_anthropics_format() {
    let mut env = chain(1_000);
    let body = json!({"model": "small-model", "max_tokens": 100,
        "messages": [{"role": "user", "content": "word ".repeat(2_000)}]})
    .to_string();
    let headers = [(":path", "/v1/messages"), (":method", "POST")];
    let mut x = env.stream("bare", &headers);
    // "bare" has no chain: the client's model is checked.
    let flow = env.deliver(&mut x, Some(&body));
    assert_eq!(flow, Flow::Pause);
    let v = env.reply_json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("context window of small-model (1000 tokens)")));
    assert_eq!(
        env.reply_header("x-llm-capacity"),
        Some("context_length_exceeded")
    );
}

#[test]
fn max_tokens_over_every_models_maximum_output_is_refused_the_same_way() {
    let mut env = chain(100_000);
    let body = json!({"model": "small-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}).to_string();
    let (_, flow) = env.send("solo", &[], Some(&body));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        env.reply_json()["error"]["message"],
        "max_tokens is 600, more than the maximum output of small-model (500 tokens)."
    );
    // The chain's larger entry takes it.
    let (_, flow) = env.send("chat", &[], Some(&body));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(env.host.property_str("llmcap_try_1").as_deref(), Some("b"));
}

#[test]
fn an_unknown_model_goes_unchecked_and_is_counted() {
    let mut env = chain(1_000);
    let body = long_chat("mystery-llm", 2_000);
    let (_, flow) = env.send("bare", &[], Some(&body));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(
        env.host.counter(UNKNOWN_MODELS_TOTAL, &[("route", "bare")]),
        1
    );
}
