//! The upstream instance: the same module placed as an upstream HTTP filter
//! (root_id ending in `upstream`), where Envoy runs it once per router attempt.
//!
//! Each attempt: the body carries the model of the cluster it goes to; the
//! answer (or its absence: reset, connect failure, timeout) feeds that
//! cluster's circuit; a 429/503 wait is handed to the router's
//! `rate_limited_retry_back_off` only when the retry stays on the same cluster.
//! The request is never re-sent from here.

use super::abi;
use super::health;
use super::{enter, HostClock, HostStore};
use crate::core::circuit;
use crate::core::config::{Config, RoutePolicy};
use crate::core::env::Clock;
use crate::core::failover::{self, Class, PLAN_PROPERTY, RETRY_AFTER_HEADER};
use crate::core::provider_headers;
use crate::core::request::Api;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

use super::metrics::Metrics;

/// How often a healthy cluster's quota headers feed the remaining gauges.
const QUOTA_SAMPLE_MS: u64 = 1000;

thread_local! {
    /// Per cluster: when this VM last read a successful answer's quota headers.
    static QUOTA_SAMPLED: RefCell<std::collections::HashMap<String, u64>> =
        RefCell::new(std::collections::HashMap::new());
}

/// Attempts waiting for their downstream stream's end, per VM, at most.
const MAX_UNANSWERED: usize = 1024;
/// An attempt whose stream was never seen ending is forgotten after this.
const UNANSWERED_TTL_MS: u64 = 60_000;

/// An attempt that ended without response headers.
struct Unanswered {
    stream: u32,
    at_ms: u64,
    cluster: String,
    probe: bool,
    latency_ms: u64,
}

/// Recently ended downstream streams remembered per VM, for attempts whose end
/// Envoy reports after their stream's (a reset final attempt, a client gone).
const ENDED_STREAMS: usize = 256;

thread_local! {
    static UNANSWERED: RefCell<Vec<Unanswered>> = const { RefCell::new(Vec::new()) };
    /// (stream, whether its client was answered), oldest first.
    static ENDED: RefCell<std::collections::VecDeque<(u32, bool)>> =
        const { RefCell::new(std::collections::VecDeque::new()) };
}

/// Downstream streams whose first attempt this VM has seen, newest last: a
/// later attempt of one of them is a router retry, gated at send time.
const ATTEMPTED_STREAMS: usize = 1024;

thread_local! {
    static ATTEMPTED: RefCell<std::collections::VecDeque<u32>> =
        const { RefCell::new(std::collections::VecDeque::new()) };
}

/// Whether `stream` already had an attempt (then this one is a retry); the
/// first attempt is remembered.
fn is_retry(stream: u32) -> bool {
    ATTEMPTED.with(|a| {
        let mut a = a.borrow_mut();
        if a.iter().rev().any(|&s| s == stream) {
            return true;
        }
        if a.len() >= ATTEMPTED_STREAMS {
            a.pop_front();
        }
        a.push_back(stream);
        false
    })
}

fn forget_attempts(stream: u32) {
    ATTEMPTED.with(|a| {
        let mut a = a.borrow_mut();
        if let Some(i) = a.iter().rposition(|&s| s == stream) {
            a.remove(i);
        }
    });
}

fn stream_ended(stream: u32) -> Option<bool> {
    ENDED.with(|e| {
        e.borrow()
            .iter()
            .rev()
            .find(|(s, _)| *s == stream)
            .map(|&(_, answered)| answered)
    })
}

/// An unanswered attempt whose stream's fate is known: a reset if the client
/// was answered, else nothing (its probe claim given back).
fn settle_one(
    config: &Config,
    metrics: &RefCell<Metrics>,
    cluster: &str,
    probe: bool,
    latency_ms: u64,
    client_answered: bool,
    now: u64,
) {
    if client_answered {
        record_reset(config, metrics, cluster, probe, latency_ms, now);
    } else if probe {
        if let Some(c) = config.clusters.get(cluster) {
            let _ = circuit::release_probe(&HostStore, &circuit::key(cluster), &c.circuit, now);
        }
    }
}

