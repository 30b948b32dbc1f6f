//! The config's tests: every error message, byte for byte.

use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn msg(v: Value) -> String {
    match compile(&v) {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_config_is_all_defaults() {
    let c = parse_json(b"").unwrap();
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.unmatched, Unmatched::Pass);
    assert!(c.routes.is_empty());
    assert_eq!(c.defaults, Policy::default());
    assert_eq!(
        c.telemetry,
        Telemetry {
            metrics: true,
            filter_state: true
        }
    );
}

#[test]
fn full_config_compiles_with_inheritance() {
    let c = compile(&json!({
        "log_level": "debug",
        "unmatched_routes": "reject",
        "defaults": {"max_request_bytes": 1000},
        "clusters": {"a": {"provider": "openai"}, "b": {"provider": "anthropic"}, "c": {}},
        "routes": {
            "chat": {"clusters": [{"cluster": "a", "model": "gpt-4o"}, {"cluster": "b", "model": "claude-sonnet-4"}]},
            "small": {"max_request_bytes": 10.0, "clusters": ["c"]}
        },
        "telemetry": {"metrics": false},
        "upstream_filter": true
    }))
    .unwrap();
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.unmatched, Unmatched::Reject);
    let chat = c.route("chat").unwrap();
    assert_eq!(chat.policy.max_request_bytes, 1000);
    let names: Vec<_> = chat
        .clusters
        .iter()
        .map(|c| c.cluster.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(chat.clusters[1].cluster.provider, Provider::Anthropic);
    assert_eq!(c.route("small").unwrap().policy.max_request_bytes, 10);
    assert_eq!(c.clusters["c"].provider, Provider::Generic);
    assert!(!c.telemetry.metrics);
    assert!(c.telemetry.filter_state);
}

#[test]
fn failover_chain_and_circuit_settings() {
    let c = compile(&json!({
        "upstream_filter": true,
        "clusters": {
            "a": {"provider": "openai", "circuit": {
                "window_seconds": "5", "min_requests": 4.0, "error_rate": "0.25",
                "consecutive_failures": 3, "latency_p95_ms": 800, "open_seconds": 2,
                "half_open_probes": 2, "probe_timeout_seconds": 30,
                "default_cooldown_seconds": 0.5, "max_cooldown_seconds": 60}},
            "b": {"adaptive": false}
        },
        "routes": {"chat": {
            "clusters": ["a", {"cluster": "b", "model": "gpt-4o-mini"}],
            "retry_min_remaining_seconds": 1.5
        }}
    }))
    .unwrap();
    assert!(c.upstream_filter);
    let a = &c.clusters["a"];
    assert_eq!(
        (
            a.circuit.window_ms,
            a.circuit.min_requests,
            a.circuit.error_rate
        ),
        (5000, 4, 0.25)
    );
    assert_eq!(
        (
            a.circuit.consecutive_failures,
            a.circuit.latency_p95_ms,
            a.circuit.open_ms
        ),
        (3, 800, 2000)
    );
    assert_eq!(
        (a.circuit.half_open_probes, a.circuit.probe_timeout_ms),
        (2, 30_000)
    );
    assert_eq!(
        (a.circuit.default_cooldown_ms, a.circuit.max_cooldown_ms),
        (500, 60_000)
    );
    assert_eq!(a.circuit.latency_relative, None);
    assert!(a.adaptive && !c.clusters["b"].adaptive);
    let chat = c.route("chat").unwrap();
    assert_eq!(chat.clusters[0].model, None);
    assert_eq!(chat.clusters[1].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(chat.policy.retry_min_remaining_ms, 1500);
    assert_eq!(
        c.route("chat").map(|r| r.clusters[1].cluster.name.as_str()),
        Some("b")
    );
}

#[test]
fn hold_headers_defaults_to_true() {
    assert!(compile(&json!({})).unwrap().hold_headers);
    assert!(
        !compile(&json!({"hold_headers": false}))
            .unwrap()
            .hold_headers
    );
    assert_eq!(
        msg(json!({"hold_headers": 0})),
        "invalid config at hold_headers: expected true or false, got 0"
    );
}

#[test]
fn queue_hold_defaults_to_vm() {
    assert_eq!(compile(&json!({})).unwrap().queue_hold, QueueHold::Vm);
    assert_eq!(
        compile(&json!({"queue_hold": "fault_filter"}))
            .unwrap()
            .queue_hold,
        QueueHold::FaultFilter
    );
    assert_eq!(
        compile(&json!({"queue_hold": "vm", "hold_headers": false}))
            .unwrap()
            .queue_hold,
        QueueHold::Vm
    );
    assert_eq!(
        msg(json!({"queue_hold": "fault"})),
        "invalid config at queue_hold: expected one of vm, fault_filter, got \"fault\""
    );
    assert_eq!(
        msg(json!({"queue_hold": true})),
        "invalid config at queue_hold: expected one of vm, fault_filter, got true"
    );
    assert_eq!(
        msg(json!({"queue_hold": "fault_filter", "hold_headers": false})),
        "invalid config at queue_hold: fault_filter needs hold_headers: true (the delay header is set after the body is read)"
    );
}

#[test]
fn budgets_and_prices_compile() {
    let c = compile(&json!({
        "prices": {"gpt-4o": {"input": "2.5", "output": 10}, "gpt-4o-mini*": {"input": 0.15, "output": 0.6, "cached_input": 0.075}},
        "routes": {"chat": {
            "session_budget": {"header": "X-Session-Id", "max_calls": 3, "max_spend_usd": "0.05", "calls_per_minute": 10},
            "tenant_budget": {"identity": "peer_certificate", "spend_per_day_usd": 20}
        }}
    }))
    .unwrap();
    let chat = c.route("chat").unwrap();
    let sb = chat.policy.session_budget.as_ref().unwrap();
    assert_eq!(sb.header, "x-session-id");
    assert_eq!(sb.caps.max_calls, Some(3));
    assert_eq!(sb.caps.max_spend, Some(PICO_PER_USD / 20));
    assert_eq!(sb.caps.calls_per_minute, Some(10));
    assert_eq!(sb.caps.idle_ttl_ms, DEFAULT_SESSION_TTL_MS);
    assert_eq!(sb.caps.slots, DEFAULT_SESSION_SLOTS);
    let tb = chat.policy.tenant_budget.as_ref().unwrap();
    assert_eq!(tb.source, TenantSource::PeerCertificate);
    assert_eq!(tb.caps.spend_per_day, Some(20 * PICO_PER_USD));
    assert_eq!(tb.caps.spend_per_month, None);
    let p = c.prices.lookup("gpt-4o").unwrap();
    assert_eq!(
        (p.input, p.output, p.cached_input),
        (2_500_000, 10_000_000, 2_500_000)
    );
    assert_eq!(
        c.prices.lookup("gpt-4o-mini-2024").unwrap().cached_input,
        75_000
    );
    assert_eq!(c.prices.lookup("o3"), None);
}

#[test]
fn budget_errors_name_their_path() {
    assert_eq!(
        msg(json!({"routes": {"r": {"session_budget": {"header": "x-s"}}}})),
        "invalid config at routes.r.session_budget: set at least one of max_calls, max_tokens, max_spend_usd, calls_per_minute"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"session_budget": {"max_calls": 1}}}})),
        "invalid config at routes.r.session_budget: header is required (the header naming the session)"
    );
    assert_eq!(
        msg(json!({"defaults": {"session_budget": {"header": "x-s", "max_calls": 0}}})),
        "invalid config at defaults.session_budget.max_calls: must be at least 1, got 0"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"session_budget": {"header": "x-s", "max_spend_usd": -1}}}})),
        "invalid config at routes.r.session_budget.max_spend_usd: expected an amount of US dollars above 0, got -1"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_budget": {"header": "x-t", "spend_per_day_usd": 1}}}})),
        "invalid config at routes.r.tenant_budget.trust_header: is required: set it to true only if the mesh sets or verifies header \"x-t\""
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_budget": {"identity": "peer_certificate"}}}})),
        "invalid config at routes.r.tenant_budget: set at least one of spend_per_day_usd, spend_per_month_usd"
    );
    assert_eq!(
        msg(json!({"prices": {"m": {"input": 1}}})),
        "invalid config at prices.m: output is required"
    );
    assert_eq!(
        msg(json!({"prices": {"m": {"input": 1, "output": "lots"}}})),
        "invalid config at prices.m.output: expected USD per million tokens, from 0 to 1000000, got \"lots\""
    );
}

