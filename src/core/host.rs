//! The host interface: everything the request's life asks of Envoy, as small
//! traits of our own, one per concern, and [`FakeHost`], which records what the
//! filter did and lets a test play Envoy.
//!
//! The proxy-wasm adapter (`src/filter`) implements [`Host`] over its raw ABI
//! calls; nothing here knows proxy-wasm. Every fallible call returns the host's
//! status as a value (`Err(status)`), never a panic. Logs go through the `log`
//! facade, which the adapter routes to the host.

use crate::core::env::{Clock, MemStore, SharedStore, SplitMix64, StoreError};
use crate::core::reply::LocalReply;
use crate::core::telemetry::tagged_name;
use std::collections::HashMap;

/// A host status other than Ok (carried for logs).
pub type Status = u32;

/// Which header map a call acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
}

/// Which body buffer a call acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    /// The answer of an outbound gRPC call, in its answer callback.
    GrpcAnswer,
}

/// What a stream callback tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the filter chain.
    Continue,
    /// Stop here until the filter resumes the request (or answers it).
    Pause,
}

/// A header map read in one host call, for callbacks that need several headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    /// The first value of `name` (lowercase), as Envoy's single-header read gives it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Request and response headers of the current stream.
pub trait Headers {
    /// One header; `None` when absent or unreadable (a map already gone).
    fn header(&self, map: Map, name: &str) -> Option<String>;
    /// Every header of a map; empty when the map is unavailable.
    fn header_list(&self, map: Map) -> HeaderList;
    fn set_header(&mut self, map: Map, name: &str, value: &str) -> Result<(), Status>;
    fn remove_header(&mut self, map: Map, name: &str) -> Result<(), Status>;
}

/// Body buffers of the current stream.
pub trait Body {
    /// Up to `max` bytes from `start`; `Ok(None)` when there is none.
    fn body(&self, buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status>;
    /// Replaces `size` bytes at `start` with `data` (0 and the whole length: all of it).
    fn set_body(
        &mut self,
        buffer: Buffer,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status>;
}

/// Envoy's properties and filter state (paths of segments).
pub trait Properties {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status>;
    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), Status>;
    /// Resolves the route (and its cluster) again, seeing what was set since.
    fn clear_route_cache(&mut self) -> Result<(), Status>;

    /// A property as text (lossy UTF-8); `None` when absent or unreadable.
    fn property_text(&self, path: &[&str]) -> Option<String> {
        self.property(path).ok().flatten().map(lossy)
    }
}

/// Answering a request from the filter itself.
pub trait Replies {
    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), Status>;
}

/// Resuming paused requests.
pub trait Streams {
    /// Makes later calls act on that stream (from a root callback); fails if it is gone.
    fn set_effective_context(&mut self, context_id: u32) -> Result<(), Status>;
    /// Resumes the current (or effective) paused request.
    fn resume_request(&mut self) -> Result<(), Status>;
    /// Makes later calls act on the callback's own context again. The host
    /// keeps an effective context until the callback returns, and acts on its
    /// root for root-level calls too: a tick set after resuming another
    /// root's stream would start or stop that root's timer.
    fn restore_context(&mut self) -> Result<(), Status>;
}

/// The worker's timer (one per root context).
pub trait Timers {
    /// Ticks every `ms` milliseconds from now on; 0 stops them.
    fn set_tick_period(&mut self, ms: u32) -> Result<(), Status>;
}

/// Outbound calls. The answer comes to the calling context's answer callback
/// with the token returned here. (Only gRPC: no feature makes an HTTP call
/// yet; one that does adds `http_call` here, recorded by [`FakeHost`].)
pub trait Calls {
    fn grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status>;
}

