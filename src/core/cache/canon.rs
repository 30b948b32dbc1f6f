//! What makes two requests the same: the canonical form of a request body, the
//! caller's scope, and the client's cache and idempotency headers.
//!
//! Canonical JSON: object keys sorted by their bytes, no whitespace, strings as
//! serde_json writes them, and numbers by value (`0`, `0.0` and `-0` are one
//! number; integral floats are written as integers). Every field of the body
//! is part of the key, so any field that can change the answer does; a field
//! that cannot only makes the key stricter.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A SHA-256 digest: the cache's keys and what entries are checked against.
pub type Digest32 = [u8; 32];

/// Bodies nested deeper than this are not cached (bounded recursion).
pub const MAX_DEPTH: usize = 64;

/// The canonical form of `v` appended to `out`; `false` if nested past [`MAX_DEPTH`].
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) -> bool {
    write(v, out, 0)
}

fn write(v: &Value, out: &mut Vec<u8>, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    out.extend_from_slice((f as i64).to_string().as_bytes());
                } else {
                    // Rust's shortest round-trip form: one text per value.
                    out.extend_from_slice(format!("{f:?}").as_bytes());
                }
            }
        }
        Value::String(s) => {
            // serde_json's own escaping: the same string always writes the same.
            match serde_json::to_vec(s) {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return false,
            }
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write(x, out, depth + 1) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match serde_json::to_vec(k) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => return false,
                }
                out.push(b':');
                if !write(&m[*k], out, depth + 1) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// Joins the parts with their lengths (no two lists of parts hash alike) and hashes them.
pub fn digest(parts: &[&[u8]]) -> Digest32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The request's own digest: the API, the path (Gemini names the model there)
/// and the canonical body. `None` when the body is not a JSON object (or is too deep).
pub fn request_digest(api: &str, path: &str, body: &Value) -> Option<Digest32> {
    if !body.is_object() {
        return None;
    }
    let mut canon = Vec::with_capacity(256);
    if !canonical_json(body, &mut canon) {
        return None;
    }
    Some(digest(&[
        b"llmcap-request-v1",
        api.as_bytes(),
        path.as_bytes(),
        &canon,
    ]))
}

/// Headers that carry the caller's credential, by API family.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// The caller's scope: a hash of its credential headers and tenants. Only this
/// digest is kept, never a credential: entries of two callers never meet.
pub fn scope(
    credentials: &[(&str, &str)],
    tenant: Option<&str>,
    budget_tenant: Option<&str>,
) -> Digest32 {
    let mut parts: Vec<&[u8]> = vec![b"llmcap-scope-v1"];
    for (name, value) in credentials {
        parts.push(name.as_bytes());
        parts.push(value.as_bytes());
    }
    parts.push(b"tenant");
    parts.push(tenant.unwrap_or("").as_bytes());
    parts.push(b"budget-tenant");
    parts.push(budget_tenant.unwrap_or("").as_bytes());
    digest(&parts)
}

/// Whether the request asks for a deterministic answer: `temperature: 0`, or a
/// `seed` (OpenAI; Gemini's `generationConfig`); Anthropic has no seed, so only
/// its `temperature: 0`. Embeddings have no sampling: always.
pub fn deterministic(api: &str, body: &Value) -> bool {
    let zero = |v: Option<&Value>| v.and_then(Value::as_f64) == Some(0.0);
    let set = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    match api {
        "openai_embeddings" => true,
        "anthropic_messages" => zero(body.get("temperature")),
        "gemini" => {
            let g = body
                .get("generationConfig")
                .or_else(|| body.get("generation_config"));
            let g = g.unwrap_or(&Value::Null);
            zero(g.get("temperature")) || set(g.get("seed"))
        }
        _ => zero(body.get("temperature")) || set(body.get("seed")),
    }
}

/// The client's `Cache-Control` request directives the cache honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// Do not answer from the cache (the answer may still be stored).
    pub no_cache: bool,
    /// Do not store the answer.
    pub no_store: bool,
}

/// Reads `Cache-Control` (comma-separated, case-insensitive; arguments ignored).
pub fn directives(cache_control: Option<&str>) -> Directives {
    let mut d = Directives::default();
    for part in cache_control.unwrap_or("").split(',') {
        let name = part.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("no-cache") {
            d.no_cache = true;
        } else if name.eq_ignore_ascii_case("no-store") {
            d.no_store = true;
        }
    }
    d
}

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    /// A byte outside visible ASCII, or a quote inside.
    BadCharacter,
}

/// Parses an `Idempotency-Key` value: a structured-field string (`"..."`, as
/// the IETF draft writes it) or a bare token, 1 to 255 visible ASCII characters.
pub fn idempotency_key(v: &str) -> Result<&str, KeyError> {
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    let inner = match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(s) => s,
        None => v,
    };
    if inner.is_empty() {
        return Err(KeyError::Empty);
    }
    if inner.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !inner
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(KeyError::BadCharacter);
    }
    Ok(inner)
}

/// Whether a complete answer ended well: every finish reason it names is not
/// an error or a refusal, it names at least one, and (streams) no error event
/// came. `streamed`: `body` is the event stream.
pub fn finished_well(api: &str, streamed: bool, body: &[u8]) -> bool {
    if api == "openai_embeddings" {
        return !streamed
            && serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("data").is_some());
    }
    let mut reasons = Vec::new();
    if streamed {
        let text = String::from_utf8_lossy(body);
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(ev) = line.strip_prefix("event:") {
                if ev.trim() == "error" {
                    return false;
                }
                continue;
            }
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" || data.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                return false;
            };
            if v.get("error").is_some_and(|e| !e.is_null())
                || v.get("type").and_then(Value::as_str) == Some("error")
            {
                return false;
            }
            collect_reasons(&v, &mut reasons);
        }
    } else {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return false;
        }
        collect_reasons(&v, &mut reasons);
    }
    !reasons.is_empty() && reasons.iter().all(|r| !BAD_FINISH.contains(&r.as_str()))
}

/// Finish reasons that are not a complete, good answer.
const BAD_FINISH: &[&str] = &[
    "content_filter",
    "error",
    "refusal",
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "MALFORMED_FUNCTION_CALL",
    "OTHER",
    "FINISH_REASON_UNSPECIFIED",
    "failed",
    "incomplete",
    "cancelled",
];

fn collect_reasons(v: &Value, out: &mut Vec<String>) {
    let mut push = |r: Option<&Value>| {
        if let Some(s) = r.and_then(Value::as_str) {
            out.push(s.to_string());
        }
    };
    // OpenAI chat and completions; Gemini.
    for list in ["choices", "candidates"] {
        if let Some(a) = v.get(list).and_then(Value::as_array) {
            for c in a {
                push(c.get("finish_reason"));
                push(c.get("finishReason"));
            }
        }
    }
    // Anthropic: the message, or a stream's message_delta.
    push(v.get("stop_reason"));
    if let Some(d) = v.get("delta") {
        push(d.get("stop_reason"));
    }
    // OpenAI Responses: the response's status (or a stream's response.completed).
    let resp = v.get("response").unwrap_or(v);
    if resp.get("object").and_then(Value::as_str) == Some("response") {
        push(resp.get("status"));
    }
}
