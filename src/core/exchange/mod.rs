//! One request's life, from its headers to its log line: [`Exchange`], driven
//! by the adapter's downstream callbacks, each a method taking the [`Host`].
//!
//! The life, phase by phase ([`Phase`]):
//! 1. headers: the route's policy, the body cap, forged headers stripped, tenant,
//!    priority, session and deadline read; a bodiless request is dispatched now;
//! 2. body: buffered up to the cap, then estimated ([`preflight_encoded`]);
//! 3. dispatch, written once: plan over the cluster chain, charge the budgets,
//!    carry the first cluster's model, admit against the local limits, then the
//!    global tier ([`global`]); the request goes, waits for its turn
//!    ([`Phase::Queued`]), waits for the rate limit service
//!    ([`Phase::AskingGlobal`]) or is answered here ([`Phase::Replied`]);
//! 4. response: our rate-limit and budget headers, the final answer as health
//!    data (without an upstream instance), usage read from JSON or SSE;
//! 5. log: settle the tokens, give back what was held ([`Exchange::give_back`],
//!    the one give-back path), write the access-log state.
//!
//! Every shared-data failure fails open (logged and counted); nothing here panics.

mod admission;
pub mod admit;
pub mod attempt;
pub mod budgets;
pub mod cached;
pub mod caps;
pub mod decision;
mod fit;
pub mod global;
pub mod health;
mod plan;
pub mod timing;
pub mod worker;
pub mod xlate;

#[cfg(test)]
mod tests;

use crate::core::config::{Config, QueueHold, RoutePolicy, TenantSource};
use crate::core::host::{Buffer, Flow, HeaderList, Host, Map};
use crate::core::limits::limiter::Cost;
use crate::core::limits::ratelimit;
use crate::core::reply::LocalReply;
use crate::core::telemetry::{
    operation_name, provider_name, AccessLogState, RequestOutcome, BUDGET_EVICTIONS_TOTAL,
    BUDGET_EXCEEDED_TOTAL, ESTIMATE_ERROR_PERCENT, FAILOVERS_TOTAL, HEDGES_TOTAL, IN_FLIGHT,
    LIMITER_ERRORS_TOTAL, QUEUED_TOTAL, QUEUE_WAIT_MS, RATE_LIMITED_TOTAL, RECONCILIATIONS_TOTAL,
    REQUESTS_TOTAL, SHADOW_LIMITED_TOTAL, SPEND_MICRODOLLARS_TOTAL, TENANT_EVICTIONS_TOTAL,
    TOKENS_TOTAL, WASM_MEMORY_BYTES,
};
use crate::core::tokens::accounting::{
    preflight_encoded, Preflight, ResponseTracker, Settlement, Source,
};
use crate::core::tokens::calibrate;
use crate::core::tokens::request::Api;
use crate::core::truncate;
use crate::core::upstream::circuit;
use crate::core::upstream::failover::{self, Class, Plan, RETRY_AFTER_HEADER};
use crate::core::upstream::provider_headers;
use crate::core::upstream::routing;
use admit::{AdmitResult, LimitCharge, Refusal, Ticket, Waiter};
use decision::{Next, RequestHead};
pub use plan::attempt_count;
use plan::{carry_model_in_path, set_request_body};
use std::cell::RefCell;
use std::rc::Rc;
use worker::Worker;

/// Filter-state key the access log reads as `%FILTER_STATE(wasm.llm_capacity:PLAIN)%`.
pub const FILTER_STATE_KEY: &str = "llm_capacity";
/// The router's count of upstream attempts (8 bytes, little endian).
pub const ATTEMPT_COUNT_PROPERTY: [&str; 2] = ["upstream", "request_attempt_count"];
/// Tenant ids longer than this are cut (they are stored in shared data).
pub const MAX_TENANT_LEN: usize = 128;
/// Clock readings are per callback: an attempt this much before its time still counts as held.
const HOLD_SLACK_MS: u64 = 5;

/// Where a request is in its life. Each phase holds what only it needs.
#[derive(Debug, Default)]
pub enum Phase {
    /// Headers not decided yet, or between two steps of one callback.
    #[default]
    Open,
    /// Not ours to govern (no policy for the route): passed, and counted.
    Passed,
    /// The body arrives (headers held, or passed when the host cannot hold them).
    ReadingBody,
    /// Paused until the rate limit service answers.
    AskingGlobal(global::Pending),
    /// Admitted; waiting for its place (paused here, or in the fault filter).
    Queued(Rc<RefCell<Waiter>>),
    /// Left for the upstream at `at_ms` (latency, downstream-only health).
    Sent { at_ms: u64 },
    /// Answered by the filter itself.
    Replied,
    /// Never left (client gone while queued or asking): everything given back.
    Abandoned,
}

