//! Metric names and access-log state.
//!
//! Labels are embedded in the stat name in the form Istio's `extraStatTags` and
//! the `stats_tags` regexes shipped in envoy/ extract: `route=.=chat;.;` becomes
//! the Prometheus label `route="chat"` and is removed from the name. So
//! `route=.=chat;.;outcome=.=admitted;.;llmcap_requests_total` is exported as
//! `llmcap_requests_total{route="chat",outcome="admitted"}`.

use serde::Serialize;

/// Every label name the filter emits; the tag regexes in envoy/ and istio/ cover these.
pub const LABELS: &[&str] = &["route", "outcome", "version", "revision"];

pub const REQUESTS_TOTAL: &str = "llmcap_requests_total";
pub const BUILD_INFO: &str = "llmcap_build_info";

/// Longest label value kept; longer ones are cut so names stay bounded.
const MAX_LABEL_LEN: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A route with a policy; the request went upstream.
    Admitted,
    /// A route without a policy, passed through (`unmatched_routes: pass`).
    Unmatched,
    /// Refused locally: body over the route's `max_request_bytes`.
    TooLarge,
    /// Refused locally: no policy for the route (`unmatched_routes: reject`).
    NoPolicy,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Unmatched => "unmatched",
            Outcome::TooLarge => "rejected_too_large",
            Outcome::NoPolicy => "rejected_no_policy",
        }
    }
}

/// Makes a label value safe inside the tag syntax: the separators `;` and `=` and
/// anything outside printable ASCII become `_`; empty becomes `none`.
pub fn label_value(v: &str) -> String {
    if v.is_empty() {
        return "none".to_string();
    }
    v.chars()
        .take(MAX_LABEL_LEN)
        .map(|c| {
            if c.is_ascii_graphic() && c != ';' && c != '=' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds a stat name with embedded labels, in the order given.
pub fn tagged_name(labels: &[(&str, &str)], name: &str) -> String {
    let mut s = String::with_capacity(name.len() + labels.len() * 24);
    for (k, v) in labels {
        s.push_str(k);
        s.push_str("=.=");
        s.push_str(&label_value(v));
        s.push_str(";.;");
    }
    s.push_str(name);
    s
}

/// The Envoy `stats_tags` regex for one label, identical to what Istio generates
/// for an `extraStatTags` entry.
pub fn tag_regex(label: &str) -> String {
    format!("({label}=\\.=(.*?);\\.;)")
}

/// What the filter leaves in filter state `wasm.llm_capacity` for access logs
/// (`%FILTER_STATE(wasm.llm_capacity:PLAIN)%`): one compact JSON object.
#[derive(Debug, Serialize)]
pub struct AccessLogState<'a> {
    pub route: &'a str,
    pub outcome: &'static str,
}

impl AccessLogState<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn tagged_names() {
        assert_eq!(
            tagged_name(
                &[("route", "chat"), ("outcome", "admitted")],
                REQUESTS_TOTAL
            ),
            "route=.=chat;.;outcome=.=admitted;.;llmcap_requests_total"
        );
        assert_eq!(
            tagged_name(&[("route", "outbound|443||api.openai.com")], "x"),
            "route=.=outbound|443||api.openai.com;.;x"
        );
    }

    #[test]
    fn label_values_are_sanitized_and_bounded() {
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value("a;b=c d\u{e9}"), "a_b_c_d_");
        assert_eq!(label_value(&"r".repeat(500)).len(), 96);
    }

    #[test]
    fn tag_regex_matches_istio_form() {
        assert_eq!(tag_regex("route"), r"(route=\.=(.*?);\.;)");
    }

    #[test]
    fn access_log_state_json() {
        let s = AccessLogState {
            route: "chat",
            outcome: Outcome::TooLarge.as_str(),
        };
        assert_eq!(
            s.to_json(),
            br#"{"route":"chat","outcome":"rejected_too_large"}"#.to_vec()
        );
    }
}
