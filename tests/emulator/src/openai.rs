//! OpenAI endpoints: chat completions, legacy completions, embeddings, the
//! Responses API and the model list.

use hyper::body::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::app::{
    opt_bool, opt_u64, require_model, unix_now, ApiError, Ctx, Outcome, Plan, Streamer,
};
use crate::faults::maybe_break_counts;
use crate::http;
use crate::tokens;

pub const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
];
const MAX_CHOICES: u64 = 128;
const MAX_DIMENSIONS: u64 = 4096;
const DEFAULT_DIMENSIONS: u64 = 8;

pub fn models() -> Outcome {
    let data: Vec<Value> =
        MODELS.iter().map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "emulator"})).collect();
    Outcome {
        resp: http::json(StatusCode::OK, &json!({"object": "list", "data": data})),
        prompt_tokens: 0,
        completion_tokens: 0,
        ratelimit: None,
    }
}

fn finish(cut: bool) -> &'static str {
    if cut {
        "length"
    } else {
        "stop"
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

fn choices_param(body: &Value) -> Result<u64, ApiError> {
    let n = opt_u64(body, "n")?.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(ApiError::bad_request(format!(
            "Invalid value for 'n': must be in 1..={MAX_CHOICES}."
        )));
    }
    Ok(n)
}

fn include_usage(body: &Value) -> Result<bool, ApiError> {
    match body.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(o @ Value::Object(_)) => opt_bool(o, "include_usage"),
        Some(_) => Err(ApiError::bad_request(
            "Invalid type for 'stream_options': expected an object.",
        )),
    }
}

fn tools_param(body: &Value) -> Result<Option<&Value>, ApiError> {
    match body.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(t @ Value::Array(_)) => Ok(Some(t)),
        Some(_) => Err(ApiError::bad_request(
            "Invalid type for 'tools': expected an array.",
        )),
    }
}

