//! Plugin configuration: parsed, validated and compiled once, in `on_configure`.
//!
//! The input is a JSON value (Envoy hands the filter either JSON text or a
//! `google.protobuf.Struct`, which [`crate::core::pbstruct`] turns into JSON). Parsing is
//! hand-written over `serde_json::Value` so that every error names the exact path
//! and value; unknown fields are errors, because a misspelled limit that is
//! silently ignored is worse than a config that is refused.
//!
//! Shape (see docs/configuration.md):
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

use crate::core::limits::budget::{Price, Prices, SessionCaps, TenantCaps, PICO_PER_USD};
use crate::core::limits::limiter::{Limits, Rate, DEFAULT_IN_FLIGHT_LEASE_MS};
use crate::core::tokens::estimate::Encoding;
use crate::core::tokens::models::{Catalogue, ModelLimits};
use crate::core::tokens::request::Api;
use crate::core::upstream::circuit::{CircuitConfig, RelativeLatency};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

mod budgets;
pub mod cache;
pub mod crossing;
pub mod global;
mod policy;
mod read;
mod routing;
pub use routing::{Hedge, Routing, Strategy};
#[cfg(test)]
mod tests;
mod upstream;

use budgets::*;
use cache::cache;
pub use cache::{CacheConfig, CacheWhen};
pub use global::GlobalConfig;
use policy::*;
pub(crate) use read::uint;
use read::*;
use upstream::*;

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
/// Entries of `models:`, at most.
pub const MAX_MODELS: usize = 1024;
/// Largest context window a `models:` entry may name.
pub const MAX_CONTEXT_WINDOW: u64 = 100_000_000;

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
    /// Share of first attempts with `strategy: weighted` (default 1).
    pub weight: u32,
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
    /// ([`crate::core::tokens::estimate::default_margin`]).
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
    /// Longest conversation a request may carry (entries counted by the
    /// estimator); longer ones are refused `400 too_many_turns`.
    pub max_messages: Option<u32>,
    /// Most one request may cost, in pico-dollars, priced with `prices` at the
    /// model of the attempt it goes to; dearer ones are refused `402 request_cost_exceeded`.
    pub max_request_cost: Option<u64>,
    /// What a good answer is (goodput): bounds on its latency.
    pub slo: Option<Slo>,
    /// The exact response cache, request collapsing and idempotency keys.
    pub cache: Option<Rc<CacheConfig>>,
}

/// A route's latency objective: an answer within every bound set is `met`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slo {
    pub time_to_first_token_ms: Option<u64>,
    pub duration_ms: Option<u64>,
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
            slo: None,
            max_messages: None,
            max_request_cost: None,
            cache: None,
        }
    }
}

const POLICY_FIELDS: &[&str] = &[
    "api",
    "cache",
    "calibrate",
    "default_max_tokens",
    "encoding",
    "enforce_max_tokens",
    "global",
    "include_usage",
    "input_margin",
    "invalid_body",
    "limits",
    "max_messages",
    "max_request_bytes",
    "max_request_cost_usd",
    "priority",
    "queue",
    "rate_limit_headers",
    "retry_min_remaining_seconds",
    "session_budget",
    "slo",
    "tenant_budget",
    "tenant_limits",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub name: String,
    /// Ordered failover chain; the first entry is the primary.
    pub clusters: Vec<Target>,
    pub policy: Policy,
    /// The first attempt's strategy and the retry budget.
    pub routing: Routing,
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
    /// Context window and maximum output per model (built-in, and `models:`).
    pub models: Catalogue,
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
            let mut weights = Vec::new();
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
                    let (cname, model, weight) = chain_entry(item, &ip)?;
                    let c = clusters.get(cname).ok_or_else(|| {
                        err(
                            &ip,
                            format!("unknown cluster \"{cname}\" (define it under clusters)"),
                        )
                    })?;
                    if chain.iter().any(|x: &Target| x.cluster.name == cname) {
                        return Err(err(&ip, format!("cluster \"{cname}\" appears twice")));
                    }
                    weights.push(weight);
                    chain.push(Target {
                        cluster: Rc::clone(c),
                        model,
                        weight: weight.unwrap_or(1),
                    });
                }
            }
            let routing = routing::routing(&mut r, &p, &weights)?;
            let policy = policy(&mut r, &defaults)?;
            crossing::check_chain(&p, &chain, policy.api)?;
            let mut known = vec!["clusters"];
            known.extend_from_slice(POLICY_FIELDS);
            known.extend_from_slice(routing::ROUTE_FIELDS);
            known.sort_unstable();
            r.finish(&known)?;
            routes.insert(
                name.clone(),
                Rc::new(RoutePolicy {
                    name: name.clone(),
                    clusters: chain,
                    policy,
                    routing,
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
    let models = match top.take("models") {
        None => Catalogue::default(),
        Some((v, p)) => models(v, &p)?,
    };
    let upstream_filter = match top.take("upstream_filter") {
        None => false,
        Some((v, p)) => boolean(v, &p)?,
    };
    let hold_headers = match top.take("hold_headers") {
        None => true,
        Some((v, p)) => boolean(v, &p)?,
    };
    crossing::check_hosting(&routes, upstream_filter, hold_headers)?;
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
        "models",
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
        models,
        clusters,
        routes,
        defaults,
        telemetry,
    })
}
