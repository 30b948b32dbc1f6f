//! Shared state and the API-port request pipeline: body limit, auth, faults,
//! routing to the provider modules, rate-limit headers and statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::faults::{Faults, Rng, StormHeaders};
use crate::http::{self, Body, ReadError};
use crate::ratelimit::{self, LimitKind, Limiter, Snapshot};
use crate::stats::{self, Recent, Stats};
use crate::{anthropic, gemini, openai};

/// Output length when the request does not ask for one.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 12;
/// Upper bound on `x-emulator-output-tokens`, so a request cannot make the
/// emulator produce unbounded output.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000;
pub const OUTPUT_TOKENS_HEADER: &str = "x-emulator-output-tokens";
/// Request header naming a tool the answer calls (when the request offers
/// tools and its last turn is not a tool result): the call's arguments are
/// `{"q": <the reply text>}`, so a tool call costs what the text would.
pub const TOOL_CALL_HEADER: &str = "x-emulator-tool-call";

/// Locks a mutex, recovering the data if a previous holder panicked: the
/// state is plain counters, always consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct App {
    pub faults: Mutex<Faults>,
    pub limiter: Mutex<Limiter>,
    pub stats: Mutex<Stats>,
    /// Decides which requests get injected errors; seedable for repeatable tests.
    pub fault_rng: Mutex<Rng>,
    /// Makes ids; separate so ids do not disturb the fault sequence.
    id_rng: Mutex<Rng>,
    /// `true` while in outage; the API listener task watches it.
    pub outage: watch::Sender<bool>,
    /// `true` while the API listener is bound; lets the admin answer only once an
    /// outage change has really taken effect.
    pub listening: watch::Sender<bool>,
    pub verbose: bool,
    seq: AtomicU64,
}

impl App {
    pub fn new(faults: Faults, rpm: u64, tpm: u64, seed: u64, verbose: bool) -> Arc<Self> {
        let (outage, _) = watch::channel(faults.outage);
        let (listening, _) = watch::channel(false);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Arc::new(App {
            faults: Mutex::new(faults),
            limiter: Mutex::new(Limiter::new(rpm, tpm)),
            stats: Mutex::new(Stats::default()),
            fault_rng: Mutex::new(Rng::new(seed)),
            id_rng: Mutex::new(Rng::new(nanos ^ u64::from(std::process::id()))),
            outage,
            listening,
            verbose,
            seq: AtomicU64::new(0),
        })
    }

    /// A random alphanumeric id of `len` characters with a prefix.
    pub fn new_id(&self, prefix: &str, len: usize) -> String {
        const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = lock(&self.id_rng);
        let mut s = String::with_capacity(prefix.len() + len);
        s.push_str(prefix);
        for _ in 0..len {
            s.push(ALPHA[(rng.next_u64() % ALPHA.len() as u64) as usize] as char);
        }
        s
    }

