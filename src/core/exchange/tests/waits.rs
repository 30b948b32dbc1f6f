//! No attempt reaches a rate-limited cluster before its wait (issue 16;
//! tests/e2e/test_wait.py): the wait every 429 implies, the router's wait for a
//! same-cluster retry (or no retry), and the gate on retries at send time.

use super::*;
use crate::core::telemetry::{COOLDOWNS_TOTAL, UPSTREAM_ATTEMPTS_TOTAL};
use crate::core::upstream::failover::{encode_plan, PLAN_PROPERTY, RETRY_AFTER_HEADER};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn single(default_cooldown: f64) -> Envoy {
    Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"a": {"provider": "openai",
            "circuit": {"default_cooldown_seconds": default_cooldown}}},
        "routes": {"chat": {"clusters": ["a"]}}
    }))
}

/// Plays the upstream instance for one attempt of `stream` on cluster `a`.
fn attempt(env: &mut Envoy, stream: u32, retry_by: Option<u64>) -> (UpstreamAttempt, Flow) {
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan("chat", None, None, stream, retry_by).as_bytes(),
    );
    env.host.set_property_str("xds.cluster_name", b"a");
    env.host.request_headers = vec![(":path".into(), CHAT.into())];
    env.host.response_headers.clear();
    let mut a = env.upstream();
    let flow = a.on_request_headers(&mut env.host, true);
    (a, flow)
}

fn answer_429(env: &mut Envoy, a: &mut UpstreamAttempt, headers: &[(&str, &str)]) {
    env.host.response_headers = vec![(":status".into(), "429".into())];
    for (k, v) in headers {
        env.host
            .response_headers
            .push((k.to_string(), v.to_string()));
    }
    a.on_response_headers(&mut env.host);
}

#[test]
fn a_bare_429_cools_down_for_the_default_and_the_router_waits_it() {
    let mut env = single(2.0);
    let (mut a, flow) = attempt(&mut env, 1, None);
    assert_eq!(flow, Flow::Continue);
    answer_429(&mut env, &mut a, &[]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), Some("2"));
    assert_eq!(env.host.response_header("retry-after"), Some("2"));
    assert_eq!(env.host.response_header("x-envoy-ratelimited"), None);
    assert_eq!(
        env.host.counter(COOLDOWNS_TOTAL, &[("cluster", "a")]),
        1,
        "a bare 429's cool-down is counted"
    );
}

#[test]
fn with_no_default_a_bare_429_gates_nothing() {
    let mut env = single(0.0);
    let (mut a, _) = attempt(&mut env, 1, None);
    answer_429(&mut env, &mut a, &[]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), None);
    assert_eq!(env.host.response_header("retry-after"), None);
    assert_eq!(env.host.counter(COOLDOWNS_TOTAL, &[("cluster", "a")]), 0);
    // Its retry goes (no cool-down to wait for).
    let (_r, flow) = attempt(&mut env, 1, None);
    assert_eq!(flow, Flow::Continue);
    assert!(env.host.replies.is_empty());
}

#[test]
fn reset_headers_alone_are_the_wait_and_the_client_is_told() {
    let mut env = single(1.0);
    let (mut a, _) = attempt(&mut env, 1, None);
    answer_429(
        &mut env,
        &mut a,
        &[
            ("x-ratelimit-reset-requests", "3s"),
            ("x-ratelimit-reset-tokens", "7s"),
        ],
    );
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), Some("3"));
    assert_eq!(env.host.response_header("retry-after"), Some("3"));
}

#[test]
fn a_wait_the_router_cannot_make_or_the_deadline_cannot_absorb_is_not_retried() {
    let mut env = single(1.0);
    let (mut a, _) = attempt(&mut env, 1, None);
    answer_429(&mut env, &mut a, &[("retry-after", "40")]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), None);
    assert_eq!(
        env.host.response_header("x-envoy-ratelimited"),
        Some("true")
    );
    assert_eq!(env.host.response_header("retry-after"), Some("40"));
    // A 3 s wait with the client's deadline 4 s away (the latest retry, at 4.5 s, is too late).
    let mut env = single(1.0);
    let now = env.host.now_ms.get();
    let (mut a, _) = attempt(&mut env, 2, Some(now + 4_000));
    answer_429(&mut env, &mut a, &[("retry-after", "3")]);
    assert_eq!(
        env.host.response_header("x-envoy-ratelimited"),
        Some("true")
    );
    let mut env = single(1.0);
    let now = env.host.now_ms.get();
    let (mut a, _) = attempt(&mut env, 3, Some(now + 4_500));
    answer_429(&mut env, &mut a, &[("retry-after", "3")]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), Some("3"));
    assert_eq!(env.host.response_header("x-envoy-ratelimited"), None);
}

#[test]
fn a_chain_hands_no_wait_to_the_router() {
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
        "routes": {"chat": {"clusters": ["a", "b"]}}
    }));
    let (mut a, _) = attempt(&mut env, 1, None);
    answer_429(&mut env, &mut a, &[("retry-after", "5")]);
    assert_eq!(env.host.response_header(RETRY_AFTER_HEADER), None);
    assert_eq!(env.host.response_header("x-envoy-ratelimited"), None);
}

#[test]
fn retries_are_gated_when_sent_and_only_one_probe_goes_after_the_cool_down() {
    let mut env = single(2.0);
    // Two requests reach the provider together; both get a bare 429.
    let (mut a1, _) = attempt(&mut env, 1, None);
    let (mut a2, _) = attempt(&mut env, 2, None);
    answer_429(&mut env, &mut a1, &[]);
    answer_429(&mut env, &mut a2, &[]);
    // A retry inside the cool-down is answered here, never sent.
    env.host.advance(500);
    let (_r, flow) = attempt(&mut env, 1, None);
    assert_eq!(flow, Flow::Pause);
    let r = env.host.replies.last().expect("answered by the gate");
    assert_eq!(r.status, 429);
    assert!(
        r.headers.contains(&("retry-after".into(), "2".into())),
        "{:?}",
        r.headers
    );
    assert!(r
        .headers
        .contains(&("x-envoy-ratelimited".into(), "true".into())));
    // After it, the first retry is the probe; the second is kept away.
    env.host.advance(1_600);
    let (mut probe, flow) = attempt(&mut env, 1, None);
    assert_eq!(flow, Flow::Continue);
    let (_r2, flow) = attempt(&mut env, 2, None);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.host.replies.len(), 2);
    // The probe's success ends the cool-down: retries go again.
    env.host.response_headers = vec![(":status".into(), "200".into())];
    probe.on_response_headers(&mut env.host);
    let (_r3, flow) = attempt(&mut env, 2, None);
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn a_first_attempt_is_not_gated_again_and_a_gated_answer_says_nothing_of_the_provider() {
    let mut env = single(2.0);
    let (mut a1, _) = attempt(&mut env, 1, None);
    answer_429(&mut env, &mut a1, &[]);
    // Another stream's first attempt was planned by the downstream gate: not re-gated.
    let (_b, flow) = attempt(&mut env, 5, None);
    assert_eq!(flow, Flow::Continue);
    // A gated retry's own reply is not recorded as the cluster's answer.
    let (mut g, flow) = attempt(&mut env, 1, None);
    assert_eq!(flow, Flow::Pause);
    env.host.response_headers = vec![(":status".into(), "429".into())];
    g.on_response_headers(&mut env.host);
    g.on_end(&mut env.host);
    assert_eq!(
        env.host.counter(
            UPSTREAM_ATTEMPTS_TOTAL,
            &[("cluster", "a"), ("class", "rate_limited")]
        ),
        1
    );
}
