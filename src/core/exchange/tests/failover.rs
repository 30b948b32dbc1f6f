//! Failover planning and per-attempt records (tests/e2e/test_failover.py).

use super::*;
use crate::core::exchange::attempt::AttemptPhase;
use crate::core::host::Map;
use crate::core::telemetry::{
    CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL, COOLDOWNS_TOTAL, FAILOVERS_TOTAL,
    UPSTREAM_ATTEMPTS_TOTAL,
};
use crate::core::upstream::failover::{encode_plan, PLAN_PROPERTY, RETRY_AFTER_HEADER};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn chain(upstream_filter: bool) -> Envoy {
    Envoy::new(json!({
        "upstream_filter": upstream_filter,
        "clusters": {
            "a": {"provider": "openai", "circuit": {"consecutive_failures": 1, "open_seconds": 10}},
            "b": {"provider": "openai", "circuit": {"consecutive_failures": 1, "open_seconds": 10}}
        },
        "routes": {"chat": {"clusters": ["a", {"cluster": "b", "model": "gpt-4o-mini"}]}}
    }))
}

fn attempts(env: &Envoy, cluster: &str, class: &str) -> u64 {
    env.host.counter(
        UPSTREAM_ATTEMPTS_TOTAL,
        &[("cluster", cluster), ("class", class)],
    )
}

/// Without an upstream instance the final answer opens `a` (one failure).
fn open_a(env: &mut Envoy) {
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(&mut x, 503, &[], &[]);
    env.end(&mut x);
}

#[test]
fn a_healthy_chain_goes_to_the_primary_with_one_retry_left() {
    let mut env = chain(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.property_str("llmcap_try_2").as_deref(), Some("b"));
    assert_eq!(
        env.host.property_str("llmcap_try_1"),
        None,
        "the route already points at a"
    );
    assert_eq!(env.host.route_cache_clears, 0);
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("1"));
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    let s = env.filter_state();
    assert_eq!(
        (s["cluster"].as_str(), s["gen_ai.provider.name"].as_str()),
        (Some("a"), Some("openai"))
    );
    assert_eq!(s.get("failover"), None);
    assert_eq!(attempts(&env, "a", "ok"), 1);
}

#[test]
fn an_open_primary_sends_the_request_to_the_next_cluster_with_its_model() {
    let mut env = chain(false);
    open_a(&mut env);
    assert_eq!(env.host.gauge(CIRCUIT_STATE, &[("cluster", "a")]), Some(2));
    assert_eq!(
        env.host.counter(
            CIRCUIT_TRANSITIONS_TOTAL,
            &[("cluster", "a"), ("state", "open")]
        ),
        1
    );
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.property_str("llmcap_try_1").as_deref(), Some("b"));
    assert_eq!(env.host.route_cache_clears, 1);
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("0"));
    assert_eq!(
        env.host
            .counter(FAILOVERS_TOTAL, &[("route", "chat"), ("cluster", "b")]),
        1
    );
    // The body now asks for b's model, and its length follows.
    let body: Value = serde_json::from_slice(&env.host.request_body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        env.host.request_header("content-length"),
        Some(env.host.request_body.len().to_string().as_str())
    );
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    assert_eq!(env.filter_state()["failover"], true);
}

#[test]
fn every_cluster_open_is_a_503_with_retry_after() {
    let mut env = chain(false);
    open_a(&mut env);
    open_a(&mut env); // this one went to b, and opens it
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    let r = env.last_reply().clone();
    assert_eq!(r.status, 503);
    assert!(env.reply_header("retry-after").is_some());
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_no_upstream"), 1);
}