    fn request_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("req_{:06}{}", n, &self.new_id("", 18))
    }

    /// Charges a request to the key's buckets, or builds the provider's 429.
    pub fn admit(&self, key: &str, tokens: u64) -> Result<Snapshot, ApiError> {
        let rej = match lock(&self.limiter).admit(key, tokens, Instant::now()) {
            Ok(s) => return Ok(s),
            Err(r) => r,
        };
        let s = &rej.snapshot;
        let msg = match (rej.kind, rej.retry_after) {
            (LimitKind::Requests, _) => format!(
                "Rate limit reached for requests per min (RPM): Limit {}, Remaining {}, Requested 1. Please try again in {}.",
                s.limit_requests,
                s.remaining_requests,
                ratelimit::go_duration(rej.retry_after.unwrap_or(s.reset_requests))
            ),
            (LimitKind::Tokens, Some(wait)) => format!(
                "Rate limit reached for tokens per min (TPM): Limit {}, Remaining {}, Requested {}. Please try again in {}.",
                s.limit_tokens,
                s.remaining_tokens,
                tokens,
                ratelimit::go_duration(wait)
            ),
            (LimitKind::Tokens, None) => format!(
                "Request too large for tokens per min (TPM): Limit {}, Requested {}. Reduce the prompt or the maximum output.",
                s.limit_tokens, tokens
            ),
        };
        // A request that can never fit is told to come back when the bucket is full.
        let retry = rej
            .retry_after
            .unwrap_or(s.reset_tokens.max(Duration::from_secs(1)));
        Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: msg,
            oa_type: Some(rej.kind.as_str()),
            oa_code: Some("rate_limit_exceeded"),
            limited: Some(Box::new(Limited {
                snapshot: rej.snapshot,
                retry_after: retry,
                only_resets: false,
            })),
        })
    }

    /// Gives back tokens reserved at admission but not produced.
    pub fn refund(&self, key: &str, tokens: u64) {
        lock(&self.limiter).refund(key, tokens, Instant::now());
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
    Gemini,
}

/// An error answer, rendered in the style of the provider of the path.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `error.type` (defaults from the status).
    pub oa_type: Option<&'static str>,
    /// OpenAI `error.code`.
    pub oa_code: Option<&'static str>,
    /// Set on 429s: the rate-limit headers and `retry-after` to send.
    /// Boxed to keep `Result<_, ApiError>` small.
    pub limited: Option<Box<Limited>>,
}

#[derive(Debug)]
pub struct Limited {
    pub snapshot: Snapshot,
    pub retry_after: Duration,
    /// Send only the reset headers (a storm with `headers: resets`).
    pub only_resets: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            oa_type: None,
            oa_code: None,
            limited: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn body(&self, flavor: Flavor) -> Value {
        let code = self.status.as_u16();
        match flavor {
            Flavor::OpenAi => {
                let default_type = if code >= 500 {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                json!({"error": {
                    "message": self.message,
                    "type": self.oa_type.unwrap_or(default_type),
                    "param": null,
                    "code": self.oa_code,
                }})
            }
            Flavor::Anthropic => {
                let t = match code {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    c if c < 500 => "invalid_request_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": t, "message": self.message}})
            }
            Flavor::Gemini => {
                let s = match code {
                    400 | 413 => "INVALID_ARGUMENT",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    429 => "RESOURCE_EXHAUSTED",
                    503 => "UNAVAILABLE",
                    504 => "DEADLINE_EXCEEDED",
                    c if c < 500 => "FAILED_PRECONDITION",
                    _ => "INTERNAL",
                };
                json!({"error": {"code": code, "message": self.message, "status": s}})
            }
        }
    }
}

/// What a successful handler produced.
pub struct Outcome {
    pub resp: Response<Body>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ratelimit: Option<Snapshot>,
}

/// Per-request facts the handlers need.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub key: String,
    pub query: &'a str,
    /// Output length asked for via [`OUTPUT_TOKENS_HEADER`] (or the default).
    pub requested_output: u64,
    /// The tool the answer calls ([`TOOL_CALL_HEADER`]).
    pub tool_call: Option<String>,
    pub faults: Faults,
}

/// Output length of one choice and whether `max_tokens` cut it short.
pub fn output_len(requested: u64, max_tokens: Option<u64>) -> (u64, bool) {
    match max_tokens {
        Some(m) if m < requested => (m, true),
        _ => (requested, false),
    }
}

/// Bound on the total output of one request (all choices), to bound memory.
pub const MAX_TOTAL_OUTPUT: u64 = 1_000_000;

/// How much output a request gets and what it reserves in the token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Output tokens of each choice.
    pub per_choice: u64,
    /// `max_tokens` cut the output short.
    pub cut: bool,
    pub choices: u64,
    /// Output tokens reserved at admission: `max_tokens` if given, else the
    /// requested length; times the number of choices.
    pub allowance: u64,
}