fn record_reset(
    config: &Config,
    metrics: &RefCell<Metrics>,
    cluster: &str,
    probe: bool,
    latency_ms: u64,
    now: u64,
) {
    health::observe(
        config,
        metrics,
        cluster,
        probe,
        Class::Reset,
        Some(latency_ms),
        &provider_headers::Signal::default(),
        now,
    );
}

/// Called when downstream stream `stream` ends: its attempts that got no answer
/// count as resets if the client was answered, and are dropped (their probe
/// claims released) if the client had gone: a cancelled call says nothing
/// about the provider.
pub fn settle_unanswered(
    config: &Config,
    metrics: &RefCell<Metrics>,
    stream: u32,
    client_answered: bool,
) {
    forget_attempts(stream);
    ENDED.with(|e| {
        let mut e = e.borrow_mut();
        if e.len() >= ENDED_STREAMS {
            e.pop_front();
        }
        e.push_back((stream, client_answered));
    });
    let mut now = 0;
    let mine: Vec<Unanswered> = UNANSWERED.with(|u| {
        let mut u = u.borrow_mut();
        if u.is_empty() {
            return Vec::new();
        }
        now = HostClock.now_ms();
        // Mine, and any whose stream ended unseen (never matched): dropped.
        let (mine, rest) = std::mem::take(&mut *u)
            .into_iter()
            .partition(|a| a.stream == stream || now.saturating_sub(a.at_ms) > UNANSWERED_TTL_MS);
        *u = rest;
        mine
    });
    for a in mine {
        let answered = client_answered && a.stream == stream;
        settle_one(
            config,
            metrics,
            &a.cluster,
            a.probe,
            a.latency_ms,
            answered,
            now,
        );
    }
}

/// Error bodies read for Gemini's `retryDelay`, at most.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Attempt {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    route: Option<Rc<RoutePolicy>>,
    cluster: String,
    probe: bool,
    started_ms: u64,
    /// The downstream stream's context id, from the plan.
    stream: Option<u32>,
    rewrite_model: Option<String>,
    answered: bool,
    done: bool,
    /// A 429 without a wait header: its body may carry Gemini's `retryDelay`.
    error_body: Option<Vec<u8>>,
    /// From the plan: when a retry must have been sent by (client's deadline).
    retry_by_ms: Option<u64>,
    /// This attempt was answered here (its cluster is cooling down or open):
    /// it never reached the provider and says nothing about it.
    local: bool,
}

impl Attempt {
    pub fn new(config: Rc<Config>, metrics: Rc<RefCell<Metrics>>) -> Self {
        Attempt {
            config,
            metrics,
            route: None,
            cluster: String::new(),
            probe: false,
            started_ms: 0,
            stream: None,
            rewrite_model: None,
            answered: false,
            done: false,
            error_body: None,
            retry_by_ms: None,
            local: false,
        }
    }

    /// A router retry is gated when it is sent, as a first attempt was when
    /// planned: a cluster that started cooling down (or opened) since, by this
    /// request's own answer or another's, is not sent to. The retry is answered
    /// here instead, with the wait; on a single-cluster route with
    /// `x-envoy-ratelimited`, so the router makes no further retry on it. A
    /// cluster whose cool-down is over lets one probe through, as the gate does.
    fn gate_retry(&mut self, route: &RoutePolicy, now: u64) -> Option<Action> {
        let c = self.config.clusters.get(&self.cluster)?;
        let key = circuit::key(&self.cluster);
        match circuit::gate(&HostStore, &key, &c.circuit, now, 0) {
            Ok(circuit::Gate::Pass) | Err(_) => None,
            Ok(circuit::Gate::Probe) => {
                self.probe = true;
                None
            }
            Ok(circuit::Gate::Blocked { until_ms, why }) => {
                let capacity =
                    matches!(why, circuit::Blocked::CoolingDown | circuit::Blocked::Quota);
                let u = failover::Unavailable { until_ms, capacity };
                let mut r =
                    failover::unavailable_reply(&u, now, u64::from(self.stream.unwrap_or(0)));
                if route.clusters.len() <= 1 {
                    r.headers
                        .push(("x-envoy-ratelimited".to_string(), "true".to_string()));
                }
                let headers: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let pairs = crate::core::reply::serialize_pairs(&headers);
                match abi::send_local_response(r.status, r.details, &r.body, &pairs) {
                    Ok(()) => {
                        self.local = true;
                        self.done = true;
                        Some(Action::Pause)
                    }
                    Err(s) => {
                        log::warn!("llm-capacity: retry gate reply failed (host status {s}); sent");
                        None
                    }
                }
            }
        }
    }

