//! A route's routing: the strategy of its first attempt, and its retry budget.

use super::*;

/// How a route's first attempt picks its cluster among the healthy entries of
/// its chain; the rest of the plan keeps chain order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// The first healthy entry (the default).
    Ordered,
    /// Drawn by each entry's `weight`.
    Weighted,
    /// The entry with the lowest recent time to first token, except for an
    /// `exploration` share drawn uniformly among the other healthy entries.
    LowestLatency {
        /// Half-life of the decaying average, in ms.
        half_life_ms: u64,
        /// Share of first attempts sent to another healthy entry, so a cluster
        /// that got slow is measured again.
        exploration: f64,
        /// Entries whose average is within this fraction of the best one's
        /// count as equally fast and share the first attempts evenly.
        tolerance: f64,
    },
}

impl Strategy {
    /// The metric label of the strategy.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Ordered => "ordered",
            Strategy::Weighted => "weighted",
            Strategy::LowestLatency { .. } => "lowest_latency",
        }
    }
}

/// A route's routing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub strategy: Strategy,
    /// Retries share of the route's requests over the window, in percent;
    /// beyond it the router is told `x-envoy-max-retries: 0`.
    pub retry_budget_percent: u32,
    pub retry_budget_window_ms: u64,
    /// `retry_budget_percent` was given: the budget also holds on a route
    /// with a single cluster (a chain of two or more always has it).
    pub retry_budget_explicit: bool,
    /// Hedging: a second attempt when the first has no response headers in time.
    pub hedge: Option<Hedge>,
}

/// A route's hedging: when an attempt has no response headers after
/// `after_ms`, the router sends the next attempt of the plan while the first
/// keeps running; the first answer wins and the other is reset.
///
/// In Envoy 1.40 a hedged request's attempts all go to the cluster its first
/// attempt went to (the router does not re-run the cluster specifier while
/// hedging), so the first attempt goes to `cluster`: an Envoy composite
/// cluster (`envoy.clusters.composite`) listing the route's chain in order,
/// which sends attempt n to its n-th cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Hedge {
    /// The attempt's wait for response headers before the hedge is sent, in ms
    /// (the router's per-try timeout, soft: the attempt is not reset).
    pub after_ms: u64,
    /// Share of the route's requests that may be hedged over a sliding minute,
    /// counted across workers (armed hedges that never fired are given back).
    pub max_share: f64,
    /// The Envoy composite cluster over the route's chain (see above).
    pub cluster: String,
}

impl Routing {
    /// Whether the retry budget applies to a route with a chain of `chain` entries.
    pub fn budgeted(&self, chain: usize) -> bool {
        chain >= 2 || (chain == 1 && self.retry_budget_explicit)
    }
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            strategy: Strategy::Ordered,
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            retry_budget_window_ms: DEFAULT_RETRY_BUDGET_WINDOW_MS,
            retry_budget_explicit: false,
            hedge: None,
        }
    }
}

pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 10;
pub const DEFAULT_RETRY_BUDGET_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_LATENCY_HALF_LIFE_MS: u64 = 5_000;
pub const DEFAULT_EXPLORATION: f64 = 0.05;
pub const DEFAULT_LATENCY_TOLERANCE: f64 = 0.2;
/// Largest `weight` of a chain entry.
pub const MAX_WEIGHT: u64 = 10_000;
/// Default `hedge.max_share`: 5% of the route's requests.
pub const DEFAULT_HEDGE_MAX_SHARE: f64 = 0.05;
/// Largest `hedge.after_ms` (ten minutes: longer is the route's timeout's job).
pub const MAX_HEDGE_AFTER_MS: u64 = 600_000;

/// The route-level fields read here.
pub(super) const ROUTE_FIELDS: &[&str] = &[
    "hedge",
    "lowest_latency",
    "retry_budget_percent",
    "retry_budget_window_seconds",
    "strategy",
];

