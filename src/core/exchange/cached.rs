//! The response cache, request collapsing and idempotency keys in the request's
//! life (see docs/cache.md). Before dispatch: an idempotency key's stored
//! answer, its reuse or its request in flight; then the cache's lookup, or a
//! wait for an identical request in flight. On the answer: a copy of each chunk
//! as it passes (never held back), stored at the end when the answer is
//! complete and good. At the log: flights this request led and did not store
//! are ended as failed, so their waiters go on their own.

use super::*;
use crate::core::cache::canon::{self, Digest32, Directives};
use crate::core::cache::store::{Claim, Entry, Family, FlightState, Flights, NotStored, Table};
use crate::core::cache::*;
use crate::core::config::{CacheConfig, CacheWhen};
use serde_json::Value;

/// How often a worker looks at the requests waiting for an identical one.
pub const COLLAPSE_POLL_MS: u32 = 20;
/// How long a key counts as in use while its first request is in flight (at
/// most): a leader whose VM failed frees it then.
pub const IDEMPOTENCY_IN_FLIGHT_MS: u64 = 600_000;

/// What the cache knows and does for one request.
#[derive(Debug, Default)]
pub struct CacheState {
    /// The caller's scope (credential and tenants), read with the headers.
    scope: Option<Digest32>,
    opt_in: bool,
    directives: Directives,
    idempotency_header: Option<String>,
    /// `hit`, `miss` or `bypass`: the answer's header and the access log.
    result: Option<&'static str>,
    /// Store the answer under this key.
    key: Option<Digest32>,
    /// The idempotency key's digest and the request's, to store the answer under.
    idem: Option<(Digest32, Digest32)>,
    /// Flights this request leads and has not ended.
    leads: Vec<Digest32>,
    capture: Option<Capture>,
    waiting: Option<Waiting>,
    hit: Option<Hit>,
    /// `first`, `replay`, `reused`, `in_use`, `invalid`: the access log.
    idempotency: Option<&'static str>,
}

#[derive(Debug)]
struct Capture {
    content_type: String,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Waiting {
    deadline_ms: u64,
    body: Vec<u8>,
    body_size: usize,
}

/// A request answered from the store: the stored answer's usage.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl CacheState {
    fn capturing(&self) -> bool {
        self.capture.is_some()
    }
}

fn bad_request(status: u32, code: &'static str, message: &str) -> LocalReply {
    let kind = if status == 409 {
        "conflict_error"
    } else {
        "invalid_request_error"
    };
    let mut r = LocalReply::openai_error(status, kind, code, message);
    r.headers
        .push(("x-should-retry".to_string(), "false".to_string()));
    r
}

impl Exchange {
    fn cache_config(&self) -> Option<Rc<CacheConfig>> {
        self.head.policy.as_ref()?.policy.cache.clone()
    }

    fn table(&self, h: &dyn Host, c: &CacheConfig, family: Family) -> TableSpec {
        let _ = h;
        TableSpec {
            family,
            slots: c.max_entries,
            max_total_bytes: c.max_total_bytes,
        }
    }

    /// At the request headers of a route with a cache: the caller's scope and
    /// the client's cache and idempotency headers.
    pub(super) fn cache_read_head(&mut self, get: &dyn Fn(&str) -> Option<String>) {
        let creds: Vec<(&str, String)> = canon::CREDENTIAL_HEADERS
            .iter()
            .filter_map(|n| get(n).map(|v| (*n, v)))
            .collect();
        let pairs: Vec<(&str, &str)> = creds.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.cache.scope = Some(canon::scope(
            &pairs,
            self.head.tenant.as_deref(),
            self.held.budgets.tenant.as_deref(),
        ));
        self.cache.opt_in =
            get(CACHE_HEADER).is_some_and(|v| v.trim().eq_ignore_ascii_case(OPT_IN_VALUE));
        self.cache.directives = canon::directives(get("cache-control").as_deref());
        self.cache.idempotency_header = get(IDEMPOTENCY_HEADER);
    }

