//! Self-calibration: each reconciled response teaches the ratio actual/estimated
//! input tokens for its model and for its model and kind of text
//! ([`TextClass`]); later estimates are multiplied by the ratio of their model
//! and kind, or by the model's own while that kind has no data yet. A model that
//! receives both English and Chinese is not calibrated to their average: the
//! estimator's bias differs by script and content, the tokenizer's by model.
//!
//! State lives in Envoy shared data so every worker learns from every response.
//! It is bounded: a fixed table of [`SLOTS`] keys, created on first use and never
//! more (shared data has no delete). A model hashes to a slot and probes up to
//! [`PROBES`] neighbours; each value names its model, so two models can never
//! merge; when all probed slots belong to other models, the least recently
//! updated is taken over.

use crate::core::env::{stable_hash, Clock, SharedStore, StoreError};
use crate::core::tokens::estimate::TextClass;
use serde::{Deserialize, Serialize};

/// Keys of the table: room for about 16 models with their kinds of text.
pub const SLOTS: u32 = 128;
pub const PROBES: u32 = 4;
const KEY_PREFIX: &str = "llmcap/cal/";
/// Weight of a new sample once warmed up: an exponentially decaying average over
/// roughly the last 1/ALPHA responses.
const ALPHA: f64 = 0.1;
/// A single response cannot move the ratio outside this band (guards against a
/// provider bug or a pathological request teaching nonsense).
const MIN_RATIO: f64 = 0.25;
const MAX_RATIO: f64 = 4.0;
/// CAS retries before a sample is dropped; losing a sample under contention is harmless.
const CAS_RETRIES: u32 = 4;
const MAX_MODEL_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    /// Model name.
    m: String,
    /// Learned ratio actual/estimated.
    r: f64,
    /// Samples seen (saturating).
    n: u32,
    /// Last update, ms.
    t: u64,
}

fn key(i: u32) -> String {
    format!("{KEY_PREFIX}{i}")
}

fn slot_of(model: &str) -> u32 {
    stable_hash(model) % SLOTS
}

fn read(store: &dyn SharedStore, i: u32) -> Result<Option<(Slot, u32)>, StoreError> {
    Ok(store.get(&key(i))?.and_then(|(bytes, cas)| {
        // An empty or foreign value counts as a free slot.
        rmp_serde::from_slice::<Slot>(&bytes).ok().map(|s| (s, cas))
    }))
}

fn model_key(model: &str) -> &str {
    crate::core::truncate(model, MAX_MODEL_LEN)
}

/// The name of a model's stream for one kind of text (also the key the filter
/// rate-limits its samples by).
pub fn stream(model: &str, class: TextClass) -> String {
    format!("{}|{}", model_key(model), class.as_str())
}

/// The learned ratio for a model and kind of text: the kind's own once it has
/// a sample, else the model's, else 1.0 (also on host errors).
pub fn ratio(store: &dyn SharedStore, model: &str, class: TextClass) -> f64 {
    learned(store, &stream(model, class))
        .or_else(|| learned(store, model_key(model)))
        .unwrap_or(1.0)
}

/// The ratio stored under `name`, if any.
fn learned(store: &dyn SharedStore, name: &str) -> Option<f64> {
    let start = slot_of(name);
    for p in 0..PROBES {
        match read(store, (start + p) % SLOTS) {
            Ok(Some((s, _))) if s.m == name => return Some(s.r),
            Ok(Some(_)) => continue,
            // A never-written slot ends the probe chain: the name would be here.
            Ok(None) | Err(_) => return None,
        }
    }
    None
}