/// `POST /v1/chat/completions`. Prompt tokens: [`tokens::openai_chat_prompt_tokens`].
pub fn chat(ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    let model = require_model(body)?;
    let messages = match body.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "Missing required parameter: 'messages'.",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid type for 'messages': expected an array of objects.",
            ))
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::bad_request(format!(
                "Missing or invalid 'messages[{i}].role': expected a string."
            )));
        }
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(ApiError::bad_request(format!("Invalid type for 'messages[{i}].content': expected a string or an array of content parts."))),
        }
    }
    let tools = tools_param(body)?;
    let n = choices_param(body)?;
    let max_tokens = match opt_u64(body, "max_completion_tokens")? {
        Some(m) => Some(m),
        None => opt_u64(body, "max_tokens")?,
    };
    let stream = opt_bool(body, "stream")?;
    let with_usage = include_usage(body)?;

    let prompt = tokens::openai_chat_prompt_tokens(messages, tools);
    let plan = Plan::new(ctx.requested_output, max_tokens, n)?;
    // A tool call instead of text, unless the last turn is the tool's result.
    let call = ctx.tool_call.clone().filter(|_| {
        n == 1
            && tools
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty())
            && messages
                .last()
                .and_then(|m| m.get("role"))
                .and_then(Value::as_str)
                != Some("tool")
    });
    let call_id = call.as_ref().map(|_| ctx.app.new_id("call_", 24));
    let snapshot = ctx
        .app
        .admit(&ctx.key, prompt.saturating_add(plan.allowance))?;
    let id = ctx.app.new_id("chatcmpl-", 29);
    let created = unix_now();
    let broken = ctx.faults.broken_usage;

    if !stream {
        ctx.app.refund(&ctx.key, plan.refund());
        let text = tokens::output_text(plan.per_choice);
        let choices: Vec<Value> = match &call {
            Some(name) => vec![json!({
                "index": 0,
                "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                    "tool_calls": [{"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": json!({"q": text}).to_string()}}]},
                "logprobs": null,
                "finish_reason": "tool_calls",
            })],
            None => (0..n)
                .map(|i| {
                    json!({
                        "index": i,
                        "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                        "logprobs": null,
                        "finish_reason": finish(plan.cut),
                    })
                })
                .collect(),
        };
        let v = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": maybe_break_counts(usage(prompt, plan.completion()), broken),
            "service_tier": "default",
            "system_fingerprint": "fp_emulator",
        });
        return Ok(Outcome {
            resp: http::json(StatusCode::OK, &v),
            prompt_tokens: prompt,
            completion_tokens: plan.completion(),
            ratelimit: Some(snapshot),
        });
    }

    let (tx, body_out) = http::channel_body();
    let app = ctx.app.clone();
    let key = ctx.key.clone();
    let mut s = Streamer::new(tx, &ctx.faults);
    tokio::spawn(async move {
        let chunk = |choices: Value| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_emulator", "choices": choices,
            });
            if with_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let ok = async {
            for i in 0..n {
                let d = json!([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}]);
                if !s.frame(http::sse_data(&chunk(d))).await {
                    return false;
                }
            }
            if let Some(name) = &call {
                let d = json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": "{\"q\":\""}}]}, "logprobs": null, "finish_reason": null}]);
                if !s.frame(http::sse_data(&chunk(d))).await {
                    return false;
                }
            }
            let args = |a: String| json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]});
            for t in 0..plan.per_choice {
                let piece = tokens::piece(t);
                for i in 0..n {
                    let delta = match call {
                        Some(_) => args(piece.clone()),
                        None => json!({"content": piece}),
                    };
                    let d = json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": null}]);
                    let b = http::sse_data(&chunk(d));
                    let sent = if i == 0 { s.token(b).await } else { s.frame(b).await };
                    if !sent {
                        return false;
                    }
                }
            }
            if call.is_some() {
                let d = json!([{"index": 0, "delta": args("\"}".to_string()), "logprobs": null, "finish_reason": null}]);
                if !s.frame(http::sse_data(&chunk(d))).await {
                    return false;
                }
            }
            let reason = if call.is_some() { "tool_calls" } else { finish(plan.cut) };
            for i in 0..n {
                let d = json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": reason}]);
                if !s.frame(http::sse_data(&chunk(d))).await {
                    return false;
                }
            }
            if with_usage {
                let mut u = chunk(json!([]));
                u["usage"] = maybe_break_counts(usage(prompt, plan.completion()), broken);
                if !s.frame(http::sse_data(&u)).await {
                    return false;
                }
            }
            s.frame(Bytes::from_static(b"data: [DONE]\n\n")).await
        }
        .await;
        let _ = ok;
        app.refund(&key, plan.refund());
    });
    Ok(Outcome {
        resp: http::sse(body_out),
        prompt_tokens: prompt,
        completion_tokens: plan.completion(),
        ratelimit: Some(snapshot),
    })
}

