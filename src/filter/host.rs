//! The core's host interface over our ABI layer: each method one host call (the
//! clock read at most once per callback), statuses as values.

use super::abi;
use super::metrics::{MetricIds, FLUSH_MS};
use crate::core::env::{Clock, Random, SharedStore, SplitMix64, StoreError};
use crate::core::host::{
    lossy, Body, Buffer, Calls, Entropy, HeaderList, Headers, Map, Metrics, Properties, Replies,
    Status, Streams, Timers, Vm,
};
use crate::core::reply::{serialize_pairs, LocalReply};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

thread_local! {
    /// The clock as read in the current callback (`None`: not read yet).
    static NOW_MS: Cell<Option<u64>> = const { Cell::new(None) };
    /// The context whose callback runs now.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Called first in every host callback (`id`: its context): later clock reads
/// in it share one reading.
pub fn enter(id: u32) {
    NOW_MS.with(|c| c.set(None));
    CURRENT.with(|c| c.set(id));
}

/// The context whose callback runs now.
pub fn current() -> u32 {
    CURRENT.with(Cell::get)
}

/// EnvoyHost, as the core sees it. One per context; the metric ids, the tick
/// and the jitter generator are its root context's.
#[derive(Clone)]
pub struct EnvoyHost {
    pub metrics: Rc<RefCell<MetricIds>>,
    pub tick: Rc<Tick>,
    pub rng: Rc<RefCell<SplitMix64>>,
    /// The response headers' edits of the current response-headers callback
    /// (`None` outside one).
    pub response: RefCell<Option<ResponseEdits>>,
}

/// One response-headers callback's reads and writes of the response headers:
/// the first read takes the whole map (one host call; in `sparse` mode only
/// a read of the whole list does, single reads are single calls), later reads
/// are served from it, writes change it, and
/// [`EnvoyHost::end_response_headers`] writes it back in one host call. Writes
/// made before any read wait as a list: up to [`SINGLE_EDITS_MAX`] are made
/// one call each, more as one read and one write.
#[derive(Clone, Default)]
pub struct ResponseEdits {
    /// The map as Envoy holds it (bytes untouched), with our edits applied.
    map: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Edits made before the map was read: (name, `Some(value)` to set, `None` to remove).
    waiting: Vec<(String, Option<String>)>,
    changed: bool,
    /// Single reads before the map is read are single calls (the upstream
    /// instance, which often needs only `:status`), not a read of the map.
    sparse: bool,
}

/// Up to this many edits made without a read of the map are written one call
/// each; more are one read and one write of the map. Measured in Envoy 1.40
/// under load (tests/bench/vmtime.py): reading a provider's answer head
/// (about a dozen headers) costs 3-7 µs and writing it back 6-9 µs, a single
/// replace 1-2 µs.
const SINGLE_EDITS_MAX: usize = 3;

impl ResponseEdits {
    /// Envoy's `setCopy` in 1.40 (what a single replace does): every `name`
    /// removed, the value appended; `None`: every `name` removed.
    fn apply(map: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &str, value: Option<&str>) -> bool {
        let before = map.len();
        map.retain(|(k, _)| k.as_slice() != name.as_bytes());
        let removed = map.len() != before;
        match value {
            Some(v) => {
                map.push((name.as_bytes().to_vec(), v.as_bytes().to_vec()));
                true
            }
            None => removed,
        }
    }

    /// The map, read now if it was not yet, with the waiting edits applied;
    /// `None` if the host would not give it (calls are then made one by one).
    fn map(&mut self) -> Option<&mut Vec<(Vec<u8>, Vec<u8>)>> {
        if self.map.is_none() {
            // A response map always has `:status`: anything else is not a map to write back.
            let mut map = abi::header_pairs_raw(abi::MAP_RESPONSE_HEADERS)
                .filter(|m| m.iter().any(|(k, _)| k.as_slice() == b":status"))?;
            for (name, value) in self.waiting.drain(..) {
                self.changed |= Self::apply(&mut map, &name, value.as_deref());
            }
            self.map = Some(map);
        }
        self.map.as_mut()
    }
}

/// A root context's tick (one timer per root context), shared by the core
/// (the queue, renewals, collapsed requests) and the metric flush: the core's
/// period when it asks for one, else [`FLUSH_MS`] while metric updates wait.
#[derive(Default)]
pub struct Tick {
    /// The period the core asked for last (0: none).
    core_ms: Cell<u32>,
    /// The period last set.
    set_ms: Cell<u32>,
}

impl Tick {
    /// Whether the core asked for ticks (its work runs on this tick).
    pub fn core_ticking(&self) -> bool {
        self.core_ms.get() > 0
    }

    fn set(&self, ms: u32) -> Result<(), Status> {
        self.set_ms.set(ms);
        abi::set_tick_period(ms)
    }
}

impl EnvoyHost {
    /// A response-headers callback starts: response header edits are gathered.
    pub fn begin_response_headers(&mut self) {
        *self.response.get_mut() = Some(ResponseEdits::default());
    }

    /// As [`EnvoyHost::begin_response_headers`], but single reads made before
    /// any read of the whole map are single calls.
    pub fn begin_response_headers_sparse(&mut self) {
        *self.response.get_mut() = Some(ResponseEdits {
            sparse: true,
            ..ResponseEdits::default()
        });
    }

    /// A response-headers callback ends: its edits reach Envoy, in one host
    /// call when the map was read (or more than [`SINGLE_EDITS_MAX`] edits
    /// waited), else one call per edit.
    pub fn end_response_headers(&mut self) {
        if let Some(e) = self.response.get_mut().take() {
            Self::write_response(e);
        }
    }

    fn write_response(mut e: ResponseEdits) {
        let m = abi::MAP_RESPONSE_HEADERS;
        if e.map.is_none() && e.waiting.len() <= SINGLE_EDITS_MAX {
            for (name, value) in e.waiting.drain(..) {
                let _ = match value {
                    Some(v) => abi::replace_header(m, &name, &v),
                    None => abi::remove_header(m, &name),
                };
            }
            return;
        }
        if e.map.is_none() && !e.waiting.is_empty() && e.map().is_none() {
            // The map could not be read: each edit as its own call.
            for (name, value) in e.waiting.drain(..) {
                let _ = match value {
                    Some(v) => abi::replace_header(m, &name, &v),
                    None => abi::remove_header(m, &name),
                };
            }
            return;
        }
        if let (true, Some(map)) = (e.changed, &e.map) {
            if let Err(s) = abi::set_header_pairs(m, map) {
                log::debug!("llm-capacity: cannot write the response headers (host status {s})");
            }
        }
    }

    /// After a metric update: a batch just started needs a tick to write it.
    fn batched(&self, started: bool) {
        if started && self.tick.set_ms.get() == 0 {
            if let Err(s) = self.tick.set(FLUSH_MS) {
                // No tick: write at once rather than hold updates unseen.
                log::debug!("llm-capacity: no metric flush tick (host status {s})");
                self.metrics.borrow_mut().flush();
            }
        }
    }

    /// The root context's tick, after the core's work: writes the waiting
    /// metric updates, and stops ticking once a tick finds none and the core
    /// wants no ticks.
    pub fn on_tick_flush(&mut self) {
        let flushed = self.metrics.borrow_mut().flush();
        if !flushed && !self.tick.core_ticking() && self.tick.set_ms.get() != 0 {
            let _ = self.tick.set(0);
        }
    }

    /// Writes the waiting metric updates now (the root context is going).
    pub fn flush_metrics(&mut self) {
        self.metrics.borrow_mut().flush();
    }
}

fn map(m: Map) -> u32 {
    match m {
        Map::RequestHeaders => abi::MAP_REQUEST_HEADERS,
        Map::ResponseHeaders => abi::MAP_RESPONSE_HEADERS,
    }
}

impl Clock for EnvoyHost {
    /// Host wall clock, read at most once per host callback. 0 if the host
    /// refuses, which callers treat as time going backwards (saturating
    /// arithmetic), never as a panic.
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

impl SharedStore for EnvoyHost {
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

impl EnvoyHost {
    /// Runs `f` on the response map of the current response-headers callback
    /// (read on first use); `None` outside one, or when it cannot be read.
    fn with_response<R>(&self, f: impl FnOnce(&mut Vec<(Vec<u8>, Vec<u8>)>) -> R) -> Option<R> {
        let mut e = self.response.borrow_mut();
        e.as_mut()?.map().map(f)
    }

    /// Gathers a response edit; `false` outside a response-headers callback
    /// (the caller makes the call itself).
    fn edit_response(&mut self, name: &str, value: Option<&str>) -> bool {
        let Some(e) = self.response.get_mut() else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        match &mut e.map {
            Some(map) => e.changed |= ResponseEdits::apply(map, &name, value),
            None => e.waiting.push((name, value.map(str::to_string))),
        }
        true
    }
}

impl Headers for EnvoyHost {
    fn header(&self, m: Map, name: &str) -> Option<String> {
        if m == Map::ResponseHeaders {
            let name = name.to_ascii_lowercase();
            if let Some(e) = self
                .response
                .borrow()
                .as_ref()
                .filter(|e| e.sparse && e.map.is_none())
            {
                // Not read yet: our own edit of it, else one call for it alone.
                if let Some((_, v)) = e.waiting.iter().rev().find(|(k, _)| *k == name) {
                    return v.clone();
                }
                return abi::header_text(map(m), &name);
            }
            let found = self.with_response(|map| {
                map.iter()
                    .find(|(k, _)| k.as_slice() == name.as_bytes())
                    .map(|(_, v)| lossy(v.clone()))
            });
            if let Some(v) = found {
                return v;
            }
        }
        abi::header_text(map(m), name)
    }
    fn header_list(&self, m: Map) -> HeaderList {
        if m == Map::ResponseHeaders {
            let list = self.with_response(|map| {
                map.iter()
                    .map(|(k, v)| (lossy(k.clone()), lossy(v.clone())))
                    .collect()
            });
            if let Some(list) = list {
                return HeaderList(list);
            }
        }
        HeaderList(abi::header_pairs(map(m)))
    }
    fn set_header(&mut self, m: Map, name: &str, value: &str) -> Result<(), Status> {
        if m == Map::ResponseHeaders && self.edit_response(name, Some(value)) {
            return Ok(());
        }
        abi::replace_header(map(m), name, value)
    }
    fn remove_header(&mut self, m: Map, name: &str) -> Result<(), Status> {
        if m == Map::ResponseHeaders && self.edit_response(name, None) {
            return Ok(());
        }
        abi::remove_header(map(m), name)
    }
}

fn buffer(b: Buffer) -> u32 {
    match b {
        Buffer::RequestBody => abi::BUFFER_REQUEST_BODY,
        Buffer::ResponseBody => abi::BUFFER_RESPONSE_BODY,
        Buffer::GrpcAnswer => abi::BUFFER_GRPC_RECEIVE,
    }
}

impl Body for EnvoyHost {
    fn body(&self, b: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
        abi::buffer(buffer(b), start, max)
    }
    fn set_body(
        &mut self,
        b: Buffer,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        abi::set_buffer(buffer(b), start, size, data)
    }
}

impl Properties for EnvoyHost {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        abi::property(path)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), Status> {
        abi::set_property(path, value)
    }
    fn clear_route_cache(&mut self) -> Result<(), Status> {
        abi::clear_route_cache()
    }
}

impl Replies for EnvoyHost {
    fn send_reply(&mut self, r: &LocalReply) -> Result<(), Status> {
        // Edits gathered so far reach the map first, as one by one they would have.
        if let Some(e) = self.response.get_mut() {
            Self::write_response(std::mem::take(e));
        }
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        abi::send_local_response(r.status, r.details, &r.body, &serialize_pairs(&headers))
    }
}

impl Streams for EnvoyHost {
    fn set_effective_context(&mut self, context_id: u32) -> Result<(), Status> {
        abi::set_effective_context(context_id)
    }
    fn resume_request(&mut self) -> Result<(), Status> {
        abi::resume_request()
    }
    fn restore_context(&mut self) -> Result<(), Status> {
        abi::set_effective_context(current())
    }
}

impl Timers for EnvoyHost {
    /// Set as asked (each call restarts Envoy's timer, as before), except that
    /// "stop" keeps the metric flush's period while updates wait.
    fn set_tick_period(&mut self, ms: u32) -> Result<(), Status> {
        self.tick.core_ms.set(ms);
        let ms = if ms == 0 && self.metrics.borrow().is_pending() {
            FLUSH_MS
        } else {
            ms
        };
        self.tick.set(ms)
    }
}

impl Calls for EnvoyHost {
    fn grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        // A serialized GrpcService: EnvoyHost would otherwise guess whether the name
        // parses as one.
        let upstream = crate::core::limits::global::grpc_service(cluster);
        let token = abi::grpc_call(&upstream, service, method, message, timeout_ms)?;
        super::route_call(token);
        Ok(token)
    }
}

impl Metrics for EnvoyHost {
    fn count(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        let started = self.metrics.borrow_mut().count(labels, name, value);
        self.batched(started);
    }
    fn record(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        self.metrics.borrow_mut().record(labels, name, value);
    }
    fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        self.metrics.borrow_mut().set_gauge(labels, name, value);
    }
    fn add_gauge(&mut self, labels: &[(&str, &str)], name: &str, delta: i64) {
        let started = self.metrics.borrow_mut().add_gauge(labels, name, delta);
        self.batched(started);
    }
}

impl Entropy for EnvoyHost {
    fn random_u64(&mut self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }
}

impl Vm for EnvoyHost {
    fn memory_bytes(&self) -> u64 {
        #[cfg(target_arch = "wasm32")]
        let bytes = core::arch::wasm32::memory_size(0) as u64 * 65_536;
        #[cfg(not(target_arch = "wasm32"))]
        let bytes = 0;
        bytes
    }
}

/// Seeds a cheap per-VM generator from WASI `random_get` (getrandom), rather than
/// paying a host call per random number.
pub fn vm_random() -> SplitMix64 {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // No entropy: still distinct per VM and start time, which is all jitter needs.
        return SplitMix64(abi::now_ns().unwrap_or(0x5eed));
    }
    SplitMix64(u64::from_le_bytes(seed))
}
