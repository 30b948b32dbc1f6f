//! Per-VM metric registry. `define_metric` allocates a new id on every call, even
//! for a known name, so ids are defined once per VM and cached here; the cache is
//! bounded so unexpected label values cannot grow it without limit.

use super::abi;
use crate::core::telemetry::tagged_name;
use std::collections::HashMap;

/// Distinct metric names one VM will define; later ones fold into `route="_overflow"`.
const MAX_METRICS: usize = 1024;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

impl Metrics {
    fn id(&mut self, kind: u32, labels: &[(&str, &str)], name: &str) -> Option<u32> {
        let full = tagged_name(labels, name);
        if let Some(&id) = self.ids.get(&full) {
            return Some(id);
        }
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
            let f = tagged_name(&folded, name);
            if let Some(&id) = self.ids.get(&f) {
                return Some(id);
            }
            if self.ids.len() >= MAX_METRICS + 64 {
                return None;
            }
            f
        } else {
            full
        };
        match abi::define_metric(kind, &full) {
            Ok(id) => {
                self.ids.insert(full, id);
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

    pub fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_GAUGE, labels, name) {
            let _ = abi::record_metric(id, value);
        }
    }
}
