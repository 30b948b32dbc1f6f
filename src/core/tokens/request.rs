//! Request bodies: which API a request speaks, what it asks for, and the text
//! that will be tokenized.
//!
//! Bodies are deserialized into small typed views with borrowed strings; fields
//! the estimate does not need are skipped without being built. Tool schemas,
//! response formats and other structured parts are counted as their raw JSON
//! text, which is close to how providers serialize them into the prompt.

use crate::core::tokens::estimate::{Structure, TextStats};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The request formats the filter understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    OpenAiChat,
    OpenAiResponses,
    OpenAiCompletions,
    OpenAiEmbeddings,
    AnthropicMessages,
    Gemini,
}

impl Api {
    pub const ALL: [Api; 6] = [
        Api::OpenAiChat,
        Api::OpenAiResponses,
        Api::OpenAiCompletions,
        Api::OpenAiEmbeddings,
        Api::AnthropicMessages,
        Api::Gemini,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiResponses => "openai_responses",
            Api::OpenAiCompletions => "openai_completions",
            Api::OpenAiEmbeddings => "openai_embeddings",
            Api::AnthropicMessages => "anthropic_messages",
            Api::Gemini => "gemini",
        }
    }

    pub fn parse(s: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Detection by path, the default when a route does not name its API.
    pub fn detect(path: &str) -> Option<Api> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
            Some(Api::Gemini)
        } else if path.ends_with("/chat/completions") {
            Some(Api::OpenAiChat)
        } else if path.ends_with("/responses") {
            Some(Api::OpenAiResponses)
        } else if path.ends_with("/completions") {
            Some(Api::OpenAiCompletions)
        } else if path.ends_with("/embeddings") {
            Some(Api::OpenAiEmbeddings)
        } else if path.ends_with("/messages") {
            Some(Api::AnthropicMessages)
        } else {
            None
        }
    }

    /// Whether answers carry generated output (embeddings do not).
    pub fn generates(self) -> bool {
        self != Api::OpenAiEmbeddings
    }
}

/// What the filter learned from a request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// OpenAI chat: `stream_options.include_usage` was set by the client.
    pub include_usage: bool,
    /// The request's own output cap (`max_tokens` or its equivalent).
    pub max_output: Option<u64>,
    /// Number of answers asked for (`n`, `candidateCount`); at least 1.
    pub choices: u32,
    pub text: TextStats,
    pub structure: Structure,
    /// Prompt tokens given directly as token ids (legacy completions, embeddings): exact.
    pub token_ids: u64,
}

/// Why a body could not be read. The message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub String);

/// Longest model name kept; longer ones are cut (they label metrics and slots).
pub const MAX_MODEL_LEN: usize = 128;

pub fn parse(api: Api, path: &str, body: &[u8]) -> Result<RequestFacts, BodyError> {
    let mut f = RequestFacts {
        choices: 1,
        ..Default::default()
    };
    match api {
        Api::OpenAiChat => chat(body, &mut f)?,
        Api::OpenAiResponses => responses(body, &mut f)?,
        Api::OpenAiCompletions => completions(body, &mut f)?,
        Api::OpenAiEmbeddings => embeddings(body, &mut f)?,
        Api::AnthropicMessages => anthropic(body, &mut f)?,
        Api::Gemini => gemini(path, body, &mut f)?,
    }
    if let Some(m) = &mut f.model {
        let end = crate::core::truncate(m, MAX_MODEL_LEN).len();
        m.truncate(end);
    }
    f.choices = f.choices.clamp(1, 128);
    Ok(f)
}

fn de<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BodyError> {
    // Every API's body is a JSON object; say so rather than what serde's
    // visitor for the first field expected.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let kind = match first {
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => None,
    };
    if let Some(kind) = kind {
        return Err(BodyError(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => format!("Invalid request body: expected a JSON object, got {kind}"),
                Err(e) => format!("Request body is not valid JSON: {e}"),
            },
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if e.is_data() {
            BodyError(format!("Invalid request body: {msg}"))
        } else {
            BodyError(format!("Request body is not valid JSON: {msg}"))
        }
    })
}

