//! The global tier (tests/e2e/test_global.py): the call, its answer, timeouts,
//! the failure policy, leases and renewals.

use super::*;
use crate::core::limits::global::{encode_request, Hits, METHOD, SERVICE};
use crate::core::telemetry::{
    GLOBAL_CALLS_TOTAL, GLOBAL_CALL_MS, GLOBAL_DECISIONS_TOTAL, RATE_LIMITED_TOTAL,
};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const UNAVAILABLE: u32 = 14;

fn global(extra: Value) -> Envoy {
    let mut g = json!({"cluster": "ratelimit", "timeout_ms": 50, "on_failure": "open"});
    if let (Some(g), Some(e)) = (g.as_object_mut(), extra.as_object()) {
        g.extend(e.clone());
    }
    Envoy::new(json!({"routes": {"chat": {
        "limits": {"requests_per_minute": 1000, "burst_seconds": 60},
        "global": g
    }}}))
}

fn calls(env: &Envoy, result: &str) -> u64 {
    env.host
        .counter(GLOBAL_CALLS_TOTAL, &[("route", "chat"), ("result", result)])
}

fn decisions(env: &Envoy, result: &str) -> u64 {
    env.host.counter(
        GLOBAL_DECISIONS_TOTAL,
        &[("route", "chat"), ("result", result)],
    )
}

/// The service answers the stream's call (the last one made) after `ms`.
fn service_answers(
    env: &mut Envoy,
    x: &mut Exchange,
    ms: u64,
    status: u32,
    answer: Option<Vec<u8>>,
) {
    env.host.advance(ms);
    let token = env.host.grpc_calls.last().map_or(0, |c| c.token);
    let size = answer.as_ref().map_or(0, Vec::len);
    env.host.grpc_answer = answer;
    x.on_grpc_answer(&mut env.host, token, status, size);
}

