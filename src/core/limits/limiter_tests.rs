//! Tests of [`super`].

use super::*;
use crate::core::env::MemStore;
use std::cell::{Cell, RefCell};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn rpm(n: f64) -> Limits {
    Limits {
        requests: Some(Rate::new(n, 1.0)),
        ..Limits::default()
    }
}

/// The current view of a scope, without changing it.
fn peek(store: &dyn SharedStore, key: &str, owner: &str, limits: &Limits, now: u64) -> Snapshot {
    match load(store, key, owner, limits, now) {
        Ok((mut s, _)) => {
            s.refill(limits, now);
            s.snapshot(limits)
        }
        Err(_) => State::fresh(owner, limits, now).snapshot(limits),
    }
}

fn admitted(a: &Admission) -> bool {
    matches!(a, Admission::Admitted(_))
}

#[test]
fn admits_burst_then_paces_at_the_rate() {
    let s = MemStore::default();
    let l = rpm(600.0); // 10/s, burst 10
    let c = Cost::default();
    let n = (0..20)
        .filter(|_| admitted(&admit(&s, "k", "r", &l, &c, 1000).unwrap()))
        .count();
    // Burst of 10, admitted while positive: 10 (the 10th takes it to 0).
    assert_eq!(n, 10);
    match admit(&s, "k", "r", &l, &c, 1000).unwrap() {
        Admission::Rejected {
            dim,
            retry_after_ms,
            ..
        } => {
            assert_eq!(dim, Dim::Requests);
            assert_eq!(retry_after_ms, 1); // balance is exactly 0: positive a moment later
        }
        a => panic!("{a:?}"),
    }
    // 100 ms later one more unit has arrived.
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 1100).unwrap()));
    assert!(!admitted(&admit(&s, "k", "r", &l, &c, 1100).unwrap()));
}

#[test]
fn a_big_request_is_admitted_into_debt_and_paid_back() {
    let s = MemStore::default();
    let l = Limits {
        tokens: Some(Rate::new(6000.0, 1.0)),
        ..Limits::default()
    }; // 100/s, burst 100
    let big = Cost {
        tokens: 1000,
        ..Cost::default()
    };
    assert!(admitted(&admit(&s, "k", "r", &l, &big, 0).unwrap()));
    match admit(
        &s,
        "k",
        "r",
        &l,
        &Cost {
            tokens: 1,
            ..Cost::default()
        },
        0,
    )
    .unwrap()
    {
        Admission::Rejected {
            dim: Dim::Tokens,
            retry_after_ms,
            ..
        } => {
            // Balance -900 at 0.1 token/ms: 9 s.
            assert_eq!(retry_after_ms, 9001);
        }
        a => panic!("{a:?}"),
    }
    assert!(admitted(&admit(&s, "k", "r", &l, &big, 9001).unwrap()));
}

#[test]
fn settle_refunds_and_charges_extra() {
    let s = MemStore::default();
    let l = Limits {
        tokens: Some(Rate::new(60_000.0, 1.0)),
        ..Limits::default()
    }; // 1/ms, burst 1000
    let reserved = Cost {
        tokens: 800,
        ..Cost::default()
    };
    admit(&s, "k", "r", &l, &reserved, 0).unwrap();
    let snap = peek(&s, "k", "r", &l, 0);
    assert_eq!(snap.get(Dim::Tokens).unwrap().remaining, 60_000 - 800);
    // Used only 300: 500 come back.
    settle(
        &s,
        "k",
        "r",
        &l,
        &reserved,
        &Cost {
            tokens: 300,
            ..Cost::default()
        },
        false,
        0,
        0,
    )
    .unwrap();
    assert_eq!(
        peek(&s, "k", "r", &l, 0)
            .get(Dim::Tokens)
            .unwrap()
            .remaining,
        60_000 - 300
    );
    // A long answer: reserved 100, used 2500: charged 2400 more, into debt.
    admit(
        &s,
        "k",
        "r",
        &l,
        &Cost {
            tokens: 100,
            ..Cost::default()
        },
        0,
    )
    .unwrap();
    settle(
        &s,
        "k",
        "r",
        &l,
        &Cost {
            tokens: 100,
            ..Cost::default()
        },
        &Cost {
            tokens: 2500,
            ..Cost::default()
        },
        false,
        0,
        0,
    )
    .unwrap();
    match admit(
        &s,
        "k",
        "r",
        &l,
        &Cost {
            tokens: 1,
            ..Cost::default()
        },
        0,
    )
    .unwrap()
    {
        Admission::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 1801),
        a => panic!("{a:?}"),
    }
}

