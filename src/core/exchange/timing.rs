//! What the user felt: one request's timings, measured from when the attempt
//! that answered was sent, and whether it met its route's SLO (goodput).
//!
//! Clock readings are taken on callbacks the filter gets anyway (response
//! headers, the chunk that carries the first output, the end); nothing is
//! held back to measure it. Time to first token is the first SSE event that
//! carries generated text in the answer's dialect, or the whole answer when
//! it is not streamed.

use super::{Exchange, Phase};
use crate::core::config::{Slo, Strategy};
use crate::core::host::Host;
use crate::core::telemetry::{
    BUDGETED_RETRIES_TOTAL, GOODPUT_TOTAL, IN_FLIGHT, REQUEST_DURATION_MS, RETRIES_DENIED_TOTAL,
    TIME_PER_OUTPUT_TOKEN_US, TIME_TO_FIRST_TOKEN_MS,
};
use crate::core::upstream::routing::{self, Spend};

/// Timestamps of one request's answer (milliseconds, the host's clock).
#[derive(Debug, Default, Clone)]
pub struct Timing {
    /// When the answering attempt was sent (the upstream instance's record),
    /// else when the request left the filter.
    pub sent_ms: Option<u64>,
    /// The cluster that answered, when known.
    pub cluster: Option<String>,
    pub headers_ms: Option<u64>,
    /// The answer is an event stream.
    pub streamed: bool,
    pub first_output_ms: Option<u64>,
    /// The answer reached its end (not cut by a reset or the client leaving).
    pub end_ms: Option<u64>,
    /// The answer's status (0: none came).
    pub status: u32,
    /// The in-flight gauge was raised for this request under this cluster label.
    pub in_flight: Option<String>,
    /// The answering cluster's circuit waits for this answer's time to first
    /// token: `Some(probe)` until it is fed.
    pub ttft_pending: Option<bool>,
    /// The answering attempt's answer in the VM's order of attempt events,
    /// when an attempt's answer was the client's (see `worker::Answering`).
    pub winner_seq: Option<u64>,
}

/// What [`Timing::measure`] makes of a complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub headers_ms: u64,
    /// Time to first token: the first output event, or the whole answer.
    pub ttft_ms: u64,
    /// Time per output token after the first, in microseconds (streams with
    /// at least two output tokens).
    pub tpot_us: Option<u64>,
    pub duration_ms: u64,
    /// Output tokens per second over the whole duration.
    pub tokens_per_second: Option<u64>,
}

/// A request's goodput: its answer came whole, in time, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodput {
    /// A complete 2xx answer within every bound the route's SLO sets.
    Met,
    /// A complete 2xx answer, past a bound.
    Late,
    /// No complete 2xx answer (refused, error status, reset, client gone).
    Failed,
}

impl Goodput {
    pub fn as_str(self) -> &'static str {
        match self {
            Goodput::Met => "met",
            Goodput::Late => "late",
            Goodput::Failed => "failed",
        }
    }
}

impl Timing {
    /// The timings of a complete 2xx answer (`None` for anything else: a cut
    /// stream or an error says nothing about how fast answers are).
    pub fn measure(&self, output_tokens: u64) -> Option<Measured> {
        let (sent, end) = (self.sent_ms?, self.end_ms?);
        if !(200..300).contains(&self.status) {
            return None;
        }
        let since = |t: u64| t.saturating_sub(sent);
        let duration_ms = since(end);
        let first = if self.streamed {
            self.first_output_ms
        } else {
            Some(end)
        };
        let tpot_us = match (self.streamed, self.first_output_ms) {
            (true, Some(f)) if output_tokens >= 2 => {
                Some(end.saturating_sub(f).saturating_mul(1000) / (output_tokens - 1))
            }
            _ => None,
        };
        Some(Measured {
            headers_ms: since(self.headers_ms.unwrap_or(end)),
            // A stream without any text (a tool call, an empty answer): its end.
            ttft_ms: since(first.unwrap_or(end)),
            tpot_us,
            duration_ms,
            tokens_per_second: (duration_ms > 0 && output_tokens > 0)
                .then(|| output_tokens.saturating_mul(1000) / duration_ms),
        })
    }
}

/// Whether a request met its route's SLO; `m`: its timings, if it was answered whole.
pub fn goodput(slo: &Slo, m: Option<&Measured>) -> Goodput {
    let Some(m) = m else {
        return Goodput::Failed;
    };
    let late = slo.time_to_first_token_ms.is_some_and(|b| m.ttft_ms > b)
        || slo.duration_ms.is_some_and(|b| m.duration_ms > b);
    if late {
        Goodput::Late
    } else {
        Goodput::Met
    }
}

