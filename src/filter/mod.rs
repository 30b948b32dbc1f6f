//! The thin proxy-wasm adapter: our own dispatcher of the ABI's callbacks
//! (exported from `abi.rs`) to the contexts, which own the core's lives
//! ([`Exchange`], [`UpstreamAttempt`], the VM's [`Worker`]) and the core's host
//! interface over our ABI layer (`host.rs`). No policy lives here, and no host
//! status can panic: unknown contexts and tokens are ignored.

mod abi;
mod fault;
mod host;
mod metrics;

use crate::core::config::{Config, LogLevel};
use crate::core::exchange::attempt::UpstreamAttempt;
use crate::core::exchange::worker::Worker;
use crate::core::exchange::Exchange;
use crate::core::host::{Flow, Metrics, Properties};
use crate::core::telemetry::{BUILD_INFO, QUEUE_MAX_WAIT_MS};
use crate::core::{load_config, GIT_REVISION, VERSION};
use host::{enter, EnvoyHost};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The ABI's actions.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

fn action(f: Flow) -> u32 {
    match f {
        Flow::Continue => CONTINUE,
        Flow::Pause => PAUSE,
    }
}

/// From `_initialize`: logging through the host, and a last word on panics.
fn init() {
    let _ = log::set_logger(&HOST_LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // With panic = "abort" a panic traps the VM; at least say why in Envoy's log.
    std::panic::set_hook(Box::new(|info| {
        abi::log(abi::LOG_CRITICAL, &format!("llm-capacity panic: {info}"))
    }));
}

struct HostLogger;
static HOST_LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Trace => abi::LOG_TRACE,
                log::Level::Debug => abi::LOG_DEBUG,
                log::Level::Info => abi::LOG_INFO,
                log::Level::Warn => abi::LOG_WARN,
                log::Level::Error => abi::LOG_ERROR,
            };
            abi::log(level, &record.args().to_string());
        }
    }
    fn flush(&self) {}
}

// ------------------------------------------------------------ the dispatcher

/// One context of the VM.
enum Context {
    Root(Root),
    /// A downstream stream: one request's life.
    Stream(Box<Exchange>, EnvoyHost),
    /// An upstream attempt (the upstream instance).
    Upstream(UpstreamAttempt, EnvoyHost),
    /// A stream of a root without a configuration: passed untouched.
    Inert,
}

/// Most gRPC calls in flight per VM whose answer is routed here.
const MAX_CALLS: usize = 4096;

thread_local! {
    /// The VM's state, shared by its root contexts (the downstream and the
    /// upstream instance may share one VM) and all their streams.
    static WORKER: Rc<Worker> = Rc::default();
    static CONTEXTS: RefCell<HashMap<u32, Rc<RefCell<Context>>>> = RefCell::new(HashMap::new());
    /// Our gRPC call routing: token -> the context that made the call.
    static CALLS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

/// Runs `f` on context `id` (with a fresh clock reading); `default` when the
/// context is unknown, or busy (a re-entrant call, which Envoy defers anyway).
fn with<R>(id: u32, default: R, f: impl FnOnce(&mut Context) -> R) -> R {
    let Some(c) = CONTEXTS.with(|m| m.borrow().get(&id).cloned()) else {
        return default;
    };
    let Ok(mut c) = c.try_borrow_mut() else {
        return default;
    };
    enter(id);
    f(&mut c)
}

/// Remembers which context made the call with `token`, for its answer.
fn route_call(token: u32) {
    let ctx = host::current();
    CALLS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < MAX_CALLS {
            c.insert(token, ctx);
        }
    });
}

fn on_context_create(id: u32, root_id: u32) {
    let ctx = if root_id == 0 {
        Context::Root(Root::default())
    } else {
        with(root_id, Context::Inert, |r| match r {
            Context::Root(root) => root.new_stream(id),
            _ => Context::Inert,
        })
    };
    CONTEXTS.with(|m| m.borrow_mut().insert(id, Rc::new(RefCell::new(ctx))));
}

