//! Circuit state per upstream cluster, kept in Envoy shared data so every worker
//! VM agrees.
//!
//! Each cluster is one small msgpack value (key [`key`]) updated by
//! compare-and-swap with bounded retries, like the limiter. It holds:
//!
//! - the **mode**: closed (traffic flows), open (nothing is sent until a time),
//!   half-open (a bounded number of probe requests decide whether to close);
//! - a **rolling window** of ten time buckets (requests, failures, slow requests)
//!   and a consecutive-failure count, which trip the circuit open;
//! - optionally a **relative latency rule**: a slow-moving baseline of the
//!   cluster's own time to first token (an exponentially weighted mean whose
//!   weight halves every `baseline_half_life_ms` of wall time) and a second
//!   rolling window counting answers slower than `factor` x that baseline. More
//!   than 5% of them (the window's p95 above `factor` x baseline) opens the
//!   circuit, and a half-open probe that is still that slow reopens it. The
//!   baseline keeps learning from every answer, slowly: a slowdown that lasts
//!   several half-lives becomes the cluster's new normal rather than keeping
//!   it open for good;
//! - a **cool-down**, separate from the mode: a 429 is a capacity signal, not a
//!   failure. The provider is healthy and said "not now"; counting it as a failure
//!   would open the circuit on quota exhaustion and keep traffic away long after
//!   the quota came back. So a 429 only pauses the cluster for the time the
//!   provider asked (or a default), clamped to a maximum;
//! - a **quota view**: the provider's last remaining-requests/tokens snapshot,
//!   decremented by what we send until the next answer or its reset.
//!
//! After an open period or a cool-down, traffic does not resume all at once: one
//! probe (half-open: up to `half_open_probes`) is let through and the others wait
//! for its outcome. Letting every waiting request through at the instant a
//! cool-down ends would be a thundering herd into a provider that just said it
//! was full, and would earn a fresh 429 for all of them. A probe claim that never
//! reports (the request hung or its VM went away) expires after
//! `probe_timeout_ms`, so a lost probe can never block a cluster for good.
//!
//! Probes are not identified: releasing a probe drops the oldest half-open claim
//! while half-open, else the cool-down claim. Opening clears the cool-down claim
//! and leaving half-open clears its claims, so a mismatch needs a probe whose
//! outcome arrives after the mode changed twice; at worst it frees one slot early.
//!
//! Time is the host's wall clock; if it steps backwards nothing panics: the window
//! keeps counting into its latest bucket and deadlines simply last longer.

use crate::core::env::{SharedStore, StoreError};
use crate::core::limits::limiter::CAS_RETRIES;
use serde::{Deserialize, Serialize};

/// The CAS token used to create keys: no live value has it, so a racing creator
/// makes the second write fail and retry instead of erasing the first.
const CREATE_CAS: u32 = u32::MAX;
/// Buckets in the rolling window.
const BUCKETS: u64 = 10;

/// The shared-data key of a cluster's circuit (cluster names are bounded by config).
pub fn key(cluster: &str) -> String {
    format!("llmcap/cb/{cluster}")
}

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    /// Rolling window, ms.
    pub window_ms: u64,
    /// Requests in the window before the rate and latency rules apply.
    pub min_requests: u32,
    /// 0..=1; opens when failures/total >= this.
    pub error_rate: f64,
    /// Opens after this many failures in a row; 0 = rule off.
    pub consecutive_failures: u32,
    /// 0 = off; opens when more than 5% of the window's requests took longer
    /// than this (exactly "p95 above the threshold").
    pub latency_p95_ms: u64,
    /// Open -> half-open after this, ms.
    pub open_ms: u64,
    /// Concurrent probes allowed in half-open, and successes needed to close (>= 1).
    pub half_open_probes: u32,
    /// A claimed probe with no outcome after this is given up, ms.
    pub probe_timeout_ms: u64,
    /// A 429 with no usable wait header cools down this long, ms.
    pub default_cooldown_ms: u64,
    /// Cap on any cool-down, ms.
    pub max_cooldown_ms: u64,
    /// The relative latency rule; `None`: off.
    pub latency_relative: Option<RelativeLatency>,
}

/// Opens a cluster whose windowed p95 time to first token is above `factor`
/// times its own baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct RelativeLatency {
    /// How many times the baseline an answer may take before it counts as slow (> 1).
    pub factor: f64,
    /// The rule's rolling window, ms (the "sustained period").
    pub window_ms: u64,
    /// Answers in the window before the rule applies; also the samples the
    /// baseline needs before anything is judged against it.
    pub min_requests: u32,
    /// The baseline's half-life in wall time, ms.
    pub baseline_half_life_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            window_ms: 10_000,
            min_requests: 10,
            error_rate: 0.5,
            consecutive_failures: 5,
            latency_p95_ms: 0,
            open_ms: 15_000,
            half_open_probes: 1,
            probe_timeout_ms: 60_000,
            default_cooldown_ms: 1_000,
            max_cooldown_ms: 300_000,
            latency_relative: None,
        }
    }
}

/// Outcome of one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// 2xx, and 4xx other than 429 (client errors say nothing about provider
    /// health): counted as not-failure, and slow if over the latency threshold.
    Success { latency_ms: u64 },
    /// 429: starts or extends a cool-down; not counted in the window. A 503 with a
    /// wait header is reported as `Failure` and then as `RateLimited` with
    /// `probe` false (the second report sets the cool-down).
    RateLimited { cooldown_ms: Option<u64> },
    /// 5xx, reset, connect failure, timeout.
    Failure { latency_ms: Option<u64> },
}

/// The decision for a new request wanting to use a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed, not cooling down, quota OK.
    Pass,
    /// This request is the probe (a half-open slot, or the single probe after a
    /// cool-down): report its outcome with `probe` true, or [`release_probe`].
    Probe,
    /// `until_ms`: when it may be worth trying again; `None` when unknown (every
    /// probe slot is taken: it depends on the probe's outcome).
    Blocked { until_ms: Option<u64>, why: Blocked },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Open,
    /// Cooling down after a 429; or the cool-down is over and its probe has not
    /// answered yet (then `until_ms` is `None`).
    CoolingDown,
    /// Our view of the provider's quota says no.
    Quota,
    /// Half-open with every probe slot taken.
    ProbeBusy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
    HalfOpen,
}

