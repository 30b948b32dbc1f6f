//! Failover across providers: the request's life on a route whose chain
//! names clusters of another API than the client's (`core::translate` does
//! the translating).
//!
//! Downstream ([`Exchange`]): before the plan, which foreign entries the
//! request can be translated for (the others are skipped for it); after it,
//! what the upstream instance needs (the client's dialect, the output
//! allowance for Anthropic's required `max_tokens`, the original path), in
//! filter state [`XLATE_PROPERTY`]; at the answer, whether it was translated
//! (the access log's `translated`).
//!
//! Upstream ([`AttemptXlate`]): per attempt, the request for the attempt's
//! provider (path, body, content-length) and its answer back, the stream
//! chunk by chunk. A route whose chain does not cross providers never reaches
//! any of this (one loop over its chain, no host call).

use super::*;
use crate::core::config::crossing;
use crate::core::telemetry::{TRANSLATED_ATTEMPTS_TOTAL, TRANSLATION_SKIPS_TOTAL};
use crate::core::translate::answer::{self, HeaderChange};
use crate::core::translate::request::{self as xreq, Translated};
use crate::core::translate::stream::StreamTranslator;
use crate::core::translate::{Dialect, Direction};

/// Filter state the downstream instance leaves for the upstream one:
/// `<client dialect>\n<output allowance>\n<path>`.
pub const XLATE_PROPERTY: &str = "llmcap_xlate";
/// Set on a translated attempt's answer: the direction (see the access log).
pub const TRANSLATED_HEADER: &str = "x-llm-capacity-translated";
/// Anthropic's API version header, added when the client sent none.
const ANTHROPIC_VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

/// What the downstream instance knows about translation for its request.
#[derive(Debug, Default)]
pub(super) struct Xlate {
    /// Chain entries (indices) the request cannot be translated for.
    pub skip: Vec<usize>,
    /// The answer came from a translated attempt (its direction).
    pub translated: Option<&'static str>,
}

fn direction_label(s: &str) -> Option<&'static str> {
    ["openai_to_anthropic", "anthropic_to_openai"]
        .into_iter()
        .find(|d| *d == s)
}

impl Exchange {
    /// The client's dialect, when its API is one we translate.
    fn client_dialect(&self) -> Option<Dialect> {
        self.pre
            .as_ref()
            .and_then(|p| p.api)
            .and_then(Dialect::of_api)
    }

    /// On a chain across providers: the foreign entries this request cannot
    /// be translated for (a body the translator refuses, or an API it does
    /// not translate) are skipped for it.
    pub(super) fn check_translation(
        &mut self,
        h: &mut dyn Host,
        policy: &RoutePolicy,
        body: &[u8],
    ) {
        if !crossing::crosses_providers(&policy.clusters) {
            return;
        }
        let client = self.client_dialect();
        for (i, t) in policy.clusters.iter().enumerate() {
            let Some(provider) = crossing::dialect(t.cluster.provider) else {
                continue;
            };
            if Some(provider) == client {
                continue;
            }
            let why = match client {
                None => "the request's API is not translated".to_string(),
                Some(client) => {
                    let dir = Direction { client, provider };
                    match xreq::translate(dir, body, t.model.as_deref(), 1) {
                        Ok(_) => continue,
                        Err(e) => e.0,
                    }
                }
            };
            log::debug!(
                "llm-capacity: route {}: {} skipped, not translatable: {why}",
                policy.name,
                t.cluster.name
            );
            self.count(
                h,
                &[("route", &policy.name), ("cluster", &t.cluster.name)],
                TRANSLATION_SKIPS_TOTAL,
            );
            self.xlate.skip.push(i);
        }
    }

    /// Whether chain entry `i` is skipped for this request (untranslatable).
    pub(super) fn untranslatable(&self, i: usize) -> bool {
        self.xlate.skip.contains(&i)
    }

    /// The local 400 when no entry of the chain can take the request.
    pub(super) fn untranslatable_reply(&self) -> LocalReply {
        let msg = "This request cannot be translated for any provider of this route's chain without changing its meaning.";
        let mut r = if self.client_dialect() == Some(Dialect::Anthropic) {
            LocalReply::anthropic_error(400, "invalid_request_error", "untranslatable_request", msg)
        } else {
            LocalReply::openai_error(400, "invalid_request_error", "untranslatable_request", msg)
        };
        r.headers
            .push(("x-should-retry".to_string(), "false".to_string()));
        r
    }

