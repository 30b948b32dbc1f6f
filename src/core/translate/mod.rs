//! Translation between the OpenAI chat completions and the Anthropic messages
//! dialects, for a chain entry whose cluster speaks another API than the
//! client: the request for its attempt ([`request`]), the answer back
//! ([`answer`] for JSON bodies, errors and headers; [`stream`] for SSE,
//! event by event with bounded memory).
//!
//! Pure functions and small state machines over bytes and `serde_json`
//! values: no host, no clock (the caller passes the time). Nothing here
//! panics on any input; what cannot be translated is an `Err` naming why.
//!
//! Gemini is not a translation target: its model lives in the path, its
//! stream needs `alt=sse` on the query, and its content and tool shapes are a
//! third mapping each way; chains that would need it are refused by the
//! configuration (see `docs/failover.md`).

pub mod answer;
pub mod request;
pub mod stream;
#[cfg(test)]
mod tests;

use crate::core::tokens::request::Api;

/// The two dialects translated between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions (`/v1/chat/completions`).
    OpenAi,
    /// Anthropic messages (`/v1/messages`).
    Anthropic,
}

impl Dialect {
    /// The dialect of a request API, when it is one we translate.
    pub fn of_api(api: Api) -> Option<Dialect> {
        match api {
            Api::OpenAiChat => Some(Dialect::OpenAi),
            Api::AnthropicMessages => Some(Dialect::Anthropic),
            _ => None,
        }
    }

    /// The request path of this dialect's endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::OpenAi => "/v1/chat/completions",
            Dialect::Anthropic => "/v1/messages",
        }
    }

    /// Short name, as in the access log and the metric's `direction` label.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
        }
    }

    pub fn parse(s: &str) -> Option<Dialect> {
        match s {
            "openai" => Some(Dialect::OpenAi),
            "anthropic" => Some(Dialect::Anthropic),
            _ => None,
        }
    }
}

/// A translation: the client's dialect and the provider's (always different).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    pub client: Dialect,
    pub provider: Dialect,
}

impl Direction {
    /// An OpenAI client's request sent to Anthropic.
    pub const OPENAI_TO_ANTHROPIC: Direction = Direction {
        client: Dialect::OpenAi,
        provider: Dialect::Anthropic,
    };
    /// An Anthropic client's request sent to OpenAI.
    pub const ANTHROPIC_TO_OPENAI: Direction = Direction {
        client: Dialect::Anthropic,
        provider: Dialect::OpenAi,
    };

    /// `openai_to_anthropic` or `anthropic_to_openai`: the request's direction
    /// (the answer goes back the other way). A bounded metric label.
    pub fn label(self) -> &'static str {
        match (self.client, self.provider) {
            (Dialect::OpenAi, Dialect::Anthropic) => "openai_to_anthropic",
            (Dialect::Anthropic, Dialect::OpenAi) => "anthropic_to_openai",
            _ => "none",
        }
    }
}

/// Why a request cannot be translated: dropping what it asks for would change
/// the meaning of the answer, so the entry is skipped for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(why.into()))
}
