//! Timings, goodput and the in-flight gauge (tests/e2e/test_latency.py).

use super::*;
use crate::core::env::SharedStore;
use crate::core::telemetry::{
    GOODPUT_TOTAL, IN_FLIGHT, REQUEST_DURATION_MS, TIME_PER_OUTPUT_TOKEN_US, TIME_TO_FIRST_TOKEN_MS,
};
use crate::core::upstream::failover::{encode_plan, PLAN_PROPERTY};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn slo_route(upstream_filter: bool) -> Envoy {
    Envoy::new(json!({
        "upstream_filter": upstream_filter,
        "clusters": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
        "routes": {"chat": {
            "clusters": ["a", "b"],
            "slo": {"time_to_first_token_ms": 500, "duration_ms": 2000}
        }}
    }))
}

const LABELS: [(&str, &str); 3] = [("route", "chat"), ("cluster", "a"), ("model", "gpt-4o")];

fn event(text: &str) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n")
}
const ROLE_ONLY: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\ndata: [DONE]\n\n";

fn chunk(env: &mut Envoy, x: &mut Exchange, c: &str, eos: bool) {
    env.host.response_body = c.as_bytes().to_vec();
    x.on_response_body(&mut env.host, c.len(), eos);
}

fn in_flight(env: &Envoy, cluster: &str) -> Option<u64> {
    env.host
        .gauge(IN_FLIGHT, &[("route", "chat"), ("cluster", cluster)])
}

fn goodput(env: &Envoy, result: &str) -> u64 {
    env.host
        .counter(GOODPUT_TOTAL, &[("route", "chat"), ("result", result)])
}