#[test]
fn in_flight_cap_is_released_by_settle() {
    let s = MemStore::default();
    let l = Limits {
        max_in_flight: Some(2),
        ..Limits::default()
    };
    let c = Cost::default();
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    assert!(matches!(
        admit(&s, "k", "r", &l, &c, 0).unwrap(),
        Admission::Rejected {
            dim: Dim::InFlight,
            ..
        }
    ));
    settle(&s, "k", "r", &l, &c, &c, false, 0, 5).unwrap();
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 5).unwrap()));
}

#[test]
fn in_flight_charges_that_are_never_settled_expire_with_their_lease() {
    // A VM that dies never settles its requests: their slots come back
    // after the lease, and a late settle of an expired charge is harmless.
    let s = MemStore::default();
    let l = Limits {
        max_in_flight: Some(2),
        in_flight_lease_ms: 4_000,
        ..Limits::default()
    };
    let c = Cost::default();
    let in_flight = |now| {
        matches!(
            admit(&s, "k", "r", &l, &c, now).unwrap(),
            Admission::Admitted(_)
        )
    };
    assert!(in_flight(0));
    assert!(in_flight(500));
    assert!(!in_flight(3_999), "both slots held within the lease");
    assert!(
        in_flight(5_000),
        "the charges of 0 and 500 ms expired (lease 4 s, periods of 1 s)"
    );
    assert!(in_flight(5_100));
    assert!(!in_flight(5_200));
    // Settling one of the expired charges does not free a live slot.
    settle(&s, "k", "r", &l, &c, &c, false, 0, 5_300).unwrap();
    assert!(!in_flight(5_300));
    // Settling a live one does.
    settle(&s, "k", "r", &l, &c, &c, false, 5_000, 5_400).unwrap();
    assert!(in_flight(5_400));
    // Groups per scope stay bounded by the lease: at most LEASE_PERIODS + 1.
    for t in (6_000..40_000).step_by(700) {
        let _ = admit(&s, "k", "r", &l, &c, t);
        settle(&s, "k", "r", &l, &c, &c, false, t, t).unwrap();
    }
    let (bytes, _) = s.get("k").unwrap().unwrap();
    assert!(decode(&bytes).unwrap().f.len() <= LEASE_PERIODS as usize + 1);
}

#[test]
fn unsent_requests_get_their_request_unit_back() {
    let s = MemStore::default();
    let l = rpm(60.0); // burst 1
    let c = Cost::default();
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    assert!(!admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    settle(&s, "k", "r", &l, &c, &c, true, 0, 0).unwrap();
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    // A sent request keeps its unit.
    settle(&s, "k", "r", &l, &c, &c, false, 0, 0).unwrap();
    assert!(!admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
}

#[test]
fn lower_classes_leave_headroom_to_higher_ones() {
    let s = MemStore::default();
    let l = rpm(600.0); // 10/s, burst 10
    let c = Cost::default();
    // A class that must leave half the burst gets 5, the top class the rest.
    let low = (0..10)
        .filter(|_| admitted(&admit_above(&s, "k", "r", &l, &c, 0.5, 0).unwrap()))
        .count();
    assert_eq!(low, 5);
    let high = (0..10)
        .filter(|_| admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()))
        .count();
    assert_eq!(high, 5);
    match admit_above(&s, "k", "r", &l, &c, 0.5, 0).unwrap() {
        // Needs the balance back above 5: 500 ms.
        Admission::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 501),
        a => panic!("{a:?}"),
    }
}

#[test]
fn scheduling_holds_places_in_order() {
    let s = MemStore::default();
    let l = rpm(600.0); // 10/s, burst 10
    let c = Cost::default();
    for _ in 0..10 {
        assert!(admitted(&admit(&s, "k", "r", &l, &c, 0).unwrap()));
    }
    // Balance 0: the next ones are promised 1, 101, 201 ms...
    let mut waits = Vec::new();
    for _ in 0..5 {
        match admit_or_schedule(&s, "k", "r", &l, &c, 0.0, Some(450), 0).unwrap() {
            Admission::Scheduled { wait_ms, .. } => waits.push(wait_ms),
            a => panic!("{a:?}"),
        }
    }
    assert_eq!(waits, [1, 101, 201, 301, 401]);
    // The next would wait 501 ms: over the budget, refused with that wait.
    match admit_or_schedule(&s, "k", "r", &l, &c, 0.0, Some(450), 0).unwrap() {
        Admission::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 501),
        a => panic!("{a:?}"),
    }
    // A request that is never sent gives its place back.
    settle(&s, "k", "r", &l, &c, &c, true, 0, 0).unwrap();
    assert!(matches!(
        admit_or_schedule(&s, "k", "r", &l, &c, 0.0, Some(450), 0).unwrap(),
        Admission::Scheduled { wait_ms: 401, .. }
    ));
}

