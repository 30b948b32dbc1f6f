//! What a request reserves before it leaves, and what it is finally charged.
//!
//! Reservation = calibrated input estimate x (1 + margin) + output allowance, where
//! the allowance is the request's own cap (`max_tokens` or equivalent) or the
//! route's `default_max_tokens`, times the number of answers asked for.
//!
//! Settlement, when the response ends (the documented fallbacks):
//! - the provider reported usage: exactly that (`provider`);
//! - a stream ended without a final usage report (cut, client gone): the usage
//!   seen so far, else the input estimate, plus output estimated from the
//!   streamed text (`streamed_text`);
//! - a 2xx answer whose usage could not be read (compressed, too large, missing),
//!   or no answer at all (reset, client gone before headers): the reservation
//!   (`reservation`);
//! - a non-2xx answer: nothing, providers do not bill refused calls (`refused`).

use crate::core::config::{EnforceMaxTokens, InvalidBody, Policy};
use crate::core::env::SharedStore;
use crate::core::reply::LocalReply;
use crate::core::tokens::calibrate;
use crate::core::tokens::estimate::{
    self, estimate_tokens, Encoding, Structure, TextClass, TextStats,
};
use crate::core::tokens::request::{self, Api, RequestFacts, Rewrite};
use crate::core::tokens::usage::{answer_from_json, Dialect, SseUsageParser, Usage};

/// Largest non-streamed response body kept to read its usage; larger ones settle
/// at the reservation. Bounded so one answer cannot grow a VM's memory.
pub const MAX_JSON_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Preflight {
    pub api: Option<Api>,
    pub model: Option<String>,
    pub encoding: Encoding,
    pub stream: bool,
    /// Estimate before calibration (what calibration learns against).
    pub input_raw: u64,
    /// The kind of text (calibration learns per model and kind).
    pub text_class: TextClass,
    /// Calibrated input estimate.
    pub input_estimate: u64,
    pub output_allowance: u64,
    /// Input estimate with the safety margin.
    pub reserved_input: u64,
    /// Tokens reserved: `reserved_input` plus the output allowance.
    pub reserved: u64,
    /// The body could not be read; the estimate comes from its size.
    pub size_based: bool,
    /// The body to send instead, when the route asked for a rewrite.
    pub rewrite: Option<Vec<u8>>,
    /// Conversation entries the body carries (messages, input items, contents,
    /// and a system or instructions block): what `max_messages` counts.
    pub messages: u32,
    /// The output cap per answer the request goes with (its own, or the one
    /// the filter writes); `None`: the provider's default applies.
    pub output_cap: Option<u64>,
}

/// The tokenizer family for a model: by name first, then by API.
pub fn encoding_for(
    configured: Option<Encoding>,
    model: Option<&str>,
    api: Option<Api>,
) -> Encoding {
    if let Some(e) = configured {
        return e;
    }
    let m = model.unwrap_or("").to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or("");
    if m.starts_with("claude") {
        Encoding::Claude
    } else if m.starts_with("gemini") || m.starts_with("gemma") {
        Encoding::Gemini
    } else if m.contains("llama") {
        Encoding::Llama
    } else if m.starts_with("gpt-4o")
        || m.starts_with("gpt-4.1")
        || m.starts_with("gpt-4.5")
        || m.starts_with("gpt-5")
        || m.starts_with("o1")
        || m.starts_with("o3")
        || m.starts_with("o4")
        || m.starts_with("chatgpt")
    {
        Encoding::O200k
    } else if m.starts_with("gpt-4") || m.starts_with("gpt-3.5") || m.starts_with("text-embedding")
    {
        Encoding::Cl100k
    } else {
        match api {
            Some(Api::AnthropicMessages) => Encoding::Claude,
            Some(Api::Gemini) => Encoding::Gemini,
            _ => Encoding::O200k,
        }
    }
}

