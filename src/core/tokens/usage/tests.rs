use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn u(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
    }
}

/// What a parser saw after a whole stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    usage: Option<Usage>,
    complete: bool,
    text: String,
    dropped: u32,
    error: bool,
}

fn run(dialect: Dialect, chunks: &[&[u8]]) -> Outcome {
    let mut p = SseUsageParser::new(dialect);
    let mut text = String::new();
    for c in chunks {
        p.feed(c, &mut |t| text.push_str(t));
    }
    p.finish(&mut |t| text.push_str(t));
    Outcome {
        usage: p.usage(),
        complete: p.complete(),
        text,
        dropped: p.dropped_events(),
        error: p.error_seen(),
    }
}

/// Feeds `stream` whole, split in two at every byte boundary, and one byte at a
/// time: every way must give the same outcome, which is returned.
fn run_all_splits(dialect: Dialect, stream: &[u8]) -> Outcome {
    let whole = run(dialect, &[stream]);
    for i in 0..=stream.len() {
        let (a, b) = stream.split_at(i);
        assert_eq!(run(dialect, &[a, b]), whole, "split at byte {i}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(dialect, &bytes), whole, "one byte at a time");
    whole
}

/// Runs all splits with LF, CRLF and CR line endings.
fn run_all_endings(dialect: Dialect, stream: &str) -> Outcome {
    let lf = run_all_splits(dialect, stream.as_bytes());
    let crlf = run_all_splits(dialect, stream.replace('\n', "\r\n").as_bytes());
    let cr = run_all_splits(dialect, stream.replace('\n', "\r").as_bytes());
    assert_eq!(crlf, lf, "CRLF");
    assert_eq!(cr, lf, "CR");
    lf
}

// ---------------------------------------------------------------- payloads

const CHAT_JSON: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
  "usage": {
    "prompt_tokens": 2006, "completion_tokens": 10, "total_tokens": 2016,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default"
}"#;

const CHAT_SSE: &str = concat!(
    ": keep-alive\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}rld \u{2713} \u{1f600} \\\"q\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":10,\"total_tokens\":2016,\"prompt_tokens_details\":{\"cached_tokens\":1920,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);
const CHAT_TEXT: &str = "Hello w\u{f6}rld \u{2713} \u{1f600} \"q\"";

const CHAT_TOOLS_SSE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"No.\"},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":80,\"completion_tokens\":17,\"total_tokens\":97}}\n\n",
    "data: [DONE]\n\n",
);

const COMPLETIONS_JSON: &str = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nThis is a test.","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

const COMPLETIONS_SSE: &str = concat!(
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"\\n\\nThis\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\" is a test.\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n",
    "data: [DONE]\n\n",
);

const EMBEDDINGS_JSON: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;

const RESPONSES_JSON: &str = r#"{
  "id": "resp_67ccd3a9da748190baa7f1570fe91ac6", "object": "response", "created_at": 1741476777,
  "status": "completed", "error": null, "incomplete_details": null, "instructions": null,
  "model": "o4-mini-2025-04-16",
  "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
              "content": [{"type": "output_text", "text": "The image depicts...", "annotations": []}]}],
  "parallel_tool_calls": true, "reasoning": {"effort": "medium", "summary": null}, "store": true,
  "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
  "top_p": 1.0, "truncation": "disabled",
  "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 256},
            "output_tokens": 152, "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 480},
  "user": null, "metadata": {}
}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1,\"status\":\"in_progress\",\"model\":\"gpt-4.1\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.in_progress\n",
    "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n",
    "event: response.content_part.added\n",
    "data: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":\"\"}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\",\"logprobs\":[]}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\" there \u{2713}\",\"logprobs\":[]}\n\n",
    "event: response.output_text.done\n",
    "data: {\"type\":\"response.output_text.done\",\"sequence_number\":6,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"Hi there \u{2713}\",\"logprobs\":[]}\n\n",
    "event: response.function_call_arguments.delta\n",
    "data: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":7,\"item_id\":\"fc_1\",\"output_index\":1,\"delta\":\"{\\\"a\\\":1}\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there \u{2713}\",\"annotations\":[]}]}],\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":12},\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":123},\"user\":null,\"metadata\":{}}}\n\n",
);