/// Prompt strings of a legacy completion or embedding input: a string, an
/// array of strings, an array of token ids, or an array of token-id arrays.
/// Returns the token count of each prompt.
fn prompt_list(v: Option<&Value>, field: &str) -> Result<Vec<u64>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!("Invalid type for '{field}': expected a string, an array of strings, or an array of token arrays."))
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!(
            "Missing required parameter: '{field}'."
        ))),
        Some(Value::String(s)) => Ok(vec![tokens::count(s)]),
        Some(Value::Array(a)) if a.is_empty() => Err(ApiError::bad_request(format!(
            "Invalid '{field}': empty array."
        ))),
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) => Ok(vec![a.len() as u64]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => Ok(tokens::count(s)),
                Value::Array(t) if t.iter().all(Value::is_u64) => Ok(t.len() as u64),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `POST /v1/completions` (legacy). prompt_tokens = Σ tokens(prompt) over the
/// prompts (token-id arrays count their length); one choice per prompt × n.
pub fn completions(ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    let model = require_model(body)?;
    let prompts = prompt_list(body.get("prompt"), "prompt")?;
    let n = choices_param(body)?;
    let max_tokens = opt_u64(body, "max_tokens")?;
    let stream = opt_bool(body, "stream")?;
    let with_usage = include_usage(body)?;
    let prompt: u64 = prompts.iter().sum();
    let total_choices = n * prompts.len() as u64;
    let plan = Plan::new(ctx.requested_output, max_tokens, total_choices)?;
    let snapshot = ctx
        .app
        .admit(&ctx.key, prompt.saturating_add(plan.allowance))?;
    let id = ctx.app.new_id("cmpl-", 29);
    let created = unix_now();
    let u = maybe_break_counts(
        json!({"prompt_tokens": prompt, "completion_tokens": plan.completion(), "total_tokens": prompt + plan.completion()}),
        ctx.faults.broken_usage,
    );

    if !stream {
        ctx.app.refund(&ctx.key, plan.refund());
        let text = tokens::output_text(plan.per_choice);
        let choices: Vec<Value> = (0..total_choices)
            .map(|i| json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish(plan.cut)}))
            .collect();
        let v = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": u, "system_fingerprint": "fp_emulator"});
        return Ok(Outcome {
            resp: http::json(StatusCode::OK, &v),
            prompt_tokens: prompt,
            completion_tokens: plan.completion(),
            ratelimit: Some(snapshot),
        });
    }

    let (tx, body_out) = http::channel_body();
    let app = ctx.app.clone();
    let key = ctx.key.clone();
    let mut s = Streamer::new(tx, &ctx.faults);
    tokio::spawn(async move {
        let chunk = |choices: Value| {
            let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "system_fingerprint": "fp_emulator"});
            if with_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let _ = async {
            for t in 0..plan.per_choice {
                let piece = tokens::piece(t);
                for i in 0..total_choices {
                    let b = http::sse_data(&chunk(json!([{"text": piece, "index": i, "logprobs": null, "finish_reason": null}])));
                    let sent = if i == 0 { s.token(b).await } else { s.frame(b).await };
                    if !sent {
                        return false;
                    }
                }
            }
            for i in 0..total_choices {
                let b = http::sse_data(&chunk(json!([{"text": "", "index": i, "logprobs": null, "finish_reason": finish(plan.cut)}])));
                if !s.frame(b).await {
                    return false;
                }
            }
            if with_usage {
                let mut c = chunk(json!([]));
                c["usage"] = u;
                if !s.frame(http::sse_data(&c)).await {
                    return false;
                }
            }
            s.frame(Bytes::from_static(b"data: [DONE]\n\n")).await
        }
        .await;
        app.refund(&key, plan.refund());
    });
    Ok(Outcome {
        resp: http::sse(body_out),
        prompt_tokens: prompt,
        completion_tokens: plan.completion(),
        ratelimit: Some(snapshot),
    })
}

/// A deterministic unit vector for input `index` with `n` tokens.
fn fake_vector(seed: u64, dims: u64) -> Vec<f32> {
    let mut rng = crate::faults::Rng::new(seed);
    let v: Vec<f32> = (0..dims).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}

/// `POST /v1/embeddings`. prompt_tokens = Σ tokens(input) over the inputs.
/// Vectors are small (8 dimensions unless `dimensions` says otherwise) and
/// deterministic; `encoding_format: "base64"` (the Python SDK's default) is honoured.
pub fn embeddings(ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    let model = require_model(body)?;
    let inputs = prompt_list(body.get("input"), "input")?;
    let dims = opt_u64(body, "dimensions")?.unwrap_or(DEFAULT_DIMENSIONS);
    if dims == 0 || dims > MAX_DIMENSIONS {
        return Err(ApiError::bad_request(format!(
            "Invalid value for 'dimensions': must be in 1..={MAX_DIMENSIONS}."
        )));
    }
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            ))
        }
    };
    let prompt: u64 = inputs.iter().sum();
    let snapshot = ctx.app.admit(&ctx.key, prompt)?;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = fake_vector((i as u64) << 32 ^ n, dims);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(http::base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let usage = maybe_break_counts(
        json!({"prompt_tokens": prompt, "total_tokens": prompt}),
        ctx.faults.broken_usage,
    );
    let v = json!({"object": "list", "data": data, "model": model, "usage": usage});
    Ok(Outcome {
        resp: http::json(StatusCode::OK, &v),
        prompt_tokens: prompt,
        completion_tokens: 0,
        ratelimit: Some(snapshot),
    })
}

