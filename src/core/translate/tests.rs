//! Translation tables: requests and answers both ways, streams split at every
//! byte boundary, malformed streams.

use super::answer::{self, HeaderChange, Usage};
use super::request::translate;
use super::stream::{StreamTranslator, CUT_SHORT};
use super::{Dialect, Direction};
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const OA_TO_AN: Direction = Direction {
    client: Dialect::OpenAi,
    provider: Dialect::Anthropic,
};
const AN_TO_OA: Direction = Direction {
    client: Dialect::Anthropic,
    provider: Dialect::OpenAi,
};

fn req(dir: Direction, body: Value, model: Option<&str>) -> Value {
    let t = translate(dir, body.to_string().as_bytes(), model, 1000).unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

fn refused(dir: Direction, body: Value) -> String {
    translate(dir, body.to_string().as_bytes(), None, 1000)
        .unwrap_err()
        .0
}

#[test]
fn openai_requests_become_anthropic_requests() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "system, user, the allowance as max_tokens, the entry's model",
            json!({"model": "gpt-4o", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}]}),
            json!({"model": "claude-sonnet-4", "max_tokens": 1000,
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        ),
        (
            "developer prompt, sampling, stop string, the client's cap, stream, user",
            json!({"model": "gpt-4o", "max_completion_tokens": 7, "temperature": 1.5, "top_p": 0.9,
                "stop": "END", "stream": true, "stream_options": {"include_usage": true}, "user": "u1",
                "messages": [{"role": "developer", "content": [{"type": "text", "text": "d"}]},
                             {"role": "user", "content": "q"}]}),
            json!({"model": "claude-sonnet-4", "max_tokens": 7, "temperature": 1.0, "top_p": 0.9,
                "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u1"},
                "system": [{"type": "text", "text": "d"}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}),
        ),
        (
            "images: a data URL and an https URL",
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]}]}),
            json!({"model": "claude-sonnet-4", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}),
        ),
        (
            "tools, a forced tool, no parallel calls, a tool call and its result",
            json!({"model": "m", "max_tokens": 5, "parallel_tool_calls": false,
                "tools": [{"type": "function", "function": {"name": "get", "description": "d",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
                "tool_choice": {"type": "function", "function": {"name": "get"}},
                "messages": [
                    {"role": "user", "content": "go"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get", "arguments": "{\"q\":\"a\"}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "result"},
                    {"role": "user", "content": "thanks"}]}),
            json!({"model": "claude-sonnet-4", "max_tokens": 5,
                "tools": [{"name": "get", "description": "d",
                    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                "tool_choice": {"type": "tool", "name": "get", "disable_parallel_tool_use": true},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "go"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "get", "input": {"q": "a"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "result"},
                                                 {"type": "text", "text": "thanks"}]}]}),
        ),
        (
            "tool_choice required and none; stop list; dropped fields",
            json!({"model": "m", "max_tokens": 5, "stop": ["a", "b"], "seed": 1, "frequency_penalty": 0.5,
                "logprobs": true, "response_format": {"type": "text"},
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
                "messages": [{"role": "user", "content": "x", "name": "bob"}]}),
            json!({"model": "claude-sonnet-4", "max_tokens": 5, "stop_sequences": ["a", "b"],
                "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(
            req(OA_TO_AN, input, Some("claude-sonnet-4")),
            want,
            "{name}"
        );
    }
    let t = translate(OA_TO_AN, br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"seed":3,"messages":[{"role":"user","content":"x"}]}"#, None, 9).unwrap();
    assert!(t.stream && t.include_usage);
    assert_eq!(
        t.dropped,
        vec!["seed".to_string(), "stream_options".to_string()]
    );
}

#[test]
fn anthropic_requests_become_openai_requests() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "system string, cap, sampling, stream asks for usage",
            json!({"model": "claude-sonnet-4", "max_tokens": 9, "system": "be brief", "temperature": 0.2,
                "top_p": 0.8, "top_k": 5, "stop_sequences": ["X"], "stream": true, "metadata": {"user_id": "u"},
                "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "gpt-4o", "max_completion_tokens": 9, "temperature": 0.2, "top_p": 0.8,
                "stop": ["X"], "stream": true, "stream_options": {"include_usage": true}, "user": "u",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
        ),
        (
            "system blocks, images, tool use and results, forced tool without parallel calls",
            json!({"model": "c", "max_tokens": 3,
                "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "get", "disable_parallel_tool_use": true},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "look"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QQ=="}},
                        {"type": "image", "source": {"type": "url", "url": "https://i/x.jpg"}}]},
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "calling"},
                        {"type": "tool_use", "id": "t1", "name": "get", "input": {"q": 1}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "42"}]}, {"type": "text", "text": "and?"}]}]}),
            json!({"model": "gpt-4o", "max_completion_tokens": 3,
                "tools": [{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "get"}}, "parallel_tool_calls": false,
                "messages": [
                    {"role": "system", "content": "a\nb"},
                    {"role": "user", "content": [{"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ=="}},
                        {"type": "image_url", "image_url": {"url": "https://i/x.jpg"}}]},
                    {"role": "assistant", "content": "calling", "tool_calls": [{"id": "t1", "type": "function",
                        "function": {"name": "get", "arguments": "{\"q\":1}"}}]},
                    {"role": "tool", "tool_call_id": "t1", "content": "42"},
                    {"role": "user", "content": [{"type": "text", "text": "and?"}]}]}),
        ),
        (
            "tool_choice any and auto; an assistant turn of calls only",
            json!({"model": "c", "max_tokens": 3, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
            json!({"model": "gpt-4o", "max_completion_tokens": 3,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "messages": [{"role": "user", "content": "x"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "t", "type": "function",
                        "function": {"name": "f", "arguments": "{}"}}]}]}),
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(req(AN_TO_OA, input, Some("gpt-4o")), want, "{name}");
    }
}