    /// Before dispatch: answers from the store, refuses a reused or busy
    /// idempotency key, or holds the request for an identical one in flight.
    /// `None`: dispatch it.
    pub(super) fn cache_step(
        &mut self,
        h: &mut dyn Host,
        body: &[u8],
        body_size: usize,
    ) -> Option<Flow> {
        let c = self.cache_config()?;
        let api = match &self.pre {
            Some(p) if !p.size_based => p.api?.as_str(),
            _ => {
                self.cache.result = Some("bypass");
                self.count_lookup(h, "bypass");
                return None;
            }
        };
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let Some(rd) = value
            .as_ref()
            .and_then(|v| canon::request_digest(api, &self.head.path, v))
        else {
            self.cache.result = Some("bypass");
            self.count_lookup(h, "bypass");
            return None;
        };
        let scope = self.cache.scope.unwrap_or_default();
        let now = h.now_ms();
        if let Some(flow) = self.idempotency_step(h, &c, &scope, &rd, now) {
            return Some(flow);
        }
        let eligible = match c.when {
            CacheWhen::Deterministic => {
                value.as_ref().is_some_and(|v| canon::deterministic(api, v))
            }
            CacheWhen::OptIn => self.cache.opt_in,
        };
        if !eligible {
            self.cache.result = Some("bypass");
            self.count_lookup(h, "bypass");
            return None;
        }
        let cache_scope: Digest32 = if c.shared { [0; 32] } else { scope };
        let key = canon::digest(&[b"cache", &cache_scope, &rd]);
        let d = self.cache.directives;
        if !d.no_store {
            self.cache.key = Some(key);
        }
        if d.no_cache {
            self.cache.result = Some("bypass");
            self.count_lookup(h, "bypass");
            return None;
        }
        let spec = self.table(&*h, &c, Family::Cache);
        match spec.on(&*h, &self.head.route).lookup(&key, now) {
            Ok(Some(e)) => return Some(self.answer_stored(h, &c, e, false)),
            Ok(None) => {}
            Err(e) => log::debug!("llm-capacity: cache lookup failed ({e:?}); treated as a miss"),
        }
        self.cache.result = Some("miss");
        self.count_lookup(h, "miss");
        if d.no_store || c.collapse_wait_ms == 0 {
            return None;
        }
        let flights = Flights {
            store: &*h,
            route: &self.head.route,
            slots: c.max_entries,
        };
        match flights.claim(&key, now, now.saturating_add(c.collapse_wait_ms)) {
            Ok(Claim::Leader) => self.cache.leads.push(key),
            Ok(Claim::InFlight(_)) => {
                let joined = flights.join(&key, now, c.collapse_max_waiters);
                if let Ok(Some(deadline)) = joined {
                    if self.worker.collapse_reserve(body.len())
                        && self.worker.collapse_wait(self.context_id)
                    {
                        let client = self
                            .head
                            .client_timeout_ms
                            .map_or(u64::MAX, |t| self.head.started_ms.saturating_add(t));
                        self.cache.waiting = Some(Waiting {
                            deadline_ms: deadline.min(client),
                            body: body.to_vec(),
                            body_size,
                        });
                        if let Err(s) = h.set_tick_period(COLLAPSE_POLL_MS) {
                            log::warn!(
                                "llm-capacity: cannot start the collapse tick (host status {s})"
                            );
                        }
                        return Some(Flow::Pause);
                    }
                    self.worker.collapse_release(body.len());
                }
            }
            Ok(Claim::Busy) => {}
            Err(e) => log::debug!("llm-capacity: cache flight not claimed ({e:?})"),
        }
        None
    }