impl Plan {
    pub fn new(requested: u64, max_tokens: Option<u64>, choices: u64) -> Result<Plan, ApiError> {
        let (per_choice, cut) = output_len(requested, max_tokens);
        if per_choice.saturating_mul(choices) > MAX_TOTAL_OUTPUT {
            return Err(ApiError::bad_request(format!(
                "The emulator produces at most {MAX_TOTAL_OUTPUT} output tokens per request."
            )));
        }
        let allowance = max_tokens.unwrap_or(requested).saturating_mul(choices);
        Ok(Plan {
            per_choice,
            cut,
            choices,
            allowance,
        })
    }

    pub fn completion(&self) -> u64 {
        self.per_choice * self.choices
    }

    /// Reserved tokens not produced, given back after the response.
    pub fn refund(&self) -> u64 {
        self.allowance.saturating_sub(self.completion())
    }
}

/// Reads an optional non-negative integer field; wrong types are a 400.
pub fn opt_u64(body: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid type for '{field}': expected a non-negative integer."
            ))
        }),
    }
}

pub fn opt_bool(body: &Value, field: &str) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!(
            "Invalid type for '{field}': expected a boolean."
        ))),
    }
}

/// The body must be a JSON object with a string `model` (unless `model_in_path`).
pub fn require_model(body: &Value) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "Missing required parameter: 'model'.",
        )),
        Some(_) => Err(ApiError::bad_request(
            "Invalid type for 'model': expected a string.",
        )),
    }
}

fn api_key(headers: &HeaderMap, query: &str, flavor: Flavor) -> Option<String> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(k) = get("authorization").and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    }) {
        let k = k.trim();
        if !k.is_empty() {
            return Some(k.to_string());
        }
    }
    if let Some(k) = get("x-api-key") {
        return Some(k.to_string());
    }
    if flavor == Flavor::Gemini {
        if let Some(k) = get("x-goog-api-key") {
            return Some(k.to_string());
        }
        return query_param(query, "key").filter(|k| !k.is_empty());
    }
    None
}

/// A query parameter's raw value (test keys and `alt=sse` need no decoding).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

enum Route {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    Models,
    Gemini { model: String, stream: bool },
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let post = method == Method::POST;
    match path {
        "/v1/chat/completions" | "/chat/completions" if post => Some(Route::Chat),
        "/v1/completions" | "/completions" if post => Some(Route::Completions),
        "/v1/embeddings" | "/embeddings" if post => Some(Route::Embeddings),
        "/v1/responses" | "/responses" if post => Some(Route::Responses),
        "/v1/messages" if post => Some(Route::Messages),
        "/v1/messages/count_tokens" if post => Some(Route::CountTokens),
        "/v1/models" | "/models" if method == Method::GET => Some(Route::Models),
        _ if post => {
            let rest = path
                .strip_prefix("/v1beta/models/")
                .or_else(|| path.strip_prefix("/v1/models/"))?;
            let (model, action) = rest.rsplit_once(':')?;
            let stream = match action {
                "generateContent" => false,
                "streamGenerateContent" => true,
                _ => return None,
            };
            (!model.is_empty()).then(|| Route::Gemini {
                model: model.to_string(),
                stream,
            })
        }
        _ => None,
    }
}

fn flavor_of(path: &str) -> Flavor {
    if path.starts_with("/v1/messages") {
        Flavor::Anthropic
    } else if path.starts_with("/v1beta/")
        || path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
    {
        Flavor::Gemini
    } else {
        Flavor::OpenAi
    }
}