#[test]
fn requests_whose_meaning_would_change_are_refused() {
    let m = json!([{"role": "user", "content": "x"}]);
    let cases: Vec<(Direction, Value, &str)> = vec![
        (
            OA_TO_AN,
            json!({"n": 2, "messages": m}),
            "n > 1 (Anthropic answers one choice)",
        ),
        (
            OA_TO_AN,
            json!({"response_format": {"type": "json_schema"}, "messages": m}),
            "response_format json_schema (no Anthropic counterpart)",
        ),
        (
            OA_TO_AN,
            json!({"modalities": ["text", "audio"], "messages": m}),
            "audio output (no Anthropic counterpart)",
        ),
        (
            OA_TO_AN,
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "messages[0]: content part \"input_audio\"",
        ),
        (
            OA_TO_AN,
            json!({"messages": [{"role": "function", "content": "x"}]}),
            "messages[0]: role \"function\"",
        ),
        (
            OA_TO_AN,
            json!({"tools": [{"type": "custom", "custom": {}}], "messages": m}),
            "tools[0]: not a function tool",
        ),
        (
            OA_TO_AN,
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function":
            {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0]: tool call arguments are not a JSON object",
        ),
        (OA_TO_AN, json!({"messages": "x"}), "messages is not a list"),
        (
            AN_TO_OA,
            json!({"max_tokens": 1, "stop_sequences": ["a", "b", "c", "d", "e"], "messages": m}),
            "5 stop sequences (OpenAI takes at most 4)",
        ),
        (
            AN_TO_OA,
            json!({"max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "w"}], "messages": m}),
            "tools[0]: a server tool (no OpenAI chat counterpart)",
        ),
        (
            AN_TO_OA,
            json!({"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document"}]}]}),
            "messages[0]: content block \"document\"",
        ),
        (
            AN_TO_OA,
            json!({"max_tokens": 1, "mcp_servers": [{}], "messages": m}),
            "mcp_servers (no OpenAI chat counterpart)",
        ),
    ];
    for (dir, body, want) in cases {
        assert_eq!(refused(dir, body), want);
    }
    assert_eq!(
        translate(OA_TO_AN, b"{nope", None, 1).unwrap_err().0,
        "body is not JSON: key must be a string at line 1 column 2"
    );
    assert_eq!(
        translate(AN_TO_OA, b"[1]", None, 1).unwrap_err().0,
        "body is not a JSON object"
    );
}

