//! Choosing where a request goes, and reading what each upstream attempt said.
//!
//! The filter never re-sends a request: Envoy's router is the only retry layer.
//! What the filter does is plan the attempts before the request leaves: the first
//! cluster of the route's chain whose circuit lets it through, then, for the
//! router's retries, the following clusters that are healthy right now. The plan
//! goes to Envoy as filter state (`wasm.llmcap_try_<n>`, read by the route's
//! matcher cluster specifier with `refresh_cluster_on_retry`) and as
//! `x-envoy-max-retries`, so no retry can land on a cluster that is cooling down
//! or open.

use crate::core::config::{RoutePolicy, Target};
use crate::core::env::{SharedStore, StoreError};
use crate::core::reply::LocalReply;
use crate::core::upstream::circuit::{self, Blocked, Gate, Outcome};
use crate::core::upstream::provider_headers::Signal;

/// Filter-state name of attempt `n`'s cluster (1-based), read by the route's
/// matcher cluster specifier as `wasm.llmcap_try_<n>`.
pub fn slot_property(n: usize) -> String {
    format!("llmcap_try_{n}")
}

/// Filter-state name of the plan the upstream instance reads.
pub const PLAN_PROPERTY: &str = "llmcap_plan";
/// Header the upstream instance sets on a 429/503 for the router's
/// `rate_limited_retry_back_off` (seconds): only when the retry would go to the
/// same cluster, so failover to another cluster does not wait.
pub const RETRY_AFTER_HEADER: &str = "x-llm-capacity-retry-after";

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Chain indices, in attempt order; never empty, no repeats.
    pub slots: Vec<usize>,
    /// The first slot is the cluster's probe (half-open, or first after a cool-down).
    pub probe: bool,
}

/// Why no cluster can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// Earliest time any cluster may take traffic again.
    pub until_ms: Option<u64>,
    /// Every cluster is out for capacity (429 cool-down or quota), not failures.
    pub capacity: bool,
}

