//! Limits at admission: one attempt against the tenant and route buckets, and the
//! per-worker list of requests waiting for the time their place comes up.
//!
//! A request that would wait at most its budget is charged at once and given a
//! time to go (see `limiter::admit_or_schedule`): its place is held in the shared
//! bucket, so waits are exact across workers and nothing is re-tried. With
//! `queue_hold: vm` the worker's root context ticks while anyone waits and
//! resumes each request when its time comes; with `fault_filter` Envoy's fault
//! filter holds it, and the list only counts it against `max_size`. VMs are
//! single-threaded, so `Rc<RefCell<..>>` is enough.

use crate::core::config::RoutePolicy;
use crate::core::env::{SharedStore, StoreError};
use crate::core::host::Host;
use crate::core::limits::limiter::{self, Admission, Cost, Dim, Limits, Snapshot};
use crate::core::limits::ratelimit;
use crate::core::reply::LocalReply;
use std::cell::RefCell;
use std::rc::Rc;

/// The fault filter's delay header (`header_delay`): milliseconds to hold the request.
pub const FAULT_DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// Every header the fault filter reads starts with this (delay, abort,
/// throughput and their percentages): only this filter may set them.
pub const FAULT_HEADER_PREFIX: &str = "x-envoy-fault-";
/// The fault filter acts only on requests carrying this marker (its `headers`
/// matcher), which this filter sets on the requests it holds and strips from clients.
pub const HOLD_MARKER_HEADER: &str = "x-llm-capacity-hold";

/// Everything an admission attempt needs.
pub struct Ticket {
    pub route: String,
    pub tenant: Option<String>,
    pub policy: Rc<RoutePolicy>,
    pub cost: Cost,
    /// Priority class, 0 = highest.
    pub class: usize,
    /// How long the request may wait for its turn (0: no queueing).
    pub max_wait_ms: u64,
}

/// A limit charged at admission, settled when the request ends.
pub struct LimitCharge {
    key: String,
    owner: String,
    limits: Limits,
    cost: Cost,
    /// When it was charged: its in-flight slot is leased from then.
    at: u64,
}

impl LimitCharge {
    pub fn new(key: String, owner: String, limits: &Limits, cost: Cost, at: u64) -> Self {
        LimitCharge {
            key,
            owner,
            limits: limits.clone(),
            cost,
            at,
        }
    }
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

/// What one admission attempt did.
#[derive(Default)]
pub struct AdmitResult {
    pub charges: Vec<LimitCharge>,
    /// The snapshot answers describe (the tenant's when tenant limits apply).
    pub view: Option<Snapshot>,
    pub refused: Option<Refusal>,
    /// How long the admitted request must wait for its turn.
    pub wait_ms: u64,
    pub shadow: Option<(&'static str, Dim)>,
    pub evicted: bool,
    pub errors: Vec<StoreError>,
}

enum Step {
    Go(Snapshot, u64),
    Refused(Dim, u64, Snapshot),
    Failed(StoreError),
}

struct Account<'a> {
    key: &'a str,
    owner: &'a str,
    limits: &'a Limits,
}

fn step(store: &dyn SharedStore, b: Account<'_>, t: &Ticket, floor: f64, now: u64) -> Step {
    let max_wait = (t.max_wait_ms > 0).then_some(t.max_wait_ms);
    match limiter::admit_or_schedule(
        store, b.key, b.owner, b.limits, &t.cost, floor, max_wait, now,
    ) {
        Ok(Admission::Admitted(s)) => Step::Go(s, 0),
        Ok(Admission::Scheduled { wait_ms, snapshot }) => Step::Go(snapshot, wait_ms),
        Ok(Admission::Rejected {
            dim,
            retry_after_ms,
            snapshot,
        }) => Step::Refused(dim, retry_after_ms, snapshot),
        Err(e) => Step::Failed(e),
    }
}

/// Charges the tenant, then the route. A refusal leaves nothing charged.
pub fn attempt(store: &dyn SharedStore, t: &Ticket, now: u64) -> AdmitResult {
    let mut a = AdmitResult::default();
    let p = &t.policy.policy;
    let floor = p.priority.as_ref().map_or(0.0, |pr| pr.floor(t.class));
    // The tenant first: it is the narrower limit, and is refunded if the route refuses.
    if let Some(tc) = &p.tenant {
        let tenant = t.tenant.clone().unwrap_or_else(|| "-".to_string());
        match limiter::tenant_key(store, &t.route, &tenant, tc.slots, now) {
            Ok((key, evicted)) => {
                a.evicted = evicted;
                let b = Account {
                    key: &key,
                    owner: &tenant,
                    limits: &tc.limits,
                };
                match step(store, b, t, floor, now) {
                    Step::Go(snap, wait) => {
                        a.charges.push(LimitCharge {
                            key,
                            owner: tenant,
                            limits: tc.limits.clone(),
                            cost: t.cost,
                            at: now,
                        });
                        a.view = Some(snap);
                        a.wait_ms = wait;
                    }
                    Step::Refused(dim, wait_ms, snapshot) if !tc.shadow => {
                        let limit = snapshot.get(dim).map(|d| d.limit);
                        a.refused = Some(Refusal {
                            scope: "tenant",
                            dim,
                            limit,
                            wait_ms,
                            snapshot,
                            tenant: Some(tenant),
                        });
                        return a;
                    }
                    Step::Refused(dim, ..) => a.shadow = Some(("tenant", dim)),
                    Step::Failed(e) => a.errors.push(e),
                }
            }
            Err(e) => a.errors.push(e),
        }
    }
    if let Some(lc) = &p.limits {
        let key = limiter::route_key(&t.route);
        let b = Account {
            key: &key,
            owner: &t.route,
            limits: &lc.limits,
        };
        match step(store, b, t, floor, now) {
            Step::Go(snap, wait) => {
                a.charges.push(LimitCharge {
                    key,
                    owner: t.route.clone(),
                    limits: lc.limits.clone(),
                    cost: t.cost,
                    at: now,
                });
                a.view = a.view.or(Some(snap));
                a.wait_ms = a.wait_ms.max(wait);
            }
            Step::Refused(dim, wait_ms, snapshot) if !lc.shadow => {
                // The request does not leave: the tenant gets its charge back.
                release(store, &mut a.charges, Cost::default(), true, now);
                let snapshot = a.view.take().unwrap_or(snapshot);
                let limit = snapshot.get(dim).map(|d| d.limit);
                a.refused = Some(Refusal {
                    scope: "route",
                    dim,
                    limit,
                    wait_ms,
                    snapshot,
                    tenant: None,
                });
                a.wait_ms = 0;
            }
            Step::Refused(dim, ..) => a.shadow = Some(("route", dim)),
            Step::Failed(e) => a.errors.push(e),
        }
    }
    a
}

/// Settles charges with the real usage (`actual`), or as never sent.
pub fn release(
    store: &dyn SharedStore,
    charges: &mut Vec<LimitCharge>,
    actual: Cost,
    unsent: bool,
    now: u64,
) {
    for c in charges.drain(..) {
        if let Err(e) = limiter::settle(
            store, &c.key, &c.owner, &c.limits, &c.cost, &actual, unsent, c.at, now,
        ) {
            log::warn!("llm-capacity: limiter settlement failed ({e:?})");
        }
    }
}

/// The 429 for a refusal, with jitter from `random`.
pub fn refusal_reply(t: &Ticket, r: &Refusal, random: u64) -> LocalReply {
    let wait = ratelimit::jittered_for(r.dim, r.wait_ms, random);
    let headers = ratelimit::headers(&r.snapshot, t.policy.policy.rate_limit_headers);
    ratelimit::rejection(&t.route, r.tenant.as_deref(), r.dim, r.limit, wait, headers)
}

#[derive(Debug)]
pub struct Waiter {
    pub context_id: u32,
    pub since_ms: u64,
    pub go_at_ms: u64,
    /// Set by the tick when it resumed the request (when it did).
    pub resumed_at_ms: Option<u64>,
    /// Held by Envoy's fault filter, not paused here: the tick leaves it alone.
    pub in_fault_filter: bool,
}

#[derive(Default)]
pub struct WaitQueue {
    waiters: Vec<Rc<RefCell<Waiter>>>,
}

impl WaitQueue {
    fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn push(
        &mut self,
        context_id: u32,
        now: u64,
        wait_ms: u64,
        in_fault_filter: bool,
    ) -> Rc<RefCell<Waiter>> {
        let w = Rc::new(RefCell::new(Waiter {
            context_id,
            since_ms: now,
            go_at_ms: now.saturating_add(wait_ms),
            resumed_at_ms: None,
            in_fault_filter,
        }));
        self.waiters.push(Rc::clone(&w));
        w
    }