const ANTHROPIC_JSON: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [{"type": "text", "text": "Hi! My name is Claude."}],
  "stop_reason": "end_turn", "stop_sequence": null,
  "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 13, "service_tier": "standard"}
}"#;

const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hmm. \"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" \u{e9}t\u{e9} \u{1f600}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Paris\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);
const ANTHROPIC_TEXT: &str = "Hmm. Hello \u{e9}t\u{e9} \u{1f600}{\"location\": \"Paris\"}";

const GEMINI_JSON: &str = r#"{
  "candidates": [{"content": {"parts": [{"text": "The sky is blue."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 5, "totalTokenCount": 1241,
                    "cachedContentTokenCount": 1024, "thoughtsTokenCount": 36,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]},
  "modelVersion": "gemini-2.5-flash", "responseId": "abc"
}"#;

const GEMINI_SSE: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Thinking** about sky\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"totalTokenCount\": 1220,\"thoughtsTokenCount\": 20},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"totalTokenCount\": 1237,\"thoughtsTokenCount\": 36, \"candidatesTokenCount\": 1},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue \u{2601}.\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"candidatesTokenCount\": 5,\"totalTokenCount\": 1241,\"cachedContentTokenCount\": 1024,\"thoughtsTokenCount\": 36,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 1200}]},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
);

// ---------------------------------------------------------------- JSON bodies

#[test]
fn json_openai_chat_with_cached_tokens() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiChat, CHAT_JSON.as_bytes()),
        Some(u(2006, 10, 1920))
    );
}

#[test]
fn json_openai_completions() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiCompletions, COMPLETIONS_JSON.as_bytes()),
        Some(u(5, 7, 0))
    );
}

#[test]
fn json_openai_embeddings_have_no_output() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiEmbeddings, EMBEDDINGS_JSON.as_bytes()),
        Some(u(8, 0, 0))
    );
    // Only total_tokens: it is all input.
    assert_eq!(
        usage_from_json(
            Dialect::OpenAiEmbeddings,
            br#"{"usage":{"total_tokens":9}}"#
        ),
        Some(u(9, 0, 0))
    );
}

#[test]
fn json_openai_responses_with_cached_and_reasoning() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiResponses, RESPONSES_JSON.as_bytes()),
        Some(u(328, 152, 256))
    );
}

#[test]
fn json_anthropic_adds_cache_reads_and_writes_to_input() {
    assert_eq!(
        usage_from_json(Dialect::Anthropic, ANTHROPIC_JSON.as_bytes()),
        Some(u(2125, 13, 2000))
    );
    assert_eq!(
        usage_from_json(
            Dialect::Anthropic,
            br#"{"usage":{"input_tokens":10,"output_tokens":3}}"#
        ),
        Some(u(10, 3, 0))
    );
}

#[test]
fn json_gemini_output_includes_thoughts() {
    assert_eq!(
        usage_from_json(Dialect::Gemini, GEMINI_JSON.as_bytes()),
        Some(u(1200, 41, 1024))
    );
    // Tool-use prompt tokens are input too.
    assert_eq!(
        usage_from_json(
            Dialect::Gemini,
            br#"{"usageMetadata":{"promptTokenCount":10,"toolUsePromptTokenCount":5,"candidatesTokenCount":2}}"#
        ),
        Some(u(15, 2, 0))
    );
}

#[test]
fn json_gemini_buffered_array_stream_uses_last_usage() {
    let body = br#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}},
                    {"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9}},
                    {"candidates":[]}]"#;
    assert_eq!(usage_from_json(Dialect::Gemini, body), Some(u(4, 9, 0)));
}