/// Plans the attempts for a request needing about `tokens`.
///
/// The first usable cluster is gated for real (which may claim its probe); later
/// clusters are only looked at, and join the plan only when fully healthy, so a
/// retry never takes a probe nobody would release. Store errors fail open: the
/// cluster counts as usable.
pub fn plan(
    store: &dyn SharedStore,
    chain: &[Target],
    now_ms: u64,
    tokens: u64,
) -> Result<Plan, Unavailable> {
    let mut until: Option<u64> = None;
    let mut capacity = true;
    for (i, t) in chain.iter().enumerate() {
        let key = circuit::key(&t.cluster.name);
        let gate =
            circuit::gate(store, &key, &t.cluster.circuit, now_ms, tokens).unwrap_or(Gate::Pass);
        match gate {
            Gate::Pass | Gate::Probe => {
                let mut slots = vec![i];
                for (j, next) in chain.iter().enumerate().skip(i + 1) {
                    if healthy(store, next, now_ms, tokens) {
                        slots.push(j);
                    }
                }
                return Ok(Plan {
                    slots,
                    probe: gate == Gate::Probe,
                });
            }
            Gate::Blocked { until_ms, why } => {
                if matches!(why, Blocked::Open | Blocked::ProbeBusy) {
                    capacity = false;
                }
                until = match (until, until_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    Err(Unavailable {
        until_ms: until,
        capacity: capacity && !chain.is_empty(),
    })
}

/// A later slot: closed, not cooling down, quota not known to be short.
fn healthy(store: &dyn SharedStore, t: &Target, now_ms: u64, tokens: u64) -> bool {
    let key = circuit::key(&t.cluster.name);
    match circuit::view(store, &key, &t.cluster.circuit, now_ms) {
        Ok(v) => {
            v.mode == circuit::Mode::Closed
                && v.cooldown_until_ms.is_none()
                && v.requests_remaining != Some(0)
                && v.tokens_remaining.is_none_or(|r| r >= tokens)
        }
        Err(StoreError::CasMismatch | StoreError::Host(_)) => true,
    }
}

/// How many retries the router may make for `plan`: one per further slot, none
/// for a lone probe (its retry would hit the same recovering cluster), and none
/// when the client's remaining deadline cannot absorb another attempt.
pub fn max_retries(
    plan: &Plan,
    chain_len: usize,
    remaining_ms: Option<u64>,
    min_remaining_ms: u64,
) -> Option<usize> {
    if remaining_ms.is_some_and(|r| r < min_remaining_ms) {
        return Some(0);
    }
    if chain_len > 1 {
        return Some(plan.slots.len().saturating_sub(1));
    }
    // A single-cluster route keeps its own retry policy, except for probes.
    if plan.probe {
        Some(0)
    } else {
        None
    }
}

/// What the route answers when no cluster can take the request: 429 when the
/// providers asked for time (cool-down, quota), else 503; both with Retry-After.
pub fn unavailable_reply(u: &Unavailable, now_ms: u64, random: u64) -> LocalReply {
    let wait_ms = u.until_ms.map_or(1000, |t| t.saturating_sub(now_ms)).max(1);
    // Spread the comebacks a little so clients do not return in lockstep.
    let jitter = random % (wait_ms / 10 + 1);
    let wait_ms = wait_ms + jitter;
    let secs = wait_ms.div_ceil(1000).max(1);
    let (status, kind, code, msg) = if u.capacity {
        (
            429,
            "rate_limit_error",
            "upstream_rate_limited",
            format!("Every upstream for this route asked to wait; retry in {secs} s."),
        )
    } else {
        (
            503,
            "server_error",
            "upstream_unavailable",
            format!("No healthy upstream for this route; retry in {secs} s."),
        )
    };
    let mut r = LocalReply::openai_error(status, kind, code, &msg);
    r.headers
        .push(("retry-after".to_string(), secs.to_string()));
    r.headers
        .push(("retry-after-ms".to_string(), wait_ms.to_string()));
    r
}

/// The outcome class of one upstream answer, for metrics and the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    ClientError,
    RateLimited,
    ServerError,
    /// No answer: reset, connect failure, the client gone.
    Reset,
    /// No answer within the router's timeout for the attempt (per try, or the
    /// route's): the provider is slow rather than gone.
    Timeout,
}

impl Class {
    pub fn of_status(status: u32) -> Class {
        match status {
            429 => Class::RateLimited,
            500..=599 => Class::ServerError,
            400..=499 => Class::ClientError,
            0 => Class::Reset,
            _ => Class::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::ClientError => "client_error",
            Class::RateLimited => "rate_limited",
            Class::ServerError => "server_error",
            Class::Reset => "reset",
            Class::Timeout => "timeout",
        }
    }
}

/// What one attempt tells the circuit: a health outcome, and a cool-down when
/// the provider asked for time (every 429, for the wait it implies with
/// `default_cooldown_ms` when it names none; a 5xx carrying a wait header).
pub fn outcomes(
    class: Class,
    latency_ms: Option<u64>,
    signal: &Signal,
    default_cooldown_ms: u64,
) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(2);
    match class {
        Class::Ok | Class::ClientError => out.push(Outcome::Success {
            latency_ms: latency_ms.unwrap_or(0),
        }),
        Class::RateLimited => out.push(Outcome::RateLimited {
            cooldown_ms: Some(signal.rate_limited_wait_ms(default_cooldown_ms)),
        }),
        Class::ServerError | Class::Reset | Class::Timeout => {
            out.push(Outcome::Failure { latency_ms });
            if let (Class::ServerError, Some(ms)) = (class, signal.retry_after_ms) {
                out.push(Outcome::RateLimited {
                    cooldown_ms: Some(ms),
                });
            }
        }
    }
    out
}

/// The plan as the upstream instance reads it, one field per line: route name,
/// the model the body carries, the probe's cluster, the downstream stream's id
/// (so an attempt's fate can wait for the downstream's end), and the time by
/// which a retry must have been sent to leave the client's deadline its
/// `retry_min_remaining_seconds` (empty: the client named no deadline).
/// [`encode_plan_asked`] adds the model the client asked for and whether the
/// request asked for a stream (then a success's latency is its time to first
/// token, which only the downstream instance sees).
pub fn encode_plan(
    route: &str,
    body_model: Option<&str>,
    probe_cluster: Option<&str>,
    stream: u32,
    retry_by_ms: Option<u64>,
) -> String {
    encode_plan_asked(
        route,
        body_model,
        body_model,
        probe_cluster,
        stream,
        retry_by_ms,
        false,
    )
}

/// As [`encode_plan`], with the model the client asked for (`asked_model`),
/// which the served-by headers compare the attempt's model with, and whether
/// the request asked for a stream.
pub fn encode_plan_asked(
    route: &str,
    body_model: Option<&str>,
    asked_model: Option<&str>,
    probe_cluster: Option<&str>,
    stream: u32,
    retry_by_ms: Option<u64>,
    streamed: bool,
) -> String {
    let by = retry_by_ms.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{route}\n{}\n{}\n{stream}\n{by}\n{}\n{}",
        body_model.unwrap_or(""),
        probe_cluster.unwrap_or(""),
        asked_model.unwrap_or(""),
        u8::from(streamed)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanView<'a> {
    pub route: &'a str,
    pub body_model: Option<&'a str>,
    pub probe_cluster: Option<&'a str>,
    pub stream: Option<u32>,
    /// See [`encode_plan`].
    pub retry_by_ms: Option<u64>,
    /// The model the client asked for (`None`: the body named none).
    pub asked_model: Option<&'a str>,
    /// The request asked for a stream.
    pub streamed: bool,
}

pub fn decode_plan(s: &str) -> Option<PlanView<'_>> {
    let mut it = s.split('\n');
    let route = it.next().filter(|r| !r.is_empty())?;
    let body_model = it.next().filter(|m| !m.is_empty());
    let probe_cluster = it.next().filter(|m| !m.is_empty());
    let stream = it.next().and_then(|v| v.parse().ok());
    let retry_by_ms = it.next().and_then(|v| v.parse().ok());
    let asked_model = it.next().filter(|m| !m.is_empty());
    let streamed = it.next() == Some("1");
    Some(PlanView {
        route,
        body_model,
        probe_cluster,
        stream,
        retry_by_ms,
        asked_model,
        streamed,
    })
}

/// The longest wait the router is asked to make before a same-cluster retry:
/// the shipped routes' `rate_limited_retry_back_off.max_interval`. Envoy falls
/// back to its short exponential back-off for a reset header above the
/// route's `max_interval`, so a longer wait is never handed to it.
pub const MAX_ROUTER_WAIT_MS: u64 = 30_000;

/// What a same-cluster retry does after the provider asked for time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameClusterRetry {
    /// The router waits `secs` (then up to half as long again, its jitter)
    /// through `rate_limited_retry_back_off` and [`RETRY_AFTER_HEADER`].
    Wait { secs: u64 },
    /// No retry (`x-envoy-ratelimited` on the attempt's answer): the wait is
    /// longer than the router may be asked to make, or longer than the
    /// client's deadline leaves; the client gets the answer and its wait now.
    Refuse,
    /// The cluster is not cooling down (no wait named, no default cool-down):
    /// Envoy's own back-off applies.
    Unchanged,
}

