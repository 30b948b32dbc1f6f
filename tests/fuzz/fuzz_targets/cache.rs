//! The response cache's parsers: request bodies into the canonical key (which
//! must not depend on key order or whitespace), Cache-Control directives,
//! Idempotency-Key values, the finish check of stored answers (JSON and SSE),
//! and stored entries read back from shared data.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::cache::canon;
use llm_capacity::core::cache::store::Entry;

const APIS: [&str; 6] = [
    "openai_chat",
    "openai_responses",
    "openai_completions",
    "openai_embeddings",
    "anthropic_messages",
    "gemini",
];

fuzz_target!(|data: &[u8]| {
    let api = APIS[data.first().map_or(0, |b| *b as usize) % APIS.len()];
    let text = String::from_utf8_lossy(data);
    let _ = canon::directives(Some(&text));
    if let Ok(k) = canon::idempotency_key(&text) {
        assert!(!k.is_empty() && k.len() <= canon::MAX_IDEMPOTENCY_KEY_LEN);
        assert!(k.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    let _ = canon::finished_well(api, true, data);
    let _ = canon::finished_well(api, false, data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = canon::deterministic(api, &v);
        let d = canon::request_digest(api, "/v1/x", &v);
        // Written out again (other spacing, same key order as parsed), the key is the same.
        if let Ok(pretty) = serde_json::to_vec_pretty(&v) {
            // (serde_json's float_roundtrip: a number read back is the same value.)
            if let Ok(again) = serde_json::from_slice::<serde_json::Value>(&pretty) {
                assert_eq!(canon::request_digest(api, "/v1/x", &again), d);
            }
        }
        // The canonical form is itself JSON, and canonical.
        let mut out = Vec::new();
        if canon::canonical_json(&v, &mut out) {
            let back: serde_json::Value = match serde_json::from_slice(&out) {
                Ok(b) => b,
                Err(e) => panic!("canonical form is not JSON: {e}"),
            };
            let mut twice = Vec::new();
            assert!(canon::canonical_json(&back, &mut twice));
            assert_eq!(out, twice);
        }
    }
    // Anything read from a slot: an entry, or nothing; never a panic.
    if let Some(e) = Entry::decode(data) {
        assert_eq!(Entry::decode(&e.encode()), Some(e));
    }
});