    /// An `Idempotency-Key`: the stored answer (same request), 422 (another
    /// request), 409 (its first request is in flight), or lead it.
    fn idempotency_step(
        &mut self,
        h: &mut dyn Host,
        c: &Rc<CacheConfig>,
        scope: &Digest32,
        rd: &Digest32,
        now: u64,
    ) -> Option<Flow> {
        let raw = self.cache.idempotency_header.clone()?;
        let k = match canon::idempotency_key(&raw) {
            Ok(k) => k,
            Err(e) => {
                self.note_idempotency(h, "invalid");
                let why = match e {
                    canon::KeyError::Empty => "is empty",
                    canon::KeyError::TooLong => "is longer than 255 characters",
                    canon::KeyError::BadCharacter => {
                        "has a character outside visible ASCII (or a quote or backslash)"
                    }
                };
                let msg = format!("The Idempotency-Key header {why}.");
                let r = bad_request(400, "invalid_idempotency_key", &msg);
                return Some(self.reply(h, RequestOutcome::IdempotencyRefused, r));
            }
        };
        let ig = canon::digest(&[b"idempotency", scope, k.as_bytes()]);
        let spec = self.table(&*h, c, Family::Idempotency);
        match spec.on(&*h, &self.head.route).lookup(&ig, now) {
            Ok(Some(e)) if e.body_digest == *rd => {
                self.note_idempotency(h, "replay");
                return Some(self.answer_stored(h, c, e, true));
            }
            Ok(Some(_)) => {
                self.note_idempotency(h, "reused");
                let r = bad_request(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request body.",
                );
                return Some(self.reply(h, RequestOutcome::IdempotencyRefused, r));
            }
            Ok(None) => {}
            Err(e) => log::debug!("llm-capacity: idempotency lookup failed ({e:?})"),
        }
        let flights = Flights {
            store: &*h,
            route: &self.head.route,
            slots: c.max_entries,
        };
        let deadline = now.saturating_add(IDEMPOTENCY_IN_FLIGHT_MS.min(c.idempotency_ttl_ms));
        match flights.claim(&ig, now, deadline) {
            Ok(Claim::InFlight(_)) => {
                self.note_idempotency(h, "in_use");
                let mut r = bad_request(
                    409,
                    "idempotency_key_in_use",
                    "A request with this Idempotency-Key is in flight; retry after it ends to get its answer.",
                );
                r.headers.retain(|(k, _)| k != "x-should-retry");
                r.headers.push(("retry-after".to_string(), "1".to_string()));
                return Some(self.reply(h, RequestOutcome::IdempotencyRefused, r));
            }
            Ok(Claim::Leader) => self.cache.leads.push(ig),
            Ok(Claim::Busy) | Err(_) => {}
        }
        self.note_idempotency(h, "first");
        self.cache.idem = Some((ig, *rd));
        self.publish_idempotency(h);
        None
    }

    /// The upstream instance knows the request has a key (filter state), so
    /// a router retry after a reset is not sent (see `attempt.rs`).
    fn publish_idempotency(&self, h: &mut dyn Host) {
        if let Err(s) = h.set_property(&[IDEMPOTENT_PROPERTY], b"1") {
            log::debug!("llm-capacity: cannot mark the request idempotent (host status {s})");
        }
    }

    fn note_idempotency(&mut self, h: &mut dyn Host, result: &'static str) {
        self.cache.idempotency = Some(result);
        self.count(
            h,
            &[("route", &self.head.route), ("result", result)],
            IDEMPOTENCY_TOTAL,
        );
    }

    fn count_lookup(&self, h: &mut dyn Host, result: &'static str) {
        self.count(
            h,
            &[("route", &self.head.route), ("result", result)],
            CACHE_LOOKUPS_TOTAL,
        );
    }

    /// Answers with a stored answer (a hit, or an idempotent replay). With
    /// `count_hits` the hit is admitted against the route's request limits
    /// first (no tokens), and may be refused by them.
    fn answer_stored(&mut self, h: &mut dyn Host, c: &CacheConfig, e: Entry, replay: bool) -> Flow {
        let now = h.now_ms();
        if c.count_hits {
            if let Some(policy) = self.head.policy.clone() {
                let p = &policy.policy;
                if p.limits.is_some() || p.tenant.is_some() {
                    let ticket = Ticket {
                        route: self.head.route.clone(),
                        tenant: self.head.tenant.clone(),
                        policy: Rc::clone(&policy),
                        cost: Cost::default(),
                        class: self.head.class,
                        max_wait_ms: 0,
                    };
                    let a = admit::attempt(&*h, &ticket, now);
                    self.note_admission(h, &a);
                    if let Some(refusal) = &a.refused {
                        let reply = admit::refusal_reply(&ticket, refusal, h.random_u64());
                        return self.refused(h, refusal, reply);
                    }
                    self.held.charges = a.charges;
                }
            }
        }
        let (input, output, cached_input) = e.usage;
        self.cache.hit = Some(Hit {
            input,
            output,
            cached_input,
        });
        if !replay {
            self.cache.result = Some("hit");
            self.count_lookup(h, "hit");
        }
        if self.config.telemetry.metrics {
            let route = self.head.route.as_str();
            // Settled from the store: usage of source `cached`, spend 0.
            h.count(
                &[("route", route), ("source", "cached")],
                RECONCILIATIONS_TOTAL,
                1,
            );
            for (kind, n) in [("input", input), ("output", output)] {
                h.count(
                    &[("route", route), ("kind", kind)],
                    CACHE_SAVED_TOKENS_TOTAL,
                    n,
                );
            }
            if let Some(price) = self.config.prices.lookup(&e.model) {
                let micro = price.cost(input, output, cached_input) / 1_000_000;
                h.count(&[("route", route)], CACHE_SAVED_MICRODOLLARS_TOTAL, micro);
            }
        }
        self.response.model = Some(e.model.clone()).filter(|m| !m.is_empty());
        let age = now.saturating_sub(e.stored_ms) / 1000;
        let mut headers = vec![
            ("content-type".to_string(), e.content_type.clone()),
            ("age".to_string(), age.to_string()),
        ];
        if replay {
            headers.push((REPLAY_HEADER.to_string(), "true".to_string()));
        } else {
            headers.push((CACHE_HEADER.to_string(), "hit".to_string()));
        }
        let r = LocalReply {
            status: 200,
            details: if replay {
                "idempotent_replay"
            } else {
                "cache_hit"
            },
            headers,
            body: e.body,
        };
        self.reply(h, RequestOutcome::Cached, r)
    }

