//! SSE answers, event by event: Anthropic's `message_start`,
//! `content_block_{start,delta,stop}`, `message_delta`, `message_stop` <->
//! OpenAI's `chat.completion.chunk`s and `[DONE]`.
//!
//! [`StreamTranslator::feed`] takes each chunk as it arrives and returns the
//! bytes to send instead; events split across chunks are rejoined by the
//! same bounded decoder the usage reader uses (an event over 256 KiB is
//! dropped), and nothing else is kept but a few counters and ids, so memory
//! stays bounded whatever the stream's length.
//!
//! Malformed input never panics: an event that is not JSON (or not an object)
//! is skipped and counted ([`StreamTranslator::malformed`]). A stream is whole
//! once its finish and its final usage have arrived: Anthropic's `message_delta`
//! with a `stop_reason` (then `message_stop`), OpenAI's `finish_reason` and
//! usage chunk (then `[DONE]`); the last marker alone may be missing. The
//! documented end of a stream that stops before that, or of an OpenAI stream
//! whose `[DONE]` comes without a finish reason or usage, is an error event in the
//! client's dialect (OpenAI: `data: {"error": ...}`, Anthropic: `event:
//! error`) with the message [`CUT_SHORT`], which both SDKs raise, rather than a
//! stream that merely stops (and a final usage the provider never sent).

use super::answer::{finish_reason, stop_reason, Usage};
use super::{Dialect, Direction};
use crate::core::tokens::usage::sse::{Decoder, Event};
use serde_json::{json, Value};

/// Tool calls mapped per stream, at most (more are passed as text-less gaps).
const MAX_TOOLS: usize = 128;

/// Message of the error event that ends a stream cut short.
pub const CUT_SHORT: &str = "the provider's stream ended before its end";

/// One answer stream's translation.
pub struct StreamTranslator {
    decoder: Decoder,
    conv: Converter,
}

enum Converter {
    ToOpenAi(ToOpenAi),
    ToAnthropic(ToAnthropic),
}

impl StreamTranslator {
    /// `model`: the chain entry's (named in every chunk, else the provider's);
    /// `include_usage`: the OpenAI client asked for a final usage chunk;
    /// `now_s`: the chunks' `created`.
    pub fn new(dir: Direction, model: Option<&str>, include_usage: bool, now_s: u64) -> Self {
        let conv = match (dir.provider, dir.client) {
            (Dialect::Anthropic, _) => Converter::ToOpenAi(ToOpenAi {
                model: model.unwrap_or("").to_string(),
                created: now_s,
                include_usage,
                ..ToOpenAi::default()
            }),
            (Dialect::OpenAi, _) => Converter::ToAnthropic(ToAnthropic {
                model: model.map(str::to_string),
                ..ToAnthropic::default()
            }),
        };
        StreamTranslator {
            decoder: Decoder::default(),
            conv,
        }
    }

    /// The bytes to send for this chunk of the provider's stream (maybe none).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let conv = &mut self.conv;
        self.decoder.feed(chunk, &mut |ev| conv.event(ev, &mut out));
        out
    }

    /// The provider's stream ended: what is left to send.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let conv = &mut self.conv;
        self.decoder.finish(&mut |ev| conv.event(ev, &mut out));
        conv.end(&mut out);
        out
    }

    /// Events skipped as malformed (not JSON, or over the size cap).
    pub fn malformed(&self) -> u32 {
        match &self.conv {
            Converter::ToOpenAi(c) => c.malformed,
            Converter::ToAnthropic(c) => c.malformed,
        }
    }

    /// The stream reached its own end.
    pub fn complete(&self) -> bool {
        match &self.conv {
            Converter::ToOpenAi(c) => c.done,
            Converter::ToAnthropic(c) => c.done,
        }
    }
}

impl Converter {
    fn event(&mut self, ev: Event<'_>, out: &mut Vec<u8>) {
        let (name, data) = match ev {
            Event::Message { name, data } => (name, data),
            Event::Dropped { .. } => {
                match self {
                    Converter::ToOpenAi(c) => c.malformed += 1,
                    Converter::ToAnthropic(c) => c.malformed += 1,
                }
                return;
            }
        };
        match self {
            Converter::ToOpenAi(c) => c.event(name, data, out),
            Converter::ToAnthropic(c) => c.event(data, out),
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        match self {
            Converter::ToOpenAi(c) => c.end(out),
            Converter::ToAnthropic(c) => c.end(out),
        }
    }
}

fn data_line(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    // Serialising a Value cannot fail.
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

fn named_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    data_line(out, v);
}

fn parse(data: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(data)
        .ok()
        .filter(Value::is_object)
}

// --------------------------------------------- Anthropic events -> OpenAI chunks

/// Anthropic usage as reported so far: `message_delta` fields replace
/// `message_start`'s.
#[derive(Default)]
struct RawUsage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl RawUsage {
    fn merge(&mut self, u: &Value) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(v) = n("input_tokens") {
            self.input = v;
        }
        if let Some(v) = n("output_tokens") {
            self.output = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.cache_read = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.cache_write = v;
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            input: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_write),
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
        }
    }
}

#[derive(Default)]
struct ToOpenAi {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Anthropic block index -> OpenAI tool call index.
    tools: Vec<(u64, u32)>,
    usage: RawUsage,
    /// `message_delta` brought the stop reason (and the final usage).
    stopped: bool,
    done: bool,
    malformed: u32,
}

