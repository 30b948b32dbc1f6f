//! Hedging through the request's life: the plan arms it, the upstream
//! instance tells the composite cluster's attempts apart (tests/e2e/test_hedge.py).

use super::*;
use crate::core::exchange::plan::{HEDGE_HEADER, PER_TRY_TIMEOUT_HEADER};
use crate::core::telemetry::{HEDGES_TOTAL, SPEND_MICRODOLLARS_TOTAL, UPSTREAM_ATTEMPTS_TOTAL};
use crate::core::upstream::failover::{encode_plan, PLAN_PROPERTY};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A chain of three whose circuits open on one failure, hedged through `abc`.
fn hedged(max_share: f64) -> Envoy {
    let circuit = json!({"consecutive_failures": 1, "open_seconds": 10});
    Envoy::new(json!({
        "upstream_filter": true,
        "clusters": {
            "a": {"provider": "openai", "circuit": circuit},
            "b": {"provider": "openai", "circuit": circuit},
            "c": {"provider": "openai", "circuit": circuit}
        },
        "routes": {"chat": {
            "clusters": ["a", "b", "c"],
            "hedge": {"after_ms": 300, "max_share": max_share, "cluster": "abc"}
        }}
    }))
}

/// The upstream instance's view of one attempt of stream `stream`.
fn attempt(env: &mut Envoy, cluster: &str, n: u32, stream: u32) -> UpstreamAttempt {
    env.host.set_property_str(
        PLAN_PROPERTY,
        encode_plan("chat", Some("gpt-4o"), None, stream, None).as_bytes(),
    );
    env.host
        .set_property_str("xds.cluster_name", cluster.as_bytes());
    env.host.request_headers = vec![
        (":path".into(), CHAT.into()),
        ("x-envoy-attempt-count".into(), n.to_string()),
    ];
    env.upstream()
}

#[test]
fn an_armed_hedge_sends_the_first_attempt_to_the_composite_cluster() {
    let mut env = hedged(1.0);
    let (_x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.request_header(PER_TRY_TIMEOUT_HEADER), Some("300"));
    assert_eq!(env.host.request_header(HEDGE_HEADER), Some("true"));
    assert_eq!(env.host.request_header("x-envoy-max-retries"), Some("2"));
    // Every attempt of a hedged request stays on the first one's cluster.
    assert_eq!(
        env.host.property_str("llmcap_try_1").as_deref(),
        Some("abc")
    );
    assert_eq!(env.host.property_str("llmcap_try_2"), None);
    assert_eq!(env.host.route_cache_clears, 1);
}

#[test]
fn no_hedge_unless_the_plan_starts_with_the_chain_in_order() {
    let mut env = hedged(1.0);
    // b's circuit opens: the plan is a, c; the composite would send attempt 2 to b.
    let mut a = attempt(&mut env, "b", 1, 1);
    a.on_request_headers(&mut env.host, true);
    env.host.response_headers = vec![(":status".into(), "503".into())];
    a.on_response_headers(&mut env.host);
    a.on_end(&mut env.host);
    let (_x, _) = env.send(
        "chat",
        &[("x-envoy-hedge-on-per-try-timeout", "true")],
        Some(CHAT_BODY),
    );
    assert_eq!(
        env.host.request_header(HEDGE_HEADER),
        None,
        "a client's is dropped too"
    );
    assert_eq!(env.host.request_header(PER_TRY_TIMEOUT_HEADER), None);
    assert_eq!(env.host.property_str("llmcap_try_1"), None);
    assert_eq!(env.host.property_str("llmcap_try_2").as_deref(), Some("c"));
}

#[test]
fn hedges_take_at_most_their_share_of_requests() {
    let mut env = hedged(0.05);
    let mut armed = 0;
    let mut open = Vec::new();
    for _ in 0..100 {
        let (x, _) = env.send("chat", &[], Some(CHAT_BODY));
        armed += usize::from(env.host.request_header(HEDGE_HEADER).is_some());
        open.push(x); // in flight: nothing is given back yet
    }
    assert_eq!(armed, 5);
    // Requests whose hedge never fired give their share back at the end.
    for mut x in open {
        env.answer_usage(&mut x, 1, 1);
        env.end(&mut x);
    }
    let (_x, _) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(env.host.request_header(HEDGE_HEADER), Some("true"));
}

