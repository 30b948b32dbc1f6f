//! Pre-flight token estimation: one pass over the text counting characters by
//! class, then per-encoding coefficients. No vocabulary in the module.
//!
//! PLACEHOLDER IMPLEMENTATION: the API below is the contract; internals and
//! coefficients are being replaced by the fitted estimator.

/// The tokenizer family a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    O200k,
    Cl100k,
    Claude,
    Gemini,
    Llama,
}

impl Encoding {
    pub const ALL: [Encoding; 5] =
        [Encoding::O200k, Encoding::Cl100k, Encoding::Claude, Encoding::Gemini, Encoding::Llama];

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k",
            Encoding::Cl100k => "cl100k",
            Encoding::Claude => "claude",
            Encoding::Gemini => "gemini",
            Encoding::Llama => "llama",
        }
    }

    pub fn parse(s: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Character-class counts of all text seen so far. Cheap to copy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextStats {
    pub bytes: u64,
}

impl TextStats {
    /// Adds one piece of text (a message content, a tool description, ...).
    pub fn add(&mut self, text: &str) {
        self.bytes += text.len() as u64;
    }

    /// Adds another stats value (e.g. text counted elsewhere).
    pub fn merge(&mut self, other: &TextStats) {
        self.bytes += other.bytes;
    }
}

/// Structural parts of a request that cost tokens beyond their text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Structure {
    /// Chat messages (each costs a fixed overhead, e.g. role and separators).
    pub messages: u32,
    /// Tool / function definitions.
    pub tools: u32,
    /// Images and other non-text parts, each charged a fixed cost.
    pub images: u32,
}

/// Estimated input tokens for text with this structure, for this encoding.
pub fn estimate_tokens(text: &TextStats, structure: &Structure, enc: Encoding) -> u64 {
    let _ = enc;
    text.bytes / 4 + u64::from(structure.messages) * 4 + u64::from(structure.tools) * 8
        + u64::from(structure.images) * IMAGE_TOKENS
        + 3
}

/// Fixed cost of one image or other non-text part (OpenAI's low-detail image cost).
pub const IMAGE_TOKENS: u64 = 85;