#[test]
fn json_without_usage_is_none() {
    for (d, body) in [
        (Dialect::OpenAiChat, &br#"{"choices":[]}"#[..]),
        (Dialect::OpenAiChat, br#"{"usage":null}"#),
        (Dialect::OpenAiChat, br#"{"usage":{}}"#),
        (
            Dialect::OpenAiEmbeddings,
            br#"{"usage":{"completion_tokens":3}}"#,
        ),
        (
            Dialect::OpenAiResponses,
            br#"{"usage":{"prompt_tokens":3}}"#,
        ),
        (
            Dialect::Anthropic,
            br#"{"type":"message","usage":{"cache_read_input_tokens":3}}"#,
        ),
        (Dialect::Gemini, br#"{"candidates":[]}"#),
        (Dialect::Gemini, br#"{"usage":{"prompt_tokens":3}}"#),
        // An error body.
        (
            Dialect::OpenAiChat,
            br#"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#,
        ),
    ] {
        assert_eq!(
            usage_from_json(d, body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn json_malformed_or_not_json_is_none() {
    for body in [
        &b""[..],
        b"{",
        b"not json",
        b"[1,2",
        b"null",
        b"42",
        b"{\"usage\": {\"prompt_tokens\": 1",
        b"{\"usage\": \"lots\"}",
        b"\xff\xfe\x00garbage",
    ] {
        for d in Dialect::ALL {
            assert_eq!(usage_from_json(d, body), None);
        }
    }
}

#[test]
fn json_odd_numbers_are_ignored_or_clamped() {
    let chat = |usage: &str| {
        usage_from_json(
            Dialect::OpenAiChat,
            format!("{{\"usage\":{usage}}}").as_bytes(),
        )
    };
    // Negative: ignored (reads as absent, so 0).
    assert_eq!(
        chat(r#"{"prompt_tokens":-5,"completion_tokens":3}"#),
        Some(u(0, 3, 0))
    );
    // Floats: truncated; whole doubles exact.
    assert_eq!(
        chat(r#"{"prompt_tokens":12.0,"completion_tokens":3.9}"#),
        Some(u(12, 3, 0))
    );
    // Huge integers and floats: clamped.
    assert_eq!(
        chat(r#"{"prompt_tokens":99999999999999999999999,"completion_tokens":1e300}"#),
        Some(u(MAX_TOKEN_COUNT, MAX_TOKEN_COUNT, 0))
    );
    assert_eq!(
        chat(r#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#),
        Some(u(MAX_TOKEN_COUNT, 1, 0))
    );
    // Wrong types: ignored without losing the other counts.
    assert_eq!(
        chat(
            r#"{"prompt_tokens":"7","completion_tokens":3,"total_tokens":[1],"prompt_tokens_details":{"cached_tokens":{"x":1}}}"#
        ),
        Some(u(0, 3, 0))
    );
    assert_eq!(
        chat(r#"{"prompt_tokens":true,"completion_tokens":null}"#),
        None
    );
    // Cached more than input (a provider bug): clamped to input.
    assert_eq!(
        chat(
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":50}}"#
        ),
        Some(u(10, 1, 10))
    );
    // Anthropic sums stay bounded.
    assert_eq!(
        usage_from_json(
            Dialect::Anthropic,
            br#"{"usage":{"input_tokens":1e30,"cache_read_input_tokens":1e30,"cache_creation_input_tokens":1e30,"output_tokens":1}}"#
        ),
        Some(u(3 * MAX_TOKEN_COUNT, 1, MAX_TOKEN_COUNT))
    );
}

#[test]
fn json_usage_after_big_fields_and_escapes() {
    let big = "x\\\"y".repeat(50_000);
    let body = format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{big}\"}}}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}"
    );
    assert_eq!(
        usage_from_json(Dialect::OpenAiChat, body.as_bytes()),
        Some(u(1, 2, 0))
    );
}

// ---------------------------------------------------------------- SSE, per dialect

#[test]
fn sse_openai_chat_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::OpenAiChat, CHAT_SSE);
    assert_eq!(out.usage, Some(u(2006, 10, 1920)));
    assert!(out.complete);
    assert_eq!(out.text, CHAT_TEXT);
    assert_eq!(out.dropped, 0);
    assert!(!out.error);
}

#[test]
fn sse_openai_chat_tool_calls_and_refusal_are_text() {
    let out = run_all_splits(Dialect::OpenAiChat, CHAT_TOOLS_SSE.as_bytes());
    assert_eq!(out.usage, Some(u(80, 17, 0)));
    assert!(out.complete);
    assert_eq!(out.text, "{\"location\": \"Paris\"}No.");
}

#[test]
fn sse_openai_chat_without_include_usage() {
    let stream: String = CHAT_SSE
        .split("\n\n")
        .filter(|e| !e.contains("\"usage\":{"))
        .map(|e| format!("{e}\n\n"))
        .collect();
    let out = run(Dialect::OpenAiChat, &[stream.as_bytes()]);
    assert_eq!(out.usage, None);
    assert!(!out.complete, "[DONE] without usage is not a usage report");
    assert_eq!(out.text, CHAT_TEXT);
}

#[test]
fn sse_openai_chat_continuous_usage_is_final_at_done() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
    );
    let mut p = SseUsageParser::new(Dialect::OpenAiChat);
    p.feed(stream.as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), Some(u(5, 2, 0)));
    assert!(!p.complete());
    p.feed(b"data: [DONE]\n\n", &mut |_| {});
    assert!(p.complete());
}

#[test]
fn sse_openai_completions_all_splits() {
    let out = run_all_endings(Dialect::OpenAiCompletions, COMPLETIONS_SSE);
    assert_eq!(out.usage, Some(u(5, 7, 0)));
    assert!(out.complete);
    assert_eq!(out.text, "\n\nThis is a test.");
}

#[test]
fn sse_openai_responses_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::OpenAiResponses, RESPONSES_SSE);
    assert_eq!(out.usage, Some(u(36, 87, 12)));
    assert!(out.complete);
    assert_eq!(out.text, "Hi there \u{2713}{\"a\":1}");
    assert!(!out.error);
}

#[test]
fn sse_openai_responses_without_event_names_uses_type() {
    let stream: String = RESPONSES_SSE
        .lines()
        .filter(|l| !l.starts_with("event:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = run(Dialect::OpenAiResponses, &[stream.as_bytes()]);
    assert_eq!(out.usage, Some(u(36, 87, 12)));
    assert!(out.complete);
    assert_eq!(out.text, "Hi there \u{2713}{\"a\":1}");
}

#[test]
fn sse_openai_responses_incomplete_and_failed_carry_usage() {
    let incomplete = "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":9,\"output_tokens\":100}}}\n\n";
    let out = run(Dialect::OpenAiResponses, &[incomplete.as_bytes()]);
    assert_eq!(out.usage, Some(u(9, 100, 0)));
    assert!(out.complete);
    assert!(!out.error);

    let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\"},\"usage\":null}}\n\n";
    let out = run(Dialect::OpenAiResponses, &[failed.as_bytes()]);
    assert_eq!(out.usage, None);
    assert!(!out.complete);
    assert!(out.error);
}

#[test]
fn sse_openai_responses_oversized_completed_event_still_gives_usage() {
    let text = "word \\\"usage\\\": {\\\"input_tokens\\\": 999} ".repeat(20_000); // > cap, with decoy keys
    let stream = format!(
        concat!(
            "event: response.output_text.delta\n",
            "data: {{\"type\":\"response.output_text.delta\",\"delta\":\"x\"}}\n\n",
            "event: response.completed\n",
            "data: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"r\",\"instructions\":null,",
            "\"tools\":[{{\"type\":\"function\",\"parameters\":{{\"properties\":{{\"usage\":{{\"type\":\"string\"}}}}}}}}],",
            "\"output\":[{{\"type\":\"message\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{}\"}}]}}],",
            "\"usage\":{{\"input_tokens\":36,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":80000,\"total_tokens\":80036}},",
            "\"user\":null,\"metadata\":{{\"k\":\"\\\"usage\\\":{{\\\"input_tokens\\\":1}}\"}}}}}}\n\n",
        ),
        text
    );
    assert!(stream.len() > MAX_EVENT_BYTES);
    for chunk_size in [stream.len(), 4096, 1000, 7] {
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(chunk_size).collect();
        let out = run(Dialect::OpenAiResponses, &chunks);
        assert_eq!(out.dropped, 1);
        assert_eq!(out.usage, Some(u(36, 80000, 0)), "chunk size {chunk_size}");
        assert!(out.complete);
        assert_eq!(out.text, "x");
    }
}

#[test]
fn sse_anthropic_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::Anthropic, ANTHROPIC_SSE);
    assert_eq!(out.usage, Some(u(2125, 15, 2000)));
    assert!(out.complete);
    assert_eq!(out.text, ANTHROPIC_TEXT);
    assert!(!out.error);
}

#[test]
fn sse_anthropic_usage_is_known_before_the_end() {
    let mut p = SseUsageParser::new(Dialect::Anthropic);
    assert_eq!(p.usage(), None);
    let (start, _) =
        ANTHROPIC_SSE.split_at(ANTHROPIC_SSE.find("event: content_block_start").unwrap());
    p.feed(start.as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), Some(u(2125, 1, 2000)));
    assert!(!p.complete());
}

#[test]
fn sse_anthropic_message_delta_may_repeat_input_fields() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":30,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":null,\"output_tokens\":42}}\n\n",
    );
    let out = run(Dialect::Anthropic, &[stream.as_bytes()]);
    // input 30 replaces 25, creation 7 is new, read 100 stays (null is "not reported").
    assert_eq!(out.usage, Some(u(137, 42, 100)));
    assert!(out.complete);
}

#[test]
fn sse_anthropic_without_event_names_uses_type() {
    let stream: String = ANTHROPIC_SSE
        .lines()
        .filter(|l| !l.starts_with("event:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = run(Dialect::Anthropic, &[stream.as_bytes()]);
    assert_eq!(out.usage, Some(u(2125, 15, 2000)));
    assert!(out.complete);
    assert_eq!(out.text, ANTHROPIC_TEXT);
}

#[test]
fn sse_anthropic_error_event() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: error\n",
        "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let out = run(Dialect::Anthropic, &[stream.as_bytes()]);
    assert!(out.error);
    assert!(!out.complete);
    assert_eq!(out.usage, Some(u(25, 1, 0)));
}

#[test]
fn sse_gemini_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::Gemini, GEMINI_SSE);
    assert_eq!(out.usage, Some(u(1200, 41, 1024)));
    assert!(out.complete);
    assert_eq!(out.text, "**Thinking** about skyThe sky is blue \u{2601}.");
}

#[test]
fn sse_gemini_usage_grows_and_is_final_with_finish_reason() {
    let events: Vec<&str> = GEMINI_SSE.split_inclusive("\n\n").collect();
    let mut p = SseUsageParser::new(Dialect::Gemini);
    p.feed(events[0].as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), Some(u(1200, 20, 0)));
    assert!(!p.complete());
    p.feed(events[1].as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), Some(u(1200, 37, 0)));
    assert!(!p.complete());
    p.feed(events[2].as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), Some(u(1200, 41, 1024)));
    assert!(p.complete());
}

