//! Provider wait and quota headers (Retry-After, retry-after-ms, OpenAI durations,
//! Anthropic RFC 3339 resets) and Gemini's retryDelay error body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::upstream::provider_headers as ph;

const NAMES: [&str; 8] = [
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "x-ratelimit-limit-requests",
    "anthropic-ratelimit-requests-reset",
];

fuzz_target!(|data: &[u8]| {
    let now = 1_795_000_000_000u64;
    let text = String::from_utf8_lossy(data);
    let _ = ph::retry_after(&text, now);
    let _ = ph::retry_after_ms(&text);
    let _ = ph::go_duration_ms(&text);
    let _ = ph::rfc3339_wait_ms(&text, now);
    let _ = ph::gemini_retry_delay_ms(data);
    // Lines as header values, names taken in turn.
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, v)| (NAMES[i % NAMES.len()], v))
        .collect();
    let s = ph::parse(pairs, now);
    let _ = s.cooldown_ms();
});
