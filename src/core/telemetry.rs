//! Metric names and access-log state.
//!
//! Labels are embedded in the stat name in the form Istio's `extraStatTags` and
//! the `stats_tags` regexes shipped in envoy/ extract: `route=.=chat;.;` becomes
//! the Prometheus label `route="chat"` and is removed from the name. So
//! `route=.=chat;.;outcome=.=admitted;.;llmcap_requests_total` is exported as
//! `llmcap_requests_total{route="chat",outcome="admitted"}`.

use serde::Serialize;

/// Every label name the filter emits; the tag regexes in envoy/ and istio/ cover these.
pub const LABELS: &[&str] = &[
    "route",
    "outcome",
    "kind",
    "source",
    "scope",
    "limit",
    "version",
    "revision",
    "cluster",
    "class",
    "state",
    "model",
    "result",
    "direction",
];

pub const REQUESTS_TOTAL: &str = "llmcap_requests_total";
/// Tokens by `kind`: estimated_input, reserved, input, output, cached_input.
pub const TOKENS_TOTAL: &str = "llmcap_tokens_total";
/// Settled requests by `source` (provider, streamed_text, reservation, refused).
pub const RECONCILIATIONS_TOTAL: &str = "llmcap_reconciliations_total";
/// Requests refused by a limit, by `scope` (route, tenant) and `limit` (requests, tokens, ...).
pub const RATE_LIMITED_TOTAL: &str = "llmcap_rate_limited_total";
/// Requests that waited in the queue, by `result` (admitted, timed_out, abandoned).
pub const QUEUED_TOTAL: &str = "llmcap_queued_total";
/// How long admitted requests waited in the queue, in milliseconds.
pub const QUEUE_WAIT_MS: &str = "llmcap_queue_wait_milliseconds";
/// A route's `queue.max_wait_seconds`, in milliseconds (set at configuration).
pub const QUEUE_MAX_WAIT_MS: &str = "llmcap_queue_max_wait_milliseconds";
/// Calls to the global rate limit service by `result` (ok, over_limit, timeout, error).
pub const GLOBAL_CALLS_TOTAL: &str = "llmcap_global_calls_total";
/// How long calls to the global rate limit service took, in milliseconds.
pub const GLOBAL_CALL_MS: &str = "llmcap_global_call_milliseconds";
/// Requests through the global tier by `result`: pool (served from leased
/// quota), service (the service admitted), over_limit, fail_open, fail_closed,
/// fallback_limited.
pub const GLOBAL_DECISIONS_TOTAL: &str = "llmcap_global_decisions_total";
/// Requests a shadow-mode limit would have refused.
pub const SHADOW_LIMITED_TOTAL: &str = "llmcap_shadow_limited_total";
/// Limiter updates that failed (host error or CAS contention); the request was let through.
pub const LIMITER_ERRORS_TOTAL: &str = "llmcap_limiter_errors_total";
/// Tenants whose slot was taken over while still recent (the table is too small).
pub const TENANT_EVICTIONS_TOTAL: &str = "llmcap_tenant_evictions_total";
/// |estimate - actual| / actual input tokens, in percent, for provider-reported usage.
pub const ESTIMATE_ERROR_PERCENT: &str = "llmcap_estimate_error_percent";
pub const BUILD_INFO: &str = "llmcap_build_info";
/// Linear memory of the VM that reported last (every worker's VM is alike).
pub const WASM_MEMORY_BYTES: &str = "llmcap_wasm_memory_bytes";
/// Upstream attempts by `cluster` and `class` (ok, client_error,
/// rate_limited, server_error, reset, timeout): one per router attempt.
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "llmcap_upstream_attempts_total";
/// Circuit state per `cluster`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "llmcap_circuit_state";
/// Circuit transitions per `cluster`, by the `state` entered.
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "llmcap_circuit_transitions_total";
/// Cool-downs started or extended by a provider's wait (429, 503 + Retry-After).
pub const COOLDOWNS_TOTAL: &str = "llmcap_cooldowns_total";
/// Chain entries skipped for a request because it cannot fit their model's
/// context window (or maximum output), by `route` and `cluster`.
pub const CONTEXT_WINDOW_SKIPS_TOTAL: &str = "llmcap_context_window_skips_total";
/// Requests whose model the catalogue does not know (no window check), by `route`.
pub const UNKNOWN_MODELS_TOTAL: &str = "llmcap_unknown_models_total";
/// Requests whose first attempt went to a cluster other than the route's primary.
pub const FAILOVERS_TOTAL: &str = "llmcap_failovers_total";
/// Upstream attempts whose request and answer were translated to and from
/// another provider's API, by `route`, `cluster` and `direction`
/// (`openai_to_anthropic`, `anthropic_to_openai`: the request's way).
pub const TRANSLATED_ATTEMPTS_TOTAL: &str = "llmcap_translated_attempts_total";
/// Chain entries skipped for a request that cannot be translated for their
/// provider without changing its meaning, by `route` and `cluster`.
pub const TRANSLATION_SKIPS_TOTAL: &str = "llmcap_translation_skips_total";
/// First attempts of a `weighted` or `lowest_latency` route that went where
/// its strategy chose, by `route` and `cluster` (the route's strategy is its
/// config's, so it needs no label of its own).
pub const STRATEGY_CHOICES_TOTAL: &str = "llmcap_strategy_choices_total";
/// Requests sent without retries because their route's retry budget was
/// spent, and whose answer was a failure the router could have retried
/// (5xx, 429, no answer), by `route`.
pub const RETRIES_DENIED_TOTAL: &str = "llmcap_retries_denied_total";
/// Retries counted against their route's retry budget, by `route`.
pub const BUDGETED_RETRIES_TOTAL: &str = "llmcap_budgeted_retries_total";
/// Hedges, by `route` and `result`: `sent` (a second attempt while the first
/// waited), `won` (the hedge's answer was the client's), `cancelled` (the
/// first attempt answered first, the hedge was reset).
pub const HEDGES_TOTAL: &str = "llmcap_hedges_total";
/// The provider's last reported remaining quota per `cluster` and `limit`
/// (requests, tokens).
pub const PROVIDER_REMAINING: &str = "llmcap_provider_remaining";
/// Calls refused by a budget, by `scope` (session, tenant) and `limit` (the cap).
pub const BUDGET_EXCEEDED_TOTAL: &str = "llmcap_budget_exceeded_total";
/// Spend of settled calls with a known price, in micro-dollars.
pub const SPEND_MICRODOLLARS_TOTAL: &str = "llmcap_spend_microdollars_total";
/// Time to first token per `route`, `cluster`, `model`, in milliseconds: from
/// when the answering attempt was sent to the first event carrying output
/// (the whole answer when not streamed). Complete 2xx answers only.
pub const TIME_TO_FIRST_TOKEN_MS: &str = "llmcap_time_to_first_token_milliseconds";
/// Time per output token after the first, in microseconds (streams).
pub const TIME_PER_OUTPUT_TOKEN_US: &str = "llmcap_time_per_output_token_microseconds";
/// From the answering attempt's send to the answer's end, in milliseconds.
pub const REQUEST_DURATION_MS: &str = "llmcap_request_duration_milliseconds";
/// Requests sent upstream and not ended yet, per `route` and `cluster` (the
/// first attempt's): sum by either label.
pub const IN_FLIGHT: &str = "llmcap_in_flight";
/// Requests on routes with an `slo`, by `result`: met, late, failed.
pub const GOODPUT_TOTAL: &str = "llmcap_goodput_total";
/// Budget slots (sessions, tenants) taken over while still in use: raise `slots`.
pub const BUDGET_EVICTIONS_TOTAL: &str = "llmcap_budget_evictions_total";