/// A read-only view of a circuit, for metrics and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// An open circuit whose time is over is reported half-open.
    pub mode: Mode,
    /// Set until the cool-down is cleared; a value <= now means it is over and
    /// waits for a probe's success.
    pub cooldown_until_ms: Option<u64>,
    /// While open.
    pub open_until_ms: Option<u64>,
    /// Our view of the provider's quota, until its reset.
    pub requests_remaining: Option<u64>,
    pub tokens_remaining: Option<u64>,
}

/// Stored mode: closed, open until, half-open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum M {
    #[default]
    C,
    O(u64),
    H,
}

impl M {
    fn mode(self) -> Mode {
        match self {
            M::C => Mode::Closed,
            M::O(_) => Mode::Open,
            M::H => Mode::HalfOpen,
        }
    }
}

/// One window bucket: (slot = time / bucket width, total, failures, slow).
type Bucket = (u64, u32, u32, u32);

/// The stored value: short field names keep every shared-data copy small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    m: M,
    /// Window buckets, at most [`BUCKETS`].
    w: Vec<Bucket>,
    /// Consecutive failures.
    c: u32,
    /// Half-open probe claims (claim times), at most `half_open_probes`.
    p: Vec<u64>,
    /// Half-open probe successes.
    s: u32,
    /// Cool-down until.
    d: Option<u64>,
    /// The cool-down probe's claim time.
    k: Option<u64>,
    /// Quota view: (requests remaining, reset at).
    r: Option<(u64, u64)>,
    /// Quota view: (tokens remaining, reset at).
    t: Option<(u64, u64)>,
    /// Relative rule: window buckets (slot, answers, slow), at most [`BUCKETS`].
    #[serde(default)]
    l: Vec<(u64, u32, u32)>,
    /// Relative rule: baseline (µs, updated at ms, samples seen up to min_requests).
    #[serde(default)]
    b: Option<(u64, u64, u32)>,
}

impl State {
    /// Open whose time is over -> half-open. True if it changed.
    fn half_open_if_due(&mut self, now: u64) -> bool {
        match self.m {
            M::O(until) if now >= until => {
                self.reset(M::H);
                true
            }
            _ => false,
        }
    }

    /// Into `m` with a fresh window and no half-open claims.
    fn reset(&mut self, m: M) {
        (self.m, self.c, self.s) = (m, 0, 0);
        self.w.clear();
        self.l.clear();
        self.p.clear();
    }

    /// Judges `latency_ms` against the baseline (true: relatively slow), then
    /// lets the baseline learn from it.
    fn judge(&mut self, r: &RelativeLatency, now: u64, latency_ms: u64) -> bool {
        let us = latency_ms.saturating_mul(1000);
        let Some((base, at, n)) = self.b else {
            self.b = Some((us, now, 1));
            return false;
        };
        let slow = n >= r.min_requests && us as f64 > r.factor * base as f64;
        // Weighted by the time since the last sample: the same decay whatever the rate.
        let dt = now.saturating_sub(at) as f64;
        let w = 1.0 - 0.5f64.powf(dt / r.baseline_half_life_ms.max(1) as f64);
        let next = base as f64 + (us as f64 - base as f64) * w;
        let n = n.saturating_add(1).min(r.min_requests);
        self.b = Some((next.max(0.0) as u64, now.max(at), n));
        slow
    }

    fn add_relative(&mut self, r: &RelativeLatency, now: u64, slow: bool) {
        let width = (r.window_ms / BUCKETS).max(1);
        let cur = (now / width).max(self.l.iter().map(|b| b.0).max().unwrap_or(0));
        self.l.retain(|b| cur.saturating_sub(b.0) < BUCKETS);
        match self.l.iter_mut().find(|b| b.0 == cur) {
            Some(b) => {
                b.1 = b.1.saturating_add(1);
                b.2 = b.2.saturating_add(u32::from(slow));
            }
            None => self.l.push((cur, 1, u32::from(slow))),
        }
    }

    fn relative_slow(&self, r: &RelativeLatency) -> bool {
        let (total, slow) = self.l.iter().fold((0u64, 0u64), |(t, s), b| {
            (t + u64::from(b.1), s + u64::from(b.2))
        });
        total > 0 && total >= u64::from(r.min_requests) && slow.saturating_mul(20) > total
    }

    fn open(&mut self, cfg: &CircuitConfig, now: u64) {
        self.reset(M::O(now.saturating_add(cfg.open_ms)));
        self.k = None;
    }

    fn live(cfg: &CircuitConfig, claim: u64, now: u64) -> bool {
        now.saturating_sub(claim) < cfg.probe_timeout_ms
    }

