//! Requests-per-minute and tokens-per-minute limits, kept in Envoy shared data so
//! every worker agrees.
//!
//! Each limited scope (a route, or a tenant on a route) is one small value in
//! shared data holding a token bucket per dimension (requests, tokens, input
//! tokens, output tokens) and an in-flight count, updated by compare-and-swap
//! with bounded retries.
//!
//! The buckets may go into debt: a request is admitted while a bucket's balance is
//! positive and is then charged its whole cost, so a balance can fall below zero
//! by at most one request. Refill is continuous at `limit / 60 s`, capped at the
//! burst depth. Over any window `W` the admitted amount is therefore at most
//! `rate x W + burst + one request`, whatever the request sizes, and a request
//! larger than the burst is still admissible. Token buckets are charged the
//! reservation at admission and corrected with the real usage at the end
//! ([`settle`]), so bursts of concurrent requests cannot overshoot and long
//! answers are not undercounted.
//!
//! Daily quotas (`requests_per_day`, `tokens_per_day`) are counters per UTC
//! day in the same value: admitted while the day's count is under the quota
//! (so over by at most one request), charged the reservation, corrected with
//! the real usage at the end like the token buckets, and reset at midnight UTC.
//!
//! Time comes from the host's wall clock; if it steps backwards the state keeps
//! its last time (no refill, never a negative interval).

use crate::core::env::{stable_hash, SharedStore, StoreError};
use serde::{Deserialize, Serialize};

/// CAS attempts before giving up on one update (the caller then fails open).
pub const CAS_RETRIES: u32 = 16;
/// Tenant slots probed for one tenant before one is taken over.
pub const TENANT_PROBES: u32 = 4;
/// A scope untouched for this long has refilled completely: its slot can be
/// reused without losing anything.
pub const IDLE_MS: u64 = 60_000;
/// The CAS token used to create keys; see [`load`].
const CREATE_CAS: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    InFlight,
    RequestsPerDay,
    TokensPerDay,
}

impl Dim {
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::Tokens => "tokens",
            Dim::InputTokens => "input_tokens",
            Dim::OutputTokens => "output_tokens",
            Dim::InFlight => "in_flight",
            Dim::RequestsPerDay => "requests_per_day",
            Dim::TokensPerDay => "tokens_per_day",
        }
    }

    /// A daily quota: refused until the next UTC midnight.
    pub fn is_daily(self) -> bool {
        matches!(self, Dim::RequestsPerDay | Dim::TokensPerDay)
    }
}

/// One UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// Until the next UTC midnight.
pub fn ms_to_midnight(now: u64) -> u64 {
    DAY_MS - now % DAY_MS
}

/// Every dimension a [`Snapshot`] may describe, in its order.
const SNAPSHOT_DIMS: [Dim; 6] = [
    Dim::Requests,
    Dim::Tokens,
    Dim::InputTokens,
    Dim::OutputTokens,
    Dim::RequestsPerDay,
    Dim::TokensPerDay,
];

const BUCKETS: [Dim; 4] = [
    Dim::Requests,
    Dim::Tokens,
    Dim::InputTokens,
    Dim::OutputTokens,
];

/// One rate: `per_minute` after headroom, `burst` = bucket depth in units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_minute: f64,
    pub burst: f64,
}

impl Rate {
    /// `burst_seconds` of quota, but never less than one unit so a rate always admits.
    pub fn new(per_minute: f64, burst_seconds: f64) -> Rate {
        Rate {
            per_minute,
            burst: (per_minute * burst_seconds / 60.0).max(1.0),
        }
    }