fn add_common_headers(
    resp: &mut Response<Body>,
    flavor: Flavor,
    id: &str,
    rl: Option<&Snapshot>,
    retry: Option<Duration>,
) {
    http::set_header(resp, "request-id", id);
    http::set_header(resp, "x-request-id", id);
    match flavor {
        Flavor::OpenAi => {
            http::set_header(resp, "openai-version", "2020-10-01");
            http::set_header(resp, "openai-organization", "emulator");
            if let Some(s) = rl {
                http::set_header(
                    resp,
                    "x-ratelimit-limit-requests",
                    s.limit_requests.to_string(),
                );
                http::set_header(
                    resp,
                    "x-ratelimit-remaining-requests",
                    s.remaining_requests.to_string(),
                );
                http::set_header(
                    resp,
                    "x-ratelimit-reset-requests",
                    ratelimit::go_duration(s.reset_requests),
                );
                http::set_header(resp, "x-ratelimit-limit-tokens", s.limit_tokens.to_string());
                http::set_header(
                    resp,
                    "x-ratelimit-remaining-tokens",
                    s.remaining_tokens.to_string(),
                );
                http::set_header(
                    resp,
                    "x-ratelimit-reset-tokens",
                    ratelimit::go_duration(s.reset_tokens),
                );
            }
        }
        Flavor::Anthropic => {
            if let Some(s) = rl {
                let req_reset = ratelimit::rfc3339_after(s.reset_requests);
                let tok_reset = ratelimit::rfc3339_after(s.reset_tokens);
                http::set_header(
                    resp,
                    "anthropic-ratelimit-requests-limit",
                    s.limit_requests.to_string(),
                );
                http::set_header(
                    resp,
                    "anthropic-ratelimit-requests-remaining",
                    s.remaining_requests.to_string(),
                );
                http::set_header(resp, "anthropic-ratelimit-requests-reset", &req_reset);
                // Input, output and total tokens share one bucket here.
                for (l, r, t) in [
                    (
                        "anthropic-ratelimit-tokens-limit",
                        "anthropic-ratelimit-tokens-remaining",
                        "anthropic-ratelimit-tokens-reset",
                    ),
                    (
                        "anthropic-ratelimit-input-tokens-limit",
                        "anthropic-ratelimit-input-tokens-remaining",
                        "anthropic-ratelimit-input-tokens-reset",
                    ),
                    (
                        "anthropic-ratelimit-output-tokens-limit",
                        "anthropic-ratelimit-output-tokens-remaining",
                        "anthropic-ratelimit-output-tokens-reset",
                    ),
                ] {
                    http::set_header(resp, l, s.limit_tokens.to_string());
                    http::set_header(resp, r, s.remaining_tokens.to_string());
                    http::set_header(resp, t, &tok_reset);
                }
            }
        }
        Flavor::Gemini => {}
    }
    if let Some(d) = retry {
        http::set_header(
            resp,
            "retry-after",
            ratelimit::retry_after_secs(d).to_string(),
        );
        if flavor == Flavor::OpenAi {
            http::set_header(
                resp,
                "retry-after-ms",
                ratelimit::retry_after_ms(d).to_string(),
            );
        }
    }
}

