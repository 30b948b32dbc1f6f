//! The first attempt's cluster by strategy (weighted, lowest latency), the
//! decaying time-to-first-token averages it reads, and the route's retry
//! budget, all in Envoy shared data so every worker agrees.
//!
//! Key families (no delete in shared data, so both are bounded by the config):
//! `llmcap/lat/<cluster>/<slot>` ([`LATENCY_SLOTS`] per configured cluster, at
//! most 64 clusters; a slot is owned by the model whose hash it holds, and a
//! model hashing to a taken slot takes it over) and `llmcap/rtb/<route>` (one
//! per configured route, at most 256).

use crate::core::config::{Routing, Strategy, Target};
use crate::core::env::{stable_hash, SharedStore, StoreError};
use crate::core::upstream::circuit;

/// CAS attempts before an update is given up (fail open).
const CAS_TRIES: usize = 4;
/// Retries a window always allows, so a quiet route can still fail over (a
/// circuit's first consecutive failures, and each failed probe, are retried
/// elsewhere).
pub const RETRY_BUDGET_FLOOR: f64 = 10.0;
/// Latency averages kept per cluster (one per model, hashed).
pub const LATENCY_SLOTS: u32 = 8;

/// Shared-data key of the latency average of `model` (`""`: the client's
/// request named none) on `cluster`.
pub fn latency_key(cluster: &str, model: &str) -> String {
    format!(
        "llmcap/lat/{cluster}/{}",
        stable_hash(model) % LATENCY_SLOTS
    )
}

/// Shared-data key of a route's retry budget.
pub fn budget_key(route: &str) -> String {
    format!("llmcap/rtb/{route}")
}

/// Shared-data key of a route's hedge share (one per configured route).
pub fn hedge_key(route: &str) -> String {
    format!("llmcap/hdg/{route}")
}

/// The window over which a route's hedges are held to `max_share`.
pub const HEDGE_WINDOW_MS: u64 = 60_000;

/// A cluster's decaying average of time to first token for one model: every
/// sample weighs `2^(-age / half_life)`, so the average follows wall time, not
/// the sample rate (a busy cluster's is smooth, a rarely measured one's still
/// forgets its old samples at the same pace).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// The decayed sum of samples, ms.
    pub sum_ms: f64,
    /// The decayed count of samples.
    pub weight: f64,
    pub updated_ms: u64,
}

impl Latency {
    /// The average, ms.
    pub fn avg_ms(&self) -> f64 {
        if self.weight > 0.0 {
            self.sum_ms / self.weight
        } else {
            0.0
        }
    }
}

/// The value: sum (f64), weight (f64), last update (u64), the owning model's
/// hash (u32).
fn decode_latency(b: &[u8], model: &str) -> Option<Latency> {
    let sum = f64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let weight = f64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    let at = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    let tag = u32::from_le_bytes(b.get(24..28)?.try_into().ok()?);
    let sane = sum.is_finite() && weight.is_finite() && weight > 0.0 && sum >= 0.0;
    (sane && tag == stable_hash(model)).then_some(Latency {
        sum_ms: sum,
        weight,
        updated_ms: at,
    })
}

fn encode_latency(l: &Latency, model: &str) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..8].copy_from_slice(&l.sum_ms.to_le_bytes());
    b[8..16].copy_from_slice(&l.weight.to_le_bytes());
    b[16..24].copy_from_slice(&l.updated_ms.to_le_bytes());
    b[24..].copy_from_slice(&stable_hash(model).to_le_bytes());
    b
}

/// How much of a sample's weight is left after `dt_ms`: `2^(-dt / half_life)`.
pub fn decay(dt_ms: u64, half_life_ms: u64) -> f64 {
    (-(dt_ms as f64) / half_life_ms.max(1) as f64).exp2()
}