    fn per_ms(&self) -> f64 {
        self.per_minute / 60_000.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub requests: Option<Rate>,
    pub tokens: Option<Rate>,
    pub input_tokens: Option<Rate>,
    pub output_tokens: Option<Rate>,
    pub max_in_flight: Option<u32>,
    /// How long an in-flight charge holds its slot without being settled: the
    /// requests of a VM that died are never settled, and free their slots then.
    pub in_flight_lease_ms: u64,
    /// Requests per UTC day (after headroom).
    pub requests_per_day: Option<u64>,
    /// Input + output tokens per UTC day (after headroom).
    pub tokens_per_day: Option<u64>,
}

/// The default in-flight lease: longer than Envoy's route timeout in
/// envoy/envoy.yaml (300 s) plus the longest queue wait (300 s).
pub const DEFAULT_IN_FLIGHT_LEASE_MS: u64 = 600_000;
/// In-flight charges are grouped by admission period, a quarter of the lease:
/// at most five groups per scope.
const LEASE_PERIODS: u64 = 4;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests: None,
            tokens: None,
            input_tokens: None,
            output_tokens: None,
            max_in_flight: None,
            in_flight_lease_ms: DEFAULT_IN_FLIGHT_LEASE_MS,
            requests_per_day: None,
            tokens_per_day: None,
        }
    }
}

impl Limits {
    fn lease_period_ms(&self) -> u64 {
        (self.in_flight_lease_ms / LEASE_PERIODS).max(1)
    }

    /// The admission period of a charge made at `at_ms`.
    pub fn lease_period(&self, at_ms: u64) -> u64 {
        at_ms / self.lease_period_ms()
    }

    fn rate(&self, d: Dim) -> Option<Rate> {
        match d {
            Dim::Requests => self.requests,
            Dim::Tokens => self.tokens,
            Dim::InputTokens => self.input_tokens,
            Dim::OutputTokens => self.output_tokens,
            Dim::InFlight | Dim::RequestsPerDay | Dim::TokensPerDay => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        BUCKETS.iter().all(|&d| self.rate(d).is_none())
            && self.max_in_flight.is_none()
            && !self.daily()
    }

    fn daily(&self) -> bool {
        self.requests_per_day.is_some() || self.tokens_per_day.is_some()
    }
}

/// What one request costs, in each bucket's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Cost {
    fn of(&self, d: Dim) -> f64 {
        match d {
            Dim::Requests => 1.0,
            Dim::Tokens => self.tokens as f64,
            Dim::InputTokens => self.input_tokens as f64,
            Dim::OutputTokens => self.output_tokens as f64,
            Dim::InFlight | Dim::RequestsPerDay => 1.0,
            Dim::TokensPerDay => self.tokens as f64,
        }
    }
}

/// The stored value: short field names keep every shared-data copy small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// Owner (route or tenant id): a reused slot never merges two owners.
    o: String,
    /// Last update, ms.
    t: u64,
    /// Balances: requests, tokens, input tokens, output tokens.
    b: [f64; 4],
    /// Requests in flight, by admission period: (period, count). Groups older
    /// than the lease are dropped (see [`Limits::in_flight_lease_ms`]).
    f: Vec<(u64, u32)>,
    /// The daily quotas: (UTC day number, requests, tokens) used that day.
    #[serde(default)]
    d: (u64, f64, f64),
}

impl State {
    fn fresh(owner: &str, limits: &Limits, now: u64) -> State {
        let mut b = [0.0; 4];
        for (i, d) in BUCKETS.iter().enumerate() {
            b[i] = limits.rate(*d).map_or(0.0, |r| r.burst);
        }
        State {
            o: owner.to_string(),
            t: now,
            b,
            f: Vec::new(),
            d: (now / DAY_MS, 0.0, 0.0),
        }
    }

    /// A new UTC day starts with nothing used (a clock stepping back keeps the day).
    fn roll_day(&mut self, now: u64) {
        let day = now / DAY_MS;
        if day > self.d.0 {
            self.d = (day, 0.0, 0.0);
        }
    }

    /// Whether the day's counts hold nothing worth keeping at `now`.
    fn day_empty(&self, now: u64) -> bool {
        self.d.0 < now / DAY_MS || (self.d.1 <= 0.0 && self.d.2 <= 0.0)
    }