#[test]
fn the_final_answer_is_recorded_against_the_attempt_that_gave_it() {
    let mut env = chain(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    // The router retried: the second attempt (slot 2, cluster b) answered.
    env.host
        .set_property_str("upstream.request_attempt_count", &2u64.to_le_bytes());
    env.answer(&mut x, 200, &[], &["{}"]);
    env.end(&mut x);
    assert_eq!(attempts(&env, "b", "ok"), 1);
    assert_eq!(attempts(&env, "a", "ok"), 0);
}

#[test]
fn a_429_cools_the_cluster_down_for_the_wait_it_names() {
    let mut env = chain(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(&mut x, 429, &[("retry-after", "30")], &[]);
    env.end(&mut x);
    assert_eq!(env.host.counter(COOLDOWNS_TOTAL, &[("cluster", "a")]), 1);
    assert_eq!(attempts(&env, "a", "rate_limited"), 1);
    // While a cools down the next request goes to b.
    env.host.advance(29_000);
    let (_, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.property_str("llmcap_try_1").as_deref(), Some("b"));
}

#[test]
fn with_an_upstream_instance_the_plan_is_published_for_it() {
    let mut env = chain(true);
    let (_x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(
        env.host.property_str(PLAN_PROPERTY).as_deref(),
        Some(encode_plan("chat", Some("gpt-4o"), None, 1, None).as_str())
    );
}

/// Plays the upstream instance for one attempt on `cluster`.
fn attempt_on(env: &mut Envoy, cluster: &str, stream: u32) -> UpstreamAttempt {
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan("chat", Some("gpt-4o"), None, stream, None).as_bytes(),
    );
    env.host
        .set_property_str("xds.cluster_name", cluster.as_bytes());
    env.host.request_headers = vec![(":path".into(), CHAT.into())];
    env.host.request_body = CHAT_BODY.as_bytes().to_vec();
    env.upstream()
}

#[test]
fn each_attempt_carries_its_own_clusters_model() {
    let mut env = chain(true);
    let mut a = attempt_on(&mut env, "b", 1);
    assert_eq!(a.on_request_headers(&mut env.host, false), Flow::Pause);
    assert_eq!(
        a.on_request_body(&mut env.host, CHAT_BODY.len(), true),
        Flow::Continue
    );
    let body: Value = serde_json::from_slice(&env.host.request_body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    // The primary's attempt keeps the body as it is.
    let mut a = attempt_on(&mut env, "a", 1);
    assert_eq!(a.on_request_headers(&mut env.host, false), Flow::Continue);
    assert_eq!(env.host.request_body, CHAT_BODY.as_bytes());
}

#[test]
fn a_gemini_attempt_carries_its_model_in_the_path() {
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"g": {"provider": "gemini"}, "h": {"provider": "gemini"}},
        "routes": {"chat": {"clusters": ["g", {"cluster": "h", "model": "gemini-2.0-flash"}]}}
    }));
    let mut a = attempt_on(&mut env, "h", 1);
    env.host.request_headers = vec![(
        ":path".into(),
        "/v1beta/models/gemini-1.5-pro:generateContent".into(),
    )];
    assert_eq!(a.on_request_headers(&mut env.host, false), Flow::Continue);
    assert_eq!(
        env.host.request_header(":path"),
        Some("/v1beta/models/gemini-2.0-flash:generateContent")
    );
}

#[test]
fn each_answer_feeds_its_clusters_circuit_and_forged_waits_are_dropped() {
    let mut env = chain(true);
    let mut a = attempt_on(&mut env, "a", 1);
    a.on_request_headers(&mut env.host, false);
    env.host.advance(250);
    env.host.response_headers = vec![
        (":status".into(), "503".into()),
        (RETRY_AFTER_HEADER.into(), "600".into()),
    ];
    a.on_response_headers(&mut env.host);
    a.on_end(&mut env.host);
    assert_eq!(attempts(&env, "a", "server_error"), 1);
    assert_eq!(
        env.host.response_header(RETRY_AFTER_HEADER),
        None,
        "only ours steers the router"
    );
    assert_eq!(env.host.gauge(CIRCUIT_STATE, &[("cluster", "a")]), Some(2));
}

#[test]
fn an_attempt_without_an_answer_waits_for_its_stream_then_counts_as_a_reset() {
    let mut env = chain(true);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let mut a = attempt_on(&mut env, "a", 1);
    a.on_request_headers(&mut env.host, false);
    a.on_end(&mut env.host);
    assert_eq!(
        attempts(&env, "a", "reset"),
        0,
        "deferred until the stream ends"
    );
    assert_eq!(env.worker.attempts.borrow().unanswered(), 1);
    // The client was answered (the router's own 503): the attempt was a reset.
    env.answer(&mut x, 503, &[], &[]);
    env.end(&mut x);
    assert_eq!(attempts(&env, "a", "reset"), 1);
    assert_eq!(env.worker.attempts.borrow().unanswered(), 0);
}

#[test]
fn an_attempt_cancelled_by_a_client_gone_says_nothing_about_the_cluster() {
    let mut env = chain(true);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let mut a = attempt_on(&mut env, "a", 1);
    a.on_request_headers(&mut env.host, false);
    a.on_end(&mut env.host);
    env.end(&mut x); // no response headers: the client left
    assert_eq!(attempts(&env, "a", "reset"), 0);
    // An attempt ending after its stream is settled at once.
    let mut b = attempt_on(&mut env, "a", 1);
    b.on_request_headers(&mut env.host, false);
    b.on_end(&mut env.host);
    assert_eq!(attempts(&env, "a", "reset"), 0);
    assert_eq!(env.worker.attempts.borrow().unanswered(), 0);
}

#[test]
fn a_request_the_downstream_did_not_plan_is_left_alone() {
    let mut env = chain(true);
    env.host.set_property_str("xds.cluster_name", b"a");
    let mut a = env.upstream();
    assert_eq!(a.on_request_headers(&mut env.host, true), Flow::Continue);
    assert_eq!(a.phase(), AttemptPhase::Unplanned);
    env.host.response_headers = vec![(":status".into(), "500".into())];
    a.on_response_headers(&mut env.host);
    a.on_end(&mut env.host);
    assert!(env.host.counters.is_empty());
    let _ = Map::RequestHeaders;
}

