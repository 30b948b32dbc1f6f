//! The translators' cost (OpenAI chat <-> Anthropic messages), per request,
//! per answer and per streamed chunk, built for wasm32-wasip1 and run under
//! node (`node --no-warnings tests/tokenbench/run-wasi.mjs <file.wasm>`), so it
//! measures the code as a wasm engine runs it; also runs natively.
//! `tests/tokenbench/translate-bench.sh` writes both into
//! `tests/bench/results/translate.md`.

use llm_capacity::core::tokens::usage::{Dialect as UsageDialect, SseUsageParser};
use llm_capacity::core::translate::answer::json_answer;
use llm_capacity::core::translate::request::translate;
use llm_capacity::core::translate::stream::StreamTranslator;
use llm_capacity::core::translate::Direction;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Instant;

const OA_TO_AN: Direction = Direction::OPENAI_TO_ANTHROPIC;
const AN_TO_OA: Direction = Direction::ANTHROPIC_TO_OPENAI;

/// Nanoseconds per call: the median of 5 rounds of at least 100 ms each, after a warm-up
/// (so a wasm engine runs its optimised code, as a long-lived Envoy worker does).
fn time(mut f: impl FnMut()) -> f64 {
    let mut per = Vec::new();
    let warm = Instant::now();
    while warm.elapsed().as_millis() < 200 {
        f();
    }
    for _ in 0..5 {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed().as_millis() < 100 {
            for _ in 0..16 {
                f();
            }
            n += 16;
        }
        per.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    per.sort_by(f64::total_cmp);
    per[2]
}

fn words(n: usize) -> String {
    let w = [
        "alpha", "beta", "gamma", "delta", "the", "quick", "brown", "fox",
    ];
    (0..n).map(|i| w[i % w.len()]).collect::<Vec<_>>().join(" ")
}

fn chat_openai() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 256, "temperature": 0.7, "stream": false,
        "messages": [{"role": "system", "content": "You are a helpful assistant. Be brief."},
                     {"role": "user", "content": words(150)}]})
}

fn agent_openai() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 512, "stream": true, "stream_options": {"include_usage": true},
        "tools": (0..4).map(|i| json!({"type": "function", "function": {"name": format!("tool_{i}"),
            "description": words(20), "parameters": {"type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}}})).collect::<Vec<_>>(),
        "tool_choice": "auto",
        "messages": [
            {"role": "system", "content": words(60)},
            {"role": "user", "content": words(120)},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "tool_0", "arguments": "{\"q\":\"alpha\",\"n\":3}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": words(150)},
            {"role": "assistant", "content": words(80)},
            {"role": "user", "content": words(40)}]})
}

fn to_anthropic(v: &Value) -> Value {
    let t = translate(
        OA_TO_AN,
        v.to_string().as_bytes(),
        Some("claude-sonnet-4"),
        1000,
    )
    .unwrap_or_else(|e| fail(&e.0));
    serde_json::from_slice(&t.body).unwrap_or_else(|e| fail(&e.to_string()))
}

fn fail(why: &str) -> ! {
    eprintln!("translate-speed: {why}");
    std::process::exit(1)
}

const AN_DELTA: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" quick brown\"}}\n\n";
const OA_DELTA: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" quick brown\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const AN_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";

fn main() {
    let mut rows: Vec<(String, usize, usize, f64)> = Vec::new();
    let mut row = |name: &str, input: &[u8], out_len: usize, ns: f64| {
        rows.push((name.to_string(), input.len(), out_len, ns));
    };
    for (name, oa) in [
        ("chat, 1 KB", chat_openai()),
        (
            "agent turn with 4 tools and a tool round trip",
            agent_openai(),
        ),
    ] {
        let body = oa.to_string().into_bytes();
        let out =
            translate(OA_TO_AN, &body, Some("claude-sonnet-4"), 1000).map_or(0, |t| t.body.len());
        let ns = time(|| {
            let _ = black_box(translate(
                OA_TO_AN,
                black_box(&body),
                Some("claude-sonnet-4"),
                1000,
            ));
        });
        row(
            &format!("request OpenAI -> Anthropic: {name}"),
            &body,
            out,
            ns,
        );
        let an = to_anthropic(&oa).to_string().into_bytes();
        let out = translate(AN_TO_OA, &an, Some("gpt-4o"), 1000).map_or(0, |t| t.body.len());
        let ns = time(|| {
            let _ = black_box(translate(AN_TO_OA, black_box(&an), Some("gpt-4o"), 1000));
        });
        row(
            &format!("request Anthropic -> OpenAI: {name}"),
            &an,
            out,
            ns,
        );
    }
    let an_answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": words(60)},
                    {"type": "tool_use", "id": "tu_1", "name": "tool_0", "input": {"q": "alpha", "n": 3}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 812, "output_tokens": 77}})
    .to_string()
    .into_bytes();
    let oa_answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": words(60),
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "tool_0", "arguments": "{\"q\":\"alpha\",\"n\":3}"}}]}}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 77, "total_tokens": 889}})
    .to_string()
    .into_bytes();
    for (name, dir, body) in [
        (
            "answer Anthropic -> OpenAI (JSON, text and a tool call)",
            OA_TO_AN,
            &an_answer,
        ),
        (
            "answer OpenAI -> Anthropic (JSON, text and a tool call)",
            AN_TO_OA,
            &oa_answer,
        ),
    ] {
        let out = json_answer(dir, body, Some("m"), 1).map_or(0, |b| b.len());
        let ns = time(|| {
            let _ = black_box(json_answer(dir, black_box(body), Some("m"), 1));
        });
        row(name, body, out, ns);
    }
    // Per streamed chunk: one text delta event per chunk, as providers send them.
    let mut t = StreamTranslator::new(OA_TO_AN, Some("claude-sonnet-4"), true, 1);
    t.feed(AN_START);
    let out = t.feed(AN_DELTA).len();
    let ns = time(|| {
        black_box(t.feed(black_box(AN_DELTA)));
    });
    row(
        "stream chunk Anthropic -> OpenAI (one text delta)",
        AN_DELTA,
        out,
        ns,
    );
    let mut t = StreamTranslator::new(AN_TO_OA, Some("gpt-4o"), true, 1);
    t.feed(OA_DELTA);
    let out = t.feed(OA_DELTA).len();
    let ns = time(|| {
        black_box(t.feed(black_box(OA_DELTA)));
    });
    row(
        "stream chunk OpenAI -> Anthropic (one text delta)",
        OA_DELTA,
        out,
        ns,
    );
    // For scale: what every stream already pays per chunk, translated or not.
    for (name, d, chunk) in [
        (
            "reference: usage reader, one OpenAI chunk (every stream pays it)",
            UsageDialect::OpenAiChat,
            OA_DELTA,
        ),
        (
            "reference: usage reader, one Anthropic chunk (every stream pays it)",
            UsageDialect::Anthropic,
            AN_DELTA,
        ),
    ] {
        let mut p = SseUsageParser::new(d);
        let ns = time(|| {
            p.feed(black_box(chunk), &mut |t| {
                black_box(t);
            });
        });
        row(name, chunk, chunk.len(), ns);
    }
    println!("| case | bytes in | bytes out | µs per call |");
    println!("|---|---:|---:|---:|");
    for (name, i, o, ns) in rows {
        println!("| {name} | {i} | {o} | {:.2} |", ns / 1000.0);
    }
}
