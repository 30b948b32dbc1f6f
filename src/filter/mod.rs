//! The thin proxy-wasm adapter: reads what the core needs from the host, applies
//! the core's decision, and reports. No policy logic lives here.

mod abi;
mod admission;
mod budgets;
mod fault;
mod global;
mod health;
mod metrics;
mod upstream;

use crate::core::accounting::{preflight_encoded, Preflight, ResponseTracker, Settlement, Source};
use crate::core::calibrate;
use crate::core::circuit;
use crate::core::config::{Config, LogLevel, QueueHold, RoutePolicy, TenantSource};
use crate::core::decision::{self, RequestHead, Verdict};
use crate::core::env::{Clock, Random, SharedStore, SplitMix64, StoreError};
use crate::core::failover::{self, Class, Plan, RETRY_AFTER_HEADER};
use crate::core::limiter::Cost;
use crate::core::provider_headers;
use crate::core::ratelimit;
use crate::core::reply::{serialize_pairs, LocalReply};
use crate::core::request::Api;
use crate::core::telemetry::{
    operation_name, provider_name, AccessLogState, Outcome, BUDGET_EVICTIONS_TOTAL,
    BUDGET_EXCEEDED_TOTAL, BUILD_INFO, ESTIMATE_ERROR_PERCENT, FAILOVERS_TOTAL,
    LIMITER_ERRORS_TOTAL, QUEUED_TOTAL, QUEUE_WAIT_MS, RATE_LIMITED_TOTAL, RECONCILIATIONS_TOTAL,
    REQUESTS_TOTAL, SHADOW_LIMITED_TOTAL, SPEND_MICRODOLLARS_TOTAL, TENANT_EVICTIONS_TOTAL,
    TOKENS_TOTAL, WASM_MEMORY_BYTES,
};
use crate::core::{load_config, truncate, GIT_REVISION, VERSION};
use admission::{Attempt, Charge, Queue, Refusal, Ticket, Waiter};
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

/// Filter-state key the access log reads as `%FILTER_STATE(wasm.llm_capacity:PLAIN)%`.
const FILTER_STATE_KEY: &str = "llm_capacity";
thread_local! {
    /// The queue's tick period as last set, restored after a renewal's tick.
    static QUEUE_POLL_MS: std::cell::Cell<u32> = const { std::cell::Cell::new(20) };
}

/// Tenant ids longer than this are cut (they are stored in shared data).
const MAX_TENANT_LEN: usize = 128;

proxy_wasm::main! {{
    let _ = log::set_logger(&HOST_LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // With panic = "abort" a panic traps the VM; at least say why in Envoy's log.
    std::panic::set_hook(Box::new(|info| abi::log(abi::LOG_CRITICAL, &format!("llm-capacity panic: {info}"))));
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

struct HostLogger;
static HOST_LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Trace => abi::LOG_TRACE,
                log::Level::Debug => abi::LOG_DEBUG,
                log::Level::Info => abi::LOG_INFO,
                log::Level::Warn => abi::LOG_WARN,
                log::Level::Error => abi::LOG_ERROR,
            };
            abi::log(level, &record.args().to_string());
        }
    }
    fn flush(&self) {}
}

struct Root {
    config: Option<Rc<Config>>,
    metrics: Rc<RefCell<Metrics>>,
    /// Jitter for Retry-After; seeded once per VM from the host's entropy.
    rng: Rc<RefCell<SplitMix64>>,
    /// Requests of this root's streams waiting for capacity.
    queue: Queue,
    /// Placed as an upstream HTTP filter (root_id ending in `upstream`).
    upstream: bool,
    /// Global-tier renewals this worker asked the rate limit service for.
    renewals: std::collections::HashMap<u32, global::RenewalCall>,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            config: None,
            metrics: Rc::default(),
            rng: Rc::new(RefCell::new(host_random())),
            queue: Queue::default(),
            upstream: false,
            renewals: std::collections::HashMap::new(),
        }
    }
}