/// Decides a same-cluster retry after an answer that cooled the cluster down
/// until `cooldown_until_ms`; `retry_by_ms` is the plan's (see [`encode_plan`]).
/// The router waits whole seconds, then its jitter adds up to half of that.
pub fn same_cluster_retry(
    now_ms: u64,
    cooldown_until_ms: Option<u64>,
    retry_by_ms: Option<u64>,
) -> SameClusterRetry {
    let wait = cooldown_until_ms.map_or(0, |u| u.saturating_sub(now_ms));
    if wait == 0 {
        return SameClusterRetry::Unchanged;
    }
    let secs = wait.div_ceil(1000).max(1);
    let latest = now_ms.saturating_add(secs.saturating_mul(1500));
    if secs.saturating_mul(1000) > MAX_ROUTER_WAIT_MS || retry_by_ms.is_some_and(|by| latest > by) {
        SameClusterRetry::Refuse
    } else {
        SameClusterRetry::Wait { secs }
    }
}

/// The whole seconds a client is told to wait (`retry-after`) for a cool-down
/// ending at `until_ms`: rounded up, at least 1.
pub fn retry_after_secs(now_ms: u64, until_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// Response header naming the cluster that served the answer.
pub const SERVED_BY_HEADER: &str = "x-llm-capacity-served-by";
/// Response header naming the model the answer was asked of.
pub const SERVED_MODEL_HEADER: &str = "x-llm-capacity-model";
/// Response header: `true` when the answer came from a fallback (not the
/// chain's primary, or not the model the client asked for), else `false`.
pub const FALLBACK_HEADER: &str = "x-llm-capacity-fallback";
/// The served-by headers: only the filter writes them (client copies are
/// stripped before the provider sees the request).
pub const SERVED_HEADERS: [&str; 3] = [SERVED_BY_HEADER, SERVED_MODEL_HEADER, FALLBACK_HEADER];

/// The served-by headers for an answer from `cluster` with `model`, on `route`
/// whose client asked for `asked`.
pub fn served_by_headers<'a>(
    route: &RoutePolicy,
    cluster: &'a str,
    model: Option<&'a str>,
    asked: Option<&str>,
) -> [(&'static str, &'a str); 3] {
    // With a strategy, every chain entry takes first attempts: none is the primary.
    let primary = route
        .clusters
        .first()
        .filter(|_| route.routing.strategy == crate::core::config::Strategy::Ordered)
        .map(|t| t.cluster.name.as_str());
    let fallback = primary.is_some_and(|p| p != cluster) || (asked.is_some() && model != asked);
    [
        (SERVED_BY_HEADER, cluster),
        (SERVED_MODEL_HEADER, model.unwrap_or("")),
        (FALLBACK_HEADER, if fallback { "true" } else { "false" }),
    ]
}

