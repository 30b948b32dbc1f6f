//! The upstream instance: the same module placed as an upstream HTTP filter
//! (root_id ending in `upstream`), where Envoy runs it once per router attempt.
//!
//! Each attempt: a retry is gated when it is sent (a cluster that started
//! cooling down or opened since the plan is not sent to); the body carries the
//! model of the cluster it goes to; the answer (or its absence: reset, connect
//! failure, timeout) feeds that cluster's circuit; when the retry stays on the
//! same cluster, the cool-down in force is handed to the router's
//! `rate_limited_retry_back_off`, or the retry is refused. The request is never
//! re-sent from here.

use super::health::{self, Observation};
use super::plan::{carry_model_in_path, set_request_body};
#[cfg(doc)]
use super::worker::Answering;
use super::worker::{Unanswered, Worker};
use super::xlate::{self, AttemptXlate};
use crate::core::config::{Config, RoutePolicy};
use crate::core::host::{Buffer, Flow, Host, Map};
use crate::core::telemetry::{BUDGETED_RETRIES_TOTAL, HEDGES_TOTAL};
use crate::core::tokens::request::Api;
use crate::core::upstream::circuit;
use crate::core::upstream::failover::{self, Class, PLAN_PROPERTY, RETRY_AFTER_HEADER};
use crate::core::upstream::provider_headers;
use crate::core::upstream::routing::{self, Spend};
use std::rc::Rc;

/// How often a healthy cluster's quota headers feed the remaining gauges.
const QUOTA_SAMPLE_MS: u64 = 1000;
/// How often an adaptive cluster's successes are read for its quota while the
/// quota is not low (every request sent counts the circuit's view down in the
/// meantime; an error answer is always read).
const ADAPTIVE_SAMPLE_MS: u64 = 100;
/// A dimension is low with at most 1/[`LOW_QUOTA_DIVISOR`] of its limit left
/// (or [`LOW_QUOTA_FLOOR`], whichever is more), or with no limit reported.
const LOW_QUOTA_DIVISOR: u64 = 5;
const LOW_QUOTA_FLOOR: u64 = 100;

/// Whether a quota the provider reported is low enough that every answer's
/// headers are read (the adaptive gate then follows the provider exactly).
fn quota_is_low(s: &provider_headers::Signal) -> bool {
    [s.requests, s.tokens]
        .iter()
        .any(|q| match (q.remaining, q.limit) {
            (Some(r), Some(l)) => r <= (l / LOW_QUOTA_DIVISOR).max(LOW_QUOTA_FLOOR),
            (Some(_), None) => true,
            (None, _) => false,
        })
}

/// Attempts waiting for their downstream stream's end, per VM, at most.
const MAX_UNANSWERED: usize = 1024;
/// An attempt whose stream was never seen ending is forgotten after this.
const UNANSWERED_TTL_MS: u64 = 60_000;

/// Recently ended downstream streams remembered per VM, for attempts whose end
/// Envoy reports after their stream's (a reset final attempt, a client gone).
const ENDED_STREAMS: usize = 256;

/// An unanswered attempt whose stream's fate is known: a reset if the client
/// was answered, else nothing (its probe claim given back). An attempt that
/// ended after the answer the client got (`winner`) was cancelled by the
/// router, a hedge's loser: that says nothing about its cluster either.
fn settle_one(
    config: &Config,
    h: &mut dyn Host,
    a: &Unanswered,
    client_answered: bool,
    winner: Option<u64>,
    now: u64,
) {
    let cancelled = winner.is_some_and(|w| a.ended_seq > w);
    if client_answered && !cancelled {
        record_reset(config, h, a, now);
    } else if a.probe {
        if let Some(c) = config.clusters.get(&a.cluster) {
            let _ = circuit::release_probe(&*h, &circuit::key(&a.cluster), &c.circuit, now);
        }
    }
}