#[test]
fn sse_embeddings_reads_nothing() {
    let out = run(Dialect::OpenAiEmbeddings, &[CHAT_SSE.as_bytes()]);
    assert_eq!(out.usage, None);
    assert!(!out.complete);
    assert_eq!(out.text, "");
}

// ---------------------------------------------------------------- truncation

#[test]
fn sse_truncated_streams_are_partial() {
    let cut = |s: &str, at: &str| s[..s.find(at).unwrap()].to_string();
    // Anthropic cut before message_delta: input known, output from message_start.
    let out = run(
        Dialect::Anthropic,
        &[cut(ANTHROPIC_SSE, "event: message_delta").as_bytes()],
    );
    assert_eq!(out.usage, Some(u(2125, 1, 2000)));
    assert!(!out.complete);
    assert_eq!(out.text, ANTHROPIC_TEXT);
    // OpenAI chat cut before the usage chunk.
    let out = run(
        Dialect::OpenAiChat,
        &[cut(CHAT_SSE, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],").as_bytes()],
    );
    assert_eq!(out.usage, None);
    assert!(!out.complete);
    assert_eq!(out.text, CHAT_TEXT);
    // Responses cut before response.completed.
    let out = run(
        Dialect::OpenAiResponses,
        &[cut(RESPONSES_SSE, "event: response.completed").as_bytes()],
    );
    assert_eq!(out.usage, None);
    assert!(!out.complete);
    // Gemini cut before the last chunk: last usage known, not final.
    let out = run(
        Dialect::Gemini,
        &[cut(
            GEMINI_SSE,
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky",
        )
        .as_bytes()],
    );
    assert_eq!(out.usage, Some(u(1200, 37, 0)));
    assert!(!out.complete);
}

#[test]
fn sse_cut_inside_an_event_loses_only_that_event() {
    // Cut in the middle of the final usage chunk's JSON.
    let at = CHAT_SSE.find("\"completion_tokens\":10").unwrap();
    let out = run(Dialect::OpenAiChat, &[&CHAT_SSE.as_bytes()[..at]]);
    assert_eq!(out.usage, None);
    assert!(!out.complete);
    assert_eq!(out.text, CHAT_TEXT);
}

#[test]
fn finish_dispatches_an_unterminated_last_event() {
    let stream = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}";
    let mut p = SseUsageParser::new(Dialect::OpenAiChat);
    p.feed(stream.as_bytes(), &mut |_| {});
    assert_eq!(p.usage(), None, "not dispatched before its blank line");
    p.finish(&mut |_| {});
    assert_eq!(p.usage(), Some(u(3, 4, 0)));
    assert!(p.complete());
    // Ended by a single newline only.
    let out = run(Dialect::OpenAiChat, &[format!("{stream}\n").as_bytes()]);
    assert_eq!(out.usage, Some(u(3, 4, 0)));
}

