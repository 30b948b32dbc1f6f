//! Prices and the session and tenant budgets.

use super::*;

pub(super) fn prices(v: &Value, path: &str) -> Result<Prices, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| type_err(path, "a map of model names to prices", v))?;
    if map.len() > MAX_PRICES {
        return Err(err(
            path,
            format!("at most {MAX_PRICES} models, got {}", map.len()),
        ));
    }
    let mut out = Vec::new();
    for (model, pv) in map {
        let mp = join(path, model);
        if model.is_empty() || model.len() > MAX_NAME_LEN {
            return Err(err(
                &mp,
                "model name must be 1 to 128 characters".to_string(),
            ));
        }
        let mut o = Obj::new(pv, &mp)?;
        let mut per = |key: &'static str, required: bool| -> Result<Option<f64>, ConfigError> {
            match o.take(key) {
                Some((v, kp)) => match number(v) {
                    Some(f) if (0.0..=1.0e6).contains(&f) => Ok(Some(f)),
                    _ => Err(type_err(
                        &kp,
                        "USD per million tokens, from 0 to 1000000",
                        v,
                    )),
                },
                None if required => Err(err(&mp, format!("{key} is required"))),
                None => Ok(None),
            }
        };
        let input = per("input", true)?.unwrap_or(0.0);
        let output = per("output", true)?.unwrap_or(0.0);
        let cached = per("cached_input", false)?.unwrap_or(input);
        o.finish(&["cached_input", "input", "output"])?;
        let price = Price::from_usd_per_mtok(input, output, cached)
            .ok_or_else(|| err(&mp, "price out of range".to_string()))?;
        out.push((model.clone(), price));
    }
    Ok(Prices::new(out))
}

/// `models:`: context window and maximum output per model name or `prefix*`.
pub(super) fn models(v: &Value, path: &str) -> Result<Catalogue, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| type_err(path, "a map of model names to their limits", v))?;
    if map.len() > MAX_MODELS {
        return Err(err(
            path,
            format!("at most {MAX_MODELS} models, got {}", map.len()),
        ));
    }
    let mut out = Vec::new();
    for (model, mv) in map {
        let mp = join(path, model);
        if model.is_empty() || model.len() > MAX_NAME_LEN || model == "*" {
            return Err(err(
                &mp,
                "model name (or prefix ending in *) must be 1 to 128 characters".to_string(),
            ));
        }
        let mut o = Obj::new(mv, &mp)?;
        let context_window = match o.take("context_window") {
            Some((v, kp)) => {
                let n = uint(v, &kp, "a positive integer (tokens)")?;
                if n == 0 || n > MAX_CONTEXT_WINDOW {
                    return Err(err(
                        &kp,
                        format!("must be between 1 and {MAX_CONTEXT_WINDOW}, got {n}"),
                    ));
                }
                n
            }
            None => return Err(err(&mp, "context_window is required".to_string())),
        };
        let max_output_tokens = match o.take("max_output_tokens") {
            Some((v, kp)) => {
                let n = uint(v, &kp, "a positive integer (tokens)")?;
                if n == 0 || n > context_window {
                    return Err(err(
                        &kp,
                        format!(
                            "must be between 1 and the context window ({context_window}), got {n}"
                        ),
                    ));
                }
                n
            }
            None => context_window,
        };
        o.finish(&["context_window", "max_output_tokens"])?;
        out.push((
            model.clone(),
            ModelLimits {
                context_window,
                max_output_tokens,
            },
        ));
    }
    Ok(Catalogue::new(out))
}

pub(super) fn session_budget(v: &Value, path: &str) -> Result<SessionBudget, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let header = header_name(&mut o, path, "session")?;
    let required = match o.take("required") {
        None => false,
        Some((v, p)) => boolean(v, &p)?,
    };
    let count = |o: &mut Obj<'_>, key: &'static str| -> Result<Option<u64>, ConfigError> {
        match o.take(key) {
            None => Ok(None),
            Some((v, p)) => {
                let n = uint(v, &p, "a positive integer")?;
                if n == 0 {
                    return Err(err(&p, "must be at least 1, got 0".to_string()));
                }
                Ok(Some(n))
            }
        }
    };
    let max_calls = count(&mut o, "max_calls")?;
    let max_tokens = count(&mut o, "max_tokens")?;
    let calls_per_minute = count(&mut o, "calls_per_minute")?;
    let max_spend = match o.take("max_spend_usd") {
        None => None,
        Some((v, p)) => Some(usd(v, &p)?),
    };
    let idle_ttl_ms = match o.take("idle_ttl_seconds") {
        None => DEFAULT_SESSION_TTL_MS,
        Some((v, p)) => seconds(v, &p, 1.0, 30.0 * 86_400.0)?,
    };
    let slots = slots_field(&mut o, DEFAULT_SESSION_SLOTS)?;
    o.finish(&[
        "calls_per_minute",
        "header",
        "idle_ttl_seconds",
        "max_calls",
        "max_spend_usd",
        "max_tokens",
        "required",
        "slots",
    ])?;
    if max_calls.is_none()
        && max_tokens.is_none()
        && max_spend.is_none()
        && calls_per_minute.is_none()
    {
        return Err(err(
            path,
            "set at least one of max_calls, max_tokens, max_spend_usd, calls_per_minute"
                .to_string(),
        ));
    }
    Ok(SessionBudget {
        header,
        required,
        caps: SessionCaps {
            max_calls,
            max_tokens,
            max_spend,
            calls_per_minute,
            idle_ttl_ms,
            slots,
        },
    })
}

pub(super) fn tenant_budget(v: &Value, path: &str) -> Result<TenantBudget, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let source = tenant_source(&mut o, path)?;
    let spend_per_day = match o.take("spend_per_day_usd") {
        None => None,
        Some((v, p)) => Some(usd(v, &p)?),
    };
    let spend_per_month = match o.take("spend_per_month_usd") {
        None => None,
        Some((v, p)) => Some(usd(v, &p)?),
    };
    let slots = slots_field(&mut o, DEFAULT_TENANT_SLOTS)?;
    o.finish(&[
        "header",
        "identity",
        "slots",
        "spend_per_day_usd",
        "spend_per_month_usd",
        "trust_header",
    ])?;
    if spend_per_day.is_none() && spend_per_month.is_none() {
        return Err(err(
            path,
            "set at least one of spend_per_day_usd, spend_per_month_usd".to_string(),
        ));
    }
    Ok(TenantBudget {
        source,
        caps: TenantCaps {
            spend_per_day,
            spend_per_month,
            slots,
        },
    })
}
