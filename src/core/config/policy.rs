//! A route policy (and `defaults`): its fields, limits and tenant source.

use super::*;

/// Reads the inheritable policy fields of `o`, starting from `base`.
pub(super) fn policy<'a>(o: &mut Obj<'a>, base: &Policy) -> Result<Policy, ConfigError> {
    let mut p = base.clone();
    if let Some((v, path)) = o.take("max_request_bytes") {
        p.max_request_bytes = body_cap(v, &path)?;
    }
    if let Some((v, path)) = o.take("api") {
        let mut names = vec!["auto"];
        names.extend(Api::ALL.iter().map(|a| a.as_str()));
        let s = str_enum(v, &path, &names)?;
        p.api = Api::parse(s);
    }
    if let Some((v, path)) = o.take("encoding") {
        let mut names = vec!["auto"];
        names.extend(Encoding::ALL.iter().map(|e| e.as_str()));
        let s = str_enum(v, &path, &names)?;
        p.encoding = Encoding::parse(s);
    }
    if let Some((v, path)) = o.take("input_margin") {
        match number(v) {
            Some(f) if (0.0..=1.0).contains(&f) => p.input_margin = Some(f),
            _ if v.as_str() == Some("auto") => p.input_margin = None,
            _ => {
                return Err(type_err(
                    &path,
                    "a number from 0 to 1 (0.1 = +10%) or \"auto\"",
                    v,
                ))
            }
        }
    }
    if let Some((v, path)) = o.take("default_max_tokens") {
        let n = uint(v, &path, "a positive integer (tokens)")?;
        if n == 0 || n > MAX_OUTPUT_TOKENS {
            return Err(err(
                &path,
                format!("must be between 1 and {MAX_OUTPUT_TOKENS}, got {n}"),
            ));
        }
        p.default_max_tokens = n;
    }
    if let Some((v, path)) = o.take("enforce_max_tokens") {
        p.enforce_max_tokens = match str_enum(v, &path, &["off", "fill", "cap"])? {
            "fill" => EnforceMaxTokens::Fill,
            "cap" => EnforceMaxTokens::Cap,
            _ => EnforceMaxTokens::Off,
        };
    }
    if let Some((v, path)) = o.take("include_usage") {
        p.include_usage = boolean(v, &path)?;
    }
    if let Some((v, path)) = o.take("invalid_body") {
        p.invalid_body = match str_enum(v, &path, &["reject", "pass"])? {
            "pass" => InvalidBody::Pass,
            _ => InvalidBody::Reject,
        };
    }
    if let Some((v, path)) = o.take("calibrate") {
        p.calibrate = boolean(v, &path)?;
    }
    if let Some((v, path)) = o.take("limits") {
        let mut l = Obj::new(v, &path)?;
        let (limits, shadow) = limit_fields(&mut l)?;
        l.finish(LIMIT_FIELDS)?;
        check_some_limit(&limits, &path)?;
        p.limits = Some(Rc::new(LimitConfig { limits, shadow }));
    }
    if let Some((v, path)) = o.take("global") {
        let g = global::parse(v, &path, |v, path| {
            let mut l = Obj::new(v, path)?;
            let (limits, shadow) = limit_fields(&mut l)?;
            l.finish(LIMIT_FIELDS)?;
            if shadow {
                return Err(err(path, "shadow does not apply here".to_string()));
            }
            if limits.requests_per_day.is_some() || limits.tokens_per_day.is_some() {
                return Err(err(
                    path,
                    "requests_per_day and tokens_per_day do not apply here (only in limits and tenant_limits)"
                        .to_string(),
                ));
            }
            check_some_limit(&limits, path)?;
            Ok(limits)
        })?;
        p.global = Some(Rc::new(g));
    }
    if let Some((v, path)) = o.take("tenant_limits") {
        let mut l = Obj::new(v, &path)?;
        let (limits, shadow) = limit_fields(&mut l)?;
        let source = tenant_source(&mut l, &path)?;
        let slots = match l.take("slots") {
            None => DEFAULT_TENANT_SLOTS,
            Some((v, sp)) => {
                let n = uint(v, &sp, "a positive integer")?;
                if n == 0 || n > MAX_TENANT_SLOTS {
                    return Err(err(
                        &sp,
                        format!("must be between 1 and {MAX_TENANT_SLOTS}, got {n}"),
                    ));
                }
                n as u32
            }
        };
        let mut known: Vec<&str> = LIMIT_FIELDS.to_vec();
        known.extend(["header", "identity", "slots", "trust_header"]);
        known.sort_unstable();
        l.finish(&known)?;
        check_some_limit(&limits, &path)?;
        p.tenant = Some(Rc::new(TenantConfig {
            source,
            slots,
            limits,
            shadow,
        }));
    }
    if let Some((v, path)) = o.take("queue") {
        let mut q = Obj::new(v, &path)?;
        let max_wait_ms = match q.take("max_wait_seconds") {
            Some((v, wp)) => match number(v) {
                Some(f) if f > 0.0 && f <= 300.0 => (f * 1000.0).round() as u64,
                _ => {
                    return Err(type_err(
                        &wp,
                        "a number of seconds above 0 and at most 300",
                        v,
                    ))
                }
            },
            None => return Err(err(&path, "max_wait_seconds is required".to_string())),
        };
        let max_size = match q.take("max_size") {
            None => 256,
            Some((v, mp)) => {
                let n = uint(v, &mp, "a positive integer")?;
                if n == 0 || n > 100_000 {
                    return Err(err(&mp, format!("must be between 1 and 100000, got {n}")));
                }
                n as u32
            }
        };
        let poll_ms = match q.take("poll_ms") {
            None => 20,
            Some((v, pp)) => {
                let n = uint(v, &pp, "a positive integer (milliseconds)")?;
                if !(1..=1000).contains(&n) {
                    return Err(err(&pp, format!("must be between 1 and 1000, got {n}")));
                }
                n as u32
            }
        };
        q.finish(&["max_size", "max_wait_seconds", "poll_ms"])?;
        p.queue = Some(QueueConfig {
            max_wait_ms,
            max_size,
            poll_ms,
        });
    }
    if let Some((v, path)) = o.take("priority") {
        let mut q = Obj::new(v, &path)?;
        let header = header_name(&mut q, &path, "class")?;
        let classes: Vec<String> = match q.take("classes") {
            None => vec!["high".into(), "normal".into(), "low".into()],
            Some((v, cp)) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| type_err(&cp, "a list of class names, highest first", v))?;
                let mut out = Vec::new();
                for (i, c) in list.iter().enumerate() {
                    let name = c
                        .as_str()
                        .filter(|n| !n.is_empty() && n.len() <= 32)
                        .ok_or_else(|| type_err(&format!("{cp}[{i}]"), "a class name", c))?;
                    out.push(name.to_string());
                }
                if out.is_empty() || out.len() > 8 {
                    return Err(err(
                        &cp,
                        format!("must list 1 to 8 classes, got {}", out.len()),
                    ));
                }
                out
            }
        };
        let default_class = match q.take("default") {
            None => classes.len() / 2,
            Some((v, dp)) => {
                let d = v.as_str().unwrap_or("");
                classes
                    .iter()
                    .position(|c| c == d)
                    .ok_or_else(|| type_err(&dp, &format!("one of {}", classes.join(", ")), v))?
            }
        };
        let reserve = match q.take("reserve") {
            None => 0.2,
            Some((v, rp)) => match number(v) {
                Some(f) if (0.0..1.0).contains(&f) => f,
                _ => return Err(type_err(&rp, "a number from 0 to below 1", v)),
            },
        };
        q.finish(&["classes", "default", "header", "reserve"])?;
        p.priority = Some(Rc::new(PriorityConfig {
            header,
            classes,
            default_class,
            reserve,
        }));
    }
    if let Some((v, path)) = o.take("session_budget") {
        p.session_budget = Some(Rc::new(session_budget(v, &path)?));
    }
    if let Some((v, path)) = o.take("cache") {
        p.cache = Some(Rc::new(cache(v, &path)?));
    }
    if let Some((v, path)) = o.take("slo") {
        p.slo = Some(slo(v, &path)?);
    }
    if let Some((v, path)) = o.take("tenant_budget") {
        p.tenant_budget = Some(Rc::new(tenant_budget(v, &path)?));
    }
    if let Some((v, path)) = o.take("retry_min_remaining_seconds") {
        p.retry_min_remaining_ms = seconds(v, &path, 0.0, 3600.0)?;
    }
    if let Some((v, path)) = o.take("max_messages") {
        let n = uint(v, &path, "a positive integer (messages)")?;
        if n == 0 || n > u64::from(u32::MAX) {
            return Err(err(
                &path,
                format!("must be between 1 and {}, got {n}", u32::MAX),
            ));
        }
        p.max_messages = Some(n as u32);
    }
    if let Some((v, path)) = o.take("max_request_cost_usd") {
        p.max_request_cost = Some(usd(v, &path)?);
    }
    if let Some((v, path)) = o.take("rate_limit_headers") {
        p.rate_limit_headers = match str_enum(v, &path, &["both", "openai", "ietf", "none"])? {
            "openai" => RateHeaders::OpenAi,
            "ietf" => RateHeaders::Ietf,
            "none" => RateHeaders::None,
            _ => RateHeaders::Both,
        };
    }
    Ok(p)
}