impl Phase {
    /// The outcome was decided and counted: the access-log state is written.
    fn decided(&self) -> bool {
        matches!(self, Phase::Passed | Phase::Sent { .. } | Phase::Replied)
    }
}

/// What the request's headers said.
#[derive(Debug, Default)]
struct Head {
    route: String,
    policy: Option<Rc<RoutePolicy>>,
    tenant: Option<String>,
    /// Priority class, 0 = highest.
    class: usize,
    client_timeout_ms: Option<u64>,
    /// The request body has a content-encoding the filter does not decode.
    encoded_body: bool,
    path: String,
    /// When the request arrived, for the deadline left for retries.
    started_ms: u64,
}

/// How far the response has come.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Progress {
    #[default]
    None,
    /// Response headers came (from upstream or a local reply): the client was answered.
    Headers,
    /// The response reached its end.
    Ended,
}

/// The answer's side: usage tracking and what it settled at.
#[derive(Debug, Default)]
struct Response {
    tracker: Option<ResponseTracker>,
    progress: Progress,
    /// The model the answer names (access log `gen_ai.response.model`).
    model: Option<String>,
    /// The cluster that answered, and the model it was asked (served-by headers).
    served: Option<(String, Option<String>)>,
    settled: Option<Settlement>,
    /// When things happened, and what they came to (at the log).
    timing: timing::Timing,
    measured: Option<timing::Measured>,
    goodput: Option<timing::Goodput>,
}

/// What the request holds against shared state until it ends.
#[derive(Default)]
struct Held {
    /// Local limits charged at admission.
    charges: Vec<LimitCharge>,
    /// The request's share of the fleet-wide quota.
    global: Option<global::GlobalCharge>,
    budgets: budgets::Budgets,
}

/// What is reported about the request (metrics labels, access log).
#[derive(Debug)]
struct Report {
    outcome: RequestOutcome,
    /// Rate-limit headers for the answer, from the admission snapshot.
    rate_headers: Vec<(&'static str, String)>,
    limit: Option<(&'static str, &'static str)>,
    shadow_limited: Option<&'static str>,
    queue_wait_ms: Option<u64>,
    /// How the global tier decided.
    global: Option<&'static str>,
    /// The largest context window the request was refused against.
    context_window: Option<u64>,
    /// The first attempt went elsewhere than its route would have sent it
    /// (see [`Exchange::route_upstream`]).
    failover: bool,
    /// The route's retry budget was spent: the router was told no retries.
    retries_capped: bool,
    /// The router was told to hedge this request (its share taken).
    hedge_armed: bool,
    /// A hedge was sent, and whether its answer was the client's.
    hedge: Option<bool>,
}

/// One request's life. See the module documentation for its phases.
pub struct Exchange {
    config: Rc<Config>,
    worker: Rc<Worker>,
    context_id: u32,
    phase: Phase,
    head: Head,
    /// Where the request goes (`None`: the route has no cluster chain).
    plan: Option<Plan>,
    pre: Option<Preflight>,
    held: Held,
    response: Response,
    report: Report,
    xlate: xlate::Xlate,
    /// The response cache and idempotency key (`cached.rs`).
    cache: cached::CacheState,
}

impl Exchange {
    pub fn new(config: Rc<Config>, worker: Rc<Worker>, context_id: u32) -> Self {
        Exchange {
            config,
            worker,
            context_id,
            phase: Phase::Open,
            head: Head::default(),
            plan: None,
            pre: None,
            held: Held::default(),
            response: Response::default(),
            report: Report {
                outcome: RequestOutcome::Unmatched,
                rate_headers: Vec::new(),
                limit: None,
                shadow_limited: None,
                queue_wait_ms: None,
                global: None,
                context_window: None,
                failover: false,
                retries_capped: false,
                hedge_armed: false,
                hedge: None,
            },
            xlate: xlate::Xlate::default(),
            cache: cached::CacheState::default(),
        }
    }

    /// The stream's context id.
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// Where the request is now.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The outcome as counted (or as it stands, if not decided yet).
    pub fn outcome(&self) -> RequestOutcome {
        self.report.outcome
    }

    // ------------------------------------------------------------ callbacks