/// Longest label value kept; longer ones are cut so names stay bounded.
const MAX_LABEL_LEN: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// A route with a policy; the request went upstream.
    Admitted,
    /// A route without a policy, passed through (`unmatched_routes: pass`).
    Unmatched,
    /// Refused locally: body over the route's `max_request_bytes`.
    TooLarge,
    /// Refused locally: no policy for the route (`unmatched_routes: reject`).
    NoPolicy,
    /// Refused locally: the body is not valid for its API (`invalid_body: reject`).
    InvalidBody,
    /// Refused locally: a rate or concurrency limit.
    RateLimited,
    /// Refused locally: every cluster of the route is open, cooling down or out of quota.
    NoUpstream,
    /// Refused locally: a session or tenant budget is used up.
    BudgetExceeded,
    /// Refused locally: the route requires a session header and it is missing.
    NoSession,
    /// Refused locally: the global rate limit service cannot be asked and the
    /// route fails closed.
    GlobalUnavailable,
    /// Refused locally: the request fits no model of its chain's context windows.
    ContextWindow,
    /// Refused locally: the conversation is longer than the route's `max_messages`.
    TooManyTurns,
    /// Refused locally: the request, priced before it leaves, is over `max_request_cost_usd`.
    CostExceeded,
    /// Answered from the response cache (or an idempotent replay): nothing sent.
    Cached,
    /// Refused locally: an invalid, reused or busy `Idempotency-Key` (400, 422, 409).
    IdempotencyRefused,
}

