//! Translation tables: requests and answers both ways, streams split at every
//! byte boundary, malformed streams.

use super::answer::{self, HeaderChange, Usage};
use super::request::translate;
use super::stream::{StreamTranslator, CUT_SHORT};
use super::Direction;
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const OA_TO_AN: Direction = Direction::OPENAI_TO_ANTHROPIC;
const AN_TO_OA: Direction = Direction::ANTHROPIC_TO_OPENAI;

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

// ------------------------------------------------------- more shapes, both ways

#[test]
fn more_openai_request_shapes() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let an_tools = json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}]);
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "legacy max_tokens; consecutive user turns merge; tool_choice auto and none",
            json!({"model": "m", "max_tokens": 4, "tools": tools, "tool_choice": "none",
                "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}]}),
            json!({"model": "c", "max_tokens": 4, "tools": an_tools, "tool_choice": {"type": "none"},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
        ),
        (
            "assistant text with two calls; two tool results become one user turn",
            json!({"model": "m", "tools": tools, "tool_choice": "auto", "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "on it", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}},
                    {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"k\":[1]}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}]},
                {"role": "tool", "tool_call_id": "c2", "content": "r2"}]}),
            json!({"model": "c", "max_tokens": 1000, "tools": an_tools, "tool_choice": {"type": "auto"},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "go"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "on it"},
                        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
                        {"type": "tool_use", "id": "c2", "name": "f", "input": {"k": [1]}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "r1"}]},
                        {"type": "tool_result", "tool_use_id": "c2", "content": "r2"}]}]}),
        ),
        (
            "an assistant refusal part is text; parallel calls off without a choice; a choice without tools goes",
            json!({"model": "m", "parallel_tool_calls": false, "tools": tools, "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]}),
            json!({"model": "c", "max_tokens": 1000, "tools": an_tools,
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "no"}]}]}),
        ),
        (
            "tool_choice without tools is dropped; an empty stop list; temperature below 0 clamps",
            json!({"model": "m", "tool_choice": "required", "stop": [], "temperature": -1,
                "messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "c", "max_tokens": 1000, "temperature": 0.0,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(req(OA_TO_AN, input, Some("c")), want, "{name}");
    }
    // Without an entry model the client's stays; a zero cap becomes 1.
    let got = req(
        OA_TO_AN,
        json!({"model": "keep", "max_tokens": 0, "messages": []}),
        None,
    );
    assert_eq!(
        got,
        json!({"model": "keep", "max_tokens": 1, "messages": []})
    );
}

#[test]
fn more_anthropic_request_shapes() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "two tool results in one turn are two tool messages, first; string and empty contents; choice none",
            json!({"model": "c", "max_tokens": 2, "tools": [{"name": "f"}], "tool_choice": {"type": "none"},
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}},
                        {"type": "tool_use", "id": "b", "name": "f"}]},
                    {"role": "user", "content": [{"type": "text", "text": "see"},
                        {"type": "tool_result", "tool_use_id": "a", "content": "ra"},
                        {"type": "tool_result", "tool_use_id": "b"}]}]}),
            json!({"model": "o", "max_completion_tokens": 2,
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none",
                "messages": [
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "a", "content": "ra"},
                    {"role": "tool", "tool_call_id": "b", "content": ""},
                    {"role": "user", "content": [{"type": "text", "text": "see"}]}]}),
        ),
        (
            "tool_choice auto; an assistant string; dropped fields stay out; not streamed: no stream_options",
            json!({"model": "c", "max_tokens": 2, "top_k": 3, "thinking": {"type": "enabled"},
                "tools": [{"type": "custom", "name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "auto"},
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
            json!({"model": "o", "max_completion_tokens": 2,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": "auto",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(req(AN_TO_OA, input, Some("o")), want, "{name}");
    }
    let t = translate(
        AN_TO_OA,
        br#"{"max_tokens":1,"stream":true,"top_k":1,"cache_control":{},"messages":[]}"#,
        None,
        1,
    )
    .unwrap();
    assert!(t.stream && t.include_usage);
    assert_eq!(
        t.dropped,
        vec!["cache_control".to_string(), "top_k".to_string()]
    );
    let m = json!([{"role": "user", "content": "x"}]);
    for (body, want) in [
        (
            json!({"messages": [{"role": "system", "content": "x"}]}),
            "messages[0]: role Some(\"system\")",
        ),
        (
            json!({"system": [{"type": "image"}], "messages": m}),
            "system: a block that is not text",
        ),
        (
            json!({"tool_choice": {"type": "tool"}, "messages": m}),
            "tool_choice tool without a name",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            "messages[0]: a tool_result without tool_use_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            "messages[0]: an image source that is not base64 or url",
        ),
    ] {
        assert_eq!(refused(AN_TO_OA, body), want);
    }
    for (body, want) in [
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
            "messages[0]: an image URL that is not http(s) or data",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}]}]}),
            "messages[0]: an image data URL that is not base64",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0]: a tool message without tool_call_id",
        ),
        (
            json!({"tool_choice": {"type": "allowed_tools"}, "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice without a function name",
        ),
        (
            json!({"functions": [], "messages": []}),
            "legacy functions (use tools)",
        ),
        (
            json!({"web_search_options": {}, "messages": []}),
            "web_search_options (no Anthropic counterpart)",
        ),
    ] {
        assert_eq!(refused(OA_TO_AN, body), want);
    }
}