    /// Request headers: decide, read the request's identity, hold for the body.
    pub fn on_request_headers(&mut self, h: &mut dyn Host, end_of_stream: bool) -> Flow {
        self.head.route = h.property_text(&["xds", "route_name"]).unwrap_or_default();
        // A policy route reads several headers: all of them in one host call.
        let headers = self
            .config
            .route(&self.head.route)
            .map(|_| h.header_list(Map::RequestHeaders));
        let header = |h: &dyn Host, name: &str| match &headers {
            Some(l) => l.get(name).map(str::to_string),
            None => h.header(Map::RequestHeaders, name),
        };
        // Envoy's codec has already rejected malformed content-length values.
        let content_length = header(h, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let d = decision::on_request_headers(
            &self.config,
            &RequestHead {
                route: &self.head.route,
                content_length,
            },
        );
        self.head.policy = d.policy;
        self.report.outcome = d.outcome;
        self.strip_forged(h, headers.as_ref());
        let mut missing_session: Option<String> = None;
        if let Some(policy) = self.head.policy.clone() {
            self.head.started_ms = h.now_ms();
            let get = |h: &dyn Host, name: &str| {
                header(h, name).map(|v| truncate(&v, MAX_TENANT_LEN).to_string())
            };
            let p = &policy.policy;
            if let Some(tc) = &p.tenant {
                self.head.tenant = identity(h, &tc.source, &get);
            }
            if let Some(pr) = &p.priority {
                self.head.class = pr.class_of(get(h, &pr.header).as_deref());
            }
            self.head.client_timeout_ms = client_timeout_ms(&|name| get(h, name));
            if let Some(sb) = &p.session_budget {
                self.held.budgets.session = get(h, &sb.header).filter(|v| !v.is_empty());
                if sb.required && self.held.budgets.session.is_none() {
                    missing_session = Some(sb.header.clone());
                }
            }
            if let Some(tb) = &p.tenant_budget {
                self.held.budgets.tenant =
                    Some(identity(h, &tb.source, &get).unwrap_or_else(|| "-".to_string()));
            }
            if p.cache.is_some() {
                let hh: &dyn Host = &*h;
                self.cache_read_head(&|n| header(hh, n));
            }
        }
        if let (Next::Continue, Some(name)) = (&d.verdict, missing_session) {
            let msg = format!("This route requires the {name} header naming the agent session.");
            return self.reply(
                h,
                RequestOutcome::NoSession,
                LocalReply::openai_error(400, "invalid_request_error", "session_required", &msg),
            );
        }
        match (d.verdict, self.head.policy.clone()) {
            (Next::Reply(r), _) => self.reply(h, d.outcome, r),
            (Next::Continue, None) => {
                self.phase = Phase::Passed;
                self.count_outcome(h);
                Flow::Continue
            }
            (Next::Continue, Some(_)) if !end_of_stream => {
                // Hold the headers while the body arrives: the estimate, a rejection or
                // a rewrite (and its content-length) must come before anything leaves.
                self.head.encoded_body = header(h, "content-encoding")
                    .is_some_and(|v| !v.eq_ignore_ascii_case("identity"));
                self.head.path = header(h, ":path").unwrap_or_default();
                self.phase = Phase::ReadingBody;
                if !self.config.hold_headers {
                    // The host cannot hold headers and still deliver the body
                    // (no allow_on_headers_stop_iteration): let them go, and hold
                    // the body instead, which every host supports.
                    return Flow::Continue;
                }
                Flow::Pause
            }
            // No body: limits still count the request (no tokens).
            (Next::Continue, Some(policy)) => self.dispatch(h, &policy, None),
        }
    }

    /// The fault filter's headers are ours to set: a client's could delay, abort
    /// or (with a percentage) skip a hold. The attempt count steers the route's
    /// cluster matcher: only Envoy may set it. So do the router's hedge headers.
    fn strip_forged(&self, h: &mut dyn Host, headers: Option<&HeaderList>) {
        match headers {
            Some(l) => {
                let forged: Vec<String> = l
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| {
                        k.starts_with(admit::FAULT_HEADER_PREFIX)
                            || *k == admit::HOLD_MARKER_HEADER
                            || failover::SERVED_HEADERS.contains(k)
                    })
                    .map(str::to_string)
                    .collect();
                for name in forged {
                    let _ = h.remove_header(Map::RequestHeaders, &name);
                }
            }
            // Other routes are never held: without the marker the fault filter
            // ignores their x-envoy-fault-* headers.
            None if self.config.queue_hold == QueueHold::FaultFilter => {
                let _ = h.remove_header(Map::RequestHeaders, admit::HOLD_MARKER_HEADER);
            }
            None => {}
        }
        if let Some(policy) = &self.head.policy {
            let sent = |name: &str| headers.is_none_or(|l| l.get(name).is_some());
            if !policy.clusters.is_empty() && sent("x-envoy-attempt-count") {
                let _ = h.remove_header(Map::RequestHeaders, "x-envoy-attempt-count");
            }
            // Only the filter hedges a chain's requests, within the route's
            // share: a client's hedge (or per-try timeout, on a hedging route)
            // would send extra attempts past it.
            if policy.clusters.len() >= 2 && sent(plan::HEDGE_HEADER) {
                let _ = h.remove_header(Map::RequestHeaders, plan::HEDGE_HEADER);
            }
            if policy.routing.hedge.is_some() && sent(plan::PER_TRY_TIMEOUT_HEADER) {
                let _ = h.remove_header(Map::RequestHeaders, plan::PER_TRY_TIMEOUT_HEADER);
            }
        }
    }

