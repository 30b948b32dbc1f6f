//! The one give-back path (tests/e2e/test_limits.py, test_faults.py): what a
//! request holds comes back whole when it never left, and is settled with its
//! usage when it did, whatever the VM that ends it.

use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn tpm(tokens: u64) -> Envoy {
    Envoy::new(json!({"routes": {"chat": {
        "limits": {"tokens_per_minute": tokens, "burst_seconds": 60}
    }}}))
}

#[test]
fn unused_reservation_comes_back_to_the_token_bucket() {
    let probe = tpm(1_000_000);
    let reserved = estimate(&probe, "chat", CHAT_BODY).reserved;
    // Room for one reservation: the bucket admits while above 0.
    let mut env = tpm(reserved);
    env.call("chat", &[], 1, 1); // used 2 tokens, the rest comes back
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn usage_above_the_reservation_is_charged() {
    let probe = tpm(1_000_000);
    let reserved = estimate(&probe, "chat", CHAT_BODY).reserved;
    let mut env = tpm(reserved * 3);
    env.call("chat", &[], reserved * 2, reserved); // used three reservations
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 429);
}

#[test]
fn a_refused_answer_gives_every_token_back() {
    let probe = tpm(1_000_000);
    let reserved = estimate(&probe, "chat", CHAT_BODY).reserved;
    let mut env = tpm(reserved);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.answer(&mut x, 500, &[], &["{}"]);
    env.end(&mut x);
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn a_request_ended_by_another_worker_still_gives_back() {
    // Shared data is the process's: the settlement does not need this VM's state.
    let probe = tpm(1_000_000);
    let reserved = estimate(&probe, "chat", CHAT_BODY).reserved;
    let mut env = tpm(reserved);
    let (mut x, _) = env.send("chat", &[], Some(CHAT_BODY));
    env.worker = env.another_worker();
    env.answer_usage(&mut x, 1, 1);
    env.end(&mut x);
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn a_client_gone_mid_body_leaves_nothing_behind() {
    let mut env = Envoy::new(json!({"routes": {"chat": {"limits": {"requests_per_minute": 1}}}}));
    let mut x = env.stream("chat", &[(":path", CHAT), ("content-length", "999")]);
    x.on_request_headers(&mut env.host, false);
    env.end(&mut x);
    assert_eq!(
        env.filter_state(),
        Value::Null,
        "never decided: no access-log state"
    );
    assert!(env.host.counters.is_empty());
    assert!(env.host.store.dump().is_empty(), "nothing was charged");
}

#[test]
fn a_budget_refusal_gives_back_the_probe_claim() {
    let mut env = Envoy::new(json!({
        "clusters": {"a": {"provider": "openai", "circuit": {"consecutive_failures": 1, "open_seconds": 1}}},
        "routes": {"chat": {
            "clusters": ["a"],
            "session_budget": {"header": "x-session-id", "max_calls": 1}
        }}
    }));
    let s = ("x-session-id", "s");
    let (mut x, _) = env.send("chat", &[s], Some(CHAT_BODY));
    env.answer(&mut x, 503, &[], &[]);
    env.end(&mut x); // a is open for 1 s
    env.host.advance(1_000);
    // The half-open probe is claimed, then the budget refuses: the claim comes back.
    let (_, flow) = env.send("chat", &[s], Some(CHAT_BODY));
    assert_eq!((flow, env.last_reply().status), (Flow::Pause, 402));
    let (x, flow) = env.send("chat", &[("x-session-id", "t")], Some(CHAT_BODY));
    assert_eq!(
        flow,
        Flow::Continue,
        "the probe is free for another request"
    );
    assert!(matches!(x.phase(), Phase::Sent { .. }));
}
