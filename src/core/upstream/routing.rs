//! The first attempt's cluster by strategy (weighted, lowest latency), the
//! decaying time-to-first-token averages it reads, and the route's retry
//! budget, all in Envoy shared data so every worker agrees.
//!
//! Key families (no delete in shared data, so both are bounded by the config):
//! `llmcap/lat/<cluster>` (one per configured cluster, at most 64) and
//! `llmcap/rtb/<route>` (one per configured route with a chain, at most 256).

use crate::core::config::{Routing, Strategy, Target};
use crate::core::env::{SharedStore, StoreError};

/// CAS attempts before an update is given up (fail open).
const CAS_TRIES: usize = 4;
/// Retries a window always allows, so a quiet route can still fail over.
pub const RETRY_BUDGET_FLOOR: f64 = 3.0;

/// Shared-data key of a cluster's latency average.
pub fn latency_key(cluster: &str) -> String {
    format!("llmcap/lat/{cluster}")
}

/// Shared-data key of a route's retry budget.
pub fn budget_key(route: &str) -> String {
    format!("llmcap/rtb/{route}")
}

/// A cluster's decaying average of time to first token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub avg_ms: f64,
    pub updated_ms: u64,
}

fn decode_latency(b: &[u8]) -> Option<Latency> {
    let avg = f64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    avg.is_finite().then_some(Latency {
        avg_ms: avg,
        updated_ms: at,
    })
}

fn encode_latency(l: &Latency) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&l.avg_ms.to_le_bytes());
    b[8..].copy_from_slice(&l.updated_ms.to_le_bytes());
    b
}

/// The weight of a new sample: a sample's pull grows with the time since the
/// last one (`1 - 2^(-dt / half_life)`), so a cluster measured rarely (by
/// exploration) moves quickly, and never falls below 1/20 so a busy cluster's
/// average still follows its samples.
pub fn sample_weight(dt_ms: u64, half_life_ms: u64) -> f64 {
    let hl = half_life_ms.max(1) as f64;
    let w = 1.0 - (-(dt_ms as f64) / hl).exp2();
    w.clamp(0.05, 1.0)
}

/// Folds one time-to-first-token sample into `cluster`'s average.
pub fn record_latency(
    store: &dyn SharedStore,
    cluster: &str,
    half_life_ms: u64,
    sample_ms: u64,
    now_ms: u64,
) -> Result<Latency, StoreError> {
    let key = latency_key(cluster);
    let mut last = Err(StoreError::CasMismatch);
    for _ in 0..CAS_TRIES {
        let (old, cas) = match store.get(&key)? {
            Some((b, cas)) => (decode_latency(&b), cas),
            None => (None, 0),
        };
        let next = match old {
            None => Latency {
                avg_ms: sample_ms as f64,
                updated_ms: now_ms,
            },
            Some(o) => {
                let w = sample_weight(now_ms.saturating_sub(o.updated_ms), half_life_ms);
                Latency {
                    avg_ms: o.avg_ms + (sample_ms as f64 - o.avg_ms) * w,
                    updated_ms: now_ms.max(o.updated_ms),
                }
            }
        };
        match store.set(&key, &encode_latency(&next), cas) {
            Ok(()) => return Ok(next),
            Err(e) => last = Err(e),
        }
    }
    last
}

/// A cluster's average, `None` when never measured (or unreadable).
pub fn latency(store: &dyn SharedStore, cluster: &str) -> Option<Latency> {
    let (b, _) = store.get(&latency_key(cluster)).ok()??;
    decode_latency(&b)
}