    /// A request body chunk (`body_size`: everything buffered so far).
    pub fn on_request_body(&mut self, h: &mut dyn Host, body_size: usize, eos: bool) -> Flow {
        if !matches!(self.phase, Phase::ReadingBody) {
            return Flow::Continue;
        }
        let cap = self
            .head
            .policy
            .as_ref()
            .map_or(self.config.defaults.max_request_bytes, |p| {
                p.policy.max_request_bytes
            });
        if body_size as u64 > cap {
            // Chunked bodies have no content-length to check up front.
            let r = decision::too_large(cap, None);
            return self.reply(h, RequestOutcome::TooLarge, r);
        }
        if !eos {
            return Flow::Pause; // buffer until the whole body is here
        }
        self.phase = Phase::Open;
        let Some(policy) = self.head.policy.clone() else {
            return Flow::Continue;
        };
        let body = match h.body(Buffer::RequestBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                log::warn!("llm-capacity: cannot read request body (host status {s})");
                Vec::new()
            }
        };
        let pre = {
            let store = self.worker.calibration_reads(&*h);
            preflight_encoded(
                &policy.policy,
                &self.head.path,
                &body,
                Some(&store),
                self.head.encoded_body,
            )
        };
        match pre {
            Ok(p) => {
                let turns = p.messages;
                self.pre = Some(p);
                if let Some(max) = policy.policy.max_messages.filter(|&m| turns > m) {
                    let r = caps::too_many_turns(turns, max);
                    return self.reply(h, RequestOutcome::TooManyTurns, r);
                }
                self.check_translation(h, &policy, &body);
                if let Some(flow) = self.cache_step(h, &body, body_size) {
                    return flow;
                }
                self.dispatch(h, &policy, Some((body, body_size)))
            }
            Err(reply) => self.reply(h, RequestOutcome::InvalidBody, reply),
        }
    }

    /// Plan, budgets, the first cluster's model, limits: written once for
    /// requests with a body (`body`: its bytes and buffered size) and without.
    fn dispatch(
        &mut self,
        h: &mut dyn Host,
        policy: &Rc<RoutePolicy>,
        body: Option<(Vec<u8>, usize)>,
    ) -> Flow {
        let (tokens, model, api) = match &self.pre {
            Some(p) => (p.reserved, p.model.clone(), p.api),
            None => (0, None, None),
        };
        if let Err(flow) = self.route_upstream(h, policy, tokens) {
            return flow;
        }
        // The first attempt's body carries its cluster's model; the upstream
        // instance rewrites it again for attempts that go elsewhere.
        let target_model = self
            .plan
            .as_ref()
            .and_then(|p| p.slots.first())
            .and_then(|&i| policy.clusters.get(i))
            .and_then(|t| t.model.clone())
            .filter(|m| body.is_some() && model.as_deref() != Some(m.as_str()));
        let priced = target_model.clone().or(model);
        let budget_tokens = self
            .pre
            .as_ref()
            .map_or((0, 0), |p| (p.reserved_input, p.output_allowance));
        if let Some(max) = policy.policy.max_request_cost {
            let price = priced.as_deref().and_then(|m| self.config.prices.lookup(m));
            if let Some(r) = caps::over_cost(price, budget_tokens, max, priced.as_deref()) {
                self.release_probe(h);
                return self.reply(h, RequestOutcome::CostExceeded, r);
            }
        }
        if let Err(flow) = self.charge_budgets(h, policy, priced.as_deref(), budget_tokens) {
            return flow;
        }
        if let Some((body, body_size)) = body {
            self.rewrite_body(h, &body, body_size, target_model.as_deref(), api);
        }
        self.publish_plan(h, policy, priced.as_deref());
        self.publish_translation(h, policy);
        let mut cost = Cost::default();
        if let Some(pre) = &self.pre {
            if self.config.telemetry.metrics {
                let model = pre.model.as_deref().unwrap_or("");
                let route = self.head.route.as_str();
                for (kind, n) in [
                    ("estimated_input", pre.input_estimate),
                    ("reserved", pre.reserved),
                ] {
                    h.count(
                        &[("route", route), ("model", model), ("kind", kind)],
                        TOKENS_TOTAL,
                        n,
                    );
                }
            }
            cost = Cost {
                tokens: pre.reserved,
                input_tokens: pre.reserved_input,
                output_tokens: pre.output_allowance,
            };
            self.response.tracker = Some(ResponseTracker::new(pre.api));
        }
        if let Some(flow) = self.admit(h, policy, cost) {
            return flow;
        }
        self.sent(h)
    }

