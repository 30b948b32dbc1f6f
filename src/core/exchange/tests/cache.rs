//! The response cache, request collapsing and idempotency keys in the
//! request's life (tests/e2e/test_cache.py).

use super::*;
use crate::core::cache::{
    CACHE_COLLAPSED_TOTAL, CACHE_LOOKUPS_TOTAL, CACHE_SAVED_TOKENS_TOTAL, IDEMPOTENCY_TOTAL,
};
use crate::core::exchange::cached::IDEMPOTENT_PROPERTY;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const DET: &str = r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":20}"#;
/// The same request, its keys in another order and spaced.
const DET_REORDERED: &str = r#"{ "max_tokens": 20, "messages": [ {"content": "Say hello.", "role": "user"} ], "temperature": 0.0, "model": "gpt-4o" }"#;
const WARM: &str = r#"{"model":"gpt-4o","temperature":0.7,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":20}"#;
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}"#;
const KEY_A: (&str, &str) = ("authorization", "Bearer sk-a");

fn env_with(cache: Value) -> Envoy {
    Envoy::new(json!({
        "prices": {"gpt-4o": {"input": 2.5, "output": 10}},
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {
            "clusters": ["a"],
            "limits": {"requests_per_minute": 1000, "tokens_per_minute": 1_000_000},
            "tenant_limits": {"header": "x-tenant", "trust_header": true, "requests_per_minute": 1000},
            "cache": cache
        }}
    }))
}

fn env() -> Envoy {
    env_with(json!({"ttl_seconds": 60}))
}

/// Sends `body` with `headers`; answered by the provider with `answer` when it goes.
/// Returns the exchange's phase after the request and the answer's headers.
fn call(env: &mut Envoy, headers: &[(&str, &str)], body: &str, answer: &str) -> Exchange {
    env.host.replies.clear();
    let (mut x, _) = env.send("chat", headers, Some(body));
    if matches!(x.phase(), Phase::Sent { .. }) {
        env.answer(
            &mut x,
            200,
            &[("content-type", "application/json")],
            &[answer],
        );
    } else if matches!(x.phase(), Phase::Replied) {
        env.answer_reply(&mut x);
    }
    env.end(&mut x);
    x
}

fn went(x: &Exchange) -> bool {
    !matches!(x.phase(), Phase::Replied)
}

fn lookups(env: &Envoy, result: &str) -> u64 {
    env.host.counter(
        CACHE_LOOKUPS_TOTAL,
        &[("route", "chat"), ("result", result)],
    )
}

#[test]
fn a_repeated_deterministic_request_is_answered_byte_for_byte_and_spends_nothing() {
    let mut env = env();
    let first = call(&mut env, &[KEY_A], DET, ANSWER);
    assert!(went(&first));
    assert_eq!(
        env.host.response_header("x-llm-capacity-cache"),
        Some("miss")
    );
    env.host.now_ms.set(T0 + 7_500);
    let second = call(&mut env, &[KEY_A], DET_REORDERED, "never sent");
    assert!(!went(&second), "answered from the cache");
    let r = env.last_reply();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ANSWER.as_bytes());
    assert_eq!(env.reply_header("x-llm-capacity-cache"), Some("hit"));
    assert_eq!(env.reply_header("age"), Some("7"));
    assert_eq!(env.reply_header("content-type"), Some("application/json"));
    assert_eq!((lookups(&env, "miss"), lookups(&env, "hit")), (1, 1));
    let log = env.filter_state();
    assert_eq!(log["cache"], "hit");
    assert_eq!(log["usage_source"], "cached");
    assert_eq!(log["gen_ai.usage.input_tokens"], 11, "{log}");
    assert_eq!(log["gen_ai.usage.output_tokens"], 2);
    assert!(
        log.get("spend_usd").is_none_or(|s| s.as_f64() == Some(0.0)),
        "{log}"
    );
    assert_eq!(env.requests("chat", "cached"), 1);
    assert_eq!(
        env.host.counter(
            CACHE_SAVED_TOKENS_TOTAL,
            &[("route", "chat"), ("kind", "input")]
        ),
        11
    );
}