#[test]
fn relative_latency_rule_settings_and_defaults() {
    let rel = |r: serde_json::Value| {
        compile(&json!({"clusters": {"a": {"circuit": {"latency_relative": r}}}}))
            .unwrap()
            .clusters["a"]
            .circuit
            .latency_relative
            .clone()
    };
    assert_eq!(
        rel(
            json!({"factor": "1.5", "window_seconds": 4, "min_requests": 5,
                   "baseline_half_life_seconds": 300})
        ),
        Some(RelativeLatency {
            factor: 1.5,
            window_ms: 4000,
            min_requests: 5,
            baseline_half_life_ms: 300_000
        })
    );
    assert_eq!(
        rel(json!({})),
        Some(RelativeLatency {
            factor: 2.0,
            window_ms: 300_000,
            min_requests: 20,
            baseline_half_life_ms: 3_600_000
        })
    );
}

#[test]
fn failover_errors_name_their_path() {
    assert_eq!(
        msg(json!({"clusters": {"a": {"circuit": {"error_rate": 0}}}})),
        "invalid config at clusters.a.circuit.error_rate: expected a number above 0 and at most 1, got 0"
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {"circuit": {"half_open_probes": 0}}}})),
        "invalid config at clusters.a.circuit.half_open_probes: must be between 1 and 100, got 0"
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {"circuit": {"window": 10}}}})),
        "invalid config at clusters.a.circuit.window: unknown field; expected one of: consecutive_failures, default_cooldown_seconds, error_rate, half_open_probes, latency_p95_ms, latency_relative, max_cooldown_seconds, min_requests, open_seconds, probe_timeout_seconds, window_seconds"
    );
    let rel = |r: serde_json::Value| {
        msg(json!({"clusters": {"a": {"circuit": {"latency_relative": r}}}}))
    };
    assert_eq!(
        rel(json!({"factor": 1})),
        "invalid config at clusters.a.circuit.latency_relative.factor: expected a number above 1 and at most 100, got 1"
    );
    assert_eq!(
        rel(json!({"min_requests": 0})),
        "invalid config at clusters.a.circuit.latency_relative.min_requests: must be between 1 and 100000, got 0"
    );
    assert_eq!(
        rel(json!({"window_seconds": 0})),
        "invalid config at clusters.a.circuit.latency_relative.window_seconds: expected a number of seconds from 1 to 3600, got 0"
    );
    assert_eq!(
        rel(json!({"window_seconds": 600, "baseline_half_life_seconds": 60})),
        "invalid config at clusters.a.circuit.latency_relative.baseline_half_life_seconds: must be at least window_seconds (600), got 60"
    );
    assert_eq!(
        rel(json!({"k": 2})),
        "invalid config at clusters.a.circuit.latency_relative.k: unknown field; expected one of: baseline_half_life_seconds, factor, min_requests, window_seconds"
    );
    assert_eq!(
        rel(json!(2)),
        "invalid config at clusters.a.circuit.latency_relative: expected a map, got 2"
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [{"model": "m"}]}}})),
        "invalid config at routes.r.clusters[0]: cluster is required"
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [{"cluster": "a", "model": "x/y"}]}}})),
        "invalid config at routes.r.clusters[0].model: expected a model name (1 to 128 characters, no / : ? #), got \"x/y\""
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [7]}}})),
        "invalid config at routes.r.clusters[0]: expected a cluster name or {cluster, model}, got 7"
    );
    assert_eq!(
        msg(json!({"upstream_filter": "yes"})),
        "invalid config at upstream_filter: expected true or false, got \"yes\""
    );
    assert_eq!(
        msg(json!({"defaults": {"retry_min_remaining_seconds": -1}})),
        "invalid config at defaults.retry_min_remaining_seconds: expected a number of seconds from 0 to 3600, got -1"
    );
}