    /// The request goes upstream now.
    fn sent(&mut self, h: &mut dyn Host) -> Flow {
        let at_ms = h.now_ms();
        self.went(h, at_ms);
        self.count_outcome(h);
        Flow::Continue
    }

    /// The request left at `at_ms` (now, or from the queue): it is in flight.
    fn went(&mut self, h: &mut dyn Host, at_ms: u64) {
        self.phase = Phase::Sent { at_ms };
        self.response.timing.sent_ms = Some(at_ms);
        if self.config.telemetry.metrics {
            let cluster = self.first_cluster().unwrap_or("").to_string();
            let labels = [("route", self.head.route.as_str()), ("cluster", &cluster)];
            h.add_gauge(&labels, IN_FLIGHT, 1);
            self.response.timing.in_flight = Some(cluster);
        }
    }

    /// The cluster the first attempt goes to, when the route has a chain.
    fn first_cluster(&self) -> Option<&str> {
        let (plan, policy) = (self.plan.as_ref()?, self.head.policy.as_ref()?);
        let t = plan.slots.first().and_then(|&i| policy.clusters.get(i))?;
        Some(&t.cluster.name)
    }

    /// The body the first attempt carries: the route's rewrite, and the first
    /// cluster's model (in the Gemini path, or the body).
    fn rewrite_body(
        &mut self,
        h: &mut dyn Host,
        body: &[u8],
        body_size: usize,
        target_model: Option<&str>,
        api: Option<Api>,
    ) {
        // Without held headers the content-length cannot follow a new body.
        if !self.config.hold_headers {
            return;
        }
        let pre = self.pre.as_ref();
        let mut new_body = pre.and_then(|p| p.rewrite.clone());
        if let Some(m) = target_model {
            if api == Some(Api::Gemini) {
                carry_model_in_path(h, &self.head.path, m);
            } else if !pre.is_some_and(|p| p.size_based) {
                let base = new_body.as_deref().unwrap_or(body);
                if let Some(b) = failover::body_with_model(base, m) {
                    new_body = Some(b);
                }
            }
        }
        if let Some(new_body) = &new_body {
            if let Err(s) = set_request_body(h, body_size, new_body) {
                log::warn!(
                    "llm-capacity: body rewrite failed (host status {s}); sending it unchanged"
                );
            }
        }
    }