/// Envoy stats. Names and labels as in [`tagged_name`]; the adapter keeps ids.
pub trait Metrics {
    fn count(&mut self, labels: &[(&str, &str)], name: &str, value: u64);
    fn record(&mut self, labels: &[(&str, &str)], name: &str, value: u64);
    fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64);
    /// Moves a gauge by `delta` (shared by every worker, as Envoy's gauges are).
    fn add_gauge(&mut self, labels: &[(&str, &str)], name: &str, delta: i64);
}

/// Randomness (jitter) and what the VM knows of itself.
pub trait Entropy {
    fn random_u64(&mut self) -> u64;
}

/// The VM itself.
pub trait Vm {
    /// The VM's linear memory, in bytes (0 where that cannot be known).
    fn memory_bytes(&self) -> u64;
}

/// Everything the request's life asks of the host.
pub trait Host:
    Clock
    + SharedStore
    + Headers
    + Body
    + Properties
    + Replies
    + Streams
    + Timers
    + Calls
    + Metrics
    + Entropy
    + Vm
{
}

impl<T> Host for T where
    T: Clock
        + SharedStore
        + Headers
        + Body
        + Properties
        + Replies
        + Streams
        + Timers
        + Calls
        + Metrics
        + Entropy
        + Vm
{
}

/// Lossy UTF-8, as the host layer reads text.
pub fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One outbound gRPC call a [`FakeHost`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u32,
}

/// A host for tests: Envoy played by hand. A test sets what Envoy would hold
/// (headers, body, properties, time, shared data) and reads back what the filter
/// did (headers set, replies sent, calls dispatched, metrics, host calls made).
/// `fail` names host calls that should fail (with status 2, Envoy's BadArgument).
#[derive(Debug, Default)]
pub struct FakeHost {
    pub now_ms: std::cell::Cell<u64>,
    pub store: MemStore,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    /// The response chunk the current callback sees.
    pub response_body: Vec<u8>,
    /// The answer the current gRPC answer callback reads.
    pub grpc_answer: Option<Vec<u8>>,
    /// Properties and filter state, by path joined with `.`.
    pub properties: HashMap<String, Vec<u8>>,
    pub replies: Vec<LocalReply>,
    /// Context ids resumed (0: the current stream).
    pub resumed: Vec<u32>,
    pub effective_context: u32,
    /// Contexts that are gone: making one effective fails.
    pub gone: Vec<u32>,
    /// Every tick period set, in order.
    pub tick_periods: Vec<u32>,
    /// The effective context each tick period was set from (0: the
    /// callback's own; another one's tick is its root's, not this one's).
    pub tick_contexts: Vec<u32>,
    pub grpc_calls: Vec<GrpcCall>,
    pub route_cache_clears: u32,
    /// Counters and gauges by tagged name; histograms as every value recorded.
    pub counters: HashMap<String, u64>,
    pub gauges: HashMap<String, u64>,
    pub histograms: HashMap<String, Vec<u64>>,
    pub rng: Option<SplitMix64>,
    /// Host calls made (clock reads and metric calls included).
    pub calls: std::cell::Cell<u32>,
    /// Clock reads alone.
    pub clock_reads: std::cell::Cell<u32>,
    /// Host calls that fail, by method name (`"set_header"`, `"grpc_call"`, ...).
    pub fail: Vec<&'static str>,
    /// Shared-data operations fail with a host status.
    pub store_fails: bool,
    next_token: u32,
}

const BAD_ARGUMENT: Status = 2;

impl FakeHost {
    pub fn new(now_ms: u64) -> Self {
        let h = FakeHost::default();
        h.now_ms.set(now_ms);
        h
    }

    pub fn advance(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }

    fn call(&self, name: &'static str) -> Result<(), Status> {
        self.calls.set(self.calls.get() + 1);
        if self.fail.contains(&name) {
            Err(BAD_ARGUMENT)
        } else {
            Ok(())
        }
    }

    fn map(&self, map: Map) -> &Vec<(String, String)> {
        match map {
            Map::RequestHeaders => &self.request_headers,
            Map::ResponseHeaders => &self.response_headers,
        }
    }