#[test]
fn misspelled_field_names_its_path() {
    assert_eq!(
        msg(json!({"routes": {"chat": {"max_request_byte": 5}}})),
        "invalid config at routes.chat.max_request_byte: unknown field; expected one of: api, cache, calibrate, clusters, default_max_tokens, encoding, enforce_max_tokens, global, hedge, include_usage, input_margin, invalid_body, limits, lowest_latency, max_messages, max_request_bytes, max_request_cost_usd, priority, queue, rate_limit_headers, retry_budget_percent, retry_budget_window_seconds, retry_min_remaining_seconds, session_budget, slo, strategy, tenant_budget, tenant_limits"
    );
    assert_eq!(
        msg(json!({"route": {}})),
        "invalid config at route: unknown field; expected one of: clusters, defaults, hold_headers, log_level, models, prices, queue_hold, routes, telemetry, unmatched_routes, upstream_filter"
    );
}

#[test]
fn mistyped_field_names_path_and_value() {
    assert_eq!(
        msg(json!({"defaults": {"max_request_bytes": "lots"}})),
        "invalid config at defaults.max_request_bytes: expected a positive integer (bytes), got \"lots\""
    );
    assert_eq!(
        msg(json!({"defaults": {"max_request_bytes": 1.5}})),
        "invalid config at defaults.max_request_bytes: expected a positive integer (bytes), got 1.5"
    );
    assert_eq!(
        msg(json!({"log_level": "loud"})),
        "invalid config at log_level: expected one of trace, debug, info, warn, error, got \"loud\""
    );
    assert_eq!(
        msg(json!({"telemetry": {"metrics": "yes"}})),
        "invalid config at telemetry.metrics: expected true or false, got \"yes\""
    );
    assert_eq!(msg(json!([1])), "invalid config: expected a map, got [1]");
}

#[test]
fn policy_fields_inherit_and_override() {
    let c = compile(&json!({
        "defaults": {"api": "openai_chat", "input_margin": 0.2, "default_max_tokens": 512,
                     "enforce_max_tokens": "fill", "include_usage": true, "invalid_body": "pass",
                     "calibrate": false, "encoding": "cl100k"},
        "routes": {"a": {}, "b": {"api": "auto", "encoding": "auto", "input_margin": 0, "enforce_max_tokens": "cap"}}
    }))
    .unwrap();
    let a = &c.route("a").unwrap().policy;
    assert_eq!(a.api, Some(Api::OpenAiChat));
    assert_eq!(a.encoding, Some(Encoding::Cl100k));
    assert_eq!((a.input_margin, a.default_max_tokens), (Some(0.2), 512));
    assert_eq!(
        (
            a.enforce_max_tokens,
            a.include_usage,
            a.invalid_body,
            a.calibrate
        ),
        (EnforceMaxTokens::Fill, true, InvalidBody::Pass, false)
    );
    let b = &c.route("b").unwrap().policy;
    assert_eq!(
        (b.api, b.encoding, b.input_margin, b.enforce_max_tokens),
        (None, None, Some(0.0), EnforceMaxTokens::Cap)
    );
    assert_eq!(b.default_max_tokens, 512);
}

