//! The model catalogue: each model's context window and maximum output, so a
//! request that cannot fit is never sent (and a chain can name a
//! larger-context model as its fallback).
//!
//! Built-in figures are the providers' public model documentation as of
//! [`CATALOGUE_DATE`], by name prefix (the longest matching prefix wins). The
//! config's `models:` entries come first (exact names, then `prefix*`, longest
//! first); a model neither knows is not checked (and is counted).

use std::collections::BTreeMap;

/// When the built-in figures were taken from the providers' model pages.
pub const CATALOGUE_DATE: &str = "2025-08";

/// What one model accepts, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Input plus output tokens the model can hold.
    pub context_window: u64,
    /// Most output tokens one answer may have.
    pub max_output_tokens: u64,
}

/// (prefix, context window, maximum output). Order does not matter: the
/// longest matching prefix wins.
const BUILT_IN: &[(&str, u64, u64)] = &[
    // OpenAI (platform.openai.com/docs/models).
    ("gpt-5", 400_000, 128_000),
    ("gpt-4.1", 1_047_576, 32_768),
    ("gpt-4.5", 128_000, 16_384),
    ("gpt-4o", 128_000, 16_384),
    ("chatgpt-4o", 128_000, 16_384),
    ("gpt-4-turbo", 128_000, 4_096),
    ("gpt-4-0125", 128_000, 4_096),
    ("gpt-4-1106", 128_000, 4_096),
    ("gpt-4-32k", 32_768, 4_096),
    ("gpt-4", 8_192, 8_192),
    ("gpt-3.5-turbo", 16_385, 4_096),
    ("o1", 200_000, 100_000),
    ("o1-mini", 128_000, 65_536),
    ("o1-preview", 128_000, 32_768),
    ("o3", 200_000, 100_000),
    ("o4-mini", 200_000, 100_000),
    // Anthropic (docs.anthropic.com, models overview).
    ("claude-", 200_000, 4_096),
    ("claude-3-5-", 200_000, 8_192),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-sonnet-4", 200_000, 64_000),
    ("claude-opus-4", 200_000, 32_000),
    ("claude-haiku-4", 200_000, 64_000),
    // Gemini (ai.google.dev/gemini-api/docs/models).
    ("gemini-1.5-pro", 2_097_152, 8_192),
    ("gemini-1.5-flash", 1_048_576, 8_192),
    ("gemini-2.0-flash", 1_048_576, 8_192),
    ("gemini-2.5-pro", 1_048_576, 65_536),
    ("gemini-2.5-flash", 1_048_576, 65_536),
];

/// The built-in figures and the config's own entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalogue {
    exact: BTreeMap<String, ModelLimits>,
    /// Longest first.
    prefixes: Vec<(String, ModelLimits)>,
}

impl Catalogue {
    /// The config's entries: a name, or a prefix ending in `*`. Later entries
    /// replace earlier ones with the same name or pattern.
    pub fn new(entries: Vec<(String, ModelLimits)>) -> Catalogue {
        let mut c = Catalogue::default();
        for (name, limits) in entries {
            if let Some(prefix) = name.strip_suffix('*') {
                c.prefixes.retain(|(q, _)| q != prefix);
                c.prefixes.push((prefix.to_string(), limits));
            } else {
                c.exact.insert(name, limits);
            }
        }
        c.prefixes.sort_by_key(|(q, _)| std::cmp::Reverse(q.len()));
        c
    }

    /// What `model` accepts: the config's entry, else the built-in one; `None`
    /// for a model neither knows. A provider prefix (`openai/gpt-4o`) and
    /// Gemini's `models/` are looked through.
    pub fn lookup(&self, model: &str) -> Option<ModelLimits> {
        if let Some(l) = self.exact.get(model) {
            return Some(*l);
        }
        if let Some((_, l)) = self
            .prefixes
            .iter()
            .find(|(p, _)| model.starts_with(p.as_str()))
        {
            return Some(*l);
        }
        let name = model.rsplit('/').next().unwrap_or(model);
        BUILT_IN
            .iter()
            .filter(|(p, _, _)| name.starts_with(p))
            .max_by_key(|(p, _, _)| p.len())
            .map(|&(_, context_window, max_output_tokens)| ModelLimits {
                context_window,
                max_output_tokens,
            })
    }
}

/// Whether a request fits a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// The catalogue does not know the model: not checked.
    Unknown,
    /// Input (with margin) plus output allowance is over the window.
    TooLong {
        window: u64,
    },
    /// The request's own output cap is over the model's maximum output.
    OutputTooLarge {
        max: u64,
    },
}