    /// From the worker's tick: a request waiting for an identical one looks
    /// again. Answered from its answer when stored; on its own once it failed
    /// or the wait ran out; else it waits on.
    pub fn on_cache_wake(&mut self, h: &mut dyn Host) {
        let (Some(c), Some(key)) = (self.cache_config(), self.cache.key) else {
            self.stop_waiting();
            return;
        };
        let Some(deadline) = self.cache.waiting.as_ref().map(|w| w.deadline_ms) else {
            return;
        };
        let now = h.now_ms();
        let spec = self.table(&*h, &c, Family::Cache);
        if let Ok(Some(e)) = spec.on(&*h, &self.head.route).lookup(&key, now) {
            self.stop_waiting();
            self.count(
                h,
                &[("route", &self.head.route), ("result", "hit")],
                CACHE_COLLAPSED_TOTAL,
            );
            self.answer_stored(h, &c, e, false);
            return;
        }
        let flights = Flights {
            store: &*h,
            route: &self.head.route,
            slots: c.max_entries,
        };
        let state = flights.state(&key).ok().flatten();
        let pending = state.is_some_and(|f| f.state == FlightState::Pending && now < f.deadline_ms);
        if pending && now < deadline && self.worker.collapse_wait(self.context_id) {
            return;
        }
        // The first failed, or the wait ran out: this one goes on its own
        // (and leads the key's flight when it is free).
        let Some(w) = self.stop_waiting() else {
            return;
        };
        self.count(
            h,
            &[("route", &self.head.route), ("result", "alone")],
            CACHE_COLLAPSED_TOTAL,
        );
        let flights = Flights {
            store: &*h,
            route: &self.head.route,
            slots: c.max_entries,
        };
        if let Ok(Claim::Leader) = flights.claim(&key, now, now.saturating_add(c.collapse_wait_ms))
        {
            self.cache.leads.push(key);
        }
        let Some(policy) = self.head.policy.clone() else {
            return;
        };
        if self.dispatch(h, &policy, Some((w.body, w.body_size))) == Flow::Continue {
            if let Err(s) = h.resume_request() {
                log::debug!("llm-capacity: cannot resume the request (host status {s})");
            }
        }
    }

    /// Ends this request's wait (if it waits): its body copy leaves the VM's budget.
    fn stop_waiting(&mut self) -> Option<Waiting> {
        let w = self.cache.waiting.take()?;
        self.worker.collapse_release(w.body.len());
        Some(w)
    }

    /// Whether this request waits for an identical one in flight.
    pub fn cache_waiting(&self) -> bool {
        self.cache.waiting.is_some()
    }