fn record_reset(config: &Config, h: &mut dyn Host, a: &Unanswered, now: u64) {
    let o = Observation {
        cluster: &a.cluster,
        probe: a.probe,
        class: if a.timed_out {
            Class::Timeout
        } else {
            Class::Reset
        },
        latency_ms: Some(a.latency_ms),
        signal: &provider_headers::Signal::default(),
        now_ms: now,
        ttft_later: false,
    };
    health::observe(config, h, &o);
}

/// Called when downstream stream `stream` ends: its attempts that got no answer
/// count as resets if the client was answered, and are dropped (their probe
/// claims released) if the client had gone, or if they ended after the
/// answering attempt's answer (`winner`, see [`Answering::winner_seq`]): a
/// cancelled call says nothing about the provider.
pub fn settle_unanswered(
    config: &Config,
    worker: &Worker,
    h: &mut dyn Host,
    stream: u32,
    client_answered: bool,
    winner: Option<u64>,
) {
    let waiting = {
        let mut l = worker.attempts.borrow_mut();
        l.forget_attempts(stream);
        if l.ended.len() >= ENDED_STREAMS {
            l.ended.pop_front();
        }
        l.ended.push_back((stream, client_answered, winner));
        !l.unanswered.is_empty()
    };
    if !waiting {
        return;
    }
    let now = h.now_ms();
    let mine: Vec<Unanswered> = {
        let mut l = worker.attempts.borrow_mut();
        // Mine, and any whose stream ended unseen (never matched): dropped.
        let (mine, rest) = std::mem::take(&mut l.unanswered)
            .into_iter()
            .partition(|a| a.stream == stream || now.saturating_sub(a.at_ms) > UNANSWERED_TTL_MS);
        l.unanswered = rest;
        mine
    };
    for a in mine {
        let answered = client_answered && a.stream == stream;
        let w = winner.filter(|_| a.stream == stream);
        settle_one(config, h, &a, answered, w, now);
    }
}

/// The router's timeout for an attempt, which it sets on the attempt's request
/// (per try if the route has one, else what is left of the route's).
pub const EXPECTED_TIMEOUT_HEADER: &str = "x-envoy-expected-rq-timeout-ms";
/// An attempt this close to its timeout when it ended unanswered timed out
/// (the router's timer and our clock reading are not the same instant).
const TIMEOUT_SLACK_MS: u64 = 20;

/// Error bodies read for Gemini's `retryDelay`, at most.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where an attempt is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptPhase {
    /// Not (yet) a request the downstream instance planned, or a retry the gate
    /// answered here (`gate_retry`): nothing is recorded.
    Unplanned,
    /// Sent to its cluster; waiting for response headers.
    Waiting,
    /// Its answer, or its absence, was recorded (once).
    Recorded,
}

/// One router attempt's life in the upstream instance.
pub struct UpstreamAttempt {
    config: Rc<Config>,
    worker: Rc<Worker>,
    route: Option<Rc<RoutePolicy>>,
    cluster: String,
    probe: bool,
    started_ms: u64,
    /// The downstream stream's context id, from the plan.
    stream: Option<u32>,
    /// The request asked for a stream, from the plan.
    streamed: bool,
    rewrite_model: Option<String>,
    phase: AttemptPhase,
    /// The router's timeout for this attempt, when it set one.
    timeout_ms: Option<u64>,
    /// A 429 without a wait header: its body may carry Gemini's `retryDelay`.
    error_body: Option<Vec<u8>>,
    /// From the plan: when a retry must have been sent by (client's deadline).
    retry_by_ms: Option<u64>,
    /// The model this attempt asks (its cluster's, or the body's) and the
    /// client's: for the served-by headers.
    served_model: Option<String>,
    asked_model: Option<String>,
    /// Going to a cluster of another API than the client's: the translation.
    xlate: Option<Box<AttemptXlate>>,
    /// This attempt's id in the VM's ledger, once sent.
    id: Option<u64>,
}