fn raw(text: &mut TextStats, v: &Option<&RawValue>) {
    if let Some(v) = v {
        text.add(v.get());
    }
}

/// Content that is either a string or a list of typed parts. Deserialized by
/// hand: serde's untagged enums buffer their input, which loses borrowing and
/// cannot hold `RawValue`s.
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ContentVisitor(PhantomData))
    }
}

struct ContentVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
    type Value = Content<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of content parts")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(p) = seq.next_element::<Part<'a>>()? {
            parts.push(p);
        }
        Ok(Content::Parts(parts))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        // A single part where a list was expected.
        Part::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(|p| Content::Parts(vec![p]))
    }
    // Scalars where content belongs carry no text: ignored, not refused.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// Anthropic tool_result content, nested.
    #[serde(borrow, default)]
    content: Option<Box<Content<'a>>>,
    /// Anthropic tool_use input, counted as JSON text.
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// Anthropic thinking blocks.
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
}

fn content(c: Option<&Content<'_>>, f: &mut RequestFacts) {
    match c {
        Some(Content::Text(t)) => f.text.add(t),
        Some(Content::Parts(parts)) => {
            for p in parts {
                part(p, f);
            }
        }
        Some(Content::Other) | None => {}
    }
}

fn part(p: &Part<'_>, f: &mut RequestFacts) {
    let mut any = false;
    if let Some(t) = &p.text {
        f.text.add(t);
        any = true;
    }
    if let Some(t) = &p.thinking {
        f.text.add(t);
        any = true;
    }
    if let Some(i) = p.input {
        f.text.add(i.get());
        any = true;
    }
    if let Some(c) = &p.content {
        content(Some(c), f);
        any = true;
    }
    let kind = p.kind.as_deref().unwrap_or("");
    if !any && !kind.is_empty() && !kind.contains("text") {
        // Images, audio, files, documents: a fixed, documented cost each.
        f.structure.images += 1;
    }
}

fn model(m: Option<Cow<'_, str>>) -> Option<String> {
    m.map(|m| m.into_owned())
}

// ---- OpenAI chat completions ----

#[derive(Deserialize)]
struct Chat<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

fn chat(body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Chat<'_> = de(body)?;
    f.model = model(r.model);
    for m in &r.messages {
        f.structure.messages += 1;
        if let Some(role) = &m.role {
            f.text.add(role);
        }
        if let Some(n) = &m.name {
            f.text.add(n);
        }
        content(m.content.as_ref(), f);
        raw(&mut f.text, &m.tool_calls);
        raw(&mut f.text, &m.function_call);
    }
    for t in [&r.tools, &r.functions].into_iter().flatten() {
        f.structure.tools += count_array(t);
        f.text.add(t.get());
    }
    raw(&mut f.text, &r.response_format);
    f.choices = r.n.unwrap_or(1);
    f.max_output = r.max_completion_tokens.or(r.max_tokens);
    f.stream = r.stream.unwrap_or(false);
    f.include_usage = r
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(())
}

/// Number of elements of a JSON array (0 for anything else), without building it.
fn count_array(v: &RawValue) -> u32 {
    serde_json::from_str::<Vec<IgnoredAny>>(v.get()).map_or(0, |a| a.len() as u32)
}

// ---- OpenAI Responses API ----

#[derive(Deserialize)]
struct Responses<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<ResponsesInput<'a>>,
    #[serde(borrow, default)]
    instructions: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
}