#[test]
fn a_request_asks_the_service_and_waits_for_it() {
    let mut env = global(json!({}));
    let pre = estimate(&env, "chat", CHAT_BODY);
    let (x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert!(matches!(x.phase(), Phase::AskingGlobal(_)));
    let c = &env.host.grpc_calls[0];
    assert_eq!(
        (c.cluster.as_str(), c.service.as_str(), c.method.as_str()),
        ("ratelimit", SERVICE, METHOD)
    );
    assert_eq!(c.timeout_ms, 50);
    let ask = Hits {
        requests: 1,
        tokens: pre.reserved,
    };
    assert_eq!(
        c.message,
        encode_request("llm-capacity", &[("llmcap_route", "chat")], ask)
    );
}

#[test]
fn an_ok_answer_resumes_the_request() {
    let mut env = global(json!({}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(
        &mut env,
        &mut x,
        7,
        0,
        Some(rls_answer(false, &[(false, 60), (false, 60)])),
    );
    assert_eq!(env.host.resumed, vec![0]);
    assert!(matches!(x.phase(), Phase::Sent { at_ms } if *at_ms == T0 + 7));
    assert_eq!(calls(&env, "ok"), 1);
    assert_eq!(decisions(&env, "service"), 1);
    assert_eq!(
        env.host.histogram(GLOBAL_CALL_MS, &[("route", "chat")]),
        vec![7]
    );
    env.answer_usage(&mut x, 3, 3);
    env.end(&mut x);
    assert_eq!(env.filter_state()["global"], "service");
}

#[test]
fn over_the_global_limit_is_a_429_that_names_it() {
    let mut env = global(json!({}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(
        &mut env,
        &mut x,
        2,
        0,
        Some(rls_answer(true, &[(true, 30), (false, 60)])),
    );
    let r = env.last_reply().clone();
    assert_eq!((r.status, r.details), (429, "global_rate_limit_exceeded"));
    assert_eq!(
        env.reply_header("x-llm-capacity"),
        Some("global_rate_limit_exceeded")
    );
    let ms: u64 = env.reply_header("retry-after-ms").unwrap().parse().unwrap();
    assert!((30_000..=36_000).contains(&ms), "{ms}");
    assert!(env.host.resumed.is_empty());
    assert_eq!(calls(&env, "over_limit"), 1);
    assert_eq!(
        env.host.counter(
            RATE_LIMITED_TOTAL,
            &[
                ("route", "chat"),
                ("scope", "global"),
                ("limit", "requests")
            ]
        ),
        1
    );
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_rate_limited"), 1);
    assert_eq!(env.filter_state()["global"], "over_limit");
}

#[test]
fn a_failed_call_fails_open_and_later_requests_skip_the_call() {
    let mut env = global(json!({"retry_interval_ms": 1000}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(&mut env, &mut x, 3, UNAVAILABLE, None);
    assert_eq!(calls(&env, "error"), 1);
    assert_eq!(decisions(&env, "fail_open"), 1);
    assert_eq!(env.host.resumed, vec![0]);
    // Within the retry interval: straight to the failure policy, no call.
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(env.host.grpc_calls.len(), 1);
    assert_eq!(decisions(&env, "fail_open"), 2);
    env.host.advance(1000);
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!((flow, env.host.grpc_calls.len()), (Flow::Pause, 2));
}

#[test]
fn a_late_failure_is_a_timeout() {
    let mut env = global(json!({}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(&mut env, &mut x, 45, UNAVAILABLE, None);
    assert_eq!((calls(&env, "timeout"), calls(&env, "error")), (1, 0));
}

#[test]
fn an_unreadable_answer_is_an_error() {
    let mut env = global(json!({}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(&mut env, &mut x, 1, 0, Some(vec![0x08, 0x07]));
    assert_eq!(calls(&env, "error"), 1);
    assert_eq!(decisions(&env, "fail_open"), 1);
}

#[test]
fn failing_closed_is_a_503_that_says_when_to_come_back() {
    let mut env = global(json!({"on_failure": "closed"}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(&mut env, &mut x, 1, UNAVAILABLE, None);
    let r = env.last_reply().clone();
    assert_eq!((r.status, r.details), (503, "global_limit_unavailable"));
    assert_eq!(
        env.reply_json()["error"]["message"],
        "The fleet-wide rate limit for route \"chat\" cannot be checked now. Please try again in 1s."
    );
    assert_eq!(env.reply_header("retry-after"), Some("1"));
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_global_unavailable"), 1);
}

#[test]
fn a_call_the_host_refuses_goes_to_the_failure_policy() {
    let mut env = global(json!({}));
    env.host.fail.push("grpc_call");
    let (x, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    assert!(matches!(x.phase(), Phase::Sent { .. }));
    assert_eq!((calls(&env, "error"), decisions(&env, "fail_open")), (1, 1));
}

#[test]
fn failing_open_is_bounded_by_the_fallback_limits() {
    let mut env = global(json!({"fallback_limits": {"requests_per_minute": 1}}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    service_answers(&mut env, &mut x, 1, UNAVAILABLE, None);
    assert_eq!(decisions(&env, "fail_open"), 1);
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 429);
    assert_eq!(decisions(&env, "fallback_limited"), 1);
    assert_eq!(
        env.host.counter(
            RATE_LIMITED_TOTAL,
            &[
                ("route", "chat"),
                ("scope", "global_fallback"),
                ("limit", "requests")
            ]
        ),
        1
    );
}

#[test]
fn a_leased_slice_serves_later_requests_from_the_pool() {
    let mut env = global(json!({"lease": {"requests": 4}}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let pre = estimate(&env, "chat", CHAT_BODY);
    let ask = Hits {
        requests: 5,
        tokens: pre.reserved,
    };
    assert_eq!(
        env.host.grpc_calls[0].message,
        encode_request("llm-capacity", &[("llmcap_route", "chat")], ask)
    );
    service_answers(
        &mut env,
        &mut x,
        1,
        0,
        Some(rls_answer(false, &[(false, 60), (false, 60)])),
    );
    // Tokens are still asked per request; with a token-less route only the pool serves.
    assert_eq!(env.host.grpc_calls.len(), 1);
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
}

#[test]
fn a_low_pool_is_renewed_by_the_worker_in_the_background() {
    let mut env = global(json!({"lease": {"requests": 4}}));
    // A bodiless request needs one request and no tokens: the pool can serve it.
    let bodiless = |env: &mut Envoy| {
        let mut x = env.stream("chat", &[(":path", "/v1/models")]);
        let f = x.on_request_headers(&mut env.host, true);
        (x, f)
    };
    let (mut x, _) = bodiless(&mut env);
    service_answers(
        &mut env,
        &mut x,
        1,
        0,
        Some(rls_answer(false, &[(false, 60)])),
    );
    env.end(&mut x);
    let mut served = 0;
    for _ in 0..3 {
        let (mut y, f) = bodiless(&mut env);
        if f == Flow::Continue {
            served += 1;
        }
        env.end(&mut y);
    }
    assert_eq!(served, 3, "from the pool, no call");
    assert_eq!(decisions(&env, "pool"), 3);
    assert_eq!(env.host.grpc_calls.len(), 1);
    // Under half a slice: a renewal at the worker's next tick (1 ms).
    assert_eq!(env.host.tick_periods.last(), Some(&1));
    env.tick();
    assert_eq!(env.host.grpc_calls.len(), 2);
    assert_eq!(
        env.host.grpc_calls[1].message,
        encode_request(
            "llm-capacity",
            &[("llmcap_route", "chat")],
            Hits {
                requests: 4,
                tokens: 0
            }
        )
    );
    assert_eq!(env.worker.renewals.borrow().in_flight(), 1);
    env.host.grpc_answer = Some(rls_answer(false, &[(false, 60)]));
    let size = env.host.grpc_answer.as_ref().map_or(0, Vec::len);
    env.worker
        .on_renewal_answer(&mut env.host, true, 2, 0, size);
    assert_eq!(env.worker.renewals.borrow().in_flight(), 0);
    assert_eq!(calls(&env, "ok"), 2);
    let (_, f) = bodiless(&mut env);
    assert_eq!(f, Flow::Continue, "the renewed slice serves it");
    assert_eq!(env.host.grpc_calls.len(), 2);
}

#[test]
fn an_answer_for_another_call_is_ignored() {
    let mut env = global(json!({}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    x.on_grpc_answer(&mut env.host, 999, 0, 0);
    assert!(matches!(x.phase(), Phase::AskingGlobal(_)));
    assert!(env.host.resumed.is_empty());
}

#[test]
fn a_client_gone_while_asking_gives_everything_back() {
    let mut env = Envoy::new(json!({"routes": {"chat": {
        "limits": {"requests_per_minute": 1},
        "global": {"cluster": "ratelimit", "timeout_ms": 50}
    }}}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.end(&mut x);
    assert!(matches!(x.phase(), Phase::Abandoned));
    // The answer after the stream is gone changes nothing.
    service_answers(&mut env, &mut x, 1, 0, Some(rls_answer(false, &[])));
    assert!(env.host.resumed.is_empty());
    // The local request unit came back: a new request is admitted locally.
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!((flow, env.host.grpc_calls.len()), (Flow::Pause, 2));
    assert!(env.host.replies.is_empty());
}