/// Handles one request on the API port.
pub async fn handle_api(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return http::text(StatusCode::OK, "ok");
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let flavor = flavor_of(&path);
    let id = app.request_id();
    let started = Instant::now();

    let body = http::read_body(req).await;
    // Counts the request as cancelled if this future is dropped before its
    // answer is recorded: the proxy reset the attempt (a hedge's loser, a
    // timeout) while it waited.
    let mut gone = Cancelled(Some(app.clone()));
    let parsed: Option<Value> = match &body {
        Ok(b) if !b.is_empty() => serde_json::from_slice(b).ok(),
        _ => None,
    };
    let key = api_key(&headers, &query, flavor);
    let route = route(&method, &path);
    let mut model = parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .map(String::from);
    if let Some(Route::Gemini { model: m, .. }) = &route {
        model = Some(m.clone());
    }
    let stream = match &route {
        Some(Route::Gemini { stream, .. }) => *stream,
        _ => parsed
            .as_ref()
            .and_then(|v| v.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };

    // When the request arrived (unix ms): tests check that nothing reached a
    // provider before the Retry-After it gave had passed.
    let received_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let faults = app.faults();
    let dropped = {
        let mut f = lock(&app.faults);
        let take = f.drop_requests > 0;
        if take {
            f.drop_requests -= 1;
        }
        take
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }

    let result = run(
        &app,
        flavor,
        route,
        body,
        parsed,
        key.clone(),
        &headers,
        &query,
        faults,
        &method,
        &path,
    )
    .await;
    let (mut resp, prompt, completion) = match result {
        Ok(o) => {
            let mut resp = o.resp;
            add_common_headers(&mut resp, flavor, &id, o.ratelimit.as_ref(), None);
            (resp, o.prompt_tokens, o.completion_tokens)
        }
        Err(e) => {
            let mut resp = http::json(e.status, &e.body(flavor));
            let (rl, retry) = match &e.limited {
                Some(l) => (Some(&l.snapshot), Some(l.retry_after)),
                None => (None, None),
            };
            add_common_headers(&mut resp, flavor, &id, rl, retry);
            if e.limited.as_ref().is_some_and(|l| l.only_resets) {
                let drop: Vec<_> = resp
                    .headers()
                    .keys()
                    .filter(|n| {
                        let n = n.as_str();
                        n.starts_with("retry-after")
                            || (n.contains("ratelimit")
                                && !n.ends_with("-reset")
                                && !n.contains("-reset-"))
                    })
                    .cloned()
                    .collect();
                for n in drop {
                    resp.headers_mut().remove(n);
                }
            }
            (resp, 0, 0)
        }
    };
    if flavor == Flavor::OpenAi {
        http::set_header(
            &mut resp,
            "openai-processing-ms",
            started.elapsed().as_millis().to_string(),
        );
    }
    for (name, value) in &app.faults().response_headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    if dropped {
        resp = http::text(StatusCode::BAD_GATEWAY, "dropped");
        resp.extensions_mut().insert(crate::server::DropConnection);
    }
    let status = resp.status().as_u16();
    if app.verbose {
        eprintln!(
            "{id} {method} {path} key={} model={} stream={stream} -> {status} prompt={prompt} completion={completion}",
            key.as_deref().unwrap_or("-"),
            model.as_deref().unwrap_or("-"),
        );
    }
    lock(&app.stats).record(Recent {
        id,
        method: method.to_string(),
        path,
        key,
        model,
        stream,
        status,
        prompt_tokens: prompt,
        completion_tokens: completion,
        headers: stats::header_map(&headers),
        received_ms,
    });
    gone.0 = None;
    resp
}

/// See [`handle_api`]: bumps `cancelled_total` when dropped still armed.
struct Cancelled(Option<Arc<App>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(app) = self.0.take() {
            lock(&app.stats).cancelled_total += 1;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    app: &Arc<App>,
    flavor: Flavor,
    route: Option<Route>,
    body: Result<hyper::body::Bytes, ReadError>,
    parsed: Option<Value>,
    key: Option<String>,
    headers: &HeaderMap,
    query: &str,
    faults: Faults,
    method: &Method,
    path: &str,
) -> Result<Outcome, ApiError> {
    let Some(route) = route else {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown request URL: {method} {path}."),
        );
        e.oa_code = Some("unknown_url");
        return Err(e);
    };
    let body = match body {
        Ok(b) => b,
        Err(ReadError::TooLarge) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Request body too large: the limit is {} bytes.",
                    http::MAX_BODY
                ),
            ))
        }
        Err(ReadError::Broken(e)) => {
            return Err(ApiError::bad_request(format!(
                "Could not read the request body: {e}"
            )))
        }
    };
    let Some(key) = key else {
        let msg = match flavor {
            Flavor::OpenAi => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            Flavor::Anthropic => "x-api-key header is required",
            Flavor::Gemini => "Method doesn't allow unregistered callers. Please use an API key.",
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, msg));
    };

    if let Some(storm) = faults.storm {
        let (rpm, tpm) = lock(&app.limiter).limits();
        let wait = Duration::from_secs(storm.retry_after_s);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Rate limit reached for requests per min (RPM): Limit {rpm}, Remaining 0. Please try again in {}.", ratelimit::go_duration(wait)),
        );
        e.oa_type = Some("requests");
        e.oa_code = Some("rate_limit_exceeded");
        let only_resets = storm.headers == StormHeaders::Resets;
        let snapshot = Snapshot {
            limit_requests: rpm,
            remaining_requests: 0,
            reset_requests: wait,
            limit_tokens: tpm,
            remaining_tokens: tpm,
            // With only resets sent, the tokens' is later: the earliest is S.
            reset_tokens: if only_resets {
                wait * 2
            } else {
                Duration::ZERO
            },
        };
        // retry-after is exactly S (S >= 1 gives S*1000 ms).
        if storm.headers != StormHeaders::None {
            e.limited = Some(Box::new(Limited {
                snapshot,
                retry_after: wait,
                only_resets,
            }));
        }
        return Err(e);
    }

    if faults.error_rate > 0.0 && !faults.error_status.is_empty() {
        let (hit, pick) = {
            let mut rng = lock(&app.fault_rng);
            let hit = rng.next_f64() < faults.error_rate;
            (hit, rng.next_u64())
        };
        if hit {
            let code = faults.error_status[(pick % faults.error_status.len() as u64) as usize];
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let msg = match (flavor, code) {
                (Flavor::Anthropic, 503 | 529) => "Overloaded",
                (Flavor::Anthropic, _) => "Internal server error",
                (_, 503) => "The server is overloaded or not ready yet.",
                _ => "The server had an error while processing your request. Sorry about that!",
            };
            return Err(ApiError::new(status, msg));
        }
    }

    let requested_output = match headers.get(OUTPUT_TOKENS_HEADER) {
        None => DEFAULT_OUTPUT_TOKENS,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|n| *n <= MAX_OUTPUT_TOKENS)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{OUTPUT_TOKENS_HEADER} must be an integer in 0..={MAX_OUTPUT_TOKENS}"
                ))
            })?,
    };

    if matches!(route, Route::Models) {
        return Ok(openai::models());
    }
    let parsed = match parsed {
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            ))
        }
        None if body.is_empty() => {
            return Err(ApiError::bad_request(
                "The request body is empty; expected a JSON object.",
            ))
        }
        None => {
            let err = serde_json::from_slice::<Value>(&body)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "We could not parse the JSON body of your request. ({err})"
            )));
        }
    };
    let tool_call = headers
        .get(TOOL_CALL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().chars().take(64).collect::<String>())
        .filter(|s| !s.is_empty());
    let ctx = Ctx {
        app,
        key,
        query,
        requested_output,
        tool_call,
        faults,
    };
    match route {
        Route::Chat => openai::chat(&ctx, &parsed),
        Route::Completions => openai::completions(&ctx, &parsed),
        Route::Embeddings => openai::embeddings(&ctx, &parsed),
        Route::Responses => openai::responses(&ctx, &parsed),
        Route::Messages => anthropic::messages(&ctx, &parsed),
        Route::CountTokens => anthropic::count_tokens(&ctx, &parsed),
        Route::Gemini { model, stream } => gemini::generate(&ctx, &parsed, &model, stream),
        Route::Models => Ok(openai::models()),
    }
}