enum ResponsesInput<'a> {
    Text(Cow<'a, str>),
    Items(Vec<ResponsesItem<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ResponsesInput<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ResponsesInput<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of input items")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ResponsesInput::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ResponsesInput::Text(Cow::Owned(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(it) = seq.next_element::<ResponsesItem<'a>>()? {
                    items.push(it);
                }
                Ok(ResponsesInput::Items(items))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct ResponsesItem<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    /// function_call_output items.
    #[serde(borrow, default)]
    output: Option<&'a RawValue>,
    /// function_call items.
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

fn responses(body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Responses<'_> = de(body)?;
    f.model = model(r.model);
    if let Some(i) = &r.instructions {
        f.structure.messages += 1;
        f.text.add(i);
    }
    match &r.input {
        Some(ResponsesInput::Text(t)) => {
            f.structure.messages += 1;
            f.text.add(t);
        }
        Some(ResponsesInput::Items(items)) => {
            for it in items {
                f.structure.messages += 1;
                if let Some(role) = &it.role {
                    f.text.add(role);
                }
                content(it.content.as_ref(), f);
                raw(&mut f.text, &it.output);
                if let Some(a) = &it.arguments {
                    f.text.add(a);
                }
            }
        }
        None => {}
    }
    if let Some(t) = &r.tools {
        f.structure.tools += count_array(t);
        f.text.add(t.get());
    }
    raw(&mut f.text, &r.text);
    f.max_output = r.max_output_tokens;
    f.stream = r.stream.unwrap_or(false);
    Ok(())
}

// ---- OpenAI legacy completions and embeddings ----

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    /// Token arrays: the count is exact.
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Prompt<'_> {
    /// Adds the prompt's text; returns tokens given directly as ids.
    fn add(&self, text: &mut TextStats) -> u64 {
        match self {
            Prompt::Text(t) => {
                text.add(t);
                0
            }
            Prompt::Texts(ts) => {
                ts.iter().for_each(|t| text.add(t));
                0
            }
            Prompt::Tokens(ids) => ids.len() as u64,
            Prompt::TokenLists(l) => l.iter().map(|ids| ids.len() as u64).sum(),
        }
    }
}

#[derive(Deserialize)]
struct Completions<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prompt: Prompt<'a>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

fn completions(body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Completions<'_> = de(body)?;
    f.model = model(r.model);
    f.token_ids = r.prompt.add(&mut f.text);
    // Legacy completions default to 16 output tokens when max_tokens is absent.
    f.max_output = Some(r.max_tokens.unwrap_or(16));
    f.choices = r.n.unwrap_or(1);
    f.stream = r.stream.unwrap_or(false);
    f.include_usage = r
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(())
}

#[derive(Deserialize)]
struct Embeddings<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Prompt<'a>,
}

fn embeddings(body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Embeddings<'_> = de(body)?;
    f.model = model(r.model);
    f.token_ids = r.input.add(&mut f.text);
    f.max_output = Some(0);
    Ok(())
}

// ---- Anthropic messages ----

#[derive(Deserialize)]
struct Messages<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    system: Option<Content<'a>>,
    #[serde(borrow)]
    messages: Vec<AnthropicMessage<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

fn anthropic(body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Messages<'_> = de(body)?;
    f.model = model(r.model);
    content(r.system.as_ref(), f);
    for m in &r.messages {
        f.structure.messages += 1;
        content(m.content.as_ref(), f);
    }
    if let Some(t) = &r.tools {
        f.structure.tools += count_array(t);
        f.text.add(t.get());
    }
    f.max_output = r.max_tokens;
    f.stream = r.stream.unwrap_or(false);
    Ok(())
}

// ---- Gemini generateContent ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Generate<'a> {
    #[serde(borrow, default)]
    contents: Vec<GeminiContent<'a>>,
    #[serde(borrow, default, alias = "system_instruction")]
    system_instruction: Option<GeminiContent<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(default, alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default, alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(default, alias = "candidate_count")]
    candidate_count: Option<u32>,
}