    /// Leaves the upstream instance what it needs to translate an attempt.
    pub(super) fn publish_translation(&self, h: &mut dyn Host, policy: &RoutePolicy) {
        if !self.config.upstream_filter || !crossing::crosses_providers(&policy.clusters) {
            return;
        }
        let (Some(client), Some(pre)) = (self.client_dialect(), self.pre.as_ref()) else {
            return;
        };
        let text = format!(
            "{}\n{}\n{}",
            client.name(),
            pre.output_allowance,
            self.head.path
        );
        if let Err(s) = h.set_property(&[XLATE_PROPERTY], text.as_bytes()) {
            log::debug!("llm-capacity: cannot publish the translation (host status {s})");
        }
    }

    /// The answer's translation, from the upstream instance's header.
    pub(super) fn note_translated(&mut self, headers: Option<&HeaderList>) {
        if let Some(d) = headers.and_then(|l| l.get(TRANSLATED_HEADER)) {
            self.xlate.translated = direction_label(d);
        }
    }
}

// ---------------------------------------------------------------- upstream

/// How the answer is being translated.
enum AnswerMode {
    /// Not yet known (before response headers), or passed untranslated.
    None,
    /// A success's JSON body, buffered to its end (Envoy's buffer limit bounds it).
    Json,
    /// An error body, buffered to its end, into the client's error shape.
    Error(u32),
    /// An SSE stream, chunk by chunk.
    Stream(Box<StreamTranslator>),
}

/// One attempt's translation in the upstream instance.
pub struct AttemptXlate {
    dir: Direction,
    model: Option<String>,
    allowance: u64,
    /// The request's body still needs translating (headers held).
    pending_request: bool,
    include_usage: bool,
    answer: AnswerMode,
}

/// The downstream's note, when the route crosses providers.
struct Note<'a> {
    client: Dialect,
    allowance: u64,
    path: &'a str,
}

fn parse_note(s: &str) -> Option<Note<'_>> {
    let mut it = s.splitn(3, '\n');
    Some(Note {
        client: Dialect::parse(it.next()?)?,
        allowance: it.next()?.parse().ok()?,
        path: it.next()?,
    })
}

/// At an attempt's request headers: on a chain across providers, an attempt
/// to a cluster of the client's own API gets the client's path back (an
/// earlier translated attempt's header changes persist); one to another API
/// gets that API's path, and its body is translated (the headers are held).
pub fn on_attempt_headers(
    h: &mut dyn Host,
    metrics: bool,
    route: &RoutePolicy,
    cluster: &str,
    model: Option<&str>,
) -> Option<AttemptXlate> {
    if !crossing::crosses_providers(&route.clusters) {
        return None;
    }
    let provider = route
        .clusters
        .iter()
        .find(|t| t.cluster.name == cluster)
        .and_then(|t| crossing::dialect(t.cluster.provider))?;
    let text = h.property_text(&[XLATE_PROPERTY])?;
    let note = parse_note(&text)?;
    let path = h.header(Map::RequestHeaders, ":path").unwrap_or_default();
    if provider == note.client {
        if path != note.path {
            let _ = h.set_header(Map::RequestHeaders, ":path", note.path);
        }
        return None;
    }
    let target = provider.path();
    if path != target {
        let _ = h.set_header(Map::RequestHeaders, ":path", target);
    }
    // The answer is translated as it comes: it must not come compressed.
    let _ = h.remove_header(Map::RequestHeaders, "accept-encoding");
    if provider == Dialect::Anthropic
        && h.header(Map::RequestHeaders, ANTHROPIC_VERSION.0).is_none()
    {
        let _ = h.set_header(
            Map::RequestHeaders,
            ANTHROPIC_VERSION.0,
            ANTHROPIC_VERSION.1,
        );
    }
    let dir = Direction {
        client: note.client,
        provider,
    };
    if metrics {
        h.count(
            &[
                ("route", &route.name),
                ("cluster", cluster),
                ("direction", dir.label()),
            ],
            TRANSLATED_ATTEMPTS_TOTAL,
            1,
        );
    }
    Some(AttemptXlate {
        dir,
        model: model.map(str::to_string),
        allowance: note.allowance,
        pending_request: true,
        include_usage: false,
        answer: AnswerMode::None,
    })
}

impl AttemptXlate {
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Whether the request body still waits for its translation.
    pub fn pending_request(&self) -> bool {
        self.pending_request
    }