/// A stream: headers at 20 ms, a framing event at 50, the first text at 100,
/// four more tokens by 500 (usage says 5 output tokens).
#[test]
fn a_stream_is_timed_from_its_first_text_event() {
    let mut env = slo_route(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(in_flight(&env, "a"), Some(1));
    env.host.advance(20);
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    x.on_response_headers(&mut env.host, false);
    env.host.advance(30);
    chunk(&mut env, &mut x, ROLE_ONLY, false);
    env.host.advance(50);
    chunk(&mut env, &mut x, &event("Hel"), false);
    for _ in 0..3 {
        env.host.advance(100);
        chunk(&mut env, &mut x, &event("lo"), false);
    }
    env.host.advance(100);
    chunk(&mut env, &mut x, USAGE, true);
    assert_eq!(in_flight(&env, "a"), Some(1), "in flight until the log");
    env.end(&mut x);
    assert_eq!(in_flight(&env, "a"), Some(0));
    assert_eq!(
        env.host.histogram(TIME_TO_FIRST_TOKEN_MS, &LABELS),
        vec![100]
    );
    // 400 ms over the 4 tokens after the first.
    assert_eq!(
        env.host.histogram(TIME_PER_OUTPUT_TOKEN_US, &LABELS),
        vec![100_000]
    );
    assert_eq!(env.host.histogram(REQUEST_DURATION_MS, &LABELS), vec![500]);
    assert_eq!(goodput(&env, "met"), 1);
    let s = env.filter_state();
    assert_eq!(s["gen_ai.server.time_to_first_token"], 0.1);
    assert_eq!(s["gen_ai.server.time_per_output_token"], 0.1);
    assert_eq!(s["duration_ms"], 500);
    assert_eq!(s["output_tokens_per_second"], 10);
    assert_eq!(s["slo"], "met");
}

#[test]
fn a_whole_answer_is_its_own_first_token_and_late_past_the_slo() {
    let mut env = slo_route(false);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.advance(700);
    env.answer_usage(&mut x, 12, 5);
    env.end(&mut x);
    assert_eq!(
        env.host.histogram(TIME_TO_FIRST_TOKEN_MS, &LABELS),
        vec![700]
    );
    assert_eq!(env.host.histogram(REQUEST_DURATION_MS, &LABELS), vec![700]);
    assert!(env
        .host
        .histogram(TIME_PER_OUTPUT_TOKEN_US, &LABELS)
        .is_empty());
    assert_eq!((goodput(&env, "late"), goodput(&env, "met")), (1, 0));
    assert_eq!(env.filter_state()["slo"], "late");
    assert_eq!(env.filter_state()["gen_ai.server.time_to_first_token"], 0.7);
}

#[test]
fn errors_cut_streams_and_refusals_are_failed_and_not_timed() {
    let mut env = slo_route(false);
    // An error status.
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(
        &mut x,
        500,
        &[("content-type", "application/json")],
        &["{}"],
    );
    env.end(&mut x);
    // A stream cut before its end (client gone).
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    x.on_response_headers(&mut env.host, false);
    chunk(&mut env, &mut x, &event("Hel"), false);
    env.end(&mut x);
    // A refusal of the filter's own (invalid body).
    let (mut x, _) = env.send("chat", &[], Some("{not json"));
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(goodput(&env, "failed"), 3);
    assert_eq!(goodput(&env, "met") + goodput(&env, "late"), 0);
    assert!(env
        .host
        .histogram(TIME_TO_FIRST_TOKEN_MS, &LABELS)
        .is_empty());
    assert_eq!(in_flight(&env, "a"), Some(0));
    assert_eq!(env.filter_state()["slo"], "failed");
}

#[test]
fn without_an_slo_there_is_no_goodput_but_timings_still_count() {
    let mut env = Envoy::new(json!({"routes": {"chat": {}}}));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.advance(40);
    env.answer_usage(&mut x, 12, 5);
    env.end(&mut x);
    let labels = [("route", "chat"), ("cluster", ""), ("model", "gpt-4o")];
    assert_eq!(
        env.host.histogram(TIME_TO_FIRST_TOKEN_MS, &labels),
        vec![40]
    );
    assert_eq!(goodput(&env, "met") + goodput(&env, "failed"), 0);
    assert!(env.filter_state().get("slo").is_none());
}

/// With an upstream instance, the clock starts when the attempt that
/// answered was sent (a retry on `b` after 300 ms on `a`), under `b`.
#[test]
fn timed_from_the_answering_attempt_and_labelled_by_its_cluster() {
    let mut env = slo_route(true);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    for (cluster, wait) in [("a", 300), ("b", 0)] {
        env.host.set_property_str(
            PLAN_PROPERTY,
            encode_plan("chat", Some("gpt-4o"), None, 1, None).as_bytes(),
        );
        env.host
            .set_property_str("xds.cluster_name", cluster.as_bytes());
        let mut a = env.upstream();
        a.on_request_headers(&mut env.host, true);
        env.host.advance(wait);
    }
    env.host.advance(120);
    env.answer_usage(&mut x, 12, 5);
    env.end(&mut x);
    let b = [("route", "chat"), ("cluster", "b"), ("model", "gpt-4o")];
    assert_eq!(env.host.histogram(TIME_TO_FIRST_TOKEN_MS, &b), vec![120]);
    assert_eq!(
        env.worker.attempts.borrow().sent.len(),
        0,
        "forgotten once read"
    );
    // In flight under the first attempt's cluster, back to 0.
    assert_eq!(in_flight(&env, "a"), Some(0));
}

/// The timing work reads the clock at most twice more per request: the
/// answer's headers and its first token; the end shares settle's one read
/// with the limits' release and calibration (which read it before).
#[test]
fn timing_costs_at_most_two_clock_reads() {
    let mut env = Envoy::new(json!({
        "routes": {"chat": {"limits": {"requests_per_minute": 100}}}
    }));
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    let sent = env.host.clock_reads.get();
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    x.on_response_headers(&mut env.host, false);
    assert_eq!(env.host.clock_reads.get() - sent, 1, "headers");
    chunk(&mut env, &mut x, ROLE_ONLY, false);
    chunk(&mut env, &mut x, &event("Hel"), false);
    chunk(&mut env, &mut x, &event("lo"), false);
    assert_eq!(env.host.clock_reads.get() - sent, 2, "the first token only");
    let before_end = env.host.clock_reads.get();
    chunk(&mut env, &mut x, USAGE, true);
    env.end(&mut x);
    // Settle's one read, which the limits' release and the calibration
    // sample's due check now share (each read its own before), and the
    // calibration store's own.
    assert_eq!(env.host.clock_reads.get() - before_end, 2, "the end");
}

/// An attempt that ends unanswered at the router's timeout for it (the
/// `x-envoy-expected-rq-timeout-ms` the router set on it) is a `timeout`;
/// one that ends before it is a `reset`.
#[test]
fn an_attempt_out_of_time_is_a_timeout_not_a_reset() {
    use crate::core::telemetry::UPSTREAM_ATTEMPTS_TOTAL;
    let mut env = slo_route(true);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    for (cluster, ran_ms) in [("a", 995), ("b", 400)] {
        env.host.set_property_str(
            PLAN_PROPERTY,
            encode_plan("chat", Some("gpt-4o"), None, 1, None).as_bytes(),
        );
        env.host
            .set_property_str("xds.cluster_name", cluster.as_bytes());
        env.host.request_headers = vec![
            (":path".into(), CHAT.into()),
            ("x-envoy-expected-rq-timeout-ms".into(), "1000".into()),
        ];
        let mut a = env.upstream();
        a.on_request_headers(&mut env.host, true);
        env.host.advance(ran_ms);
        a.on_end(&mut env.host);
    }
    env.answer(&mut x, 504, &[], &[]);
    env.end(&mut x);
    let class = |cluster, class| {
        env.host.counter(
            UPSTREAM_ATTEMPTS_TOTAL,
            &[("cluster", cluster), ("class", class)],
        )
    };
    assert_eq!((class("a", "timeout"), class("a", "reset")), (1, 0));
    assert_eq!((class("b", "timeout"), class("b", "reset")), (0, 1));
}

/// With the upstream instance, the downstream timings take its clock
/// readings (sent, answered): the answer's headers cost no clock read here.
#[test]
fn with_the_upstream_instance_the_headers_cost_no_clock_read() {
    let mut env = slo_route(true);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan("chat", Some("gpt-4o"), None, 1, None).as_bytes(),
    );
    env.host.set_property_str("xds.cluster_name", b"a");
    let mut a = env.upstream();
    a.on_request_headers(&mut env.host, true);
    env.host.advance(80);
    env.host.response_headers = vec![(":status".into(), "200".into())];
    a.on_response_headers(&mut env.host);
    env.host.advance(5);
    let before = env.host.clock_reads.get();
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
    ];
    x.on_response_headers(&mut env.host, false);
    assert_eq!(env.host.clock_reads.get() - before, 0);
    assert_eq!(x.response.timing.headers_ms, Some(T0 + 80));
}