#[derive(Deserialize)]
struct GeminiContent<'a> {
    #[serde(borrow, default)]
    parts: Vec<GeminiPart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPart<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, alias = "function_call")]
    function_call: Option<&'a RawValue>,
    #[serde(borrow, default, alias = "function_response")]
    function_response: Option<&'a RawValue>,
    #[serde(default, alias = "inline_data")]
    inline_data: Option<IgnoredAny>,
    #[serde(default, alias = "file_data")]
    file_data: Option<IgnoredAny>,
}

fn gemini(path: &str, body: &[u8], f: &mut RequestFacts) -> Result<(), BodyError> {
    let r: Generate<'_> = de(body)?;
    // The model is in the path: /v1beta/models/{model}:generateContent
    f.model = path
        .split(['?', '#'])
        .next()
        .and_then(|p| p.rsplit('/').next())
        .and_then(|last| last.split(':').next())
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    f.stream = path.contains(":streamGenerateContent");
    let add = |c: &GeminiContent<'_>, f: &mut RequestFacts| {
        f.structure.messages += 1;
        for p in &c.parts {
            if let Some(t) = &p.text {
                f.text.add(t);
            }
            raw(&mut f.text, &p.function_call);
            raw(&mut f.text, &p.function_response);
            if p.inline_data.is_some() || p.file_data.is_some() {
                f.structure.images += 1;
            }
        }
    };
    if let Some(s) = &r.system_instruction {
        add(s, f);
    }
    for c in &r.contents {
        add(c, f);
    }
    if let Some(t) = &r.tools {
        f.structure.tools += count_array(t);
        f.text.add(t.get());
    }
    if let Some(g) = &r.generation_config {
        f.max_output = g.max_output_tokens;
        f.choices = g.candidate_count.unwrap_or(1);
    }
    Ok(())
}

// ---- Body rewrites ----

/// Changes the filter may make to a body, when the route asks for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Set the output cap to this value (absent, or above it).
    pub max_output: Option<u64>,
    /// OpenAI streaming: ask for usage in the final chunk.
    pub include_usage: bool,
}

/// Applies a rewrite; `Ok(None)` when nothing needed to change.
pub fn rewrite(
    api: Api,
    body: &[u8],
    facts: &RequestFacts,
    w: Rewrite,
) -> Result<Option<Vec<u8>>, BodyError> {
    let cap_change = match (w.max_output, facts.max_output) {
        (Some(cap), Some(cur)) => cur > cap,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let usage_change = w.include_usage
        && facts.stream
        && !facts.include_usage
        && matches!(api, Api::OpenAiChat | Api::OpenAiCompletions);
    if !cap_change && !usage_change {
        return Ok(None);
    }
    let mut v: serde_json::Map<String, serde_json::Value> = de(body)?;
    if let (true, Some(cap)) = (cap_change, w.max_output) {
        let cap = serde_json::Value::from(cap);
        match api {
            Api::OpenAiChat => {
                // Keep the field the client used; new requests get max_tokens,
                // which every OpenAI-compatible server accepts.
                let key = if v.contains_key("max_completion_tokens") {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                v.insert(key.to_string(), cap);
            }
            Api::OpenAiResponses => {
                v.insert("max_output_tokens".to_string(), cap);
            }
            Api::OpenAiCompletions | Api::AnthropicMessages => {
                v.insert("max_tokens".to_string(), cap);
            }
            Api::Gemini => {
                let gc = v
                    .entry("generationConfig")
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let Some(o) = gc.as_object_mut() {
                    o.insert("maxOutputTokens".to_string(), cap);
                }
            }
            Api::OpenAiEmbeddings => {}
        }
    }
    if usage_change {
        let so = v
            .entry("stream_options")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        match so.as_object_mut() {
            Some(o) => {
                o.insert("include_usage".to_string(), serde_json::Value::Bool(true));
            }
            None => *so = serde_json::json!({"include_usage": true}),
        }
    }
    serde_json::to_vec(&v)
        .map(Some)
        .map_err(|e| BodyError(format!("cannot rewrite body: {e}")))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