impl UpstreamAttempt {
    pub fn new(config: Rc<Config>, worker: Rc<Worker>) -> Self {
        UpstreamAttempt {
            config,
            worker,
            route: None,
            cluster: String::new(),
            probe: false,
            started_ms: 0,
            stream: None,
            streamed: false,
            rewrite_model: None,
            phase: AttemptPhase::Unplanned,
            timeout_ms: None,
            error_body: None,
            retry_by_ms: None,
            served_model: None,
            asked_model: None,
            xlate: None,
            id: None,
        }
    }

    /// A router retry is gated when it is sent, as a first attempt was when
    /// planned: a cluster that started cooling down (or opened) since, by this
    /// request's own answer or another's, is not sent to. The retry is answered
    /// here instead, with the wait; on a single-cluster route with
    /// `x-envoy-ratelimited`, so no router retries it. A cluster whose
    /// cool-down is over lets one probe through, as the gate does.
    fn gate_retry(&mut self, h: &mut dyn Host, route: &RoutePolicy, now: u64) -> Option<Flow> {
        let c = self.config.clusters.get(&self.cluster)?;
        let key = circuit::key(&self.cluster);
        match circuit::gate(&*h, &key, &c.circuit, now, 0) {
            Ok(circuit::Gate::Pass) | Err(_) => None,
            Ok(circuit::Gate::Probe) => {
                self.probe = true;
                None
            }
            Ok(circuit::Gate::Blocked { until_ms, why }) => {
                let capacity =
                    matches!(why, circuit::Blocked::CoolingDown | circuit::Blocked::Quota);
                let u = failover::Unavailable { until_ms, capacity };
                let mut r = failover::unavailable_reply(&u, now, h.random_u64());
                if route.clusters.len() <= 1 {
                    r.headers
                        .push(("x-envoy-ratelimited".to_string(), "true".to_string()));
                }
                // Answered here, it stays unplanned: it never reached the
                // provider and says nothing about it.
                match h.send_reply(&r) {
                    Ok(()) => Some(Flow::Pause),
                    Err(s) => {
                        log::warn!("llm-capacity: retry gate reply failed (host status {s}); sent");
                        None
                    }
                }
            }
        }
    }

    pub fn phase(&self) -> AttemptPhase {
        self.phase
    }

    /// Whether this successful answer's quota headers are read. An adaptive
    /// cluster's: every answer's while the quota last read was low, else at
    /// most once per [`ADAPTIVE_SAMPLE_MS`] per cluster and VM. Another
    /// cluster's feed only the gauges: once per [`QUOTA_SAMPLE_MS`].
    fn wants_quota(&self, now: u64) -> bool {
        let Some(c) = self.config.clusters.get(&self.cluster) else {
            return false;
        };
        if !c.adaptive && !self.config.telemetry.metrics {
            return false;
        }
        let every = if c.adaptive {
            ADAPTIVE_SAMPLE_MS
        } else {
            QUOTA_SAMPLE_MS
        };
        let mut l = self.worker.attempts.borrow_mut();
        match l.quota_sampled.get_mut(&self.cluster) {
            Some(q) if (c.adaptive && q.low) || now.saturating_sub(q.at_ms) >= every => {
                q.at_ms = now;
                true
            }
            Some(_) => false,
            None => {
                // Bounded: only configured clusters get an entry.
                let q = super::worker::QuotaSample {
                    at_ms: now,
                    low: false,
                };
                l.quota_sampled.insert(self.cluster.clone(), q);
                true
            }
        }
    }

    /// Notes whether the quota this VM just read for the cluster was low.
    fn note_quota(&self, signal: &provider_headers::Signal) {
        if let Some(q) = self
            .worker
            .attempts
            .borrow_mut()
            .quota_sampled
            .get_mut(&self.cluster)
        {
            q.low = quota_is_low(signal);
        }
    }