impl Exchange {
    /// The answer's headers came: when, and (with an upstream instance) when
    /// and where the attempt that answered was sent.
    pub(super) fn time_headers(&mut self, h: &mut dyn Host) {
        if self.head.policy.is_none() {
            return;
        }
        let answering = if self.config.upstream_filter {
            self.worker
                .attempts
                .borrow_mut()
                .answering_attempt(self.context_id)
        } else {
            None
        };
        let t = &mut self.response.timing;
        let mut headers_ms = None;
        if let Some(ans) = answering {
            let a = ans.attempt;
            t.sent_ms = Some(a.at_ms);
            t.cluster = Some(a.cluster);
            t.ttft_pending = a.ttft_pending;
            t.winner_seq = ans.winner_seq;
            headers_ms = a.answered_ms;
            if ans.hedged {
                // The client's answer came from the hedge, or from the first
                // attempt (the hedge reset, or its error dropped by the router).
                self.report.hedge = Some(a.hedge && ans.winner_seq.is_some());
            }
        }
        // The upstream instance read the clock for these headers already.
        t.headers_ms = Some(headers_ms.unwrap_or_else(|| h.now_ms()));
    }

    /// Feeds the answering cluster's circuit the time to first token, once,
    /// if it waits for it: at the first output (`at_ms`: that chunk's clock
    /// reading), else at the log with the whole answer's time, or with its
    /// headers' when it was cut (no new clock reading either way).
    pub(super) fn feed_first_token(&mut self, h: &mut dyn Host, at_ms: Option<u64>) {
        let t = &mut self.response.timing;
        let (Some(probe), Some(sent), Some(cluster)) = (t.ttft_pending, t.sent_ms, &t.cluster)
        else {
            return;
        };
        let Some(at) = at_ms.or(t.end_ms).or(t.headers_ms) else {
            return;
        };
        t.ttft_pending = None;
        let cluster = cluster.clone();
        super::health::first_token(
            &self.config,
            h,
            &cluster,
            probe,
            at.saturating_sub(sent),
            at,
        );
    }

    /// At the log: the in-flight gauge comes down, the timings are recorded
    /// and the route's SLO judged.
    pub(super) fn report_timing(&mut self, h: &mut dyn Host) {
        let metrics = self.config.telemetry.metrics;
        let route = self.head.route.as_str();
        if let Some(c) = self.response.timing.in_flight.take() {
            h.add_gauge(&[("route", route), ("cluster", &c)], IN_FLIGHT, -1);
        }
        self.feed_first_token(h, None);
        let route = self.head.route.as_str();
        if !matches!(self.phase, Phase::Sent { .. } | Phase::Replied) {
            return;
        }
        let output = self.response.settled.map_or(0, |s| s.output);
        let measured = self.response.timing.measure(output);
        let slo = self.head.policy.as_ref().and_then(|p| p.policy.slo);
        self.response.measured = measured;
        self.response.goodput = slo.map(|s| goodput(&s, measured.as_ref()));
        self.feed_latency(h, measured.as_ref());
        self.count_retries(h);
        if !metrics {
            return;
        }
        if let Some(m) = measured {
            let model = self
                .pre
                .as_ref()
                .and_then(|p| p.model.as_deref())
                .unwrap_or("");
            let cluster = self
                .response
                .timing
                .cluster
                .as_deref()
                .or(self.first_cluster())
                .unwrap_or("");
            let labels = [("route", route), ("cluster", cluster), ("model", model)];
            h.record(&labels, TIME_TO_FIRST_TOKEN_MS, m.ttft_ms);
            if let Some(us) = m.tpot_us {
                h.record(&labels, TIME_PER_OUTPUT_TOKEN_US, us);
            }
            h.record(&labels, REQUEST_DURATION_MS, m.duration_ms);
        }
        if let Some(g) = self.response.goodput {
            h.count(
                &[("route", route), ("result", g.as_str())],
                GOODPUT_TOTAL,
                1,
            );
        }
    }
}

