//! Answers back into the client's dialect: JSON bodies (content, tool calls,
//! finish and stop reasons, usage with cached tokens), error bodies and
//! statuses, and the rate-limit headers.

use super::{Dialect, Direction};
use crate::core::upstream::provider_headers;
use serde_json::{json, Map, Value};

/// Usage in both dialects' terms. `input` counts every input token, cached
/// ones included (OpenAI's `prompt_tokens`); Anthropic's `input_tokens`
/// excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    pub fn from_anthropic(u: &Value) -> Usage {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (read, write) = (
            n("cache_read_input_tokens"),
            n("cache_creation_input_tokens"),
        );
        Usage {
            input: n("input_tokens").saturating_add(read).saturating_add(write),
            output: n("output_tokens"),
            cache_read: read,
            cache_write: write,
        }
    }

    pub fn from_openai(u: &Value) -> Usage {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let cached = u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let input = n("prompt_tokens");
        Usage {
            input,
            output: n("completion_tokens"),
            cache_read: cached.min(input),
            cache_write: 0,
        }
    }

    pub fn openai(&self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }

    pub fn anthropic(&self) -> Value {
        json!({
            "input_tokens": self.input.saturating_sub(self.cache_read).saturating_sub(self.cache_write),
            "output_tokens": self.output,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_write,
        })
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
}

/// An OpenAI `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// A successful JSON answer in the client's dialect; `None` when the
/// provider's body is not the answer it should be (it then goes as an error).
pub fn json_answer(
    dir: Direction,
    body: &[u8],
    model: Option<&str>,
    now_s: u64,
) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let out = match (dir.provider, dir.client) {
        (Dialect::Anthropic, Dialect::OpenAi) => anthropic_to_openai(&v, model, now_s)?,
        (Dialect::OpenAi, Dialect::Anthropic) => openai_to_anthropic(&v, model)?,
        _ => return None,
    };
    serde_json::to_vec(&out).ok()
}

fn anthropic_to_openai(v: &Value, model: Option<&str>, now_s: u64) -> Option<Value> {
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in v
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                },
            })),
            _ => {} // thinking blocks: OpenAI chat has no slot for them
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let usage = Usage::from_anthropic(v.get("usage").unwrap_or(&Value::Null));
    Some(json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now_s,
        "model": model.map(Value::from).or_else(|| v.get("model").cloned()).unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason(stop),
        }],
        "usage": usage.openai(),
    }))
}

fn openai_to_anthropic(v: &Value, model: Option<&str>) -> Option<Value> {
    let choice = v.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(t) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    } else if let Some(r) = message.get("refusal").and_then(Value::as_str) {
        content.push(json!({"type": "text", "text": r}));
    }
    for c in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = c.get("function");
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input = serde_json::from_str::<Value>(args)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": c.get("id").cloned().unwrap_or(Value::Null),
            "name": f.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let usage = Usage::from_openai(v.get("usage").unwrap_or(&Value::Null));
    Some(json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": model.map(Value::from).or_else(|| v.get("model").cloned()).unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage.anthropic(),
    }))
}

/// The status the client sees: Anthropic's 529 (overloaded) is a 503 to an
/// OpenAI client; every other status stays.
pub fn status(dir: Direction, status: u32) -> u32 {
    if dir.client == Dialect::OpenAi && status == 529 {
        503
    } else {
        status
    }
}

/// An error body in the client's dialect, keeping the provider's message.
pub fn error_body(dir: Direction, status: u32, body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error");
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("upstream error {status}"));
    let out = match dir.client {
        Dialect::OpenAi => {
            let code = match status {
                429 => json!("rate_limit_exceeded"),
                _ => Value::Null,
            };
            json!({"error": {"message": message, "type": openai_error_type(status), "param": null, "code": code}})
        }
        Dialect::Anthropic => {
            json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
        }
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

fn openai_error_type(status: u32) -> &'static str {
    match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

fn anthropic_error_type(status: u32) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// A header change on the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    Set(String, String),
    Remove(String),
}

const DIMENSIONS: [(&str, &str); 2] = [("requests", "requests"), ("tokens", "tokens")];

/// The provider's rate-limit headers in the client's form: OpenAI's
/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as
/// durations, `1m30s`) <-> Anthropic's `anthropic-ratelimit-{requests,tokens}-
/// {limit,remaining,reset}` (resets as RFC 3339 times); the provider's own are
/// removed. `retry-after` and `retry-after-ms` are common to both and stay.
pub fn rate_limit_headers<'a>(
    dir: Direction,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    now_unix_ms: u64,
) -> Vec<HeaderChange> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match dir.provider {
            Dialect::Anthropic => {
                let Some(rest) = name.strip_prefix("anthropic-ratelimit-") else {
                    continue;
                };
                out.push(HeaderChange::Remove(name.clone()));
                for (dim, odim) in DIMENSIONS {
                    let Some(field) = rest.strip_prefix(dim).and_then(|r| r.strip_prefix('-'))
                    else {
                        continue;
                    };
                    let v = match field {
                        "limit" | "remaining" => Some(value.trim().to_string()),
                        "reset" => {
                            provider_headers::rfc3339_wait_ms(value, now_unix_ms).map(go_duration)
                        }
                        _ => None,
                    };
                    if let Some(v) = v {
                        out.push(HeaderChange::Set(format!("x-ratelimit-{field}-{odim}"), v));
                    }
                }
            }
            Dialect::OpenAi => {
                let Some(rest) = name.strip_prefix("x-ratelimit-") else {
                    continue;
                };
                out.push(HeaderChange::Remove(name.clone()));
                let Some((field, dim)) = rest.split_once('-') else {
                    continue;
                };
                let Some((adim, _)) = DIMENSIONS.iter().find(|(_, o)| *o == dim) else {
                    continue;
                };
                let v = match field {
                    "limit" | "remaining" => Some(value.trim().to_string()),
                    "reset" => provider_headers::go_duration_ms(value)
                        .map(|ms| rfc3339(now_unix_ms.saturating_add(ms))),
                    _ => None,
                };
                if let Some(v) = v {
                    out.push(HeaderChange::Set(
                        format!("anthropic-ratelimit-{adim}-{field}"),
                        v,
                    ));
                }
            }
        }
    }
    out
}

/// Milliseconds as a Go duration, as OpenAI writes resets (`1m30s`, `250ms`).
pub fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let s = rest / 1000;
    let frac = rest % 1000;
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-07T02:30:00Z`), whole seconds rounded up.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms.div_ceil(1000);
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}