/// Reads a route's routing fields; `weights` are the chain entries' `weight`
/// (`None` when not given), checked against the strategy.
pub(super) fn routing(
    r: &mut Obj<'_>,
    route_path: &str,
    weights: &[Option<u32>],
) -> Result<Routing, ConfigError> {
    let mut out = Routing::default();
    let strategy = match r.take("strategy") {
        None => "ordered",
        Some((v, p)) => str_enum(v, &p, &["ordered", "weighted", "lowest_latency"])?,
    };
    let ll = r.take("lowest_latency");
    out.strategy = match strategy {
        "weighted" => Strategy::Weighted,
        "lowest_latency" => {
            let mut half_life_ms = DEFAULT_LATENCY_HALF_LIFE_MS;
            let mut exploration = DEFAULT_EXPLORATION;
            let mut tolerance = DEFAULT_LATENCY_TOLERANCE;
            if let Some((v, p)) = &ll {
                let mut o = Obj::new(v, p)?;
                if let Some((v, p)) = o.take("half_life_seconds") {
                    half_life_ms = seconds(v, &p, 0.1, 3600.0)?;
                }
                if let Some((v, p)) = o.take("exploration") {
                    exploration = match number(v) {
                        Some(f) if (0.0..=0.5).contains(&f) => f,
                        _ => return Err(type_err(&p, "a number from 0 to 0.5", v)),
                    };
                }
                if let Some((v, p)) = o.take("tolerance") {
                    tolerance = match number(v) {
                        Some(f) if (0.0..=1.0).contains(&f) => f,
                        _ => return Err(type_err(&p, "a number from 0 to 1", v)),
                    };
                }
                o.finish(&["exploration", "half_life_seconds", "tolerance"])?;
            }
            Strategy::LowestLatency {
                half_life_ms,
                exploration,
                tolerance,
            }
        }
        _ => Strategy::Ordered,
    };
    if let (Some((_, p)), false) = (&ll, strategy == "lowest_latency") {
        return Err(err(
            p,
            "is only read with strategy: lowest_latency".to_string(),
        ));
    }
    let clusters = join(route_path, "clusters");
    if strategy == "weighted" {
        if weights.len() < 2 {
            return Err(err(
                &join(route_path, "strategy"),
                "weighted needs a chain of at least 2 clusters".to_string(),
            ));
        }
        if weights.iter().all(|w| w.unwrap_or(1) == 0) {
            return Err(err(&clusters, "every weight is 0".to_string()));
        }
    } else if let Some(i) = weights.iter().position(Option::is_some) {
        return Err(err(
            &format!("{clusters}[{i}].weight"),
            "is only read with strategy: weighted".to_string(),
        ));
    }
    if let Some((v, p)) = r.take("retry_budget_percent") {
        let n = uint(v, &p, "a whole percentage")?;
        if n > 100 {
            return Err(err(&p, format!("must be between 0 and 100, got {n}")));
        }
        out.retry_budget_percent = n as u32;
        out.retry_budget_explicit = true;
    }
    if let Some((v, p)) = r.take("retry_budget_window_seconds") {
        out.retry_budget_window_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = r.take("hedge") {
        out.hedge = Some(hedge(v, &p, weights.len())?);
    }
    Ok(out)
}

/// A route's `hedge`: `after_ms` (required) and `max_share`.
fn hedge(v: &Value, path: &str, chain: usize) -> Result<Hedge, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let after_ms = match o.take("after_ms") {
        Some((v, p)) => {
            let n = uint(v, &p, "a whole number of milliseconds")?;
            if n == 0 || n > MAX_HEDGE_AFTER_MS {
                return Err(err(
                    &p,
                    format!("must be between 1 and {MAX_HEDGE_AFTER_MS}, got {n}"),
                ));
            }
            n
        }
        None => return Err(err(path, "needs after_ms".to_string())),
    };
    let max_share = match o.take("max_share") {
        Some((v, p)) => match number(v) {
            Some(f) if f > 0.0 && f <= 1.0 => f,
            _ => return Err(type_err(&p, "a number above 0, at most 1", v)),
        },
        None => DEFAULT_HEDGE_MAX_SHARE,
    };
    let cluster = match o.take("cluster") {
        Some((Value::String(c), _)) if !c.is_empty() => c.clone(),
        Some((v, p)) => return Err(type_err(&p, "a cluster name", v)),
        None => {
            return Err(err(
                path,
                "needs cluster (the Envoy composite cluster over the route's chain)".to_string(),
            ))
        }
    };
    o.finish(&["after_ms", "cluster", "max_share"])?;
    if chain < 2 {
        return Err(err(
            path,
            "hedging needs a chain of at least 2 clusters (the hedge goes to the next one)"
                .to_string(),
        ));
    }
    Ok(Hedge {
        after_ms,
        max_share,
        cluster,
    })
}

/// A chain entry's `weight`: a whole number from 0 to [`MAX_WEIGHT`].
pub(super) fn weight(v: &Value, path: &str) -> Result<u32, ConfigError> {
    let n = uint(v, path, "a whole number")?;
    if n > MAX_WEIGHT {
        return Err(err(
            path,
            format!("must be between 0 and {MAX_WEIGHT}, got {n}"),
        ));
    }
    Ok(n as u32)
}
