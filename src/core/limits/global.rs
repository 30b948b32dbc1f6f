//! The global tier: a fleet-wide limit kept by a rate limit service that speaks
//! Envoy's protocol (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`),
//! such as envoyproxy/ratelimit or Limitador, backed by Redis.
//!
//! Local limits stay the fast first gate. A request they admit then takes its
//! share (one request, its token reservation) from this Envoy's *pool*: global
//! quota the service has already granted to this process, kept in shared data so
//! every worker draws on it. Only what the pool cannot cover goes to the service,
//! in one call whose descriptors carry the counts in `hits_addend`:
//!
//! - `per_request` (lease 0): each call asks for exactly the shortfall.
//! - leased: each call also asks for a slice (`lease.requests`, `lease.tokens`),
//!   so the next requests are served from the pool without a call.
//!
//! Reconciliation happens here, not in the service: RLS has no negative hits, so
//! a reservation larger than the usage goes back into the pool (the next requests
//! use it before asking again), and a usage above the reservation is a debt added
//! to the next call. Granted quota lives only as long as the service's window
//! (`duration_until_reset`): at the reset the service's counter starts over, so
//! quota carried across would be counted twice.
//!
//! The wire format is small and fixed, so it is written by hand (no protobuf
//! dependency in every worker's VM).

pub use crate::core::config::global::{FailurePolicy, GlobalConfig, ROUTE_KEY, UNIT_KEY};
use crate::core::env::{SharedStore, StoreError};

use crate::core::pbstruct::{DecodeError, Reader};
use serde::{Deserialize, Serialize};

/// gRPC service and method of Envoy's rate limit service protocol.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";
/// How long granted quota lives when the service does not say when its window
/// resets: short, so quota is not carried into the service's next window.
pub const UNKNOWN_WINDOW_MS: u64 = 1_000;
/// Two answers whose resets are this close describe the same window.
pub const WINDOW_SLACK_MS: u64 = 1_000;
const CAS_RETRIES: u32 = 16;
/// The CAS token used to create keys (see `limiter::load`).
const CREATE_CAS: u32 = u32::MAX;

impl GlobalConfig {
    pub fn leased(&self) -> bool {
        !self.lease().is_empty()
    }

    /// The slice each call also asks for.
    pub fn lease(&self) -> Hits {
        Hits {
            requests: self.lease_requests,
            tokens: self.lease_tokens,
        }
    }

    pub fn entries<'a>(&'a self, route: &'a str) -> Vec<(&'a str, &'a str)> {
        match &self.descriptor {
            Some(d) => d.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            None => vec![(ROUTE_KEY, route)],
        }
    }
}

// ---------------------------------------------------------------- wire format

/// Protobuf wire encoding (also builds the wire bytes of the core's decoder tests).
pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub(crate) fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A serialized `envoy.config.core.v3.GrpcService{envoy_grpc{cluster_name}}`.
/// Passing the message, not the bare name, keeps Envoy from guessing whether the
/// name itself parses as one.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::new();
    field_bytes(1, cluster.as_bytes(), &mut envoy_grpc);
    let mut out = Vec::new();
    field_bytes(1, &envoy_grpc, &mut out);
    out
}

/// What one call asks for, per unit; a unit with 0 hits is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    pub requests: u64,
    pub tokens: u64,
}

