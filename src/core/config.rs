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
//! upstream_filter: true          # an upstream instance records every attempt
//! clusters:                       # upstream clusters the filter may send to
//!   openai: { provider: openai, circuit: { consecutive_failures: 5 } }
//!   small: { provider: openai }
//! routes:                         # keyed by Envoy route name (xds.route_name)
//!   chat:
//!     clusters: [openai, { cluster: small, model: gpt-4o-mini }]
//!     max_request_bytes: 65536
//! queue_hold: fault_filter       # vm | fault_filter: where queued requests wait
//! telemetry: { metrics: true, filter_state: true }
//! ```

use super::budget::{Price, Prices, SessionCaps, TenantCaps, PICO_PER_USD};
use super::circuit::CircuitConfig;
use super::estimate::Encoding;
use super::global::GlobalConfig;
use super::limiter::{Limits, Rate, DEFAULT_IN_FLIGHT_LEASE_MS};
use super::request::Api;
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
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
pub const MAX_OUTPUT_TOKENS: u64 = 1_000_000;
pub const DEFAULT_BURST_SECONDS: f64 = 0.5;
pub const DEFAULT_TENANT_SLOTS: u32 = 1024;
pub const MAX_TENANT_SLOTS: u64 = 65_536;
pub const DEFAULT_RETRY_MIN_REMAINING_MS: u64 = 2_000;
pub const DEFAULT_SESSION_SLOTS: u32 = 4096;
pub const DEFAULT_SESSION_TTL_MS: u64 = 3_600_000;
pub const MAX_PRICES: usize = 1024;

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

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub provider: Provider,
    pub circuit: CircuitConfig,
    /// Follow the provider's remaining-quota headers (`adaptive: true`).
    pub adaptive: bool,
}

/// One entry of a route's failover chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub cluster: Rc<Cluster>,
    /// The model this cluster serves the route with; `None` keeps the client's.
    pub model: Option<String>,
}

/// What to do with a body the filter cannot read as its API's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidBody {
    /// Answer 400 with an OpenAI-style `invalid_request_error`.
    Reject,
    /// Let it through, charged by size (bytes / 4 plus the output allowance).
    Pass,
}

/// Whether the filter writes the output cap into request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforceMaxTokens {
    /// Never touch the body's cap; absent caps are reserved at `default_max_tokens`.
    Off,
    /// Write `default_max_tokens` into requests that have no cap.
    Fill,
    /// As `fill`, and lower caps above `default_max_tokens` to it.
    Cap,
}

/// The settings a route inherits from `defaults` unless it sets them itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_request_bytes: u64,
    /// `None`: detect by path.
    pub api: Option<Api>,
    /// `None`: by model name, then by API.
    pub encoding: Option<Encoding>,
    /// Safety margin on the input estimate (0.1 = +10%); `None` (`auto`, the
    /// default): the estimator's margin for the kind of text
    /// ([`crate::core::estimate::default_margin`]).
    pub input_margin: Option<f64>,
    /// Output allowance for requests without a cap of their own.
    pub default_max_tokens: u64,
    pub enforce_max_tokens: EnforceMaxTokens,
    /// OpenAI streaming: add `stream_options.include_usage` so usage is exact.
    pub include_usage: bool,
    pub invalid_body: InvalidBody,
    /// Learn actual/estimated input per model and apply it to later estimates.
    pub calibrate: bool,
    /// Route-scope limits: the provider quota this Envoy may use.
    pub limits: Option<Rc<LimitConfig>>,
    /// Per-tenant limits on the route.
    pub tenant: Option<Rc<TenantConfig>>,
    pub rate_limit_headers: RateHeaders,
    /// Wait for capacity instead of refusing at once.
    pub queue: Option<QueueConfig>,
    pub priority: Option<Rc<PriorityConfig>>,
    /// A request whose client deadline leaves less than this gets no retry.
    pub retry_min_remaining_ms: u64,
    pub session_budget: Option<Rc<SessionBudget>>,
    pub tenant_budget: Option<Rc<TenantBudget>>,
    /// The fleet-wide tier behind the local limits.
    pub global: Option<Rc<GlobalConfig>>,
}

/// Caps per agent session, named by a header.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionBudget {
    pub header: String,
    /// Requests without the header get `400 session_required` instead of passing unbudgeted.
    pub required: bool,
    pub caps: SessionCaps,
}

/// Spend caps per tenant and calendar day/month (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBudget {
    pub source: TenantSource,
    pub caps: TenantCaps,
}