#[test]
fn a_hit_takes_no_quota_unless_count_hits() {
    for count_hits in [false, true] {
        let mut env = Envoy::new(json!({
            "clusters": {"a": {"provider": "openai"}},
            "routes": {"chat": {
                "clusters": ["a"],
                "limits": {"requests_per_minute": 1},
                "cache": {"count_hits": count_hits}
            }}
        }));
        assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)));
        let hit = call(&mut env, &[KEY_A], DET, ANSWER);
        assert!(!went(&hit));
        let status = env.last_reply().status;
        if count_hits {
            assert_eq!(status, 429, "the minute's one request is spent");
        } else {
            assert_eq!(status, 200);
            assert_eq!(env.reply_header("x-llm-capacity-cache"), Some("hit"));
        }
    }
}

#[test]
fn any_answer_changing_field_or_another_caller_misses() {
    let mut env = env();
    call(&mut env, &[KEY_A, ("x-tenant", "t1")], DET, ANSWER);
    let other_fields = [
        DET.replace("Say hello.", "Say hello!"),
        DET.replace("gpt-4o", "gpt-4o-mini"),
        DET.replace("\"max_tokens\":20", "\"max_tokens\":21"),
        DET.replace("\"temperature\":0", "\"temperature\":0,\"seed\":4"),
        DET.replace("\"temperature\":0", "\"temperature\":0,\"tools\":[]"),
        DET.replace(
            "\"temperature\":0",
            "\"temperature\":0,\"response_format\":{\"type\":\"json_object\"}",
        ),
    ];
    for body in &other_fields {
        assert!(
            went(&call(&mut env, &[KEY_A, ("x-tenant", "t1")], body, ANSWER)),
            "{body}"
        );
    }
    assert!(went(&call(
        &mut env,
        &[("authorization", "Bearer sk-b"), ("x-tenant", "t1")],
        DET,
        ANSWER
    )));
    assert!(went(&call(
        &mut env,
        &[KEY_A, ("x-tenant", "t2")],
        DET,
        ANSWER
    )));
    assert!(!went(&call(
        &mut env,
        &[KEY_A, ("x-tenant", "t1")],
        DET,
        ANSWER
    )));
}

#[test]
fn shared_routes_answer_every_caller() {
    let mut env = env_with(json!({"shared": true}));
    call(&mut env, &[KEY_A], DET, ANSWER);
    assert!(!went(&call(
        &mut env,
        &[("authorization", "Bearer sk-b")],
        DET,
        ANSWER
    )));
}

#[test]
fn no_credential_is_kept_in_shared_data() {
    let mut env = env();
    call(
        &mut env,
        &[KEY_A, ("x-api-key", "sk-ant-secret")],
        DET,
        ANSWER,
    );
    for (k, v) in env.host.store.dump() {
        let text = String::from_utf8_lossy(&v);
        assert!(
            !text.contains("sk-a") && !text.contains("sk-ant-secret"),
            "{k}"
        );
        assert!(!k.contains("sk-"), "{k}");
    }
}

#[test]
fn non_deterministic_requests_bypass_unless_opted_in() {
    let mut env = env();
    call(&mut env, &[KEY_A], WARM, ANSWER);
    assert_eq!(
        env.host.response_header("x-llm-capacity-cache"),
        Some("bypass")
    );
    assert!(went(&call(&mut env, &[KEY_A], WARM, ANSWER)));
    assert_eq!(lookups(&env, "bypass"), 2);

    let mut env = env_with(json!({"when": "opt_in"}));
    let allow = ("x-llm-capacity-cache", "allow");
    call(&mut env, &[KEY_A], DET, ANSWER);
    assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)), "not opted in");
    call(&mut env, &[KEY_A, allow], WARM, ANSWER);
    assert!(!went(&call(&mut env, &[KEY_A, allow], WARM, ANSWER)));
}

#[test]
fn no_cache_skips_the_lookup_and_no_store_the_store() {
    let mut env = env();
    call(
        &mut env,
        &[KEY_A, ("cache-control", "no-store")],
        DET,
        ANSWER,
    );
    assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)), "not stored");
    assert!(went(&call(
        &mut env,
        &[KEY_A, ("cache-control", "no-cache")],
        DET,
        ANSWER
    )));
    assert_eq!(
        env.host.response_header("x-llm-capacity-cache"),
        Some("bypass")
    );
    assert!(!went(&call(&mut env, &[KEY_A], DET, ANSWER)));
}

