//! The thin proxy-wasm adapter: reads what the core needs from the host, applies
//! the core's decision, and reports. No policy logic lives here.

mod abi;
mod metrics;

use crate::core::config::{Config, LogLevel};
use crate::core::decision::{self, RequestHead, Verdict};
use crate::core::reply::serialize_pairs;
use crate::core::telemetry::{tagged_name, AccessLogState, BUILD_INFO};
use crate::core::{load_config, GIT_REVISION, VERSION};
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

/// Filter-state key the access log reads as `%FILTER_STATE(wasm.llm_capacity:PLAIN)%`.
const FILTER_STATE_KEY: &str = "llm_capacity";

proxy_wasm::main! {{
    let _ = log::set_logger(&HOST_LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // With panic = "abort" a panic traps the VM; at least say why in Envoy's log.
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

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for Root {}

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
            let name = tagged_name(
                &[("version", VERSION), ("revision", GIT_REVISION)],
                BUILD_INFO,
            );
            self.metrics.borrow_mut().set_gauge(&name, 1);
        }
        log::info!(
            "llm-capacity: configuration accepted: {} route policies, {} clusters",
            config.routes.len(),
            config.clusters.len()
        );
        self.config = Some(Rc::new(config));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Stream {
            config,
            metrics: Rc::clone(&self.metrics),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let route_bytes = abi::property(&["xds", "route_name"])
            .ok()
            .flatten()
            .unwrap_or_default();
        let route = String::from_utf8_lossy(&route_bytes);
        // Envoy's codec has already rejected malformed content-length values.
        let content_length = abi::header(abi::MAP_REQUEST_HEADERS, "content-length")
            .ok()
            .flatten()
            .and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            });
        let head = RequestHead {
            route: &route,
            content_length,
        };
        let d = decision::on_request_headers(&self.config, &head);

        if self.config.telemetry.metrics {
            self.metrics.borrow_mut().count_request(&route, d.outcome);
        }
        if self.config.telemetry.filter_state {
            let state = AccessLogState {
                route: &route,
                outcome: d.outcome.as_str(),
            };
            if let Err(s) = abi::set_property(&[FILTER_STATE_KEY], &state.to_json()) {
                log::debug!("llm-capacity: cannot set filter state (host status {s})");
            }
        }
        match d.verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Reply(r) => {
                let headers: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match abi::send_local_response(
                    r.status,
                    r.details,
                    &r.body,
                    &serialize_pairs(&headers),
                ) {
                    Ok(()) => Action::Pause,
                    Err(s) => {
                        // Could not answer: let the request through rather than hang it.
                        log::warn!(
                            "llm-capacity: local reply failed (host status {s}); passing request"
                        );
                        Action::Continue
                    }
                }
            }
        }
    }
}