#[test]
fn a_client_deadline_too_short_for_another_attempt_means_no_retry() {
    let mut env = chain(false);
    // 1.5 s left: under the route's retry_min_remaining (2 s by default).
    let (_, _) = env.send(
        "chat",
        &[("x-envoy-expected-rq-timeout-ms", "1500")],
        Some(CHAT_BODY),
    );
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("0"));
    let (_, _) = env.send("chat", &[("x-stainless-timeout", "30")], Some(CHAT_BODY));
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("1"));
}

#[test]
fn without_held_headers_only_the_routes_own_cluster_is_gated() {
    let mut env = Envoy::new(json!({
        "hold_headers": false,
        "clusters": {
            "a": {"provider": "openai", "circuit": {"consecutive_failures": 1}},
            "b": {"provider": "openai"}
        },
        "routes": {"chat": {"clusters": ["a", {"cluster": "b", "model": "gpt-4o-mini"}]}}
    }));
    let mut x = env.stream("chat", &[(":path", CHAT), ("content-length", "120")]);
    // The headers go at once; the body is held instead.
    assert_eq!(x.on_request_headers(&mut env.host, false), Flow::Continue);
    env.host.request_body = CHAT_BODY.as_bytes().to_vec();
    assert_eq!(
        x.on_request_body(&mut env.host, CHAT_BODY.len(), true),
        Flow::Continue
    );
    // Nothing steers the router, and the body is left as the client sent it.
    assert_eq!(env.host.property_str("llmcap_try_2"), None);
    assert_eq!(env.host.request_header("x-envoy-max-retries"), None);
    assert_eq!(env.host.request_body, CHAT_BODY.as_bytes());
    env.answer(&mut x, 503, &[], &[]);
    env.end(&mut x);
    // a is open now: the next request is refused here, b is never planned.
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!((flow, env.last_reply().status), (Flow::Pause, 503));
}

/// One successful attempt on `a` whose answer reports `remaining` of `limit`
/// requests left.
fn success_reporting(env: &mut Envoy, stream: u32, remaining: u64, limit: u64) {
    let mut a = attempt_on(env, "a", stream);
    a.on_request_headers(&mut env.host, false);
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("x-ratelimit-limit-requests".into(), limit.to_string()),
        (
            "x-ratelimit-remaining-requests".into(),
            remaining.to_string(),
        ),
        ("x-ratelimit-reset-requests".into(), "60s".into()),
    ];
    a.on_response_headers(&mut env.host);
    env.host.advance(10);
}

#[test]
fn an_adaptive_clusters_plentiful_quota_is_sampled_and_a_low_one_followed() {
    let mut env = chain(true);
    let remaining = |env: &Envoy| {
        env.host.gauge(
            crate::core::telemetry::PROVIDER_REMAINING,
            &[("cluster", "a"), ("limit", "requests")],
        )
    };
    // Plenty left: the first success is read, the next ones within 100 ms not.
    success_reporting(&mut env, 1, 9000, 10_000);
    assert_eq!(remaining(&env), Some(9000));
    for (n, left) in [8990, 8980, 8970].into_iter().enumerate() {
        success_reporting(&mut env, 2 + n as u32, left, 10_000);
    }
    assert_eq!(remaining(&env), Some(9000), "read again within 100 ms");
    env.host.advance(100);
    success_reporting(&mut env, 9, 8000, 10_000);
    assert_eq!(remaining(&env), Some(8000), "read again after 100 ms");
    // A fifth or less left: every answer is read.
    env.host.advance(100);
    success_reporting(&mut env, 10, 2000, 10_000);
    for (n, left) in [1999, 1998, 3].into_iter().enumerate() {
        success_reporting(&mut env, 11 + n as u32, left, 10_000);
        assert_eq!(remaining(&env), Some(left));
    }
    // A small limit is low below 100 left.
    let mut env = chain(true);
    success_reporting(&mut env, 1, 5, 5);
    success_reporting(&mut env, 2, 4, 5);
    assert_eq!(remaining(&env), Some(4));
    // An error answer is always read, whatever was sampled.
    let mut env = chain(true);
    success_reporting(&mut env, 1, 9000, 10_000);
    let mut a = attempt_on(&mut env, "a", 2);
    a.on_request_headers(&mut env.host, false);
    env.host.response_headers = vec![
        (":status".into(), "429".into()),
        ("x-ratelimit-limit-requests".into(), "10000".into()),
        ("x-ratelimit-remaining-requests".into(), "0".into()),
        ("x-ratelimit-reset-requests".into(), "60s".into()),
    ];
    a.on_response_headers(&mut env.host);
    assert_eq!(remaining(&env), Some(0));
}
