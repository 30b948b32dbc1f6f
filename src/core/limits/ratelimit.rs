//! What clients see of the limits: rate-limit headers on every answer and the
//! 429 they get when a limit says no.

use crate::core::config::RateHeaders;
use crate::core::limits::limiter::{Dim, Snapshot};
use crate::core::reply::LocalReply;

/// A duration in OpenAI's header format (Go's `time.Duration` string):
/// `0s`, `120ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
pub fn openai_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let mut secs = format!("{}.{:03}", s_ms / 1000, s_ms % 1000);
    while secs.ends_with('0') {
        secs.pop();
    }
    if secs.ends_with('.') {
        secs.pop();
    }
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Headers describing `snapshot`, in the configured families. OpenAI's
/// `x-ratelimit-*` cover requests and tokens; the IETF `RateLimit-Policy` /
/// `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers, structured fields)
/// list every limited dimension.
pub fn headers(snapshot: &Snapshot, mode: RateHeaders) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if matches!(mode, RateHeaders::OpenAi | RateHeaders::Both) {
        for (d, limit, remaining, reset) in [
            (
                Dim::Requests,
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            (
                Dim::Tokens,
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ),
            (
                Dim::RequestsPerDay,
                "x-ratelimit-limit-requests-day",
                "x-ratelimit-remaining-requests-day",
                "x-ratelimit-reset-requests-day",
            ),
            (
                Dim::TokensPerDay,
                "x-ratelimit-limit-tokens-day",
                "x-ratelimit-remaining-tokens-day",
                "x-ratelimit-reset-tokens-day",
            ),
        ] {
            if let Some(s) = snapshot.get(d) {
                out.push((limit, s.limit.to_string()));
                out.push((remaining, s.remaining.to_string()));
                out.push((reset, openai_duration(s.reset_ms)));
            }
        }
    }
    if matches!(mode, RateHeaders::Ietf | RateHeaders::Both) {
        let mut policy = Vec::new();
        let mut state = Vec::new();
        for d in [
            Dim::Requests,
            Dim::Tokens,
            Dim::InputTokens,
            Dim::OutputTokens,
            Dim::RequestsPerDay,
            Dim::TokensPerDay,
        ] {
            if let Some(s) = snapshot.get(d) {
                let w = if d.is_daily() { 86_400 } else { 60 };
                policy.push(format!("\"{}\";q={};w={w}", d.as_str(), s.limit));
                state.push(format!(
                    "\"{}\";r={};t={}",
                    d.as_str(),
                    s.remaining,
                    s.reset_ms.div_ceil(1000)
                ));
            }
        }
        if !policy.is_empty() {
            out.push(("ratelimit-policy", policy.join(", ")));
            out.push(("ratelimit", state.join(", ")));
        }
    }
    out
}

/// Adds jitter of up to a fifth of the wait (at least 50 ms of spread), so clients
/// refused together do not all come back in the same instant.
pub fn jittered(retry_after_ms: u64, random: u64) -> u64 {
    let spread = (retry_after_ms / 5).max(50);
    retry_after_ms.saturating_add(random % (spread + 1))
}

/// Jitter for a refusal by `dim`: a daily quota's wait runs to midnight, and
/// clients come back spread over the minute after it (not a fifth of the day).
pub fn jittered_for(dim: Dim, retry_after_ms: u64, random: u64) -> u64 {
    if dim.is_daily() {
        retry_after_ms.saturating_add(random % (MIDNIGHT_SPREAD_MS + 1))
    } else {
        jittered(retry_after_ms, random)
    }
}

/// Clients refused by a daily quota come back within this long after midnight.
pub const MIDNIGHT_SPREAD_MS: u64 = 60_000;

