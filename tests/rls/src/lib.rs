//! llmcap-rls: Envoy's rate limit service protocol (`envoy.service.ratelimit.v3`) over
//! Limitador's library, with its Redis storage (or its in-memory one). Test support for
//! the filter's global rate-limit tier; see README.md beside this crate.
//!
//! Differences from Limitador's own server (limitador-server `envoy_rls`), all on purpose:
//! - each descriptor is evaluated on its own, bound as `descriptors[0]`, with its own hits
//!   (`RateLimitDescriptor.hits_addend`, else the request's `hits_addend`, else 1);
//! - one call is all-or-nothing: if any descriptor would go over, nothing is charged;
//! - every answer has one status per descriptor, with the binding limit, what remains of it
//!   and the time until its window resets.

pub mod pb {
    //! The trimmed Envoy protos in proto/, compiled by build.rs.
    pub mod envoy {
        pub mod service {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.ratelimit.v3");
                }
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                    }
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
}

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::{Context, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tonic::{Request, Response, Status};

pub use pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
pub use pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
pub use pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
pub use pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
pub use pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// Bounds on one request, so a hostile or broken caller cannot make one call expensive.
pub const MAX_DESCRIPTORS: usize = 64;
pub const MAX_ENTRIES: usize = 64;
pub const MAX_TEXT: usize = 4096;

/// How long a call may hold the cross-instance lock, and how long it waits for it.
const LOCK_TTL: Duration = Duration::from_secs(5);
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// The storage work of one call (checks, charges, re-reads), well under LOCK_TTL.
const STORAGE_BUDGET: Duration = Duration::from_secs(2);
/// Each Redis command; the connection manager reconnects after a failure.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Parses a limits document in Limitador's own format (a YAML list of limits; JSON is
/// YAML too) and checks what llmcap-rls needs beyond Limitador's own parsing.
pub fn parse_limits(text: &str) -> Result<Vec<Limit>, String> {
    let limits: Vec<Limit> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut seen: HashSet<&Limit> = HashSet::new();
    for (i, limit) in limits.iter().enumerate() {
        let what = match limit.name() {
            Some(n) => format!("limit {i} ({n})"),
            None => format!("limit {i}"),
        };
        if limit.namespace().as_ref().is_empty() {
            return Err(format!("{what}: empty namespace"));
        }
        if limit.seconds() == 0 {
            return Err(format!("{what}: seconds must be at least 1"));
        }
        for source in limit.conditions().iter().chain(limit.variables().iter()) {
            check_descriptor_index(source).map_err(|e| format!("{what}: {e}"))?;
        }
        // Limitador identifies a limit by namespace, seconds, conditions and variables
        // (not max_value nor name): two such limits would silently be one.
        if !seen.insert(limit) {
            return Err(format!(
                "{what}: same namespace, seconds, conditions and variables as an earlier limit"
            ));
        }
    }
    Ok(limits)
}

/// Each descriptor is evaluated on its own as `descriptors[0]`: any other index never
/// matches here (and would make Limitador's evaluation fail), so it is refused up front.
fn check_descriptor_index(source: &str) -> Result<(), String> {
    let mut rest = source;
    while let Some(at) = rest.find("descriptors[") {
        let after = &rest[at + "descriptors[".len()..];
        let index = after.split(']').next().unwrap_or("").trim();
        if index != "0" {
            return Err(format!(
                "`{source}`: llmcap-rls evaluates each descriptor on its own as descriptors[0]; \
                 descriptors[{index}] is not supported"
            ));
        }
        rest = after;
    }
    Ok(())
}

// One per process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Limiter {
    Memory(RateLimiter),
    Redis(AsyncRateLimiter, ConnectionManager),
}

/// The engine: Limitador's limiter plus the serialization that makes a call all-or-nothing.
pub struct Engine {
    limiter: Limiter,
    local: tokio::sync::Mutex<()>,
    delay: Duration,
    instance: String,
    seq: AtomicU64,
}

/// One descriptor of a call, ready to evaluate.
struct Item {
    ctx: Context<'static>,
    hits: u64,
}