    /// Whether this answer's quota headers are read: always for adaptive
    /// clusters, else at most once per [`QUOTA_SAMPLE_MS`] per cluster and VM.
    fn wants_quota(&self, now: u64) -> bool {
        let Some(c) = self.config.clusters.get(&self.cluster) else {
            return false;
        };
        if c.adaptive {
            return true;
        }
        if !self.config.telemetry.metrics {
            return false;
        }
        QUOTA_SAMPLED.with(|m| {
            let mut m = m.borrow_mut();
            match m.get_mut(&self.cluster) {
                Some(last) if now.saturating_sub(*last) < QUOTA_SAMPLE_MS => false,
                Some(last) => {
                    *last = now;
                    true
                }
                None => {
                    // Bounded: only configured clusters get an entry.
                    m.insert(self.cluster.clone(), now);
                    true
                }
            }
        })
    }

    fn finish_without_answer(&mut self) {
        if self.done || self.answered || self.route.is_none() {
            return;
        }
        self.done = true;
        // No response headers: reset, connect failure, per-try timeout, or the
        // client went away. Only the downstream stream's end tells which, so the
        // outcome waits for it (same worker, same VM) unless it cannot be matched.
        let now = HostClock.now_ms();
        let latency = now.saturating_sub(self.started_ms);
        if let Some(answered) = self.stream.and_then(stream_ended) {
            // The downstream stream ended first: its verdict is known.
            settle_one(
                &self.config,
                &self.metrics,
                &self.cluster,
                self.probe,
                latency,
                answered,
                now,
            );
            return;
        }
        let deferred = self.stream.is_some_and(|stream| {
            UNANSWERED.with(|u| {
                let mut u = u.borrow_mut();
                if u.len() >= MAX_UNANSWERED {
                    return false;
                }
                u.push(Unanswered {
                    stream,
                    at_ms: now,
                    cluster: self.cluster.clone(),
                    probe: self.probe,
                    latency_ms: latency,
                });
                true
            })
        });
        if !deferred {
            record_reset(
                &self.config,
                &self.metrics,
                &self.cluster,
                self.probe,
                latency,
                now,
            );
        }
    }
}