/// Folds one time-to-first-token sample into the average of `model` on `cluster`.
pub fn record_latency(
    store: &dyn SharedStore,
    cluster: &str,
    model: &str,
    half_life_ms: u64,
    sample_ms: u64,
    now_ms: u64,
) -> Result<Latency, StoreError> {
    let key = latency_key(cluster, model);
    let mut last = Err(StoreError::CasMismatch);
    for _ in 0..CAS_TRIES {
        // Absent: created with a token no live value has (a racing creator
        // makes this write fail and retry). Another model's: taken over.
        let (old, cas) = match store.get(&key)? {
            Some((b, cas)) => (decode_latency(&b, model), cas),
            None => (None, u32::MAX),
        };
        let x = sample_ms as f64;
        let next = match old {
            None => Latency {
                sum_ms: x,
                weight: 1.0,
                updated_ms: now_ms,
            },
            Some(o) => {
                let d = decay(now_ms.saturating_sub(o.updated_ms), half_life_ms);
                Latency {
                    sum_ms: o.sum_ms * d + x,
                    weight: o.weight * d + 1.0,
                    updated_ms: now_ms.max(o.updated_ms),
                }
            }
        };
        match store.set(&key, &encode_latency(&next, model), cas) {
            Ok(()) => return Ok(next),
            Err(e) => last = Err(e),
        }
    }
    last
}

/// The average of `model` on `cluster`, `None` when never measured (or unreadable).
pub fn latency(store: &dyn SharedStore, cluster: &str, model: &str) -> Option<Latency> {
    let (b, _) = store.get(&latency_key(cluster, model)).ok()??;
    decode_latency(&b, model)
}

/// What the planner sees of a chain entry before the strategy chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Closed, not cooling down, quota not known to be short.
    Healthy,
    /// Its open period or cool-down is over: the next request may be its probe.
    ProbeDue,
    /// Open, cooling down, or out of quota.
    Out,
}

/// An entry's standing, from a read of its circuit (an unreadable one is healthy).
pub fn standing(store: &dyn SharedStore, t: &Target, now_ms: u64, tokens: u64) -> Standing {
    let key = circuit::key(&t.cluster.name);
    let Ok(v) = circuit::view(store, &key, &t.cluster.circuit, now_ms) else {
        return Standing::Healthy;
    };
    let quota_ok =
        v.requests_remaining != Some(0) && v.tokens_remaining.is_none_or(|r| r >= tokens);
    match (v.mode, v.cooldown_until_ms) {
        (circuit::Mode::Open, _) => Standing::Out,
        (circuit::Mode::HalfOpen, _) => Standing::ProbeDue,
        (circuit::Mode::Closed, Some(u)) if u <= now_ms => Standing::ProbeDue,
        (circuit::Mode::Closed, Some(_)) => Standing::Out,
        (circuit::Mode::Closed, None) if quota_ok => Standing::Healthy,
        (circuit::Mode::Closed, None) => Standing::Out,
    }
}

/// The order in which the planner gates the chain's entries (`chain`'s
/// indices), and the strategy's pick. `model(i)` is the model entry `i` is
/// asked. Ordered: chain order, no reads. Otherwise: entries whose probe is
/// due first (so an active-active cluster that failed is tried again and wins
/// its share back), then the pick among the healthy entries, then the rest in
/// chain order. The gate still decides: an entry it blocks is skipped.
pub fn order<'m>(
    store: &dyn SharedStore,
    chain: &[Target],
    strategy: &Strategy,
    model: &dyn Fn(usize) -> &'m str,
    now_ms: u64,
    tokens: u64,
    random: u64,
) -> (Vec<usize>, Option<usize>) {
    let all: Vec<usize> = (0..chain.len()).collect();
    if *strategy == Strategy::Ordered || chain.len() < 2 {
        return (all, None);
    }
    let standings: Vec<Standing> = chain
        .iter()
        .map(|t| standing(store, t, now_ms, tokens))
        .collect();
    let healthy: Vec<bool> = standings.iter().map(|s| *s == Standing::Healthy).collect();
    let pick = choose(store, chain, &healthy, strategy, model, random);
    let mut out: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| standings.get(i) == Some(&Standing::ProbeDue))
        .collect();
    out.extend(pick);
    for i in all {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    (out, pick)
}

