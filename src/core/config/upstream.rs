//! Cluster chains and circuit settings.

use super::*;

/// A chain entry: `name`, or `{cluster: name, model: m}`.
pub(super) fn chain_entry<'v>(
    item: &'v Value,
    path: &str,
) -> Result<(&'v str, Option<String>), ConfigError> {
    if let Some(name) = item.as_str() {
        return Ok((name, None));
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
    o.finish(&["cluster", "model"])?;
    Ok((name, model))
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
    o.finish(&[
        "consecutive_failures",
        "default_cooldown_seconds",
        "error_rate",
        "half_open_probes",
        "latency_p95_ms",
        "max_cooldown_seconds",
        "min_requests",
        "open_seconds",
        "probe_timeout_seconds",
        "window_seconds",
    ])?;
    Ok(c)
}
