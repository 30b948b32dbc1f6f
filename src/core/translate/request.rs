//! Request bodies: OpenAI chat completions <-> Anthropic messages.
//!
//! Translated: system prompts (OpenAI `system`/`developer` messages <->
//! Anthropic `system`), roles, text and image parts (data URLs <-> base64
//! sources, http(s) URLs <-> URL sources), tools and `tool_choice`
//! (`parallel_tool_calls: false` <-> `disable_parallel_tool_use`), assistant
//! tool calls <-> `tool_use` blocks, `tool` messages <-> `tool_result` blocks,
//! `stop` <-> `stop_sequences`, `temperature` (clamped to Anthropic's 0..1),
//! `top_p`, `max_tokens`/`max_completion_tokens` <-> `max_tokens` (Anthropic
//! requires it: the route's output allowance when the client set none),
//! `stream` (and, to OpenAI, `stream_options.include_usage: true`, so the
//! stream ends with exact usage), `user` <-> `metadata.user_id`.
//!
//! Dropped (no counterpart; the answer keeps its meaning): see [`DROPPED_OPENAI`]
//! and [`DROPPED_ANTHROPIC`]. Refused (the entry is skipped for the request):
//! what [`translate`] returns `Err` for, listed in `docs/failover.md`.

use super::{refuse, Dialect, Direction, Refusal};
use serde_json::{json, Map, Value};

/// OpenAI request fields dropped on the way to Anthropic.
pub const DROPPED_OPENAI: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "service_tier",
    "store",
    "metadata",
    "prediction",
    "reasoning_effort",
    "response_format",
    "stream_options",
    "n",
    "name",
];

/// Anthropic request fields dropped on the way to OpenAI.
pub const DROPPED_ANTHROPIC: &[&str] = &[
    "top_k",
    "thinking",
    "service_tier",
    "container",
    "cache_control",
    "citations",
];

/// Anthropic's temperature range ends at 1 (OpenAI's at 2).
const ANTHROPIC_MAX_TEMPERATURE: f64 = 1.0;
/// OpenAI takes at most four stop sequences.
const OPENAI_MAX_STOP: usize = 4;

/// What the attempt sends, and what its answer's translation needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub body: Vec<u8>,
    /// The request asked for a stream.
    pub stream: bool,
    /// The client wants a final usage chunk (OpenAI `stream_options.include_usage`).
    pub include_usage: bool,
    /// Fields present in the request and dropped (for the debug log).
    pub dropped: Vec<String>,
}

/// Translates a request body for the provider's dialect. `model`: the chain
/// entry's model (else the client's stays); `max_tokens`: the route's output
/// allowance, used when the client set no cap and the provider needs one.
pub fn translate(
    dir: Direction,
    body: &[u8],
    model: Option<&str>,
    max_tokens: u64,
) -> Result<Translated, Refusal> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return refuse(format!("body is not JSON: {e}")),
    };
    let Value::Object(o) = v else {
        return refuse("body is not a JSON object");
    };
    match (dir.client, dir.provider) {
        (Dialect::OpenAi, Dialect::Anthropic) => to_anthropic(o, model, max_tokens),
        (Dialect::Anthropic, Dialect::OpenAi) => to_openai(o, model),
        _ => refuse("same dialect"),
    }
}

fn dropped_of(o: &Map<String, Value>, known: &[&str], list: &[&str]) -> Vec<String> {
    o.keys()
        .filter(|k| list.contains(&k.as_str()) || !known.contains(&k.as_str()))
        .cloned()
        .collect()
}

// ------------------------------------------------------- OpenAI -> Anthropic

const OPENAI_KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
];

/// Fields whose loss would change the answer, with why.
fn openai_refusals(o: &Map<String, Value>) -> Result<(), Refusal> {
    if o.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return refuse("n > 1 (Anthropic answers one choice)");
    }
    if let Some(t) = o
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        if t != "text" {
            return refuse(format!("response_format {t} (no Anthropic counterpart)"));
        }
    }
    if o.get("audio").is_some_and(|a| !a.is_null())
        || o.get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x.as_str() != Some("text")))
    {
        return refuse("audio output (no Anthropic counterpart)");
    }
    if o.get("web_search_options").is_some_and(|w| !w.is_null()) {
        return refuse("web_search_options (no Anthropic counterpart)");
    }
    if o.get("functions").is_some() || o.get("function_call").is_some() {
        return refuse("legacy functions (use tools)");
    }
    Ok(())
}