    fn map_mut(&mut self, map: Map) -> &mut Vec<(String, String)> {
        match map {
            Map::RequestHeaders => &mut self.request_headers,
            Map::ResponseHeaders => &mut self.response_headers,
        }
    }

    /// A counter's value (0 when never counted), by name and labels.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .get(&tagged_name(labels, name))
            .copied()
            .unwrap_or(0)
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.gauges.get(&tagged_name(labels, name)).copied()
    }

    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<u64> {
        self.histograms
            .get(&tagged_name(labels, name))
            .cloned()
            .unwrap_or_default()
    }

    /// A request header as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        lookup(&self.request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        lookup(&self.response_headers, name)
    }

    pub fn property_str(&self, path: &str) -> Option<String> {
        self.properties.get(path).cloned().map(lossy)
    }

    pub fn set_property_str(&mut self, path: &str, value: &[u8]) {
        self.properties.insert(path.to_string(), value.to_vec());
    }
}

fn lookup<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Clock for FakeHost {
    fn now_ms(&self) -> u64 {
        self.calls.set(self.calls.get() + 1);
        self.clock_reads.set(self.clock_reads.get() + 1);
        self.now_ms.get()
    }
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls.set(self.calls.get() + 1);
        if self.store_fails {
            return Err(StoreError::Host(BAD_ARGUMENT));
        }
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.calls.set(self.calls.get() + 1);
        if self.store_fails {
            return Err(StoreError::Host(BAD_ARGUMENT));
        }
        self.store.set(key, value, cas)
    }
}

impl Headers for FakeHost {
    fn header(&self, map: Map, name: &str) -> Option<String> {
        self.call("header").ok()?;
        lookup(self.map(map), name).map(str::to_string)
    }
    fn header_list(&self, map: Map) -> HeaderList {
        if self.call("header_list").is_err() {
            return HeaderList::default();
        }
        HeaderList(self.map(map).clone())
    }
    fn set_header(&mut self, map: Map, name: &str, value: &str) -> Result<(), Status> {
        self.call("set_header")?;
        let m = self.map_mut(map);
        match m.iter_mut().find(|(k, _)| k == name) {
            Some(e) => e.1 = value.to_string(),
            None => m.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }
    fn remove_header(&mut self, map: Map, name: &str) -> Result<(), Status> {
        self.call("remove_header")?;
        self.map_mut(map).retain(|(k, _)| k != name);
        Ok(())
    }
}

impl Body for FakeHost {
    fn body(&self, buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
        self.call("body")?;
        let b = match buffer {
            Buffer::RequestBody => &self.request_body,
            Buffer::ResponseBody => &self.response_body,
            Buffer::GrpcAnswer => match &self.grpc_answer {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        if b.is_empty() {
            return Ok(None);
        }
        let end = start.saturating_add(max).min(b.len());
        Ok(b.get(start..end).map(<[u8]>::to_vec))
    }
    fn set_body(
        &mut self,
        buffer: Buffer,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        self.call("set_body")?;
        let b = match buffer {
            Buffer::RequestBody => &mut self.request_body,
            Buffer::ResponseBody => &mut self.response_body,
            Buffer::GrpcAnswer => return Err(BAD_ARGUMENT),
        };
        let start = start.min(b.len());
        let end = start.saturating_add(size).min(b.len());
        b.splice(start..end, data.iter().copied());
        Ok(())
    }
}

impl Properties for FakeHost {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        self.call("property")?;
        Ok(self.properties.get(&path.join(".")).cloned())
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), Status> {
        self.call("set_property")?;
        self.properties.insert(path.join("."), value.to_vec());
        Ok(())
    }
    fn clear_route_cache(&mut self) -> Result<(), Status> {
        self.call("clear_route_cache")?;
        self.route_cache_clears += 1;
        Ok(())
    }
}

impl Replies for FakeHost {
    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), Status> {
        self.call("send_reply")?;
        self.replies.push(reply.clone());
        Ok(())
    }
}

impl Streams for FakeHost {
    fn set_effective_context(&mut self, context_id: u32) -> Result<(), Status> {
        self.call("set_effective_context")?;
        if self.gone.contains(&context_id) {
            return Err(BAD_ARGUMENT);
        }
        self.effective_context = context_id;
        Ok(())
    }
    fn resume_request(&mut self) -> Result<(), Status> {
        self.call("resume_request")?;
        // As in Envoy, the effective context stays until changed (or the
        // callback returns).
        self.resumed.push(self.effective_context);
        Ok(())
    }
    fn restore_context(&mut self) -> Result<(), Status> {
        self.call("restore_context")?;
        self.effective_context = 0;
        Ok(())
    }
}

impl Timers for FakeHost {
    fn set_tick_period(&mut self, ms: u32) -> Result<(), Status> {
        self.call("set_tick_period")?;
        self.tick_periods.push(ms);
        self.tick_contexts.push(self.effective_context);
        Ok(())
    }
}

impl Calls for FakeHost {
    fn grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        self.call("grpc_call")?;
        self.next_token += 1;
        self.grpc_calls.push(GrpcCall {
            token: self.next_token,
            cluster: cluster.to_string(),
            service: service.to_string(),
            method: method.to_string(),
            message: message.to_vec(),
            timeout_ms,
        });
        Ok(self.next_token)
    }
}