    /// Drops in-flight groups past their lease; the live count.
    fn in_flight(&mut self, limits: &Limits, now: u64) -> u32 {
        let current = limits.lease_period(now);
        // A group admitted in period p is live while p > current - LEASE_PERIODS:
        // at least the lease, at most a period more.
        self.f
            .retain(|&(p, n)| n > 0 && p.saturating_add(LEASE_PERIODS) > current);
        self.f.iter().map(|&(_, n)| n).sum()
    }

    fn add_in_flight(&mut self, limits: &Limits, now: u64) {
        let p = limits.lease_period(now);
        match self.f.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.f.push((p, 1)),
        }
    }

    /// Releases one charge admitted in `period` (nothing if its lease ran out).
    fn release_in_flight(&mut self, period: u64) {
        if let Some((_, n)) = self.f.iter_mut().find(|(q, _)| *q == period) {
            *n = n.saturating_sub(1);
        }
    }

    fn refill(&mut self, limits: &Limits, now: u64) {
        let dt = now.saturating_sub(self.t) as f64;
        for (i, d) in BUCKETS.iter().enumerate() {
            if let Some(r) = limits.rate(*d) {
                self.b[i] = (self.b[i] + r.per_ms() * dt).min(r.burst);
            }
        }
        self.t = self.t.max(now);
    }

    fn snapshot(&self, limits: &Limits) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, d) in BUCKETS.iter().enumerate() {
            if let Some(r) = limits.rate(*d) {
                // What could still be admitted over the next minute.
                let remaining = (r.per_minute + self.b[i] - r.burst).clamp(0.0, r.per_minute);
                let reset_ms = ((r.burst - self.b[i]).max(0.0) / r.per_ms()).ceil();
                s.dims[i] = Some(DimSnapshot {
                    limit: r.per_minute.floor() as u64,
                    remaining: remaining.floor() as u64,
                    reset_ms: reset_ms as u64,
                });
            }
        }
        for (i, limit, used) in [
            (4, limits.requests_per_day, self.d.1),
            (5, limits.tokens_per_day, self.d.2),
        ] {
            if let Some(limit) = limit {
                s.dims[i] = Some(DimSnapshot {
                    limit,
                    remaining: (limit as f64 - used).max(0.0).floor() as u64,
                    reset_ms: ms_to_midnight(self.t),
                });
            }
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimSnapshot {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ms: u64,
}

/// Per-dimension view for response headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    dims: [Option<DimSnapshot>; 6],
}

impl Snapshot {
    pub fn get(&self, d: Dim) -> Option<DimSnapshot> {
        SNAPSHOT_DIMS
            .iter()
            .position(|&x| x == d)
            .and_then(|i| self.dims[i])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Admitted(Snapshot),
    /// Charged now; the request may go in `wait_ms`.
    Scheduled {
        wait_ms: u64,
        snapshot: Snapshot,
    },
    /// `retry_after_ms`: until the limiting bucket is positive again (no jitter).
    Rejected {
        dim: Dim,
        retry_after_ms: u64,
        snapshot: Snapshot,
    },
}

fn decode(bytes: &[u8]) -> Option<State> {
    rmp_serde::from_slice(bytes).ok()
}

fn encode(s: &State) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(s).map_err(|_| StoreError::Host(0))
}

/// Reads a scope; an unreadable or foreign value is a fresh state.
///
/// CAS does not protect key creation: the host ignores the token when the key is
/// absent. So a missing key is first created holding a fresh, uncharged state,
/// written with a token no live value has (`u32::MAX`): if another worker created
/// the key in the meantime the write fails instead of erasing its charge. Every
/// charge then goes through CAS on an existing key.
fn load(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    limits: &Limits,
    now: u64,
) -> Result<(State, u32), StoreError> {
    let current = match store.get(key)? {
        Some(v) => v,
        None => {
            match store.set(key, &encode(&State::fresh(owner, limits, now))?, CREATE_CAS) {
                Ok(()) | Err(StoreError::CasMismatch) => {}
                Err(e) => return Err(e),
            }
            store.get(key)?.ok_or(StoreError::Host(1))?
        }
    };
    let (bytes, cas) = current;
    Ok(match decode(&bytes) {
        Some(s) if s.o == owner => (s, cas),
        // Taking over a slot: the CAS token makes sure it is the value we looked at.
        _ => (State::fresh(owner, limits, now), cas),
    })
}

