//! Local replies: OpenAI-style JSON errors, which every OpenAI-compatible SDK
//! parses and surfaces (`error.type`, `error.code`); Anthropic-style ones for
//! the context-window answer on Anthropic routes; and the proxy-wasm header
//! map encoding the host expects.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Goes to Envoy's `%RESPONSE_CODE_DETAILS%`; no spaces allowed there.
    pub details: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl LocalReply {
    /// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_error(status: u32, kind: &str, code: &'static str, message: &str) -> Self {
        let body = serde_json::to_vec(&ErrorBody {
            error: ErrorFields {
                message,
                kind,
                param: None,
                code,
            },
        })
        .unwrap_or_default();
        LocalReply {
            status,
            details: code,
            headers: vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-llm-capacity".to_string(), code.to_string()),
            ],
            body,
        }
    }
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicFields<'a>,
}

#[derive(Serialize)]
struct AnthropicFields<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl LocalReply {
    /// An Anthropic-style error: `{"type": "error", "error": {"type", "message"}}`,
    /// which the Anthropic SDK surfaces as its typed error for the status.
    /// `code` goes to `x-llm-capacity` and the response code details.
    pub fn anthropic_error(status: u32, kind: &str, code: &'static str, message: &str) -> Self {
        let body = serde_json::to_vec(&AnthropicBody {
            kind: "error",
            error: AnthropicFields { kind, message },
        })
        .unwrap_or_default();
        LocalReply {
            status,
            details: code,
            headers: vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-llm-capacity".to_string(), code.to_string()),
            ],
            body,
        }
    }
}

/// Serializes header pairs the way proxy-wasm's ABI wants them: a u32 count, then
/// (key length, value length) pairs, then each key and value NUL-terminated.
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn openai_error_shape() {
        let r = LocalReply::openai_error(
            413,
            "invalid_request_error",
            "request_too_large",
            "too \"big\"",
        );
        assert_eq!(r.status, 413);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"error":{"message":"too \"big\"","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#
        );
        assert_eq!(
            r.headers[0],
            ("content-type".into(), "application/json".into())
        );
    }

    #[test]
    fn anthropic_error_shape() {
        let r = LocalReply::anthropic_error(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "too long",
        );
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"too long"}}"#
        );
        assert_eq!(r.details, "context_length_exceeded");
    }

    #[test]
    fn pairs_encoding_is_byte_exact() {
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            2, 0, 0, 0,             // two pairs
            1, 0, 0, 0, 2, 0, 0, 0, // "a" -> "bc"
            0, 0, 0, 0, 1, 0, 0, 0, // "" -> "d"
            b'a', 0, b'b', b'c', 0,
            0, b'd', 0,
        ];
        assert_eq!(serialize_pairs(&[("a", "bc"), ("", "d")]), expected);
        assert_eq!(serialize_pairs(&[]), vec![0, 0, 0, 0]);
    }
}
