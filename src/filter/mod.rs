//! The thin proxy-wasm adapter: owns the proxy-wasm contexts, implements the
//! core's host interface over our ABI layer (`host.rs` over `abi.rs`), and
//! forwards each callback to the core ([`Exchange`], [`UpstreamAttempt`],
//! [`Worker`]). No policy lives here.

mod abi;
mod fault;
mod host;
mod metrics;

use crate::core::config::{Config, LogLevel};
use crate::core::exchange::attempt::UpstreamAttempt;
use crate::core::exchange::worker::Worker;
use crate::core::exchange::Exchange;
use crate::core::host::{Flow, Properties};
use crate::core::telemetry::{BUILD_INFO, QUEUE_MAX_WAIT_MS};
use crate::core::{load_config, GIT_REVISION, VERSION};
use host::{enter, EnvoyHost};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;

proxy_wasm::main! {{
    let _ = log::set_logger(&HOST_LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // With panic = "abort" a panic traps the VM; at least say why in EnvoyHost's log.
    std::panic::set_hook(Box::new(|info| abi::log(abi::LOG_CRITICAL, &format!("llm-capacity panic: {info}"))));
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

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

fn action(f: Flow) -> Action {
    match f {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

thread_local! {
    /// The VM's state, shared by its root contexts (the downstream and the
    /// upstream instance may share one VM) and all their streams.
    static WORKER: Rc<Worker> = Rc::default();
}

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
                rng: Rc::new(std::cell::RefCell::new(host::vm_random())),
            },
            worker: WORKER.with(Rc::clone),
            upstream: false,
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        enter();
        let count = self.config.as_ref().is_some_and(|c| c.telemetry.metrics);
        self.worker
            .on_renewal_answer(&mut self.host, count, token_id, status_code, response_size);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("llm-capacity {VERSION} (git {GIT_REVISION}) starting");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
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
                // Returning false makes EnvoyHost refuse the config (NACK, or no start).
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
            self.host.metrics.borrow_mut().set_gauge(
                &[("version", VERSION), ("revision", GIT_REVISION)],
                BUILD_INFO,
                1,
            );
            // What the queue-wait alert compares the p95 wait with.
            for (name, r) in &config.routes {
                if let Some(q) = &r.policy.queue {
                    self.host.metrics.borrow_mut().set_gauge(
                        &[("route", name)],
                        QUEUE_MAX_WAIT_MS,
                        q.max_wait_ms,
                    );
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        let host = self.host.clone();
        let worker = Rc::clone(&self.worker);
        if self.upstream {
            let life = UpstreamAttempt::new(config, worker);
            return Some(Box::new(Upstream { life, host }));
        }
        let life = Exchange::new(config, worker, context_id);
        Some(Box::new(Stream { life, host }))
    }

    fn on_tick(&mut self) {
        enter();
        fault::on_tick();
        self.worker.on_tick(&mut self.host);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A downstream stream: one request's life.
struct Stream {
    life: Exchange,
    host: EnvoyHost,
}

/// Times one callback in the hostcall-count build.
macro_rules! timed {
    ($name:literal) => {
        #[cfg(feature = "hostcall-count")]
        let _timer = abi::count::Timer::start($name);
    };
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        enter();
        self.life
            .on_grpc_answer(&mut self.host, token_id, status_code, response_size);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("ds_on_http_request_headers");
        fault::on_request_headers();
        #[cfg(feature = "hostcall-count")]
        if abi::count::requested_timing() {
            for (kind, ns) in abi::count::time_calls(20_000) {
                log::warn!("llm-capacity: host call {kind}: {ns} ns");
            }
        }
        action(self.life.on_request_headers(&mut self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("ds_on_http_request_body");
        action(
            self.life
                .on_request_body(&mut self.host, body_size, end_of_stream),
        )
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("ds_on_http_response_headers");
        action(self.life.on_response_headers(&mut self.host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("ds_on_http_response_body");
        action(
            self.life
                .on_response_body(&mut self.host, body_size, end_of_stream),
        )
    }

    fn on_log(&mut self) {
        enter();
        {
            timed!("ds_on_log");
            self.life.on_log(&mut self.host);
        }
        #[cfg(feature = "hostcall-count")]
        abi::count::export();
    }
}

/// An upstream attempt (the upstream instance).
struct Upstream {
    life: UpstreamAttempt,
    host: EnvoyHost,
}

impl Context for Upstream {
    fn on_done(&mut self) -> bool {
        enter();
        timed!("up_on_done");
        self.life.on_end(&mut self.host);
        true
    }
}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("up_on_http_request_headers");
        action(self.life.on_request_headers(&mut self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("up_on_http_request_body");
        action(
            self.life
                .on_request_body(&mut self.host, body_size, end_of_stream),
        )
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        enter();
        timed!("up_on_http_response_headers");
        action(self.life.on_response_headers(&mut self.host))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        enter();
        timed!("up_on_http_response_body");
        action(
            self.life
                .on_response_body(&mut self.host, body_size, end_of_stream),
        )
    }

    fn on_log(&mut self) {
        enter();
        timed!("up_on_log");
        self.life.on_end(&mut self.host);
    }
}