/// Seeds a cheap per-VM generator from WASI `random_get` (getrandom), rather than
/// paying a host call per random number.
fn host_random() -> SplitMix64 {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // No entropy: still distinct per VM and start time, which is all jitter needs.
        return SplitMix64(abi::now_ns().unwrap_or(0x5eed));
    }
    SplitMix64(u64::from_le_bytes(seed))
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        enter();
        let count = self.config.as_ref().is_some_and(|c| c.telemetry.metrics);
        global::on_renewal_answer(
            &mut self.renewals,
            &self.metrics,
            count,
            token_id,
            status_code,
            response_size,
        );
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("llm-capacity {VERSION} (git {GIT_REVISION}) starting");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                log::error!("llm-capacity: cannot read plugin configuration (host status {s})");
                return false;
            }
        };
        let config = match load_config(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy refuse the config (NACK, or no start).
                log::error!("llm-capacity: {e}");
                return false;
            }
        };
        log::set_max_level(match config.log_level {
            LogLevel::Trace => log::LevelFilter::Trace,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
        });
        if config.telemetry.metrics {
            self.metrics.borrow_mut().set_gauge(
                &[("version", VERSION), ("revision", GIT_REVISION)],
                BUILD_INFO,
                1,
            );
        }
        self.upstream =
            abi::property_text(&["plugin_root_id"]).is_some_and(|r| r.ends_with("upstream"));
        log::info!(
            "llm-capacity: configuration accepted: {} route policies, {} clusters{}",
            config.routes.len(),
            config.clusters.len(),
            if self.upstream {
                " (upstream instance)"
            } else {
                ""
            }
        );
        self.config = Some(Rc::new(config));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        if self.upstream {
            return Some(Box::new(upstream::Attempt::new(
                config,
                Rc::clone(&self.metrics),
            )));
        }
        Some(Box::new(Stream::new(
            config,
            Rc::clone(&self.metrics),
            Rc::clone(&self.rng),
            Rc::clone(&self.queue),
            context_id,
        )))
    }

    fn on_tick(&mut self) {
        enter();
        fault::on_tick();
        let renewed = global::make_renewals(&mut self.renewals);
        let waiting = admission::on_tick(&self.queue);
        if !waiting {
            // Nobody waits: stop ticking until a stream enqueues again.
            let _ = abi::set_tick_period(0);
        } else if renewed {
            // Back from the renewal's 1 ms tick to the queue's poll.
            let _ = abi::set_tick_period(QUEUE_POLL_MS.with(std::cell::Cell::get));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    rng: Rc<RefCell<SplitMix64>>,
    queue: Queue,
    context_id: u32,
    waiter: Option<Rc<RefCell<Waiter>>>,
    class: usize,
    client_timeout_ms: Option<u64>,
    /// The request body has a content-encoding the filter does not decode.
    encoded_body: bool,
    route: String,
    tenant: Option<String>,
    charges: Vec<Charge>,
    /// Rate-limit headers for the answer, from the admission snapshot.
    rate_headers: Vec<(&'static str, String)>,
    replied: bool,
    limit: Option<(&'static str, &'static str)>,
    shadow_limited: Option<&'static str>,
    outcome: Outcome,
    policy: Option<Rc<RoutePolicy>>,
    path: String,
    reading_body: bool,
    pre: Option<Preflight>,
    tracker: Option<ResponseTracker>,
    response_ended: bool,
    settled: Option<Settlement>,
    /// When the request arrived, for the deadline left for retries.
    started_ms: u64,
    /// Where the request goes (`None`: the route has no cluster chain).
    plan: Option<Plan>,
    /// When the request left for the upstream (latency, downstream-only health).
    sent_ms: u64,
    budgets: budgets::Budgets,
    /// The model the answer names (access log `gen_ai.response.model`).
    response_model: Option<String>,
    queue_wait_ms: Option<u64>,
    /// Response headers came (from upstream or a local reply): the client was answered.
    response_seen: bool,
    /// The outcome was decided and counted.
    decided: bool,
    /// The request's share of the fleet-wide quota.
    global: Option<global::GlobalCharge>,
    /// A call to the rate limit service the request waits for.
    global_pending: Option<global::Pending>,
    /// How the global tier decided, for the access log.
    global_result: Option<&'static str>,
}

impl Stream {
    fn new(
        config: Rc<Config>,
        metrics: Rc<RefCell<Metrics>>,
        rng: Rc<RefCell<SplitMix64>>,
        queue: Queue,
        context_id: u32,
    ) -> Self {
        Stream {
            config,
            metrics,
            rng,
            queue,
            context_id,
            waiter: None,
            class: 0,
            client_timeout_ms: None,
            encoded_body: false,
            route: String::new(),
            tenant: None,
            charges: Vec::new(),
            rate_headers: Vec::new(),
            replied: false,
            limit: None,
            shadow_limited: None,
            outcome: Outcome::Unmatched,
            policy: None,
            path: String::new(),
            reading_body: false,
            pre: None,
            tracker: None,
            response_ended: false,
            settled: None,
            started_ms: 0,
            plan: None,
            sent_ms: 0,
            budgets: budgets::Budgets::default(),
            response_model: None,
            queue_wait_ms: None,
            response_seen: false,
            decided: false,
            global: None,
            global_pending: None,
            global_result: None,
        }
    }

    fn reply(&mut self, outcome: Outcome, r: LocalReply) -> Action {
        self.outcome = outcome;
        self.replied = true;
        self.count_outcome();
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match abi::send_local_response(r.status, r.details, &r.body, &serialize_pairs(&headers)) {
            Ok(()) => Action::Pause,
            Err(s) => {
                // Could not answer: let the request through rather than hang it.
                log::warn!("llm-capacity: local reply failed (host status {s}); passing request");
                Action::Continue
            }
        }
    }

    /// Counts the request's outcome once it is decided (admitted, refused or
    /// resumed from the queue); the access-log state is written only for those.
    fn count_outcome(&mut self) {
        self.decided = true;
        if self.config.telemetry.metrics {
            self.metrics.borrow_mut().count(
                &[("route", &self.route), ("outcome", self.outcome.as_str())],
                REQUESTS_TOTAL,
                1,
            );
        }
    }

    /// Writes the access-log filter state with everything known so far.
    fn publish(&self) {
        if !self.config.telemetry.filter_state {
            return;
        }
        let mut state = AccessLogState {
            route: &self.route,
            outcome: self.outcome.as_str(),
            ..Default::default()
        };
        if let Some(p) = &self.pre {
            state.api = p.api.map(|a| a.as_str());
            state.operation = p.api.map(operation_name);
            state.model = p.model.as_deref();
            state.input_estimate = Some(p.input_estimate);
            state.reserved = Some(p.reserved);
        }
        state.response_model = self.response_model.as_deref();
        state.queue_wait_ms = self.queue_wait_ms;
        state.global = self.global_result;
        if let Some((scope, limit)) = self.limit {
            state.scope = Some(scope);
            state.limit = Some(limit);
        }
        state.shadow_limited = self.shadow_limited;
        if let (Some(plan), Some(policy)) = (&self.plan, &self.policy) {
            if let Some(t) = plan.slots.first().and_then(|&i| policy.clusters.get(i)) {
                state.cluster = Some(&t.cluster.name);
                state.provider = provider_name(t.cluster.provider);
            }
            state.failover = plan.slots.first().is_some_and(|&i| i > 0);
            state.probe = plan.probe;
        }
        if let Some(s) = &self.settled {
            state.usage_source = Some(s.source.as_str());
            state.input_tokens = Some(s.input);
            state.output_tokens = Some(s.output);
            state.cached_input_tokens = Some(s.cached_input);
        }
        if let Err(s) = abi::set_property(&[FILTER_STATE_KEY], &state.to_json()) {
            log::debug!("llm-capacity: cannot set filter state (host status {s})");
        }
    }

    fn on_body_complete(&mut self, body_size: usize) -> Action {
        let Some(policy) = self.policy.clone() else {
            return Action::Continue;
        };
        let body = match abi::buffer(abi::BUFFER_REQUEST_BODY, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                log::warn!("llm-capacity: cannot read request body (host status {s})");
                Vec::new()
            }
        };
        let store = CalibrationReads;
        let pre = match preflight_encoded(
            &policy.policy,
            &self.path,
            &body,
            Some(&store),
            self.encoded_body,
        ) {
            Ok(p) => p,
            Err(reply) => return self.reply(Outcome::InvalidBody, reply),
        };
        if let Err(action) = self.route_upstream(&policy, pre.reserved) {
            self.pre = Some(pre);
            return action;
        }
        // The first attempt's body carries its cluster's model; the upstream
        // instance rewrites it again for attempts that go elsewhere.
        let target_model = self
            .plan
            .as_ref()
            .and_then(|p| p.slots.first())
            .and_then(|&i| policy.clusters.get(i))
            .and_then(|t| t.model.as_deref())
            .filter(|m| pre.model.as_deref() != Some(*m));
        if let Err(action) = self.charge_budgets(
            &policy,
            target_model.or(pre.model.as_deref()),
            (pre.reserved_input, pre.output_allowance),
        ) {
            self.pre = Some(pre);
            return action;
        }
        // Without held headers the content-length cannot follow a new body.
        let mut new_body = pre.rewrite.clone().filter(|_| self.config.hold_headers);
        if let Some(m) = target_model.filter(|_| self.config.hold_headers) {
            if pre.api == Some(Api::Gemini) {
                if let Some(p) = failover::gemini_path_with_model(&self.path, m) {
                    let _ = abi::replace_header(abi::MAP_REQUEST_HEADERS, ":path", &p);
                }
            } else if !pre.size_based {
                let base = new_body.as_deref().unwrap_or(&body);
                if let Some(b) = failover::body_with_model(base, m) {
                    new_body = Some(b);
                }
            }
        }
        if let Some(new_body) = &new_body {
            // Headers are still held (allow_on_headers_stop_iteration), so the
            // content-length can follow the new body.
            let ok =
                abi::set_buffer(abi::BUFFER_REQUEST_BODY, 0, body_size, new_body).and_then(|()| {
                    abi::replace_header(
                        abi::MAP_REQUEST_HEADERS,
                        "content-length",
                        &new_body.len().to_string(),
                    )
                });
            if let Err(s) = ok {
                log::warn!(
                    "llm-capacity: body rewrite failed (host status {s}); sending it unchanged"
                );
            }
        }
        self.publish_plan(&policy, target_model.or(pre.model.as_deref()));
        if self.config.telemetry.metrics {
            let mut m = self.metrics.borrow_mut();
            let model = pre.model.as_deref().unwrap_or("");
            m.count(
                &[
                    ("route", &self.route),
                    ("model", model),
                    ("kind", "estimated_input"),
                ],
                TOKENS_TOTAL,
                pre.input_estimate,
            );
            m.count(
                &[
                    ("route", &self.route),
                    ("model", model),
                    ("kind", "reserved"),
                ],
                TOKENS_TOTAL,
                pre.reserved,
            );
        }
        let cost = Cost {
            tokens: pre.reserved,
            input_tokens: pre.reserved_input,
            output_tokens: pre.output_allowance,
        };
        self.tracker = Some(ResponseTracker::new(pre.api));
        self.pre = Some(pre);
        if let Some(action) = self.admit(&policy, cost) {
            return action;
        }
        self.sent_ms = HostClock.now_ms();
        self.count_outcome();
        Action::Continue
    }

    /// Plans the attempts over the route's cluster chain. `Err` is the local
    /// answer when no cluster can take the request now.
    fn route_upstream(&mut self, policy: &Rc<RoutePolicy>, tokens: u64) -> Result<(), Action> {
        if policy.clusters.is_empty() {
            return Ok(());
        }
        let now = HostClock.now_ms();
        // Without held headers the route's own cluster is where the request
        // goes: only that one is gated.
        let candidates = if self.config.hold_headers {
            &policy.clusters[..]
        } else {
            policy.clusters.get(..1).unwrap_or_default()
        };
        let plan = match failover::plan(&HostStore, candidates, now, tokens) {
            Ok(p) => p,
            Err(u) => {
                let r = failover::unavailable_reply(&u, now, self.rng.borrow_mut().next_u64());
                return Err(self.reply(Outcome::NoUpstream, r));
            }
        };
        let chain = policy.clusters.len();
        if !self.config.hold_headers {
            // Headers already left: the circuits still gate the request, but the
            // route's cluster and retries can no longer be steered.
            self.plan = Some(plan);
            return Ok(());
        }
        if chain > 1 {
            // The route's matcher cluster specifier reads these, for the first
            // attempt (after clear_route_cache) and for each retry. When the
            // primary takes the first attempt, the route already points there
            // (the matcher's default is the chain's first cluster): the route
            // is left alone, which saves a slot and a route lookup.
            let primary_first = plan.slots.first() == Some(&0);
            for (n, &i) in plan.slots.iter().enumerate() {
                if n == 0 && primary_first {
                    continue;
                }
                if let Some(t) = policy.clusters.get(i) {
                    let _ = abi::set_property(
                        &[&failover::slot_property(n + 1)],
                        t.cluster.name.as_bytes(),
                    );
                }
            }
            if !primary_first {
                if let Err(s) = abi::clear_route_cache() {
                    log::warn!("llm-capacity: clear_route_cache failed (host status {s})");
                }
            }
        }
        let remaining = self
            .client_timeout_ms
            .map(|t| t.saturating_sub(now.saturating_sub(self.started_ms)));
        if let Some(n) = failover::max_retries(
            &plan,
            chain,
            remaining,
            policy.policy.retry_min_remaining_ms,
        ) {
            let _ = abi::replace_header(
                abi::MAP_REQUEST_HEADERS,
                "x-envoy-max-retries",
                &n.to_string(),
            );
        }
        if let Some(&first) = plan.slots.first() {
            if plan.probe {
                // A probe is either the half-open one (the gate just moved the
                // circuit there) or the one after a cool-down (still closed).
                if let Some(t) = policy.clusters.get(first) {
                    let key = circuit::key(&t.cluster.name);
                    let half_open = circuit::view(&HostStore, &key, &t.cluster.circuit, now)
                        .is_ok_and(|v| v.mode == circuit::Mode::HalfOpen);
                    if half_open {
                        health::transition(
                            &self.config,
                            &self.metrics,
                            &t.cluster.name,
                            circuit::Mode::HalfOpen,
                        );
                    }
                }
            }
            if first > 0 {
                if let Some(t) = policy.clusters.get(first) {
                    self.count(
                        &[("route", &self.route), ("cluster", &t.cluster.name)],
                        FAILOVERS_TOTAL,
                    );
                }
            }
        }
        self.plan = Some(plan);
        Ok(())
    }

    /// Charges the call to its session and tenant budgets; `Err` is the refusal.
    fn charge_budgets(
        &mut self,
        policy: &Rc<RoutePolicy>,
        model: Option<&str>,
        tokens: (u64, u64),
    ) -> Result<(), Action> {
        if !budgets::Budgets::active(policy) {
            return Ok(());
        }
        let now = HostClock.now_ms();
        let r = self.budgets.admit(&self.config, policy, model, tokens, now);
        for e in std::mem::take(&mut self.budgets.errors) {
            log::warn!("llm-capacity: budget update failed ({e:?}); request let through");
            self.count(&[("route", &self.route)], LIMITER_ERRORS_TOTAL);
        }
        if std::mem::take(&mut self.budgets.evicted) {
            self.count(&[("route", &self.route)], BUDGET_EVICTIONS_TOTAL);
        }
        match r {
            Ok(()) => Ok(()),
            Err(refused) => {
                self.release_probe();
                self.count(
                    &[
                        ("route", &self.route),
                        ("scope", refused.scope),
                        ("limit", refused.cap.as_str()),
                    ],
                    BUDGET_EXCEEDED_TOTAL,
                );
                self.limit = Some((refused.scope, refused.cap.as_str()));
                Err(self.reply(Outcome::BudgetExceeded, refused.reply))
            }
        }
    }

    /// Tells the upstream instance which route this is and which model the
    /// body carries, so each attempt can carry its own cluster's model.
    fn publish_plan(&self, policy: &RoutePolicy, body_model: Option<&str>) {
        let Some(plan) = &self.plan else { return };
        if !self.config.upstream_filter {
            return;
        }
        let probe = plan
            .probe
            .then(|| plan.slots.first().and_then(|&i| policy.clusters.get(i)))
            .flatten()
            .map(|t| t.cluster.name.as_str());
        let text = failover::encode_plan(&policy.name, body_model, probe, self.context_id);
        if let Err(s) = abi::set_property(&[failover::PLAN_PROPERTY], text.as_bytes()) {
            log::debug!("llm-capacity: cannot publish the plan (host status {s})");
        }
    }

    /// A probe that never left (refused by a limit, client gone) gives its claim back.
    fn release_probe(&mut self) {
        let Some(plan) = self.plan.as_mut() else {
            return;
        };
        if !plan.probe {
            return;
        }
        plan.probe = false;
        let first = plan.slots.first().copied();
        if let Some(t) = first.and_then(|i| self.policy.as_ref()?.clusters.get(i).cloned()) {
            let key = circuit::key(&t.cluster.name);
            let _ =
                circuit::release_probe(&HostStore, &key, &t.cluster.circuit, HostClock.now_ms());
        }
    }

    /// Without an upstream instance, the final answer is the only health signal.
    fn observes_final(&self) -> bool {
        !self.config.upstream_filter && self.sent_ms != 0 && self.plan.is_some()
    }

    fn observe_final(&mut self, headers: &abi::Headers) {
        if !self.observes_final() {
            return;
        }
        let status = headers
            .get(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let (Some(plan), Some(policy)) = (self.plan.take(), self.policy.clone()) else {
            return;
        };
        let attempts = abi::property(&["upstream", "request_attempt_count"])
            .ok()
            .flatten()
            .and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()))
            .map_or(1, u64::from_le_bytes)
            .max(1);
        let slot = plan
            .slots
            .get(attempts as usize - 1)
            .or(plan.slots.last())
            .copied();
        let Some(t) = slot.and_then(|i| policy.clusters.get(i)) else {
            return;
        };
        let now = HostClock.now_ms();
        let signal = provider_headers::parse(headers.iter(), now);
        health::observe(
            &self.config,
            &self.metrics,
            &t.cluster.name,
            plan.probe && attempts == 1,
            Class::of_status(status),
            Some(now.saturating_sub(self.sent_ms)),
            &signal,
            now,
        );
        self.plan = Some(Plan {
            probe: false,
            ..plan
        });
    }

    /// Runs the limits. `Some` is what to return to Envoy when the request does
    /// not go on now (refused, or waiting for its turn).
    fn admit(&mut self, policy: &Rc<RoutePolicy>, cost: Cost) -> Option<Action> {
        let p = &policy.policy;
        if p.limits.is_none() && p.tenant.is_none() && p.global.is_none() {
            return None;
        }
        let now = HostClock.now_ms();
        // The wait budget: the route's, and the client's own timeout when it says
        // it; none when this worker's queue is full.
        let max_wait_ms = match p.queue {
            Some(q) if self.queue_has_room(q.max_size, now) => self
                .client_timeout_ms
                .map_or(q.max_wait_ms, |c| c.min(q.max_wait_ms)),
            _ => 0,
        };
        let ticket = Ticket {
            route: self.route.clone(),
            tenant: self.tenant.clone(),
            policy: Rc::clone(policy),
            cost,
            class: self.class,
            max_wait_ms,
        };
        let a = admission::attempt(&ticket, now);
        self.note_attempt(&a);
        if let Some(refusal) = a.refused.clone() {
            let reply =
                admission::refusal_reply(&ticket, &refusal, self.rng.borrow_mut().next_u64());
            return Some(self.refused(&refusal, reply));
        }
        let wait = a.wait_ms;
        self.admitted(a);
        // The fleet-wide tier, behind the local gate; before the request is
        // held for its local turn, so a global refusal does not wait first.
        if let Some(g) = &p.global {
            match self.global_gate(g, cost, wait) {
                global::Gate::Go => {}
                global::Gate::Replied(action) => return Some(action),
                global::Gate::Asked => return Some(Action::Pause),
            }
        }
        self.hold(wait)
    }

    /// Holds an admitted request until its place comes up (`wait_ms` from now).
    /// `None`: it goes now.
    fn hold(&mut self, wait_ms: u64) -> Option<Action> {
        if wait_ms == 0 {
            return None;
        }
        let now = HostClock.now_ms();
        // Charged already; hold the request until its place comes up.
        let fault =
            self.config.queue_hold == QueueHold::FaultFilter && hold_in_fault_filter(wait_ms);
        self.waiter = Some(
            self.queue
                .borrow_mut()
                .push(self.context_id, now, wait_ms, fault),
        );
        if fault {
            // The fault filter after this one holds it; outcome and queue
            // metrics are counted when it ends (`absorb_wait`).
            return Some(Action::Continue);
        }
        let poll = self
            .policy
            .as_ref()
            .and_then(|p| p.policy.queue)
            .map_or(20, |q| q.poll_ms);
        QUEUE_POLL_MS.with(|p| p.set(poll));
        if let Err(s) = abi::set_tick_period(poll) {
            log::warn!("llm-capacity: cannot start the queue tick (host status {s})");
        }
        Some(Action::Pause)
    }

    /// Whether this worker's queue has room under `max`; places of requests
    /// the fault filter has let go are freed first.
    fn queue_has_room(&self, max: u32, now: u64) -> bool {
        let mut q = self.queue.borrow_mut();
        if q.len() >= max as usize {
            q.prune_released(now);
        }
        q.len() < max as usize
    }

    fn note_attempt(&mut self, a: &Attempt) {
        if a.evicted {
            self.count(&[("route", &self.route)], TENANT_EVICTIONS_TOTAL);
        }
        for e in &a.errors {
            // Fail open: a shared-data hiccup must not take LLM traffic down.
            log::warn!("llm-capacity: limiter update failed ({e:?}); request let through");
            self.count(&[("route", &self.route)], LIMITER_ERRORS_TOTAL);
        }
        if let Some((scope, dim)) = a.shadow {
            self.shadow_limited = Some(dim.as_str());
            self.count(
                &[
                    ("route", &self.route),
                    ("scope", scope),
                    ("limit", dim.as_str()),
                ],
                SHADOW_LIMITED_TOTAL,
            );
        }
    }

    fn admitted(&mut self, a: Attempt) {
        let mode = self
            .policy
            .as_ref()
            .map_or(self.config.defaults.rate_limit_headers, |p| {
                p.policy.rate_limit_headers
            });
        if let Some(v) = &a.view {
            self.rate_headers = ratelimit::headers(v, mode);
        }
        self.charges = a.charges;
    }

    fn refused(&mut self, r: &Refusal, reply: LocalReply) -> Action {
        self.release_probe();
        self.budgets.release(&HostClock, true);
        self.note_refusal(r);
        self.reply(Outcome::RateLimited, reply)
    }

    fn note_refusal(&mut self, r: &Refusal) {
        self.limit = Some((r.scope, r.dim.as_str()));
        self.count(
            &[
                ("route", &self.route),
                ("scope", r.scope),
                ("limit", r.dim.as_str()),
            ],
            RATE_LIMITED_TOTAL,
        );
    }

    /// Picks up what happened while the request waited for its turn.
    fn absorb_wait(&mut self) {
        let Some(w) = self.waiter.take() else { return };
        let (resumed, since, go_at, in_fault_filter) = {
            let wb = w.borrow();
            (wb.resumed, wb.since_ms, wb.go_at_ms, wb.in_fault_filter)
        };
        let now = HostClock.now_ms();
        let went = if in_fault_filter {
            self.queue.borrow_mut().remove(&w);
            let went = upstream_attempted().unwrap_or(now >= go_at);
            if went && now.saturating_add(HOLD_SLACK_MS) < go_at {
                warn_not_held();
            }
            went
        } else {
            resumed
        };
        if went {
            // The fault filter holds exactly the delay it was given.
            let waited = if in_fault_filter {
                self.sent_ms = go_at.max(1);
                go_at.saturating_sub(since)
            } else {
                now.saturating_sub(since)
            };
            self.queue_wait_ms = Some(waited);
            if self.config.telemetry.metrics {
                let mut m = self.metrics.borrow_mut();
                m.count(
                    &[("route", &self.route), ("result", "admitted")],
                    QUEUED_TOTAL,
                    1,
                );
                m.record(&[("route", &self.route)], QUEUE_WAIT_MS, waited);
            }
            self.count_outcome();
        } else {
            // The client went away while waiting: the place is given back.
            // Nothing was sent: nothing to settle or count as reconciled.
            self.tracker = None;
            self.queue.borrow_mut().remove(&w);
            self.give_everything_back();
            self.count(
                &[("route", &self.route), ("result", "abandoned")],
                QUEUED_TOTAL,
            );
        }
    }

    fn count(&self, labels: &[(&str, &str)], name: &str) {
        if self.config.telemetry.metrics {
            self.metrics.borrow_mut().count(labels, name, 1);
        }
    }

    /// The request never left: every charge, its global share, a probe claim
    /// and its budget reservations come back.
    fn give_everything_back(&mut self) {
        self.release(true);
        self.global_give_back(true);
        self.release_probe();
        self.budgets.release(&HostClock, true);
    }

    /// Settles every charge: with the real usage, or as unsent.
    fn release(&mut self, unsent: bool) {
        if self.charges.is_empty() {
            return; // nothing charged, or settled already: no clock read
        }
        let actual = match &self.settled {
            Some(s) => Cost {
                tokens: s.total(),
                input_tokens: s.input,
                output_tokens: s.output,
            },
            None => Cost::default(),
        };
        admission::release(&mut self.charges, actual, unsent, HostClock.now_ms());
    }

    fn settle(&mut self) {
        if self.settled.is_some() {
            return;
        }
        let (Some(pre), Some(tracker)) = (&self.pre, &mut self.tracker) else {
            return;
        };
        let s = tracker.settle(pre, self.response_ended);
        self.response_model = tracker.response_model();
        if self.config.telemetry.metrics {
            let mut m = self.metrics.borrow_mut();
            let r = self.route.as_str();
            m.count(
                &[("route", r), ("source", s.source.as_str())],
                RECONCILIATIONS_TOTAL,
                1,
            );
            // The model label bounds itself: the per-VM metric table folds
            // names past its cap (a client cannot mint stats without limit).
            let model = pre.model.as_deref().unwrap_or("");
            for (kind, n) in [
                ("input", s.input),
                ("output", s.output),
                ("cached_input", s.cached_input),
            ] {
                m.count(
                    &[("route", r), ("model", model), ("kind", kind)],
                    TOKENS_TOTAL,
                    n,
                );
            }
            if s.source == Source::Provider && s.input > 0 && !pre.size_based {
                let err = pre.input_estimate.abs_diff(s.input).saturating_mul(100) / s.input;
                m.record(&[("route", r)], ESTIMATE_ERROR_PERCENT, err);
            }
        }
        let learn = self.policy.as_ref().is_some_and(|p| p.policy.calibrate);
        if let (true, Source::Provider, Some(model), false) =
            (learn, s.source, &pre.model, pre.size_based)
        {
            let stream = calibrate::stream(model, pre.text_class);
            if calibration_sample_due(&stream, HostClock.now_ms()) {
                if let Err(e) = calibrate::observe(
                    &HostStore,
                    &HostClock,
                    model,
                    pre.text_class,
                    pre.input_raw,
                    s.input,
                ) {
                    log::debug!("llm-capacity: calibration sample dropped ({e:?})");
                }
            }
        }
        let spend = self
            .budgets
            .settle(&HostClock, (s.input, s.output, s.cached_input), false);
        if self.budgets.priced() && self.config.telemetry.metrics {
            self.metrics.borrow_mut().count(
                &[("route", &self.route)],
                SPEND_MICRODOLLARS_TOTAL,
                spend / 1_000_000,
            );
        }
        self.settled = Some(s);
        self.release(false);
        self.global_give_back(false);
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        enter();
        self.on_global_answer(token_id, status_code, response_size);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("ds_on_http_request_headers");
        fault::on_request_headers();
        #[cfg(feature = "hostcall-count")]
        if abi::count::requested_timing() {
            for (kind, ns) in abi::count::time_calls(20_000) {
                log::warn!("llm-capacity: host call {kind}: {ns} ns");
            }
        }
        self.route = abi::property_text(&["xds", "route_name"]).unwrap_or_default();
        // A policy route reads several headers: all of them in one host call.
        let headers = self
            .config
            .route(&self.route)
            .map(|_| abi::Headers::read(abi::MAP_REQUEST_HEADERS));
        let header = |name: &str| match &headers {
            Some(h) => h.get(name).map(str::to_string),
            None => abi::header_text(abi::MAP_REQUEST_HEADERS, name),
        };
        // Envoy's codec has already rejected malformed content-length values.
        let content_length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let head = RequestHead {
            route: &self.route,
            content_length,
        };
        let d = decision::on_request_headers(&self.config, &head);
        self.policy = d.policy;
        self.outcome = d.outcome;
        // The fault filter's headers are ours to set: a client's could delay,
        // abort or (with a percentage) skip a hold.
        match &headers {
            Some(h) => {
                let forged: Vec<String> = h
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| {
                        k.starts_with(admission::FAULT_HEADER_PREFIX)
                            || *k == admission::HOLD_MARKER_HEADER
                    })
                    .map(str::to_string)
                    .collect();
                for name in forged {
                    let _ = abi::remove_header(abi::MAP_REQUEST_HEADERS, &name);
                }
            }
            // Other routes are never held: without the marker the fault filter
            // ignores their x-envoy-fault-* headers.
            None if self.config.queue_hold == QueueHold::FaultFilter => {
                let _ = abi::remove_header(abi::MAP_REQUEST_HEADERS, admission::HOLD_MARKER_HEADER);
            }
            None => {}
        }
        let mut missing_session: Option<String> = None;
        if let Some(policy) = self.policy.clone() {
            self.started_ms = HostClock.now_ms();
            let sent_attempt_count = headers
                .as_ref()
                .is_none_or(|h| h.get("x-envoy-attempt-count").is_some());
            if !policy.clusters.is_empty() && sent_attempt_count {
                // The route's cluster matcher keys on it: only Envoy may set it.
                let _ = abi::remove_header(abi::MAP_REQUEST_HEADERS, "x-envoy-attempt-count");
            }
            let p = &policy.policy;
            let get = |name: &str| header(name).map(|v| truncate(&v, MAX_TENANT_LEN).to_string());
            if let Some(tc) = &p.tenant {
                self.tenant = match &tc.source {
                    TenantSource::Header(h) => get(h),
                    TenantSource::PeerCertificate => peer_identity(),
                };
            }
            if let Some(pr) = &p.priority {
                self.class = pr.class_of(get(&pr.header).as_deref());
            }
            self.client_timeout_ms = client_timeout_ms(&get);
            if let Some(sb) = &p.session_budget {
                self.budgets.session = get(&sb.header).filter(|v| !v.is_empty());
                if sb.required && self.budgets.session.is_none() {
                    missing_session = Some(sb.header.clone());
                }
            }
            if let Some(tb) = &p.tenant_budget {
                self.budgets.tenant = Some(
                    match &tb.source {
                        TenantSource::Header(h) => get(h),
                        TenantSource::PeerCertificate => peer_identity(),
                    }
                    .unwrap_or_else(|| "-".to_string()),
                );
            }
        }
        if let (Verdict::Continue, Some(h)) = (&d.verdict, missing_session) {
            let msg = format!("This route requires the {h} header naming the agent session.");
            return self.reply(
                Outcome::NoSession,
                LocalReply::openai_error(400, "invalid_request_error", "session_required", &msg),
            );
        }
        match d.verdict {
            Verdict::Reply(r) => self.reply(d.outcome, r),
            Verdict::Continue if self.policy.is_some() && !end_of_stream => {
                // Hold the headers while the body arrives: the estimate, a rejection or
                // a rewrite (and its content-length) must come before anything leaves.
                self.encoded_body =
                    header("content-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity"));
                self.path = header(":path").unwrap_or_default();
                self.reading_body = true;
                if !self.config.hold_headers {
                    // The host cannot hold headers and still deliver the body
                    // (no allow_on_headers_stop_iteration): let them go, and hold
                    // the body instead, which every host supports.
                    return Action::Continue;
                }
                Action::Pause
            }
            Verdict::Continue => {
                if let Some(policy) = self.policy.clone() {
                    if let Err(action) = self.route_upstream(&policy, 0) {
                        return action;
                    }
                    if let Err(action) = self.charge_budgets(&policy, None, (0, 0)) {
                        return action;
                    }
                    self.publish_plan(&policy, None);
                    // No body: limits still count the request (no tokens).
                    if let Some(action) = self.admit(&policy, Cost::default()) {
                        return action;
                    }
                    self.sent_ms = HostClock.now_ms();
                }
                self.count_outcome();
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("ds_on_http_request_body");
        if !self.reading_body {
            return Action::Continue;
        }
        let cap = self
            .policy
            .as_ref()
            .map_or(self.config.defaults.max_request_bytes, |p| {
                p.policy.max_request_bytes
            });
        if body_size as u64 > cap {
            // Chunked bodies have no content-length to check up front.
            self.reading_body = false;
            let msg = format!("Request body exceeds the limit of {cap} bytes for this route.");
            return self.reply(
                Outcome::TooLarge,
                LocalReply::openai_error(413, "invalid_request_error", "request_too_large", &msg),
            );
        }
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        self.reading_body = false;
        self.on_body_complete(body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        self.response_seen = true;
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("ds_on_http_response_headers");
        self.absorb_wait();
        // Status, content type and the provider's headers: one host call.
        let headers = (self.tracker.is_some() || self.observes_final())
            .then(|| abi::Headers::read(abi::MAP_RESPONSE_HEADERS));
        if !self.replied && self.policy.is_some() {
            // Meant for the router's retry back-off (set by the upstream
            // instance, or sent by a provider), never for the client.
            let present = headers
                .as_ref()
                .is_none_or(|h| h.get(RETRY_AFTER_HEADER).is_some());
            if present {
                let _ = abi::remove_header(abi::MAP_RESPONSE_HEADERS, RETRY_AFTER_HEADER);
            }
            // Before our rate-limit headers replace the provider's.
            if let Some(h) = &headers {
                self.observe_final(h);
            }
            // Our view replaces the provider's: clients are limited by us first.
            for (name, value) in &self.rate_headers {
                let _ = abi::replace_header(abi::MAP_RESPONSE_HEADERS, name, value);
            }
            for (name, value) in self.budgets.headers() {
                let _ = abi::replace_header(abi::MAP_RESPONSE_HEADERS, name, &value);
            }
        }
        if let (Some(t), Some(h)) = (&mut self.tracker, &headers) {
            let status = h
                .get(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            t.on_headers(status, h.get("content-type"), h.get("content-encoding"));
            if end_of_stream {
                self.response_ended = true;
                self.settle();
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("ds_on_http_response_body");
        if let Some(t) = &mut self.tracker {
            if t.wants_body() && body_size > 0 {
                match abi::buffer(abi::BUFFER_RESPONSE_BODY, 0, body_size) {
                    Ok(Some(chunk)) => t.on_chunk(&chunk),
                    Ok(None) => {}
                    Err(s) => {
                        log::debug!("llm-capacity: cannot read response chunk (host status {s})")
                    }
                }
            }
            if end_of_stream {
                self.response_ended = true;
                self.settle();
            }
        }
        // Never hold a response back: every chunk goes to the client at once.
        Action::Continue
    }

    fn on_log(&mut self) {
        enter();
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start("ds_on_log");
        self.absorb_wait();
        if self.global_pending.take().is_some() {
            // The client left while the rate limit service was asked: nothing
            // was sent. (Whatever the service charges for the call is lost.)
            self.tracker = None;
            self.give_everything_back();
        }
        // Streams that ended early (client gone, upstream reset) settle here.
        self.settle();
        // Bodiless requests have no settlement; their charges release here.
        self.release(false);
        self.global_give_back(false);
        self.budgets.release(&HostClock, false);
        // Attempts that ended without an answer count against their cluster only
        // if the client was still there to be answered (it saw response headers,
        // the router's own 503 included); a client that left cancelled them.
        if self.config.upstream_filter && self.plan.is_some() {
            upstream::settle_unanswered(
                &self.config,
                &self.metrics,
                self.context_id,
                self.response_seen,
            );
        }
        // Once, at the end: Envoy runs the filters' on_log before the access
        // loggers. Nothing for requests that never reached a decision (the
        // client left mid-body, or Envoy refused them before the filter).
        if self.decided {
            self.publish();
        }
        if self.config.telemetry.metrics {
            report_memory(&self.metrics);
        }
        #[cfg(feature = "hostcall-count")]
        {
            drop(_timer);
            abi::count::export();
        }
    }
}

/// Hands the request to the fault filter for `wait_ms`. `false` if the headers
/// cannot be set (then it is paused here instead: sent now, it would overrun).
fn hold_in_fault_filter(wait_ms: u64) -> bool {
    let set = abi::replace_header(
        abi::MAP_REQUEST_HEADERS,
        admission::FAULT_DELAY_HEADER,
        &wait_ms.to_string(),
    )
    .and_then(|()| {
        abi::replace_header(abi::MAP_REQUEST_HEADERS, admission::HOLD_MARKER_HEADER, "1")
    });
    if let Err(s) = set {
        log::warn!("llm-capacity: cannot hand a queued request to the fault filter (host status {s}); holding it here");
        let _ = abi::remove_header(abi::MAP_REQUEST_HEADERS, admission::FAULT_DELAY_HEADER);
        let _ = abi::remove_header(abi::MAP_REQUEST_HEADERS, admission::HOLD_MARKER_HEADER);
        return false;
    }
    true
}

/// Whether the router started an upstream attempt (`None`: the host cannot say).
fn upstream_attempted() -> Option<bool> {
    match abi::property(&["upstream", "request_attempt_count"]) {
        Ok(Some(b)) => Some(
            b.get(..8)
                .and_then(|s| s.try_into().ok())
                .map_or(!b.is_empty(), |a| u64::from_le_bytes(a) > 0),
        ),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

/// Clock readings are per callback: an attempt this much before its time still counts as held.
const HOLD_SLACK_MS: u64 = 5;

thread_local! {
    static WARNED_NOT_HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A request that left before its time was not held: the fault filter is
/// missing (or misplaced) and the queue overruns the limit. Said once per VM.
fn warn_not_held() {
    if !WARNED_NOT_HELD.with(|w| w.replace(true)) {
        log::error!(
            "llm-capacity: queue_hold is fault_filter but a queued request reached the upstream before its time: is envoy.filters.http.fault (header_delay, matching x-llm-capacity-hold) after this filter?"
        );
    }
}

/// The downstream mTLS peer's identity: the certificate's URI SAN (a SPIFFE ID
/// in Istio), else its subject; `None` without a client certificate.
fn peer_identity() -> Option<String> {
    ["uri_san_peer_certificate", "subject_peer_certificate"]
        .iter()
        .filter_map(|attr| abi::property_text(&["connection", attr]))
        .find(|v| !v.is_empty())
        .map(|v| truncate(&v, MAX_TENANT_LEN).to_string())
}

/// The client's own deadline, when it sends one: the official OpenAI and
/// Anthropic SDKs send `x-stainless-timeout` (seconds); Envoy-aware clients
/// `x-envoy-expected-rq-timeout-ms`.
fn client_timeout_ms(get: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
    let stainless = get("x-stainless-timeout")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| (s * 1000.0) as u64);
    let envoy = get("x-envoy-expected-rq-timeout-ms").and_then(|v| v.trim().parse::<u64>().ok());
    match (stainless, envoy) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Envoy shared data through our host layer.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::shared_get(key).map_err(StoreError::Host)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        abi::shared_set(key, value, cas).map_err(|s| {
            if s == abi::CAS_MISMATCH {
                StoreError::CasMismatch
            } else {
                StoreError::Host(s)
            }
        })
    }
}

/// A VM reports its linear memory with its first request and every this many
/// after (counted, so the report needs no clock read).
const MEMORY_REPORT_EVERY: u32 = 256;

thread_local! {
    static SINCE_MEMORY_REPORT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn report_memory(metrics: &RefCell<Metrics>) {
    let due = SINCE_MEMORY_REPORT.with(|c| {
        let n = c.get();
        c.set(if n + 1 >= MEMORY_REPORT_EVERY {
            0
        } else {
            n + 1
        });
        n == 0
    });
    if due {
        #[cfg(target_arch = "wasm32")]
        let bytes = core::arch::wasm32::memory_size(0) as u64 * 65_536;
        #[cfg(not(target_arch = "wasm32"))]
        let bytes = 0;
        metrics
            .borrow_mut()
            .set_gauge(&[], WASM_MEMORY_BYTES, bytes);
    }
}

/// How long a VM reuses a calibration read, and how often it feeds a sample per
/// model: a shared-data read and a CAS write saved on most requests under load,
/// while the ratio (a slow-moving average) still learns from every worker.
const CALIBRATION_CACHE_MS: u64 = 100;
/// Entries in each per-VM calibration map before it is cleared (bounded memory).
const CALIBRATION_CACHE_ENTRIES: usize = 256;

/// A shared-data read (value and CAS token, `None` if never written) and when it was made.
type CachedRead = (Option<(Vec<u8>, u32)>, u64);

thread_local! {
    static CAL_READS: RefCell<std::collections::HashMap<String, CachedRead>> =
        RefCell::new(std::collections::HashMap::new());
    static CAL_SAMPLED: RefCell<std::collections::HashMap<String, u64>> =
        RefCell::new(std::collections::HashMap::new());
}

/// Shared data for the pre-flight's calibration lookups, through a short
/// per-VM cache. Only reads: the pre-flight never writes.
struct CalibrationReads;

impl SharedStore for CalibrationReads {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let now = HostClock.now_ms();
        let hit = CAL_READS.with(|m| {
            m.borrow()
                .get(key)
                .filter(|(_, at)| now.saturating_sub(*at) < CALIBRATION_CACHE_MS)
                .map(|(v, _)| v.clone())
        });
        if let Some(v) = hit {
            return Ok(v);
        }
        let v = HostStore.get(key)?;
        CAL_READS.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= CALIBRATION_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(key.to_string(), (v.clone(), now));
        });
        Ok(v)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        HostStore.set(key, value, cas)
    }
}

/// Whether this VM feeds a calibration sample for `stream` (a model and kind of
/// text) now (at most one per [`CALIBRATION_CACHE_MS`]).
fn calibration_sample_due(stream: &str, now: u64) -> bool {
    CAL_SAMPLED.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(at) = m.get_mut(stream) {
            if now.saturating_sub(*at) < CALIBRATION_CACHE_MS {
                return false;
            }
            *at = now;
            return true;
        }
        if m.len() >= CALIBRATION_CACHE_ENTRIES {
            m.clear();
        }
        // Bounded: a model name is cut to 128 bytes in `calibrate::stream`.
        m.insert(stream.to_string(), now);
        true
    })
}

/// Host wall clock, read at most once per host callback (a host call each):
/// every callback starts with [`enter`], which forgets the last reading. 0 if
/// the host refuses, which callers treat as time going backwards (saturating
/// arithmetic), never as a panic.
struct HostClock;

thread_local! {
    static NOW_MS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Called first in every host callback: later clock reads in it share one reading.
fn enter() {
    NOW_MS.with(|c| c.set(None));
}

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        NOW_MS.with(|c| {
            c.get().unwrap_or_else(|| {
                let now = abi::now_ns().map_or(0, |ns| ns / 1_000_000);
                c.set(Some(now));
                now
            })
        })
    }
}
