//! Per-VM metric registry. `define_metric` allocates a new id on every call, even
//! for a known name, so ids are defined once per VM and cached here; the cache is
//! bounded so unexpected label values cannot grow it without limit.

use super::abi;
use crate::core::telemetry::tagged_name;
use std::collections::HashMap;

/// Distinct metric names one VM will define; later ones fold into `route="_overflow"`.
const MAX_METRICS: usize = 1024;

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

    pub fn count(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if value == 0 {
            return; // counters reject a zero increment
        }
        if let Some(id) = self.id(abi::METRIC_COUNTER, labels, name) {
            let _ = abi::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    pub fn record(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_HISTOGRAM, labels, name) {
            let _ = abi::record_metric(id, value);
        }
    }

    pub fn add_gauge(&mut self, labels: &[(&str, &str)], name: &str, delta: i64) {
        if let Some(id) = self.id(abi::METRIC_GAUGE, labels, name) {
            let _ = abi::increment_metric(id, delta);
        }
    }

    pub fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_GAUGE, labels, name) {
            let _ = abi::record_metric(id, value);
        }
    }
}