impl ToOpenAi {
    fn chunk(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        data_line(
            out,
            &json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            }),
        );
    }

    fn event(&mut self, name: &str, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(v) = parse(data) else {
            self.malformed += 1;
            return;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string();
        match kind.as_str() {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if self.model.is_empty() {
                    self.model = m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                }
                self.usage.merge(m.get("usage").unwrap_or(&Value::Null));
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let b = v.get("content_block").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") if self.tools.len() < MAX_TOOLS => {
                        let n = self.tools.len() as u32;
                        self.tools.push((index, n));
                        let call = json!([{"index": n, "id": b.get("id"), "type": "function",
                            "function": {"name": b.get("name"), "arguments": ""}}]);
                        self.chunk(out, json!({"tool_calls": call}), None);
                    }
                    Some("text") => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.chunk(out, json!({"content": t}), None);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                        self.chunk(out, json!({"content": t}), None);
                    }
                    Some("input_json_delta") => {
                        let Some(&(_, n)) = self.tools.iter().find(|(i, _)| *i == index) else {
                            return;
                        };
                        let args = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        let call = json!([{"index": n, "function": {"arguments": args}}]);
                        self.chunk(out, json!({"tool_calls": call}), None);
                    }
                    _ => {} // thinking and signatures: no slot in OpenAI chat
                }
            }
            "message_delta" => {
                self.usage.merge(v.get("usage").unwrap_or(&Value::Null));
                let stop = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if let Some(stop) = stop.filter(|_| !self.stopped) {
                    self.stopped = true;
                    self.chunk(out, json!({}), Some(finish_reason(stop)));
                }
            }
            "message_stop" => self.stop(out),
            "error" => {
                let e = v.get("error").unwrap_or(&Value::Null);
                let msg = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider error");
                let ty = e.get("type").and_then(Value::as_str).unwrap_or("api_error");
                data_line(
                    out,
                    &json!({"error": {"message": msg, "type": ty, "param": null, "code": null}}),
                );
                self.done = true;
            }
            _ => {} // ping, unknown events
        }
    }

    /// `message_stop`: the usage chunk (when asked for) and `[DONE]`.
    fn stop(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            data_line(
                out,
                &json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": self.usage.usage().openai(),
                }),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// The provider's stream ended: without `message_stop` but after the stop
    /// reason and final usage, the normal end; before them, the cut-short error.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.stopped {
            self.stop(out);
            return;
        }
        data_line(
            out,
            &json!({"error": {"message": CUT_SHORT, "type": "server_error", "param": null, "code": null}}),
        );
        self.done = true;
    }
}

// --------------------------------------------- OpenAI chunks -> Anthropic events

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Tool(u64),
}

#[derive(Default)]
struct ToAnthropic {
    model: Option<String>,
    started: bool,
    /// The open content block: its kind and index.
    open: Option<(Block, u32)>,
    next_index: u32,
    /// OpenAI tool call index -> Anthropic block index.
    tools: Vec<(u64, u32)>,
    finish: Option<String>,
    usage: Usage,
    /// A usage chunk arrived (the translator always asks OpenAI for one).
    usage_seen: bool,
    done: bool,
    malformed: u32,
}

impl ToAnthropic {
    fn start(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = self
            .model
            .clone()
            .or_else(|| v.get("model").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let id = v.get("id").and_then(Value::as_str).unwrap_or("");
        named_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            named_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut Vec<u8>) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        named_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some((kind, index));
        index
    }

    fn text(&mut self, t: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some((Block::Text, i)) => i,
            _ => self.open_block(Block::Text, json!({"type": "text", "text": ""}), out),
        };
        named_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": t}}),
        );
    }

    fn tool_call(&mut self, tc: &Value, out: &mut Vec<u8>) {
        let n = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function");
        let known = self.tools.iter().find(|(i, _)| *i == n).map(|&(_, b)| b);
        let index = match (known, tc.get("id").and_then(Value::as_str)) {
            (Some(b), _) => b,
            (None, Some(id)) if self.tools.len() < MAX_TOOLS => {
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let b = self.open_block(
                    Block::Tool(n),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tools.push((n, b));
                b
            }
            _ => return,
        };
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !args.is_empty() {
            named_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data.trim_ascii() == b"[DONE]" {
            self.end(out);
            return;
        }
        let Some(v) = parse(data) else {
            self.malformed += 1;
            return;
        };
        if let Some(e) = v.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            named_event(
                out,
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": msg}}),
            );
            self.done = true;
            return;
        }
        self.start(&v, out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Usage::from_openai(u);
            self.usage_seen = true;
        }
        let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        let d = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["content", "refusal"] {
            if let Some(t) = d.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.text(t, out);
            }
        }
        for tc in d
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.tool_call(tc, out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
            self.close(out);
        }
    }

    /// `[DONE]` or the end of the provider's stream: the message's end once
    /// the finish reason and the usage chunk have come, else the cut-short
    /// error (a usage the provider never sent is not made up: the client's
    /// count and ours would be wrong).
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        let Some(finish) = self.finish.take().filter(|_| self.usage_seen) else {
            named_event(
                out,
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": CUT_SHORT}}),
            );
            return;
        };
        self.close(out);
        named_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(&finish), "stop_sequence": null},
                "usage": self.usage.anthropic()}),
        );
        named_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}