/// The chain entry the first attempt should go to, among `healthy` ones
/// (`healthy[i]` for `chain[i]`); `None` keeps chain order (ordered strategy,
/// fewer than two healthy entries: the gate decides). `random` is one uniform
/// draw: its low 32 bits decide whether to explore, its high ones where.
pub fn choose<'m>(
    store: &dyn SharedStore,
    chain: &[Target],
    healthy: &[bool],
    strategy: &Strategy,
    model: &dyn Fn(usize) -> &'m str,
    random: u64,
) -> Option<usize> {
    let ok: Vec<usize> = (0..chain.len())
        .filter(|&i| healthy.get(i).copied().unwrap_or(false))
        .collect();
    if ok.len() < 2 {
        return None;
    }
    match *strategy {
        Strategy::Ordered => None,
        Strategy::Weighted => {
            let total: u64 = ok
                .iter()
                .filter_map(|&i| chain.get(i))
                .map(|t| u64::from(t.weight))
                .sum();
            if total == 0 {
                return None;
            }
            let mut r = random % total;
            for &i in &ok {
                let w = chain.get(i).map_or(0, |t| u64::from(t.weight));
                if r < w {
                    return Some(i);
                }
                r -= w;
            }
            None
        }
        Strategy::LowestLatency {
            exploration,
            tolerance,
            ..
        } => {
            // An entry never measured is measured first (it counts as 0 ms).
            let avg: Vec<(usize, f64)> = ok
                .iter()
                .map(|&i| {
                    let ms = chain
                        .get(i)
                        .and_then(|t| latency(store, &t.cluster.name, model(i)))
                        .map_or(0.0, |l| l.avg_ms());
                    (i, ms)
                })
                .collect();
            let best = avg.iter().map(|&(_, ms)| ms).fold(f64::INFINITY, f64::min);
            let limit = best * (1.0 + tolerance);
            let (fast, slow): (Vec<usize>, Vec<usize>) = ok
                .iter()
                .partition(|&&i| avg.iter().any(|&(j, ms)| j == i && ms <= limit));
            let draw = (random & 0xffff_ffff) as f64 / 4_294_967_296.0;
            let at = (random >> 32) as usize;
            let from = if draw < exploration && !slow.is_empty() {
                &slow
            } else {
                &fast
            };
            from.get(at % from.len().max(1)).copied()
        }
    }
}

/// A route's retry budget: requests and retries over two fixed windows, read
/// as a sliding one (the previous window weighted by how much of it still
/// overlaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub window_start_ms: u64,
    pub requests: u32,
    pub retries: u32,
    pub prev_requests: u32,
    pub prev_retries: u32,
}

