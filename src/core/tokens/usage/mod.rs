//! Usage reported by providers, from JSON bodies and SSE streams.
//!
//! The filter reserves an estimate of tokens before a request goes upstream and
//! reconciles it with what the provider reports when the response ends. This
//! module reads those reports:
//!
//! - [`usage_from_json`] for a complete (non-streamed) response body;
//! - [`SseUsageParser`] for a `text/event-stream` response, fed chunk by chunk as
//!   it passes, with bounded memory. It also hands out the generated text, so the
//!   caller can estimate output tokens when a stream ends without a report.
//!
//! # Usage per dialect
//!
//! [`Usage::input_tokens`] always counts all input tokens, cached ones included;
//! [`Usage::cached_input_tokens`] is the cached subset (clamped to at most
//! `input_tokens`).
//!
//! | Dialect | input | output | cached input |
//! |---|---|---|---|
//! | OpenAI chat, completions | `prompt_tokens` | `completion_tokens` | `prompt_tokens_details.cached_tokens` |
//! | OpenAI embeddings | `prompt_tokens` (else `total_tokens`) | 0 | 0 |
//! | OpenAI Responses | `input_tokens` | `output_tokens` (reasoning included) | `input_tokens_details.cached_tokens` |
//! | Anthropic | `input_tokens + cache_creation_input_tokens + cache_read_input_tokens` | `output_tokens` | `cache_read_input_tokens` |
//! | Gemini | `promptTokenCount + toolUsePromptTokenCount` | `candidatesTokenCount + thoughtsTokenCount` | `cachedContentTokenCount` |
//!
//! Anthropic's `input_tokens` excludes cache reads and writes, so they are added
//! back; cache writes are input the provider processed (and bills), not cached
//! input. Gemini's `promptTokenCount` already includes cached content.
//!
//! A body or event has usage when its usage object has at least one of the
//! dialect's main counts. Counts are read leniently: negative, non-numeric or
//! missing counts read as 0 (or "not reported"), floats are truncated, and counts
//! are clamped to [`MAX_TOKEN_COUNT`]. Malformed JSON is ignored. Nothing here
//! panics on any input.
//!
//! # Streams
//!
//! | Dialect | text passed to `on_text` | usage, and when it is final ([`SseUsageParser::complete`]) |
//! |---|---|---|
//! | OpenAI chat | `choices[].delta.content`, `.refusal`, `.tool_calls[].function.arguments`, `.function_call.arguments`, `.reasoning_content` (compatibles) | any chunk's non-null `usage` (sent only with `stream_options.include_usage`); final when seen in a chunk with empty `choices`, or when `[DONE]` follows it |
//! | OpenAI completions | `choices[].text` | as chat |
//! | OpenAI Responses | `delta` of `response.output_text.delta`, `.refusal.delta`, `.function_call_arguments.delta`, `.custom_tool_call_input.delta`, `.reasoning_text.delta` | `response.usage` of `response.completed`, `response.incomplete` or `response.failed`: final |
//! | Anthropic | `delta.text`, `delta.partial_json`, `delta.thinking` of `content_block_delta` | `message_start`'s `message.usage` (input known, output so far), then `message_delta`'s cumulative `usage` (any input or cache fields there replace the earlier ones): final once `message_delta` carries `output_tokens` |
//! | Gemini (`alt=sse`) | `candidates[].content.parts[].text` (thoughts included) | each chunk's `usageMetadata` replaces the last; final once a chunk with a `finishReason` has been seen together with or before usage |
//! | OpenAI embeddings | none | none (embeddings do not stream) |
//!
//! The event kind is the SSE `event` field when present, else the JSON `type`.
//! Events that cannot carry usage or text (`response.created`,
//! `response.output_item.done`, `content_block_start`, `ping`, ...) are skipped
//! by name without being parsed. Error events (`event: error`, an `error` object
//! in a chunk, `response.failed`) set [`SseUsageParser::error_seen`].
//!
//! Each event is buffered until its blank line, up to [`MAX_EVENT_BYTES`]; a
//! bigger event is dropped (counted in [`SseUsageParser::dropped_events`]) and
//! parsing resumes at the next one. One exception keeps Responses usage: its
//! `response.completed` event repeats the whole output and may exceed the cap, so
//! for a dropped final event the `"usage"` object is looked for in the event's
//! last bytes.
//!
//! Not supported: Gemini's non-SSE streaming (`streamGenerateContent` without
//! `alt=sse`, a JSON array sent in pieces) in [`SseUsageParser`]; when such a body
//! is buffered whole, [`usage_from_json`] reads the last chunk's usage from the
//! array.