/// Feeds one reconciled response: `estimated` is the uncalibrated input
/// estimate of a text of kind `class`. Updates the model's ratio and its
/// ratio for that kind; returns the latter.
pub fn observe(
    store: &dyn SharedStore,
    clock: &dyn Clock,
    model: &str,
    class: TextClass,
    estimated: u64,
    actual: u64,
) -> Result<f64, StoreError> {
    if estimated == 0 || actual == 0 {
        return Ok(1.0);
    }
    let sample = (actual as f64 / estimated as f64).clamp(MIN_RATIO, MAX_RATIO);
    let now = clock.now_ms();
    let model_ratio = observe_one(store, now, model_key(model), sample);
    let r = observe_one(store, now, &stream(model, class), sample)?;
    model_ratio.map(|_| r)
}

/// Folds one sample into the stream `name`.
fn observe_one(
    store: &dyn SharedStore,
    now: u64,
    name: &str,
    sample: f64,
) -> Result<f64, StoreError> {
    let start = slot_of(name);
    let mut last = Err(StoreError::CasMismatch);
    for _ in 0..CAS_RETRIES {
        // Find this stream's slot, else a free one, else the stalest to take over.
        let mut target: Option<(u32, Option<(Slot, u32)>)> = None;
        let mut stalest: Option<(u32, Slot, u32)> = None;
        for p in 0..PROBES {
            let i = (start + p) % SLOTS;
            match read(store, i)? {
                Some((s, cas)) if s.m == name => {
                    target = Some((i, Some((s, cas))));
                    break;
                }
                Some((s, cas)) => {
                    if stalest.as_ref().is_none_or(|(_, o, _)| s.t < o.t) {
                        stalest = Some((i, s, cas));
                    }
                }
                None => {
                    target = Some((i, None));
                    break;
                }
            }
        }
        let (i, current, cas) = match (target, stalest) {
            (Some((i, Some((s, cas)))), _) => (i, Some(s), cas),
            (Some((i, None)), _) => (i, None, 0),
            // Take over: the CAS token makes sure we replace what we looked at.
            (None, Some((i, _, cas))) => (i, None, cas),
            (None, None) => return Ok(1.0),
        };
        let next = match current {
            Some(s) => {
                // Plain mean while young, decaying average after.
                let w = (1.0 / f64::from(s.n.saturating_add(1))).max(ALPHA);
                Slot {
                    m: s.m,
                    r: s.r + w * (sample - s.r),
                    n: s.n.saturating_add(1),
                    t: now,
                }
            }
            None => Slot {
                m: name.to_string(),
                r: sample,
                n: 1,
                t: now,
            },
        };
        let bytes = rmp_serde::to_vec(&next).map_err(|_| StoreError::Host(0))?;
        match store.set(&key(i), &bytes, cas) {
            Ok(()) => return Ok(next.r),
            Err(StoreError::CasMismatch) => last = Err(StoreError::CasMismatch),
            Err(e) => return Err(e),
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::env::{ManualClock, MemStore};
    use crate::core::tokens::estimate::TextClass;
    const P: TextClass = TextClass::Prose;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn unknown_models_have_ratio_one() {
        let s = MemStore::default();
        assert_eq!(ratio(&s, "gpt-4o", P), 1.0);
    }

    #[test]
    fn converges_to_the_true_ratio() {
        let s = MemStore::default();
        let c = ManualClock::at(1);
        for _ in 0..50 {
            observe(&s, &c, "gpt-4o", P, 100, 120).unwrap();
        }
        assert!((ratio(&s, "gpt-4o", P) - 1.2).abs() < 1e-9);
        // The first sample counts fully; then it averages.
        observe(&s, &c, "claude", P, 100, 50).unwrap();
        assert!((ratio(&s, "claude", P) - 0.5).abs() < 1e-9);
        observe(&s, &c, "claude", P, 100, 100).unwrap();
        assert!((ratio(&s, "claude", P) - 0.75).abs() < 1e-9);
    }

    #[test]
    fn kinds_of_text_learn_apart_and_start_from_the_model() {
        let s = MemStore::default();
        let c = ManualClock::at(1);
        // English is estimated well, Chinese under by half: alternating, each
        // kind converges to its own ratio, not to their mean.
        for _ in 0..40 {
            observe(&s, &c, "m", TextClass::Prose, 100, 100).unwrap();
            observe(&s, &c, "m", TextClass::Cjk, 100, 200).unwrap();
        }
        assert!((ratio(&s, "m", TextClass::Prose) - 1.0).abs() < 1e-9);
        assert!((ratio(&s, "m", TextClass::Cjk) - 2.0).abs() < 1e-9);
        // A kind the model has not seen yet takes the model's ratio (here
        // their mean, close to 1.5), and other models know nothing.
        let k = ratio(&s, "m", TextClass::Korean);
        assert!((1.4..1.6).contains(&k), "{k}");
        assert_eq!(ratio(&s, "other", TextClass::Cjk), 1.0);
        assert_eq!(stream("m", TextClass::Cjk), "m|cjk");
    }

    #[test]
    fn decays_toward_new_behaviour() {
        let s = MemStore::default();
        let c = ManualClock::at(1);
        for _ in 0..100 {
            observe(&s, &c, "m", P, 100, 100).unwrap();
        }
        for _ in 0..40 {
            observe(&s, &c, "m", P, 100, 200).unwrap();
        }
        let r = ratio(&s, "m", P);
        assert!(r > 1.95 && r < 2.0, "{r}");
    }

    #[test]
    fn samples_are_clamped_and_zeroes_ignored() {
        let s = MemStore::default();
        let c = ManualClock::at(1);
        observe(&s, &c, "m", P, 1, 1000).unwrap();
        assert_eq!(ratio(&s, "m", P), MAX_RATIO);
        assert_eq!(observe(&s, &c, "z", P, 0, 10).unwrap(), 1.0);
        // The model's slot and its stream for the kind.
        assert_eq!(s.keys(), 2);
    }

    #[test]
    fn table_stays_bounded_and_models_never_merge() {
        let s = MemStore::default();
        let c = ManualClock::at(0);
        for i in 0..1000u64 {
            c.set(i);
            let model = format!("model-{i}");
            observe(&s, &c, &model, P, 100, 100 + (i % 50)).unwrap();
            // Immediately after its update a model reads its own value, never another's.
            assert!((ratio(&s, &model, P) - (100 + (i % 50)) as f64 / 100.0).abs() < 1e-9);
        }
        assert!(s.keys() <= SLOTS as usize);
        // Every stored slot names exactly one model with its own ratio.
        for i in 0..SLOTS {
            if let Some((slot, _)) = read(&s, i).unwrap() {
                let name = slot.m.trim_end_matches("|prose");
                let n: u64 = name.trim_start_matches("model-").parse().unwrap();
                assert!((slot.r - (100 + (n % 50)) as f64 / 100.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn concurrent_writer_is_detected_by_cas() {
        // A store that changes the slot between our read and write once.
        struct Racy {
            inner: MemStore,
            raced: std::cell::Cell<bool>,
        }
        impl SharedStore for Racy {
            fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
                self.inner.get(key)
            }
            fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
                if !self.raced.replace(true) {
                    let other = Slot {
                        m: "m".into(),
                        r: 2.0,
                        n: 1,
                        t: 0,
                    };
                    self.inner
                        .set(key, &rmp_serde::to_vec(&other).unwrap(), 0)?;
                }
                self.inner.set(key, value, cas)
            }
        }
        let s = Racy {
            inner: MemStore::default(),
            raced: std::cell::Cell::new(false),
        };
        let c = ManualClock::at(5);
        s.inner
            .set(
                &key(slot_of("m")),
                &rmp_serde::to_vec(&Slot {
                    m: "m".into(),
                    r: 1.0,
                    n: 1,
                    t: 0,
                })
                .unwrap(),
                0,
            )
            .unwrap();
        // Our sample (1.0) lands on top of the racer's 2.0, not on the stale 1.0.
        observe(&s, &c, "m", P, 100, 100).unwrap();
        let r = learned(&s, "m").unwrap();
        assert!((r - 1.5).abs() < 1e-9, "{r}");
    }
}