impl Exchange {
    /// A `lowest_latency` route learns its clusters' time to first token from
    /// every complete answer, per cluster and the model it was asked.
    fn feed_latency(&self, h: &mut dyn Host, measured: Option<&Measured>) {
        let (Some(m), Some(policy)) = (measured, self.head.policy.as_ref()) else {
            return;
        };
        let Strategy::LowestLatency { half_life_ms, .. } = policy.routing.strategy else {
            return;
        };
        let t = &self.response.timing;
        let (Some(cluster), Some(end)) = (t.cluster.as_deref(), t.end_ms) else {
            return;
        };
        // Only the chain's clusters have averages (the keys stay bounded).
        let Some(entry) = policy.clusters.iter().find(|e| e.cluster.name == cluster) else {
            return;
        };
        let asked = self.pre.as_ref().and_then(|p| p.model.as_deref());
        let model = entry.model.as_deref().or(asked).unwrap_or("");
        if let Err(e) = routing::record_latency(&*h, cluster, model, half_life_ms, m.ttft_ms, end) {
            log::debug!("llm-capacity: latency average of {cluster} not updated ({e:?})");
        }
    }

    /// The retry budget's side at the end: without an upstream instance, the
    /// router's retries are counted here (else each was counted as it was
    /// sent); a failure that could not be retried because the budget was
    /// spent is counted as denied.
    fn count_retries(&self, h: &mut dyn Host) {
        let Some(policy) = self.head.policy.as_ref() else {
            return;
        };
        if !policy.routing.budgeted(policy.clusters.len())
            || !matches!(self.phase, Phase::Sent { .. })
        {
            return;
        }
        let route = [("route", self.head.route.as_str())];
        if !self.config.upstream_filter {
            let attempts = h
                .property(&super::ATTEMPT_COUNT_PROPERTY)
                .ok()
                .flatten()
                .and_then(|b| super::attempt_count(&b))
                .unwrap_or(1);
            let retries = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
            if retries > 0 {
                let now = self.response.timing.end_ms.unwrap_or_else(|| h.now_ms());
                routing::spend(
                    &*h,
                    &policy.name,
                    &policy.routing,
                    Spend::Retries(retries),
                    now,
                );
                if self.config.telemetry.metrics {
                    h.count(&route, BUDGETED_RETRIES_TOTAL, u64::from(retries));
                }
            }
        }
        let status = self.response.timing.status;
        let failed = status == 0 || status == 429 || status >= 500;
        if self.report.retries_capped && failed && self.config.telemetry.metrics {
            h.count(&route, RETRIES_DENIED_TOTAL, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn stream() -> Timing {
        Timing {
            sent_ms: Some(1000),
            headers_ms: Some(1010),
            streamed: true,
            first_output_ms: Some(1100),
            end_ms: Some(1500),
            status: 200,
            ..Default::default()
        }
    }

    #[test]
    fn a_stream_is_timed_from_its_first_output_event() {
        let m = stream().measure(5).unwrap();
        assert_eq!(
            m,
            Measured {
                headers_ms: 10,
                ttft_ms: 100,
                tpot_us: Some(100_000),
                duration_ms: 500,
                tokens_per_second: Some(10),
            }
        );
        // One token: nothing after the first to divide.
        assert_eq!(stream().measure(1).unwrap().tpot_us, None);
    }

    #[test]
    fn a_whole_answer_is_its_own_first_token() {
        let t = Timing {
            streamed: false,
            first_output_ms: None,
            ..stream()
        };
        let m = t.measure(5).unwrap();
        assert_eq!((m.ttft_ms, m.tpot_us, m.duration_ms), (500, None, 500));
    }

    #[test]
    fn cut_or_failed_answers_are_not_timed() {
        assert_eq!(
            Timing {
                end_ms: None,
                ..stream()
            }
            .measure(5),
            None
        );
        assert_eq!(
            Timing {
                status: 503,
                ..stream()
            }
            .measure(5),
            None
        );
    }

    #[test]
    fn goodput_against_each_bound() {
        let m = stream().measure(5).unwrap(); // ttft 100, duration 500
        let slo = |ttft, duration| Slo {
            time_to_first_token_ms: ttft,
            duration_ms: duration,
        };
        assert_eq!(goodput(&slo(Some(100), None), Some(&m)), Goodput::Met);
        assert_eq!(goodput(&slo(Some(99), None), Some(&m)), Goodput::Late);
        assert_eq!(goodput(&slo(None, Some(499)), Some(&m)), Goodput::Late);
        assert_eq!(goodput(&slo(Some(500), Some(500)), Some(&m)), Goodput::Met);
        assert_eq!(goodput(&slo(Some(500), None), None), Goodput::Failed);
    }
}