impl Budget {
    fn decode(b: &[u8]) -> Option<Budget> {
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        Some(Budget {
            window_start_ms: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            requests: u32_at(8)?,
            retries: u32_at(12)?,
            prev_requests: u32_at(16)?,
            prev_retries: u32_at(20)?,
        })
    }

    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.window_start_ms.to_le_bytes());
        b[8..12].copy_from_slice(&self.requests.to_le_bytes());
        b[12..16].copy_from_slice(&self.retries.to_le_bytes());
        b[16..20].copy_from_slice(&self.prev_requests.to_le_bytes());
        b[20..24].copy_from_slice(&self.prev_retries.to_le_bytes());
        b
    }

    /// Rolls the windows forward to `now_ms`.
    fn at(mut self, now_ms: u64, window_ms: u64) -> Budget {
        let w = window_ms.max(1);
        let start = now_ms - now_ms % w;
        if start == self.window_start_ms {
            return self;
        }
        if start == self.window_start_ms.saturating_add(w) {
            self.prev_requests = self.requests;
            self.prev_retries = self.retries;
        } else {
            self.prev_requests = 0;
            self.prev_retries = 0;
        }
        self.requests = 0;
        self.retries = 0;
        self.window_start_ms = start;
        self
    }

    /// Requests and retries over the sliding window ending at `now_ms`.
    pub fn sliding(&self, now_ms: u64, window_ms: u64) -> (f64, f64) {
        let w = window_ms.max(1) as f64;
        let into = now_ms.saturating_sub(self.window_start_ms) as f64;
        let keep = (1.0 - into / w).clamp(0.0, 1.0);
        (
            f64::from(self.requests) + f64::from(self.prev_requests) * keep,
            f64::from(self.retries) + f64::from(self.prev_retries) * keep,
        )
    }

    /// Whether one more retry fits in `percent` of the requests.
    pub fn allows(&self, now_ms: u64, window_ms: u64, percent: u32) -> bool {
        let (req, ret) = self.sliding(now_ms, window_ms);
        ret + 1.0 <= (req * f64::from(percent) / 100.0).max(RETRY_BUDGET_FLOOR)
    }
}

/// Which count an update adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// A new request: counted; the answer says whether the router may retry it.
    Request,
    /// Retries the router sent: counted (they were sent); the answer says
    /// whether they fit in the budget.
    Retries(u32),
}

/// Counts a request or retries in `route`'s budget and says whether a retry
/// is (was) within it; `percent` of the requests over the sliding window, at
/// least [`RETRY_BUDGET_FLOOR`]. Store errors fail open (allowed).
pub fn spend(store: &dyn SharedStore, route: &str, r: &Routing, spend: Spend, now_ms: u64) -> bool {
    let key = budget_key(route);
    let w = r.retry_budget_window_ms;
    for _ in 0..CAS_TRIES {
        let (old, cas) = match store.get(&key) {
            Ok(Some((b, cas))) => (Budget::decode(&b).unwrap_or_default(), cas),
            Ok(None) => (Budget::default(), u32::MAX),
            Err(_) => return true,
        };
        let mut b = old.at(now_ms, w);
        let allowed = match spend {
            Spend::Request => {
                b.requests = b.requests.saturating_add(1);
                b.allows(now_ms, w, r.retry_budget_percent)
            }
            Spend::Retries(n) => {
                let fits = b.allows(now_ms, w, r.retry_budget_percent);
                b.retries = b.retries.saturating_add(n);
                fits
            }
        };
        match store.set(&key, &b.encode(), cas) {
            Ok(()) => return allowed,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(_)) => return true,
        }
    }
    true
}

/// Counts a request in `route`'s hedge share and arms its hedge if one more
/// fits in `max_share` of the requests over the sliding minute (this one
/// included). An armed hedge counts at once, fired or not, so concurrent
/// requests cannot overshoot; [`hedge_refund`] gives back one that never
/// fired. Store errors refuse (no hedge): extra load is never the default.
pub fn hedge_arm(store: &dyn SharedStore, route: &str, max_share: f64, now_ms: u64) -> bool {
    let key = hedge_key(route);
    for _ in 0..CAS_TRIES {
        let (old, cas) = match store.get(&key) {
            Ok(Some((b, cas))) => (Budget::decode(&b).unwrap_or_default(), cas),
            Ok(None) => (Budget::default(), u32::MAX),
            Err(_) => return false,
        };
        let mut b = old.at(now_ms, HEDGE_WINDOW_MS);
        b.requests = b.requests.saturating_add(1);
        let (req, armed) = b.sliding(now_ms, HEDGE_WINDOW_MS);
        let arm = armed + 1.0 <= req * max_share;
        if arm {
            b.retries = b.retries.saturating_add(1);
        }
        match store.set(&key, &b.encode(), cas) {
            Ok(()) => return arm,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(_)) => return false,
        }
    }
    false
}

