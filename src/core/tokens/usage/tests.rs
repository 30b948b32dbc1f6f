use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

pub(super) fn u(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
    }
}

/// What a parser saw after a whole stream.
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    pub(super) usage: Option<Usage>,
    pub(super) complete: bool,
    pub(super) text: String,
    pub(super) dropped: u32,
    pub(super) error: bool,
}

pub(super) fn run(dialect: Dialect, chunks: &[&[u8]]) -> Parsed {
    let mut p = SseUsageParser::new(dialect);
    let mut text = String::new();
    for c in chunks {
        p.feed(c, &mut |t| text.push_str(t));
    }
    p.finish(&mut |t| text.push_str(t));
    Parsed {
        usage: p.usage(),
        complete: p.complete(),
        text,
        dropped: p.dropped_events(),
        error: p.error_seen(),
    }
}

/// Feeds `stream` whole, split in two at every byte boundary, and one byte at a
/// time: every way must give the same outcome, which is returned.
pub(super) fn run_all_splits(dialect: Dialect, stream: &[u8]) -> Parsed {
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
pub(super) fn run_all_endings(dialect: Dialect, stream: &str) -> Parsed {
    let lf = run_all_splits(dialect, stream.as_bytes());
    let crlf = run_all_splits(dialect, stream.replace('\n', "\r\n").as_bytes());
    let cr = run_all_splits(dialect, stream.replace('\n', "\r").as_bytes());
    assert_eq!(crlf, lf, "CRLF");
    assert_eq!(cr, lf, "CR");
    lf
}

// ---------------------------------------------------------------- payloads

pub(super) const CHAT_JSON: &str = r#"{
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

pub(super) const CHAT_SSE: &str = concat!(
    ": keep-alive\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}rld \u{2713} \u{1f600} \\\"q\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":10,\"total_tokens\":2016,\"prompt_tokens_details\":{\"cached_tokens\":1920,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);
pub(super) const CHAT_TEXT: &str = "Hello w\u{f6}rld \u{2713} \u{1f600} \"q\"";

pub(super) const CHAT_TOOLS_SSE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"No.\"},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":80,\"completion_tokens\":17,\"total_tokens\":97}}\n\n",
    "data: [DONE]\n\n",
);

pub(super) const COMPLETIONS_JSON: &str = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nThis is a test.","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

pub(super) const COMPLETIONS_SSE: &str = concat!(
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"\\n\\nThis\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\" is a test.\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n",
    "data: [DONE]\n\n",
);

pub(super) const EMBEDDINGS_JSON: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;

pub(super) const RESPONSES_JSON: &str = r#"{
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

pub(super) const RESPONSES_SSE: &str = concat!(
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

pub(super) const ANTHROPIC_JSON: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [{"type": "text", "text": "Hi! My name is Claude."}],
  "stop_reason": "end_turn", "stop_sequence": null,
  "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 13, "service_tier": "standard"}
}"#;

pub(super) const ANTHROPIC_SSE: &str = concat!(
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
pub(super) const ANTHROPIC_TEXT: &str =
    "Hmm. Hello \u{e9}t\u{e9} \u{1f600}{\"location\": \"Paris\"}";

pub(super) const GEMINI_JSON: &str = r#"{
  "candidates": [{"content": {"parts": [{"text": "The sky is blue."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 5, "totalTokenCount": 1241,
                    "cachedContentTokenCount": 1024, "thoughtsTokenCount": 36,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]},
  "modelVersion": "gemini-2.5-flash", "responseId": "abc"
}"#;

pub(super) const GEMINI_SSE: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Thinking** about sky\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"totalTokenCount\": 1220,\"thoughtsTokenCount\": 20},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"totalTokenCount\": 1237,\"thoughtsTokenCount\": 36, \"candidatesTokenCount\": 1},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue \u{2601}.\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"candidatesTokenCount\": 5,\"totalTokenCount\": 1241,\"cachedContentTokenCount\": 1024,\"thoughtsTokenCount\": 36,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 1200}]},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc\"}\n\n",
);

// ---------------------------------------------------------------- JSON bodies

#[test]
pub(super) fn json_openai_chat_with_cached_tokens() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiChat, CHAT_JSON.as_bytes()),
        Some(u(2006, 10, 1920))
    );
}

#[test]
pub(super) fn json_openai_completions() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiCompletions, COMPLETIONS_JSON.as_bytes()),
        Some(u(5, 7, 0))
    );
}

#[test]
pub(super) fn json_openai_embeddings_have_no_output() {
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
pub(super) fn json_openai_responses_with_cached_and_reasoning() {
    assert_eq!(
        usage_from_json(Dialect::OpenAiResponses, RESPONSES_JSON.as_bytes()),
        Some(u(328, 152, 256))
    );
}

#[test]
pub(super) fn json_anthropic_adds_cache_reads_and_writes_to_input() {
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
pub(super) fn json_gemini_output_includes_thoughts() {
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
pub(super) fn json_gemini_buffered_array_stream_uses_last_usage() {
    let body = br#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}},
                    {"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9}},
                    {"candidates":[]}]"#;
    assert_eq!(usage_from_json(Dialect::Gemini, body), Some(u(4, 9, 0)));
}

#[test]
pub(super) fn json_without_usage_is_none() {
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
pub(super) fn json_malformed_or_not_json_is_none() {
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
pub(super) fn json_odd_numbers_are_ignored_or_clamped() {
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
pub(super) fn json_usage_after_big_fields_and_escapes() {
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
pub(super) fn sse_openai_chat_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::OpenAiChat, CHAT_SSE);
    assert_eq!(out.usage, Some(u(2006, 10, 1920)));
    assert!(out.complete);
    assert_eq!(out.text, CHAT_TEXT);
    assert_eq!(out.dropped, 0);
    assert!(!out.error);
}

#[test]
pub(super) fn sse_openai_chat_tool_calls_and_refusal_are_text() {
    let out = run_all_splits(Dialect::OpenAiChat, CHAT_TOOLS_SSE.as_bytes());
    assert_eq!(out.usage, Some(u(80, 17, 0)));
    assert!(out.complete);
    assert_eq!(out.text, "{\"location\": \"Paris\"}No.");
}

#[test]
pub(super) fn sse_openai_chat_without_include_usage() {
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
pub(super) fn sse_openai_chat_continuous_usage_is_final_at_done() {
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
pub(super) fn sse_openai_completions_all_splits() {
    let out = run_all_endings(Dialect::OpenAiCompletions, COMPLETIONS_SSE);
    assert_eq!(out.usage, Some(u(5, 7, 0)));
    assert!(out.complete);
    assert_eq!(out.text, "\n\nThis is a test.");
}

#[test]
pub(super) fn sse_openai_responses_all_splits_and_line_endings() {
    let out = run_all_endings(Dialect::OpenAiResponses, RESPONSES_SSE);
    assert_eq!(out.usage, Some(u(36, 87, 12)));
    assert!(out.complete);
    assert_eq!(out.text, "Hi there \u{2713}{\"a\":1}");
    assert!(!out.error);
}

#[test]
pub(super) fn sse_openai_responses_without_event_names_uses_type() {
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
