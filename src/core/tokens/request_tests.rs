//! Tests of [`super`].

use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn p(api: Api, body: serde_json::Value) -> RequestFacts {
    parse(api, "/x", body.to_string().as_bytes()).unwrap()
}

fn stats_of(parts: &[&str]) -> TextStats {
    let mut t = TextStats::default();
    parts.iter().for_each(|s| t.add(s));
    t
}

#[test]
fn detection_by_path() {
    assert_eq!(Api::detect("/v1/chat/completions"), Some(Api::OpenAiChat));
    assert_eq!(
        Api::detect("/openai/deployments/x/chat/completions?api-version=1"),
        Some(Api::OpenAiChat)
    );
    assert_eq!(Api::detect("/v1/completions"), Some(Api::OpenAiCompletions));
    assert_eq!(Api::detect("/v1/responses"), Some(Api::OpenAiResponses));
    assert_eq!(Api::detect("/v1/embeddings"), Some(Api::OpenAiEmbeddings));
    assert_eq!(Api::detect("/v1/messages"), Some(Api::AnthropicMessages));
    assert_eq!(Api::detect("/v1/messages/count_tokens"), None);
    assert_eq!(
        Api::detect("/v1beta/models/gemini-2.5-pro:generateContent"),
        Some(Api::Gemini)
    );
    assert_eq!(
        Api::detect("/v1beta/models/g:streamGenerateContent?alt=sse"),
        Some(Api::Gemini)
    );
    assert_eq!(Api::detect("/v1/models"), None);
    for a in Api::ALL {
        assert_eq!(Api::parse(a.as_str()), Some(a));
    }
}

#[test]
fn openai_chat_strings_parts_tools_and_options() {
    let f = p(
        Api::OpenAiChat,
        json!({
            "model": "gpt-4o", "n": 2, "max_completion_tokens": 50, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}
        }),
    );
    assert_eq!(f.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (f.choices, f.max_output, f.stream, f.include_usage),
        (2, Some(50), true, true)
    );
    assert_eq!(f.structure.messages, 3);
    assert_eq!(f.structure.tools, 1);
    assert_eq!(f.structure.images, 1);
    let expected = stats_of(&[
        "system",
        "Be brief.",
        "user",
        "ann",
        "What is in this image?",
        "assistant",
        r#"[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]"#,
        r#"[{"type":"function","function":{"name":"f","parameters":{}}}]"#,
        r#"{"type":"json_schema","json_schema":{"name":"s","schema":{}}}"#,
    ]);
    assert_eq!(f.text, expected);
}

#[test]
fn openai_chat_defaults_and_legacy_max_tokens() {
    let f = p(
        Api::OpenAiChat,
        json!({"model": "m", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        (f.choices, f.max_output, f.stream, f.include_usage),
        (1, Some(7), false, false)
    );
    let f = p(Api::OpenAiChat, json!({"messages": []}));
    assert_eq!((f.model, f.max_output), (None, None));
}

#[test]
fn escaped_strings_are_counted_unescaped() {
    let f = parse(
        Api::OpenAiChat,
        "/",
        br#"{"messages":[{"role":"user","content":"a\"b\n\u00e9"}]}"#,
    )
    .unwrap();
    assert_eq!(f.text, stats_of(&["user", "a\"b\n\u{e9}"]));
}

#[test]
fn responses_api() {
    let f = p(
        Api::OpenAiResponses,
        json!({"model": "gpt-5", "instructions": "Be nice", "max_output_tokens": 300, "stream": true,
               "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_image", "image_url": "u"}]},
                         {"type": "function_call_output", "call_id": "c", "output": "42"}],
               "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
    );
    assert_eq!(
        (
            f.max_output,
            f.stream,
            f.structure.tools,
            f.structure.images
        ),
        (Some(300), true, 2, 1)
    );
    assert_eq!(f.structure.messages, 3);
    let f = p(
        Api::OpenAiResponses,
        json!({"model": "gpt-5", "input": "Tell me a joke"}),
    );
    assert_eq!(f.text, stats_of(&["Tell me a joke"]));
    assert_eq!(f.max_output, None);
}

#[test]
fn legacy_completions_and_embeddings() {
    let f = p(
        Api::OpenAiCompletions,
        json!({"model": "m", "prompt": ["ab", "cd"], "n": 3}),
    );
    assert_eq!(
        (f.text, f.choices, f.max_output),
        (stats_of(&["ab", "cd"]), 3, Some(16))
    );
    let f = p(
        Api::OpenAiCompletions,
        json!({"model": "m", "prompt": [1, 2, 3], "max_tokens": 5}),
    );
    assert_eq!((f.token_ids, f.max_output), (3, Some(5)));
    let f = p(
        Api::OpenAiEmbeddings,
        json!({"model": "e", "input": "hello"}),
    );
    assert_eq!((f.text, f.max_output), (stats_of(&["hello"]), Some(0)));
    let f = p(
        Api::OpenAiEmbeddings,
        json!({"model": "e", "input": [[1, 2], [3]]}),
    );
    assert_eq!(f.token_ids, 3);
}

#[test]
fn anthropic_messages_blocks_and_tools() {
    let f = p(
        Api::AnthropicMessages,
        json!({"model": "claude-x", "max_tokens": 1024, "stream": true,
               "system": [{"type": "text", "text": "You are terse."}],
               "messages": [
                   {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "calc", "input": {"x": 1}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "2"}]},
                       {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                   ]}
               ],
               "tools": [{"name": "calc", "input_schema": {"type": "object"}}]}),
    );
    assert_eq!((f.max_output, f.stream), (Some(1024), true));
    assert_eq!(
        (f.structure.messages, f.structure.tools, f.structure.images),
        (3, 1, 1)
    );
    let expected = stats_of(&[
        "You are terse.",
        "Hi",
        r#"{"x":1}"#,
        "2",
        r#"[{"name":"calc","input_schema":{"type":"object"}}]"#,
    ]);
    assert_eq!(f.text, expected);
}

