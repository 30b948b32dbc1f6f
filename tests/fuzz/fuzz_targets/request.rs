//! Request bodies through the pre-flight (parse, estimate, reservation, rewrite)
//! for every API, chosen by the first byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::tokens::accounting::preflight_encoded;
use llm_capacity::core::config::Policy;

const PATHS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/unknown",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(sel) % PATHS.len()];
    let mut policy = Policy::default();
    policy.include_usage = sel & 0x10 != 0;
    let _ = preflight_encoded(&policy, path, body, None, sel & 0x80 != 0);
});