    /// The whole request body (`eos`): translated, with its content-length.
    /// `Err`: the local answer to send instead (a body that cannot be translated).
    pub fn on_request_body(
        &mut self,
        h: &mut dyn Host,
        body_size: usize,
    ) -> Result<(), LocalReply> {
        self.pending_request = false;
        let body = h
            .body(Buffer::RequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match xreq::translate(self.dir, &body, self.model.as_deref(), self.allowance) {
            Ok(Translated {
                body: new_body,
                include_usage,
                dropped,
                ..
            }) => {
                self.include_usage = include_usage;
                if !dropped.is_empty() {
                    log::debug!("llm-capacity: translation dropped {}", dropped.join(", "));
                }
                if let Err(s) = plan::set_request_body(h, body_size, &new_body) {
                    log::warn!("llm-capacity: translated body not set (host status {s})");
                }
                Ok(())
            }
            Err(e) => {
                let msg = format!("This request cannot be translated for its provider: {e}");
                let mut r = match self.dir.client {
                    Dialect::Anthropic => LocalReply::anthropic_error(
                        400,
                        "invalid_request_error",
                        "untranslatable_request",
                        &msg,
                    ),
                    Dialect::OpenAi => LocalReply::openai_error(
                        400,
                        "invalid_request_error",
                        "untranslatable_request",
                        &msg,
                    ),
                };
                r.headers
                    .push(("x-should-retry".to_string(), "false".to_string()));
                Err(r)
            }
        }
    }

    /// The answer's headers: the translation's mode, the status and the
    /// rate-limit headers in the client's form, the direction named.
    pub fn on_response_headers(&mut self, h: &mut dyn Host, status: u32) {
        let headers = h.header_list(Map::ResponseHeaders);
        if headers
            .get("content-encoding")
            .is_some_and(|e| e != "identity")
        {
            log::warn!("llm-capacity: a compressed answer cannot be translated; passed as it is");
            return;
        }
        let now = h.now_ms();
        for change in answer::rate_limit_headers(self.dir, headers.iter(), now) {
            let _ = match change {
                HeaderChange::Set(k, v) => h.set_header(Map::ResponseHeaders, &k, &v),
                HeaderChange::Remove(k) => h.remove_header(Map::ResponseHeaders, &k),
            };
        }
        let _ = h.set_header(Map::ResponseHeaders, TRANSLATED_HEADER, self.dir.label());
        let _ = h.remove_header(Map::ResponseHeaders, "content-length");
        let streamed = headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"));
        self.answer = if !(200..300).contains(&status) {
            let to = answer::status(self.dir, status);
            if to != status {
                let _ = h.set_header(Map::ResponseHeaders, ":status", &to.to_string());
            }
            let _ = h.set_header(Map::ResponseHeaders, "content-type", "application/json");
            AnswerMode::Error(status)
        } else if streamed {
            AnswerMode::Stream(Box::new(StreamTranslator::new(
                self.dir,
                self.model.as_deref(),
                self.include_usage,
                now / 1000,
            )))
        } else {
            AnswerMode::Json
        };
    }

    /// An answer body chunk (`size`: this chunk, or all buffered while paused).
    pub fn on_response_body(&mut self, h: &mut dyn Host, size: usize, eos: bool) -> Flow {
        match &mut self.answer {
            AnswerMode::None => Flow::Continue,
            AnswerMode::Stream(t) => {
                let chunk = h
                    .body(Buffer::ResponseBody, 0, size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let mut out = t.feed(&chunk);
                if eos {
                    out.extend(t.finish());
                    if t.malformed() > 0 {
                        log::warn!(
                            "llm-capacity: {} malformed events skipped in a translated stream",
                            t.malformed()
                        );
                    }
                }
                if let Err(s) = h.set_body(Buffer::ResponseBody, 0, size, &out) {
                    log::warn!("llm-capacity: translated chunk not set (host status {s})");
                }
                Flow::Continue
            }
            AnswerMode::Json | AnswerMode::Error(_) if !eos => Flow::Pause,
            AnswerMode::Json | AnswerMode::Error(_) => {
                let body = h
                    .body(Buffer::ResponseBody, 0, size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let now_s = h.now_ms() / 1000;
                let out = match &self.answer {
                    AnswerMode::Error(status) => answer::error_body(self.dir, *status, &body),
                    _ => answer::json_answer(self.dir, &body, self.model.as_deref(), now_s)
                        .unwrap_or_else(|| answer::error_body(self.dir, 502, &body)),
                };
                if let Err(s) = h.set_body(Buffer::ResponseBody, 0, size, &out) {
                    log::warn!("llm-capacity: translated answer not set (host status {s})");
                }
                self.answer = AnswerMode::None;
                Flow::Continue
            }
        }
    }
}