pub(crate) mod sse;
mod wire;

use serde::Deserialize;
use wire::{
    AnthropicEvent, ChatChunk, Count, GeminiBody, GeminiChunk, GeminiUsage, ResponsesEvent,
    UsageBody, WireUsage,
};

/// Largest SSE event buffered (data plus the current line). Provider events are
/// a few hundred bytes; the cap bounds memory per stream whatever upstream sends.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Largest token count taken from a report; bigger ones are clamped. No call
/// comes near it, and it keeps sums of counts far from overflow.
pub const MAX_TOKEN_COUNT: u64 = u32::MAX as u64;

/// Tokens a provider says a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (subset of input_tokens).
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Keeps the documented invariant `cached <= input` whatever a provider reports.
    fn new(input_tokens: u64, output_tokens: u64, cached_input_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: cached_input_tokens.min(input_tokens),
        }
    }
}

/// Response formats that carry usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAiChat,
    OpenAiResponses,
    OpenAiCompletions,
    OpenAiEmbeddings,
    Anthropic,
    Gemini,
}

impl Dialect {
    /// Every dialect (tests and fuzzing go through all of them).
    pub const ALL: [Dialect; 6] = [
        Dialect::OpenAiChat,
        Dialect::OpenAiResponses,
        Dialect::OpenAiCompletions,
        Dialect::OpenAiEmbeddings,
        Dialect::Anthropic,
        Dialect::Gemini,
    ];
}

/// Model names kept from answers are cut to this length.
const MAX_MODEL_LEN: usize = 128;

/// The model named by a whole JSON answer (`model`; Gemini `modelVersion`).
pub fn model_from_json(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(default, borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
        #[serde(default, borrow, rename = "modelVersion")]
        model_version: Option<std::borrow::Cow<'a, str>>,
    }
    let n: Named = serde_json::from_slice(body).ok()?;
    n.model
        .or(n.model_version)
        .map(|m| crate::core::truncate(&m, MAX_MODEL_LEN).to_string())
}

/// Usage from a complete (non-streamed) JSON response body, if it has any.
pub fn usage_from_json(dialect: Dialect, body: &[u8]) -> Option<Usage> {
    answer_from_json(dialect, body).usage
}

/// What one read of a complete JSON answer says: its usage and the model
/// that answered (as [`usage_from_json`] and [`model_from_json`] would, in one
/// parse of the body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonAnswer {
    pub usage: Option<Usage>,
    pub model: Option<String>,
}

/// Reads a complete JSON answer once: see [`JsonAnswer`]. A body that is not
/// the dialect's JSON gives neither.
pub fn answer_from_json(dialect: Dialect, body: &[u8]) -> JsonAnswer {
    let text = String::from_utf8_lossy(body);
    let text: &str = &text;
    let model = |m: Option<String>| m.map(|m| crate::core::truncate(&m, MAX_MODEL_LEN).to_string());
    match dialect {
        Dialect::Gemini if text.trim_start().starts_with('[') => {
            // A buffered non-SSE stream: the last chunk with usage is final.
            // (An array names no model at its top: `model_from_json` neither.)
            let Ok(chunks) = serde_json::from_str::<Vec<GeminiBody>>(text) else {
                return JsonAnswer::default();
            };
            JsonAnswer {
                usage: chunks
                    .iter()
                    .rev()
                    .find_map(|c| c.usage_metadata.as_ref().and_then(gemini_usage)),
                model: None,
            }
        }
        Dialect::Gemini => match serde_json::from_str::<GeminiBody>(text) {
            Ok(b) => JsonAnswer {
                usage: b.usage_metadata.as_ref().and_then(gemini_usage),
                model: model(b.model.or(b.model_version)),
            },
            // Usage of an unexpected shape: the model may still be named.
            Err(_) => JsonAnswer {
                usage: None,
                model: model_from_json(body),
            },
        },
        _ => match serde_json::from_str::<UsageBody>(text) {
            Ok(b) => JsonAnswer {
                usage: b.usage.as_ref().and_then(|u| wire_usage(dialect, u)),
                model: model(b.model.or(b.model_version)),
            },
            Err(_) => JsonAnswer {
                usage: None,
                model: model_from_json(body),
            },
        },
    }
}