#[test]
fn clock_going_backwards_never_refills() {
    let s = MemStore::default();
    let l = rpm(60.0); // 1/s, burst 1
    let c = Cost::default();
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 10_000).unwrap()));
    assert!(!admitted(&admit(&s, "k", "r", &l, &c, 5_000).unwrap()));
    assert!(!admitted(&admit(&s, "k", "r", &l, &c, 10_000).unwrap()));
    assert!(admitted(&admit(&s, "k", "r", &l, &c, 11_001).unwrap()));
}

#[test]
fn snapshot_headers_view() {
    let s = MemStore::default();
    let l = Limits {
        requests: Some(Rate::new(600.0, 1.0)),
        tokens: Some(Rate::new(60_000.0, 1.0)),
        ..Limits::default()
    };
    let a = admit(
        &s,
        "k",
        "r",
        &l,
        &Cost {
            tokens: 500,
            ..Cost::default()
        },
        0,
    )
    .unwrap();
    let Admission::Admitted(snap) = a else {
        panic!()
    };
    let r = snap.get(Dim::Requests).unwrap();
    assert_eq!((r.limit, r.remaining, r.reset_ms), (600, 599, 100));
    let t = snap.get(Dim::Tokens).unwrap();
    assert_eq!((t.limit, t.remaining, t.reset_ms), (60_000, 59_500, 500));
    assert_eq!(snap.get(Dim::InputTokens), None);
}

#[test]
fn owners_never_merge_and_tenant_table_is_bounded() {
    let s = MemStore::default();
    let l = rpm(60.0);
    let c = Cost::default();
    for i in 0..200u64 {
        let tenant = format!("t{i}");
        let (key, _) = tenant_key(&s, "chat", &tenant, 16, i).unwrap();
        assert!(
            admitted(&admit(&s, &key, &tenant, &l, &c, i).unwrap()),
            "fresh tenant {tenant}"
        );
        // Its own slot now: the second request in the same instant is refused.
        let (key2, _) = tenant_key(&s, "chat", &tenant, 16, i).unwrap();
        assert_eq!(key, key2);
        assert!(!admitted(&admit(&s, &key2, &tenant, &l, &c, i).unwrap()));
    }
    assert!(s.keys() <= 16);
}

#[test]
fn idle_slots_are_reused_before_evicting() {
    let s = MemStore::default();
    let l = rpm(60.0);
    let c = Cost::default();
    // Fill all 4 probe slots of a 4-slot table.
    for t in ["a", "b", "c", "d"] {
        let (k, ev) = tenant_key(&s, "r", t, 4, 0).unwrap();
        assert!(!ev);
        admit(&s, &k, t, &l, &c, 0).unwrap();
        settle(&s, &k, t, &l, &c, &c, false, 0, 0).unwrap();
    }
    let (_, evicted) = tenant_key(&s, "r", "e", 4, 1000).unwrap();
    assert!(evicted, "all slots busy and recent");
    let (_, evicted) = tenant_key(&s, "r", "e", 4, IDLE_MS + 1).unwrap();
    assert!(!evicted, "an idle slot is free to reuse");
}

/// A store that interleaves other workers' whole updates between a worker's
/// read and its write, as concurrent Envoy workers do.
type Worker<'a> = Box<dyn Fn(&MemStore) + 'a>;

struct Interleaving<'a> {
    inner: &'a MemStore,
    rng: Cell<u64>,
    pending: RefCell<Vec<Worker<'a>>>,
}

impl Interleaving<'_> {
    fn next(&self) -> u64 {
        let x = self
            .rng
            .get()
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.rng.set(x);
        x >> 33
    }
}