/// Where a request admitted with a wait is held until its place comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueHold {
    /// Paused in the filter and resumed by its worker's tick: works on any
    /// host, but a request paused in a VM that fails waits for Envoy's
    /// `stream_idle_timeout`.
    Vm,
    /// Sent on at once with `x-envoy-fault-delay-request`: Envoy's fault filter,
    /// placed after this one, holds it outside the VM, so it goes (or is
    /// answered) at its time even if the VM fails.
    FaultFilter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// Longest a request waits for capacity (further bounded by the client's own
    /// timeout when it sends one).
    pub max_wait_ms: u64,
    /// Requests waiting at once, per worker.
    pub max_size: u32,
    /// How often waiting requests retry.
    pub poll_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PriorityConfig {
    pub header: String,
    /// Highest first.
    pub classes: Vec<String>,
    pub default_class: usize,
    /// Share of each burst the lowest class leaves to the classes above it.
    pub reserve: f64,
}

impl PriorityConfig {
    /// Class index for a header value (0 = highest).
    pub fn class_of(&self, value: Option<&str>) -> usize {
        value
            .and_then(|v| {
                self.classes
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(v.trim()))
            })
            .unwrap_or(self.default_class)
    }

    /// The balance floor for a class: 0 for the highest, `reserve` for the lowest.
    pub fn floor(&self, class: usize) -> f64 {
        if self.classes.len() <= 1 {
            0.0
        } else {
            self.reserve * class as f64 / (self.classes.len() - 1) as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    pub limits: Limits,
    /// Count what would be rejected, reject nothing.
    pub shadow: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub source: TenantSource,
    pub slots: u32,
    pub limits: Limits,
    pub shadow: bool,
}

/// Where a request's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A header the operator declared trusted (set or verified by the mesh).
    Header(String),
    /// The downstream mTLS peer certificate: its URI SAN (in Istio, the caller's
    /// SPIFFE identity), else its subject.
    PeerCertificate,
}

/// Which rate-limit headers answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateHeaders {
    None,
    OpenAi,
    Ietf,
    Both,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            api: None,
            encoding: None,
            input_margin: None,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            enforce_max_tokens: EnforceMaxTokens::Off,
            include_usage: false,
            invalid_body: InvalidBody::Reject,
            calibrate: true,
            limits: None,
            tenant: None,
            rate_limit_headers: RateHeaders::Both,
            queue: None,
            priority: None,
            retry_min_remaining_ms: DEFAULT_RETRY_MIN_REMAINING_MS,
            session_budget: None,
            tenant_budget: None,
            global: None,
        }
    }
}

const POLICY_FIELDS: &[&str] = &[
    "api",
    "calibrate",
    "default_max_tokens",
    "encoding",
    "enforce_max_tokens",
    "global",
    "include_usage",
    "input_margin",
    "invalid_body",
    "limits",
    "max_request_bytes",
    "priority",
    "queue",
    "rate_limit_headers",
    "retry_min_remaining_seconds",
    "session_budget",
    "tenant_budget",
    "tenant_limits",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub name: String,
    /// Ordered failover chain; the first entry is the primary.
    pub clusters: Vec<Target>,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    pub metrics: bool,
    pub filter_state: bool,
}

