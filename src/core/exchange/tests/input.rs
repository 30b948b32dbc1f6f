//! Bad input (tests/e2e/test_bad_input.py).

use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn capped(invalid_body: &str) -> Envoy {
    Envoy::new(json!({"routes": {"chat": {
        "max_request_bytes": 200, "invalid_body": invalid_body, "api": "openai_chat"
    }}}))
}

#[test]
fn a_content_length_over_the_cap_is_a_413_before_the_body() {
    let mut env = capped("reject");
    let mut x = env.stream("chat", &[(":path", CHAT), ("content-length", "201")]);
    assert_eq!(x.on_request_headers(&mut env.host, false), Flow::Pause);
    let r = env.last_reply();
    assert_eq!((r.status, r.details), (413, "request_too_large"));
    assert_eq!(
        env.reply_json()["error"]["message"],
        "Request body of 201 bytes exceeds the limit of 200 bytes for this route."
    );
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_too_large"), 1);
}

#[test]
fn a_chunked_body_growing_past_the_cap_is_a_413() {
    let mut env = capped("reject");
    let mut x = env.stream("chat", &[(":path", CHAT), ("transfer-encoding", "chunked")]);
    assert_eq!(x.on_request_headers(&mut env.host, false), Flow::Pause);
    let big = "x".repeat(150);
    let flow = env.body_chunks(&mut x, &[&big, &big]);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        env.reply_json()["error"]["message"],
        "Request body exceeds the limit of 200 bytes for this route."
    );
    assert!(matches!(x.phase(), Phase::Replied));
}

#[test]
fn a_body_that_is_not_json_is_refused_when_the_route_says_reject() {
    let mut env = capped("reject");
    let (mut x, flow) = env.send("chat", &[], Some("{not json"));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(env.last_reply().status, 400);
    env.answer_reply(&mut x);
    env.end(&mut x);
    assert_eq!(env.requests("chat", "rejected_invalid_body"), 1);
}

#[test]
fn a_body_that_is_not_json_passes_when_the_route_says_pass() {
    let mut env = capped("pass");
    let (mut x, flow) = env.send("chat", &[], Some("{not json"));
    assert_eq!(flow, Flow::Continue);
    env.answer(&mut x, 200, &[], &["{}"]);
    env.end(&mut x);
    let s = env.filter_state();
    assert_eq!(s["outcome"], "admitted");
    assert!(
        s["reserved"].as_u64().unwrap() > 0,
        "a size-based reservation"
    );
}

#[test]
fn a_compressed_body_is_estimated_from_its_size() {
    let mut env = capped("reject");
    let (mut x, flow) = env.send(
        "chat",
        &[("content-encoding", "gzip")],
        Some("\u{1f}binary"),
    );
    assert_eq!(flow, Flow::Continue);
    env.end(&mut x);
    let s = env.filter_state();
    assert_eq!(s["outcome"], "admitted");
    assert_eq!(s.get("gen_ai.request.model"), None);
}

#[test]
fn an_unreadable_body_fails_open() {
    let mut env = capped("pass");
    env.host.fail.push("body");
    let (_, flow) = env.send("chat", &[], Some(CHAT_BODY));
    assert_eq!(flow, Flow::Continue);
    assert!(env.host.replies.is_empty());
}

#[test]
fn a_reply_the_host_refuses_lets_the_request_through() {
    let mut env = capped("reject");
    env.host.fail.push("send_reply");
    let (_, flow) = env.send("chat", &[], Some("{not json"));
    assert_eq!(flow, Flow::Continue, "never hang a request");
}