/// Input tokens of a Responses API request: the chat formula
/// ([`tokens::openai_chat_prompt_tokens`]) applied to the input items, where a
/// string `input` is one `{"role":"user","content":input}` message and
/// `instructions` is a leading `{"role":"system","content":instructions}`
/// message; every field of an item counts (so `type` counts too).
pub fn responses_input_tokens(body: &Value) -> Result<u64, ApiError> {
    let mut items: Vec<Value> = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => items.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid type for 'instructions': expected a string.",
            ))
        }
    }
    match body.get("input") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "Missing required parameter: 'input'.",
            ))
        }
        Some(Value::String(s)) => items.push(json!({"role": "user", "content": s})),
        Some(Value::Array(a)) => {
            if !a.iter().all(Value::is_object) {
                return Err(ApiError::bad_request(
                    "Invalid type for 'input': expected a string or an array of input items.",
                ));
            }
            items.extend(a.iter().cloned());
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid type for 'input': expected a string or an array of input items.",
            ))
        }
    }
    Ok(tokens::openai_chat_prompt_tokens(
        &items,
        tools_param(body)?,
    ))
}

/// `POST /v1/responses`, streaming or not.
pub fn responses(ctx: &Ctx, body: &Value) -> Result<Outcome, ApiError> {
    let model = require_model(body)?;
    let input = responses_input_tokens(body)?;
    let max_tokens = opt_u64(body, "max_output_tokens")?;
    let stream = opt_bool(body, "stream")?;
    let plan = Plan::new(ctx.requested_output, max_tokens, 1)?;
    let snapshot = ctx
        .app
        .admit(&ctx.key, input.saturating_add(plan.allowance))?;
    let id = ctx.app.new_id("resp_", 32);
    let msg_id = ctx.app.new_id("msg_", 32);
    let created = unix_now();
    let text = tokens::output_text(plan.per_choice);
    let out = plan.completion();
    let status = if plan.cut { "incomplete" } else { "completed" };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "usage": usage, "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": max_tokens, "parallel_tool_calls": true, "previous_response_id": null,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [], "truncation": "disabled",
            "text": {"format": {"type": "text"}}, "metadata": {}, "reasoning": {"effort": null, "summary": null},
        })
    };
    let usage = maybe_break_counts(
        json!({
            "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + out,
        }),
        ctx.faults.broken_usage,
    );
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let item = |t: &str, st: &str, content: Value| json!({"type": "message", "id": msg_id, "status": st, "role": "assistant", "content": content, "_t": t});
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("_t");
        }
        v
    };
    let final_item = strip(item(&text, status, json!([part(&text)])));
    let final_resp = response(status, json!([final_item.clone()]), usage);

    if !stream {
        ctx.app.refund(&ctx.key, plan.refund());
        return Ok(Outcome {
            resp: http::json(StatusCode::OK, &final_resp),
            prompt_tokens: input,
            completion_tokens: out,
            ratelimit: Some(snapshot),
        });
    }

    let start_resp = response("in_progress", json!([]), Value::Null);
    let added_item = strip(item("", "in_progress", json!([])));
    let (tx, body_out) = http::channel_body();
    let app = ctx.app.clone();
    let key = ctx.key.clone();
    let mut s = Streamer::new(tx, &ctx.faults);
    let per = plan.per_choice;
    let done_event = if plan.cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut ev = |t: &str, mut v: Value| {
            v["type"] = json!(t);
            v["sequence_number"] = json!(seq);
            seq += 1;
            http::sse_event(t, &v)
        };
        let _ = async {
            let framing = [
                ev("response.created", json!({"response": start_resp})),
                ev("response.in_progress", json!({"response": start_resp})),
                ev("response.output_item.added", json!({"output_index": 0, "item": added_item})),
                ev("response.content_part.added", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part("")})),
            ];
            for b in framing {
                if !s.frame(b).await {
                    return false;
                }
            }
            for t in 0..per {
                let b = ev("response.output_text.delta", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": tokens::piece(t), "logprobs": []}));
                if !s.token(b).await {
                    return false;
                }
            }
            let closing = [
                ev("response.output_text.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})),
                ev("response.content_part.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part(&text)})),
                ev("response.output_item.done", json!({"output_index": 0, "item": final_item})),
                ev(done_event, json!({"response": final_resp})),
            ];
            for b in closing {
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
