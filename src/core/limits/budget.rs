//! Session and tenant budgets: caps on what a conversation or a tenant may use in
//! total, kept in Envoy shared data so every worker agrees.
//!
//! Budgets are not rate limits. An agent stuck in a loop can stay under every
//! per-minute limit and still make thousands of calls and spend without end; a
//! budget counts calls, tokens and money over the life of a session (or a UTC day
//! and month for a tenant) and stops the loop once the total is reached.
//!
//! Money is integer pico-dollars (10^-12 USD): prices of a fraction of a cent per
//! million tokens are exact integers per token, sums never round, and a cap "to
//! the cent" is compared exactly. Arithmetic saturates.
//!
//! A call reserves its estimated tokens and spend while in flight, so concurrent
//! calls cannot all slip in under a cap; [`settle`] replaces the reservation with
//! what the call really used. The call that crosses a cap started under it and is
//! admitted; the next one is refused.
//!
//! Sessions and tenants live in fixed tables of slots (one small msgpack value per
//! slot, updated by compare-and-swap): an identity probes [`PROBES`] slots from its
//! hash and takes its own, else a never-used one, else one whose owner is
//! forgotten (idle), else the least recently seen (eviction). Shared data never
//! holds more than `slots` keys per route however many identities pass through,
//! and every value names its owner, so two identities never share counters.

use crate::core::env::{stable_hash, SharedStore, StoreError};
use crate::core::limits::limiter::CAS_RETRIES;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const PICO_PER_USD: u64 = 1_000_000_000_000;
/// Probes per identity in a slot table.
pub const PROBES: u32 = 4;

/// The CAS token used to create keys: the host ignores it when the key is absent,
/// and no live value has it, so a racing creator's write fails instead of erasing.
const CREATE_CAS: u32 = u32::MAX;
const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
/// A tenant idle this long has no open day or month window left.
const TENANT_IDLE_MS: u64 = 31 * DAY_MS;
const SESSION_ROOT: &str = "llmcap/ses/";
const TENANT_ROOT: &str = "llmcap/bud/";

/// Price of one model, pico-dollars per token (= USD per million tokens x 10^6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl Price {
    /// From USD per million tokens (config numbers); None if negative/non-finite/absurd (> 1e6 $/Mtok).
    pub fn from_usd_per_mtok(input: f64, output: f64, cached_input: f64) -> Option<Price> {
        fn pico(usd_per_mtok: f64) -> Option<u64> {
            if usd_per_mtok.is_finite() && (0.0..=1e6).contains(&usd_per_mtok) {
                Some((usd_per_mtok * 1e6).round() as u64)
            } else {
                None
            }
        }
        Some(Price {
            input: pico(input)?,
            output: pico(output)?,
            cached_input: pico(cached_input)?,
        })
    }

    /// Cost of a call: `input` includes `cached_input` (the cached subset, clamped to input), priced at cached_input; the rest of input at input; output at output. Saturating.
    pub fn cost(&self, input: u64, output: u64, cached_input: u64) -> u64 {
        let cached = cached_input.min(input);
        input
            .saturating_sub(cached)
            .saturating_mul(self.input)
            .saturating_add(cached.saturating_mul(self.cached_input))
            .saturating_add(output.saturating_mul(self.output))
    }
}

/// Per-model prices: exact model names, prefixes written `name*` (longest prefix wins), and `*` as the fallback.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prices {
    exact: std::collections::BTreeMap<String, Price>,
    /// Longest first.
    prefixes: Vec<(String, Price)>,
    fallback: Option<Price>,
}

