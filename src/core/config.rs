//! Plugin configuration: parsed, validated and compiled once, in `on_configure`.
//!
//! The input is a JSON value (Envoy hands the filter either JSON text or a
//! `google.protobuf.Struct`, which [`super::pbstruct`] turns into JSON). Parsing is
//! hand-written over `serde_json::Value` so that every error names the exact path
//! and value; unknown fields are errors, because a misspelled limit that is
//! silently ignored is worse than a config that is refused.
//!
//! Shape (see README "Configuration"):
//!
//! ```yaml
//! log_level: info                 # filter's own log level
//! unmatched_routes: pass          # pass | reject: routes without a policy
//! defaults:                       # inherited by every route policy
//!   max_request_bytes: 262144
//! clusters:                       # upstream clusters the filter may send to
//!   openai: { provider: openai }
//! routes:                         # keyed by Envoy route name (xds.route_name)
//!   chat: { clusters: [openai], max_request_bytes: 65536 }
//! telemetry: { metrics: true, filter_state: true }
//! ```

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

/// Largest request body the filter will ever accept, whatever the config says:
/// it stays below Envoy's default 1 MiB per-connection buffer limit so the filter,
/// not Envoy, answers oversized requests (and the router keeps its retry buffer).
pub const MAX_REQUEST_BYTES_CEILING: u64 = 1024 * 1024;
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 256 * 1024;
/// Route and cluster names become metric labels and shared-data keys: bound them.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_ROUTES: usize = 256;
pub const MAX_CLUSTERS: usize = 64;
pub const MAX_CHAIN_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at {}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// Requests on routes without a policy pass through untouched (counted as `unmatched`).
    Pass,
    /// Requests on routes without a policy get a local 404 OpenAI-style error.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Generic => "generic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub provider: Provider,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    pub name: String,
    /// Ordered failover chain; the first entry is the primary.
    pub clusters: Vec<Rc<Cluster>>,
    pub max_request_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    pub metrics: bool,
    pub filter_state: bool,
}

/// The compiled configuration: everything the request path needs, looked up by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub log_level: LogLevel,
    pub unmatched: Unmatched,
    pub clusters: BTreeMap<String, Rc<Cluster>>,
    pub routes: BTreeMap<String, Rc<RoutePolicy>>,
    /// Policy-less routes still need limits such as the body cap.
    pub default_max_request_bytes: u64,
    pub telemetry: Telemetry,
}

impl Config {
    pub fn route(&self, name: &str) -> Option<&Rc<RoutePolicy>> {
        self.routes.get(name)
    }
}

/// Parses the raw plugin configuration bytes (JSON text, or empty for all defaults).
pub fn parse_json(bytes: &[u8]) -> Result<Config, ConfigError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return compile(&Value::Object(Map::new()));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("not valid JSON: {e}"),
    })?;
    compile(&value)
}

