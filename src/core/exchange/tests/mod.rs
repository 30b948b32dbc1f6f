//! Lifecycle tests: the core's request life driven through the fake host, one
//! file per end-to-end group. [`Envoy`] plays Envoy: it delivers headers, body
//! chunks, answers, ends, ticks and gRPC answers, and the tests read what the
//! filter did from its [`FakeHost`].

mod budgets;
mod cache;
mod caps;
mod daily;
mod failover;
mod fit;
mod give_back;
mod global;
mod hedge;
mod input;
mod latency;
mod limits;
mod routing;
mod security;
mod served;
mod traffic;
mod waits;

use super::attempt::UpstreamAttempt;
use super::worker::Worker;
use super::{Exchange, Phase};
use crate::core::config::{compile, Config};
use crate::core::host::{FakeHost, Flow};
use crate::core::reply::LocalReply;
use crate::core::tokens::accounting::{preflight, Preflight};
use serde_json::Value;
use std::rc::Rc;

pub const CHAT: &str = "/v1/chat/completions";
/// A chat request with a 100-token cap.
pub const CHAT_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the world, politely."}],"max_tokens":100}"#;
pub const T0: u64 = 1_700_000_000_000;

/// Envoy, played by hand: one worker, one host, streams made one by one.
pub struct Envoy {
    pub host: FakeHost,
    pub worker: Rc<Worker>,
    pub config: Rc<Config>,
    next_id: u32,
}

