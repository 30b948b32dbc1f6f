//! A route's response cache (`cache:`): the exact cache, request collapsing and
//! idempotency keys. See docs/configuration.md, "Response cache".

use super::*;

/// Which requests the cache may answer and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheWhen {
    /// Only requests that ask for determinism (`temperature: 0`, or a `seed`).
    Deterministic,
    /// Only requests carrying `x-llm-capacity-cache: allow`.
    OptIn,
}

/// A route's cache, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl_ms: u64,
    /// Slots of the table (one entry each).
    pub max_entries: u32,
    /// Largest answer stored (body bytes); a longer one is not stored.
    pub max_entry_bytes: u32,
    /// Bytes held by every entry of the route together.
    pub max_total_bytes: u64,
    pub when: CacheWhen,
    /// Every caller shares the route's entries (no credential or tenant in the key).
    pub shared: bool,
    /// A hit counts against the route's requests-per-minute limits.
    pub count_hits: bool,
    /// How long an answer stored under an `Idempotency-Key` is kept.
    pub idempotency_ttl_ms: u64,
    /// How long an identical request waits for one in flight (0: no collapsing).
    pub collapse_wait_ms: u64,
    /// Requests waiting for one in flight, per key, across the Envoy.
    pub collapse_max_waiters: u32,
}

pub const CACHE_FIELDS: &[&str] = &[
    "collapse_max_waiters",
    "collapse_wait_seconds",
    "count_hits",
    "idempotency_ttl_seconds",
    "max_entries",
    "max_entry_bytes",
    "max_total_bytes",
    "shared",
    "ttl_seconds",
    "when",
];

/// Most slots a route's table may have (its accounting record holds 4 bytes each).
pub const MAX_CACHE_ENTRIES: u64 = 16_384;
/// Largest entry: the body cap of a JSON answer the filter reads.
pub const MAX_CACHE_ENTRY_BYTES: u64 = 1_048_576;
/// Most bytes one route's cache may hold in shared data.
pub const MAX_CACHE_TOTAL_BYTES: u64 = 1 << 30;

fn int_in(v: &Value, path: &str, what: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = uint(v, path, what)?;
    if n < min || n > max {
        return Err(err(
            path,
            format!("must be between {min} and {max}, got {n}"),
        ));
    }
    Ok(n)
}

pub(super) fn cache(v: &Value, path: &str) -> Result<CacheConfig, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let ttl_ms = match o.take("ttl_seconds") {
        Some((v, p)) => seconds(v, &p, 1.0, 86_400.0)?,
        None => 300_000,
    };
    let max_entries = match o.take("max_entries") {
        Some((v, p)) => int_in(v, &p, "a positive integer", 1, MAX_CACHE_ENTRIES)? as u32,
        None => 1024,
    };
    let max_entry_bytes = match o.take("max_entry_bytes") {
        Some((v, p)) => int_in(
            v,
            &p,
            "a positive integer (bytes)",
            1,
            MAX_CACHE_ENTRY_BYTES,
        )? as u32,
        None => 65_536,
    };
    let max_total_bytes = match o.take("max_total_bytes") {
        Some((v, p)) => {
            let n = int_in(
                v,
                &p,
                "a positive integer (bytes)",
                1,
                MAX_CACHE_TOTAL_BYTES,
            )?;
            if n < u64::from(max_entry_bytes) {
                return Err(err(
                    &p,
                    format!("must be at least max_entry_bytes ({max_entry_bytes}), got {n}"),
                ));
            }
            n
        }
        None => (u64::from(max_entry_bytes) * u64::from(max_entries)).min(16 << 20),
    }
    .max(u64::from(max_entry_bytes));
    let when = match o.take("when") {
        Some((v, p)) => match str_enum(v, &p, &["deterministic", "opt_in"])? {
            "opt_in" => CacheWhen::OptIn,
            _ => CacheWhen::Deterministic,
        },
        None => CacheWhen::Deterministic,
    };
    let shared = match o.take("shared") {
        Some((v, p)) => boolean(v, &p)?,
        None => false,
    };
    let count_hits = match o.take("count_hits") {
        Some((v, p)) => boolean(v, &p)?,
        None => false,
    };
    let idempotency_ttl_ms = match o.take("idempotency_ttl_seconds") {
        Some((v, p)) => seconds(v, &p, 1.0, 604_800.0)?,
        None => 86_400_000,
    };
    let collapse_wait_ms = match o.take("collapse_wait_seconds") {
        Some((v, p)) => seconds(v, &p, 0.0, 300.0)?,
        None => 30_000,
    };
    let collapse_max_waiters = match o.take("collapse_max_waiters") {
        Some((v, p)) => int_in(v, &p, "a positive integer", 1, 10_000)? as u32,
        None => 256,
    };
    o.finish(CACHE_FIELDS)?;
    Ok(CacheConfig {
        ttl_ms,
        max_entries,
        max_entry_bytes,
        max_total_bytes,
        when,
        shared,
        count_hits,
        idempotency_ttl_ms,
        collapse_wait_ms,
        collapse_max_waiters,
    })
}