/// Validates and compiles a configuration value.
pub fn compile(root: &Value) -> Result<Config, ConfigError> {
    let mut top = Obj::new(root, "")?;
    let log_level = match top.take("log_level") {
        None => LogLevel::Info,
        Some((v, p)) => match str_enum(v, &p, &["trace", "debug", "info", "warn", "error"])? {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => LogLevel::Info,
        },
    };
    let unmatched = match top.take("unmatched_routes") {
        None => Unmatched::Pass,
        Some((v, p)) => match str_enum(v, &p, &["pass", "reject"])? {
            "reject" => Unmatched::Reject,
            _ => Unmatched::Pass,
        },
    };

    let mut default_max = DEFAULT_MAX_REQUEST_BYTES;
    if let Some((v, p)) = top.take("defaults") {
        let mut d = Obj::new(v, &p)?;
        if let Some((v, p)) = d.take("max_request_bytes") {
            default_max = body_cap(v, &p)?;
        }
        d.finish(&["max_request_bytes"])?;
    }

    let mut clusters = BTreeMap::new();
    if let Some((v, p)) = top.take("clusters") {
        let map = v
            .as_object()
            .ok_or_else(|| type_err(&p, "a map of cluster names", v))?;
        if map.len() > MAX_CLUSTERS {
            return Err(err(
                &p,
                format!("at most {MAX_CLUSTERS} clusters, got {}", map.len()),
            ));
        }
        for (name, v) in map {
            let p = join(&p, name);
            check_name(name, &p)?;
            let mut c = Obj::new(v, &p)?;
            let provider = match c.take("provider") {
                None => Provider::Generic,
                Some((v, p)) => {
                    match str_enum(v, &p, &["openai", "anthropic", "gemini", "generic"])? {
                        "openai" => Provider::OpenAi,
                        "anthropic" => Provider::Anthropic,
                        "gemini" => Provider::Gemini,
                        _ => Provider::Generic,
                    }
                }
            };
            c.finish(&["provider"])?;
            clusters.insert(
                name.clone(),
                Rc::new(Cluster {
                    name: name.clone(),
                    provider,
                }),
            );
        }
    }

    let mut routes = BTreeMap::new();
    if let Some((v, p)) = top.take("routes") {
        let map = v
            .as_object()
            .ok_or_else(|| type_err(&p, "a map of route names", v))?;
        if map.len() > MAX_ROUTES {
            return Err(err(
                &p,
                format!("at most {MAX_ROUTES} routes, got {}", map.len()),
            ));
        }
        for (name, v) in map {
            let p = join(&p, name);
            check_name(name, &p)?;
            let mut r = Obj::new(v, &p)?;
            let mut chain = Vec::new();
            if let Some((v, p)) = r.take("clusters") {
                let list = v
                    .as_array()
                    .ok_or_else(|| type_err(&p, "a list of cluster names", v))?;
                if list.len() > MAX_CHAIN_LEN {
                    return Err(err(
                        &p,
                        format!("at most {MAX_CHAIN_LEN} clusters, got {}", list.len()),
                    ));
                }
                for (i, item) in list.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let cname = item
                        .as_str()
                        .ok_or_else(|| type_err(&ip, "a cluster name", item))?;
                    let c = clusters.get(cname).ok_or_else(|| {
                        err(
                            &ip,
                            format!("unknown cluster \"{cname}\" (define it under clusters)"),
                        )
                    })?;
                    if chain.iter().any(|x: &Rc<Cluster>| x.name == cname) {
                        return Err(err(&ip, format!("cluster \"{cname}\" appears twice")));
                    }
                    chain.push(Rc::clone(c));
                }
            }
            let max_request_bytes = match r.take("max_request_bytes") {
                None => default_max,
                Some((v, p)) => body_cap(v, &p)?,
            };
            r.finish(&["clusters", "max_request_bytes"])?;
            routes.insert(
                name.clone(),
                Rc::new(RoutePolicy {
                    name: name.clone(),
                    clusters: chain,
                    max_request_bytes,
                }),
            );
        }
    }

    let mut telemetry = Telemetry {
        metrics: true,
        filter_state: true,
    };
    if let Some((v, p)) = top.take("telemetry") {
        let mut t = Obj::new(v, &p)?;
        if let Some((v, p)) = t.take("metrics") {
            telemetry.metrics = boolean(v, &p)?;
        }
        if let Some((v, p)) = t.take("filter_state") {
            telemetry.filter_state = boolean(v, &p)?;
        }
        t.finish(&["filter_state", "metrics"])?;
    }

    top.finish(&[
        "clusters",
        "defaults",
        "log_level",
        "routes",
        "telemetry",
        "unmatched_routes",
    ])?;
    Ok(Config {
        log_level,
        unmatched,
        clusters,
        routes,
        default_max_request_bytes: default_max,
        telemetry,
    })
}

/// An object being read field by field; `finish` reports what was not consumed.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    seen: Vec<&'a str>,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &str) -> Result<Self, ConfigError> {
        let map = v.as_object().ok_or_else(|| type_err(path, "a map", v))?;
        Ok(Obj {
            map,
            path: path.to_string(),
            seen: Vec::new(),
        })
    }

    fn take(&mut self, key: &'a str) -> Option<(&'a Value, String)> {
        self.seen.push(key);
        // A YAML `key:` with nothing after it arrives as null: treat as absent.
        self.map
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| (v, join(&self.path, key)))
    }

    fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
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

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn err(path: &str, message: String) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message,
    }
}

/// Renders a value for an error message, truncated so a huge value cannot flood the log.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn type_err(path: &str, expected: &str, got: &Value) -> ConfigError {
    err(path, format!("expected {expected}, got {}", show(got)))
}

fn str_enum<'v>(v: &'v Value, path: &str, allowed: &[&str]) -> Result<&'v str, ConfigError> {
    match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(s),
        _ => Err(type_err(path, &format!("one of {}", allowed.join(", ")), v)),
    }
}

fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| type_err(path, "true or false", v))
}

/// Integers arrive as JSON integers, or as doubles when the config came through a
/// protobuf Struct (all Struct numbers are doubles): accept both when integral.
pub(crate) fn uint(v: &Value, path: &str, what: &str) -> Result<u64, ConfigError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(f) = v.as_f64() {
        if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
            return Ok(f as u64);
        }
    }
    Err(type_err(path, what, v))
}

