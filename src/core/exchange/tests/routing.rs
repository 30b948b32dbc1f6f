//! Strategies and the retry budget through the request's life
//! (tests/e2e/test_routing.py).

use super::*;
use crate::core::telemetry::{
    BUDGETED_RETRIES_TOTAL, FAILOVERS_TOTAL, RETRIES_DENIED_TOTAL, STRATEGY_CHOICES_TOTAL,
};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Two clusters whose circuits never open (the strategy alone decides).
fn pair(route: Value) -> Envoy {
    let circuit = json!({"consecutive_failures": 0, "error_rate": 1.0, "min_requests": 100_000});
    let mut r = json!({"clusters": ["a", "b"]});
    if let (Some(r), Some(extra)) = (r.as_object_mut(), route.as_object()) {
        r.extend(extra.clone());
    }
    Envoy::new(json!({
        "upstream_filter": false,
        "clusters": {
            "a": {"provider": "openai", "circuit": circuit},
            "b": {"provider": "openai", "circuit": circuit}
        },
        "routes": {"chat": r}
    }))
}

/// One request answered after `ms`; returns the cluster of its first attempt.
fn call_taking(env: &mut Envoy, ms: impl Fn(&str) -> u64) -> String {
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let first = match env.host.property_str("llmcap_try_1") {
        // The route already pointed at the chain's first cluster.
        Some(c) if env.host.route_cache_clears > 0 => c,
        _ => "a".to_string(),
    };
    env.host.route_cache_clears = 0;
    env.host.properties.remove("llmcap_try_1");
    env.host.advance(ms(&first));
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    first
}

#[test]
fn weighted_first_attempts_follow_the_weights_and_are_not_failovers() {
    let mut env = pair(json!({
        "strategy": "weighted",
        "clusters": [{"cluster": "a", "weight": 70}, {"cluster": "b", "weight": 30}]
    }));
    let n = 2000;
    let on_b = (0..n)
        .filter(|_| call_taking(&mut env, |_| 10) == "b")
        .count();
    assert!((540..=660).contains(&on_b), "b took {on_b} of {n}");
    let choices = |c| {
        env.host
            .counter(STRATEGY_CHOICES_TOTAL, &[("route", "chat"), ("cluster", c)])
    };
    assert_eq!(
        (choices("a") + choices("b"), choices("b")),
        (n as u64, on_b as u64)
    );
    assert_eq!(
        env.host
            .counter(FAILOVERS_TOTAL, &[("route", "chat"), ("cluster", "b")]),
        0
    );
    // The last answer: the router still has the other cluster for a retry.
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("1"));
    assert_eq!(env.filter_state().get("failover"), None);
}

#[test]
fn lowest_latency_learns_from_answers_and_explores_back_a_recovered_cluster() {
    let mut env = pair(json!({
        "strategy": "lowest_latency",
        "lowest_latency": {"exploration": 0.05, "half_life_seconds": 5}
    }));
    // a is slow (800 ms to first token), b fast (50 ms); 20 requests a second.
    let slow_a = |c: &str| if c == "a" { 800 } else { 50 };
    let firsts: Vec<String> = (0..600).map(|_| call_taking(&mut env, slow_a)).collect();
    let on_b = firsts[100..].iter().filter(|c| *c == "b").count();
    assert!(on_b >= 450, "b took {on_b} of 500 (at least 90%)");
    let explored = 500 - on_b;
    assert!(explored >= 5, "a was measured again only {explored} times");
    // a recovers (40 ms): explored requests bring its average down, and it
    // takes its share back.
    let fast = |c: &str| if c == "a" { 40 } else { 50 };
    let firsts: Vec<String> = (0..1200).map(|_| call_taking(&mut env, fast)).collect();
    let on_a = firsts[800..].iter().filter(|c| *c == "a").count();
    assert!(on_a >= 120, "a took {on_a} of the last 400");
}

#[test]
fn a_spent_retry_budget_tells_the_router_no_retries_and_counts_what_it_denied() {
    let mut env = pair(json!({"retry_budget_percent": 10}));
    let (mut capped, mut retried) = (0, 0);
    for _ in 0..200 {
        let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
        let retries = env
            .host
            .request_header("x-envoy-max-retries")
            .map(str::to_string);
        // A 503 storm: the router retries whenever it may, and that fails too.
        let attempts: u64 = if retries.as_deref() == Some("1") {
            2
        } else {
            1
        };
        if attempts == 2 {
            retried += 1;
        } else {
            capped += 1;
        }
        env.host
            .set_property_str("upstream.request_attempt_count", &attempts.to_le_bytes());
        env.host.advance(5);
        env.answer(&mut x, 503, &[], &["{}"]);
        env.end(&mut x);
    }
    // 10% of 200 requests (the floor of 10 only lets the first ones retry sooner).
    assert!((20..=23).contains(&retried), "{retried} retried");
    assert_eq!(capped, 200 - retried);
    let c = |name| env.host.counter(name, &[("route", "chat")]);
    assert_eq!(c(RETRIES_DENIED_TOTAL), capped as u64);
    assert_eq!(c(BUDGETED_RETRIES_TOTAL), retried as u64);
    // Sixty seconds on, the window has slid: retries are allowed again.
    env.host.advance(121_000);
    let (_x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("1"));
}

#[test]
fn a_single_cluster_route_is_budgeted_only_when_asked() {
    let mut env = Envoy::new(json!({
        "upstream_filter": false,
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"plain": {"clusters": ["a"]}, "capped": {"clusters": ["a"], "retry_budget_percent": 0}}
    }));
    for route in ["plain", "capped"] {
        for _ in 0..12 {
            let (mut x, _) = env.send(route, &[], Some(CHAT_BODY));
            env.host
                .set_property_str("upstream.request_attempt_count", &2u64.to_le_bytes());
            env.answer(&mut x, 200, &[], &["{}"]);
            env.end(&mut x);
        }
    }
    // The route's own retry policy stays (no header) until the budget is spent.
    let (_x, _) = env.send("plain", &[], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-envoy-max-retries"), None);
    let (_x, _) = env.send("capped", &[], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("0"));
    assert_eq!(
        env.host
            .counter(BUDGETED_RETRIES_TOTAL, &[("route", "plain")]),
        0
    );
    assert_eq!(
        env.host
            .counter(BUDGETED_RETRIES_TOTAL, &[("route", "capped")]),
        12
    );
}
