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
use super::HostClock;
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

/// Error bodies read for Gemini's `retryDelay`, at most.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Attempt {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    route: Option<Rc<RoutePolicy>>,
    cluster: String,
    probe: bool,
    started_ms: u64,
    rewrite_model: Option<String>,
    answered: bool,
    done: bool,
    /// A 429 without a wait header: its body may carry Gemini's `retryDelay`.
    error_body: Option<Vec<u8>>,
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
            rewrite_model: None,
            answered: false,
            done: false,
            error_body: None,
        }
    }

    fn finish_without_answer(&mut self) {
        if self.done || self.answered || self.route.is_none() {
            return;
        }
        self.done = true;
        // No response headers: reset, connect failure or per-try timeout.
        let now = HostClock.now_ms();
        let latency = Some(now.saturating_sub(self.started_ms));
        health::observe(
            &self.config,
            &self.metrics,
            &self.cluster,
            self.probe,
            Class::Reset,
            latency,
            &provider_headers::Signal::default(),
            now,
        );
    }
}

impl Context for Attempt {
    fn on_done(&mut self) -> bool {
        self.finish_without_answer();
        true
    }
}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
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
        let attempt = abi::header_text(abi::MAP_REQUEST_HEADERS, "x-envoy-attempt-count")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1);
        self.probe = attempt <= 1 && plan.probe_cluster == Some(self.cluster.as_str());
        self.started_ms = HostClock.now_ms();
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
        let Some(route) = self.route.clone() else {
            return Action::Continue;
        };
        self.answered = true;
        self.done = true;
        let now = HostClock.now_ms();
        let headers = abi::header_pairs(abi::MAP_RESPONSE_HEADERS);
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .unwrap_or(0);
        let signal =
            provider_headers::parse(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), now);
        let class = Class::of_status(status);
        health::observe(
            &self.config,
            &self.metrics,
            &self.cluster,
            self.probe,
            class,
            Some(now.saturating_sub(self.started_ms)),
            &signal,
            now,
        );
        if matches!(class, Class::RateLimited | Class::ServerError) {
            match signal.cooldown_ms() {
                // A retry of a single-cluster route stays on this cluster: let the
                // router wait what the provider asked (header in whole seconds).
                Some(ms) if route.clusters.len() <= 1 => {
                    let secs = ms.div_ceil(1000).max(1).to_string();
                    let _ =
                        abi::replace_header(abi::MAP_RESPONSE_HEADERS, RETRY_AFTER_HEADER, &secs);
                }
                None if class == Class::RateLimited => self.error_body = Some(Vec::new()),
                _ => {}
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
        self.finish_without_answer();
    }
}