pub(super) const LIMIT_FIELDS: &[&str] = &[
    "burst_seconds",
    "headroom",
    "in_flight_lease_seconds",
    "input_tokens_per_minute",
    "max_in_flight",
    "output_tokens_per_minute",
    "requests_per_day",
    "requests_per_minute",
    "shadow",
    "tokens_per_day",
    "tokens_per_minute",
];

/// The limit fields shared by `limits` and `tenant_limits`.
pub(super) fn limit_fields<'a>(l: &mut Obj<'a>) -> Result<(Limits, bool), ConfigError> {
    let headroom = match l.take("headroom") {
        None => 0.0,
        Some((v, hp)) => match number(v) {
            Some(f) if (0.0..1.0).contains(&f) => f,
            _ => {
                return Err(type_err(
                    &hp,
                    "a number from 0 to below 1 (0.1 = keep 10% back)",
                    v,
                ))
            }
        },
    };
    let burst = match l.take("burst_seconds") {
        None => DEFAULT_BURST_SECONDS,
        Some((v, bp)) => match number(v) {
            Some(f) if f > 0.0 && f <= 60.0 => f,
            _ => {
                return Err(type_err(
                    &bp,
                    "a number of seconds above 0 and at most 60",
                    v,
                ))
            }
        },
    };
    let mut per_day = |name: &'a str| -> Result<Option<u64>, ConfigError> {
        let Some((v, rp)) = l.take(name) else {
            return Ok(None);
        };
        let n = limit_count(v, &rp)?;
        Ok(Some(((n as f64) * (1.0 - headroom)).floor().max(1.0) as u64))
    };
    let requests_per_day = per_day("requests_per_day")?;
    let tokens_per_day = per_day("tokens_per_day")?;
    let mut rate = |name: &'a str| -> Result<Option<Rate>, ConfigError> {
        let Some((v, rp)) = l.take(name) else {
            return Ok(None);
        };
        let n = limit_count(v, &rp)?;
        Ok(Some(Rate::new(n as f64 * (1.0 - headroom), burst)))
    };
    let limits = Limits {
        requests_per_day,
        tokens_per_day,
        requests: rate("requests_per_minute")?,
        tokens: rate("tokens_per_minute")?,
        input_tokens: rate("input_tokens_per_minute")?,
        output_tokens: rate("output_tokens_per_minute")?,
        max_in_flight: match l.take("max_in_flight") {
            None => None,
            Some((v, mp)) => {
                let n = uint(v, &mp, "a positive integer")?;
                if n == 0 || n > u64::from(u32::MAX) {
                    return Err(err(
                        &mp,
                        format!("must be between 1 and {}, got {n}", u32::MAX),
                    ));
                }
                Some(n as u32)
            }
        },
        in_flight_lease_ms: match l.take("in_flight_lease_seconds") {
            None => DEFAULT_IN_FLIGHT_LEASE_MS,
            Some((v, lp)) => seconds(v, &lp, 1.0, 86_400.0)?,
        },
    };
    let shadow = match l.take("shadow") {
        None => false,
        Some((v, sp)) => boolean(v, &sp)?,
    };
    Ok((limits, shadow))
}