    /// The answer's headers: what the cache did, and whether to copy the answer.
    pub(super) fn cache_on_headers(&mut self, h: &mut dyn Host, headers: Option<&HeaderList>) {
        if self.cache.scope.is_none() {
            return; // no cache on this route: no host call
        }
        // Ours alone: a provider's copies never reach the client.
        match self.cache.result {
            Some(r) => {
                let _ = h.set_header(Map::ResponseHeaders, CACHE_HEADER, r);
            }
            None => {
                let _ = h.remove_header(Map::ResponseHeaders, CACHE_HEADER);
            }
        }
        if headers.is_none_or(|l| l.get(REPLAY_HEADER).is_some()) {
            let _ = h.remove_header(Map::ResponseHeaders, REPLAY_HEADER);
        }
        if self.cache.key.is_none() && self.cache.idem.is_none() {
            return;
        }
        let Some(l) = headers else { return };
        let ok = l.get(":status") == Some("200")
            && l.get("content-encoding")
                .is_none_or(|e| e.eq_ignore_ascii_case("identity"));
        if ok {
            self.cache.capture = Some(Capture {
                content_type: l
                    .get("content-type")
                    .unwrap_or("application/json")
                    .to_string(),
                body: Vec::new(),
            });
        } else {
            self.not_stored(h, "not_complete");
        }
    }

    /// A chunk of the answer, copied as it passes; dropped past `max_entry_bytes`.
    fn cache_chunk(&mut self, h: &mut dyn Host, chunk: &[u8]) {
        let max = self
            .cache_config()
            .map_or(0, |c| c.max_entry_bytes as usize);
        let Some(cap) = &mut self.cache.capture else {
            return;
        };
        if cap.body.len() + chunk.len() > max {
            self.cache.capture = None;
            self.not_stored(h, "too_large");
            return;
        }
        cap.body.extend_from_slice(chunk);
    }

    fn not_stored(&mut self, h: &mut dyn Host, reason: &'static str) {
        self.count(
            h,
            &[("route", &self.head.route), ("result", reason)],
            CACHE_NOT_STORED_TOTAL,
        );
    }

    /// The answer's end: stores it when complete and good (status 200,
    /// provider usage, a good finish reason, from the primary's asked model).
    pub(super) fn cache_on_end(&mut self, h: &mut dyn Host) {
        let Some(cap) = self.cache.capture.take() else {
            return;
        };
        let Some(c) = self.cache_config() else { return };
        let (Some(pre), Some(s)) = (&self.pre, &self.response.settled) else {
            return;
        };
        let streamed = self.response.tracker.as_ref().is_some_and(|t| t.streamed());
        let api = pre.api.map_or("", |a| a.as_str());
        let asked = pre.model.clone();
        let primary = self
            .head
            .policy
            .as_ref()
            .and_then(|p| p.clusters.first())
            .map(|t| t.cluster.name.clone());
        let served_ok = match &self.response.served {
            None => true,
            Some((cluster, model)) => {
                primary.as_ref().is_none_or(|p| p == cluster)
                    && model.as_ref().is_none_or(|m| Some(m) == asked.as_ref())
            }
        };
        let good = s.source == Source::Provider
            && self.response.timing.status == 200
            && served_ok
            && canon::finished_well(api, streamed, &cap.body);
        if !good {
            self.not_stored(h, "not_complete");
            return;
        }
        let now = h.now_ms();
        let mut e = Entry {
            stored_ms: now,
            usage: (s.input, s.output, s.cached_input),
            streamed,
            content_type: cap.content_type,
            model: self.response.model.clone().or(asked).unwrap_or_default(),
            body: cap.body,
            ..Default::default()
        };
        let mut stores: Vec<(Family, Digest32, Digest32, u64)> = Vec::new();
        if let Some(k) = self.cache.key {
            stores.push((Family::Cache, k, [0; 32], c.ttl_ms));
        }
        if let Some((ig, rd)) = self.cache.idem {
            stores.push((Family::Idempotency, ig, rd, c.idempotency_ttl_ms));
        }
        for (family, digest, body_digest, ttl) in stores {
            e.digest = digest;
            e.body_digest = body_digest;
            e.expires_ms = now.saturating_add(ttl);
            let spec = self.table(&*h, &c, family);
            let keep_live = family == Family::Idempotency;
            let label = match family {
                Family::Cache => "cache",
                Family::Idempotency => "idempotency",
            };
            match spec.on(&*h, &self.head.route).put(&e, now, keep_live) {
                Ok(st) => {
                    self.end_flight(h, &c, &digest, true);
                    if self.config.telemetry.metrics {
                        let route = self.head.route.as_str();
                        h.count(&[("route", route), ("kind", label)], CACHE_STORES_TOTAL, 1);
                        if st.evicted > 0 {
                            h.count(
                                &[("route", route)],
                                CACHE_EVICTIONS_TOTAL,
                                u64::from(st.evicted),
                            );
                        }
                        h.set_gauge(
                            &[("route", route), ("kind", label)],
                            CACHE_BYTES,
                            st.bytes_held,
                        );
                    }
                }
                Err(NotStored::SlotTaken) => self.not_stored(h, "slot_taken"),
                Err(NotStored::Store(err)) => {
                    log::debug!("llm-capacity: answer not stored ({err:?})");
                    self.not_stored(h, "error");
                }
            }
        }
    }

