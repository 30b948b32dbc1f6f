//! Feeding what upstream answers say into the clusters' circuits, with metrics.
//! Shared by the upstream instance (every attempt) and the downstream one
//! (final answer only, when no upstream instance is configured).

use crate::core::config::Config;
use crate::core::host::Host;
use crate::core::telemetry::{
    CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL, COOLDOWNS_TOTAL, PROVIDER_REMAINING,
    UPSTREAM_ATTEMPTS_TOTAL,
};
use crate::core::upstream::circuit::{self, Mode, Outcome};
use crate::core::upstream::failover::{self, Class};
use crate::core::upstream::provider_headers::Signal;

fn mode_str(m: Mode) -> (&'static str, u64) {
    match m {
        Mode::Closed => ("closed", 0),
        Mode::HalfOpen => ("half_open", 1),
        Mode::Open => ("open", 2),
    }
}

/// Publishes a circuit state change (gauge, counter, log line).
pub fn transition(config: &Config, h: &mut dyn Host, cluster: &str, m: Mode) {
    let (name, value) = mode_str(m);
    log::info!("llm-capacity: circuit for cluster {cluster} is now {name}");
    if config.telemetry.metrics {
        h.set_gauge(&[("cluster", cluster)], CIRCUIT_STATE, value);
        h.count(
            &[("cluster", cluster), ("state", name)],
            CIRCUIT_TRANSITIONS_TOTAL,
            1,
        );
    }
}

/// One attempt's answer (or its absence), as health data for its cluster.
pub struct Observation<'a> {
    pub cluster: &'a str,
    /// The attempt was the cluster's probe: its claim is released.
    pub probe: bool,
    pub class: Class,
    pub latency_ms: Option<u64>,
    pub signal: &'a Signal,
    pub now_ms: u64,
    /// A streamed success: its circuit outcome comes later, from
    /// [`first_token`], timed to its first token.
    pub ttft_later: bool,
}

/// Records one attempt's answer (or its absence) against its cluster. Returns
/// the end of the cluster's cool-down when the answer asked for time (so a
/// same-cluster retry and the client's `retry-after` follow the wait in force).
pub fn observe(config: &Config, h: &mut dyn Host, o: &Observation<'_>) -> Option<u64> {
    let &Observation {
        cluster,
        probe,
        class,
        latency_ms,
        signal,
        now_ms,
        ttft_later,
    } = o;
    let Some(c) = config.clusters.get(cluster) else {
        return None; // a cluster the config does not know has no circuit
    };
    let key = circuit::key(cluster);
    let mut cooled = false;
    let outcomes = if ttft_later && class == Class::Ok {
        Vec::new()
    } else {
        failover::outcomes(class, latency_ms, signal, c.circuit.default_cooldown_ms)
    };
    // The outcomes and the provider's quota: one read and one write of the
    // circuit (the probe claim is released once, with the first outcome).
    let quota = (c.adaptive
        && (signal.requests.remaining.is_some() || signal.tokens.remaining.is_some()))
    .then_some((
        (signal.requests.remaining, signal.requests.reset_ms),
        (signal.tokens.remaining, signal.tokens.reset_ms),
    ));
    match circuit::record_answer(&*h, &key, &c.circuit, now_ms, &outcomes, probe, quota) {
        Ok(modes) => {
            for m in modes {
                transition(config, h, cluster, m);
            }
        }
        Err(e) => log::debug!("llm-capacity: circuit update for {cluster} failed ({e:?})"),
    }
    for o in &outcomes {
        if let Outcome::RateLimited { cooldown_ms } = *o {
            cooled = cooldown_ms.is_some_and(|ms| ms > 0);
            if cooled && config.telemetry.metrics {
                h.count(&[("cluster", cluster)], COOLDOWNS_TOTAL, 1);
            }
        }
    }
    if config.telemetry.metrics {
        h.count(
            &[("cluster", cluster), ("class", class.as_str())],
            UPSTREAM_ATTEMPTS_TOTAL,
            1,
        );
        for (dim, q) in [("requests", signal.requests), ("tokens", signal.tokens)] {
            if let Some(r) = q.remaining {
                h.set_gauge(
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
    circuit::view(&*h, &key, &c.circuit, now_ms)
        .ok()
        .and_then(|v| v.cooldown_until_ms)
}

/// A streamed success's circuit outcome, timed to its first token (or to its
/// end, or its headers, when no token came).
pub fn first_token(
    config: &Config,
    h: &mut dyn Host,
    cluster: &str,
    probe: bool,
    ttft_ms: u64,
    now_ms: u64,
) {
    let Some(c) = config.clusters.get(cluster) else {
        return;
    };
    let o = Outcome::Success {
        latency_ms: ttft_ms,
    };
    match circuit::record(&*h, &circuit::key(cluster), &c.circuit, now_ms, o, probe) {
        Ok(Some(m)) => transition(config, h, cluster, m),
        Ok(None) => {}
        Err(e) => log::debug!("llm-capacity: circuit update for {cluster} failed ({e:?})"),
    }
}

/// A wait learnt after the headers (Gemini's `retryDelay` in the error body).
pub fn cool_down(config: &Config, h: &mut dyn Host, cluster: &str, ms: u64, now_ms: u64) {
    let Some(c) = config.clusters.get(cluster) else {
        return;
    };
    let o = Outcome::RateLimited {
        cooldown_ms: Some(ms),
    };
    match circuit::record(&*h, &circuit::key(cluster), &c.circuit, now_ms, o, false) {
        Ok(Some(m)) => transition(config, h, cluster, m),
        Ok(None) => {}
        Err(e) => log::debug!("llm-capacity: cool-down for {cluster} failed ({e:?})"),
    }
}