/// The required `header` field of `tenant_limits` and `priority`, lower-cased.
pub(super) fn header_name<'a>(
    o: &mut Obj<'a>,
    path: &str,
    names: &str,
) -> Result<String, ConfigError> {
    match o.take("header") {
        Some((v, hp)) => match v.as_str() {
            Some(h)
                if !h.is_empty()
                    && h.len() <= MAX_NAME_LEN
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(h.to_ascii_lowercase())
            }
            _ => Err(type_err(&hp, "a header name", v)),
        },
        None => Err(err(
            path,
            format!("header is required (the header naming the {names})"),
        )),
    }
}

/// A tenant source: `identity: peer_certificate`, or `header` with `trust_header: true`.
pub(super) fn tenant_source<'a>(l: &mut Obj<'a>, path: &str) -> Result<TenantSource, ConfigError> {
    let path = path.to_string();
    Ok(match l.take("identity") {
        Some((v, ip)) => {
            str_enum(v, &ip, &["peer_certificate"])?;
            if l.map.contains_key("header") {
                return Err(err(
                    &join(&path, "header"),
                    "cannot be combined with identity: choose one tenant source".to_string(),
                ));
            }
            TenantSource::PeerCertificate
        }
        None => {
            if !l.map.contains_key("header") {
                return Err(err(&path, "needs a tenant source: header (with trust_header: true) or identity: peer_certificate".to_string()));
            }
            let header = header_name(l, &path, "tenant")?;
            // A client could set any tenant it likes: the operator must say the mesh sets it.
            match l.take("trust_header") {
                    Some((v, _)) if v.as_bool() == Some(true) => {}
                    Some((v, tp)) => {
                        return Err(err(&tp, format!("must be true to use header \"{header}\" as the tenant identity (only when the mesh sets or verifies it), got {}", show(v))))
                    }
                    None => {
                        return Err(err(&join(&path, "trust_header"), format!("is required: set it to true only if the mesh sets or verifies header \"{header}\"")))
                    }
                }
            TenantSource::Header(header)
        }
    })
}