fn json_answer(dir: Direction, v: Value, model: &str) -> Value {
    serde_json::from_slice(
        &answer::json_answer(dir, v.to_string().as_bytes(), Some(model), 1700).unwrap(),
    )
    .unwrap()
}

#[test]
fn anthropic_answers_become_chat_completions() {
    let a = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "Hello"},
                    {"type": "tool_use", "id": "tu", "name": "get", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2}});
    assert_eq!(
        json_answer(OA_TO_AN, a, "claude-sonnet-4"),
        json!({"id": "msg_1", "object": "chat.completion", "created": 1700, "model": "claude-sonnet-4",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "Hello", "refusal": null,
                    "tool_calls": [{"id": "tu", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 5}}})
    );
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ] {
        let a = json!({"type": "message", "content": [], "stop_reason": stop, "usage": {}});
        assert_eq!(
            json_answer(OA_TO_AN, a, "m")["choices"][0]["finish_reason"],
            finish,
            "{stop}"
        );
    }
    assert_eq!(
        answer::json_answer(OA_TO_AN, b"{\"type\":\"error\"}", None, 0),
        None
    );
    assert_eq!(answer::json_answer(OA_TO_AN, b"nope", None, 0), None);
}

#[test]
fn chat_completions_become_anthropic_answers() {
    let o = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":2}"}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23, "prompt_tokens_details": {"cached_tokens": 8}}});
    assert_eq!(
        json_answer(AN_TO_OA, o, "gpt-4o-mini"),
        json!({"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
            "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0}})
    );
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
    ] {
        let o = json!({"choices": [{"finish_reason": finish, "message": {"content": ""}}]});
        assert_eq!(
            json_answer(AN_TO_OA, o, "m")["stop_reason"],
            stop,
            "{finish}"
        );
    }
    assert_eq!(
        answer::json_answer(AN_TO_OA, b"{\"choices\":[]}", None, 0),
        None
    );
}

#[test]
fn usage_keeps_every_input_token_and_the_cached_ones() {
    let u = Usage::from_anthropic(
        &json!({"input_tokens": 3, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 5, "output_tokens": 6}),
    );
    assert_eq!(
        u,
        Usage {
            input: 12,
            output: 6,
            cache_read: 4,
            cache_write: 5
        }
    );
    assert_eq!(Usage::from_anthropic(&u.anthropic()), u);
    let o = Usage::from_openai(&u.openai());
    assert_eq!((o.input, o.output, o.cache_read), (12, 6, 4));
}