// ------------------------------------------------- circuits from first tokens

const STREAM_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the world, politely."}],"max_tokens":100,"stream":true}"#;

fn circuit(env: &Envoy, cluster: &str) -> Option<u64> {
    env.host.gauge(
        crate::core::telemetry::CIRCUIT_STATE,
        &[("cluster", cluster)],
    )
}

/// One request on the chain's first cluster that is open for it: headers
/// after `headers_ms`, the first text `ttft_ms` after it was sent; the
/// upstream instance plays the attempt when `upstream`. The cluster the
/// plan sent it to.
fn timed_answer(
    env: &mut Envoy,
    body: &str,
    upstream: bool,
    headers_ms: u64,
    ttft_ms: u64,
) -> String {
    // Properties are per request in Envoy, not in the fake host.
    env.host.properties.remove("llmcap_try_1");
    let (mut x, _) = env.send("chat", &[], Some(body));
    let cluster = env
        .host
        .property_str("llmcap_try_1")
        .unwrap_or_else(|| "a".to_string());
    let mut a = None;
    if upstream {
        env.host
            .set_property_str("xds.cluster_name", cluster.as_bytes());
        let mut u = env.upstream();
        u.on_request_headers(&mut env.host, true);
        a = Some(u);
    }
    env.host.advance(headers_ms);
    let streamed = body.contains("\"stream\":true");
    let ct = if streamed {
        "text/event-stream"
    } else {
        "application/json"
    };
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), ct.into()),
    ];
    let key = format!("llmcap/cb/{cluster}");
    let before = env.host.get(&key).unwrap();
    if let Some(u) = &mut a {
        u.on_response_headers(&mut env.host);
    }
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), ct.into()),
    ];
    x.on_response_headers(&mut env.host, false);
    if upstream && streamed {
        assert_eq!(
            env.host.get(&key).unwrap(),
            before,
            "a streamed success waits for its first token"
        );
    }
    env.host.advance(ttft_ms - headers_ms);
    if streamed {
        chunk(env, &mut x, ROLE_ONLY, false);
        chunk(env, &mut x, &event("Hi"), false);
        chunk(env, &mut x, USAGE, true);
    } else {
        let json = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        chunk(env, &mut x, json, true);
    }
    env.end(&mut x);
    cluster
}