#[test]
fn policy_field_errors_name_path_and_value() {
    assert_eq!(
        msg(json!({"routes": {"r": {"api": "openai"}}})),
        "invalid config at routes.r.api: expected one of auto, openai_chat, openai_responses, openai_completions, openai_embeddings, anthropic_messages, gemini, got \"openai\""
    );
    assert_eq!(
        msg(json!({"defaults": {"input_margin": 1.5}})),
        "invalid config at defaults.input_margin: expected a number from 0 to 1 (0.1 = +10%) or \"auto\", got 1.5"
    );
    // Numeric strings are numbers (Envoy's YAML conversion makes `0.15` a string).
    let c = compile(&json!({"defaults": {"input_margin": "0.15", "default_max_tokens": "100"}}))
        .unwrap();
    assert_eq!(
        (c.defaults.input_margin, c.defaults.default_max_tokens),
        (Some(0.15), 100)
    );
    let c = compile(&json!({"defaults": {"input_margin": "auto"}})).unwrap();
    assert_eq!(c.defaults.input_margin, None);
    assert_eq!(
        msg(json!({"routes": {"r": {"input_margin": "wide"}}})),
        "invalid config at routes.r.input_margin: expected a number from 0 to 1 (0.1 = +10%) or \"auto\", got \"wide\""
    );
    assert_eq!(
        msg(json!({"defaults": {"default_max_tokens": 0}})),
        "invalid config at defaults.default_max_tokens: must be between 1 and 1000000, got 0"
    );
    assert_eq!(
        msg(json!({"defaults": {"encoding": "gpt2"}})),
        "invalid config at defaults.encoding: expected one of auto, o200k, cl100k, claude, gemini, llama, got \"gpt2\""
    );
    assert_eq!(
        msg(json!({"defaults": {"enforce_max_tokens": true}})),
        "invalid config at defaults.enforce_max_tokens: expected one of off, fill, cap, got true"
    );
    assert_eq!(
        msg(json!({"defaults": {"clusters": []}})),
        "invalid config at defaults.clusters: unknown field; expected one of: api, cache, calibrate, default_max_tokens, encoding, enforce_max_tokens, global, include_usage, input_margin, invalid_body, limits, max_messages, max_request_bytes, max_request_cost_usd, priority, queue, rate_limit_headers, retry_min_remaining_seconds, session_budget, slo, tenant_budget, tenant_limits"
    );
}

#[test]
fn limits_compile_with_headroom_and_burst() {
    let c = compile(&json!({"routes": {"r": {
        "limits": {"requests_per_minute": 600, "tokens_per_minute": "100000", "headroom": 0.1, "burst_seconds": 2, "max_in_flight": 8, "in_flight_lease_seconds": 120},
        "tenant_limits": {"header": "X-Tenant", "trust_header": true, "requests_per_minute": 60, "slots": 16, "shadow": true},
        "rate_limit_headers": "ietf"
    }}}))
    .unwrap();
    let p = &c.route("r").unwrap().policy;
    let l = p.limits.as_ref().unwrap();
    assert_eq!(
        l.limits.requests,
        Some(Rate {
            per_minute: 540.0,
            burst: 18.0
        })
    );
    assert_eq!(l.limits.tokens.unwrap().per_minute, 90_000.0);
    assert_eq!(
        (l.limits.max_in_flight, l.limits.input_tokens, l.shadow),
        (Some(8), None, false)
    );
    assert_eq!(l.limits.in_flight_lease_ms, 120_000);
    let t = p.tenant.as_ref().unwrap();
    assert_eq!(t.limits.in_flight_lease_ms, 600_000, "the default lease");
    assert_eq!(
        compile(&json!({"routes": {"r": {"limits": {"max_in_flight": 2, "in_flight_lease_seconds": 0}}}}))
            .unwrap_err()
            .to_string(),
        "invalid config at routes.r.limits.in_flight_lease_seconds: expected a number of seconds from 1 to 86400, got 0"
    );
    assert_eq!(
        (&t.source, t.slots, t.shadow),
        (&TenantSource::Header("x-tenant".into()), 16, true)
    );
    let c = compile(&json!({"defaults": {"tenant_limits": {"identity": "peer_certificate", "requests_per_minute": 5}}})).unwrap();
    assert_eq!(
        c.defaults.tenant.unwrap().source,
        TenantSource::PeerCertificate
    );
    assert_eq!(
        t.limits.requests,
        Some(Rate {
            per_minute: 60.0,
            burst: 1.0
        })
    );
    assert_eq!(p.rate_limit_headers, RateHeaders::Ietf);
    assert_eq!(c.defaults.rate_limit_headers, RateHeaders::Both);
}