fn body_cap(v: &Value, path: &str) -> Result<u64, ConfigError> {
    let n = uint(v, path, "a positive integer (bytes)")?;
    if n == 0 || n > MAX_REQUEST_BYTES_CEILING {
        return Err(err(
            path,
            format!("must be between 1 and {MAX_REQUEST_BYTES_CEILING} bytes, got {n}"),
        ));
    }
    Ok(n)
}

fn check_name(name: &str, path: &str) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn msg(v: Value) -> String {
        match compile(&v) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = parse_json(b"").unwrap();
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.unmatched, Unmatched::Pass);
        assert!(c.routes.is_empty());
        assert_eq!(c.default_max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(
            c.telemetry,
            Telemetry {
                metrics: true,
                filter_state: true
            }
        );
    }

    #[test]
    fn full_config_compiles_with_inheritance() {
        let c = compile(&json!({
            "log_level": "debug",
            "unmatched_routes": "reject",
            "defaults": {"max_request_bytes": 1000},
            "clusters": {"a": {"provider": "openai"}, "b": {"provider": "anthropic"}, "c": {}},
            "routes": {
                "chat": {"clusters": ["a", "b"]},
                "small": {"max_request_bytes": 10.0, "clusters": ["c"]}
            },
            "telemetry": {"metrics": false}
        }))
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.unmatched, Unmatched::Reject);
        let chat = c.route("chat").unwrap();
        assert_eq!(chat.max_request_bytes, 1000);
        let names: Vec<_> = chat.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(chat.clusters[1].provider, Provider::Anthropic);
        assert_eq!(c.route("small").unwrap().max_request_bytes, 10);
        assert_eq!(c.clusters["c"].provider, Provider::Generic);
        assert!(!c.telemetry.metrics);
        assert!(c.telemetry.filter_state);
    }

    #[test]
    fn misspelled_field_names_its_path() {
        assert_eq!(
            msg(json!({"routes": {"chat": {"max_request_byte": 5}}})),
            "invalid config at routes.chat.max_request_byte: unknown field; expected one of: clusters, max_request_bytes"
        );
        assert_eq!(
            msg(json!({"route": {}})),
            "invalid config at route: unknown field; expected one of: clusters, defaults, log_level, routes, telemetry, unmatched_routes"
        );
    }

    #[test]
    fn mistyped_field_names_path_and_value() {
        assert_eq!(
            msg(json!({"defaults": {"max_request_bytes": "lots"}})),
            "invalid config at defaults.max_request_bytes: expected a positive integer (bytes), got \"lots\""
        );
        assert_eq!(
            msg(json!({"defaults": {"max_request_bytes": 1.5}})),
            "invalid config at defaults.max_request_bytes: expected a positive integer (bytes), got 1.5"
        );
        assert_eq!(
            msg(json!({"log_level": "loud"})),
            "invalid config at log_level: expected one of trace, debug, info, warn, error, got \"loud\""
        );
        assert_eq!(
            msg(json!({"telemetry": {"metrics": "yes"}})),
            "invalid config at telemetry.metrics: expected true or false, got \"yes\""
        );
        assert_eq!(msg(json!([1])), "invalid config: expected a map, got [1]");
    }

    #[test]
    fn range_and_reference_errors() {
        assert_eq!(
            msg(json!({"defaults": {"max_request_bytes": 0}})),
            "invalid config at defaults.max_request_bytes: must be between 1 and 1048576 bytes, got 0"
        );
        assert_eq!(
            msg(json!({"routes": {"chat": {"clusters": ["nope"]}}})),
            "invalid config at routes.chat.clusters[0]: unknown cluster \"nope\" (define it under clusters)"
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {}}, "routes": {"chat": {"clusters": ["a", "a"]}}})),
            "invalid config at routes.chat.clusters[1]: cluster \"a\" appears twice"
        );
        assert_eq!(
            msg(json!({"routes": {"bad name": {}}})),
            "invalid config at routes.bad name: name must be 1 to 128 characters of A-Z a-z 0-9 - _ . | : /, got \"bad name\""
        );
    }

    #[test]
    fn null_fields_are_absent_and_bad_json_is_reported() {
        assert_eq!(
            msg(json!({"defaults": null, "routes": {"r": null}})),
            "invalid config at routes.r: expected a map, got null"
        );
        let e = parse_json(b"{not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid config: not valid JSON: key must be a string"),
            "{e}"
        );
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let long = "x".repeat(500);
        let m = msg(json!({ "log_level": long }));
        assert!(m.len() < 200, "{m}");
        assert!(m.ends_with("..."), "{m}");
    }
}