/// The absolute latency rule judges a stream by its first token (headers come
/// first), and a whole answer by its headers, as before.
#[test]
fn a_streams_first_token_not_its_headers_feeds_the_latency_rule() {
    for upstream in [true, false] {
        let cfg = |env_up| {
            Envoy::new(json!({
                "upstream_filter": env_up,
                "clusters": {"a": {"provider": "openai", "circuit": {
                    "latency_p95_ms": 200, "min_requests": 1, "consecutive_failures": 0}}},
                "routes": {"chat": {"clusters": ["a"]}}
            }))
        };
        let mut env = cfg(upstream);
        timed_answer(&mut env, CHAT_BODY, upstream, 20, 300);
        assert_eq!(
            circuit(&env, "a"),
            None,
            "headers in 20 ms: fast ({upstream})"
        );
        let mut env = cfg(upstream);
        timed_answer(&mut env, STREAM_BODY, upstream, 20, 300);
        assert_eq!(circuit(&env, "a"), Some(2), "first token in 300 ms: slow");
        let mut env = cfg(upstream);
        timed_answer(&mut env, STREAM_BODY, upstream, 20, 150);
        assert_eq!(circuit(&env, "a"), None, "first token in 150 ms: fast");
    }
}

/// A stream cut before its first token still feeds the circuit, once, with
/// what is known (its headers' time): the claim of a probe is never lost.
#[test]
fn a_stream_cut_before_its_first_token_still_feeds_the_circuit() {
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {"a": {"provider": "openai", "circuit": {
            "latency_p95_ms": 100, "min_requests": 1, "consecutive_failures": 0}}},
        "routes": {"chat": {"clusters": ["a"]}}
    }));
    let (mut x, _) = env.send("chat", &[], Some(STREAM_BODY));
    env.host.set_property_str("xds.cluster_name", b"a");
    let mut u = env.upstream();
    u.on_request_headers(&mut env.host, true);
    env.host.advance(150);
    env.host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    u.on_response_headers(&mut env.host);
    x.on_response_headers(&mut env.host, false);
    env.host.advance(5000);
    env.end(&mut x); // the client left
    assert_eq!(circuit(&env, "a"), Some(2), "timed to its headers: 150 ms");
}

/// The relative rule through the request's life: a baseline of 50 ms, then a
/// 2 s first token opens the primary and traffic moves to the fallback; a
/// probe as slow reopens it, a fast one closes it.
#[test]
fn a_slow_first_token_against_the_baseline_moves_traffic_to_the_fallback_and_back() {
    for upstream in [false, true] {
        let mut env = Envoy::new(json!({
            "upstream_filter": upstream,
            "clusters": {
                "a": {"provider": "openai", "circuit": {
                    "consecutive_failures": 0, "open_seconds": 5,
                    "latency_relative": {"factor": 2, "window_seconds": 10, "min_requests": 3,
                                         "baseline_half_life_seconds": 300}}},
                "b": {"provider": "openai"}
            },
            "routes": {"chat": {"clusters": ["a", "b"]}}
        }));
        for _ in 0..3 {
            assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 50), "a");
        }
        assert_eq!(circuit(&env, "a"), None);
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 2000), "a");
        assert_eq!(circuit(&env, "a"), Some(2), "1 of 4 above 100 ms");
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 60), "b");
        env.host.advance(5000);
        // The probe is as slow as the outage: open again.
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 2000), "a");
        assert_eq!(circuit(&env, "a"), Some(2));
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 60), "b");
        env.host.advance(5000);
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 60), "a");
        assert_eq!(circuit(&env, "a"), Some(0), "recovered: closed");
        assert_eq!(timed_answer(&mut env, STREAM_BODY, upstream, 10, 60), "a");
    }
}