impl Engine {
    /// Counters in Redis at `redis_url`, or in this process when `None`.
    pub async fn new(
        limits: Vec<Limit>,
        redis_url: Option<&str>,
        delay: Duration,
    ) -> Result<Self, String> {
        let limiter = match redis_url {
            None => {
                let rl = RateLimiter::new(100_000);
                for l in limits {
                    rl.add_limit(l);
                }
                Limiter::Memory(rl)
            }
            Some(url) => {
                let client =
                    redis::Client::open(url).map_err(|e| format!("redis url {url}: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(REDIS_RESPONSE_TIMEOUT)
                    .set_number_of_retries(2)
                    .set_max_delay(200);
                let conn = tokio::time::timeout(
                    Duration::from_secs(10),
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| format!("redis {url}: timed out connecting"))?
                .map_err(|e| format!("redis {url}: {e}"))?;
                let storage = AsyncRedisStorage::new_with_conn_manager(conn.clone())
                    .await
                    .map_err(|e| format!("redis {url}: {e}"))?;
                let rl = AsyncRateLimiter::new_with_storage(Box::new(storage));
                for l in limits {
                    rl.add_limit(l);
                }
                Limiter::Redis(rl, conn)
            }
        };
        Ok(Self {
            limiter,
            local: tokio::sync::Mutex::new(()),
            delay,
            instance: format!("{}-{}", std::process::id(), unique_suffix()),
            seq: AtomicU64::new(0),
        })
    }

    /// Answers one ShouldRateLimit call.
    pub async fn should_rate_limit(
        self: &Arc<Self>,
        req: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let items = plan(&req)?;
        let ns: Namespace = req.domain.as_str().into();
        self.probe(&ns, &items)?;
        if !self.delay.is_zero() {
            // A caller that gives up now (Envoy resets the stream) drops the call uncharged.
            tokio::time::sleep(self.delay).await;
        }
        // From here on the call runs to its end in its own task even if the caller goes
        // away: dropped mid-way, it would leave the lock held and a partial charge.
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.serialized(&ns, &items).await })
            .await
            .map_err(|e| Status::internal(format!("engine task failed: {e}")))?
    }

    async fn serialized(
        &self,
        ns: &Namespace,
        items: &[Item],
    ) -> Result<RateLimitResponse, Status> {
        // One call at a time per process; the Redis lock orders processes sharing a Redis.
        let _local = self.local.lock().await;
        let lock = self.lock(ns).await?;
        let result = tokio::time::timeout(STORAGE_BUDGET, self.decide(ns, items)).await;
        if let Some((key, token)) = lock {
            self.unlock(&key, &token).await;
        }
        match result {
            Ok(r) => r,
            Err(_) => Err(Status::unavailable("rate limit storage timed out")),
        }
    }

    /// Limitador panics (unwrap) when a condition fails to evaluate (a type error, say):
    /// evaluate every limit of the namespace against each descriptor first, here, so a bad
    /// pairing of limits and request is a gRPC error rather than a dead connection task.
    fn probe(&self, ns: &Namespace, items: &[Item]) -> Result<(), Status> {
        let limits = match &self.limiter {
            Limiter::Memory(rl) => rl.get_limits(ns),
            Limiter::Redis(rl, _) => rl.get_limits(ns),
        };
        for item in items {
            for limit in &limits {
                if catch_unwind(AssertUnwindSafe(|| limit.applies(&item.ctx))).is_err() {
                    return Err(Status::invalid_argument(format!(
                        "a condition of limit {:?} fails on this descriptor",
                        limit.name().unwrap_or("(unnamed)")
                    )));
                }
            }
        }
        Ok(())
    }

    async fn check(
        &self,
        ns: &Namespace,
        ctx: &Context<'static>,
        hits: u64,
    ) -> Result<CheckResult, Status> {
        match &self.limiter {
            Limiter::Memory(rl) => rl.is_rate_limited(ns, ctx, hits),
            Limiter::Redis(rl, _) => rl.is_rate_limited(ns, ctx, hits).await,
        }
        .map_err(storage_status)
    }

    async fn charge(
        &self,
        ns: &Namespace,
        ctx: &Context<'static>,
        hits: u64,
    ) -> Result<(), Status> {
        match &self.limiter {
            Limiter::Memory(rl) => rl.update_counters(ns, ctx, hits),
            Limiter::Redis(rl, _) => rl.update_counters(ns, ctx, hits).await,
        }
        .map_err(storage_status)
    }

