//! Stream translation, event by event, both ways: any provider bytes, cut
//! into chunks of any size, become well-formed SSE in the client's dialect
//! (every event's data JSON or `[DONE]`) that ends once; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llm_capacity::core::translate::stream::StreamTranslator;
use llm_capacity::core::translate::Direction;
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
    let mut t = StreamTranslator::new(dir, (sel & 2 != 0).then_some("m"), sel & 4 != 0, 1700);
    let mut out = Vec::new();
    let step = usize::from(sel >> 3).max(1);
    for chunk in body.chunks(step) {
        out.extend(t.feed(chunk));
    }
    out.extend(t.finish());
    assert!(t.complete(), "a finished stream is complete");
    let text = std::str::from_utf8(&out).expect("the translation is UTF-8");
    let mut ends = 0;
    for ev in text.split_terminator("\n\n") {
        let data = ev
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("every event has data");
        if data == "[DONE]" {
            ends += 1;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("event data is JSON");
        if v.get("error").is_some() || v["type"] == "message_stop" {
            ends += 1;
        }
    }
    // OpenAI: [DONE] or an error chunk; Anthropic: message_stop or an error event.
    assert_eq!(ends, 1, "the stream ends once: {text}");
});
