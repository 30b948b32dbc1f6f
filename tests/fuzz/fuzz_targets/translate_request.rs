//! Request translation, OpenAI chat <-> Anthropic messages: any body either
//! becomes a JSON object with its messages (Anthropic's with a max_tokens of
//! at least 1) or is refused with a reason; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::translate::request::translate;
use llm_capacity::core::translate::{Dialect, Direction};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let dir = if sel & 1 == 0 {
        Direction::OPENAI_TO_ANTHROPIC
    } else {
        Direction::ANTHROPIC_TO_OPENAI
    };
    let model = (sel & 2 != 0).then_some("entry-model");
    let allowance = u64::from(sel >> 2);
    match translate(dir, body, model, allowance) {
        Ok(t) => {
            let v: Value = serde_json::from_slice(&t.body).expect("translated body is JSON");
            assert!(
                v.get("messages").is_some_and(Value::is_array),
                "no messages list"
            );
            if dir.provider == Dialect::Anthropic {
                assert!(
                    v["max_tokens"].as_u64().is_some_and(|n| n >= 1),
                    "max_tokens"
                );
            }
            if let Some(m) = model {
                assert_eq!(v["model"], m);
            }
            assert_eq!(v.get("stream").is_some(), t.stream);
        }
        Err(why) => assert!(!why.0.is_empty(), "a refusal names its reason"),
    }
});