    /// Check every descriptor, then charge all of them or none. Runs under the locks.
    async fn decide(&self, ns: &Namespace, items: &[Item]) -> Result<RateLimitResponse, Status> {
        let mut matched: Vec<Vec<Counter>> = Vec::with_capacity(items.len());
        for item in items {
            matched.push(self.check(ns, &item.ctx, item.hits).await?.counters);
        }

        // The same counter can match several descriptors: it must hold their sum.
        let mut totals: HashMap<Counter, (u64, u64)> = HashMap::new();
        for (item, counters) in items.iter().zip(&matched) {
            for c in counters {
                let remaining = c.remaining().unwrap_or(c.max_value());
                let e = totals.entry(c.clone()).or_insert((remaining, 0));
                e.0 = e.0.min(remaining);
                e.1 = e.1.saturating_add(item.hits);
            }
        }
        let over = |c: &Counter, hits: u64| -> bool {
            let (remaining, total) = totals.get(c).copied().unwrap_or((0, 0));
            total > remaining || (hits == 0 && remaining == 0)
        };
        let desc_over: Vec<bool> = items
            .iter()
            .zip(&matched)
            .map(|(item, counters)| counters.iter().any(|c| over(c, item.hits)))
            .collect();
        let admitted = !desc_over.iter().any(|&o| o);

        if admitted {
            for (item, counters) in items.iter().zip(&matched) {
                if item.hits > 0 && !counters.is_empty() {
                    self.charge(ns, &item.ctx, item.hits).await?;
                }
            }
            // Read back what was charged: exact remaining, and the reset of a window the
            // charge itself may just have started (also for a 0-hit descriptor: another
            // descriptor of the call may have charged its counter).
            for (item, counters) in items.iter().zip(matched.iter_mut()) {
                if !counters.is_empty() {
                    *counters = self.check(ns, &item.ctx, 0).await?.counters;
                }
            }
        }

        let statuses = items
            .iter()
            .zip(&matched)
            .zip(&desc_over)
            .map(|((item, counters), &is_over)| status(counters, is_over, |c| over(c, item.hits)))
            .collect();
        Ok(RateLimitResponse {
            overall_code: if admitted { Code::Ok } else { Code::OverLimit } as i32,
            statuses,
        })
    }

    async fn lock(&self, ns: &Namespace) -> Result<Option<(String, String)>, Status> {
        let Limiter::Redis(_, conn) = &self.limiter else {
            return Ok(None);
        };
        let key = format!("llmcap-rls:lock:{}", ns.as_ref());
        let token = format!(
            "{}-{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_micros(500);
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut conn.clone())
                .await
                .map_err(|e| Status::unavailable(format!("redis: {e}")))?;
            if got.is_some() {
                return Ok(Some((key, token)));
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable("rate limit lock busy"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    async fn unlock(&self, key: &str, token: &str) {
        let Limiter::Redis(_, conn) = &self.limiter else {
            return;
        };
        // Only our own lock: it may have expired and been taken by another call.
        let script = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
        );
        let r: Result<i64, _> = script
            .key(key)
            .arg(token)
            .invoke_async(&mut conn.clone())
            .await;
        if let Err(e) = r {
            eprintln!(
                "llmcap-rls: releasing {key}: {e} (it expires in {} ms)",
                LOCK_TTL.as_millis()
            );
        }
    }
}

/// Validates the request and resolves each descriptor's context and hits.
fn plan(req: &RateLimitRequest) -> Result<Vec<Item>, Status> {
    if req.domain.is_empty() {
        return Err(Status::invalid_argument("domain is empty"));
    }
    if req.domain.len() > MAX_TEXT {
        return Err(Status::invalid_argument("domain too long"));
    }
    if req.descriptors.is_empty() {
        return Err(Status::invalid_argument("no descriptors"));
    }
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!(
            "more than {MAX_DESCRIPTORS} descriptors"
        )));
    }
    let default_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    req.descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.entries.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "descriptor {i} has no entries"
                )));
            }
            if d.entries.len() > MAX_ENTRIES {
                return Err(Status::invalid_argument(format!(
                    "descriptor {i} has more than {MAX_ENTRIES} entries"
                )));
            }
            let mut map = HashMap::with_capacity(d.entries.len());
            for e in &d.entries {
                if e.key.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "descriptor {i} has an empty key"
                    )));
                }
                if e.key.len() > MAX_TEXT || e.value.len() > MAX_TEXT {
                    return Err(Status::invalid_argument(format!(
                        "descriptor {i}: entry too long"
                    )));
                }
                // A repeated key: the last value wins, as in limitador-server.
                map.insert(e.key.clone(), e.value.clone());
            }
            let mut ctx = Context::default();
            ctx.list_binding("descriptors".to_string(), vec![map]);
            Ok(Item {
                ctx,
                hits: d.hits_addend.unwrap_or(default_hits),
            })
        })
        .collect()
}

