//! Cluster chains and circuit settings.

use super::*;

/// A chain entry: `name`, or `{cluster: name, model: m, weight: w}`.
pub(super) fn chain_entry<'v>(
    item: &'v Value,
    path: &str,
) -> Result<(&'v str, Option<String>, Option<u32>), ConfigError> {
    if let Some(name) = item.as_str() {
        return Ok((name, None, None));
    }
    let mut o = Obj::new(item, path)
        .map_err(|_| type_err(path, "a cluster name or {cluster, model}", item))?;
    let name = match o.take("cluster") {
        Some((v, p)) => v
            .as_str()
            .ok_or_else(|| type_err(&p, "a cluster name", v))?,
        None => return Err(err(path, "cluster is required".to_string())),
    };
    let model = match o.take("model") {
        None => None,
        Some((v, p)) => Some(
            v.as_str()
                .filter(|m| {
                    !m.is_empty() && m.len() <= MAX_NAME_LEN && !m.contains(['/', ':', '?', '#'])
                })
                .ok_or_else(|| type_err(&p, "a model name (1 to 128 characters, no / : ? #)", v))?
                .to_string(),
        ),
    };
    let weight = match o.take("weight") {
        None => None,
        Some((v, p)) => Some(super::routing::weight(v, &p)?),
    };
    o.finish(&["cluster", "model", "weight"])?;
    Ok((name, model, weight))
}

pub(super) fn circuit_config(v: &Value, path: &str) -> Result<CircuitConfig, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let mut c = CircuitConfig::default();
    let int = |v: &Value, p: &str, lo: u64, hi: u64| -> Result<u64, ConfigError> {
        let n = uint(v, p, "a non-negative integer")?;
        if n < lo || n > hi {
            return Err(err(p, format!("must be between {lo} and {hi}, got {n}")));
        }
        Ok(n)
    };
    if let Some((v, p)) = o.take("window_seconds") {
        c.window_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("min_requests") {
        c.min_requests = int(v, &p, 1, 100_000)? as u32;
    }
    if let Some((v, p)) = o.take("error_rate") {
        c.error_rate = match number(v) {
            Some(f) if f > 0.0 && f <= 1.0 => f,
            _ => return Err(type_err(&p, "a number above 0 and at most 1", v)),
        };
    }
    if let Some((v, p)) = o.take("consecutive_failures") {
        c.consecutive_failures = int(v, &p, 0, 100_000)? as u32;
    }
    if let Some((v, p)) = o.take("latency_p95_ms") {
        c.latency_p95_ms = int(v, &p, 0, 3_600_000)?;
    }
    if let Some((v, p)) = o.take("open_seconds") {
        c.open_ms = seconds(v, &p, 0.1, 3600.0)?;
    }
    if let Some((v, p)) = o.take("half_open_probes") {
        c.half_open_probes = int(v, &p, 1, 100)? as u32;
    }
    if let Some((v, p)) = o.take("probe_timeout_seconds") {
        c.probe_timeout_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("default_cooldown_seconds") {
        c.default_cooldown_ms = seconds(v, &p, 0.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("max_cooldown_seconds") {
        c.max_cooldown_ms = seconds(v, &p, 1.0, 86_400.0)?;
    }
    if let Some((v, p)) = o.take("latency_relative") {
        c.latency_relative = Some(relative_latency(v, &p)?);
    }
    o.finish(&[
        "consecutive_failures",
        "default_cooldown_seconds",
        "error_rate",
        "half_open_probes",
        "latency_p95_ms",
        "latency_relative",
        "max_cooldown_seconds",
        "min_requests",
        "open_seconds",
        "probe_timeout_seconds",
        "window_seconds",
    ])?;
    Ok(c)
}

/// `circuit.latency_relative`: every field has a default, so `{}` turns it on.
fn relative_latency(v: &Value, path: &str) -> Result<RelativeLatency, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let mut r = RelativeLatency {
        factor: 2.0,
        window_ms: 300_000,
        min_requests: 20,
        baseline_half_life_ms: 3_600_000,
    };
    if let Some((v, p)) = o.take("factor") {
        r.factor = match number(v) {
            Some(f) if f > 1.0 && f <= 100.0 => f,
            _ => return Err(type_err(&p, "a number above 1 and at most 100", v)),
        };
    }
    if let Some((v, p)) = o.take("window_seconds") {
        r.window_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("min_requests") {
        let n = uint(v, &p, "a non-negative integer")?;
        if !(1..=100_000).contains(&n) {
            return Err(err(&p, format!("must be between 1 and 100000, got {n}")));
        }
        r.min_requests = n as u32;
    }
    let half_life = o.take("baseline_half_life_seconds");
    if let Some((v, p)) = &half_life {
        r.baseline_half_life_ms = seconds(v, p, 1.0, 604_800.0)?;
    }
    // A baseline that moves as fast as the window follows the slowdown it is
    // meant to catch.
    if r.baseline_half_life_ms < r.window_ms {
        let p = half_life.map_or_else(|| format!("{path}.baseline_half_life_seconds"), |(_, p)| p);
        return Err(err(
            &p,
            format!(
                "must be at least window_seconds ({}), got {}",
                r.window_ms as f64 / 1000.0,
                r.baseline_half_life_ms as f64 / 1000.0
            ),
        ));
    }
    o.finish(&[
        "baseline_half_life_seconds",
        "factor",
        "min_requests",
        "window_seconds",
    ])?;
    Ok(r)
}