    /// The attempt ended (done or logged) without response headers.
    pub fn on_end(&mut self, h: &mut dyn Host) {
        if self.phase != AttemptPhase::Waiting {
            return;
        }
        self.phase = AttemptPhase::Recorded;
        // No response headers: reset, connect failure, per-try timeout, or the
        // client went away. Only the downstream stream's end tells which, so the
        // outcome waits for it (same worker, same VM) unless it cannot be matched.
        let now = h.now_ms();
        let latency_ms = now.saturating_sub(self.started_ms);
        let timed_out = self
            .timeout_ms
            .is_some_and(|t| t > 0 && latency_ms.saturating_add(TIMEOUT_SLACK_MS) >= t);
        let ended_seq = self
            .worker
            .attempts
            .borrow_mut()
            .attempt_ended(self.stream, self.id);
        let a = Unanswered {
            stream: self.stream.unwrap_or(0),
            at_ms: now,
            cluster: self.cluster.clone(),
            probe: self.probe,
            latency_ms,
            timed_out,
            ended_seq,
        };
        let ended = self
            .stream
            .and_then(|s| self.worker.attempts.borrow().stream_ended(s));
        if let Some((answered, winner)) = ended {
            // The downstream stream ended first: its verdict is known.
            settle_one(&self.config, h, &a, answered, winner, now);
            return;
        }
        let deferred = self.stream.is_some() && {
            let mut l = self.worker.attempts.borrow_mut();
            if l.unanswered.len() >= MAX_UNANSWERED {
                false
            } else {
                l.unanswered.push(Unanswered {
                    cluster: a.cluster.clone(),
                    ..a
                });
                true
            }
        };
        if !deferred {
            record_reset(&self.config, h, &a, now);
        }
    }