    /// Whether the queue has room under `max`; places of requests the fault
    /// filter has let go are freed first.
    pub fn has_room(&mut self, max: u32, now: u64) -> bool {
        if self.len() >= max as usize {
            self.prune_released(now);
        }
        self.len() < max as usize
    }

    /// Requests the fault filter has let go no longer wait: their places free
    /// up here (or in their `on_log`, whichever comes first).
    pub fn prune_released(&mut self, now: u64) {
        self.waiters.retain(|x| {
            let w = x.borrow();
            !(w.in_fault_filter && w.go_at_ms <= now)
        });
    }

    /// A waiter whose client went away leaves the queue.
    pub fn remove(&mut self, w: &Rc<RefCell<Waiter>>) {
        self.waiters.retain(|x| !Rc::ptr_eq(x, w));
    }
}

/// From the root context's tick: resumes every request whose time has come.
/// Returns whether anyone is still waiting.
pub fn on_tick(queue: &RefCell<WaitQueue>, h: &mut dyn Host) -> bool {
    let now = h.now_ms();
    let due: Vec<Rc<RefCell<Waiter>>> = queue
        .borrow()
        .waiters
        .iter()
        .filter(|w| {
            let w = w.borrow();
            !w.in_fault_filter && w.go_at_ms <= now
        })
        .cloned()
        .collect();
    let switched = !due.is_empty();
    for w in due {
        queue.borrow_mut().remove(&w);
        let ctx = {
            let mut wb = w.borrow_mut();
            wb.resumed_at_ms = Some(now);
            wb.context_id
        };
        // The stream settles its own charges: if it is gone, its on_log already did.
        let resumed = h
            .set_effective_context(ctx)
            .and_then(|()| h.resume_request());
        if let Err(s) = resumed {
            log::debug!("llm-capacity: queued request {ctx} is gone (host status {s})");
        }
    }
    if switched {
        // The tick set next must be this root's (the stream may be another
        // root's: roots of one VM share its queue).
        if let Err(s) = h.restore_context() {
            log::debug!("llm-capacity: cannot restore the root context (host status {s})");
        }
    }
    queue
        .borrow()
        .waiters
        .iter()
        .any(|w| !w.borrow().in_fault_filter)
}
