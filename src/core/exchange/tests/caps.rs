//! Per-request caps: turns and cost, refused before anything leaves
//! (tests/e2e/test_model_limits.py).

use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn chat_with(turns: usize, max_tokens: u64) -> String {
    let messages: Vec<Value> = (0..turns)
        .map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": "again"}))
        .collect();
    json!({"model": "gpt-4o", "messages": messages, "max_tokens": max_tokens}).to_string()
}

#[test]
fn a_conversation_over_max_messages_is_a_400_that_never_leaves() {
    let mut env = Envoy::new(json!({
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {"clusters": ["a"], "max_messages": 4, "limits": {"requests_per_minute": 1}}}
    }));
    let (mut x, flow) = env.send("chat", &[], Some(&chat_with(4, 10)));
    assert_eq!(flow, Flow::Continue, "at the cap it goes");
    env.answer_usage(&mut x, 5, 5);
    env.end(&mut x);
    let (mut x, flow) = env.send("chat", &[], Some(&chat_with(5, 10)));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 400);
    assert_eq!(env.reply_json()["error"]["code"], "too_many_turns");
    assert_eq!(env.reply_header("x-should-retry"), Some("false"));
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_too_many_turns"), 1);
    assert_eq!(env.filter_state()["outcome"], "rejected_too_many_turns");
    // Checked before the limits: the minute's one request is spent, yet the
    // answer is the 400 (a 429 would say to wait, which cannot help).
}

#[test]
fn the_cost_cap_prices_the_model_of_the_attempt_it_would_go_to() {
    // The primary is open: the request would go to b, whose model is dearer.
    let mut env = Envoy::new(json!({
        "prices": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}, "o1": {"input": 15, "output": 60}},
        "clusters": {
            "a": {"provider": "openai", "circuit": {"consecutive_failures": 1, "open_seconds": 10}},
            "b": {"provider": "openai"}
        },
        "routes": {"chat": {
            "clusters": [{"cluster": "a", "model": "gpt-4o-mini"}, {"cluster": "b", "model": "o1"}],
            "max_request_cost_usd": 0.01
        }}
    }));
    // 1000 output tokens: $0.0006 at gpt-4o-mini, $0.06 at o1.
    let body = chat_with(1, 1000);
    let (mut x, flow) = env.send("chat", &[], Some(&body));
    assert_eq!(flow, Flow::Continue, "the primary's model is cheap enough");
    env.answer(&mut x, 503, &[], &[]);
    env.end(&mut x);
    let (mut x, flow) = env.send("chat", &[], Some(&body));
    assert_eq!(flow, Flow::Pause, "a is open: b's price decides");
    assert_eq!(env.last_reply().status, 402);
    assert_eq!(env.reply_json()["error"]["code"], "request_cost_exceeded");
    assert_eq!(env.reply_header("x-should-retry"), Some("false"));
    let m = env.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains(" at o1 "), "{m}");
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_request_cost"), 1);
}

#[test]
fn a_model_without_a_price_is_not_cost_checked() {
    let mut env = Envoy::new(json!({
        "prices": {"o1": {"input": 15, "output": 60}},
        "routes": {"chat": {"max_request_cost_usd": 0.000001}}
    }));
    let (_x, flow) = env.send("chat", &[], Some(&chat_with(1, 1000)));
    assert_eq!(flow, Flow::Continue);
}
