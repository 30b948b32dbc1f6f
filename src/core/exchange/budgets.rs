//! Session and tenant budgets on the request path: admission before the request
//! leaves, settlement with the real usage when it ends.

use crate::core::config::{Config, RoutePolicy};
use crate::core::env::{Clock, SharedStore, StoreError};
use crate::core::limits::budget::{self, Cap, Charge, Price, Remaining, Verdict, PICO_PER_USD};
use crate::core::reply::LocalReply;

/// What one request holds against its budgets.
#[derive(Default)]
pub struct Budgets {
    pub session: Option<String>,
    pub tenant: Option<String>,
    price: Option<Price>,
    charges: Vec<Charge>,
    session_left: Option<Remaining>,
    tenant_left: Option<Remaining>,
    pub evicted: bool,
    pub errors: Vec<StoreError>,
}

/// A refusal: the answer, and the scope and cap for metrics.
pub struct Refused {
    pub reply: LocalReply,
    pub scope: &'static str,
    pub cap: Cap,
}

impl Budgets {
    pub fn active(policy: &RoutePolicy) -> bool {
        policy.policy.session_budget.is_some() || policy.policy.tenant_budget.is_some()
    }

    /// Charges the call to its session and tenant: `tokens` reserved, priced
    /// as `model` (reserved input and output allowance).
    pub fn admit(
        &mut self,
        store: &dyn SharedStore,
        config: &Config,
        policy: &RoutePolicy,
        model: Option<&str>,
        tokens: (u64, u64),
        now: u64,
    ) -> Result<(), Refused> {
        self.price = model.and_then(|m| config.prices.lookup(m));
        let spend = self.price.map_or(0, |p| p.cost(tokens.0, tokens.1, 0));
        let total = tokens.0.saturating_add(tokens.1);
        let route = policy.name.as_str();
        if let (Some(sb), Some(session)) = (&policy.policy.session_budget, &self.session) {
            let v = budget::session_admit(store, route, session, &sb.caps, now, total, spend);
            self.take(v, "session")?;
        }
        if let (Some(tb), Some(tenant)) = (&policy.policy.tenant_budget, &self.tenant) {
            let v = budget::tenant_admit(store, route, tenant, &tb.caps, now, spend);
            if let Err(refused) = self.take(v, "tenant") {
                // The session's charge goes back: this call never happens.
                self.release(store, &FixedClock(now), true);
                return Err(refused);
            }
        }
        Ok(())
    }

    /// Keeps an admission's charge and remaining view, or turns a refusal into its answer.
    fn take(
        &mut self,
        verdict: Result<Verdict, StoreError>,
        scope: &'static str,
    ) -> Result<(), Refused> {
        fn left<'b>(b: &'b mut Budgets, scope: &str) -> &'b mut Option<Remaining> {
            if scope == "session" {
                &mut b.session_left
            } else {
                &mut b.tenant_left
            }
        }
        match verdict {
            Ok(Verdict::Admitted {
                charge,
                remaining,
                evicted,
            }) => {
                self.charges.push(charge);
                *left(self, scope) = Some(remaining);
                self.evicted |= evicted;
                Ok(())
            }
            Ok(Verdict::Exceeded {
                cap,
                remaining,
                retry_after_ms,
            }) => {
                *left(self, scope) = Some(remaining);
                Err(refusal(scope, cap, retry_after_ms))
            }
            Err(e) => {
                self.errors.push(e);
                Ok(())
            }
        }
    }

    /// The call ended (or never left, `unsent`): reservations become real usage.
    /// Returns the spend in pico-dollars.
    pub fn settle(
        &mut self,
        store: &dyn SharedStore,
        clock: &dyn Clock,
        usage: (u64, u64, u64),
        unsent: bool,
    ) -> u64 {
        let (input, output, cached) = usage;
        let spend = if unsent {
            0
        } else {
            self.price.map_or(0, |p| p.cost(input, output, cached))
        };
        let tokens = if unsent {
            0
        } else {
            input.saturating_add(output)
        };
        if self.charges.is_empty() {
            return spend; // nothing held: no clock read, no shared-data write
        }
        let now = clock.now_ms();
        for c in self.charges.drain(..) {
            if let Err(e) = budget::settle(store, &c, now, tokens, spend, unsent) {
                log::debug!("llm-capacity: budget settlement dropped ({e:?})");
            }
        }
        spend
    }

    pub fn release(&mut self, store: &dyn SharedStore, clock: &dyn Clock, unsent: bool) {
        self.settle(store, clock, (0, 0, 0), unsent);
    }

    /// Prices the settlement as `model` (the one that answered), when it has a
    /// price; otherwise the admission's price stands. Nothing for a request no
    /// budget admitted.
    pub fn price_as(&mut self, config: &Config, model: &str) {
        if self.price.is_none() && self.charges.is_empty() {
            return;
        }
        if let Some(p) = config.prices.lookup(model) {
            self.price = Some(p);
        }
    }

    pub fn priced(&self) -> bool {
        self.price.is_some()
    }

    /// Remaining budget on every answer.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(r) = &self.session_left {
            if let Some(v) = r.calls {
                out.push(("x-llm-capacity-session-remaining-calls", v.to_string()));
            }
            if let Some(v) = r.tokens {
                out.push(("x-llm-capacity-session-remaining-tokens", v.to_string()));
            }
            if let Some(v) = r.spend {
                out.push(("x-llm-capacity-session-remaining-usd", usd(v)));
            }
        }
        if let Some(r) = &self.tenant_left {
            if let Some(v) = r.spend_day {
                out.push(("x-llm-capacity-tenant-remaining-usd-day", usd(v)));
            }
            if let Some(v) = r.spend_month {
                out.push(("x-llm-capacity-tenant-remaining-usd-month", usd(v)));
            }
        }
        out
    }
}

/// A time already read, for settling inside an admission.
struct FixedClock(u64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// Pico-dollars as US dollars with six decimals (rounded down).
pub fn usd(pico: u64) -> String {
    let micros = pico / (PICO_PER_USD / 1_000_000);
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn refusal(scope: &'static str, cap: Cap, retry_after_ms: Option<u64>) -> Refused {
    let reply = if cap == Cap::CallsPerMinute {
        // A rate: the loop may go on after the window, so this one is a 429.
        let ms = retry_after_ms.unwrap_or(1000).max(1);
        let mut r = LocalReply::openai_error(
            429,
            "rate_limit_error",
            "session_rate_limited",
            &format!(
                "This session made too many calls in a minute; retry in {} s.",
                ms.div_ceil(1000)
            ),
        );
        r.headers
            .push(("retry-after".to_string(), ms.div_ceil(1000).to_string()));
        r.headers
            .push(("retry-after-ms".to_string(), ms.to_string()));
        r
    } else {
        // Not a 429: retrying cannot help until the budget is raised or resets.
        let (code, what) = if scope == "session" {
            ("session_budget_exceeded", "This session")
        } else {
            ("tenant_budget_exceeded", "This tenant")
        };
        let msg = format!(
            "{what} has used its budget ({}); further calls are refused.",
            cap.as_str()
        );
        let mut r = LocalReply::openai_error(402, "budget_exceeded", code, &msg);
        r.headers
            .push(("x-should-retry".to_string(), "false".to_string()));
        if let Some(ms) = retry_after_ms {
            r.headers
                .push(("retry-after".to_string(), ms.div_ceil(1000).to_string()));
        }
        r
    };
    Refused { reply, scope, cap }
}