#[test]
fn queue_and_priority() {
    let c = compile(&json!({"defaults": {
        "queue": {"max_wait_seconds": 2.5},
        "priority": {"header": "X-Priority", "classes": ["gold", "silver", "bronze"], "default": "bronze", "reserve": 0.3}
    }}))
    .unwrap();
    let q = c.defaults.queue.unwrap();
    assert_eq!((q.max_wait_ms, q.max_size, q.poll_ms), (2500, 256, 20));
    let p = c.defaults.priority.unwrap();
    assert_eq!(p.header, "x-priority");
    assert_eq!(
        (
            p.class_of(Some("GOLD")),
            p.class_of(Some("x")),
            p.class_of(None)
        ),
        (0, 2, 2)
    );
    assert_eq!((p.floor(0), p.floor(1), p.floor(2)), (0.0, 0.15, 0.3));
    assert_eq!(
        msg(json!({"defaults": {"queue": {"max_wait_seconds": 0}}})),
        "invalid config at defaults.queue.max_wait_seconds: expected a number of seconds above 0 and at most 300, got 0"
    );
    assert_eq!(
        msg(json!({"defaults": {"priority": {"header": "p", "default": "gold"}}})),
        "invalid config at defaults.priority.default: expected one of high, normal, low, got \"gold\""
    );
}

#[test]
fn limit_errors_name_path_and_value() {
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"requests_per_minut": 5}}}})),
        "invalid config at routes.r.limits.requests_per_minut: unknown field; expected one of: burst_seconds, headroom, in_flight_lease_seconds, input_tokens_per_minute, max_in_flight, output_tokens_per_minute, requests_per_day, requests_per_minute, shadow, tokens_per_day, tokens_per_minute"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"shadow": true}}}})),
        "invalid config at routes.r.limits: sets no limit: give at least one of requests_per_minute, tokens_per_minute, input_tokens_per_minute, output_tokens_per_minute, max_in_flight, requests_per_day, tokens_per_day"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"requests_per_minute": 0}}}})),
        "invalid config at routes.r.limits.requests_per_minute: must be at least 1 (leave it out for no limit)"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"requests_per_minute": 5, "headroom": 1}}}})),
        "invalid config at routes.r.limits.headroom: expected a number from 0 to below 1 (0.1 = keep 10% back), got 1"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_limits": {"header": "x-t", "requests_per_minute": 5}}}})),
        "invalid config at routes.r.tenant_limits.trust_header: is required: set it to true only if the mesh sets or verifies header \"x-t\""
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_limits": {"header": "x-t", "trust_header": false, "requests_per_minute": 5}}}})),
        "invalid config at routes.r.tenant_limits.trust_header: must be true to use header \"x-t\" as the tenant identity (only when the mesh sets or verifies it), got false"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_limits": {"requests_per_minute": 5}}}})),
        "invalid config at routes.r.tenant_limits: needs a tenant source: header (with trust_header: true) or identity: peer_certificate"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_limits": {"identity": "peer_certificate", "header": "x", "requests_per_minute": 5}}}})),
        "invalid config at routes.r.tenant_limits.header: cannot be combined with identity: choose one tenant source"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"tenant_limits": {"identity": "jwt", "requests_per_minute": 5}}}})),
        "invalid config at routes.r.tenant_limits.identity: expected one of peer_certificate, got \"jwt\""
    );
}

#[test]
fn range_and_reference_errors() {
    assert_eq!(
        msg(json!({"defaults": {"max_request_bytes": 0}})),
        "invalid config at defaults.max_request_bytes: must be between 1 and 1048576 bytes, got 0"
    );
    assert_eq!(
        msg(json!({"routes": {"chat": {"clusters": ["nope"]}}})),
        "invalid config at routes.chat.clusters[0]: unknown cluster \"nope\" (define it under clusters)"
    );
    assert_eq!(
        msg(json!({"clusters": {"a": {}}, "routes": {"chat": {"clusters": ["a", "a"]}}})),
        "invalid config at routes.chat.clusters[1]: cluster \"a\" appears twice"
    );
    assert_eq!(
        msg(json!({"routes": {"bad name": {}}})),
        "invalid config at routes.bad name: name must be 1 to 128 characters of A-Z a-z 0-9 - _ . | : /, got \"bad name\""
    );
}

#[test]
fn null_fields_are_absent_and_bad_json_is_reported() {
    assert_eq!(
        msg(json!({"defaults": null, "routes": {"r": null}})),
        "invalid config at routes.r: expected a map, got null"
    );
    let e = parse_json(b"{not json").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid config: not valid JSON: key must be a string"),
        "{e}"
    );
}

#[test]
fn long_values_are_truncated_in_messages() {
    let long = "x".repeat(500);
    let m = msg(json!({ "log_level": long }));
    assert!(m.len() < 200, "{m}");
    assert!(m.ends_with("..."), "{m}");
}

