//! Provider answers: whole JSON bodies and SSE streams cut at arbitrary points,
//! for every dialect.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::tokens::usage::{model_from_json, usage_from_json, Dialect, SseUsageParser};


fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let d = Dialect::ALL[usize::from(sel) % Dialect::ALL.len()];
    let _ = usage_from_json(d, body);
    let _ = model_from_json(body);
    let mut p = SseUsageParser::new(d);
    // Chunk boundaries from the selector, so events split anywhere.
    let step = usize::from(sel >> 3).max(1);
    for chunk in body.chunks(step) {
        p.feed(chunk, &mut |_| {});
    }
    p.finish(&mut |_| {});
    let _ = (p.usage(), p.complete(), p.model());
});
