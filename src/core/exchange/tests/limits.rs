//! Limits and the queue (tests/e2e/test_limits.py, test_queue.py).

use super::*;
use crate::core::telemetry::{
    LIMITER_ERRORS_TOTAL, QUEUED_TOTAL, QUEUE_WAIT_MS, RATE_LIMITED_TOTAL, SHADOW_LIMITED_TOTAL,
    TENANT_EVICTIONS_TOTAL,
};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn limited(rpm: u64) -> Envoy {
    Envoy::new(json!({"routes": {"chat": {
        "limits": {"requests_per_minute": rpm},
        "rate_limit_headers": "openai"
    }}}))
}

fn queued(hold: &str) -> Envoy {
    Envoy::new(json!({
        "queue_hold": hold,
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {
            "clusters": ["a"],
            "limits": {"requests_per_minute": 60, "burst_seconds": 1},
            "queue": {"max_wait_seconds": 5, "max_size": 2, "poll_ms": 10}
        }}
    }))
}

#[test]
fn an_admitted_answer_carries_our_rate_limit_headers() {
    let mut env = limited(2);
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    // The provider's own headers are replaced by our view.
    env.answer(
        &mut x,
        200,
        &[("x-ratelimit-remaining-requests", "999")],
        &["{}"],
    );
    assert_eq!(
        env.host.response_header("x-ratelimit-limit-requests"),
        Some("2")
    );
    assert_eq!(
        env.host.response_header("x-ratelimit-remaining-requests"),
        Some("1")
    );
}

#[test]
fn over_the_limit_is_a_429_with_retry_after() {
    let mut env = limited(1);
    env.call("chat", &[], 1, 1);
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    let r = env.last_reply();
    assert_eq!(r.status, 429);
    assert_eq!(r.details, "rate_limit_exceeded");
    let ms: u64 = env.reply_header("retry-after-ms").unwrap().parse().unwrap();
    // The bucket is at 0: room again in 1 ms, plus up to 50 ms of jitter.
    assert!((1..=51).contains(&ms), "{ms}");
    assert_eq!(env.reply_header("retry-after"), Some("1"));
    assert_eq!(
        env.reply_header("x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(env.reply_json()["error"]["code"], "rate_limit_exceeded");
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_rate_limited"), 1);
    assert_eq!(
        env.host.counter(
            RATE_LIMITED_TOTAL,
            &[("route", "chat"), ("scope", "route"), ("limit", "requests")]
        ),
        1
    );
    let s = env.filter_state();
    assert_eq!(
        (s["scope"].as_str(), s["limit"].as_str()),
        (Some("route"), Some("requests"))
    );
    assert_eq!(s["usage_source"], "refused");
}

#[test]
fn the_bucket_refills_with_time() {
    let mut env = limited(1);
    env.call("chat", &[], 1, 1);
    env.host.advance(60_000);
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn a_shadow_limit_counts_but_lets_through() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "limits": {"requests_per_minute": 1, "shadow": true}
    }}}));
    env.call("chat", &[], 1, 1);
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    assert_eq!(
        env.host.counter(
            SHADOW_LIMITED_TOTAL,
            &[("route", "chat"), ("scope", "route"), ("limit", "requests")]
        ),
        1
    );
    assert_eq!(env.filter_state()["shadow_limited"], "requests");
}

#[test]
fn tenant_limits_refuse_per_tenant_and_name_it() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "tenant_limits": {"header": "x-tenant", "trust_header": true, "requests_per_minute": 1},
        "limits": {"requests_per_minute": 100, "burst_seconds": 60}
    }}}));
    env.call("chat", &[("x-tenant", "acme")], 1, 1);
    let (_, flow) = env.send("chat", &[("x-tenant", "globex")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue, "another tenant has its own bucket");
    let (_, flow) = env.send("chat", &[("x-tenant", "acme")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        env.reply_json()["error"]["code"],
        "tenant_rate_limit_exceeded"
    );
    let msg = env.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.starts_with("Rate limit reached for requests per minute on tenant \"acme\" on route \"chat\" (limit 1)."), "{msg}");
    assert_eq!(
        env.host.counter(
            RATE_LIMITED_TOTAL,
            &[
                ("route", "chat"),
                ("scope", "tenant"),
                ("limit", "requests")
            ]
        ),
        1
    );
}