/// Estimates and reserves for a complete request body.
///
/// `Err` is the answer to send instead (an unreadable body on a route that rejects them).
pub fn preflight(
    policy: &Policy,
    path: &str,
    body: &[u8],
    store: Option<&dyn SharedStore>,
) -> Result<Preflight, LocalReply> {
    preflight_encoded(policy, path, body, store, false)
}

/// As [`preflight`]; `encoded` says the body has a content-encoding (gzip, ...)
/// the filter does not decode: it passes unread, charged by size, whatever
/// `invalid_body` says (it is not invalid, only opaque).
pub fn preflight_encoded(
    policy: &Policy,
    path: &str,
    body: &[u8],
    store: Option<&dyn SharedStore>,
    encoded: bool,
) -> Result<Preflight, LocalReply> {
    let api = policy.api.or_else(|| Api::detect(path));
    let parsed = if encoded {
        None
    } else {
        api.map(|a| request::parse(a, path, body))
    };
    let (facts, size_based) = match parsed {
        Some(Ok(f)) => (f, false),
        Some(Err(e)) if policy.invalid_body == InvalidBody::Reject => {
            return Err(LocalReply::openai_error(
                400,
                "invalid_request_error",
                "invalid_body",
                &e.0,
            ));
        }
        // Unreadable body on a passing route, or an API the filter does not know:
        // documented pass-through, charged by size.
        Some(Err(_)) | None => (
            RequestFacts {
                choices: 1,
                ..Default::default()
            },
            true,
        ),
    };
    let encoding = encoding_for(policy.encoding, facts.model.as_deref(), api);
    let input_raw = if size_based {
        (body.len() as u64).div_ceil(4)
    } else {
        estimate_tokens(&facts.text, &facts.structure, encoding).saturating_add(facts.token_ids)
    };
    let text_class = facts.text.class();
    let ratio = match (&facts.model, store, policy.calibrate && !size_based) {
        (Some(m), Some(s), true) => calibrate::ratio(s, m, text_class),
        _ => 1.0,
    };
    let input_estimate = calibrate::apply(input_raw, ratio);

    let generates = api.is_none_or(Api::generates);
    let (output_cap, rewrite_cap) = match (policy.enforce_max_tokens, facts.max_output) {
        (_, Some(m)) if !generates => (m, None),
        (EnforceMaxTokens::Off, m) => (m.unwrap_or(policy.default_max_tokens), None),
        (EnforceMaxTokens::Fill, Some(m)) => (m, None),
        (EnforceMaxTokens::Fill, None) => {
            (policy.default_max_tokens, Some(policy.default_max_tokens))
        }
        (EnforceMaxTokens::Cap, m) => {
            let cap = policy.default_max_tokens;
            (m.map_or(cap, |m| m.min(cap)), Some(cap))
        }
    };
    let output_allowance = if generates {
        output_cap.saturating_mul(u64::from(facts.choices))
    } else {
        0
    };
    let reserved_input =
        estimate::reserved_input(input_estimate, policy.input_margin, text_class, encoding);
    let reserved = reserved_input.saturating_add(output_allowance);

    let rewrite = match (api, size_based) {
        (Some(a), false) => {
            let w = Rewrite {
                max_output: rewrite_cap.filter(|_| generates),
                include_usage: policy.include_usage,
            };
            request::rewrite(a, body, &facts, w).ok().flatten()
        }
        _ => None,
    };
    Ok(Preflight {
        api,
        model: facts.model,
        encoding,
        stream: facts.stream,
        input_raw,
        text_class,
        input_estimate,
        output_allowance,
        reserved_input,
        reserved,
        size_based,
        rewrite,
        messages: facts.structure.messages,
        output_cap: (generates && (facts.max_output.is_some() || rewrite_cap.is_some()))
            .then_some(output_cap),
    })
}