fn to_anthropic(
    o: Map<String, Value>,
    model: Option<&str>,
    allowance: u64,
) -> Result<Translated, Refusal> {
    openai_refusals(&o)?;
    let mut dropped = dropped_of(&o, OPENAI_KNOWN, DROPPED_OPENAI);
    let mut out = Map::new();
    let model = model
        .map(str::to_string)
        .or_else(|| o.get("model").and_then(Value::as_str).map(str::to_string));
    if let Some(m) = model {
        out.insert("model".into(), Value::String(m));
    }
    let Some(Value::Array(messages)) = o.get("messages") else {
        return refuse("messages is not a list");
    };
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if m.get("name").is_some() && !dropped.iter().any(|d| d == "name") {
            dropped.push("name".into());
        }
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(m.get("content"), i)?);
                continue;
            }
            "user" => ("user", user_blocks(m.get("content"), i)?),
            "assistant" => ("assistant", assistant_blocks(m, i)?),
            "tool" => ("user", vec![tool_result(m, i)?]),
            other => return refuse(format!("messages[{i}]: role {other:?}")),
        };
        match turns.last_mut() {
            // Anthropic alternates roles: consecutive turns of one role merge.
            Some((r, b)) if r == role => b.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let msgs: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), Value::Array(msgs));
    let cap = o
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| o.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(allowance)
        .max(1);
    out.insert("max_tokens".into(), json!(cap));
    if let Some(t) = o.get("temperature").and_then(Value::as_f64) {
        out.insert(
            "temperature".into(),
            json!(t.clamp(0.0, ANTHROPIC_MAX_TEMPERATURE)),
        );
    }
    if let Some(p) = o.get("top_p").filter(|p| p.is_number()) {
        out.insert("top_p".into(), p.clone());
    }
    match o.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    let include_usage = stream
        && o.get("stream_options")
            .and_then(|s| s.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    if let Some(Value::String(u)) = o.get("user") {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    let has_tools = match o.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => {
            let mut t = Vec::with_capacity(tools.len());
            for (i, tool) in tools.iter().enumerate() {
                t.push(anthropic_tool(tool, i)?);
            }
            out.insert("tools".into(), Value::Array(t));
            true
        }
        _ => false,
    };
    let parallel_off = o.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            other => return refuse(format!("tool_choice {other:?}")),
        },
        Some(c) => match c
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return refuse("tool_choice without a function name"),
        },
    };
    let choice = match (choice, parallel_off && has_tools) {
        (Some(mut c), true) => {
            if let Some(m) = c.as_object_mut() {
                m.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
            Some(c)
        }
        (None, true) => Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        (c, false) => c,
    };
    if let Some(c) = choice.filter(|_| has_tools) {
        out.insert("tool_choice".into(), c);
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| Refusal(e.to_string()))?;
    Ok(Translated {
        body,
        stream,
        include_usage,
        dropped,
    })
}

/// Text parts (system prompts): a string or a list of text parts.
fn text_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Refusal> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => {
                        Ok(json!({"type": "text", "text": t}))
                    }
                    _ => refuse(format!("messages[{i}]: a system part that is not text")),
                },
            )
            .collect(),
        Some(_) => refuse(format!("messages[{i}]: content is not a string or a list")),
    }
}

fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Refusal> {
    let Some(Value::Array(parts)) = content else {
        return text_blocks(content, i);
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text") {
                Some(Value::String(t)) => out.push(json!({"type": "text", "text": t})),
                _ => return refuse(format!("messages[{i}]: a text part without text")),
            },
            Some("image_url") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                out.push(image_source(url, i)?);
            }
            Some(t) => return refuse(format!("messages[{i}]: content part {t:?}")),
            None => return refuse(format!("messages[{i}]: a content part without type")),
        }
    }
    Ok(out)
}

