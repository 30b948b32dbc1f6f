//! Gemini `generateContent` and `streamGenerateContent` (`?alt=sse`; without
//! it the JSON array of chunks is sent at once).

use hyper::body::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::app::{opt_u64, query_param, ApiError, Ctx, Outcome, Plan, Streamer};
use crate::http;
use crate::tokens;

const MAX_CANDIDATES: u64 = 8;

fn parts_tokens(content: &Value) -> Result<u64, ApiError> {
    let parts = match content {
        Value::String(s) => return Ok(tokens::count(s)),
        Value::Object(o) => match o.get("parts") {
            Some(Value::Array(p)) => p,
            None | Some(Value::Null) => return Ok(0),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Invalid value at 'parts': expected a list.",
                ))
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "Invalid content: expected an object with 'parts'.",
            ))
        }
    };
    Ok(parts
        .iter()
        .map(|p| {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                tokens::count(t)
            } else if p.get("inlineData").is_some()
                || p.get("fileData").is_some()
                || p.get("inline_data").is_some()
            {
                tokens::IMAGE_TOKENS
            } else {
                tokens::count_json(p)
            }
        })
        .sum())
}

/// promptTokenCount = Σ over `contents[].parts[]` and `systemInstruction.parts[]`
/// of: tokens(text) for text parts, 85 for inline/file data, tokens(compact
/// JSON) for other parts (function calls/responses); + tokens(compact JSON of
/// `tools`). No per-message overhead.
pub fn prompt_tokens(body: &Value) -> Result<u64, ApiError> {
    let contents = match body.get("contents") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::String(_)) => {
            return parts_tokens(body.get("contents").unwrap_or(&Value::Null))
        }
        _ => {
            return Err(ApiError::bad_request(
                "* GenerateContentRequest.contents: contents is not specified",
            ))
        }
    };
    let mut total = 0;
    for c in contents {
        total += parts_tokens(c)?;
    }
    for k in ["systemInstruction", "system_instruction"] {
        if let Some(s) = body.get(k).filter(|v| !v.is_null()) {
            total += parts_tokens(s)?;
        }
    }
    if let Some(t) = body.get("tools").filter(|v| !v.is_null()) {
        total += tokens::count_json(t);
    }
    Ok(total)
}

pub fn generate(ctx: &Ctx, body: &Value, model: &str, stream: bool) -> Result<Outcome, ApiError> {
    let prompt = prompt_tokens(body)?;
    let config = body
        .get("generationConfig")
        .or_else(|| body.get("generation_config"))
        .cloned()
        .unwrap_or(Value::Null);
    let max_tokens = if config.is_object() {
        opt_u64(&config, "maxOutputTokens")?
    } else {
        None
    };
    let n = if config.is_object() {
        opt_u64(&config, "candidateCount")?.unwrap_or(1)
    } else {
        1
    };
    if n == 0 || n > MAX_CANDIDATES {
        return Err(ApiError::bad_request(format!(
            "candidateCount must be in 1..={MAX_CANDIDATES}"
        )));
    }
    let plan = Plan::new(ctx.requested_output, max_tokens, n)?;
    let snapshot = ctx
        .app
        .admit(&ctx.key, prompt.saturating_add(plan.allowance))?;
    let id = ctx.app.new_id("", 22);
    let finish = if plan.cut { "MAX_TOKENS" } else { "STOP" };
    let out = plan.completion();
    let broken = ctx.faults.broken_usage;
    let usage = move |cand: u64| {
        crate::faults::maybe_break_counts(
            json!({"promptTokenCount": prompt, "candidatesTokenCount": cand, "totalTokenCount": prompt + cand}),
            broken,
        )
    };
    let model = model.to_string();
    let chunk = move |text: &str, fin: Option<&str>, cand: u64| {
        let cands: Vec<Value> = (0..n)
            .map(|i| {
                let mut c =
                    json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": i});
                if let Some(f) = fin {
                    c["finishReason"] = json!(f);
                }
                c
            })
            .collect();
        json!({"candidates": cands, "usageMetadata": usage(cand), "modelVersion": model, "responseId": id})
    };

    let sse = query_param(ctx.query, "alt").as_deref() == Some("sse");
    if !stream || !sse {
        ctx.app.refund(&ctx.key, plan.refund());
        let v = if stream {
            // Without alt=sse the stream is one JSON array; send it whole.
            let mut arr: Vec<Value> = (0..plan.per_choice)
                .map(|t| {
                    chunk(
                        &tokens::piece(t),
                        (t + 1 == plan.per_choice).then_some(finish),
                        (t + 1) * n,
                    )
                })
                .collect();
            if arr.is_empty() {
                arr.push(chunk("", Some(finish), 0));
            }
            Value::Array(arr)
        } else {
            chunk(&tokens::output_text(plan.per_choice), Some(finish), out)
        };
        return Ok(Outcome {
            resp: http::json(StatusCode::OK, &v),
            prompt_tokens: prompt,
            completion_tokens: out,
            ratelimit: Some(snapshot),
        });
    }

    let (tx, body_out) = http::channel_body();
    let app = ctx.app.clone();
    let key = ctx.key.clone();
    let mut s = Streamer::new(tx, &ctx.faults);
    let per = plan.per_choice;
    tokio::spawn(async move {
        let _ = async {
            if per == 0 {
                return s.token(http::sse_data(&chunk("", Some(finish), 0))).await;
            }
            for t in 0..per {
                let fin = (t + 1 == per).then_some(finish);
                let b: Bytes = http::sse_data(&chunk(&tokens::piece(t), fin, (t + 1) * n));
                if !s.token(b).await {
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
        prompt_tokens: prompt,
        completion_tokens: out,
        ratelimit: Some(snapshot),
    })
}