#[test]
fn entries_expire_after_their_ttl() {
    let mut env = env();
    call(&mut env, &[KEY_A], DET, ANSWER);
    env.host.now_ms.set(T0 + 59_999);
    assert!(!went(&call(&mut env, &[KEY_A], DET, ANSWER)));
    env.host.now_ms.set(T0 + 60_000);
    assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)));
}

#[test]
fn errors_bad_finishes_and_answers_without_usage_are_not_stored() {
    let mut env = env();
    let bad = [
        ANSWER.replace("\"stop\"", "\"content_filter\""),
        ANSWER.replace(
            ",\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}",
            "",
        ),
    ];
    for answer in &bad {
        call(&mut env, &[KEY_A], DET, answer);
        assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)), "{answer}");
        // The good answer was stored: start the next case afresh.
        env.host.now_ms.set(env.host.now_ms.get() + 120_000);
    }
    let (mut x, _) = env.send("chat", &[KEY_A], Some(DET));
    env.answer(
        &mut x,
        500,
        &[("content-type", "application/json")],
        &[r#"{"error":{}}"#],
    );
    env.end(&mut x);
    let (mut x, _) = env.send("chat", &[KEY_A], Some(DET));
    assert!(went(&x), "an error is never stored");
    env.end(&mut x);
}

const SSE: &[&str] = &[
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\ndata: [DONE]\n\n",
];

#[test]
fn a_stream_is_replayed_whole_and_a_cut_stream_is_never_stored() {
    let mut env = env();
    let body = DET.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    // Cut after the first chunk: the answer never ended.
    let (mut x, _) = env.send("chat", &[KEY_A], Some(&body));
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    x.on_response_headers(&mut env.host, false);
    env.host.response_body = SSE[0].as_bytes().to_vec();
    x.on_response_body(&mut env.host, SSE[0].len(), false);
    env.end(&mut x);
    let (mut x, _) = env.send("chat", &[KEY_A], Some(&body));
    assert!(went(&x), "a cut stream is not stored");
    env.answer(&mut x, 200, &[("content-type", "text/event-stream")], SSE);
    env.end(&mut x);
    env.host.replies.clear();
    let (mut x, _) = env.send("chat", &[KEY_A], Some(&body));
    assert!(!went(&x));
    let r = env.last_reply().clone();
    assert_eq!(r.body, SSE.concat().as_bytes());
    assert_eq!(env.reply_header("content-type"), Some("text/event-stream"));
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.filter_state()["gen_ai.usage.output_tokens"], 2);
}

#[test]
fn answers_past_max_entry_bytes_are_not_stored() {
    let mut env = env_with(json!({"max_entry_bytes": 100}));
    call(&mut env, &[KEY_A], DET, ANSWER);
    assert!(went(&call(&mut env, &[KEY_A], DET, ANSWER)));
}

#[test]
fn identical_requests_wait_for_the_first_and_are_answered_from_its_answer() {
    let mut env = env();
    let (mut lead, _) = env.send("chat", &[KEY_A], Some(DET));
    assert!(went(&lead));
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let (w, flow) = env.send("chat", &[KEY_A], Some(DET));
        assert_eq!(flow, Flow::Pause);
        assert!(w.cache_waiting());
        waiters.push(w);
    }
    assert_eq!(env.host.tick_periods.last(), Some(&20));
    assert_eq!(env.worker.collapsed_bytes(), 3 * DET.len());
    // Still in flight: they wait on.
    env.tick();
    for ctx in env.worker.take_collapsed() {
        let w = waiters.iter_mut().find(|w| w.context_id() == ctx).unwrap();
        w.on_cache_wake(&mut env.host);
    }
    assert!(waiters.iter().all(Exchange::cache_waiting));
    assert!(env.host.replies.is_empty());
    env.answer(
        &mut lead,
        200,
        &[("content-type", "application/json")],
        &[ANSWER],
    );
    env.end(&mut lead);
    for ctx in env.worker.take_collapsed() {
        let w = waiters.iter_mut().find(|w| w.context_id() == ctx).unwrap();
        w.on_cache_wake(&mut env.host);
    }
    assert_eq!(env.host.replies.len(), 3);
    assert!(env.host.replies.iter().all(|r| r.body == ANSWER.as_bytes()));
    assert_eq!(
        env.worker.collapsed_bytes(),
        0,
        "every body copy given back"
    );
    assert_eq!(
        env.host.counter(
            CACHE_COLLAPSED_TOTAL,
            &[("route", "chat"), ("result", "hit")]
        ),
        3
    );
}

