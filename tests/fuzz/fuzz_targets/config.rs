//! Plugin configuration: JSON text or protobuf Struct bytes, as Envoy hands them over.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Either a compiled config or an error naming a path: never a panic.
    let _ = llm_capacity::core::load_config(data);
});