/// The chain entry the first attempt should go to, among `healthy` ones
/// (`healthy[i]` for `chain[i]`); `None` keeps chain order (ordered strategy,
/// nothing healthy, or nothing to choose). `random` is one uniform draw.
pub fn choose(
    store: &dyn SharedStore,
    chain: &[Target],
    healthy: &[bool],
    strategy: &Strategy,
    random: u64,
) -> Option<usize> {
    let ok: Vec<usize> = (0..chain.len())
        .filter(|&i| healthy.get(i).copied().unwrap_or(false))
        .collect();
    if ok.len() < 2 {
        return ok.first().copied();
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
        Strategy::LowestLatency { exploration, .. } => {
            // An entry never measured is measured first (it counts as 0 ms).
            let avg = |i: usize| {
                chain
                    .get(i)
                    .and_then(|t| latency(store, &t.cluster.name))
                    .map_or(0.0, |l| l.avg_ms)
            };
            let mut best = *ok.first()?;
            let mut best_ms = avg(best);
            for &i in ok.iter().skip(1) {
                let ms = avg(i);
                if ms < best_ms {
                    best = i;
                    best_ms = ms;
                }
            }
            // The low 32 bits decide whether to explore, the high ones where.
            let draw = (random & 0xffff_ffff) as f64 / 4_294_967_296.0;
            if draw < exploration {
                let others: Vec<usize> = ok.iter().copied().filter(|&i| i != best).collect();
                let pick = (random >> 32) as usize % others.len().max(1);
                return others.get(pick).copied().or(Some(best));
            }
            Some(best)
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
    /// A new request: counted; the answer says whether it may retry.
    Request,
    /// A retry being sent: counted only when the budget allows it.
    Retry,
}

/// Counts a request or a retry in `route`'s budget. Returns whether a retry is
/// allowed (for a request: whether the router may retry it; for a retry:
/// whether it may be sent, and then it was counted). Store errors fail open.
pub fn spend(store: &dyn SharedStore, route: &str, r: &Routing, spend: Spend, now_ms: u64) -> bool {
    let key = budget_key(route);
    let w = r.retry_budget_window_ms;
    for _ in 0..CAS_TRIES {
        let (old, cas) = match store.get(&key) {
            Ok(Some((b, cas))) => (Budget::decode(&b).unwrap_or_default(), cas),
            Ok(None) => (Budget::default(), 0),
            Err(_) => return true,
        };
        let mut b = old.at(now_ms, w);
        let allowed = b.allows(now_ms, w, r.retry_budget_percent);
        match spend {
            Spend::Request => b.requests = b.requests.saturating_add(1),
            Spend::Retry if allowed => b.retries = b.retries.saturating_add(1),
            Spend::Retry => return false,
        }
        match store.set(&key, &b.encode(), cas) {
            Ok(()) => return allowed,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(_)) => return true,
        }
    }
    true
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

    #[test]
    fn weighted_draws_follow_the_weights_among_healthy_entries() {
        let s = MemStore::default();
        let c = chain(&[70, 30]);
        let mut first = 0;
        for r in draws(10_000) {
            if choose(&s, &c, &[true, true], &Strategy::Weighted, r) == Some(0) {
                first += 1;
            }
        }
        assert!(
            (6_800..=7_200).contains(&first),
            "first got {first} of 10000"
        );
        // An unhealthy entry gets nothing; the other takes all.
        for r in draws(100) {
            assert_eq!(
                choose(&s, &c, &[false, true], &Strategy::Weighted, r),
                Some(1)
            );
        }
        // Nothing healthy: chain order (the gate decides).
        assert_eq!(
            choose(&s, &c, &[false, false], &Strategy::Weighted, 5),
            None
        );
    }

    #[test]
    fn a_zero_weight_entry_gets_no_first_attempt() {
        let s = MemStore::default();
        let c = chain(&[0, 1]);
        for r in draws(1000) {
            assert_eq!(
                choose(&s, &c, &[true, true], &Strategy::Weighted, r),
                Some(1)
            );
        }
    }

    #[test]
    fn ordered_keeps_chain_order() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        assert_eq!(choose(&s, &c, &[true, true], &Strategy::Ordered, 7), None);
    }

    #[test]
    fn the_average_decays_toward_new_samples_by_half_life() {
        let s = MemStore::default();
        let l = record_latency(&s, "a", 1000, 800, 0).unwrap();
        assert_eq!(l.avg_ms, 800.0, "the first sample is the average");
        // One half-life later, a sample pulls the average half way.
        let l = record_latency(&s, "a", 1000, 50, 1000).unwrap();
        assert!((l.avg_ms - 425.0).abs() < 1e-6, "got {}", l.avg_ms);
        // Samples at the same instant still move it, by the floor.
        let l2 = record_latency(&s, "a", 1000, 50, 1000).unwrap();
        assert!(
            (l2.avg_ms - (425.0 - 375.0 * 0.05)).abs() < 1e-6,
            "got {}",
            l2.avg_ms
        );
        assert_eq!(latency(&s, "a"), Some(l2));
        assert_eq!(latency(&s, "b"), None);
    }

    #[test]
    fn lowest_latency_prefers_the_fast_and_explores_the_slow() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        record_latency(&s, "c0", 1000, 800, 0).unwrap();
        record_latency(&s, "c1", 1000, 50, 0).unwrap();
        let st = Strategy::LowestLatency {
            half_life_ms: 1000,
            exploration: 0.1,
        };
        let n = 10_000;
        let slow = draws(n)
            .filter(|&r| choose(&s, &c, &[true, true], &st, r) == Some(0))
            .count();
        assert!(
            (800..=1200).contains(&slow),
            "exploration sent {slow} of {n}"
        );
        // Without exploration the slow one never gets a first attempt.
        let none = Strategy::LowestLatency {
            half_life_ms: 1000,
            exploration: 0.0,
        };
        assert!(draws(1000).all(|r| choose(&s, &c, &[true, true], &none, r) == Some(1)));
        // An open fast cluster: the slow one takes it all.
        assert!(draws(100).all(|r| choose(&s, &c, &[true, false], &st, r) == Some(0)));
        // The slow one recovers: its explored samples bring it back.
        let mut now = 0;
        for _ in 0..10 {
            now += 1000;
            record_latency(&s, "c0", 1000, 40, now).unwrap();
        }
        assert!(draws(100).all(|r| choose(&s, &c, &[true, true], &none, r) == Some(0)));
    }

    #[test]
    fn an_unmeasured_cluster_is_measured_first() {
        let s = MemStore::default();
        let c = chain(&[1, 1]);
        record_latency(&s, "c0", 1000, 50, 0).unwrap();
        let st = Strategy::LowestLatency {
            half_life_ms: 1000,
            exploration: 0.0,
        };
        assert_eq!(choose(&s, &c, &[true, true], &st, 3), Some(1));
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
        // A storm: every request wants a retry.
        for i in 0..1000u64 {
            let now = i * 5; // 200 requests a second, within one 10 s window
            spend(&s, "chat", &r, Spend::Request, now);
            if spend(&s, "chat", &r, Spend::Retry, now) {
                sent += 1;
            } else {
                denied += 1;
            }
        }
        assert_eq!(sent, 100, "10% of 1000 requests");
        assert_eq!(denied, 900);
    }

    #[test]
    fn a_quiet_route_keeps_a_floor_of_retries() {
        let s = MemStore::default();
        let r = routing(10);
        spend(&s, "q", &r, Spend::Request, 0);
        let sent = (0..5)
            .filter(|_| spend(&s, "q", &r, Spend::Retry, 0))
            .count();
        assert_eq!(sent, RETRY_BUDGET_FLOOR as usize);
    }

    #[test]
    fn the_window_slides_and_a_request_learns_if_it_may_retry() {
        let s = MemStore::default();
        let r = routing(10);
        for _ in 0..100 {
            spend(&s, "w", &r, Spend::Request, 0);
        }
        for _ in 0..10 {
            assert!(spend(&s, "w", &r, Spend::Retry, 0));
        }
        // Spent: the next request is told it may not retry.
        assert!(!spend(&s, "w", &r, Spend::Request, 1));
        // Half the next window on, half the old counts remain (50.5 requests,
        // 5 retries): still spent at exactly 10%...
        assert!(!spend(&s, "w", &r, Spend::Retry, 15_000));
        // ...until new requests make room: 60.5 requests allow 6.05 retries.
        for _ in 0..10 {
            spend(&s, "w", &r, Spend::Request, 15_000);
        }
        assert!(spend(&s, "w", &r, Spend::Retry, 15_000));
        let b = Budget::decode(&s.get(&budget_key("w")).unwrap().unwrap().0).unwrap();
        assert_eq!((b.prev_requests, b.prev_retries, b.retries), (101, 10, 1));
        // Two windows on, everything old is gone.
        let b = b.at(40_000, 10_000);
        assert_eq!(b.sliding(40_000, 10_000), (0.0, 0.0));
    }

    #[test]
    fn a_zero_budget_denies_every_retry_past_the_floor() {
        let s = MemStore::default();
        let r = routing(0);
        for _ in 0..100 {
            spend(&s, "z", &r, Spend::Request, 0);
        }
        let sent = (0..10)
            .filter(|_| spend(&s, "z", &r, Spend::Retry, 0))
            .count();
        assert_eq!(sent, RETRY_BUDGET_FLOOR as usize);
    }
}