#[test]
fn gemini_generate_content() {
    let body = json!({
        "systemInstruction": {"parts": [{"text": "Sys"}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello"}, {"inlineData": {"mimeType": "image/png", "data": "AA"}}]}],
        "generationConfig": {"maxOutputTokens": 99, "candidateCount": 2}
    });
    let f = parse(
        Api::Gemini,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(f.model.as_deref(), Some("gemini-2.5-flash"));
    assert!(f.stream);
    assert_eq!(
        (
            f.max_output,
            f.choices,
            f.structure.images,
            f.structure.messages
        ),
        (Some(99), 2, 1, 2)
    );
    assert_eq!(f.text, stats_of(&["Sys", "Hello"]));
}

#[test]
fn bad_bodies_have_clear_messages() {
    let e = parse(Api::OpenAiChat, "/", b"{\"messages\": [").unwrap_err();
    assert!(
        e.0.starts_with("Request body is not valid JSON: EOF while parsing"),
        "{}",
        e.0
    );
    let e = parse(Api::OpenAiChat, "/", b"not json").unwrap_err();
    assert!(
        e.0.starts_with("Request body is not valid JSON: expected ident at line 1"),
        "{}",
        e.0
    );
    let e = parse(Api::OpenAiResponses, "/", br#"{"input": 5}"#).unwrap_err();
    assert!(e.0.starts_with("Invalid request body: invalid type: integer `5`, expected a string or a list of input items"), "{}", e.0);
    let e = parse(Api::OpenAiChat, "/", br#"{"messages": "hi"}"#).unwrap_err();
    assert!(
        e.0.starts_with("Invalid request body: invalid type: string \"hi\", expected a sequence"),
        "{}",
        e.0
    );
    // Valid JSON that is not an object: say an object was expected.
    for (body, kind) in [
        (&b"[1, 2]"[..], "an array"),
        (b" \"hi\"", "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ] {
        for api in [Api::OpenAiChat, Api::AnthropicMessages, Api::Gemini] {
            let e = parse(api, "/", body).unwrap_err();
            assert_eq!(
                e.0,
                format!("Invalid request body: expected a JSON object, got {kind}")
            );
        }
    }
    // Not valid JSON at all stays a JSON error, whatever it starts with.
    let e = parse(Api::OpenAiChat, "/", b"[1, 2").unwrap_err();
    assert!(e.0.starts_with("Request body is not valid JSON"), "{}", e.0);
    let e = parse(Api::OpenAiChat, "/", br#"{"model": "m"}"#).unwrap_err();
    assert!(
        e.0.starts_with("Invalid request body: missing field `messages`"),
        "{}",
        e.0
    );
    let e = parse(
        Api::AnthropicMessages,
        "/",
        br#"{"messages": [], "max_tokens": -1}"#,
    )
    .unwrap_err();
    assert!(
        e.0.starts_with("Invalid request body: invalid value: integer `-1`"),
        "{}",
        e.0
    );
    let e = parse(Api::OpenAiEmbeddings, "/", br#"{"input": {"a": 1}}"#).unwrap_err();
    assert!(
        e.0.starts_with("Invalid request body: data did not match any variant"),
        "{}",
        e.0
    );
}

#[test]
fn model_names_are_bounded() {
    let f = p(
        Api::OpenAiChat,
        json!({"model": "m".repeat(500), "messages": []}),
    );
    assert_eq!(f.model.unwrap().len(), MAX_MODEL_LEN);
}

#[test]
fn rewrite_sets_caps_and_usage_only_when_needed() {
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let f = parse(Api::OpenAiChat, "/", body.as_bytes()).unwrap();
    let none = rewrite(Api::OpenAiChat, body.as_bytes(), &f, Rewrite::default()).unwrap();
    assert_eq!(none, None);
    let out = rewrite(
        Api::OpenAiChat,
        body.as_bytes(),
        &f,
        Rewrite {
            max_output: Some(100),
            include_usage: true,
        },
    )
    .unwrap()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["max_tokens"], 100);
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["messages"][0]["content"], "hi");

    // Under the cap and usage already requested: untouched.
    let body = json!({"stream": true, "stream_options": {"include_usage": true}, "max_completion_tokens": 5, "messages": []}).to_string();
    let f = parse(Api::OpenAiChat, "/", body.as_bytes()).unwrap();
    assert_eq!(
        rewrite(
            Api::OpenAiChat,
            body.as_bytes(),
            &f,
            Rewrite {
                max_output: Some(10),
                include_usage: true
            }
        )
        .unwrap(),
        None
    );
    // Over the cap: lowered in the field the client used.
    let body = json!({"max_completion_tokens": 50, "messages": []}).to_string();
    let f = parse(Api::OpenAiChat, "/", body.as_bytes()).unwrap();
    let out = rewrite(
        Api::OpenAiChat,
        body.as_bytes(),
        &f,
        Rewrite {
            max_output: Some(10),
            include_usage: false,
        },
    )
    .unwrap()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (v["max_completion_tokens"].as_u64(), v.get("max_tokens")),
        (Some(10), None)
    );

    let body = json!({"contents": []}).to_string();
    let f = parse(
        Api::Gemini,
        "/v1beta/models/g:generateContent",
        body.as_bytes(),
    )
    .unwrap();
    let out = rewrite(
        Api::Gemini,
        body.as_bytes(),
        &f,
        Rewrite {
            max_output: Some(64),
            include_usage: true,
        },
    )
    .unwrap()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 64);
    assert!(v.get("stream_options").is_none());
}
