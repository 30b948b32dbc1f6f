//! Reading helpers: every error names its path and value.

use super::*;

/// An object being read field by field; `finish` reports what was not consumed.
pub(super) struct Obj<'a> {
    pub(super) map: &'a Map<String, Value>,
    path: String,
    seen: Vec<&'a str>,
}

impl<'a> Obj<'a> {
    pub(super) fn new(v: &'a Value, path: &str) -> Result<Self, ConfigError> {
        let map = v.as_object().ok_or_else(|| type_err(path, "a map", v))?;
        Ok(Obj {
            map,
            path: path.to_string(),
            seen: Vec::new(),
        })
    }

    pub(super) fn take(&mut self, key: &'a str) -> Option<(&'a Value, String)> {
        self.seen.push(key);
        // A YAML `key:` with nothing after it arrives as null: treat as absent.
        self.map
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| (v, join(&self.path, key)))
    }

    pub(super) fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
        for key in self.map.keys() {
            if !self.seen.iter().any(|s| s == key) {
                return Err(err(
                    &join(&self.path, key),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn err(path: &str, message: String) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message,
    }
}

/// Renders a value for an error message, truncated so a huge value cannot flood the log.
pub(super) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        format!("{}...", crate::core::truncate(&s, 64))
    } else {
        s
    }
}

pub(super) fn type_err(path: &str, expected: &str, got: &Value) -> ConfigError {
    err(path, format!("expected {expected}, got {}", show(got)))
}

pub(super) fn str_enum<'v>(
    v: &'v Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'v str, ConfigError> {
    match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(s),
        _ => Err(type_err(path, &format!("one of {}", allowed.join(", ")), v)),
    }
}

pub(super) fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| type_err(path, "true or false", v))
}

/// Integers arrive as JSON integers, or as doubles when the config came through a
/// protobuf Struct (all Struct numbers are doubles): accept both when integral.
pub(crate) fn uint(v: &Value, path: &str, what: &str) -> Result<u64, ConfigError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(f) = number(v) {
        if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
            return Ok(f as u64);
        }
    }
    Err(type_err(path, what, v))
}

/// A number, also from a numeric string: Envoy's YAML-to-Struct conversion turns
/// unquoted decimals such as `0.15` into strings.
pub(super) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// US dollars (at most a billion), as pico-dollars.
pub(super) fn usd(v: &Value, path: &str) -> Result<u64, ConfigError> {
    match number(v) {
        Some(f) if f > 0.0 && f <= 1.0e9 => Ok((f * PICO_PER_USD as f64).round() as u64),
        _ => Err(type_err(path, "an amount of US dollars above 0", v)),
    }
}

pub(super) fn slots_field<'a>(o: &mut Obj<'a>, default: u32) -> Result<u32, ConfigError> {
    match o.take("slots") {
        None => Ok(default),
        Some((v, sp)) => {
            let n = uint(v, &sp, "a positive integer")?;
            if n == 0 || n > MAX_TENANT_SLOTS {
                return Err(err(
                    &sp,
                    format!("must be between 1 and {MAX_TENANT_SLOTS}, got {n}"),
                ));
            }
            Ok(n as u32)
        }
    }
}

/// Seconds in `[min, max]`, as milliseconds.
pub(super) fn seconds(v: &Value, path: &str, min: f64, max: f64) -> Result<u64, ConfigError> {
    match number(v) {
        Some(f) if f >= min && f <= max => Ok((f * 1000.0).round() as u64),
        _ => Err(type_err(
            path,
            &format!("a number of seconds from {min} to {max}"),
            v,
        )),
    }
}

pub(super) fn body_cap(v: &Value, path: &str) -> Result<u64, ConfigError> {
    let n = uint(v, path, "a positive integer (bytes)")?;
    if n == 0 || n > MAX_REQUEST_BYTES_CEILING {
        return Err(err(
            path,
            format!("must be between 1 and {MAX_REQUEST_BYTES_CEILING} bytes, got {n}"),
        ));
    }
    Ok(n)
}

pub(super) fn check_name(name: &str, path: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.|:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "name must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . | : /, got \"{}\"",
                name.chars().take(MAX_NAME_LEN).collect::<String>()
            ),
        ))
    }
}
