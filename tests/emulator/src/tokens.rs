//! Token counting: the emulator's single source of truth for usage numbers.
//!
//! Every count uses the `o200k_base` encoding (gpt-4o family) with
//! `encode_ordinary`, i.e. text that looks like a special token (`<|endoftext|>`)
//! is counted as ordinary text. JSON that gets counted (tools, tool calls, tool
//! blocks) is serialised compactly by serde_json: no whitespace, object keys
//! sorted, non-ASCII characters left unescaped.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Fixed cost of one image part, whatever its size (OpenAI's "low detail" price).
pub const IMAGE_TOKENS: u64 = 85;

/// Words that are each exactly one o200k token, both with and without a leading
/// space; the unit tests check this, which makes output lengths exact by construction.
const WORDS: [&str; 16] = [
    "alpha", "beta", "gamma", "delta", "apple", "river", "stone", "cloud", "green", "happy",
    "music", "paper", "light", "water", "house", "table",
];

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Loads the encoding tables up front so the first request is not slow.
pub fn warm_up() {
    let _ = count("warm up");
}

/// Number of o200k tokens in `text`.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe().encode_ordinary(text).len() as u64
}

/// Compact JSON of a value (see module docs for the exact serialisation).
pub fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Tokens of the compact JSON serialisation of `v`.
pub fn count_json(v: &Value) -> u64 {
    count(&json_text(v))
}

/// The output pieces of a reply of `n` tokens: piece `i` is one token, and the
/// concatenation of all pieces tokenises to exactly `n` tokens.
pub fn output_pieces(n: u64) -> Vec<String> {
    (0..n).map(piece).collect()
}

/// Piece `i` of the output (see [`output_pieces`]).
pub fn piece(i: u64) -> String {
    let w = WORDS[(i % WORDS.len() as u64) as usize];
    if i == 0 {
        w.to_string()
    } else {
        format!(" {w}")
    }
}

/// The whole output text of `n` tokens.
pub fn output_text(n: u64) -> String {
    output_pieces(n).concat()
}

/// OpenAI content: a string, or an array of parts where `text` parts count their
/// text and `image_url`/`input_image`/`image` parts count [`IMAGE_TOKENS`]; other
/// part types count the compact JSON of the part. `null` counts 0.
pub fn openai_content_tokens(content: &Value) -> u64 {
    match content {
        Value::Null => 0,
        Value::String(s) => count(s),
        Value::Array(parts) => parts.iter().map(openai_part_tokens).sum(),
        other => count_json(other),
    }
}

fn openai_part_tokens(part: &Value) -> u64 {
    match part {
        Value::String(s) => count(s),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("text") | Some("input_text") | Some("output_text") => o
                .get("text")
                .and_then(Value::as_str)
                .map(count)
                .unwrap_or(0),
            Some("image_url") | Some("input_image") | Some("image") => IMAGE_TOKENS,
            _ => count_json(part),
        },
        other => count_json(other),
    }
}

/// OpenAI chat prompt tokens (the cookbook formula for gpt-4o-style models,
/// generalised to tools):
///
/// ```text
/// prompt_tokens = 3                                   (reply priming)
///   + Σ over messages ( 3                              (per-message overhead)
///       + Σ over the message's fields:
///           role / name / tool_call_id / other strings: tokens(value)
///           content:                                  openai_content_tokens(content)
///           any other non-null value (tool_calls ...): tokens(compact JSON)
///       + 1 if the message has a `name` )
///   + tokens(compact JSON of `tools`) if `tools` is present and not null
/// ```
pub fn openai_chat_prompt_tokens(messages: &[Value], tools: Option<&Value>) -> u64 {
    let mut total = 3;
    for m in messages {
        total += 3;
        if let Value::Object(o) = m {
            for (k, v) in o {
                total += match (k.as_str(), v) {
                    (_, Value::Null) => 0,
                    ("content", c) => openai_content_tokens(c),
                    (_, Value::String(s)) => count(s),
                    (_, other) => count_json(other),
                };
                if k == "name" {
                    total += 1;
                }
            }
        }
    }
    if let Some(t) = tools {
        if !t.is_null() {
            total += count_json(t);
        }
    }
    total
}

