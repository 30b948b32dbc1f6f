//! Whether the request may go now: budgets, the local limits (the
//! tenant-then-route transaction of [`admit`]), the global tier, and its turn
//! in the queue (held here, or handed to Envoy's fault filter).

use super::*;
use plan::attempt_count;

impl Exchange {
    /// Charges the call to its session and tenant budgets; `Err` is the refusal.
    pub(super) fn charge_budgets(
        &mut self,
        h: &mut dyn Host,
        policy: &Rc<RoutePolicy>,
        model: Option<&str>,
        tokens: (u64, u64),
    ) -> Result<(), Flow> {
        if !budgets::Budgets::active(policy) {
            return Ok(());
        }
        let now = h.now_ms();
        let r = self
            .held
            .budgets
            .admit(&*h, &self.config, policy, model, tokens, now);
        for e in std::mem::take(&mut self.held.budgets.errors) {
            log::warn!("llm-capacity: budget update failed ({e:?}); request let through");
            self.count(h, &[("route", &self.head.route)], LIMITER_ERRORS_TOTAL);
        }
        if std::mem::take(&mut self.held.budgets.evicted) {
            self.count(h, &[("route", &self.head.route)], BUDGET_EVICTIONS_TOTAL);
        }
        let Err(refused) = r else { return Ok(()) };
        self.release_probe(h);
        self.count(
            h,
            &[
                ("route", &self.head.route),
                ("scope", refused.scope),
                ("limit", refused.cap.as_str()),
            ],
            BUDGET_EXCEEDED_TOTAL,
        );
        self.report.limit = Some((refused.scope, refused.cap.as_str()));
        Err(self.reply(h, RequestOutcome::BudgetExceeded, refused.reply))
    }

    /// Runs the limits. `Some` is what to return to Envoy when the request does
    /// not go on now (refused, or waiting for its turn).
    pub(super) fn admit(
        &mut self,
        h: &mut dyn Host,
        policy: &Rc<RoutePolicy>,
        cost: Cost,
    ) -> Option<Flow> {
        let p = &policy.policy;
        if p.limits.is_none() && p.tenant.is_none() && p.global.is_none() {
            return None;
        }
        let now = h.now_ms();
        // The wait budget: the route's, and the client's own timeout when it says
        // it; none when this worker's queue is full.
        let max_wait_ms = match p.queue {
            Some(q) if self.worker.queue.borrow_mut().has_room(q.max_size, now) => self
                .head
                .client_timeout_ms
                .map_or(q.max_wait_ms, |c| c.min(q.max_wait_ms)),
            _ => 0,
        };
        let ticket = Ticket {
            route: self.head.route.clone(),
            tenant: self.head.tenant.clone(),
            policy: Rc::clone(policy),
            cost,
            class: self.head.class,
            max_wait_ms,
        };
        let a = admit::attempt(&*h, &ticket, now);
        self.note_admission(h, &a);
        if let Some(refusal) = &a.refused {
            let reply = admit::refusal_reply(&ticket, refusal, h.random_u64());
            return Some(self.refused(h, refusal, reply));
        }
        let wait = a.wait_ms;
        if let Some(v) = &a.view {
            self.report.rate_headers = ratelimit::headers(v, p.rate_limit_headers);
        }
        self.held.charges = a.charges;
        // The fleet-wide tier, behind the local gate; before the request is
        // held for its local turn, so a global refusal does not wait first.
        if let Some(g) = &p.global {
            match self.global_gate(h, g, cost, wait) {
                global::GlobalStep::Go => {}
                global::GlobalStep::Replied(flow) => return Some(flow),
                global::GlobalStep::Asked => return Some(Flow::Pause),
            }
        }
        self.hold(h, wait)
    }

    /// Holds an admitted request until its place comes up (`wait_ms` from now).
    /// `None`: it goes now.
    pub(super) fn hold(&mut self, h: &mut dyn Host, wait_ms: u64) -> Option<Flow> {
        if wait_ms == 0 {
            return None;
        }
        let now = h.now_ms();
        // Charged already; hold the request until its place comes up.
        let fault =
            self.config.queue_hold == QueueHold::FaultFilter && hold_in_fault_filter(h, wait_ms);
        let w = self
            .worker
            .queue
            .borrow_mut()
            .push(self.context_id, now, wait_ms, fault);
        self.phase = Phase::Queued(w);
        if fault {
            // The fault filter after this one holds it; outcome and queue
            // metrics are counted when it ends (`absorb_wait`).
            return Some(Flow::Continue);
        }
        let poll = self
            .head
            .policy
            .as_ref()
            .and_then(|p| p.policy.queue)
            .map_or(20, |q| q.poll_ms);
        self.worker.queue_poll_ms.set(poll);
        if let Err(s) = h.set_tick_period(poll) {
            log::warn!("llm-capacity: cannot start the queue tick (host status {s})");
        }
        Some(Flow::Pause)
    }