fn on_delete(id: u32) {
    CONTEXTS.with(|m| m.borrow_mut().remove(&id));
    // Envoy cancels a context's calls when it goes: their answers never come.
    CALLS.with(|c| c.borrow_mut().retain(|_, ctx| *ctx != id));
}

fn on_vm_start(_id: u32, _size: usize) -> bool {
    log::info!("llm-capacity {VERSION} (git {GIT_REVISION}) starting");
    true
}

fn on_configure(id: u32, _size: usize) -> bool {
    with(id, false, |c| match c {
        Context::Root(root) => root.on_configure(),
        _ => false,
    })
}

fn on_tick(id: u32) {
    let wake = with(id, Vec::new(), |c| match c {
        Context::Root(root) => {
            let wake = {
                timed!("root_on_tick");
                // The core's work only on the ticks it asked for (the others
                // are the metric flush's).
                let wake = if root.host.tick.core_ticking() {
                    fault::on_tick();
                    root.worker.on_tick(&mut root.host);
                    root.worker.take_collapsed()
                } else {
                    Vec::new()
                };
                root.host.on_tick_flush();
                wake
            };
            #[cfg(feature = "hostcall-count")]
            abi::count::export();
            wake
        }
        _ => Vec::new(),
    });
    // Requests waiting for an identical one look at the cache again.
    for ctx in wake {
        if abi::set_effective_context(ctx).is_err() {
            continue; // gone: its on_log forgot it
        }
        with(ctx, (), |c| {
            if let Context::Stream(life, host) = c {
                life.on_cache_wake(host);
            }
        });
    }
}

fn on_request_headers(id: u32, _headers: usize, eos: bool) -> u32 {
    with(id, CONTINUE, |c| match c {
        Context::Stream(life, host) => {
            timed!("ds_on_http_request_headers");
            fault::on_request_headers();
            #[cfg(feature = "hostcall-count")]
            if abi::count::requested_timing() {
                for (kind, ns) in abi::count::time_calls(20_000) {
                    log::warn!("llm-capacity: host call {kind}: {ns} ns");
                }
            }
            action(life.on_request_headers(host, eos))
        }
        Context::Upstream(life, host) => {
            timed!("up_on_http_request_headers");
            action(life.on_request_headers(host, eos))
        }
        _ => CONTINUE,
    })
}

fn on_request_body(id: u32, size: usize, eos: bool) -> u32 {
    with(id, CONTINUE, |c| match c {
        Context::Stream(life, host) => {
            timed!("ds_on_http_request_body");
            action(life.on_request_body(host, size, eos))
        }
        Context::Upstream(life, host) => {
            timed!("up_on_http_request_body");
            action(life.on_request_body(host, size, eos))
        }
        _ => CONTINUE,
    })
}

fn on_response_headers(id: u32, _headers: usize, eos: bool) -> u32 {
    with(id, CONTINUE, |c| match c {
        // Header reads and writes gathered: one read and one write at most.
        Context::Stream(life, host) => {
            timed!("ds_on_http_response_headers");
            host.begin_response_headers();
            let flow = life.on_response_headers(host, eos);
            host.end_response_headers();
            action(flow)
        }
        Context::Upstream(life, host) => {
            timed!("up_on_http_response_headers");
            host.begin_response_headers_sparse();
            let flow = life.on_response_headers(host);
            host.end_response_headers();
            action(flow)
        }
        _ => CONTINUE,
    })
}

fn on_response_body(id: u32, size: usize, eos: bool) -> u32 {
    with(id, CONTINUE, |c| match c {
        Context::Stream(life, host) => {
            timed!("ds_on_http_response_body");
            action(life.on_response_body(host, size, eos))
        }
        Context::Upstream(life, host) => {
            timed!("up_on_http_response_body");
            action(life.on_response_body(host, size, eos))
        }
        _ => CONTINUE,
    })
}