fn wire_usage(dialect: Dialect, u: &WireUsage) -> Option<Usage> {
    let cached = |d: &Option<wire::CachedDetails>| d.as_ref().map_or(0, |d| d.cached_tokens.or0());
    match dialect {
        Dialect::OpenAiChat | Dialect::OpenAiCompletions => {
            any_of(&[u.prompt_tokens, u.completion_tokens])?;
            Some(Usage::new(
                u.prompt_tokens.or0(),
                u.completion_tokens.or0(),
                cached(&u.prompt_tokens_details),
            ))
        }
        Dialect::OpenAiEmbeddings => {
            let input = u.prompt_tokens.0.or(u.total_tokens.0)?;
            Some(Usage::new(input, 0, 0))
        }
        Dialect::OpenAiResponses => {
            any_of(&[u.input_tokens, u.output_tokens])?;
            Some(Usage::new(
                u.input_tokens.or0(),
                u.output_tokens.or0(),
                cached(&u.input_tokens_details),
            ))
        }
        Dialect::Anthropic => {
            let mut parts = AnthropicParts::default();
            parts.merge(u);
            parts.usage()
        }
        Dialect::Gemini => None,
    }
}

fn gemini_usage(u: &GeminiUsage) -> Option<Usage> {
    any_of(&[
        u.prompt_token_count,
        u.candidates_token_count,
        u.total_token_count,
    ])?;
    Some(Usage::new(
        u.prompt_token_count
            .or0()
            .saturating_add(u.tool_use_prompt_token_count.or0()),
        u.candidates_token_count
            .or0()
            .saturating_add(u.thoughts_token_count.or0()),
        u.cached_content_token_count.or0(),
    ))
}

fn any_of(counts: &[Count]) -> Option<()> {
    counts.iter().any(|c| c.0.is_some()).then_some(())
}

/// Anthropic reports usage in pieces (message_start, then message_delta), so the
/// raw fields are kept and combined on demand.
#[derive(Debug, Default, Clone, Copy)]
struct AnthropicParts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
}

impl AnthropicParts {
    /// Fields present in `u` replace earlier ones (message_delta counts are cumulative).
    fn merge(&mut self, u: &WireUsage) {
        let set = |slot: &mut Option<u64>, c: Count| {
            if c.0.is_some() {
                *slot = c.0;
            }
        };
        set(&mut self.input, u.input_tokens);
        set(&mut self.cache_creation, u.cache_creation_input_tokens);
        set(&mut self.cache_read, u.cache_read_input_tokens);
        set(&mut self.output, u.output_tokens);
    }

    fn usage(&self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let read = self.cache_read.unwrap_or(0);
        Some(Usage::new(
            self.input
                .unwrap_or(0)
                .saturating_add(self.cache_creation.unwrap_or(0))
                .saturating_add(read),
            self.output.unwrap_or(0),
            read,
        ))
    }
}

/// Incremental SSE parser that extracts usage with bounded memory.
///
/// Feed it every chunk of a `text/event-stream` response body in order, then call
/// [`finish`](Self::finish) at the end of the stream. See the module docs for what
/// each dialect reads.
#[derive(Debug)]
pub struct SseUsageParser {
    dialect: Dialect,
    decoder: sse::Decoder,
    state: StreamState,
}

#[derive(Debug, Default)]
struct StreamState {
    usage: Option<Usage>,
    complete: bool,
    error_seen: bool,
    anthropic: AnthropicParts,
    /// Gemini: a chunk with a finishReason has been seen.
    finished: bool,
    /// The model named by the stream (OpenAI chunks, Anthropic message_start).
    model: Option<String>,
}

impl SseUsageParser {
    pub fn new(dialect: Dialect) -> Self {
        SseUsageParser {
            dialect,
            decoder: sse::Decoder::default(),
            state: StreamState::default(),
        }
    }

    /// Feeds one chunk as it passes through; `on_text` gets each piece of generated text.
    pub fn feed(&mut self, chunk: &[u8], on_text: &mut dyn FnMut(&str)) {
        let dialect = self.dialect;
        let state = &mut self.state;
        self.decoder
            .feed(chunk, &mut |event| state.on_event(dialect, event, on_text));
    }