    pub(super) fn note_admission(&mut self, h: &mut dyn Host, a: &AdmitResult) {
        if a.evicted {
            self.count(h, &[("route", &self.head.route)], TENANT_EVICTIONS_TOTAL);
        }
        for e in &a.errors {
            // Fail open: a shared-data hiccup must not take LLM traffic down.
            log::warn!("llm-capacity: limiter update failed ({e:?}); request let through");
            self.count(h, &[("route", &self.head.route)], LIMITER_ERRORS_TOTAL);
        }
        if let Some((scope, dim)) = a.shadow {
            self.report.shadow_limited = Some(dim.as_str());
            self.count(
                h,
                &[
                    ("route", &self.head.route),
                    ("scope", scope),
                    ("limit", dim.as_str()),
                ],
                SHADOW_LIMITED_TOTAL,
            );
        }
    }

    pub(super) fn refused(&mut self, h: &mut dyn Host, r: &Refusal, reply: LocalReply) -> Flow {
        self.release_probe(h);
        self.held.budgets.release(&*h, &*h, true);
        self.note_limit(h, r.scope, r.dim);
        self.reply(h, RequestOutcome::RateLimited, reply)
    }

    pub(super) fn note_limit(
        &mut self,
        h: &mut dyn Host,
        scope: &'static str,
        dim: crate::core::limits::limiter::Dim,
    ) {
        self.report.limit = Some((scope, dim.as_str()));
        self.count(
            h,
            &[
                ("route", &self.head.route),
                ("scope", scope),
                ("limit", dim.as_str()),
            ],
            RATE_LIMITED_TOTAL,
        );
    }

    /// Picks up what happened while the request waited for its turn.
    pub(super) fn absorb_wait(&mut self, h: &mut dyn Host) {
        let Phase::Queued(w) = &self.phase else {
            return;
        };
        let w = Rc::clone(w);
        let (resumed_at, since, go_at, in_fault_filter) = {
            let wb = w.borrow();
            (
                wb.resumed_at_ms,
                wb.since_ms,
                wb.go_at_ms,
                wb.in_fault_filter,
            )
        };
        let now = h.now_ms();
        let went_at = if in_fault_filter {
            self.worker.queue.borrow_mut().remove(&w);
            let went = upstream_attempted(h).unwrap_or(now >= go_at);
            if went && now.saturating_add(HOLD_SLACK_MS) < go_at {
                self.warn_not_held();
            }
            // The fault filter holds exactly the delay it was given.
            went.then_some(go_at.max(1))
        } else {
            resumed_at.map(|at| at.max(1))
        };
        let Some(at_ms) = went_at else {
            // The client went away while waiting: the place is given back.
            self.worker.queue.borrow_mut().remove(&w);
            self.abandon(h);
            self.count(
                h,
                &[("route", &self.head.route), ("result", "abandoned")],
                QUEUED_TOTAL,
            );
            return;
        };
        let waited = if in_fault_filter {
            go_at.saturating_sub(since)
        } else {
            now.saturating_sub(since)
        };
        self.report.queue_wait_ms = Some(waited);
        if self.config.telemetry.metrics {
            let route = self.head.route.as_str();
            h.count(&[("route", route), ("result", "admitted")], QUEUED_TOTAL, 1);
            h.record(&[("route", route)], QUEUE_WAIT_MS, waited);
        }
        self.went(h, at_ms);
        self.count_outcome(h);
    }

    /// A request that left before its time was not held: the fault filter is
    /// missing (or misplaced) and the queue overruns the limit. Said once per VM.
    pub(super) fn warn_not_held(&self) {
        if !self.worker.warned_not_held.replace(true) {
            log::error!(
                "llm-capacity: queue_hold is fault_filter but a queued request reached the upstream before its time: is envoy.filters.http.fault (header_delay, matching x-llm-capacity-hold) after this filter?"
            );
        }
    }
}

/// Hands the request to the fault filter for `wait_ms`. `false` if the headers
/// cannot be set (then it is paused here instead: sent now, it would overrun).
pub(super) fn hold_in_fault_filter(h: &mut dyn Host, wait_ms: u64) -> bool {
    let set = h
        .set_header(
            Map::RequestHeaders,
            admit::FAULT_DELAY_HEADER,
            &wait_ms.to_string(),
        )
        .and_then(|()| h.set_header(Map::RequestHeaders, admit::HOLD_MARKER_HEADER, "1"));
    if let Err(s) = set {
        log::warn!("llm-capacity: cannot hand a queued request to the fault filter (host status {s}); holding it here");
        let _ = h.remove_header(Map::RequestHeaders, admit::FAULT_DELAY_HEADER);
        let _ = h.remove_header(Map::RequestHeaders, admit::HOLD_MARKER_HEADER);
        return false;
    }
    true
}

/// Whether the router started an upstream attempt (`None`: the host cannot say).
pub(super) fn upstream_attempted(h: &dyn Host) -> Option<bool> {
    match h.property(&ATTEMPT_COUNT_PROPERTY) {
        Ok(Some(b)) => Some(attempt_count(&b).map_or(!b.is_empty(), |a| a > 0)),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}