/// The compiled configuration: everything the request path needs, looked up by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub log_level: LogLevel,
    pub unmatched: Unmatched,
    /// An upstream instance of the filter (root_id ending in `upstream`) records
    /// every attempt; otherwise the downstream one records the final answer.
    pub upstream_filter: bool,
    /// Hold request headers while the body is read (needs Envoy's
    /// `allow_on_headers_stop_iteration`); `false` for hosts that cannot set it.
    pub hold_headers: bool,
    /// Where a queued request waits for its turn.
    pub queue_hold: QueueHold,
    pub clusters: BTreeMap<String, Rc<Cluster>>,
    pub routes: BTreeMap<String, Rc<RoutePolicy>>,
    /// Per-model prices for spend budgets.
    pub prices: Prices,
    /// Policy-less routes still need limits such as the body cap.
    pub defaults: Policy,
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

    let mut defaults = Policy::default();
    if let Some((v, p)) = top.take("defaults") {
        let mut d = Obj::new(v, &p)?;
        defaults = policy(&mut d, &defaults)?;
        d.finish(POLICY_FIELDS)?;
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
            let circuit = match c.take("circuit") {
                None => CircuitConfig::default(),
                Some((v, p)) => circuit_config(v, &p)?,
            };
            let adaptive = match c.take("adaptive") {
                None => true,
                Some((v, p)) => boolean(v, &p)?,
            };
            c.finish(&["adaptive", "circuit", "provider"])?;
            clusters.insert(
                name.clone(),
                Rc::new(Cluster {
                    name: name.clone(),
                    provider,
                    circuit,
                    adaptive,
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
                    .ok_or_else(|| type_err(&p, "a list of clusters", v))?;
                if list.len() > MAX_CHAIN_LEN {
                    return Err(err(
                        &p,
                        format!("at most {MAX_CHAIN_LEN} clusters, got {}", list.len()),
                    ));
                }
                for (i, item) in list.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let (cname, model) = chain_entry(item, &ip)?;
                    let c = clusters.get(cname).ok_or_else(|| {
                        err(
                            &ip,
                            format!("unknown cluster \"{cname}\" (define it under clusters)"),
                        )
                    })?;
                    if chain.iter().any(|x: &Target| x.cluster.name == cname) {
                        return Err(err(&ip, format!("cluster \"{cname}\" appears twice")));
                    }
                    chain.push(Target {
                        cluster: Rc::clone(c),
                        model,
                    });
                }
            }
            let policy = policy(&mut r, &defaults)?;
            let mut known = vec!["clusters"];
            known.extend_from_slice(POLICY_FIELDS);
            known.sort_unstable();
            r.finish(&known)?;
            routes.insert(
                name.clone(),
                Rc::new(RoutePolicy {
                    name: name.clone(),
                    clusters: chain,
                    policy,
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

    let prices = match top.take("prices") {
        None => Prices::default(),
        Some((v, p)) => prices(v, &p)?,
    };
    let upstream_filter = match top.take("upstream_filter") {
        None => false,
        Some((v, p)) => boolean(v, &p)?,
    };
    let hold_headers = match top.take("hold_headers") {
        None => true,
        Some((v, p)) => boolean(v, &p)?,
    };
    let queue_hold = match top.take("queue_hold") {
        None => QueueHold::Vm,
        Some((v, p)) => match str_enum(v, &p, &["vm", "fault_filter"])? {
            "fault_filter" if !hold_headers => {
                // The delay header is set at admission, after the body: headers
                // that already left cannot carry it.
                return Err(err(
                    &p,
                    "fault_filter needs hold_headers: true (the delay header is set after the body is read)"
                        .to_string(),
                ));
            }
            "fault_filter" => QueueHold::FaultFilter,
            _ => QueueHold::Vm,
        },
    };

    top.finish(&[
        "clusters",
        "defaults",
        "hold_headers",
        "log_level",
        "prices",
        "queue_hold",
        "routes",
        "telemetry",
        "unmatched_routes",
        "upstream_filter",
    ])?;
    Ok(Config {
        log_level,
        unmatched,
        upstream_filter,
        hold_headers,
        queue_hold,
        prices,
        clusters,
        routes,
        defaults,
        telemetry,
    })
}

/// Reads the inheritable policy fields of `o`, starting from `base`.
fn policy<'a>(o: &mut Obj<'a>, base: &Policy) -> Result<Policy, ConfigError> {
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
        let g = super::global::parse(v, &path, |v, path| {
            let mut l = Obj::new(v, path)?;
            let (limits, shadow) = limit_fields(&mut l)?;
            l.finish(LIMIT_FIELDS)?;
            if shadow {
                return Err(err(path, "shadow does not apply here".to_string()));
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
    if let Some((v, path)) = o.take("tenant_budget") {
        p.tenant_budget = Some(Rc::new(tenant_budget(v, &path)?));
    }
    if let Some((v, path)) = o.take("retry_min_remaining_seconds") {
        p.retry_min_remaining_ms = seconds(v, &path, 0.0, 3600.0)?;
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

const LIMIT_FIELDS: &[&str] = &[
    "burst_seconds",
    "headroom",
    "in_flight_lease_seconds",
    "input_tokens_per_minute",
    "max_in_flight",
    "output_tokens_per_minute",
    "requests_per_minute",
    "shadow",
    "tokens_per_minute",
];

/// The limit fields shared by `limits` and `tenant_limits`.
fn limit_fields<'a>(l: &mut Obj<'a>) -> Result<(Limits, bool), ConfigError> {
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
    let mut rate = |name: &'a str| -> Result<Option<Rate>, ConfigError> {
        match l.take(name) {
            None => Ok(None),
            Some((v, rp)) => {
                let n = uint(v, &rp, "a positive integer")?;
                if n == 0 {
                    return Err(err(
                        &rp,
                        "must be at least 1 (leave it out for no limit)".to_string(),
                    ));
                }
                Ok(Some(Rate::new(n as f64 * (1.0 - headroom), burst)))
            }
        }
    };
    let limits = Limits {
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
fn header_name<'a>(o: &mut Obj<'a>, path: &str, names: &str) -> Result<String, ConfigError> {
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
fn tenant_source<'a>(l: &mut Obj<'a>, path: &str) -> Result<TenantSource, ConfigError> {
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
fn check_some_limit(limits: &Limits, path: &str) -> Result<(), ConfigError> {
    if limits.is_empty() {
        return Err(err(path, "sets no limit: give at least one of requests_per_minute, tokens_per_minute, input_tokens_per_minute, output_tokens_per_minute, max_in_flight".to_string()));
    }
    Ok(())
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
        format!("{}...", super::truncate(&s, 64))
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
    if let Some(f) = number(v) {
        if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
            return Ok(f as u64);
        }
    }
    Err(type_err(path, what, v))
}

/// A number, also from a numeric string: Envoy's YAML-to-Struct conversion turns
/// unquoted decimals such as `0.15` into strings.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// US dollars (at most a billion), as pico-dollars.
fn usd(v: &Value, path: &str) -> Result<u64, ConfigError> {
    match number(v) {
        Some(f) if f > 0.0 && f <= 1.0e9 => Ok((f * PICO_PER_USD as f64).round() as u64),
        _ => Err(type_err(path, "an amount of US dollars above 0", v)),
    }
}

fn prices(v: &Value, path: &str) -> Result<Prices, ConfigError> {
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

fn slots_field<'a>(o: &mut Obj<'a>, default: u32) -> Result<u32, ConfigError> {
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

fn session_budget(v: &Value, path: &str) -> Result<SessionBudget, ConfigError> {
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

fn tenant_budget(v: &Value, path: &str) -> Result<TenantBudget, ConfigError> {
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

/// Seconds in `[min, max]`, as milliseconds.
fn seconds(v: &Value, path: &str, min: f64, max: f64) -> Result<u64, ConfigError> {
    match number(v) {
        Some(f) if f >= min && f <= max => Ok((f * 1000.0).round() as u64),
        _ => Err(type_err(
            path,
            &format!("a number of seconds from {min} to {max}"),
            v,
        )),
    }
}

/// A chain entry: `name`, or `{cluster: name, model: m}`.
fn chain_entry<'v>(item: &'v Value, path: &str) -> Result<(&'v str, Option<String>), ConfigError> {
    if let Some(name) = item.as_str() {
        return Ok((name, None));
    }
    let mut o = Obj::new(item, path)
        .map_err(|_| type_err(path, "a cluster name or {cluster, model}", item))?;
    let name = match o.take("cluster") {
        Some((v, p)) => v
            .as_str()
            .ok_or_else(|| type_err(&p, "a cluster name", v))?,
        None => return Err(err(path, "cluster is required".to_string())),
    };
    let model = match o.take("model") {
        None => None,
        Some((v, p)) => Some(
            v.as_str()
                .filter(|m| {
                    !m.is_empty() && m.len() <= MAX_NAME_LEN && !m.contains(['/', ':', '?', '#'])
                })
                .ok_or_else(|| type_err(&p, "a model name (1 to 128 characters, no / : ? #)", v))?
                .to_string(),
        ),
    };
    o.finish(&["cluster", "model"])?;
    Ok((name, model))
}

fn circuit_config(v: &Value, path: &str) -> Result<CircuitConfig, ConfigError> {
    let mut o = Obj::new(v, path)?;
    let mut c = CircuitConfig::default();
    let int = |v: &Value, p: &str, lo: u64, hi: u64| -> Result<u64, ConfigError> {
        let n = uint(v, p, "a non-negative integer")?;
        if n < lo || n > hi {
            return Err(err(p, format!("must be between {lo} and {hi}, got {n}")));
        }
        Ok(n)
    };
    if let Some((v, p)) = o.take("window_seconds") {
        c.window_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("min_requests") {
        c.min_requests = int(v, &p, 1, 100_000)? as u32;
    }
    if let Some((v, p)) = o.take("error_rate") {
        c.error_rate = match number(v) {
            Some(f) if f > 0.0 && f <= 1.0 => f,
            _ => return Err(type_err(&p, "a number above 0 and at most 1", v)),
        };
    }
    if let Some((v, p)) = o.take("consecutive_failures") {
        c.consecutive_failures = int(v, &p, 0, 100_000)? as u32;
    }
    if let Some((v, p)) = o.take("latency_p95_ms") {
        c.latency_p95_ms = int(v, &p, 0, 3_600_000)?;
    }
    if let Some((v, p)) = o.take("open_seconds") {
        c.open_ms = seconds(v, &p, 0.1, 3600.0)?;
    }
    if let Some((v, p)) = o.take("half_open_probes") {
        c.half_open_probes = int(v, &p, 1, 100)? as u32;
    }
    if let Some((v, p)) = o.take("probe_timeout_seconds") {
        c.probe_timeout_ms = seconds(v, &p, 1.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("default_cooldown_seconds") {
        c.default_cooldown_ms = seconds(v, &p, 0.0, 3600.0)?;
    }
    if let Some((v, p)) = o.take("max_cooldown_seconds") {
        c.max_cooldown_ms = seconds(v, &p, 1.0, 86_400.0)?;
    }
    o.finish(&[
        "consecutive_failures",
        "default_cooldown_seconds",
        "error_rate",
        "half_open_probes",
        "latency_p95_ms",
        "max_cooldown_seconds",
        "min_requests",
        "open_seconds",
        "probe_timeout_seconds",
        "window_seconds",
    ])?;
    Ok(c)
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
        assert_eq!(c.defaults, Policy::default());
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
        assert_eq!(chat.policy.max_request_bytes, 1000);
        let names: Vec<_> = chat
            .clusters
            .iter()
            .map(|c| c.cluster.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(chat.clusters[1].cluster.provider, Provider::Anthropic);
        assert_eq!(c.route("small").unwrap().policy.max_request_bytes, 10);
        assert_eq!(c.clusters["c"].provider, Provider::Generic);
        assert!(!c.telemetry.metrics);
        assert!(c.telemetry.filter_state);
    }

    #[test]
    fn failover_chain_and_circuit_settings() {
        let c = compile(&json!({
            "upstream_filter": true,
            "clusters": {
                "a": {"provider": "openai", "circuit": {
                    "window_seconds": "5", "min_requests": 4.0, "error_rate": "0.25",
                    "consecutive_failures": 3, "latency_p95_ms": 800, "open_seconds": 2,
                    "half_open_probes": 2, "probe_timeout_seconds": 30,
                    "default_cooldown_seconds": 0.5, "max_cooldown_seconds": 60}},
                "b": {"adaptive": false}
            },
            "routes": {"chat": {
                "clusters": ["a", {"cluster": "b", "model": "gpt-4o-mini"}],
                "retry_min_remaining_seconds": 1.5
            }}
        }))
        .unwrap();
        assert!(c.upstream_filter);
        let a = &c.clusters["a"];
        assert_eq!(
            (
                a.circuit.window_ms,
                a.circuit.min_requests,
                a.circuit.error_rate
            ),
            (5000, 4, 0.25)
        );
        assert_eq!(
            (
                a.circuit.consecutive_failures,
                a.circuit.latency_p95_ms,
                a.circuit.open_ms
            ),
            (3, 800, 2000)
        );
        assert_eq!(
            (a.circuit.half_open_probes, a.circuit.probe_timeout_ms),
            (2, 30_000)
        );
        assert_eq!(
            (a.circuit.default_cooldown_ms, a.circuit.max_cooldown_ms),
            (500, 60_000)
        );
        assert!(a.adaptive && !c.clusters["b"].adaptive);
        let chat = c.route("chat").unwrap();
        assert_eq!(chat.clusters[0].model, None);
        assert_eq!(chat.clusters[1].model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(chat.policy.retry_min_remaining_ms, 1500);
        assert_eq!(
            c.route("chat").map(|r| r.clusters[1].cluster.name.as_str()),
            Some("b")
        );
    }

    #[test]
    fn hold_headers_defaults_to_true() {
        assert!(compile(&json!({})).unwrap().hold_headers);
        assert!(
            !compile(&json!({"hold_headers": false}))
                .unwrap()
                .hold_headers
        );
        assert_eq!(
            msg(json!({"hold_headers": 0})),
            "invalid config at hold_headers: expected true or false, got 0"
        );
    }

    #[test]
    fn queue_hold_defaults_to_vm() {
        assert_eq!(compile(&json!({})).unwrap().queue_hold, QueueHold::Vm);
        assert_eq!(
            compile(&json!({"queue_hold": "fault_filter"}))
                .unwrap()
                .queue_hold,
            QueueHold::FaultFilter
        );
        assert_eq!(
            compile(&json!({"queue_hold": "vm", "hold_headers": false}))
                .unwrap()
                .queue_hold,
            QueueHold::Vm
        );
        assert_eq!(
            msg(json!({"queue_hold": "fault"})),
            "invalid config at queue_hold: expected one of vm, fault_filter, got \"fault\""
        );
        assert_eq!(
            msg(json!({"queue_hold": true})),
            "invalid config at queue_hold: expected one of vm, fault_filter, got true"
        );
        assert_eq!(
            msg(json!({"queue_hold": "fault_filter", "hold_headers": false})),
            "invalid config at queue_hold: fault_filter needs hold_headers: true (the delay header is set after the body is read)"
        );
    }

    #[test]
    fn budgets_and_prices_compile() {
        let c = compile(&json!({
            "prices": {"gpt-4o": {"input": "2.5", "output": 10}, "gpt-4o-mini*": {"input": 0.15, "output": 0.6, "cached_input": 0.075}},
            "routes": {"chat": {
                "session_budget": {"header": "X-Session-Id", "max_calls": 3, "max_spend_usd": "0.05", "calls_per_minute": 10},
                "tenant_budget": {"identity": "peer_certificate", "spend_per_day_usd": 20}
            }}
        }))
        .unwrap();
        let chat = c.route("chat").unwrap();
        let sb = chat.policy.session_budget.as_ref().unwrap();
        assert_eq!(sb.header, "x-session-id");
        assert_eq!(sb.caps.max_calls, Some(3));
        assert_eq!(sb.caps.max_spend, Some(PICO_PER_USD / 20));
        assert_eq!(sb.caps.calls_per_minute, Some(10));
        assert_eq!(sb.caps.idle_ttl_ms, DEFAULT_SESSION_TTL_MS);
        assert_eq!(sb.caps.slots, DEFAULT_SESSION_SLOTS);
        let tb = chat.policy.tenant_budget.as_ref().unwrap();
        assert_eq!(tb.source, TenantSource::PeerCertificate);
        assert_eq!(tb.caps.spend_per_day, Some(20 * PICO_PER_USD));
        assert_eq!(tb.caps.spend_per_month, None);
        let p = c.prices.lookup("gpt-4o").unwrap();
        assert_eq!(
            (p.input, p.output, p.cached_input),
            (2_500_000, 10_000_000, 2_500_000)
        );
        assert_eq!(
            c.prices.lookup("gpt-4o-mini-2024").unwrap().cached_input,
            75_000
        );
        assert_eq!(c.prices.lookup("o3"), None);
    }

    #[test]
    fn budget_errors_name_their_path() {
        assert_eq!(
            msg(json!({"routes": {"r": {"session_budget": {"header": "x-s"}}}})),
            "invalid config at routes.r.session_budget: set at least one of max_calls, max_tokens, max_spend_usd, calls_per_minute"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"session_budget": {"max_calls": 1}}}})),
            "invalid config at routes.r.session_budget: header is required (the header naming the session)"
        );
        assert_eq!(
            msg(json!({"defaults": {"session_budget": {"header": "x-s", "max_calls": 0}}})),
            "invalid config at defaults.session_budget.max_calls: must be at least 1, got 0"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"session_budget": {"header": "x-s", "max_spend_usd": -1}}}})),
            "invalid config at routes.r.session_budget.max_spend_usd: expected an amount of US dollars above 0, got -1"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_budget": {"header": "x-t", "spend_per_day_usd": 1}}}})),
            "invalid config at routes.r.tenant_budget.trust_header: is required: set it to true only if the mesh sets or verifies header \"x-t\""
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_budget": {"identity": "peer_certificate"}}}})),
            "invalid config at routes.r.tenant_budget: set at least one of spend_per_day_usd, spend_per_month_usd"
        );
        assert_eq!(
            msg(json!({"prices": {"m": {"input": 1}}})),
            "invalid config at prices.m: output is required"
        );
        assert_eq!(
            msg(json!({"prices": {"m": {"input": 1, "output": "lots"}}})),
            "invalid config at prices.m.output: expected USD per million tokens, from 0 to 1000000, got \"lots\""
        );
    }

    #[test]
    fn failover_errors_name_their_path() {
        assert_eq!(
            msg(json!({"clusters": {"a": {"circuit": {"error_rate": 0}}}})),
            "invalid config at clusters.a.circuit.error_rate: expected a number above 0 and at most 1, got 0"
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {"circuit": {"half_open_probes": 0}}}})),
            "invalid config at clusters.a.circuit.half_open_probes: must be between 1 and 100, got 0"
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {"circuit": {"window": 10}}}})),
            "invalid config at clusters.a.circuit.window: unknown field; expected one of: consecutive_failures, default_cooldown_seconds, error_rate, half_open_probes, latency_p95_ms, max_cooldown_seconds, min_requests, open_seconds, probe_timeout_seconds, window_seconds"
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [{"model": "m"}]}}})),
            "invalid config at routes.r.clusters[0]: cluster is required"
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [{"cluster": "a", "model": "x/y"}]}}})),
            "invalid config at routes.r.clusters[0].model: expected a model name (1 to 128 characters, no / : ? #), got \"x/y\""
        );
        assert_eq!(
            msg(json!({"clusters": {"a": {}}, "routes": {"r": {"clusters": [7]}}})),
            "invalid config at routes.r.clusters[0]: expected a cluster name or {cluster, model}, got 7"
        );
        assert_eq!(
            msg(json!({"upstream_filter": "yes"})),
            "invalid config at upstream_filter: expected true or false, got \"yes\""
        );
        assert_eq!(
            msg(json!({"defaults": {"retry_min_remaining_seconds": -1}})),
            "invalid config at defaults.retry_min_remaining_seconds: expected a number of seconds from 0 to 3600, got -1"
        );
    }

    #[test]
    fn misspelled_field_names_its_path() {
        assert_eq!(
            msg(json!({"routes": {"chat": {"max_request_byte": 5}}})),
            "invalid config at routes.chat.max_request_byte: unknown field; expected one of: api, calibrate, clusters, default_max_tokens, encoding, enforce_max_tokens, global, include_usage, input_margin, invalid_body, limits, max_request_bytes, priority, queue, rate_limit_headers, retry_min_remaining_seconds, session_budget, tenant_budget, tenant_limits"
        );
        assert_eq!(
            msg(json!({"route": {}})),
            "invalid config at route: unknown field; expected one of: clusters, defaults, hold_headers, log_level, prices, queue_hold, routes, telemetry, unmatched_routes, upstream_filter"
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
    fn policy_fields_inherit_and_override() {
        let c = compile(&json!({
            "defaults": {"api": "openai_chat", "input_margin": 0.2, "default_max_tokens": 512,
                         "enforce_max_tokens": "fill", "include_usage": true, "invalid_body": "pass",
                         "calibrate": false, "encoding": "cl100k"},
            "routes": {"a": {}, "b": {"api": "auto", "encoding": "auto", "input_margin": 0, "enforce_max_tokens": "cap"}}
        }))
        .unwrap();
        let a = &c.route("a").unwrap().policy;
        assert_eq!(a.api, Some(Api::OpenAiChat));
        assert_eq!(a.encoding, Some(Encoding::Cl100k));
        assert_eq!((a.input_margin, a.default_max_tokens), (Some(0.2), 512));
        assert_eq!(
            (
                a.enforce_max_tokens,
                a.include_usage,
                a.invalid_body,
                a.calibrate
            ),
            (EnforceMaxTokens::Fill, true, InvalidBody::Pass, false)
        );
        let b = &c.route("b").unwrap().policy;
        assert_eq!(
            (b.api, b.encoding, b.input_margin, b.enforce_max_tokens),
            (None, None, Some(0.0), EnforceMaxTokens::Cap)
        );
        assert_eq!(b.default_max_tokens, 512);
    }

    #[test]
    fn policy_field_errors_name_path_and_value() {
        assert_eq!(
            msg(json!({"routes": {"r": {"api": "openai"}}})),
            "invalid config at routes.r.api: expected one of auto, openai_chat, openai_responses, openai_completions, openai_embeddings, anthropic_messages, gemini, got \"openai\""
        );
        assert_eq!(
            msg(json!({"defaults": {"input_margin": 1.5}})),
            "invalid config at defaults.input_margin: expected a number from 0 to 1 (0.1 = +10%) or \"auto\", got 1.5"
        );
        // Numeric strings are numbers (Envoy's YAML conversion makes `0.15` a string).
        let c =
            compile(&json!({"defaults": {"input_margin": "0.15", "default_max_tokens": "100"}}))
                .unwrap();
        assert_eq!(
            (c.defaults.input_margin, c.defaults.default_max_tokens),
            (Some(0.15), 100)
        );
        let c = compile(&json!({"defaults": {"input_margin": "auto"}})).unwrap();
        assert_eq!(c.defaults.input_margin, None);
        assert_eq!(
            msg(json!({"routes": {"r": {"input_margin": "wide"}}})),
            "invalid config at routes.r.input_margin: expected a number from 0 to 1 (0.1 = +10%) or \"auto\", got \"wide\""
        );
        assert_eq!(
            msg(json!({"defaults": {"default_max_tokens": 0}})),
            "invalid config at defaults.default_max_tokens: must be between 1 and 1000000, got 0"
        );
        assert_eq!(
            msg(json!({"defaults": {"encoding": "gpt2"}})),
            "invalid config at defaults.encoding: expected one of auto, o200k, cl100k, claude, gemini, llama, got \"gpt2\""
        );
        assert_eq!(
            msg(json!({"defaults": {"enforce_max_tokens": true}})),
            "invalid config at defaults.enforce_max_tokens: expected one of off, fill, cap, got true"
        );
        assert_eq!(
            msg(json!({"defaults": {"clusters": []}})),
            "invalid config at defaults.clusters: unknown field; expected one of: api, calibrate, default_max_tokens, encoding, enforce_max_tokens, global, include_usage, input_margin, invalid_body, limits, max_request_bytes, priority, queue, rate_limit_headers, retry_min_remaining_seconds, session_budget, tenant_budget, tenant_limits"
        );
    }

    #[test]
    fn limits_compile_with_headroom_and_burst() {
        let c = compile(&json!({"routes": {"r": {
            "limits": {"requests_per_minute": 600, "tokens_per_minute": "100000", "headroom": 0.1, "burst_seconds": 2, "max_in_flight": 8, "in_flight_lease_seconds": 120},
            "tenant_limits": {"header": "X-Tenant", "trust_header": true, "requests_per_minute": 60, "slots": 16, "shadow": true},
            "rate_limit_headers": "ietf"
        }}}))
        .unwrap();
        let p = &c.route("r").unwrap().policy;
        let l = p.limits.as_ref().unwrap();
        assert_eq!(
            l.limits.requests,
            Some(Rate {
                per_minute: 540.0,
                burst: 18.0
            })
        );
        assert_eq!(l.limits.tokens.unwrap().per_minute, 90_000.0);
        assert_eq!(
            (l.limits.max_in_flight, l.limits.input_tokens, l.shadow),
            (Some(8), None, false)
        );
        assert_eq!(l.limits.in_flight_lease_ms, 120_000);
        let t = p.tenant.as_ref().unwrap();
        assert_eq!(t.limits.in_flight_lease_ms, 600_000, "the default lease");
        assert_eq!(
            compile(&json!({"routes": {"r": {"limits": {"max_in_flight": 2, "in_flight_lease_seconds": 0}}}}))
                .unwrap_err()
                .to_string(),
            "invalid config at routes.r.limits.in_flight_lease_seconds: expected a number of seconds from 1 to 86400, got 0"
        );
        assert_eq!(
            (&t.source, t.slots, t.shadow),
            (&TenantSource::Header("x-tenant".into()), 16, true)
        );
        let c = compile(&json!({"defaults": {"tenant_limits": {"identity": "peer_certificate", "requests_per_minute": 5}}})).unwrap();
        assert_eq!(
            c.defaults.tenant.unwrap().source,
            TenantSource::PeerCertificate
        );
        assert_eq!(
            t.limits.requests,
            Some(Rate {
                per_minute: 60.0,
                burst: 1.0
            })
        );
        assert_eq!(p.rate_limit_headers, RateHeaders::Ietf);
        assert_eq!(c.defaults.rate_limit_headers, RateHeaders::Both);
    }

    #[test]
    fn queue_and_priority() {
        let c = compile(&json!({"defaults": {
            "queue": {"max_wait_seconds": 2.5},
            "priority": {"header": "X-Priority", "classes": ["gold", "silver", "bronze"], "default": "bronze", "reserve": 0.3}
        }}))
        .unwrap();
        let q = c.defaults.queue.unwrap();
        assert_eq!((q.max_wait_ms, q.max_size, q.poll_ms), (2500, 256, 20));
        let p = c.defaults.priority.unwrap();
        assert_eq!(p.header, "x-priority");
        assert_eq!(
            (
                p.class_of(Some("GOLD")),
                p.class_of(Some("x")),
                p.class_of(None)
            ),
            (0, 2, 2)
        );
        assert_eq!((p.floor(0), p.floor(1), p.floor(2)), (0.0, 0.15, 0.3));
        assert_eq!(
            msg(json!({"defaults": {"queue": {"max_wait_seconds": 0}}})),
            "invalid config at defaults.queue.max_wait_seconds: expected a number of seconds above 0 and at most 300, got 0"
        );
        assert_eq!(
            msg(json!({"defaults": {"priority": {"header": "p", "default": "gold"}}})),
            "invalid config at defaults.priority.default: expected one of high, normal, low, got \"gold\""
        );
    }

    #[test]
    fn limit_errors_name_path_and_value() {
        assert_eq!(
            msg(json!({"routes": {"r": {"limits": {"requests_per_minut": 5}}}})),
            "invalid config at routes.r.limits.requests_per_minut: unknown field; expected one of: burst_seconds, headroom, in_flight_lease_seconds, input_tokens_per_minute, max_in_flight, output_tokens_per_minute, requests_per_minute, shadow, tokens_per_minute"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"limits": {"shadow": true}}}})),
            "invalid config at routes.r.limits: sets no limit: give at least one of requests_per_minute, tokens_per_minute, input_tokens_per_minute, output_tokens_per_minute, max_in_flight"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"limits": {"requests_per_minute": 0}}}})),
            "invalid config at routes.r.limits.requests_per_minute: must be at least 1 (leave it out for no limit)"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"limits": {"requests_per_minute": 5, "headroom": 1}}}})),
            "invalid config at routes.r.limits.headroom: expected a number from 0 to below 1 (0.1 = keep 10% back), got 1"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_limits": {"header": "x-t", "requests_per_minute": 5}}}})),
            "invalid config at routes.r.tenant_limits.trust_header: is required: set it to true only if the mesh sets or verifies header \"x-t\""
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_limits": {"header": "x-t", "trust_header": false, "requests_per_minute": 5}}}})),
            "invalid config at routes.r.tenant_limits.trust_header: must be true to use header \"x-t\" as the tenant identity (only when the mesh sets or verifies it), got false"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_limits": {"requests_per_minute": 5}}}})),
            "invalid config at routes.r.tenant_limits: needs a tenant source: header (with trust_header: true) or identity: peer_certificate"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_limits": {"identity": "peer_certificate", "header": "x", "requests_per_minute": 5}}}})),
            "invalid config at routes.r.tenant_limits.header: cannot be combined with identity: choose one tenant source"
        );
        assert_eq!(
            msg(json!({"routes": {"r": {"tenant_limits": {"identity": "jwt", "requests_per_minute": 5}}}})),
            "invalid config at routes.r.tenant_limits.identity: expected one of peer_certificate, got \"jwt\""
        );
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