/// Checked after unknown fields, which are the likelier mistake.
pub(super) fn check_some_limit(limits: &Limits, path: &str) -> Result<(), ConfigError> {
    if limits.is_empty() {
        return Err(err(path, "sets no limit: give at least one of requests_per_minute, tokens_per_minute, input_tokens_per_minute, output_tokens_per_minute, max_in_flight, requests_per_day, tokens_per_day".to_string()));
    }
    Ok(())
}

/// Longest SLO bound accepted (an hour: longer is no latency objective).
const MAX_SLO_MS: u64 = 3_600_000;

/// `slo: {time_to_first_token_ms, duration_ms}`: at least one bound, each 1 ms to an hour.
fn slo(v: &Value, path: &str) -> Result<Slo, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let mut bound = |key: &'static str| -> Result<Option<u64>, ConfigError> {
        let Some((v, path)) = o.take(key) else {
            return Ok(None);
        };
        let n = uint(v, &path, "a positive integer (milliseconds)")?;
        if n == 0 || n > MAX_SLO_MS {
            return Err(err(
                &path,
                format!("must be between 1 and {MAX_SLO_MS} milliseconds, got {n}"),
            ));
        }
        Ok(Some(n))
    };
    let s = Slo {
        time_to_first_token_ms: bound("time_to_first_token_ms")?,
        duration_ms: bound("duration_ms")?,
    };
    o.finish(&["duration_ms", "time_to_first_token_ms"])?;
    if s.time_to_first_token_ms.is_none() && s.duration_ms.is_none() {
        return Err(err(
            path,
            "set at least one of time_to_first_token_ms, duration_ms".to_string(),
        ));
    }
    Ok(s)
}

/// A limit's count: a positive integer (a limit of 0 is written by leaving it out).
fn limit_count(v: &Value, path: &str) -> Result<u64, ConfigError> {
    let n = uint(v, path, "a positive integer")?;
    if n == 0 {
        return Err(err(
            path,
            "must be at least 1 (leave it out for no limit)".to_string(),
        ));
    }
    Ok(n)
}