/// Admits or rejects a request of cost `cost` against one scope.
///
/// With `enforce` false (shadow mode) the decision and the state updates are the
/// same, but the caller lets a rejected request through anyway.
pub fn admit(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    limits: &Limits,
    cost: &Cost,
    now: u64,
) -> Result<Admission, StoreError> {
    admit_above(store, key, owner, limits, cost, 0.0, now)
}

/// As [`admit`], for a priority class that must leave `floor` (a share of each
/// bucket's burst) to higher classes: admitted only while the balance is above it.
pub fn admit_above(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    limits: &Limits,
    cost: &Cost,
    floor: f64,
    now: u64,
) -> Result<Admission, StoreError> {
    admit_or_schedule(store, key, owner, limits, cost, floor, None, now)
}

/// As [`admit_above`], but a request that would wait at most `max_wait_ms` for
/// its turn is charged now and told when to go ([`Admission::Scheduled`]): its
/// place is held in the shared bucket itself, so every worker's later requests
/// queue behind it and each wait is known exactly when it is promised.
#[allow(clippy::too_many_arguments)]
pub fn admit_or_schedule(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    limits: &Limits,
    cost: &Cost,
    floor: f64,
    max_wait_ms: Option<u64>,
    now: u64,
) -> Result<Admission, StoreError> {
    let floor = floor.clamp(0.0, 1.0);
    for _ in 0..CAS_RETRIES {
        let (mut s, cas) = load(store, key, owner, limits, now)?;
        s.refill(limits, now);
        s.roll_day(now);
        let in_flight = s.in_flight(limits, now);
        if let Some(max) = limits.max_in_flight {
            if in_flight >= max {
                // No completion time is known, so this cannot be scheduled; a
                // second is a reasonable wait to suggest.
                return Ok(Admission::Rejected {
                    dim: Dim::InFlight,
                    retry_after_ms: 1000,
                    snapshot: s.snapshot(limits),
                });
            }
        }
        // A day's quota used up: nothing until midnight (never scheduled: the
        // charge would land on the wrong day).
        for (dim, limit, used) in [
            (Dim::RequestsPerDay, limits.requests_per_day, s.d.1),
            (Dim::TokensPerDay, limits.tokens_per_day, s.d.2),
        ] {
            if limit.is_some_and(|l| used >= l as f64) {
                return Ok(Admission::Rejected {
                    dim,
                    retry_after_ms: ms_to_midnight(now),
                    snapshot: s.snapshot(limits),
                });
            }
        }
        // The dimension that keeps the request out longest is the one reported.
        let mut worst: Option<(Dim, u64)> = None;
        for (i, d) in BUCKETS.iter().enumerate() {
            if let Some(r) = limits.rate(*d) {
                let need = floor * r.burst;
                if s.b[i] <= need {
                    let wait = ((need - s.b[i]) / r.per_ms()).floor() as u64 + 1;
                    if worst.is_none_or(|(_, w)| wait > w) {
                        worst = Some((*d, wait));
                    }
                }
            }
        }
        let wait = match (worst, max_wait_ms) {
            (None, _) => 0,
            (Some((_, w)), Some(max)) if w <= max => w,
            (Some((dim, retry_after_ms)), _) => {
                return Ok(Admission::Rejected {
                    dim,
                    retry_after_ms,
                    snapshot: s.snapshot(limits),
                });
            }
        };
        for (i, d) in BUCKETS.iter().enumerate() {
            if limits.rate(*d).is_some() {
                s.b[i] -= cost.of(*d);
            }
        }
        if limits.daily() {
            s.d.1 += 1.0;
            s.d.2 += cost.tokens as f64;
        }
        s.add_in_flight(limits, now);
        match store.set(key, &encode(&s)?, cas) {
            Ok(()) if wait == 0 => return Ok(Admission::Admitted(s.snapshot(limits))),
            Ok(()) => {
                return Ok(Admission::Scheduled {
                    wait_ms: wait,
                    snapshot: s.snapshot(limits),
                })
            }
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Corrects a scope when its request ends: each token bucket gets back what was
/// reserved and is charged what was used; the in-flight slot taken at
/// `admitted_at` is released. With `unsent` the request never left (another
/// scope refused it): its request unit is given back too.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    limits: &Limits,
    reserved: &Cost,
    actual: &Cost,
    unsent: bool,
    admitted_at: u64,
    now: u64,
) -> Result<(), StoreError> {
    for _ in 0..CAS_RETRIES {
        let Some((bytes, cas)) = store.get(key)? else {
            return Ok(());
        };
        let Some(mut s) = decode(&bytes) else {
            return Ok(());
        };
        if s.o != owner {
            return Ok(()); // the slot went to someone else meanwhile
        }
        s.refill(limits, now);
        for (i, d) in BUCKETS.iter().enumerate() {
            if let Some(r) = limits.rate(*d) {
                if *d != Dim::Requests {
                    s.b[i] = (s.b[i] + reserved.of(*d) - actual.of(*d)).min(r.burst);
                } else if unsent {
                    s.b[i] = (s.b[i] + 1.0).min(r.burst);
                }
            }
        }
        s.roll_day(now);
        // The day's counts are corrected only on the day they were charged.
        if limits.daily() && s.d.0 == admitted_at / DAY_MS {
            s.d.2 = (s.d.2 + actual.tokens as f64 - reserved.tokens as f64).max(0.0);
            if unsent {
                s.d.1 = (s.d.1 - 1.0).max(0.0);
            }
        }
        s.release_in_flight(limits.lease_period(admitted_at));
        s.in_flight(limits, now);
        match store.set(key, &encode(&s)?, cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

pub fn route_key(route: &str) -> String {
    format!("llmcap/lim/{route}")
}

fn tenant_slot_key(route: &str, slot: u32) -> String {
    format!("llmcap/ten/{route}/{slot}")
}

/// Where a tenant's state lives on a route: a key out of a fixed table of `slots`.
///
/// Probes [`TENANT_PROBES`] slots from the tenant's hash: its own slot if it has
/// one, else the first never-used slot, else one idle long enough to be full
/// again (nothing is lost by reusing it), else the least recently used (the
/// evicted tenant restarts with a full bucket). `evicted` tells the caller.
pub fn tenant_key(
    store: &dyn SharedStore,
    route: &str,
    tenant: &str,
    slots: u32,
    now: u64,
) -> Result<(String, bool), StoreError> {
    let slots = slots.max(1);
    let start = stable_hash(tenant) % slots;
    let mut free: Option<u32> = None;
    let mut idle: Option<u32> = None;
    let mut lru: Option<(u32, u64)> = None;
    for p in 0..TENANT_PROBES.min(slots) {
        let i = (start + p) % slots;
        let key = tenant_slot_key(route, i);
        match store.get(&key)?.and_then(|(b, _)| decode(&b)) {
            Some(s) if s.o == tenant => return Ok((key, false)),
            Some(s) => {
                if idle.is_none()
                    && s.f.iter().all(|&(_, n)| n == 0)
                    && now.saturating_sub(s.t) >= IDLE_MS
                    && s.day_empty(now)
                {
                    idle = Some(i);
                }
                if lru.is_none_or(|(_, t)| s.t < t) {
                    lru = Some((i, s.t));
                }
            }
            None => {
                if free.is_none() {
                    free = Some(i);
                }
            }
        }
    }
    if let Some(i) = free.or(idle) {
        return Ok((tenant_slot_key(route, i), false));
    }
    let i = lru.map_or(start, |(i, _)| i);
    Ok((tenant_slot_key(route, i), true))
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