/// Paces a streaming response: no body bytes before `ttft`, then `inter`
/// between events that carry output tokens; framing events go out at once.
/// The stream faults apply here: `reset_after_events` cuts the body after that
/// many events, `broken_sse` sends malformed events after the first one.
pub struct Streamer {
    tx: tokio::sync::mpsc::Sender<http::Chunk>,
    ttft: Duration,
    inter: Duration,
    ttft_done: bool,
    token_events: u64,
    /// Events sent so far (framing and tokens).
    events: u64,
    reset_after: Option<u64>,
    broken_sse: bool,
}

impl Streamer {
    pub fn new(tx: tokio::sync::mpsc::Sender<http::Chunk>, faults: &Faults) -> Self {
        Streamer {
            tx,
            ttft: Duration::from_millis(faults.ttft_ms),
            inter: Duration::from_millis(faults.inter_token_ms),
            ttft_done: false,
            token_events: 0,
            events: 0,
            reset_after: faults.reset_after_events,
            broken_sse: faults.broken_sse,
        }
    }

    /// Sends one event, after the faults; `false` if the stream is over.
    async fn send(&mut self, b: hyper::body::Bytes) -> bool {
        if self.reset_after.is_some_and(|n| self.events >= n) {
            // Let hyper take and flush what was sent (it flushes when the body
            // is not ready), so the client sees exactly the first n events.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.tx.capacity() < self.tx.max_capacity() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = self.tx.send(Err(http::Abort)).await;
            return false;
        }
        if self.broken_sse && self.events == 1 {
            for junk in crate::faults::broken_sse_events() {
                if self.tx.send(Ok(junk)).await.is_err() {
                    return false;
                }
            }
        }
        self.events += 1;
        self.tx.send(Ok(b)).await.is_ok()
    }

