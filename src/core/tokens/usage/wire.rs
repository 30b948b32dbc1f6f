//! Typed views of provider JSON: only the fields that carry usage or generated
//! text. Everything else is skipped by serde without building values, and text
//! is borrowed from the input unless it contains escapes.

use super::MAX_TOKEN_COUNT;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A token count read leniently: any JSON value is accepted so that one odd field
/// never loses the rest of the report. Non-negative integers and finite
/// non-negative floats (truncated) count, clamped to [`MAX_TOKEN_COUNT`];
/// negatives, strings, booleans, null, arrays and objects read as absent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count(pub(super) Option<u64>);

impl Count {
    pub(super) fn or0(self) -> u64 {
        self.0.unwrap_or(0)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token count")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
        Ok(Count(Some(v.min(MAX_TOKEN_COUNT))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
        Ok(Count(u64::try_from(v).ok().map(|v| v.min(MAX_TOKEN_COUNT))))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Count, E> {
        Ok(Count(Some(
            u64::try_from(v).unwrap_or(u64::MAX).min(MAX_TOKEN_COUNT),
        )))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Count, E> {
        Ok(Count((v >= 0).then(|| {
            u64::try_from(v).unwrap_or(u64::MAX).min(MAX_TOKEN_COUNT)
        })))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
        // Protobuf-derived JSON writes integers as doubles; `as` saturates.
        Ok(Count(
            (v.is_finite() && v >= 0.0).then(|| (v as u64).min(MAX_TOKEN_COUNT)),
        ))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_unit<E>(self) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_none<E>(self) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
        Count::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
}

/// A string, borrowed from the input when it has no escapes. (A bare
/// `Option<Cow<str>>` field always allocates; the newtype makes serde borrow.)
#[derive(Debug, Deserialize)]
pub(super) struct Text<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

/// The `usage` object of OpenAI (chat, completions, embeddings, Responses) and
/// Anthropic: one struct with every field name, the dialect picks.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WireUsage {
    // OpenAI chat, completions, embeddings.
    pub(super) prompt_tokens: Count,
    pub(super) completion_tokens: Count,
    pub(super) total_tokens: Count,
    pub(super) prompt_tokens_details: Option<CachedDetails>,
    // OpenAI Responses and Anthropic.
    pub(super) input_tokens: Count,
    pub(super) output_tokens: Count,
    pub(super) input_tokens_details: Option<CachedDetails>,
    // Anthropic.
    pub(super) cache_creation_input_tokens: Count,
    pub(super) cache_read_input_tokens: Count,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CachedDetails {
    pub(super) cached_tokens: Count,
}

/// Gemini's `usageMetadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct GeminiUsage {
    pub(super) prompt_token_count: Count,
    pub(super) candidates_token_count: Count,
    pub(super) cached_content_token_count: Count,
    pub(super) thoughts_token_count: Count,
    pub(super) tool_use_prompt_token_count: Count,
    pub(super) total_token_count: Count,
}

/// A whole OpenAI or Anthropic response body.
#[derive(Debug, Deserialize)]
pub(super) struct UsageBody {
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    /// The model that answered (Anthropic `message_start`).
    #[serde(default)]
    pub(super) model: Option<String>,
    /// Gemini's name for it, should a body in another dialect carry it.
    #[serde(default, rename = "modelVersion")]
    pub(super) model_version: Option<String>,
}

/// A whole Gemini response body, or one element of a streamed JSON array.
#[derive(Debug, Deserialize)]
pub(super) struct GeminiBody {
    #[serde(default, rename = "usageMetadata")]
    pub(super) usage_metadata: Option<GeminiUsage>,
    /// The model that answered.
    #[serde(default, rename = "modelVersion")]
    pub(super) model_version: Option<String>,
    #[serde(default)]
    pub(super) model: Option<String>,
}

/// One OpenAI chat or legacy completions stream chunk.
#[derive(Debug, Deserialize)]
pub(super) struct ChatChunk<'a> {
    #[serde(default, borrow)]
    pub(super) model: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) choices: Option<Vec<ChatChoice<'a>>>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatChoice<'a> {
    #[serde(default, borrow)]
    pub(super) delta: Option<ChatDelta<'a>>,
    /// Legacy completions put the text here.
    #[serde(default, borrow)]
    pub(super) text: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatDelta<'a> {
    #[serde(default, borrow)]
    pub(super) content: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) refusal: Option<Text<'a>>,
    /// Not OpenAI's: DeepSeek, vLLM and other compatibles stream reasoning here.
    #[serde(default, borrow)]
    pub(super) reasoning_content: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    /// The deprecated single function call.
    #[serde(default, borrow)]
    pub(super) function_call: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ToolCallDelta<'a> {
    #[serde(default, borrow)]
    pub(super) function: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    pub(super) arguments: Option<Text<'a>>,
}

/// One OpenAI Responses stream event (text deltas and the final response).
#[derive(Debug, Deserialize)]
pub(super) struct ResponsesEvent<'a> {
    #[serde(default, borrow, rename = "type")]
    pub(super) kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) delta: Option<Text<'a>>,
    #[serde(default)]
    pub(super) response: Option<UsageBody>,
}

/// One Anthropic stream event; the fields used by message_start,
/// content_block_delta and message_delta.
#[derive(Debug, Deserialize)]
pub(super) struct AnthropicEvent<'a> {
    #[serde(default, borrow, rename = "type")]
    pub(super) kind: Option<Text<'a>>,
    #[serde(default)]
    pub(super) message: Option<UsageBody>,
    #[serde(default, borrow)]
    pub(super) delta: Option<AnthropicDelta<'a>>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AnthropicDelta<'a> {
    #[serde(default, borrow)]
    pub(super) text: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) partial_json: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub(super) thinking: Option<Text<'a>>,
}

/// One Gemini `alt=sse` chunk (a GenerateContentResponse).
#[derive(Debug, Deserialize)]
pub(super) struct GeminiChunk<'a> {
    #[serde(default, borrow)]
    pub(super) candidates: Option<Vec<GeminiCandidate<'a>>>,
    #[serde(default, rename = "usageMetadata")]
    pub(super) usage_metadata: Option<GeminiUsage>,
    #[serde(default)]
    pub(super) error: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GeminiCandidate<'a> {
    #[serde(default, borrow)]
    pub(super) content: Option<GeminiContent<'a>>,
    #[serde(default, rename = "finishReason")]
    pub(super) finish_reason: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GeminiContent<'a> {
    #[serde(default, borrow)]
    pub(super) parts: Option<Vec<GeminiPart<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GeminiPart<'a> {
    /// Text, including thought parts (`"thought": true`), which are billed output.
    #[serde(default, borrow)]
    pub(super) text: Option<Text<'a>>,
}