#[test]
fn a_route_refusal_refunds_the_tenant_charge() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "tenant_limits": {"header": "x-tenant", "trust_header": true, "requests_per_minute": 2},
        "limits": {"requests_per_minute": 1}
    }}}));
    env.call("chat", &[("x-tenant", "a")], 1, 1); // route bucket now empty
    let (_, flow) = env.send("chat", &[("x-tenant", "a")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause, "the route refuses");
    // The route refills; the tenant still has its second request (refunded).
    env.host.advance(60_000);
    let (_, flow) = env.send("chat", &[("x-tenant", "a")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn tenant_slots_taken_over_in_use_are_counted_as_evictions() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "tenant_limits": {"header": "x-tenant", "trust_header": true, "requests_per_minute": 5, "slots": 1}
    }}}));
    let (_x1, _) = env.send("chat", &[("x-tenant", "a")], Some(CHAT_BODY));
    let (_x2, _) = env.send("chat", &[("x-tenant", "b")], Some(CHAT_BODY));
    assert_eq!(
        env.host
            .counter(TENANT_EVICTIONS_TOTAL, &[("route", "chat")]),
        1
    );
}

#[test]
fn a_store_failure_fails_open_and_is_counted() {
    let mut env = limited(1);
    env.host.store_fails = true;
    for _ in 0..3 {
        let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
        assert_eq!(flow, Flow::Continue);
    }
    assert_eq!(
        env.host.counter(LIMITER_ERRORS_TOTAL, &[("route", "chat")]),
        3
    );
    assert!(env.host.replies.is_empty());
}

// The route's bucket holds one request a second and admits while above 0:
// after one call, the next waits 1 ms, the one after 1001 ms.

#[test]
fn a_request_over_the_burst_waits_in_the_vm_queue_and_the_tick_resumes_it() {
    let mut env = queued("vm");
    env.call("chat", &[], 1, 1);
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert!(matches!(x.phase(), Phase::Queued(_)));
    assert_eq!(env.host.tick_periods, vec![10]);
    env.tick();
    assert!(env.host.resumed.is_empty(), "not its time yet");
    env.host.advance(1);
    env.tick();
    assert_eq!(env.host.resumed, vec![2]);
    assert_eq!(
        env.host.tick_periods,
        vec![10, 0],
        "nobody waits: the tick stops"
    );
    // The stop is the root's own: the resumed stream stays the effective
    // context until changed, and a tick set from it would be its root's.
    assert_eq!(env.host.tick_contexts, vec![0, 0]);
    assert_eq!(env.host.effective_context, 0);
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    assert_eq!(
        env.host
            .counter(QUEUED_TOTAL, &[("route", "chat"), ("result", "admitted")]),
        1
    );
    assert_eq!(
        env.host.histogram(QUEUE_WAIT_MS, &[("route", "chat")]),
        vec![1]
    );
    assert_eq!(env.filter_state()["queue_wait_ms"], 1);
    assert_eq!(env.requests("chat", "admitted"), 2);
}

/// The bug this core fixed: a request resumed from the VM queue is `sent`, so
/// without an upstream instance its final answer still feeds its cluster's health.
#[test]
fn a_request_resumed_from_the_queue_feeds_health_data() {
    let mut env = queued("vm");
    env.call("chat", &[], 1, 1);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.advance(1);
    env.tick();
    env.host.advance(40);
    env.answer(&mut x, 503, &[], &[]);
    assert!(matches!(x.phase(), Phase::Sent { at_ms } if *at_ms == T0 + 1));
    assert_eq!(
        env.host.counter(
            crate::core::telemetry::UPSTREAM_ATTEMPTS_TOTAL,
            &[("cluster", "a"), ("class", "server_error")]
        ),
        1
    );
}