// ---------------------------------------------------------------- SSE syntax

#[test]
fn sse_syntax_comments_fields_and_multiline_data() {
    let stream = concat!(
        "\u{feff}", // BOM
        ": comment\n",
        ":\n",
        "id: 1\n",
        "retry: 1000\n",
        "unknown-field: x\n",
        "event: message_start\n",
        "data:{\"type\":\"message_start\",\n",
        "data:  \"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n",
        ": comment inside an event\n",
        "\n",
        "event: content_block_delta\n",
        "data\n", // "data" with no colon: an empty data line
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"t\"}}\n",
        "\n",
        "event: content_block_delta\n", // named event with no data: not dispatched
        "\n",
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"u\"}}\n",
        "\n\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":2}}\n",
        "\n",
    );
    let out = run_all_endings(Dialect::Anthropic, stream);
    assert_eq!(out.usage, Some(u(7, 2, 0)));
    assert!(out.complete);
    // The event whose data starts with an empty line is still JSON ("\n{...}").
    assert_eq!(out.text, "tu");
}

#[test]
fn sse_decoder_events_exactly() {
    let mut events = Vec::new();
    let mut d = sse::Decoder::default();
    let mut sink = |e: sse::Event<'_>| {
        if let sse::Event::Message { name, data } = e {
            events.push((name.to_string(), String::from_utf8_lossy(data).into_owned()));
        }
    };
    d.feed(
        b"event: a\ndata: 1\ndata:2\ndata:  3\n\r\ndata\r\rdata:\n\nevent: b\n\nevent:c\ndata: x: y\n",
        &mut sink,
    );
    d.finish(&mut sink);
    assert_eq!(
        events,
        vec![
            ("a".into(), "1\n2\n 3".into()),
            ("".into(), "".into()),
            ("".into(), "".into()),
            ("c".into(), "x: y".into()),
        ]
    );
}

