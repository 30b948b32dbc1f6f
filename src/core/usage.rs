//! Usage reported by providers, from JSON bodies and SSE streams.
//!
//! PLACEHOLDER: the API below is the contract; the implementation is in progress.

/// Tokens a provider says a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (subset of input_tokens).
    pub cached_input_tokens: u64,
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

/// Usage from a complete (non-streamed) JSON response body, if it has any.
pub fn usage_from_json(_dialect: Dialect, _body: &[u8]) -> Option<Usage> {
    None
}

/// Incremental SSE parser that extracts usage with bounded memory.
#[derive(Debug)]
pub struct SseUsageParser {
    _dialect: Dialect,
}

impl SseUsageParser {
    pub fn new(dialect: Dialect) -> Self {
        SseUsageParser { _dialect: dialect }
    }

    /// Feeds one chunk as it passes through; `on_text` gets each piece of generated text.
    pub fn feed(&mut self, _chunk: &[u8], _on_text: &mut dyn FnMut(&str)) {}

    /// End of stream: processes a last event that lacked its terminating blank line.
    pub fn finish(&mut self, _on_text: &mut dyn FnMut(&str)) {}

    /// Best usage known so far.
    pub fn usage(&self) -> Option<Usage> {
        None
    }

    /// True once the provider's final usage report has been seen.
    pub fn complete(&self) -> bool {
        false
    }
}