impl Metrics for FakeHost {
    fn count(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        if value == 0 {
            return; // as Envoy: counters reject a zero increment
        }
        self.calls.set(self.calls.get() + 1);
        *self.counters.entry(tagged_name(labels, name)).or_default() += value;
    }
    fn record(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        self.calls.set(self.calls.get() + 1);
        self.histograms
            .entry(tagged_name(labels, name))
            .or_default()
            .push(value);
    }
    fn set_gauge(&mut self, labels: &[(&str, &str)], name: &str, value: u64) {
        self.calls.set(self.calls.get() + 1);
        self.gauges.insert(tagged_name(labels, name), value);
    }
    fn add_gauge(&mut self, labels: &[(&str, &str)], name: &str, delta: i64) {
        self.calls.set(self.calls.get() + 1);
        let g = self.gauges.entry(tagged_name(labels, name)).or_default();
        *g = g.saturating_add_signed(delta);
    }
}

impl Entropy for FakeHost {
    fn random_u64(&mut self) -> u64 {
        use crate::core::env::Random;
        self.rng.get_or_insert(SplitMix64(7)).next_u64()
    }
}

impl Vm for FakeHost {
    fn memory_bytes(&self) -> u64 {
        1 << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn fake_host_records_and_fails_on_demand() {
        let mut h = FakeHost::new(5);
        h.set_header(Map::RequestHeaders, "a", "1").unwrap();
        h.set_header(Map::RequestHeaders, "a", "2").unwrap();
        assert_eq!(h.request_header("a"), Some("2"));
        h.remove_header(Map::RequestHeaders, "a").unwrap();
        assert_eq!(h.header(Map::RequestHeaders, "a"), None);
        h.fail.push("set_header");
        assert_eq!(h.set_header(Map::RequestHeaders, "b", "1"), Err(2));
        h.request_body = b"hello".to_vec();
        h.set_body(Buffer::RequestBody, 0, 5, b"bye").unwrap();
        assert_eq!(h.body(Buffer::RequestBody, 0, 99).unwrap().unwrap(), b"bye");
        h.count(&[("route", "r")], "llmcap_x_total", 2);
        h.count(&[("route", "r")], "llmcap_x_total", 0);
        assert_eq!(h.counter("llmcap_x_total", &[("route", "r")]), 2);
        assert_eq!(h.calls.get(), 8);
    }
}