fn on_log(id: u32) {
    with(id, (), |c| match c {
        Context::Stream(life, host) => {
            {
                timed!("ds_on_log");
                life.on_log(host);
            }
            #[cfg(feature = "hostcall-count")]
            abi::count::export();
        }
        Context::Upstream(life, host) => {
            timed!("up_on_log");
            life.on_end(host);
        }
        _ => {}
    });
}

fn on_done(id: u32) -> bool {
    with(id, true, |c| {
        match c {
            Context::Upstream(life, host) => {
                timed!("up_on_done");
                life.on_end(host);
            }
            // A root going (config replaced, VM shutting down): nothing waits.
            Context::Root(root) => root.host.flush_metrics(),
            _ => {}
        }
        true
    })
}

/// An answer (or the failure) of a gRPC call, to the context that made it.
fn on_grpc_answer(context_id: u32, token: u32, status: u32, size: usize) {
    let Some(id) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
        return; // not ours, or its context is gone
    };
    if id != context_id && abi::set_effective_context(id).is_err() {
        return;
    }
    with(id, (), |c| match c {
        Context::Root(root) => {
            let count = root.config.as_ref().is_some_and(|c| c.telemetry.metrics);
            let host = &mut root.host;
            root.worker
                .on_renewal_answer(host, count, token, status, size);
        }
        Context::Stream(life, host) => life.on_grpc_answer(host, token, status, size),
        _ => {}
    });
}

/// Times one callback in the hostcall-count build.
macro_rules! timed {
    ($name:literal) => {
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start($name);
    };
}
use timed;

// ------------------------------------------------------------------ the root

struct Root {
    config: Option<Rc<Config>>,
    host: EnvoyHost,
    worker: Rc<Worker>,
    /// Placed as an upstream HTTP filter (root_id ending in `upstream`).
    upstream: bool,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            config: None,
            host: EnvoyHost {
                metrics: Rc::default(),
                tick: Rc::default(),
                rng: Rc::new(RefCell::new(host::vm_random())),
                response: RefCell::default(),
            },
            worker: WORKER.with(Rc::clone),
            upstream: false,
        }
    }
}

impl Root {
    fn on_configure(&mut self) -> bool {
        let bytes = match abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                log::error!("llm-capacity: cannot read plugin configuration (host status {s})");
                return false;
            }
        };
        let config = match load_config(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy refuse the config (NACK, or no start).
                log::error!("llm-capacity: {e}");
                return false;
            }
        };
        log::set_max_level(match config.log_level {
            LogLevel::Trace => log::LevelFilter::Trace,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
        });
        if config.telemetry.metrics {
            self.host.set_gauge(
                &[("version", VERSION), ("revision", GIT_REVISION)],
                BUILD_INFO,
                1,
            );
            // What the queue-wait alert compares the p95 wait with.
            for (name, r) in &config.routes {
                if let Some(q) = &r.policy.queue {
                    self.host
                        .set_gauge(&[("route", name)], QUEUE_MAX_WAIT_MS, q.max_wait_ms);
                }
            }
        }
        self.upstream = self
            .host
            .property_text(&["plugin_root_id"])
            .is_some_and(|r| r.ends_with("upstream"));
        log::info!(
            "llm-capacity: configuration accepted: {} route policies, {} clusters{}",
            config.routes.len(),
            config.clusters.len(),
            if self.upstream {
                " (upstream instance)"
            } else {
                ""
            }
        );
        self.config = Some(Rc::new(config));
        true
    }

    fn new_stream(&self, id: u32) -> Context {
        let Some(config) = self.config.clone() else {
            return Context::Inert;
        };
        let host = self.host.clone();
        let worker = Rc::clone(&self.worker);
        if self.upstream {
            return Context::Upstream(UpstreamAttempt::new(config, worker), host);
        }
        Context::Stream(Box::new(Exchange::new(config, worker, id)), host)
    }
}