    /// The attempt's request headers: which cluster, whether it is the probe,
    /// and the model its body must carry.
    pub fn on_request_headers(&mut self, h: &mut dyn Host, end_of_stream: bool) -> Flow {
        let Some(plan_text) = h.property_text(&[PLAN_PROPERTY]) else {
            return Flow::Continue; // not a request the downstream filter planned
        };
        let Some(plan) = failover::decode_plan(&plan_text) else {
            return Flow::Continue;
        };
        let Some(route) = self.config.route(plan.route).cloned() else {
            return Flow::Continue;
        };
        self.cluster = h
            .property_text(&["xds", "cluster_name"])
            .unwrap_or_default();
        // A hedged request's attempts all go to the route's composite cluster,
        // which sends attempt n to the chain's n-th cluster: this attempt is
        // that cluster's. Only that and a planned probe need the attempt's number.
        let composite = route
            .routing
            .hedge
            .as_ref()
            .is_some_and(|hg| hg.cluster == self.cluster);
        let attempt = (composite || plan.probe_cluster.is_some()).then(|| {
            h.header(Map::RequestHeaders, "x-envoy-attempt-count")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(1)
        });
        if composite {
            let n = attempt.unwrap_or(1);
            if let Some(t) = route.clusters.get(n.saturating_sub(1)) {
                self.cluster = t.cluster.name.clone();
            }
        }
        self.stream = plan.stream;
        self.streamed = plan.streamed;
        self.probe = plan.probe_cluster == Some(self.cluster.as_str()) && attempt.unwrap_or(1) <= 1;
        self.started_ms = h.now_ms();
        self.retry_by_ms = plan.retry_by_ms;
        let retry = plan
            .stream
            .is_some_and(|s| self.worker.attempts.borrow().is_retry(s));
        // Sent while an earlier attempt still waits: the router's hedge (its
        // per-try timeout fired with `x-envoy-hedge-on-per-try-timeout`).
        let hedge = retry
            && plan
                .stream
                .is_some_and(|s| self.worker.attempts.borrow().is_hedge(s));
        if retry {
            if let Some(flow) = plan
                .stream
                .and_then(|s| super::cached::refuse_unsafe_retry(h, &self.worker, &route.name, s))
            {
                return flow; // unplanned: it never left
            }
            if let Some(flow) = self.gate_retry(h, &route, self.started_ms) {
                return flow;
            }
            // A hedge the gate answered is dropped by the router while the
            // first attempt waits (a retriable status with no retry left):
            // the first one's answer is still the client's.
            if hedge && self.config.telemetry.metrics {
                h.count(
                    &[("route", &route.name), ("result", "sent")],
                    HEDGES_TOTAL,
                    1,
                );
            }
            // Sent: it counts against the route's retry budget, now, so the
            // requests planned from here on see it (hedges included).
            if route.routing.budgeted(route.clusters.len()) {
                let now = self.started_ms;
                routing::spend(&*h, &route.name, &route.routing, Spend::Retries(1), now);
                if self.config.telemetry.metrics {
                    h.count(&[("route", &route.name)], BUDGETED_RETRIES_TOTAL, 1);
                }
            }
        }
        // Read now: Envoy 1.40 no longer shows the attempt's request headers
        // when an attempt it timed out ends.
        self.timeout_ms = h
            .header(Map::RequestHeaders, EXPECTED_TIMEOUT_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(stream) = self.stream {
            self.id = Some(self.worker.attempts.borrow_mut().attempt_sent(
                stream,
                self.started_ms,
                &self.cluster,
                hedge,
            ));
        }
        let change =
            failover::model_change(&route, &self.cluster, plan.body_model).map(str::to_string);
        self.served_model = change.clone().or(plan.body_model.map(str::to_string));
        self.asked_model = plan.asked_model.map(str::to_string);
        self.phase = AttemptPhase::Waiting;
        self.xlate = xlate::on_attempt_headers(
            h,
            self.config.telemetry.metrics,
            &route,
            &self.cluster,
            self.served_model.as_deref(),
        )
        .map(Box::new);
        self.route = Some(route);
        if self.xlate.is_some() && !end_of_stream {
            // Held until the body is translated (with its content-length).
            return Flow::Pause;
        }
        let Some(model) = change else {
            return Flow::Continue;
        };
        let path = h.header(Map::RequestHeaders, ":path").unwrap_or_default();
        if Api::detect(&path) == Some(Api::Gemini) {
            carry_model_in_path(h, &path, &model);
            return Flow::Continue;
        }
        if end_of_stream {
            return Flow::Continue;
        }
        // Hold the headers so content-length can follow the rewritten body.
        self.rewrite_model = Some(model);
        Flow::Pause
    }

    /// The attempt's request body: it carries the attempt's model.
    pub fn on_request_body(&mut self, h: &mut dyn Host, body_size: usize, eos: bool) -> Flow {
        if let Some(x) = self.xlate.as_mut().filter(|x| x.pending_request()) {
            if !eos {
                return Flow::Pause;
            }
            let Err(r) = x.on_request_body(h, body_size) else {
                return Flow::Continue;
            };
            // Never sent: it says nothing about the provider.
            self.xlate = None;
            self.phase = AttemptPhase::Unplanned;
            return match h.send_reply(&r) {
                Ok(()) => Flow::Pause,
                Err(_) => Flow::Continue,
            };
        }
        let Some(model) = &self.rewrite_model else {
            return Flow::Continue;
        };
        if !eos {
            return Flow::Pause;
        }
        let body = h
            .body(Buffer::RequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(new_body) = failover::body_with_model(&body, model) {
            if let Err(s) = set_request_body(h, body_size, &new_body) {
                log::warn!("llm-capacity: model rewrite failed (host status {s}); sent unchanged");
            }
        }
        self.rewrite_model = None;
        Flow::Continue
    }

    /// The attempt's answer: health data for its cluster, and the wait the
    /// router's back-off may use.
    pub fn on_response_headers(&mut self, h: &mut dyn Host) -> Flow {
        let Some(route) = self.route.clone() else {
            return Flow::Continue;
        };
        self.phase = AttemptPhase::Recorded;
        let now = h.now_ms();
        let status = h
            .header(Map::ResponseHeaders, ":status")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let class = Class::of_status(status);
        // A streamed success's headers come before its first token: the
        // downstream instance, which sees that token, feeds the circuit.
        let pending = (class == Class::Ok && self.streamed).then_some(self.probe);
        let mut ttft_later = false;
        if let (Some(stream), Some(id)) = (self.stream, self.id) {
            // The downstream timings take this reading instead of their own.
            ttft_later = self
                .worker
                .attempts
                .borrow_mut()
                .attempt_answered(stream, id, now, pending)
                && pending.is_some();
        }
        // A success says nothing new unless the circuit follows the provider's
        // quota; the remaining gauges are sampled once a second per cluster.
        let mut forged = false;
        let signal = if class != Class::Ok || self.wants_quota(now) {
            let headers = h.header_list(Map::ResponseHeaders);
            forged = headers.get(RETRY_AFTER_HEADER).is_some();
            let s = provider_headers::parse(headers.iter(), now);
            self.note_quota(&s);
            s
        } else {
            provider_headers::Signal::default()
        };
        if forged {
            // Only our own value may steer the router's back-off (a success is
            // never retried, so only error answers are checked).
            let _ = h.remove_header(Map::ResponseHeaders, RETRY_AFTER_HEADER);
        }
        let o = Observation {
            cluster: &self.cluster,
            probe: self.probe,
            class,
            latency_ms: Some(now.saturating_sub(self.started_ms)),
            signal: &signal,
            now_ms: now,
            ttft_later,
        };
        let cooling_until = health::observe(&self.config, h, &o);
        // Who served this answer; set (not added) so a provider cannot forge them.
        let served = failover::served_by_headers(
            &route,
            &self.cluster,
            self.served_model.as_deref(),
            self.asked_model.as_deref(),
        );
        for (name, value) in served {
            let _ = h.set_header(Map::ResponseHeaders, name, value);
        }
        if let Some(until) = cooling_until {
            // A retry of a single-cluster route stays on this cluster: the
            // router waits out the cool-down in force, or makes no retry.
            if route.clusters.len() <= 1 {
                match failover::same_cluster_retry(now, Some(until), self.retry_by_ms) {
                    failover::SameClusterRetry::Wait { secs } => {
                        let secs = secs.to_string();
                        let _ = h.set_header(Map::ResponseHeaders, RETRY_AFTER_HEADER, &secs);
                    }
                    failover::SameClusterRetry::Refuse => {
                        let _ = h.set_header(Map::ResponseHeaders, "x-envoy-ratelimited", "true");
                    }
                    failover::SameClusterRetry::Unchanged => {}
                }
            }
            // Should this answer reach the client, it names the wait in force.
            let secs = failover::retry_after_secs(now, until);
            if signal
                .retry_after_ms
                .is_none_or(|ms| ms.div_ceil(1000) < secs)
            {
                let _ = h.set_header(Map::ResponseHeaders, "retry-after", &secs.to_string());
            }
        }
        if let Some(x) = &mut self.xlate {
            x.on_response_headers(h, status);
        } else if class == Class::RateLimited && signal.retry_after_ms.is_none() {
            self.error_body = Some(Vec::new()); // Gemini's retryDelay, if any
        }
        Flow::Continue
    }

    /// The attempt's answer body: a 429's may carry Gemini's `retryDelay`.
    pub fn on_response_body(&mut self, h: &mut dyn Host, chunk_size: usize, eos: bool) -> Flow {
        if let Some(x) = &mut self.xlate {
            return x.on_response_body(h, chunk_size, eos);
        }
        if let Some(buf) = &mut self.error_body {
            if buf.len() + chunk_size <= MAX_ERROR_BODY {
                if let Ok(Some(chunk)) = h.body(Buffer::ResponseBody, 0, chunk_size) {
                    buf.extend_from_slice(&chunk);
                }
            }
            if eos {
                let delay = provider_headers::gemini_retry_delay_ms(buf);
                self.error_body = None;
                if let Some(ms) = delay {
                    let now = h.now_ms();
                    health::cool_down(&self.config, h, &self.cluster, ms, now);
                }
            }
        }
        Flow::Continue
    }
}
