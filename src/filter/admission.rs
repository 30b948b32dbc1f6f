//! Limits at admission: one attempt against the tenant and route buckets, and the
//! per-worker queue of requests waiting for capacity.
//!
//! The queue lives in the worker's VM, shared by the root context (whose tick
//! retries waiting requests and resumes them) and the streams (which enqueue
//! themselves and leave when their client goes away). VMs are single-threaded,
//! so `Rc<RefCell<..>>` is enough.

use super::abi;
use super::{HostClock, HostStore};
use crate::core::config::RoutePolicy;
use crate::core::env::{Clock, StoreError};
use crate::core::limiter::{self, Admission, Cost, Dim, Limits, Snapshot};
use crate::core::ratelimit;
use crate::core::reply::{serialize_pairs, LocalReply};
use std::cell::RefCell;
use std::rc::Rc;

/// Everything an admission attempt needs; kept while a request waits.
pub struct Ticket {
    pub route: String,
    pub tenant: Option<String>,
    pub policy: Rc<RoutePolicy>,
    pub cost: Cost,
    /// Priority class, 0 = highest.
    pub class: usize,
}

/// A limit charged at admission, settled when the request ends.
pub struct Charge {
    key: String,
    owner: String,
    limits: Limits,
    cost: Cost,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    pub scope: &'static str,
    pub dim: Dim,
    pub limit: Option<u64>,
    /// Until the refusing bucket has room, without jitter.
    pub wait_ms: u64,
    pub snapshot: Snapshot,
    pub tenant: Option<String>,
}

#[derive(Default)]
pub struct Attempt {
    pub charges: Vec<Charge>,
    /// The snapshot answers describe (the tenant's when tenant limits apply).
    pub view: Option<Snapshot>,
    pub refused: Option<Refusal>,
    pub shadow: Option<(&'static str, Dim)>,
    pub evicted: bool,
    pub errors: Vec<StoreError>,
}

/// Charges the tenant, then the route. A refusal leaves nothing charged.
pub fn attempt(t: &Ticket, now: u64) -> Attempt {
    let mut a = Attempt::default();
    let p = &t.policy.policy;
    let floor = p.priority.as_ref().map_or(0.0, |pr| pr.floor(t.class));
    let store = HostStore;
    // The tenant first: it is the narrower limit, and is refunded if the route refuses.
    if let Some(tc) = &p.tenant {
        let tenant = t.tenant.clone().unwrap_or_else(|| "-".to_string());
        match limiter::tenant_key(&store, &t.route, &tenant, tc.slots, now) {
            Ok((key, evicted)) => {
                a.evicted = evicted;
                match limiter::admit_above(&store, &key, &tenant, &tc.limits, &t.cost, floor, now) {
                    Ok(Admission::Admitted(snap)) => {
                        a.charges.push(Charge {
                            key,
                            owner: tenant,
                            limits: tc.limits.clone(),
                            cost: t.cost,
                        });
                        a.view = Some(snap);
                    }
                    Ok(Admission::Rejected {
                        dim,
                        retry_after_ms,
                        snapshot,
                    }) => {
                        if tc.shadow {
                            a.shadow = Some(("tenant", dim));
                        } else {
                            let limit = snapshot.get(dim).map(|d| d.limit);
                            a.refused = Some(Refusal {
                                scope: "tenant",
                                dim,
                                limit,
                                wait_ms: retry_after_ms,
                                snapshot,
                                tenant: Some(tenant),
                            });
                            return a;
                        }
                    }
                    Err(e) => a.errors.push(e),
                }
            }
            Err(e) => a.errors.push(e),
        }
    }
    if let Some(lc) = &p.limits {
        let key = limiter::route_key(&t.route);
        match limiter::admit_above(&store, &key, &t.route, &lc.limits, &t.cost, floor, now) {
            Ok(Admission::Admitted(snap)) => {
                a.charges.push(Charge {
                    key,
                    owner: t.route.clone(),
                    limits: lc.limits.clone(),
                    cost: t.cost,
                });
                a.view = a.view.or(Some(snap));
            }
            Ok(Admission::Rejected {
                dim,
                retry_after_ms,
                snapshot,
            }) => {
                if lc.shadow {
                    a.shadow = Some(("route", dim));
                } else {
                    // The request does not leave: the tenant gets its charge back.
                    release(&mut a.charges, Cost::default(), true, now);
                    let snapshot = a.view.take().unwrap_or(snapshot);
                    let limit = snapshot.get(dim).map(|d| d.limit);
                    a.refused = Some(Refusal {
                        scope: "route",
                        dim,
                        limit,
                        wait_ms: retry_after_ms,
                        snapshot,
                        tenant: None,
                    });
                }
            }
            Err(e) => a.errors.push(e),
        }
    }
    a
}

/// Settles charges with the real usage (`actual`), or as never sent.
pub fn release(charges: &mut Vec<Charge>, actual: Cost, unsent: bool, now: u64) {
    for c in charges.drain(..) {
        if let Err(e) = limiter::settle(
            &HostStore, &c.key, &c.owner, &c.limits, &c.cost, &actual, unsent, now,
        ) {
            log::warn!("llm-capacity: limiter settlement failed ({e:?})");
        }
    }
}

/// The 429 for a refusal, with jitter from `random`.
pub fn refusal_reply(t: &Ticket, r: &Refusal, random: u64) -> LocalReply {
    let wait = ratelimit::jittered(r.wait_ms, random);
    let headers = ratelimit::headers(&r.snapshot, t.policy.policy.rate_limit_headers);
    ratelimit::rejection(&t.route, r.tenant.as_deref(), r.dim, r.limit, wait, headers)
}

pub enum Waited {
    /// Admitted after waiting this long.
    Admitted(Box<Attempt>, u64),
    /// The wait budget ran out; the 429 was sent.
    TimedOut(Refusal),
}

pub struct Waiter {
    pub context_id: u32,
    pub ticket: Ticket,
    pub since_ms: u64,
    pub deadline_ms: u64,
    seq: u64,
    pub last: Refusal,
    pub result: Option<Waited>,
}

#[derive(Default)]
pub struct WaitQueue {
    waiters: Vec<Rc<RefCell<Waiter>>>,
    seq: u64,
}

pub type Queue = Rc<RefCell<WaitQueue>>;

impl WaitQueue {
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Adds a waiter; its place is by priority class, then arrival.
    pub fn push(
        &mut self,
        context_id: u32,
        ticket: Ticket,
        now: u64,
        deadline_ms: u64,
        last: Refusal,
    ) -> Rc<RefCell<Waiter>> {
        self.seq += 1;
        let w = Rc::new(RefCell::new(Waiter {
            context_id,
            ticket,
            since_ms: now,
            deadline_ms,
            seq: self.seq,
            last,
            result: None,
        }));
        self.waiters.push(Rc::clone(&w));
        self.waiters.sort_by_key(|w| {
            let w = w.borrow();
            (w.ticket.class, w.seq)
        });
        w
    }