/// How a request's final charge was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Provider,
    StreamedText,
    Reservation,
    Refused,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Provider => "provider",
            Source::StreamedText => "streamed_text",
            Source::Reservation => "reservation",
            Source::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub source: Source,
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl Settlement {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

fn dialect(api: Option<Api>) -> Option<Dialect> {
    Some(match api? {
        Api::OpenAiChat => Dialect::OpenAiChat,
        Api::OpenAiResponses => Dialect::OpenAiResponses,
        Api::OpenAiCompletions => Dialect::OpenAiCompletions,
        Api::OpenAiEmbeddings => Dialect::OpenAiEmbeddings,
        Api::AnthropicMessages => Dialect::Anthropic,
        Api::Gemini => Dialect::Gemini,
    })
}

/// Follows one response: reads usage from SSE chunks as they pass (never holding
/// them back) or from a bounded copy of a JSON body.
#[derive(Debug)]
pub struct ResponseTracker {
    dialect: Option<Dialect>,
    status: u32,
    sse: Option<SseUsageParser>,
    json: Vec<u8>,
    json_overflow: bool,
    /// Compressed answers are passed through unread.
    opaque: bool,
    streamed: TextStats,
    streamed_any: bool,
    /// The model the JSON answer named, once [`ResponseTracker::settle`] has
    /// read it (the body is parsed once for usage and model).
    json_model: Option<Option<String>>,
}

impl ResponseTracker {
    pub fn new(api: Option<Api>) -> Self {
        ResponseTracker {
            dialect: dialect(api),
            status: 0,
            sse: None,
            json: Vec::new(),
            json_overflow: false,
            opaque: false,
            streamed: TextStats::default(),
            streamed_any: false,
            json_model: None,
        }
    }

    pub fn on_headers(
        &mut self,
        status: u32,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) {
        self.status = status;
        self.opaque = content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let sse =
            content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
        if sse && !self.opaque {
            self.sse = self.dialect.map(SseUsageParser::new);
        }
    }

    /// The answer is an event stream this tracker reads.
    pub fn streamed(&self) -> bool {
        self.sse.is_some()
    }

    /// Some generated text has been seen in the stream.
    pub fn output_seen(&self) -> bool {
        self.streamed_any
    }

    /// Whether body chunks are worth handing to `on_chunk`.
    pub fn wants_body(&self) -> bool {
        self.dialect.is_some()
            && !self.opaque
            && (200..300).contains(&self.status)
            && !self.json_overflow
    }

    pub fn on_chunk(&mut self, chunk: &[u8]) {
        if !self.wants_body() {
            return;
        }
        if let Some(p) = &mut self.sse {
            let streamed = &mut self.streamed;
            let any = &mut self.streamed_any;
            p.feed(chunk, &mut |t: &str| {
                streamed.add(t);
                *any = true;
            });
        } else if self.json.len() + chunk.len() <= MAX_JSON_RESPONSE_BYTES {
            self.json.extend_from_slice(chunk);
        } else {
            self.json_overflow = true;
            self.json = Vec::new();
        }
    }

    /// The model that answered, when the answer names it.
    pub fn response_model(&self) -> Option<String> {
        if let Some(p) = &self.sse {
            return p.model().map(str::to_string);
        }
        if self.json.is_empty() || self.json_overflow {
            return None;
        }
        if let Some(m) = &self.json_model {
            return m.clone();
        }
        crate::core::tokens::usage::model_from_json(&self.json)
    }

    /// Decides the charge. `ended` says whether the response reached its end.
    pub fn settle(&mut self, pre: &Preflight, ended: bool) -> Settlement {
        let reservation = Settlement {
            source: Source::Reservation,
            input: pre.input_estimate,
            output: pre.output_allowance,
            cached_input: 0,
        };
        if self.status == 0 {
            return reservation;
        }
        if !(200..300).contains(&self.status) {
            return Settlement {
                source: Source::Refused,
                input: 0,
                output: 0,
                cached_input: 0,
            };
        }
        let Some(d) = self.dialect else {
            return reservation;
        };
        if let Some(p) = &mut self.sse {
            if ended {
                let streamed = &mut self.streamed;
                let any = &mut self.streamed_any;
                p.finish(&mut |t: &str| {
                    streamed.add(t);
                    *any = true;
                });
            }
            let seen = p.usage();
            if p.complete() {
                if let Some(u) = seen {
                    return provider(u);
                }
            }
            let counted = if self.streamed_any {
                estimate_tokens(&self.streamed, &Structure::default(), pre.encoding)
            } else {
                0
            };
            let u = seen.unwrap_or_default();
            return Settlement {
                source: Source::StreamedText,
                input: if u.input_tokens > 0 {
                    u.input_tokens
                } else {
                    pre.input_estimate
                },
                output: u.output_tokens.max(counted),
                cached_input: u.cached_input_tokens,
            };
        }
        if ended && !self.json_overflow && !self.opaque {
            let a = answer_from_json(d, &self.json);
            self.json_model = Some(a.model);
            if let Some(u) = a.usage {
                return provider(u);
            }
        }
        reservation
    }
}

fn provider(u: Usage) -> Settlement {
    Settlement {
        source: Source::Provider,
        input: u.input_tokens,
        output: u.output_tokens,
        cached_input: u.cached_input_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::env::{ManualClock, MemStore};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn chat(extra: serde_json::Value) -> Vec<u8> {
        let mut v = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn reservation_is_margin_on_input_plus_output_allowance() {
        let p = Policy {
            input_margin: Some(0.5),
            default_max_tokens: 100,
            ..Policy::default()
        };
        let pre = preflight(&p, "/v1/chat/completions", &chat(json!({"n": 2})), None).unwrap();
        assert_eq!(pre.api, Some(Api::OpenAiChat));
        assert_eq!(pre.encoding, Encoding::O200k);
        assert!(pre.input_raw > 0);
        assert_eq!(pre.input_estimate, pre.input_raw);
        assert_eq!(pre.output_allowance, 200);
        assert_eq!(
            pre.reserved,
            (pre.input_estimate as f64 * 1.5).ceil() as u64 + 200
        );
        assert_eq!(pre.rewrite, None);

        let pre = preflight(
            &p,
            "/v1/chat/completions",
            &chat(json!({"max_tokens": 7})),
            None,
        )
        .unwrap();
        assert_eq!(pre.output_allowance, 7);
    }

    #[test]
    fn calibration_scales_the_estimate() {
        let s = MemStore::default();
        let p = Policy::default();
        let body = chat(json!({}));
        let raw = preflight(&p, "/v1/chat/completions", &body, Some(&s))
            .unwrap()
            .input_raw;
        // A provider that counts twice the estimate, answer after answer.
        for _ in 0..40 {
            calibrate::observe(
                &s,
                &ManualClock::at(1),
                "gpt-4o",
                TextClass::Prose,
                raw,
                raw * 2,
            )
            .unwrap();
        }
        let pre = preflight(&p, "/v1/chat/completions", &body, Some(&s)).unwrap();
        assert_eq!(pre.input_raw, raw);
        let ratio = calibrate::ratio(&s, "gpt-4o", TextClass::Prose);
        assert!((ratio - 2.0).abs() < 0.02, "{ratio}");
        assert_eq!(pre.input_estimate, calibrate::apply(raw, ratio));
        let off = Policy {
            calibrate: false,
            ..Policy::default()
        };
        assert_eq!(
            preflight(&off, "/v1/chat/completions", &body, Some(&s))
                .unwrap()
                .input_estimate,
            raw
        );
    }

    #[test]
    fn enforce_max_tokens_modes() {
        let base = Policy {
            default_max_tokens: 64,
            include_usage: false,
            ..Policy::default()
        };
        let fill = Policy {
            enforce_max_tokens: EnforceMaxTokens::Fill,
            ..base.clone()
        };
        let cap = Policy {
            enforce_max_tokens: EnforceMaxTokens::Cap,
            ..base.clone()
        };
        let get = |pre: &Preflight| -> Option<u64> {
            pre.rewrite.as_ref().map(|b| {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["max_tokens"]
                    .as_u64()
                    .unwrap()
            })
        };
        let absent = chat(json!({}));
        let big = chat(json!({"max_tokens": 1000}));
        let small = chat(json!({"max_tokens": 10}));
        let pre = preflight(&fill, "/v1/chat/completions", &absent, None).unwrap();
        assert_eq!((get(&pre), pre.output_allowance), (Some(64), 64));
        let pre = preflight(&fill, "/v1/chat/completions", &big, None).unwrap();
        assert_eq!((get(&pre), pre.output_allowance), (None, 1000));
        let pre = preflight(&cap, "/v1/chat/completions", &big, None).unwrap();
        assert_eq!((get(&pre), pre.output_allowance), (Some(64), 64));
        let pre = preflight(&cap, "/v1/chat/completions", &small, None).unwrap();
        assert_eq!((get(&pre), pre.output_allowance), (None, 10));
        let pre = preflight(&base, "/v1/chat/completions", &big, None).unwrap();
        assert_eq!((get(&pre), pre.output_allowance), (None, 1000));
    }

    #[test]
    fn include_usage_rewrites_openai_streams_only() {
        let p = Policy {
            include_usage: true,
            ..Policy::default()
        };
        let pre = preflight(
            &p,
            "/v1/chat/completions",
            &chat(json!({"stream": true})),
            None,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(pre.rewrite.as_ref().unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(
            preflight(&p, "/v1/chat/completions", &chat(json!({})), None)
                .unwrap()
                .rewrite
                .is_none()
        );
    }

    #[test]
    fn bad_bodies_are_rejected_or_charged_by_size() {
        let reject = Policy::default();
        let r = preflight(&reject, "/v1/chat/completions", b"{oops", None).unwrap_err();
        assert_eq!((r.status, r.details), (400, "invalid_body"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request body is not valid JSON"));

        let pass = Policy {
            invalid_body: InvalidBody::Pass,
            default_max_tokens: 10,
            ..Policy::default()
        };
        let pre = preflight(&pass, "/v1/chat/completions", &[b'x'; 401], None).unwrap();
        assert!(pre.size_based);
        assert_eq!((pre.input_raw, pre.output_allowance), (101, 10));
        // Unknown APIs pass whatever the setting, charged by size.
        let pre = preflight(&reject, "/v1/unknown", &[b'x'; 8], None).unwrap();
        assert_eq!((pre.api, pre.size_based, pre.input_raw), (None, true, 2));
    }

    #[test]
    fn encoded_bodies_pass_charged_by_size() {
        let p = Policy {
            default_max_tokens: 10,
            include_usage: true,
            ..Policy::default()
        };
        let gz = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];
        let pre = preflight_encoded(&p, "/v1/chat/completions", &gz, None, true).unwrap();
        assert_eq!(
            (pre.api, pre.size_based, pre.input_raw, pre.output_allowance),
            (Some(Api::OpenAiChat), true, 2, 10)
        );
        assert_eq!(pre.rewrite, None);
    }

    #[test]
    fn embeddings_reserve_no_output() {
        let pre = preflight(
            &Policy::default(),
            "/v1/embeddings",
            br#"{"model":"text-embedding-3-small","input":"hi"}"#,
            None,
        )
        .unwrap();
        assert_eq!((pre.output_allowance, pre.encoding), (0, Encoding::Cl100k));
    }

    #[test]
    fn encodings_by_model_then_api() {
        assert_eq!(
            encoding_for(None, Some("claude-sonnet-4-6"), None),
            Encoding::Claude
        );
        assert_eq!(
            encoding_for(None, Some("models/gemini-2.5-pro"), None),
            Encoding::Gemini
        );
        assert_eq!(
            encoding_for(None, Some("meta-llama/Llama-3.1-8B"), None),
            Encoding::Llama
        );
        assert_eq!(
            encoding_for(None, Some("gpt-4-turbo"), None),
            Encoding::Cl100k
        );
        assert_eq!(
            encoding_for(None, Some("gpt-4o-mini"), None),
            Encoding::O200k
        );
        assert_eq!(
            encoding_for(None, Some("my-model"), Some(Api::AnthropicMessages)),
            Encoding::Claude
        );
        assert_eq!(
            encoding_for(Some(Encoding::Llama), Some("gpt-4o"), None),
            Encoding::Llama
        );
    }

    fn pre() -> Preflight {
        preflight(
            &Policy {
                default_max_tokens: 50,
                ..Policy::default()
            },
            "/v1/chat/completions",
            &chat(json!({})),
            None,
        )
        .unwrap()
    }

    #[test]
    fn settlement_fallbacks() {
        let p = pre();
        // No response at all.
        let mut t = ResponseTracker::new(p.api);
        assert_eq!(
            t.settle(&p, false),
            Settlement {
                source: Source::Reservation,
                input: p.input_estimate,
                output: 50,
                cached_input: 0
            }
        );
        // Refused by the provider.
        let mut t = ResponseTracker::new(p.api);
        t.on_headers(429, Some("application/json"), None);
        assert!(!t.wants_body());
        assert_eq!(t.settle(&p, true).source, Source::Refused);
        // Compressed JSON: unread, reservation.
        let mut t = ResponseTracker::new(p.api);
        t.on_headers(200, Some("application/json"), Some("gzip"));
        assert!(!t.wants_body());
        assert_eq!(t.settle(&p, true).source, Source::Reservation);
        // Oversized JSON: dropped, reservation.
        let mut t = ResponseTracker::new(p.api);
        t.on_headers(200, Some("application/json"), None);
        t.on_chunk(&vec![b' '; MAX_JSON_RESPONSE_BYTES + 1]);
        assert!(!t.wants_body());
        assert_eq!(t.settle(&p, true).source, Source::Reservation);
    }

    #[test]
    fn settles_from_provider_json_and_sse() {
        let p = pre();
        let mut t = ResponseTracker::new(p.api);
        t.on_headers(200, Some("application/json"), None);
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":5,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":16}}}"#;
        let (a, b) = body.split_at(40);
        t.on_chunk(a);
        t.on_chunk(b);
        assert_eq!(
            t.settle(&p, true),
            Settlement {
                source: Source::Provider,
                input: 21,
                output: 5,
                cached_input: 16
            }
        );

        let mut t = ResponseTracker::new(p.api);
        t.on_headers(200, Some("text/event-stream; charset=utf-8"), None);
        t.on_chunk(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello wor");
        t.on_chunk(b"ld\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(
            t.settle(&p, true),
            Settlement {
                source: Source::Provider,
                input: 9,
                output: 2,
                cached_input: 0
            }
        );
    }

    #[test]
    fn cut_stream_counts_streamed_text() {
        let p = pre();
        let mut t = ResponseTracker::new(p.api);
        t.on_headers(200, Some("text/event-stream"), None);
        t.on_chunk(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The quick brown fox jumps over the lazy dog.\"}}]}\n\n");
        let s = t.settle(&p, false);
        assert_eq!(
            (s.source, s.input),
            (Source::StreamedText, p.input_estimate)
        );
        assert!(s.output >= 5 && s.output <= 20, "{s:?}");

        // Anthropic: input known from message_start even if the stream is cut.
        let ap = preflight(
            &Policy::default(),
            "/v1/messages",
            br#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
            None,
        )
        .unwrap();
        let mut t = ResponseTracker::new(ap.api);
        t.on_headers(200, Some("text/event-stream"), None);
        t.on_chunk(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n");
        let s = t.settle(&ap, false);
        assert_eq!((s.source, s.input), (Source::StreamedText, 42));
    }
}