impl SharedStore for Interleaving<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // Sometimes another worker commits first.
        if self.next().is_multiple_of(3) {
            if let Some(f) = self.pending.borrow_mut().pop() {
                f(self.inner);
            }
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn never_admits_more_than_the_limit_in_any_window_under_contention() {
    for seed in 1..20u64 {
        let mem = MemStore::default();
        let limits = Limits {
            requests: Some(Rate::new(1200.0, 0.5)), // 20/s, burst 10
            tokens: Some(Rate::new(60_000.0, 0.5)), // 1000/s, burst 500
            ..Limits::default()
        };
        let admitted_at: RefCell<Vec<(u64, u64)>> = RefCell::new(Vec::new());
        let store = Interleaving {
            inner: &mem,
            rng: Cell::new(seed),
            pending: RefCell::new(Vec::new()),
        };
        let mut now = 0u64;
        // 5x the request rate for 20 simulated seconds, random sizes up to 400 tokens.
        while now < 20_000 {
            now += store.next() % 20;
            let cost = Cost {
                tokens: 1 + store.next() % 400,
                ..Cost::default()
            };
            // Another worker's request, to be interleaved into this one's CAS window.
            let other_cost = Cost {
                tokens: 1 + store.next() % 400,
                ..Cost::default()
            };
            let (l2, at, log) = (limits.clone(), now, &admitted_at);
            store
                .pending
                .borrow_mut()
                .push(Box::new(move |m: &MemStore| {
                    if let Ok(Admission::Admitted(_)) = admit(m, "k", "r", &l2, &other_cost, at) {
                        log.borrow_mut().push((at, other_cost.tokens));
                    }
                }));
            if let Admission::Admitted(_) = admit(&store, "k", "r", &limits, &cost, now).unwrap() {
                admitted_at.borrow_mut().push((now, cost.tokens));
            }
            // Leftover interleavings run as plain requests.
            while let Some(f) = store.pending.borrow_mut().pop() {
                f(&mem);
            }
        }
        drop(store);
        let log = admitted_at.take();
        // Every 1-second and 5-second window.
        for w in [1_000u64, 5_000] {
            for start in (0..20_000 - w).step_by(250) {
                let in_w: Vec<_> = log
                    .iter()
                    .filter(|(t, _)| *t >= start && *t < start + w)
                    .collect();
                let reqs = in_w.len() as f64;
                let toks: u64 = in_w.iter().map(|(_, c)| c).sum();
                let rq_bound = 20.0 * w as f64 / 1000.0 + 10.0 + 1.0;
                let tok_bound = 1000.0 * w as f64 / 1000.0 + 500.0 + 400.0;
                assert!(
                    reqs <= rq_bound,
                    "seed {seed}: {reqs} requests in {w} ms from {start}"
                );
                assert!(
                    toks as f64 <= tok_bound,
                    "seed {seed}: {toks} tokens in {w} ms from {start}"
                );
            }
        }
        // And the binding limit is used: here tokens (about 200 per request at
        // 1000/s bind before 20 requests/s): at least 95% of 20 s of token rate.
        let toks: u64 = log.iter().map(|(_, c)| c).sum();
        assert!(
            toks as f64 >= 0.95 * 20_000.0,
            "seed {seed}: only {toks} tokens admitted"
        );
    }
}

fn per_day(requests: Option<u64>, tokens: Option<u64>) -> Limits {
    Limits {
        requests_per_day: requests,
        tokens_per_day: tokens,
        ..Limits::default()
    }
}

/// 2023-11-14 00:00:00 UTC, a midnight.
const MIDNIGHT: u64 = 1_699_920_000_000;

fn tokens(n: u64) -> Cost {
    Cost {
        tokens: n,
        input_tokens: n,
        output_tokens: 0,
    }
}

#[test]
fn a_days_token_quota_admits_up_to_it_and_refuses_until_midnight() {
    assert_eq!(MIDNIGHT % DAY_MS, 0);
    let s = MemStore::default();
    let l = per_day(None, Some(10_000));
    let noon = MIDNIGHT + DAY_MS / 2;
    let mut admitted_tokens = 0;
    // Reservations of 1,500: admitted while the day's count is under the quota.
    while admitted(&admit(&s, "k", "r", &l, &tokens(1_500), noon).unwrap()) {
        admitted_tokens += 1_500;
    }
    assert_eq!(admitted_tokens, 10_500, "over by less than one request");
    match admit(&s, "k", "r", &l, &tokens(1), noon).unwrap() {
        Admission::Rejected {
            dim,
            retry_after_ms,
            snapshot,
        } => {
            assert_eq!(dim, Dim::TokensPerDay);
            assert_eq!(retry_after_ms, DAY_MS / 2, "until midnight UTC");
            let d = snapshot.get(Dim::TokensPerDay).unwrap();
            assert_eq!((d.limit, d.remaining, d.reset_ms), (10_000, 0, DAY_MS / 2));
        }
        a => panic!("{a:?}"),
    }
    // One millisecond before midnight: still refused, for one millisecond.
    let last = MIDNIGHT + DAY_MS - 1;
    match admit(&s, "k", "r", &l, &tokens(1), last).unwrap() {
        Admission::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 1),
        a => panic!("{a:?}"),
    }
    // The next day starts empty.
    assert!(admitted(
        &admit(&s, "k", "r", &l, &tokens(1_500), MIDNIGHT + DAY_MS).unwrap()
    ));
    let d = peek(&s, "k", "r", &l, MIDNIGHT + DAY_MS)
        .get(Dim::TokensPerDay)
        .unwrap();
    assert_eq!(d.remaining, 8_500);
}