/// The model `cluster` serves `route` with, when it differs from `current`.
pub fn model_change<'a>(
    route: &'a RoutePolicy,
    cluster: &str,
    current: Option<&str>,
) -> Option<&'a str> {
    route
        .clusters
        .iter()
        .find(|t| t.cluster.name == cluster)
        .and_then(|t| t.model.as_deref())
        .filter(|m| Some(*m) != current)
}

/// Gemini names the model in the path (`/v1beta/models/<model>:<method>`).
pub fn gemini_path_with_model(path: &str, model: &str) -> Option<String> {
    let start = path.find("/models/")? + "/models/".len();
    let end = start + path[start..].find(':')?;
    Some(format!("{}{}{}", &path[..start], model, &path[end..]))
}

/// The body with its top-level `model` replaced; `None` if it is not a JSON object.
pub fn body_with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert(
        "model".to_string(),
        serde_json::Value::String(model.to_string()),
    );
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{Cluster, Provider};
    use crate::core::env::MemStore;
    use crate::core::upstream::circuit::CircuitConfig;
    use std::rc::Rc;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn chain(names: &[&str]) -> Vec<Target> {
        names
            .iter()
            .map(|n| Target {
                cluster: Rc::new(Cluster {
                    name: n.to_string(),
                    provider: Provider::OpenAi,
                    circuit: CircuitConfig {
                        consecutive_failures: 2,
                        open_ms: 10_000,
                        ..CircuitConfig::default()
                    },
                    adaptive: true,
                }),
                model: None,
                weight: 1,
            })
            .collect()
    }

    fn record(store: &MemStore, t: &Target, now: u64, o: Outcome) {
        circuit::record(
            store,
            &circuit::key(&t.cluster.name),
            &t.cluster.circuit,
            now,
            o,
            false,
        )
        .unwrap();
    }

    #[test]
    fn healthy_chain_plans_every_cluster_in_order() {
        let s = MemStore::default();
        let c = chain(&["a", "b", "c"]);
        let p = plan(&s, &c, 1000, 10).unwrap();
        assert_eq!(
            p,
            Plan {
                slots: vec![0, 1, 2],
                probe: false
            }
        );
        assert_eq!(max_retries(&p, 3, None, 2000), Some(2));
        assert_eq!(max_retries(&p, 3, Some(1500), 2000), Some(0));
    }

    #[test]
    fn cooling_primary_is_skipped_and_never_a_retry_target() {
        let s = MemStore::default();
        let c = chain(&["a", "b", "c"]);
        record(
            &s,
            &c[0],
            1000,
            Outcome::RateLimited {
                cooldown_ms: Some(5000),
            },
        );
        let p = plan(&s, &c, 1001, 10).unwrap();
        assert_eq!(p.slots, vec![1, 2]);
        // b cools too: only c is left, with no retry.
        record(
            &s,
            &c[1],
            1002,
            Outcome::RateLimited {
                cooldown_ms: Some(3000),
            },
        );
        let p = plan(&s, &c, 1003, 10).unwrap();
        assert_eq!(p.slots, vec![2]);
        assert_eq!(max_retries(&p, 3, None, 0), Some(0));
        // The failure rule leaves c out as well: a 429 answer for everything.
        record(
            &s,
            &c[2],
            1004,
            Outcome::RateLimited {
                cooldown_ms: Some(9000),
            },
        );
        let u = plan(&s, &c, 1005, 10).unwrap_err();
        assert_eq!(
            u,
            Unavailable {
                until_ms: Some(4002),
                capacity: true
            }
        );
        let r = unavailable_reply(&u, 1005, 0);
        assert_eq!(r.status, 429);
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "3"),
            "{:?}",
            r.headers
        );
    }

    #[test]
    fn open_circuits_give_503_and_later_slots_skip_probes() {
        let s = MemStore::default();
        let c = chain(&["a", "b"]);
        for t in &c {
            record(&s, t, 1000, Outcome::Failure { latency_ms: None });
            record(&s, t, 1000, Outcome::Failure { latency_ms: None });
        }
        let u = plan(&s, &c, 2000, 1).unwrap_err();
        assert!(!u.capacity);
        assert_eq!(u.until_ms, Some(11_000));
        assert_eq!(unavailable_reply(&u, 2000, 0).status, 503);
        // After open_ms the primary gets one probe; b (half-open too) is not a retry target.
        let p = plan(&s, &c, 11_000, 1).unwrap();
        assert_eq!(
            p,
            Plan {
                slots: vec![0],
                probe: true
            }
        );
        assert_eq!(max_retries(&p, 1, None, 0), Some(0));
        assert_eq!(
            max_retries(
                &Plan {
                    slots: vec![0],
                    probe: false
                },
                1,
                None,
                0
            ),
            None
        );
    }

    #[test]
    fn outcomes_by_class() {
        let sig = Signal {
            retry_after_ms: Some(2000),
            ..Signal::default()
        };
        assert_eq!(Class::of_status(200), Class::Ok);
        assert_eq!(Class::of_status(404), Class::ClientError);
        assert_eq!(Class::of_status(429), Class::RateLimited);
        assert_eq!(Class::of_status(503), Class::ServerError);
        assert_eq!(Class::of_status(0), Class::Reset);
        assert_eq!(
            outcomes(Class::RateLimited, Some(5), &sig, 1000),
            vec![Outcome::RateLimited {
                cooldown_ms: Some(2000)
            }]
        );
        assert_eq!(
            outcomes(Class::ServerError, Some(5), &sig, 1000),
            vec![
                Outcome::Failure {
                    latency_ms: Some(5)
                },
                Outcome::RateLimited {
                    cooldown_ms: Some(2000)
                }
            ]
        );
        assert_eq!(
            outcomes(Class::Reset, None, &Signal::default(), 1000),
            vec![Outcome::Failure { latency_ms: None }]
        );
        assert_eq!(
            outcomes(Class::ClientError, Some(7), &Signal::default(), 1000),
            vec![Outcome::Success { latency_ms: 7 }]
        );
    }

    #[test]
    fn a_bare_429_cools_down_for_the_default() {
        assert_eq!(
            outcomes(Class::RateLimited, Some(5), &Signal::default(), 2_000),
            vec![Outcome::RateLimited {
                cooldown_ms: Some(2_000)
            }]
        );
        // No default either: a zero wait, which the circuit ignores.
        assert_eq!(
            outcomes(Class::RateLimited, None, &Signal::default(), 0),
            vec![Outcome::RateLimited {
                cooldown_ms: Some(0)
            }]
        );
        // A 5xx without a named wait only counts as a failure.
        assert_eq!(
            outcomes(Class::ServerError, None, &Signal::default(), 2_000),
            vec![Outcome::Failure { latency_ms: None }]
        );
    }

    #[test]
    fn same_cluster_retry_waits_only_when_the_wait_fits() {
        use SameClusterRetry::*;
        // Not cooling down (or over): Envoy's own back-off.
        assert_eq!(same_cluster_retry(1_000, None, None), Unchanged);
        assert_eq!(same_cluster_retry(1_000, Some(900), None), Unchanged);
        // Rounded up to whole seconds: never earlier than the cool-down's end.
        assert_eq!(same_cluster_retry(0, Some(1), None), Wait { secs: 1 });
        assert_eq!(same_cluster_retry(0, Some(2_001), None), Wait { secs: 3 });
        assert_eq!(same_cluster_retry(0, Some(30_000), None), Wait { secs: 30 });
        // Above what the router may be asked to wait: no retry.
        assert_eq!(same_cluster_retry(0, Some(30_001), None), Refuse);
        // The client's deadline: the latest retry (1.5x, the router's jitter)
        // must leave its minimum remaining time.
        assert_eq!(
            same_cluster_retry(0, Some(2_000), Some(3_000)),
            Wait { secs: 2 }
        );
        assert_eq!(same_cluster_retry(0, Some(2_000), Some(2_999)), Refuse);
        assert_eq!(retry_after_secs(0, 1), 1);
        assert_eq!(retry_after_secs(0, 2_001), 3);
        assert_eq!(retry_after_secs(5_000, 1_000), 1);
    }

    #[test]
    fn plan_text_round_trips_and_models_rewrite() {
        let s = encode_plan("chat", Some("gpt-4o"), None, 42, Some(9_000));
        assert_eq!(
            decode_plan(&s),
            Some(PlanView {
                route: "chat",
                body_model: Some("gpt-4o"),
                probe_cluster: None,
                stream: Some(42),
                retry_by_ms: Some(9_000),
                asked_model: Some("gpt-4o"),
                streamed: false,
            })
        );
        let s = encode_plan("chat", None, None, 7, None);
        assert_eq!(decode_plan(&s).map(|p| p.retry_by_ms), Some(None));
        let s = encode_plan_asked("chat", Some("o1"), Some("gpt-4o"), None, 7, Some(5), true);
        assert_eq!(
            decode_plan(&s).map(|p| (p.body_model, p.asked_model, p.retry_by_ms, p.streamed)),
            Some((Some("o1"), Some("gpt-4o"), Some(5), true))
        );
        assert_eq!(
            decode_plan("chat\n\nemulator\nx").map(|p| (p.probe_cluster, p.stream, p.streamed)),
            Some((Some("emulator"), None, false))
        );
        assert_eq!(decode_plan(""), None);
        assert_eq!(
            gemini_path_with_model(
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                "gemini-2.5-flash"
            ),
            Some("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".to_string())
        );
        assert_eq!(gemini_path_with_model("/v1/chat/completions", "x"), None);
        let b = body_with_model(br#"{"model":"gpt-4o","messages":[]}"#, "gpt-4o-mini").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"], serde_json::json!([]));
        assert_eq!(body_with_model(b"[1]", "m"), None);
        assert_eq!(body_with_model(b"not json", "m"), None);
    }
}
