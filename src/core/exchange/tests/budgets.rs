//! Session and tenant budgets (tests/e2e/test_budgets.py).

use super::*;
use crate::core::telemetry::{BUDGET_EXCEEDED_TOTAL, SPEND_MICRODOLLARS_TOTAL};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn budgeted(session: Value) -> Envoy {
    Envoy::new(json!({
        "prices": {"gpt-4o": {"input": 2.5, "output": 10}},
        "routes": {"chat": {"session_budget": session}}
    }))
}

const S1: (&str, &str) = ("x-session-id", "s1");

#[test]
fn a_required_session_header_missing_is_a_400() {
    let mut env = budgeted(json!({"header": "x-session-id", "required": true, "max_calls": 5}));
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 400);
    assert_eq!(
        env.reply_json()["error"]["message"],
        "This route requires the x-session-id header naming the agent session."
    );
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_no_session"), 1);
}

#[test]
fn calls_past_max_calls_are_a_402_that_says_do_not_retry() {
    let mut env = budgeted(json!({"header": "x-session-id", "max_calls": 2}));
    env.call("chat", &[S1], 10, 10);
    env.call("chat", &[S1], 10, 10);
    let (mut x, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 402);
    assert_eq!(env.reply_header("x-should-retry"), Some("false"));
    assert_eq!(env.reply_json()["error"]["code"], "session_budget_exceeded");
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(
        env.host.counter(
            BUDGET_EXCEEDED_TOTAL,
            &[("route", "chat"), ("scope", "session"), ("limit", "calls")]
        ),
        1
    );
    assert_eq!(env.requests("chat", "rejected_budget"), 1);
    // Another session is not affected.
    let (_, flow) = env.send("chat", &[("x-session-id", "s2")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn every_answer_says_what_the_session_has_left() {
    let mut env = budgeted(json!({"header": "x-session-id", "max_calls": 3}));
    let (mut x, _) = env.send("chat", &[S1], Some(CHAT_BODY));
    env.answer_usage(&mut x, 10, 10);
    assert_eq!(
        env.host
            .response_header("x-llm-capacity-session-remaining-calls"),
        Some("2")
    );
}

#[test]
fn the_loop_breaker_is_a_429_until_its_window_passes() {
    let mut env = budgeted(json!({"header": "x-session-id", "calls_per_minute": 1}));
    env.call("chat", &[S1], 1, 1);
    let (_, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 429);
    assert_eq!(env.reply_json()["error"]["code"], "session_rate_limited");
    assert_eq!(env.reply_header("retry-after"), Some("60"));
    env.host.advance(60_000);
    let (_, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn spend_is_priced_from_the_real_usage() {
    let mut env = budgeted(json!({"header": "x-session-id", "max_spend_usd": 1}));
    // 1M input tokens at 2.5 USD, 100k output at 10 USD: 3.5 USD.
    env.call("chat", &[S1], 1_000_000, 100_000);
    assert_eq!(
        env.host
            .counter(SPEND_MICRODOLLARS_TOTAL, &[("route", "chat")]),
        3_500_000
    );
    // Over its 1 USD: the next call is refused.
    let (_, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 402);
}

#[test]
fn a_tenant_spend_cap_refuses_and_refunds_the_session() {
    let mut env = Envoy::new(json!({
        "prices": {"*": {"input": 1000, "output": 1000}},
        "routes": {"chat": {
            "session_budget": {"header": "x-session-id", "max_calls": 2},
            "tenant_budget": {"header": "x-tenant", "trust_header": true, "spend_per_day_usd": 1}
        }}
    }));
    env.call("chat", &[S1, ("x-tenant", "t")], 1_000, 1_000); // 2 USD spent
    let (_, flow) = env.send("chat", &[S1, ("x-tenant", "t")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.reply_json()["error"]["code"], "tenant_budget_exceeded");
    // The refused call did not use the session's second call.
    let (_, flow) = env.send("chat", &[S1, ("x-tenant", "u")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn a_request_refused_by_a_limit_gives_its_budget_back() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "session_budget": {"header": "x-session-id", "max_calls": 2},
        "limits": {"requests_per_minute": 1}
    }}}));
    env.call("chat", &[S1], 1, 1);
    let (_, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!((flow, env.last_reply().status), (Flow::Pause, 429));
    env.host.advance(60_000);
    // Still one call left: the refused one was not counted.
    let (_, flow) = env.send("chat", &[S1], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}