impl RequestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Admitted => "admitted",
            RequestOutcome::Unmatched => "unmatched",
            RequestOutcome::TooLarge => "rejected_too_large",
            RequestOutcome::NoPolicy => "rejected_no_policy",
            RequestOutcome::InvalidBody => "rejected_invalid_body",
            RequestOutcome::RateLimited => "rejected_rate_limited",
            RequestOutcome::NoUpstream => "rejected_no_upstream",
            RequestOutcome::BudgetExceeded => "rejected_budget",
            RequestOutcome::NoSession => "rejected_no_session",
            RequestOutcome::GlobalUnavailable => "rejected_global_unavailable",
            RequestOutcome::ContextWindow => "rejected_context_window",
            RequestOutcome::TooManyTurns => "rejected_too_many_turns",
            RequestOutcome::CostExceeded => "rejected_request_cost",
            RequestOutcome::Cached => "cached",
            RequestOutcome::IdempotencyRefused => "rejected_idempotency",
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
/// (`%FILTER_STATE(wasm.llm_capacity:PLAIN)%`): one compact JSON object. Fields
/// the OpenTelemetry GenAI conventions name use their names (`gen_ai.*`); the
/// rest are ours. Never prompt or completion text, never credentials.
#[derive(Debug, Default, Serialize)]
pub struct AccessLogState<'a> {
    pub route: &'a str,
    pub outcome: &'static str,
    #[serde(
        rename = "gen_ai.operation.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub operation: Option<&'static str>,
    #[serde(
        rename = "gen_ai.provider.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider: Option<&'static str>,
    #[serde(
        rename = "gen_ai.request.model",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<&'a str>,
    #[serde(
        rename = "gen_ai.response.model",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_model: Option<&'a str>,
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_tokens: Option<u64>,
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_estimate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// How the charge was settled (provider, streamed_text, reservation, refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    /// The limit that refused the request (or would have, in shadow mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_limited: Option<&'static str>,
    /// What the response cache did: `hit`, `miss`, `bypass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// What the idempotency key did: `first`, `replay`, `reused`, `in_use`, `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<&'static str>,
    /// The cluster the first attempt went to, and whether it was not the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// The largest context window the request was refused against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// The cluster whose answer the client got (`x-llm-capacity-served-by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<&'a str>,
    /// The answering attempt was translated: `openai_to_anthropic` or
    /// `anthropic_to_openai` (the request's way; the answer came back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated: Option<&'a str>,
    /// A hedge was sent for the request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedged: bool,
    /// Of a hedged request, whose answer the client got: `first` or `hedge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<&'static str>,
    /// Time spent waiting in the queue, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// How the global tier decided (pool, service, over_limit, fail_open, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<&'static str>,
    /// Time to first token, seconds (OpenTelemetry GenAI).
    #[serde(
        rename = "gen_ai.server.time_to_first_token",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_to_first_token: Option<f64>,
    /// Time per output token after the first, seconds (OpenTelemetry GenAI).
    #[serde(
        rename = "gen_ai.server.time_per_output_token",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_per_output_token: Option<f64>,
    /// From the answering attempt's send to the answer's end, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_second: Option<u64>,
    /// The route's SLO verdict: met, late, failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<&'static str>,
}

/// The GenAI operation name of an API (OpenTelemetry `gen_ai.operation.name`).
pub fn operation_name(api: crate::core::tokens::request::Api) -> &'static str {
    use crate::core::tokens::request::Api;
    match api {
        Api::OpenAiChat | Api::AnthropicMessages => "chat",
        Api::OpenAiResponses => "chat",
        Api::OpenAiCompletions => "text_completion",
        Api::OpenAiEmbeddings => "embeddings",
        Api::Gemini => "generate_content",
    }
}

/// The GenAI provider name of a cluster's provider (`gen_ai.provider.name`).
pub fn provider_name(p: crate::core::config::Provider) -> Option<&'static str> {
    use crate::core::config::Provider;
    match p {
        Provider::OpenAi => Some("openai"),
        Provider::Anthropic => Some("anthropic"),
        Provider::Gemini => Some("gcp.gemini"),
        Provider::Generic => None,
    }
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
    fn access_log_state_json_full() {
        let s = AccessLogState {
            route: "r",
            outcome: "admitted",
            api: Some("openai_chat"),
            model: Some("gpt-4o"),
            input_estimate: Some(10),
            reserved: Some(60),
            limit: None,
            scope: None,
            shadow_limited: None,
            usage_source: Some("provider"),
            input_tokens: Some(11),
            output_tokens: Some(5),
            cached_input_tokens: Some(0),
            cluster: None,
            failover: false,
            probe: false,
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(s.to_json()).unwrap(),
            r#"{"route":"r","outcome":"admitted","gen_ai.request.model":"gpt-4o","gen_ai.usage.input_tokens":11,"gen_ai.usage.output_tokens":5,"api":"openai_chat","input_estimate":10,"reserved":60,"usage_source":"provider","cached_input_tokens":0}"#
        );
    }

    #[test]
    fn access_log_state_json() {
        let s = AccessLogState {
            route: "chat",
            outcome: RequestOutcome::TooLarge.as_str(),
            ..Default::default()
        };
        assert_eq!(
            s.to_json(),
            br#"{"route":"chat","outcome":"rejected_too_large"}"#.to_vec()
        );
    }
}
