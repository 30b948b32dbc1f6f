//! The global tier in the request path (see `core::global`): after the local
//! limits admit a request, it takes its share from this Envoy's pool of granted
//! quota, or asks the rate limit service for what is short (the request waits
//! for the answer, bounded by `timeout_ms`). The service failing sends requests
//! to the route's failure policy.

use super::worker::{Renewal, RenewalCall, Worker};
use super::{admit, Exchange, Phase};
use crate::core::host::{Buffer, Flow, Host};
use crate::core::limits::global::{self, Answer, FailurePolicy, GlobalConfig, Hits, Windows};
use crate::core::limits::limiter::{self, Admission, Cost, Dim};
use crate::core::limits::ratelimit;
use crate::core::reply::LocalReply;
use crate::core::telemetry::{
    RequestOutcome, GLOBAL_CALLS_TOTAL, GLOBAL_CALL_MS, GLOBAL_DECISIONS_TOTAL,
    LIMITER_ERRORS_TOTAL,
};
use std::rc::Rc;

/// gRPC status DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// The service's answer to a call, or the result label of a failed one. Envoy's
/// async client ends a call that runs past its timeout as an HTTP 504, which
/// gRPC maps to UNAVAILABLE, so the elapsed time tells a timeout from a refused
/// connection.
fn read_answer(
    h: &dyn Host,
    status: u32,
    size: usize,
    elapsed_ms: u64,
    timeout_ms: u32,
) -> Result<Answer, &'static str> {
    if status != 0 {
        log::debug!("llm-capacity: rate limit service call failed (gRPC status {status})");
        // 90%: Envoy's timer and the host clock (read once per callback) do not
        // agree to the millisecond; a refused connection fails far earlier.
        let late = status == GRPC_DEADLINE_EXCEEDED
            || elapsed_ms.saturating_mul(10) >= u64::from(timeout_ms) * 9;
        return Err(if late { "timeout" } else { "error" });
    }
    match h.body(Buffer::GrpcAnswer, 0, size) {
        Ok(Some(b)) => global::decode_response(&b).map_err(|e| {
            log::warn!(
                "llm-capacity: rate limit service answer unreadable ({})",
                e.0
            );
            "error"
        }),
        _ => Err("error"),
    }
}

/// A request's share of the global quota, settled when it ends.
#[derive(Debug, Default)]
pub struct GlobalCharge {
    key: String,
    /// Counted against the global limit for this request.
    charged: Hits,
    windows: Windows,
    /// The service admitted it (not the failure policy): usage beyond the
    /// reservation is owed to the global counter.
    by_service: bool,
}

/// A call in flight; the request is paused until its answer.
#[derive(Debug)]
pub struct Pending {
    token: u32,
    /// Taken from the pool before the call.
    taken: Hits,
    short: Hits,
    lease: Hits,
    debt: u64,
    /// What the call asked for, in descriptor order.
    ask: Hits,
    /// The local queue wait still to do once admitted.
    wait_ms: u64,
    at: u64,
}

pub enum GlobalStep {
    Go,
    /// Answered locally (refused or failing closed).
    Replied(Flow),
    /// Waiting for the service.
    Asked,
}