impl Envoy {
    pub fn new(config: Value) -> Self {
        let config = match compile(&config) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e}"),
        };
        Envoy {
            host: FakeHost::new(T0),
            worker: Rc::default(),
            config: Rc::new(config),
            next_id: 1,
        }
    }

    /// Another worker of the same Envoy: shared data in common, its own VM state.
    pub fn another_worker(&self) -> Rc<Worker> {
        Rc::default()
    }

    /// A new stream on `route`, its request headers set (`:path` included).
    pub fn stream(&mut self, route: &str, headers: &[(&str, &str)]) -> Exchange {
        let id = self.next_id;
        self.next_id += 1;
        self.host
            .set_property_str("xds.route_name", route.as_bytes());
        self.host.request_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.host.response_headers.clear();
        self.host.request_body.clear();
        Exchange::new(Rc::clone(&self.config), Rc::clone(&self.worker), id)
    }

    /// A request: headers (with `:path` `path`), then the body in one piece.
    pub fn send(
        &mut self,
        route: &str,
        extra: &[(&str, &str)],
        body: Option<&str>,
    ) -> (Exchange, Flow) {
        let mut headers = vec![(":path", CHAT), (":method", "POST")];
        headers.extend_from_slice(extra);
        let len = body.map(|b| b.len().to_string());
        if let Some(l) = &len {
            headers.push(("content-length", l));
        }
        let mut x = self.stream(route, &headers);
        let flow = self.deliver(&mut x, body);
        (x, flow)
    }

    /// Delivers the request headers and body of a stream made by [`Envoy::stream`].
    pub fn deliver(&mut self, x: &mut Exchange, body: Option<&str>) -> Flow {
        let flow = x.on_request_headers(&mut self.host, body.is_none());
        let Some(body) = body else { return flow };
        if !matches!(x.phase(), Phase::ReadingBody) {
            return flow;
        }
        self.host.request_body = body.as_bytes().to_vec();
        x.on_request_body(&mut self.host, body.len(), true)
    }

    /// Body chunks as Envoy buffers them: each call sees everything so far.
    pub fn body_chunks(&mut self, x: &mut Exchange, chunks: &[&str]) -> Flow {
        let mut flow = Flow::Continue;
        for (i, c) in chunks.iter().enumerate() {
            self.host.request_body.extend_from_slice(c.as_bytes());
            let size = self.host.request_body.len();
            flow = x.on_request_body(&mut self.host, size, i + 1 == chunks.len());
        }
        flow
    }

    /// The upstream (or the filter's own reply) answers: headers, then each chunk.
    pub fn answer(
        &mut self,
        x: &mut Exchange,
        status: u32,
        headers: &[(&str, &str)],
        chunks: &[&str],
    ) {
        let mut h = vec![(":status".to_string(), status.to_string())];
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.host.response_headers = h;
        x.on_response_headers(&mut self.host, chunks.is_empty());
        for (i, c) in chunks.iter().enumerate() {
            self.host.response_body = c.as_bytes().to_vec();
            x.on_response_body(&mut self.host, c.len(), i + 1 == chunks.len());
        }
    }

    /// A JSON answer with provider-reported usage.
    pub fn answer_usage(&mut self, x: &mut Exchange, input: u64, output: u64) {
        let body = format!(
            r#"{{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{input},"completion_tokens":{output},"total_tokens":{}}}}}"#,
            input + output
        );
        self.answer(x, 200, &[("content-type", "application/json")], &[&body]);
    }

    /// The filter's own reply reaches the client (Envoy runs the response path for it).
    pub fn answer_reply(&mut self, x: &mut Exchange) {
        let r = self.last_reply().clone();
        let mut h = vec![(":status".to_string(), r.status.to_string())];
        h.extend(r.headers.iter().cloned());
        self.host.response_headers = h;
        x.on_response_headers(&mut self.host, r.body.is_empty());
        if !r.body.is_empty() {
            self.host.response_body = r.body.clone();
            x.on_response_body(&mut self.host, r.body.len(), true);
        }
    }

    pub fn end(&mut self, x: &mut Exchange) {
        x.on_log(&mut self.host);
    }

    /// A whole exchange answered with usage and ended.
    pub fn call(
        &mut self,
        route: &str,
        extra: &[(&str, &str)],
        input: u64,
        output: u64,
    ) -> Exchange {
        let (mut x, _) = self.send(route, extra, Some(CHAT_BODY));
        if matches!(x.phase(), Phase::Sent { .. }) {
            self.answer_usage(&mut x, input, output);
        } else if matches!(x.phase(), Phase::Replied) {
            self.answer_reply(&mut x);
        }
        self.end(&mut x);
        x
    }

    pub fn tick(&mut self) {
        // A new callback: Envoy resets the effective context between them.
        self.host.effective_context = 0;
        self.worker.on_tick(&mut self.host);
    }

    pub fn last_reply(&self) -> &LocalReply {
        match self.host.replies.last() {
            Some(r) => r,
            None => panic!("no local reply was sent"),
        }
    }

    pub fn reply_json(&self) -> Value {
        serde_json::from_slice(&self.last_reply().body).unwrap()
    }

    pub fn reply_header(&self, name: &str) -> Option<&str> {
        self.last_reply()
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The access-log state the filter wrote last.
    pub fn filter_state(&self) -> Value {
        match self.host.property_str(super::FILTER_STATE_KEY) {
            Some(s) => serde_json::from_str(&s).unwrap(),
            None => Value::Null,
        }
    }

    pub fn requests(&self, route: &str, outcome: &str) -> u64 {
        self.host.counter(
            crate::core::telemetry::REQUESTS_TOTAL,
            &[("route", route), ("outcome", outcome)],
        )
    }

    pub fn upstream(&self) -> UpstreamAttempt {
        UpstreamAttempt::new(Rc::clone(&self.config), Rc::clone(&self.worker))
    }
}

/// What the core's pre-flight makes of a body on a route (the estimator's own
/// numbers, so these tests do not pin its internals).
pub fn estimate(env: &Envoy, route: &str, body: &str) -> Preflight {
    let Some(p) = env.config.route(route) else {
        panic!("no route {route}")
    };
    match preflight(&p.policy, CHAT, body.as_bytes(), None) {
        Ok(p) => p,
        Err(_) => panic!("body refused"),
    }
}

/// A `RateLimitResponse`: overall code, and per descriptor (over limit, seconds to reset).
pub fn rls_answer(over: bool, statuses: &[(bool, u64)]) -> Vec<u8> {
    use crate::core::limits::global::{field_bytes, varint};
    let mut out = Vec::new();
    varint(1 << 3, &mut out);
    varint(if over { 2 } else { 1 }, &mut out);
    for &(over, secs) in statuses {
        let mut s = Vec::new();
        varint(1 << 3, &mut s);
        varint(if over { 2 } else { 1 }, &mut s);
        let mut d = Vec::new();
        varint(1 << 3, &mut d);
        varint(secs, &mut d);
        field_bytes(4, &d, &mut s);
        field_bytes(2, &s, &mut out);
    }
    out
}