    async fn wait_ttft(&mut self) {
        if !self.ttft_done {
            self.ttft_done = true;
            if !self.ttft.is_zero() {
                tokio::time::sleep(self.ttft).await;
            }
        }
    }

    /// Sends an event carrying output tokens; `false` if the client left.
    pub async fn token(&mut self, b: hyper::body::Bytes) -> bool {
        self.wait_ttft().await;
        if self.token_events > 0 && !self.inter.is_zero() {
            tokio::time::sleep(self.inter).await;
        }
        self.token_events += 1;
        self.send(b).await
    }

    /// Sends a framing event (no delay beyond the time to first token).
    pub async fn frame(&mut self, b: hyper::body::Bytes) -> bool {
        self.wait_ttft().await;
        self.send(b).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route(&Method::POST, "/v1/chat/completions"),
            Some(Route::Chat)
        ));
        assert!(route(&Method::GET, "/v1/chat/completions").is_none());
        assert!(matches!(
            route(&Method::GET, "/v1/models"),
            Some(Route::Models)
        ));
        match route(
            &Method::POST,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        ) {
            Some(Route::Gemini { model, stream }) => {
                assert_eq!((model.as_str(), stream), ("gemini-2.0-flash", true))
            }
            _ => panic!("gemini route"),
        }
        assert!(route(&Method::POST, "/v1beta/models/x:other").is_none());
        assert_eq!(flavor_of("/v1/messages"), Flavor::Anthropic);
        assert_eq!(
            flavor_of("/v1beta/models/x:generateContent"),
            Flavor::Gemini
        );
        assert_eq!(flavor_of("/nope"), Flavor::OpenAi);
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h, "", Flavor::OpenAi), None);
        h.insert("authorization", "Bearer sk-1".parse().expect("hv"));
        assert_eq!(api_key(&h, "", Flavor::OpenAi).as_deref(), Some("sk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "ant".parse().expect("hv"));
        assert_eq!(api_key(&h, "", Flavor::Anthropic).as_deref(), Some("ant"));
        assert_eq!(
            api_key(&HeaderMap::new(), "alt=sse&key=g", Flavor::Gemini).as_deref(),
            Some("g")
        );
    }

    #[test]
    fn output_lengths() {
        assert_eq!(output_len(12, None), (12, false));
        assert_eq!(output_len(12, Some(5)), (5, true));
        assert_eq!(output_len(12, Some(12)), (12, false));
    }
}
