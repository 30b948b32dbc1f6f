//! Where the request goes: the plan over the route's cluster chain (slots,
//! route cache, retries, probes), what the upstream instance is told, and the
//! final answer as health data when there is no upstream instance.

use super::*;
use crate::core::config::{Strategy, Target};
use crate::core::telemetry::STRATEGY_CHOICES_TOTAL;
use crate::core::upstream::routing::{self, Spend};

/// The router's per-try timeout for this request, in ms.
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
/// Tells the router a per-try timeout sends the next attempt without
/// resetting the first (its hedge policy, per request).
pub const HEDGE_HEADER: &str = "x-envoy-hedge-on-per-try-timeout";

impl Exchange {
    /// Plans the attempts over the route's cluster chain. `Err` is the local
    /// answer when no cluster can take the request now.
    pub(super) fn route_upstream(
        &mut self,
        h: &mut dyn Host,
        policy: &Rc<RoutePolicy>,
        tokens: u64,
    ) -> Result<(), Flow> {
        if policy.clusters.is_empty() {
            // The route's own cluster, at the client's model.
            return self.fitting(h, &[]).map(|_| ());
        }
        let now = h.now_ms();
        // Without held headers the route's own cluster is where the request
        // goes: only that one is gated.
        let candidates = if self.config.hold_headers {
            &policy.clusters[..]
        } else {
            policy.clusters.get(..1).unwrap_or_default()
        };
        // Entries whose model cannot hold the request are left out of the plan;
        // the route's strategy orders the rest (`base[order[k]]` is the k-th
        // entry the planner gates).
        let fits = self.fitting(h, candidates)?;
        let strategy = policy.routing.strategy;
        let steered = self.config.hold_headers && strategy != Strategy::Ordered;
        let random = if steered { h.random_u64() } else { 0 };
        let base: Vec<usize> = fits.unwrap_or_else(|| (0..candidates.len()).collect());
        let asked = self.pre.as_ref().and_then(|p| p.model.as_deref());
        let (order, pick) = if steered {
            let sub: Vec<Target> = base
                .iter()
                .filter_map(|&i| candidates.get(i).cloned())
                .collect();
            let model = |k: usize| -> &str {
                sub.get(k)
                    .and_then(|t| t.model.as_deref())
                    .or(asked)
                    .unwrap_or("")
            };
            routing::order(&*h, &sub, &strategy, &model, now, tokens, random)
        } else {
            ((0..base.len()).collect(), None)
        };
        let index: Vec<usize> = order.iter().filter_map(|&k| base.get(k).copied()).collect();
        let pick = pick.and_then(|k| base.get(k).copied());
        let planned = if index.iter().enumerate().all(|(a, &b)| a == b) {
            failover::plan(
                &*h,
                candidates.get(..index.len()).unwrap_or_default(),
                now,
                tokens,
            )
        } else {
            let ordered: Vec<Target> = index
                .iter()
                .filter_map(|&i| candidates.get(i).cloned())
                .collect();
            failover::plan(&*h, &ordered, now, tokens).map(|mut p| {
                for s in &mut p.slots {
                    *s = index.get(*s).copied().unwrap_or(*s);
                }
                p
            })
        };
        let plan = match planned {
            Ok(p) => p,
            Err(u) => {
                let r = failover::unavailable_reply(&u, now, h.random_u64());
                return Err(self.reply(h, RequestOutcome::NoUpstream, r));
            }
        };
        let chain = policy.clusters.len();
        if !self.config.hold_headers {
            // Headers already left: the circuits still gate the request, but the
            // route's cluster and retries can no longer be steered.
            self.plan = Some(plan);
            return Ok(());
        }
        let remaining = self
            .head
            .client_timeout_ms
            .map(|t| t.saturating_sub(now.saturating_sub(self.head.started_ms)));
        let mut retries = failover::max_retries(
            &plan,
            chain,
            remaining,
            policy.policy.retry_min_remaining_ms,
        );
        // Retries (and hedges) stay within the route's share of its requests,
        // counted across workers; Envoy's own retry_budget stays the outer guard.
        if policy.routing.budgeted(chain)
            && !routing::spend(&*h, &policy.name, &policy.routing, Spend::Request, now)
            && retries != Some(0)
        {
            retries = Some(0);
            self.report.retries_capped = true;
        }
        // Hedging: the router's per-try timeout, soft (the attempt is not
        // reset), sends the next attempt while the first keeps running. In
        // Envoy 1.40 a hedged request's attempts all go to its first attempt's
        // cluster, so that is the route's composite cluster, which sends
        // attempt n to the chain's n-th cluster: only when the plan starts
        // with the chain in order (at least two healthy clusters) and a retry
        // is left, within the route's share (taken now, given back at the end
        // if the hedge never fired). Its retries stay within that prefix.
        let mut hedged = None;
        if let Some(hg) = &policy.routing.hedge {
            let in_order = plan
                .slots
                .iter()
                .enumerate()
                .take_while(|(n, &i)| *n == i)
                .count();
            let room = retries.is_some_and(|n| n >= 1) && in_order >= 2 && !plan.probe;
            if room && routing::hedge_arm(&*h, &policy.name, hg.max_share, now) {
                let _ = h.set_header(
                    Map::RequestHeaders,
                    PER_TRY_TIMEOUT_HEADER,
                    &hg.after_ms.to_string(),
                );
                let _ = h.set_header(Map::RequestHeaders, HEDGE_HEADER, "true");
                self.report.hedge_armed = true;
                retries = retries.map(|n| n.min(in_order - 1));
                hedged = Some(hg.cluster.as_str());
            }
        }
        if let Some(n) = retries {
            let _ = h.set_header(Map::RequestHeaders, "x-envoy-max-retries", &n.to_string());
        }
        if let Some(composite) = hedged {
            let _ = h.set_property(&[&failover::slot_property(1)], composite.as_bytes());
            if let Err(s) = h.clear_route_cache() {
                log::warn!("llm-capacity: clear_route_cache failed (host status {s})");
            }
        } else if chain > 1 {
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
                    let _ = h.set_property(
                        &[&failover::slot_property(n + 1)],
                        t.cluster.name.as_bytes(),
                    );
                }
            }
            if !primary_first {
                if let Err(s) = h.clear_route_cache() {
                    log::warn!("llm-capacity: clear_route_cache failed (host status {s})");
                }
            }
        }
        if let Some(&first) = plan.slots.first() {
            if plan.probe {
                // A probe is either the half-open one (the gate just moved the
                // circuit there) or the one after a cool-down (still closed).
                if let Some(t) = policy.clusters.get(first) {
                    let key = circuit::key(&t.cluster.name);
                    let half_open = circuit::view(&*h, &key, &t.cluster.circuit, now)
                        .is_ok_and(|v| v.mode == circuit::Mode::HalfOpen);
                    if half_open {
                        health::transition(
                            &self.config,
                            h,
                            &t.cluster.name,
                            circuit::Mode::HalfOpen,
                        );
                    }
                }
            }
            // Ordered: a first attempt off the primary is a failover. With a
            // strategy every entry takes first attempts: only one that is not
            // the strategy's pick (nor a due probe) is.
            self.report.failover = if steered {
                !plan.probe && first != pick.unwrap_or(0)
            } else {
                first > 0
            };
            if let Some(t) = policy.clusters.get(first) {
                if self.report.failover {
                    self.count(
                        h,
                        &[("route", &self.head.route), ("cluster", &t.cluster.name)],
                        FAILOVERS_TOTAL,
                    );
                }
                if steered && pick == Some(first) {
                    self.count(
                        h,
                        &[("route", &self.head.route), ("cluster", &t.cluster.name)],
                        STRATEGY_CHOICES_TOTAL,
                    );
                }
            }
        }
        self.plan = Some(plan);
        Ok(())
    }

    /// Tells the upstream instance which route this is and which model the
    /// body carries, so each attempt can carry its own cluster's model.
    pub(super) fn publish_plan(
        &self,
        h: &mut dyn Host,
        policy: &RoutePolicy,
        body_model: Option<&str>,
    ) {
        let Some(plan) = &self.plan else { return };
        if !self.config.upstream_filter {
            return;
        }
        let probe = plan
            .probe
            .then(|| plan.slots.first().and_then(|&i| policy.clusters.get(i)))
            .flatten()
            .map(|t| t.cluster.name.as_str());
        // A same-cluster retry must leave the client's deadline its minimum.
        let retry_by = self.head.client_timeout_ms.map(|t| {
            self.head
                .started_ms
                .saturating_add(t)
                .saturating_sub(policy.policy.retry_min_remaining_ms)
        });
        let streamed = self.pre.as_ref().is_some_and(|p| p.stream);
        let asked = self.pre.as_ref().and_then(|p| p.model.as_deref());
        let text = failover::encode_plan_asked(
            &policy.name,
            body_model,
            asked,
            probe,
            self.context_id,
            retry_by,
            streamed,
        );
        if let Err(s) = h.set_property(&[failover::PLAN_PROPERTY], text.as_bytes()) {
            log::debug!("llm-capacity: cannot publish the plan (host status {s})");
        }
    }

    /// Without an upstream instance, the final answer is the only health signal.
    pub(super) fn observes_final(&self) -> bool {
        !self.config.upstream_filter
            && matches!(self.phase, Phase::Sent { at_ms } if at_ms != 0)
            && self.plan.is_some()
    }

    pub(super) fn observe_final(&mut self, h: &mut dyn Host, headers: &HeaderList) {
        if !self.observes_final() {
            return;
        }
        let Phase::Sent { at_ms: sent_ms } = self.phase else {
            return;
        };
        let status = headers
            .get(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let (Some(plan), Some(policy)) = (self.plan.take(), self.head.policy.clone()) else {
            return;
        };
        let attempts = h
            .property(&ATTEMPT_COUNT_PROPERTY)
            .ok()
            .flatten()
            .and_then(|b| attempt_count(&b))
            .unwrap_or(1)
            .max(1);
        let slot = plan
            .slots
            .get(attempts as usize - 1)
            .or(plan.slots.last())
            .copied();
        if let Some(t) = slot.and_then(|i| policy.clusters.get(i)) {
            self.response.timing.cluster = Some(t.cluster.name.clone());
            let now = h.now_ms();
            let signal = provider_headers::parse(headers.iter(), now);
            let (probe, class) = (plan.probe && attempts == 1, Class::of_status(status));
            // A streamed success is judged by its first token, seen later.
            let ttft_later = class == Class::Ok && self.pre.as_ref().is_some_and(|p| p.stream);
            if ttft_later {
                self.response.timing.ttft_pending = Some(probe);
            }
            let o = health::Observation {
                cluster: &t.cluster.name,
                probe,
                class,
                latency_ms: Some(now.saturating_sub(sent_ms)),
                signal: &signal,
                now_ms: now,
                ttft_later,
            };
            health::observe(&self.config, h, &o);
            // No upstream instance wrote who served: the final answer's slot did.
            let model = t.model.clone().or_else(|| self.pre.as_ref()?.model.clone());
            let asked = self.pre.as_ref().and_then(|p| p.model.as_deref());
            let served =
                failover::served_by_headers(&policy, &t.cluster.name, model.as_deref(), asked);
            for (name, value) in served {
                let _ = h.set_header(Map::ResponseHeaders, name, value);
            }
            self.response.served = Some((t.cluster.name.clone(), model));
        } else {
            return;
        }
        self.plan = Some(Plan {
            probe: false,
            ..plan
        });
    }

    /// Who served the answer: read back from the upstream instance's headers
    /// (already in `headers`), or, on a route without a chain, the route's own
    /// cluster with the client's model. (Without an upstream instance,
    /// [`Exchange::observe_final`] wrote them.)
    pub(super) fn note_served(&mut self, h: &mut dyn Host, headers: Option<&HeaderList>) {
        let Some(policy) = self.head.policy.clone() else {
            return;
        };
        if !matches!(self.phase, Phase::Sent { .. }) || self.response.served.is_some() {
            return;
        }
        if policy.clusters.is_empty() {
            let Some(cluster) = h.property_text(&["xds", "cluster_name"]) else {
                return;
            };
            let model = self.pre.as_ref().and_then(|p| p.model.clone());
            let served =
                failover::served_by_headers(&policy, &cluster, model.as_deref(), model.as_deref());
            for (name, value) in served {
                let _ = h.set_header(Map::ResponseHeaders, name, value);
            }
            self.response.served = Some((cluster, model));
            return;
        }
        if let Some(l) = headers.filter(|_| self.config.upstream_filter) {
            if let Some(c) = l.get(failover::SERVED_BY_HEADER) {
                let model = l
                    .get(failover::SERVED_MODEL_HEADER)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string);
                self.response.served = Some((c.to_string(), model));
            }
        }
    }

    /// A probe that never left (refused by a limit, client gone) gives its claim back.
    pub(super) fn release_probe(&mut self, h: &mut dyn Host) {
        let Some(plan) = self.plan.as_mut() else {
            return;
        };
        if !plan.probe {
            return;
        }
        plan.probe = false;
        let first = plan.slots.first().copied();
        if let Some(t) = first.and_then(|i| self.head.policy.as_ref()?.clusters.get(i).cloned()) {
            let key = circuit::key(&t.cluster.name);
            let now = h.now_ms();
            let _ = circuit::release_probe(&*h, &key, &t.cluster.circuit, now);
        }
    }
}

/// The router's attempt count from its property bytes (`None` if unreadable).
pub fn attempt_count(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// A Gemini request names its model in the path: the attempt's model goes there.
pub(super) fn carry_model_in_path(h: &mut dyn Host, path: &str, model: &str) {
    if let Some(p) = failover::gemini_path_with_model(path, model) {
        let _ = h.set_header(Map::RequestHeaders, ":path", &p);
    }
}

/// Replaces the buffered request body, and its content-length with it (the
/// headers are still held: allow_on_headers_stop_iteration).
pub(super) fn set_request_body(
    h: &mut dyn Host,
    body_size: usize,
    new_body: &[u8],
) -> Result<(), u32> {
    h.set_body(Buffer::RequestBody, 0, body_size, new_body)
        .and_then(|()| {
            h.set_header(
                Map::RequestHeaders,
                "content-length",
                &new_body.len().to_string(),
            )
        })
}
