//! The global tier's configuration (`routes.<name>.global`, README "Global
//! limits"); the tier itself is `limits::global`.

use super::ConfigError;
use crate::core::limits::limiter::Limits;

/// Defaults and descriptor keys of the global tier.
pub const DEFAULT_DOMAIN: &str = "llm-capacity";
pub const DEFAULT_TIMEOUT_MS: u32 = 100;
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 1_000;
pub const UNIT_KEY: &str = "unit";
pub const ROUTE_KEY: &str = "llmcap_route";
/// The descriptor entry that names the unit counted.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit under the local limits, plus `fallback` (this replica's static share).
    Open,
    /// Refuse with 503 while the service cannot be asked.
    Closed,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    /// Envoy cluster (HTTP/2) of the rate limit service.
    pub cluster: String,
    pub domain: String,
    /// Entries every descriptor starts with; `None`: `llmcap_route=<route>`.
    pub descriptor: Option<Vec<(String, String)>>,
    pub timeout_ms: u32,
    pub lease_requests: u64,
    pub lease_tokens: u64,
    pub on_failure: FailurePolicy,
    /// Local limits that apply only while failing open: this replica's share.
    pub fallback: Option<Limits>,
    /// After a failed call, requests go straight to the failure policy this long.
    pub retry_interval_ms: u64,
}

/// Parses `global` (see docs/global-limits.md). `limits` parses the fallback's
/// limit fields the same way as `limits:`.
pub fn parse(
    v: &serde_json::Value,
    path: &str,
    limits: impl Fn(&serde_json::Value, &str) -> Result<Limits, ConfigError>,
) -> Result<GlobalConfig, ConfigError> {
    let err = |p: &str, m: String| ConfigError {
        path: p.to_string(),
        message: m,
    };
    let shown = |v: &serde_json::Value| v.to_string();
    let o = v
        .as_object()
        .ok_or_else(|| err(path, format!("expected an object, got {}", shown(v))))?;
    let known = [
        "cluster",
        "descriptor",
        "domain",
        "fallback_limits",
        "lease",
        "on_failure",
        "retry_interval_ms",
        "timeout_ms",
    ];
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(err(
            &format!("{path}.{k}"),
            format!("unknown field (known: {})", known.join(", ")),
        ));
    }
    let name = |key: &str| -> Result<Option<String>, ConfigError> {
        match o.get(key) {
            None => Ok(None),
            Some(x) => match x.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 128 => Ok(Some(s.to_string())),
                _ => Err(err(
                    &format!("{path}.{key}"),
                    format!(
                        "expected a non-empty string of at most 128 bytes, got {}",
                        shown(x)
                    ),
                )),
            },
        }
    };
    let cluster = name("cluster")?.filter(|c| c.len() <= 120);
    if cluster.is_none() {
        if let Some(c) = o.get("cluster") {
            return Err(err(
                &format!("{path}.cluster"),
                format!(
                    "expected a cluster name of at most 120 bytes, got {}",
                    shown(c)
                ),
            ));
        }
    }
    let cluster = cluster.ok_or_else(|| {
        err(
            path,
            "cluster is required (the Envoy cluster of the rate limit service)".to_string(),
        )
    })?;
    let domain = name("domain")?.unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    let int = |key: &str, lo: u64, hi: u64, default: u64| -> Result<u64, ConfigError> {
        match o.get(key) {
            None => Ok(default),
            Some(x) => match whole(x) {
                Some(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(err(
                    &format!("{path}.{key}"),
                    format!("expected an integer from {lo} to {hi}, got {}", shown(x)),
                )),
            },
        }
    };
    let timeout_ms = int("timeout_ms", 1, 10_000, u64::from(DEFAULT_TIMEOUT_MS))? as u32;
    let retry_interval_ms = int("retry_interval_ms", 0, 600_000, DEFAULT_RETRY_INTERVAL_MS)?;
    let descriptor = match o.get("descriptor") {
        None => None,
        Some(d) => {
            let dp = format!("{path}.descriptor");
            let m = d.as_object().filter(|m| !m.is_empty() && m.len() <= 8);
            let m = m.ok_or_else(|| {
                err(
                    &dp,
                    format!(
                        "expected an object of 1 to 8 entries (key: value), got {}",
                        shown(d)
                    ),
                )
            })?;
            let mut out = Vec::new();
            for (k, x) in m {
                match x.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= 128 && k.len() <= 128 && k != UNIT_KEY => {
                        out.push((k.clone(), s.to_string()))
                    }
                    _ => {
                        return Err(err(
                            &format!("{dp}.{k}"),
                            format!(
                                "expected a non-empty string of at most 128 bytes (and a key other than `{UNIT_KEY}`), got {}",
                                shown(x)
                            ),
                        ))
                    }
                }
            }
            Some(out)
        }
    };
    let (lease_requests, lease_tokens) = match o.get("lease") {
        None => (0, 0),
        Some(l) => {
            let lp = format!("{path}.lease");
            let m = l
                .as_object()
                .ok_or_else(|| err(&lp, format!("expected an object, got {}", shown(l))))?;
            if let Some(k) = m.keys().find(|k| *k != "requests" && *k != "tokens") {
                return Err(err(
                    &format!("{lp}.{k}"),
                    "unknown field (known: requests, tokens)".to_string(),
                ));
            }
            let get = |key: &str, hi: u64| -> Result<u64, ConfigError> {
                match m.get(key) {
                    None => Ok(0),
                    Some(x) => match whole(x) {
                        Some(n) if n <= hi => Ok(n),
                        _ => Err(err(
                            &format!("{lp}.{key}"),
                            format!("expected an integer from 0 to {hi}, got {}", shown(x)),
                        )),
                    },
                }
            };
            (get("requests", 100_000)?, get("tokens", 100_000_000)?)
        }
    };
    let on_failure = match o.get("on_failure") {
        None => FailurePolicy::Open,
        Some(x) => match x.as_str() {
            Some("open") => FailurePolicy::Open,
            Some("closed") => FailurePolicy::Closed,
            _ => {
                return Err(err(
                    &format!("{path}.on_failure"),
                    format!("expected one of open, closed, got {}", shown(x)),
                ))
            }
        },
    };
    let fallback = match o.get("fallback_limits") {
        None => None,
        Some(x) => {
            let fp = format!("{path}.fallback_limits");
            if on_failure == FailurePolicy::Closed {
                return Err(err(&fp, "applies only with on_failure: open".to_string()));
            }
            Some(limits(x, &fp)?)
        }
    };
    Ok(GlobalConfig {
        cluster,
        domain,
        descriptor,
        timeout_ms,
        lease_requests,
        lease_tokens,
        on_failure,
        fallback,
        retry_interval_ms,
    })
}

/// A whole number as JSON, a protobuf Struct double, or a numeric string.
fn whole(x: &serde_json::Value) -> Option<u64> {
    x.as_u64()
        .or_else(|| {
            x.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..9.0e15).contains(f))
                .map(|f| f as u64)
        })
        .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
}