#[test]
fn errors_come_in_the_clients_dialect() {
    let an = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let got: Value = serde_json::from_slice(&answer::error_body(OA_TO_AN, 529, an)).unwrap();
    assert_eq!(
        got,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
    );
    assert_eq!(answer::status(OA_TO_AN, 529), 503);
    assert_eq!(answer::status(AN_TO_OA, 429), 429);
    let oa = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let got: Value = serde_json::from_slice(&answer::error_body(AN_TO_OA, 429, oa)).unwrap();
    assert_eq!(
        got,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    let got: Value =
        serde_json::from_slice(&answer::error_body(OA_TO_AN, 429, b"not json")).unwrap();
    assert_eq!(got["error"]["message"], "upstream error 429");
    assert_eq!(got["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn rate_limit_headers_come_in_the_clients_form() {
    let now = 1_796_611_200_000; // 2026-12-07T02:40:00Z
    let h = [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", "2026-12-07T02:41:30Z"),
        (
            "anthropic-ratelimit-tokens-reset",
            "2026-12-07T02:40:00.250Z",
        ),
        ("anthropic-ratelimit-input-tokens-limit", "9"),
        ("retry-after", "3"),
    ];
    let got = answer::rate_limit_headers(OA_TO_AN, h.iter().copied(), now);
    let set: Vec<_> = got
        .iter()
        .filter_map(|c| match c {
            HeaderChange::Set(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        set,
        vec![
            ("x-ratelimit-limit-requests", "50"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m30s"),
            ("x-ratelimit-reset-tokens", "250ms"),
        ]
    );
    assert_eq!(
        got.iter()
            .filter(|c| matches!(c, HeaderChange::Remove(_)))
            .count(),
        5
    );
    let h = [
        ("x-ratelimit-remaining-tokens", "100"),
        ("x-ratelimit-reset-tokens", "1.5s"),
        ("retry-after-ms", "10"),
    ];
    let got = answer::rate_limit_headers(AN_TO_OA, h.iter().copied(), now);
    assert_eq!(
        got,
        vec![
            HeaderChange::Remove("x-ratelimit-remaining-tokens".into()),
            HeaderChange::Set("anthropic-ratelimit-tokens-remaining".into(), "100".into()),
            HeaderChange::Remove("x-ratelimit-reset-tokens".into()),
            HeaderChange::Set(
                "anthropic-ratelimit-tokens-reset".into(),
                "2026-12-07T02:40:02Z".into()
            ),
        ]
    );
    assert_eq!(answer::go_duration(61_500), "1m1.5s");
    assert_eq!(answer::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(answer::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
}

// ------------------------------------------------------------------- streams

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_read_input_tokens\":2,\"cache_creation_input_tokens\":0}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\u{e9}\"}}\r\n\r\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"tu_1\",\"name\":\"get\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\u{e9}\"},\"finish_reason\":null}]}\n\n",
    ": keep-alive\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"q\\\":\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
    "data: [DONE]\n\n",
);

fn run(dir: Direction, chunks: &[&[u8]], include_usage: bool) -> (String, StreamTranslator) {
    let mut t = StreamTranslator::new(dir, Some("served"), include_usage, 1700);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(t.feed(c));
    }
    out.extend(t.finish());
    (String::from_utf8(out).unwrap(), t)
}

/// The data of each event, as JSON (`[DONE]` as a string).
fn events(s: &str) -> Vec<(String, Value)> {
    s.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::String(d.to_string()));
                }
            }
            (name, data)
        })
        .collect()
}

#[test]
fn an_anthropic_stream_becomes_chat_completion_chunks() {
    let (out, t) = run(OA_TO_AN, &[ANTHROPIC_STREAM.as_bytes()], true);
    assert!(t.complete());
    assert_eq!(t.malformed(), 0);
    let ev = events(&out);
    let deltas: Vec<Value> = ev
        .iter()
        .map(|(_, d)| d["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(deltas[0], json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], json!({"content": "Hel\u{e9}"}));
    assert_eq!(deltas[2], json!({"content": "lo"}));
    assert_eq!(
        deltas[3],
        json!({"tool_calls": [{"index": 0, "id": "tu_1", "type": "function", "function": {"name": "get", "arguments": ""}}]})
    );
    assert_eq!(
        deltas[4],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]})
    );
    assert_eq!(
        deltas[5],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})
    );
    assert_eq!(ev[6].1["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(ev[7].1["choices"], json!([]));
    assert_eq!(
        ev[7].1["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 2}})
    );
    assert_eq!(ev[8].1, Value::String("[DONE]".into()));
    assert_eq!(ev.len(), 9);
    for (_, d) in &ev[..8] {
        assert_eq!(
            (d["id"].as_str(), d["model"].as_str(), d["object"].as_str()),
            (Some("msg_1"), Some("served"), Some("chat.completion.chunk"))
        );
    }
    // Without include_usage: no usage chunk.
    let (out, _) = run(OA_TO_AN, &[ANTHROPIC_STREAM.as_bytes()], false);
    assert_eq!(events(&out).len(), 8);
}

#[test]
fn an_openai_stream_becomes_anthropic_events() {
    let (out, t) = run(AN_TO_OA, &[OPENAI_STREAM.as_bytes()], true);
    assert!(t.complete());
    let ev = events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[0].1["message"]["model"], "served");
    assert_eq!(ev[0].1["message"]["id"], "c1");
    assert_eq!(
        ev[2].1["delta"],
        json!({"type": "text_delta", "text": "Hel\u{e9}"})
    );
    assert_eq!(
        ev[5].1,
        json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "get", "input": {}}})
    );
    assert_eq!(
        ev[7].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "1}"})
    );
    assert_eq!(
        ev[9].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
        "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0}})
    );
}

