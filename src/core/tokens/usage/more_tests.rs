//! More usage tests (dialects and streams), sharing the helpers of `tests`.

use super::tests::*;
use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

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

#[test]
fn one_read_of_a_json_answer_names_the_model_as_model_from_json_does() {
    // (Its usage is what `usage_from_json` returns: the usage tests cover it.)
    let long = format!(
        r#"{{"model":"{}","usage":{{"prompt_tokens":1}}}}"#,
        "m".repeat(300)
    );
    let bodies: Vec<&[u8]> = vec![
        br#"{"id":"x","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        br#"{"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":1}}"#,
        br#"{"object":"response","model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":6}}"#,
        br#"{"candidates":[],"modelVersion":"gemini-2.5-flash","usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":2}}"#,
        br#"[{"usageMetadata":{"promptTokenCount":1}},{"modelVersion":"g","usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":9}}]"#,
        br#"{"model":"only-a-model"}"#,
        br#"{"model":"odd","usage":"not an object"}"#,
        br#"{"usage":{"prompt_tokens":3}}"#,
        b"not json",
        b"",
        long.as_bytes(),
    ];
    let openai = answer_from_json(Dialect::OpenAiChat, bodies[0]);
    assert_eq!(openai.usage, Some(u(12, 3, 2)));
    let gemini = answer_from_json(Dialect::Gemini, bodies[3]);
    assert_eq!(gemini.usage, Some(u(7, 2, 0)));
    for d in Dialect::ALL {
        for b in &bodies {
            let one = answer_from_json(d, b);
            assert_eq!(
                one.model,
                model_from_json(b),
                "{d:?} {}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