#[test]
fn sse_cr_at_chunk_end_then_lf() {
    // "\r" ending one chunk and "\n" starting the next are one line end, not two.
    let mut p = SseUsageParser::new(Dialect::OpenAiChat);
    let mut text = String::new();
    p.feed(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r",
        &mut |t| text.push_str(t),
    );
    p.feed(
        b"\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r",
        &mut |t| text.push_str(t),
    );
    p.feed(b"\n\r\n", &mut |t| text.push_str(t));
    // Two data lines in one event: "{...}\n{...}" is not valid JSON, so no text.
    assert_eq!(text, "");
    let mut p = SseUsageParser::new(Dialect::OpenAiChat);
    p.feed(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r",
        &mut |t| text.push_str(t),
    );
    p.feed(b"\n\r", &mut |t| text.push_str(t));
    p.feed(b"\n", &mut |t| text.push_str(t));
    assert_eq!(
        text, "a",
        "CRLF CRLF split as \\r | \\n\\r | \\n is one blank line"
    );
}

// ---------------------------------------------------------------- robustness

#[test]
fn oversized_event_is_dropped_and_parsing_recovers() {
    let big = "y".repeat(MAX_EVENT_BYTES);
    let stream = format!(
        concat!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}\n\n",
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"b\"}}}}]}}\n\n",
            // Oversized through many short data lines.
            "{}",
            "\n",
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\n",
            "data: [DONE]\n\n",
        ),
        big,
        "data: zzzzzzzzzzzzzzz\n".repeat(MAX_EVENT_BYTES / 16 + 10)
    );
    for chunk_size in [stream.len(), 65536, 1000, 3] {
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(chunk_size).collect();
        let mut p = SseUsageParser::new(Dialect::OpenAiChat);
        let mut text = String::new();
        let mut max_buffered = 0;
        for c in &chunks {
            p.feed(c, &mut |t| text.push_str(t));
            max_buffered = max_buffered.max(p.decoder.buffered());
        }
        p.finish(&mut |t| text.push_str(t));
        assert_eq!(p.dropped_events(), 2, "chunk size {chunk_size}");
        assert_eq!(text, "ab");
        assert_eq!(p.usage(), Some(u(1, 2, 0)));
        assert!(p.complete());
        assert!(max_buffered <= MAX_EVENT_BYTES, "buffered {max_buffered}");
    }
}