#[test]
fn a_full_queue_refuses_at_once() {
    let mut env = queued("vm");
    env.call("chat", &[], 1, 1);
    let (_a, f1) = env.send("chat", &[], Some(CHAT_BODY));
    let (_b, f2) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!((f1, f2), (Flow::Pause, Flow::Pause));
    assert!(env.host.replies.is_empty(), "two places in the queue");
    let (_c, f3) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(f3, Flow::Pause);
    assert_eq!(env.last_reply().status, 429);
}

#[test]
fn the_client_deadline_bounds_the_wait() {
    let mut env = queued("vm");
    env.call("chat", &[], 1, 1);
    let (_x, _) = env.send("chat", &[], Some(CHAT_BODY));
    // The client gives up after 0.5 s: a wait of 1001 ms cannot be queued.
    let (_y, flow) = env.send("chat", &[("x-stainless-timeout", "0.5")], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 429);
    // Without a deadline the same wait is queued.
    let (_z, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!((flow, env.host.replies.len()), (Flow::Pause, 1));
}

#[test]
fn a_client_gone_mid_queue_gives_its_place_back() {
    let mut env = queued("vm");
    env.call("chat", &[], 1, 1);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let state = env.filter_state();
    env.end(&mut x); // the client left before its turn
    assert!(matches!(x.phase(), Phase::Abandoned));
    assert_eq!(
        env.host
            .counter(QUEUED_TOTAL, &[("route", "chat"), ("result", "abandoned")]),
        1
    );
    assert_eq!(env.filter_state(), state, "no access-log state for it");
    assert_eq!(env.requests("chat", "admitted"), 1);
    // Its place and its request are given back: the next one waits 1 ms, not 1001.
    let (mut y, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.advance(1);
    env.tick();
    assert_eq!(env.host.resumed, vec![3]);
    env.end(&mut y);
}

#[test]
fn with_the_fault_filter_the_hold_is_handed_to_envoy() {
    let mut env = queued("fault_filter");
    env.call("chat", &[], 1, 1);
    // Every request below reaches the router once the fault filter lets it go.
    env.host
        .set_property_str("upstream.request_attempt_count", &1u64.to_le_bytes());
    env.call("chat", &[], 1, 1); // waits 1 ms in the fault filter
    let (mut x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(
        env.host
            .request_header(super::super::admit::FAULT_DELAY_HEADER),
        Some("1001")
    );
    assert_eq!(
        env.host
            .request_header(super::super::admit::HOLD_MARKER_HEADER),
        Some("1")
    );
    assert!(env.host.tick_periods.is_empty());
    // The fault filter held it; the router then made one attempt.
    env.host.advance(1_200);
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    assert_eq!(env.filter_state()["queue_wait_ms"], 1001);
    assert_eq!(env.requests("chat", "admitted"), 3);
}

#[test]
fn a_fault_filter_hold_that_cannot_be_set_is_held_here() {
    let mut env = queued("fault_filter");
    env.call("chat", &[], 1, 1);
    env.host.fail.push("set_header");
    let (x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert!(matches!(x.phase(), Phase::Queued(_)));
    assert_eq!(
        env.host
            .request_header(super::super::admit::FAULT_DELAY_HEADER),
        None
    );
    assert_eq!(env.host.tick_periods, vec![10]);
}

#[test]
fn priority_classes_keep_a_reserve_for_the_highest() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "limits": {"requests_per_minute": 10, "burst_seconds": 60},
        "priority": {"header": "x-prio", "classes": ["high", "low"], "default": "low", "reserve": 0.5}
    }}}));
    let mut low = 0;
    for _ in 0..10 {
        let (_, f) = env.send("chat", &[("x-prio", "low")], Some(CHAT_BODY));
        if f == Flow::Continue {
            low += 1;
        }
    }
    assert_eq!(low, 5, "low stops at the reserve");
    let (_, f) = env.send("chat", &[("x-prio", "high")], Some(CHAT_BODY));
    assert_eq!(f, Flow::Continue);
}