    /// End of stream: processes a last event that lacked its terminating blank line.
    pub fn finish(&mut self, on_text: &mut dyn FnMut(&str)) {
        let dialect = self.dialect;
        let state = &mut self.state;
        self.decoder
            .finish(&mut |event| state.on_event(dialect, event, on_text));
    }

    /// Best usage known so far.
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage
    }

    /// The model that answered, as the stream names it.
    pub fn model(&self) -> Option<&str> {
        self.state.model.as_deref()
    }

    /// True once the provider's final usage report has been seen.
    pub fn complete(&self) -> bool {
        self.state.complete
    }

    /// Events dropped for exceeding [`MAX_EVENT_BYTES`].
    pub fn dropped_events(&self) -> u32 {
        self.decoder.dropped()
    }

    /// True if the stream carried an error event (the provider failed mid-stream).
    pub fn error_seen(&self) -> bool {
        self.state.error_seen
    }
}

/// Responses event kinds whose `delta` is generated text.
const RESPONSES_TEXT_KINDS: &[&str] = &[
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.reasoning_text.delta",
];
/// Responses event kinds that end the response and carry its usage.
const RESPONSES_FINAL_KINDS: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
];
/// Anthropic event kinds with neither usage nor generated text.
const ANTHROPIC_SKIP_KINDS: &[&str] = &[
    "ping",
    "content_block_start",
    "content_block_stop",
    "message_stop",
];

fn emit(text: Option<&wire::Text<'_>>, on_text: &mut dyn FnMut(&str)) {
    if let Some(t) = text {
        if !t.0.is_empty() {
            on_text(&t.0);
        }
    }
}

impl StreamState {
    fn on_event(&mut self, dialect: Dialect, event: sse::Event<'_>, on_text: &mut dyn FnMut(&str)) {
        match event {
            sse::Event::Message { name, data } => {
                // The SSE default event type; providers that name events never use it.
                let name = if name == "message" { "" } else { name };
                let text = String::from_utf8_lossy(data);
                match dialect {
                    Dialect::OpenAiChat | Dialect::OpenAiCompletions => {
                        self.on_openai_chunk(name, &text, on_text)
                    }
                    Dialect::OpenAiResponses => self.on_responses(name, &text, on_text),
                    Dialect::Anthropic => self.on_anthropic(name, &text, on_text),
                    Dialect::Gemini => self.on_gemini(&text, on_text),
                    Dialect::OpenAiEmbeddings => {}
                }
            }
            sse::Event::Dropped { name, tail } => {
                if dialect == Dialect::OpenAiResponses
                    && (name.is_empty()
                        || name == "message"
                        || RESPONSES_FINAL_KINDS.contains(&name))
                {
                    if let Some(u) = salvage_usage(tail).and_then(|u| wire_usage(dialect, &u)) {
                        self.usage = Some(u);
                        self.complete = true;
                    }
                }
            }
        }
    }