impl Prices {
    /// Later entries replace earlier ones with the same name or pattern.
    pub fn new(entries: Vec<(String, Price)>) -> Prices {
        let mut p = Prices::default();
        for (name, price) in entries {
            if name == "*" {
                p.fallback = Some(price);
            } else if let Some(prefix) = name.strip_suffix('*') {
                p.prefixes.retain(|(q, _)| q != prefix);
                p.prefixes.push((prefix.to_string(), price));
            } else {
                p.exact.insert(name, price);
            }
        }
        p.prefixes.sort_by_key(|(q, _)| std::cmp::Reverse(q.len()));
        p
    }

    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(*p);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix.as_str()))
            .map(|(_, p)| *p)
            .or(self.fallback)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.fallback.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionCaps {
    pub max_calls: Option<u64>,
    pub max_tokens: Option<u64>,
    /// Pico-dollars.
    pub max_spend: Option<u64>,
    /// Fixed 60 s window starting at the window's first call.
    pub calls_per_minute: Option<u64>,
    /// A session idle this long (with nothing in flight) is forgotten: its slot
    /// is free, and if it comes back it starts fresh.
    pub idle_ttl_ms: u64,
    pub slots: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantCaps {
    /// Pico-dollars per UTC calendar day.
    pub spend_per_day: Option<u64>,
    /// Pico-dollars per UTC calendar month.
    pub spend_per_month: Option<u64>,
    pub slots: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Calls,
    Tokens,
    Spend,
    CallsPerMinute,
    SpendPerDay,
    SpendPerMonth,
}

impl Cap {
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::Calls => "calls",
            Cap::Tokens => "tokens",
            Cap::Spend => "spend",
            Cap::CallsPerMinute => "calls_per_minute",
            Cap::SpendPerDay => "spend_per_day",
            Cap::SpendPerMonth => "spend_per_month",
        }
    }
}

/// What was reserved, kept by the caller until the call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub key: String,
    pub owner: String,
    pub tokens: u64,
    pub spend: u64,
}

/// What is left after this call's reservation (None = no such cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remaining {
    pub calls: Option<u64>,
    pub tokens: Option<u64>,
    pub spend: Option<u64>,
    pub spend_day: Option<u64>,
    pub spend_month: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted {
        charge: Charge,
        remaining: Remaining,
        evicted: bool,
    },
    /// `retry_after_ms`: when the cap resets by itself (calls per minute window end; next UTC day/month); None for lifetime caps.
    Exceeded {
        cap: Cap,
        remaining: Remaining,
        retry_after_ms: Option<u64>,
    },
}

pub fn session_key_prefix(route: &str) -> String {
    format!("{SESSION_ROOT}{route}/")
}

pub fn tenant_key_prefix(route: &str) -> String {
    format!("{TENANT_ROOT}{route}/")
}

/// A session slot's value; short names keep every shared-data copy small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Session {
    /// Owner (the full session id) and when it was last seen, ms.
    o: String,
    t: u64,
    /// Calls admitted; tokens and spend settled; tokens and spend reserved by
    /// the calls in flight, and how many those are.
    c: u64,
    tk: u64,
    sp: u64,
    rt: u64,
    rs: u64,
    f: u32,
    /// Calls-per-minute window: its start (ms) and the calls in it.
    ws: u64,
    wc: u64,
}

/// A tenant slot's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Tenant {
    o: String,
    t: u64,
    /// Day index (days since epoch), spend settled and reserved in it.
    d: u64,
    ds: u64,
    dr: u64,
    /// Month index (year x 12 + month - 1), spend settled and reserved in it.
    m: u64,
    ms: u64,
    mr: u64,
}

/// What admission needs from a slot value.
trait Slot: Serialize + DeserializeOwned {
    type Caps;
    fn owner(&self) -> &str;
    fn seen(&mut self) -> &mut u64;
    /// Another identity may take this slot without evicting anyone.
    fn reusable(&self, caps: &Self::Caps, now: u64) -> bool;
    /// The state to check and charge: the own one brought up to `now`, or fresh.
    fn resume(own: Option<Self>, owner: &str, caps: &Self::Caps, now: u64) -> Self;
    /// The cap this state is at, and when it resets by itself.
    fn exceeded(&self, caps: &Self::Caps, now: u64) -> Option<(Cap, Option<u64>)>;
    fn remaining(&self, caps: &Self::Caps) -> Remaining;
    fn reserve(&mut self, tokens: u64, spend: u64);
}

fn left(cap: Option<u64>, settled: u64, reserved: u64) -> Option<u64> {
    cap.map(|m| m.saturating_sub(settled.saturating_add(reserved)))
}

fn reached(cap: Option<u64>, settled: u64, reserved: u64) -> bool {
    left(cap, settled, reserved) == Some(0)
}