impl Exchange {
    /// Runs the global tier for a request the local limits admitted.
    pub(super) fn global_gate(
        &mut self,
        h: &mut dyn Host,
        g: &Rc<GlobalConfig>,
        cost: Cost,
        wait_ms: u64,
    ) -> GlobalStep {
        let now = h.now_ms();
        let key = global::pool_key(&self.head.route);
        let need = Hits {
            requests: 1,
            tokens: cost.tokens,
        };
        let lease = g.lease();
        let renew_ms = u64::from(g.timeout_ms) * 2;
        let take = match global::take(&*h, &key, need, lease, now, renew_ms) {
            Ok(t) => t,
            Err(e) => {
                // The pool is this process's shared data: ask the service for all.
                log::warn!("llm-capacity: global pool update failed ({e:?})");
                self.count(h, &[("route", &self.head.route)], LIMITER_ERRORS_TOTAL);
                global::Take {
                    short: need,
                    lease: true,
                    ..Default::default()
                }
            }
        };
        self.held.global = Some(GlobalCharge {
            key,
            charged: take.taken,
            windows: take.windows,
            by_service: true,
        });
        if take.short.is_empty() {
            if take.renew {
                want_renewal(&self.worker, h, &self.head.route, g);
            }
            self.global_decision(h, "pool");
            return GlobalStep::Go;
        }
        if take.down {
            return self.global_failed(h, g, take.taken, 0, None);
        }
        let lease = if take.lease { lease } else { Hits::default() };
        self.global_ask(h, g, take.taken, take.short, lease, take.debt, wait_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn global_ask(
        &mut self,
        h: &mut dyn Host,
        g: &Rc<GlobalConfig>,
        taken: Hits,
        short: Hits,
        lease: Hits,
        debt: u64,
        wait_ms: u64,
    ) -> GlobalStep {
        let ask = Hits {
            requests: short.requests + lease.requests,
            tokens: short.tokens + lease.tokens + debt,
        };
        match call(h, g, &self.head.route, ask) {
            Ok(token) => {
                let at = h.now_ms();
                self.phase = Phase::AskingGlobal(Pending {
                    token,
                    taken,
                    short,
                    lease,
                    debt,
                    ask,
                    wait_ms,
                    at,
                });
                GlobalStep::Asked
            }
            Err(s) => {
                log::warn!(
                    "llm-capacity: cannot call the rate limit service on cluster {} (host status {s})",
                    g.cluster
                );
                self.global_failed(h, g, taken, debt, Some("error"))
            }
        }
    }

    /// The service's answer (or a failed call) for the paused request.
    pub fn on_grpc_answer(&mut self, h: &mut dyn Host, token: u32, status: u32, size: usize) {
        let Phase::AskingGlobal(p) = &self.phase else {
            return;
        };
        if p.token != token {
            return;
        }
        let Phase::AskingGlobal(p) = std::mem::take(&mut self.phase) else {
            return;
        };
        let Some(g) = self
            .head
            .policy
            .as_ref()
            .and_then(|p| p.policy.global.clone())
        else {
            return;
        };
        let now = h.now_ms();
        if self.config.telemetry.metrics {
            h.record(
                &[("route", &self.head.route)],
                GLOBAL_CALL_MS,
                now.saturating_sub(p.at),
            );
        }
        let answer = read_answer(&*h, status, size, now.saturating_sub(p.at), g.timeout_ms);
        let gate = match answer {
            Err(result) => self.global_failed(h, &g, p.taken, p.debt, Some(result)),
            Ok(a) if !a.over_limit => {
                self.count(
                    h,
                    &[("route", &self.head.route), ("result", "ok")],
                    GLOBAL_CALLS_TOTAL,
                );
                let old = self
                    .held
                    .global
                    .as_ref()
                    .map(|c| c.windows)
                    .unwrap_or_default();
                let windows = answer_windows(&a, p.ask, old, now);
                if let Err(e) = global::grant(&*h, &self.global_key(), p.lease, windows, now) {
                    log::debug!("llm-capacity: global lease not kept ({e:?})");
                }
                if let Some(c) = &mut self.held.global {
                    c.charged.requests += p.short.requests;
                    c.charged.tokens += p.short.tokens;
                    c.windows = windows;
                }
                self.global_decision(h, "service");
                GlobalStep::Go
            }
            Ok(a) => {
                self.count(
                    h,
                    &[("route", &self.head.route), ("result", "over_limit")],
                    GLOBAL_CALLS_TOTAL,
                );
                let reset = a.wait_ms().unwrap_or(global::UNKNOWN_WINDOW_MS);
                if !p.lease.is_empty() {
                    // The slice did not fit; what this request needs may.
                    let _ = global::no_lease_until(&*h, &self.global_key(), now + reset);
                    let (taken, short, debt, wait) = (p.taken, p.short, p.debt, p.wait_ms);
                    self.global_ask(h, &g, taken, short, Hits::default(), debt, wait)
                } else {
                    self.global_refused(h, &a, p.ask, p.taken, p.debt, reset)
                }
            }
        };
        match gate {
            GlobalStep::Asked | GlobalStep::Replied(_) => {}
            GlobalStep::Go => {
                let go = match self.hold(h, p.wait_ms) {
                    None => {
                        self.sent(h);
                        true
                    }
                    // Held by the fault filter: it goes on, and is counted when it ends.
                    Some(Flow::Continue) => true,
                    // Paused here until the queue's tick resumes it.
                    Some(Flow::Pause) => false,
                };
                if go {
                    if let Err(s) = h.resume_request() {
                        log::debug!("llm-capacity: cannot resume the request (host status {s})");
                    }
                }
            }
        }
    }

    fn global_key(&self) -> String {
        self.held
            .global
            .as_ref()
            .map_or_else(|| global::pool_key(&self.head.route), |c| c.key.clone())
    }

    /// The service is down, slow or unreachable: the failure policy decides.
    fn global_failed(
        &mut self,
        h: &mut dyn Host,
        g: &Rc<GlobalConfig>,
        taken: Hits,
        debt: u64,
        result: Option<&'static str>,
    ) -> GlobalStep {
        let now = h.now_ms();
        if let Some(result) = result {
            self.count(
                h,
                &[("route", &self.head.route), ("result", result)],
                GLOBAL_CALLS_TOTAL,
            );
            let until = now + g.retry_interval_ms;
            if let Err(e) = global::failed(&*h, &self.global_key(), until, debt) {
                log::debug!("llm-capacity: global failure not recorded ({e:?})");
            }
        }
        if let Some(c) = &mut self.held.global {
            // Only what came from the pool counts globally now.
            c.charged = taken;
            c.by_service = false;
        }
        match g.on_failure {
            FailurePolicy::Closed => {
                self.global_decision(h, "fail_closed");
                let wait = g.retry_interval_ms.max(1_000);
                let mut r = LocalReply::openai_error(
                    503,
                    "service_unavailable",
                    "global_limit_unavailable",
                    &format!(
                        "The fleet-wide rate limit for route \"{}\" cannot be checked now. Please try again in {}.",
                        self.head.route,
                        ratelimit::openai_duration(wait)
                    ),
                );
                r.headers
                    .push(("retry-after".to_string(), wait.div_ceil(1000).to_string()));
                GlobalStep::Replied(self.global_reply(h, RequestOutcome::GlobalUnavailable, r))
            }
            FailurePolicy::Open => {
                let Some(limits) = &g.fallback else {
                    self.global_decision(h, "fail_open");
                    return GlobalStep::Go;
                };
                let cost = self.reserved_cost();
                let key = fallback_key(&self.head.route);
                match limiter::admit(&*h, &key, &self.head.route, limits, &cost, now) {
                    Ok(Admission::Admitted(_) | Admission::Scheduled { .. }) => {
                        self.held.charges.push(admit::LimitCharge::new(
                            key,
                            self.head.route.clone(),
                            limits,
                            cost,
                            now,
                        ));
                        self.global_decision(h, "fail_open");
                        GlobalStep::Go
                    }
                    Ok(Admission::Rejected {
                        dim,
                        retry_after_ms,
                        snapshot,
                    }) => {
                        self.global_decision(h, "fallback_limited");
                        let limit = snapshot.get(dim).map(|d| d.limit);
                        let wait = ratelimit::jittered(retry_after_ms, h.random_u64());
                        let r = ratelimit::rejection(
                            &self.head.route,
                            None,
                            dim,
                            limit,
                            wait,
                            Vec::new(),
                        );
                        self.note_limit(h, "global_fallback", dim);
                        GlobalStep::Replied(self.global_reply(h, RequestOutcome::RateLimited, r))
                    }
                    Err(e) => {
                        log::warn!("llm-capacity: fallback limit update failed ({e:?}); request let through");
                        self.count(h, &[("route", &self.head.route)], LIMITER_ERRORS_TOTAL);
                        self.global_decision(h, "fail_open");
                        GlobalStep::Go
                    }
                }
            }
        }
    }

    /// The service said no: a 429 until its window resets.
    fn global_refused(
        &mut self,
        h: &mut dyn Host,
        a: &Answer,
        ask: Hits,
        taken: Hits,
        debt: u64,
        reset_ms: u64,
    ) -> GlobalStep {
        // All or nothing: the service charged none of it, the debt included.
        if debt > 0 {
            let _ = global::failed(&*h, &self.global_key(), 0, debt);
        }
        if let Some(c) = &mut self.held.global {
            c.charged = taken;
        }
        self.global_decision(h, "over_limit");
        let dim = a
            .statuses
            .iter()
            .position(|s| s.over_limit)
            .and_then(|i| ask.units().get(i).map(|u| u.0))
            .map_or(Dim::Requests, |u| {
                if u == "tokens" {
                    Dim::Tokens
                } else {
                    Dim::Requests
                }
            });
        let wait = ratelimit::jittered(reset_ms, h.random_u64());
        let mut r = ratelimit::rejection(&self.head.route, None, dim, None, wait, Vec::new());
        r.details = "global_rate_limit_exceeded";
        if let Some(h) = r.headers.iter_mut().find(|(k, _)| k == "x-llm-capacity") {
            h.1 = "global_rate_limit_exceeded".to_string();
        }
        self.note_limit(h, "global", dim);
        GlobalStep::Replied(self.global_reply(h, RequestOutcome::RateLimited, r))
    }

    fn global_reply(&mut self, h: &mut dyn Host, outcome: RequestOutcome, r: LocalReply) -> Flow {
        self.give_back(h, true);
        self.reply(h, outcome, r)
    }

    fn reserved_cost(&self) -> Cost {
        self.pre.as_ref().map_or(Cost::default(), |p| Cost {
            tokens: p.reserved,
            input_tokens: p.reserved_input,
            output_tokens: p.output_allowance,
        })
    }

    fn global_decision(&mut self, h: &mut dyn Host, decision: &'static str) {
        self.report.global = Some(decision);
        self.count(
            h,
            &[("route", &self.head.route), ("result", decision)],
            GLOBAL_DECISIONS_TOTAL,
        );
    }

    /// Gives the request's global share back (`unsent`), or settles it with the
    /// usage: unused reservation back to the pool, usage beyond it owed.
    pub(super) fn global_give_back(&mut self, h: &mut dyn Host, unsent: bool) {
        let Some(c) = self.held.global.take() else {
            return;
        };
        let now = h.now_ms();
        let used = self.response.settled.as_ref().map(|s| s.total());
        let result = match (unsent, used) {
            (true, _) => global::give_back(&*h, &c.key, c.charged, c.windows, now),
            (false, None) => Ok(()), // no usage known: the reservation stands
            (false, Some(used)) if used < c.charged.tokens => {
                let back = Hits {
                    requests: 0,
                    tokens: c.charged.tokens - used,
                };
                global::give_back(&*h, &c.key, back, c.windows, now)
            }
            (false, Some(used)) if c.by_service => {
                global::owe(&*h, &c.key, used - c.charged.tokens, c.windows.tokens, now)
            }
            (false, Some(_)) => Ok(()),
        };
        if let Err(e) = result {
            log::debug!("llm-capacity: global settlement failed ({e:?})");
        }
    }
}

/// Asks the rate limit service for `ask` on the route's descriptors.
fn call(h: &mut dyn Host, g: &GlobalConfig, route: &str, ask: Hits) -> Result<u32, u32> {
    let msg = global::encode_request(&g.domain, &g.entries(route), ask);
    h.grpc_call(
        &g.cluster,
        global::SERVICE,
        global::METHOD,
        &msg,
        g.timeout_ms,
    )
}

/// The windows an answer describes for the units asked (statuses come in
/// descriptor order); a unit not asked keeps its window from the pool.
fn answer_windows(a: &Answer, ask: Hits, old: Windows, now: u64) -> Windows {
    let mut w = old;
    for ((unit, _), s) in ask.units().into_iter().zip(a.statuses.iter()) {
        let end = global::window_end(Some(s), now);
        if unit == "tokens" {
            w.tokens = end;
        } else {
            w.requests = end;
        }
    }
    // A service that answers without statuses still granted: short-lived quota.
    if a.statuses.is_empty() {
        let end = global::window_end(None, now);
        w = Windows {
            requests: end,
            tokens: end,
        };
    }
    w
}

fn fallback_key(route: &str) -> String {
    format!("llmcap/gfb/{route}")
}

// ---------------------------------------------------------------- renewals
//
// A leased pool is renewed before it runs out, by the worker's root context:
// a call made from a stream would be cancelled when the stream ends (Envoy
// cancels a context's calls when it goes), and its slice lost.

/// Renewals per worker at once; more routes than this wait for the next take.
const MAX_RENEWALS: usize = 64;

fn want_renewal(worker: &Worker, h: &mut dyn Host, route: &str, g: &Rc<GlobalConfig>) {
    let added = {
        let mut r = worker.renewals.borrow_mut();
        let w = &mut r.wanted;
        if w.len() >= MAX_RENEWALS || w.iter().any(|r| r.route == route) {
            false
        } else {
            w.push(Renewal {
                route: route.to_string(),
                global: Rc::clone(g),
            });
            true
        }
    };
    // The root's next tick makes the call (1 ms: the tick's finest grain).
    if added {
        if let Err(s) = h.set_tick_period(1) {
            log::debug!("llm-capacity: cannot schedule a global renewal (host status {s})");
        }
    }
}

impl Worker {
    /// From the root's tick: makes the renewals streams asked for. Returns
    /// whether there were any.
    pub(super) fn make_renewals(&self, h: &mut dyn Host) -> bool {
        let wanted = std::mem::take(&mut self.renewals.borrow_mut().wanted);
        let any = !wanted.is_empty();
        if !any {
            return false;
        }
        let now = h.now_ms();
        for r in wanted {
            if self.renewals.borrow().calls.len() >= MAX_RENEWALS {
                break; // an unanswered backlog: the next take asks again
            }
            let g = &r.global;
            let key = global::pool_key(&r.route);
            let lease = g.lease();
            match call(h, g, &r.route, lease) {
                Ok(token) => {
                    self.renewals.borrow_mut().calls.insert(
                        token,
                        RenewalCall {
                            route: r.route,
                            key,
                            lease,
                            retry_interval_ms: g.retry_interval_ms,
                            timeout_ms: g.timeout_ms,
                            at: now,
                        },
                    );
                }
                Err(s) => {
                    log::debug!("llm-capacity: global renewal not sent (host status {s})");
                    let _ = global::failed(&*h, &key, now + g.retry_interval_ms, 0);
                }
            }
        }
        any
    }

    /// The service's answer to a renewal (`metrics`: the config counts them):
    /// the slice goes into the pool. Answers for other tokens are ignored.
    pub fn on_renewal_answer(
        &self,
        h: &mut dyn Host,
        metrics: bool,
        token: u32,
        status: u32,
        size: usize,
    ) {
        let Some(c) = self.renewals.borrow_mut().calls.remove(&token) else {
            return;
        };
        let now = h.now_ms();
        let answer = read_answer(&*h, status, size, now.saturating_sub(c.at), c.timeout_ms);
        let result = match &answer {
            Err(result) => result,
            Ok(a) if a.over_limit => "over_limit",
            Ok(_) => "ok",
        };
        if metrics {
            h.count(
                &[("route", &c.route), ("result", result)],
                GLOBAL_CALLS_TOTAL,
                1,
            );
            h.record(
                &[("route", &c.route)],
                GLOBAL_CALL_MS,
                now.saturating_sub(c.at),
            );
        }
        let r = match answer {
            Err(_) => global::failed(&*h, &c.key, now + c.retry_interval_ms, 0),
            Ok(a) if a.over_limit => {
                let reset = a.wait_ms().unwrap_or(global::UNKNOWN_WINDOW_MS);
                global::no_lease_until(&*h, &c.key, now + reset)
            }
            Ok(a) => {
                let windows = answer_windows(&a, c.lease, Windows::default(), now);
                global::grant(&*h, &c.key, c.lease, windows, now)
            }
        };
        if let Err(e) = r {
            log::debug!("llm-capacity: global renewal not kept ({e:?})");
        }
    }
}