#[test]
fn the_days_count_is_reconciled_with_the_real_usage() {
    let s = MemStore::default();
    let l = per_day(Some(100), Some(10_000));
    let t = MIDNIGHT + 1_000;
    assert!(admitted(
        &admit(&s, "k", "r", &l, &tokens(4_000), t).unwrap()
    ));
    settle(
        &s,
        "k",
        "r",
        &l,
        &tokens(4_000),
        &tokens(1_000),
        false,
        t,
        t + 10,
    )
    .unwrap();
    let snap = peek(&s, "k", "r", &l, t + 10);
    assert_eq!(snap.get(Dim::TokensPerDay).unwrap().remaining, 9_000);
    assert_eq!(snap.get(Dim::RequestsPerDay).unwrap().remaining, 99);
    // Never sent: the request and its reservation come back whole.
    assert!(admitted(
        &admit(&s, "k", "r", &l, &tokens(2_000), t).unwrap()
    ));
    settle(
        &s,
        "k",
        "r",
        &l,
        &tokens(2_000),
        &Cost::default(),
        true,
        t,
        t + 20,
    )
    .unwrap();
    let snap = peek(&s, "k", "r", &l, t + 20);
    assert_eq!(snap.get(Dim::TokensPerDay).unwrap().remaining, 9_000);
    assert_eq!(snap.get(Dim::RequestsPerDay).unwrap().remaining, 99);
}

#[test]
fn a_request_settled_after_midnight_does_not_touch_the_new_day() {
    let s = MemStore::default();
    let l = per_day(None, Some(10_000));
    let before = MIDNIGHT + DAY_MS - 100;
    assert!(admitted(
        &admit(&s, "k", "r", &l, &tokens(5_000), before).unwrap()
    ));
    let after = MIDNIGHT + DAY_MS + 100;
    settle(
        &s,
        "k",
        "r",
        &l,
        &tokens(5_000),
        &tokens(100),
        false,
        before,
        after,
    )
    .unwrap();
    let d = peek(&s, "k", "r", &l, after)
        .get(Dim::TokensPerDay)
        .unwrap();
    assert_eq!(d.remaining, 10_000);
}

#[test]
fn a_requests_per_day_quota_counts_requests() {
    let s = MemStore::default();
    let l = per_day(Some(3), None);
    let t = MIDNIGHT + 5;
    for _ in 0..3 {
        assert!(admitted(
            &admit(&s, "k", "r", &l, &Cost::default(), t).unwrap()
        ));
    }
    match admit(&s, "k", "r", &l, &Cost::default(), t).unwrap() {
        Admission::Rejected { dim, .. } => assert_eq!(dim, Dim::RequestsPerDay),
        a => panic!("{a:?}"),
    }
}

#[test]
fn a_tenant_slot_holding_todays_counts_is_not_reused_as_idle() {
    let s = MemStore::default();
    let l = per_day(None, Some(10_000));
    let t = MIDNIGHT + 1_000;
    // One slot: tenant a uses it today, then idles past IDLE_MS.
    let (key, _) = tenant_key(&s, "r", "a", 1, t).unwrap();
    assert!(admitted(
        &admit(&s, &key, "a", &l, &tokens(100), t).unwrap()
    ));
    settle(&s, &key, "a", &l, &tokens(100), &tokens(100), false, t, t).unwrap();
    let later = t + IDLE_MS + 1;
    let (_, evicted) = tenant_key(&s, "r", "b", 1, later).unwrap();
    assert!(
        evicted,
        "taking a's slot today loses its count: an eviction, not idle reuse"
    );
    // Tomorrow the slot is idle again.
    let (_, evicted) = tenant_key(&s, "r", "b", 1, MIDNIGHT + DAY_MS + IDLE_MS).unwrap();
    assert!(!evicted);
}
