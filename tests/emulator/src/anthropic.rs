//! Anthropic Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`.

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::app::{opt_bool, opt_u64, require_model, ApiError, Ctx, Outcome, Plan, Streamer};
use crate::faults::maybe_break_counts;
use crate::http;
use crate::tokens;

/// Validates the shared fields and returns the input tokens
/// ([`tokens::anthropic_input_tokens`]).
fn input_tokens(body: &Value) -> Result<u64, ApiError> {
    let system = match body.get("system") {
        None | Some(Value::Null) => None,
        Some(s @ Value::String(_)) => Some(s),
        Some(s @ Value::Array(a))
            if a.iter()
                .all(|b| b.get("type").and_then(Value::as_str) == Some("text")) =>
        {
            Some(s)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "system: Input should be a string or a list of text blocks",
            ))
        }
    };
    let messages = match body.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "messages: at least one message is required",
            ))
        }
        None | Some(Value::Null) => return Err(ApiError::bad_request("messages: Field required")),
        Some(_) => {
            return Err(ApiError::bad_request(
                "messages: Input should be a valid list",
            ))
        }
    };
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user") | Some("assistant") => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )))
            }
        }
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(a))
                if a.iter()
                    .all(|b| b.get("type").is_some_and(Value::is_string)) => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "messages.{i}.content: Input should be a string or a list of content blocks"
                )))
            }
        }
    }
    let tools = match body.get("tools") {
        None | Some(Value::Null) => None,
        Some(t @ Value::Array(_)) => Some(t),
        Some(_) => return Err(ApiError::bad_request("tools: Input should be a valid list")),
    };
    Ok(tokens::anthropic_input_tokens(system, messages, tools))
}

fn usage(input: u64, output: u64, broken: bool) -> Value {
    maybe_break_counts(
        json!({
            "input_tokens": input,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        }),
        broken,
    )
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`; not rate limited.
pub fn count_tokens(_ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    require_model(body)?;
    let input = input_tokens(body)?;
    Ok(Outcome {
        resp: http::json(StatusCode::OK, &json!({"input_tokens": input})),
        prompt_tokens: 0,
        completion_tokens: 0,
        ratelimit: None,
    })
}

/// `POST /v1/messages`, streaming or not.
pub fn messages(ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    let model = require_model(body)?;
    let max_tokens = match opt_u64(body, "max_tokens") {
        Ok(Some(m)) if m >= 1 => m,
        Ok(None) => return Err(ApiError::bad_request("max_tokens: Field required")),
        _ => {
            return Err(ApiError::bad_request(
                "max_tokens: Input should be an integer greater than or equal to 1",
            ))
        }
    };
    let input = input_tokens(body)?;
    let stream = opt_bool(body, "stream")?;
    // A tool call instead of text, unless the last turn carries a tool result.
    let last_is_result = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    let has_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let call = ctx
        .tool_call
        .clone()
        .filter(|_| has_tools && !last_is_result);
    let call_id = call.as_ref().map(|_| ctx.app.new_id("toolu_01", 22));
    let plan = Plan::new(ctx.requested_output, Some(max_tokens), 1)?;
    let snapshot = ctx
        .app
        .admit(&ctx.key, input.saturating_add(plan.allowance))?;
    let id = ctx.app.new_id("msg_01", 22);
    let out = plan.completion();
    let stop = match (&call, plan.cut) {
        (Some(_), _) => "tool_use",
        (None, true) => "max_tokens",
        (None, false) => "end_turn",
    };
    let broken = ctx.faults.broken_usage;

    if !stream {
        ctx.app.refund(&ctx.key, plan.refund());
        let v = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": match &call {
                Some(name) => json!([{"type": "tool_use", "id": call_id, "name": name,
                    "input": {"q": tokens::output_text(out)}}]),
                None => json!([{"type": "text", "text": tokens::output_text(out)}]),
            },
            "stop_reason": stop, "stop_sequence": null, "usage": usage(input, out, broken),
        });
        return Ok(Outcome {
            resp: http::json(StatusCode::OK, &v),
            prompt_tokens: input,
            completion_tokens: out,
            ratelimit: Some(snapshot),
        });
    }

    let (tx, body_out) = http::channel_body();
    let app = ctx.app.clone();
    let key = ctx.key.clone();
    let mut s = Streamer::new(tx, &ctx.faults);
    tokio::spawn(async move {
        let _ = async {
            let start = [
                http::sse_event(
                    "message_start",
                    &json!({"type": "message_start", "message": {
                        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": null, "stop_sequence": null, "usage": usage(input, 1, broken),
                    }}),
                ),
                http::sse_event(
                    "content_block_start",
                    &match &call {
                        Some(name) => json!({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}}),
                        None => json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    },
                ),
                http::sse_event("ping", &json!({"type": "ping"})),
            ];
            for b in start {
                if !s.frame(b).await {
                    return false;
                }
            }
            let args = |a: &str| {
                http::sse_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": a}}),
                )
            };
            if call.is_some() && !s.frame(args("{\"q\":\"")).await {
                return false;
            }
            for t in 0..out {
                let b = match call {
                    Some(_) => args(&tokens::piece(t)),
                    None => http::sse_event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tokens::piece(t)}}),
                    ),
                };
                if !s.token(b).await {
                    return false;
                }
            }
            if call.is_some() && !s.frame(args("\"}")).await {
                return false;
            }
            let end = [
                http::sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
                http::sse_event(
                    "message_delta",
                    &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": maybe_break_counts(json!({"output_tokens": out}), broken)}),
                ),
                http::sse_event("message_stop", &json!({"type": "message_stop"})),
            ];
            for b in end {
                if !s.frame(b).await {
                    return false;
                }
            }
            true
        }
        .await;
        app.refund(&key, plan.refund());
    });
    Ok(Outcome {
        resp: http::sse(body_out),
        prompt_tokens: input,
        completion_tokens: out,
        ratelimit: Some(snapshot),
    })
}
