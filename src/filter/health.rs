//! Feeding what upstream answers say into the clusters' circuits, with metrics.
//! Shared by the upstream instance (every attempt) and the downstream one
//! (final answer only, when no upstream instance is configured).

use super::metrics::Metrics;
use super::HostStore;
use crate::core::circuit::{self, Mode, Outcome};
use crate::core::config::Config;
use crate::core::failover::{self, Class};
use crate::core::provider_headers::Signal;
use crate::core::telemetry::{
    CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL, COOLDOWNS_TOTAL, PROVIDER_REMAINING,
    UPSTREAM_ATTEMPTS_TOTAL,
};
use std::cell::RefCell;

fn mode_str(m: Mode) -> (&'static str, u64) {
    match m {
        Mode::Closed => ("closed", 0),
        Mode::HalfOpen => ("half_open", 1),
        Mode::Open => ("open", 2),
    }
}

/// Publishes a circuit state change (gauge, counter, log line).
pub fn transition(config: &Config, metrics: &RefCell<Metrics>, cluster: &str, m: Mode) {
    let (name, value) = mode_str(m);
    log::info!("llm-capacity: circuit for cluster {cluster} is now {name}");
    if config.telemetry.metrics {
        let mut mm = metrics.borrow_mut();
        mm.set_gauge(&[("cluster", cluster)], CIRCUIT_STATE, value);
        mm.count(
            &[("cluster", cluster), ("state", name)],
            CIRCUIT_TRANSITIONS_TOTAL,
            1,
        );
    }
}

/// Records one attempt's answer (or its absence) against `cluster`. Returns
/// the end of the cluster's cool-down when the answer asked for time (so a
/// same-cluster retry and the client's `retry-after` follow the wait in force).
#[allow(clippy::too_many_arguments)]
pub fn observe(
    config: &Config,
    metrics: &RefCell<Metrics>,
    cluster: &str,
    probe: bool,
    class: Class,
    latency_ms: Option<u64>,
    signal: &Signal,
    now_ms: u64,
) -> Option<u64> {
    let Some(c) = config.clusters.get(cluster) else {
        return None; // a cluster the config does not know has no circuit
    };
    let key = circuit::key(cluster);
    let mut cooled = false;
    let outcomes = failover::outcomes(class, latency_ms, signal, c.circuit.default_cooldown_ms);
    for (i, o) in outcomes.into_iter().enumerate() {
        // The probe claim is released once, with the first outcome.
        match circuit::record(&HostStore, &key, &c.circuit, now_ms, o, probe && i == 0) {
            Ok(Some(m)) => transition(config, metrics, cluster, m),
            Ok(None) => {}
            Err(e) => log::debug!("llm-capacity: circuit update for {cluster} failed ({e:?})"),
        }
        if let Outcome::RateLimited { cooldown_ms } = o {
            cooled = cooldown_ms.is_some_and(|ms| ms > 0);
            if cooled && config.telemetry.metrics {
                metrics
                    .borrow_mut()
                    .count(&[("cluster", cluster)], COOLDOWNS_TOTAL, 1);
            }
        }
    }
    if c.adaptive && (signal.requests.remaining.is_some() || signal.tokens.remaining.is_some()) {
        let r = (signal.requests.remaining, signal.requests.reset_ms);
        let t = (signal.tokens.remaining, signal.tokens.reset_ms);
        if let Err(e) = circuit::observe_quota(&HostStore, &key, &c.circuit, now_ms, r, t) {
            log::debug!("llm-capacity: quota update for {cluster} failed ({e:?})");
        }
    }
    if config.telemetry.metrics {
        let mut m = metrics.borrow_mut();
        m.count(
            &[("cluster", cluster), ("class", class.as_str())],
            UPSTREAM_ATTEMPTS_TOTAL,
            1,
        );
        for (dim, q) in [("requests", signal.requests), ("tokens", signal.tokens)] {
            if let Some(r) = q.remaining {
                m.set_gauge(
                    &[("cluster", cluster), ("limit", dim)],
                    PROVIDER_REMAINING,
                    r,
                );
            }
        }
    }
    if !cooled {
        return None;
    }
    // The wait in force: this answer's, or a longer one already recorded.
    circuit::view(&HostStore, &key, &c.circuit, now_ms)
        .ok()
        .and_then(|v| v.cooldown_until_ms)
}

/// A wait learnt after the headers (Gemini's `retryDelay` in the error body).
pub fn cool_down(config: &Config, metrics: &RefCell<Metrics>, cluster: &str, ms: u64, now_ms: u64) {
    let Some(c) = config.clusters.get(cluster) else {
        return;
    };
    let o = Outcome::RateLimited {
        cooldown_ms: Some(ms),
    };
    match circuit::record(
        &HostStore,
        &circuit::key(cluster),
        &c.circuit,
        now_ms,
        o,
        false,
    ) {
        Ok(Some(m)) => transition(config, metrics, cluster, m),
        Ok(None) => {}
        Err(e) => log::debug!("llm-capacity: cool-down for {cluster} failed ({e:?})"),
    }
}
