//! The admin port: statistics, reset and fault control.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::app::{lock, App};
use crate::faults::{self, Rng};
use crate::http::{self, Body};
use crate::stats::Stats;

/// Admin bodies are tiny; cap them well below the API limit.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

fn faults_json(app: &App) -> Value {
    let f = app.faults();
    let (rpm, tpm) = lock(&app.limiter).limits();
    let mut v = serde_json::to_value(&f).unwrap_or_else(|_| json!({}));
    v["rpm"] = json!(rpm);
    v["tpm"] = json!(tpm);
    v
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    http::json(status, &json!({"error": msg.into()}))
}

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => http::text(StatusCode::OK, "ok"),
        (Method::GET, "/admin/stats") => {
            let v = serde_json::to_value(&*lock(&app.stats)).unwrap_or_else(|_| json!({}));
            http::json(StatusCode::OK, &v)
        }
        (Method::POST, "/admin/reset") => {
            *lock(&app.stats) = Stats::default();
            lock(&app.limiter).reset();
            http::json(StatusCode::OK, &json!({"ok": true}))
        }
        (Method::GET, "/admin/faults") => http::json(StatusCode::OK, &faults_json(&app)),
        (Method::POST, "/admin/faults") => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, format!("could not read body: {e}"))
                }
            };
            let v: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
            };
            let update = {
                let mut cur = lock(&app.faults);
                match faults::apply_update(&cur, &v) {
                    Ok(u) => {
                        *cur = u.faults.clone();
                        u
                    }
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                }
            };
            if update.rpm.is_some() || update.tpm.is_some() {
                let mut l = lock(&app.limiter);
                let (rpm, tpm) = l.limits();
                l.set_limits(update.rpm.unwrap_or(rpm), update.tpm.unwrap_or(tpm));
            }
            if let Some(seed) = update.seed {
                *lock(&app.fault_rng) = Rng::new(seed);
            }
            // The API listener task reacts to this (closes or re-binds the port).
            app.outage.send_replace(update.faults.outage);
            // Answer only once the port is really closed (or bound again), so a
            // test's next connection sees the new state.
            let want = !update.faults.outage;
            let mut l = app.listening.subscribe();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                l.wait_for(|&listening| listening == want),
            )
            .await;
            http::json(StatusCode::OK, &faults_json(&app))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin route {method} {path}"),
        ),
    }
}