    /// Drops one probe claim; true if there was one.
    fn release(&mut self) -> bool {
        let oldest = self
            .p
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, _)| i);
        match (self.m, oldest, self.k) {
            (M::H, Some(i), _) | (_, Some(i), None) => {
                self.p.remove(i);
                true
            }
            (_, _, Some(_)) => {
                self.k = None;
                true
            }
            (_, None, None) => false,
        }
    }

    fn cooling(&self, now: u64) -> Option<u64> {
        self.d.filter(|&u| now < u)
    }

    fn add(&mut self, cfg: &CircuitConfig, now: u64, failure: bool, slow: bool) {
        let width = (cfg.window_ms / BUCKETS).max(1);
        // The latest bucket stays current if the clock steps back.
        let cur = (now / width).max(self.w.iter().map(|b| b.0).max().unwrap_or(0));
        self.w.retain(|b| cur.saturating_sub(b.0) < BUCKETS);
        let (f, sl) = (u32::from(failure), u32::from(slow));
        match self.w.iter_mut().find(|b| b.0 == cur) {
            Some(b) => {
                b.1 = b.1.saturating_add(1);
                b.2 = b.2.saturating_add(f);
                b.3 = b.3.saturating_add(sl);
            }
            None => self.w.push((cur, 1, f, sl)),
        }
    }

    fn should_open(&self, cfg: &CircuitConfig) -> bool {
        if cfg.consecutive_failures > 0 && self.c >= cfg.consecutive_failures {
            return true;
        }
        let (mut total, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for b in &self.w {
            total += u64::from(b.1);
            failures += u64::from(b.2);
            slow += u64::from(b.3);
        }
        if total == 0 || total < u64::from(cfg.min_requests) {
            return false;
        }
        (failures > 0 && failures as f64 / total as f64 >= cfg.error_rate)
            || (cfg.latency_p95_ms > 0 && slow.saturating_mul(20) > total)
    }

    /// The decision, and whether the state changed.
    fn gate(&mut self, cfg: &CircuitConfig, now: u64, tokens: u64) -> (Gate, bool) {
        let mut dirty = self.half_open_if_due(now);
        let cooling = self.cooling(now);
        let blocked = |until_ms, why| Gate::Blocked { until_ms, why };
        if let M::O(until) = self.m {
            // Worth trying again once both the open time and any cool-down are over.
            let until = until.max(cooling.unwrap_or(0));
            return (blocked(Some(until), Blocked::Open), dirty);
        }
        if let Some(u) = cooling {
            return (blocked(Some(u), Blocked::CoolingDown), dirty);
        }
        // Quota views past their reset are forgotten.
        self.r = self.r.filter(|&(_, at)| now < at);
        self.t = self.t.filter(|&(_, at)| now < at);
        // Blocked until the later reset of the dimensions that say no.
        let no_requests = self.r.filter(|&(rem, _)| rem == 0).map(|(_, at)| at);
        let no_tokens = self.t.filter(|&(rem, _)| rem < tokens).map(|(_, at)| at);
        if let Some(at) = no_requests.max(no_tokens) {
            return (blocked(Some(at), Blocked::Quota), dirty);
        }
        let mut probe = false;
        if self.m == M::H {
            let before = self.p.len();
            self.p.retain(|&t| Self::live(cfg, t, now));
            dirty |= self.p.len() != before;
            if self.p.len() >= cfg.half_open_probes.max(1) as usize {
                return (blocked(None, Blocked::ProbeBusy), dirty);
            }
            self.p.push(now);
            (dirty, probe) = (true, true);
        } else if self.d.is_some() {
            // Closed, the cool-down is over: one probe until it succeeds.
            if self.k.is_some_and(|t| Self::live(cfg, t, now)) {
                return (blocked(None, Blocked::CoolingDown), dirty);
            }
            self.k = Some(now);
            (dirty, probe) = (true, true);
        }
        if let Some((rem, at)) = self.r {
            self.r = Some((rem.saturating_sub(1), at));
            dirty = true;
        }
        if let Some((rem, at)) = self.t {
            let left = rem.saturating_sub(tokens);
            dirty |= left != rem;
            self.t = Some((left, at));
        }
        (if probe { Gate::Probe } else { Gate::Pass }, dirty)
    }

    /// The mode if it changed, and whether the state changed.
    fn record(
        &mut self,
        cfg: &CircuitConfig,
        now: u64,
        outcome: Outcome,
        probe: bool,
    ) -> (Option<Mode>, bool) {
        // Half-open by time is not the outcome's doing: not reported.
        let mut dirty = self.half_open_if_due(now);
        let before = self.m.mode();
        if probe {
            dirty |= self.release();
        }
        let (failure, latency) = match outcome {
            Outcome::RateLimited { cooldown_ms } => {
                let c = cooldown_ms
                    .unwrap_or(cfg.default_cooldown_ms)
                    .min(cfg.max_cooldown_ms);
                if c == 0 {
                    // No wait asked and none configured: nothing to cool down
                    // from, so no probe gates the traffic after it either.
                    return (None, dirty);
                }
                self.d = Some(now.saturating_add(c).max(self.d.unwrap_or(0)));
                // A new cool-down needs a new probe.
                self.k = None;
                return (None, true);
            }
            Outcome::Success { latency_ms } => (false, Some(latency_ms)),
            Outcome::Failure { latency_ms } => (true, latency_ms),
        };
        // Only answers have a time to first token to judge.
        let relative = match (&cfg.latency_relative, outcome) {
            (Some(r), Outcome::Success { latency_ms }) => Some((r, self.judge(r, now, latency_ms))),
            _ => None,
        };
        dirty |= relative.is_some();
        if !failure && self.d.is_some_and(|u| now >= u) {
            (self.d, self.k, dirty) = (None, None, true);
        }
        match self.m {
            M::C => {
                let slow = latency.is_some_and(|l| l > cfg.latency_p95_ms);
                self.add(cfg, now, failure, cfg.latency_p95_ms > 0 && slow);
                self.c = if failure { self.c.saturating_add(1) } else { 0 };
                if let Some((r, slow)) = relative {
                    self.add_relative(r, now, slow);
                }
                if self.should_open(cfg) || relative.is_some_and(|(r, _)| self.relative_slow(r)) {
                    self.open(cfg, now);
                }
                dirty = true;
            }
            // Non-probe outcomes while half-open were sent before the circuit
            // opened: they neither close nor reopen it.
            // A probe still slower than the baseline allows reopens it too.
            M::H if probe && (failure || relative.is_some_and(|(_, slow)| slow)) => {
                self.open(cfg, now);
                dirty = true;
            }
            M::H if probe => {
                self.s = self.s.saturating_add(1);
                if self.s >= cfg.half_open_probes.max(1) {
                    self.reset(M::C);
                }
                dirty = true;
            }
            _ => {}
        }
        let after = self.m.mode();
        ((after != before).then_some(after), dirty)
    }
}