/// Anthropic content: a string, or an array of blocks where `text` blocks count
/// their text, `image` blocks count [`IMAGE_TOKENS`], and any other block
/// (tool_use, tool_result, document, ...) counts the compact JSON of the block.
pub fn anthropic_content_tokens(content: &Value) -> u64 {
    match content {
        Value::Null => 0,
        Value::String(s) => count(s),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b
                    .get("text")
                    .and_then(Value::as_str)
                    .map(count)
                    .unwrap_or(0),
                Some("image") => IMAGE_TOKENS,
                _ => count_json(b),
            })
            .sum(),
        other => count_json(other),
    }
}

/// Anthropic input tokens:
///
/// ```text
/// input_tokens = anthropic_content_tokens(system)       (string or text blocks)
///   + Σ over messages ( 3 + anthropic_content_tokens(content) )
///   + tokens(compact JSON of `tools`) if present and not null
/// ```
pub fn anthropic_input_tokens(
    system: Option<&Value>,
    messages: &[Value],
    tools: Option<&Value>,
) -> u64 {
    let mut total = system.map(anthropic_content_tokens).unwrap_or(0);
    for m in messages {
        total += 3 + m.get("content").map(anthropic_content_tokens).unwrap_or(0);
    }
    if let Some(t) = tools {
        if !t.is_null() {
            total += count_json(t);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_word_is_one_token_with_and_without_space() {
        for w in WORDS {
            assert_eq!(count(w), 1, "{w}");
            assert_eq!(count(&format!(" {w}")), 1, "' {w}'");
        }
    }

    #[test]
    fn output_text_has_exact_token_count() {
        for n in [0u64, 1, 2, 3, 12, 17, 100, 257] {
            let pieces = output_pieces(n);
            assert_eq!(pieces.len() as u64, n);
            assert_eq!(count(&pieces.concat()), n, "n={n}");
        }
    }

    #[test]
    fn known_counts() {
        assert_eq!(count(""), 0);
        assert_eq!(count("Hello, world!"), 4);
        assert_eq!(count("user"), 1);
        assert_eq!(
            count("<|endoftext|>"),
            count("<|") + count("endoftext") + count("|>")
        );
    }

    #[test]
    fn openai_formula() {
        let msgs = vec![
            json!({"role": "system", "content": "You are helpful."}),
            json!({"role": "user", "name": "bob", "content": [{"type": "text", "text": "Hi there"}, {"type": "image_url", "image_url": {"url": "x"}}]}),
        ];
        let expected = 3
            + (3 + count("system") + count("You are helpful."))
            + (3 + count("user") + count("bob") + 1 + count("Hi there") + IMAGE_TOKENS);
        assert_eq!(openai_chat_prompt_tokens(&msgs, None), expected);
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        assert_eq!(
            openai_chat_prompt_tokens(&msgs, Some(&tools)),
            expected + count(r#"[{"function":{"name":"f","parameters":{}},"type":"function"}]"#)
        );
        // The cookbook's gpt-4o example for a one-message "Hello" prompt.
        assert_eq!(
            openai_chat_prompt_tokens(&[json!({"role":"user","content":"Hello"})], None),
            8
        );
    }

    #[test]
    fn anthropic_formula() {
        let system =
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Really."}]);
        let tool_use = json!({"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}});
        let msgs = vec![
            json!({"role": "user", "content": "Hello"}),
            json!({"role": "assistant", "content": [tool_use.clone()]}),
            json!({"role": "user", "content": [{"type": "image", "source": {}}, {"type": "text", "text": "ok"}]}),
        ];
        let expected = count("Be brief.")
            + count("Really.")
            + (3 + count("Hello"))
            + (3 + count_json(&tool_use))
            + (3 + IMAGE_TOKENS + count("ok"));
        assert_eq!(anthropic_input_tokens(Some(&system), &msgs, None), expected);
        assert_eq!(
            anthropic_input_tokens(Some(&json!("Be brief.")), &[], None),
            count("Be brief.")
        );
    }
}