#[test]
fn when_the_first_fails_each_waiter_goes_on_its_own() {
    let mut env = env();
    let (mut lead, _) = env.send("chat", &[KEY_A], Some(DET));
    let (mut w, _) = env.send("chat", &[KEY_A], Some(DET));
    assert!(w.cache_waiting());
    env.answer(
        &mut lead,
        503,
        &[("content-type", "application/json")],
        &[r#"{"error":{}}"#],
    );
    env.end(&mut lead);
    let _ = env.worker.take_collapsed();
    env.host.effective_context = w.context_id();
    w.on_cache_wake(&mut env.host);
    assert!(!w.cache_waiting());
    assert!(matches!(w.phase(), Phase::Sent { .. }));
    assert_eq!(env.host.resumed, vec![w.context_id()]);
    assert_eq!(
        env.host.counter(
            CACHE_COLLAPSED_TOTAL,
            &[("route", "chat"), ("result", "alone")]
        ),
        1
    );
}

#[test]
fn a_waiter_goes_on_its_own_when_the_wait_runs_out() {
    let mut env = env_with(json!({"collapse_wait_seconds": 1}));
    let (_lead, _) = env.send("chat", &[KEY_A], Some(DET));
    let (mut w, _) = env.send("chat", &[KEY_A], Some(DET));
    assert!(w.cache_waiting());
    env.host.now_ms.set(T0 + 1_000);
    w.on_cache_wake(&mut env.host);
    assert!(matches!(w.phase(), Phase::Sent { .. }));
}

#[test]
fn waiters_per_key_are_bounded() {
    let mut env = env_with(json!({"collapse_max_waiters": 2}));
    let (_lead, _) = env.send("chat", &[KEY_A], Some(DET));
    let flows: Vec<bool> = (0..3)
        .map(|_| env.send("chat", &[KEY_A], Some(DET)).0.cache_waiting())
        .collect();
    assert_eq!(flows, vec![true, true, false]);
}

#[test]
fn an_idempotency_key_replays_refuses_another_body_and_a_busy_key() {
    let mut env = env();
    let key = ("idempotency-key", "order-17");
    // Any temperature.
    let (mut first, _) = env.send("chat", &[KEY_A, key], Some(WARM));
    assert!(went(&first));
    assert_eq!(
        env.host.property_str(IDEMPOTENT_PROPERTY).as_deref(),
        Some("1")
    );
    let _ = call(&mut env, &[KEY_A, key], WARM, ANSWER);
    let r = env.last_reply();
    assert_eq!(r.status, 409);
    assert_eq!(env.reply_json()["error"]["code"], "idempotency_key_in_use");
    env.answer(
        &mut first,
        200,
        &[("content-type", "application/json")],
        &[ANSWER],
    );
    env.end(&mut first);

    let replay = call(&mut env, &[KEY_A, key], WARM, "never sent");
    assert!(!went(&replay));
    assert_eq!(env.last_reply().body, ANSWER.as_bytes());
    assert_eq!(
        env.reply_header("x-llm-capacity-idempotent-replay"),
        Some("true")
    );
    assert_eq!(env.filter_state()["idempotency"], "replay");

    let other = call(&mut env, &[KEY_A, key], DET, ANSWER);
    assert!(!went(&other));
    assert_eq!(env.last_reply().status, 422);
    assert_eq!(env.reply_json()["error"]["code"], "idempotency_key_reused");
    // Another caller's same key is its own.
    assert!(went(&call(
        &mut env,
        &[("authorization", "Bearer sk-b"), key],
        DET,
        ANSWER
    )));
    for result in ["first", "in_use", "replay", "reused"] {
        assert!(
            env.host
                .counter(IDEMPOTENCY_TOTAL, &[("route", "chat"), ("result", result)])
                >= 1,
            "{result}"
        );
    }
}

#[test]
fn invalid_idempotency_keys_get_400() {
    let mut env = env();
    for bad in ["", "a b", &"k".repeat(256)] {
        let x = call(&mut env, &[KEY_A, ("idempotency-key", bad)], DET, ANSWER);
        assert!(!went(&x), "{bad}");
        assert_eq!(env.last_reply().status, 400);
        assert_eq!(env.reply_json()["error"]["code"], "invalid_idempotency_key");
    }
}

/// The upstream instance's attempt of stream 1 on cluster `a`.
fn attempt(env: &mut Envoy) -> UpstreamAttempt {
    use crate::core::upstream::failover::{encode_plan, PLAN_PROPERTY};
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan("chat", Some("gpt-4o"), None, 1, None).as_bytes(),
    );
    env.host.set_property_str("xds.cluster_name", b"a");
    env.host.request_headers = vec![(":path".into(), CHAT.into())];
    env.upstream()
}

