//! Test-only fault hooks: real Wasm VM traps on demand, so the end-to-end tests
//! (`tests/e2e/test_faults.py`) can prove what Envoy does when the filter's VM
//! fails. Compiled in only with the cargo feature `fault-injection` (off by
//! default; `make build-fault` builds it into `target/fault`). Without the
//! feature both hooks are empty and the header is never read.
//!
//! A request carrying `x-llmcap-fault` on a policy route or not:
//! - `trap`: its worker's VM traps at once, in `on_http_request_headers`;
//! - `trap-on-tick`: the request goes on normally, and its worker's VM traps at
//!   its next queue tick (`on_tick` runs only while requests wait in the queue),
//!   so the failure hits a VM whose requests are paused in its wait list.

/// The request header that asks for a fault.
#[cfg(feature = "fault-injection")]
pub const FAULT_HEADER: &str = "x-llmcap-fault";

/// From `on_http_request_headers` of the downstream instance.
#[inline(always)]
pub fn on_request_headers() {
    #[cfg(feature = "fault-injection")]
    imp::on_request_headers();
}

/// From the root context's `on_tick`.
#[inline(always)]
pub fn on_tick() {
    #[cfg(feature = "fault-injection")]
    imp::on_tick();
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::super::abi;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set by `trap-on-tick`: this VM traps at its next tick. Per VM (each
    /// worker has its own linear memory); a reloaded VM starts unarmed.
    static TRAP_ON_TICK: AtomicBool = AtomicBool::new(false);

    pub fn on_request_headers() {
        match abi::header_text(abi::MAP_REQUEST_HEADERS, super::FAULT_HEADER).as_deref() {
            Some("trap") => trap("x-llmcap-fault: trap"),
            Some("trap-on-tick") => {
                abi::log(
                    abi::LOG_WARN,
                    "llm-capacity fault injection: this VM traps at its next tick",
                );
                TRAP_ON_TICK.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub fn on_tick() {
        if TRAP_ON_TICK.load(Ordering::Relaxed) {
            trap("x-llmcap-fault: trap-on-tick");
        }
    }

    /// A real VM failure: the Wasm `unreachable` instruction (what a panic with
    /// `panic = "abort"` ends in), not a simulated one.
    fn trap(why: &str) -> ! {
        abi::log(
            abi::LOG_CRITICAL,
            &format!("llm-capacity fault injection: trapping the VM ({why})"),
        );
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        std::process::abort();
    }
}