#[test]
fn slo_is_read_and_inherited() {
    let c = compile(&json!({
        "defaults": {"slo": {"time_to_first_token_ms": 2000}},
        "routes": {"a": {}, "b": {"slo": {"time_to_first_token_ms": 500, "duration_ms": 30000}}}
    }))
    .unwrap();
    assert_eq!(
        c.route("a").unwrap().policy.slo,
        Some(Slo {
            time_to_first_token_ms: Some(2000),
            duration_ms: None
        })
    );
    assert_eq!(
        c.route("b").unwrap().policy.slo,
        Some(Slo {
            time_to_first_token_ms: Some(500),
            duration_ms: Some(30000)
        })
    );
}

#[test]
fn per_request_caps_compile_and_name_their_errors() {
    let c = compile(&json!({
        "defaults": {"max_messages": 20},
        "routes": {"r": {"max_request_cost_usd": "0.05"}}
    }))
    .unwrap();
    let p = &c.routes["r"].policy;
    assert_eq!(p.max_messages, Some(20));
    assert_eq!(p.max_request_cost, Some(PICO_PER_USD / 20));
    assert_eq!(
        msg(json!({"routes": {"r": {"max_messages": 0}}})),
        "invalid config at routes.r.max_messages: must be between 1 and 4294967295, got 0"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"max_messages": "many"}}})),
        "invalid config at routes.r.max_messages: expected a positive integer (messages), got \"many\""
    );
    assert_eq!(
        msg(json!({"defaults": {"max_request_cost_usd": 0}})),
        "invalid config at defaults.max_request_cost_usd: expected an amount of US dollars above 0, got 0"
    );
}

#[test]
fn slo_errors_name_path_and_value() {
    assert_eq!(
        msg(json!({"routes": {"r": {"slo": {}}}})),
        "invalid config at routes.r.slo: set at least one of time_to_first_token_ms, duration_ms"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"slo": {"duration_ms": 0}}}})),
        "invalid config at routes.r.slo.duration_ms: must be between 1 and 3600000 milliseconds, got 0"
    );
    assert_eq!(
        msg(json!({"defaults": {"slo": {"time_to_first_token_ms": 3600001}}})),
        "invalid config at defaults.slo.time_to_first_token_ms: must be between 1 and 3600000 milliseconds, got 3600001"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"slo": {"ttft_ms": 5}}}})),
        "invalid config at routes.r.slo.ttft_ms: unknown field; expected one of: duration_ms, time_to_first_token_ms"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"slo": 5}}})),
        "invalid config at routes.r.slo: expected a map, got 5"
    );
}

#[test]
fn models_compile_and_name_their_errors() {
    let c = compile(&json!({"models": {"tiny*": {"context_window": 4096}, "gpt-4o": {"context_window": 1000, "max_output_tokens": 10}}}))
        .unwrap();
    let tiny = c.models.lookup("tiny-1").unwrap();
    assert_eq!((tiny.context_window, tiny.max_output_tokens), (4096, 4096));
    assert_eq!(c.models.lookup("gpt-4o").unwrap().max_output_tokens, 10);
    assert_eq!(
        msg(json!({"models": {"m": {"max_output_tokens": 10}}})),
        "invalid config at models.m: context_window is required"
    );
    assert_eq!(
        msg(json!({"models": {"m": {"context_window": 0}}})),
        "invalid config at models.m.context_window: must be between 1 and 100000000, got 0"
    );
    assert_eq!(
        msg(json!({"models": {"m": {"context_window": 100, "max_output_tokens": 101}}})),
        "invalid config at models.m.max_output_tokens: must be between 1 and the context window (100), got 101"
    );
    assert_eq!(
        msg(json!({"models": {"*": {"context_window": 100}}})),
        "invalid config at models.*: model name (or prefix ending in *) must be 1 to 128 characters"
    );
    assert_eq!(
        msg(json!({"models": {"m": {"context_window": 100, "window": 1}}})),
        "invalid config at models.m.window: unknown field; expected one of: context_window, max_output_tokens"
    );
    assert_eq!(
        msg(json!({"models": []})),
        "invalid config at models: expected a map of model names to their limits, got []"
    );
}

#[test]
fn daily_quotas_compile_with_headroom_and_name_their_errors() {
    let c = compile(&json!({"routes": {"r": {
        "limits": {"tokens_per_day": 10_000, "headroom": 0.1},
        "tenant_limits": {"header": "x-t", "trust_header": true, "requests_per_day": 50}
    }}}))
    .unwrap();
    let p = &c.routes["r"].policy;
    assert_eq!(
        p.limits.as_ref().unwrap().limits.tokens_per_day,
        Some(9_000)
    );
    assert_eq!(p.tenant.as_ref().unwrap().limits.requests_per_day, Some(50));
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"requests_per_day": 0}}}})),
        "invalid config at routes.r.limits.requests_per_day: must be at least 1 (leave it out for no limit)"
    );
    assert_eq!(
        msg(json!({"routes": {"r": {"limits": {"tokens_per_day": "lots"}}}})),
        "invalid config at routes.r.limits.tokens_per_day: expected a positive integer, got \"lots\""
    );
}