impl Slot for Session {
    type Caps = SessionCaps;
    fn owner(&self) -> &str {
        &self.o
    }
    fn seen(&mut self) -> &mut u64 {
        &mut self.t
    }
    fn reusable(&self, caps: &SessionCaps, now: u64) -> bool {
        self.f == 0
            && self.rt == 0
            && self.rs == 0
            && now.saturating_sub(self.t) >= caps.idle_ttl_ms
    }
    fn resume(own: Option<Self>, owner: &str, caps: &SessionCaps, now: u64) -> Self {
        let mut s = match own {
            // Idle past its TTL: forgotten, even if no one took its slot.
            Some(s) if !s.reusable(caps, now) => s,
            _ => Session {
                o: owner.to_string(),
                t: now,
                ..Session::default()
            },
        };
        if s.wc == 0 || now >= s.ws.saturating_add(MINUTE_MS) {
            s.ws = now;
            s.wc = 0;
        }
        s
    }
    fn exceeded(&self, caps: &SessionCaps, now: u64) -> Option<(Cap, Option<u64>)> {
        if reached(caps.max_calls, self.c, 0) {
            Some((Cap::Calls, None))
        } else if reached(caps.max_tokens, self.tk, self.rt) {
            Some((Cap::Tokens, None))
        } else if reached(caps.max_spend, self.sp, self.rs) {
            Some((Cap::Spend, None))
        } else if reached(caps.calls_per_minute, self.wc, 0) {
            let end = self.ws.saturating_add(MINUTE_MS);
            let retry = end.saturating_sub(now).min(MINUTE_MS);
            Some((Cap::CallsPerMinute, Some(retry)))
        } else {
            None
        }
    }
    fn remaining(&self, caps: &SessionCaps) -> Remaining {
        Remaining {
            calls: left(caps.max_calls, self.c, 0),
            tokens: left(caps.max_tokens, self.tk, self.rt),
            spend: left(caps.max_spend, self.sp, self.rs),
            ..Remaining::default()
        }
    }
    fn reserve(&mut self, tokens: u64, spend: u64) {
        self.c = self.c.saturating_add(1);
        self.wc = self.wc.saturating_add(1);
        self.rt = self.rt.saturating_add(tokens);
        self.rs = self.rs.saturating_add(spend);
        self.f = self.f.saturating_add(1);
    }
}

impl Tenant {
    /// Moves the windows forward to `now` (never back if the clock steps back).
    fn roll(&mut self, now: u64) {
        let day = now / DAY_MS;
        if day > self.d {
            (self.d, self.ds, self.dr) = (day, 0, 0);
        }
        let month = month_index(day);
        if month > self.m {
            (self.m, self.ms, self.mr) = (month, 0, 0);
        }
    }
}

impl Slot for Tenant {
    type Caps = TenantCaps;
    fn owner(&self) -> &str {
        &self.o
    }
    fn seen(&mut self) -> &mut u64 {
        &mut self.t
    }
    fn reusable(&self, _: &TenantCaps, now: u64) -> bool {
        now.saturating_sub(self.t) > TENANT_IDLE_MS
    }
    fn resume(own: Option<Self>, owner: &str, _: &TenantCaps, now: u64) -> Self {
        let mut s = own.unwrap_or_else(|| Tenant {
            o: owner.to_string(),
            t: now,
            ..Tenant::default()
        });
        s.roll(now);
        s
    }
    fn exceeded(&self, caps: &TenantCaps, now: u64) -> Option<(Cap, Option<u64>)> {
        let day = now / DAY_MS;
        if reached(caps.spend_per_day, self.ds, self.dr) {
            let midnight = day.saturating_add(1).saturating_mul(DAY_MS);
            Some((Cap::SpendPerDay, Some(midnight.saturating_sub(now))))
        } else if reached(caps.spend_per_month, self.ms, self.mr) {
            let (y, m, _) = civil_from_days(day);
            let (y, m) = if m >= 12 {
                (y.saturating_add(1), 1)
            } else {
                (y, m + 1)
            };
            let first = days_from_civil(y, m, 1).saturating_mul(DAY_MS);
            Some((Cap::SpendPerMonth, Some(first.saturating_sub(now))))
        } else {
            None
        }
    }
    fn remaining(&self, caps: &TenantCaps) -> Remaining {
        Remaining {
            spend_day: left(caps.spend_per_day, self.ds, self.dr),
            spend_month: left(caps.spend_per_month, self.ms, self.mr),
            ..Remaining::default()
        }
    }
    fn reserve(&mut self, _: u64, spend: u64) {
        self.dr = self.dr.saturating_add(spend);
        self.mr = self.mr.saturating_add(spend);
    }
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01
/// (Howard Hinnant's algorithm, for non-negative days; the bounds noted make
/// the plain arithmetic safe).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe.saturating_add(era.saturating_mul(400));
    (if m <= 2 { y.saturating_add(1) } else { y }, m, d)
}