fn decode(bytes: &[u8]) -> Option<State> {
    rmp_serde::from_slice(bytes).ok()
}

fn encode(s: &State) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(s).map_err(|_| StoreError::Host(0))
}

/// Reads a circuit; an absent or unreadable value is a fresh (closed) state. An
/// absent key is not created here: the token returned for it is [`CREATE_CAS`],
/// so the first write creates it and a racing creator's write fails and retries.
fn load(store: &dyn SharedStore, key: &str) -> Result<(State, u32), StoreError> {
    Ok(match store.get(key)? {
        Some((bytes, cas)) => (decode(&bytes).unwrap_or_default(), cas),
        None => (State::default(), CREATE_CAS),
    })
}

/// Read, change, write by CAS: `f` returns its result and whether to write.
fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    mut f: impl FnMut(&mut State) -> (T, bool),
) -> Result<T, StoreError> {
    for _ in 0..CAS_RETRIES {
        let (mut s, cas) = load(store, key)?;
        let (out, dirty) = f(&mut s);
        if !dirty {
            return Ok(out);
        }
        match store.set(key, &encode(&s)?, cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Decides whether a new request needing `tokens` (estimated) may use the
/// cluster. Writes only when something changed (a probe claimed, the mode moved
/// to half-open, the quota view decremented): a closed circuit with no cool-down
/// and no quota view costs one read.
pub fn gate(
    store: &dyn SharedStore,
    key: &str,
    cfg: &CircuitConfig,
    now_ms: u64,
    tokens: u64,
) -> Result<Gate, StoreError> {
    update(store, key, |s| s.gate(cfg, now_ms, tokens))
}

/// Records the outcome of one upstream attempt; `probe` if [`gate`] made it the
/// probe (its claim is released). Returns the new mode when the outcome changed it.
pub fn record(
    store: &dyn SharedStore,
    key: &str,
    cfg: &CircuitConfig,
    now_ms: u64,
    outcome: Outcome,
    probe: bool,
) -> Result<Option<Mode>, StoreError> {
    update(store, key, |s| s.record(cfg, now_ms, outcome, probe))
}

/// Replaces the quota view with the provider's snapshot, per dimension given:
/// `(remaining, reset in ms)`. A remaining without a reset is kept for
/// `window_ms`; a reset without a remaining is ignored. Writes only when a
/// remaining is given and differs from the stored view.
pub fn observe_quota(
    store: &dyn SharedStore,
    key: &str,
    cfg: &CircuitConfig,
    now_ms: u64,
    requests: (Option<u64>, Option<u64>),
    tokens: (Option<u64>, Option<u64>),
) -> Result<(), StoreError> {
    let q = Quota::new(cfg, now_ms, requests, tokens);
    if q.is_empty() {
        return Ok(());
    }
    update(store, key, |s| ((), q.apply(s)))
}

/// One dimension of a provider's quota as its headers say it: `(remaining, reset in ms)`.
pub type QuotaSnapshot = (Option<u64>, Option<u64>);

/// A provider's quota snapshot as the state keeps it: `(remaining, until)` per dimension.
#[derive(Clone, Copy)]
struct Quota {
    r: Option<(u64, u64)>,
    t: Option<(u64, u64)>,
}

impl Quota {
    fn new(
        cfg: &CircuitConfig,
        now_ms: u64,
        requests: (Option<u64>, Option<u64>),
        tokens: (Option<u64>, Option<u64>),
    ) -> Quota {
        let view = |(rem, reset): (Option<u64>, Option<u64>)| {
            rem.map(|r| (r, now_ms.saturating_add(reset.unwrap_or(cfg.window_ms))))
        };
        Quota {
            r: view(requests),
            t: view(tokens),
        }
    }

    fn is_empty(&self) -> bool {
        self.r.is_none() && self.t.is_none()
    }

    /// Whether the state changed.
    fn apply(&self, s: &mut State) -> bool {
        let before = (s.r, s.t);
        s.r = self.r.or(s.r);
        s.t = self.t.or(s.t);
        (s.r, s.t) != before
    }
}

/// One attempt's answer in one read-modify-write: its `outcomes` in order, as
/// [`record`] each (`probe`: the claim released with the first), then, given
/// `quota` (`(requests, tokens)` as [`observe_quota`] takes them), the
/// provider's snapshot. Returns the new mode of each outcome that changed it.
pub fn record_answer(
    store: &dyn SharedStore,
    key: &str,
    cfg: &CircuitConfig,
    now_ms: u64,
    outcomes: &[Outcome],
    probe: bool,
    quota: Option<(QuotaSnapshot, QuotaSnapshot)>,
) -> Result<Vec<Mode>, StoreError> {
    let q = quota
        .map(|(r, t)| Quota::new(cfg, now_ms, r, t))
        .filter(|q| !q.is_empty());
    if outcomes.is_empty() && q.is_none() {
        return Ok(Vec::new());
    }
    update(store, key, |s| {
        let mut changed = Vec::new();
        let mut dirty = false;
        for (i, &o) in outcomes.iter().enumerate() {
            let (m, d) = s.record(cfg, now_ms, o, probe && i == 0);
            changed.extend(m);
            dirty |= d;
        }
        if let Some(q) = &q {
            dirty |= q.apply(s);
        }
        (changed, dirty)
    })
}

/// Gives back a probe claim whose request was never sent (it was aborted before
/// leaving): one half-open slot, or the cool-down probe.
pub fn release_probe(
    store: &dyn SharedStore,
    key: &str,
    _cfg: &CircuitConfig,
    _now_ms: u64,
) -> Result<(), StoreError> {
    update(store, key, |s| ((), s.release()))
}

/// The circuit as it stands, without changing it.
pub fn view(
    store: &dyn SharedStore,
    key: &str,
    _cfg: &CircuitConfig,
    now_ms: u64,
) -> Result<View, StoreError> {
    let (mut s, _) = load(store, key)?;
    s.half_open_if_due(now_ms);
    let live = |q: Option<(u64, u64)>| q.filter(|&(_, at)| now_ms < at).map(|(r, _)| r);
    Ok(View {
        mode: s.m.mode(),
        cooldown_until_ms: s.d,
        open_until_ms: match s.m {
            M::O(u) => Some(u),
            _ => None,
        },
        requests_remaining: live(s.r),
        tokens_remaining: live(s.t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::env::MemStore;
    use std::cell::{Cell, RefCell};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const K: &str = "llmcap/cb/a";

    const OK: Outcome = Outcome::Success { latency_ms: 10 };
    const FAIL: Outcome = Outcome::Failure { latency_ms: None };
    fn rl(ms: Option<u64>) -> Outcome {
        Outcome::RateLimited { cooldown_ms: ms }
    }
    fn blocked(until_ms: Option<u64>, why: Blocked) -> Gate {
        Gate::Blocked { until_ms, why }
    }
    fn open_until(t: u64) -> Gate {
        blocked(Some(t), Blocked::Open)
    }
    fn cooling(t: Option<u64>) -> Gate {
        blocked(t, Blocked::CoolingDown)
    }
    fn quota(t: u64) -> Gate {
        blocked(Some(t), Blocked::Quota)
    }

    /// One circuit in a store, with short calls for the tests.
    struct Cb<S: SharedStore = MemStore> {
        s: S,
        cfg: CircuitConfig,
    }
    fn cb(cfg: CircuitConfig) -> Cb {
        Cb {
            s: MemStore::default(),
            cfg,
        }
    }
    impl<S: SharedStore> Cb<S> {
        fn gate(&self, now: u64) -> Gate {
            self.gate_t(now, 0)
        }
        fn gate_t(&self, now: u64, tokens: u64) -> Gate {
            gate(&self.s, K, &self.cfg, now, tokens).unwrap()
        }
        fn rec(&self, now: u64, o: Outcome) -> Option<Mode> {
            record(&self.s, K, &self.cfg, now, o, false).unwrap()
        }
        fn probe(&self, now: u64, o: Outcome) -> Option<Mode> {
            record(&self.s, K, &self.cfg, now, o, true).unwrap()
        }
        fn quota(&self, now: u64, r: (Option<u64>, Option<u64>), t: (Option<u64>, Option<u64>)) {
            observe_quota(&self.s, K, &self.cfg, now, r, t).unwrap()
        }
        fn release(&self, now: u64) {
            release_probe(&self.s, K, &self.cfg, now).unwrap()
        }
        fn view(&self, now: u64) -> View {
            view(&self.s, K, &self.cfg, now).unwrap()
        }
        fn mode(&self, now: u64) -> Mode {
            self.view(now).mode
        }
        /// Opens the circuit at `now` by consecutive failures.
        fn open_at(&self, now: u64) {
            for _ in 0..self.cfg.consecutive_failures {
                self.rec(now, FAIL);
            }
            assert_eq!(self.mode(now), Mode::Open);
        }
    }

    fn no_consecutive() -> CircuitConfig {
        CircuitConfig {
            consecutive_failures: 0,
            ..CircuitConfig::default()
        }
    }

    #[test]
    fn consecutive_failures_open_and_success_resets_the_count() {
        let c = cb(CircuitConfig::default());
        for _ in 0..4 {
            assert_eq!(c.rec(0, FAIL), None);
        }
        c.rec(0, OK);
        for _ in 0..4 {
            assert_eq!(c.rec(1, FAIL), None);
        }
        assert_eq!(c.rec(2, FAIL), Some(Mode::Open));
        assert_eq!(c.gate(3), open_until(15_002));
        assert_eq!(c.view(3).open_until_ms, Some(15_002));
    }

    #[test]
    fn error_rate_needs_min_requests() {
        let c = cb(no_consecutive());
        for _ in 0..9 {
            assert_eq!(c.rec(0, FAIL), None);
        }
        assert_eq!(c.mode(0), Mode::Closed);
        assert_eq!(c.rec(0, OK), Some(Mode::Open), "9 of 10");
        // Below the rate: 4 of 10, 5 of 11; at it: 6 of 12.
        let c = cb(no_consecutive());
        for o in [FAIL, OK, FAIL, OK, OK, FAIL, OK, OK, FAIL, OK] {
            assert_eq!(c.rec(0, o), None);
        }
        assert_eq!(c.rec(0, FAIL), None);
        assert_eq!(c.rec(0, FAIL), Some(Mode::Open));
    }

    #[test]
    fn latency_rule_opens_above_five_percent_slow() {
        let cfg = CircuitConfig {
            latency_p95_ms: 1000,
            ..no_consecutive()
        };
        let c = cb(cfg.clone());
        let fast = Outcome::Success { latency_ms: 1000 }; // not above: fast
        let slow = Outcome::Success { latency_ms: 1001 };
        for _ in 0..95 {
            c.rec(0, fast);
        }
        for _ in 0..5 {
            assert_eq!(c.rec(0, slow), None);
        }
        // 5 of 100 is exactly 5%: p95 not above. One more is.
        assert_eq!(c.rec(0, slow), Some(Mode::Open));
        // Slow failures count too; the rule waits for min_requests.
        let c = cb(cfg);
        c.rec(
            0,
            Outcome::Failure {
                latency_ms: Some(5000),
            },
        );
        for _ in 0..8 {
            assert_eq!(c.rec(0, fast), None);
        }
        assert_eq!(c.rec(0, fast), Some(Mode::Open));
    }

    fn relative() -> CircuitConfig {
        CircuitConfig {
            latency_relative: Some(RelativeLatency {
                factor: 2.0,
                window_ms: 10_000,
                min_requests: 5,
                baseline_half_life_ms: 60_000,
            }),
            ..no_consecutive()
        }
    }
    fn ok(ms: u64) -> Outcome {
        Outcome::Success { latency_ms: ms }
    }

    #[test]
    fn relative_rule_opens_above_factor_times_baseline_and_a_slow_probe_reopens() {
        let c = cb(relative());
        // The baseline learns 100 ms from five answers, one a second.
        for i in 0..5 {
            assert_eq!(c.rec(i * 1000, ok(100)), None);
        }
        // Exactly 2x is not above it; one answer slower than that in a window of
        // 7 is more than 5%.
        assert_eq!(c.rec(5000, ok(200)), None);
        assert_eq!(
            c.rec(5000, ok(203)),
            Some(Mode::Open),
            "the 200 moved it to 101"
        );
        assert_eq!(c.gate(5001), open_until(20_000));
        // A probe as slow as the outage reopens it; a fast one closes it.
        assert_eq!(c.gate(20_000), Gate::Probe);
        assert_eq!(c.probe(22_000, ok(2000)), Some(Mode::Open));
        assert_eq!(c.gate(37_000), Gate::Probe);
        assert_eq!(c.probe(37_050, ok(100)), Some(Mode::Closed));
        // A fresh window: min_requests answers before it can open again.
        for _ in 0..4 {
            assert_eq!(c.rec(37_100, ok(5000)), None);
        }
        assert_eq!(c.rec(37_100, ok(5000)), Some(Mode::Open));
    }

    #[test]
    fn relative_rule_waits_for_a_baseline_and_forgets_old_slow_answers() {
        let c = cb(relative());
        // Slow from the start: nothing to compare with, so it is the baseline.
        for i in 0..20 {
            assert_eq!(c.rec(i * 100, ok(2000)), None);
        }
        // 1 slow in 20 is 5%: not above. A window later it is forgotten.
        let c = cb(relative());
        for i in 0..19 {
            c.rec(i * 10, ok(100));
        }
        assert_eq!(c.rec(200, ok(1000)), None);
        for i in 0..20 {
            assert_eq!(c.rec(10_300 + i, ok(100)), None);
        }
        assert_eq!(c.rec(10_400, ok(1000)), None, "1 of 21 in the new window");
        // Failures are not judged: they have no first token.
        assert_eq!(c.rec(10_400, FAIL), None);
    }

    #[test]
    fn relative_baseline_moves_by_half_lives_of_wall_time() {
        let c = cb(relative());
        c.rec(0, ok(100));
        let base = |c: &Cb| {
            decode(&c.s.get(K).unwrap().unwrap().0)
                .unwrap()
                .b
                .unwrap()
                .0
        };
        // Same instant: no weight. One half-life later: half way to 300 ms.
        c.rec(0, ok(300));
        assert_eq!(base(&c), 100_000);
        c.rec(60_000, ok(300));
        assert_eq!(base(&c), 200_000);
        // A long slowdown becomes the new normal: a 2 s answer after ten
        // half-lives is no longer slow against it.
        for i in 1..=10 {
            c.rec(60_000 + i * 60_000, ok(1900));
        }
        assert!(base(&c) > 1_800_000, "{}", base(&c));
        assert_eq!(c.mode(700_000), Mode::Closed);
    }

    #[test]
    fn window_expiry_forgets_old_failures() {
        for (later, opens) in [(9_999u64, true), (10_000, false)] {
            let c = cb(no_consecutive());
            for _ in 0..5 {
                c.rec(0, FAIL);
            }
            for _ in 0..5 {
                c.rec(later, OK);
            }
            assert_eq!(c.mode(later) == Mode::Open, opens, "at {later}");
        }
    }

    #[test]
    fn open_then_half_open_probe_bound_and_probe_success_closes() {
        let c = cb(CircuitConfig::default());
        c.open_at(1000);
        assert_eq!(c.gate(15_999), open_until(16_000));
        assert_eq!(c.mode(16_000), Mode::HalfOpen);
        assert_eq!(c.gate(16_000), Gate::Probe);
        assert_eq!(c.gate(16_001), blocked(None, Blocked::ProbeBusy));
        // Late non-probe outcomes (sent before opening) neither close nor reopen it.
        assert_eq!(c.rec(16_002, OK), None);
        assert_eq!(c.rec(16_002, FAIL), None);
        assert_eq!(c.mode(16_002), Mode::HalfOpen);
        assert_eq!(c.probe(16_100, OK), Some(Mode::Closed));
        assert_eq!(c.gate(16_101), Gate::Pass);
        // A fresh window: four failures do not reopen it.
        for _ in 0..4 {
            assert_eq!(c.rec(16_102, FAIL), None);
        }
    }

    #[test]
    fn probe_failure_reopens_and_stale_claims_expire() {
        let c = cb(CircuitConfig::default());
        c.open_at(0);
        assert_eq!(c.gate(15_000), Gate::Probe);
        assert_eq!(c.probe(15_500, FAIL), Some(Mode::Open));
        assert_eq!(c.gate(15_501), open_until(30_500));
        // A claim with no outcome expires after probe_timeout_ms.
        assert_eq!(c.gate(30_500), Gate::Probe);
        assert_eq!(c.gate(90_499), blocked(None, Blocked::ProbeBusy));
        assert_eq!(c.gate(90_500), Gate::Probe);
        assert_eq!(c.gate(90_501), blocked(None, Blocked::ProbeBusy));
    }

    #[test]
    fn several_probes_all_must_succeed_and_release_frees_a_slot() {
        let c = cb(CircuitConfig {
            half_open_probes: 2,
            ..CircuitConfig::default()
        });
        c.open_at(0);
        assert_eq!(c.gate(15_000), Gate::Probe);
        assert_eq!(c.gate(15_000), Gate::Probe);
        assert_eq!(c.gate(15_000), blocked(None, Blocked::ProbeBusy));
        // One never left: its slot is free again.
        c.release(15_001);
        assert_eq!(c.gate(15_002), Gate::Probe);
        assert_eq!(c.probe(15_010, OK), None);
        assert_eq!(c.probe(15_020, OK), Some(Mode::Closed));
    }

    #[test]
    fn rate_limits_are_not_failures() {
        let c = cb(CircuitConfig::default());
        for i in 0..1000 {
            assert_eq!(c.rec(i, rl(Some(10))), None);
        }
        assert_eq!(c.mode(1000), Mode::Closed);
        // ...and reset nothing: the consecutive count goes on across a 429.
        for _ in 0..4 {
            c.rec(2000, FAIL);
        }
        c.rec(2000, rl(None));
        assert_eq!(c.rec(2000, FAIL), Some(Mode::Open));
    }

    #[test]
    fn a_429_without_a_wait_and_no_default_cool_down_gates_nothing() {
        let c = cb(CircuitConfig {
            default_cooldown_ms: 0,
            ..CircuitConfig::default()
        });
        c.rec(0, rl(None));
        assert_eq!(c.gate(0), Gate::Pass);
        assert_eq!(c.gate(1), Gate::Pass, "no probe holds the others back");
        assert_eq!(c.view(1).cooldown_until_ms, None);
        // A wait the provider names still cools down.
        c.rec(2, rl(Some(500)));
        assert_eq!(c.gate(3), cooling(Some(502)));
    }

    #[test]
    fn cool_down_blocks_then_one_probe_whose_success_clears_it_and_is_clamped() {
        let c = cb(CircuitConfig::default());
        c.rec(0, rl(Some(2000)));
        assert_eq!(c.gate(1999), cooling(Some(2000)));
        assert_eq!(c.gate(2000), Gate::Probe);
        assert_eq!(c.gate(2001), cooling(None));
        assert_eq!(c.gate(30_000), cooling(None));
        assert_eq!(c.mode(2001), Mode::Closed);
        assert_eq!(c.view(2001).cooldown_until_ms, Some(2000));
        c.probe(2100, OK);
        assert_eq!(c.view(2100).cooldown_until_ms, None);
        assert_eq!(c.gate(2101), Gate::Pass);
        assert_eq!(c.gate(2101), Gate::Pass);
        // Clamped to max_cooldown_ms, and only ever extended.
        c.rec(100_000, rl(Some(u64::MAX)));
        assert_eq!(c.view(100_000).cooldown_until_ms, Some(400_000));
        c.rec(100_010, rl(Some(5)));
        assert_eq!(c.gate(100_020), cooling(Some(400_000)));
        // A success while still cooling (sent earlier) does not clear it.
        c.rec(100_030, OK);
        assert_eq!(c.view(100_030).cooldown_until_ms, Some(400_000));
    }

    #[test]
    fn cool_down_probe_rate_limited_extends_failure_retries_and_claim_expires() {
        let c = cb(CircuitConfig::default());
        c.rec(0, rl(None)); // default 1000
        assert_eq!(c.gate(1000), Gate::Probe);
        c.probe(1100, rl(None));
        assert_eq!(c.gate(2000), cooling(Some(2100)));
        assert_eq!(c.gate(2100), Gate::Probe);
        // The probe failed: the next request probes again.
        c.probe(2200, FAIL);
        assert_eq!(c.gate(2201), Gate::Probe);
        // That one never answers: its claim expires.
        assert_eq!(c.gate(62_200), cooling(None));
        assert_eq!(c.gate(62_201), Gate::Probe);
        // Never sent: released, the next one probes.
        c.release(62_202);
        assert_eq!(c.gate(62_203), Gate::Probe);
    }

    #[test]
    fn quota_view_blocks_decrements_and_is_forgotten() {
        let c = cb(CircuitConfig::default());
        c.quota(0, (Some(0), Some(5000)), (None, None));
        assert_eq!(c.gate(100), quota(5000));
        assert_eq!(c.gate(5000), Gate::Pass);
        assert_eq!(c.view(5000).requests_remaining, None);
        // Requests: our view counts down between the provider's answers.
        c.quota(6000, (Some(2), None), (None, None));
        assert_eq!(c.gate(6000), Gate::Pass);
        assert_eq!(c.view(6000).requests_remaining, Some(1));
        assert_eq!(c.gate(6000), Gate::Pass);
        // No reset given: kept for window_ms.
        assert_eq!(c.gate(6000), quota(16_000));
        c.quota(7000, (Some(50), Some(1000)), (None, None));
        assert_eq!(c.gate(7000), Gate::Pass);
        // Tokens: blocked when fewer remain than the request needs.
        c.quota(0, (None, None), (Some(1000), Some(60_000)));
        assert_eq!(c.gate_t(10, 600), Gate::Pass);
        assert_eq!(c.view(10).tokens_remaining, Some(400));
        assert_eq!(c.gate_t(10, 600), quota(60_000));
        assert_eq!(c.gate_t(10, 400), Gate::Pass);
        assert_eq!(c.view(10).tokens_remaining, Some(0));
        assert_eq!(c.gate_t(60_000, 600), Gate::Pass);
        assert_eq!(c.view(60_000).tokens_remaining, None);
    }

    /// A store that counts writes and runs another worker's whole update
    /// between this worker's read and write, as concurrent Envoy workers do.
    type Worker<'a> = Box<dyn Fn(&MemStore) + 'a>;
    struct Spy<'a> {
        inner: &'a MemStore,
        sets: Cell<u32>,
        others: RefCell<Vec<Worker<'a>>>,
    }
    fn spy(inner: &MemStore) -> Spy<'_> {
        Spy {
            inner,
            sets: Cell::new(0),
            others: RefCell::new(Vec::new()),
        }
    }
    impl<'a> Spy<'a> {
        fn race(&self, f: impl Fn(&MemStore) + 'a) {
            self.others.borrow_mut().push(Box::new(f));
        }
    }
    impl SharedStore for Spy<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            let other = self.others.borrow_mut().pop();
            if let Some(f) = other {
                f(self.inner);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn record_answer_is_the_single_calls_in_one_write() {
        let cfg = CircuitConfig::default();
        let quota = ((Some(7), Some(500)), (Some(900), None));
        let fails = vec![FAIL; 6];
        for outcomes in [vec![OK], vec![rl(Some(100)), FAIL], fails, vec![]] {
            let (one, many) = (MemStore::default(), MemStore::default());
            // Some history first, the same in both.
            for m in [&one, &many] {
                record(m, K, &cfg, 0, FAIL, false).unwrap();
            }
            let mut modes = Vec::new();
            for (i, &o) in outcomes.iter().enumerate() {
                modes.extend(record(&many, K, &cfg, 10, o, i == 0).unwrap());
            }
            observe_quota(&many, K, &cfg, 10, quota.0, quota.1).unwrap();
            let s = spy(&one);
            let got = record_answer(&s, K, &cfg, 10, &outcomes, true, Some(quota)).unwrap();
            assert_eq!(got, modes, "{outcomes:?}");
            assert_eq!(s.sets.get(), 1, "{outcomes:?}");
            let stored = |m: &MemStore| m.get(K).unwrap().unwrap().0;
            assert_eq!(stored(&one), stored(&many), "{outcomes:?}");
        }
        // Nothing to record: no read, no write.
        let m = MemStore::default();
        assert_eq!(
            record_answer(&m, K, &cfg, 0, &[], false, None).unwrap(),
            vec![]
        );
        assert_eq!(m.keys(), 0);
    }

    #[test]
    fn plain_closed_gate_never_writes() {
        let mem = MemStore::default();
        let c = Cb {
            s: spy(&mem),
            cfg: CircuitConfig::default(),
        };
        // Never written: nothing is created.
        assert_eq!(c.gate_t(0, 100), Gate::Pass);
        assert_eq!((c.s.sets.get(), mem.keys()), (0, 0));
        c.rec(0, OK);
        let (sets, cas) = (c.s.sets.get(), c.s.get(K).unwrap().unwrap().1);
        for t in 0..50 {
            assert_eq!(c.gate_t(t, 100), Gate::Pass);
        }
        // Nor does an empty quota observation, or a release with nothing claimed.
        c.quota(0, (None, Some(5)), (None, None));
        c.release(0);
        assert_eq!(c.s.sets.get(), sets);
        assert_eq!(c.s.get(K).unwrap().unwrap().1, cas);
    }

    #[test]
    fn interleaved_workers_never_exceed_the_probe_bound() {
        for (probes, cool) in [(1u32, false), (2, false), (3, false), (1, true)] {
            let c = cb(CircuitConfig {
                half_open_probes: probes,
                ..CircuitConfig::default()
            });
            let now = if cool {
                c.rec(0, rl(Some(100)));
                100
            } else {
                c.open_at(0);
                15_000
            };
            let granted = Cell::new(0u32);
            let store = spy(&c.s);
            for _ in 0..20 {
                let (g, cfg) = (&granted, c.cfg.clone());
                store.race(move |m| {
                    if gate(m, K, &cfg, now, 0).unwrap() == Gate::Probe {
                        g.set(g.get() + 1);
                    }
                });
                if gate(&store, K, &c.cfg, now, 0).unwrap() == Gate::Probe {
                    granted.set(granted.get() + 1);
                }
                store.others.borrow_mut().clear();
            }
            assert_eq!(granted.get(), probes, "probes {probes}, cool-down {cool}");
        }
    }

    #[test]
    fn racing_creators_do_not_erase_each_other() {
        let c = cb(CircuitConfig::default());
        let store = spy(&c.s);
        let cfg = c.cfg.clone();
        store.race(move |m| {
            record(m, K, &cfg, 0, rl(Some(500)), false).unwrap();
        });
        record(&store, K, &c.cfg, 0, FAIL, false).unwrap();
        // Both the other worker's cool-down and this worker's failure are there.
        assert_eq!(c.view(0).cooldown_until_ms, Some(500));
        assert_eq!(decode(&c.s.get(K).unwrap().unwrap().0).unwrap().c, 1);
    }

    #[test]
    fn corrupt_value_is_fresh_state() {
        let c = cb(CircuitConfig::default());
        assert_eq!(key("a"), K);
        c.s.set(K, b"\xc1not msgpack", 0).unwrap();
        assert_eq!(c.gate(0), Gate::Pass);
        assert_eq!(c.mode(0), Mode::Closed);
        c.open_at(0);
    }

    #[test]
    fn stored_value_stays_small() {
        let c = cb(CircuitConfig::default());
        let t0 = 1_700_000_000_000;
        for i in 0..20u64 {
            c.rec(t0 + i * 1000, OK);
        }
        c.rec(t0 + 19_000, rl(None));
        c.quota(t0 + 19_000, (Some(99), Some(1)), (Some(9), None));
        let (bytes, _) = c.s.get(K).unwrap().unwrap();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes).unwrap().w.len(), 10);
    }

    #[test]
    fn clock_going_backwards_never_panics() {
        let c = cb(CircuitConfig {
            latency_p95_ms: 100,
            ..CircuitConfig::default()
        });
        for _ in 0..4 {
            c.rec(100_000, FAIL);
        }
        // Earlier outcomes count into the latest bucket.
        assert_eq!(c.rec(0, FAIL), Some(Mode::Open));
        assert_eq!(c.gate(0), open_until(15_000));
        assert_eq!(c.gate(15_000), Gate::Probe);
        assert_eq!(c.gate(0), blocked(None, Blocked::ProbeBusy));
        c.rec(90_000, rl(Some(1000)));
        let huge = Outcome::Failure {
            latency_ms: Some(u64::MAX),
        };
        for t in [0, 1, 89_000, u64::MAX] {
            c.gate_t(t, u64::MAX);
            c.probe(t, OK);
            c.rec(t, huge);
            c.quota(t, (Some(1), Some(u64::MAX)), (Some(1), None));
            c.release(t);
            c.view(t);
        }
        let c = cb(CircuitConfig {
            window_ms: 0,
            open_ms: u64::MAX,
            probe_timeout_ms: 0,
            half_open_probes: 0,
            ..CircuitConfig::default()
        });
        for t in [5, 0, u64::MAX, 3] {
            c.rec(t, FAIL);
            c.gate(t);
        }
    }
}