/// The 429 for a request a limit refused.
pub fn rejection(
    route: &str,
    tenant: Option<&str>,
    dim: Dim,
    limit: Option<u64>,
    retry_after_ms: u64,
    rate_headers: Vec<(&'static str, String)>,
) -> LocalReply {
    let (code, whom) = match tenant {
        Some(t) => (
            "tenant_rate_limit_exceeded",
            format!("tenant \"{t}\" on route \"{route}\""),
        ),
        None => ("rate_limit_exceeded", format!("route \"{route}\"")),
    };
    let what = match dim {
        Dim::InFlight => "requests in flight".to_string(),
        d if d.is_daily() => d.as_str().replace('_', " "),
        d => format!("{} per minute", d.as_str().replace('_', " ")),
    };
    let limit = limit.map(|l| format!(" (limit {l})")).unwrap_or_default();
    let msg = format!(
        "Rate limit reached for {what} on {whom}{limit}. Please try again in {}.",
        openai_duration(retry_after_ms)
    );
    let mut r = LocalReply::openai_error(429, dim.as_str(), code, &msg);
    r.details = "rate_limit_exceeded";
    if let Some(h) = r.headers.iter_mut().find(|(k, _)| k == "x-llm-capacity") {
        h.1 = "rate_limit_exceeded".to_string();
    }
    r.headers.push((
        "retry-after".to_string(),
        retry_after_ms.div_ceil(1000).max(1).to_string(),
    ));
    r.headers
        .push(("retry-after-ms".to_string(), retry_after_ms.to_string()));
    r.headers
        .extend(rate_headers.into_iter().map(|(k, v)| (k.to_string(), v)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::env::MemStore;
    use crate::core::limits::limiter::{admit, Admission, Cost, Limits, Rate};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn durations_like_openai() {
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (120, "120ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1234, "1.234s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (90_500, "1m30.5s"),
            (3_600_000, "1h0m0s"),
            (3_661_000, "1h1m1s"),
        ];
        for (ms, s) in cases {
            assert_eq!(openai_duration(ms), s, "{ms}");
        }
    }

    fn snapshot() -> Snapshot {
        let s = MemStore::default();
        let l = Limits {
            requests: Some(Rate::new(600.0, 1.0)),
            tokens: Some(Rate::new(60_000.0, 1.0)),
            ..Limits::default()
        };
        let Admission::Admitted(snap) = admit(
            &s,
            "k",
            "r",
            &l,
            &Cost {
                tokens: 2500,
                ..Cost::default()
            },
            0,
        )
        .unwrap() else {
            panic!()
        };
        snap
    }

    #[test]
    fn header_families() {
        let h = headers(&snapshot(), RateHeaders::Both);
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("x-ratelimit-limit-requests"), Some("600"));
        assert_eq!(get("x-ratelimit-remaining-requests"), Some("599"));
        assert_eq!(get("x-ratelimit-reset-requests"), Some("100ms"));
        assert_eq!(get("x-ratelimit-limit-tokens"), Some("60000"));
        assert_eq!(get("x-ratelimit-remaining-tokens"), Some("57500"));
        assert_eq!(get("x-ratelimit-reset-tokens"), Some("2.5s"));
        assert_eq!(
            get("ratelimit-policy"),
            Some("\"requests\";q=600;w=60, \"tokens\";q=60000;w=60")
        );
        assert_eq!(
            get("ratelimit"),
            Some("\"requests\";r=599;t=1, \"tokens\";r=57500;t=3")
        );
        assert_eq!(headers(&snapshot(), RateHeaders::OpenAi).len(), 6);
        assert_eq!(headers(&snapshot(), RateHeaders::Ietf).len(), 2);
        assert!(headers(&snapshot(), RateHeaders::None).is_empty());
    }

    #[test]
    fn jitter_is_bounded_and_spread() {
        assert_eq!(jittered(1000, 0), 1000);
        assert_eq!(jittered(1000, 200), 1200);
        assert_eq!(jittered(1000, 201), 1000);
        assert_eq!(jittered(10, 50), 60);
    }

    #[test]
    fn rejection_reply() {
        let r = rejection(
            "chat",
            None,
            Dim::Tokens,
            Some(60000),
            1500,
            headers(&snapshot(), RateHeaders::OpenAi),
        );
        assert_eq!(r.status, 429);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "tokens");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(
            v["error"]["message"],
            "Rate limit reached for tokens per minute on route \"chat\" (limit 60000). Please try again in 1.5s."
        );
        let get = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("retry-after").as_deref(), Some("2"));
        assert_eq!(get("retry-after-ms").as_deref(), Some("1500"));
        assert_eq!(
            get("x-llm-capacity").as_deref(),
            Some("rate_limit_exceeded")
        );
        assert_eq!(get("x-ratelimit-limit-tokens").as_deref(), Some("60000"));
        let t = rejection("chat", Some("acme"), Dim::InFlight, None, 200, vec![]);
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["error"]["code"], "tenant_rate_limit_exceeded");
        assert_eq!(v["error"]["message"], "Rate limit reached for requests in flight on tenant \"acme\" on route \"chat\". Please try again in 200ms.");
        assert_eq!(
            t.headers
                .iter()
                .find(|(n, _)| n == "retry-after")
                .unwrap()
                .1,
            "1"
        );
    }

    #[test]
    fn a_daily_refusal_is_spread_over_the_minute_after_midnight() {
        for r in [0, 1, 59_999, 60_000, 60_001, u64::MAX] {
            let w = jittered_for(Dim::TokensPerDay, 3_600_000, r);
            assert!((3_600_000..=3_660_000).contains(&w), "{w}");
        }
        assert_eq!(jittered_for(Dim::Requests, 1_000, 0), jittered(1_000, 0));
    }
}