/// Fits `input` tokens (the calibrated estimate with the route's margin) plus
/// the `output` allowance into `model`'s window; `requested_output` is the
/// request's own output cap per answer, when it has one. Without one, the
/// allowance counts only up to the model's maximum output: no answer can be
/// longer, so a large `default_max_tokens` alone refuses nothing.
pub fn fit(
    catalogue: &Catalogue,
    model: &str,
    input: u64,
    output: u64,
    requested_output: Option<u64>,
) -> Fit {
    let Some(l) = catalogue.lookup(model) else {
        return Fit::Unknown;
    };
    if requested_output.is_some_and(|r| r > l.max_output_tokens) {
        return Fit::OutputTooLarge {
            max: l.max_output_tokens,
        };
    }
    // Without the client's own cap, the answer can be no longer than the
    // model's maximum output, whatever the route reserves for it.
    let output = match requested_output {
        Some(_) => output,
        None => output.min(l.max_output_tokens),
    };
    if input.saturating_add(output) > l.context_window {
        return Fit::TooLong {
            window: l.context_window,
        };
    }
    Fit::Fits
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn limits(context_window: u64, max_output_tokens: u64) -> ModelLimits {
        ModelLimits {
            context_window,
            max_output_tokens,
        }
    }

    #[test]
    fn the_longest_built_in_prefix_wins() {
        let c = Catalogue::default();
        assert_eq!(c.lookup("gpt-4o-mini"), Some(limits(128_000, 16_384)));
        assert_eq!(
            c.lookup("gpt-4-turbo-2024-04-09"),
            Some(limits(128_000, 4_096))
        );
        assert_eq!(c.lookup("gpt-4-0613"), Some(limits(8_192, 8_192)));
        assert_eq!(c.lookup("o1-mini"), Some(limits(128_000, 65_536)));
        assert_eq!(c.lookup("o1-2024-12-17"), Some(limits(200_000, 100_000)));
        assert_eq!(
            c.lookup("claude-3-haiku-20240307"),
            Some(limits(200_000, 4_096))
        );
        assert_eq!(
            c.lookup("claude-3-5-sonnet-latest"),
            Some(limits(200_000, 8_192))
        );
        assert_eq!(
            c.lookup("claude-sonnet-4-20250514"),
            Some(limits(200_000, 64_000))
        );
        assert_eq!(
            c.lookup("models/gemini-1.5-pro-002"),
            Some(limits(2_097_152, 8_192))
        );
        assert_eq!(
            c.lookup("openai/gpt-4.1-nano"),
            Some(limits(1_047_576, 32_768))
        );
    }

    #[test]
    fn config_entries_override_and_extend() {
        let c = Catalogue::new(vec![
            ("gpt-4o".to_string(), limits(1_000, 100)),
            ("tiny*".to_string(), limits(2_000, 200)),
            ("tiny-large*".to_string(), limits(20_000, 200)),
            ("gpt-4*".to_string(), limits(9, 9)),
        ]);
        assert_eq!(c.lookup("gpt-4o"), Some(limits(1_000, 100)), "exact first");
        assert_eq!(
            c.lookup("gpt-4o-mini"),
            Some(limits(9, 9)),
            "config before built-in"
        );
        assert_eq!(c.lookup("tiny-1"), Some(limits(2_000, 200)));
        assert_eq!(
            c.lookup("tiny-large-1"),
            Some(limits(20_000, 200)),
            "longest prefix"
        );
        assert_eq!(c.lookup("claude-opus-4-1"), Some(limits(200_000, 32_000)));
    }

    #[test]
    fn an_unknown_model_is_not_checked() {
        let c = Catalogue::default();
        assert_eq!(c.lookup("my-llama"), None);
        assert_eq!(fit(&c, "my-llama", u64::MAX, u64::MAX, None), Fit::Unknown);
    }

    #[test]
    fn the_fit_counts_input_with_margin_plus_the_output_allowance() {
        let c = Catalogue::new(vec![("m".to_string(), limits(1_000, 300))]);
        assert_eq!(
            fit(&c, "m", 700, 300, None),
            Fit::Fits,
            "exactly the window"
        );
        assert_eq!(fit(&c, "m", 701, 300, None), Fit::TooLong { window: 1_000 });
        assert_eq!(
            fit(&c, "m", 10, 10, Some(301)),
            Fit::OutputTooLarge { max: 300 }
        );
        assert_eq!(fit(&c, "m", 10, 300, Some(300)), Fit::Fits);
        // With its own cap, the cap counts whole.
        assert_eq!(
            fit(&c, "m", 701, 300, Some(300)),
            Fit::TooLong { window: 1_000 }
        );
    }

    #[test]
    fn without_a_cap_the_output_counts_up_to_the_models_maximum_only() {
        // A route may reserve more than any answer can be (default_max_tokens
        // is a budgeting knob): that alone never refuses a request.
        let c = Catalogue::new(vec![("m".to_string(), limits(1_000, 300))]);
        assert_eq!(fit(&c, "m", 700, 1_000_000, None), Fit::Fits);
        assert_eq!(
            fit(&c, "m", 701, 1_000_000, None),
            Fit::TooLong { window: 1_000 }
        );
    }
}
