//! Daily quotas on the request path (tests/e2e/test_model_limits.py).

use super::*;
use crate::core::limits::limiter::{ms_to_midnight, DAY_MS};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn a_used_up_day_is_a_429_until_midnight_utc_and_the_next_day_admits() {
    let mut env = Envoy::new(json!({
        "routes": {"chat": {"calibrate": false, "limits": {"tokens_per_day": 1_000, "requests_per_day": 100}}}
    }));
    let mut n = 0;
    loop {
        let x = env.call("chat", &[], 200, 100);
        if x.outcome().as_str() != "admitted" {
            break;
        }
        n += 1;
        assert!(n < 100, "never refused");
    }
    // 300 tokens of real usage each: the fourth takes the day to 1,200.
    assert_eq!(n, 4);
    let r = env.last_reply().clone();
    assert_eq!(r.status, 429);
    assert_eq!(env.reply_json()["error"]["type"], "tokens_per_day");
    let wait = ms_to_midnight(env.host.now_ms.get());
    let retry_ms: u64 = env.reply_header("retry-after-ms").unwrap().parse().unwrap();
    assert!(
        (wait..=wait + 60_000).contains(&retry_ms),
        "{retry_ms} vs {wait}"
    );
    assert_eq!(
        env.reply_header("x-ratelimit-remaining-tokens-day"),
        Some("0")
    );
    assert_eq!(
        env.reply_header("ratelimit-policy"),
        Some("\"requests_per_day\";q=100;w=86400, \"tokens_per_day\";q=1000;w=86400")
    );
    assert!(env.reply_json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m
            .starts_with("Rate limit reached for tokens per day on route \"chat\" (limit 1000).")));
    // At midnight UTC the day starts over.
    env.host.advance(wait);
    assert_eq!(env.host.now_ms.get() % DAY_MS, 0);
    let x = env.call("chat", &[], 200, 100);
    assert_eq!(x.outcome().as_str(), "admitted");
    // The answer's headers are the admission's view: the new day less the reservation.
    let reserved = estimate(&env, "chat", CHAT_BODY).reserved;
    assert_eq!(
        env.host.response_header("x-ratelimit-remaining-tokens-day"),
        Some((1_000 - reserved).to_string().as_str())
    );
}
