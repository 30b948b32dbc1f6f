//! The global tier in the request path (see `core::global`): after the local
//! limits admit a request, it takes its share from this Envoy's pool of granted
//! quota, or asks the rate limit service for what is short (the request waits
//! for the answer, bounded by `timeout_ms`). The service failing sends requests
//! to the route's failure policy.

use super::{abi, admission, HostClock, HostStore, Stream};
use crate::core::env::{Clock, Random};
use crate::core::global::{self, Answer, FailurePolicy, GlobalConfig, Hits, Windows};
use crate::core::limiter::{self, Admission, Cost, Dim};
use crate::core::ratelimit;
use crate::core::reply::LocalReply;
use crate::core::telemetry::{
    Outcome, GLOBAL_CALLS_TOTAL, GLOBAL_CALL_MS, GLOBAL_DECISIONS_TOTAL, LIMITER_ERRORS_TOTAL,
    RATE_LIMITED_TOTAL,
};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// gRPC status DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// The service's answer to a call, or the result label of a failed one. Envoy's
/// async client ends a call that runs past its timeout as an HTTP 504, which
/// gRPC maps to UNAVAILABLE, so the elapsed time tells a timeout from a refused
/// connection.
fn read_answer(
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
    match abi::buffer(abi::BUFFER_GRPC_RECEIVE, 0, size) {
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

pub enum Gate {
    Go,
    /// Answered locally (refused or failing closed).
    Replied(Action),
    /// Waiting for the service.
    Asked,
}

impl Stream {
    /// Runs the global tier for a request the local limits admitted.
    pub(super) fn global_gate(&mut self, g: &Rc<GlobalConfig>, cost: Cost, wait_ms: u64) -> Gate {
        let now = HostClock.now_ms();
        let key = global::pool_key(&self.route);
        let need = Hits {
            requests: 1,
            tokens: cost.tokens,
        };
        let lease = g.lease();
        let renew_ms = u64::from(g.timeout_ms) * 2;
        let take = match global::take(&HostStore, &key, need, lease, now, renew_ms) {
            Ok(t) => t,
            Err(e) => {
                // The pool is this process's shared data: ask the service for all.
                log::warn!("llm-capacity: global pool update failed ({e:?})");
                self.count(&[("route", &self.route)], LIMITER_ERRORS_TOTAL);
                global::Take {
                    short: need,
                    lease: true,
                    ..Default::default()
                }
            }
        };
        self.global = Some(GlobalCharge {
            key,
            charged: take.taken,
            windows: take.windows,
            by_service: true,
        });
        if take.short.is_empty() {
            if take.renew {
                want_renewal(&self.route, g);
            }
            self.global_decision("pool");
            return Gate::Go;
        }
        if take.down {
            return self.global_failed(g, take.taken, 0, None);
        }
        let lease = if take.lease { lease } else { Hits::default() };
        self.global_ask(g, take.taken, take.short, lease, take.debt, wait_ms)
    }

    fn global_ask(
        &mut self,
        g: &Rc<GlobalConfig>,
        taken: Hits,
        short: Hits,
        lease: Hits,
        debt: u64,
        wait_ms: u64,
    ) -> Gate {
        let ask = Hits {
            requests: short.requests + lease.requests,
            tokens: short.tokens + lease.tokens + debt,
        };
        match call(g, &self.route, ask) {
            Ok(token) => {
                self.global_pending = Some(Pending {
                    token,
                    taken,
                    short,
                    lease,
                    debt,
                    ask,
                    wait_ms,
                    at: HostClock.now_ms(),
                });
                Gate::Asked
            }
            Err(s) => {
                log::warn!(
                    "llm-capacity: cannot call the rate limit service on cluster {} (host status {s})",
                    g.cluster
                );
                self.global_failed(g, taken, debt, Some("error"))
            }
        }
    }

    /// The service's answer (or a failed call) for the paused request.
    pub(super) fn on_global_answer(&mut self, token: u32, status: u32, size: usize) {
        let Some(p) = self.global_pending.take_if(|p| p.token == token) else {
            return;
        };
        let Some(g) = self.policy.as_ref().and_then(|p| p.policy.global.clone()) else {
            return;
        };
        let now = HostClock.now_ms();
        if self.config.telemetry.metrics {
            self.metrics.borrow_mut().record(
                &[("route", &self.route)],
                GLOBAL_CALL_MS,
                now.saturating_sub(p.at),
            );
        }
        let answer = read_answer(status, size, now.saturating_sub(p.at), g.timeout_ms);
        let gate = match answer {
            Err(result) => self.global_failed(&g, p.taken, p.debt, Some(result)),
            Ok(a) if !a.over_limit => {
                self.count(
                    &[("route", &self.route), ("result", "ok")],
                    GLOBAL_CALLS_TOTAL,
                );
                let old = self.global.as_ref().map(|c| c.windows).unwrap_or_default();
                let windows = answer_windows(&a, p.ask, old, now);
                if let Err(e) = global::grant(&HostStore, &self.global_key(), p.lease, windows, now)
                {
                    log::debug!("llm-capacity: global lease not kept ({e:?})");
                }
                if let Some(c) = &mut self.global {
                    c.charged.requests += p.short.requests;
                    c.charged.tokens += p.short.tokens;
                    c.windows = windows;
                }
                self.global_decision("service");
                Gate::Go
            }
            Ok(a) => {
                self.count(
                    &[("route", &self.route), ("result", "over_limit")],
                    GLOBAL_CALLS_TOTAL,
                );
                let reset = a.wait_ms().unwrap_or(global::UNKNOWN_WINDOW_MS);
                if !p.lease.is_empty() {
                    // The slice did not fit; what this request needs may.
                    let _ = global::no_lease_until(&HostStore, &self.global_key(), now + reset);
                    self.global_ask(&g, p.taken, p.short, Hits::default(), p.debt, p.wait_ms)
                } else {
                    self.global_refused(&a, p.ask, p.taken, p.debt, reset)
                }
            }
        };
        match gate {
            Gate::Asked | Gate::Replied(_) => {}
            Gate::Go => {
                let go = match self.hold(p.wait_ms) {
                    None => {
                        self.sent_ms = HostClock.now_ms();
                        self.count_outcome();
                        true
                    }
                    // Held by the fault filter: it goes on, and is counted when it ends.
                    Some(Action::Continue) => true,
                    // Paused here until the queue's tick resumes it.
                    Some(_) => false,
                };
                if go {
                    if let Err(s) = abi::resume_request() {
                        log::debug!("llm-capacity: cannot resume the request (host status {s})");
                    }
                }
            }
        }
    }

    fn global_key(&self) -> String {
        self.global
            .as_ref()
            .map_or_else(|| global::pool_key(&self.route), |c| c.key.clone())
    }

    /// The service is down, slow or unreachable: the failure policy decides.
    fn global_failed(
        &mut self,
        g: &Rc<GlobalConfig>,
        taken: Hits,
        debt: u64,
        result: Option<&'static str>,
    ) -> Gate {
        let now = HostClock.now_ms();
        if let Some(result) = result {
            self.count(
                &[("route", &self.route), ("result", result)],
                GLOBAL_CALLS_TOTAL,
            );
            let until = now + g.retry_interval_ms;
            if let Err(e) = global::failed(&HostStore, &self.global_key(), until, debt) {
                log::debug!("llm-capacity: global failure not recorded ({e:?})");
            }
        }
        if let Some(c) = &mut self.global {
            // Only what came from the pool counts globally now.
            c.charged = taken;
            c.by_service = false;
        }
        match g.on_failure {
            FailurePolicy::Closed => {
                self.global_decision("fail_closed");
                let wait = g.retry_interval_ms.max(1_000);
                let mut r = LocalReply::openai_error(
                    503,
                    "service_unavailable",
                    "global_limit_unavailable",
                    &format!(
                        "The fleet-wide rate limit for route \"{}\" cannot be checked now. Please try again in {}.",
                        self.route,
                        ratelimit::openai_duration(wait)
                    ),
                );
                r.headers
                    .push(("retry-after".to_string(), wait.div_ceil(1000).to_string()));
                Gate::Replied(self.global_reply(Outcome::GlobalUnavailable, r))
            }
            FailurePolicy::Open => {
                let Some(limits) = &g.fallback else {
                    self.global_decision("fail_open");
                    return Gate::Go;
                };
                let cost = self.reserved_cost();
                let key = fallback_key(&self.route);
                match limiter::admit(&HostStore, &key, &self.route, limits, &cost, now) {
                    Ok(Admission::Admitted(_) | Admission::Scheduled { .. }) => {
                        self.charges.push(admission::Charge::new(
                            key,
                            self.route.clone(),
                            limits,
                            cost,
                            now,
                        ));
                        self.global_decision("fail_open");
                        Gate::Go
                    }
                    Ok(Admission::Rejected {
                        dim,
                        retry_after_ms,
                        snapshot,
                    }) => {
                        self.global_decision("fallback_limited");
                        let limit = snapshot.get(dim).map(|d| d.limit);
                        let wait =
                            ratelimit::jittered(retry_after_ms, self.rng.borrow_mut().next_u64());
                        let r =
                            ratelimit::rejection(&self.route, None, dim, limit, wait, Vec::new());
                        self.note_limit("global_fallback", dim);
                        Gate::Replied(self.global_reply(Outcome::RateLimited, r))
                    }
                    Err(e) => {
                        log::warn!("llm-capacity: fallback limit update failed ({e:?}); request let through");
                        self.count(&[("route", &self.route)], LIMITER_ERRORS_TOTAL);
                        self.global_decision("fail_open");
                        Gate::Go
                    }
                }
            }
        }
    }

    /// The service said no: a 429 until its window resets.
    fn global_refused(
        &mut self,
        a: &Answer,
        ask: Hits,
        taken: Hits,
        debt: u64,
        reset_ms: u64,
    ) -> Gate {
        // All or nothing: the service charged none of it, the debt included.
        if debt > 0 {
            let _ = global::failed(&HostStore, &self.global_key(), 0, debt);
        }
        if let Some(c) = &mut self.global {
            c.charged = taken;
        }
        self.global_decision("over_limit");
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
        let wait = ratelimit::jittered(reset_ms, self.rng.borrow_mut().next_u64());
        let mut r = ratelimit::rejection(&self.route, None, dim, None, wait, Vec::new());
        r.details = "global_rate_limit_exceeded";
        if let Some(h) = r.headers.iter_mut().find(|(k, _)| k == "x-llm-capacity") {
            h.1 = "global_rate_limit_exceeded".to_string();
        }
        self.note_limit("global", dim);
        Gate::Replied(self.global_reply(Outcome::RateLimited, r))
    }

    fn note_limit(&mut self, scope: &'static str, dim: Dim) {
        self.limit = Some((scope, dim.as_str()));
        self.count(
            &[
                ("route", &self.route),
                ("scope", scope),
                ("limit", dim.as_str()),
            ],
            RATE_LIMITED_TOTAL,
        );
    }

    fn global_reply(&mut self, outcome: Outcome, r: LocalReply) -> Action {
        self.give_everything_back();
        self.reply(outcome, r)
    }

    fn reserved_cost(&self) -> Cost {
        self.pre.as_ref().map_or(Cost::default(), |p| Cost {
            tokens: p.reserved,
            input_tokens: p.reserved_input,
            output_tokens: p.output_allowance,
        })
    }

    fn global_decision(&mut self, decision: &'static str) {
        self.global_result = Some(decision);
        self.count(
            &[("route", &self.route), ("result", decision)],
            GLOBAL_DECISIONS_TOTAL,
        );
    }

    /// Gives the request's global share back (`unsent`), or settles it with the
    /// usage: unused reservation back to the pool, usage beyond it owed.
    pub(super) fn global_give_back(&mut self, unsent: bool) {
        let Some(c) = self.global.take() else { return };
        let now = HostClock.now_ms();
        let used = self.settled.as_ref().map(|s| s.total());
        let result = match (unsent, used) {
            (true, _) => global::give_back(&HostStore, &c.key, c.charged, c.windows, now),
            (false, None) => Ok(()), // no usage known: the reservation stands
            (false, Some(used)) if used < c.charged.tokens => {
                let back = Hits {
                    requests: 0,
                    tokens: c.charged.tokens - used,
                };
                global::give_back(&HostStore, &c.key, back, c.windows, now)
            }
            (false, Some(used)) if c.by_service => global::owe(
                &HostStore,
                &c.key,
                used - c.charged.tokens,
                c.windows.tokens,
                now,
            ),
            (false, Some(_)) => Ok(()),
        };
        if let Err(e) = result {
            log::debug!("llm-capacity: global settlement failed ({e:?})");
        }
    }
}

/// Asks the rate limit service for `ask` on the route's descriptors.
fn call(g: &GlobalConfig, route: &str, ask: Hits) -> Result<u32, u32> {
    let msg = global::encode_request(&g.domain, &g.entries(route), ask);
    abi::grpc_call(
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

/// A renewal to make at the next tick.
struct Renewal {
    route: String,
    global: Rc<GlobalConfig>,
}

/// A renewal call in flight, by token.
pub struct RenewalCall {
    route: String,
    key: String,
    lease: Hits,
    retry_interval_ms: u64,
    timeout_ms: u32,
    at: u64,
}

/// Renewals per worker at once; more routes than this wait for the next take.
const MAX_RENEWALS: usize = 64;

thread_local! {
    static WANTED: std::cell::RefCell<Vec<Renewal>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn want_renewal(route: &str, g: &Rc<GlobalConfig>) {
    let added = WANTED.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() >= MAX_RENEWALS || w.iter().any(|r| r.route == route) {
            return false;
        }
        w.push(Renewal {
            route: route.to_string(),
            global: Rc::clone(g),
        });
        true
    });
    // The root's next tick makes the call (1 ms: the tick's finest grain).
    if added {
        if let Err(s) = abi::set_tick_period(1) {
            log::debug!("llm-capacity: cannot schedule a global renewal (host status {s})");
        }
    }
}

/// From the root's tick: makes the renewals streams asked for. Returns whether
/// there were any.
pub fn make_renewals(calls: &mut std::collections::HashMap<u32, RenewalCall>) -> bool {
    let wanted = WANTED.with(|w| std::mem::take(&mut *w.borrow_mut()));
    let any = !wanted.is_empty();
    let now = HostClock.now_ms();
    for r in wanted {
        if calls.len() >= MAX_RENEWALS {
            break; // an unanswered backlog: the next take asks again
        }
        let g = &r.global;
        let key = global::pool_key(&r.route);
        let lease = g.lease();
        match call(g, &r.route, lease) {
            Ok(token) => {
                calls.insert(
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
                let _ = global::failed(&HostStore, &key, now + g.retry_interval_ms, 0);
            }
        }
    }
    any
}

/// The service's answer to a renewal: the slice goes into the pool.
pub fn on_renewal_answer(
    calls: &mut std::collections::HashMap<u32, RenewalCall>,
    metrics: &std::cell::RefCell<super::Metrics>,
    count: bool,
    token: u32,
    status: u32,
    size: usize,
) {
    let Some(c) = calls.remove(&token) else {
        return;
    };
    let now = HostClock.now_ms();
    let answer = read_answer(status, size, now.saturating_sub(c.at), c.timeout_ms);
    let result = match &answer {
        Err(result) => result,
        Ok(a) if a.over_limit => "over_limit",
        Ok(_) => "ok",
    };
    if count {
        let mut m = metrics.borrow_mut();
        m.count(
            &[("route", &c.route), ("result", result)],
            GLOBAL_CALLS_TOTAL,
            1,
        );
        m.record(
            &[("route", &c.route)],
            GLOBAL_CALL_MS,
            now.saturating_sub(c.at),
        );
    }
    let r = match answer {
        Err(_) => global::failed(&HostStore, &c.key, now + c.retry_interval_ms, 0),
        Ok(a) if a.over_limit => {
            let reset = a.wait_ms().unwrap_or(global::UNKNOWN_WINDOW_MS);
            global::no_lease_until(&HostStore, &c.key, now + reset)
        }
        Ok(a) => {
            let windows = answer_windows(&a, c.lease, Windows::default(), now);
            global::grant(&HostStore, &c.key, c.lease, windows, now)
        }
    };
    if let Err(e) = r {
        log::debug!("llm-capacity: global renewal not kept ({e:?})");
    }
}