/// Days from 1970-01-01 to a civil date on or after it (inverse of the above).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y.saturating_sub(1) } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m.min(12) - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d.saturating_sub(1);
    let doe = 365 * yoe + yoe / 4 - yoe / 100 + doy;
    era.saturating_mul(146_097)
        .saturating_add(doe)
        .saturating_sub(719_468)
}

fn month_index(day: u64) -> u64 {
    let (y, m, _) = civil_from_days(day);
    y.saturating_mul(12).saturating_add(m.saturating_sub(1))
}

fn decode<S: Slot>(bytes: &[u8]) -> Option<S> {
    rmp_serde::from_slice(bytes).ok()
}

fn encode<S: Slot>(s: &S) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(s).map_err(|_| StoreError::Host(0))
}

/// The slot an identity will write, with the CAS token of the value looked at.
struct Chosen<S> {
    key: String,
    /// The identity's own state, if the slot is already its own.
    own: Option<S>,
    cas: u32,
    /// Taken from a live owner.
    evicted: bool,
}

/// Probes [`PROBES`] slots from the owner's hash: its own slot; else the first
/// never-used (or unreadable) one; else the first reusable one; else the least
/// recently seen, taken over. The caller writes with `cas`, so if anyone wrote
/// the slot since, the write fails and the choice is made again.
fn choose<S: Slot>(
    store: &dyn SharedStore,
    prefix: &str,
    owner: &str,
    caps: &S::Caps,
    slots: u32,
    now: u64,
) -> Result<Chosen<S>, StoreError> {
    let slots = u64::from(slots.max(1));
    let start = u64::from(stable_hash(owner)) % slots;
    let mut free: Option<(String, u32)> = None;
    let mut idle: Option<(String, u32)> = None;
    let mut lru: Option<(String, u32, u64)> = None;
    for p in 0..u64::from(PROBES).min(slots) {
        let key = format!("{prefix}{}", (start + p) % slots);
        let Some((bytes, cas)) = store.get(&key)? else {
            free = free.or(Some((key, CREATE_CAS)));
            continue;
        };
        match decode::<S>(&bytes) {
            None => free = free.or(Some((key, cas))),
            Some(s) if s.owner() == owner => {
                let own = Some(s);
                let evicted = false;
                return Ok(Chosen {
                    key,
                    own,
                    cas,
                    evicted,
                });
            }
            Some(mut s) => {
                let seen = *s.seen();
                if idle.is_none() && s.reusable(caps, now) {
                    idle = Some((key.clone(), cas));
                }
                if lru.as_ref().is_none_or(|(_, _, t)| seen < *t) {
                    lru = Some((key, cas, seen));
                }
            }
        }
    }
    let (key, cas, evicted) = match (free.or(idle), lru) {
        (Some((key, cas)), _) => (key, cas, false),
        (None, Some((key, cas, _))) => (key, cas, true),
        (None, None) => return Err(StoreError::Host(0)), // no slot probed: cannot happen
    };
    let own = None;
    Ok(Chosen {
        key,
        own,
        cas,
        evicted,
    })
}