#[test]
fn streams_split_at_every_byte_boundary_translate_the_same() {
    for (dir, stream) in [(OA_TO_AN, ANTHROPIC_STREAM), (AN_TO_OA, OPENAI_STREAM)] {
        let bytes = stream.as_bytes();
        let (whole, _) = run(dir, &[bytes], true);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            let (split, _) = run(dir, &[a, b], true);
            assert_eq!(split, whole, "split at {i}");
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(dir, &singles, true).0, whole);
    }
}

#[test]
fn malformed_streams_end_with_an_error_event_and_never_panic() {
    // Cut short: no message_stop / [DONE].
    let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_delta").unwrap()];
    let (out, t) = run(OA_TO_AN, &[cut.as_bytes()], true);
    assert!(t.complete());
    let last = events(&out).pop().unwrap().1;
    assert_eq!(
        last,
        json!({"error": {"message": CUT_SHORT, "type": "server_error", "param": null, "code": null}})
    );
    let cut = &OPENAI_STREAM[..OPENAI_STREAM
        .find("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},")
        .unwrap()];
    let (out, _) = run(AN_TO_OA, &[cut.as_bytes()], true);
    let (name, last) = events(&out).pop().unwrap();
    assert_eq!(
        (name.as_str(), last),
        (
            "error",
            json!({"type": "error", "error": {"type": "api_error", "message": CUT_SHORT}})
        )
    );
    // Garbage in the middle is skipped and counted; the rest still translates.
    let bad = ANTHROPIC_STREAM.replacen(
        "event: ping\ndata: {\"type\":\"ping\"}",
        "data: {not json\n\ndata: [1,2]",
        1,
    );
    let (out, t) = run(OA_TO_AN, &[bad.as_bytes()], false);
    assert_eq!(t.malformed(), 2);
    assert_eq!(
        events(&out).last().unwrap().1,
        Value::String("[DONE]".into())
    );
    // A provider's error event ends the stream in the client's dialect.
    let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (out, _) = run(
        OA_TO_AN,
        &[err.as_bytes(), ANTHROPIC_STREAM.as_bytes()],
        true,
    );
    assert_eq!(
        events(&out),
        vec![(
            String::new(),
            json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
        )]
    );
    let err = "data: {\"error\":{\"message\":\"boom\"}}\n\n";
    let (out, _) = run(AN_TO_OA, &[err.as_bytes()], true);
    assert_eq!(events(&out)[0].1["error"]["message"], "boom");
    // Arbitrary bytes: no panic, a documented end.
    for junk in [
        &b"\xff\xfe\x00data"[..],
        b"data: \n\n\n",
        b"event: message_start\ndata: {}\n\n",
        b"data: [DONE]\n\n",
    ] {
        for dir in [OA_TO_AN, AN_TO_OA] {
            let (_, t) = run(dir, &[junk], true);
            assert!(t.complete());
        }
    }
}

#[test]
fn a_long_stream_keeps_memory_bounded() {
    let mut t = StreamTranslator::new(OA_TO_AN, None, true, 0);
    let start = ANTHROPIC_STREAM
        .split("event: content_block_delta")
        .next()
        .unwrap();
    t.feed(start.as_bytes());
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n";
    let mut total = 0;
    for _ in 0..20_000 {
        let out = t.feed(delta.as_bytes());
        assert!(out.len() < 512);
        total += out.len();
    }
    assert!(total > 20_000 * 100);
    // An oversized event is dropped (counted), the stream goes on.
    let huge = format!(
        "data: {{\"type\":\"ping\",\"x\":\"{}\"}}\n\n",
        "a".repeat(300 * 1024)
    );
    t.feed(huge.as_bytes());
    assert_eq!(t.malformed(), 1);
}