#[test]
fn a_router_retry_after_a_reset_of_an_idempotent_request_is_never_sent() {
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {"clusters": ["a"], "cache": {}}}
    }));
    let (mut x, _) = env.send("chat", &[KEY_A, ("idempotency-key", "k1")], Some(WARM));
    let mut first = attempt(&mut env);
    assert_eq!(
        first.on_request_headers(&mut env.host, false),
        Flow::Continue
    );
    first.on_end(&mut env.host); // reset: no answer
    env.host.replies.clear();
    let mut retry = attempt(&mut env);
    assert_eq!(retry.on_request_headers(&mut env.host, false), Flow::Pause);
    let r = env.last_reply();
    assert_eq!(r.status, 502);
    assert_eq!(
        env.reply_json()["error"]["code"],
        "idempotent_retry_refused"
    );
    assert_eq!(
        env.host.counter(
            IDEMPOTENCY_TOTAL,
            &[("route", "chat"), ("result", "retry_refused")]
        ),
        1
    );
    env.end(&mut x);
}

#[test]
fn a_router_retry_after_an_answer_or_without_a_key_goes() {
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"a": {"provider": "openai"}},
        "routes": {"chat": {"clusters": ["a"], "cache": {}}}
    }));
    // No key: a retry after a reset goes as before.
    let (mut x, _) = env.send("chat", &[KEY_A], Some(WARM));
    let mut first = attempt(&mut env);
    first.on_request_headers(&mut env.host, false);
    first.on_end(&mut env.host);
    env.host.replies.clear();
    let mut retry = attempt(&mut env);
    assert_eq!(
        retry.on_request_headers(&mut env.host, false),
        Flow::Continue
    );
    assert!(env.host.replies.is_empty());
    env.end(&mut x);
}

#[test]
fn a_client_gone_while_waiting_gives_its_body_copy_back() {
    let mut env = env();
    let (_lead, _) = env.send("chat", &[KEY_A], Some(DET));
    let (mut w, _) = env.send("chat", &[KEY_A], Some(DET));
    assert!(w.cache_waiting());
    env.end(&mut w);
    assert_eq!(env.worker.collapsed_bytes(), 0);
    assert!(!w.cache_waiting());
}

#[test]
fn a_providers_cache_headers_never_reach_the_client() {
    let mut env = env();
    let (mut x, _) = env.send("chat", &[KEY_A], Some(WARM));
    env.answer(
        &mut x,
        200,
        &[
            ("content-type", "application/json"),
            ("x-llm-capacity-cache", "hit"),
            ("x-llm-capacity-idempotent-replay", "true"),
        ],
        &[ANSWER],
    );
    assert_eq!(
        env.host.response_header("x-llm-capacity-cache"),
        Some("bypass")
    );
    assert_eq!(
        env.host.response_header("x-llm-capacity-idempotent-replay"),
        None
    );
}