#[test]
fn daily_quotas_are_refused_in_the_global_tier() {
    assert_eq!(
        msg(json!({"routes": {"r": {"global": {"cluster": "rls", "fallback_limits": {"requests_per_day": 5}}}}})),
        "invalid config at routes.r.global.fallback_limits: requests_per_day and tokens_per_day do not apply here (only in limits and tenant_limits)"
    );
}

#[test]
fn routing_fields_compile_and_name_their_errors() {
    let two = |route: Value| {
        let mut r = json!({"clusters": ["a", "b"]});
        if let (Some(r), Some(extra)) = (r.as_object_mut(), route.as_object()) {
            r.extend(extra.clone());
        }
        json!({
            "clusters": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
            "routes": {"r": r}
        })
    };
    let c = compile(&two(json!({
        "strategy": "weighted",
        "clusters": [{"cluster": "a", "weight": 7}, "b"],
        "retry_budget_percent": 25,
        "retry_budget_window_seconds": 30
    })))
    .unwrap();
    let r = &c.routes["r"];
    assert_eq!(r.routing.strategy, Strategy::Weighted);
    assert_eq!((r.clusters[0].weight, r.clusters[1].weight), (7, 1));
    assert_eq!(
        (
            r.routing.retry_budget_percent,
            r.routing.retry_budget_window_ms
        ),
        (25, 30_000)
    );
    let c = compile(&two(json!({"strategy": "lowest_latency"}))).unwrap();
    assert_eq!(
        c.routes["r"].routing.strategy,
        Strategy::LowestLatency {
            half_life_ms: 5_000,
            exploration: 0.05,
            tolerance: 0.2
        }
    );
    assert_eq!(c.routes["r"].routing.retry_budget_percent, 10);
    let cases = [
        (
            json!({"strategy": "fastest"}),
            "invalid config at routes.r.strategy: expected one of ordered, weighted, lowest_latency, got \"fastest\"",
        ),
        (
            json!({"clusters": [{"cluster": "a", "weight": 2}, "b"]}),
            "invalid config at routes.r.clusters[0].weight: is only read with strategy: weighted",
        ),
        (
            json!({"strategy": "weighted", "clusters": [{"cluster": "a", "weight": 10001}, "b"]}),
            "invalid config at routes.r.clusters[0].weight: must be between 0 and 10000, got 10001",
        ),
        (
            json!({"strategy": "weighted", "clusters": [{"cluster": "a", "weight": 0}, {"cluster": "b", "weight": 0}]}),
            "invalid config at routes.r.clusters: every weight is 0",
        ),
        (
            json!({"strategy": "weighted", "clusters": ["a"]}),
            "invalid config at routes.r.strategy: weighted needs a chain of at least 2 clusters",
        ),
        (
            json!({"lowest_latency": {"exploration": 0.1}}),
            "invalid config at routes.r.lowest_latency: is only read with strategy: lowest_latency",
        ),
        (
            json!({"strategy": "lowest_latency", "lowest_latency": {"exploration": 0.6}}),
            "invalid config at routes.r.lowest_latency.exploration: expected a number from 0 to 0.5, got 0.6",
        ),
        (
            json!({"strategy": "lowest_latency", "lowest_latency": {"tolerance": -1}}),
            "invalid config at routes.r.lowest_latency.tolerance: expected a number from 0 to 1, got -1",
        ),
        (
            json!({"strategy": "lowest_latency", "lowest_latency": {"half_life_seconds": 0}}),
            "invalid config at routes.r.lowest_latency.half_life_seconds: expected a number of seconds from 0.1 to 3600, got 0",
        ),
        (
            json!({"strategy": "lowest_latency", "lowest_latency": {"explore": 0.1}}),
            "invalid config at routes.r.lowest_latency.explore: unknown field; expected one of: exploration, half_life_seconds, tolerance",
        ),
        (
            json!({"retry_budget_percent": 101}),
            "invalid config at routes.r.retry_budget_percent: must be between 0 and 100, got 101",
        ),
        (
            json!({"retry_budget_window_seconds": 0.5}),
            "invalid config at routes.r.retry_budget_window_seconds: expected a number of seconds from 1 to 3600, got 0.5",
        ),
    ];
    for (route, want) in cases {
        assert_eq!(msg(two(route)), want);
    }
}