#[test]
fn the_cap_counts_whole_lines_whatever_the_chunking() {
    let overhead = "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}".len();
    for (line_len, dropped) in [(MAX_EVENT_BYTES, 0), (MAX_EVENT_BYTES + 1, 1)] {
        let content = "q".repeat(line_len - overhead);
        let stream =
            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n");
        assert_eq!(stream.len(), line_len + 2);
        for chunk_size in [stream.len(), 999, 2] {
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(chunk_size).collect();
            let out = run(Dialect::OpenAiChat, &chunks);
            assert_eq!(
                out.dropped, dropped,
                "line of {line_len}, chunks of {chunk_size}"
            );
            assert_eq!(out.text.len(), if dropped == 0 { content.len() } else { 0 });
        }
    }
}

#[test]
fn unterminated_oversized_stream_stays_bounded() {
    // One endless line: never buffered beyond the cap.
    let mut p = SseUsageParser::new(Dialect::Anthropic);
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..40 {
        p.feed(&chunk, &mut |_| {});
        assert!(p.decoder.buffered() <= MAX_EVENT_BYTES);
    }
    assert_eq!(p.dropped_events(), 1);
    p.feed(b"\n\nevent: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n", &mut |_| {});
    assert_eq!(p.usage(), Some(u(5, 0, 0)));
}

#[test]
fn malformed_json_events_are_ignored() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"a\"\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":42}}\n\n",
        "event: content_block_delta\n",
        "data: [1,2,3]\n\n",
        "event: message_delta\n",
        "data: not json at all\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"b\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":-3}}\n\n",
    );
    let out = run(Dialect::Anthropic, &[stream.as_bytes()]);
    assert_eq!(out.text, "b");
    assert_eq!(out.usage, Some(u(5, 1, 0)));
    assert!(!out.complete, "a negative output count is not a report");
    assert_eq!(out.dropped, 0);
}

#[test]
fn non_utf8_bytes_do_not_panic() {
    // Invalid UTF-8 inside a text delta: replaced, the event still counts.
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\xff\xfeb\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
    let out = run_all_splits(Dialect::OpenAiChat, stream);
    assert_eq!(out.text, "a\u{fffd}\u{fffd}b");
    assert_eq!(out.usage, Some(u(1, 1, 0)));
    // Garbage event names and data.
    let garbage = b"event: \xc3\x28\ndata: \xe2\x82\n\n\xf0\x9f\x98\n\n";
    for d in [
        Dialect::OpenAiChat,
        Dialect::OpenAiResponses,
        Dialect::Anthropic,
        Dialect::Gemini,
    ] {
        let out = run_all_splits(d, garbage);
        assert_eq!(out.usage, None);
    }
}