    fn on_openai_chunk(&mut self, name: &str, data: &str, on_text: &mut dyn FnMut(&str)) {
        if name == "error" {
            self.error_seen = true;
            return;
        }
        if data.trim() == "[DONE]" {
            // The usage chunk, if requested, comes right before [DONE].
            self.complete |= self.usage.is_some();
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk>(data) else {
            return;
        };
        if chunk.error.is_some() {
            self.error_seen = true;
        }
        if let (None, Some(m)) = (&self.model, &chunk.model) {
            self.model = Some(crate::core::truncate(&m.0, MAX_MODEL_LEN).to_string());
        }
        let choices = chunk.choices.unwrap_or_default();
        for choice in &choices {
            emit(choice.text.as_ref(), on_text);
            if let Some(d) = &choice.delta {
                emit(d.content.as_ref(), on_text);
                emit(d.refusal.as_ref(), on_text);
                emit(d.reasoning_content.as_ref(), on_text);
                for call in d.tool_calls.iter().flatten() {
                    emit(
                        call.function.as_ref().and_then(|f| f.arguments.as_ref()),
                        on_text,
                    );
                }
                emit(
                    d.function_call.as_ref().and_then(|f| f.arguments.as_ref()),
                    on_text,
                );
            }
        }
        if let Some(u) = chunk
            .usage
            .as_ref()
            .and_then(|u| wire_usage(Dialect::OpenAiChat, u))
        {
            self.usage = Some(u);
            // OpenAI's usage chunk has no choices; compatibles that report usage
            // on every chunk (vLLM's continuous stats) become final at [DONE].
            self.complete |= choices.is_empty();
        }
    }

    fn on_responses(&mut self, name: &str, data: &str, on_text: &mut dyn FnMut(&str)) {
        let named = !name.is_empty();
        if named && !RESPONSES_TEXT_KINDS.contains(&name) && !RESPONSES_FINAL_KINDS.contains(&name)
        {
            if name == "error" {
                self.error_seen = true;
            }
            return; // big events (response.created, output_item.done, ...) are not parsed
        }
        let Ok(event) = serde_json::from_str::<ResponsesEvent>(data) else {
            return;
        };
        let kind = event.kind.as_ref().map_or(name, |k| &k.0);
        if RESPONSES_TEXT_KINDS.contains(&kind) {
            emit(event.delta.as_ref(), on_text);
        } else if RESPONSES_FINAL_KINDS.contains(&kind) {
            if kind == "response.failed" {
                self.error_seen = true;
            }
            let usage = event
                .response
                .as_ref()
                .and_then(|r| r.usage.as_ref())
                .and_then(|u| wire_usage(Dialect::OpenAiResponses, u));
            if let Some(u) = usage {
                self.usage = Some(u);
                self.complete = true;
            }
        } else if kind == "error" {
            self.error_seen = true;
        }
    }

    fn on_anthropic(&mut self, name: &str, data: &str, on_text: &mut dyn FnMut(&str)) {
        if ANTHROPIC_SKIP_KINDS.contains(&name) {
            return;
        }
        if name == "error" {
            self.error_seen = true;
            return;
        }
        let Ok(event) = serde_json::from_str::<AnthropicEvent>(data) else {
            return;
        };
        let kind = event.kind.as_ref().map_or(name, |k| &k.0);
        match kind {
            "content_block_delta" => {
                if let Some(d) = &event.delta {
                    emit(d.text.as_ref(), on_text);
                    emit(d.partial_json.as_ref(), on_text);
                    emit(d.thinking.as_ref(), on_text);
                }
            }
            "message_start" => {
                if let Some(m) = event.message.as_ref().and_then(|m| m.model.as_deref()) {
                    self.model = Some(crate::core::truncate(m, MAX_MODEL_LEN).to_string());
                }
                if let Some(u) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.anthropic.merge(u);
                    self.usage = self.anthropic.usage();
                }
            }
            "message_delta" => {
                if let Some(u) = &event.usage {
                    self.anthropic.merge(u);
                    self.usage = self.anthropic.usage();
                    self.complete |= u.output_tokens.0.is_some();
                }
            }
            "error" => self.error_seen = true,
            _ => {}
        }
    }

    fn on_gemini(&mut self, data: &str, on_text: &mut dyn FnMut(&str)) {
        let Ok(chunk) = serde_json::from_str::<GeminiChunk>(data) else {
            return;
        };
        if chunk.error.is_some() {
            self.error_seen = true;
        }
        for candidate in chunk.candidates.iter().flatten() {
            self.finished |= candidate.finish_reason.is_some();
            let parts = candidate.content.as_ref().and_then(|c| c.parts.as_ref());
            for part in parts.into_iter().flatten() {
                emit(part.text.as_ref(), on_text);
            }
        }
        if let Some(u) = chunk.usage_metadata.as_ref().and_then(gemini_usage) {
            self.usage = Some(u);
            self.complete |= self.finished;
        }
    }
}

/// Finds the last `"usage": {...}` object key in the end of a dropped Responses
/// event. A key inside a JSON string would have escaped quotes (`\"usage\"`), so
/// only real keys match; the response's own usage is its last one.
fn salvage_usage(tail: &[u8]) -> Option<WireUsage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(pos) = tail
        .get(..end)
        .and_then(|t| t.windows(KEY.len()).rposition(|w| w == KEY))
    {
        end = pos;
        if pos > 0 && tail.get(pos - 1) == Some(&b'\\') {
            continue;
        }
        let rest = tail.get(pos + KEY.len()..).unwrap_or_default();
        let rest = rest.trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut de = serde_json::Deserializer::from_slice(rest);
        if let Ok(u) = WireUsage::deserialize(&mut de) {
            if u.input_tokens.0.is_some() || u.output_tokens.0.is_some() {
                return Some(u);
            }
        }
    }
    None
}

#[cfg(test)]
mod more_tests;
#[cfg(test)]
mod tests;
