//! Answer translation: JSON bodies both ways (a successful answer or `None`),
//! error bodies (always a JSON error in the client's dialect), statuses, and
//! the rate-limit headers (lines of the input as values).
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::translate::answer::{self, HeaderChange};
use llm_capacity::core::translate::Direction;
use serde_json::Value;

const NAMES: [&str; 8] = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-limit",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit",
    "retry-after",
    "x-ratelimit-reset-",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let dir = if sel & 1 == 0 {
        Direction::OPENAI_TO_ANTHROPIC
    } else {
        Direction::ANTHROPIC_TO_OPENAI
    };
    let now_ms = 1_796_611_200_000u64;
    if let Some(out) = answer::json_answer(dir, body, (sel & 2 != 0).then_some("m"), now_ms / 1000)
    {
        let v: Value = serde_json::from_slice(&out).expect("a translated answer is JSON");
        assert!(v.get("usage").is_some_and(Value::is_object), "usage");
    }
    let status = 400 + u32::from(sel);
    let e: Value =
        serde_json::from_slice(&answer::error_body(dir, status, body)).expect("error JSON");
    assert!(e.get("error").is_some_and(Value::is_object), "error object");
    let _ = answer::status(dir, status);
    let text = String::from_utf8_lossy(body);
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, v)| (NAMES[(i + usize::from(sel)) % NAMES.len()], v))
        .collect();
    for c in answer::rate_limit_headers(dir, pairs.iter().copied(), now_ms) {
        if let HeaderChange::Set(k, v) = c {
            assert!(!k.is_empty() && !v.contains('\n'), "header {k}: {v:?}");
        }
    }
    let n = body
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(257).wrapping_add(u64::from(b)));
    let _ = (answer::go_duration(n), answer::rfc3339(n));
});
