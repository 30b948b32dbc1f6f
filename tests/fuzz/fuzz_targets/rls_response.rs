//! The rate limit service's `RateLimitResponse` (global tier): the filter decodes
//! whatever bytes come back from the service, then uses the windows it names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::limits::global;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = global::decode_response(data) {
        let _ = a.wait_ms();
        for s in &a.statuses {
            // Any reset the decoder accepts must make a window end without overflow.
            let _ = global::window_end(Some(s), u64::MAX / 2);
        }
    }
});