impl Hits {
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.tokens == 0
    }

    /// The units sent, in descriptor order.
    pub fn units(&self) -> Vec<(&'static str, u64)> {
        [("requests", self.requests), ("tokens", self.tokens)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A serialized `RateLimitRequest`: one descriptor per unit, each `entries` +
/// `unit=<unit>`, with the count in the descriptor's own `hits_addend`.
pub fn encode_request(domain: &str, entries: &[(&str, &str)], hits: Hits) -> Vec<u8> {
    let mut out = Vec::new();
    field_bytes(1, domain.as_bytes(), &mut out);
    for (unit, n) in hits.units() {
        let mut d = Vec::new();
        for (k, v) in entries.iter().copied().chain([(UNIT_KEY, unit)]) {
            let mut e = Vec::new();
            field_bytes(1, k.as_bytes(), &mut e);
            field_bytes(2, v.as_bytes(), &mut e);
            field_bytes(1, &e, &mut d);
        }
        // google.protobuf.UInt64Value{value = 1}
        let mut w = Vec::new();
        varint(1 << 3, &mut w);
        varint(n, &mut w);
        field_bytes(3, &w, &mut d);
        field_bytes(2, &d, &mut out);
    }
    out
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    pub remaining: Option<u64>,
    /// Until the counter's window resets (`duration_until_reset`), when given.
    pub reset_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub over_limit: bool,
    pub statuses: Vec<DescriptorStatus>,
}

impl Answer {
    /// The longest wait among the descriptors over their limit.
    pub fn wait_ms(&self) -> Option<u64> {
        self.statuses
            .iter()
            .filter(|s| s.over_limit)
            .filter_map(|s| s.reset_ms)
            .max()
    }
}

const MAX_STATUSES: usize = 64;

/// Decodes a `RateLimitResponse`; only what the filter uses is kept.
pub fn decode_response(bytes: &[u8]) -> Result<Answer, DecodeError> {
    let mut a = Answer::default();
    let mut r = Reader::new(bytes);
    let mut code = 0;
    while !r.done() {
        match r.key()? {
            (1, 0) => code = r.varint()?,
            (2, 2) => {
                let s = decode_status(r.bytes()?)?;
                if a.statuses.len() < MAX_STATUSES {
                    a.statuses.push(s);
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    a.over_limit = match code {
        1 => false,
        2 => true,
        _ => return Err(DecodeError("overall_code is neither OK nor OVER_LIMIT")),
    };
    Ok(a)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut s = DescriptorStatus::default();
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.key()? {
            (1, 0) => s.over_limit = r.varint()? == 2,
            (3, 0) => s.remaining = Some(r.varint()?),
            (4, 2) => {
                let mut d = Reader::new(r.bytes()?);
                let (mut secs, mut nanos) = (0u64, 0u64);
                while !d.done() {
                    match d.key()? {
                        (1, 0) => secs = d.varint()?,
                        (2, 0) => nanos = d.varint()? & 0xffff_ffff,
                        (_, w) => d.skip(w)?,
                    }
                }
                // Negative or absurd durations are not a window.
                if secs < 1 << 40 && nanos < 1_000_000_000 {
                    s.reset_ms = Some(secs * 1000 + nanos / 1_000_000);
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------- the pool

/// Granted quota of one unit, valid until `w` (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub w: u64,
    pub c: u64,
}

impl Grant {
    fn live(&self, now: u64) -> u64 {
        if now < self.w {
            self.c
        } else {
            0
        }
    }

    fn same_window(&self, w: u64) -> bool {
        self.w.abs_diff(w) <= WINDOW_SLACK_MS
    }

    /// Adds quota granted for the window ending at `w`; quota of an older
    /// window is dropped, a newer window replaces what is left.
    fn add(&mut self, n: u64, w: u64, now: u64) {
        if now >= self.w || (w > self.w && !self.same_window(w)) {
            *self = Grant { w, c: n };
        } else if self.same_window(w) {
            self.c = self.c.saturating_add(n);
        }
    }
}

/// This process's share of the global quota, one shared-data value per route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub r: Grant,
    pub t: Grant,
    /// Tokens used beyond reservations, owed to the token window `t.w`.
    pub d: u64,
    /// No lease slices until then: the service refused one this window.
    pub x: u64,
    /// The service failed: no calls until then.
    pub u: u64,
    /// A renewal is in flight until then (one per process at a time).
    pub f: u64,
}

pub fn pool_key(route: &str) -> String {
    format!("llmcap/glob/{route}")
}

/// The windows a request's global charge belongs to, for settling it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Windows {
    pub requests: u64,
    pub tokens: u64,
}

/// What [`take`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Take {
    /// Taken from the pool.
    pub taken: Hits,
    /// Still needed from the service.
    pub short: Hits,
    /// Debt to add to the call (already cleared from the pool).
    pub debt: u64,
    pub windows: Windows,
    /// Whether a call may ask for a lease slice.
    pub lease: bool,
    /// The service failed recently: go to the failure policy without a call.
    pub down: bool,
    /// The pool is below half a slice: renew it now, in the background.
    pub renew: bool,
}

fn decode(bytes: &[u8]) -> Pool {
    rmp_serde::from_slice(bytes).unwrap_or_default()
}

/// Reads, changes and writes the pool under CAS.
fn update<R>(
    store: &dyn SharedStore,
    key: &str,
    mut f: impl FnMut(&mut Pool) -> (R, bool),
) -> Result<R, StoreError> {
    for _ in 0..CAS_RETRIES {
        let (mut pool, cas) = match store.get(key)? {
            Some((b, cas)) => (decode(&b), cas),
            None => (Pool::default(), CREATE_CAS),
        };
        let (out, changed) = f(&mut pool);
        if !changed {
            return Ok(out);
        }
        let bytes = rmp_serde::to_vec(&pool).map_err(|_| StoreError::Host(0))?;
        match store.set(key, &bytes, cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Takes what the pool can give of `need`; the rest is `short`. Tokens owed
/// from earlier requests are paid from the pool first, else go with the call.
///
/// With a `lease`, a take that leaves the pool under half a slice asks for a
/// renewal (`renew`), at most one per `renew_ms` per process, so the slice is
/// renewed before it runs out and requests seldom wait for a call.
pub fn take(
    store: &dyn SharedStore,
    key: &str,
    need: Hits,
    lease: Hits,
    now: u64,
    renew_ms: u64,
) -> Result<Take, StoreError> {
    update(store, key, |p| {
        let mut t = Take::default();
        if now >= p.t.w {
            p.d = 0; // the window owed to is over
        }
        let paid = p.d.min(p.t.live(now));
        p.t.c -= paid;
        p.d -= paid;
        t.taken.requests = need.requests.min(p.r.live(now));
        t.taken.tokens = need.tokens.min(p.t.live(now));
        p.r.c -= t.taken.requests;
        p.t.c -= t.taken.tokens;
        t.short = Hits {
            requests: need.requests - t.taken.requests,
            tokens: need.tokens - t.taken.tokens,
        };
        t.windows = Windows {
            requests: p.r.w,
            tokens: p.t.w,
        };
        if !t.short.is_empty() {
            t.down = now < p.u;
            if !t.down {
                t.debt = std::mem::take(&mut p.d);
            }
            t.lease = now >= p.x;
        } else if !lease.is_empty() && now >= p.x && now >= p.u && now >= p.f {
            let low = |g: &Grant, slice: u64| slice > 0 && g.live(now) < slice.div_ceil(2);
            if low(&p.r, lease.requests) || low(&p.t, lease.tokens) {
                t.renew = true;
                p.f = now + renew_ms;
            }
        }
        let changed = paid > 0 || !t.taken.is_empty() || t.debt > 0 || t.renew;
        (t, changed)
    })
}

/// Puts granted quota in the pool: a call's lease slice, or quota given back.
pub fn grant(
    store: &dyn SharedStore,
    key: &str,
    n: Hits,
    windows: Windows,
    now: u64,
) -> Result<(), StoreError> {
    // Zero grants still record the windows, so reservations can come back.
    update(store, key, |p| {
        p.r.add(n.requests, windows.requests, now);
        p.t.add(n.tokens, windows.tokens, now);
        p.u = 0;
        p.f = 0;
        ((), true)
    })
}

/// Gives back quota charged in `windows` and not used; dropped if its window is over.
pub fn give_back(
    store: &dyn SharedStore,
    key: &str,
    n: Hits,
    windows: Windows,
    now: u64,
) -> Result<(), StoreError> {
    update(store, key, |p| {
        let mut changed = false;
        for (g, n, w) in [
            (&mut p.r, n.requests, windows.requests),
            (&mut p.t, n.tokens, windows.tokens),
        ] {
            if n > 0 && now < w && (g.same_window(w) || now >= g.w) {
                g.add(n, w, now);
                changed = true;
            }
        }
        ((), changed)
    })
}

/// Records tokens used beyond a reservation charged in the token window `w`.
pub fn owe(
    store: &dyn SharedStore,
    key: &str,
    tokens: u64,
    w: u64,
    now: u64,
) -> Result<(), StoreError> {
    update(store, key, |p| {
        if tokens == 0 || now >= w || !p.t.same_window(w) {
            return ((), false);
        }
        p.d = p.d.saturating_add(tokens);
        ((), true)
    })
}

/// The service refused a lease slice: no slices until its window resets.
pub fn no_lease_until(store: &dyn SharedStore, key: &str, until: u64) -> Result<(), StoreError> {
    update(store, key, |p| {
        let changed = until > p.x || p.f > 0;
        p.x = p.x.max(until);
        p.f = 0;
        ((), changed)
    })
}

/// A call failed: requests skip the service until `until`; `debt` is owed again.
pub fn failed(store: &dyn SharedStore, key: &str, until: u64, debt: u64) -> Result<(), StoreError> {
    update(store, key, |p| {
        p.u = p.u.max(until);
        p.d = p.d.saturating_add(debt);
        p.f = 0;
        ((), true)
    })
}

/// The window end for a status: now + its reset, or a short life when unknown.
pub fn window_end(status: Option<&DescriptorStatus>, now: u64) -> u64 {
    now.saturating_add(
        status
            .and_then(|s| s.reset_ms)
            .filter(|&ms| ms > 0)
            .unwrap_or(UNKNOWN_WINDOW_MS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::global::{parse, DEFAULT_DOMAIN, DEFAULT_TIMEOUT_MS};
    use crate::core::env::MemStore;
    use crate::core::limits::limiter::Limits;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const K: &str = "llmcap/glob/chat";

    const NONE: Hits = Hits {
        requests: 0,
        tokens: 0,
    };

    /// What a take without a lease gets from the pool.
    fn taken(s: &MemStore, need: Hits, now: u64) -> Hits {
        take(s, K, need, NONE, now, 0).unwrap().taken
    }

    fn hits(requests: u64, tokens: u64) -> Hits {
        Hits { requests, tokens }
    }

    fn win(w: u64) -> Windows {
        Windows {
            requests: w,
            tokens: w,
        }
    }

    #[test]
    fn request_encodes_descriptors_with_their_own_hits() {
        let b = encode_request("d", &[("llmcap_route", "chat")], hits(1, 300));
        // Decode by hand with the shared reader: domain, then two descriptors.
        let mut r = Reader::new(&b);
        assert_eq!(r.key().unwrap(), (1, 2));
        assert_eq!(r.bytes().unwrap(), b"d");
        let mut seen = Vec::new();
        while !r.done() {
            assert_eq!(r.key().unwrap(), (2, 2));
            let mut d = Reader::new(r.bytes().unwrap());
            let mut entries = Vec::new();
            let mut n = None;
            while !d.done() {
                match d.key().unwrap() {
                    (1, 2) => {
                        let mut e = Reader::new(d.bytes().unwrap());
                        e.key().unwrap();
                        let k = String::from_utf8(e.bytes().unwrap().to_vec()).unwrap();
                        e.key().unwrap();
                        let v = String::from_utf8(e.bytes().unwrap().to_vec()).unwrap();
                        entries.push((k, v));
                    }
                    (3, 2) => {
                        let mut w = Reader::new(d.bytes().unwrap());
                        assert_eq!(w.key().unwrap(), (1, 0));
                        n = Some(w.varint().unwrap());
                    }
                    other => panic!("unexpected field {other:?}"),
                }
            }
            seen.push((entries, n));
        }
        let e = |u: &str| {
            vec![
                ("llmcap_route".to_string(), "chat".to_string()),
                ("unit".to_string(), u.to_string()),
            ]
        };
        assert_eq!(
            seen,
            vec![(e("requests"), Some(1)), (e("tokens"), Some(300))]
        );
        // A unit with nothing to count is left out.
        let only = encode_request("d", &[], hits(0, 5));
        assert!(!only.windows(8).any(|w| w == b"requests"));
    }

    #[test]
    fn grpc_service_names_the_cluster() {
        assert_eq!(
            grpc_service("rls"),
            vec![0x0a, 0x05, 0x0a, 0x03, b'r', b'l', b's']
        );
    }

    fn status(code: u64, remaining: u64, secs: u64, nanos: u64) -> Vec<u8> {
        let mut s = Vec::new();
        varint(1 << 3, &mut s);
        varint(code, &mut s);
        varint(3 << 3, &mut s);
        varint(remaining, &mut s);
        let mut d = Vec::new();
        varint(1 << 3, &mut d);
        varint(secs, &mut d);
        varint(2 << 3, &mut d);
        varint(nanos, &mut d);
        field_bytes(4, &d, &mut s);
        s
    }

    #[test]
    fn response_decodes_code_remaining_and_reset() {
        let mut b = Vec::new();
        varint(1 << 3, &mut b);
        varint(2, &mut b);
        field_bytes(2, &status(1, 7, 12, 500_000_000), &mut b);
        field_bytes(2, &status(2, 0, 30, 0), &mut b);
        // An unknown field (response_headers_to_add) is skipped.
        field_bytes(3, b"\x0a\x01x", &mut b);
        let a = decode_response(&b).unwrap();
        assert!(a.over_limit);
        assert_eq!(
            a.statuses,
            vec![
                DescriptorStatus {
                    over_limit: false,
                    remaining: Some(7),
                    reset_ms: Some(12_500)
                },
                DescriptorStatus {
                    over_limit: true,
                    remaining: Some(0),
                    reset_ms: Some(30_000)
                },
            ]
        );
        assert_eq!(a.wait_ms(), Some(30_000));
    }

    #[test]
    fn response_without_a_known_code_is_an_error() {
        assert_eq!(
            decode_response(b""),
            Err(DecodeError("overall_code is neither OK nor OVER_LIMIT"))
        );
        assert!(decode_response(b"\x08").is_err()); // truncated varint
        assert!(decode_response(b"\x12\x05ab").is_err()); // truncated status
    }

    #[test]
    fn window_end_uses_the_reset_or_a_short_life() {
        let s = DescriptorStatus {
            reset_ms: Some(5_000),
            ..Default::default()
        };
        assert_eq!(window_end(Some(&s), 100), 5_100);
        assert_eq!(window_end(None, 100), 100 + UNKNOWN_WINDOW_MS);
        assert_eq!(
            window_end(Some(&DescriptorStatus::default()), 100),
            100 + UNKNOWN_WINDOW_MS
        );
    }

    #[test]
    fn an_empty_pool_sends_everything_to_the_service() {
        let s = MemStore::default();
        let t = take(&s, K, hits(1, 500), NONE, 1_000, 0).unwrap();
        assert_eq!(t.taken, Hits::default());
        assert_eq!(t.short, hits(1, 500));
        assert!(t.lease && !t.down);
        // Nothing changed, nothing written.
        assert_eq!(s.keys(), 0);
    }

    #[test]
    fn a_lease_serves_the_next_requests_until_its_window_ends() {
        let s = MemStore::default();
        grant(&s, K, hits(3, 1_000), win(60_000), 1_000).unwrap();
        for _ in 0..3 {
            let t = take(&s, K, hits(1, 300), NONE, 2_000, 0).unwrap();
            assert_eq!(t.taken, hits(1, 300));
            assert!(t.short.is_empty());
            assert_eq!(t.windows, win(60_000));
        }
        // Requests spent; 100 tokens left: taken, the rest is short.
        let t = take(&s, K, hits(1, 300), NONE, 3_000, 0).unwrap();
        assert_eq!(t.taken, hits(0, 100));
        assert_eq!(t.short, hits(1, 200));
        // At the reset, leftovers are gone: the service's counter starts over.
        grant(&s, K, hits(5, 5_000), win(60_000), 4_000).unwrap();
        let t = take(&s, K, hits(1, 1), NONE, 60_000, 0).unwrap();
        assert_eq!(t.taken, Hits::default());
        assert_eq!(t.short, hits(1, 1));
    }

    #[test]
    fn grants_of_a_newer_window_replace_and_of_an_older_one_are_dropped() {
        let s = MemStore::default();
        grant(&s, K, hits(2, 0), win(60_000), 1_000).unwrap();
        // Same window, reported a few ms apart: added.
        grant(&s, K, hits(2, 0), win(60_300), 1_300).unwrap();
        assert_eq!(taken(&s, hits(9, 0), 2_000), hits(4, 0));
        grant(&s, K, hits(2, 0), win(60_000), 2_000).unwrap();
        // The next window: what is left of the old one goes.
        grant(&s, K, hits(3, 0), win(120_000), 59_000).unwrap();
        assert_eq!(taken(&s, hits(9, 0), 59_500), hits(3, 0));
        // A late answer for the old window adds nothing.
        grant(&s, K, hits(3, 0), win(60_000), 59_600).unwrap();
        assert_eq!(taken(&s, hits(9, 0), 59_700), Hits::default());
    }

    #[test]
    fn unused_reservations_come_back_within_their_window_only() {
        let s = MemStore::default();
        give_back(&s, K, hits(1, 400), win(60_000), 1_000).unwrap();
        assert_eq!(taken(&s, hits(1, 400), 1_000), hits(1, 400));
        grant(&s, K, hits(0, 100), win(60_000), 1_000).unwrap();
        give_back(&s, K, hits(1, 400), win(60_000), 2_000).unwrap();
        assert_eq!(taken(&s, hits(1, 1_000), 3_000), hits(1, 500));
        // A reservation of an older window does not mix with a newer one.
        grant(&s, K, hits(0, 0), win(200_000), 140_000).unwrap();
        give_back(&s, K, hits(1, 400), win(150_000), 140_500).unwrap();
        assert_eq!(taken(&s, hits(1, 1), 141_000), Hits::default());
        // A reservation of a window that is over is not given back.
        give_back(&s, K, hits(1, 400), win(60_000), 60_001).unwrap();
        assert_eq!(taken(&s, hits(1, 1), 60_002), Hits::default());
    }

    #[test]
    fn debt_is_paid_from_the_pool_first_then_with_the_next_call() {
        let s = MemStore::default();
        grant(&s, K, hits(0, 1_000), win(60_000), 1_000).unwrap();
        owe(&s, K, 700, 60_000, 2_000).unwrap();
        // 700 paid from the pool, 300 left for this request.
        let t = take(&s, K, hits(0, 500), NONE, 3_000, 0).unwrap();
        assert_eq!((t.taken, t.short, t.debt), (hits(0, 300), hits(0, 200), 0));
        // An empty pool: the debt goes with the call, once.
        owe(&s, K, 50, 60_000, 3_000).unwrap();
        let t = take(&s, K, hits(0, 10), NONE, 4_000, 0).unwrap();
        assert_eq!((t.short, t.debt), (hits(0, 10), 50));
        assert_eq!(take(&s, K, hits(0, 10), NONE, 4_000, 0).unwrap().debt, 0);
        // A failed call owes it again.
        failed(&s, K, 5_000, 50).unwrap();
        let t = take(&s, K, hits(0, 10), NONE, 6_000, 0).unwrap();
        assert_eq!(t.debt, 50);
        // Debt of a window that is over is not carried into the next.
        owe(&s, K, 90, 60_000, 7_000).unwrap();
        assert_eq!(take(&s, K, hits(0, 10), NONE, 60_000, 0).unwrap().debt, 0);
    }

    #[test]
    fn failures_send_requests_to_the_policy_until_the_retry_time() {
        let s = MemStore::default();
        failed(&s, K, 2_000, 0).unwrap();
        assert!(take(&s, K, hits(1, 1), NONE, 1_500, 0).unwrap().down);
        assert!(!take(&s, K, hits(1, 1), NONE, 2_000, 0).unwrap().down);
        // Quota already granted is still used while the service is down.
        grant(&s, K, hits(1, 1), win(60_000), 2_100).unwrap();
        failed(&s, K, 9_000, 0).unwrap();
        let t = take(&s, K, hits(1, 1), NONE, 3_000, 0).unwrap();
        assert!(t.short.is_empty() && !t.down);
        // A successful grant ends the down time.
        grant(&s, K, hits(1, 0), win(60_000), 3_100).unwrap();
        assert!(!take(&s, K, hits(2, 0), NONE, 3_200, 0).unwrap().down);
    }

    #[test]
    fn a_low_pool_is_renewed_once_before_it_runs_out() {
        let s = MemStore::default();
        let slice = hits(4, 1_000);
        grant(&s, K, slice, win(60_000), 1_000).unwrap();
        for left in [3, 2] {
            let t = take(&s, K, hits(1, 100), slice, 1_100, 50).unwrap();
            assert!(!t.renew, "{left} of 4 requests left");
        }
        let t = take(&s, K, hits(1, 100), slice, 1_200, 50).unwrap();
        assert!(t.renew, "1 of 4 left: below half a slice");
        // One renewal at a time per process, until it is answered or expires.
        assert!(!take(&s, K, hits(1, 100), slice, 1_210, 50).unwrap().renew);
        grant(&s, K, slice, win(60_000), 1_220).unwrap();
        assert!(!take(&s, K, hits(1, 100), slice, 1_230, 50).unwrap().renew);
        // Nothing renews without a lease, or once slices are refused this window.
        let s = MemStore::default();
        grant(&s, K, hits(1, 0), win(60_000), 1_000).unwrap();
        assert!(!take(&s, K, hits(1, 0), NONE, 1_100, 50).unwrap().renew);
        grant(&s, K, hits(1, 0), win(60_000), 1_000).unwrap();
        no_lease_until(&s, K, 60_000).unwrap();
        assert!(!take(&s, K, hits(1, 0), slice, 1_100, 50).unwrap().renew);
    }

    #[test]
    fn a_refused_lease_stops_slices_until_the_reset() {
        let s = MemStore::default();
        no_lease_until(&s, K, 60_000).unwrap();
        assert!(!take(&s, K, hits(1, 1), NONE, 1_000, 0).unwrap().lease);
        assert!(take(&s, K, hits(1, 1), NONE, 60_000, 0).unwrap().lease);
    }

    #[test]
    fn takers_never_get_more_than_was_granted() {
        let s = MemStore::default();
        grant(&s, K, hits(10, 0), win(60_000), 0).unwrap();
        let got: u64 = (0..15).map(|_| taken(&s, hits(1, 0), 1).requests).sum();
        assert_eq!(got, 10);
    }

    fn parse_err(v: serde_json::Value) -> String {
        let limits = |_: &serde_json::Value, _: &str| Ok(Limits::default());
        match parse(&v, "routes.chat.global", limits) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_parses_with_defaults() {
        let limits = |_: &serde_json::Value, _: &str| Ok(Limits::default());
        let g = parse(&serde_json::json!({"cluster": "rls"}), "g", limits).unwrap();
        assert_eq!(g.domain, DEFAULT_DOMAIN);
        assert_eq!(g.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(g.on_failure, FailurePolicy::Open);
        assert!(!g.leased());
        assert_eq!(g.entries("chat"), vec![(ROUTE_KEY, "chat")]);
        let g = parse(
            &serde_json::json!({"cluster": "rls", "descriptor": {"provider": "openai"},
                "lease": {"requests": 5.0, "tokens": "2000"}, "on_failure": "closed",
                "timeout_ms": 20, "retry_interval_ms": 0, "domain": "d"}),
            "g",
            limits,
        )
        .unwrap();
        assert_eq!(g.entries("chat"), vec![("provider", "openai")]);
        assert_eq!((g.lease_requests, g.lease_tokens), (5, 2000));
        assert_eq!(g.on_failure, FailurePolicy::Closed);
        assert_eq!((g.timeout_ms, g.retry_interval_ms), (20, 0));
    }

    #[test]
    fn config_errors_name_path_and_value() {
        assert_eq!(
            parse_err(serde_json::json!({})),
            "invalid config at routes.chat.global: cluster is required (the Envoy cluster of the rate limit service)"
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "timeout": 5})),
            "invalid config at routes.chat.global.timeout: unknown field (known: cluster, descriptor, domain, fallback_limits, lease, on_failure, retry_interval_ms, timeout_ms)"
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "timeout_ms": 0})),
            "invalid config at routes.chat.global.timeout_ms: expected an integer from 1 to 10000, got 0"
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "on_failure": "allow"})),
            "invalid config at routes.chat.global.on_failure: expected one of open, closed, got \"allow\""
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "descriptor": {"unit": "x"}})),
            "invalid config at routes.chat.global.descriptor.unit: expected a non-empty string of at most 128 bytes (and a key other than `unit`), got \"x\""
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "lease": {"tokens": -1}})),
            "invalid config at routes.chat.global.lease.tokens: expected an integer from 0 to 100000000, got -1"
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": "rls", "on_failure": "closed", "fallback_limits": {}})),
            "invalid config at routes.chat.global.fallback_limits: applies only with on_failure: open"
        );
        assert_eq!(
            parse_err(serde_json::json!({"cluster": ""})),
            "invalid config at routes.chat.global.cluster: expected a non-empty string of at most 128 bytes, got \"\""
        );
    }
}