/// One descriptor's status: its binding counter (the one over, else the one with the
/// least left), what remains of it and when its window resets.
fn status(
    counters: &[Counter],
    is_over: bool,
    over: impl Fn(&Counter) -> bool,
) -> DescriptorStatus {
    let code = if is_over { Code::OverLimit } else { Code::Ok } as i32;
    let binding = counters
        .iter()
        .filter(|c| !is_over || over(c))
        .min_by_key(|c| {
            (
                c.remaining().unwrap_or(c.max_value()),
                c.expires_in().unwrap_or(c.window()),
            )
        });
    let Some(c) = binding else {
        return DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: None,
        };
    };
    let unit = match c.limit().seconds() {
        1 => Some(Unit::Second),
        60 => Some(Unit::Minute),
        3600 => Some(Unit::Hour),
        86400 => Some(Unit::Day),
        _ => None,
    };
    let reset = c.expires_in().unwrap_or(c.window());
    DescriptorStatus {
        code,
        current_limit: unit.map(|u| RateLimit {
            name: c.limit().name().unwrap_or_default().to_string(),
            requests_per_unit: clamp_u32(c.max_value()),
            unit: u as i32,
        }),
        limit_remaining: clamp_u32(c.remaining().unwrap_or(c.max_value())),
        duration_until_reset: Some(prost_types::Duration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn storage_status(e: LimitadorError) -> Status {
    match e {
        LimitadorError::StorageError(e) => {
            Status::unavailable(format!("rate limit storage: {}", e.msg()))
        }
        LimitadorError::InterpreterError(e) => {
            Status::invalid_argument(format!("limit evaluation: {e}"))
        }
    }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The gRPC service. With `verbose`, one line per call on stdout: what was asked, what
/// was answered.
pub struct Service {
    engine: Arc<Engine>,
    verbose: bool,
}

impl Service {
    pub fn new(engine: Engine, verbose: bool) -> Self {
        Self {
            engine: Arc::new(engine),
            verbose,
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        let mut log = CallLog(self.verbose.then(|| describe_request(&req)));
        let result = self.engine.should_rate_limit(req).await;
        log.answered(&result);
        result.map(Response::new)
    }
}

/// The --verbose line of a call; a call dropped before its answer (the caller reset the
/// stream, e.g. on its timeout) is logged as abandoned.
struct CallLog(Option<String>);

impl CallLog {
    fn answered(&mut self, result: &Result<RateLimitResponse, Status>) {
        if let Some(asked) = self.0.take() {
            log_line(&format!("{asked} -> {}", describe_result(result)));
        }
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if let Some(asked) = self.0.take() {
            log_line(&format!("{asked} -> abandoned by the caller"));
        }
    }
}

/// Never println!: it panics when whoever read stdout has gone away.
fn log_line(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn describe_request(req: &RateLimitRequest) -> String {
    let default_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    let descriptors: Vec<String> = req
        .descriptors
        .iter()
        .map(|d| {
            let entries: Vec<String> = d
                .entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect();
            format!(
                "[{} x{}]",
                entries.join(","),
                d.hits_addend.unwrap_or(default_hits)
            )
        })
        .collect();
    format!("call domain={} {}", req.domain, descriptors.join(" "))
}

fn describe_result(result: &Result<RateLimitResponse, Status>) -> String {
    match result {
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
        Ok(r) => {
            let code = |c: i32| match Code::try_from(c) {
                Ok(Code::Ok) => "OK",
                Ok(Code::OverLimit) => "OVER_LIMIT",
                _ => "UNKNOWN",
            };
            let statuses: Vec<String> = r
                .statuses
                .iter()
                .map(|s| match (&s.current_limit, &s.duration_until_reset) {
                    (None, None) => format!("[{} no limit]", code(s.code)),
                    (_, reset) => format!(
                        "[{} remaining {} reset {:.3}s]",
                        code(s.code),
                        s.limit_remaining,
                        reset
                            .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
                            .unwrap_or(0.0)
                    ),
                })
                .collect();
            format!("{} {}", code(r.overall_code), statuses.join(" "))
        }
    }
}