#[test]
fn cache_compiles_with_defaults_and_names_its_errors() {
    use super::{CacheConfig, CacheWhen};
    let c = compile(&json!({"routes": {"r": {"cache": {}}}})).unwrap();
    let cache: &CacheConfig = c.route("r").unwrap().policy.cache.as_deref().unwrap();
    assert_eq!(
        (
            cache.ttl_ms,
            cache.max_entries,
            cache.max_entry_bytes,
            cache.max_total_bytes
        ),
        (300_000, 1024, 65_536, 16 << 20)
    );
    assert_eq!(cache.when, CacheWhen::Deterministic);
    assert!(!cache.shared && !cache.count_hits);
    assert_eq!(
        (
            cache.idempotency_ttl_ms,
            cache.collapse_wait_ms,
            cache.collapse_max_waiters
        ),
        (86_400_000, 30_000, 256)
    );
    let c = compile(&json!({"routes": {"r": {"cache": {"when": "opt_in", "shared": true, "count_hits": true, "ttl_seconds": 1.5, "max_entries": 8, "max_entry_bytes": 100, "max_total_bytes": 400}}}})).unwrap();
    let cache = c.route("r").unwrap().policy.cache.as_deref().unwrap();
    assert_eq!(
        (cache.when, cache.shared, cache.count_hits, cache.ttl_ms),
        (CacheWhen::OptIn, true, true, 1_500)
    );
    assert_eq!(
        (
            cache.max_entries,
            cache.max_entry_bytes,
            cache.max_total_bytes
        ),
        (8, 100, 400)
    );
    for (cache, m) in [
        (json!({"ttl_seconds": 0}), "invalid config at routes.r.cache.ttl_seconds: expected a number of seconds from 1 to 86400, got 0"),
        (json!({"max_entries": 0}), "invalid config at routes.r.cache.max_entries: must be between 1 and 16384, got 0"),
        (json!({"max_entries": 16385}), "invalid config at routes.r.cache.max_entries: must be between 1 and 16384, got 16385"),
        (json!({"max_entry_bytes": 1048577}), "invalid config at routes.r.cache.max_entry_bytes: must be between 1 and 1048576, got 1048577"),
        (json!({"max_entry_bytes": 1000, "max_total_bytes": 999}), "invalid config at routes.r.cache.max_total_bytes: must be at least max_entry_bytes (1000), got 999"),
        (json!({"when": "always"}), "invalid config at routes.r.cache.when: expected one of deterministic, opt_in, got \"always\""),
        (json!({"shared": "yes"}), "invalid config at routes.r.cache.shared: expected true or false, got \"yes\""),
        (json!({"collapse_max_waiters": 0}), "invalid config at routes.r.cache.collapse_max_waiters: must be between 1 and 10000, got 0"),
        (json!({"ttl": 5}), "invalid config at routes.r.cache.ttl: unknown field; expected one of: collapse_max_waiters, collapse_wait_seconds, count_hits, idempotency_ttl_seconds, max_entries, max_entry_bytes, max_total_bytes, shared, ttl_seconds, when"),
        (json!(5), "invalid config at routes.r.cache: expected a map, got 5"),
    ] {
        assert_eq!(msg(json!({"routes": {"r": {"cache": cache}}})), m);
    }
}

#[test]
fn hedge_compiles_and_names_its_errors() {
    let cfg = |hedge: Value, chain: Value, upstream_filter: bool| {
        json!({
            "upstream_filter": upstream_filter,
            "clusters": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
            "routes": {"r": {"clusters": chain, "hedge": hedge}}
        })
    };
    let ab = json!(["a", "b"]);
    let c = compile(&cfg(
        json!({"after_ms": 300, "cluster": "ab"}),
        ab.clone(),
        true,
    ))
    .unwrap();
    let hg = c.route("r").unwrap().routing.hedge.clone().unwrap();
    assert_eq!(
        (hg.after_ms, hg.max_share, hg.cluster.as_str()),
        (300, 0.05, "ab")
    );
    let cases = [
        (
            cfg(json!({"cluster": "ab"}), ab.clone(), true),
            "invalid config at routes.r.hedge: needs after_ms",
        ),
        (
            cfg(json!({"after_ms": 0, "cluster": "ab"}), ab.clone(), true),
            "invalid config at routes.r.hedge.after_ms: must be between 1 and 600000, got 0",
        ),
        (
            cfg(json!({"after_ms": 300}), ab.clone(), true),
            "invalid config at routes.r.hedge: needs cluster (the Envoy composite cluster over the route's chain)",
        ),
        (
            cfg(json!({"after_ms": 300, "cluster": "ab", "max_share": 0}), ab.clone(), true),
            "invalid config at routes.r.hedge.max_share: expected a number above 0, at most 1, got 0",
        ),
        (
            cfg(json!({"after_ms": 300, "cluster": "ab", "share": 0.1}), ab.clone(), true),
            "invalid config at routes.r.hedge.share: unknown field; expected one of: after_ms, cluster, max_share",
        ),
        (
            cfg(json!({"after_ms": 300, "cluster": "ab"}), json!(["a"]), true),
            "invalid config at routes.r.hedge: hedging needs a chain of at least 2 clusters (the hedge goes to the next one)",
        ),
        (
            cfg(json!({"after_ms": 300, "cluster": "b"}), ab.clone(), true),
            "invalid config at routes.r.hedge.cluster: must name the composite cluster over the chain, not a cluster of it, got b",
        ),
        (
            cfg(json!({"after_ms": 300, "cluster": "ab"}), ab.clone(), false),
            "invalid config at routes.r.hedge: hedging needs upstream_filter: true (the upstream instance tells a hedge from a retry)",
        ),
    ];
    for (v, want) in cases {
        assert_eq!(msg(v), want);
    }
}