/// An OpenAI image URL (a data URL or http(s)) as an Anthropic image block.
fn image_source(url: &str, i: usize) -> Result<Value, Refusal> {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media, data)) = rest.split_once(";base64,") {
            return Ok(json!({"type": "image", "source":
                {"type": "base64", "media_type": media, "data": data}}));
        }
        return refuse(format!(
            "messages[{i}]: an image data URL that is not base64"
        ));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    refuse(format!(
        "messages[{i}]: an image URL that is not http(s) or data"
    ))
}

fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, Refusal> {
    let mut out = match m.get("content") {
        Some(Value::Array(parts)) => {
            let mut v = Vec::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text"),
                    p.get("refusal"),
                ) {
                    (Some("text"), Some(Value::String(t)), _)
                    | (Some("refusal"), _, Some(Value::String(t))) => {
                        v.push(json!({"type": "text", "text": t}))
                    }
                    _ => {
                        return refuse(format!("messages[{i}]: an assistant part that is not text"))
                    }
                }
            }
            v
        }
        c => text_blocks(c, i)?,
    };
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for c in calls {
            let f = c.get("function");
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
            let id = c.get("id").and_then(Value::as_str);
            let (Some(name), Some(id)) = (name, id) else {
                return refuse(format!("messages[{i}]: a tool call without id or name"));
            };
            let args = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let input: Value =
                match serde_json::from_str(if args.trim().is_empty() { "{}" } else { args }) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return refuse(format!(
                            "messages[{i}]: tool call arguments are not a JSON object"
                        ))
                    }
                };
            out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(out)
}

fn tool_result(m: &Value, i: usize) -> Result<Value, Refusal> {
    let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
        return refuse(format!(
            "messages[{i}]: a tool message without tool_call_id"
        ));
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        c => Value::Array(text_blocks(c, i)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn anthropic_tool(tool: &Value, i: usize) -> Result<Value, Refusal> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return refuse(format!("tools[{i}]: not a function tool"));
    }
    let f = tool.get("function");
    let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
        return refuse(format!("tools[{i}]: a function without a name"));
    };
    let mut t = Map::new();
    t.insert("name".into(), Value::String(name.to_string()));
    if let Some(d) = f
        .and_then(|f| f.get("description"))
        .filter(|d| d.is_string())
    {
        t.insert("description".into(), d.clone());
    }
    let schema = f
        .and_then(|f| f.get("parameters"))
        .filter(|p| p.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    t.insert("input_schema".into(), schema);
    Ok(Value::Object(t))
}

// ------------------------------------------------------- Anthropic -> OpenAI

const ANTHROPIC_KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

fn to_openai(o: Map<String, Value>, model: Option<&str>) -> Result<Translated, Refusal> {
    if o.get("mcp_servers").is_some_and(|m| !m.is_null()) {
        return refuse("mcp_servers (no OpenAI chat counterpart)");
    }
    let dropped = dropped_of(&o, ANTHROPIC_KNOWN, DROPPED_ANTHROPIC);
    let mut out = Map::new();
    let model = model
        .map(str::to_string)
        .or_else(|| o.get("model").and_then(Value::as_str).map(str::to_string));
    if let Some(m) = model {
        out.insert("model".into(), Value::String(m));
    }
    let mut msgs: Vec<Value> = Vec::new();
    match o.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => msgs.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = join_text(blocks)
                .ok_or_else(|| Refusal("system: a block that is not text".into()))?;
            msgs.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return refuse("system is not a string or a list"),
    }
    let Some(Value::Array(messages)) = o.get("messages") else {
        return refuse("messages is not a list");
    };
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => user_messages(m.get("content"), i, &mut msgs)?,
            Some("assistant") => msgs.push(assistant_message(m.get("content"), i)?),
            other => return refuse(format!("messages[{i}]: role {other:?}")),
        }
    }
    out.insert("messages".into(), Value::Array(msgs));
    if let Some(n) = o.get("max_tokens").and_then(Value::as_u64) {
        out.insert("max_completion_tokens".into(), json!(n));
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = o.get(k).filter(|v| v.is_number()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Array(stops)) = o.get("stop_sequences") {
        if stops.len() > OPENAI_MAX_STOP {
            return refuse(format!(
                "{} stop sequences (OpenAI takes at most {OPENAI_MAX_STOP})",
                stops.len()
            ));
        }
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        // Anthropic streams always end with usage: ask OpenAI for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(u) = o
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(u.to_string()));
    }
    let mut has_tools = false;
    if let Some(Value::Array(tools)) = o.get("tools") {
        let mut t = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            if tool
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|ty| ty != "custom")
            {
                return refuse(format!(
                    "tools[{i}]: a server tool (no OpenAI chat counterpart)"
                ));
            }
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return refuse(format!("tools[{i}]: a tool without a name"));
            };
            let mut f = Map::new();
            f.insert("name".into(), Value::String(name.to_string()));
            if let Some(d) = tool.get("description").filter(|d| d.is_string()) {
                f.insert("description".into(), d.clone());
            }
            if let Some(s) = tool.get("input_schema").filter(|s| s.is_object()) {
                f.insert("parameters".into(), s.clone());
            }
            t.push(json!({"type": "function", "function": Value::Object(f)}));
        }
        has_tools = !t.is_empty();
        if has_tools {
            out.insert("tools".into(), Value::Array(t));
        }
    }
    if let Some(c) = o.get("tool_choice").filter(|c| !c.is_null()) {
        let choice = match c.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => match c.get("name").and_then(Value::as_str) {
                Some(name) => json!({"type": "function", "function": {"name": name}}),
                None => return refuse("tool_choice tool without a name"),
            },
            other => return refuse(format!("tool_choice {other:?}")),
        };
        if has_tools {
            out.insert("tool_choice".into(), choice);
            if c.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| Refusal(e.to_string()))?;
    Ok(Translated {
        body,
        stream,
        include_usage: stream,
        dropped,
    })
}