#[test]
fn more_answer_shapes() {
    // Anthropic: tool calls only (content null), an unknown stop reason, no usage at all.
    let a = json!({"type": "message", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "pause_turn"});
    let got = json_answer(OA_TO_AN, a, "m");
    assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    assert_eq!(got["usage"]["total_tokens"], 0);
    let a =
        json!({"type": "message", "content": [], "stop_reason": "model_context_window_exceeded"});
    assert_eq!(
        json_answer(OA_TO_AN, a, "m")["choices"][0]["finish_reason"],
        "length"
    );
    // OpenAI: a refusal is text, arguments that are not an object become {}, the legacy finish.
    let o = json!({"choices": [{"finish_reason": "function_call", "message": {"content": null, "refusal": "no",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1"}}]}}]});
    let got = json_answer(AN_TO_OA, o, "m");
    assert_eq!(
        got["content"],
        json!([{"type": "text", "text": "no"}, {"type": "tool_use", "id": "c", "name": "f", "input": {}}])
    );
    assert_eq!(got["stop_reason"], "tool_use");
    // Not answers: errors go back as errors.
    for body in [&b"{}"[..], b"{\"choices\":[{}]}", b"[]", b""] {
        assert_eq!(answer::json_answer(AN_TO_OA, body, None, 0), None);
    }
}

#[test]
fn every_error_status_has_its_type_in_both_dialects() {
    let cases = [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        (404, "invalid_request_error", "not_found_error"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "server_error", "api_error"),
        (503, "server_error", "overloaded_error"),
        (529, "server_error", "overloaded_error"),
    ];
    for (status, openai, anthropic) in cases {
        let o: Value = serde_json::from_slice(&answer::error_body(OA_TO_AN, status, b"")).unwrap();
        assert_eq!(o["error"]["type"], openai, "{status}");
        assert_eq!(o["error"]["message"], format!("upstream error {status}"));
        let a: Value = serde_json::from_slice(&answer::error_body(AN_TO_OA, status, b"")).unwrap();
        assert_eq!(
            (&a["type"], &a["error"]["type"]),
            (&json!("error"), &json!(anthropic)),
            "{status}"
        );
    }
    assert_eq!(answer::status(AN_TO_OA, 529), 529);
}

/// Each event of a stream, with its blank line.
fn split_events(s: &str) -> Vec<String> {
    s.split_inclusive("\n\n").map(str::to_string).collect()
}

#[test]
fn a_stream_cut_after_any_event_ends_once_and_as_documented() {
    // Whole once the finish and the final usage have come (the last marker may be missing).
    for (dir, stream, whole_from) in [
        (OA_TO_AN, ANTHROPIC_STREAM, "event: message_delta"),
        (
            AN_TO_OA,
            OPENAI_STREAM,
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\"",
        ),
    ] {
        let evs = split_events(&stream.replace("\r\n\r\n", "\n\n"));
        let whole_at = evs.iter().position(|e| e.starts_with(whole_from)).unwrap();
        for n in 0..=evs.len() {
            let cut: String = evs[..n].concat();
            let (out, t) = run(dir, &[cut.as_bytes()], true);
            assert!(t.complete(), "{n}");
            let ev = events(&out);
            let ends: Vec<&(String, Value)> = ev
                .iter()
                .filter(|(name, d)| {
                    name == "message_stop"
                        || name == "error"
                        || d == &Value::String("[DONE]".into())
                        || d.get("error").is_some()
                })
                .collect();
            assert_eq!(ends.len(), 1, "cut after {n} events: {out}");
            let cut_short = ends[0].1.to_string().contains(CUT_SHORT);
            assert_eq!(cut_short, n <= whole_at, "cut after {n} events: {out}");
            assert_eq!(ev.last().unwrap(), ends[0], "the end is last ({n})");
        }
    }
}

#[test]
fn done_without_a_finish_or_usage_is_cut_short() {
    let no_usage = OPENAI_STREAM.replace(
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
        "",
    );
    let (out, _) = run(AN_TO_OA, &[no_usage.as_bytes()], true);
    assert_eq!(
        events(&out).pop().unwrap(),
        (
            "error".to_string(),
            json!({"type": "error", "error": {"type": "api_error", "message": CUT_SHORT}})
        )
    );
    // Events after the end are not translated.
    let twice = format!("{OPENAI_STREAM}{OPENAI_STREAM}");
    let (a, _) = run(AN_TO_OA, &[twice.as_bytes()], true);
    let (b, _) = run(AN_TO_OA, &[OPENAI_STREAM.as_bytes()], true);
    assert_eq!(a, b);
    let twice = format!("{ANTHROPIC_STREAM}{ANTHROPIC_STREAM}");
    let (a, _) = run(OA_TO_AN, &[twice.as_bytes()], true);
    let (b, _) = run(OA_TO_AN, &[ANTHROPIC_STREAM.as_bytes()], true);
    assert_eq!(a, b);
}

#[test]
fn parallel_tool_calls_and_skipped_blocks_in_streams() {
    let an = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"s\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"b\",\"name\":\"g\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"x\"}}\n\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, t) = run(OA_TO_AN, &[an.as_bytes()], false);
    assert_eq!(t.malformed(), 0);
    let calls: Vec<Value> = events(&out)
        .iter()
        .filter_map(|(_, d)| d["choices"][0]["delta"].get("tool_calls").cloned())
        .collect();
    assert_eq!(
        calls,
        vec![
            json!([{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]),
            json!([{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}]),
            json!([{"index": 1, "function": {"arguments": "{}"}}]),
            json!([{"index": 0, "function": {"arguments": "{}"}}]),
        ]
    );
    assert!(!out.contains("hm"), "thinking has no slot in OpenAI chat");

    let oa = concat!(
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"no\"}}]}\n\n",
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}},{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"g\"}}]}}]}\n\n",
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"}\"}},{\"index\":7,\"function\":{\"arguments\":\"lost\"}}]}}]}\n\n",
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, _) = run(AN_TO_OA, &[oa.as_bytes()], true);
    let ev = events(&out);
    let shapes: Vec<(String, Value)> = ev
        .iter()
        .map(|(n, d)| {
            let d = d.get("delta").or(d.get("content_block")).cloned();
            (n.clone(), d.unwrap_or(Value::Null))
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("message_start".to_string(), Value::Null),
            (
                "content_block_start".into(),
                json!({"type": "text", "text": ""})
            ),
            (
                "content_block_delta".into(),
                json!({"type": "text_delta", "text": "no"})
            ),
            ("content_block_stop".into(), Value::Null),
            (
                "content_block_start".into(),
                json!({"type": "tool_use", "id": "a", "name": "f", "input": {}})
            ),
            (
                "content_block_delta".into(),
                json!({"type": "input_json_delta", "partial_json": "{"})
            ),
            ("content_block_stop".into(), Value::Null),
            (
                "content_block_start".into(),
                json!({"type": "tool_use", "id": "b", "name": "g", "input": {}})
            ),
            // A later delta of an earlier call goes to that call's block.
            (
                "content_block_delta".into(),
                json!({"type": "input_json_delta", "partial_json": "}"})
            ),
            ("content_block_stop".into(), Value::Null),
            (
                "message_delta".into(),
                json!({"stop_reason": "max_tokens", "stop_sequence": null})
            ),
            ("message_stop".into(), Value::Null),
        ]
    );
    assert_eq!(ev[8].1["index"], 1);
    assert_eq!(
        ev[10].1["usage"],
        json!({"input_tokens": 4, "output_tokens": 2, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
    );
}

#[test]
fn broken_streams_split_at_every_byte_boundary_translate_the_same() {
    // What the emulator's broken_sse sends: a cut object, bytes that are not
    // UTF-8, a line without a field name; then the stream goes on.
    let junk = "data: {\"type\":\"content_blo\n\ndata: \u{0}\u{7f}\n\n: x\nnofield\n\n";
    for (dir, stream, at) in [
        (OA_TO_AN, ANTHROPIC_STREAM, "event: content_block_start"),
        (
            AN_TO_OA,
            OPENAI_STREAM,
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel",
        ),
    ] {
        let i = stream.find(at).unwrap();
        let mut bytes = stream.as_bytes()[..i].to_vec();
        bytes.extend_from_slice(junk.as_bytes());
        bytes.extend_from_slice(b"data: \xff\xfe{}\n\n");
        bytes.extend_from_slice(&stream.as_bytes()[i..]);
        let (whole, t) = run(dir, &[&bytes], true);
        assert!(t.malformed() >= 2, "{}", t.malformed());
        let (clean, _) = run(dir, &[stream.as_bytes()], true);
        assert_eq!(whole, clean, "malformed events leave no trace");
        for k in 0..=bytes.len() {
            let (a, b) = bytes.split_at(k);
            assert_eq!(run(dir, &[a, b], true).0, whole, "split at {k}");
        }
    }
}