    fn end_flight(&mut self, h: &mut dyn Host, c: &CacheConfig, digest: &Digest32, stored: bool) {
        if !self.cache.leads.contains(digest) {
            return;
        }
        self.cache.leads.retain(|d| d != digest);
        let flights = Flights {
            store: &*h,
            route: &self.head.route,
            slots: c.max_entries,
        };
        if let Err(e) = flights.finish(digest, stored) {
            log::debug!("llm-capacity: cache flight not ended ({e:?})");
        }
    }

    /// At the log: flights led and not stored end as failed (their waiters go
    /// on their own); a waiter whose client left is forgotten.
    pub(super) fn cache_on_log(&mut self, h: &mut dyn Host) {
        self.stop_waiting();
        let Some(c) = self.cache_config() else { return };
        for d in self.cache.leads.clone() {
            self.end_flight(h, &c, &d, false);
        }
    }

    /// What the access log says of the cache: its result, the idempotency
    /// key's, and a hit's usage.
    pub(super) fn cache_report(&self) -> (Option<&'static str>, Option<&'static str>, Option<Hit>) {
        (self.cache.result, self.cache.idempotency, self.cache.hit)
    }

    pub(super) fn cache_capturing(&self) -> bool {
        self.cache.capturing()
    }

    pub(super) fn cache_copy(&mut self, h: &mut dyn Host, chunk: &[u8]) {
        self.cache_chunk(h, chunk);
    }
}

/// Filter state marking a request that carries an idempotency key, for the
/// upstream instance (`wasm.llmcap_idempotent`).
pub const IDEMPOTENT_PROPERTY: &str = "llmcap_idempotent";

/// A table's shape from the route's config.
struct TableSpec {
    family: Family,
    slots: u32,
    max_total_bytes: u64,
}

impl TableSpec {
    fn on<'a>(&self, store: &'a dyn Host, route: &'a str) -> Table<'a> {
        Table {
            store,
            route,
            family: self.family,
            slots: self.slots,
            max_total_bytes: self.max_total_bytes,
        }
    }
}

/// The upstream instance, at a router retry of `stream`: a request with an
/// idempotency key whose last attempt ended without an answer (a reset, a
/// connect failure, a timeout) may have reached the provider, which may have
/// produced the answer: the retry is not sent, and is answered `502
/// idempotent_retry_refused` here (local answers of upstream filters are not
/// retried by the router). `None`: the retry goes.
pub fn refuse_unsafe_retry(
    h: &mut dyn Host,
    worker: &Worker,
    route: &str,
    stream: u32,
) -> Option<Flow> {
    let reset = worker
        .attempts
        .borrow()
        .sent
        .iter()
        .rev()
        .find(|a| a.stream == stream)
        .is_some_and(|a| a.answered_ms.is_none());
    if !reset || h.property(&[IDEMPOTENT_PROPERTY]).ok().flatten().is_none() {
        return None;
    }
    let mut r = LocalReply::openai_error(
        502,
        "api_error",
        "idempotent_retry_refused",
        "The upstream connection failed after this request was sent; it carries an Idempotency-Key, so it was not sent again (the provider may have answered it). Re-send it with the same key.",
    );
    r.headers
        .push(("x-should-retry".to_string(), "false".to_string()));
    if h.send_reply(&r).is_err() {
        return None;
    }
    h.count(
        &[("route", route), ("result", "retry_refused")],
        IDEMPOTENCY_TOTAL,
        1,
    );
    Some(Flow::Pause)
}