#[test]
fn pseudo_random_input_never_panics() {
    // A small LCG so the test is deterministic on every target.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u32
    };
    let alphabet: &[&[u8]] = &[
        b"data: ",
        b"event: ",
        b"\n",
        b"\r",
        b"\r\n",
        b":",
        b"{\"usage\":{\"prompt_tokens\":",
        b"\"choices\":[{\"delta\":{\"content\":\"",
        b"\"type\":\"message_delta\"",
        b"}",
        b"]",
        b"\"",
        b"\xff",
        b"\xe2\x82",
        b"[DONE]",
        b"1e999",
        b"-1",
        b"response.completed",
        b"\"usage\"",
    ];
    for dialect in Dialect::ALL {
        for _ in 0..50 {
            let mut stream = Vec::new();
            for _ in 0..(next() % 200) {
                stream.extend_from_slice(alphabet[next() as usize % alphabet.len()]);
            }
            let mut p = SseUsageParser::new(dialect);
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = (next() as usize % 17 + 1).min(rest.len());
                p.feed(&rest[..n], &mut |_| {});
                rest = &rest[n..];
            }
            p.finish(&mut |_| {});
            let _ = usage_from_json(dialect, &stream);
        }
    }
}

#[test]
fn text_is_borrowed_when_unescaped() {
    let chunk: wire::ChatChunk =
        serde_json::from_str(r#"{"choices":[{"delta":{"content":"plain"}},{"text":"e\"s"}]}"#)
            .unwrap();
    let choices = chunk.choices.unwrap();
    let content = &choices[0]
        .delta
        .as_ref()
        .unwrap()
        .content
        .as_ref()
        .unwrap()
        .0;
    assert!(matches!(content, std::borrow::Cow::Borrowed("plain")));
    assert_eq!(choices[1].text.as_ref().unwrap().0, "e\"s");
}

#[test]
fn bom_is_stripped_even_when_split() {
    let stream = "\u{feff}data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
    let out = run_all_splits(Dialect::OpenAiChat, stream.as_bytes());
    assert_eq!(out.usage, Some(u(3, 4, 0)));
    // A partial BOM is not a BOM: its bytes are part of the first line.
    let out = run(
        Dialect::OpenAiChat,
        &[b"\xef\xbbdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n"],
    );
    assert_eq!(out.usage, None);
}

#[test]
fn a_dropped_event_ends_only_at_its_blank_line() {
    // The chunk boundary falls just before the oversized line's end: that "\n"
    // ends the line, it is not a blank line, so the usage line after it is still
    // part of the dropped event.
    let big = format!("data: {}", "y".repeat(MAX_EVENT_BYTES));
    let rest = "\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"after\"}}]}\n\n";
    for chunks in [
        vec![big.as_bytes(), rest.as_bytes()],
        vec![
            &big.as_bytes()[..10],
            &big.as_bytes()[10..],
            rest.as_bytes(),
        ],
        vec![big.as_bytes(), &rest.as_bytes()[..1], &rest.as_bytes()[1..]],
    ] {
        let out = run(Dialect::OpenAiChat, &chunks);
        assert_eq!(out.dropped, 1);
        assert_eq!(out.usage, None);
        assert_eq!(out.text, "after");
    }
}

#[test]
fn answering_model_is_read_from_json_and_streams() {
    assert_eq!(
        model_from_json(br#"{"id":"x","model":"gpt-4o-2024-08-06","usage":{}}"#).as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(
        model_from_json(br#"{"candidates":[],"modelVersion":"gemini-2.5-flash"}"#).as_deref(),
        Some("gemini-2.5-flash")
    );
    assert_eq!(model_from_json(b"not json"), None);
    let mut p = SseUsageParser::new(Dialect::OpenAiChat);
    p.feed(
        b"data: {\"model\":\"gpt-4o-mini-2024\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        &mut |_| {},
    );
    assert_eq!(p.model(), Some("gpt-4o-mini-2024"));
    let mut a = SseUsageParser::new(Dialect::Anthropic);
    a.feed(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        &mut |_| {},
    );
    assert_eq!(a.model(), Some("claude-sonnet-4-5"));
}