    /// A waiter whose client went away leaves the queue.
    pub fn remove(&mut self, w: &Rc<RefCell<Waiter>>) {
        self.waiters.retain(|x| !Rc::ptr_eq(x, w));
    }
}

/// One pass over the queue, from the root context's tick: admits what fits, in
/// order (a route's later waiters do not pass one still blocked), and answers 429
/// to those whose wait budget ran out. Returns whether anyone is still waiting.
pub fn on_tick(queue: &Queue, random: &mut dyn FnMut() -> u64) -> bool {
    let now = HostClock.now_ms();
    let waiters: Vec<Rc<RefCell<Waiter>>> = queue.borrow().waiters.clone();
    let mut blocked: Vec<String> = Vec::new();
    for w in waiters {
        let mut wb = w.borrow_mut();
        if now >= wb.deadline_ms {
            let reply = refusal_reply(&wb.ticket, &wb.last, random());
            let refusal = wb.last.clone();
            wb.result = Some(Waited::TimedOut(refusal));
            let ctx = wb.context_id;
            drop(wb);
            queue.borrow_mut().remove(&w);
            answer(ctx, &reply);
            continue;
        }
        if blocked.contains(&wb.ticket.route) {
            continue;
        }
        let a = attempt(&wb.ticket, now);
        match a.refused.clone() {
            Some(r) => {
                wb.last = r;
                blocked.push(wb.ticket.route.clone());
            }
            None => {
                let waited = now.saturating_sub(wb.since_ms);
                wb.result = Some(Waited::Admitted(Box::new(a), waited));
                let ctx = wb.context_id;
                drop(wb);
                queue.borrow_mut().remove(&w);
                // The paused request goes on; the stream picks its charges up later.
                let resumed = abi::set_effective_context(ctx).and_then(|()| abi::resume_request());
                if let Err(s) = resumed {
                    log::warn!("llm-capacity: cannot resume a queued request (host status {s})");
                    // Nobody will settle these: give them back now.
                    if let Some(Waited::Admitted(mut a, _)) = w.borrow_mut().result.take() {
                        release(&mut a.charges, Cost::default(), true, now);
                    }
                }
            }
        }
    }
    queue.borrow().len() > 0
}

fn answer(ctx: u32, reply: &LocalReply) {
    if abi::set_effective_context(ctx).is_err() {
        return; // the stream is gone
    }
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(s) = abi::send_local_response(
        reply.status,
        reply.details,
        &reply.body,
        &serialize_pairs(&headers),
    ) {
        log::warn!("llm-capacity: cannot answer a queued request (host status {s})");
    }
}