#[test]
fn the_composite_clusters_attempts_count_for_the_chain_member_they_reached() {
    let mut env = hedged(1.0);
    for (n, status) in [(1, "200"), (2, "200"), (2, "429")] {
        let mut a = attempt(&mut env, "abc", n, 1);
        a.on_request_headers(&mut env.host, true);
        env.host.response_headers = vec![(":status".into(), status.into())];
        a.on_response_headers(&mut env.host);
        a.on_end(&mut env.host);
    }
    let count = |cluster, class| {
        env.host.counter(
            UPSTREAM_ATTEMPTS_TOTAL,
            &[("cluster", cluster), ("class", class)],
        )
    };
    assert_eq!(
        (
            count("a", "ok"),
            count("b", "ok"),
            count("b", "rate_limited"),
            count("abc", "ok")
        ),
        (1, 1, 1, 0)
    );
}

#[test]
fn a_hedge_that_wins_is_counted_logged_and_its_loser_charged() {
    let circuit = json!({"consecutive_failures": 1, "open_seconds": 10});
    let mut env = Envoy::new(json!({
        "upstream_filter": true,
        "prices": {"gpt-4o": {"input": 2.5, "output": 10}},
        "clusters": {
            "a": {"provider": "openai", "circuit": circuit},
            "b": {"provider": "openai", "circuit": circuit}
        },
        "routes": {"chat": {
            "clusters": ["a", "b"],
            "hedge": {"after_ms": 300, "max_share": 1.0, "cluster": "ab"},
            "session_budget": {"header": "x-session-id", "max_spend_usd": 100}
        }}
    }));
    let (mut x, _) = env.send("chat", &[("x-session-id", "s1")], Some(CHAT_BODY));
    let stream = x.context_id();
    let down = (
        env.host.request_headers.clone(),
        env.host.request_body.clone(),
    );
    // The first attempt waits; after 300 ms the router sends the hedge (attempt 2).
    let mut first = attempt(&mut env, "ab", 1, stream);
    first.on_request_headers(&mut env.host, true);
    env.host.advance(300);
    let mut hedge = attempt(&mut env, "ab", 2, stream);
    hedge.on_request_headers(&mut env.host, true);
    env.host.advance(50);
    env.host.response_headers = vec![(":status".into(), "200".into())];
    hedge.on_response_headers(&mut env.host);
    (env.host.request_headers, env.host.request_body) = down;
    // 1M input tokens and 100k output answered; the loser's 1M input is paid too.
    env.answer_usage(&mut x, 1_000_000, 100_000);
    hedge.on_end(&mut env.host);
    first.on_end(&mut env.host); // reset by the router after the answer
    env.end(&mut x);
    let hedges = |r| {
        env.host
            .counter(HEDGES_TOTAL, &[("route", "chat"), ("result", r)])
    };
    assert_eq!(
        (hedges("sent"), hedges("won"), hedges("cancelled")),
        (1, 1, 0)
    );
    let state = env.filter_state();
    assert_eq!(
        (state["hedged"].clone(), state["winner"].clone()),
        (json!(true), json!("hedge"))
    );
    // 2 x 1M input at 2.5 USD and 100k output at 10 USD.
    assert_eq!(
        env.host
            .counter(SPEND_MICRODOLLARS_TOTAL, &[("route", "chat")]),
        6_000_000
    );
    // The reset loser is not a failure of a.
    let count = |cluster| {
        ["ok", "reset", "timeout", "server_error"]
            .iter()
            .map(|c| {
                env.host.counter(
                    UPSTREAM_ATTEMPTS_TOTAL,
                    &[("cluster", cluster), ("class", c)],
                )
            })
            .sum::<u64>()
    };
    assert_eq!((count("a"), count("b")), (0, 1));
}