/// The text of text blocks, joined; `None` if one is not text.
fn join_text(blocks: &[Value]) -> Option<String> {
    let mut s = String::new();
    for b in blocks {
        if b.get("type").and_then(Value::as_str) != Some("text") {
            return None;
        }
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(b.get("text").and_then(Value::as_str)?);
    }
    Some(s)
}

/// A user turn: its tool results become `tool` messages (first, as OpenAI
/// wants them right after the assistant's calls), the rest one user message.
fn user_messages(content: Option<&Value>, i: usize, msgs: &mut Vec<Value>) -> Result<(), Refusal> {
    let blocks = match content {
        Some(Value::String(s)) => {
            msgs.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => return refuse(format!("messages[{i}]: content is not a string or a list")),
    };
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": t}));
            }
            Some("image") => parts.push(image_part(b.get("source"), i)?),
            Some("tool_result") => {
                let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                    return refuse(format!("messages[{i}]: a tool_result without tool_use_id"));
                };
                let text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(c)) => join_text(c).ok_or_else(|| {
                        Refusal(format!(
                            "messages[{i}]: a tool_result block that is not text"
                        ))
                    })?,
                    Some(_) => return refuse(format!("messages[{i}]: tool_result content")),
                };
                msgs.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some(t) => return refuse(format!("messages[{i}]: content block {t:?}")),
            None => return refuse(format!("messages[{i}]: a content block without type")),
        }
    }
    if !parts.is_empty() {
        msgs.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image_part(source: Option<&Value>, i: usize) -> Result<Value, Refusal> {
    let s = source.unwrap_or(&Value::Null);
    let url = match s.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = s
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let data = s.get("data").and_then(Value::as_str).unwrap_or("");
            format!("data:{media};base64,{data}")
        }
        Some("url") => s
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => {
            return refuse(format!(
                "messages[{i}]: an image source that is not base64 or url"
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn assistant_message(content: Option<&Value>, i: usize) -> Result<Value, Refusal> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(json!({"role": "assistant", "content": s})),
        Some(Value::Array(b)) => b,
        _ => return refuse(format!("messages[{i}]: content is not a string or a list")),
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return refuse(format!("messages[{i}]: a tool_use without id or name"));
                };
                let args = b
                    .get("input")
                    .map_or_else(|| "{}".to_string(), Value::to_string);
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": args}}));
            }
            // Earlier reasoning is the provider's own; OpenAI chat has no slot for it.
            Some("thinking") | Some("redacted_thinking") => {}
            Some(t) => return refuse(format!("messages[{i}]: content block {t:?}")),
            None => return refuse(format!("messages[{i}]: a content block without type")),
        }
    }
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(m))
}