/// Checks and charges one call against `owner`'s slot in the table at `prefix`.
#[allow(clippy::too_many_arguments)]
fn admit<S: Slot>(
    store: &dyn SharedStore,
    prefix: &str,
    owner: &str,
    caps: &S::Caps,
    slots: u32,
    now: u64,
    tokens: u64,
    spend: u64,
) -> Result<Verdict, StoreError> {
    for _ in 0..CAS_RETRIES {
        let c = choose::<S>(store, prefix, owner, caps, slots, now)?;
        let owned = c.own.is_some();
        let mut s = S::resume(c.own, owner, caps, now);
        if let Some((cap, retry_after_ms)) = s.exceeded(caps, now) {
            let remaining = s.remaining(caps);
            let verdict = Verdict::Exceeded {
                cap,
                remaining,
                retry_after_ms,
            };
            // A refused identity is still active: keep it from looking idle (a
            // loop must not get a fresh budget by being forgotten). Never evict
            // anyone just to record a refusal.
            if !owned || *s.seen() >= now {
                return Ok(verdict);
            }
            *s.seen() = now;
            match store.set(&c.key, &encode(&s)?, c.cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => return Ok(verdict),
            }
        }
        s.reserve(tokens, spend);
        let seen = s.seen();
        *seen = now.max(*seen);
        match store.set(&c.key, &encode(&s)?, c.cas) {
            Ok(()) => {
                let (key, owner) = (c.key, owner.to_string());
                return Ok(Verdict::Admitted {
                    charge: Charge {
                        key,
                        owner,
                        tokens,
                        spend,
                    },
                    remaining: s.remaining(caps),
                    evicted: c.evicted,
                });
            }
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// One call of `session` on `route`, reserving `tokens` and `spend` while in flight.
pub fn session_admit(
    store: &dyn SharedStore,
    route: &str,
    session: &str,
    caps: &SessionCaps,
    now_ms: u64,
    tokens: u64,
    spend: u64,
) -> Result<Verdict, StoreError> {
    let prefix = session_key_prefix(route);
    admit::<Session>(
        store, &prefix, session, caps, caps.slots, now_ms, tokens, spend,
    )
}

/// One call of `tenant` on `route`, reserving `spend` in its current UTC day and month.
pub fn tenant_admit(
    store: &dyn SharedStore,
    route: &str,
    tenant: &str,
    caps: &TenantCaps,
    now_ms: u64,
    spend: u64,
) -> Result<Verdict, StoreError> {
    let prefix = tenant_key_prefix(route);
    admit::<Tenant>(store, &prefix, tenant, caps, caps.slots, now_ms, 0, spend)
}

/// Applies `f` to the charge's slot by CAS if it still belongs to the charge's owner.
fn update<S: Slot>(
    store: &dyn SharedStore,
    charge: &Charge,
    f: impl Fn(&mut S),
) -> Result<(), StoreError> {
    for _ in 0..CAS_RETRIES {
        let Some((bytes, cas)) = store.get(&charge.key)? else {
            return Ok(());
        };
        let Some(mut s) = decode::<S>(&bytes) else {
            return Ok(());
        };
        if s.owner() != charge.owner {
            return Ok(()); // evicted meanwhile: the new owner's counters are not ours
        }
        f(&mut s);
        match store.set(&charge.key, &encode(&s)?, cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// The call ended: its reservation is replaced by what it really used. `unsent`: it never reached the provider (refused later by another check): the call itself is not counted either (calls and calls-per-minute given back). If the slot now belongs to someone else (evicted meanwhile), nothing happens.
///
/// A tenant call settled after its day (or month) rolled over is counted in the
/// new window; its reservation went with the old one.
pub fn settle(
    store: &dyn SharedStore,
    charge: &Charge,
    now_ms: u64,
    tokens: u64,
    spend: u64,
    unsent: bool,
) -> Result<(), StoreError> {
    if charge.key.starts_with(TENANT_ROOT) {
        update(store, charge, |s: &mut Tenant| {
            s.roll(now_ms);
            s.dr = s.dr.saturating_sub(charge.spend);
            s.mr = s.mr.saturating_sub(charge.spend);
            if !unsent {
                s.ds = s.ds.saturating_add(spend);
                s.ms = s.ms.saturating_add(spend);
            }
            s.t = s.t.max(now_ms);
        })
    } else {
        update(store, charge, |s: &mut Session| {
            s.rt = s.rt.saturating_sub(charge.tokens);
            s.rs = s.rs.saturating_sub(charge.spend);
            s.f = s.f.saturating_sub(1);
            if unsent {
                s.c = s.c.saturating_sub(1);
                s.wc = s.wc.saturating_sub(1);
            } else {
                s.tk = s.tk.saturating_add(tokens);
                s.sp = s.sp.saturating_add(spend);
            }
            s.t = s.t.max(now_ms);
        })
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