impl Context for Attempt {
    fn on_done(&mut self) -> bool {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_done");
        self.finish_without_answer();
        true
    }
}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_http_request_headers");
        let Some(plan_text) = abi::property_text(&[PLAN_PROPERTY]) else {
            return Action::Continue; // not a request the downstream filter planned
        };
        let Some(plan) = failover::decode_plan(&plan_text) else {
            return Action::Continue;
        };
        let Some(route) = self.config.route(plan.route).cloned() else {
            return Action::Continue;
        };
        self.cluster = abi::property_text(&["xds", "cluster_name"]).unwrap_or_default();
        self.stream = plan.stream;
        // Only a planned probe needs to know which attempt this is.
        self.probe = plan.probe_cluster == Some(self.cluster.as_str())
            && abi::header_text(abi::MAP_REQUEST_HEADERS, "x-envoy-attempt-count")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(1)
                <= 1;
        self.started_ms = HostClock.now_ms();
        self.retry_by_ms = plan.retry_by_ms;
        if plan.stream.is_some_and(is_retry) {
            if let Some(action) = self.gate_retry(&route, self.started_ms) {
                return action;
            }
        }
        let change =
            failover::model_change(&route, &self.cluster, plan.body_model).map(str::to_string);
        self.route = Some(route);
        let Some(model) = change else {
            return Action::Continue;
        };
        let path = abi::header_text(abi::MAP_REQUEST_HEADERS, ":path").unwrap_or_default();
        if Api::detect(&path) == Some(Api::Gemini) {
            if let Some(p) = failover::gemini_path_with_model(&path, &model) {
                let _ = abi::replace_header(abi::MAP_REQUEST_HEADERS, ":path", &p);
            }
            return Action::Continue;
        }
        if end_of_stream {
            return Action::Continue;
        }
        // Hold the headers so content-length can follow the rewritten body.
        self.rewrite_model = Some(model);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_http_request_body");
        let Some(model) = &self.rewrite_model else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = abi::buffer(abi::BUFFER_REQUEST_BODY, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(new_body) = failover::body_with_model(&body, model) {
            let ok =
                abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, body_size, &new_body).and_then(|()| {
                    abi::replace_header(
                        abi::MAP_REQUEST_HEADERS,
                        "content-length",
                        &new_body.len().to_string(),
                    )
                });
            if let Err(s) = ok {
                log::warn!("llm-capacity: model rewrite failed (host status {s}); sent unchanged");
            }
        }
        self.rewrite_model = None;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_http_response_headers");
        let Some(route) = self.route.clone() else {
            return Action::Continue;
        };
        if self.local {
            return Action::Continue; // our own reply (gate_retry)
        }
        self.answered = true;
        self.done = true;
        let now = HostClock.now_ms();
        let status = abi::header_text(abi::MAP_RESPONSE_HEADERS, ":status")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let class = Class::of_status(status);
        // A success says nothing new unless the circuit follows the provider's
        // quota; the remaining gauges are sampled once a second per cluster.
        let mut forged = false;
        let signal = if class != Class::Ok || self.wants_quota(now) {
            let headers = abi::Headers::read(abi::MAP_RESPONSE_HEADERS);
            forged = headers.get(RETRY_AFTER_HEADER).is_some();
            provider_headers::parse(headers.iter(), now)
        } else {
            provider_headers::Signal::default()
        };
        if forged {
            // Only our own value may steer the router's back-off (a success is
            // never retried, so only error answers are checked).
            let _ = abi::remove_header(abi::MAP_RESPONSE_HEADERS, RETRY_AFTER_HEADER);
        }
        let cooling_until = health::observe(
            &self.config,
            &self.metrics,
            &self.cluster,
            self.probe,
            class,
            Some(now.saturating_sub(self.started_ms)),
            &signal,
            now,
        );
        if let Some(until) = cooling_until {
            // A retry of a single-cluster route stays on this cluster: the
            // router waits out the cool-down in force, or makes no retry.
            if route.clusters.len() <= 1 {
                match failover::same_cluster_retry(now, Some(until), self.retry_by_ms) {
                    failover::SameClusterRetry::Wait { secs } => {
                        let _ = abi::replace_header(
                            abi::MAP_RESPONSE_HEADERS,
                            RETRY_AFTER_HEADER,
                            &secs.to_string(),
                        );
                    }
                    failover::SameClusterRetry::Refuse => {
                        let _ = abi::replace_header(
                            abi::MAP_RESPONSE_HEADERS,
                            "x-envoy-ratelimited",
                            "true",
                        );
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
                let _ = abi::replace_header(
                    abi::MAP_RESPONSE_HEADERS,
                    "retry-after",
                    &secs.to_string(),
                );
            }
        }
        if class == Class::RateLimited && signal.retry_after_ms.is_none() {
            self.error_body = Some(Vec::new()); // Gemini's retryDelay, if any
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_http_response_body");
        if let Some(buf) = &mut self.error_body {
            if buf.len() + body_size <= MAX_ERROR_BODY {
                if let Ok(Some(chunk)) = abi::buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size) {
                    buf.extend_from_slice(&chunk);
                }
            }
            if end_of_stream {
                let delay = provider_headers::gemini_retry_delay_ms(buf);
                self.error_body = None;
                if let Some(ms) = delay {
                    health::cool_down(
                        &self.config,
                        &self.metrics,
                        &self.cluster,
                        ms,
                        HostClock.now_ms(),
                    );
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("up_on_log");
        self.finish_without_answer();
    }
}
