//! Per-VM metric registry. `define_metric` allocates a new id on every call, even
//! for a known name, so ids are defined once per VM and cached here; the cache is
//! bounded so unexpected label values cannot grow it without limit.
//!
//! Counter increments and gauge moves are batched: they add up here, per id, and
//! [`MetricIds::flush`] writes each id's sum in one host call (from the root
//! context's tick, every [`FLUSH_MS`]), instead of a host call per update on
//! the request path. Histogram samples are recorded at once (each sample is
//! one host call either way), and so are gauge sets (the last set must win). While updates wait, the gauge
//! [`UNFLUSHED`] counts this registry once, so a reader can tell when every
//! update made so far is visible.

use super::abi;
use crate::core::telemetry::tagged_name;
use std::collections::HashMap;

/// Distinct metric names one VM will define; later ones fold into `route="_overflow"`.
const MAX_METRICS: usize = 1024;

/// How long counter and gauge updates may wait in the VM before they are
/// written (the root context's tick period while updates wait).
pub const FLUSH_MS: u32 = 100;

/// Gauge: metric registries (one per root context per worker) holding updates
/// not written yet; 0 when every update made so far is visible.
pub const UNFLUSHED: &str = "llmcap_metrics_unflushed";

/// One id's updates since the last flush: the sum of its increments (they
/// commute, so their sum is what they would have made one by one, whatever
/// other workers did meanwhile).
#[derive(Default, Clone, Copy)]
struct Pending {
    add: i64,
}

/// Fx-style hashing for the id cache: keys are short and come from our own
/// label values, so SipHash's flooding defence buys nothing here.
#[derive(Default, Clone, Copy)]
pub struct FastHash(u64);

impl std::hash::Hasher for FastHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHash>>;

#[derive(Default)]
pub struct MetricIds {
    /// Keyed by the raw name and label values (see [`Metrics::raw_key`]): a
    /// known metric costs no formatting, only this lookup.
    ids: FastMap<Vec<u8>, u32>,
    key: Vec<u8>,
    /// Updates not written yet, by id, in the order first touched.
    pending: Vec<(u32, Pending)>,
    /// Where each pending id is in `pending`.
    pending_at: FastMap<u32, usize>,
}

impl MetricIds {
    /// Name and label values as given, with separators no label can contain
    /// (0xFF is never in UTF-8), into a reused buffer.
    fn raw_key(&mut self, kind: u32, labels: &[(&str, &str)], name: &str) {
        self.key.clear();
        self.key.push(kind as u8);
        self.key.extend_from_slice(name.as_bytes());
        for (k, v) in labels {
            self.key.push(0xFF);
            self.key.extend_from_slice(k.as_bytes());
            self.key.push(0xFF);
            self.key.extend_from_slice(v.as_bytes());
        }
    }

    fn id(&mut self, kind: u32, labels: &[(&str, &str)], name: &str) -> Option<u32> {
        self.raw_key(kind, labels, name);
        if let Some(&id) = self.ids.get(self.key.as_slice()) {
            return Some(id);
        }
        // A new name; `self.key` is what it is cached under.
        let full = if self.ids.len() >= MAX_METRICS {
            // Keep counting, under one bounded name per metric and route label.
            let folded: Vec<(&str, &str)> = labels
                .iter()
                .map(|&(k, v)| {
                    if k == "route" {
                        (k, "_overflow")
                    } else {
                        (k, v)
                    }
                })
                .collect();
            self.raw_key(kind, &folded, name);
            if let Some(&id) = self.ids.get(self.key.as_slice()) {
                return Some(id);
            }
            if self.ids.len() >= MAX_METRICS + 64 {
                return None;
            }
            tagged_name(&folded, name)
        } else {
            tagged_name(labels, name)
        };
        match abi::define_metric(kind, &full) {
            Ok(id) => {
                self.ids.insert(self.key.clone(), id);
                Some(id)
            }
            Err(s) => {
                log::warn!("llm-capacity: cannot define metric {full} (host status {s})");
                None
            }
        }
    }

    /// Adds one update to the batch; `true` when the batch was empty (the
    /// caller makes sure a flush will come).
    fn defer(&mut self, id: u32, update: impl FnOnce(&mut Pending)) -> bool {
        let first = self.pending.is_empty();
        let at = match self.pending_at.get(&id) {
            Some(&at) => at,
            None => {
                self.pending_at.insert(id, self.pending.len());
                self.pending.push((id, Pending::default()));
                self.pending.len() - 1
            }
        };
        if let Some((_, p)) = self.pending.get_mut(at) {
            update(p);
        }
        if first {
            // Said at once: readers wait for 0 before trusting counters.
            if let Some(g) = self.id(abi::METRIC_GAUGE, &[], UNFLUSHED) {
                let _ = abi::increment_metric(g, 1);
            }
        }
        first
    }

    /// Whether updates wait to be written.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes every waiting update (one host call per id touched whose sum is
    /// not 0); `false` when there was none.
    pub fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        for (id, p) in self.pending.drain(..) {
            if p.add != 0 {
                let _ = abi::increment_metric(id, p.add);
            }
        }
        self.pending_at.clear();
        if let Some(g) = self.id(abi::METRIC_GAUGE, &[], UNFLUSHED) {
            let _ = abi::increment_metric(g, -1);
        }
        true
    }

    /// Counts `value` (batched); `true` when it started a batch.
    pub fn count(&mut self, labels: &[(&str, &str)], name: &str, value: u64) -> bool {
        if value == 0 {
            return false; // counters reject a zero increment
        }
        let Some(id) = self.id(abi::METRIC_COUNTER, labels, name) else {
            return false;
        };
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        self.defer(id, |p| p.add = p.add.saturating_add(v))
    }

    /// Records a histogram sample (at once).
    pub fn record(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_HISTOGRAM, labels, name) {
            let _ = abi::record_metric(id, value);
        }
    }

    /// Moves a gauge (batched); `true` when it started a batch.
    pub fn add_gauge(&mut self, labels: &[(&str, &str)], name: &str, delta: i64) -> bool {
        let Some(id) = self.id(abi::METRIC_GAUGE, labels, name) else {
            return false;
        };
        self.defer(id, |p| p.add = p.add.saturating_add(delta))
    }

    /// Sets a gauge, at once: gauges are shared by every worker, and a set
    /// held back could land after another worker's later one (last writer
    /// wins only in real time). Sets are rare (transitions, sampled quotas).
    pub fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_GAUGE, labels, name) {
            let _ = abi::record_metric(id, value);
        }
    }
}