    /// Response headers: from the upstream, or our own local reply.
    pub fn on_response_headers(&mut self, h: &mut dyn Host, end_of_stream: bool) -> Flow {
        let first_headers = self.response.progress == Progress::None;
        self.response.progress = Progress::Headers;
        self.absorb_wait(h);
        if first_headers && matches!(self.phase, Phase::Sent { .. }) {
            self.time_headers(h);
        }
        // Status, content type and the provider's headers: one host call.
        let headers = (self.response.tracker.is_some() || self.observes_final())
            .then(|| h.header_list(Map::ResponseHeaders));
        if !matches!(self.phase, Phase::Replied) && self.head.policy.is_some() {
            // Meant for the router's retry back-off (set by the upstream
            // instance, or sent by a provider), never for the client.
            let present = headers
                .as_ref()
                .is_none_or(|l| l.get(RETRY_AFTER_HEADER).is_some());
            if present {
                let _ = h.remove_header(Map::ResponseHeaders, RETRY_AFTER_HEADER);
            }
            // Before our rate-limit headers replace the provider's.
            if let Some(l) = &headers {
                self.observe_final(h, l);
            }
            self.note_served(h, headers.as_ref());
            self.note_translated(headers.as_ref());
            self.cache_on_headers(h, headers.as_ref());
            // Our view replaces the provider's: clients are limited by us first.
            for (name, value) in &self.report.rate_headers {
                let _ = h.set_header(Map::ResponseHeaders, name, value);
            }
            for (name, value) in self.held.budgets.headers() {
                let _ = h.set_header(Map::ResponseHeaders, name, &value);
            }
        }
        if let (Some(t), Some(l)) = (&mut self.response.tracker, &headers) {
            let status = l
                .get(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            t.on_headers(status, l.get("content-type"), l.get("content-encoding"));
            self.response.timing.status = status;
            self.response.timing.streamed = t.streamed();
            if end_of_stream {
                self.response.progress = Progress::Ended;
                self.settle(h);
                self.cache_on_end(h);
            }
        }
        Flow::Continue
    }

    /// A response body chunk (`chunk_size`: this chunk's bytes).
    pub fn on_response_body(&mut self, h: &mut dyn Host, chunk_size: usize, eos: bool) -> Flow {
        // The cache copies the chunk the tracker reads: one read for both.
        if self.cache_capturing() && chunk_size > 0 {
            match h.body(Buffer::ResponseBody, 0, chunk_size) {
                Ok(Some(chunk)) => {
                    self.cache_copy(h, &chunk);
                    self.track_chunk(h, Some(&chunk), chunk_size);
                }
                _ => self.track_chunk(h, Some(&[]), chunk_size),
            }
        } else {
            self.track_chunk(h, None, chunk_size);
        }
        if eos && self.response.tracker.is_some() {
            self.response.progress = Progress::Ended;
            self.settle(h);
            self.cache_on_end(h);
        }
        // Never hold a response back: every chunk goes to the client at once.
        Flow::Continue
    }

    /// Usage and the first token from a chunk (`read`: the chunk, when read already).
    fn track_chunk(&mut self, h: &mut dyn Host, read: Option<&[u8]>, chunk_size: usize) {
        if let Some(t) = &mut self.response.tracker {
            if t.wants_body() && chunk_size > 0 {
                let got = match read {
                    Some(c) => Ok(Some(c.to_vec())),
                    None => h.body(Buffer::ResponseBody, 0, chunk_size),
                };
                match got {
                    Ok(Some(chunk)) => {
                        let before = t.output_seen();
                        t.on_chunk(&chunk);
                        if !before && t.output_seen() {
                            // The first token: read the clock on this chunk only.
                            let now = h.now_ms();
                            self.response.timing.first_output_ms = Some(now);
                            self.feed_first_token(h, Some(now));
                        }
                    }
                    Ok(None) => {}
                    Err(s) => {
                        log::debug!("llm-capacity: cannot read response chunk (host status {s})")
                    }
                }
            }
        }
    }

    /// The stream's end (Envoy runs it before the access loggers).
    pub fn on_log(&mut self, h: &mut dyn Host) {
        self.absorb_wait(h);
        if matches!(self.phase, Phase::AskingGlobal(_)) {
            // The client left while the rate limit service was asked: nothing
            // was sent. (Whatever the service charges for the call is lost.)
            self.abandon(h);
        }
        // Streams that ended early (client gone, upstream reset) settle here.
        self.settle(h);
        self.cache_on_log(h);
        self.report_timing(h);
        // Bodiless requests have no settlement; what they hold is settled here.
        self.give_back(h, false);
        // Attempts that ended without an answer count against their cluster only
        // if the client was still there to be answered (it saw response headers,
        // the router's own 503 included); a client that left cancelled them.
        if self.config.upstream_filter && self.plan.is_some() {
            let answered = self.response.progress != Progress::None;
            let winner = self.response.timing.winner_seq;
            self.settle_hedge(h);
            attempt::settle_unanswered(
                &self.config,
                &self.worker,
                h,
                self.context_id,
                answered,
                winner,
            );
        }
        // Once, at the end. Nothing for requests that never reached a decision
        // (the client left mid-body, or Envoy refused them before the filter).
        if self.phase.decided() {
            self.publish(h);
        }
        if self.config.telemetry.metrics && self.worker.memory_report_due() {
            let bytes = h.memory_bytes();
            h.set_gauge(&[], WASM_MEMORY_BYTES, bytes);
        }
    }

    // --------------------------------------------------------------- answers

    fn reply(&mut self, h: &mut dyn Host, outcome: RequestOutcome, r: LocalReply) -> Flow {
        self.report.outcome = outcome;
        self.phase = Phase::Replied;
        self.count_outcome(h);
        match h.send_reply(&r) {
            Ok(()) => Flow::Pause,
            Err(s) => {
                // Could not answer: let the request through rather than hang it.
                log::warn!("llm-capacity: local reply failed (host status {s}); passing request");
                Flow::Continue
            }
        }
    }

    /// Counts the request's outcome once it is decided (admitted, refused or
    /// resumed from the queue).
    fn count_outcome(&mut self, h: &mut dyn Host) {
        if self.config.telemetry.metrics {
            h.count(
                &[
                    ("route", &self.head.route),
                    ("outcome", self.report.outcome.as_str()),
                ],
                REQUESTS_TOTAL,
                1,
            );
        }
    }

    fn count(&self, h: &mut dyn Host, labels: &[(&str, &str)], name: &str) {
        if self.config.telemetry.metrics {
            h.count(labels, name, 1);
        }
    }

    /// Writes the access-log filter state with everything known so far.
    fn publish(&self, h: &mut dyn Host) {
        if !self.config.telemetry.filter_state {
            return;
        }
        let r = &self.report;
        let mut state = AccessLogState {
            route: &self.head.route,
            outcome: r.outcome.as_str(),
            ..Default::default()
        };
        if let Some(p) = &self.pre {
            state.api = p.api.map(|a| a.as_str());
            state.operation = p.api.map(operation_name);
            state.model = p.model.as_deref();
            state.input_estimate = Some(p.input_estimate);
            state.reserved = Some(p.reserved);
        }
        state.response_model = self.response.model.as_deref();
        state.queue_wait_ms = r.queue_wait_ms;
        state.global = r.global;
        if let Some((scope, limit)) = r.limit {
            state.scope = Some(scope);
            state.limit = Some(limit);
        }
        state.shadow_limited = r.shadow_limited;
        if let Some(m) = &self.response.measured {
            state.time_to_first_token = Some(m.ttft_ms as f64 / 1000.0);
            state.time_per_output_token = m.tpot_us.map(|us| us as f64 / 1_000_000.0);
            state.duration_ms = Some(m.duration_ms);
            state.output_tokens_per_second = m.tokens_per_second;
        }
        state.slo = self.response.goodput.map(timing::Goodput::as_str);
        state.context_window = r.context_window;
        let (cache, idempotency, hit) = self.cache_report();
        state.cache = cache;
        state.idempotency = idempotency;
        if let Some(hit) = hit {
            state.usage_source = Some("cached");
            state.input_tokens = Some(hit.input);
            state.output_tokens = Some(hit.output);
            state.cached_input_tokens = Some(hit.cached_input);
        }
        state.served_by = self.response.served.as_ref().map(|(c, _)| c.as_str());
        state.translated = self.xlate.translated;
        if let Some(won) = self.report.hedge {
            state.hedged = true;
            state.winner = Some(if won { "hedge" } else { "first" });
        }
        if let (Some(plan), Some(policy)) = (&self.plan, &self.head.policy) {
            if let Some(t) = plan.slots.first().and_then(|&i| policy.clusters.get(i)) {
                state.cluster = Some(&t.cluster.name);
                state.provider = provider_name(t.cluster.provider);
            }
            state.failover = self.report.failover;
            state.probe = plan.probe;
        }
        if let Some(s) = &self.response.settled {
            state.usage_source = Some(s.source.as_str());
            state.input_tokens = Some(s.input);
            state.output_tokens = Some(s.output);
            state.cached_input_tokens = Some(s.cached_input);
        }
        if let Err(s) = h.set_property(&[FILTER_STATE_KEY], &state.to_json()) {
            log::debug!("llm-capacity: cannot set filter state (host status {s})");
        }
    }

    // ---------------------------------------------------------------- hedges

    /// Input tokens a hedge's losing attempt consumed: the answer's own input
    /// (the same prompt), once the answer is settled; 0 without a hedge.
    fn hedge_loser_input(&self) -> u64 {
        match (&self.response.settled, self.report.hedge) {
            (Some(s), Some(_)) => s.input,
            _ => 0,
        }
    }

    /// At the log: an armed hedge that never fired gives its share back; one
    /// that fired is counted `won` or `cancelled` (once the answer named it).
    fn settle_hedge(&mut self, h: &mut dyn Host) {
        if !self.report.hedge_armed {
            return;
        }
        let fired =
            self.report.hedge.is_some() || self.worker.attempts.borrow().hedged(self.context_id);
        if !fired {
            let now = h.now_ms();
            routing::hedge_refund(&*h, &self.head.route, now);
            return;
        }
        if let Some(won) = self.report.hedge {
            let result = if won { "won" } else { "cancelled" };
            self.count(
                h,
                &[("route", &self.head.route), ("result", result)],
                HEDGES_TOTAL,
            );
        }
    }

    // ------------------------------------------------------------ give-back

    /// The request never left: nothing to settle or count as reconciled, and
    /// everything it holds comes back.
    fn abandon(&mut self, h: &mut dyn Host) {
        self.phase = Phase::Abandoned;
        self.response.tracker = None;
        self.give_back(h, true);
    }

    /// The one give-back path. `unsent`: the request never left, so every
    /// charge, its global share, a probe claim and its budget reservations come
    /// back whole; otherwise what it holds is settled with its usage (or
    /// stands as reserved when no usage is known).
    fn give_back(&mut self, h: &mut dyn Host, unsent: bool) {
        self.release_charges(h, unsent, None);
        self.global_give_back(h, unsent);
        if unsent {
            self.release_probe(h);
        }
        self.held.budgets.release(&*h, &*h, unsent);
    }

    /// Settles every local charge: with the real usage, or as unsent.
    fn release_charges(&mut self, h: &mut dyn Host, unsent: bool, now: Option<u64>) {
        if self.held.charges.is_empty() {
            return; // nothing charged, or settled already: no clock read
        }
        // A hedge's loser consumed its input too (the same prompt).
        let loser = self.hedge_loser_input();
        let actual = match &self.response.settled {
            Some(s) => Cost {
                tokens: s.total().saturating_add(loser),
                input_tokens: s.input.saturating_add(loser),
                output_tokens: s.output,
            },
            None => Cost::default(),
        };
        let now = now.unwrap_or_else(|| h.now_ms());
        admit::release(&*h, &mut self.held.charges, actual, unsent, now);
    }

    /// Decides the tokens the request is charged (once), reports them, feeds
    /// calibration and the budgets, and settles what it holds.
    fn settle(&mut self, h: &mut dyn Host) {
        if self.response.settled.is_some() {
            return;
        }
        let (Some(pre), Some(tracker)) = (&self.pre, &mut self.response.tracker) else {
            return;
        };
        // One clock read for the answer's end, the charges and calibration.
        let now = h.now_ms();
        let ended = self.response.progress == Progress::Ended;
        if ended {
            self.response.timing.end_ms = Some(now);
        }
        let s = tracker.settle(pre, ended);
        self.response.model = tracker.response_model();
        if self.config.telemetry.metrics {
            let r = self.head.route.as_str();
            h.count(
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
                h.count(
                    &[("route", r), ("model", model), ("kind", kind)],
                    TOKENS_TOTAL,
                    n,
                );
            }
            if s.source == Source::Provider && s.input > 0 && !pre.size_based {
                let err = pre.input_estimate.abs_diff(s.input).saturating_mul(100) / s.input;
                h.record(&[("route", r)], ESTIMATE_ERROR_PERCENT, err);
            }
        }
        let learn = self
            .head
            .policy
            .as_ref()
            .is_some_and(|p| p.policy.calibrate);
        if let (true, Source::Provider, Some(model), false) =
            (learn, s.source, &pre.model, pre.size_based)
        {
            if self
                .worker
                .calibration_sample_due(model, pre.text_class, now)
            {
                if let Err(e) =
                    calibrate::observe(&*h, &*h, model, pre.text_class, pre.input_raw, s.input)
                {
                    log::debug!("llm-capacity: calibration sample dropped ({e:?})");
                }
            }
        }
        // Priced as the model that answered (a fallback may serve another).
        if let Some((_, Some(m))) = &self.response.served {
            self.held.budgets.price_as(&self.config, m);
        }
        let loser = if self.report.hedge.is_some() {
            s.input
        } else {
            0
        };
        let spend = self.held.budgets.settle(
            &*h,
            &*h,
            (s.input.saturating_add(loser), s.output, s.cached_input),
            false,
        );
        if self.held.budgets.priced() && self.config.telemetry.metrics {
            h.count(
                &[("route", &self.head.route)],
                SPEND_MICRODOLLARS_TOTAL,
                spend / 1_000_000,
            );
        }
        self.response.settled = Some(s);
        self.release_charges(h, false, Some(now));
        self.global_give_back(h, false);
    }
}

/// The tenant (or budget tenant) a request names: a header's value, or the
/// downstream mTLS peer's identity.
fn identity(
    h: &dyn Host,
    source: &TenantSource,
    get: &dyn Fn(&dyn Host, &str) -> Option<String>,
) -> Option<String> {
    match source {
        TenantSource::Header(name) => get(h, name),
        TenantSource::PeerCertificate => peer_identity(h),
    }
}

/// The downstream mTLS peer's identity: the certificate's URI SAN (a SPIFFE ID
/// in Istio), else its subject; `None` without a client certificate.
fn peer_identity(h: &dyn Host) -> Option<String> {
    ["uri_san_peer_certificate", "subject_peer_certificate"]
        .iter()
        .filter_map(|attr| h.property_text(&["connection", attr]))
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