/// Gives back a hedge [`hedge_arm`] armed that never fired (the first attempt
/// answered in time, or the request ended first).
pub fn hedge_refund(store: &dyn SharedStore, route: &str, now_ms: u64) {
    let key = hedge_key(route);
    for _ in 0..CAS_TRIES {
        let Ok(Some((v, cas))) = store.get(&key) else {
            return;
        };
        let mut b = Budget::decode(&v)
            .unwrap_or_default()
            .at(now_ms, HEDGE_WINDOW_MS);
        if b.retries > 0 {
            b.retries -= 1;
        } else if b.prev_retries > 0 {
            b.prev_retries -= 1;
        } else {
            return;
        }
        match store.set(&key, &b.encode(), cas) {
            Err(StoreError::CasMismatch) => continue,
            _ => return,
        }
    }
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

    fn chain(weights: &[u32]) -> Vec<Target> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Target {
                cluster: Rc::new(Cluster {
                    name: format!("c{i}"),
                    provider: Provider::OpenAi,
                    circuit: CircuitConfig::default(),
                    adaptive: false,
                }),
                model: None,
                weight: w,
            })
            .collect()
    }

    /// A deterministic spread of draws (splitmix64).
    fn draws(n: usize) -> impl Iterator<Item = u64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n).map(move |_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    fn any(_: usize) -> &'static str {
        "m"
    }

    fn ll(exploration: f64) -> Strategy {
        Strategy::LowestLatency {
            half_life_ms: 1000,
            exploration,
            tolerance: 0.2,
        }
    }

    #[test]
    fn weighted_draws_follow_the_weights_among_healthy_entries() {
        let s = MemStore::default();
        let c = chain(&[70, 30]);
        let mut first = 0;
        for r in draws(10_000) {
            if choose(&s, &c, &[true, true], &Strategy::Weighted, &any, r) == Some(0) {
                first += 1;
            }
        }
        assert!(
            (6_800..=7_200).contains(&first),
            "first got {first} of 10000"
        );
        // One healthy entry, or none: chain order (the gate decides).
        assert_eq!(
            choose(&s, &c, &[false, true], &Strategy::Weighted, &any, 1),
            None
        );
        assert_eq!(
            choose(&s, &c, &[false, false], &Strategy::Weighted, &any, 5),
            None
        );
        // Three entries, the middle one out: the others split by their weights.
        let c = chain(&[1, 5, 3]);
        let picks: Vec<_> = draws(4000)
            .map(|r| choose(&s, &c, &[true, false, true], &Strategy::Weighted, &any, r))
            .collect();
        assert!(picks.iter().all(|p| matches!(p, Some(0) | Some(2))));
        let third = picks.iter().filter(|p| **p == Some(2)).count();
        assert!(
            (2_850..=3_150).contains(&third),
            "third got {third} of 4000"
        );
    }

    #[test]
    fn a_zero_weight_entry_gets_no_first_attempt() {
        let s = MemStore::default();
        let c = chain(&[0, 1]);
        for r in draws(1000) {
            let p = choose(&s, &c, &[true, true], &Strategy::Weighted, &any, r);
            assert_eq!(p, Some(1));
        }
    }

    #[test]
    fn ordered_keeps_chain_order_without_reading_anything() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        assert_eq!(
            choose(&s, &c, &[true, true], &Strategy::Ordered, &any, 7),
            None
        );
        let (o, pick) = order(&s, &c, &Strategy::Ordered, &any, 0, 0, 7);
        assert_eq!((o, pick), (vec![0, 1], None));
        assert_eq!(s.keys(), 0);
    }

    #[test]
    fn the_average_forgets_old_samples_by_half_life() {
        let s = MemStore::default();
        let l = record_latency(&s, "a", "m", 1000, 800, 0).unwrap();
        assert_eq!(l.avg_ms(), 800.0, "the first sample is the average");
        // One half-life later the old sample weighs half: (400 + 50) / 1.5.
        let l = record_latency(&s, "a", "m", 1000, 50, 1000).unwrap();
        assert!((l.avg_ms() - 300.0).abs() < 1e-9, "got {}", l.avg_ms());
        // Samples at the same instant weigh the same.
        let l = record_latency(&s, "a", "m", 1000, 50, 1000).unwrap();
        assert!(
            (l.avg_ms() - 500.0 / 2.5).abs() < 1e-9,
            "got {}",
            l.avg_ms()
        );
        assert_eq!(latency(&s, "a", "m"), Some(l));
        // Another cluster, or another model, is not measured.
        assert_eq!(latency(&s, "b", "m"), None);
        assert_eq!(latency(&s, "a", "other"), None);
        // Ten half-lives on, one new sample is nearly the whole average.
        let l = record_latency(&s, "a", "m", 1000, 40, 11_000).unwrap();
        assert!((l.avg_ms() - 40.0).abs() < 0.5, "got {}", l.avg_ms());
    }

    #[test]
    fn latency_keys_are_bounded_per_cluster_and_a_slot_changes_hands() {
        let s = MemStore::default();
        for i in 0..500 {
            record_latency(&s, "a", &format!("model-{i}"), 1000, 100, 0).unwrap();
        }
        assert!(s.keys() <= LATENCY_SLOTS as usize, "{} keys", s.keys());
        // A model whose slot another took is unmeasured, never someone else's.
        let (x, y) = (0..500)
            .map(|i| format!("model-{i}"))
            .fold((None, None), |(x, y), m| match (x, y) {
                (None, _) => (Some(m), None),
                (Some(a), None) if latency_key("a", &a) == latency_key("a", &m) => {
                    (Some(a), Some(m))
                }
                other => other,
            });
        let (x, y) = (x.unwrap(), y.unwrap());
        record_latency(&s, "a", &x, 1000, 900, 1).unwrap();
        assert_eq!(latency(&s, "a", &x).map(|l| l.avg_ms()), Some(900.0));
        assert_eq!(latency(&s, "a", &y), None);
    }

    #[test]
    fn lowest_latency_prefers_the_fast_and_explores_the_slow() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        record_latency(&s, "c0", "m", 1000, 800, 0).unwrap();
        record_latency(&s, "c1", "m", 1000, 50, 0).unwrap();
        let n = 10_000;
        let slow = draws(n)
            .filter(|&r| choose(&s, &c, &[true, true], &ll(0.1), &any, r) == Some(0))
            .count();
        assert!(
            (800..=1200).contains(&slow),
            "exploration sent {slow} of {n}"
        );
        // Without exploration the slow one never gets a first attempt.
        assert!(draws(1000).all(|r| choose(&s, &c, &[true, true], &ll(0.0), &any, r) == Some(1)));
        // The slow one recovers: samples from exploration bring it back, and
        // once within the tolerance both share the first attempts evenly.
        let mut now = 0;
        for _ in 0..10 {
            now += 1000;
            record_latency(&s, "c0", "m", 1000, 55, now).unwrap();
            record_latency(&s, "c1", "m", 1000, 50, now).unwrap();
        }
        let back = draws(n)
            .filter(|&r| choose(&s, &c, &[true, true], &ll(0.0), &any, r) == Some(0))
            .count();
        assert!(
            (4_700..=5_300).contains(&back),
            "the recovered one got {back} of {n}"
        );
    }

    #[test]
    fn latency_is_per_model_of_each_entry() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        // c0 is fast for "small" and slow for "big"; c1 the other way round.
        record_latency(&s, "c0", "small", 1000, 50, 0).unwrap();
        record_latency(&s, "c0", "big", 1000, 900, 0).unwrap();
        record_latency(&s, "c1", "small", 1000, 900, 0).unwrap();
        record_latency(&s, "c1", "big", 1000, 50, 0).unwrap();
        let small = |_: usize| "small";
        let big = |_: usize| "big";
        assert_eq!(choose(&s, &c, &[true, true], &ll(0.0), &small, 9), Some(0));
        assert_eq!(choose(&s, &c, &[true, true], &ll(0.0), &big, 9), Some(1));
    }

    #[test]
    fn an_unmeasured_cluster_is_measured_first() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        record_latency(&s, "c0", "m", 1000, 50, 0).unwrap();
        assert_eq!(choose(&s, &c, &[true, true], &ll(0.0), &any, 3), Some(1));
    }

    #[test]
    fn order_puts_a_due_probe_first_then_the_pick_then_chain_order() {
        let s = MemStore::default();
        let c = chain(&[1, 1, 1]);
        let cfg = CircuitConfig::default();
        // c0 opened at 0 (open for 15 s), c1 and c2 healthy, c2 the faster.
        for _ in 0..cfg.consecutive_failures {
            circuit::record(
                &s,
                &circuit::key("c0"),
                &cfg,
                0,
                circuit::Outcome::Failure { latency_ms: None },
                false,
            )
            .unwrap();
        }
        record_latency(&s, "c1", "m", 1000, 500, 0).unwrap();
        record_latency(&s, "c2", "m", 1000, 50, 0).unwrap();
        let (o, pick) = order(&s, &c, &ll(0.0), &any, 1000, 0, 1);
        assert_eq!((o, pick), (vec![2, 0, 1], Some(2)), "open: after the pick");
        // Its open period is over: its probe goes first, the pick next.
        let (o, pick) = order(&s, &c, &ll(0.0), &any, 16_000, 0, 1);
        assert_eq!((o, pick), (vec![0, 2, 1], Some(2)));
        // A cluster cooling down takes no first attempt from the strategy.
        circuit::record(
            &s,
            &circuit::key("c2"),
            &cfg,
            16_000,
            circuit::Outcome::RateLimited {
                cooldown_ms: Some(5000),
            },
            false,
        )
        .unwrap();
        assert_eq!(standing(&s, &c[2], 16_001, 0), Standing::Out);
        assert_eq!(standing(&s, &c[2], 21_001, 0), Standing::ProbeDue);
        let (o, pick) = order(&s, &c, &ll(0.0), &any, 16_001, 0, 1);
        assert_eq!(
            (o, pick),
            (vec![0, 1, 2], None),
            "one healthy entry: the gate decides"
        );
    }

    fn routing(percent: u32) -> Routing {
        Routing {
            retry_budget_percent: percent,
            retry_budget_window_ms: 10_000,
            ..Routing::default()
        }
    }

    #[test]
    fn retries_stay_within_the_budget_share_of_requests() {
        let s = MemStore::default();
        let r = routing(10);
        let (mut sent, mut denied) = (0, 0);
        // A storm: every request wants a retry, and makes it when allowed.
        for i in 0..1000u64 {
            let now = i * 5; // 200 requests a second, within one 10 s window
            if spend(&s, "chat", &r, Spend::Request, now) {
                spend(&s, "chat", &r, Spend::Retries(1), now);
                sent += 1;
            } else {
                denied += 1;
            }
        }
        assert_eq!(sent, 100, "10% of 1000 requests");
        assert_eq!(denied, 900);
    }

    /// `n` requests at one instant, each wanting a retry and making it when
    /// allowed: how many were made.
    fn retries_made(percent: u32, n: usize) -> usize {
        let s = MemStore::default();
        let r = routing(percent);
        (0..n)
            .filter(|_| {
                let ok = spend(&s, "q", &r, Spend::Request, 0);
                if ok {
                    spend(&s, "q", &r, Spend::Retries(1), 0);
                }
                ok
            })
            .count()
    }

    #[test]
    fn a_quiet_route_keeps_a_floor_of_retries() {
        assert_eq!(retries_made(10, 15), RETRY_BUDGET_FLOOR as usize);
    }

    #[test]
    fn the_window_slides_and_a_request_learns_if_it_may_retry() {
        let s = MemStore::default();
        let r = routing(10);
        for _ in 0..200 {
            spend(&s, "w", &r, Spend::Request, 0);
        }
        assert!(spend(&s, "w", &r, Spend::Retries(19), 0), "19 of 20 spent");
        assert!(spend(&s, "w", &r, Spend::Retries(1), 0), "the 20th fits");
        assert!(
            !spend(&s, "w", &r, Spend::Retries(1), 0),
            "the 21st was over"
        );
        // Spent: the next request is told it may not retry.
        assert!(!spend(&s, "w", &r, Spend::Request, 1));
        // Half the next window on, half the old counts remain (100.5 requests,
        // 10.5 retries, plus this request): still spent...
        assert!(!spend(&s, "w", &r, Spend::Request, 15_000));
        // ...until new requests make room: 115.5 requests allow 11.55 retries.
        for _ in 0..13 {
            spend(&s, "w", &r, Spend::Request, 15_000);
        }
        assert!(spend(&s, "w", &r, Spend::Request, 15_000));
        let b = Budget::decode(&s.get(&budget_key("w")).unwrap().unwrap().0).unwrap();
        assert_eq!(
            (b.prev_requests, b.prev_retries, b.requests, b.retries),
            (201, 21, 15, 0)
        );
        // Two windows on, everything old is gone.
        let b = b.at(40_000, 10_000);
        assert_eq!(b.sliding(40_000, 10_000), (0.0, 0.0));
    }

    #[test]
    fn a_zero_budget_denies_every_retry_past_the_floor() {
        assert_eq!(retries_made(0, 100), RETRY_BUDGET_FLOOR as usize);
    }

    #[test]
    fn the_budget_applies_to_chains_and_to_single_clusters_only_when_asked() {
        let d = Routing::default();
        assert!(d.budgeted(2) && !d.budgeted(1) && !d.budgeted(0));
        let e = Routing {
            retry_budget_explicit: true,
            ..Routing::default()
        };
        assert!(e.budgeted(1) && !e.budgeted(0));
    }

    #[test]
    fn hedges_stay_within_their_share_and_unfired_ones_come_back() {
        let s = MemStore::default();
        // 1,000 requests in one minute, 5%: the 20th request is the first to
        // fit one (1 <= 20 x 0.05), 50 in all, every one armed at once.
        let armed = (0..1000)
            .filter(|i| hedge_arm(&s, "r", 0.05, *i as u64 * 50))
            .count();
        assert_eq!(armed, 50);
        assert!(!hedge_arm(&s, "r", 0.05, 50_000));
        // Ten that never fired come back: ten more requests may be hedged, and
        // one for the 20 new requests (51 of 1,021).
        for _ in 0..10 {
            hedge_refund(&s, "r", 50_000);
        }
        let again = (0..20).filter(|_| hedge_arm(&s, "r", 0.05, 50_001)).count();
        assert_eq!(again, 11);
        // A minute later the old window still overlaps, two later it is gone.
        assert!(!hedge_arm(&s, "r", 0.05, 60_000));
        let fresh = (0..100)
            .filter(|_| hedge_arm(&s, "r", 0.05, 180_000))
            .count();
        assert_eq!(fresh, 5);
        // A refund with nothing armed changes nothing; one key per route.
        let t = MemStore::default();
        hedge_refund(&t, "q", 0);
        assert_eq!(t.keys(), 0);
        assert_eq!(s.keys(), 1);
    }

    #[test]
    fn a_store_error_arms_no_hedge() {
        struct Broken;
        impl SharedStore for Broken {
            fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
                Err(StoreError::Host(1))
            }
            fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
                Err(StoreError::Host(1))
            }
        }
        assert!(!hedge_arm(&Broken, "r", 1.0, 0));
    }
}
