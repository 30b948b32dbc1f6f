//! The context-window pre-check: which chain entries the request fits (by the
//! model each would serve), and the provider-format 400 when none does.

use super::*;
use crate::core::telemetry::{CONTEXT_WINDOW_SKIPS_TOTAL, UNKNOWN_MODELS_TOTAL};
use crate::core::tokens::models::{self, Fit};

impl Exchange {
    /// The chain entries (indices into `candidates`; `None`: every one) the
    /// request fits. A route without a chain is checked at the client's model.
    /// `Err` is the local 400 when no entry fits.
    pub(super) fn fitting(
        &mut self,
        h: &mut dyn Host,
        candidates: &[crate::core::config::Target],
    ) -> Result<Option<Vec<usize>>, Flow> {
        let Some(pre) = &self.pre else {
            return Ok(None);
        };
        // Entries the request cannot be translated for are left out first.
        let translatable: Vec<usize> = (0..candidates.len())
            .filter(|&i| !self.untranslatable(i))
            .collect();
        if translatable.is_empty() && !candidates.is_empty() {
            let r = self.untranslatable_reply();
            return Err(self.reply(h, RequestOutcome::InvalidBody, r));
        }
        let skips = translatable.len() < candidates.len();
        if pre.size_based {
            // Estimated by size: too rough to refuse on.
            return Ok(skips.then_some(translatable));
        }
        let (input, output, cap) = (pre.reserved_input, pre.output_allowance, pre.output_cap);
        let asked = pre.model.clone();
        // A route without a chain: one entry, the client's model.
        let entries: Vec<(Option<&str>, &str)> = if candidates.is_empty() {
            vec![(None, "")]
        } else {
            candidates
                .iter()
                .map(|t| (t.model.as_deref(), t.cluster.name.as_str()))
                .collect()
        };
        let mut fits = Vec::with_capacity(entries.len());
        let mut refused: Vec<(usize, Fit, String)> = Vec::new();
        let mut unknown = false;
        for (i, (entry_model, _)) in entries.iter().enumerate() {
            if self.untranslatable(i) && !candidates.is_empty() {
                continue;
            }
            let Some(model) = entry_model.or(asked.as_deref()) else {
                fits.push(i);
                continue;
            };
            match models::fit(&self.config.models, model, input, output, cap) {
                Fit::Fits => fits.push(i),
                Fit::Unknown => {
                    unknown = true;
                    fits.push(i);
                }
                f => refused.push((i, f, model.to_string())),
            }
        }
        if unknown {
            self.count(h, &[("route", &self.head.route)], UNKNOWN_MODELS_TOTAL);
        }
        if refused.is_empty() {
            return Ok(skips.then_some(fits));
        }
        if fits.is_empty() {
            let r = context_reply(pre.api, input, output, cap, &refused);
            self.report.context_window = refused
                .iter()
                .filter_map(|(_, f, _)| match f {
                    Fit::TooLong { window } => Some(*window),
                    _ => None,
                })
                .max();
            return Err(self.reply(h, RequestOutcome::ContextWindow, r));
        }
        for (i, _, _) in &refused {
            if let Some((_, cluster)) = entries.get(*i) {
                self.count(
                    h,
                    &[("route", &self.head.route), ("cluster", cluster)],
                    CONTEXT_WINDOW_SKIPS_TOTAL,
                );
            }
        }
        Ok(Some(fits))
    }
}

/// The 400 for a request no model of its chain can hold, in the route's API's
/// own error format, naming the estimate and the window (or the output cap).
pub fn context_reply(
    api: Option<Api>,
    input: u64,
    output: u64,
    cap: Option<u64>,
    refused: &[(usize, Fit, String)],
) -> LocalReply {
    // The largest window is the one that came closest.
    let too_long = refused
        .iter()
        .filter_map(|(_, f, m)| match f {
            Fit::TooLong { window } => Some((*window, m)),
            _ => None,
        })
        .max_by_key(|(w, _)| *w);
    let msg = match (too_long, refused.first()) {
        (Some((window, model)), _) => format!(
            "This request needs about {} tokens ({input} input, estimated with the route's margin, plus {output} output), more than the context window of {model} ({window} tokens), the largest this route can send it to.",
            input.saturating_add(output)
        ),
        (None, Some((_, Fit::OutputTooLarge { max }, model))) => format!(
            "max_tokens is {}, more than the maximum output of {model} ({max} tokens).",
            cap.unwrap_or(0)
        ),
        _ => "This request does not fit the models of this route.".to_string(),
    };
    let mut r = if api == Some(Api::AnthropicMessages) {
        LocalReply::anthropic_error(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            &msg,
        )
    } else {
        LocalReply::openai_error(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            &msg,
        )
    };
    r.headers
        .push(("x-should-retry".to_string(), "false".to_string()));
    r
}
