//! Per-VM metric registry. `define_metric` allocates a new id on every call, even
//! for a known name, so ids are defined once per VM and cached here; the cache is
//! bounded so unexpected label values cannot grow it without limit.

use super::abi;
use crate::core::telemetry::{tagged_name, Outcome, REQUESTS_TOTAL};
use std::collections::HashMap;

/// Distinct metric names one VM will define; later ones fold into `route="_overflow"`.
const MAX_METRICS: usize = 1024;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

impl Metrics {
    fn id(&mut self, kind: u32, name: String) -> Option<u32> {
        if let Some(&id) = self.ids.get(&name) {
            return Some(id);
        }
        if self.ids.len() >= MAX_METRICS {
            return None;
        }
        match abi::define_metric(kind, &name) {
            Ok(id) => {
                self.ids.insert(name, id);
                Some(id)
            }
            Err(s) => {
                log::warn!("llm-capacity: cannot define metric {name} (host status {s})");
                None
            }
        }
    }

    pub fn count_request(&mut self, route: &str, outcome: Outcome) {
        let name = tagged_name(
            &[("route", route), ("outcome", outcome.as_str())],
            REQUESTS_TOTAL,
        );
        let id = match self.id(abi::METRIC_COUNTER, name) {
            Some(id) => Some(id),
            None => {
                let overflow = tagged_name(
                    &[("route", "_overflow"), ("outcome", outcome.as_str())],
                    REQUESTS_TOTAL,
                );
                self.ids.get(&overflow).copied().or_else(|| {
                    abi::define_metric(abi::METRIC_COUNTER, &overflow)
                        .ok()
                        .inspect(|&id| {
                            self.ids.insert(overflow, id);
                        })
                })
            }
        };
        if let Some(id) = id {
            let _ = abi::increment_metric(id, 1);
        }
    }

    pub fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(abi::METRIC_GAUGE, name.to_string()) {
            let _ = abi::record_metric(id, value);
        }
    }
}
